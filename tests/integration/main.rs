//! Integration tests against the local RabbitMQ and Postgres, with the PBX
//! played by the in-process simulator. See `helpers` for the isolation rules.

mod acks;
mod chaos;
mod cli;
mod deployment;
mod enrichment;
mod events;
mod failures;
mod helpers;
mod intake;
mod live_state;
mod operations;
mod ordering;
mod pbx_client;
mod pbx_list;
mod pbx_query;
mod pipeline;
mod reconcile;
mod refresh;
mod reliability;
