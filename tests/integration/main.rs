//! Integration tests against the local RabbitMQ and Postgres, with the PBX
//! played by the in-process simulator. See `helpers` for the isolation rules.

mod cli;
mod enrichment;
mod events;
mod helpers;
mod intake;
mod pbx_client;
mod reliability;
