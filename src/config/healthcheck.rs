//! `HealthcheckArgs` (`healthcheck`): which health endpoint to ask.

use clap::Args;

use super::HttpArgs;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub http: HttpArgs,
    /// The path to ask: /healthz (alive) or /readyz (ready).
    #[arg(long, default_value = "/healthz", value_parser = ["/healthz", "/readyz"])]
    pub path: String,
}
