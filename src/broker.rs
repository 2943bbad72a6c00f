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

/// Header carrying the reason a message was dead-lettered.
pub const ERROR_HEADER: &str = "x-enricher-error";

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
}

impl BrokerSettings {
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{action}: {detail}")]
pub struct BrokerError {
    action: &'static str,
    detail: String,
}

fn failed(action: &'static str) -> impl FnOnce(lapin::Error) -> BrokerError {
    move |e| BrokerError {
        action,
        detail: e.to_string(),
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
    /// The AMQP `timestamp` property: when the publisher says it published.
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
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
    /// Connects (with lapin's automatic recovery) and declares the topology.
    pub async fn connect(settings: BrokerSettings) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("session-enricher"))
            .enable_auto_recover();
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

    async fn declare_topology(&self) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let queue = self.settings.queue.as_str();
        self.consume
            .queue_declare(ShortString::from(queue), durable, FieldTable::default())
            .await
            .map_err(failed("declaring the work queue (AMQP_QUEUE)"))?;
        self.consume
            .queue_declare(
                ShortString::from(self.settings.dead_letter_queue()),
                durable,
                FieldTable::default(),
            )
            .await
            .map_err(failed("declaring the dead-letter queue"))?;
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
                body: d.data,
                redelivered: d.redelivered,
                published_at: (*d.properties.timestamp())
                    .and_then(|t| chrono::DateTime::from_timestamp(i64::try_from(t).ok()?, 0)),
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
    /// header, and waits for the broker's confirm.
    pub async fn dead_letter(&self, delivery: &Delivery, reason: &str) -> Result<(), BrokerError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ShortString::from(ERROR_HEADER),
            AMQPValue::LongString(LongString::from(reason)),
        );
        let properties = delivery
            .properties
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish_confirmed(
            &self.settings.dead_letter_queue(),
            &delivery.body,
            properties,
        )
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
            Confirmation::Ack(Some(_)) => Err(BrokerError {
                action: "publishing",
                detail: format!("queue `{queue}` does not exist (message returned)"),
            }),
            Confirmation::Nack(_) => Err(BrokerError {
                action: "publishing",
                detail: "the broker refused the message (nack)".into(),
            }),
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
