//! `BenchArgs` (`bench`): the sizes of the benchmark runs, and the flags
//! its worker (`run`) gets; none means the worker's defaults (see
//! BENCHMARKS.md). Never used by the worker.

use clap::Args;

use super::{AmqpUrlArgs, StoreArgs, defaults};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The Postgres server; the bench (re)creates database
    /// `session_enricher_bench` there.
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// Events in each workload (and in the ceiling runs).
    #[arg(long, default_value_t = defaults::BENCH_EVENTS)]
    pub events: u64,
    /// Distinct sessions in each workload, `events / sessions` events each.
    #[arg(long, default_value_t = defaults::BENCH_SESSIONS)]
    pub sessions: u64,
    /// Sessions active at once in the interleaved workload: their events
    /// take turns (1, 2, … N, 1, 2, … N, …), then the next N sessions.
    #[arg(long, default_value_t = defaults::BENCH_ACTIVE_SESSIONS)]
    pub active: u64,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = defaults::BENCH_RATE)]
    pub rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = defaults::BENCH_SECONDS)]
    pub seconds: u64,
    /// Waiting sessions (with pending agents, no further events) in the
    /// refresh run.
    #[arg(long, default_value_t = defaults::BENCH_REFRESH_SESSIONS)]
    pub refresh_sessions: u64,
    /// Seconds the refresh run counts the PBX calls of refreshing them (0:
    /// no refresh run).
    #[arg(long, default_value_t = defaults::BENCH_REFRESH_SECONDS)]
    pub refresh_seconds: u64,
    /// The simulated PBX's latency per call, in milliseconds.
    #[arg(long, default_value_t = defaults::BENCH_LATENCY_MS)]
    pub latency_ms: u64,
    /// Flags for the worker, after `--`, as `session-enricher run` takes
    /// them (e.g. `-- --prefetch 2000 --pbx-concurrency 64`). Without any,
    /// the worker runs with its defaults. The bench sets the database,
    /// queue, PBX address and credentials, YEASTAR_PBX_ID and
    /// ENRICHER_HTTP_ADDR itself.
    #[arg(last = true, value_name = "RUN FLAGS")]
    pub worker_flags: Vec<String>,
    /// The worker binary the drains run (default: this one), e.g. an
    /// earlier release's, for a before/after on the same bench. The latency
    /// run is always this build's.
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<std::path::PathBuf>,
}
