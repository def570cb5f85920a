//! Rolling restarts of three replicas under a steady load of incidents: nothing is lost,
//! nothing is done twice.
//!
//! Three `sentinel serve` replicas on one private durable Redis behind the round-robin proxy,
//! with the Slack double. The load: one labelled container (`sleep`) started and then
//! `docker kill`ed every `60 / rate` seconds (exit 137), which the monitor's leader opens as a
//! `container_down` incident whose (medium-risk) `container_start` waits for an operator; an
//! operator approves every waiting fix through the proxy, so every incident ends in a real
//! `docker start`. Meanwhile the harness restarts the replicas one after another: the
//! replica leaves the proxy's backends, gets SIGTERM (`terminate`, SIGKILL only after 15 s),
//! a fresh one starts on the same configuration and joins the backends.
//!
//! Counted at the boundary once the load has drained: every killed container has exactly one
//! incident and it reaches a terminal status (0 lost); `docker events` shows exactly one
//! `start` of each container after its kill and no other action by Sentinel (0 doubled, 0
//! fixes lost); the Slack double received each incident's card (`chat.postMessage` at the
//! top level) exactly once and no thread reply twice; every API request the operator sent
//! during the restarts was answered (an HTTP status below 500).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::cluster::{
    api, spreading_client, terminal, ChaosContainer, ClusterConfig, DockerEvents, PrivateRedis,
    Proxy,
};
use super::{report, size};
use crate::slack_double::SlackDouble;

/// How long a replica may take to shut down on SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(15);
/// How long after the last restart every incident must be terminal.
const DRAIN_WITHIN: Duration = Duration::from_secs(90);

/// GETs in flight through the proxy during the restarts.
const READERS: usize = 3;
/// Slack's pace is one message a second per channel; an incident makes about nine.
const SLACK_PER_INCIDENT: Duration = Duration::from_secs(12);
/// The Slack double heard nothing for this long: the outbox is empty.
const QUIET: Duration = Duration::from_secs(5);

/// What the operator's requests got back: status → count (0: no answer).
type Statuses = Arc<Mutex<BTreeMap<u16, usize>>>;

async fn counted(
    statuses: &Statuses,
    client: &reqwest::Client,
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> (u16, Value) {
    let (status, body) = api(client, base, key, method, path).await;
    *statuses.lock().unwrap().entry(status).or_insert(0) += 1;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_rolling_restarts_of_three_replicas_lose_and_double_nothing() {
    let restarts = size(2, 20);
    let per_minute = size(20, 10);
    let count = size(3, 50);
    let every = Duration::from_secs(60) / per_minute as u32;
    // The restarts are spread over the load: full size, 20 over 5 minutes.
    let span = every * count as u32;
    let apart = span / restarts as u32;

    let redis = PrivateRedis::durable();
    let slack = SlackDouble::start().await;
    let cluster = ClusterConfig::new(&redis.url(), Some(slack.api_url()), true, "");
    let tag = cluster.label.rsplit('=').next().unwrap().to_owned();
    let events = DockerEvents::watch(&cluster.label);
    let mut replicas = cluster.replicas(3).await;
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();
    let statuses: Statuses = Arc::default();

    // The operator: approves every waiting fix of the scenario's containers, through the
    // proxy, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let operator = {
        let (client, base, stop, statuses) = (
            client.clone(),
            proxy.base(),
            Arc::clone(&stop),
            Arc::clone(&statuses),
        );
        let key = cluster.operator_key.clone();
        let prefix = format!("container_down:chaos-roll-{tag}-");
        tokio::spawn(async move {
            let mut approved: BTreeMap<String, Instant> = BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let (status, list) = counted(
                    &statuses,
                    &client,
                    &base,
                    &key,
                    reqwest::Method::GET,
                    "/api/incidents?status=all",
                )
                .await;
                if status == 200 {
                    for incident in list.as_array().into_iter().flatten() {
                        let waiting = incident["status"] == "awaiting_approval"
                            && incident["fingerprint"]
                                .as_str()
                                .is_some_and(|f| f.starts_with(&prefix));
                        let id = incident["id"].as_str().unwrap_or("").to_owned();
                        // Asked again only if it still waits 5 s after an answered approval.
                        let due = approved
                            .get(&id)
                            .is_none_or(|at| at.elapsed() > Duration::from_secs(5));
                        if waiting && due {
                            let (status, _) = counted(
                                &statuses,
                                &client,
                                &base,
                                &key,
                                reqwest::Method::POST,
                                &format!("/api/incidents/{id}/approve"),
                            )
                            .await;
                            if status != 0 {
                                approved.insert(id, Instant::now());
                            }
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // Readers: a few GETs in flight through the proxy at all times, counted with the
    // operator's requests.
    let readers: Vec<_> = (0..READERS)
        .map(|n| {
            let (client, base, stop, statuses) = (
                client.clone(),
                proxy.base(),
                Arc::clone(&stop),
                Arc::clone(&statuses),
            );
            let key = cluster.admin_key.clone();
            tokio::spawn(async move {
                let paths = ["/api/status", "/api/incidents?status=all", "/"];
                let mut turn = n;
                while !stop.load(Ordering::Relaxed) {
                    let path = paths[turn % paths.len()];
                    turn += 1;
                    counted(&statuses, &client, &base, &key, reqwest::Method::GET, path).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();

    // The load: `count` containers, one killed every `every`.
    let load = {
        let (label, tag) = (cluster.label.clone(), tag.clone());
        tokio::spawn(async move {
            let mut killed: Vec<(ChaosContainer, SystemTime)> = Vec::new();
            let began = Instant::now();
            let mut next = began;
            while killed.len() < count {
                let name = format!("chaos-roll-{tag}-{}", killed.len());
                let container = ChaosContainer::run(&label, &name, "sleep 3600")
                    .await
                    .expect("docker runs the test image");
                tokio::time::sleep(Duration::from_millis(500)).await;
                let at = SystemTime::now();
                super::cluster::docker(&["kill", &name])
                    .await
                    .expect("docker kills the container");
                killed.push((container, at));
                next += every;
                tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
            }
            (killed, began.elapsed())
        })
    };

    // The rolling restarts, one replica after another.
    let rolling_started = Instant::now();
    let mut shutdowns = Vec::new();
    let mut startups = Vec::new();
    // How many of the restarted replicas were running the monitor at the time.
    let mut leaders = 0;
    for k in 0..restarts {
        tokio::time::sleep_until((rolling_started + apart * k as u32 + apart / 2).into()).await;
        let i = k % replicas.len();
        let others: Vec<_> = replicas
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, r)| r.addr())
            .collect();
        proxy.set_backends(others);
        let (_, before) = api(
            &client,
            &replicas[i].base(),
            &cluster.admin_key,
            reqwest::Method::GET,
            "/api/status",
        )
        .await;
        if before["monitor"]["leader"] == true {
            leaders += 1;
        }
        let sent = Instant::now();
        replicas[i].terminate(GRACE).await;
        shutdowns.push(sent.elapsed());
        let sent = Instant::now();
        let fresh = cluster.replica(&format!("r{i}-{k}")).await;
        startups.push(sent.elapsed());
        replicas[i] = fresh;
        proxy.set_backends(replicas.iter().map(|r| r.addr()).collect());
    }
    let rolling_took = rolling_started.elapsed();
    let requests_during: usize = statuses.lock().unwrap().values().sum();
    let statuses_during = statuses.lock().unwrap().clone();
    let (killed, load_took) = load.await.expect("the load");

    // Drain: every incident of the scenario terminal, or the deadline.
    let fingerprints: Vec<String> = killed
        .iter()
        .map(|(c, _)| format!("container_down:{}", c.name))
        .collect();
    let deadline = Instant::now() + DRAIN_WITHIN;
    let mut ours: Vec<Value> = Vec::new();
    while Instant::now() < deadline {
        let (status, list) = api(
            &client,
            &proxy.base(),
            &cluster.admin_key,
            reqwest::Method::GET,
            "/api/incidents?status=all",
        )
        .await;
        if status == 200 {
            ours = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| {
                    i["fingerprint"]
                        .as_str()
                        .is_some_and(|f| fingerprints.iter().any(|g| g == f))
                })
                .cloned()
                .collect();
            let done = fingerprints
                .iter()
                .all(|f| ours.iter().any(|i| i["fingerprint"] == *f && terminal(i)));
            if done && ours.iter().all(terminal) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop.store(true, Ordering::Relaxed);
    operator.await.expect("the operator");
    for reader in readers {
        reader.await.expect("a reader");
    }
    // Late effects would show here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let drained_at = Instant::now();

    // Slack is behind by design: one message a second per channel, some nine per incident
    // (the card and its thread), so at 10 incidents a minute the outbox is still sending
    // when the incidents are over. Wait until every card shows its incident's final status
    // and the double has heard nothing for a while, bounded by the backlog at Slack's pace.
    let ids: Vec<(String, String)> = ours
        .iter()
        .filter_map(|i| {
            Some((
                i["id"].as_str()?.to_owned(),
                i["status"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let slack_deadline = Instant::now() + SLACK_PER_INCIDENT * ids.len() as u32 + QUIET * 3;
    let final_card = |posts: &[crate::slack_double::Call], id: &str, status: &str| {
        posts
            .iter()
            .rfind(|c| c.ok() && c.thread_ts().is_none() && c.text().contains(id))
            .is_some_and(|c| {
                c.text()
                    .ends_with(&format!(": {}", status.replace('_', " ")))
            })
    };
    let slack_drained = loop {
        let calls = slack.calls();
        let shown = ids
            .iter()
            .all(|(id, status)| final_card(&calls, id, status));
        let quiet = calls.last().is_none_or(|c| c.at.elapsed() > QUIET);
        if shown && quiet {
            break true;
        }
        if Instant::now() > slack_deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let slack_took = drained_at.elapsed();

    // Per container: its incidents, its starts after the kill, anything else done to it.
    let all_events = events.all();
    let mut failures = Vec::new();
    let (mut lost, mut doubled, mut effects, mut others) = (0, 0, 0, 0);
    let mut resolved = 0;
    let mut problems = Vec::new();
    for ((container, killed_at), fingerprint) in killed.iter().zip(&fingerprints) {
        let incidents: Vec<&Value> = ours
            .iter()
            .filter(|i| i["fingerprint"] == *fingerprint)
            .collect();
        resolved += incidents
            .iter()
            .filter(|i| i["status"] == "resolved")
            .count();
        if incidents.len() != 1 || !terminal(incidents[0]) {
            lost += 1;
            problems.push(format!(
                "{fingerprint}: incidents {:?}",
                incidents
                    .iter()
                    .map(|i| format!("{} {}", i["id"], i["status"]))
                    .collect::<Vec<_>>()
            ));
        }
        let after: Vec<&str> = all_events
            .iter()
            .filter(|e| e.name == container.name && e.at > *killed_at)
            .map(|e| e.action.as_str())
            .filter(|a| !a.starts_with("exec_") && !a.starts_with("health_status"))
            .collect();
        let starts = after.iter().filter(|a| **a == "start").count();
        // Ours: the kill and the death it causes (Docker may say `die` and `kill`).
        let foreign = after
            .iter()
            .filter(|a| !matches!(**a, "start" | "kill" | "die"))
            .count();
        match starts {
            1 => effects += 1,
            0 => problems.push(format!("{fingerprint}: no start after the kill: {after:?}")),
            _ => {
                doubled += 1;
                problems.push(format!("{fingerprint}: {starts} starts: {after:?}"));
            }
        }
        if foreign > 0 {
            others += 1;
            problems.push(format!("{fingerprint}: other actions: {after:?}"));
        }
    }
    let calls = slack.calls();
    let finals = ids
        .iter()
        .filter(|(id, status)| final_card(&calls, id, status))
        .count();
    let posts = slack.accepted("chat.postMessage");
    let mut cards_off = Vec::new();
    for (id, _) in &ids {
        let cards = posts
            .iter()
            .filter(|c| c.thread_ts().is_none() && c.text().contains(id.as_str()))
            .count();
        if cards != 1 {
            cards_off.push(format!("{id}: {cards} cards"));
        }
    }
    let mut replies: BTreeMap<(String, String), usize> = BTreeMap::new();
    for post in posts.iter().filter(|c| c.thread_ts().is_some()) {
        *replies
            .entry((post.thread_ts().unwrap().to_owned(), post.text().to_owned()))
            .or_insert(0) += 1;
    }
    let thread_replies: usize = replies.values().sum();
    let replies_twice: Vec<_> = replies.iter().filter(|(_, n)| **n > 1).collect();
    let answered_during = statuses_during
        .iter()
        .filter(|(s, _)| (1..500).contains(*s))
        .map(|(_, n)| n)
        .sum::<usize>();
    let slowest_shutdown = shutdowns.iter().max().copied().unwrap_or_default();
    let slowest_startup = startups.iter().max().copied().unwrap_or_default();

    if lost > 0 || doubled > 0 || others > 0 || effects != killed.len() {
        problems.truncate(10);
        failures.push(format!(
            "lost {lost}, doubled {doubled}, other actions {others}, effects {effects}/{}: \
             {problems:?}",
            killed.len()
        ));
    }
    if !cards_off.is_empty() {
        cards_off.truncate(10);
        failures.push(format!(
            "{} incidents without exactly one card: {cards_off:?}",
            cards_off.len()
        ));
    }
    if !slack_drained || finals != ids.len() {
        failures.push(format!(
            "{finals} of {} cards show their incident's final status {:.0?} after the \
             incidents were over",
            ids.len(),
            slack_took
        ));
    }
    if !replies_twice.is_empty() {
        failures.push(format!(
            "{} thread replies posted more than once: {:?}",
            replies_twice.len(),
            replies_twice.iter().take(5).collect::<Vec<_>>()
        ));
    }
    if answered_during != requests_during || requests_during == 0 {
        failures.push(format!(
            "{answered_during} of {requests_during} API requests answered during the restarts: \
             {statuses_during:?}"
        ));
    }
    if slowest_shutdown >= GRACE {
        failures.push(format!(
            "a replica did not exit within {GRACE:?} of SIGTERM (killed)"
        ));
    }
    if failures.iter().any(|f| f.starts_with("lost")) {
        for replica in &replicas {
            failures.push(format!("{} log:\n{}", replica.name, replica.log_tail(15)));
        }
    }
    let rate = killed.len() as f64 * 60.0 / load_took.as_secs_f64().max(1.0);
    report(
        "rolling_restarts",
        &format!(
            "restarts={restarts} (of the monitor's leader {leaders}) over {:.0}s incidents={} ({rate:.1}/min) lost={lost} \
             doubled={doubled} other_actions={others} starts={effects}/{} resolved={resolved} \
             cards_once={}/{} cards_final={finals}/{} slack_behind={:.0}s thread_replies={thread_replies} replies_twice={} \
             api_answered={answered_during}/{requests_during} ({:.1}%) \
             shutdown_max={:.1}s startup_max={:.1}s",
            rolling_took.as_secs_f64(),
            killed.len(),
            killed.len(),
            ids.len() - cards_off.len(),
            ids.len(),
            ids.len(),
            slack_took.as_secs_f64(),
            replies_twice.len(),
            100.0 * answered_during as f64 / requests_during.max(1) as f64,
            slowest_shutdown.as_secs_f64(),
            slowest_startup.as_secs_f64(),
        ),
        &failures,
    );
    drop(killed);
}
