//! `ReconcileArgs` (`reconcile`): the PBX's open sessions, listed, fetched
//! and upserted once; `ReconcilePageArgs`, its page size, shared with the
//! worker's periodic reconciliation (`WorkerArgs`). Validates; never
//! connects.

use clap::Args;

use super::{ConfigError, PbxArgs, StoreArgs, defaults};
use crate::reconcile::ReconcileSettings;

#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub pbx: PbxArgs,
    #[command(flatten)]
    pub page: ReconcilePageArgs,
    /// Do not apply pending migrations first.
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Args)]
pub struct ReconcilePageArgs {
    /// Sessions asked for per message_session/list page when reconciling
    /// (2 to 100; the docs give no maximum, and a PBX that serves fewer is
    /// still paged to the end).
    #[arg(long, env = "ENRICHER_RECONCILE_PAGE_SIZE", value_name = "ENRICHER_RECONCILE_PAGE_SIZE", default_value_t = defaults::RECONCILE_PAGE_SIZE, value_parser = clap::value_parser!(u16).range(2..=100))]
    pub reconcile_page_size: u16,
}

impl ReconcilePageArgs {
    pub fn settings(&self) -> Result<ReconcileSettings, ConfigError> {
        Ok(ReconcileSettings {
            page_size: usize::from(self.reconcile_page_size),
            ..ReconcileSettings::default()
        })
    }
}
