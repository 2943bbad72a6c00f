//! Helpers for `bench`, `demo` and the tests, on the worker's `Broker`:
//! publishing to a queue (one, stamped, or many pipelined), consuming and
//! acking without processing (one by one, or in runs with `multiple`),
//! taking a message off a queue, deleting a
//! scratch topology. Neither the production worker nor the intake uses
//! any of them; they never touch a queue the caller did not name.

use futures_util::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, PublisherConfirm};

use super::confirm::{self, persistent_json};
use super::connection::{connect, open_channel};
use super::consumer::Broker;
use super::error::{BrokerError, failed, refused};
use super::headers::{ERROR_HEADER, PUBLISHED_AT_HEADER, header_string};
use super::topology::BrokerSettings;

/// A message read off a queue by `Broker::take`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenMessage {
    pub body: Vec<u8>,
    /// The `x-enricher-error` header, if present.
    pub error: Option<String>,
}

impl Broker {
    /// Publishes a persistent message to a queue through the default exchange
    /// and waits for the broker's confirm (used by `demo` and tests).
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8]) -> Result<(), BrokerError> {
        self.publish_confirmed(queue, body, persistent_json()).await
    }

    /// Publishes many persistent messages to a queue, pipelined, waiting for
    /// the broker's confirms every `window` messages (bench preloads).
    pub async fn publish_many(
        &self,
        queue: &str,
        bodies: impl IntoIterator<Item = Vec<u8>>,
        window: usize,
    ) -> Result<u64, BrokerError> {
        let mut pending = Vec::with_capacity(window);
        let mut published = 0;
        for body in bodies {
            let sent = confirm::send(&self.publish, "", queue, false, &body, persistent_json())
                .await
                .map_err(|e| e.for_queue(queue))?;
            pending.push(sent);
            published += 1;
            if pending.len() >= window {
                confirm_all(queue, &mut pending).await?;
            }
        }
        confirm_all(queue, &mut pending).await?;
        Ok(published)
    }

    /// Publishes one message stamped with `x-published-at-ms` = now, and
    /// waits for its confirm (bench latency runs).
    pub async fn publish_stamped(&self, queue: &str, body: &[u8]) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(PUBLISHED_AT_HEADER),
            AMQPValue::LongLongInt(chrono::Utc::now().timestamp_millis()),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(headers);
        self.publish_confirmed(queue, body, properties).await
    }

    /// Consumes `count` deliveries from the work queue and acks each, doing
    /// nothing else: the broker's own limit (bench ceiling).
    pub async fn consume_and_ack(&self, consumer_tag: &str, count: u64) -> Result<(), BrokerError> {
        let mut deliveries = self.consume(consumer_tag).await?;
        for _ in 0..count {
            match deliveries.next().await {
                Some(delivery) => {
                    delivery?.ack().await?;
                }
                None => return Err(refused("consuming", "the consumer ended early".into())),
            }
        }
        self.cancel(consumer_tag).await
    }

    /// Consumes `count` deliveries from `queue` with `prefetch` and acks
    /// them in runs: each delivery already arrived joins the run (up to half
    /// the prefetch, so the broker keeps sending), and one `basic.ack` with
    /// `multiple` settles the run. The broker's own limit when acks cost
    /// nothing (bench ceiling).
    pub async fn consume_and_ack_in_runs(
        &self,
        queue: &str,
        prefetch: u16,
        consumer_tag: &str,
        count: u64,
    ) -> Result<(), BrokerError> {
        self.consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await
            .map_err(failed("setting the prefetch"))?;
        let mut deliveries = self
            .consume
            .basic_consume(
                ShortString::from(queue),
                ShortString::from(consumer_tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed("starting the consumer"))?;
        let ended = || refused("consuming", "the consumer ended early".into());
        let longest_run = u64::from(prefetch / 2).max(1);
        let mut taken = 0;
        while taken < count {
            let mut last = deliveries
                .next()
                .await
                .ok_or_else(ended)?
                .map_err(failed("receiving"))?;
            taken += 1;
            let mut run = 1;
            while taken < count && run < longest_run {
                match deliveries.next().now_or_never() {
                    None => break,
                    Some(None) => return Err(ended()),
                    Some(Some(delivery)) => {
                        last = delivery.map_err(failed("receiving"))?;
                        taken += 1;
                        run += 1;
                    }
                }
            }
            last.acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .map_err(failed("ack"))?;
        }
        self.cancel(consumer_tag).await
    }

    /// Deletes a topology's work queue, `.retry` and `.dead`, messages and
    /// all, without declaring anything first (so a queue declared with other
    /// arguments goes too). For the scratch queues of `demo` and `bench`.
    pub async fn delete_topology(settings: &BrokerSettings) -> Result<(), BrokerError> {
        let connection = connect(&settings.url, None).await?;
        let channel = open_channel(&connection).await?;
        for queue in [
            settings.queue.clone(),
            settings.retry_queue(),
            settings.dead_letter_queue(),
        ] {
            channel
                .queue_delete(
                    ShortString::from(queue.as_str()),
                    QueueDeleteOptions::default(),
                )
                .await
                .map_err(failed("deleting a queue"))?;
        }
        let _ = connection.close(200, ShortString::from("done")).await;
        Ok(())
    }

    /// Takes (and acks) the next message of a queue, if any: its body and its
    /// `x-enricher-error` header.
    pub async fn take(&self, queue: &str) -> Result<Option<TakenMessage>, BrokerError> {
        let Some(got) = self
            .publish
            .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: true })
            .await
            .map_err(failed("reading a queue"))?
        else {
            return Ok(None);
        };
        let delivery = got.delivery;
        Ok(Some(TakenMessage {
            error: header_string(&delivery.properties, ERROR_HEADER),
            body: delivery.data,
        }))
    }
}

/// Waits for every pending confirm; the first that is not a confirm fails
/// the whole.
async fn confirm_all(queue: &str, pending: &mut Vec<PublisherConfirm>) -> Result<(), BrokerError> {
    for sent in pending.drain(..) {
        confirm::confirmation(sent)
            .await
            .map_err(|e| e.for_queue(queue))?;
    }
    Ok(())
}
