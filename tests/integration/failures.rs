//! The failure policy, one test per row (README "Failure policy"): every
//! published event ends in Postgres or in `.dead` with a reason, none in
//! limbo, none dead-lettered twice.

use std::time::Duration;

use session_enricher::secret::Secret;
use session_enricher::simulator::Fault;

use crate::helpers::{Proxy, TestEnv, WorkerSetup, new_message_event, wait_until};

#[tokio::test]
async fn a_transient_failure_past_the_in_process_budget_waits_in_the_retry_queue_then_succeeds() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    // The PBX client tries 5 times in-process; all 5 fail.
    env.sim
        .fail_next_session_requests(std::iter::repeat_n(Fault::HttpStatus(503), 5));
    env.publish_json(&new_message_event(2862)).await;
    worker.wait_finished(1).await;
    let counts = worker.counts();
    assert_eq!(
        (counts.retried, counts.enriched, counts.dead_lettered),
        (1, 1, 0)
    );
    assert_eq!(env.sim.stats().session_requests, 6);
    assert_eq!(env.pending_agents(2862).await.len(), 3);
    assert_eq!(env.queue_len(&format!("{}.retry", env.queue)).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn an_event_that_keeps_failing_is_dead_lettered_once_with_its_attempts() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    // 3 durable attempts (test settings) of 5 in-process tries each.
    env.sim
        .fail_next_session_requests(std::iter::repeat_n(Fault::Errcode(-2), 15));
    let event = new_message_event(31);
    env.publish_json(&event).await;
    worker.wait_finished(1).await;
    let counts = worker.counts();
    assert_eq!(
        (counts.retried, counts.dead_lettered, counts.enriched),
        (2, 1, 0)
    );
    assert_eq!(env.sim.stats().session_requests, 15);
    let dead = env.take_dead_letters_in_full().await;
    assert_eq!(dead.len(), 1, "dead-lettered exactly once");
    assert_eq!(
        dead[0].body,
        event.to_string().into_bytes(),
        "body unchanged"
    );
    let reason = dead[0].reason.clone().unwrap_or_default();
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("-2"),
        "{reason}"
    );
    assert_eq!(dead[0].attempts, Some(3));
    assert_eq!(env.session_count().await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_pbx_configuration_refusal_pauses_consuming_and_nothing_is_dead_lettered() {
    let env = TestEnv::new().await;
    let mut setup = env.setup();
    setup.pbx.login_retry_min = Duration::from_millis(300);
    // The first login is refused: this IP is not on the PBX's allow-list.
    env.sim.fail_next_logins([Fault::Errcode(70087)]);
    let worker = env.spawn(setup);
    for id in 1..=10 {
        env.publish_json(&new_message_event(id)).await;
    }
    wait_until("the worker paused with the reason", || async {
        worker
            .status
            .problem()
            .is_some_and(|p| p.contains("allow-list"))
            && !worker.status.is_consuming()
    })
    .await;
    // Nothing acked, nothing dead-lettered: the events are back in the queue.
    wait_until("all ten events back in the queue", || async {
        env.queue_len(&env.queue).await == 10
    })
    .await;
    assert_eq!(worker.counts().finished(), 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);

    // The administrator fixes the allow-list: the next probe gets in.
    worker.wait_finished(10).await;
    let counts = worker.counts();
    assert_eq!((counts.enriched, counts.dead_lettered), (10, 0));
    assert_eq!(env.sim.stats().logins, 2);
    assert!(worker.status.problem().is_none());
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn refused_credentials_are_tried_at_most_three_times_spaced_apart() {
    let env = TestEnv::new().await;
    let mut setup = env.setup();
    setup.pbx.client_secret = Secret::new("wrong-secret");
    setup.pbx.login_retry_min = Duration::from_millis(100);
    let worker = env.spawn(setup);
    for id in 1..=5 {
        env.publish_json(&new_message_event(id)).await;
    }
    wait_until("logins stopped after refusals", || async {
        worker
            .status
            .problem()
            .is_some_and(|p| p.contains("logins stopped"))
    })
    .await;
    // Once stopped, nothing in the worker logs in again: the count is final.
    let stats = env.sim.stats();
    assert_eq!(
        (stats.logins, stats.refused_logins, stats.session_requests),
        (3, 3, 0)
    );
    wait_until("the events back in the queue", || async {
        env.queue_len(&env.queue).await == 5
    })
    .await;
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    assert_eq!(worker.counts().finished(), 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn postgres_unavailable_pauses_consuming_and_resumes_by_itself() {
    let env = TestEnv::new().await;
    let postgres = Proxy::postgres().await;
    let mut setup = env.setup();
    setup.store.url = env.db_url_via(&postgres);
    let worker = env.spawn(setup);
    env.publish_json(&new_message_event(1)).await;
    worker.wait_finished(1).await;

    postgres.cut();
    for id in 2..=11 {
        env.publish_json(&new_message_event(id)).await;
    }
    wait_until("the worker paused for the database", || async {
        worker
            .status
            .problem()
            .is_some_and(|p| p.contains("database"))
            && !worker.status.is_consuming()
    })
    .await;
    wait_until("the events back in the queue", || async {
        env.queue_len(&env.queue).await == 10
    })
    .await;
    assert_eq!(worker.counts().finished(), 1);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);

    postgres.restore();
    worker.wait_finished(11).await;
    assert_eq!(env.session_count().await, 11);
    assert_eq!(worker.counts().dead_lettered, 0);
    wait_until("the queue drained", || async {
        env.queue_len(&env.queue).await == 0
    })
    .await;
    worker.shutdown().await.unwrap();
    env.finish().await;
}

async fn broker_outage(stall: bool) {
    let env = TestEnv::new().await;
    env.sim.set_latency(Duration::from_millis(10));
    let broker = Proxy::broker().await;
    let setup = WorkerSetup {
        broker: session_enricher::broker::BrokerSettings {
            url: env.amqp_url_via(&broker),
            ..env.broker_settings()
        },
        ..env.setup()
    };
    let total = 200;
    for id in 1..=total {
        env.publish_json(&new_message_event(id)).await;
    }
    let worker = env.spawn(setup);
    wait_until("some events enriched", || async {
        worker.counts().enriched >= 20
    })
    .await;
    if stall {
        broker.stall();
    } else {
        broker.cut();
    }
    wait_until("the worker noticed the lost connection", || async {
        !worker.status.is_consuming()
    })
    .await;
    broker.restore();
    wait_until("every session stored", || async {
        env.session_count().await == total
    })
    .await;
    wait_until("the queue drained", || async {
        env.queue_len(&env.queue).await == 0
    })
    .await;
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_cut_broker_connection_is_reestablished_and_nothing_is_lost() {
    broker_outage(false).await;
}

#[tokio::test]
async fn a_stalled_broker_connection_is_noticed_by_heartbeat_and_replaced() {
    broker_outage(true).await;
}

#[tokio::test]
async fn a_queue_declared_with_other_arguments_stops_the_worker_with_a_clear_message() {
    let env = TestEnv::new().await;
    let mut setup = env.setup();
    // A queue someone declared by hand: classic, no dead-lettering.
    setup.broker.queue = format!("{}.handmade", env.queue);
    env.declare_classic_queue(&setup.broker.queue).await;
    let worker = env.spawn(setup);
    let error = worker
        .handle
        .await
        .unwrap()
        .expect_err("the worker must refuse to start");
    let message = error.to_string();
    assert!(
        message.contains(".handmade") && message.contains("other arguments"),
        "{message}"
    );
    env.delete_queue(&format!("{}.handmade", env.queue)).await;
    env.finish().await;
}
