//! `RunArgs` (`run`: the worker) and `HttpArgs`, its operations endpoint,
//! which `healthcheck` asks. Only groups the parts; validates nothing itself.

use clap::Args;

use super::{BrokerArgs, PbxArgs, StoreArgs, WorkerArgs, defaults};

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
        default_value = defaults::HTTP_ADDR
    )]
    pub http_addr: std::net::SocketAddr,
}
