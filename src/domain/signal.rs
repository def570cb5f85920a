//! Signals Sentinel watches (SPEC §2) and how severe a breach of one is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One kind of thing that is measured. Names are fixed by SPEC §11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    HostCpu,
    HostMemory,
    Disk,
    NetworkLatency,
    ContainerDown,
    ContainerMemory,
    SandboxSize,
    External,
}

impl Signal {
    pub const ALL: [Signal; 8] = [
        Signal::HostCpu,
        Signal::HostMemory,
        Signal::Disk,
        Signal::NetworkLatency,
        Signal::ContainerDown,
        Signal::ContainerMemory,
        Signal::SandboxSize,
        Signal::External,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::HostCpu => "host_cpu",
            Signal::HostMemory => "host_memory",
            Signal::Disk => "disk",
            Signal::NetworkLatency => "network_latency",
            Signal::ContainerDown => "container_down",
            Signal::ContainerMemory => "container_memory",
            Signal::SandboxSize => "sandbox_size",
            Signal::External => "external",
        }
    }

    /// The unit its values and thresholds are in, for people.
    pub fn unit(self) -> &'static str {
        match self {
            Signal::HostCpu | Signal::HostMemory | Signal::Disk | Signal::ContainerMemory => "%",
            Signal::NetworkLatency => "ms",
            Signal::SandboxSize => "MB",
            Signal::ContainerDown | Signal::External => "",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal {0:?}")]
pub struct UnknownSignal(pub String);

impl FromStr for Signal {
    type Err = UnknownSignal;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Signal::ALL
            .into_iter()
            .find(|signal| signal.as_str() == s)
            .ok_or_else(|| UnknownSignal(s.to_owned()))
    }
}

/// How bad a breach is. Ordered: `Info < Warning < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a value came from (SPEC §11 `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Prometheus,
    Local,
    Docker,
    Sandbox,
    Alertmanager,
    /// Injected with `POST /api/trigger-alert` or `/sentinel trigger`.
    Trigger,
    /// Computed from other readings, not measured: `network_latency` from the traffic.
    Estimate,
    /// Container memory from cAdvisor through Prometheus, when Docker cannot be asked.
    Cadvisor,
}

impl Source {
    /// The name `/api/status` and incident JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Prometheus => "prometheus",
            Source::Local => "local",
            Source::Docker => "docker",
            Source::Sandbox => "sandbox",
            Source::Alertmanager => "alertmanager",
            Source::Trigger => "trigger",
            Source::Estimate => "estimate",
            Source::Cadvisor => "cadvisor",
        }
    }
}

/// One signal's latest reading, as `/api/status` shows it (SPEC §11).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SignalReading {
    pub signal: String,
    pub resource: String,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    /// `ok`, `breached`, `unavailable`, or `pending` before the signal's first reading.
    pub state: String,
    pub source: String,
    /// Why there is no value (`Docker: connection refused`), or a note on the value (`no
    /// containers to watch`), worded for people. Left out when there is nothing to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_round_trip_through_text_and_json() {
        for signal in Signal::ALL {
            assert_eq!(signal.as_str().parse::<Signal>().unwrap(), signal);
            let json = serde_json::to_string(&signal).unwrap();
            assert_eq!(json, format!("\"{}\"", signal.as_str()));
        }
        assert!("cpu".parse::<Signal>().is_err());
    }

    #[test]
    fn source_names_are_their_json() {
        for source in [
            Source::Prometheus,
            Source::Local,
            Source::Docker,
            Source::Sandbox,
            Source::Alertmanager,
            Source::Trigger,
            Source::Estimate,
            Source::Cadvisor,
        ] {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{}\"", source.as_str()));
        }
    }

    #[test]
    fn severities_are_ordered() {
        assert!(Severity::Info < Severity::Warning);
        assert!(Severity::Warning < Severity::Critical);
    }
}
