//! The action catalogue (SPEC §4): what Sentinel may do, and how risky each thing is.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One catalogue action. Nothing outside this enum can ever be proposed or executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionId {
    SandboxCleanup,
    ContainerStart,
    ContainerRestart,
    ContainerMemoryLimit,
    NotifyOnly,
}

impl ActionId {
    pub const ALL: [ActionId; 5] = [
        ActionId::SandboxCleanup,
        ActionId::ContainerStart,
        ActionId::ContainerRestart,
        ActionId::ContainerMemoryLimit,
        ActionId::NotifyOnly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionId::SandboxCleanup => "sandbox_cleanup",
            ActionId::ContainerStart => "container_start",
            ActionId::ContainerRestart => "container_restart",
            ActionId::ContainerMemoryLimit => "container_memory_limit",
            ActionId::NotifyOnly => "notify_only",
        }
    }

    /// The lowest risk this action ever has (SPEC §4). Policy may raise it, never lower it.
    pub fn risk_floor(self) -> Risk {
        match self {
            ActionId::SandboxCleanup | ActionId::NotifyOnly => Risk::Low,
            ActionId::ContainerStart
            | ActionId::ContainerRestart
            | ActionId::ContainerMemoryLimit => Risk::Medium,
        }
    }

    /// Whether a rollback can undo it.
    pub fn reversible(self) -> bool {
        matches!(
            self,
            ActionId::SandboxCleanup | ActionId::ContainerStart | ActionId::ContainerMemoryLimit
        )
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an action in the catalogue")]
pub struct UnknownAction(pub String);

impl FromStr for ActionId {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActionId::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| UnknownAction(s.to_owned()))
    }
}

/// How dangerous a fix is; decides who may approve it. Ordered: `Low < Medium < High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    Low,
    Medium,
    High,
}

impl Risk {
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A catalogue action with its parameters, as the incident JSON shows it:
/// `{"action": "container_restart", "params": {"container": "web-1"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedAction {
    pub action: ActionId,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_floors_match_the_catalogue() {
        let floors: Vec<(ActionId, Risk)> = ActionId::ALL
            .into_iter()
            .map(|a| (a, a.risk_floor()))
            .collect();
        assert_eq!(
            floors,
            vec![
                (ActionId::SandboxCleanup, Risk::Low),
                (ActionId::ContainerStart, Risk::Medium),
                (ActionId::ContainerRestart, Risk::Medium),
                (ActionId::ContainerMemoryLimit, Risk::Medium),
                (ActionId::NotifyOnly, Risk::Low),
            ]
        );
        assert!(!ActionId::ContainerRestart.reversible());
    }

    #[test]
    fn only_catalogue_names_parse() {
        for action in ActionId::ALL {
            assert_eq!(action.as_str().parse::<ActionId>().unwrap(), action);
        }
        assert!("rm -rf /".parse::<ActionId>().is_err());
        assert!("shell".parse::<ActionId>().is_err());
        let json = r#"{"action":"delete_everything","params":{}}"#;
        assert!(serde_json::from_str::<ProposedAction>(json).is_err());
    }
}
