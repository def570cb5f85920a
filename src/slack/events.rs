//! The Events API: `POST /slack/events` and Socket Mode's `events_api` envelopes (SPEC §6).
//!
//! In: a verified JSON envelope, or the payload of a Socket Mode envelope, both through
//! [`receive`]. Out: `url_verification` answered with its challenge; everything else
//! acknowledged at once, its work done in a spawned task.
//! An `event_callback` is handled at most once per `event_id`, whichever replica or retry
//! (`X-Slack-Retry-Num`) delivers it, through [`Store::claim_once`]; callbacks for another
//! app (`api_app_id` ≠ `[slack] app_id`, when set) are ignored. An `app_mention` ("@sentinel
//! status") is a command like `/sentinel status`, answered in the mention's thread through
//! the outbox. An `app_home_opened` (the Home tab) goes to [`home`](crate::slack::home),
//! which publishes that person's Home view.
//!
//! [`Store::claim_once`]: crate::store::Store::claim_once

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::domain::Timestamp;
use crate::slack::commands::{self, Invocation, ReplyTo};
use crate::slack::http::{respond, Answer, BadPayload, Inbound};
use crate::slack::verify::VerifiedBody;

/// How long an `event_id` is remembered. Slack retries within minutes (immediately, after
/// one minute, after five); an hour leaves a wide margin.
pub const EVENT_DEDUP_TTL: Duration = Duration::from_secs(3600);

/// An Events API payload, as [`parse`] reads it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Envelope {
    UrlVerification {
        challenge: String,
    },
    EventCallback(Callback),
    /// `app_rate_limited` and whatever Slack adds later: acknowledged, nothing else.
    #[serde(other)]
    Other,
}

/// An `event_callback`.
#[derive(Debug, Deserialize)]
pub struct Callback {
    pub event_id: String,
    #[serde(default)]
    pub api_app_id: Option<String>,
    /// Parsed on its own ([`parse_event`]), so an event of a type Sentinel does not know is
    /// still acknowledged.
    pub event: Value,
}

/// A callback's `event`, as [`parse_event`] reads it.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    AppMention(Mention),
    AppHomeOpened(HomeOpened),
    #[serde(other)]
    Other,
}

/// An `app_home_opened`: someone opened the app's Home tab (`tab: "home"`) or its Messages
/// tab (`"messages"`, nothing to publish).
#[derive(Debug, Deserialize)]
pub struct HomeOpened {
    user: String,
    #[serde(default)]
    tab: Option<String>,
}

/// An `app_mention`.
#[derive(Debug, Deserialize)]
pub struct Mention {
    #[serde(default)]
    user: Option<String>,
    /// Set when a bot (possibly Sentinel itself) wrote the message: never answered.
    #[serde(default)]
    bot_id: Option<String>,
    #[serde(default)]
    text: String,
    channel: String,
    ts: String,
    /// The parent's ts when the mention is itself in a thread.
    #[serde(default)]
    thread_ts: Option<String>,
}

/// How a callback was redelivered: `X-Slack-Retry-Num` / `X-Slack-Retry-Reason` over HTTP,
/// the envelope's `retry_attempt` / `retry_reason` over Socket Mode. Only logged: the
/// `event_id` claim is what keeps a redelivery from running twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redelivery {
    pub attempt: String,
    pub reason: Option<String>,
}

/// An HTTP body as the Events API payload it carries: JSON, then [`parse_value`]. Pure (no
/// I/O, no state), so it can be fuzzed: whatever the bytes, an error and never a panic.
pub fn parse(body: &[u8]) -> Result<Envelope, BadPayload> {
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| BadPayload(format!("not an Events API payload: {e}")))?;
    parse_value(payload)
}

/// A JSON payload (an HTTP body, or a Socket Mode envelope's payload) as its [`Envelope`].
pub fn parse_value(payload: Value) -> Result<Envelope, BadPayload> {
    serde_json::from_value(payload)
        .map_err(|e| BadPayload(format!("not an Events API payload: {e}")))
}

/// A callback's `event`: an `app_mention`, or any other event as [`Event::Other`]. Read once
/// the callback is claimed; an error is logged, the callback already acknowledged.
pub fn parse_event(event: Value) -> Result<Event, serde_json::Error> {
    serde_json::from_value(event)
}

/// `POST /slack/events`: the verified body, read by [`parse`], then handled as [`receive`]
/// handles it.
pub async fn handle(
    State(inbound): State<Arc<Inbound>>,
    Extension(VerifiedBody(body)): Extension<VerifiedBody>,
    headers: HeaderMap,
) -> Response {
    let envelope = match parse(&body) {
        Ok(envelope) => envelope,
        Err(bad) => return respond(Err(bad)),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let redelivery = header("x-slack-retry-num").map(|attempt| Redelivery {
        attempt,
        reason: header("x-slack-retry-reason"),
    });
    respond(Ok(receive_parsed(&inbound, envelope, redelivery)))
}

/// The Events API's one entry point, for HTTP and Socket Mode alike: answers a
/// `url_verification` with its challenge; for an `event_callback` starts its handling in a
/// task (handled once per `event_id`) and returns at once; acknowledges anything else.
pub async fn receive(
    inbound: &Arc<Inbound>,
    payload: Value,
    redelivery: Option<Redelivery>,
) -> Result<Answer, BadPayload> {
    Ok(receive_parsed(inbound, parse_value(payload)?, redelivery))
}

/// What [`receive`] does with a payload once it is read.
fn receive_parsed(
    inbound: &Arc<Inbound>,
    envelope: Envelope,
    redelivery: Option<Redelivery>,
) -> Answer {
    match envelope {
        Envelope::UrlVerification { challenge } => Some(json!({ "challenge": challenge })),
        Envelope::EventCallback(callback) => {
            if let Some(Redelivery { attempt, reason }) = &redelivery {
                let event_id = &callback.event_id;
                tracing::info!(%event_id, retry = attempt, ?reason, "slack redelivered an event");
            }
            let inbound = Arc::clone(inbound);
            tokio::spawn(async move { process(&inbound, callback).await });
            None
        }
        Envelope::Other => None,
    }
}

/// Handles one callback, once.
async fn process(inbound: &Arc<Inbound>, callback: Callback) {
    if !inbound.is_our_app(callback.api_app_id.as_deref()) {
        let (app, event_id) = (&callback.api_app_id, &callback.event_id);
        tracing::warn!(api_app_id = ?app, %event_id, "ignoring an event for another app");
        return;
    }
    let key = format!("slack:event:{}", callback.event_id);
    let store = &inbound.app.store;
    match store
        .claim_once(&key, EVENT_DEDUP_TTL, Timestamp::now())
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(event_id = %callback.event_id, "event already handled");
            return;
        }
        Err(e) => {
            // Without the claim a retry could run it twice; dropping it is the safe side.
            let event_id = &callback.event_id;
            tracing::error!(%event_id, error = %e, "cannot claim a slack event; dropping it");
            return;
        }
    }
    // Boxed once claimed, as a click's handling is (`interactions::claim_then_handle`): a
    // delivery waiting for its claim stays small.
    match parse_event(callback.event) {
        Ok(Event::AppMention(mention)) => Box::pin(mentioned(inbound, mention)).await,
        Ok(Event::AppHomeOpened(opened)) => Box::pin(home_opened(inbound, opened)).await,
        Ok(Event::Other) => {}
        Err(e) => {
            tracing::warn!(event_id = %callback.event_id, error = %e, "unreadable slack event")
        }
    }
}

/// "@sentinel status": the command, answered in the thread.
async fn mentioned(inbound: &Arc<Inbound>, mention: Mention) {
    let Some(user_id) = mention.user.filter(|_| mention.bot_id.is_none()) else {
        return;
    };
    let thread_ts = mention.thread_ts.unwrap_or(mention.ts);
    let invocation = Invocation {
        user_id,
        channel_id: mention.channel.clone(),
        reply_to: ReplyTo::Thread {
            ts: thread_ts.clone(),
        },
        trigger_id: None,
    };
    let reply = commands::answer(inbound, invocation, command_text(&mention.text)).await;
    inbound
        .post_in_thread(&mention.channel, &thread_ts, &reply)
        .await;
}

/// Someone opened Home: publish it for them, and keep it fresh for a while (`slack::home`).
async fn home_opened(inbound: &Arc<Inbound>, opened: HomeOpened) {
    if opened.tab.as_deref().is_some_and(|tab| tab != "home") {
        return;
    }
    let Some(slack) = &inbound.slack else {
        tracing::warn!("no SLACK_BOT_TOKEN: cannot publish the home tab");
        return;
    };
    slack
        .home
        .opened(inbound.app.store.as_ref(), &opened.user)
        .await;
}

/// The command in a mention: the text after the (first) `<@U…>`.
fn command_text(text: &str) -> &str {
    match text.find("<@") {
        Some(start) => match text[start..].find('>') {
            Some(end) => text[start + end + 1..].trim(),
            None => text.trim(),
        },
        None => text.trim(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::slack::http::GARBAGE;

    #[test]
    fn raw_bodies_parse_or_are_refused() {
        let verification = parse(br#"{"type":"url_verification","challenge":"abc"}"#).unwrap();
        assert!(
            matches!(verification, Envelope::UrlVerification { challenge } if challenge == "abc")
        );
        let body = br#"{"type":"event_callback","event_id":"Ev1",
            "event":{"type":"app_mention","channel":"C1","ts":"1.2","text":"<@U0> status"}}"#;
        let Envelope::EventCallback(callback) = parse(body).unwrap() else {
            panic!("not a callback")
        };
        assert_eq!(callback.event_id, "Ev1");
        let Event::AppMention(mention) = parse_event(callback.event).unwrap() else {
            panic!("not a mention")
        };
        assert_eq!(command_text(&mention.text), "status");
        assert!(
            parse_event(json!({"type": "app_mention"})).is_err(),
            "no channel"
        );

        let refused = parse(b"not json").unwrap_err();
        assert!(
            refused.0.starts_with("not an Events API payload: "),
            "{refused}"
        );
        assert!(
            parse(br#"{"type":"event_callback"}"#).is_err(),
            "no event_id"
        );
        for garbage in GARBAGE {
            assert!(parse(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn home_opened_events_parse_with_their_tab() {
        let event = json!({"type": "app_home_opened", "user": "U1", "channel": "D1",
                           "tab": "home", "event_ts": "1.2", "view": {"id": "V1"}});
        let Event::AppHomeOpened(opened) = parse_event(event).unwrap() else {
            panic!("not app_home_opened")
        };
        assert_eq!(opened.user, "U1");
        assert_eq!(opened.tab.as_deref(), Some("home"));
        assert!(
            parse_event(json!({"type": "app_home_opened"})).is_err(),
            "no user"
        );
    }

    #[test]
    fn the_command_is_what_follows_the_mention() {
        assert_eq!(command_text("<@U0BOT> status"), "status");
        assert_eq!(
            command_text("<@U0BOT|sentinel>   approve inc-abc "),
            "approve inc-abc"
        );
        assert_eq!(command_text("hey <@U0BOT> whoami"), "whoami");
        assert_eq!(command_text("<@U0BOT>"), "");
        assert_eq!(command_text("status"), "status");
    }

    #[test]
    fn envelopes_parse_and_unknown_types_are_values() {
        let verification: Envelope =
            serde_json::from_str(r#"{"token":"x","challenge":"abc","type":"url_verification"}"#)
                .unwrap();
        assert!(
            matches!(verification, Envelope::UrlVerification { challenge } if challenge == "abc")
        );
        let limited: Envelope =
            serde_json::from_str(r#"{"type":"app_rate_limited","minute_rate_limited":1}"#).unwrap();
        assert!(matches!(limited, Envelope::Other));
        let callback: Envelope = serde_json::from_str(
            r#"{"type":"event_callback","event_id":"Ev1","api_app_id":"A1",
                "event":{"type":"reaction_added","user":"U1"}}"#,
        )
        .unwrap();
        let Envelope::EventCallback(callback) = callback else {
            panic!("not a callback")
        };
        assert!(matches!(
            serde_json::from_value::<Event>(callback.event).unwrap(),
            Event::Other
        ));
    }
}
