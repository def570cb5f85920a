//! Incident cards: every incident is one message (the card, updated in place) plus a thread
//! with one reply per status change, in the channel `[[slack.routes]]` choose for it when it
//! is first posted (else `[slack] channel`).
//!
//! In: incident ids from `Sentinel::subscribe()` and a periodic scan of the store. Out:
//! [`Envelope::IncidentSync`](crate::slack::outbox::Envelope) items in the outbox, which the
//! outbox's sender turns into `chat.postMessage` / `chat.update` calls with [`CardSync::sync`].
//!
//! What Slack already shows is the card's own store record ([`SlackCard`], written with
//! [`Store::put_card`](crate::store::Store::put_card), compare-and-set on its `rev`): the
//! card's channel and `ts`, how far the thread got (`posted_entries`), a digest of the
//! decision the card shows, and when it was drawn. Each is saved right after the call that
//! made it true, and only the holder of the channel's outbox lease syncs, so replicas and
//! restarts never post a card or a reply twice (one repeat is possible only if a process dies
//! between Slack's answer and the save). Replies wait for the card: they are threaded on its
//! `ts`, which is saved before the first reply is sent.
//!
//! Quiet by design (SPEC §12.1): `chat.update` when what the card shows of the decision
//! changes (status, proposal, risk, severity, approvals, execution); a new value or
//! occurrence count alone waits until the card is `[slack] card_refresh` old. The card record
//! is not the incident's decision, so none of this bumps the incident's version.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::domain::{Incident, IncidentId, SlackCard, Status, Timestamp};
use crate::service::{Sentinel, ServiceError};
use crate::slack::blocks::{self, BlocksError, Rendered};
use crate::slack::outbox::{CallError, ChannelCalls, Outbox, SyncIncident};
use crate::store::{IncidentQuery, SharedStore, StoreError};

/// How often the card task looks over the store for changes it missed (a lagged
/// subscription, changes made by another replica, a restart).
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// A resolved incident without a card still gets one when a live change asked for it and
/// it resolved this recently (it came and went between two looks). The catch-up never
/// posts cards for closed incidents: on start, history is not news.
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

/// A digest of the decision the card shows, leaving out the observation (value, occurrence
/// count, last seen), bookkeeping (the version, the `slack` field, `updated_at`) and the
/// status page address.
pub fn card_digest(incident: &Incident) -> String {
    let mut neutral = incident.clone();
    neutral.version = 0;
    neutral.slack = None;
    neutral.value = 0.0;
    neutral.occurrences = 0;
    neutral.last_seen_at = neutral.opened_at;
    neutral.updated_at = neutral.opened_at;
    let shown = match render_card(&neutral, "") {
        Ok(rendered) => json!({ "text": rendered.text, "blocks": rendered.blocks }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let hash = Sha256::digest(shown.to_string().as_bytes());
    hex::encode(&hash[..16])
}

/// Whether a button carrying the legacy `{incident, version}` reference (cards drawn before
/// buttons named the proposal) was clicked on the card as it should look now: the card on
/// screen was rendered from that version and nothing of the decision shown on it changed.
/// Incidents without a card compare with their current version.
pub fn click_is_current(incident: &Incident, version: u64) -> bool {
    match &incident.slack {
        Some(card) if card.ts.is_some() => {
            card.rendered_version == version && card.digest == card_digest(incident)
        }
        _ => incident.version == version,
    }
}

/// Whether a timeline entry gets its own thread reply: status changes, the two steps that
/// stand for one (`recovered` resolves, `reconciled` finishes an interrupted fix), and what
/// happens to trust (`pipeline::trust`: offered, granted, applied, revoked).
pub fn announces(step: &str) -> bool {
    use crate::pipeline::trust;
    step.parse::<Status>().is_ok()
        || matches!(step, "recovered" | "reconciled")
        || [
            trust::STEP_OFFERED,
            trust::STEP_GRANTED,
            trust::STEP_TRUSTED,
            trust::STEP_REVOKED,
        ]
        .contains(&step)
}

/// Whether an incident without a card should get one when a live change asks.
fn wants_card(incident: &Incident, now: Timestamp) -> bool {
    incident.is_open()
        || incident
            .resolved_at
            .is_some_and(|at| now.since(at) <= RECENTLY_RESOLVED)
}

/// Whether Slack is behind the incident: no card yet (and it wants one), a card that shows
/// another decision, a value `refresh` old, or status changes without their reply.
pub fn needs_sync(incident: &Incident, now: Timestamp, refresh: Duration) -> bool {
    match &incident.slack {
        None => wants_card(incident, now),
        Some(SlackCard { ts: None, .. }) => false,
        Some(card) => {
            replies_pending(incident, card)
                || card.digest != card_digest(incident)
                || refresh_due(incident, card, now, refresh)
        }
    }
}

/// Whether a timeline entry at or after the card's thread position needs a reply.
fn replies_pending(incident: &Incident, card: &SlackCard) -> bool {
    incident
        .timeline
        .iter()
        .skip(card.posted_entries)
        .any(|entry| announces(&entry.step))
}

/// Whether the card shows an older reading and was drawn at least `refresh` ago.
fn refresh_due(incident: &Incident, card: &SlackCard, now: Timestamp, refresh: Duration) -> bool {
    card.drawn_occurrences != incident.occurrences
        && card.drawn_at.is_none_or(|at| now.since(at) >= refresh)
}

/// The sync itself, run by the outbox's sender for the channel's queue.
#[derive(Clone)]
pub struct CardSync {
    store: SharedStore,
    public_url: String,
    /// `[slack] card_refresh`: how old a card's reading may get before it is redrawn.
    refresh: Duration,
}

impl SyncIncident for CardSync {
    /// Brings one incident's card and thread up to date in `calls.channel`: posts the card
    /// if there is none, updates it if it shows something else, then posts the missing
    /// thread replies in timeline order; again while the incident keeps changing (a few
    /// rounds at most, then the next queued sync goes on). Progress is saved after every
    /// call, so a retry continues where this stopped.
    async fn sync(&self, calls: &mut ChannelCalls<'_>, id: &IncidentId) -> Result<(), CallError> {
        for _ in 0..5 {
            if !self.sync_once(calls, id).await? {
                break;
            }
        }
        Ok(())
    }
}

impl CardSync {
    pub fn new(store: SharedStore, public_url: &str, refresh: Duration) -> Self {
        CardSync {
            store,
            public_url: public_url.to_owned(),
            refresh,
        }
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
            let (version, occurrences) = (incident.version, incident.occurrences);
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
                    rev: 0,
                    drawn_at: Some(Timestamp::now()),
                    drawn_occurrences: occurrences,
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
                        rev: 0,
                        drawn_at: Some(Timestamp::now()),
                        drawn_occurrences: occurrences,
                    }
                }
                Err(other) => return Err(other),
            };
            incident = self
                .save(id, |current| current.is_none().then(|| card.clone()))
                .await?;
        }
        let Some(card) = incident.slack.clone() else {
            return Ok(called);
        };
        let Some(ts) = card.ts.clone() else {
            return Ok(called);
        };
        let digest = card_digest(&incident);
        if digest != card.digest || refresh_due(&incident, &card, Timestamp::now(), self.refresh) {
            let (version, occurrences) = (incident.version, incident.occurrences);
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
                .save(id, |current| {
                    current.map(|c| SlackCard {
                        digest: digest.clone(),
                        rendered_version: version,
                        error: error.clone(),
                        drawn_at: Some(Timestamp::now()),
                        drawn_occurrences: occurrences,
                        ..c.clone()
                    })
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
            if !announces(&entry.step) {
                // Steps within a status (`analyzed`, `proposal_refused`) show on the card
                // and the page; the thread gets one reply per status change. Skipping all
                // of them up to the next announced entry costs one save and no call.
                let skip_to = incident
                    .timeline
                    .iter()
                    .enumerate()
                    .skip(next)
                    .find(|(_, e)| announces(&e.step))
                    .map_or(incident.timeline.len(), |(at, _)| at);
                incident = self
                    .save(id, |current| {
                        current.map(|c| SlackCard {
                            posted_entries: c.posted_entries.max(skip_to),
                            ..c.clone()
                        })
                    })
                    .await?;
                continue;
            }
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
                .save(id, |current| {
                    current.map(|c| SlackCard {
                        posted_entries: c.posted_entries.max(next + 1),
                        error: error.clone().or_else(|| c.error.clone()),
                        ..c.clone()
                    })
                })
                .await?;
        }
    }

    /// Saves the card record `change` makes of the stored one (`None`: leave it), with
    /// compare-and-set on the card's `rev`, re-reading after a conflict; returns the
    /// incident as it is now. The incident's own version is never touched.
    async fn save(
        &self,
        id: &IncidentId,
        change: impl Fn(Option<&SlackCard>) -> Option<SlackCard>,
    ) -> Result<Incident, StoreError> {
        loop {
            let mut incident = self
                .store
                .get_incident(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            let Some(mut card) = change(incident.slack.as_ref()) else {
                return Ok(incident);
            };
            card.rev = incident.slack.as_ref().map_or(0, |c| c.rev);
            match self.store.put_card(id, &card).await {
                Ok(stored) => {
                    incident.slack = Some(stored);
                    return Ok(incident);
                }
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(other) => return Err(other),
            }
        }
    }
}

/// The card task: queues a sync whenever an incident changes (and on a periodic catch-up).
/// A new card goes to the channel `[[slack.routes]]` choose (else `[slack] channel`); an
/// existing card, and with it its thread, stays in the channel its record names.
pub struct Cards {
    sentinel: Arc<Sentinel>,
    outbox: Outbox,
}

impl Cards {
    pub fn new(sentinel: Arc<Sentinel>, outbox: Outbox) -> Self {
        Cards { sentinel, outbox }
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
        let mut incidents = match self.sentinel.incidents(query).await {
            Ok(incidents) => incidents,
            Err(e) => {
                tracing::warn!(error = %e, "card catch-up cannot list incidents");
                return;
            }
        };
        // Oldest first, so cards appear in the channel in the order incidents opened.
        incidents.reverse();
        let now = Timestamp::now();
        for incident in incidents {
            // What was already over is history, not news: no new card for it, and no redraw
            // of an old one (a changed template after an upgrade would redraw them all).
            // An incident that closed recently still gets its last state drawn.
            let closed = !incident.is_open();
            if closed && (incident.slack.is_none() || !wants_card(&incident, now)) {
                continue;
            }
            self.consider(&incident).await;
        }
    }

    async fn consider_id(&self, id: &IncidentId) {
        match self.sentinel.incident(id).await {
            Ok(incident) => self.consider(&incident).await,
            Err(ServiceError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "card task cannot read an incident")
            }
        }
    }

    /// Queues a sync for one incident if Slack is behind on it.
    pub async fn consider(&self, incident: &Incident) {
        let refresh = self.sentinel.settings().slack.card_refresh.0;
        if !needs_sync(incident, Timestamp::now(), refresh) {
            return;
        }
        // The channel is chosen once, for the first post: the card's sync runs in that
        // channel's queue and saves it in the card's record, so later changes (a raised
        // severity included) update the card where it is and keep its thread there.
        let settings = self.sentinel.settings();
        let channel = match &incident.slack {
            Some(card) => card.channel.as_str(),
            None => match settings.slack.channel_for(incident) {
                Some(channel) => channel,
                None => {
                    tracing::debug!(incident = %incident.id, "no route and no [slack] channel: no card");
                    return;
                }
            },
        };
        if let Err(e) = self.outbox.sync_incident(channel, &incident.id).await {
            tracing::warn!(incident = %incident.id, error = %e, "cannot queue the incident card");
        }
    }
}
