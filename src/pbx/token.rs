//! `TokenCache`: the one access token this process holds for a PBX. Logs in
//! once, refreshes before expiry, falls back to a login when a refresh is
//! refused, and guards logins so refused credentials never get this IP
//! blocked (the PBX blocks after 5 failures in a row).

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::api::{Api, TokenPair};
use super::error::{CREDENTIALS_REFUSED, IP_BLOCKED};
use super::{PbxError, PbxStatus};
use crate::secret::Secret;

/// Refused logins in a row after which this process stops trying: the PBX
/// blocks the IP at 5, and a restart must still have attempts to spare.
const MAX_REFUSED_LOGINS: u32 = 3;

pub(crate) struct TokenCache {
    client_id: String,
    client_secret: Secret,
    /// The shortest wait after a refused login; doubles with each refusal.
    login_retry_min: Duration,
    /// Told when the PBX grants or refuses a token.
    status: std::sync::Arc<PbxStatus>,
    state: Mutex<TokenState>,
}

#[derive(Default)]
struct TokenState {
    token: Option<TokenPair>,
    refused_logins: u32,
    next_login_at: Option<Instant>,
    /// The refusal that made this process give up logging in.
    halted: Option<PbxError>,
    last_refusal: Option<PbxError>,
}

impl TokenCache {
    pub fn new(
        client_id: String,
        client_secret: Secret,
        login_retry_min: Duration,
        status: std::sync::Arc<PbxStatus>,
    ) -> Self {
        Self {
            client_id,
            client_secret,
            login_retry_min,
            status,
            state: Mutex::new(TokenState::default()),
        }
    }

    /// A usable access token, renewing it first if it expires within the
    /// margin. Callers are serialised here, so concurrent requests share one
    /// renewal.
    pub async fn access_token(&self, api: &Api) -> Result<Secret, PbxError> {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        if let Some(token) = &state.token
            && now + renewal_margin(token) < token.access_expires_at
        {
            return Ok(token.access.clone());
        }
        if let Some(old) = state.token.take()
            && now < old.refresh_expires_at
        {
            api.budget().admit().await;
            match api.refresh_token(&old.refresh).await {
                Ok(fresh) => {
                    self.status.granted();
                    tracing::debug!("PBX access token refreshed.");
                    let access = fresh.access.clone();
                    state.token = Some(fresh);
                    return Ok(access);
                }
                Err(PbxError::Transient(why)) => {
                    // Keep the pair: the refresh is tried again next time.
                    let still_valid = now < old.access_expires_at;
                    let access = old.access.clone();
                    state.token = Some(old);
                    if !still_valid {
                        return Err(PbxError::Transient(why));
                    }
                    tracing::warn!(error = %why, "Token refresh failed; the current token is still valid.");
                    return Ok(access);
                }
                Err(refused) => {
                    tracing::warn!(error = %refused, "Token refresh refused; logging in again.");
                }
            }
        }
        self.login(&mut state, api).await
    }

    /// Forgets `used` if it is still the current token, so the next
    /// `access_token` renews it. A token already replaced by a concurrent
    /// renewal is left alone.
    pub async fn invalidate(&self, used: &Secret) {
        let mut state = self.state.lock().await;
        if let Some(token) = state.token.as_mut().filter(|t| &t.access == used) {
            token.access_expires_at = Instant::now();
        }
    }

    /// Takes the current token out of the cache, for revoking it.
    pub async fn take(&self) -> Option<Secret> {
        self.state.lock().await.token.take().map(|t| t.access)
    }

    /// Whether logins stopped for good after refusals.
    pub async fn is_halted(&self) -> bool {
        self.state.lock().await.halted.is_some()
    }

    async fn login(&self, state: &mut TokenState, api: &Api) -> Result<Secret, PbxError> {
        if let Some(halted) = &state.halted {
            return Err(halted.clone());
        }
        if let (Some(at), Some(last)) = (state.next_login_at, &state.last_refusal)
            && Instant::now() < at
        {
            return Err(last.clone());
        }
        api.budget().admit().await;
        match api.get_token(&self.client_id, &self.client_secret).await {
            Ok(token) => {
                if state.refused_logins > 0 {
                    tracing::info!("PBX login accepted again.");
                }
                state.refused_logins = 0;
                self.status.granted();
                state.next_login_at = None;
                state.last_refusal = None;
                let access = token.access.clone();
                state.token = Some(token);
                Ok(access)
            }
            Err(PbxError::Transient(why)) => Err(PbxError::Transient(why)),
            Err(refused) => {
                state.refused_logins += 1;
                let wait = self
                    .login_retry_min
                    .saturating_mul(2u32.saturating_pow(state.refused_logins - 1))
                    .min(Duration::from_secs(3600));
                state.next_login_at = Some(Instant::now() + wait);
                // Bad credentials count towards the PBX's IP block (5 in a
                // row); an IP already blocked must not be tried again.
                let blocked = refused.errcode() == Some(IP_BLOCKED);
                let credentials = refused.errcode() == Some(CREDENTIALS_REFUSED);
                if blocked || (credentials && state.refused_logins >= MAX_REFUSED_LOGINS) {
                    tracing::error!(error = %refused, refused_logins = state.refused_logins,
                        "PBX login refused; no more logins until this process restarts with working credentials.");
                    state.halted = Some(refused.clone());
                } else {
                    tracing::error!(error = %refused, refused_logins = state.refused_logins, retry_in_s = wait.as_secs(),
                        "PBX login refused.");
                }
                state.last_refusal = Some(refused.clone());
                self.status.refused(&refused);
                Err(refused)
            }
        }
    }
}

/// Renew this long before the access token expires: a quarter of its
/// lifetime, at most five minutes.
fn renewal_margin(token: &TokenPair) -> Duration {
    let lifetime = token
        .access_expires_at
        .saturating_duration_since(token.issued_at);
    (lifetime / 4).min(Duration::from_secs(300))
}
