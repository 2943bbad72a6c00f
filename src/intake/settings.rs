//! How the intake runs (`IntakeSettings`, `SignaturePolicy`) and where a
//! forwarded event goes (`routing_key`). Plain values: it never opens a
//! connection or looks at a request.

use std::net::SocketAddr;
use std::time::Duration;

use crate::broker::{Destination, PublisherSettings};
use crate::secret::Secret;

/// Routing-key prefix when publishing to an exchange: `yeastar.30031`.
pub const ROUTING_KEY_PREFIX: &str = "yeastar";

/// How the intake runs.
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    pub listen: SocketAddr,
    /// The path the PBX posts to, e.g. `/webhooks/yeastar`.
    pub path: String,
    pub signature: SignaturePolicy,
    /// Larger bodies are answered 413 without being read further.
    pub max_body_bytes: usize,
    /// Event types published; other valid envelopes are answered 200 and
    /// dropped. An envelope without `type` is always published (the worker
    /// accepts those).
    pub forwarded_types: Vec<i64>,
    pub publisher: PublisherSettings,
    /// How long a shutdown waits for in-flight requests.
    pub shutdown_timeout: Duration,
}

/// Whether webhooks must be signed.
#[derive(Clone, Debug)]
pub enum SignaturePolicy {
    /// `X-Signature` must be the body's HMAC-SHA256 with this secret.
    Verify(Secret),
    /// Anyone who can reach the listener can publish (`--insecure-no-signature`).
    Disabled,
}

impl IntakeSettings {
    /// The routing key for an event: per type on an exchange
    /// (`yeastar.<type>`, `yeastar.untyped` without one), the work queue's
    /// name on the default exchange.
    pub fn routing_key(&self, event_type: Option<i64>) -> String {
        match (&self.publisher.destination, event_type) {
            (Destination::Queue(queue), _) => queue.clone(),
            (Destination::Exchange(_), Some(t)) => format!("{ROUTING_KEY_PREFIX}.{t}"),
            (Destination::Exchange(_), None) => format!("{ROUTING_KEY_PREFIX}.untyped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backoff::Backoff;

    fn settings(destination: Destination) -> IntakeSettings {
        IntakeSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            path: "/webhooks/yeastar".into(),
            signature: SignaturePolicy::Disabled,
            max_body_bytes: 1024,
            forwarded_types: vec![30031],
            publisher: PublisherSettings {
                url: "amqp://127.0.0.1:1/%2f".into(),
                destination,
                confirm_timeout: Duration::from_secs(1),
                reconnect: Backoff {
                    initial: Duration::from_millis(10),
                    max: Duration::from_millis(10),
                    attempts: u32::MAX,
                },
            },
            shutdown_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn on_an_exchange_the_routing_key_names_the_event_type() {
        let s = settings(Destination::Exchange("pbx-events".into()));
        assert_eq!(s.routing_key(Some(30031)), "yeastar.30031");
        assert_eq!(s.routing_key(Some(30038)), "yeastar.30038");
        assert_eq!(s.routing_key(None), "yeastar.untyped");
    }

    #[test]
    fn on_the_default_exchange_the_routing_key_is_the_work_queue() {
        let s = settings(Destination::Queue("yeastar.message-events".into()));
        assert_eq!(s.routing_key(Some(30031)), "yeastar.message-events");
        assert_eq!(s.routing_key(None), "yeastar.message-events");
    }
}
