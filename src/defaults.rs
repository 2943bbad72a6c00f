//! Every default of a flag, once: the clap `default_value`s use these, and
//! so must any code that needs the same value without parsing a command
//! line (e.g. `WorkerSettings::default`). Values only: no logic, no I/O.
//! Each is in the unit its flag says (`_MS`, `_SECS`).

use crate::event::NEW_MESSAGE_EVENT;

// The store (every command that writes).

/// `DATABASE_URL`.
pub const DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// `ENRICHER_DB_MAX_CONNECTIONS`.
pub const DB_MAX_CONNECTIONS: u32 = 10;
/// `ENRICHER_DB_TIMEOUT_MS`.
pub const DB_TIMEOUT_MS: u64 = 15_000;

// The broker.

/// `AMQP_URL`.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// `AMQP_QUEUE`, for the worker and the intake alike.
pub const AMQP_QUEUE: &str = "yeastar.message-events";
/// `ENRICHER_PREFETCH`: by Little's law, deliveries in flight = events/s ×
/// time in the pipeline (gathering + fetch + follow-up fetch + commit, about
/// 100–300 ms under load), and batching needs several events of a session
/// in hand at once; 2,000 measured 3× the rate and a third of the PBX calls
/// of 200 (BENCHMARKS.md) for about 12 MB more memory.
pub const PREFETCH: u16 = 2_000;
/// `ENRICHER_DELIVERY_LIMIT`.
pub const DELIVERY_LIMIT: u32 = 20;

// The PBX.

/// `YEASTAR_API_PATH`.
pub const API_PATH: &str = "openapi/v1.0";
/// `YEASTAR_PBX_ID`.
pub const PBX_ID: &str = "default";
/// `ENRICHER_PBX_CONCURRENCY`: also the worker's fetchers.
pub const PBX_CONCURRENCY: u16 = 16;
/// `ENRICHER_PBX_TIMEOUT_MS`.
pub const PBX_TIMEOUT_MS: u64 = 10_000;
/// `ENRICHER_PBX_ATTEMPTS`.
pub const PBX_ATTEMPTS: u32 = 5;
/// `ENRICHER_PBX_BACKOFF_MS`.
pub const PBX_BACKOFF_MS: u64 = 200;
/// `ENRICHER_QUERY_BATCH`: sessions per `message_session/query` call.
pub const QUERY_BATCH: u16 = 20;
/// `ENRICHER_QUERY_GATHER_MS`: how long an idle fetcher waits to fill a
/// batch.
pub const QUERY_GATHER_MS: u64 = 5;

// The worker.

/// `ENRICHER_EVENT_TYPES`, and the intake's `INGEST_EVENT_TYPES`.
pub const EVENT_TYPES: [i64; 1] = [NEW_MESSAGE_EVENT];
/// `ENRICHER_SHUTDOWN_TIMEOUT`.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 20;
/// `ENRICHER_RETRY_ATTEMPTS`: 5 s doubling to 10 min, 12 attempts span
/// about an hour.
pub const RETRY_ATTEMPTS: u32 = 12;
/// `ENRICHER_RETRY_DELAY_MS`.
pub const RETRY_DELAY_MS: u64 = 5_000;
/// `ENRICHER_RETRY_MAX_DELAY_MS`.
pub const RETRY_MAX_DELAY_MS: u64 = 600_000;
/// `ENRICHER_BATCH_MAX`.
pub const BATCH_MAX: u32 = 200;
/// `ENRICHER_BATCH_LINGER_MS`.
pub const BATCH_LINGER_MS: u64 = 5;
/// `ENRICHER_DB_WRITERS`.
pub const DB_WRITERS: u32 = 4;
/// `ENRICHER_REFRESH_INTERVAL_MS`: a waiting session is fetched again 5 s
/// after its last fetch (0: off).
pub const REFRESH_INTERVAL_MS: u64 = 5_000;
/// `ENRICHER_HTTP_ADDR`.
pub const HTTP_ADDR: &str = "0.0.0.0:9090";
/// `ENRICHER_RECONCILE_INTERVAL_S`: 0, no periodic reconciliation.
pub const RECONCILE_INTERVAL_SECS: u64 = 0;
/// `ENRICHER_RECONCILE_PAGE_SIZE`: sessions per `message_session/list`
/// page (`run` and `reconcile`).
pub const RECONCILE_PAGE_SIZE: u16 = 100;

// The intake (`ingest`).

/// `INGEST_ADDR`.
pub const INGEST_ADDR: &str = "0.0.0.0:8080";
/// `INGEST_PATH`.
pub const INGEST_PATH: &str = "/webhooks/yeastar";
/// `INGEST_MAX_BODY_BYTES`: 1 MiB.
pub const INGEST_MAX_BODY_BYTES: u64 = 1_048_576;

// The PBX simulator (`simulate-pbx`).

/// `SIMULATOR_LISTEN`.
pub const SIMULATOR_LISTEN: &str = "127.0.0.1:8088";
/// The simulator's `YEASTAR_CLIENT_ID`.
pub const SIMULATOR_CLIENT_ID: &str = "simulator";
/// The simulator's `YEASTAR_CLIENT_SECRET`.
pub const SIMULATOR_CLIENT_SECRET: &str = "simulator-secret";
/// `SIMULATOR_LATENCY_MS`.
pub const SIMULATOR_LATENCY_MS: u64 = 20;
/// `SIMULATOR_TOKEN_TTL`, in seconds.
pub const SIMULATOR_TOKEN_TTL: u64 = 1800;
/// `SIMULATOR_ERROR_RATE`.
pub const SIMULATOR_ERROR_RATE: f64 = 0.0;
/// `SIMULATOR_LISTED_SESSIONS`: synthetic sessions `message_session/list`
/// lists (ids 1 to this).
pub const SIMULATOR_LISTED_SESSIONS: u64 = 0;

// The demo.

/// `DEMO_QUEUE`.
pub const DEMO_QUEUE: &str = "session-enricher.demo";

// The bench (flags only; its worker runs with the worker's defaults above).

/// `bench --events`.
pub const BENCH_EVENTS: u64 = 100_000;
/// `bench --sessions`.
pub const BENCH_SESSIONS: u64 = 10_000;
/// `bench --active`: conversations active at once in the interleaved
/// workload.
pub const BENCH_ACTIVE_SESSIONS: u64 = 50;
/// `bench --rate`, events per second.
pub const BENCH_RATE: u64 = 1_000;
/// `bench --seconds`.
pub const BENCH_SECONDS: u64 = 30;
/// `bench --refresh-sessions`: waiting sessions in the refresh run.
pub const BENCH_REFRESH_SESSIONS: u64 = 1_000;
/// `bench --refresh-seconds`: how long the refresh run counts PBX calls (0:
/// no refresh run).
pub const BENCH_REFRESH_SECONDS: u64 = 60;
/// `bench --latency-ms`.
pub const BENCH_LATENCY_MS: u64 = 20;
