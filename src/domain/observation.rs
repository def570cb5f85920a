//! Observations: one measured value of one signal for one resource, as the monitor saw it.

use std::collections::BTreeMap;

use crate::domain::{Fingerprint, Resource, Signal, Source};

#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub signal: Signal,
    pub resource: Resource,
    pub value: f64,
    pub source: Source,
    /// What the value was computed from and what else is known (latency inputs, a
    /// container's state): shown as evidence, never used to decide.
    pub details: BTreeMap<String, String>,
}

impl Observation {
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::new(self.signal, &self.resource)
    }
}
