//! Remediate: drive an incident through analyze → policy → (approve) → execute → verify,
//! and roll back when the fix did not help (SPEC §1, §4).
//!
//! In: [`Job`]s from intake (a new incident), from approvals (an approved action) and from
//! execution (verify after `settle`). Out: incidents moved along the state machine, with a
//! timeline entry and an audit entry for every step. The decisions are made by the pure
//! stages (`analyze::rules`, `policy`, `approve`, `verify`); this module does their I/O.
//!
//! At most once: execution holds a per-incident lease whose fencing token is checked right
//! before the side effect, and the move to `executing` is a compare-and-set, so concurrent
//! approvals, retried requests and several replicas never run an action twice.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::AnalyzerKind;
use crate::domain::{Actor, Execution, Incident, IncidentId, Status, Timestamp};
use crate::pipeline::analyze::{self, rules, Analysis, Evidence};
use crate::pipeline::approve::ApprovedAction;
use crate::pipeline::audit::{self, AuditEvent};
use crate::pipeline::execute::Executor;
use crate::pipeline::policy::{self, PolicyInput, Verdict};
use crate::pipeline::verify::{self, Judgement};
use crate::runtime::sandbox;
use crate::service::Sentinel;
use crate::store::{IncidentQuery, StoreError};

/// Work for the remediation worker.
#[derive(Debug, Clone)]
pub enum Job {
    /// A new incident: analyze it and apply the policy.
    Analyze(IncidentId),
    /// An approved action: execute it.
    Execute(ApprovedAction),
    /// An executed fix: wait `settle`, then verify.
    Verify(IncidentId),
}

/// How long an execution lease lives; longer than any action takes.
const EXECUTION_LEASE: Duration = Duration::from_secs(300);

/// Runs jobs until shutdown. On start, picks up incidents a previous process left half-way
/// (`detected` ones not analyzed, `verifying` ones not verified).
pub async fn run_worker(
    sentinel: Arc<Sentinel>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    shutdown: CancellationToken,
) {
    recover(&sentinel).await;
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let sentinel = Arc::clone(&sentinel);
                let shutdown = shutdown.clone();
                running.spawn(async move { handle(&sentinel, job, &shutdown).await });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = shutdown.cancelled() => break,
        }
    }
    running.abort_all();
}

async fn recover(sentinel: &Sentinel) {
    let open = match sentinel
        .store
        .list_incidents(IncidentQuery {
            open_only: true,
            limit: 10_000,
        })
        .await
    {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list incidents to resume remediation");
            return;
        }
    };
    for incident in open {
        match incident.status {
            Status::Detected => sentinel.enqueue(Job::Analyze(incident.id)),
            Status::Verifying => sentinel.enqueue(Job::Verify(incident.id)),
            _ => {}
        }
    }
}

async fn handle(sentinel: &Sentinel, job: Job, shutdown: &CancellationToken) {
    let (what, result) = match job {
        Job::Analyze(id) => (id.to_string(), analyze_and_decide(sentinel, &id).await),
        Job::Execute(action) => (
            action.incident().to_string(),
            execute(sentinel, action).await,
        ),
        Job::Verify(id) => {
            tokio::select! {
                () = tokio::time::sleep(sentinel.settings.settle.0) => {}
                () = shutdown.cancelled() => return,
            }
            (id.to_string(), verify_fix(sentinel, &id).await)
        }
    };
    if let Err(e) = result {
        tracing::warn!(incident = %what, error = %e, "remediation step failed");
    }
}

/// Reads, changes and stores an incident, retrying when someone else wrote it meanwhile.
/// `change` returns `false` to leave it alone (the incident moved on); then `None`.
pub async fn update_with<F>(
    sentinel: &Sentinel,
    id: &IncidentId,
    mut change: F,
) -> Result<Option<Incident>, StoreError>
where
    F: FnMut(&mut Incident) -> bool,
{
    loop {
        let Some(mut incident) = sentinel.store.get_incident(id).await? else {
            return Ok(None);
        };
        if !change(&mut incident) {
            return Ok(None);
        }
        match sentinel.store.update_incident(&incident).await {
            Ok(stored) => return Ok(Some(stored)),
            Err(StoreError::VersionConflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
}

async fn emit(
    sentinel: &Sentinel,
    name: &'static str,
    incident: &Incident,
    details: serde_json::Value,
) {
    let event = AuditEvent::Step {
        name,
        incident,
        details,
    };
    if let Err(e) = audit::emit(
        sentinel.store.as_ref(),
        &Actor::Sentinel,
        event,
        Timestamp::now(),
    )
    .await
    {
        tracing::error!(error = %e, event = name, "cannot write the audit log");
    }
}

/// What the analyzers may look at, now.
#[tracing::instrument(name = "gather_evidence", skip_all)]
async fn gather_evidence(sentinel: &Sentinel) -> Evidence {
    let (containers, sandbox_dirs) = tokio::join!(sentinel.collectors.containers(), async {
        let dir = sentinel.settings.sandbox_dir.clone();
        tokio::task::spawn_blocking(move || {
            let dirs = sandbox::largest_directories(&dir, 10).unwrap_or_default();
            let total = sandbox::sandbox_size(&dir).ok();
            (dirs, total)
        })
        .await
        .unwrap_or_default()
    });
    let (dirs, sandbox_bytes) = sandbox_dirs;
    let root = sentinel.settings.sandbox_dir.clone();
    Evidence {
        docker_available: containers.is_ok(),
        containers: containers.unwrap_or_default(),
        sandbox_dirs: dirs
            .into_iter()
            .map(|(path, bytes)| {
                let name = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                (name, bytes)
            })
            .collect(),
        sandbox_bytes,
    }
}

/// Analysis with the configured analyzer; the rules when the LLM fails or proposes
/// something outside the catalogue. Returns the analysis and what went wrong on the way.
async fn analysis_for(
    sentinel: &Sentinel,
    incident: &Incident,
    evidence: &Evidence,
) -> (Analysis, Vec<String>) {
    let mut notes = Vec::new();
    if sentinel.settings.analyzer.kind == AnalyzerKind::Llm {
        if let Some(llm) = &sentinel.llm {
            match llm.analyze_reporting(incident, evidence).await {
                Ok(answered) => {
                    if let Some(earlier) = answered.earlier_failures_summary() {
                        notes.push(format!("the LLM answered after failed tries: {earlier}"));
                    }
                    return (answered.analysis, notes);
                }
                Err(failure) => notes.push(format!(
                    "the LLM analyzer failed, so the rules decided: {failure}"
                )),
            }
        } else {
            notes.push(
                "the LLM analyzer is not configured (no API key), so the rules decided".to_owned(),
            );
        }
    }
    (rules::analyze(incident, evidence), notes)
}

#[tracing::instrument(name = "analyze", skip_all, fields(incident = %id))]
async fn analyze_and_decide(sentinel: &Sentinel, id: &IncidentId) -> Result<(), StoreError> {
    let now = Timestamp::now();
    let Some(incident) = update_with(sentinel, id, |i| {
        i.status == Status::Detected
            && i.transition(Status::Analyzing, "sentinel", "analyzing", now)
                .is_ok()
    })
    .await?
    else {
        return Ok(());
    };
    let evidence = gather_evidence(sentinel).await;
    let (mut analysis, notes) = analysis_for(sentinel, &incident, &evidence).await;
    let mut refusals = notes;
    let plan = match analyze::check_proposal(&analysis.proposed_action, &evidence) {
        Ok(plan) => plan,
        Err(refused) => {
            refusals.push(refused.to_string());
            analysis = rules::analyze(&incident, &evidence);
            match analyze::check_proposal(&analysis.proposed_action, &evidence) {
                Ok(plan) => plan,
                Err(refused) => {
                    refusals.push(refused.to_string());
                    crate::domain::ActionPlan::NotifyOnly
                }
            }
        }
    };
    let protected = plan
        .container()
        .and_then(|name| evidence.container(name))
        .is_some_and(|c| c.protected());
    let since = Timestamp::from_unix_millis(now.unix_millis() - 3_600_000);
    let recent = sentinel
        .store
        .auto_actions_since(since)
        .await?
        .get(&plan.key())
        .copied()
        .unwrap_or(0);
    let paused = sentinel.store.control().await?.paused;
    let settings = &sentinel.settings;
    let decision = policy::decide(&PolicyInput {
        plan: &plan,
        assessed: analysis.risk_assessment,
        protected,
        mode: settings.mode,
        paused,
        recent_automatic: recent,
        budget_per_hour: settings.actions.auto_budget_per_hour,
        max_memory_factor: settings.actions.memory_limit_max_factor,
    });
    let snapshot = match sentinel.executor.snapshot(&plan).await {
        Ok(snapshot) => snapshot,
        Err(e) => json!({ "error": e.to_string() }),
    };

    let proposed = plan.to_proposed();
    let stored = update_with(sentinel, id, |i| {
        if i.status != Status::Analyzing {
            return false;
        }
        let now = Timestamp::now();
        for refusal in &refusals {
            let step = if refusal.starts_with("the LLM") {
                "analyzer_fell_back"
            } else {
                "proposal_refused"
            };
            i.record(step, "sentinel", refusal.clone(), now);
        }
        i.root_cause = Some(analysis.root_cause.clone());
        i.propose(proposed.clone(), snapshot.clone());
        i.risk = Some(decision.risk);
        i.confidence = Some(analysis.confidence.clamp(0.0, 1.0));
        i.analyzer = Some(analysis.analyzer.clone());
        i.evidence = analysis.evidence.clone();
        i.approvals.clear();
        i.record(
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
        let moved = match &decision.verdict {
            Verdict::Automatic(_) => i.transition(
                Status::Approved,
                "sentinel",
                format!(
                    "approved by policy: {} risk runs automatically",
                    decision.risk
                ),
                now,
            ),
            Verdict::NeedsApproval { role, why } => i.transition(
                Status::AwaitingApproval,
                "sentinel",
                format!("waiting for an {role} to approve: {why}"),
                now,
            ),
            Verdict::NotifyOnly => i.transition(
                Status::Escalated,
                "sentinel",
                "no catalogue action fixes this; people are notified",
                now,
            ),
            Verdict::DryRun { would } => {
                i.transition(Status::Escalated, "sentinel", would.clone(), now)
            }
        };
        moved.is_ok()
    })
    .await?;
    let Some(stored) = stored else { return Ok(()) };
    for refusal in &refusals {
        emit(
            sentinel,
            "ProposalRefused",
            &stored,
            json!({ "why": refusal }),
        )
        .await;
    }
    emit(
        sentinel,
        "ActionProposed",
        &stored,
        json!({
            "proposed_action": stored.proposed_action,
            "risk": stored.risk,
            "analyzer": stored.analyzer,
            "confidence": stored.confidence,
            "snapshot": stored.snapshot,
        }),
    )
    .await;
    match decision.verdict {
        Verdict::Automatic(approval) => {
            emit(
                sentinel,
                "ApprovalGranted",
                &stored,
                json!({ "by": "policy", "risk": decision.risk }),
            )
            .await;
            sentinel
                .store
                .record_auto_action(&plan.key(), Timestamp::now())
                .await?;
            sentinel.enqueue(Job::Execute(ApprovedAction::automatic(&stored, approval)));
        }
        Verdict::NeedsApproval { role, why } => {
            emit(
                sentinel,
                "ApprovalRequested",
                &stored,
                json!({ "role": role, "why": why }),
            )
            .await;
        }
        Verdict::NotifyOnly | Verdict::DryRun { .. } => {
            emit(
                sentinel,
                "IncidentEscalated",
                &stored,
                json!({ "status": stored.status }),
            )
            .await;
        }
    }
    Ok(())
}

/// Executes an approved action at most once.
#[tracing::instrument(name = "execute", skip_all, fields(incident = %action.incident()))]
pub async fn execute(sentinel: &Sentinel, action: ApprovedAction) -> Result<(), StoreError> {
    let id = action.incident().clone();
    let lease_name = format!("execute:{id}");
    let holder = format!("{}-{}", std::process::id(), IncidentId::generate().as_str());
    let Some(lease) = sentinel
        .store
        .acquire_lease(&lease_name, &holder, EXECUTION_LEASE, Timestamp::now())
        .await?
    else {
        tracing::info!(incident = %id, "another worker is executing this incident");
        return Ok(());
    };
    let result = execute_holding(sentinel, &action, lease.token, &lease_name).await;
    if let Err(e) = sentinel.store.release_lease(&lease).await {
        tracing::warn!(error = %e, "cannot release the execution lease");
    }
    result
}

async fn execute_holding(
    sentinel: &Sentinel,
    action: &ApprovedAction,
    token: u64,
    lease_name: &str,
) -> Result<(), StoreError> {
    let id = action.incident();
    let Some(incident) = sentinel.store.get_incident(id).await? else {
        return Ok(());
    };
    if incident.status != Status::Approved || incident.execution.is_some() {
        return Ok(());
    }
    let plan = action.plan();
    // The approval holds for the state that was shown; if the target changed, ask again.
    let now_state = match sentinel.executor.snapshot(plan).await {
        Ok(state) => state,
        Err(e) => json!({ "error": e.to_string() }),
    };
    let approved_state = incident.snapshot.clone().unwrap_or_default();
    if !Executor::unchanged(plan, &approved_state, &now_state) {
        let stored = update_with(sentinel, id, |i| {
            if i.status != Status::Approved {
                return false;
            }
            i.propose(plan.to_proposed(), now_state.clone());
            i.approvals.clear();
            i.transition(
                Status::AwaitingApproval,
                "sentinel",
                "the target changed since the proposal; approve again to run the fix on its current state",
                Timestamp::now(),
            )
            .is_ok()
        })
        .await?;
        if let Some(stored) = stored {
            emit(
                sentinel,
                "ApprovalRequested",
                &stored,
                json!({ "why": "target changed", "was": approved_state, "now": now_state }),
            )
            .await;
        }
        return Ok(());
    }
    let started_at = Timestamp::now();
    let Some(executing) = update_with(sentinel, id, |i| {
        if i.status != Status::Approved || i.execution.is_some() {
            return false;
        }
        i.execution = Some(Execution {
            action: plan.to_proposed(),
            approved_by: action.approved_by().to_owned(),
            started_at,
            finished_at: None,
            before: now_state.clone(),
            after: json!(null),
            reversible: plan.action().reversible(),
            rolled_back_at: None,
        });
        i.transition(
            Status::Executing,
            "sentinel",
            format!("executing {}", plan.action()),
            started_at,
        )
        .is_ok()
    })
    .await?
    else {
        return Ok(());
    };
    // The last check before the side effect: is this still the lease's holder?
    if !sentinel
        .store
        .check_fence(lease_name, token, Timestamp::now())
        .await?
    {
        update_with(sentinel, id, |i| {
            i.status == Status::Executing
                && i.transition(
                    Status::Failed,
                    "sentinel",
                    "lost the execution lease before running; nothing was done",
                    Timestamp::now(),
                )
                .is_ok()
        })
        .await?;
        return Ok(());
    }
    let outcome = sentinel.executor.run(action, &now_state).await;
    let finished = Timestamp::now();
    match outcome {
        Ok(after) => {
            let message = format!(
                "executed {}: {}",
                plan.action(),
                describe_change(&now_state, &after)
            );
            let stored = update_with(sentinel, id, |i| {
                if i.status != Status::Executing {
                    return false;
                }
                if let Some(execution) = i.execution.as_mut() {
                    execution.after = after.clone();
                    execution.finished_at = Some(finished);
                }
                i.transition(Status::Verifying, "sentinel", message.clone(), finished)
                    .is_ok()
            })
            .await?;
            if let Some(stored) = stored {
                emit(
                    sentinel,
                    "ActionExecuted",
                    &stored,
                    json!({
                        "action": plan.to_proposed(), "approved_by": action.approved_by(),
                        "before": now_state, "after": after,
                    }),
                )
                .await;
                sentinel.enqueue(Job::Verify(id.clone()));
            }
        }
        Err(e) => {
            let message = format!("{} failed: {e}", plan.action());
            let stored = update_with(sentinel, id, |i| {
                if let Some(execution) = i.execution.as_mut() {
                    execution.finished_at = Some(finished);
                }
                i.status == Status::Executing
                    && i.transition(Status::Failed, "sentinel", message.clone(), finished)
                        .is_ok()
            })
            .await?;
            if let Some(stored) = stored {
                emit(
                    sentinel,
                    "ActionFailed",
                    &stored,
                    json!({ "error": e.to_string() }),
                )
                .await;
            }
        }
    }
    let _ = &executing;
    Ok(())
}

fn describe_change(before: &serde_json::Value, after: &serde_json::Value) -> String {
    let mut changes = Vec::new();
    if let (Some(b), Some(a)) = (before.as_object(), after.as_object()) {
        for (key, value) in a {
            if let Some(old) = b.get(key) {
                if old != value {
                    changes.push(format!("{key} {old} → {value}"));
                }
            } else if !value.is_null() {
                changes.push(format!("{key} {value}"));
            }
        }
    }
    if changes.is_empty() {
        "done".to_owned()
    } else {
        changes.join(", ")
    }
}

/// After `settle`: measure again; resolve, or roll back what can be undone and escalate.
#[tracing::instrument(name = "verify", skip_all, fields(incident = %id))]
pub async fn verify_fix(sentinel: &Sentinel, id: &IncidentId) -> Result<(), StoreError> {
    let Some(incident) = sentinel.store.get_incident(id).await? else {
        return Ok(());
    };
    if incident.status != Status::Verifying {
        return Ok(());
    }
    let collected = sentinel.collectors.collect().await;
    match verify::judge(&incident, &collected, &sentinel.settings.thresholds) {
        Judgement::Resolved { message } => {
            let stored = update_with(sentinel, id, |i| {
                i.status == Status::Verifying
                    && i.transition(
                        Status::Resolved,
                        "sentinel",
                        message.clone(),
                        Timestamp::now(),
                    )
                    .is_ok()
            })
            .await?;
            if let Some(stored) = stored {
                emit(
                    sentinel,
                    "VerificationSucceeded",
                    &stored,
                    json!({ "message": message }),
                )
                .await;
            }
        }
        Judgement::NotResolved { message } => {
            let stored = update_with(sentinel, id, |i| {
                i.status == Status::Verifying && {
                    i.record(
                        "verification_failed",
                        "sentinel",
                        message.clone(),
                        Timestamp::now(),
                    );
                    true
                }
            })
            .await?;
            let Some(stored) = stored else { return Ok(()) };
            emit(
                sentinel,
                "VerificationFailed",
                &stored,
                json!({ "message": message }),
            )
            .await;
            let reversible = stored.execution.as_ref().is_some_and(|e| e.reversible);
            if reversible {
                if let Some(rolled) = roll_back(sentinel, &stored, &Actor::Sentinel).await? {
                    escalate(
                        sentinel,
                        &rolled,
                        "the fix did not help and was rolled back",
                    )
                    .await?;
                }
            } else {
                escalate(
                    sentinel,
                    &stored,
                    "the fix did not help and cannot be undone",
                )
                .await?;
            }
        }
    }
    Ok(())
}

#[tracing::instrument(name = "escalate", skip_all, fields(incident = %incident.id))]
async fn escalate(sentinel: &Sentinel, incident: &Incident, why: &str) -> Result<(), StoreError> {
    let stored = update_with(sentinel, &incident.id, |i| {
        i.transition(
            Status::Escalated,
            "sentinel",
            format!("escalated: {why}"),
            Timestamp::now(),
        )
        .is_ok()
    })
    .await?;
    if let Some(stored) = stored {
        emit(
            sentinel,
            "IncidentEscalated",
            &stored,
            json!({ "why": why }),
        )
        .await;
    }
    Ok(())
}

/// Undoes an executed, reversible fix and records it. `None` when the incident moved on or
/// the undo failed (recorded on the timeline).
#[tracing::instrument(name = "roll_back", skip_all, fields(incident = %incident.id, actor = %actor))]
pub async fn roll_back(
    sentinel: &Sentinel,
    incident: &Incident,
    actor: &Actor,
) -> Result<Option<Incident>, StoreError> {
    let Some(execution) = incident.execution.clone() else {
        return Ok(None);
    };
    let Ok(plan) = execution.action.plan() else {
        return Ok(None);
    };
    match sentinel
        .executor
        .undo(&incident.id, &plan, &execution.before)
        .await
    {
        Ok(restored) => {
            let message = format!(
                "rolled back {}: {}",
                plan.action(),
                describe_change(&execution.after, &restored)
            );
            let stored = update_with(sentinel, &incident.id, |i| {
                let now = Timestamp::now();
                if let Some(e) = i.execution.as_mut() {
                    if e.rolled_back_at.is_some() {
                        return false;
                    }
                    e.rolled_back_at = Some(now);
                }
                i.transition(Status::RolledBack, &actor.to_string(), message.clone(), now)
                    .is_ok()
            })
            .await?;
            if let Some(stored) = &stored {
                let event = AuditEvent::Step {
                    name: "ActionRolledBack",
                    incident: stored,
                    details: json!({ "action": execution.action, "restored": restored, "before": execution.before, "after": execution.after }),
                };
                audit::emit(sentinel.store.as_ref(), actor, event, Timestamp::now()).await?;
            }
            Ok(stored)
        }
        Err(e) => {
            let message = format!("rollback of {} failed: {e}", plan.action());
            let stored = update_with(sentinel, &incident.id, |i| {
                i.record(
                    "rollback_failed",
                    &actor.to_string(),
                    message.clone(),
                    Timestamp::now(),
                );
                true
            })
            .await?;
            if let Some(stored) = stored {
                emit(
                    sentinel,
                    "ActionFailed",
                    &stored,
                    json!({ "rollback": true, "error": e.to_string() }),
                )
                .await;
            }
            Ok(None)
        }
    }
}

/// Escalates incidents whose request for approval went unanswered for `approval_timeout`.
/// Returns how many expired. Run by the monitor loop's leader.
pub async fn expire_approvals(sentinel: &Sentinel, now: Timestamp) -> Result<usize, StoreError> {
    let timeout = sentinel.settings.approval_timeout.0;
    let open = sentinel
        .store
        .list_incidents(IncidentQuery {
            open_only: true,
            limit: 10_000,
        })
        .await?;
    let mut expired = 0;
    for incident in open {
        if incident.status != Status::AwaitingApproval {
            continue;
        }
        let asked_at = waiting_since(&incident);
        if now.since(asked_at) < timeout {
            continue;
        }
        let message = format!(
            "the approval request expired after {} without an answer",
            humantime::format_duration(timeout)
        );
        let stored = update_with(sentinel, &incident.id, |i| {
            i.status == Status::AwaitingApproval
                && waiting_since(i) == asked_at
                && i.transition(Status::Escalated, "sentinel", message.clone(), now)
                    .is_ok()
        })
        .await?;
        if let Some(stored) = stored {
            emit(
                sentinel,
                "ApprovalExpired",
                &stored,
                json!({ "waited_seconds": timeout.as_secs() }),
            )
            .await;
            expired += 1;
        }
    }
    Ok(expired)
}

/// When the incident last started waiting for approval.
fn waiting_since(incident: &Incident) -> Timestamp {
    incident
        .timeline
        .iter()
        .rev()
        .find(|e| e.step == Status::AwaitingApproval.as_str())
        .map_or(incident.updated_at, |e| e.at)
}
