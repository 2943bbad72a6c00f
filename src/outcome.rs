//! `Outcome`: what processing one delivery decided, and `OutcomeCounts`, the
//! running tally per outcome (read by `demo`, tests and metrics).

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
    /// A newer answer was already stored; nothing to write.
    Unchanged,
    /// An event type this deployment does not handle.
    Skipped { event_type: i64 },
    /// The PBX says the session does not exist (any more).
    NotFound,
    /// The event can never be processed: dead-letter it with this reason.
    DeadLetter { reason: String },
    /// Failed for now after the in-process retries: republish it to the
    /// retry queue (dead-letter it once its attempts are spent).
    Retry { reason: String },
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

/// Deliveries settled, per outcome.
#[derive(Debug, Default)]
pub struct OutcomeCounts {
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
