//! Evidence and recent changes: the facts an analysis rests on, each with an id it can be
//! cited by, and what changed on a target container shortly before its incident (SPEC §12.4).
//!
//! Pure values. The facts are gathered by `pipeline::analyze::facts`, the changes read from
//! Docker's events by `runtime::docker` and interpreted by `pipeline::analyze::changes`.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::domain::Timestamp;

/// What sort of fact an [`EvidenceItem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// A measurement: the incident's reading, a container's memory, traffic figures.
    Metric,
    /// What Docker says about a container: its state, restarts, labels; or that it could
    /// not be asked.
    Docker,
    /// Sizes of files and directories in the sandbox, and which mount it is on.
    File,
    /// Something that happened: an alert's own words and labels, no change in the window.
    Event,
    /// A recent change to the target container ([`Change`]).
    Change,
    /// A fact recorded before facts had ids and kinds (stored incidents from then).
    Fact,
}

impl EvidenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceKind::Metric => "metric",
            EvidenceKind::Docker => "docker",
            EvidenceKind::File => "file",
            EvidenceKind::Event => "event",
            EvidenceKind::Change => "change",
            EvidenceKind::Fact => "fact",
        }
    }
}

impl fmt::Display for EvidenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One fact an analysis may rest on: `{"id": "metric-1", "kind": "metric", "text": "…"}`.
/// Ids are `<kind>-<n>`, numbered per kind in the order the facts were gathered; they never
/// contain monitored text, so a model can cite them back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceItem {
    pub id: String,
    pub kind: EvidenceKind,
    /// The fact for people (and the model): may name containers, directories and labels,
    /// which are untrusted text.
    pub text: String,
}

/// Reads an incident's `evidence` as stored now (items) or before items existed (plain
/// strings, which become `fact-<n>` items of kind [`EvidenceKind::Fact`]).
pub fn deserialize_evidence<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<EvidenceItem>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Item(EvidenceItem),
        Text(String),
    }
    let stored = Vec::<Stored>::deserialize(deserializer)?;
    Ok(stored
        .into_iter()
        .enumerate()
        .map(|(i, stored)| match stored {
            Stored::Item(item) => item,
            Stored::Text(text) => EvidenceItem {
                id: format!("fact-{}", i + 1),
                kind: EvidenceKind::Fact,
                text,
            },
        })
        .collect())
}

/// What kind of change Docker recorded on the target container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A container of that name was created.
    Create,
    /// A container of that name was removed.
    Destroy,
    /// The container was renamed to, or from, that name.
    Rename,
    /// Its resources were changed (`docker update`: memory, CPU, restart policy).
    Update,
    /// It was started from another image than the container of that name before it.
    Start,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Destroy => "destroy",
            ChangeKind::Rename => "rename",
            ChangeKind::Update => "update",
            ChangeKind::Start => "start",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change to an incident's target container in `[analyzer] change_window` before the
/// incident opened: `{"at", "kind", "detail"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub at: Timestamp,
    pub kind: ChangeKind,
    /// The change for people: `web-1 was created from image shop/web:2.1 (sha256:4f1c…)`.
    pub detail: String,
}

/// `4 min`, `35 s`, `2 h`: how long before something happened, for people.
pub fn before_words(earlier: Timestamp, later: Timestamp) -> String {
    let ms = (later.unix_millis() - earlier.unix_millis()).max(0);
    let seconds = ms / 1000;
    match seconds {
        0..=119 => format!("{seconds} s"),
        120..=7199 => format!("{} min", (seconds + 30) / 60),
        _ => format!("{} h", (seconds + 1800) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_and_old_strings_still_read() {
        let item = EvidenceItem {
            id: "metric-1".into(),
            kind: EvidenceKind::Metric,
            text: "web-1 uses 61 MB".into(),
        };
        let json = serde_json::to_value(&item).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "metric-1", "kind": "metric", "text": "web-1 uses 61 MB"})
        );
        #[derive(Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "deserialize_evidence")]
            evidence: Vec<EvidenceItem>,
        }
        let mixed: Holder = serde_json::from_value(serde_json::json!({
            "evidence": [json, "memory 370 MB of 512 MB"]
        }))
        .unwrap();
        assert_eq!(mixed.evidence[0], item);
        assert_eq!(mixed.evidence[1].id, "fact-2");
        assert_eq!(mixed.evidence[1].kind, EvidenceKind::Fact);
        assert_eq!(mixed.evidence[1].text, "memory 370 MB of 512 MB");
    }

    #[test]
    fn changes_serialise_as_the_spec_names_them() {
        let change = Change {
            at: Timestamp::from_unix_millis(1_795_860_000_000),
            kind: ChangeKind::Create,
            detail: "web-1 was created".into(),
        };
        assert_eq!(
            serde_json::to_value(&change).unwrap(),
            serde_json::json!({
                "at": "2026-11-28T10:00:00.000Z", "kind": "create", "detail": "web-1 was created"
            })
        );
    }

    #[test]
    fn durations_before_read_as_people_say_them() {
        let at = Timestamp::from_unix_millis;
        assert_eq!(before_words(at(0), at(35_000)), "35 s");
        assert_eq!(before_words(at(0), at(240_000)), "4 min");
        assert_eq!(before_words(at(0), at(7_200_000)), "2 h");
        assert_eq!(before_words(at(10), at(0)), "0 s");
    }
}
