//! `PbxArgs`: how to reach and treat the PBX (`run`, `enrich`). Validates;
//! never connects, and never shows the client secret.

use std::time::Duration;

use clap::Args;

use super::{ConfigError, defaults, invalid};
use crate::backoff::Backoff;
use crate::pbx::PbxSettings;
use crate::secret::Secret;
use crate::store::MAX_PBX_ID_BYTES;

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
        default_value = defaults::API_PATH
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
        default_value = defaults::PBX_ID
    )]
    pub yeastar_pbx_id: String,
    /// PBX calls in flight at once (one fetcher each).
    #[arg(long, env = "ENRICHER_PBX_CONCURRENCY", value_name = "ENRICHER_PBX_CONCURRENCY", default_value_t = defaults::PBX_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub pbx_concurrency: u16,
    /// Timeout of one PBX request, in milliseconds.
    #[arg(long, env = "ENRICHER_PBX_TIMEOUT_MS", value_name = "ENRICHER_PBX_TIMEOUT_MS", default_value_t = defaults::PBX_TIMEOUT_MS, value_parser = clap::value_parser!(u64).range(100..))]
    pub pbx_timeout_ms: u64,
    /// Tries of a PBX call that fails transiently (first included), with
    /// exponential backoff and jitter between them.
    #[arg(long, env = "ENRICHER_PBX_ATTEMPTS", value_name = "ENRICHER_PBX_ATTEMPTS", default_value_t = defaults::PBX_ATTEMPTS, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub pbx_attempts: u32,
    /// First backoff wait between PBX tries, in milliseconds (doubles, up
    /// to 10 s).
    #[arg(long, env = "ENRICHER_PBX_BACKOFF_MS", value_name = "ENRICHER_PBX_BACKOFF_MS", default_value_t = defaults::PBX_BACKOFF_MS, value_parser = clap::value_parser!(u64).range(1..))]
    pub pbx_backoff_ms: u64,
    /// Session ids asked for per PBX call with `message_session/query`
    /// (1 to 100); 1 fetches each session with `message_session/get`.
    #[arg(long, env = "ENRICHER_QUERY_BATCH", value_name = "ENRICHER_QUERY_BATCH", default_value_t = defaults::QUERY_BATCH, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub query_batch: u16,
    /// Requests a second at most to the PBX, logins included, spaced evenly
    /// (unset: no limit). A `Retry-After` on HTTP 429/503 is honoured
    /// either way.
    #[arg(long, env = "ENRICHER_PBX_MAX_RPS", value_name = "ENRICHER_PBX_MAX_RPS", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub pbx_max_rps: Option<u32>,
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
        if self.yeastar_pbx_id.len() > MAX_PBX_ID_BYTES {
            return Err(invalid(
                "YEASTAR_PBX_ID",
                format!(
                    "must be at most {MAX_PBX_ID_BYTES} bytes (it is in every change-feed payload)"
                ),
            ));
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
            query_batch: usize::from(self.query_batch),
            max_rps: self.pbx_max_rps,
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
