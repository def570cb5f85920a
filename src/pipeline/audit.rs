//! Audit: every step, as a hash-chained entry in the store and a tracing event.
//!
//! In: an [`AuditEvent`]. Out: an `AuditEntry` in the store's chain. Event names follow
//! `<Noun><PastVerb>` (`IncidentOpened`, `ApprovalGranted`). [`emit`] is the one place that
//! writes an event, so the audit log and the logs never disagree.

use serde_json::json;

use crate::domain::{Actor, AuditEntry, AuditRecord, Incident, Silence, Timestamp};
use crate::store::{Store, StoreResult};

/// Something worth a line in the audit log.
#[derive(Debug, Clone)]
pub enum AuditEvent<'a> {
    IncidentOpened {
        incident: &'a Incident,
    },
    IncidentResolved {
        incident: &'a Incident,
        message: &'a str,
    },
    SilenceCreated {
        silence: &'a Silence,
    },
    SilenceExpired {
        id: &'a str,
    },
    ApprovalGranted {
        incident: &'a Incident,
    },
    ApprovalRejected {
        incident: &'a Incident,
        reason: Option<&'a str>,
    },
    DecisionRefused {
        incident: &'a Incident,
        decision: &'a str,
        why: &'a str,
    },
    AutomationPaused,
    AutomationResumed,
    /// A demo scenario was set up or reset (`sentinel demo`): what it made or removed.
    DemoStaged {
        scenario: &'a str,
        report: serde_json::Value,
    },
    /// A step of remediation ([`Step`]), with what it concerned.
    Step {
        step: Step,
        incident: &'a Incident,
        details: serde_json::Value,
    },
}

/// The steps of remediation the audit log names; `Step::name` is the audit event's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    ActionProposed,
    ProposalRefused,
    ApprovalRequested,
    ApprovalRecorded,
    ApprovalExpired,
    ActionExecuted,
    /// The policy approved a low-risk fix (audited as `ApprovalGranted`, actor `sentinel`).
    ApprovalGrantedByPolicy,
    ActionFailed,
    ExecutionReconciled,
    RemediationResumed,
    VerificationSucceeded,
    VerificationFailed,
    ActionRolledBack,
    IncidentEscalated,
    RecoveryNoted,
    /// A test alert's approved fix was recorded as a dry run, not executed.
    DryRunRecorded,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::ActionProposed => "ActionProposed",
            Step::ProposalRefused => "ProposalRefused",
            Step::ApprovalRequested => "ApprovalRequested",
            Step::ApprovalRecorded => "ApprovalRecorded",
            Step::ApprovalExpired => "ApprovalExpired",
            Step::ActionExecuted => "ActionExecuted",
            Step::ApprovalGrantedByPolicy => "ApprovalGranted",
            Step::ActionFailed => "ActionFailed",
            Step::ExecutionReconciled => "ExecutionReconciled",
            Step::RemediationResumed => "RemediationResumed",
            Step::VerificationSucceeded => "VerificationSucceeded",
            Step::VerificationFailed => "VerificationFailed",
            Step::ActionRolledBack => "ActionRolledBack",
            Step::IncidentEscalated => "IncidentEscalated",
            Step::RecoveryNoted => "RecoveryNoted",
            Step::DryRunRecorded => "DryRunRecorded",
        }
    }
}

impl AuditEvent<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            AuditEvent::IncidentOpened { .. } => "IncidentOpened",
            AuditEvent::IncidentResolved { .. } => "IncidentResolved",
            AuditEvent::SilenceCreated { .. } => "SilenceCreated",
            AuditEvent::SilenceExpired { .. } => "SilenceExpired",
            AuditEvent::ApprovalGranted { .. } => "ApprovalGranted",
            AuditEvent::ApprovalRejected { .. } => "ApprovalRejected",
            AuditEvent::DecisionRefused { .. } => "DecisionRefused",
            AuditEvent::AutomationPaused => "AutomationPaused",
            AuditEvent::AutomationResumed => "AutomationResumed",
            AuditEvent::DemoStaged { .. } => "DemoStaged",
            AuditEvent::Step { step, .. } => step.name(),
        }
    }

    fn incident(&self) -> Option<&Incident> {
        match self {
            AuditEvent::IncidentOpened { incident }
            | AuditEvent::IncidentResolved { incident, .. }
            | AuditEvent::ApprovalGranted { incident }
            | AuditEvent::ApprovalRejected { incident, .. }
            | AuditEvent::DecisionRefused { incident, .. }
            | AuditEvent::Step { incident, .. } => Some(incident),
            AuditEvent::SilenceCreated { .. }
            | AuditEvent::SilenceExpired { .. }
            | AuditEvent::AutomationPaused
            | AuditEvent::AutomationResumed
            | AuditEvent::DemoStaged { .. } => None,
        }
    }

    fn details(&self) -> serde_json::Value {
        match self {
            AuditEvent::IncidentOpened { incident } => json!({
                "fingerprint": incident.fingerprint,
                "severity": incident.severity,
                "value": incident.value,
                "threshold": incident.threshold,
                "source": incident.source,
                "summary": incident.summary,
            }),
            AuditEvent::IncidentResolved { message, .. } => json!({ "message": message }),
            AuditEvent::SilenceCreated { silence } => json!({
                "id": silence.id,
                "target": silence.target,
                "ends_at": silence.ends_at,
                "reason": silence.reason,
            }),
            AuditEvent::SilenceExpired { id } => json!({ "id": id }),
            AuditEvent::ApprovalGranted { incident } => json!({
                "proposed_action": incident.proposed_action,
                "risk": incident.risk,
                "version": incident.version,
            }),
            AuditEvent::ApprovalRejected { incident, reason } => json!({
                "proposed_action": incident.proposed_action,
                "risk": incident.risk,
                "reason": reason,
            }),
            AuditEvent::DecisionRefused { decision, why, .. } => json!({
                "decision": decision,
                "why": why,
            }),
            AuditEvent::AutomationPaused | AuditEvent::AutomationResumed => json!({}),
            AuditEvent::DemoStaged { scenario, report } => {
                json!({ "scenario": scenario, "report": report })
            }
            AuditEvent::Step { details, .. } => details.clone(),
        }
    }
}

/// Writes the event to the audit chain and to the log.
pub async fn emit(
    store: &dyn Store,
    actor: &Actor,
    event: AuditEvent<'_>,
    now: Timestamp,
) -> StoreResult<AuditEntry> {
    let record = AuditRecord {
        at: now,
        event: event.name().to_owned(),
        actor: actor.id(),
        role: actor.role().map(|r| r.as_str().to_owned()),
        incident: event.incident().map(|i| i.id.clone()),
        details: event.details(),
    };
    let appended = store.append_audit(record).await;
    let metrics = crate::telemetry::metrics::metrics();
    metrics.audit_event(event.name(), event.incident());
    if let AuditEvent::ApprovalGranted { incident } = &event {
        metrics.approval_granted(incident, now);
    }
    let entry = appended?;
    tracing::info!(
        event = event.name(),
        actor = %actor,
        incident = event.incident().map(|i| i.id.as_str()).unwrap_or(""),
        seq = entry.seq,
        "audit"
    );
    Ok(entry)
}
