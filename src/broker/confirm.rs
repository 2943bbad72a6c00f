//! The one confirmed publish, used by the worker's `Broker` and the intake's
//! `Publisher` alike: send on a confirm channel, wait for the broker's word,
//! and say what it was. Only an `ack` without a `basic.return` is a confirm;
//! a return, a nack, or no confirm at all (`NotRequested`: the channel is
//! not in confirm mode) is a failure for every caller. It never retries,
//! times out or reconnects: the callers decide that.

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::error::{BrokerError, failed, refused};

/// Why a publish is not confirmed: either way the message may not be queued.
#[derive(Debug)]
pub(super) enum Unconfirmed {
    /// The message could not be sent: the channel or the connection is gone.
    Sending(lapin::Error),
    /// The channel or the connection failed before the confirm came.
    Waiting(lapin::Error),
    /// The broker returned the message (published `mandatory`): nothing is
    /// bound to its routing key.
    Returned,
    /// The broker nacked the message.
    Nacked,
    /// lapin says no confirm was asked for (the channel is not in confirm
    /// mode), so nothing says the broker has the message.
    NotRequested,
}

/// Persistent, `application/json`: how a body is published when it has no
/// properties of its own.
pub(super) fn persistent_json() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
}

/// Publishes `mandatory` (so an unroutable message comes back) and waits for
/// the broker's confirm.
pub(super) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), Unconfirmed> {
    let pending = send(channel, exchange, routing_key, true, body, properties).await?;
    confirmation(pending).await
}

/// Sends a message without waiting for its confirm, for pipelining; settle
/// each with `confirmation`.
pub(super) async fn send(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, Unconfirmed> {
    channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory,
                ..Default::default()
            },
            body,
            properties,
        )
        .await
        .map_err(Unconfirmed::Sending)
}

/// Waits for a sent message's confirm.
pub(super) async fn confirmation(pending: PublisherConfirm) -> Result<(), Unconfirmed> {
    verdict(pending.await.map_err(Unconfirmed::Waiting)?)
}

fn verdict(confirmation: Confirmation) -> Result<(), Unconfirmed> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(Unconfirmed::Returned),
        Confirmation::Nack(_) => Err(Unconfirmed::Nacked),
        Confirmation::NotRequested => Err(Unconfirmed::NotRequested),
    }
}

impl Unconfirmed {
    /// As a `BrokerError`, for a publish through the default exchange to
    /// `queue` (the worker's dead letters and retries, and the tools).
    pub(super) fn for_queue(self, queue: &str) -> BrokerError {
        match self {
            Self::Sending(e) => failed("publishing")(e),
            Self::Waiting(e) => failed("waiting for the publisher confirm")(e),
            Self::Returned => refused(
                "publishing",
                format!("queue `{queue}` does not exist (message returned)"),
            ),
            Self::Nacked => refused("publishing", "the broker refused the message (nack)".into()),
            Self::NotRequested => refused(
                "publishing",
                "the channel is not in confirm mode (no confirm)".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_without_a_return_is_a_confirm() {
        assert!(verdict(Confirmation::Ack(None)).is_ok());
    }

    #[test]
    fn a_nack_is_not_a_confirm() {
        assert!(matches!(
            verdict(Confirmation::Nack(None)),
            Err(Unconfirmed::Nacked)
        ));
    }

    #[test]
    fn a_publish_without_a_requested_confirm_is_not_a_confirm() {
        assert!(matches!(
            verdict(Confirmation::NotRequested),
            Err(Unconfirmed::NotRequested)
        ));
        assert!(
            Unconfirmed::NotRequested
                .for_queue("events")
                .to_string()
                .contains("not in confirm mode")
        );
    }
}
