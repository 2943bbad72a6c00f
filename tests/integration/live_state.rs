//! Live state for routing engines: the change feed (a notification per
//! content change, delivered at commit, none for a write that changed
//! nothing), `updated_at` moving only with content, refresh due times set
//! by every accepted write, and replicas claiming due sessions without
//! ever sharing one. Against the real Postgres, through the store's API.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use session_enricher::backoff::Backoff;
use session_enricher::pipeline::AnswerSink;
use session_enricher::session::{FetchedSession, SessionId, SessionInfo};
use session_enricher::store::{Answer, BatchResult, CHANGES_CHANNEL, Store, StoreSink};
use sqlx::Row;
use sqlx::postgres::PgListener;

use crate::helpers::{PBX, TestEnv, wait_for};

/// A Live Chat session queued for `agents` (user ids; numbers are the id
/// plus 1000), with `extra` fields merged in.
fn session(id: i64, agents: &[i64], extra: Value) -> Value {
    let participants: Vec<_> = agents
        .iter()
        .map(|a| json!({"user_id": a, "user_no": (a + 1000).to_string(), "user_type": 1, "username": format!("Agent {a}")}))
        .collect();
    let mut info = json!({
        "id": id, "channel_type": "livechat", "channel_name": "Website",
        "user_info": {"user_id": 0, "user_no": format!("visitor-{id}"), "user_type": 5, "username": "Jane"},
        "participants": participants
    });
    if let (Some(info), Some(extra)) = (info.as_object_mut(), extra.as_object()) {
        info.extend(extra.clone());
    }
    info
}

/// The PBX's answer `info`, to a request sent just now.
fn found(info: Value) -> Answer {
    let now = Utc::now();
    Answer::Found(Box::new(FetchedSession {
        info: SessionInfo::decode(info).unwrap(),
        requested_at: now,
        fetched_at: now,
    }))
}

fn waiting(id: i64, agents: &[i64]) -> Answer {
    found(session(id, agents, json!({})))
}

fn missing(id: i64) -> Answer {
    let now = Utc::now();
    Answer::Missing {
        id: SessionId::new(id).unwrap(),
        requested_at: now,
        seen_at: now,
    }
}

async fn write(store: &Store, answer: Answer, refresh: Option<Duration>) -> BatchResult {
    let mut results = store.write_batch(PBX, &[answer], refresh).await.unwrap();
    assert_eq!(results.len(), 1);
    results.remove(0)
}

async fn listen(env: &TestEnv) -> PgListener {
    let mut listener = PgListener::connect(&env.db_url).await.unwrap();
    listener.listen(CHANGES_CHANNEL).await.unwrap();
    listener
}

/// The next notification on the change feed, parsed.
async fn next_change(listener: &mut PgListener) -> Value {
    let notification = tokio::time::timeout(Duration::from_secs(30), listener.recv())
        .await
        .expect("a notification within 30 s")
        .unwrap();
    assert_eq!(notification.channel(), CHANGES_CHANNEL);
    serde_json::from_str(notification.payload()).expect("a JSON payload")
}

fn change(id: i64, pending_agents: usize, missing: bool) -> Value {
    json!({"pbx": PBX, "session_id": id, "pending_agents": pending_agents, "missing": missing})
}

/// `updated_at` of a session row and of each of its agent rows.
async fn updated_ats(env: &TestEnv, id: i64) -> (DateTime<Utc>, Vec<DateTime<Utc>>) {
    let row = env.session_row(id).await.expect("a row");
    let agents = sqlx::query_scalar(
        "SELECT updated_at FROM session_pending_agents WHERE pbx = $1 AND session_id = $2 ORDER BY position",
    )
    .bind(PBX)
    .bind(id)
    .fetch_all(&env.db)
    .await
    .unwrap();
    (row.get("updated_at"), agents)
}

/// `(waiting_since, refresh_due_at)` of a session row.
async fn refresh_state(env: &TestEnv, id: i64) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let row = env.session_row(id).await.expect("a row");
    (row.get("waiting_since"), row.get("refresh_due_at"))
}

#[tokio::test]
async fn a_change_is_announced_once_committed_with_its_pending_agents() {
    let env = TestEnv::new().await;
    let store = env.store();
    let mut listener = listen(&env).await;

    // Announced at commit: read as soon as the notification arrives (the
    // write still running), what it announces is there.
    let writing = tokio::spawn({
        let store = store.clone();
        async move { write(&store, waiting(11, &[137, 138]), None).await }
    });
    assert_eq!(next_change(&mut listener).await, change(11, 2, false));
    assert_eq!(env.pending_agents(11).await, vec![(137, 0), (138, 1)]);
    assert_eq!(writing.await.unwrap(), BatchResult::Written);

    // Picked up: nobody pending any more.
    assert_eq!(
        write(&store, waiting(11, &[]), None).await,
        BatchResult::Written
    );
    assert_eq!(next_change(&mut listener).await, change(11, 0, false));
    assert_eq!(env.pending_agents(11).await, vec![]);

    // A batch the database refuses (a NUL byte) is rolled back whole:
    // nothing of it is announced, so the next notification is the next
    // committed change.
    let refused = found(session(
        12,
        &[137],
        json!({"channel_name": "nul \u{0} byte"}),
    ));
    assert!(
        store
            .write_batch(PBX, &[waiting(13, &[1]), refused], None)
            .await
            .is_err()
    );
    assert_eq!(env.session_count().await, 1);
    write(&store, waiting(14, &[5, 6, 7]), None).await;
    assert_eq!(next_change(&mut listener).await, change(14, 3, false));
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn an_answer_that_changes_nothing_is_not_announced_and_keeps_updated_at() {
    let env = TestEnv::new().await;
    let store = env.store();
    let mut listener = listen(&env).await;
    write(&store, waiting(21, &[1, 2]), None).await;
    assert_eq!(next_change(&mut listener).await, change(21, 2, false));
    let before = updated_ats(&env, 21).await;
    let requested_before: DateTime<Utc> = env.session_row(21).await.unwrap().get("requested_at");

    // The same session again, and again with only fields no column holds
    // (`message_session/list` adds a countdown): accepted, times advanced,
    // nothing changed, nothing announced.
    assert_eq!(
        write(&store, waiting(21, &[1, 2]), None).await,
        BatchResult::Unchanged
    );
    let countdown = found(session(
        21,
        &[1, 2],
        json!({"expire": 86_000, "last_msg_id": 9}),
    ));
    assert_eq!(write(&store, countdown, None).await, BatchResult::Unchanged);
    assert_eq!(updated_ats(&env, 21).await, before);
    let requested_after: DateTime<Utc> = env.session_row(21).await.unwrap().get("requested_at");
    assert!(requested_after > requested_before, "the answer was stored");

    // Notifications come in commit order: the next one is of the next
    // change, so none was sent for the writes above.
    write(&store, waiting(22, &[3]), None).await;
    assert_eq!(next_change(&mut listener).await, change(22, 1, false));

    // A change of the agents alone (same columns) is a change.
    assert_eq!(
        write(&store, waiting(21, &[2, 1]), None).await,
        BatchResult::Written
    );
    assert_eq!(next_change(&mut listener).await, change(21, 2, false));
    let after = updated_ats(&env, 21).await;
    assert!(after.0 > before.0, "the session's updated_at moved");
    assert!(
        after.1.iter().all(|&at| at > before.0),
        "both agents moved position"
    );
    // And of a column alone.
    let renamed = found(session(21, &[2, 1], json!({"channel_name": "Shop"})));
    assert_eq!(write(&store, renamed, None).await, BatchResult::Written);
    assert_eq!(next_change(&mut listener).await, change(21, 2, false));
    assert!(updated_ats(&env, 21).await.0 > after.0);
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn a_session_marked_missing_is_announced_once_with_no_pending_agents() {
    let env = TestEnv::new().await;
    let store = env.store();
    let mut listener = listen(&env).await;
    write(&store, waiting(31, &[1, 2]), None).await;
    assert_eq!(next_change(&mut listener).await, change(31, 2, false));

    assert_eq!(
        write(&store, missing(31), None).await,
        BatchResult::Missing { marked: true }
    );
    assert_eq!(next_change(&mut listener).await, change(31, 0, true));
    assert_eq!(env.pending_agents(31).await, vec![]);
    let marked_at = updated_ats(&env, 31).await;

    // Still missing: no change, no notification. Never stored: nothing
    // a listener could read, nothing announced.
    assert_eq!(
        write(&store, missing(31), None).await,
        BatchResult::Missing { marked: true }
    );
    assert_eq!(
        write(&store, missing(39), None).await,
        BatchResult::Missing { marked: false }
    );
    assert_eq!(updated_ats(&env, 31).await, marked_at);
    // Back again: a change.
    write(&store, waiting(31, &[4]), None).await;
    assert_eq!(next_change(&mut listener).await, change(31, 1, false));
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn a_waiting_session_is_due_for_a_refresh_an_interval_after_each_write_until_nobody_waits() {
    let env = TestEnv::new().await;
    let store = env.store();
    let interval = Duration::from_secs(5);
    let quick = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        attempts: 3,
    };
    let sink =
        StoreSink::new(store.clone(), PBX.into(), quick).with_refresh_interval(Some(interval));
    let through_sink = |answer: Answer| {
        let sink = sink.clone();
        async move {
            let before = Utc::now();
            let result = sink.write(&[answer]).await.pop().unwrap().unwrap();
            (result, before, Utc::now())
        }
    };
    let interval_ = chrono::Duration::from_std(interval).unwrap();

    // Waiting: due an interval after the write.
    let (result, before, after) = through_sink(waiting(41, &[1, 2])).await;
    assert_eq!(result, BatchResult::Written);
    let (since, due) = refresh_state(&env, 41).await;
    let since = since.expect("waiting since the write");
    assert!(
        before <= since && since <= after,
        "{since} in [{before}, {after}]"
    );
    assert_eq!(due, Some(since + interval_));

    // Still waiting, even with nothing new: due an interval after this
    // write; the stretch of waiting goes on.
    let (result, before, after) = through_sink(waiting(41, &[2])).await;
    assert_eq!(result, BatchResult::Written);
    let (still_since, due) = refresh_state(&env, 41).await;
    assert_eq!(still_since, Some(since));
    let due = due.expect("due");
    assert!(before + interval_ <= due && due <= after + interval_);
    let (result, before, after) = through_sink(waiting(41, &[2])).await;
    assert_eq!(result, BatchResult::Unchanged);
    let due = refresh_state(&env, 41).await.1.expect("due");
    assert!(before + interval_ <= due && due <= after + interval_);

    // Picked up: not due, not waiting.
    through_sink(waiting(41, &[])).await;
    assert_eq!(refresh_state(&env, 41).await, (None, None));
    // Queued again: a new stretch of waiting.
    let (_, before, _) = through_sink(waiting(41, &[3])).await;
    let (since, due) = refresh_state(&env, 41).await;
    assert!(since.expect("waiting again") >= before);
    assert!(due.is_some());
    // Gone: not due, not waiting.
    through_sink(missing(41)).await;
    assert_eq!(refresh_state(&env, 41).await, (None, None));

    // A stale answer changes nothing, the due time included.
    through_sink(waiting(42, &[1])).await;
    let state = refresh_state(&env, 42).await;
    let old = Answer::Found(Box::new(FetchedSession {
        info: SessionInfo::decode(session(42, &[], json!({}))).unwrap(),
        requested_at: Utc::now() - chrono::Duration::hours(1),
        fetched_at: Utc::now(),
    }));
    assert_eq!(through_sink(old).await.0, BatchResult::Stale);
    assert_eq!(refresh_state(&env, 42).await, state);

    // Waiting for longer than a day: no longer refreshed.
    sqlx::query("UPDATE message_sessions SET waiting_since = now() - interval '25 hours' WHERE session_id = 42")
        .execute(&env.db)
        .await
        .unwrap();
    through_sink(waiting(42, &[1, 2])).await;
    let (since, due) = refresh_state(&env, 42).await;
    assert!(since.is_some(), "still waiting");
    assert_eq!(due, None, "but not refreshed");

    // Refreshing off: waiting is recorded, nothing is due.
    write(&store, waiting(43, &[1]), None).await;
    let (since, due) = refresh_state(&env, 43).await;
    assert!(since.is_some());
    assert_eq!(due, None);
    store.close().await;
    env.finish().await;
}

/// Writes `ids` as waiting sessions due for a refresh right away.
async fn due_now(store: &Store, ids: impl IntoIterator<Item = i64>) {
    let answers: Vec<Answer> = ids.into_iter().map(|id| waiting(id, &[1])).collect();
    store
        .write_batch(PBX, &answers, Some(Duration::from_micros(1)))
        .await
        .unwrap();
}

fn ids(claimed: &[SessionId]) -> BTreeSet<i64> {
    claimed.iter().map(|id| id.get()).collect()
}

#[tokio::test]
async fn replicas_claiming_at_once_share_the_due_sessions_without_overlap() {
    let env = TestEnv::new().await;
    due_now(&env.store(), 1..=50).await;
    // Five replicas, each its own pool, claiming ten at a time until
    // nothing is due.
    let mut replicas = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let store = env.store();
        replicas.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let claimed = store
                    .claim_due_refreshes(PBX, 10, Duration::from_secs(60))
                    .await
                    .unwrap();
                if claimed.is_empty() {
                    break;
                }
                mine.extend(claimed);
            }
            store.close().await;
            mine
        });
    }
    let mut all = Vec::new();
    for claimed in replicas.join_all().await {
        all.extend(claimed);
    }
    assert_eq!(all.len(), 50, "no session claimed twice: {all:?}");
    assert_eq!(ids(&all), (1..=50).collect());
    env.finish().await;
}

#[tokio::test]
async fn a_claim_skips_sessions_locked_by_another_and_leases_what_it_takes() {
    let env = TestEnv::new().await;
    let store = env.store();
    assert_eq!(store.next_refresh_due(PBX).await.unwrap(), None);
    due_now(&store, 1..=50).await;
    assert_eq!(
        store.next_refresh_due(PBX).await.unwrap(),
        Some(Duration::ZERO),
        "overdue"
    );

    // Another replica holds ten of them (mid-claim, or mid-write).
    let mut other = env.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM message_sessions WHERE session_id <= 10 FOR UPDATE")
        .execute(&mut *other)
        .await
        .unwrap();
    let lease = Duration::from_secs(1);
    // Taken before the claim: its lease starts later still.
    let claimed_at = Instant::now();
    let first = store.claim_due_refreshes(PBX, 100, lease).await.unwrap();
    assert_eq!(
        ids(&first),
        (11..=50).collect(),
        "locked rows skipped, not waited for"
    );
    assert_eq!(
        store.claim_due_refreshes(PBX, 100, lease).await.unwrap(),
        vec![]
    );
    other.rollback().await.unwrap();
    let second = store.claim_due_refreshes(PBX, 100, lease).await.unwrap();
    assert_eq!(ids(&second), (1..=10).collect());
    let next = store.next_refresh_due(PBX).await.unwrap().expect("leased");
    assert!(next <= lease, "{next:?}");

    // Nobody wrote their answers (a replica died mid-refresh): once the
    // lease passes, they are claimed again.
    let again = wait_for("the lease to pass", || async {
        let claimed = store.claim_due_refreshes(PBX, 100, lease).await.unwrap();
        (!claimed.is_empty()).then_some(claimed)
    })
    .await;
    assert!(claimed_at.elapsed() >= lease, "not before the lease passed");
    assert!(ids(&again).is_subset(&(1..=50).collect()));

    // A refreshed answer sets the next due time (here: none, nobody waits).
    write(&store, waiting(11, &[]), Some(Duration::from_micros(1))).await;
    assert_eq!(refresh_state(&env, 11).await, (None, None));
    store.close().await;
    env.finish().await;
}

#[tokio::test]
async fn sessions_waiting_past_the_maximum_age_are_not_claimed_and_stop_being_due() {
    let env = TestEnv::new().await;
    let store = env.store();
    due_now(&store, 1..=3).await;
    sqlx::query("UPDATE message_sessions SET waiting_since = now() - interval '25 hours' WHERE session_id = 2")
        .execute(&env.db)
        .await
        .unwrap();
    let claimed = store
        .claim_due_refreshes(PBX, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ids(&claimed), BTreeSet::from([1, 3]));
    assert_eq!(refresh_state(&env, 2).await.1, None);
    assert!(refresh_state(&env, 2).await.0.is_some(), "still waiting");
    store.close().await;
    env.finish().await;
}

/// The example queries of README's "For routing engines", each with the
/// index it must use on a table of some thousand rows.
const README_QUERIES: [(&str, &str); 2] = [
    (
        "SELECT s.session_id, s.channel_type, a.position, a.first_seen_at
  FROM session_pending_agents a
  JOIN message_sessions s USING (pbx, session_id)
 WHERE a.pbx = 'default' AND a.agent_user_no = '1003'
   AND s.missing_at IS NULL
 ORDER BY a.first_seen_at;",
        "session_pending_agents_agent_no_idx",
    ),
    (
        "SELECT session_id, channel_type, updated_at
  FROM message_sessions
 WHERE pbx = 'default' AND updated_at > '2026-11-26 09:00:00+00'
   AND missing_at IS NULL
 ORDER BY updated_at;",
        "message_sessions_updated_idx",
    ),
];

#[tokio::test]
async fn the_readme_queries_for_routing_engines_use_their_indexes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let env = TestEnv::new().await;
    // 5,000 sessions, one changed each minute up to half an hour after the
    // example's T; 500 waiting, each for 3 of 100 agents; some missing.
    sqlx::raw_sql(
        "INSERT INTO message_sessions (pbx, session_id, raw, fetched_at, requested_at, missing_at,
                                       waiting_since, updated_at)
         SELECT 'default', i, '{}', now(), now(), CASE WHEN i % 50 = 0 THEN now() END,
                CASE WHEN i % 10 = 0 THEN now() END,
                timestamptz '2026-11-26 09:30:00+00' - i * interval '1 minute'
           FROM generate_series(1, 5000) i;
         INSERT INTO session_pending_agents (pbx, session_id, agent_user_id, agent_user_no, position)
         SELECT 'default', i, 1000 + a, (1000 + a)::text, a % 3
           FROM generate_series(10, 5000, 10) i, generate_series(i % 100, i % 100 + 2) a;
         ANALYZE message_sessions; ANALYZE session_pending_agents;",
    )
    .execute(&env.db)
    .await
    .unwrap();
    for (query, index) in README_QUERIES {
        assert!(readme.contains(query), "README.md shows:\n{query}");
        let plan: Value = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "EXPLAIN (FORMAT JSON) {}",
            query.trim_end_matches(';')
        )))
        .fetch_one(&env.db)
        .await
        .unwrap();
        assert!(
            plan.to_string().contains(index),
            "{query}\nshould use {index}: {plan:#}"
        );
    }
    env.finish().await;
}
