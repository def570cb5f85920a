//! The embedded store: one redb file under `SENTINEL_DATA_DIR`, for a single node.
//!
//! Every operation is one redb transaction run on the blocking pool; write transactions
//! commit with `Durability::Immediate` (fsync) before the call returns, so an acknowledged
//! write survives `kill -9`. redb allows one writer at a time, which makes each
//! read-modify-write below atomic without further locking.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    decode, encode, Control, IncidentQuery, Lease, OutboxItem, ParkedItem, Store, StoreError,
    StoreResult, PARKED_PER_CHANNEL,
};
use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Silence, Timestamp,
};

/// id → incident JSON.
const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
/// (opened_at ms, id) → (): incidents in opening order.
const INCIDENT_ORDER: TableDefinition<(i64, &str), ()> = TableDefinition::new("incident_order");
/// fingerprint → id of its open incident.
const OPEN_BY_FINGERPRINT: TableDefinition<&str, &str> =
    TableDefinition::new("open_by_fingerprint");
/// seq → audit entry JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// idempotency key → expiry (ms).
const ONCE: TableDefinition<&str, i64> = TableDefinition::new("once");
/// (expiry ms, key) → (): lets expired idempotency keys be purged in order.
const ONCE_EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("once_expiry");
/// silence id → silence JSON.
const SILENCES: TableDefinition<&str, &[u8]> = TableDefinition::new("silences");
/// lease name → lease JSON.
const LEASES: TableDefinition<&str, &[u8]> = TableDefinition::new("leases");
/// counter name → value (lease tokens).
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// (action key, at ms, nonce) → (): automatic actions, for the budget.
const AUTO_ACTIONS: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("auto_actions");
/// (channel, seq) → payload JSON: the Slack outbox, one ordered queue per channel.
const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// (channel, seq) → parked item JSON: messages the outbox gave up on.
const OUTBOX_PARKED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox_parked");
/// singleton name → JSON (the control flags).
const SINGLETONS: TableDefinition<&str, &[u8]> = TableDefinition::new("singletons");

/// How many expired idempotency keys one claim purges at most.
const PURGE_BATCH: usize = 64;

pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the database file, creating its directory.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let db = Database::create(path).map_err(unavailable)?;
        // Create every table up front so read transactions never meet a missing one.
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(INCIDENTS).map_err(unavailable)?;
            txn.open_table(INCIDENT_ORDER).map_err(unavailable)?;
            txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            txn.open_table(ONCE).map_err(unavailable)?;
            txn.open_table(ONCE_EXPIRY).map_err(unavailable)?;
            txn.open_table(SILENCES).map_err(unavailable)?;
            txn.open_table(LEASES).map_err(unavailable)?;
            txn.open_table(COUNTERS).map_err(unavailable)?;
            txn.open_table(SINGLETONS).map_err(unavailable)?;
            txn.open_table(AUTO_ACTIONS).map_err(unavailable)?;
            txn.open_table(OUTBOX).map_err(unavailable)?;
            txn.open_table(OUTBOX_PARKED).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    /// Runs a read-only transaction right here. redb readers never wait for the writer
    /// (copy-on-write snapshots), and these reads take microseconds, so handing them to the
    /// blocking pool would cost more (two thread wake-ups) than the read itself.
    async fn read_now<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Database) -> StoreResult<T>,
    {
        f(&self.db)
    }

    /// Runs `f` on the blocking pool with the database: writes, which wait for fsync, and
    /// reads of unbounded size.
    async fn with_db<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> StoreResult<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(unavailable)?
    }
}

fn read_incident(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> StoreResult<Option<Incident>> {
    match table.get(id).map_err(unavailable)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

fn read_lease(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> StoreResult<Option<Lease>> {
    match table.get(name).map_err(unavailable)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn ping(&self) -> StoreResult<()> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            txn.open_table(SINGLETONS).map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn create_incident(&self, incident: &Incident) -> StoreResult<()> {
        let incident = incident.clone();
        self.with_db(move |db| {
            let bytes = encode(&incident)?;
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
                let mut open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
                let mut order = txn.open_table(INCIDENT_ORDER).map_err(unavailable)?;
                let fingerprint = incident.fingerprint.as_str();
                // Only an open incident claims its fingerprint, as in the Redis backend: a
                // closed one is stored without being refused by the open one.
                if incident.is_open() {
                    if let Some(existing) = open.get(fingerprint).map_err(unavailable)? {
                        let existing = IncidentId::parse(existing.value())
                            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                        return Err(StoreError::DuplicateOpen {
                            fingerprint: incident.fingerprint.clone(),
                            existing,
                        });
                    }
                }
                if incidents
                    .get(incident.id.as_str())
                    .map_err(unavailable)?
                    .is_some()
                {
                    return Err(StoreError::AlreadyExists(incident.id.clone()));
                }
                incidents
                    .insert(incident.id.as_str(), bytes.as_slice())
                    .map_err(unavailable)?;
                order
                    .insert((incident.opened_at.unix_millis(), incident.id.as_str()), ())
                    .map_err(unavailable)?;
                if incident.is_open() {
                    open.insert(fingerprint, incident.id.as_str())
                        .map_err(unavailable)?;
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get_incident(&self, id: &IncidentId) -> StoreResult<Option<Incident>> {
        let id = id.clone();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
            read_incident(&incidents, id.as_str())
        })
        .await
    }

    async fn list_incidents(&self, query: IncidentQuery) -> StoreResult<Vec<Incident>> {
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
            let mut found = Vec::new();
            if query.open_only {
                let open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
                for row in open.iter().map_err(unavailable)? {
                    let (_, id) = row.map_err(unavailable)?;
                    if let Some(incident) = read_incident(&incidents, id.value())? {
                        found.push(incident);
                    }
                }
                found.sort_by(|a, b| {
                    (b.opened_at, b.id.as_str()).cmp(&(a.opened_at, a.id.as_str()))
                });
                found.truncate(query.limit);
            } else {
                let order = txn.open_table(INCIDENT_ORDER).map_err(unavailable)?;
                for row in order.iter().map_err(unavailable)?.rev() {
                    if found.len() >= query.limit {
                        break;
                    }
                    let (key, _) = row.map_err(unavailable)?;
                    let (_, id) = key.value();
                    if let Some(incident) = read_incident(&incidents, id)? {
                        found.push(incident);
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn update_incident(&self, incident: &Incident) -> StoreResult<Incident> {
        let mut incident = incident.clone();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
                let mut open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
                let stored = read_incident(&incidents, incident.id.as_str())?
                    .ok_or_else(|| StoreError::NotFound(incident.id.clone()))?;
                if stored.version != incident.version {
                    return Err(StoreError::VersionConflict {
                        id: incident.id.clone(),
                        expected: incident.version,
                        found: stored.version,
                    });
                }
                let fingerprint = incident.fingerprint.as_str();
                let holder = open
                    .get(fingerprint)
                    .map_err(unavailable)?
                    .map(|id| id.value().to_owned());
                if incident.is_open() {
                    match holder {
                        Some(other) if other != incident.id.as_str() => {
                            return Err(StoreError::DuplicateOpen {
                                fingerprint: incident.fingerprint.clone(),
                                existing: IncidentId::parse(&other)
                                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            });
                        }
                        _ => {
                            open.insert(fingerprint, incident.id.as_str())
                                .map_err(unavailable)?;
                        }
                    }
                } else if holder.as_deref() == Some(incident.id.as_str()) {
                    open.remove(fingerprint).map_err(unavailable)?;
                }
                incident.version += 1;
                incidents
                    .insert(incident.id.as_str(), encode(&incident)?.as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(incident)
        })
        .await
    }

    async fn open_incident_for(&self, fingerprint: &Fingerprint) -> StoreResult<Option<Incident>> {
        let fingerprint = fingerprint.clone();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
            let incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
            match open.get(fingerprint.as_str()).map_err(unavailable)? {
                Some(id) => read_incident(&incidents, id.value()),
                None => Ok(None),
            }
        })
        .await
    }

    async fn append_audit(&self, record: AuditRecord) -> StoreResult<AuditEntry> {
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let entry = {
                let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
                let last: Option<AuditEntry> = match audit.last().map_err(unavailable)? {
                    Some((_, bytes)) => Some(decode(bytes.value())?),
                    None => None,
                };
                let entry =
                    AuditEntry::chain(last.as_ref().map(|e| (e.seq, e.hash.as_str())), record);
                audit
                    .insert(entry.seq, encode(&entry)?.as_slice())
                    .map_err(unavailable)?;
                entry
            };
            txn.commit().map_err(unavailable)?;
            Ok(entry)
        })
        .await
    }

    async fn list_audit(&self) -> StoreResult<Vec<AuditEntry>> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let audit = txn.open_table(AUDIT).map_err(unavailable)?;
            let mut entries = Vec::new();
            for row in audit.iter().map_err(unavailable)? {
                let (_, bytes) = row.map_err(unavailable)?;
                entries.push(decode(bytes.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        let key = key.to_owned();
        self.with_db(move |db| {
            let now_ms = now.unix_millis();
            let txn = db.begin_write().map_err(unavailable)?;
            let claimed = {
                let mut once = txn.open_table(ONCE).map_err(unavailable)?;
                let mut expiry = txn.open_table(ONCE_EXPIRY).map_err(unavailable)?;
                // Purge a bounded batch of expired keys so the table does not grow forever.
                let expired: Vec<(i64, String)> = expiry
                    .range::<(i64, &str)>(..(now_ms, ""))
                    .map_err(unavailable)?
                    .take(PURGE_BATCH)
                    .map(|row| {
                        row.map(|(k, _)| {
                            let (at, key) = k.value();
                            (at, key.to_owned())
                        })
                    })
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                for (at, old) in &expired {
                    expiry.remove((*at, old.as_str())).map_err(unavailable)?;
                    let current = once
                        .get(old.as_str())
                        .map_err(unavailable)?
                        .map(|v| v.value());
                    if current == Some(*at) {
                        once.remove(old.as_str()).map_err(unavailable)?;
                    }
                }
                let live = once
                    .get(key.as_str())
                    .map_err(unavailable)?
                    .map(|v| v.value())
                    .filter(|until| *until > now_ms);
                if live.is_some() {
                    false
                } else {
                    let until = now.saturating_add(ttl).unix_millis();
                    once.insert(key.as_str(), until).map_err(unavailable)?;
                    expiry
                        .insert((until, key.as_str()), ())
                        .map_err(unavailable)?;
                    true
                }
            };
            txn.commit().map_err(unavailable)?;
            Ok(claimed)
        })
        .await
    }

    async fn add_silence(&self, silence: &Silence) -> StoreResult<()> {
        let silence = silence.clone();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut silences = txn.open_table(SILENCES).map_err(unavailable)?;
                silences
                    .insert(silence.id.as_str(), encode(&silence)?.as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn active_silences(&self, now: Timestamp) -> StoreResult<Vec<Silence>> {
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let silences = txn.open_table(SILENCES).map_err(unavailable)?;
            let mut active = Vec::new();
            for row in silences.iter().map_err(unavailable)? {
                let (_, bytes) = row.map_err(unavailable)?;
                let silence: Silence = decode(bytes.value())?;
                if silence.is_active(now) {
                    active.push(silence);
                }
            }
            active.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
            Ok(active)
        })
        .await
    }

    async fn expire_silence(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        let id = id.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let ended = {
                let mut silences = txn.open_table(SILENCES).map_err(unavailable)?;
                let silence: Option<Silence> =
                    match silences.get(id.as_str()).map_err(unavailable)? {
                        Some(bytes) => Some(decode(bytes.value())?),
                        None => None,
                    };
                match silence {
                    Some(mut silence) if silence.is_active(now) => {
                        silence.ends_at = now;
                        silences
                            .insert(id.as_str(), encode(&silence)?.as_slice())
                            .map_err(unavailable)?;
                        true
                    }
                    _ => false,
                }
            };
            txn.commit().map_err(unavailable)?;
            Ok(ended)
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let lease = {
                let mut leases = txn.open_table(LEASES).map_err(unavailable)?;
                let mut counters = txn.open_table(COUNTERS).map_err(unavailable)?;
                let expires_at = now.saturating_add(ttl);
                let lease = match read_lease(&leases, &name)? {
                    Some(current) if current.expires_at > now && current.holder != holder => None,
                    Some(current) if current.expires_at > now => Some(Lease {
                        expires_at,
                        ..current
                    }),
                    _ => {
                        let counter = format!("lease:{name}");
                        let token = counters
                            .get(counter.as_str())
                            .map_err(unavailable)?
                            .map(|v| v.value())
                            .unwrap_or(0)
                            + 1;
                        counters
                            .insert(counter.as_str(), token)
                            .map_err(unavailable)?;
                        Some(Lease {
                            name: name.clone(),
                            holder: holder.clone(),
                            token,
                            expires_at,
                        })
                    }
                };
                if let Some(lease) = &lease {
                    leases
                        .insert(name.as_str(), encode(lease)?.as_slice())
                        .map_err(unavailable)?;
                }
                lease
            };
            txn.commit().map_err(unavailable)?;
            Ok(lease)
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let lease = lease.clone();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut leases = txn.open_table(LEASES).map_err(unavailable)?;
                if let Some(current) = read_lease(&leases, &lease.name)? {
                    if current.token == lease.token {
                        leases.remove(lease.name.as_str()).map_err(unavailable)?;
                    }
                }
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn check_fence(&self, name: &str, token: u64, now: Timestamp) -> StoreResult<bool> {
        let name = name.to_owned();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let leases = txn.open_table(LEASES).map_err(unavailable)?;
            Ok(read_lease(&leases, &name)?
                .is_some_and(|lease| lease.token == token && lease.expires_at > now))
        })
        .await
    }

    async fn record_auto_action(&self, key: &str, at: Timestamp) -> StoreResult<()> {
        let key = key.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut table = txn.open_table(AUTO_ACTIONS).map_err(unavailable)?;
                let forget_before = at.unix_millis()
                    - i64::try_from(super::AUTO_ACTION_MEMORY.as_millis()).unwrap_or(i64::MAX);
                table
                    .retain(|(_, when, _), ()| when >= forget_before)
                    .map_err(unavailable)?;
                let nonce: u64 = rand::random();
                table
                    .insert((key.as_str(), at.unix_millis(), nonce), ())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn auto_actions_since(
        &self,
        since: Timestamp,
    ) -> StoreResult<std::collections::BTreeMap<String, u64>> {
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(AUTO_ACTIONS).map_err(unavailable)?;
            let mut counts = std::collections::BTreeMap::new();
            for row in table.iter().map_err(unavailable)? {
                let (key, _) = row.map_err(unavailable)?;
                let (name, when, _) = key.value();
                if when >= since.unix_millis() {
                    *counts.entry(name.to_owned()).or_insert(0) += 1;
                }
            }
            Ok(counts)
        })
        .await
    }

    async fn control(&self) -> StoreResult<Control> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let singletons = txn.open_table(SINGLETONS).map_err(unavailable)?;
            match singletons.get("control").map_err(unavailable)? {
                Some(bytes) => decode(bytes.value()),
                None => Ok(Control::default()),
            }
        })
        .await
    }

    async fn set_control(&self, control: &Control) -> StoreResult<()> {
        let bytes = encode(control)?;
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            {
                let mut singletons = txn.open_table(SINGLETONS).map_err(unavailable)?;
                singletons
                    .insert("control", bytes.as_slice())
                    .map_err(unavailable)?;
            }
            txn.commit().map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64> {
        let channel = channel.to_owned();
        let bytes = encode(payload)?;
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let seq = {
                let mut counters = txn.open_table(COUNTERS).map_err(unavailable)?;
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let seq = counters
                    .get("outbox")
                    .map_err(unavailable)?
                    .map(|v| v.value())
                    .unwrap_or(0)
                    + 1;
                counters.insert("outbox", seq).map_err(unavailable)?;
                outbox
                    .insert((channel.as_str(), seq), bytes.as_slice())
                    .map_err(unavailable)?;
                seq
            };
            txn.commit().map_err(unavailable)?;
            Ok(seq)
        })
        .await
    }

    async fn outbox_head(&self, channel: &str) -> StoreResult<Option<OutboxItem>> {
        let channel = channel.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
            let mut rows = outbox
                .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                .map_err(unavailable)?;
            match rows.next() {
                Some(row) => {
                    let (key, bytes) = row.map_err(unavailable)?;
                    Ok(Some(OutboxItem {
                        seq: key.value().1,
                        payload: decode(bytes.value())?,
                    }))
                }
                None => Ok(None),
            }
        })
        .await
    }

    async fn outbox_ack(&self, channel: &str, seq: u64) -> StoreResult<bool> {
        let channel = channel.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let removed = {
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let removed = outbox
                    .remove((channel.as_str(), seq))
                    .map_err(unavailable)?
                    .is_some();
                removed
            };
            txn.commit().map_err(unavailable)?;
            Ok(removed)
        })
        .await
    }

    async fn outbox_park(
        &self,
        channel: &str,
        seq: u64,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let (channel, error) = (channel.to_owned(), error.to_owned());
        self.with_db(move |db| {
            let txn = db.begin_write().map_err(unavailable)?;
            let parked = {
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let mut parked = txn.open_table(OUTBOX_PARKED).map_err(unavailable)?;
                let payload: Option<serde_json::Value> = match outbox
                    .remove((channel.as_str(), seq))
                    .map_err(unavailable)?
                {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                };
                match payload {
                    Some(payload) => {
                        let item = ParkedItem {
                            seq,
                            payload,
                            error,
                            parked_at: now.unix_millis(),
                        };
                        parked
                            .insert((channel.as_str(), seq), encode(&item)?.as_slice())
                            .map_err(unavailable)?;
                        // Keep the newest PARKED_PER_CHANNEL.
                        let range = (channel.as_str(), 0)..=(channel.as_str(), u64::MAX);
                        let count = parked.range(range.clone()).map_err(unavailable)?.count();
                        if count > PARKED_PER_CHANNEL {
                            let old: Vec<u64> = parked
                                .range(range)
                                .map_err(unavailable)?
                                .take(count - PARKED_PER_CHANNEL)
                                .map(|row| row.map(|(k, _)| k.value().1))
                                .collect::<Result<_, _>>()
                                .map_err(unavailable)?;
                            for old_seq in old {
                                parked
                                    .remove((channel.as_str(), old_seq))
                                    .map_err(unavailable)?;
                            }
                        }
                        true
                    }
                    None => false,
                }
            };
            txn.commit().map_err(unavailable)?;
            Ok(parked)
        })
        .await
    }

    async fn outbox_channels(&self) -> StoreResult<Vec<String>> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
            let mut channels: Vec<String> = Vec::new();
            // Jump from one channel to the next instead of reading every message.
            loop {
                let next = match channels.last() {
                    None => outbox.iter().map_err(unavailable)?.next(),
                    Some(last) => outbox
                        .range::<(&str, u64)>((
                            std::ops::Bound::Excluded((last.as_str(), u64::MAX)),
                            std::ops::Bound::Unbounded,
                        ))
                        .map_err(unavailable)?
                        .next(),
                };
                match next {
                    Some(row) => {
                        let (key, _) = row.map_err(unavailable)?;
                        channels.push(key.value().0.to_owned());
                    }
                    None => return Ok(channels),
                }
            }
        })
        .await
    }

    async fn outbox_len(&self, channel: &str) -> StoreResult<usize> {
        let channel = channel.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
            let count = outbox
                .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                .map_err(unavailable)?
                .count();
            Ok(count)
        })
        .await
    }

    async fn outbox_parked(&self, channel: &str) -> StoreResult<Vec<ParkedItem>> {
        let channel = channel.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let parked = txn.open_table(OUTBOX_PARKED).map_err(unavailable)?;
            let mut items = Vec::new();
            for row in parked
                .range((channel.as_str(), 0)..=(channel.as_str(), u64::MAX))
                .map_err(unavailable)?
            {
                let (_, bytes) = row.map_err(unavailable)?;
                items.push(decode(bytes.value())?);
            }
            Ok(items)
        })
        .await
    }
}
