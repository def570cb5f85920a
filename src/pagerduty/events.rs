//! What PagerDuty should hear about an incident, decided from the incident alone.
//!
//! In: an incident as stored, the record of what was already queued for it ([`Announced`]),
//! the severities that page and `now`. Out: a [`Plan`]: the events now due, in the order
//! they must be sent, and the record once they are queued. Then [`event`] turns each into
//! the Events API v2 body. Pure: no clock, no store, no network.
//!
//! - `trigger` (`dedup_key` = the incident id): an open incident that is escalated, or of a
//!   paging severity, and not paged yet. A repeat of the breach changes neither, so it never
//!   pages twice; a reopened incident (a resolved fix rolled back) may page again, and
//!   PagerDuty opens a new alert for the same key then.
//! - `resolve` (same key): the incident is resolved and its trigger was queued.
//! - change events: each timeline entry where a fix reached its target (`verifying`) or was
//!   rolled back (`rolled_back`), once.
//!
//! An incident first seen already closed pages nobody (it is history, not news); if it
//! closed within the last hour its fixes are still announced as changes.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::domain::{Incident, Severity, Status, Timestamp};

/// What was queued for one incident so far, kept in the store beside the queue
/// (`Store::outbox_push_marked`) and moved only together with the events it records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// A trigger is queued and no resolve after it: PagerDuty's alert is open.
    pub paging: bool,
    /// How many triggers were queued.
    pub triggers: u32,
    /// How many timeline entries were looked at for fixes and rollbacks.
    pub entries_seen: usize,
}

/// One event that is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Trigger,
    /// A change event for the timeline entry at this index.
    Change {
        entry: usize,
    },
    Resolve,
}

/// The events due now, in sending order, and the record once they are queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub due: Vec<Due>,
    pub announced: Announced,
}

/// How recently an incident first seen closed may have closed for its fixes to still be
/// announced.
pub const RECENTLY_CLOSED: Duration = Duration::from_secs(3600);

/// The steps that are changes PagerDuty hears of.
fn is_change(step: &str) -> bool {
    matches!(step, "verifying" | "rolled_back")
}

/// Whether the incident should page: open, and escalated or of a paging severity.
pub fn pages(incident: &Incident, severities: &[Severity]) -> bool {
    incident.is_open()
        && (incident.status == Status::Escalated || severities.contains(&incident.severity))
}

/// What is due for `incident`, given what was queued (`None`: nothing yet). `None` when
/// nothing is.
pub fn plan(
    incident: &Incident,
    announced: Option<&Announced>,
    severities: &[Severity],
    now: Timestamp,
) -> Option<Plan> {
    if announced.is_none() && !incident.is_open() {
        let recent = incident
            .resolved_at
            .is_some_and(|at| now.since(at) <= RECENTLY_CLOSED);
        if !recent {
            return None;
        }
    }
    let before = announced.cloned().unwrap_or_default();
    let mut after = before.clone();
    let mut due = Vec::new();
    let trigger = !before.paging && pages(incident, severities);
    // A page for the severity came first, when the incident opened; one for an escalation
    // comes after what led to it (a fix that did not help and its rollback).
    let escalation_only = !severities.contains(&incident.severity);
    if trigger && !escalation_only {
        due.push(Due::Trigger);
    }
    let start = before.entries_seen.min(incident.timeline.len());
    due.extend(
        incident.timeline[start..]
            .iter()
            .enumerate()
            .filter(|(_, entry)| is_change(&entry.step))
            .map(|(offset, _)| Due::Change {
                entry: start + offset,
            }),
    );
    if trigger && escalation_only {
        due.push(Due::Trigger);
    }
    if trigger {
        after.paging = true;
        after.triggers += 1;
    }
    if before.paging && !incident.is_open() {
        due.push(Due::Resolve);
        after.paging = false;
    }
    if due.is_empty() {
        return None;
    }
    after.entries_seen = incident.timeline.len();
    Some(Plan {
        due,
        announced: after,
    })
}

/// Which Events API endpoint an event goes to, below `events_url`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `enqueue`: triggers and resolves.
    Alert,
    /// `change/enqueue`.
    Change,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Alert => "enqueue",
            Endpoint::Change => "change/enqueue",
        }
    }
}

/// A queued event as stored: where it goes, for which incident, and its body without the
/// routing key (a secret, added when it is sent, so the store never holds it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Queued {
    pub endpoint: Endpoint,
    pub incident: String,
    /// `trigger`, `resolve` or `change`, for logs.
    pub kind: String,
    pub body: Value,
}

/// PagerDuty's limit on `payload.summary`.
const SUMMARY_MAX: usize = 1024;

/// The event for `due`, ready to queue. `public_url` is the status page's address ("" when
/// unset: no links).
pub fn event(incident: &Incident, due: Due, public_url: &str) -> Queued {
    let links = links(incident, public_url);
    let (endpoint, kind, mut body) = match due {
        Due::Trigger => (
            Endpoint::Alert,
            "trigger",
            json!({
                "event_action": "trigger",
                "dedup_key": incident.id.as_str(),
                "payload": {
                    "summary": trigger_summary(incident),
                    "source": source(incident),
                    "severity": severity(incident),
                    "timestamp": incident.opened_at,
                    "component": incident.resource.as_str(),
                    "group": incident.signal.as_str(),
                    "class": incident.signal.as_str(),
                    "custom_details": details(incident),
                },
                "client": "Sentinel",
            }),
        ),
        Due::Resolve => (
            Endpoint::Alert,
            "resolve",
            json!({
                "event_action": "resolve",
                "dedup_key": incident.id.as_str(),
            }),
        ),
        Due::Change { entry } => (Endpoint::Change, "change", change(incident, entry)),
    };
    if let Some(object) = body.as_object_mut() {
        if !links.is_empty() && kind != "resolve" {
            object.insert("links".to_owned(), Value::Array(links));
        }
        let url = public_url.trim().trim_end_matches('/');
        if kind == "trigger" && !url.is_empty() {
            object.insert("client_url".to_owned(), json!(url));
        }
    }
    Queued {
        endpoint,
        incident: incident.id.as_str().to_owned(),
        kind: kind.to_owned(),
        body,
    }
}

/// PagerDuty's `source`, "the unique location of the affected system": an external
/// alert's `instance` (or `host`) label when it has one, else the incident's resource.
fn source(incident: &Incident) -> &str {
    ["instance", "host"]
        .iter()
        .find_map(|key| incident.labels.get(*key).filter(|v| !v.trim().is_empty()))
        .map_or(incident.resource.as_str(), String::as_str)
}

/// PagerDuty's severity: Sentinel's, except that an escalated incident (a person is needed)
/// is at least `error`.
pub fn severity(incident: &Incident) -> &'static str {
    match incident.severity {
        Severity::Critical => "critical",
        _ if incident.status == Status::Escalated => "error",
        Severity::Warning => "warning",
        Severity::Info => "info",
    }
}

/// One line for the person paged: what is wrong where, and why Sentinel needs them.
pub fn trigger_summary(incident: &Incident) -> String {
    let test = if incident.synthetic {
        "Test alert: "
    } else {
        ""
    };
    let seen = strip_test_prefix(&incident.summary);
    let summary = if incident.status == Status::Escalated {
        let why = incident
            .timeline
            .iter()
            .rev()
            .find(|e| e.step == Status::Escalated.as_str())
            .map(|e| sentence(&e.message))
            .unwrap_or_default();
        format!(
            "{test}Sentinel needs a person for {}: {seen}. {why}",
            incident.resource
        )
    } else {
        format!(
            "{test}{} incident on {}: {seen}",
            capitalised(incident.severity.as_str()),
            incident.resource
        )
    };
    cut(summary.trim_end())
}

fn change(incident: &Incident, index: usize) -> Value {
    let entry = &incident.timeline[index];
    let action = incident
        .execution
        .as_ref()
        .map(|e| &e.action)
        .or(incident.proposed_action.as_ref());
    let action_name = action.map_or_else(|| "a fix".to_owned(), |a| a.action.to_string());
    let test = if incident.synthetic {
        "Test alert: "
    } else {
        ""
    };
    let what = if entry.step == "rolled_back" {
        format!(
            "{test}Sentinel rolled back {action_name} on {}",
            incident.resource
        )
    } else {
        format!("{test}Sentinel ran {action_name} on {}", incident.resource)
    };
    let summary = if entry.message.trim().is_empty() {
        what
    } else {
        format!("{what}: {}", entry.message.trim())
    };
    json!({
        "payload": {
            "summary": cut(&summary),
            "timestamp": entry.at,
            "source": source(incident),
            "custom_details": {
                "incident": incident.id.as_str(),
                "signal": incident.signal.as_str(),
                "step": entry.step,
                "by": entry.actor,
                "action": action.map(|a| a.action.to_string()),
                "params": action.map(|a| &a.params),
                "approved_by": incident.execution.as_ref().map(|e| &e.approved_by),
            },
        },
    })
}

fn details(incident: &Incident) -> Value {
    json!({
        "incident": incident.id.as_str(),
        "status": incident.status.as_str(),
        "signal": incident.signal.as_str(),
        "resource": incident.resource.as_str(),
        "severity": incident.severity.as_str(),
        "value": incident.value,
        "threshold": incident.threshold,
        "occurrences": incident.occurrences,
        "root_cause": incident.root_cause,
        "proposed_action": incident.proposed_action.as_ref().map(|a| a.action.to_string()),
        "risk": incident.risk,
        "test_alert": incident.synthetic,
        "labels": incident.labels,
    })
}

fn links(incident: &Incident, public_url: &str) -> Vec<Value> {
    let url = public_url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Vec::new();
    }
    vec![json!({
        "href": format!("{url}/#{}", incident.id),
        "text": format!("Incident {} on the Sentinel status page", incident.id),
    })]
}

fn strip_test_prefix(summary: &str) -> &str {
    let trimmed = summary.trim();
    match trimmed.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("test alert: ") => trimmed[12..].trim(),
        _ => trimmed,
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `message` as a sentence: capitalised, ending with a full stop.
fn sentence(message: &str) -> String {
    let message = message.trim();
    if message.is_empty() {
        return String::new();
    }
    let mut text = capitalised(message);
    if !text.ends_with(['.', '!', '?']) {
        text.push('.');
    }
    text
}

/// At most PagerDuty's 1024 characters, cut with an ellipsis.
fn cut(text: &str) -> String {
    if text.chars().count() <= SUMMARY_MAX {
        return text.to_owned();
    }
    text.chars().take(SUMMARY_MAX - 1).collect::<String>() + "…"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        ActionId, Detection, Execution, IncidentId, ProposedAction, Resource, Signal, Source,
    };

    const PAGING: &[Severity] = &[Severity::Critical];

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_795_860_000_000 + seconds * 1000)
    }

    fn incident(severity: Severity) -> Incident {
        let detection = Detection {
            signal: Signal::ContainerMemory,
            resource: Resource::parse("web-1").unwrap(),
            severity,
            value: 93.0,
            threshold: 90.0,
            source: Source::Docker,
            summary: "container_memory on web-1 is 93%, at or above 90%".to_owned(),
            labels: Default::default(),
        };
        Incident::open(IncidentId::parse("inc-abc").unwrap(), &detection, at(0))
    }

    fn go(incident: &mut Incident, to: Status, message: &str, when: i64) {
        incident
            .transition(to, "sentinel", message, at(when))
            .unwrap();
    }

    /// Queues what is due (as the watcher does) and returns it.
    fn queue(incident: &Incident, announced: &mut Option<Announced>, now: i64) -> Vec<Due> {
        match plan(incident, announced.as_ref(), PAGING, at(now)) {
            Some(plan) => {
                *announced = Some(plan.announced);
                plan.due
            }
            None => Vec::new(),
        }
    }

    fn executed(incident: &mut Incident) {
        incident.propose(
            ProposedAction {
                action: ActionId::ContainerRestart,
                params: [("container".to_owned(), json!("web-1"))].into(),
            },
            crate::domain::TargetState::nothing(),
        );
        go(incident, Status::Analyzing, "analyzing", 1);
        go(incident, Status::Approved, "approved", 2);
        incident.execution = Some(Execution {
            action: incident.proposed_action.clone().unwrap(),
            approved_by: "api:ci (operator)".to_owned(),
            started_at: at(3),
            finished_at: Some(at(4)),
            before: crate::domain::TargetState::nothing(),
            after: Some(crate::domain::TargetState::nothing()),
            reversible: true,
            rolled_back_at: None,
            proposal_id: None,
            fencing_token: None,
            rollback: None,
        });
        go(incident, Status::Executing, "running container_restart", 3);
        go(incident, Status::Verifying, "restarted web-1", 4);
    }

    #[test]
    fn a_critical_incident_pages_once_however_often_it_is_seen() {
        let mut incident = incident(Severity::Critical);
        let mut announced = None;
        assert_eq!(queue(&incident, &mut announced, 0), vec![Due::Trigger]);
        for n in 2..50 {
            // Repeats are sightings: occurrences, value, never a decision.
            incident.occurrences = n;
            incident.value = 90.0 + n as f64 / 10.0;
            assert!(queue(&incident, &mut announced, 1).is_empty());
        }
        go(&mut incident, Status::Analyzing, "analyzing", 2);
        go(&mut incident, Status::Escalated, "notify only", 3);
        assert!(
            queue(&incident, &mut announced, 3).is_empty(),
            "paged twice"
        );
        go(&mut incident, Status::Resolved, "recovered", 4);
        assert_eq!(queue(&incident, &mut announced, 4), vec![Due::Resolve]);
        assert!(queue(&incident, &mut announced, 5).is_empty());
        assert_eq!(
            announced,
            Some(Announced {
                paging: false,
                triggers: 1,
                entries_seen: 4,
            })
        );
    }

    #[test]
    fn a_warning_pages_only_once_escalated() {
        let mut incident = incident(Severity::Warning);
        let mut announced = None;
        assert!(queue(&incident, &mut announced, 0).is_empty());
        go(&mut incident, Status::Analyzing, "analyzing", 1);
        go(
            &mut incident,
            Status::AwaitingApproval,
            "needs an operator",
            2,
        );
        assert!(queue(&incident, &mut announced, 2).is_empty());
        go(
            &mut incident,
            Status::Escalated,
            "the approval request expired after 30m without an answer",
            3,
        );
        assert_eq!(queue(&incident, &mut announced, 3), vec![Due::Trigger]);
        let trigger = event(&incident, Due::Trigger, "https://sentinel.example.com/");
        assert_eq!(trigger.body["payload"]["severity"], "error");
        assert_eq!(
            trigger.body["payload"]["summary"],
            "Sentinel needs a person for web-1: container_memory on web-1 is 93%, at or above \
             90%. The approval request expired after 30m without an answer."
        );
        go(&mut incident, Status::Resolved, "recovered", 4);
        assert_eq!(queue(&incident, &mut announced, 4), vec![Due::Resolve]);
    }

    #[test]
    fn fixes_and_rollbacks_are_changes_in_timeline_order_between_trigger_and_resolve() {
        let mut incident = incident(Severity::Critical);
        let mut announced = None;
        executed(&mut incident);
        // All seen at once: the page first, then the fix.
        assert_eq!(
            queue(&incident, &mut announced, 4),
            vec![Due::Trigger, Due::Change { entry: 4 }]
        );
        go(
            &mut incident,
            Status::RolledBack,
            "restored the previous state",
            5,
        );
        go(&mut incident, Status::Escalated, "the fix did not help", 5);
        assert_eq!(
            queue(&incident, &mut announced, 5),
            vec![Due::Change { entry: 5 }]
        );
        go(&mut incident, Status::Resolved, "recovered", 6);
        assert_eq!(queue(&incident, &mut announced, 6), vec![Due::Resolve]);

        let fix = event(&incident, Due::Change { entry: 4 }, "");
        assert_eq!(fix.endpoint, Endpoint::Change);
        assert_eq!(
            fix.body["payload"]["summary"],
            "Sentinel ran container_restart on web-1: restarted web-1"
        );
        assert_eq!(fix.body["payload"]["custom_details"]["incident"], "inc-abc");
        assert!(fix.body.get("links").is_none(), "no public_url, no links");
        let rollback = event(&incident, Due::Change { entry: 5 }, "");
        assert_eq!(
            rollback.body["payload"]["summary"],
            "Sentinel rolled back container_restart on web-1: restored the previous state"
        );
    }

    #[test]
    fn a_warning_fix_that_fails_and_escalates_pages_after_its_changes() {
        let mut incident = incident(Severity::Warning);
        let mut announced = None;
        executed(&mut incident);
        go(&mut incident, Status::RolledBack, "restored", 5);
        go(&mut incident, Status::Escalated, "the fix did not help", 5);
        assert_eq!(
            queue(&incident, &mut announced, 5),
            vec![
                Due::Change { entry: 4 },
                Due::Change { entry: 5 },
                Due::Trigger
            ]
        );
    }

    #[test]
    fn a_reopened_incident_pages_again_under_the_same_key() {
        let mut incident = incident(Severity::Critical);
        let mut announced = None;
        executed(&mut incident);
        assert_eq!(
            queue(&incident, &mut announced, 4),
            vec![Due::Trigger, Due::Change { entry: 4 }]
        );
        go(&mut incident, Status::Resolved, "verified", 5);
        assert_eq!(queue(&incident, &mut announced, 5), vec![Due::Resolve]);
        // An admin rolls the resolved fix back: open again, critical.
        go(
            &mut incident,
            Status::RolledBack,
            "rolled back by an admin",
            6,
        );
        assert_eq!(
            queue(&incident, &mut announced, 6),
            vec![Due::Trigger, Due::Change { entry: 6 }]
        );
        assert_eq!(announced.as_ref().unwrap().triggers, 2);
        let again = event(&incident, Due::Trigger, "");
        assert_eq!(again.body["dedup_key"], "inc-abc");
    }

    #[test]
    fn history_pages_nobody() {
        let mut incident = incident(Severity::Critical);
        executed(&mut incident);
        go(&mut incident, Status::Resolved, "verified", 5);
        // Closed long ago and never looked at: nothing.
        assert_eq!(plan(&incident, None, PAGING, at(5 + 7200)), None);
        // Closed a minute ago: its fix is news, but no page for what is over.
        let recent = plan(&incident, None, PAGING, at(65)).unwrap();
        assert_eq!(recent.due, vec![Due::Change { entry: 4 }]);
        assert!(!recent.announced.paging);
    }

    #[test]
    fn severities_decide_which_open_incidents_page() {
        let warning = incident(Severity::Warning);
        assert!(!pages(&warning, &[Severity::Critical]));
        assert!(pages(&warning, &[Severity::Warning, Severity::Critical]));
        assert!(!pages(&incident(Severity::Critical), &[]));
    }

    #[test]
    fn events_are_shaped_like_the_events_api() {
        let mut incident = incident(Severity::Critical);
        incident.synthetic = true;
        incident.summary = "test alert: host_memory on host at 95.5% (threshold 90%)".to_owned();
        let trigger = event(&incident, Due::Trigger, "https://sentinel.example.com/");
        assert_eq!(trigger.endpoint.path(), "enqueue");
        let body = &trigger.body;
        assert_eq!(body["event_action"], "trigger");
        assert_eq!(body["dedup_key"], "inc-abc");
        assert!(
            body.get("routing_key").is_none(),
            "the key is added when sent"
        );
        assert_eq!(
            body["payload"]["summary"],
            "Test alert: Critical incident on web-1: host_memory on host at 95.5% (threshold 90%)"
        );
        assert_eq!(body["payload"]["source"], "web-1");
        assert_eq!(body["payload"]["severity"], "critical");
        assert_eq!(body["payload"]["timestamp"], at(0).to_string());
        assert_eq!(body["payload"]["custom_details"]["test_alert"], true);
        assert_eq!(
            body["links"][0]["href"],
            "https://sentinel.example.com/#inc-abc"
        );
        assert_eq!(body["client_url"], "https://sentinel.example.com");
        let resolve = event(&incident, Due::Resolve, "https://sentinel.example.com");
        assert_eq!(
            resolve.body,
            json!({"event_action": "resolve", "dedup_key": "inc-abc"})
        );
        // A long summary is cut to PagerDuty's 1024 characters.
        incident.summary = "x".repeat(5000);
        let long = event(&incident, Due::Trigger, "");
        let summary = long.body["payload"]["summary"].as_str().unwrap();
        assert_eq!(summary.chars().count(), 1024);
        assert!(summary.ends_with('…'));
        let stored: Queued = serde_json::from_value(serde_json::to_value(&long).unwrap()).unwrap();
        assert_eq!(stored, long);
    }
}
