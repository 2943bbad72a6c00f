//! `Enricher`: fetch one session from the PBX and write it to the store, or
//! mark it missing. Shared by the worker and the `enrich` command; knows
//! nothing of queues.

use std::sync::Arc;

use chrono::Utc;

use crate::backoff::Backoff;
use crate::pbx::{PbxClient, PbxError};
use crate::session::SessionId;
use crate::store::{Answer, BatchResult, Store, StoreError};

/// What enriching a session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrichment {
    /// The rows now reflect the PBX's answer.
    Written,
    /// A newer answer was already stored; nothing changed.
    Stale,
    /// The PBX says the session does not exist; `marked` if a stored row was
    /// marked missing.
    Missing { marked: bool },
}

#[derive(Debug, thiserror::Error)]
pub enum EnrichError {
    #[error(transparent)]
    Pbx(#[from] PbxError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Enricher {
    pbx: Arc<PbxClient>,
    store: Store,
    pbx_id: String,
    /// Retries of a write whose database is unavailable; the fetched answer
    /// is kept, so the PBX is not asked again.
    store_retry: Backoff,
}

impl Enricher {
    pub fn new(pbx: PbxClient, store: Store, pbx_id: String, store_retry: Backoff) -> Self {
        Self {
            pbx: Arc::new(pbx),
            store,
            pbx_id,
            store_retry,
        }
    }

    pub fn pbx_id(&self) -> &str {
        &self.pbx_id
    }

    pub fn pbx(&self) -> &Arc<PbxClient> {
        &self.pbx
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Fetches the session and writes what the PBX said (through the same
    /// batch write as the worker, with a batch of one).
    pub async fn enrich(&self, id: SessionId) -> Result<Enrichment, EnrichError> {
        let answer = match self.pbx.fetch_session(id).await {
            Ok(fetched) => Answer::Found(Box::new(fetched)),
            Err(PbxError::NotFound) => Answer::Missing {
                id,
                seen_at: Utc::now(),
            },
            Err(e) => return Err(e.into()),
        };
        let results = write_answers(
            &self.store,
            &self.store_retry,
            &self.pbx_id,
            std::slice::from_ref(&answer),
        )
        .await?;
        Ok(match results.first() {
            Some(BatchResult::Written) => Enrichment::Written,
            Some(BatchResult::Missing { marked }) => Enrichment::Missing { marked: *marked },
            Some(BatchResult::Stale | BatchResult::Superseded) | None => Enrichment::Stale,
        })
    }
}

/// Writes PBX answers in one batch, retrying while the database is
/// unavailable (the answers are kept: the PBX is not asked again). Shared by
/// `enrich` and the worker's pipeline.
pub(crate) async fn write_answers(
    store: &Store,
    retry: &Backoff,
    pbx_id: &str,
    answers: &[Answer],
) -> Result<Vec<BatchResult>, StoreError> {
    retry
        .retry(
            || store.write_batch(pbx_id, answers),
            |e| matches!(e, StoreError::Unavailable(_)),
            |e, attempt, wait| {
                tracing::warn!(error = %e, attempt, wait_ms = wait.as_millis() as u64,
                    "Database write failed; retrying.");
            },
        )
        .await
}
