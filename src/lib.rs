//! session-enricher: receives Yeastar's signed webhooks and queues them on
//! RabbitMQ (`intake`), consumes the "new message" events from there,
//! fetches each session with `message_session/get`, and upserts the session,
//! its customer and its pending agents into Postgres. ARCHITECTURE.md has
//! the map.

pub mod app;
pub mod backoff;
pub mod bench;
pub mod broker;
pub mod config;
pub mod decide;
pub mod defaults;
pub mod demo;
pub mod event;
pub mod health;
pub mod intake;
pub mod metrics;
pub mod outcome;
pub mod pbx;
pub mod pipeline;
pub mod processing;
pub mod reconcile;
pub mod report;
pub mod secret;
pub mod session;
pub mod signature;
pub mod simulator;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
