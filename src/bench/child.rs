//! `WorkerProcess`: the worker as `bench` runs it, a child process
//! (`session-enricher run`, this same binary), so its memory is its own.
//! Starts it, waits for its readiness and for its settled count (both from
//! its operations endpoint), reads its peak RSS from `/proc`, stops it with
//! SIGTERM and checks it exited cleanly. Never decides what to measure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::health;

/// Outcomes after which a delivery is gone from the queue for good
/// (`enricher_events_total` labels); the others (retried, held, crashed,
/// requeued) bring it back.
const FINAL_OUTCOMES: [&str; 5] = [
    "enriched",
    "unchanged",
    "skipped",
    "not_found",
    "dead_lettered",
];

/// Variables the child must not inherit: the bench's scratch queues are
/// never bound to an exchange, and the worker logs at its own default.
pub(super) const NOT_INHERITED: [&str; 4] = [
    "AMQP_EXCHANGE",
    "AMQP_ROUTING_KEY",
    "RUST_LOG",
    "LOG_FORMAT",
];

const POLL: Duration = Duration::from_millis(5);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A running `session-enricher run`; killed if dropped while running.
pub struct WorkerProcess {
    child: Child,
    http_addr: SocketAddr,
    log: PathBuf,
}

/// Deliveries the worker has settled, by outcome, from its `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcomes(pub BTreeMap<String, u64>);

impl Outcomes {
    /// From `/metrics` text: the `enricher_events_total` series.
    pub fn parse(metrics: &str) -> Self {
        let prefix = "enricher_events_total{outcome=\"";
        Self(
            metrics
                .lines()
                .filter_map(|line| {
                    let (outcome, rest) = line.strip_prefix(prefix)?.split_once("\"}")?;
                    let count = rest.trim().parse::<f64>().ok()?;
                    Some((outcome.to_owned(), count as u64))
                })
                .collect(),
        )
    }

    /// Deliveries settled for good.
    pub fn settled(&self) -> u64 {
        FINAL_OUTCOMES
            .iter()
            .filter_map(|outcome| self.0.get(*outcome))
            .sum()
    }

    /// The outcomes that are not `enriched`, with their counts, e.g.
    /// `held 3, unchanged 2`; empty if every delivery was enriched.
    pub fn others(&self) -> String {
        self.0
            .iter()
            .filter(|(outcome, count)| *outcome != "enriched" && **count > 0)
            .map(|(outcome, count)| format!("{outcome} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl WorkerProcess {
    /// Starts `<exe, or this binary> <args>` with the bench's environment
    /// minus `NOT_INHERITED`; its log (stderr) goes to `log`.
    pub fn start(
        exe: Option<&Path>,
        args: &[String],
        http_addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let exe = match exe {
            Some(exe) => exe.to_owned(),
            None => std::env::current_exe().context("finding this binary")?,
        };
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("creating the worker's log {}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        for variable in NOT_INHERITED {
            command.env_remove(variable);
        }
        let child = command.spawn().context("starting the worker")?;
        Ok(Self {
            child,
            http_addr,
            log: log.to_owned(),
        })
    }

    /// Waits until `/readyz` answers 200 (consuming, database and PBX
    /// fine); returns when it first did.
    pub async fn ready(&mut self, within: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + within;
        loop {
            self.fail_if_exited("before it was ready")?;
            if let Ok(200) = health::probe(self.http_addr, "/readyz", ASK_TIMEOUT).await {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker was not ready within {within:?}; its log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the worker has settled `events` deliveries for good;
    /// returns when it first saw them settled, and the outcomes. Fails if
    /// the count stands still for `stall`.
    pub async fn settled(
        &mut self,
        events: u64,
        stall: Duration,
    ) -> anyhow::Result<(Instant, Outcomes)> {
        let mut progress = (0, Instant::now());
        loop {
            self.fail_if_exited("while draining")?;
            if let Ok((200, metrics)) = health::fetch(self.http_addr, "/metrics", ASK_TIMEOUT).await
            {
                let outcomes = Outcomes::parse(&metrics);
                let settled = outcomes.settled();
                if settled >= events {
                    return Ok((Instant::now(), outcomes));
                }
                if settled > progress.0 {
                    progress = (settled, Instant::now());
                }
            }
            if progress.1.elapsed() > stall {
                bail!(
                    "the worker settled {} of {events} events and then nothing for {stall:?}; its log: {}",
                    progress.0,
                    self.log.display()
                );
            }
            tokio::time::sleep(2 * POLL).await;
        }
    }

    /// The worker's peak resident set so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGTERM, then waits for the exit; fails unless it exited with 0
    /// within `within`. The log is removed after a clean exit.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .context("running kill")?;
        if !sent.success() {
            bail!("kill -TERM {pid} failed: {sent}");
        }
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().context("waiting for the worker")? {
                break status;
            }
            if Instant::now() > deadline {
                bail!(
                    "the worker did not exit within {within:?} of SIGTERM; its log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(POLL).await;
        };
        if !status.success() {
            bail!(
                "the worker exited with {status} after SIGTERM; its log: {}",
                self.log.display()
            );
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }

    fn fail_if_exited(&mut self, when: &str) -> anyhow::Result<()> {
        let exited: Option<ExitStatus> = self.child.try_wait().context("watching the worker")?;
        match exited {
            Some(status) => bail!(
                "the worker exited ({status}) {when}; its log: {}",
                self.log.display()
            ),
            None => Ok(()),
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# HELP enricher_events Deliveries settled, by outcome.
# TYPE enricher_events counter
enricher_events_total{outcome=\"enriched\"} 95
enricher_events_total{outcome=\"unchanged\"} 3
enricher_events_total{outcome=\"skipped\"} 0
enricher_events_total{outcome=\"not_found\"} 1
enricher_events_total{outcome=\"dead_lettered\"} 1
enricher_events_total{outcome=\"retried\"} 4
enricher_events_total{outcome=\"held\"} 0
enricher_events_in_flight 7
";

    #[test]
    fn settled_counts_only_the_outcomes_that_take_a_delivery_off_the_queue() {
        let outcomes = Outcomes::parse(METRICS);
        assert_eq!(outcomes.0.get("enriched"), Some(&95));
        assert_eq!(outcomes.settled(), 100);
        assert_eq!(
            outcomes.others(),
            "dead_lettered 1, not_found 1, retried 4, unchanged 3"
        );
    }

    #[test]
    fn metrics_without_the_series_settle_nothing() {
        assert_eq!(Outcomes::parse("").settled(), 0);
        assert_eq!(
            Outcomes::parse("enricher_events_in_flight 3\n").others(),
            ""
        );
    }
}
