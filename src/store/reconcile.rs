//! What reconciliation needs from the database besides the worker's write
//! path: the stored Session_Info of some sessions (to tell added, changed
//! and unchanged apart), the sessions stored as waiting, the advisory lock
//! that lets one replica at a time reconcile a PBX, and, for its holder,
//! the record of the PBX's last run (`reconcile_runs`), so replicas
//! reconcile once per interval between them. The lock lives on
//! a connection of its own that is closed, never returned to the pool,
//! when the lock is released or dropped: a session-level advisory lock
//! left on a pooled connection would be held for as long as that
//! connection lives.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sqlx::Row;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;

use super::{Store, StoreError};

/// A session row as reconciliation compares it.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    /// The Session_Info the row was written from.
    pub raw: Value,
    /// Marked missing (the PBX said it does not exist).
    pub missing: bool,
}

/// The advisory lock of one PBX's reconciliation, held until `release`
/// (or drop, which closes its connection: the server then releases it).
pub struct ReconcileLock {
    connection: PoolConnection<Postgres>,
    key: i64,
}

impl Store {
    /// The stored rows of these sessions, by id (absent: no row).
    pub async fn stored_sessions(
        &self,
        pbx: &str,
        ids: &[i64],
    ) -> Result<HashMap<i64, StoredSession>, StoreError> {
        let rows = sqlx::query(
            "SELECT session_id, raw, missing_at IS NOT NULL AS missing
               FROM message_sessions WHERE pbx = $1 AND session_id = ANY($2)",
        )
        .bind(pbx)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let stored = StoredSession {
                    raw: row.get("raw"),
                    missing: row.get("missing"),
                };
                (row.get("session_id"), stored)
            })
            .collect())
    }

    /// Sessions stored with pending agents (not marked missing), in id
    /// order.
    pub async fn waiting_sessions(&self, pbx: &str) -> Result<Vec<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT s.session_id FROM message_sessions s
              WHERE s.pbx = $1 AND s.missing_at IS NULL
                AND EXISTS (SELECT 1 FROM session_pending_agents p
                             WHERE p.pbx = s.pbx AND p.session_id = s.session_id)
              ORDER BY s.session_id",
        )
        .bind(pbx)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes the reconciliation lock of `pbx` if no one holds it
    /// (`pg_try_advisory_lock`, never waiting); `None` if another session
    /// holds it.
    pub async fn try_reconcile_lock(&self, pbx: &str) -> Result<Option<ReconcileLock>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        // Whatever happens from here, this connection is not reused.
        connection.close_on_drop();
        let key = reconcile_lock_key(pbx);
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *connection)
            .await?;
        Ok(taken.then_some(ReconcileLock { connection, key }))
    }
}

impl ReconcileLock {
    /// Whether no run of this PBX started within `interval` (by the
    /// database's clock, the same for every replica).
    pub async fn is_due(&mut self, pbx: &str, interval: Duration) -> Result<bool, StoreError> {
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        Ok(sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM reconcile_runs
                                 WHERE pbx = $1 AND started_at > now() - $2 * interval '1 millisecond')",
        )
        .bind(pbx)
        .bind(interval_ms)
        .fetch_one(&mut *self.connection)
        .await?)
    }

    /// Records that a run of this PBX starts now.
    pub async fn record_start(&mut self, pbx: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO reconcile_runs (pbx, started_at) VALUES ($1, now())
             ON CONFLICT (pbx) DO UPDATE SET started_at = now(), finished_at = NULL, result = NULL",
        )
        .bind(pbx)
        .execute(&mut *self.connection)
        .await?;
        Ok(())
    }

    /// Records how the run that started last ended (`done`, `incomplete`,
    /// `failed`).
    pub async fn record_end(&mut self, pbx: &str, result: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE reconcile_runs SET finished_at = now(), result = $2 WHERE pbx = $1")
            .bind(pbx)
            .bind(result)
            .execute(&mut *self.connection)
            .await?;
        Ok(())
    }

    /// Releases the lock and closes its connection.
    pub async fn release(mut self) {
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut *self.connection)
            .await;
        if let Err(e) = unlocked {
            // Closing the connection releases it all the same.
            tracing::debug!(error = %e, "Could not release the reconciliation lock; closing its connection.");
        }
        let _ = self.connection.close().await;
    }
}

/// The advisory lock key of a PBX's reconciliation: FNV-1a (64 bits) of a
/// fixed prefix and the PBX id, the same in every replica and release.
fn reconcile_lock_key(pbx: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in "session-enricher reconcile ".bytes().chain(pbx.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // The same 64 bits, as Postgres's bigint key.
    hash as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pbx_has_its_own_stable_lock_key() {
        assert_eq!(reconcile_lock_key("a"), reconcile_lock_key("a"));
        assert_ne!(reconcile_lock_key("a"), reconcile_lock_key("b"));
        // Fixed across releases: replicas of two versions must agree.
        assert_eq!(reconcile_lock_key(""), 5_759_018_114_682_140_896_i64);
    }
}
