//! What a fix's target looked like at one moment, as the executor read it: the snapshot an
//! approval is pinned to, an execution's `before` and `after`, what a rollback restored.
//!
//! The JSON is the same one the API, the audit and the card templates have always shown
//! (one flat object per kind), so the enum is untagged: each kind has fields no other kind
//! has, and the variants are tried in the order below.

use serde::{Deserialize, Serialize};

use super::action::CleanupDir;

/// One reading of a fix's target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetState {
    /// A container, from `docker inspect`.
    Container(ContainerState),
    /// What a cleanup would move, and how much of it the quarantine can keep.
    CleanupPlan(CleanupPlan),
    /// What a cleanup did.
    CleanupResult(CleanupResult),
    /// What a cleanup's rollback brought back from the quarantine.
    Restored(RestoreResult),
    /// The target could not be read (`docker: connection refused`).
    Unreadable(Unreadable),
    /// An action with no target (`notify_only`): `{}`.
    Nothing(Nothing),
}

impl TargetState {
    /// The target as a reading that failed.
    pub fn unreadable(error: impl Into<String>) -> Self {
        TargetState::Unreadable(Unreadable {
            error: error.into(),
        })
    }

    pub fn nothing() -> Self {
        TargetState::Nothing(Nothing {})
    }

    pub fn container(&self) -> Option<&ContainerState> {
        match self {
            TargetState::Container(c) => Some(c),
            _ => None,
        }
    }

    /// The flat JSON object, for generic before → after listings.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A container's identity, state and limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// Docker's id: a recreated container of the same name has another one.
    pub id: Option<String>,
    pub name: String,
    /// `running`, `exited`, … (Docker's words).
    pub state: Option<String>,
    /// Docker's RFC 3339 start time; a restart changes it.
    pub started_at: Option<String>,
    pub restart_count: Option<i64>,
    /// The memory limit in bytes, 0 when there is none.
    pub memory: i64,
    /// Memory plus swap in bytes; -1 unlimited, 0 unset.
    pub memory_swap: i64,
}

impl ContainerState {
    pub fn running(&self) -> bool {
        self.state.as_deref() == Some("running")
    }
}

/// A cleanup's plan, read before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupPlan {
    pub dirs: Vec<CleanupDir>,
    /// The files it would move and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Up to 20 of their paths, relative to the sandbox.
    pub sample: Vec<String>,
    pub quarantine_max_bytes: u64,
    pub quarantine_used_bytes: u64,
    /// How much of it the quarantine would keep (an estimate before compression) and how
    /// much would be deleted for good.
    pub restorable_files: u64,
    pub restorable_bytes: u64,
    pub deleted_files: u64,
    pub deleted_bytes: u64,
}

/// What a cleanup did, measured on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupResult {
    pub moved_files: u64,
    pub moved_bytes: u64,
    /// Files that changed between planning and moving and stayed in place.
    pub skipped: u64,
    /// The quarantine directory of this cleanup.
    pub quarantine: String,
    pub restorable_files: u64,
    pub restorable_bytes: u64,
    /// Bytes the quarantine holds on disk, compressed.
    pub stored_bytes: u64,
    #[serde(default)]
    pub deleted_files: u64,
    #[serde(default)]
    pub deleted_bytes: u64,
    pub freed_bytes: u64,
    /// Quarantined entries that could not be compressed or measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_skipped: Option<u64>,
    /// Why nothing could be compressed: everything stays uncompressed and restorable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine_error: Option<String>,
}

/// What a cleanup's rollback restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreResult {
    pub restored_files: u64,
    pub restored_bytes: u64,
    /// Entries that stayed in the quarantine (a file of that name exists, a link in the way).
    pub skipped: u64,
    /// What the quarantine could not give back: deleted for good when it was full.
    pub deleted_files: u64,
    pub deleted_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unreadable {
    pub error: String,
}

/// No fields, and no others accepted: only `{}` reads as nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nothing {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(value: serde_json::Value) -> TargetState {
        serde_json::from_value(value.clone())
            .unwrap_or_else(|e| panic!("{value} does not read: {e}"))
    }

    #[test]
    fn each_kind_reads_back_as_itself_from_the_json_it_writes() {
        let states = [
            TargetState::Container(ContainerState {
                id: Some("3f9c".into()),
                name: "web-1".into(),
                state: Some("exited".into()),
                started_at: None,
                restart_count: Some(2),
                memory: 64 << 20,
                memory_swap: -1,
            }),
            TargetState::CleanupPlan(CleanupPlan {
                dirs: vec![CleanupDir::Logs],
                files: 3,
                bytes: 120,
                sample: vec!["logs/a.log".into()],
                quarantine_max_bytes: 50,
                quarantine_used_bytes: 0,
                restorable_files: 1,
                restorable_bytes: 40,
                deleted_files: 2,
                deleted_bytes: 80,
            }),
            TargetState::CleanupResult(CleanupResult {
                moved_files: 3,
                moved_bytes: 120,
                skipped: 0,
                quarantine: "sandbox/.sentinel-quarantine/x".into(),
                restorable_files: 1,
                restorable_bytes: 40,
                stored_bytes: 30,
                deleted_files: 2,
                deleted_bytes: 80,
                freed_bytes: 90,
                quarantine_skipped: None,
                quarantine_error: None,
            }),
            TargetState::Restored(RestoreResult {
                restored_files: 1,
                restored_bytes: 40,
                skipped: 0,
                deleted_files: 2,
                deleted_bytes: 80,
            }),
            TargetState::unreadable("docker: connection refused"),
            TargetState::nothing(),
        ];
        for state in states {
            assert_eq!(read(state.to_json()), state);
        }
    }

    #[test]
    fn records_written_before_the_types_still_read() {
        // As `Executor` wrote them with `json!` (keys sorted, nulls kept).
        let container = read(json!({"id": "3f9c", "name": "web-1", "state": "running",
            "started_at": "2026-12-03T17:00:00Z", "restart_count": 0,
            "memory": 0, "memory_swap": 0}));
        assert!(container.container().is_some_and(ContainerState::running));
        let moved = read(json!({"moved_files": 2, "moved_bytes": 10, "skipped": 0,
            "quarantine": "q", "restorable_files": 2, "restorable_bytes": 10,
            "stored_bytes": 10, "freed_bytes": 0, "quarantine_error": "disk full"}));
        assert!(matches!(moved, TargetState::CleanupResult(r) if r.quarantine_error.is_some()));
        assert_eq!(read(json!({"error": "x"})), TargetState::unreadable("x"));
        assert_eq!(read(json!({})), TargetState::nothing());
    }

    #[test]
    fn a_shape_of_no_kind_is_refused_not_read_as_nothing() {
        assert!(serde_json::from_value::<TargetState>(json!({"state": "exited"})).is_err());
        assert!(serde_json::from_value::<TargetState>(json!(null)).is_err());
    }
}
