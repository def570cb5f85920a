//! The embedded store: one redb file under `SENTINEL_DATA_DIR`, for a single node.
//!
//! Reads are short read-only transactions run inline (redb readers never wait). Writes go to
//! one writer thread, which commits them with `Durability::Immediate` (fsync) before the call
//! returns, so an acknowledged write survives `kill -9`; each write is a read-modify-write
//! inside the one write transaction redb allows at a time, so it is atomic without further
//! locking.
//!
//! **Group commit.** Writes that arrive while a commit is under way wait in the writer's queue
//! and are then run, in arrival order, in ONE transaction with one fsync: under concurrency
//! (many Slack clicks, many approvals) the disk sees one flush per batch instead of one per
//! write. The order is a serial order, so every write sees the ones before it. A write whose
//! closure fails (a version conflict, say) must not leave half its changes in a shared
//! transaction: then the transaction is aborted, the writes before the failed one are run
//! again and committed together (they see exactly the state they saw the first time), the
//! failed one is run again alone (and, failing again, commits nothing), and the writes after
//! it form the next batch. Write closures are therefore `Fn`: they may run more than once,
//! and only the committed run counts.
//!
//! **Gathering.** When the last batch held more than one write (writes are arriving
//! concurrently), the writer sleeps for [`GATHER`] before taking the next batch, so the writes
//! that arrive meanwhile share its commit. It sleeps rather than waiting on the queue: a
//! thread blocked on the queue is woken by every send, and on this 2-core VM those wake-ups,
//! one per write, cost more than the commits they saved (bench/slack.sh, clicks: about 3 500
//! commits/s and a p99 of 5–7 ms without gathering; about 450 commits/s and a p99 around
//! 4 ms with it). A write arriving after a quiet spell is committed at once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    decode, encode, Control, IncidentQuery, Lease, OutboxItem, ParkedItem, Store, StoreError,
    StoreResult, TrustGrantOutcome, PARKED_PER_CHANNEL,
};
use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Sighting, Silence, SlackCard,
    Timestamp, TrustGrant, TrustKey, TrustRun,
};

/// id → incident JSON: the decision (compare-and-set on its version).
const INCIDENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("incidents");
/// id → sighting JSON: the latest reading of the incident's breach, never versioned.
const SIGHTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("sightings");
/// id → Slack card JSON: what the card on screen shows, compare-and-set on its own `rev`.
const CARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("cards");
/// (opened_at ms, id) → (): incidents in opening order.
const INCIDENT_ORDER: TableDefinition<(i64, &str), ()> = TableDefinition::new("incident_order");
/// fingerprint → id of its open incident.
const OPEN_BY_FINGERPRINT: TableDefinition<&str, &str> =
    TableDefinition::new("open_by_fingerprint");
/// seq → audit entry JSON.
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// The highest audit seq ever appended, under [`AUDIT_HIGH_WATER`], in a table of its own so
/// entries cut from the end of `audit` show (`Store::audit_high_water`).
const AUDIT_MARKS: TableDefinition<&str, u64> = TableDefinition::new("audit_marks");
const AUDIT_HIGH_WATER: &str = "high_water";
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
/// mark name → JSON: what a sender has queued already (`Store::outbox_push_marked`).
const OUTBOX_MARKS: TableDefinition<&str, &[u8]> = TableDefinition::new("outbox_marks");
/// singleton name → JSON (the control flags).
const SINGLETONS: TableDefinition<&str, &[u8]> = TableDefinition::new("singletons");
/// `signal:action:target` → the pair's run of verified approvals (`TrustRun` JSON).
const TRUST_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("trust_runs");
/// `signal:action:target` → the pair's grant (`TrustGrant` JSON).
const TRUST_GRANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("trust_grants");
/// Remembered sets: (set, member) → until, Unix milliseconds (`Store::remember`).
const REMEMBERED: TableDefinition<(&str, &str), i64> = TableDefinition::new("remembered");

/// How many expired idempotency keys one claim purges at most.
const PURGE_BATCH: usize = 64;

/// The most writes committed together.
const MAX_BATCH: usize = 256;

/// How long the writer lets writes gather before a batch when writes are arriving together.
const GATHER: Duration = Duration::from_millis(1);

pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The writer thread's queue; `None` once the store is being dropped.
    writes: Option<std::sync::mpsc::Sender<Box<dyn WriteJob>>>,
    /// Joined on drop, so the database file is closed when the store is gone.
    writer: Option<std::thread::JoinHandle<()>>,
    /// Write transactions committed so far (several writes share one under group commit).
    commits: Arc<std::sync::atomic::AtomicU64>,
}

/// One queued write: run it (maybe twice, see the module comment), then report.
trait WriteJob: Send {
    /// Runs the write in `txn`; `false` when it failed and the transaction must not commit.
    fn run(&mut self, txn: &WriteTransaction) -> bool;
    /// Reports the outcome: the write's own result if the transaction committed (or it
    /// failed), else why the commit failed.
    fn finish(self: Box<Self>, committed: Result<(), String>);
}

struct Job<T, F> {
    write: F,
    result: Option<StoreResult<T>>,
    reply: tokio::sync::oneshot::Sender<StoreResult<T>>,
}

impl<T, F> WriteJob for Job<T, F>
where
    T: Send,
    F: Fn(&WriteTransaction) -> StoreResult<T> + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> bool {
        // A panicking write fails alone; the writer thread, and every other write, go on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.write)(txn)))
            .unwrap_or_else(|_| Err(unavailable("a write panicked")));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let result = match (committed, self.result) {
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(value))) => Ok(value),
            (Err(why), _) => Err(unavailable(why)),
            (Ok(()), None) => Err(unavailable("a write was never run")),
        };
        // The caller may have gone (its request was cancelled); the write stands.
        let _ = self.reply.send(result);
    }
}

/// Commits `txn`, counting it.
fn commit(txn: WriteTransaction, commits: &std::sync::atomic::AtomicU64) -> Result<(), String> {
    txn.commit().map_err(|e| e.to_string())?;
    commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Runs one write in a transaction of its own.
fn write_alone(db: &Database, commits: &std::sync::atomic::AtomicU64, mut job: Box<dyn WriteJob>) {
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => return job.finish(Err(e.to_string())),
    };
    if job.run(&txn) {
        let committed = commit(txn, commits);
        job.finish(committed);
    } else {
        drop(txn); // aborts: nothing of the failed write is kept
        job.finish(Ok(()));
    }
}

/// The writer thread: takes what is queued, commits it together, answers everyone.
fn writer_loop(
    db: Arc<Database>,
    queue: std::sync::mpsc::Receiver<Box<dyn WriteJob>>,
    commits: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut busy = false;
    while let Ok(first) = queue.recv() {
        if busy {
            std::thread::sleep(GATHER);
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        busy = batch.len() > 1;
        write_together(&db, &commits, batch);
    }
}

/// Runs `batch` in order in as few transactions as its failed writes allow: one when none
/// fails; otherwise the writes before a failed one commit together, the failed one runs
/// again alone, and the rest continue as a batch of their own.
fn write_together(
    db: &Database,
    commits: &std::sync::atomic::AtomicU64,
    mut batch: Vec<Box<dyn WriteJob>>,
) {
    while !batch.is_empty() {
        if batch.len() == 1 {
            return write_alone(db, commits, batch.pop().expect("one job"));
        }
        let txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                for job in batch {
                    job.finish(Err(e.to_string()));
                }
                return;
            }
        };
        let Some(failed) = batch.iter_mut().position(|job| !job.run(&txn)) else {
            let committed = commit(txn, commits);
            for job in batch {
                job.finish(committed.clone());
            }
            return;
        };
        drop(txn); // aborts: nothing of the failed write, nor of the others, is kept
        let mut rest = batch.split_off(failed);
        let failed = rest.remove(0);
        write_together(db, commits, batch);
        write_alone(db, commits, failed);
        batch = rest;
    }
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has committed what it holds.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// redb's page cache. Its default is 1 GiB, and it keeps every page a write touched: under
/// 50 000 deduplicated clicks in 15 s (bench/ceiling.sh) the process grew from 16 MiB to
/// 97 MiB and stayed there. Sentinel's working set (open incidents, cards, the dedup keys'
/// recent end) is a few MiB; cold reads come from the OS page cache.
const CACHE_BYTES: usize = 4 * 1024 * 1024;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("embedded store: {e}"))
}

impl EmbeddedStore {
    /// Opens (or creates) the database file, creating its directory.
    pub fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(unavailable)?;
        // Create every table up front so read transactions never meet a missing one.
        let txn = db.begin_write().map_err(unavailable)?;
        {
            txn.open_table(INCIDENTS).map_err(unavailable)?;
            txn.open_table(SIGHTINGS).map_err(unavailable)?;
            txn.open_table(CARDS).map_err(unavailable)?;
            txn.open_table(INCIDENT_ORDER).map_err(unavailable)?;
            txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
            txn.open_table(AUDIT).map_err(unavailable)?;
            txn.open_table(AUDIT_MARKS).map_err(unavailable)?;
            txn.open_table(ONCE).map_err(unavailable)?;
            txn.open_table(ONCE_EXPIRY).map_err(unavailable)?;
            txn.open_table(SILENCES).map_err(unavailable)?;
            txn.open_table(LEASES).map_err(unavailable)?;
            txn.open_table(COUNTERS).map_err(unavailable)?;
            txn.open_table(SINGLETONS).map_err(unavailable)?;
            txn.open_table(AUTO_ACTIONS).map_err(unavailable)?;
            txn.open_table(OUTBOX).map_err(unavailable)?;
            txn.open_table(OUTBOX_PARKED).map_err(unavailable)?;
            txn.open_table(TRUST_RUNS).map_err(unavailable)?;
            txn.open_table(TRUST_GRANTS).map_err(unavailable)?;
            txn.open_table(REMEMBERED).map_err(unavailable)?;
            txn.open_table(OUTBOX_MARKS).map_err(unavailable)?;
        }
        txn.commit().map_err(unavailable)?;
        let db = Arc::new(db);
        let (writes, queue) = std::sync::mpsc::channel();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let writer = std::thread::Builder::new()
            .name("sentinel-store-writer".to_owned())
            .spawn({
                let (db, commits) = (Arc::clone(&db), Arc::clone(&commits));
                move || writer_loop(db, queue, commits)
            })
            .map_err(unavailable)?;
        Ok(EmbeddedStore {
            db,
            writes: Some(writes),
            writer: Some(writer),
            commits,
        })
    }

    /// Write transactions committed since the store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Queues a write for the writer thread and waits until it is committed (see the module
    /// comment on group commit).
    async fn write<T, F>(&self, write: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Fn(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Box::new(Job {
            write,
            result: None,
            reply,
        });
        self.writes
            .as_ref()
            .ok_or_else(|| unavailable("the store is closing"))?
            .send(job)
            .map_err(|_| unavailable("the writer thread has stopped"))?;
        answer
            .await
            .map_err(|_| unavailable("the writer thread stopped before answering"))?
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

/// The decision record alone, as compare-and-set compares it.
fn read_decision(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> StoreResult<Option<Incident>> {
    match table.get(id).map_err(unavailable)? {
        Some(bytes) => decode(bytes.value()).map(Some),
        None => Ok(None),
    }
}

/// The three records of an incident, read together.
struct IncidentTables<T> {
    incidents: T,
    sightings: T,
    cards: T,
}

impl IncidentTables<redb::ReadOnlyTable<&'static str, &'static [u8]>> {
    fn open(txn: &redb::ReadTransaction) -> StoreResult<Self> {
        Ok(IncidentTables {
            incidents: txn.open_table(INCIDENTS).map_err(unavailable)?,
            sightings: txn.open_table(SIGHTINGS).map_err(unavailable)?,
            cards: txn.open_table(CARDS).map_err(unavailable)?,
        })
    }
}

impl<T: ReadableTable<&'static str, &'static [u8]>> IncidentTables<T> {
    /// The incident as people see it: the decision with its latest sighting and its card.
    fn read(&self, id: &str) -> StoreResult<Option<Incident>> {
        let Some(mut incident) = read_decision(&self.incidents, id)? else {
            return Ok(None);
        };
        if let Some(bytes) = self.sightings.get(id).map_err(unavailable)? {
            let sighting: Sighting = decode(bytes.value())?;
            incident.apply_sighting(&sighting);
        }
        if let Some(bytes) = self.cards.get(id).map_err(unavailable)? {
            incident.slack = Some(decode(bytes.value())?);
        }
        Ok(Some(incident))
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

/// Why [`read_history`] could not read the file.
#[derive(Debug, thiserror::Error)]
pub enum ReadOnlyError {
    #[error("there is no embedded store at {0}")]
    Missing(String),
    /// A running server holds redb's lock on the file.
    #[error(
        "the embedded store at {0} is in use by a running Sentinel (redb allows one process at \
         a time); point SENTINEL_DATA_DIR at a copy of its directory, or use Redis"
    )]
    InUse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every incident (newest first, as `list_incidents` returns them) and the whole audit log,
/// read from the file opened read-only: no table is created, nothing is written, no lease or
/// lock other than redb's own shared reader lock is taken (`sentinel replay`).
pub fn read_history(path: &Path) -> Result<(Vec<Incident>, Vec<AuditEntry>), ReadOnlyError> {
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(ReadOnlyError::Missing(shown));
    }
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(ReadOnlyError::InUse(shown)),
        Err(e) => return Err(unavailable(e).into()),
    };
    let txn = db.begin_read().map_err(unavailable)?;
    let incidents = IncidentTables::open(&txn)?;
    let order = txn.open_table(INCIDENT_ORDER).map_err(unavailable)?;
    let mut found = Vec::new();
    for row in order.iter().map_err(unavailable)?.rev() {
        let (key, _) = row.map_err(unavailable)?;
        let (_, id) = key.value();
        if let Some(incident) = incidents.read(id)? {
            found.push(incident);
        }
    }
    let audit = txn.open_table(AUDIT).map_err(unavailable)?;
    let mut entries = Vec::new();
    for row in audit.iter().map_err(unavailable)? {
        let (_, bytes) = row.map_err(unavailable)?;
        entries.push(decode(bytes.value())?);
    }
    Ok((found, entries))
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
        self.write(move |txn| {
            let bytes = encode(&incident)?;
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
            Ok(())
        })
        .await
    }

    async fn get_incident(&self, id: &IncidentId) -> StoreResult<Option<Incident>> {
        let id = id.clone();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            IncidentTables::open(&txn)?.read(id.as_str())
        })
        .await
    }

    async fn list_incidents(&self, query: IncidentQuery) -> StoreResult<Vec<Incident>> {
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let incidents = IncidentTables::open(&txn)?;
            let mut found = Vec::new();
            if query.open_only {
                let open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
                for row in open.iter().map_err(unavailable)? {
                    let (_, id) = row.map_err(unavailable)?;
                    if let Some(incident) = incidents.read(id.value())? {
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
                    if let Some(incident) = incidents.read(id)? {
                        found.push(incident);
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    async fn update_incident(&self, incident: &Incident) -> StoreResult<Incident> {
        let incident = incident.clone();
        self.write(move |txn| {
            let mut incident = incident.clone();
            {
                let mut incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
                let mut open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
                let stored = read_decision(&incidents, incident.id.as_str())?
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
            Ok(incident)
        })
        .await
    }

    async fn open_incident_for(&self, fingerprint: &Fingerprint) -> StoreResult<Option<Incident>> {
        let fingerprint = fingerprint.clone();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let open = txn.open_table(OPEN_BY_FINGERPRINT).map_err(unavailable)?;
            let incidents = IncidentTables::open(&txn)?;
            match open.get(fingerprint.as_str()).map_err(unavailable)? {
                Some(id) => incidents.read(id.value()),
                None => Ok(None),
            }
        })
        .await
    }

    async fn record_sighting(
        &self,
        id: &IncidentId,
        value: f64,
        threshold: f64,
        at: Timestamp,
    ) -> StoreResult<Option<Sighting>> {
        let id = id.clone();
        self.write(move |txn| {
            let incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
            let mut sightings = txn.open_table(SIGHTINGS).map_err(unavailable)?;
            let occurrences = match sightings.get(id.as_str()).map_err(unavailable)? {
                Some(bytes) => decode::<Sighting>(bytes.value())?.occurrences,
                None => match read_decision(&incidents, id.as_str())? {
                    Some(incident) => incident.occurrences,
                    None => return Ok(None),
                },
            };
            let sighting = Sighting {
                value,
                threshold,
                occurrences: occurrences + 1,
                last_seen_at: at,
            };
            sightings
                .insert(id.as_str(), encode(&sighting)?.as_slice())
                .map_err(unavailable)?;
            Ok(Some(sighting))
        })
        .await
    }

    async fn put_card(&self, id: &IncidentId, card: &SlackCard) -> StoreResult<SlackCard> {
        let (id, card) = (id.clone(), card.clone());
        self.write(move |txn| {
            let incidents = txn.open_table(INCIDENTS).map_err(unavailable)?;
            let mut cards = txn.open_table(CARDS).map_err(unavailable)?;
            let Some(decision) = read_decision(&incidents, id.as_str())? else {
                return Err(StoreError::NotFound(id.clone()));
            };
            let stored_rev = match cards.get(id.as_str()).map_err(unavailable)? {
                Some(bytes) => decode::<SlackCard>(bytes.value())?.rev,
                // A card written before cards had a record of their own.
                None => decision.slack.as_ref().map_or(0, |c| c.rev),
            };
            if stored_rev != card.rev {
                return Err(StoreError::VersionConflict {
                    id: id.clone(),
                    expected: card.rev,
                    found: stored_rev,
                });
            }
            let mut stored = card.clone();
            stored.rev += 1;
            cards
                .insert(id.as_str(), encode(&stored)?.as_slice())
                .map_err(unavailable)?;
            Ok(stored)
        })
        .await
    }

    async fn append_audit(&self, record: AuditRecord) -> StoreResult<AuditEntry> {
        self.write(move |txn| {
            let entry = {
                let mut audit = txn.open_table(AUDIT).map_err(unavailable)?;
                let last: Option<AuditEntry> = match audit.last().map_err(unavailable)? {
                    Some((_, bytes)) => Some(decode(bytes.value())?),
                    None => None,
                };
                let entry = AuditEntry::chain(
                    last.as_ref().map(|e| (e.seq, e.hash.as_str())),
                    record.clone(),
                );
                audit
                    .insert(entry.seq, encode(&entry)?.as_slice())
                    .map_err(unavailable)?;
                entry
            };
            let mut marks = txn.open_table(AUDIT_MARKS).map_err(unavailable)?;
            let seen = marks
                .get(AUDIT_HIGH_WATER)
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0);
            if entry.seq > seen {
                marks
                    .insert(AUDIT_HIGH_WATER, entry.seq)
                    .map_err(unavailable)?;
            }
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

    async fn list_audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        self.with_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let audit = txn.open_table(AUDIT).map_err(unavailable)?;
            let mut entries = Vec::new();
            for row in audit
                .range(after.saturating_add(1)..)
                .map_err(unavailable)?
                .take(limit)
            {
                let (_, bytes) = row.map_err(unavailable)?;
                entries.push(decode(bytes.value())?);
            }
            Ok(entries)
        })
        .await
    }

    async fn audit_high_water(&self) -> StoreResult<u64> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let marks = txn.open_table(AUDIT_MARKS).map_err(unavailable)?;
            let seen = marks.get(AUDIT_HIGH_WATER).map_err(unavailable)?;
            Ok(seen.map(|v| v.value()).unwrap_or(0))
        })
        .await
    }

    async fn claim_once(&self, key: &str, ttl: Duration, now: Timestamp) -> StoreResult<bool> {
        let key = key.to_owned();
        self.write(move |txn| {
            let now_ms = now.unix_millis();
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
            Ok(claimed)
        })
        .await
    }

    async fn remember(&self, set: &str, member: &str, until: Timestamp) -> StoreResult<()> {
        let (set, member) = (set.to_owned(), member.to_owned());
        let now = Timestamp::now().unix_millis();
        self.write(move |txn| {
            {
                let mut table = txn.open_table(REMEMBERED).map_err(unavailable)?;
                // The sets are small (people who opened a tab in a day): forget the expired
                // members of this set as it is written.
                let mut expired = Vec::new();
                for row in table.range((set.as_str(), "")..).map_err(unavailable)? {
                    let (key, until) = row.map_err(unavailable)?;
                    let (in_set, old) = key.value();
                    if in_set != set {
                        break;
                    }
                    if until.value() <= now {
                        expired.push(old.to_owned());
                    }
                }
                for old in &expired {
                    table
                        .remove((set.as_str(), old.as_str()))
                        .map_err(unavailable)?;
                }
                table
                    .insert((set.as_str(), member.as_str()), until.unix_millis())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn remembered(&self, set: &str, now: Timestamp) -> StoreResult<Vec<String>> {
        let set = set.to_owned();
        self.read_now(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let table = txn.open_table(REMEMBERED).map_err(unavailable)?;
            let mut members = Vec::new();
            for row in table.range((set.as_str(), "")..).map_err(unavailable)? {
                let (key, until) = row.map_err(unavailable)?;
                let (in_set, member) = key.value();
                if in_set != set {
                    break;
                }
                if until.value() > now.unix_millis() {
                    members.push(member.to_owned());
                }
            }
            Ok(members)
        })
        .await
    }

    async fn add_silence(&self, silence: &Silence) -> StoreResult<()> {
        let silence = silence.clone();
        self.write(move |txn| {
            {
                let mut silences = txn.open_table(SILENCES).map_err(unavailable)?;
                silences
                    .insert(silence.id.as_str(), encode(&silence)?.as_slice())
                    .map_err(unavailable)?;
            }
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
        self.write(move |txn| {
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
        self.write(move |txn| {
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
            Ok(lease)
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let lease = lease.clone();
        self.write(move |txn| {
            {
                let mut leases = txn.open_table(LEASES).map_err(unavailable)?;
                if let Some(current) = read_lease(&leases, &lease.name)? {
                    if current.token == lease.token {
                        leases.remove(lease.name.as_str()).map_err(unavailable)?;
                    }
                }
            }
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
        self.write(move |txn| {
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
        self.write(move |txn| {
            {
                let mut singletons = txn.open_table(SINGLETONS).map_err(unavailable)?;
                singletons
                    .insert("control", bytes.as_slice())
                    .map_err(unavailable)?;
            }
            Ok(())
        })
        .await
    }

    async fn switch_paused(
        &self,
        paused: bool,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<Option<Control>> {
        let by = by.to_owned();
        self.write(move |txn| {
            let mut singletons = txn.open_table(SINGLETONS).map_err(unavailable)?;
            let current: Control = match singletons.get("control").map_err(unavailable)? {
                Some(bytes) => decode(bytes.value())?,
                None => Control::default(),
            };
            if current.paused == paused {
                return Ok(None);
            }
            let next = Control {
                paused,
                changed_by: Some(by.clone()),
                changed_at: Some(at),
            };
            singletons
                .insert("control", encode(&next)?.as_slice())
                .map_err(unavailable)?;
            Ok(Some(next))
        })
        .await
    }

    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64> {
        let channel = channel.to_owned();
        let bytes = encode(payload)?;
        self.write(move |txn| {
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
            Ok(seq)
        })
        .await
    }

    async fn outbox_push_marked(
        &self,
        queue: &str,
        mark: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
        payloads: &[serde_json::Value],
    ) -> StoreResult<bool> {
        let (queue, mark) = (queue.to_owned(), mark.to_owned());
        let expected = expected.cloned();
        let new = encode(new)?;
        let payloads = payloads
            .iter()
            .map(encode)
            .collect::<StoreResult<Vec<_>>>()?;
        self.write(move |txn| {
            let mut marks = txn.open_table(OUTBOX_MARKS).map_err(unavailable)?;
            let current: Option<serde_json::Value> =
                match marks.get(mark.as_str()).map_err(unavailable)? {
                    Some(bytes) => Some(decode(bytes.value())?),
                    None => None,
                };
            if current != expected {
                return Ok(false);
            }
            marks
                .insert(mark.as_str(), new.as_slice())
                .map_err(unavailable)?;
            let mut counters = txn.open_table(COUNTERS).map_err(unavailable)?;
            let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
            let mut seq = counters
                .get("outbox")
                .map_err(unavailable)?
                .map(|v| v.value())
                .unwrap_or(0);
            for payload in &payloads {
                seq += 1;
                outbox
                    .insert((queue.as_str(), seq), payload.as_slice())
                    .map_err(unavailable)?;
            }
            counters.insert("outbox", seq).map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn outbox_mark(&self, mark: &str) -> StoreResult<Option<serde_json::Value>> {
        let mark = mark.to_owned();
        self.with_db(move |db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let marks = txn.open_table(OUTBOX_MARKS).map_err(unavailable)?;
            let value = match marks.get(mark.as_str()).map_err(unavailable)? {
                Some(bytes) => Some(decode(bytes.value())?),
                None => None,
            };
            Ok(value)
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
        self.write(move |txn| {
            let removed = {
                let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
                let removed = outbox
                    .remove((channel.as_str(), seq))
                    .map_err(unavailable)?
                    .is_some();
                removed
            };
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
        self.write(move |txn| {
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
                            error: error.clone(),
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

    async fn trust_count_verified(&self, key: &TrustKey) -> StoreResult<u64> {
        let key = key.clone();
        self.write(move |txn| {
            let mut runs = txn.open_table(TRUST_RUNS).map_err(unavailable)?;
            let name = key.as_string();
            let mut run = match runs.get(name.as_str()).map_err(unavailable)? {
                Some(bytes) => decode::<TrustRun>(bytes.value())?,
                None => TrustRun {
                    key: key.clone(),
                    verified_in_a_row: 0,
                },
            };
            run.verified_in_a_row += 1;
            runs.insert(name.as_str(), encode(&run)?.as_slice())
                .map_err(unavailable)?;
            Ok(run.verified_in_a_row)
        })
        .await
    }

    async fn trust_break(&self, key: &TrustKey) -> StoreResult<Option<TrustGrant>> {
        let name = key.as_string();
        self.write(move |txn| {
            let mut runs = txn.open_table(TRUST_RUNS).map_err(unavailable)?;
            let mut grants = txn.open_table(TRUST_GRANTS).map_err(unavailable)?;
            runs.remove(name.as_str()).map_err(unavailable)?;
            let removed = grants.remove(name.as_str()).map_err(unavailable)?;
            removed.map(|bytes| decode(bytes.value())).transpose()
        })
        .await
    }

    async fn trust_runs(&self) -> StoreResult<Vec<TrustRun>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let runs = txn.open_table(TRUST_RUNS).map_err(unavailable)?;
            let mut found = Vec::new();
            for row in runs.iter().map_err(unavailable)? {
                let (_, bytes) = row.map_err(unavailable)?;
                let run: TrustRun = decode(bytes.value())?;
                if run.verified_in_a_row > 0 {
                    found.push(run);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn grant_trust(
        &self,
        grant: &TrustGrant,
        min_run: u64,
    ) -> StoreResult<TrustGrantOutcome> {
        let grant = grant.clone();
        self.write(move |txn| {
            let runs = txn.open_table(TRUST_RUNS).map_err(unavailable)?;
            let mut grants = txn.open_table(TRUST_GRANTS).map_err(unavailable)?;
            let name = grant.key.as_string();
            if let Some(bytes) = grants.get(name.as_str()).map_err(unavailable)? {
                return Ok(TrustGrantOutcome::AlreadyTrusted(decode(bytes.value())?));
            }
            let run = match runs.get(name.as_str()).map_err(unavailable)? {
                Some(bytes) => decode::<TrustRun>(bytes.value())?.verified_in_a_row,
                None => 0,
            };
            if run < min_run {
                return Ok(TrustGrantOutcome::NotEarned {
                    verified_in_a_row: run,
                });
            }
            grants
                .insert(name.as_str(), encode(&grant)?.as_slice())
                .map_err(unavailable)?;
            Ok(TrustGrantOutcome::Granted)
        })
        .await
    }

    async fn trust_grants(&self) -> StoreResult<Vec<TrustGrant>> {
        self.read_now(|db| {
            let txn = db.begin_read().map_err(unavailable)?;
            let grants = txn.open_table(TRUST_GRANTS).map_err(unavailable)?;
            let mut found: Vec<TrustGrant> = Vec::new();
            for row in grants.iter().map_err(unavailable)? {
                let (_, bytes) = row.map_err(unavailable)?;
                found.push(decode(bytes.value())?);
            }
            found.sort_by(|a, b| (a.granted_at, &a.id).cmp(&(b.granted_at, &b.id)));
            Ok(found)
        })
        .await
    }

    async fn revoke_trust(&self, id: &str) -> StoreResult<Option<TrustGrant>> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut grants = txn.open_table(TRUST_GRANTS).map_err(unavailable)?;
            let mut found: Option<(String, TrustGrant)> = None;
            for row in grants.iter().map_err(unavailable)? {
                let (name, bytes) = row.map_err(unavailable)?;
                let grant: TrustGrant = decode(bytes.value())?;
                if grant.id == id {
                    found = Some((name.value().to_owned(), grant));
                    break;
                }
            }
            let Some((name, grant)) = found else {
                return Ok(None);
            };
            grants.remove(name.as_str()).map_err(unavailable)?;
            Ok(Some(grant))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (Arc<EmbeddedStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("s.redb")).unwrap();
        (Arc::new(store), dir)
    }

    /// Holds the writer inside a transaction for a while, so what comes next queues up.
    fn hold_the_writer(store: &Arc<EmbeddedStore>) -> tokio::task::JoinHandle<StoreResult<()>> {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            store
                .write(|_txn| {
                    std::thread::sleep(Duration::from_millis(200));
                    Ok(())
                })
                .await
        })
    }

    fn put(txn: &WriteTransaction, key: &str) -> StoreResult<()> {
        let mut table = txn.open_table(SINGLETONS).map_err(unavailable)?;
        table.insert(key, b"x".as_slice()).map_err(unavailable)?;
        Ok(())
    }

    async fn has(store: &EmbeddedStore, key: &str) -> bool {
        let key = key.to_owned();
        store
            .read_now(move |db| {
                let txn = db.begin_read().map_err(unavailable)?;
                let table = txn.open_table(SINGLETONS).map_err(unavailable)?;
                Ok(table.get(key.as_str()).map_err(unavailable)?.is_some())
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_commit_share_the_next_one() {
        let (store, _dir) = store();
        let before = store.commits();
        let holder = hold_the_writer(&store);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut writes = Vec::new();
        for i in 0..40 {
            let store = Arc::clone(&store);
            writes.push(tokio::spawn(async move {
                let key = format!("key-{i}");
                store.write(move |txn| put(txn, &key)).await
            }));
        }
        holder.await.unwrap().unwrap();
        for write in writes {
            write.await.unwrap().unwrap();
        }
        for i in 0..40 {
            assert!(has(&store, &format!("key-{i}")).await, "key-{i}");
        }
        let commits = store.commits() - before;
        assert!(commits <= 3, "41 writes took {commits} commits");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_in_a_batch_leaves_nothing_and_the_others_commit() {
        let (store, _dir) = store();
        let holder = hold_the_writer(&store);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let spawn_write = |key: &'static str, fail: bool| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .write(move |txn| {
                        put(txn, key)?;
                        if fail {
                            return Err(StoreError::Corrupt("refused after writing".into()));
                        }
                        Ok(())
                    })
                    .await
            })
        };
        let first = spawn_write("before", false);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let failing = spawn_write("half-done", true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let after = spawn_write("after", false);
        let panicking = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .write(|txn| -> StoreResult<()> {
                        put(txn, "panicked")?;
                        panic!("a bug in a write");
                    })
                    .await
            })
        };
        holder.await.unwrap().unwrap();
        first.await.unwrap().unwrap();
        assert!(matches!(
            failing.await.unwrap(),
            Err(StoreError::Corrupt(_))
        ));
        after.await.unwrap().unwrap();
        assert!(panicking.await.unwrap().is_err());
        assert!(has(&store, "before").await);
        assert!(has(&store, "after").await);
        assert!(
            !has(&store, "half-done").await,
            "a failed write left its change"
        );
        assert!(
            !has(&store, "panicked").await,
            "a panicked write left its change"
        );
        // The writer survived the panic.
        store.write(|txn| put(txn, "later")).await.unwrap();
        assert!(has(&store, "later").await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_costs_its_batch_one_more_commit_not_one_per_write() {
        let (store, _dir) = store();
        let before = store.commits();
        let holder = hold_the_writer(&store);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let spawn_writes = |range: std::ops::Range<usize>| {
            range
                .map(|i| {
                    let store = Arc::clone(&store);
                    tokio::spawn(async move {
                        let key = format!("key-{i}");
                        store.write(move |txn| put(txn, &key)).await
                    })
                })
                .collect::<Vec<_>>()
        };
        let mut writes = spawn_writes(0..20);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let failing = {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .write(|txn| -> StoreResult<()> {
                        put(txn, "half-done")?;
                        Err(StoreError::Corrupt("refused after writing".into()))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        writes.extend(spawn_writes(20..40));
        holder.await.unwrap().unwrap();
        assert!(matches!(
            failing.await.unwrap(),
            Err(StoreError::Corrupt(_))
        ));
        for write in writes {
            write.await.unwrap().unwrap();
        }
        for i in 0..40 {
            assert!(has(&store, &format!("key-{i}")).await, "key-{i}");
        }
        assert!(
            !has(&store, "half-done").await,
            "a failed write left its change"
        );
        // The holder's commit, the 20 before the failed write, the 20 after it.
        let commits = store.commits() - before;
        assert!(
            commits <= 3,
            "40 writes and a failed one, behind a held writer, took {commits} commits"
        );
    }

    #[tokio::test]
    async fn dropping_the_store_closes_the_file_so_it_can_be_opened_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = EmbeddedStore::open(&path).unwrap();
        store.write(|txn| put(txn, "kept")).await.unwrap();
        drop(store);
        let again = EmbeddedStore::open(&path).unwrap();
        assert!(has(&again, "kept").await);
    }
}
