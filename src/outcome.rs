//! `Outcome`: what the worker does with one delivery (`decide` chooses it,
//! the settle step carries it out), and `OutcomeCounts`, the running tally
//! per outcome (read by `demo`, `bench` and tests).

use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

/// A dependency that must recover before the worker consumes again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pause {
    /// The PBX refuses the worker's configuration; `session_id` is the
    /// session whose fetch showed it, used to probe the PBX.
    Pbx {
        reason: String,
        session_id: crate::session::SessionId,
    },
    /// The database is unavailable.
    Database { reason: String },
}

impl Pause {
    pub fn reason(&self) -> &str {
        match self {
            Pause::Pbx { reason, .. } | Pause::Database { reason } => reason,
        }
    }
}

/// The one decision taken for a delivery; `worker::settle` carries it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The session's rows were written.
    Enriched,
    /// Nothing to change: the answer said what the rows already said, or a
    /// newer answer was already stored.
    Unchanged,
    /// An event type this deployment does not handle.
    Skipped { event_type: i64 },
    /// The PBX says the session does not exist (any more).
    NotFound,
    /// The event can never be processed: dead-letter it with this reason
    /// and attempt count. `unless_recorded`: a redelivery, so first ask the
    /// dead-letter record whether it was published already (then only ack).
    DeadLetter {
        reason: String,
        attempts: u32,
        unless_recorded: bool,
    },
    /// Failed for now after the in-process retries: republish it to the
    /// retry queue as attempt `attempts`, to come back after `delay`.
    Retry {
        reason: String,
        attempts: u32,
        delay: Duration,
    },
    /// Not the event's fault: return it to the queue and stop consuming
    /// until the dependency recovers.
    Hold(Pause),
    /// Processing panicked: return it to the queue; the queue's delivery
    /// limit dead-letters it if it keeps doing so.
    Crashed { panic: String },
    /// Could not be settled as decided (the broker failed to take a dead
    /// letter or a retry): returned to the queue instead.
    Requeued { reason: String },
}

/// Deliveries settled, per outcome, and the publish→commit lag of those
/// that carried their publish time.
#[derive(Debug, Default)]
pub struct OutcomeCounts {
    pub lag: LagHistogram,
    enriched: AtomicU64,
    unchanged: AtomicU64,
    skipped: AtomicU64,
    not_found: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    held: AtomicU64,
    crashed: AtomicU64,
    requeued: AtomicU64,
}

/// A copy of the counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsSnapshot {
    pub enriched: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub not_found: u64,
    pub dead_lettered: u64,
    /// Republished to the retry queue.
    pub retried: u64,
    /// Returned to the queue while a dependency recovers.
    pub held: u64,
    pub crashed: u64,
    pub requeued: u64,
}

impl CountsSnapshot {
    /// Deliveries settled for good (acked, with or without a dead letter).
    pub fn finished(&self) -> u64 {
        self.enriched + self.unchanged + self.skipped + self.not_found + self.dead_lettered
    }
}

impl OutcomeCounts {
    pub fn record(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Enriched => &self.enriched,
            Outcome::Unchanged => &self.unchanged,
            Outcome::Skipped { .. } => &self.skipped,
            Outcome::NotFound => &self.not_found,
            Outcome::DeadLetter { .. } => &self.dead_lettered,
            Outcome::Retry { .. } => &self.retried,
            Outcome::Hold(_) => &self.held,
            Outcome::Crashed { .. } => &self.crashed,
            Outcome::Requeued { .. } => &self.requeued,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CountsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountsSnapshot {
            enriched: get(&self.enriched),
            unchanged: get(&self.unchanged),
            skipped: get(&self.skipped),
            not_found: get(&self.not_found),
            dead_lettered: get(&self.dead_lettered),
            retried: get(&self.retried),
            held: get(&self.held),
            crashed: get(&self.crashed),
            requeued: get(&self.requeued),
        }
    }
}

/// Milliseconds from publish to commit, in 1 ms buckets up to a minute (one
/// more for anything longer).
#[derive(Debug)]
pub struct LagHistogram {
    buckets: Vec<AtomicU64>,
    max_ms: AtomicU64,
}

const LAG_BUCKETS: usize = 60_001;

impl Default for LagHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..=LAG_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_ms: AtomicU64::new(0),
        }
    }
}

impl LagHistogram {
    pub fn record(&self, lag_ms: u64) {
        let bucket = usize::try_from(lag_ms)
            .unwrap_or(LAG_BUCKETS)
            .min(LAG_BUCKETS);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.max_ms.fetch_max(lag_ms, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The lag at quantile `q` (0 to 1), in milliseconds, if any was recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(self.max_ms())
    }

    pub fn max_ms(&self) -> u64 {
        self.max_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_quantiles_come_from_the_recorded_values() {
        let h = LagHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        h.record(70_000);
        assert_eq!(h.quantile(0.5), Some(51));
        assert_eq!(h.quantile(0.99), Some(100));
        assert_eq!(h.max_ms(), 70_000);
        assert_eq!(h.count(), 101);
    }
}
