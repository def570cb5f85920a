//! A Slack Web API double: an axum server on 127.0.0.1:0 that answers like
//! `https://slack.com/api/` for the methods Sentinel calls, records every call, and fails on
//! demand (`ok: false` errors, HTTP 429 with `Retry-After`, HTTP 500). Test code only; never
//! part of the shipped binary.
//!
//! Point the app at it with `settings.slack.api_url = double.api_url()` and
//! `SLACK_BOT_TOKEN = SlackDouble::TOKEN`; any other token gets `invalid_auth`.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

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
    counts: HashMap<String, u64>,
}

struct DoubleState {
    calls: Mutex<Vec<Call>>,
    script: Mutex<Script>,
    next_ts: AtomicU64,
    usergroups: Mutex<HashMap<String, Vec<String>>>,
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

    pub async fn start() -> SlackDouble {
        let state = Arc::new(DoubleState {
            calls: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            next_ts: AtomicU64::new(1),
            usergroups: Mutex::new(HashMap::new()),
        });
        let app = Router::new()
            .route("/api/{method}", post(answer))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("the slack double serves");
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

    /// Forgets every scripted failure.
    pub fn heal(&self) {
        let mut script = self.state.script.lock().unwrap();
        script.next.clear();
        script.always.clear();
        script.every.clear();
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
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", SlackDouble::TOKEN));

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
        call.error = Some("invalid_auth".to_owned());
        Json(json!({ "ok": false, "error": "invalid_auth" })).into_response()
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
            (
                json!({ "ok": true, "view": { "id": "V0TEST", "type": "modal" } }),
                None,
            )
        }
        "usergroups.users.list" => match state.usergroups.lock().unwrap().get(field("usergroup")) {
            Some(users) => (json!({ "ok": true, "users": users }), None),
            None => missing("no_such_subteam"),
        },
        _ => missing("unknown_method"),
    }
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
