//! The worker's periodic reconciliation (`ENRICHER_RECONCILE_INTERVAL_S`):
//! every quarter interval (at most a minute, jittered) a replica looks
//! whether a run of its PBX is due, and runs it under the PBX's lock if so;
//! since a run records its start in the database, replicas reconcile a PBX
//! once per interval between them, whoever looks first. Logs each run's
//! summary. Stops at shutdown: at once between runs, between steps during
//! one.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::{ReconcileReport, ReconcileSettings, Reconciler, Run};
use crate::pbx::PbxClient;
use crate::store::Store;

/// The worker's reconciliation schedule (`WorkerSettings::reconcile`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeriodicReconcile {
    /// How often the PBX is reconciled, between all replicas.
    pub interval: Duration,
    pub settings: ReconcileSettings,
}

impl PeriodicReconcile {
    /// How often a replica looks whether a run is due.
    fn poll(&self) -> Duration {
        (self.interval / 4).clamp(Duration::from_millis(100), Duration::from_secs(60))
    }
}

/// What one replica's periodic reconciliation came to (returned at
/// shutdown, for tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodicRuns {
    /// Runs this replica made.
    pub done: u32,
    /// Looks that found another replica running.
    pub busy: u32,
    /// Looks that found a run started within the interval.
    pub not_due: u32,
    /// Runs (or looks) that failed.
    pub failed: u32,
}

/// Reconciles `pbx_id` every `periodic.interval` (between replicas) until
/// `shutdown`. Spawn it beside the worker; it returns soon after
/// `shutdown` (a run in progress stops at its next step, never inside a
/// write).
pub async fn run_periodically(
    pbx: Arc<PbxClient>,
    store: Store,
    pbx_id: String,
    periodic: PeriodicReconcile,
    shutdown: CancellationToken,
) -> PeriodicRuns {
    let (interval, poll) = (periodic.interval, periodic.poll());
    let reconciler = Reconciler::new(pbx, store, pbx_id.clone(), periodic.settings);
    let mut runs = PeriodicRuns::default();
    tracing::info!(
        pbx = pbx_id,
        interval_s = interval.as_secs(),
        "Reconciling with the PBX periodically."
    );
    loop {
        let wait = poll.mul_f64(rand::rng().random_range(0.5..=1.0));
        tokio::select! {
            () = shutdown.cancelled() => return runs,
            () = tokio::time::sleep(wait) => {}
        }
        match reconciler.run_if_due(interval, &shutdown).await {
            Ok(Run::Done(report)) => {
                runs.done += 1;
                log(&pbx_id, &report);
            }
            Ok(Run::Busy) => {
                runs.busy += 1;
                tracing::debug!(
                    pbx = pbx_id,
                    "Another replica is reconciling; not this one."
                );
            }
            Ok(Run::NotDue) => runs.not_due += 1,
            Err(e) => {
                runs.failed += 1;
                tracing::warn!(pbx = pbx_id, error = %e,
                    "Reconciliation failed; trying again within the interval.");
            }
        }
    }
}

fn log(pbx: &str, report: &ReconcileReport) {
    let (listed, rechecked, pages) = (report.listed, report.rechecked, report.pages);
    let (added, changed) = (report.added.len(), report.changed.len());
    let (unchanged, missing, failed) =
        (report.unchanged, report.missing.len(), report.failed.len());
    if report.is_complete() {
        tracing::info!(
            pbx,
            listed,
            rechecked,
            pages,
            added,
            changed,
            unchanged,
            missing,
            "Reconciled the stored sessions with the PBX."
        );
    } else {
        let problem = report.end.problem().unwrap_or(if report.stopped {
            "stopped before every session was written"
        } else {
            "some sessions failed"
        });
        tracing::warn!(
            pbx,
            listed,
            rechecked,
            pages,
            added,
            changed,
            unchanged,
            missing,
            failed,
            problem,
            "Reconciled with the PBX incompletely; the next run tries again."
        );
    }
}
