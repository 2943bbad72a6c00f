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

    /// Whether a dead letter with this body digest was published recently.
    pub async fn dead_letter_recorded(&self, body_sha256: &[u8]) -> Result<bool, StoreError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM dead_letters WHERE body_sha256 = $1")
                .bind(body_sha256)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Records a dead letter the broker confirmed, and forgets those older
    /// than a day (a redelivery comes within minutes of the lost ack).
    pub async fn record_dead_letter(
        &self,
        body_sha256: &[u8],
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "WITH expired AS (DELETE FROM dead_letters WHERE dead_lettered_at < now() - interval '1 day')
             INSERT INTO dead_letters (body_sha256, reason) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(body_sha256)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Writes a batch of PBX answers in one transaction, one statement per
    /// table (multi-row `UNNEST` upserts). The batch may hold one session
    /// several times: only its newest answer is written, the others are
    /// `Superseded`. Rows are written in key order, so concurrent batches
    /// cannot deadlock; an answer older than the stored one is `Stale`.
    pub async fn write_batch(
        &self,
        pbx: &str,
        answers: &[Answer],
    ) -> Result<Vec<BatchResult>, StoreError> {
        let newest = newest_per_session(answers);
        let fetched: Vec<&FetchedSession> = newest
            .iter()
            .filter_map(|&i| match &answers[i] {
                Answer::Found(f) => Some(f.as_ref()),
                Answer::Missing { .. } => None,
            })
            .collect();
        let missing: Vec<(i64, DateTime<Utc>)> = newest
            .iter()
            .filter_map(|&i| match &answers[i] {
                Answer::Missing { id, seen_at } => Some((id.get(), *seen_at)),
                Answer::Found(_) => None,
            })
            .collect();

        let timer = metrics::get().db_transaction(DbWrite::Batch, newest.len());
        let mut tx = self.pool.begin().await?;
        let applied = upsert_sessions(&mut tx, pbx, &fetched).await?;
        let applied_sessions: Vec<&FetchedSession> = fetched
            .iter()
            .copied()
            .filter(|f| applied.contains(&f.info.id.get()))
            .collect();
        upsert_customers(&mut tx, pbx, &applied_sessions).await?;
        replace_agent_sets(&mut tx, pbx, &applied_sessions).await?;
        let marked = mark_batch_missing(&mut tx, pbx, &missing).await?;
        tx.commit().await?;
        timer.committed();

        Ok(answers
            .iter()
            .enumerate()
            .map(|(i, answer)| {
                let id = answer.session_id().get();
                if !newest.contains(&i) {
                    BatchResult::Superseded
                } else {
                    match answer {
                        Answer::Found(_) if applied.contains(&id) => BatchResult::Written,
                        Answer::Found(_) => BatchResult::Stale,
                        Answer::Missing { .. } => BatchResult::Missing {
                            marked: marked.contains(&id),
                        },
                    }
                }
            })
            .collect())
    }

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

/// What the PBX answered for one session, as the batch writer takes it.
#[derive(Clone, Debug)]
pub enum Answer {
    Found(Box<FetchedSession>),
    /// The PBX said (at `seen_at`) the session does not exist.
    Missing {
        id: SessionId,
        seen_at: DateTime<Utc>,
    },
}

impl Answer {
    pub fn session_id(&self) -> SessionId {
        match self {
            Answer::Found(f) => f.info.id,
            Answer::Missing { id, .. } => *id,
        }
    }

    fn answered_at(&self) -> DateTime<Utc> {
        match self {
            Answer::Found(f) => f.fetched_at,
            Answer::Missing { seen_at, .. } => *seen_at,
        }
    }
}

/// What writing one answer of a batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchResult {
    /// The rows now reflect this answer.
    Written,
    /// A newer answer was already stored.
    Stale,
    /// A newer answer for the same session in the same batch was written.
    Superseded,
    /// The session does not exist; `marked` if its row was marked missing.
    Missing { marked: bool },
}

/// Indexes of the newest answer per session, in session order (the order
/// rows are locked in).
fn newest_per_session(answers: &[Answer]) -> Vec<usize> {
    let mut newest: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for (i, answer) in answers.iter().enumerate() {
        let id = answer.session_id().get();
        match newest.get(&id) {
            Some(&j) if answers[j].answered_at() >= answer.answered_at() => {}
            _ => {
                newest.insert(id, i);
            }
        }
    }
    newest.into_values().collect()
}

/// Upserts session rows (unique, in key order) unless a newer answer is
/// stored; returns the ids written.
async fn upsert_sessions(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
) -> Result<std::collections::HashSet<i64>, StoreError> {
    if sessions.is_empty() {
        return Ok(Default::default());
    }
    let column = |f: fn(&FetchedSession) -> Option<String>| {
        sessions
            .iter()
            .map(|s| f(s))
            .collect::<Vec<Option<String>>>()
    };
    let ids: Vec<i64> = sessions.iter().map(|s| s.info.id.get()).collect();
    let customer_types: Vec<Option<i32>> = sessions
        .iter()
        .map(|s| s.info.customer.as_ref().map(|c| c.user_type))
        .collect();
    let raws: Vec<serde_json::Value> = sessions.iter().map(|s| s.info.raw.clone()).collect();
    let fetched_at: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.fetched_at).collect();
    let written: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO message_sessions AS m (
             pbx, session_id, channel_type, channel_name, did_number, to_number, origin,
             page_name, website_domain, customer_user_type, customer_user_no,
             prechat_name, prechat_email, prechat_phone, prechat_first_name, prechat_last_name,
             raw, fetched_at)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[], $14::text[],
             $15::text[], $16::text[], $17::jsonb[], $18::timestamptz[])
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
         WHERE m.fetched_at <= EXCLUDED.fetched_at
         RETURNING session_id",
    )
    .bind(pbx)
    .bind(&ids)
    .bind(column(|s| s.info.channel_type.clone()))
    .bind(column(|s| s.info.channel_name.clone()))
    .bind(column(|s| s.info.did_number.clone()))
    .bind(column(|s| s.info.to_number.clone()))
    .bind(column(|s| s.info.origin.clone()))
    .bind(column(|s| s.info.page_name.clone()))
    .bind(column(|s| s.info.website_domain.clone()))
    .bind(&customer_types)
    .bind(column(|s| s.info.customer.as_ref().map(|c| c.user_no.clone())))
    .bind(column(|s| s.info.pre_chat.name.clone()))
    .bind(column(|s| s.info.pre_chat.email.clone()))
    .bind(column(|s| s.info.pre_chat.phone.clone()))
    .bind(column(|s| s.info.pre_chat.first_name.clone()))
    .bind(column(|s| s.info.pre_chat.last_name.clone()))
    .bind(&raws)
    .bind(&fetched_at)
    .fetch_all(&mut **tx)
    .await?;
    Ok(written.into_iter().collect())
}

/// Upserts the customers of written sessions, one row per customer (the
/// newest answer), in key order.
async fn upsert_customers(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
) -> Result<(), StoreError> {
    let mut customers: std::collections::BTreeMap<
        (i32, &str),
        (&crate::session::Customer, DateTime<Utc>),
    > = Default::default();
    for s in sessions {
        if let Some(c) = &s.info.customer {
            let entry = customers
                .entry((c.user_type, c.user_no.as_str()))
                .or_insert((c, s.fetched_at));
            if s.fetched_at > entry.1 {
                *entry = (c, s.fetched_at);
            }
        }
    }
    if customers.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = customers.values().collect();
    sqlx::query(
        "INSERT INTO customers AS c (pbx, user_type, user_no, username, avatar, fetched_at)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
         ON CONFLICT (pbx, user_type, user_no) DO UPDATE
           SET username = EXCLUDED.username, avatar = EXCLUDED.avatar,
               fetched_at = EXCLUDED.fetched_at, updated_at = now()
         WHERE c.fetched_at <= EXCLUDED.fetched_at",
    )
    .bind(pbx)
    .bind(rows.iter().map(|(c, _)| c.user_type).collect::<Vec<i32>>())
    .bind(
        rows.iter()
            .map(|(c, _)| c.user_no.clone())
            .collect::<Vec<String>>(),
    )
    .bind(
        rows.iter()
            .map(|(c, _)| c.username.clone())
            .collect::<Vec<Option<String>>>(),
    )
    .bind(
        rows.iter()
            .map(|(c, _)| c.avatar.clone())
            .collect::<Vec<Option<String>>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, at)| *at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes each written session's agent set equal to its answer's, keeping
/// `first_seen_at` of agents that stay.
async fn replace_agent_sets(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
) -> Result<(), StoreError> {
    if sessions.is_empty() {
        return Ok(());
    }
    let session_ids: Vec<i64> = sessions.iter().map(|s| s.info.id.get()).collect();
    let mut agent_session = Vec::new();
    let mut agent_ids = Vec::new();
    let mut numbers = Vec::new();
    let mut names = Vec::new();
    let mut avatars = Vec::new();
    let mut positions = Vec::new();
    for s in sessions {
        for (position, a) in s.info.pending_agents.iter().enumerate() {
            agent_session.push(s.info.id.get());
            agent_ids.push(a.user_id);
            numbers.push(a.user_no.clone());
            names.push(a.username.clone());
            avatars.push(a.avatar.clone());
            positions.push(i32::try_from(position).unwrap_or(i32::MAX));
        }
    }
    sqlx::query(
        "DELETE FROM session_pending_agents p
          WHERE p.pbx = $1 AND p.session_id = ANY($2)
            AND NOT EXISTS (SELECT 1 FROM UNNEST($3::bigint[], $4::bigint[]) AS keep(session_id, agent_user_id)
                             WHERE keep.session_id = p.session_id AND keep.agent_user_id = p.agent_user_id)",
    )
    .bind(pbx)
    .bind(&session_ids)
    .bind(&agent_session)
    .bind(&agent_ids)
    .execute(&mut **tx)
    .await?;
    if agent_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO session_pending_agents AS a
             (pbx, session_id, agent_user_id, agent_user_no, agent_username, agent_avatar, position)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[])
         ON CONFLICT (pbx, session_id, agent_user_id) DO UPDATE SET
             agent_user_no = EXCLUDED.agent_user_no, agent_username = EXCLUDED.agent_username,
             agent_avatar = EXCLUDED.agent_avatar, position = EXCLUDED.position, updated_at = now()",
    )
    .bind(pbx)
    .bind(&agent_session)
    .bind(&agent_ids)
    .bind(&numbers)
    .bind(&names)
    .bind(&avatars)
    .bind(&positions)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Marks sessions missing (unless a newer answer is stored) and removes
/// their pending agents; returns the ids marked.
async fn mark_batch_missing(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    missing: &[(i64, DateTime<Utc>)],
) -> Result<std::collections::HashSet<i64>, StoreError> {
    if missing.is_empty() {
        return Ok(Default::default());
    }
    let marked: Vec<i64> = sqlx::query_scalar(
        "UPDATE message_sessions m
            SET missing_at = COALESCE(m.missing_at, u.seen_at), fetched_at = u.seen_at, updated_at = now()
           FROM UNNEST($2::bigint[], $3::timestamptz[]) AS u(session_id, seen_at)
          WHERE m.pbx = $1 AND m.session_id = u.session_id AND m.fetched_at <= u.seen_at
         RETURNING m.session_id",
    )
    .bind(pbx)
    .bind(missing.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
    .bind(missing.iter().map(|(_, at)| *at).collect::<Vec<DateTime<Utc>>>())
    .fetch_all(&mut **tx)
    .await?;
    if !marked.is_empty() {
        sqlx::query("DELETE FROM session_pending_agents WHERE pbx = $1 AND session_id = ANY($2)")
            .bind(pbx)
            .bind(&marked)
            .execute(&mut **tx)
            .await?;
    }
    Ok(marked.into_iter().collect())
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
