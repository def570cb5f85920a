//! Slack, Sentinel's front door (SPEC §6).
//!
//! Inbound, behind one verification layer over the raw body ([`verify`]): the Events API
//! ([`events`]), `/sentinel` ([`commands`]) and buttons and modals ([`interactions`]), served
//! by [`http::router`], or the same handlers over a WebSocket with `SLACK_APP_TOKEN`
//! ([`socket_mode`]); Slack users get their role from `[rbac]` ([`roles`]).
//! Outbound: the Web API client on `SLACK_API_URL` ([`client`]), a durable, ordered,
//! rate-limited outbox ([`outbox`]), the incident cards kept in step with incidents
//! ([`cards`]) and each person's App Home tab ([`home`]), rendered from the minijinja
//! templates in `blocks/` ([`blocks`]).
//!
//! Slack is optional: without a signing secret the routes answer 404, without an app token
//! there is no socket, and without a bot token nothing is posted.

pub mod blocks;
pub mod cards;
pub mod catchup;
pub mod client;
pub mod commands;
pub mod events;
pub mod home;
pub mod http;
pub mod interactions;
pub mod outbox;
pub mod roles;
pub mod socket_mode;
pub mod verify;

use std::sync::Arc;

use anyhow::Context;
use secrecy::SecretString;

use crate::config::Settings;
use crate::store::SharedStore;

/// What Slack handlers and tasks share: the Web API client and the outbox. Exists only when
/// `SLACK_BOT_TOKEN` is set (without it nothing can be posted).
pub struct Slack {
    pub api: client::SlackApi,
    /// Every message to a channel goes through here (durable, ordered, paced).
    pub outbox: outbox::Outbox,
    /// People who opened the App Home tab, on their way to the Home task.
    pub home: home::HomeQueue,
    /// Where the outbox and the card records live.
    store: SharedStore,
}

impl Slack {
    /// Builds the Slack side from the settings; `None` without a bot token. Fails (at
    /// startup) when `[slack] api_url` cannot be used.
    pub fn from_settings(
        settings: &Settings,
        store: SharedStore,
    ) -> anyhow::Result<Option<Arc<Slack>>> {
        let Some(token) = &settings.secrets.slack_bot_token else {
            return Ok(None);
        };
        let api = client::SlackApi::new(&settings.slack.api_url, SecretString::clone(token))
            .context("[slack] api_url (SLACK_API_URL)")?;
        Ok(Some(Arc::new(Slack {
            api,
            outbox: outbox::Outbox::new(Arc::clone(&store)),
            home: home::HomeQueue::default(),
            store,
        })))
    }

    /// The background tasks: the outbox's sender, the App Home publisher and, when
    /// `[slack] channel` or a route is set, the incident cards. They stop when `shutdown` is
    /// cancelled.
    pub fn spawn_tasks(
        &self,
        sentinel: &Arc<crate::service::Sentinel>,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let settings = sentinel.settings();
        let sync = cards::CardSync::new(
            Arc::clone(&self.store),
            &settings.public_url,
            settings.slack.card_refresh.0,
        );
        let sender = Arc::new(outbox::Sender::new(
            self.api.clone(),
            self.outbox.clone(),
            sync,
        ));
        let mut tasks = vec![tokio::spawn(sender.run(shutdown.clone()))];
        let home = home::Home::new(
            Arc::clone(sentinel),
            Arc::clone(&self.store),
            self.api.clone(),
            &self.home,
        );
        if let Some(home) = home {
            tasks.push(tokio::spawn(home.run(shutdown.clone())));
        }
        if settings.slack.has_channels() {
            let cards = cards::Cards::new(Arc::clone(sentinel), self.outbox.clone());
            tasks.push(tokio::spawn(cards.run(shutdown.clone())));
        } else {
            tracing::info!(
                "no [slack] channel (SLACK_CHANNEL) and no [[slack.routes]]: incident cards \
                 are not posted"
            );
        }
        tasks
    }
}
