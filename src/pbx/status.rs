//! `PbxStatus`: what the PBX last said about this process's credentials,
//! written by the token cache on every grant or refusal and read by
//! `/readyz`. It only records; it never acts on what it records.

use std::sync::Mutex;

/// Shared (in an `Arc`) by the token cache and the health endpoint.
#[derive(Debug, Default)]
pub struct PbxStatus {
    access: Mutex<PbxAccess>,
}

/// The PBX's last word on this process's credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PbxAccess {
    /// No token obtained yet (none asked for, or the PBX was unreachable).
    #[default]
    Pending,
    /// The PBX granted a token (by login or refresh). An idle worker's token
    /// may since have expired: it is renewed on next use, so this still
    /// counts as ready.
    Granted,
    /// The PBX refused the credentials or configuration; an operator must
    /// act (the reason says what).
    Refused(String),
}

impl PbxStatus {
    /// The PBX granted an access token.
    pub fn granted(&self) {
        *self.lock() = PbxAccess::Granted;
    }

    /// The PBX refused the credentials or configuration.
    pub fn refused(&self, reason: &impl std::fmt::Display) {
        *self.lock() = PbxAccess::Refused(reason.to_string());
    }

    pub fn access(&self) -> PbxAccess {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PbxAccess> {
        // A poisoned lock only means a writer panicked mid-assignment of a
        // plain value; what it holds is still a valid state.
        self.access.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_replaces_a_grant_and_a_new_grant_clears_it() {
        let status = PbxStatus::default();
        assert_eq!(status.access(), PbxAccess::Pending);
        status.granted();
        status.refused(&"errcode -1 FAILURE");
        assert_eq!(
            status.access(),
            PbxAccess::Refused("errcode -1 FAILURE".into())
        );
        status.granted();
        assert_eq!(status.access(), PbxAccess::Granted);
    }
}
