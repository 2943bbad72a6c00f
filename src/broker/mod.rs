//! RabbitMQ: the only part of the crate that speaks AMQP, and the only
//! importer of `lapin`. It declares the worker's topology, hands deliveries
//! out as `Delivery` values that stay unacked until settled, and publishes
//! with publisher confirms. It never decides what a delivery means: parsing,
//! outcomes and the failure policy belong to the worker and the pipeline,
//! which call in here to ack, requeue, dead-letter or retry.
//!
//! Rooms:
//!
//! | file | owns |
//! |---|---|
//! | `consumer` | the worker's `Broker` (a consuming channel and a confirm channel on one connection): connect, consume, cancel, close; `Delivery` with `ack`/`requeue`; `dead_letter` and `retry_later` |
//! | `acks` | `Acks`: the consuming channel's acks, sent in runs (one `multiple` ack for finished deliveries in a row), each waiting at most `ACK_LINGER` |
//! | `ack_runs` | `AckRuns`: which tags one `multiple` ack may cover, as plain unit-tested state (never an unfinished tag, never one twice) |
//! | `topology` | `BrokerSettings`, the names `<queue>.retry` and `<queue>.dead`, their declarations and arguments, and the conflict a queue declared with other arguments raises |
//! | `publisher` | the intake's `Publisher`: a confirm channel kept open by its own reconnect loop; `Destination`, `PublisherState`, `PublishError` |
//! | `confirm` | the one confirmed publish both sides use: only an `ack` without a `basic.return` is a confirm (`NotRequested` is a failure) |
//! | `connection` | opening connections (no automatic recovery) and channels |
//! | `headers` | the `x-…` headers the enricher writes and reads back |
//! | `error` | `BrokerError`: what failed, and whether it is a topology conflict |
//! | `tools` | bench, demo and test helpers on `Broker` (`publish_to_queue`, `publish_many`, `publish_stamped`, `consume_and_ack`, `take`, `delete_topology`); neither the worker nor the intake uses them |
//!
//! The public face is re-exported here, so every path is `crate::broker::…`.

mod ack_runs;
mod acks;
mod confirm;
mod connection;
mod consumer;
mod error;
mod headers;
mod publisher;
mod tools;
mod topology;

pub use consumer::{Broker, Delivery};
pub use error::BrokerError;
pub use headers::{ATTEMPT_HEADER, DIGEST_HEADER, ERROR_HEADER, PUBLISHED_AT_HEADER};
pub use publisher::{Destination, PublishError, Publisher, PublisherSettings, PublisherState};
pub use tools::TakenMessage;
pub use topology::BrokerSettings;
