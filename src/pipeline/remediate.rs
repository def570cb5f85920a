//! Remediate: the runner of the incident engine. It drives an incident through analyze →
//! policy → (approve) → execute → verify, rolls back when the fix did not help, and picks
//! up whatever a previous process left half-way (SPEC §1, §4, §12.1).
//!
//! In: [`Job`]s from intake (a new incident), approvals (an approved action), execution
//! (verify after `settle`) and restart recovery. Out: incidents moved by
//! [`engine::apply`](crate::pipeline::engine::apply), with a timeline entry and an audit
//! entry for every step. The decisions are the engine's and the pure stages'
//! (`analyze::rules`, `policy`, `approve`, `verify`); this module only does their I/O:
//! [`step`] reads, applies one event, stores with compare-and-set (again after a conflict)
//! and hands back the effects, which exist only once the transition is stored.
//!
//! At most once: execution holds a per-incident lease, renewed while the action runs, whose
//! fencing token is checked right before the side effect; the move to `executing` (the
//! intent, written before the side effect) is a compare-and-set; a rollback needs the permit
//! of the one stored transition into rolling back. After a restart, `executing` is
//! reconciled against the target rather than run again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    Actor, Execution, Incident, IncidentId, Signal, Status, TargetState, Timestamp, TrustKey,
};
use crate::pipeline::analyze::{self, ChangesRead, Evidence};
use crate::pipeline::approve::{ApprovedAction, DecisionError};
use crate::pipeline::audit::{self, AuditEvent, Step};
use crate::pipeline::engine::{self, Analyzed, Effect, Event, Outcome, RollbackPermit};
use crate::pipeline::execute::Executor;
use crate::pipeline::policy::{self, PolicyInput, Verdict};
use crate::pipeline::Pipeline;
use crate::pipeline::{trust, verify};
use crate::runtime::sandbox;
use crate::store::{IncidentQuery, Store, StoreError};

/// Work for the remediation worker.
#[derive(Debug)]
pub enum Job {
    /// Analyze an incident and apply the policy (`resumed`: again, after a restart).
    Analyze { id: IncidentId, resumed: bool },
    /// An approved action: execute it.
    Execute(ApprovedAction),
    /// An executed fix: wait `settle`, then verify.
    Verify(IncidentId),
    /// An execution interrupted by a restart: check the target, record what it shows.
    Reconcile(IncidentId),
    /// A granted rollback (resumed after a restart): undo the fix.
    Undo(RollbackPermit),
    /// A scheduled fix: at `at` (the end of its veto window), run it unless it was stopped.
    /// The leader's sweep ([`run_due_schedules`]) stands behind this in-memory timer.
    RunWhenDue { id: IncidentId, at: Timestamp },
}

/// How long an execution lease lives without renewal. The holder renews it every third of
/// that while the action runs, so a process that died frees the target within this.
const EXECUTION_LEASE: Duration = Duration::from_secs(15);

/// How long recovery waits for an execution lease a dead (or slower) holder still has.
const LEASE_WAIT: Duration = Duration::from_secs(45);

/// What applying one event did.
#[derive(Debug)]
pub enum Stepped {
    /// Stored: `stored` is the incident as written, `effects` what it unlocked.
    Moved {
        stored: Incident,
        effects: Vec<Effect>,
    },
    /// Nothing stored (the event does not apply at this status); effects that still apply.
    Unchanged {
        incident: Incident,
        why: String,
        effects: Vec<Effect>,
    },
    /// A person's request this status does not allow.
    Refused {
        incident: Incident,
        error: DecisionError,
    },
}

/// Applies `event` to the stored incident `id`: read, [`engine::apply`], compare-and-set,
/// again on a fresh read after a conflict. `seen` is a copy the caller has just read, used
/// for the first attempt. `None` when there is no such incident.
pub async fn step(
    store: &dyn Store,
    id: &IncidentId,
    seen: Option<Incident>,
    event: &Event,
    now: Timestamp,
) -> Result<Option<Stepped>, StoreError> {
    let mut seen = seen.filter(|incident| &incident.id == id);
    loop {
        let incident = match seen.take() {
            Some(incident) => incident,
            None => match store.get_incident(id).await? {
                Some(incident) => incident,
                None => return Ok(None),
            },
        };
        match engine::apply(&incident, event, now) {
            Outcome::Moved(transition) => match store.update_incident(transition.next()).await {
                Ok(stored) => {
                    let effects = transition.committed(&stored).unwrap_or_default();
                    return Ok(Some(Stepped::Moved { stored, effects }));
                }
                Err(StoreError::VersionConflict { .. }) => continue,
                Err(e) => return Err(e),
            },
            Outcome::Unchanged { why, effects } => {
                tracing::debug!(incident = %id, event = event.name(), why, "event changes nothing");
                return Ok(Some(Stepped::Unchanged {
                    incident,
                    why,
                    effects,
                }));
            }
            Outcome::Refused(error) => return Ok(Some(Stepped::Refused { incident, error })),
        }
    }
}

/// The stored incident, when `stepped` stored one.
fn moved(stepped: Option<Stepped>) -> Option<(Incident, Vec<Effect>)> {
    match stepped {
        Some(Stepped::Moved { stored, effects }) => Some((stored, effects)),
        _ => None,
    }
}

/// Runs jobs until shutdown. On start, every incident a previous process left half-way
/// moves on ([`recover`]).
pub async fn run_worker(
    pipeline: Arc<Pipeline>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    shutdown: CancellationToken,
) {
    recover(&pipeline).await;
    let mut running = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let pipeline = Arc::clone(&pipeline);
                let shutdown = shutdown.clone();
                running.spawn(async move { handle(&pipeline, job, &shutdown).await });
            }
            Some(_) = running.join_next(), if !running.is_empty() => {}
            () = shutdown.cancelled() => break,
        }
    }
    running.abort_all();
}

/// Applies [`Event::Restarted`] to every incident that may have work under way (the open
/// ones, and closed ones with a rollback started) and queues what it asks for.
pub async fn recover(pipeline: &Pipeline) {
    let recent = match pipeline
        .store
        .list_incidents(IncidentQuery {
            open_only: false,
            limit: 10_000,
        })
        .await
    {
        Ok(recent) => recent,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list incidents to resume remediation");
            return;
        }
    };
    let now = Timestamp::now();
    for incident in recent {
        let rolling = incident
            .execution
            .as_ref()
            .is_some_and(Execution::rolling_back);
        if !incident.is_open() && !rolling {
            continue;
        }
        let id = incident.id.clone();
        let resumed_analysis = incident.status == Status::Analyzing;
        let effects = match step(
            pipeline.store.as_ref(),
            &id,
            Some(incident),
            &Event::Restarted,
            now,
        )
        .await
        {
            Ok(Some(Stepped::Moved { stored, effects })) => {
                resumed(pipeline, &stored, &effects).await;
                effects
            }
            Ok(Some(Stepped::Unchanged {
                incident, effects, ..
            })) => {
                if !effects.is_empty() {
                    resumed(pipeline, &incident, &effects).await;
                }
                effects
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "cannot resume an incident");
                continue;
            }
        };
        dispatch(pipeline, &id, effects, resumed_analysis);
    }
}

/// Beyond the execution lease and `settle`, how long work under way may go without a step
/// before the monitor's leader takes it over from the replica that started it.
const ORPHAN_GRACE: Duration = Duration::from_secs(30);

/// Takes over work under way (approved, executing, verifying, rolling back) that no live
/// replica carries on: its last step is older than the execution lease, `settle` and
/// [`ORPHAN_GRACE`] together, and its execution lease is free (a live worker renews it
/// while it acts). Such an incident is treated as [`recover`] treats it after a restart on
/// this replica, audited as resumed "after: replica lost". A replica killed and never
/// restarted would otherwise leave it where the kill did. Run by the monitor loop's leader;
/// returns how many it took over. `taken` remembers what this leader took over and when:
/// resuming queues work without a step (verification waits `settle` first), so an incident
/// is taken over again only once it has stayed stale that long since.
pub async fn adopt_orphans(
    pipeline: &Pipeline,
    now: Timestamp,
    taken: &mut std::collections::HashMap<IncidentId, Timestamp>,
) -> Result<usize, StoreError> {
    let stale_after = EXECUTION_LEASE + pipeline.settings.settle.0 + ORPHAN_GRACE;
    taken.retain(|_, at| now.since(*at) < stale_after);
    let recent = pipeline
        .store
        .list_incidents(IncidentQuery {
            open_only: false,
            limit: 10_000,
        })
        .await?;
    let mut adopted = 0;
    for incident in recent {
        let rolling = incident
            .execution
            .as_ref()
            .is_some_and(Execution::rolling_back);
        let under_way = rolling
            || matches!(
                incident.status,
                Status::Approved | Status::Executing | Status::Verifying
            );
        if !under_way
            || now.since(incident.updated_at) < stale_after
            || taken.contains_key(&incident.id)
        {
            continue;
        }
        let lease_name = format!("execute:{}", incident.id);
        let probe = pipeline
            .store
            .acquire_lease(&lease_name, &holder_name(), EXECUTION_LEASE, now)
            .await?;
        let Some(probe) = probe else {
            continue;
        };
        // Free: released again at once; the jobs queued below take it themselves.
        pipeline.store.release_lease(&probe).await?;
        let id = incident.id.clone();
        let (incident, effects) = match step(
            pipeline.store.as_ref(),
            &id,
            Some(incident),
            &Event::Restarted,
            now,
        )
        .await?
        {
            Some(Stepped::Moved { stored, effects }) => (stored, effects),
            Some(Stepped::Unchanged {
                incident, effects, ..
            }) if !effects.is_empty() => (incident, effects),
            _ => continue,
        };
        tracing::warn!(incident = %id, status = %incident.status, "taking over work a lost replica left under way");
        resumed_after(pipeline, &incident, &effects, "replica lost").await;
        dispatch(pipeline, &id, effects, false);
        taken.insert(id, now);
        adopted += 1;
    }
    Ok(adopted)
}

/// Audits that a restart interrupted this incident's work and what now resumes it.
async fn resumed(pipeline: &Pipeline, incident: &Incident, effects: &[Effect]) {
    resumed_after(pipeline, incident, effects, "restart").await;
}

/// Audits that `after` (a restart, a lost replica) interrupted this incident's work and
/// what now resumes it.
async fn resumed_after(pipeline: &Pipeline, incident: &Incident, effects: &[Effect], after: &str) {
    let resumes: Vec<&str> = effects
        .iter()
        .map(|effect| match effect {
            Effect::Analyze => "analysis",
            Effect::Execute(_) => "execution of the approved fix",
            Effect::Reconcile => "reconciliation with the target",
            Effect::Verify => "verification",
            Effect::Undo(_) => "the rollback",
            Effect::RunAt(_) => "the scheduled fix, when its veto window ends",
        })
        .collect();
    emit(
        pipeline,
        Step::RemediationResumed,
        incident,
        json!({ "after": after, "status": incident.status, "resumes": resumes }),
    )
    .await;
}

/// Queues the effects of a stored transition.
fn dispatch(pipeline: &Pipeline, id: &IncidentId, effects: Vec<Effect>, resumed: bool) {
    for effect in effects {
        let job = match effect {
            Effect::Analyze => Job::Analyze {
                id: id.clone(),
                resumed,
            },
            Effect::Execute(action) => Job::Execute(action),
            Effect::Reconcile => Job::Reconcile(id.clone()),
            Effect::Verify => Job::Verify(id.clone()),
            Effect::Undo(permit) => Job::Undo(permit),
            Effect::RunAt(at) => Job::RunWhenDue { id: id.clone(), at },
        };
        pipeline.enqueue(job);
    }
}

async fn handle(pipeline: &Pipeline, job: Job, shutdown: &CancellationToken) {
    let (what, result) = match job {
        Job::Analyze { id, resumed } => (
            id.to_string(),
            analyze_and_decide(pipeline, &id, resumed).await,
        ),
        Job::Execute(action) => (
            action.incident().to_string(),
            execute(pipeline, action).await,
        ),
        Job::Verify(id) => {
            tokio::select! {
                () = tokio::time::sleep(pipeline.settings.settle.0) => {}
                () = shutdown.cancelled() => return,
            }
            (id.to_string(), verify_fix(pipeline, &id).await)
        }
        Job::Reconcile(id) => (id.to_string(), reconcile(pipeline, &id).await),
        Job::Undo(permit) => (
            permit.incident().to_string(),
            undo(pipeline, permit, &Actor::Sentinel).await.map(drop),
        ),
        Job::RunWhenDue { id, at } => {
            let wait = at
                .unix_millis()
                .saturating_sub(Timestamp::now().unix_millis());
            let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
            (
                id.to_string(),
                run_if_due(pipeline, &id, Timestamp::now()).await.map(drop),
            )
        }
    };
    if let Err(e) = result {
        tracing::warn!(incident = %what, error = %e, "remediation step failed");
    }
}

async fn emit(pipeline: &Pipeline, step: Step, incident: &Incident, details: serde_json::Value) {
    let event = AuditEvent::Step {
        step,
        incident,
        details,
    };
    if let Err(e) = audit::emit(
        pipeline.store.as_ref(),
        &Actor::Sentinel,
        event,
        Timestamp::now(),
    )
    .await
    {
        tracing::error!(error = %e, event = step.name(), "cannot write the audit log");
    }
}

/// The target container's changes in `[analyzer] change_window` before `incident` opened,
/// for an incident on a container; `NotRead` for others or a zero window. Docker not
/// answering is `Unknown`, never an error: analysis goes on without them.
async fn recent_changes(pipeline: &Pipeline, incident: &Incident) -> ChangesRead {
    let window = pipeline.settings.analyzer.change_window.0;
    let on_container = matches!(
        incident.signal,
        Signal::ContainerDown | Signal::ContainerMemory
    );
    if window.is_zero() || !on_container {
        return ChangesRead::NotRead;
    }
    let target = incident.resource.as_str();
    let opened_at = incident.opened_at;
    let since = Timestamp::from_unix_millis(
        opened_at
            .unix_millis()
            .saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)),
    );
    // Docker waits for an `until` in the future; the incident opened in the past.
    let until = opened_at.min(Timestamp::now());
    match pipeline
        .collectors
        .container_events(target, since, until)
        .await
    {
        Ok(events) => ChangesRead::Read {
            window,
            changes: analyze::changes::from_events(target, &events, opened_at),
        },
        Err(why) => ChangesRead::Unknown(why),
    }
}

/// What the analyzers may look at, now.
#[tracing::instrument(name = "gather_evidence", skip_all)]
async fn gather_evidence(pipeline: &Pipeline, incident: &Incident) -> Evidence {
    let (containers, sandbox_dirs, changes) = tokio::join!(
        pipeline.collectors.containers(),
        async {
            let dir = pipeline.settings.sandbox_dir.clone();
            tokio::task::spawn_blocking(move || {
                let dirs = sandbox::largest_directories(&dir, 10).unwrap_or_default();
                let total = sandbox::sandbox_size(&dir).ok();
                (dirs, total)
            })
            .await
            .unwrap_or_default()
        },
        recent_changes(pipeline, incident)
    );
    let (dirs, sandbox_bytes) = sandbox_dirs;
    let root = pipeline.settings.sandbox_dir.clone();
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
        sandbox_mounts: pipeline
            .settings
            .monitor
            .disk_mounts
            .iter()
            .filter(|mount| sandbox::on_mount(&root, Path::new(mount)))
            .cloned()
            .collect(),
        changes,
    }
}

#[tracing::instrument(name = "analyze", skip_all, fields(incident = %id))]
async fn analyze_and_decide(
    pipeline: &Pipeline,
    id: &IncidentId,
    resumed: bool,
) -> Result<(), StoreError> {
    let store = pipeline.store.as_ref();
    let now = Timestamp::now();
    let started = step(store, id, None, &Event::AnalysisStarted { resumed }, now).await?;
    let Some((incident, _)) = moved(started) else {
        return Ok(());
    };
    let evidence = gather_evidence(pipeline, &incident).await;
    let analyze::Settled {
        analysis,
        plan,
        refusals,
    } = analyze::settle(pipeline.llm.as_ref(), &incident, &evidence).await;
    let protected = plan
        .container()
        .and_then(|name| evidence.container(name))
        .is_some_and(|c| c.protected());
    // The changes were read for the incident's own container, the only one a fix may act
    // on (`analyze::check_allowed`).
    let changed = plan.container().is_some() && !evidence.changes.changes().is_empty();
    let since = Timestamp::from_unix_millis(now.unix_millis() - 3_600_000);
    let recent = store
        .auto_actions_since(since)
        .await?
        .get(&plan.key())
        .copied()
        .unwrap_or(0);
    let paused = store.control().await?.paused;
    let grant = trust::grant_for(store, &TrustKey::of_plan(incident.signal, &plan)).await?;
    let settings = &pipeline.settings;
    let decision = policy::decide(&PolicyInput {
        plan: &plan,
        assessed: analysis.risk_assessment,
        protected,
        mode: settings.mode,
        paused,
        recent_automatic: recent,
        budget_per_hour: settings.actions.auto_budget_per_hour,
        max_memory_factor: settings.actions.memory_limit_max_factor,
        trusted: grant.is_some(),
        changed,
    });
    // The facts the policy decided on, for the audit and `sentinel replay`.
    let policy_facts = json!({
        "assessed": analysis.risk_assessment, "protected": protected, "paused": paused,
        "recent_automatic": recent, "trusted": grant.as_ref().map(|g| &g.id),
        "trust_applied": decision.trust_applied, "changed": changed,
    });
    let snapshot = match pipeline.executor.snapshot(&plan).await {
        Ok(snapshot) => snapshot,
        Err(e) => TargetState::unreadable(e.to_string()),
    };
    let analyzed = Event::Analyzed(Box::new(Analyzed {
        analysis,
        plan: plan.clone(),
        decision: decision.clone(),
        snapshot,
        refusals: refusals.clone(),
        veto_window: settings.actions.veto_window.0,
        changes: evidence.changes.changes().to_vec(),
        changes_unknown: match &evidence.changes {
            ChangesRead::Unknown(why) => Some(why.clone()),
            ChangesRead::NotRead | ChangesRead::Read { .. } => None,
        },
    }));
    let stepped = step(store, id, None, &analyzed, Timestamp::now()).await?;
    let Some((stored, effects)) = moved(stepped) else {
        return Ok(());
    };
    for refusal in &refusals {
        emit(
            pipeline,
            Step::ProposalRefused,
            &stored,
            json!({ "why": refusal }),
        )
        .await;
    }
    emit(
        pipeline,
        Step::ActionProposed,
        &stored,
        json!({
            "proposed_action": stored.proposed_action,
            "proposal_id": stored.proposal_id,
            "risk": stored.risk,
            "analyzer": stored.analyzer,
            "confidence": stored.confidence,
            "snapshot": stored.snapshot,
            "policy": policy_facts,
        }),
    )
    .await;
    if let Some(grant) = grant.as_ref().filter(|_| decision.trust_applied) {
        trust::note_trusted(pipeline, &stored, grant).await;
    }
    match &decision.verdict {
        Verdict::Automatic(_) => {
            if stored.status == Status::Scheduled {
                emit(
                    pipeline,
                    Step::ActionScheduled,
                    &stored,
                    json!({
                        "by": "policy", "risk": decision.risk,
                        "scheduled_for": stored.scheduled_for,
                        "veto_window_seconds": settings.actions.veto_window.0.as_secs(),
                    }),
                )
                .await;
            } else {
                emit(
                    pipeline,
                    Step::ApprovalGrantedByPolicy,
                    &stored,
                    json!({ "by": "policy", "risk": decision.risk }),
                )
                .await;
            }
            // A test alert's fix never runs, so it spends none of the real budget.
            if !stored.synthetic {
                store
                    .record_auto_action(&plan.key(), Timestamp::now())
                    .await?;
            }
        }
        Verdict::NeedsApproval { role, why } => {
            emit(
                pipeline,
                Step::ApprovalRequested,
                &stored,
                json!({ "role": role, "why": why }),
            )
            .await;
        }
        Verdict::NotifyOnly | Verdict::DryRun { .. } => {
            emit(
                pipeline,
                Step::IncidentEscalated,
                &stored,
                json!({ "status": stored.status }),
            )
            .await;
        }
    }
    dispatch(pipeline, id, effects, false);
    Ok(())
}

/// Takes the lease `name` for `holder`, waiting up to `wait` for another holder's to run
/// out (a process killed mid-action leaves its lease behind until it expires).
async fn acquire_waiting(
    pipeline: &Pipeline,
    name: &str,
    holder: &str,
    wait: Duration,
) -> Result<Option<crate::store::Lease>, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let lease = pipeline
            .store
            .acquire_lease(name, holder, EXECUTION_LEASE, Timestamp::now())
            .await?;
        if lease.is_some() || tokio::time::Instant::now() >= deadline {
            return Ok(lease);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn holder_name() -> String {
    format!("{}-{}", std::process::id(), IncidentId::generate().as_str())
}

/// Runs `work` while renewing the lease every third of its life.
async fn renewing<T>(
    pipeline: &Pipeline,
    lease: &crate::store::Lease,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut renew = tokio::time::interval(EXECUTION_LEASE / 3);
    renew.tick().await;
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = renew.tick() => {
                let renewed = pipeline
                    .store
                    .acquire_lease(&lease.name, &lease.holder, EXECUTION_LEASE, Timestamp::now())
                    .await;
                if !matches!(renewed, Ok(Some(_))) {
                    tracing::warn!(lease = lease.name, ?renewed, "cannot renew the execution lease");
                }
            }
        }
    }
}

/// Executes an approved action at most once.
#[tracing::instrument(name = "execute", skip_all, fields(incident = %action.incident()))]
pub async fn execute(pipeline: &Pipeline, action: ApprovedAction) -> Result<(), StoreError> {
    let id = action.incident().clone();
    let lease_name = format!("execute:{id}");
    let Some(lease) = acquire_waiting(pipeline, &lease_name, &holder_name(), LEASE_WAIT).await?
    else {
        tracing::info!(incident = %id, "another worker is executing this incident");
        return Ok(());
    };
    let result = execute_holding(pipeline, &action, &lease).await;
    if let Err(e) = pipeline.store.release_lease(&lease).await {
        tracing::warn!(error = %e, "cannot release the execution lease");
    }
    result
}

async fn execute_holding(
    pipeline: &Pipeline,
    action: &ApprovedAction,
    lease: &crate::store::Lease,
) -> Result<(), StoreError> {
    let store = pipeline.store.as_ref();
    let id = action.incident();
    let Some(incident) = store.get_incident(id).await? else {
        return Ok(());
    };
    if incident.status != Status::Approved || incident.execution.is_some() {
        return Ok(());
    }
    let plan = action.plan();
    if incident.synthetic {
        return dry_run(pipeline, action, &incident).await;
    }
    // The approval holds for the state that was shown; if the target changed, ask again.
    let now_state = match pipeline.executor.snapshot(plan).await {
        Ok(state) => state,
        Err(e) => TargetState::unreadable(e.to_string()),
    };
    let approved_state = incident.snapshot.clone();
    if !approved_state
        .as_ref()
        .is_some_and(|approved| Executor::unchanged(plan, approved, &now_state))
    {
        let changed = Event::TargetChanged {
            snapshot: now_state.clone(),
        };
        if let Some((stored, _)) = moved(step(store, id, None, &changed, Timestamp::now()).await?) {
            emit(
                pipeline,
                Step::ApprovalRequested,
                &stored,
                json!({ "why": "target changed", "was": approved_state, "now": now_state }),
            )
            .await;
        }
        return Ok(());
    }
    // The intent, before the side effect: which proposal runs, under which token.
    let intent = Event::ExecutionStarted {
        execution: Box::new(Execution {
            action: plan.to_proposed(),
            approved_by: action.approved_by().to_owned(),
            started_at: Timestamp::now(),
            finished_at: None,
            before: now_state.clone(),
            after: None,
            reversible: plan.action().reversible(),
            rolled_back_at: None,
            rollback: None,
            proposal_id: incident.proposal_id.clone(),
            fencing_token: Some(lease.token),
        }),
    };
    if moved(step(store, id, None, &intent, Timestamp::now()).await?).is_none() {
        return Ok(());
    }
    // The last check before the side effect: is this still the lease's holder?
    if !store
        .check_fence(&lease.name, lease.token, Timestamp::now())
        .await?
    {
        let lost = Event::ExecutionFailed {
            message: "lost the execution lease before running; nothing was done".to_owned(),
        };
        step(store, id, None, &lost, Timestamp::now()).await?;
        return Ok(());
    }
    let outcome = renewing(pipeline, lease, pipeline.executor.run(action, &now_state)).await;
    match outcome {
        Ok(after) => {
            let message = format!(
                "executed {}: {}",
                plan.action(),
                crate::pipeline::execute::result_summary(plan, &after)
                    .unwrap_or_else(|| describe_change(&now_state, Some(&after)))
            );
            let done = Event::Executed {
                after: after.clone(),
                message,
            };
            if let Some((stored, effects)) =
                moved(step(store, id, None, &done, Timestamp::now()).await?)
            {
                emit(
                    pipeline,
                    Step::ActionExecuted,
                    &stored,
                    json!({
                        "action": plan.to_proposed(), "approved_by": action.approved_by(),
                        "proposal_id": stored.proposal_id,
                        "before": now_state, "after": after,
                    }),
                )
                .await;
                dispatch(pipeline, id, effects, false);
            }
        }
        Err(e) => {
            let failed = Event::ExecutionFailed {
                message: format!("{} failed: {e}", plan.action()),
            };
            if let Some((stored, _)) =
                moved(step(store, id, None, &failed, Timestamp::now()).await?)
            {
                emit(
                    pipeline,
                    Step::ActionFailed,
                    &stored,
                    json!({ "error": e.to_string() }),
                )
                .await;
            }
        }
    }
    Ok(())
}

/// A test alert's approved fix: recorded (step `dry_run`, audited `DryRunRecorded`) and
/// never run. Nothing is asked of the target, not even a snapshot.
async fn dry_run(
    pipeline: &Pipeline,
    action: &ApprovedAction,
    incident: &Incident,
) -> Result<(), StoreError> {
    let plan = action.plan();
    let message = format!(
        "dry run: this is a test alert, so {} on {} was not run (approved by {}); nothing \
         was changed",
        plan.action(),
        incident.resource,
        action.approved_by()
    );
    let event = Event::DryRun { message };
    let stepped = step(
        pipeline.store.as_ref(),
        &incident.id,
        Some(incident.clone()),
        &event,
        Timestamp::now(),
    )
    .await?;
    if let Some((stored, _)) = moved(stepped) {
        emit(
            pipeline,
            Step::DryRunRecorded,
            &stored,
            json!({ "action": plan.to_proposed(), "approved_by": action.approved_by() }),
        )
        .await;
    }
    Ok(())
}

/// After a restart, an `executing` incident: nobody knows whether the side effect happened,
/// so the target says. Holds the execution lease (the dead holder's runs out first), then
/// records what the target shows (step `reconciled`) and verifies, or fails honestly.
#[tracing::instrument(name = "reconcile", skip_all, fields(incident = %id))]
async fn reconcile(pipeline: &Pipeline, id: &IncidentId) -> Result<(), StoreError> {
    let lease_name = format!("execute:{id}");
    let Some(lease) = acquire_waiting(pipeline, &lease_name, &holder_name(), LEASE_WAIT).await?
    else {
        tracing::warn!(incident = %id, "the execution lease stayed taken; reconciling later");
        pipeline.enqueue(Job::Reconcile(id.clone()));
        return Ok(());
    };
    let result = reconcile_holding(pipeline, id).await;
    if let Err(e) = pipeline.store.release_lease(&lease).await {
        tracing::warn!(error = %e, "cannot release the execution lease");
    }
    result
}

async fn reconcile_holding(pipeline: &Pipeline, id: &IncidentId) -> Result<(), StoreError> {
    let store = pipeline.store.as_ref();
    let Some(incident) = store.get_incident(id).await? else {
        return Ok(());
    };
    let Some(execution) = incident.execution.clone() else {
        return Ok(());
    };
    if incident.status != Status::Executing {
        return Ok(());
    }
    let plan = match execution.action.plan() {
        Ok(plan) => plan,
        Err(e) => {
            let failed = Event::ExecutionFailed {
                message: format!("an interrupted fix cannot be read back: {e}"),
            };
            step(store, id, None, &failed, Timestamp::now()).await?;
            return Ok(());
        }
    };
    let event = match pipeline.executor.snapshot(&plan).await {
        Ok(now_state) => {
            let reached = pipeline
                .executor
                .reached(id, &plan, &execution.before, &now_state);
            let message = if reached {
                format!(
                    "a restart interrupted {}; the target shows it was done: {}",
                    plan.action(),
                    describe_change(&execution.before, Some(&now_state))
                )
            } else {
                format!(
                    "a restart interrupted {} before it reached the target",
                    plan.action()
                )
            };
            Event::Reconciled {
                after: now_state,
                reached_target: reached,
                message,
            }
        }
        // Without a look at the target nothing can be claimed: a person decides.
        Err(e) => Event::ExecutionFailed {
            message: format!(
                "a restart interrupted {} and the target cannot be inspected ({e}); check it by hand",
                plan.action()
            ),
        },
    };
    if let Some((stored, effects)) = moved(step(store, id, None, &event, Timestamp::now()).await?) {
        emit(
            pipeline,
            Step::ExecutionReconciled,
            &stored,
            json!({ "status": stored.status, "after": stored.execution.as_ref().map(|e| &e.after) }),
        )
        .await;
        dispatch(pipeline, id, effects, false);
    }
    Ok(())
}

/// After `settle`: measure again; resolve, or roll back what can be undone and escalate.
#[tracing::instrument(name = "verify", skip_all, fields(incident = %id))]
pub async fn verify_fix(pipeline: &Pipeline, id: &IncidentId) -> Result<(), StoreError> {
    let store = pipeline.store.as_ref();
    let Some(incident) = store.get_incident(id).await? else {
        return Ok(());
    };
    if incident.status != Status::Verifying {
        return Ok(());
    }
    let collected = pipeline.collectors.collect().await;
    let judgement = verify::judge(&incident, &collected, &pipeline.settings.thresholds);
    let event = Event::Verified(judgement.clone());
    let Some((stored, effects)) = moved(step(store, id, None, &event, Timestamp::now()).await?)
    else {
        return Ok(());
    };
    match (&judgement, stored.status) {
        (_, Status::Resolved) => {
            let message = stored
                .timeline
                .last()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            emit(
                pipeline,
                Step::VerificationSucceeded,
                &stored,
                json!({ "message": message }),
            )
            .await;
            trust::fix_verified(pipeline, &stored).await;
        }
        (verify::Judgement::NotResolved { message }, _) => {
            emit(
                pipeline,
                Step::VerificationFailed,
                &stored,
                json!({ "message": message }),
            )
            .await;
            trust::fix_undone(pipeline, &stored, "failed verification").await;
            if stored.status == Status::Escalated {
                emit(
                    pipeline,
                    Step::IncidentEscalated,
                    &stored,
                    json!({ "why": "the fix did not help and cannot be undone" }),
                )
                .await;
            }
        }
        _ => {}
    }
    for effect in effects {
        if let Effect::Undo(permit) = effect {
            undo(pipeline, permit, &Actor::Sentinel).await?;
        }
    }
    Ok(())
}

/// Undoes a fix under its permit and records how it went. Holds the execution lease (so a
/// resumed rollback and a late one never overlap) and skips the call when the target
/// already looks as before. `Some` with the incident as stored after a successful undo.
#[tracing::instrument(name = "roll_back", skip_all, fields(incident = %permit.incident(), actor = %actor))]
pub async fn undo(
    pipeline: &Pipeline,
    permit: RollbackPermit,
    actor: &Actor,
) -> Result<Option<Incident>, StoreError> {
    let store = pipeline.store.as_ref();
    let id = permit.incident().clone();
    let lease_name = format!("execute:{id}");
    let Some(lease) = acquire_waiting(pipeline, &lease_name, &holder_name(), LEASE_WAIT).await?
    else {
        let failed = Event::RollbackFailed {
            message: "another worker holds the target; try the rollback again".to_owned(),
        };
        step(store, &id, None, &failed, Timestamp::now()).await?;
        return Ok(None);
    };
    let result = undo_holding(pipeline, &permit, actor, &lease).await;
    if let Err(e) = store.release_lease(&lease).await {
        tracing::warn!(error = %e, "cannot release the execution lease");
    }
    result
}

async fn undo_holding(
    pipeline: &Pipeline,
    permit: &RollbackPermit,
    actor: &Actor,
    lease: &crate::store::Lease,
) -> Result<Option<Incident>, StoreError> {
    let store = pipeline.store.as_ref();
    let id = permit.incident();
    let Some(incident) = store.get_incident(id).await? else {
        return Ok(None);
    };
    let Some(execution) = incident.execution.clone().filter(Execution::rolling_back) else {
        return Ok(None);
    };
    let plan = permit.plan();
    let undone = (pipeline.executor.snapshot(plan).await.ok())
        .filter(|now| Executor::undone(plan, permit.before(), now));
    let already = undone.is_some();
    let outcome = match undone {
        Some(now) => Ok(now),
        None => renewing(pipeline, lease, pipeline.executor.undo(permit)).await,
    };
    match outcome {
        Ok(restored) => {
            let message = if already {
                format!(
                    "rolled back {}: the target already looked as before the fix",
                    plan.action()
                )
            } else {
                format!(
                    "rolled back {}: {}",
                    plan.action(),
                    crate::pipeline::execute::undo_summary(plan, &restored).unwrap_or_else(|| {
                        describe_change_from(execution.after.as_ref(), &restored)
                    })
                )
            };
            let done = Event::RolledBack {
                restored: restored.clone(),
                message: message.clone(),
                stay_closed: false,
            };
            let stepped = match step(store, id, None, &done, Timestamp::now()).await {
                // Closed, and its fingerprint has a newer open incident: it cannot reopen
                // as rolled back, so it records the rollback and stays closed.
                Err(StoreError::DuplicateOpen { existing, .. }) => {
                    let closed = Event::RolledBack {
                        restored: restored.clone(),
                        message: format!(
                            "{message}; {existing} is open for the same signal now, so this \
                             incident stays closed"
                        ),
                        stay_closed: true,
                    };
                    step(store, id, None, &closed, Timestamp::now()).await?
                }
                other => other?,
            };
            let stored = moved(stepped);
            if let Some((stored, _)) = &stored {
                let event = AuditEvent::Step {
                    step: Step::ActionRolledBack,
                    incident: stored,
                    details: json!({
                        "action": execution.action, "restored": restored,
                        "before": execution.before, "after": execution.after,
                        "call_made": !already,
                    }),
                };
                audit::emit(store, actor, event, Timestamp::now()).await?;
                trust::fix_undone(pipeline, stored, "was rolled back").await;
                if stored.status == Status::Escalated {
                    emit(
                        pipeline,
                        Step::IncidentEscalated,
                        stored,
                        json!({ "why": "the fix did not help and was rolled back" }),
                    )
                    .await;
                }
            }
            Ok(stored.map(|(stored, _)| stored))
        }
        Err(e) => {
            let failed = Event::RollbackFailed {
                message: format!("rollback of {} failed: {e}", plan.action()),
            };
            if let Some((stored, _)) =
                moved(step(store, id, None, &failed, Timestamp::now()).await?)
            {
                emit(
                    pipeline,
                    Step::ActionFailed,
                    &stored,
                    json!({ "rollback": true, "error": e.to_string() }),
                )
                .await;
            }
            Ok(None)
        }
    }
}

/// A scheduled fix whose veto window may have ended: [`Event::ScheduleDue`] through the
/// engine, with compare-and-set, so of a timer, the leader's sweep, a Stop and a Run now
/// exactly one moves it. Run: approved by the policy, then executed on the same path as an
/// approval. Not due yet: the timer is set again. `true` when this call moved it.
pub async fn run_if_due(
    pipeline: &Pipeline,
    id: &IncidentId,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let store = pipeline.store.as_ref();
    let paused = store.control().await?.paused;
    let event = Event::ScheduleDue { paused };
    match step(store, id, None, &event, now).await? {
        Some(Stepped::Moved { stored, effects }) => {
            if stored.status == Status::AwaitingApproval {
                emit(
                    pipeline,
                    Step::ApprovalRequested,
                    &stored,
                    json!({ "why": "automatic execution is paused" }),
                )
                .await;
            } else {
                emit(
                    pipeline,
                    Step::ApprovalGrantedByPolicy,
                    &stored,
                    json!({
                        "by": "policy", "risk": stored.risk,
                        "after": "veto window", "scheduled_for": stored.scheduled_for,
                    }),
                )
                .await;
            }
            dispatch(pipeline, id, effects, false);
            Ok(true)
        }
        Some(Stepped::Unchanged { effects, .. }) => {
            dispatch(pipeline, id, effects, false);
            Ok(false)
        }
        Some(Stepped::Refused { .. }) | None => Ok(false),
    }
}

/// Runs every scheduled fix whose veto window has ended: the leader's sweep after each
/// monitor cycle, so a schedule never depends on one process's timer (a replica that died
/// with it, a clock that jumped). Returns how many ran (or, paused, now wait for a person).
pub async fn run_due_schedules(pipeline: &Pipeline, now: Timestamp) -> Result<usize, StoreError> {
    let open = pipeline
        .store
        .list_incidents(IncidentQuery {
            open_only: true,
            limit: 10_000,
        })
        .await?;
    let mut ran = 0;
    for incident in open {
        let due = incident.status == Status::Scheduled
            && incident.scheduled_for.is_none_or(|at| at <= now);
        if due && run_if_due(pipeline, &incident.id, now).await? {
            ran += 1;
        }
    }
    Ok(ran)
}

/// Escalates incidents whose request for approval went unanswered for `approval_timeout`.
/// Returns how many expired. Run by the monitor loop's leader.
pub async fn expire_approvals(pipeline: &Pipeline, now: Timestamp) -> Result<usize, StoreError> {
    let timeout = pipeline.settings.approval_timeout.0;
    let open = pipeline
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
        if now.since(waiting_since(&incident)) < timeout {
            continue;
        }
        let id = incident.id.clone();
        let event = Event::Expire { waited: timeout };
        let stepped = step(pipeline.store.as_ref(), &id, Some(incident), &event, now).await?;
        if let Some((stored, _)) = moved(stepped) {
            emit(
                pipeline,
                Step::ApprovalExpired,
                &stored,
                json!({ "waited_seconds": timeout.as_secs() }),
            )
            .await;
            expired += 1;
        }
    }
    Ok(expired)
}

/// `state exited → running`: the fields a fix changed, from two readings of its target.
fn describe_change(before: &TargetState, after: Option<&TargetState>) -> String {
    describe_change_from(Some(before), after.unwrap_or(before))
}

fn describe_change_from(before: Option<&TargetState>, after: &TargetState) -> String {
    let mut changes = Vec::new();
    let before = before.map(TargetState::to_json).unwrap_or_default();
    let after = after.to_json();
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

/// When the incident last started waiting for approval (`GET /api/approvals/pending`
/// shows it, and when it expires).
pub fn waiting_since(incident: &Incident) -> Timestamp {
    incident
        .timeline
        .iter()
        .rev()
        .find(|e| e.step == Status::AwaitingApproval.as_str())
        .map_or(incident.updated_at, |e| e.at)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde_json::json;

    use super::*;
    use crate::config::Settings;
    use crate::domain::{
        ActionId, ContainerState, Detection, ProposedAction, Resource, Risk, Severity, Signal,
        Source,
    };
    use crate::store::embedded::EmbeddedStore;
    use crate::store::SharedStore;

    const T0: i64 = 1_795_860_000_000;

    fn at(offset_ms: i64) -> Timestamp {
        Timestamp::from_unix_millis(T0 + offset_ms)
    }

    fn web(state: &str) -> TargetState {
        TargetState::Container(ContainerState {
            id: Some("3f9c".to_owned()),
            name: "web-1".to_owned(),
            state: Some(state.to_owned()),
            started_at: None,
            restart_count: Some(0),
            memory: 0,
            memory_swap: 0,
        })
    }

    /// An incident whose fix ran at `T0` and which waits for its verification.
    fn verifying() -> Incident {
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
        let start = ProposedAction {
            action: ActionId::ContainerStart,
            params: BTreeMap::from([("container".to_owned(), json!("web-1"))]),
        };
        let mut incident =
            Incident::open(IncidentId::parse("inc-orphan").unwrap(), &detection, at(0));
        incident.propose(start.clone(), web("exited"));
        incident.risk = Some(Risk::Medium);
        incident.approvals = vec!["api:ops (admin)".into()];
        incident.execution = Some(Execution {
            action: start,
            approved_by: "api:ops (admin)".into(),
            started_at: at(0),
            finished_at: Some(at(0)),
            before: web("exited"),
            after: Some(web("running")),
            reversible: true,
            rolled_back_at: None,
            rollback: None,
            proposal_id: None,
            fencing_token: None,
        });
        incident.status = Status::Verifying;
        incident.updated_at = at(0);
        incident
    }

    fn resumed_entries(audit: &[crate::domain::AuditEntry]) -> Vec<String> {
        audit
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .filter(|e| e.contains("remediation_resumed") || e.contains("RemediationResumed"))
            .collect()
    }

    #[tokio::test]
    async fn work_a_lost_replica_left_is_taken_over_once_stale_and_unleased_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let store: SharedStore =
            Arc::new(EmbeddedStore::open(&dir.path().join("store.redb")).unwrap());
        let settings = Arc::new(Settings::defaults());
        let stale_ms = (EXECUTION_LEASE + settings.settle.0 + ORPHAN_GRACE).as_millis() as i64;
        let (pipeline, mut jobs) = Pipeline::new(settings, Arc::clone(&store), None);
        let incident = verifying();
        store.create_incident(&incident).await.unwrap();
        let mut taken = HashMap::new();

        // Fresh: its worker may still be on it.
        let adopted = adopt_orphans(&pipeline, at(stale_ms - 1_000), &mut taken).await;
        assert_eq!(adopted.unwrap(), 0);

        // Stale, but a live worker holds (renews) its execution lease.
        let held = store
            .acquire_lease(
                "execute:inc-orphan",
                "alive-elsewhere",
                EXECUTION_LEASE,
                at(stale_ms),
            )
            .await
            .unwrap()
            .expect("the lease is free");
        let adopted = adopt_orphans(&pipeline, at(stale_ms + 1_000), &mut taken).await;
        assert_eq!(adopted.unwrap(), 0);
        assert!(
            jobs.try_recv().is_err(),
            "nothing is queued while the lease is held"
        );

        // The holder is gone: its lease ran out.
        let later = stale_ms + EXECUTION_LEASE.as_millis() as i64 + 1_000;
        let adopted = adopt_orphans(&pipeline, at(later), &mut taken).await;
        assert_eq!(adopted.unwrap(), 1);
        match jobs.try_recv() {
            Ok(Job::Verify(id)) => assert_eq!(id, incident.id),
            Ok(other) => panic!("expected the verification to resume, got {other:?}"),
            Err(e) => panic!("nothing was queued: {e}"),
        }
        let audit = store.list_audit().await.unwrap();
        let resumed = resumed_entries(&audit);
        assert_eq!(resumed.len(), 1, "{resumed:?}");
        assert!(resumed[0].contains("replica lost"), "{}", resumed[0]);
        // The lease probe was released: the resumed job can take it.
        assert!(store
            .acquire_lease("execute:inc-orphan", "the-job", EXECUTION_LEASE, at(later))
            .await
            .unwrap()
            .is_some());
        drop(held);

        // Taken over already: not again while its verification may still be waiting.
        let adopted = adopt_orphans(&pipeline, at(later + 10_000), &mut taken).await;
        assert_eq!(adopted.unwrap(), 0);
        assert!(jobs.try_recv().is_err());
        assert_eq!(resumed_entries(&store.list_audit().await.unwrap()).len(), 1);
    }
}
