//! Coalescing and batched writes: events that arrive during a fetch get a
//! later fetch and none is acked early; a batch writes each key once; the
//! newest PBX answer wins across concurrent batches.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use session_enricher::session::{FetchedSession, SessionId, SessionInfo};
use session_enricher::store::{Answer, BatchResult};
use sqlx::Row;

use crate::helpers::{PBX, TestEnv, new_message_event, wait_until};

fn queued(id: i64, agents: &[i64], username: &str) -> serde_json::Value {
    let participants: Vec<_> = agents
        .iter()
        .map(|a| json!({"user_id": a, "user_no": a.to_string(), "user_type": 1}))
        .collect();
    json!({
        "id": id, "channel_type": "livechat", "channel_name": "LC",
        "user_info": {"user_id": 0, "user_no": format!("visitor-{id}"), "user_type": 5, "username": username},
        "participants": participants
    })
}

#[tokio::test]
async fn events_arriving_during_a_fetch_wait_for_one_later_fetch_and_none_is_acked_early() {
    let env = TestEnv::new().await;
    env.sim.set_latency(Duration::from_millis(400));
    env.sim.set_session(90, queued(90, &[1], "first"));
    let worker = env.start_worker().await;
    env.publish_json(&new_message_event(90)).await;
    wait_until("the first fetch in flight", || async {
        env.sim.stats().session_requests == 1
    })
    .await;

    // While it is in flight the session changes, and three more events come.
    env.sim.set_session(90, queued(90, &[2, 3], "second"));
    for _ in 0..3 {
        env.publish_json(&new_message_event(90)).await;
    }
    wait_until("the first event settled", || async {
        worker.counts().finished() >= 1
    })
    .await;
    assert_eq!(
        worker.counts().finished(),
        1,
        "the later events wait for a fetch that started after them"
    );

    worker.wait_finished(4).await;
    assert_eq!(
        env.sim.stats().session_requests,
        2,
        "the three later events share one follow-up fetch"
    );
    // The follow-up started after they arrived, so it saw the change.
    assert_eq!(env.pending_agents(90).await, vec![(2, 0), (3, 1)]);
    let username: Option<String> =
        sqlx::query_scalar("SELECT username FROM customers WHERE user_no = 'visitor-90'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(username.as_deref(), Some("second"));
    assert_eq!(env.queue_len(&env.queue).await, 0);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_burst_for_one_session_costs_at_most_two_fetches() {
    let env = TestEnv::new().await;
    env.sim.set_latency(Duration::from_millis(50));
    // Bursts: a session's ten events back to back, as a chat produces them.
    for id in 1..=20 {
        for _ in 0..10 {
            env.publish_json(&new_message_event(id)).await;
        }
    }
    let worker = env.start_worker().await;
    worker.wait_finished(200).await;
    let calls = env.sim.stats().session_requests;
    assert!(calls <= 40, "{calls} PBX calls for 20 sessions × 10 events");
    assert_eq!(env.session_count().await, 20);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

fn fetched(id: i64, agents: &[i64], username: &str, at: DateTime<Utc>) -> Answer {
    Answer::Found(Box::new(FetchedSession {
        info: SessionInfo::decode(queued(id, agents, username)).unwrap(),
        requested_at: at,
        fetched_at: at,
    }))
}

#[tokio::test]
async fn a_batch_writes_each_key_once_keeping_the_newest_answer() {
    let env = TestEnv::new().await;
    let store = env.store();
    let t = Utc::now();
    let ms = chrono::Duration::milliseconds;
    // Session 1 twice (newest last), session 2 twice (newest first), and the
    // same customer through two answers: Postgres refuses to touch a key
    // twice in one statement, so the batch must not.
    let batch = vec![
        fetched(1, &[10, 11], "old", t),
        fetched(2, &[20], "two-new", t + ms(9)),
        fetched(1, &[11, 12], "new", t + ms(5)),
        fetched(2, &[21], "two-old", t + ms(1)),
        Answer::Missing {
            id: SessionId::new(3).unwrap(),
            requested_at: t,
            seen_at: t,
        },
    ];
    let results = store
        .write_batch(PBX, &batch, None)
        .await
        .expect("the batch is written");
    assert_eq!(
        results,
        vec![
            BatchResult::Superseded,
            BatchResult::Written,
            BatchResult::Written,
            BatchResult::Superseded,
            BatchResult::Missing { marked: false },
        ]
    );
    assert_eq!(env.pending_agents(1).await, vec![(11, 0), (12, 1)]);
    assert_eq!(env.pending_agents(2).await, vec![(20, 0)]);
    let names: Vec<(String, Option<String>)> =
        sqlx::query("SELECT user_no, username FROM customers ORDER BY user_no")
            .fetch_all(&env.db)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
    assert_eq!(
        names,
        vec![
            ("visitor-1".into(), Some("new".into())),
            ("visitor-2".into(), Some("two-new".into()))
        ]
    );
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn the_newest_answer_wins_across_concurrent_batches() {
    let env = TestEnv::new().await;
    let store = env.store();
    let base = Utc::now();
    let sessions = 40;
    let versions = 12;
    // Every batch holds every session, each at its own version; batches run
    // concurrently and in shuffled order, locking rows in key order.
    let mut writers = tokio::task::JoinSet::new();
    for version in (0..versions).rev() {
        let store = store.clone();
        writers.spawn(async move {
            let at = base + chrono::Duration::milliseconds(version);
            let batch: Vec<Answer> = (1..=sessions)
                .map(|id| fetched(id, &[version, 100 + version], &format!("v{version}"), at))
                .collect();
            store
                .write_batch(PBX, &batch, None)
                .await
                .expect("no batch fails (no deadlock)")
        });
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }
    let newest = versions - 1;
    for id in [1, sessions / 2, sessions] {
        assert_eq!(
            env.pending_agents(id).await,
            vec![(newest, 0), (100 + newest, 1)],
            "session {id}"
        );
    }
    let stale: i64 = sqlx::query_scalar("SELECT count(*) FROM customers WHERE username <> $1")
        .bind(format!("v{newest}"))
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(stale, 0);
    let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM session_pending_agents")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        agents,
        2 * sessions,
        "one answer's set per session, never a mix"
    );
    store.close().await;
    env.finish().await;
}
