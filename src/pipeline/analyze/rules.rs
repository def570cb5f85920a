//! The rules analyzer: deterministic, no network, always available (SPEC §3).
//!
//! In: an incident and its evidence. Out: an [`Analysis`]: per signal, a root cause naming
//! the facts it rests on (top memory containers, the largest sandbox directories, which
//! mount, the latency inputs), a catalogue action with parameters, a risk and a confidence.
//! Pure. `tests/it/decisions.rs` replays a fixture set through it and the policy.

use crate::domain::{ActionPlan, CleanupDir, Incident, Risk, Signal, Source};
use crate::pipeline::analyze::facts::{cleanable_bytes, mb, memory_line, Catalogue, Fact};
use crate::pipeline::analyze::{explain_changes, Analysis, Evidence};

struct Conclusion {
    root_cause: String,
    plan: ActionPlan,
    risk: Risk,
    confidence: f64,
    /// The facts the root cause rests on, beyond the incident's own reading (always cited).
    evidence: Vec<Fact>,
}

fn notify(root_cause: String, confidence: f64, evidence: Vec<Fact>) -> Conclusion {
    Conclusion {
        root_cause,
        plan: ActionPlan::NotifyOnly,
        risk: Risk::Low,
        confidence,
        evidence,
    }
}

pub fn analyze(incident: &Incident, evidence: &Evidence) -> Analysis {
    let value = incident.value;
    let resource = incident.resource.as_str();
    let conclusion = match incident.signal {
        Signal::HostMemory => host_memory(value, evidence),
        Signal::HostCpu => notify(
            format!(
                "host CPU at {value:.1} %; no catalogue action lowers CPU safely, so people \
                 should look at the busiest processes"
            ),
            0.4,
            evidence
                .top_memory(3)
                .iter()
                .map(|c| Fact::Memory(c.name.clone()))
                .collect(),
        ),
        Signal::Disk => disk(resource, value, evidence),
        Signal::NetworkLatency => network_latency(incident),
        Signal::ContainerDown => container_down(resource, evidence),
        Signal::ContainerMemory => container_memory(resource, value, incident, evidence),
        Signal::SandboxSize => sandbox(value, evidence, None),
        Signal::External => notify(
            format!("external alert: {}", incident.summary),
            0.3,
            incident
                .labels
                .keys()
                .take(10)
                .map(|k| Fact::Label(k.clone()))
                .collect(),
        ),
    };
    let catalogue = Catalogue::build(incident, evidence);
    let mut facts = vec![Fact::Reading];
    facts.extend(conclusion.evidence);
    if conclusion.plan.container().is_some() {
        facts.push(Fact::ChangesUnknown);
    }
    let mut analysis = Analysis {
        root_cause: conclusion.root_cause,
        proposed_action: conclusion.plan.to_proposed(),
        risk_assessment: conclusion.risk,
        confidence: conclusion.confidence,
        cited: catalogue.cite(&facts),
        evidence: catalogue.items(),
        analyzer: "rules".to_owned(),
    };
    explain_changes(
        &mut analysis,
        &conclusion.plan,
        incident,
        evidence,
        &catalogue,
    );
    analysis
}

fn host_memory(value: f64, evidence: &Evidence) -> Conclusion {
    let top = evidence.top_memory(3);
    let facts: Vec<Fact> = top.iter().map(|c| Fact::Memory(c.name.clone())).collect();
    // Host memory allows no automatic action (`analyze::allowed_actions`): restarting the
    // largest container is a person's call, so the rules name it and tell people.
    match top.first() {
        Some(biggest) if biggest.memory_used_bytes.unwrap_or(0) >= 100_000_000 => notify(
            format!(
                "host memory at {value:.1} %; the largest container is {}; restarting it \
                 would free that memory, which is for a person to decide",
                memory_line(biggest)
            ),
            0.6,
            facts,
        ),
        _ if !evidence.docker_available => notify(
            format!(
                "host memory at {value:.1} %; Docker could not be read, so which containers \
                 hold the memory is unknown"
            ),
            0.3,
            vec![Fact::DockerUnavailable],
        ),
        _ => notify(
            format!(
                "host memory at {value:.1} % and no container holds a large share of it; \
                 the memory is used outside containers"
            ),
            0.4,
            facts,
        ),
    }
}

/// Network latency names where its number came from: a Prometheus query (measured), the
/// traffic formula (an estimate, with its inputs), or neither (a test alert).
fn network_latency(incident: &Incident) -> Conclusion {
    let value = incident.value;
    let label = |key: &str| incident.labels.get(key).map(String::as_str);
    match (
        incident.source,
        label("network_mb_per_s"),
        label("network_errors_per_s"),
    ) {
        (Source::Estimate, Some(mb), Some(errors)) => notify(
            format!(
                "network latency estimated at {value:.0} ms from {mb} MB/s of traffic and \
                 {errors} errors/s (25 + 2 × MB/s + 100 × errors/s; an estimate, not a \
                 measurement); no catalogue action applies"
            ),
            0.5,
            vec![
                Fact::Label("network_mb_per_s".to_owned()),
                Fact::Label("network_errors_per_s".to_owned()),
                Fact::LatencyFormula,
            ],
        ),
        (Source::Prometheus, _, _) => notify(
            format!(
                "network latency measured at {value:.0} ms by the [prometheus] \
                 network_latency query; no catalogue action applies"
            ),
            0.5,
            vec![Fact::Label("query".to_owned())],
        ),
        _ => notify(
            format!(
                "network latency at {value:.0} ms; no traffic figures were recorded with it \
                 ({}), so there is nothing to go on; no catalogue action applies",
                if incident.synthetic {
                    "a test alert"
                } else {
                    "its source sent none"
                }
            ),
            0.3,
            Vec::new(),
        ),
    }
}

fn disk(mount: &str, value: f64, evidence: &Evidence) -> Conclusion {
    let cleanable = cleanable_bytes(evidence);
    if !evidence.sandbox_mounts.iter().any(|m| m == mount) {
        return notify(
            format!(
                "disk {mount} at {value:.1} %; the sandbox is not on this mount, so cleaning \
                 it would not free space here"
            ),
            0.4,
            vec![Fact::Mount(mount.to_owned()), Fact::Cleanable],
        );
    }
    if cleanable >= 10_000_000 {
        let mut conclusion = sandbox(value, evidence, Some(mount));
        conclusion.root_cause = format!(
            "disk {mount} at {value:.1} %; the sandbox's logs/, tmp/ and cache/ hold {} that \
             can be cleaned",
            mb(cleanable)
        );
        conclusion
    } else {
        notify(
            format!(
                "disk {mount} at {value:.1} %; the sandbox holds little that can be cleaned, \
                 so the space is used elsewhere"
            ),
            0.4,
            vec![Fact::Mount(mount.to_owned()), Fact::Cleanable],
        )
    }
}

fn sandbox(value: f64, evidence: &Evidence, mount: Option<&str>) -> Conclusion {
    let mut facts: Vec<Fact> = vec![Fact::SandboxTotal];
    facts.extend(
        evidence
            .sandbox_dirs
            .iter()
            .take(5)
            .map(|(name, _)| Fact::SandboxDir(name.clone())),
    );
    facts.push(Fact::Cleanable);
    if let Some(mount) = mount {
        facts.push(Fact::Mount(mount.to_owned()));
    }
    let dirs: Vec<CleanupDir> = CleanupDir::ALL
        .into_iter()
        .filter(|d| {
            evidence
                .sandbox_dirs
                .iter()
                .any(|(name, bytes)| name == d.as_str() && *bytes > 0)
        })
        .collect();
    if dirs.is_empty() {
        return notify(
            format!(
                "the sandbox holds {value:.1} MB, none of it in logs/, tmp/ or cache/; \
                 Sentinel never touches data/"
            ),
            0.5,
            facts,
        );
    }
    let largest = evidence
        .sandbox_dirs
        .iter()
        .find(|(name, _)| dirs.iter().any(|d| d.as_str() == name))
        .map(|(name, bytes)| format!("{name}/ ({})", mb(*bytes)))
        .unwrap_or_default();
    Conclusion {
        root_cause: format!(
            "the sandbox holds {value:.1} MB; the largest cleanable directory is {largest}"
        ),
        plan: ActionPlan::SandboxCleanup { dirs },
        risk: Risk::Low,
        confidence: 0.8,
        evidence: facts,
    }
}

fn container_down(name: &str, evidence: &Evidence) -> Conclusion {
    if !evidence.docker_available {
        return notify(
            format!("container {name} is down and Docker cannot be asked about it"),
            0.2,
            vec![Fact::DockerUnavailable],
        );
    }
    let Some(container) = evidence.container(name) else {
        return notify(
            format!("container {name} is down and no longer exists"),
            0.5,
            vec![Fact::Missing(name.to_owned())],
        );
    };
    let facts = vec![
        Fact::State(name.to_owned()),
        Fact::Restarts(name.to_owned()),
        Fact::Health(name.to_owned()),
        Fact::Protected(name.to_owned()),
    ];
    match container.state.as_str() {
        "exited" | "created" | "dead" => Conclusion {
            root_cause: format!(
                "container {name} is {} (exit code {}) and is not being restarted",
                container.state,
                container.exit_code.unwrap_or(0)
            ),
            plan: ActionPlan::ContainerStart {
                container: name.to_owned(),
            },
            risk: if container.state == "dead" { Risk::High } else { Risk::Medium },
            confidence: 0.7,
            evidence: facts,
        },
        "restarting" if container.restart_count >= 5 => notify(
            format!(
                "container {name} is crash-looping ({} restarts); restarting it again will not help",
                container.restart_count
            ),
            0.6,
            facts,
        ),
        _ => Conclusion {
            root_cause: format!(
                "container {name} is {}{}",
                container.state,
                container
                    .health
                    .as_deref()
                    .map(|h| format!(" and {h}"))
                    .unwrap_or_default()
            ),
            plan: ActionPlan::ContainerRestart {
                container: name.to_owned(),
            },
            risk: Risk::Medium,
            confidence: 0.6,
            evidence: facts,
        },
    }
}

fn container_memory(
    name: &str,
    value: f64,
    incident: &Incident,
    evidence: &Evidence,
) -> Conclusion {
    if evidence.container(name).is_none() {
        return notify(
            format!("container {name} uses {value:.1} % of its memory limit and is gone now"),
            0.3,
            vec![Fact::Missing(name.to_owned())],
        );
    }
    let facts = vec![
        Fact::Memory(name.to_owned()),
        Fact::Restarts(name.to_owned()),
        Fact::Protected(name.to_owned()),
    ];
    let factor = if incident.severity >= crate::domain::Severity::Critical {
        2.0
    } else {
        1.5
    };
    Conclusion {
        root_cause: format!(
            "container {name} uses {value:.1} % of its memory limit; raising the limit \
             {factor}× gives it room without a restart"
        ),
        plan: ActionPlan::ContainerMemoryLimit {
            container: name.to_owned(),
            factor,
        },
        risk: Risk::Medium,
        confidence: 0.7,
        evidence: facts,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::{Detection, IncidentId, Resource, Severity, Timestamp};

    fn incident(signal: Signal, source: Source, labels: &[(&str, &str)]) -> Incident {
        let detection = Detection {
            signal,
            resource: Resource::host(),
            severity: Severity::Warning,
            value: 240.0,
            threshold: 200.0,
            source,
            summary: "s".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        };
        Incident::open(IncidentId::generate(), &detection, Timestamp::now())
    }

    #[test]
    fn latency_root_causes_say_where_the_number_came_from() {
        let estimated = incident(
            Signal::NetworkLatency,
            Source::Estimate,
            &[("network_mb_per_s", "107.5"), ("network_errors_per_s", "0")],
        );
        let cause = analyze(&estimated, &Evidence::default()).root_cause;
        assert!(
            cause.contains("estimated at 240 ms from 107.5 MB/s"),
            "{cause}"
        );
        assert!(cause.contains("0 errors/s") && cause.contains("not a measurement"));

        let measured = incident(
            Signal::NetworkLatency,
            Source::Prometheus,
            &[("query", "1000 * probe_duration_seconds")],
        );
        let cause = analyze(&measured, &Evidence::default()).root_cause;
        assert!(cause.contains("measured at 240 ms"), "{cause}");

        let test_alert = incident(Signal::NetworkLatency, Source::Trigger, &[]);
        let cause = analyze(&test_alert, &Evidence::default()).root_cause;
        assert!(!cause.contains('?'), "{cause}");
        assert!(cause.contains("a test alert"), "{cause}");
    }

    #[test]
    fn host_memory_without_docker_says_docker_could_not_be_read() {
        let memory = incident(Signal::HostMemory, Source::Local, &[]);
        let blind = Evidence {
            docker_available: false,
            ..Evidence::default()
        };
        let cause = analyze(&memory, &blind).root_cause;
        assert!(cause.contains("Docker could not be read"), "{cause}");
        assert!(!cause.contains("no container holds"), "{cause}");
        let seen = Evidence {
            docker_available: true,
            ..Evidence::default()
        };
        let cause = analyze(&memory, &seen).root_cause;
        assert!(
            cause.contains("no container holds a large share"),
            "{cause}"
        );
    }
}
