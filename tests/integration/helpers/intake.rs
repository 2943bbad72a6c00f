//! The intake under test: an in-process `ingest` on a free port and an HTTP
//! client for it (`RunningIntake`), answers as status and body. Its
//! settings are `TestEnv::intake_settings`.

use session_enricher::intake::{Intake, IntakeSettings};
use tokio_util::sync::CancellationToken;

use super::wait::wait_until;

/// An in-process `ingest` on a free port, with an HTTP client for it.
pub struct RunningIntake {
    pub intake: Intake,
    pub stop: CancellationToken,
    pub base_url: String,
    pub http: reqwest::Client,
}

/// An HTTP answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl RunningIntake {
    pub async fn start(settings: IntakeSettings) -> Self {
        let stop = CancellationToken::new();
        let intake = Intake::start(settings, stop.clone())
            .await
            .expect("the intake starts");
        let base_url = format!("http://{}", intake.local_addr());
        Self {
            intake,
            stop,
            base_url,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs a webhook body to the default path, with `X-Signature` if given.
    pub async fn post(&self, body: impl Into<Vec<u8>>, signature: Option<&str>) -> Answer {
        let mut request = self
            .http
            .post(format!("{}/webhooks/yeastar", self.base_url))
            .header("content-type", "application/json")
            .body(body.into());
        if let Some(signature) = signature {
            request = request.header("X-Signature", signature);
        }
        answer(request.send().await.expect("the intake answers")).await
    }

    pub async fn get(&self, path: &str) -> Answer {
        let response = self
            .http
            .get(format!("{}{path}", self.base_url))
            .send()
            .await
            .expect("the intake answers");
        answer(response).await
    }

    /// Waits until `/readyz` answers `status`.
    pub async fn wait_ready(&self, status: u16) {
        wait_until(&format!("/readyz answers {status}"), || async {
            self.get("/readyz").await.status == status
        })
        .await;
    }

    /// Stops it gracefully and waits until it has.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.intake.stopped().await.expect("a clean shutdown");
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    Answer {
        status: response.status().as_u16(),
        body: response.text().await.unwrap_or_default(),
    }
}
