//! The batching writer: once a writer is free, gathers answers (what is
//! queued, then more for up to the linger), writes them through the
//! `AnswerSink` (a few batches in flight), and hands every covered event
//! back with what its answer became.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use super::fetch::Fetched;
use super::{AnswerSink, PipelineSettings, Shared, panic_message};
use crate::processing::{Answer, Processed, WriteError};

pub(super) async fn writer<T: Send + 'static, W: AnswerSink>(
    settings: PipelineSettings,
    shared: Arc<Shared<T>>,
    sink: Arc<W>,
    mut queue: mpsc::Receiver<Fetched<T>>,
) {
    let in_flight = Arc::new(Semaphore::new(settings.writers.max(1)));
    let mut writes = JoinSet::new();
    loop {
        // A writer first: while every writer is busy, answers pile up in
        // the queue and the next batch takes them all at once (the busier
        // the database, the bigger the batches).
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            break;
        };
        // Block for the first answer, take what else is queued, then gather
        // more for up to the linger.
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut batch = Vec::with_capacity(settings.batch_max);
        batch.push(first);
        while batch.len() < settings.batch_max {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let deadline = tokio::time::Instant::now() + settings.batch_linger;
        while batch.len() < settings.batch_max {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(next)) => batch.push(next),
                Ok(None) | Err(_) => break,
            }
        }
        let (shared, sink) = (Arc::clone(&shared), Arc::clone(&sink));
        writes.spawn(async move {
            write(&*sink, &shared, batch).await;
            drop(permit);
        });
        while writes.try_join_next().is_some() {}
    }
    while writes.join_next().await.is_some() {}
}

/// Writes one batch and hands its events back by what each answer became.
async fn write<T, W: AnswerSink>(sink: &W, shared: &Shared<T>, batch: Vec<Fetched<T>>) {
    let (answers, covered): (Vec<Answer>, Vec<Vec<T>>) =
        batch.into_iter().map(|f| (f.answer, f.covered)).unzip();
    match AssertUnwindSafe(sink.write(&answers)).catch_unwind().await {
        Ok(results) => {
            let mut results = results.into_iter();
            for tickets in covered {
                let processed = match results.next() {
                    Some(Ok(result)) => Processed::Committed(result),
                    Some(Err(error)) => Processed::WriteFailed(error),
                    None => Processed::WriteFailed(WriteError::Unavailable(
                        "the store gave no result for this answer".into(),
                    )),
                };
                shared.finish(tickets, &processed);
            }
        }
        Err(panic) => {
            let crashed = Processed::Crashed {
                panic: panic_message(&*panic),
            };
            for tickets in covered {
                shared.finish(tickets, &crashed);
            }
        }
    }
}
