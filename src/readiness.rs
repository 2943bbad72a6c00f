//! `Readiness`: what the parts of a running worker report about the outside
//! systems they depend on, for `GET /readyz`. The worker says whether it is
//! consuming; the PBX client says whether the PBX granted or refused a
//! token. The database is asked directly by the health server (`health`).
//! This module only records; it never acts on what it records.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared (in an `Arc`) by the worker, the PBX client and the health server.
#[derive(Debug, Default)]
pub struct Readiness {
    consuming: AtomicBool,
    pbx: Mutex<PbxAccess>,
}

/// What the PBX last said about this process's credentials.
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

impl Readiness {
    /// The worker's consumer started (`true`) or stopped (`false`).
    pub fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    /// The PBX granted an access token.
    pub fn pbx_granted(&self) {
        *self.pbx_lock() = PbxAccess::Granted;
    }

    /// The PBX refused the credentials or configuration for good.
    pub fn pbx_refused(&self, reason: &impl std::fmt::Display) {
        *self.pbx_lock() = PbxAccess::Refused(reason.to_string());
    }

    pub fn pbx_access(&self) -> PbxAccess {
        self.pbx_lock().clone()
    }

    fn pbx_lock(&self) -> std::sync::MutexGuard<'_, PbxAccess> {
        // A poisoned lock only means a writer panicked mid-assignment of a
        // plain value; what it holds is still a valid state.
        self.pbx.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_replaces_a_grant_and_a_new_grant_clears_it() {
        let readiness = Readiness::default();
        assert_eq!(readiness.pbx_access(), PbxAccess::Pending);
        readiness.pbx_granted();
        readiness.pbx_refused(&"errcode -1 FAILURE");
        assert_eq!(
            readiness.pbx_access(),
            PbxAccess::Refused("errcode -1 FAILURE".into())
        );
        readiness.pbx_granted();
        assert_eq!(readiness.pbx_access(), PbxAccess::Granted);
    }
}
