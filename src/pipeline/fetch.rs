//! The fetchers: each takes the sessions whose fetch is due, up to a batch
//! (gathering for a moment when there are few), fetches them in one call
//! through the `SessionSource`, and passes each answer with the events it
//! covers to the writer. A failed or panicking fetch hands its events back
//! at once.
//!
//! Batches form where they pay: while every fetcher is busy, due sessions
//! pile up in the job queue and the next free fetcher takes a full batch
//! at once; an idle fetcher waits at most the gathering window for more.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Mutex, mpsc};
use tokio::time::{Instant, timeout_at};

use super::{SessionSource, Shared, panic_message};
use crate::metrics;
use crate::processing::{Answer, FetchError, Processed};
use crate::session::SessionId;

/// An answer on its way to the writer, with the events it covers.
pub(super) struct Fetched<T> {
    pub answer: Answer,
    pub covered: Vec<T>,
}

/// How a fetcher forms its batches.
#[derive(Clone, Copy, Debug)]
pub(super) struct Batching {
    /// Sessions per fetch at most.
    pub max: usize,
    /// How long a fetch that is not full waits for more sessions.
    pub gather: Duration,
}

/// The job queue the fetchers share: sessions whose fetch is due, each
/// queued at most once at a time (the coalescing rule sees to it).
pub(super) type Jobs = Arc<Mutex<mpsc::UnboundedReceiver<SessionId>>>;

pub(super) async fn fetcher<T: Send + 'static, S: SessionSource>(
    shared: Arc<Shared<T>>,
    jobs: Jobs,
    batching: Batching,
    source: Arc<S>,
    to_writer: mpsc::Sender<Fetched<T>>,
) {
    while let Some(ids) = next_batch(&jobs, batching).await {
        let covered: Vec<Vec<T>> = {
            let mut slots = shared.slots();
            ids.iter().map(|&id| slots.start(id)).collect()
        };
        let coalesced: usize = covered.iter().map(|c| c.len().saturating_sub(1)).sum();
        metrics::get().events_coalesced(coalesced as u64);

        let result = AssertUnwindSafe(source.fetch(&ids)).catch_unwind().await;
        {
            let mut slots = shared.slots();
            for &id in &ids {
                if slots.answered(id) {
                    // The follow-up for events that arrived during the fetch.
                    let _ = shared.jobs.send(id);
                }
            }
        }
        let mut answers = match result {
            Ok(answers) => answers,
            Err(panic) => {
                let crashed = Processed::Crashed {
                    panic: panic_message(&*panic),
                };
                for tickets in covered {
                    shared.finish(tickets, &crashed);
                }
                continue;
            }
        };
        for (id, tickets) in ids.into_iter().zip(covered) {
            let answer = match answers.iter().position(|(of, _)| *of == id) {
                Some(at) => answers.swap_remove(at).1,
                None => Err(FetchError::Transient(format!("no answer for session {id}"))),
            };
            match answer {
                Ok(answer) => {
                    let fetched = Fetched {
                        answer,
                        covered: tickets,
                    };
                    if let Err(refused) = to_writer.send(fetched).await {
                        let reason = "the worker is stopping".to_owned();
                        shared.finish(refused.0.covered, &Processed::Abandoned { reason });
                    }
                }
                Err(error) => shared.finish(
                    tickets,
                    &Processed::FetchFailed {
                        session_id: id,
                        error,
                    },
                ),
            }
        }
    }
}

/// The next batch: waits for one due session, takes every other one already
/// due up to the batch size, and if that is not full waits up to the
/// gathering window for more. `None` once the pipeline stops. The queue
/// stays locked meanwhile, so the sessions arriving go to one batch instead
/// of to every idle fetcher one by one.
async fn next_batch(jobs: &Jobs, batching: Batching) -> Option<Vec<SessionId>> {
    let mut jobs = jobs.lock().await;
    let first = jobs.recv().await?;
    let max = batching.max.max(1);
    let mut ids = Vec::with_capacity(max);
    ids.push(first);
    while ids.len() < max {
        match jobs.try_recv() {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
    }
    if ids.len() < max && !batching.gather.is_zero() {
        let deadline = Instant::now() + batching.gather;
        while ids.len() < max {
            match timeout_at(deadline, jobs.recv()).await {
                Ok(Some(id)) => ids.push(id),
                Ok(None) | Err(_) => break,
            }
        }
    }
    Some(ids)
}
