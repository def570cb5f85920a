//! Redis killed (`kill -9`) for a while with incidents in flight: Sentinel fails closed. While
//! the store is down no action reaches a target (no `start`, `restart`, `update` … in
//! `docker events`, the sandbox's SHA-256 manifest unchanged) even though a low-risk cleanup's
//! veto window runs out during the outage and every waiting fix is approved through the API
//! meanwhile; `GET /` and `GET /api/status` answer every GET from the last known state (the
//! banner, `"store": {"ok": false}`, SPEC §12.3). Once Redis is back, every incident is still
//! there and moves on: the scheduled cleanup runs, the approvals now given are carried out.
//!
//! The Redis is durable (append-only file, `fsync` on every write), as a production one would
//! be: the scenario tests Sentinel's behaviour across an outage, not Redis losing its data (a
//! Redis that forgets everything cannot keep incidents, whatever Sentinel does). One replica:
//! the outage is the same for all of them, and the store, not the replica, is what fails.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::cluster::{
    api, ms, quantile, ChaosContainer, ClusterConfig, DockerEvents, PrivateRedis,
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
    let in_flight = incidents(&client, &replica.base(), key).await.unwrap();
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
    let mut gets = 0;
    let mut answered = 0;
    let mut latencies = Vec::new();
    let mut approvals = BTreeMap::new();
    let mut approvals_sent = false;
    let mut bad = Vec::new();
    while started.elapsed() < outage {
        for path in ["/", "/api/status"] {
            gets += 1;
            let sent = Instant::now();
            let reply = client.get(format!("{}{path}", replica.base())).send().await;
            latencies.push(sent.elapsed());
            let Ok(reply) = reply else {
                bad.push(format!("GET {path}: no answer"));
                continue;
            };
            let status = reply.status().as_u16();
            let text = reply.text().await.unwrap_or_default();
            let marked = if path == "/" {
                text.contains("cannot reach its store since")
            } else {
                serde_json::from_str::<serde_json::Value>(&text)
                    .is_ok_and(|v| v["store"]["ok"] == false && v["store"]["since"].is_string())
            };
            let lower = text.to_lowercase();
            if status == 200 && marked && !lower.contains("redis") {
                answered += 1;
            } else {
                bad.push(format!(
                    "GET {path}: {status} {}",
                    &text[..text.len().min(200)]
                ));
            }
        }
        // Once the veto window has run out, approve every waiting fix.
        if !approvals_sent && started.elapsed() >= outage / 2 {
            approvals_sent = true;
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
                    bad.push(format!("approve {id}: the backend named: {body}"));
                }
                *approvals.entry(status).or_insert(0) += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
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
    let p99 = quantile(&mut latencies, 0.99);

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
            "outage={:.0}s in_flight={} actions_while_down={} sandbox_changed_while_down={} \
             gets_answered={answered}/{gets} ({:.1}%) get_p99={} approvals_while_down={approvals:?} \
             lost={lost} back_in={:.1}s cleanup_after={} starts_after={started_after}/{containers}",
            outage_took.as_secs_f64(),
            in_flight.len(),
            acted_while_down.len(),
            before != after,
            100.0 * answered as f64 / gets.max(1) as f64,
            ms(p99),
            recovered_in.as_secs_f64(),
            cleaned,
        ),
        &failures,
    );
    drop(stopped);
}
