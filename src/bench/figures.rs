//! What a bench run measured (`Drain`, `Ceiling`, `Latency`), the ratios
//! derived from it, and issue 10's targets with pass or fail. Arithmetic
//! only: no I/O, no clock.

use std::time::Duration;

/// The broker alone: preloaded events consumed and acked, nothing else.
#[derive(Clone, Debug)]
pub struct Ceiling {
    pub name: &'static str,
    pub events: u64,
    pub seconds: f64,
}

impl Ceiling {
    pub fn rate(&self) -> f64 {
        rate(self.events, self.seconds)
    }
}

/// The worker draining a preloaded workload.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    pub name: String,
    pub events: u64,
    pub distinct_sessions: u64,
    /// From the worker's readiness to its last settle.
    pub seconds: f64,
    /// `message_session/get` plus `message_session/query` calls.
    pub pbx_calls: u64,
    /// Session ids asked for over those calls.
    pub ids_requested: u64,
    /// `message_sessions` rows of this run.
    pub sessions_stored: i64,
    /// The worker process's `VmHWM`.
    pub peak_rss_kib: Option<u64>,
    /// Outcomes other than `enriched`, if any (e.g. `unchanged 12`).
    pub other_outcomes: String,
}

impl Drain {
    pub fn rate(&self) -> f64 {
        rate(self.events, self.seconds)
    }

    /// Session ids per PBX call; `None` without calls.
    pub fn ids_per_call(&self) -> Option<f64> {
        (self.pbx_calls > 0).then(|| self.ids_requested as f64 / self.pbx_calls as f64)
    }

    /// PBX calls per distinct session of the workload.
    pub fn calls_per_session(&self) -> f64 {
        self.pbx_calls as f64 / self.distinct_sessions.max(1) as f64
    }

    pub fn peak_rss_mib(&self) -> Option<f64> {
        self.peak_rss_kib.map(|kib| kib as f64 / 1024.0)
    }
}

/// Publish→commit at a steady rate, in milliseconds.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// The broker alone, publish→confirm.
    pub confirm_p50: u64,
    pub confirm_p99: u64,
}

/// One target: what, whether it was met, and the measured value as shown.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub what: String,
    pub met: bool,
    pub measured: String,
}

/// Issue 10's targets, on the interleaved drain: PBX calls per distinct
/// session ≤ 0.2; events/s ≥ 25 % of the broker's best ceiling; p99
/// publish→commit ≤ PBX latency + 50 ms; worker peak RSS ≤ 64 MiB.
pub fn targets(
    drain: &Drain,
    ceiling: &Ceiling,
    latency: &Latency,
    pbx_latency: Duration,
) -> Vec<Target> {
    let share = drain.rate() / ceiling.rate().max(f64::MIN_POSITIVE);
    let p99_limit = pbx_latency.as_millis() as u64 + 50;
    vec![
        Target {
            what: format!("PBX calls per distinct session ≤ 0.2 ({})", drain.name),
            met: drain.calls_per_session() <= 0.2,
            measured: format!("{:.2}", drain.calls_per_session()),
        },
        Target {
            what: format!(
                "events/s ≥ 25% of the broker-only ceiling ({}, {})",
                drain.name, ceiling.name
            ),
            met: share >= 0.25,
            measured: format!(
                "{:.1}% ({:.0} of {:.0} events/s)",
                100.0 * share,
                drain.rate(),
                ceiling.rate()
            ),
        },
        Target {
            what: format!("p99 publish→commit ≤ PBX latency + 50 ms = {p99_limit} ms"),
            met: latency.count > 0 && latency.p99 <= p99_limit,
            measured: format!("{} ms", latency.p99),
        },
        Target {
            what: format!("worker peak RSS ≤ 64 MiB ({})", drain.name),
            met: drain.peak_rss_mib().is_some_and(|mib| mib <= 64.0),
            measured: drain
                .peak_rss_mib()
                .map_or("unknown".into(), |mib| format!("{mib:.1} MiB")),
        },
    ]
}

fn rate(events: u64, seconds: f64) -> f64 {
    events as f64 / seconds.max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() -> Drain {
        Drain {
            name: "interleaved".into(),
            events: 100_000,
            distinct_sessions: 10_000,
            seconds: 10.0,
            pbx_calls: 2_000,
            ids_requested: 30_000,
            peak_rss_kib: Some(64 * 1024),
            ..Drain::default()
        }
    }

    fn ceiling(events_per_second: u64) -> Ceiling {
        Ceiling {
            name: "acks with multiple",
            events: events_per_second,
            seconds: 1.0,
        }
    }

    fn latency(p99: u64) -> Latency {
        Latency {
            count: 30_000,
            p99,
            ..Latency::default()
        }
    }

    #[test]
    fn ids_per_call_and_calls_per_session() {
        let d = drain();
        assert_eq!(d.rate(), 10_000.0);
        assert_eq!(d.ids_per_call(), Some(15.0));
        assert_eq!(d.calls_per_session(), 0.2);
        let no_calls = Drain {
            pbx_calls: 0,
            ..drain()
        };
        assert_eq!(no_calls.ids_per_call(), None);
        assert_eq!(no_calls.calls_per_session(), 0.0);
    }

    #[test]
    fn targets_met_at_their_limits() {
        let met = targets(
            &drain(),
            &ceiling(40_000),
            &latency(70),
            Duration::from_millis(20),
        );
        assert!(met.iter().all(|t| t.met), "{met:?}");
        assert_eq!(met[1].measured, "25.0% (10000 of 40000 events/s)");
        assert_eq!(met[3].measured, "64.0 MiB");
    }

    #[test]
    fn each_target_misses_just_past_its_limit() {
        let over = Drain {
            pbx_calls: 2_001,
            peak_rss_kib: Some(64 * 1024 + 1),
            ..drain()
        };
        let missed = targets(
            &over,
            &ceiling(40_001),
            &latency(71),
            Duration::from_millis(20),
        );
        assert!(missed.iter().all(|t| !t.met), "{missed:?}");
    }

    #[test]
    fn an_unknown_rss_or_no_latency_sample_is_a_miss() {
        let unknown = Drain {
            peak_rss_kib: None,
            ..drain()
        };
        let t = targets(
            &unknown,
            &ceiling(10_000),
            &Latency::default(),
            Duration::from_millis(20),
        );
        assert!(!t[2].met && !t[3].met, "{t:?}");
        assert_eq!(t[3].measured, "unknown");
    }
}
