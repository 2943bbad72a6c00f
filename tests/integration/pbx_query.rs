//! Batched fetches: `message_session/query` as the simulator serves it (an
//! array, unknown ids simply absent), and the PBX client's frugal path
//! driven directly as the pipeline's `SessionSource` — a not-found id inside
//! a batch, a 10004 in the middle, a batch that fails transiently, refusals,
//! and firmware without `query` — with its answers written through the real
//! store. Every test counts the simulator's calls.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use session_enricher::backoff::Backoff;
use session_enricher::pbx::{PbxClient, PbxSettings};
use session_enricher::pipeline::{AnswerSink, SessionSource};
use session_enricher::processing::{Answer, BatchResult, FetchError};
use session_enricher::session::SessionId;
use session_enricher::simulator::{
    FIRST_MISSING_ID, Fault, QueryInterface, SimulatorSettings, SimulatorStats,
    spec_example_session,
};
use session_enricher::store::StoreSink;
use sqlx::Row;

use crate::helpers::{PBX, TestEnv};

fn ids(ids: impl IntoIterator<Item = i64>) -> Vec<SessionId> {
    ids.into_iter()
        .map(|id| SessionId::new(id).expect("a positive id"))
        .collect()
}

fn client_with(env: &TestEnv, adjust: impl FnOnce(&mut PbxSettings)) -> PbxClient {
    let mut settings = env.pbx_settings();
    adjust(&mut settings);
    PbxClient::new(settings).expect("a PBX client")
}

fn client(env: &TestEnv) -> PbxClient {
    client_with(env, |_| {})
}

/// One result per id asked for, by id.
async fn fetch(
    client: &PbxClient,
    asked: &[SessionId],
) -> BTreeMap<i64, Result<Answer, FetchError>> {
    let answers = client.fetch(asked).await;
    assert_eq!(answers.len(), asked.len(), "one result per id asked for");
    answers
        .into_iter()
        .map(|(id, answer)| (id.get(), answer))
        .collect()
}

/// Writes the answers through the worker's own sink.
async fn write(env: &TestEnv, answers: Vec<Answer>) -> Vec<BatchResult> {
    let quick = Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        attempts: 3,
    };
    let sink = StoreSink::new(env.store(), PBX.into(), quick);
    sink.write(&answers)
        .await
        .into_iter()
        .map(|written| written.expect("written"))
        .collect()
}

fn found(answers: BTreeMap<i64, Result<Answer, FetchError>>) -> Vec<Answer> {
    answers
        .into_iter()
        .map(|(id, answer)| match answer {
            Ok(answer @ Answer::Found(_)) => answer,
            other => panic!("session {id}: {other:?}"),
        })
        .collect()
}

/// The simulator's counts of session calls: (query, get, ids asked for).
fn calls(stats: SimulatorStats) -> (u64, u64, u64) {
    (
        stats.query_requests,
        stats.session_requests,
        stats.ids_requested,
    )
}

async fn missing_at_is_set(env: &TestEnv, id: i64) -> bool {
    let row = env.session_row(id).await.expect("a row");
    row.get::<Option<chrono::DateTime<chrono::Utc>>, _>("missing_at")
        .is_some()
}

#[tokio::test]
async fn a_session_absent_from_a_batch_is_asked_for_alone_and_marked_missing() {
    let env = TestEnv::new().await;
    let client = client(&env);
    let batch = ids([11, 12, 13]);
    let first = fetch(&client, &batch).await;
    assert_eq!(write(&env, found(first)).await, [BatchResult::Written; 3]);
    assert_eq!(calls(env.sim.stats()), (1, 0, 3), "one query for three");

    env.sim.remove_session(12);
    let never = FIRST_MISSING_ID + 1;
    let answers = fetch(&client, &ids([11, 12, 13, never])).await;
    assert_eq!(
        calls(env.sim.stats()),
        (2, 2, 3 + 4 + 2),
        "one query, then one get for each id it left out, and no more"
    );
    for gone in [12, never] {
        assert!(
            matches!(answers[&gone], Ok(Answer::Missing { .. })),
            "{gone}: {:?}",
            answers[&gone]
        );
    }
    let answers: Vec<Answer> = answers
        .into_values()
        .map(|a| a.expect("an answer"))
        .collect();
    // 11 and 13 are as stored: accepted, nothing changed.
    assert_eq!(
        write(&env, answers).await,
        [
            BatchResult::Unchanged,
            BatchResult::Missing { marked: true },
            BatchResult::Unchanged,
            BatchResult::Missing { marked: false },
        ]
    );
    assert!(missing_at_is_set(&env, 12).await);
    assert!(!missing_at_is_set(&env, 11).await);
    assert!(!missing_at_is_set(&env, 13).await);
    assert_eq!(env.session_count().await, 3);
    env.finish().await;
}

#[tokio::test]
async fn a_10004_in_the_middle_renews_the_token_once_and_the_batch_is_answered() {
    let env = TestEnv::new().await;
    // One call at a time, so the chunks go out in order: 20, 20, 5.
    let client = client_with(&env, |s| s.concurrency = 1);
    // The second query call is refused with 10004 although its token is
    // valid.
    env.sim
        .fail_next_session_requests([Fault::Delay(Duration::ZERO), Fault::Errcode(10004)]);
    let batch = ids(1..=45);
    let answers = fetch(&client, &batch).await;
    let stats = env.sim.stats();
    assert_eq!(
        calls(stats),
        (4, 0, 45 + 20),
        "three chunks and the refused one sent again"
    );
    assert_eq!((stats.logins, stats.refreshes), (1, 1), "renewed, once");
    assert_eq!(
        write(&env, found(answers)).await,
        [BatchResult::Written; 45]
    );
    assert_eq!(env.session_count().await, 45);
    assert_eq!(env.pending_agents(3).await.len(), 2, "session 3 is queued");
    env.finish().await;
}

#[tokio::test]
async fn a_token_expired_between_batches_is_renewed_without_another_login() {
    let env = TestEnv::new().await;
    let client = client(&env);
    found(fetch(&client, &ids(1..=5)).await);
    env.sim.expire_tokens();
    let answers = fetch(&client, &ids(6..=10)).await;
    assert_eq!(found(answers).len(), 5);
    let stats = env.sim.stats();
    assert_eq!(calls(stats), (3, 0, 15));
    assert_eq!((stats.logins, stats.refreshes), (1, 1));
    env.finish().await;
}

#[tokio::test]
async fn a_batch_that_fails_transiently_fails_for_each_of_its_ids_and_loses_none() {
    let env = TestEnv::new().await;
    let client = client(&env);
    let attempts = u64::from(env.pbx_settings().retry.attempts);
    // Fewer transient failures than attempts: retried within the client.
    env.sim.fail_next_session_requests([
        Fault::Errcode(-2),
        Fault::HttpStatus(503),
        Fault::Errcode(70082),
    ]);
    let batch = ids([21, 22, 23]);
    assert_eq!(found(fetch(&client, &batch).await).len(), 3);
    assert_eq!(calls(env.sim.stats()), (4, 0, 12));

    // As many as attempts: each id fails for now (the worker retries its
    // events later), none falls back to get, none is lost.
    env.sim
        .fail_next_session_requests((0..attempts).map(|_| Fault::HttpStatus(503)));
    let answers = fetch(&client, &batch).await;
    for (id, answer) in &answers {
        assert!(
            matches!(answer, Err(FetchError::Transient(why)) if why.contains("503")),
            "{id}: {answer:?}"
        );
    }
    assert_eq!(calls(env.sim.stats()), (4 + attempts, 0, 12 + 3 * attempts));
    assert_eq!(env.session_count().await, 0, "nothing written");

    // Its redelivery: the rows end right.
    env.sim.set_session(
        22,
        json!({"id": 22, "channel_type": "sms", "channel_name": "later"}),
    );
    let answers = fetch(&client, &batch).await;
    assert_eq!(write(&env, found(answers)).await, [BatchResult::Written; 3]);
    let row = env.session_row(22).await.expect("a row");
    assert_eq!(
        row.get::<Option<String>, _>("channel_name").as_deref(),
        Some("later")
    );
    assert_eq!(env.session_count().await, 3);
    env.finish().await;
}

#[tokio::test]
async fn a_refused_query_falls_back_to_get_per_id_and_a_configuration_error_fails_each() {
    let env = TestEnv::new().await;
    let client = client(&env);
    let never = FIRST_MISSING_ID + 7;
    env.sim.fail_next_session_requests([Fault::Errcode(40002)]);
    let answers = fetch(&client, &ids([31, never, 33])).await;
    assert_eq!(
        calls(env.sim.stats()),
        (1, 3, 6),
        "the refused query, then get decides for each"
    );
    assert!(matches!(answers[&31], Ok(Answer::Found(_))));
    assert!(matches!(answers[&never], Ok(Answer::Missing { .. })));
    assert!(
        client.query_supported(),
        "a refusal is not a missing interface"
    );

    env.sim.fail_next_session_requests([Fault::Errcode(10005)]);
    let answers = fetch(&client, &ids([34, 35])).await;
    for (id, answer) in &answers {
        assert!(
            matches!(answer, Err(FetchError::Configuration(why)) if why.contains("10005")),
            "{id}: {answer:?}"
        );
    }
    assert_eq!(
        calls(env.sim.stats()),
        (2, 3, 8),
        "no get after a configuration error"
    );
    env.finish().await;
}

#[tokio::test]
async fn firmware_without_query_is_met_once_then_each_session_is_fetched_with_get() {
    for (lacking, what) in [
        (QueryInterface::Http404, "HTTP 404"),
        (QueryInterface::InterfaceNotExisted, "errcode 10001"),
    ] {
        let env = TestEnv::new().await;
        env.sim.set_query_interface(lacking);
        let client = client(&env);
        assert!(client.query_supported());
        let answers = fetch(&client, &ids(1..=10)).await;
        assert_eq!(
            write(&env, found(answers)).await,
            [BatchResult::Written; 10],
            "{what}"
        );
        assert_eq!(calls(env.sim.stats()), (1, 10, 20), "{what}");
        assert!(!client.query_supported(), "{what}");

        let answers = fetch(&client, &ids(11..=30)).await;
        assert_eq!(found(answers).len(), 20);
        assert_eq!(
            calls(env.sim.stats()),
            (1, 30, 40),
            "{what}: no more queries"
        );
        assert_eq!(env.session_count().await, 10);
        env.finish().await;
    }
}

#[tokio::test]
async fn one_id_or_a_batch_of_one_is_fetched_with_get() {
    let env = TestEnv::new().await;
    found(fetch(&client(&env), &ids([5])).await);
    assert_eq!(calls(env.sim.stats()), (0, 1, 1));
    let get_only = client_with(&env, |s| s.query_batch = 1);
    found(fetch(&get_only, &ids([6, 7, 8])).await);
    assert_eq!(calls(env.sim.stats()), (0, 4, 4));
    env.finish().await;
}

/// The simulator's `message_session/query`, spoken to in raw HTTP.
struct RawPbx {
    http: reqwest::Client,
    root: String,
    token: String,
}

impl RawPbx {
    async fn log_in(env: &TestEnv) -> Self {
        let http = reqwest::Client::builder()
            .user_agent("pbx-query-test")
            .build()
            .unwrap();
        let root = format!("{}/openapi/v1.0", env.sim.base_url());
        let defaults = SimulatorSettings::default();
        let login: Value = http
            .post(format!("{root}/get_token"))
            .json(&json!({"username": defaults.client_id, "password": defaults.client_secret.expose()}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = login["access_token"].as_str().unwrap().to_owned();
        Self { http, root, token }
    }

    /// The status and JSON body (`null` if none) of a query with these
    /// parameters after the token.
    async fn query(&self, params: &[(&str, &str)]) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/message_session/query", self.root))
            .query(&[("access_token", self.token.as_str())])
            .query(params)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }
}

#[tokio::test]
async fn the_simulator_answers_a_query_with_an_array_of_the_sessions_it_knows() {
    let env = TestEnv::new().await;
    let pbx = RawPbx::log_in(&env).await;
    let never = (FIRST_MISSING_ID + 3).to_string();

    let (status, body) = pbx.query(&[("ids", &format!("2862,{never},1,1"))]).await;
    assert_eq!((status, &body["errcode"]), (200, &json!(0)));
    let list = body["list"].as_array().expect("an array");
    assert_eq!(list.len(), 2, "the unknown id is absent, the repeat once");
    assert_eq!(list[0], spec_example_session());
    assert_eq!(list[1]["id"], 1);

    let (_, body) = pbx.query(&[("ids", never.as_str())]).await;
    assert_eq!((&body["errcode"], &body["list"]), (&json!(0), &json!([])));

    for params in [&[][..], &[("ids", "1,x")][..], &[("ids", "")][..]] {
        let (_, body) = pbx.query(params).await;
        assert_eq!(body["errcode"], 40002, "{params:?}");
        assert_eq!(body["invalid_param_list"][0]["name"], "ids", "{params:?}");
    }

    // One fault per call, shared with get.
    env.sim.fail_next_session_requests([Fault::Errcode(-2)]);
    assert_eq!(pbx.query(&[("ids", "1,2")]).await.1["errcode"], -2);
    assert_eq!(pbx.query(&[("ids", "1,2")]).await.1["errcode"], 0);

    env.sim.expire_tokens();
    assert_eq!(pbx.query(&[("ids", "1")]).await.1["errcode"], 10004);

    let stats = env.sim.stats();
    assert_eq!(stats.query_requests, 8);
    assert_eq!(stats.ids_requested, 4 + 1 + 2 + 2 + 2 + 1);
    assert_eq!(stats.session_requests, 0);
    env.finish().await;
}

#[tokio::test]
async fn the_simulator_plays_firmware_without_query_both_ways() {
    let env = TestEnv::new().await;
    let pbx = RawPbx::log_in(&env).await;
    env.sim.set_query_interface(QueryInterface::Http404);
    assert_eq!(pbx.query(&[("ids", "1,2")]).await, (404, Value::Null));
    env.sim
        .set_query_interface(QueryInterface::InterfaceNotExisted);
    let (status, body) = pbx.query(&[("ids", "1,2")]).await;
    assert_eq!((status, &body["errcode"]), (200, &json!(10001)));
    env.sim.set_query_interface(QueryInterface::Supported);
    assert_eq!(
        pbx.query(&[("ids", "1,2")]).await.1["list"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    assert_eq!(env.sim.stats().query_requests, 3);
    env.finish().await;
}

/// The worker end to end: a backlog of conversations whose events are
/// interleaved costs a handful of `query` calls, each asking for many
/// sessions, instead of a call per event or per session.
#[tokio::test]
async fn a_worker_fetches_an_interleaved_backlog_in_batched_queries() {
    let env = TestEnv::new().await;
    let (sessions, rounds) = (40, 5);
    for _ in 0..rounds {
        for id in 1..=sessions {
            env.publish_json(&crate::helpers::new_message_event(id))
                .await;
        }
    }
    let mut setup = env.setup();
    setup.broker.prefetch = 500;
    let worker = env.spawn(setup);
    worker.wait_finished(sessions as u64 * rounds).await;
    let counts = worker.counts();
    assert_eq!(
        counts.enriched + counts.unchanged,
        sessions as u64 * rounds,
        "{counts:?}"
    );
    worker.shutdown().await.expect("a clean shutdown");

    assert_eq!(env.session_count().await, sessions);
    let stats = env.sim.stats();
    let calls = stats.session_requests + stats.query_requests;
    assert!(stats.query_requests >= 1, "{stats:?}");
    // 40 sessions, 20 per query: 2 calls if every event was taken at once,
    // a few follow-ups when they arrive while their session is in flight.
    assert!(
        calls <= 10,
        "{calls} PBX calls for {sessions} sessions: {stats:?}"
    );
    assert!(
        stats.ids_requested >= sessions as u64,
        "every session asked for: {stats:?}"
    );
    env.finish().await;
}
