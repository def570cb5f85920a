//! Approve: a person's decision on a proposed fix, checked against their role and the
//! incident's state (SPEC §4, §6). Slack buttons, slash commands and the HTTP API all come
//! here, so the rules are the same everywhere.
//!
//! In: the incident, the actor, `now`. Out: the incident as it should be stored, or why the
//! decision is refused. Pure: the caller stores the result with compare-and-set.

use crate::domain::{ActionPlan, Actor, Incident, IncidentId, Risk, Role, Status, Timestamp};
use crate::pipeline::policy::{self, AutoApproval};

/// Permission to execute one plan for one incident: the only thing `execute` accepts. Made
/// here only, from the policy's [`AutoApproval`] or from a person's approval with the right
/// role; its fields are private, so nothing else can forge one.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovedAction {
    incident: IncidentId,
    plan: ActionPlan,
    risk: Risk,
    approved_by: String,
}

impl ApprovedAction {
    /// The policy allowed it to run on its own.
    pub fn automatic(incident: &Incident, approval: AutoApproval) -> Self {
        ApprovedAction {
            incident: incident.id.clone(),
            approved_by: if approval.trusted {
                format!("policy ({} risk, trusted, automatic)", approval.risk)
            } else {
                format!("policy ({} risk, automatic)", approval.risk)
            },
            plan: approval.plan,
            risk: approval.risk,
        }
    }

    pub fn incident(&self) -> &IncidentId {
        &self.incident
    }

    pub fn plan(&self) -> &ActionPlan {
        &self.plan
    }

    pub fn risk(&self) -> Risk {
        self.risk
    }

    pub fn approved_by(&self) -> &str {
        &self.approved_by
    }
}

/// What a person's approval did.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub incident: Incident,
    /// `None` while a second admin's approval is still needed (two-person rule).
    pub action: Option<ApprovedAction>,
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    #[error("this needs the {needed} role; you are {has}")]
    Forbidden { needed: Role, has: Role },
    #[error("{0}")]
    Conflict(String),
}

/// The role needed to decide on this incident's fix.
pub fn needed_role(incident: &Incident) -> Role {
    incident.risk.map_or(Role::Operator, policy::approver_role)
}

fn check_role(incident: &Incident, actor: &Actor) -> Result<(), DecisionError> {
    let needed = needed_role(incident);
    match actor.role() {
        None => Ok(()),
        Some(has) if has.allows(needed) => Ok(()),
        Some(has) => Err(DecisionError::Forbidden { needed, has }),
    }
}

fn check_awaiting(incident: &Incident, verb: &str) -> Result<(), DecisionError> {
    if incident.status == Status::AwaitingApproval {
        Ok(())
    } else {
        Err(DecisionError::Conflict(format!(
            "cannot {verb} incident {}: it is {}, not awaiting approval",
            incident.id, incident.status
        )))
    }
}

/// An approval pinned to `proposal` holds only while that proposal is the current one,
/// however often the incident was written since (SPEC §12.1); no proposal named: the
/// current one.
pub fn check_proposal(incident: &Incident, proposal: Option<&str>) -> Result<(), DecisionError> {
    match proposal {
        Some(asked) if incident.proposal_id.as_deref() != Some(asked) => {
            Err(DecisionError::Conflict(format!(
                "proposal {asked} of incident {} is no longer current (it now proposes {}); \
                 look again, then decide",
                incident.id,
                incident.proposal_id.as_deref().unwrap_or("nothing")
            )))
        }
        _ => Ok(()),
    }
}

/// Approves the proposed fix. With the two-person rule, a high-risk fix needs two different
/// admins: the first approval is recorded and the incident keeps waiting.
pub fn approve(
    incident: &Incident,
    actor: &Actor,
    proposal: Option<&str>,
    two_person_rule: bool,
    now: Timestamp,
) -> Result<Approval, DecisionError> {
    check_role(incident, actor)?;
    check_awaiting(incident, "approve")?;
    check_proposal(incident, proposal)?;
    let plan = incident
        .proposed_action
        .as_ref()
        .ok_or_else(|| {
            DecisionError::Conflict(format!("incident {} has no proposed fix", incident.id))
        })?
        .plan()
        .map_err(|e| DecisionError::Conflict(format!("the proposed fix is invalid: {e}")))?;
    let risk = incident.risk.unwrap_or(Risk::High);
    let who = actor.to_string();
    let mut next = incident.clone();
    if two_person_rule && risk == Risk::High {
        if next.approvals.iter().any(|a| a == &who) {
            return Err(DecisionError::Conflict(format!(
                "{who} already approved; the two-person rule needs a different admin"
            )));
        }
        if next.approvals.is_empty() {
            next.approvals.push(who.clone());
            next.record(
                "approval_recorded",
                &who,
                format!(
                    "first of two approvals for {}; a second admin must approve",
                    plan.action()
                ),
                now,
            );
            return Ok(Approval {
                incident: next,
                action: None,
            });
        }
    }
    next.approvals.push(who.clone());
    next.transition(
        Status::Approved,
        &who,
        format!("approved {}", plan.action()),
        now,
    )
    .map_err(|e| DecisionError::Conflict(e.to_string()))?;
    let action = ApprovedAction {
        incident: next.id.clone(),
        plan,
        risk,
        approved_by: next.approvals.join(" and "),
    };
    Ok(Approval {
        incident: next,
        action: Some(action),
    })
}

/// The permission of an incident approved before a restart, read back from what was stored
/// (the policy's, when no person approved). `None` unless it is `approved` with a readable
/// proposal and no execution yet: only a stored approval makes one.
pub fn resume(incident: &Incident) -> Option<ApprovedAction> {
    if incident.status != Status::Approved || incident.execution.is_some() {
        return None;
    }
    let plan = incident.proposed_action.as_ref()?.plan().ok()?;
    let risk = incident.risk.unwrap_or(Risk::High);
    let approved_by = if incident.approvals.is_empty() {
        format!("policy ({risk} risk, automatic)")
    } else {
        incident.approvals.join(" and ")
    };
    Some(ApprovedAction {
        incident: incident.id.clone(),
        plan,
        risk,
        approved_by,
    })
}

/// Rejects the proposed fix, with an optional reason.
pub fn reject(
    incident: &Incident,
    actor: &Actor,
    reason: Option<&str>,
    now: Timestamp,
) -> Result<Incident, DecisionError> {
    check_role(incident, actor)?;
    check_awaiting(incident, "reject")?;
    let mut next = incident.clone();
    let message = match reason.map(str::trim).filter(|r| !r.is_empty()) {
        Some(reason) => format!("rejected: {reason}"),
        None => "rejected without a reason".to_owned(),
    };
    next.transition(Status::Rejected, &actor.to_string(), message, now)
        .map_err(|e| DecisionError::Conflict(e.to_string()))?;
    Ok(next)
}

/// Checks that a rollback may be asked for: admins only, and only after a fix ran.
pub fn check_rollback(incident: &Incident, actor: &Actor) -> Result<(), DecisionError> {
    if let Some(has) = actor.role() {
        if !has.allows(Role::Admin) {
            return Err(DecisionError::Forbidden {
                needed: Role::Admin,
                has,
            });
        }
    }
    let Some(execution) = &incident.execution else {
        return Err(DecisionError::Conflict(format!(
            "cannot roll back incident {}: no fix was executed for it",
            incident.id
        )));
    };
    if execution.rolled_back_at.is_some() {
        return Err(DecisionError::Conflict(format!(
            "incident {}'s fix was already rolled back",
            incident.id
        )));
    }
    if !execution.reversible {
        return Err(DecisionError::Conflict(format!(
            "{} cannot be rolled back",
            execution.action.action
        )));
    }
    if !incident.status.can_transition_to(Status::RolledBack) {
        return Err(DecisionError::Conflict(format!(
            "cannot roll back incident {}: it is {}",
            incident.id, incident.status
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::domain::{IncidentId, Risk};
    use crate::pipeline::detect::{test_alert, Scenario};

    fn awaiting(risk: Risk) -> Incident {
        let t0 = Timestamp::from_unix_millis(0);
        let detection = test_alert(Scenario::Memory, &Settings::defaults().thresholds);
        let mut incident = Incident::open(IncidentId::generate(), &detection, t0);
        incident.risk = Some(risk);
        incident.proposed_action = Some(crate::domain::ProposedAction {
            action: crate::domain::ActionId::ContainerRestart,
            params: std::collections::BTreeMap::from([(
                "container".to_owned(),
                serde_json::json!("web-1"),
            )]),
        });
        incident.status = Status::AwaitingApproval;
        incident
    }

    fn person(role: Role) -> Actor {
        Actor::ApiKey {
            name: "k".into(),
            role,
        }
    }

    /// (risk, role) → may approve?
    #[test]
    fn who_may_approve_which_risk() {
        let table = [
            (Risk::Low, Role::Viewer, false),
            (Risk::Low, Role::Operator, true),
            (Risk::Low, Role::Admin, true),
            (Risk::Medium, Role::Viewer, false),
            (Risk::Medium, Role::Operator, true),
            (Risk::Medium, Role::Admin, true),
            (Risk::High, Role::Viewer, false),
            (Risk::High, Role::Operator, false),
            (Risk::High, Role::Admin, true),
        ];
        let now = Timestamp::from_unix_millis(1);
        for (risk, role, allowed) in table {
            let incident = awaiting(risk);
            let approved = approve(&incident, &person(role), None, false, now);
            let rejected = reject(&incident, &person(role), Some("no"), now);
            assert_eq!(approved.is_ok(), allowed, "approve {risk} as {role}");
            assert_eq!(rejected.is_ok(), allowed, "reject {risk} as {role}");
            if allowed {
                let approval = approved.unwrap();
                assert_eq!(approval.incident.status, Status::Approved);
                let action = approval.action.expect("an approved action");
                assert_eq!(action.plan().container(), Some("web-1"));
                assert_eq!(action.approved_by(), format!("api:k ({role})"));
                let rejected = rejected.unwrap();
                assert_eq!(rejected.status, Status::Rejected);
                assert_eq!(rejected.timeline.last().unwrap().message, "rejected: no");
                assert_eq!(
                    rejected.timeline.last().unwrap().actor,
                    format!("api:k ({role})")
                );
            } else {
                assert!(matches!(approved, Err(DecisionError::Forbidden { .. })));
            }
        }
    }

    #[test]
    fn deciding_twice_or_on_a_resolved_incident_is_a_conflict() {
        let now = Timestamp::from_unix_millis(1);
        let approved = approve(
            &awaiting(Risk::Medium),
            &person(Role::Admin),
            None,
            false,
            now,
        )
        .unwrap()
        .incident;
        assert!(matches!(
            approve(&approved, &person(Role::Admin), None, false, now),
            Err(DecisionError::Conflict(_))
        ));
        assert!(matches!(
            reject(&approved, &person(Role::Admin), None, now),
            Err(DecisionError::Conflict(_))
        ));
        let mut resolved = awaiting(Risk::Medium);
        resolved.status = Status::Resolved;
        assert!(matches!(
            approve(&resolved, &person(Role::Admin), None, false, now),
            Err(DecisionError::Conflict(_))
        ));
    }

    #[test]
    fn the_two_person_rule_needs_two_different_admins_for_high_risk() {
        let now = Timestamp::from_unix_millis(1);
        let alice = Actor::SlackUser {
            user_id: "UALICE".into(),
            role: Role::Admin,
        };
        let bob = Actor::SlackUser {
            user_id: "UBOB".into(),
            role: Role::Admin,
        };
        let first = approve(&awaiting(Risk::High), &alice, None, true, now).unwrap();
        assert!(first.action.is_none());
        assert_eq!(first.incident.status, Status::AwaitingApproval);
        assert!(matches!(
            approve(&first.incident, &alice, None, true, now),
            Err(DecisionError::Conflict(_))
        ));
        let second = approve(&first.incident, &bob, None, true, now).unwrap();
        assert_eq!(second.incident.status, Status::Approved);
        let action = second.action.unwrap();
        assert_eq!(
            action.approved_by(),
            "slack:UALICE (admin) and slack:UBOB (admin)"
        );
        // Medium risk needs one approval even with the rule on.
        assert!(approve(&awaiting(Risk::Medium), &alice, None, true, now)
            .unwrap()
            .action
            .is_some());
    }

    #[test]
    fn rollback_needs_an_admin_and_an_executed_fix() {
        let incident = awaiting(Risk::Medium);
        assert!(matches!(
            check_rollback(&incident, &person(Role::Operator)),
            Err(DecisionError::Forbidden { .. })
        ));
        assert!(matches!(
            check_rollback(&incident, &person(Role::Admin)),
            Err(DecisionError::Conflict(_))
        ));
        let mut executed = incident.clone();
        let now = Timestamp::from_unix_millis(1);
        executed.status = Status::Approved;
        executed
            .transition(Status::Executing, "sentinel", "run", now)
            .unwrap();
        executed
            .transition(Status::Verifying, "sentinel", "wait", now)
            .unwrap();
        // Executing without an execution record is not enough.
        assert!(check_rollback(&executed, &person(Role::Admin)).is_err());
        let execution = crate::domain::Execution {
            action: crate::domain::ProposedAction {
                action: crate::domain::ActionId::ContainerMemoryLimit,
                params: Default::default(),
            },
            approved_by: "x".into(),
            started_at: now,
            finished_at: Some(now),
            before: crate::domain::TargetState::nothing(),
            after: Some(crate::domain::TargetState::nothing()),
            reversible: true,
            rolled_back_at: None,
            rollback: None,
            proposal_id: None,
            fencing_token: None,
        };
        executed.execution = Some(execution.clone());
        assert_eq!(check_rollback(&executed, &person(Role::Admin)), Ok(()));
        let mut rolled = executed.clone();
        rolled.execution = Some(crate::domain::Execution {
            rolled_back_at: Some(now),
            ..execution.clone()
        });
        assert!(check_rollback(&rolled, &person(Role::Admin)).is_err());
        executed.execution = Some(crate::domain::Execution {
            reversible: false,
            ..execution
        });
        assert!(matches!(
            check_rollback(&executed, &person(Role::Admin)),
            Err(DecisionError::Conflict(_))
        ));
    }
}
