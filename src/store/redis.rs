//! The Redis store: all state in one Redis, so several replicas can serve one workspace.
//!
//! Each read-modify-write is one Lua script, which Redis runs atomically: creating an incident
//! together with its fingerprint's claim, compare-and-set on an incident's version, appending
//! to the audit chain only when its head is the one the entry was chained to, taking a lease
//! with a fresh fencing token. Keys all start with `[store] redis_prefix`.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    decode, encode, Control, IncidentQuery, Lease, OutboxItem, ParkedItem, Store, StoreError,
    StoreResult, TrustGrantOutcome, PARKED_PER_CHANNEL,
};
use crate::domain::{
    AuditEntry, AuditRecord, Fingerprint, Incident, IncidentId, Sighting, Silence, SlackCard,
    Timestamp, TrustGrant, TrustKey, TrustRun,
};

/// Creates an incident unless its fingerprint has an open one.
/// KEYS: incident hash, open-fingerprint hash, order zset.
/// ARGV: fingerprint, id, json, score, version, open ("1"/"0").
/// Returns "" when created, "dup:<id>" or "exists".
const CREATE_INCIDENT: &str = r#"
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if ARGV[6] == '1' and holder then return 'dup:' .. holder end
if redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
redis.call('HSET', KEYS[1], 'version', ARGV[5], 'json', ARGV[3])
if ARGV[6] == '1' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[2])
return ''
"#;

/// Compare-and-set of an incident.
/// KEYS: incident hash, open-fingerprint hash.
/// ARGV: expected version, new version, json, fingerprint, id, open ("1"/"0").
/// Returns "" when stored, "missing", "version:<found>" or "dup:<id>".
const UPDATE_INCIDENT: &str = r#"
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return 'missing' end
if v ~= ARGV[1] then return 'version:' .. v end
local holder = redis.call('HGET', KEYS[2], ARGV[4])
if ARGV[6] == '1' then
  if holder and holder ~= ARGV[5] then return 'dup:' .. holder end
  redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
elseif holder == ARGV[5] then
  redis.call('HDEL', KEYS[2], ARGV[4])
end
redis.call('HSET', KEYS[1], 'version', ARGV[2], 'json', ARGV[3])
return ''
"#;

/// Records one more sighting of an incident's breach, without touching its version.
/// KEYS: incident hash. ARGV: value, threshold, at (unix ms).
/// Returns the new occurrence count, or 0 when there is no such incident. The count starts
/// from the decision's `occurrences` the first time (cjson ships with Redis's Lua).
const RECORD_SIGHTING: &str = r#"
if redis.call('HEXISTS', KEYS[1], 'seen_count') == 0 then
  local json = redis.call('HGET', KEYS[1], 'json')
  if not json then return 0 end
  redis.call('HSET', KEYS[1], 'seen_count', tonumber(cjson.decode(json).occurrences) or 1)
end
local n = redis.call('HINCRBY', KEYS[1], 'seen_count', 1)
redis.call('HSET', KEYS[1], 'seen_value', ARGV[1], 'seen_threshold', ARGV[2], 'seen_at', ARGV[3])
return n
"#;

/// Compare-and-set of an incident's Slack card on its own revision.
/// KEYS: incident hash. ARGV: expected rev, card json (carrying the new rev).
/// Returns "" when stored, "missing" or "version:<found>".
const PUT_CARD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
local rev = redis.call('HGET', KEYS[1], 'card_rev') or '0'
if rev ~= ARGV[1] then return 'version:' .. rev end
redis.call('HSET', KEYS[1], 'card_rev', tostring(tonumber(ARGV[1]) + 1), 'card', ARGV[2])
return ''
"#;

/// Sets the pause flag only when it differs. KEYS: control key. ARGV: "1"/"0", new json.
/// Returns 1 when it changed, 0 when it already was so.
const SWITCH_PAUSED: &str = r#"
local current = redis.call('GET', KEYS[1])
local paused = false
if current then paused = cjson.decode(current).paused == true end
if (ARGV[1] == '1') == paused then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

/// Grants trust to a pair that has none and a long enough run.
/// KEYS: grants hash, runs hash. ARGV: pair, grant json, least run.
/// Returns {"exists", grant json}, {"short", run} or {"ok", run}.
const GRANT_TRUST: &str = r#"
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {'exists', existing} end
local run = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if run < tonumber(ARGV[3]) then return {'short', tostring(run)} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return {'ok', tostring(run)}
"#;

/// Removes the grant with an id. KEYS: grants hash. ARGV: id.
/// Returns the grant's json, or false when no grant has that id.
const REVOKE_TRUST: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if cjson.decode(all[i + 1]).id == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    return all[i + 1]
  end
end
return false
"#;

/// The hash fields an incident is read from: the decision, the card, the latest sighting.
const INCIDENT_FIELDS: [&str; 6] = [
    "json",
    "card",
    "seen_value",
    "seen_threshold",
    "seen_at",
    "seen_count",
];

/// One incident from its hash fields ([`INCIDENT_FIELDS`], in order); `None` when missing.
fn merge_incident(fields: Vec<Option<Vec<u8>>>) -> StoreResult<Option<Incident>> {
    let mut fields = fields.into_iter();
    let Some(json) = fields.next().flatten() else {
        return Ok(None);
    };
    let mut incident: Incident = decode(&json)?;
    if let Some(card) = fields.next().flatten() {
        incident.slack = Some(decode(&card)?);
    }
    let text = |bytes: Option<Vec<u8>>| bytes.and_then(|b| String::from_utf8(b).ok());
    let (value, threshold, at, count) = (
        text(fields.next().flatten()),
        text(fields.next().flatten()),
        text(fields.next().flatten()),
        text(fields.next().flatten()),
    );
    if let (Some(value), Some(threshold), Some(at), Some(count)) = (value, threshold, at, count) {
        let corrupt =
            |what: &str| StoreError::Corrupt(format!("sighting {what} of {}", incident.id));
        incident.apply_sighting(&Sighting {
            value: value.parse().map_err(|_| corrupt("value"))?,
            threshold: threshold.parse().map_err(|_| corrupt("threshold"))?,
            last_seen_at: Timestamp::from_unix_millis(at.parse().map_err(|_| corrupt("time"))?),
            occurrences: count.parse().map_err(|_| corrupt("count"))?,
        });
    }
    Ok(Some(incident))
}

/// Appends an audit entry if the chain's head is still the expected one, and raises the
/// high-water mark to its sequence number.
/// KEYS: audit list, head key, high-water key. ARGV: expected head ("" for none), entry json,
/// new head, the entry's seq.
const APPEND_AUDIT: &str = r#"
local head = redis.call('GET', KEYS[2]) or ''
if head ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[3])
local seen = tonumber(redis.call('GET', KEYS[3]) or '0')
if tonumber(ARGV[4]) > seen then redis.call('SET', KEYS[3], ARGV[4]) end
return 1
"#;

/// Takes or renews a lease. KEYS: lease key, token counter. ARGV: holder, ttl ms.
/// The lease value is "<token>|<holder>". Returns the token, or -1 when held by another.
const ACQUIRE_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local token, holder = string.match(cur, '^(%d+)|(.*)$')
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(token)
  end
  return -1
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[1], 'PX', ARGV[2])
return token
"#;

/// Replaces a hash field only if it still holds the expected value.
/// KEYS: hash. ARGV: field, expected value, new value. Returns 1 when replaced, else 0.
const REPLACE_FIELD: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"#;

/// Deletes a lease if it still carries the given token. KEYS: lease key. ARGV: token.
const RELEASE_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and string.match(cur, '^(%d+)|') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// Appends to a channel's outbox. KEYS: seq counter, queue list, messages hash, channel set.
/// ARGV: payload, channel. Returns the new seq.
const OUTBOX_PUSH: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[3], seq, ARGV[1])
redis.call('RPUSH', KEYS[2], seq)
redis.call('SADD', KEYS[4], ARGV[2])
return seq
"#;

/// Appends to a queue and moves its sender's mark, if the mark still holds what the sender
/// read. KEYS: mark, seq counter, queue list, messages hash, channel set. ARGV: the expected
/// mark ("" for none), the new mark, the queue's name, then the payloads. Returns 1, or 0
/// (nothing changed) when the mark moved.
const OUTBOX_PUSH_MARKED: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '' then
  if cur then return 0 end
elseif cur ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
for i = 4, #ARGV do
  local seq = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[4], seq, ARGV[i])
  redis.call('RPUSH', KEYS[3], seq)
end
if #ARGV >= 4 then redis.call('SADD', KEYS[5], ARGV[3]) end
return 1
"#;

/// The oldest message of a queue. KEYS: queue list, messages hash. Returns {seq, payload}
/// (payload "" if it went missing) or nil.
const OUTBOX_HEAD: &str = r#"
local seq = redis.call('LINDEX', KEYS[1], 0)
if not seq then return false end
return {seq, redis.call('HGET', KEYS[2], seq) or ''}
"#;

/// Removes a sent message. KEYS: queue list, messages hash, channel set. ARGV: seq, channel.
/// Returns how many were removed (0 or 1).
const OUTBOX_ACK: &str = r#"
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return n
"#;

/// Moves a message to the parked list. KEYS: queue list, messages hash, channel set, parked
/// list. ARGV: seq, channel, parked_at ms, error, how many parked to keep. Returns 1 or 0.
const OUTBOX_PARK: &str = r#"
local p = redis.call('HGET', KEYS[2], ARGV[1])
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
if n == 0 or not p then return 0 end
redis.call('RPUSH', KEYS[4], '{"seq":' .. ARGV[1] .. ',"parked_at":' .. ARGV[3] ..
  ',"error":' .. cjson.encode(ARGV[4]) .. ',"payload":' .. p .. '}')
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[5]), -1)
return 1
"#;

pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    create_incident: Script,
    update_incident: Script,
    record_sighting: Script,
    put_card: Script,
    switch_paused: Script,
    append_audit: Script,
    acquire_lease: Script,
    release_lease: Script,
    replace_field: Script,
    outbox_push: Script,
    outbox_push_marked: Script,
    outbox_head: Script,
    outbox_ack: Script,
    outbox_park: Script,
    grant_trust: Script,
    revoke_trust: Script,
    /// One audit append at a time from this process. Appends are optimistic (write if the
    /// chain's head is the one expected, else read it and retry), which is right across
    /// replicas; but many appenders in one process (a burst of Slack clicks) would mostly
    /// retry each other, so they queue here instead. The lock holds the head this process
    /// last wrote (`None`: not known), so an append usually costs one round trip, not two;
    /// if another replica appended since, the script refuses and the head is read afresh.
    audit_appends: tokio::sync::Mutex<Option<Option<String>>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects and checks the server answers. Operations time out after a few seconds, so a
    /// dead Redis gives errors rather than hung requests.
    pub async fn connect(url: &str, prefix: &str) -> StoreResult<Self> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(3)))
            .set_number_of_retries(2);
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unavailable("connection timed out"))?
        .map_err(unavailable)?;
        let store = RedisStore {
            conn,
            audit_appends: tokio::sync::Mutex::new(None),
            prefix: prefix.to_owned(),
            create_incident: Script::new(CREATE_INCIDENT),
            update_incident: Script::new(UPDATE_INCIDENT),
            record_sighting: Script::new(RECORD_SIGHTING),
            put_card: Script::new(PUT_CARD),
            switch_paused: Script::new(SWITCH_PAUSED),
            append_audit: Script::new(APPEND_AUDIT),
            acquire_lease: Script::new(ACQUIRE_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
            replace_field: Script::new(REPLACE_FIELD),
            outbox_push: Script::new(OUTBOX_PUSH),
            outbox_push_marked: Script::new(OUTBOX_PUSH_MARKED),
            outbox_head: Script::new(OUTBOX_HEAD),
            outbox_ack: Script::new(OUTBOX_ACK),
            outbox_park: Script::new(OUTBOX_PARK),
            grant_trust: Script::new(GRANT_TRUST),
            revoke_trust: Script::new(REVOKE_TRUST),
        };
        store.ping().await?;
        Ok(store)
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn incident_key(&self, id: &str) -> String {
        self.key(&format!("incident:{id}"))
    }

    /// The keys of a channel's outbox: its queue (seqs in order) and its messages (seq →
    /// payload).
    fn outbox_keys(&self, channel: &str) -> (String, String) {
        (
            self.key(&format!("outbox:q:{channel}")),
            self.key(&format!("outbox:m:{channel}")),
        )
    }

    async fn read_incidents(&self, ids: &[String]) -> StoreResult<Vec<Incident>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HMGET")
                .arg(self.incident_key(id))
                .arg(&INCIDENT_FIELDS[..]);
        }
        let rows: Vec<Vec<Option<Vec<u8>>>> = pipe
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            if let Some(incident) = merge_incident(row)? {
                found.push(incident);
            }
        }
        Ok(found)
    }
}

fn parse_id(text: &str) -> StoreResult<IncidentId> {
    IncidentId::parse(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[async_trait]
impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> StoreResult<()> {
        let pong: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(unavailable(format!("unexpected PING answer {pong:?}")))
        }
    }

    async fn create_incident(&self, incident: &Incident) -> StoreResult<()> {
        let outcome: String = self
            .create_incident
            .key(self.incident_key(incident.id.as_str()))
            .key(self.key("open"))
            .key(self.key("incidents"))
            .arg(incident.fingerprint.as_str())
            .arg(incident.id.as_str())
            .arg(encode(incident)?)
            .arg(incident.opened_at.unix_millis())
            .arg(incident.version)
            .arg(if incident.is_open() { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "" => Ok(()),
            "exists" => Err(StoreError::AlreadyExists(incident.id.clone())),
            other => match other.strip_prefix("dup:") {
                Some(existing) => Err(StoreError::DuplicateOpen {
                    fingerprint: incident.fingerprint.clone(),
                    existing: parse_id(existing)?,
                }),
                None => Err(unavailable(format!("unexpected script answer {other:?}"))),
            },
        }
    }

    async fn get_incident(&self, id: &IncidentId) -> StoreResult<Option<Incident>> {
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.incident_key(id.as_str()))
            .arg(&INCIDENT_FIELDS[..])
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        merge_incident(fields)
    }

    async fn list_incidents(&self, query: IncidentQuery) -> StoreResult<Vec<Incident>> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        if query.open_only {
            let ids: Vec<String> = self
                .conn
                .clone()
                .hvals(self.key("open"))
                .await
                .map_err(unavailable)?;
            let mut found = self.read_incidents(&ids).await?;
            found.sort_by(|a, b| (b.opened_at, b.id.as_str()).cmp(&(a.opened_at, a.id.as_str())));
            found.truncate(query.limit);
            Ok(found)
        } else {
            let stop = isize::try_from(query.limit).unwrap_or(isize::MAX) - 1;
            let ids: Vec<String> = self
                .conn
                .clone()
                .zrevrange(self.key("incidents"), 0, stop)
                .await
                .map_err(unavailable)?;
            self.read_incidents(&ids).await
        }
    }

    async fn update_incident(&self, incident: &Incident) -> StoreResult<Incident> {
        let mut stored = incident.clone();
        stored.version += 1;
        let outcome: String = self
            .update_incident
            .key(self.incident_key(incident.id.as_str()))
            .key(self.key("open"))
            .arg(incident.version)
            .arg(stored.version)
            .arg(encode(&stored)?)
            .arg(incident.fingerprint.as_str())
            .arg(incident.id.as_str())
            .arg(if incident.is_open() { "1" } else { "0" })
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        if outcome.is_empty() {
            return Ok(stored);
        }
        if outcome == "missing" {
            return Err(StoreError::NotFound(incident.id.clone()));
        }
        if let Some(found) = outcome.strip_prefix("version:") {
            return Err(StoreError::VersionConflict {
                id: incident.id.clone(),
                expected: incident.version,
                found: found
                    .parse()
                    .map_err(|_| StoreError::Corrupt(outcome.clone()))?,
            });
        }
        if let Some(existing) = outcome.strip_prefix("dup:") {
            return Err(StoreError::DuplicateOpen {
                fingerprint: incident.fingerprint.clone(),
                existing: parse_id(existing)?,
            });
        }
        Err(unavailable(format!("unexpected script answer {outcome:?}")))
    }

    async fn open_incident_for(&self, fingerprint: &Fingerprint) -> StoreResult<Option<Incident>> {
        let id: Option<String> = self
            .conn
            .clone()
            .hget(self.key("open"), fingerprint.as_str())
            .await
            .map_err(unavailable)?;
        match id {
            Some(id) => self.get_incident(&parse_id(&id)?).await,
            None => Ok(None),
        }
    }

    async fn record_sighting(
        &self,
        id: &IncidentId,
        value: f64,
        threshold: f64,
        at: Timestamp,
    ) -> StoreResult<Option<Sighting>> {
        let count: u64 = self
            .record_sighting
            .key(self.incident_key(id.as_str()))
            .arg(value.to_string())
            .arg(threshold.to_string())
            .arg(at.unix_millis())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok((count > 0).then_some(Sighting {
            value,
            threshold,
            occurrences: count,
            last_seen_at: at,
        }))
    }

    async fn put_card(&self, id: &IncidentId, card: &SlackCard) -> StoreResult<SlackCard> {
        let mut stored = card.clone();
        stored.rev += 1;
        let outcome: String = self
            .put_card
            .key(self.incident_key(id.as_str()))
            .arg(card.rev)
            .arg(encode(&stored)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "" => Ok(stored),
            "missing" => Err(StoreError::NotFound(id.clone())),
            other => match other.strip_prefix("version:").map(str::parse) {
                Some(Ok(found)) => Err(StoreError::VersionConflict {
                    id: id.clone(),
                    expected: card.rev,
                    found,
                }),
                _ => Err(unavailable(format!("unexpected script answer {other:?}"))),
            },
        }
    }

    async fn append_audit(&self, record: AuditRecord) -> StoreResult<AuditEntry> {
        let mut conn = self.conn.clone();
        let mut known_head = self.audit_appends.lock().await;
        loop {
            let head: Option<String> = match known_head.take() {
                Some(head) => head,
                None => conn
                    .get(self.key("audit:head"))
                    .await
                    .map_err(unavailable)?,
            };
            let previous = match head.as_deref() {
                Some(head) => {
                    let (seq, hash) = head
                        .split_once('|')
                        .ok_or_else(|| StoreError::Corrupt(format!("audit head {head:?}")))?;
                    let seq: u64 = seq
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("audit head {head:?}")))?;
                    Some((seq, hash.to_owned()))
                }
                None => None,
            };
            let entry = AuditEntry::chain(
                previous.as_ref().map(|(seq, hash)| (*seq, hash.as_str())),
                record.clone(),
            );
            let new_head = format!("{}|{}", entry.seq, entry.hash);
            let appended: i64 = self
                .append_audit
                .key(self.key("audit"))
                .key(self.key("audit:head"))
                .key(self.key("audit:high-water"))
                .arg(head.unwrap_or_default())
                .arg(encode(&entry)?)
                .arg(&new_head)
                .arg(entry.seq)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if appended == 1 {
                *known_head = Some(Some(new_head));
                return Ok(entry);
            }
            // Another replica appended first: read its head and chain after it instead.
        }
    }

    async fn list_audit(&self) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<Vec<u8>> = self
            .conn
            .clone()
            .lrange(self.key("audit"), 0, -1)
            .await
            .map_err(unavailable)?;
        rows.iter().map(|bytes| decode(bytes)).collect()
    }

    async fn list_audit_page(&self, after: u64, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // An unbroken list holds seq n at index n - 1: read just the page, and fall back to
        // a whole read when entries are missing before it.
        let start = isize::try_from(after).unwrap_or(isize::MAX);
        let stop = start.saturating_add(isize::try_from(limit).unwrap_or(isize::MAX) - 1);
        let rows: Vec<Vec<u8>> = self
            .conn
            .clone()
            .lrange(self.key("audit"), start, stop)
            .await
            .map_err(unavailable)?;
        let page: Vec<AuditEntry> = rows
            .iter()
            .map(|bytes| decode(bytes))
            .collect::<Result<_, _>>()?;
        if page.first().is_none_or(|first| first.seq == after + 1) && !page.is_empty() {
            return Ok(page);
        }
        let all = self.list_audit().await?;
        Ok(all
            .into_iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .collect())
    }

    async fn audit_high_water(&self) -> StoreResult<u64> {
        let seen: Option<u64> = self
            .conn
            .clone()
            .get(self.key("audit:high-water"))
            .await
            .map_err(unavailable)?;
        Ok(seen.unwrap_or(0))
    }

    async fn claim_once(&self, key: &str, ttl: Duration, _now: Timestamp) -> StoreResult<bool> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set: Option<String> = redis::cmd("SET")
            .arg(self.key(&format!("once:{key}")))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(set.is_some())
    }

    async fn remember(&self, set: &str, member: &str, until: Timestamp) -> StoreResult<()> {
        // A sorted set scored by the expiry; members past it are removed as it is written.
        let key = self.key(&format!("remembered:{set}"));
        let now = Timestamp::now().unix_millis();
        let () = redis::pipe()
            .atomic()
            .zadd(&key, member, until.unix_millis())
            .ignore()
            .zrembyscore(&key, "-inf", now)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn remembered(&self, set: &str, now: Timestamp) -> StoreResult<Vec<String>> {
        let key = self.key(&format!("remembered:{set}"));
        let mut members: Vec<String> = self
            .conn
            .clone()
            .zrangebyscore(&key, format!("({}", now.unix_millis()), "+inf")
            .await
            .map_err(unavailable)?;
        members.sort();
        Ok(members)
    }

    async fn add_silence(&self, silence: &Silence) -> StoreResult<()> {
        let () = self
            .conn
            .clone()
            .hset(self.key("silences"), &silence.id, encode(silence)?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn active_silences(&self, now: Timestamp) -> StoreResult<Vec<Silence>> {
        let rows: Vec<Vec<u8>> = self
            .conn
            .clone()
            .hvals(self.key("silences"))
            .await
            .map_err(unavailable)?;
        let mut active = Vec::new();
        for bytes in rows {
            let silence: Silence = decode(&bytes)?;
            if silence.is_active(now) {
                active.push(silence);
            }
        }
        active.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(active)
    }

    async fn expire_silence(&self, id: &str, now: Timestamp) -> StoreResult<bool> {
        let mut conn = self.conn.clone();
        loop {
            let bytes: Option<Vec<u8>> = conn
                .hget(self.key("silences"), id)
                .await
                .map_err(unavailable)?;
            let Some(bytes) = bytes else { return Ok(false) };
            let mut silence: Silence = decode(&bytes)?;
            if !silence.is_active(now) {
                return Ok(false);
            }
            silence.ends_at = now;
            // Compare-and-set, so of several callers ending it at once only one is told it did.
            let replaced: i64 = self
                .replace_field
                .key(self.key("silences"))
                .arg(id)
                .arg(bytes)
                .arg(encode(&silence)?)
                .invoke_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if replaced == 1 {
                return Ok(true);
            }
            // Changed meanwhile (ended or replaced by someone else): look again.
        }
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> StoreResult<Option<Lease>> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let token: i64 = self
            .acquire_lease
            .key(self.key(&format!("lease:{name}")))
            .key(self.key(&format!("lease-token:{name}")))
            .arg(holder)
            .arg(ttl_ms)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(token).ok().map(|token| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            token,
            expires_at: now.saturating_add(ttl),
        }))
    }

    async fn release_lease(&self, lease: &Lease) -> StoreResult<()> {
        let _: i64 = self
            .release_lease
            .key(self.key(&format!("lease:{}", lease.name)))
            .arg(lease.token.to_string())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn check_fence(&self, name: &str, token: u64, _now: Timestamp) -> StoreResult<bool> {
        let current: Option<String> = self
            .conn
            .clone()
            .get(self.key(&format!("lease:{name}")))
            .await
            .map_err(unavailable)?;
        Ok(current
            .as_deref()
            .and_then(|value| value.split_once('|'))
            .is_some_and(|(live, _)| live == token.to_string()))
    }

    async fn record_auto_action(&self, key: &str, at: Timestamp) -> StoreResult<()> {
        let forget_before = at.unix_millis()
            - i64::try_from(super::AUTO_ACTION_MEMORY.as_millis()).unwrap_or(i64::MAX);
        let member = format!("{}-{}", at.unix_millis(), rand::random::<u64>());
        let list = self.key(&format!("auto:{key}"));
        let () = redis::pipe()
            .atomic()
            .zadd(&list, member, at.unix_millis())
            .ignore()
            .zrembyscore(&list, "-inf", format!("({forget_before}"))
            .ignore()
            .sadd(self.key("auto-keys"), key)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn auto_actions_since(
        &self,
        since: Timestamp,
    ) -> StoreResult<std::collections::BTreeMap<String, u64>> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = conn
            .smembers(self.key("auto-keys"))
            .await
            .map_err(unavailable)?;
        if keys.is_empty() {
            return Ok(Default::default());
        }
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.zcount(
                self.key(&format!("auto:{key}")),
                since.unix_millis(),
                "+inf",
            );
        }
        let counts: Vec<u64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
        Ok(keys
            .into_iter()
            .zip(counts)
            .filter(|(_, count)| *count > 0)
            .collect())
    }

    async fn control(&self) -> StoreResult<Control> {
        let bytes: Option<Vec<u8>> = self
            .conn
            .clone()
            .get(self.key("control"))
            .await
            .map_err(unavailable)?;
        bytes.map_or(Ok(Control::default()), |b| decode(&b))
    }

    async fn set_control(&self, control: &Control) -> StoreResult<()> {
        let () = self
            .conn
            .clone()
            .set(self.key("control"), encode(control)?)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn switch_paused(
        &self,
        paused: bool,
        by: &str,
        at: Timestamp,
    ) -> StoreResult<Option<Control>> {
        let next = Control {
            paused,
            changed_by: Some(by.to_owned()),
            changed_at: Some(at),
        };
        let changed: i64 = self
            .switch_paused
            .key(self.key("control"))
            .arg(if paused { "1" } else { "0" })
            .arg(encode(&next)?)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok((changed == 1).then_some(next))
    }

    async fn outbox_push(&self, channel: &str, payload: &serde_json::Value) -> StoreResult<u64> {
        let (queue, messages) = self.outbox_keys(channel);
        self.outbox_push
            .key(self.key("outbox:seq"))
            .key(queue)
            .key(messages)
            .key(self.key("outbox:channels"))
            .arg(encode(payload)?)
            .arg(channel)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    async fn outbox_push_marked(
        &self,
        queue: &str,
        mark: &str,
        expected: Option<&serde_json::Value>,
        new: &serde_json::Value,
        payloads: &[serde_json::Value],
    ) -> StoreResult<bool> {
        let (list, messages) = self.outbox_keys(queue);
        // serde_json's maps are sorted, so a value always encodes to the same text and the
        // script can compare marks as strings.
        let expected = match expected {
            Some(value) => encode(value)?,
            None => Vec::new(),
        };
        let mut invocation = self.outbox_push_marked.prepare_invoke();
        invocation
            .key(self.key(&format!("outbox:mark:{mark}")))
            .key(self.key("outbox:seq"))
            .key(list)
            .key(messages)
            .key(self.key("outbox:channels"))
            .arg(expected)
            .arg(encode(new)?)
            .arg(queue);
        for payload in payloads {
            invocation.arg(encode(payload)?);
        }
        let changed: i64 = invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(changed == 1)
    }

    async fn outbox_mark(&self, mark: &str) -> StoreResult<Option<serde_json::Value>> {
        let stored: Option<Vec<u8>> = self
            .conn
            .clone()
            .get(self.key(&format!("outbox:mark:{mark}")))
            .await
            .map_err(unavailable)?;
        stored.map(|bytes| decode(&bytes)).transpose()
    }

    async fn outbox_head(&self, channel: &str) -> StoreResult<Option<OutboxItem>> {
        let (queue, messages) = self.outbox_keys(channel);
        let head: Option<(String, Vec<u8>)> = self
            .outbox_head
            .key(queue)
            .key(messages)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let Some((seq, payload)) = head else {
            return Ok(None);
        };
        let seq = seq
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("outbox seq {seq:?}")))?;
        if payload.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "outbox message {seq} of {channel} has no payload"
            )));
        }
        Ok(Some(OutboxItem {
            seq,
            payload: decode(&payload)?,
        }))
    }

    async fn outbox_ack(&self, channel: &str, seq: u64) -> StoreResult<bool> {
        let (queue, messages) = self.outbox_keys(channel);
        let removed: i64 = self
            .outbox_ack
            .key(queue)
            .key(messages)
            .key(self.key("outbox:channels"))
            .arg(seq)
            .arg(channel)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(removed > 0)
    }

    async fn outbox_park(
        &self,
        channel: &str,
        seq: u64,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<bool> {
        let (queue, messages) = self.outbox_keys(channel);
        let parked: i64 = self
            .outbox_park
            .key(queue)
            .key(messages)
            .key(self.key("outbox:channels"))
            .key(self.key(&format!("outbox:parked:{channel}")))
            .arg(seq)
            .arg(channel)
            .arg(now.unix_millis())
            .arg(error)
            .arg(PARKED_PER_CHANNEL)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(parked == 1)
    }

    async fn outbox_channels(&self) -> StoreResult<Vec<String>> {
        let mut channels: Vec<String> = self
            .conn
            .clone()
            .smembers(self.key("outbox:channels"))
            .await
            .map_err(unavailable)?;
        channels.sort();
        Ok(channels)
    }

    async fn outbox_len(&self, channel: &str) -> StoreResult<usize> {
        let (queue, _) = self.outbox_keys(channel);
        self.conn.clone().llen(queue).await.map_err(unavailable)
    }

    async fn outbox_parked(&self, channel: &str) -> StoreResult<Vec<ParkedItem>> {
        let rows: Vec<Vec<u8>> = self
            .conn
            .clone()
            .lrange(self.key(&format!("outbox:parked:{channel}")), 0, -1)
            .await
            .map_err(unavailable)?;
        rows.iter().map(|bytes| decode(bytes)).collect()
    }

    async fn trust_count_verified(&self, key: &TrustKey) -> StoreResult<u64> {
        let name = key.as_string();
        let (run,): (u64,) = redis::pipe()
            .atomic()
            .hset(self.key("trust:run-keys"), &name, encode(key)?)
            .ignore()
            .hincr(self.key("trust:runs"), &name, 1)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        Ok(run)
    }

    async fn trust_break(&self, key: &TrustKey) -> StoreResult<Option<TrustGrant>> {
        let name = key.as_string();
        let (grant,): (Option<Vec<u8>>,) = redis::pipe()
            .atomic()
            .hdel(self.key("trust:runs"), &name)
            .ignore()
            .hdel(self.key("trust:run-keys"), &name)
            .ignore()
            .hget(self.key("trust:grants"), &name)
            .hdel(self.key("trust:grants"), &name)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        grant.map(|bytes| decode(&bytes)).transpose()
    }

    async fn trust_runs(&self) -> StoreResult<Vec<TrustRun>> {
        let (runs, keys): (
            std::collections::BTreeMap<String, u64>,
            std::collections::BTreeMap<String, Vec<u8>>,
        ) = redis::pipe()
            .atomic()
            .hgetall(self.key("trust:runs"))
            .hgetall(self.key("trust:run-keys"))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let mut found = Vec::new();
        for (name, run) in runs {
            let Some(bytes) = keys.get(&name) else {
                return Err(StoreError::Corrupt(format!(
                    "trust run {name} without its key"
                )));
            };
            if run > 0 {
                found.push(TrustRun {
                    key: decode(bytes)?,
                    verified_in_a_row: run,
                });
            }
        }
        Ok(found)
    }

    async fn grant_trust(
        &self,
        grant: &TrustGrant,
        min_run: u64,
    ) -> StoreResult<TrustGrantOutcome> {
        let (outcome, value): (String, Vec<u8>) = self
            .grant_trust
            .key(self.key("trust:grants"))
            .key(self.key("trust:runs"))
            .arg(grant.key.as_string())
            .arg(encode(grant)?)
            .arg(min_run)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        let run = || {
            String::from_utf8_lossy(&value)
                .parse::<u64>()
                .map_err(|_| StoreError::Corrupt("trust run is not a number".to_owned()))
        };
        match outcome.as_str() {
            "ok" => Ok(TrustGrantOutcome::Granted),
            "exists" => Ok(TrustGrantOutcome::AlreadyTrusted(decode(&value)?)),
            "short" => Ok(TrustGrantOutcome::NotEarned {
                verified_in_a_row: run()?,
            }),
            other => Err(StoreError::Corrupt(format!(
                "grant_trust answered {other:?}"
            ))),
        }
    }

    async fn trust_grants(&self) -> StoreResult<Vec<TrustGrant>> {
        let rows: Vec<Vec<u8>> = self
            .conn
            .clone()
            .hvals(self.key("trust:grants"))
            .await
            .map_err(unavailable)?;
        let mut grants = rows
            .iter()
            .map(|bytes| decode(bytes))
            .collect::<StoreResult<Vec<TrustGrant>>>()?;
        grants.sort_by(|a, b| (a.granted_at, &a.id).cmp(&(b.granted_at, &b.id)));
        Ok(grants)
    }

    async fn revoke_trust(&self, id: &str) -> StoreResult<Option<TrustGrant>> {
        let removed: Option<Vec<u8>> = self
            .revoke_trust
            .key(self.key("trust:grants"))
            .arg(id)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)?;
        removed.map(|bytes| decode(&bytes)).transpose()
    }
}
