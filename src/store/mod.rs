//! The Postgres store: the only part that speaks SQL (and the only importer
//! of `sqlx`). It applies migrations and writes PBX answers, never letting an
//! older answer overwrite a newer one; it never cancels a transaction from
//! the client side (see ARCHITECTURE.md).
//!
//! Rooms: `write` (the batch upsert: content changes, due times), `feed`
//! (the change feed: `NOTIFY session_enricher_changes` in the write's
//! transaction), `refresh` (claiming sessions due for a refresh), `sink`
//! (the pipeline's `AnswerSink`: retries while unavailable, isolates
//! refused data), `dead_letters` (the record of dead letters published),
//! `read` (read-back for people: `demo`, `enrich`, `bench`), `reconcile`
//! (stored rows to compare, and the advisory lock of one replica's
//! reconciliation) and `admin` (scratch databases for `bench`).
//! `Store` itself never retries: `sink` decides.

mod admin;
mod dead_letters;
mod feed;
mod read;
mod reconcile;
mod refresh;
mod sink;
mod write;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

pub use crate::processing::{Answer, BatchResult};
pub use feed::{CHANGES_CHANNEL, MAX_PBX_ID_BYTES};
pub use read::{AgentRow, CustomerRow, SessionRow, Snapshot};
pub use reconcile::{ReconcileLock, StoredSession};
pub use refresh::MAX_WAITING;
pub use sink::StoreSink;

/// How to reach the database and bound the work done there.
#[derive(Clone, Debug)]
pub struct StoreSettings {
    pub url: String,
    pub max_connections: u32,
    /// Postgres `statement_timeout`: bounds a statement without cancelling a
    /// transaction from the client side (see ARCHITECTURE.md).
    pub statement_timeout: Duration,
}

/// A failed store operation, as the caller must branch on it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or timed out: retry later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database refused this data for good (a data or integrity error,
    /// e.g. a NUL byte in a text): retrying cannot help.
    #[error("database refused the data: {0}")]
    Refused(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // SQLSTATE classes 22 (data exception) and 23 (integrity
            // constraint violation) depend on the data, not on the moment.
            if db
                .code()
                .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
            {
                return StoreError::Refused(db.to_string());
            }
        }
        StoreError::Unavailable(e.to_string())
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Opens a lazily-connecting pool: no connection is made until first use.
    pub fn connect_lazy(settings: &StoreSettings) -> Result<Self, StoreError> {
        let timeout_ms = settings.statement_timeout.as_millis().to_string();
        let options = PgConnectOptions::from_str(&settings.url)
            .map_err(|e| StoreError::Refused(format!("DATABASE_URL: {e}")))?
            .application_name("session-enricher")
            .options([
                ("statement_timeout", timeout_ms.as_str()),
                ("lock_timeout", timeout_ms.as_str()),
            ]);
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with(options);
        Ok(Self { pool })
    }

    /// Opens the pool and, with `migrate`, applies pending migrations.
    pub async fn open(settings: &StoreSettings, migrate: bool) -> Result<Self, StoreError> {
        let store = Self::connect_lazy(settings)?;
        if migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Applies pending migrations (several replicas may do this at once:
    /// sqlx serialises them with an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations")
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("migrations: {e}")))
    }

    /// Whether the database answers (for readiness and startup checks).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
