//! Configuration: one typed struct per command, from environment variables
//! that are also flags (`--help` documents each). Everything is validated
//! before any connection opens; a bad value is one line naming the variable.
//! Never connects, and never shows a secret.
//!
//! - `mod.rs`: `Cli`, the `Command`s, `ConfigError`.
//! - `defaults` (`crate::defaults`, shared with `WorkerSettings::default`): every flag's default, once.
//! - Argument groups, each validated into its part's settings: `store`
//!   (`StoreArgs`), `broker` (`AmqpUrlArgs`, `BrokerArgs`), `pbx`
//!   (`PbxArgs`), `worker` (`WorkerArgs`).
//! - Commands: `run` (`RunArgs`, `HttpArgs`, validated into `RunPlan`), `enrich`,
//!   `reconcile` (`ReconcileArgs`; its page size `ReconcilePageArgs`, shared
//!   with `worker`), `healthcheck`,
//!   `intake` (`IngestArgs` for `ingest`), `simulator` (`simulate-pbx`),
//!   `demo`, `bench`; `migrate` is `StoreArgs` alone.

mod bench;
mod broker;
pub use crate::defaults;
mod demo;
mod enrich;
mod healthcheck;
mod intake;
mod pbx;
mod reconcile;
mod run;
mod simulator;
mod store;
mod worker;

use clap::{Parser, Subcommand, ValueEnum};

pub use bench::BenchArgs;
pub(crate) use broker::broker_settings;
pub use broker::{AmqpUrlArgs, BrokerArgs, QueueArgs};
pub use demo::DemoArgs;
pub use enrich::EnrichArgs;
pub use healthcheck::HealthcheckArgs;
pub use intake::IngestArgs;
pub use pbx::PbxArgs;
pub use reconcile::{ReconcileArgs, ReconcilePageArgs};
pub use run::{HttpArgs, RunArgs, RunPlan};
pub use simulator::SimulatorArgs;
pub use store::StoreArgs;
pub use worker::WorkerArgs;

#[derive(Debug, Parser)]
#[command(
    name = "session-enricher",
    version,
    about = "Enriches Yeastar message events with message_session/get and upserts them into Postgres."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format: `json`, or `pretty` for people (default: pretty on a
    /// terminal, json otherwise). The level comes from RUST_LOG.
    #[arg(long, env = "LOG_FORMAT", global = true, value_name = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: its size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Consume message events and enrich their sessions until stopped.
    Run(RunArgs),
    /// Apply pending database migrations and exit.
    Migrate(StoreArgs),
    /// Fetch and upsert these sessions once, print what was written, exit
    /// non-zero if any failed.
    Enrich(EnrichArgs),
    /// Page through the PBX's open sessions (message_session/list) once,
    /// fetch and upsert every one, print what was added or changed; exit
    /// non-zero if the run was incomplete or another one is running.
    Reconcile(ReconcileArgs),
    /// Serve a local stand-in for the Yeastar API.
    SimulatePbx(SimulatorArgs),
    /// Show events becoming rows: simulator, worker and sample events on the
    /// local RabbitMQ and Postgres.
    Demo(DemoArgs),
    /// Measure throughput, PBX calls, memory and latency on the local
    /// RabbitMQ and Postgres with the simulator in-process (see
    /// BENCHMARKS.md).
    Bench(BenchArgs),
    /// Ask a running worker's health endpoint; exit 0 if it answers 200
    /// (for container HEALTHCHECKs: the image has no curl).
    Healthcheck(HealthcheckArgs),
    /// Receive the PBX's signed webhooks over HTTP and queue them on
    /// RabbitMQ (200 only once the broker confirmed), until stopped.
    Ingest(IngestArgs),
}

/// A configuration value that is missing or invalid.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub problem: String,
}

fn invalid(variable: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        problem: problem.into(),
    }
}
