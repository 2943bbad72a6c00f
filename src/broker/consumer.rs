//! The worker's side: `Broker`, one connection with a consuming channel and
//! a confirm channel. It connects and declares the topology, consumes the
//! work queue as `Delivery` values, acks or requeues them, and publishes
//! dead letters and retries, each confirmed before it returns. It never
//! decides which of those a delivery gets: the worker's settle step does.

use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::{Stream, StreamExt};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::acks::Acks;
use super::confirm;
use super::connection::{connect, open_channel, open_confirm_channel};
use super::error::{BrokerError, failed};
use super::headers::{
    ATTEMPT_HEADER, DIGEST_HEADER, ERROR_HEADER, PUBLISHED_AT_HEADER, header_i64, header_u32,
    long_string,
};
use super::topology::{self, BrokerSettings};

/// One connection with a consuming channel and a confirm-mode publishing
/// channel.
pub struct Broker {
    connection: Connection,
    pub(super) consume: Channel,
    pub(super) publish: Channel,
    /// The consuming channel's delivery tags, for acks in runs.
    acks: Acks,
    settings: BrokerSettings,
}

/// A message taken from the work queue; it stays unacked until `ack` or
/// `requeue`, whichever is called first (the other then does nothing).
pub struct Delivery {
    pub body: Vec<u8>,
    pub redelivered: bool,
    /// Attempts already made at this message (the `x-enricher-attempts`
    /// header it came back from the retry queue with; 0 when fresh).
    pub attempts: u32,
    /// When the producer published it: the `x-published-at-ms` header, or
    /// the AMQP `timestamp` property (seconds), if either is set.
    pub published_at_ms: Option<i64>,
    properties: BasicProperties,
    tag: u64,
    acker: lapin::Acker,
    acks: Acks,
    /// Set by the first `ack` or `requeue`.
    settled: AtomicBool,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("bytes", &self.body.len())
            .field("redelivered", &self.redelivered)
            .finish()
    }
}

impl Delivery {
    /// Takes a delivery of the consuming channel, recording its tag in the
    /// channel's `acks`.
    fn new(delivery: lapin::message::Delivery, acks: Acks) -> Self {
        acks.taken(delivery.delivery_tag);
        let properties = delivery.properties;
        Self {
            attempts: header_u32(&properties, ATTEMPT_HEADER),
            published_at_ms: header_i64(&properties, PUBLISHED_AT_HEADER).or_else(|| {
                properties
                    .timestamp()
                    .and_then(|t| i64::try_from(t).ok())
                    .map(|s| s * 1000)
            }),
            body: delivery.data,
            redelivered: delivery.redelivered,
            properties,
            tag: delivery.delivery_tag,
            acker: delivery.acker,
            acks,
            settled: AtomicBool::new(false),
        }
    }

    /// Acknowledges the delivery, in one frame with the deliveries before
    /// it when they finish within a few milliseconds (see `acks`); returns
    /// once a frame acking it has been sent. `Ok(false)` means the channel
    /// it came from is gone (the broker will redeliver it), or the delivery
    /// was settled already.
    pub async fn ack(&self) -> Result<bool, BrokerError> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.acks.ack(self.tag, &self.acker).await
    }

    /// Returns the delivery to the queue for another try (a frame of its
    /// own, never part of a run). `Ok(false)` as for `ack`.
    pub async fn requeue(&self) -> Result<bool, BrokerError> {
        if self.settled.swap(true, Ordering::AcqRel) {
            return Ok(false);
        }
        self.acks.requeue(self.tag, &self.acker).await
    }

    /// Its properties, persistent, with our reason and attempt count added
    /// to its headers (the rest kept as they came).
    fn annotated(&self, reason: &str, attempts: u32) -> BasicProperties {
        let mut headers = self.properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(ERROR_HEADER), long_string(reason));
        headers.insert(
            ShortString::from(ATTEMPT_HEADER),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        self.properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2)
    }
}

impl Broker {
    /// Connects and declares the topology. No automatic recovery: when the
    /// connection is lost, the worker drops this `Broker` and connects anew
    /// (one reconnect mechanism, with its own backoff).
    pub async fn connect(settings: BrokerSettings) -> Result<Self, BrokerError> {
        let connection = connect(&settings.url, Some("session-enricher")).await?;
        let consume = open_channel(&connection).await?;
        let publish = open_confirm_channel(&connection).await?;
        topology::declare(&consume, &settings).await?;
        Ok(Self {
            connection,
            consume,
            publish,
            acks: Acks::default(),
            settings,
        })
    }

    /// Starts consuming the work queue with the configured prefetch.
    pub async fn consume(
        &self,
        consumer_tag: &str,
    ) -> Result<impl Stream<Item = Result<Delivery, BrokerError>> + Send + Unpin + use<>, BrokerError>
    {
        self.consume
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(failed("setting the prefetch"))?;
        let consumer = self
            .consume
            .basic_consume(
                ShortString::from(self.settings.queue.as_str()),
                ShortString::from(consumer_tag),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(failed("starting the consumer"))?;
        let acks = self.acks.clone();
        Ok(consumer.map(move |delivery| {
            delivery
                .map(|delivery| Delivery::new(delivery, acks.clone()))
                .map_err(failed("receiving"))
        }))
    }

    /// Stops the consumer: no new deliveries; those held stay ackable.
    pub async fn cancel(&self, consumer_tag: &str) -> Result<(), BrokerError> {
        self.consume
            .basic_cancel(
                ShortString::from(consumer_tag),
                BasicCancelOptions::default(),
            )
            .await
            .map_err(failed("cancelling the consumer"))
    }

    /// Publishes the delivery's body, byte for byte and with its properties,
    /// to the dead-letter queue with `reason` in the `x-enricher-error`
    /// header (`attempts` in `x-enricher-attempts`, the body's digest in
    /// `x-enricher-body-sha256`), and waits for the broker's confirm.
    pub async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        attempts: u32,
        body_sha256: &str,
    ) -> Result<(), BrokerError> {
        let mut properties = delivery.annotated(reason, attempts);
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(ShortString::from(DIGEST_HEADER), long_string(body_sha256));
        properties = properties.with_headers(headers);
        self.publish_confirmed(
            &self.settings.dead_letter_queue(),
            &delivery.body,
            properties,
        )
        .await
    }

    /// Publishes the delivery's body and properties to the retry queue with
    /// `attempts` and the last `reason` in headers; it comes back to the work
    /// queue after `delay`. Waits for the broker's confirm.
    pub async fn retry_later(
        &self,
        delivery: &Delivery,
        attempts: u32,
        delay: std::time::Duration,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let properties = delivery
            .annotated(reason, attempts)
            .with_expiration(ShortString::from(delay.as_millis().max(1).to_string()));
        self.publish_confirmed(&self.settings.retry_queue(), &delivery.body, properties)
            .await
    }

    /// Publishes to `queue` through the default exchange, `mandatory`, and
    /// waits for the broker's confirm.
    pub(super) async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        confirm::publish_confirmed(&self.publish, "", queue, body, properties)
            .await
            .map_err(|e| e.for_queue(queue))
    }

    /// Closes both channels and the connection.
    pub async fn close(&self) {
        for channel in [&self.consume, &self.publish] {
            let _ = channel.close(200, ShortString::from("shutdown")).await;
        }
        if let Err(e) = self
            .connection
            .close(200, ShortString::from("shutdown"))
            .await
        {
            tracing::debug!(error = %e, "Closing the AMQP connection.");
        }
    }
}
