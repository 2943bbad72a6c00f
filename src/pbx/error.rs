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
/// errcode `INTERFACE NOT EXISTED`: a wrong path, or firmware without this
/// endpoint.
const INTERFACE_NOT_EXISTED: i64 = 10001;

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
/// client's to renew, a missing optional endpoint the client's to do
/// without; everything else is already a `PbxError`.
#[derive(Debug, thiserror::Error)]
pub(super) enum CallError {
    /// errcode 10004: renew the token and retry once.
    #[error("PBX refused the access token: {0}")]
    TokenExpired(Reason),
    /// The firmware lacks this optional endpoint (`message_session/query`):
    /// use `message_session/get` instead, for good.
    #[error("PBX lacks this interface: {0}")]
    Unsupported(Reason),
    #[error(transparent)]
    Failed(PbxError),
}

impl From<PbxError> for CallError {
    fn from(e: PbxError) -> Self {
        CallError::Failed(e)
    }
}

/// For a caller that does not renew its token, a 10004 is a refusal like
/// any other; for one that cannot do without the endpoint, its absence is
/// the PBX's configuration.
impl From<CallError> for PbxError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::TokenExpired(reason) => PbxError::Rejected(reason),
            CallError::Unsupported(reason) => PbxError::Configuration {
                reason,
                action: NO_SUCH_INTERFACE,
            },
            CallError::Failed(e) => e,
        }
    }
}

/// What an operator does about an endpoint the PBX does not know.
const NO_SUCH_INTERFACE: &str =
    "the PBX has no such interface; check YEASTAR_BASE_URL and YEASTAR_API_PATH";

impl CallError {
    /// The errcode table: what a non-zero errcode from `endpoint` means.
    ///
    /// For `message_session/query`, "not found" (60001) means none of the
    /// ids asked for (each is then asked for alone), and 10001 that the
    /// firmware lacks `query`; for `message_session/list`, 60001 means no
    /// sessions (an empty page).
    pub(super) fn from_errcode(endpoint: PbxEndpoint, errcode: i64, errmsg: String) -> Self {
        let reason = Reason::Errcode { errcode, errmsg };
        let configuration = |reason, action| PbxError::Configuration { reason, action };
        let query = endpoint == PbxEndpoint::MessageSessionQuery;
        let list = endpoint == PbxEndpoint::MessageSessionList;
        CallError::Failed(match errcode {
            TOKEN_EXPIRED => return CallError::TokenExpired(reason),
            INTERFACE_NOT_EXISTED if query => return CallError::Unsupported(reason),
            60001 | 40002 if endpoint == PbxEndpoint::MessageSessionGet => PbxError::NotFound,
            60001 if query || list => PbxError::NotFound,
            -2 | 70082 => PbxError::Transient(reason),
            CREDENTIALS_REFUSED => configuration(
                reason,
                "the PBX refused YEASTAR_CLIENT_ID/YEASTAR_CLIENT_SECRET; fix the credentials (5 failures in a row block this IP)",
            ),
            10005 => configuration(
                reason,
                "the API application lacks permission; grant it in the PBX portal (Integrations > API)",
            ),
            INTERFACE_NOT_EXISTED => configuration(reason, NO_SUCH_INTERFACE),
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

    /// What an HTTP status says on its own, before any body is read: only
    /// that firmware without `message_session/query` answers it 404.
    pub(super) fn from_status(endpoint: PbxEndpoint, status: u16) -> Option<Self> {
        (endpoint == PbxEndpoint::MessageSessionQuery && status == 404)
            .then_some(CallError::Unsupported(Reason::Status(status)))
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
    fn a_query_the_firmware_lacks_is_unsupported_and_only_the_query() {
        let unsupported = |e: CallError| matches!(e, CallError::Unsupported(_));
        let query = PbxEndpoint::MessageSessionQuery;
        assert!(unsupported(CallError::from_errcode(
            query,
            10001,
            "X".into()
        )));
        assert!(unsupported(
            CallError::from_status(query, 404).expect("404 on query says something")
        ));
        // Everywhere else a missing interface is the operator's to fix.
        assert!(matches!(
            error(PbxEndpoint::MessageSessionGet, 10001),
            PbxError::Configuration { .. }
        ));
        assert!(CallError::from_status(PbxEndpoint::MessageSessionGet, 404).is_none());
        assert!(CallError::from_status(query, 503).is_none());
        // A caller that cannot do without it sees a configuration problem.
        let lacking = PbxError::from(CallError::from_errcode(query, 10001, "X".into()));
        assert!(
            matches!(lacking, PbxError::Configuration { .. }),
            "{lacking}"
        );
    }

    #[test]
    fn a_query_refused_for_its_parameters_is_rejected_and_60001_means_none_found() {
        let query = PbxEndpoint::MessageSessionQuery;
        assert!(matches!(error(query, 40002), PbxError::Rejected(_)));
        assert!(matches!(error(query, 40001), PbxError::Rejected(_)));
        assert!(matches!(error(query, 60001), PbxError::NotFound));
        assert!(matches!(error(query, -2), PbxError::Transient(_)));
        assert!(matches!(
            error(query, 10005),
            PbxError::Configuration { .. }
        ));
        assert!(matches!(
            CallError::from_errcode(query, 10004, "X".into()),
            CallError::TokenExpired(_)
        ));
    }

    #[test]
    fn a_list_refused_for_its_parameters_is_rejected_and_60001_means_no_sessions() {
        let list = PbxEndpoint::MessageSessionList;
        assert!(matches!(error(list, 40002), PbxError::Rejected(_)));
        assert!(matches!(error(list, 60001), PbxError::NotFound));
        assert!(matches!(error(list, 70082), PbxError::Transient(_)));
        assert!(matches!(error(list, 10001), PbxError::Configuration { .. }));
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
