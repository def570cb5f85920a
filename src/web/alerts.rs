//! External alerts: Alertmanager's webhook (version 4) and a small generic JSON alert.
//!
//! In: a JSON body. Out: [`AlertUpdate`]s, parsed in full before anything is applied, so a
//! malformed payload gets 400 with the reason and stores nothing. Firing alerts open or
//! update `external` incidents keyed by the alert's fingerprint; resolved ones resolve them.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::{Detection, Fingerprint, Resource, Severity, Signal, Source};

pub use crate::domain::AlertUpdate;

/// Alertmanager's webhook payload, version 4.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerPayload {
    pub version: String,
    pub group_key: String,
    #[serde(default)]
    pub status: Option<String>,
    pub alerts: Vec<AlertmanagerAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    pub status: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub fingerprint: String,
    #[serde(default)]
    pub starts_at: Option<String>,
    #[serde(default)]
    pub ends_at: Option<String>,
}

/// The generic alert of `POST /api/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericAlert {
    /// What is wrong, e.g. `HighErrorRate`.
    pub name: String,
    /// What it is about; the alert's identity is `name` + `resource`.
    pub resource: String,
    /// `firing` (the default) or `resolved`.
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub severity: Option<String>,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The most alerts one payload may carry.
pub const MAX_ALERTS: usize = 500;

fn severity_of(label: Option<&str>) -> Severity {
    match label.map(str::to_ascii_lowercase).as_deref() {
        Some("critical" | "page" | "error" | "high") => Severity::Critical,
        Some("info" | "informational" | "none" | "low") => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Checks and converts an Alertmanager payload; refuses it whole on the first problem.
pub fn parse_alertmanager(payload: &AlertmanagerPayload) -> Result<Vec<AlertUpdate>, String> {
    if payload.version != "4" {
        return Err(format!(
            "unsupported payload version {:?} (expected \"4\")",
            payload.version
        ));
    }
    if payload.group_key.is_empty() {
        return Err("groupKey is empty".to_owned());
    }
    if payload.alerts.is_empty() {
        return Err("alerts is empty".to_owned());
    }
    if payload.alerts.len() > MAX_ALERTS {
        return Err(format!("more than {MAX_ALERTS} alerts in one payload"));
    }
    payload
        .alerts
        .iter()
        .enumerate()
        .map(|(index, alert)| {
            let at = format!("alerts[{index}]");
            let valid_fingerprint = !alert.fingerprint.is_empty()
                && alert.fingerprint.len() <= 64
                && alert.fingerprint.chars().all(|c| c.is_ascii_alphanumeric());
            if !valid_fingerprint {
                return Err(format!("{at}.fingerprint must be letters and digits"));
            }
            let resource = Resource::parse(&alert.fingerprint)
                .map_err(|e| format!("{at}.fingerprint: {e}"))?;
            let name = alert
                .labels
                .get("alertname")
                .cloned()
                .unwrap_or_else(|| "alert".to_owned());
            let summary = alert
                .annotations
                .get("summary")
                .or_else(|| alert.annotations.get("description"))
                .cloned()
                .unwrap_or_default();
            let summary = summarise(&name, &alert.labels, &summary);
            match alert.status.as_str() {
                "firing" => Ok(AlertUpdate::Firing(Detection {
                    signal: Signal::External,
                    resource,
                    severity: severity_of(alert.labels.get("severity").map(String::as_str)),
                    value: 1.0,
                    threshold: 1.0,
                    source: Source::Alertmanager,
                    summary,
                    labels: alert.labels.clone(),
                })),
                "resolved" => Ok(AlertUpdate::Resolved {
                    fingerprint: Fingerprint::new(Signal::External, &resource),
                    summary,
                }),
                other => Err(format!(
                    "{at}.status must be \"firing\" or \"resolved\", not {other:?}"
                )),
            }
        })
        .collect()
}

/// Checks and converts a generic alert.
pub fn parse_generic(alert: &GenericAlert) -> Result<AlertUpdate, String> {
    let valid_name = !alert.name.is_empty()
        && alert.name.len() <= 100
        && alert
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
    if !valid_name {
        return Err("name must be 1 to 100 letters, digits, '_', '-' or '.'".to_owned());
    }
    let resource = Resource::parse(&format!("{}/{}", alert.name, alert.resource))
        .map_err(|e| format!("resource: {e}"))?;
    let summary = summarise(
        &alert.name,
        &alert.labels,
        alert.summary.as_deref().unwrap_or(""),
    );
    match alert.status.as_deref().unwrap_or("firing") {
        "firing" => Ok(AlertUpdate::Firing(Detection {
            signal: Signal::External,
            resource,
            severity: severity_of(alert.severity.as_deref()),
            value: alert.value.filter(|v| v.is_finite()).unwrap_or(1.0),
            threshold: 1.0,
            source: Source::Alertmanager,
            summary,
            labels: alert.labels.clone(),
        })),
        "resolved" => Ok(AlertUpdate::Resolved {
            fingerprint: Fingerprint::new(Signal::External, &resource),
            summary,
        }),
        other => Err(format!(
            "status must be \"firing\" or \"resolved\", not {other:?}"
        )),
    }
}

/// `HighErrorRate (instance=web-1:9100): error rate above 5 %`, bounded in length.
fn summarise(name: &str, labels: &BTreeMap<String, String>, text: &str) -> String {
    let context: Vec<String> = ["instance", "job", "service", "container", "pod"]
        .iter()
        .filter_map(|key| labels.get(*key).map(|v| format!("{key}={v}")))
        .collect();
    let mut summary = name.to_owned();
    if !context.is_empty() {
        summary.push_str(&format!(" ({})", context.join(", ")));
    }
    if !text.is_empty() {
        summary.push_str(": ");
        summary.push_str(text);
    }
    if summary.chars().count() > 500 {
        summary = summary.chars().take(499).collect::<String>() + "…";
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(json: serde_json::Value) -> Result<Vec<AlertUpdate>, String> {
        let payload: AlertmanagerPayload =
            serde_json::from_value(json).map_err(|e| e.to_string())?;
        parse_alertmanager(&payload)
    }

    fn alert(status: &str, fingerprint: &str) -> serde_json::Value {
        serde_json::json!({
            "status": status,
            "labels": {"alertname": "HighLatency", "severity": "critical", "instance": "web-1"},
            "annotations": {"summary": "p99 above 2 s"},
            "startsAt": "2026-11-28T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus/graph",
            "fingerprint": fingerprint
        })
    }

    #[test]
    fn firing_and_resolved_alerts_become_updates_keyed_by_fingerprint() {
        let updates = payload(serde_json::json!({
            "version": "4", "groupKey": "{}:{alertname=\"HighLatency\"}", "status": "firing",
            "receiver": "sentinel", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am", "truncatedAlerts": 0,
            "alerts": [alert("firing", "a1b2c3"), alert("resolved", "d4e5f6")]
        }))
        .unwrap();
        let AlertUpdate::Firing(d) = &updates[0] else {
            panic!("{updates:?}")
        };
        assert_eq!(d.fingerprint().as_str(), "external:a1b2c3");
        assert_eq!(d.severity, Severity::Critical);
        assert_eq!(d.summary, "HighLatency (instance=web-1): p99 above 2 s");
        assert_eq!(d.labels["alertname"], "HighLatency");
        assert_eq!(
            updates[1],
            AlertUpdate::Resolved {
                fingerprint: Fingerprint::parse("external:d4e5f6").unwrap(),
                summary: "HighLatency (instance=web-1): p99 above 2 s".into()
            }
        );
    }

    #[test]
    fn malformed_payloads_are_refused_whole_with_the_reason() {
        let base = |alerts: serde_json::Value| serde_json::json!({"version": "4", "groupKey": "g", "alerts": alerts});
        let cases = [
            (
                serde_json::json!({"version": "3", "groupKey": "g", "alerts": [alert("firing", "a")]}),
                "version",
            ),
            (base(serde_json::json!([])), "empty"),
            (
                base(serde_json::json!([
                    alert("firing", "a"),
                    alert("pending", "b")
                ])),
                "alerts[1].status",
            ),
            (
                base(serde_json::json!([alert("firing", "../etc")])),
                "alerts[0].fingerprint",
            ),
            (
                serde_json::json!({"version": "4", "alerts": []}),
                "groupKey",
            ),
            (
                base(serde_json::json!([{"status": "firing"}])),
                "fingerprint",
            ),
        ];
        for (json, says) in cases {
            let err = payload(json.clone()).expect_err(&json.to_string());
            assert!(err.contains(says), "{json}: {err:?} does not say {says:?}");
        }
    }

    #[test]
    fn generic_alerts_are_keyed_by_name_and_resource() {
        let alert: GenericAlert = serde_json::from_value(serde_json::json!({
            "name": "QueueBacklog", "resource": "orders", "severity": "warning",
            "summary": "12k messages waiting", "value": 12000
        }))
        .unwrap();
        let AlertUpdate::Firing(d) = parse_generic(&alert).unwrap() else {
            panic!()
        };
        assert_eq!(d.fingerprint().as_str(), "external:QueueBacklog/orders");
        assert_eq!(d.value, 12000.0);
        let bad: GenericAlert =
            serde_json::from_value(serde_json::json!({"name": "a b", "resource": "x"})).unwrap();
        assert!(parse_generic(&bad).is_err());
    }
}
