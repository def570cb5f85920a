//! The facts of one analysis, each with an id to be cited by (SPEC §12.4 "Evidence").
//!
//! In: an incident and its [`Evidence`]. Out: a [`Catalogue`]: [`EvidenceItem`]s
//! (`metric-1`, `docker-2`, `file-1`, `event-1`, `change-1`, …) and, for the analyzers, which
//! [`Fact`] each one states. Both analyzers see the same catalogue: the rules cite facts by
//! what they are ([`Catalogue::cite`]), the LLM is shown the items and must cite their ids,
//! which `analyze::check_citations` holds it to. Pure and deterministic: the same incident
//! and evidence give the same ids.

use crate::domain::{CleanupDir, EvidenceItem, EvidenceKind, Incident, Signal, Source};
use crate::pipeline::analyze::{ChangesRead, Evidence};
use crate::runtime::ContainerSample;

/// The most facts one analysis lists.
pub const MAX_FACTS: usize = 40;
/// Labels and sandbox directories listed at most.
const MAX_LABELS: usize = 10;
const MAX_DIRS: usize = 5;
/// Containers by memory listed for host and container incidents.
const TOP_CONTAINERS: usize = 3;

const MB: f64 = 1e6;

pub(crate) fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / MB)
}

/// What an item states, so the rules can cite it without knowing its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// The incident's own reading (an external alert: its own words).
    Reading,
    /// A label of the incident (an alert's label, an input of a computed value).
    Label(String),
    /// How network latency is estimated from traffic.
    LatencyFormula,
    /// A container's memory against its limit, or its state when it has no reading.
    Memory(String),
    /// A container's state (and exit code).
    State(String),
    /// A container's restarts and restart policy.
    Restarts(String),
    /// A container's health check verdict.
    Health(String),
    /// `sentinel.protected=true` on a container.
    Protected(String),
    /// The container is not in the inventory Docker reported.
    Missing(String),
    /// Docker could not be asked about containers.
    DockerUnavailable,
    /// The sandbox's total size.
    SandboxTotal,
    /// One of the sandbox's largest directories.
    SandboxDir(String),
    /// What logs/, tmp/ and cache/ hold together.
    Cleanable,
    /// Whether the sandbox is on the incident's mount.
    Mount(String),
    /// The n-th recent change (0-based, as in `Incident::changes`).
    Change(usize),
    /// Docker recorded no change to the target in the window.
    NoChanges,
    /// Docker's events could not be read.
    ChangesUnknown,
}

/// The facts of one analysis, in order, with their items.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalogue {
    entries: Vec<(Fact, EvidenceItem)>,
}

impl Catalogue {
    /// Every fact worth stating about `incident` from `evidence`.
    pub fn build(incident: &Incident, evidence: &Evidence) -> Catalogue {
        let mut catalogue = Catalogue::default();
        catalogue.gather(incident, evidence);
        catalogue
    }

    fn push(&mut self, fact: Fact, kind: EvidenceKind, text: String) {
        if self.entries.len() >= MAX_FACTS || self.entries.iter().any(|(f, _)| *f == fact) {
            return;
        }
        let n = self
            .entries
            .iter()
            .filter(|(_, item)| item.kind == kind)
            .count();
        let id = format!("{kind}-{}", n + 1);
        self.entries.push((fact, EvidenceItem { id, kind, text }));
    }

    /// The items, in order.
    pub fn items(&self) -> Vec<EvidenceItem> {
        self.entries.iter().map(|(_, item)| item.clone()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The id of the item stating `fact`, if there is one.
    pub fn id(&self, fact: &Fact) -> Option<&str> {
        self.entries
            .iter()
            .find(|(f, _)| f == fact)
            .map(|(_, item)| item.id.as_str())
    }

    /// The ids of those of `facts` the catalogue states, in order, each once.
    pub fn cite(&self, facts: &[Fact]) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for fact in facts {
            if let Some(id) = self.id(fact) {
                if !ids.iter().any(|known| known == id) {
                    ids.push(id.to_owned());
                }
            }
        }
        ids
    }

    /// The item with this id.
    pub fn get(&self, id: &str) -> Option<&EvidenceItem> {
        self.entries
            .iter()
            .map(|(_, item)| item)
            .find(|item| item.id == id)
    }

    /// The facts stating recent changes, in order.
    pub fn change_facts(&self) -> Vec<Fact> {
        self.entries
            .iter()
            .filter(|(fact, _)| matches!(fact, Fact::Change(_)))
            .map(|(fact, _)| fact.clone())
            .collect()
    }

    fn gather(&mut self, incident: &Incident, evidence: &Evidence) {
        self.reading(incident);
        let labels_kind = match incident.source {
            Source::Estimate | Source::Prometheus => EvidenceKind::Metric,
            _ => EvidenceKind::Event,
        };
        for (key, value) in incident.labels.iter().take(MAX_LABELS) {
            self.push(
                Fact::Label(key.clone()),
                labels_kind,
                format!("label {key}={value}"),
            );
        }
        if incident.signal == Signal::NetworkLatency && incident.source == Source::Estimate {
            self.push(
                Fact::LatencyFormula,
                EvidenceKind::Metric,
                "latency estimated as 25 + 2 × MB/s + 100 × errors/s of network traffic (an \
                 estimate, not a measurement)"
                    .to_owned(),
            );
        }
        let resource = incident.resource.as_str();
        let container_signal = matches!(
            incident.signal,
            Signal::ContainerDown | Signal::ContainerMemory
        );
        if container_signal || matches!(incident.signal, Signal::HostMemory | Signal::HostCpu) {
            if !evidence.docker_available {
                self.push(
                    Fact::DockerUnavailable,
                    EvidenceKind::Docker,
                    "Docker could not be read, so which containers run and what they use is \
                     unknown"
                        .to_owned(),
                );
            }
            if container_signal && evidence.docker_available {
                match evidence.container(resource) {
                    Some(target) => self.container(target),
                    None => self.push(
                        Fact::Missing(resource.to_owned()),
                        EvidenceKind::Docker,
                        format!("{resource} is not in the inventory Docker reported"),
                    ),
                }
            }
            for c in evidence.top_memory(TOP_CONTAINERS) {
                self.push(
                    Fact::Memory(c.name.clone()),
                    EvidenceKind::Metric,
                    memory_line(c),
                );
            }
        }
        if matches!(incident.signal, Signal::Disk | Signal::SandboxSize) {
            self.sandbox(incident, evidence);
        }
        self.changes(resource, evidence);
    }

    fn reading(&mut self, incident: &Incident) {
        let resource = incident.resource.as_str();
        let (kind, text) = match incident.signal {
            Signal::External => (
                EvidenceKind::Event,
                format!("the alert on {resource} says: {}", incident.summary),
            ),
            Signal::ContainerDown => (
                EvidenceKind::Docker,
                format!("{resource} is down: {}", incident.summary),
            ),
            signal => {
                let unit = match signal.unit() {
                    "%" => " %".to_owned(),
                    unit => format!(" {unit}"),
                };
                (
                    EvidenceKind::Metric,
                    format!(
                        "{} of {resource} is {}{unit} against a threshold of {}{unit} (from \
                         {}, seen {} {})",
                        signal.as_str().replace('_', " "),
                        round(incident.value),
                        round(incident.threshold),
                        incident.source.as_str(),
                        incident.occurrences,
                        if incident.occurrences == 1 {
                            "time"
                        } else {
                            "times"
                        },
                    ),
                )
            }
        };
        self.push(Fact::Reading, kind, text);
    }

    fn container(&mut self, c: &ContainerSample) {
        let name = &c.name;
        let state = match c.exit_code {
            Some(code) if c.state != "running" => {
                format!("{name} is {} (exit code {code})", c.state)
            }
            _ => format!("{name} is {}", c.state),
        };
        self.push(Fact::State(name.clone()), EvidenceKind::Docker, state);
        self.push(
            Fact::Restarts(name.clone()),
            EvidenceKind::Docker,
            format!(
                "{name} was restarted {} {} (restart policy {})",
                c.restart_count,
                if c.restart_count == 1 {
                    "time"
                } else {
                    "times"
                },
                c.restart_policy
            ),
        );
        if let Some(health) = &c.health {
            self.push(
                Fact::Health(name.clone()),
                EvidenceKind::Docker,
                format!("{name}'s health check says {health}"),
            );
        }
        if c.memory_used_bytes.is_some() {
            self.push(
                Fact::Memory(name.clone()),
                EvidenceKind::Metric,
                memory_line(c),
            );
        }
        if c.protected() {
            self.push(
                Fact::Protected(name.clone()),
                EvidenceKind::Docker,
                format!("{name} is labelled sentinel.protected=true: any fix needs an admin"),
            );
        }
    }

    fn sandbox(&mut self, incident: &Incident, evidence: &Evidence) {
        if let Some(total) = evidence.sandbox_bytes {
            self.push(
                Fact::SandboxTotal,
                EvidenceKind::File,
                format!("the sandbox holds {} in all", mb(total)),
            );
        }
        for (name, bytes) in evidence.sandbox_dirs.iter().take(MAX_DIRS) {
            self.push(
                Fact::SandboxDir(name.clone()),
                EvidenceKind::File,
                format!("the sandbox's {name}/ holds {}", mb(*bytes)),
            );
        }
        self.push(
            Fact::Cleanable,
            EvidenceKind::File,
            format!(
                "the sandbox's logs/, tmp/ and cache/ hold {} that can be cleaned",
                mb(cleanable_bytes(evidence))
            ),
        );
        if incident.signal == Signal::Disk {
            let mount = incident.resource.as_str();
            let on = evidence.sandbox_mounts.iter().any(|m| m == mount);
            self.push(
                Fact::Mount(mount.to_owned()),
                EvidenceKind::File,
                if on {
                    format!("the sandbox is on mount {mount}")
                } else {
                    format!("the sandbox is not on mount {mount}")
                },
            );
        }
    }

    fn changes(&mut self, target: &str, evidence: &Evidence) {
        match &evidence.changes {
            ChangesRead::NotRead => {}
            ChangesRead::Unknown(why) => self.push(
                Fact::ChangesUnknown,
                EvidenceKind::Docker,
                format!(
                    "Docker's events could not be read ({why}), so whether {target} changed \
                     just before the incident is unknown"
                ),
            ),
            ChangesRead::Read { window, changes } if changes.is_empty() => self.push(
                Fact::NoChanges,
                EvidenceKind::Event,
                format!(
                    "Docker recorded no create, destroy, rename, update or new-image start of \
                     {target} in the {} before the incident",
                    humantime::format_duration(*window)
                ),
            ),
            ChangesRead::Read { changes, .. } => {
                for (i, change) in changes.iter().enumerate() {
                    self.push(Fact::Change(i), EvidenceKind::Change, change.detail.clone());
                }
            }
        }
    }
}

/// `72.4`, `60`: a reading as people write it.
fn round(value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}")
    } else {
        format!("{rounded:.1}")
    }
}

/// `web-1 uses 61.2 MB (95.6 % of its limit)`, or its state without a reading.
pub(crate) fn memory_line(c: &ContainerSample) -> String {
    match (c.memory_used_bytes, c.memory_percent()) {
        (Some(used), Some(percent)) => {
            format!("{} uses {} ({percent:.1} % of its limit)", c.name, mb(used))
        }
        _ => format!("{} ({})", c.name, c.state),
    }
}

/// What the sandbox's logs/, tmp/ and cache/ hold together.
pub(crate) fn cleanable_bytes(evidence: &Evidence) -> u64 {
    evidence
        .sandbox_dirs
        .iter()
        .filter(|(name, _)| CleanupDir::ALL.iter().any(|d| d.as_str() == name))
        .map(|(_, bytes)| bytes)
        .sum()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::domain::{Change, ChangeKind, Detection, IncidentId, Resource, Severity, Timestamp};

    fn incident(signal: Signal, resource: &str) -> Incident {
        let detection = Detection {
            signal,
            resource: Resource::parse(resource).unwrap(),
            severity: Severity::Warning,
            value: 72.44,
            threshold: 60.0,
            source: Source::Docker,
            summary: "s".into(),
            labels: BTreeMap::new(),
        };
        Incident::open(
            IncidentId::generate(),
            &detection,
            Timestamp::from_unix_millis(0),
        )
    }

    fn web(used: u64) -> ContainerSample {
        ContainerSample {
            name: "web-1".into(),
            id: "id".into(),
            state: "running".into(),
            health: None,
            restart_count: 2,
            exit_code: Some(0),
            restart_policy: "always".into(),
            labels: BTreeMap::new(),
            memory_used_bytes: Some(used),
            memory_limit_bytes: Some(100_000_000),
        }
    }

    #[test]
    fn ids_are_numbered_per_kind_and_name_no_monitored_text() {
        let evidence = Evidence {
            containers: vec![web(72_000_000)],
            docker_available: true,
            changes: ChangesRead::Read {
                window: Duration::from_secs(1800),
                changes: vec![Change {
                    at: Timestamp::from_unix_millis(0),
                    kind: ChangeKind::Create,
                    detail: "web-1 was created".into(),
                }],
            },
            ..Evidence::default()
        };
        let catalogue = Catalogue::build(&incident(Signal::ContainerMemory, "web-1"), &evidence);
        let ids: Vec<String> = catalogue.items().into_iter().map(|i| i.id).collect();
        assert_eq!(
            ids,
            ["metric-1", "docker-1", "docker-2", "metric-2", "change-1"]
        );
        assert_eq!(catalogue.id(&Fact::Reading), Some("metric-1"));
        assert_eq!(
            catalogue.get("metric-1").unwrap().text,
            "container memory of web-1 is 72.4 % against a threshold of 60 % (from docker, seen 1 time)"
        );
        assert_eq!(
            catalogue.cite(&[
                Fact::Reading,
                Fact::Memory("web-1".into()),
                Fact::Reading,
                Fact::SandboxTotal
            ]),
            ["metric-1", "metric-2"]
        );
        assert_eq!(catalogue.change_facts(), [Fact::Change(0)]);
    }

    #[test]
    fn unread_and_empty_changes_are_facts_too() {
        let base = Evidence {
            containers: vec![web(10)],
            docker_available: true,
            ..Evidence::default()
        };
        let down = incident(Signal::ContainerDown, "web-1");
        let unknown = Evidence {
            changes: ChangesRead::Unknown("Docker: connection refused".into()),
            ..base.clone()
        };
        let catalogue = Catalogue::build(&down, &unknown);
        let id = catalogue.id(&Fact::ChangesUnknown).expect("stated");
        assert!(catalogue
            .get(id)
            .unwrap()
            .text
            .contains("connection refused"));
        let none = Evidence {
            changes: ChangesRead::Read {
                window: Duration::from_secs(1800),
                changes: vec![],
            },
            ..base
        };
        let catalogue = Catalogue::build(&down, &none);
        let id = catalogue.id(&Fact::NoChanges).expect("stated");
        assert!(catalogue
            .get(id)
            .unwrap()
            .text
            .ends_with("in the 30m before the incident"));
    }
}
