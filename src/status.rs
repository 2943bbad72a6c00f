//! `WorkerStatus`: what the worker is doing now (consuming or not, and the
//! problem that stops it), shared with whoever reports health.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Default)]
pub struct WorkerStatus {
    consuming: AtomicBool,
    problem: Mutex<Option<String>>,
}

impl WorkerStatus {
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    /// Whether the consumer is open and taking deliveries.
    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    pub fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Why the worker is not consuming, in words for an operator.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
