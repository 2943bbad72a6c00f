//! The vocabulary of processing one delivery, shared by the pipeline, its
//! ports and the decision: what the PBX answered (`Answer`), what writing
//! it did (`BatchResult`), how each can fail, and what happened to the
//! delivery in the end (`Processed`). Data only: no I/O, no policy.

use chrono::{DateTime, Utc};

use crate::session::{FetchedSession, SessionId};

/// How recent an answer is: (when its request was sent, when it arrived),
/// compared in that order.
pub type Recency = (DateTime<Utc>, DateTime<Utc>);

/// What the PBX answered for one session.
#[derive(Clone, Debug)]
pub enum Answer {
    Found(Box<FetchedSession>),
    /// The PBX said (at `seen_at`, to a request sent at `requested_at`) the
    /// session does not exist.
    Missing {
        id: SessionId,
        requested_at: DateTime<Utc>,
        seen_at: DateTime<Utc>,
    },
}

impl Answer {
    pub fn session_id(&self) -> SessionId {
        match self {
            Answer::Found(f) => f.info.id,
            Answer::Missing { id, .. } => *id,
        }
    }

    /// When the request this answers was sent: the order answers are kept
    /// in (a request sent later sees a newer state of the session).
    pub fn requested_at(&self) -> DateTime<Utc> {
        match self {
            Answer::Found(f) => f.requested_at,
            Answer::Missing { requested_at, .. } => *requested_at,
        }
    }

    /// When the PBX gave this answer: breaks a tie on `requested_at`.
    pub fn answered_at(&self) -> DateTime<Utc> {
        match self {
            Answer::Found(f) => f.fetched_at,
            Answer::Missing { seen_at, .. } => *seen_at,
        }
    }

    /// The order of answers for one session, newest last: by request time,
    /// then by answer time. The store's stale guard compares the same pair.
    pub fn recency(&self) -> Recency {
        (self.requested_at(), self.answered_at())
    }
}

/// Why a session could not be fetched, as the decision needs it (the
/// adapter's own error keeps the detail).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The PBX may answer later (after the source's own retries).
    #[error("PBX unavailable: {0}")]
    Transient(String),
    /// The PBX refused this request for good.
    #[error("{0}")]
    Rejected(String),
    /// The PBX refuses the worker's configuration: not the event's fault.
    #[error("{0}")]
    Configuration(String),
}

/// The batch rule: indexes of the newest answer per session (by `recency`:
/// the later-sent request, then the later answer; a full tie keeps the
/// first), in session order, the order rows are locked in. A batch never
/// touches one key twice.
pub fn newest_per_session(answers: &[Answer]) -> Vec<usize> {
    let mut newest: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        let id = answer.session_id().get();
        match newest.get(&id) {
            Some(&j) if answers[j].recency() >= answer.recency() => {}
            _ => {
                newest.insert(id, i);
            }
        }
    }
    newest.into_values().collect()
}

/// What writing one answer did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// The rows now reflect this answer, and their content changed (the
    /// change was announced).
    Written,
    /// The answer was accepted (its request and answer times stored) but
    /// said what the rows already said: no content changed, nothing was
    /// announced.
    Unchanged,
    /// A newer answer was already stored.
    Stale,
    /// A newer answer for the same session in the same batch was written.
    Superseded,
    /// The session does not exist; `marked` if its row was marked missing.
    Missing { marked: bool },
}

/// Why an answer could not be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The database cannot take writes now (after the sink's own retries).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused this answer's data for good.
    #[error("database refused the data: {0}")]
    Refused(String),
}

/// What happened to one delivery before it is settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Processed {
    /// An answer for its session was committed (or found superseded).
    Committed(BatchResult),
    /// An event type this deployment does not handle.
    Skipped { event_type: i64 },
    /// The body is not an event we can read.
    Malformed { reason: String },
    /// Its session could not be fetched.
    FetchFailed {
        session_id: SessionId,
        error: FetchError,
    },
    /// Its session's answer could not be written.
    WriteFailed(WriteError),
    /// Processing panicked.
    Crashed { panic: String },
    /// The worker stopped before it was processed.
    Abandoned { reason: String },
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;
    use crate::session::SessionInfo;

    fn at(second: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, second).unwrap()
    }

    /// "Not found", asked and answered in the same second.
    fn missing(id: i64, second: u32) -> Answer {
        missing_asked(id, second, second)
    }

    fn missing_asked(id: i64, requested: u32, answered: u32) -> Answer {
        Answer::Missing {
            id: SessionId::new(id).expect("positive"),
            requested_at: at(requested),
            seen_at: at(answered),
        }
    }

    fn found(id: i64, requested: u32, answered: u32) -> Answer {
        Answer::Found(Box::new(FetchedSession {
            info: SessionInfo::decode(json!({ "id": id })).expect("an id"),
            requested_at: at(requested),
            fetched_at: at(answered),
        }))
    }

    #[test]
    fn a_batch_keeps_the_newest_answer_per_session_in_key_order() {
        let batch = [
            missing(9, 1),
            missing(3, 5),
            missing(9, 7),
            missing(3, 2),
            missing(5, 0),
        ];
        assert_eq!(newest_per_session(&batch), vec![1, 4, 2]);
    }

    #[test]
    fn of_two_answers_given_at_once_the_first_is_kept() {
        assert_eq!(newest_per_session(&[missing(1, 3), missing(1, 3)]), vec![0]);
    }

    #[test]
    fn the_answer_to_the_later_sent_request_wins_even_when_it_arrived_first() {
        // Requested at 1, answered (slowly) at 9; requested at 2, answered at 3.
        let slow_old = found(7, 1, 9);
        let quick_new = found(7, 2, 3);
        assert_eq!(
            newest_per_session(&[quick_new.clone(), slow_old.clone()]),
            vec![0]
        );
        assert_eq!(newest_per_session(&[slow_old, quick_new]), vec![1]);
    }

    #[test]
    fn of_two_requests_sent_at_once_the_later_answer_wins() {
        assert_eq!(
            newest_per_session(&[found(4, 2, 6), found(4, 2, 5)]),
            vec![0]
        );
        assert_eq!(
            newest_per_session(&[found(4, 2, 5), found(4, 2, 6)]),
            vec![1]
        );
    }

    #[test]
    fn found_and_missing_are_ordered_alike_by_request_time() {
        // "Not found" to a request sent after the one that found it wins,
        // and loses to one sent later still.
        assert_eq!(
            newest_per_session(&[found(8, 1, 8), missing_asked(8, 2, 3)]),
            vec![1]
        );
        assert_eq!(
            newest_per_session(&[missing_asked(8, 2, 3), found(8, 4, 5)]),
            vec![1]
        );
    }
}
