//! Scratch databases for `bench`: never used by the worker or the intake.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::{Store, StoreError};

impl Store {
    /// Creates database `name` afresh (dropping it first) on the server of
    /// `admin_url`; returns the URL that reaches it. For benchmarks.
    pub async fn recreate_database(admin_url: &str, name: &str) -> Result<String, StoreError> {
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(StoreError::Refused(format!(
                "`{name}` is not a plain database name"
            )));
        }
        let options = PgConnectOptions::from_str(admin_url)
            .map_err(|e| StoreError::Refused(format!("DATABASE_URL: {e}")))?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        admin.close().await;
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url, None), |(b, q)| (b, Some(q)));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let base = base[scheme_end..]
            .find('/')
            .map_or(base, |slash| &base[..scheme_end + slash]);
        Ok(match query {
            Some(q) => format!("{base}/{name}?{q}"),
            None => format!("{base}/{name}"),
        })
    }
}
