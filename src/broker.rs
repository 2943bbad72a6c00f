//! RabbitMQ: the only module that speaks AMQP (and the only importer of
//! `lapin`). It declares the topology, hands out deliveries as domain
//! `Delivery` values, and publishes with publisher confirms: `Broker` for the
//! worker, `Publisher` (a self-healing confirm channel) for the webhook
//! intake. It never decides what a delivery means.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

/// Header carrying the reason a message was dead-lettered (or, on the retry
/// queue, why its last attempt failed).
pub const ERROR_HEADER: &str = "x-enricher-error";
/// Header counting the attempts already made at a message.
pub const ATTEMPT_HEADER: &str = "x-enricher-attempts";
/// Header a producer may set: when it published the event, in Unix
/// milliseconds (for the publish→commit lag).
pub const PUBLISHED_AT_HEADER: &str = "x-published-at-ms";
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
    /// When the producer published it: the `x-published-at-ms` header, or
    /// the AMQP `timestamp` property (seconds), if either is set.
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
                published_at_ms: header_i64(&d.properties, PUBLISHED_AT_HEADER).or_else(|| {
                    d.properties
                        .timestamp()
                        .and_then(|t| i64::try_from(t).ok())
                        .map(|s| s * 1000)
                }),
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
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"));
            let confirm = self
                .publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await
                .map_err(failed("publishing"))?;
            pending.push(confirm);
            published += 1;
            if pending.len() >= window {
                confirm_all(&mut pending).await?;
            }
        }
        confirm_all(&mut pending).await?;
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

    /// Deletes a topology's work queue, `.retry` and `.dead`, messages and
    /// all, without declaring anything first (so a queue declared with other
    /// arguments goes too). For the scratch queues of `demo` and `bench`.
    pub async fn delete_topology(settings: &BrokerSettings) -> Result<(), BrokerError> {
        let connection = Connection::connect(&settings.url, ConnectionProperties::default())
            .await
            .map_err(failed("connecting to AMQP_URL"))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(failed("opening a channel"))?;
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
    header_i64(properties, name)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// An integer header, if present as an integer.
fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    Some(match value {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok()?,
        _ => return None,
    })
}

async fn confirm_all(pending: &mut Vec<lapin::PublisherConfirm>) -> Result<(), BrokerError> {
    for confirm in pending.drain(..) {
        if confirm
            .await
            .map_err(failed("waiting for a publisher confirm"))?
            .is_nack()
        {
            return Err(refused(
                "publishing",
                "the broker refused a message (nack)".into(),
            ));
        }
    }
    Ok(())
}

/// Where the intake's messages go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Through the default exchange straight into this work queue (routing
    /// key = the queue). The worker owns the queue and its arguments: it is
    /// checked to exist at each connect, never declared here, so the two
    /// processes can never declare it differently.
    Queue(String),
    /// To this exchange, with a routing key per message. The exchange is the
    /// operator's: it is checked to exist at each connect, never declared.
    Exchange(String),
}

/// How the intake's `Publisher` reaches the broker.
#[derive(Clone, Debug)]
pub struct PublisherSettings {
    pub url: String,
    pub destination: Destination,
    /// How long a publish may wait for the broker's confirm before the
    /// message counts as not queued.
    pub confirm_timeout: Duration,
    /// Waits between connection attempts (doubling, jittered, capped);
    /// attempts never stop while the publisher runs.
    pub reconnect: Backoff,
}

/// Why a message was not confirmed as queued. Either way the caller must
/// treat it as not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// No connection, the connection failed mid-publish, the broker nacked
    /// the message or did not confirm it in time: trying later may work.
    #[error("RabbitMQ is unavailable: {0}")]
    Unavailable(String),
    /// The broker returned the message: nothing is bound to its routing
    /// key. A configuration problem, not an outage.
    #[error("no queue is bound to routing key `{routing_key}` (the broker returned the message)")]
    Unroutable { routing_key: String },
}

/// Whether the `Publisher` can publish right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublisherState {
    Ready,
    /// Not connected (or blocked by the broker), and why.
    NotReady(String),
}

/// One connection with a confirm-mode channel, kept open by a background
/// task that reconnects with backoff whenever it is lost. Starting never
/// waits for the broker: until the first connect, and while reconnecting,
/// `publish` fails fast with `PublishError::Unavailable`.
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<PublisherShared>,
}

struct PublisherShared {
    settings: PublisherSettings,
    link: RwLock<Option<Arc<Link>>>,
    /// Why there is no link (for readiness and 503 logs).
    down_reason: Mutex<String>,
    /// Wakes the supervisor to re-check the link after a failed publish.
    recheck: Notify,
    stop: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

struct Link {
    connection: Connection,
    channel: Channel,
}

/// The longest a connection attempt (TCP, AMQP handshake, channel, topology
/// check) may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the supervisor looks at a link nobody has reported broken;
/// `state()` reads the live status, so this only bounds reconnect latency.
const LINK_CHECK_INTERVAL: Duration = Duration::from_millis(500);

impl Link {
    async fn open(settings: &PublisherSettings) -> Result<Self, BrokerError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from("session-enricher ingest"));
        let connection = Connection::connect(&settings.url, properties)
            .await
            .map_err(failed("connecting to AMQP_URL"))?;
        match Self::prepare_channel(&connection, &settings.destination).await {
            Ok(channel) => Ok(Self {
                connection,
                channel,
            }),
            Err(e) => {
                let _ = connection
                    .close(200, ShortString::from("setup failed"))
                    .await;
                Err(e)
            }
        }
    }

    async fn prepare_channel(
        connection: &Connection,
        destination: &Destination,
    ) -> Result<Channel, BrokerError> {
        let channel = connection
            .create_channel()
            .await
            .map_err(failed("opening a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed("enabling publisher confirms"))?;
        match destination {
            Destination::Queue(queue) => {
                channel
                    .queue_declare(
                        ShortString::from(queue.as_str()),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(failed(
                        "checking that the work queue AMQP_QUEUE exists (the worker declares it at start)",
                    ))?;
            }
            Destination::Exchange(exchange) => {
                // Passive: the kind is ignored and nothing is created.
                channel
                    .exchange_declare(
                        ShortString::from(exchange.as_str()),
                        ExchangeKind::Topic,
                        ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(failed("checking that AMQP_EXCHANGE exists"))?;
            }
        }
        Ok(channel)
    }

    /// `Err(why)` once the connection or the channel has closed.
    fn check(&self) -> Result<(), String> {
        if !self.connection.status().connected() {
            return Err("the connection to RabbitMQ was lost".into());
        }
        if !self.channel.status().connected() {
            return Err("the publishing channel was closed by the broker".into());
        }
        Ok(())
    }

    async fn close(&self) {
        let closing = async {
            let _ = self.channel.close(200, ShortString::from("shutdown")).await;
            let _ = self
                .connection
                .close(200, ShortString::from("shutdown"))
                .await;
        };
        // A dead peer must not hold up a shutdown or a reconnect.
        if tokio::time::timeout(Duration::from_secs(5), closing)
            .await
            .is_err()
        {
            tracing::debug!("Closing the AMQP connection timed out.");
        }
    }
}

impl Publisher {
    /// Starts connecting in the background and returns at once.
    pub fn start(settings: PublisherSettings) -> Self {
        let shared = Arc::new(PublisherShared {
            settings,
            link: RwLock::new(None),
            down_reason: Mutex::new("connecting to RabbitMQ".into()),
            recheck: Notify::new(),
            stop: CancellationToken::new(),
            supervisor: Mutex::new(None),
        });
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared)));
        *lock(&shared.supervisor) = Some(supervisor);
        Self { shared }
    }

    /// Ready only while the connection and the channel are open and the
    /// broker does not block publishers.
    pub fn state(&self) -> PublisherState {
        match self.link() {
            Ok(link) if link.connection.status().blocked() => PublisherState::NotReady(
                "RabbitMQ blocks publishers (a memory or disk alarm)".into(),
            ),
            Ok(link) => match link.check() {
                Ok(()) => PublisherState::Ready,
                Err(why) => PublisherState::NotReady(why),
            },
            Err(why) => PublisherState::NotReady(why),
        }
    }

    /// Publishes `body` as is, persistent and `mandatory`, to the
    /// destination with `routing_key`, and waits for the broker's confirm.
    /// `Ok` means the broker has taken responsibility for the message;
    /// anything else means it may not be queued.
    pub async fn publish(&self, routing_key: &str, body: &[u8]) -> Result<(), PublishError> {
        let link = self.link().map_err(PublishError::Unavailable)?;
        if link.connection.status().blocked() {
            // A blocked connection holds publishes until the alarm clears:
            // answer now rather than keep the PBX waiting.
            return Err(PublishError::Unavailable(
                "RabbitMQ blocks publishers (a memory or disk alarm)".into(),
            ));
        }
        let exchange = match &self.shared.settings.destination {
            Destination::Queue(_) => "",
            Destination::Exchange(exchange) => exchange.as_str(),
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/json"));
        let timeout = self.shared.settings.confirm_timeout;
        let confirmed = tokio::time::timeout(timeout, async {
            link.channel
                .basic_publish(
                    ShortString::from(exchange),
                    ShortString::from(routing_key),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        })
        .await;
        let unavailable = |why: String| {
            self.shared.recheck.notify_one();
            Err(PublishError::Unavailable(why))
        };
        match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(PublishError::Unroutable {
                routing_key: routing_key.to_owned(),
            }),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Unavailable(
                "the broker nacked the message".into(),
            )),
            // Cannot happen on a confirm channel; never take it as a confirm.
            Ok(Ok(Confirmation::NotRequested)) => {
                unavailable("the channel is not in confirm mode".into())
            }
            Ok(Err(e)) => unavailable(format!("publishing: {e}")),
            Err(_) => unavailable(format!("no confirm within {timeout:?}")),
        }
    }

    /// Stops reconnecting and closes the channel and the connection.
    pub async fn close(&self) {
        self.shared.stop.cancel();
        let supervisor = lock(&self.shared.supervisor).take();
        if let Some(supervisor) = supervisor {
            let _ = supervisor.await;
        }
    }

    fn link(&self) -> Result<Arc<Link>, String> {
        let link = self
            .shared
            .link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        link.ok_or_else(|| lock(&self.shared.down_reason).clone())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The publisher's background task: connect (retrying with backoff), hold
/// the link while it is healthy, and start over when it breaks, until
/// `stop`; then close the link.
async fn supervise(shared: Arc<PublisherShared>) {
    let settings = &shared.settings;
    let mut failures: u32 = 0;
    loop {
        let opened = tokio::select! {
            () = shared.stop.cancelled() => return,
            opened = tokio::time::timeout(CONNECT_TIMEOUT, Link::open(settings)) => {
                opened.unwrap_or_else(|_| Err(refused(
                    "connecting to AMQP_URL",
                    format!("no answer within {CONNECT_TIMEOUT:?}"),
                )))
            }
        };
        let link = match opened {
            Ok(link) => Arc::new(link),
            Err(e) => {
                let retry_in = settings.reconnect.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, attempt = failures, retry_in_ms = u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
                    "Cannot reach RabbitMQ; webhooks are answered 503 until it is back.");
                *lock(&shared.down_reason) = e.to_string();
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(retry_in) => continue,
                }
            }
        };
        failures = 0;
        *shared.link.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&link));
        tracing::info!("Connected to RabbitMQ with publisher confirms.");
        let lost = loop {
            tokio::select! {
                () = shared.stop.cancelled() => break None,
                () = shared.recheck.notified() => {}
                () = tokio::time::sleep(LINK_CHECK_INTERVAL) => {}
            }
            if let Err(why) = link.check() {
                break Some(why);
            }
        };
        *lock(&shared.down_reason) = lost
            .clone()
            .unwrap_or_else(|| "the intake is shutting down".into());
        shared
            .link
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        link.close().await;
        match lost {
            None => return,
            Some(why) => tracing::error!(reason = %why,
                "Lost RabbitMQ; webhooks are answered 503 while reconnecting."),
        }
    }
}
