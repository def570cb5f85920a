//! Silences: "no new incidents for this fingerprint or resource until then".

use serde::{Deserialize, Serialize};

use crate::domain::{Fingerprint, Timestamp};

/// What a silence matches: one fingerprint (`host_cpu:host`) or every signal of a resource
/// (`web-1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum SilenceTarget {
    Fingerprint(Fingerprint),
    Resource(String),
}

impl SilenceTarget {
    /// Reads what a person typed: `signal:resource` is a fingerprint, anything else a resource.
    pub fn parse(text: &str) -> Self {
        match Fingerprint::parse(text) {
            Ok(fingerprint) => SilenceTarget::Fingerprint(fingerprint),
            Err(_) => SilenceTarget::Resource(text.to_owned()),
        }
    }

    pub fn matches(&self, fingerprint: &Fingerprint, resource: &str) -> bool {
        match self {
            SilenceTarget::Fingerprint(f) => f == fingerprint,
            SilenceTarget::Resource(r) => r == resource,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub target: SilenceTarget,
    pub created_by: String,
    pub created_at: Timestamp,
    pub ends_at: Timestamp,
    #[serde(default)]
    pub reason: String,
}

impl Silence {
    pub fn is_active(&self, now: Timestamp) -> bool {
        now < self.ends_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Resource, Signal};

    #[test]
    fn targets_match_a_fingerprint_or_every_signal_of_a_resource() {
        let web = Resource::parse("web-1").unwrap();
        let memory = Fingerprint::new(Signal::ContainerMemory, &web);
        let down = Fingerprint::new(Signal::ContainerDown, &web);
        let by_fingerprint = SilenceTarget::parse("container_memory:web-1");
        assert!(by_fingerprint.matches(&memory, "web-1"));
        assert!(!by_fingerprint.matches(&down, "web-1"));
        let by_resource = SilenceTarget::parse("web-1");
        assert!(by_resource.matches(&memory, "web-1"));
        assert!(by_resource.matches(&down, "web-1"));
        assert!(!by_resource.matches(&memory, "web-2"));
    }
}
