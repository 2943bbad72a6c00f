//! `bench`: the benchmark anyone can run on the local RabbitMQ and Postgres,
//! with the PBX simulator in-process and the worker as a user runs it:
//! `session-enricher run` with its defaults (or the flags given after
//! `--`), as a child process, so its peak RSS is its own. On fresh queues
//! and a fresh database: the broker's ceilings on the worker's queue type,
//! the worker draining the interleaved and the back-to-back workload, and
//! publish→commit latency at a steady rate. Prints the settings used, a
//! table, and issue 10's targets with pass or fail.
//!
//! Rooms: `workload` (the order of events), `child` (`WorkerProcess`: start,
//! readiness, settled count, peak RSS, SIGTERM), `figures` (what a run
//! measured, the ratios and the targets).

mod child;
mod figures;
mod workload;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::config::{BenchArgs, Cli, Command, ConfigError, RunPlan, defaults};
use crate::outcome::{LagHistogram, OutcomeCounts};
use crate::pbx::PbxClient;
use crate::simulator::{Simulator, SimulatorSettings, SimulatorStats};
use crate::store::Store;
use crate::worker::Worker;

use child::WorkerProcess;
use figures::{Ceiling, Drain, Latency};
use workload::Workload;

/// The database the bench (re)creates on the `DATABASE_URL` server.
const DATABASE: &str = "session_enricher_bench";
/// How long a worker may take to become ready, to settle its next event,
/// and to exit after SIGTERM.
const STARTUP: Duration = Duration::from_secs(60);
const STALL: Duration = Duration::from_secs(120);
const EXIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Postgres server (the bench creates its own database there).
    pub database_url: String,
    pub amqp_url: String,
    /// Events, sessions and sessions active at once, in each workload.
    pub events: u64,
    pub sessions: u64,
    pub active: u64,
    /// Steady rate and duration of the latency run.
    pub rate: u64,
    pub seconds: u64,
    /// Waiting sessions in the refresh run, and how long it counts calls
    /// (zero: no refresh run).
    pub refresh_sessions: u64,
    pub refresh_seconds: u64,
    /// The simulator's latency per PBX call.
    pub latency: Duration,
    /// Flags for the worker's `run`, after the bench's own (none: its
    /// defaults).
    pub worker_flags: Vec<String>,
    /// The worker binary of the drains (`None`: this one).
    pub worker_bin: Option<std::path::PathBuf>,
}

impl BenchSettings {
    /// Validates the arguments, the worker's flags included, before any
    /// connection opens.
    pub fn from_args(args: BenchArgs) -> Result<Self, ConfigError> {
        let settings = Self {
            database_url: args.store.settings()?.url,
            amqp_url: args.amqp.amqp_url,
            events: args.events.max(1),
            sessions: args.sessions.max(1),
            active: args.active.max(1),
            rate: args.rate.max(1),
            seconds: args.seconds.max(1),
            refresh_sessions: args.refresh_sessions.max(1),
            refresh_seconds: args.refresh_seconds,
            latency: Duration::from_millis(args.latency_ms),
            worker_flags: args.worker_flags,
            worker_bin: args.worker_bin,
        };
        let wiring = Wiring {
            database_url: settings.database_url.clone(),
            amqp_url: settings.amqp_url.clone(),
            queue: "session-enricher.bench.check".into(),
            pbx_base_url: "http://127.0.0.1:1".into(),
            pbx_id: "bench".into(),
            http_addr: ([127, 0, 0, 1], 0).into(),
        };
        worker_plan(&wiring.args(&settings.worker_flags))?;
        Ok(settings)
    }
}

/// Where a bench worker connects: the bench's database, a scratch queue,
/// the in-process simulator, a `pbx` value per run, an operations port of
/// its own. Everything else is the worker's own default or a flag.
struct Wiring {
    database_url: String,
    amqp_url: String,
    queue: String,
    pbx_base_url: String,
    pbx_id: String,
    http_addr: SocketAddr,
}

impl Wiring {
    /// The `run` command line: the wiring, then `flags`.
    fn args(&self, flags: &[String]) -> Vec<String> {
        let wiring = [
            ("--database-url", self.database_url.clone()),
            ("--amqp-url", self.amqp_url.clone()),
            ("--amqp-queue", self.queue.clone()),
            ("--yeastar-base-url", self.pbx_base_url.clone()),
            ("--yeastar-client-id", defaults::SIMULATOR_CLIENT_ID.into()),
            // The simulator's public default, not a secret.
            (
                "--yeastar-client-secret",
                defaults::SIMULATOR_CLIENT_SECRET.into(),
            ),
            ("--yeastar-pbx-id", self.pbx_id.clone()),
            ("--http-addr", self.http_addr.to_string()),
        ];
        std::iter::once("run".to_owned())
            .chain(
                wiring
                    .into_iter()
                    .flat_map(|(flag, value)| [flag.into(), value]),
            )
            .chain(flags.iter().cloned())
            .collect()
    }
}

/// What `session-enricher <args>` (a `run` command line) runs with: parsed
/// and validated exactly as the child will, flags first, then the
/// environment, then the defaults. The scratch queue is never bound to an
/// exchange (the child does not inherit `AMQP_EXCHANGE`).
fn worker_plan(args: &[String]) -> Result<RunPlan, ConfigError> {
    let flags_refused = |problem: String| ConfigError {
        variable: "the worker's flags (after `bench --`)",
        problem,
    };
    let cli = Cli::try_parse_from(
        std::iter::once("session-enricher").chain(args.iter().map(String::as_str)),
    )
    .map_err(|e| {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or("invalid");
        flags_refused(first.trim_start_matches("error: ").to_owned())
    })?;
    let Command::Run(run) = cli.command else {
        return Err(flags_refused("not a `run` command line".into()));
    };
    let mut plan = run.plan()?;
    plan.broker.exchange = None;
    plan.broker.routing_key = None;
    Ok(plan)
}

/// The variables `run` reads that are set in this environment and not
/// given by the bench's wiring: they apply to the worker as they would to
/// `run`.
fn inherited_variables() -> Vec<String> {
    let cli = Cli::command();
    let Some(run) = cli.find_subcommand("run") else {
        return Vec::new();
    };
    let wired = Wiring {
        database_url: String::new(),
        amqp_url: String::new(),
        queue: String::new(),
        pbx_base_url: String::new(),
        pbx_id: String::new(),
        http_addr: ([127, 0, 0, 1], 0).into(),
    }
    .args(&[]);
    run.get_arguments()
        .filter(|arg| {
            arg.get_long()
                .is_none_or(|long| !wired.contains(&format!("--{long}")))
        })
        .filter_map(|arg| arg.get_env())
        .filter_map(|variable| variable.to_str())
        .filter(|variable| !child::NOT_INHERITED.contains(variable))
        .filter(|variable| std::env::var_os(variable).is_some())
        .map(str::to_owned)
        .collect()
}

pub async fn run(settings: BenchSettings) -> anyhow::Result<ExitCode> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let database_url = Store::recreate_database(&settings.database_url, DATABASE)
        .await
        .context("creating the bench database")?;
    let simulator = Simulator::start(
        ([127, 0, 0, 1], 0).into(),
        SimulatorSettings {
            latency: settings.latency,
            ..SimulatorSettings::default()
        },
    )
    .await?;
    let bench = Bench {
        settings: &settings,
        run_id,
        database_url,
        simulator,
    };
    let plan = bench.plan("settings")?;
    {
        let store = Store::connect_lazy(&plan.store)?;
        store.migrate().await?;
        store.close().await;
    }
    let interleaved = Workload::interleaved(settings.events, settings.sessions, settings.active);
    let back_to_back = Workload::back_to_back(settings.events, settings.sessions);
    bench.print_settings(&plan);

    // 1. The broker alone, on the worker's queue type and prefetch.
    let ceilings = [
        bench.ceiling(&interleaved, AckMode::EachMessage).await?,
        bench.ceiling(&interleaved, AckMode::Runs).await?,
    ];
    // 2. The worker draining each workload, preloaded.
    let drains = [
        bench
            .drain(
                &format!("interleaved, {} at once", settings.active),
                "interleaved",
                &interleaved,
            )
            .await?,
        bench
            .drain("back to back", "back-to-back", &back_to_back)
            .await?,
    ];
    // 3. publish→commit at a steady rate.
    let latency = bench.latency().await?;
    // 4. What keeping waiting sessions fresh costs the PBX, with no events.
    let refresh = if settings.refresh_seconds > 0 {
        Some(bench.refresh().await?)
    } else {
        None
    };
    bench.simulator.stop();

    let best = ceilings
        .iter()
        .max_by(|a, b| a.rate().total_cmp(&b.rate()))
        .unwrap_or(&ceilings[0]);
    print_table(&ceilings, &drains, best);
    println!(
        "\nlatency at {} events/s for {} s ({} events): publish→commit p50 {} ms, p99 {} ms, max {} ms; \
         the broker alone, publish→confirm: p50 {} ms, p99 {} ms",
        settings.rate,
        settings.seconds,
        latency.count,
        latency.p50,
        latency.p99,
        latency.max,
        latency.confirm_p50,
        latency.confirm_p99
    );
    if let Some((calls, ids)) = refresh {
        println!(
            "refresh: {} waiting sessions, no events, for {} s: {:.0} PBX calls/min, {:.0} sessions asked for/min",
            settings.refresh_sessions, settings.refresh_seconds, calls, ids
        );
    }
    for drain in drains.iter().filter(|d| !d.other_outcomes.is_empty()) {
        println!(
            "{}: outcomes besides enriched: {}",
            drain.name, drain.other_outcomes
        );
    }
    println!();
    let targets = figures::targets(&drains[0], best, &latency, settings.latency);
    for target in &targets {
        let verdict = if target.met { "MET " } else { "MISS" };
        println!("{verdict} {}: {}", target.what, target.measured);
    }
    Ok(if targets.iter().all(|t| t.met) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_table(ceilings: &[Ceiling], drains: &[Drain], best: &Ceiling) {
    let share = |rate: f64| format!("{:.1}%", 100.0 * rate / best.rate().max(f64::MIN_POSITIVE));
    let mut rows: Vec<Vec<String>> = ceilings
        .iter()
        .map(|c| {
            let mut row = vec![
                format!("broker ceiling, {}", c.name),
                c.events.to_string(),
                format!("{:.2}", c.seconds),
                format!("{:.0}", c.rate()),
                share(c.rate()),
            ];
            row.extend(std::iter::repeat_n("-".to_owned(), 6));
            row
        })
        .collect();
    rows.extend(drains.iter().map(|d| {
        vec![
            format!("worker, {}", d.name),
            d.events.to_string(),
            format!("{:.2}", d.seconds),
            format!("{:.0}", d.rate()),
            share(d.rate()),
            d.pbx_calls.to_string(),
            d.ids_per_call()
                .map_or("-".into(), |ids| format!("{ids:.2}")),
            format!("{:.2}", d.calls_per_session()),
            d.distinct_sessions.to_string(),
            d.sessions_stored.to_string(),
            d.peak_rss_mib()
                .map_or("unknown".into(), |mib| format!("{mib:.1} MiB")),
        ]
    }));
    println!();
    print!(
        "{}",
        crate::report::table(
            &[
                "run",
                "events",
                "seconds",
                "events/s",
                "of the ceiling",
                "PBX calls",
                "ids per call",
                "calls per session",
                "distinct sessions",
                "sessions stored",
                "worker peak RSS",
            ],
            &rows,
        )
    );
}

/// How the ceiling run acknowledges.
#[derive(Clone, Copy, Debug)]
enum AckMode {
    /// One `basic.ack` per message, through the worker's own consume path.
    EachMessage,
    /// One `basic.ack` with `multiple` per run of arrived deliveries.
    Runs,
}

/// One bench invocation: its settings, scratch names, database and
/// simulator.
struct Bench<'a> {
    settings: &'a BenchSettings,
    run_id: String,
    database_url: String,
    simulator: Simulator,
}

impl Bench<'_> {
    fn wiring(&self, name: &str) -> anyhow::Result<Wiring> {
        Ok(Wiring {
            database_url: self.database_url.clone(),
            amqp_url: self.settings.amqp_url.clone(),
            queue: format!("session-enricher.bench.{}.{name}", self.run_id),
            pbx_base_url: self.simulator.base_url(),
            pbx_id: format!("bench-{name}"),
            http_addr: free_local_port().context("finding a free port for the worker")?,
        })
    }

    /// The worker's settings for run `name`: those of its child process.
    fn plan(&self, name: &str) -> anyhow::Result<RunPlan> {
        Ok(worker_plan(
            &self.wiring(name)?.args(&self.settings.worker_flags),
        )?)
    }

    fn print_settings(&self, plan: &RunPlan) {
        let s = self.settings;
        println!(
            "session-enricher bench: {} events over {} sessions ({} active at once when interleaved), \
             PBX latency {} ms",
            s.events,
            s.sessions,
            s.active,
            s.latency.as_millis()
        );
        if s.worker_flags.is_empty() {
            println!("worker: `session-enricher run` with its defaults (no flags after `--`)");
        } else {
            println!(
                "worker: `session-enricher run` with {}",
                s.worker_flags.join(" ")
            );
        }
        let inherited = inherited_variables();
        if !inherited.is_empty() {
            println!("  from the environment: {}", inherited.join(", "));
        }
        println!(
            "  prefetch {}, delivery limit {}",
            plan.broker.prefetch, plan.broker.delivery_limit
        );
        println!("  {:?}", plan.pbx);
        println!("  {:?}", plan.worker.pipeline);
    }

    /// Preloads the workload into a queue declared as the worker declares
    /// it, then consumes and acks it with the worker's prefetch.
    async fn ceiling(&self, workload: &Workload, acks: AckMode) -> anyhow::Result<Ceiling> {
        let (name, suffix) = match acks {
            AckMode::EachMessage => ("one ack per message", "ceiling-each"),
            AckMode::Runs => ("acks with multiple", "ceiling-runs"),
        };
        let broker_settings = self.plan(suffix)?.broker;
        let broker = Broker::connect(broker_settings.clone()).await?;
        broker
            .publish_many(&broker_settings.queue, workload.bodies(), 1000)
            .await?;
        let events = workload.events();
        let started = Instant::now();
        match acks {
            AckMode::EachMessage => broker.consume_and_ack("bench-ceiling", events).await?,
            AckMode::Runs => {
                broker
                    .consume_and_ack_in_runs(
                        &broker_settings.queue,
                        broker_settings.prefetch,
                        "bench-ceiling",
                        events,
                    )
                    .await?
            }
        }
        let ceiling = Ceiling {
            name,
            events,
            seconds: started.elapsed().as_secs_f64(),
        };
        broker.close().await;
        Broker::delete_topology(&broker_settings).await?;
        println!("  ceiling ({name}) done: {:.0} events/s", ceiling.rate());
        Ok(ceiling)
    }

    /// Preloads the workload, then runs the worker as a child process until
    /// it has settled every event; stops it with SIGTERM.
    async fn drain(&self, name: &str, slug: &str, workload: &Workload) -> anyhow::Result<Drain> {
        let wiring = self.wiring(slug)?;
        let args = wiring.args(&self.settings.worker_flags);
        let plan = worker_plan(&args)?;
        let publisher = Broker::connect(plan.broker.clone()).await?;
        publisher
            .publish_many(&plan.broker.queue, workload.bodies(), 1000)
            .await?;
        let before = self.simulator.stats();
        let log =
            std::env::temp_dir().join(format!("session-enricher-bench-{}-{slug}.log", self.run_id));
        let mut worker = WorkerProcess::start(
            self.settings.worker_bin.as_deref(),
            &args,
            wiring.http_addr,
            &log,
        )?;
        let started = worker.ready(STARTUP).await?;
        let (finished, outcomes) = worker.settled(workload.events(), STALL).await?;
        let peak_rss_kib = worker.peak_rss_kib();
        worker.stop(EXIT).await?;
        let used = pbx_use(before, self.simulator.stats());
        let store = Store::connect_lazy(&plan.store)?;
        let (sessions_stored, _, _) = store.row_counts(&plan.worker.pbx_id).await?;
        store.close().await;
        publisher.close().await;
        Broker::delete_topology(&plan.broker).await?;
        let drain = Drain {
            name: name.to_owned(),
            events: workload.events(),
            distinct_sessions: workload.distinct_sessions(),
            seconds: finished.duration_since(started).as_secs_f64(),
            pbx_calls: used.0,
            ids_requested: used.1,
            sessions_stored,
            peak_rss_kib,
            other_outcomes: outcomes.others(),
        };
        println!("  worker ({name}) done: {:.0} events/s", drain.rate());
        Ok(drain)
    }

    /// The refresh run: one event each for `refresh_sessions` sessions that
    /// wait in a queue (pending agents), drained by the child worker; then,
    /// with no more events, its PBX calls over `refresh_seconds`. Returns
    /// calls and session ids asked for, per minute.
    async fn refresh(&self) -> anyhow::Result<(f64, f64)> {
        let wiring = self.wiring("refresh")?;
        let args = wiring.args(&self.settings.worker_flags);
        let plan = worker_plan(&args)?;
        let publisher = Broker::connect(plan.broker.clone()).await?;
        // Every third synthetic session waits in a queue.
        let waiting = (1..=self.settings.refresh_sessions).map(|n| workload::body(n * 3, n));
        publisher
            .publish_many(&plan.broker.queue, waiting, 1000)
            .await?;
        let log = std::env::temp_dir().join(format!(
            "session-enricher-bench-{}-refresh.log",
            self.run_id
        ));
        let mut worker = WorkerProcess::start(
            self.settings.worker_bin.as_deref(),
            &args,
            wiring.http_addr,
            &log,
        )?;
        worker.ready(STARTUP).await?;
        worker
            .settled(self.settings.refresh_sessions, STALL)
            .await?;
        let before = self.simulator.stats();
        tokio::time::sleep(Duration::from_secs(self.settings.refresh_seconds)).await;
        let (calls, ids) = pbx_use(before, self.simulator.stats());
        worker.stop(EXIT).await?;
        publisher.close().await;
        Broker::delete_topology(&plan.broker).await?;
        let per_minute = |n: u64| n as f64 * 60.0 / self.settings.refresh_seconds as f64;
        println!("  refresh done");
        Ok((per_minute(calls), per_minute(ids)))
    }

    /// Publishes `rate` events a second (each a fresh session, stamped) for
    /// `seconds` to a running worker; returns the publish→commit lag and,
    /// for comparison, the broker's own publish→confirm latency. The worker
    /// runs in this process, with the same settings as the child (its lag
    /// histogram has millisecond buckets; `/metrics`' start at 50 ms).
    async fn latency(&self) -> anyhow::Result<Latency> {
        let RunPlan {
            store,
            broker,
            pbx,
            worker,
            ..
        } = self.plan("latency")?;
        let publisher = Arc::new(Broker::connect(broker.clone()).await?);
        let counts = Arc::new(OutcomeCounts::default());
        let worker = Worker::new(
            broker.clone(),
            Arc::new(PbxClient::new(pbx)?),
            Store::connect_lazy(&store)?,
            worker,
            Arc::clone(&counts),
        );
        let status = worker.status();
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        let deadline = Instant::now() + STARTUP;
        while !status.is_consuming() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the latency run's worker did not start consuming within {STARTUP:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Sessions far from the drains' ids: every event a fresh session.
        let next = Arc::new(AtomicU64::new(5_000_000));
        let (rate, seconds) = (self.settings.rate, self.settings.seconds);
        let total = rate * seconds;
        let ticks_per_second = 100;
        let per_tick = (rate / ticks_per_second).max(1);
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / ticks_per_second));
        let mut published = 0;
        let confirms = Arc::new(LagHistogram::default());
        while published < total {
            ticker.tick().await;
            let sends = (0..per_tick.min(total - published)).map(|_| {
                let publisher = Arc::clone(&publisher);
                let queue = broker.queue.clone();
                let session = next.fetch_add(1, Ordering::Relaxed);
                let confirms = Arc::clone(&confirms);
                async move {
                    let body = workload::body(session, session);
                    let sent = Instant::now();
                    let published = publisher.publish_stamped(&queue, &body).await;
                    confirms.record(sent.elapsed().as_millis() as u64);
                    published
                }
            });
            for sent in futures_util::future::join_all(sends).await {
                sent?;
            }
            published += per_tick.min(total - published);
        }
        let mut progress = (0, Instant::now());
        loop {
            let finished = counts.snapshot().finished();
            if finished >= total {
                break;
            }
            if finished > progress.0 {
                progress = (finished, Instant::now());
            }
            anyhow::ensure!(
                progress.1.elapsed() < STALL,
                "the latency run's worker settled {finished} of {total} events and then nothing for {STALL:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        running.await.context("the worker task")??;
        publisher.close().await;
        Broker::delete_topology(&broker).await?;
        let lag = &counts.lag;
        println!("  latency done");
        Ok(Latency {
            count: lag.count(),
            p50: lag.quantile(0.5).unwrap_or(0),
            p99: lag.quantile(0.99).unwrap_or(0),
            max: lag.max_ms(),
            confirm_p50: confirms.quantile(0.5).unwrap_or(0),
            confirm_p99: confirms.quantile(0.99).unwrap_or(0),
        })
    }
}

/// PBX calls (`get` and `query`) and session ids asked for between two
/// readings of the simulator's counts.
fn pbx_use(before: SimulatorStats, after: SimulatorStats) -> (u64, u64) {
    let calls = |s: &SimulatorStats| s.session_requests + s.query_requests;
    (
        calls(&after) - calls(&before),
        after.ids_requested - before.ids_requested,
    )
}

/// A loopback address with a port free right now, for a child's endpoint.
fn free_local_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wiring() -> Wiring {
        Wiring {
            database_url: "postgres://postgres@127.0.0.1:5432/session_enricher_bench".into(),
            amqp_url: defaults::AMQP_URL.into(),
            queue: "session-enricher.bench.test".into(),
            pbx_base_url: "http://127.0.0.1:18088".into(),
            pbx_id: "bench-test".into(),
            http_addr: ([127, 0, 0, 1], 19090).into(),
        }
    }

    #[test]
    fn the_worker_gets_the_wiring_and_otherwise_the_defaults_of_run() {
        let plan = worker_plan(&wiring().args(&[])).unwrap();
        assert_eq!(plan.broker.queue, "session-enricher.bench.test");
        assert_eq!(plan.pbx.base_url, "http://127.0.0.1:18088");
        assert_eq!(plan.worker.pbx_id, "bench-test");
        assert_eq!(plan.http_addr, ([127, 0, 0, 1], 19090).into());
        // Unless this environment sets them, the defaults of `run` itself.
        if std::env::var_os("ENRICHER_PREFETCH").is_none() {
            assert_eq!(plan.broker.prefetch, defaults::PREFETCH);
        }
        if std::env::var_os("ENRICHER_PBX_CONCURRENCY").is_none() {
            assert_eq!(plan.pbx.concurrency, usize::from(defaults::PBX_CONCURRENCY));
        }
    }

    #[test]
    fn flags_after_the_dashes_override_a_default_and_bad_ones_are_refused() {
        let flags = ["--prefetch".to_owned(), "2000".to_owned()];
        let plan = worker_plan(&wiring().args(&flags)).unwrap();
        assert_eq!(plan.broker.prefetch, 2000);

        let refused = worker_plan(&wiring().args(&["--prefetch".into(), "0".into()]))
            .err()
            .unwrap();
        assert!(refused.to_string().contains("--prefetch"), "{refused}");
        let refused = worker_plan(&wiring().args(&["--no-such-flag".into()]))
            .err()
            .unwrap();
        assert!(
            refused.to_string().contains("after `bench --`"),
            "{refused}"
        );
    }

    #[test]
    fn pbx_use_counts_get_and_query_calls_and_the_ids_they_asked_for() {
        let before = SimulatorStats {
            session_requests: 10,
            query_requests: 1,
            ids_requested: 30,
            ..SimulatorStats::default()
        };
        let after = SimulatorStats {
            session_requests: 12,
            query_requests: 4,
            ids_requested: 92,
            ..SimulatorStats::default()
        };
        assert_eq!(pbx_use(before, after), (5, 62));
    }
}
