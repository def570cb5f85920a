//! A Slack Web API double: an axum server on 127.0.0.1:0 that answers like
//! `https://slack.com/api/` for the methods Sentinel calls, records every call, and fails on
//! demand (`ok: false` errors, HTTP 429 with `Retry-After`, HTTP 500). `views.publish` keeps
//! each user's published Home view ([`SlackDouble::home_of`]). Test code only; never
//! part of the shipped binary.
//!
//! Point the app at it with `settings.slack.api_url = double.api_url()` and
//! `SLACK_BOT_TOKEN = SlackDouble::TOKEN`; any other token gets `invalid_auth`.
//!
//! Socket Mode: `apps.connections.open` (with `SLACK_APP_TOKEN = SlackDouble::APP_TOKEN`)
//! hands out a single-use `ws://127.0.0.1:…/link/?ticket=N` on the double's own WebSocket
//! listener, which greets every connection with `hello`, records what Sentinel sends
//! ([`SlackDouble::socket_frames`], the acks) and lets a test send envelopes, `disconnect`
//! messages, or drop the connection without a closing handshake. `response_url`s on the
//! double's origin ([`SlackDouble::response_url`]) are recorded too.

#![allow(dead_code)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as WsRequest, Response as WsResponse,
};
use tokio_tungstenite::tungstenite::{http as ws_http, Message};

/// One call the double received.
#[derive(Debug, Clone)]
pub struct Call {
    /// `chat.postMessage`, `chat.update`, …
    pub method: String,
    /// The JSON body, or the form fields as a JSON object of strings.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
    /// The HTTP status it was answered with.
    pub status: u16,
    /// Slack's `error` when the answer was `ok: false` (or 429's `ratelimited`).
    pub error: Option<String>,
    /// The `ts` it created (chat.postMessage).
    pub ts: Option<String>,
}

impl Call {
    pub fn str(&self, field: &str) -> Option<&str> {
        self.body.get(field).and_then(Value::as_str)
    }
    pub fn channel(&self) -> Option<&str> {
        self.str("channel")
    }
    pub fn thread_ts(&self) -> Option<&str> {
        self.str("thread_ts")
    }
    pub fn text(&self) -> &str {
        self.str("text").unwrap_or("")
    }
    pub fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

/// A failure to answer with, for the next call of a method.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// HTTP 429 with `Retry-After: seconds` and `{"ok":false,"error":"ratelimited"}`.
    RateLimited { retry_after_secs: u64 },
    /// HTTP 200 `{"ok":false,"error":…}`.
    Error(String),
    /// An HTTP status without a Slack body (500, 502, 503).
    Status(u16),
}

#[derive(Default)]
struct Script {
    /// Failures for the next calls of a method, in order.
    next: HashMap<String, VecDeque<Failure>>,
    /// Answer every call of a method with this error, until cleared.
    always: HashMap<String, String>,
    /// Answer 429 to every `n`th call of a method (counting all its calls).
    every: HashMap<String, (u64, u64)>,
    /// Answer every call of a method only after this long.
    delays: HashMap<String, Duration>,
    counts: HashMap<String, u64>,
}

struct DoubleState {
    calls: Mutex<Vec<Call>>,
    script: Mutex<Script>,
    next_ts: AtomicU64,
    usergroups: Mutex<HashMap<String, Vec<String>>>,
    /// Where the Socket Mode listener is.
    ws_addr: std::net::SocketAddr,
    sockets: Mutex<Sockets>,
    /// Bodies POSTed to `/response/{id}`, with the id.
    responses: Mutex<Vec<(String, Value)>>,
}

/// Socket Mode's side of the double.
#[derive(Default)]
struct Sockets {
    /// Tickets handed out by `apps.connections.open`, and those already used.
    issued: HashSet<u64>,
    used: HashSet<u64>,
    next_ticket: u64,
    next_envelope: u64,
    connections: Vec<Connection>,
    /// Every text frame Sentinel sent: (connection index, the frame as JSON).
    frames: Vec<(usize, Value)>,
    /// Handshakes refused for an unknown or reused ticket, or on demand.
    refused: u64,
    /// Refuse this many more handshakes (403), whatever the ticket.
    refuse_next: u64,
    /// Drop every new connection right after its `hello` (a flapping link).
    drop_after_hello: bool,
}

struct Connection {
    ticket: u64,
    control: mpsc::UnboundedSender<Control>,
    hello: bool,
    open: bool,
    /// Sentinel closed it (a close frame or its end of TCP), not the double.
    closed_by_sentinel: bool,
}

enum Control {
    Send(String),
    /// Drop the TCP connection without a closing handshake.
    Drop,
}

/// One Socket Mode connection, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub ticket: u64,
    /// `hello` was sent.
    pub hello: bool,
    pub open: bool,
    pub closed_by_sentinel: bool,
}

pub struct SlackDouble {
    pub addr: std::net::SocketAddr,
    state: Arc<DoubleState>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for SlackDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl SlackDouble {
    /// The bot token the double accepts.
    pub const TOKEN: &'static str = "xoxb-test-token";

    /// The app-level token `apps.connections.open` accepts (and nothing else does).
    pub const APP_TOKEN: &'static str = "xapp-1-A0TEST-1-test-app-token";

    pub async fn start() -> SlackDouble {
        let ws_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let state = Arc::new(DoubleState {
            calls: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            next_ts: AtomicU64::new(1),
            usergroups: Mutex::new(HashMap::new()),
            ws_addr: ws_listener.local_addr().unwrap(),
            sockets: Mutex::new(Sockets::default()),
            responses: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            // Slack takes GET too (slack-morphism sends some methods, auth.test among them, so).
            .route("/api/{method}", post(answer).get(answer))
            .route("/response/{id}", post(record_response))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let ws_state = Arc::clone(&state);
        let server = tokio::spawn(async move {
            let sockets = async move {
                // Each connection's task ends when its socket does; the listener with the
                // double (this task is aborted on drop, taking the connections with it).
                let mut connections = tokio::task::JoinSet::new();
                while let Ok((stream, _)) = ws_listener.accept().await {
                    connections.spawn(serve_socket(Arc::clone(&ws_state), stream));
                }
            };
            let api = async move {
                axum::serve(listener, app)
                    .await
                    .expect("the slack double serves");
            };
            tokio::join!(sockets, api);
        });
        SlackDouble {
            addr,
            state,
            server,
        }
    }

    /// What `SLACK_API_URL` should be (with the trailing slash Slack's default has).
    pub fn api_url(&self) -> String {
        format!("http://{}/api/", self.addr)
    }

    /// Answers the next call of `method` with `failure` (queued after earlier ones).
    pub fn fail_next(&self, method: &str, failure: Failure) {
        let mut script = self.state.script.lock().unwrap();
        script
            .next
            .entry(method.to_owned())
            .or_default()
            .push_back(failure);
    }

    /// Answers every call of `method` with `ok: false` and `error` until [`Self::heal`].
    pub fn fail_always(&self, method: &str, error: &str) {
        let mut script = self.state.script.lock().unwrap();
        script.always.insert(method.to_owned(), error.to_owned());
    }

    /// Answers every `n`th call of `method` with 429 and `Retry-After: retry_after_secs`.
    pub fn rate_limit_every(&self, method: &str, n: u64, retry_after_secs: u64) {
        let mut script = self.state.script.lock().unwrap();
        script
            .every
            .insert(method.to_owned(), (n.max(1), retry_after_secs));
    }

    /// Answers every call of `method` only after `delay`, until [`Self::heal`].
    pub fn delay(&self, method: &str, delay: Duration) {
        let mut script = self.state.script.lock().unwrap();
        script.delays.insert(method.to_owned(), delay);
    }

    /// Forgets every scripted failure and delay.
    pub fn heal(&self) {
        let mut script = self.state.script.lock().unwrap();
        script.next.clear();
        script.always.clear();
        script.every.clear();
        script.delays.clear();
    }

    pub fn set_usergroup(&self, usergroup: &str, users: &[&str]) {
        self.state.usergroups.lock().unwrap().insert(
            usergroup.to_owned(),
            users.iter().map(|u| (*u).to_owned()).collect(),
        );
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// The calls of one method, in arrival order.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == method)
            .collect()
    }

    /// The calls of one method that Slack accepted.
    pub fn accepted(&self, method: &str) -> Vec<Call> {
        self.calls_to(method).into_iter().filter(Call::ok).collect()
    }

    /// The Home view last published for `user` (what their Home tab shows), if any.
    pub fn home_of(&self, user: &str) -> Option<Value> {
        self.accepted("views.publish")
            .into_iter()
            .rev()
            .find(|c| c.str("user_id") == Some(user))
            .and_then(|c| c.body.get("view").cloned())
    }

    /// A `response_url` on the double's origin (so Sentinel may post to it).
    pub fn response_url(&self, id: &str) -> String {
        format!("http://{}/response/{id}", self.addr)
    }

    /// What was posted to `response_url(id)`, in order.
    pub fn responses(&self, id: &str) -> Vec<Value> {
        self.state
            .responses
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| at == id)
            .map(|(_, body)| body.clone())
            .collect()
    }

    /// Every Socket Mode connection so far, in order.
    pub fn sockets(&self) -> Vec<SocketInfo> {
        let sockets = self.state.sockets.lock().unwrap();
        sockets
            .connections
            .iter()
            .map(|c| SocketInfo {
                ticket: c.ticket,
                hello: c.hello,
                open: c.open,
                closed_by_sentinel: c.closed_by_sentinel,
            })
            .collect()
    }

    /// Refuses the next `n` WebSocket handshakes with 403, valid ticket or not.
    pub fn refuse_next_handshakes(&self, n: u64) {
        self.state.sockets.lock().unwrap().refuse_next += n;
    }

    /// Drops every connection from now on right after greeting it with `hello`, without a
    /// closing handshake (a load balancer or proxy cutting each link), until
    /// [`Self::keep_sockets`].
    pub fn drop_sockets_after_hello(&self) {
        self.state.sockets.lock().unwrap().drop_after_hello = true;
    }

    /// Undoes [`Self::drop_sockets_after_hello`].
    pub fn keep_sockets(&self) {
        self.state.sockets.lock().unwrap().drop_after_hello = false;
    }

    /// Handshakes refused (unknown or reused ticket, or [`Self::refuse_next_handshakes`]).
    pub fn refused_handshakes(&self) -> u64 {
        self.state.sockets.lock().unwrap().refused
    }

    /// Waits until `n` connections have been greeted with `hello` and the newest is open.
    pub async fn wait_for_sockets(&self, n: usize, timeout: Duration) -> Vec<SocketInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let sockets = self.sockets();
            let greeted = sockets.iter().filter(|s| s.hello).count();
            if greeted >= n && sockets.last().is_some_and(|s| s.open && s.hello) {
                return sockets;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} socket mode connections; have {sockets:?}; calls: {:?}",
                    self.calls_to("apps.connections.open")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a raw frame on the newest open connection.
    pub fn send_frame(&self, frame: &Value) {
        self.control_newest(Control::Send(frame.to_string()));
    }

    /// Sends an envelope on the newest open connection; returns its `envelope_id`.
    pub fn send_envelope(
        &self,
        kind: &str,
        payload: Value,
        accepts_response_payload: bool,
    ) -> String {
        let envelope_id = {
            let mut sockets = self.state.sockets.lock().unwrap();
            sockets.next_envelope += 1;
            format!("env-{}", sockets.next_envelope)
        };
        let mut envelope = json!({
            "envelope_id": envelope_id,
            "type": kind,
            "payload": payload,
            "accepts_response_payload": accepts_response_payload,
        });
        if kind == "events_api" {
            envelope["retry_attempt"] = json!(0);
            envelope["retry_reason"] = json!("");
        }
        self.send_frame(&envelope);
        envelope_id
    }

    /// Drops the newest open connection's TCP stream without a closing handshake.
    pub fn drop_socket(&self) {
        self.control_newest(Control::Drop);
    }

    fn control_newest(&self, control: Control) {
        let sockets = self.state.sockets.lock().unwrap();
        let newest = sockets
            .connections
            .iter()
            .rev()
            .find(|c| c.open && c.hello)
            .expect("an open socket mode connection");
        newest
            .control
            .send(control)
            .expect("the connection's task is running");
    }

    /// Every text frame Sentinel sent over Socket Mode: (connection index, frame).
    pub fn socket_frames(&self) -> Vec<(usize, Value)> {
        self.state.sockets.lock().unwrap().frames.clone()
    }

    /// The acknowledgements of one envelope (there should be exactly one).
    pub fn acks_of(&self, envelope_id: &str) -> Vec<Value> {
        self.socket_frames()
            .into_iter()
            .map(|(_, frame)| frame)
            .filter(|frame| frame["envelope_id"] == envelope_id)
            .collect()
    }

    /// Waits for the acknowledgement of `envelope_id`; panics after `timeout`.
    pub async fn wait_for_ack(&self, envelope_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ack) = self.acks_of(envelope_id).into_iter().next() {
                return ack;
            }
            if Instant::now() > deadline {
                panic!(
                    "no ack for {envelope_id}; Sentinel sent {:?}",
                    self.socket_frames()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `done(calls)` holds, polling; panics with the calls after `timeout`.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return calls;
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = calls
                    .iter()
                    .map(|c| format!("{} {} {:?} {:?}", c.method, c.status, c.error, c.text()))
                    .collect();
                panic!(
                    "the slack double did not see what was expected; calls:\n{}",
                    summary.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    State(state): State<Arc<DoubleState>>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let at = Instant::now();
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let body: Value = if body.is_empty() {
        json!({})
    } else if is_json {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| json!({ "_unparsed": String::from_utf8_lossy(&body) }))
    } else {
        json!(form_fields(&body))
    };
    // apps.connections.open takes the app-level token, every other method the bot token.
    let (wanted, other) = if method == "apps.connections.open" {
        (SlackDouble::APP_TOKEN, SlackDouble::TOKEN)
    } else {
        (SlackDouble::TOKEN, SlackDouble::APP_TOKEN)
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let authorized = bearer == Some(wanted);
    let auth_error = if bearer == Some(other) {
        "not_allowed_token_type"
    } else {
        "invalid_auth"
    };

    let delay = state.script.lock().unwrap().delays.get(&method).copied();
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let failure = {
        let mut script = state.script.lock().unwrap();
        let count = {
            let count = script.counts.entry(method.clone()).or_insert(0);
            *count += 1;
            *count
        };
        if let Some(failure) = script.next.get_mut(&method).and_then(VecDeque::pop_front) {
            Some(failure)
        } else if let Some(error) = script.always.get(&method) {
            Some(Failure::Error(error.clone()))
        } else if let Some((n, secs)) = script.every.get(&method) {
            (count % n == 0).then_some(Failure::RateLimited {
                retry_after_secs: *secs,
            })
        } else {
            None
        }
    };

    let mut call = Call {
        method: method.clone(),
        body: body.clone(),
        at,
        status: 200,
        error: None,
        ts: None,
    };
    let response = if !authorized {
        call.error = Some(auth_error.to_owned());
        Json(json!({ "ok": false, "error": auth_error })).into_response()
    } else {
        match failure {
            Some(Failure::RateLimited { retry_after_secs }) => {
                call.status = 429;
                call.error = Some("ratelimited".to_owned());
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, retry_after_secs.to_string())],
                    Json(json!({ "ok": false, "error": "ratelimited" })),
                )
                    .into_response()
            }
            Some(Failure::Error(error)) => {
                call.error = Some(error.clone());
                Json(json!({ "ok": false, "error": error })).into_response()
            }
            Some(Failure::Status(status)) => {
                call.status = status;
                call.error = Some(format!("http {status}"));
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "upstream trouble",
                )
                    .into_response()
            }
            None => {
                let (answer, ts) = success(&state, &method, &body);
                if answer["ok"] != true {
                    call.error = answer["error"].as_str().map(str::to_owned);
                }
                call.ts = ts;
                Json(answer).into_response()
            }
        }
    };
    state.calls.lock().unwrap().push(call);
    response
}

/// What Slack answers when the call is fine (or the arguments are not).
fn success(state: &DoubleState, method: &str, body: &Value) -> (Value, Option<String>) {
    let field = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
    let missing = |error: &str| (json!({ "ok": false, "error": error }), None);
    match method {
        "auth.test" => (
            json!({ "ok": true, "url": "https://sentinel-test.slack.com/", "team": "Test",
                    "user": "sentinel", "team_id": "T0TEST", "user_id": "U0SENTINEL",
                    "bot_id": "B0SENTINEL" }),
            None,
        ),
        "chat.postMessage" => {
            if field("channel").is_empty() {
                return missing("channel_not_found");
            }
            if field("text").is_empty() && body.get("blocks").is_none() {
                return missing("no_text");
            }
            if let Some(blocks) = body.get("blocks") {
                if serde_json::from_value::<Vec<slack_morphism::prelude::SlackBlock>>(
                    blocks.clone(),
                )
                .is_err()
                {
                    return missing("invalid_blocks");
                }
                // The `markdown` blocks of one message share 12,000 characters.
                let markdown: usize = blocks
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|b| b["type"] == "markdown")
                    .map(|b| b["text"].as_str().map_or(0, |t| t.chars().count()))
                    .sum();
                if markdown > 12_000 {
                    return missing("msg_blocks_too_long");
                }
            }
            let n = state.next_ts.fetch_add(1, Ordering::SeqCst);
            let ts = format!("1700000000.{n:06}");
            let mut message = json!({ "type": "message", "text": field("text"), "ts": ts,
                                      "user": "U0SENTINEL", "bot_id": "B0SENTINEL" });
            if !field("thread_ts").is_empty() {
                message["thread_ts"] = json!(field("thread_ts"));
            }
            (
                json!({ "ok": true, "channel": field("channel"), "ts": ts, "message": message }),
                Some(ts),
            )
        }
        "chat.update" => {
            if field("channel").is_empty() {
                return missing("channel_not_found");
            }
            if field("ts").is_empty() {
                return missing("message_not_found");
            }
            (
                json!({ "ok": true, "channel": field("channel"), "ts": field("ts"),
                        "text": field("text"), "message": { "text": field("text") } }),
                None,
            )
        }
        "chat.postEphemeral" => {
            if field("channel").is_empty() {
                return missing("channel_not_found");
            }
            if field("user").is_empty() {
                return missing("user_not_in_channel");
            }
            let n = state.next_ts.fetch_add(1, Ordering::SeqCst);
            (
                json!({ "ok": true, "message_ts": format!("1700000000.{n:06}") }),
                None,
            )
        }
        "views.open" => {
            if field("trigger_id").is_empty() {
                return missing("invalid_trigger_id");
            }
            let Some(view) = body.get("view") else {
                return missing("invalid_arguments");
            };
            if serde_json::from_value::<slack_morphism::prelude::SlackView>(view.clone()).is_err() {
                return missing("invalid_arguments");
            }
            // Slack answers with the view as it now stands (docs.slack.dev views.open).
            let n = state.next_ts.fetch_add(1, Ordering::SeqCst);
            (
                json!({ "ok": true, "view": stateful(view, &format!("V0MODAL{n:06}")) }),
                None,
            )
        }
        "views.publish" => {
            // As docs.slack.dev/reference/methods/views.publish: a user and a `home` view
            // (at most 100 blocks, at most 250 kB), else `invalid_arguments` /
            // `view_too_large`.
            if field("user_id").is_empty() {
                return missing("invalid_arguments");
            }
            let Some(view) = body.get("view") else {
                return missing("invalid_arguments");
            };
            if view.to_string().len() > 250_000 {
                return missing("view_too_large");
            }
            let parsed = serde_json::from_value::<slack_morphism::prelude::SlackView>(view.clone());
            let blocks = view
                .get("blocks")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            match parsed {
                Ok(slack_morphism::prelude::SlackView::Home(_)) if blocks <= 100 => {}
                _ => return missing("invalid_arguments"),
            }
            let n = state.next_ts.fetch_add(1, Ordering::SeqCst);
            let published = stateful(view, &format!("V0HOME{n:06}"));
            (json!({ "ok": true, "view": published }), None)
        }
        "apps.connections.open" => {
            let mut sockets = state.sockets.lock().unwrap();
            sockets.next_ticket += 1;
            let ticket = sockets.next_ticket;
            sockets.issued.insert(ticket);
            let url = format!("ws://{}/link/?ticket={ticket}", state.ws_addr);
            (json!({ "ok": true, "url": url }), None)
        }
        "usergroups.users.list" => match state.usergroups.lock().unwrap().get(field("usergroup")) {
            Some(users) => (json!({ "ok": true, "users": users }), None),
            None => missing("no_such_subteam"),
        },
        _ => missing("unknown_method"),
    }
}

/// A view as Slack hands it back from views.open and views.publish: what was sent, plus
/// the fields Slack adds (docs.slack.dev/reference/methods/views.open, "Example response").
fn stateful(view: &Value, id: &str) -> Value {
    let mut view = view.clone();
    let hash = format!("1700000000.{}", &id[id.len() - 6..]);
    for (field, value) in [
        ("id", json!(id)),
        ("team_id", json!("T0TEST")),
        ("state", json!({ "values": {} })),
        ("hash", json!(hash)),
        ("previous_view_id", Value::Null),
        ("root_view_id", json!(id)),
        ("app_id", json!("A0SENTINEL")),
        ("external_id", json!("")),
        ("app_installed_team_id", json!("T0TEST")),
        ("bot_id", json!("B0SENTINEL")),
    ] {
        view[field] = value;
    }
    view
}

async fn record_response(
    State(state): State<Arc<DoubleState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Json<Value> {
    let body = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "_unparsed": String::from_utf8_lossy(&body) }));
    state.responses.lock().unwrap().push((id, body));
    Json(json!({ "ok": true }))
}

/// One Socket Mode connection: the ticket is checked (issued, unused), `hello` sent, then
/// Sentinel's frames are recorded and the test's controls carried out until either side ends.
async fn serve_socket(state: Arc<DoubleState>, stream: tokio::net::TcpStream) {
    let mut ticket = None;
    // The error type is tungstenite's own (an HTTP response), large or not.
    #[allow(clippy::result_large_err)]
    let check = |request: &WsRequest, response: WsResponse| -> Result<WsResponse, ErrorResponse> {
        let asked = request
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ticket="))
            .and_then(|t| t.parse::<u64>().ok());
        let mut sockets = state.sockets.lock().unwrap();
        let refuse = sockets.refuse_next > 0;
        sockets.refuse_next = sockets.refuse_next.saturating_sub(1);
        match asked {
            Some(t) if !refuse && sockets.issued.contains(&t) && sockets.used.insert(t) => {
                ticket = Some(t);
                Ok(response)
            }
            _ => {
                sockets.refused += 1;
                let mut refusal = ws_http::Response::new(Some(
                    "refused: unknown or used ticket, or on demand".into(),
                ));
                *refusal.status_mut() = ws_http::StatusCode::FORBIDDEN;
                Err(refusal)
            }
        }
    };
    let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    let ticket = ticket.expect("an accepted handshake has a ticket");
    let (control, mut controls) = mpsc::unbounded_channel();
    let index = {
        let mut sockets = state.sockets.lock().unwrap();
        sockets.connections.push(Connection {
            ticket,
            control,
            hello: false,
            open: true,
            closed_by_sentinel: false,
        });
        sockets.connections.len() - 1
    };
    let hello = json!({
        "type": "hello",
        "num_connections": 1,
        "debug_info": { "host": "slack-double", "approximate_connection_time": 3600 },
        "connection_info": { "app_id": "A0SENTINEL" },
    });
    let greeted = socket.send(Message::text(hello.to_string())).await.is_ok();
    let drop_now = {
        let mut sockets = state.sockets.lock().unwrap();
        sockets.connections[index].hello = greeted;
        sockets.drop_after_hello
    };
    let mut by_sentinel = true;
    if greeted && drop_now {
        by_sentinel = false;
    } else if greeted {
        loop {
            tokio::select! {
                frame = socket.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let frame = serde_json::from_str(text.as_str())
                            .unwrap_or_else(|_| json!({ "_unparsed": text.as_str() }));
                        state.sockets.lock().unwrap().frames.push((index, frame));
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
                control = controls.recv() => match control {
                    Some(Control::Send(text)) => {
                        if socket.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    Some(Control::Drop) | None => {
                        by_sentinel = false;
                        break;
                    }
                },
            }
        }
    }
    // Dropped here: the TCP stream closes with no closing handshake from the double.
    drop(socket);
    let mut sockets = state.sockets.lock().unwrap();
    let connection = &mut sockets.connections[index];
    connection.open = false;
    connection.closed_by_sentinel = by_sentinel;
}

/// Decodes an `application/x-www-form-urlencoded` body.
fn form_fields(body: &[u8]) -> HashMap<String, String> {
    fn decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(byte) => {
                            out.push(byte);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                byte => out.push(byte),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(key), decode(value))
        })
        .collect()
}
