//! State: incidents, the audit chain, idempotency keys, silences, leases, control flags,
//! remembered sets with an expiry and the outbox (ordered queues: one per Slack channel, named by the channel's id, and
//! `pagerduty:events`; names with a `:` are not Slack's, and Slack's sender leaves them be).
//!
//! One trait, [`Store`], two backends: [`redis::RedisStore`] (several replicas share one
//! workspace) and [`embedded::EmbeddedStore`] (redb on disk, one node, the default). Both pass
//! the same conformance suite (`tests/it/store.rs`). Every write is acknowledged only once it
//! is durable for that backend, and every read-modify-write is atomic: incidents are
//! compare-and-set on `version`, at most one incident per fingerprint is open, and audit
//! entries are chained under a compare-and-set on the chain's head.
//!
//! The store only keeps values; it decides nothing about them.

pub mod embedded;
pub mod observed;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Sighting, Silence, SlackCard,
    TimelineEntry, Timestamp, TrustGrant, TrustKey, TrustRun,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("incident {0} not found")]
    NotFound(IncidentId),
    /// Someone else wrote the incident since it was read.
    #[error("incident {id} changed meanwhile: expected version {expected}, found {found}")]
    VersionConflict {
        id: IncidentId,
        expected: u64,
        found: u64,
    },
    /// The fingerprint already has an open incident.
    #[error("{fingerprint} already has an open incident: {existing}")]
    DuplicateOpen {
        fingerprint: Fingerprint,
        existing: IncidentId,
    },
    #[error("incident {0} already exists")]
    AlreadyExists(IncidentId),
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Which incidents to list. Always newest first (by `opened_at`, then id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IncidentQuery {
    pub open_only: bool,
    pub limit: usize,
}

impl Default for IncidentQuery {
    fn default() -> Self {
        IncidentQuery {
            open_only: false,
            limit: 100,
        }
    }
}

/// A lease: who may run a singleton task (the monitor loop) and with which fencing token.
/// A new holder always gets a larger token than every holder before it, so a paused old
/// holder's late writes can be recognised and refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: u64,
    pub expires_at: Timestamp,
}

/// Switches people flip at run time, shared by every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Control {
    /// `/sentinel pause`: no automatic execution until resumed.
    pub paused: bool,
    pub changed_by: Option<String>,
    pub changed_at: Option<Timestamp>,
}

/// A message waiting in a Slack channel's outbox (`slack::outbox`). The store keeps the
/// payload as it was given and knows nothing of Slack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxItem {
    /// Its place: larger is later, unique across all channels, never reused.
    pub seq: u64,
    pub payload: serde_json::Value,
}

/// A message the outbox gave up on, kept with the reason for people to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParkedItem {
    pub seq: u64,
    pub payload: serde_json::Value,
    pub error: String,
    /// Unix milliseconds.
    pub parked_at: i64,
}

/// What [`Store::grant_trust`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustGrantOutcome {
    Granted,
    /// The pair already had this grant; nothing changed.
    AlreadyTrusted(TrustGrant),
    /// The pair's run of verified approvals is shorter than asked; nothing changed.
    NotEarned {
        verified_in_a_row: u64,
    },
}

/// How many parked messages each channel keeps; older ones are forgotten.
pub const PARKED_PER_CHANNEL: usize = 1000;

/// Everything Sentinel persists.
#[async_trait]
pub trait Store: Send + Sync {
    /// `redis` or `embedded`, for the status page and logs.
    fn backend(&self) -> &'static str;

    /// Fails when the store cannot be reached; `/readyz` uses it.
    async fn ping(&self) -> StoreResult<()>;

    /// Stores a new, open incident. Refuses with `DuplicateOpen` when its fingerprint already
    /// has an open incident, atomically, so two replicas never open the same one twice.
    async fn create_incident(&self, incident: &Incident) -> StoreResult<()>;

    async fn get_incident(&self, id: &IncidentId) -> StoreResult<Option<Incident>>;

    async fn list_incidents(&self, query: IncidentQuery) -> StoreResult<Vec<Incident>>;

    /// Compare-and-set: stores `incident` if the stored version still equals
    /// `incident.version`, bumping the version by one; returns what was stored. Resolving
    /// frees the fingerprint; reopening claims it again (`DuplicateOpen` if taken).
    async fn update_incident(&self, incident: &Incident) -> StoreResult<Incident>;

    /// The open incident of a fingerprint, if there is one.
    async fn open_incident_for(&self, fingerprint: &Fingerprint) -> StoreResult<Option<Incident>>;

    /// Records one more sighting of an incident's breach: its latest value and threshold, when,
    /// and one more occurrence, atomically. Never bumps the incident's version (a repeat is
    /// an observation, not a decision). `None` when no incident has that id.
    async fn record_sighting(
        &self,
        id: &IncidentId,
        value: f64,
        threshold: f64,
        at: Timestamp,
    ) -> StoreResult<Option<Sighting>>;

    /// Stores an incident's Slack card, a record of its own: compare-and-set on the card's
    /// `rev` (0 when there is none yet), which it bumps; returns what was stored.
    /// `VersionConflict` when another write came first, `NotFound` without the incident.
    /// Reads of the incident show the card as its `slack` field.
    async fn put_card(&self, id: &IncidentId, card: &SlackCard) -> StoreResult<SlackCard>;

    /// Chains `record` after the last audit entry and stores it.
    async fn append_audit(&self, record: AuditRecord) -> StoreResult<AuditEntry>;

    /// The whole audit log, oldest first.
    async fn list_audit(&self) -> StoreResult<Vec<AuditEntry>>;

    /// At most `limit` audit entries with a sequence number above `after`, oldest first.
    async fn list_audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        let entries = self.list_audit().await?;
        Ok(entries
            .into_iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .collect())
    }

    /// The highest audit sequence number this store ever appended, kept apart from the
    /// entries (its own key, its own table) and never lowered, so entries cut from the end
    /// of the chain show as a chain shorter than this. 0 before the first entry.
    async fn audit_high_water(&self) -> StoreResult<u64>;

    /// Claims `key` for `ttl`: true the first time, false while an earlier claim lives.
    /// Slack event ids go through here so a retried delivery is handled once.
    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool>;

    /// Remembers `member` in the set `set` until `until` (a later call moves the date), for
    /// small records that only matter for a while: who opened Sentinel's Slack Home tab
    /// recently (`slack::home`). Expired members are forgotten as the set is written.
    async fn remember(&self, set: &str, member: &str, until: Timestamp) -> StoreResult<()>;

    /// The members of `set` still remembered at `now`, sorted.
    async fn remembered(&self, set: &str, now: Timestamp) -> StoreResult<Vec<String>>;

    async fn add_silence(&self, silence: &Silence) -> StoreResult<()>;

    /// Silences still in force at `now`, oldest first.
    async fn active_silences(&self, now: Timestamp) -> StoreResult<Vec<Silence>>;

    /// Ends a silence now. False when no silence has that id or it already ended.
    async fn expire_silence(&self, id: &str, now: Timestamp) -> StoreResult<bool>;

    /// Takes the lease `name` for `holder` when it is free or expired (with a new, larger
    /// token), or renews it when `holder` already has it (same token). `None`: someone else
    /// holds it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>>;

    /// Gives the lease up, if `lease` is still the current one.
    async fn release_lease(&self, lease: &Lease) -> StoreResult<()>;

    /// Whether `token` is still the live token of lease `name`: checked right before a side
    /// effect that only the holder may cause.
    async fn check_fence(&self, name: &str, token: u64, now: Timestamp) -> StoreResult<bool>;

    /// Counts one automatic action against `key` (`action:target`) for the budget and the
    /// circuit breaker. Entries older than a day are forgotten.
    async fn record_auto_action(&self, key: &str, at: Timestamp) -> StoreResult<()>;

    /// How many automatic actions each key had since `since`; keys with none are left out.
    async fn auto_actions_since(&self, since: Timestamp) -> StoreResult<BTreeMap<String, u64>>;

    async fn control(&self) -> StoreResult<Control>;

    async fn set_control(&self, control: &Control) -> StoreResult<()>;

    /// Pauses (or resumes) automatic execution atomically: `Some` with the flags as stored
    /// when this call changed them, `None` when they already were so (of two concurrent
    /// pauses exactly one changes anything, and only it is audited).
    async fn switch_paused(
        &self,
        paused: bool,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<Option<Control>>;

    /// Appends a message to the end of `channel`'s outbox queue; returns its `seq`.
    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64>;

    /// Appends `payloads`, in order, to the end of `queue` and sets the mark `mark` to `new`,
    /// in one atomic step, if the mark still holds `expected` (`None`: never set). False, and
    /// nothing changed, when another writer moved the mark first. A sender keeps in the mark
    /// what it has queued already (`pagerduty::Announced`), so two replicas or a restart
    /// never queue the same event twice, and an event is never marked without being queued.
    /// Marks are compared as JSON values and kept for good.
    async fn outbox_push_marked(
        &self,
        queue: &str,
        mark: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
        payloads: &[serde_json::Value],
    ) -> StoreResult<bool>;

    /// The mark `mark` as [`Store::outbox_push_marked`] last set it.
    async fn outbox_mark(&self, mark: &str) -> StoreResult<Option<serde_json::Value>>;

    /// The oldest message of `channel`'s queue, left in place.
    async fn outbox_head(&self, channel: &str) -> StoreResult<Option<OutboxItem>>;

    /// Removes message `seq` from `channel`'s queue once it is sent. False when it was not
    /// there (already removed).
    async fn outbox_ack(&self, channel: &str, seq: u64) -> StoreResult<bool>;

    /// Moves message `seq` out of the queue into `channel`'s parked messages, with `error`,
    /// in one atomic step. False when it was not queued.
    async fn outbox_park(
        &self,
        channel: &str,
        seq: u64,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// The channels with queued messages, sorted.
    async fn outbox_channels(&self) -> StoreResult<Vec<String>>;

    /// How many messages `channel` has queued.
    async fn outbox_len(&self, channel: &str) -> StoreResult<usize>;

    /// `channel`'s parked messages, oldest first (at most [`PARKED_PER_CHANNEL`]).
    async fn outbox_parked(&self, channel: &str) -> StoreResult<Vec<ParkedItem>>;

    /// One more fix of `key` that a person approved and that verified: the pair's run of
    /// consecutive verified approvals grows by one, atomically; returns the new run.
    async fn trust_count_verified(&self, key: &TrustKey) -> StoreResult<u64>;

    /// A fix of `key` failed verification or was rolled back: its run starts again from 0
    /// and its grant, if any, is removed, in one atomic step. Returns the removed grant.
    async fn trust_break(&self, key: &TrustKey) -> StoreResult<Option<TrustGrant>>;

    /// Every pair with a run of verified approvals (runs of 0 left out), sorted by key.
    async fn trust_runs(&self) -> StoreResult<Vec<TrustRun>>;

    /// Stores `grant` if its pair has no grant yet and its run is at least `min_run`, in one
    /// atomic step (a concurrent [`trust_break`](Store::trust_break) comes wholly before or
    /// after it).
    async fn grant_trust(&self, grant: &TrustGrant, min_run: u64)
        -> StoreResult<TrustGrantOutcome>;

    /// Every grant in force, oldest first.
    async fn trust_grants(&self) -> StoreResult<Vec<TrustGrant>>;

    /// Removes grant `id` (the pair's run is kept); returns it, `None` when no grant has it.
    async fn revoke_trust(&self, id: &str) -> StoreResult<Option<TrustGrant>>;

    /// Appends one timeline entry, retrying the compare-and-set if the incident moved.
    async fn append_timeline(
        &self,
        id: &IncidentId,
        entry: TimelineEntry,
    ) -> StoreResult<Incident> {
        loop {
            let mut incident = self
                .get_incident(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.clone()))?;
            incident.updated_at = entry.at;
            incident.timeline.push(entry.clone());
            match self.update_incident(&incident).await {
                Err(StoreError::VersionConflict { .. }) => continue,
                other => return other,
            }
        }
    }
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the store the settings ask for: Redis when `REDIS_URL` is set, else embedded.
pub async fn open(settings: &crate::config::Settings) -> anyhow::Result<SharedStore> {
    use anyhow::Context;
    use secrecy::ExposeSecret;
    match &settings.secrets.redis_url {
        Some(url) => {
            let store =
                redis::RedisStore::connect(url.expose_secret(), &settings.store.redis_prefix)
                    .await
                    .context("cannot connect to Redis (REDIS_URL)")?;
            Ok(Arc::new(store))
        }
        None => {
            let path = settings.data_dir.join("sentinel.redb");
            let store = embedded::EmbeddedStore::open(&path)
                .with_context(|| format!("cannot open the embedded store at {}", path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

/// How long automatic actions are remembered for the budget.
pub const AUTO_ACTION_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Serialises a value for storage.
fn encode<T: Serialize>(value: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Reads a stored value back.
fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}
