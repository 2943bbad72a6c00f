//! The consume loop: takes deliveries from the broker, decides one `Outcome`
//! for each (parse, enrich), and settles it in exactly one place. Owns
//! graceful shutdown: stop consuming, finish in-flight work within the
//! deadline, revoke the PBX token, close everything.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::broker::{Broker, BrokerError, Delivery};
use crate::enricher::{EnrichError, Enricher, Enrichment};
use crate::event::{self, Event};
use crate::metrics;
use crate::outcome::{Outcome, OutcomeCounts};
use crate::pbx::PbxError;
use crate::readiness::Readiness;
use crate::store::StoreError;

/// How the worker treats deliveries.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// The `pbx` column value.
    pub pbx_id: String,
    /// Event types that are enriched; other types are skipped.
    pub handled_types: Vec<i64>,
    /// How long a shutdown may take to finish in-flight work.
    pub shutdown_timeout: Duration,
    /// Wait before trying again after a PBX configuration/auth failure.
    pub configuration_retry: Duration,
    /// Retries of a database write that failed because the database is
    /// unavailable.
    pub store_retry: Backoff,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    #[error("shutdown deadline of {0:?} passed with work in flight; it will be redelivered")]
    ShutdownDeadline(Duration),
}

struct Context {
    broker: Broker,
    enricher: Enricher,
    settings: WorkerSettings,
    counts: Arc<OutcomeCounts>,
    readiness: Arc<Readiness>,
}

pub struct Worker {
    context: Arc<Context>,
}

impl Worker {
    pub fn new(
        broker: Broker,
        enricher: Enricher,
        settings: WorkerSettings,
        counts: Arc<OutcomeCounts>,
        readiness: Arc<Readiness>,
    ) -> Self {
        Self {
            context: Arc::new(Context {
                broker,
                enricher,
                settings,
                counts,
                readiness,
            }),
        }
    }

    /// Consumes until `shutdown` is cancelled (then returns `Ok` once
    /// in-flight work is settled) or the consumer fails. Either way it stops
    /// consuming, waits up to the shutdown deadline for in-flight work,
    /// revokes the PBX token and closes the broker and the pool.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let ctx = self.context;
        let tag = format!(
            "session-enricher-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let result = consume(&ctx, &tag, &shutdown).await;
        ctx.readiness.set_consuming(false);
        let (result, mut in_flight) = match result {
            Ok(tasks) => (Ok(()), tasks),
            Err((e, tasks)) => (Err(e), tasks),
        };
        if let Err(e) = ctx.broker.cancel(&tag).await {
            tracing::debug!(error = %e, "Consumer already gone.");
        }
        tracing::info!(
            in_flight = in_flight.len(),
            "Stopped consuming; finishing in-flight work."
        );
        let deadline = ctx.settings.shutdown_timeout;
        let drained = tokio::time::timeout(deadline, async {
            while let Some(joined) = in_flight.join_next().await {
                report_panic(joined);
            }
        })
        .await
        .is_ok();
        if !drained {
            // Cancelling a task mid-transaction would return its connection
            // to the pool inside the transaction (sqlx 0.9): the pool is
            // closed right after, so none of them is reused.
            in_flight.abort_all();
        }
        ctx.enricher.pbx().revoke_token().await;
        ctx.broker.close().await;
        ctx.enricher.store().close().await;
        match result {
            Ok(()) if !drained => Err(WorkerError::ShutdownDeadline(deadline)),
            other => other,
        }
    }
}

type InFlight = JoinSet<()>;

async fn consume(
    ctx: &Arc<Context>,
    tag: &str,
    shutdown: &CancellationToken,
) -> Result<InFlight, (WorkerError, InFlight)> {
    let mut in_flight = JoinSet::new();
    let mut deliveries = match ctx.broker.consume(tag).await {
        Ok(d) => d,
        Err(e) => return Err((e.into(), in_flight)),
    };
    tracing::info!(queue = tag, "Consuming.");
    ctx.readiness.set_consuming(true);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok(in_flight),
            Some(joined) = in_flight.join_next(), if !in_flight.is_empty() => report_panic(joined),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let ctx = Arc::clone(ctx);
                    let shutdown = shutdown.clone();
                    in_flight.spawn(async move { process(&ctx, delivery, &shutdown).await });
                }
                Some(Err(e)) => return Err((e.into(), in_flight)),
                None => return Err((WorkerError::ConsumerEnded, in_flight)),
            },
        }
    }
}

fn report_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined
        && e.is_panic()
    {
        tracing::error!(error = %e, "Processing a delivery panicked; it stays unacked and will be redelivered.");
    }
}

async fn process(ctx: &Context, delivery: Delivery, shutdown: &CancellationToken) {
    let _in_flight = metrics::get().event_in_flight();
    let outcome = decide(ctx, &delivery, shutdown).await;
    let settled = settle(&ctx.broker, &delivery, outcome).await;
    ctx.counts.record(&settled);
    metrics::get().event_settled(&settled, delivery.published_at);
}

/// Decides what to do with one delivery: parse it, then enrich its session.
/// Transient failures have been retried in-process by the time this returns
/// `Retry`; configuration failures are waited out here (the delivery stays
/// unacked) until they clear or shutdown begins.
async fn decide(ctx: &Context, delivery: &Delivery, shutdown: &CancellationToken) -> Outcome {
    let message = match event::parse(&delivery.body, &ctx.settings.handled_types) {
        Err(malformed) => {
            return Outcome::DeadLetter {
                reason: malformed.to_string(),
            };
        }
        Ok(Event::Ignored { event_type }) => return Outcome::Skipped { event_type },
        Ok(Event::Message(message)) => message,
    };
    let span = tracing::info_span!("event", pbx = %ctx.settings.pbx_id, session_id = message.session_id.get(),
        msg_id = message.msg_id.as_deref());
    async {
        loop {
            let why = match ctx.enricher.enrich(message.session_id).await {
                Ok(Enrichment::Written) => return Outcome::Enriched,
                Ok(Enrichment::Stale) => return Outcome::Unchanged,
                Ok(Enrichment::Missing { marked }) => {
                    tracing::info!(marked_missing = marked, "Session not found on the PBX.");
                    return Outcome::NotFound;
                }
                Err(EnrichError::Pbx(PbxError::Rejected(why))) => {
                    return Outcome::DeadLetter { reason: why };
                }
                Err(EnrichError::Store(StoreError::Refused(why))) => {
                    return Outcome::DeadLetter { reason: why };
                }
                Err(
                    e @ (EnrichError::Pbx(PbxError::Transient(_))
                    | EnrichError::Store(StoreError::Unavailable(_))),
                ) => {
                    return Outcome::Retry {
                        reason: e.to_string(),
                    };
                }
                Err(EnrichError::Pbx(PbxError::NotFound)) => return Outcome::NotFound,
                Err(e @ EnrichError::Pbx(PbxError::Configuration { .. })) => e,
            };
            tracing::error!(error = %why, retry_in_s = ctx.settings.configuration_retry.as_secs(),
                "The PBX refused the worker's configuration; holding the event.");
            tokio::select! {
                () = tokio::time::sleep(ctx.settings.configuration_retry) => {}
                () = shutdown.cancelled() => return Outcome::Abandon,
            }
        }
    }
    .instrument(span)
    .await
}

/// Carries out an outcome; the only place deliveries are acked, dead-lettered
/// or requeued. Returns the outcome that actually took effect: a dead letter
/// that could not be published is requeued instead, never acked.
async fn settle(broker: &Broker, delivery: &Delivery, outcome: Outcome) -> Outcome {
    let settled = match &outcome {
        Outcome::Enriched | Outcome::Unchanged | Outcome::Skipped { .. } | Outcome::NotFound => {
            ack(delivery).await;
            outcome
        }
        Outcome::DeadLetter { reason } => match broker.dead_letter(delivery, reason).await {
            Ok(()) => {
                tracing::warn!(reason = %reason, "Event dead-lettered.");
                ack(delivery).await;
                outcome
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = %reason, "Could not dead-letter the event; requeueing it.");
                requeue(delivery).await;
                Outcome::Retry {
                    reason: e.to_string(),
                }
            }
        },
        Outcome::Retry { reason } => {
            tracing::warn!(reason = %reason, "Event failed for now; requeueing it.");
            requeue(delivery).await;
            outcome
        }
        Outcome::Abandon => outcome,
    };
    tracing::debug!(outcome = ?settled, "Delivery settled.");
    settled
}

async fn ack(delivery: &Delivery) {
    match delivery.ack().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "Ack dropped: the channel was recovered; the broker will redeliver (writes are idempotent)."
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Ack failed; the broker will redeliver (writes are idempotent).")
        }
    }
}

async fn requeue(delivery: &Delivery) {
    if let Err(e) = delivery.requeue().await {
        tracing::warn!(error = %e, "Requeue failed; the broker will redeliver.");
    }
}
