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
//! The requests and answers are slack-morphism's Web API models
//! (`SlackApiChatPostMessageRequest` / `…Response`, `SlackApiViewsPublishRequest`, …), so
//! their field names and shapes are the library's, checked by the compiler. The blocks and
//! views Sentinel renders are already checked to survive slack-morphism's Block Kit model
//! unchanged (`slack::blocks`), so turning them into the model loses nothing; one that does
//! not parse is refused like Slack's `invalid_blocks` (not retried).
//!
//! The transport stays reqwest (rustls with the built-in web roots, the crate's one TLS
//! stack) rather than slack-morphism's `SlackClient`: its hyper connector sets no time limit
//! on a call, so a Slack that accepts the connection and never answers would hold a
//! channel's outbox forever (`tests/it/slack_outbound.rs`,
//! `a_stalled_call_is_given_up_after_call_timeout_and_slack_morphisms_client_waits_on`), it
//! is https-only unless built from a `hyper-rustls` connector the application would have to
//! depend on directly, and its built-in retries cover 429 only. The outbox does the pacing,
//! `Retry-After` waits and retries either way.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use slack_morphism::api::{
    SlackApiAppsConnectionOpenRequest, SlackApiAppsConnectionOpenResponse,
    SlackApiAuthTestResponse, SlackApiChatPostEphemeralRequest, SlackApiChatPostEphemeralResponse,
    SlackApiChatPostMessageRequest, SlackApiChatPostMessageResponse, SlackApiChatUpdateRequest,
    SlackApiChatUpdateResponse, SlackApiUserGroupsUsersListRequest,
    SlackApiUserGroupsUsersListResponse, SlackApiViewsOpenRequest, SlackApiViewsOpenResponse,
    SlackApiViewsPublishRequest, SlackApiViewsPublishResponse,
};
use slack_morphism::prelude::{SlackBlock, SlackMessageContent, SlackView};

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
        let method = "chat.postMessage";
        let request = SlackApiChatPostMessageRequest::new(
            channel.to_owned().into(),
            content(method, text, blocks)?,
        )
        .opt_thread_ts(thread_ts.map(|ts| ts.to_owned().into()))
        .with_unfurl_links(false)
        .with_unfurl_media(false);
        let answer: SlackApiChatPostMessageResponse = self.call_json(method, &request).await?;
        Ok(answer.ts.0)
    }

    /// Replaces a message's text and blocks.
    pub async fn update_message(
        &self,
        channel: &str,
        ts: &str,
        text: &str,
        blocks: &[Value],
    ) -> Result<(), SlackError> {
        let method = "chat.update";
        let request = SlackApiChatUpdateRequest::new(
            channel.to_owned().into(),
            content(method, text, blocks)?,
            ts.to_owned().into(),
        );
        let _: SlackApiChatUpdateResponse = self.call_json(method, &request).await?;
        Ok(())
    }

    /// A message only `user` sees, in `channel`.
    pub async fn post_ephemeral(
        &self,
        channel: &str,
        user: &str,
        text: &str,
        blocks: &[Value],
    ) -> Result<(), SlackError> {
        let method = "chat.postEphemeral";
        let request = SlackApiChatPostEphemeralRequest::new(
            channel.to_owned().into(),
            user.to_owned().into(),
            content(method, text, blocks)?,
        );
        let _: SlackApiChatPostEphemeralResponse = self.call_json(method, &request).await?;
        Ok(())
    }

    /// Opens a modal (`view` as rendered by `blocks::render("reject_modal", …)`). The
    /// trigger id lives 3 seconds and works once: call this before any slow work.
    pub async fn views_open(&self, trigger_id: &str, view: &Value) -> Result<(), SlackError> {
        let method = "views.open";
        let request =
            SlackApiViewsOpenRequest::new(trigger_id.to_owned().into(), view_model(method, view)?);
        let _: SlackApiViewsOpenResponse = self.call_json(method, &request).await?;
        Ok(())
    }

    /// Publishes `user`'s App Home tab (`view` as rendered by `blocks::render("home", …)`,
    /// `{"type": "home", …}`). Tier 4, and Slack limits it per user too: callers pace it
    /// (`slack::home`). `not_enabled` means the app's Home tab is off in its configuration.
    pub async fn views_publish(&self, user: &str, view: &Value) -> Result<(), SlackError> {
        let method = "views.publish";
        let request =
            SlackApiViewsPublishRequest::new(user.to_owned().into(), view_model(method, view)?);
        let _: SlackApiViewsPublishResponse = self.call_json(method, &request).await?;
        Ok(())
    }

    /// The user ids in a user group (`S…`). Tier 2 (20+ a minute): callers cache it.
    pub async fn usergroup_users(&self, usergroup: &str) -> Result<Vec<String>, SlackError> {
        let method = "usergroups.users.list";
        let request = SlackApiUserGroupsUsersListRequest::new(usergroup.to_owned().into());
        let answer: SlackApiUserGroupsUsersListResponse = self.call_form(method, &request).await?;
        Ok(answer.users.into_iter().map(|user| user.0).collect())
    }

    /// Checks the token; returns the bot's user id.
    pub async fn auth_test(&self) -> Result<String, SlackError> {
        // auth.test takes no arguments; slack-morphism has no request type for it.
        let answer: SlackApiAuthTestResponse =
            self.call_json("auth.test", &serde_json::Map::new()).await?;
        Ok(answer.user_id.0)
    }

    /// Socket Mode: a fresh WebSocket URL (`wss://…`) for one connection. Needs the
    /// app-level token (`xapp-…`): call it on a client built with that token, not the bot's.
    pub async fn connections_open(&self) -> Result<String, SlackError> {
        let method = "apps.connections.open";
        let answer: SlackApiAppsConnectionOpenResponse = self
            .call_json(method, &SlackApiAppsConnectionOpenRequest::new())
            .await?;
        Ok(answer.url.0.to_string())
    }

    async fn call_json<Rq: Serialize, Rs: DeserializeOwned>(
        &self,
        method: &str,
        request: &Rq,
    ) -> Result<Rs, SlackError> {
        let body = serde_json::to_string(request)
            .map_err(|e| refused(method, format!("cannot write the request: {e}")))?;
        let request = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose_secret())
            .header("content-type", "application/json; charset=utf-8")
            .body(body);
        let answer = self.send(method, request).await?;
        read_answer(method, answer)
    }

    async fn call_form<Rq: Serialize, Rs: DeserializeOwned>(
        &self,
        method: &str,
        form: &Rq,
    ) -> Result<Rs, SlackError> {
        let request = self
            .http
            .post(format!("{}/{method}", self.base))
            .bearer_auth(self.token.expose_secret())
            .form(form);
        let answer = self.send(method, request).await?;
        read_answer(method, answer)
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

/// The message model of `text` and `blocks` (as rendered and stored: JSON). A block the
/// model cannot read is refused before sending, as Slack would refuse it (`invalid_blocks`).
fn content(method: &str, text: &str, blocks: &[Value]) -> Result<SlackMessageContent, SlackError> {
    let blocks = blocks
        .iter()
        .map(SlackBlock::deserialize)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(method, format!("invalid_blocks: {e}")))?;
    Ok(SlackMessageContent::new()
        .with_text(text.to_owned())
        .with_blocks(blocks))
}

/// The view model of a rendered view; one it cannot read is refused (`invalid_arguments`).
fn view_model(method: &str, view: &Value) -> Result<SlackView, SlackError> {
    SlackView::deserialize(view).map_err(|e| refused(method, format!("invalid_arguments: {e}")))
}

/// Refused before it was sent: the same call would fail the same way, so not transient.
fn refused(method: &str, error: String) -> SlackError {
    SlackError::Api {
        method: method.to_owned(),
        error,
    }
}

/// An `ok: true` answer read into the method's response model. One that does not fit (Slack
/// or a proxy misbehaving) is treated as transient, as before the models.
fn read_answer<Rs: DeserializeOwned>(method: &str, answer: Value) -> Result<Rs, SlackError> {
    serde_json::from_value(answer)
        .map_err(|e| SlackError::Transport(format!("{method}: malformed answer: {e}")))
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
