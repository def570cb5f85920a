//! A double of an OpenAI-compatible chat-completions endpoint (OpenAI, OpenRouter), on
//! 127.0.0.1 port 0, for the LLM analyzer's tests. Test-only: nothing here is in the binary.
//!
//! Each test scripts it: a queue of [`Reply`]s (status, body, delay), one consumed per
//! request, and every request recorded (headers, JSON body, arrival time) for assertions.
//! Configured with a key, it checks `Authorization: Bearer <key>` first and answers 401 the
//! way OpenAI and OpenRouter do when it differs, without consuming a reply.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    /// How long the double waits before answering (to provoke timeouts).
    pub delay: Duration,
}

impl Reply {
    /// A 200 chat completion whose assistant message is `content`.
    pub fn content(content: impl Into<String>) -> Self {
        Reply {
            status: 200,
            body: json!({
                "id": "chatcmpl-double",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": "",
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": content.into()},
                    "finish_reason": "stop",
                }],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
            }),
            delay: Duration::ZERO,
        }
    }

    /// An error status with an OpenAI-shaped error body.
    pub fn status(status: u16) -> Self {
        Reply {
            status,
            body: json!({"error": {
                "message": format!("scripted HTTP {status}"),
                "type": "server_error",
            }}),
            delay: Duration::ZERO,
        }
    }

    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// One request as the double received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub at: Instant,
    pub headers: HeaderMap,
    /// The JSON body (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl RecordedRequest {
    pub fn authorization(&self) -> Option<&str> {
        self.headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
    }

    /// The content of the first message with this role (`system`, `user`).
    pub fn message(&self, role: &str) -> String {
        self.body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["role"] == role)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| panic!("no {role} message in {}", self.body))
            .to_owned()
    }
}

struct DoubleState {
    /// The key clients must present; `None` accepts any request.
    api_key: Option<String>,
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<RecordedRequest>>,
}

pub struct LlmDouble {
    /// The base URL to configure as `llm.url`: `http://127.0.0.1:<port>/v1`.
    pub url: String,
    state: Arc<DoubleState>,
    /// Aborted on drop so the listener does not outlive the test.
    server: tokio::task::JoinHandle<()>,
}

impl LlmDouble {
    /// Starts the double; with `Some(key)` it requires `Authorization: Bearer <key>`.
    pub async fn start(api_key: Option<&str>) -> Self {
        let state = Arc::new(DoubleState {
            api_key: api_key.map(str::to_owned),
            replies: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
        });
        let router = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr: SocketAddr = listener.local_addr().expect("a local address");
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the LLM double serves");
        });
        LlmDouble {
            url: format!("http://{addr}/v1"),
            state,
            server,
        }
    }

    /// Queues replies, answered in order, one per request.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state
            .replies
            .lock()
            .expect("replies lock")
            .extend(replies);
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("requests lock").clone()
    }
}

impl Drop for LlmDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn completions(
    State(state): State<Arc<DoubleState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].clone();
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(RecordedRequest {
            at: Instant::now(),
            headers: headers.clone(),
            body,
        });

    if let Some(key) = &state.api_key {
        let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
        if presented != Some(format!("Bearer {key}").as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": {
                    "message": "Incorrect API key",
                    "type": "invalid_request_error",
                }})),
            )
                .into_response();
        }
    }

    let reply = state.replies.lock().expect("replies lock").pop_front();
    let Some(mut reply) = reply else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": {"message": "the double has no scripted reply", "type": "server_error"}})),
        )
            .into_response();
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    if reply.body["object"] == "chat.completion" {
        reply.body["model"] = model;
    }
    let status = StatusCode::from_u16(reply.status).expect("a valid scripted status");
    (status, Json(reply.body)).into_response()
}
