//! Test harness: each `TestEnv` has its own database, its own queue names and
//! its own PBX simulator, so tests run in parallel against the local
//! RabbitMQ and Postgres (or, where those are not running and Docker is,
//! containers started with testcontainers). Waits are for a condition with a
//! deadline. Tests import everything from here; the rooms:
//!
//! | file | owns |
//! |---|---|
//! | `services` | finding Postgres and RabbitMQ (env, local, testcontainers); URL surgery |
//! | `env` | `TestEnv`: one test's database, queues and simulator; cleanup |
//! | `settings` | each part's settings for this test; service URLs through a `Proxy` |
//! | `worker` | the worker under test: `WorkerSetup`, `spawn`, `RunningWorker`, the binary |
//! | `queues` | publishing, reading and counting queues; dead letters |
//! | `db` | row reads shared by tests |
//! | `intake` | the intake under test and its HTTP client: `RunningIntake`, `Answer` |
//! | `proxy` | `Proxy`: one TCP proxy to cut, stall or hold a link to RabbitMQ, Postgres or the PBX |
//! | `wait` | `wait_until`, `wait_for`: poll with a deadline |
//! | `fixtures` | `PBX`, `WEBHOOK_SECRET`, `new_message_event` |
//!
//! The harness never changes the shared services beyond this test's own
//! database and queues.

mod db;
mod env;
mod fixtures;
mod intake;
mod proxy;
mod queues;
mod services;
mod settings;
mod wait;
mod worker;

pub use env::TestEnv;
pub use fixtures::{PBX, new_message_event};
pub use intake::RunningIntake;
pub use proxy::Proxy;
pub use queues::QueuedMessage;
pub use services::amqp_url;
pub use wait::{wait_for, wait_until};
pub use worker::{RunningWorker, WorkerSetup};
