//! Request-time ordering: a row never takes an answer to a request sent
//! before the one its answer came from, however late that answer arrives;
//! of two requests sent at the same instant, the later answer wins. Held by
//! the store's guard and seen end to end with two workers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use session_enricher::session::{FetchedSession, SessionId, SessionInfo};
use session_enricher::simulator::{Simulator, SimulatorSettings};
use session_enricher::store::{Answer, BatchResult, Store};
use sqlx::Row;

use crate::helpers::{PBX, Proxy, TestEnv, new_message_event, wait_until};

/// A WhatsApp session queued for `agents`, its customer called `username`.
fn queued(id: i64, agents: &[i64], username: &str) -> serde_json::Value {
    let participants: Vec<_> = agents
        .iter()
        .map(|a| json!({"user_id": a, "user_no": a.to_string(), "user_type": 1}))
        .collect();
    json!({
        "id": id, "channel_type": "whatsapp", "channel_name": "WA",
        "user_info": {"user_id": 0, "user_no": "+447700900001", "user_type": 3, "username": username},
        "participants": participants
    })
}

fn found(
    id: i64,
    agents: &[i64],
    username: &str,
    requested_at: DateTime<Utc>,
    fetched_at: DateTime<Utc>,
) -> Answer {
    Answer::Found(Box::new(FetchedSession {
        info: SessionInfo::decode(queued(id, agents, username)).unwrap(),
        requested_at,
        fetched_at,
    }))
}

fn missing(id: i64, requested_at: DateTime<Utc>, seen_at: DateTime<Utc>) -> Answer {
    Answer::Missing {
        id: SessionId::new(id).unwrap(),
        requested_at,
        seen_at,
    }
}

async fn write(store: &Store, answer: Answer) -> BatchResult {
    let mut results = store.write_batch(PBX, &[answer], None).await.unwrap();
    assert_eq!(results.len(), 1);
    results.remove(0)
}

/// `(requested_at, fetched_at)` of a session's row, in microseconds (what
/// Postgres keeps), and whether it is marked missing.
async fn stamps(env: &TestEnv, id: i64) -> (i64, i64, bool) {
    let row = env.session_row(id).await.expect("a row");
    let at = |column: &str| row.get::<DateTime<Utc>, _>(column).timestamp_micros();
    (
        at("requested_at"),
        at("fetched_at"),
        row.get::<Option<DateTime<Utc>>, _>("missing_at").is_some(),
    )
}

async fn customer_name(env: &TestEnv) -> Option<String> {
    sqlx::query_scalar("SELECT username FROM customers WHERE pbx = $1")
        .bind(PBX)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_answer_to_an_earlier_request_is_refused_even_when_it_arrives_later() {
    let env = TestEnv::new().await;
    let store = env.store();
    let t = Utc::now();
    let ms = chrono::Duration::milliseconds;
    let micros = |at: DateTime<Utc>| at.timestamp_micros();

    // Sent at +10, answered at +20: written.
    let newer = found(80, &[3], "Now", t + ms(10), t + ms(20));
    assert_eq!(write(&store, newer).await, BatchResult::Written);
    // Sent earlier (at +0) but answered later (at +50): the PBX described
    // the session as it was before; nothing changes.
    let older = found(80, &[1, 2], "Before", t, t + ms(50));
    assert_eq!(write(&store, older).await, BatchResult::Stale);
    assert_eq!(env.pending_agents(80).await, vec![(3, 0)]);
    assert_eq!(customer_name(&env).await.as_deref(), Some("Now"));
    assert_eq!(
        stamps(&env, 80).await,
        (micros(t + ms(10)), micros(t + ms(20)), false)
    );
    // "Not found" to an earlier request does not mark it missing either.
    let gone_before = missing(80, t + ms(5), t + ms(60));
    assert_eq!(
        write(&store, gone_before).await,
        BatchResult::Missing { marked: false }
    );
    assert_eq!(env.pending_agents(80).await, vec![(3, 0)]);
    assert!(!stamps(&env, 80).await.2);

    // Requests sent at the same instant: the later answer wins, an earlier
    // one is stale.
    let same_time_later = found(80, &[4], "Later", t + ms(10), t + ms(30));
    assert_eq!(write(&store, same_time_later).await, BatchResult::Written);
    let same_time_earlier = found(80, &[5], "Earlier", t + ms(10), t + ms(25));
    assert_eq!(write(&store, same_time_earlier).await, BatchResult::Stale);
    assert_eq!(env.pending_agents(80).await, vec![(4, 0)]);
    assert_eq!(customer_name(&env).await.as_deref(), Some("Later"));
    let gone_same_time = missing(80, t + ms(10), t + ms(40));
    assert_eq!(
        write(&store, gone_same_time).await,
        BatchResult::Missing { marked: true }
    );
    assert_eq!(
        stamps(&env, 80).await,
        (micros(t + ms(10)), micros(t + ms(40)), true)
    );
    assert_eq!(env.pending_agents(80).await, vec![]);
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn rows_the_previous_release_inserts_take_their_fetched_at_as_request_time() {
    // During a rolling update, workers of the previous release insert rows
    // without requested_at; they are not refused.
    let env = TestEnv::new().await;
    sqlx::query(
        "INSERT INTO message_sessions (pbx, session_id, raw, fetched_at)
         VALUES ($1, 81, '{}', '2026-11-25 12:00:00+00')",
    )
    .bind(PBX)
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO customers (pbx, user_type, user_no, username, fetched_at)
         VALUES ($1, 3, '+447700900001', 'C', '2026-11-25 12:00:01+00')",
    )
    .bind(PBX)
    .execute(&env.db)
    .await
    .unwrap();
    let (requested, fetched, _) = stamps(&env, 81).await;
    assert_eq!(requested, fetched);
    let customer_same: bool = sqlx::query_scalar(
        "SELECT requested_at = fetched_at FROM customers WHERE pbx = $1 AND user_no = '+447700900001'",
    )
    .bind(PBX)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert!(customer_same);
    env.finish().await;
}

/// The scenario. Worker A asks for a queued session and its answer
/// hangs on the way back; the session is picked up; worker B asks after
/// that, and commits the pick-up (no pending agents); then A's answer, the
/// old snapshot, arrives. It arrived last, but it answers the earlier
/// request: the pick-up stays.
///
/// A's PBX is a second simulator that still holds the old state (so the
/// snapshot A gets is certain), reached through a proxy that holds its
/// replies; B asks the test's simulator, which has the new state.
#[tokio::test]
async fn two_workers_a_slow_answer_to_an_earlier_request_never_undoes_a_newer_one() {
    let env = TestEnv::new().await;
    let before_pick_up = Simulator::start(([127, 0, 0, 1], 0).into(), SimulatorSettings::default())
        .await
        .unwrap();
    before_pick_up.set_session(82, queued(82, &[1, 2], "Customer"));
    env.sim.set_session(82, queued(82, &[], "Customer"));
    let proxy = Proxy::pbx(&before_pick_up).await;

    // Worker A holds one delivery at a time, so the second event goes to B.
    let mut a = env.setup();
    a.broker.prefetch = 1;
    a.pbx.base_url = proxy.url();
    // Its held request must not time out and be sent again meanwhile.
    a.pbx.request_timeout = Duration::from_secs(60);
    let worker_a = env.spawn(a);
    // A warm-up event, so A holds a token before its replies are held.
    env.publish_json(&new_message_event(83)).await;
    worker_a.wait_finished(1).await;

    proxy.hold_replies();
    env.publish_json(&new_message_event(82)).await;
    wait_until("worker A's request reached its PBX", || async {
        before_pick_up.stats().session_requests == 2
    })
    .await;

    let worker_b = env.start_worker().await;
    env.publish_json(&new_message_event(82)).await;
    worker_b.wait_finished(1).await;
    assert_eq!(worker_b.counts().enriched, 1);
    assert_eq!(env.pending_agents(82).await, vec![], "B wrote the pick-up");
    let written_by_b = stamps(&env, 82).await;

    // A's old answer arrives now, after B's commit.
    proxy.restore();
    worker_a.wait_finished(2).await;
    assert_eq!(worker_a.counts().unchanged, 1, "A's answer was found stale");
    assert_eq!(env.pending_agents(82).await, vec![], "the pick-up stays");
    assert_eq!(
        stamps(&env, 82).await,
        written_by_b,
        "requested_at and fetched_at are still B's"
    );
    let raw: serde_json::Value = env.session_row(82).await.unwrap().get("raw");
    assert_eq!(raw["participants"], json!([]));
    assert_eq!(
        (
            before_pick_up.stats().session_requests,
            env.sim.stats().session_requests
        ),
        (2, 1),
        "one request each for session 82, none sent again"
    );

    worker_a.shutdown().await.unwrap();
    worker_b.shutdown().await.unwrap();
    before_pick_up.stop();
    env.finish().await;
}
