//! The Events API v2 client: one POST per event to `{events_url}enqueue` or
//! `{events_url}change/enqueue`, with the routing key added to the body.
//!
//! Out: `Ok` once PagerDuty accepted the event (202), or a [`PagerDutyError`] saying whether
//! trying again may help: 429 and 5xx and network errors may ([`PagerDutyError::is_retried`]),
//! a 400 (`{"status": "invalid event", "errors": [...]}`) never does.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::pagerduty::events::Endpoint;

/// How long one call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum PagerDutyError {
    /// HTTP 429: too many events for this routing key just now.
    #[error("pagerduty rate limited the event (429)")]
    RateLimited { retry_after: Option<Duration> },
    /// The network, a timeout or a 5xx: PagerDuty may take it later.
    #[error("pagerduty could not be reached: {0}")]
    Transport(String),
    /// A 4xx other than 429: the event itself is refused; sending it again cannot help.
    #[error("pagerduty refused the event ({status}): {reason}")]
    Refused { status: u16, reason: String },
}

impl PagerDutyError {
    pub fn is_retried(&self) -> bool {
        !matches!(self, PagerDutyError::Refused { .. })
    }
}

#[derive(Clone)]
pub struct PagerDutyApi {
    http: reqwest::Client,
    /// Ends with `/`; endpoints are joined to it.
    events_url: String,
    /// The integration key: never logged, never stored with the queued event.
    routing_key: SecretString,
}

impl PagerDutyApi {
    pub fn new(events_url: &str, routing_key: SecretString) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("sentinel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut events_url = events_url.trim().to_owned();
        if !events_url.ends_with('/') {
            events_url.push('/');
        }
        Ok(PagerDutyApi {
            http,
            events_url,
            routing_key,
        })
    }

    /// Sends one event body (without its routing key) to `endpoint`.
    pub async fn send(&self, endpoint: Endpoint, body: &Value) -> Result<(), PagerDutyError> {
        let mut body = body.clone();
        if let Some(object) = body.as_object_mut() {
            object.insert(
                "routing_key".to_owned(),
                Value::String(self.routing_key.expose_secret().to_owned()),
            );
        }
        let url = format!("{}{}", self.events_url, endpoint.path());
        let response = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| PagerDutyError::Transport(without_url(e).to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.unwrap_or_default();
        match status.as_u16() {
            429 => Err(PagerDutyError::RateLimited { retry_after }),
            408 => Err(PagerDutyError::Transport(
                "request timeout (408)".to_owned(),
            )),
            code if status.is_server_error() => {
                Err(PagerDutyError::Transport(format!("HTTP {code}")))
            }
            code => Err(PagerDutyError::Refused {
                status: code,
                reason: refusal(&text),
            }),
        }
    }
}

/// A refusal's reason from PagerDuty's body: its `message` and `errors`, else the text.
fn refusal(text: &str) -> String {
    let Ok(body) = serde_json::from_str::<Value>(text) else {
        let text: String = text.chars().take(300).collect();
        return if text.trim().is_empty() {
            "no reason given".to_owned()
        } else {
            text
        };
    };
    let message = body["message"]
        .as_str()
        .or(body["status"].as_str())
        .unwrap_or("refused");
    let errors: Vec<&str> = body["errors"]
        .as_array()
        .map(|errors| errors.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if errors.is_empty() {
        message.to_owned()
    } else {
        format!("{message}: {}", errors.join("; "))
    }
}

/// reqwest's errors carry the URL; the events URL is not secret, but the message reads
/// better without it.
fn without_url(e: reqwest::Error) -> reqwest::Error {
    e.without_url()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_what_pagerduty_said() {
        let body = r#"{"status":"invalid event","message":"Event object is invalid","errors":["'payload.severity' is missing or blank"]}"#;
        assert_eq!(
            refusal(body),
            "Event object is invalid: 'payload.severity' is missing or blank"
        );
        assert_eq!(refusal(r#"{"status":"invalid event"}"#), "invalid event");
        assert_eq!(refusal(""), "no reason given");
        assert_eq!(refusal("Bad Gateway"), "Bad Gateway");
    }

    #[test]
    fn only_refusals_are_not_retried() {
        assert!(PagerDutyError::RateLimited { retry_after: None }.is_retried());
        assert!(PagerDutyError::Transport("HTTP 503".into()).is_retried());
        assert!(!PagerDutyError::Refused {
            status: 400,
            reason: "x".into()
        }
        .is_retried());
    }
}
