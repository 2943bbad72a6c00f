//! `TestEnv`: what one test owns, so tests run in parallel — its own
//! database (migrated), its own queue names (topology declared) and its own
//! PBX simulator — and their cleanup, also when the test fails. Never
//! touches another test's database or queues.

use lapin::options::{ConfirmSelectOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use session_enricher::broker::Broker;
use session_enricher::simulator::{Simulator, SimulatorSettings};
use session_enricher::store::Store;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::services::{amqp_url, database_url, with_database};

pub struct TestEnv {
    /// Names this test's database and prefixes its queues.
    pub name: String,
    pub db_url: String,
    pub db: PgPool,
    /// The work queue.
    pub queue: String,
    pub dead_queue: String,
    pub sim: Simulator,
    pub(super) amqp: Connection,
    /// A confirm-mode channel for publishing and reading queues.
    pub(super) channel: lapin::Channel,
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
        env.declare_topology().await;
        env
    }

    pub async fn migrate(&self) {
        let store = Store::connect_lazy(&self.store_settings()).unwrap();
        store.migrate().await.expect("migrations apply");
        store.close().await;
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
