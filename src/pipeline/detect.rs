//! Detect: decide which observations are breaches (SPEC §2).
//!
//! In: a cycle's observations, which signals were unavailable, which fingerprints have open
//! incidents, the thresholds and the detector's memory of earlier cycles. Out:
//! [`Decision`]s for `intake` (open or update an incident, resolve one). Pure: no clock, no
//! store.
//!
//! Hysteresis: a breach must hold for `for` consecutive samples before it opens an incident,
//! and an open incident resolves after `clear_for` consecutive clean samples. A signal that
//! could not be measured is unavailable, which is neither a breach nor clean: it holds the
//! counts where they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use crate::config::{Threshold, Thresholds};
use crate::domain::{Detection, Fingerprint, Observation, Resource, Severity, Signal, Source};

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

/// The threshold of a monitored signal. `container_down` observations are 1 (down) or 0.
pub fn threshold_of(signal: Signal, thresholds: &Thresholds) -> Threshold {
    match signal {
        Signal::HostCpu => thresholds.host_cpu,
        Signal::HostMemory => thresholds.host_memory,
        Signal::Disk => thresholds.disk,
        Signal::NetworkLatency => thresholds.network_latency,
        Signal::ContainerMemory => thresholds.container_memory,
        Signal::SandboxSize => thresholds.sandbox_size_mb,
        Signal::ContainerDown => Threshold {
            warning: None,
            critical: Some(1.0),
        },
        Signal::External => Threshold {
            warning: None,
            critical: None,
        },
    }
}

/// How many samples make a breach, and how many clean ones end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub for_samples: u32,
    pub clear_for: u32,
}

/// Consecutive breached and clean samples of one fingerprint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Streak {
    breached: u32,
    clean: u32,
}

/// What the detector remembers between cycles. Lost on a restart or a change of leader,
/// which only means a breach has to hold for `for` samples again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DetectorState {
    streaks: BTreeMap<Fingerprint, Streak>,
}

/// What a cycle's observations call for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// A breach that held long enough, or one of an incident already open: open it, or
    /// update the open one.
    Breach(Detection),
    /// An open incident whose signal has been clean for `clear_for` samples.
    Recovered {
        fingerprint: Fingerprint,
        message: String,
    },
}

/// One detection step over a cycle.
///
/// `open` holds the fingerprints with an open incident (from the store, so incidents opened
/// by another replica or by hand count). A fingerprint with an open incident that was not
/// observed this cycle although its signal was available has gone away (a removed
/// container): that counts as a clean sample.
pub fn detect(
    state: &mut DetectorState,
    observations: &[Observation],
    unavailable: &BTreeSet<Signal>,
    open: &BTreeSet<Fingerprint>,
    thresholds: &Thresholds,
    hysteresis: Hysteresis,
) -> Vec<Decision> {
    let mut decisions = Vec::new();
    let mut seen = BTreeSet::new();
    for observation in observations {
        let fingerprint = observation.fingerprint();
        seen.insert(fingerprint.clone());
        let streak = state.streaks.entry(fingerprint.clone()).or_default();
        let threshold = threshold_of(observation.signal, thresholds);
        match breach(observation.value, &threshold) {
            Some((severity, level)) => {
                streak.breached = streak.breached.saturating_add(1);
                streak.clean = 0;
                if open.contains(&fingerprint) || streak.breached >= hysteresis.for_samples {
                    decisions.push(Decision::Breach(detection_of(observation, severity, level)));
                }
            }
            None => {
                streak.clean = streak.clean.saturating_add(1);
                streak.breached = 0;
                if open.contains(&fingerprint) && streak.clean >= hysteresis.clear_for {
                    decisions.push(Decision::Recovered {
                        fingerprint: fingerprint.clone(),
                        message: format!(
                            "recovered without action: {} on {} is {}{} after {} clean samples",
                            observation.signal,
                            observation.resource,
                            round(observation.value),
                            observation.signal.unit(),
                            streak.clean
                        ),
                    });
                }
            }
        }
    }
    // Open incidents of available signals that were not observed: gone, so clean.
    for fingerprint in open {
        if seen.contains(fingerprint) {
            continue;
        }
        let Some(signal) = signal_of(fingerprint) else {
            continue;
        };
        if signal == Signal::External || unavailable.contains(&signal) {
            continue;
        }
        let streak = state.streaks.entry(fingerprint.clone()).or_default();
        streak.clean = streak.clean.saturating_add(1);
        streak.breached = 0;
        seen.insert(fingerprint.clone());
        if streak.clean >= hysteresis.clear_for {
            decisions.push(Decision::Recovered {
                fingerprint: fingerprint.clone(),
                message: format!("recovered without action: {fingerprint} is no longer reported"),
            });
        }
    }
    // Forget what is neither observed nor open, unless its signal is merely unavailable.
    state.streaks.retain(|fingerprint, _| {
        seen.contains(fingerprint)
            || signal_of(fingerprint).is_some_and(|signal| unavailable.contains(&signal))
    });
    decisions
}

/// The signal a real breach's fingerprint names. `None` for a test alert's: no sample ever
/// confirms or clears a made-up breach, so the monitor leaves those incidents to people.
fn signal_of(fingerprint: &Fingerprint) -> Option<Signal> {
    if fingerprint.is_test_alert() {
        return None;
    }
    fingerprint.as_str().split_once(':')?.0.parse().ok()
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn detection_of(observation: &Observation, severity: Severity, level: f64) -> Detection {
    let unit = observation.signal.unit();
    let summary = match observation.signal {
        Signal::ContainerDown => format!(
            "container {} is down: {}",
            observation.resource,
            observation
                .details
                .get("down_reason")
                .map_or("not running", String::as_str)
        ),
        signal => format!(
            "{signal} on {} is {}{unit}, at or above {level}{unit}",
            observation.resource,
            round(observation.value)
        ),
    };
    Detection {
        signal: observation.signal,
        resource: observation.resource.clone(),
        severity,
        value: round(observation.value),
        threshold: level,
        source: observation.source,
        summary,
        labels: observation.details.clone(),
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

    const TWO_AND_TWO: Hysteresis = Hysteresis {
        for_samples: 2,
        clear_for: 2,
    };

    fn memory(value: f64) -> Observation {
        Observation {
            signal: Signal::HostMemory,
            resource: Resource::host(),
            value,
            source: Source::Local,
            details: BTreeMap::new(),
        }
    }

    /// Drives the detector over a sequence of samples the way the monitor does: decisions are
    /// applied to the set of open fingerprints before the next sample. `None` is an
    /// unavailable sample. Returns (incidents opened, resolutions, updates).
    fn run(samples: &[Option<f64>], hysteresis: Hysteresis) -> (usize, usize, usize) {
        let thresholds = Settings::defaults().thresholds;
        let mut state = DetectorState::default();
        let mut open = BTreeSet::new();
        let (mut opened, mut resolved, mut updated) = (0, 0, 0);
        for sample in samples {
            let (observations, unavailable) = match sample {
                Some(v) => (vec![memory(*v)], BTreeSet::new()),
                None => (vec![], BTreeSet::from([Signal::HostMemory])),
            };
            for decision in detect(
                &mut state,
                &observations,
                &unavailable,
                &open,
                &thresholds,
                hysteresis,
            ) {
                match decision {
                    Decision::Breach(d) => {
                        if open.insert(d.fingerprint()) {
                            opened += 1;
                        } else {
                            updated += 1;
                        }
                    }
                    Decision::Recovered { fingerprint, .. } => {
                        assert!(open.remove(&fingerprint));
                        resolved += 1;
                    }
                }
            }
        }
        (opened, resolved, updated)
    }

    #[test]
    fn a_breach_opens_only_after_it_holds_for_for_samples() {
        assert_eq!(run(&[Some(70.0)], TWO_AND_TWO), (0, 0, 0));
        assert_eq!(run(&[Some(70.0), Some(70.0)], TWO_AND_TWO), (1, 0, 0));
        assert_eq!(
            run(&[Some(70.0), Some(50.0), Some(70.0)], TWO_AND_TWO),
            (0, 0, 0)
        );
        let three = Hysteresis {
            for_samples: 3,
            clear_for: 1,
        };
        assert_eq!(run(&[Some(70.0), Some(70.0)], three), (0, 0, 0));
        assert_eq!(run(&[Some(70.0), Some(70.0), Some(70.0)], three), (1, 0, 0));
    }

    #[test]
    fn repeats_update_the_open_incident_and_clear_for_clean_samples_resolve_it() {
        let samples = [
            Some(70.0),
            Some(70.0),
            Some(75.0),
            Some(95.0),
            Some(50.0),
            Some(50.0),
        ];
        assert_eq!(run(&samples, TWO_AND_TWO), (1, 1, 2));
        // One clean sample between breaches does not resolve.
        let samples = [Some(70.0), Some(70.0), Some(50.0), Some(70.0), Some(50.0)];
        assert_eq!(run(&samples, TWO_AND_TWO), (1, 0, 1));
    }

    #[test]
    fn a_signal_flapping_every_sample_for_an_hour_opens_at_most_one_incident() {
        // 30 s interval: 120 samples an hour.
        let flapping: Vec<Option<f64>> = (0..120)
            .map(|i| Some(if i % 2 == 0 { 70.0 } else { 50.0 }))
            .collect();
        let (opened, _, _) = run(&flapping, TWO_AND_TWO);
        assert!(opened <= 1, "opened {opened}");
        // With `for = 1` every breach counts, yet `clear_for = 2` still keeps it to one.
        let eager = Hysteresis {
            for_samples: 1,
            clear_for: 2,
        };
        assert_eq!(run(&flapping, eager), (1, 0, 59));
    }

    #[test]
    fn unavailable_samples_are_neither_breaches_nor_clean() {
        // Breach, unavailable, breach: still two consecutive breaches.
        assert_eq!(run(&[Some(70.0), None, Some(70.0)], TWO_AND_TWO).0, 1);
        // An open incident is not resolved by a collector that is down.
        let samples = [Some(70.0), Some(70.0), None, None, None, None];
        assert_eq!(run(&samples, TWO_AND_TWO), (1, 0, 0));
    }

    #[test]
    fn a_real_breach_is_judged_apart_from_an_open_test_alert() {
        let thresholds = Settings::defaults().thresholds;
        let mut state = DetectorState::default();
        let test = test_alert(Scenario::Memory, &thresholds).fingerprint();
        let open = BTreeSet::from([test.clone()]);
        let none = BTreeSet::new();
        // The open test alert neither lets a real breach skip `for`, nor is it cleared by
        // clean samples or by going unobserved.
        let first = detect(
            &mut state,
            &[memory(70.0)],
            &none,
            &open,
            &thresholds,
            TWO_AND_TWO,
        );
        assert!(first.is_empty(), "{first:?}");
        let second = detect(
            &mut state,
            &[memory(70.0)],
            &none,
            &open,
            &thresholds,
            TWO_AND_TWO,
        );
        assert!(
            matches!(&second[..], [Decision::Breach(d)] if d.fingerprint().as_str() == "host_memory:host"),
            "{second:?}"
        );
        for _ in 0..4 {
            let clean = detect(&mut state, &[], &none, &open, &thresholds, TWO_AND_TWO);
            assert!(
                clean.iter().all(|d| !matches!(d, Decision::Recovered { fingerprint, .. } if *fingerprint == test)),
                "{clean:?}"
            );
        }
    }

    #[test]
    fn an_open_incident_whose_resource_disappeared_resolves() {
        let thresholds = Settings::defaults().thresholds;
        let mut state = DetectorState::default();
        let gone = Fingerprint::parse("container_down:old-1").unwrap();
        let open = BTreeSet::from([gone.clone()]);
        let none = BTreeSet::new();
        let first = detect(&mut state, &[], &none, &open, &thresholds, TWO_AND_TWO);
        assert!(first.is_empty());
        let second = detect(&mut state, &[], &none, &open, &thresholds, TWO_AND_TWO);
        assert!(
            matches!(&second[..], [Decision::Recovered { fingerprint, .. }] if *fingerprint == gone)
        );
        // But not while Docker is unreachable.
        let mut state = DetectorState::default();
        let docker_down = BTreeSet::from([Signal::ContainerDown]);
        for _ in 0..5 {
            assert!(detect(
                &mut state,
                &[],
                &docker_down,
                &open,
                &thresholds,
                TWO_AND_TWO
            )
            .is_empty());
        }
    }

    #[test]
    fn breaches_carry_severity_level_and_evidence() {
        let thresholds = Settings::defaults().thresholds;
        let mut state = DetectorState::default();
        let open = BTreeSet::new();
        let mut latency = Observation {
            signal: Signal::NetworkLatency,
            resource: Resource::host(),
            value: 1225.0,
            source: Source::Prometheus,
            details: BTreeMap::from([("network_mb_per_s".to_owned(), "100".to_owned())]),
        };
        let once = Hysteresis {
            for_samples: 1,
            clear_for: 1,
        };
        let decisions = detect(
            &mut state,
            &[latency.clone()],
            &BTreeSet::new(),
            &open,
            &thresholds,
            once,
        );
        let Decision::Breach(d) = &decisions[0] else {
            panic!("{decisions:?}")
        };
        assert_eq!((d.severity, d.threshold), (Severity::Critical, 1000.0));
        assert_eq!(d.labels["network_mb_per_s"], "100");
        latency.value = 250.0;
        let decisions = detect(
            &mut state,
            &[latency],
            &BTreeSet::new(),
            &open,
            &thresholds,
            once,
        );
        let Decision::Breach(d) = &decisions[0] else {
            panic!("{decisions:?}")
        };
        assert_eq!((d.severity, d.threshold), (Severity::Warning, 200.0));
    }

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
        assert_eq!(memory.fingerprint().as_str(), "test:host_memory:host");
        assert!(memory.is_synthetic());
        assert_eq!(memory.severity, Severity::Critical);
        assert!(memory.value <= 100.0);
        let sandbox = test_alert(Scenario::Sandbox, &thresholds);
        assert_eq!(sandbox.severity, Severity::Warning);
        assert!("nuke".parse::<Scenario>().is_err());
    }
}
