//! The fetchers: each takes a session whose fetch is due, fetches it through
//! the `SessionSource`, and passes the answer with the events it covers to
//! the writer. A failed or panicking fetch hands its events back at once.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{Mutex, mpsc};

use super::{SessionSource, Shared, panic_message};
use crate::metrics;
use crate::processing::{Answer, FetchError, Processed};
use crate::session::SessionId;

/// An answer on its way to the writer, with the events it covers.
pub(super) struct Fetched<T> {
    pub answer: Answer,
    pub covered: Vec<T>,
}

pub(super) async fn fetcher<T: Send + 'static, S: SessionSource>(
    shared: Arc<Shared<T>>,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<SessionId>>>,
    source: Arc<S>,
    to_writer: mpsc::Sender<Fetched<T>>,
) {
    loop {
        let Some(id) = jobs.lock().await.recv().await else {
            return;
        };
        let covered = shared.slots().start(id);
        metrics::get().events_coalesced(covered.len().saturating_sub(1) as u64);
        let result = AssertUnwindSafe(source.fetch(&[id])).catch_unwind().await;
        if shared.slots().answered(id) {
            // The follow-up for events that arrived during the fetch.
            let _ = shared.jobs.send(id);
        }
        let answer = match result {
            Ok(answers) => answers.into_iter().find(|(of, _)| *of == id).map_or_else(
                || Err(FetchError::Transient(format!("no answer for session {id}"))),
                |(_, answer)| answer,
            ),
            Err(panic) => {
                let panic = panic_message(&*panic);
                shared.finish(covered, &Processed::Crashed { panic });
                continue;
            }
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                shared.finish(
                    covered,
                    &Processed::FetchFailed {
                        session_id: id,
                        error,
                    },
                );
                continue;
            }
        };
        if let Err(refused) = to_writer.send(Fetched { answer, covered }).await {
            let reason = "the worker is stopping".to_owned();
            shared.finish(refused.0.covered, &Processed::Abandoned { reason });
        }
    }
}
