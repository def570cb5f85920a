//! `/sentinel catchup [duration]` (SPEC §12.5): what happened while you were away.
//!
//! In: the incidents (newest first, open or not), the window's start and end, and who may
//! approve (`[rbac]`). Out: Slack mrkdwn: the incidents opened and resolved in the window,
//! the fixes that ran and the rollbacks, and the approvals still pending with the people
//! who may give them, each incident linked to its card when it has one. Pure: the command
//! reads the store and the clock and hands the values here.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::RbacSettings;
use crate::domain::{Incident, Role, Status, Timestamp};
use crate::pipeline::approve;
use crate::service::postmortem::{at_words, duration_words};
use crate::slack::blocks::escape;

/// The window when none is given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(8 * 3600);

/// The longest window asked for: older history is the audit log's business.
pub const MAX_WINDOW: Duration = Duration::from_secs(31 * 24 * 3600);

/// At most this many lines per list; the rest is counted.
const PER_LIST: usize = 15;

/// The digest of `[since, now]`.
pub fn render(
    incidents: &[Incident],
    since: Timestamp,
    now: Timestamp,
    rbac: &RbacSettings,
) -> String {
    let within = |at: Timestamp| at >= since && at <= now;
    let opened: Vec<&Incident> = incidents.iter().filter(|i| within(i.opened_at)).collect();
    let resolved: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.status == Status::Resolved && i.resolved_at.is_some_and(within))
        .collect();
    let fixed: Vec<&Incident> = incidents
        .iter()
        .filter(|i| {
            i.execution
                .as_ref()
                .is_some_and(|e| e.finished_at.is_some_and(within) && e.after.is_some())
        })
        .collect();
    let rolled: Vec<&Incident> = incidents
        .iter()
        .filter(|i| {
            i.execution
                .as_ref()
                .is_some_and(|e| e.rolled_back_at.is_some_and(within))
        })
        .collect();
    let pending: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.status == Status::AwaitingApproval)
        .collect();

    let mut out = format!(
        "*Catch-up: the last {}* (since {})\n",
        duration_words(now.since(since)),
        at_words(since)
    );
    if opened.is_empty() && resolved.is_empty() && fixed.is_empty() && rolled.is_empty() {
        out.push_str("Nothing was opened, resolved, fixed or rolled back in that time.\n");
    }
    list(&mut out, "Opened", &opened, |i| {
        format!(
            "{} {} {} on `{}`, {} since, now {}",
            link(i),
            i.severity,
            i.signal.as_str().replace('_', " "),
            escape(i.resource.as_str()),
            at_words(i.opened_at),
            i.status.as_str().replace('_', " ")
        )
    });
    list(&mut out, "Resolved", &resolved, |i| {
        let at = i.resolved_at.unwrap_or(i.updated_at);
        format!(
            "{} {} on `{}` at {}, {} after it opened",
            link(i),
            i.signal.as_str().replace('_', " "),
            escape(i.resource.as_str()),
            at_words(at),
            duration_words(at.since(i.opened_at))
        )
    });
    list(&mut out, "Fixes run", &fixed, |i| {
        let e = i.execution.as_ref().expect("filtered on its execution");
        format!(
            "{} `{}` on `{}` at {}, approved by {}",
            link(i),
            e.action.action,
            escape(i.resource.as_str()),
            at_words(e.finished_at.unwrap_or(e.started_at)),
            approver(&e.approved_by)
        )
    });
    list(&mut out, "Rollbacks", &rolled, |i| {
        let e = i.execution.as_ref().expect("filtered on its execution");
        format!(
            "{} `{}` on `{}` rolled back at {}{}",
            link(i),
            e.action.action,
            escape(i.resource.as_str()),
            at_words(e.rolled_back_at.unwrap_or(i.updated_at)),
            e.rollback
                .as_ref()
                .map(|r| format!(" by {}", approver(&r.by)))
                .unwrap_or_default()
        )
    });
    if pending.is_empty() {
        out.push_str("*Waiting for approval*: nothing.\n");
    }
    list(&mut out, "Waiting for approval", &pending, |i| {
        let needs = approve::needed_role(i);
        format!(
            "{} {} on `{}`, {} risk: {} may approve{}",
            link(i),
            i.proposed_action
                .as_ref()
                .map(|p| format!("`{}`", p.action))
                .unwrap_or_else(|| "a fix".to_owned()),
            escape(i.resource.as_str()),
            i.risk.map_or("unknown".to_owned(), |r| r.to_string()),
            match needs {
                Role::Admin => "an admin",
                _ => "an operator or admin",
            },
            people(rbac, needs)
        )
    });
    out
}

fn list(out: &mut String, title: &str, items: &[&Incident], line: impl Fn(&Incident) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "*{title} ({})*", items.len());
    for item in items.iter().take(PER_LIST) {
        let _ = writeln!(out, "• {}", line(item));
    }
    if items.len() > PER_LIST {
        let _ = writeln!(out, "• and {} more", items.len() - PER_LIST);
    }
}

/// The incident's id, linked to its card when it has one.
fn link(incident: &Incident) -> String {
    match &incident.slack {
        Some(card) if card.ts.is_some() && !card.channel.is_empty() => {
            let ts = card.ts.as_deref().unwrap_or_default().replace('.', "");
            format!(
                "<https://slack.com/archives/{}/p{}|{}>",
                escape(&card.channel),
                escape(&ts),
                incident.id
            )
        }
        _ => format!("*{}*", incident.id),
    }
}

/// `slack:U1 (operator)` → `<@U1> (operator)`; `api:ci (admin)` → `ci (admin) through the API`.
fn approver(actor: &str) -> String {
    actor
        .split(" and ")
        .map(|one| {
            let one = one.trim();
            if let Some(rest) = one.strip_prefix("slack:") {
                let (user, role) = rest.split_once(' ').unwrap_or((rest, ""));
                if user.chars().all(|c| c.is_ascii_alphanumeric()) && !user.is_empty() {
                    return format!(
                        "<@{user}>{}",
                        if role.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", escape(role))
                        }
                    );
                }
            }
            if let Some(rest) = one.strip_prefix("api:") {
                return format!("{} through the API", escape(rest));
            }
            if one == "sentinel" || one.starts_with("policy") {
                return "Sentinel's policy".to_owned();
            }
            escape(one)
        })
        .collect::<Vec<_>>()
        .join(" and ")
}

/// `: <@U1>, <!subteam^S1>`: who may give an approval that needs `role`, from `[rbac]`.
fn people(rbac: &RbacSettings, role: Role) -> String {
    let mut ids: Vec<&String> = rbac.admins.iter().collect();
    if role != Role::Admin {
        ids.extend(&rbac.operators);
    }
    let mentions: Vec<String> = ids
        .into_iter()
        .filter(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()))
        .map(|id| {
            if id.starts_with('S') {
                format!("<!subteam^{id}>")
            } else {
                format!("<@{id}>")
            }
        })
        .collect();
    if mentions.is_empty() {
        String::new()
    } else {
        format!(": {}", mentions.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        Detection, IncidentId, Resource, Risk, Severity, Signal, SlackCard, Source,
    };

    fn at(hours: i64) -> Timestamp {
        Timestamp::from_unix_millis(1_795_860_000_000 + hours * 3_600_000)
    }

    fn incident(name: &str, opened: i64) -> Incident {
        let detection = Detection {
            signal: Signal::ContainerDown,
            resource: Resource::parse(name).unwrap(),
            severity: Severity::Critical,
            value: 1.0,
            threshold: 1.0,
            source: Source::Docker,
            summary: format!("{name} exited"),
            labels: Default::default(),
        };
        Incident::open(IncidentId::generate(), &detection, at(opened))
    }

    #[test]
    fn the_window_keeps_what_happened_in_it_and_names_who_may_approve() {
        let recent = incident("web-1", -2);
        let mut resolved = incident("web-2", -3);
        resolved.status = Status::Resolved;
        resolved.resolved_at = Some(at(-1));
        resolved.slack = Some(SlackCard {
            channel: "C1".into(),
            ts: Some("1700000000.000100".into()),
            ..SlackCard::default()
        });
        let old = incident("web-old", -30);
        let mut waiting = incident("web-3", -20);
        waiting.status = Status::AwaitingApproval;
        waiting.risk = Some(Risk::Medium);
        let mut rbac = crate::config::Settings::defaults().rbac;
        rbac.admins = vec!["UADMIN".into()];
        rbac.operators = vec!["UOPS".into(), "SOPS".into()];
        let all = [
            recent.clone(),
            resolved.clone(),
            old.clone(),
            waiting.clone(),
        ];
        let text = render(&all, at(-8), at(0), &rbac);
        assert!(text.starts_with("*Catch-up: the last 8 h*"), "{text}");
        assert!(text.contains(recent.id.as_str()), "{text}");
        assert!(
            text.contains(&format!(
                "<https://slack.com/archives/C1/p1700000000000100|{}>",
                resolved.id
            )),
            "{text}"
        );
        assert!(
            !text.contains(old.id.as_str()),
            "outside the window: {text}"
        );
        assert!(text.contains("*Opened (2)*"), "{text}");
        assert!(text.contains("*Resolved (1)*"), "{text}");
        let pending = text
            .lines()
            .find(|l| l.contains(waiting.id.as_str()))
            .unwrap();
        assert!(
            pending
                .ends_with("an operator or admin may approve: <@UADMIN>, <@UOPS>, <!subteam^SOPS>"),
            "{pending}"
        );
        let quiet = render(&[old], at(-8), at(0), &rbac);
        assert!(quiet.contains("Nothing was opened"), "{quiet}");
        assert!(
            quiet.contains("*Waiting for approval*: nothing."),
            "{quiet}"
        );
    }
}
