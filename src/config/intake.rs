//! `IngestArgs` (`ingest`): the webhook intake's listener, signature
//! policy and destination. Validates; never binds or connects, and never
//! shows the webhook secret.

use std::time::Duration;

use clap::Args;

use super::{AmqpUrlArgs, ConfigError, QueueArgs, broker_settings, defaults, invalid};
use crate::backoff::Backoff;
use crate::broker::{Destination, PublisherSettings};
use crate::intake::{IntakeSettings, SignaturePolicy};
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Address the webhook listener binds (it also serves /healthz, /readyz
    /// and /metrics).
    #[arg(
        long,
        env = "INGEST_ADDR",
        value_name = "INGEST_ADDR",
        default_value = defaults::INGEST_ADDR
    )]
    pub addr: std::net::SocketAddr,
    /// Path the PBX posts its webhooks to.
    #[arg(
        long,
        env = "INGEST_PATH",
        value_name = "INGEST_PATH",
        default_value = defaults::INGEST_PATH
    )]
    pub path: String,
    /// The webhook's secret from the PBX portal (Integrations > API >
    /// Webhook Event Push); X-Signature must be Base64(HMAC-SHA256(secret,
    /// body)). Required unless --insecure-no-signature; never logged.
    #[arg(
        long,
        env = "YEASTAR_WEBHOOK_SECRET",
        value_name = "YEASTAR_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,
    /// Accept webhooks without checking their signature (for trials only;
    /// logs a warning at start). Only a flag, so it cannot be switched on
    /// by a stray environment variable.
    #[arg(long)]
    pub insecure_no_signature: bool,
    /// Largest webhook body accepted, in bytes; larger ones are answered
    /// 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", value_name = "INGEST_MAX_BODY_BYTES", default_value_t = defaults::INGEST_MAX_BODY_BYTES, value_parser = clap::value_parser!(u64).range(1024..=67_108_864))]
    pub max_body_bytes: u64,
    /// Event types queued, comma-separated; valid webhooks of other types
    /// are answered 200, counted and dropped.
    #[arg(
        long,
        env = "INGEST_EVENT_TYPES",
        value_name = "INGEST_EVENT_TYPES",
        value_delimiter = ',',
        default_values_t = defaults::EVENT_TYPES
    )]
    pub event_types: Vec<i64>,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
}

/// How long ingest waits for the broker's confirm before answering 503.
const INGEST_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ingest shutdown waits for in-flight requests: a request
/// waits at most `INGEST_CONFIRM_TIMEOUT` for the broker.
const INGEST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

impl IngestArgs {
    pub fn settings(&self) -> Result<IntakeSettings, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(invalid("INGEST_PATH", "must start with `/`"));
        }
        if ["/healthz", "/readyz", "/metrics"].contains(&self.path.as_str()) {
            return Err(invalid(
                "INGEST_PATH",
                "must not be /healthz, /readyz or /metrics (served beside it)",
            ));
        }
        let secret = self
            .webhook_secret
            .clone()
            .filter(|s| !s.expose().trim().is_empty());
        let signature = match (secret, self.insecure_no_signature) {
            (Some(secret), false) => SignaturePolicy::Verify(secret),
            (None, true) => SignaturePolicy::Disabled,
            (None, false) => {
                return Err(invalid(
                    "YEASTAR_WEBHOOK_SECRET",
                    "is required (the webhook's secret in the PBX portal), unless --insecure-no-signature",
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    "YEASTAR_WEBHOOK_SECRET",
                    "is set together with --insecure-no-signature; choose one",
                ));
            }
        };
        if self.event_types.is_empty() {
            return Err(invalid(
                "INGEST_EVENT_TYPES",
                "must list at least one event type",
            ));
        }
        let queue = broker_settings(&self.amqp.amqp_url, &self.queue.amqp_queue, 1)?.queue;
        let destination = match self.queue.exchange()? {
            Some(exchange) => Destination::Exchange(exchange),
            None => Destination::Queue(queue),
        };
        Ok(IntakeSettings {
            listen: self.addr,
            path: self.path.clone(),
            signature,
            max_body_bytes: usize::try_from(self.max_body_bytes)
                .map_err(|_| invalid("INGEST_MAX_BODY_BYTES", "is too large"))?,
            forwarded_types: self.event_types.clone(),
            publisher: PublisherSettings {
                url: self.amqp.amqp_url.clone(),
                destination,
                confirm_timeout: INGEST_CONFIRM_TIMEOUT,
                reconnect: Backoff {
                    initial: Duration::from_millis(500),
                    max: Duration::from_secs(15),
                    attempts: u32::MAX,
                },
            },
            shutdown_timeout: INGEST_SHUTDOWN_TIMEOUT,
        })
    }
}
