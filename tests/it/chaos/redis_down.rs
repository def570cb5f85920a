//! Redis killed (`kill -9`) for a while with incidents in flight: Sentinel fails closed. While
//! the store is down no action reaches a target (no `start`, `restart`, `update` … in
//! `docker events`, the sandbox's SHA-256 manifest unchanged) even though a low-risk cleanup's
//! veto window runs out during the outage and every waiting fix is approved through the API
//! meanwhile; `GET /` and `GET /api/status`, asked by a few readers continuously through the
//! whole outage, answer every GET from the last known state (the banner and the in-flight
//! incidents, `"store": {"ok": false}`, no backend named, SPEC §12.3) without waiting on the
//! store (p99 ≤ 500 ms). Once Redis is back, every incident is still
//! there and moves on: the scheduled cleanup runs, the approvals now given are carried out.
//!
//! The Redis is durable (append-only file, `fsync` on every write), as a production one would
//! be: the scenario tests Sentinel's behaviour across an outage, not Redis losing its data (a
//! Redis that forgets everything cannot keep incidents, whatever Sentinel does). One replica:
//! the outage is the same for all of them, and the store, not the replica, is what fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::cluster::{
    api, ms, quantile, terminal, ChaosContainer, ClusterConfig, DockerEvents, PrivateRedis,
};
use super::{full, report, size};

/// A SHA-256 of every path and file content under `dir`, sorted.
pub fn manifest(dir: &Path) -> String {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            match entry.file_type() {
                Ok(t) if t.is_dir() => {
                    out.insert(format!("{rel}/"), String::new());
                    walk(&path, root, out);
                }
                Ok(_) => {
                    let bytes = std::fs::read(&path).unwrap_or_default();
                    out.insert(rel, hex::encode(Sha256::digest(&bytes)));
                }
                Err(_) => {}
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    let mut hash = Sha256::new();
    for (path, sha) in &files {
        hash.update(path.as_bytes());
        hash.update(b"\0");
        hash.update(sha.as_bytes());
        hash.update(b"\n");
    }
    hex::encode(hash.finalize())
}

/// Rewrites a line of the common configuration (the harness's `extra` may add tables only).
pub fn edit_config(cluster: &ClusterConfig, from: &str, to: &str) {
    let text = std::fs::read_to_string(&cluster.config).unwrap();
    assert!(text.contains(from), "{from:?} not in the configuration");
    std::fs::write(&cluster.config, text.replacen(from, to, 1)).unwrap();
}

/// How many GETs are in flight at all times during the outage, and each reader's pause
/// between two.
const READERS: usize = 4;
const READER_PAUSE: Duration = Duration::from_millis(100);
/// The page answers from memory while the store is down: a p99 above this means it waits.
const GET_P99: Duration = Duration::from_millis(500);

/// One GET of `path` during the outage: `Ok(path)` when it is answered 200 with the last
/// known state (the page: the banner and the in-flight incidents; the status: `"store":
/// {"ok": false, "since": …}` and its incidents), naming no backend; else what came back.
async fn stale_answer(
    client: &reqwest::Client,
    base: &str,
    path: &'static str,
    waiting: &[String],
) -> Result<&'static str, String> {
    let reply = client
        .get(format!("{base}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET {path}: no answer ({e})"))?;
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap_or_default();
    let missing = if path == "/" {
        if !text.contains("cannot reach its store since") {
            Some("no banner".to_owned())
        } else {
            waiting
                .iter()
                .find(|id| !text.contains(id.as_str()))
                .map(|id| format!("in-flight incident {id} not shown"))
        }
    } else {
        match serde_json::from_str::<serde_json::Value>(&text) {
            Err(e) => Some(format!("not JSON ({e})")),
            Ok(v) if v["store"]["ok"] != false || !v["store"]["since"].is_string() => {
                Some(format!("store {}", v["store"]))
            }
            Ok(v) if v["incidents"].as_array().is_none_or(|l| l.is_empty()) => {
                Some("no incidents".to_owned())
            }
            Ok(_) => None,
        }
    };
    let missing = match missing {
        None if status != 200 => Some(format!("status {status}")),
        None if text.to_lowercase().contains("redis") => {
            let at = text.to_lowercase().find("redis").unwrap();
            Some(format!(
                "names the backend: …{}…",
                &text[at.saturating_sub(150)..(at + 80).min(text.len())]
            ))
        }
        other => other,
    };
    match missing {
        None => Ok(path),
        Some(why) => Err(format!(
            "GET {path}: {status}, {why}: {}",
            &text[..text.len().min(200)]
        )),
    }
}

/// The incidents the API lists (`status=all`), by id.
async fn incidents(
    client: &reqwest::Client,
    base: &str,
    key: &str,
) -> Option<BTreeMap<String, serde_json::Value>> {
    let (status, list) = api(
        client,
        base,
        key,
        reqwest::Method::GET,
        "/api/incidents?status=all",
    )
    .await;
    (status == 200).then(|| {
        list.as_array()
            .into_iter()
            .flatten()
            .map(|i| (i["id"].as_str().unwrap_or("").to_owned(), i.clone()))
            .collect()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_with_redis_down_sentinel_fails_closed_serves_the_page_and_loses_nothing() {
    let containers = size(4, 19);
    let outage = Duration::from_secs(size(5, 60) as u64);
    let veto = if full() { "30s" } else { "3s" };
    let mut redis = PrivateRedis::durable();
    let cluster = ClusterConfig::new(&redis.url(), None, true, "");
    edit_config(
        &cluster,
        "sandbox_size_mb = { warning = 100000000 }",
        "sandbox_size_mb = { warning = 1 }",
    );
    edit_config(
        &cluster,
        "[actions]\nenabled = true\n",
        &format!("[actions]\nenabled = true\nveto_window = \"{veto}\"\n"),
    );
    let events = DockerEvents::watch(&cluster.label);
    let replica = cluster.replica("r0").await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let key = &cluster.admin_key;

    // Containers that exit at once, with code 1 (0 is a deliberate stop): container_down incidents whose (medium-risk) start waits
    // for an operator.
    let tag = cluster.label.rsplit('=').next().unwrap().to_owned();
    let mut stopped = Vec::new();
    for i in 0..containers {
        let name = format!("chaos-down-{tag}-{i}");
        stopped.push(
            ChaosContainer::run(&cluster.label, &name, "exit 1")
                .await
                .expect("docker runs the test image"),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let all = incidents(&client, &replica.base(), key)
            .await
            .unwrap_or_default();
        let waiting: Vec<String> = all
            .values()
            .filter(|i| i["signal"] == "container_down" && i["status"] == "awaiting_approval")
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        if waiting.len() >= containers || Instant::now() > deadline {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        waiting.len(),
        containers,
        "not every stopped container has an incident awaiting approval: {:?}; status {}; log:\n{}",
        incidents(&client, &replica.base(), key)
            .await
            .unwrap_or_default()
            .values()
            .map(|i| format!("{} {} {}", i["fingerprint"], i["status"], i["risk"]))
            .collect::<Vec<_>>(),
        api(
            &client,
            &replica.base(),
            key,
            reqwest::Method::GET,
            "/api/status"
        )
        .await
        .1,
        replica.log_tail(30)
    );

    // The sandbox over its threshold: a low-risk cleanup, scheduled for the veto window.
    let logs = cluster.sandbox().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("chaos.log"), vec![b'x'; 2_500_000]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let scheduled = loop {
        let all = incidents(&client, &replica.base(), key)
            .await
            .unwrap_or_default();
        if let Some(i) = all
            .values()
            .find(|i| i["signal"] == "sandbox_size" && i["status"] == "scheduled")
        {
            break i.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled cleanup; log:\n{}",
            replica.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every incident is checked for after the outage; the scenario's own are counted (the
    // shared machine's CPU at 100 % can open a host_cpu one besides).
    let in_flight = incidents(&client, &replica.base(), key).await.unwrap();
    let ours = in_flight
        .values()
        .filter(|i| i["signal"] == "container_down" || i["signal"] == "sandbox_size")
        .filter(|i| !terminal(i))
        .count();
    // Fill the page's and the status's last known state.
    let _ = client.get(format!("{}/", replica.base())).send().await;
    let _ = client
        .get(format!("{}/api/status", replica.base()))
        .send()
        .await;

    // The outage.
    let before = manifest(&cluster.sandbox());
    redis.kill();
    let down_at = SystemTime::now();
    let started = Instant::now();
    // Readers GET `/` and `/api/status` continuously, a few in flight at all times, until the
    // outage ends; every answer must be the last known state with the banner.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..READERS)
        .map(|n| {
            let (client, base, stop) = (client.clone(), replica.base(), Arc::clone(&stop));
            let known = waiting.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut turn = n;
                while !stop.load(Ordering::Relaxed) {
                    let path = ["/", "/api/status"][turn % 2];
                    turn += 1;
                    let sent = Instant::now();
                    let verdict = stale_answer(&client, &base, path, &known).await;
                    seen.push((sent.elapsed(), verdict));
                    tokio::time::sleep(READER_PAUSE).await;
                }
                seen
            })
        })
        .collect();
    let mut approvals = BTreeMap::new();
    let (mut bad, mut named) = (Vec::new(), Vec::new());
    // Once the veto window has run out, approve every waiting fix.
    tokio::time::sleep(outage / 2).await;
    for id in &waiting {
        let (status, body) = api(
            &client,
            &replica.base(),
            &cluster.operator_key,
            reqwest::Method::POST,
            &format!("/api/incidents/{id}/approve"),
        )
        .await;
        if body.to_string().to_lowercase().contains("redis") {
            named.push(format!("approve {id}: the backend named: {body}"));
        }
        *approvals.entry(status).or_insert(0) += 1;
    }
    tokio::time::sleep(outage.saturating_sub(started.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let (mut gets, mut answered, mut latencies) = (0, 0, Vec::new());
    let mut per_path = BTreeMap::new();
    for reader in readers {
        for (took, verdict) in reader.await.expect("a reader") {
            gets += 1;
            latencies.push(took);
            match verdict {
                Ok(path) => {
                    answered += 1;
                    *per_path.entry(path).or_insert(0) += 1;
                }
                Err(e) => bad.push(e),
            }
        }
    }
    // The scheduled cleanup must have come due while Redis was down.
    let due_in_outage = scheduled["scheduled_for"]
        .as_str()
        .and_then(|t| sentinel::domain::Timestamp::parse_rfc3339(t).ok())
        .is_some_and(|t| {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64;
            t.unix_millis() + 500 < now
        });
    let after = manifest(&cluster.sandbox());
    let up_at = SystemTime::now();
    redis.restart();
    let outage_took = started.elapsed();
    let acted_while_down: Vec<_> = events
        .actions()
        .into_iter()
        .filter(|e| e.at >= down_at && e.at < up_at)
        .collect();

    // Back: every incident is there and moves on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lost = in_flight.len();
    let mut back = BTreeMap::new();
    while Instant::now() < deadline {
        if let Some(now) = incidents(&client, &replica.base(), key).await {
            lost = in_flight.keys().filter(|id| !now.contains_key(*id)).count();
            back = now;
            if lost == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered_in = started.elapsed() - outage_took;
    for id in &waiting {
        api(
            &client,
            &replica.base(),
            &cluster.operator_key,
            reqwest::Method::POST,
            &format!("/api/incidents/{id}/approve"),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut cleaned, mut started_after) = (false, 0);
    while Instant::now() < deadline {
        cleaned = manifest(&cluster.sandbox()) != after;
        started_after = events
            .all()
            .iter()
            .filter(|e| e.at >= up_at && e.action == "start")
            .count();
        if cleaned && started_after >= containers {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let p50 = quantile(&mut latencies, 0.50);
    let p99 = quantile(&mut latencies, 0.99);
    let slowest = latencies.last().copied().unwrap_or_default();

    let mut failures = Vec::new();
    if !acted_while_down.is_empty() {
        failures.push(format!(
            "{} Docker actions while Redis was down: {acted_while_down:?}",
            acted_while_down.len()
        ));
    }
    if before != after {
        failures.push("the sandbox changed while Redis was down".to_owned());
    }
    if ours != containers + 1 {
        failures.push(format!(
            "{ours} of the scenario's incidents in flight when Redis went down, {} intended",
            containers + 1
        ));
    }
    // Sustained through the outage: both routes asked at least once a second.
    let asked_enough = ["/", "/api/status"]
        .iter()
        .all(|path| per_path.get(path).copied().unwrap_or(0) as u64 >= outage.as_secs());
    if !asked_enough {
        failures.push(format!(
            "GETs answered per route {per_path:?}: fewer than one a second over {outage:?}"
        ));
    }
    if p99 > GET_P99 {
        failures.push(format!(
            "GET p99 {} over {}: the page waits on a store known to be down",
            ms(p99),
            ms(GET_P99)
        ));
    }
    if !named.is_empty() {
        failures.push(format!(
            "{} refusals name the backend: {named:?}",
            named.len()
        ));
    }
    if answered != gets {
        bad.truncate(5);
        failures.push(format!(
            "{answered} of {gets} GETs answered with the last known state: {bad:?}"
        ));
    }
    if !due_in_outage {
        failures.push(format!(
            "the cleanup was not due during the outage (scheduled_for {})",
            scheduled["scheduled_for"]
        ));
    }
    if approvals.keys().any(|s| (200..300).contains(s)) {
        failures.push(format!("approvals accepted while down: {approvals:?}"));
    }
    if lost > 0 {
        failures.push(format!(
            "{lost} of {} incidents lost after Redis returned; log:\n{}",
            in_flight.len(),
            replica.log_tail(20)
        ));
    }
    if !cleaned {
        failures.push(format!(
            "the scheduled cleanup did not run after Redis returned: {}",
            back.values()
                .find(|i| i["signal"] == "sandbox_size")
                .map_or("gone".to_owned(), |i| i["status"].to_string())
        ));
    }
    if started_after < containers {
        failures.push(format!(
            "{started_after} of {containers} approved starts ran after Redis returned; log:\n{}",
            replica.log_tail(20)
        ));
    }
    report(
        "redis_down",
        &format!(
            "outage={:.0}s in_flight={ours} (all incidents {}) actions_while_down={} sandbox_changed_while_down={} \
             gets_answered={answered}/{gets} ({:.1}%) get_p50={} get_p99={} get_max={} \
             approvals_while_down={approvals:?} \
             lost={lost} back_in={:.1}s cleanup_after={} starts_after={started_after}/{containers}",
            outage_took.as_secs_f64(),
            in_flight.len(),
            acted_while_down.len(),
            before != after,
            100.0 * answered as f64 / gets.max(1) as f64,
            ms(p50),
            ms(p99),
            ms(slowest),
            recovered_in.as_secs_f64(),
            cleaned,
        ),
        &failures,
    );
    drop(stopped);
}
