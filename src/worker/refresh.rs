//! The refresher: keeps waiting sessions fresh without events. It claims
//! the sessions whose refresh is due (a due time per session in Postgres,
//! claimed with `SKIP LOCKED`, so replicas share the work instead of
//! repeating it) and hands them to the consume loop, which feeds them to the
//! pipeline like events: same batched, budgeted fetches, same write path.
//! What a refresh found is counted here; a refresh is never acked, retried
//! or dead-lettered (a failed one is due again when its claim lapses).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, RefreshResult};
use crate::processing::{BatchResult, Processed};
use crate::session::SessionId;
use crate::store::Store;

/// How often and how much the refresher claims.
#[derive(Clone, Copy, Debug)]
pub struct RefreshSettings {
    /// How long after its last fetch a waiting session is fetched again.
    pub interval: Duration,
    /// How long a claim holds a session: a refresh that has not written by
    /// then (a replica died, the PBX is down) is due again.
    pub lease: Duration,
}

impl RefreshSettings {
    /// Refreshing every `interval` (zero: off), with a claim that lapses
    /// after a minute or two intervals, whichever is longer (a PBX call may
    /// take its timeout and retries).
    pub fn every(interval: Duration) -> Option<Self> {
        (!interval.is_zero()).then(|| Self {
            interval,
            lease: (interval * 2).max(Duration::from_secs(60)),
        })
    }

    /// How often the refresher looks for due sessions: often enough that a
    /// session is refreshed within a small fraction of its interval.
    fn poll(&self) -> Duration {
        (self.interval / 10).clamp(Duration::from_millis(100), Duration::from_secs(1))
    }
}

/// A claimed session on its way through the pipeline; holds one of the
/// refresher's in-flight places until it is settled.
#[derive(Debug)]
pub(super) struct Refresh {
    pub session_id: SessionId,
    _place: OwnedSemaphorePermit,
}

/// Claims due sessions until `stop`, and sends them to the consume loop,
/// with at most `in_flight` refreshes unsettled (the pipeline's fetch
/// capacity is a good size: more would only queue). Each claim is one
/// statement, never cancelled mid-flight; `stop` is seen between claims.
pub(super) async fn refresher(
    store: Store,
    pbx_id: String,
    settings: RefreshSettings,
    in_flight: usize,
    to_consume: mpsc::Sender<Vec<Refresh>>,
    stop: CancellationToken,
) {
    let places = Arc::new(Semaphore::new(in_flight.max(1)));
    // A database that keeps refusing is logged once, not at every poll.
    let mut failing = false;
    let mut poll = tokio::time::interval(settings.poll());
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = poll.tick() => {}
        }
        let free = places.available_permits();
        if free == 0 {
            continue;
        }
        let ids = match store
            .claim_due_refreshes(&pbx_id, free, settings.lease)
            .await
        {
            Ok(ids) => {
                if std::mem::take(&mut failing) {
                    tracing::info!("Claiming due refreshes again.");
                }
                ids
            }
            Err(e) if failing => {
                tracing::debug!(error = %e, "Could not claim due refreshes; trying again.");
                continue;
            }
            Err(e) => {
                failing = true;
                tracing::warn!(error = %e, "Could not claim due refreshes; trying again at every poll (logged again when it recovers).");
                continue;
            }
        };
        if ids.is_empty() {
            continue;
        }
        let refreshes: Vec<Refresh> = ids
            .into_iter()
            .filter_map(|session_id| {
                // Only this task takes places, and `free` were free.
                let place = Arc::clone(&places).try_acquire_owned().ok()?;
                Some(Refresh {
                    session_id,
                    _place: place,
                })
            })
            .collect();
        metrics::get().refreshes_claimed(refreshes.len() as u64);
        if to_consume.send(refreshes).await.is_err() {
            return;
        }
    }
}

/// Counts what a refresh found; frees its place.
pub(super) fn settled(refresh: Refresh, processed: &Processed) {
    let result = match processed {
        Processed::Committed(BatchResult::Written) => RefreshResult::Changed,
        Processed::Committed(BatchResult::Missing { .. }) => RefreshResult::Missing,
        Processed::Committed(_) => RefreshResult::Unchanged,
        other => {
            tracing::debug!(session_id = refresh.session_id.get(), processed = ?other,
                "Refresh failed; it is due again when its claim lapses.");
            RefreshResult::Failed
        }
    };
    metrics::get().refresh_settled(result);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_of_zero_turns_refreshing_off() {
        assert!(RefreshSettings::every(Duration::ZERO).is_none());
    }

    #[test]
    fn a_claim_outlasts_a_slow_refresh_and_polls_keep_up_with_the_interval() {
        let default = RefreshSettings::every(Duration::from_secs(5)).expect("on");
        assert_eq!(
            default.lease,
            Duration::from_secs(60),
            "a PBX call may take its retries"
        );
        assert_eq!(default.poll(), Duration::from_millis(500));
        let long = RefreshSettings::every(Duration::from_secs(300)).expect("on");
        assert_eq!(long.lease, Duration::from_secs(600));
        assert_eq!(long.poll(), Duration::from_secs(1));
        let short = RefreshSettings::every(Duration::from_millis(200)).expect("on");
        assert_eq!(short.poll(), Duration::from_millis(100));
    }
}
