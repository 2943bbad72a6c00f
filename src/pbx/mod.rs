//! The Yeastar PBX client: the only module that speaks HTTP to the PBX (and
//! the only importer of `reqwest`). It fetches one session with a cached
//! token, bounded concurrency, an optional request rate (`budget`) and
//! bounded retries of transient failures, and never logs a secret.

mod api;
mod budget;
mod error;
mod observe;
mod source;
mod status;
mod token;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;

pub use error::{HttpError, PbxError, Reason};
pub use status::{PbxAccess, PbxStatus};

use crate::backoff::Backoff;
use crate::processing::Answer;
use crate::secret::Secret;
use crate::session::{FetchedSession, SessionId, SessionInfo};
use api::Api;
use budget::RequestBudget;
use error::CallError;
use token::TokenCache;

/// How to reach and treat one PBX.
#[derive(Clone, Debug)]
pub struct PbxSettings {
    /// e.g. `https://tenant.yeastarcloud.com`.
    pub base_url: String,
    /// e.g. `openapi/v1.0`.
    pub api_path: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// PBX calls in flight at once.
    pub concurrency: usize,
    /// One HTTP request, connect included.
    pub request_timeout: Duration,
    /// In-process retries of transient failures.
    pub retry: Backoff,
    /// The shortest wait after a refused login (doubles per refusal).
    pub login_retry_min: Duration,
    /// Requests a second at most, logins included (`None`: no limit).
    pub max_rps: Option<u32>,
}

pub struct PbxClient {
    api: Api,
    tokens: TokenCache,
    /// Whether the PBX grants or refuses tokens, for readiness.
    status: Arc<PbxStatus>,
    in_flight: Semaphore,
    retry: Backoff,
}

impl PbxClient {
    pub fn new(settings: PbxSettings) -> Result<Self, PbxError> {
        let status = Arc::new(PbxStatus::default());
        Ok(Self {
            api: Api::new(
                &settings.base_url,
                &settings.api_path,
                settings.request_timeout,
                RequestBudget::new(settings.max_rps),
            )?,
            tokens: TokenCache::new(
                settings.client_id,
                settings.client_secret,
                settings.login_retry_min,
                Arc::clone(&status),
            ),
            status,
            in_flight: Semaphore::new(settings.concurrency.max(1)),
            retry: settings.retry,
        })
    }

    /// Fetches one session. Transient failures are retried with backoff up to
    /// the configured attempts; the last one is returned as `Transient`.
    pub async fn fetch_session(&self, id: SessionId) -> Result<FetchedSession, PbxError> {
        match self.fetch_answer(id).await? {
            Answer::Found(fetched) => Ok(*fetched),
            Answer::Missing { .. } => Err(PbxError::NotFound),
        }
    }

    /// Fetches one session as an answer, found or missing, stamped with when
    /// its request was sent; transient failures are retried as in
    /// `fetch_session`.
    async fn fetch_answer(&self, id: SessionId) -> Result<Answer, PbxError> {
        self.retry
            .retry(
                || self.fetch_once(id),
                |e| matches!(e, PbxError::Transient(_)),
                |e, attempt, wait| {
                    tracing::warn!(session_id = id.get(), attempt, error = %e, wait_ms = wait.as_millis() as u64,
                        "PBX call failed; retrying.");
                },
            )
            .await
    }

    async fn fetch_once(&self, id: SessionId) -> Result<Answer, PbxError> {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| PbxError::Transient("the PBX client is shutting down".into()))?;
        let _in_flight = crate::metrics::get().pbx_fetch_in_flight();
        let token = self.tokens.access_token(&self.api).await?;
        // Stamped after the budget's wait, just before the request goes.
        let mut requested_at = self.api.budget().admit().await;
        let answer = match self.api.message_session(&token, id).await {
            Err(CallError::TokenExpired(_)) => {
                self.tokens.invalidate(&token).await;
                let token = self.tokens.access_token(&self.api).await?;
                requested_at = self.api.budget().admit().await;
                self.api
                    .message_session(&token, id)
                    .await
                    .map_err(|e| match e {
                        // A fresh token refused as well: the PBX may be
                        // restarting; ask again later.
                        CallError::TokenExpired(reason) => PbxError::Transient(reason),
                        CallError::Failed(e) => e,
                    })
            }
            answer => answer.map_err(PbxError::from),
        };
        let list = match answer {
            Err(PbxError::NotFound) => {
                return Ok(Answer::Missing {
                    id,
                    requested_at,
                    seen_at: Utc::now(),
                });
            }
            answer => answer?,
        };
        let fetched_at = Utc::now();
        let info = SessionInfo::decode(list).map_err(|e| PbxError::Rejected(e.into()))?;
        if info.id != id {
            return Err(PbxError::Rejected(
                format!("asked for session {id}, got session {}", info.id).into(),
            ));
        }
        Ok(Answer::Found(Box::new(FetchedSession {
            info,
            requested_at,
            fetched_at,
        })))
    }

    /// Revokes the cached token (`del_token`), so a restart does not burn one
    /// of the application's 8 token slots. Best effort, and the one request
    /// that does not wait for the budget: it is sent once, at shutdown, which
    /// a `Retry-After` must not hold up.
    pub async fn revoke_token(&self) {
        if let Some(token) = self.tokens.take().await {
            match self.api.del_token(&token).await {
                Ok(()) => tracing::info!("PBX access token revoked."),
                Err(e) => tracing::warn!(error = %e, "Could not revoke the PBX access token."),
            }
        }
    }

    /// Obtains a token now unless a valid one is held: at start, so refused
    /// credentials show before the first event.
    pub async fn log_in(&self) -> Result<(), PbxError> {
        self.tokens.access_token(&self.api).await.map(drop)
    }

    /// What the PBX last said about the credentials (for readiness).
    pub fn status(&self) -> Arc<PbxStatus> {
        Arc::clone(&self.status)
    }

    /// Whether refused logins made this process stop logging in (an
    /// operator must fix the credentials or lift an IP block, then restart).
    pub async fn logins_halted(&self) -> bool {
        self.tokens.is_halted().await
    }
}
