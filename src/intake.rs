//! The webhook intake (`session-enricher ingest`): the HTTP server Yeastar's
//! "Webhook Event Push" posts to. It owns the path from a signed webhook to
//! a confirmed message on RabbitMQ: check the size, verify the signature over
//! the raw bytes, read the event type, and publish the body unchanged. Each
//! request gets exactly one `IntakeOutcome`, counted, then answered.
//!
//! It must never answer 200 for a forwarded event the broker has not
//! confirmed, and never parses an event beyond its type (the worker does).
//! The same listener serves `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{Destination, PublishError, Publisher, PublisherSettings, PublisherState};
use crate::event::{self, MalformedEvent};
use crate::secret::Secret;
use crate::signature::{self, SIGNATURE_HEADER, SignatureError};

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
    /// The `outcome` label in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            IntakeOutcome::Accepted { .. } => "accepted",
            IntakeOutcome::Unsigned => "unsigned",
            IntakeOutcome::BadSignature => "bad_signature",
            IntakeOutcome::TooLarge => "too_large",
            IntakeOutcome::NotJson { .. } => "not_json",
            IntakeOutcome::NotAnEvent { .. } => "not_an_event",
            IntakeOutcome::NotForwarded { .. } => "not_forwarded",
            IntakeOutcome::Unroutable { .. } => "unroutable",
            IntakeOutcome::Unavailable { .. } => "unavailable",
        }
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

/// Webhook requests answered, per outcome.
#[derive(Debug, Default)]
pub struct IntakeCounts {
    accepted: AtomicU64,
    unsigned: AtomicU64,
    bad_signature: AtomicU64,
    too_large: AtomicU64,
    not_json: AtomicU64,
    not_an_event: AtomicU64,
    not_forwarded: AtomicU64,
    unroutable: AtomicU64,
    unavailable: AtomicU64,
}

/// A copy of the counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntakeCountsSnapshot {
    pub accepted: u64,
    pub unsigned: u64,
    pub bad_signature: u64,
    pub too_large: u64,
    pub not_json: u64,
    pub not_an_event: u64,
    pub not_forwarded: u64,
    pub unroutable: u64,
    pub unavailable: u64,
}

impl IntakeCountsSnapshot {
    /// `(label, count)` for every outcome, in a fixed order.
    pub fn by_label(&self) -> [(&'static str, u64); 9] {
        [
            ("accepted", self.accepted),
            ("unsigned", self.unsigned),
            ("bad_signature", self.bad_signature),
            ("too_large", self.too_large),
            ("not_json", self.not_json),
            ("not_an_event", self.not_an_event),
            ("not_forwarded", self.not_forwarded),
            ("unroutable", self.unroutable),
            ("unavailable", self.unavailable),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_label().iter().map(|(_, n)| n).sum()
    }
}

impl IntakeCounts {
    pub fn record(&self, outcome: &IntakeOutcome) {
        let counter = match outcome {
            IntakeOutcome::Accepted { .. } => &self.accepted,
            IntakeOutcome::Unsigned => &self.unsigned,
            IntakeOutcome::BadSignature => &self.bad_signature,
            IntakeOutcome::TooLarge => &self.too_large,
            IntakeOutcome::NotJson { .. } => &self.not_json,
            IntakeOutcome::NotAnEvent { .. } => &self.not_an_event,
            IntakeOutcome::NotForwarded { .. } => &self.not_forwarded,
            IntakeOutcome::Unroutable { .. } => &self.unroutable,
            IntakeOutcome::Unavailable { .. } => &self.unavailable,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IntakeCountsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        IntakeCountsSnapshot {
            accepted: get(&self.accepted),
            unsigned: get(&self.unsigned),
            bad_signature: get(&self.bad_signature),
            too_large: get(&self.too_large),
            not_json: get(&self.not_json),
            not_an_event: get(&self.not_an_event),
            not_forwarded: get(&self.not_forwarded),
            unroutable: get(&self.unroutable),
            unavailable: get(&self.unavailable),
        }
    }
}

/// The Prometheus text exposition of the counts and of readiness.
pub fn render_metrics(counts: &IntakeCountsSnapshot, broker_ready: bool) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP enricher_webhooks_total Webhook requests answered by ingest, by outcome.\n\
         # TYPE enricher_webhooks_total counter\n",
    );
    for (label, n) in counts.by_label() {
        let _ = writeln!(out, "enricher_webhooks_total{{outcome=\"{label}\"}} {n}");
    }
    let _ = write!(
        out,
        "# HELP enricher_intake_broker_ready Whether ingest can publish to RabbitMQ now (1) or answers 503 (0).\n\
         # TYPE enricher_intake_broker_ready gauge\n\
         enricher_intake_broker_ready {}\n",
        u8::from(broker_ready)
    );
    out
}

#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("listening on {addr} (INGEST_ADDR): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error(
        "shutdown deadline of {0:?} passed with requests in flight; they were dropped unanswered"
    )]
    ShutdownDeadline(Duration),
}

struct Context {
    settings: IntakeSettings,
    publisher: Publisher,
    counts: Arc<IntakeCounts>,
    /// Every webhook being decided; a shutdown waits for them.
    in_flight: TaskTracker,
}

/// A running intake server.
pub struct Intake {
    addr: SocketAddr,
    counts: Arc<IntakeCounts>,
    task: JoinHandle<Result<(), IntakeError>>,
}

impl Intake {
    /// Binds `settings.listen` (port 0 picks a free one) and serves in the
    /// background until `shutdown` is cancelled. Does not wait for the
    /// broker: until it is reachable, webhooks are answered 503 and
    /// `/readyz` is not ready.
    pub async fn start(
        settings: IntakeSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, IntakeError> {
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| IntakeError::Bind {
                addr: settings.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| IntakeError::Bind {
            addr: settings.listen,
            source,
        })?;
        if matches!(settings.signature, SignaturePolicy::Disabled) {
            tracing::warn!(
                "Webhook signatures are NOT checked (--insecure-no-signature): anyone who can reach {addr} can queue events."
            );
        }
        let (exchange, routing) = match &settings.publisher.destination {
            Destination::Queue(queue) => ("", queue.clone()),
            Destination::Exchange(exchange) => {
                (exchange.as_str(), format!("{ROUTING_KEY_PREFIX}.<type>"))
            }
        };
        tracing::info!(%addr, path = %settings.path, exchange, routing_key = %routing,
            forwarded_types = ?settings.forwarded_types, "Receiving webhooks.");
        let counts = Arc::new(IntakeCounts::default());
        let context = Arc::new(Context {
            publisher: Publisher::start(settings.publisher.clone()),
            settings,
            counts: Arc::clone(&counts),
            in_flight: TaskTracker::new(),
        });
        let task = tokio::spawn(serve(listener, context, shutdown));
        Ok(Self { addr, counts, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counts(&self) -> IntakeCountsSnapshot {
        self.counts.snapshot()
    }

    /// Waits until the server has shut down (after `shutdown` is
    /// cancelled) and the broker connection is closed.
    pub async fn stopped(self) -> Result<(), IntakeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => Err(IntakeError::Serve(std::io::Error::other(e))),
        }
    }
}

/// Serves until `shutdown`, then: stop accepting, let open requests finish,
/// wait for webhooks still being decided (their sender may have hung up),
/// close the broker link. All within `shutdown_timeout`.
async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> Result<(), IntakeError> {
    let app = router(Arc::clone(&ctx)).into_make_service_with_connect_info::<SocketAddr>();
    let stop = shutdown.clone();
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            stop.cancelled().await;
            tracing::info!("Shutting down: no new connections; finishing in-flight requests.");
        })
        .into_future();
    let drained = async {
        let served = serving.await.map_err(IntakeError::Serve);
        ctx.in_flight.close();
        ctx.in_flight.wait().await;
        served
    };
    let timeout = ctx.settings.shutdown_timeout;
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(timeout).await;
    };
    let result = tokio::select! {
        served = drained => served,
        () = deadline => Err(IntakeError::ShutdownDeadline(timeout)),
    };
    // Only now: a webhook still being decided needs the channel.
    ctx.publisher.close().await;
    let counts = ctx.counts.snapshot();
    tracing::info!(accepted = counts.accepted, answered = counts.total(), counts = ?counts,
        "Stopped receiving webhooks.");
    result
}

fn router(context: Arc<Context>) -> Router {
    let max_body = context.settings.max_body_bytes;
    Router::new()
        .route(
            &context.settings.path,
            post(receive_webhook).layer(DefaultBodyLimit::max(max_body)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readiness))
        .route("/metrics", get(metrics))
        .with_state(context)
}

async fn receive_webhook(
    State(ctx): State<Arc<Context>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    // Decided in a task of its own, so a sender that hangs up mid-publish
    // does not cancel it: the broker may already hold the event, and every
    // request is counted exactly once.
    let decided = ctx.in_flight.spawn({
        let ctx = Arc::clone(&ctx);
        async move {
            let outcome = decide(&ctx, &headers, body).await;
            ctx.counts.record(&outcome);
            log(&outcome, peer);
            outcome
        }
    });
    match decided.await {
        Ok(outcome) => respond(&outcome),
        Err(e) => {
            tracing::error!(error = %e, "Deciding a webhook panicked.");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Decides one request's outcome: size, then signature (nothing of an
/// unsigned body is read), then JSON and type, then publish. Only an event
/// the broker confirmed is `Accepted`.
async fn decide(
    ctx: &Context,
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
    if let SignaturePolicy::Verify(secret) = &ctx.settings.signature {
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
        && !ctx.settings.forwarded_types.contains(&t)
    {
        return IntakeOutcome::NotForwarded { event_type: t };
    }
    let routing_key = ctx.settings.routing_key(event_type);
    match ctx.publisher.publish(&routing_key, &body).await {
        Ok(()) => IntakeOutcome::Accepted { event_type },
        Err(PublishError::Unroutable { routing_key }) => IntakeOutcome::Unroutable { routing_key },
        Err(PublishError::Unavailable(reason)) => IntakeOutcome::Unavailable { reason },
    }
}

fn log(outcome: &IntakeOutcome, peer: SocketAddr) {
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

fn respond(outcome: &IntakeOutcome) -> Response {
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

async fn readiness(State(ctx): State<Arc<Context>>) -> Response {
    match ctx.publisher.state() {
        PublisherState::Ready => (StatusCode::OK, axum::Json(json!({"status": "ready"}))),
        PublisherState::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "not ready", "reason": reason})),
        ),
    }
    .into_response()
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    let ready = ctx.publisher.state() == PublisherState::Ready;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&ctx.counts.snapshot(), ready),
    )
        .into_response()
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

    #[test]
    fn metrics_list_every_outcome_with_help_and_type() {
        let counts = IntakeCounts::default();
        counts.record(&IntakeOutcome::Accepted {
            event_type: Some(30031),
        });
        counts.record(&IntakeOutcome::Accepted { event_type: None });
        counts.record(&IntakeOutcome::BadSignature);
        let text = render_metrics(&counts.snapshot(), true);
        assert!(text.contains("# TYPE enricher_webhooks_total counter\n"));
        assert!(text.contains("# HELP enricher_webhooks_total "));
        assert!(text.contains("enricher_webhooks_total{outcome=\"accepted\"} 2\n"));
        assert!(text.contains("enricher_webhooks_total{outcome=\"bad_signature\"} 1\n"));
        assert!(text.contains("enricher_webhooks_total{outcome=\"unavailable\"} 0\n"));
        assert!(text.contains("enricher_intake_broker_ready 1\n"));
        assert_eq!(counts.snapshot().total(), 3);
    }
}
