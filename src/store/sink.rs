//! The pipeline's `AnswerSink`: writes a batch through `Store::write_batch`,
//! retrying with backoff while the database is unavailable (the answers are
//! kept, the PBX is not asked again), and, when the database refuses a
//! batch's data, writing its answers one by one so only the culprit fails.

use crate::backoff::Backoff;
use crate::pipeline::AnswerSink;
use crate::processing::{Answer, BatchResult, WriteError};

use super::{Store, StoreError};

/// The store as the pipeline writes to it, for one PBX.
#[derive(Clone)]
pub struct StoreSink {
    store: Store,
    pbx_id: String,
    retry: Backoff,
}

impl StoreSink {
    /// `retry` bounds the in-process retries of a write whose database is
    /// unavailable.
    pub fn new(store: Store, pbx_id: String, retry: Backoff) -> Self {
        Self {
            store,
            pbx_id,
            retry,
        }
    }

    /// Writes one batch, retrying while the database is unavailable.
    async fn write_retrying(&self, answers: &[Answer]) -> Result<Vec<BatchResult>, StoreError> {
        self.retry
            .retry(
                || self.store.write_batch(&self.pbx_id, answers),
                |e| matches!(e, StoreError::Unavailable(_)),
                |e, attempt, wait| {
                    tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64,
                        "Database write failed; retrying.");
                },
            )
            .await
    }
}

impl From<StoreError> for WriteError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(why) => WriteError::Unavailable(why),
            StoreError::Refused(why) => WriteError::Refused(why),
        }
    }
}

impl AnswerSink for StoreSink {
    async fn write(&self, answers: &[Answer]) -> Vec<Result<BatchResult, WriteError>> {
        match self.write_retrying(answers).await {
            Ok(results) => results.into_iter().map(Ok).collect(),
            Err(StoreError::Refused(_)) if answers.len() > 1 => {
                // One answer's data poisons the whole statement: write them
                // one by one, so only the culprit's events fail.
                let mut results = Vec::with_capacity(answers.len());
                for answer in answers {
                    let written = self.write_retrying(std::slice::from_ref(answer)).await;
                    results.push(match written {
                        Ok(mut one) => one.pop().ok_or_else(|| {
                            WriteError::Unavailable("the batch write gave no result".into())
                        }),
                        Err(e) => Err(e.into()),
                    });
                }
                results
            }
            Err(e) => {
                let error = WriteError::from(e);
                answers.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}
