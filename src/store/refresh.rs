//! Refresh due times: which waiting sessions are to be fetched again without
//! an event, shared by replicas through Postgres. Every accepted write sets
//! a session's `refresh_due_at` (`write`); a replica claims due sessions
//! with `FOR UPDATE SKIP LOCKED`, pushing their due time out by a lease, so
//! two replicas never claim one session at once and a replica that dies
//! mid-refresh leaves its sessions to the others once the lease passes.
//! Never fetches anything itself: the worker's refresh loop does.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Store, StoreError};
use crate::session::SessionId;

/// A session that has had pending agents for longer than this is no longer
/// refreshed (its due time is cleared), though events still fetch it: the
/// PBX closes a message session after 24 hours without activity, and a
/// session nobody picked up in a day is not one a timer should keep
/// asking about. A new stretch of waiting (after one answer with nobody
/// pending) starts the clock again.
pub const MAX_WAITING: Duration = Duration::from_secs(24 * 60 * 60);

/// A duration as whole microseconds (what Postgres keeps), saturating.
pub(super) fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

impl Store {
    /// Claims up to `limit` sessions of `pbx` whose refresh is due, the
    /// longest overdue first, and returns their ids in that order. One
    /// statement: due rows locked by someone else are skipped, and each
    /// claimed row's due time moves to `now() + lease`, so no other replica
    /// claims it until the lease passes; the write of its refreshed answer
    /// then sets the next due time (or none). A due session that has waited
    /// longer than `MAX_WAITING` is not claimed: its due time is cleared.
    /// Never waits for a lock.
    pub async fn claim_due_refreshes(
        &self,
        pbx: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<SessionId>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, DateTime<Utc>, bool)> = sqlx::query_as(
            "WITH due AS (
                 SELECT session_id, refresh_due_at FROM message_sessions
                  WHERE pbx = $1 AND refresh_due_at <= now()
                  ORDER BY refresh_due_at
                  LIMIT $2
                  FOR UPDATE SKIP LOCKED)
             UPDATE message_sessions m
                SET refresh_due_at = CASE
                    WHEN m.waiting_since >= now() - $4 * interval '1 microsecond'
                    THEN now() + $3 * interval '1 microsecond' END
               FROM due
              WHERE m.pbx = $1 AND m.session_id = due.session_id
             RETURNING m.session_id, due.refresh_due_at, m.refresh_due_at IS NOT NULL",
        )
        .bind(pbx)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(micros(lease))
        .bind(micros(MAX_WAITING))
        .fetch_all(&self.pool)
        .await?;
        let mut claimed: Vec<(DateTime<Utc>, i64)> = rows
            .into_iter()
            .filter(|&(_, _, claimed)| claimed)
            .map(|(id, was_due, _)| (was_due, id))
            .collect();
        claimed.sort_unstable();
        Ok(claimed
            .into_iter()
            .filter_map(|(_, id)| SessionId::new(id))
            .collect())
    }

    /// How long until the next session of `pbx` is due for a refresh (zero
    /// if one is overdue), or None if none is to be refreshed: how long a
    /// refresh loop with nothing to claim may sleep, capped at the refresh
    /// interval (a write in the meantime sets a due time that far ahead).
    pub async fn next_refresh_due(&self, pbx: &str) -> Result<Option<Duration>, StoreError> {
        let wait: Option<i64> = sqlx::query_scalar(
            "SELECT (EXTRACT(EPOCH FROM min(refresh_due_at) - now()) * 1000000)::bigint
               FROM message_sessions WHERE pbx = $1 AND refresh_due_at IS NOT NULL",
        )
        .bind(pbx)
        .fetch_one(&self.pool)
        .await?;
        // Overdue: a negative wait, no wait at all.
        Ok(wait.map(|us| Duration::from_micros(u64::try_from(us).unwrap_or(0))))
    }
}
