//! Monitor: every `interval`, collect observations from Prometheus or the local host, Docker
//! and the sandbox (through `runtime`), and hand them to `detect`.
//!
//! In: settings and the collectors. Out: [`Observation`]s. Must not decide anything: whether
//! a value is a breach is `detect`'s business.
//!
//! The collectors and the loop arrive with the monitoring work; this module fixes the shape
//! of what they produce.

use crate::domain::{Resource, Signal, Source, Timestamp};

/// One measured value of one signal for one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub signal: Signal,
    pub resource: Resource,
    /// `None` when the collector failed or timed out: the signal is unavailable, not healthy.
    pub value: Option<f64>,
    pub source: Source,
    pub at: Timestamp,
}
