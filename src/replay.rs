//! `sentinel replay` (SPEC §12.4): what the policy would decide for each stored incident under
//! a configuration, next to what it decided then.
//!
//! In: the stored incidents and audit log ([`History`], read by [`load`] without writing
//! anything: the embedded file opened read-only, or Redis read with plain reads), the
//! settings, and how far back to look. Out: a [`Report`], one [`Line`] per incident and a
//! total, worded for people.
//!
//! Replay takes the facts as they were when the policy decided (the analyzer's assessment,
//! whether the target was protected or had changed just before, the pause switch, the
//! automatic actions already spent that hour, whether the fix was trusted: the `policy`
//! facts of each `ActionProposed` audit entry) and applies this configuration's rules to them (`mode`, the budget, the memory-limit
//! factor). What happened then comes from the decision's own audit entries. Pure apart from
//! [`load`].

use std::fmt::Write as _;

use serde_json::Value;

use crate::config::Settings;
use crate::domain::{AuditEntry, Incident, ProposedAction, Risk, Timestamp};
use crate::pipeline::policy::{self, PolicyInput, Verdict};

/// What replay reads.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub incidents: Vec<Incident>,
    pub audit: Vec<AuditEntry>,
}

/// Reads the store the settings name, writing nothing: `REDIS_URL` (plain reads, no scripts,
/// no leases) or the embedded file under the data directory, opened read-only. A running
/// server's embedded file is refused with what to do instead.
pub async fn load(settings: &Settings) -> anyhow::Result<History> {
    use crate::store::Store;
    use anyhow::Context;
    use secrecy::ExposeSecret;
    match &settings.secrets.redis_url {
        Some(url) => {
            let store = crate::store::redis::RedisStore::connect(
                url.expose_secret(),
                &settings.store.redis_prefix,
            )
            .await
            .context("cannot connect to Redis (REDIS_URL)")?;
            let incidents = store
                .list_incidents(crate::store::IncidentQuery {
                    open_only: false,
                    limit: usize::MAX,
                })
                .await?;
            let audit = store.list_audit().await?;
            Ok(History { incidents, audit })
        }
        None => {
            let path = settings.data_dir.join("sentinel.redb");
            let (incidents, audit) =
                tokio::task::spawn_blocking(move || crate::store::embedded::read_history(&path))
                    .await??;
            Ok(History { incidents, audit })
        }
    }
}

/// A decision, reduced to what replay compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No fix was proposed (the incident closed before analysis, or it is being analyzed).
    Undecided,
    Automatic,
    /// Waited for a person of this role (`operator`, `admin`).
    Approval(String),
    NotifyOnly,
    DryRun,
}

impl Outcome {
    fn of(verdict: &Verdict) -> Outcome {
        match verdict {
            Verdict::Automatic(_) => Outcome::Automatic,
            Verdict::NeedsApproval { role, .. } => Outcome::Approval(role.to_string()),
            Verdict::NotifyOnly => Outcome::NotifyOnly,
            Verdict::DryRun { .. } => Outcome::DryRun,
        }
    }

    fn then_words(&self) -> String {
        match self {
            Outcome::Undecided => "no fix was proposed".to_owned(),
            Outcome::Automatic => "ran automatically".to_owned(),
            Outcome::Approval(role) => format!("waited for {} {role}'s approval", article(role)),
            Outcome::NotifyOnly => "people were notified (nothing to run)".to_owned(),
            Outcome::DryRun => "was only described (dry run)".to_owned(),
        }
    }

    fn now_words(&self) -> String {
        match self {
            Outcome::Undecided => "nothing to decide".to_owned(),
            Outcome::Automatic => "would run automatically".to_owned(),
            Outcome::Approval(role) => {
                format!("would wait for {} {role}'s approval", article(role))
            }
            Outcome::NotifyOnly => "would notify people (nothing to run)".to_owned(),
            Outcome::DryRun => "would only be described (dry run)".to_owned(),
        }
    }

    /// How the total groups the differences: "would wait for approval", ….
    fn group(&self) -> &'static str {
        match self {
            Outcome::Undecided => "would decide nothing",
            Outcome::Automatic => "would run automatically",
            Outcome::Approval(_) => "would wait for approval",
            Outcome::NotifyOnly => "would only notify",
            Outcome::DryRun => "would be a dry run",
        }
    }
}

fn article(role: &str) -> &'static str {
    if role.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// One incident: what happened then, what would happen now.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub incident: String,
    pub signal: String,
    pub resource: String,
    pub then: Outcome,
    pub then_risk: Option<Risk>,
    pub now: Outcome,
    pub now_risk: Option<Risk>,
    /// Why it would wait now (the breaker, the pause, the mode, the risk), when it would.
    pub why: Option<String>,
    pub trust_applied: bool,
    /// The decision's facts were not recorded (history from before replay): approximated
    /// from the incident.
    pub approximated: bool,
}

impl Line {
    pub fn same(&self) -> bool {
        self.then == self.now && self.then_risk == self.now_risk
    }

    /// `inc-… container_down on web-1: then …; now … — same`.
    pub fn to_text(&self) -> String {
        let risk = |risk: Option<Risk>| risk.map(|r| format!(" ({r} risk")).unwrap_or_default();
        let close = |risk: Option<Risk>| if risk.is_some() { ")" } else { "" };
        let mut text = format!(
            "{} {} on {}: then {}{}{}; now {}{}{}",
            self.incident,
            self.signal,
            self.resource,
            self.then.then_words(),
            risk(self.then_risk),
            close(self.then_risk),
            self.now.now_words(),
            risk(self.now_risk),
            if self.trust_applied { ", trusted" } else { "" },
        );
        text.push_str(close(self.now_risk));
        if let Some(why) = self.why.as_ref().filter(|_| !self.same()) {
            let _ = write!(text, ": {why}");
        }
        if self.approximated {
            text.push_str(" [facts approximated: decided before they were recorded]");
        }
        text.push_str(if self.same() {
            " — same"
        } else {
            " — different"
        });
        text
    }
}

/// Every line and the total.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mode: &'static str,
    pub lines: Vec<Line>,
}

impl Report {
    /// "12 incidents: 9 same, 3 different: 2 would wait for approval, 1 would run
    /// automatically".
    pub fn total(&self) -> String {
        let count = self.lines.len();
        let same = self.lines.iter().filter(|l| l.same()).count();
        let different = count - same;
        let mut text = format!(
            "{count} {}: {same} same, {different} different",
            if count == 1 { "incident" } else { "incidents" }
        );
        let mut groups: Vec<(&str, usize)> = Vec::new();
        for line in self.lines.iter().filter(|l| !l.same()) {
            match groups.iter_mut().find(|(g, _)| *g == line.now.group()) {
                Some((_, n)) => *n += 1,
                None => groups.push((line.now.group(), 1)),
            }
        }
        groups.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        if !groups.is_empty() {
            let parts: Vec<String> = groups.iter().map(|(g, n)| format!("{n} {g}")).collect();
            let _ = write!(text, ": {}", parts.join(", "));
        }
        text
    }
}

/// Replays every incident opened at or after `since`, oldest first, under `settings`.
pub fn replay(history: &History, settings: &Settings, since: Timestamp) -> Report {
    let mut incidents: Vec<&Incident> = history
        .incidents
        .iter()
        .filter(|incident| incident.opened_at >= since)
        .collect();
    incidents.sort_by(|a, b| (a.opened_at, a.id.as_str()).cmp(&(b.opened_at, b.id.as_str())));
    let lines = incidents
        .into_iter()
        .map(|incident| line(incident, &history.audit, settings))
        .collect();
    Report {
        mode: settings.mode.as_str(),
        lines,
    }
}

fn for_incident<'a>(
    audit: &'a [AuditEntry],
    incident: &'a Incident,
) -> impl Iterator<Item = &'a AuditEntry> {
    audit
        .iter()
        .filter(move |entry| entry.record.incident.as_ref() == Some(&incident.id))
}

fn line(incident: &Incident, audit: &[AuditEntry], settings: &Settings) -> Line {
    let mut line = Line {
        incident: incident.id.to_string(),
        signal: incident.signal.to_string(),
        resource: incident.resource.to_string(),
        then: Outcome::Undecided,
        then_risk: None,
        now: Outcome::Undecided,
        now_risk: None,
        why: None,
        trust_applied: false,
        approximated: false,
    };
    // The policy's latest decision on this incident.
    let Some(proposed) = for_incident(audit, incident)
        .filter(|e| e.record.event == "ActionProposed")
        .last()
    else {
        return line;
    };
    let details = &proposed.record.details;
    let action: Option<ProposedAction> =
        serde_json::from_value(details["proposed_action"].clone()).ok();
    let Some(plan) = action.and_then(|a| a.plan().ok()) else {
        return line;
    };
    line.then_risk = serde_json::from_value(details["risk"].clone()).ok();
    line.then = then_outcome(incident, audit, proposed.seq, &plan);
    let facts = &details["policy"];
    line.approximated = facts.is_null();
    let flag = |name: &str| facts[name].as_bool().unwrap_or(false);
    let input = PolicyInput {
        plan: &plan,
        // Before the facts were recorded: the final risk then stands in for the assessment,
        // which gives the same risk under the same rules.
        assessed: serde_json::from_value(facts["assessed"].clone())
            .ok()
            .or(line.then_risk)
            .unwrap_or(Risk::Low),
        protected: flag("protected"),
        mode: settings.mode,
        paused: flag("paused"),
        recent_automatic: facts["recent_automatic"].as_u64().unwrap_or(0),
        budget_per_hour: settings.actions.auto_budget_per_hour,
        max_memory_factor: settings.actions.memory_limit_max_factor,
        trusted: matches!(&facts["trusted"], Value::String(_)),
        // Recorded since recent changes were read; before, the incident's own list.
        changed: facts["changed"]
            .as_bool()
            .unwrap_or(!incident.changes.is_empty()),
    };
    let decision = policy::decide(&input);
    line.now = Outcome::of(&decision.verdict);
    line.now_risk = Some(decision.risk);
    line.trust_applied = decision.trust_applied;
    line.why = match &decision.verdict {
        Verdict::NeedsApproval { why, .. } => Some(why.clone()),
        _ => None,
    };
    line
}

/// What the policy's decision `seq` led to, from the audit entries after it.
fn then_outcome(
    incident: &Incident,
    audit: &[AuditEntry],
    seq: u64,
    plan: &crate::domain::ActionPlan,
) -> Outcome {
    let next = for_incident(audit, incident).find(|e| {
        e.seq > seq
            && (e.record.event == "ApprovalRequested"
                || e.record.event == "IncidentEscalated"
                || (e.record.event == "ApprovalGranted" && e.record.actor == "sentinel"))
    });
    match next {
        Some(e) if e.record.event == "ApprovalGranted" => Outcome::Automatic,
        Some(e) if e.record.event == "ApprovalRequested" => Outcome::Approval(
            e.record.details["role"]
                .as_str()
                .unwrap_or("operator")
                .to_owned(),
        ),
        Some(_) if plan.action() == crate::domain::ActionId::NotifyOnly => Outcome::NotifyOnly,
        Some(_) => Outcome::DryRun,
        None => Outcome::Undecided,
    }
}
