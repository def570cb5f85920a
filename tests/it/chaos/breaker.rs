//! A container that exits 1 s after every start, watched by three replicas on one private
//! Redis: once an admin trusts its fix, Sentinel starts it again on its own at most
//! `[actions] auto_budget_per_hour` times (3 here); then the circuit breaker opens, the
//! incident waits for approval and the Slack double receives the card and the reply asking a
//! person; while the breaker is open Docker reports no start or restart of it.
//!
//! Trust is earned the way SPEC §12.4 says, while the container is still healthy: it is
//! stopped, an operator approves the start, the start verifies (`trust_after = 1`), then
//! `POST /api/trust`. Only then does it start crash-looping (a marker file copied into it). `settle` is 300 ms so that each automatic
//! start verifies before the container exits again (a failed verification would revoke
//! trust, and that, not the breaker, would stop the restarts); the check below tells the two
//! apart. `veto_window = "0s"` and `change_window = "0s"` keep the veto window and the
//! container's own recent creation out of the decision.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use super::cluster::{
    api, docker, now_secs, spreading_client, wait_for_incident, ChaosContainer, ClusterConfig,
    DockerEvent, DockerEvents, PrivateRedis, Proxy,
};
use super::{full, report, size};
use crate::slack_double::SlackDouble;

/// `[actions] auto_budget_per_hour` in this scenario.
const BUDGET: usize = 3;

/// Starts and restarts Docker reported of `name` at or after `since`.
fn starts(events: &[DockerEvent], name: &str, since: SystemTime) -> Vec<DockerEvent> {
    events
        .iter()
        .filter(|e| {
            e.name == name && e.at >= since && matches!(e.action.as_str(), "start" | "restart")
        })
        .cloned()
        .collect()
}

/// Why an incident waits for approval: the message of its last `awaiting_approval` step.
fn why_waiting(incident: &Value) -> String {
    incident["timeline"]
        .as_array()
        .and_then(|t| t.iter().rev().find(|e| e["step"] == "awaiting_approval"))
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_a_crash_looping_container_is_restarted_within_budget_then_the_breaker_asks_a_person()
{
    let watch = Duration::from_secs(if full() { 30 } else { 5 });
    // Seconds the crash-looping container lives after each start: 1 at full size, as the
    // issue says; 3 in the short mode, so that a slow verification on a busy CI machine
    // (seen: 2.3 s after the start with `settle` 300 ms) does not find it down already
    // and revoke trust.
    let lifetime = size(3, 1);
    let redis = PrivateRedis::start();
    let slack = SlackDouble::start().await;
    let cluster = ClusterConfig::new(
        &redis.url(),
        Some(slack.api_url()),
        true,
        "[analyzer]\nchange_window = \"0s\"\n",
    );
    // The common configuration's top-level `settle` and `[actions]` table are changed in
    // place: TOML allows neither twice.
    let toml = std::fs::read_to_string(&cluster.config).unwrap();
    let changed = toml
        .replacen("settle = \"2s\"", "settle = \"300ms\"", 1)
        .replacen(
            "[actions]\nenabled = true\n",
            &format!(
                "[actions]\nenabled = true\nauto_budget_per_hour = {BUDGET}\ntrust_after = 1\n\
                 veto_window = \"0s\"\n"
            ),
            1,
        );
    assert!(
        changed.contains("settle = \"300ms\"") && changed.contains("trust_after = 1"),
        "the harness's configuration changed shape:\n{toml}"
    );
    std::fs::write(&cluster.config, changed).unwrap();

    let events = DockerEvents::watch(&cluster.label);
    let name = format!("sentinel-chaos-breaker-{}", now_secs() % 1_000_000);
    // Healthy until /crashloop exists in it (copied in once trust is granted); from then on
    // every start exits 1 s later.
    let container = ChaosContainer::run(
        &cluster.label,
        &name,
        &format!("if [ -e /crashloop ]; then sleep {lifetime}; exit 1; fi; exec sleep 3600"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let replicas = cluster.replicas(3).await;
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();
    let base = proxy.base();
    let fingerprint = format!("container_down:{name}");
    let started = Instant::now();
    let mut failures = Vec::new();

    // Earn trust: the healthy container is stopped, an operator approves the fix, and it
    // verifies.
    let mut earned = None;
    let mut approvals = 0;
    while earned.is_none() && approvals < 3 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        docker(&["stop", "-t", "0", &name])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let waiting = wait_for_incident(
            &client,
            &base,
            &cluster.admin_key,
            &fingerprint,
            Duration::from_secs(30),
            |i| i["status"] == "awaiting_approval",
        )
        .await
        .unwrap_or_else(|| panic!("no incident about {name} waited for approval within 30 s"));
        let id = waiting["id"].as_str().unwrap().to_owned();
        let action = waiting["proposed_action"]["action"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let (status, body) = api(
            &client,
            &base,
            &cluster.operator_key,
            reqwest::Method::POST,
            &format!("/api/incidents/{id}/approve"),
        )
        .await;
        assert_eq!(status, 200, "approving {id}: {body}");
        approvals += 1;
        let done = wait_for_incident(
            &client,
            &base,
            &cluster.admin_key,
            &fingerprint,
            Duration::from_secs(30),
            |i| i["id"] == id.as_str() && super::cluster::terminal(i),
        )
        .await
        .unwrap_or_else(|| panic!("the approved fix of {id} did not finish within 30 s"));
        if done["status"] == "resolved" {
            earned = Some(action);
        }
    }
    let Some(action) = earned else {
        panic!("{approvals} approved fixes of {name} never verified; cannot earn trust");
    };
    // An incident opened meanwhile from a cycle that sampled the container before its start
    // (seen now and then) was decided without trust and would hold the fingerprint open:
    // it is resolved by hand, and counted.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut stale = 0;
    let (_, open) = api(
        &client,
        &base,
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/incidents?status=open",
    )
    .await;
    for incident in open.as_array().into_iter().flatten() {
        if incident["fingerprint"] == fingerprint.as_str() {
            stale += 1;
            let id = incident["id"].as_str().unwrap_or_default();
            let (status, body) = api(
                &client,
                &base,
                &cluster.operator_key,
                reqwest::Method::POST,
                &format!("/api/incidents/{id}/resolve"),
            )
            .await;
            assert_eq!(status, 200, "resolving the stale {id}: {body}");
        }
    }
    let grant = client
        .post(format!("{base}/api/trust"))
        .header("x-api-key", &cluster.admin_key)
        .header("content-type", "application/json")
        .body(json!({ "signal": "container_down", "action": action, "target": name }).to_string())
        .send()
        .await
        .expect("POST /api/trust answers");
    let granted_at = SystemTime::now();
    let grant_status = grant.status().as_u16();
    let grant_body = grant.text().await.unwrap_or_default();
    assert_eq!(grant_status, 201, "POST /api/trust: {grant_body}");
    // The crash loop: from the next start on, it exits 1 s after every start.
    let marker = cluster.dir.path().join("crashloop");
    std::fs::write(&marker, "").unwrap();
    let target = format!("{name}:/crashloop");
    docker(&["cp", &marker.display().to_string(), &target])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    docker(&["stop", "-t", "0", &name])
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Sentinel now starts it on its own until the breaker opens.
    let opened = wait_for_incident(
        &client,
        &base,
        &cluster.admin_key,
        &fingerprint,
        Duration::from_secs(if full() { 120 } else { 60 }),
        |i| i["status"] == "awaiting_approval",
    )
    .await;
    let breaker_seen = Instant::now();
    let breaker_seen_at = SystemTime::now();
    let automatic = starts(&events.all(), &name, granted_at);
    let mut breaker_id = String::new();
    match &opened {
        None => failures.push(format!(
            "no incident waited for approval after the grant; {} starts since",
            automatic.len()
        )),
        Some(incident) => {
            breaker_id = incident["id"].as_str().unwrap_or_default().to_owned();
            let why = why_waiting(incident);
            if !why.contains("circuit breaker open") {
                failures.push(format!(
                    "{breaker_id} waits for approval, but not for the breaker: {why:?}"
                ));
            }
        }
    }
    if automatic.len() > BUDGET {
        failures.push(format!(
            "{} automatic starts, budget {BUDGET}",
            automatic.len()
        ));
    }
    if automatic.len() < BUDGET {
        failures.push(format!(
            "only {} automatic starts before the stop, budget {BUDGET}: something else than \
             the breaker stopped them",
            automatic.len()
        ));
    }
    let (_, trust) = api(
        &client,
        &base,
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/trust",
    )
    .await;
    let still_trusted = trust["grants"]
        .as_array()
        .is_some_and(|g| g.iter().any(|g| g.to_string().contains(&name)));
    if !still_trusted {
        failures.push(format!(
            "trust was revoked, so the breaker is not what stopped the starts: {trust}"
        ));
    }

    // A person is asked: the card shows the incident waiting, the thread says why.
    let asks = |c: &crate::slack_double::Call| {
        c.ok()
            && c.method == "chat.postMessage"
            && c.thread_ts().is_some()
            && c.body.to_string().contains(&breaker_id)
            && c.text().contains("circuit breaker open")
    };
    let asking_from = Instant::now();
    let mut asked = slack.calls();
    while !asked.iter().any(asks) && asking_from.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        asked = slack.calls();
    }
    let reply_asks = asked.iter().any(asks);
    if !reply_asks {
        failures.push(format!(
            "no reply in {breaker_id}'s thread at the Slack double says the breaker is open"
        ));
    }
    let card_waiting = asked.iter().any(|c| {
        c.ok()
            && matches!(c.method.as_str(), "chat.postMessage" | "chat.update")
            && c.thread_ts().is_none()
            && c.text().contains(&breaker_id)
            && c.body.to_string().contains("awaiting approval")
            && c.body.to_string().contains("\"approve\"")
    });
    if !card_waiting {
        failures.push(format!(
            "no card of {breaker_id} at the Slack double waits for approval with an Approve button"
        ));
    }

    // While it is open: no start, no restart.
    let remaining = watch.saturating_sub(breaker_seen.elapsed());
    tokio::time::sleep(remaining).await;
    let while_open = starts(&events.all(), &name, breaker_seen_at);
    if !while_open.is_empty() {
        failures.push(format!(
            "{} starts while the breaker was open: {while_open:?}",
            while_open.len()
        ));
    }
    let (_, status) = api(
        &client,
        &base,
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/status",
    )
    .await;
    let breaker_open = status["breakers"].as_array().is_some_and(|all| {
        all.iter()
            .any(|b| b["key"].to_string().contains(&name) && b["state"] == "open")
    });
    if !breaker_open {
        failures.push(format!(
            "/api/status does not show the breaker open: {}",
            status["breakers"]
        ));
    }
    let (_, audit) = api(
        &client,
        &base,
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/audit?limit=1000",
    )
    .await;
    if audit["chain"]["verified"] != true {
        failures.push(format!(
            "the audit chain does not verify: {}",
            audit["chain"]
        ));
    }
    let total_starts = starts(&events.all(), &name, SystemTime::UNIX_EPOCH).len();
    if !failures.is_empty() {
        // What happened, for the one reading a failure.
        let (_, all) = api(
            &client,
            &base,
            &cluster.admin_key,
            reqwest::Method::GET,
            "/api/incidents?status=all",
        )
        .await;
        for incident in all.as_array().into_iter().flatten() {
            let steps: Vec<String> = incident["timeline"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| format!("{} {} {}", e["at"], e["step"], e["message"]))
                .collect();
            eprintln!(
                "{} {} {} opened {}:\n  {}",
                incident["id"],
                incident["fingerprint"],
                incident["status"],
                incident["opened_at"],
                steps.join("\n  ")
            );
        }
        for event in events.all() {
            eprintln!("docker {:?} {} {}", event.at, event.action, event.name);
        }
    }
    report(
        "crash_loop_breaker",
        &format!(
            "replicas=3 budget={BUDGET} action={action} approved_before_trust={approvals} stale_resolved={stale} \
             automatic_starts={} breaker_open={breaker_open} asked_in_slack={} \
             lifetime={lifetime}s starts_while_open={} watched={}s docker_starts_total={total_starts} took={:.0}s",
            automatic.len(),
            card_waiting && reply_asks,
            while_open.len(),
            watch.as_secs(),
            started.elapsed().as_secs_f64()
        ),
        &failures,
    );
    drop(container);
}
