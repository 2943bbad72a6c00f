//! `demo`: the newcomer's first command. Starts the PBX simulator in-process,
//! runs the worker on the local RabbitMQ and Postgres against a queue of its
//! own, publishes sample events, waits until each is settled and prints the
//! rows they became.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::{Broker, BrokerSettings};
use crate::outcome::OutcomeCounts;
use crate::pbx::{PbxClient, PbxSettings};
use crate::report;
use crate::simulator::{Simulator, SimulatorSettings};
use crate::store::{Store, StoreSettings};
use crate::worker::{Worker, WorkerSettings};

const DEMO_PBX: &str = "demo";

/// The sample events: one per channel, two queued Live Chat sessions, an
/// event type the worker skips, and a malformed one.
fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let now = chrono::Utc::now().timestamp();
    let body = |v: serde_json::Value| v.to_string().into_bytes();
    vec![
        (
            "SMS, msg as an object",
            body(json!({"type": 30031, "sn": "3631A0000001",
            "msg": {"session_id": 1000, "msg_id": 501, "msg_type": 0, "msg_body": "Is my order shipped?", "send_time": now}})),
        ),
        (
            "WhatsApp, msg as a JSON string",
            body(json!({"type": 30031, "sn": "3631A0000001",
            "msg": json!({"session_id": 1001, "msg_id": 502, "msg_body": "Hello"}).to_string()})),
        ),
        (
            "Facebook, msg as a string wrapping data",
            body(json!({"type": 30031, "sn": "3631A0000001",
            "msg": json!({"data": {"session_id": "1002", "msg_id": "503"}}).to_string()})),
        ),
        (
            "Live Chat, no type, string id",
            body(json!({"sn": "3631A0000001", "msg": {"session_id": "1003"}})),
        ),
        (
            "Live Chat queued for 3 agents (the spec's example)",
            body(json!({"type": 30031, "msg": {"session_id": 2862, "msg_id": 504}})),
        ),
        (
            "Live Chat queued for 2 agents, bare form",
            body(json!({"session_id": 1011, "msg_id": "505"})),
        ),
        (
            "a read receipt (30038), skipped",
            body(
                json!({"type": 30038, "msg": json!({"data": {"session_id": 1000, "read_msg_id": 501}}).to_string()}),
            ),
        ),
        (
            "malformed: no session_id",
            body(json!({"type": 30031, "sn": "3631A0000001", "msg": {"msg_id": 506}})),
        ),
    ]
}

/// The session a demo agent picks up on the PBX, and who picks it up.
const PICKED_UP: (i64, i64) = (1011, 1003);

/// An agent picks a waiting session up on the PBX, which sends no event for
/// it: the worker's refresh of waiting sessions finds out within its
/// interval. Returns what happened, to print with the rows.
async fn pick_up_without_an_event(simulator: &Simulator, store: &Store) -> anyhow::Result<String> {
    let (session, agent) = PICKED_UP;
    let pending = |snapshot: &crate::store::Snapshot| {
        snapshot
            .pending_agents
            .iter()
            .filter(|a| a.session_id == session)
            .count()
    };
    let before = pending(&store.snapshot(DEMO_PBX, &[session]).await?);
    anyhow::ensure!(
        simulator.pick_up(session, agent),
        "the simulator has no session {session}"
    );
    println!(
        "\nAgent {agent} picks session {session} up on the PBX (pending agents in the table: {before}); the PBX sends no event for that."
    );
    let started = Instant::now();
    let within =
        Duration::from_millis(crate::defaults::REFRESH_INTERVAL_MS) + Duration::from_secs(10);
    while pending(&store.snapshot(DEMO_PBX, &[session]).await?) > 0 {
        anyhow::ensure!(
            started.elapsed() < within,
            "the pick-up of session {session} did not reach the tables within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(format!(
        "Session {session}: picked up on the PBX without an event; its {before} pending agents left `session_pending_agents` {:.1} s later, when the worker refreshed it (ENRICHER_REFRESH_INTERVAL_MS = {} ms).\n",
        started.elapsed().as_secs_f64(),
        crate::defaults::REFRESH_INTERVAL_MS
    ))
}

pub async fn run(
    store_settings: StoreSettings,
    broker_settings: BrokerSettings,
) -> anyhow::Result<ExitCode> {
    let simulator = Simulator::start(
        ([127, 0, 0, 1], 0).into(),
        SimulatorSettings {
            latency: Duration::from_millis(20),
            ..SimulatorSettings::default()
        },
    )
    .await
    .context("starting the PBX simulator")?;
    println!("PBX simulator on {}", simulator.base_url());

    let store = Store::open(&store_settings, true)
        .await
        .context("opening the database")?;
    // The demo's queues are its own scratch: start them afresh (this also
    // replaces ones an older version declared with other arguments).
    Broker::delete_topology(&broker_settings)
        .await
        .context("connecting to RabbitMQ")?;
    let publisher = Broker::connect(broker_settings.clone())
        .await
        .context("connecting to RabbitMQ")?;
    let dead_queue = broker_settings.dead_letter_queue();

    let sim_defaults = SimulatorSettings::default();
    let pbx = PbxClient::new(PbxSettings {
        base_url: simulator.base_url(),
        api_path: "openapi/v1.0".into(),
        client_id: sim_defaults.client_id,
        client_secret: sim_defaults.client_secret,
        concurrency: 8,
        request_timeout: Duration::from_secs(5),
        retry: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempts: 5,
        },
        login_retry_min: Duration::from_secs(60),
        query_batch: crate::defaults::QUERY_BATCH.into(),
        max_rps: None,
    })?;
    let counts = Arc::new(OutcomeCounts::default());
    let worker = Worker::new(
        broker_settings.clone(),
        Arc::new(pbx),
        store.clone(),
        WorkerSettings {
            pbx_id: DEMO_PBX.into(),
            ..WorkerSettings::default()
        },
        Arc::clone(&counts),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let samples = samples();
    println!(
        "\nPublishing {} events to `{}`:",
        samples.len(),
        broker_settings.queue
    );
    for (what, body) in &samples {
        publisher
            .publish_to_queue(&broker_settings.queue, body)
            .await?;
        println!("  - {what}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    while counts.snapshot().finished() < samples.len() as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the events were not all processed within 60 s: {:?}",
            counts.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let picked_up = pick_up_without_an_event(&simulator, &store).await?;
    stop.cancel();
    running.await.context("the worker task")??;

    let c = counts.snapshot();
    println!(
        "\nOutcomes: {} enriched, {} unchanged, {} skipped, {} not found, {} dead-lettered\n",
        c.enriched, c.unchanged, c.skipped, c.not_found, c.dead_lettered
    );
    let store = Store::open(&store_settings, false)
        .await
        .context("opening the database")?;
    let snapshot = store
        .snapshot(DEMO_PBX, &[1000, 1001, 1002, 1003, 1011, 2862])
        .await
        .context("reading the rows")?;
    println!("{}", report::snapshot(&snapshot));
    println!("{picked_up}");
    store.close().await;

    println!("{dead_queue}");
    let mut dead = Vec::new();
    while let Some(message) = publisher.take(&dead_queue).await? {
        dead.push(vec![
            String::from_utf8_lossy(&message.body).into_owned(),
            message.error.unwrap_or_default(),
        ]);
    }
    println!(
        "{}",
        report::table(&["body (unchanged)", "x-enricher-error"], &dead)
    );
    publisher.close().await;
    simulator.stop();
    Ok(ExitCode::SUCCESS)
}
