//! `BrokerError`: which step of talking to RabbitMQ failed, and whether the
//! broker refused our topology. It never retries and never logs: the caller
//! decides.

#[derive(Clone, Debug, thiserror::Error)]
#[error("{action}: {detail}")]
pub struct BrokerError {
    pub(super) action: &'static str,
    pub(super) detail: String,
    /// A queue exists with arguments other than ours (PRECONDITION_FAILED):
    /// retrying cannot help, an operator must act.
    pub(super) conflict: bool,
}

impl BrokerError {
    /// Whether the broker refused our topology (see `conflict`).
    pub fn is_topology_conflict(&self) -> bool {
        self.conflict
    }
}

/// `action` failed with a lapin error; a 406 (PRECONDITION_FAILED) marks a
/// topology conflict.
pub(super) fn failed(action: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |e| BrokerError {
        action,
        conflict: matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406),
        detail: e.to_string(),
    }
}

/// `action` did not succeed for a reason lapin did not raise as an error.
pub(super) fn refused(action: &'static str, detail: String) -> BrokerError {
    BrokerError {
        action,
        detail,
        conflict: false,
    }
}
