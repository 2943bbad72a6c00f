//! The webhook intake (`session-enricher ingest`): the HTTP server Yeastar's
//! "Webhook Event Push" posts to.
//!
//! **Owns** the path from a signed webhook to a confirmed message on
//! RabbitMQ: check the size, verify the signature over the raw bytes, read
//! the event type, publish the body unchanged, and give each request
//! exactly one `IntakeOutcome`, counted, then answered.
//!
//! **Never** parses an event beyond its type (the worker does), and never
//! answers 200 for a forwarded event before the broker confirmed it.
//!
//! **Public face**: `Intake::start(IntakeSettings, shutdown)` → a running
//! server (`local_addr`, `counts`, `stopped`); `IntakeSettings`,
//! `SignaturePolicy`, `ROUTING_KEY_PREFIX`; `IntakeOutcome`; `IntakeCounts`
//! and `IntakeCountsSnapshot`; `IntakeError`.
//!
//! Rooms:
//! - `settings`: how it runs, and the routing key of an event;
//! - `decide`: a request → one `IntakeOutcome` → a log line and an HTTP
//!   answer;
//! - `counts`: this intake's tally per outcome (the Prometheus series are
//!   declared in `metrics`, fed from `server`);
//! - `server`: listener, router (webhook route, `/healthz`, `/readyz`,
//!   `/metrics`), one task per webhook, graceful shutdown.

mod counts;
mod decide;
mod server;
mod settings;

pub use counts::{IntakeCounts, IntakeCountsSnapshot};
pub use decide::IntakeOutcome;
pub use server::{Intake, IntakeError};
pub use settings::{IntakeSettings, ROUTING_KEY_PREFIX, SignaturePolicy};
