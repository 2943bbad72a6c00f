//! Parsing at the edge: a delivery's bytes become a typed `Event` (or a
//! `MalformedEvent` saying why not) in one function. Nothing after this
//! module handles raw event JSON.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{Map, Value};

use crate::session::{SessionId, integer};

/// Yeastar's "New Message Notification" event.
pub const NEW_MESSAGE_EVENT: i64 = 30031;

/// What a delivery asks of the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A message in a session: the session must be (re)fetched.
    Message(MessageEvent),
    /// A well-formed report of an event type this deployment does not handle.
    Ignored { event_type: i64 },
}

/// A message event, reduced to what the worker needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageEvent {
    pub session_id: SessionId,
    /// For logs only; the PBX's `msg_id` when the event carries one.
    pub msg_id: Option<String>,
    /// When the customer sent the message (`send_time`), if given.
    pub sent_at: Option<DateTime<Utc>>,
}

/// Why a delivery cannot be processed: it goes to the dead-letter queue with
/// this text as its reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedEvent {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("`type` is not an integer event id: {0}")]
    BadType(String),
    #[error("`msg` is neither an object nor a JSON string of an object")]
    BadMsg,
    #[error("no `session_id` in the event")]
    MissingSessionId,
    #[error("`session_id` is not a positive integer: {0}")]
    BadSessionId(String),
}

/// Parses one delivery body.
///
/// Accepts a Yeastar event report `{"type", "sn", "msg"}` whose `msg` is an
/// object or a JSON string of one, with the payload in `msg` or in
/// `msg.data`; `type` may be missing. A bare `{"session_id": ...}` is accepted
/// too. A present `type` not in `handled_types` is `Event::Ignored`.
pub fn parse(body: &[u8], handled_types: &[i64]) -> Result<Event, MalformedEvent> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| MalformedEvent::NotJson(e.to_string()))?;
    let root = root.as_object().ok_or(MalformedEvent::NotAnObject)?;

    if let Some(t) = root.get("type").filter(|t| !t.is_null()) {
        let event_type = integer(t).ok_or_else(|| MalformedEvent::BadType(t.to_string()))?;
        if !handled_types.contains(&event_type) {
            return Ok(Event::Ignored { event_type });
        }
    }

    let decoded_msg;
    let mut payload = match root.get("msg") {
        None | Some(Value::Null) => root,
        Some(Value::Object(msg)) => msg,
        Some(Value::String(s)) => {
            decoded_msg = serde_json::from_str::<Value>(s).map_err(|_| MalformedEvent::BadMsg)?;
            decoded_msg.as_object().ok_or(MalformedEvent::BadMsg)?
        }
        Some(_) => return Err(MalformedEvent::BadMsg),
    };
    if let Some(Value::Object(data)) = payload.get("data") {
        payload = data;
    }
    message_event(payload).map(Event::Message)
}

/// Reads only the event type of a webhook body, for the intake to route it:
/// `Ok(Some(type))`, or `Ok(None)` for an envelope without `type` (which the
/// worker accepts). The rest of the event is not looked at: the intake
/// forwards the bytes unchanged and the worker parses them with `parse`.
pub fn envelope_type(body: &[u8]) -> Result<Option<i64>, MalformedEvent> {
    let root: Value =
        serde_json::from_slice(body).map_err(|e| MalformedEvent::NotJson(e.to_string()))?;
    let root = root.as_object().ok_or(MalformedEvent::NotAnObject)?;
    match root.get("type") {
        None | Some(Value::Null) => Ok(None),
        Some(t) => integer(t)
            .map(Some)
            .ok_or_else(|| MalformedEvent::BadType(t.to_string())),
    }
}

fn message_event(payload: &Map<String, Value>) -> Result<MessageEvent, MalformedEvent> {
    let raw_id = match payload.get("session_id") {
        None | Some(Value::Null) => return Err(MalformedEvent::MissingSessionId),
        Some(v) => v,
    };
    let session_id = integer(raw_id)
        .and_then(SessionId::new)
        .ok_or_else(|| MalformedEvent::BadSessionId(raw_id.to_string()))?;
    let msg_id = payload.get("msg_id").and_then(|v| match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let sent_at = payload
        .get("send_time")
        .and_then(integer)
        .and_then(|secs| Utc.timestamp_opt(secs, 0).single());
    Ok(MessageEvent {
        session_id,
        msg_id,
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDLED: &[i64] = &[NEW_MESSAGE_EVENT];

    fn session_of(body: &str) -> i64 {
        match parse(body.as_bytes(), HANDLED) {
            Ok(Event::Message(m)) => m.session_id.get(),
            other => panic!("expected a message event from {body}, got {other:?}"),
        }
    }

    #[test]
    fn msg_as_an_object_is_accepted() {
        assert_eq!(
            session_of(r#"{"type":30031,"sn":"1","msg":{"session_id":2862,"msg_id":9}}"#),
            2862
        );
    }

    #[test]
    fn msg_as_a_json_string_is_accepted() {
        assert_eq!(
            session_of(r#"{"type":30031,"sn":"1","msg":"{\"session_id\":77,\"msg_id\":\"5\"}"}"#),
            77
        );
    }

    #[test]
    fn msg_as_a_string_wrapping_data_is_accepted() {
        assert_eq!(
            session_of(r#"{"type":30031,"msg":"{\"data\":{\"session_id\":78}}"}"#),
            78
        );
        assert_eq!(
            session_of(r#"{"type":30031,"msg":{"data":{"session_id":79}}}"#),
            79
        );
    }

    #[test]
    fn a_missing_type_is_accepted() {
        assert_eq!(session_of(r#"{"sn":"1","msg":{"session_id":5}}"#), 5);
    }

    #[test]
    fn a_string_session_id_is_accepted() {
        assert_eq!(
            session_of(r#"{"type":"30031","msg":{"session_id":"123"}}"#),
            123
        );
    }

    #[test]
    fn a_bare_session_id_is_accepted() {
        let Ok(Event::Message(m)) = parse(br#"{"session_id":123,"msg_id":"m-1"}"#, HANDLED) else {
            panic!("bare form refused");
        };
        assert_eq!(
            (m.session_id.get(), m.msg_id.as_deref()),
            (123, Some("m-1"))
        );
    }

    #[test]
    fn send_time_becomes_sent_at() {
        let Ok(Event::Message(m)) = parse(
            br#"{"msg":{"session_id":1,"send_time":1700000000}}"#,
            HANDLED,
        ) else {
            panic!("refused");
        };
        assert_eq!(m.sent_at.map(|t| t.timestamp()), Some(1_700_000_000));
    }

    #[test]
    fn an_unhandled_event_type_is_ignored() {
        assert_eq!(
            parse(
                br#"{"type":30038,"msg":"{\"data\":{\"session_id\":1}}"}"#,
                HANDLED
            ),
            Ok(Event::Ignored { event_type: 30038 })
        );
    }

    #[test]
    fn the_handled_types_are_configurable() {
        assert!(matches!(
            parse(br#"{"type":30032,"msg":{"session_id":1}}"#, &[30031, 30032]),
            Ok(Event::Message(_))
        ));
    }

    #[test]
    fn a_body_that_is_not_json_is_dead_lettered() {
        assert!(matches!(
            parse(b"hello", HANDLED),
            Err(MalformedEvent::NotJson(_))
        ));
        assert!(matches!(
            parse(b"", HANDLED),
            Err(MalformedEvent::NotJson(_))
        ));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_dead_lettered() {
        assert_eq!(parse(b"[1,2]", HANDLED), Err(MalformedEvent::NotAnObject));
    }

    #[test]
    fn a_body_without_session_id_is_dead_lettered() {
        assert_eq!(
            parse(br#"{"type":30031,"msg":{"msg_id":1}}"#, HANDLED),
            Err(MalformedEvent::MissingSessionId)
        );
        assert_eq!(
            parse(br#"{"session_id":null}"#, HANDLED),
            Err(MalformedEvent::MissingSessionId)
        );
    }

    #[test]
    fn a_session_id_that_is_not_a_positive_integer_is_dead_lettered() {
        for bad in [r#""abc""#, "0", "-4", "1.5", "true", r#""""#, "[1]"] {
            let body = format!(r#"{{"type":30031,"msg":{{"session_id":{bad}}}}}"#);
            assert!(
                matches!(
                    parse(body.as_bytes(), HANDLED),
                    Err(MalformedEvent::BadSessionId(_))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn a_msg_string_that_is_not_an_object_is_dead_lettered() {
        assert_eq!(
            parse(br#"{"type":30031,"msg":"not json"}"#, HANDLED),
            Err(MalformedEvent::BadMsg)
        );
        assert_eq!(
            parse(br#"{"type":30031,"msg":"[1]"}"#, HANDLED),
            Err(MalformedEvent::BadMsg)
        );
        assert_eq!(
            parse(br#"{"type":30031,"msg":5}"#, HANDLED),
            Err(MalformedEvent::BadMsg)
        );
    }

    #[test]
    fn a_type_that_is_not_an_integer_is_dead_lettered() {
        assert!(matches!(
            parse(br#"{"type":"new","msg":{"session_id":1}}"#, HANDLED),
            Err(MalformedEvent::BadType(_))
        ));
    }

    #[test]
    fn the_envelope_type_is_read_as_a_number_or_a_numeric_string() {
        assert_eq!(
            envelope_type(br#"{"type":30031,"msg":"not even parsed"}"#),
            Ok(Some(30031))
        );
        assert_eq!(envelope_type(br#"{"type":"30038"}"#), Ok(Some(30038)));
    }

    #[test]
    fn an_envelope_without_type_has_no_type() {
        assert_eq!(envelope_type(br#"{"msg":{"session_id":5}}"#), Ok(None));
        assert_eq!(envelope_type(br#"{"type":null}"#), Ok(None));
    }

    #[test]
    fn a_body_that_is_no_envelope_has_no_type() {
        assert!(matches!(
            envelope_type(b"hello"),
            Err(MalformedEvent::NotJson(_))
        ));
        assert_eq!(envelope_type(b"[1]"), Err(MalformedEvent::NotAnObject));
        assert!(matches!(
            envelope_type(br#"{"type":"new"}"#),
            Err(MalformedEvent::BadType(_))
        ));
    }
}
