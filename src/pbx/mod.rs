//! The Yeastar PBX client: the only module that speaks HTTP to the PBX (and
//! the only importer of `reqwest`). It fetches sessions, one with
//! `message_session/get` (the exact path) or several with
//! `message_session/query` (the frugal one, `query`), and lists the open
//! ones with `message_session/list` (`list`, for reconciliation), with a
//! cached token, bounded concurrency, an optional request rate (`budget`)
//! and bounded retries of transient failures, and never logs a secret.

mod api;
mod budget;
mod error;
mod list;
mod observe;
mod query;
mod source;
mod status;
mod token;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;

pub use error::{HttpError, PbxError, Reason};
pub use list::{ListEnd, ListedSession, OpenSessions, Pager};
pub use status::{PbxAccess, PbxStatus};

use crate::backoff::Backoff;
use crate::metrics::PbxEndpoint;
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
    /// Session ids asked for per `message_session/query` call (the frugal
    /// path); 1 fetches each session with `message_session/get`.
    pub query_batch: usize,
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
    /// Session ids per `message_session/query` call; 1 means `get` only.
    query_batch: usize,
    /// Cleared for good once the PBX answers that it lacks `query`.
    query_supported: AtomicBool,
    /// Set once a refused `query` has been logged at WARN.
    query_refusal_warned: AtomicBool,
}

/// A PBX answer, and when the request that got it was sent (just before,
/// on the try that succeeded).
struct Sent<T> {
    requested_at: DateTime<Utc>,
    answer: T,
}

impl PbxClient {
    pub fn new(settings: PbxSettings) -> Result<Self, PbxError> {
        let status = Arc::new(PbxStatus::default());
        crate::metrics::get().pbx_query_supported(true);
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
            query_batch: settings.query_batch.max(1),
            query_supported: AtomicBool::new(true),
            query_refusal_warned: AtomicBool::new(false),
        })
    }

    /// Fetches one session with `message_session/get`. Transient failures
    /// are retried with backoff up to the configured attempts; the last one
    /// is returned as `Transient`.
    pub async fn fetch_session(&self, id: SessionId) -> Result<FetchedSession, PbxError> {
        match self.fetch_answer(id).await? {
            Answer::Found(fetched) => Ok(*fetched),
            Answer::Missing { .. } => Err(PbxError::NotFound),
        }
    }

    /// Fetches one session with `message_session/get` as an answer, found
    /// or missing, stamped with when its request was sent; transient
    /// failures are retried as in `fetch_session`.
    async fn fetch_answer(&self, id: SessionId) -> Result<Answer, PbxError> {
        let sent = self
            .request(PbxEndpoint::MessageSessionGet, &[id], |token| async move {
                match self.api.message_session(&token, id).await {
                    Err(CallError::Failed(PbxError::NotFound)) => Ok(None),
                    answer => answer.map(Some),
                }
            })
            .await?;
        let (requested_at, fetched_at) = (sent.requested_at, Utc::now());
        tracing::debug!(
            session_id = id.get(),
            round_trip_ms = (fetched_at - requested_at).num_milliseconds(),
            "Session fetched."
        );
        let Some(answer) = sent.answer else {
            return Ok(Answer::Missing {
                id,
                requested_at,
                seen_at: fetched_at,
            });
        };
        let info = SessionInfo::decode(answer).map_err(|e| PbxError::Rejected(e.into()))?;
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

    /// Sends one request about `ids` through `send` (given the access
    /// token), retrying transient failures with backoff. Each try holds a
    /// permit of the concurrency cap (not while waiting to retry) and the
    /// cached token; a 10004 renews the token and sends once more at once.
    async fn request<T, F, Fut>(
        &self,
        endpoint: PbxEndpoint,
        ids: &[SessionId],
        send: F,
    ) -> Result<Sent<T>, CallError>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        self.retry
            .retry(
                || self.request_once(&send),
                |e| matches!(e, CallError::Failed(PbxError::Transient(_))),
                |e, attempt, wait| {
                    tracing::warn!(endpoint = endpoint.as_str(), session_ids = %SessionIds(ids), attempt, error = %e,
                        wait_ms = wait.as_millis() as u64, "PBX call failed; retrying.");
                },
            )
            .await
    }

    async fn request_once<T, F, Fut>(&self, send: &F) -> Result<Sent<T>, CallError>
    where
        F: Fn(Secret) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let _permit = self
            .in_flight
            .acquire()
            .await
            .map_err(|_| PbxError::Transient("the PBX client is shutting down".into()))?;
        let _in_flight = crate::metrics::get().pbx_fetch_in_flight();
        let token = self.tokens.access_token(&self.api).await?;
        // Stamped after the budget's wait, just before the request goes.
        let requested_at = self.api.budget().admit().await;
        match send(token.clone()).await {
            Err(CallError::TokenExpired(_)) => {
                self.tokens.invalidate(&token).await;
                let token = self.tokens.access_token(&self.api).await?;
                let requested_at = self.api.budget().admit().await;
                match send(token).await {
                    // A fresh token refused as well: the PBX may be
                    // restarting; ask again later.
                    Err(CallError::TokenExpired(reason)) => Err(PbxError::Transient(reason).into()),
                    answer => answer.map(|answer| Sent {
                        requested_at,
                        answer,
                    }),
                }
            }
            answer => answer.map(|answer| Sent {
                requested_at,
                answer,
            }),
        }
    }

    /// Revokes the cached token (`del_token`), so a restart does not burn one
    /// of the application's 8 token slots. Best effort.
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

/// Session ids as the logs and `message_session/query` write them: `1,2,3`.
struct SessionIds<'a>(&'a [SessionId]);

impl fmt::Display for SessionIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}
