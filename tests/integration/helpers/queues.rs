//! This test's queues: publishing to the work queue (confirmed), reading
//! and counting queues, dead letters with the headers saying why, and the
//! odd hand-made queue or exchange a test needs. Uses the test's own
//! confirm-mode channel; never consumes.

use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Queue};
use serde_json::Value;

use super::env::TestEnv;

/// A message of the dead-letter queue and why it is there.
#[derive(Debug)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    /// `x-enricher-error`: set when the worker dead-lettered it.
    pub reason: Option<String>,
    /// `x-enricher-attempts`.
    pub attempts: Option<i64>,
    /// `x-first-death-reason`: set when the broker dead-lettered it (e.g.
    /// `delivery_limit`).
    pub broker_reason: Option<String>,
}

/// A message read off a queue.
#[derive(Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    pub body: Vec<u8>,
    /// `delivery_mode` 2.
    pub persistent: bool,
    pub routing_key: String,
}

impl TestEnv {
    /// Publishes a persistent message to the work queue and waits for the
    /// broker's confirm.
    pub async fn publish(&self, body: &[u8]) {
        self.publish_with_headers(body, FieldTable::default()).await;
    }

    pub async fn publish_with_headers(&self, body: &[u8], headers: FieldTable) {
        self.publish_with_properties(body, BasicProperties::default().with_headers(headers))
            .await;
    }

    /// Publishes with the AMQP `timestamp` property set to `published_at`
    /// (seconds since the epoch), as an intake that stamps messages does.
    pub async fn publish_stamped(&self, body: &[u8], published_at: u64) {
        self.publish_with_properties(
            body,
            BasicProperties::default().with_timestamp(published_at),
        )
        .await;
    }

    async fn publish_with_properties(&self, body: &[u8], properties: BasicProperties) {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker refused a test message");
    }

    pub async fn publish_json(&self, event: &Value) {
        self.publish(event.to_string().as_bytes()).await;
    }

    /// Ready messages in a queue.
    pub async fn queue_len(&self, queue: &str) -> u32 {
        declare_passive(&self.channel, queue)
            .await
            .map(|q| q.message_count())
            .unwrap_or(0)
    }

    /// Whether a queue exists (a passive declare on a throwaway channel, as
    /// a failed one closes its channel).
    pub async fn queue_exists(&self, queue: &str) -> bool {
        let channel = self.amqp.create_channel().await.expect("open a channel");
        let exists = declare_passive(&channel, queue).await.is_ok();
        let _ = channel.close(200, "done".into()).await;
        exists
    }

    /// Takes every message of a queue: body and delivery mode.
    pub async fn take_messages(&self, queue: &str) -> Vec<QueuedMessage> {
        self.take_all(queue)
            .await
            .into_iter()
            .map(|delivery| QueuedMessage {
                persistent: *delivery.properties.delivery_mode() == Some(2),
                routing_key: delivery.routing_key.to_string(),
                body: delivery.data,
            })
            .collect()
    }

    /// Takes every message of a queue, as delivered.
    async fn take_all(&self, queue: &str) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Some(got) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap_or_else(|err| panic!("basic.get on {queue}: {err}"))
        {
            out.push(got.delivery);
        }
        out
    }

    /// Takes every message of a queue and returns the session ids of those
    /// that are message events.
    pub async fn take_session_ids(&self, queue: &str) -> Vec<i64> {
        self.take_messages(queue)
            .await
            .iter()
            .filter_map(|message| {
                let body: Value = serde_json::from_slice(&message.body).unwrap_or(Value::Null);
                body.pointer("/msg/session_id").and_then(Value::as_i64)
            })
            .collect()
    }

    /// Takes every message of the dead-letter queue: body and reason header.
    pub async fn take_dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.take_dead_letters_in_full()
            .await
            .into_iter()
            .map(|d| (d.body, d.reason.unwrap_or_default()))
            .collect()
    }

    /// Takes every message of the dead-letter queue with the headers that
    /// say why it is there.
    pub async fn take_dead_letters_in_full(&self) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        for delivery in self.take_all(&self.dead_queue).await {
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let header = |name: &str| headers.inner().get(name).cloned();
            let text = |v| match v {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                other => format!("{other:?}"),
            };
            let attempts = header("x-enricher-attempts").and_then(|v| match v {
                AMQPValue::LongLongInt(n) => Some(n),
                AMQPValue::LongInt(n) => Some(i64::from(n)),
                _ => None,
            });
            out.push(DeadLetter {
                body: delivery.data,
                reason: header("x-enricher-error").map(text),
                attempts,
                broker_reason: header("x-first-death-reason").map(text),
            });
        }
        out
    }

    /// Declares a plain classic queue, as someone might by hand.
    pub async fn declare_classic_queue(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare a classic queue");
    }

    pub async fn delete_queue(&self, queue: &str) {
        let _ = self
            .channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }

    /// A topic exchange of this test's own (deleted when its last binding
    /// goes) with one exclusive queue (gone with this test's connection)
    /// per binding key. Returns the exchange and the queues, in key order.
    pub async fn exchange_with_queues(&self, keys: &[&str]) -> (String, Vec<String>) {
        let exchange = format!("{}.exchange", self.name);
        self.channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the test exchange");
        let mut queues = Vec::new();
        for key in keys {
            let queue = format!("{}.bound.{key}", self.name);
            self.channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare a bound queue");
            self.channel
                .queue_bind(
                    queue.as_str().into(),
                    exchange.as_str().into(),
                    (*key).into(),
                    lapin::options::QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the queue");
            queues.push(queue);
        }
        (exchange, queues)
    }
}

/// A passive declare: the queue as it is, or an error if there is none
/// (which also closes `channel`).
async fn declare_passive(channel: &Channel, queue: &str) -> lapin::Result<Queue> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
}
