//! Waiting sessions kept fresh without events: a pick-up on the PBX that no
//! event announces reaches the tables within the refresh interval, and
//! replicas share the refreshing instead of repeating it.

use std::time::{Duration, Instant};

use session_enricher::simulator::{synthetic_is_queued, synthetic_session};
use session_enricher::worker::RefreshSettings;

use crate::helpers::{TestEnv, new_message_event, wait_until};

const INTERVAL: Duration = Duration::from_secs(1);

fn refreshing(env: &TestEnv) -> crate::helpers::WorkerSetup {
    let mut setup = env.setup();
    setup.worker.refresh = RefreshSettings::every(INTERVAL);
    setup
}

/// `ids` as the PBX has them after a pick-up: nobody pending.
fn picked_up(id: i64) -> serde_json::Value {
    let mut session = synthetic_session(id).expect("a synthetic session");
    session
        .as_object_mut()
        .expect("an object")
        .remove("participants");
    session
}

async fn refresh_due(env: &TestEnv, id: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("SELECT refresh_due_at FROM message_sessions WHERE session_id = $1")
        .bind(id)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_session_picked_up_without_an_event_loses_its_pending_agents_and_is_no_longer_fetched() {
    let env = TestEnv::new().await;
    let id = 3003;
    assert!(synthetic_is_queued(id));
    let worker = env.spawn(refreshing(&env));
    env.publish_json(&new_message_event(id)).await;
    worker.wait_finished(1).await;
    assert!(!env.pending_agents(id).await.is_empty());
    assert!(
        refresh_due(&env, id).await.is_some(),
        "a waiting session is due"
    );

    // An agent picks the session up on the PBX: no event says so.
    env.sim.set_session(id, picked_up(id));
    let picked_up_at = Instant::now();
    wait_until("the pick-up reaches the tables", || async {
        env.pending_agents(id).await.is_empty()
    })
    .await;
    assert!(
        picked_up_at.elapsed() <= INTERVAL + Duration::from_secs(5),
        "{:?}",
        picked_up_at.elapsed()
    );
    assert_eq!(worker.counts().enriched, 1, "no event was involved");
    assert_eq!(refresh_due(&env, id).await, None, "refreshing stopped");

    // And it is no longer fetched.
    let asked = env.sim.stats().ids_requested;
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(env.sim.stats().ids_requested, asked);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn two_replicas_share_the_refreshing_instead_of_repeating_it() {
    let env = TestEnv::new().await;
    let waiting: Vec<i64> = (1..).map(|n| n * 3).take(50).collect();
    for &id in &waiting {
        env.publish_json(&new_message_event(id)).await;
    }
    let first = env.spawn(refreshing(&env));
    first.wait_finished(50).await;
    let window = INTERVAL * 5;

    let asked = |env: &TestEnv| {
        let stats = env.sim.stats();
        (
            stats.session_requests + stats.query_requests,
            stats.ids_requested,
        )
    };
    let before = asked(&env);
    tokio::time::sleep(window).await;
    let one = asked(&env);
    let (one_calls, one_ids) = (one.0 - before.0, one.1 - before.1);

    let second = env.spawn(refreshing(&env));
    tokio::time::sleep(INTERVAL).await; // the second replica is consuming
    let before = asked(&env);
    tokio::time::sleep(window).await;
    let two = asked(&env);
    let (two_calls, two_ids) = (two.0 - before.0, two.1 - before.1);

    // Every waiting session about once per interval, whoever refreshes it.
    assert!(one_ids >= 150, "one replica refreshed {one_ids} sessions");
    assert!(
        two_ids as f64 <= 1.5 * one_ids as f64,
        "two replicas asked for {two_ids} sessions, one for {one_ids}"
    );
    assert!(
        two_calls as f64 <= 1.5 * one_calls as f64,
        "two replicas made {two_calls} calls, one {one_calls}"
    );
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    env.finish().await;
}
