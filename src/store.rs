//! The Postgres store: the only module that speaks SQL (and the only importer
//! of `sqlx`). It applies migrations and writes one fetched session, its
//! customer and its pending-agent set in one transaction, never letting an
//! older PBX answer overwrite a newer one. It never retries: callers decide.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use crate::metrics::{self, DbWrite};
use crate::session::{FetchedSession, SessionId};

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

/// What writing a fetched session did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// The rows now reflect this answer.
    Applied,
    /// A newer answer was already stored; nothing changed.
    Stale,
}

/// What marking a session missing did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkedMissing {
    /// The row is marked missing and its pending agents are gone.
    Marked,
    /// No row for this session (nothing to mark), or a newer answer is stored.
    Nothing,
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

    /// Writes a session, its customer and its pending-agent set in one
    /// transaction. The agent set is replaced: agents no longer listed are
    /// deleted. If a newer answer is stored, nothing changes (`Stale`).
    pub async fn write_session(
        &self,
        pbx: &str,
        fetched: &FetchedSession,
    ) -> Result<Written, StoreError> {
        let timer = metrics::get().db_transaction(DbWrite::Session, 1);
        let mut tx = self.pool.begin().await?;
        if !upsert_session(&mut tx, pbx, fetched).await? {
            tx.rollback().await?;
            return Ok(Written::Stale);
        }
        if let Some(customer) = &fetched.info.customer {
            sqlx::query(
                "INSERT INTO customers AS c (pbx, user_type, user_no, username, avatar, fetched_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (pbx, user_type, user_no) DO UPDATE
                   SET username = EXCLUDED.username, avatar = EXCLUDED.avatar,
                       fetched_at = EXCLUDED.fetched_at, updated_at = now()
                 WHERE c.fetched_at <= EXCLUDED.fetched_at",
            )
            .bind(pbx)
            .bind(customer.user_type)
            .bind(&customer.user_no)
            .bind(&customer.username)
            .bind(&customer.avatar)
            .bind(fetched.fetched_at)
            .execute(&mut *tx)
            .await?;
        }
        replace_pending_agents(&mut tx, pbx, fetched).await?;
        tx.commit().await?;
        timer.committed();
        Ok(Written::Applied)
    }

    /// Records that the PBX said (at `seen_at`) the session does not exist:
    /// sets `missing_at` (keeping the first time) and removes its pending
    /// agents, unless a newer answer is stored.
    pub async fn mark_missing(
        &self,
        pbx: &str,
        id: SessionId,
        seen_at: DateTime<Utc>,
    ) -> Result<MarkedMissing, StoreError> {
        let timer = metrics::get().db_transaction(DbWrite::Missing, 1);
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE message_sessions
                SET missing_at = COALESCE(missing_at, $3), fetched_at = $3, updated_at = now()
              WHERE pbx = $1 AND session_id = $2 AND fetched_at <= $3",
        )
        .bind(pbx)
        .bind(id.get())
        .bind(seen_at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        if marked {
            sqlx::query("DELETE FROM session_pending_agents WHERE pbx = $1 AND session_id = $2")
                .bind(pbx)
                .bind(id.get())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        timer.committed();
        Ok(if marked {
            MarkedMissing::Marked
        } else {
            MarkedMissing::Nothing
        })
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

/// Inserts or updates the session row unless a newer answer is stored.
/// Returns whether the row now reflects `fetched`.
async fn upsert_session(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    fetched: &FetchedSession,
) -> Result<bool, StoreError> {
    let s = &fetched.info;
    let applied = sqlx::query(
        "INSERT INTO message_sessions AS m (
             pbx, session_id, channel_type, channel_name, did_number, to_number, origin,
             page_name, website_domain, customer_user_type, customer_user_no,
             prechat_name, prechat_email, prechat_phone, prechat_first_name, prechat_last_name,
             raw, fetched_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
         ON CONFLICT (pbx, session_id) DO UPDATE SET
             channel_type = EXCLUDED.channel_type, channel_name = EXCLUDED.channel_name,
             did_number = EXCLUDED.did_number, to_number = EXCLUDED.to_number,
             origin = EXCLUDED.origin, page_name = EXCLUDED.page_name,
             website_domain = EXCLUDED.website_domain,
             customer_user_type = EXCLUDED.customer_user_type,
             customer_user_no = EXCLUDED.customer_user_no,
             prechat_name = EXCLUDED.prechat_name, prechat_email = EXCLUDED.prechat_email,
             prechat_phone = EXCLUDED.prechat_phone,
             prechat_first_name = EXCLUDED.prechat_first_name,
             prechat_last_name = EXCLUDED.prechat_last_name,
             raw = EXCLUDED.raw, fetched_at = EXCLUDED.fetched_at,
             missing_at = NULL, updated_at = now()
         WHERE m.fetched_at <= EXCLUDED.fetched_at",
    )
    .bind(pbx)
    .bind(s.id.get())
    .bind(&s.channel_type)
    .bind(&s.channel_name)
    .bind(&s.did_number)
    .bind(&s.to_number)
    .bind(&s.origin)
    .bind(&s.page_name)
    .bind(&s.website_domain)
    .bind(s.customer.as_ref().map(|c| c.user_type))
    .bind(s.customer.as_ref().map(|c| c.user_no.as_str()))
    .bind(&s.pre_chat.name)
    .bind(&s.pre_chat.email)
    .bind(&s.pre_chat.phone)
    .bind(&s.pre_chat.first_name)
    .bind(&s.pre_chat.last_name)
    .bind(&s.raw)
    .bind(fetched.fetched_at)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(applied > 0)
}

/// Makes the stored agent set equal to the fetched one, keeping
/// `first_seen_at` of agents that stay. Agents are unique per session (the
/// decoder drops repeats), as one statement may touch a key only once.
async fn replace_pending_agents(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    fetched: &FetchedSession,
) -> Result<(), StoreError> {
    let agents = &fetched.info.pending_agents;
    let ids: Vec<i64> = agents.iter().map(|a| a.user_id).collect();
    sqlx::query(
        "DELETE FROM session_pending_agents
          WHERE pbx = $1 AND session_id = $2 AND NOT (agent_user_id = ANY($3))",
    )
    .bind(pbx)
    .bind(fetched.info.id.get())
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    if agents.is_empty() {
        return Ok(());
    }
    let numbers: Vec<Option<String>> = agents.iter().map(|a| a.user_no.clone()).collect();
    let names: Vec<Option<String>> = agents.iter().map(|a| a.username.clone()).collect();
    let avatars: Vec<Option<String>> = agents.iter().map(|a| a.avatar.clone()).collect();
    let positions: Vec<i32> = (0..agents.len())
        .map(|p| i32::try_from(p).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO session_pending_agents AS a
             (pbx, session_id, agent_user_id, agent_user_no, agent_username, agent_avatar, position)
         SELECT $1, $2, * FROM UNNEST($3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[])
         ON CONFLICT (pbx, session_id, agent_user_id) DO UPDATE SET
             agent_user_no = EXCLUDED.agent_user_no, agent_username = EXCLUDED.agent_username,
             agent_avatar = EXCLUDED.agent_avatar, position = EXCLUDED.position, updated_at = now()",
    )
    .bind(pbx)
    .bind(fetched.info.id.get())
    .bind(&ids)
    .bind(&numbers)
    .bind(&names)
    .bind(&avatars)
    .bind(&positions)
    .execute(&mut **tx)
    .await?;
    Ok(())
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
