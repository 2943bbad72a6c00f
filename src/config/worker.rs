//! `WorkerArgs`: what the worker consumes, how it retries, batches and
//! stops (`run`). Validates; never connects.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, ReconcilePageArgs, defaults, invalid};
use crate::backoff::Backoff;
use crate::pipeline::PipelineSettings;
use crate::reconcile::PeriodicReconcile;
use crate::worker::{RefreshSettings, WorkerSettings};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Event types to enrich, comma-separated; others are acked and counted
    /// as skipped.
    #[arg(
        long,
        env = "ENRICHER_EVENT_TYPES",
        value_name = "ENRICHER_EVENT_TYPES",
        value_delimiter = ',',
        default_values_t = defaults::EVENT_TYPES
    )]
    pub event_types: Vec<i64>,
    /// Seconds a shutdown may take to finish in-flight work.
    #[arg(long, env = "ENRICHER_SHUTDOWN_TIMEOUT", value_name = "ENRICHER_SHUTDOWN_TIMEOUT", default_value_t = defaults::SHUTDOWN_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout: u64,
    /// Attempts at an event that keeps failing transiently (PBX
    /// unavailable), the first included, before it is dead-lettered; between
    /// attempts it waits in `<AMQP_QUEUE>.retry`.
    #[arg(long, env = "ENRICHER_RETRY_ATTEMPTS", value_name = "ENRICHER_RETRY_ATTEMPTS", default_value_t = defaults::RETRY_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub retry_attempts: u32,
    /// First wait in the retry queue, in milliseconds (doubles, jittered).
    #[arg(long, env = "ENRICHER_RETRY_DELAY_MS", value_name = "ENRICHER_RETRY_DELAY_MS", default_value_t = defaults::RETRY_DELAY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_delay_ms: u64,
    /// Session answers written per database transaction, at most.
    #[arg(long, env = "ENRICHER_BATCH_MAX", value_name = "ENRICHER_BATCH_MAX", default_value_t = defaults::BATCH_MAX, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub batch_max: u32,
    /// How long the first answer of a write batch waits for more, in
    /// milliseconds.
    #[arg(long, env = "ENRICHER_BATCH_LINGER_MS", value_name = "ENRICHER_BATCH_LINGER_MS", default_value_t = defaults::BATCH_LINGER_MS, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub batch_linger_ms: u64,
    /// Write transactions in flight at once (each a batch).
    #[arg(long, env = "ENRICHER_DB_WRITERS", value_name = "ENRICHER_DB_WRITERS", default_value_t = defaults::DB_WRITERS, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_writers: u32,
    /// How long an idle fetcher waits for more due sessions to fill a
    /// `message_session/query` batch, in milliseconds (0: never waits; a
    /// busy worker fills batches without waiting).
    #[arg(long, env = "ENRICHER_QUERY_GATHER_MS", value_name = "ENRICHER_QUERY_GATHER_MS", default_value_t = defaults::QUERY_GATHER_MS, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub query_gather_ms: u64,
    /// Longest wait in the retry queue, in milliseconds.
    #[arg(long, env = "ENRICHER_RETRY_MAX_DELAY_MS", value_name = "ENRICHER_RETRY_MAX_DELAY_MS", default_value_t = defaults::RETRY_MAX_DELAY_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,
    /// Seconds between reconciliations with the PBX's list of open sessions
    /// (as `reconcile` does), once per interval between all replicas; 0:
    /// off.
    #[arg(long, env = "ENRICHER_RECONCILE_INTERVAL_S", value_name = "ENRICHER_RECONCILE_INTERVAL_S", default_value_t = defaults::RECONCILE_INTERVAL_SECS, value_parser = clap::value_parser!(u64).range(0..=604_800))]
    pub reconcile_interval_s: u64,
    #[command(flatten)]
    pub reconcile_page: ReconcilePageArgs,
    /// How long after its last fetch a session with pending agents is
    /// fetched again without an event, in milliseconds, until nobody is
    /// pending (0: never).
    #[arg(long, env = "ENRICHER_REFRESH_INTERVAL_MS", value_name = "ENRICHER_REFRESH_INTERVAL_MS", default_value_t = defaults::REFRESH_INTERVAL_MS, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub refresh_interval_ms: u64,
}

impl WorkerArgs {
    /// The worker's settings; `fetchers` is the PBX concurrency cap and
    /// `fetch_batch` the PBX query batch.
    pub fn settings(
        &self,
        pbx_id: &str,
        fetchers: usize,
        fetch_batch: usize,
    ) -> Result<WorkerSettings, ConfigError> {
        if self.event_types.is_empty() {
            return Err(invalid(
                "ENRICHER_EVENT_TYPES",
                "must list at least one event type",
            ));
        }
        if self.retry_max_delay_ms < self.retry_delay_ms {
            return Err(invalid(
                "ENRICHER_RETRY_MAX_DELAY_MS",
                "must not be below ENRICHER_RETRY_DELAY_MS",
            ));
        }
        let reconcile = match self.reconcile_interval_s {
            0 => None,
            seconds => Some(PeriodicReconcile {
                interval: Duration::from_secs(seconds),
                // Its refresh interval is the worker's (`Worker::run`).
                settings: self.reconcile_page.settings()?,
            }),
        };
        Ok(WorkerSettings {
            pbx_id: pbx_id.to_owned(),
            handled_types: self.event_types.clone(),
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout),
            retry: Backoff {
                initial: Duration::from_millis(self.retry_delay_ms),
                max: Duration::from_millis(self.retry_max_delay_ms),
                attempts: self.retry_attempts,
            },
            pipeline: PipelineSettings {
                fetchers,
                fetch_batch,
                fetch_gather: Duration::from_millis(self.query_gather_ms),
                batch_max: self.batch_max as usize,
                batch_linger: Duration::from_millis(self.batch_linger_ms),
                writers: self.db_writers as usize,
            },
            refresh: RefreshSettings::every(Duration::from_millis(self.refresh_interval_ms)),
            reconcile,
            ..WorkerSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{Cli, Command};

    fn worker(flags: &[&str]) -> WorkerSettings {
        let line = ["session-enricher", "run"].iter().chain(flags);
        let Command::Run(run) = Cli::try_parse_from(line).unwrap().command else {
            unreachable!("a run command line")
        };
        run.worker.settings("pbx", 4, 20).unwrap()
    }

    #[test]
    fn a_reconcile_interval_turns_periodic_reconciliation_on() {
        assert_eq!(worker(&["--reconcile-interval-s", "0"]).reconcile, None);
        let on = worker(&[
            "--reconcile-interval-s",
            "900",
            "--reconcile-page-size",
            "50",
        ])
        .reconcile
        .expect("on");
        assert_eq!(on.interval, Duration::from_secs(900));
        assert_eq!(on.settings.page_size, 50);
    }
}
