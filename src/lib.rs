//! session-enricher: consumes Yeastar "new message" events from RabbitMQ,
//! fetches each session with `message_session/get`, and upserts the session,
//! its customer and its pending agents into Postgres. ARCHITECTURE.md has
//! the map.

pub mod app;
pub mod backoff;
pub mod bench;
pub mod broker;
pub mod config;
pub mod demo;
pub mod enricher;
pub mod event;
pub mod health;
pub mod metrics;
pub mod outcome;
pub mod pbx;
pub mod pipeline;
pub mod policy;
pub mod report;
pub mod secret;
pub mod session;
pub mod simulator;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
