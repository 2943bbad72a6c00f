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
        let answers = std::slice::from_ref(&answer);
        let results = self
            .with_store_retry(|| self.store.write_batch(&self.pbx_id, answers))
            .await?;
        Ok(match results.first() {
            Some(BatchResult::Written) => Enrichment::Written,
            Some(BatchResult::Missing { marked }) => Enrichment::Missing { marked: *marked },
            Some(BatchResult::Stale | BatchResult::Superseded) | None => Enrichment::Stale,
        })
    }

    async fn with_store_retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(StoreError::Unavailable(why)) if attempt + 1 < self.store_retry.attempts => {
                    let wait = self.store_retry.delay(attempt);
                    tracing::warn!(error = %why, attempt, wait_ms = wait.as_millis() as u64, "Database write failed; retrying.");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}
