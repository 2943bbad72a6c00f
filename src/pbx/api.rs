//! The raw Yeastar OpenAPI calls over HTTP: one function per endpoint, each
//! turning the answer into a value or a failure by its `errcode` (through
//! the errcode table in `error`) and the HTTP status where the body says
//! nothing. A `Retry-After` on HTTP 429/503 holds every request back
//! (`RequestBudget::hold_off`); waiting for the budget is the caller's, just
//! before it calls. No retries, no token caching, and never a URL in an
//! error (it carries the access token).

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::RETRY_AFTER;
use serde_json::{Value, json};

use super::budget::{self, RequestBudget};
use super::error::{CallError, HttpError, Reason};
use super::observe::observed;
use super::{PbxError, SessionIds};
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

/// Where and how to reach one PBX's API.
pub(crate) struct Api {
    http: reqwest::Client,
    /// `{base_url}/{api_path}`, without a trailing slash.
    root: String,
    /// When requests may go; callers `admit` themselves through `budget()`.
    budget: RequestBudget,
}

impl Api {
    pub fn new(
        base_url: &str,
        api_path: &str,
        timeout: Duration,
        budget: RequestBudget,
    ) -> Result<Self, PbxError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("session-enricher/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .build()
            .map_err(|e| PbxError::Configuration {
                reason: Reason::Http(HttpError::new(e)),
                action: "the HTTP client could not be built",
            })?;
        let root = format!(
            "{}/{}",
            base_url.trim_end_matches('/'),
            api_path.trim_matches('/')
        );
        Ok(Self { http, root, budget })
    }

    /// The request budget every caller awaits (`admit`) before a request.
    pub fn budget(&self) -> &RequestBudget {
        &self.budget
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/{endpoint}", self.root)
    }

    pub async fn get_token(&self, client_id: &str, secret: &Secret) -> Result<TokenPair, PbxError> {
        let request = self
            .http
            .post(self.url("get_token"))
            .json(&json!({"username": client_id, "password": secret.expose()}));
        token_pair(&self.call(PbxEndpoint::GetToken, request).await?)
    }

    pub async fn refresh_token(&self, refresh: &Secret) -> Result<TokenPair, PbxError> {
        let request = self
            .http
            .post(self.url("refresh_token"))
            .json(&json!({"refresh_token": refresh.expose()}));
        token_pair(&self.call(PbxEndpoint::RefreshToken, request).await?)
    }

    pub async fn del_token(&self, access: &Secret) -> Result<(), PbxError> {
        let request = self
            .http
            .get(self.url("del_token"))
            .query(&[("access_token", access.expose())]);
        self.call(PbxEndpoint::DelToken, request).await?;
        Ok(())
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
        let mut answer = self.call(PbxEndpoint::MessageSessionGet, request).await?;
        match answer.get_mut("list").map(Value::take) {
            Some(list @ Value::Object(_)) => Ok(list),
            _ => Err(PbxError::Rejected("answer has no Session_Info in `list`".into()).into()),
        }
    }

    /// `message_session/query`: the Session_Info objects of a successful
    /// answer's `list`, as many as the PBX knows among `ids` (an unknown id
    /// is simply absent). Read leniently: no `list`, or `null`, is none; a
    /// lone object is one.
    pub async fn message_sessions(
        &self,
        access: &Secret,
        ids: &[SessionId],
    ) -> Result<Vec<Value>, CallError> {
        let ids = SessionIds(ids).to_string();
        let request = self
            .http
            .get(self.url("message_session/query"))
            .query(&[("access_token", access.expose()), ("ids", &ids)]);
        let answer = self.call(PbxEndpoint::MessageSessionQuery, request).await?;
        session_list(answer)
    }

    /// `message_session/list`: the Session_Info objects of one page, read
    /// as leniently as `message_sessions` reads its answer. `params` are
    /// the query parameters besides the token.
    pub async fn message_session_list(
        &self,
        access: &Secret,
        params: &[(&str, String)],
    ) -> Result<Vec<Value>, CallError> {
        let request = self
            .http
            .get(self.url("message_session/list"))
            .query(&[("access_token", access.expose())])
            .query(params);
        let answer = self.call(PbxEndpoint::MessageSessionList, request).await?;
        session_list(answer)
    }

    /// Sends a request, records it, and returns the JSON answer if its
    /// errcode is 0. The errcode decides; the HTTP status only where the
    /// body carries none.
    async fn call(
        &self,
        endpoint: PbxEndpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, CallError> {
        observed(endpoint, send(&self.budget, endpoint, request)).await
    }
}

async fn send(
    budget: &RequestBudget,
    endpoint: PbxEndpoint,
    request: reqwest::RequestBuilder,
) -> Result<Value, CallError> {
    let unanswered = |e| CallError::from(PbxError::Transient(Reason::Http(HttpError::new(e))));
    let response = request.send().await.map_err(unanswered)?;
    let status = response.status();
    if let Some(unsupported) = CallError::from_status(endpoint, status.as_u16()) {
        return Err(unsupported);
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) && let Some(wait) = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(budget::retry_after)
        {
            tracing::warn!(
                status = status.as_u16(),
                wait_ms = wait.as_millis() as u64,
                "The PBX asked to wait (Retry-After); holding every request back."
            );
            budget.hold_off(wait);
        }
        return Err(PbxError::Transient(Reason::Status(status.as_u16())).into());
    }
    let bytes = response.bytes().await.map_err(unanswered)?;
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Err(if status.is_success() {
            PbxError::Transient(Reason::NotTheApi {
                status: status.as_u16(),
                what: "with a body that is not JSON",
            })
        } else {
            PbxError::Configuration {
                reason: Reason::Status(status.as_u16()),
                action: "the PBX answered outside its API; check YEASTAR_BASE_URL and YEASTAR_API_PATH",
            }
        }
        .into());
    };
    match answer.get("errcode").and_then(integer) {
        Some(0) => Ok(answer),
        Some(errcode) => {
            let errmsg = answer.get("errmsg").and_then(Value::as_str).unwrap_or("");
            Err(CallError::from_errcode(
                endpoint,
                errcode,
                errmsg.to_owned(),
            ))
        }
        None => Err(PbxError::Rejected(Reason::NotTheApi {
            status: status.as_u16(),
            what: "answer without an errcode",
        })
        .into()),
    }
}

/// An answer's `list` as an array of Session_Info: no `list`, or `null`,
/// is none; a lone object is one.
fn session_list(mut answer: Value) -> Result<Vec<Value>, CallError> {
    match answer.get_mut("list").map(Value::take) {
        Some(Value::Array(list)) => Ok(list),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(one @ Value::Object(_)) => Ok(vec![one]),
        Some(_) => {
            Err(PbxError::Rejected("answer's `list` is not a list of Session_Info".into()).into())
        }
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
            .ok_or_else(|| PbxError::Transient(format!("token answer without `{key}`").into()))
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

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[tokio::test]
    async fn an_unanswered_call_keeps_its_cause_and_never_shows_the_token() {
        // Nothing listens on port 1: the connection is refused at once.
        let api = Api::new(
            "http://127.0.0.1:1",
            "openapi/v1.0",
            Duration::from_secs(2),
            RequestBudget::default(),
        )
        .unwrap();
        let id = SessionId::new(2862).unwrap();
        let error = PbxError::from(
            api.message_session(&Secret::new("token-5e1f"), id)
                .await
                .unwrap_err(),
        );
        assert!(
            matches!(error, PbxError::Transient(Reason::Http(_))),
            "{error:?}"
        );
        let chain = format!("{:#}", anyhow::Error::from(error.clone()));
        let printed = format!("{error} {error:?} {chain}");
        assert!(!printed.contains("token-5e1f"), "{printed}");
        assert!(
            error.source().is_some(),
            "the HTTP client's error is the source"
        );
        assert!(
            !chain.contains("error sending request: error sending request"),
            "{chain}"
        );
    }
}
