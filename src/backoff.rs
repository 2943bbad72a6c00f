//! Exponential backoff with full jitter, bounded by a number of attempts.
//! Shared by everything that retries (PBX calls, database writes).

use std::time::Duration;

use rand::Rng;

/// How a bounded retry waits: attempt `n` (0-based) sleeps a random time in
/// `[base/2, base]` where `base = min(initial * 2^n, max)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Tries in all, the first included.
    pub attempts: u32,
}

impl Backoff {
    /// The ceiling for attempt `n` before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(20));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Runs `op` until it succeeds, fails in a way `retryable` rejects, or
    /// `attempts` are spent, sleeping `delay(n)` between tries. `on_retry`
    /// is told of each failure that will be retried (for the caller's log).
    pub async fn retry<T, E, F, Fut>(
        &self,
        mut op: F,
        retryable: impl Fn(&E) -> bool,
        on_retry: impl Fn(&E, u32, Duration),
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut attempt = 0;
        loop {
            match op().await {
                Err(e) if attempt + 1 < self.attempts && retryable(&e) => {
                    let wait = self.delay(attempt);
                    on_retry(&e, attempt, wait);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The jittered wait after failed attempt `n`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_up_to_the_cap_and_stays_within_its_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts: 10,
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(40), Duration::from_secs(1));
        for attempt in 0..6 {
            let d = b.delay(attempt);
            assert!(
                d >= b.ceiling(attempt) / 2 && d <= b.ceiling(attempt),
                "{d:?}"
            );
        }
    }
}
