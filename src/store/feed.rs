//! The change feed: one `NOTIFY session_enricher_changes` per session whose
//! content a write changed, sent inside that write's transaction, so
//! Postgres delivers it at commit (a listener never hears of a change it
//! cannot read, nor of one rolled back). The payload is the contract in
//! README.md ("For routing engines"): `{"pbx", "session_id", "pending_agents",
//! "missing"}`.

use sqlx::{Postgres, Transaction};

use super::StoreError;
use crate::session::SessionId;

/// The channel readers `LISTEN` on.
pub const CHANGES_CHANNEL: &str = "session_enricher_changes";

/// The longest PBX id, in bytes, a payload may carry: keeps every payload far
/// under Postgres's 8000-byte limit (a longer one would fail the write).
/// `YEASTAR_PBX_ID` is checked against it at start.
pub const MAX_PBX_ID_BYTES: usize = 200;

/// One session's change, as announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Change {
    pub session_id: SessionId,
    pub pending_agents: usize,
    pub missing: bool,
}

impl Change {
    /// A session the PBX described: `pending_agents` are now its rows.
    pub fn found(session_id: SessionId, pending_agents: usize) -> Self {
        Self {
            session_id,
            pending_agents,
            missing: false,
        }
    }

    /// A session now marked missing (its pending agents removed).
    pub fn missing(session_id: SessionId) -> Self {
        Self {
            session_id,
            pending_agents: 0,
            missing: true,
        }
    }

    fn payload(&self, pbx: &str) -> String {
        serde_json::json!({
            "pbx": pbx,
            "session_id": self.session_id.get(),
            "pending_agents": self.pending_agents,
            "missing": self.missing,
        })
        .to_string()
    }
}

/// Queues one notification per change, in the order given (one statement);
/// nothing when there are none.
pub(super) async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    pbx: &str,
    changes: &[Change],
) -> Result<(), StoreError> {
    if changes.is_empty() {
        return Ok(());
    }
    let payloads: Vec<String> = changes.iter().map(|c| c.payload(pbx)).collect();
    sqlx::query(
        "SELECT pg_notify($1, p) FROM UNNEST($2::text[]) WITH ORDINALITY AS n(p, i) ORDER BY i",
    )
    .bind(CHANGES_CHANNEL)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_names_the_session_its_pending_agents_and_whether_it_is_missing() {
        let id = SessionId::new(2862).expect("positive");
        let payload: serde_json::Value =
            serde_json::from_str(&Change::found(id, 3).payload("tenant \"a\"")).expect("JSON");
        assert_eq!(
            payload,
            serde_json::json!({"pbx": "tenant \"a\"", "session_id": 2862, "pending_agents": 3, "missing": false})
        );
        let payload: serde_json::Value =
            serde_json::from_str(&Change::missing(id).payload("p")).expect("JSON");
        assert_eq!(
            payload,
            serde_json::json!({"pbx": "p", "session_id": 2862, "pending_agents": 0, "missing": true})
        );
    }

    #[test]
    fn the_longest_payload_stays_far_under_the_notify_limit() {
        let pbx = "\u{1}".repeat(MAX_PBX_ID_BYTES);
        let worst = Change::found(SessionId::new(i64::MAX).expect("positive"), usize::MAX);
        // Control characters are escaped as \u00XX: six bytes each.
        assert!(worst.payload(&pbx).len() < 2000);
    }
}
