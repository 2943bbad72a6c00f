//! The failure policy: `decide` turns what happened to one delivery into
//! the one `Outcome` the worker carries out. Pure: no I/O, no clock, no
//! queue. README.md's failure-policy table is this function in prose, row
//! for row; keep them in step (the tests below are that table).

use crate::backoff::Backoff;
use crate::outcome::{Outcome, Pause};
use crate::processing::{BatchResult, FetchError, Processed, WriteError};

/// What the delivery itself says about its history.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts already made (its `x-enricher-attempts` header; 0 when new).
    pub attempts: u32,
    /// The broker delivered it before (its ack may have been lost).
    pub redelivered: bool,
}

/// The one decision for a delivery. `retry` is the durable retry budget
/// (attempts in all, and the waits between them).
pub fn decide(processed: Processed, attempt: Attempt, retry: &Backoff) -> Outcome {
    let dead_letter = |reason: String, attempts: u32| Outcome::DeadLetter {
        reason,
        attempts,
        // A redelivery may be of an event already dead-lettered whose ack
        // was lost: the settle step asks the dead-letter record first.
        unless_recorded: attempt.redelivered,
    };
    match processed {
        Processed::Committed(BatchResult::Written) => Outcome::Enriched,
        Processed::Committed(
            BatchResult::Unchanged | BatchResult::Stale | BatchResult::Superseded,
        ) => Outcome::Unchanged,
        Processed::Committed(BatchResult::Missing { .. }) => Outcome::NotFound,
        Processed::Skipped { event_type } => Outcome::Skipped { event_type },
        Processed::Malformed { reason } => dead_letter(reason, attempt.attempts.max(1)),
        Processed::FetchFailed {
            error: error @ FetchError::Transient(_),
            ..
        } => {
            let attempts = attempt.attempts.saturating_add(1);
            if attempts >= retry.attempts {
                dead_letter(
                    format!("gave up after {attempts} attempts: {error}"),
                    attempts,
                )
            } else {
                Outcome::Retry {
                    reason: error.to_string(),
                    attempts,
                    delay: retry.delay(attempts - 1),
                }
            }
        }
        Processed::FetchFailed {
            error: FetchError::Rejected(reason),
            ..
        } => dead_letter(reason, attempt.attempts.max(1)),
        Processed::WriteFailed(error @ WriteError::Refused(_)) => {
            dead_letter(error.to_string(), attempt.attempts.max(1))
        }
        Processed::FetchFailed {
            session_id,
            error: FetchError::Configuration(reason),
        } => Outcome::Hold(Pause::Pbx { reason, session_id }),
        Processed::WriteFailed(error @ WriteError::Unavailable(_)) => {
            Outcome::Hold(Pause::Database {
                reason: error.to_string(),
            })
        }
        Processed::Crashed { panic } => Outcome::Crashed { panic },
        Processed::Abandoned { reason } => Outcome::Requeued { reason },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::session::SessionId;

    const RETRY: Backoff = Backoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(600),
        attempts: 12,
    };

    fn fresh() -> Attempt {
        Attempt::default()
    }

    fn session() -> SessionId {
        SessionId::new(7).expect("positive")
    }

    fn dead(reason: &str, attempts: u32, unless_recorded: bool) -> Outcome {
        Outcome::DeadLetter {
            reason: reason.into(),
            attempts,
            unless_recorded,
        }
    }

    /// README's failure-policy table, row for row, plus the successes.
    #[test]
    fn each_result_has_its_outcome() {
        let transient = || Processed::FetchFailed {
            session_id: session(),
            error: FetchError::Transient("HTTP 503".into()),
        };
        let rows: Vec<(Processed, Attempt, Outcome)> = vec![
            (
                Processed::Committed(BatchResult::Written),
                fresh(),
                Outcome::Enriched,
            ),
            // Accepted, but the rows said so already.
            (
                Processed::Committed(BatchResult::Unchanged),
                fresh(),
                Outcome::Unchanged,
            ),
            (
                Processed::Committed(BatchResult::Stale),
                fresh(),
                Outcome::Unchanged,
            ),
            (
                Processed::Committed(BatchResult::Superseded),
                fresh(),
                Outcome::Unchanged,
            ),
            (
                Processed::Committed(BatchResult::Missing { marked: true }),
                fresh(),
                Outcome::NotFound,
            ),
            (
                Processed::Skipped { event_type: 30012 },
                fresh(),
                Outcome::Skipped { event_type: 30012 },
            ),
            // Bad event: dead-lettered at once.
            (
                Processed::Malformed {
                    reason: "not JSON".into(),
                },
                fresh(),
                dead("not JSON", 1, false),
            ),
            // Transient, budget spent: dead-lettered with the count.
            (
                transient(),
                Attempt {
                    attempts: 11,
                    redelivered: false,
                },
                dead(
                    "gave up after 12 attempts: PBX unavailable: HTTP 503",
                    12,
                    false,
                ),
            ),
            // Refused for good, by the PBX or by the database.
            (
                Processed::FetchFailed {
                    session_id: session(),
                    error: FetchError::Rejected("PBX rejected the request: errcode 40001".into()),
                },
                Attempt {
                    attempts: 3,
                    redelivered: false,
                },
                dead("PBX rejected the request: errcode 40001", 3, false),
            ),
            (
                Processed::WriteFailed(WriteError::Refused("22P05".into())),
                fresh(),
                dead("database refused the data: 22P05", 1, false),
            ),
            // PBX configuration: hold and pause, probing with this session.
            (
                Processed::FetchFailed {
                    session_id: session(),
                    error: FetchError::Configuration("errcode -1".into()),
                },
                fresh(),
                Outcome::Hold(Pause::Pbx {
                    reason: "errcode -1".into(),
                    session_id: session(),
                }),
            ),
            // Postgres unavailable: hold and pause.
            (
                Processed::WriteFailed(WriteError::Unavailable("refused".into())),
                fresh(),
                Outcome::Hold(Pause::Database {
                    reason: "database unavailable: refused".into(),
                }),
            ),
            // A crash returns the delivery (the delivery limit bounds it).
            (
                Processed::Crashed {
                    panic: "boom".into(),
                },
                fresh(),
                Outcome::Crashed {
                    panic: "boom".into(),
                },
            ),
            (
                Processed::Abandoned {
                    reason: "stopping".into(),
                },
                fresh(),
                Outcome::Requeued {
                    reason: "stopping".into(),
                },
            ),
        ];
        for (processed, attempt, expected) in rows {
            assert_eq!(
                decide(processed.clone(), attempt, &RETRY),
                expected,
                "{processed:?}"
            );
        }
    }

    #[test]
    fn a_transient_failure_within_budget_waits_longer_each_attempt() {
        for (before, ceiling) in [(0, 5), (1, 10), (2, 20), (10, 600)] {
            let outcome = decide(
                Processed::FetchFailed {
                    session_id: session(),
                    error: FetchError::Transient("timeout".into()),
                },
                Attempt {
                    attempts: before,
                    redelivered: true,
                },
                &RETRY,
            );
            let Outcome::Retry {
                reason,
                attempts,
                delay,
            } = outcome
            else {
                panic!("attempt {before}: {outcome:?}");
            };
            assert_eq!(reason, "PBX unavailable: timeout");
            assert_eq!(attempts, before + 1);
            let ceiling = Duration::from_secs(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} for {before}"
            );
        }
    }

    #[test]
    fn a_redelivered_dead_letter_is_published_only_if_not_recorded() {
        let outcome = decide(
            Processed::Malformed {
                reason: "no session_id".into(),
            },
            Attempt {
                attempts: 0,
                redelivered: true,
            },
            &RETRY,
        );
        assert_eq!(outcome, dead("no session_id", 1, true));
    }
}
