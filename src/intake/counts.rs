//! `IntakeCounts`: this intake's own tally of answered webhooks, per
//! outcome, for its shutdown log line and for tests (the process-wide
//! Prometheus series live in `metrics`). It only counts; it never decides.

use std::sync::atomic::{AtomicU64, Ordering};

use super::decide::IntakeOutcome;
use crate::metrics::WebhookOutcome;

/// Webhook requests answered, one counter per `WebhookOutcome`, in the
/// order of `WebhookOutcome::ALL` (its variants' discriminants).
#[derive(Debug, Default)]
pub struct IntakeCounts([AtomicU64; WebhookOutcome::ALL.len()]);

/// A copy of the counts at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IntakeCountsSnapshot {
    pub accepted: u64,
    pub unsigned: u64,
    pub bad_signature: u64,
    pub too_large: u64,
    pub not_json: u64,
    pub not_an_event: u64,
    pub not_forwarded: u64,
    pub unroutable: u64,
    pub unavailable: u64,
}

impl IntakeCountsSnapshot {
    /// `(label, count)` for every outcome, in a fixed order.
    pub fn by_label(&self) -> [(&'static str, u64); 9] {
        [
            ("accepted", self.accepted),
            ("unsigned", self.unsigned),
            ("bad_signature", self.bad_signature),
            ("too_large", self.too_large),
            ("not_json", self.not_json),
            ("not_an_event", self.not_an_event),
            ("not_forwarded", self.not_forwarded),
            ("unroutable", self.unroutable),
            ("unavailable", self.unavailable),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_label().iter().map(|(_, n)| n).sum()
    }
}

impl IntakeCounts {
    pub fn record(&self, outcome: &IntakeOutcome) {
        self.0[outcome.kind() as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> IntakeCountsSnapshot {
        let get = |outcome: WebhookOutcome| self.0[outcome as usize].load(Ordering::Relaxed);
        IntakeCountsSnapshot {
            accepted: get(WebhookOutcome::Accepted),
            unsigned: get(WebhookOutcome::Unsigned),
            bad_signature: get(WebhookOutcome::BadSignature),
            too_large: get(WebhookOutcome::TooLarge),
            not_json: get(WebhookOutcome::NotJson),
            not_an_event: get(WebhookOutcome::NotAnEvent),
            not_forwarded: get(WebhookOutcome::NotForwarded),
            unroutable: get(WebhookOutcome::Unroutable),
            unavailable: get(WebhookOutcome::Unavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_is_counted_under_its_own_label() {
        let counts = IntakeCounts::default();
        counts.record(&IntakeOutcome::Accepted {
            event_type: Some(30031),
        });
        counts.record(&IntakeOutcome::Accepted { event_type: None });
        counts.record(&IntakeOutcome::BadSignature);
        counts.record(&IntakeOutcome::Unavailable {
            reason: "down".into(),
        });
        let snapshot = counts.snapshot();
        assert_eq!(
            snapshot,
            IntakeCountsSnapshot {
                accepted: 2,
                bad_signature: 1,
                unavailable: 1,
                ..Default::default()
            }
        );
        assert_eq!(snapshot.total(), 4);
        assert_eq!(
            snapshot.by_label().map(|(label, _)| label).to_vec(),
            WebhookOutcome::ALL
                .iter()
                .map(|o| o.as_str())
                .collect::<Vec<_>>(),
            "the same labels, in the same order, as the metric"
        );
    }
}
