//! Slow-header connections (a header line now and then, never the end of the head) and
//! half-open ones (connected, silent) held against a replica while legitimate signed Slack
//! events keep arriving: those are acknowledged, p99 under a second.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::cluster::{
    ms, now_secs, quantile, slack_post, spreading_client, ClusterConfig, PrivateRedis, APP_ID,
};
use super::{report, size};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_legitimate_acks_stay_fast_under_slow_header_and_half_open_connections() {
    let slow = size(30, 300);
    let half_open = size(100, 1_100);
    let legit = size(50, 300);
    let redis = PrivateRedis::start();
    let cluster = ClusterConfig::new(&redis.url(), None, false, "");
    let replica = cluster.replica("r0").await;
    let addr = replica.addr();

    let mut hogs = Vec::new();
    for _ in 0..half_open {
        hogs.push(TcpStream::connect(addr).await.expect("the kernel accepts"));
    }
    let mut trickling = Vec::new();
    for i in 0..slow {
        let mut stream = TcpStream::connect(addr).await.expect("the kernel accepts");
        trickling.push(tokio::spawn(async move {
            if stream
                .write_all(b"POST /slack/events HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                return 0;
            }
            let mut lines = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500 + (i % 7) as u64 * 100)).await;
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return lines;
                }
                lines += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let client = spreading_client();
    let base = replica.base();
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut acked = 0;
    let mut i = 0;
    while i < legit {
        let wave = (i..(i + 5).min(legit)).map(|n| {
            let body = json!({
                "type": "event_callback",
                "api_app_id": APP_ID,
                "team_id": "T1",
                "event_id": format!("Ev0CONN{n}"),
                "event_time": now_secs(),
                "event": {"type": "reaction_added", "user": "U1", "event_ts": "1.1"},
            })
            .to_string();
            let (client, base) = (&client, &base);
            async move {
                slack_post(
                    client,
                    base,
                    "/slack/events",
                    "application/json",
                    &body,
                    now_secs(),
                    &[],
                )
                .await
            }
        });
        for (status, took) in futures::future::join_all(wave).await {
            if status == 200 {
                acked += 1;
            }
            latencies.push(took);
        }
        i += 5;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = started.elapsed();
    // How many hogs the replica still held open at the end (a closed one reads EOF).
    let mut still_open = 0;
    for stream in &hogs {
        let mut buf = [0u8; 1];
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => still_open += 1,
            _ => {}
        }
    }
    for task in &trickling {
        task.abort();
    }
    drop(hogs);

    let p99 = quantile(&mut latencies, 0.99);
    let max = quantile(&mut latencies, 1.0);
    let mut failures = Vec::new();
    if acked != legit {
        failures.push(format!("{acked} of {legit} legitimate events acknowledged"));
    }
    if p99 >= Duration::from_secs(1) {
        failures.push(format!("legitimate ack p99 {} ≥ 1s", ms(p99)));
    }
    if !replica.alive() {
        failures.push(format!("the replica died: {}", replica.log_tail(20)));
    }
    report(
        "slow_and_half_open",
        &format!(
            "slow_header={slow} half_open={half_open} half_open_still_held={still_open} \
             legit={legit} acked={acked} ack_p99={} ack_max={} over={:.1}s",
            ms(p99),
            ms(max),
            during.as_secs_f64()
        ),
        &failures,
    );
}
