//! Test alerts and demo scenarios (SPEC §12.2).
//!
//! A test alert of every scenario is `synthetic`: labelled so on the card and the page, its
//! fix recorded as a dry run and never executed — checked at the boundary: no Docker event
//! for the container its fix names, and a SHA-256 manifest of the sandbox unchanged. A real
//! breach of the same signal and resource opens its own incident. Then the README's first
//! run, step by step, against the binary on real Docker: `sentinel demo sandbox` is cleaned
//! up on its own, `sentinel demo container` waits for approval, the approval starts the
//! container, the rollback stops it again, and `sentinel demo reset` leaves nothing behind.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sha2::{Digest, Sha256};

use sentinel::domain::{Incident, IncidentId, Status};

use crate::containers::{docker, IMAGE};
use crate::helpers::{spawn_app_with, Backend, TestApp};

/// Every file below `root` (the quarantine included) with its SHA-256; links as links.
fn manifest(root: &Path) -> BTreeMap<String, String> {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|entry| entry.expect("the sandbox is readable"))
        .filter(|entry| !entry.file_type().is_dir())
        .map(|entry| {
            let path = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .display()
                .to_string();
            let digest = if entry.file_type().is_symlink() {
                format!(
                    "link to {}",
                    std::fs::read_link(entry.path()).unwrap().display()
                )
            } else {
                hex::encode(Sha256::digest(std::fs::read(entry.path()).unwrap()))
            };
            (path, digest)
        })
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What Docker did to `container` between the two times (seconds), one action per line.
fn docker_events(container: &str, since: u64, until: u64) -> Vec<String> {
    let out = docker(&[
        "events",
        "--since",
        &since.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={container}"),
        "--format",
        "{{.Action}}",
    ]);
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

/// Polls the stored incident until `done` says so (bounded).
async fn wait_until(app: &TestApp, id: &IncidentId, done: impl Fn(&Incident) -> bool) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if done(&incident) {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never got there: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the named container when dropped.
struct Named(String);
impl Drop for Named {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
    }
}

#[tokio::test]
async fn a_test_alert_of_every_scenario_executes_nothing_and_says_so() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(200));
    })
    .await;
    // Real targets for the fixes the rules propose: cleanable files in the sandbox, and a
    // stopped container under the name the container test alert names.
    let test_container = sentinel::pipeline::detect::TEST_CONTAINER;
    let _ = Command::new("docker")
        .args(["rm", "-f", test_container])
        .output();
    docker(&[
        "create",
        "--network",
        "none",
        "--name",
        test_container,
        IMAGE,
        "sleep",
        "3600",
    ]);
    let _cleanup = Named(test_container.to_owned());
    for dir in ["logs", "tmp", "cache"] {
        std::fs::create_dir_all(app.sandbox.join(dir)).unwrap();
    }
    std::fs::write(app.sandbox.join("logs/app.log"), vec![b'l'; 12_000_000]).unwrap();
    std::fs::write(app.sandbox.join("tmp/scratch.bin"), vec![b't'; 3_000_000]).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", app.sandbox.join("cache/link")).unwrap();
    let before = manifest(&app.sandbox);
    // `docker events --since` counts whole seconds: start counting at the next one, after
    // the container's own `create`, and only then act.
    let since = unix_now() + 1;
    while unix_now() < since {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for scenario in sentinel::pipeline::detect::Scenario::ALL {
        let incident = app.trigger(scenario.as_str()).await;
        assert!(incident.synthetic, "{scenario}");
        assert!(
            incident.fingerprint.as_str().starts_with("test:"),
            "{scenario}: {}",
            incident.fingerprint
        );
        let decided = wait_until(&app, &incident.id, |i| {
            !matches!(i.status, Status::Detected | Status::Analyzing)
        })
        .await;
        // A fix that waits for a person is approved, when its target is this test's own:
        // the approval is recorded and the fix is still only a dry run.
        let ours = decided.proposed_action.as_ref().is_some_and(|p| {
            p.params.get("container").and_then(Value::as_str) == Some(test_container)
                || p.action == sentinel::domain::ActionId::SandboxCleanup
        });
        if decided.status == Status::AwaitingApproval && ours {
            let approved = app
                .post(
                    &format!("/api/incidents/{}/approve", decided.id),
                    Some(&app.keys.admin),
                    "",
                )
                .await;
            assert_eq!(approved.status, 200, "{scenario}: {approved:?}");
        }
        let settled = wait_until(&app, &incident.id, |i| {
            !matches!(
                i.status,
                Status::Detected | Status::Analyzing | Status::Approved | Status::Executing
            )
        })
        .await;
        assert!(settled.execution.is_none(), "{scenario}: {settled:#?}");
        let steps: Vec<&str> = settled.timeline.iter().map(|e| e.step.as_str()).collect();
        assert!(!steps.contains(&"executing"), "{scenario}: {steps:?}");
        if settled
            .proposed_action
            .as_ref()
            .is_some_and(|p| p.action != sentinel::domain::ActionId::NotifyOnly)
            && (settled.status == Status::Resolved)
        {
            assert_eq!(steps.last(), Some(&"dry_run"), "{scenario}: {steps:?}");
            let last = settled.timeline.last().unwrap();
            assert!(last.message.contains("test alert"), "{}", last.message);
        }
        eprintln!("{scenario}: {} {steps:?}", settled.status);
    }
    // The scenarios whose fix targets this test's own container and sandbox did reach the
    // dry run: the container start (medium, approved) and the cleanups (low, automatic).
    let incidents = app.get("/api/incidents", Some(&app.keys.viewer)).await.body;
    let dry_runs: Vec<&str> = incidents
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            i["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["step"] == "dry_run")
        })
        .map(|i| i["signal"].as_str().unwrap())
        .collect();
    for signal in ["container_down", "sandbox_size", "disk"] {
        assert!(
            dry_runs.contains(&signal),
            "{signal} reached no dry run: {dry_runs:?}"
        );
    }

    // At the boundary: the container was not touched, no file moved.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let until = unix_now();
    assert_eq!(
        docker_events(test_container, since, until),
        Vec::<String>::new(),
        "Docker saw the test alerts' fixes"
    );
    let state = docker(&["inspect", "-f", "{{.State.Status}}", test_container]);
    assert_eq!(state, "created");
    assert_eq!(manifest(&app.sandbox), before, "a test alert moved files");

    // Said so: audited as a dry run, labelled on the page and the card.
    let audit = app.get("/api/audit", Some(&app.keys.admin)).await.body;
    let events: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"DryRunRecorded"), "{events:?}");
    assert!(!events.contains(&"ActionExecuted"), "{events:?}");
    let page = app.get_text("/").await;
    assert!(
        page.contains("badge test-alert"),
        "the page labels test alerts"
    );
    let one = &incidents[0];
    let card = sentinel::slack::blocks::render(
        "incident_card",
        &serde_json::json!({"incident": one, "public_url": ""}),
    )
    .expect("the card renders");
    let drawn = serde_json::to_string(&card.blocks).unwrap();
    assert!(
        drawn.contains("TEST ALERT") && drawn.contains("dry run"),
        "{drawn}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_real_breach_opens_its_own_incident_beside_an_open_test_alert() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let test = app.trigger("sandbox").await;
    assert!(test.synthetic);
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("big.log"), vec![b'x'; 130_000_000]).unwrap();
    let mut real = None;
    for _ in 0..5 {
        app.tick_monitor().await;
        let fingerprint = sentinel::domain::Fingerprint::parse("sandbox_size:sandbox").unwrap();
        if let Some(open) = app.store.open_incident_for(&fingerprint).await.unwrap() {
            real = Some(open);
            break;
        }
    }
    let real = real.expect("the real breach opened an incident");
    assert_ne!(real.id, test.id);
    assert!(!real.synthetic);
    assert!(real.value >= 130.0, "{}", real.value);
    // The test alert kept its own made-up reading and was not touched by the real one.
    let kept = app.store.get_incident(&test.id).await.unwrap().unwrap();
    assert_eq!(kept.occurrences, 1);
    assert_eq!(kept.value, test.value);
    assert_eq!(kept.status, Status::Detected);
    // And another test alert folds into the test incident, never into the real one.
    let again = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"sandbox"}"#,
        )
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["id"], test.id.as_str());
    let real_now = app.store.get_incident(&real.id).await.unwrap().unwrap();
    assert_eq!(real_now.occurrences, real.occurrences);
    app.stop().await;
}

/// The binary, on its own port, data and sandbox, with remediation on and fast cycles.
struct Server {
    child: Child,
    base: String,
    admin: String,
    key_file: std::path::PathBuf,
    sandbox: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_binary(container: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let keys = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["keys", "new", "--role", "admin", "--name", "demo-test"])
        .output()
        .unwrap();
    assert!(keys.status.success());
    let printed = String::from_utf8(keys.stdout).unwrap();
    let key_file = dir.path().join("admin-key.txt");
    std::fs::write(&key_file, &printed).unwrap();
    let admin = printed.lines().next().unwrap().to_owned();
    let entry: String = printed.lines().skip(1).collect::<Vec<_>>().join("\n");
    let config = dir.path().join("sentinel.toml");
    std::fs::write(
        &config,
        // The demo's cleanup runs at once here; the veto window has tests of its own.
        format!(
            "[actions]\nveto_window = \"0s\"\n\n\
             [demo]\nimage = \"{IMAGE}\"\ncontainer = \"{container}\"\n\n{entry}\n"
        ),
    )
    .unwrap();
    let sandbox = dir.path().join("sandbox");
    let child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["--config", config.to_str().unwrap()])
        .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SENTINEL_DATA_DIR", dir.path().join("data"))
        .env("SENTINEL_SANDBOX_DIR", &sandbox)
        .env("SENTINEL_INTERVAL", "1s")
        .env("SENTINEL_SETTLE", "1s")
        .env("RUST_LOG", "warn")
        .env_remove("REDIS_URL")
        .env_remove("PROMETHEUS_URL")
        .env_remove("SLACK_BOT_TOKEN")
        .env_remove("SLACK_SIGNING_SECRET")
        .env_remove("SLACK_APP_TOKEN")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        admin,
        key_file,
        sandbox,
        _dir: dir,
    }
}

impl Server {
    async fn wait_ready(&self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(reply) = client.get(format!("{}/readyz", self.base)).send().await {
                if reply.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sentinel did not become ready at {}", self.base);
    }

    /// `sentinel demo <scenario>`, as the README says it.
    fn demo(&self, scenario: &str) -> String {
        let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
            .args(["demo", scenario, "--server", &self.base, "--key-file"])
            .arg(&self.key_file)
            .env_remove("SENTINEL_API_KEY")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "sentinel demo {scenario}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    }

    async fn incidents(&self, client: &reqwest::Client) -> Vec<Value> {
        let reply = client
            .get(format!("{}/api/incidents", self.base))
            .header("x-api-key", &self.admin)
            .send()
            .await
            .unwrap();
        reply
            .json::<Value>()
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Polls the incidents until one of `fingerprint` satisfies `done` (bounded).
    async fn wait_for(
        &self,
        client: &reqwest::Client,
        fingerprint: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let all = self.incidents(client).await;
            if let Some(found) = all
                .iter()
                .find(|i| i["fingerprint"] == fingerprint && done(i))
            {
                return found.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{fingerprint} never {what}: {:#?}",
                all.iter()
                    .filter(|i| i["fingerprint"] == fingerprint)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn post(&self, client: &reqwest::Client, path: &str) -> (u16, Value) {
        let reply = client
            .post(format!("{}{path}", self.base))
            .header("x-api-key", &self.admin)
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        (status, reply.json().await.unwrap_or_default())
    }
}

fn demo_files(sandbox: &Path) -> Vec<String> {
    match std::fs::read_dir(sandbox.join("logs")) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(sentinel::service::demo::FILE_PREFIX))
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn demo_containers(names: &[&str]) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        "label=sentinel.demo=true",
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .filter(|n| names.contains(n))
    .map(str::to_owned)
    .collect()
}

fn state_of(container: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", container])
}

#[tokio::test]
async fn the_readme_first_run_against_the_binary_shows_the_whole_loop() {
    let container = format!("sentinel-demo-{}", &IncidentId::generate().as_str()[4..]);
    let memory_container = format!("{container}-memory");
    let _c1 = Named(container.clone());
    let _c2 = Named(memory_container.clone());
    let server = start_binary(&container);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    server.wait_ready(&client).await;
    assert!(server.sandbox.is_dir(), "the sandbox is created on start");

    // demo sandbox: 120 MB of demo logs, cleaned up on its own.
    let said = server.demo("sandbox");
    assert!(said.contains("120 MB"), "{said}");
    assert_eq!(demo_files(&server.sandbox).len(), 12);
    let fixed = server
        .wait_for(
            &client,
            "sandbox_size:sandbox",
            "resolved by a cleanup",
            |i| {
                i["status"] == "resolved" && i["execution"]["action"]["action"] == "sandbox_cleanup"
            },
        )
        .await;
    assert_eq!(fixed["synthetic"], false);
    assert_eq!(fixed["risk"], "low");
    assert!(fixed["execution"]["approved_by"]
        .as_str()
        .unwrap()
        .contains("policy"));
    assert_eq!(
        demo_files(&server.sandbox),
        Vec::<String>::new(),
        "the demo logs left logs/"
    );

    // demo container: stopped, and its start waits for approval.
    let said = server.demo("container");
    assert!(said.contains(&container), "{said}");
    assert_eq!(state_of(&container), "exited");
    let fingerprint = format!("container_down:{container}");
    let waiting = server
        .wait_for(&client, &fingerprint, "waited for approval", |i| {
            i["status"] == "awaiting_approval"
        })
        .await;
    assert_eq!(waiting["proposed_action"]["action"], "container_start");
    assert_eq!(waiting["risk"], "medium");
    let id = waiting["id"].as_str().unwrap().to_owned();
    let (status, approved) = server
        .post(&client, &format!("/api/incidents/{id}/approve"))
        .await;
    assert_eq!(status, 200, "{approved}");
    let resolved = server
        .wait_for(&client, &fingerprint, "resolved", |i| {
            i["id"] == id.as_str() && i["status"] == "resolved"
        })
        .await;
    assert_eq!(resolved["execution"]["action"]["action"], "container_start");
    assert_eq!(state_of(&container), "running");

    // Rollback: stopped again.
    let (status, rolled) = server
        .post(&client, &format!("/api/incidents/{id}/rollback"))
        .await;
    assert_eq!(status, 200, "{rolled}");
    server
        .wait_for(&client, &fingerprint, "rolled back", |i| {
            i["id"] == id.as_str() && !i["execution"]["rolled_back_at"].is_null()
        })
        .await;
    assert_eq!(state_of(&container), "exited");

    // demo memory: a container near its limit, as Docker reports it.
    server.demo("memory");
    let memory = server
        .wait_for(
            &client,
            &format!("container_memory:{memory_container}"),
            "waited for approval",
            |i| i["status"] == "awaiting_approval",
        )
        .await;
    let value = memory["value"].as_f64().unwrap();
    eprintln!("demo memory: {value} % of the 64 MB limit");
    assert!((60.0..90.0).contains(&value), "{value}");
    assert_eq!(memory["risk"], "medium");

    // demo reset: nothing of the demo's is left, its incidents resolved.
    let said = server.demo("reset");
    assert!(said.contains("removed 2 demo containers"), "{said}");
    assert_eq!(
        demo_containers(&[&container, &memory_container]),
        Vec::<String>::new()
    );
    assert_eq!(demo_files(&server.sandbox), Vec::<String>::new());
    let all = server.incidents(&client).await;
    let demo_open: Vec<&Value> = all
        .iter()
        .filter(|i| {
            let resource = i["resource"].as_str().unwrap_or("");
            resource == container || resource == memory_container
        })
        .filter(|i| i["status"] != "resolved")
        .collect();
    assert!(demo_open.is_empty(), "{demo_open:#?}");
    let reset: Vec<&Value> = all
        .iter()
        .filter(|i| {
            i["timeline"]
                .as_array()
                .unwrap()
                .last()
                .is_some_and(|e| e["step"] == "reset")
        })
        .collect();
    let demo_timelines: Vec<(&Value, &Value, Vec<&Value>)> = all
        .iter()
        .filter(|i| {
            let resource = i["resource"].as_str().unwrap_or("");
            resource == container || resource == memory_container
        })
        .map(|i| {
            let steps = i["timeline"].as_array().unwrap();
            (
                &i["id"],
                &i["status"],
                steps.iter().map(|e| &e["step"]).collect(),
            )
        })
        .collect();
    assert!(
        reset.len() >= 2,
        "the container and memory incidents: {said}; {demo_timelines:?}"
    );
}
