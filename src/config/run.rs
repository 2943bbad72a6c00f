//! `RunArgs` (`run`: the worker) and `HttpArgs`, its operations endpoint,
//! which `healthcheck` asks; `RunPlan`, what `run` runs with. Only groups
//! the parts, each validating its own.

use std::net::SocketAddr;

use clap::Args;

use super::{BrokerArgs, ConfigError, PbxArgs, StoreArgs, WorkerArgs, defaults};
use crate::broker::BrokerSettings;
use crate::pbx::PbxSettings;
use crate::store::StoreSettings;
use crate::worker::WorkerSettings;

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

/// The worker (`run`), configured: the one way from flags to the worker's
/// settings (`bench` starts its worker through it too).
pub struct RunPlan {
    pub store: StoreSettings,
    pub broker: BrokerSettings,
    pub pbx: PbxSettings,
    pub worker: WorkerSettings,
    pub http_addr: SocketAddr,
    pub migrate: bool,
}

impl RunArgs {
    pub fn plan(&self) -> Result<RunPlan, ConfigError> {
        Ok(RunPlan {
            store: self.store.settings()?,
            broker: self.broker.settings()?,
            pbx: self.pbx.settings()?,
            worker: self.worker.settings(
                &self.pbx.yeastar_pbx_id,
                usize::from(self.pbx.pbx_concurrency),
                usize::from(self.pbx.query_batch),
            )?,
            http_addr: self.http.http_addr,
            migrate: !self.no_migrate,
        })
    }
}

#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Address of the operations endpoint: GET /healthz (liveness), /readyz
    /// (readiness), /metrics (Prometheus).
    #[arg(
        long,
        env = "ENRICHER_HTTP_ADDR",
        value_name = "ENRICHER_HTTP_ADDR",
        default_value = defaults::HTTP_ADDR
    )]
    pub http_addr: SocketAddr,
}
