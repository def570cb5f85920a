//! A PagerDuty Events API v2 double: an axum server on 127.0.0.1:0 that answers
//! `POST /v2/enqueue` and `POST /v2/change/enqueue` like `https://events.pagerduty.com/v2/`
//! (202 `{"status":"success","message":"Event processed","dedup_key":…}`; 400
//! `{"status":"invalid event","message":"Event object is invalid","errors":[…]}` for a body
//! the documented API refuses; 429 when told to), records every request, and keeps
//! PagerDuty's alerts by `dedup_key` (a trigger opens one unless one is open, a resolve
//! closes it). Test code only.
//!
//! Point the app at it with `settings.pagerduty.events_url = double.events_url()` and
//! `PAGERDUTY_ROUTING_KEY = PagerDutyDouble::ROUTING_KEY`; any other key is refused.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// One request the double received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `enqueue` or `change/enqueue`.
    pub endpoint: String,
    pub body: Value,
    /// The HTTP status it was answered with.
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn accepted(&self) -> bool {
        self.status == 202
    }
    pub fn action(&self) -> &str {
        if self.endpoint == "change/enqueue" {
            return "change";
        }
        self.body["event_action"].as_str().unwrap_or("")
    }
    pub fn dedup_key(&self) -> Option<&str> {
        self.body["dedup_key"].as_str()
    }
    /// The Sentinel incident an event is about: its dedup_key, or a change event's details.
    pub fn incident(&self) -> Option<&str> {
        self.dedup_key()
            .or_else(|| self.body["payload"]["custom_details"]["incident"].as_str())
    }
    pub fn summary(&self) -> &str {
        self.body["payload"]["summary"].as_str().unwrap_or("")
    }
}

/// An answer to give instead of processing the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 429 `{"status":"throttle event","message":"Requests for this service are arriving too quickly. Please retry later."}`.
    RateLimited,
    /// An HTTP status with a plain body (500, 502, 503).
    Status(u16),
    /// 400 with these `errors`, as for an invalid event.
    Invalid(Vec<String>),
}

#[derive(Default)]
struct DoubleState {
    received: Mutex<Vec<Received>>,
    next: Mutex<VecDeque<Answer>>,
    /// Answer every request with 503 while set.
    down: Mutex<bool>,
    /// dedup_key → open (true) or resolved.
    alerts: Mutex<HashMap<String, bool>>,
    /// How many alerts triggers opened, per dedup_key.
    opened: Mutex<HashMap<String, u32>>,
}

pub struct PagerDutyDouble {
    addr: std::net::SocketAddr,
    state: Arc<DoubleState>,
    _server: tokio::task::JoinHandle<()>,
}

impl PagerDutyDouble {
    /// The routing key the double accepts (32 characters, as PagerDuty's).
    pub const ROUTING_KEY: &'static str = "R0SENTINELTESTROUTINGKEY00000001";

    pub async fn start() -> Self {
        let state = Arc::new(DoubleState::default());
        let app = Router::new()
            .route("/v2/enqueue", post(enqueue))
            .route("/v2/change/enqueue", post(change_enqueue))
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        PagerDutyDouble {
            addr,
            state,
            _server: server,
        }
    }

    /// The base URL to configure as `[pagerduty] events_url`.
    pub fn events_url(&self) -> String {
        format!("http://{}/v2/", self.addr)
    }

    /// Answers the next requests with these, in order, before processing any again.
    pub fn answer_next(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.next.lock().unwrap().extend(answers);
    }

    /// While down, every request gets a 503.
    pub fn set_down(&self, down: bool) {
        *self.state.down.lock().unwrap() = down;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// The accepted events about one Sentinel incident, in the order they arrived.
    pub fn accepted_for(&self, incident: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.accepted() && r.incident() == Some(incident))
            .collect()
    }

    /// How many PagerDuty alerts triggers for `dedup_key` opened.
    pub fn alerts_opened(&self, dedup_key: &str) -> u32 {
        self.state
            .opened
            .lock()
            .unwrap()
            .get(dedup_key)
            .copied()
            .unwrap_or(0)
    }

    /// Whether PagerDuty's alert for `dedup_key` is open.
    pub fn alert_open(&self, dedup_key: &str) -> bool {
        self.state
            .alerts
            .lock()
            .unwrap()
            .get(dedup_key)
            .copied()
            .unwrap_or(false)
    }

    /// Polls the received requests until `done` holds; panics with them after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if done(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the PagerDuty double never saw what was expected; it received: {received:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn enqueue(State(state): State<Arc<DoubleState>>, body: Bytes) -> Response {
    handle(&state, "enqueue", &body)
}

async fn change_enqueue(State(state): State<Arc<DoubleState>>, body: Bytes) -> Response {
    handle(&state, "change/enqueue", &body)
}

fn handle(state: &DoubleState, endpoint: &str, raw: &[u8]) -> Response {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let scripted = state.next.lock().unwrap().pop_front();
    let down = *state.down.lock().unwrap();
    let (status, answer) = if down {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            json!("Service Unavailable"),
        )
    } else {
        match scripted {
            Some(Answer::RateLimited) => (
                StatusCode::TOO_MANY_REQUESTS,
                json!({"status": "throttle event", "message": "Requests for this service are arriving too quickly. Please retry later."}),
            ),
            Some(Answer::Status(code)) => (
                StatusCode::from_u16(code).unwrap(),
                json!("Internal Server Error"),
            ),
            Some(Answer::Invalid(errors)) => (StatusCode::BAD_REQUEST, invalid(errors)),
            None => process(state, endpoint, &body),
        }
    };
    state.received.lock().unwrap().push(Received {
        endpoint: endpoint.to_owned(),
        body,
        status: status.as_u16(),
        at: Instant::now(),
    });
    (status, Json(answer)).into_response()
}

fn invalid(errors: Vec<String>) -> Value {
    json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors})
}

/// Checks a body as the documented API does, then applies it to the alerts.
fn process(state: &DoubleState, endpoint: &str, body: &Value) -> (StatusCode, Value) {
    if body.is_null() {
        return (
            StatusCode::BAD_REQUEST,
            invalid(vec!["Malformed JSON".to_owned()]),
        );
    }
    let mut errors = Vec::new();
    if body["routing_key"].as_str() != Some(PagerDutyDouble::ROUTING_KEY) {
        errors.push("Invalid routing key".to_owned());
    }
    fn text(field: &Value) -> Option<&str> {
        field.as_str().filter(|s| !s.trim().is_empty())
    }
    let summary = &body["payload"]["summary"];
    match text(summary) {
        None if endpoint == "change/enqueue" || body["event_action"] == "trigger" => {
            errors.push("'payload.summary' is missing or blank".to_owned())
        }
        Some(s) if s.chars().count() > 1024 => {
            errors.push("'payload.summary' is longer than 1024 characters".to_owned())
        }
        _ => {}
    }
    if endpoint == "change/enqueue" {
        if !errors.is_empty() {
            return (StatusCode::BAD_REQUEST, invalid(errors));
        }
        return (
            StatusCode::ACCEPTED,
            json!({"status": "success", "message": "Change event processed"}),
        );
    }
    let action = body["event_action"].as_str().unwrap_or("");
    let dedup_key = body["dedup_key"].as_str().map(str::to_owned);
    match action {
        "trigger" => {
            if text(&body["payload"]["source"]).is_none() {
                errors.push("'payload.source' is missing or blank".to_owned());
            }
            let severity = body["payload"]["severity"].as_str().unwrap_or("");
            if !["critical", "error", "warning", "info"].contains(&severity) {
                errors.push("'payload.severity' is invalid (must be one of the following: 'critical', 'warning', 'error' or 'info')".to_owned());
            }
        }
        "acknowledge" | "resolve" => {
            if dedup_key.is_none() {
                errors.push("'dedup_key' is missing or blank".to_owned());
            }
        }
        _ => errors.push("'event_action' is missing or invalid".to_owned()),
    }
    if dedup_key.as_ref().is_some_and(|k| k.len() > 255) {
        errors.push("'dedup_key' is longer than 255 characters".to_owned());
    }
    if !errors.is_empty() {
        return (StatusCode::BAD_REQUEST, invalid(errors));
    }
    let key = dedup_key.unwrap_or_else(|| format!("generated-{}", rand_key()));
    let mut alerts = state.alerts.lock().unwrap();
    match action {
        "trigger" => {
            if !alerts.get(&key).copied().unwrap_or(false) {
                *state.opened.lock().unwrap().entry(key.clone()).or_default() += 1;
            }
            alerts.insert(key.clone(), true);
        }
        // A resolve of no open alert is dropped, as PagerDuty does.
        "resolve" => {
            if let Some(open) = alerts.get_mut(&key) {
                *open = false;
            }
        }
        _ => {}
    }
    (
        StatusCode::ACCEPTED,
        json!({"status": "success", "message": "Event processed", "dedup_key": key}),
    )
}

fn rand_key() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
