//! What a PBX call can end in, as the caller must branch on it, and the one
//! errcode table that decides it. No I/O, and never a secret: an HTTP error
//! is only kept stripped of its URL, which carries the access token.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::metrics::PbxEndpoint;
use crate::session::DecodeError;

/// errcode `TOKEN EXPIRED`, also what a malformed or unknown token gets.
pub(super) const TOKEN_EXPIRED: i64 = 10004;
/// errcode `FAILURE` on a login: bad credentials. Five in a row get this IP
/// blocked.
pub(super) const CREDENTIALS_REFUSED: i64 = -1;
/// errcode `ACCOUNT IP BLOCKED`: only an administrator can lift it.
pub(super) const IP_BLOCKED: i64 = 70004;

/// A failed PBX call. Each variant says what the worker does about it.
///
/// The reason is part of the message; what lies beneath it (an HTTP client
/// or decoding error) is this error's `source`.
#[derive(Debug, Clone)]
pub enum PbxError {
    /// Connect/timeout, HTTP 5xx or 429, errcode -2 or 70082, a persistent
    /// `10004`: the PBX may answer later. The worker retries with backoff and
    /// keeps the delivery unacked meanwhile.
    Transient(Reason),
    /// errcode 60001, or 40002 for the session id: the session does not exist
    /// (any more). Not retried; the stored row is marked missing.
    NotFound,
    /// The PBX refused this request for good (another errcode) or answered
    /// with something that is not a Session_Info. Retrying cannot help; the
    /// event is dead-lettered with this reason.
    Rejected(Reason),
    /// Credentials refused, access denied, token cap reached, IP blocked or
    /// forbidden, wrong API path. Not the event's fault: an operator must act.
    /// The worker holds its deliveries and tries again later.
    Configuration {
        /// What the PBX answered, e.g. `errcode -1 FAILURE` or `HTTP 404`.
        reason: Reason,
        /// What the operator must do.
        action: &'static str,
    },
}

impl PbxError {
    /// The PBX's errcode, when the failure is one.
    pub fn errcode(&self) -> Option<i64> {
        match self.reason()? {
            Reason::Errcode { errcode, .. } => Some(*errcode),
            _ => None,
        }
    }

    fn reason(&self) -> Option<&Reason> {
        match self {
            PbxError::Transient(reason)
            | PbxError::Rejected(reason)
            | PbxError::Configuration { reason, .. } => Some(reason),
            PbxError::NotFound => None,
        }
    }
}

impl fmt::Display for PbxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PbxError::Transient(reason) => write!(f, "PBX temporarily unavailable: {reason}"),
            PbxError::NotFound => f.write_str("session not found on the PBX"),
            PbxError::Rejected(reason) => write!(f, "PBX rejected the request: {reason}"),
            PbxError::Configuration { reason, action } => {
                write!(f, "PBX configuration problem ({reason}): {action}")
            }
        }
    }
}

impl Error for PbxError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        // The reason's own text is already in the message: only what lies
        // beneath it continues the chain.
        self.reason()?.source()
    }
}

/// Why a call failed, as the PBX (or the way to it) put it; an errcode stays
/// a number.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Reason {
    /// A JSON answer with a non-zero errcode.
    #[error("errcode {errcode} {errmsg}")]
    Errcode { errcode: i64, errmsg: String },
    /// An HTTP status that says the call failed, with no errcode to go by.
    #[error("HTTP {}", status_line(*.0))]
    Status(u16),
    /// An answer that is not the API's (`what` says how).
    #[error("HTTP {} {what}", status_line(*.status))]
    NotTheApi { status: u16, what: &'static str },
    /// No answer: no connection, a timeout, a body that broke off (or an
    /// HTTP client that could not be built).
    #[error(transparent)]
    Http(HttpError),
    /// A Session_Info that cannot be decoded.
    #[error(transparent)]
    Session(#[from] DecodeError),
    /// Anything else, in words.
    #[error("{0}")]
    Other(String),
}

impl From<&str> for Reason {
    fn from(words: &str) -> Self {
        Reason::Other(words.to_owned())
    }
}

impl From<String> for Reason {
    fn from(words: String) -> Self {
        Reason::Other(words)
    }
}

/// `503 Service Unavailable`, as the status line says it.
fn status_line(status: u16) -> String {
    reqwest::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

/// An HTTP client error without its URL: the only way to make one strips it.
#[derive(Debug, Clone, thiserror::Error)]
#[error(transparent)]
pub struct HttpError(Arc<reqwest::Error>);

impl HttpError {
    pub(super) fn new(error: reqwest::Error) -> Self {
        Self(Arc::new(error.without_url()))
    }
}

/// A call that failed before the client handled it: a refused token is the
/// client's to renew; everything else is already a `PbxError`.
#[derive(Debug)]
pub(super) enum CallError {
    /// errcode 10004: renew the token and retry once.
    TokenExpired(Reason),
    Failed(PbxError),
}

impl From<PbxError> for CallError {
    fn from(e: PbxError) -> Self {
        CallError::Failed(e)
    }
}

/// For a caller that does not renew its token, a 10004 is a refusal like
/// any other.
impl From<CallError> for PbxError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::TokenExpired(reason) => PbxError::Rejected(reason),
            CallError::Failed(e) => e,
        }
    }
}

impl CallError {
    /// The errcode table: what a non-zero errcode from `endpoint` means.
    pub(super) fn from_errcode(endpoint: PbxEndpoint, errcode: i64, errmsg: String) -> Self {
        let reason = Reason::Errcode { errcode, errmsg };
        let configuration = |reason, action| PbxError::Configuration { reason, action };
        CallError::Failed(match errcode {
            TOKEN_EXPIRED => return CallError::TokenExpired(reason),
            60001 | 40002 if endpoint == PbxEndpoint::MessageSessionGet => PbxError::NotFound,
            -2 | 70082 => PbxError::Transient(reason),
            CREDENTIALS_REFUSED => configuration(
                reason,
                "the PBX refused YEASTAR_CLIENT_ID/YEASTAR_CLIENT_SECRET; fix the credentials (5 failures in a row block this IP)",
            ),
            10005 => configuration(
                reason,
                "the API application lacks permission; grant it in the PBX portal (Integrations > API)",
            ),
            10001 => configuration(
                reason,
                "the PBX has no such interface; check YEASTAR_BASE_URL and YEASTAR_API_PATH",
            ),
            60002 => configuration(
                reason,
                "the application holds 8 access tokens already; revoke some or wait 30 minutes for them to expire",
            ),
            IP_BLOCKED => configuration(
                reason,
                "the PBX blocked this IP after failed logins; an administrator must lift the block in the PBX portal",
            ),
            70087 => configuration(
                reason,
                "this IP is not on the PBX's API allow-list; add it in the PBX portal",
            ),
            _ => PbxError::Rejected(reason),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(endpoint: PbxEndpoint, errcode: i64) -> PbxError {
        CallError::from_errcode(endpoint, errcode, "FAILURE".into()).into()
    }

    #[test]
    fn an_errcode_stays_a_number_and_reads_as_the_pbx_said_it() {
        let refused = error(PbxEndpoint::GetToken, CREDENTIALS_REFUSED);
        assert_eq!(refused.errcode(), Some(-1));
        assert!(matches!(refused, PbxError::Configuration { .. }));
        assert!(
            refused.to_string().contains("(errcode -1 FAILURE)"),
            "{refused}"
        );
        let rejected = error(PbxEndpoint::MessageSessionGet, 40001);
        assert_eq!(
            rejected.to_string(),
            "PBX rejected the request: errcode 40001 FAILURE"
        );
    }

    #[test]
    fn not_found_codes_mean_not_found_only_for_the_session_lookup() {
        assert!(matches!(
            error(PbxEndpoint::MessageSessionGet, 40002),
            PbxError::NotFound
        ));
        assert!(matches!(
            error(PbxEndpoint::GetToken, 40002),
            PbxError::Rejected(_)
        ));
        assert_eq!(error(PbxEndpoint::GetToken, 40002).errcode(), Some(40002));
    }

    #[test]
    fn an_http_status_reads_as_its_status_line() {
        let e = PbxError::Transient(Reason::Status(503));
        assert_eq!(
            e.to_string(),
            "PBX temporarily unavailable: HTTP 503 Service Unavailable"
        );
        assert_eq!(e.errcode(), None);
    }
}
