//! Every shape of event body gets a clear outcome: enriched, skipped, or
//! dead-lettered byte for byte with a reason.

use serde_json::json;

use crate::helpers::{TestEnv, new_message_event};

#[tokio::test]
async fn every_accepted_envelope_shape_is_enriched() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    let shapes = [
        json!({"type": 30031, "sn": "1", "msg": {"session_id": 101}}),
        json!({"type": 30031, "sn": "1", "msg": json!({"session_id": 102, "msg_id": 7}).to_string()}),
        json!({"type": 30031, "sn": "1", "msg": json!({"data": {"session_id": 103}}).to_string()}),
        json!({"sn": "1", "msg": {"session_id": 104}}),
        json!({"type": 30031, "msg": {"session_id": "105"}}),
        json!({"session_id": 106, "msg_id": "m-1"}),
    ];
    for shape in &shapes {
        env.publish_json(shape).await;
    }
    worker.wait_finished(6).await;
    assert_eq!(worker.counts().enriched, 6);
    let ids: Vec<i64> = sqlx::query_scalar("SELECT session_id FROM message_sessions ORDER BY 1")
        .fetch_all(&env.db)
        .await
        .unwrap();
    assert_eq!(ids, vec![101, 102, 103, 104, 105, 106]);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn every_malformed_kind_lands_in_the_dead_letter_queue_unchanged_with_its_reason() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    let malformed: [(&[u8], &str); 9] = [
        (b"this is not json", "not JSON"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (
            br#"{"type": 30031, "msg": {"msg_id": 5}}"#,
            "no `session_id`",
        ),
        (
            br#"{"type": 30031, "msg": {"session_id": "abc"}}"#,
            "not a positive integer",
        ),
        (
            br#"{"type": 30031, "msg": {"session_id": 0}}"#,
            "not a positive integer",
        ),
        (
            br#"{"type": 30031, "msg": {"session_id": -12}}"#,
            "not a positive integer",
        ),
        (
            br#"{"type": 30031, "msg": "{not json"}"#,
            "`msg` is neither",
        ),
        (
            br#"{"type": "new-message", "msg": {"session_id": 1}}"#,
            "`type` is not an integer",
        ),
    ];
    for (body, _) in &malformed {
        env.publish(body).await;
    }
    // The worker keeps running: a valid event after them is enriched.
    env.publish_json(&new_message_event(2862)).await;
    worker.wait_finished(10).await;
    let counts = worker.counts();
    assert_eq!((counts.dead_lettered, counts.enriched), (9, 1));

    let mut dead = env.take_dead_letters().await;
    assert_eq!(
        dead.len(),
        9,
        "each malformed event is dead-lettered exactly once"
    );
    for (body, reason_part) in &malformed {
        let at = dead.iter().position(|(b, _)| b == body).unwrap_or_else(|| {
            panic!(
                "{:?} is not in the dead-letter queue byte for byte",
                String::from_utf8_lossy(body)
            )
        });
        let (_, reason) = dead.remove(at);
        assert!(
            reason.contains(reason_part),
            "reason {reason:?} should mention {reason_part:?}"
        );
    }
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(
        env.sim.stats().session_requests,
        1,
        "no PBX call for a malformed event"
    );
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn an_event_type_the_worker_does_not_handle_is_skipped_without_a_pbx_call() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.publish_json(&json!({"type": 30038, "sn": "1", "msg": json!({"data": {"session_id": 5, "read_msg_id": 1}}).to_string()}))
        .await;
    env.publish_json(&json!({"type": 30032, "msg": {"session_id": 6, "delivery_status": 1}}))
        .await;
    worker.wait_finished(2).await;
    assert_eq!(worker.counts().skipped, 2);
    assert_eq!(env.sim.stats().session_requests, 0);
    assert_eq!(env.sim.stats().logins, 0, "not even a login");
    assert_eq!(env.session_count().await, 0);
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn the_handled_event_types_are_configurable() {
    let env = TestEnv::new().await;
    let settings = session_enricher::worker::WorkerSettings {
        handled_types: vec![30031, 30032],
        ..env.worker_settings()
    };
    let worker = env.start_worker_with(settings).await;
    env.publish_json(&json!({"type": 30032, "msg": {"session_id": 6, "delivery_status": 1}}))
        .await;
    worker.wait_finished(1).await;
    assert_eq!(worker.counts().enriched, 1);
    assert!(env.session_row(6).await.is_some());
    worker.shutdown().await.unwrap();
    env.finish().await;
}
