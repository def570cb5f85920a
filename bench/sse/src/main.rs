//! How fast an incident change reaches every open status page: N clients hold
//! `GET /api/stream` open; each round POSTs `/api/trigger-alert` and measures, per client, the
//! time from sending the trigger to that client receiving the `incident` event for the id (and
//! a version at least the one) the trigger answered with. Prints per round the clients reached
//! and the first, median, p99 and last arrival in milliseconds; exits 1 when any client missed
//! the event within 10 s, got `resync` (it lagged behind the server's backlog) or lost its
//! stream. Run by bench/sse.sh:
//!
//!   sentinel-sse-bench BASE_URL ADMIN_KEY [clients=500] [rounds=5]
//!
//! Each client is a task reading its own HTTP/1.1 connection and stamping every event with
//! `Instant::now()` as the bytes arrive, so the times include this process's scheduling on
//! the same machine as the server. Rounds cycle the scenarios memory, cpu, disk, latency,
//! container, sandbox; once a scenario's incident is open, its next trigger updates it (200)
//! and the update is the event waited for.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

const SCENARIOS: [&str; 6] = ["memory", "cpu", "disk", "latency", "container", "sandbox"];
/// How long every client has to receive a round's event.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long all clients have to connect and receive `hello`.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// Quiet time before each round, so no earlier change is still on its way.
const QUIET: Duration = Duration::from_millis(1000);

/// What a client task reports.
enum Report {
    Hello {
        client: usize,
        at: Instant,
    },
    Incident {
        client: usize,
        id: String,
        version: u64,
        at: Instant,
    },
    Resync {
        client: usize,
    },
    Ended {
        client: usize,
        why: String,
    },
}

fn usage() -> ExitCode {
    eprintln!("usage: sentinel-sse-bench BASE_URL ADMIN_KEY [clients=500] [rounds=5]");
    ExitCode::from(2)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 || args.len() > 4 {
        return usage();
    }
    let base = args[0].trim_end_matches('/').to_owned();
    let key = args[1].clone();
    let Ok(clients) = args.get(2).map_or(Ok(500), |s| s.parse::<usize>()) else {
        return usage();
    };
    let Ok(rounds) = args.get(3).map_or(Ok(5), |s| s.parse::<usize>()) else {
        return usage();
    };
    if clients == 0 {
        return usage();
    }
    match run(&base, &key, clients, rounds).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(base: &str, key: &str, clients: usize, rounds: usize) -> Result<(), String> {
    // Loopback only: never through a proxy from the environment.
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("http client: {e}"))?;

    // 1. Connect every client and wait for all the `hello`s.
    let (reports, mut inbox) = mpsc::unbounded_channel();
    let started = Instant::now();
    for client in 0..clients {
        tokio::spawn(listen(
            http.clone(),
            format!("{base}/api/stream"),
            client,
            reports.clone(),
        ));
    }
    drop(reports);
    let mut hello = vec![None; clients];
    let mut connected = 0;
    while connected < clients {
        let report = tokio::time::timeout_at((started + CONNECT_DEADLINE).into(), inbox.recv())
            .await
            .map_err(|_| {
                format!(
                    "only {connected} of {clients} clients got `hello` within {CONNECT_DEADLINE:?}"
                )
            })?
            .ok_or("every client task ended")?;
        match report {
            Report::Hello { client, at } => {
                if hello[client].replace(at).is_none() {
                    connected += 1;
                }
            }
            Report::Ended { client, why } => {
                return Err(format!("client {client} ended before `hello`: {why}"))
            }
            Report::Incident { .. } | Report::Resync { .. } => {}
        }
    }
    let last_hello = hello.iter().flatten().max().copied().unwrap_or(started);
    println!(
        "connected: {clients} clients got `hello` in {:.1} ms",
        ms(last_hello - started)
    );
    match server_clients(&http, base).await {
        Some(n) => println!("server: sentinel_sse_clients {n}"),
        None => println!("server: sentinel_sse_clients not found in /metrics"),
    }

    // 2. The rounds.
    let mut failures = Vec::new();
    let mut lasts = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(QUIET).await;
        // Whatever arrived while quiet belongs to no round.
        while let Ok(report) = inbox.try_recv() {
            check_alive(&report)?;
        }
        let scenario = SCENARIOS[(round - 1) % SCENARIOS.len()];
        let t0 = Instant::now();
        let response = http
            .post(format!("{base}/api/trigger-alert"))
            .header("x-api-key", key)
            .json(&serde_json::json!({ "scenario": scenario }))
            .send()
            .await
            .map_err(|e| format!("round {round}: trigger-alert: {e}"))?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("round {round}: trigger-alert answered {status}: {e}"))?;
        let answered = t0.elapsed();
        if !status.is_success() {
            return Err(format!(
                "round {round}: trigger-alert answered {status}: {body}"
            ));
        }
        let id = body["id"]
            .as_str()
            .ok_or_else(|| format!("round {round}: no id in {body}"))?
            .to_owned();
        let version = body["version"].as_u64().unwrap_or(0);

        let mut arrived: Vec<Option<Duration>> = vec![None; clients];
        let mut reached = 0;
        let mut resynced = 0;
        let deadline = t0 + DEADLINE;
        while reached < clients {
            let Ok(report) = tokio::time::timeout_at(deadline.into(), inbox.recv()).await else {
                break;
            };
            match report.ok_or("every client task ended")? {
                Report::Incident {
                    client,
                    id: got,
                    version: v,
                    at,
                } if got == id && v >= version && at >= t0 => {
                    if arrived[client].is_none() {
                        arrived[client] = Some(at - t0);
                        reached += 1;
                    }
                }
                Report::Resync { client } => {
                    resynced += 1;
                    eprintln!("round {round}: client {client} got `resync` (it lagged)");
                }
                Report::Ended { client, why } => {
                    return Err(format!(
                        "round {round}: client {client} lost its stream: {why}"
                    ))
                }
                Report::Incident { .. } | Report::Hello { .. } => {}
            }
        }
        let mut times: Vec<Duration> = arrived.iter().flatten().copied().collect();
        times.sort();
        let pick = |q: f64| times.get(rank(times.len(), q)).map_or(f64::NAN, |d| ms(*d));
        println!(
            "round {round} ({scenario:9} {} {id} v{version}): reached {reached}/{clients}, \
             trigger answered {:.2} ms, first {:.2} ms, median {:.2} ms, p99 {:.2} ms, last {:.2} ms",
            status.as_u16(),
            ms(answered),
            pick(0.0),
            pick(0.5),
            pick(0.99),
            pick(1.0),
        );
        if let Some(last) = times.last() {
            lasts.push(*last);
        }
        if reached < clients || resynced > 0 {
            failures.push(format!(
                "round {round}: {} of {clients} clients missed incident {id} within {DEADLINE:?} \
                 ({resynced} got resync)",
                clients - reached
            ));
        }
    }
    if !lasts.is_empty() {
        lasts.sort();
        println!(
            "all rounds: last client reached after {:.2} ms at best, {:.2} ms at worst",
            ms(lasts[0]),
            ms(lasts[lasts.len() - 1])
        );
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// A stream that ended or lagged between rounds is a failure too.
fn check_alive(report: &Report) -> Result<(), String> {
    match report {
        Report::Ended { client, why } => Err(format!("client {client} lost its stream: {why}")),
        Report::Resync { client } => Err(format!("client {client} got `resync` between rounds")),
        Report::Hello { .. } | Report::Incident { .. } => Ok(()),
    }
}

/// Nearest-rank index of quantile `q` in `n` sorted values (0 for the first, 1 for the last).
fn rank(n: usize, q: f64) -> usize {
    ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `sentinel_sse_clients` from the server's `/metrics`.
async fn server_clients(http: &reqwest::Client, base: &str) -> Option<String> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|line| line.starts_with("sentinel_sse_clients "))
        .map(|line| line["sentinel_sse_clients ".len()..].to_owned())
}

/// One client: holds the stream open, parses events and reports them, stamped on arrival.
async fn listen(
    http: reqwest::Client,
    url: String,
    client: usize,
    reports: mpsc::UnboundedSender<Report>,
) {
    let end = |why: String| {
        let _ = reports.send(Report::Ended { client, why });
    };
    let mut response = match http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => response,
        Ok(response) => return end(format!("GET /api/stream answered {}", response.status())),
        Err(e) => return end(format!("GET /api/stream: {e}")),
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return end("the server closed the stream".to_owned()),
            Err(e) => return end(format!("reading the stream: {e}")),
        };
        let at = Instant::now();
        buffer.extend_from_slice(&chunk);
        // Events end with a blank line.
        while let Some(end_at) = buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buffer.drain(..end_at + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let (mut kind, mut data) = ("message", String::new());
            for line in block.lines() {
                if let Some(value) = field(line, "event") {
                    kind = match value {
                        "hello" => "hello",
                        "incident" => "incident",
                        "resync" => "resync",
                        _ => "other",
                    };
                } else if let Some(value) = field(line, "data") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
            }
            let report = match kind {
                "hello" => Report::Hello { client, at },
                "resync" => Report::Resync { client },
                "incident" => {
                    let Ok(json) = serde_json::from_str::<serde_json::Value>(&data) else {
                        return end(format!("an incident event that is not JSON: {data}"));
                    };
                    Report::Incident {
                        client,
                        id: json["id"].as_str().unwrap_or_default().to_owned(),
                        version: json["version"].as_u64().unwrap_or(0),
                        at,
                    }
                }
                _ => continue,
            };
            if reports.send(report).is_err() {
                return;
            }
        }
    }
}

/// The value of an SSE field line `name: value` (one optional space after the colon).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.strip_prefix(' ').unwrap_or(rest))
}
