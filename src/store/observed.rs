//! A store that announces incident changes: every incident created or updated through it is
//! sent, by id, to subscribers (the Slack card sync, the status page's live stream).
//!
//! The announcement is a hint to look now, not the record: subscribers read the incident
//! from the store, and catch up from the store after a restart or a lagged channel.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    Control, IncidentQuery, Lease, OutboxItem, ParkedItem, SharedStore, Store, StoreResult,
};
use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Sighting, Silence, SlackCard,
    Timestamp,
};

pub struct Observed {
    inner: SharedStore,
    /// Ids of incidents just created or updated.
    changes: broadcast::Sender<IncidentId>,
}

impl Observed {
    pub fn new(inner: SharedStore) -> Self {
        let (changes, _) = broadcast::channel(1024);
        Observed { inner, changes }
    }

    /// The sending side, for whoever hands out subscriptions.
    pub fn changes(&self) -> broadcast::Sender<IncidentId> {
        self.changes.clone()
    }

    fn announce(&self, id: &IncidentId) {
        // No subscriber is fine: nobody needs to know.
        let _ = self.changes.send(id.clone());
    }
}

#[async_trait]
impl Store for Observed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> StoreResult<()> {
        self.inner.ping().await
    }
    async fn create_incident(&self, incident: &Incident) -> StoreResult<()> {
        self.inner.create_incident(incident).await?;
        self.announce(&incident.id);
        Ok(())
    }
    async fn get_incident(&self, id: &IncidentId) -> StoreResult<Option<Incident>> {
        self.inner.get_incident(id).await
    }
    async fn list_incidents(&self, query: IncidentQuery) -> StoreResult<Vec<Incident>> {
        self.inner.list_incidents(query).await
    }
    async fn update_incident(&self, incident: &Incident) -> StoreResult<Incident> {
        let stored = self.inner.update_incident(incident).await?;
        self.announce(&stored.id);
        Ok(stored)
    }
    async fn open_incident_for(&self, fingerprint: &Fingerprint) -> StoreResult<Option<Incident>> {
        self.inner.open_incident_for(fingerprint).await
    }
    async fn record_sighting(
        &self,
        id: &IncidentId,
        value: f64,
        threshold: f64,
        at: Timestamp,
    ) -> StoreResult<Option<Sighting>> {
        let sighting = self.inner.record_sighting(id, value, threshold, at).await?;
        if sighting.is_some() {
            self.announce(id);
        }
        Ok(sighting)
    }
    async fn put_card(&self, id: &IncidentId, card: &SlackCard) -> StoreResult<SlackCard> {
        // Not announced: the card sync wrote it, and nothing else follows cards.
        self.inner.put_card(id, card).await
    }
    async fn append_audit(&self, record: AuditRecord) -> StoreResult<AuditEntry> {
        self.inner.append_audit(record).await
    }
    async fn list_audit(&self) -> StoreResult<Vec<AuditEntry>> {
        self.inner.list_audit().await
    }
    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        self.inner.claim_once(key, ttl, now).await
    }
    async fn add_silence(&self, silence: &Silence) -> StoreResult<()> {
        self.inner.add_silence(silence).await
    }
    async fn active_silences(&self, now: Timestamp) -> StoreResult<Vec<Silence>> {
        self.inner.active_silences(now).await
    }
    async fn expire_silence(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        self.inner.expire_silence(id, now).await
    }
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        self.inner.acquire_lease(name, holder, ttl, now).await
    }
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        self.inner.release_lease(lease).await
    }
    async fn check_fence(&self, name: &str, token: u64, now: Timestamp) -> StoreResult<bool> {
        self.inner.check_fence(name, token, now).await
    }
    async fn record_auto_action(&self, key: &str, at: Timestamp) -> StoreResult<()> {
        self.inner.record_auto_action(key, at).await
    }
    async fn auto_actions_since(&self, since: Timestamp) -> StoreResult<BTreeMap<String, u64>> {
        self.inner.auto_actions_since(since).await
    }
    async fn control(&self) -> StoreResult<Control> {
        self.inner.control().await
    }
    async fn set_control(&self, control: &Control) -> StoreResult<()> {
        self.inner.set_control(control).await
    }
    async fn switch_paused(
        &self,
        paused: bool,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<Option<Control>> {
        self.inner.switch_paused(paused, by, at).await
    }
    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64> {
        self.inner.outbox_push(channel, payload).await
    }
    async fn outbox_head(&self, channel: &str) -> StoreResult<Option<OutboxItem>> {
        self.inner.outbox_head(channel).await
    }
    async fn outbox_ack(&self, channel: &str, seq: u64) -> StoreResult<bool> {
        self.inner.outbox_ack(channel, seq).await
    }
    async fn outbox_park(
        &self,
        channel: &str,
        seq: u64,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        self.inner.outbox_park(channel, seq, error, now).await
    }
    async fn outbox_channels(&self) -> StoreResult<Vec<String>> {
        self.inner.outbox_channels().await
    }
    async fn outbox_len(&self, channel: &str) -> StoreResult<usize> {
        self.inner.outbox_len(channel).await
    }
    async fn outbox_parked(&self, channel: &str) -> StoreResult<Vec<ParkedItem>> {
        self.inner.outbox_parked(channel).await
    }
}
