//! The intake's HTTP server: binding the listener, the axum router (the
//! webhook route, `/healthz`, `/readyz`, `/metrics`), one task per webhook
//! so each is counted exactly once, and the graceful shutdown. What a
//! request becomes is `decide`'s business, never this room's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::counts::{IntakeCounts, IntakeCountsSnapshot};
use super::decide::{decide, log, respond};
use super::settings::{IntakeSettings, ROUTING_KEY_PREFIX, SignaturePolicy};
use crate::broker::{Destination, Publisher, PublisherState};
use crate::{health, metrics};

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

    /// This intake's own counts (the `/metrics` series are process-wide).
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
        .route("/metrics", get(metrics_text))
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
            let outcome = decide(&ctx.settings, &ctx.publisher, &headers, body).await;
            ctx.counts.record(&outcome);
            metrics::get().webhook_answered(outcome.kind());
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

/// The process's metrics, with the broker's readiness read at scrape time.
async fn metrics_text(State(ctx): State<Arc<Context>>) -> Response {
    metrics::get().intake_broker_ready(ctx.publisher.state() == PublisherState::Ready);
    health::metrics_response(metrics::Process::Intake)
}
