//! The worker: consumes the work queue and turns each delivery into rows, a
//! retry or a dead letter, exactly once, through the pipeline.
//!
//! Rooms: `supervise` (connect, reconnect with backoff, pause while the PBX
//! or the database is unavailable, probe until it recovers), `consume` (one
//! consuming session on one connection: parse each delivery at the edge,
//! hand message events to the pipeline, drain on the way out) and `settle`
//! (the one place a delivery is acked, dead-lettered, sent to retry or
//! returned, as `decide` says). It wires the adapters to the pipeline's
//! ports; it never decides what a failure means (`decide` does) and never
//! speaks AMQP, HTTP or SQL itself (`broker`, `pbx`, `store` do).

mod consume;
mod refresh;
mod settle;
mod supervise;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::{BrokerError, BrokerSettings};
use crate::defaults;
use crate::outcome::OutcomeCounts;
use crate::pbx::PbxClient;
use crate::pipeline::PipelineSettings;
use crate::status::WorkerStatus;
use crate::store::Store;

pub use refresh::RefreshSettings;

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
    /// Refreshing waiting sessions without events (`None`: off).
    pub refresh: Option<RefreshSettings>,
    /// Waits between reconnects to the broker.
    pub reconnect: Backoff,
    /// Waits between probes of a database that made the worker pause.
    pub database_probe: Backoff,
    /// Waits between probes of a PBX that refused the worker's
    /// configuration (its logins are spaced further by the token cache).
    pub pbx_probe: Backoff,
    /// Periodic reconciliation with the PBX's session list
    /// (`ENRICHER_RECONCILE_INTERVAL_S`); `None`: off.
    pub reconcile: Option<crate::reconcile::PeriodicReconcile>,
}

/// The flags' defaults (`crate::defaults`), and fixed waits for what has no
/// flag.
impl Default for WorkerSettings {
    fn default() -> Self {
        let unbounded = |initial, max| Backoff {
            initial,
            max,
            attempts: u32::MAX,
        };
        Self {
            pbx_id: defaults::PBX_ID.into(),
            handled_types: defaults::EVENT_TYPES.to_vec(),
            shutdown_timeout: Duration::from_secs(defaults::SHUTDOWN_TIMEOUT_SECS),
            retry: Backoff {
                initial: Duration::from_millis(defaults::RETRY_DELAY_MS),
                max: Duration::from_millis(defaults::RETRY_MAX_DELAY_MS),
                attempts: defaults::RETRY_ATTEMPTS,
            },
            store_retry: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
                attempts: 5,
            },
            pipeline: PipelineSettings {
                fetchers: usize::from(defaults::PBX_CONCURRENCY),
                fetch_batch: usize::from(defaults::QUERY_BATCH),
                fetch_gather: Duration::from_millis(defaults::QUERY_GATHER_MS),
                batch_max: defaults::BATCH_MAX as usize,
                batch_linger: Duration::from_millis(defaults::BATCH_LINGER_MS),
                writers: defaults::DB_WRITERS as usize,
            },
            refresh: RefreshSettings::every(Duration::from_millis(defaults::REFRESH_INTERVAL_MS)),
            reconnect: unbounded(Duration::from_millis(500), Duration::from_secs(30)),
            database_probe: unbounded(Duration::from_secs(1), Duration::from_secs(30)),
            pbx_probe: unbounded(Duration::from_secs(30), Duration::from_secs(1800)),
            reconcile: None,
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

pub struct Worker {
    broker: BrokerSettings,
    pbx: Arc<PbxClient>,
    store: Store,
    settings: WorkerSettings,
    counts: Arc<OutcomeCounts>,
    status: Arc<WorkerStatus>,
}

impl Worker {
    pub fn new(
        broker: BrokerSettings,
        pbx: Arc<PbxClient>,
        store: Store,
        settings: WorkerSettings,
        counts: Arc<OutcomeCounts>,
    ) -> Self {
        Self {
            broker,
            pbx,
            store,
            settings,
            counts,
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
        // Periodic reconciliation needs no broker: it runs beside the
        // consuming sessions, and stops at its next step on shutdown.
        // Its writes set refresh due times by this worker's interval, as
        // the consumer's do.
        let reconciling = self.settings.reconcile.clone().map(|mut periodic| {
            periodic.settings.refresh_interval = self.settings.refresh.map(|r| r.interval);
            tokio::spawn(crate::reconcile::run_periodically(
                Arc::clone(&self.pbx),
                self.store.clone(),
                self.settings.pbx_id.clone(),
                periodic,
                shutdown.clone(),
            ))
        });
        let result = self.supervise(&shutdown).await;
        if let Some(reconciling) = reconciling {
            let deadline = self.settings.shutdown_timeout;
            if tokio::time::timeout(deadline, reconciling).await.is_err() {
                tracing::warn!(
                    "Reconciliation did not stop within the shutdown deadline; abandoned."
                );
            }
        }
        self.status.set_consuming(false);
        self.pbx.revoke_token().await;
        self.store.close().await;
        result
    }
}
