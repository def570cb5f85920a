//! Policy: decide the final risk of a proposed fix and who must approve it (SPEC §4).
//!
//! In: the proposed action, the analyzer's risk, the target's labels, the mode, the budget.
//! Out: a risk and the role needed to approve. Pure: no clock, no store.

use crate::domain::{ActionId, Risk, Role};

/// The final risk: the action's floor, raised by the analyzer's assessment, raised to high
/// for protected targets. The analyzer can raise risk, never lower it.
pub fn final_risk(action: ActionId, assessed: Risk, protected: bool) -> Risk {
    if protected {
        return Risk::High;
    }
    action.risk_floor().max(assessed)
}

/// Who may approve a fix of this risk. Low-risk fixes normally run on their own; when one
/// does wait (approve-all mode, a spent budget), an operator may approve it.
pub fn approver_role(risk: Risk) -> Role {
    match risk {
        Risk::Low | Risk::Medium => Role::Operator,
        Risk::High => Role::Admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_analyzer_may_raise_risk_but_never_lower_it() {
        assert_eq!(
            final_risk(ActionId::ContainerRestart, Risk::Low, false),
            Risk::Medium
        );
        assert_eq!(
            final_risk(ActionId::SandboxCleanup, Risk::High, false),
            Risk::High
        );
        assert_eq!(
            final_risk(ActionId::SandboxCleanup, Risk::Low, false),
            Risk::Low
        );
        assert_eq!(
            final_risk(ActionId::NotifyOnly, Risk::Low, true),
            Risk::High
        );
    }

    #[test]
    fn high_risk_needs_an_admin() {
        assert_eq!(approver_role(Risk::Low), Role::Operator);
        assert_eq!(approver_role(Risk::Medium), Role::Operator);
        assert_eq!(approver_role(Risk::High), Role::Admin);
    }
}
