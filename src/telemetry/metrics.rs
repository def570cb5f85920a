//! Sentinel's own metrics, in the Prometheus text format at `GET /metrics`.
//!
//! In: calls from the one place each thing happens (`pipeline::audit::emit` for incidents,
//! actions and approvals; the Slack layer and client; the monitor; the LLM client). Out: the
//! exposition text. Names are `sentinel_<what>_<unit>`. The registry is process-wide because
//! a metric is a fact about this process, not about one request; label values come only from
//! closed sets (signal, severity, action id, outcome, Slack method), never from user text, so
//! the number of series stays bounded.
//!
//! Gauges that describe the store (open incidents, breakers) are set at scrape time from the
//! same status report `/api/status` serves, so they cannot drift from it.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::domain::{Incident, Timestamp};

/// Every metric Sentinel exports.
pub struct Metrics {
    registry: Registry,
    incidents: IntCounterVec,
    actions: IntCounterVec,
    approval_wait: Histogram,
    slack_requests: IntCounterVec,
    slack_api_calls: IntCounterVec,
    slack_render_failures: IntCounterVec,
    monitor_cycle: Histogram,
    collector_errors: IntCounterVec,
    llm_calls: IntCounterVec,
    llm_call_seconds: HistogramVec,
    breaker_open: IntGaugeVec,
    incidents_open: IntGaugeVec,
    sse_clients: IntGauge,
    /// Scrapes reset, set and read the store-derived gauges: one at a time, so two
    /// concurrent scrapes never see each other's half-set gauges.
    render_lock: std::sync::Mutex<()>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

const INCIDENT_OUTCOMES: [&str; 4] = ["opened", "resolved", "escalated", "rejected"];
const ACTION_OUTCOMES: [&str; 5] = [
    "executed",
    "failed",
    "verified",
    "verification_failed",
    "rolled_back",
];
/// The Web API methods Sentinel calls.
const SLACK_METHODS: [&str; 7] = [
    "auth.test",
    "chat.postMessage",
    "chat.update",
    "chat.postEphemeral",
    "views.open",
    "usergroups.users.list",
    "apps.connections.open",
];

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(counter.clone()))
        .expect("registered once");
    counter
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let histogram =
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid");
    registry
        .register(Box::new(histogram.clone()))
        .expect("registered once");
    histogram
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(gauge.clone()))
        .expect("registered once");
    gauge
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let build_info = gauge(
            &registry,
            "sentinel_build_info",
            "Always 1; the version label says which Sentinel is running.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let llm_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sentinel_llm_call_seconds",
                "Time of one LLM analysis call (all tries), by outcome.",
            )
            .buckets(vec![0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            &["outcome"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(llm_call_seconds.clone()))
            .expect("registered once");
        let sse_clients = IntGauge::new(
            "sentinel_sse_clients",
            "Clients connected to GET /api/stream.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(sse_clients.clone()))
            .expect("registered once");
        let metrics = Metrics {
            incidents: counter(
                &registry,
                "sentinel_incidents_total",
                "Incidents by signal, severity and what happened to them (opened, resolved, \
                 escalated, rejected).",
                &["signal", "severity", "outcome"],
            ),
            actions: counter(
                &registry,
                "sentinel_actions_total",
                "Remediation actions by catalogue id and outcome (executed, failed, verified, \
                 verification_failed, rolled_back).",
                &["action", "outcome"],
            ),
            approval_wait: histogram(
                &registry,
                "sentinel_approval_wait_seconds",
                "Time from asking a person for approval to their approval.",
                vec![
                    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
                ],
            ),
            slack_requests: counter(
                &registry,
                "sentinel_slack_requests_total",
                "Requests from Slack by kind (events, commands, interactions, socket_mode) and \
                 outcome (ok, unauthorized, bad_request, error).",
                &["kind", "outcome"],
            ),
            slack_api_calls: counter(
                &registry,
                "sentinel_slack_api_calls_total",
                "Slack Web API calls by method and status (ok, the ok:false error, \
                 rate_limited, http_<code>, transport).",
                &["method", "status"],
            ),
            slack_render_failures: counter(
                &registry,
                "sentinel_slack_render_failures_total",
                "Slack messages whose template failed to render and were posted as the \
                 plain-text fallback instead, by template.",
                &["template"],
            ),
            monitor_cycle: histogram(
                &registry,
                "sentinel_monitor_cycle_seconds",
                "Duration of one monitor cycle on the leader.",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0],
            ),
            collector_errors: counter(
                &registry,
                "sentinel_collector_errors_total",
                "Collector failures by collector (host, docker, sandbox).",
                &["collector"],
            ),
            llm_calls: counter(
                &registry,
                "sentinel_llm_calls_total",
                "LLM analysis calls by outcome (answered, failed).",
                &["outcome"],
            ),
            llm_call_seconds,
            breaker_open: gauge(
                &registry,
                "sentinel_circuit_breaker_open",
                "1 while the automatic-action budget of an action and target is spent.",
                &["action", "target"],
            ),
            incidents_open: gauge(
                &registry,
                "sentinel_incidents_open",
                "Incidents not yet resolved, by severity.",
                &["severity"],
            ),
            sse_clients,
            registry,
            render_lock: std::sync::Mutex::new(()),
        };
        metrics.start_at_zero();
        metrics
    }

    /// Creates the series of every known label combination at zero, so `rate()` and
    /// dashboards see a 0 instead of no data before the first event.
    fn start_at_zero(&self) {
        use crate::domain::{ActionId, Signal};
        for signal in Signal::ALL {
            for severity in ["info", "warning", "critical"] {
                for outcome in INCIDENT_OUTCOMES {
                    self.incidents
                        .with_label_values(&[signal.as_str(), severity, outcome]);
                }
            }
        }
        for action in ActionId::ALL {
            for outcome in ACTION_OUTCOMES {
                self.actions.with_label_values(&[action.as_str(), outcome]);
            }
        }
        for kind in ["events", "commands", "interactions", "socket_mode"] {
            for outcome in ["ok", "unauthorized", "bad_request", "error"] {
                self.slack_requests.with_label_values(&[kind, outcome]);
            }
        }
        for method in SLACK_METHODS {
            self.slack_api_calls.with_label_values(&[method, "ok"]);
        }
        for collector in ["prometheus", "host", "docker", "sandbox"] {
            self.collector_errors.with_label_values(&[collector]);
        }
        for outcome in ["answered", "failed"] {
            self.llm_calls.with_label_values(&[outcome]);
            self.llm_call_seconds.with_label_values(&[outcome]);
        }
    }

    /// Counts what an audit event says happened. Called by `pipeline::audit::emit` only.
    pub fn audit_event(&self, name: &str, incident: Option<&Incident>) {
        let Some(incident) = incident else { return };
        let outcome = match name {
            "IncidentOpened" => Some("opened"),
            "IncidentResolved" => Some("resolved"),
            "IncidentEscalated" => Some("escalated"),
            "ApprovalRejected" => Some("rejected"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.incidents
                .with_label_values(&[
                    incident.signal.as_str(),
                    incident.severity.as_str(),
                    outcome,
                ])
                .inc();
        }
        let action = incident
            .proposed_action
            .as_ref()
            .map_or("none", |proposed| proposed.action.as_str());
        let outcome = match name {
            "ActionExecuted" => Some("executed"),
            "ActionFailed" => Some("failed"),
            "VerificationSucceeded" => Some("verified"),
            "VerificationFailed" => Some("verification_failed"),
            "ActionRolledBack" => Some("rolled_back"),
            _ => None,
        };
        if let Some(outcome) = outcome {
            self.actions.with_label_values(&[action, outcome]).inc();
        }
    }

    /// A person approved: how long the incident had been waiting for them.
    pub fn approval_granted(&self, incident: &Incident, now: Timestamp) {
        let asked = incident
            .timeline
            .iter()
            .rev()
            .find(|entry| entry.step == "awaiting_approval")
            .map(|entry| entry.at);
        if let Some(asked) = asked {
            self.approval_wait.observe(now.since(asked).as_secs_f64());
        }
    }

    /// One request from Slack over HTTP (`kind` = the route's last segment) or Socket Mode.
    pub fn slack_request(&self, kind: &str, outcome: &str) {
        self.slack_requests
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// One Slack Web API call and how it ended.
    pub fn slack_api_call(&self, method: &str, status: &str) {
        self.slack_api_calls
            .with_label_values(&[method, status])
            .inc();
    }

    /// A template failed to render and its plain-text fallback was posted instead.
    /// `template` is one of `slack::blocks::template_names()` (or `unknown`).
    pub fn slack_render_failure(&self, template: &str) {
        self.slack_render_failures
            .with_label_values(&[template])
            .inc();
    }

    /// How many times `template` fell back to plain text in this process.
    pub fn slack_render_failures(&self, template: &str) -> u64 {
        self.slack_render_failures
            .with_label_values(&[template])
            .get()
    }

    pub fn monitor_cycle(&self, duration: Duration) {
        self.monitor_cycle.observe(duration.as_secs_f64());
    }

    pub fn collector_error(&self, collector: &str) {
        self.collector_errors.with_label_values(&[collector]).inc();
    }

    pub fn llm_call(&self, outcome: &str, duration: Duration) {
        self.llm_calls.with_label_values(&[outcome]).inc();
        self.llm_call_seconds
            .with_label_values(&[outcome])
            .observe(duration.as_secs_f64());
    }

    /// Creates the render-failure series of each Slack template at zero; the Slack side
    /// names its templates at startup (telemetry sits below it and does not know them).
    pub fn start_templates_at_zero(&self, templates: &[&str]) {
        for template in templates {
            self.slack_render_failures.with_label_values(&[template]);
        }
    }

    pub fn sse_connected(&self) {
        self.sse_clients.inc();
    }

    pub fn sse_disconnected(&self) {
        self.sse_clients.dec();
    }

    /// The exposition text, with the store-derived gauges set from `gauges` first.
    pub fn render(&self, gauges: Option<&StoreGauges>) -> String {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.breaker_open.reset();
        self.incidents_open.reset();
        if let Some(gauges) = gauges {
            self.set_store_gauges(gauges);
        }
        let mut text = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut text)
            .expect("text encoding into memory does not fail");
        String::from_utf8(text).expect("the text format is UTF-8")
    }

    fn set_store_gauges(&self, gauges: &StoreGauges) {
        for (action, target, open) in &gauges.breakers {
            self.breaker_open
                .with_label_values(&[action.as_str(), target.as_str()])
                .set(i64::from(*open));
        }
        for (severity, open) in &gauges.incidents_open {
            self.incidents_open
                .with_label_values(&[severity])
                .set(i64::try_from(*open).unwrap_or(i64::MAX));
        }
    }
}

/// The gauges read from the store at scrape time (the service computes them from its
/// status report).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreGauges {
    /// Each circuit breaker: action, target, open.
    pub breakers: Vec<(String, String, bool)>,
    /// Open incidents per severity, every severity named (0 included).
    pub incidents_open: Vec<(&'static str, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_named_sentinel_what_unit_and_has_help() {
        let metrics = Metrics::new();
        metrics.slack_request("commands", "ok");
        for family in metrics.registry.gather() {
            let name = family.name();
            assert!(name.starts_with("sentinel_"), "{name}");
            assert!(!family.help().is_empty(), "{name} has no help");
        }
    }

    #[test]
    fn render_failures_are_counted_per_template_from_zero() {
        let metrics = Metrics::new();
        metrics.start_templates_at_zero(&["incident_card", "timeline_reply"]);
        let text = metrics.render(None);
        assert!(
            text.contains(r#"sentinel_slack_render_failures_total{template="incident_card"} 0"#),
            "every named template's series starts at zero"
        );
        metrics.slack_render_failure("incident_card");
        metrics.slack_render_failure("incident_card");
        assert_eq!(metrics.slack_render_failures("incident_card"), 2);
        assert_eq!(metrics.slack_render_failures("timeline_reply"), 0);
        assert!(metrics
            .render(None)
            .contains(r#"sentinel_slack_render_failures_total{template="incident_card"} 2"#));
    }
}
