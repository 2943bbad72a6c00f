//! The `session-enricher` binary: parse and validate configuration (exit 2
//! on a bad value, before any connection), set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;
use session_enricher::app::{Plan, shutdown_on_signal};
use session_enricher::config::{Cli, Command};
use session_enricher::telemetry;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            let rendered = e.render().to_string();
            eprintln!(
                "{}",
                rendered
                    .lines()
                    .next()
                    .unwrap_or("error: invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "warn",
        _ => "info,lapin=warn,sqlx=warn",
    };
    let plan = match Plan::from_command(cli.command) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match plan.execute(shutdown_on_signal()).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "Exiting on error.");
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
