//! Configuration: one typed struct per command, from environment variables
//! that are also flags (`--help` documents each). Everything is validated
//! before any connection opens; a bad value is one line naming the variable.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::backoff::Backoff;
use crate::broker::{BrokerSettings, Destination, PublisherSettings};
use crate::intake::{IntakeSettings, SignaturePolicy};
use crate::pbx::PbxSettings;
use crate::pipeline::PipelineSettings;
use crate::secret::Secret;
use crate::session::SessionId;
use crate::store::StoreSettings;
use crate::worker::WorkerSettings;

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
pub enum Command {
    /// Consume message events and enrich their sessions until stopped.
    Run(RunArgs),
    /// Apply pending database migrations and exit.
    Migrate(StoreArgs),
    /// Fetch and upsert these sessions once, print what was written, exit
    /// non-zero if any failed.
    Enrich(EnrichArgs),
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

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The Postgres server; the bench (re)creates database
    /// `session_enricher_bench` there.
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// Events in the ceiling and worker runs.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Distinct sessions in the worker run (the events come in bursts).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u64,
    /// Events in the naive run.
    #[arg(long, default_value_t = 500)]
    pub naive_events: u64,
    /// Events per second in the latency run.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// The simulated PBX's latency per call, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// PBX calls in flight (ENRICHER_PBX_CONCURRENCY).
    #[arg(long, default_value_t = 64)]
    pub pbx_concurrency: u16,
    /// Prefetch (ENRICHER_PREFETCH): enough to keep every PBX call busy
    /// with bursts of ten.
    #[arg(long, default_value_t = 2000)]
    pub prefetch: u16,
    /// Answers per write transaction (ENRICHER_BATCH_MAX).
    #[arg(long, default_value_t = 200)]
    pub batch_max: u32,
    /// Write transactions in flight (ENRICHER_DB_WRITERS).
    #[arg(long, default_value_t = 4)]
    pub db_writers: u32,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub pbx: PbxArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Do not apply pending migrations at start.
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address of the operations endpoint: GET /healthz (liveness), /readyz
    /// (readiness), /metrics (Prometheus).
    #[arg(
        long,
        env = "ENRICHER_HTTP_ADDR",
        value_name = "ENRICHER_HTTP_ADDR",
        default_value = "0.0.0.0:9090"
    )]
    pub http_addr: std::net::SocketAddr,
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// The path to ask: /healthz (alive) or /readyz (ready).
    #[arg(long, default_value = "/healthz", value_parser = ["/healthz", "/readyz"])]
    pub path: String,
}

#[derive(Debug, Args)]
pub struct EnrichArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pbx: PbxArgs,
    /// Session ids (positive integers).
    #[arg(required = true, value_name = "SESSION_ID")]
    pub session_ids: Vec<SessionId>,
    /// Do not apply pending migrations first.
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Database connections in the pool.
    #[arg(long, env = "ENRICHER_DB_MAX_CONNECTIONS", value_name = "ENRICHER_DB_MAX_CONNECTIONS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,
    /// Postgres statement and lock timeout, in milliseconds.
    #[arg(long, env = "ENRICHER_DB_TIMEOUT_MS", value_name = "ENRICHER_DB_TIMEOUT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub db_timeout_ms: u64,
}

/// The RabbitMQ connection, shared by every command that needs one.
#[derive(Debug, Args)]
pub struct AmqpUrlArgs {
    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        value_name = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// Work queue (declared durable if absent); `<AMQP_QUEUE>.dead` holds
    /// dead letters.
    #[arg(
        long,
        env = "AMQP_QUEUE",
        value_name = "AMQP_QUEUE",
        default_value = "yeastar.message-events"
    )]
    pub amqp_queue: String,
    /// Optional: bind the work queue to this existing exchange.
    #[arg(long, env = "AMQP_EXCHANGE", value_name = "AMQP_EXCHANGE")]
    pub amqp_exchange: Option<String>,
    /// Optional: the binding's routing key (default: the queue name).
    #[arg(long, env = "AMQP_ROUTING_KEY", value_name = "AMQP_ROUTING_KEY")]
    pub amqp_routing_key: Option<String>,
    /// Unacked deliveries this worker may hold.
    #[arg(long, env = "ENRICHER_PREFETCH", value_name = "ENRICHER_PREFETCH", default_value_t = 200, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Deliveries of one message after which the work queue (a quorum
    /// queue) dead-letters it: bounds a message that crashes the worker.
    /// Fixed when the queue is first declared.
    #[arg(long, env = "ENRICHER_DELIVERY_LIMIT", value_name = "ENRICHER_DELIVERY_LIMIT", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub delivery_limit: u32,
}

#[derive(Debug, Args)]
pub struct PbxArgs {
    /// The PBX's address, e.g. https://tenant.yeastarcloud.com (required).
    #[arg(long, env = "YEASTAR_BASE_URL", value_name = "YEASTAR_BASE_URL")]
    pub yeastar_base_url: Option<String>,
    /// The API path under the base URL.
    #[arg(
        long,
        env = "YEASTAR_API_PATH",
        value_name = "YEASTAR_API_PATH",
        default_value = "openapi/v1.0"
    )]
    pub yeastar_api_path: String,
    /// API client id (required).
    #[arg(long, env = "YEASTAR_CLIENT_ID", value_name = "YEASTAR_CLIENT_ID")]
    pub yeastar_client_id: Option<String>,
    /// API client secret (required; never logged).
    #[arg(
        long,
        env = "YEASTAR_CLIENT_SECRET",
        value_name = "YEASTAR_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub yeastar_client_secret: Option<Secret>,
    /// The value stored in the `pbx` column of every row.
    #[arg(
        long,
        env = "YEASTAR_PBX_ID",
        value_name = "YEASTAR_PBX_ID",
        default_value = "default"
    )]
    pub yeastar_pbx_id: String,
    /// PBX calls in flight at once (one fetcher each).
    #[arg(long, env = "ENRICHER_PBX_CONCURRENCY", value_name = "ENRICHER_PBX_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub pbx_concurrency: u16,
    /// Timeout of one PBX request, in milliseconds.
    #[arg(long, env = "ENRICHER_PBX_TIMEOUT_MS", value_name = "ENRICHER_PBX_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..))]
    pub pbx_timeout_ms: u64,
    /// Tries of a PBX call that fails transiently (first included), with
    /// exponential backoff and jitter between them.
    #[arg(long, env = "ENRICHER_PBX_ATTEMPTS", value_name = "ENRICHER_PBX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub pbx_attempts: u32,
    /// First backoff wait between PBX tries, in milliseconds (doubles, up
    /// to 10 s).
    #[arg(long, env = "ENRICHER_PBX_BACKOFF_MS", value_name = "ENRICHER_PBX_BACKOFF_MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub pbx_backoff_ms: u64,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Event types to enrich, comma-separated; others are acked and counted
    /// as skipped.
    #[arg(
        long,
        env = "ENRICHER_EVENT_TYPES",
        value_name = "ENRICHER_EVENT_TYPES",
        value_delimiter = ',',
        default_value = "30031"
    )]
    pub event_types: Vec<i64>,
    /// Seconds a shutdown may take to finish in-flight work.
    #[arg(long, env = "ENRICHER_SHUTDOWN_TIMEOUT", value_name = "ENRICHER_SHUTDOWN_TIMEOUT", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub shutdown_timeout: u64,
    /// Attempts at an event that keeps failing transiently (PBX
    /// unavailable), the first included, before it is dead-lettered; between
    /// attempts it waits in `<AMQP_QUEUE>.retry`.
    #[arg(long, env = "ENRICHER_RETRY_ATTEMPTS", value_name = "ENRICHER_RETRY_ATTEMPTS", default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub retry_attempts: u32,
    /// First wait in the retry queue, in milliseconds (doubles, jittered).
    #[arg(long, env = "ENRICHER_RETRY_DELAY_MS", value_name = "ENRICHER_RETRY_DELAY_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_delay_ms: u64,
    /// Session answers written per database transaction, at most.
    #[arg(long, env = "ENRICHER_BATCH_MAX", value_name = "ENRICHER_BATCH_MAX", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub batch_max: u32,
    /// How long the first answer of a write batch waits for more, in
    /// milliseconds.
    #[arg(long, env = "ENRICHER_BATCH_LINGER_MS", value_name = "ENRICHER_BATCH_LINGER_MS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    pub batch_linger_ms: u64,
    /// Write transactions in flight at once (each a batch).
    #[arg(long, env = "ENRICHER_DB_WRITERS", value_name = "ENRICHER_DB_WRITERS", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub db_writers: u32,
    /// Longest wait in the retry queue, in milliseconds.
    #[arg(long, env = "ENRICHER_RETRY_MAX_DELAY_MS", value_name = "ENRICHER_RETRY_MAX_DELAY_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retry_max_delay_ms: u64,
}

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "SIMULATOR_LISTEN",
        value_name = "SIMULATOR_LISTEN",
        default_value = "127.0.0.1:8088"
    )]
    pub listen: std::net::SocketAddr,
    /// The client id the simulator accepts.
    #[arg(
        long,
        env = "YEASTAR_CLIENT_ID",
        value_name = "YEASTAR_CLIENT_ID",
        default_value = "simulator"
    )]
    pub client_id: String,
    /// The client secret the simulator accepts.
    #[arg(
        long,
        env = "YEASTAR_CLIENT_SECRET",
        value_name = "YEASTAR_CLIENT_SECRET",
        default_value = "simulator-secret",
        hide_env_values = true
    )]
    pub client_secret: Secret,
    /// Added to every answer, in milliseconds.
    #[arg(
        long,
        env = "SIMULATOR_LATENCY_MS",
        value_name = "SIMULATOR_LATENCY_MS",
        default_value_t = 20
    )]
    pub latency_ms: u64,
    /// Access token lifetime, in seconds.
    #[arg(long, env = "SIMULATOR_TOKEN_TTL", value_name = "SIMULATOR_TOKEN_TTL", default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl: u64,
    /// Share of message_session/get calls answered with a transient error
    /// (-2, 70082 or HTTP 503), from 0 to 1.
    #[arg(
        long,
        env = "SIMULATOR_ERROR_RATE",
        value_name = "SIMULATOR_ERROR_RATE",
        default_value_t = 0.0
    )]
    pub error_rate: f64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// The demo's own work queue (purged first), so a real one is untouched.
    #[arg(
        long,
        env = "DEMO_QUEUE",
        value_name = "DEMO_QUEUE",
        default_value = "session-enricher.demo"
    )]
    pub queue: String,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Address the webhook listener binds (it also serves /healthz, /readyz
    /// and /metrics).
    #[arg(
        long,
        env = "INGEST_ADDR",
        value_name = "INGEST_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub addr: std::net::SocketAddr,
    /// Path the PBX posts its webhooks to.
    #[arg(
        long,
        env = "INGEST_PATH",
        value_name = "INGEST_PATH",
        default_value = "/webhooks/yeastar"
    )]
    pub path: String,
    /// The webhook's secret from the PBX portal (Integrations > API >
    /// Webhook Event Push); X-Signature must be Base64(HMAC-SHA256(secret,
    /// body)). Required unless --insecure-no-signature; never logged.
    #[arg(
        long,
        env = "YEASTAR_WEBHOOK_SECRET",
        value_name = "YEASTAR_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<Secret>,
    /// Accept webhooks without checking their signature (for trials only;
    /// logs a warning at start). Only a flag, so it cannot be switched on
    /// by a stray environment variable.
    #[arg(long)]
    pub insecure_no_signature: bool,
    /// Largest webhook body accepted, in bytes; larger ones are answered
    /// 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", value_name = "INGEST_MAX_BODY_BYTES", default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1024..=67_108_864))]
    pub max_body_bytes: u64,
    /// Event types queued, comma-separated; valid webhooks of other types
    /// are answered 200, counted and dropped.
    #[arg(
        long,
        env = "INGEST_EVENT_TYPES",
        value_name = "INGEST_EVENT_TYPES",
        value_delimiter = ',',
        default_value = "30031"
    )]
    pub event_types: Vec<i64>,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// Work queue the events go to when AMQP_EXCHANGE is unset. The worker
    /// declares it; ingest is not ready until it exists.
    #[arg(
        long,
        env = "AMQP_QUEUE",
        value_name = "AMQP_QUEUE",
        default_value = "yeastar.message-events"
    )]
    pub amqp_queue: String,
    /// Optional: publish to this existing exchange instead, with routing key
    /// `yeastar.<type>` (e.g. `yeastar.30031`); bind queues to the types
    /// they want.
    #[arg(long, env = "AMQP_EXCHANGE", value_name = "AMQP_EXCHANGE")]
    pub amqp_exchange: Option<String>,
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

impl StoreArgs {
    pub fn settings(&self) -> Result<StoreSettings, ConfigError> {
        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return Err(invalid("DATABASE_URL", "must be a postgres:// URL"));
        }
        Ok(StoreSettings {
            url: self.database_url.clone(),
            max_connections: self.db_max_connections,
            statement_timeout: Duration::from_millis(self.db_timeout_ms),
        })
    }
}

impl BrokerArgs {
    pub fn settings(&self) -> Result<BrokerSettings, ConfigError> {
        broker_settings(&self.amqp.amqp_url, &self.amqp_queue, self.prefetch).map(|s| {
            BrokerSettings {
                exchange: self.amqp_exchange.clone().filter(|e| !e.is_empty()),
                routing_key: self.amqp_routing_key.clone().filter(|k| !k.is_empty()),
                delivery_limit: self.delivery_limit,
                ..s
            }
        })
    }
}

pub(crate) fn broker_settings(
    url: &str,
    queue: &str,
    prefetch: u16,
) -> Result<BrokerSettings, ConfigError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(invalid("AMQP_URL", "must be an amqp:// or amqps:// URL"));
    }
    if queue.is_empty() || queue.len() > 250 {
        return Err(invalid("AMQP_QUEUE", "must be 1 to 250 characters"));
    }
    Ok(BrokerSettings {
        url: url.to_owned(),
        queue: queue.to_owned(),
        exchange: None,
        routing_key: None,
        prefetch,
        delivery_limit: 20,
    })
}

/// How long ingest waits for the broker's confirm before answering 503.
const INGEST_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ingest shutdown waits for in-flight requests: a request
/// waits at most `INGEST_CONFIRM_TIMEOUT` for the broker.
const INGEST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

impl IngestArgs {
    pub fn settings(&self) -> Result<IntakeSettings, ConfigError> {
        if !self.path.starts_with('/') {
            return Err(invalid("INGEST_PATH", "must start with `/`"));
        }
        if ["/healthz", "/readyz", "/metrics"].contains(&self.path.as_str()) {
            return Err(invalid(
                "INGEST_PATH",
                "must not be /healthz, /readyz or /metrics (served beside it)",
            ));
        }
        let secret = self
            .webhook_secret
            .clone()
            .filter(|s| !s.expose().trim().is_empty());
        let signature = match (secret, self.insecure_no_signature) {
            (Some(secret), false) => SignaturePolicy::Verify(secret),
            (None, true) => SignaturePolicy::Disabled,
            (None, false) => {
                return Err(invalid(
                    "YEASTAR_WEBHOOK_SECRET",
                    "is required (the webhook's secret in the PBX portal), unless --insecure-no-signature",
                ));
            }
            (Some(_), true) => {
                return Err(invalid(
                    "YEASTAR_WEBHOOK_SECRET",
                    "is set together with --insecure-no-signature; choose one",
                ));
            }
        };
        if self.event_types.is_empty() {
            return Err(invalid(
                "INGEST_EVENT_TYPES",
                "must list at least one event type",
            ));
        }
        let queue = broker_settings(&self.amqp.amqp_url, &self.amqp_queue, 1)?.queue;
        let destination = match self.amqp_exchange.as_deref().filter(|e| !e.is_empty()) {
            Some(exchange) if exchange.len() > 255 => {
                return Err(invalid("AMQP_EXCHANGE", "must be at most 255 characters"));
            }
            Some(exchange) => Destination::Exchange(exchange.to_owned()),
            None => Destination::Queue(queue),
        };
        Ok(IntakeSettings {
            listen: self.addr,
            path: self.path.clone(),
            signature,
            max_body_bytes: usize::try_from(self.max_body_bytes)
                .map_err(|_| invalid("INGEST_MAX_BODY_BYTES", "is too large"))?,
            forwarded_types: self.event_types.clone(),
            publisher: PublisherSettings {
                url: self.amqp.amqp_url.clone(),
                destination,
                confirm_timeout: INGEST_CONFIRM_TIMEOUT,
                reconnect: Backoff {
                    initial: Duration::from_millis(500),
                    max: Duration::from_secs(15),
                    attempts: u32::MAX,
                },
            },
            shutdown_timeout: INGEST_SHUTDOWN_TIMEOUT,
        })
    }
}

impl PbxArgs {
    pub fn settings(&self) -> Result<PbxSettings, ConfigError> {
        let base_url = required(
            "YEASTAR_BASE_URL",
            &self.yeastar_base_url,
            "the PBX's address, e.g. https://tenant.yeastarcloud.com",
        )?;
        let has_host = base_url
            .strip_prefix("https://")
            .or_else(|| base_url.strip_prefix("http://"))
            .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
        if !has_host {
            return Err(invalid(
                "YEASTAR_BASE_URL",
                "must be an http:// or https:// URL with a host",
            ));
        }
        let client_id = required(
            "YEASTAR_CLIENT_ID",
            &self.yeastar_client_id,
            "the API application's client id",
        )?;
        let client_secret = self
            .yeastar_client_secret
            .clone()
            .filter(|s| !s.expose().is_empty())
            .ok_or_else(|| {
                invalid(
                    "YEASTAR_CLIENT_SECRET",
                    "is required (the API application's client secret)",
                )
            })?;
        if self.yeastar_pbx_id.is_empty() {
            return Err(invalid("YEASTAR_PBX_ID", "must not be empty"));
        }
        Ok(PbxSettings {
            base_url,
            api_path: self.yeastar_api_path.clone(),
            client_id,
            client_secret,
            concurrency: usize::from(self.pbx_concurrency),
            request_timeout: Duration::from_millis(self.pbx_timeout_ms),
            retry: Backoff {
                initial: Duration::from_millis(self.pbx_backoff_ms),
                max: Duration::from_secs(10),
                attempts: self.pbx_attempts,
            },
            login_retry_min: Duration::from_secs(60),
        })
    }
}

fn required(
    variable: &'static str,
    value: &Option<String>,
    what: &str,
) -> Result<String, ConfigError> {
    value
        .clone()
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| invalid(variable, format!("is required ({what})")))
}

impl WorkerArgs {
    /// The worker's settings; `fetchers` is the PBX concurrency cap.
    pub fn settings(&self, pbx_id: &str, fetchers: usize) -> Result<WorkerSettings, ConfigError> {
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
                batch_max: self.batch_max as usize,
                batch_linger: Duration::from_millis(self.batch_linger_ms),
                writers: self.db_writers as usize,
            },
            ..WorkerSettings::default()
        })
    }
}
