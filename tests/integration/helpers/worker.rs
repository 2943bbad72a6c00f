//! The worker under test: built from `WorkerSetup` and run in-process
//! (`TestEnv::spawn`), stopped gracefully (`RunningWorker::shutdown`), or
//! run as the real binary (`TestEnv::binary_run`). `build` is the only place
//! that knows how a `Worker` is constructed.

use std::sync::Arc;

use session_enricher::broker::BrokerSettings;
use session_enricher::outcome::{CountsSnapshot, OutcomeCounts};
use session_enricher::pbx::{PbxClient, PbxSettings, PbxStatus};
use session_enricher::simulator::SimulatorSettings;
use session_enricher::status::WorkerStatus;
use session_enricher::store::{Store, StoreSettings};
use session_enricher::worker::{Worker, WorkerError, WorkerSettings};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::env::TestEnv;
use super::fixtures::PBX;
use super::services::amqp_url;
use super::wait::wait_until;

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
        let (worker, pbx) = build(setup, &counts);
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
}

/// The worker under test, and its PBX client's status, built from `setup`.
fn build(setup: WorkerSetup, counts: &Arc<OutcomeCounts>) -> (Worker, Arc<PbxStatus>) {
    let pbx_client = PbxClient::new(setup.pbx).unwrap();
    let pbx = pbx_client.status();
    let worker = Worker::new(
        setup.broker,
        Arc::new(pbx_client),
        Store::connect_lazy(&setup.store).unwrap(),
        setup.worker,
        Arc::clone(counts),
    );
    (worker, pbx)
}
