//! The domain of one message session as `message_session/get` describes it:
//! `SessionInfo`, its `Customer` and its `PendingAgent`s, decoded leniently
//! from the PBX's JSON. Owns the tolerance rules (absent, `null` and `""` are
//! "no value"; ids may be numbers or numeric strings). Knows nothing of HTTP
//! or SQL.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A message session id as the PBX numbers them: always positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(i64);

impl SessionId {
    /// `None` unless `id` is a positive integer.
    pub fn new(id: i64) -> Option<Self> {
        (id > 0).then_some(Self(id))
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for SessionId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<i64>()
            .ok()
            .and_then(SessionId::new)
            .ok_or_else(|| format!("`{s}` is not a positive integer session id"))
    }
}

/// Session_Info, decoded. `raw` keeps the object exactly as received.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionInfo {
    pub id: SessionId,
    pub channel_type: Option<String>,
    pub channel_name: Option<String>,
    pub did_number: Option<String>,
    pub to_number: Option<String>,
    pub origin: Option<String>,
    pub page_name: Option<String>,
    pub website_domain: Option<String>,
    pub pre_chat: PreChatForm,
    pub customer: Option<Customer>,
    /// In participants order; present only while the session waits in a
    /// message queue and nobody has picked it up.
    pub pending_agents: Vec<PendingAgent>,
    pub raw: Value,
}

/// PreChat_Form: what a Live Chat visitor typed before the chat started.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PreChatForm {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

/// Customer_Info: the external customer, identified by (`user_type`,
/// `user_no`) because the API's `user_id` is always 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    pub user_type: i32,
    pub user_no: String,
    pub username: Option<String>,
    pub avatar: Option<String>,
}

/// Agent_Info: an extension the queued session is offered to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingAgent {
    pub user_id: i64,
    pub user_no: Option<String>,
    pub username: Option<String>,
    pub avatar: Option<String>,
}

/// A session as the PBX described it in answer to a request sent at
/// `requested_at`, answered at `fetched_at`. Answers are ordered by when
/// their request was sent: a request sent later sees a newer state, however
/// long its answer takes.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchedSession {
    pub info: SessionInfo,
    /// Just before the request that succeeded was sent.
    pub requested_at: DateTime<Utc>,
    /// When the PBX's answer arrived.
    pub fetched_at: DateTime<Utc>,
}

/// Why a Session_Info object could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("Session_Info is not a JSON object")]
    NotAnObject,
    #[error("Session_Info has no usable `id` ({0})")]
    BadId(String),
}

impl SessionInfo {
    /// Decodes a Session_Info object. Only `id` is required; every other field
    /// may be absent, `null` or `""`, and unknown fields are ignored.
    pub fn decode(raw: Value) -> Result<Self, DecodeError> {
        let obj = raw.as_object().ok_or(DecodeError::NotAnObject)?;
        let id = match obj.get("id") {
            Some(v) => integer(v)
                .and_then(SessionId::new)
                .ok_or_else(|| DecodeError::BadId(v.to_string()))?,
            None => return Err(DecodeError::BadId("absent".into())),
        };
        let pre_chat = match obj.get("pre_chat_form").and_then(Value::as_object) {
            Some(form) => PreChatForm {
                name: text(form, "name"),
                email: text(form, "email"),
                phone: text(form, "phone"),
                first_name: text(form, "first_name"),
                last_name: text(form, "last_name"),
            },
            None => PreChatForm::default(),
        };
        let customer = obj
            .get("user_info")
            .and_then(Value::as_object)
            .and_then(Customer::decode);
        let pending_agents = decode_agents(obj.get("participants"));
        Ok(SessionInfo {
            id,
            channel_type: text(obj, "channel_type"),
            channel_name: text(obj, "channel_name"),
            did_number: text(obj, "did_number"),
            to_number: text(obj, "to_number"),
            origin: text(obj, "origin"),
            page_name: text(obj, "page_name"),
            website_domain: text(obj, "website_domain"),
            pre_chat,
            customer,
            pending_agents,
            raw,
        })
    }
}

impl Customer {
    /// `None` when the customer cannot be keyed (no `user_type` or `user_no`).
    fn decode(obj: &Map<String, Value>) -> Option<Self> {
        let user_type = obj
            .get("user_type")
            .and_then(integer)
            .and_then(|t| i32::try_from(t).ok())?;
        Some(Customer {
            user_type,
            user_no: text(obj, "user_no")?,
            username: text(obj, "username"),
            avatar: text(obj, "avatar"),
        })
    }
}

/// Participants in order, without entries that have no usable `user_id`
/// (they cannot be keyed) and without repeats of an agent already listed:
/// one agent is pending once, at its first position.
fn decode_agents(participants: Option<&Value>) -> Vec<PendingAgent> {
    let Some(list) = participants.and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut agents: Vec<PendingAgent> = Vec::with_capacity(list.len());
    for entry in list.iter().filter_map(Value::as_object) {
        let Some(user_id) = entry.get("user_id").and_then(integer) else {
            let participant = Value::Object(entry.clone());
            tracing::warn!(%participant, "Participant without a user_id ignored.");
            continue;
        };
        if agents.iter().any(|a| a.user_id == user_id) {
            continue;
        }
        agents.push(PendingAgent {
            user_id,
            user_no: text(entry, "user_no"),
            username: text(entry, "username"),
            avatar: text(entry, "avatar"),
        });
    }
    agents
}

/// An integer given as a JSON number or a numeric string.
pub(crate) fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Optional text: absent, `null`, `""` and non-scalars are "no value";
/// numbers are kept as their decimal text.
fn text(obj: &Map<String, Value>, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_example() -> Value {
        json!({
            "id": 2862, "channel_type": "livechat", "did_number": "LC00000",
            "to_number": "1d8d5367fd4145cd9dd6cfd8c546ded7", "page_name": "",
            "user_info": {"user_id": 0, "user_no": "1d8d5367fd4145cd9dd6cfd8c546ded7",
                          "user_type": 5, "avatar": "", "username": "Website Visitor-Jane Smith"},
            "channel_name": "Website Live Chat", "website_domain": "example.com",
            "pre_chat_form": {"name": "Jane Smith", "email": "jane.smith@example.com",
                              "phone": "+8613800138000", "first_name": "Jane", "last_name": "Smith"},
            "origin": "",
            "participants": [
                {"user_id": 137, "user_no": "1003", "user_type": 1, "avatar": "", "username": "Alice Johnson"},
                {"user_id": 138, "user_no": "1004", "user_type": 1, "avatar": "", "username": "Michael Smith"},
                {"user_id": 26, "user_no": "1005", "user_type": 1, "avatar": "", "username": "Linda Brown"}
            ]
        })
    }

    #[test]
    fn the_spec_example_decodes_every_field() {
        let s = SessionInfo::decode(spec_example()).unwrap();
        assert_eq!(s.id.get(), 2862);
        assert_eq!(s.channel_type.as_deref(), Some("livechat"));
        assert_eq!(s.channel_name.as_deref(), Some("Website Live Chat"));
        assert_eq!(s.did_number.as_deref(), Some("LC00000"));
        assert_eq!(s.website_domain.as_deref(), Some("example.com"));
        assert_eq!(s.page_name, None);
        assert_eq!(s.origin, None);
        assert_eq!(s.pre_chat.first_name.as_deref(), Some("Jane"));
        assert_eq!(s.pre_chat.phone.as_deref(), Some("+8613800138000"));
        let c = s.customer.unwrap();
        assert_eq!(
            (c.user_type, c.user_no.as_str()),
            (5, "1d8d5367fd4145cd9dd6cfd8c546ded7")
        );
        assert_eq!(c.avatar, None);
        let ids: Vec<i64> = s.pending_agents.iter().map(|a| a.user_id).collect();
        assert_eq!(ids, [137, 138, 26]);
        assert_eq!(s.raw, spec_example());
    }

    #[test]
    fn absent_null_and_empty_optional_fields_are_no_value() {
        for empty in [json!(null), json!("")] {
            let s = SessionInfo::decode(json!({
                "id": 7, "channel_type": "sms", "pre_chat_form": empty.clone(),
                "participants": empty.clone(), "user_info": empty, "origin": "campaign"
            }))
            .unwrap();
            assert_eq!(s.pre_chat, PreChatForm::default());
            assert!(s.pending_agents.is_empty());
            assert_eq!(s.customer, None);
            assert_eq!(s.origin.as_deref(), Some("campaign"));
            assert_eq!(s.website_domain, None);
        }
    }

    #[test]
    fn ids_given_as_numeric_strings_are_accepted() {
        let s = SessionInfo::decode(json!({
            "id": "42",
            "user_info": {"user_id": "0", "user_no": 15551234, "user_type": "2"},
            "participants": [{"user_id": "137", "user_no": 1003}],
            "something_new": {"nested": true}
        }))
        .unwrap();
        assert_eq!(s.id.get(), 42);
        let c = s.customer.unwrap();
        assert_eq!((c.user_type, c.user_no.as_str()), (2, "15551234"));
        assert_eq!(s.pending_agents[0].user_id, 137);
        assert_eq!(s.pending_agents[0].user_no.as_deref(), Some("1003"));
    }

    #[test]
    fn a_repeated_participant_is_pending_once_at_its_first_position() {
        let s = SessionInfo::decode(json!({
            "id": 1,
            "participants": [{"user_id": 5}, {"user_id": 6}, {"user_id": 5}, {"user_no": "9"}]
        }))
        .unwrap();
        let ids: Vec<i64> = s.pending_agents.iter().map(|a| a.user_id).collect();
        assert_eq!(ids, [5, 6]);
    }

    #[test]
    fn a_session_without_a_usable_id_is_refused() {
        assert!(matches!(
            SessionInfo::decode(json!({"channel_type": "sms"})),
            Err(DecodeError::BadId(_))
        ));
        assert!(matches!(
            SessionInfo::decode(json!({"id": -3})),
            Err(DecodeError::BadId(_))
        ));
        assert!(matches!(
            SessionInfo::decode(json!({"id": "x"})),
            Err(DecodeError::BadId(_))
        ));
        assert_eq!(
            SessionInfo::decode(json!([1])),
            Err(DecodeError::NotAnObject)
        );
    }

    #[test]
    fn a_customer_without_a_key_is_no_customer() {
        let s = SessionInfo::decode(json!({"id": 1, "user_info": {"user_id": 0, "username": "x"}}))
            .unwrap();
        assert_eq!(s.customer, None);
    }
}
