//! `Outcome`: what processing one delivery decided, and `OutcomeCounts`, the
//! running tally per outcome (read by `demo`, tests and, later, metrics).

use std::sync::atomic::{AtomicU64, Ordering};

/// The one decision taken for a delivery; `worker::settle` turns it into
/// ack, dead-letter or requeue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The session's rows were written.
    Enriched,
    /// A newer answer was already stored; nothing to write.
    Unchanged,
    /// An event type this deployment does not handle.
    Skipped { event_type: i64 },
    /// The PBX says the session does not exist (any more).
    NotFound,
    /// The event can never be processed: dead-letter it with this reason.
    DeadLetter { reason: String },
    /// Failed for now (PBX or database unavailable after in-process
    /// retries): return it to the queue.
    Retry { reason: String },
    /// Shutting down before it could finish: leave it unacked, the broker
    /// redelivers it.
    Abandon,
}

/// Deliveries settled, per outcome.
#[derive(Debug, Default)]
pub struct OutcomeCounts {
    enriched: AtomicU64,
    unchanged: AtomicU64,
    skipped: AtomicU64,
    not_found: AtomicU64,
    dead_lettered: AtomicU64,
    retried: AtomicU64,
    abandoned: AtomicU64,
}

/// A copy of the counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountsSnapshot {
    pub enriched: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub not_found: u64,
    pub dead_lettered: u64,
    pub retried: u64,
    pub abandoned: u64,
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
            Outcome::Abandon => &self.abandoned,
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
            abandoned: get(&self.abandoned),
        }
    }
}
