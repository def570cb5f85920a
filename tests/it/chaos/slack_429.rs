//! Card updates to one channel while Slack answers every tenth call 429 `Retry-After: 5`
//! (and now and then 503), across three replicas on one private Redis: at the Slack double,
//! no 1 s window holds two calls to the channel, no call follows a 429 before its
//! `Retry-After` is over, and every incident's card and thread end as the API shows it.
//!
//! The work is real: external alerts fired through `POST /api/alerts` (behind the proxy) open
//! incidents (detected → analyzing → escalated), a second firing raises their severity, then
//! `POST /api/incidents/{id}/resolve` or the alert's source resolves them. Each incident's next
//! step waits until Slack received something of its previous one, so cards are updated in
//! place (`chat.update`) rather than drawn once at the end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sentinel::domain::Incident;
use sentinel::slack::blocks;
use sentinel::slack::cards::{announces, render_card};
use serde_json::{json, Value};

use super::cluster::{api, spreading_client, ClusterConfig, PrivateRedis, Proxy, CHANNEL};
use super::{full, report, size};
use crate::slack_double::{Call, Failure, SlackDouble};

/// The bearer token `POST /api/alerts` takes.
const ALERT_TOKEN: &str = "chaos-alert-token-5c1a9e";
/// Slack answers every `LIMIT_EVERY`th call of a method 429 …
const LIMIT_EVERY: u64 = 10;
/// … with this `Retry-After`, in seconds.
const RETRY_AFTER: u64 = 5;
/// A 503 is queued for the next call once per this many delivered calls (short, full).
const SERVER_ERROR_EVERY: (usize, usize) = (10, 50);
/// Incidents moving at the same time.
const IN_FLIGHT: usize = 3;
/// About how many calls an incident costs (card, three replies, two updates, one reply).
const CALLS_PER_INCIDENT: usize = 7;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The alert fires (again) with this severity.
    Fire(&'static str),
    /// An operator resolves it through the API.
    ResolveByHand,
    /// The alert's source says it is resolved.
    SourceResolved,
}

/// The life of incident number `n`.
fn plan(n: usize) -> Vec<Step> {
    match n % 3 {
        0 => vec![
            Step::Fire("warning"),
            Step::Fire("critical"),
            Step::ResolveByHand,
        ],
        1 => vec![Step::Fire("info"), Step::SourceResolved],
        _ => vec![
            Step::Fire("info"),
            Step::Fire("warning"),
            Step::Fire("critical"),
            Step::SourceResolved,
        ],
    }
}

struct Tracked {
    resource: String,
    id: Option<String>,
    steps: Vec<Step>,
    /// Steps taken.
    taken: usize,
    /// Accepted calls about this incident when the last step was taken.
    calls_then: usize,
}

/// Accepted calls to the channel that mention `id` (the card's text and every reply carry it).
fn about(calls: &[Call], id: &str) -> usize {
    calls
        .iter()
        .filter(|c| c.ok() && c.channel() == Some(CHANNEL) && c.body.to_string().contains(id))
        .count()
}

async fn alert(client: &reqwest::Client, base: &str, body: Value) -> Result<(), String> {
    let reply = client
        .post(format!("{base}/api/alerts"))
        .header("authorization", format!("Bearer {ALERT_TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("POST /api/alerts: {e}"))?;
    let status = reply.status().as_u16();
    let text = reply.text().await.unwrap_or_default();
    if status != 200 {
        return Err(format!("POST /api/alerts answered {status}: {text}"));
    }
    Ok(())
}

/// The open incident of `resource`, polled from the API.
async fn find_open(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    resource: &str,
) -> Option<String> {
    for _ in 0..100 {
        let (status, list) = api(
            client,
            base,
            key,
            reqwest::Method::GET,
            "/api/incidents?status=open",
        )
        .await;
        if status == 200 {
            if let Some(found) = list.as_array().and_then(|all| {
                all.iter()
                    .find(|i| i["resource"] == format!("ChaosCard/{resource}"))
                    .and_then(|i| i["id"].as_str())
            }) {
                return Some(found.to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

async fn take(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    tracked: &Tracked,
    step: Step,
) -> Result<(), String> {
    match step {
        Step::Fire(severity) => {
            alert(
                client,
                base,
                json!({ "name": "ChaosCard", "resource": tracked.resource, "severity": severity,
                        "summary": format!("chaos card {}", tracked.resource) }),
            )
            .await
        }
        Step::SourceResolved => {
            alert(
                client,
                base,
                json!({ "name": "ChaosCard", "resource": tracked.resource,
                        "status": "resolved", "summary": "back to normal" }),
            )
            .await
        }
        Step::ResolveByHand => {
            let id = tracked.id.as_deref().unwrap_or_default();
            let (status, body) = api(
                client,
                base,
                key,
                reqwest::Method::POST,
                &format!("/api/incidents/{id}/resolve"),
            )
            .await;
            if status == 200 {
                Ok(())
            } else {
                Err(format!("resolving {id}: {status} {body}"))
            }
        }
    }
}

/// What is wrong with incident `incident`'s card and thread at the double, if anything, and
/// how many intended updates are missing from it (a stale card counts one, each announced
/// timeline entry without its reply one).
fn check_thread(incident: &Incident, calls: &[Call]) -> Option<(String, usize)> {
    let id = incident.id.as_str();
    let cards: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            c.ok()
                && c.method == "chat.postMessage"
                && c.channel() == Some(CHANNEL)
                && c.thread_ts().is_none()
                && c.text().contains(id)
        })
        .collect();
    let [card] = cards.as_slice() else {
        let missing = usize::from(cards.is_empty());
        return Some((
            format!("{id}: {} cards posted, expected 1", cards.len()),
            missing,
        ));
    };
    let ts = card.ts.clone().unwrap_or_default();
    // The card as Slack shows it: the last accepted draw of it.
    let last = calls
        .iter()
        .filter(|c| {
            c.ok()
                && (std::ptr::eq(*c, *card)
                    || (c.method == "chat.update"
                        && c.channel() == Some(CHANNEL)
                        && c.str("ts") == Some(ts.as_str())))
        })
        .max_by_key(|c| c.at)
        .expect("the card itself");
    let wanted = match render_card(incident, "") {
        Ok(wanted) => wanted,
        Err(e) => return Some((format!("{id}: the card does not render: {e}"), 1)),
    };
    let stale =
        last.text() != wanted.text || last.body.get("blocks") != Some(&json!(wanted.blocks));
    let replies: Vec<&str> = calls
        .iter()
        .filter(|c| {
            c.ok()
                && c.method == "chat.postMessage"
                && c.channel() == Some(CHANNEL)
                && c.thread_ts() == Some(ts.as_str())
        })
        .map(Call::text)
        .collect();
    let expected: Vec<String> = incident
        .timeline
        .iter()
        .filter(|entry| announces(&entry.step))
        .map(|entry| {
            blocks::render_or_fallback(
                "timeline_reply",
                &json!({ "incident": incident, "entry": entry }),
            )
            .text
        })
        .collect();
    let missing = expected
        .iter()
        .filter(|e| !replies.contains(&e.as_str()))
        .count();
    if stale {
        return Some((
            format!(
                "{id} ({}): the card shows {:?}, the API says {:?}",
                incident.status,
                last.text(),
                wanted.text
            ),
            1 + missing,
        ));
    }
    if replies != expected {
        return Some((
            format!("{id}: the thread holds {replies:?}, the timeline announces {expected:?}"),
            missing,
        ));
    }
    None
}

/// Whether the double shows incident `id` as the API does.
async fn caught_up(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    id: &str,
    calls: &[Call],
) -> bool {
    let (status, body) = api(
        client,
        base,
        key,
        reqwest::Method::GET,
        &format!("/api/incidents/{id}"),
    )
    .await;
    status == 200
        && serde_json::from_value::<Incident>(body)
            .is_ok_and(|incident| check_thread(&incident, calls).is_none())
}

/// Calls to the channel in arrival order.
fn channel_calls(double: &SlackDouble) -> Vec<Call> {
    let mut calls: Vec<Call> = double
        .calls()
        .into_iter()
        .filter(|c| c.channel() == Some(CHANNEL))
        .collect();
    calls.sort_by_key(|c| c.at);
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_card_updates_under_429_keep_the_pace_honour_retry_after_and_lose_nothing() {
    let wanted = size(20, 500);
    let server_error_every = size(SERVER_ERROR_EVERY.0, SERVER_ERROR_EVERY.1);
    let within = Duration::from_secs(if full() { 1800 } else { 150 });
    let redis = PrivateRedis::start();
    let slack = SlackDouble::start().await;
    let cluster = ClusterConfig::new(
        &redis.url(),
        Some(slack.api_url()),
        false,
        &format!("[alertmanager]\nbearer_token = \"{ALERT_TOKEN}\"\n"),
    );
    let replicas = cluster.replicas(3).await;
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();
    let key = cluster.operator_key.clone();
    slack.rate_limit_every("chat.postMessage", LIMIT_EVERY, RETRY_AFTER);
    slack.rate_limit_every("chat.update", LIMIT_EVERY, RETRY_AFTER);

    let started = Instant::now();
    let deadline = started + within;
    let mut failures = Vec::new();
    let mut tracked: Vec<Tracked> = Vec::new();
    let mut server_errors = 0;
    // Drive: keep IN_FLIGHT incidents moving until the calls delivered and those still
    // coming add up to `wanted`.
    loop {
        let calls = slack.calls();
        let delivered = calls
            .iter()
            .filter(|c| c.ok() && c.channel() == Some(CHANNEL))
            .count();
        if delivered / server_error_every > server_errors {
            server_errors += 1;
            let method = if server_errors % 2 == 0 {
                "chat.update"
            } else {
                "chat.postMessage"
            };
            slack.fail_next(method, Failure::Status(503));
        }
        let active = tracked.iter().filter(|t| t.taken < t.steps.len()).count();
        if active == 0 && delivered >= wanted {
            break;
        }
        if Instant::now() > deadline {
            failures.push(format!(
                "the drive did not finish within {within:?}: {delivered} calls delivered"
            ));
            break;
        }
        if active < IN_FLIGHT && delivered + CALLS_PER_INCIDENT * active < wanted {
            let n = tracked.len();
            tracked.push(Tracked {
                resource: format!("chaos-card-{n:04}"),
                id: None,
                steps: plan(n),
                taken: 0,
                calls_then: 0,
            });
        }
        let sorted = channel_calls(&slack);
        for t in tracked.iter_mut().filter(|t| t.taken < t.steps.len()) {
            // The next step once Slack shows all of the last one: the channel's queue may
            // just have run empty, and the step's card update comes right after.
            let ready = match &t.id {
                None => true,
                Some(id) => {
                    about(&calls, id) > t.calls_then
                        && caught_up(&client, &proxy.base(), &key, id, &sorted).await
                }
            };
            if !ready {
                continue;
            }
            let step = t.steps[t.taken];
            if let Err(e) = take(&client, &proxy.base(), &key, t, step).await {
                failures.push(e);
                t.taken = t.steps.len();
                continue;
            }
            if t.id.is_none() {
                t.id = find_open(&client, &proxy.base(), &key, &t.resource).await;
                if t.id.is_none() {
                    failures.push(format!("no open incident for {}", t.resource));
                    t.taken = t.steps.len();
                    continue;
                }
            }
            t.calls_then = about(&calls, t.id.as_deref().unwrap_or_default());
            t.taken += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let driven = started.elapsed();

    // Settle: every incident's card and thread as the API shows the incident, and the
    // channel quiet for longer than a Retry-After.
    let ids: Vec<String> = tracked.iter().filter_map(|t| t.id.clone()).collect();
    let mut incidents: HashMap<String, Incident> = HashMap::new();
    let mut wrong: Vec<String>;
    let mut lost: usize;
    loop {
        lost = 0;
        let mut now_wrong = Vec::new();
        for id in &ids {
            let (status, body) = api(
                &client,
                &proxy.base(),
                &key,
                reqwest::Method::GET,
                &format!("/api/incidents/{id}"),
            )
            .await;
            if status != 200 {
                now_wrong.push(format!("GET /api/incidents/{id}: {status} {body}"));
                continue;
            }
            match serde_json::from_value::<Incident>(body) {
                Ok(incident) => {
                    incidents.insert(id.clone(), incident);
                }
                Err(e) => now_wrong.push(format!("{id}: not an incident: {e}")),
            }
        }
        let calls = channel_calls(&slack);
        for id in &ids {
            if let Some(incident) = incidents.get(id) {
                if incident.is_open() {
                    now_wrong.push(format!("{id} is still {}", incident.status));
                }
                if let Some((why, missing)) = check_thread(incident, &calls) {
                    now_wrong.push(why);
                    lost += missing;
                }
            }
        }
        let quiet = calls
            .last()
            .is_none_or(|c| c.at.elapsed() > Duration::from_secs(RETRY_AFTER + 3));
        wrong = now_wrong;
        if (wrong.is_empty() && quiet) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    failures.extend(wrong.iter().take(10).cloned());
    if wrong.len() > 10 {
        failures.push(format!("… and {} more", wrong.len() - 10));
    }

    // Count at the double.
    let calls = channel_calls(&slack);
    let delivered: Vec<&Call> = calls.iter().filter(|c| c.ok()).collect();
    let cards = delivered
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.thread_ts().is_none())
        .count();
    let replies = delivered
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.thread_ts().is_some())
        .count();
    let updates = delivered
        .iter()
        .filter(|c| c.method == "chat.update")
        .count();
    let limited = calls.iter().filter(|c| c.status == 429).count();
    let errors_5xx = calls.iter().filter(|c| c.status >= 500).count();
    let refused = calls
        .iter()
        .filter(|c| c.status == 200 && c.error.is_some())
        .count();
    // The most calls in any window [t, t + 1 s) starting at a call, and the closest two.
    let mut max_per_second = 0;
    let mut min_gap = Duration::MAX;
    for (i, call) in calls.iter().enumerate() {
        let within_second = calls[i..]
            .iter()
            .take_while(|c| c.at.duration_since(call.at) < Duration::from_secs(1))
            .count();
        max_per_second = max_per_second.max(within_second);
        if let Some(next) = calls.get(i + 1) {
            min_gap = min_gap.min(next.at.duration_since(call.at));
        }
    }
    // After each 429, the channel's next call waits the whole Retry-After.
    let mut honoured = 0;
    let mut min_after_429 = Duration::MAX;
    for (i, call) in calls.iter().enumerate().filter(|(_, c)| c.status == 429) {
        match calls.get(i + 1) {
            Some(next) => {
                let waited = next.at.duration_since(call.at);
                min_after_429 = min_after_429.min(waited);
                if waited >= Duration::from_secs(RETRY_AFTER) {
                    honoured += 1;
                } else {
                    failures.push(format!(
                        "call {} ({}) came {waited:?} after a 429 with Retry-After {RETRY_AFTER}",
                        i + 1,
                        next.method
                    ));
                }
            }
            None => failures.push("a 429 was the channel's last call: never retried".to_owned()),
        }
    }
    if max_per_second > 1 {
        let pairs: Vec<String> = calls
            .windows(2)
            .filter(|p| p[1].at.duration_since(p[0].at) < Duration::from_secs(1))
            .take(5)
            .map(|p| {
                format!(
                    "{} then {} {:?} later",
                    p[0].method,
                    p[1].method,
                    p[1].at.duration_since(p[0].at)
                )
            })
            .collect();
        failures.push(format!(
            "{max_per_second} calls to {CHANNEL} within one second; closest: {}",
            pairs.join("; ")
        ));
    }
    if delivered.len() < wanted {
        failures.push(format!(
            "{} calls delivered, expected at least {wanted}",
            delivered.len()
        ));
    }
    if limited == 0 {
        failures.push("the double never answered 429".to_owned());
    }
    if refused > 0 {
        failures.push(format!("{refused} calls refused with ok: false"));
    }
    lost += ids.len() - ids.iter().filter(|id| incidents.contains_key(*id)).count();
    let fmt_ms = |d: Duration| {
        if d == Duration::MAX {
            "-".to_owned()
        } else {
            format!("{}ms", d.as_millis())
        }
    };
    report(
        "slack_429",
        &format!(
            "replicas=3 incidents={} delivered={} (cards={cards} replies={replies} \
             updates={updates}) answered_429={limited} ({:.1}%) answered_5xx={errors_5xx} \
             retry_after_honoured={honoured}/{limited} min_after_429={} \
             max_calls_per_1s={max_per_second} min_gap={} threads_wrong={} lost={lost} \
             drive={:.0}s total={:.0}s",
            ids.len(),
            delivered.len(),
            100.0 * limited as f64 / calls.len().max(1) as f64,
            fmt_ms(min_after_429),
            fmt_ms(min_gap),
            wrong.len(),
            driven.as_secs_f64(),
            started.elapsed().as_secs_f64(),
        ),
        &failures,
    );
    drop(proxy);
}
