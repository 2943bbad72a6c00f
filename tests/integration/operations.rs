//! What an operator sees: `/healthz`, `/readyz` with its reasons,
//! `/metrics` with the values a run produced, the `healthcheck` command,
//! and logs that never hold a secret, even at trace level.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use session_enricher::health::{HealthServer, ReadinessChecks};
use session_enricher::pbx::{PbxClient, PbxStatus};
use session_enricher::secret::Secret;
use session_enricher::simulator::SimulatorSettings;
use session_enricher::status::WorkerStatus;
use session_enricher::store::Store;

use crate::helpers::{TestEnv, new_message_event, wait_for};

/// `GET url`: the status and the body.
async fn get(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("the endpoint answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn readyz(addr: std::net::SocketAddr) -> (u16, Value) {
    let (status, body) = get(&format!("http://{addr}/readyz")).await;
    (
        status,
        serde_json::from_str(&body).expect("/readyz answers JSON"),
    )
}

#[tokio::test]
async fn readyz_is_ready_only_while_consuming_with_a_database_and_a_pbx_token() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    let health = HealthServer::start(
        ([127, 0, 0, 1], 0).into(),
        ReadinessChecks {
            worker: Arc::clone(&worker.status),
            pbx: Arc::clone(&worker.pbx),
            store: env.store(),
        },
    )
    .await
    .unwrap();
    let addr = health.addr();
    let (status, body) = get(&format!("http://{addr}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, r#"{"status":"alive"}"#));

    // In-process workers log in at their first event.
    let body = wait_for("the worker consuming", || async {
        let (_, body) = readyz(addr).await;
        (body["checks"]["consuming"] == "ok").then_some(body)
    })
    .await;
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert_eq!(
        body["reason"], "pbx: no access token obtained yet",
        "{body}"
    );

    env.publish_json(&new_message_event(7)).await;
    worker.wait_finished(1).await;
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"status": "ready", "checks": {"consuming": "ok", "database": "ok", "pbx": "ok"}})
    );

    worker.shutdown().await.unwrap();
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 503, "a stopped worker is not ready: {body}");
    assert!(
        body["reason"].as_str().unwrap().starts_with("consuming: "),
        "{body}"
    );
    health.stop().await;
    env.finish().await;
}

#[tokio::test]
async fn readyz_names_an_unreachable_database() {
    let mut settings = TestEnv::new().await.store_settings();
    settings.url = "postgres://postgres@127.0.0.1:1/none".into();
    let worker = Arc::new(WorkerStatus::default());
    worker.set_consuming(true);
    let pbx = Arc::new(PbxStatus::default());
    pbx.granted();
    let health = HealthServer::start(
        ([127, 0, 0, 1], 0).into(),
        ReadinessChecks {
            worker,
            pbx,
            store: Store::connect_lazy(&settings).unwrap(),
        },
    )
    .await
    .unwrap();
    let (status, body) = readyz(health.addr()).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["reason"].as_str().unwrap();
    assert!(reason.starts_with("database: "), "{reason}");
    assert_eq!(body["checks"]["consuming"], "ok");
    health.stop().await;
}

#[tokio::test]
async fn refused_credentials_make_the_worker_not_ready_and_say_what_to_fix() {
    let env = TestEnv::new().await;
    let mut settings = env.pbx_settings();
    settings.client_secret = Secret::new("wrong");
    let pbx = PbxClient::new(settings).unwrap();
    assert!(pbx.log_in().await.is_err());
    let health = HealthServer::start(
        ([127, 0, 0, 1], 0).into(),
        ReadinessChecks {
            worker: Arc::new(WorkerStatus::default()),
            pbx: pbx.status(),
            store: env.store(),
        },
    )
    .await
    .unwrap();
    let (status, body) = readyz(health.addr()).await;
    assert_eq!(status, 503);
    let pbx_check = body["checks"]["pbx"].as_str().unwrap();
    assert!(pbx_check.contains("errcode -1"), "{pbx_check}");
    assert!(pbx_check.contains("YEASTAR_CLIENT_SECRET"), "{pbx_check}");
    health.stop().await;
    env.finish().await;
}

/// The `run` command in a child process, its stderr collected. Killed if
/// the test fails before stopping it.
struct WorkerProcess {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl WorkerProcess {
    fn start(env: &TestEnv, database_url: &str, client_secret: &str) -> Self {
        let mut child = env
            .binary_run()
            .env("RUST_LOG", "trace")
            .env("DATABASE_URL", database_url)
            .env("YEASTAR_CLIENT_SECRET", client_secret)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child: Some(child),
            log,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The health endpoint's address, from the log line announcing it.
    async fn http_addr(&self) -> std::net::SocketAddr {
        wait_for("the health endpoint to be announced", || {
            let announced = self.log().lines().find_map(|line| {
                let line: Value = serde_json::from_str(line).ok()?;
                let serving = line["message"].as_str()?.starts_with("Serving /healthz");
                serving.then(|| line["addr"].as_str()?.parse().ok())?
            });
            std::future::ready(announced)
        })
        .await
    }

    /// SIGTERM, then the exit code and the whole log once it has shut down.
    async fn stop(mut self) -> (Option<i32>, String) {
        let (Some(mut child), Some(reader)) = (self.child.take(), self.reader.take()) else {
            unreachable!("stopped once, by value");
        };
        let status = tokio::task::spawn_blocking(move || {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill -TERM");
            let status = child.wait().expect("the worker exits");
            reader.join().expect("the log reader ends with the pipe");
            status
        })
        .await
        .unwrap();
        (status.code(), self.log())
    }
}

/// `enricher_events_total{outcome="..."}` as the metrics text says.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn healthcheck(addr: std::net::SocketAddr, path: &str) -> Option<i32> {
    Command::new(env!("CARGO_BIN_EXE_session-enricher"))
        .args(["healthcheck", "--path", path])
        .env_clear()
        .env("ENRICHER_HTTP_ADDR", addr.to_string())
        .output()
        .expect("run healthcheck")
        .status
        .code()
}

#[tokio::test]
async fn the_worker_binary_reports_readiness_and_metrics_and_never_logs_a_secret() {
    let env = TestEnv::new().await;
    let db_password = "db-password-5e1f0c";
    // Local Postgres trusts 127.0.0.1, so the password is sent but unused.
    let database_url = env
        .db_url
        .replacen("postgres@", &format!("postgres:{db_password}@"), 1);
    let wrong_secret = "wrong-secret-9d3a7b";
    let right_secret = SimulatorSettings::default().client_secret;

    let refused = WorkerProcess::start(&env, &database_url, wrong_secret);
    let addr = refused.http_addr().await;
    let body = wait_for("/readyz to report the refused login", || async {
        let body = readyz(addr).await.1;
        let refused = body["checks"]["pbx"]
            .as_str()
            .is_some_and(|pbx| pbx.contains("YEASTAR_CLIENT_SECRET"));
        refused.then_some(body)
    })
    .await;
    assert_eq!(body["status"], "not ready", "{body}");
    assert_eq!(healthcheck(addr, "/healthz"), Some(0));
    assert_eq!(healthcheck(addr, "/readyz"), Some(1));
    let (code, refused_log) = refused.stop().await;
    assert_eq!(code, Some(0), "{refused_log}");

    let published_at = chrono::Utc::now().timestamp() as u64;
    let events = 20;
    for id in 1..=events {
        env.publish_stamped(new_message_event(id).to_string().as_bytes(), published_at)
            .await;
    }
    env.publish(b"{\"type\": 30031, \"msg\": {}}").await;
    let accepted = WorkerProcess::start(&env, &database_url, right_secret.expose());
    let addr = accepted.http_addr().await;
    let metrics_url = format!("http://{addr}/metrics");
    let metrics = wait_for("every event settled, as /metrics counts them", || async {
        let metrics = get(&metrics_url).await.1;
        let settled = sample(&metrics, r#"enricher_events_total{outcome="enriched"}"#)
            == Some(events as f64)
            && sample(
                &metrics,
                r#"enricher_events_total{outcome="dead_lettered"}"#,
            ) == Some(1.0);
        settled.then_some(metrics)
    })
    .await;
    let (status, body) = readyz(addr).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(healthcheck(addr, "/readyz"), Some(0));
    // Every session asked for once: alone with `get`, or in a `query`.
    let asked_alone = sample(
        &metrics,
        r#"enricher_pbx_requests_total{endpoint="message_session_get",result="ok"}"#,
    );
    let asked_in_batches = sample(&metrics, "enricher_pbx_query_ids_sum");
    assert_eq!(
        asked_alone.unwrap_or(0.0) + asked_in_batches.unwrap_or(0.0),
        events as f64,
        "{metrics}"
    );
    for (series, expected) in [
        (
            r#"enricher_pbx_token_renewals_total{method="login",result="ok"}"#,
            1.0,
        ),
        (
            r#"enricher_event_commit_lag_seconds_count{since="published"}"#,
            events as f64,
        ),
        ("enricher_db_batch_size_sum", events as f64),
        ("enricher_events_coalesced_total", 0.0),
        ("enricher_events_in_flight", 0.0),
        ("enricher_pbx_fetches_in_flight", 0.0),
    ] {
        assert_eq!(
            sample(&metrics, series),
            Some(expected),
            "{series} in\n{metrics}"
        );
    }
    assert_eq!(env.session_count().await, events);
    let (code, accepted_log) = accepted.stop().await;
    assert_eq!(code, Some(0), "{accepted_log}");
    assert_eq!(healthcheck(addr, "/healthz"), Some(1), "stopped");

    assert!(refused_log.contains("PBX login refused"), "{refused_log}");
    assert!(
        accepted_log.contains("Logged in to the PBX."),
        "{accepted_log}"
    );
    let log = refused_log + &accepted_log;
    assert!(
        log.contains(r#""level":"TRACE""#),
        "RUST_LOG=trace was honoured, so every layer had its say"
    );
    let tokens = env.sim.issued_tokens();
    assert_eq!(tokens.len(), 2, "one login: an access and a refresh token");
    for secret in [wrong_secret, right_secret.expose(), db_password]
        .into_iter()
        .chain(tokens.iter().map(String::as_str))
    {
        assert!(
            !log.contains(secret),
            "a secret leaked into the log: {}",
            log.lines().find(|l| l.contains(secret)).unwrap_or_default()
        );
    }
    env.finish().await;
}

#[test]
fn the_pbx_settings_never_print_the_client_secret() {
    let settings = session_enricher::pbx::PbxSettings {
        base_url: "https://pbx.example.com".into(),
        api_path: "openapi/v1.0".into(),
        client_id: "id".into(),
        client_secret: Secret::new("client-secret-77c1"),
        concurrency: 1,
        request_timeout: Duration::from_secs(1),
        retry: session_enricher::backoff::Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(1),
            attempts: 1,
        },
        login_retry_min: Duration::from_secs(60),
        query_batch: 20,
        max_rps: None,
    };
    let printed = format!("{settings:?} {settings:#?}");
    assert!(!printed.contains("client-secret-77c1"), "{printed}");
    assert!(printed.contains("***"), "{printed}");
}
