//! The failure policy: every way enriching an event can fail is classified
//! here, once, into exactly one `Action`. README.md's failure table is this
//! function in prose; keep them in step.

use crate::enricher::EnrichError;
use crate::pbx::PbxError;
use crate::store::StoreError;

/// What the worker does about a failed enrichment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The event can never succeed: dead-letter it with this reason.
    DeadLetter(String),
    /// It may succeed later: republish it to the retry queue (or, when its
    /// attempts are spent, dead-letter it).
    RetryLater(String),
    /// Not the event's fault: the PBX refuses the worker's configuration.
    /// Return the delivery, stop consuming, wait until the PBX accepts us.
    PausePbx(String),
    /// Not the event's fault: the database is unavailable. Return the
    /// delivery, stop consuming, wait until the database answers.
    PauseDatabase(String),
}

/// Classifies a failure left after the in-process retries.
pub fn classify(error: &EnrichError) -> Action {
    match error {
        EnrichError::Pbx(PbxError::Transient(why)) => {
            Action::RetryLater(format!("PBX unavailable: {why}"))
        }
        EnrichError::Pbx(e @ PbxError::Rejected(_)) => Action::DeadLetter(e.to_string()),
        // The enricher turns NotFound into an outcome; should it ever escape
        // as an error, the session is gone and retrying cannot help.
        EnrichError::Pbx(e @ PbxError::NotFound) => Action::DeadLetter(e.to_string()),
        EnrichError::Pbx(e @ PbxError::Configuration { .. }) => Action::PausePbx(e.to_string()),
        EnrichError::Store(e @ StoreError::Refused(_)) => Action::DeadLetter(e.to_string()),
        EnrichError::Store(e @ StoreError::Unavailable(_)) => Action::PauseDatabase(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_action() {
        let pbx = |e| classify(&EnrichError::Pbx(e));
        assert!(matches!(
            pbx(PbxError::Transient("503".into())),
            Action::RetryLater(_)
        ));
        assert!(matches!(
            pbx(PbxError::Rejected("40001".into())),
            Action::DeadLetter(_)
        ));
        assert!(matches!(
            pbx(PbxError::Configuration {
                reason: "errcode -1".into(),
                action: "fix it"
            }),
            Action::PausePbx(_)
        ));
        let store = |e| classify(&EnrichError::Store(e));
        assert!(matches!(
            store(StoreError::Unavailable("down".into())),
            Action::PauseDatabase(_)
        ));
        assert!(matches!(
            store(StoreError::Refused("22P05".into())),
            Action::DeadLetter(_)
        ));
    }
}
