//! The record of dead letters the broker confirmed, by body digest, so a
//! redelivery whose ack was lost is acked instead of published twice. Kept
//! for a day.

use super::{Store, StoreError};

impl Store {
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
}
