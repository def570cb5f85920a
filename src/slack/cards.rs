//! Incident cards: every incident is one message in `[slack] channel` (the card, updated in
//! place) plus a thread with one reply per timeline entry.
//!
//! In: incident ids from `Sentinel::subscribe()` and a periodic scan of the store. Out:
//! [`Envelope::IncidentSync`](crate::slack::outbox::Envelope) items in the outbox, which the
//! outbox's sender turns into `chat.postMessage` / `chat.update` calls with [`CardSync::sync`].
//!
//! What Slack already shows is recorded on the incident itself ([`SlackCard`]): the card's
//! channel and `ts`, how many timeline entries have their reply (`posted_entries`), and a
//! digest of what the card shows. Each is saved with compare-and-set right after the call
//! that made it true, and only the holder of the channel's outbox lease syncs, so replicas
//! and restarts never post a card or a reply twice (one repeat is possible only if a process
//! dies between Slack's answer and the save). Replies wait for the card: they are threaded
//! on its `ts`, which is saved before the first reply is sent.
//!
//! Bookkeeping writes bump the incident's version like any write. So a card's buttons carry
//! the version the card was rendered from (`SlackCard::rendered_version`), and
//! [`click_is_current`] tells whether a click was made on the card as it still should look.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::domain::{Incident, IncidentId, SlackCard, Timestamp};
use crate::service::Sentinel;
use crate::slack::blocks::{self, BlocksError, Rendered};
use crate::slack::outbox::{CallError, ChannelCalls, Outbox};
use crate::store::{IncidentQuery, SharedStore, StoreError};

/// How often the card task looks over the store for changes it missed (a lagged
/// subscription, changes made by another replica, a restart).
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// A resolved incident without a card still gets one if it resolved this recently (it came
/// and went between two looks); older ones are history, not news.
const RECENTLY_RESOLVED: Duration = Duration::from_secs(3600);

/// The card of `incident` as it should look now.
pub fn render_card(incident: &Incident, public_url: &str) -> Result<Rendered, BlocksError> {
    blocks::render("incident_card", &card_context(incident, public_url))
}

/// The card, or its plain-text fallback when the template fails (counted and logged), so
/// an incident is never left without a card.
fn render_card_or_fallback(incident: &Incident, public_url: &str) -> Rendered {
    blocks::render_or_fallback("incident_card", &card_context(incident, public_url))
}

fn card_context(incident: &Incident, public_url: &str) -> serde_json::Value {
    json!({ "incident": incident, "public_url": public_url })
}

/// A digest of what the card shows, leaving out what only bookkeeping changes (the version,
/// the `slack` field) and the status page address.
pub fn card_digest(incident: &Incident) -> String {
    let mut neutral = incident.clone();
    neutral.version = 0;
    neutral.slack = None;
    let shown = match render_card(&neutral, "") {
        Ok(rendered) => json!({ "text": rendered.text, "blocks": rendered.blocks }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let hash = Sha256::digest(shown.to_string().as_bytes());
    hex::encode(&hash[..16])
}

/// Whether a button carrying `version` was clicked on the card as it should look now: the
/// card on screen was rendered from that version and nothing shown on it changed since.
/// Incidents without a card compare with their current version.
pub fn click_is_current(incident: &Incident, version: u64) -> bool {
    match &incident.slack {
        Some(card) if card.ts.is_some() => {
            card.rendered_version == version && card.digest == card_digest(incident)
        }
        _ => incident.version == version,
    }
}

/// Whether an incident without a card should get one.
fn wants_card(incident: &Incident, now: Timestamp) -> bool {
    incident.is_open()
        || incident
            .resolved_at
            .is_some_and(|at| now.since(at) <= RECENTLY_RESOLVED)
}

/// Whether Slack is behind the incident: no card yet (and it wants one), a card that shows
/// something else, or timeline entries without their reply.
pub fn needs_sync(incident: &Incident, now: Timestamp) -> bool {
    match &incident.slack {
        None => wants_card(incident, now),
        Some(SlackCard { ts: None, .. }) => false,
        Some(card) => {
            card.posted_entries < incident.timeline.len() || card.digest != card_digest(incident)
        }
    }
}

/// The sync itself, run by the outbox's sender for the channel's queue.
#[derive(Clone)]
pub struct CardSync {
    store: SharedStore,
    public_url: String,
}

impl CardSync {
    pub fn new(store: SharedStore, public_url: &str) -> Self {
        CardSync {
            store,
            public_url: public_url.to_owned(),
        }
    }

    /// Brings one incident's card and thread up to date in `calls.channel`: posts the card
    /// if there is none, updates it if it shows something else, then posts the missing
    /// thread replies in timeline order; again while the incident keeps changing (a few
    /// rounds at most, then the next queued sync goes on). Progress is saved after every
    /// call, so a retry continues where this stopped.
    pub async fn sync(
        &self,
        calls: &mut ChannelCalls<'_>,
        id: &IncidentId,
    ) -> Result<(), CallError> {
        for _ in 0..5 {
            if !self.sync_once(calls, id).await? {
                break;
            }
        }
        Ok(())
    }

    /// One round of [`Self::sync`]; true when it made a call.
    async fn sync_once(
        &self,
        calls: &mut ChannelCalls<'_>,
        id: &IncidentId,
    ) -> Result<bool, CallError> {
        let mut called = false;
        let Some(mut incident) = self.store.get_incident(id).await? else {
            return Ok(called);
        };
        let channel = calls.channel.to_owned();
        let api = calls.api;
        if incident.slack.is_none() {
            if !wants_card(&incident, Timestamp::now()) {
                return Ok(called);
            }
            let digest = card_digest(&incident);
            let version = incident.version;
            let card = render_card_or_fallback(&incident, &self.public_url);
            let posted = calls
                .call(|| api.post_message(&channel, None, &card.text, &card.blocks))
                .await;
            called = true;
            let card = match posted {
                Ok(ts) => SlackCard {
                    channel: channel.clone(),
                    ts: Some(ts),
                    posted_entries: 0,
                    rendered_version: version,
                    digest,
                    error: None,
                },
                Err(CallError::Refused(e)) => {
                    tracing::error!(incident = %id, channel, error = %e, "cannot post the incident card; its thread is given up");
                    SlackCard {
                        channel: channel.clone(),
                        ts: None,
                        posted_entries: incident.timeline.len(),
                        rendered_version: version,
                        digest,
                        error: Some(e.to_string()),
                    }
                }
                Err(other) => return Err(other),
            };
            incident = self
                .save(id, |i| {
                    if i.slack.is_none() {
                        i.slack = Some(card.clone());
                    }
                })
                .await?;
        }
        let Some(card) = incident.slack.clone() else {
            return Ok(called);
        };
        let Some(ts) = card.ts.clone() else {
            return Ok(called);
        };
        let digest = card_digest(&incident);
        if digest != card.digest {
            let version = incident.version;
            let new = render_card_or_fallback(&incident, &self.public_url);
            let updated = calls
                .call(|| api.update_message(&card.channel, &ts, &new.text, &new.blocks))
                .await;
            called = true;
            let error = match updated {
                Ok(()) => None,
                Err(CallError::Refused(e)) => {
                    tracing::error!(incident = %id, channel = card.channel, error = %e, "cannot update the incident card");
                    Some(e.to_string())
                }
                Err(other) => return Err(other),
            };
            incident = self
                .save(id, |i| {
                    if let Some(c) = i.slack.as_mut() {
                        c.digest = digest.clone();
                        c.rendered_version = version;
                        c.error = error.clone();
                    }
                })
                .await?;
        }
        loop {
            let Some(next) = incident.slack.as_ref().map(|c| c.posted_entries) else {
                return Ok(called);
            };
            let Some(entry) = incident.timeline.get(next) else {
                return Ok(called);
            };
            let context = json!({ "incident": &incident, "entry": entry });
            let reply = blocks::render_or_fallback("timeline_reply", &context);
            let posted = calls
                .call(|| api.post_message(&card.channel, Some(&ts), &reply.text, &reply.blocks))
                .await
                .map(drop);
            called = true;
            let error = match posted {
                Ok(()) => None,
                Err(CallError::Refused(e)) => {
                    tracing::error!(incident = %id, channel = card.channel, entry = next, error = %e, "cannot post a timeline reply; skipped");
                    Some(e.to_string())
                }
                Err(other) => return Err(other),
            };
            incident = self
                .save(id, |i| {
                    if let Some(c) = i.slack.as_mut() {
                        c.posted_entries = c.posted_entries.max(next + 1);
                        if error.is_some() {
                            c.error = error.clone();
                        }
                    }
                })
                .await?;
        }
    }

    /// Applies `change` with compare-and-set, re-reading after a conflict.
    async fn save(
        &self,
        id: &IncidentId,
        change: impl Fn(&mut Incident),
    ) -> Result<Incident, StoreError> {
        loop {
            let mut incident = self
                .store
                .get_incident(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            change(&mut incident);
            match self.store.update_incident(&incident).await {
                Err(StoreError::VersionConflict { .. }) => continue,
                other => return other,
            }
        }
    }
}

/// The card task: queues a sync whenever an incident changes (and on a periodic catch-up).
pub struct Cards {
    sentinel: Arc<Sentinel>,
    outbox: Outbox,
    /// `[slack] channel`: where new cards go. Existing cards stay in their own channel.
    channel: String,
}

impl Cards {
    pub fn new(sentinel: Arc<Sentinel>, outbox: Outbox, channel: &str) -> Self {
        Cards {
            sentinel,
            outbox,
            channel: channel.to_owned(),
        }
    }

    /// Runs until `shutdown`. Subscribes before the first catch-up so no change falls in
    /// between.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut changes = self.sentinel.subscribe();
        let mut catch_up = tokio::time::interval(CATCH_UP);
        catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = catch_up.tick() => self.catch_up().await,
                change = changes.recv() => match change {
                    Ok(id) => self.consider_id(&id).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "card task lagged; catching up from the store");
                        self.catch_up().await;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// Looks at the latest incidents and queues a sync for each that Slack is behind on.
    pub async fn catch_up(&self) {
        let query = IncidentQuery {
            open_only: false,
            limit: 200,
        };
        let mut incidents = match self.sentinel.store.list_incidents(query).await {
            Ok(incidents) => incidents,
            Err(e) => {
                tracing::warn!(error = %e, "card catch-up cannot list incidents");
                return;
            }
        };
        // Oldest first, so cards appear in the channel in the order incidents opened.
        incidents.reverse();
        for incident in incidents {
            self.consider(&incident).await;
        }
    }

    async fn consider_id(&self, id: &IncidentId) {
        match self.sentinel.store.get_incident(id).await {
            Ok(Some(incident)) => self.consider(&incident).await,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "card task cannot read an incident")
            }
        }
    }

    /// Queues a sync for one incident if Slack is behind on it.
    pub async fn consider(&self, incident: &Incident) {
        if !needs_sync(incident, Timestamp::now()) {
            return;
        }
        let channel = match &incident.slack {
            Some(card) => card.channel.as_str(),
            None => self.channel.as_str(),
        };
        if let Err(e) = self.outbox.sync_incident(channel, &incident.id).await {
            tracing::warn!(incident = %incident.id, error = %e, "cannot queue the incident card");
        }
    }
}
