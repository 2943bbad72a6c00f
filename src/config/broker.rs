//! `AmqpUrlArgs` (the RabbitMQ connection, for every command that needs
//! one), `QueueArgs` (the work queue and exchange, for the worker and the
//! intake) and `BrokerArgs` (the worker's consumer). Validates; never connects.

use clap::Args;

use super::{ConfigError, defaults, invalid};
use crate::broker::BrokerSettings;

/// The RabbitMQ connection, shared by every command that needs one.
#[derive(Debug, Args)]
pub struct AmqpUrlArgs {
    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        value_name = "AMQP_URL",
        default_value = defaults::AMQP_URL,
        hide_env_values = true
    )]
    pub amqp_url: String,
}

/// Where events travel: the work queue, and optionally an exchange in
/// front of it. The worker and the intake read the same two variables.
#[derive(Debug, Args)]
pub struct QueueArgs {
    /// Work queue: the worker declares it (durable, `<AMQP_QUEUE>.dead`
    /// holds dead letters); ingest publishes to it when AMQP_EXCHANGE is
    /// unset, and is not ready until it exists.
    #[arg(
        long,
        env = "AMQP_QUEUE",
        value_name = "AMQP_QUEUE",
        default_value = defaults::AMQP_QUEUE
    )]
    pub amqp_queue: String,
    /// Optional existing exchange: the worker binds the work queue to it;
    /// ingest publishes to it instead, with routing key `yeastar.<type>`
    /// (e.g. `yeastar.30031`), so queues bind to the types they want.
    #[arg(long, env = "AMQP_EXCHANGE", value_name = "AMQP_EXCHANGE")]
    pub amqp_exchange: Option<String>,
}

impl QueueArgs {
    /// The exchange, if one is set (empty means none).
    pub fn exchange(&self) -> Result<Option<String>, ConfigError> {
        match self.amqp_exchange.as_deref().filter(|e| !e.is_empty()) {
            Some(exchange) if exchange.len() > 255 => {
                Err(invalid("AMQP_EXCHANGE", "must be at most 255 characters"))
            }
            exchange => Ok(exchange.map(str::to_owned)),
        }
    }
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    #[command(flatten)]
    pub queue: QueueArgs,
    /// Optional: the binding's routing key (default: the queue name).
    #[arg(long, env = "AMQP_ROUTING_KEY", value_name = "AMQP_ROUTING_KEY")]
    pub amqp_routing_key: Option<String>,
    /// Unacked deliveries this worker may hold.
    #[arg(long, env = "ENRICHER_PREFETCH", value_name = "ENRICHER_PREFETCH", default_value_t = defaults::PREFETCH, value_parser = clap::value_parser!(u16).range(1..))]
    pub prefetch: u16,
    /// Deliveries of one message after which the work queue (a quorum
    /// queue) dead-letters it: bounds a message that crashes the worker.
    /// Fixed when the queue is first declared.
    #[arg(long, env = "ENRICHER_DELIVERY_LIMIT", value_name = "ENRICHER_DELIVERY_LIMIT", default_value_t = defaults::DELIVERY_LIMIT, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub delivery_limit: u32,
}

impl BrokerArgs {
    pub fn settings(&self) -> Result<BrokerSettings, ConfigError> {
        let exchange = self.queue.exchange()?;
        broker_settings(&self.amqp.amqp_url, &self.queue.amqp_queue, self.prefetch).map(|s| {
            BrokerSettings {
                exchange,
                routing_key: self.amqp_routing_key.clone().filter(|k| !k.is_empty()),
                delivery_limit: self.delivery_limit,
                ..s
            }
        })
    }
}

/// A broker's URL and queue, validated, for every command that consumes or
/// declares: no binding, `ENRICHER_DELIVERY_LIMIT`'s default.
pub(crate) fn broker_settings(
    url: &str,
    queue: &str,
    prefetch: u16,
) -> Result<BrokerSettings, ConfigError> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err(invalid("AMQP_URL", "must be an amqp:// or amqps:// URL"));
    }
    if queue.is_empty() || queue.len() > 250 {
        return Err(invalid("AMQP_QUEUE", "must be 1 to 250 characters"));
    }
    Ok(BrokerSettings {
        url: url.to_owned(),
        queue: queue.to_owned(),
        exchange: None,
        routing_key: None,
        prefetch,
        delivery_limit: defaults::DELIVERY_LIMIT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue(exchange: Option<&str>) -> QueueArgs {
        QueueArgs {
            amqp_queue: defaults::AMQP_QUEUE.into(),
            amqp_exchange: exchange.map(str::to_owned),
        }
    }

    #[test]
    fn an_empty_exchange_is_none_and_an_overlong_one_names_the_variable() {
        assert_eq!(queue(None).exchange().ok(), Some(None));
        assert_eq!(queue(Some("")).exchange().ok(), Some(None));
        assert_eq!(
            queue(Some("events")).exchange().ok(),
            Some(Some("events".into()))
        );
        let refused = queue(Some(&"x".repeat(256))).exchange().unwrap_err();
        assert!(refused.to_string().contains("AMQP_EXCHANGE"), "{refused}");
    }
}
