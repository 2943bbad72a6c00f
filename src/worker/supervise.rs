//! Supervision: connect to the broker, run a consuming session, and on its
//! end reconnect with backoff, wait out a pause by probing the dependency
//! that caused it, or stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::consume::SessionEnd;
use super::{Worker, WorkerError};
use crate::broker::Broker;
use crate::metrics;
use crate::outcome::Pause;
use crate::pbx::PbxError;

impl Worker {
    pub(super) async fn supervise(&self, shutdown: &CancellationToken) -> Result<(), WorkerError> {
        let settings = &self.settings;
        let mut failures = 0;
        loop {
            let connected = tokio::select! {
                connected = Broker::connect(self.broker.clone()) => connected,
                () = shutdown.cancelled() => return Ok(()),
            };
            let broker = match connected {
                Ok(broker) => Arc::new(broker),
                Err(e) if e.is_topology_conflict() => {
                    tracing::error!(error = %e, "RabbitMQ refused the queue declarations; fix the queues or AMQP_QUEUE.");
                    return Err(WorkerError::Topology(e));
                }
                Err(e) => {
                    let wait = settings.reconnect.delay(failures);
                    failures = failures.saturating_add(1);
                    self.status
                        .set_problem(Some(format!("RabbitMQ unavailable: {e}")));
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "Cannot reach RabbitMQ; retrying.");
                    if !sleep_unless(wait, shutdown).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let started = Instant::now();
            let end = self.consume(&broker, shutdown).await;
            broker.close().await;
            match end {
                SessionEnd::Shutdown { drained: true } => return Ok(()),
                SessionEnd::Shutdown { drained: false } => {
                    return Err(WorkerError::ShutdownDeadline(settings.shutdown_timeout));
                }
                SessionEnd::BrokerLost(why) => {
                    metrics::get().broker_connection_lost();
                    self.status
                        .set_problem(Some(format!("RabbitMQ connection lost: {why}")));
                    // A connection that dies at once must not be retried in a
                    // tight loop; one that lived a while starts afresh.
                    failures = if started.elapsed() > Duration::from_secs(30) {
                        0
                    } else {
                        failures + 1
                    };
                    let wait = settings.reconnect.delay(failures);
                    tracing::warn!(error = %why, wait_ms = wait.as_millis() as u64,
                        "Lost the RabbitMQ connection; unacked deliveries will be redelivered. Reconnecting.");
                    if !sleep_unless(wait, shutdown).await {
                        return Ok(());
                    }
                }
                SessionEnd::Paused(pause) => {
                    failures = 0;
                    if !self.wait_out(&pause, shutdown).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Waits until the dependency that caused `pause` recovers, probing it
    /// with backoff, without consuming. `false` if shutdown came first.
    async fn wait_out(&self, pause: &Pause, shutdown: &CancellationToken) -> bool {
        let settings = &self.settings;
        let (probe, what) = match pause {
            Pause::Pbx { .. } => (
                settings.pbx_probe,
                "the PBX refuses the worker's configuration",
            ),
            Pause::Database { .. } => (settings.database_probe, "the database is unavailable"),
        };
        self.status
            .set_problem(Some(format!("paused: {}", pause.reason())));
        tracing::error!(
            reason = pause.reason(),
            "Paused: {what}; deliveries are back in the queue and nothing is dead-lettered."
        );
        let mut attempt = 0;
        loop {
            if !sleep_unless(probe.delay(attempt), shutdown).await {
                return false;
            }
            attempt = attempt.saturating_add(1);
            let recovered = match pause {
                Pause::Database { .. } => self.store.ping().await.is_ok(),
                Pause::Pbx { session_id, .. } => !matches!(
                    self.pbx.fetch_session(*session_id).await,
                    Err(PbxError::Configuration { .. })
                ),
            };
            if recovered {
                tracing::info!("Recovered: {what} no more; consuming again.");
                return true;
            }
            if matches!(pause, Pause::Pbx { .. }) && self.pbx.logins_halted().await {
                self.status.set_problem(Some(format!(
                    "paused: {}; logins stopped to keep this IP from being blocked: fix the credentials (or lift the block), then restart",
                    pause.reason()
                )));
            }
            tracing::debug!(attempt, "Still paused: {what}.");
        }
    }
}

/// Sleeps `wait` unless shutdown comes first; `false` if it did.
async fn sleep_unless(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = shutdown.cancelled() => false,
    }
}
