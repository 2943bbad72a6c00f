//! Acks in runs (`broker::Delivery::ack`): one `multiple` ack settles
//! deliveries finished in a row, never one still in the works, never one
//! returned; a slow delivery holds back no later ack; and a worker leaves
//! nothing unacked.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use session_enricher::broker::Broker;
use session_enricher::simulator::Fault;
use session_enricher::worker::WorkerError;

use crate::helpers::{TestEnv, new_message_event, wait_for, wait_until};

/// Deliveries settled in a scrambled order over a few times the ack linger,
/// every seventh returned to the queue: every ack and nack is taken by the
/// broker (a tag acked twice or unknown would close the channel), exactly
/// the returned ones are back in the queue, and no other.
#[tokio::test]
async fn acks_out_of_order_with_returns_among_them_settle_each_delivery_once() {
    let env = TestEnv::new().await;
    let total = 60u64;
    for n in 0..total {
        env.publish(format!("delivery {n}").as_bytes()).await;
    }
    let mut settings = env.broker_settings();
    settings.prefetch = 100;
    let broker = Broker::connect(settings).await.unwrap();
    let mut deliveries = broker.consume("acks-test").await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..total {
        let next = tokio::time::timeout(Duration::from_secs(30), deliveries.next()).await;
        taken.push(
            next.expect("a delivery in time")
                .expect("the consumer lives")
                .unwrap(),
        );
    }
    broker.cancel("acks-test").await.unwrap();
    // Tag n (1-based) settles at step (n * 37) mod 61: a fixed scramble.
    let settled = join_all(taken.iter().enumerate().map(|(n, delivery)| {
        let step = (n as u64 + 1) * 37 % 61;
        async move {
            tokio::time::sleep(Duration::from_micros(step * 300)).await;
            if n % 7 == 3 {
                delivery.requeue().await
            } else {
                delivery.ack().await
            }
        }
    }))
    .await;
    for (n, result) in settled.iter().enumerate() {
        assert!(
            matches!(result, Ok(true)),
            "delivery {n} not settled: {result:?}"
        );
    }
    // The channel took every frame: a sync request on it still succeeds.
    drop(deliveries);
    assert!(broker.consume("acks-probe").await.is_ok(), "channel alive");
    broker.close().await;
    let returned: BTreeSet<Vec<u8>> = (0..total)
        .filter(|n| n % 7 == 3)
        .map(|n| format!("delivery {n}").into_bytes())
        .collect();
    wait_until("the returned deliveries back in the queue", || async {
        env.queue_len(&env.queue).await as usize >= returned.len()
    })
    .await;
    let back: BTreeSet<Vec<u8>> = env
        .take_messages(&env.queue)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(back, returned, "exactly the returned deliveries are back");
    env.finish().await;
}

#[tokio::test]
async fn a_worker_acks_every_event_and_leaves_none_unacked() {
    let env = TestEnv::new().await;
    let total = 300;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let worker = env.start_worker().await;
    worker.wait_finished(total as u64).await;
    assert_eq!(worker.counts().enriched, total as u64);
    worker.shutdown().await.unwrap();
    assert_eq!(env.session_count().await, total);
    assert_eq!(env.sim.stats().ids_requested, total as u64);
    assert_eq!(env.queue_len(&env.queue).await, 0, "nothing came back");
    env.finish().await;
}

/// One delivery stuck in a slow PBX fetch, with a prefetch of 4: if the
/// acks of later deliveries waited for it, the prefetch window would fill
/// and consumption stall. They are acked, and only the slow one is left.
#[tokio::test]
async fn a_slow_delivery_does_not_hold_back_the_acks_of_later_ones() {
    let env = TestEnv::new().await;
    // The first fetch (of one of the first few sessions) hangs.
    env.sim
        .fail_next_session_requests([Fault::Delay(Duration::from_secs(120))]);
    let total = 41;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let mut setup = env.setup();
    setup.broker.prefetch = 4;
    // One session per fetch, so the hung fetch holds one delivery.
    setup.worker.pipeline.fetch_batch = 1;
    // The hanging fetch does not time out while the test runs.
    setup.pbx.request_timeout = Duration::from_secs(300);
    setup.worker.shutdown_timeout = Duration::from_secs(1);
    let worker = env.spawn(setup);
    worker.wait_finished(total as u64 - 1).await;
    assert_eq!(env.session_count().await, total - 1);
    // Shutting down past its deadline, the worker leaves the slow one
    // unacked; it alone comes back.
    assert!(matches!(
        worker.shutdown().await,
        Err(WorkerError::ShutdownDeadline(_))
    ));
    wait_until("the slow event back in the queue", || async {
        env.queue_len(&env.queue).await >= 1
    })
    .await;
    let back = env.take_session_ids(&env.queue).await;
    assert_eq!(back.len(), 1, "{back:?}");
    assert!(env.session_row(back[0]).await.is_none(), "{back:?}");
    env.finish().await;
}

/// With one fetcher, the sixth session fails past the in-process budget in
/// the middle of a run of finished deliveries: it reaches the retry queue,
/// comes back and is enriched, and nothing else is asked twice.
#[tokio::test]
async fn a_delivery_retried_in_the_middle_of_a_run_reaches_the_retry_queue_and_comes_back() {
    let env = TestEnv::new().await;
    let total = 30;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let mut faults = vec![Fault::Delay(Duration::ZERO); 5];
    faults.extend(std::iter::repeat_n(Fault::HttpStatus(503), 5));
    env.sim.fail_next_session_requests(faults);
    let mut setup = env.setup();
    setup.worker.pipeline.fetchers = 1;
    // One session per call, so the faults hit the calls counted below.
    setup.worker.pipeline.fetch_batch = 1;
    setup.pbx.concurrency = 1;
    let worker = env.spawn(setup);
    worker.wait_finished(total as u64).await;
    let counts = worker.counts();
    assert_eq!((counts.enriched, counts.retried), (total as u64, 1));
    assert_eq!(env.sim.stats().session_requests, total as u64 + 5);
    worker.shutdown().await.unwrap();
    assert_eq!(env.session_count().await, total);
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(env.queue_len(&format!("{}.retry", env.queue)).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    env.finish().await;
}

/// A PBX refusal of the worker's configuration in the middle of the load:
/// the refused delivery and those in flight are returned (a frame each,
/// never covered by a run), the worker pauses, resumes, and every event is
/// enriched in the end.
#[tokio::test]
async fn deliveries_returned_in_the_middle_of_a_run_come_back_and_are_enriched() {
    let env = TestEnv::new().await;
    let total = 40;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let mut faults = vec![Fault::Delay(Duration::ZERO); 10];
    // errcode 10005: the PBX refuses the worker's configuration.
    faults.push(Fault::Errcode(10005));
    env.sim.fail_next_session_requests(faults);
    let mut setup = env.setup();
    setup.worker.pipeline.fetchers = 1;
    // One session per call, so the faults hit the calls counted below.
    setup.worker.pipeline.fetch_batch = 1;
    setup.pbx.concurrency = 1;
    let worker = env.spawn(setup);
    worker.wait_finished(total as u64).await;
    let counts = worker.counts();
    assert!(counts.held >= 1, "{counts:?}");
    // Each enriched once: no ack was lost to a closed channel and
    // redelivered.
    assert_eq!(
        (counts.enriched, counts.unchanged, counts.dead_lettered),
        (total as u64, 0, 0)
    );
    worker.shutdown().await.unwrap();
    assert_eq!(env.session_count().await, total);
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    env.finish().await;
}

/// The worker binary under load sends fewer ack frames than deliveries,
/// some with `multiple` (its metrics are its own).
#[tokio::test]
async fn the_worker_binary_acks_a_backlog_in_runs() {
    let env = TestEnv::new().await;
    let total = 300;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let child = env
        .binary_run()
        .env("ENRICHER_HTTP_ADDR", addr.to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the binary");
    let child = Stopped(child);
    let url = format!("http://{addr}/metrics");
    let metrics = wait_for("every event enriched, as /metrics counts them", || async {
        let metrics = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let enriched = sample(&metrics, r#"enricher_events_total{outcome="enriched"}"#);
        (enriched == Some(total as f64)).then_some(metrics)
    })
    .await;
    let frame = |kind: &str| {
        sample(
            &metrics,
            &format!(r#"enricher_ack_frames_total{{kind="{kind}"}}"#),
        )
        .unwrap_or_else(|| panic!("{kind} frames in\n{metrics}"))
    };
    let (single, multiple) = (frame("single"), frame("multiple"));
    assert!(multiple >= 1.0, "{single} single, {multiple} multiple");
    assert!(
        single + multiple < total as f64,
        "{single} single + {multiple} multiple frames for {total} deliveries"
    );
    drop(child);
    env.finish().await;
}

/// A series' value in the metrics text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// A child process killed when the test ends, passed or not.
struct Stopped(std::process::Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
