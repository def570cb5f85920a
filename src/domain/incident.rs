//! The incident: what was detected, what Sentinel thinks and does about it, and its timeline.
//!
//! `Status` is the state machine of SPEC §1. The only way to change an incident's status is
//! [`Incident::transition`], which refuses every move not in [`Status::successors`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::{
    Change, EvidenceItem, Fingerprint, IncidentId, ProposedAction, Resource, Risk, Severity,
    Signal, Source, TargetState, Timestamp,
};

/// Where an incident is in the loop (SPEC §11 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Detected,
    Analyzing,
    /// A low-risk fix the policy allowed waits out the veto window (`[actions] veto_window`)
    /// until `scheduled_for`: anyone with a role may stop it, an operator may run it now.
    Scheduled,
    AwaitingApproval,
    Approved,
    Rejected,
    Executing,
    Verifying,
    Resolved,
    RolledBack,
    Escalated,
    Failed,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Detected,
        Status::Analyzing,
        Status::Scheduled,
        Status::AwaitingApproval,
        Status::Approved,
        Status::Rejected,
        Status::Executing,
        Status::Verifying,
        Status::Resolved,
        Status::RolledBack,
        Status::Escalated,
        Status::Failed,
    ];

    /// For people (the page, messages): `awaiting approval`, `rolled back`. APIs and JSON keep
    /// [`Status::as_str`].
    pub fn words(self) -> &'static str {
        match self {
            Status::Detected => "detected",
            Status::Analyzing => "analyzing",
            Status::Scheduled => "scheduled",
            Status::AwaitingApproval => "awaiting approval",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Executing => "executing",
            Status::Verifying => "verifying",
            Status::Resolved => "resolved",
            Status::RolledBack => "rolled back",
            Status::Escalated => "escalated",
            Status::Failed => "failed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Detected => "detected",
            Status::Analyzing => "analyzing",
            Status::Scheduled => "scheduled",
            Status::AwaitingApproval => "awaiting_approval",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Executing => "executing",
            Status::Verifying => "verifying",
            Status::Resolved => "resolved",
            Status::RolledBack => "rolled_back",
            Status::Escalated => "escalated",
            Status::Failed => "failed",
        }
    }

    /// The statuses an incident may move to from this one.
    ///
    /// Any open incident whose signal clears may resolve ("recovered without action"), except
    /// while an action is running: then verification decides. A resolved incident can only be
    /// rolled back (an admin undoing an executed fix), which reopens it.
    pub fn successors(self) -> &'static [Status] {
        use Status::*;
        match self {
            Detected => &[Analyzing, Resolved],
            Analyzing => &[
                Scheduled,
                AwaitingApproval,
                Approved,
                Escalated,
                Failed,
                Resolved,
            ],
            // Run when the window ends or an operator says so, stopped by a person, waiting
            // for approval when automation was paused meanwhile, or recovered on its own.
            Scheduled => &[Approved, Rejected, AwaitingApproval, Resolved],
            AwaitingApproval => &[Approved, Rejected, Escalated, Resolved],
            // Back to awaiting approval when the target changed since the approval.
            Approved => &[Executing, AwaitingApproval, Resolved],
            Rejected => &[Escalated, Resolved],
            Executing => &[Verifying, Failed],
            Verifying => &[Resolved, RolledBack, Escalated],
            Resolved => &[RolledBack],
            RolledBack => &[Escalated, Resolved],
            Escalated => &[Resolved],
            Failed => &[Escalated, Resolved],
        }
    }

    pub fn can_transition_to(self, to: Status) -> bool {
        self.successors().contains(&to)
    }

    /// Open means a person may still need to look at it. Only `resolved` is closed.
    pub fn is_open(self) -> bool {
        self != Status::Resolved
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for Status {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("incident cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: Status,
    pub to: Status,
}

/// One line of an incident's history; each becomes a reply in the Slack thread.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub at: Timestamp,
    /// What happened, in snake_case: a status name or a step such as `observed`.
    pub step: String,
    /// `sentinel`, or who acted: `api:ci-bot (operator)`, `slack:U123 (admin)`.
    pub actor: String,
    pub message: String,
}

/// A threshold breach or an external alert, ready to open or update an incident.
/// Produced by detection, by `trigger-alert` and by the alert webhooks alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub signal: Signal,
    pub resource: Resource,
    pub severity: Severity,
    pub value: f64,
    pub threshold: f64,
    pub source: Source,
    /// One human sentence: what was seen.
    pub summary: String,
    /// Extra key/values (alert labels, the inputs of a computed value).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Detection {
    /// A test alert's (`trigger`) is its own, `test:signal:resource`: a real breach never
    /// folds into a made-up incident, and a test alert never into a real one.
    pub fn fingerprint(&self) -> Fingerprint {
        if self.is_synthetic() {
            Fingerprint::test_alert(self.signal, &self.resource)
        } else {
            Fingerprint::new(self.signal, &self.resource)
        }
    }

    /// Made up on purpose (`trigger`), not seen on a real target.
    pub fn is_synthetic(&self) -> bool {
        self.source == Source::Trigger
    }
}

/// What one external alert asks for (an Alertmanager alert, a generic JSON alert): open or
/// update an incident, or resolve the one of that fingerprint.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertUpdate {
    Firing(Detection),
    Resolved {
        fingerprint: Fingerprint,
        summary: String,
    },
}

/// The incident JSON of SPEC §11, plus a few additive fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    pub id: IncidentId,
    pub fingerprint: Fingerprint,
    pub signal: Signal,
    pub resource: Resource,
    pub severity: Severity,
    pub status: Status,
    pub value: f64,
    pub threshold: f64,
    pub risk: Option<Risk>,
    pub proposed_action: Option<ProposedAction>,
    pub root_cause: Option<String>,
    pub confidence: Option<f64>,
    pub analyzer: Option<String>,
    pub opened_at: Timestamp,
    pub updated_at: Timestamp,
    /// Bumped by every write; approvals and updates are compare-and-set on it.
    pub version: u64,
    pub timeline: Vec<TimelineEntry>,
    // Additive fields.
    pub source: Source,
    pub summary: String,
    /// How many times the breach was observed while this incident was open.
    pub occurrences: u64,
    pub last_seen_at: Timestamp,
    pub resolved_at: Option<Timestamp>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The facts the analysis had, each with an id (`metric-1`, `change-2`, …); stored
    /// incidents from before ids read as `fact-<n>` items.
    #[serde(
        default,
        deserialize_with = "crate::domain::evidence::deserialize_evidence"
    )]
    pub evidence: Vec<EvidenceItem>,
    /// The ids of the `evidence` items the root cause relies on, as the analyzer cited them.
    #[serde(default)]
    pub evidence_cited: Vec<String>,
    /// What Docker recorded on the target container in `[analyzer] change_window` before
    /// the incident opened (SPEC §12.4); empty when nothing changed or nothing could be read
    /// (the timeline says which).
    #[serde(default)]
    pub changes: Vec<Change>,
    /// What the proposed action would change, captured when it was proposed; an approval
    /// applies to this state only.
    #[serde(default)]
    pub snapshot: Option<TargetState>,
    /// People who approved the current proposal (`api:ci-bot (operator)`), in order.
    #[serde(default)]
    pub approvals: Vec<String>,
    /// The fix that ran, with what it changed.
    #[serde(default)]
    pub execution: Option<Execution>,
    /// The incident's Slack card once it is posted (`slack::cards` keeps it in step). Kept
    /// in a store record of its own ([`crate::store::Store::put_card`]) and filled in on
    /// read; writing the incident never changes it.
    #[serde(default)]
    pub slack: Option<SlackCard>,
    /// Names the current proposal: the action, its parameters and the snapshot they were
    /// made from. Approvals are pinned to it; it changes only when one of those changes.
    #[serde(default)]
    pub proposal_id: Option<String>,
    /// Made up on purpose (`trigger-alert`, `/sentinel trigger`), not seen on a real target.
    #[serde(default)]
    pub synthetic: bool,
    /// When a recovery (clean samples, the alert source, a person) arrived while a fix was
    /// running or being verified: recorded, and verification takes it into account.
    #[serde(default)]
    pub recovered_at: Option<Timestamp>,
    /// When a scheduled fix runs unless someone stops it (the end of the veto window). Set
    /// when the fix is scheduled and kept afterwards, as the record of the schedule.
    #[serde(default)]
    pub scheduled_for: Option<Timestamp>,
}

/// The observation half of an incident: the latest reading of its breach. Stored apart from
/// the decision, so a repeat of the same breach never bumps the incident's `version` (SPEC
/// §12.1): a card's buttons and an open reject dialog stay valid however long it persists.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sighting {
    pub value: f64,
    pub threshold: f64,
    /// How many times the breach was seen while the incident was open, the first included.
    pub occurrences: u64,
    pub last_seen_at: Timestamp,
}

/// Where an incident's Slack card is and how far its thread has got. Written only by the
/// card sync, with compare-and-set, so replicas never post a card or a reply twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackCard {
    pub channel: String,
    /// The card message's `ts`, the thread's parent; `None` when posting it failed for good.
    pub ts: Option<String>,
    /// How many timeline entries have their thread reply (or were given up on).
    pub posted_entries: usize,
    /// The incident version the card on screen was rendered from (its buttons carry it).
    #[serde(default)]
    pub rendered_version: u64,
    /// A digest of what the card on screen shows; a different digest means `chat.update`.
    #[serde(default)]
    pub digest: String,
    /// The last Slack error for this card (`chat.update: message_not_found`), if any.
    #[serde(default)]
    pub error: Option<String>,
    /// The card record's own compare-and-set counter (not the incident's version).
    #[serde(default)]
    pub rev: u64,
    /// When the card on screen was last drawn, and the occurrences it showed: value refreshes
    /// wait for `[slack] card_refresh`.
    #[serde(default)]
    pub drawn_at: Option<Timestamp>,
    #[serde(default)]
    pub drawn_occurrences: u64,
}

/// A fix that ran: what, who allowed it, and the state before and after.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    pub action: ProposedAction,
    /// `policy (auto, low risk)` or the people who approved.
    pub approved_by: String,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    pub before: TargetState,
    /// `None` (JSON `null`) until the fix finished.
    pub after: Option<TargetState>,
    /// Whether a rollback can undo it.
    pub reversible: bool,
    /// Set once rolled back.
    #[serde(default)]
    pub rolled_back_at: Option<Timestamp>,
    /// The intent, recorded before the side effect: the proposal this runs and the fencing
    /// token of the execution lease it ran under.
    #[serde(default)]
    pub proposal_id: Option<String>,
    #[serde(default)]
    pub fencing_token: Option<u64>,
    /// Set by the one compare-and-set that grants the rollback permit; while it is set and
    /// `rolled_back_at` is not, a rollback is under way (or was interrupted by a restart).
    #[serde(default)]
    pub rollback: Option<RollbackStart>,
}

/// Who started a rollback, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackStart {
    /// `sentinel` (verification failed) or the person who asked.
    pub by: String,
    pub at: Timestamp,
}

impl Execution {
    /// A rollback was granted and has not finished.
    pub fn rolling_back(&self) -> bool {
        self.rollback.is_some() && self.rolled_back_at.is_none()
    }
}

impl Incident {
    /// A new incident in `detected`, with its first timeline entry. Version 1.
    pub fn open(id: IncidentId, detection: &Detection, now: Timestamp) -> Self {
        Incident {
            id,
            fingerprint: detection.fingerprint(),
            signal: detection.signal,
            resource: detection.resource.clone(),
            severity: detection.severity,
            status: Status::Detected,
            value: detection.value,
            threshold: detection.threshold,
            risk: None,
            proposed_action: None,
            root_cause: None,
            confidence: None,
            analyzer: None,
            opened_at: now,
            updated_at: now,
            version: 1,
            timeline: vec![TimelineEntry {
                at: now,
                step: Status::Detected.as_str().to_owned(),
                actor: "sentinel".to_owned(),
                message: detection.summary.clone(),
            }],
            source: detection.source,
            summary: detection.summary.clone(),
            occurrences: 1,
            last_seen_at: now,
            resolved_at: None,
            labels: detection.labels.clone(),
            evidence: Vec::new(),
            evidence_cited: Vec::new(),
            changes: Vec::new(),
            snapshot: None,
            approvals: Vec::new(),
            execution: None,
            slack: None,
            proposal_id: None,
            synthetic: detection.is_synthetic(),
            recovered_at: None,
            scheduled_for: None,
        }
    }

    /// Makes `action`, on the target as `snapshot` shows it, the current proposal. Its
    /// [`proposal_id`] changes only when the action, its parameters or the snapshot do, and
    /// approvals given to another proposal are dropped.
    pub fn propose(&mut self, action: ProposedAction, snapshot: TargetState) {
        let id = proposal_id(&action, &snapshot);
        if self.proposal_id.as_deref() != Some(id.as_str()) {
            self.approvals.clear();
        }
        self.proposal_id = Some(id);
        self.proposed_action = Some(action);
        self.snapshot = Some(snapshot);
    }

    /// The observation half, as stored apart from the decision.
    pub fn sighting(&self) -> Sighting {
        Sighting {
            value: self.value,
            threshold: self.threshold,
            occurrences: self.occurrences,
            last_seen_at: self.last_seen_at,
        }
    }

    /// Shows `observation` as the latest reading (the store merges it in on every read).
    pub fn apply_sighting(&mut self, observation: &Sighting) {
        self.value = observation.value;
        self.threshold = observation.threshold;
        self.occurrences = observation.occurrences;
        self.last_seen_at = observation.last_seen_at;
    }

    pub fn is_open(&self) -> bool {
        self.status.is_open()
    }

    /// Moves to `to` if the state machine allows it, recording who did it and why.
    pub fn transition(
        &mut self,
        to: Status,
        actor: &str,
        message: impl Into<String>,
        now: Timestamp,
    ) -> Result<(), IllegalTransition> {
        if !self.status.can_transition_to(to) {
            return Err(IllegalTransition {
                from: self.status,
                to,
            });
        }
        self.status = to;
        self.resolved_at = (to == Status::Resolved).then_some(now);
        self.record(to.as_str(), actor, message, now);
        Ok(())
    }

    /// Appends a timeline entry that does not change the status.
    pub fn record(&mut self, step: &str, actor: &str, message: impl Into<String>, now: Timestamp) {
        self.timeline.push(TimelineEntry {
            at: now,
            step: step.to_owned(),
            actor: actor.to_owned(),
            message: message.into(),
        });
        self.updated_at = now;
    }

    /// For a `scheduled` incident, when its fix runs, in words from `now`: `in 42 s`,
    /// `in 3 min`, `any moment now` once the time has come. `None` at any other status.
    pub fn runs_in_words(&self, now: Timestamp) -> Option<String> {
        if self.status != Status::Scheduled {
            return None;
        }
        let due = self.scheduled_for?;
        let ms = due.unix_millis() - now.unix_millis();
        // Rounded up: a fix due in 400 ms is "in 1 s", never "in 0 s".
        let seconds = (ms + 999).div_euclid(1000);
        Some(match seconds {
            i64::MIN..=0 => "any moment now".to_owned(),
            1..=119 => format!("in {seconds} s"),
            120..=7199 => format!("in {} min", (seconds + 59) / 60),
            _ => format!("in {} h", (seconds + 3599) / 3600),
        })
    }

    /// The breach was seen again at a higher severity: a decision change (the card shows
    /// severity), recorded on the timeline. False when the severity did not rise. A mere
    /// repeat is a [`Sighting`], stored without touching the decision.
    pub fn raise_severity(&mut self, detection: &Detection, now: Timestamp) -> bool {
        if detection.severity <= self.severity {
            return false;
        }
        let message = format!(
            "severity raised from {} to {}: {}",
            self.severity, detection.severity, detection.summary
        );
        self.severity = detection.severity;
        self.record("escalated_severity", "sentinel", message, now);
        true
    }
}

/// The name of a proposal: `prop-` and a digest of the action, its parameters and the
/// snapshot it was made from (serde_json maps are sorted, so equal proposals digest equally).
pub fn proposal_id(action: &ProposedAction, snapshot: &TargetState) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::json!({ "action": action, "snapshot": snapshot }).to_string();
    let digest = Sha256::digest(text.as_bytes());
    format!("prop-{}", hex::encode(&digest[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The legal moves, written out independently of `successors` so a change to either
    /// shows up here.
    const LEGAL: &[(Status, Status)] = {
        use Status::*;
        &[
            (Detected, Analyzing),
            (Detected, Resolved),
            (Analyzing, Scheduled),
            (Analyzing, AwaitingApproval),
            (Analyzing, Approved),
            (Analyzing, Escalated),
            (Analyzing, Failed),
            (Analyzing, Resolved),
            (Scheduled, Approved),
            (Scheduled, Rejected),
            (Scheduled, AwaitingApproval),
            (Scheduled, Resolved),
            (AwaitingApproval, Approved),
            (AwaitingApproval, Rejected),
            (AwaitingApproval, Escalated),
            (AwaitingApproval, Resolved),
            (Approved, Executing),
            (Approved, AwaitingApproval),
            (Approved, Resolved),
            (Rejected, Escalated),
            (Rejected, Resolved),
            (Executing, Verifying),
            (Executing, Failed),
            (Verifying, Resolved),
            (Verifying, RolledBack),
            (Verifying, Escalated),
            (Resolved, RolledBack),
            (RolledBack, Escalated),
            (RolledBack, Resolved),
            (Escalated, Resolved),
            (Failed, Escalated),
            (Failed, Resolved),
        ]
    };

    fn detection() -> Detection {
        Detection {
            signal: Signal::HostMemory,
            resource: Resource::host(),
            severity: Severity::Warning,
            value: 72.0,
            threshold: 60.0,
            source: Source::Local,
            summary: "host memory 72.0 % ≥ 60 %".to_owned(),
            labels: BTreeMap::new(),
        }
    }

    #[test]
    fn every_pair_of_statuses_is_legal_exactly_when_listed() {
        let t0 = Timestamp::from_unix_millis(0);
        let mut checked = 0;
        for from in Status::ALL {
            for to in Status::ALL {
                let legal = LEGAL.contains(&(from, to));
                let mut incident = Incident::open(IncidentId::generate(), &detection(), t0);
                incident.status = from;
                let entries_before = incident.timeline.len();
                let result = incident.transition(to, "sentinel", "test", t0);
                if legal {
                    assert_eq!(result, Ok(()), "{from} -> {to} should be legal");
                    assert_eq!(incident.status, to);
                    assert_eq!(incident.timeline.len(), entries_before + 1);
                    assert_eq!(incident.timeline.last().unwrap().step, to.as_str());
                } else {
                    assert_eq!(
                        result,
                        Err(IllegalTransition { from, to }),
                        "{from} -> {to} should be illegal"
                    );
                    assert_eq!(incident.status, from, "an illegal move changes nothing");
                    assert_eq!(incident.timeline.len(), entries_before);
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 144);
    }

    #[test]
    fn only_resolved_is_closed() {
        for status in Status::ALL {
            assert_eq!(status.is_open(), status != Status::Resolved, "{status}");
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in Status::ALL {
            assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
    }

    #[test]
    fn a_new_incident_has_the_json_shape_of_the_spec() {
        let now = Timestamp::from_unix_millis(1_795_860_000_000);
        let incident = Incident::open(IncidentId::parse("inc-abc").unwrap(), &detection(), now);
        let json = serde_json::to_value(&incident).unwrap();
        for key in [
            "id",
            "fingerprint",
            "signal",
            "resource",
            "severity",
            "status",
            "value",
            "threshold",
            "risk",
            "proposed_action",
            "root_cause",
            "confidence",
            "analyzer",
            "opened_at",
            "updated_at",
            "version",
            "timeline",
        ] {
            assert!(json.get(key).is_some(), "missing {key}");
        }
        assert_eq!(json["fingerprint"], "host_memory:host");
        assert_eq!(json["status"], "detected");
        assert_eq!(json["opened_at"], "2026-11-28T10:00:00.000Z");
        assert_eq!(json["timeline"][0]["step"], "detected");
        assert_eq!(json["timeline"][0]["actor"], "sentinel");
        let back: Incident = serde_json::from_value(json).unwrap();
        assert_eq!(back, incident);
    }

    #[test]
    fn only_a_rise_in_severity_changes_the_decision() {
        let t0 = Timestamp::from_unix_millis(0);
        let mut incident = Incident::open(IncidentId::generate(), &detection(), t0);
        let mut again = detection();
        again.value = 75.0;
        assert!(!incident.raise_severity(&again, t0));
        assert_eq!(incident.timeline.len(), 1);
        again.severity = Severity::Critical;
        again.value = 95.0;
        assert!(incident.raise_severity(&again, t0));
        assert_eq!(incident.severity, Severity::Critical);
        assert_eq!(incident.timeline.len(), 2);
        assert!(
            !incident.raise_severity(&again, t0),
            "the same severity again is a repeat"
        );
    }

    #[test]
    fn a_scheduled_fix_says_when_it_runs_in_words() {
        let t0 = Timestamp::from_unix_millis(1_000_000);
        let mut incident = Incident::open(IncidentId::generate(), &detection(), t0);
        incident.scheduled_for = Some(Timestamp::from_unix_millis(1_042_000));
        assert_eq!(incident.runs_in_words(t0), None, "only while scheduled");
        incident.status = Status::Scheduled;
        let at = |ms| Timestamp::from_unix_millis(ms);
        for (now, words) in [
            (1_000_000, "in 42 s"),
            (1_041_600, "in 1 s"),
            (1_042_000, "any moment now"),
            (1_050_000, "any moment now"),
        ] {
            assert_eq!(incident.runs_in_words(at(now)).as_deref(), Some(words));
        }
        incident.scheduled_for = Some(at(1_000_000 + 600_000));
        assert_eq!(incident.runs_in_words(t0).as_deref(), Some("in 10 min"));
        incident.scheduled_for = Some(at(1_000_000 + 3 * 3_600_000));
        assert_eq!(incident.runs_in_words(t0).as_deref(), Some("in 3 h"));
    }

    #[test]
    fn an_observation_round_trips_through_the_incident() {
        let t0 = Timestamp::from_unix_millis(0);
        let mut incident = Incident::open(IncidentId::generate(), &detection(), t0);
        let seen = Sighting {
            value: 80.5,
            threshold: 60.0,
            occurrences: 7,
            last_seen_at: Timestamp::from_unix_millis(70_000),
        };
        incident.apply_sighting(&seen);
        assert_eq!(incident.sighting(), seen);
        assert_eq!(incident.version, 1, "an observation is not a decision");
    }
}
