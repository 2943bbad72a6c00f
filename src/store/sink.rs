//! The pipeline's `AnswerSink`: writes a batch through `Store::write_batch`,
//! retrying with backoff while the database is unavailable (the answers are
//! kept, the PBX is not asked again), and, when the database refuses a
//! batch's data, writing its answers one by one so only the culprit fails.
//! Its writes set refresh due times by its refresh interval.

use std::time::Duration;

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
    refresh_interval: Option<Duration>,
}

impl StoreSink {
    /// `retry` bounds the in-process retries of a write whose database is
    /// unavailable. Refreshing is off until `with_refresh_interval`.
    pub fn new(store: Store, pbx_id: String, retry: Backoff) -> Self {
        Self {
            store,
            pbx_id,
            retry,
            refresh_interval: None,
        }
    }

    /// Sessions written with pending agents become due for a refresh this
    /// long after their write (`None`: never; see `Store::write_batch`).
    /// Every writer of a PBX's sessions should use the same interval: a
    /// write with `None` clears the session's due time.
    pub fn with_refresh_interval(mut self, interval: Option<Duration>) -> Self {
        self.refresh_interval = interval;
        self
    }

    /// Writes one batch, retrying while the database is unavailable.
    async fn write_retrying(&self, answers: &[Answer]) -> Result<Vec<BatchResult>, StoreError> {
        self.retry
            .retry(
                || {
                    self.store
                        .write_batch(&self.pbx_id, answers, self.refresh_interval)
                },
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
                one_by_one(answers, |answer| async move {
                    let mut one = self.write_retrying(std::slice::from_ref(answer)).await?;
                    one.pop().ok_or_else(|| {
                        StoreError::Unavailable("the batch write gave no result".into())
                    })
                })
                .await
            }
            Err(e) => {
                let error = WriteError::from(e);
                answers.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}

/// Writes answers one at a time. Once the database is unavailable, the
/// answers not yet written share that result without being tried: each try
/// would spend the whole retry budget again, and the pipeline is about to
/// hold them all anyway.
async fn one_by_one<'a, F, Fut>(
    answers: &'a [Answer],
    write: F,
) -> Vec<Result<BatchResult, WriteError>>
where
    F: Fn(&'a Answer) -> Fut,
    Fut: Future<Output = Result<BatchResult, StoreError>>,
{
    let mut results = Vec::with_capacity(answers.len());
    let mut unavailable = None;
    for answer in answers {
        let result = match &unavailable {
            Some(error) => Err(WriteError::clone(error)),
            None => write(answer).await.map_err(WriteError::from),
        };
        if let Err(error @ WriteError::Unavailable(_)) = &result {
            unavailable = Some(error.clone());
        }
        results.push(result);
    }
    results
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use chrono::Utc;

    use super::*;
    use crate::session::SessionId;

    fn answers(n: i64) -> Vec<Answer> {
        (1..=n)
            .map(|id| Answer::Missing {
                id: SessionId::new(id).expect("positive"),
                requested_at: Utc::now(),
                seen_at: Utc::now(),
            })
            .collect()
    }

    #[tokio::test]
    async fn only_the_refused_answer_fails_when_written_one_by_one() {
        let batch = answers(3);
        let results = one_by_one(&batch, |answer| async move {
            match answer.session_id().get() {
                2 => Err(StoreError::Refused("22021".into())),
                _ => Ok(BatchResult::Written),
            }
        })
        .await;
        assert_eq!(
            results,
            vec![
                Ok(BatchResult::Written),
                Err(WriteError::Refused("22021".into())),
                Ok(BatchResult::Written),
            ]
        );
    }

    #[tokio::test]
    async fn an_outage_while_writing_one_by_one_is_not_tried_again_for_the_rest() {
        let batch = answers(4);
        let tries = Cell::new(0);
        let results = one_by_one(&batch, |answer| {
            tries.set(tries.get() + 1);
            async move {
                match answer.session_id().get() {
                    1 => Ok(BatchResult::Written),
                    _ => Err(StoreError::Unavailable("connection refused".into())),
                }
            }
        })
        .await;
        assert_eq!(
            tries.get(),
            2,
            "the answers after the outage were not tried"
        );
        let down = Err(WriteError::Unavailable("connection refused".into()));
        assert_eq!(
            results,
            vec![Ok(BatchResult::Written), down.clone(), down.clone(), down]
        );
    }
}
