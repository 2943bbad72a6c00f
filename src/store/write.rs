//! The batch write: one transaction, one multi-row `UNNEST` upsert per
//! table, rows locked in key order, and the stale-write guard (an answer to
//! a request sent before the stored answer's changes nothing; of two
//! requests sent at the same instant, the later answer wins). In the same
//! transaction: each accepted session's refresh due time, and a change-feed
//! notification for each session whose content changed (`feed`).
//!
//! A session's **content** is what readers read: its columns but the
//! bookkeeping times (`requested_at`, `fetched_at`, `updated_at`,
//! `waiting_since`, `refresh_due_at`) and `raw`, whether it is missing, and
//! its pending-agent rows (who, with which number, name, avatar and
//! position). `updated_at` moves only when content changes. `raw` alone
//! does not count: it is the newest answer as received, and an endpoint may
//! add fields that change on every call (`message_session/list`'s `expire`
//! countdown) without the session changing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::feed::{self, Change};
use super::refresh::{MAX_WAITING, micros};
use super::{Store, StoreError};
use crate::metrics::{self, DbWrite};
use crate::processing::{Answer, BatchResult, Recency, newest_per_session};
use crate::session::{FetchedSession, SessionId};

impl Store {
    /// Writes a batch of PBX answers in one transaction, one statement per
    /// table (multi-row `UNNEST` upserts). The batch may hold one session
    /// several times: only its newest answer is written, the others are
    /// `Superseded`. Rows are written in key order, so concurrent batches
    /// cannot deadlock; an answer to a request sent before the stored
    /// answer's is `Stale`, however late it arrived. An accepted answer that
    /// changes no content is `Unchanged` (its times still advance).
    ///
    /// Every accepted answer sets the session's refresh due time: `now() +
    /// refresh_interval` while it has pending agents and has waited at most
    /// `MAX_WAITING`, otherwise (nobody pending, missing, waiting too long,
    /// or `refresh_interval` None) none. Each session whose content changed
    /// is announced on the change feed, delivered when this commits.
    pub async fn write_batch(
        &self,
        pbx: &str,
        answers: &[Answer],
        refresh_interval: Option<Duration>,
    ) -> Result<Vec<BatchResult>, StoreError> {
        let newest = newest_per_session(answers);
        let fetched: Vec<&FetchedSession> = newest
            .iter()
            .filter_map(|&i| match &answers[i] {
                Answer::Found(f) => Some(f.as_ref()),
                Answer::Missing { .. } => None,
            })
            .collect();
        let missing: Vec<(i64, Recency)> = newest
            .iter()
            .filter_map(|&i| match &answers[i] {
                Answer::Missing { id, .. } => Some((id.get(), answers[i].recency())),
                Answer::Found(_) => None,
            })
            .collect();

        let timer = metrics::get().db_transaction(DbWrite::Batch, newest.len());
        let mut tx = self.pool.begin().await?;
        let applied = upsert_sessions(&mut tx, pbx, &fetched, refresh_interval).await?;
        let applied_sessions: Vec<&FetchedSession> = fetched
            .iter()
            .copied()
            .filter(|f| applied.contains_key(&f.info.id.get()))
            .collect();
        upsert_customers(&mut tx, pbx, &applied_sessions).await?;
        let agents_changed = replace_agent_sets(&mut tx, pbx, &applied_sessions).await?;
        let changed: HashSet<i64> = applied
            .iter()
            .filter_map(|(&id, &changed)| changed.then_some(id))
            .chain(agents_changed.iter().copied())
            .collect();
        touch_updated_at(
            &mut tx,
            pbx,
            agents_changed
                .into_iter()
                .filter(|id| applied.get(id) == Some(&false)),
        )
        .await?;
        let marked = mark_batch_missing(&mut tx, pbx, &missing).await?;
        let mut changes: Vec<Change> = applied_sessions
            .iter()
            .filter(|f| changed.contains(&f.info.id.get()))
            .map(|f| Change::found(f.info.id, f.info.pending_agents.len()))
            .chain(
                marked
                    .iter()
                    .filter(|&(_, &changed)| changed)
                    .filter_map(|(&id, _)| SessionId::new(id))
                    .map(Change::missing),
            )
            .collect();
        changes.sort_by_key(|c| c.session_id);
        feed::notify(&mut tx, pbx, &changes).await?;
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
                        Answer::Found(_) if changed.contains(&id) => BatchResult::Written,
                        Answer::Found(_) if applied.contains_key(&id) => BatchResult::Unchanged,
                        Answer::Found(_) => BatchResult::Stale,
                        Answer::Missing { .. } => BatchResult::Missing {
                            marked: marked.contains_key(&id),
                        },
                    }
                }
            })
            .collect())
    }
}

/// Upserts session rows (unique, in key order) unless the stored answer's
/// request was sent later (or at the same instant and answered later);
/// returns the ids written, each with whether its columns changed (content
/// but the pending agents, which `replace_agent_sets` compares). Sets the
/// waiting stretch and the refresh due time (see `Store::write_batch`).
async fn upsert_sessions(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
    refresh_interval: Option<Duration>,
) -> Result<HashMap<i64, bool>, StoreError> {
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
    let requested_at: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.requested_at).collect();
    let waiting: Vec<bool> = sessions
        .iter()
        .map(|s| !s.info.pending_agents.is_empty())
        .collect();
    // The proposed row carries the waiting stretch and due time of a new
    // session; an existing one keeps its stretch's start (`SET` reads the
    // stored row as `m`), and is not refreshed once waiting too long.
    let written: Vec<(i64, bool)> = sqlx::query_as(
        "INSERT INTO message_sessions AS m (
             pbx, session_id, channel_type, channel_name, did_number, to_number, origin,
             page_name, website_domain, customer_user_type, customer_user_no,
             prechat_name, prechat_email, prechat_phone, prechat_first_name, prechat_last_name,
             raw, fetched_at, requested_at, waiting_since, refresh_due_at)
         SELECT $1, u.session_id, u.channel_type, u.channel_name, u.did_number, u.to_number,
                u.origin, u.page_name, u.website_domain, u.customer_user_type, u.customer_user_no,
                u.prechat_name, u.prechat_email, u.prechat_phone, u.prechat_first_name,
                u.prechat_last_name, u.raw, u.fetched_at, u.requested_at,
                CASE WHEN u.waiting THEN now() END,
                CASE WHEN u.waiting THEN now() + $21 * interval '1 microsecond' END
           FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                $8::text[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[],
                $14::text[], $15::text[], $16::text[], $17::jsonb[], $18::timestamptz[],
                $19::timestamptz[], $20::bool[])
             AS u(session_id, channel_type, channel_name, did_number, to_number, origin,
                  page_name, website_domain, customer_user_type, customer_user_no,
                  prechat_name, prechat_email, prechat_phone, prechat_first_name,
                  prechat_last_name, raw, fetched_at, requested_at, waiting)
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
             requested_at = EXCLUDED.requested_at, missing_at = NULL,
             updated_at = CASE
                 WHEN (m.channel_type, m.channel_name, m.did_number, m.to_number, m.origin,
                       m.page_name, m.website_domain, m.customer_user_type, m.customer_user_no,
                       m.prechat_name, m.prechat_email, m.prechat_phone, m.prechat_first_name,
                       m.prechat_last_name, m.missing_at IS NULL)
                      IS DISTINCT FROM
                      (EXCLUDED.channel_type, EXCLUDED.channel_name, EXCLUDED.did_number,
                       EXCLUDED.to_number, EXCLUDED.origin, EXCLUDED.page_name,
                       EXCLUDED.website_domain, EXCLUDED.customer_user_type,
                       EXCLUDED.customer_user_no, EXCLUDED.prechat_name, EXCLUDED.prechat_email,
                       EXCLUDED.prechat_phone, EXCLUDED.prechat_first_name,
                       EXCLUDED.prechat_last_name, true)
                 THEN now() ELSE m.updated_at END,
             waiting_since = CASE WHEN EXCLUDED.waiting_since IS NOT NULL
                 THEN COALESCE(m.waiting_since, EXCLUDED.waiting_since) END,
             refresh_due_at = CASE
                 WHEN COALESCE(m.waiting_since, EXCLUDED.waiting_since)
                      >= now() - $22 * interval '1 microsecond'
                 THEN EXCLUDED.refresh_due_at END
         WHERE (m.requested_at, m.fetched_at) <= (EXCLUDED.requested_at, EXCLUDED.fetched_at)
         RETURNING session_id, updated_at = now()",
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
    .bind(column(|s| {
        s.info.customer.as_ref().map(|c| c.user_no.clone())
    }))
    .bind(column(|s| s.info.pre_chat.name.clone()))
    .bind(column(|s| s.info.pre_chat.email.clone()))
    .bind(column(|s| s.info.pre_chat.phone.clone()))
    .bind(column(|s| s.info.pre_chat.first_name.clone()))
    .bind(column(|s| s.info.pre_chat.last_name.clone()))
    .bind(&raws)
    .bind(&fetched_at)
    .bind(&requested_at)
    .bind(&waiting)
    .bind(refresh_interval.map(micros))
    .bind(micros(MAX_WAITING))
    .fetch_all(&mut **tx)
    .await?;
    Ok(written.into_iter().collect())
}

/// Moves `updated_at` of sessions whose pending agents changed while their
/// columns did not (their rows are locked by this transaction already).
async fn touch_updated_at(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    ids: impl Iterator<Item = i64>,
) -> Result<(), StoreError> {
    let mut ids: Vec<i64> = ids.collect();
    if ids.is_empty() {
        return Ok(());
    }
    ids.sort_unstable();
    sqlx::query(
        "UPDATE message_sessions SET updated_at = now() WHERE pbx = $1 AND session_id = ANY($2)",
    )
    .bind(pbx)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Upserts the customers of written sessions, one row per customer (the
/// newest answer by request time, then answer time), in key order, with the
/// same stale guard as the sessions; `updated_at` moves only when the
/// username or avatar changes.
async fn upsert_customers(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
) -> Result<(), StoreError> {
    let mut customers: std::collections::BTreeMap<
        (i32, &str),
        (&crate::session::Customer, Recency),
    > = Default::default();
    for s in sessions {
        if let Some(c) = &s.info.customer {
            let recency = (s.requested_at, s.fetched_at);
            let entry = customers
                .entry((c.user_type, c.user_no.as_str()))
                .or_insert((c, recency));
            if recency > entry.1 {
                *entry = (c, recency);
            }
        }
    }
    if customers.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = customers.values().collect();
    sqlx::query(
        "INSERT INTO customers AS c (pbx, user_type, user_no, username, avatar, requested_at, fetched_at)
         SELECT $1, * FROM UNNEST($2::int[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::timestamptz[])
         ON CONFLICT (pbx, user_type, user_no) DO UPDATE
           SET username = EXCLUDED.username, avatar = EXCLUDED.avatar,
               requested_at = EXCLUDED.requested_at, fetched_at = EXCLUDED.fetched_at,
               updated_at = CASE
                   WHEN (c.username, c.avatar) IS DISTINCT FROM (EXCLUDED.username, EXCLUDED.avatar)
                   THEN now() ELSE c.updated_at END
         WHERE (c.requested_at, c.fetched_at) <= (EXCLUDED.requested_at, EXCLUDED.fetched_at)",
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
            .map(|(_, (requested_at, _))| *requested_at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .bind(
        rows.iter()
            .map(|(_, (_, fetched_at))| *fetched_at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes each written session's agent set equal to its answer's, keeping
/// `first_seen_at` of agents that stay, and touching (`updated_at`) only
/// agent rows that change; returns the sessions whose agent set changed.
async fn replace_agent_sets(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    sessions: &[&FetchedSession],
) -> Result<HashSet<i64>, StoreError> {
    if sessions.is_empty() {
        return Ok(HashSet::new());
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
    let removed: Vec<i64> = sqlx::query_scalar(
        "DELETE FROM session_pending_agents p
          WHERE p.pbx = $1 AND p.session_id = ANY($2)
            AND NOT EXISTS (SELECT 1 FROM UNNEST($3::bigint[], $4::bigint[]) AS keep(session_id, agent_user_id)
                             WHERE keep.session_id = p.session_id AND keep.agent_user_id = p.agent_user_id)
         RETURNING p.session_id",
    )
    .bind(pbx)
    .bind(&session_ids)
    .bind(&agent_session)
    .bind(&agent_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut changed: HashSet<i64> = removed.into_iter().collect();
    if agent_ids.is_empty() {
        return Ok(changed);
    }
    // An agent row that says the same is left alone (no new row version).
    let added_or_changed: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO session_pending_agents AS a
             (pbx, session_id, agent_user_id, agent_user_no, agent_username, agent_avatar, position)
         SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::int[])
         ON CONFLICT (pbx, session_id, agent_user_id) DO UPDATE SET
             agent_user_no = EXCLUDED.agent_user_no, agent_username = EXCLUDED.agent_username,
             agent_avatar = EXCLUDED.agent_avatar, position = EXCLUDED.position, updated_at = now()
         WHERE (a.agent_user_no, a.agent_username, a.agent_avatar, a.position)
               IS DISTINCT FROM (EXCLUDED.agent_user_no, EXCLUDED.agent_username,
                                 EXCLUDED.agent_avatar, EXCLUDED.position)
         RETURNING session_id",
    )
    .bind(pbx)
    .bind(&agent_session)
    .bind(&agent_ids)
    .bind(&numbers)
    .bind(&names)
    .bind(&avatars)
    .bind(&positions)
    .fetch_all(&mut **tx)
    .await?;
    changed.extend(added_or_changed);
    Ok(changed)
}

/// Marks sessions missing (unless the stored answer's request was sent
/// later, as in `upsert_sessions`), removes their pending agents and stops
/// their refreshing; returns the ids marked, each with whether it was not
/// missing before (a content change). `missing` holds (id, (requested_at,
/// seen_at)).
async fn mark_batch_missing(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    missing: &[(i64, Recency)],
) -> Result<HashMap<i64, bool>, StoreError> {
    if missing.is_empty() {
        return Ok(Default::default());
    }
    let marked: Vec<(i64, bool)> = sqlx::query_as(
        "UPDATE message_sessions m
            SET missing_at = COALESCE(m.missing_at, u.seen_at), requested_at = u.requested_at,
                fetched_at = u.seen_at,
                updated_at = CASE WHEN m.missing_at IS NULL THEN now() ELSE m.updated_at END,
                waiting_since = NULL, refresh_due_at = NULL
           FROM UNNEST($2::bigint[], $3::timestamptz[], $4::timestamptz[]) AS u(session_id, requested_at, seen_at)
          WHERE m.pbx = $1 AND m.session_id = u.session_id
            AND (m.requested_at, m.fetched_at) <= (u.requested_at, u.seen_at)
         RETURNING m.session_id, m.updated_at = now()",
    )
    .bind(pbx)
    .bind(missing.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
    .bind(
        missing
            .iter()
            .map(|(_, (requested_at, _))| *requested_at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .bind(
        missing
            .iter()
            .map(|(_, (_, seen_at))| *seen_at)
            .collect::<Vec<DateTime<Utc>>>(),
    )
    .fetch_all(&mut **tx)
    .await?;
    if !marked.is_empty() {
        let ids: Vec<i64> = marked.iter().map(|&(id, _)| id).collect();
        sqlx::query("DELETE FROM session_pending_agents WHERE pbx = $1 AND session_id = ANY($2)")
            .bind(pbx)
            .bind(&ids)
            .execute(&mut **tx)
            .await?;
    }
    Ok(marked.into_iter().collect())
}
