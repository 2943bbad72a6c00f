//! Read-back for people (`demo`, `enrich`, `bench`): row counts and a
//! flattened snapshot of some sessions. The worker never reads through here.

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Rows stored for a PBX: sessions, customers, pending agents.
    pub async fn row_counts(&self, pbx: &str) -> Result<(i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM message_sessions WHERE pbx = $1),
                    (SELECT count(*) FROM customers WHERE pbx = $1),
                    (SELECT count(*) FROM session_pending_agents WHERE pbx = $1)",
        )
        .bind(pbx)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.get(0), row.get(1), row.get(2)))
    }

    /// The stored rows for these sessions, for people to read.
    pub async fn snapshot(&self, pbx: &str, ids: &[i64]) -> Result<Snapshot, StoreError> {
        let sessions = sqlx::query(
            "SELECT session_id, channel_type, channel_name, customer_user_type, customer_user_no,
                    prechat_name, website_domain, page_name, origin, missing_at IS NOT NULL AS missing
               FROM message_sessions WHERE pbx = $1 AND session_id = ANY($2) ORDER BY session_id",
        )
        .bind(pbx)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| SessionRow {
            session_id: r.get("session_id"),
            channel_type: r.get("channel_type"),
            channel_name: r.get("channel_name"),
            customer: match (r.get::<Option<i32>, _>("customer_user_type"), r.get::<Option<String>, _>("customer_user_no")) {
                (Some(t), Some(no)) => Some(format!("{t}/{no}")),
                _ => None,
            },
            detail: r
                .get::<Option<String>, _>("prechat_name")
                .or(r.get("website_domain"))
                .or(r.get("page_name"))
                .or(r.get("origin")),
            missing: r.get("missing"),
        })
        .collect();
        let customers = sqlx::query(
            "SELECT DISTINCT c.user_type, c.user_no, c.username
               FROM customers c JOIN message_sessions s
                 ON s.pbx = c.pbx AND s.customer_user_type = c.user_type AND s.customer_user_no = c.user_no
              WHERE s.pbx = $1 AND s.session_id = ANY($2) ORDER BY c.user_type, c.user_no",
        )
        .bind(pbx)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| CustomerRow {
            user_type: r.get("user_type"),
            user_no: r.get("user_no"),
            username: r.get("username"),
        })
        .collect();
        let pending_agents = sqlx::query(
            "SELECT session_id, position, agent_user_id, agent_user_no, agent_username
               FROM session_pending_agents WHERE pbx = $1 AND session_id = ANY($2)
              ORDER BY session_id, position",
        )
        .bind(pbx)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| AgentRow {
            session_id: r.get("session_id"),
            position: r.get("position"),
            user_id: r.get("agent_user_id"),
            user_no: r.get("agent_user_no"),
            username: r.get("agent_username"),
        })
        .collect();
        Ok(Snapshot {
            sessions,
            customers,
            pending_agents,
        })
    }
}

/// Stored rows for a set of sessions, flattened for display.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sessions: Vec<SessionRow>,
    pub customers: Vec<CustomerRow>,
    pub pending_agents: Vec<AgentRow>,
}

#[derive(Clone, Debug)]
pub struct SessionRow {
    pub session_id: i64,
    pub channel_type: Option<String>,
    pub channel_name: Option<String>,
    /// `user_type/user_no`.
    pub customer: Option<String>,
    /// The first of pre-chat name, website domain, page name, origin.
    pub detail: Option<String>,
    pub missing: bool,
}

#[derive(Clone, Debug)]
pub struct CustomerRow {
    pub user_type: i32,
    pub user_no: String,
    pub username: Option<String>,
}

#[derive(Clone, Debug)]
pub struct AgentRow {
    pub session_id: i64,
    pub position: i32,
    pub user_id: i64,
    pub user_no: Option<String>,
    pub username: Option<String>,
}
