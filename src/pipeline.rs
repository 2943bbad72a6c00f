//! The enrichment pipeline behind the consume loop: per-session coalescing,
//! a pool of fetchers (the PBX concurrency cap), and a batching writer.
//!
//! The coalescing rule: the first event for a session starts a fetch at
//! once (as soon as a fetcher is free); events for that session arriving
//! before the fetch starts ride on it; events arriving while it is in flight
//! wait for one follow-up fetch that starts after it answers. Every event is
//! settled only after a fetch that *started after the event arrived* has
//! been committed (or has failed and been classified).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::broker::Delivery;
use crate::enricher::EnrichError;
use crate::event::MessageEvent;
use crate::metrics;
use crate::outcome::{Outcome, Pause};
use crate::pbx::{PbxClient, PbxError};
use crate::policy::{self, Action};
use crate::session::SessionId;
use crate::store::{Answer, BatchResult, Store, StoreError};

/// How the pipeline batches and fans out.
#[derive(Clone, Copy, Debug)]
pub struct PipelineSettings {
    /// Fetchers, i.e. PBX calls in flight at once.
    pub fetchers: usize,
    /// Answers per write transaction at most.
    pub batch_max: usize,
    /// How long the first answer of a batch waits for more.
    pub batch_linger: Duration,
    /// Write transactions in flight at once: a batch need not wait for the
    /// previous one's commit (rows are locked in key order, so concurrent
    /// batches cannot deadlock on them).
    pub writers: usize,
}

/// A delivery taken from the queue and not yet settled, with its message
/// event when it is one.
pub struct Pending {
    pub delivery: Delivery,
    pub event: Option<MessageEvent>,
}

/// The worker's settle step: acks, dead-letters, retries or returns a
/// delivery by its outcome.
pub type Settle =
    Arc<dyn Fn(Pending, Outcome) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Hands a delivery and its outcome to `Settle` (in a task of its own) and
/// counts it off once settled.
type Finish = Arc<dyn Fn(Pending, Outcome) + Send + Sync>;

#[derive(Default)]
struct Slot {
    /// Arrived, not yet covered by a started fetch.
    waiting: Vec<Pending>,
    /// A fetch job is queued and has not started.
    queued: bool,
    /// A fetch is in flight.
    fetching: bool,
}

struct Shared {
    slots: Mutex<HashMap<SessionId, Slot>>,
    jobs: mpsc::UnboundedSender<SessionId>,
    unsettled: AtomicUsize,
    idle: Notify,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, HashMap<SessionId, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Fetch results handed from fetchers to the writer.
struct Fetched {
    answer: Answer,
    covered: Vec<Pending>,
}

pub struct Pipeline {
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
    settle: Settle,
}

impl Pipeline {
    /// Starts the fetchers and the writer. `store_retry` bounds the
    /// in-process retries of a batch whose database is unavailable.
    pub fn start(
        settings: PipelineSettings,
        store_retry: Backoff,
        pbx: Arc<PbxClient>,
        store: Store,
        pbx_id: String,
        settle: Settle,
        pauses: mpsc::UnboundedSender<Pause>,
    ) -> Self {
        let (jobs, job_queue) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            slots: Mutex::new(HashMap::new()),
            jobs,
            unsettled: AtomicUsize::new(0),
            idle: Notify::new(),
        });
        let (to_writer, writer_queue) = mpsc::channel::<Fetched>(settings.batch_max.max(1) * 4);
        let job_queue = Arc::new(tokio::sync::Mutex::new(job_queue));
        let mut tasks = JoinSet::new();
        let finish = finisher(Arc::clone(&shared), Arc::clone(&settle));
        for _ in 0..settings.fetchers.max(1) {
            tasks.spawn(fetcher(
                Arc::clone(&shared),
                Arc::clone(&job_queue),
                Arc::clone(&pbx),
                to_writer.clone(),
                Arc::clone(&finish),
                pauses.clone(),
            ));
        }
        tasks.spawn(writer(
            settings,
            store_retry,
            store,
            pbx_id,
            writer_queue,
            finish,
            pauses,
        ));
        Self {
            shared,
            tasks,
            settle,
        }
    }

    /// Hands over message events that arrived together; each is settled
    /// when a fetch that starts after now has been committed. Taken under
    /// one lock, so a burst that arrived together rides on one fetch.
    pub fn submit(&self, events: Vec<(Delivery, MessageEvent)>) {
        self.shared
            .unsettled
            .fetch_add(events.len(), Ordering::AcqRel);
        let mut slots = self.shared.slots();
        for (delivery, event) in events {
            metrics::get().event_taken();
            let id = event.session_id;
            let slot = slots.entry(id).or_default();
            slot.waiting.push(Pending {
                delivery,
                event: Some(event),
            });
            if !slot.queued && !slot.fetching {
                slot.queued = true;
                // The receiver lives as long as the fetchers, i.e. as `self`.
                let _ = self.shared.jobs.send(id);
            }
        }
    }

    /// Settles a delivery that needs no fetch (skipped, malformed), counted
    /// with the rest so `drain` waits for it too.
    pub fn settle_directly(&self, delivery: Delivery, outcome: Outcome) {
        self.shared.unsettled.fetch_add(1, Ordering::AcqRel);
        metrics::get().event_taken();
        let pending = Pending {
            delivery,
            event: None,
        };
        finisher(Arc::clone(&self.shared), Arc::clone(&self.settle))(pending, outcome);
    }

    /// Deliveries taken and not yet settled.
    pub fn unsettled(&self) -> usize {
        self.shared.unsettled.load(Ordering::Acquire)
    }

    /// Waits until every delivery handed over has been settled.
    pub async fn drain(&self) {
        loop {
            let notified = self.shared.idle.notified();
            if self.unsettled() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Stops the fetchers and the writer. Call after `drain` (nothing is in
    /// flight then), or on the way out past a deadline.
    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

fn finisher(shared: Arc<Shared>, settle: Settle) -> Finish {
    Arc::new(move |pending, outcome| {
        let settling = settle(pending, outcome);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            settling.await;
            if shared.unsettled.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.idle.notify_waiters();
            }
        });
    })
}

async fn fetcher(
    shared: Arc<Shared>,
    jobs: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<SessionId>>>,
    pbx: Arc<PbxClient>,
    to_writer: mpsc::Sender<Fetched>,
    finish: Finish,
    pauses: mpsc::UnboundedSender<Pause>,
) {
    loop {
        let Some(id) = jobs.lock().await.recv().await else {
            return;
        };
        // The fetch starts now: it covers every event that arrived so far.
        let covered = {
            let mut slots = shared.slots();
            let slot = slots.entry(id).or_default();
            slot.queued = false;
            slot.fetching = true;
            std::mem::take(&mut slot.waiting)
        };
        metrics::get().events_coalesced(covered.len().saturating_sub(1) as u64);
        let result = AssertUnwindSafe(pbx.fetch_session(id)).catch_unwind().await;
        let answered_at = Utc::now();
        {
            let mut slots = shared.slots();
            if let Some(slot) = slots.get_mut(&id) {
                slot.fetching = false;
                if slot.waiting.is_empty() {
                    slots.remove(&id);
                } else {
                    // The follow-up for events that arrived during the fetch.
                    slot.queued = true;
                    let _ = shared.jobs.send(id);
                }
            }
        }
        let answer = match result {
            Ok(Ok(fetched)) => Answer::Found(Box::new(fetched)),
            Ok(Err(PbxError::NotFound)) => Answer::Missing {
                id,
                seen_at: answered_at,
            },
            Ok(Err(e)) => {
                let outcome = match policy::classify(&EnrichError::Pbx(e)) {
                    Action::DeadLetter(reason) => Outcome::DeadLetter { reason },
                    Action::RetryLater(reason) => Outcome::Retry { reason },
                    Action::PausePbx(reason) => Outcome::Hold(Pause::Pbx {
                        reason,
                        session_id: id,
                    }),
                    Action::PauseDatabase(reason) => Outcome::Hold(Pause::Database { reason }),
                };
                if let Outcome::Hold(pause) = &outcome {
                    let _ = pauses.send(pause.clone());
                }
                covered.into_iter().for_each(|p| finish(p, outcome.clone()));
                continue;
            }
            Err(panic) => {
                let panic = panic_message(&*panic);
                covered.into_iter().for_each(|p| {
                    finish(
                        p,
                        Outcome::Crashed {
                            panic: panic.clone(),
                        },
                    )
                });
                continue;
            }
        };
        if let Err(refused) = to_writer.send(Fetched { answer, covered }).await {
            // The writer is gone (stopping): return the deliveries.
            for p in refused.0.covered {
                finish(
                    p,
                    Outcome::Requeued {
                        reason: "the worker is stopping".into(),
                    },
                );
            }
        }
    }
}

async fn writer(
    settings: PipelineSettings,
    store_retry: Backoff,
    store: Store,
    pbx_id: String,
    mut queue: mpsc::Receiver<Fetched>,
    finish: Finish,
    pauses: mpsc::UnboundedSender<Pause>,
) {
    let store = Arc::new(store);
    let pbx_id: Arc<str> = pbx_id.into();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(settings.writers.max(1)));
    let mut writes = JoinSet::new();
    loop {
        // Block for the first answer, then gather more for up to the linger.
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut batch = Vec::with_capacity(settings.batch_max);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + settings.batch_linger;
        while batch.len() < settings.batch_max {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        let (store, pbx_id, finish, pauses) = (
            Arc::clone(&store),
            Arc::clone(&pbx_id),
            Arc::clone(&finish),
            pauses.clone(),
        );
        writes.spawn(async move {
            write(&store_retry, &store, &pbx_id, batch, &finish, &pauses).await;
            drop(permit);
        });
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
}

/// Writes one batch and settles its deliveries by what each answer became.
async fn write(
    store_retry: &Backoff,
    store: &Store,
    pbx_id: &str,
    batch: Vec<Fetched>,
    finish: &Finish,
    pauses: &mpsc::UnboundedSender<Pause>,
) {
    let answers: Vec<Answer> = batch.iter().map(|f| f.answer.clone()).collect();
    let results = crate::enricher::write_answers(store, store_retry, pbx_id, &answers).await;
    match results {
        Ok(results) => {
            for (fetched, result) in batch.into_iter().zip(results) {
                let outcome = outcome_of(result);
                fetched
                    .covered
                    .into_iter()
                    .for_each(|p| finish(p, outcome.clone()));
            }
        }
        Err(StoreError::Unavailable(why)) => {
            let pause = Pause::Database {
                reason: StoreError::Unavailable(why).to_string(),
            };
            let _ = pauses.send(pause.clone());
            for fetched in batch {
                fetched
                    .covered
                    .into_iter()
                    .for_each(|p| finish(p, Outcome::Hold(pause.clone())));
            }
        }
        Err(StoreError::Refused(_)) => {
            // One answer's data poisons the whole statement: write them one
            // by one, so only the culprit's events are dead-lettered.
            for fetched in batch {
                let outcome = match store
                    .write_batch(pbx_id, std::slice::from_ref(&fetched.answer))
                    .await
                {
                    Ok(results) => results
                        .into_iter()
                        .next()
                        .map_or(Outcome::Enriched, outcome_of),
                    Err(e @ StoreError::Refused(_)) => Outcome::DeadLetter {
                        reason: e.to_string(),
                    },
                    Err(e @ StoreError::Unavailable(_)) => {
                        let pause = Pause::Database {
                            reason: e.to_string(),
                        };
                        let _ = pauses.send(pause.clone());
                        Outcome::Hold(pause)
                    }
                };
                fetched
                    .covered
                    .into_iter()
                    .for_each(|p| finish(p, outcome.clone()));
            }
        }
    }
}

fn outcome_of(result: BatchResult) -> Outcome {
    match result {
        BatchResult::Written => Outcome::Enriched,
        BatchResult::Stale | BatchResult::Superseded => Outcome::Unchanged,
        BatchResult::Missing { .. } => Outcome::NotFound,
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}
