//! Postmortems (`GET /api/incidents/{id}/postmortem`, `/sentinel postmortem <id>`, SPEC §12.5).
//!
//! In: an incident and the audit entries (any; those naming other incidents are skipped).
//! Out: Markdown with a summary, the impact (opened, first human response, fixed, resolved,
//! rolled back: each time in UTC with how long after opening), the timeline and the
//! decisions. Every line that states something ends with the audit entry it comes from,
//! `[#SEQ]`, so a reader can check it against `GET /api/audit`. What has not happened yet
//! ("not fixed") cites the last entry it was read up to.
//!
//! [`render`] is pure: no clock, no store. Text from outside (summaries, reasons, messages,
//! resource names) is written as plain text: Slack's control characters escaped, line
//! breaks folded and brackets softened, so no value can start a heading, a line of its own
//! or a fake `[#…]` citation.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::domain::{AuditEntry, Incident, IncidentId, Timestamp};
use crate::service::{Sentinel, ServiceError};

/// How many audit entries are read at a time while looking for an incident's.
const AUDIT_BATCH: usize = 1000;

impl Sentinel {
    /// The postmortem of an incident, as Markdown ([`render`]), from the whole audit chain.
    pub async fn postmortem(&self, id: &IncidentId) -> Result<(Incident, String), ServiceError> {
        let incident = self.incident(id).await?;
        let mut entries = Vec::new();
        let mut after = 0;
        loop {
            let page = self.store.list_audit_page(after, AUDIT_BATCH).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let full = page.len() == AUDIT_BATCH;
            entries.extend(
                page.into_iter()
                    .filter(|e| e.record.incident.as_ref() == Some(id)),
            );
            if !full {
                break;
            }
        }
        let markdown = render(&incident, &entries);
        Ok((incident, markdown))
    }
}

/// The most characters one Slack `markdown` block may carry; Slack counts the markdown
/// blocks of one message together against this (12,000), so each message gets one block.
pub const SLACK_MARKDOWN_LIMIT: usize = 12_000;

/// The incident's postmortem, from its audit entries (oldest first, as the chain is).
pub fn render(incident: &Incident, entries: &[AuditEntry]) -> String {
    let mine: Vec<&AuditEntry> = entries
        .iter()
        .filter(|e| e.record.incident.as_ref() == Some(&incident.id))
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Postmortem: {} · {} on {}",
        incident.id,
        upper_first(&words(incident.signal.as_str())),
        clean(incident.resource.as_str())
    );
    let Some(last) = mine.last() else {
        out.push_str(
            "\n_No audit entry names this incident, so nothing about it can be stated here._\n",
        );
        return out;
    };
    let opened = mine
        .iter()
        .find(|e| e.record.event == "IncidentOpened")
        .copied()
        .unwrap_or(mine[0]);
    let start = opened.record.at;

    out.push_str("\n## Summary\n\n");
    let _ = writeln!(
        out,
        "- {} {} on {} opened {}: {} {}",
        upper_first(incident.severity.as_str()),
        words(incident.signal.as_str()),
        clean(incident.resource.as_str()),
        at_words(start),
        details_text(&opened.record.details, "summary").unwrap_or_else(|| "no summary".into()),
        cite(opened)
    );
    if let Some(proposed) = mine.iter().find(|e| e.record.event == "ActionProposed") {
        let root = incident
            .root_cause
            .as_deref()
            .map(clean)
            .filter(|r| !r.is_empty());
        let _ = writeln!(
            out,
            "- Analysis: {}{} {}",
            proposal_words(&proposed.record.details),
            root.map(|r| format!("; root cause: {r}"))
                .unwrap_or_default(),
            cite(proposed)
        );
    }
    let _ = writeln!(
        out,
        "- Status now: {}, as of {} {}",
        words(incident.status.as_str()),
        at_words(last.record.at),
        cite(last)
    );

    out.push_str("\n## Impact\n\n");
    let _ = writeln!(out, "- Opened: {} {}", at_words(start), cite(opened));
    let human = mine.iter().find(|e| is_person(&e.record.actor)).copied();
    milestone(&mut out, "First human response", human, start, last, |e| {
        format!("{} by {}", event_words(e), who(e))
    });
    let fixed = mine
        .iter()
        .find(|e| e.record.event == "ActionExecuted")
        .copied();
    milestone(&mut out, "Fixed", fixed, start, last, event_words);
    let resolved = mine
        .iter()
        .find(|e| {
            matches!(
                e.record.event.as_str(),
                "VerificationSucceeded" | "IncidentResolved"
            )
        })
        .copied();
    milestone(&mut out, "Resolved", resolved, start, last, event_words);
    if let Some(rolled) = mine.iter().find(|e| e.record.event == "ActionRolledBack") {
        let _ = writeln!(
            out,
            "- Rolled back: {}, {} after opening, by {} {}",
            at_words(rolled.record.at),
            duration_words(rolled.record.at.since(start)),
            who(rolled),
            cite(rolled)
        );
    }

    out.push_str("\n## Timeline\n\n");
    for entry in &mine {
        let _ = writeln!(
            out,
            "- {} (+{}) · {} · {} {}",
            at_words(entry.record.at),
            duration_words(entry.record.at.since(start)),
            event_words(entry),
            who(entry),
            cite(entry)
        );
    }

    out.push_str("\n## Decisions\n\n");
    let decisions: Vec<&&AuditEntry> = mine.iter().filter(|e| is_decision(e)).collect();
    if decisions.is_empty() {
        let _ = writeln!(
            out,
            "- No decision was taken on this incident up to {} {}",
            at_words(last.record.at),
            cite(last)
        );
    }
    for entry in decisions {
        let _ = writeln!(
            out,
            "- {}: {} by {} {}",
            at_words(entry.record.at),
            event_words(entry),
            who(entry),
            cite(entry)
        );
    }
    out
}

/// One impact line: when it happened and how long after opening, or "not yet" as of the
/// last entry.
fn milestone(
    out: &mut String,
    label: &str,
    entry: Option<&AuditEntry>,
    start: Timestamp,
    last: &AuditEntry,
    what: impl Fn(&AuditEntry) -> String,
) {
    let _ = match entry {
        Some(entry) => writeln!(
            out,
            "- {label}: {}, {} after opening: {} {}",
            at_words(entry.record.at),
            duration_words(entry.record.at.since(start)),
            what(entry),
            cite(entry)
        ),
        None => writeln!(
            out,
            "- {label}: not yet, as of {} {}",
            at_words(last.record.at),
            cite(last)
        ),
    };
}

fn cite(entry: &AuditEntry) -> String {
    format!("[#{}]", entry.seq)
}

/// Whether a person (an API key or a Slack user) acted, not Sentinel.
fn is_person(actor: &str) -> bool {
    actor.starts_with("slack:") || actor.starts_with("api:")
}

/// The entries that record a decision: what was proposed, asked, granted, refused, run
/// back or closed by hand.
fn is_decision(entry: &AuditEntry) -> bool {
    matches!(
        entry.record.event.as_str(),
        "ActionProposed"
            | "ProposalRefused"
            | "ApprovalRequested"
            | "ApprovalGranted"
            | "ApprovalRecorded"
            | "ApprovalRejected"
            | "ApprovalExpired"
            | "DecisionRefused"
            | "ActionRolledBack"
            | "IncidentEscalated"
    ) || (entry.record.event == "IncidentResolved" && is_person(&entry.record.actor))
}

/// Who acted, for people: `Sentinel`, `Slack user U1 (operator)`, `ci-bot (admin) through
/// the API`.
fn who(entry: &AuditEntry) -> String {
    let role = entry
        .record
        .role
        .as_deref()
        .map(|r| format!(" ({})", clean(r)))
        .unwrap_or_default();
    let actor = &entry.record.actor;
    if actor == "sentinel" {
        "Sentinel".to_owned()
    } else if let Some(user) = actor.strip_prefix("slack:") {
        format!("Slack user {}{role}", clean(user))
    } else if let Some(name) = actor.strip_prefix("api:") {
        format!("{}{role} through the API", clean(name))
    } else {
        format!("{}{role}", clean(actor))
    }
}

/// An actor as the execution record writes it (`slack:U1 (operator)`, `api:ci (admin)`,
/// several joined with ` and `), for people.
fn actor_words(actor: &str) -> String {
    actor
        .split(" and ")
        .map(|one| {
            let one = one.trim();
            let (id, role) = match one.split_once(" (") {
                Some((id, role)) => (id, format!(" ({}", clean(role))),
                None => (one, String::new()),
            };
            if let Some(user) = id.strip_prefix("slack:") {
                format!("Slack user {}{role}", clean(user))
            } else if let Some(name) = id.strip_prefix("api:") {
                format!("{}{role} through the API", clean(name))
            } else if id == "sentinel" {
                "Sentinel".to_owned()
            } else {
                clean(one)
            }
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// What an audit entry says happened, in words.
fn event_words(entry: &AuditEntry) -> String {
    let d = &entry.record.details;
    let text = |key: &str| details_text(d, key);
    let action = |key: &str| {
        d.pointer(&format!("/{key}/action"))
            .and_then(Value::as_str)
            .map(|a| format!("`{}`", clean(a)))
            .unwrap_or_else(|| "the fix".to_owned())
    };
    match entry.record.event.as_str() {
        "IncidentOpened" => format!(
            "incident opened: {}",
            text("summary").unwrap_or_else(|| "no summary".into())
        ),
        "ActionProposed" => proposal_words(d),
        "ProposalRefused" => format!(
            "a proposal was refused: {}",
            text("why").unwrap_or_else(|| "no reason given".into())
        ),
        "ApprovalRequested" => match text("role") {
            Some(role) => format!(
                "approval requested from an {role}{}",
                text("why").map(|w| format!(": {w}")).unwrap_or_default()
            ),
            None => format!(
                "approval requested again{}",
                text("why").map(|w| format!(": {w}")).unwrap_or_default()
            ),
        },
        "ApprovalGranted" if text("by").as_deref() == Some("policy") => format!(
            "approved automatically by the policy ({} risk)",
            text("risk").unwrap_or_else(|| "low".into())
        ),
        "ApprovalGranted" => format!(
            "approved {}",
            d.pointer("/proposed_action/action")
                .and_then(Value::as_str)
                .map(|a| format!("`{}`", clean(a)))
                .unwrap_or_else(|| "the fix".into())
        ),
        "ApprovalRecorded" => format!(
            "first approval recorded, waiting for {}",
            text("waiting_for").unwrap_or_else(|| "another approval".into())
        ),
        "ApprovalRejected" => format!(
            "fix rejected{}",
            text("reason").map(|r| format!(": {r}")).unwrap_or_default()
        ),
        "ApprovalExpired" => match d.get("waited_seconds").and_then(Value::as_u64) {
            Some(secs) => format!(
                "approval request expired after {}",
                duration_words(Duration::from_secs(secs))
            ),
            None => "approval request expired".to_owned(),
        },
        "DecisionRefused" => {
            let count = d.get("count").and_then(Value::as_u64).unwrap_or(1);
            format!(
                "refused to {}: {}{}",
                text("decision").unwrap_or_else(|| "decide".into()),
                text("why").unwrap_or_else(|| "no reason given".into()),
                if count > 1 {
                    format!(" ({count} times)")
                } else {
                    String::new()
                }
            )
        }
        "ActionExecuted" => format!(
            "{} executed{}",
            action("action"),
            d.get("approved_by")
                .and_then(Value::as_str)
                .map(|a| format!(", approved by {}", actor_words(a)))
                .unwrap_or_default()
        ),
        "ActionFailed" if d.get("rollback").and_then(Value::as_bool) == Some(true) => format!(
            "the rollback failed: {}",
            text("error").unwrap_or_else(|| "no reason given".into())
        ),
        "ActionFailed" => format!(
            "the fix failed: {}",
            text("error").unwrap_or_else(|| "no reason given".into())
        ),
        "DryRunRecorded" => format!("{} recorded as a dry run, not executed", action("action")),
        "ExecutionReconciled" => format!(
            "an interrupted fix was checked against the target after a restart (now {})",
            text("status")
                .map(|s| words(&s))
                .unwrap_or_else(|| "unknown".into())
        ),
        "RemediationResumed" => "work resumed after a restart".to_owned(),
        "VerificationSucceeded" => match text("message") {
            // The verifier's own message often starts with the word already.
            Some(m) if m.starts_with("verified") => m,
            Some(m) => format!("verified: {m}"),
            None => "verified".to_owned(),
        },
        "VerificationFailed" => format!(
            "verification failed{}",
            text("message")
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        "ActionRolledBack" => format!("{} rolled back", action("action")),
        "IncidentEscalated" => format!(
            "escalated{}",
            text("why")
                .or_else(|| text("status").map(|s| words(&s)))
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        ),
        "RecoveryNoted" => format!(
            "recovery noted{}",
            text("message")
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        "IncidentResolved" => format!(
            "resolved{}",
            text("message")
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ),
        other => words(&clean(other)),
    }
}

/// `the rules analyzer proposed `container_start` (container=web-1), medium risk,
/// confidence 80 %`.
fn proposal_words(details: &Value) -> String {
    let action = details
        .pointer("/proposed_action/action")
        .and_then(Value::as_str)
        .map(|a| format!("`{}`", clean(a)))
        .unwrap_or_else(|| "no fix".to_owned());
    let params: Vec<String> = details
        .pointer("/proposed_action/params")
        .and_then(Value::as_object)
        .map(|params| {
            params
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{}={}", clean(k), clean(s)),
                    other => format!("{}={}", clean(k), clean(&other.to_string())),
                })
                .collect()
        })
        .unwrap_or_default();
    let analyzer = details_text(details, "analyzer").unwrap_or_else(|| "an".to_owned());
    let risk = details_text(details, "risk")
        .map(|r| format!(", {r} risk"))
        .unwrap_or_default();
    let confidence = details
        .get("confidence")
        .and_then(Value::as_f64)
        .map(|c| format!(", confidence {} %", (c * 100.0).round() as i64))
        .unwrap_or_default();
    format!(
        "the {analyzer} analyzer proposed {action}{}{risk}{confidence}",
        if params.is_empty() {
            String::new()
        } else {
            format!(" ({})", params.join(", "))
        }
    )
}

/// A string field of the details, cleaned; `None` when absent or empty.
fn details_text(details: &Value, key: &str) -> Option<String> {
    match details.get(key)? {
        Value::String(s) => Some(clean(s)).filter(|s| !s.is_empty()),
        Value::Null => None,
        Value::Bool(b) => Some(if *b { "yes" } else { "no" }.to_owned()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(clean(&other.to_string())),
    }
}

/// Outside text made safe for one Markdown line: Slack's control characters escaped, line
/// breaks and tabs folded into spaces, brackets and backticks softened (no fake citations,
/// links or code spans), at most 500 characters.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '[' => out.push('('),
            ']' => out.push(')'),
            '`' => out.push('\''),
            '#' if out.is_empty() => out.push_str("No. "),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    let folded = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() > 500 {
        let mut cut: String = folded.chars().take(499).collect();
        if let Some(amp) = cut.rfind('&') {
            if !cut[amp..].contains(';') {
                cut.truncate(amp);
            }
        }
        cut.push('…');
        cut
    } else {
        folded
    }
}

/// `container_down` → `container down`.
fn words(name: &str) -> String {
    name.replace('_', " ")
}

fn upper_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// `2026-11-28 10:00:04 UTC`.
pub fn at_words(at: Timestamp) -> String {
    let text = at.to_string();
    format!("{} {} UTC", &text[..10], &text[11..19])
}

/// A duration as people say it: `0 s`, `45 s`, `4 min`, `1 h 5 min`, `2 d 3 h`.
pub fn duration_words(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..=59 => format!("{secs} s"),
        60..=3599 => format!("{} min", secs / 60),
        3600..=86_399 => match (secs / 3600, secs % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        _ => match (secs / 86_400, secs % 86_400 / 3600) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    }
}

/// Splits Markdown into pieces of at most `limit` characters, at line ends (a line longer
/// than `limit` alone is cut, ending in `…`), for Slack's `markdown` block.
pub fn split(markdown: &str, limit: usize) -> Vec<String> {
    let limit = limit.max(2);
    let mut pieces = Vec::new();
    let mut piece = String::new();
    let mut length = 0;
    for line in markdown.lines() {
        let mut line = line.to_owned();
        let mut chars = line.chars().count();
        if chars >= limit {
            line = line.chars().take(limit - 2).collect::<String>() + "…";
            chars = limit - 1;
        }
        if length + chars + 1 > limit && !piece.is_empty() {
            pieces.push(std::mem::take(&mut piece));
            length = 0;
        }
        piece.push_str(&line);
        piece.push('\n');
        length += chars + 1;
    }
    if !piece.trim().is_empty() {
        pieces.push(piece);
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuditRecord, Detection, IncidentId, Resource, Severity, Signal, Source};
    use serde_json::json;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_795_860_000_000 + secs * 1000)
    }

    fn incident() -> Incident {
        let detection = Detection {
            signal: Signal::ContainerDown,
            resource: Resource::parse("web-1").unwrap(),
            severity: Severity::Critical,
            value: 1.0,
            threshold: 1.0,
            source: Source::Docker,
            summary: "web-1 exited".into(),
            labels: Default::default(),
        };
        let mut incident = Incident::open(IncidentId::generate(), &detection, at(0));
        incident.root_cause = Some("web-1 stopped\n# not a heading [#999]".into());
        incident
    }

    fn entry(
        seq: u64,
        secs: i64,
        event: &str,
        actor: &str,
        role: Option<&str>,
        incident: Option<&Incident>,
        details: Value,
    ) -> AuditEntry {
        AuditEntry {
            seq,
            record: AuditRecord {
                at: at(secs),
                event: event.into(),
                actor: actor.into(),
                role: role.map(str::to_owned),
                incident: incident.map(|i| i.id.clone()),
                details,
            },
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    fn story(i: &Incident) -> Vec<AuditEntry> {
        let other = incident();
        vec![
            entry(
                3,
                0,
                "IncidentOpened",
                "sentinel",
                None,
                Some(i),
                json!({"summary": "web-1 exited\n## injected"}),
            ),
            entry(
                4,
                1,
                "IncidentOpened",
                "sentinel",
                None,
                Some(&other),
                json!({"summary": "other"}),
            ),
            entry(
                5,
                2,
                "ActionProposed",
                "sentinel",
                None,
                Some(i),
                json!({
                "proposed_action": {"action": "container_start", "params": {"container": "web-1"}},
                "risk": "medium", "analyzer": "rules", "confidence": 0.8}),
            ),
            entry(
                6,
                2,
                "ApprovalRequested",
                "sentinel",
                None,
                Some(i),
                json!({"role": "operator", "why": "medium risk needs an operator"}),
            ),
            entry(
                8,
                250,
                "ApprovalGranted",
                "slack:U1",
                Some("operator"),
                Some(i),
                json!({"proposed_action": {"action": "container_start"}, "risk": "medium"}),
            ),
            entry(
                9,
                251,
                "ActionExecuted",
                "sentinel",
                None,
                Some(i),
                json!({"action": {"action": "container_start"}, "approved_by": "slack:U1 (operator)"}),
            ),
            entry(
                10,
                282,
                "VerificationSucceeded",
                "sentinel",
                None,
                Some(i),
                json!({"message": "web-1 is running <!channel>"}),
            ),
            entry(
                12,
                4000,
                "ActionRolledBack",
                "api:ops",
                Some("admin"),
                Some(i),
                json!({"action": {"action": "container_start"}}),
            ),
        ]
    }

    #[test]
    fn every_step_is_named_with_its_entry_and_durations_from_opening() {
        let i = incident();
        let text = render(&i, &story(&i));
        for (needle, seq) in [
            ("- Opened: 2026-11-28 ", 3),
            (
                "proposed `container_start` (container=web-1), medium risk, confidence 80 %",
                5,
            ),
            ("- First human response: 2026-11-28 ", 8),
            (
                "4 min after opening: approved `container_start` by Slack user U1 (operator)",
                8,
            ),
            ("- Fixed: ", 9),
            (
                "`container_start` executed, approved by Slack user U1 (operator)",
                9,
            ),
            ("verified: web-1 is running", 10),
            ("- Resolved: ", 10),
            ("- Rolled back: ", 12),
            (
                "1 h 6 min after opening, by ops (admin) through the API",
                12,
            ),
        ] {
            let line = text
                .lines()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"));
            assert!(line.ends_with(&format!("[#{seq}]")), "{line}");
        }
        assert!(!text.contains("[#4]"), "another incident's entry: {text}");
        for line in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        {
            assert!(
                line.trim_end().ends_with(']') && line.contains("[#"),
                "a statement without its entry: {line:?}"
            );
            assert_eq!(line.matches("[#").count(), 1, "one citation: {line:?}");
        }
        assert!(!text.contains("<!channel>") && text.contains("&lt;!channel&gt;"));
        assert!(!text.contains("[#999]"), "outside text cannot cite");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("## ")).count(),
            4,
            "{text}"
        );
    }

    #[test]
    fn what_did_not_happen_yet_says_so_as_of_the_last_entry() {
        let i = incident();
        let entries = story(&i)[..3].to_vec();
        let text = render(&i, &entries);
        assert!(
            text.contains("- Fixed: not yet, as of 2026-11-28 "),
            "{text}"
        );
        let fixed = text.lines().find(|l| l.starts_with("- Fixed")).unwrap();
        assert!(fixed.ends_with("[#5]"), "{fixed}");
        assert!(text.contains("- First human response: not yet"), "{text}");
        assert!(!text.contains("Rolled back"), "{text}");
        let none = render(&i, &[]);
        assert!(
            none.contains("No audit entry names this incident"),
            "{none}"
        );
    }

    #[test]
    fn durations_and_times_read_as_people_write_them() {
        assert_eq!(duration_words(Duration::from_secs(0)), "0 s");
        assert_eq!(duration_words(Duration::from_secs(59)), "59 s");
        assert_eq!(duration_words(Duration::from_secs(250)), "4 min");
        assert_eq!(duration_words(Duration::from_secs(3600)), "1 h");
        assert_eq!(duration_words(Duration::from_secs(3900)), "1 h 5 min");
        assert_eq!(
            duration_words(Duration::from_secs(2 * 86_400 + 3 * 3600)),
            "2 d 3 h"
        );
        assert_eq!(
            at_words(Timestamp::from_unix_millis(0)),
            "1970-01-01 00:00:00 UTC"
        );
        assert_eq!(clean("a\n# b [#1] `x` <@U1>"), "a # b (#1) 'x' &lt;@U1&gt;");
        assert_eq!(clean("# heading"), "No.  heading".replace("  ", " "));
    }

    #[test]
    fn markdown_is_split_at_line_ends_within_the_limit() {
        let text = (0..100)
            .map(|n| format!("- line {n} [#{n}]\n"))
            .collect::<String>();
        let pieces = split(&text, 200);
        assert!(pieces.len() > 5);
        assert!(
            pieces.iter().all(|p| p.chars().count() <= 200),
            "{pieces:?}"
        );
        assert_eq!(pieces.concat(), text, "nothing lost or reordered");
        let long = "x".repeat(50);
        let cut = split(&long, 10);
        assert_eq!(cut, ["xxxxxxxx…\n"]);
        assert!(split("", 10).is_empty());
    }
}
