//! `bench`: the benchmark anyone can run on the local RabbitMQ and Postgres,
//! with the PBX simulator in-process. Four runs on fresh queues and a fresh
//! database: the broker's ceiling, the worker on a burst load, the naive
//! worker, and publish→commit latency at a steady rate. Prints a table,
//! the ratios and the targets.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::broker::{Broker, BrokerSettings};
use crate::outcome::OutcomeCounts;
use crate::pbx::{PbxClient, PbxSettings};
use crate::pipeline::PipelineSettings;
use crate::simulator::{Simulator, SimulatorSettings};
use crate::store::{Store, StoreSettings};
use crate::worker::{Worker, WorkerSettings};

#[derive(Clone, Debug)]
pub struct BenchSettings {
    /// Postgres server (the bench creates its own database there).
    pub database_url: String,
    pub amqp_url: String,
    /// Events in the ceiling and worker runs.
    pub events: u64,
    /// Distinct sessions in the worker run (events come in bursts).
    pub sessions: u64,
    pub naive_events: u64,
    /// Steady rate and duration of the latency run.
    pub rate: u64,
    pub seconds: u64,
    /// The simulator's latency per PBX call.
    pub latency: Duration,
    pub pbx_concurrency: usize,
    pub prefetch: u16,
    pub batch_max: usize,
    pub db_writers: usize,
}

/// What one run measured.
#[derive(Debug, Default)]
struct Run {
    events: u64,
    seconds: f64,
    pbx_calls: u64,
    rows: (i64, i64, i64),
    peak_rss_mb: Option<f64>,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// One message event body per item: `bursts` consecutive events per session.
fn burst_bodies(first_session: u64, sessions: u64, events: u64) -> impl Iterator<Item = Vec<u8>> {
    let burst = (events / sessions.max(1)).max(1);
    (0..events).map(move |n| {
        let session = first_session + (n / burst) % sessions.max(1);
        format!(r#"{{"type":30031,"sn":"bench","msg":{{"session_id":{session},"msg_id":{n},"msg_type":0}}}}"#).into_bytes()
    })
}

pub async fn run(settings: BenchSettings) -> anyhow::Result<ExitCode> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let db_url = Store::recreate_database(&settings.database_url, "session_enricher_bench")
        .await
        .context("creating the bench database")?;
    let store_settings = StoreSettings {
        url: db_url,
        max_connections: 8,
        statement_timeout: Duration::from_secs(30),
    };
    let store = Store::connect_lazy(&store_settings)?;
    store.migrate().await?;
    let simulator = Simulator::start(
        ([127, 0, 0, 1], 0).into(),
        SimulatorSettings {
            latency: settings.latency,
            ..SimulatorSettings::default()
        },
    )
    .await?;
    let broker = |name: &str, prefetch: u16| BrokerSettings {
        url: settings.amqp_url.clone(),
        queue: format!("session-enricher.bench.{run_id}.{name}"),
        exchange: None,
        routing_key: None,
        prefetch,
        delivery_limit: 20,
    };
    println!(
        "session-enricher bench: {} events over {} sessions, PBX latency {} ms, {} PBX calls in flight, prefetch {}",
        settings.events,
        settings.sessions,
        settings.latency.as_millis(),
        settings.pbx_concurrency,
        settings.prefetch
    );

    // 1. ceiling: consume and ack only.
    let ceiling_broker = Broker::connect(broker("ceiling", settings.prefetch)).await?;
    ceiling_broker
        .publish_many(
            &broker("ceiling", 0).queue,
            burst_bodies(1, settings.sessions, settings.events),
            1000,
        )
        .await?;
    let started = Instant::now();
    ceiling_broker
        .consume_and_ack("bench-ceiling", settings.events)
        .await?;
    let ceiling = Run {
        events: settings.events,
        seconds: started.elapsed().as_secs_f64(),
        ..Run::default()
    };
    ceiling_broker.close().await;
    Broker::delete_topology(&broker("ceiling", 0)).await?;
    println!("  ceiling done: {:.0} events/s", ceiling.rate());

    let worker_settings =
        |pbx_id: &str, fetchers: usize, batch_max: usize, linger: Duration| WorkerSettings {
            pbx_id: pbx_id.into(),
            pipeline: PipelineSettings {
                fetchers,
                batch_max,
                batch_linger: linger,
                writers: if batch_max == 1 {
                    1
                } else {
                    settings.db_writers
                },
                ..WorkerSettings::default().pipeline
            },
            ..WorkerSettings::default()
        };
    let phase = Phase {
        store_settings: &store_settings,
        simulator: &simulator,
        concurrency: settings.pbx_concurrency,
    };

    // The worker as benchmarked: its PBX concurrency and batch size.
    let tuned =
        |name, linger| worker_settings(name, settings.pbx_concurrency, settings.batch_max, linger);

    // 2. worker: the burst load, preloaded.
    let fast = tuned("bench", Duration::from_millis(5));
    let worker = phase
        .drain(
            broker("worker", settings.prefetch),
            fast.clone(),
            burst_bodies(1, settings.sessions, settings.events),
            settings.events,
        )
        .await?;
    println!("  worker done: {:.0} events/s", worker.rate());

    // 3. naive: prefetch 1, one call in flight, one transaction per event.
    let naive_sessions = (settings.naive_events / 10).max(1);
    let naive_settings = worker_settings("bench-naive", 1, 1, Duration::ZERO);
    let naive = Phase {
        concurrency: 1,
        ..phase
    }
    .drain(
        broker("naive", 1),
        naive_settings,
        burst_bodies(1, naive_sessions, settings.naive_events),
        settings.naive_events,
    )
    .await?;
    println!("  naive done: {:.1} events/s", naive.rate());

    // 4. latency: a steady rate of distinct sessions.
    let latency_settings = tuned("bench-latency", Duration::from_millis(1));
    let lag = phase
        .latency(
            broker("latency", settings.prefetch),
            latency_settings,
            settings.rate,
            settings.seconds,
        )
        .await?;
    simulator.stop();
    store.close().await;

    let ms = settings.latency.as_millis() as u64;
    let rows = |r: &Run| {
        format!(
            "{} sessions, {} customers, {} agents",
            r.rows.0, r.rows.1, r.rows.2
        )
    };
    println!();
    println!("| run | events | seconds | events/s | PBX calls | rows written | peak RSS |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| ceiling (consume + ack) | {} | {:.2} | {:.0} | - | - | - |",
        ceiling.events,
        ceiling.seconds,
        ceiling.rate()
    );
    for (name, r) in [("worker", &worker), ("naive", &naive)] {
        println!(
            "| {name} | {} | {:.2} | {:.0} | {} | {} | {} |",
            r.events,
            r.seconds,
            r.rate(),
            r.pbx_calls,
            rows(r),
            r.peak_rss_mb.map_or("-".into(), |mb| format!("{mb:.1} MB"))
        );
    }
    println!();
    println!(
        "latency at {} events/s for {} s ({} events): publish→commit p50 {} ms, p99 {} ms, max {} ms; \
         the broker alone, publish→confirm: p50 {} ms, p99 {} ms",
        settings.rate,
        settings.seconds,
        lag.count,
        lag.p50,
        lag.p99,
        lag.max,
        lag.confirm_p50,
        lag.confirm_p99
    );
    println!();
    let targets = [
        (
            "worker ≥ 50% of the ceiling",
            worker.rate() / ceiling.rate(),
            0.5,
            format!("{:.0}%", 100.0 * worker.rate() / ceiling.rate()),
        ),
        (
            "worker ≥ 50× naive",
            worker.rate() / naive.rate(),
            50.0,
            format!("{:.0}×", worker.rate() / naive.rate()),
        ),
        (
            "PBX calls ≤ 1.2 × distinct sessions",
            1.2 * settings.sessions as f64 / worker.pbx_calls.max(1) as f64,
            1.0,
            format!("{:.2}×", worker.pbx_calls as f64 / settings.sessions as f64),
        ),
        (
            "p99 ≤ PBX latency + 100 ms",
            (ms + 100) as f64 / lag.p99.max(1) as f64,
            1.0,
            format!("{} ms", lag.p99),
        ),
        (
            "peak RSS ≤ 100 MB",
            100.0 / worker.peak_rss_mb.unwrap_or(f64::MAX),
            1.0,
            worker
                .peak_rss_mb
                .map_or("-".into(), |mb| format!("{mb:.1} MB")),
        ),
    ];
    let mut all_met = true;
    for (target, ratio, needed, shown) in targets {
        let met = ratio >= needed;
        all_met &= met;
        println!("{} {target}: {shown}", if met { "MET " } else { "MISS" });
    }
    Ok(if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[derive(Clone, Copy)]
struct Phase<'a> {
    store_settings: &'a StoreSettings,
    simulator: &'a Simulator,
    concurrency: usize,
}

impl Phase<'_> {
    fn worker(
        &self,
        broker: BrokerSettings,
        settings: WorkerSettings,
        counts: Arc<OutcomeCounts>,
    ) -> anyhow::Result<Worker> {
        let defaults = SimulatorSettings::default();
        let pbx = PbxClient::new(PbxSettings {
            base_url: self.simulator.base_url(),
            api_path: "openapi/v1.0".into(),
            client_id: defaults.client_id,
            client_secret: defaults.client_secret,
            concurrency: self.concurrency,
            request_timeout: Duration::from_secs(10),
            retry: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(1),
                attempts: 5,
            },
            login_retry_min: Duration::from_secs(60),
            query_batch: crate::defaults::QUERY_BATCH.into(),
            max_rps: None,
        })?;
        let store = Store::connect_lazy(self.store_settings)?;
        Ok(Worker::new(broker, Arc::new(pbx), store, settings, counts))
    }

    /// Preloads `bodies`, then runs a worker until `events` are settled.
    async fn drain(
        &self,
        broker: BrokerSettings,
        settings: WorkerSettings,
        bodies: impl Iterator<Item = Vec<u8>>,
        events: u64,
    ) -> anyhow::Result<Run> {
        let publisher = Broker::connect(broker.clone()).await?;
        publisher.publish_many(&broker.queue, bodies, 1000).await?;
        let calls_before = self.simulator.stats().session_requests;
        let counts = Arc::new(OutcomeCounts::default());
        let pbx_id = settings.pbx_id.clone();
        let worker = self.worker(broker.clone(), settings, Arc::clone(&counts))?;
        let stop = CancellationToken::new();
        let rss = RssSampler::start();
        let started = Instant::now();
        let running = tokio::spawn(worker.run(stop.clone()));
        while counts.snapshot().finished() < events {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let peak_rss_mb = rss.stop();
        stop.cancel();
        running.await.context("the worker task")??;
        let store = Store::connect_lazy(self.store_settings)?;
        let rows = store.row_counts(&pbx_id).await?;
        store.close().await;
        publisher.close().await;
        Broker::delete_topology(&broker).await?;
        Ok(Run {
            events,
            seconds,
            pbx_calls: self.simulator.stats().session_requests - calls_before,
            rows,
            peak_rss_mb,
        })
    }

    /// Publishes `rate` events a second (distinct sessions, stamped) for
    /// `seconds` to a running worker; returns the publish→commit lag and,
    /// for comparison, the broker's own publish→confirm latency.
    async fn latency(
        &self,
        broker: BrokerSettings,
        settings: WorkerSettings,
        rate: u64,
        seconds: u64,
    ) -> anyhow::Result<Latency> {
        let publisher = Arc::new(Broker::connect(broker.clone()).await?);
        let counts = Arc::new(OutcomeCounts::default());
        let worker = self.worker(broker.clone(), settings, Arc::clone(&counts))?;
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        // Sessions far from the other runs' ids: every event a fresh session.
        let next = Arc::new(AtomicU64::new(5_000_000));
        let total = rate * seconds;
        let ticks_per_second = 100;
        let per_tick = (rate / ticks_per_second).max(1);
        let mut ticker = tokio::time::interval(Duration::from_millis(1000 / ticks_per_second));
        let mut published = 0;
        let confirms = Arc::new(crate::outcome::LagHistogram::default());
        while published < total {
            ticker.tick().await;
            let sends = (0..per_tick.min(total - published)).map(|_| {
                let publisher = Arc::clone(&publisher);
                let queue = broker.queue.clone();
                let session = next.fetch_add(1, Ordering::Relaxed);
                let confirms = Arc::clone(&confirms);
                async move {
                    let body = format!(r#"{{"type":30031,"msg":{{"session_id":{session}}}}}"#);
                    let sent = Instant::now();
                    let published = publisher.publish_stamped(&queue, body.as_bytes()).await;
                    confirms.record(sent.elapsed().as_millis() as u64);
                    published
                }
            });
            for sent in futures_util::future::join_all(sends).await {
                sent?;
            }
            published += per_tick.min(total - published);
        }
        while counts.snapshot().finished() < total {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        running.await.context("the worker task")??;
        publisher.close().await;
        Broker::delete_topology(&broker).await?;
        let lag = &counts.lag;
        Ok(Latency {
            p50: lag.quantile(0.5).unwrap_or(0),
            p99: lag.quantile(0.99).unwrap_or(0),
            max: lag.max_ms(),
            count: lag.count(),
            confirm_p50: confirms.quantile(0.5).unwrap_or(0),
            confirm_p99: confirms.quantile(0.99).unwrap_or(0),
        })
    }
}

/// Milliseconds, publish→commit (the worker) and publish→confirm (the
/// broker alone).
struct Latency {
    p50: u64,
    p99: u64,
    max: u64,
    count: u64,
    confirm_p50: u64,
    confirm_p99: u64,
}

/// Samples this process's resident set size (Linux `/proc/self/status`).
struct RssSampler {
    peak_kb: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl RssSampler {
    fn start() -> Self {
        let peak_kb = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (peak, stopped) = (Arc::clone(&peak_kb), stop.clone());
        tokio::spawn(async move {
            while !stopped.is_cancelled() {
                if let Some(kb) = rss_kb() {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Self { peak_kb, stop }
    }

    /// Stops sampling; the peak in MB, if it could be read.
    fn stop(self) -> Option<f64> {
        self.stop.cancel();
        if let Some(kb) = rss_kb() {
            self.peak_kb.fetch_max(kb, Ordering::Relaxed);
        }
        let kb = self.peak_kb.load(Ordering::Relaxed);
        (kb > 0).then(|| kb as f64 / 1024.0)
    }
}

fn rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
