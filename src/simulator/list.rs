//! `message_session/list` as the simulator serves it: the required
//! parameters (errcode 40002 naming each one missing or invalid), the
//! filters, and paging by `last_msg_id`. The filter codes are the official
//! page's (Query Message Session List): `is_closed` and `is_archived` 0 =
//! only open / unarchived, 1 = only closed / archived, 2 = both; `is_pickup`
//! 0 = all, 1 = only picked up, 2 = only not picked up; `collection` blank =
//! non-campaign sessions, `all`, `campaign`.
//!
//! Where the docs are silent, the simulator assumes (and the client must
//! survive the alternatives, see `ListPaging`):
//! - newest first: sessions ordered by `last_msg_id`, descending;
//! - `first_msg_id` N (the previous page's last `last_msg_id`) starts the
//!   next page after N: it holds the sessions whose `last_msg_id` is below N;
//! - a `page_size` above 100 is served as 100;
//! - an absent filter filters nothing;
//! - "picked up" means nobody is pending: no `participants`;
//! - an extension (`user_type` 1) sees the sessions offered to it (its
//!   number among `participants`); the API (`user_type` 9) sees them all.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    FIRST_MISSING_ID, Shared, SimState, admit, answer, invalid_parameters, lock, session_of,
};

/// Above every synthetic session's last message (id × 10): where the
/// messages written by pick-ups and closes are numbered from.
pub(super) const FIRST_NEW_MESSAGE_ID: i64 = 10 * FIRST_MISSING_ID;

/// The largest page served, whatever `page_size` asks.
const MAX_PAGE_SIZE: usize = 100;

/// How `message_session/list` treats `first_msg_id`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ListPaging {
    /// The next page starts after the session whose `last_msg_id` was
    /// given.
    #[default]
    Exclusive,
    /// The next page starts at that session: each page repeats the
    /// previous page's last one.
    Inclusive,
    /// `first_msg_id` is ignored: every call answers the first page.
    IgnoresCursor,
}

/// What happened to a session on the PBX without an event.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Lifecycle {
    /// Its newest message, once newer than the synthetic one.
    pub last_msg_id: Option<i64>,
    pub closed: bool,
    /// The agent who picked it up.
    pub picked_up_by: Option<i64>,
}

/// Which sessions a `collection` holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Collection {
    /// Blank: sessions not started by a campaign.
    NonCampaign,
    All,
    Campaign,
}

/// A valid `message_session/list` request.
struct ListRequest {
    page_size: usize,
    /// For `user_type` 1: the extension asking.
    extension: Option<String>,
    collection: Collection,
    first_msg_id: Option<i64>,
    is_archived: u8,
    is_closed: u8,
    is_pickup: u8,
}

/// `(name, what it must be)` of a parameter refused.
type Invalid = (&'static str, &'static str);

impl ListRequest {
    /// The request, or every parameter missing or invalid.
    fn parse(query: &HashMap<String, String>) -> Result<Self, Vec<Invalid>> {
        let given = |name: &str| query.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        let mut invalid = Vec::new();
        let mut refuse = |name, validation| invalid.push((name, validation));

        let page_size = given("page_size")
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0);
        if page_size.is_none() {
            refuse("page_size", "required, a positive integer");
        }
        let user_type = given("user_type").filter(|t| matches!(*t, "1" | "9"));
        if user_type.is_none() {
            refuse(
                "user_type",
                "required: 1 (extension user) or 9 (third-party platform)",
            );
        }
        let user_no = given("user_no");
        let extension = match user_type {
            Some("1") if user_no.is_none() => {
                refuse("user_no", "required for user_type 1: an extension number");
                None
            }
            Some("1") => user_no.map(str::to_owned),
            _ if user_no.is_some_and(|no| no != "api") => {
                refuse("user_no", "api or blank for user_type 9");
                None
            }
            _ => None,
        };
        let collection = match given("collection") {
            None => Collection::NonCampaign,
            Some("all") => Collection::All,
            Some("campaign") => Collection::Campaign,
            Some(_) => {
                refuse("collection", "all, campaign or blank");
                Collection::NonCampaign
            }
        };
        let first_msg_id = match given("first_msg_id").map(str::parse::<i64>) {
            None => None,
            Some(Ok(id)) if id > 0 => Some(id),
            Some(Ok(0)) => None,
            Some(_) => {
                refuse("first_msg_id", "a message id");
                None
            }
        };
        let mut code = |name, default| match given(name).map(str::parse::<u8>) {
            None => default,
            Some(Ok(code @ 0..=2)) => code,
            Some(_) => {
                refuse(name, "0, 1 or 2");
                default
            }
        };
        let is_archived = code("is_archived", 2);
        let is_closed = code("is_closed", 2);
        let is_pickup = code("is_pickup", 0);
        match page_size {
            Some(page_size) if invalid.is_empty() => Ok(ListRequest {
                page_size: page_size.min(MAX_PAGE_SIZE),
                extension,
                collection,
                first_msg_id,
                is_archived,
                is_closed,
                is_pickup,
            }),
            _ => Err(invalid),
        }
    }

    /// Whether the filters let this session through.
    fn admits(&self, session: &ListedSession) -> bool {
        let code_admits = |code: u8, yes: bool| match code {
            0 => !yes,
            1 => yes,
            _ => true,
        };
        let collection = match self.collection {
            Collection::NonCampaign => !session.campaign,
            Collection::All => true,
            Collection::Campaign => session.campaign,
        };
        let pickup = match self.is_pickup {
            1 => session.picked_up,
            2 => !session.picked_up,
            _ => true,
        };
        let visible = self
            .extension
            .as_ref()
            .is_none_or(|no| session.offered_to.contains(no));
        collection
            && pickup
            && visible
            && code_admits(self.is_closed, session.closed)
            && code_admits(self.is_archived, false)
    }
}

/// A session as the list shows it, with what the filters look at.
struct ListedSession {
    id: i64,
    last_msg_id: i64,
    closed: bool,
    picked_up: bool,
    campaign: bool,
    /// Extension numbers of its pending agents.
    offered_to: Vec<String>,
    entry: Value,
}

impl ListedSession {
    fn new(id: i64, session: &Value, lifecycle: Lifecycle) -> Self {
        let last_msg_id = lifecycle
            .last_msg_id
            .or_else(|| session.get("last_msg_id").and_then(Value::as_i64))
            .unwrap_or(id.saturating_mul(10));
        let offered_to: Vec<String> = session
            .get("participants")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("user_no").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let picked_up = offered_to.is_empty();
        let channel = session.get("channel_type").cloned().unwrap_or(Value::Null);
        let mut entry = json!({
            "id": id,
            "type": channel,
            "is_close": i32::from(lifecycle.closed),
            "is_archived": 0,
            "to": session.get("user_info").cloned().unwrap_or(Value::Null),
            "last_msg_id": last_msg_id,
            "did_number": session.get("did_number").cloned().unwrap_or(Value::Null),
        });
        // Documented only for WhatsApp and Facebook: seconds left of the
        // 24-hour window.
        if matches!(channel.as_str(), Some("whatsapp" | "facebook")) {
            entry["expire"] = json!(86_400 - id.rem_euclid(3_600));
        }
        if !picked_up {
            entry["queue_id"] = json!(1);
        }
        if let Some(agent) = lifecycle.picked_up_by {
            entry["pickup_member_id"] = json!(agent);
        }
        Self {
            id,
            last_msg_id,
            closed: lifecycle.closed,
            picked_up,
            campaign: session.get("origin").and_then(Value::as_str) == Some("campaign"),
            offered_to,
            entry,
        }
    }
}

/// Every session the PBX lists: synthetic ids 1 to `listed`, every session
/// set by a test, every session changed without an event; not those
/// removed.
fn listed_sessions(state: &SimState, listed: u64) -> Vec<ListedSession> {
    let synthetic = i64::try_from(listed)
        .unwrap_or(i64::MAX)
        .min(FIRST_MISSING_ID - 1);
    let mut ids: BTreeSet<i64> = (1..=synthetic).collect();
    ids.extend(
        state
            .overrides
            .iter()
            .filter(|(_, session)| session.is_some())
            .map(|(id, _)| *id),
    );
    ids.extend(state.lifecycle.keys().copied());
    ids.into_iter()
        .filter_map(|id| {
            let session = session_of(state, id)?;
            let lifecycle = state.lifecycle.get(&id).copied().unwrap_or_default();
            Some(ListedSession::new(id, &session, lifecycle))
        })
        .collect()
}

/// `message_session/list`: one page of the sessions the filters let
/// through, newest `last_msg_id` first.
pub(super) async fn message_session_list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let fault = {
        let mut state = lock(&shared.state);
        state.stats.list_requests += 1;
        state.session_faults.pop_front()
    };
    let listed = lock(&shared.settings).listed_sessions;
    let state = match admit(&shared, &headers, &query, fault).await {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    let request = match ListRequest::parse(&query) {
        Ok(request) => request,
        Err(invalid) => return invalid_parameters(&invalid),
    };
    let mut sessions: Vec<ListedSession> = listed_sessions(&state, listed)
        .into_iter()
        .filter(|session| request.admits(session))
        .collect();
    let paging = state.list_paging;
    drop(state);
    sessions.sort_by_key(|session| std::cmp::Reverse((session.last_msg_id, session.id)));
    let on_page = |session: &ListedSession| match (paging, request.first_msg_id) {
        (ListPaging::IgnoresCursor, _) | (_, None) => true,
        (ListPaging::Exclusive, Some(after)) => session.last_msg_id < after,
        (ListPaging::Inclusive, Some(from)) => session.last_msg_id <= from,
    };
    let page: Vec<Value> = sessions
        .into_iter()
        .filter(on_page)
        .take(request.page_size)
        .map(|session| session.entry)
        .collect();
    answer(json!({"errcode": 0, "errmsg": "SUCCESS", "list": page}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn refused(pairs: &[(&str, &str)]) -> Vec<&'static str> {
        match ListRequest::parse(&query(pairs)) {
            Ok(_) => Vec::new(),
            Err(invalid) => invalid.into_iter().map(|(name, _)| name).collect(),
        }
    }

    #[test]
    fn every_missing_or_invalid_parameter_is_named() {
        assert_eq!(refused(&[]), ["page_size", "user_type"]);
        assert_eq!(
            refused(&[("page_size", "0"), ("user_type", "5")]),
            ["page_size", "user_type"]
        );
        assert_eq!(
            refused(&[("page_size", "10"), ("user_type", "1")]),
            ["user_no"]
        );
        assert_eq!(
            refused(&[
                ("page_size", "10"),
                ("user_type", "9"),
                ("user_no", "1003"),
                ("collection", "some"),
                ("is_closed", "3"),
                ("first_msg_id", "x"),
            ]),
            ["user_no", "collection", "first_msg_id", "is_closed"]
        );
        assert!(
            refused(&[("page_size", "500"), ("user_type", "9"), ("user_no", "api")]).is_empty()
        );
        assert!(refused(&[("page_size", "1"), ("user_type", "1"), ("user_no", "1003")]).is_empty());
    }

    #[test]
    fn a_page_size_above_the_cap_is_served_as_the_cap() {
        let request =
            ListRequest::parse(&query(&[("page_size", "500"), ("user_type", "9")])).unwrap();
        assert_eq!(request.page_size, MAX_PAGE_SIZE);
    }
}
