//! EXPERIMENT (reverted in the next commit): Slack Socket Mode on slack-morphism 2.31's
//! `SlackClientSocketModeListener`, behind the hand-written module's public face, handing
//! each typed payload (re-serialised to JSON) to the same entry points as the HTTP routes.
//! With it, `cargo test --test it slack_socket::` fails four tests:
//! `an_event_behind_a_slow_command_is_acked_at_once` (envelopes are handled one at a time
//! per connection), `a_link_dropped_after_every_hello_is_reopened_with_growing_waits`
//! (reconnects at once after a drop: 1544 opens in 4 s), `failed_opens_wait_longer_each_time`
//! (a fixed retry interval) and `an_answer_in_hand_is_still_acked_on_the_connection_slack_asked_to_leave`
//! (the old connection is left open after a `disconnect` that came while an ack was in flight).

use std::sync::Arc;

use anyhow::Context;
use secrecy::ExposeSecret;
use serde_json::Value;
use slack_morphism::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::pipeline::monitor::Monitor;
use crate::slack::http::{BadPayload, Inbound};
use crate::slack::{commands, events, interactions, Slack};
use crate::web::AppState;

type Connector = SlackClientHyperConnector<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
>;

pub struct SocketMode {
    inbound: Arc<Inbound>,
    client: Arc<SlackClient<Connector>>,
    token: SlackApiToken,
}

impl SocketMode {
    pub fn from_settings(
        app: &AppState,
        monitor: Arc<Monitor>,
        slack: Option<Arc<Slack>>,
    ) -> anyhow::Result<Option<SocketMode>> {
        let settings = app.sentinel.settings();
        let Some(token) = &settings.secrets.slack_app_token else {
            return Ok(None);
        };
        let base = settings.slack.api_url.trim().trim_end_matches('/');
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .context("native roots")?
            .https_or_http()
            .enable_http2()
            .build();
        let connector = SlackClientHyperConnector::from(https).with_slack_api_url(base);
        Ok(Some(SocketMode {
            inbound: Inbound::new(Arc::clone(app), monitor, slack),
            client: Arc::new(SlackClient::new(connector)),
            token: SlackApiToken::new(token.expose_secret().to_owned().into()),
        }))
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let callbacks = SlackSocketModeListenerCallbacks::new()
            .with_command_events(on_command)
            .with_interaction_events(on_interaction)
            .with_push_events(on_push);
        let env = Arc::new(
            SlackClientEventsListenerEnvironment::new(Arc::clone(&self.client))
                .with_user_state(Arc::clone(&self.inbound)),
        );
        let config = SlackClientSocketModeConfig::new()
            .with_max_connections_count(1)
            .with_reconnect_timeout_in_seconds(1)
            .with_initial_backoff_in_seconds(1);
        let listener = SlackClientSocketModeListener::new(&config, env, callbacks);
        if let Err(e) = listener.listen_for(&self.token).await {
            tracing::error!(error = %e, "slack socket mode: cannot listen");
            return;
        }
        listener.start().await;
        shutdown.cancelled().await;
        listener.shutdown().await;
        tracing::info!("slack socket mode stopped");
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn inbound_of(states: &SlackClientEventsUserState) -> Arc<Inbound> {
    let states = states.read().await;
    Arc::clone(
        states
            .get_user_state::<Arc<Inbound>>()
            .expect("the inbound state is set"),
    )
}

fn bad(e: BadPayload) -> Box<dyn std::error::Error + Send + Sync> {
    e.0.into()
}

async fn on_push(
    event: SlackPushEventCallback,
    _client: Arc<SlackClient<Connector>>,
    states: SlackClientEventsUserState,
) -> Result<()> {
    let inbound = inbound_of(&states).await;
    let mut payload = serde_json::to_value(event)?;
    // The model is the inner value of the tagged `SlackPushEvent`: put its tag back.
    payload["type"] = Value::String("event_callback".into());
    events::receive(&inbound, payload, None)
        .await
        .map_err(bad)?;
    Ok(())
}

async fn on_command(
    event: SlackCommandEvent,
    _client: Arc<SlackClient<Connector>>,
    states: SlackClientEventsUserState,
) -> Result<SlackCommandEventResponse> {
    let inbound = inbound_of(&states).await;
    let mut form = serde_json::to_value(event)?;
    if form.get("text").is_none() {
        form["text"] = Value::String(String::new());
    }
    let form = serde_json::from_value(form)?;
    let answer = commands::receive(&inbound, form).await.map_err(bad)?;
    let answer = answer.unwrap_or_else(|| serde_json::json!({}));
    Ok(serde_json::from_value(answer)?)
}

async fn on_interaction(
    event: SlackInteractionEvent,
    _client: Arc<SlackClient<Connector>>,
    states: SlackClientEventsUserState,
) -> Result<SlackInteractionResponse> {
    let inbound = inbound_of(&states).await;
    let payload = serde_json::to_value(event)?;
    match interactions::receive(&inbound, payload)
        .await
        .map_err(bad)?
    {
        None => Ok(SlackInteractionResponse::Empty),
        Some(answer) => Ok(serde_json::from_value(answer)?),
    }
}
