//! Opening connections and channels. lapin's automatic recovery stays off:
//! when a connection is lost its owner (the worker's supervision, the
//! intake's `Publisher`) drops it and connects anew with its own backoff.
//! It never retries by itself.

use lapin::options::ConfirmSelectOptions;
use lapin::types::LongString;
use lapin::{Channel, Connection, ConnectionProperties};

use super::error::{BrokerError, failed};

/// Connects to `url`; `name` is what the broker's management UI shows for
/// the connection (scratch connections go unnamed).
pub(super) async fn connect(url: &str, name: Option<&str>) -> Result<Connection, BrokerError> {
    let mut properties = ConnectionProperties::default();
    if let Some(name) = name {
        properties = properties.with_connection_name(LongString::from(name));
    }
    Connection::connect(url, properties)
        .await
        .map_err(failed("connecting to AMQP_URL"))
}

pub(super) async fn open_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    connection
        .create_channel()
        .await
        .map_err(failed("opening a channel"))
}

/// A channel in confirm mode: the broker acks or nacks every publish on it.
pub(super) async fn open_confirm_channel(connection: &Connection) -> Result<Channel, BrokerError> {
    let channel = open_channel(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(failed("enabling publisher confirms"))?;
    Ok(channel)
}
