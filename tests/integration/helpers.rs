//! Test harness: each `TestEnv` has its own database, its own queue names and
//! its own PBX simulator, so tests run in parallel against the local
//! RabbitMQ and Postgres (or, where those are not running and Docker is,
//! containers started with testcontainers). Waits are for a condition with a
//! deadline.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::Value;
use session_enricher::backoff::Backoff;
use session_enricher::broker::{Broker, BrokerSettings, Destination, PublisherSettings};
use session_enricher::intake::{Intake, IntakeSettings, SignaturePolicy};
use session_enricher::outcome::{CountsSnapshot, OutcomeCounts};
use session_enricher::pbx::{PbxClient, PbxSettings, PbxStatus};
use session_enricher::secret::Secret;
use session_enricher::simulator::{Simulator, SimulatorSettings};
use session_enricher::status::WorkerStatus;
use session_enricher::store::{Store, StoreSettings};
use session_enricher::worker::{Worker, WorkerError, WorkerSettings};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ImageExt, ReuseDirective};
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::rabbitmq::RabbitMq;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const PBX: &str = "test-pbx";
const DEADLINE: Duration = Duration::from_secs(30);

const LOCAL_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const LOCAL_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Containers started by the fallback are kept under these names and reused
/// by later runs (`docker rm -f` them to let go).
const POSTGRES_CONTAINER: &str = "session-enricher-test-postgres";
const RABBITMQ_CONTAINER: &str = "session-enricher-test-rabbitmq";

/// Where the tests find Postgres and RabbitMQ, decided once per run.
struct Services {
    database_url: String,
    amqp_url: String,
}

static SERVICES: OnceLock<Services> = OnceLock::new();

/// `DATABASE_URL` / `AMQP_URL` if set; else the local service if it accepts
/// connections; else, if Docker answers, a container started with
/// testcontainers (the first run pulls and starts it, later runs reuse it).
fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let database_url = std::env::var("DATABASE_URL")
            .ok()
            .or_else(|| reachable("127.0.0.1:5432").then(|| LOCAL_DATABASE_URL.into()));
        let amqp_url = std::env::var("AMQP_URL")
            .ok()
            .or_else(|| reachable("127.0.0.1:5672").then(|| LOCAL_AMQP_URL.into()));
        if let (Some(database_url), Some(amqp_url)) = (&database_url, &amqp_url) {
            return Services {
                database_url: database_url.clone(),
                amqp_url: amqp_url.clone(),
            };
        }
        assert!(
            docker_answers(),
            "Postgres (127.0.0.1:5432) or RabbitMQ (127.0.0.1:5672) is not reachable and \
             Docker is not available: start the local services (see README) or Docker"
        );
        let (database_url, amqp_url) = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for starting containers");
            runtime.block_on(async move {
                let database_url = match database_url {
                    Some(url) => url,
                    None => start_postgres().await,
                };
                let amqp_url = match amqp_url {
                    Some(url) => url,
                    None => start_rabbitmq().await,
                };
                (database_url, amqp_url)
            })
        })
        .join()
        .expect("starting the containers panicked");
        Services {
            database_url,
            amqp_url,
        }
    })
}

fn reachable(addr: &str) -> bool {
    addr.parse().is_ok_and(|addr| {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    })
}

fn docker_answers() -> bool {
    std::process::Command::new("docker")
        .arg("info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn start_postgres() -> String {
    let container = Postgres::default()
        .with_tag("16-alpine")
        .with_container_name(POSTGRES_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("start a Postgres container");
    let host = container.get_host().await.expect("the container's host");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("Postgres's mapped port");
    format!("postgres://postgres:postgres@{host}:{port}/postgres")
}

async fn start_rabbitmq() -> String {
    let container = RabbitMq::default()
        .with_tag("3.13-management")
        .with_container_name(RABBITMQ_CONTAINER)
        .with_reuse(ReuseDirective::Always)
        .start()
        .await
        .expect("start a RabbitMQ container");
    let host = container.get_host().await.expect("the container's host");
    let port = container
        .get_host_port_ipv4(5672)
        .await
        .expect("RabbitMQ's mapped port");
    format!("amqp://guest:guest@{host}:{port}/%2f")
}

pub fn database_url() -> String {
    services().database_url.clone()
}

pub fn amqp_url() -> String {
    services().amqp_url.clone()
}

pub struct TestEnv {
    pub name: String,
    pub db_url: String,
    pub db: PgPool,
    pub queue: String,
    pub dead_queue: String,
    pub sim: Simulator,
    amqp: Connection,
    channel: lapin::Channel,
}

/// A message of the dead-letter queue and why it is there.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// `x-enricher-error`: set when the worker dead-lettered it.
    pub reason: Option<String>,
    /// `x-enricher-attempts`.
    pub attempts: Option<i64>,
    /// `x-first-death-reason`: set when the broker dead-lettered it (e.g.
    /// `delivery_limit`).
    pub broker_reason: Option<String>,
}

/// Every part of an in-process worker, adjustable (e.g. to route a
/// connection through a `Proxy`).
pub struct WorkerSetup {
    pub broker: BrokerSettings,
    pub pbx: PbxSettings,
    pub store: StoreSettings,
    pub worker: WorkerSettings,
}

pub struct RunningWorker {
    pub counts: Arc<OutcomeCounts>,
    pub stop: CancellationToken,
    pub handle: JoinHandle<Result<(), WorkerError>>,
    pub status: Arc<WorkerStatus>,
    /// What the worker's PBX client last heard about its credentials.
    pub pbx: Arc<PbxStatus>,
}

impl RunningWorker {
    /// Cancels the worker and waits for its graceful shutdown.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        self.stop.cancel();
        self.handle.await.expect("the worker task panicked")
    }

    pub fn counts(&self) -> CountsSnapshot {
        self.counts.snapshot()
    }

    /// Waits until `n` deliveries have been settled for good.
    pub async fn wait_finished(&self, n: u64) {
        let counts = Arc::clone(&self.counts);
        wait_until(&format!("{n} deliveries settled"), || {
            let counts = Arc::clone(&counts);
            async move { counts.snapshot().finished() >= n }
        })
        .await;
    }
}

impl TestEnv {
    pub async fn new() -> Self {
        let name = format!("se_test_{:016x}", rand::random::<u64>());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&database_url())
            .await
            .expect("Postgres must be reachable (see README, Run the tests)");
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create the test database");
        admin.close().await;
        let db_url = with_database(&database_url(), &name);
        let db = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await
            .expect("connect to the test database");
        let amqp = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ must be reachable (see README, Run the tests)");
        let channel = amqp.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        let queue = format!("{name}.events");
        let sim = Simulator::start(([127, 0, 0, 1], 0).into(), SimulatorSettings::default())
            .await
            .expect("start the simulator");
        let env = Self {
            dead_queue: format!("{queue}.dead"),
            queue,
            name,
            db_url,
            db,
            sim,
            amqp,
            channel,
        };
        env.migrate().await;
        // The worker's own topology (quorum work queue, .retry, .dead), so
        // tests can publish before a worker starts.
        Broker::connect(env.broker_settings())
            .await
            .expect("declare the topology")
            .close()
            .await;
        env
    }

    pub async fn migrate(&self) {
        let store = Store::connect_lazy(&self.store_settings()).unwrap();
        store.migrate().await.expect("migrations apply");
        store.close().await;
    }

    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            url: self.db_url.clone(),
            max_connections: 4,
            statement_timeout: Duration::from_secs(10),
        }
    }

    pub fn broker_settings(&self) -> BrokerSettings {
        BrokerSettings {
            url: amqp_url(),
            queue: self.queue.clone(),
            exchange: None,
            routing_key: None,
            prefetch: 50,
            delivery_limit: 5,
        }
    }

    pub fn pbx_settings(&self) -> PbxSettings {
        let defaults = SimulatorSettings::default();
        PbxSettings {
            base_url: self.sim.base_url(),
            api_path: "openapi/v1.0".into(),
            client_id: defaults.client_id,
            client_secret: defaults.client_secret,
            concurrency: 8,
            request_timeout: Duration::from_secs(5),
            retry: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                attempts: 5,
            },
            login_retry_min: Duration::from_secs(60),
        }
    }

    pub fn worker_settings(&self) -> WorkerSettings {
        let quick = |attempts| Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempts,
        };
        WorkerSettings {
            pbx_id: PBX.into(),
            shutdown_timeout: Duration::from_secs(10),
            store_retry: quick(3),
            pipeline: session_enricher::pipeline::PipelineSettings {
                fetchers: 8,
                batch_max: 50,
                batch_linger: Duration::from_millis(2),
                writers: 2,
            },
            retry: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                attempts: 3,
            },
            reconnect: quick(u32::MAX),
            database_probe: quick(u32::MAX),
            pbx_probe: quick(u32::MAX),
            ..WorkerSettings::default()
        }
    }

    pub fn store(&self) -> Store {
        Store::connect_lazy(&self.store_settings()).unwrap()
    }

    /// Starts a worker in-process with the default test settings.
    pub async fn start_worker(&self) -> RunningWorker {
        self.start_worker_with(self.worker_settings()).await
    }

    pub async fn start_worker_with(&self, settings: WorkerSettings) -> RunningWorker {
        self.spawn(WorkerSetup {
            worker: settings,
            ..self.setup()
        })
    }

    /// The default test settings of every part, to adjust before `spawn`.
    pub fn setup(&self) -> WorkerSetup {
        WorkerSetup {
            broker: self.broker_settings(),
            pbx: self.pbx_settings(),
            store: self.store_settings(),
            worker: self.worker_settings(),
        }
    }

    pub fn spawn(&self, setup: WorkerSetup) -> RunningWorker {
        let counts = Arc::new(OutcomeCounts::default());
        let stop = CancellationToken::new();
        let pbx_client = Arc::new(PbxClient::new(setup.pbx).unwrap());
        let pbx = pbx_client.status();
        let worker = Worker::new(
            setup.broker,
            pbx_client,
            Store::connect_lazy(&setup.store).unwrap(),
            setup.worker,
            Arc::clone(&counts),
        );
        let status = worker.status();
        let handle = tokio::spawn(worker.run(stop.clone()));
        RunningWorker {
            counts,
            stop,
            handle,
            status,
            pbx,
        }
    }

    /// Publishes a persistent message to the work queue and waits for the
    /// broker's confirm.
    pub async fn publish(&self, body: &[u8]) {
        self.publish_with_headers(body, FieldTable::default()).await;
    }

    pub async fn publish_with_headers(&self, body: &[u8], headers: FieldTable) {
        self.publish_with_properties(body, BasicProperties::default().with_headers(headers))
            .await;
    }

    /// Publishes with the AMQP `timestamp` property set to `published_at`
    /// (seconds since the epoch), as an intake that stamps messages does.
    pub async fn publish_stamped(&self, body: &[u8], published_at: u64) {
        self.publish_with_properties(
            body,
            BasicProperties::default().with_timestamp(published_at),
        )
        .await;
    }

    async fn publish_with_properties(&self, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused a test message");
    }

    pub async fn publish_json(&self, event: &Value) {
        self.publish(event.to_string().as_bytes()).await;
    }

    /// Ready messages in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    /// Takes every message of the dead-letter queue: body and reason header.
    pub async fn take_dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.take_dead_letters_in_full()
            .await
            .into_iter()
            .map(|d| (d.body, d.reason.unwrap_or_default()))
            .collect()
    }

    /// Takes every message of the dead-letter queue with the headers that
    /// say why it is there.
    pub async fn take_dead_letters_in_full(&self) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(
                self.dead_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get on the dead-letter queue")
        {
            let headers = got
                .delivery
                .properties
                .headers()
                .clone()
                .unwrap_or_default();
            let header = |name: &str| headers.inner().get(name).cloned();
            let reason = header("x-enricher-error").map(|v| match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            });
            let attempts = header("x-enricher-attempts").and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(n),
                AMQPValue::LongInt(n) => Some(i64::from(n)),
                _ => None,
            });
            let broker_reason = header("x-first-death-reason").map(|v| match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            });
            out.push(DeadLetter {
                body: got.delivery.data,
                reason,
                attempts,
                broker_reason,
            });
        }
        out
    }

    /// Takes every message of a queue and returns the session ids of those
    /// that are message events.
    pub async fn take_session_ids(&self, queue: &str) -> Vec<i64> {
        let mut ids = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            let body: Value = serde_json::from_slice(&got.delivery.data).unwrap_or(Value::Null);
            if let Some(id) = body.pointer("/msg/session_id").and_then(Value::as_i64) {
                ids.push(id);
            }
        }
        ids
    }

    /// Declares a plain classic queue, as someone might by hand.
    pub async fn declare_classic_queue(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a classic queue");
    }

    pub async fn delete_queue(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }

    /// `DATABASE_URL` of this test's database through `proxy`.
    pub fn db_url_via(&self, proxy: &crate::proxy::Proxy) -> String {
        format!("postgres://postgres@{}/{}", proxy.addr, self.name)
    }

    /// `AMQP_URL` through `proxy`, with 1 s heartbeats so a stall is noticed.
    pub fn amqp_url_via(&self, proxy: &crate::proxy::Proxy) -> String {
        format!("amqp://guest:guest@{}/%2f?heartbeat=1", proxy.addr)
    }

    /// The real binary's `run`, configured for this test (more settings can
    /// be added to the returned command).
    pub fn binary_run(&self) -> std::process::Command {
        let defaults = SimulatorSettings::default();
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_session-enricher"));
        command
            .arg("run")
            .env("DATABASE_URL", &self.db_url)
            .env("AMQP_URL", amqp_url())
            .env("AMQP_QUEUE", &self.queue)
            .env("YEASTAR_BASE_URL", self.sim.base_url())
            .env("YEASTAR_CLIENT_ID", &defaults.client_id)
            .env("YEASTAR_CLIENT_SECRET", defaults.client_secret.expose())
            .env("YEASTAR_PBX_ID", PBX)
            .env(
                "ENRICHER_DELIVERY_LIMIT",
                self.broker_settings().delivery_limit.to_string(),
            )
            // A free port: tests run binaries side by side.
            .env("ENRICHER_HTTP_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        command
    }

    pub async fn session_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM message_sessions")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn session_row(&self, id: i64) -> Option<sqlx::postgres::PgRow> {
        sqlx::query("SELECT * FROM message_sessions WHERE pbx = $1 AND session_id = $2")
            .bind(PBX)
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .unwrap()
    }

    /// `(agent_user_id, position)` of a session's pending agents, in order.
    pub async fn pending_agents(&self, id: i64) -> Vec<(i64, i32)> {
        sqlx::query("SELECT agent_user_id, position FROM session_pending_agents WHERE pbx = $1 AND session_id = $2 ORDER BY position")
            .bind(PBX)
            .bind(id)
            .fetch_all(&self.db)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Intake settings for this test: its work queue, the test webhook
    /// secret, fast reconnects.
    pub fn intake_settings(&self) -> IntakeSettings {
        IntakeSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            path: "/webhooks/yeastar".into(),
            signature: SignaturePolicy::Verify(Secret::new(WEBHOOK_SECRET)),
            max_body_bytes: 1_048_576,
            forwarded_types: vec![30031],
            publisher: PublisherSettings {
                url: amqp_url(),
                destination: Destination::Queue(self.queue.clone()),
                confirm_timeout: Duration::from_secs(5),
                reconnect: Backoff {
                    initial: Duration::from_millis(20),
                    max: Duration::from_millis(200),
                    attempts: u32::MAX,
                },
            },
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    /// Declares the worker's topology (work queue and the rest) exactly as
    /// the worker does at start, without running one.
    pub async fn declare_topology(&self) {
        Broker::connect(self.broker_settings())
            .await
            .expect("declare the worker's topology")
            .close()
            .await;
    }

    /// Whether a queue exists (a passive declare on a throwaway channel, as
    /// a failed one closes its channel).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let channel = self.amqp.create_channel().await.expect("open a channel");
        let exists = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .is_ok();
        let _ = channel.close(200, "done".into()).await;
        exists
    }

    /// Takes every message of a queue: body and delivery mode.
    pub async fn take_messages(&self, queue: &str) -> Vec<QueuedMessage> {
        let mut out = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(QueuedMessage {
                body: got.delivery.data,
                persistent: *got.delivery.properties.delivery_mode() == Some(2),
                routing_key: got.delivery.routing_key.to_string(),
            });
        }
        out
    }

    /// A topic exchange of this test's own (deleted when its last binding
    /// goes) with one exclusive queue (gone with this test's connection)
    /// per binding key. Returns the exchange and the queues, in key order.
    pub async fn exchange_with_queues(&self, keys: &[&str]) -> (String, Vec<String>) {
        let exchange = format!("{}.exchange", self.name);
        self.channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the test exchange");
        let mut queues = Vec::new();
        for key in keys {
            let queue = format!("{}.bound.{key}", self.name);
            self.channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare a bound queue");
            self.channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    (*key).into(),
                    lapin::options::QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the queue");
            queues.push(queue);
        }
        (exchange, queues)
    }

    /// Drops the database and the queues (also done on drop, so a failed
    /// test leaves nothing behind).
    pub async fn finish(self) {
        self.sim.stop();
        let _ = self.amqp.close(200, "done".into()).await;
        self.db.close().await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.sim.stop();
        let (name, queues) = (
            self.name.clone(),
            [
                self.queue.clone(),
                self.dead_queue.clone(),
                format!("{}.retry", self.queue),
            ],
        );
        // A runtime of its own: this may run while a test's runtime unwinds.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(amqp) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                {
                    if let Ok(channel) = amqp.create_channel().await {
                        for queue in &queues {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                    }
                    let _ = amqp.close(200, "done".into()).await;
                }
                if let Ok(admin) = PgPoolOptions::new()
                    .max_connections(1)
                    .connect(&database_url())
                    .await
                {
                    let _ = sqlx::query(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&admin)
                    .await;
                    admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Polls `condition` until it holds, failing the test after the deadline.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `probe` until it yields a value, failing the test after the
/// deadline.
pub async fn wait_for<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A message event as the PBX's webhook sends it.
pub fn new_message_event(session_id: i64) -> Value {
    serde_json::json!({"type": 30031, "sn": "3631A0000001", "msg": {"session_id": session_id, "msg_id": session_id * 10, "msg_type": 0}})
}

/// The webhook secret every intake test signs with. The signatures in
/// `intake.rs` were computed from it independently with OpenSSL.
pub const WEBHOOK_SECRET: &str = "zD4kX9mQ2vL7pR1sT8wY3nB6cF0hJ5aE";

/// A message read off a queue.
#[derive(Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub body: Vec<u8>,
    /// `delivery_mode` 2.
    pub persistent: bool,
    pub routing_key: String,
}

/// An in-process `ingest` on a free port, with an HTTP client for it.
pub struct RunningIntake {
    pub intake: Intake,
    pub stop: CancellationToken,
    pub base_url: String,
    pub http: reqwest::Client,
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl RunningIntake {
    pub async fn start(settings: IntakeSettings) -> Self {
        let stop = CancellationToken::new();
        let intake = Intake::start(settings, stop.clone())
            .await
            .expect("the intake starts");
        let base_url = format!("http://{}", intake.local_addr());
        Self {
            intake,
            stop,
            base_url,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs a webhook body to the default path, with `X-Signature` if given.
    pub async fn post(&self, body: impl Into<Vec<u8>>, signature: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/webhooks/yeastar", self.base_url))
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(signature) = signature {
            request = request.header("X-Signature", signature);
        }
        answer(request.send().await.expect("the intake answers")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("the intake answers");
        answer(response).await
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        wait_until(&format!("/readyz answers {status}"), || async {
            self.get("/readyz").await.status == status
        })
        .await;
    }

    /// Stops it gracefully and waits until it has.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.intake.stopped().await.expect("a clean shutdown");
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        body: response.text().await.unwrap_or_default(),
    }
}

/// A TCP relay to the real RabbitMQ that a test can cut and restore, to
/// play a broker outage without touching the shared broker.
pub struct BrokerProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<CancellationToken>>,
    /// While true, the broker's bytes (confirms included) are held back.
    hold: tokio::sync::watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl BrokerProxy {
    /// Starts relaying, up or down.
    pub async fn start(up: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let target = broker_address();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(up));
        let links = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (hold, held) = tokio::sync::watch::channel(false);
        let (accepting, current) = (Arc::clone(&up), Arc::clone(&links));
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client); // a broker that is down: the connection ends at once
                    continue;
                }
                let cut = current.lock().unwrap().clone();
                let (target, held) = (target.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (mut client_rx, client_tx) = client.into_split();
                    let (server_rx, mut server_tx) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut client_rx, &mut server_tx) => {}
                        () = relay_replies(server_rx, client_tx, held) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
        });
        Self {
            port,
            up,
            links,
            hold,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut links = self.links.lock().unwrap();
        links.cancel();
        *links = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds back (or releases) everything the broker sends, so a publish
    /// stays waiting for its confirm.
    pub fn hold_replies(&self, hold: bool) {
        self.hold.send_replace(hold);
    }
}

async fn relay_replies(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for BrokerProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.links.lock().unwrap().cancel();
    }
}

/// `host:port` of the broker in `AMQP_URL`.
fn broker_address() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit('@').next().unwrap_or(authority);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}
