//! The incident engine on the real parts (SPEC §12.1): the real app on port 0, its real
//! store, real Docker and a real sandbox.
//!
//! - A recovery through each of its doors — an Alertmanager `resolved` on `/api/alertmanager`,
//!   a monitor clear (`tick_monitor` seeing the container run again), a manual `POST
//!   /api/incidents/{id}/resolve` — at every status ends as the engine's table says, with
//!   its timeline step and audit entry; one test per (door, status), so a failure names both.
//!   Incidents are put at a status by writing them through the store with the real incident
//!   API on an app whose remediation worker is off, so nothing moves them meanwhile. Fifty
//!   copies of one resolved alert at once record one recovery; during a rollback in flight an
//!   alert is noted and a manual resolve refused.
//! - Fifty concurrent rollbacks make one undo: one `stop` at Docker for a started container
//!   (on both stores), the quarantined files back once for a real automatic cleanup; one
//!   `ActionRolledBack`. A rollback while a newer incident holds the fingerprint is never left
//!   half-way.
//! - A recovery arriving while an analysis runs (an LLM double that answers slowly), through
//!   each door, is not lost when the analysis finishes.
//!
//! Other tests' containers share the Docker daemon, so every app's monitor sees them too:
//! assertions read this test's incident from the store rather than trusting cycle totals.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sentinel::domain::{
    ActionPlan, AuditEntry, ContainerState, Detection, Execution, Incident, IncidentId, Resource,
    RollbackStart, Severity, Signal, Source, Status, TargetState, Timestamp,
};
use serde_json::{json, Value};

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, Reply, TestApp};

const TOKEN: &str = "am-engine-token-5c1e";
/// How the operator's key appears on a timeline and in the audit log.
const OPERATOR: &str = "api:test-operator (operator)";
const OPERATOR_ID: &str = "api:test-operator";
const ADMIN: &str = "api:test-admin (admin)";

// ---------------------------------------------------------------------------------------
// Putting an incident at a status

/// The fix an incident proposes and, from `executing` on, runs: the target's state before and
/// after it.
struct Fix {
    plan: ActionPlan,
    before: TargetState,
    after: TargetState,
}

/// A container as the executor reads it, in Docker's `state`.
fn container_in(name: &str, state: &str) -> TargetState {
    TargetState::Container(ContainerState {
        id: None,
        name: name.to_owned(),
        state: Some(state.to_owned()),
        started_at: None,
        restart_count: None,
        memory: 0,
        memory_swap: 0,
    })
}

impl Fix {
    fn start(container: &str) -> Fix {
        Fix {
            plan: ActionPlan::ContainerStart {
                container: container.to_owned(),
            },
            before: container_in(container, "exited"),
            after: container_in(container, "running"),
        }
    }

    fn notify() -> Fix {
        Fix {
            plan: ActionPlan::NotifyOnly,
            before: TargetState::nothing(),
            after: TargetState::nothing(),
        }
    }
}

/// Walks a just-opened incident to `to` the way the pipeline does, through the incident API
/// (`transition`, `propose`, the execution record), in memory.
fn walk(incident: &mut Incident, to: Status, fix: &Fix, now: Timestamp) {
    use Status::*;
    let go = |incident: &mut Incident, next: Status, actor: &str, message: &str| {
        incident
            .transition(next, actor, message, now)
            .unwrap_or_else(|e| panic!("walking to {to}: {e:?}"));
    };
    if to == Detected {
        return;
    }
    go(incident, Analyzing, "sentinel", "analyzing");
    match to {
        Analyzing => return,
        Escalated => {
            incident.root_cause = Some("nothing in the catalogue fixes this".to_owned());
            incident.propose(ActionPlan::NotifyOnly.to_proposed(), TargetState::nothing());
            go(
                incident,
                Escalated,
                "sentinel",
                "no catalogue action fixes this; people are notified",
            );
            return;
        }
        _ => {}
    }
    incident.root_cause = Some("the target is down".to_owned());
    if to == Scheduled {
        // A low-risk fix waiting out its veto window, an hour away: nothing runs it here.
        incident.risk = Some(sentinel::domain::Risk::Low);
        incident.propose(fix.plan.to_proposed(), fix.before.clone());
        incident.scheduled_for = Some(now.saturating_add(Duration::from_secs(3600)));
        go(
            incident,
            Scheduled,
            "sentinel",
            "runs on its own in an hour unless someone stops it",
        );
        return;
    }
    incident.risk = Some(sentinel::domain::Risk::Medium);
    incident.confidence = Some(0.8);
    incident.analyzer = Some("rules".to_owned());
    incident.propose(fix.plan.to_proposed(), fix.before.clone());
    go(
        incident,
        AwaitingApproval,
        "sentinel",
        "waiting for an operator to approve",
    );
    match to {
        AwaitingApproval => return,
        Rejected => {
            go(incident, Rejected, OPERATOR, "rejected: not now");
            return;
        }
        _ => {}
    }
    incident.approvals = vec![OPERATOR.to_owned()];
    go(incident, Approved, OPERATOR, "approved");
    if to == Approved {
        return;
    }
    incident.execution = Some(Execution {
        action: fix.plan.to_proposed(),
        approved_by: OPERATOR.to_owned(),
        started_at: now,
        finished_at: None,
        before: fix.before.clone(),
        after: None,
        reversible: fix.plan.action().reversible(),
        rolled_back_at: None,
        rollback: None,
        proposal_id: incident.proposal_id.clone(),
        fencing_token: None,
    });
    go(incident, Executing, "sentinel", "executing");
    if to == Executing {
        return;
    }
    let execution = incident.execution.as_mut().expect("an execution record");
    execution.finished_at = Some(now);
    if to == Failed {
        go(incident, Failed, "sentinel", "the fix failed");
        return;
    }
    execution.after = Some(fix.after.clone());
    go(incident, Verifying, "sentinel", "executed; verifying");
    match to {
        Verifying => {}
        Resolved => go(incident, Resolved, "sentinel", "verified"),
        RolledBack => {
            let execution = incident.execution.as_mut().expect("an execution record");
            execution.rollback = Some(RollbackStart {
                by: ADMIN.to_owned(),
                at: now,
            });
            execution.rolled_back_at = Some(now);
            go(incident, RolledBack, ADMIN, "rolled back");
        }
        other => unreachable!("{other} is handled above"),
    }
}

/// Opens an incident for `detection` in the store (without queuing its analysis) and writes
/// it at `status`. Returns it as stored.
async fn put_at(app: &TestApp, detection: &Detection, status: Status, fix: &Fix) -> Incident {
    let now = Timestamp::now();
    let opened = Incident::open(IncidentId::generate(), detection, now);
    app.store.create_incident(&opened).await.unwrap();
    let mut incident = opened.clone();
    walk(&mut incident, status, fix, now);
    let stored = if status == Status::Detected {
        opened
    } else {
        app.store.update_incident(&incident).await.unwrap()
    };
    assert_eq!(stored.status, status);
    stored
}

fn detection(signal: Signal, resource: &str, source: Source) -> Detection {
    Detection {
        signal,
        resource: Resource::parse(resource).unwrap(),
        severity: Severity::Critical,
        value: 1.0,
        threshold: 1.0,
        source,
        summary: format!("{signal} on {resource}"),
        labels: Default::default(),
    }
}

/// A name no other test uses: `<prefix><random letters and digits>`.
fn unique(prefix: &str) -> String {
    format!("{prefix}{}", &IncidentId::generate().as_str()[4..])
}

async fn current(app: &TestApp, id: &IncidentId) -> Incident {
    app.store.get_incident(id).await.unwrap().expect("stored")
}

// ---------------------------------------------------------------------------------------
// What the table says

/// What a recovery does at a status, as the engine's table has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// `>resolved`, timeline step `recovered`, audit `IncidentResolved`.
    Resolves,
    /// `=`: recorded (`recovered_at`, step `recovery_noted`, audit `RecoveryNoted`), status kept.
    Noted,
    /// `-`: nothing changes (an alert or a clear for a closed incident).
    Unchanged,
    /// `!`: a person's request refused with 409 and audited (`DecisionRefused`).
    Refused,
}

/// The `cleared` and `alert_resolved` rows.
fn machine_row(status: Status) -> Expect {
    match status {
        Status::Executing | Status::Verifying => Expect::Noted,
        Status::Resolved => Expect::Unchanged,
        _ => Expect::Resolves,
    }
}

/// The `resolved_by_hand` row.
fn person_row(status: Status) -> Expect {
    match status {
        Status::Executing | Status::Resolved => Expect::Refused,
        _ => Expect::Resolves,
    }
}

async fn audit_of(app: &TestApp, id: &IncidentId) -> Vec<AuditEntry> {
    let all = app.store.list_audit().await.unwrap();
    assert!(
        sentinel::domain::verify_chain(&all).verified,
        "the audit chain holds"
    );
    all.into_iter()
        .filter(|e| e.record.incident.as_ref() == Some(id))
        .collect()
}

fn named<'a>(entries: &'a [AuditEntry], event: &str) -> Vec<&'a AuditEntry> {
    entries.iter().filter(|e| e.record.event == event).collect()
}

fn steps(incident: &Incident) -> Vec<&str> {
    incident.timeline.iter().map(|e| e.step.as_str()).collect()
}

/// Checks the incident after the recovery (and its repeat) against `expect`. `actor` is who
/// the timeline names for the recovery.
async fn assert_as_table_says(
    app: &TestApp,
    before: &Incident,
    expect: Expect,
    actor: &str,
    audit_actor: &str,
) {
    let after = current(app, &before.id).await;
    let audit = audit_of(app, &before.id).await;
    let events: Vec<&str> = audit.iter().map(|e| e.record.event.as_str()).collect();
    match expect {
        Expect::Resolves => {
            assert_eq!(after.status, Status::Resolved, "{:#?}", after.timeline);
            assert!(after.resolved_at.is_some());
            assert_eq!(
                after.timeline.len(),
                before.timeline.len() + 1,
                "one entry, once: {:?}",
                steps(&after)
            );
            let last = after.timeline.last().unwrap();
            assert_eq!(last.step, "recovered", "{:?}", steps(&after));
            assert_eq!(last.actor, actor);
            let resolved = named(&audit, "IncidentResolved");
            assert_eq!(resolved.len(), 1, "{events:?}");
            assert_eq!(resolved[0].record.actor, audit_actor);
            assert!(named(&audit, "RecoveryNoted").is_empty(), "{events:?}");
            assert!(
                app.store
                    .open_incident_for(&before.fingerprint)
                    .await
                    .unwrap()
                    .is_none(),
                "the fingerprint is free again"
            );
        }
        Expect::Noted => {
            assert_eq!(after.status, before.status, "{:#?}", after.timeline);
            assert!(after.recovered_at.is_some(), "recovered_at is set");
            assert!(after.resolved_at.is_none());
            assert_eq!(after.execution, before.execution, "the fix is untouched");
            assert_eq!(
                after.timeline.len(),
                before.timeline.len() + 1,
                "recorded once: {:?}",
                steps(&after)
            );
            let last = after.timeline.last().unwrap();
            assert_eq!(last.step, "recovery_noted");
            assert_eq!(last.actor, actor);
            let noted = named(&audit, "RecoveryNoted");
            assert_eq!(noted.len(), 1, "{events:?}");
            assert_eq!(noted[0].record.details["status"], before.status.as_str());
            assert!(named(&audit, "IncidentResolved").is_empty(), "{events:?}");
        }
        Expect::Unchanged => {
            assert_eq!(after.version, before.version, "nothing stored");
            assert_eq!(after.status, before.status);
            assert_eq!(after.timeline, before.timeline);
            assert!(audit.is_empty(), "{events:?}");
        }
        Expect::Refused => {
            assert_eq!(after.version, before.version, "nothing stored");
            assert_eq!(after.status, before.status);
            assert_eq!(after.recovered_at, None);
            assert_eq!(after.timeline, before.timeline);
            assert!(!named(&audit, "DecisionRefused").is_empty(), "{events:?}");
            assert!(named(&audit, "IncidentResolved").is_empty(), "{events:?}");
        }
    }
}

/// One test per status for a door (a function taking the status).
macro_rules! at_every_status {
    ($module:ident, $door:ident) => {
        mod $module {
            use sentinel::domain::Status;

            #[tokio::test]
            async fn detected() {
                super::$door(Status::Detected).await
            }
            #[tokio::test]
            async fn analyzing() {
                super::$door(Status::Analyzing).await
            }
            #[tokio::test]
            async fn scheduled() {
                super::$door(Status::Scheduled).await
            }
            #[tokio::test]
            async fn awaiting_approval() {
                super::$door(Status::AwaitingApproval).await
            }
            #[tokio::test]
            async fn approved() {
                super::$door(Status::Approved).await
            }
            #[tokio::test]
            async fn rejected() {
                super::$door(Status::Rejected).await
            }
            #[tokio::test]
            async fn executing() {
                super::$door(Status::Executing).await
            }
            #[tokio::test]
            async fn verifying() {
                super::$door(Status::Verifying).await
            }
            #[tokio::test]
            async fn resolved() {
                super::$door(Status::Resolved).await
            }
            #[tokio::test]
            async fn rolled_back() {
                super::$door(Status::RolledBack).await
            }
            #[tokio::test]
            async fn escalated() {
                super::$door(Status::Escalated).await
            }
            #[tokio::test]
            async fn failed() {
                super::$door(Status::Failed).await
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// Door 1: Alertmanager `resolved`

async fn alerting_app(customize: impl FnOnce(&mut sentinel::config::Settings)) -> TestApp {
    spawn_app_with(Backend::Embedded, |s| {
        s.alertmanager.bearer_token = TOKEN.to_owned().into();
        customize(s);
    })
    .await
}

fn alertmanager_payload(status: &str, fingerprint: &str) -> String {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"QueueBacklog\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "sentinel",
        "groupLabels": {"alertname": "QueueBacklog"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "QueueBacklog", "severity": "critical", "service": "orders"},
            "annotations": {"summary": "12k messages waiting"},
            "startsAt": "2026-12-03T10:00:00Z",
            "endsAt": if status == "resolved" { "2026-12-03T10:05:00Z" } else { "0001-01-01T00:00:00Z" },
            "generatorURL": "http://prometheus.local/graph",
            "fingerprint": fingerprint
        }]
    })
    .to_string()
}

async fn post_alert(app: &TestApp, status: &str, fingerprint: &str) -> Reply {
    let response = app
        .client
        .post(format!("{}/api/alertmanager", app.base))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(alertmanager_payload(status, fingerprint))
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    Reply {
        status,
        body: response.json().await.expect("a JSON body"),
    }
}

/// `(resolved, noted, ignored)` of an `/api/alertmanager` answer.
fn counts(reply: &Reply) -> (u64, u64, u64) {
    assert_eq!(reply.status, 200, "{reply:?}");
    let count = |key: &str| {
        reply.body[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {reply:?}"))
    };
    assert_eq!(
        (count("opened"), count("updated"), count("silenced")),
        (0, 0, 0)
    );
    (count("resolved"), count("noted"), count("ignored"))
}

async fn alertmanager_resolved(status: Status) {
    let app = alerting_app(|_| {}).await;
    let fingerprint = unique("eng");
    let before = put_at(
        &app,
        &detection(Signal::External, &fingerprint, Source::Alertmanager),
        status,
        &Fix::notify(),
    )
    .await;
    assert_eq!(
        before.fingerprint.as_str(),
        format!("external:{fingerprint}")
    );
    let expect = machine_row(status);

    let first = post_alert(&app, "resolved", &fingerprint).await;
    let want = match expect {
        Expect::Resolves => (1, 0, 0),
        Expect::Noted => (0, 1, 0),
        _ => (0, 0, 1),
    };
    assert_eq!(counts(&first), want, "the first resolved at {status}");
    let noted_at = current(&app, &before.id).await.recovered_at;

    // Alertmanager repeats a resolved notification: it is recorded once.
    let again = post_alert(&app, "resolved", &fingerprint).await;
    let (resolved, noted, ignored) = counts(&again);
    assert_eq!(resolved, 0, "the repeat resolves nothing: {again:?}");
    // Nothing new happened: the repeat is not counted as a new recovery. (It is `ignored`
    // today, although the field's doc speaks of alerts without an open incident.)
    assert_eq!(noted + ignored, 1, "{again:?}");
    assert_eq!(current(&app, &before.id).await.recovered_at, noted_at);

    assert_as_table_says(&app, &before, expect, "sentinel", "sentinel").await;
    match expect {
        Expect::Resolves => {
            let after = current(&app, &before.id).await;
            let message = &after.timeline.last().unwrap().message;
            assert!(
                message.starts_with("resolved by its source: QueueBacklog"),
                "{message}"
            );
        }
        Expect::Noted => verification_uses_the_recovery(&app, &before).await,
        _ => {}
    }
}

/// A recovery noted while the fix ran is what verification goes by: an external alert cannot
/// be measured again, and without it the incident would escalate.
async fn verification_uses_the_recovery(app: &TestApp, before: &Incident) {
    use sentinel::pipeline::engine::Event;
    use sentinel::pipeline::remediate;
    let id = &before.id;
    if before.status == Status::Executing {
        let done = Event::Executed {
            after: TargetState::nothing(),
            message: "executed notify_only: done".to_owned(),
        };
        let stepped = remediate::step(app.store.as_ref(), id, None, &done, Timestamp::now())
            .await
            .unwrap();
        assert!(
            matches!(stepped, Some(remediate::Stepped::Moved { .. })),
            "{stepped:?}"
        );
        assert_eq!(current(app, id).await.status, Status::Verifying);
    }
    remediate::verify_fix(app.sentinel.pipeline(), id)
        .await
        .unwrap();
    let verified = current(app, id).await;
    assert_eq!(
        verified.status,
        Status::Resolved,
        "{:#?}",
        verified.timeline
    );
    let last = verified.timeline.last().unwrap();
    assert!(
        last.message.contains("the recovery reported at"),
        "{last:?}"
    );
    let audit = audit_of(app, id).await;
    assert_eq!(named(&audit, "VerificationSucceeded").len(), 1);
}

at_every_status!(alertmanager_resolved_at, alertmanager_resolved);

// ---------------------------------------------------------------------------------------
// Door 2: the monitor sees the container run again

async fn monitor_clear(status: Status) {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let container = Container::run("sentinel-engine", &[], &["sleep", "3600"]);
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "running"
    );
    let before = put_at(
        &app,
        &detection(Signal::ContainerDown, &container.0, Source::Docker),
        status,
        &Fix::start(&container.0),
    )
    .await;
    let expect = machine_row(status);
    let clear_for = app.sentinel.settings().monitor.clear_for;

    // `clear_for` clean samples recover it; one more cycle delivers the recovery again.
    let mut resolved = 0;
    for _ in 0..clear_for {
        let report = app.tick_monitor().await;
        assert!(report.errors.is_empty(), "{report:?}");
        resolved += report.resolved;
    }
    let after_clear = current(&app, &before.id).await;
    let report = app.tick_monitor().await;
    resolved += report.resolved;
    assert_eq!(
        current(&app, &before.id).await.version,
        after_clear.version,
        "the repeated clear stores nothing"
    );
    // The cycles count ours (and maybe incidents of other tests' containers on this Docker
    // that came and went); the store says which.
    if expect == Expect::Resolves {
        assert!(resolved >= 1, "no cycle counted it resolved at {status}");
    }

    assert_as_table_says(&app, &before, expect, "sentinel", "sentinel").await;
    if expect == Expect::Resolves {
        let after = current(&app, &before.id).await;
        let message = &after.timeline.last().unwrap().message;
        assert!(
            message.starts_with("recovered without action: container_down on"),
            "{message}"
        );
    }
    // The running container opens nothing new.
    let open = app
        .store
        .open_incident_for(&before.fingerprint)
        .await
        .unwrap();
    match expect {
        Expect::Noted => assert_eq!(open.map(|i| i.id), Some(before.id.clone())),
        _ => assert!(open.is_none(), "{open:?}"),
    }
}

at_every_status!(monitor_clear_at, monitor_clear);

// ---------------------------------------------------------------------------------------
// Door 3: a person resolves it by hand

const NOTE: &str = "the cable was loose; plugged it back in";

async fn manual_app() -> TestApp {
    spawn_app_with(Backend::Embedded, |_| {}).await
}

/// An incident of a container nobody runs (nothing here touches Docker) at `status`.
async fn manual_incident(app: &TestApp, status: Status) -> Incident {
    let name = unique("sentinel-engine-web-");
    put_at(
        app,
        &detection(Signal::ContainerDown, &name, Source::Docker),
        status,
        &Fix::start(&name),
    )
    .await
}

fn resolve_path(id: &IncidentId) -> String {
    format!("/api/incidents/{id}/resolve")
}

async fn resolve_by_hand(status: Status) {
    let app = manual_app().await;
    let before = manual_incident(&app, status).await;
    let expect = person_row(status);
    let body = json!({ "note": NOTE }).to_string();

    let reply = app
        .post(&resolve_path(&before.id), Some(&app.keys.operator), &body)
        .await;
    match expect {
        Expect::Resolves => {
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.body["id"], before.id.as_str());
            assert_eq!(reply.body["status"], "resolved");
            let last = reply.body["timeline"].as_array().unwrap().last().unwrap();
            assert_eq!(last["step"], "recovered");
            assert_eq!(last["message"], format!("resolved by hand: {NOTE}"));
            // Resolving twice: the second is refused.
            let again = app
                .post(&resolve_path(&before.id), Some(&app.keys.operator), &body)
                .await;
            assert_eq!(again.status, 409, "{again:?}");
        }
        Expect::Refused => {
            assert_eq!(reply.status, 409, "{reply:?}");
            let error = reply.body["error"].as_str().expect("a JSON error");
            assert!(error.contains(before.id.as_str()), "{error}");
        }
        other => unreachable!("a person's resolve is never {other:?}"),
    }
    assert_as_table_says(&app, &before, expect, OPERATOR, OPERATOR_ID).await;
    if expect == Expect::Resolves {
        let audit = audit_of(&app, &before.id).await;
        let resolved = named(&audit, "IncidentResolved");
        assert_eq!(
            resolved[0].record.details["message"],
            format!("resolved by hand: {NOTE}")
        );
        assert_eq!(resolved[0].record.role.as_deref(), Some("operator"));
    }
}

at_every_status!(resolve_by_hand_at, resolve_by_hand);

#[tokio::test]
async fn a_viewer_cannot_resolve_by_hand() {
    let app = manual_app().await;
    let before = manual_incident(&app, Status::AwaitingApproval).await;
    let body = json!({ "note": NOTE }).to_string();
    let reply = app
        .post(&resolve_path(&before.id), Some(&app.keys.viewer), &body)
        .await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.body["error"].is_string(), "{reply:?}");
    let nobody = app.post(&resolve_path(&before.id), None, &body).await;
    assert_eq!(nobody.status, 401, "{nobody:?}");
    assert_as_table_says(&app, &before, Expect::Unchanged, "", "").await;
}

#[tokio::test]
async fn resolving_an_unknown_incident_is_not_found() {
    let app = manual_app().await;
    let body = json!({ "note": NOTE }).to_string();
    for id in ["inc-doesnotexist0000", "nope", "inc-UPPER"] {
        let reply = app
            .post(
                &format!("/api/incidents/{id}/resolve"),
                Some(&app.keys.operator),
                &body,
            )
            .await;
        assert_eq!(reply.status, 404, "{id}: {reply:?}");
        assert!(reply.body["error"].is_string(), "{reply:?}");
    }
    assert!(app.store.list_audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_bad_resolve_body_is_refused_and_changes_nothing() {
    let app = manual_app().await;
    let before = manual_incident(&app, Status::AwaitingApproval).await;
    let long = json!({ "note": "x".repeat(2001) }).to_string();
    for body in [
        r#"{"note": "#,
        r#"{"note": 5}"#,
        r#"{"reason": "not the field"}"#,
        "not json",
        long.as_str(),
    ] {
        let reply = app
            .post(&resolve_path(&before.id), Some(&app.keys.operator), body)
            .await;
        assert_eq!(reply.status, 400, "{body:?}: {reply:?}");
        assert!(reply.body["error"].is_string(), "{reply:?}");
    }
    assert_as_table_says(&app, &before, Expect::Unchanged, "", "").await;
    // Without a body (or with an empty note) it resolves.
    let reply = app
        .post(&resolve_path(&before.id), Some(&app.keys.operator), "")
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let last = reply.body["timeline"].as_array().unwrap().last().unwrap();
    assert_eq!(last["message"], "resolved by hand");
}

/// Sends `n` copies of one resolved alert at once; returns the summed counts.
async fn resolved_alerts_at_once(app: &TestApp, fingerprint: &str, n: usize) -> (u64, u64, u64) {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (app.client.clone(), format!("{}/api/alertmanager", app.base));
            let body = alertmanager_payload("resolved", fingerprint);
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(body)
                    .send()
                    .await
                    .expect("the server answers");
                let status = response.status().as_u16();
                let body = response.json().await.expect("a JSON body");
                counts(&Reply { status, body })
            })
        })
        .collect();
    let mut sum = (0, 0, 0);
    for task in tasks {
        let (resolved, noted, ignored) = task.await.expect("the request task");
        sum = (sum.0 + resolved, sum.1 + noted, sum.2 + ignored);
    }
    sum
}

#[tokio::test]
async fn fifty_concurrent_resolved_alerts_before_the_fix_resolve_it_once() {
    let app = alerting_app(|_| {}).await;
    let fingerprint = unique("herd");
    let before = put_at(
        &app,
        &detection(Signal::External, &fingerprint, Source::Alertmanager),
        Status::AwaitingApproval,
        &Fix::notify(),
    )
    .await;
    let (resolved, noted, ignored) = resolved_alerts_at_once(&app, &fingerprint, 50).await;
    assert_eq!((resolved, noted), (1, 0), "ignored: {ignored}");
    assert_eq!(ignored, 49);
    assert_as_table_says(&app, &before, Expect::Resolves, "sentinel", "sentinel").await;
}

#[tokio::test]
async fn fifty_concurrent_resolved_alerts_while_the_fix_runs_note_it_once() {
    let app = alerting_app(|_| {}).await;
    let fingerprint = unique("herd");
    let before = put_at(
        &app,
        &detection(Signal::External, &fingerprint, Source::Alertmanager),
        Status::Executing,
        &Fix::notify(),
    )
    .await;
    let (resolved, noted, ignored) = resolved_alerts_at_once(&app, &fingerprint, 50).await;
    assert_eq!((resolved, noted), (0, 1), "ignored: {ignored}");
    assert_eq!(ignored, 49);
    assert_as_table_says(&app, &before, Expect::Noted, "sentinel", "sentinel").await;
}

/// An incident whose fix did not help and is being rolled back by Sentinel (verifying, the
/// rollback granted and not finished), as stored by the verification's transition.
async fn rolling_back(app: &TestApp, detection: &Detection, fix: &Fix) -> Incident {
    let verifying = put_at(app, detection, Status::Verifying, fix).await;
    let mut incident = verifying.clone();
    let now = Timestamp::now();
    incident.record(
        "verification_failed",
        "sentinel",
        "the fix did not help",
        now,
    );
    incident.execution.as_mut().unwrap().rollback = Some(RollbackStart {
        by: "sentinel".to_owned(),
        at: now,
    });
    let stored = app.store.update_incident(&incident).await.unwrap();
    assert!(stored.execution.as_ref().unwrap().rolling_back());
    stored
}

#[tokio::test]
async fn an_alertmanager_resolved_during_a_rollback_is_noted_once() {
    let app = alerting_app(|_| {}).await;
    let fingerprint = unique("undo");
    let before = rolling_back(
        &app,
        &detection(Signal::External, &fingerprint, Source::Alertmanager),
        &Fix::notify(),
    )
    .await;
    assert_eq!(
        counts(&post_alert(&app, "resolved", &fingerprint).await),
        (0, 1, 0)
    );
    let (resolved, noted, ignored) = counts(&post_alert(&app, "resolved", &fingerprint).await);
    assert_eq!((resolved, noted + ignored), (0, 1));
    assert_as_table_says(&app, &before, Expect::Noted, "sentinel", "sentinel").await;
    assert!(current(&app, &before.id)
        .await
        .execution
        .unwrap()
        .rolling_back());
}

#[tokio::test]
async fn a_manual_resolve_during_a_rollback_is_refused() {
    let app = manual_app().await;
    let name = unique("sentinel-engine-web-");
    let before = rolling_back(
        &app,
        &detection(Signal::ContainerDown, &name, Source::Docker),
        &Fix::start(&name),
    )
    .await;
    let reply = app
        .post(&resolve_path(&before.id), Some(&app.keys.operator), "")
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    let error = reply.body["error"].as_str().expect("a JSON error");
    assert!(error.contains("rolled back"), "{error}");
    assert_as_table_says(&app, &before, Expect::Refused, OPERATOR, OPERATOR_ID).await;
}

// ---------------------------------------------------------------------------------------
// Fifty concurrent rollbacks

const ROLLBACKS: usize = 50;

/// Fires `ROLLBACKS` rollbacks of `id` at once as an admin; returns the answers.
async fn roll_back_concurrently(app: &TestApp, id: &IncidentId) -> Vec<(u16, Value)> {
    // A stop may wait for the container to exit: give the one real undo time.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let url = format!("{}/api/incidents/{id}/rollback", app.base);
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(ROLLBACKS));
    let tasks: Vec<_> = (0..ROLLBACKS)
        .map(|_| {
            let (client, url, key) = (client.clone(), url.clone(), app.keys.admin.clone());
            let barrier = std::sync::Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                let response = client
                    .post(url)
                    .header("x-api-key", key)
                    .send()
                    .await
                    .expect("the server answers");
                let status = response.status().as_u16();
                (status, response.json::<Value>().await.expect("a JSON body"))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("the request task"));
    }
    answers
}

fn assert_one_rollback_won(answers: &[(u16, Value)]) -> Value {
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    eprintln!(
        "rollback answers: {} × 200, {} × 409, others {:?}",
        statuses.iter().filter(|s| **s == 200).count(),
        statuses.iter().filter(|s| **s == 409).count(),
        statuses
            .iter()
            .filter(|s| **s != 200 && **s != 409)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        ROLLBACKS - 1,
        "{statuses:?}"
    );
    let (_, won) = answers.iter().find(|(s, _)| *s == 200).unwrap();
    assert_eq!(won["status"], "rolled_back", "{won}");
    won.clone()
}

/// One `ActionRolledBack` by the admin, no failed rollback, and every other request refused
/// and audited. Returns the `ActionRolledBack` details.
async fn assert_rolled_back_once(app: &TestApp, id: &IncidentId) -> Value {
    let incident = current(app, id).await;
    assert_eq!(
        incident.status,
        Status::RolledBack,
        "{:#?}",
        incident.timeline
    );
    let steps = steps(&incident);
    assert!(!steps.contains(&"rollback_failed"), "{steps:?}");
    assert_eq!(
        steps.iter().filter(|s| **s == "rollback_started").count(),
        1,
        "{steps:?}"
    );
    assert_eq!(
        steps.iter().filter(|s| **s == "rolled_back").count(),
        1,
        "{steps:?}"
    );
    let execution = incident.execution.expect("the execution record");
    assert!(execution.rolled_back_at.is_some());
    let audit = audit_of(app, id).await;
    let events: Vec<&str> = audit.iter().map(|e| e.record.event.as_str()).collect();
    let rolled = named(&audit, "ActionRolledBack");
    assert_eq!(rolled.len(), 1, "{events:?}");
    assert_eq!(rolled[0].record.actor, "api:test-admin");
    assert!(named(&audit, "ActionFailed").is_empty(), "{events:?}");
    // Repeated refusals of one decision by one actor may be folded into one entry with a
    // count (SPEC §12.3); either way all of them are there.
    let refusals: u64 = named(&audit, "DecisionRefused")
        .iter()
        .map(|e| {
            e.record
                .details
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(
        refusals,
        ROLLBACKS as u64 - 1,
        "every refused rollback is audited: {events:?}"
    );
    rolled[0].record.details.clone()
}

/// Seconds since the epoch, with nanoseconds, as `docker events` takes them.
fn docker_time(at: std::time::SystemTime) -> String {
    let since = at.duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", since.as_secs(), since.subsec_nanos())
}

#[tokio::test]
async fn fifty_concurrent_rollbacks_of_a_container_start_stop_it_once() {
    rollbacks_of_a_container_start(Backend::Embedded).await
}

#[tokio::test]
async fn fifty_concurrent_rollbacks_of_a_container_start_stop_it_once_on_redis() {
    rollbacks_of_a_container_start(Backend::Redis).await
}

async fn rollbacks_of_a_container_start(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.actions.enabled = true).await;
    // Exits on SIGTERM, so one stop is a kill, a die and a stop, with no 10 s wait.
    let container = Container::run(
        "sentinel-engine-start",
        &[],
        &[
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
        ],
    );
    let plan = ActionPlan::ContainerStart {
        container: container.0.clone(),
    };
    // The situation of a successful start fix: exited before, running after.
    docker(&["stop", "-t", "5", &container.0]);
    let before = app
        .sentinel
        .pipeline()
        .executor
        .snapshot(&plan)
        .await
        .unwrap();
    assert_eq!(
        before.container().unwrap().state.as_deref(),
        Some("exited"),
        "{before:?}"
    );
    docker(&["start", &container.0]);
    let after = app
        .sentinel
        .pipeline()
        .executor
        .snapshot(&plan)
        .await
        .unwrap();
    assert_eq!(
        after.container().unwrap().state.as_deref(),
        Some("running"),
        "{after:?}"
    );
    let incident = put_at(
        &app,
        &detection(Signal::ContainerDown, &container.0, Source::Docker),
        Status::Resolved,
        &Fix {
            plan,
            before,
            after,
        },
    )
    .await;
    assert!(incident.execution.as_ref().unwrap().reversible);

    let since = docker_time(std::time::SystemTime::now());
    let answers = roll_back_concurrently(&app, &incident.id).await;
    let until = docker_time(std::time::SystemTime::now() + Duration::from_millis(500));
    let won = assert_one_rollback_won(&answers);
    assert!(!won["execution"]["rolled_back_at"].is_null(), "{won}");

    let events = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={}", container.0),
        "--format",
        "{{.Action}}",
    ]);
    // Shown with --nocapture, for the record.
    eprintln!("docker events during the rollbacks: {events:?}");
    let count = |action: &str| events.lines().filter(|l| *l == action).count();
    assert_eq!(count("stop"), 1, "docker events: {events:?}");
    assert_eq!(count("die"), 1, "docker events: {events:?}");
    assert_eq!(count("kill"), 1, "one SIGTERM: {events:?}");
    assert_eq!(count("start"), 0, "docker events: {events:?}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "exited"
    );

    let details = assert_rolled_back_once(&app, &incident.id).await;
    assert_eq!(details["call_made"], true, "{details}");
    assert_eq!(details["restored"]["state"], "exited", "{details}");
}

/// A fix's incident is resolved and closed, and a newer incident of the same fingerprint is
/// open (the container went down again and the monitor opened it). Rolling the old fix back
/// must not leave it half-way: either it is rolled back and recorded, or it is refused before
/// anything is done — never an undo at Docker with the incident stuck "being rolled back".
#[tokio::test]
async fn a_rollback_while_a_newer_incident_of_its_fingerprint_is_open_is_not_left_half_way() {
    rollback_with_a_newer_incident_open(Backend::Embedded).await
}

#[tokio::test]
async fn a_rollback_while_a_newer_incident_of_its_fingerprint_is_open_is_not_left_half_way_on_redis(
) {
    rollback_with_a_newer_incident_open(Backend::Redis).await
}

async fn rollback_with_a_newer_incident_open(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let container = Container::run(
        "sentinel-engine-again",
        &[],
        // Stopped, it exits 143: down, to the monitor.
        &[
            "sh",
            "-c",
            "trap 'exit 143' TERM; while :; do sleep 0.1; done",
        ],
    );
    let plan = ActionPlan::ContainerStart {
        container: container.0.clone(),
    };
    docker(&["stop", "-t", "5", &container.0]);
    let before = app
        .sentinel
        .pipeline()
        .executor
        .snapshot(&plan)
        .await
        .unwrap();
    docker(&["start", &container.0]);
    let after = app
        .sentinel
        .pipeline()
        .executor
        .snapshot(&plan)
        .await
        .unwrap();
    let fixed = put_at(
        &app,
        &detection(Signal::ContainerDown, &container.0, Source::Docker),
        Status::Resolved,
        &Fix {
            plan,
            before,
            after,
        },
    )
    .await;

    // It goes down again: the monitor opens a new incident; someone starts it by hand.
    docker(&["stop", "-t", "5", &container.0]);
    let mut newer = None;
    for _ in 0..10 {
        app.tick_monitor().await;
        newer = app
            .store
            .open_incident_for(&fixed.fingerprint)
            .await
            .unwrap();
        if newer.is_some() {
            break;
        }
    }
    let newer = newer.expect("the second outage is detected");
    assert_ne!(newer.id, fixed.id);
    docker(&["start", &container.0]);

    let since = docker_time(std::time::SystemTime::now());
    let reply = app
        .post(
            &format!("/api/incidents/{}/rollback", fixed.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    let until = docker_time(std::time::SystemTime::now() + Duration::from_millis(500));
    let events = docker(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        &format!("container={}", container.0),
        "--format",
        "{{.Action}}",
    ]);
    let stops = events.lines().filter(|l| *l == "stop").count();
    let old = current(&app, &fixed.id).await;
    let retry = app
        .post(
            &format!("/api/incidents/{}/rollback", fixed.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    eprintln!("a second rollback request: {} {}", retry.status, retry.body);
    let audit = audit_of(&app, &fixed.id).await;
    let events_audited: Vec<&str> = audit.iter().map(|e| e.record.event.as_str()).collect();
    eprintln!(
        "rollback with a newer incident open: {} {}; docker: {events:?}; old incident: {} \
         rolling_back={}; audit: {events_audited:?}",
        reply.status,
        reply.body,
        old.status,
        old.execution.as_ref().unwrap().rolling_back()
    );
    assert!(
        reply.status == 200 || reply.status == 409,
        "a rollback answers 200 or 409, not {}: {}",
        reply.status,
        reply.body
    );
    assert!(
        !old.execution.as_ref().unwrap().rolling_back(),
        "the rollback is left half-way (docker stops: {stops}): {:#?}",
        old.timeline
    );
    match reply.status {
        200 => {
            assert_eq!(stops, 1, "{events:?}");
            assert_eq!(
                named(&audit, "ActionRolledBack").len(),
                1,
                "{events_audited:?}"
            );
        }
        _ => assert_eq!(stops, 0, "refused, yet stopped at Docker: {events:?}"),
    }
    // The newer incident is untouched and still open.
    let still = current(&app, &newer.id).await;
    assert!(still.is_open());
}

/// The same with a real cleanup: the sandbox fills up again and a newer incident waits for
/// approval (the hourly budget of automatic cleanups is spent) when an admin rolls the first
/// cleanup back.
#[tokio::test]
async fn a_cleanup_rollback_while_a_newer_incident_of_its_fingerprint_is_open_is_not_left_half_way()
{
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.actions.auto_budget_per_hour = 1;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let fill = |name: &str| {
        let line = format!("{name}: request handled in 12 ms\n");
        std::fs::write(logs.join(name), line.repeat(105_000_000 / line.len())).unwrap();
    };
    let fingerprint = sentinel::domain::Fingerprint::parse("sandbox_size:sandbox").unwrap();
    let detect = || async {
        for _ in 0..20 {
            app.tick_monitor().await;
            if let Some(open) = app.store.open_incident_for(&fingerprint).await.unwrap() {
                return open;
            }
        }
        panic!("the sandbox breach is never detected");
    };
    fill("first.log");
    let first = detect().await;
    wait_for(&app, &first.id, Status::Resolved).await;
    // It fills up again: the second incident waits for approval.
    fill("second.log");
    let second = detect().await;
    wait_for(&app, &second.id, Status::AwaitingApproval).await;

    let reply = app
        .post(
            &format!("/api/incidents/{}/rollback", first.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    let old = current(&app, &first.id).await;
    let restored = logs.join("first.log").exists();
    eprintln!(
        "cleanup rollback with a newer incident open: {} {}; first.log restored: {restored}; \
         old incident: {} rolling_back={}",
        reply.status,
        reply.body,
        old.status,
        old.execution.as_ref().unwrap().rolling_back()
    );
    assert!(
        reply.status == 200 || reply.status == 409,
        "a rollback answers 200 or 409, not {}: {}",
        reply.status,
        reply.body
    );
    assert!(
        !old.execution.as_ref().unwrap().rolling_back(),
        "the rollback is left half-way (first.log restored: {restored}): {:#?}",
        old.timeline
    );
    match reply.status {
        200 => assert!(restored, "rolled back, yet the file is not back"),
        _ => assert!(!restored, "refused, yet the file is back"),
    }
}

/// Polls until the incident is at `status` (bounded).
async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = current(app, id).await;
        if incident.status == status {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "incident never reached {status}; timeline: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The files below `dir`, relative to it, with their contents.
fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<_> = walkdir::WalkDir::new(dir)
        .into_iter()
        .map(|e| e.expect("a readable entry"))
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            let relative = e.path().strip_prefix(dir).unwrap().to_owned();
            (relative, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn fifty_concurrent_rollbacks_of_a_cleanup_restore_the_files_once() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(logs.join("worker")).unwrap();
    std::fs::create_dir_all(app.sandbox.join("data")).unwrap();
    std::fs::write(app.sandbox.join("data/keep.db"), b"precious").unwrap();
    // 4 × 26 MB of distinct, compressible logs: above the 100 MB warning, and all of it fits
    // the quarantine, so all of it is restorable.
    for (i, name) in [
        "api.log",
        "api.log.1",
        "worker/jobs.log",
        "worker/jobs.log.1",
    ]
    .iter()
    .enumerate()
    {
        let line = format!("{name}: request {i} handled in 12 ms\n");
        let content = line.repeat(26_000_000 / line.len() + 1);
        std::fs::write(logs.join(name), content).unwrap();
    }
    let written = files_below(&logs);
    assert_eq!(written.len(), 4);

    // A real breach, a real low-risk automatic cleanup, verified.
    let fingerprint = sentinel::domain::Fingerprint::parse("sandbox_size:sandbox").unwrap();
    let mut opened = None;
    for _ in 0..20 {
        app.tick_monitor().await;
        opened = app.store.open_incident_for(&fingerprint).await.unwrap();
        if opened.is_some() {
            break;
        }
    }
    let opened = opened.expect("the sandbox breach is detected");
    let fixed = wait_for(&app, &opened.id, Status::Resolved).await;
    let execution = fixed.execution.as_ref().expect("the cleanup ran");
    assert!(
        matches!(&execution.after, Some(TargetState::CleanupResult(r)) if r.moved_files == 4),
        "{execution:?}"
    );
    assert!(execution.reversible);
    assert!(
        files_below(&logs).is_empty(),
        "logs/ is empty after the cleanup"
    );
    let quarantine = app
        .sandbox
        .join(sentinel::runtime::cleanup::QUARANTINE_DIR)
        .join(opened.id.as_str());
    assert!(quarantine.is_dir(), "the files wait in {quarantine:?}");

    let answers = roll_back_concurrently(&app, &opened.id).await;
    let won = assert_one_rollback_won(&answers);
    assert_eq!(won["id"], opened.id.as_str());

    let restored = files_below(&logs);
    assert_eq!(
        restored.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        written.iter().map(|(p, _)| p).collect::<Vec<_>>(),
        "exactly the files that were cleaned, once"
    );
    assert!(restored == written, "the contents are back byte for byte");
    assert_eq!(
        std::fs::read(app.sandbox.join("data/keep.db")).unwrap(),
        b"precious"
    );
    assert!(!quarantine.exists(), "the emptied quarantine is removed");

    let details = assert_rolled_back_once(&app, &opened.id).await;
    assert_eq!(details["call_made"], true, "{details}");
    assert_eq!(details["restored"]["restored_files"], 4, "{details}");
    assert_eq!(details["restored"]["skipped"], 0, "{details}");
}

// ---------------------------------------------------------------------------------------
// A recovery while the analysis runs

/// Where a recovery comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Door {
    Alertmanager,
    Monitor,
    Person,
}

#[tokio::test]
async fn an_alertmanager_resolved_during_a_slow_analysis_is_not_lost() {
    a_recovery_during_a_slow_analysis_is_not_lost(Door::Alertmanager).await
}

#[tokio::test]
async fn a_monitor_clear_during_a_slow_analysis_is_not_lost() {
    a_recovery_during_a_slow_analysis_is_not_lost(Door::Monitor).await
}

#[tokio::test]
async fn a_manual_resolve_during_a_slow_analysis_is_not_lost() {
    a_recovery_during_a_slow_analysis_is_not_lost(Door::Person).await
}

/// The analysis waits for an LLM that answers after `THINKING`; the recovery arrives
/// meanwhile. It resolves the incident at once, and the analysis finishing later changes
/// nothing.
async fn a_recovery_during_a_slow_analysis_is_not_lost(door: Door) {
    use crate::llm_double::{LlmDouble, Reply as LlmReply};
    const KEY: &str = "llm-engine-key";
    /// How long the LLM double takes to answer.
    const THINKING: Duration = Duration::from_secs(4);
    let double = LlmDouble::start(Some(KEY)).await;
    let answer = json!({
        "root_cause": "a consumer of the orders queue is stuck",
        "proposed_action": {"action": "notify_only", "params": {}},
        "risk_assessment": "low", "confidence": 0.7, "evidence": ["12k messages waiting"]
    });
    // Other incidents the monitor opens (containers of other tests on this Docker) ask too:
    // everyone gets the slow answer, and ours is told apart by its resource.
    double.script((0..50).map(|_| LlmReply::content(answer.to_string()).delayed(THINKING)));
    let app = alerting_app(|s| {
        s.actions.enabled = true;
        s.monitor.clear_for = 1;
        s.analyzer.kind = sentinel::config::AnalyzerKind::Llm;
        s.llm.url = double.url.clone();
        s.llm.timeout = sentinel::config::HumanDuration(Duration::from_secs(20));
        s.secrets.llm_api_key = Some(secrecy::SecretString::from(KEY));
    })
    .await;

    // A real breach, opened through its own door, whose analysis starts on its own.
    let fingerprint = unique("slow");
    let mut container = None;
    let mut resource = fingerprint.clone();
    let fp = match door {
        Door::Monitor => {
            let down = Container::run("sentinel-engine-slow", &[], &["sleep", "3600"]);
            docker(&["stop", "-t", "1", &down.0]);
            let fp = sentinel::domain::Fingerprint::parse(&format!("container_down:{}", down.0))
                .unwrap();
            resource = down.0.clone();
            container = Some(down);
            let mut ticks = 0;
            while app.store.open_incident_for(&fp).await.unwrap().is_none() {
                ticks += 1;
                assert!(ticks <= 10, "the stopped container was never detected");
                app.tick_monitor().await;
            }
            fp
        }
        Door::Alertmanager | Door::Person => {
            let firing = post_alert(&app, "firing", &fingerprint).await;
            assert_eq!(firing.status, 200, "{firing:?}");
            assert_eq!(firing.body["opened"], 1, "{firing:?}");
            sentinel::domain::Fingerprint::parse(&format!("external:{fingerprint}")).unwrap()
        }
    };
    let id = app
        .store
        .open_incident_for(&fp)
        .await
        .unwrap()
        .expect("opened")
        .id;

    // The analysis has started and is waiting for the LLM.
    let ours = || -> Vec<Instant> {
        double
            .requests()
            .iter()
            .filter(|r| {
                let user = r.message("user");
                user.contains(&format!("\"resource\":\"{resource}\""))
                    || user.contains(&format!("\"resource\": \"{resource}\""))
            })
            .map(|r| r.at)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours().is_empty() {
        assert!(Instant::now() < deadline, "the LLM was never asked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = ours()[0];
    assert_eq!(current(&app, &id).await.status, Status::Analyzing);

    let audit_actor = match door {
        Door::Alertmanager => {
            let resolved = post_alert(&app, "resolved", &fingerprint).await;
            assert_eq!(counts(&resolved), (1, 0, 0), "acknowledged as resolved");
            "sentinel"
        }
        Door::Monitor => {
            let running = container.as_ref().unwrap();
            docker(&["start", &running.0]);
            let report = app.tick_monitor().await;
            // Ours, and maybe incidents of other tests' containers that came and went.
            assert!(report.resolved >= 1, "{report:?}");
            "sentinel"
        }
        Door::Person => {
            let reply = app
                .post(&resolve_path(&id), Some(&app.keys.operator), "")
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
            assert_eq!(reply.body["status"], "resolved");
            OPERATOR_ID
        }
    };
    assert!(
        asked.elapsed() < THINKING,
        "the recovery must arrive while the LLM is still thinking; make THINKING longer"
    );
    let at_once = current(&app, &id).await;
    assert_eq!(at_once.status, Status::Resolved, "{:#?}", at_once.timeline);
    assert_eq!(at_once.timeline.last().unwrap().step, "recovered");

    // The analysis finishes: the LLM answers at `asked + THINKING`; the rest takes
    // milliseconds. The incident stays resolved all along and after.
    let settled = asked + THINKING + Duration::from_secs(2);
    while Instant::now() < settled {
        let now = current(&app, &id).await;
        assert_eq!(now.status, Status::Resolved, "{:#?}", now.timeline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = current(&app, &id).await;
    assert_eq!(last.status, Status::Resolved, "{:#?}", last.timeline);
    assert_eq!(
        last.version, at_once.version,
        "the analysis wrote nothing over it"
    );
    assert!(!steps(&last).contains(&"analyzed"), "{:?}", steps(&last));
    assert_eq!(ours().len(), 1, "one answer, no retries");
    let audit = audit_of(&app, &id).await;
    let events: Vec<&str> = audit.iter().map(|e| e.record.event.as_str()).collect();
    let resolved = named(&audit, "IncidentResolved");
    assert_eq!(resolved.len(), 1, "{events:?}");
    assert_eq!(resolved[0].record.actor, audit_actor);
    assert!(named(&audit, "ActionProposed").is_empty(), "{events:?}");
    assert!(app.store.open_incident_for(&fp).await.unwrap().is_none());
}
