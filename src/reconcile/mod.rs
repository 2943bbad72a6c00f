//! Reconciliation: heals what a webhook outage lost. Pages through the
//! PBX's open sessions (`message_session/list`), fetches each one's full
//! Session_Info through the batched fetcher (`SessionSource::fetch`:
//! `query`, and `get` for what it leaves out; list entries carry no
//! participants), and upserts them through the worker's own write path
//! (`StoreSink`: the stale guard, retries while the database is
//! unavailable), then says what it added or changed (`report`). After a
//! complete listing, sessions stored as waiting for agents that the PBX no
//! longer lists as open are fetched again too, so a pick-up or close the
//! worker never heard of is healed as well.
//!
//! One run at a time per PBX, across replicas: a run holds the PBX's
//! Postgres advisory lock, and records its start, so the worker's periodic
//! runs (`periodic`) happen once per interval between replicas.
//! `session-enricher reconcile` (`app`) runs one now.
//!
//! Never cancels a write: a stop is looked at between steps only.

mod periodic;
mod report;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::defaults;
use crate::metrics::{self, ReconcileChange, ReconcileResult};
use crate::pbx::{PbxClient, PbxError};
use crate::pipeline::{AnswerSink, SessionSource};
use crate::processing::{Answer, BatchResult};
use crate::session::SessionId;
use crate::store::{ReconcileLock, Store, StoreError, StoreSink};

pub use periodic::{PeriodicReconcile, PeriodicRuns, run_periodically};
pub use report::ReconcileReport;

/// Pages one run reads at most: a million sessions at 100 a page.
pub const MAX_PAGES: u32 = 10_000;

/// How a run lists, fetches and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileSettings {
    /// Sessions asked for per `message_session/list` page.
    pub page_size: usize,
    /// Pages read at most per run.
    pub max_pages: u32,
    /// Sessions fetched (in `query` batches, within the PBX client's cap)
    /// and then written in one step.
    pub chunk: usize,
    /// Retries of a write while the database is unavailable (as the
    /// worker's).
    pub store_retry: Backoff,
    /// The workers' refresh interval: a session written with pending agents
    /// is due for a refresh this long after (`None`: refreshing is off, and
    /// the write clears due times).
    pub refresh_interval: Option<Duration>,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            page_size: usize::from(defaults::RECONCILE_PAGE_SIZE),
            max_pages: MAX_PAGES,
            chunk: defaults::BATCH_MAX as usize,
            refresh_interval: Some(Duration::from_millis(defaults::REFRESH_INTERVAL_MS)),
            store_retry: Backoff {
                initial: Duration::from_millis(200),
                max: Duration::from_secs(5),
                attempts: 5,
            },
        }
    }
}

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The PBX did not list its sessions (after the client's retries).
    #[error("listing the PBX's open sessions failed: {0}")]
    Listing(#[source] PbxError),
    /// The database could not be read, or the lock taken.
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// What asking for a run came to.
#[derive(Debug)]
pub enum Run {
    /// It ran (completely or not: see the report).
    Done(ReconcileReport),
    /// Another replica (or `reconcile` command) holds this PBX's lock.
    Busy,
    /// A run of this PBX started within the interval (periodic runs only).
    NotDue,
}

/// Reconciles one PBX's open sessions with the stored rows.
pub struct Reconciler {
    pbx: Arc<PbxClient>,
    store: Store,
    pbx_id: String,
    settings: ReconcileSettings,
}

impl Reconciler {
    pub fn new(
        pbx: Arc<PbxClient>,
        store: Store,
        pbx_id: String,
        settings: ReconcileSettings,
    ) -> Self {
        Self {
            pbx,
            store,
            pbx_id,
            settings,
        }
    }

    /// Runs now, under the PBX's lock, whenever the last run was.
    pub async fn run_now(&self, stop: &CancellationToken) -> Result<Run, ReconcileError> {
        self.run_locked(None, stop).await
    }

    /// Runs under the PBX's lock if no run started within `interval`.
    pub async fn run_if_due(
        &self,
        interval: Duration,
        stop: &CancellationToken,
    ) -> Result<Run, ReconcileError> {
        self.run_locked(Some(interval), stop).await
    }

    /// Takes the lock (or says who has it), checks the interval, records
    /// the run, runs it, records and counts how it ended, and releases the
    /// lock whatever happened.
    async fn run_locked(
        &self,
        interval: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Run, ReconcileError> {
        let lock = match self.store.try_reconcile_lock(&self.pbx_id).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                metrics::get().reconcile_run(ReconcileResult::Skipped);
                return Ok(Run::Busy);
            }
            Err(e) => {
                metrics::get().reconcile_run(ReconcileResult::Failed);
                return Err(e.into());
            }
        };
        let run = self.run_holding(lock, interval, stop).await;
        let result = match &run {
            Ok(Run::Done(report)) => report.result(),
            Ok(Run::Busy | Run::NotDue) => ReconcileResult::Skipped,
            Err(_) => ReconcileResult::Failed,
        };
        metrics::get().reconcile_run(result);
        if let Ok(Run::Done(report)) = &run {
            report.count();
        }
        run
    }

    async fn run_holding(
        &self,
        mut lock: ReconcileLock,
        interval: Option<Duration>,
        stop: &CancellationToken,
    ) -> Result<Run, ReconcileError> {
        let started = async {
            if let Some(interval) = interval
                && !lock.is_due(&self.pbx_id, interval).await?
            {
                return Ok(false);
            }
            lock.record_start(&self.pbx_id).await?;
            Ok::<_, StoreError>(true)
        }
        .await;
        let run = match started {
            Ok(false) => Ok(Run::NotDue),
            Ok(true) => {
                let run = self.run_once(stop).await;
                let result = match &run {
                    Ok(report) => report.result(),
                    Err(_) => ReconcileResult::Failed,
                };
                if let Err(e) = lock.record_end(&self.pbx_id, result.as_str()).await {
                    tracing::warn!(error = %e, "Could not record the end of the reconciliation run.");
                }
                run.map(Run::Done)
            }
            Err(e) => Err(e.into()),
        };
        lock.release().await;
        run
    }

    /// One run without the lock: list, then fetch and write each chunk.
    /// Fails only if the listing fails or the database cannot be read; a
    /// session that cannot be fetched or written is counted as failed.
    pub async fn run_once(
        &self,
        stop: &CancellationToken,
    ) -> Result<ReconcileReport, ReconcileError> {
        let listing = self
            .pbx
            .list_open_sessions(self.settings.page_size, self.settings.max_pages, stop)
            .await
            .map_err(ReconcileError::Listing)?;
        let mut report = ReconcileReport::new(&listing);
        let mut ids = listing.sessions;
        if listing.end.is_complete() {
            let listed: HashSet<SessionId> = ids.iter().copied().collect();
            let unlisted: Vec<SessionId> = self
                .store
                .waiting_sessions(&self.pbx_id)
                .await?
                .into_iter()
                .filter_map(SessionId::new)
                .filter(|id| !listed.contains(id))
                .collect();
            report.rechecked = unlisted.len();
            ids.extend(unlisted);
        }
        let sink = StoreSink::new(
            self.store.clone(),
            self.pbx_id.clone(),
            self.settings.store_retry,
        )
        .with_refresh_interval(self.settings.refresh_interval);
        for chunk in ids.chunks(self.settings.chunk.max(1)) {
            if stop.is_cancelled() {
                report.stopped = true;
                break;
            }
            self.reconcile_chunk(chunk, &sink, &mut report).await?;
        }
        Ok(report)
    }

    /// Fetches and writes one chunk, noting in `report` what each session's
    /// write did compared with the row stored before.
    async fn reconcile_chunk(
        &self,
        chunk: &[SessionId],
        sink: &StoreSink,
        report: &mut ReconcileReport,
    ) -> Result<(), ReconcileError> {
        let raw_ids: Vec<i64> = chunk.iter().map(|id| id.get()).collect();
        let before = self.store.stored_sessions(&self.pbx_id, &raw_ids).await?;
        let mut answers = Vec::with_capacity(chunk.len());
        for (id, fetched) in self.pbx.fetch(chunk).await {
            match fetched {
                Ok(answer) => answers.push(answer),
                Err(e) => report.failed.push((id, e.to_string())),
            }
        }
        let written = sink.write(&answers).await;
        for (answer, written) in answers.iter().zip(written) {
            let id = answer.session_id();
            match (answer, written) {
                (Answer::Found(fetched), Ok(BatchResult::Written)) => match before.get(&id.get()) {
                    None => report.added.push(id),
                    Some(stored) if stored.missing || stored.raw != fetched.info.raw => {
                        report.changed.push(id);
                    }
                    Some(_) => report.unchanged += 1,
                },
                (_, Ok(BatchResult::Missing { .. })) => report.missing.push(id),
                // A newer answer is stored already: nothing to heal.
                (_, Ok(_)) => report.unchanged += 1,
                (_, Err(e)) => report.failed.push((id, e.to_string())),
            }
        }
        Ok(())
    }
}

impl ReconcileReport {
    /// Feeds the sessions counters.
    fn count(&self) {
        let m = metrics::get();
        m.reconcile_sessions(ReconcileChange::Added, self.added.len() as u64);
        m.reconcile_sessions(ReconcileChange::Changed, self.changed.len() as u64);
        m.reconcile_sessions(ReconcileChange::Missing, self.missing.len() as u64);
    }
}
