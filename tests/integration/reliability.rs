//! Nothing is lost across a worker restart.

use std::time::Duration;

use crate::helpers::{TestEnv, new_message_event, wait_until};

#[tokio::test]
async fn a_worker_restart_mid_queue_loses_nothing() {
    let env = TestEnv::new().await;
    env.sim.set_latency(Duration::from_millis(20));
    let total = 300;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let first = env.start_worker().await;
    wait_until("some events enriched by the first worker", || async {
        first.counts().enriched >= 40
    })
    .await;
    first.shutdown().await.expect("a clean shutdown");
    let done_by_first = env.session_count().await;
    assert!(
        done_by_first < total,
        "the restart must happen mid-queue ({done_by_first} done)"
    );
    assert!(env.queue_len(&env.queue).await > 0);

    let second = env.start_worker().await;
    wait_until("every session stored", || async {
        env.session_count().await == total
    })
    .await;
    wait_until("the queue drained", || async {
        env.queue_len(&env.queue).await == 0
    })
    .await;
    second.shutdown().await.expect("a clean shutdown");
    let missing: Vec<i64> = sqlx::query_scalar(
        "SELECT g FROM generate_series(1, $1::bigint) g
          WHERE NOT EXISTS (SELECT 1 FROM message_sessions WHERE session_id = g)",
    )
    .bind(total)
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(missing, Vec::<i64>::new());
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    assert_eq!(env.sim.stats().logins, 2, "one login per worker run");
    assert_eq!(env.sim.stats().live_tokens, 0, "each run revoked its token");
    env.finish().await;
}
