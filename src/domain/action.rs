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

/// The directories of the sandbox that cleanup may touch (SPEC §5). Nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CleanupDir {
    Logs,
    Tmp,
    Cache,
}

impl CleanupDir {
    pub const ALL: [CleanupDir; 3] = [CleanupDir::Logs, CleanupDir::Tmp, CleanupDir::Cache];

    pub fn as_str(self) -> &'static str {
        match self {
            CleanupDir::Logs => "logs",
            CleanupDir::Tmp => "tmp",
            CleanupDir::Cache => "cache",
        }
    }
}

/// A proposed action with its parameters checked: what an executor can be asked to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionPlan {
    SandboxCleanup {
        dirs: Vec<CleanupDir>,
    },
    ContainerStart {
        container: String,
    },
    ContainerRestart {
        container: String,
    },
    /// Multiply the container's memory limit by `factor` (> 1).
    ContainerMemoryLimit {
        container: String,
        factor: f64,
    },
    NotifyOnly,
}

impl ActionPlan {
    pub fn action(&self) -> ActionId {
        match self {
            ActionPlan::SandboxCleanup { .. } => ActionId::SandboxCleanup,
            ActionPlan::ContainerStart { .. } => ActionId::ContainerStart,
            ActionPlan::ContainerRestart { .. } => ActionId::ContainerRestart,
            ActionPlan::ContainerMemoryLimit { .. } => ActionId::ContainerMemoryLimit,
            ActionPlan::NotifyOnly => ActionId::NotifyOnly,
        }
    }

    /// The container this acts on, if any.
    pub fn container(&self) -> Option<&str> {
        match self {
            ActionPlan::ContainerStart { container }
            | ActionPlan::ContainerRestart { container }
            | ActionPlan::ContainerMemoryLimit { container, .. } => Some(container),
            ActionPlan::SandboxCleanup { .. } | ActionPlan::NotifyOnly => None,
        }
    }

    /// What the budget and the circuit breaker count against: `action:target`.
    pub fn key(&self) -> String {
        let target = self.container().unwrap_or("sandbox");
        format!("{}:{target}", self.action())
    }

    /// Back to the JSON form incidents show.
    pub fn to_proposed(&self) -> ProposedAction {
        let mut params = BTreeMap::new();
        match self {
            ActionPlan::SandboxCleanup { dirs } => {
                let dirs: Vec<&str> = dirs.iter().map(|d| d.as_str()).collect();
                params.insert("dirs".to_owned(), serde_json::json!(dirs));
            }
            ActionPlan::ContainerStart { container }
            | ActionPlan::ContainerRestart { container } => {
                params.insert("container".to_owned(), serde_json::json!(container));
            }
            ActionPlan::ContainerMemoryLimit { container, factor } => {
                params.insert("container".to_owned(), serde_json::json!(container));
                params.insert("factor".to_owned(), serde_json::json!(factor));
            }
            ActionPlan::NotifyOnly => {}
        }
        ProposedAction {
            action: self.action(),
            params,
        }
    }
}

/// Why a proposal's parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidParams(pub String);

impl ProposedAction {
    /// Checks the parameters of the action's schema: no unknown keys, the right types.
    /// Whether the container exists is checked against the inventory by the analyzer.
    pub fn plan(&self) -> Result<ActionPlan, InvalidParams> {
        let allowed: &[&str] = match self.action {
            ActionId::SandboxCleanup => &["dirs"],
            ActionId::ContainerStart | ActionId::ContainerRestart => &["container"],
            ActionId::ContainerMemoryLimit => &["container", "factor"],
            ActionId::NotifyOnly => &[],
        };
        if let Some(unknown) = self.params.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(InvalidParams(format!(
                "{} takes no parameter {unknown:?}",
                self.action
            )));
        }
        let container = || -> Result<String, InvalidParams> {
            let name = self
                .params
                .get("container")
                .and_then(|v| v.as_str())
                .ok_or_else(|| InvalidParams(format!("{} needs a container name", self.action)))?;
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if valid {
                Ok(name.to_owned())
            } else {
                Err(InvalidParams(format!("{name:?} is not a container name")))
            }
        };
        Ok(match self.action {
            ActionId::SandboxCleanup => {
                let dirs = match self.params.get("dirs") {
                    None => CleanupDir::ALL.to_vec(),
                    Some(value) => {
                        let list = value.as_array().ok_or_else(|| {
                            InvalidParams("dirs must be a list of logs, tmp, cache".to_owned())
                        })?;
                        let mut dirs = Vec::new();
                        for item in list {
                            let dir = CleanupDir::ALL
                                .into_iter()
                                .find(|d| item.as_str() == Some(d.as_str()))
                                .ok_or_else(|| {
                                    InvalidParams(format!(
                                        "{item} is not one of logs, tmp, cache: cleanup touches nothing else"
                                    ))
                                })?;
                            if !dirs.contains(&dir) {
                                dirs.push(dir);
                            }
                        }
                        if dirs.is_empty() {
                            return Err(InvalidParams("dirs is empty".to_owned()));
                        }
                        dirs
                    }
                };
                ActionPlan::SandboxCleanup { dirs }
            }
            ActionId::ContainerStart => ActionPlan::ContainerStart {
                container: container()?,
            },
            ActionId::ContainerRestart => ActionPlan::ContainerRestart {
                container: container()?,
            },
            ActionId::ContainerMemoryLimit => {
                let factor = self
                    .params
                    .get("factor")
                    .and_then(|v| v.as_f64())
                    .ok_or_else(|| {
                        InvalidParams("container_memory_limit needs a numeric factor".to_owned())
                    })?;
                if !(factor.is_finite() && factor > 1.0 && factor <= 8.0) {
                    return Err(InvalidParams(format!(
                        "factor {factor} must be above 1 and at most 8"
                    )));
                }
                ActionPlan::ContainerMemoryLimit {
                    container: container()?,
                    factor,
                }
            }
            ActionId::NotifyOnly => ActionPlan::NotifyOnly,
        })
    }
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    fn proposed(json: serde_json::Value) -> Result<ActionPlan, String> {
        let proposed: ProposedAction = serde_json::from_value(json).map_err(|e| e.to_string())?;
        proposed.plan().map_err(|e| e.0)
    }

    #[test]
    fn parameters_are_checked_against_each_actions_schema() {
        assert_eq!(
            proposed(serde_json::json!({"action": "sandbox_cleanup", "params": {}})).unwrap(),
            ActionPlan::SandboxCleanup {
                dirs: CleanupDir::ALL.to_vec()
            }
        );
        assert_eq!(
            proposed(serde_json::json!({"action": "container_memory_limit",
                "params": {"container": "web-1", "factor": 1.5}}))
            .unwrap()
            .key(),
            "container_memory_limit:web-1"
        );
        for bad in [
            serde_json::json!({"action": "sandbox_cleanup", "params": {"dirs": ["data"]}}),
            serde_json::json!({"action": "sandbox_cleanup", "params": {"dirs": ["../etc"]}}),
            serde_json::json!({"action": "sandbox_cleanup", "params": {"path": "/"}}),
            serde_json::json!({"action": "container_restart", "params": {}}),
            serde_json::json!({"action": "container_restart", "params": {"container": "a; rm -rf /"}}),
            serde_json::json!({"action": "container_restart", "params": {"container": "web", "command": "sh"}}),
            serde_json::json!({"action": "container_memory_limit", "params": {"container": "web", "factor": 0.5}}),
            serde_json::json!({"action": "container_memory_limit", "params": {"container": "web", "factor": "2"}}),
            serde_json::json!({"action": "notify_only", "params": {"x": 1}}),
            serde_json::json!({"action": "shell", "params": {"cmd": "reboot"}}),
        ] {
            assert!(proposed(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn plans_round_trip_through_their_json_form() {
        for plan in [
            ActionPlan::SandboxCleanup {
                dirs: vec![CleanupDir::Logs, CleanupDir::Cache],
            },
            ActionPlan::ContainerStart {
                container: "web-1".into(),
            },
            ActionPlan::ContainerRestart {
                container: "web-1".into(),
            },
            ActionPlan::ContainerMemoryLimit {
                container: "web-1".into(),
                factor: 2.0,
            },
            ActionPlan::NotifyOnly,
        ] {
            assert_eq!(plan.to_proposed().plan().unwrap(), plan);
        }
    }
}
