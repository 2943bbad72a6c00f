//! RabbitMQ: the only module that speaks AMQP (and the only importer of
//! `lapin`). It declares the topology, hands out deliveries as domain
//! `Delivery` values, and publishes with publisher confirms. It never decides
//! what a delivery means.

use futures_util::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

/// Header carrying the reason a message was dead-lettered (or, on the retry
/// queue, why its last attempt failed).
pub const ERROR_HEADER: &str = "x-enricher-error";
/// Header counting the attempts already made at a message.
pub const ATTEMPT_HEADER: &str = "x-enricher-attempts";
/// Header on dead letters: the SHA-256 (hex) of the body, a stable key for
/// dropping the rare duplicate (a publish whose confirm was lost).
pub const DIGEST_HEADER: &str = "x-enricher-body-sha256";

/// How to reach the broker and which queues to use.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub url: String,
    /// The work queue; `<queue>.dead` is its dead-letter queue.
    pub queue: String,
    /// Bind the work queue to this exchange (which must exist) ...
    pub exchange: Option<String>,
    /// ... with this routing key (default: the queue name).
    pub routing_key: Option<String>,
    /// Unacked deliveries this consumer may hold.
    pub prefetch: u16,
    /// Deliveries of one message (first included) after which the work
    /// queue dead-letters it: bounds a message that crashes the worker.
    pub delivery_limit: u32,
}

impl BrokerSettings {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    pub fn retry_queue(&self) -> String {
        format!("{}.retry", self.queue)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{action}: {detail}")]
pub struct BrokerError {
    action: &'static str,
    detail: String,
    /// A queue exists with arguments other than ours (PRECONDITION_FAILED):
    /// retrying cannot help, an operator must act.
    conflict: bool,
}

impl BrokerError {
    /// Whether the broker refused our topology (see `conflict`).
    pub fn is_topology_conflict(&self) -> bool {
        self.conflict
    }
}

fn failed(action: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |e| BrokerError {
        action,
        conflict: matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406),
        detail: e.to_string(),
    }
}

fn refused(action: &'static str, detail: String) -> BrokerError {
    BrokerError {
        action,
        detail,
        conflict: false,
    }
}

/// A message read off a queue by `Broker::take`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenMessage {
    pub body: Vec<u8>,
    /// The `x-enricher-error` header, if present.
    pub error: Option<String>,
}

/// One connection with a consuming channel and a confirm-mode publishing
/// channel.
pub struct Broker {
    connection: Connection,
    consume: Channel,
    publish: Channel,
    settings: BrokerSettings,
}

/// A message taken from the work queue; it stays unacked until `ack` or
/// `requeue`.
pub struct Delivery {
    pub body: Vec<u8>,
    pub redelivered: bool,
    /// Attempts already made at this message (the `x-enricher-attempts`
    /// header it came back from the retry queue with; 0 when fresh).
    pub attempts: u32,
    /// The AMQP `timestamp` property (when the publisher published), in ms.
    pub published_at_ms: Option<i64>,
    properties: BasicProperties,
    acker: lapin::Acker,
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
    /// Acknowledges the delivery. `Ok(false)` means the channel it came from
    /// is gone (the broker will redeliver it).
    pub async fn ack(&self) -> Result<bool, BrokerError> {
        self.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(failed("ack"))
    }

    /// Returns the delivery to the queue for another try.
    pub async fn requeue(&self) -> Result<bool, BrokerError> {
        self.acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(failed("nack"))
    }
}

impl Broker {
    /// Connects and declares the topology. No automatic recovery: when the
    /// connection is lost, the worker drops this `Broker` and connects anew
    /// (one reconnect mechanism, with its own backoff).
    pub async fn connect(settings: BrokerSettings) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("session-enricher"));
        let connection = Connection::connect(&settings.url, properties)
            .await
            .map_err(failed("connecting to AMQP_URL"))?;
        let consume = connection
            .create_channel()
            .await
            .map_err(failed("opening a channel"))?;
        let publish = connection
            .create_channel()
            .await
            .map_err(failed("opening a channel"))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed("enabling publisher confirms"))?;
        let broker = Self {
            connection,
            consume,
            publish,
            settings,
        };
        broker.declare_topology().await?;
        Ok(broker)
    }

    /// Declares the work queue, `.retry` and `.dead` (idempotent). A queue
    /// that exists with other arguments is a `topology conflict`.
    ///
    /// - work queue: quorum, `x-delivery-limit`, dead-lettering at least once
    ///   to `.dead`, so a message that keeps crashing the worker ends there;
    /// - `.retry`: classic; messages wait their per-message TTL, then are
    ///   dead-lettered back to the work queue;
    /// - `.dead`: classic, durable; where events end with a reason.
    async fn declare_topology(&self) -> Result<(), BrokerError> {
        let queue = self.settings.queue.as_str();
        let dead = self.settings.dead_letter_queue();
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut work_args = FieldTable::default();
        work_args.insert("x-queue-type".into(), long_string("quorum"));
        work_args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(self.settings.delivery_limit)),
        );
        work_args.insert("x-dead-letter-exchange".into(), long_string(""));
        work_args.insert("x-dead-letter-routing-key".into(), long_string(&dead));
        work_args.insert(
            "x-dead-letter-strategy".into(),
            long_string("at-least-once"),
        );
        work_args.insert("x-overflow".into(), long_string("reject-publish"));
        let mut retry_args = FieldTable::default();
        retry_args.insert("x-queue-type".into(), long_string("classic"));
        retry_args.insert("x-dead-letter-exchange".into(), long_string(""));
        retry_args.insert("x-dead-letter-routing-key".into(), long_string(queue));
        let mut dead_args = FieldTable::default();
        dead_args.insert("x-queue-type".into(), long_string("classic"));
        for (name, args, what) in [
            (dead.clone(), dead_args, "declaring the dead-letter queue"),
            (
                self.settings.retry_queue(),
                retry_args,
                "declaring the retry queue",
            ),
            (
                queue.to_owned(),
                work_args,
                "declaring the work queue (AMQP_QUEUE)",
            ),
        ] {
            self.consume
                .queue_declare(ShortString::from(name.as_str()), durable, args)
                .await
                .map_err(|e| {
                    let mut error = failed(what)(e);
                    if error.conflict {
                        error.detail = format!(
                            "queue `{name}` already exists with other arguments ({}); \
                             move its messages elsewhere and delete it, or choose another AMQP_QUEUE",
                            error.detail
                        );
                    }
                    error
                })?;
        }
        if let Some(exchange) = &self.settings.exchange {
            let key = self.settings.routing_key.as_deref().unwrap_or(queue);
            self.consume
                .queue_bind(
                    ShortString::from(queue),
                    ShortString::from(exchange.as_str()),
                    ShortString::from(key),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(failed("binding the work queue to AMQP_EXCHANGE"))?;
        }
        Ok(())
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
        Ok(consumer.map(|delivery| {
            delivery.map_err(failed("receiving")).map(|d| Delivery {
                attempts: header_u32(&d.properties, ATTEMPT_HEADER),
                published_at_ms: (*d.properties.timestamp())
                    .and_then(|s| i64::try_from(s).ok())
                    .map(|s| s * 1000),
                body: d.data,
                redelivered: d.redelivered,
                properties: d.properties,
                acker: d.acker,
            })
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
        let mut properties = annotated(delivery, reason, attempts);
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
        let properties = annotated(delivery, reason, attempts)
            .with_expiration(ShortString::from(delay.as_millis().max(1).to_string()));
        self.publish_confirmed(&self.settings.retry_queue(), &delivery.body, properties)
            .await
    }

    /// Publishes a persistent message to a queue through the default exchange
    /// and waits for the broker's confirm (used by `demo` and tests).
    pub async fn publish_to_queue(&self, queue: &str, body: &[u8]) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        self.publish_confirmed(queue, body, properties).await
    }

    async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let confirm = self
            .publish
            .basic_publish(
                ShortString::from(""),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .map_err(failed("publishing"))?
            .await
            .map_err(failed("waiting for the publisher confirm"))?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(refused(
                "publishing",
                format!("queue `{queue}` does not exist (message returned)"),
            )),
            Confirmation::Nack(_) => Err(refused(
                "publishing",
                "the broker refused the message (nack)".into(),
            )),
        }
    }

    /// Ready messages in a queue (a passive declare), for `demo` and tests.
    pub async fn ready_count(&self, queue: &str) -> Result<u32, BrokerError> {
        let declared = self
            .publish
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(failed("inspecting a queue"))?;
        Ok(declared.message_count())
    }

    /// Empties a queue (the demo starts from a clean slate).
    pub async fn purge(&self, queue: &str) -> Result<u32, BrokerError> {
        self.publish
            .queue_purge(ShortString::from(queue), QueuePurgeOptions::default())
            .await
            .map_err(failed("purging a queue"))
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
        let error = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(ERROR_HEADER))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                _ => None,
            });
        Ok(Some(TakenMessage {
            body: delivery.data,
            error,
        }))
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

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// The delivery's properties, persistent, with our reason and attempt
/// count added to its headers (the rest kept as they came).
fn annotated(delivery: &Delivery, reason: &str, attempts: u32) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(ShortString::from(ERROR_HEADER), long_string(reason));
    headers.insert(
        ShortString::from(ATTEMPT_HEADER),
        AMQPValue::LongLongInt(i64::from(attempts)),
    );
    delivery
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

/// An integer header as a `u32`, 0 when absent or not a usable integer.
fn header_u32(properties: &BasicProperties, name: &str) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
    else {
        return 0;
    };
    let number = match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => 0,
    };
    u32::try_from(number).unwrap_or(0)
}
