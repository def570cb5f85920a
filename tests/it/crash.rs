//! The `kill -9` matrix (SPEC §12.1): a remediation interrupted at any point moves on by
//! itself after a restart, runs its side effect at most once, and says so in the audit.
//!
//! Each run makes a fresh container from the test image, on `--network none`, whose shell
//! ignores SIGTERM, so every stop Docker makes takes its 10 s timeout: a wide window to kill
//! Sentinel while Docker works. The real binary (`sentinel serve`) runs as a child process on
//! a fresh data directory (embedded store) or Redis key prefix, monitoring every second with a
//! 2 s `settle`. The container goes down; the monitor opens a `container_down` incident whose
//! fix waits for an operator's approval, given over the HTTP API. Then the process is killed
//! with SIGKILL at one of the kill points:
//!
//! | kill point | fix | killed when |
//! |---|---|---|
//! | `after_approval` | `container_start` | the approval's 200 arrives |
//! | `after_intent` | `container_start` | the API shows `executing` (polled every 5 ms) |
//! | `during_docker_call` | `container_restart` | Docker reports the restart's SIGTERM (the call then lasts 10 s) |
//! | `after_docker_call` | `container_start` | Docker reports the `start` (Sentinel has not recorded it yet) |
//! | `during_verification` | `container_start` | the API shows `verifying` |
//! | `during_rollback` | `container_start` | after an admin's rollback, Docker reports the undo's SIGTERM |
//!
//! `container_start` answers a container killed by `docker kill` (exited 137);
//! `container_restart` answers a running container whose health check fails, which a restart
//! repairs. Docker's events for the container (`docker events`, a child process started
//! before the approval) are read by a thread that fires the Docker-triggered kills the instant
//! the event arrives.
//!
//! Between the kill and the restart the state is read straight from the store, which says
//! where the kill landed (a miss is reported, not failed: the invariants hold wherever it
//! falls). Then a new process starts on the same state and each run checks: the incident
//! reaches a terminal status (resolved, rolled back, escalated, failed or rejected, with no
//! rollback under way) within `settle` + 60 s; every other incident that existed at the kill
//! has no work under way either (waiting for a person is fine); at most one action per step
//! reached Docker (one `start` for a start, one `restart` and one `start` for a restart, one
//! `stop` and one SIGTERM for the undo); when work was under way at the kill, the audit names
//! the interruption after it (`RemediationResumed` or `ExecutionReconciled`), and the chain
//! verifies.
//!
//! `cargo test` makes one run per kill point and backend (the two backends run side by
//! side); `SENTINEL_CRASH_RUNS=<n>` makes n (`bench/crash.sh`). Each test prints one line per
//! run and one summary line per (backend, kill point), then fails with every failed check.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sentinel::domain::{Incident, IncidentId, Status};
use sentinel::store::embedded::EmbeddedStore;
use sentinel::store::redis::RedisStore;
use sentinel::store::{IncidentQuery, Store};
use serde_json::Value;

use crate::containers::IMAGE;
use crate::helpers::{free_port, redis_store, redis_url, unique_prefix, Backend};

/// The `settle` the runs use: how long after a fix Sentinel measures again.
const SETTLE: Duration = Duration::from_secs(2);

/// After a restart every incident must have no work under way within this (SPEC: `settle`
/// + 60 s).
const TERMINAL_WITHIN: Duration = Duration::from_secs(SETTLE.as_secs() + 60);

/// How long a freshly started process may take to answer `/readyz` with 200.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Bound on each wait before the kill (detection, approval, execution, resolution).
const STAGE_WITHIN: Duration = Duration::from_secs(40);

/// The shell of every test container: it ignores SIGTERM, so a stop takes Docker's 10 s.
const STUBBORN: &str = "rm -f /tmp/broken; trap '' TERM; while true; do sleep 1; done";

/// Audit events that name an interruption by a restart.
const INTERRUPTION_EVENTS: [&str; 2] = ["RemediationResumed", "ExecutionReconciled"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    AfterApproval,
    AfterIntent,
    DuringDockerCall,
    AfterDockerCall,
    DuringVerification,
    DuringRollback,
}

/// Which fix a kill point runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// `container_start` of a container killed by `docker kill`.
    Start,
    /// `container_restart` of a running container whose health check fails.
    Restart,
}

impl KillPoint {
    fn name(self) -> &'static str {
        match self {
            KillPoint::AfterApproval => "after_approval",
            KillPoint::AfterIntent => "after_intent",
            KillPoint::DuringDockerCall => "during_docker_call",
            KillPoint::AfterDockerCall => "after_docker_call",
            KillPoint::DuringVerification => "during_verification",
            KillPoint::DuringRollback => "during_rollback",
        }
    }

    fn fix(self) -> Fix {
        match self {
            KillPoint::DuringDockerCall => Fix::Restart,
            _ => Fix::Start,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_right_after_the_approval_is_acknowledged() {
    matrix(KillPoint::AfterApproval).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_right_after_the_intent_is_written() {
    matrix(KillPoint::AfterIntent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_the_docker_call() {
    matrix(KillPoint::DuringDockerCall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_after_the_docker_call_before_its_record() {
    matrix(KillPoint::AfterDockerCall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_verification() {
    matrix(KillPoint::DuringVerification).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_the_rollback() {
    matrix(KillPoint::DuringRollback).await;
}

/// How many runs per kill point and backend: `SENTINEL_CRASH_RUNS`, else 1.
fn runs() -> usize {
    match std::env::var("SENTINEL_CRASH_RUNS") {
        Ok(value) => value
            .trim()
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("SENTINEL_CRASH_RUNS={value:?} is not a positive number")),
        Err(_) => 1,
    }
}

/// Runs the kill point on both backends side by side, prints the runs and a summary per
/// backend, and fails with every failed check.
async fn matrix(point: KillPoint) {
    // Fail now, naming what is missing, when Redis does not answer.
    drop(redis_store().await);
    let runs = runs();
    let (embedded, redis) = tokio::join!(
        tokio::spawn(series(Backend::Embedded, point, runs)),
        tokio::spawn(series(Backend::Redis, point, runs)),
    );
    let mut failures = Vec::new();
    for records in [
        embedded.expect("the runs finish"),
        redis.expect("the runs finish"),
    ] {
        println!("{}", summary(&records));
        for record in &records {
            for failure in &record.failures {
                failures.push(format!(
                    "{} {} run {}: {failure}",
                    backend_name(record.backend),
                    point.name(),
                    record.run
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed check(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

async fn series(backend: Backend, point: KillPoint, runs: usize) -> Vec<RunRecord> {
    let mut records = Vec::new();
    for run in 1..=runs {
        let record = run_once(backend, point, run).await;
        println!("{}", record.line());
        records.push(record);
    }
    records
}

/// What one run found.
struct RunRecord {
    backend: Backend,
    point: KillPoint,
    run: usize,
    /// Whether the kill fell where the kill point means.
    landed: bool,
    /// The incident as the store held it at the kill, in words.
    at_kill: String,
    /// From the restart to no work under way, when that happened.
    to_terminal: Option<Duration>,
    final_status: String,
    /// The most Docker actions seen for one step (the fix, or its undo).
    max_actions_per_step: usize,
    /// The Docker actions counted, in words.
    docker: String,
    failures: Vec<String>,
}

impl RunRecord {
    fn new(backend: Backend, point: KillPoint, run: usize) -> RunRecord {
        RunRecord {
            backend,
            point,
            run,
            landed: false,
            at_kill: "(not killed)".to_owned(),
            to_terminal: None,
            final_status: "?".to_owned(),
            max_actions_per_step: 0,
            docker: String::new(),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, failure: impl Into<String>) {
        self.failures.push(failure.into());
    }

    fn line(&self) -> String {
        format!(
            "crash run: backend={} point={} run={} landed={} at_kill=[{}] final={} \
             to_terminal={} docker=[{}] failures={}{}",
            backend_name(self.backend),
            self.point.name(),
            self.run,
            if self.landed { "yes" } else { "MISSED" },
            self.at_kill,
            self.final_status,
            self.to_terminal.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1}s", d.as_secs_f64())
            ),
            self.docker,
            self.failures.len(),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.failures.join("; "))
            }
        )
    }
}

fn summary(records: &[RunRecord]) -> String {
    let Some(first) = records.first() else {
        return "crash summary: no runs".to_owned();
    };
    let max_terminal = records
        .iter()
        .filter_map(|r| r.to_terminal)
        .max()
        .map_or_else(|| "n/a".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()));
    let never = records.iter().filter(|r| r.to_terminal.is_none()).count();
    format!(
        "crash summary: backend={} point={} runs={} landed={} max_to_terminal={}{} \
         max_docker_actions_per_step={} failures={}",
        backend_name(first.backend),
        first.point.name(),
        records.len(),
        records.iter().filter(|r| r.landed).count(),
        max_terminal,
        if never > 0 {
            format!(" (never terminal: {never})")
        } else {
            String::new()
        },
        records
            .iter()
            .map(|r| r.max_actions_per_step)
            .max()
            .unwrap_or(0),
        records.iter().filter(|r| !r.failures.is_empty()).count(),
    )
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Embedded => "embedded",
        Backend::Redis => "redis",
    }
}

/// One run: a container, a process, an incident, an approval, a kill, a restart, the checks.
async fn run_once(backend: Backend, point: KillPoint, run: usize) -> RunRecord {
    let mut record = RunRecord::new(backend, point, run);
    let container = match TestContainer::broken(point.fix()).await {
        Ok(container) => container,
        Err(e) => {
            record.fail(e);
            return record;
        }
    };
    let setup = Setup::new(backend);
    let server = setup.start().await;
    if let Err(e) = drive_and_kill(&setup, server, &container, point, &mut record).await {
        record.fail(e);
    }
    record
}

/// Everything after the process started; `Err` when the run cannot go on.
async fn drive_and_kill(
    setup: &Setup,
    server: Server,
    container: &TestContainer,
    point: KillPoint,
    record: &mut RunRecord,
) -> Result<(), String> {
    let fingerprint = format!("container_down:{}", container.name);
    let waiting = server
        .wait_for_incident(&fingerprint, STAGE_WITHIN, |i| {
            i["status"] == "awaiting_approval"
        })
        .await
        .ok_or_else(|| format!("no {fingerprint} incident awaiting approval"))?;
    let id = waiting["id"].as_str().unwrap_or_default().to_owned();
    let expected_action = match point.fix() {
        Fix::Start => "container_start",
        Fix::Restart => "container_restart",
    };
    let proposed = waiting["proposed_action"]["action"].as_str().unwrap_or("");
    if proposed != expected_action {
        return Err(format!(
            "the rules proposed {proposed:?}, not {expected_action}: {waiting}"
        ));
    }

    let events = DockerEvents::watch(&container.name);
    let target = Arc::clone(&server.child);
    match point {
        KillPoint::DuringDockerCall => events.arm("kill", Some("15"), &target),
        KillPoint::AfterDockerCall => events.arm("start", None, &target),
        _ => {}
    }
    let (status, body) = server
        .send_as(
            &setup.operator_key,
            reqwest::Method::POST,
            &format!("/api/incidents/{id}/approve"),
        )
        .await;
    if status != 200 {
        return Err(format!("the approval answered {status}: {body}"));
    }
    let mut rollback_requested_at = None;
    match point {
        KillPoint::AfterApproval => server.kill(),
        KillPoint::AfterIntent => {
            server
                .poll_incident(&id, STAGE_WITHIN, Duration::from_millis(5), |i| {
                    i["status"] != "approved"
                })
                .await;
            server.kill();
        }
        KillPoint::DuringDockerCall | KillPoint::AfterDockerCall => {
            match events.wait_fired(STAGE_WITHIN).await {
                Some(at) => server.killed(at),
                None => {
                    server.kill();
                    record.fail("the Docker event to kill on never came");
                }
            }
        }
        KillPoint::DuringVerification => {
            server
                .poll_incident(&id, STAGE_WITHIN, Duration::from_millis(20), |i| {
                    !matches!(i["status"].as_str(), Some("approved" | "executing"))
                })
                .await;
            server.kill();
        }
        KillPoint::DuringRollback => {
            let resolved = server
                .poll_incident(&id, STAGE_WITHIN, Duration::from_millis(50), |i| {
                    terminal(i)
                })
                .await;
            if resolved.as_ref().map(|i| &i["status"]) != Some(&Value::from("resolved")) {
                server.kill();
                return Err(format!(
                    "the fix did not resolve the incident: {resolved:?}"
                ));
            }
            events.arm("kill", Some("15"), &target);
            rollback_requested_at = Some(SystemTime::now());
            // The undo takes Docker's 10 s stop: the request is still open when the kill
            // comes, and then fails; only the kill matters.
            let request = server
                .client
                .post(format!("{}/api/incidents/{id}/rollback", server.base))
                .header("x-api-key", &setup.admin_key)
                .timeout(Duration::from_secs(30))
                .send();
            let in_flight = tokio::spawn(async move { drop(request.await) });
            match events.wait_fired(STAGE_WITHIN).await {
                Some(at) => server.killed(at),
                None => {
                    server.kill();
                    record.fail("the undo's SIGTERM never reached Docker");
                }
            }
            in_flight.abort();
        }
    }
    let killed_at = server.reap();

    // Where the kill landed, read from the store while no process runs.
    let store = setup.open_store().await;
    let id = IncidentId::parse(&id).map_err(|e| format!("incident id {id}: {e}"))?;
    let at_kill = store
        .get_incident(&id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the incident is gone from the store")?;
    let existing: Vec<IncidentId> = store
        .list_incidents(IncidentQuery {
            open_only: false,
            limit: 10_000,
        })
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|i| i.id)
        .collect();
    let audit_at_kill = store.list_audit().await.map_err(|e| e.to_string())?.len();
    drop(store);

    let seen_at_kill = events.before(killed_at);
    let rolling_at_kill = at_kill
        .execution
        .as_ref()
        .is_some_and(sentinel::domain::Execution::rolling_back);
    let count = |list: &[DockerEvent], action: &str, signal: Option<&str>| {
        list.iter()
            .filter(|e| e.action == action && (signal.is_none() || e.signal.as_deref() == signal))
            .count()
    };
    record.landed = match point {
        KillPoint::AfterApproval => at_kill.status == Status::Approved,
        KillPoint::AfterIntent => at_kill.status == Status::Executing,
        KillPoint::DuringDockerCall => {
            at_kill.status == Status::Executing
                && count(&seen_at_kill, "kill", Some("15")) == 1
                && count(&seen_at_kill, "restart", None) == 0
        }
        KillPoint::AfterDockerCall => {
            at_kill.status == Status::Executing && count(&seen_at_kill, "start", None) == 1
        }
        KillPoint::DuringVerification => at_kill.status == Status::Verifying,
        KillPoint::DuringRollback => rolling_at_kill && count(&seen_at_kill, "stop", None) == 0,
    };
    record.at_kill = format!(
        "{}{}, docker before kill: {}",
        at_kill.status,
        if rolling_at_kill {
            ", rollback under way"
        } else {
            ""
        },
        describe(&seen_at_kill)
    );
    let under_way_at_kill =
        rolling_at_kill || (at_kill.status != Status::AwaitingApproval && !done(&at_kill));

    // A new process on the same state: everything must settle by itself.
    let restarted = Instant::now();
    let server = setup.start().await;
    let deadline = restarted + TERMINAL_WITHIN;
    let mut last = Value::Null;
    let mut others_busy = Vec::new();
    loop {
        let (status, list) = server
            .send_as(
                &setup.admin_key,
                reqwest::Method::GET,
                "/api/incidents?status=all",
            )
            .await;
        if status == 200 {
            let all = list.as_array().cloned().unwrap_or_default();
            if let Some(incident) = all.iter().find(|i| i["id"] == id.as_str()) {
                last = incident.clone();
            }
            others_busy = all
                .iter()
                .filter(|i| i["id"] != id.as_str())
                .filter(|i| existing.iter().any(|e| i["id"] == e.as_str()))
                .filter(|i| !terminal(i) && i["status"] != "awaiting_approval")
                .map(|i| format!("{} {} {}", i["id"], i["fingerprint"], i["status"]))
                .collect();
            if terminal(&last) && others_busy.is_empty() {
                record.to_terminal = Some(restarted.elapsed());
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_step = last["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|e| e["step"].as_str())
        .unwrap_or("?");
    record.final_status = format!(
        "{}{}{}",
        last["status"].as_str().unwrap_or("?"),
        if rolling_json(&last) {
            "+rolling_back"
        } else if !last["execution"]["rolled_back_at"].is_null() {
            "+rolled_back_at"
        } else {
            ""
        },
        if last["status"] == last_step {
            String::new()
        } else {
            format!("(last step {last_step})")
        }
    );
    if record.to_terminal.is_none() {
        record.fail(format!(
            "not terminal within {TERMINAL_WITHIN:?} after the restart: the incident is {}, \
             others under way: {others_busy:?}; timeline: {}; the restarted process logged:\n{}",
            record.final_status,
            last["timeline"],
            log_tail(&server.stderr, 30)
        ));
    }

    // Let a late Docker action show itself before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = events.all();
    let (fix_events, undo_events): (Vec<DockerEvent>, Vec<DockerEvent>) =
        match rollback_requested_at {
            Some(at) => all.into_iter().partition(|e| e.at < at),
            None => (all, Vec::new()),
        };
    let mut per_step = vec![];
    match point.fix() {
        Fix::Start => per_step.push(("start", count(&fix_events, "start", None))),
        Fix::Restart => {
            per_step.push(("restart", count(&fix_events, "restart", None)));
            per_step.push(("start", count(&fix_events, "start", None)));
            per_step.push(("SIGTERM", count(&fix_events, "kill", Some("15"))));
        }
    }
    if point == KillPoint::DuringRollback {
        per_step.push(("undo stop", count(&undo_events, "stop", None)));
        per_step.push(("undo SIGTERM", count(&undo_events, "kill", Some("15"))));
        per_step.push(("undo start", count(&undo_events, "start", None)));
    }
    record.docker = per_step
        .iter()
        .map(|(what, n)| format!("{what}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    record.max_actions_per_step = per_step.iter().map(|(_, n)| *n).max().unwrap_or(0);
    for (what, n) in &per_step {
        if *n > 1 {
            record.fail(format!(
                "{n} × {what} reached Docker for one step; events: {}",
                describe(&events.all())
            ));
        }
    }
    if point == KillPoint::DuringRollback && !last["execution"]["rolled_back_at"].is_null() {
        let stopped = count(&undo_events, "stop", None);
        if stopped != 1 {
            record.fail(format!(
                "recorded as rolled back, yet Docker stopped it {stopped} times"
            ));
        }
    }
    // An interrupted rollback is completed or reported (SPEC §12.1).
    if rolling_at_kill
        && last["execution"]["rolled_back_at"].is_null()
        && !last["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["step"] == "rollback_failed"))
    {
        record.fail("the interrupted rollback was neither completed nor reported");
    }

    // The audit names the interruption, after the kill, in a sound chain.
    let (status, audit) = server
        .send_as(&setup.admin_key, reqwest::Method::GET, "/api/audit")
        .await;
    if status != 200 {
        record.fail(format!("GET /api/audit answered {status}: {audit}"));
        return Ok(());
    }
    if audit["chain"]["verified"] != true {
        record.fail(format!(
            "the audit chain does not verify: {}",
            audit["chain"]
        ));
    }
    let after_kill: Vec<String> = audit["entries"]
        .as_array()
        .map(|e| e.as_slice())
        .unwrap_or_default()
        .iter()
        .skip(audit_at_kill)
        .filter(|e| e["incident"] == id.as_str())
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect();
    if under_way_at_kill
        && !after_kill
            .iter()
            .any(|e| INTERRUPTION_EVENTS.contains(&e.as_str()))
    {
        record.fail(format!(
            "killed at {} with work under way, yet no audit entry after the restart names the \
             interruption ({INTERRUPTION_EVENTS:?}); audited after the restart: {after_kill:?}",
            record.at_kill
        ));
    }
    let steps: Vec<&str> = last["timeline"]
        .as_array()
        .map(|t| t.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    if at_kill.status == Status::Executing && !rolling_at_kill && !steps.contains(&"reconciled") {
        record.fail(format!(
            "killed while executing, yet no `reconciled` step: {steps:?}"
        ));
    }
    if rolling_at_kill && !steps.contains(&"rollback_resumed") {
        record.fail(format!(
            "killed during a rollback, yet no `rollback_resumed` step: {steps:?}"
        ));
    }
    drop(server);
    Ok(())
}

/// Whether a stored incident has nothing left to do (a terminal status, no rollback under
/// way).
fn done(incident: &Incident) -> bool {
    matches!(
        incident.status,
        Status::Resolved
            | Status::RolledBack
            | Status::Escalated
            | Status::Failed
            | Status::Rejected
    ) && !incident
        .execution
        .as_ref()
        .is_some_and(sentinel::domain::Execution::rolling_back)
}

/// The same for an incident as the API shows it.
fn terminal(incident: &Value) -> bool {
    matches!(
        incident["status"].as_str(),
        Some("resolved" | "rolled_back" | "escalated" | "failed" | "rejected")
    ) && !rolling_json(incident)
}

fn rolling_json(incident: &Value) -> bool {
    let execution = &incident["execution"];
    !execution["rollback"].is_null() && execution["rolled_back_at"].is_null()
}

/// A test container, removed when dropped.
struct TestContainer {
    name: String,
}

impl TestContainer {
    /// A container in need of `fix`: killed (exited 137) for a start; running with a failing
    /// health check, which a restart repairs, for a restart.
    async fn broken(fix: Fix) -> Result<TestContainer, String> {
        let name = format!("sentinel-crash-{}", &IncidentId::generate().as_str()[4..]);
        let container = TestContainer { name };
        let name = container.name.as_str();
        let mut run = vec!["run", "-d", "--network", "none", "--name", name];
        if fix == Fix::Restart {
            run.extend([
                "--health-cmd",
                "test ! -f /tmp/broken",
                "--health-interval",
                "1s",
                "--health-timeout",
                "1s",
                "--health-retries",
                "1",
            ]);
        }
        run.extend([IMAGE, "sh", "-c", STUBBORN]);
        docker(&run).await?;
        match fix {
            Fix::Start => docker(&["kill", name]).await?,
            Fix::Restart => docker(&["exec", name, "sh", "-c", ": > /tmp/broken"]).await?,
        };
        Ok(container)
    }
}

impl Drop for TestContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Runs the docker CLI without blocking the runtime.
async fn docker(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("the docker CLI does not run ({e}); install docker.io"))?;
    if !output.status.success() {
        return Err(format!(
            "docker {args:?} failed: {} — these tests need a running Docker daemon and the \
             image {IMAGE}: run `scripts/services.sh start`",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// One Docker event for the container.
#[derive(Debug, Clone)]
struct DockerEvent {
    at: SystemTime,
    action: String,
    signal: Option<String>,
}

fn describe(events: &[DockerEvent]) -> String {
    let shown: Vec<String> = events
        .iter()
        .filter(|e| !e.action.starts_with("exec_") && !e.action.starts_with("health_status"))
        .map(|e| match &e.signal {
            Some(signal) => format!("{}({signal})", e.action),
            None => e.action.clone(),
        })
        .collect();
    if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(",")
    }
}

/// A kill to fire from the reader thread when a matching event arrives.
struct Trigger {
    action: &'static str,
    signal: Option<&'static str>,
    target: Arc<Mutex<Child>>,
}

/// `docker events` for one container, from the moment it was started, read by a thread that
/// can SIGKILL a process the instant a given event arrives.
struct DockerEvents {
    child: Child,
    events: Arc<Mutex<Vec<DockerEvent>>>,
    trigger: Arc<Mutex<Option<Trigger>>>,
    fired: Arc<Mutex<Option<SystemTime>>>,
}

impl DockerEvents {
    fn watch(container: &str) -> DockerEvents {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &format!("{since:.3}"),
                "--filter",
                "type=container",
                "--filter",
                &format!("container={container}"),
                "--format",
                "{{.TimeNano}}|{{.Action}}|{{.Actor.Attributes.signal}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events starts");
        let stdout = child.stdout.take().expect("a pipe");
        let events = Arc::new(Mutex::new(Vec::new()));
        let trigger: Arc<Mutex<Option<Trigger>>> = Arc::new(Mutex::new(None));
        let fired = Arc::new(Mutex::new(None));
        {
            let (events, trigger, fired) = (events.clone(), trigger.clone(), fired.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.splitn(3, '|');
                    let (Some(nanos), Some(action), Some(signal)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let event = DockerEvent {
                        at: UNIX_EPOCH + Duration::from_nanos(nanos.parse().unwrap_or(0)),
                        action: action.to_owned(),
                        signal: (signal != "<no value>" && !signal.is_empty())
                            .then(|| signal.to_owned()),
                    };
                    let mut armed = trigger.lock().unwrap();
                    let matches = armed.as_ref().is_some_and(|t| {
                        t.action == event.action
                            && (t.signal.is_none() || t.signal == event.signal.as_deref())
                    });
                    if matches {
                        if let Some(t) = armed.take() {
                            let _ = t.target.lock().unwrap().kill();
                            *fired.lock().unwrap() = Some(SystemTime::now());
                        }
                    }
                    drop(armed);
                    events.lock().unwrap().push(event);
                }
            });
        }
        DockerEvents {
            child,
            events,
            trigger,
            fired,
        }
    }

    /// SIGKILLs `target` when the next `action` (with `signal`, if given) arrives.
    fn arm(&self, action: &'static str, signal: Option<&'static str>, target: &Arc<Mutex<Child>>) {
        *self.trigger.lock().unwrap() = Some(Trigger {
            action,
            signal,
            target: Arc::clone(target),
        });
    }

    /// When the armed kill fired, waiting up to `within`.
    async fn wait_fired(&self, within: Duration) -> Option<SystemTime> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(at) = *self.fired.lock().unwrap() {
                return Some(at);
            }
            if Instant::now() > deadline {
                *self.trigger.lock().unwrap() = None;
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all(&self) -> Vec<DockerEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The events Docker reported before `at`.
    fn before(&self, at: SystemTime) -> Vec<DockerEvent> {
        self.all().into_iter().filter(|e| e.at < at).collect()
    }
}

impl Drop for DockerEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run's state: a temporary directory (data, sandbox, config, logs), two API keys and, on
/// Redis, a key prefix; every process of the run is started from it.
struct Setup {
    backend: Backend,
    dir: tempfile::TempDir,
    config: PathBuf,
    prefix: String,
    admin_key: String,
    operator_key: String,
    client: reqwest::Client,
}

impl Setup {
    fn new(backend: Backend) -> Setup {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (admin_key, admin_sha) = sentinel::web::auth::new_key();
        let (operator_key, operator_sha) = sentinel::web::auth::new_key();
        let prefix = unique_prefix();
        let config = dir.path().join("sentinel.toml");
        let toml = format!(
            "interval = \"1s\"\nsettle = \"{settle}s\"\n\n\
             [[api_keys]]\nname = \"crash-admin\"\nrole = \"admin\"\nsha256 = \"{admin_sha}\"\n\n\
             [[api_keys]]\nname = \"crash-operator\"\nrole = \"operator\"\nsha256 = \"{operator_sha}\"\n\n\
             # Only containers open incidents: the host's signals never breach.\n\
             [thresholds]\n\
             host_memory = {{ warning = 100, critical = 100 }}\n\
             host_cpu = {{ warning = 100, critical = 100 }}\n\
             disk = {{ critical = 100 }}\n\
             network_latency = {{ warning = 100000000, critical = 100000000 }}\n\
             sandbox_size_mb = {{ warning = 100000000 }}\n\
             container_memory = {{ warning = 100, critical = 100 }}\n\n\
             # A restarted process takes the monitor over within seconds.\n\
             [monitor]\nfor = 1\nlease_ttl = \"3s\"\n\n\
             [actions]\nenabled = true\n\n\
             [store]\nredis_prefix = \"{prefix}\"\n",
            settle = SETTLE.as_secs(),
        );
        std::fs::write(&config, toml).expect("the configuration file is written");
        Setup {
            backend,
            dir,
            config,
            prefix,
            admin_key,
            operator_key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts `sentinel serve` and waits until it is ready. Retries on another port when the
    /// free port it picked was taken meanwhile.
    async fn start(&self) -> Server {
        for _ in 0..3 {
            let mut server = self.spawn();
            match server.wait_ready(backend_name(self.backend)).await {
                Ok(()) => return server,
                Err(stderr) if stderr.contains("cannot listen") => continue,
                Err(stderr) => panic!(
                    "sentinel ({}) did not become ready within {READY_WITHIN:?}; its stderr:\n{stderr}",
                    backend_name(self.backend)
                ),
            }
        }
        panic!("sentinel could not find a free port in three tries");
    }

    fn spawn(&self) -> Server {
        let port = free_port();
        let stderr_path = self.dir.path().join(format!("stderr-{port}.log"));
        let stderr = File::create(&stderr_path).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
        command
            .arg("serve")
            // Nothing inherited (SENTINEL_*, REDIS_URL, SLACK_*, …) may change what runs.
            .env_clear()
            .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("SENTINEL_DATA_DIR", self.data_dir())
            .env("SENTINEL_SANDBOX_DIR", self.dir.path().join("sandbox"))
            .env("SENTINEL_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if self.backend == Backend::Redis {
            command.env("REDIS_URL", redis_url());
        }
        let child = command.spawn().expect("the sentinel binary starts");
        Server {
            child: Arc::new(Mutex::new(child)),
            base: format!("http://127.0.0.1:{port}"),
            stderr: stderr_path,
            admin_key: self.admin_key.clone(),
            client: self.client.clone(),
            killed_at: Mutex::new(None),
        }
    }

    /// The store the killed server used, opened directly.
    async fn open_store(&self) -> Box<dyn Store> {
        match self.backend {
            Backend::Embedded => Box::new(
                EmbeddedStore::open(&self.data_dir().join("sentinel.redb"))
                    .expect("the store opens"),
            ),
            Backend::Redis => Box::new(
                RedisStore::connect(&redis_url(), &self.prefix)
                    .await
                    .expect("Redis answers"),
            ),
        }
    }
}

/// A running `sentinel serve`. The child is shared so that the Docker events thread can kill
/// it; dropping the server SIGKILLs and reaps the process, so a failing run never leaves one
/// behind.
struct Server {
    child: Arc<Mutex<Child>>,
    base: String,
    stderr: PathBuf,
    admin_key: String,
    client: reqwest::Client,
    killed_at: Mutex<Option<SystemTime>>,
}

impl Server {
    /// Polls `/readyz` until 200; on failure returns the process's stderr.
    async fn wait_ready(&mut self, backend: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let exited = self.child.lock().unwrap().try_wait().expect("pollable");
            if let Some(status) = exited {
                return Err(format!(
                    "(exited with {status})\n{}",
                    read_log(&self.stderr)
                ));
            }
            let reply = self
                .client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(reply) = reply {
                if reply.status() == 200 {
                    let body: Value = reply.json().await.expect("readyz answers JSON");
                    assert_eq!(body["store"], backend, "the server runs on {backend}");
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(read_log(&self.stderr));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a request with `key`; returns the status and the JSON body (status 0 when the
    /// request itself failed).
    async fn send_as(&self, key: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
        let reply = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", key)
            .send()
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) => return (0, Value::String(e.to_string())),
        };
        let status = reply.status().as_u16();
        let text = reply.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Polls the incident every `every` until `done` holds or it is terminal; the last read.
    async fn poll_incident(
        &self,
        id: &str,
        within: Duration,
        every: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + within;
        let path = format!("/api/incidents/{id}");
        let mut last = None;
        while Instant::now() < deadline {
            let (status, incident) = self
                .send_as(&self.admin_key, reqwest::Method::GET, &path)
                .await;
            if status == 200 {
                if done(&incident) || terminal(&incident) {
                    return Some(incident);
                }
                last = Some(incident);
            }
            tokio::time::sleep(every).await;
        }
        last
    }

    /// Polls the incident list until an incident with `fingerprint` satisfies `done`.
    async fn wait_for_incident(
        &self,
        fingerprint: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let (status, list) = self
                .send_as(
                    &self.admin_key,
                    reqwest::Method::GET,
                    "/api/incidents?status=all",
                )
                .await;
            if status == 200 {
                let found = list.as_array().and_then(|all| {
                    all.iter()
                        .find(|i| i["fingerprint"] == fingerprint && done(i))
                        .cloned()
                });
                if found.is_some() {
                    return found;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// `kill -9` (SIGKILL), now.
    fn kill(&self) {
        let _ = self.child.lock().unwrap().kill();
        self.killed_at
            .lock()
            .unwrap()
            .get_or_insert_with(SystemTime::now);
    }

    /// Records a kill fired elsewhere (the Docker events thread) at `at`.
    fn killed(&self, at: SystemTime) {
        *self.killed_at.lock().unwrap() = Some(at);
    }

    /// Waits until the killed process is gone; returns when it was killed.
    fn reap(&self) -> SystemTime {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        drop(child);
        let killed = *self.killed_at.lock().unwrap();
        killed.unwrap_or_else(SystemTime::now)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last `lines` lines of a process's log, without terminal colours.
fn log_tail(path: &Path, lines: usize) -> String {
    let mut log = String::new();
    let mut escape = false;
    for c in read_log(path).chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => log.push(c),
        }
    }
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
