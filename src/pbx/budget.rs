//! `RequestBudget`: when this process may send its next request to the PBX.
//! Two rules, both optional: a rate (`ENRICHER_PBX_MAX_RPS`: requests
//! spaced `1/rate` apart, a token bucket that holds one token, so the PBX
//! never sees a burst), and a "not before" instant a `Retry-After` on HTTP
//! 429/503 sets for every request. Every request to the PBX awaits `admit`
//! just before it is sent. Knows nothing of HTTP beyond the header's text.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

/// The longest `Retry-After` honoured: a PBX asking for more is waited on
/// this long, then asked again.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct RequestBudget {
    /// The spacing between requests; `None`: no rate limit.
    interval: Option<Duration>,
    state: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    /// The earliest the next request may go under the rate.
    next: Option<Instant>,
    /// No request before this (the PBX's `Retry-After`).
    not_before: Option<Instant>,
}

impl RequestBudget {
    /// At most `max_per_second` requests a second (spaced evenly); `None`
    /// or 0: no rate limit (a `Retry-After` is still honoured).
    pub fn new(max_per_second: Option<u32>) -> Self {
        Self {
            interval: max_per_second
                .filter(|rate| *rate > 0)
                .map(|rate| Duration::from_secs(1) / rate),
            state: Mutex::default(),
        }
    }

    /// Waits until a request may be sent, and takes its turn. Returns the
    /// wall-clock time it was let through: what the request is stamped with
    /// (`requested_at`). A turn is never handed back: a caller dropped while
    /// waiting leaves a gap, never a burst.
    pub async fn admit(&self) -> DateTime<Utc> {
        loop {
            let turn = self.take_turn(Instant::now());
            tokio::time::sleep_until(turn).await;
            // A Retry-After that came in while this request waited puts it
            // in line again, behind the hold-off.
            if self.not_before().is_none_or(|at| at <= Instant::now()) {
                return Utc::now();
            }
        }
    }

    /// Holds every request back until `wait` from now (never shortening an
    /// earlier hold-off).
    pub fn hold_off(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut slots = self.slots();
        if slots.not_before.is_none_or(|at| at < until) {
            slots.not_before = Some(until);
        }
    }

    /// The instant of the next turn from `now`, which is then taken.
    fn take_turn(&self, now: Instant) -> Instant {
        let mut slots = self.slots();
        let mut turn = now;
        if let Some(not_before) = slots.not_before {
            turn = turn.max(not_before);
        }
        if let Some(interval) = self.interval {
            if let Some(next) = slots.next {
                turn = turn.max(next);
            }
            slots.next = Some(turn + interval);
        }
        turn
    }

    fn not_before(&self) -> Option<Instant> {
        self.slots().not_before
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding this lock leaves consistent instants.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A `Retry-After` header's wait, in its delta-seconds form, capped at
/// `MAX_RETRY_AFTER`; `None` for anything else (an HTTP date, garbage): the
/// usual backoff applies then.
pub(crate) fn retry_after(value: &str) -> Option<Duration> {
    let seconds: u64 = value.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Admits `n` requests from `concurrent` tasks and returns how long it
    /// took, in paused time.
    async fn admit_all(budget: Arc<RequestBudget>, n: usize, concurrent: usize) -> Duration {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..concurrent {
            let budget = Arc::clone(&budget);
            let share = n / concurrent + usize::from(task < n % concurrent);
            tasks.spawn(async move {
                for _ in 0..share {
                    budget.admit().await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("an admitting task");
        }
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn n_requests_at_rate_r_take_n_over_r_seconds() {
        // 50 requests at 10/s from 8 tasks: the first goes at once, then one
        // every 100 ms.
        let took = admit_all(Arc::new(RequestBudget::new(Some(10))), 50, 8).await;
        assert_eq!(took, Duration::from_millis(4_900));
        let took = admit_all(Arc::new(RequestBudget::new(Some(200))), 1_000, 16).await;
        assert_eq!(took, Duration::from_millis(4_995));
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_never_bursting_after_a_quiet_spell() {
        let budget = RequestBudget::new(Some(4));
        budget.admit().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        // Quiet for 10 s: the next goes at once, the one after 250 ms later.
        let started = Instant::now();
        budget.admit().await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        budget.admit().await;
        assert_eq!(started.elapsed(), Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_rate_requests_go_at_once() {
        let took = admit_all(Arc::new(RequestBudget::new(None)), 1_000, 16).await;
        assert_eq!(took, Duration::ZERO);
        let took = admit_all(Arc::new(RequestBudget::new(Some(0))), 10, 2).await;
        assert_eq!(took, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_off_keeps_every_request_back_even_ones_already_waiting() {
        let budget = Arc::new(RequestBudget::new(Some(10)));
        budget.admit().await;
        let started = Instant::now();
        // This one's turn is in 100 ms; the hold-off comes while it waits.
        let waiting = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move {
                budget.admit().await;
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        budget.hold_off(Duration::from_secs(2));
        // A shorter hold-off does not shorten it.
        budget.hold_off(Duration::from_secs(1));
        let admitted = waiting.await.unwrap();
        assert_eq!(admitted - started, Duration::from_millis(2_010));
        // The next is spaced from that one by the rate: no burst after a
        // hold-off.
        budget.admit().await;
        assert_eq!(started.elapsed(), Duration::from_millis(2_110));
        let without_rate = RequestBudget::new(None);
        without_rate.hold_off(Duration::from_secs(1));
        let started = Instant::now();
        without_rate.admit().await;
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_in_seconds_is_honoured_up_to_a_minute() {
        assert_eq!(retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(retry_after("0"), Some(Duration::ZERO));
        assert_eq!(retry_after("3600"), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after("18446744073709551615"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn a_retry_after_that_is_not_delta_seconds_is_ignored() {
        for value in [
            "Wed, 21 Oct 2026 07:28:00 GMT",
            "-5",
            "1.5",
            "",
            "soon",
            "99999999999999999999999",
        ] {
            assert_eq!(retry_after(value), None, "{value:?}");
        }
    }
}
