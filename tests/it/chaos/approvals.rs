//! Many concurrent Approve clicks on one incident's card, spread across three replicas, are
//! one transition and one Docker action.
//!
//! A labelled container on `--network none` is killed (`docker kill`); the monitor leader
//! opens a `container_down` incident whose `container_start` waits for an operator. The
//! Approve button is read from the card the Slack double received, and clicked as Slack
//! sends clicks (`block_actions`, form field `payload`, signed): by the operator, each click
//! its own `trigger_id`; some clicks delivered again (same payload, signed again); some by a
//! user without a Sentinel role. All at once, through the round-robin proxy.
//!
//! Counted at the boundary: Docker's `start` events for the container (and any other action
//! Docker reports after the kill), the audit (`ApprovalGranted`, `ActionExecuted`), the
//! incident as the API shows it (one execution, approved by the operator), the acks (status
//! 200, how fast) and what the Slack double received: one ephemeral word per distinct click
//! (SPEC §6: every outcome is told, a click without the role gets an explanation; a
//! delivery seen before is handled once, so it is told nothing), of which exactly one says
//! "You approved", and one "Approved" reply in the card's thread (SPEC §12.1: one thread
//! reply per status change).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cluster::{
    api, docker, ms, now_secs, quantile, slack_post, spreading_client, wait_for_incident,
    ChaosContainer, ClusterConfig, DockerEvents, PrivateRedis, Proxy, APP_ID, CHANNEL, OPERATOR,
};
use super::{report, size};
use crate::slack_double::{Call, SlackDouble};

/// A Slack user the configuration gives no role (`default_role = "none"`).
const NOBODY: &str = "UCHAOSNOBODY";

/// Slack's limit for acknowledging a request (SPEC §6).
const ACK_LIMIT: Duration = Duration::from_secs(3);

/// What one delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An operator's click, its own trigger id.
    Operator,
    /// The same payload as an earlier operator click, delivered again (signed again).
    Repeat,
    /// A click by a user without a role.
    Nobody,
}

/// The Approve button of `incident`'s card as the double last received it: the card's
/// `ts` and the button's value, untouched.
fn approve_button(slack: &SlackDouble, incident: &str) -> Option<(String, String)> {
    let cards: Vec<Call> = slack
        .accepted("chat.postMessage")
        .into_iter()
        .filter(|c| c.thread_ts().is_none() && c.text().contains(incident))
        .collect();
    let card_ts = cards.first()?.ts.clone()?;
    let drawn = cards.into_iter().chain(
        slack
            .accepted("chat.update")
            .into_iter()
            .filter(|c| c.str("ts") == Some(card_ts.as_str())),
    );
    let value = drawn
        .filter_map(|c| button_value(&c, "approve"))
        .next_back()?;
    Some((card_ts, value))
}

fn button_value(call: &Call, action_id: &str) -> Option<String> {
    let blocks: Vec<Value> = match call.body.get("blocks")? {
        Value::String(text) => serde_json::from_str(text).ok()?,
        Value::Array(blocks) => blocks.clone(),
        _ => return None,
    };
    blocks.iter().find_map(|block| {
        block.get("elements")?.as_array()?.iter().find_map(|e| {
            (e.get("action_id")?.as_str()? == action_id)
                .then(|| e.get("value")?.as_str().map(str::to_owned))
                .flatten()
        })
    })
}

/// A `block_actions` click on the card's Approve button, as Slack posts it.
fn click_body(user: &str, trigger: &str, card_ts: &str, value: &str, response_url: &str) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": "T1"},
        "api_app_id": APP_ID,
        "team": {"id": "T1"},
        "trigger_id": trigger,
        "container": {"type": "message", "message_ts": card_ts, "channel_id": CHANNEL},
        "channel": {"id": CHANNEL, "name": "incidents"},
        "response_url": response_url,
        "actions": [{
            "type": "button",
            "action_id": "approve",
            "block_id": "incident_actions",
            "value": value,
            "action_ts": format!("{}.000200", now_secs()),
        }],
    });
    form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", &payload.to_string())
        .finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_concurrent_approve_clicks_across_replicas_are_one_transition() {
    let deliveries = size(100, 1_000);
    let redis = PrivateRedis::start();
    let slack = SlackDouble::start().await;
    let cluster = ClusterConfig::new(&redis.url(), Some(slack.api_url()), true, "");
    let replicas = cluster.replicas(3).await;
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();

    let name = format!(
        "sentinel-chaos-approvals-{}",
        cluster
            .label
            .rsplit('=')
            .next()
            .unwrap_or("x")
            .replace(':', "-")
    );
    let events = DockerEvents::watch(&cluster.label);
    let container = ChaosContainer::run(&cluster.label, &name, "while true; do sleep 1; done")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let killed_at = std::time::SystemTime::now();
    docker(&["kill", &name])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let fingerprint = format!("container_down:{name}");
    let waiting = wait_for_incident(
        &client,
        &proxy.base(),
        &cluster.admin_key,
        &fingerprint,
        Duration::from_secs(40),
        |i| i["status"] == "awaiting_approval",
    )
    .await
    .unwrap_or_else(|| panic!("no {fingerprint} incident awaiting approval within 40 s"));
    let id = waiting["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        waiting["proposed_action"]["action"], "container_start",
        "the fix proposed: {waiting}"
    );

    // The button as the card shows it, once the card names the current proposal.
    let proposal = waiting["proposal_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (card_ts, value) = loop {
        if let Some((ts, value)) = approve_button(&slack, &id) {
            if value.contains(&proposal) {
                break (ts, value);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no card with an Approve button for {id} (proposal {proposal}) within 20 s; the \
             double received {:?}",
            slack
                .calls()
                .iter()
                .map(|c| c.method.clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // The deliveries: a tenth re-sent copies of operator clicks, a tenth by a user without a
    // role, the rest distinct operator clicks.
    let mut plan: Vec<(Kind, String)> = Vec::with_capacity(deliveries);
    let mut operator_bodies = Vec::new();
    for i in 0..deliveries {
        let trigger = format!("{}.{i}.{:08x}", now_secs(), rand::random::<u32>());
        let url = slack.response_url(&format!("click-{i}"));
        let (kind, body) = match i % 10 {
            3 if !operator_bodies.is_empty() => {
                let earlier: &String = &operator_bodies[(i * 7) % operator_bodies.len()];
                (Kind::Repeat, earlier.clone())
            }
            7 => (
                Kind::Nobody,
                click_body(NOBODY, &trigger, &card_ts, &value, &url),
            ),
            _ => {
                let body = click_body(OPERATOR, &trigger, &card_ts, &value, &url);
                operator_bodies.push(body.clone());
                (Kind::Operator, body)
            }
        };
        plan.push((kind, body));
    }
    let count_of = |kind: Kind| plan.iter().filter(|(k, _)| *k == kind).count();
    let (operator_clicks, repeats, nobody_clicks) = (
        count_of(Kind::Operator),
        count_of(Kind::Repeat),
        count_of(Kind::Nobody),
    );

    // All at once, each on its own connection through the proxy.
    let started = Instant::now();
    let sends = plan.iter().enumerate().map(|(i, (kind, body))| {
        let (client, base) = (&client, proxy.base());
        async move {
            // A copy is signed again, at another timestamp, as a re-sent request would be.
            let timestamp = if *kind == Kind::Repeat {
                now_secs() - 1 - (i % 60) as i64
            } else {
                now_secs()
            };
            slack_post(
                client,
                &base,
                "/slack/interactions",
                "application/x-www-form-urlencoded",
                body,
                timestamp,
                &[],
            )
            .await
        }
    });
    let answers = futures::future::join_all(sends).await;
    let sending = started.elapsed();
    let mut statuses = BTreeMap::new();
    let mut latencies = Vec::with_capacity(deliveries);
    for (status, took) in &answers {
        *statuses.entry(*status).or_insert(0) += 1;
        latencies.push(*took);
    }
    let acked = statuses.get(&200).copied().unwrap_or(0);

    // The fix runs, is verified after `settle`, and the incident resolves.
    let done = wait_for_incident(
        &client,
        &proxy.base(),
        &cluster.admin_key,
        &fingerprint,
        Duration::from_secs(40),
        super::cluster::terminal,
    )
    .await;
    // Every distinct click is told its outcome; give the replicas time to say it all.
    let told_everyone = operator_clicks + nobody_clicks;
    slack
        .wait_until(Duration::from_secs(30), |calls| {
            calls
                .iter()
                .filter(|c| c.method == "chat.postEphemeral")
                .count()
                >= told_everyone
        })
        .await;
    // Then a little longer, so that a late extra word would be counted too.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (status, incident) = api(
        &client,
        &proxy.base(),
        &cluster.admin_key,
        reqwest::Method::GET,
        &format!("/api/incidents/{id}"),
    )
    .await;
    assert_eq!(status, 200, "GET /api/incidents/{id}: {incident}");
    let (status, audit) = api(
        &client,
        &proxy.base(),
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/audit?limit=1000",
    )
    .await;
    assert_eq!(status, 200, "GET /api/audit: {audit}");
    let entries: Vec<Value> = audit["entries"].as_array().cloned().unwrap_or_default();
    let of_incident = |event: &str| -> Vec<&Value> {
        entries
            .iter()
            .filter(|e| e["event"] == event && e["incident"] == id.as_str())
            .collect()
    };
    let granted = of_incident("ApprovalGranted");
    let executed = of_incident("ActionExecuted").len();
    let refused = of_incident("DecisionRefused");
    let refusals: u64 = refused
        .iter()
        .map(|e| e["details"]["count"].as_u64().unwrap_or(1))
        .sum();
    let granted_to_operator = granted
        .iter()
        .filter(|e| e["actor"].as_str().is_some_and(|a| a.contains(OPERATOR)))
        .count();
    let nobody_audited = entries
        .iter()
        .filter(|e| e["actor"].as_str().is_some_and(|a| a.contains(NOBODY)))
        .count();

    // Docker, after the harness's kill: the actions Sentinel made on the container.
    let after_kill: Vec<_> = events
        .actions()
        .into_iter()
        .filter(|e| e.name == name && e.at >= killed_at)
        .collect();
    let starts = after_kill.iter().filter(|e| e.action == "start").count();
    let others: Vec<String> = after_kill
        .iter()
        .filter(|e| !matches!(e.action.as_str(), "start" | "kill" | "die"))
        .map(|e| e.action.clone())
        .collect();
    // The harness's own kill makes one `kill` and one `die`; more would be Sentinel's.
    let kills = after_kill.iter().filter(|e| e.action == "kill").count();

    // What the Slack double received.
    let ephemerals = slack.calls_to("chat.postEphemeral");
    let told = |user: &str| -> Vec<String> {
        ephemerals
            .iter()
            .filter(|c| c.str("user") == Some(user))
            .map(|c| c.text().to_owned())
            .collect()
    };
    let operator_told = told(OPERATOR);
    let nobody_told = told(NOBODY);
    let you_approved = operator_told
        .iter()
        .filter(|t| t.starts_with("You approved"))
        .count();
    let mut operator_outcomes = BTreeMap::new();
    for text in &operator_told {
        let gist: String = text
            .replace(&id, "<id>")
            .split(';')
            .next()
            .unwrap_or("")
            .chars()
            .take(60)
            .collect();
        *operator_outcomes.entry(gist).or_insert(0) += 1;
    }
    // The other operator clicks: refused by the engine (audited, coalesced into entries with
    // a count, SPEC §12.3), or told the card changed before the service was asked.
    let refused_told = operator_told
        .iter()
        .filter(|t| t.starts_with("Refused"))
        .count();
    let changed_told = operator_told
        .iter()
        .filter(|t| t.contains("changed since this card was drawn"))
        .count();
    let nobody_explained = nobody_told
        .iter()
        .filter(|t| t.starts_with("Sorry") && t.contains("Nothing was changed"))
        .count();
    let thread: Vec<Call> = slack
        .calls_to("chat.postMessage")
        .into_iter()
        .filter(|c| c.thread_ts() == Some(card_ts.as_str()))
        .collect();
    let approved_replies: Vec<String> = thread
        .iter()
        .filter(|c| c.text().to_lowercase().contains("approved"))
        .map(|c| c.text().to_owned())
        .collect();
    let response_urls = (0..deliveries)
        .map(|i| slack.responses(&format!("click-{i}")).len())
        .sum::<usize>();

    eprintln!("concurrent_approvals: the operator was told {operator_outcomes:?}");
    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);
    let mut failures = Vec::new();
    if granted.len() != 1 || granted_to_operator != 1 {
        failures.push(format!(
            "expected 1 ApprovalGranted for {id} by {OPERATOR}, audited {}: {granted:?}",
            granted.len()
        ));
    }
    if executed != 1 {
        failures.push(format!(
            "expected 1 ActionExecuted for {id}, audited {executed}"
        ));
    }
    if starts != 1 || kills != 1 || !others.is_empty() {
        failures.push(format!(
            "expected 1 Docker start after the kill and no other action; start={starts} \
             kill={kills} others={others:?}"
        ));
    }
    match &done {
        Some(done) if done["status"] == "resolved" => {}
        other => failures.push(format!(
            "the incident did not resolve within 40 s: {}",
            other
                .as_ref()
                .map_or("(never terminal)".to_owned(), |i| i["status"].to_string())
        )),
    }
    if incident["execution"]["approved_by"]
        .as_str()
        .is_none_or(|by| !by.contains(OPERATOR))
    {
        failures.push(format!(
            "the execution is not the operator's: {}",
            incident["execution"]
        ));
    }
    let approved_steps = incident["timeline"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|e| e["step"] == "approved").count());
    let executing_steps = incident["timeline"]
        .as_array()
        .map_or(0, |t| t.iter().filter(|e| e["step"] == "executing").count());
    if approved_steps != 1 || executing_steps != 1 {
        failures.push(format!(
            "the timeline has {approved_steps} `approved` and {executing_steps} `executing` \
             steps, expected 1 each"
        ));
    }
    if acked != deliveries {
        failures.push(format!(
            "{acked} of {deliveries} clicks acknowledged; statuses {statuses:?}"
        ));
    }
    if max >= ACK_LIMIT {
        failures.push(format!("slowest ack {} ≥ Slack's 3 s", ms(max)));
    }
    if you_approved != 1 {
        failures.push(format!(
            "{you_approved} \"You approved\" messages, expected 1: {operator_outcomes:?}"
        ));
    }
    if operator_told.len() != operator_clicks {
        failures.push(format!(
            "the operator made {operator_clicks} distinct clicks ({repeats} more re-sent) and \
             was told {} times, expected once per distinct click: {operator_outcomes:?}",
            operator_told.len()
        ));
    }
    if refused_told as u64 != refusals
        || refused_told + changed_told + you_approved != operator_told.len()
    {
        failures.push(format!(
            "of the operator's other clicks {refused_told} were told a refusal, {changed_told} \
             that the card changed, and the audit counts {refusals} refusals: \
             {operator_outcomes:?}"
        ));
    }
    if nobody_told.len() != nobody_clicks || nobody_explained != nobody_clicks {
        failures.push(format!(
            "{NOBODY} (no role) clicked {nobody_clicks} times, was told {} times, {} of them \
             the refusal: {:?}",
            nobody_told.len(),
            nobody_explained,
            nobody_told.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if nobody_audited != 0 {
        failures.push(format!(
            "{nobody_audited} audit entries name {NOBODY}, who changed nothing"
        ));
    }
    if approved_replies.len() != 1 {
        failures.push(format!(
            "{} thread replies say approved, expected 1: {approved_replies:?}",
            approved_replies.len()
        ));
    }
    if audit["chain"]["verified"] != true {
        failures.push(format!(
            "the audit chain does not verify: {}",
            audit["chain"]
        ));
    }
    report(
        "concurrent_approvals",
        &format!(
            "clicks={deliveries} (operator={operator_clicks} resent={repeats} no_role={nobody_clicks}) \
             replicas=3 transitions={} executions={executed} docker_start={starts} \
             acked={:.1}% ack_p99={} ack_max={} sent_in={:.1}s told_operator={} \
             you_approved={you_approved} told_no_role={} thread_approved={} \
             refused={refused_told} card_changed={changed_told} \
             refusals_audited={refusals}_in_{}_entries response_url_posts={response_urls}",
            granted.len(),
            100.0 * acked as f64 / deliveries as f64,
            ms(p99),
            ms(max),
            sending.as_secs_f64(),
            operator_told.len(),
            nobody_told.len(),
            approved_replies.len(),
            refused.len(),
        ),
        &failures,
    );
    drop(container);
    drop(proxy);
}
