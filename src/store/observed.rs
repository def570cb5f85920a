//! A store that announces incident changes: every incident created or updated through it is
//! sent, by id, to subscribers (the Slack card sync, the status page's live stream).
//!
//! The announcement is a hint to look now, not the record: subscribers read the incident
//! from the store, and catch up from the store after a restart or a lagged channel.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use super::{
    Control, IncidentQuery, Lease, OutboxItem, ParkedItem, SharedStore, Store, StoreResult,
    TrustGrantOutcome,
};
use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Sighting, Silence, SlackCard,
    Timestamp, TrustGrant, TrustKey, TrustRun,
};

pub struct Observed {
    inner: SharedStore,
    /// Ids of incidents just created or updated, and a count of every change.
    changes: Changes,
    /// The audit high-water mark kept outside the backend, when a file is given: a Redis
    /// restarted without persistence loses its own mark with the log, this file does not.
    local_mark: Option<LocalMark>,
}

impl Observed {
    pub fn new(inner: SharedStore) -> Self {
        let (ids, _) = broadcast::channel(1024);
        Observed {
            inner,
            changes: Changes {
                ids,
                count: Arc::new(AtomicU64::new(0)),
            },
            local_mark: None,
        }
    }

    /// Also keeps the highest audit sequence number seen in `path` (created when needed), and
    /// reports the larger of it and the backend's own as `audit_high_water`.
    pub fn with_audit_mark(mut self, path: PathBuf) -> Self {
        self.local_mark = Some(LocalMark::open(path));
        self
    }

    /// The sending side, for whoever hands out subscriptions.
    pub fn changes(&self) -> Changes {
        self.changes.clone()
    }

    fn announce(&self, id: &IncidentId) {
        self.changes.count.fetch_add(1, Ordering::Relaxed);
        // No subscriber is fine: nobody needs to know.
        let _ = self.changes.ids.send(id.clone());
    }
}

/// What the observed store announces: the ids of incidents as they change, and a count of
/// every change through it (incidents, sightings, the pause switch), which answers kept
/// ready compare to know they are still current. Changes made by other replicas are not
/// counted here; whoever keeps an answer ready also bounds its age.
#[derive(Clone)]
pub struct Changes {
    ids: broadcast::Sender<IncidentId>,
    count: Arc<AtomicU64>,
}

impl Changes {
    pub fn subscribe(&self) -> broadcast::Receiver<IncidentId> {
        self.ids.subscribe()
    }

    /// How many changes went through the store so far (wraps).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
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
        let entry = self.inner.append_audit(record).await?;
        if let Some(mark) = &self.local_mark {
            mark.raise(entry.seq);
        }
        Ok(entry)
    }
    async fn list_audit(&self) -> StoreResult<Vec<AuditEntry>> {
        self.inner.list_audit().await
    }
    async fn list_audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.inner.list_audit_page(after, limit).await
    }
    async fn audit_high_water(&self) -> StoreResult<u64> {
        let backend = self.inner.audit_high_water().await?;
        let local = self.local_mark.as_ref().map_or(0, LocalMark::get);
        Ok(backend.max(local))
    }
    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        self.inner.claim_once(key, ttl, now).await
    }
    async fn remember(&self, set: &str, member: &str, until: Timestamp) -> StoreResult<()> {
        self.inner.remember(set, member, until).await
    }
    async fn remembered(&self, set: &str, now: Timestamp) -> StoreResult<Vec<String>> {
        self.inner.remembered(set, now).await
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
        self.inner.set_control(control).await?;
        self.changes.count.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    async fn switch_paused(
        &self,
        paused: bool,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<Option<Control>> {
        let switched = self.inner.switch_paused(paused, by, at).await?;
        self.changes.count.fetch_add(1, Ordering::Relaxed);
        Ok(switched)
    }
    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64> {
        self.inner.outbox_push(channel, payload).await
    }
    async fn outbox_push_marked(
        &self,
        queue: &str,
        mark: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
        payloads: &[serde_json::Value],
    ) -> StoreResult<bool> {
        self.inner
            .outbox_push_marked(queue, mark, expected, new, payloads)
            .await
    }
    async fn outbox_mark(&self, mark: &str) -> StoreResult<Option<serde_json::Value>> {
        self.inner.outbox_mark(mark).await
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
    async fn trust_count_verified(&self, key: &TrustKey) -> StoreResult<u64> {
        self.inner.trust_count_verified(key).await
    }
    async fn trust_break(&self, key: &TrustKey) -> StoreResult<Option<TrustGrant>> {
        self.inner.trust_break(key).await
    }
    async fn trust_runs(&self) -> StoreResult<Vec<TrustRun>> {
        self.inner.trust_runs().await
    }
    async fn grant_trust(
        &self,
        grant: &TrustGrant,
        min_run: u64,
    ) -> StoreResult<TrustGrantOutcome> {
        self.inner.grant_trust(grant, min_run).await
    }
    async fn trust_grants(&self) -> StoreResult<Vec<TrustGrant>> {
        self.inner.trust_grants().await
    }
    async fn revoke_trust(&self, id: &str) -> StoreResult<Option<TrustGrant>> {
        self.inner.revoke_trust(id).await
    }
}

/// The audit high-water mark in a file (a decimal number), raised after each append and
/// never lowered. Written without fsync: after a crash it may lag the last few entries,
/// which only weakens the check for those, never raises a false alarm.
struct LocalMark {
    path: PathBuf,
    seen: AtomicU64,
    /// One writer at a time, so the file always ends up holding the largest value.
    writing: std::sync::Mutex<()>,
}

impl LocalMark {
    fn open(path: PathBuf) -> Self {
        let seen = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        LocalMark {
            path,
            seen: AtomicU64::new(seen),
            writing: std::sync::Mutex::new(()),
        }
    }

    fn get(&self) -> u64 {
        self.seen.load(Ordering::Acquire)
    }

    fn raise(&self, seq: u64) {
        if self.seen.fetch_max(seq, Ordering::AcqRel) >= seq {
            return;
        }
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let value = self.get();
        let temporary = self.path.with_extension("tmp");
        let written = self
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&temporary, format!("{value}\n")))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        if let Err(e) = written {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot write the audit high-water mark");
        }
    }
}
