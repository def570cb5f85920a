//! Detect: decide which observations are breaches (SPEC §2).
//!
//! In: observations, thresholds, `now`. Out: [`Detection`]s for `intake`. Pure.
//!
//! This build holds the part every alert source shares: the level a value breaches, and the
//! test alerts of `POST /api/trigger-alert` / `/sentinel trigger`. Hysteresis over samples
//! arrives with the monitoring work.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use crate::config::{Threshold, Thresholds};
use crate::domain::{Detection, Resource, Severity, Signal, Source};

/// The severity a value breaches, and the level it breaches, if any.
pub fn breach(value: f64, threshold: &Threshold) -> Option<(Severity, f64)> {
    if let Some(critical) = threshold.critical {
        if value >= critical {
            return Some((Severity::Critical, critical));
        }
    }
    match threshold.warning {
        Some(warning) if value >= warning => Some((Severity::Warning, warning)),
        _ => None,
    }
}

/// A test alert people can inject to see the whole loop work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Memory,
    Cpu,
    Disk,
    Latency,
    Container,
    Sandbox,
}

impl Scenario {
    pub const ALL: [Scenario; 6] = [
        Scenario::Memory,
        Scenario::Cpu,
        Scenario::Disk,
        Scenario::Latency,
        Scenario::Container,
        Scenario::Sandbox,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Memory => "memory",
            Scenario::Cpu => "cpu",
            Scenario::Disk => "disk",
            Scenario::Latency => "latency",
            Scenario::Container => "container",
            Scenario::Sandbox => "sandbox",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario {0:?}: expected one of memory, cpu, disk, latency, container, sandbox")]
pub struct UnknownScenario(pub String);

impl FromStr for Scenario {
    type Err = UnknownScenario;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scenario::ALL
            .into_iter()
            .find(|scenario| scenario.as_str() == s)
            .ok_or_else(|| UnknownScenario(s.to_owned()))
    }
}

/// The resource test containers are reported under.
pub const TEST_CONTAINER: &str = "sentinel-test";

/// The detection a test alert stands for: a value just past the highest configured level of
/// the scenario's signal, so it opens an incident exactly as a real breach would.
pub fn test_alert(scenario: Scenario, thresholds: &Thresholds) -> Detection {
    let (signal, resource, threshold, cap) = match scenario {
        Scenario::Memory => (
            Signal::HostMemory,
            "host",
            &thresholds.host_memory,
            Some(100.0),
        ),
        Scenario::Cpu => (Signal::HostCpu, "host", &thresholds.host_cpu, Some(100.0)),
        Scenario::Disk => (Signal::Disk, "/", &thresholds.disk, Some(100.0)),
        Scenario::Latency => (
            Signal::NetworkLatency,
            "host",
            &thresholds.network_latency,
            None,
        ),
        Scenario::Sandbox => (
            Signal::SandboxSize,
            "sandbox",
            &thresholds.sandbox_size_mb,
            None,
        ),
        Scenario::Container => {
            return Detection {
                signal: Signal::ContainerDown,
                resource: Resource::parse(TEST_CONTAINER).expect("a valid name"),
                severity: Severity::Critical,
                value: 1.0,
                threshold: 1.0,
                source: Source::Trigger,
                summary: format!("test alert: container {TEST_CONTAINER} is down (exited)"),
                labels: test_labels(scenario),
            };
        }
    };
    let level = threshold.critical.or(threshold.warning).unwrap_or(0.0);
    let mut value = level * 1.05 + 1.0;
    if let Some(cap) = cap {
        value = value.min(cap).max(level);
    }
    let value = (value * 10.0).round() / 10.0;
    let (severity, level) = breach(value, threshold).unwrap_or((Severity::Warning, level));
    let unit = signal.unit();
    Detection {
        signal,
        resource: Resource::parse(resource).expect("a valid name"),
        severity,
        value,
        threshold: level,
        source: Source::Trigger,
        summary: format!(
            "test alert: {signal} on {resource} at {value}{unit} (threshold {level}{unit})"
        ),
        labels: test_labels(scenario),
    }
}

fn test_labels(scenario: Scenario) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("scenario".to_owned(), scenario.as_str().to_owned()),
        ("test_alert".to_owned(), "true".to_owned()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn breach_picks_the_highest_level_reached() {
        let t = Threshold {
            warning: Some(60.0),
            critical: Some(90.0),
        };
        assert_eq!(breach(59.9, &t), None);
        assert_eq!(breach(60.0, &t), Some((Severity::Warning, 60.0)));
        assert_eq!(breach(90.0, &t), Some((Severity::Critical, 90.0)));
        let critical_only = Threshold {
            warning: None,
            critical: Some(95.0),
        };
        assert_eq!(breach(94.0, &critical_only), None);
        assert_eq!(
            breach(96.0, &critical_only),
            Some((Severity::Critical, 95.0))
        );
    }

    #[test]
    fn every_test_alert_breaches_its_threshold() {
        let thresholds = Settings::defaults().thresholds;
        for scenario in Scenario::ALL {
            let d = test_alert(scenario, &thresholds);
            assert!(d.value >= d.threshold, "{scenario}: {d:?}");
            assert_eq!(d.source, Source::Trigger);
            assert_eq!(d.labels["scenario"], scenario.as_str());
            assert_eq!(scenario.as_str().parse::<Scenario>().unwrap(), scenario);
        }
        let memory = test_alert(Scenario::Memory, &thresholds);
        assert_eq!(memory.fingerprint().as_str(), "host_memory:host");
        assert_eq!(memory.severity, Severity::Critical);
        assert!(memory.value <= 100.0);
        let sandbox = test_alert(Scenario::Sandbox, &thresholds);
        assert_eq!(sandbox.severity, Severity::Warning);
        assert!("nuke".parse::<Scenario>().is_err());
    }
}
