//! Analyze: turn an incident and its evidence into a root cause, a proposed catalogue action,
//! a risk assessment, a confidence and the facts used (SPEC §3).
//!
//! In: an `Incident` and [`Evidence`]. Out: an [`Analysis`]. Two analyzers: [`rules`]
//! (deterministic, pure, always available) and [`llm`] (an OpenAI-compatible endpoint that
//! only proposes). Whatever any analyzer proposes goes through [`check_proposal`]: an action
//! outside the catalogue, parameters outside its schema, a container not in the inventory or
//! a path outside the sandbox's cleanup directories never leave this module.

pub mod llm;
pub mod rules;

use crate::domain::{ActionPlan, ProposedAction, Risk};
use crate::runtime::ContainerSample;

/// What the analyzers may look at, gathered by the caller (I/O) before analysis (pure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// The containers Docker reported (the inventory), with memory where running.
    pub containers: Vec<ContainerSample>,
    /// The largest top-level directories of the sandbox, relative names and bytes.
    pub sandbox_dirs: Vec<(String, u64)>,
    /// The sandbox's total size in bytes, when it could be measured.
    pub sandbox_bytes: Option<u64>,
    /// Whether Docker answered: without it, no container action can be checked.
    pub docker_available: bool,
}

impl Evidence {
    pub fn container(&self, name: &str) -> Option<&ContainerSample> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Running containers by memory used, largest first.
    pub fn top_memory(&self, n: usize) -> Vec<&ContainerSample> {
        let mut running: Vec<&ContainerSample> = self
            .containers
            .iter()
            .filter(|c| c.memory_used_bytes.is_some())
            .collect();
        running.sort_by_key(|c| std::cmp::Reverse(c.memory_used_bytes));
        running.truncate(n);
        running
    }
}

/// What an analyzer concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub root_cause: String,
    pub proposed_action: ProposedAction,
    pub risk_assessment: Risk,
    /// 0 to 1.
    pub confidence: f64,
    pub evidence: Vec<String>,
    /// `rules` or `llm:<model>`.
    pub analyzer: String,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("proposal refused: {0}")]
pub struct Refused(pub String);

/// Checks a proposal against the catalogue's schemas and the inventory.
pub fn check_proposal(
    proposed: &ProposedAction,
    evidence: &Evidence,
) -> Result<ActionPlan, Refused> {
    let plan = proposed.plan().map_err(|e| Refused(e.0))?;
    if let Some(name) = plan.container() {
        if evidence.container(name).is_none() {
            return Err(Refused(format!(
                "container {name:?} is not in the inventory Docker reported"
            )));
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn container(name: &str, used: Option<u64>) -> ContainerSample {
        ContainerSample {
            name: name.into(),
            id: format!("id-{name}"),
            state: "running".into(),
            health: None,
            restart_count: 0,
            exit_code: Some(0),
            restart_policy: "no".into(),
            labels: BTreeMap::new(),
            memory_used_bytes: used,
            memory_limit_bytes: used.map(|_| 1 << 30),
        }
    }

    #[test]
    fn proposals_must_name_containers_in_the_inventory() {
        let evidence = Evidence {
            containers: vec![container("web-1", Some(10))],
            docker_available: true,
            ..Evidence::default()
        };
        let restart = |name: &str| ProposedAction {
            action: crate::domain::ActionId::ContainerRestart,
            params: BTreeMap::from([("container".to_owned(), serde_json::json!(name))]),
        };
        assert!(check_proposal(&restart("web-1"), &evidence).is_ok());
        assert!(check_proposal(&restart("db-1"), &evidence).is_err());
    }

    #[test]
    fn top_memory_orders_running_containers() {
        let evidence = Evidence {
            containers: vec![
                container("a", Some(10)),
                container("b", None),
                container("c", Some(30)),
            ],
            ..Evidence::default()
        };
        let names: Vec<&str> = evidence
            .top_memory(5)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["c", "a"]);
    }
}
