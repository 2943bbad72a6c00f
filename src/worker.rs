//! The worker: supervises the broker connection (connect, consume, reconnect
//! with backoff, pause while the PBX or the database is unavailable), decides
//! one `Outcome` per delivery and settles it in exactly one place. Owns
//! graceful shutdown: stop consuming, finish in-flight work within the
//! deadline, revoke the PBX token, close everything.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::broker::{Broker, BrokerError, BrokerSettings, Delivery};
use crate::enricher::Enricher;
use crate::event::{self, Event};
use crate::metrics;
use crate::outcome::{Outcome, OutcomeCounts, Pause};
use crate::pbx::PbxError;
use crate::pipeline::{Pending, Pipeline, PipelineSettings, Settle};
use crate::status::WorkerStatus;
use crate::store::Store;

/// How the worker treats deliveries and failures.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// The `pbx` column value.
    pub pbx_id: String,
    /// Event types that are enriched; other types are skipped.
    pub handled_types: Vec<i64>,
    /// How long a shutdown may take to finish in-flight work.
    pub shutdown_timeout: Duration,
    /// Durable retries through the retry queue: `attempts` in all (the first
    /// included), waiting `delay(n)` before attempt `n + 1`.
    pub retry: Backoff,
    /// In-process retries of a database write (the PBX is not asked again).
    pub store_retry: Backoff,
    /// Coalescing, fetch concurrency and write batching.
    pub pipeline: PipelineSettings,
    /// Waits between reconnects to the broker.
    pub reconnect: Backoff,
    /// Waits between probes of a database that made the worker pause.
    pub database_probe: Backoff,
    /// Waits between probes of a PBX that refused the worker's
    /// configuration (its logins are spaced further by the token cache).
    pub pbx_probe: Backoff,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        let unbounded = |initial, max| Backoff {
            initial,
            max,
            attempts: u32::MAX,
        };
        Self {
            pbx_id: "default".into(),
            handled_types: vec![event::NEW_MESSAGE_EVENT],
            shutdown_timeout: Duration::from_secs(20),
            // 5 s doubling to 10 min: 12 attempts span about an hour.
            retry: Backoff {
                initial: Duration::from_secs(5),
                max: Duration::from_secs(600),
                attempts: 12,
            },
            store_retry: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
                attempts: 5,
            },
            pipeline: PipelineSettings {
                fetchers: 16,
                batch_max: 200,
                batch_linger: Duration::from_millis(5),
                writers: 4,
            },
            reconnect: unbounded(Duration::from_millis(500), Duration::from_secs(30)),
            database_probe: unbounded(Duration::from_secs(1), Duration::from_secs(30)),
            pbx_probe: unbounded(Duration::from_secs(30), Duration::from_secs(1800)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the broker refused the worker's topology: {0}")]
    Topology(BrokerError),
    #[error("shutdown deadline of {0:?} passed with work in flight; it will be redelivered")]
    ShutdownDeadline(Duration),
}

/// What the worker shares with every delivery it processes.
struct Shared {
    enricher: Enricher,
    settings: WorkerSettings,
    counts: Arc<OutcomeCounts>,
}

pub struct Worker {
    broker: BrokerSettings,
    shared: Arc<Shared>,
    status: Arc<WorkerStatus>,
}

/// Why a consuming session on one connection ended.
enum SessionEnd {
    Shutdown { drained: bool },
    BrokerLost(String),
    Paused(Pause),
}

impl Worker {
    pub fn new(
        broker: BrokerSettings,
        enricher: Enricher,
        settings: WorkerSettings,
        counts: Arc<OutcomeCounts>,
    ) -> Self {
        Self {
            broker,
            shared: Arc::new(Shared {
                enricher,
                settings,
                counts,
            }),
            status: Arc::new(WorkerStatus::default()),
        }
    }

    pub fn status(&self) -> Arc<WorkerStatus> {
        Arc::clone(&self.status)
    }

    /// Consumes until `shutdown` is cancelled, reconnecting and pausing as
    /// needed; then stops consuming, waits up to the shutdown deadline for
    /// in-flight work, revokes the PBX token and closes the pool. Fails only
    /// on a topology conflict or a missed shutdown deadline.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let result = self.supervise(&shutdown).await;
        self.status.set_consuming(false);
        self.shared.enricher.pbx().revoke_token().await;
        self.shared.enricher.store().close().await;
        result
    }

    async fn supervise(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let settings = &self.shared.settings;
        let mut failures = 0;
        loop {
            let connected = tokio::select! {
                connected = Broker::connect(self.broker.clone()) => connected,
                () = shutdown.cancelled() => return Ok(()),
            };
            let broker = match connected {
                Ok(broker) => Arc::new(broker),
                Err(e) if e.is_topology_conflict() => {
                    tracing::error!(error = %e, "RabbitMQ refused the queue declarations; fix the queues or AMQP_QUEUE.");
                    return Err(WorkerError::Topology(e));
                }
                Err(e) => {
                    let wait = settings.reconnect.delay(failures);
                    failures = failures.saturating_add(1);
                    self.status
                        .set_problem(Some(format!("RabbitMQ unavailable: {e}")));
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "Cannot reach RabbitMQ; retrying.");
                    if !sleep_unless(wait, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let end = self.consume(&broker, shutdown).await;
            broker.close().await;
            match end {
                SessionEnd::Shutdown { drained: true } => return Ok(()),
                SessionEnd::Shutdown { drained: false } => {
                    return Err(WorkerError::ShutdownDeadline(settings.shutdown_timeout));
                }
                SessionEnd::BrokerLost(why) => {
                    metrics::get().broker_connection_lost();
                    self.status
                        .set_problem(Some(format!("RabbitMQ connection lost: {why}")));
                    // A connection that dies at once must not be retried in a
                    // tight loop; one that lived a while starts afresh.
                    failures = if started.elapsed() > Duration::from_secs(30) {
                        0
                    } else {
                        failures + 1
                    };
                    let wait = settings.reconnect.delay(failures);
                    tracing::warn!(error = %why, wait_ms = wait.as_millis() as u64,
                        "Lost the RabbitMQ connection; unacked deliveries will be redelivered. Reconnecting.");
                    if !sleep_unless(wait, shutdown).await {
                        return Ok(());
                    }
                }
                SessionEnd::Paused(pause) => {
                    failures = 0;
                    if !self.wait_out(&pause, shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Consumes on one connection until shutdown, a pause or the loss of
    /// the connection, then stops consuming and settles in-flight work.
    async fn consume(&self, broker: &Arc<Broker>, shutdown: &CancellationToken) -> SessionEnd {
        let tag = format!(
            "session-enricher-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut deliveries = match broker.consume(&tag).await {
            Ok(deliveries) => deliveries,
            Err(e) => return SessionEnd::BrokerLost(e.to_string()),
        };
        self.status.set_consuming(true);
        self.status.set_problem(None);
        tracing::info!(consumer = %tag, "Consuming.");
        let settings = &self.shared.settings;
        let (pauses, mut paused) = mpsc::unbounded_channel::<Pause>();
        let pipeline = Pipeline::start(
            settings.pipeline,
            settings.store_retry,
            Arc::clone(self.shared.enricher.pbx()),
            self.shared.enricher.store().clone(),
            settings.pbx_id.clone(),
            self.settle_step(broker),
            pauses,
        );
        let end = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break SessionEnd::Shutdown { drained: true },
                Some(pause) = paused.recv() => break SessionEnd::Paused(pause),
                next = deliveries.next() => match next {
                    Some(Ok(first)) => {
                        // Take whatever else has arrived already (no waiting),
                        // so events that came together are handed over together.
                        let mut arrived = vec![first];
                        let mut lost = None;
                        while arrived.len() < 512 && lost.is_none() {
                            match deliveries.next().now_or_never() {
                                Some(Some(Ok(more))) => arrived.push(more),
                                Some(Some(Err(e))) => lost = Some(e.to_string()),
                                Some(None) => lost = Some("the broker cancelled the consumer".to_owned()),
                                None => break,
                            }
                        }
                        let mut messages = Vec::with_capacity(arrived.len());
                        for delivery in arrived {
                            match event::parse(&delivery.body, &settings.handled_types) {
                                Ok(Event::Message(message)) => messages.push((delivery, message)),
                                Ok(Event::Ignored { event_type }) => {
                                    pipeline.settle_directly(delivery, Outcome::Skipped { event_type });
                                }
                                Err(malformed) => {
                                    let reason = malformed.to_string();
                                    pipeline.settle_directly(delivery, Outcome::DeadLetter { reason });
                                }
                            }
                        }
                        pipeline.submit(messages);
                        if let Some(why) = lost {
                            break SessionEnd::BrokerLost(why);
                        }
                    }
                    Some(Err(e)) => break SessionEnd::BrokerLost(e.to_string()),
                    None => break SessionEnd::BrokerLost("the broker cancelled the consumer".into()),
                },
            }
        };
        self.status.set_consuming(false);
        if let Err(e) = broker.cancel(&tag).await {
            tracing::debug!(error = %e, "Consumer already gone.");
        }
        drop(deliveries);
        tracing::info!(
            in_flight = pipeline.unsettled(),
            "Stopped consuming; settling in-flight work."
        );
        let drained = tokio::time::timeout(settings.shutdown_timeout, pipeline.drain())
            .await
            .is_ok();
        if !drained {
            // Stopping a fetcher or the writer mid-transaction would return
            // its connection to the pool inside the transaction (sqlx 0.9):
            // the worker only does so on its way out, and the pool is closed
            // right after.
            tracing::warn!(
                unsettled = pipeline.unsettled(),
                "In-flight work did not finish in time; it will be redelivered."
            );
        }
        pipeline.stop();
        match end {
            SessionEnd::Shutdown { .. } => SessionEnd::Shutdown { drained },
            other => other,
        }
    }

    /// The step that settles each delivery the pipeline finishes: in the
    /// event's span, through the one `Settler`, counted.
    fn settle_step(&self, broker: &Arc<Broker>) -> Settle {
        let broker = Arc::clone(broker);
        let shared = Arc::clone(&self.shared);
        Arc::new(move |pending: Pending, outcome: Outcome| {
            let broker = Arc::clone(&broker);
            let shared = Arc::clone(&shared);
            async move {
                let span = match &pending.event {
                    Some(event) => tracing::info_span!("event", pbx = %shared.settings.pbx_id,
                        session_id = event.session_id.get(), msg_id = event.msg_id.as_deref(),
                        attempts = pending.delivery.attempts),
                    None => tracing::info_span!("event", pbx = %shared.settings.pbx_id),
                };
                let settler = Settler {
                    broker: &broker,
                    store: shared.enricher.store(),
                    retry: &shared.settings.retry,
                };
                let settled = settler
                    .settle(&pending.delivery, outcome)
                    .instrument(span)
                    .await;
                // Publish→commit, for events whose answer was committed and
                // that carry their publish time.
                let committed = matches!(
                    settled,
                    Outcome::Enriched | Outcome::Unchanged | Outcome::NotFound
                );
                let lag_ms =
                    pending
                        .delivery
                        .published_at_ms
                        .filter(|_| committed)
                        .map(|published_at| {
                            let lag = chrono::Utc::now()
                                .timestamp_millis()
                                .saturating_sub(published_at);
                            u64::try_from(lag).unwrap_or(0)
                        });
                if let Some(lag_ms) = lag_ms {
                    shared.counts.lag.record(lag_ms);
                }
                shared.counts.record(&settled);
                metrics::get().event_settled(&settled, lag_ms);
            }
            .boxed()
        })
    }

    /// Waits until the dependency that caused `pause` recovers, probing it
    /// with backoff, without consuming. `false` if shutdown came first.
    async fn wait_out(&self, pause: &Pause, shutdown: &CancellationToken) -> bool {
        let settings = &self.shared.settings;
        let (probe, what) = match pause {
            Pause::Pbx { .. } => (
                settings.pbx_probe,
                "the PBX refuses the worker's configuration",
            ),
            Pause::Database { .. } => (settings.database_probe, "the database is unavailable"),
        };
        self.status
            .set_problem(Some(format!("paused: {}", pause.reason())));
        tracing::error!(
            reason = pause.reason(),
            "Paused: {what}; deliveries are back in the queue and nothing is dead-lettered."
        );
        let mut attempt = 0;
        loop {
            if !sleep_unless(probe.delay(attempt), shutdown).await {
                return false;
            }
            attempt = attempt.saturating_add(1);
            let recovered = match pause {
                Pause::Database { .. } => self.shared.enricher.store().ping().await.is_ok(),
                Pause::Pbx { session_id, .. } => !matches!(
                    self.shared.enricher.pbx().fetch_session(*session_id).await,
                    Err(PbxError::Configuration { .. })
                ),
            };
            if recovered {
                tracing::info!("Recovered: {what} no more; consuming again.");
                return true;
            }
            if matches!(pause, Pause::Pbx { .. })
                && self.shared.enricher.pbx().logins_halted().await
            {
                self.status.set_problem(Some(format!(
                    "paused: {}; logins stopped to keep this IP from being blocked: fix the credentials (or lift the block), then restart",
                    pause.reason()
                )));
            }
            tracing::debug!(attempt, "Still paused: {what}.");
        }
    }
}

/// Sleeps `wait` unless shutdown comes first; `false` if it did.
async fn sleep_unless(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = shutdown.cancelled() => false,
    }
}

/// What settling a delivery needs: the broker for acks and publishes, the
/// store for the record of dead letters already published.
struct Settler<'a> {
    broker: &'a Broker,
    store: &'a Store,
    retry: &'a Backoff,
}

impl Settler<'_> {
    /// Carries out an outcome: the only place deliveries are acked,
    /// dead-lettered, sent to retry or returned. Nothing is acked before what
    /// it stands for is committed (rows) or confirmed by the broker (a dead
    /// letter, a retry). Returns the outcome that took effect.
    async fn settle(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        let settled = match outcome {
            Outcome::Enriched
            | Outcome::Unchanged
            | Outcome::Skipped { .. }
            | Outcome::NotFound => {
                ack(delivery).await;
                outcome
            }
            Outcome::DeadLetter { reason } => {
                self.dead_letter(delivery, reason, delivery.attempts.max(1))
                    .await
            }
            Outcome::Retry { reason } => self.retry_later(delivery, reason).await,
            Outcome::Hold(pause) => {
                requeue(delivery, pause.reason().to_owned()).await;
                Outcome::Hold(pause)
            }
            Outcome::Crashed { panic } => {
                tracing::error!(panic = %panic, "Processing the event panicked; returning it (the queue's delivery limit bounds repeats).");
                requeue(delivery, panic.clone()).await;
                Outcome::Crashed { panic }
            }
            Outcome::Requeued { reason } => requeue(delivery, reason).await,
        };
        tracing::debug!(outcome = ?settled, "Delivery settled.");
        settled
    }

    async fn retry_later(&self, delivery: &Delivery, reason: String) -> Outcome {
        let attempts = delivery.attempts.saturating_add(1);
        if attempts >= self.retry.attempts {
            let reason = format!("gave up after {attempts} attempts: {reason}");
            return self.dead_letter(delivery, reason, attempts).await;
        }
        let delay = self.retry.delay(attempts - 1);
        match self
            .broker
            .retry_later(delivery, attempts, delay, &reason)
            .await
        {
            Ok(()) => {
                tracing::warn!(reason = %reason, attempts, retry_in_ms = delay.as_millis() as u64, "Event failed for now; retrying later.");
                ack(delivery).await;
                Outcome::Retry { reason }
            }
            Err(e) => requeue(delivery, format!("the retry queue refused it: {e}")).await,
        }
    }

    /// Publishes the dead letter, records it, then acks. A redelivery of an
    /// event already dead-lettered (its ack was lost) is acked, not
    /// published again. One window remains: a publish the broker took but
    /// whose confirm was lost is published again on redelivery; the
    /// `x-enricher-body-sha256` header lets readers of `.dead` drop it.
    async fn dead_letter(&self, delivery: &Delivery, reason: String, attempts: u32) -> Outcome {
        let digest = Sha256::digest(&delivery.body);
        if delivery.redelivered
            && self
                .store
                .dead_letter_recorded(&digest)
                .await
                .unwrap_or(false)
        {
            tracing::info!(reason = %reason, "Redelivery of an event already dead-lettered; acking it.");
            ack(delivery).await;
            return Outcome::DeadLetter { reason };
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        match self
            .broker
            .dead_letter(delivery, &reason, attempts, &hex)
            .await
        {
            Ok(()) => {
                tracing::warn!(reason = %reason, "Event dead-lettered.");
                if let Err(e) = self.store.record_dead_letter(&digest, &reason).await {
                    tracing::warn!(error = %e, "Could not record the dead letter; a lost ack would duplicate it.");
                }
                ack(delivery).await;
                Outcome::DeadLetter { reason }
            }
            Err(e) => requeue(delivery, format!("the dead-letter queue refused it: {e}")).await,
        }
    }
}

async fn ack(delivery: &Delivery) {
    match delivery.ack().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "Ack dropped: its channel is gone; the broker will redeliver (writes are idempotent)."
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Ack failed; the broker will redeliver (writes are idempotent).")
        }
    }
}

/// Returns the delivery to the queue (or, if its channel is gone, lets the
/// broker do so).
async fn requeue(delivery: &Delivery, reason: String) -> Outcome {
    if let Err(e) = delivery.requeue().await {
        tracing::warn!(error = %e, "Requeue failed; the broker will redeliver.");
    }
    Outcome::Requeued { reason }
}
