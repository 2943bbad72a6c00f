//! The binary's public contract: configuration errors exit 2 with one line
//! naming the variable, before any connection; `enrich` and `reconcile`
//! write and report.

use std::process::{Command, Output};

use session_enricher::simulator::{Fault, ListPaging, SimulatorSettings};

use crate::helpers::TestEnv;

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_session-enricher"));
    for var in [
        "DATABASE_URL",
        "AMQP_URL",
        "AMQP_QUEUE",
        "YEASTAR_BASE_URL",
        "YEASTAR_CLIENT_ID",
        "YEASTAR_CLIENT_SECRET",
        "YEASTAR_PBX_ID",
        "ENRICHER_PREFETCH",
        "ENRICHER_QUERY_BATCH",
        "ENRICHER_RECONCILE_PAGE_SIZE",
        "ENRICHER_RECONCILE_INTERVAL_S",
        "RUST_LOG",
        "LOG_FORMAT",
    ] {
        command.env_remove(var);
    }
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Unreachable services: an attempt to connect would fail differently
/// (exit 1, after a timeout), so exit 2 proves validation came first.
fn unreachable_services(command: &mut Command) -> &mut Command {
    command
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
}

#[test]
fn a_missing_required_variable_is_one_line_naming_it_and_exit_2() {
    let output = unreachable_services(binary().arg("run"))
        .env("YEASTAR_CLIENT_ID", "id")
        .env("YEASTAR_CLIENT_SECRET", "secret")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("YEASTAR_BASE_URL"), "{err}");

    let output = unreachable_services(binary().arg("run"))
        .env("YEASTAR_BASE_URL", "https://pbx.example.com")
        .env("YEASTAR_CLIENT_ID", "id")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("YEASTAR_CLIENT_SECRET"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_invalid_value_is_one_line_naming_the_variable_and_exit_2() {
    let cases = [
        ("ENRICHER_PREFETCH", "lots"),
        ("ENRICHER_PREFETCH", "0"),
        ("ENRICHER_QUERY_BATCH", "0"),
        ("ENRICHER_QUERY_BATCH", "101"),
        ("ENRICHER_PBX_MAX_RPS", "0"),
        ("ENRICHER_PBX_MAX_RPS", "2.5"),
        ("ENRICHER_RECONCILE_INTERVAL_S", "-1"),
        ("ENRICHER_RECONCILE_PAGE_SIZE", "1"),
        ("ENRICHER_REFRESH_INTERVAL_MS", "-1"),
        ("ENRICHER_REFRESH_INTERVAL_MS", "86400001"),
        ("YEASTAR_BASE_URL", "pbx.example.com"),
        ("DATABASE_URL", "mysql://x"),
        ("AMQP_URL", "http://x"),
    ];
    let long_pbx_id = "p".repeat(201);
    let cases = cases
        .into_iter()
        .chain([("YEASTAR_PBX_ID", long_pbx_id.as_str())]);
    for (variable, value) in cases {
        let output = unreachable_services(binary().arg("run"))
            .env("YEASTAR_BASE_URL", "https://pbx.example.com")
            .env("YEASTAR_CLIENT_ID", "id")
            .env("YEASTAR_CLIENT_SECRET", "do-not-print-me")
            .env(variable, value)
            .output()
            .unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{variable}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "{variable}={value}: {err}");
        assert!(err.contains(variable), "{variable}={value}: {err}");
        assert!(!err.contains("do-not-print-me"));
    }
}

#[test]
fn the_bench_refuses_a_bad_worker_flag_in_one_line_before_connecting() {
    let output = unreachable_services(binary().args(["bench", "--", "--prefetch", "0"]))
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("the worker's flags"), "{err}");
    assert!(err.contains("--prefetch"), "{err}");
}

#[test]
fn help_documents_every_variable_without_showing_secrets() {
    let output = binary()
        .args(["run", "--help"])
        .env("YEASTAR_CLIENT_SECRET", "do-not-print-me")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "DATABASE_URL",
        "AMQP_URL",
        "AMQP_QUEUE",
        "AMQP_EXCHANGE",
        "AMQP_ROUTING_KEY",
        "YEASTAR_BASE_URL",
        "YEASTAR_API_PATH",
        "YEASTAR_CLIENT_ID",
        "YEASTAR_CLIENT_SECRET",
        "YEASTAR_PBX_ID",
        "ENRICHER_PREFETCH",
        "ENRICHER_QUERY_BATCH",
        "ENRICHER_PBX_MAX_RPS",
        "ENRICHER_REFRESH_INTERVAL_MS",
        "ENRICHER_EVENT_TYPES",
        "ENRICHER_SHUTDOWN_TIMEOUT",
        "ENRICHER_HTTP_ADDR",
        "ENRICHER_RECONCILE_INTERVAL_S",
        "ENRICHER_RECONCILE_PAGE_SIZE",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}"
        );
    }
    assert!(!help.contains("do-not-print-me"));
}

#[tokio::test]
async fn enrich_writes_the_sessions_and_fails_when_one_fails() {
    let env = TestEnv::new().await;
    let defaults = SimulatorSettings::default();
    let enrich = |ids: &[&str]| {
        let mut command = binary();
        command
            .arg("enrich")
            .args(ids)
            .env("DATABASE_URL", &env.db_url)
            .env("YEASTAR_BASE_URL", env.sim.base_url())
            .env("YEASTAR_CLIENT_ID", &defaults.client_id)
            .env("YEASTAR_CLIENT_SECRET", defaults.client_secret.expose())
            .env("YEASTAR_PBX_ID", crate::helpers::PBX);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let output = enrich(&["2862", "900000001"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", stderr(&output));
    assert!(stdout.contains("session 2862: written"), "{stdout}");
    assert!(stdout.contains("session 900000001: not found"), "{stdout}");
    assert!(
        stdout.contains("Alice Johnson"),
        "the pending agents are printed: {stdout}"
    );
    assert_eq!(env.pending_agents(2862).await.len(), 3);

    env.sim.fail_next_session_requests([Fault::Errcode(40001)]);
    let output = enrich(&["5"]).await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stdout).contains("session 5: FAILED"));
    assert!(env.session_row(5).await.is_none());
    assert_eq!(env.sim.stats().live_tokens, 0, "each run revokes its token");
    env.finish().await;
}

#[tokio::test]
async fn reconcile_prints_what_it_added_and_exits_1_when_the_listing_is_incomplete() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(7);
    let defaults = SimulatorSettings::default();
    let reconcile = |page_size: &str| {
        let mut command = binary();
        command
            .arg("reconcile")
            .env("DATABASE_URL", &env.db_url)
            .env("YEASTAR_BASE_URL", env.sim.base_url())
            .env("YEASTAR_CLIENT_ID", &defaults.client_id)
            .env("YEASTAR_CLIENT_SECRET", defaults.client_secret.expose())
            .env("YEASTAR_PBX_ID", crate::helpers::PBX)
            .env("ENRICHER_RECONCILE_PAGE_SIZE", page_size);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let output = reconcile("3").await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        stderr(&output)
    );
    assert!(
        stdout.contains("listed 7 open sessions in 4 pages"),
        "{stdout}"
    );
    assert!(
        stdout.contains("added 7, changed 0, unchanged 0, missing 0, failed 0"),
        "{stdout}"
    );
    assert!(stdout.contains("added: 7, 6, 5, 4, 3, 2, 1"), "{stdout}");
    assert_eq!(env.session_count().await, 7);
    assert_eq!(env.pending_agents(6).await.len(), 3);

    let output = reconcile("3").await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("added 0, changed 0, unchanged 7"),
        "{stdout}"
    );

    env.sim.set_list_paging(ListPaging::IgnoresCursor);
    let output = reconcile("3").await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("INCOMPLETE: the PBX answered the same sessions again"),
        "{stdout}"
    );
    assert_eq!(env.sim.stats().live_tokens, 0, "each run revokes its token");
    env.finish().await;
}
