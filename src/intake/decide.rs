//! One webhook request → exactly one `IntakeOutcome` (`decide`), and that
//! outcome → its log line and its HTTP answer (`respond`). It reads an
//! event only as far as its type, and never answers 200 for an event the
//! broker has not confirmed.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::net::SocketAddr;

use super::settings::{IntakeSettings, SignaturePolicy};
use crate::broker::{PublishError, Publisher};
use crate::event::{self, MalformedEvent};
use crate::metrics::WebhookOutcome;
use crate::signature::{self, SIGNATURE_HEADER, SignatureError};

/// What became of one webhook request; `respond` turns it into the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntakeOutcome {
    /// Published and confirmed by the broker: 200.
    Accepted { event_type: Option<i64> },
    /// No `X-Signature` header: 401.
    Unsigned,
    /// A signature that does not match the body: 401.
    BadSignature,
    /// A body over `max_body_bytes`: 413.
    TooLarge,
    /// A body that is not JSON (or could not be read): 400.
    NotJson { reason: String },
    /// JSON, but not an event envelope (not an object, or a `type` that is
    /// not an integer): 400.
    NotAnEvent { reason: String },
    /// A valid envelope of a type this deployment does not forward: 200.
    NotForwarded { event_type: i64 },
    /// The broker returned the message: nothing is bound to its routing key
    /// (a configuration problem): 503.
    Unroutable { routing_key: String },
    /// The broker is down, blocked, nacked or did not confirm in time: 503.
    Unavailable { reason: String },
}

impl IntakeOutcome {
    /// The `outcome` label in metrics and logs.
    pub fn kind(&self) -> WebhookOutcome {
        match self {
            IntakeOutcome::Accepted { .. } => WebhookOutcome::Accepted,
            IntakeOutcome::Unsigned => WebhookOutcome::Unsigned,
            IntakeOutcome::BadSignature => WebhookOutcome::BadSignature,
            IntakeOutcome::TooLarge => WebhookOutcome::TooLarge,
            IntakeOutcome::NotJson { .. } => WebhookOutcome::NotJson,
            IntakeOutcome::NotAnEvent { .. } => WebhookOutcome::NotAnEvent,
            IntakeOutcome::NotForwarded { .. } => WebhookOutcome::NotForwarded,
            IntakeOutcome::Unroutable { .. } => WebhookOutcome::Unroutable,
            IntakeOutcome::Unavailable { .. } => WebhookOutcome::Unavailable,
        }
    }

    /// The `outcome` label as text, e.g. `bad_signature`.
    pub fn label(&self) -> &'static str {
        self.kind().as_str()
    }

    pub fn status(&self) -> StatusCode {
        match self {
            IntakeOutcome::Accepted { .. } | IntakeOutcome::NotForwarded { .. } => StatusCode::OK,
            IntakeOutcome::Unsigned | IntakeOutcome::BadSignature => StatusCode::UNAUTHORIZED,
            IntakeOutcome::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            IntakeOutcome::NotJson { .. } | IntakeOutcome::NotAnEvent { .. } => {
                StatusCode::BAD_REQUEST
            }
            IntakeOutcome::Unroutable { .. } | IntakeOutcome::Unavailable { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }
}

/// Decides one request's outcome: size, then signature (nothing of an
/// unsigned body is read), then JSON and type, then publish. Only an event
/// the broker confirmed is `Accepted`.
pub(super) async fn decide(
    settings: &IntakeSettings,
    publisher: &Publisher,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> IntakeOutcome {
    let body = match body {
        Ok(body) => body,
        Err(BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))) => {
            return IntakeOutcome::TooLarge;
        }
        Err(e) => {
            return IntakeOutcome::NotJson {
                reason: format!("the body could not be read: {e}"),
            };
        }
    };
    if let SignaturePolicy::Verify(secret) = &settings.signature {
        let header = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
        match signature::verify(secret, &body, header) {
            Ok(()) => {}
            Err(SignatureError::Missing) => return IntakeOutcome::Unsigned,
            Err(SignatureError::Mismatch) => return IntakeOutcome::BadSignature,
        }
    }
    let event_type = match event::envelope_type(&body) {
        Ok(event_type) => event_type,
        Err(e @ MalformedEvent::NotJson(_)) => {
            return IntakeOutcome::NotJson {
                reason: e.to_string(),
            };
        }
        Err(e) => {
            return IntakeOutcome::NotAnEvent {
                reason: e.to_string(),
            };
        }
    };
    if let Some(t) = event_type
        && !settings.forwarded_types.contains(&t)
    {
        return IntakeOutcome::NotForwarded { event_type: t };
    }
    let routing_key = settings.routing_key(event_type);
    match publisher.publish(&routing_key, &body).await {
        Ok(()) => IntakeOutcome::Accepted { event_type },
        Err(PublishError::Unroutable { routing_key }) => IntakeOutcome::Unroutable { routing_key },
        Err(PublishError::Unavailable(reason)) => IntakeOutcome::Unavailable { reason },
    }
}

/// Logs an outcome: refusals as WARN, an unroutable event as ERROR (an
/// operator must bind a queue).
pub(super) fn log(outcome: &IntakeOutcome, peer: SocketAddr) {
    let label = outcome.label();
    match outcome {
        IntakeOutcome::Accepted { event_type } => {
            tracing::debug!(outcome = label, event_type, "Webhook queued.");
        }
        IntakeOutcome::NotForwarded { event_type } => {
            tracing::debug!(
                outcome = label,
                event_type,
                "Webhook of a type not forwarded."
            );
        }
        IntakeOutcome::Unsigned | IntakeOutcome::BadSignature | IntakeOutcome::TooLarge => {
            tracing::warn!(outcome = label, %peer, "Webhook refused.");
        }
        IntakeOutcome::NotJson { reason } | IntakeOutcome::NotAnEvent { reason } => {
            tracing::warn!(outcome = label, %peer, reason = %reason, "Webhook refused.");
        }
        IntakeOutcome::Unroutable { routing_key } => {
            tracing::error!(outcome = label, routing_key = %routing_key,
                "Webhook answered 503: no queue is bound to its routing key; bind one.");
        }
        IntakeOutcome::Unavailable { reason } => {
            tracing::warn!(outcome = label, reason = %reason,
                "Webhook answered 503: RabbitMQ did not confirm it.");
        }
    }
}

/// The HTTP answer to an outcome: its status and a short JSON body.
pub(super) fn respond(outcome: &IntakeOutcome) -> Response {
    let body = match outcome {
        IntakeOutcome::Accepted { .. } => json!({"status": "queued"}),
        IntakeOutcome::NotForwarded { event_type } => {
            json!({"status": "not forwarded", "event_type": event_type})
        }
        IntakeOutcome::Unsigned => json!({"error": "missing X-Signature"}),
        IntakeOutcome::BadSignature => json!({"error": "X-Signature does not match the body"}),
        IntakeOutcome::TooLarge => json!({"error": "body too large"}),
        IntakeOutcome::NotJson { .. } => json!({"error": "body is not JSON"}),
        IntakeOutcome::NotAnEvent { reason } => json!({"error": reason}),
        IntakeOutcome::Unroutable { .. } | IntakeOutcome::Unavailable { .. } => {
            json!({"error": "event not queued; try again later"})
        }
    };
    (outcome.status(), axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_confirmed_or_deliberately_dropped_event_is_answered_200() {
        let ok = [
            IntakeOutcome::Accepted {
                event_type: Some(30031),
            },
            IntakeOutcome::NotForwarded { event_type: 30038 },
        ];
        for outcome in ok {
            assert_eq!(outcome.status(), StatusCode::OK, "{outcome:?}");
        }
        let retry = [
            IntakeOutcome::Unroutable {
                routing_key: "k".into(),
            },
            IntakeOutcome::Unavailable {
                reason: "down".into(),
            },
        ];
        for outcome in retry {
            assert_eq!(
                outcome.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{outcome:?}"
            );
        }
        assert_eq!(IntakeOutcome::Unsigned.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            IntakeOutcome::BadSignature.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            IntakeOutcome::TooLarge.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
