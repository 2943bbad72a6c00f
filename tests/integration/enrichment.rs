//! What a fetched session becomes in the tables.

use chrono::{DateTime, Utc};
use serde_json::json;
use session_enricher::simulator::spec_example_session;
use sqlx::Row;

use crate::helpers::{PBX, TestEnv, new_message_event, wait_until};

#[tokio::test]
async fn the_spec_example_session_gives_exactly_the_rows_it_implies() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.publish_json(&new_message_event(2862)).await;
    worker.wait_finished(1).await;
    assert_eq!(worker.counts().enriched, 1);

    let row = env.session_row(2862).await.expect("a row for session 2862");
    let text = |c: &str| row.get::<Option<String>, _>(c);
    assert_eq!(text("channel_type").as_deref(), Some("livechat"));
    assert_eq!(text("channel_name").as_deref(), Some("Website Live Chat"));
    assert_eq!(text("did_number").as_deref(), Some("LC00000"));
    assert_eq!(
        text("to_number").as_deref(),
        Some("1d8d5367fd4145cd9dd6cfd8c546ded7")
    );
    assert_eq!(text("origin"), None, "\"\" is stored as NULL");
    assert_eq!(text("page_name"), None, "\"\" is stored as NULL");
    assert_eq!(text("website_domain").as_deref(), Some("example.com"));
    assert_eq!(row.get::<Option<i32>, _>("customer_user_type"), Some(5));
    assert_eq!(
        text("customer_user_no").as_deref(),
        Some("1d8d5367fd4145cd9dd6cfd8c546ded7")
    );
    assert_eq!(text("prechat_name").as_deref(), Some("Jane Smith"));
    assert_eq!(
        text("prechat_email").as_deref(),
        Some("jane.smith@example.com")
    );
    assert_eq!(text("prechat_phone").as_deref(), Some("+8613800138000"));
    assert_eq!(text("prechat_first_name").as_deref(), Some("Jane"));
    assert_eq!(text("prechat_last_name").as_deref(), Some("Smith"));
    assert_eq!(
        row.get::<serde_json::Value, _>("raw"),
        spec_example_session()
    );
    assert_eq!(row.get::<Option<DateTime<Utc>>, _>("missing_at"), None);

    let customers = sqlx::query("SELECT user_type, user_no, username, avatar FROM customers")
        .fetch_all(&env.db)
        .await
        .unwrap();
    assert_eq!(customers.len(), 1);
    assert_eq!(customers[0].get::<i32, _>("user_type"), 5);
    assert_eq!(
        customers[0].get::<String, _>("user_no"),
        "1d8d5367fd4145cd9dd6cfd8c546ded7"
    );
    assert_eq!(
        customers[0].get::<Option<String>, _>("username").as_deref(),
        Some("Website Visitor-Jane Smith")
    );
    assert_eq!(customers[0].get::<Option<String>, _>("avatar"), None);

    let agents = sqlx::query(
        "SELECT agent_user_id, agent_user_no, agent_username, agent_avatar, position
           FROM session_pending_agents WHERE pbx = $1 AND session_id = 2862 ORDER BY position",
    )
    .bind(PBX)
    .fetch_all(&env.db)
    .await
    .unwrap();
    let agents: Vec<(i64, String, String, Option<String>, i32)> = agents
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        agents,
        vec![
            (137, "1003".into(), "Alice Johnson".into(), None, 0),
            (138, "1004".into(), "Michael Smith".into(), None, 1),
            (26, "1005".into(), "Linda Brown".into(), None, 2),
        ]
    );
    // The index routing engines use: which sessions are pending for agent 138?
    let pending_for_138: Vec<i64> = sqlx::query_scalar(
        "SELECT session_id FROM session_pending_agents WHERE pbx = $1 AND agent_user_id = 138",
    )
    .bind(PBX)
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(pending_for_138, vec![2862]);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

/// session_id, channel_type, customer_user_type, page_name, website_domain,
/// has a pre-chat name.
type ChannelRow = (i64, String, i32, Option<String>, Option<String>, bool);

#[tokio::test]
async fn each_channel_type_is_stored_with_its_own_fields() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    // The simulator's sessions 1012..1015 are sms, whatsapp, facebook, livechat
    // (none of them from a campaign).
    for id in 1012..=1015 {
        env.publish_json(&new_message_event(id)).await;
    }
    worker.wait_finished(4).await;
    assert_eq!(worker.counts().enriched, 4);
    let rows = sqlx::query(
        "SELECT session_id, channel_type, customer_user_type, page_name, website_domain, prechat_name
           FROM message_sessions ORDER BY session_id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    let got: Vec<ChannelRow> = rows
        .iter()
        .map(|r| {
            (
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get::<Option<String>, _>(5).is_some(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (1012, "sms".into(), 2, None, None, false),
            (1013, "whatsapp".into(), 3, None, None, false),
            (
                1014,
                "facebook".into(),
                4,
                Some("Acme Support".into()),
                None,
                false
            ),
            (
                1015,
                "livechat".into(),
                5,
                None,
                Some("shop.example.com".into()),
                true
            ),
        ]
    );
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(customers, 4);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

fn queued(id: i64, agents: &[(i64, &str)]) -> serde_json::Value {
    let participants: Vec<_> = agents
        .iter()
        .map(|(user_id, name)| json!({"user_id": user_id, "user_no": user_id.to_string(), "user_type": 1, "avatar": "", "username": name}))
        .collect();
    json!({
        "id": id, "channel_type": "whatsapp", "channel_name": "WA", "did_number": "+1555", "to_number": "+4477",
        "origin": "", "user_info": {"user_id": 0, "user_no": "+4477", "user_type": 3, "avatar": "", "username": "C"},
        "participants": participants
    })
}

#[tokio::test]
async fn the_pending_agent_set_is_replaced_and_emptied_on_pick_up() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.sim
        .set_session(50, queued(50, &[(1, "A"), (2, "B"), (3, "C")]));
    env.publish_json(&new_message_event(50)).await;
    worker.wait_finished(1).await;
    assert_eq!(env.pending_agents(50).await, vec![(1, 0), (2, 1), (3, 2)]);
    let first_seen = |env: &TestEnv| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, DateTime<Utc>>(
                "SELECT first_seen_at FROM session_pending_agents WHERE session_id = 50 AND agent_user_id = 3",
            )
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let agent_3_first_seen = first_seen(&env).await;

    // Agent 1 and 2 leave, 4 joins ahead of 3: the set is replaced, 3 keeps
    // its first_seen_at.
    env.sim.set_session(50, queued(50, &[(4, "D"), (3, "C")]));
    env.publish_json(&new_message_event(50)).await;
    worker.wait_finished(2).await;
    assert_eq!(env.pending_agents(50).await, vec![(4, 0), (3, 1)]);
    assert_eq!(first_seen(&env).await, agent_3_first_seen);

    // Picked up: the PBX stops listing participants.
    env.sim.set_session(50, queued(50, &[]));
    env.publish_json(&new_message_event(50)).await;
    worker.wait_finished(3).await;
    assert_eq!(env.pending_agents(50).await, vec![]);
    assert_eq!(worker.counts().enriched, 3);
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_session_that_disappears_is_marked_missing_and_loses_its_agents() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    env.sim.set_session(60, queued(60, &[(1, "A")]));
    env.publish_json(&new_message_event(60)).await;
    worker.wait_finished(1).await;
    assert_eq!(env.pending_agents(60).await.len(), 1);

    env.sim.remove_session(60);
    env.publish_json(&new_message_event(60)).await;
    // Never seen, and past the simulator's range: not found, nothing stored.
    env.publish_json(&new_message_event(900_000_001)).await;
    worker.wait_finished(3).await;
    let counts = worker.counts();
    assert_eq!(
        (counts.enriched, counts.not_found, counts.dead_lettered),
        (1, 2, 0)
    );
    let row = env.session_row(60).await.unwrap();
    assert!(row.get::<Option<DateTime<Utc>>, _>("missing_at").is_some());
    assert_eq!(env.pending_agents(60).await, vec![]);
    assert!(env.session_row(900_000_001).await.is_none());
    assert_eq!(
        env.sim.stats().session_requests,
        3,
        "not found is not retried"
    );
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);

    // It comes back (e.g. a restored backup): missing_at is cleared.
    env.sim.set_session(60, queued(60, &[]));
    env.publish_json(&new_message_event(60)).await;
    worker.wait_finished(4).await;
    let row = env.session_row(60).await.unwrap();
    assert!(row.get::<Option<DateTime<Utc>>, _>("missing_at").is_none());
    worker.shutdown().await.unwrap();
    env.finish().await;
}

#[tokio::test]
async fn a_stale_write_loses_to_a_newer_one_even_when_they_race() {
    use session_enricher::session::{FetchedSession, SessionInfo};
    use session_enricher::store::{Answer, BatchResult};

    let env = TestEnv::new().await;
    let store = env.store();
    let t_old = Utc::now();
    let t_new = t_old + chrono::Duration::milliseconds(5);
    let older = FetchedSession {
        info: SessionInfo::decode(queued(70, &[(1, "Old A"), (2, "Old B")])).unwrap(),
        requested_at: t_old,
        fetched_at: t_old,
    };
    let newer = FetchedSession {
        info: SessionInfo::decode(queued(70, &[(3, "New C")])).unwrap(),
        requested_at: t_new,
        fetched_at: t_new,
    };
    let write = |store: session_enricher::store::Store, fetched: FetchedSession| async move {
        store
            .write_batch(PBX, &[Answer::Found(Box::new(fetched))], None)
            .await
            .unwrap()
    };
    assert_eq!(
        write(store.clone(), newer.clone()).await,
        vec![BatchResult::Written]
    );
    assert_eq!(
        write(store.clone(), older.clone()).await,
        vec![BatchResult::Stale]
    );
    assert_eq!(env.pending_agents(70).await, vec![(3, 0)]);

    // Many writers racing, old and new interleaved: the newest answer wins
    // whole (never a mix of two answers' agent sets).
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = store.clone();
        let fetched = if i % 2 == 0 {
            older.clone()
        } else {
            newer.clone()
        };
        writers.spawn(write(store, fetched));
    }
    while let Some(w) = writers.join_next().await {
        w.unwrap();
    }
    assert_eq!(env.pending_agents(70).await, vec![(3, 0)]);
    let fetched_at: DateTime<Utc> = env.session_row(70).await.unwrap().get("fetched_at");
    assert_eq!(fetched_at.timestamp_micros(), t_new.timestamp_micros());
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn duplicate_events_are_harmless() {
    let env = TestEnv::new().await;
    let worker = env.start_worker().await;
    for _ in 0..5 {
        env.publish_json(&new_message_event(2862)).await;
    }
    worker.wait_finished(5).await;
    assert_eq!(env.session_count().await, 1);
    assert_eq!(
        env.pending_agents(2862).await,
        vec![(137, 0), (138, 1), (26, 2)]
    );
    let customers: i64 = sqlx::query_scalar("SELECT count(*) FROM customers")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(customers, 1);
    assert_eq!(env.queue_len(&env.queue).await, 0);
    assert_eq!(env.queue_len(&env.dead_queue).await, 0);
    worker.shutdown().await.unwrap();
    wait_until("nothing left in the queue", || async {
        env.queue_len(&env.queue).await == 0
    })
    .await;
    env.finish().await;
}
