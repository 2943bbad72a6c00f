//! The operations endpoint on `ENRICHER_HTTP_ADDR`: `GET /healthz`
//! (liveness), `GET /readyz` (readiness, with a short JSON reason when not
//! ready) and `GET /metrics` (Prometheus). Also `probe`, the client side of
//! `session-enricher healthcheck`, for images without curl, and `fetch`,
//! the same with the body. It reads state; it never changes what the worker
//! does.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics;
use crate::pbx::{PbxAccess, PbxStatus};
use crate::status::WorkerStatus;
use crate::store::Store;

/// How long `/readyz` waits for the database to answer `SELECT 1`.
const DATABASE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/readyz` looks at.
#[derive(Clone)]
pub struct ReadinessChecks {
    /// Whether the worker consumes, and if not, why (`Worker::status`).
    pub worker: Arc<WorkerStatus>,
    /// Whether the PBX grants tokens (`PbxClient::status`).
    pub pbx: Arc<PbxStatus>,
    /// Asked `SELECT 1` on every check.
    pub store: Store,
}

/// The running endpoint; `stop` ends it.
pub struct HealthServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HealthServer {
    /// Binds `listen` (port 0 picks a free one) and serves in the background.
    pub async fn start(listen: SocketAddr, checks: ReadinessChecks) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .route("/metrics", get(metrics_text))
            .with_state(checks);
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "The health endpoint stopped; probes will fail.");
            }
        });
        tracing::info!(%addr, "Serving /healthz, /readyz and /metrics.");
        Ok(Self { addr, stop, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (after the worker has stopped: until then, probes see
    /// it draining).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Liveness: answering at all proves the process and its async runtime (the
/// one the worker runs on) are alive. Outside systems are not checked here:
/// restarting cannot fix them.
async fn healthz() -> Response {
    json_response(StatusCode::OK, json!({"status": "alive"}))
}

/// The result of each readiness check: `None` when fine, else why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadinessReport {
    pub consuming: Option<String>,
    pub database: Option<String>,
    pub pbx: Option<String>,
}

impl ReadinessReport {
    pub fn is_ready(&self) -> bool {
        self.consuming.is_none() && self.database.is_none() && self.pbx.is_none()
    }

    /// The failing checks in one line, e.g. `consuming: RabbitMQ unavailable: ...`.
    pub fn reason(&self) -> String {
        [
            ("consuming", &self.consuming),
            ("database", &self.database),
            ("pbx", &self.pbx),
        ]
        .into_iter()
        .filter_map(|(name, failed)| failed.as_ref().map(|why| format!("{name}: {why}")))
        .collect::<Vec<_>>()
        .join("; ")
    }
}

impl ReadinessChecks {
    /// Runs every check now.
    pub async fn report(&self) -> ReadinessReport {
        let consuming = (!self.worker.is_consuming()).then(|| {
            self.worker
                .problem()
                .unwrap_or_else(|| "not consuming (starting or stopping)".to_owned())
        });
        let database = match tokio::time::timeout(DATABASE_CHECK_TIMEOUT, self.store.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "no answer to SELECT 1 within {}s",
                DATABASE_CHECK_TIMEOUT.as_secs()
            )),
        };
        let pbx = match self.pbx.access() {
            PbxAccess::Granted => None,
            PbxAccess::Pending => Some("no access token obtained yet".to_owned()),
            PbxAccess::Refused(why) => Some(why),
        };
        ReadinessReport {
            consuming,
            database,
            pbx,
        }
    }
}

async fn readyz(State(checks): State<ReadinessChecks>) -> Response {
    let report = checks.report().await;
    let state = |failed: &Option<String>| match failed {
        None => "ok".to_owned(),
        Some(why) => why.clone(),
    };
    let checks = json!({
        "consuming": state(&report.consuming),
        "database": state(&report.database),
        "pbx": state(&report.pbx),
    });
    if report.is_ready() {
        json_response(StatusCode::OK, json!({"status": "ready", "checks": checks}))
    } else {
        json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "not ready", "reason": report.reason(), "checks": checks}),
        )
    }
}

/// `GET /metrics`: the worker's metrics, in the OpenMetrics text format.
async fn metrics_text() -> Response {
    metrics_response(metrics::Process::Worker)
}

/// One process's metrics as an HTTP answer (the intake serves its own).
pub(crate) fn metrics_response(process: metrics::Process) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::get().encode(process),
    )
        .into_response()
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Why a probe did not get an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} did not answer HTTP")]
    NotHttp { addr: SocketAddr },
}

/// `GET path` on the endpoint at `addr` (an unspecified address such as
/// `0.0.0.0` means this host), returning the HTTP status. Used by
/// `session-enricher healthcheck`, so images need no curl.
pub async fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, ProbeError> {
    fetch(addr, path, timeout).await.map(|(status, _)| status)
}

/// `GET path` as `probe` does, returning the status and the body (`bench`
/// reads its worker's `/metrics` with it).
pub async fn fetch(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), ProbeError> {
    let addr = local_target(addr);
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::with_capacity(4096);
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = match tokio::time::timeout(timeout, exchange).await {
        Err(_) => return Err(ProbeError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ProbeError::Io { addr, source }),
        Ok(Ok(response)) => String::from_utf8_lossy(&response).into_owned(),
    };
    // "HTTP/1.1 200 OK"
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or(ProbeError::NotHttp { addr })?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or_else(String::new, |(_, body)| body.to_owned());
    Ok((status, body))
}

fn local_target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(
            local_target("0.0.0.0:9090".parse().unwrap()),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            local_target("[::]:9090".parse().unwrap()),
            "[::1]:9090".parse().unwrap()
        );
        assert_eq!(
            local_target("10.1.2.3:9090".parse().unwrap()),
            "10.1.2.3:9090".parse().unwrap()
        );
    }

    #[test]
    fn the_reason_names_each_failing_check() {
        let report = ReadinessReport {
            consuming: Some("paused: database unavailable".into()),
            database: None,
            pbx: Some("refused".into()),
        };
        assert!(!report.is_ready());
        assert_eq!(
            report.reason(),
            "consuming: paused: database unavailable; pbx: refused"
        );
    }
}
