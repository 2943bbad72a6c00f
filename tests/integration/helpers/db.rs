//! Reads of this test's rows that several tests assert on (one-off queries
//! stay in their test, on `TestEnv::db`). Never writes.

use sqlx::Row;

use super::env::TestEnv;
use super::fixtures::PBX;

impl TestEnv {
    pub async fn session_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM message_sessions")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn session_row(&self, id: i64) -> Option<sqlx::postgres::PgRow> {
        sqlx::query("SELECT * FROM message_sessions WHERE pbx = $1 AND session_id = $2")
            .bind(PBX)
            .bind(id)
            .fetch_optional(&self.db)
            .await
            .unwrap()
    }

    /// `(agent_user_id, position)` of a session's pending agents, in order.
    pub async fn pending_agents(&self, id: i64) -> Vec<(i64, i32)> {
        sqlx::query("SELECT agent_user_id, position FROM session_pending_agents WHERE pbx = $1 AND session_id = $2 ORDER BY position")
            .bind(PBX)
            .bind(id)
            .fetch_all(&self.db)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}
