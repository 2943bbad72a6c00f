//! `BenchArgs` (`bench`): the sizes of the benchmark runs (see
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
    /// Events in the ceiling and worker runs.
    #[arg(long, default_value_t = defaults::BENCH_EVENTS)]
    pub events: u64,
    /// Distinct sessions in the worker run (the events come in bursts).
    #[arg(long, default_value_t = defaults::BENCH_SESSIONS)]
    pub sessions: u64,
    /// Events in the naive run.
    #[arg(long, default_value_t = defaults::BENCH_NAIVE_EVENTS)]
    pub naive_events: u64,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = defaults::BENCH_RATE)]
    pub rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = defaults::BENCH_SECONDS)]
    pub seconds: u64,
    /// The simulated PBX's latency per call, in milliseconds.
    #[arg(long, default_value_t = defaults::BENCH_LATENCY_MS)]
    pub latency_ms: u64,
    /// PBX calls in flight (ENRICHER_PBX_CONCURRENCY).
    #[arg(long, default_value_t = defaults::BENCH_PBX_CONCURRENCY)]
    pub pbx_concurrency: u16,
    /// Prefetch (ENRICHER_PREFETCH): enough to keep every PBX call busy
    /// with bursts of ten.
    #[arg(long, default_value_t = defaults::BENCH_PREFETCH)]
    pub prefetch: u16,
    /// Answers per write transaction (ENRICHER_BATCH_MAX).
    #[arg(long, default_value_t = defaults::BATCH_MAX)]
    pub batch_max: u32,
    /// Write transactions in flight (ENRICHER_DB_WRITERS).
    #[arg(long, default_value_t = defaults::DB_WRITERS)]
    pub db_writers: u32,
}
