//! The intake's side: `Publisher`, one confirm channel kept open by a
//! background task (`supervise`) that reconnects with backoff whenever the
//! connection is lost, and `publish`, which answers only once the broker
//! confirmed or refused. It never declares anything: the worker owns the
//! work queue's topology, and the intake only checks its destination exists.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::confirm::{self, Unconfirmed, persistent_json};
use super::connection::{connect, open_confirm_channel};
use super::error::{BrokerError, failed, refused};
use crate::backoff::Backoff;

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
        let connection = connect(&settings.url, Some("session-enricher ingest")).await?;
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
        let channel = open_confirm_channel(connection).await?;
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
        let timeout = self.shared.settings.confirm_timeout;
        let confirmed = tokio::time::timeout(
            timeout,
            confirm::publish_confirmed(
                &link.channel,
                exchange,
                routing_key,
                body,
                persistent_json(),
            ),
        )
        .await;
        // The link may be broken: have the supervisor look now.
        let unavailable = |why: String| {
            self.shared.recheck.notify_one();
            Err(PublishError::Unavailable(why))
        };
        match confirmed {
            Ok(Ok(())) => Ok(()),
            Ok(Err(Unconfirmed::Returned)) => Err(PublishError::Unroutable {
                routing_key: routing_key.to_owned(),
            }),
            Ok(Err(Unconfirmed::Nacked)) => Err(PublishError::Unavailable(
                "the broker nacked the message".into(),
            )),
            // Cannot happen on a confirm channel; never taken as a confirm.
            Ok(Err(Unconfirmed::NotRequested)) => {
                unavailable("the channel is not in confirm mode".into())
            }
            Ok(Err(Unconfirmed::Sending(e) | Unconfirmed::Waiting(e))) => {
                unavailable(format!("publishing: {e}"))
            }
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
