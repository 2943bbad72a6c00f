//! `SimulatorArgs` (`simulate-pbx`): the local stand-in for the Yeastar
//! API. Never used by the worker.

use clap::Args;

use super::defaults;
use crate::secret::Secret;

#[derive(Debug, Args)]
pub struct SimulatorArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "SIMULATOR_LISTEN",
        value_name = "SIMULATOR_LISTEN",
        default_value = defaults::SIMULATOR_LISTEN
    )]
    pub listen: std::net::SocketAddr,
    /// The client id the simulator accepts.
    #[arg(
        long,
        env = "YEASTAR_CLIENT_ID",
        value_name = "YEASTAR_CLIENT_ID",
        default_value = defaults::SIMULATOR_CLIENT_ID
    )]
    pub client_id: String,
    /// The client secret the simulator accepts.
    #[arg(
        long,
        env = "YEASTAR_CLIENT_SECRET",
        value_name = "YEASTAR_CLIENT_SECRET",
        default_value = defaults::SIMULATOR_CLIENT_SECRET,
        hide_env_values = true
    )]
    pub client_secret: Secret,
    /// Added to every answer, in milliseconds.
    #[arg(
        long,
        env = "SIMULATOR_LATENCY_MS",
        value_name = "SIMULATOR_LATENCY_MS",
        default_value_t = defaults::SIMULATOR_LATENCY_MS
    )]
    pub latency_ms: u64,
    /// Access token lifetime, in seconds.
    #[arg(long, env = "SIMULATOR_TOKEN_TTL", value_name = "SIMULATOR_TOKEN_TTL", default_value_t = defaults::SIMULATOR_TOKEN_TTL, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl: u64,
    /// Share of message_session/get calls answered with a transient error
    /// (-2, 70082 or HTTP 503), from 0 to 1.
    #[arg(
        long,
        env = "SIMULATOR_ERROR_RATE",
        value_name = "SIMULATOR_ERROR_RATE",
        default_value_t = defaults::SIMULATOR_ERROR_RATE
    )]
    pub error_rate: f64,
    /// Synthetic sessions `message_session/list` lists: ids 1 to this
    /// (0: only those a test set).
    #[arg(
        long,
        env = "SIMULATOR_LISTED_SESSIONS",
        value_name = "SIMULATOR_LISTED_SESSIONS",
        default_value_t = defaults::SIMULATOR_LISTED_SESSIONS
    )]
    pub listed_sessions: u64,
}
