//! `Acks`: how the consuming channel's deliveries are acked, so that acks
//! keep up with the broker. One `basic.ack` per delivery caps a quorum
//! queue near 16,000 deliveries/s; one ack with `multiple` for a run of
//! finished deliveries costs the broker one frame for the run.
//!
//! A finished delivery's ack waits in `AckRuns` for the earlier deliveries
//! of the channel to finish; the delivery that completes a run sends one
//! ack with `multiple` at the run's last tag; acks that finish while a frame
//! is on its way gather behind it, as in Nagle's algorithm. The wait is
//! bounded: after `ACK_LINGER` a waiting ack is sent alone. A bound rather
//! than acking at once whatever cannot join a run, because deliveries
//! finish out of order (parallel fetchers, writers committing batches side
//! by side) and acking at once would rarely find a run; a bound rather
//! than no limit, because one delivery stuck in a slow PBX fetch would
//! otherwise hold every later ack, fill the prefetch window and stall
//! consumption. Past the bound it is the old cost, one frame per delivery,
//! never a stall; the bound is short because each waiting ack keeps a
//! prefetch slot that long.
//!
//! Nacks are sent alone for their own tag, at once. A tag blocks runs until
//! the frame that settles it has been sent (lapin sends each ack from a
//! task of its own, so two frames sent together may reach the socket in
//! either order); no tag is ever acked twice, which RabbitMQ answers by
//! closing the channel.
//!
//! About lapin (4.x): every `Acker` has its own use-once switch and knows
//! nothing of the others; a `multiple` ack does not mark the `Acker`s of
//! the tags it covered, and dropping an `Acker` sends nothing. So the
//! covered deliveries' `Acker`s are simply dropped here, never used: using
//! one would ack its tag a second time. An `Acker` of a channel that is
//! gone answers `Ok(false)`, which every delivery the frame covered gets.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::sync::oneshot;

use super::ack_runs::{AckRuns, Run};
use super::error::{BrokerError, failed};
use crate::metrics::{self, AckFrame};

/// How long a finished delivery's ack may wait for the earlier deliveries
/// to finish, so that one frame acks them all. Adds at most this much to
/// the time a delivery holds a prefetch slot.
pub(super) const ACK_LINGER: Duration = Duration::from_millis(5);

/// What an ack frame did for a delivery it covered.
type Acked = Result<bool, BrokerError>;

/// A finished delivery waiting for its ack.
struct Waiting {
    acker: lapin::Acker,
    acked: oneshot::Sender<Acked>,
}

/// The acks of one consuming channel (delivery tags are per channel); one
/// per `Broker`, shared by its deliveries.
#[derive(Clone, Default)]
pub(super) struct Acks {
    runs: Arc<Mutex<AckRuns<Waiting>>>,
}

impl Acks {
    /// Records a delivery taken from the channel; every delivery must be,
    /// in the order the channel delivered them.
    pub(super) fn taken(&self, tag: u64) {
        self.lock().taken(tag);
    }

    /// Acks the delivery at `tag`, alone or in a run with others; returns
    /// once a frame acking it has been sent. `Ok(false)`: its channel is
    /// gone (or it is not a delivery of this channel waiting to be settled).
    pub(super) async fn ack(&self, tag: u64, acker: &lapin::Acker) -> Acked {
        let (acked, mut outcome) = oneshot::channel();
        let waiting = Waiting {
            acker: acker.clone(),
            acked,
        };
        let ready = self.lock().ready(tag, waiting);
        match ready {
            Err(_) => return Ok(false),
            // It completed a run: the run covers it.
            Ok(Some(run)) => {
                let tag = self.send(run).await;
                self.frame_sent(tag);
            }
            Ok(None) => {
                if let Ok(outcome) = tokio::time::timeout(ACK_LINGER, &mut outcome).await {
                    return outcome.unwrap_or(Ok(false));
                }
                let overdue = self.lock().overdue(tag);
                if let Some(waiting) = overdue {
                    let acked = waiting
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(failed("ack"));
                    counted(&acked, AckFrame::Single);
                    self.frame_sent(tag);
                    return acked;
                }
                // A run took it meanwhile.
            }
        }
        outcome.await.unwrap_or(Ok(false))
    }

    /// Returns the delivery at `tag` to the queue, with a frame of its own.
    pub(super) async fn requeue(&self, tag: u64, acker: &lapin::Acker) -> Acked {
        let requeued = acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(failed("nack"));
        self.frame_sent(tag);
        requeued
    }

    /// Sends a run's frame, then tells every delivery it covered; returns
    /// the run's tag, to report `sent`.
    async fn send(&self, run: Run<Waiting>) -> u64 {
        let Run {
            tag,
            handle,
            covered,
        } = run;
        let multiple = !covered.is_empty();
        let acked = handle
            .acker
            .ack(BasicAckOptions { multiple })
            .await
            .map_err(failed("ack"));
        counted(
            &acked,
            if multiple {
                AckFrame::Multiple
            } else {
                AckFrame::Single
            },
        );
        for waiting in covered.into_iter().chain([handle]) {
            // A delivery whose settle step is gone needs no answer.
            let _ = waiting.acked.send(acked.clone());
        }
        tag
    }

    /// The frame settling `tag` has been sent. A run this unblocked goes
    /// from a task of its own (with the runs that one unblocks in turn), so
    /// the caller's delivery is not held up by later ones; each delivery of
    /// a run waits for its answer, so a drain still waits for the frame.
    fn frame_sent(&self, tag: u64) {
        let Some(run) = self.lock().sent(tag) else {
            return;
        };
        let acks = self.clone();
        tokio::spawn(async move {
            let mut run = run;
            loop {
                let tag = acks.send(run).await;
                let Some(next) = acks.lock().sent(tag) else {
                    return;
                };
                run = next;
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AckRuns<Waiting>> {
        // The ledger is consistent after every call: a panic elsewhere
        // while it was held leaves nothing half done.
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn counted(acked: &Acked, frame: AckFrame) {
    if matches!(acked, Ok(true)) {
        metrics::get().ack_frame_sent(frame);
    }
}
