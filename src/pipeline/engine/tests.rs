//! The engine's table, pair by pair, and random walks through it.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use serde_json::json;

use super::*;
use crate::domain::{
    ActionId, Detection, ProposedAction, Resource, Risk, Role, Severity, Signal, Source,
};
use crate::pipeline::policy;

const T0: i64 = 1_795_860_000_000;

fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + offset_ms)
}

fn admin() -> Actor {
    Actor::ApiKey {
        name: "ops".into(),
        role: Role::Admin,
    }
}

fn start_web() -> ProposedAction {
    ProposedAction {
        action: ActionId::ContainerStart,
        params: BTreeMap::from([("container".to_owned(), json!("web-1"))]),
    }
}

/// Container web-1 as the executor reads it, in Docker's `state`.
fn web(state: &str) -> TargetState {
    TargetState::Container(crate::domain::ContainerState {
        id: Some("3f9c".to_owned()),
        name: "web-1".to_owned(),
        state: Some(state.to_owned()),
        started_at: None,
        restart_count: Some(0),
        memory: 0,
        memory_swap: 0,
    })
}

fn execution(finished: bool) -> Execution {
    Execution {
        action: start_web(),
        approved_by: "api:ops (admin)".into(),
        started_at: at(10),
        finished_at: finished.then(|| at(20)),
        before: web("exited"),
        after: finished.then(|| web("running")),
        reversible: true,
        rolled_back_at: None,
        rollback: None,
        proposal_id: None,
        fencing_token: None,
    }
}

/// An incident at `status` with what that status implies (a proposal from awaiting
/// approval on, an execution from executing on).
fn incident_at(status: Status) -> Incident {
    use Status::*;
    let detection = Detection {
        signal: Signal::ContainerDown,
        resource: Resource::parse("web-1").unwrap(),
        severity: Severity::Critical,
        value: 1.0,
        threshold: 1.0,
        source: Source::Docker,
        summary: "container web-1 is down".into(),
        labels: BTreeMap::new(),
    };
    let mut incident = Incident::open(IncidentId::parse("inc-table").unwrap(), &detection, at(0));
    if !matches!(status, Detected | Analyzing) {
        incident.propose(start_web(), web("exited"));
        incident.risk = Some(Risk::Medium);
    }
    if status == Approved {
        incident.approvals = vec!["api:ops (admin)".into()];
    }
    if status == Scheduled {
        incident.risk = Some(Risk::Low);
        incident.scheduled_for = Some(at(500));
    }
    match status {
        Executing => incident.execution = Some(execution(false)),
        Verifying | Resolved | Failed => incident.execution = Some(execution(true)),
        RolledBack => {
            let mut done = execution(true);
            done.rolled_back_at = Some(at(30));
            incident.execution = Some(done);
        }
        _ => {}
    }
    incident.status = status;
    incident
}

fn analyzed() -> Event {
    let plan = start_web().plan().unwrap();
    Event::Analyzed(Box::new(Analyzed {
        analysis: Analysis {
            root_cause: "web-1 exited".into(),
            proposed_action: start_web(),
            risk_assessment: Risk::Medium,
            confidence: 0.9,
            evidence: vec![],
            cited: vec![],
            analyzer: "rules".into(),
        },
        plan,
        decision: policy::Decision {
            risk: Risk::Medium,
            verdict: Verdict::NeedsApproval {
                role: Role::Operator,
                why: "medium risk".into(),
            },
            trust_applied: false,
        },
        snapshot: web("exited"),
        refusals: vec![],
        veto_window: Duration::from_secs(3),
        changes: vec![],
        changes_unknown: None,
    }))
}

/// A low-risk fix the policy runs on its own, with a 3-second veto window.
fn analyzed_automatic(veto_window: Duration) -> Event {
    let plan = start_web().plan().unwrap();
    Event::Analyzed(Box::new(Analyzed {
        analysis: Analysis {
            root_cause: "web-1 exited".into(),
            proposed_action: start_web(),
            risk_assessment: Risk::Low,
            confidence: 0.9,
            evidence: vec![],
            cited: vec![],
            analyzer: "rules".into(),
        },
        plan: plan.clone(),
        decision: policy::Decision {
            risk: Risk::Low,
            verdict: Verdict::Automatic(policy::AutoApproval {
                plan,
                risk: Risk::Low,
                trusted: false,
            }),
            trust_applied: false,
        },
        snapshot: web("exited"),
        refusals: vec![],
        veto_window,
        changes: vec![],
        changes_unknown: None,
    }))
}

fn viewer() -> Actor {
    Actor::SlackUser {
        user_id: "U777".into(),
        role: Role::Viewer,
    }
}

/// One event of each kind, by the name the table uses.
fn events() -> Vec<(&'static str, Event)> {
    let recovered = |by| Event::Recovered {
        by,
        actor: admin(),
        message: "it recovered".into(),
    };
    vec![
        ("cleared", recovered(Recovery::Monitor)),
        ("alert_resolved", recovered(Recovery::AlertSource)),
        ("resolved_by_hand", recovered(Recovery::Person)),
        ("reset", recovered(Recovery::Reset)),
        (
            "analysis_started",
            Event::AnalysisStarted { resumed: false },
        ),
        ("analysis_resumed", Event::AnalysisStarted { resumed: true }),
        ("analyzed", analyzed()),
        (
            "approved",
            Event::Approve {
                actor: admin(),
                proposal: None,
                two_person_rule: false,
            },
        ),
        (
            "rejected",
            Event::Reject {
                actor: admin(),
                reason: Some("no".into()),
            },
        ),
        (
            "expired",
            Event::Expire {
                waited: Duration::from_secs(1800),
            },
        ),
        (
            "target_changed",
            Event::TargetChanged {
                snapshot: web("running"),
            },
        ),
        (
            "dry_run",
            Event::DryRun {
                message: "test alert: container_start would run; nothing was executed".into(),
            },
        ),
        (
            "execution_started",
            Event::ExecutionStarted {
                execution: Box::new(execution(false)),
            },
        ),
        (
            "executed",
            Event::Executed {
                after: web("running"),
                message: "started web-1".into(),
            },
        ),
        (
            "execution_failed",
            Event::ExecutionFailed {
                message: "no such container".into(),
            },
        ),
        (
            "reconciled",
            Event::Reconciled {
                after: web("running"),
                reached_target: true,
                message: "web-1 is running".into(),
            },
        ),
        (
            "verified",
            Event::Verified(Judgement::Resolved {
                message: "verified".into(),
            }),
        ),
        (
            "verification_failed",
            Event::Verified(Judgement::NotResolved {
                message: "still down".into(),
            }),
        ),
        (
            "rollback_requested",
            Event::RollbackRequested { actor: admin() },
        ),
        (
            "rolled_back",
            Event::RolledBack {
                restored: web("exited"),
                message: "stopped web-1".into(),
                stay_closed: false,
            },
        ),
        (
            "rollback_failed",
            Event::RollbackFailed {
                message: "docker is down".into(),
            },
        ),
        ("restarted", Event::Restarted),
        (
            "analyzed_automatic",
            analyzed_automatic(Duration::from_secs(3)),
        ),
        ("stopped", Event::Stop { actor: admin() }),
        (
            "run_now",
            Event::RunNow {
                actor: admin(),
                proposal: None,
            },
        ),
        ("schedule_due", Event::ScheduleDue { paused: false }),
    ]
}

/// The table of ARCHITECTURE.md ("The incident engine"), written out independently of
/// `apply`: `>status` moved there, `=` moved but kept its status (a timeline step), `-`
/// unchanged, `-effect` unchanged with an effect to run, `!` refused (409).
const TABLE: &[(&str, [&str; 12])] = &[
    //  detected, analyzing, scheduled, awaiting_approval, approved, rejected, executing,
    //  verifying, resolved, rolled_back, escalated, failed
    (
        "cleared",
        [
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            "=",
            "=",
            "-",
            ">resolved",
            ">resolved",
            ">resolved",
        ],
    ),
    (
        "alert_resolved",
        [
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            "=",
            "=",
            "-",
            ">resolved",
            ">resolved",
            ">resolved",
        ],
    ),
    (
        "resolved_by_hand",
        [
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            "!",
            ">resolved",
            "!",
            ">resolved",
            ">resolved",
            ">resolved",
        ],
    ),
    (
        "reset",
        [
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            ">resolved",
            "!",
            ">resolved",
            "!",
            ">resolved",
            ">resolved",
            ">resolved",
        ],
    ),
    (
        "analysis_started",
        [
            ">analyzing",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "analysis_resumed",
        [
            ">analyzing",
            "=",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "analyzed",
        [
            "-",
            ">awaiting_approval",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "approved",
        [
            "!",
            "!",
            "!",
            ">approved",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
        ],
    ),
    (
        "rejected",
        [
            "!",
            "!",
            "!",
            ">rejected",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
        ],
    ),
    (
        "expired",
        [
            "-",
            "-",
            "-",
            ">escalated",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "target_changed",
        [
            "-",
            "-",
            "-",
            "-",
            ">awaiting_approval",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "dry_run",
        [
            "-",
            "-",
            "-",
            "-",
            ">resolved",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "execution_started",
        [
            "-",
            "-",
            "-",
            "-",
            ">executing",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "executed",
        [
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            ">verifying",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "execution_failed",
        [
            "-", "-", "-", "-", "-", "-", ">failed", "-", "-", "-", "-", "-",
        ],
    ),
    (
        "reconciled",
        [
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            ">verifying",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "verified",
        [
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            ">resolved",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "verification_failed",
        ["-", "-", "-", "-", "-", "-", "-", "=", "-", "-", "-", "-"],
    ),
    (
        "rollback_requested",
        ["!", "!", "!", "!", "!", "!", "!", "=", "=", "!", "!", "!"],
    ),
    (
        "rolled_back",
        ["-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"],
    ),
    (
        "rollback_failed",
        ["-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-", "-"],
    ),
    (
        "restarted",
        [
            "-analyze",
            "-analyze",
            "-run_at",
            "-",
            "-execute",
            "-",
            "-reconcile",
            "-verify",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "analyzed_automatic",
        [
            "-",
            ">scheduled",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
    (
        "stopped",
        [
            "!",
            "!",
            ">rejected",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
        ],
    ),
    (
        "run_now",
        [
            "!",
            "!",
            ">approved",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
            "!",
        ],
    ),
    (
        "schedule_due",
        [
            "-",
            "-",
            ">approved",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
            "-",
        ],
    ),
];

fn effect_name(effect: &Effect) -> &'static str {
    match effect {
        Effect::Analyze => "analyze",
        Effect::Execute(_) => "execute",
        Effect::Reconcile => "reconcile",
        Effect::Verify => "verify",
        Effect::Undo(_) => "undo",
        Effect::RunAt(_) => "run_at",
    }
}

fn describe(before: &Incident, outcome: &Outcome) -> String {
    match outcome {
        Outcome::Moved(t) if t.next().status == before.status => "=".to_owned(),
        Outcome::Moved(t) => format!(">{}", t.next().status),
        Outcome::Unchanged { effects, .. } => match effects.as_slice() {
            [] => "-".to_owned(),
            [one] => format!("-{}", effect_name(one)),
            more => format!(
                "-{}",
                more.iter().map(effect_name).collect::<Vec<_>>().join("+")
            ),
        },
        Outcome::Refused(_) => "!".to_owned(),
    }
}

#[test]
fn every_pair_of_status_and_event_ends_as_the_table_says() {
    let events = events();
    assert_eq!(TABLE.len(), events.len(), "one row per event");
    let mut checked = 0;
    for ((row, cells), (name, event)) in TABLE.iter().zip(&events) {
        assert_eq!(row, name, "rows in the order of events()");
        for (status, expected) in Status::ALL.into_iter().zip(cells) {
            let incident = incident_at(status);
            let outcome = apply(&incident, event, at(1000));
            assert_eq!(
                describe(&incident, &outcome),
                *expected,
                "({status}, {name})"
            );
            if let Outcome::Moved(t) = &outcome {
                let next = t.next();
                assert!(
                    next.timeline.iter().all(|e| e.step != "illegal_transition"),
                    "({status}, {name}) made an illegal move: {:?}",
                    next.timeline.last()
                );
                assert!(
                    next.timeline.len() > incident.timeline.len(),
                    "({status}, {name}) moved without a timeline entry"
                );
                assert_eq!(
                    next.version, incident.version,
                    "the store bumps the version"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 26 * 12);
}

#[test]
fn a_test_alerts_fix_is_a_dry_run_and_never_executes() {
    let mut approved = incident_at(Status::Approved);
    approved.synthetic = true;
    // No intent is ever written for it, so the executor never reaches the target.
    let intent = Event::ExecutionStarted {
        execution: Box::new(execution(false)),
    };
    assert!(matches!(
        apply(&approved, &intent, at(5)),
        Outcome::Unchanged { ref effects, .. } if effects.is_empty()
    ));
    let dry = Event::DryRun {
        message: "test alert: container_start would run; nothing was executed".into(),
    };
    let Outcome::Moved(t) = apply(&approved, &dry, at(6)) else {
        panic!("not recorded");
    };
    assert!(t.effects.is_empty());
    let next = t.next();
    assert_eq!(next.status, Status::Resolved);
    assert!(next.execution.is_none());
    assert_eq!(next.timeline.last().unwrap().step, "dry_run");
    // With nothing executed there is nothing to roll back.
    let mut stored = next.clone();
    stored.version += 1;
    assert!(matches!(
        apply(&stored, &Event::RollbackRequested { actor: admin() }, at(7)),
        Outcome::Refused(_)
    ));
}

#[test]
fn a_recovery_before_execution_resolves_with_the_step_recovered() {
    for status in [
        Status::Detected,
        Status::Analyzing,
        Status::AwaitingApproval,
        Status::Approved,
    ] {
        let incident = incident_at(status);
        let event = Event::Recovered {
            by: Recovery::AlertSource,
            actor: Actor::Sentinel,
            message: "resolved by its source".into(),
        };
        let Outcome::Moved(t) = apply(&incident, &event, at(5)) else {
            panic!("{status}: not moved");
        };
        let last = t.next().timeline.last().unwrap();
        assert_eq!(last.step, "recovered", "{status}");
        assert_eq!(t.next().status, Status::Resolved);
        assert_eq!(t.next().resolved_at, Some(at(5)));
    }
}

#[test]
fn a_demo_reset_resolves_with_the_step_reset() {
    for status in [
        Status::AwaitingApproval,
        Status::Verifying,
        Status::RolledBack,
    ] {
        let event = Event::Recovered {
            by: Recovery::Reset,
            actor: admin(),
            message: "demo reset: sentinel-demo removed".into(),
        };
        let Outcome::Moved(t) = apply(&incident_at(status), &event, at(5)) else {
            panic!("{status}: not moved");
        };
        assert_eq!(t.next().status, Status::Resolved, "{status}");
        assert_eq!(t.next().timeline.last().unwrap().step, "reset", "{status}");
    }
}

#[test]
fn a_recovery_during_a_fix_is_noted_once_and_verification_uses_it() {
    let mut incident = incident_at(Status::Verifying);
    incident.signal = Signal::External;
    let cleared = Event::Recovered {
        by: Recovery::AlertSource,
        actor: Actor::Sentinel,
        message: "resolved by its source".into(),
    };
    let Outcome::Moved(t) = apply(&incident, &cleared, at(5)) else {
        panic!("not noted");
    };
    let noted = t.next().clone();
    assert_eq!(noted.recovered_at, Some(at(5)));
    assert_eq!(noted.status, Status::Verifying);
    assert!(matches!(
        apply(&noted, &cleared, at(6)),
        Outcome::Unchanged { .. }
    ));
    // External alerts cannot be measured: the source's word resolves it.
    let judged = Event::Verified(Judgement::NotResolved {
        message: "external alerts are resolved by their source".into(),
    });
    let Outcome::Moved(t) = apply(&noted, &judged, at(7)) else {
        panic!("not judged");
    };
    assert_eq!(t.next().status, Status::Resolved);
}

#[test]
fn only_one_of_many_rollback_requests_gets_the_permit() {
    let incident = incident_at(Status::Resolved);
    let ask = Event::RollbackRequested { actor: admin() };
    let Outcome::Moved(first) = apply(&incident, &ask, at(5)) else {
        panic!("the first request is granted");
    };
    // The store bumps the version; every later request reads that.
    let mut stored = first.next().clone();
    stored.version += 1;
    for _ in 0..49 {
        assert!(matches!(apply(&stored, &ask, at(6)), Outcome::Refused(_)));
    }
    let effects = first.committed(&stored).unwrap();
    assert!(matches!(effects.as_slice(), [Effect::Undo(p)] if !p.automatic()));
    // A stale write yields nothing.
    let Outcome::Moved(again) = apply(&incident, &ask, at(5)) else {
        panic!()
    };
    assert!(again.committed(&incident).is_none());
}

#[test]
fn a_rollback_under_way_completes_or_is_reported_and_resumes_after_a_restart() {
    let mut incident = incident_at(Status::Resolved);
    incident.execution.as_mut().unwrap().rollback = Some(RollbackStart {
        by: "api:ops (admin)".into(),
        at: at(5),
    });
    // A restart resumes it, through a stored transition.
    let Outcome::Moved(resumed) = apply(&incident, &Event::Restarted, at(6)) else {
        panic!("not resumed");
    };
    assert!(matches!(resumed.effects.as_slice(), [Effect::Undo(_)]));
    // A person cannot resolve it meanwhile; the monitor's recovery is noted.
    let by_hand = Event::Recovered {
        by: Recovery::Person,
        actor: admin(),
        message: "done".into(),
    };
    assert!(matches!(
        apply(&incident, &by_hand, at(6)),
        Outcome::Refused(_)
    ));
    let done = Event::RolledBack {
        restored: web("exited"),
        message: "stopped web-1".into(),
        stay_closed: false,
    };
    let Outcome::Moved(t) = apply(&incident, &done, at(7)) else {
        panic!()
    };
    assert_eq!(t.next().status, Status::RolledBack);
    assert_eq!(t.next().timeline.last().unwrap().actor, "api:ops (admin)");
    let failed = Event::RollbackFailed {
        message: "docker is down".into(),
    };
    let Outcome::Moved(t) = apply(&incident, &failed, at(7)) else {
        panic!()
    };
    assert_eq!(t.next().status, Status::Resolved);
    assert!(
        t.next().execution.as_ref().unwrap().rollback.is_none(),
        "ask again"
    );
}

#[test]
fn a_closed_incident_whose_fingerprint_reopened_records_its_rollback_and_stays_closed() {
    let mut incident = incident_at(Status::Resolved);
    incident.execution.as_mut().unwrap().rollback = Some(RollbackStart {
        by: "api:ops (admin)".into(),
        at: at(5),
    });
    let done = Event::RolledBack {
        restored: web("exited"),
        message: "stopped web-1; inc-newer is open for it".into(),
        stay_closed: true,
    };
    let Outcome::Moved(t) = apply(&incident, &done, at(6)) else {
        panic!()
    };
    assert_eq!(t.next().status, Status::Resolved);
    assert!(!t.next().execution.as_ref().unwrap().rolling_back());
    assert_eq!(t.next().timeline.last().unwrap().step, "rolled_back");
}

#[test]
fn a_failed_verification_rolls_back_automatically_then_escalates() {
    let incident = incident_at(Status::Verifying);
    let judged = Event::Verified(Judgement::NotResolved {
        message: "still down".into(),
    });
    let Outcome::Moved(t) = apply(&incident, &judged, at(5)) else {
        panic!()
    };
    assert!(matches!(t.effects.as_slice(), [Effect::Undo(p)] if p.automatic()));
    let mut rolling = t.next().clone();
    rolling.version += 1;
    let done = Event::RolledBack {
        restored: web("exited"),
        message: "stopped web-1".into(),
        stay_closed: false,
    };
    let Outcome::Moved(t) = apply(&rolling, &done, at(6)) else {
        panic!()
    };
    let steps: Vec<_> = t.next().timeline.iter().map(|e| e.step.as_str()).collect();
    assert_eq!(t.next().status, Status::Escalated);
    assert!(steps.ends_with(&["rolled_back", "escalated"]), "{steps:?}");
}

#[test]
fn an_approval_pinned_to_an_old_proposal_is_refused() {
    let incident = incident_at(Status::AwaitingApproval);
    let old = Event::Approve {
        actor: admin(),
        proposal: Some("prop-00000000".into()),
        two_person_rule: false,
    };
    assert!(matches!(apply(&incident, &old, at(5)), Outcome::Refused(_)));
    let current = Event::Approve {
        actor: admin(),
        proposal: incident.proposal_id.clone(),
        two_person_rule: false,
    };
    let Outcome::Moved(t) = apply(&incident, &current, at(5)) else {
        panic!()
    };
    assert!(matches!(t.effects.as_slice(), [Effect::Execute(_)]));
}

/// Statuses the engine must move on from without anyone's help, and how.
fn has_a_way_out(incident: &Incident) -> bool {
    use Status::*;
    let restarted = apply(incident, &Event::Restarted, at(0));
    let acts_on_restart = match &restarted {
        Outcome::Moved(t) => !t.effects.is_empty(),
        Outcome::Unchanged { effects, .. } => !effects.is_empty(),
        Outcome::Refused(_) => false,
    };
    match incident.status {
        // The system itself must act after a restart.
        Detected | Analyzing | Approved | Executing | Verifying => acts_on_restart,
        // The window's end runs it by itself, and a restart keeps that appointment.
        Scheduled => {
            let due = incident.scheduled_for.unwrap_or(at(0));
            acts_on_restart
                && matches!(
                    apply(incident, &Event::ScheduleDue { paused: false }, due),
                    Outcome::Moved(_)
                )
        }
        // A person is asked; expiry escalates when nobody answers.
        AwaitingApproval => matches!(
            apply(
                incident,
                &Event::Expire {
                    waited: Duration::from_secs(1)
                },
                at(0)
            ),
            Outcome::Moved(_)
        ),
        // Open for people, closed by a recovery; a rollback under way resumes on restart.
        Rejected | RolledBack | Escalated | Failed | Resolved => {
            let rolling = incident
                .execution
                .as_ref()
                .is_some_and(Execution::rolling_back);
            !rolling || acts_on_restart
        }
    }
}

#[test]
fn random_event_sequences_never_leave_an_incident_without_a_way_forward() {
    let events = events();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x05e1_71e1);
    let mut reached = std::collections::BTreeSet::new();
    for walk in 0..2000 {
        let start = Status::ALL[rng.random_range(0..Status::ALL.len())];
        let mut incident = incident_at(start);
        for step in 0..30 {
            let (name, event) = &events[rng.random_range(0..events.len())];
            let now = at(1000 * (step + 1));
            if let Outcome::Moved(t) = apply(&incident, event, now) {
                let mut stored = t.next().clone();
                stored.version += 1;
                assert!(
                    stored
                        .timeline
                        .iter()
                        .all(|e| e.step != "illegal_transition"),
                    "walk {walk}: {name} made an illegal move from {}",
                    incident.status
                );
                incident = stored;
            }
            reached.insert(incident.status);
            assert!(
                has_a_way_out(&incident),
                "walk {walk}, after {name}: {} has no way forward: {:#?}",
                incident.status,
                incident.execution
            );
        }
    }
    assert_eq!(
        reached.len(),
        Status::ALL.len(),
        "every status reached: {reached:?}"
    );
}

#[test]
fn a_low_risk_fix_waits_out_the_veto_window_then_runs_through_an_approval() {
    let analyzing = incident_at(Status::Analyzing);
    let Outcome::Moved(t) = apply(
        &analyzing,
        &analyzed_automatic(Duration::from_secs(3)),
        at(1000),
    ) else {
        panic!("not scheduled");
    };
    assert!(matches!(t.effects.as_slice(), [Effect::RunAt(due)] if *due == at(4000)));
    let mut scheduled = t.next().clone();
    scheduled.version += 1;
    assert_eq!(scheduled.status, Status::Scheduled);
    assert_eq!(scheduled.scheduled_for, Some(at(4000)));
    // Early: nothing moves, and the appointment is kept.
    let due = Event::ScheduleDue { paused: false };
    match apply(&scheduled, &due, at(3999)) {
        Outcome::Unchanged { effects, .. } => {
            assert!(matches!(effects.as_slice(), [Effect::RunAt(d)] if *d == at(4000)))
        }
        other => panic!("ran early: {other:?}"),
    }
    // On time: approved by the policy, with the permission to execute.
    let Outcome::Moved(t) = apply(&scheduled, &due, at(4000)) else {
        panic!("did not run");
    };
    assert_eq!(t.next().status, Status::Approved);
    match t.effects.as_slice() {
        [Effect::Execute(action)] => {
            assert_eq!(action.approved_by(), "policy (low risk, automatic)")
        }
        other => panic!("{other:?}"),
    }
    // Paused meanwhile: a person is asked instead.
    let Outcome::Moved(t) = apply(&scheduled, &Event::ScheduleDue { paused: true }, at(4000))
    else {
        panic!("not moved");
    };
    assert_eq!(t.next().status, Status::AwaitingApproval);
    assert!(t.effects.is_empty());
}

#[test]
fn without_a_veto_window_and_for_test_alerts_the_fix_is_approved_at_once() {
    let analyzing = incident_at(Status::Analyzing);
    let Outcome::Moved(t) = apply(&analyzing, &analyzed_automatic(Duration::ZERO), at(1000)) else {
        panic!()
    };
    assert_eq!(t.next().status, Status::Approved);
    assert_eq!(t.next().scheduled_for, None);
    assert!(matches!(t.effects.as_slice(), [Effect::Execute(_)]));
    let mut synthetic = incident_at(Status::Analyzing);
    synthetic.synthetic = true;
    let Outcome::Moved(t) = apply(
        &synthetic,
        &analyzed_automatic(Duration::from_secs(60)),
        at(1000),
    ) else {
        panic!()
    };
    assert_eq!(
        t.next().status,
        Status::Approved,
        "a dry run has nothing to veto"
    );
}

#[test]
fn anyone_with_a_role_may_stop_only_an_operator_may_run_now() {
    let scheduled = incident_at(Status::Scheduled);
    let Outcome::Moved(t) = apply(&scheduled, &Event::Stop { actor: viewer() }, at(100)) else {
        panic!("a viewer may stop");
    };
    let next = t.next();
    assert_eq!(next.status, Status::Rejected);
    let last = next.timeline.last().unwrap();
    assert_eq!(last.actor, "slack:U777 (viewer)");
    assert!(
        last.message.starts_with("rejected: stopped"),
        "{}",
        last.message
    );
    assert!(t.effects.is_empty(), "a stop runs nothing");
    let run_now = Event::RunNow {
        actor: viewer(),
        proposal: None,
    };
    assert!(matches!(
        apply(&scheduled, &run_now, at(100)),
        Outcome::Refused(DecisionError::Forbidden {
            needed: Role::Operator,
            has: Role::Viewer
        })
    ));
    let stale = Event::RunNow {
        actor: admin(),
        proposal: Some("prop-0000000000000000".into()),
    };
    assert!(matches!(
        apply(&scheduled, &stale, at(100)),
        Outcome::Refused(DecisionError::Conflict(_))
    ));
    let current = Event::RunNow {
        actor: admin(),
        proposal: scheduled.proposal_id.clone(),
    };
    let Outcome::Moved(t) = apply(&scheduled, &current, at(100)) else {
        panic!("an admin may run it now");
    };
    assert_eq!(t.next().status, Status::Approved);
    assert_eq!(t.next().timeline.last().unwrap().actor, "api:ops (admin)");
    assert!(matches!(t.effects.as_slice(), [Effect::Execute(_)]));
}

#[test]
fn of_a_stop_and_a_run_now_the_one_stored_first_wins() {
    let scheduled = incident_at(Status::Scheduled);
    let stop = Event::Stop { actor: viewer() };
    let run_now = Event::RunNow {
        actor: admin(),
        proposal: None,
    };
    let due = Event::ScheduleDue { paused: false };
    for (first, second) in [(&stop, &run_now), (&run_now, &stop)] {
        let Outcome::Moved(t) = apply(&scheduled, first, at(100)) else {
            panic!()
        };
        let mut stored = t.next().clone();
        stored.version += 1;
        // The loser's compare-and-set fails; the engine decides again on the fresh read.
        assert!(matches!(
            apply(&stored, second, at(101)),
            Outcome::Refused(_)
        ));
        // The window's end finds nothing left to run.
        assert!(matches!(
            apply(&stored, &due, at(600)),
            Outcome::Unchanged { ref effects, .. } if effects.is_empty()
        ));
    }
}

#[test]
fn a_restart_keeps_the_schedule_and_a_recovery_resolves_without_running() {
    let scheduled = incident_at(Status::Scheduled);
    match apply(&scheduled, &Event::Restarted, at(100)) {
        Outcome::Unchanged { effects, .. } => {
            assert!(matches!(effects.as_slice(), [Effect::RunAt(d)] if *d == at(500)))
        }
        other => panic!("{other:?}"),
    }
    for by in [Recovery::Monitor, Recovery::AlertSource, Recovery::Person] {
        let event = Event::Recovered {
            by,
            actor: admin(),
            message: "it recovered".into(),
        };
        let Outcome::Moved(t) = apply(&scheduled, &event, at(100)) else {
            panic!("{by:?}")
        };
        assert_eq!(t.next().status, Status::Resolved);
        assert_eq!(t.next().timeline.last().unwrap().step, "recovered");
        assert!(t.effects.is_empty());
    }
}
