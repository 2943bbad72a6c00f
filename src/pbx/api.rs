//! The raw Yeastar OpenAPI calls over HTTP: one function per endpoint, each
//! turning the answer into a value or a `PbxError` by its `errcode` (and the
//! HTTP status where the body says nothing). No retries, no token caching.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::PbxError;
use super::observe::observed;
use crate::metrics::PbxEndpoint;
use crate::secret::Secret;
use crate::session::{SessionId, integer};

/// An access/refresh token pair as `get_token` and `refresh_token` return it.
#[derive(Clone, Debug)]
pub(crate) struct TokenPair {
    pub access: Secret,
    pub issued_at: Instant,
    pub access_expires_at: Instant,
    pub refresh: Secret,
    pub refresh_expires_at: Instant,
}

/// A failed `message_session/get`: the token was refused, or anything else.
#[derive(Debug)]
pub(crate) enum CallError {
    /// errcode 10004: the token expired or is unknown; renew and retry once.
    TokenExpired,
    Failed(PbxError),
}

impl From<PbxError> for CallError {
    fn from(e: PbxError) -> Self {
        CallError::Failed(e)
    }
}

/// Where and how to reach one PBX's API.
pub(crate) struct Api {
    http: reqwest::Client,
    /// `{base_url}/{api_path}`, without a trailing slash.
    root: String,
}

impl Api {
    pub fn new(base_url: &str, api_path: &str, timeout: Duration) -> Result<Self, PbxError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("session-enricher/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| PbxError::Configuration {
                reason: e.to_string(),
                action: "the HTTP client could not be built",
            })?;
        let root = format!(
            "{}/{}",
            base_url.trim_end_matches('/'),
            api_path.trim_matches('/')
        );
        Ok(Self { http, root })
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.root)
    }

    pub async fn get_token(&self, client_id: &str, secret: &Secret) -> Result<TokenPair, PbxError> {
        let request = self
            .http
            .post(self.url("get_token"))
            .json(&json!({"username": client_id, "password": secret.expose()}));
        token_pair(&observed(PbxEndpoint::GetToken, send(request)).await?)
    }

    pub async fn refresh_token(&self, refresh: &Secret) -> Result<TokenPair, PbxError> {
        let request = self
            .http
            .post(self.url("refresh_token"))
            .json(&json!({"refresh_token": refresh.expose()}));
        token_pair(&observed(PbxEndpoint::RefreshToken, send(request)).await?)
    }

    pub async fn del_token(&self, access: &Secret) -> Result<(), PbxError> {
        let request = self
            .http
            .get(self.url("del_token"))
            .query(&[("access_token", access.expose())]);
        observed(PbxEndpoint::DelToken, send(request))
            .await
            .map(drop)
            .map_err(PbxError::from)
    }

    /// `message_session/get`: the `list` object of a successful answer.
    pub async fn message_session(
        &self,
        access: &Secret,
        id: SessionId,
    ) -> Result<Value, CallError> {
        let request = self
            .http
            .get(self.url("message_session/get"))
            .query(&[("access_token", access.expose()), ("id", &id.to_string())]);
        match observed(PbxEndpoint::MessageSessionGet, send(request)).await {
            Ok(mut answer) => match answer.get_mut("list").map(Value::take) {
                Some(list @ Value::Object(_)) => Ok(list),
                _ => Err(PbxError::Rejected("answer has no Session_Info in `list`".into()).into()),
            },
            Err(Refusal::Errcode(10004, _)) => Err(CallError::TokenExpired),
            Err(Refusal::Errcode(60001 | 40002, _)) => Err(PbxError::NotFound.into()),
            Err(refusal) => Err(PbxError::from(refusal).into()),
        }
    }
}

/// An answer that is not a success.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// A JSON answer with a non-zero errcode.
    Errcode(i64, String),
    /// No usable answer (transport, status, not JSON).
    Other(PbxError),
}

impl From<Refusal> for PbxError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Errcode(code, msg) => PbxError::from_errcode(code, &msg),
            Refusal::Other(e) => e,
        }
    }
}

impl From<Refusal> for CallError {
    fn from(r: Refusal) -> Self {
        CallError::Failed(r.into())
    }
}

/// Sends a request and returns the JSON answer if its errcode is 0. The
/// errcode decides; the HTTP status only where the body carries none.
async fn send(request: reqwest::RequestBuilder) -> Result<Value, Refusal> {
    // Errors are stripped of their URL: it carries the access token.
    let transient =
        |e: reqwest::Error| Refusal::Other(PbxError::Transient(e.without_url().to_string()));
    let response = request.send().await.map_err(transient)?;
    let status = response.status();
    if status.is_server_error() || status.as_u16() == 429 {
        return Err(Refusal::Other(PbxError::Transient(format!(
            "HTTP {status}"
        ))));
    }
    let bytes = response.bytes().await.map_err(transient)?;
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(Refusal::Other(if status.is_success() {
            PbxError::Transient(format!("HTTP {status} with a body that is not JSON"))
        } else {
            PbxError::Configuration {
                reason: format!("HTTP {status}"),
                action: "the PBX answered outside its API; check YEASTAR_BASE_URL and YEASTAR_API_PATH",
            }
        }));
    };
    match answer.get("errcode").and_then(integer) {
        Some(0) => Ok(answer),
        Some(code) => {
            let msg = answer
                .get("errmsg")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            Err(Refusal::Errcode(code, msg))
        }
        None => Err(Refusal::Other(PbxError::Rejected(format!(
            "HTTP {status} answer without an errcode"
        )))),
    }
}

fn token_pair(answer: &Value) -> Result<TokenPair, PbxError> {
    let now = Instant::now();
    let secret = |key: &str| {
        answer
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
            .ok_or_else(|| PbxError::Transient(format!("token answer without `{key}`")))
    };
    let lifetime = |key: &str, default: u64| {
        let secs = answer
            .get(key)
            .and_then(integer)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(default);
        now + Duration::from_secs(secs)
    };
    Ok(TokenPair {
        access: secret("access_token")?,
        issued_at: now,
        access_expires_at: lifetime("access_token_expire_time", 1800),
        refresh: secret("refresh_token")?,
        refresh_expires_at: lifetime("refresh_token_expire_time", 86_400),
    })
}
