//! Every metric this process exports, declared in one place with its help
//! text, and the calls that feed them. Names follow Prometheus conventions
//! (`_total` for counters, `_seconds` for durations); every label comes from
//! a closed enum below, so a series can never be keyed by a session id or
//! any other unbounded value.
//!
//! The metrics are process-wide (`get()`): one process runs one worker or
//! one intake, each exporting only its own series (`Process`), and
//! instrumentation stays a one-line call wherever the thing happens. Tests
//! that assert values run the binary, which has a registry of its own.
//! This module never decides anything; it only counts.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::outcome::Outcome;

/// The `Content-Type` of `encode`'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Defines a closed set of label values: an enum whose variants encode as
/// the given snake_case strings.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_values! {
    /// How a delivery was settled (see `outcome::Outcome`).
    EventOutcome {
        Enriched => "enriched",
        Unchanged => "unchanged",
        Skipped => "skipped",
        NotFound => "not_found",
        DeadLettered => "dead_lettered",
        Retried => "retried",
        Held => "held",
        Crashed => "crashed",
        Requeued => "requeued",
    }
}

label_values! {
    /// The Yeastar API endpoints this service calls.
    PbxEndpoint {
        GetToken => "get_token",
        RefreshToken => "refresh_token",
        DelToken => "del_token",
        MessageSessionGet => "message_session_get",
        MessageSessionQuery => "message_session_query",
        MessageSessionList => "message_session_list",
    }
}

label_values! {
    /// What a PBX request ended in, by errcode class (see `pbx::PbxError`).
    PbxResult {
        Ok => "ok",
        /// Connect/timeout, HTTP 5xx/429, errcode -2 or 70082.
        Transient => "transient",
        /// errcode 10004.
        TokenExpired => "token_expired",
        /// errcode 60001 (or 40002 for the session id).
        NotFound => "not_found",
        /// Any other errcode, or an answer that is not what was asked.
        Rejected => "rejected",
        /// Credentials, permissions, token cap, IP block, wrong API path.
        Configuration => "configuration",
        /// The firmware lacks this (optional) endpoint: HTTP 404 or errcode
        /// 10001 on `message_session/query`.
        Unsupported => "unsupported",
    }
}

label_values! {
    /// How an access token was obtained.
    RenewalMethod {
        Login => "login",
        Refresh => "refresh",
    }
}

label_values! {
    /// What a database write transaction did.
    DbWrite {
        /// A batch of PBX answers: sessions, customers, pending agents and
        /// sessions marked missing (the worker's writer; `enrich` writes
        /// batches of one).
        Batch => "batch",
    }
}

label_values! {
    /// How a reconciliation run ended (see `reconcile`).
    ReconcileResult {
        /// Every listed session fetched and written.
        Done => "done",
        /// What was found was written, but the listing stopped early (a PBX
        /// that ignores paging, the page cap, a shutdown) or some sessions
        /// failed.
        Incomplete => "incomplete",
        /// The listing failed: nothing was reconciled.
        Failed => "failed",
        /// Another replica was reconciling this PBX (advisory lock held).
        Skipped => "skipped",
    }
}

label_values! {
    /// What reconciliation did to a stored session.
    ReconcileChange {
        /// The session had no row.
        Added => "added",
        /// The stored Session_Info differed (or the row was marked missing).
        Changed => "changed",
        /// The PBX said the listed session does not exist.
        Missing => "missing",
    }
}

label_values! {
    /// Which clock an event's lag is measured from.
    LagSince {
        /// The AMQP `timestamp` property: when the message was published.
        Published => "published",
    }
}

label_values! {
    /// How many deliveries one `basic.ack` frame settles.
    AckFrame {
        /// Its own tag only.
        Single => "single",
        /// Its tag and the earlier waiting ones (`multiple`).
        Multiple => "multiple",
    }
}

label_values! {
    /// What refreshing a waiting session (no event asked for it) found.
    RefreshResult {
        /// The session changed (e.g. picked up: its pending agents went).
        Changed => "changed",
        /// Nothing new.
        Unchanged => "unchanged",
        /// The PBX no longer has the session.
        Missing => "missing",
        /// The fetch or the write failed; due again when its claim lapses.
        Failed => "failed",
    }
}

label_values! {
    /// What the intake answered a webhook request (see `intake::IntakeOutcome`).
    WebhookOutcome {
        Accepted => "accepted",
        Unsigned => "unsigned",
        BadSignature => "bad_signature",
        TooLarge => "too_large",
        NotJson => "not_json",
        NotAnEvent => "not_an_event",
        NotForwarded => "not_forwarded",
        Unroutable => "unroutable",
        Unavailable => "unavailable",
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: EventOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PbxRequestLabels {
    endpoint: PbxEndpoint,
    result: PbxResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: PbxEndpoint,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RenewalLabels {
    method: RenewalMethod,
    result: PbxResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DbWriteLabels {
    write: DbWrite,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LagLabels {
    since: LagSince,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AckFrameLabels {
    kind: AckFrame,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    result: RefreshResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    outcome: WebhookOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileRunLabels {
    result: ReconcileResult,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReconcileChangeLabels {
    change: ReconcileChange,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Which process's series to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Process {
    Worker,
    Intake,
}

/// The metrics of this process. Obtain it with `get()`.
pub struct Metrics {
    /// The worker's series (`run`, `demo`, `bench`, `enrich`).
    registry: Registry,
    /// The intake's series (`ingest`): kept apart, so neither process
    /// exports the other's series at zero (an alert on the intake's broker
    /// readiness must not fire on every worker).
    intake_registry: Registry,
    events: Family<OutcomeLabels, Counter>,
    events_in_flight: Gauge,
    events_coalesced: Counter,
    event_lag: HistogramFamily<LagLabels>,
    pbx_requests: Family<PbxRequestLabels, Counter>,
    pbx_request_duration: HistogramFamily<EndpointLabels>,
    pbx_token_renewals: Family<RenewalLabels, Counter>,
    pbx_fetches_in_flight: Gauge,
    pbx_query_supported: Gauge,
    pbx_query_ids: Histogram,
    db_batch_size: Histogram,
    db_commit_duration: HistogramFamily<DbWriteLabels>,
    broker_reconnects: Counter,
    ack_frames: Family<AckFrameLabels, Counter>,
    refreshes_claimed: Counter,
    refreshes: Family<RefreshLabels, Counter>,
    webhooks: Family<WebhookLabels, Counter>,
    intake_broker_ready: Gauge,
    reconcile_runs: Family<ReconcileRunLabels, Counter>,
    reconcile_sessions: Family<ReconcileChangeLabels, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

fn pbx_latency_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn db_latency_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
    ])
}

fn lag_buckets() -> Histogram {
    Histogram::new([
        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
    ])
}

impl Metrics {
    fn new() -> Self {
        let metrics = Self {
            registry: Registry::default(),
            intake_registry: Registry::default(),
            events: Family::default(),
            events_in_flight: Gauge::default(),
            events_coalesced: Counter::default(),
            event_lag: Family::new_with_constructor(lag_buckets),
            pbx_requests: Family::default(),
            pbx_request_duration: Family::new_with_constructor(pbx_latency_buckets),
            pbx_token_renewals: Family::default(),
            pbx_fetches_in_flight: Gauge::default(),
            pbx_query_supported: Gauge::default(),
            pbx_query_ids: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
            db_batch_size: Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]),
            db_commit_duration: Family::new_with_constructor(db_latency_buckets),
            broker_reconnects: Counter::default(),
            ack_frames: Family::default(),
            refreshes_claimed: Counter::default(),
            refreshes: Family::default(),
            webhooks: Family::default(),
            intake_broker_ready: Gauge::default(),
            reconcile_runs: Family::default(),
            reconcile_sessions: Family::default(),
        };
        // Series with a fixed label set exist from the start, at zero, so
        // `increase()` sees their first event and dashboards show them.
        for &outcome in EventOutcome::ALL {
            let _ = metrics.events.get_or_create(&OutcomeLabels { outcome });
        }
        for &endpoint in PbxEndpoint::ALL {
            let _ = metrics
                .pbx_request_duration
                .get_or_create(&EndpointLabels { endpoint });
        }
        for &write in DbWrite::ALL {
            let _ = metrics
                .db_commit_duration
                .get_or_create(&DbWriteLabels { write });
        }
        for &since in LagSince::ALL {
            let _ = metrics.event_lag.get_or_create(&LagLabels { since });
        }
        for &kind in AckFrame::ALL {
            let _ = metrics.ack_frames.get_or_create(&AckFrameLabels { kind });
        }
        for &result in RefreshResult::ALL {
            let _ = metrics.refreshes.get_or_create(&RefreshLabels { result });
        }
        for &outcome in WebhookOutcome::ALL {
            let _ = metrics.webhooks.get_or_create(&WebhookLabels { outcome });
        }
        for &result in ReconcileResult::ALL {
            let _ = metrics
                .reconcile_runs
                .get_or_create(&ReconcileRunLabels { result });
        }
        for &change in ReconcileChange::ALL {
            let _ = metrics
                .reconcile_sessions
                .get_or_create(&ReconcileChangeLabels { change });
        }
        metrics.register()
    }

    fn register(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "enricher_events",
            "Deliveries settled, by outcome (enriched, unchanged, skipped, not_found, dead_lettered; retried = sent to the retry queue; held = returned while a dependency recovers; crashed = processing panicked; requeued = could not be settled as decided)",
            self.events.clone(),
        );
        r.register(
            "enricher_events_in_flight",
            "Deliveries taken from the queue and not yet settled",
            self.events_in_flight.clone(),
        );
        r.register(
            "enricher_events_coalesced",
            "Events that shared a PBX fetch with an earlier event of the same session (coalesced)",
            self.events_coalesced.clone(),
        );
        r.register_with_unit(
            "enricher_event_commit_lag",
            "From when an event was published (AMQP timestamp property) to when its session was committed",
            Unit::Seconds,
            self.event_lag.clone(),
        );
        r.register(
            "enricher_pbx_requests",
            "Requests to the PBX API, by endpoint and result class",
            self.pbx_requests.clone(),
        );
        r.register_with_unit(
            "enricher_pbx_request_duration",
            "Duration of one PBX API request, by endpoint",
            Unit::Seconds,
            self.pbx_request_duration.clone(),
        );
        r.register(
            "enricher_pbx_token_renewals",
            "Access tokens obtained or refused, by method (login, refresh) and result class",
            self.pbx_token_renewals.clone(),
        );
        r.register(
            "enricher_pbx_fetches_in_flight",
            "message_session/get, /query and /list calls in flight (bounded by ENRICHER_PBX_CONCURRENCY)",
            self.pbx_fetches_in_flight.clone(),
        );
        r.register(
            "enricher_pbx_query_supported",
            "Whether the PBX serves message_session/query (1), or answered that it lacks it (0) and each session is fetched with message_session/get",
            self.pbx_query_supported.clone(),
        );
        r.register(
            "enricher_pbx_query_ids",
            "Session ids asked for per message_session/query call",
            self.pbx_query_ids.clone(),
        );
        r.register(
            "enricher_db_batch_size",
            "Sessions written per database transaction",
            self.db_batch_size.clone(),
        );
        r.register_with_unit(
            "enricher_db_commit_duration",
            "From BEGIN to COMMIT of one write transaction, by kind of write",
            Unit::Seconds,
            self.db_commit_duration.clone(),
        );
        r.register(
            "enricher_broker_reconnects",
            "Times the RabbitMQ connection or consumer was lost and the worker reconnected",
            self.broker_reconnects.clone(),
        );
        r.register(
            "enricher_ack_frames",
            "basic.ack frames sent for the work queue's deliveries, by kind (single: one delivery; multiple: a run of finished deliveries)",
            self.ack_frames.clone(),
        );
        r.register(
            "enricher_reconcile_runs",
            "Reconciliation runs (message_session/list paged through, every open session fetched and upserted), by result (done, incomplete, failed; skipped = another replica held the lock)",
            self.reconcile_runs.clone(),
        );
        r.register(
            "enricher_reconcile_sessions",
            "Sessions reconciliation found different from the stored rows, by change (added: no row; changed: another Session_Info; missing: listed, then not found)",
            self.reconcile_sessions.clone(),
        );
        r.register(
            "enricher_refreshes_claimed",
            "Waiting sessions this worker claimed for a refresh (no event asked for them)",
            self.refreshes_claimed.clone(),
        );
        r.register(
            "enricher_refreshes",
            "Refreshes of waiting sessions settled, by what they found",
            self.refreshes.clone(),
        );
        let r = &mut self.intake_registry;
        r.register(
            "enricher_webhooks",
            "Webhook requests answered by ingest, by outcome",
            self.webhooks.clone(),
        );
        r.register(
            "enricher_intake_broker_ready",
            "Whether ingest can publish to RabbitMQ now (1) or answers 503 (0)",
            self.intake_broker_ready.clone(),
        );
        self
    }

    /// One process's metrics in the OpenMetrics text format
    /// (`CONTENT_TYPE`).
    pub fn encode(&self, process: Process) -> String {
        let registry = match process {
            Process::Worker => &self.registry,
            Process::Intake => &self.intake_registry,
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        out
    }

    /// Counts a delivery taken from the queue (in flight until
    /// `event_settled`).
    pub fn event_taken(&self) {
        self.events_in_flight.inc();
    }

    /// Counts a settled delivery and, when the worker measured one, its
    /// publish→commit lag in milliseconds.
    pub fn event_settled(&self, outcome: &Outcome, lag_ms: Option<u64>) {
        self.events_in_flight.dec();
        let label = match outcome {
            Outcome::Enriched => EventOutcome::Enriched,
            Outcome::Unchanged => EventOutcome::Unchanged,
            Outcome::Skipped { .. } => EventOutcome::Skipped,
            Outcome::NotFound => EventOutcome::NotFound,
            Outcome::DeadLetter { .. } => EventOutcome::DeadLettered,
            Outcome::Retry { .. } => EventOutcome::Retried,
            Outcome::Hold(_) => EventOutcome::Held,
            Outcome::Crashed { .. } => EventOutcome::Crashed,
            Outcome::Requeued { .. } => EventOutcome::Requeued,
        };
        self.events
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
        if let Some(lag_ms) = lag_ms {
            self.event_lag
                .get_or_create(&LagLabels {
                    since: LagSince::Published,
                })
                .observe(lag_ms as f64 / 1000.0);
        }
    }

    /// Counts events folded into an already pending fetch.
    pub fn refreshes_claimed(&self, n: u64) {
        self.refreshes_claimed.inc_by(n);
    }

    pub fn refresh_settled(&self, result: RefreshResult) {
        self.refreshes
            .get_or_create(&RefreshLabels { result })
            .inc();
    }

    pub fn events_coalesced(&self, n: u64) {
        self.events_coalesced.inc_by(n);
    }

    /// Marks a PBX fetch in flight until the guard drops.
    pub fn pbx_fetch_in_flight(&self) -> InFlight {
        InFlight::enter(&self.pbx_fetches_in_flight)
    }

    /// Counts one PBX request and observes its duration.
    pub fn pbx_request(&self, endpoint: PbxEndpoint, result: PbxResult, took: Duration) {
        self.pbx_requests
            .get_or_create(&PbxRequestLabels { endpoint, result })
            .inc();
        self.pbx_request_duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(took.as_secs_f64());
        let method = match endpoint {
            PbxEndpoint::GetToken => RenewalMethod::Login,
            PbxEndpoint::RefreshToken => RenewalMethod::Refresh,
            PbxEndpoint::DelToken
            | PbxEndpoint::MessageSessionGet
            | PbxEndpoint::MessageSessionQuery
            | PbxEndpoint::MessageSessionList => return,
        };
        self.pbx_token_renewals
            .get_or_create(&RenewalLabels { method, result })
            .inc();
    }

    /// Records whether the PBX serves `message_session/query`.
    pub fn pbx_query_supported(&self, supported: bool) {
        self.pbx_query_supported.set(i64::from(supported));
    }

    /// Counts the ids asked for in one `message_session/query` call.
    pub fn pbx_query_sent(&self, ids: usize) {
        self.pbx_query_ids.observe(ids as f64);
    }

    /// Starts timing a write transaction of `batch` sessions; call
    /// `committed` on the result once the COMMIT succeeded.
    pub fn db_transaction(&self, write: DbWrite, batch: usize) -> DbTransaction<'_> {
        DbTransaction {
            metrics: self,
            write,
            batch,
            started: Instant::now(),
        }
    }

    /// Counts a lost broker connection (or consumer) the worker reconnects.
    pub fn broker_connection_lost(&self) {
        self.broker_reconnects.inc();
    }

    /// Counts a `basic.ack` frame sent for the work queue's deliveries.
    pub fn ack_frame_sent(&self, kind: AckFrame) {
        self.ack_frames
            .get_or_create(&AckFrameLabels { kind })
            .inc();
    }

    /// Counts a webhook request the intake answered.
    pub fn webhook_answered(&self, outcome: WebhookOutcome) {
        self.webhooks
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    /// Records whether the intake can publish now (set on every scrape).
    pub fn intake_broker_ready(&self, ready: bool) {
        self.intake_broker_ready.set(i64::from(ready));
    }

    /// Counts a reconciliation run by how it ended.
    pub fn reconcile_run(&self, result: ReconcileResult) {
        self.reconcile_runs
            .get_or_create(&ReconcileRunLabels { result })
            .inc();
    }

    /// Counts sessions a reconciliation run added, changed or found missing.
    pub fn reconcile_sessions(&self, change: ReconcileChange, sessions: u64) {
        self.reconcile_sessions
            .get_or_create(&ReconcileChangeLabels { change })
            .inc_by(sessions);
    }
}

/// A write transaction being timed (see `Metrics::db_transaction`). Dropped
/// without `committed`, it records nothing: only commits are measured.
#[must_use = "call `committed()` once the transaction commits"]
pub struct DbTransaction<'a> {
    metrics: &'a Metrics,
    write: DbWrite,
    batch: usize,
    started: Instant,
}

impl DbTransaction<'_> {
    pub fn committed(self) {
        let metrics = self.metrics;
        metrics.db_batch_size.observe(self.batch as f64);
        metrics
            .db_commit_duration
            .get_or_create(&DbWriteLabels { write: self.write })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// Holds one unit of an in-flight gauge; releases it when dropped, whatever
/// path the holder leaves by.
#[must_use = "the gauge drops back as soon as this guard is dropped"]
pub struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_help_and_a_conventional_name() {
        let text = get().encode(Process::Worker);
        for family in [
            "enricher_events",
            "enricher_events_in_flight",
            "enricher_events_coalesced",
            "enricher_event_commit_lag_seconds",
            "enricher_pbx_request_duration_seconds",
            "enricher_pbx_fetches_in_flight",
            "enricher_pbx_query_supported",
            "enricher_pbx_query_ids",
            "enricher_db_batch_size",
            "enricher_db_commit_duration_seconds",
            "enricher_broker_reconnects",
            "enricher_ack_frames",
            "enricher_reconcile_runs",
            "enricher_reconcile_sessions",
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "no HELP for {family} in\n{text}"
            );
        }
        assert!(text.contains("enricher_events_total{outcome=\"dead_lettered\"} 0"));
        assert!(text.contains("enricher_broker_reconnects_total 0"));
        assert!(text.ends_with("# EOF\n"));
        assert!(!text.contains("..\n"), "help texts end without a period");
    }

    #[test]
    fn a_pbx_login_counts_as_a_request_and_a_token_renewal() {
        let metrics = Metrics::new();
        metrics.pbx_request(
            PbxEndpoint::GetToken,
            PbxResult::Configuration,
            Duration::from_millis(3),
        );
        metrics.pbx_request(
            PbxEndpoint::MessageSessionGet,
            PbxResult::Ok,
            Duration::from_millis(3),
        );
        let text = metrics.encode(Process::Worker);
        assert!(text.contains(
            "enricher_pbx_requests_total{endpoint=\"get_token\",result=\"configuration\"} 1"
        ));
        assert!(text.contains(
            "enricher_pbx_token_renewals_total{method=\"login\",result=\"configuration\"} 1"
        ));
        assert!(text.contains("# HELP enricher_pbx_requests Requests"));
        assert!(text.contains("# HELP enricher_pbx_token_renewals Access"));
        assert!(!text.contains("method=\"message_session_get\""));
        assert!(text.contains(
            "enricher_pbx_request_duration_seconds_count{endpoint=\"message_session_get\"} 1"
        ));
    }

    #[test]
    fn a_pbx_without_query_shows_in_its_gauge_and_its_request_results() {
        let metrics = Metrics::new();
        metrics.pbx_query_supported(true);
        metrics.pbx_query_sent(20);
        metrics.pbx_request(
            PbxEndpoint::MessageSessionQuery,
            PbxResult::Unsupported,
            Duration::from_millis(3),
        );
        metrics.pbx_query_supported(false);
        let text = metrics.encode(Process::Worker);
        assert!(text.contains("enricher_pbx_query_supported 0\n"), "{text}");
        assert!(text.contains("enricher_pbx_query_ids_count 1\n"), "{text}");
        assert!(text.contains(
            "enricher_pbx_requests_total{endpoint=\"message_session_query\",result=\"unsupported\"} 1"
        ));
    }

    #[test]
    fn an_in_flight_guard_gives_back_what_it_took() {
        let metrics = Metrics::new();
        {
            let _one = metrics.pbx_fetch_in_flight();
            let _two = metrics.pbx_fetch_in_flight();
            assert_eq!(metrics.pbx_fetches_in_flight.get(), 2);
        }
        assert_eq!(metrics.pbx_fetches_in_flight.get(), 0);
    }

    #[test]
    fn the_intake_counts_every_webhook_outcome_and_its_broker_readiness() {
        let metrics = Metrics::new();
        metrics.webhook_answered(WebhookOutcome::Accepted);
        metrics.webhook_answered(WebhookOutcome::Accepted);
        metrics.webhook_answered(WebhookOutcome::BadSignature);
        metrics.intake_broker_ready(true);
        let text = metrics.encode(Process::Intake);
        assert!(
            !text.contains("enricher_events"),
            "only the intake's series"
        );
        assert!(
            !metrics
                .encode(Process::Worker)
                .contains("enricher_webhooks")
        );
        assert!(text.contains("# TYPE enricher_webhooks counter\n"));
        assert!(text.contains("# HELP enricher_webhooks Webhook requests"));
        assert!(text.contains("# HELP enricher_intake_broker_ready Whether"));
        assert!(text.contains("enricher_webhooks_total{outcome=\"accepted\"} 2\n"));
        assert!(text.contains("enricher_webhooks_total{outcome=\"bad_signature\"} 1\n"));
        assert!(text.contains("enricher_webhooks_total{outcome=\"unavailable\"} 0\n"));
        assert!(text.contains("enricher_intake_broker_ready 1\n"));
        metrics.intake_broker_ready(false);
        assert!(
            metrics
                .encode(Process::Intake)
                .contains("enricher_intake_broker_ready 0\n")
        );
    }
}
