//! The settle step: the one place a delivery is acked, dead-lettered, sent
//! to the retry queue or returned. Each finished delivery is decided here
//! (`decide`, synchronously, so a pause is known at once) and carried out in
//! a task of its own; nothing is acked before what it stands for is
//! committed (rows) or confirmed by the broker (a dead letter, a retry).
//! The broker sends acks in runs (one `multiple` ack for deliveries finished
//! in a row, see `broker::Delivery::ack`); each delivery is still acked,
//! counted and logged here, one by one.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::WorkerSettings;
use super::refresh::{self, Refresh};
use crate::broker::{Broker, Delivery};
use crate::decide::{Attempt, decide};
use crate::event::MessageEvent;
use crate::metrics;
use crate::outcome::{Outcome, OutcomeCounts, Pause};
use crate::pipeline::Done;
use crate::store::Store;

/// What the consume loop hands the pipeline with each session: a delivery,
/// or a refresh of a waiting session that no event asked for.
// Nearly every ticket is a delivery: boxing it would allocate per delivery
// to save space on the few refreshes.
#[allow(clippy::large_enum_variant)]
pub(super) enum Ticket {
    Delivery(Taken),
    Refresh(Refresh),
}

/// A delivery taken from the queue and not yet settled, with its message
/// event when it is one.
pub(super) struct Taken {
    pub delivery: Delivery,
    pub event: Option<MessageEvent>,
}

/// Carries out outcomes; owned by one consuming session.
pub(super) struct Settler {
    context: Arc<Context>,
    tasks: TaskTracker,
}

/// What carrying out an outcome needs: the broker for acks and publishes,
/// the store for the record of dead letters already published.
struct Context {
    broker: Arc<Broker>,
    store: Store,
    settings: WorkerSettings,
    counts: Arc<OutcomeCounts>,
}

impl Settler {
    pub(super) fn new(
        broker: Arc<Broker>,
        store: Store,
        settings: WorkerSettings,
        counts: Arc<OutcomeCounts>,
    ) -> Self {
        Self {
            context: Arc::new(Context {
                broker,
                store,
                settings,
                counts,
            }),
            tasks: TaskTracker::new(),
        }
    }

    /// Decides what to do with a finished delivery and starts doing it.
    /// Returns the pause the outcome calls for, if any: the consume loop
    /// stops taking deliveries then. A refresh is only counted: it never
    /// pauses anything (events meet the same fault and do).
    pub(super) fn settle(&self, done: Done<Ticket>) -> Option<Pause> {
        let Taken { delivery, event } = match done.ticket {
            Ticket::Delivery(taken) => taken,
            Ticket::Refresh(refresh) => {
                refresh::settled(refresh, &done.processed);
                return None;
            }
        };
        let attempt = Attempt {
            attempts: delivery.attempts,
            redelivered: delivery.redelivered,
        };
        let outcome = decide(done.processed, attempt, &self.context.settings.retry);
        let pause = match &outcome {
            Outcome::Hold(pause) => Some(pause.clone()),
            _ => None,
        };
        let pbx = &self.context.settings.pbx_id;
        let span = match &event {
            Some(event) => tracing::info_span!("event", pbx = %pbx,
                session_id = event.session_id.get(), msg_id = event.msg_id.as_deref(),
                attempts = delivery.attempts),
            None => tracing::info_span!("event", pbx = %pbx),
        };
        let context = Arc::clone(&self.context);
        self.tasks.spawn(
            async move {
                let settled = context.carry_out(&delivery, outcome).await;
                context.count(&delivery, &settled);
            }
            .instrument(span),
        );
        pause
    }

    /// Waits until every outcome started has been carried out.
    pub(super) async fn settled(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Context {
    /// Carries out an outcome; returns the one that took effect (a dead
    /// letter or retry the broker would not take is returned instead).
    async fn carry_out(&self, delivery: &Delivery, outcome: Outcome) -> Outcome {
        let settled = match outcome {
            Outcome::Enriched
            | Outcome::Unchanged
            | Outcome::Skipped { .. }
            | Outcome::NotFound => {
                ack(delivery).await;
                outcome
            }
            Outcome::DeadLetter {
                reason,
                attempts,
                unless_recorded,
            } => {
                self.dead_letter(delivery, reason, attempts, unless_recorded)
                    .await
            }
            Outcome::Retry {
                reason,
                attempts,
                delay,
            } => match self
                .broker
                .retry_later(delivery, attempts, delay, &reason)
                .await
            {
                Ok(()) => {
                    tracing::warn!(reason = %reason, attempts, retry_in_ms = delay.as_millis() as u64, "Event failed for now; retrying later.");
                    ack(delivery).await;
                    Outcome::Retry {
                        reason,
                        attempts,
                        delay,
                    }
                }
                Err(e) => requeue(delivery, format!("the retry queue refused it: {e}")).await,
            },
            Outcome::Hold(pause) => {
                requeue(delivery, pause.reason().to_owned()).await;
                Outcome::Hold(pause)
            }
            Outcome::Crashed { panic } => {
                tracing::error!(panic = %panic, "Processing the event panicked; returning it (the queue's delivery limit bounds repeats).");
                requeue(delivery, panic.clone()).await;
                Outcome::Crashed { panic }
            }
            Outcome::Requeued { reason } => requeue(delivery, reason).await,
        };
        tracing::debug!(outcome = ?settled, "Delivery settled.");
        settled
    }

    /// Publishes the dead letter, records it, then acks. With
    /// `unless_recorded`, a delivery already dead-lettered (its ack was
    /// lost) is only acked. One window remains: a publish the broker took
    /// but whose confirm was lost is published again on redelivery; the
    /// `x-enricher-body-sha256` header lets readers of `.dead` drop it.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: String,
        attempts: u32,
        unless_recorded: bool,
    ) -> Outcome {
        let settled = Outcome::DeadLetter {
            reason: reason.clone(),
            attempts,
            unless_recorded,
        };
        let digest = Sha256::digest(&delivery.body);
        if unless_recorded
            && self
                .store
                .dead_letter_recorded(&digest)
                .await
                .unwrap_or(false)
        {
            tracing::info!(reason = %reason, "Redelivery of an event already dead-lettered; acking it.");
            ack(delivery).await;
            return settled;
        }
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        match self
            .broker
            .dead_letter(delivery, &reason, attempts, &hex)
            .await
        {
            Ok(()) => {
                tracing::warn!(reason = %reason, "Event dead-lettered.");
                if let Err(e) = self.store.record_dead_letter(&digest, &reason).await {
                    tracing::warn!(error = %e, "Could not record the dead letter; a lost ack would duplicate it.");
                }
                ack(delivery).await;
                settled
            }
            Err(e) => requeue(delivery, format!("the dead-letter queue refused it: {e}")).await,
        }
    }

    /// Counts a settled delivery, with its publish→commit lag when its
    /// answer was committed and it carries its publish time.
    fn count(&self, delivery: &Delivery, settled: &Outcome) {
        let committed = matches!(
            settled,
            Outcome::Enriched | Outcome::Unchanged | Outcome::NotFound
        );
        let lag_ms = delivery
            .published_at_ms
            .filter(|_| committed)
            .map(|published_at| {
                let lag = chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_sub(published_at);
                u64::try_from(lag).unwrap_or(0)
            });
        if let Some(lag_ms) = lag_ms {
            self.counts.lag.record(lag_ms);
        }
        self.counts.record(settled);
        metrics::get().event_settled(settled, lag_ms);
    }
}

async fn ack(delivery: &Delivery) {
    match delivery.ack().await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "Ack dropped: its channel is gone; the broker will redeliver (writes are idempotent)."
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Ack failed; the broker will redeliver (writes are idempotent).")
        }
    }
}

/// Returns the delivery to the queue (or, if its channel is gone, lets the
/// broker do so).
async fn requeue(delivery: &Delivery, reason: String) -> Outcome {
    if let Err(e) = delivery.requeue().await {
        tracing::warn!(error = %e, "Requeue failed; the broker will redeliver.");
    }
    Outcome::Requeued { reason }
}
