//! Signals from the first moment, against the real parts: pending readings before the first
//! cycle, reasons worded for people, which containers are watched (real Docker), container
//! memory from cAdvisor through a private Prometheus when Docker is unreachable, measured or
//! estimated network latency, and the infrastructure and pending-approval routes.
//!
//! cAdvisor has no Debian package: [`CadvisorStandIn`] serves cAdvisor's metric names (as
//! cAdvisor writes them, labels included) over HTTP, and [`PrivatePrometheus`] is a real
//! Prometheus started for the test that scrapes it every second.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sentinel::domain::Risk;
use sentinel::runtime::ContainerSelector;
use serde_json::{json, Value};

use crate::containers::{docker, Container};
use crate::helpers::{
    free_port, spawn_app, spawn_app_with, Backend, KillOnDrop, MetricsServer, PrivatePrometheus,
    TestApp,
};

const PROMETHEUS: &str = "http://127.0.0.1:9090";
/// A Docker host where no daemon listens.
const DEAD_DOCKER: &str = "unix:///nonexistent/sentinel-test/docker.sock";
const SLACK_SECRET: &str = "signals-test-signing-secret-0123";

/// Every signal the default configuration watches, with the resource it is listed under
/// before any container is known.
const EXPECTED: [(&str, &str); 7] = [
    ("host_cpu", "host"),
    ("host_memory", "host"),
    ("disk", "/"),
    ("network_latency", "host"),
    ("container_down", "containers"),
    ("container_memory", "containers"),
    ("sandbox_size", "sandbox"),
];

async fn signals(app: &TestApp) -> Vec<Value> {
    let status = app.get("/api/status", None).await;
    assert_eq!(status.status, 200, "{status:?}");
    status.body["signals"].as_array().unwrap().clone()
}

fn find<'a>(signals: &'a [Value], signal: &str, resource: &str) -> Option<&'a Value> {
    signals
        .iter()
        .find(|s| s["signal"] == signal && s["resource"] == resource)
}

async fn open_incident(app: &TestApp, fingerprint: &str) -> Option<Value> {
    let open = app
        .get("/api/incidents?status=open", Some(&app.keys.viewer))
        .await;
    open.body
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["fingerprint"] == fingerprint)
        .cloned()
}

/// `/sentinel status` as a viewer, signed like Slack; the answer's JSON as text.
async fn slash_status(app: &TestApp) -> String {
    let body = "token=x&team_id=T1&channel_id=C1&user_id=UVIEWER9&command=%2Fsentinel\
                &text=status&trigger_id=1.2.3";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let signature = crate::slack_inbound::sign(SLACK_SECRET, &now, body.as_bytes());
    let response = app
        .client
        .post(format!("{}/slack/commands", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", now)
        .header("X-Slack-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    answer.to_string()
}

fn with_slack(settings: &mut sentinel::config::Settings) {
    settings.secrets.slack_signing_secret = Some(SecretString::from(SLACK_SECRET));
}

// ------------------------------------------------------------------ pending from the start

#[tokio::test]
async fn every_configured_signal_is_pending_before_its_first_reading() {
    let app = spawn_app_with(Backend::Embedded, with_slack).await;
    let listed = signals(&app).await;
    assert_eq!(listed.len(), EXPECTED.len(), "{listed:?}");
    for (signal, resource) in EXPECTED {
        let reading = find(&listed, signal, resource)
            .unwrap_or_else(|| panic!("{signal} on {resource} is not listed: {listed:?}"));
        assert_eq!(reading["state"], "pending", "{reading}");
        assert!(reading["value"].is_null(), "{reading}");
        assert!(reading["threshold"].is_number(), "{reading}");
        let reason = reading["reason"].as_str().unwrap();
        assert!(reason.contains("monitor cycle"), "{reading}");
    }
    assert_eq!(
        find(&listed, "network_latency", "host").unwrap()["source"],
        "estimate"
    );

    // The same on the page, in /sentinel status and in /api/infrastructure-status.
    let html = app.get_text("/").await;
    assert_eq!(
        html.matches("class=\"tile state-pending\"").count(),
        EXPECTED.len(),
        "one pending tile per signal"
    );
    assert!(html.contains("<div class=\"tile-reason\">no monitor cycle has run"));
    assert!(!html.contains("No readings yet"));
    let status = slash_status(&app).await;
    assert_eq!(
        status.matches(":hourglass_flowing_sand:").count(),
        EXPECTED.len(),
        "{status}"
    );
    assert!(status.contains("waiting for a first reading"), "{status}");
    let infrastructure = app.get("/api/infrastructure-status", None).await;
    assert_eq!(infrastructure.status, 200);
    assert_eq!(infrastructure.body["signals"], Value::Array(listed));
    assert!(infrastructure.body["last_cycle"].is_null());

    // A rate that needs a second local sample stays pending and says so; two cycles make
    // every signal a reading.
    app.tick_monitor().await;
    let first = signals(&app).await;
    for reading in first.iter().filter(|s| s["state"] == "pending") {
        assert!(
            reading["reason"]
                .as_str()
                .unwrap()
                .contains("second sample"),
            "{reading}"
        );
    }
    assert_ne!(
        find(&first, "host_memory", "host").unwrap()["state"],
        "pending"
    );
    app.tick_monitor().await;
    let second = signals(&app).await;
    let names: BTreeSet<&str> = second
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    for (signal, _) in EXPECTED {
        assert!(names.contains(signal), "{signal} missing after two cycles");
    }
    assert!(second.iter().all(|s| s["state"] != "pending"), "{second:?}");
    let infrastructure = app.get("/api/infrastructure-status", None).await;
    assert_eq!(infrastructure.body["last_cycle"]["leader"], true);
    assert!(infrastructure.body["last_cycle"]["duration_ms"].is_u64());
}

#[tokio::test]
async fn the_server_lists_every_signal_as_soon_as_healthz_answers() {
    let data = tempfile::tempdir().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("SENTINEL_DATA_DIR", data.path())
            .env("SENTINEL_SANDBOX_DIR", sandbox.path())
            .env("PROMETHEUS_URL", PROMETHEUS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let healthz = client.get(format!("{base}/healthz")).send().await;
        if healthz.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "/healthz never answered 200");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = client
        .get(format!("{base}/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    let status: Value = status.json().await.unwrap();
    let listed = status["signals"].as_array().unwrap();
    let names: BTreeSet<&str> = listed
        .iter()
        .map(|s| s["signal"].as_str().unwrap())
        .collect();
    for (signal, _) in EXPECTED {
        assert!(
            names.contains(signal),
            "{signal} not listed at once: {status}"
        );
    }
    let pending = listed.iter().filter(|s| s["state"] == "pending").count();
    println!(
        "{pending} of {} signals pending at the first 200",
        listed.len()
    );
    for reading in listed {
        if reading["state"] == "pending" {
            assert!(reading["value"].is_null(), "{reading}");
            assert!(!reading["reason"].as_str().unwrap().is_empty(), "{reading}");
        }
    }
}

// ------------------------------------------------------------------ which containers

fn inspect_state(name: &str) -> String {
    docker(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        name,
    ])
}

#[tokio::test]
async fn ignored_and_not_included_containers_open_nothing() {
    let ignored = Container::run(
        "sentinel-sig-ign",
        &["--label", "sentinel.ignore=true"],
        &["sleep", "3600"],
    );
    let outside = Container::run("sentinel-sig-out", &[], &["sleep", "3600"]);
    let included = Container::run("sentinel-sig-inc", &[], &["sleep", "3600"]);
    let everything = spawn_app().await;
    let only_included = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.container_include =
            vec![ContainerSelector::parse(&format!("name:{}", included.0)).unwrap()];
    })
    .await;
    for container in [&ignored, &outside, &included] {
        docker(&["stop", "-t", "1", &container.0]);
        let state = inspect_state(&container.0);
        assert!(
            state.starts_with("exited ") && !state.ends_with(" 0"),
            "{state}"
        );
    }
    for _ in 0..3 {
        everything.tick_monitor().await;
        only_included.tick_monitor().await;
    }
    let down = |c: &Container| format!("container_down:{}", c.0);

    // Default configuration: every container but the one labelled sentinel.ignore=true.
    assert!(open_incident(&everything, &down(&outside)).await.is_some());
    assert!(open_incident(&everything, &down(&included)).await.is_some());
    assert!(open_incident(&everything, &down(&ignored)).await.is_none());
    let listed = signals(&everything).await;
    assert!(
        !listed.iter().any(|s| s["resource"] == ignored.0.as_str()),
        "an ignored container is not even listed"
    );
    let stopped = find(&listed, "container_down", &outside.0).unwrap();
    assert_eq!(stopped["state"], "breached");
    assert!(
        stopped["reason"]
            .as_str()
            .unwrap()
            .starts_with("exited with code"),
        "{stopped}"
    );

    // container_include = ["name:<included>"]: the others open nothing and are in nobody's
    // inventory (no fix can target them).
    assert!(open_incident(&only_included, &down(&included))
        .await
        .is_some());
    assert!(open_incident(&only_included, &down(&outside))
        .await
        .is_none());
    assert!(open_incident(&only_included, &down(&ignored))
        .await
        .is_none());
    let inventory: Vec<String> = only_included
        .sentinel
        .pipeline()
        .collectors
        .containers()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(inventory, vec![included.0.clone()]);
    let listed = signals(&only_included).await;
    let unwatched_note = find(&listed, "container_memory", "containers")
        .map(|s| s["reason"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    println!("container_memory note with nothing running: {unwatched_note:?}");
    assert!(
        unwatched_note.contains("not watched"),
        "the note counts the unwatched containers: {listed:?}"
    );
}

// ------------------------------------------------------------------ cAdvisor without Docker

/// Serves cAdvisor's metrics for three containers: `web` at 75 % of its 64 MB limit, `noisy`
/// (labelled sentinel.ignore=true) at 90 %, and `nolimit` without a limit.
struct CadvisorStandIn {
    port: u16,
    names: [String; 3],
    _server: MetricsServer,
}

impl CadvisorStandIn {
    async fn start() -> Self {
        let id = sentinel::domain::IncidentId::generate();
        let suffix = &id.as_str()[4..];
        let names = [
            format!("cad-web-{suffix}"),
            format!("cad-noisy-{suffix}"),
            format!("cad-nolimit-{suffix}"),
        ];
        let [web, noisy, nolimit] = names.clone();
        let body = format!(
            "# HELP container_memory_working_set_bytes Current working set in bytes.\n\
             # TYPE container_memory_working_set_bytes gauge\n\
             container_memory_working_set_bytes{{container_label_team=\"web\",id=\"/docker/aaa\",image=\"busybox\",name=\"{web}\"}} 50331648\n\
             container_memory_working_set_bytes{{container_label_sentinel_ignore=\"true\",id=\"/docker/bbb\",image=\"busybox\",name=\"{noisy}\"}} 60397977\n\
             container_memory_working_set_bytes{{id=\"/docker/ccc\",image=\"busybox\",name=\"{nolimit}\"}} 1048576\n\
             container_memory_working_set_bytes{{id=\"/\",image=\"\",name=\"\"}} 999999999\n\
             # HELP container_memory_usage_bytes Current memory usage in bytes.\n\
             # TYPE container_memory_usage_bytes gauge\n\
             container_memory_usage_bytes{{container_label_team=\"web\",id=\"/docker/aaa\",image=\"busybox\",name=\"{web}\"}} 52428800\n\
             container_memory_usage_bytes{{container_label_sentinel_ignore=\"true\",id=\"/docker/bbb\",image=\"busybox\",name=\"{noisy}\"}} 62914560\n\
             container_memory_usage_bytes{{id=\"/docker/ccc\",image=\"busybox\",name=\"{nolimit}\"}} 1048576\n\
             # HELP container_spec_memory_limit_bytes Memory limit for the container.\n\
             # TYPE container_spec_memory_limit_bytes gauge\n\
             container_spec_memory_limit_bytes{{container_label_team=\"web\",id=\"/docker/aaa\",image=\"busybox\",name=\"{web}\"}} 67108864\n\
             container_spec_memory_limit_bytes{{container_label_sentinel_ignore=\"true\",id=\"/docker/bbb\",image=\"busybox\",name=\"{noisy}\"}} 67108864\n\
             container_spec_memory_limit_bytes{{id=\"/docker/ccc\",image=\"busybox\",name=\"{nolimit}\"}} 0\n"
        );
        let server = MetricsServer::serve(body).await;
        CadvisorStandIn {
            port: server.port,
            names,
            _server: server,
        }
    }
}

#[tokio::test]
async fn without_docker_container_memory_comes_from_cadvisor() {
    let cadvisor = CadvisorStandIn::start().await;
    let prometheus = PrivatePrometheus::scraping(
        "cadvisor",
        cadvisor.port,
        "container_spec_memory_limit_bytes",
        3,
    )
    .await;
    let [web, noisy, nolimit] = &cadvisor.names;
    let app = spawn_app_with(Backend::Embedded, |s| {
        // What DOCKER_HOST sets (the binary's case is checked below).
        s.monitor.docker_host = DEAD_DOCKER.to_owned();
        s.monitor.prometheus_url = prometheus.url.clone();
    })
    .await;
    app.tick_monitor().await;
    let listed = signals(&app).await;
    let memory = find(&listed, "container_memory", web)
        .unwrap_or_else(|| panic!("no cAdvisor reading for {web}: {listed:?}"));
    assert_eq!(memory["source"], "cadvisor", "{memory}");
    assert_eq!(memory["value"], 75.0, "48 MiB of 64 MiB");
    assert_eq!(memory["state"], "breached");
    assert!(
        find(&listed, "container_memory", noisy).is_none(),
        "sentinel.ignore=true holds through cAdvisor's container_label_sentinel_ignore"
    );
    assert!(
        find(&listed, "container_memory", nolimit).is_none(),
        "no limit, no percentage"
    );
    let down = find(&listed, "container_down", "containers").unwrap();
    assert_eq!(down["state"], "unavailable");
    assert_eq!(
        down["reason"],
        "Docker: no socket at /nonexistent/sentinel-test/docker.sock"
    );
    // The private Prometheus has no node-exporter: the host is read locally, and says why.
    let host_memory = find(&listed, "host_memory", "host").unwrap();
    assert_eq!(host_memory["source"], "local");
    assert!(
        host_memory["reason"]
            .as_str()
            .unwrap()
            .contains("Prometheus has no node-exporter data"),
        "{host_memory}"
    );

    app.tick_monitor().await;
    let incident = open_incident(&app, &format!("container_memory:{web}"))
        .await
        .expect("container_memory opened from cAdvisor");
    assert_eq!(incident["source"], "cadvisor");
    assert_eq!(incident["severity"], "warning");
    assert!(open_incident(&app, &format!("container_memory:{noisy}"))
        .await
        .is_none());

    // The binary, with DOCKER_HOST pointing to a dead socket.
    let sandbox = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["check", "--json"])
        .env_clear()
        .env("DOCKER_HOST", DEAD_DOCKER)
        .env("PROMETHEUS_URL", &prometheus.url)
        .env("SENTINEL_SANDBOX_DIR", sandbox.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let readings: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let memory = find(&readings, "container_memory", web).expect("a cAdvisor reading");
    assert_eq!(memory["source"], "cadvisor");
    assert_eq!(memory["value"], 75.0);
}

#[tokio::test]
async fn unavailable_signals_say_why_in_words() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.docker_host = DEAD_DOCKER.to_owned();
        with_slack(s);
    })
    .await;
    std::fs::remove_dir_all(&app.sandbox).unwrap();
    app.tick_monitor().await;
    let listed = signals(&app).await;
    let sandbox = find(&listed, "sandbox_size", "sandbox").unwrap();
    assert_eq!(sandbox["state"], "unavailable");
    assert_eq!(sandbox["reason"], "sandbox directory missing");
    for signal in ["container_down", "container_memory"] {
        let reading = find(&listed, signal, "containers").unwrap();
        assert_eq!(reading["state"], "unavailable");
        assert_eq!(
            reading["reason"],
            "Docker: no socket at /nonexistent/sentinel-test/docker.sock"
        );
    }
    let html = app.get_text("/").await;
    assert!(html.contains("<div class=\"tile-reason\">sandbox directory missing</div>"));
    assert!(
        html.contains("Docker: no socket at &#x2f;nonexistent"),
        "escaped"
    );
    let status = slash_status(&app).await;
    assert!(status.contains("sandbox directory missing"), "{status}");
    assert!(status.contains("Docker: no socket at"), "{status}");
    for text in [&html, &status] {
        for internal in [
            "Unreachable",
            "IOError",
            "os error",
            "hyper",
            "client error",
        ] {
            assert!(!text.contains(internal), "{internal} leaked: {text}");
        }
    }

    // A Docker that refuses connections: a socket file nobody accepts on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let refused = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.docker_host = format!("unix://{}", socket.display());
    })
    .await;
    refused.tick_monitor().await;
    let listed = signals(&refused).await;
    assert_eq!(
        find(&listed, "container_down", "containers").unwrap()["reason"],
        "Docker: connection refused"
    );
}

// ------------------------------------------------------------------ network latency

#[tokio::test]
async fn network_latency_is_an_estimate_unless_a_query_measures_it() {
    let estimated = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = PROMETHEUS.to_owned();
        with_slack(s);
    })
    .await;
    estimated.tick_monitor().await;
    let listed = signals(&estimated).await;
    let latency = find(&listed, "network_latency", "host").unwrap();
    assert_eq!(latency["source"], "estimate", "{latency}");
    assert!(latency["value"].as_f64().unwrap() >= 25.0, "{latency}");
    let inputs = latency["reason"].as_str().unwrap();
    assert!(
        inputs.starts_with("from ") && inputs.ends_with(" errors/s of traffic"),
        "{latency}"
    );
    let html = estimated.get_text("/").await;
    let start = html.find("data-signal=\"network_latency\"").unwrap();
    let tile = &html[start..start + html[start..].find("</li>").unwrap()];
    assert!(tile.contains("≈ "), "{tile}");
    assert!(tile.contains("estimated from traffic"), "{tile}");
    let status = slash_status(&estimated).await;
    assert!(
        status.contains("network latency `host` ≈ ") && status.contains("estimated from traffic"),
        "{status}"
    );

    // A Prometheus query in milliseconds over node-exporter data: the scrape's duration.
    let measured = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = PROMETHEUS.to_owned();
        s.prometheus.network_latency = r#"1000 * scrape_duration_seconds{job="node"}"#.to_owned();
    })
    .await;
    measured.tick_monitor().await;
    let listed = signals(&measured).await;
    let latency = find(&listed, "network_latency", "host").unwrap();
    assert_eq!(latency["source"], "prometheus", "{latency}");
    let ms = latency["value"].as_f64().unwrap();
    assert!(ms > 0.0 && ms < 5000.0, "{latency}");
    assert!(latency.get("reason").is_none(), "{latency}");
    println!("network_latency measured: {ms} ms");

    // A query without data is unavailable, saying so, not silently an estimate.
    let empty = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = PROMETHEUS.to_owned();
        s.prometheus.network_latency = r#"1000 * probe_duration_seconds{job="absent"}"#.to_owned();
    })
    .await;
    empty.tick_monitor().await;
    let listed = signals(&empty).await;
    let latency = find(&listed, "network_latency", "host").unwrap();
    assert_eq!(latency["state"], "unavailable");
    assert_eq!(latency["source"], "prometheus");
    assert_eq!(
        latency["reason"],
        "the [prometheus] network_latency query has no data"
    );
}

#[tokio::test]
async fn an_estimated_latency_incident_says_it_is_an_estimate() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = PROMETHEUS.to_owned();
        // The estimate is at least 25 ms: a 1 ms threshold breaches on every cycle.
        s.thresholds.network_latency.warning = Some(1.0);
        s.actions.enabled = true;
    })
    .await;
    app.tick_monitor().await;
    app.tick_monitor().await;
    let opened = open_incident(&app, "network_latency:host")
        .await
        .expect("network_latency opened");
    assert_eq!(opened["source"], "estimate");
    let id = opened["id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(15);
    let incident = loop {
        let incident = app
            .get(&format!("/api/incidents/{id}"), Some(&app.keys.viewer))
            .await
            .body;
        if incident["root_cause"].is_string() {
            break incident;
        }
        assert!(Instant::now() < deadline, "never analyzed: {incident}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cause = incident["root_cause"].as_str().unwrap();
    assert!(cause.contains("estimated at"), "{cause}");
    assert!(cause.contains("MB/s of traffic"), "{cause}");
    assert!(!cause.contains('?'), "{cause}");
    let html = app.get_text("/").await;
    assert!(
        html.contains("estimated from traffic (threshold 1 ms)"),
        "the page"
    );
    let card = sentinel::slack::blocks::render(
        "incident_card",
        &json!({"incident": incident, "public_url": ""}),
    )
    .unwrap();
    let card = serde_json::to_string(&card.blocks).unwrap();
    assert!(card.contains("estimated from traffic"), "{card}");
}

// ------------------------------------------------------------------ pending approvals

#[tokio::test]
async fn pending_approvals_list_what_waits_for_whom_until_when() {
    let app = spawn_app().await;
    let empty = app
        .get("/api/approvals/pending", Some(&app.keys.viewer))
        .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body, json!([]));

    let medium = app.trigger("memory").await;
    let medium = app.await_approval(&medium.id, Risk::Medium).await;
    let high = app.trigger("cpu").await;
    let high = app.await_approval(&high.id, Risk::High).await;
    let not_waiting = app.trigger("disk").await;

    let listed = app
        .get("/api/approvals/pending", Some(&app.keys.viewer))
        .await;
    assert_eq!(listed.status, 200);
    let listed = listed.body.as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(!listed
        .iter()
        .any(|p| p["incident"] == not_waiting.id.as_str()));
    let entry = |id: &str| {
        listed
            .iter()
            .find(|p| p["incident"] == id)
            .cloned()
            .unwrap()
    };
    let timeout_ms = app.sentinel.settings().approval_timeout.0.as_millis() as i64;
    for (incident, role) in [(&medium, "operator"), (&high, "admin")] {
        let pending = entry(incident.id.as_str());
        assert_eq!(pending["role_needed"], role, "{pending}");
        assert_eq!(pending["risk"], incident.risk.unwrap().as_str());
        assert_eq!(pending["action"], "container_restart");
        assert_eq!(pending["params"]["container"], "web-1");
        assert_eq!(
            pending["proposal_id"].as_str(),
            incident.proposal_id.as_deref()
        );
        assert!(pending["proposal_id"].is_string(), "{pending}");
        let at = |key: &str| {
            sentinel::domain::Timestamp::parse_rfc3339(pending[key].as_str().unwrap())
                .unwrap()
                .unix_millis()
        };
        assert_eq!(at("expires_at") - at("waiting_since"), timeout_ms);
    }

    // What the list says is what an approval needs: the proposal it names is current.
    let approve = app
        .post(
            &format!("/api/incidents/{}/approve", medium.id),
            Some(&app.keys.operator),
            &json!({"proposal_id": entry(medium.id.as_str())["proposal_id"]}).to_string(),
        )
        .await;
    assert_eq!(approve.status, 200, "{approve:?}");
    let after = app
        .get("/api/approvals/pending", Some(&app.keys.viewer))
        .await;
    assert_eq!(after.body.as_array().unwrap().len(), 1);
    assert_eq!(
        app.get("/api/approvals/pending", None).await.status,
        401,
        "viewer and up"
    );
}
