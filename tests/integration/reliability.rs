//! Nothing is lost across a worker restart.

use std::time::Duration;

use session_enricher::simulator::Fault;

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

/// Waits for a child process to exit, up to `limit`.
async fn wait_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
}

fn log_file(env: &TestEnv, what: &str) -> std::fs::File {
    std::fs::File::create(std::env::temp_dir().join(format!("{}-{what}.log", env.name)))
        .expect("a log file")
}

#[tokio::test]
async fn sigterm_mid_load_exits_0_in_time_and_every_event_is_committed_or_back_in_the_queue() {
    let env = TestEnv::new().await;
    env.sim.set_latency(Duration::from_millis(30));
    let total = 400;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let mut child = env
        .binary_run()
        .env("ENRICHER_SHUTDOWN_TIMEOUT", "10")
        // A small prefetch, one session per PBX call, four at a time: the
        // load lasts seconds and most of it is still queued when the signal
        // lands (what is in flight then is finished, not cut short).
        .env("ENRICHER_PREFETCH", "50")
        .env("ENRICHER_QUERY_BATCH", "1")
        .env("ENRICHER_PBX_CONCURRENCY", "4")
        .stderr(log_file(&env, "sigterm"))
        .spawn()
        .expect("start the binary");
    wait_until("the binary enriching", || async {
        env.session_count().await >= 40
    })
    .await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(15)).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "a clean exit within the deadline"
    );

    let committed = env.session_count().await;
    assert!(
        committed < total,
        "SIGTERM must land mid-load ({committed} done)"
    );
    let queued = env.take_session_ids(&env.queue).await;
    let committed_ids: Vec<i64> = sqlx::query_scalar("SELECT session_id FROM message_sessions")
        .fetch_all(&env.db)
        .await
        .unwrap();
    let mut accounted: Vec<i64> = committed_ids.into_iter().chain(queued).collect();
    accounted.sort_unstable();
    accounted.dedup();
    assert_eq!(
        accounted,
        (1..=total).collect::<Vec<_>>(),
        "every event committed or back in the queue"
    );
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    assert_eq!(env.sim.stats().live_tokens, 0, "the token was revoked");
    env.finish().await;
}

#[tokio::test]
async fn a_message_that_keeps_crashing_the_worker_ends_in_the_dead_letter_queue() {
    let env = TestEnv::new().await;
    let limit = env.broker_settings().delivery_limit;
    // Every fetch hangs, so each worker dies holding the message.
    env.sim.fail_next_session_requests(std::iter::repeat_n(
        Fault::Delay(Duration::from_secs(120)),
        50,
    ));
    let poison = new_message_event(4242);
    env.publish_json(&poison).await;
    let mut crashes = 0;
    while env.queue_len(&env.dead_queue).await == 0 {
        assert!(
            crashes <= limit + 1,
            "still not dead-lettered after {crashes} crashes"
        );
        let requests = env.sim.stats().session_requests;
        let mut child = env
            .binary_run()
            .stderr(log_file(&env, "crash"))
            .spawn()
            .expect("start the binary");
        let fetching_or_gone = || async {
            env.sim.stats().session_requests > requests || env.queue_len(&env.dead_queue).await > 0
        };
        wait_until("the worker fetching the poison session", fetching_or_gone).await;
        signal(&child, "-KILL");
        wait_exit(&mut child, Duration::from_secs(10))
            .await
            .expect("killed");
        crashes += 1;
        wait_until("the message back in the queue or dead-lettered", || async {
            env.queue_len(&env.queue).await + env.queue_len(&env.dead_queue).await == 1
        })
        .await;
    }
    let dead = env.take_dead_letters_in_full().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, poison.to_string().into_bytes());
    assert_eq!(dead[0].broker_reason.as_deref(), Some("delivery_limit"));
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert!(
        crashes >= limit,
        "dead-lettered after {crashes} crashes, limit {limit}"
    );
    env.finish().await;
}

#[tokio::test]
async fn a_shutdown_past_its_deadline_exits_non_zero_and_leaves_the_work_in_the_queue() {
    let env = TestEnv::new().await;
    // The fetch hangs far longer than the 1 s shutdown deadline.
    env.sim.fail_next_session_requests(std::iter::repeat_n(
        Fault::Delay(Duration::from_secs(120)),
        5,
    ));
    env.publish_json(&new_message_event(77)).await;
    let requests = env.sim.stats().session_requests;
    let mut child = env
        .binary_run()
        .env("ENRICHER_SHUTDOWN_TIMEOUT", "1")
        .stderr(log_file(&env, "deadline"))
        .spawn()
        .expect("start the binary");
    wait_until("the worker fetching", || async {
        env.sim.stats().session_requests > requests
    })
    .await;
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10))
        .await
        .expect("it exits");
    assert_eq!(
        status.code(),
        Some(1),
        "past the deadline the exit is non-zero"
    );
    wait_until("the event back in the queue", || async {
        env.queue_len(&env.queue).await == 1
    })
    .await;
    assert_eq!(env.session_count().await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    env.finish().await;
}
