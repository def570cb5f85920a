//! Approve: a person's decision on a proposed fix, checked against their role and the
//! incident's state (SPEC §4, §6). Slack buttons, slash commands and the HTTP API all come
//! here, so the rules are the same everywhere.
//!
//! In: the incident, the actor, `now`. Out: the incident as it should be stored, or why the
//! decision is refused. Pure: the caller stores the result with compare-and-set.

use crate::domain::{Actor, Incident, Role, Status, Timestamp};
use crate::pipeline::policy;

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

/// Approves the proposed fix.
pub fn approve(
    incident: &Incident,
    actor: &Actor,
    now: Timestamp,
) -> Result<Incident, DecisionError> {
    check_role(incident, actor)?;
    check_awaiting(incident, "approve")?;
    let mut next = incident.clone();
    let action = next
        .proposed_action
        .as_ref()
        .map_or("the proposed fix".to_owned(), |a| a.action.to_string());
    next.transition(
        Status::Approved,
        &actor.to_string(),
        format!("approved {action}"),
        now,
    )
    .map_err(|e| DecisionError::Conflict(e.to_string()))?;
    Ok(next)
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
    let executed = incident
        .timeline
        .iter()
        .any(|entry| entry.step == Status::Executing.as_str());
    if !executed {
        return Err(DecisionError::Conflict(format!(
            "cannot roll back incident {}: no fix was executed for it",
            incident.id
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
            let approved = approve(&incident, &person(role), now);
            let rejected = reject(&incident, &person(role), Some("no"), now);
            assert_eq!(approved.is_ok(), allowed, "approve {risk} as {role}");
            assert_eq!(rejected.is_ok(), allowed, "reject {risk} as {role}");
            if allowed {
                assert_eq!(approved.unwrap().status, Status::Approved);
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
        let approved = approve(&awaiting(Risk::Medium), &person(Role::Admin), now).unwrap();
        assert!(matches!(
            approve(&approved, &person(Role::Admin), now),
            Err(DecisionError::Conflict(_))
        ));
        assert!(matches!(
            reject(&approved, &person(Role::Admin), None, now),
            Err(DecisionError::Conflict(_))
        ));
        let mut resolved = awaiting(Risk::Medium);
        resolved.status = Status::Resolved;
        assert!(matches!(
            approve(&resolved, &person(Role::Admin), now),
            Err(DecisionError::Conflict(_))
        ));
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
        assert_eq!(check_rollback(&executed, &person(Role::Admin)), Ok(()));
    }
}
