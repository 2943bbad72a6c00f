//! The enrichment pipeline: message events in, one `Processed` per event
//! out. It coalesces events per session (`coalesce`), fetches sessions in
//! batches with a pool of fetchers, one per PBX call allowed in flight
//! (`fetch`), and writes the answers in batches (`write`).
//!
//! It owns the coalescing rule: **every event is handed back only after a
//! fetch that started after the event arrived has been committed** (or has
//! failed). It never settles a delivery, and never sees one: the caller's
//! ticket (`T`) is handed back untouched with what happened, on one channel.
//! It reaches the outside only through its ports (`SessionSource`,
//! `AnswerSink`), so it imports no I/O crate and is tested with fakes
//! (`tests`).

mod coalesce;
mod fetch;
mod ports;
#[cfg(test)]
mod tests;
mod write;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use ports::{AnswerSink, SessionSource};

use crate::processing::Processed;
use crate::session::SessionId;
use coalesce::Slots;

/// How the pipeline batches and fans out.
#[derive(Clone, Copy, Debug)]
pub struct PipelineSettings {
    /// Fetchers, i.e. PBX calls in flight at once.
    pub fetchers: usize,
    /// Sessions asked for in one fetch at most (the PBX's `query` batch).
    pub fetch_batch: usize,
    /// How long a fetch that is not full waits for more sessions to come
    /// due; only an idle fetcher waits (a busy pipeline fills batches by
    /// itself).
    pub fetch_gather: Duration,
    /// Answers per write transaction at most.
    pub batch_max: usize,
    /// How long the first answer of a batch waits for more.
    pub batch_linger: Duration,
    /// Write transactions in flight at once: a batch need not wait for the
    /// previous one's commit (rows are locked in key order, so concurrent
    /// batches cannot deadlock on them).
    pub writers: usize,
}

impl PipelineSettings {
    /// Sessions being fetched at once at most: every fetcher with a full
    /// batch (at least 1).
    pub fn fetch_capacity(&self) -> usize {
        (self.fetchers.max(1) * self.fetch_batch.max(1)).max(1)
    }
}

/// What happened to one event, with the ticket it was submitted with.
#[derive(Debug)]
pub struct Done<T> {
    pub ticket: T,
    pub processed: Processed,
}

/// State shared by the submitter, the fetchers and the writer.
struct Shared<T> {
    slots: Mutex<Slots<T>>,
    jobs: mpsc::UnboundedSender<SessionId>,
    done: mpsc::UnboundedSender<Done<T>>,
}

impl<T> Shared<T> {
    fn slots(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each ticket back with what happened.
    fn finish(&self, tickets: Vec<T>, processed: &Processed) {
        for ticket in tickets {
            // A closed receiver means the caller stopped listening: the
            // ticket is dropped unsettled and its delivery redelivered.
            let _ = self.done.send(Done {
                ticket,
                processed: processed.clone(),
            });
        }
    }
}

pub struct Pipeline<T> {
    shared: Arc<Shared<T>>,
    tasks: JoinSet<()>,
}

impl<T: Send + 'static> Pipeline<T> {
    /// Starts the fetchers and the writer; every event submitted comes back
    /// on `done`.
    pub fn start<S: SessionSource, W: AnswerSink>(
        settings: PipelineSettings,
        source: Arc<S>,
        sink: Arc<W>,
        done: mpsc::UnboundedSender<Done<T>>,
    ) -> Self {
        let (jobs, job_queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            slots: Mutex::new(Slots::default()),
            jobs,
            done,
        });
        let (to_writer, writer_queue) = mpsc::channel(settings.batch_max.max(1) * 4);
        let job_queue = Arc::new(tokio::sync::Mutex::new(job_queue));
        let mut tasks = JoinSet::new();
        let batching = fetch::Batching {
            max: settings.fetch_batch,
            gather: settings.fetch_gather,
        };
        for _ in 0..settings.fetchers.max(1) {
            tasks.spawn(fetch::fetcher(
                Arc::clone(&shared),
                Arc::clone(&job_queue),
                batching,
                Arc::clone(&source),
                to_writer.clone(),
            ));
        }
        tasks.spawn(write::writer(
            settings,
            Arc::clone(&shared),
            sink,
            writer_queue,
        ));
        Self { shared, tasks }
    }

    /// Hands over events that arrived together, each with its session and
    /// ticket. Taken under one lock, so a burst that arrived together rides
    /// on one fetch.
    pub fn submit(&self, events: impl IntoIterator<Item = (SessionId, T)>) {
        let mut slots = self.shared.slots();
        for (id, ticket) in events {
            if slots.arrive(id, ticket) {
                // The receiver lives as long as the fetchers, i.e. as `self`.
                let _ = self.shared.jobs.send(id);
            }
        }
    }

    /// Stops the fetchers and the writer. Call once every event submitted
    /// has come back, or on the way out past a deadline (what is still held
    /// is dropped unsettled, and redelivered by the broker).
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

/// The text of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
