//! The status page, `GET /`: server-rendered HTML of what `/api/status` says, for people.
//!
//! In: the status report, recent incidents and the trend buffer. Out: one HTML page rendered
//! from `page/index.html` (minijinja, HTML auto-escaping on), plus its stylesheet and script
//! under `/assets/`. The page reads fine without JavaScript; the script listens to
//! `/api/stream` and swaps in a freshly rendered `<main>` when something changes.
//!
//! Must not: change anything (every route here is GET; other methods get 405), show a secret
//! (nothing here reads `Secrets`), or put text into the page unescaped (container names,
//! labels and root causes come from whoever controls a container or an alert). The charts are
//! numbers computed here, never text. The Content-Security-Policy allows only this origin's
//! script and stylesheet, so even a missed escape could not run a script.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

use super::error::ApiError;
use super::AppState;
use crate::domain::{Incident, Sample, Signal, Source, Status, Timestamp};
use crate::service::postmortem::{at_words, duration_words};
use crate::service::{SignalReading, StatusReport};

const TEMPLATE: &str = include_str!("../../page/index.html");
const STYLESHEET: &str = include_str!("../../page/sentinel.css");
const SCRIPT: &str = include_str!("../../page/sentinel.js");

/// How many incidents the page looks back over for "recently resolved" and the fix history.
const LOOK_BACK: usize = 200;
const RECENTLY_RESOLVED: usize = 10;
const RECENT_FIXES: usize = 15;
/// Timeline entries shown per incident (the newest); the API has them all.
const TIMELINE_SHOWN: usize = 20;

const CHART_WIDTH: f64 = 120.0;
const CHART_HEIGHT: f64 = 32.0;
const CHART_WINDOW_MS: i64 = 3_600_000;

/// Only this origin's stylesheet and script; no inline script, no frames, no forms.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // `.html` turns on HTML auto-escaping for everything the template prints.
    env.add_template("index.html", TEMPLATE)
        .expect("page/index.html is a valid template");
    env
});

#[derive(Debug, Serialize)]
struct PageView {
    mode: &'static str,
    paused: bool,
    dry_run: bool,
    store: &'static str,
    /// While the store does not answer: since when, for the banner.
    store_down_since: Option<When>,
    generated_at: When,
    monitor: Option<MonitorView>,
    open_breakers: Vec<String>,
    signals: Vec<TileView>,
    open: Vec<IncidentView>,
    resolved: Vec<IncidentView>,
    fixes: Vec<FixStats>,
    recent_fixes: Vec<FixView>,
    /// The fixes Sentinel runs on its own (earned autonomy); `None` while the store does not
    /// answer (unknown, not "none").
    trusted: Option<Vec<TrustedView>>,
}

#[derive(Debug, Serialize)]
struct TrustedView {
    id: String,
    action: &'static str,
    target: String,
    signal: &'static str,
    granted_by: String,
    granted_at: When,
    earned_by: u64,
}

impl TrustedView {
    fn of(grant: &crate::domain::TrustGrant, now: Timestamp) -> Self {
        TrustedView {
            id: grant.id.clone(),
            action: grant.key.action.as_str(),
            target: grant.key.target.clone(),
            signal: grant.key.signal.as_str(),
            granted_by: grant.granted_by.clone(),
            granted_at: When::of(grant.granted_at, now),
            earned_by: grant.earned_by,
        }
    }
}

#[derive(Debug, Serialize)]
struct MonitorView {
    at: Option<When>,
    duration_ms: u64,
    outcome: String,
    leader: bool,
}

#[derive(Debug, Serialize)]
struct TileView {
    signal: String,
    resource: String,
    value: String,
    threshold: String,
    state: String,
    source: String,
    /// Where the value comes from, in words: `Prometheus`, `this host`, `estimated from
    /// traffic`, …
    source_words: &'static str,
    /// Why there is no value, or a note on it (`Docker: connection refused`).
    reason: Option<String>,
    chart: Option<ChartView>,
}

/// An inline SVG sparkline: numbers only.
#[derive(Debug, Serialize)]
struct ChartView {
    width: f64,
    height: f64,
    points: String,
    threshold_y: Option<String>,
    samples: usize,
    /// How far back the chart goes, for people: `60 min`, `3 min`.
    covers: String,
}

#[derive(Debug, Serialize)]
struct IncidentView {
    id: String,
    signal: String,
    resource: String,
    severity: &'static str,
    /// The machine name (`awaiting_approval`), for classes and `data-status`.
    status: &'static str,
    /// The same in words (`awaiting approval`), for people.
    status_words: &'static str,
    /// The signal in words (`container memory`).
    signal_words: String,
    risk: Option<&'static str>,
    summary: String,
    root_cause: Option<String>,
    proposed: Option<String>,
    analyzer: Option<String>,
    value: String,
    opened_at: When,
    resolved_at: Option<When>,
    occurrences: u64,
    approvals: Vec<String>,
    timeline: Vec<TimelineView>,
    timeline_hidden: usize,
    /// A test alert (`trigger`): labelled so, its fix only a dry run.
    synthetic: bool,
    /// A scheduled fix: when it runs, in words (`in 42 s`) and exactly (the hover).
    runs_in: Option<String>,
    scheduled_for: Option<When>,
    /// What Docker recorded on the target just before the incident (`Incident::changes`).
    changes: Vec<ChangeView>,
    /// The facts the root cause cites, in the order cited.
    evidence: Vec<EvidenceView>,
}

#[derive(Debug, Serialize)]
struct ChangeView {
    at: When,
    kind: &'static str,
    detail: String,
}

#[derive(Debug, Serialize)]
struct EvidenceView {
    id: String,
    kind: &'static str,
    text: String,
}

#[derive(Debug, Serialize)]
struct TimelineView {
    at: When,
    /// The step in words (`awaiting approval`).
    step: String,
    actor: String,
    message: String,
}

/// Outcomes of one catalogue action over the incidents looked back on.
#[derive(Debug, Default, Serialize, PartialEq)]
struct FixStats {
    action: String,
    runs: u32,
    fixed: u32,
    rolled_back: u32,
    failed: u32,
    pending: u32,
    /// Fixed out of finished runs, as a whole percentage; `None` before any finished.
    success_percent: Option<u32>,
}

#[derive(Debug, Serialize)]
struct FixView {
    incident: String,
    action: String,
    target: String,
    approved_by: String,
    at: When,
    outcome: &'static str,
}

/// How a fix ended, read from its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FixOutcome {
    Fixed,
    RolledBack,
    Failed,
    DidNotHelp,
    InProgress,
}

impl FixOutcome {
    fn of(incident: &Incident) -> Self {
        let rolled_back = incident
            .execution
            .as_ref()
            .is_some_and(|execution| execution.rolled_back_at.is_some());
        match incident.status {
            _ if rolled_back => FixOutcome::RolledBack,
            Status::Resolved => FixOutcome::Fixed,
            Status::Failed => FixOutcome::Failed,
            Status::RolledBack => FixOutcome::RolledBack,
            Status::Escalated => FixOutcome::DidNotHelp,
            _ => FixOutcome::InProgress,
        }
    }

    /// For people, on the page.
    fn as_str(self) -> &'static str {
        match self {
            FixOutcome::Fixed => "fixed",
            FixOutcome::RolledBack => "rolled back",
            FixOutcome::Failed => "failed",
            FixOutcome::DidNotHelp => "did not help",
            FixOutcome::InProgress => "in progress",
        }
    }
}

fn fix_stats(incidents: &[Incident]) -> Vec<FixStats> {
    let mut by_action: BTreeMap<&str, FixStats> = BTreeMap::new();
    for incident in incidents {
        let Some(execution) = &incident.execution else {
            continue;
        };
        let action = execution.action.action.as_str();
        let stats = by_action.entry(action).or_insert_with(|| FixStats {
            action: action.to_owned(),
            ..FixStats::default()
        });
        stats.runs += 1;
        match FixOutcome::of(incident) {
            FixOutcome::Fixed => stats.fixed += 1,
            FixOutcome::RolledBack => stats.rolled_back += 1,
            FixOutcome::Failed | FixOutcome::DidNotHelp => stats.failed += 1,
            FixOutcome::InProgress => stats.pending += 1,
        }
    }
    by_action
        .into_values()
        .map(|mut stats| {
            let finished = stats.runs - stats.pending;
            stats.success_percent = (finished > 0).then(|| stats.fixed * 100 / finished);
            stats
        })
        .collect()
}

/// A value with its unit, rounded for people.
fn with_unit(value: f64, signal: &str) -> String {
    let unit = signal.parse::<Signal>().map(Signal::unit).unwrap_or("");
    let number = if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    };
    match unit {
        "" => number,
        "%" => format!("{number} %"),
        unit => format!("{number} {unit}"),
    }
}

/// The polyline of the last hour of samples, scaled to the chart; the y range covers the
/// samples and the threshold, so a line near its threshold looks near it.
fn chart(samples: &[Sample], threshold: Option<f64>, now: Timestamp) -> Option<ChartView> {
    if samples.is_empty() {
        return None;
    }
    // The last hour, or since the first sample when there is less: the line fills the chart.
    let start = (now.unix_millis() - CHART_WINDOW_MS).max(samples[0].at.unix_millis());
    let span = (now.unix_millis() - start).max(1);
    let top = samples
        .iter()
        .map(|s| s.value)
        .chain(threshold)
        .fold(f64::MIN, f64::max)
        .max(1e-9)
        * 1.1;
    let bottom = samples.iter().map(|s| s.value).fold(0.0_f64, f64::min);
    let y = |value: f64| CHART_HEIGHT - (value - bottom) / (top - bottom) * CHART_HEIGHT;
    let x = |at: Timestamp| {
        let offset = (at.unix_millis() - start).clamp(0, span) as f64;
        offset / span as f64 * CHART_WIDTH
    };
    let mut points: Vec<String> = samples
        .iter()
        .map(|s| format!("{:.1},{:.1}", x(s.at), y(s.value)))
        .collect();
    if points.len() == 1 {
        // One sample: a short flat line, so it shows.
        let only = samples[0];
        points.insert(
            0,
            format!("{:.1},{:.1}", (x(only.at) - 2.0).max(0.0), y(only.value)),
        );
    }
    Some(ChartView {
        width: CHART_WIDTH,
        height: CHART_HEIGHT,
        points: points.join(" "),
        threshold_y: threshold.map(|t| format!("{:.1}", y(t))),
        samples: samples.len(),
        covers: format!("{} min", (span + 59_999) / 60_000),
    })
}

/// A reading's source for people.
fn source_words(source: &str) -> &'static str {
    match source {
        "prometheus" => "Prometheus",
        "local" => "this host",
        "docker" => "Docker",
        "cadvisor" => "cAdvisor via Prometheus",
        "estimate" => "estimated from traffic",
        "sandbox" => "sandbox directory",
        "alertmanager" => "Alertmanager",
        "trigger" => "test alert",
        _ => "unknown source",
    }
}

fn tile(reading: &SignalReading, samples: &[Sample], now: Timestamp) -> TileView {
    let signal = reading.signal.as_str();
    let estimate = reading.source == "estimate";
    TileView {
        signal: reading.signal.clone(),
        resource: reading.resource.clone(),
        value: reading.value.map_or_else(
            || "—".to_owned(),
            |v| {
                let value = with_unit(v, signal);
                if estimate {
                    format!("≈ {value}")
                } else {
                    value
                }
            },
        ),
        threshold: reading
            .threshold
            .map_or_else(String::new, |t| with_unit(t, signal)),
        state: reading.state.clone(),
        source: reading.source.clone(),
        source_words: source_words(&reading.source),
        reason: reading.reason.clone(),
        chart: chart(samples, reading.threshold, now),
    }
}

fn incident_view(incident: &Incident, now: Timestamp) -> IncidentView {
    let signal = incident.signal.as_str();
    let proposed = incident.proposed_action.as_ref().map(|proposed| {
        let params: Vec<String> = proposed
            .params
            .iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(text) => format!("{key}={text}"),
                other => format!("{key}={other}"),
            })
            .collect();
        if params.is_empty() {
            proposed.action.as_str().to_owned()
        } else {
            format!("{} ({})", proposed.action.as_str(), params.join(", "))
        }
    });
    let shown = incident.timeline.len().min(TIMELINE_SHOWN);
    let timeline = incident.timeline[incident.timeline.len() - shown..]
        .iter()
        .map(|entry| TimelineView {
            at: When::of(entry.at, now),
            step: words(&entry.step),
            actor: entry.actor.clone(),
            message: entry.message.clone(),
        })
        .collect();
    IncidentView {
        id: incident.id.to_string(),
        signal: signal.to_owned(),
        resource: incident.resource.to_string(),
        severity: incident.severity.as_str(),
        status: incident.status.as_str(),
        status_words: incident.status.words(),
        signal_words: words(signal),
        risk: incident.risk.map(|risk| risk.as_str()),
        summary: incident.summary.clone(),
        root_cause: incident.root_cause.clone(),
        proposed,
        analyzer: incident.analyzer.clone(),
        value: format!(
            "{}{} (threshold {})",
            with_unit(incident.value, signal),
            if incident.source == Source::Estimate {
                ", estimated from traffic"
            } else {
                ""
            },
            with_unit(incident.threshold, signal)
        ),
        opened_at: When::of(incident.opened_at, now),
        resolved_at: incident.resolved_at.map(|at| When::of(at, now)),
        occurrences: incident.occurrences,
        synthetic: incident.synthetic,
        runs_in: incident.runs_in_words(now),
        scheduled_for: incident.scheduled_for.map(|at| When::of(at, now)),
        approvals: incident.approvals.clone(),
        timeline,
        timeline_hidden: incident.timeline.len() - shown,
        changes: incident
            .changes
            .iter()
            .map(|change| ChangeView {
                at: When::of(change.at, now),
                kind: change.kind.as_str(),
                detail: change.detail.clone(),
            })
            .collect(),
        evidence: incident
            .evidence_cited
            .iter()
            .filter_map(|id| incident.evidence.iter().find(|item| &item.id == id))
            .map(|item| EvidenceView {
                id: item.id.clone(),
                kind: item.kind.as_str(),
                text: item.text.clone(),
            })
            .collect(),
    }
}

fn view(
    status: StatusReport,
    recent: &[Incident],
    trusted: Option<&[crate::domain::TrustGrant]>,
    trends: impl Fn(&str, &str) -> Vec<Sample>,
    now: Timestamp,
) -> PageView {
    let signals = status
        .signals
        .iter()
        .map(|reading| tile(reading, &trends(&reading.signal, &reading.resource), now))
        .collect();
    let resolved = recent
        .iter()
        .filter(|incident| !incident.is_open())
        .take(RECENTLY_RESOLVED)
        .map(|incident| incident_view(incident, now))
        .collect();
    let recent_fixes = recent
        .iter()
        .filter_map(|incident| {
            let execution = incident.execution.as_ref()?;
            Some(FixView {
                incident: incident.id.to_string(),
                action: execution.action.action.as_str().to_owned(),
                target: incident.resource.to_string(),
                approved_by: execution.approved_by.clone(),
                at: When::of(execution.started_at, now),
                outcome: FixOutcome::of(incident).as_str(),
            })
        })
        .take(RECENT_FIXES)
        .collect();
    PageView {
        mode: status.mode,
        paused: status.paused,
        dry_run: status.mode == "dry-run",
        store: if status.store.ok {
            status.store.backend.unwrap_or("unknown")
        } else {
            "unreachable"
        },
        store_down_since: status.store.since.map(|since| When::of(since, now)),
        generated_at: When::of(now, now),
        monitor: status.monitor.map(|cycle| MonitorView {
            at: cycle.started_at.map(|at| When::of(at, now)),
            duration_ms: cycle.duration_ms,
            outcome: cycle.outcome,
            leader: cycle.leader,
        }),
        open_breakers: status
            .breakers
            .iter()
            .filter(|breaker| breaker.state == "open")
            .map(|breaker| breaker.key.clone())
            .collect(),
        signals,
        open: status
            .incidents
            .iter()
            .map(|incident| incident_view(incident, now))
            .collect(),
        resolved,
        fixes: fix_stats(recent),
        recent_fixes,
        trusted: trusted.map(|grants| {
            grants
                .iter()
                .map(|grant| TrustedView::of(grant, now))
                .collect()
        }),
    }
}

/// A moment as the page shows it: relative words, with the exact time on hover and in
/// `datetime` for machines (`<time datetime="{{ at }}" title="{{ exact }}">{{ ago }}</time>`).
#[derive(Debug, Serialize, PartialEq)]
struct When {
    /// RFC 3339, `2026-11-28T10:00:00.000Z`.
    at: String,
    /// `2026-11-28 10:00:00 UTC`.
    exact: String,
    /// `4 min ago`, `just now`, `in 2 min`.
    ago: String,
}

impl When {
    fn of(at: Timestamp, now: Timestamp) -> When {
        let ms = now.unix_millis() - at.unix_millis();
        let words = |ms: i64| duration_words(std::time::Duration::from_millis(ms.unsigned_abs()));
        let ago = match ms {
            -999..=4_999 => "just now".to_owned(),
            ..=-1_000 => format!("in {}", words(ms)),
            _ => format!("{} ago", words(ms)),
        };
        When {
            at: at.to_string(),
            exact: at_words(at),
            ago,
        }
    }
}

/// `container_down` → `container down`: machine names read by people.
fn words(name: &str) -> String {
    name.replace('_', " ")
}

fn security_headers(content_type: &'static str) -> [(header::HeaderName, &'static str); 5] {
    [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

/// `GET /`.
pub async fn page(State(state): State<AppState>) -> Result<Response, ApiError> {
    let sentinel = &state.sentinel;
    // While the store does not answer, the last known state, with a banner.
    let status = state.last_known.status(sentinel).await?;
    let recent = state.last_known.recent(sentinel, LOOK_BACK).await;
    // Unknown while the store does not answer: the section says so rather than "none".
    // Not asked of a store known to fail: the page answers at once from memory.
    let trusted = if !status.store.ok {
        None
    } else {
        match sentinel.trust().await {
            Ok(report) => Some(report.grants),
            Err(e) => {
                tracing::debug!(error = %e, "cannot read trust grants for the page");
                None
            }
        }
    };
    let view = view(
        status,
        &recent,
        trusted.as_deref(),
        |signal, resource| sentinel.trend(signal, resource),
        Timestamp::now(),
    );
    let html = TEMPLATES
        .get_template("index.html")
        .and_then(|template| {
            template.render(minijinja::Value::from(minijinja::value::Serde(&view)))
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot render the status page");
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the status page",
            )
        })?;
    Ok((security_headers("text/html; charset=utf-8"), html).into_response())
}

/// `GET /assets/sentinel.css`.
pub async fn stylesheet() -> Response {
    (security_headers("text/css; charset=utf-8"), STYLESHEET).into_response()
}

/// `GET /assets/sentinel.js`.
pub async fn script() -> Response {
    (security_headers("text/javascript; charset=utf-8"), SCRIPT).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_read_relative_with_the_exact_time_beside() {
        let now = Timestamp::from_unix_millis(1_764_324_000_000); // 2025-11-28T10:00:00Z
        let at = |ms: i64| When::of(Timestamp::from_unix_millis(now.unix_millis() + ms), now);
        assert_eq!(at(0).ago, "just now");
        assert_eq!(at(-4_000).ago, "just now");
        assert_eq!(at(-42_000).ago, "42 s ago");
        assert_eq!(at(-240_000).ago, "4 min ago");
        assert_eq!(at(-3_900_000).ago, "1 h 5 min ago");
        assert_eq!(at(-2 * 86_400_000).ago, "2 d ago");
        assert_eq!(at(120_000).ago, "in 2 min");
        let when = at(-240_000);
        assert_eq!(when.at, "2025-11-28T09:56:00.000Z");
        assert_eq!(when.exact, "2025-11-28 09:56:00 UTC");
    }

    #[test]
    fn every_status_has_words_without_underscores() {
        for status in Status::ALL {
            assert!(!status.words().contains('_'), "{status:?}");
            assert_eq!(status.words().replace(' ', "_"), status.as_str());
        }
    }
}
