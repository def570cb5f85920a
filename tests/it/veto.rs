//! The veto window (SPEC §12.4) on the real parts: a real low-risk fix (a sandbox cleanup of
//! real files) with `veto_window = "3s"`.
//!
//! Side effects are measured at the boundary: the sandbox's SHA-256 manifest (nothing moved
//! after a Stop), and the modification time of `logs/`, which the filesystem sets when the
//! cleanup renames its files out (the fix ran at the window's end, ± 1 s, or at once on Run
//! now). Audit entries name the stopper. Stop and Run now racing make one decision. A
//! recovery while scheduled resolves without running anything. On Slack a viewer's Stop
//! click works and a viewer's Run now is refused with an ephemeral. `kill -9` during the
//! window: the restarted binary runs the fix once, at the scheduled time; killed until
//! after it, at once on start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sentinel::domain::{Incident, IncidentId, Status, Timestamp};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::slack_double::SlackDouble;
use crate::slack_inbound::{
    card_ref, click, ephemerals_to, slack_settings, slash, OPERATOR, VIEWER,
};

const WINDOW: Duration = Duration::from_secs(3);
const FILES: usize = 3;

/// Remediation on, a 3-second veto window, a 1 MB sandbox threshold and a short settle.
fn veto_settings(s: &mut sentinel::config::Settings) {
    s.actions.enabled = true;
    s.actions.veto_window = sentinel::config::HumanDuration(WINDOW);
    s.thresholds.sandbox_size_mb.warning = Some(1.0);
    s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
}

async fn veto_app() -> TestApp {
    spawn_app_with(Backend::Embedded, veto_settings).await
}

/// Three 1 MB logs under `logs/`, and a database under `data/` nothing may touch.
fn fill_sandbox(sandbox: &Path) {
    std::fs::create_dir_all(sandbox.join("logs")).unwrap();
    std::fs::create_dir_all(sandbox.join("data")).unwrap();
    std::fs::write(sandbox.join("data/keep.db"), b"precious").unwrap();
    for n in 0..FILES {
        std::fs::write(
            sandbox.join(format!("logs/app-{n}.log")),
            vec![b'x'; 1 << 20],
        )
        .unwrap();
    }
}

/// Every file under `root` (the quarantine included) with its SHA-256.
fn manifest(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                walk(root, &path, out);
            } else {
                let digest = Sha256::digest(std::fs::read(&path).unwrap_or_default());
                let name = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(name, hex::encode(digest));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// When `logs/` last changed, in Unix milliseconds: the cleanup's renames set it.
fn logs_changed_at(sandbox: &Path) -> i64 {
    let modified = std::fs::metadata(sandbox.join("logs"))
        .unwrap()
        .modified()
        .unwrap();
    modified.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn logs_left(sandbox: &Path) -> usize {
    std::fs::read_dir(sandbox.join("logs")).unwrap().count()
}

/// Ticks the monitor until the sandbox has an open incident, then waits until it is
/// scheduled (bounded).
async fn scheduled_cleanup(app: &TestApp) -> Incident {
    for _ in 0..20 {
        app.tick_monitor().await;
        let open = app
            .store
            .open_incident_for(
                &sentinel::domain::Fingerprint::parse("sandbox_size:sandbox").unwrap(),
            )
            .await
            .unwrap();
        if let Some(incident) = open {
            return wait_for(app, &incident.id, Status::Scheduled).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sandbox was never detected");
}

async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if incident.status == status {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {status}: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The audit events of one incident, with their actors and details.
async fn audit_of(app: &TestApp, id: &IncidentId) -> Vec<(String, String, Value)> {
    app.store
        .list_audit()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.incident.as_ref() == Some(id))
        .map(|e| (e.record.event, e.record.actor, e.record.details))
        .collect()
}

fn count(events: &[(String, String, Value)], name: &str) -> usize {
    events.iter().filter(|(event, ..)| event == name).count()
}

fn steps(incident: &Incident) -> Vec<&str> {
    incident.timeline.iter().map(|e| e.step.as_str()).collect()
}

#[tokio::test]
async fn a_stop_within_the_window_moves_nothing_and_the_audit_names_the_stopper() {
    let app = veto_app().await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let due = incident.scheduled_for.expect("scheduled_for is set");
    let scheduled_at = incident.timeline.last().unwrap().at;
    assert_eq!(due.unix_millis() - scheduled_at.unix_millis(), 3000);
    let json = app
        .get(
            &format!("/api/incidents/{}", incident.id),
            Some(&app.keys.viewer),
        )
        .await;
    assert_eq!(json.body["status"], "scheduled");
    assert_eq!(json.body["scheduled_for"], due.to_string());
    let before = manifest(&app.sandbox);

    let stopped = app
        .post(
            &format!("/api/incidents/{}/stop", incident.id),
            Some(&app.keys.viewer),
            "",
        )
        .await;
    assert_eq!(stopped.status, 200, "{stopped:?}");
    assert_eq!(stopped.body["status"], "rejected");
    // Past the window's end and a sweep: still nothing moved.
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    app.tick_monitor().await;
    sentinel::pipeline::remediate::run_due_schedules(app.sentinel.pipeline(), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(manifest(&app.sandbox), before, "a stopped fix moved files");
    assert_eq!(logs_left(&app.sandbox), FILES);
    let after = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(after.status, Status::Rejected);
    assert!(after.execution.is_none());
    let last = after.timeline.last().unwrap();
    assert_eq!(last.actor, "api:test-viewer (viewer)");
    assert!(last.message.starts_with("rejected: stopped"), "{last:?}");
    let audit = audit_of(&app, &incident.id).await;
    let rejected: Vec<_> = audit
        .iter()
        .filter(|(event, ..)| event == "ApprovalRejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{audit:?}");
    assert_eq!(rejected[0].1, "api:test-viewer");
    assert_eq!(rejected[0].2["reason"], "stopped");
    assert_eq!(count(&audit, "ActionExecuted"), 0);
    // Too late for anything else now.
    let run_now = app
        .post(
            &format!("/api/incidents/{}/run-now", incident.id),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(run_now.status, 409, "{run_now:?}");
    app.stop().await;
}

#[tokio::test]
async fn without_a_stop_the_fix_runs_once_at_the_end_of_the_window() {
    let app = veto_app().await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let due = incident.scheduled_for.unwrap().unix_millis();
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    let changed = logs_changed_at(&app.sandbox);
    eprintln!(
        "figure: the cleanup ran {} ms after the window's end",
        changed - due
    );
    assert!(
        (changed - due).abs() <= 1000,
        "logs/ changed {} ms from the window's end",
        changed - due
    );
    assert_eq!(logs_left(&app.sandbox), 0);
    assert_eq!(
        std::fs::read(app.sandbox.join("data/keep.db")).unwrap(),
        b"precious"
    );
    let execution = resolved.execution.as_ref().expect("executed");
    assert_eq!(
        execution.after.as_ref().unwrap().to_json()["moved_files"],
        FILES as u64,
        "{execution:?}"
    );
    assert!(execution.approved_by.starts_with("policy"));
    assert_eq!(
        steps(&resolved),
        [
            "detected",
            "analyzing",
            "analyzed",
            "scheduled",
            "approved",
            "executing",
            "verifying",
            "resolved"
        ]
    );
    // A late sweep finds nothing to run; one action in all.
    sentinel::pipeline::remediate::run_due_schedules(app.sentinel.pipeline(), Timestamp::now())
        .await
        .unwrap();
    let audit = audit_of(&app, &incident.id).await;
    assert_eq!(count(&audit, "ActionScheduled"), 1, "{audit:?}");
    assert_eq!(count(&audit, "ActionExecuted"), 1, "{audit:?}");
    app.stop().await;
}

#[tokio::test]
async fn run_now_runs_the_fix_at_once_and_needs_an_operator() {
    let app = veto_app().await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let due = incident.scheduled_for.unwrap().unix_millis();
    let path = format!("/api/incidents/{}/run-now", incident.id);
    let refused = app.post(&path, Some(&app.keys.viewer), "").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_eq!(logs_left(&app.sandbox), FILES);
    let stale = app
        .post(
            &path,
            Some(&app.keys.operator),
            r#"{"proposal_id":"prop-0000000000000000"}"#,
        )
        .await;
    assert_eq!(stale.status, 409, "{stale:?}");
    let body = format!(
        r#"{{"proposal_id":"{}"}}"#,
        incident.proposal_id.as_deref().unwrap()
    );
    let asked = Timestamp::now().unix_millis();
    let ran = app.post(&path, Some(&app.keys.operator), &body).await;
    assert_eq!(ran.status, 200, "{ran:?}");
    assert_eq!(ran.body["status"], "approved");
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    let changed = logs_changed_at(&app.sandbox);
    eprintln!(
        "figure: Run now ran the cleanup {} ms after the request, {} ms before the window's end",
        changed - asked,
        due - changed
    );
    assert!(
        changed - asked < 1000 && due - changed > 1000,
        "ran {} ms after Run now, {} ms before the window's end",
        changed - asked,
        due - changed
    );
    assert_eq!(logs_left(&app.sandbox), 0);
    let approved = resolved
        .timeline
        .iter()
        .find(|e| e.step == "approved")
        .unwrap();
    assert_eq!(approved.actor, "api:test-operator (operator)");
    // The window's end, when it comes, finds nothing left to run.
    tokio::time::sleep(Duration::from_millis(
        (due - Timestamp::now().unix_millis()).max(0) as u64 + 500,
    ))
    .await;
    let audit = audit_of(&app, &incident.id).await;
    assert_eq!(count(&audit, "ActionExecuted"), 1, "{audit:?}");
    assert!(audit
        .iter()
        .any(|(event, actor, _)| event == "ApprovalGranted" && actor == "api:test-operator"));
    app.stop().await;
}

#[tokio::test]
async fn a_stop_and_a_run_now_racing_make_exactly_one_decision() {
    let app = veto_app().await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let before = manifest(&app.sandbox);
    let stop = format!("/api/incidents/{}/stop", incident.id);
    let run_now = format!("/api/incidents/{}/run-now", incident.id);
    let this = &app;
    let requests = (0..20).map(|n| {
        let (path, key) = if n % 2 == 0 {
            (&stop, &app.keys.viewer)
        } else {
            (&run_now, &app.keys.operator)
        };
        async move { (n % 2 == 0, this.post(path, Some(key), "").await.status) }
    });
    let answers = futures::future::join_all(requests).await;
    let won: Vec<bool> = answers
        .iter()
        .filter(|(_, status)| *status == 200)
        .map(|(stop, _)| *stop)
        .collect();
    assert_eq!(won.len(), 1, "exactly one wins: {answers:?}");
    assert!(
        answers.iter().all(|(_, s)| *s == 200 || *s == 409),
        "{answers:?}"
    );
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    let audit = audit_of(&app, &incident.id).await;
    if won[0] {
        assert_eq!(
            app.store
                .get_incident(&incident.id)
                .await
                .unwrap()
                .unwrap()
                .status,
            Status::Rejected
        );
        assert_eq!(manifest(&app.sandbox), before, "stopped, yet files moved");
        assert_eq!(count(&audit, "ActionExecuted"), 0);
    } else {
        wait_for(&app, &incident.id, Status::Resolved).await;
        assert_eq!(logs_left(&app.sandbox), 0);
        let audit = audit_of(&app, &incident.id).await;
        assert_eq!(count(&audit, "ActionExecuted"), 1, "{audit:?}");
        assert_eq!(count(&audit, "ApprovalRejected"), 0);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_recovery_while_scheduled_resolves_without_running_anything() {
    // A longer window, so the monitor's clean samples surely come first.
    let app = spawn_app_with(Backend::Embedded, |s| {
        veto_settings(s);
        s.actions.veto_window = sentinel::config::HumanDuration(Duration::from_secs(30));
    })
    .await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let due = incident.scheduled_for.unwrap();
    // The breach goes away on its own: someone deleted the logs.
    for n in 0..FILES {
        std::fs::remove_file(app.sandbox.join(format!("logs/app-{n}.log"))).unwrap();
    }
    let cleared = logs_changed_at(&app.sandbox);
    for _ in 0..4 {
        app.tick_monitor().await;
    }
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    assert!(
        Timestamp::now() < due,
        "the window ended before the recovery"
    );
    assert_eq!(resolved.timeline.last().unwrap().step, "recovered");
    // The leader's sweep at (and after) the window's end finds nothing to run.
    let later = due.saturating_add(Duration::from_secs(1));
    let ran = sentinel::pipeline::remediate::run_due_schedules(app.sentinel.pipeline(), later)
        .await
        .unwrap();
    assert_eq!(ran, 0);
    let ran =
        sentinel::pipeline::remediate::run_if_due(app.sentinel.pipeline(), &incident.id, later)
            .await
            .unwrap();
    assert!(!ran, "a resolved incident's schedule is void");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(after.status, Status::Resolved);
    assert!(after.execution.is_none(), "nothing ran");
    assert_eq!(
        logs_changed_at(&app.sandbox),
        cleared,
        "logs/ untouched since"
    );
    assert!(
        !app.sandbox.join(".sentinel-quarantine").exists(),
        "no quarantine was made"
    );
    assert_eq!(
        count(&audit_of(&app, &incident.id).await, "ActionExecuted"),
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn the_page_and_the_status_say_when_a_scheduled_fix_runs() {
    let app = veto_app().await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let due = incident.scheduled_for.unwrap();
    let exact = sentinel::service::postmortem::at_words(due);
    let page = app.get_text("/").await;
    let hover = format!(r#"<time datetime="{due}" title="{exact}">in "#);
    assert!(page.contains(&hover), "no scheduled time on the page");
    let words = page.split(&hover).nth(1).unwrap();
    let seconds: u64 = words.split(' ').next().unwrap().parse().unwrap();
    assert!((1..=3).contains(&seconds), "{}", &words[..20]);
    app.stop().await;
}

// -------------------------------------------------------------------------------------------
// Slack: Stop from a viewer's click; Run now from a viewer refused.

#[tokio::test]
async fn a_viewer_may_stop_from_slack_but_not_run_now() {
    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let app = spawn_app_with(Backend::Embedded, |s| {
        veto_settings(s);
        slack_settings(s);
        s.slack.api_url = api_url;
        s.secrets.slack_bot_token = Some(secrecy::SecretString::from(SlackDouble::TOKEN));
    })
    .await;
    fill_sandbox(&app.sandbox);
    let incident = scheduled_cleanup(&app).await;
    let before = manifest(&app.sandbox);
    let reference = card_ref(&incident);

    // `/sentinel status` says when it runs, in words and exactly.
    let status = slash(&app, VIEWER, "status").await;
    assert_eq!(status.status, 200);
    let text = status.body.to_string();
    let clock = &incident.scheduled_for.unwrap().to_string()[11..19];
    let said = "the fix runs in ";
    let at = text
        .find(said)
        .unwrap_or_else(|| panic!("no schedule in {text}"));
    let rest = &text[at + said.len()..];
    let seconds: u64 = rest.split(' ').next().unwrap().parse().unwrap();
    assert!((1..=3).contains(&seconds), "{rest}");
    assert!(
        rest.starts_with(&format!(
            "{seconds} s ({clock} UTC) unless someone stops it"
        )),
        "{rest}"
    );

    click(&app, VIEWER, "run_now", &reference).await;
    let said = ephemerals_to(&double, VIEWER);
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(
        said[0].contains("you need the operator role and you are viewer")
            && said[0].contains("Nothing was changed"),
        "{said:?}"
    );
    assert_eq!(
        app.store
            .get_incident(&incident.id)
            .await
            .unwrap()
            .unwrap()
            .status,
        Status::Scheduled
    );

    click(&app, VIEWER, "stop", &reference).await;
    let said = ephemerals_to(&double, VIEWER);
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(
        said[1].starts_with("You stopped the scheduled fix"),
        "{said:?}"
    );
    let stopped = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(stopped.status, Status::Rejected);
    assert_eq!(
        stopped.timeline.last().unwrap().actor,
        format!("slack:{VIEWER} (viewer)")
    );
    // An operator's Run now after the stop is refused in words, and nothing runs.
    click(&app, OPERATOR, "run_now", &card_ref(&stopped)).await;
    let said = ephemerals_to(&double, OPERATOR);
    assert!(
        said.last().unwrap().contains("Nothing was changed"),
        "{said:?}"
    );
    tokio::time::sleep(WINDOW + Duration::from_secs(1)).await;
    assert_eq!(manifest(&app.sandbox), before);
    app.stop().await;
}

// -------------------------------------------------------------------------------------------
// kill -9 during the window: the binary, its embedded store, a restart.

/// One run of the binary's state: data, sandbox, configuration, an admin key.
struct Binary {
    dir: tempfile::TempDir,
    config: PathBuf,
    admin: String,
    client: reqwest::Client,
}

const BINARY_WINDOW: &str = "6s";

impl Binary {
    fn new() -> Binary {
        let dir = tempfile::tempdir().unwrap();
        let (admin, sha256) = sentinel::web::auth::new_key();
        let config = dir.path().join("sentinel.toml");
        std::fs::write(
            &config,
            format!(
                "interval = \"1s\"\nsettle = \"1s\"\n\n\
                 [[api_keys]]\nname = \"veto-admin\"\nrole = \"admin\"\nsha256 = \"{sha256}\"\n\n\
                 # Only the sandbox opens incidents.\n\
                 [thresholds]\n\
                 host_memory = {{ warning = 100, critical = 100 }}\n\
                 host_cpu = {{ warning = 100, critical = 100 }}\n\
                 disk = {{ critical = 100 }}\n\
                 network_latency = {{ warning = 100000000, critical = 100000000 }}\n\
                 sandbox_size_mb = {{ warning = 1 }}\n\
                 container_memory = {{ warning = 100, critical = 100 }}\n\n\
                 [monitor]\nfor = 1\nlease_ttl = \"2s\"\n\
                 container_include = [\"name:sentinel-veto-watches-no-container\"]\n\n\
                 [actions]\nenabled = true\nveto_window = \"{BINARY_WINDOW}\"\n"
            ),
        )
        .unwrap();
        fill_sandbox(&dir.path().join("sandbox"));
        Binary {
            dir,
            config,
            admin,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
        }
    }

    fn sandbox(&self) -> PathBuf {
        self.dir.path().join("sandbox")
    }

    /// Starts `sentinel serve` on a free port and waits for `/readyz`.
    async fn start(&self) -> (Running, String) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stderr = std::fs::File::create(self.dir.path().join(format!("stderr-{port}"))).unwrap();
        let child = Running(
            Command::new(env!("CARGO_BIN_EXE_sentinel"))
                .arg("serve")
                .env_clear()
                .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
                .env("SENTINEL_DATA_DIR", self.dir.path().join("data"))
                .env("SENTINEL_SANDBOX_DIR", self.sandbox())
                .env("SENTINEL_CONFIG", &self.config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap(),
        );
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ready = self.client.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return (child, base);
            }
            assert!(Instant::now() < deadline, "sentinel did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sandbox_incident(&self, base: &str) -> Option<Value> {
        let reply = self
            .client
            .get(format!("{base}/api/incidents"))
            .header("x-api-key", &self.admin)
            .send()
            .await
            .ok()?;
        let list: Value = reply.json().await.ok()?;
        list.as_array()?
            .iter()
            .find(|i| i["fingerprint"] == "sandbox_size:sandbox")
            .cloned()
    }

    async fn wait_incident(&self, base: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(incident) = self.sandbox_incident(base).await {
                if incident["status"] == status {
                    return incident;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the sandbox incident never became {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn executed_count(&self, base: &str, id: &str) -> usize {
        let audit: Value = self
            .client
            .get(format!("{base}/api/audit"))
            .header("x-api-key", &self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(audit["chain"]["verified"], true);
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["incident"] == id && e["event"] == "ActionExecuted")
            .count()
    }
}

fn millis_of(value: &Value) -> i64 {
    Timestamp::parse_rfc3339(value.as_str().unwrap())
        .unwrap()
        .unix_millis()
}

/// A running binary; dropping it SIGKILLs and reaps it, so a failing test leaves none.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

fn kill_9(child: Running) {
    drop(child);
}

#[tokio::test]
async fn kill_9_during_the_window_still_runs_the_fix_once_at_the_scheduled_time() {
    let binary = Binary::new();
    let (first, base) = binary.start().await;
    let scheduled = binary.wait_incident(&base, "scheduled").await;
    let due = millis_of(&scheduled["scheduled_for"]);
    kill_9(first);
    assert_eq!(
        logs_left(&binary.sandbox()),
        FILES,
        "nothing ran before the kill"
    );
    let (second, base) = binary.start().await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(now < due, "the restart took the whole window");
    let resolved = binary.wait_incident(&base, "resolved").await;
    assert_eq!(resolved["id"], scheduled["id"], "the same incident ran");
    let changed = logs_changed_at(&binary.sandbox());
    eprintln!(
        "figure: after kill -9 and a restart the cleanup ran {} ms after the scheduled time",
        changed - due
    );
    assert!(
        (changed - due).abs() <= 1000,
        "after the restart the fix ran {} ms from the scheduled time",
        changed - due
    );
    assert_eq!(logs_left(&binary.sandbox()), 0);
    let id = scheduled["id"].as_str().unwrap();
    assert_eq!(binary.executed_count(&base, id).await, 1);
    kill_9(second);
}

#[tokio::test]
async fn a_window_that_ended_while_the_process_was_down_runs_the_fix_once_on_start() {
    let binary = Binary::new();
    let (first, base) = binary.start().await;
    let scheduled = binary.wait_incident(&base, "scheduled").await;
    let due = millis_of(&scheduled["scheduled_for"]);
    kill_9(first);
    let wait = due + 1000
        - SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
    tokio::time::sleep(Duration::from_millis(wait.max(0) as u64)).await;
    assert_eq!(
        logs_left(&binary.sandbox()),
        FILES,
        "nothing ran while down"
    );
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (second, base) = binary.start().await;
    let resolved = binary.wait_incident(&base, "resolved").await;
    assert_eq!(resolved["id"], scheduled["id"]);
    let changed = logs_changed_at(&binary.sandbox());
    assert!(changed > due, "ran before the window ended");
    eprintln!(
        "figure: a window that ended while down ran {} ms after the process started",
        changed - started
    );
    let ready = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        changed >= started && changed - started < 5000,
        "ran {} ms after the start (ready after {} ms)",
        changed - started,
        ready - started
    );
    let id = scheduled["id"].as_str().unwrap();
    assert_eq!(binary.executed_count(&base, id).await, 1);
    kill_9(second);
}
