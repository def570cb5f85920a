//! The vocabulary of Sentinel: ids, signals, roles, actions, incidents, audit entries.
//!
//! Pure values only: nothing here does I/O or reads the clock. Everything is parsed at the
//! edge (configuration, HTTP bodies, Slack payloads) into these types.

mod action;
mod actor;
mod audit;
mod containers;
pub mod evidence;
mod ids;
mod incident;
mod observation;
mod role;
mod signal;
mod silence;
mod target;
mod time;
mod trend;
mod trust;

pub use action::{
    ActionId, ActionPlan, CleanupDir, InvalidParams, ProposedAction, Risk, UnknownAction,
};
pub use actor::Actor;
pub use audit::{verify_chain, AuditEntry, AuditRecord, ChainCheck, ChainVerifier, GENESIS_HASH};
pub use containers::{glob_matches, ContainerFilter, ContainerSelector};
pub use evidence::{Change, ChangeKind, EvidenceItem, EvidenceKind};
pub use ids::{Fingerprint, IdError, IncidentId, Resource};
pub use incident::{
    AlertUpdate, Detection, Execution, IllegalTransition, Incident, RollbackStart, Sighting,
    SlackCard, Status, TimelineEntry, UnknownStatus,
};
pub use observation::Observation;
pub use role::{Role, UnknownRole};
pub use signal::{Severity, Signal, SignalReading, Source, UnknownSignal};
pub use silence::{Silence, SilenceTarget};
pub use target::{
    CleanupPlan, CleanupResult, ContainerState, Nothing, RestoreResult, TargetState, Unreadable,
};
pub use time::Timestamp;
pub use trend::{Sample, Trends};
pub use trust::{earned, TrustGrant, TrustKey, TrustRun, Untrustable};
