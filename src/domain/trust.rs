//! Earned autonomy (SPEC §12.4): which fixes Sentinel has earned the right to run on its own.
//!
//! A fix is named by its [`TrustKey`], the (signal, action, target) it is made of; `target` is
//! the fix's own resource, the container it acts on, or `sandbox` for a cleanup. Every fix a
//! person approved that then verified adds one to that key's run; a failed verification or a
//! rollback ends the run (and any grant). Once the run reaches `[actions] trust_after`, an admin
//! may grant a [`TrustGrant`]; the policy then treats that fix as low risk (`policy::decide`
//! says exactly when).
//!
//! Pure values: the store keeps runs and grants, `pipeline::trust` does the I/O.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::domain::{ActionId, ActionPlan, Incident, Signal, Timestamp};

/// The longest target a trust key takes (a container name, or `sandbox`).
const MAX_TARGET: usize = 200;

/// What trust is about: one kind of fix on one target, for one signal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TrustKey {
    pub signal: Signal,
    pub action: ActionId,
    /// The container the fix acts on, or `sandbox`.
    pub target: String,
}

/// Why a (signal, action, target) cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Untrustable(pub String);

impl TrustKey {
    /// The key of a checked plan made for an incident of `signal`.
    pub fn of_plan(signal: Signal, plan: &ActionPlan) -> TrustKey {
        TrustKey {
            signal,
            action: plan.action(),
            target: plan.container().unwrap_or("sandbox").to_owned(),
        }
    }

    /// The key of the fix an incident ran, or else the one it proposes; `None` without a
    /// readable fix.
    pub fn of_incident(incident: &Incident) -> Option<TrustKey> {
        let proposed = incident
            .execution
            .as_ref()
            .map(|e| &e.action)
            .or(incident.proposed_action.as_ref())?;
        let plan = proposed.plan().ok()?;
        Some(TrustKey::of_plan(incident.signal, &plan))
    }

    /// Reads what a person asked to trust. Only fixes the catalogue allows for that signal
    /// (SPEC §12.2) can be trusted; `notify_only` changes nothing, so there is nothing to trust.
    pub fn parse(signal: &str, action: &str, target: &str) -> Result<TrustKey, Untrustable> {
        let signal: Signal = signal
            .trim()
            .parse()
            .map_err(|_| Untrustable(format!("{signal:?} is not a signal")))?;
        let action: ActionId = action
            .trim()
            .parse()
            .map_err(|_| Untrustable(format!("{action:?} is not a catalogue action")))?;
        let target = target.trim();
        if target.is_empty()
            || target.chars().count() > MAX_TARGET
            || target.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(Untrustable(
                "the target must be a container name or \"sandbox\"".to_owned(),
            ));
        }
        let allowed: &[ActionId] = match signal {
            Signal::SandboxSize | Signal::Disk => &[ActionId::SandboxCleanup],
            Signal::ContainerDown => &[ActionId::ContainerStart, ActionId::ContainerRestart],
            Signal::ContainerMemory => {
                &[ActionId::ContainerRestart, ActionId::ContainerMemoryLimit]
            }
            _ => &[],
        };
        if !allowed.contains(&action) {
            return Err(Untrustable(format!(
                "{action} is not a fix Sentinel runs for {signal}, so it cannot be trusted"
            )));
        }
        if (action == ActionId::SandboxCleanup) != (target == "sandbox") {
            return Err(Untrustable(if action == ActionId::SandboxCleanup {
                "sandbox_cleanup acts on the sandbox: its target is \"sandbox\"".to_owned()
            } else {
                format!("{action} acts on a container: its target is the container's name")
            }));
        }
        Ok(TrustKey {
            signal,
            action,
            target: target.to_owned(),
        })
    }

    /// `signal:action:target`, how the store files it.
    pub fn as_string(&self) -> String {
        format!("{}:{}:{}", self.signal, self.action, self.target)
    }
}

impl fmt::Display for TrustKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} for {}", self.action, self.target, self.signal)
    }
}

/// An admin's permission for Sentinel to run one kind of fix on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustGrant {
    /// `trust-…`.
    pub id: String,
    #[serde(flatten)]
    pub key: TrustKey,
    /// Who granted it: `slack:U123 (admin)`, `api:ops (admin)`.
    pub granted_by: String,
    pub granted_at: Timestamp,
    /// The run of verified, approved fixes it was granted on.
    pub earned_by: u64,
}

/// A pair's run of verified approvals, as `GET /api/trust` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRun {
    #[serde(flatten)]
    pub key: TrustKey,
    /// Consecutive fixes people approved that verified.
    pub verified_in_a_row: u64,
}

/// Whether a run of `verified_in_a_row` earns the offer, given `[actions] trust_after`.
pub fn earned(verified_in_a_row: u64, trust_after: u32) -> bool {
    verified_in_a_row >= u64::from(trust_after.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_catalogue_fixes_of_a_signal_can_be_trusted() {
        let start = TrustKey::parse("container_down", "container_start", "web-1").unwrap();
        assert_eq!(start.as_string(), "container_down:container_start:web-1");
        assert!(TrustKey::parse("disk", "sandbox_cleanup", "sandbox").is_ok());
        for (signal, action, target) in [
            ("container_down", "container_memory_limit", "web-1"),
            ("host_cpu", "container_restart", "web-1"),
            ("container_down", "notify_only", "web-1"),
            ("sandbox_size", "sandbox_cleanup", "web-1"),
            ("container_down", "container_start", "sandbox"),
            ("container_down", "container_start", "two words"),
            ("container_down", "container_start", ""),
            ("nope", "container_start", "web-1"),
            ("container_down", "rm -rf", "web-1"),
        ] {
            assert!(
                TrustKey::parse(signal, action, target).is_err(),
                "{signal} {action} {target}"
            );
        }
    }

    #[test]
    fn a_run_earns_the_offer_at_trust_after() {
        assert!(!earned(4, 5));
        assert!(earned(5, 5));
        assert!(earned(6, 5));
        // 0 would offer trust for nothing; it counts as 1.
        assert!(!earned(0, 0));
        assert!(earned(1, 0));
    }

    #[test]
    fn a_plans_key_names_its_own_target() {
        let plan = ActionPlan::ContainerStart {
            container: "web".into(),
        };
        let key = TrustKey::of_plan(Signal::ContainerDown, &plan);
        assert_eq!(key.target, "web");
        let cleanup = ActionPlan::SandboxCleanup { dirs: vec![] };
        assert_eq!(
            TrustKey::of_plan(Signal::SandboxSize, &cleanup).target,
            "sandbox"
        );
    }
}
