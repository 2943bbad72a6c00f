//! `message_session/list` as the simulator serves it (required parameters,
//! filters, paging by `last_msg_id`, sessions changed without an event),
//! and the PBX client paging through it: every open session once, whatever
//! the PBX does with the cursor. Every test counts the simulator's calls.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use session_enricher::pbx::{ListEnd, PbxClient};
use session_enricher::simulator::{Fault, ListPaging, SimulatorSettings, synthetic_session};
use tokio_util::sync::CancellationToken;

use crate::helpers::TestEnv;

/// A fresh access token from the simulator.
async fn token(env: &TestEnv) -> String {
    let defaults = SimulatorSettings::default();
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/openapi/v1.0/get_token", env.sim.base_url()))
        .header("User-Agent", "OpenAPI")
        .json(&json!({"username": defaults.client_id, "password": defaults.client_secret.expose()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["access_token"].as_str().unwrap().to_owned()
}

/// `GET message_session/list` with these parameters (and the token).
async fn list(env: &TestEnv, token: &str, params: &[(&str, &str)]) -> Value {
    reqwest::Client::new()
        .get(format!(
            "{}/openapi/v1.0/message_session/list",
            env.sim.base_url()
        ))
        .header("User-Agent", "OpenAPI")
        .query(&[("access_token", token)])
        .query(params)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The ids of a successful answer's `list`, in order.
fn ids(answer: &Value) -> Vec<i64> {
    assert_eq!(answer["errcode"], 0, "{answer}");
    answer["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect()
}

/// The API's view with `extra` parameters.
async fn api_list(env: &TestEnv, token: &str, extra: &[(&str, &str)]) -> Vec<i64> {
    let mut params = vec![("page_size", "100"), ("user_type", "9"), ("user_no", "api")];
    params.extend_from_slice(extra);
    ids(&list(env, token, &params).await)
}

#[tokio::test]
async fn missing_or_invalid_required_parameters_are_named_in_a_40002() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(5);
    let token = token(&env).await;
    let named = |answer: &Value| -> Vec<String> {
        assert_eq!(answer["errcode"], 40002, "{answer}");
        answer["invalid_param_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        named(&list(&env, &token, &[]).await),
        ["page_size", "user_type"]
    );
    assert_eq!(
        named(&list(&env, &token, &[("page_size", "10"), ("user_type", "1")]).await),
        ["user_no"]
    );
    assert_eq!(
        named(&list(&env, &token, &[("page_size", "-1"), ("user_type", "9")]).await),
        ["page_size"]
    );
    assert_eq!(
        named(
            &list(
                &env,
                &token,
                &[("page_size", "10"), ("user_type", "9"), ("is_closed", "7")]
            )
            .await
        ),
        ["is_closed"]
    );
    // The token is checked first, as for get and query.
    let refused = list(&env, "not-a-token", &[]).await;
    assert_eq!(refused["errcode"], 10004, "{refused}");
    assert_eq!(
        api_list(&env, &token, &[]).await.len(),
        4,
        "session 5 is a campaign's: not listed without `collection`"
    );
    assert_eq!(env.sim.stats().list_requests, 6);
    env.finish().await;
}

#[tokio::test]
async fn the_filters_select_by_collection_closed_pickup_and_extension() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(12);
    let token = token(&env).await;
    let all: BTreeSet<i64> = (1..=12).collect();
    let campaign: BTreeSet<i64> = all
        .iter()
        .copied()
        .filter(|&id| synthetic_session(id).unwrap()["origin"] == "campaign")
        .collect();
    assert_eq!(campaign, BTreeSet::from([5, 10]));
    let set = |ids: Vec<i64>| ids.into_iter().collect::<BTreeSet<i64>>();

    assert_eq!(
        set(api_list(&env, &token, &[("collection", "all")]).await),
        all
    );
    assert_eq!(
        set(api_list(&env, &token, &[("collection", "campaign")]).await),
        campaign
    );
    assert_eq!(
        set(api_list(&env, &token, &[]).await),
        &all - &campaign,
        "blank: non-campaign sessions only"
    );

    // 3, 6, 9 and 12 wait in a queue; 6 is picked up and 7 closed, without
    // an event.
    assert!(env.sim.pick_up(6, 137));
    assert!(env.sim.close_session(7));
    assert!(!env.sim.pick_up(900_000_001, 137), "no such session");
    let everything = [("collection", "all")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut params = everything.to_vec();
        params.extend_from_slice(extra);
        params
    };
    let open = set(api_list(&env, &token, &with(&[("is_closed", "0")])).await);
    assert_eq!(open, &all - &BTreeSet::from([7]));
    assert_eq!(
        api_list(&env, &token, &with(&[("is_closed", "1")])).await,
        [7]
    );
    assert_eq!(
        set(api_list(&env, &token, &with(&[("is_closed", "2")])).await),
        all
    );
    assert_eq!(
        set(api_list(&env, &token, &with(&[("is_pickup", "2")])).await),
        BTreeSet::from([3, 9, 12]),
        "not picked up: somebody is pending"
    );
    assert_eq!(
        set(api_list(&env, &token, &with(&[("is_pickup", "1")])).await),
        &all - &BTreeSet::from([3, 9, 12])
    );
    assert!(
        api_list(&env, &token, &with(&[("is_archived", "1")]))
            .await
            .is_empty()
    );
    // An extension sees the sessions offered to it: 1003 among their
    // participants (3 and 12; 6 was, before its pick-up).
    let offered = ids(&list(
        &env,
        &token,
        &[
            ("page_size", "100"),
            ("user_type", "1"),
            ("user_no", "1003"),
            ("collection", "all"),
        ],
    )
    .await);
    let offered_to_1003: BTreeSet<i64> = [3, 9, 12]
        .into_iter()
        .filter(|&id| {
            synthetic_session(id).unwrap()["participants"]
                .to_string()
                .contains("\"1003\"")
        })
        .collect();
    assert_eq!(offered_to_1003, BTreeSet::from([3, 12]));
    assert_eq!(set(offered), offered_to_1003);

    let picked_up = list(
        &env,
        &token,
        &with(&[("page_size", "100"), ("user_type", "9"), ("is_pickup", "1")]),
    )
    .await;
    let six = picked_up["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == 6)
        .unwrap();
    assert_eq!(six["pickup_member_id"], 137, "{six}");
    assert!(
        six["last_msg_id"].as_i64().unwrap() > 120,
        "the pick-up's system message is the newest: {six}"
    );
    // And `get` answers nobody pending for both.
    for id in ["6", "7"] {
        let got: Value = reqwest::Client::new()
            .get(format!(
                "{}/openapi/v1.0/message_session/get",
                env.sim.base_url()
            ))
            .header("User-Agent", "OpenAPI")
            .query(&[("access_token", token.as_str()), ("id", id)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(got["errcode"], 0, "{got}");
        assert!(got["list"].get("participants").is_none(), "{got}");
    }
    env.finish().await;
}

#[tokio::test]
async fn pages_follow_the_last_msg_id_newest_first_without_overlap() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(7);
    let token = token(&env).await;
    let page = |cursor: Option<i64>| {
        let (env, token) = (&env, &token);
        async move {
            let cursor = cursor.map(|c| c.to_string()).unwrap_or_default();
            list(
                env,
                token,
                &[
                    ("page_size", "3"),
                    ("user_type", "9"),
                    ("collection", "all"),
                    ("first_msg_id", cursor.as_str()),
                ],
            )
            .await
        }
    };
    let first = page(None).await;
    assert_eq!(ids(&first), [7, 6, 5]);
    let cursor = first["list"][2]["last_msg_id"].as_i64();
    let second = page(cursor).await;
    assert_eq!(ids(&second), [4, 3, 2]);
    let third = page(second["list"][2]["last_msg_id"].as_i64()).await;
    assert_eq!(ids(&third), [1]);
    assert!(ids(&page(third["list"][0]["last_msg_id"].as_i64()).await).is_empty());

    env.sim.set_list_paging(ListPaging::Inclusive);
    assert_eq!(ids(&page(cursor).await), [5, 4, 3]);
    env.sim.set_list_paging(ListPaging::IgnoresCursor);
    assert_eq!(ids(&page(cursor).await), [7, 6, 5]);
    env.finish().await;
}

#[tokio::test]
async fn the_client_lists_every_open_session_once_whatever_the_pbx_does_with_the_cursor() {
    let env = TestEnv::new().await;
    env.sim.set_listed_sessions(10);
    assert!(env.sim.close_session(4));
    let client = PbxClient::new(env.pbx_settings()).unwrap();
    let stop = CancellationToken::new();
    let open: Vec<i64> = (1..=10).filter(|&id| id != 4).collect();
    let sorted = |ids: &[session_enricher::session::SessionId]| {
        let mut ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        ids.sort_unstable();
        ids
    };

    let listing = client.list_open_sessions(3, 100, &stop).await.unwrap();
    assert_eq!(sorted(&listing.sessions), open);
    assert_eq!(listing.sessions.len(), 9, "each once");
    assert_eq!(
        (listing.pages, listing.end),
        (4, ListEnd::Complete),
        "3 pages and an empty one"
    );
    assert_eq!(env.sim.stats().list_requests, 4);

    env.sim.set_list_paging(ListPaging::Inclusive);
    let listing = client.list_open_sessions(3, 100, &stop).await.unwrap();
    assert_eq!(sorted(&listing.sessions), open);
    assert_eq!(listing.end, ListEnd::Complete);

    env.sim.set_list_paging(ListPaging::IgnoresCursor);
    let before = env.sim.stats().list_requests;
    let listing = client.list_open_sessions(3, 100, &stop).await.unwrap();
    assert_eq!(sorted(&listing.sessions), [8, 9, 10]);
    assert_eq!(listing.end, ListEnd::Repeated);
    assert_eq!(
        env.sim.stats().list_requests - before,
        2,
        "one repeat, then it stops"
    );

    // A transient failure of a page is retried like any PBX call.
    env.sim.set_list_paging(ListPaging::Exclusive);
    env.sim.fail_next_session_requests([Fault::Errcode(-2)]);
    let before = env.sim.stats().list_requests;
    let listing = client.list_open_sessions(100, 100, &stop).await.unwrap();
    assert_eq!(listing.sessions.len(), 9);
    assert_eq!(
        env.sim.stats().list_requests - before,
        3,
        "a retried page, then the empty one"
    );
    client.revoke_token().await;
    env.finish().await;
}
