//! The monitor loop against real parts: Prometheus with node-exporter, the Docker daemon with
//! containers from the local busybox image, and a real sandbox directory.

use std::process::Command;
use std::time::Duration;

use sentinel::domain::Status;
use serde_json::Value;

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, TestApp};

const PROMETHEUS: &str = "http://127.0.0.1:9090";

async fn status(app: &TestApp) -> Value {
    app.get("/api/status", None).await.body
}

fn readings<'a>(status: &'a Value, signal: &str) -> Vec<&'a Value> {
    status["signals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["signal"] == signal)
        .collect()
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

fn ensure_prometheus() {
    let up = Command::new("curl")
        .args(["-sf", "--max-time", "3", &format!("{PROMETHEUS}/-/ready")])
        .output();
    assert!(
        up.is_ok_and(|o| o.status.success()),
        "Prometheus does not answer at {PROMETHEUS}: run `scripts/services.sh start` \
         (Debian packages prometheus and prometheus-node-exporter)"
    );
}

#[tokio::test]
async fn status_shows_every_signal_with_value_threshold_state_and_source() {
    ensure_prometheus();
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = PROMETHEUS.to_owned();
    })
    .await;
    let report = app.tick_monitor().await;
    assert!(report.leader);
    let status = status(&app).await;
    for signal in [
        "host_cpu",
        "host_memory",
        "disk",
        "network_latency",
        "sandbox_size",
    ] {
        let found = readings(&status, signal);
        assert!(!found.is_empty(), "no {signal} reading in {status}");
        for reading in found {
            for key in [
                "signal",
                "resource",
                "value",
                "threshold",
                "state",
                "source",
            ] {
                assert!(reading.get(key).is_some(), "{reading} lacks {key}");
            }
            let state = reading["state"].as_str().unwrap();
            assert!(
                ["ok", "breached", "unavailable"].contains(&state),
                "{reading}"
            );
        }
    }
    let memory = readings(&status, "host_memory")[0];
    assert_eq!(memory["source"], "prometheus", "{memory}");
    assert_eq!(memory["threshold"], 60.0);
    let value = memory["value"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&value));
    assert_eq!(readings(&status, "disk")[0]["resource"], "/");
    assert_eq!(readings(&status, "sandbox_size")[0]["source"], "sandbox");
    assert!(status["monitor"]["outcome"].as_str().is_some());
    assert!(status["monitor"]["duration_ms"].as_u64().is_some());
}

#[tokio::test]
async fn host_signals_fall_back_to_the_local_host_when_prometheus_is_absent_or_down() {
    let absent = spawn_app_with(Backend::Embedded, |_| {}).await;
    absent.tick_monitor().await;
    let status_absent = status(&absent).await;
    assert_eq!(
        readings(&status_absent, "host_memory")[0]["source"],
        "local"
    );

    // A port where nothing listens.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.prometheus_url = format!("http://127.0.0.1:{dead_port}");
    })
    .await;
    down.tick_monitor().await;
    let status_down = status(&down).await;
    let memory = readings(&status_down, "host_memory")[0];
    assert_eq!(memory["source"], "local", "{memory}");
    assert!(memory["value"].as_f64().is_some());
}

#[tokio::test]
async fn a_stopped_container_opens_container_down_within_two_cycles_and_recovers() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let container = Container::run("sentinel-mon", &[], &["sleep", "3600"]);
    let fingerprint = format!("container_down:{}", container.0);
    app.tick_monitor().await;
    assert!(open_incident(&app, &fingerprint).await.is_none());

    docker(&["stop", "-t", "1", &container.0]);
    app.tick_monitor().await;
    assert!(
        open_incident(&app, &fingerprint).await.is_none(),
        "one sample must not open an incident (for = 2)"
    );
    app.tick_monitor().await;
    let incident = open_incident(&app, &fingerprint)
        .await
        .expect("container_down opened on the second cycle");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["source"], "docker");
    assert!(
        incident["summary"].as_str().unwrap().contains("exited"),
        "{incident}"
    );

    // Repeats update the same incident.
    app.tick_monitor().await;
    let again = open_incident(&app, &fingerprint).await.unwrap();
    assert_eq!(again["id"], incident["id"]);
    assert_eq!(again["occurrences"], 2);

    docker(&["start", &container.0]);
    app.tick_monitor().await;
    assert!(
        open_incident(&app, &fingerprint).await.is_some(),
        "clear_for = 2"
    );
    app.tick_monitor().await;
    assert!(open_incident(&app, &fingerprint).await.is_none());
    let id = sentinel::domain::IncidentId::parse(incident["id"].as_str().unwrap()).unwrap();
    let resolved = app.store.get_incident(&id).await.unwrap().unwrap();
    assert_eq!(resolved.status, Status::Resolved);
    let last = resolved.timeline.last().unwrap();
    assert!(
        last.message.starts_with("recovered without action"),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_container_filling_its_memory_limit_opens_container_memory() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let container = Container::run(
        "sentinel-mon",
        &["--memory", "64m", "--shm-size", "64m"],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 && sleep 3600",
        ],
    );
    let fingerprint = format!("container_memory:{}", container.0);
    // Wait until the container has written its 48 MB (bounded).
    let mut value = 0.0;
    for _ in 0..60 {
        app.tick_monitor().await;
        let status = status(&app).await;
        if let Some(reading) = readings(&status, "container_memory")
            .into_iter()
            .find(|r| r["resource"] == container.0.as_str())
        {
            value = reading["value"].as_f64().unwrap_or(0.0);
            if value >= 60.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!((60.0..90.0).contains(&value), "memory {value} % of 64 MB");
    app.tick_monitor().await;
    let incident = open_incident(&app, &fingerprint)
        .await
        .expect("container_memory opened");
    assert_eq!(incident["severity"], "warning");
    assert_eq!(incident["threshold"], 60.0);
}

#[tokio::test]
async fn a_sandbox_over_100_mb_opens_sandbox_size() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let chunk = vec![0u8; 1 << 20];
    {
        use std::io::Write;
        let mut file = std::fs::File::create(logs.join("big.log")).unwrap();
        for _ in 0..101 {
            file.write_all(&chunk).unwrap();
        }
    }
    app.tick_monitor().await;
    app.tick_monitor().await;
    let incident = open_incident(&app, "sandbox_size:sandbox")
        .await
        .expect("sandbox_size opened");
    assert_eq!(incident["severity"], "warning");
    assert!(incident["value"].as_f64().unwrap() > 100.0, "{incident}");
    std::fs::remove_file(logs.join("big.log")).unwrap();
    app.tick_monitor().await;
    app.tick_monitor().await;
    assert!(open_incident(&app, "sandbox_size:sandbox").await.is_none());
}

#[tokio::test]
async fn an_unreachable_docker_makes_container_signals_unavailable_not_healthy() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.docker_host = "unix:///nonexistent/docker.sock".to_owned();
    })
    .await;
    // An open container incident must not resolve while Docker cannot be asked.
    let incident = app.trigger("container").await;
    for _ in 0..3 {
        let report = app.tick_monitor().await;
        assert!(
            report.unavailable.contains_key("container_down"),
            "{report:?}"
        );
    }
    let status = status(&app).await;
    let down = readings(&status, "container_down");
    assert_eq!(down.len(), 1, "{status}");
    assert_eq!(down[0]["state"], "unavailable");
    assert_eq!(down[0]["source"], "docker");
    assert!(down[0]["value"].is_null());
    // The other collectors still ran.
    assert_ne!(readings(&status, "host_memory")[0]["state"], "unavailable");
    let still = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert!(still.is_open());
}

#[tokio::test]
async fn sentinel_check_prints_the_signals_and_changes_nothing() {
    ensure_prometheus();
    let data = tempfile::tempdir().unwrap();
    let sandbox = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["check", "--json"])
        .env_clear()
        .env("PROMETHEUS_URL", PROMETHEUS)
        .env("SENTINEL_DATA_DIR", data.path().join("store"))
        .env("SENTINEL_SANDBOX_DIR", sandbox.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signals: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    let memory = signals
        .iter()
        .find(|s| s["signal"] == "host_memory")
        .unwrap();
    assert_eq!(memory["source"], "prometheus");
    assert!(signals.iter().any(|s| s["signal"] == "sandbox_size"));
    assert!(
        !data.path().join("store").exists(),
        "check must not create a store"
    );

    let table = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("check")
        .env_clear()
        .env("SENTINEL_SANDBOX_DIR", sandbox.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert!(text.starts_with("SIGNAL"), "{text}");
    assert!(
        text.contains("host_memory") && text.contains("local"),
        "{text}"
    );
    assert!(text.contains("nothing was changed"));
}

#[tokio::test]
async fn the_monitor_loop_runs_on_its_own_interval() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.monitor.enabled = true;
        s.interval = sentinel::config::HumanDuration(Duration::from_secs(1));
        s.monitor.lease_ttl = sentinel::config::HumanDuration(Duration::from_secs(3));
    })
    .await;
    let mut cycles = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if status(&app).await["monitor"]["leader"] == true {
            cycles += 1;
            break;
        }
    }
    assert_eq!(cycles, 1, "the loop did not run a cycle within 4 s");
}
