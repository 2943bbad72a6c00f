//! session-enricher: receives Yeastar's signed webhooks and queues them on
//! RabbitMQ (`intake`), consumes the "new message" events from there,
//! fetches each session with `message_session/get`, and upserts the session,
//! its customer and its pending agents into Postgres. ARCHITECTURE.md has
//! the map.

pub mod app;
pub mod backoff;
pub mod broker;
pub mod config;
pub mod demo;
pub mod enricher;
pub mod event;
pub mod intake;
pub mod outcome;
pub mod pbx;
pub mod report;
pub mod secret;
pub mod session;
pub mod signature;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod worker;
