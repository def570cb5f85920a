//! The Slack endpoints: `POST /slack/events`, `/slack/commands` and `/slack/interactions`,
//! all behind the one verification layer ([`verify::require_signature`]).
//!
//! In: verified requests. Out: an acknowledgement within Slack's three seconds, always;
//! whatever takes longer goes on in a spawned task and answers later (a `response_url`, the
//! outbox, an ephemeral message). Without a signing secret every route answers 404
//! `{"error":"slack is not configured"}`.
//!
//! [`Inbound`] is what the handlers share: the application, the role mapping (with its user
//! group cache) and the monitor for `/sentinel check`.
//!
//! Each kind has one entry point that takes the parsed payload and returns an [`Answer`]:
//! [`events::receive`], [`commands::receive`] and [`interactions::receive`]. The routes here
//! only read the HTTP request into that payload and turn the answer into a response
//! ([`respond`]); Socket Mode ([`socket_mode`](crate::slack::socket_mode)) calls the same
//! functions with the envelopes' payloads and puts the answer in its acknowledgement.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::pipeline::monitor::Monitor;
use crate::slack::blocks::Rendered;
use crate::slack::roles::Roles;
use crate::slack::verify::{self, Verifier};
use crate::slack::{commands, events, interactions, Slack};
use crate::web::error::ApiError;
use crate::web::{Access, AppState, RouteSpec};

/// How long a handler may work before it must answer Slack anyway: well inside Slack's
/// three seconds, leaving room for the network.
pub const ACK_BUDGET: Duration = Duration::from_millis(2000);

/// A handler's answer, whichever way the payload came. `None`: a bare acknowledgement (HTTP
/// 200 without a body; a Socket Mode ack without `payload`). `Some(body)`: a JSON answer
/// (the HTTP body; the Socket Mode ack's `payload`), such as a slash command's reply or a
/// dialog's `response_action`.
pub type Answer = Option<Value>;

/// A payload a handler cannot use. Over HTTP a 400 with the reason; over Socket Mode it is
/// logged and acknowledged anyway (a redelivery would not read any better).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPayload(pub String);

/// Reads an `application/x-www-form-urlencoded` body into `T` exactly as axum's `Form`
/// extractor does (same parser, same error text), without I/O: the slash command's fields and
/// the interaction's `payload` field come through here. The content type is the route's
/// business ([`axum::extract::RawForm`]).
pub fn form_fields<T: DeserializeOwned>(body: &[u8]) -> Result<T, BadPayload> {
    let deserializer = serde_urlencoded::Deserializer::new(form_urlencoded::parse(body));
    serde_path_to_error::deserialize(deserializer)
        .map_err(|e| BadPayload(format!("Failed to deserialize form body: {e}")))
}

/// An entry point's result as the HTTP response Slack gets.
pub fn respond(answer: Result<Answer, BadPayload>) -> Response {
    match answer {
        Ok(None) => StatusCode::OK.into_response(),
        Ok(Some(body)) => Json(body).into_response(),
        Err(BadPayload(why)) => ApiError::bad_request(why).into_response(),
    }
}

/// What the Slack handlers share; built once with the router (and once for Socket Mode).
pub struct Inbound {
    pub app: AppState,
    /// Slack's client and outbox, when `SLACK_BOT_TOKEN` is set.
    pub slack: Option<Arc<Slack>>,
    pub roles: Roles,
    /// Runs `/sentinel check` cycles.
    pub monitor: Arc<Monitor>,
    /// Posts follow-ups to `response_url`s.
    http: reqwest::Client,
    /// The `/sentinel status` reply kept ready (see [`Inbound::status_reply`]).
    status: std::sync::Mutex<Option<ReadyReply>>,
}

/// A reply kept ready: what it was made from and when. Its blocks are shared and its HTTP
/// body serialised once, so serving it again copies no Block Kit.
struct ReadyReply {
    version: u64,
    made: std::time::Instant,
    reply: Reply,
}

/// How long a ready status reply is served while nothing on this replica changed: bounds
/// how late a change made on another replica shows.
const READY_FOR: Duration = Duration::from_secs(1);

impl Inbound {
    pub fn new(app: AppState, monitor: Arc<Monitor>, slack: Option<Arc<Slack>>) -> Arc<Self> {
        let api = slack.as_ref().map(|slack| slack.api.clone());
        let roles = Roles::new(&app.sentinel.settings().rbac, api);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a reqwest client with a timeout builds");
        Arc::new(Inbound {
            app,
            slack,
            roles,
            monitor,
            http,
            status: std::sync::Mutex::new(None),
        })
    }

    /// The `/sentinel status` reply: the same for everyone, and it changes only when a
    /// reading or an incident does, so it is made once per change (at most [`READY_FOR`]
    /// old) instead of reading the store and rendering Block Kit on every request. `make`
    /// builds it afresh; a reply that says something failed is not kept.
    pub async fn status_reply<F>(&self, make: impl FnOnce() -> F) -> Reply
    where
        F: Future<Output = (Reply, bool)>,
    {
        let version = self.app.sentinel.state_version();
        {
            let ready = self.status.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ready) = ready.as_ref() {
                if ready.version == version && ready.made.elapsed() < READY_FOR {
                    return ready.reply.clone();
                }
            }
        }
        let (reply, keep) = make().await;
        if !keep {
            return reply;
        }
        let reply = reply.prepared();
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReadyReply {
            version,
            made: std::time::Instant::now(),
            reply: reply.clone(),
        });
        reply
    }

    /// Whether a payload's `api_app_id` is ours: always when `[slack] app_id` is empty or the
    /// payload carries none.
    pub fn is_our_app(&self, api_app_id: Option<&str>) -> bool {
        let ours = &self.app.sentinel.settings().slack.app_id;
        match api_app_id {
            Some(theirs) if !ours.is_empty() => theirs == ours,
            _ => true,
        }
    }

    /// Posts a message to a `response_url`. Only Slack's own hooks (or, for tests and
    /// proxies, the configured Web API's origin) are ever called.
    pub async fn post_to_response_url(&self, url: &str, body: &Value) {
        if !response_url_allowed(url, &self.app.sentinel.settings().slack.api_url) {
            tracing::warn!(url, "not posting to a response_url outside Slack");
            return;
        }
        match self.http.post(url).json(body).send().await {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                tracing::warn!(status = %response.status(), "slack refused a response_url post")
            }
            Err(e) => tracing::warn!(error = %e, "cannot post to a response_url"),
        }
    }

    /// Posts a reply to a person in a thread. Sent at once, not behind the channel's card
    /// and thread traffic in the outbox (SPEC §12.1: replies to people never wait behind
    /// cards); only when that call fails (429, 5xx, a network error, `ok: false`) does it go
    /// through the outbox, which retries, paces and parks it there, so nothing is lost.
    pub async fn post_in_thread(&self, channel: &str, thread_ts: &str, reply: &Reply) {
        let Some(slack) = &self.slack else {
            tracing::warn!("no SLACK_BOT_TOKEN: cannot answer in the thread");
            return;
        };
        let sent = slack
            .api
            .post_message(channel, Some(thread_ts), &reply.text, &reply.blocks[..])
            .await;
        let Err(e) = sent else { return };
        tracing::warn!(error = %e, channel, "a reply could not be sent at once; queued in the outbox");
        let rendered = Rendered {
            text: reply.text.clone(),
            blocks: reply.blocks.to_vec(),
        };
        if let Err(e) = slack.outbox.post(channel, Some(thread_ts), &rendered).await {
            tracing::error!(error = %e, "cannot queue a thread reply");
        }
    }

    /// Shows `text` to `user` alone in `channel` (chat.postEphemeral), or through
    /// `response_url` when there is no bot token.
    pub async fn tell(
        &self,
        channel: Option<&str>,
        user: &str,
        response_url: Option<&str>,
        text: &str,
    ) {
        if let (Some(slack), Some(channel)) = (&self.slack, channel) {
            match slack.api.post_ephemeral(channel, user, text, &[]).await {
                Ok(()) => return,
                Err(e) => tracing::warn!(error = %e, "chat.postEphemeral failed"),
            }
        }
        if let Some(url) = response_url {
            let body = json!({
                "response_type": "ephemeral",
                "replace_original": false,
                "text": text,
            });
            self.post_to_response_url(url, &body).await;
        }
    }
}

/// Who sees a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Only the person who asked (questions, refusals).
    Ephemeral,
    /// Everyone in the channel (changes).
    InChannel,
}

/// An answer to a command, before it is sent one way or another. Cheap to clone: the blocks
/// are shared (change them with `Arc::make_mut`).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub visibility: Visibility,
    pub text: String,
    pub blocks: Arc<Vec<Value>>,
    /// The HTTP body, serialised once for a reply served many times ([`Reply::prepared`]).
    body: Option<axum::body::Bytes>,
}

/// The slash-command / `response_url` message body, borrowed from a [`Reply`].
#[derive(serde::Serialize)]
struct ReplyBody<'a> {
    response_type: &'static str,
    text: &'a str,
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    blocks: &'a [Value],
}

impl Reply {
    pub fn ephemeral(text: impl Into<String>) -> Self {
        Self::new(Visibility::Ephemeral, text.into(), Vec::new())
    }

    pub fn in_channel(text: impl Into<String>) -> Self {
        Self::new(Visibility::InChannel, text.into(), Vec::new())
    }

    pub fn rendered(visibility: Visibility, rendered: Rendered) -> Self {
        Self::new(visibility, rendered.text, rendered.blocks)
    }

    pub fn new(visibility: Visibility, text: String, blocks: Vec<Value>) -> Self {
        Reply {
            visibility,
            text,
            blocks: Arc::new(blocks),
            body: None,
        }
    }

    fn body(&self) -> ReplyBody<'_> {
        ReplyBody {
            response_type: match self.visibility {
                Visibility::Ephemeral => "ephemeral",
                Visibility::InChannel => "in_channel",
            },
            text: &self.text,
            blocks: &self.blocks,
        }
    }

    /// The slash-command / `response_url` message body.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.body()).unwrap_or_default()
    }

    /// The same reply with its HTTP body serialised now, for a reply kept and served again.
    pub fn prepared(mut self) -> Self {
        self.body = serde_json::to_vec(&self.body())
            .ok()
            .map(axum::body::Bytes::from);
        self
    }

    /// The HTTP answer: the body kept ready when there is one, else serialised now,
    /// straight from the reply (no intermediate JSON value).
    pub fn into_response(self) -> Response {
        let body = match self.body {
            Some(body) => body,
            None => match serde_json::to_vec(&self.body()) {
                Ok(body) => axum::body::Bytes::from(body),
                Err(e) => {
                    return ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot serialise a reply: {e}"),
                    )
                    .into_response()
                }
            },
        };
        (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    }
}

/// Runs `work` in its own task and waits for it up to [`ACK_BUDGET`]. `Some(output)` when it
/// finished in time; otherwise `None`, and the task hands its output to `late` when it is
/// done, so the caller can acknowledge Slack now and nothing is lost.
pub async fn within_budget<T, W, L, LF>(work: W, late: L) -> Option<T>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send,
{
    within(ACK_BUDGET, work, late).await
}

async fn within<T, W, L, LF>(budget: Duration, work: W, late: L) -> Option<T>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send,
{
    let (done, result) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let output = work.await;
        // The receiver is gone: the caller answered already; deliver it the slow way.
        if let Err(output) = done.send(output) {
            late(output).await;
        }
    });
    match tokio::time::timeout(budget, result).await {
        Ok(Ok(output)) => Some(output),
        Ok(Err(_)) => {
            tracing::error!("a slack handler task panicked");
            None
        }
        Err(_) => None,
    }
}

/// [`within_budget`] without a task of its own while the work is quick: it runs in the
/// request, and only if it outlasts the budget does it move to a task that finishes it and
/// hands its output to `late`. For work that may be stopped halfway (reads): a request whose
/// caller hangs up is dropped with its work.
pub async fn within_budget_inline<T, W, L, LF>(work: W, late: L) -> Option<T>
where
    T: Send + 'static,
    W: Future<Output = T> + Send + 'static,
    L: FnOnce(T) -> LF + Send + 'static,
    LF: Future<Output = ()> + Send,
{
    let mut work = Box::pin(work);
    match tokio::time::timeout(ACK_BUDGET, &mut work).await {
        Ok(output) => Some(output),
        Err(_) => {
            tokio::spawn(async move { late(work.await).await });
            None
        }
    }
}

/// `https://hooks.slack.com/…`, or the same origin as `[slack] api_url`.
pub fn response_url_allowed(url: &str, api_url: &str) -> bool {
    fn origin(url: &str) -> Option<&str> {
        let (scheme, rest) = url.split_once("://")?;
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let host_end = rest.find('/').unwrap_or(rest.len());
        Some(&url[..scheme.len() + 3 + host_end])
    }
    let Some(target) = origin(url) else {
        return false;
    };
    target == "https://hooks.slack.com" || origin(api_url) == Some(target)
}

/// The Slack routes, for the route table and the RBAC sweep.
pub fn routes() -> Vec<RouteSpec> {
    ["/slack/events", "/slack/commands", "/slack/interactions"]
        .into_iter()
        .map(|path| RouteSpec {
            method: Method::POST,
            path,
            access: Access::SlackSignature,
        })
        .collect()
}

/// The Slack routes behind the verification layer, ready to merge into the server.
pub fn router<S>(app: AppState, monitor: Arc<Monitor>, slack: Option<Arc<Slack>>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let verifier = Verifier::new(
        app.sentinel.settings().secrets.slack_signing_secret.clone(),
        app.body_limit,
    );
    let inbound = Inbound::new(app, monitor, slack);
    Router::new()
        .route("/slack/events", post(events::handle))
        .route("/slack/commands", post(commands::handle))
        .route("/slack/interactions", post(interactions::handle))
        .route_layer(middleware::from_fn_with_state(
            verifier,
            verify::require_signature,
        ))
        .route_layer(middleware::from_fn(count_requests))
        .with_state(inbound)
}

/// Counts every Slack request by kind (the route) and outcome, forged ones included.
async fn count_requests(request: axum::extract::Request, next: middleware::Next) -> Response {
    let kind = match request.uri().path() {
        "/slack/events" => "events",
        "/slack/commands" => "commands",
        "/slack/interactions" => "interactions",
        _ => "other",
    };
    let response = next.run(request).await;
    let outcome = match response.status() {
        status if status.is_success() => "ok",
        StatusCode::UNAUTHORIZED => "unauthorized",
        status if status.is_client_error() => "bad_request",
        _ => "error",
    };
    crate::telemetry::metrics::metrics().slack_request(kind, outcome);
    response
}

/// Bytes no Slack payload parser should choke on: each is an error or a value, never a
/// panic. Shared by the parsers' unit tests.
#[cfg(test)]
pub(crate) const GARBAGE: &[&[u8]] = &[
    b"",
    b"\xff\xfe\x00",
    b"{",
    b"null",
    b"[]",
    b"{\"type\":7}",
    b"%",
    b"%zz=%ff&&==&",
    b"payload=%7B%22type%22%3A%5B%5D%7D",
    b"payload=",
    b"text=a&text=b",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_go_to_slack_or_the_configured_api_only() {
        let api = "https://slack.com/api/";
        assert!(response_url_allowed(
            "https://hooks.slack.com/commands/T1/2/x",
            api
        ));
        assert!(!response_url_allowed(
            "http://hooks.slack.com/commands/x",
            api
        ));
        assert!(!response_url_allowed(
            "https://hooks.slack.com.evil.example/x",
            api
        ));
        assert!(!response_url_allowed("https://169.254.169.254/latest", api));
        assert!(!response_url_allowed("file:///etc/passwd", api));
        assert!(!response_url_allowed("hooks.slack.com/x", api));
        let double = "http://127.0.0.1:4567/api/";
        assert!(response_url_allowed(
            "http://127.0.0.1:4567/response/1",
            double
        ));
        assert!(!response_url_allowed(
            "http://127.0.0.1:4568/response/1",
            double
        ));
    }

    #[tokio::test]
    async fn slow_work_is_handed_over_and_fast_work_answers() {
        assert_eq!(within_budget(async { 7 }, |_| async {}).await, Some(7));

        let (late_tx, late_rx) = tokio::sync::oneshot::channel();
        let slow = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "slow"
        };
        let started = std::time::Instant::now();
        let answered = within(Duration::from_millis(20), slow, move |output| async move {
            let _ = late_tx.send(output);
        })
        .await;
        assert!(started.elapsed() < Duration::from_millis(150));
        assert_eq!(answered, None);
        assert_eq!(late_rx.await.unwrap(), "slow");
    }

    #[tokio::test(start_paused = true)]
    async fn inline_work_answers_in_time_or_moves_to_a_task_and_is_finished() {
        assert_eq!(
            within_budget_inline(async { 7 }, |_| async {}).await,
            Some(7)
        );
        let (late_tx, late_rx) = tokio::sync::oneshot::channel();
        let slow = async {
            tokio::time::sleep(ACK_BUDGET * 3).await;
            "slow"
        };
        let started = tokio::time::Instant::now();
        let answered = within_budget_inline(slow, move |output| async move {
            let _ = late_tx.send(output);
        })
        .await;
        assert_eq!(answered, None);
        assert_eq!(started.elapsed(), ACK_BUDGET);
        assert_eq!(late_rx.await.unwrap(), "slow");
        assert!(started.elapsed() >= ACK_BUDGET * 3);
    }
}
