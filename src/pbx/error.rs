//! What a PBX call can end in, as the caller must branch on it.

/// A failed PBX call. Each variant says what the worker does about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PbxError {
    /// Connect/timeout, HTTP 5xx or 429, errcode -2 or 70082, a persistent
    /// `10004`: the PBX may answer later. The worker retries with backoff and
    /// keeps the delivery unacked meanwhile.
    #[error("PBX temporarily unavailable: {0}")]
    Transient(String),
    /// errcode 60001, or 40002 for the session id: the session does not exist
    /// (any more). Not retried; the stored row is marked missing.
    #[error("session not found on the PBX")]
    NotFound,
    /// The PBX refused this request for good (another errcode) or answered
    /// with something that is not a Session_Info. Retrying cannot help; the
    /// event is dead-lettered with this reason.
    #[error("PBX rejected the request: {0}")]
    Rejected(String),
    /// Credentials refused, access denied, token cap reached, IP blocked or
    /// forbidden, wrong API path. Not the event's fault: an operator must act.
    /// The worker holds its deliveries and tries again later.
    #[error("PBX configuration problem ({reason}): {action}")]
    Configuration {
        /// What the PBX answered, e.g. `errcode -1 FAILURE` or `HTTP 404`.
        reason: String,
        /// What the operator must do.
        action: &'static str,
    },
}

impl PbxError {
    /// The error for a non-zero errcode that is not specific to one endpoint.
    pub(crate) fn from_errcode(errcode: i64, errmsg: &str) -> Self {
        let configuration = |action| PbxError::Configuration {
            reason: format!("errcode {errcode} {errmsg}"),
            action,
        };
        match errcode {
            -2 | 70082 => PbxError::Transient(format!("errcode {errcode} {errmsg}")),
            -1 => configuration(
                "the PBX refused YEASTAR_CLIENT_ID/YEASTAR_CLIENT_SECRET; fix the credentials (5 failures in a row block this IP)",
            ),
            10005 => configuration(
                "the API application lacks permission; grant it in the PBX portal (Integrations > API)",
            ),
            10001 => configuration(
                "the PBX has no such interface; check YEASTAR_BASE_URL and YEASTAR_API_PATH",
            ),
            60002 => configuration(
                "the application holds 8 access tokens already; revoke some or wait 30 minutes for them to expire",
            ),
            70004 => configuration(
                "the PBX blocked this IP after failed logins; an administrator must lift the block in the PBX portal",
            ),
            70087 => configuration(
                "this IP is not on the PBX's API allow-list; add it in the PBX portal",
            ),
            _ => PbxError::Rejected(format!("errcode {errcode} {errmsg}")),
        }
    }
}
