//! The Slack Web API client: `chat.postMessage`, `chat.update`, `chat.postEphemeral`,
//! `views.open`, `views.publish`, `usergroups.users.list` and `auth.test` on `SLACK_API_URL` with the bot token;
//! `apps.connections.open` (Socket Mode) with the app-level token.
//!
//! In: a method's arguments. Out: what Slack answered, or a [`SlackError`] that says what a
//! caller can do about it: wait ([`SlackError::RateLimited`], HTTP 429 with `Retry-After`),
//! try again later ([`SlackError::Transport`]: network, timeout, HTTP 5xx) or not at all
//! ([`SlackError::Api`], Slack's `ok: false`). The client itself never retries; the outbox
//! decides (`slack::outbox`).
//!
//! The transport is reqwest (rustls with the built-in web roots, the crate's one TLS stack),
//! not slack-morphism's hyper connector: that connector is https-only unless built from a
//! `hyper-rustls` connector the application would have to depend on directly, and its
//! built-in retries cover 429 only. slack-morphism still provides the Block Kit model the
//! templates are checked against (`slack::blocks`).

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

/// How long one Web API call may take before it counts as a transport failure.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Without a usable `Retry-After`, wait this long after a 429.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlackError {
    /// HTTP 429: wait `retry_after`, then try the same call again.
    #[error("rate limited: retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// Slack answered `ok: false` with this error code (`channel_not_found`, `invalid_auth`,
    /// `expired_trigger_id`, …). Trying the same call again gives the same answer.
    #[error("{method} failed: {error}")]
    Api { method: String, error: String },
    /// Slack could not be reached or answered with a server error; worth retrying later.
    #[error("slack unreachable: {0}")]
    Transport(String),
}

impl SlackError {
    /// Whether trying the same call again later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, SlackError::Api { .. })
    }
}

/// A Web API client. Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct SlackApi {
    http: reqwest::Client,
    /// The API base without its trailing slash; method URLs are `{base}/{method}`.
    base: Arc<str>,
    /// `xoxb-…`; sent only in the `Authorization` header, never logged.
    token: Arc<SecretString>,
}

impl std::fmt::Debug for SlackApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl SlackApi {
    /// A client for the Web API at `api_url` (`https://slack.com/api/`, or a double in tests).
    pub fn new(api_url: &str, bot_token: SecretString) -> Result<Self, SlackError> {
        let base = api_url.trim().trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(SlackError::Transport(format!(
                "SLACK_API_URL {api_url:?} is not an http(s) URL"
            )));
        }
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SlackError::Transport(format!("cannot build the HTTP client: {e}")))?;
        Ok(SlackApi {
            http,
            base: Arc::from(base),
            token: Arc::new(bot_token),
        })
    }

    /// Posts a message (a thread reply when `thread_ts` is set); returns its `ts`.
    pub async fn post_message(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        text: &str,
        blocks: &[Value],
    ) -> Result<String, SlackError> {
        let mut body = json!({
            "channel": channel,
            "text": text,
            "blocks": blocks,
            "unfurl_links": false,
            "unfurl_media": false,
        });
        if let Some(thread_ts) = thread_ts {
            body["thread_ts"] = json!(thread_ts);
        }
        let answer = self.call_json("chat.postMessage", &body).await?;
        string_field(&answer, "ts", "chat.postMessage")
    }

    /// Replaces a message's text and blocks.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &[Value],
    ) -> Result<(), SlackError> {
        let body = json!({ "channel": channel, "ts": ts, "text": text, "blocks": blocks });
        self.call_json("chat.update", &body).await.map(drop)
    }

    /// A message only `user` sees, in `channel`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
        blocks: &[Value],
    ) -> Result<(), SlackError> {
        let body = json!({ "channel": channel, "user": user, "text": text, "blocks": blocks });
        self.call_json("chat.postEphemeral", &body).await.map(drop)
    }

    /// Opens a modal (`view` as rendered by `blocks::render("reject_modal", …)`). The
    /// trigger id lives 3 seconds and works once: call this before any slow work.
    pub async fn views_open(&self, trigger_id: &str, view: &Value) -> Result<(), SlackError> {
        let body = json!({ "trigger_id": trigger_id, "view": view });
        self.call_json("views.open", &body).await.map(drop)
    }

    /// Publishes `user`'s App Home tab (`view` as rendered by `blocks::render("home", …)`,
    /// `{"type": "home", …}`). Tier 4, and Slack limits it per user too: callers pace it
    /// (`slack::home`). `not_enabled` means the app's Home tab is off in its configuration.
    pub async fn views_publish(&self, user: &str, view: &Value) -> Result<(), SlackError> {
        let body = json!({ "user_id": user, "view": view });
        self.call_json("views.publish", &body).await.map(drop)
    }

    /// The user ids in a user group (`S…`). Tier 2 (20+ a minute): callers cache it.
    pub async fn usergroup_users(&self, usergroup: &str) -> Result<Vec<String>, SlackError> {
        let method = "usergroups.users.list";
        let answer = self.call_form(method, &[("usergroup", usergroup)]).await?;
        let users = answer
            .get("users")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed(method, "no users list"))?;
        Ok(users
            .iter()
            .filter_map(|u| u.as_str().map(str::to_owned))
            .collect())
    }

    /// Checks the token; returns the bot's user id.
    pub async fn auth_test(&self) -> Result<String, SlackError> {
        let answer = self.call_json("auth.test", &json!({})).await?;
        string_field(&answer, "user_id", "auth.test")
    }

    /// Socket Mode: a fresh WebSocket URL (`wss://…`) for one connection. Needs the
    /// app-level token (`xapp-…`): call it on a client built with that token, not the bot's.
    pub async fn connections_open(&self) -> Result<String, SlackError> {
        let answer = self.call_json("apps.connections.open", &json!({})).await?;
        string_field(&answer, "url", "apps.connections.open")
    }

    async fn call_json(&self, method: &str, body: &Value) -> Result<Value, SlackError> {
        let request = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose_secret())
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_string());
        self.send(method, request).await
    }

    async fn call_form(&self, method: &str, form: &[(&str, &str)]) -> Result<Value, SlackError> {
        let request = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose_secret())
            .form(form);
        self.send(method, request).await
    }

    async fn send(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, SlackError> {
        let result = self.send_once(method, request).await;
        let status = match &result {
            Ok(_) => "ok".to_owned(),
            Err(SlackError::RateLimited { .. }) => "rate_limited".to_owned(),
            Err(SlackError::Api { error, .. }) => error.clone(),
            Err(SlackError::Transport(_)) => "transport".to_owned(),
        };
        crate::telemetry::metrics::metrics().slack_api_call(method, &status);
        result
    }

    async fn send_once(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, SlackError> {
        let response = request
            .send()
            .await
            .map_err(|e| SlackError::Transport(format!("{method}: {}", error_chain(&e))))?;
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(DEFAULT_RETRY_AFTER, Duration::from_secs);
            return Err(SlackError::RateLimited { retry_after });
        }
        if !status.is_success() {
            return Err(SlackError::Transport(format!("{method}: HTTP {status}")));
        }
        let answer: Value = response.json().await.map_err(|e| {
            SlackError::Transport(format!("{method}: unreadable answer: {}", error_chain(&e)))
        })?;
        if answer.get("ok").and_then(Value::as_bool) == Some(true) {
            return Ok(answer);
        }
        let error = answer
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("unknown_error")
            .to_owned();
        if error == "ratelimited" {
            return Err(SlackError::RateLimited {
                retry_after: DEFAULT_RETRY_AFTER,
            });
        }
        Err(SlackError::Api {
            method: method.to_owned(),
            error,
        })
    }
}

fn string_field(answer: &Value, field: &str, method: &str) -> Result<String, SlackError> {
    answer
        .get(field)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| malformed(method, &format!("no {field}")))
}

/// An `ok: true` answer without what it should carry: Slack (or a proxy) misbehaving, so
/// treated as transient.
fn malformed(method: &str, what: &str) -> SlackError {
    SlackError::Transport(format!("{method}: malformed answer: {what}"))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
