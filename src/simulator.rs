//! A local stand-in for the Yeastar API (`simulate-pbx`, `demo`, tests and
//! benchmarks): `get_token`, `refresh_token`, `del_token` and
//! `message_session/get` and `message_session/query` as the spec describes
//! them, `message_session/list` (`list`: paging and filters), with
//! deterministic synthetic sessions, token expiry and the 8-token cap, the
//! IP block after 5 refused logins, latency, errors injected at random or on
//! command, older firmware that lacks `query`, and sessions that change on
//! the PBX without any event (picked up, closed).

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

mod list;

use list::Lifecycle;
pub use list::ListPaging;

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
    /// `message_session/list` lists synthetic sessions 1 to this (besides
    /// every session set with `set_session`); 0 lists none of them.
    pub listed_sessions: u64,
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
            listed_sessions: defaults::SIMULATOR_LISTED_SESSIONS,
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
    /// This HTTP status with an empty body and `Retry-After: <seconds>`.
    HttpStatusRetryAfter(u16, u64),
    /// Answer normally, after this extra delay.
    Delay(Duration),
}

/// Whether the firmware serves `message_session/query`, and how older
/// firmware says it does not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueryInterface {
    #[default]
    Supported,
    /// No such route: HTTP 404 from the web server, with an HTML page.
    Http404,
    /// The API answers errcode 10001 INTERFACE NOT EXISTED (HTTP 200).
    InterfaceNotExisted,
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
    /// Session ids asked for, over `get` (one per call) and `query`.
    pub ids_requested: u64,
    /// `message_session/list` calls (one per page).
    pub list_requests: u64,
    /// Access tokens valid now.
    pub live_tokens: usize,
}

#[derive(Default)]
struct SimState {
    access: HashMap<String, Instant>,
    refresh: HashMap<String, (Instant, String)>,
    overrides: HashMap<i64, Option<Value>>,
    /// What changed in a session without an event (picked up, closed), and
    /// its newest message, as `list` shows them.
    lifecycle: HashMap<i64, Lifecycle>,
    /// The id the next message on this PBX gets (pick-ups and closes write
    /// a system message into their session).
    next_msg_id: i64,
    list_paging: ListPaging,
    /// Forced answers of the next `get`, `query` or `list` calls, one per
    /// call.
    session_faults: VecDeque<Fault>,
    login_faults: VecDeque<Fault>,
    query_interface: QueryInterface,
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
            .route(
                &format!("{API_ROOT}/message_session/query"),
                get(message_sessions),
            )
            .route(
                &format!("{API_ROOT}/message_session/list"),
                get(list::message_session_list),
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

    /// Answer this Session_Info for `id` from now on (and list it).
    pub fn set_session(&self, id: i64, session: Value) {
        self.state().overrides.insert(id, Some(session));
    }

    /// An agent (`user_id`) picks the session up on the PBX, which sends no
    /// event for it: from now on its Session_Info has no `participants`,
    /// and `list` shows it picked up, with a newer `last_msg_id` (the
    /// system message a pick-up writes). False if the session does not
    /// exist.
    pub fn pick_up(&self, id: i64, agent_user_id: i64) -> bool {
        self.state().change_without_event(id, |lifecycle| {
            lifecycle.picked_up_by = Some(agent_user_id);
        })
    }

    /// The session is closed on the PBX, without an event: nobody is
    /// pending any more, `get` still answers it, and `list` shows it
    /// closed. False if the session does not exist.
    pub fn close_session(&self, id: i64) -> bool {
        self.state()
            .change_without_event(id, |lifecycle| lifecycle.closed = true)
    }

    /// How `message_session/list` pages from now on.
    pub fn set_list_paging(&self, paging: ListPaging) {
        self.state().list_paging = paging;
    }

    /// Answer 60001 for `id` from now on.
    pub fn remove_session(&self, id: i64) {
        self.state().overrides.insert(id, None);
    }

    /// Force the answers of the next `message_session/get`, `/query` or
    /// `/list` requests, one fault per request, in the order they arrive.
    pub fn fail_next_session_requests(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().session_faults.extend(faults);
    }

    /// Play a firmware with or without `message_session/query` from now on.
    pub fn set_query_interface(&self, interface: QueryInterface) {
        self.state().query_interface = interface;
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

    /// List synthetic sessions 1 to `n` from now on (see
    /// `SimulatorSettings::listed_sessions`).
    pub fn set_listed_sessions(&self, n: u64) {
        self.settings().listed_sessions = n;
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

impl SimState {
    /// Applies a change the PBX makes without an event: the session's
    /// pending agents are gone (a pick-up or a close ends the wait) and it
    /// gets a newer last message. False if the session does not exist.
    fn change_without_event(&mut self, id: i64, change: impl FnOnce(&mut Lifecycle)) -> bool {
        let Some(mut session) = session_of(self, id) else {
            return false;
        };
        if let Some(object) = session.as_object_mut() {
            object.remove("participants");
        }
        self.overrides.insert(id, Some(session));
        let message = self.new_message_id();
        let lifecycle = self.lifecycle.entry(id).or_default();
        lifecycle.last_msg_id = Some(message);
        change(lifecycle);
        true
    }

    /// A message id above every synthetic session's last one.
    fn new_message_id(&mut self) -> i64 {
        self.next_msg_id = self.next_msg_id.max(list::FIRST_NEW_MESSAGE_ID) + 1;
        self.next_msg_id
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
        Fault::HttpStatusRetryAfter(status, seconds) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let headers = [
                (header::CONNECTION, "close".to_owned()),
                (header::RETRY_AFTER, seconds.to_string()),
            ];
            Some((status, headers).into_response())
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

/// What `get`, `query` and `list` check before they answer, in the real PBX's
/// order: the forced fault or the configured latency, the User-Agent, the
/// token, then injected errors. `Ok` with the state to answer from.
async fn admit<'a>(
    shared: &'a Shared,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    fault: Option<Fault>,
) -> Result<MutexGuard<'a, SimState>, Response> {
    pause(shared, fault.as_ref()).await;
    if !headers.contains_key(header::USER_AGENT) {
        return Err(errcode(40002, "PARAMETER ERROR"));
    }
    let state = lock(&shared.state);
    let token_valid = query
        .get("access_token")
        .and_then(|t| state.access.get(t))
        .is_some_and(|expiry| *expiry > Instant::now());
    if !token_valid {
        return Err(errcode(10004, "TOKEN EXPIRED"));
    }
    if let Some(response) = fault.as_ref().and_then(fault_response) {
        return Err(response);
    }
    let error_rate = lock(&shared.settings).error_rate;
    if error_rate > 0.0 && rand::rng().random_bool(error_rate.clamp(0.0, 1.0)) {
        return Err(match rand::rng().random_range(0..3) {
            0 => errcode(-2, "INTERNAL SERVER ERROR"),
            1 => errcode(70082, "OVERLOAD_TASK_RUNNING"),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONNECTION, "close")],
            )
                .into_response(),
        });
    }
    Ok(state)
}

/// The Session_Info the PBX holds for `id`, if any.
fn session_of(state: &SimState, id: i64) -> Option<Value> {
    match state.overrides.get(&id) {
        Some(overridden) => overridden.clone(),
        None => synthetic_session(id),
    }
}

fn parse_id(id: &str) -> Option<i64> {
    id.parse::<i64>().ok().filter(|id| *id > 0)
}

/// errcode 40002 naming the parameters that are missing or invalid, each
/// with what it must be.
fn invalid_parameters(invalid: &[(&str, &str)]) -> Response {
    let list: Vec<Value> = invalid
        .iter()
        .map(|(name, validation)| json!({"name": name, "validation": validation}))
        .collect();
    answer(json!({
        "errcode": 40002, "errmsg": "PARAMETER ERROR",
        "invalid_param_list": list,
    }))
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
    let state = match admit(&shared, &headers, &query, fault).await {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    let Some(id) = query.get("id").and_then(|id| parse_id(id)) else {
        return errcode(40002, "PARAMETER ERROR");
    };
    let session = session_of(&state, id);
    drop(state);
    match session {
        Some(list) => answer(json!({"errcode": 0, "errmsg": "SUCCESS", "list": list})),
        None => errcode(60001, "DATA NOT FOUND"),
    }
}

/// `message_session/query?ids=1,2,3`: `list` is an array of the sessions
/// the PBX knows among `ids`, each once, in the order asked; an unknown id
/// is simply absent.
async fn message_sessions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let asked = query
        .get("ids")
        .map(|ids| ids.split(',').collect::<Vec<_>>());
    let (fault, interface) = {
        let mut state = lock(&shared.state);
        state.stats.query_requests += 1;
        let asked_ids = asked.iter().flatten().filter(|id| !id.trim().is_empty());
        state.stats.ids_requested += asked_ids.count() as u64;
        let interface = state.query_interface;
        let fault = (interface == QueryInterface::Supported)
            .then(|| state.session_faults.pop_front())
            .flatten();
        (fault, interface)
    };
    match interface {
        QueryInterface::Supported => {}
        QueryInterface::Http404 => {
            pause(&shared, None).await;
            return (
                StatusCode::NOT_FOUND,
                [
                    (header::CONNECTION, "close"),
                    (header::CONTENT_TYPE, "text/html"),
                ],
                "<html><body><h1>404 Not Found</h1></body></html>",
            )
                .into_response();
        }
        QueryInterface::InterfaceNotExisted => {
            pause(&shared, None).await;
            return errcode(10001, "INTERFACE NOT EXISTED");
        }
    }
    let state = match admit(&shared, &headers, &query, fault).await {
        Ok(state) => state,
        Err(refused) => return refused,
    };
    let Some(ids) = asked.and_then(|ids| ids.into_iter().map(parse_id).collect::<Option<Vec<_>>>())
    else {
        return invalid_parameters(&[("ids", "required, comma-separated ids")]);
    };
    let mut seen = std::collections::HashSet::new();
    let list: Vec<Value> = ids
        .into_iter()
        .filter(|id| seen.insert(*id))
        .filter_map(|id| session_of(&state, id))
        .collect();
    drop(state);
    answer(json!({"errcode": 0, "errmsg": "SUCCESS", "list": list}))
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
