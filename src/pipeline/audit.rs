//! Audit: every step, as a hash-chained entry in the store and a tracing event.
//!
//! In: an [`AuditEvent`]. Out: an `AuditEntry` in the store's chain. Event names follow
//! `<Noun><PastVerb>` (`IncidentOpened`, `ApprovalGranted`). [`emit`] is the one place that
//! writes an event, so the audit log and the logs never disagree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use crate::domain::{
    Actor, AuditEntry, AuditRecord, ChainCheck, ChainVerifier, Incident, IncidentId, Silence,
    Timestamp, TrustGrant, TrustKey,
};
use crate::store::{SharedStore, Store, StoreError, StoreResult};

/// The file in the data directory that keeps the highest audit sequence number this
/// deployment has seen (`store::observed`), so a log lost with its backend (a Redis restarted
/// without persistence) still shows as truncated.
pub const HIGH_WATER_FILE: &str = "audit-high-water";

/// How many entries `GET /api/audit` returns when no `limit` is given, and at most.
pub const DEFAULT_PAGE: usize = 200;
pub const MAX_PAGE: usize = 1000;

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
        /// How many identical refusals this entry stands for ([`Refusals`]).
        count: u64,
    },
    AutomationPaused,
    AutomationResumed,
    /// A demo scenario was set up or reset (`sentinel demo`): what it made or removed.
    DemoStaged {
        scenario: &'a str,
        report: serde_json::Value,
    },
    /// A fix's run of verified approvals reached `[actions] trust_after`: the card offers
    /// an admin to trust it (`pipeline::trust`).
    TrustOffered {
        incident: &'a Incident,
        key: &'a TrustKey,
        verified_in_a_row: u64,
    },
    /// An admin trusted a fix; `incident`: the card it was granted from, if any.
    TrustGranted {
        grant: &'a TrustGrant,
        incident: Option<&'a Incident>,
    },
    /// Trust ended: an admin revoked it, or a trusted fix failed verification or was rolled
    /// back (`incident`).
    TrustRevoked {
        grant: &'a TrustGrant,
        why: &'a str,
        incident: Option<&'a Incident>,
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
    /// The policy allowed a low-risk fix, which waits out the veto window (`scheduled`).
    ActionScheduled,
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
            Step::ActionScheduled => "ActionScheduled",
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
            AuditEvent::TrustOffered { .. } => "TrustOffered",
            AuditEvent::TrustGranted { .. } => "TrustGranted",
            AuditEvent::TrustRevoked { .. } => "TrustRevoked",
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
            | AuditEvent::TrustOffered { incident, .. }
            | AuditEvent::Step { incident, .. } => Some(incident),
            AuditEvent::TrustGranted { incident, .. }
            | AuditEvent::TrustRevoked { incident, .. } => *incident,
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
            AuditEvent::DecisionRefused {
                decision,
                why,
                count,
                ..
            } => json!({
                "decision": decision,
                "why": why,
                "count": count,
            }),
            AuditEvent::AutomationPaused | AuditEvent::AutomationResumed => json!({}),
            AuditEvent::DemoStaged { scenario, report } => {
                json!({ "scenario": scenario, "report": report })
            }
            AuditEvent::TrustOffered {
                key,
                verified_in_a_row,
                ..
            } => json!({ "key": key, "verified_in_a_row": verified_in_a_row }),
            AuditEvent::TrustGranted { grant, .. } => json!({ "grant": grant }),
            AuditEvent::TrustRevoked { grant, why, .. } => json!({ "grant": grant, "why": why }),
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

/// `GET /api/audit`: one page of the trail and the check of the whole chain.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The whole chain's check; `verified` is false when it is broken or truncated.
    pub chain: ChainCheck,
    /// The chain is shorter than the highest sequence number this deployment has seen:
    /// entries were cut from its end, or the log was lost.
    pub truncated: bool,
    /// That highest sequence number.
    pub high_water: u64,
    /// At most `limit` entries after `after`, oldest first.
    pub entries: Vec<AuditEntry>,
    /// Pass as `after` for the next page; `null` on the last one.
    pub next_after: Option<u64>,
}

/// Reads the page `(after, limit]` and checks the whole chain, reading it page by page.
pub async fn read(store: &dyn Store, after: u64, limit: usize) -> StoreResult<AuditReport> {
    const BATCH: usize = 1000;
    // The mark first: an append landing between the two reads then cannot look like a cut.
    let high_water = store.audit_high_water().await?;
    let mut verifier = ChainVerifier::default();
    let mut last_seq = 0;
    let mut entries = Vec::new();
    let mut more_after_page = false;
    let mut cursor = 0;
    loop {
        let batch = store.list_audit_page(cursor, BATCH).await?;
        // The next page starts after the highest sequence number read so far: on a list
        // whose entries were reordered the last one can be lower, and paging from it would
        // read the same page forever. A page that does not get past the cursor ends the read
        // (the chain is broken there anyway).
        let Some(highest) = batch.iter().map(|e| e.seq).max() else {
            break;
        };
        let stuck = highest <= cursor;
        cursor = highest;
        for entry in batch {
            verifier.feed(&entry);
            last_seq = last_seq.max(entry.seq);
            if entry.seq > after {
                if entries.len() < limit {
                    entries.push(entry);
                } else {
                    more_after_page = true;
                }
            }
        }
        if stuck {
            break;
        }
    }
    let mut chain = verifier.finish();
    let truncated = high_water > last_seq;
    if truncated {
        chain.verified = false;
        tracing::error!(
            high_water,
            last_seq,
            "the audit chain is shorter than the highest sequence number seen: entries are missing from its end"
        );
    }
    let next_after = more_after_page
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(AuditReport {
        chain,
        truncated,
        high_water,
        entries,
        next_after,
    })
}

/// Coalesces identical refusals: the same decision refused to the same actor on the same
/// incident for the same reason, arriving together (200 concurrent approvals of a resolved
/// incident), become one `DecisionRefused` entry with a `count`.
///
/// The first refusal opens a batch and a task that writes it after [`Refusals::GATHER`];
/// refusals arriving meanwhile join it. Every caller waits until the entry holding its
/// refusal is stored, so a refusal is answered only once it is audited. Refusals arriving
/// while a batch is being written open the next one.
#[derive(Default)]
pub struct Refusals {
    open: Mutex<HashMap<RefusalKey, Arc<Batch>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    incident: IncidentId,
    decision: String,
    actor: String,
    why: String,
}

struct Batch {
    count: Mutex<u64>,
    /// `None` until the entry is written; then its sequence number, or the error.
    written: tokio::sync::watch::Sender<Option<Result<u64, String>>>,
}

impl Refusals {
    /// How long a batch gathers refusals before it is written.
    pub const GATHER: Duration = Duration::from_millis(100);

    /// Audits one refusal, coalesced with identical ones arriving together; returns the
    /// sequence number of the entry that holds it.
    pub async fn refused(
        self: &Arc<Self>,
        store: &SharedStore,
        actor: &Actor,
        incident: Incident,
        decision: &str,
        why: &str,
    ) -> StoreResult<u64> {
        let key = RefusalKey {
            incident: incident.id.clone(),
            decision: decision.to_owned(),
            actor: actor.to_string(),
            why: why.to_owned(),
        };
        let mut written = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match open.get(&key) {
                Some(batch) => {
                    *batch.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
                    // Only the batch's writer needs the incident: a refusal waiting for the
                    // entry (at least `GATHER`, thousands of them under a click flood) holds
                    // its key, not a copy of the incident.
                    drop(incident);
                    batch.written.subscribe()
                }
                None => {
                    let (sender, receiver) = tokio::sync::watch::channel(None);
                    let batch = Arc::new(Batch {
                        count: Mutex::new(1),
                        written: sender,
                    });
                    open.insert(key.clone(), Arc::clone(&batch));
                    // A task of its own, so a caller that goes away (a closed connection)
                    // never leaves the others waiting.
                    tokio::spawn(write_batch(
                        Arc::clone(self),
                        Arc::clone(store),
                        key,
                        batch,
                        actor.clone(),
                        incident,
                    ));
                    receiver
                }
            }
        };
        let outcome = written
            .wait_for(Option::is_some)
            .await
            .map_err(|_| StoreError::Unavailable("the refusal was never written".to_owned()))?
            .clone();
        match outcome {
            Some(Ok(seq)) => Ok(seq),
            Some(Err(e)) => Err(StoreError::Unavailable(e)),
            None => unreachable!("waited for Some"),
        }
    }
}

async fn write_batch(
    refusals: Arc<Refusals>,
    store: SharedStore,
    key: RefusalKey,
    batch: Arc<Batch>,
    actor: Actor,
    incident: Incident,
) {
    tokio::time::sleep(Refusals::GATHER).await;
    // Closed: later refusals open the next batch.
    refusals
        .open
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    let count = *batch.count.lock().unwrap_or_else(|p| p.into_inner());
    let event = AuditEvent::DecisionRefused {
        incident: &incident,
        decision: &key.decision,
        why: &key.why,
        count,
    };
    let outcome = emit(store.as_ref(), &actor, event, Timestamp::now())
        .await
        .map(|entry| entry.seq)
        .map_err(|e| e.to_string());
    batch.written.send_replace(Some(outcome));
}
