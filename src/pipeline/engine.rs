//! The incident engine: one pure transition function for every input at every status
//! (SPEC §12.1).
//!
//! In: an incident as stored (its decision), an [`Event`] and `now`. Out: an [`Outcome`]:
//! the next decision to store with compare-and-set and the [`Effect`]s to run once it is
//! stored ([`Outcome::Moved`]); nothing to store, maybe with effects to run
//! ([`Outcome::Unchanged`]); or a person's request this status does not allow
//! ([`Outcome::Refused`], answered 409 and audited).
//!
//! [`apply`] is defined for every (status, event) pair; ARCHITECTURE.md holds the table and
//! the tests below walk every pair of it. It does no I/O: no clock, no store, no Docker. The
//! runner (`remediate`) reads the incident, applies the event, stores the next decision
//! with compare-and-set (again on a fresh read after a conflict), and only then takes the
//! effects: a [`RollbackPermit`] in particular exists only inside a stored transition, so
//! any number of concurrent rollback requests make exactly one undo.

use std::time::Duration;

use crate::domain::{
    ActionPlan, Actor, Change, Execution, Incident, IncidentId, RollbackStart, Status, TargetState,
    Timestamp,
};
use crate::pipeline::analyze::Analysis;
use crate::pipeline::approve::{self, ApprovedAction, DecisionError};
use crate::pipeline::policy::{Decision, Verdict};
use crate::pipeline::verify::Judgement;

/// Where a recovery came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The monitor's samples are clean again.
    Monitor,
    /// The alert's source (Alertmanager, a webhook) said it is resolved.
    AlertSource,
    /// A person resolved it by hand (`POST /api/incidents/{id}/resolve`, `/sentinel resolve`).
    Person,
    /// A person reset the demo (`sentinel demo reset`): its situation is gone. As `Person`,
    /// but the step is `reset`.
    Reset,
}

/// Every input an incident can receive.
#[derive(Debug, Clone)]
pub enum Event {
    /// The breach is over; `message` says who says so.
    Recovered {
        by: Recovery,
        actor: Actor,
        message: String,
    },
    /// The analysis worker takes the incident (`resumed`: again, after a restart).
    AnalysisStarted {
        resumed: bool,
    },
    /// Analysis and policy decided.
    Analyzed(Box<Analyzed>),
    /// A person approves, optionally pinned to the proposal they saw.
    Approve {
        actor: Actor,
        proposal: Option<String>,
        two_person_rule: bool,
    },
    /// A person rejects the proposal.
    Reject {
        actor: Actor,
        reason: Option<String>,
    },
    /// The request for approval went unanswered for `waited`.
    Expire {
        waited: Duration,
    },
    /// Right before execution, the target no longer matches the approved snapshot.
    TargetChanged {
        snapshot: TargetState,
    },
    /// An approved fix of a test alert (`synthetic`) is recorded as a dry run instead of
    /// running: the incident closes with step `dry_run` and nothing reaches a target.
    DryRun {
        message: String,
    },
    /// The intent: the execution record is written before the side effect.
    ExecutionStarted {
        execution: Box<Execution>,
    },
    /// The side effect is done; `after` is the target's state.
    Executed {
        after: TargetState,
        message: String,
    },
    ExecutionFailed {
        message: String,
    },
    /// After a restart, an interrupted execution was checked against the target.
    Reconciled {
        after: TargetState,
        reached_target: bool,
        message: String,
    },
    /// Verification measured the signal again.
    Verified(Judgement),
    /// A person asks to undo the executed fix.
    RollbackRequested {
        actor: Actor,
    },
    /// The undo is done; `restored` is what the target looks like now. `stay_closed`: a
    /// closed incident cannot reopen (another incident of its fingerprint is open now), so
    /// it records the rollback and stays closed.
    RolledBack {
        restored: TargetState,
        message: String,
        stay_closed: bool,
    },
    RollbackFailed {
        message: String,
    },
    /// The process started again: every open incident moves on by itself.
    Restarted,
    /// A person stops a scheduled fix during its veto window (anyone with a role).
    Stop {
        actor: Actor,
    },
    /// An operator runs a scheduled fix at once, optionally pinned to the proposal they saw.
    RunNow {
        actor: Actor,
        proposal: Option<String>,
    },
    /// A scheduled fix's veto window may have ended (a timer or the leader's sweep);
    /// `paused`: `/sentinel pause` is in force, so it waits for a person instead.
    ScheduleDue {
        paused: bool,
    },
}

impl Event {
    /// A short name, for logs and the table.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Recovered { by, .. } => match by {
                Recovery::Monitor => "cleared",
                Recovery::AlertSource => "alert_resolved",
                Recovery::Person => "resolved_by_hand",
                Recovery::Reset => "reset",
            },
            Event::AnalysisStarted { .. } => "analysis_started",
            Event::Analyzed(_) => "analyzed",
            Event::Approve { .. } => "approved",
            Event::Reject { .. } => "rejected",
            Event::Expire { .. } => "expired",
            Event::TargetChanged { .. } => "target_changed",
            Event::DryRun { .. } => "dry_run",
            Event::ExecutionStarted { .. } => "execution_started",
            Event::Executed { .. } => "executed",
            Event::ExecutionFailed { .. } => "execution_failed",
            Event::Reconciled { .. } => "reconciled",
            Event::Verified(_) => "verified",
            Event::RollbackRequested { .. } => "rollback_requested",
            Event::RolledBack { .. } => "rolled_back",
            Event::RollbackFailed { .. } => "rollback_failed",
            Event::Restarted => "restarted",
            Event::Stop { .. } => "stopped",
            Event::RunNow { .. } => "run_now",
            Event::ScheduleDue { .. } => "schedule_due",
        }
    }
}

/// What analysis and the policy concluded, ready to be applied.
#[derive(Debug, Clone)]
pub struct Analyzed {
    pub analysis: Analysis,
    pub plan: ActionPlan,
    pub decision: Decision,
    /// The target as the proposal saw it.
    pub snapshot: TargetState,
    /// Why the LLM's proposal (or the rules') was refused on the way, for the timeline.
    pub refusals: Vec<String>,
    /// `[actions] veto_window`: an automatic fix is first scheduled this far ahead; zero
    /// runs it at once.
    pub veto_window: Duration,
    /// The target container's recent changes, as read (`analyze::ChangesRead`).
    pub changes: Vec<Change>,
    /// Why the recent changes could not be read, for the timeline (`changes_unknown`).
    pub changes_unknown: Option<String>,
}

/// Work to do once a transition is stored (or, for [`Outcome::Unchanged`], right away).
#[derive(Debug)]
pub enum Effect {
    /// Analyze the incident.
    Analyze,
    /// Execute the approved action.
    Execute(ApprovedAction),
    /// Check an interrupted execution against the target.
    Reconcile,
    /// Verify after `settle`.
    Verify,
    /// Undo the executed fix: only this permit lets `Executor::undo` run.
    Undo(RollbackPermit),
    /// Apply [`Event::ScheduleDue`] at this time (a scheduled fix's veto window ends).
    RunAt(Timestamp),
}

/// Permission to undo one incident's fix, granted by exactly one stored transition.
#[derive(Debug)]
pub struct RollbackPermit {
    incident: IncidentId,
    plan: ActionPlan,
    before: TargetState,
    /// The fix is being undone because verification failed (then the incident escalates).
    automatic: bool,
}

impl RollbackPermit {
    pub fn incident(&self) -> &IncidentId {
        &self.incident
    }
    pub fn plan(&self) -> &ActionPlan {
        &self.plan
    }
    /// The target's state before the fix, to restore.
    pub fn before(&self) -> &TargetState {
        &self.before
    }
    pub fn automatic(&self) -> bool {
        self.automatic
    }
}

/// A next decision and the effects it unlocks once stored.
#[derive(Debug)]
pub struct Transition {
    next: Incident,
    effects: Vec<Effect>,
}

impl Transition {
    /// The incident to store with compare-and-set.
    pub fn next(&self) -> &Incident {
        &self.next
    }

    /// The effects, for the incident as it was stored from [`Self::next`] (one version on).
    /// `None` when `stored` is not that write: then nothing may run.
    pub fn committed(self, stored: &Incident) -> Option<Vec<Effect>> {
        (stored.id == self.next.id && stored.version == self.next.version + 1)
            .then_some(self.effects)
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// Boxed: an incident is large, and most outcomes carry none.
    Moved(Box<Transition>),
    /// Nothing to store: the event does not apply at this status (`why`), with the effects
    /// that still apply (restart recovery).
    Unchanged { why: String, effects: Vec<Effect> },
    /// A person asked for something this status does not allow.
    Refused(DecisionError),
}

fn unchanged(why: impl Into<String>) -> Outcome {
    Outcome::Unchanged {
        why: why.into(),
        effects: Vec::new(),
    }
}

fn resume(why: impl Into<String>, effects: Vec<Effect>) -> Outcome {
    Outcome::Unchanged {
        why: why.into(),
        effects,
    }
}

fn refused(message: String) -> Outcome {
    Outcome::Refused(DecisionError::Conflict(message))
}

fn moved(next: Incident, effects: Vec<Effect>) -> Outcome {
    Outcome::Moved(Box::new(Transition { next, effects }))
}

/// Moves `next` to `to`; every call site below is a move the state machine allows, which
/// `every_pair_is_defined` checks through the outcomes.
fn go(next: &mut Incident, to: Status, actor: &str, message: impl Into<String>, now: Timestamp) {
    if let Err(e) = next.transition(to, actor, message, now) {
        // Unreachable by the table's tests; recorded rather than panicking in production.
        next.record("illegal_transition", "sentinel", e.to_string(), now);
    }
}

/// Applies `event` to `incident` at `now`. Defined for every status.
pub fn apply(incident: &Incident, event: &Event, now: Timestamp) -> Outcome {
    use Status::*;
    let status = incident.status;
    match event {
        Event::Recovered { by, actor, message } => recovered(incident, *by, actor, message, now),

        Event::AnalysisStarted { resumed } => match status {
            Detected => {
                let mut next = incident.clone();
                go(
                    &mut next,
                    Analyzing,
                    "sentinel",
                    "analyzing what happened",
                    now,
                );
                moved(next, Vec::new())
            }
            Analyzing if *resumed => {
                let mut next = incident.clone();
                next.record(
                    "analysis_resumed",
                    "sentinel",
                    "analysis was interrupted by a restart; analyzing again",
                    now,
                );
                moved(next, Vec::new())
            }
            _ => unchanged(format!("not analyzing an incident that is {status}")),
        },

        Event::Analyzed(analyzed) => match status {
            Analyzing => analyzed_outcome(incident, analyzed, now),
            _ => unchanged(format!("analysis arrived for an incident that is {status}")),
        },

        Event::Approve {
            actor,
            proposal,
            two_person_rule,
        } => match approve::approve(incident, actor, proposal.as_deref(), *two_person_rule, now) {
            Ok(approval) => {
                let effects = approval.action.into_iter().map(Effect::Execute).collect();
                moved(approval.incident, effects)
            }
            Err(e) => Outcome::Refused(e),
        },

        Event::Reject { actor, reason } => {
            match approve::reject(incident, actor, reason.as_deref(), now) {
                Ok(next) => moved(next, Vec::new()),
                Err(e) => Outcome::Refused(e),
            }
        }

        Event::Expire { waited } => match status {
            AwaitingApproval => {
                let mut next = incident.clone();
                go(
                    &mut next,
                    Escalated,
                    "sentinel",
                    format!(
                        "the approval request expired after {} without an answer",
                        humantime::format_duration(*waited)
                    ),
                    now,
                );
                moved(next, Vec::new())
            }
            _ => unchanged(format!("nothing waits for approval: it is {status}")),
        },

        Event::TargetChanged { snapshot } => match status {
            Approved => {
                let mut next = incident.clone();
                if let Some(action) = next.proposed_action.clone() {
                    next.propose(action, snapshot.clone());
                }
                next.approvals.clear();
                go(
                    &mut next,
                    AwaitingApproval,
                    "sentinel",
                    "the target changed since the proposal; approve again to run the fix on \
                     its current state",
                    now,
                );
                moved(next, Vec::new())
            }
            _ => unchanged(format!("no approved fix waits to run: it is {status}")),
        },

        Event::DryRun { message } => match status {
            Approved if incident.execution.is_none() => {
                let mut next = incident.clone();
                go(&mut next, Resolved, "sentinel", message.clone(), now);
                if let Some(entry) = next.timeline.last_mut() {
                    entry.step = "dry_run".to_owned();
                }
                moved(next, Vec::new())
            }
            _ => unchanged(format!("no approved fix waits to run: it is {status}")),
        },

        // A test alert's fix never runs: its intent is never written.
        Event::ExecutionStarted { .. } if incident.synthetic => {
            unchanged("a test alert's fix is a dry run; it never executes")
        }
        Event::ExecutionStarted { execution } => match status {
            Approved if incident.execution.is_none() => {
                let mut next = incident.clone();
                next.execution = Some(Execution::clone(execution));
                go(
                    &mut next,
                    Executing,
                    "sentinel",
                    format!("running {}", execution.action.action),
                    now,
                );
                moved(next, Vec::new())
            }
            _ => unchanged(format!(
                "not starting a fix for an incident that is {status}"
            )),
        },

        Event::Executed { after, message } => match status {
            Executing => {
                let mut next = incident.clone();
                if let Some(execution) = next.execution.as_mut() {
                    execution.after = Some(after.clone());
                    execution.finished_at = Some(now);
                }
                go(&mut next, Verifying, "sentinel", message.clone(), now);
                moved(next, vec![Effect::Verify])
            }
            _ => unchanged(format!("no fix is running: it is {status}")),
        },

        Event::ExecutionFailed { message } => match status {
            Executing => {
                let mut next = incident.clone();
                if let Some(execution) = next.execution.as_mut() {
                    execution.finished_at = Some(now);
                }
                go(&mut next, Failed, "sentinel", message.clone(), now);
                moved(next, Vec::new())
            }
            _ => unchanged(format!("no fix is running: it is {status}")),
        },

        Event::Reconciled {
            after,
            reached_target,
            message,
        } => match status {
            Executing => {
                let mut next = incident.clone();
                next.record("reconciled", "sentinel", message.clone(), now);
                if let Some(execution) = next.execution.as_mut() {
                    execution.after = Some(after.clone());
                    execution.finished_at = Some(now);
                }
                if *reached_target {
                    go(
                        &mut next,
                        Verifying,
                        "sentinel",
                        "the fix reached the target before the restart; verifying it",
                        now,
                    );
                    moved(next, vec![Effect::Verify])
                } else {
                    go(
                        &mut next,
                        Failed,
                        "sentinel",
                        "the fix was interrupted before it reached the target; nothing was \
                         changed",
                        now,
                    );
                    moved(next, Vec::new())
                }
            }
            _ => unchanged(format!("no interrupted fix to reconcile: it is {status}")),
        },

        Event::Verified(judgement) => match status {
            Verifying if rolling_back(incident) => unchanged("a rollback is under way"),
            Verifying => verified(incident, judgement, now),
            _ => unchanged(format!("nothing to verify: it is {status}")),
        },

        Event::RollbackRequested { actor } => rollback_requested(incident, actor, now),

        Event::RolledBack {
            restored: _,
            message,
            stay_closed,
        } => match &incident.execution {
            Some(execution) if execution.rolling_back() => {
                let (by, automatic) = rollback_by(execution);
                let mut next = incident.clone();
                if let Some(execution) = next.execution.as_mut() {
                    execution.rolled_back_at = Some(now);
                }
                if *stay_closed && !incident.is_open() {
                    next.record("rolled_back", &by, message.clone(), now);
                    return moved(next, Vec::new());
                }
                go(&mut next, RolledBack, &by, message.clone(), now);
                if automatic {
                    go(
                        &mut next,
                        Escalated,
                        "sentinel",
                        "escalated: the fix did not help and was rolled back",
                        now,
                    );
                }
                moved(next, Vec::new())
            }
            _ => unchanged("no rollback is under way"),
        },

        Event::RollbackFailed { message } => match &incident.execution {
            Some(execution) if execution.rolling_back() => {
                let (by, automatic) = rollback_by(execution);
                let mut next = incident.clone();
                // The permit is spent; a person may ask again.
                if let Some(execution) = next.execution.as_mut() {
                    execution.rollback = None;
                }
                next.record("rollback_failed", &by, message.clone(), now);
                if automatic && next.status.can_transition_to(Escalated) {
                    go(
                        &mut next,
                        Escalated,
                        "sentinel",
                        format!("escalated: the fix did not help and could not be rolled back ({message})"),
                        now,
                    );
                }
                moved(next, Vec::new())
            }
            _ => unchanged("no rollback is under way"),
        },

        Event::Restarted => restarted(incident, now),

        Event::Stop { actor } => stop(incident, actor, now),
        Event::RunNow { actor, proposal } => run_now(incident, actor, proposal.as_deref(), now),
        Event::ScheduleDue { paused } => schedule_due(incident, *paused, now),
    }
}

/// What a scheduled fix is, for the timeline: `sandbox_cleanup`.
fn scheduled_action(incident: &Incident) -> String {
    incident
        .proposed_action
        .as_ref()
        .map_or_else(|| "the fix".to_owned(), |a| a.action.to_string())
}

/// Stops a scheduled fix: `rejected` with the reason "stopped"; nothing runs. Anyone with
/// a role may (the route and the Slack door refuse people without one).
fn stop(incident: &Incident, actor: &Actor, now: Timestamp) -> Outcome {
    match incident.status {
        Status::Scheduled => {
            let mut next = incident.clone();
            go(
                &mut next,
                Status::Rejected,
                &actor.to_string(),
                format!(
                    "rejected: stopped. {} stopped {} during its veto window; nothing was run",
                    actor,
                    scheduled_action(incident)
                ),
                now,
            );
            moved(next, Vec::new())
        }
        Status::Approved | Status::Executing | Status::Verifying => refused(format!(
            "too late to stop incident {}: its fix already runs (it is {})",
            incident.id, incident.status
        )),
        status => refused(format!(
            "incident {} has no scheduled fix to stop: it is {status}",
            incident.id
        )),
    }
}

/// Runs a scheduled fix before its window ends: operators and admins.
fn run_now(incident: &Incident, actor: &Actor, proposal: Option<&str>, now: Timestamp) -> Outcome {
    if let Some(has) = actor.role() {
        if !has.allows(crate::domain::Role::Operator) {
            return Outcome::Refused(DecisionError::Forbidden {
                needed: crate::domain::Role::Operator,
                has,
            });
        }
    }
    if incident.status != Status::Scheduled {
        return refused(format!(
            "incident {} has no scheduled fix to run now: it is {}",
            incident.id, incident.status
        ));
    }
    if let Err(e) = approve::check_proposal(incident, proposal) {
        return Outcome::Refused(e);
    }
    approve_scheduled(
        incident,
        &actor.to_string(),
        format!(
            "run now by {actor}: {} runs before its veto window ends",
            scheduled_action(incident)
        ),
        now,
    )
}

/// The veto window of a scheduled fix may have ended: run it (or, paused, ask a person).
fn schedule_due(incident: &Incident, paused: bool, now: Timestamp) -> Outcome {
    if incident.status != Status::Scheduled {
        return unchanged(format!("no fix is scheduled: it is {}", incident.status));
    }
    let due = incident.scheduled_for.unwrap_or(now);
    if now < due {
        return resume(
            format!("the veto window ends at {due}"),
            vec![Effect::RunAt(due)],
        );
    }
    if paused {
        let mut next = incident.clone();
        go(
            &mut next,
            Status::AwaitingApproval,
            "sentinel",
            format!(
                "waiting for an operator to approve: automatic execution was paused during \
                 the veto window, so {} did not run on its own",
                scheduled_action(incident)
            ),
            now,
        );
        return moved(next, Vec::new());
    }
    approve_scheduled(
        incident,
        "sentinel",
        format!(
            "the veto window ended without a stop; running {} (approved by policy)",
            scheduled_action(incident)
        ),
        now,
    )
}

/// `scheduled → approved`, with the policy's approval read back from the stored incident
/// (the same path as an approval, and as a restart of an approved fix).
fn approve_scheduled(incident: &Incident, actor: &str, message: String, now: Timestamp) -> Outcome {
    let mut next = incident.clone();
    go(&mut next, Status::Approved, actor, message, now);
    match approve::resume(&next) {
        Some(action) => moved(next, vec![Effect::Execute(action)]),
        None => {
            let mut next = incident.clone();
            go(
                &mut next,
                Status::AwaitingApproval,
                "sentinel",
                "the scheduled fix cannot be read back; an operator must approve it",
                now,
            );
            moved(next, Vec::new())
        }
    }
}

/// Who started the rollback under way, and whether it was verification (not a person).
fn rollback_by(execution: &Execution) -> (String, bool) {
    match &execution.rollback {
        Some(start) => (start.by.clone(), start.by == "sentinel"),
        None => ("sentinel".to_owned(), true),
    }
}

fn rolling_back(incident: &Incident) -> bool {
    incident
        .execution
        .as_ref()
        .is_some_and(Execution::rolling_back)
}

/// A recovery before execution resolves (step `recovered`); during or after execution it is
/// recorded and verification uses it.
fn recovered(
    incident: &Incident,
    by: Recovery,
    actor: &Actor,
    message: &str,
    now: Timestamp,
) -> Outcome {
    use Status::*;
    let step = if by == Recovery::Reset {
        "reset"
    } else {
        "recovered"
    };
    // A reset is a person's word, like a manual resolve.
    let by = if by == Recovery::Reset {
        Recovery::Person
    } else {
        by
    };
    let resolve = |step: &str| {
        let mut next = incident.clone();
        go(&mut next, Resolved, &actor.to_string(), message, now);
        if let Some(entry) = next.timeline.last_mut() {
            entry.step = step.to_owned();
        }
        moved(next, Vec::new())
    };
    if let Some(execution) = &incident.execution {
        if execution.rolling_back() {
            return match by {
                Recovery::Person => refused(format!(
                    "incident {} is being rolled back; resolve it once that finished",
                    incident.id
                )),
                _ => noted(incident, actor, message, now),
            };
        }
    }
    match (incident.status, by) {
        (Resolved, Recovery::Person) => {
            refused(format!("incident {} is already resolved", incident.id))
        }
        (Resolved, _) => unchanged("already resolved"),
        (Executing, Recovery::Person) => refused(format!(
            "incident {} is running its fix; resolve it once the fix finished",
            incident.id
        )),
        (Executing, _) => noted(incident, actor, message, now),
        // A person's word closes it; the measurement then has nothing left to decide.
        (Verifying, Recovery::Person) => resolve(step),
        (Verifying, _) => noted(incident, actor, message, now),
        (
            Detected | Analyzing | Scheduled | AwaitingApproval | Approved | Rejected | RolledBack
            | Escalated | Failed,
            _,
        ) => resolve(step),
    }
}

/// A recovery during or after execution: recorded once, for verification.
fn noted(incident: &Incident, actor: &Actor, message: &str, now: Timestamp) -> Outcome {
    if incident.recovered_at.is_some() {
        return unchanged("the recovery is already recorded");
    }
    let mut next = incident.clone();
    next.recovered_at = Some(now);
    next.record(
        "recovery_noted",
        &actor.to_string(),
        format!("{message}; verification takes it into account"),
        now,
    );
    moved(next, Vec::new())
}

fn analyzed_outcome(incident: &Incident, analyzed: &Analyzed, now: Timestamp) -> Outcome {
    use Status::*;
    let Analyzed {
        analysis,
        plan,
        decision,
        snapshot,
        refusals,
        veto_window,
        changes,
        changes_unknown,
    } = analyzed;
    let mut next = incident.clone();
    if let Some(why) = changes_unknown {
        next.record(
            "changes_unknown",
            "sentinel",
            format!("recent changes to {} are unknown: {why}", incident.resource),
            now,
        );
    }
    for refusal in refusals {
        let step = if refusal.starts_with("the LLM") {
            "analyzer_fell_back"
        } else {
            "proposal_refused"
        };
        next.record(step, "sentinel", refusal.clone(), now);
    }
    next.root_cause = Some(analysis.root_cause.clone());
    next.propose(plan.to_proposed(), snapshot.clone());
    next.risk = Some(decision.risk);
    next.confidence = Some(analysis.confidence.clamp(0.0, 1.0));
    next.analyzer = Some(analysis.analyzer.clone());
    next.evidence = analysis.evidence.clone();
    next.evidence_cited = analysis.cited.clone();
    next.changes = changes.clone();
    next.approvals.clear();
    next.record(
        "analyzed",
        &format!("analyzer:{}", analysis.analyzer),
        format!(
            "{} → proposed {} ({} risk, confidence {:.2})",
            analysis.root_cause,
            plan.action(),
            decision.risk,
            analysis.confidence
        ),
        now,
    );
    let mut effects = Vec::new();
    match &decision.verdict {
        // A test alert's fix is only a dry run: nothing to veto, so it is not scheduled.
        Verdict::Automatic(_) if !veto_window.is_zero() && !incident.synthetic => {
            let due = now.saturating_add(*veto_window);
            next.scheduled_for = Some(due);
            go(
                &mut next,
                Scheduled,
                "sentinel",
                format!(
                    "{} runs on its own at {due}, in {}, unless someone stops it (the \
                     policy allows {} risk; this is the veto window)",
                    plan.action(),
                    humantime::format_duration(*veto_window),
                    decision.risk
                ),
                now,
            );
            effects.push(Effect::RunAt(due));
        }
        Verdict::Automatic(approval) => {
            go(
                &mut next,
                Approved,
                "sentinel",
                format!(
                    "approved by policy: {} risk runs automatically",
                    decision.risk
                ),
                now,
            );
            effects.push(Effect::Execute(ApprovedAction::automatic(
                &next,
                approval.clone(),
            )));
        }
        Verdict::NeedsApproval { role, why } => go(
            &mut next,
            AwaitingApproval,
            "sentinel",
            format!("waiting for an {role} to approve: {why}"),
            now,
        ),
        Verdict::NotifyOnly => go(
            &mut next,
            Escalated,
            "sentinel",
            "no catalogue action fixes this; people are notified",
            now,
        ),
        Verdict::DryRun { would } => go(&mut next, Escalated, "sentinel", would.clone(), now),
    }
    moved(next, effects)
}

fn verified(incident: &Incident, judgement: &Judgement, now: Timestamp) -> Outcome {
    use Status::*;
    let mut next = incident.clone();
    let message = match judgement {
        Judgement::Resolved { message } => {
            go(&mut next, Resolved, "sentinel", message.clone(), now);
            return moved(next, Vec::new());
        }
        Judgement::NotResolved { message } => message,
    };
    // The source said it recovered while the fix ran: that is the measurement we have.
    if let Some(at) = incident.recovered_at {
        let said = format!("verified: the recovery reported at {at} stands ({message})");
        if incident.signal == crate::domain::Signal::External {
            go(&mut next, Resolved, "sentinel", said, now);
            return moved(next, Vec::new());
        }
    }
    next.record("verification_failed", "sentinel", message.clone(), now);
    let undoable = incident
        .execution
        .as_ref()
        .filter(|e| e.reversible && e.rolled_back_at.is_none() && e.rollback.is_none());
    match undoable.and_then(|e| e.action.plan().ok().map(|plan| (e, plan))) {
        Some((execution, plan)) => {
            if let Some(e) = next.execution.as_mut() {
                e.rollback = Some(RollbackStart {
                    by: "sentinel".to_owned(),
                    at: now,
                });
            }
            let permit = RollbackPermit {
                incident: incident.id.clone(),
                plan,
                before: execution.before.clone(),
                automatic: true,
            };
            moved(next, vec![Effect::Undo(permit)])
        }
        None => {
            go(
                &mut next,
                Escalated,
                "sentinel",
                "escalated: the fix did not help and cannot be undone",
                now,
            );
            moved(next, Vec::new())
        }
    }
}

fn rollback_requested(incident: &Incident, actor: &Actor, now: Timestamp) -> Outcome {
    if let Err(e) = approve::check_rollback(incident, actor) {
        return Outcome::Refused(e);
    }
    let Some(execution) = &incident.execution else {
        return refused(format!("incident {} has no executed fix", incident.id));
    };
    if execution.rollback.is_some() {
        return refused(format!(
            "incident {}'s fix is already being rolled back",
            incident.id
        ));
    }
    if execution.finished_at.is_none() {
        return refused(format!(
            "incident {}'s fix has not finished yet",
            incident.id
        ));
    }
    let plan = match execution.action.plan() {
        Ok(plan) => plan,
        Err(e) => return refused(format!("the executed fix is unreadable: {e}")),
    };
    let mut next = incident.clone();
    if let Some(e) = next.execution.as_mut() {
        e.rollback = Some(RollbackStart {
            by: actor.to_string(),
            at: now,
        });
    }
    next.record(
        "rollback_started",
        &actor.to_string(),
        format!("rolling back {}", plan.action()),
        now,
    );
    let permit = RollbackPermit {
        incident: incident.id.clone(),
        plan,
        before: execution.before.clone(),
        automatic: false,
    };
    moved(next, vec![Effect::Undo(permit)])
}

/// After a restart: whatever was under way goes on, exactly once.
fn restarted(incident: &Incident, now: Timestamp) -> Outcome {
    use Status::*;
    if let Some(execution) = &incident.execution {
        if execution.rolling_back() {
            let Ok(plan) = execution.action.plan() else {
                return unchanged("the rollback's fix is unreadable");
            };
            let mut next = incident.clone();
            next.record(
                "rollback_resumed",
                "sentinel",
                "a rollback was interrupted by a restart; completing it",
                now,
            );
            let permit = RollbackPermit {
                incident: incident.id.clone(),
                plan,
                before: execution.before.clone(),
                automatic: execution
                    .rollback
                    .as_ref()
                    .is_some_and(|r| r.by == "sentinel"),
            };
            return moved(next, vec![Effect::Undo(permit)]);
        }
    }
    match incident.status {
        Detected | Analyzing => resume("analysis resumes", vec![Effect::Analyze]),
        Approved => match approve::resume(incident) {
            Some(action) => resume("the approved fix runs", vec![Effect::Execute(action)]),
            None => {
                let mut next = incident.clone();
                go(
                    &mut next,
                    AwaitingApproval,
                    "sentinel",
                    "the approved fix cannot be read back after a restart; approve again",
                    now,
                );
                moved(next, Vec::new())
            }
        },
        Executing => resume("the interrupted fix is reconciled", vec![Effect::Reconcile]),
        // Still scheduled: it runs when its window ends, at once if that passed meanwhile.
        Scheduled => resume(
            "the scheduled fix runs when its veto window ends",
            vec![Effect::RunAt(incident.scheduled_for.unwrap_or(now))],
        ),
        Verifying => resume("verification resumes", vec![Effect::Verify]),
        // A person is asked (the card) and expiry escalates after `approval_timeout`.
        AwaitingApproval => unchanged("waiting for a person"),
        Rejected | Resolved | RolledBack | Escalated | Failed => {
            unchanged(format!("nothing under way: it is {}", incident.status))
        }
    }
}

#[cfg(test)]
mod tests;
