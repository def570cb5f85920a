//! Verify: after `settle`, measure again and judge whether the fix worked (SPEC §4).
//!
//! In: the incident's fingerprint and a fresh cycle's observations. Out: a [`Judgement`].
//! Pure; `remediate` measures, judges, and resolves or rolls back and escalates.

use crate::config::Thresholds;
use crate::domain::{Incident, Signal};
use crate::pipeline::detect;
use crate::pipeline::monitor::Collected;

#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// The signal is back under its threshold (or its resource is gone).
    Resolved { message: String },
    /// Still breached, worse, or not measurable: the fix did not demonstrably help.
    NotResolved { message: String },
}

pub fn judge(incident: &Incident, collected: &Collected, thresholds: &Thresholds) -> Judgement {
    let unit = incident.signal.unit();
    if incident.signal == Signal::External {
        return Judgement::NotResolved {
            message: "external alerts are resolved by their source".to_owned(),
        };
    }
    if let Some(why) = collected.unavailable.get(&incident.signal) {
        return Judgement::NotResolved {
            message: format!(
                "{} could not be measured after the fix: {why}",
                incident.signal
            ),
        };
    }
    let observation = collected
        .observations
        .iter()
        .find(|o| o.fingerprint() == incident.fingerprint);
    let Some(observation) = observation else {
        return Judgement::Resolved {
            message: format!("verified: {} is no longer reported", incident.fingerprint),
        };
    };
    let threshold = detect::threshold_of(incident.signal, thresholds);
    let value = (observation.value * 10.0).round() / 10.0;
    match detect::breach(observation.value, &threshold) {
        None => Judgement::Resolved {
            message: format!(
                "verified: {} on {} is {value}{unit}, under its threshold (was {}{unit})",
                incident.signal, incident.resource, incident.value
            ),
        },
        Some((severity, level)) => Judgement::NotResolved {
            message: format!(
                "the fix did not help: {} on {} is still {value}{unit} ({severity}, threshold {level}{unit})",
                incident.signal, incident.resource
            ),
        },
    }
}
