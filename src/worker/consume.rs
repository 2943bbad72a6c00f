//! One consuming session on one broker connection: take deliveries, parse
//! each at the edge, hand message events to the pipeline, and settle what
//! comes back, until shutdown, a pause or the loss of the connection; then
//! stop consuming and drain what is in flight within the deadline.

use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;

use super::Worker;
use super::refresh::{self, Refresh};
use super::settle::{Settler, Taken, Ticket};
use crate::broker::Broker;
use crate::event::{self, Event};
use crate::metrics;
use crate::outcome::Pause;
use crate::pipeline::{Done, Pipeline};
use crate::processing::Processed;
use crate::store::StoreSink;

/// Deliveries handed over (or settled) in one turn at most: what has already
/// arrived, taken without waiting, so a burst rides on one fetch per session.
const ARRIVED_AT_ONCE: usize = 512;

/// Why a consuming session ended.
pub(super) enum SessionEnd {
    Shutdown { drained: bool },
    BrokerLost(String),
    Paused(Pause),
}

impl Worker {
    /// Consumes on one connection until shutdown, a pause or the loss of
    /// the connection, then stops consuming and settles in-flight work.
    pub(super) async fn consume(
        &self,
        broker: &Arc<Broker>,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let tag = format!(
            "session-enricher-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let mut deliveries = match broker.consume(&tag).await {
            Ok(deliveries) => deliveries,
            Err(e) => return SessionEnd::BrokerLost(e.to_string()),
        };
        self.status.set_consuming(true);
        self.status.set_problem(None);
        tracing::info!(consumer = %tag, "Consuming.");
        let settings = &self.settings;
        let (done, mut finished) = mpsc::unbounded_channel::<Done<Ticket>>();
        let sink = StoreSink::new(
            self.store.clone(),
            settings.pbx_id.clone(),
            settings.store_retry,
        )
        .with_refresh_interval(settings.refresh.map(|refresh| refresh.interval));
        let pipeline = Pipeline::start(
            settings.pipeline,
            Arc::clone(&self.pbx),
            Arc::new(sink),
            done.clone(),
        );
        let settler = Settler::new(
            Arc::clone(broker),
            self.store.clone(),
            settings.clone(),
            Arc::clone(&self.counts),
        );
        // Waiting sessions due for a refresh, claimed while this session
        // consumes.
        let (to_consume, mut refreshes) = mpsc::channel::<Vec<Refresh>>(4);
        let stop_refreshing = shutdown.child_token();
        let refresher = settings.refresh.map(|refresh| {
            tokio::spawn(refresh::refresher(
                self.store.clone(),
                settings.pbx_id.clone(),
                refresh,
                settings.pipeline.fetch_capacity(),
                to_consume,
                stop_refreshing.clone(),
            ))
        });
        // Tickets (deliveries and refreshes) handed to the pipeline or the
        // settler and not yet settled.
        let mut in_flight = 0usize;
        let end = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break SessionEnd::Shutdown { drained: true },
                Some(first) = finished.recv() => {
                    // Settle whatever else is done already, in one turn.
                    let mut pause = None;
                    let mut next = Some(first);
                    let mut taken = 0;
                    while let Some(done) = next {
                        in_flight -= 1;
                        taken += 1;
                        pause = pause.or(settler.settle(done));
                        next = if taken < ARRIVED_AT_ONCE { finished.try_recv().ok() } else { None };
                    }
                    if let Some(pause) = pause {
                        break SessionEnd::Paused(pause);
                    }
                }
                Some(claimed) = refreshes.recv(), if refresher.is_some() => {
                    in_flight += claimed.len();
                    pipeline.submit(claimed.into_iter().map(|r| (r.session_id, Ticket::Refresh(r))));
                }
                next = deliveries.next() => match next {
                    Some(Ok(first)) => {
                        let mut arrived = vec![first];
                        let mut lost = None;
                        while arrived.len() < ARRIVED_AT_ONCE && lost.is_none() {
                            match deliveries.next().now_or_never() {
                                Some(Some(Ok(more))) => arrived.push(more),
                                Some(Some(Err(e))) => lost = Some(e.to_string()),
                                Some(None) => lost = Some("the broker cancelled the consumer".to_owned()),
                                None => break,
                            }
                        }
                        in_flight += arrived.len();
                        let mut messages = Vec::with_capacity(arrived.len());
                        for delivery in arrived {
                            metrics::get().event_taken();
                            let processed = match event::parse(&delivery.body, &settings.handled_types) {
                                Ok(Event::Message(message)) => {
                                    messages.push((message.session_id, Ticket::Delivery(Taken { delivery, event: Some(message) })));
                                    continue;
                                }
                                Ok(Event::Ignored { event_type }) => Processed::Skipped { event_type },
                                Err(malformed) => Processed::Malformed { reason: malformed.to_string() },
                            };
                            let ticket = Ticket::Delivery(Taken { delivery, event: None });
                            // `finished` lives as long as this function.
                            let _ = done.send(Done { ticket, processed });
                        }
                        pipeline.submit(messages);
                        if let Some(why) = lost {
                            break SessionEnd::BrokerLost(why);
                        }
                    }
                    Some(Err(e)) => break SessionEnd::BrokerLost(e.to_string()),
                    None => break SessionEnd::BrokerLost("the broker cancelled the consumer".into()),
                },
            }
        };
        self.status.set_consuming(false);
        // The refresher stops between claims (each a single statement).
        stop_refreshing.cancel();
        if let Some(refresher) = refresher {
            let _ = refresher.await;
        }
        // Claimed but not handed over: due again when their claims lapse.
        drop(refreshes);
        if let Err(e) = broker.cancel(&tag).await {
            tracing::debug!(error = %e, "Consumer already gone.");
        }
        drop(deliveries);
        tracing::info!(in_flight, "Stopped consuming; settling in-flight work.");
        // 1. The pipeline hands back every delivery it holds. While
        // shutting down this has the deadline; otherwise (a pause, a lost
        // connection) it has none until a shutdown comes: aborting a writer
        // mid-transaction would return its connection to the pool inside the
        // transaction (sqlx 0.9), and every fetch and write is bounded by its
        // own timeouts and retries anyway.
        let handing_back = async {
            while in_flight > 0 {
                let Some(finished) = finished.recv().await else {
                    break;
                };
                in_flight -= 1;
                // A pause seen while draining changes nothing: consumption
                // has stopped already and the delivery is returned.
                let _ = settler.settle(finished);
            }
        };
        let mut handing_back = std::pin::pin!(handing_back);
        let grace = settings.shutdown_timeout;
        let mut deadline = Instant::now() + grace;
        let handed_back = if matches!(end, SessionEnd::Shutdown { .. }) {
            timeout_at(deadline, &mut handing_back).await.is_ok()
        } else {
            tokio::select! {
                () = &mut handing_back => {
                    deadline = Instant::now() + grace;
                    true
                }
                () = shutdown.cancelled() => {
                    deadline = Instant::now() + grace;
                    timeout_at(deadline, &mut handing_back).await.is_ok()
                }
            }
        };
        // 2. The settle tasks finish acking and publishing.
        let drained = handed_back && timeout_at(deadline, settler.settled()).await.is_ok();
        if !drained {
            // Past the deadline only the settle tasks (acks, publishes) can
            // still be running, or a shutdown is under way and the pool is
            // closed right after: no write is cut short otherwise.
            tracing::warn!("In-flight work did not finish in time; it will be redelivered.");
        }
        pipeline.stop();
        if !handed_back {
            // A shutdown came while draining after a pause or a lost
            // connection: the worker stops, with work still in flight.
            return SessionEnd::Shutdown { drained: false };
        }
        match end {
            SessionEnd::Shutdown { .. } => SessionEnd::Shutdown { drained },
            other => other,
        }
    }
}
