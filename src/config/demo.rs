//! `DemoArgs` (`demo`): the newcomer's tour on its own queue, so a real
//! one is never touched.

use clap::Args;

use super::{AmqpUrlArgs, StoreArgs, defaults};

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub amqp: AmqpUrlArgs,
    /// The demo's own work queue (purged first), so a real one is untouched.
    #[arg(
        long,
        env = "DEMO_QUEUE",
        value_name = "DEMO_QUEUE",
        default_value = defaults::DEMO_QUEUE
    )]
    pub queue: String,
}
