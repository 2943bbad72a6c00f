//! Each part's settings pointed at this test's database, queues and
//! simulator, with quick retries; and the service URLs through a `Proxy`.
//! Tests adjust a copy; nothing here connects.

use std::time::Duration;

use session_enricher::backoff::Backoff;
use session_enricher::broker::{BrokerSettings, Destination, PublisherSettings};
use session_enricher::intake::{IntakeSettings, SignaturePolicy};
use session_enricher::pbx::PbxSettings;
use session_enricher::secret::Secret;
use session_enricher::simulator::SimulatorSettings;
use session_enricher::store::{Store, StoreSettings};
use session_enricher::worker::WorkerSettings;

use super::env::TestEnv;
use super::fixtures::{PBX, WEBHOOK_SECRET};
use super::proxy::Proxy;
use super::services::{amqp_url, with_database, with_query_param};

impl TestEnv {
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            url: self.db_url.clone(),
            max_connections: 4,
            statement_timeout: Duration::from_secs(10),
        }
    }

    pub fn broker_settings(&self) -> BrokerSettings {
        BrokerSettings {
            url: amqp_url(),
            queue: self.queue.clone(),
            exchange: None,
            routing_key: None,
            prefetch: 50,
            delivery_limit: 5,
        }
    }

    pub fn pbx_settings(&self) -> PbxSettings {
        let defaults = SimulatorSettings::default();
        PbxSettings {
            base_url: self.sim.base_url(),
            api_path: "openapi/v1.0".into(),
            client_id: defaults.client_id,
            client_secret: defaults.client_secret,
            concurrency: 8,
            request_timeout: Duration::from_secs(5),
            retry: Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
                attempts: 5,
            },
            login_retry_min: Duration::from_secs(60),
            query_batch: 20,
            max_rps: None,
        }
    }

    pub fn worker_settings(&self) -> WorkerSettings {
        let quick = |attempts| Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            attempts,
        };
        WorkerSettings {
            pbx_id: PBX.into(),
            shutdown_timeout: Duration::from_secs(10),
            store_retry: quick(3),
            pipeline: session_enricher::pipeline::PipelineSettings {
                fetchers: 8,
                fetch_batch: 20,
                fetch_gather: Duration::from_millis(2),
                batch_max: 50,
                batch_linger: Duration::from_millis(2),
                writers: 2,
            },
            retry: Backoff {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(200),
                attempts: 3,
            },
            reconnect: quick(u32::MAX),
            database_probe: quick(u32::MAX),
            pbx_probe: quick(u32::MAX),
            // Off, so PBX call counts are the events' alone; the refresh
            // tests turn it on.
            refresh: None,
            ..WorkerSettings::default()
        }
    }

    /// Intake settings for this test: its work queue, the test webhook
    /// secret, fast reconnects.
    pub fn intake_settings(&self) -> IntakeSettings {
        IntakeSettings {
            listen: ([127, 0, 0, 1], 0).into(),
            path: "/webhooks/yeastar".into(),
            signature: SignaturePolicy::Verify(Secret::new(WEBHOOK_SECRET)),
            max_body_bytes: 1_048_576,
            forwarded_types: vec![30031],
            publisher: PublisherSettings {
                url: amqp_url(),
                destination: Destination::Queue(self.queue.clone()),
                confirm_timeout: Duration::from_secs(5),
                reconnect: Backoff {
                    initial: Duration::from_millis(20),
                    max: Duration::from_millis(200),
                    attempts: u32::MAX,
                },
            },
            shutdown_timeout: Duration::from_secs(5),
        }
    }

    pub fn store(&self) -> Store {
        Store::connect_lazy(&self.store_settings()).unwrap()
    }

    /// `DATABASE_URL` of this test's database through `proxy` (a
    /// [`Proxy::postgres`]).
    pub fn db_url_via(&self, proxy: &Proxy) -> String {
        with_database(&proxy.url(), &self.name)
    }

    /// `AMQP_URL` through `proxy` (a [`Proxy::broker`]), with 1 s heartbeats
    /// so a stall is noticed.
    pub fn amqp_url_via(&self, proxy: &Proxy) -> String {
        with_query_param(&proxy.url(), "heartbeat=1")
    }
}
