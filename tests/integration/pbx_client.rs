//! The PBX client as the worker uses it: one login, token renewal, bounded
//! retries of transient failures, permanent refusals dead-lettered, answers
//! stamped with their request's time, and the request budget (a rate, and
//! the PBX's `Retry-After`).

use std::time::{Duration, Instant};

use chrono::Utc;
use session_enricher::pbx::{PbxClient, PbxError};
use session_enricher::session::SessionId;
use session_enricher::simulator::Fault;
use session_enricher::store::Answer;

use crate::helpers::{TestEnv, new_message_event, wait_for, wait_until};

#[tokio::test]
async fn one_login_serves_many_events_and_a_10004_renews_the_token_without_another_login() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    for id in 1..=40 {
        env.publish_json(&new_message_event(id)).await;
    }
    worker.wait_finished(40).await;
    assert_eq!(
        env.sim.stats().logins,
        1,
        "one token for all events, even fetched concurrently"
    );

    env.sim.expire_tokens();
    env.publish_json(&new_message_event(41)).await;
    worker.wait_finished(41).await;
    assert_eq!(worker.counts().enriched, 41);
    let stats = env.sim.stats();
    assert_eq!(
        stats.logins, 1,
        "renewed with refresh_token, not a new login"
    );
    assert_eq!(stats.refreshes, 1);
    assert_eq!(stats.live_tokens, 1);
    // 40 (alone or in batches) + the refused one + its retry.
    assert_eq!(stats.ids_requested, 42);
    worker.shutdown().await.unwrap();
    assert_eq!(
        env.sim.stats().revocations,
        1,
        "the token is revoked at shutdown"
    );
    assert_eq!(env.sim.stats().live_tokens, 0);
    env.finish().await;
}

#[tokio::test]
async fn transient_pbx_failures_are_retried_until_they_clear() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.sim.fail_next_session_requests([
        Fault::Errcode(-2),
        Fault::Errcode(70082),
        Fault::HttpStatus(503),
        Fault::HttpStatus(502),
    ]);
    env.publish_json(&new_message_event(2862)).await;
    worker.wait_finished(1).await;
    let counts = worker.counts();
    assert_eq!(
        (counts.enriched, counts.retried, counts.dead_lettered),
        (1, 0, 0)
    );
    assert_eq!(env.sim.stats().session_requests, 5);
    assert_eq!(env.pending_agents(2862).await.len(), 3);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_permanent_refusal_is_dead_lettered_with_the_errcode() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.sim.fail_next_session_requests([Fault::Errcode(40001)]);
    env.publish_json(&new_message_event(77)).await;
    worker.wait_finished(1).await;
    assert_eq!(worker.counts().dead_lettered, 1);
    let dead = env.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, new_message_event(77).to_string().into_bytes());
    assert!(dead[0].1.contains("40001"), "{}", dead[0].1);
    assert_eq!(env.session_count().await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn an_answer_that_is_not_a_session_is_dead_lettered() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.sim
        .set_session(78, serde_json::json!({"channel_type": "sms"}));
    env.publish_json(&new_message_event(78)).await;
    worker.wait_finished(1).await;
    let dead = env.take_dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0].1.contains("id"), "{}", dead[0].1);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn an_answer_is_stamped_with_when_its_request_was_sent() {
    let env = TestEnv::new().await;
    let pbx = PbxClient::new(env.pbx_settings()).unwrap();
    pbx.log_in().await.unwrap();
    let slow = Duration::from_millis(300);
    let id = SessionId::new(2862).unwrap();
    let found = |answer: Answer| match answer {
        Answer::Found(fetched) => *fetched,
        missing => panic!("{missing:?}"),
    };

    // A slow answer: stamped before the request went, answered after.
    env.sim.fail_next_session_requests([Fault::Delay(slow)]);
    let before = Utc::now();
    let fetched = found(pbx.answer(id).await.unwrap());
    assert!(fetched.requested_at >= before);
    assert!(fetched.fetched_at - fetched.requested_at >= chrono::Duration::from_std(slow).unwrap());

    // A 10004 that took 300 ms: the answer is the retried request's, sent
    // after the refusal and the refresh, and stamped then.
    env.sim.expire_tokens();
    env.sim.fail_next_session_requests([Fault::Delay(slow)]);
    let before = Utc::now();
    let fetched = found(pbx.answer(id).await.unwrap());
    assert_eq!(env.sim.stats().refreshes, 1);
    assert!(fetched.requested_at - before >= chrono::Duration::from_std(slow).unwrap());

    // "Not found" is stamped the same way.
    env.sim.remove_session(55);
    env.sim.fail_next_session_requests([Fault::Delay(slow)]);
    let before = Utc::now();
    match pbx.answer(SessionId::new(55).unwrap()).await.unwrap() {
        Answer::Missing {
            requested_at,
            seen_at,
            ..
        } => {
            assert!(requested_at >= before);
            assert!(seen_at - requested_at >= chrono::Duration::from_std(slow).unwrap());
        }
        found => panic!("{found:?}"),
    }
    pbx.revoke_token().await;
    env.finish().await;
}

#[tokio::test]
async fn a_retry_after_holds_every_request_back_that_long() {
    let env = TestEnv::new().await;
    let second = Duration::from_secs(1);
    let session = |id| SessionId::new(id).unwrap();

    // Without in-process retries, so the refusal shows: the next request,
    // for another session, waits out the PBX's Retry-After as well.
    let mut settings = env.pbx_settings();
    settings.retry.attempts = 1;
    let pbx = PbxClient::new(settings).unwrap();
    pbx.log_in().await.unwrap();
    env.sim
        .fail_next_session_requests([Fault::HttpStatusRetryAfter(503, 1)]);
    let started = Instant::now();
    let refused = pbx.answer(session(10)).await;
    assert!(
        matches!(refused, Err(PbxError::Transient(_))),
        "{refused:?}"
    );
    pbx.answer(session(11)).await.unwrap();
    assert!(started.elapsed() >= second, "{:?}", started.elapsed());
    assert_eq!(env.sim.stats().session_requests, 2);
    pbx.revoke_token().await;

    // With them (10 ms backoff), the retry waits the second too.
    let pbx = PbxClient::new(env.pbx_settings()).unwrap();
    pbx.log_in().await.unwrap();
    env.sim
        .fail_next_session_requests([Fault::HttpStatusRetryAfter(429, 1)]);
    let started = Instant::now();
    pbx.answer(session(12)).await.unwrap();
    assert!(started.elapsed() >= second, "{:?}", started.elapsed());
    assert_eq!(env.sim.stats().session_requests, 4, "one retry");
    pbx.revoke_token().await;
    env.finish().await;
}

#[tokio::test]
async fn a_worker_keeps_to_its_request_rate() {
    let env = TestEnv::new().await;
    let mut setup = env.setup();
    setup.pbx.max_rps = Some(20);
    // A request per session, so there are enough requests to time.
    setup.pbx.query_batch = 1;
    setup.worker.pipeline.fetch_batch = 1;
    let worker = env.spawn(setup);
    for id in 1..=60 {
        env.publish_json(&new_message_event(id)).await;
    }
    // Seen at or after the first request went.
    let first = wait_for("the first session request", || async {
        (env.sim.stats().session_requests >= 1).then(Instant::now)
    })
    .await;
    wait_until("41 session requests", || async {
        env.sim.stats().session_requests >= 41
    })
    .await;
    // At 20 a second, the 41st goes 2 s after the first at the earliest
    // (8 fetchers would otherwise send them all within milliseconds); the
    // margin covers how late the first was seen.
    let took = first.elapsed();
    assert!(took >= Duration::from_millis(1_800), "{took:?}");
    worker.wait_finished(60).await;
    assert_eq!(worker.counts().enriched, 60);
    assert_eq!(env.sim.stats().session_requests, 60);
    worker.shutdown().await.unwrap();
    env.finish().await;
}
