//! The commands: turns validated configuration into running parts (store,
//! PBX client, broker, worker, webhook intake, reconciliation) and runs one
//! command to its exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerSettings;
pub use crate::config::RunPlan;
use crate::config::{Command, ConfigError};
use crate::health::{self, HealthServer, ReadinessChecks};
use crate::intake::{Intake, IntakeSettings};
use crate::outcome::OutcomeCounts;
use crate::pbx::{PbxClient, PbxError, PbxSettings};
use crate::pipeline::AnswerSink;
use crate::processing::BatchResult;
use crate::reconcile::{ReconcileSettings, Reconciler, Run};
use crate::session::SessionId;
use crate::simulator::{Simulator, SimulatorSettings};
use crate::store::{Store, StoreSettings, StoreSink};
use crate::worker::{Worker, WorkerSettings};
use crate::{demo, report};

/// A command with its configuration validated; nothing connected yet.
// One value per process: the size difference between variants is moot.
#[allow(clippy::large_enum_variant)]
pub enum Plan {
    Run(RunPlan),
    Migrate {
        store: StoreSettings,
    },
    Enrich {
        store: StoreSettings,
        pbx: PbxSettings,
        pbx_id: String,
        ids: Vec<SessionId>,
        migrate: bool,
    },
    Reconcile {
        store: StoreSettings,
        pbx: PbxSettings,
        pbx_id: String,
        settings: ReconcileSettings,
        migrate: bool,
    },
    SimulatePbx {
        listen: std::net::SocketAddr,
        settings: SimulatorSettings,
    },
    Demo {
        store: StoreSettings,
        broker: BrokerSettings,
    },
    Bench(crate::bench::BenchSettings),
    Healthcheck {
        addr: SocketAddr,
        path: String,
    },
    Ingest {
        settings: IntakeSettings,
    },
}

impl Plan {
    /// Validates the command's configuration without opening a connection.
    pub fn from_command(command: Command) -> Result<Self, ConfigError> {
        Ok(match command {
            Command::Run(args) => Plan::Run(args.plan()?),
            Command::Migrate(store) => Plan::Migrate {
                store: store.settings()?,
            },
            Command::Enrich(args) => Plan::Enrich {
                store: args.store.settings()?,
                pbx: args.pbx.settings()?,
                pbx_id: args.pbx.yeastar_pbx_id.clone(),
                ids: args.session_ids,
                migrate: !args.no_migrate,
            },
            Command::Reconcile(args) => Plan::Reconcile {
                store: args.store.settings()?,
                pbx: args.pbx.settings()?,
                pbx_id: args.pbx.yeastar_pbx_id.clone(),
                settings: args.page.settings()?,
                migrate: !args.no_migrate,
            },
            Command::SimulatePbx(args) => {
                if !(0.0..=1.0).contains(&args.error_rate) {
                    return Err(ConfigError {
                        variable: "SIMULATOR_ERROR_RATE",
                        problem: "must be between 0 and 1".into(),
                    });
                }
                Plan::SimulatePbx {
                    listen: args.listen,
                    settings: SimulatorSettings {
                        client_id: args.client_id,
                        client_secret: args.client_secret,
                        latency: std::time::Duration::from_millis(args.latency_ms),
                        token_ttl: std::time::Duration::from_secs(args.token_ttl),
                        error_rate: args.error_rate,
                        listed_sessions: args.listed_sessions,
                        ..SimulatorSettings::default()
                    },
                }
            }
            Command::Bench(args) => Plan::Bench(crate::bench::BenchSettings::from_args(args)?),
            Command::Demo(args) => Plan::Demo {
                store: args.store.settings()?,
                broker: crate::config::broker_settings(&args.amqp.amqp_url, &args.queue, 50)?,
            },
            Command::Healthcheck(args) => Plan::Healthcheck {
                addr: args.http.http_addr,
                path: args.path,
            },
            Command::Ingest(args) => Plan::Ingest {
                settings: args.settings()?,
            },
        })
    }

    /// Runs the command until it ends or `shutdown` is cancelled.
    pub async fn execute(self, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
        match self {
            Plan::Run(plan) => run(plan, shutdown).await,
            Plan::Migrate { store } => {
                let store = Store::open(&store, true)
                    .await
                    .context("opening the database")?;
                store.close().await;
                println!("Migrations applied.");
                Ok(ExitCode::SUCCESS)
            }
            Plan::Enrich {
                store,
                pbx,
                pbx_id,
                ids,
                migrate,
            } => enrich(store, pbx, pbx_id, ids, migrate).await,
            Plan::Reconcile {
                store,
                pbx,
                pbx_id,
                settings,
                migrate,
            } => reconcile(store, pbx, pbx_id, settings, migrate, shutdown).await,
            Plan::SimulatePbx { listen, settings } => {
                let simulator = Simulator::start(listen, settings)
                    .await
                    .with_context(|| format!("listening on {listen}"))?;
                println!(
                    "PBX simulator listening: YEASTAR_BASE_URL={}",
                    simulator.base_url()
                );
                shutdown.cancelled().await;
                simulator.stop();
                Ok(ExitCode::SUCCESS)
            }
            Plan::Demo { store, broker } => demo::run(store, broker).await,
            Plan::Bench(settings) => crate::bench::run(settings).await,
            Plan::Healthcheck { addr, path } => {
                match health::probe(addr, &path, Duration::from_secs(3)).await {
                    Ok(200) => Ok(ExitCode::SUCCESS),
                    Ok(status) => {
                        eprintln!("{path}: HTTP {status}");
                        Ok(ExitCode::FAILURE)
                    }
                    Err(e) => {
                        eprintln!("{path}: {e}");
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
            Plan::Ingest { settings } => {
                let intake = Intake::start(settings, shutdown).await?;
                intake.stopped().await?;
                tracing::info!("Stopped.");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// The worker: the health endpoint first (so probes answer while starting),
/// then the database, a PBX login (so refused credentials show in `/readyz`
/// and the log before the first event), the broker, and the consume loop
/// until `shutdown`.
async fn run(plan: RunPlan, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    let RunPlan {
        store,
        broker,
        pbx,
        worker,
        http_addr,
        migrate,
    } = plan;
    let store = Store::connect_lazy(&store).context("DATABASE_URL")?;
    let pbx = Arc::new(PbxClient::new(pbx).context("setting up the PBX client")?);
    let worker = Worker::new(
        broker,
        Arc::clone(&pbx),
        store.clone(),
        worker,
        Arc::new(OutcomeCounts::default()),
    );
    let health = HealthServer::start(
        http_addr,
        ReadinessChecks {
            worker: worker.status(),
            pbx: pbx.status(),
            store: store.clone(),
        },
    )
    .await
    .with_context(|| format!("ENRICHER_HTTP_ADDR: listening on {http_addr}"))?;
    let result = async {
        if migrate {
            store.migrate().await.context("applying migrations")?;
        }
        log_in_at_start(&pbx).await;
        worker.run(shutdown).await?;
        anyhow::Ok(())
    }
    .await;
    health.stop().await;
    result?;
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

/// Logs in to the PBX once before consuming. A refusal is not fatal: a
/// restart loop would spend the PBX's 5 tries before it blocks this IP.
/// The worker starts anyway, holds what it cannot process, and `/readyz`
/// says why; the token cache's login guard spaces any further tries.
async fn log_in_at_start(pbx: &PbxClient) {
    match pbx.log_in().await {
        Ok(()) => tracing::info!("Logged in to the PBX."),
        Err(e @ PbxError::Configuration { .. }) => {
            tracing::error!(error = %e, "The PBX refused this worker's configuration; starting anyway, not ready.");
        }
        Err(e) => {
            tracing::warn!(error = %e, "Could not log in to the PBX yet; the first event will try again.");
        }
    }
}

async fn enrich(
    store: StoreSettings,
    pbx: PbxSettings,
    pbx_id: String,
    ids: Vec<SessionId>,
    migrate: bool,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(&store, migrate)
        .await
        .context("opening the database")?;
    let pbx = PbxClient::new(pbx).context("setting up the PBX client")?;
    // The worker's write path, with a batch of one. A waiting session keeps
    // (or gets) a refresh due time: with none, this write would stop the
    // workers refreshing it (a due time they do not use is harmless).
    let sink = StoreSink::new(
        store.clone(),
        pbx_id.clone(),
        WorkerSettings::default().store_retry,
    )
    .with_refresh_interval(Some(Duration::from_millis(
        crate::defaults::REFRESH_INTERVAL_MS,
    )));
    let mut failed = 0;
    for &id in &ids {
        let written = match pbx.answer(id).await {
            Ok(answer) => match sink.write(std::slice::from_ref(&answer)).await.pop() {
                Some(written) => written.map_err(|e| e.to_string()),
                None => Err("the store gave no result".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        match written {
            Ok(BatchResult::Written) => println!("session {id}: written"),
            Ok(BatchResult::Unchanged) => println!("session {id}: unchanged (as stored)"),
            Ok(BatchResult::Stale | BatchResult::Superseded) => {
                println!("session {id}: unchanged (a newer answer is stored)");
            }
            Ok(BatchResult::Missing { marked }) => println!(
                "session {id}: not found on the PBX{}",
                if marked {
                    " (stored row marked missing)"
                } else {
                    ""
                }
            ),
            Err(e) => {
                failed += 1;
                println!("session {id}: FAILED: {e}");
            }
        }
    }
    pbx.revoke_token().await;
    let raw_ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let snapshot = store
        .snapshot(&pbx_id, &raw_ids)
        .await
        .context("reading back the rows")?;
    println!("\n{}", report::snapshot(&snapshot));
    store.close().await;
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `reconcile`: one run now, under the PBX's lock; prints what it did.
/// Exit 0 only if it ran and was complete.
async fn reconcile(
    store: StoreSettings,
    pbx: PbxSettings,
    pbx_id: String,
    settings: ReconcileSettings,
    migrate: bool,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let store = Store::open(&store, migrate)
        .await
        .context("opening the database")?;
    let pbx = Arc::new(PbxClient::new(pbx).context("setting up the PBX client")?);
    let reconciler = Reconciler::new(Arc::clone(&pbx), store.clone(), pbx_id.clone(), settings);
    let run = reconciler.run_now(&shutdown).await;
    pbx.revoke_token().await;
    store.close().await;
    match run.with_context(|| format!("reconciling PBX `{pbx_id}`"))? {
        Run::Done(report) => {
            print!("Reconciled PBX `{pbx_id}`: {report}");
            Ok(if report.is_complete() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Run::Busy | Run::NotDue => {
            println!("PBX `{pbx_id}` is being reconciled by another process now; nothing done.");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!(error = %e, "SIGTERM handler unavailable; only Ctrl-C stops gracefully.");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("Shutdown requested.");
        cancel.cancel();
    });
    token
}
