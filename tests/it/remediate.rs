//! Remediation end to end, on real Docker and a real sandbox: low risk fixed on its own and
//! verified; medium risk waiting for an operator; a fix that does not help rolled back and
//! escalated; an admin's rollback; concurrent approvals running the side effect once; an
//! approval pinned to the state it saw.

use std::time::{Duration, Instant};

use sentinel::domain::{ActionPlan, Incident, IncidentId, Status};

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, TestApp};

/// An app with remediation on and a short settle.
async fn remediating_app(customize: impl FnOnce(&mut sentinel::config::Settings)) -> TestApp {
    spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
        customize(s);
    })
    .await
}

async fn open_incident(app: &TestApp, fingerprint: &str) -> Option<Incident> {
    app.store
        .list_incidents(sentinel::store::IncidentQuery {
            open_only: true,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.fingerprint.as_str() == fingerprint)
}

/// Polls until the incident reaches `status` (bounded).
async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if incident.status == status {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "incident never reached {status}; timeline: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ticks the monitor until the fingerprint has an open incident (bounded).
async fn detect(app: &TestApp, fingerprint: &str) -> Incident {
    for _ in 0..20 {
        app.tick_monitor().await;
        if let Some(incident) = open_incident(app, fingerprint).await {
            return incident;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{fingerprint} was never detected");
}

fn steps(incident: &Incident) -> Vec<&str> {
    incident.timeline.iter().map(|e| e.step.as_str()).collect()
}

async fn audit_events(app: &TestApp, id: &IncidentId) -> Vec<String> {
    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    assert_eq!(audit.body["chain"]["verified"], true);
    audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["incident"] == id.as_str())
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn low_risk_is_fixed_automatically_and_verified() {
    let app = remediating_app(|_| {}).await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::create_dir_all(app.sandbox.join("data")).unwrap();
    std::fs::write(app.sandbox.join("data/keep.db"), b"precious").unwrap();
    {
        use std::io::Write;
        let mut file = std::fs::File::create(logs.join("huge.log")).unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..101 {
            file.write_all(&chunk).unwrap();
        }
    }
    let incident = detect(&app, "sandbox_size:sandbox").await;
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    assert_eq!(
        steps(&resolved),
        [
            "detected",
            "analyzing",
            "analyzed",
            "approved",
            "executing",
            "verifying",
            "resolved"
        ]
    );
    assert_eq!(resolved.risk, Some(sentinel::domain::Risk::Low));
    assert_eq!(resolved.analyzer.as_deref(), Some("rules"));
    let execution = resolved.execution.expect("an execution record");
    assert_eq!(
        execution.after.as_ref().unwrap().to_json()["moved_files"],
        1,
        "{execution:?}"
    );
    assert!(execution.approved_by.starts_with("policy"));
    assert!(!logs.join("huge.log").exists());
    assert_eq!(
        std::fs::read(app.sandbox.join("data/keep.db")).unwrap(),
        b"precious"
    );
    let events = audit_events(&app, &incident.id).await;
    for event in [
        "IncidentOpened",
        "ActionProposed",
        "ApprovalGranted",
        "ActionExecuted",
        "VerificationSucceeded",
    ] {
        assert!(
            events.iter().any(|e| e == event),
            "{event} missing from {events:?}"
        );
    }

    // An admin can roll the cleanup back: the file comes back from quarantine.
    let rolled = app
        .post(
            &format!("/api/incidents/{}/rollback", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert_eq!(rolled.body["status"], "rolled_back");
    assert_eq!(
        std::fs::metadata(logs.join("huge.log")).unwrap().len(),
        101 << 20
    );
    let again = app
        .post(
            &format!("/api/incidents/{}/rollback", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(again.status, 409, "rolling back twice: {again:?}");
}

#[tokio::test]
async fn medium_risk_waits_for_an_operator_then_runs_and_is_verified() {
    let app = remediating_app(|_| {}).await;
    let container = Container::run("sentinel-fix", &[], &["sleep", "3600"]);
    docker(&["stop", "-t", "1", &container.0]);
    let incident = detect(&app, &format!("container_down:{}", container.0)).await;
    let waiting = wait_for(&app, &incident.id, Status::AwaitingApproval).await;
    assert_eq!(waiting.risk, Some(sentinel::domain::Risk::Medium));
    let plan = waiting.proposed_action.as_ref().unwrap().plan().unwrap();
    assert_eq!(
        plan,
        ActionPlan::ContainerStart {
            container: container.0.clone()
        }
    );
    assert_eq!(
        waiting.snapshot.as_ref().unwrap().to_json()["state"],
        "exited"
    );
    // Nothing happens on its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "exited"
    );

    // A viewer cannot approve; an operator can.
    let path = format!("/api/incidents/{}/approve", incident.id);
    assert_eq!(
        app.post(&path, Some(&app.keys.viewer), "").await.status,
        403
    );
    let approved = app.post(&path, Some(&app.keys.operator), "").await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "running"
    );
    let execution = resolved.execution.unwrap();
    assert_eq!(execution.before.to_json()["state"], "exited");
    assert_eq!(
        execution.after.as_ref().unwrap().to_json()["state"],
        "running"
    );
    assert_eq!(execution.approved_by, "api:test-operator (operator)");
    let events = audit_events(&app, &incident.id).await;
    assert!(
        events.contains(&"ApprovalRequested".to_owned()),
        "{events:?}"
    );
    assert!(events.contains(&"ActionExecuted".to_owned()));
}

#[tokio::test]
async fn a_fix_that_does_not_help_is_rolled_back_and_escalated() {
    // A low warning level, so a 1.5× larger limit still leaves the container "breached".
    let app = remediating_app(|s| {
        s.thresholds.container_memory.warning = Some(30.0);
    })
    .await;
    let container = Container::run(
        "sentinel-fix",
        &["--memory", "64m", "--shm-size", "64m"],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 && sleep 3600",
        ],
    );
    let before = container.memory_limit();
    assert_eq!(before, 64 << 20);
    let incident = detect(&app, &format!("container_memory:{}", container.0)).await;
    wait_for(&app, &incident.id, Status::AwaitingApproval).await;
    let approved = app
        .post(
            &format!("/api/incidents/{}/approve", incident.id),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    let escalated = wait_for(&app, &incident.id, Status::Escalated).await;
    let steps = steps(&escalated);
    for step in [
        "executing",
        "verifying",
        "verification_failed",
        "rolled_back",
        "escalated",
    ] {
        assert!(steps.contains(&step), "{step} missing: {steps:?}");
    }
    let execution = escalated.execution.unwrap();
    assert_eq!(execution.before.to_json()["memory"], 64 << 20);
    assert_eq!(
        execution.after.as_ref().unwrap().to_json()["memory"],
        96 << 20,
        "raised 1.5×"
    );
    assert!(execution.rolled_back_at.is_some());
    assert_eq!(
        container.memory_limit(),
        before,
        "the limit is back to the recorded value"
    );
}

#[tokio::test]
async fn an_admin_rolls_back_a_raised_memory_limit_to_the_recorded_value() {
    let app = remediating_app(|_| {}).await;
    let container = Container::run(
        "sentinel-fix",
        &["--memory", "64m", "--shm-size", "64m"],
        &[
            "sh",
            "-c",
            "dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 && sleep 3600",
        ],
    );
    let incident = detect(&app, &format!("container_memory:{}", container.0)).await;
    wait_for(&app, &incident.id, Status::AwaitingApproval).await;
    let path = format!("/api/incidents/{}", incident.id);
    let approved = app
        .post(&format!("{path}/approve"), Some(&app.keys.admin), "")
        .await;
    assert_eq!(approved.status, 200);
    wait_for(&app, &incident.id, Status::Resolved).await;
    assert_eq!(container.memory_limit(), 96 << 20);
    // Operators cannot roll back; admins can.
    let refused = app
        .post(&format!("{path}/rollback"), Some(&app.keys.operator), "")
        .await;
    assert_eq!(refused.status, 403);
    let rolled = app
        .post(&format!("{path}/rollback"), Some(&app.keys.admin), "")
        .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert_eq!(container.memory_limit(), 64 << 20);
    let last = rolled.body["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["actor"], "api:test-admin (admin)");
}

/// An incident waiting for approval of `plan`, with the snapshot the executor takes now. The
/// worker first finishes with an injected alert (an empty sandbox: nothing to clean, so it is
/// escalated); then the incident is turned into this proposal.
async fn propose_for_approval(app: &TestApp, plan: &ActionPlan) -> IncidentId {
    let id = loop {
        let incident = app.trigger("sandbox").await;
        let current = app.store.get_incident(&incident.id).await.unwrap().unwrap();
        if current.status != Status::Analyzing && current.status != Status::Detected {
            break incident.id;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut stored = app.store.get_incident(&id).await.unwrap().unwrap();
    // Made into a real incident: a test alert's fix would only be a dry run.
    stored.synthetic = false;
    stored.proposed_action = Some(plan.to_proposed());
    stored.risk = Some(sentinel::domain::Risk::Medium);
    stored.snapshot = Some(
        app.sentinel
            .pipeline()
            .executor
            .snapshot(plan)
            .await
            .unwrap(),
    );
    stored.status = Status::AwaitingApproval;
    stored.approvals.clear();
    app.store.update_incident(&stored).await.unwrap();
    id
}

#[tokio::test]
async fn fifty_concurrent_approvals_restart_the_container_exactly_once() {
    let app = remediating_app(|_| {}).await;
    let container = Container::run("sentinel-fix", &[], &["sleep", "3600"]);
    let started = unix_now();
    let plan = ActionPlan::ContainerRestart {
        container: container.0.clone(),
    };
    let id = propose_for_approval(&app, &plan).await;

    let statuses = app.approve_concurrently(&id, 50).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let done = wait_for(&app, &id, Status::Resolved).await;
    assert!(done.execution.is_some());
    let until = unix_now() + 1;
    let events = docker(&[
        "events",
        "--since",
        &started.to_string(),
        "--until",
        &until.to_string(),
        "--filter",
        &format!("container={}", container.0),
        "--filter",
        "event=restart",
        "--format",
        "{{.Action}}",
    ]);
    let restarts = events.lines().filter(|l| *l == "restart").count();
    assert_eq!(restarts, 1, "docker events: {events:?}");
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn an_approval_is_pinned_to_the_state_it_saw() {
    let app = remediating_app(|_| {}).await;
    let container = Container::run("sentinel-fix", &["--memory", "64m"], &["sleep", "3600"]);
    let plan = ActionPlan::ContainerMemoryLimit {
        container: container.0.clone(),
        factor: 1.5,
    };
    let id = propose_for_approval(&app, &plan).await;
    // Someone changes the limit by hand after the proposal.
    docker(&[
        "update",
        "--memory",
        "80m",
        "--memory-swap",
        "160m",
        &container.0,
    ]);
    let approved = app
        .post(
            &format!("/api/incidents/{id}/approve"),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(approved.status, 200);
    let again = wait_for(&app, &id, Status::AwaitingApproval).await;
    assert!(again.execution.is_none(), "nothing ran");
    assert_eq!(
        container.memory_limit(),
        80 << 20,
        "the hand-set limit is untouched"
    );
    let last = again.timeline.last().unwrap();
    assert!(last.message.contains("target changed"), "{last:?}");
    assert_eq!(
        again.snapshot.as_ref().unwrap().to_json()["memory"],
        80 << 20
    );
    // Approving the new state runs the fix on it.
    let approved = app
        .post(
            &format!("/api/incidents/{id}/approve"),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(approved.status, 200);
    let verified = wait_for(&app, &id, Status::Resolved).await;
    assert_eq!(
        verified.execution.unwrap().after.unwrap().to_json()["memory"],
        120 << 20
    );
}

#[tokio::test]
async fn an_unanswered_approval_request_expires_and_escalates() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.approval_timeout = sentinel::config::HumanDuration(Duration::from_secs(1));
    })
    .await;
    let incident = app.trigger("memory").await;
    app.await_approval(&incident.id, sentinel::domain::Risk::Medium)
        .await;
    let now = sentinel::domain::Timestamp::now();
    let expired = sentinel::pipeline::remediate::expire_approvals(app.sentinel.pipeline(), now)
        .await
        .unwrap();
    assert_eq!(
        expired, 0,
        "not yet: the request is younger than the timeout"
    );
    let later = now.saturating_add(Duration::from_secs(2));
    let expired = sentinel::pipeline::remediate::expire_approvals(app.sentinel.pipeline(), later)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let escalated = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(escalated.status, Status::Escalated);
    assert!(escalated
        .timeline
        .last()
        .unwrap()
        .message
        .contains("expired"));
    let events = audit_events(&app, &incident.id).await;
    assert!(events.contains(&"ApprovalExpired".to_owned()), "{events:?}");
    // An approval after expiry is a conflict and changes nothing.
    let late = app
        .post(
            &format!("/api/incidents/{}/approve", incident.id),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(late.status, 409);
}

#[tokio::test]
async fn the_circuit_breaker_opens_after_the_budget_and_shows_in_status() {
    let app = remediating_app(|s| {
        s.actions.auto_budget_per_hour = 2;
    })
    .await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut statuses = Vec::new();
    for round in 0..3 {
        std::fs::write(
            logs.join(format!("round-{round}.log")),
            vec![b'x'; 120_000_000],
        )
        .unwrap();
        // A real breach: a test alert's cleanup would only be a dry run, and spend no budget.
        let incident = detect(&app, "sandbox_size:sandbox").await;
        let settled = loop {
            let current = app.store.get_incident(&incident.id).await.unwrap().unwrap();
            if matches!(
                current.status,
                Status::Resolved | Status::AwaitingApproval | Status::Escalated
            ) {
                break current;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        statuses.push(settled.status);
    }
    assert_eq!(
        statuses,
        [Status::Resolved, Status::Resolved, Status::AwaitingApproval],
        "the third automatic cleanup within the hour waits for approval"
    );
    let status = app.get("/api/status", None).await.body;
    let breaker = &status["breakers"][0];
    assert_eq!(breaker["key"], "sandbox_cleanup:sandbox");
    assert_eq!(breaker["automatic_last_hour"], 2);
    assert_eq!(breaker["state"], "open");
    let waiting = app
        .get("/api/incidents?status=open", Some(&app.keys.viewer))
        .await;
    let last = waiting.body[0]["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{last}"
    );
}

/// The configured LLM analyzer end to end: its answer is used when it is valid; when it keeps
/// proposing something outside the catalogue, the rules decide and the timeline says so.
#[tokio::test]
async fn the_llm_analyzer_is_used_and_falls_back_to_the_rules_on_forbidden_proposals() {
    use crate::llm_double::{LlmDouble, Reply};
    const KEY: &str = "llm-test-key";
    let double = LlmDouble::start(Some(KEY)).await;
    let app = remediating_app(|s| {
        s.analyzer.kind = sentinel::config::AnalyzerKind::Llm;
        s.llm.url = double.url.clone();
        s.llm.timeout = sentinel::config::HumanDuration(Duration::from_secs(2));
        s.secrets.llm_api_key = Some(secrecy::SecretString::from(KEY));
    })
    .await;
    let good = serde_json::json!({
        "root_cause": "load spike in the host's batch jobs",
        "proposed_action": {"action": "notify_only", "params": {}},
        "risk_assessment": "low", "confidence": 0.7, "evidence": ["metric-1"]
    });
    double.script([Reply::content(format!(
        "<think>cpu is high</think>\n```json\n{good}\n```"
    ))]);
    let cpu = app.trigger("cpu").await;
    let analyzed = wait_for(&app, &cpu.id, Status::Escalated).await;
    assert_eq!(
        analyzed.analyzer.as_deref(),
        Some("llm:deepseek/deepseek-r1")
    );
    assert_eq!(
        analyzed.root_cause.as_deref(),
        Some("load spike in the host's batch jobs")
    );

    let forbidden = serde_json::json!({
        "root_cause": "disk is full",
        "proposed_action": {"action": "shell", "params": {"cmd": "rm -rf /"}},
        "risk_assessment": "low", "confidence": 0.9, "evidence": []
    })
    .to_string();
    double.script((0..3).map(|_| Reply::content(forbidden.clone())));
    let disk = app.trigger("disk").await;
    let decided = wait_for(&app, &disk.id, Status::Escalated).await;
    assert_eq!(
        decided.analyzer.as_deref(),
        Some("rules"),
        "{:#?}",
        decided.timeline
    );
    let fell_back = decided
        .timeline
        .iter()
        .find(|e| e.step == "analyzer_fell_back")
        .expect("the fallback is on the timeline");
    assert!(fell_back.message.contains("shell"), "{}", fell_back.message);
    assert_eq!(
        double.requests().len(),
        4,
        "one good answer, then exactly three tries"
    );
    // The forbidden proposal never ran: the rules' proposal is what the incident carries.
    let proposed = decided.proposed_action.unwrap();
    assert_ne!(proposed.action.as_str(), "shell");
}

/// 120 MB of random (incompressible) logs at the default 100 MB threshold: the automatic
/// cleanup leaves the sandbox, quarantine included, below the threshold (a walk of the test's
/// own); the card said beforehand how much stays restorable; the records carry the figures
/// measured on disk; a rollback restores what the quarantine held, byte for byte, and says
/// what it could not.
#[tokio::test]
async fn an_automatic_cleanup_frees_the_disk_and_a_rollback_says_what_it_could_not_restore() {
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    const MB: u64 = 1_000_000;
    let app = remediating_app(|_| {}).await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut digests = std::collections::BTreeMap::new();
    let mut content = vec![0u8; 10 * MB as usize];
    let now = std::time::SystemTime::now();
    for i in 0..12u64 {
        rand::rng().fill_bytes(&mut content);
        let path = logs.join(format!("app-{i:02}.log"));
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        file.set_modified(now - Duration::from_secs(60 * (12 - i)))
            .unwrap();
        digests.insert(path, Sha256::digest(&content).to_vec());
    }
    let walked = |root: &std::path::Path| -> u64 {
        walkdir::WalkDir::new(root)
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    assert!(walked(&app.sandbox) >= 120 * MB);

    let incident = detect(&app, "sandbox_size:sandbox").await;
    let resolved = wait_for(&app, &incident.id, Status::Resolved).await;
    let after_bytes = walked(&app.sandbox);
    // Before execution, the proposal said how much stays restorable.
    let snapshot = resolved.snapshot.clone().expect("a snapshot").to_json();
    assert_eq!(snapshot["restorable_bytes"], 50 * MB, "{snapshot}");
    assert_eq!(snapshot["deleted_bytes"], 70 * MB, "{snapshot}");
    let preview = sentinel::slack::blocks::proposal_changes(
        &serde_json::to_value(resolved.proposed_action.as_ref().unwrap()).unwrap(),
        &snapshot,
    );
    assert!(
        preview
            .iter()
            .any(|l| l.contains("about 50 MB or more stays restorable")
                && l.contains("up to about 70 MB is deleted for good")),
        "{preview:?}"
    );
    // After: what is on disk.
    let execution = resolved.execution.clone().expect("an execution record");
    let after = &execution.after.as_ref().expect("finished").to_json();
    let quarantine = app
        .sandbox
        .join(sentinel::runtime::cleanup::QUARANTINE_DIR)
        .join(incident.id.as_str());
    let stored = walked(&quarantine.join("zstd"));
    eprintln!(
        "sandbox after the cleanup: {after_bytes} bytes by a walk (quarantine {} bytes, of \
         which {stored} compressed files); record: {after}",
        walked(&quarantine)
    );
    assert!(after_bytes < 100 * MB, "{after_bytes} bytes left");
    assert_eq!(after["stored_bytes"], stored, "{after}");
    assert_eq!(after["moved_bytes"], 120 * MB);
    assert_eq!(after["restorable_files"], 4, "{after}");
    assert_eq!(after["deleted_files"], 8, "{after}");
    assert_eq!(after["deleted_bytes"], 80 * MB);
    assert_eq!(after["freed_bytes"], 120 * MB - stored);
    let executed = resolved
        .timeline
        .iter()
        .find(|e| e.step == "verifying")
        .expect("the executed step");
    assert!(
        executed
            .message
            .contains("8 files (80 MB) were deleted for good"),
        "{}",
        executed.message
    );
    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    let recorded = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["incident"] == incident.id.as_str() && e["event"] == "ActionExecuted")
        .expect("ActionExecuted audited")
        .clone();
    assert_eq!(&recorded["details"]["after"], after, "{recorded}");

    // The rollback: the four newest come back byte for byte; it says what it could not.
    let rolled = app
        .post(
            &format!("/api/incidents/{}/rollback", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    let rolled_back = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    let message = &rolled_back
        .timeline
        .iter()
        .rev()
        .find(|e| e.step == "rolled_back")
        .expect("a rolled_back step")
        .message;
    assert!(
        message.contains("restored 4 files (40 MB) from the quarantine, byte for byte")
            && message.contains("8 files (80 MB) could not be restored"),
        "{message}"
    );
    let mut restored = 0;
    for (i, (path, digest)) in digests.iter().enumerate() {
        match std::fs::read(path) {
            Ok(content) => {
                assert!(i >= 8, "{path:?} is not one of the newest");
                assert_eq!(&Sha256::digest(&content).to_vec(), digest, "{path:?}");
                restored += 1;
            }
            Err(_) => assert!(i < 8, "{path:?} is missing"),
        }
    }
    assert_eq!(restored, 4);
    assert!(!quarantine.exists(), "the emptied quarantine is removed");
}

/// kind left at its default ("auto"), with only the LLM URL and a key from the environment:
/// the LLM is asked; its cleanup for a stopped container is refused, recorded on the
/// timeline and in the audit, and the rules' proposal (start it) waits for approval.
#[tokio::test]
async fn the_default_analyzer_asks_the_llm_and_a_proposal_outside_the_table_is_refused() {
    use crate::llm_double::{LlmDouble, Reply};
    const KEY: &str = "llm-auto-key";
    let double = LlmDouble::start(Some(KEY)).await;
    let env = std::collections::BTreeMap::from([
        ("SENTINEL_LLM_URL".to_owned(), double.url.clone()),
        ("SENTINEL_LLM_API_KEY".to_owned(), KEY.to_owned()),
    ]);
    let from_env = sentinel::config::Settings::load(&sentinel::config::Sources {
        file: None,
        env: &|name| env.get(name).cloned(),
    })
    .unwrap();
    assert_eq!(from_env.analyzer.kind, sentinel::config::AnalyzerKind::Auto);
    let cleanup = serde_json::json!({
        "root_cause": "the disk fills with logs",
        "proposed_action": {"action": "sandbox_cleanup", "params": {"dirs": ["logs"]}},
        "risk_assessment": "low", "confidence": 0.9, "evidence": ["docker-1"]
    })
    .to_string();
    // Other tests' containers on this Docker may open incidents too: all get this answer.
    double.script((0..50).map(|_| Reply::content(cleanup.clone())));
    let app = remediating_app(|s| {
        s.llm = from_env.llm.clone();
        s.llm.timeout = sentinel::config::HumanDuration(Duration::from_secs(5));
        s.secrets.llm_api_key = from_env.secrets.llm_api_key.clone();
        s.secrets.llm_api_key_from = from_env.secrets.llm_api_key_from;
        // Only this test's container: other tests' incidents would push this one's audit
        // entries past the first page the test reads.
        s.monitor.container_include =
            vec![sentinel::domain::ContainerSelector::parse("name:sentinel-auto-llm-*").unwrap()];
    })
    .await;
    let container = Container::run("sentinel-auto-llm", &[], &["sleep", "3600"]);
    docker(&["stop", "-t", "1", &container.0]);
    let incident = detect(&app, &format!("container_down:{}", container.0)).await;
    let waiting = wait_for(&app, &incident.id, Status::AwaitingApproval).await;
    assert!(!double.requests().is_empty(), "the LLM was asked");
    assert_eq!(waiting.analyzer.as_deref(), Some("rules"));
    assert_eq!(
        waiting.proposed_action.as_ref().unwrap().plan().unwrap(),
        ActionPlan::ContainerStart {
            container: container.0.clone()
        }
    );
    let refused = waiting
        .timeline
        .iter()
        .find(|e| e.step == "proposal_refused")
        .expect("the refusal is on the timeline");
    assert!(
        refused
            .message
            .contains("sandbox_cleanup is not allowed for a container_down incident"),
        "{}",
        refused.message
    );
    let events = audit_events(&app, &incident.id).await;
    assert!(events.iter().any(|e| e == "ProposalRefused"), "{events:?}");
    // Nothing was cleaned.
    assert!(!app
        .sandbox
        .join(sentinel::runtime::cleanup::QUARANTINE_DIR)
        .exists());
}
