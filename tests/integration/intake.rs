//! The webhook intake (`ingest`) against the real RabbitMQ: signatures,
//! refusals, routing, broker outages, and a webhook becoming rows.
//!
//! Every signature below was computed independently of the code under test:
//!   printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" -binary | base64
//! with `helpers::WEBHOOK_SECRET` unless stated.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use session_enricher::broker::Destination;
use session_enricher::intake::{IntakeSettings, SignaturePolicy};

use crate::helpers::{Proxy, QueuedMessage, RunningIntake, TestEnv, wait_until};

const NEW_MESSAGE: &str =
    r#"{"type":30031,"sn":"3631A0000001","msg":{"session_id":2862,"msg_id":28620,"msg_type":0}}"#;
const NEW_MESSAGE_SIGNATURE: &str = "zUOeXIFAauX8vPick+yLUMlPE3ZNLc/HS3w1+sm9qY8=";
/// NEW_MESSAGE signed with "another-secret-of-32-characters!".
const NEW_MESSAGE_OTHER_SECRET: &str = "raxrzmKtQ2ftfxBkFXU+B+jVBBEmzxYp42HwSYbuB0Q=";
const STRING_MSG: &str = r#"{"type":30031,"sn":"3631A0000001","msg":"{\"session_id\":4211,\"msg_id\":\"42110\",\"msg_type\":0,\"msg_body\":\"Hi, is my order shipped?\"}"}"#;
const STRING_MSG_SIGNATURE: &str = "oQ9TQ//SRFUw0+qJjzxzWdy72kx9X1C6xxnsXPPTp6o=";
const READ_RECEIPT: &str = r#"{"type":30038,"sn":"3631A0000001","msg":"{\"data\":{\"session_id\":4211,\"read_msg_id\":42110,\"user_id\":3,\"read_time\":1700000000}}"}"#;
const READ_RECEIPT_SIGNATURE: &str = "moMhGeOCGdOwKLnI6Qr+RNioYLBileh7bIomYpwL8IU=";
const UNTYPED: &str = r#"{"sn":"3631A0000001","msg":{"session_id":77}}"#;
const UNTYPED_SIGNATURE: &str = "mqu9NbMXjhqqGT7h0rR0tXy3gwnS5syz1DMZvlIzOnc=";
const SESSION_3: &str =
    r#"{"type":30031,"sn":"3631A0000001","msg":{"session_id":3,"msg_id":30,"msg_type":0}}"#;
const SESSION_3_SIGNATURE: &str = "0Ok5IBKesSUEW+z7f5ythn7+HBlbEn+paIBOw9rL6cI=";
const NOT_JSON: &str = "hello, not json";
const NOT_JSON_SIGNATURE: &str = "OtUOW/8b3SQsNFgcTZTVcn9vTmWWDYgSsfdnpN283+g=";
const AN_ARRAY: &str = "[1,2]";
const AN_ARRAY_SIGNATURE: &str = "IpxBbY0OiIPnk7I0wnqXdROYWWnNDX3FgePpH3ztlL0=";
const WORD_TYPE: &str = r#"{"type":"new","msg":{"session_id":77}}"#;
const WORD_TYPE_SIGNATURE: &str = "9ipGN68YtldVkMoITAKXoKcWFn8L/5H6+1wmfH+Ohps=";

fn persistent(body: &str, routing_key: &str) -> QueuedMessage {
    QueuedMessage {
        body: body.as_bytes().to_vec(),
        persistent: true,
        routing_key: routing_key.to_owned(),
    }
}

/// A webhook (body, `X-Signature`) and what must become of it: the HTTP
/// status, and the outcome it is counted under, which also says its queue
/// effect: an `accepted` row is queued, byte for byte and in the order
/// posted; no other row is queued.
type Row<'a> = (&'a str, Option<&'a str>, u16, &'static str);

/// What each outcome's JSON answer says.
const ANSWERS: [(&str, &str); 9] = [
    ("accepted", "queued"),
    ("unsigned", "missing X-Signature"),
    ("bad_signature", "does not match the body"),
    ("too_large", "body too large"),
    ("not_json", "body is not JSON"),
    ("not_an_event", "error"),
    ("not_forwarded", "not forwarded"),
    ("unroutable", "try again later"),
    ("unavailable", "try again later"),
];

/// Posts every row in order and checks each answer's status and body.
async fn post_rows(intake: &RunningIntake, rows: &[Row<'_>]) {
    for &(body, signature, status, outcome) in rows {
        let answer = intake.post(body, signature).await;
        let case = format!("{body} signed {signature:?}, expected {status} {outcome}");
        assert_eq!(answer.status, status, "{case}: {answer:?}");
        let (_, says) = ANSWERS
            .iter()
            .find(|(label, _)| *label == outcome)
            .unwrap_or_else(|| panic!("{case}: no such outcome"));
        assert!(answer.body.contains(says), "{case}: {answer:?}");
    }
}

/// Checks that the intake counted each row once, under its outcome.
fn assert_counted(intake: &RunningIntake, rows: &[Row<'_>]) {
    let counts = intake.intake.counts();
    for (label, n) in counts.by_label() {
        let expected = rows.iter().filter(|row| row.3 == label).count() as u64;
        assert_eq!(n, expected, "{label} in {counts:?}");
    }
    assert_eq!(counts.total(), rows.len() as u64, "{counts:?}");
}

/// The messages the `accepted` rows leave on a queue, in order.
fn queued(rows: &[Row<'_>], routing_key: &str) -> Vec<QueuedMessage> {
    rows.iter()
        .filter(|row| row.3 == "accepted")
        .map(|row| persistent(row.0, routing_key))
        .collect()
}

/// Posts the rows to an intake on the work queue (declared as the worker
/// does), then checks answers, queue and counts.
async fn check_rows(env: TestEnv, settings: IntakeSettings, rows: &[Row<'_>]) {
    env.declare_topology().await;
    let intake = RunningIntake::start(settings).await;
    intake.wait_ready(200).await;
    post_rows(&intake, rows).await;
    assert_eq!(
        env.take_messages(&env.queue).await,
        queued(rows, &env.queue)
    );
    assert_counted(&intake, rows);
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn a_signed_event_is_queued_byte_for_byte_persistent_and_answered_200() {
    let env = TestEnv::new().await;
    let prefixed = format!("sha256={NEW_MESSAGE_SIGNATURE}");
    let rows: [Row<'_>; 3] = [
        (NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE), 200, "accepted"),
        (STRING_MSG, Some(STRING_MSG_SIGNATURE), 200, "accepted"),
        (NEW_MESSAGE, Some(&prefixed), 200, "accepted"),
    ];
    let settings = env.intake_settings();
    check_rows(env, settings, &rows).await;
}

#[tokio::test]
async fn unsigned_tampered_and_wrongly_signed_webhooks_are_401_and_not_queued() {
    let env = TestEnv::new().await;
    let tampered = NEW_MESSAGE.replace("2862", "2863");
    let rows: [Row<'_>; 7] = [
        (NEW_MESSAGE, None, 401, "unsigned"),
        (NEW_MESSAGE, Some(""), 401, "unsigned"),
        (&tampered, Some(NEW_MESSAGE_SIGNATURE), 401, "bad_signature"),
        (
            NEW_MESSAGE,
            Some(NEW_MESSAGE_OTHER_SECRET),
            401,
            "bad_signature",
        ),
        (
            NEW_MESSAGE,
            Some(STRING_MSG_SIGNATURE),
            401,
            "bad_signature",
        ),
        (NEW_MESSAGE, Some("not-a-signature"), 401, "bad_signature"),
        // A signed one afterwards is the only message queued.
        (SESSION_3, Some(SESSION_3_SIGNATURE), 200, "accepted"),
    ];
    let settings = env.intake_settings();
    check_rows(env, settings, &rows).await;
}

#[tokio::test]
async fn oversized_non_json_and_non_event_bodies_are_refused_and_counted() {
    let env = TestEnv::new().await;
    let mut settings = env.intake_settings();
    settings.max_body_bytes = 1024;
    let oversized = format!(
        r#"{{"type":30031,"msg":{{"session_id":1,"msg_body":"{}"}}}}"#,
        "x".repeat(2048)
    );
    let rows: [Row<'_>; 5] = [
        (&oversized, Some(NEW_MESSAGE_SIGNATURE), 413, "too_large"),
        (NOT_JSON, Some(NOT_JSON_SIGNATURE), 400, "not_json"),
        (AN_ARRAY, Some(AN_ARRAY_SIGNATURE), 400, "not_an_event"),
        (WORD_TYPE, Some(WORD_TYPE_SIGNATURE), 400, "not_an_event"),
        (SESSION_3, Some(SESSION_3_SIGNATURE), 200, "accepted"),
    ];
    check_rows(env, settings, &rows).await;
}

#[tokio::test]
async fn a_type_not_forwarded_is_200_and_not_queued_and_an_untyped_one_is_queued() {
    let env = TestEnv::new().await;
    let rows: [Row<'_>; 2] = [
        (
            READ_RECEIPT,
            Some(READ_RECEIPT_SIGNATURE),
            200,
            "not_forwarded",
        ),
        // The worker accepts an envelope without `type`, so it is forwarded.
        (UNTYPED, Some(UNTYPED_SIGNATURE), 200, "accepted"),
    ];
    let settings = env.intake_settings();
    check_rows(env, settings, &rows).await;
}

#[tokio::test]
async fn on_an_exchange_each_event_type_gets_its_own_routing_key() {
    let env = TestEnv::new().await;
    let (exchange, queues) = env
        .exchange_with_queues(&["yeastar.30031", "yeastar.30038"])
        .await;
    let mut settings = env.intake_settings();
    settings.forwarded_types = vec![30031, 30038];
    settings.publisher.destination = Destination::Exchange(exchange);
    let intake = RunningIntake::start(settings).await;
    intake.wait_ready(200).await;

    let rows: [Row<'_>; 3] = [
        (NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE), 200, "accepted"),
        (READ_RECEIPT, Some(READ_RECEIPT_SIGNATURE), 200, "accepted"),
        // Nothing is bound to `yeastar.untyped`: not queued anywhere, so 503.
        (UNTYPED, Some(UNTYPED_SIGNATURE), 503, "unroutable"),
    ];
    post_rows(&intake, &rows).await;

    assert_eq!(
        env.take_messages(&queues[0]).await,
        queued(&rows[..1], "yeastar.30031")
    );
    assert_eq!(
        env.take_messages(&queues[1]).await,
        queued(&rows[1..2], "yeastar.30038")
    );
    assert_eq!(
        env.queue_len(&env.queue).await,
        0,
        "nothing goes to the work queue"
    );
    assert_counted(&intake, &rows);
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn an_exchange_that_does_not_exist_keeps_the_intake_not_ready() {
    let env = TestEnv::new().await;
    let mut settings = env.intake_settings();
    settings.publisher.destination = Destination::Exchange(format!("{}.missing", env.name));
    let intake = RunningIntake::start(settings).await;

    wait_until("/readyz names the missing exchange", || async {
        let answer = intake.get("/readyz").await;
        answer.status == 503 && answer.body.contains("AMQP_EXCHANGE")
    })
    .await;
    let rows: [Row<'_>; 1] = [(NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE), 503, "unavailable")];
    post_rows(&intake, &rows).await;
    assert_counted(&intake, &rows);
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn until_the_worker_has_declared_the_work_queue_the_intake_is_not_ready() {
    let env = TestEnv::new().await;
    // Whatever the harness set up, start from a broker without the queue.
    let amqp = lapin::Connection::connect(
        &crate::helpers::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("connect");
    let channel = amqp.create_channel().await.expect("a channel");
    channel
        .queue_delete(
            env.queue.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the work queue");
    let _ = amqp.close(200, "done".into()).await;
    let intake = RunningIntake::start(env.intake_settings()).await;

    wait_until("/readyz names the missing work queue", || async {
        let answer = intake.get("/readyz").await;
        answer.status == 503 && answer.body.contains("AMQP_QUEUE")
    })
    .await;
    assert_eq!(
        intake
            .post(NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE))
            .await
            .status,
        503
    );
    assert!(
        !env.queue_exists(&env.queue).await,
        "the intake never declares the work queue"
    );

    env.declare_topology().await;
    intake.wait_ready(200).await;
    assert_eq!(
        intake
            .post(NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE))
            .await
            .status,
        200
    );
    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![persistent(NEW_MESSAGE, &env.queue)]
    );
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn an_unreachable_broker_means_503_not_ready_and_nothing_queued() {
    let env = TestEnv::new().await;
    let mut settings = env.intake_settings();
    // A port nothing listens on.
    settings.publisher.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let intake = RunningIntake::start(settings).await;

    let rows: [Row<'_>; 2] = [
        (NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE), 503, "unavailable"),
        (STRING_MSG, Some(STRING_MSG_SIGNATURE), 503, "unavailable"),
    ];
    post_rows(&intake, &rows).await;
    assert_counted(&intake, &rows);
    let ready = intake.get("/readyz").await;
    assert_eq!(ready.status, 503, "{ready:?}");
    assert!(ready.body.contains("reason"), "{ready:?}");
    assert_eq!(intake.get("/healthz").await.status, 200);
    // The series' values are process-wide, shared by every intake in this
    // test binary: they are asserted on the `ingest` binary below.
    let metrics = intake.get("/metrics").await;
    assert_eq!(metrics.status, 200, "{metrics:?}");
    assert!(
        metrics
            .body
            .contains("enricher_webhooks_total{outcome=\"unavailable\"} "),
        "{metrics:?}"
    );
    assert_eq!(
        env.queue_len(&env.queue).await,
        0,
        "nothing reached RabbitMQ"
    );
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn the_intake_starts_without_the_broker_and_reconnects_after_an_outage() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let proxy = Proxy::broker().await;
    proxy.cut();
    let mut settings = env.intake_settings();
    settings.publisher.url = proxy.url();
    let intake = RunningIntake::start(settings).await;

    assert_eq!(intake.get("/readyz").await.status, 503);
    assert_eq!(
        intake
            .post(NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE))
            .await
            .status,
        503
    );

    proxy.restore();
    intake.wait_ready(200).await;
    assert_eq!(
        intake
            .post(NEW_MESSAGE, Some(NEW_MESSAGE_SIGNATURE))
            .await
            .status,
        200
    );

    proxy.cut();
    intake.wait_ready(503).await;
    assert_eq!(
        intake
            .post(STRING_MSG, Some(STRING_MSG_SIGNATURE))
            .await
            .status,
        503
    );

    proxy.restore();
    intake.wait_ready(200).await;
    assert_eq!(
        intake
            .post(SESSION_3, Some(SESSION_3_SIGNATURE))
            .await
            .status,
        200
    );

    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![
            persistent(NEW_MESSAGE, &env.queue),
            persistent(SESSION_3, &env.queue),
        ],
        "exactly the events answered 200 are queued"
    );
    let counts = intake.intake.counts();
    assert_eq!((counts.accepted, counts.unavailable), (2, 2));
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn a_shutdown_refuses_new_connections_but_answers_the_request_in_flight() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let proxy = Proxy::broker().await;
    let mut settings = env.intake_settings();
    settings.publisher.url = proxy.url();
    let intake = RunningIntake::start(settings).await;
    intake.wait_ready(200).await;

    proxy.hold_replies();
    let in_flight = {
        let (http, url) = (
            intake.http.clone(),
            format!("{}/webhooks/yeastar", intake.base_url),
        );
        tokio::spawn(async move {
            http.post(url)
                .header("X-Signature", NEW_MESSAGE_SIGNATURE)
                .body(NEW_MESSAGE)
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    wait_until(
        "the event reached the queue, its confirm held back",
        || async { env.queue_len(&env.queue).await == 1 },
    )
    .await;

    intake.stop.cancel();
    let addr = intake.intake.local_addr();
    wait_until("new connections are refused", || async {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(!in_flight.is_finished(), "answered before the confirm");

    proxy.restore();
    let status = in_flight.await.unwrap().expect("an answer");
    assert_eq!(status, 200, "the confirmed event is answered 200");
    intake.intake.stopped().await.expect("a clean shutdown");
    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![persistent(NEW_MESSAGE, &env.queue)]
    );
    env.finish().await;
}

#[tokio::test]
async fn a_sender_that_hangs_up_mid_publish_still_gets_its_event_queued_and_counted() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let proxy = Proxy::broker().await;
    let mut settings = env.intake_settings();
    settings.publisher.url = proxy.url();
    let intake = RunningIntake::start(settings).await;
    intake.wait_ready(200).await;

    proxy.hold_replies();
    let hung_up = intake
        .http
        .post(format!("{}/webhooks/yeastar", intake.base_url))
        .header("X-Signature", NEW_MESSAGE_SIGNATURE)
        .body(NEW_MESSAGE)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(hung_up.is_err(), "no answer while the confirm is held back");
    proxy.restore();

    wait_until("the abandoned webhook is counted", || async {
        intake.intake.counts().total() == 1
    })
    .await;
    assert_eq!(intake.intake.counts().accepted, 1);
    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![persistent(NEW_MESSAGE, &env.queue)]
    );
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn without_signature_checking_an_unsigned_event_is_queued() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let mut settings = env.intake_settings();
    settings.signature = SignaturePolicy::Disabled;
    let intake = RunningIntake::start(settings).await;
    intake.wait_ready(200).await;
    assert_eq!(intake.post(NEW_MESSAGE, None).await.status, 200);
    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![persistent(NEW_MESSAGE, &env.queue)]
    );
    intake.shutdown().await;
    env.finish().await;
}

#[tokio::test]
async fn a_signed_webhook_becomes_rows_in_postgres() {
    let env = TestEnv::new().await;
    let intake = RunningIntake::start(env.intake_settings()).await;
    let worker = env.start_worker().await;
    intake.wait_ready(200).await;

    for (body, signature) in [
        (NEW_MESSAGE, NEW_MESSAGE_SIGNATURE),
        (STRING_MSG, STRING_MSG_SIGNATURE),
    ] {
        assert_eq!(intake.post(body, Some(signature)).await.status, 200);
    }
    worker.wait_finished(2).await;
    assert_eq!(worker.counts().enriched, 2);
    assert!(env.session_row(2862).await.is_some());
    assert!(env.session_row(4211).await.is_some());
    assert_eq!(
        env.pending_agents(2862).await.len(),
        3,
        "the spec's example session waits for three agents"
    );
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.expect("a clean worker shutdown");
    intake.shutdown().await;
    env.finish().await;
}

/// `session-enricher ingest --insecure-no-signature` as a child process on a
/// free port, logging JSON at INFO.
struct IngestProcess {
    child: Child,
    url: String,
    /// Its log up to "Receiving webhooks.".
    log: Vec<String>,
    /// Kept so the child can go on logging.
    _lines: Receiver<String>,
    http: reqwest::Client,
}

impl IngestProcess {
    fn start(vars: &[(&str, &str)]) -> Self {
        let mut child = ingest_binary()
            .arg("--insecure-no-signature")
            .env("INGEST_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(vars.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let line = lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the binary logs where it listens");
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            log.push(line);
            if parsed["message"] == "Receiving webhooks." {
                break parsed["addr"].as_str().expect("an addr field").to_owned();
            }
        };
        Self {
            child,
            url: format!("http://{addr}"),
            log,
            _lines: lines,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs an unsigned webhook; the status.
    async fn post(&self, body: &'static str) -> u16 {
        let answer = self.http.post(format!("{}/webhooks/yeastar", self.url));
        let answer = answer.body(body).send().await.expect("an answer");
        answer.status().as_u16()
    }

    /// Checks `/metrics` lists each sample (`series value`).
    async fn assert_metrics(&self, samples: &[&str]) {
        let answer = self.http.get(format!("{}/metrics", self.url)).send().await;
        let metrics = answer.expect("an answer").text().await.expect("a body");
        for sample in samples {
            assert!(
                metrics.contains(&format!("{sample}\n")),
                "{sample} in\n{metrics}"
            );
        }
    }

    /// SIGTERM; it must exit 0 within 30 s.
    async fn stop(mut self) {
        let term = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(term.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("the binary's status") {
                break status;
            }
            assert!(Instant::now() < deadline, "no exit within 30 s of SIGTERM");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        assert_eq!(status.code(), Some(0), "{:#?}", self.log);
    }
}

#[tokio::test]
async fn the_ingest_binary_warns_without_signatures_and_stops_cleanly_on_sigterm() {
    let env = TestEnv::new().await;
    env.declare_topology().await;
    let amqp_url = crate::helpers::amqp_url();
    let ingest = IngestProcess::start(&[("AMQP_URL", &amqp_url), ("AMQP_QUEUE", &env.queue)]);
    assert!(
        ingest
            .log
            .iter()
            .any(|l| l.contains("WARN") && l.contains("NOT checked")),
        "{:#?}",
        ingest.log
    );
    wait_until("the binary is ready", || async {
        let ready = ingest
            .http
            .get(format!("{}/readyz", ingest.url))
            .send()
            .await;
        ready.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert_eq!(ingest.post(NEW_MESSAGE).await, 200);
    ingest
        .assert_metrics(&[
            r#"enricher_webhooks_total{outcome="accepted"} 1"#,
            "enricher_intake_broker_ready 1",
        ])
        .await;
    ingest.stop().await;
    assert_eq!(
        env.take_messages(&env.queue).await,
        vec![persistent(NEW_MESSAGE, &env.queue)]
    );
    env.finish().await;
}

#[tokio::test]
async fn the_ingest_binary_counts_each_503_and_an_unready_broker_in_its_metrics() {
    // `ingest_binary`'s AMQP_URL: a port nothing listens on.
    let ingest = IngestProcess::start(&[]);
    for body in [NEW_MESSAGE, STRING_MSG] {
        assert_eq!(ingest.post(body).await, 503);
    }
    ingest
        .assert_metrics(&[
            r#"enricher_webhooks_total{outcome="unavailable"} 2"#,
            r#"enricher_webhooks_total{outcome="accepted"} 0"#,
            "enricher_intake_broker_ready 0",
        ])
        .await;
    ingest.stop().await;
}

/// Environment, extra arguments, and the variable the error must name.
type ConfigCase = (
    &'static [(&'static str, &'static str)],
    &'static [&'static str],
    &'static str,
);

fn ingest_binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_session-enricher"));
    command.arg("ingest");
    for var in [
        "INGEST_ADDR",
        "INGEST_PATH",
        "YEASTAR_WEBHOOK_SECRET",
        "INGEST_MAX_BODY_BYTES",
        "INGEST_EVENT_TYPES",
        "AMQP_QUEUE",
        "AMQP_EXCHANGE",
        "RUST_LOG",
        "LOG_FORMAT",
    ] {
        command.env_remove(var);
    }
    // Unreachable: a connection attempt would not exit 2.
    command.env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    command
}

const SECRET: (&str, &str) = ("YEASTAR_WEBHOOK_SECRET", "do-not-print-me");

#[test]
fn ingest_configuration_errors_are_one_line_naming_the_variable_and_exit_2() {
    let cases: [ConfigCase; 9] = [
        (&[], &[], "YEASTAR_WEBHOOK_SECRET"),
        (
            &[("YEASTAR_WEBHOOK_SECRET", " ")],
            &[],
            "YEASTAR_WEBHOOK_SECRET",
        ),
        (
            &[SECRET],
            &["--insecure-no-signature"],
            "YEASTAR_WEBHOOK_SECRET",
        ),
        (&[SECRET, ("INGEST_ADDR", "8080")], &[], "INGEST_ADDR"),
        (&[SECRET, ("INGEST_PATH", "webhooks")], &[], "INGEST_PATH"),
        (&[SECRET, ("INGEST_PATH", "/metrics")], &[], "INGEST_PATH"),
        (
            &[SECRET, ("INGEST_MAX_BODY_BYTES", "lots")],
            &[],
            "INGEST_MAX_BODY_BYTES",
        ),
        (
            &[SECRET, ("INGEST_EVENT_TYPES", "30031,new")],
            &[],
            "INGEST_EVENT_TYPES",
        ),
        (&[SECRET, ("AMQP_URL", "http://x")], &[], "AMQP_URL"),
    ];
    for (vars, args, variable) in cases {
        let output = ingest_binary()
            .envs(vars.iter().copied())
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?} {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{vars:?} {args:?}: {err}");
        assert!(err.contains(variable), "{vars:?} {args:?}: {err}");
        assert!(!err.contains("do-not-print-me"), "{err}");
    }
}

#[test]
fn ingest_help_documents_every_variable_without_showing_secrets() {
    let output = ingest_binary()
        .arg("--help")
        .env("YEASTAR_WEBHOOK_SECRET", "do-not-print-me")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "INGEST_ADDR",
        "INGEST_PATH",
        "YEASTAR_WEBHOOK_SECRET",
        "--insecure-no-signature",
        "INGEST_MAX_BODY_BYTES",
        "INGEST_EVENT_TYPES",
        "AMQP_URL",
        "AMQP_QUEUE",
        "AMQP_EXCHANGE",
    ] {
        assert!(
            help.contains(variable),
            "--help does not mention {variable}"
        );
    }
    assert!(!help.contains("do-not-print-me"));
}
