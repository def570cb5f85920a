//! The operations people ask Sentinel for, the same whichever door they come through: the
//! HTTP API, Slack buttons or slash commands.
//!
//! In: typed requests with the acting [`Actor`]. Out: incidents and reports, or a
//! [`ServiceError`] each door maps to its own answer (an HTTP status, an ephemeral message).
//! The rules themselves live in the pure pipeline stages; this module loads, applies them,
//! stores with compare-and-set and audits.

pub mod demo;
pub mod postmortem;
pub mod trust;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::config::Settings;
use crate::domain::{Actor, Incident, IncidentId, Silence, SilenceTarget, Timestamp};
use crate::pipeline::analyze::llm::LlmAnalyzer;
use crate::pipeline::approve::DecisionError;
use crate::pipeline::audit::{self, AuditEvent};
use crate::pipeline::detect::{self, Scenario};
use crate::pipeline::engine::{Effect, Event, Recovery};
use crate::pipeline::intake::{self, Intake};
use crate::pipeline::monitor::CycleReport;
use crate::pipeline::remediate::{self, Job, Stepped};
use crate::pipeline::{Pipeline, Readings};
use crate::store::{IncidentQuery, SharedStore, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// What was not found: `incident inc-…`, `silence sil-…`.
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DecisionError> for ServiceError {
    fn from(e: DecisionError) -> Self {
        match e {
            DecisionError::Forbidden { .. } => ServiceError::Forbidden(e.to_string()),
            DecisionError::Conflict(message) => ServiceError::Conflict(message),
        }
    }
}

pub use crate::domain::SignalReading;

/// The body of `GET /api/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub mode: &'static str,
    pub paused: bool,
    /// Whether the store answered; while it does not, the rest is the last known state
    /// (`web::last_known`).
    pub store: StoreHealth,
    pub signals: Vec<SignalReading>,
    pub incidents: Vec<Incident>,
    /// The latest monitor cycle on the replica that answered; `null` before the first.
    pub monitor: Option<CycleReport>,
    /// Automatic actions per `action:target` in the last hour against the budget; `open`
    /// means further fixes of that key wait for approval.
    pub breakers: Vec<BreakerState>,
}

/// How many open incidents the status report lists at most.
pub const STATUS_INCIDENTS: usize = 100;

impl StatusReport {
    /// What `/metrics` reads from the store: open breakers and open incidents per severity.
    pub fn gauges(&self) -> crate::telemetry::metrics::StoreGauges {
        let breakers = self
            .breakers
            .iter()
            .map(|breaker| {
                let (action, target) = breaker
                    .key
                    .split_once(':')
                    .unwrap_or((breaker.key.as_str(), ""));
                (
                    action.to_owned(),
                    target.to_owned(),
                    breaker.state == "open",
                )
            })
            .collect();
        let incidents_open = ["info", "warning", "critical"]
            .into_iter()
            .map(|severity| {
                let open = self
                    .incidents
                    .iter()
                    .filter(|incident| incident.is_open())
                    .filter(|incident| incident.severity.as_str() == severity)
                    .count();
                (severity, open)
            })
            .collect();
        crate::telemetry::metrics::StoreGauges {
            breakers,
            incidents_open,
        }
    }
}

/// The store as `/api/status` shows it: `{"ok": true, "backend": "redis"}`, or
/// `{"ok": false, "since": …}` while it does not answer (no backend name, no backend message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreHealth {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'static str>,
    /// When this replica first failed to reach it, for as long as it still fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<Timestamp>,
}

impl StoreHealth {
    pub fn up(backend: &'static str) -> Self {
        StoreHealth {
            ok: true,
            backend: Some(backend),
            since: None,
        }
    }

    pub fn down(since: Timestamp) -> Self {
        StoreHealth {
            ok: false,
            backend: None,
            since: Some(since),
        }
    }
}

/// One circuit breaker, as `/api/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakerState {
    pub key: String,
    pub automatic_last_hour: u64,
    pub budget_per_hour: u32,
    /// `closed` (automation allowed) or `open` (budget spent: approval needed).
    pub state: &'static str,
}

/// The body of `GET /api/audit`.
pub use crate::pipeline::audit::AuditReport;

/// What a batch of external alerts did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AlertsOutcome {
    pub opened: usize,
    pub updated: usize,
    pub resolved: usize,
    pub silenced: usize,
    /// Resolved alerts that changed nothing: no open incident, or one whose recovery was
    /// already recorded.
    pub ignored: usize,
    /// Resolved alerts for incidents whose fix is running or being verified: recorded on
    /// the incident, and verification takes them into account.
    pub noted: usize,
}

/// A silence's length as people write it (`"1h"`, `"30m"`), for the doors to parse before
/// they call [`Sentinel::silence`].
pub fn parse_length(text: &str) -> Result<std::time::Duration, ServiceError> {
    humantime::parse_duration(text.trim()).map_err(|_| {
        ServiceError::Invalid(format!(
            "{text:?} is not a duration; write it like \"1h\" or \"30m\""
        ))
    })
}

/// The longest silence anyone can set.
pub const MAX_SILENCE: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Work acknowledged to a caller and finished afterwards (Slack clicks). Bounded: when all
/// room is taken, [`Background::spawn`] waits (up to a limit) before starting more, so a flood
/// slows acknowledgements down instead of piling up tasks. A graceful shutdown waits for it
/// ([`Background::idle`]), so what was acknowledged is done before the process exits.
pub struct Background {
    slots: Arc<tokio::sync::Semaphore>,
    size: u32,
}

impl Background {
    /// How much background work runs at once: enough to ride out a slow commit (a 200 ms
    /// fsync stall at 20 000 clicks/s is 4 000 clicks) without holding acknowledgements up,
    /// small enough to bound memory (a waiting click is a few KB). With 1024, such stalls
    /// showed as 180–200 ms p99 acknowledgements in bench/slack.sh.
    pub const SIZE: u32 = 8192;

    fn new() -> Self {
        Background {
            slots: Arc::new(tokio::sync::Semaphore::new(Self::SIZE as usize)),
            size: Self::SIZE,
        }
    }

    /// Starts `work` once there is room, waiting at most `wait` for it (then it starts
    /// anyway: acknowledged work is never dropped).
    pub async fn spawn<F>(&self, wait: std::time::Duration, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        // Room is there nearly always; only then is a timer set (timers share one wheel).
        let room = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(room) => Some(room),
            Err(_) => tokio::time::timeout(wait, Arc::clone(&self.slots).acquire_owned())
                .await
                .ok()
                .and_then(Result::ok),
        };
        if room.is_none() {
            tracing::warn!("background work is full; starting one more anyway");
        }
        tokio::spawn(async move {
            let _room = room;
            work.await;
        });
    }

    /// Waits until no background work runs.
    pub async fn idle(&self) {
        if let Ok(all) = self.slots.acquire_many(self.size).await {
            drop(all);
        }
    }
}

/// Shared by every request handler and background task: the operations people ask for,
/// over the pipeline's stages ([`Pipeline`]) and the monitor's readings ([`Readings`]).
pub struct Sentinel {
    settings: Arc<Settings>,
    store: SharedStore,
    /// The stages' dependencies, handed to the monitor loop and the remediation worker.
    pipeline: Arc<Pipeline>,
    /// What the monitor measured on this replica.
    readings: Arc<Readings>,
    /// Announces incident changes (ids) to the Slack card sync and the live status stream.
    changes: crate::store::observed::Changes,
    /// Acknowledged work still being done (Slack clicks).
    background: Background,
    /// Identical refusals arriving together, audited as one entry with a count.
    refusals: Arc<audit::Refusals>,
}

impl Sentinel {
    /// The service over `store` (the observed store: its writes are announced on `changes`),
    /// and the receiving end of its job queue for `remediate::run_worker`.
    pub fn new(
        settings: Arc<Settings>,
        store: SharedStore,
        changes: crate::store::observed::Changes,
    ) -> (Self, mpsc::UnboundedReceiver<Job>) {
        let llm = build_llm(&settings);
        let (pipeline, receiver) = Pipeline::new(Arc::clone(&settings), Arc::clone(&store), llm);
        let sentinel = Sentinel {
            pipeline: Arc::new(pipeline),
            readings: Arc::new(Readings::pending(&settings)),
            changes,
            settings,
            store,
            background: Background::new(),
            refusals: Arc::default(),
        };
        (sentinel, receiver)
    }

    /// The configuration this service runs with (read-only).
    pub fn settings(&self) -> &Arc<Settings> {
        &self.settings
    }

    /// Acknowledged work still being done; doors hand their after-the-ack work to it.
    pub fn background(&self) -> &Background {
        &self.background
    }

    /// Whether the store answers, and which backend it is (for `/readyz`).
    pub async fn ping(&self) -> Result<&'static str, ServiceError> {
        self.store.ping().await?;
        Ok(self.store.backend())
    }

    /// The stages' dependencies (for the monitor loop, the remediation worker and tests).
    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Where the monitor publishes its readings.
    pub fn readings(&self) -> &Arc<Readings> {
        &self.readings
    }

    /// Queues remediation work (see [`Pipeline::enqueue`]).
    pub fn enqueue(&self, job: Job) {
        self.pipeline.enqueue(job);
    }

    /// Incident ids as they are created or updated (a hint to look; read the store).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<IncidentId> {
        self.changes.subscribe()
    }

    /// A number that moves whenever what `status` reports may have changed on this replica:
    /// a change through the store or a monitor cycle's new readings. An answer kept ready
    /// (the `/sentinel status` reply) is current while this has not moved; changes on other
    /// replicas do not move it, so such an answer is also kept only briefly.
    pub fn state_version(&self) -> u64 {
        self.changes.count().wrapping_add(self.readings.cycles())
    }

    /// Queues analysis of a newly opened incident.
    pub fn opened(&self, incident: &Incident) {
        self.pipeline.opened(incident);
    }

    pub fn set_cycle(&self, report: CycleReport) {
        self.readings.set_cycle(report);
    }

    pub fn last_cycle(&self) -> Option<CycleReport> {
        self.readings.last_cycle()
    }

    /// Publishes one cycle's readings: for `/api/status`, the trend charts and the stream.
    pub fn set_signals(&self, readings: Vec<SignalReading>) {
        self.readings.set_signals(readings);
    }

    /// The latest readings on this replica (`pending` before its first cycle).
    pub fn signal_readings(&self) -> Vec<SignalReading> {
        self.readings.signals()
    }

    /// The recent samples of one signal, oldest first.
    pub fn trend(&self, signal: &str, resource: &str) -> Vec<crate::domain::Sample> {
        self.readings.trend(signal, resource)
    }

    /// Changes whenever a monitor cycle has published new readings.
    pub fn watch_cycles(&self) -> tokio::sync::watch::Receiver<u64> {
        self.readings.watch_cycles()
    }

    pub async fn status(&self) -> Result<StatusReport, ServiceError> {
        let control = self.store.control().await?;
        let budget = self.settings.actions.auto_budget_per_hour;
        let hour_ago = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 3_600_000);
        let breakers = self
            .store
            .auto_actions_since(hour_ago)
            .await?
            .into_iter()
            .map(|(key, count)| BreakerState {
                state: if count >= u64::from(budget) {
                    "open"
                } else {
                    "closed"
                },
                key,
                automatic_last_hour: count,
                budget_per_hour: budget,
            })
            .collect();
        let incidents = self
            .store
            .list_incidents(IncidentQuery {
                open_only: true,
                limit: STATUS_INCIDENTS,
            })
            .await?;
        Ok(StatusReport {
            mode: self.settings.mode.as_str(),
            paused: control.paused,
            store: StoreHealth::up(self.store.backend()),
            signals: self.readings.signals(),
            incidents,
            monitor: self.last_cycle(),
            breakers,
        })
    }

    /// What `/metrics` reads from the store: the breakers, and every open incident counted
    /// (the status report lists only the first [`STATUS_INCIDENTS`]).
    pub async fn store_gauges(
        &self,
    ) -> Result<crate::telemetry::metrics::StoreGauges, ServiceError> {
        let mut report = self.status().await?;
        if report.incidents.len() >= STATUS_INCIDENTS {
            report.incidents = self
                .store
                .list_incidents(IncidentQuery {
                    open_only: true,
                    limit: usize::MAX,
                })
                .await?;
        }
        Ok(report.gauges())
    }

    pub async fn incidents(&self, query: IncidentQuery) -> Result<Vec<Incident>, ServiceError> {
        Ok(self.store.list_incidents(query).await?)
    }

    pub async fn incident(&self, id: &IncidentId) -> Result<Incident, ServiceError> {
        self.store
            .get_incident(id)
            .await?
            .ok_or_else(|| not_found(id))
    }

    /// Injects a test alert through the same intake as monitoring.
    #[tracing::instrument(name = "trigger", skip_all, fields(scenario = ?scenario, actor = %actor))]
    pub async fn trigger(&self, scenario: Scenario, actor: &Actor) -> Result<Intake, ServiceError> {
        let detection = detect::test_alert(scenario, &self.settings.thresholds);
        let intake =
            intake::open_or_update(self.store.as_ref(), &detection, Timestamp::now()).await?;
        if let Intake::Opened(incident) = &intake {
            self.opened(incident);
        }
        tracing::info!(%scenario, actor = %actor, "test alert injected");
        Ok(intake)
    }

    /// Applies a person's decision through the incident engine: compare-and-set, and when
    /// the incident changed between the read and the write the engine decides again on the
    /// fresh incident, so of two racing approvals the second finds it approved and gets 409.
    /// A refusal is audited. Returns the stored incident and the effects it unlocked.
    ///
    /// `seen` is an incident the caller has just read, used for the first attempt instead of
    /// reading it again; the compare-and-set still refuses it if it is out of date.
    async fn decide(
        &self,
        id: &IncidentId,
        seen: Option<Incident>,
        actor: &Actor,
        verb: &str,
        event: &Event,
    ) -> Result<(Incident, Vec<Effect>), ServiceError> {
        let stepped = remediate::step(self.store.as_ref(), id, seen, event, Timestamp::now())
            .await?
            .ok_or_else(|| not_found(id))?;
        match stepped {
            Stepped::Moved { stored, effects } => Ok((stored, effects)),
            Stepped::Refused { incident, error } => {
                Err(self.refused(incident, actor, verb, error).await)
            }
            Stepped::Unchanged { incident, why, .. } => Err(ServiceError::Conflict(format!(
                "cannot {verb} incident {}: {why}",
                incident.id
            ))),
        }
    }

    /// Approves an incident's proposed fix, pinned to `proposal` when given (409 once it is
    /// no longer the current one); once approved, the fix is executed in the background and
    /// its progress shows on the timeline.
    #[tracing::instrument(name = "approve", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn approve(
        &self,
        id: &IncidentId,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        self.approve_from(id, None, proposal, actor).await
    }

    /// [`approve`](Self::approve), starting from `seen`, the incident as the caller has just
    /// read it (a Slack click reads it to check the card first); a stale copy costs one more
    /// read, never a wrong decision.
    #[tracing::instrument(name = "approve", skip_all, fields(incident = %seen.id, actor = %actor))]
    pub async fn approve_seen(
        &self,
        seen: Incident,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        let id = seen.id.clone();
        self.approve_from(&id, Some(seen), proposal, actor).await
    }

    async fn approve_from(
        &self,
        id: &IncidentId,
        seen: Option<Incident>,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        let now = Timestamp::now();
        let event = Event::Approve {
            actor: actor.clone(),
            proposal: proposal.map(str::to_owned),
            two_person_rule: self.settings.actions.two_person_rule,
        };
        let (stored, effects) = self.decide(id, seen, actor, "approve", &event).await?;
        let runs = effects.iter().any(|e| matches!(e, Effect::Execute(_)));
        let event = if runs {
            AuditEvent::ApprovalGranted { incident: &stored }
        } else {
            AuditEvent::Step {
                step: crate::pipeline::audit::Step::ApprovalRecorded,
                incident: &stored,
                details: serde_json::json!({ "waiting_for": "a second admin" }),
            }
        };
        audit::emit(self.store.as_ref(), actor, event, now).await?;
        for effect in effects {
            if let Effect::Execute(action) = effect {
                self.enqueue(Job::Execute(action));
            }
        }
        Ok(stored)
    }

    /// Rejects an incident's proposed fix.
    #[tracing::instrument(name = "reject", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn reject(
        &self,
        id: &IncidentId,
        actor: &Actor,
        reason: Option<&str>,
    ) -> Result<Incident, ServiceError> {
        let now = Timestamp::now();
        let event = Event::Reject {
            actor: actor.clone(),
            reason: reason.map(str::to_owned),
        };
        let (stored, _) = self.decide(id, None, actor, "reject", &event).await?;
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::ApprovalRejected {
                incident: &stored,
                reason,
            },
            now,
        )
        .await?;
        Ok(stored)
    }

    /// Rolls back an executed fix (admins): restores the memory limit, stops the started
    /// container, or brings quarantined files back. Any number of concurrent requests make
    /// one undo: only the one stored transition into rolling back gets the permit.
    #[tracing::instrument(name = "rollback", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn rollback(&self, id: &IncidentId, actor: &Actor) -> Result<Incident, ServiceError> {
        let event = Event::RollbackRequested {
            actor: actor.clone(),
        };
        let (stored, effects) = self.decide(id, None, actor, "rollback", &event).await?;
        let mut rolled = None;
        for effect in effects {
            if let Effect::Undo(permit) = effect {
                rolled = remediate::undo(&self.pipeline, permit, actor).await?;
            }
        }
        rolled.ok_or_else(|| {
            ServiceError::Conflict(format!(
                "incident {} was not rolled back: see its timeline",
                stored.id
            ))
        })
    }

    /// Resolves an incident by hand (operators), with an optional note: before a fix runs it
    /// closes the incident (step `recovered`); while a fix runs it is refused.
    #[tracing::instrument(name = "resolve", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn resolve(
        &self,
        id: &IncidentId,
        note: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        require(actor, crate::domain::Role::Operator, "resolving")?;
        let note = note.map(str::trim).filter(|n| !n.is_empty());
        if note.is_some_and(|n| n.chars().count() > 2000) {
            return Err(ServiceError::Invalid(
                "the note is longer than 2000 characters".to_owned(),
            ));
        }
        let message = match note {
            Some(note) => format!("resolved by hand: {note}"),
            None => "resolved by hand".to_owned(),
        };
        let event = Event::Recovered {
            by: Recovery::Person,
            actor: actor.clone(),
            message: message.clone(),
        };
        let now = Timestamp::now();
        let (stored, _) = self.decide(id, None, actor, "resolve", &event).await?;
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::IncidentResolved {
                incident: &stored,
                message: &message,
            },
            now,
        )
        .await?;
        Ok(stored)
    }

    /// Whether automatic execution is paused.
    pub async fn paused(&self) -> Result<bool, ServiceError> {
        Ok(self.store.control().await?.paused)
    }

    /// Pauses or resumes automatic execution (admins), atomically in the store and audited
    /// once: `false` when it already was so (nothing changed, nothing audited).
    pub async fn set_paused(&self, paused: bool, actor: &Actor) -> Result<bool, ServiceError> {
        require(
            actor,
            crate::domain::Role::Admin,
            "pausing or resuming automation",
        )?;
        let now = Timestamp::now();
        let changed = self
            .store
            .switch_paused(paused, &actor.to_string(), now)
            .await?;
        if changed.is_none() {
            return Ok(false);
        }
        let event = if paused {
            AuditEvent::AutomationPaused
        } else {
            AuditEvent::AutomationResumed
        };
        audit::emit(self.store.as_ref(), actor, event, now).await?;
        Ok(true)
    }

    /// One page of the audit trail (entries after `after`, at most `limit`) and the check of
    /// the whole chain, truncation included.
    pub async fn audit(&self, after: u64, limit: usize) -> Result<AuditReport, ServiceError> {
        Ok(audit::read(self.store.as_ref(), after, limit).await?)
    }

    /// Applies external alerts, already parsed and checked as a whole.
    pub async fn apply_alerts(
        &self,
        updates: Vec<crate::domain::AlertUpdate>,
    ) -> Result<AlertsOutcome, ServiceError> {
        use crate::domain::AlertUpdate;
        let mut outcome = AlertsOutcome::default();
        for update in updates {
            let now = Timestamp::now();
            match update {
                AlertUpdate::Firing(detection) => {
                    match intake::open_or_update(self.store.as_ref(), &detection, now).await? {
                        Intake::Opened(incident) => {
                            self.opened(&incident);
                            outcome.opened += 1
                        }
                        Intake::Updated(_) => outcome.updated += 1,
                        Intake::Silenced(_) => outcome.silenced += 1,
                    }
                }
                AlertUpdate::Resolved {
                    fingerprint,
                    summary,
                } => {
                    let message = format!("resolved by its source: {summary}");
                    let resolved = intake::resolve(
                        self.store.as_ref(),
                        &fingerprint,
                        Recovery::AlertSource,
                        &Actor::Sentinel,
                        &message,
                        now,
                    )
                    .await?;
                    match resolved {
                        Some(i) if i.status == crate::domain::Status::Resolved => {
                            outcome.resolved += 1
                        }
                        Some(_) => outcome.noted += 1,
                        None => outcome.ignored += 1,
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Silences a fingerprint (`signal:resource`) or every signal of a resource.
    pub async fn silence(
        &self,
        target: &str,
        length: std::time::Duration,
        reason: &str,
        actor: &Actor,
    ) -> Result<Silence, ServiceError> {
        let target = target.trim();
        if target.is_empty() || target.chars().count() > 200 || target.contains(char::is_control) {
            return Err(ServiceError::Invalid(
                "the target must be a fingerprint (signal:resource) or a resource".to_owned(),
            ));
        }
        if length.is_zero() || length > MAX_SILENCE {
            return Err(ServiceError::Invalid(
                "a silence lasts between 1 second and 30 days".to_owned(),
            ));
        }
        if reason.chars().count() > 500 {
            return Err(ServiceError::Invalid(
                "the reason is longer than 500 characters".to_owned(),
            ));
        }
        let now = Timestamp::now();
        let silence = Silence {
            id: format!(
                "sil-{}",
                IncidentId::generate().as_str().trim_start_matches("inc-")
            ),
            target: SilenceTarget::parse(target),
            created_by: actor.id(),
            created_at: now,
            ends_at: now.saturating_add(length),
            reason: reason.to_owned(),
        };
        self.store.add_silence(&silence).await?;
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::SilenceCreated { silence: &silence },
            now,
        )
        .await?;
        Ok(silence)
    }

    pub async fn silences(&self) -> Result<Vec<Silence>, ServiceError> {
        Ok(self.store.active_silences(Timestamp::now()).await?)
    }

    /// Ends a silence now.
    pub async fn unsilence(&self, id: &str, actor: &Actor) -> Result<(), ServiceError> {
        let now = Timestamp::now();
        if !self.store.expire_silence(id, now).await? {
            return Err(ServiceError::NotFound(format!("silence {id}")));
        }
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::SilenceExpired { id },
            now,
        )
        .await?;
        Ok(())
    }

    /// Records a refused decision in the audit log and returns the error to answer with.
    async fn refused(
        &self,
        incident: Incident,
        actor: &Actor,
        decision: &str,
        error: DecisionError,
    ) -> ServiceError {
        let why = error.to_string();
        let audited = self
            .refusals
            .refused(&self.store, actor, incident, decision, &why)
            .await;
        if let Err(e) = audited {
            return e.into();
        }
        error.into()
    }
}

fn not_found(id: &IncidentId) -> ServiceError {
    ServiceError::NotFound(format!("incident {id}"))
}

/// Refuses `actor` unless their role allows `needed` (Sentinel itself acts under policy).
/// Demo scenarios (SPEC §12.2, `crate::service::demo`): admins set up a real, harmless situation and
/// reset it. Kept in a block of its own.
impl Sentinel {
    /// Sets up a demo scenario, or resets them all (`DemoScenario::Reset`: see
    /// [`Self::demo_reset`]). Audited as `DemoStaged`.
    #[tracing::instrument(name = "demo", skip_all, fields(scenario = %scenario, actor = %actor))]
    pub async fn demo(
        &self,
        scenario: crate::service::demo::DemoScenario,
        actor: &Actor,
    ) -> Result<crate::service::demo::DemoReport, crate::service::demo::DemoError> {
        require(actor, crate::domain::Role::Admin, "running a demo scenario")?;
        if scenario == crate::service::demo::DemoScenario::Reset {
            return self.demo_reset(actor).await;
        }
        let report = crate::service::demo::Demo::new(&self.settings)
            .make(scenario)
            .await?;
        self.audit_demo(scenario, &report, actor).await?;
        tracing::info!(%scenario, "demo scenario set up");
        Ok(report)
    }

    /// Resolves (step `reset`) the open incidents the demo caused and every open test
    /// alert, removes the demo containers and files, then resolves again whatever the monitor
    /// opened for them meanwhile: resolving first means the monitor never gets to call a
    /// removed container "recovered" before the reset says what happened. An incident whose
    /// fix is running is left to finish, and the report says so.
    /// Waits until a monitor cycle that started after now has ended, so whatever a cycle
    /// running meanwhile saw (a demo container killed on its way out) has been opened by
    /// then. Bounded: at most two intervals and 5 s, 15 s in all; at once where this replica
    /// runs no monitor loop.
    async fn wait_for_a_cycle_after_now(&self) {
        if !self.settings.monitor.enabled {
            return;
        }
        let mut cycles = self.readings.watch_cycles();
        let start = *cycles.borrow_and_update();
        let bound = (self.settings.interval.0 * 2 + std::time::Duration::from_secs(5))
            .min(std::time::Duration::from_secs(15));
        let _ = tokio::time::timeout(bound, async {
            // The cycle running now may have begun before the removal: wait for the next one.
            while cycles.borrow().wrapping_sub(start) < 2 {
                if cycles.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    async fn demo_reset(
        &self,
        actor: &Actor,
    ) -> Result<crate::service::demo::DemoReport, crate::service::demo::DemoError> {
        let demo = crate::service::demo::Demo::new(&self.settings);
        let names = demo.container_names();
        let mut resolved = Vec::new();
        let mut left_running = Vec::new();
        let message = format!("demo reset: removing {}", names.join(" and "));
        self.reset_incidents(
            &names,
            false,
            &message,
            actor,
            &mut resolved,
            &mut left_running,
        )
        .await?;
        let mut report = demo.remove_all().await?;
        self.wait_for_a_cycle_after_now().await;
        let message = format!("demo reset: {}", report.message);
        self.reset_incidents(
            &names,
            report.files > 0,
            &message,
            actor,
            &mut resolved,
            &mut left_running,
        )
        .await?;
        left_running.retain(|id| !resolved.contains(id));
        left_running.dedup();
        report.resolved = resolved.iter().map(ToString::to_string).collect();
        if !report.resolved.is_empty() {
            report
                .message
                .push_str(&format!("; resolved {}", report.resolved.join(", ")));
        }
        if !left_running.is_empty() {
            let ids: Vec<String> = left_running.iter().map(ToString::to_string).collect();
            report.message.push_str(&format!(
                "; left open while their fix runs: {}",
                ids.join(", ")
            ));
        }
        self.audit_demo(crate::service::demo::DemoScenario::Reset, &report, actor)
            .await?;
        tracing::info!(resolved = report.resolved.len(), "demo reset");
        Ok(report)
    }

    /// One pass of [`Self::demo_reset`]: resolves the open incidents of the demo containers,
    /// of the sandbox (when `sandbox` says demo files were removed) and every test alert.
    async fn reset_incidents(
        &self,
        names: &[String],
        sandbox: bool,
        message: &str,
        actor: &Actor,
        resolved: &mut Vec<IncidentId>,
        left_running: &mut Vec<IncidentId>,
    ) -> Result<(), ServiceError> {
        use crate::domain::Signal;
        let open = self
            .store
            .list_incidents(IncidentQuery {
                open_only: true,
                limit: 10_000,
            })
            .await?;
        for incident in open {
            let demo_container = matches!(
                incident.signal,
                Signal::ContainerDown | Signal::ContainerMemory
            ) && names.iter().any(|n| n == incident.resource.as_str());
            let demo_sandbox =
                sandbox && incident.signal == Signal::SandboxSize && !incident.synthetic;
            if !(demo_container || demo_sandbox || incident.synthetic) {
                continue;
            }
            let message = if incident.synthetic {
                "demo reset: test alert closed".to_owned()
            } else {
                message.to_owned()
            };
            let event = Event::Recovered {
                by: Recovery::Reset,
                actor: actor.clone(),
                message: message.clone(),
            };
            let now = Timestamp::now();
            let id = incident.id.clone();
            match remediate::step(self.store.as_ref(), &id, Some(incident), &event, now).await? {
                Some(Stepped::Moved { stored, .. }) => {
                    audit::emit(
                        self.store.as_ref(),
                        actor,
                        AuditEvent::IncidentResolved {
                            incident: &stored,
                            message: &message,
                        },
                        now,
                    )
                    .await?;
                    resolved.push(stored.id);
                }
                Some(Stepped::Refused { incident, .. }) => left_running.push(incident.id),
                Some(Stepped::Unchanged { .. }) | None => {}
            }
        }
        Ok(())
    }

    async fn audit_demo(
        &self,
        scenario: crate::service::demo::DemoScenario,
        report: &crate::service::demo::DemoReport,
        actor: &Actor,
    ) -> Result<(), ServiceError> {
        let event = AuditEvent::DemoStaged {
            scenario: scenario.as_str(),
            report: serde_json::to_value(report).unwrap_or_default(),
        };
        audit::emit(self.store.as_ref(), actor, event, Timestamp::now()).await?;
        Ok(())
    }
}

/// The veto window (SPEC §12.4): a scheduled low-risk fix is stopped by anyone with a role,
/// or run at once by an operator. Kept in a block of its own.
impl Sentinel {
    /// Stops a scheduled fix before its veto window ends: `rejected` with the reason
    /// "stopped", audited as `ApprovalRejected` with the stopper; nothing runs. Racing a Run
    /// now or the window's end, exactly one of them is stored (compare-and-set, the engine
    /// deciding again on the fresh incident); the others get 409.
    #[tracing::instrument(name = "stop", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn stop(&self, id: &IncidentId, actor: &Actor) -> Result<Incident, ServiceError> {
        self.stop_from(id, None, actor).await
    }

    /// [`stop`](Self::stop), starting from `seen`, the incident as the caller just read it.
    pub async fn stop_seen(&self, seen: Incident, actor: &Actor) -> Result<Incident, ServiceError> {
        let id = seen.id.clone();
        self.stop_from(&id, Some(seen), actor).await
    }

    async fn stop_from(
        &self,
        id: &IncidentId,
        seen: Option<Incident>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        let now = Timestamp::now();
        let event = Event::Stop {
            actor: actor.clone(),
        };
        let (stored, _) = self.decide(id, seen, actor, "stop", &event).await?;
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::ApprovalRejected {
                incident: &stored,
                reason: Some("stopped"),
            },
            now,
        )
        .await?;
        Ok(stored)
    }

    /// Runs a scheduled fix now instead of at the end of its veto window (operators),
    /// pinned to `proposal` when given; audited as `ApprovalGranted` by the person. The fix
    /// executes in the background, on the same path as an approval.
    #[tracing::instrument(name = "run_now", skip_all, fields(incident = %id, actor = %actor))]
    pub async fn run_now(
        &self,
        id: &IncidentId,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        self.run_now_from(id, None, proposal, actor).await
    }

    /// [`run_now`](Self::run_now), starting from `seen`.
    pub async fn run_now_seen(
        &self,
        seen: Incident,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        let id = seen.id.clone();
        self.run_now_from(&id, Some(seen), proposal, actor).await
    }

    async fn run_now_from(
        &self,
        id: &IncidentId,
        seen: Option<Incident>,
        proposal: Option<&str>,
        actor: &Actor,
    ) -> Result<Incident, ServiceError> {
        let now = Timestamp::now();
        let event = Event::RunNow {
            actor: actor.clone(),
            proposal: proposal.map(str::to_owned),
        };
        let (stored, effects) = self.decide(id, seen, actor, "run now", &event).await?;
        audit::emit(
            self.store.as_ref(),
            actor,
            AuditEvent::ApprovalGranted { incident: &stored },
            now,
        )
        .await?;
        for effect in effects {
            if let Effect::Execute(action) = effect {
                self.enqueue(Job::Execute(action));
            }
        }
        Ok(stored)
    }
}

fn require(actor: &Actor, needed: crate::domain::Role, what: &str) -> Result<(), ServiceError> {
    match actor.role() {
        Some(has) if !has.allows(needed) => Err(ServiceError::Forbidden(format!(
            "{what} needs the {needed} role; you are {has}"
        ))),
        _ => Ok(()),
    }
}

/// The LLM analyzer when `Settings::analyzer_choice` picks it; `None` (rules only) otherwise.
fn build_llm(settings: &Settings) -> Option<LlmAnalyzer> {
    LlmAnalyzer::from_settings(settings)
        .map_err(|e| tracing::warn!(error = %e, "cannot build the LLM analyzer: using the rules"))
        .ok()
        .flatten()
}
