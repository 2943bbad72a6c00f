//! `EnrichArgs` (`enrich`): sessions to fetch and upsert once.

use clap::Args;

use super::{PbxArgs, StoreArgs};
use crate::session::SessionId;

#[derive(Debug, Args)]
pub struct EnrichArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pbx: PbxArgs,
    /// Session ids (positive integers).
    #[arg(required = true, value_name = "SESSION_ID")]
    pub session_ids: Vec<SessionId>,
    /// Do not apply pending migrations first.
    #[arg(long)]
    pub no_migrate: bool,
}
