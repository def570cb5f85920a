//! One Events API `event_id` delivered many times across three replicas (first deliveries,
//! Slack's retries with `X-Slack-Retry-Num`, copies re-signed at other timestamps, bursts
//! sent within a millisecond) is one effect: one silence, one `SilenceCreated` in the audit,
//! one reply in the thread; every delivery is acknowledged, fast.

use std::time::{Duration, Instant};

use serde_json::json;

use super::cluster::{
    api, ms, now_secs, quantile, slack_post, spreading_client, ClusterConfig, PrivateRedis, Proxy,
    APP_ID, OPERATOR,
};
use super::{report, size};
use crate::slack_double::SlackDouble;

/// Deliveries sent at once (one burst).
const BURST: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_one_event_id_delivered_many_times_across_replicas_is_one_effect() {
    let deliveries = size(200, 10_000);
    let redis = PrivateRedis::start();
    let slack = SlackDouble::start().await;
    let cluster = ClusterConfig::new(&redis.url(), Some(slack.api_url()), false, "");
    let replicas = cluster.replicas(3).await;
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();

    let target = format!("chaos-dedup-{}", now_secs());
    let event_ts = "1700000000.000300";
    let body = json!({
        "token": "deprecated",
        "team_id": "T1",
        "api_app_id": APP_ID,
        "type": "event_callback",
        "event_id": "Ev0CHAOSDEDUP",
        "event_time": now_secs(),
        "event": {
            "type": "app_mention",
            "user": OPERATOR,
            "text": format!("<@U0SENTINEL> silence {target} 1h chaos"),
            "ts": event_ts,
            "channel": "CCHAOS",
            "event_ts": event_ts,
        },
    })
    .to_string();

    let started = Instant::now();
    let mut latencies = Vec::with_capacity(deliveries);
    let mut acked = 0;
    let mut statuses = std::collections::BTreeMap::new();
    let mut sent = 0;
    while sent < deliveries {
        let burst = BURST.min(deliveries - sent);
        let sends = (sent..sent + burst).map(|i| {
            let (client, base, body) = (&client, proxy.base(), &body);
            async move {
                // A third each: first deliveries, retries, copies re-signed earlier.
                let (timestamp, extra) = match i % 3 {
                    0 => (now_secs(), vec![]),
                    1 => (
                        now_secs(),
                        vec![
                            ("x-slack-retry-num", (1 + i % 3).to_string()),
                            ("x-slack-retry-reason", "http_timeout".to_owned()),
                        ],
                    ),
                    _ => (now_secs() - (i % 240) as i64, vec![]),
                };
                slack_post(
                    client,
                    &base,
                    "/slack/events",
                    "application/json",
                    body,
                    timestamp,
                    &extra,
                )
                .await
            }
        });
        for (status, took) in futures::future::join_all(sends).await {
            *statuses.entry(status).or_insert(0) += 1;
            if status == 200 {
                acked += 1;
            }
            latencies.push(took);
        }
        sent += burst;
    }
    let sending = started.elapsed();

    // Let every replica's background work finish, then count at the boundary.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut silences = 0;
    let mut created = 0;
    for replica in &replicas {
        let (status, list) = api(
            &client,
            &replica.base(),
            &cluster.admin_key,
            reqwest::Method::GET,
            "/api/silences",
        )
        .await;
        assert_eq!(status, 200, "GET /api/silences on {}: {list}", replica.name);
        silences = silences.max(list.as_array().map_or(0, |a| {
            a.iter().filter(|s| s.to_string().contains(&target)).count()
        }));
    }
    let (status, audit) = api(
        &client,
        &proxy.base(),
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/audit?limit=1000",
    )
    .await;
    assert_eq!(status, 200, "GET /api/audit: {audit}");
    if let Some(entries) = audit["entries"].as_array() {
        created = entries
            .iter()
            .filter(|e| e["event"] == "SilenceCreated")
            .count();
    }
    let replies = slack
        .calls_to("chat.postMessage")
        .iter()
        .filter(|c| c.thread_ts() == Some(event_ts))
        .count();
    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);

    let mut failures = Vec::new();
    if silences != 1 || created != 1 || replies != 1 {
        failures.push(format!(
            "expected exactly 1 effect; silences={silences} SilenceCreated={created} \
             thread replies={replies}"
        ));
    }
    if acked != deliveries {
        failures.push(format!(
            "{acked} of {deliveries} deliveries acknowledged; statuses {statuses:?}"
        ));
    }
    if p99 > Duration::from_millis(300) {
        failures.push(format!("ack p99 {} > 300ms", ms(p99)));
    }
    if audit["chain"]["verified"] != true {
        failures.push(format!(
            "the audit chain does not verify: {}",
            audit["chain"]
        ));
    }
    report(
        "event_id_dedup",
        &format!(
            "deliveries={deliveries} replicas=3 effects={silences} silence_created={created} \
             thread_replies={replies} acked={:.1}% ack_p99={} ack_max={} sent_in={:.1}s",
            100.0 * acked as f64 / deliveries as f64,
            ms(p99),
            ms(max),
            sending.as_secs_f64()
        ),
        &failures,
    );
    drop(proxy);
}
