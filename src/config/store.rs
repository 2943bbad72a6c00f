//! `StoreArgs`: the Postgres connection, shared by every command that
//! writes (and the whole of `migrate`). Validates; never connects.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, defaults, invalid};
use crate::store::StoreSettings;

#[derive(Debug, Args)]
pub struct StoreArgs {
    /// Postgres connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        value_name = "DATABASE_URL",
        default_value = defaults::DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,
    /// Database connections in the pool.
    #[arg(long, env = "ENRICHER_DB_MAX_CONNECTIONS", value_name = "ENRICHER_DB_MAX_CONNECTIONS", default_value_t = defaults::DB_MAX_CONNECTIONS, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,
    /// Postgres statement and lock timeout, in milliseconds.
    #[arg(long, env = "ENRICHER_DB_TIMEOUT_MS", value_name = "ENRICHER_DB_TIMEOUT_MS", default_value_t = defaults::DB_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..))]
    pub db_timeout_ms: u64,
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
