//! The frugal path: several sessions in one `message_session/query` call,
//! and what it falls back to. Whatever a query leaves unanswered (an id
//! absent from its answer, an element that does not decode, a query the PBX
//! refuses) is asked for alone with `get` (`PbxClient::answer`), so "not
//! found" stays exact; a PBX whose firmware lacks `query` makes the client
//! use `get` for good, with one WARN. A chunk that fails transiently, or for
//! the configuration, fails for each of its ids.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::Value;

use super::error::{CallError, Reason};
use super::{PbxClient, PbxError, SessionIds};
use crate::metrics::{self, PbxEndpoint};
use crate::processing::Answer;
use crate::session::{FetchedSession, SessionId, SessionInfo};

impl PbxClient {
    /// Whether the PBX is believed to serve `message_session/query`: until
    /// it answers that it does not (HTTP 404 or errcode 10001).
    pub fn query_supported(&self) -> bool {
        self.query_supported.load(Ordering::Relaxed)
    }

    /// Session ids asked for per `message_session/query` call at most.
    pub(super) fn query_batch(&self) -> usize {
        self.query_batch
    }

    /// An answer for each id of `chunk` (at most `query_batch` of them):
    /// one `query` call, then `get` for each id it left unanswered. One id,
    /// `query_batch` 1 or a PBX without `query`: `get` for each.
    pub(super) async fn answer_chunk(
        &self,
        chunk: &[SessionId],
    ) -> Vec<(SessionId, Result<Answer, PbxError>)> {
        if chunk.len() < 2 || self.query_batch < 2 || !self.query_supported() {
            return self.answer_each(chunk).await;
        }
        let mut found = match self.query(chunk).await {
            Ok(found) => found,
            Err(CallError::Unsupported(reason)) => {
                self.query_unsupported(&reason);
                return self.answer_each(chunk).await;
            }
            // None of them: each is asked for alone, and `get` says which
            // are gone.
            Err(CallError::Failed(PbxError::NotFound)) => return self.answer_each(chunk).await,
            Err(CallError::Failed(PbxError::Rejected(reason))) => {
                self.query_refused(chunk, &reason);
                return self.answer_each(chunk).await;
            }
            Err(failed) => {
                let failed = PbxError::from(failed);
                return chunk.iter().map(|&id| (id, Err(failed.clone()))).collect();
            }
        };
        let answered: Vec<_> = chunk.iter().map(|&id| (id, found.remove(&id))).collect();
        join_all(answered.into_iter().map(|(id, fetched)| async move {
            match fetched {
                Some(fetched) => (id, Ok(Answer::Found(Box::new(fetched)))),
                None => (id, self.answer(id).await),
            }
        }))
        .await
    }

    /// `get` for each id, concurrently (within the client's cap).
    async fn answer_each(&self, ids: &[SessionId]) -> Vec<(SessionId, Result<Answer, PbxError>)> {
        join_all(
            ids.iter()
                .map(|&id| async move { (id, self.answer(id).await) }),
        )
        .await
    }

    /// One `message_session/query` call (with the client's permit, token,
    /// renewal and retries): the sessions it answered among `ids`.
    async fn query(
        &self,
        ids: &[SessionId],
    ) -> Result<HashMap<SessionId, FetchedSession>, CallError> {
        let sent = self
            .request(PbxEndpoint::MessageSessionQuery, ids, |token| async move {
                metrics::get().pbx_query_sent(ids.len());
                self.api.message_sessions(&token, ids).await
            })
            .await?;
        let (requested_at, fetched_at) = (sent.requested_at, Utc::now());
        tracing::debug!(
            asked = ids.len(),
            answered = sent.answer.len(),
            round_trip_ms = (fetched_at - requested_at).num_milliseconds(),
            "Sessions fetched in one query."
        );
        Ok(sessions_asked_for(
            ids,
            sent.answer,
            requested_at,
            fetched_at,
        ))
    }

    /// The PBX lacks `query`: `get` from now on. Logged once, whatever
    /// number of calls in flight find it out at the same time.
    fn query_unsupported(&self, reason: &Reason) {
        if self.query_supported.swap(false, Ordering::Relaxed) {
            metrics::get().pbx_query_supported(false);
            tracing::warn!(error = %reason,
                "The PBX has no message_session/query (older firmware); fetching each session with message_session/get from now on.");
        }
    }

    /// The PBX refused a query: its sessions are asked for one by one. The
    /// first refusal is a WARN, later ones are counted in the PBX request
    /// metrics and logged at debug.
    fn query_refused(&self, ids: &[SessionId], reason: &Reason) {
        if self.query_refusal_warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(session_ids = %SessionIds(ids), error = %reason,
                "The PBX refused a message_session/query; asking for each session alone.");
        } else {
            tracing::warn!(session_ids = %SessionIds(ids), error = %reason,
                "The PBX refused a message_session/query; asking for each session alone (further refusals are logged at debug).");
        }
    }
}

/// The sessions of a query's answer that were asked for, by id (the first
/// of repeats). An element that does not decode, or is a session not asked
/// for, is left out: its id, if asked for, is then asked for alone.
fn sessions_asked_for(
    asked: &[SessionId],
    list: Vec<Value>,
    requested_at: DateTime<Utc>,
    fetched_at: DateTime<Utc>,
) -> HashMap<SessionId, FetchedSession> {
    let mut found = HashMap::with_capacity(asked.len());
    for raw in list {
        match SessionInfo::decode(raw) {
            Ok(info) if !asked.contains(&info.id) => {
                tracing::debug!(
                    session_id = info.id.get(),
                    "A query answered a session not asked for; ignored."
                );
            }
            Ok(info) => {
                found.entry(info.id).or_insert(FetchedSession {
                    info,
                    requested_at,
                    fetched_at,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "A query's Session_Info does not decode; ignored (its session is asked for alone).");
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::simulator::synthetic_session;

    fn ids(ids: &[i64]) -> Vec<SessionId> {
        ids.iter().map(|&id| SessionId::new(id).unwrap()).collect()
    }

    #[test]
    fn a_query_answer_yields_each_session_asked_for_that_it_holds() {
        let at = Utc::now();
        let list = vec![synthetic_session(3).unwrap(), synthetic_session(1).unwrap()];
        let found = sessions_asked_for(&ids(&[1, 2, 3]), list, at, at);
        let mut keys: Vec<i64> = found.keys().map(|id| id.get()).collect();
        keys.sort_unstable();
        assert_eq!(keys, [1, 3], "2 is absent: asked for alone later");
        let one = &found[&SessionId::new(1).unwrap()];
        assert_eq!(
            one.info,
            SessionInfo::decode(synthetic_session(1).unwrap()).unwrap()
        );
        assert_eq!(one.fetched_at, at);
    }

    #[test]
    fn sessions_not_asked_for_undecodable_elements_and_repeats_are_left_out() {
        let list = vec![
            json!({"id": 9, "channel_type": "sms"}),
            json!({"channel_type": "sms"}),
            json!("not a session"),
            json!({"id": "4", "channel_type": "sms"}),
            json!({"id": 4, "channel_type": "whatsapp"}),
        ];
        let found = sessions_asked_for(&ids(&[4, 5]), list, Utc::now(), Utc::now());
        assert_eq!(found.len(), 1);
        let four = &found[&SessionId::new(4).unwrap()];
        assert_eq!(
            four.info.channel_type.as_deref(),
            Some("sms"),
            "the first of repeats"
        );
    }

    #[test]
    fn an_empty_answer_finds_nothing() {
        assert!(sessions_asked_for(&ids(&[1, 2]), Vec::new(), Utc::now(), Utc::now()).is_empty());
    }
}
