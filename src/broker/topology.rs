//! The worker's topology: `BrokerSettings`, the names `<queue>.retry` and
//! `<queue>.dead`, their declarations with their arguments, the work queue's
//! binding, and the conflict raised when a queue exists with other
//! arguments. It never publishes or consumes; the intake never declares
//! (its `Publisher` only checks that its destination exists).

use lapin::Channel;
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};

use super::error::{BrokerError, failed};
use super::headers::long_string;

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

/// Declares the work queue, `.retry` and `.dead` (idempotent), and binds the
/// work queue to `exchange` if one is set. A queue that exists with other
/// arguments is a `topology conflict`.
///
/// - work queue: quorum, `x-delivery-limit`, dead-lettering at least once
///   to `.dead`, so a message that keeps crashing the worker ends there;
/// - `.retry`: classic; messages wait their per-message TTL, then are
///   dead-lettered back to the work queue;
/// - `.dead`: classic, durable; where events end with a reason.
pub(super) async fn declare(
    channel: &Channel,
    settings: &BrokerSettings,
) -> Result<(), BrokerError> {
    let queue = settings.queue.as_str();
    let dead = settings.dead_letter_queue();
    let mut work_args = FieldTable::default();
    work_args.insert("x-queue-type".into(), long_string("quorum"));
    work_args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(settings.delivery_limit)),
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
            settings.retry_queue(),
            retry_args,
            "declaring the retry queue",
        ),
        (
            queue.to_owned(),
            work_args,
            "declaring the work queue (AMQP_QUEUE)",
        ),
    ] {
        declare_queue(channel, &name, args, what).await?;
    }
    if let Some(exchange) = &settings.exchange {
        let key = settings.routing_key.as_deref().unwrap_or(queue);
        channel
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

/// Declares one durable queue; a conflict says which queue and what an
/// operator can do about it.
async fn declare_queue(
    channel: &Channel,
    name: &str,
    args: FieldTable,
    what: &'static str,
) -> Result<(), BrokerError> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(ShortString::from(name), durable, args)
        .await
        .map(drop)
        .map_err(|e| {
            let mut error = failed(what)(e);
            if error.is_topology_conflict() {
                error.detail = format!(
                    "queue `{name}` already exists with other arguments ({}); \
                     move its messages elsewhere and delete it, or choose another AMQP_QUEUE",
                    error.detail
                );
            }
            error
        })
}
