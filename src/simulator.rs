//! A local stand-in for the Yeastar API (`simulate-pbx`, `demo`, tests and
//! benchmarks): `get_token`, `refresh_token`, `del_token` and
//! `message_session/get` as the spec describes them, with deterministic
//! synthetic sessions, token expiry and the 8-token cap, the IP block after 5
//! refused logins, latency, and errors injected at random or on command.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::Rng;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::defaults;
use crate::secret::Secret;

const API_ROOT: &str = "/openapi/v1.0";
/// Ids from here on do not exist (answered 60001).
pub const FIRST_MISSING_ID: i64 = 900_000_000;

#[derive(Clone, Debug)]
pub struct SimulatorSettings {
    pub client_id: String,
    pub client_secret: Secret,
    /// Added to every answer.
    pub latency: Duration,
    pub token_ttl: Duration,
    pub refresh_ttl: Duration,
    /// Share of session requests answered with a random transient error.
    pub error_rate: f64,
    /// Valid access tokens one application may hold.
    pub max_tokens: usize,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        Self {
            client_id: defaults::SIMULATOR_CLIENT_ID.into(),
            client_secret: Secret::new(defaults::SIMULATOR_CLIENT_SECRET),
            // In-process (tests, demo, bench): no latency unless asked for;
            // `simulate-pbx` defaults to SIMULATOR_LATENCY_MS.
            latency: Duration::ZERO,
            token_ttl: Duration::from_secs(defaults::SIMULATOR_TOKEN_TTL),
            refresh_ttl: Duration::from_secs(86_400),
            error_rate: defaults::SIMULATOR_ERROR_RATE,
            max_tokens: 8,
        }
    }
}

/// An answer forced on the next request of an endpoint.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// HTTP 200 with this errcode.
    Errcode(i64),
    /// This HTTP status with an empty body.
    HttpStatus(u16),
    /// Answer normally, after this extra delay.
    Delay(Duration),
}

/// What the simulator has been asked, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimulatorStats {
    /// `get_token` calls, accepted or not.
    pub logins: u64,
    pub refused_logins: u64,
    pub refreshes: u64,
    pub revocations: u64,
    /// `message_session/get` calls.
    pub session_requests: u64,
    /// `message_session/query` calls.
    pub query_requests: u64,
    /// Session ids asked for, over `get` (one each) and `query`.
    pub ids_requested: u64,
    /// Access tokens valid now.
    pub live_tokens: usize,
}

#[derive(Default)]
struct SimState {
    access: HashMap<String, Instant>,
    refresh: HashMap<String, (Instant, String)>,
    overrides: HashMap<i64, Option<Value>>,
    session_faults: VecDeque<Fault>,
    login_faults: VecDeque<Fault>,
    refused_in_a_row: u32,
    stats: SimulatorStats,
    /// Every access and refresh token handed out, for tests that check
    /// none of them leaks into logs.
    issued: Vec<String>,
}

struct Shared {
    settings: Mutex<SimulatorSettings>,
    state: Mutex<SimState>,
}

/// A running simulator; clones control the same server.
#[derive(Clone)]
pub struct Simulator {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Simulator {
    /// Binds `listen` (port 0 picks a free one) and serves in the background
    /// until `stop`.
    pub async fn start(listen: SocketAddr, settings: SimulatorSettings) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            settings: Mutex::new(settings),
            state: Mutex::new(SimState::default()),
        });
        let stop = CancellationToken::new();
        let app = Router::new()
            .route(&format!("{API_ROOT}/get_token"), post(get_token))
            .route(&format!("{API_ROOT}/refresh_token"), post(refresh_token))
            .route(&format!("{API_ROOT}/del_token"), get(del_token))
            .route(
                &format!("{API_ROOT}/message_session/get"),
                get(message_session),
            )
            // For container healthchecks (`session-enricher healthcheck`).
            .route(
                "/healthz",
                get(|| async { answer(json!({"status": "alive"})) }),
            )
            .fallback(|| async {
                answer(json!({"errcode": 10001, "errmsg": "INTERFACE NOT EXISTED"}))
            })
            .with_state(Arc::clone(&shared));
        let stopped = stop.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "The PBX simulator stopped.");
            }
        });
        Ok(Self { addr, shared, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `YEASTAR_BASE_URL` that reaches this simulator.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Answer this Session_Info for `id` from now on.
    pub fn set_session(&self, id: i64, session: Value) {
        self.state().overrides.insert(id, Some(session));
    }

    /// Answer 60001 for `id` from now on.
    pub fn remove_session(&self, id: i64) {
        self.state().overrides.insert(id, None);
    }

    /// Force the answers of the next `message_session/get` requests.
    pub fn fail_next_session_requests(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().session_faults.extend(faults);
    }

    /// Force the answers of the next `get_token` requests.
    pub fn fail_next_logins(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().login_faults.extend(faults);
    }

    /// Expire every access token now: the next request with one gets 10004.
    pub fn expire_tokens(&self) {
        let now = Instant::now();
        self.state()
            .access
            .values_mut()
            .for_each(|expiry| *expiry = now);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.settings().latency = latency;
    }

    pub fn set_error_rate(&self, rate: f64) {
        self.settings().error_rate = rate;
    }

    /// Every access and refresh token issued so far.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state().issued.clone()
    }

    pub fn stats(&self) -> SimulatorStats {
        let mut state = self.state();
        let now = Instant::now();
        state.access.retain(|_, expiry| *expiry > now);
        SimulatorStats {
            live_tokens: state.access.len(),
            ..state.stats
        }
    }

    fn state(&self) -> MutexGuard<'_, SimState> {
        lock(&self.shared.state)
    }

    fn settings(&self) -> MutexGuard<'_, SimulatorSettings> {
        lock(&self.shared.settings)
    }
}

/// A poisoned lock only means a handler panicked; the state is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn answer(body: Value) -> Response {
    // The real PBX closes the connection after each response.
    ([(header::CONNECTION, "close")], axum::Json(body)).into_response()
}

fn errcode(code: i64, msg: &str) -> Response {
    answer(json!({"errcode": code, "errmsg": msg}))
}

fn fault_response(fault: &Fault) -> Option<Response> {
    match fault {
        Fault::Errcode(code) => Some(errcode(*code, "FAILURE")),
        Fault::HttpStatus(status) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some((status, [(header::CONNECTION, "close")]).into_response())
        }
        Fault::Delay(_) => None,
    }
}

/// Waits the configured latency plus any forced delay.
async fn pause(shared: &Shared, fault: Option<&Fault>) {
    let mut wait = lock(&shared.settings).latency;
    if let Some(Fault::Delay(extra)) = fault {
        wait += *extra;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

fn mint(state: &mut SimState, settings: &SimulatorSettings) -> Value {
    let now = Instant::now();
    let access = random_token();
    let refresh = random_token();
    state.issued.extend([access.clone(), refresh.clone()]);
    state
        .access
        .insert(access.clone(), now + settings.token_ttl);
    state.refresh.insert(
        refresh.clone(),
        (now + settings.refresh_ttl, access.clone()),
    );
    json!({
        "errcode": 0, "errmsg": "SUCCESS",
        "access_token": access, "access_token_expire_time": settings.token_ttl.as_secs(),
        "refresh_token": refresh, "refresh_token_expire_time": settings.refresh_ttl.as_secs(),
    })
}

fn random_token() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

async fn get_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let fault = lock(&shared.state).login_faults.pop_front();
    pause(&shared, fault.as_ref()).await;
    let settings = lock(&shared.settings).clone();
    let mut state = lock(&shared.state);
    state.stats.logins += 1;
    if state.refused_in_a_row >= 5 {
        state.stats.refused_logins += 1;
        return errcode(70004, "ACCOUNT IP BLOCKED");
    }
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        state.stats.refused_logins += 1;
        return response;
    }
    let credentials: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let accepted = credentials.get("username").and_then(Value::as_str)
        == Some(settings.client_id.as_str())
        && credentials.get("password").and_then(Value::as_str)
            == Some(settings.client_secret.expose());
    if !accepted {
        state.refused_in_a_row += 1;
        state.stats.refused_logins += 1;
        return errcode(-1, "FAILURE");
    }
    state.refused_in_a_row = 0;
    let now = Instant::now();
    state.access.retain(|_, expiry| *expiry > now);
    if state.access.len() >= settings.max_tokens {
        return errcode(60002, "MAX LIMITATION EXCEEDED");
    }
    answer(mint(&mut state, &settings))
}

async fn refresh_token(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    pause(&shared, None).await;
    let settings = lock(&shared.settings).clone();
    let mut state = lock(&shared.state);
    state.stats.refreshes += 1;
    let given = serde_json::from_slice::<Value>(&body).ok().and_then(|b| {
        b.get("refresh_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let Some((expiry, old_access)) = given.and_then(|t| state.refresh.remove(&t)) else {
        return errcode(-1, "FAILURE");
    };
    if expiry <= Instant::now() {
        return errcode(-1, "FAILURE");
    }
    state.access.remove(&old_access);
    answer(mint(&mut state, &settings))
}

async fn del_token(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    pause(&shared, None).await;
    let mut state = lock(&shared.state);
    state.stats.revocations += 1;
    match query
        .get("access_token")
        .and_then(|t| state.access.remove(t))
    {
        Some(_) => errcode(0, "SUCCESS"),
        None => errcode(10004, "TOKEN EXPIRED"),
    }
}

async fn message_session(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let fault = {
        let mut state = lock(&shared.state);
        state.stats.session_requests += 1;
        state.stats.ids_requested += 1;
        state.session_faults.pop_front()
    };
    pause(&shared, fault.as_ref()).await;
    if !headers.contains_key(header::USER_AGENT) {
        return errcode(40002, "PARAMETER ERROR");
    }
    let state = lock(&shared.state);
    let token_valid = query
        .get("access_token")
        .and_then(|t| state.access.get(t))
        .is_some_and(|expiry| *expiry > Instant::now());
    if !token_valid {
        return errcode(10004, "TOKEN EXPIRED");
    }
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        return response;
    }
    let error_rate = lock(&shared.settings).error_rate;
    if error_rate > 0.0 && rand::rng().random_bool(error_rate.clamp(0.0, 1.0)) {
        return match rand::rng().random_range(0..3) {
            0 => errcode(-2, "INTERNAL SERVER ERROR"),
            1 => errcode(70082, "OVERLOAD_TASK_RUNNING"),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONNECTION, "close")],
            )
                .into_response(),
        };
    }
    let Some(id) = query
        .get("id")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
    else {
        return errcode(40002, "PARAMETER ERROR");
    };
    let session = match state.overrides.get(&id) {
        Some(overridden) => overridden.clone(),
        None => synthetic_session(id),
    };
    drop(state);
    match session {
        Some(list) => answer(json!({"errcode": 0, "errmsg": "SUCCESS", "list": list})),
        None => errcode(60001, "DATA NOT FOUND"),
    }
}

/// The spec's example: session 2862, a Live Chat session queued for three
/// agents, verbatim.
pub fn spec_example_session() -> Value {
    json!({
        "id": 2862,
        "channel_type": "livechat",
        "did_number": "LC00000",
        "to_number": "1d8d5367fd4145cd9dd6cfd8c546ded7",
        "page_name": "",
        "user_info": {
            "user_id": 0,
            "user_no": "1d8d5367fd4145cd9dd6cfd8c546ded7",
            "user_type": 5,
            "avatar": "",
            "username": "Website Visitor-Jane Smith"
        },
        "channel_name": "Website Live Chat",
        "website_domain": "example.com",
        "pre_chat_form": {
            "name": "Jane Smith",
            "email": "jane.smith@example.com",
            "phone": "+8613800138000",
            "first_name": "Jane",
            "last_name": "Smith"
        },
        "origin": "",
        "participants": [
            {"user_id": 137, "user_no": "1003", "user_type": 1, "avatar": "", "username": "Alice Johnson"},
            {"user_id": 138, "user_no": "1004", "user_type": 1, "avatar": "", "username": "Michael Smith"},
            {"user_id": 26, "user_no": "1005", "user_type": 1, "avatar": "", "username": "Linda Brown"}
        ]
    })
}

const AGENTS: [(i64, &str, &str); 4] = [
    (137, "1003", "Alice Johnson"),
    (138, "1004", "Michael Smith"),
    (26, "1005", "Linda Brown"),
    (140, "1006", "Chen Wei"),
];

/// The channel a synthetic session has: by `id % 4`, sms, whatsapp,
/// facebook, livechat.
pub fn synthetic_channel(id: i64) -> &'static str {
    ["sms", "whatsapp", "facebook", "livechat"][id.rem_euclid(4) as usize]
}

/// Whether a synthetic session waits in a queue (has participants): every
/// third id.
pub fn synthetic_is_queued(id: i64) -> bool {
    id % 3 == 0
}

/// A deterministic Session_Info for any id below `FIRST_MISSING_ID`, varying
/// how "no value" is written (absent, `null`, `""`) as the real API does.
pub fn synthetic_session(id: i64) -> Option<Value> {
    if id == 2862 {
        return Some(spec_example_session());
    }
    if !(1..FIRST_MISSING_ID).contains(&id) {
        return None;
    }
    let empty = if id % 2 == 0 { Value::Null } else { json!("") };
    let channel = synthetic_channel(id);
    let campaign = channel != "livechat" && id % 5 == 0;
    let (user_type, user_no, channel_name, did) = match channel {
        "sms" => (
            2,
            format!("+1555{:07}", id % 10_000_000),
            "SMS Main",
            "+15550100",
        ),
        "whatsapp" => (
            3,
            format!("+4477{:08}", id % 100_000_000),
            "WhatsApp Support",
            "+15550101",
        ),
        "facebook" => (4, format!("fb-{id:012}"), "Facebook Page", "109876543210"),
        _ => (
            5,
            format!("{:032x}", id.wrapping_mul(2_654_435_761)),
            "Website Live Chat",
            "LC00000",
        ),
    };
    let mut session = json!({
        "id": id,
        "channel_type": channel,
        "channel_name": channel_name,
        "did_number": did,
        "to_number": user_no,
        "origin": if campaign { "campaign" } else { "" },
        "page_name": if channel == "facebook" { json!("Acme Support") } else { empty.clone() },
        "website_domain": if channel == "livechat" { json!("shop.example.com") } else { empty.clone() },
        "user_info": {
            "user_id": 0,
            "user_no": user_no,
            "user_type": if campaign { 8 } else { user_type },
            "avatar": "",
            "username": format!("Customer {id}"),
        },
    });
    if channel == "livechat" {
        session["pre_chat_form"] = json!({
            "name": format!("Visitor {id}"), "email": format!("visitor{id}@example.com"),
            "phone": "", "first_name": "Visitor", "last_name": id.to_string(),
        });
    } else if id % 3 == 1 {
        session["pre_chat_form"] = empty.clone();
    }
    if synthetic_is_queued(id) {
        let count = 1 + (id / 3 % 3) as usize;
        let start = (id % 4) as usize;
        let participants: Vec<Value> = (0..count)
            .map(|i| {
                let (user_id, user_no, name) = AGENTS[(start + i) % AGENTS.len()];
                json!({"user_id": user_id, "user_no": user_no, "user_type": 1, "avatar": "", "username": name})
            })
            .collect();
        session["participants"] = Value::Array(participants);
    } else if id % 2 == 1 {
        session["participants"] = empty;
    }
    Some(session)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::SessionInfo;

    #[test]
    fn every_synthetic_session_decodes_and_covers_all_channels() {
        let mut channels = std::collections::BTreeSet::new();
        let mut queued = 0;
        for id in 1..200 {
            let s = SessionInfo::decode(synthetic_session(id).unwrap()).unwrap();
            assert_eq!(s.id.get(), id);
            channels.insert(s.channel_type.unwrap());
            assert!(s.customer.is_some());
            assert_eq!(s.pending_agents.is_empty(), !synthetic_is_queued(id));
            queued += usize::from(synthetic_is_queued(id));
        }
        assert_eq!(channels.len(), 4);
        assert!(queued > 0);
    }

    #[test]
    fn ids_past_the_range_do_not_exist() {
        assert_eq!(synthetic_session(FIRST_MISSING_ID), None);
        assert_eq!(synthetic_session(0), None);
    }
}
