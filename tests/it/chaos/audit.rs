//! Random modifications and deletions of audit entries, the end of the chain included, in
//! a private Redis: every one is detected by the check `GET /api/audit` serves
//! (`sentinel::pipeline::audit::read`), and the restored chain verifies again each time.

use rand::Rng;
use redis::AsyncCommands;
use sentinel::domain::{AuditRecord, Timestamp};
use sentinel::store::redis::RedisStore;
use sentinel::store::Store;
use serde_json::{json, Value};

use super::cluster::PrivateRedis;
use super::{report, size};
use crate::helpers::unique_prefix;

/// Entries in the chain under attack.
const ENTRIES: usize = 60;

/// How long one check of the chain may take.
const READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
enum Tamper {
    /// One field of one entry's record changed (event, actor, role, incident, details, at).
    Field,
    /// Its sequence number, hash or previous hash changed.
    Link,
    /// One entry removed from the middle.
    Delete,
    /// The last 1–3 entries removed.
    CutEnd,
    /// The last entry's record changed.
    ModifyLast,
    /// Two entries swapped.
    Swap,
    /// The whole log deleted.
    Wipe,
}

const KINDS: [Tamper; 7] = [
    Tamper::Field,
    Tamper::Link,
    Tamper::Delete,
    Tamper::CutEnd,
    Tamper::ModifyLast,
    Tamper::Swap,
    Tamper::Wipe,
];

fn alter(entry: &mut Value, rng: &mut impl Rng, link: bool) -> String {
    let fields: &[&str] = if link {
        &["seq", "hash", "prev_hash"]
    } else {
        &["event", "actor", "role", "incident", "details", "at"]
    };
    let field = fields[rng.random_range(0..fields.len())];
    let old = entry[field].clone();
    entry[field] = match (field, &old) {
        ("seq", Value::Number(n)) => json!(n.as_u64().unwrap_or(0) + rng.random_range(1..3)),
        ("at", Value::Number(n)) => json!(n.as_u64().unwrap_or(0) + 1),
        ("details", _) => json!({"tampered": rng.random::<u32>()}),
        (_, Value::String(s)) if !s.is_empty() => {
            // One character changed in place.
            let mut chars: Vec<char> = s.chars().collect();
            let i = rng.random_range(0..chars.len());
            chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
            json!(chars.into_iter().collect::<String>())
        }
        _ => json!(format!("tampered-{}", rng.random::<u32>())),
    };
    if entry[field] == old {
        entry[field] = json!(format!("tampered-{}", rng.random::<u32>()));
    }
    format!("{field}: {old} → {}", entry[field])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_every_random_tampering_of_the_audit_chain_is_detected() {
    let trials = size(100, 1_000);
    let redis = PrivateRedis::start();
    let prefix = unique_prefix();
    let store = RedisStore::connect(&redis.url(), &prefix)
        .await
        .expect("the private redis answers");
    for i in 0..ENTRIES {
        store
            .append_audit(AuditRecord {
                at: Timestamp::now(),
                event: ["IncidentOpened", "ApprovalGranted", "ActionExecuted"][i % 3].to_owned(),
                actor: format!("slack:UCHAOS{i}"),
                role: Some("operator".to_owned()),
                incident: None,
                details: json!({"n": i, "target": format!("web-{i}")}),
            })
            .await
            .expect("an audit append");
    }
    let key = format!("{prefix}audit");
    let mut conn = redis.connection().await;
    let pristine: Vec<String> = conn.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(pristine.len(), ENTRIES);
    let clean = sentinel::pipeline::audit::read(&store, 0, 1).await.unwrap();
    assert!(
        clean.chain.verified,
        "the untouched chain must verify: {clean:?}"
    );

    let mut rng = rand::rng();
    let mut detected = 0;
    let mut hung = 0;
    let mut end_included = 0;
    let mut per_kind = [0usize; 7];
    let mut failures = Vec::new();
    for trial in 0..trials {
        let kind_index = rng.random_range(0..KINDS.len());
        let kind = KINDS[kind_index];
        per_kind[kind_index] += 1;
        let mut rows = pristine.clone();
        let last = rows.len() - 1;
        let touched_end;
        let mut what = String::new();
        match kind {
            Tamper::Field | Tamper::Link | Tamper::ModifyLast => {
                let i = match kind {
                    Tamper::ModifyLast => last,
                    _ => rng.random_range(0..rows.len()),
                };
                touched_end = i == last;
                let mut entry: Value = serde_json::from_str(&rows[i]).unwrap();
                what = format!(
                    "entry {}: {}",
                    i + 1,
                    alter(&mut entry, &mut rng, matches!(kind, Tamper::Link))
                );
                rows[i] = entry.to_string();
            }
            Tamper::Delete => {
                let i = rng.random_range(0..rows.len());
                touched_end = i == last;
                rows.remove(i);
            }
            Tamper::CutEnd => {
                let n = rng.random_range(1..=3);
                rows.truncate(rows.len() - n);
                touched_end = true;
            }
            Tamper::Swap => {
                let i = rng.random_range(0..rows.len() - 1);
                let j = rng.random_range(i + 1..rows.len());
                touched_end = j == last;
                rows.swap(i, j);
            }
            Tamper::Wipe => {
                rows.clear();
                touched_end = true;
            }
        }
        if touched_end {
            end_included += 1;
        }
        write(&mut conn, &key, &rows).await;
        let check = sentinel::pipeline::audit::read(&store, 0, 1);
        match tokio::time::timeout(READ_WITHIN, check).await {
            Err(_) => {
                hung += 1;
                failures.push(format!(
                    "trial {trial}: {kind:?}: the chain check did not finish within \
                     {READ_WITHIN:?} (GET /api/audit would hang)"
                ));
            }
            Ok(Ok(report)) if !report.chain.verified => detected += 1,
            Ok(Ok(report)) => failures.push(format!(
                "trial {trial}: {kind:?} {what} went undetected: chain {:?}, truncated {}",
                report.chain, report.truncated
            )),
            // An entry that no longer reads is refused, not shown as verified.
            Ok(Err(_)) => detected += 1,
        }
        write(&mut conn, &key, &pristine).await;
        let restored = sentinel::pipeline::audit::read(&store, 0, 1).await.unwrap();
        if !restored.chain.verified {
            failures.push(format!("trial {trial}: the restored chain does not verify"));
            break;
        }
    }
    report(
        "audit_tampering",
        &format!(
            "tamperings={trials} end_included={end_included} detected={detected} ({:.1}%) hung={hung} \
             field={} link={} delete={} cut_end={} modify_last={} swap={} wipe={}",
            100.0 * detected as f64 / trials as f64,
            per_kind[0],
            per_kind[1],
            per_kind[2],
            per_kind[3],
            per_kind[4],
            per_kind[5],
            per_kind[6]
        ),
        &failures,
    );
}

/// Replaces the list at `key` with `rows`.
async fn write(conn: &mut redis::aio::MultiplexedConnection, key: &str, rows: &[String]) {
    let mut pipe = redis::pipe();
    pipe.atomic().del(key);
    if !rows.is_empty() {
        pipe.rpush(key, rows);
    }
    let () = pipe
        .query_async(conn)
        .await
        .expect("the private redis answers");
}
