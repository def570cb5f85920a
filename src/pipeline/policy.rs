//! Policy: decide the final risk of a proposed fix, and whether it runs on its own, waits for
//! a person (and which role), or is only described (SPEC §4).
//!
//! In: a [`PolicyInput`] (the checked plan, the analyzer's risk, whether the target is
//! protected, whether it changed just before the incident, whether an admin trusts this fix,
//! the mode, the pause switch, the budget already used). Out: a [`Decision`].
//! Pure: the caller reads the budget and the pause switch from the store.
//!
//! The analyzer may raise risk, never lower it below the action's floor. Trust (earned
//! autonomy, SPEC §12.4) is the one thing that lowers it, and only from medium to low:
//! [`trusted_risk`] has the rule. A target that changed in `[analyzer] change_window` before
//! the incident makes any fix on it at least medium, trust or not ([`changed_risk`]): a
//! person should see a fix that could hide a bad deploy. Only this module
//! can produce an [`AutoApproval`], the policy's half of the only way to an executed action
//! (`approve::ApprovedAction`).

use crate::config::Mode;
use crate::domain::{ActionId, ActionPlan, Risk, Role};

/// Everything the policy looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyInput<'a> {
    pub plan: &'a ActionPlan,
    pub assessed: Risk,
    /// `sentinel.protected=true` on the target container.
    pub protected: bool,
    pub mode: Mode,
    /// `/sentinel pause` is in force.
    pub paused: bool,
    /// Automatic actions on the same `action:target` in the last hour.
    pub recent_automatic: u64,
    /// `[actions] auto_budget_per_hour`.
    pub budget_per_hour: u32,
    /// `[actions] memory_limit_max_factor`: above it, raising a limit is high risk.
    pub max_memory_factor: f64,
    /// An admin trusts this (signal, action, target) (`crate::domain::TrustGrant`).
    pub trusted: bool,
    /// The fix's target container changed (was created, recreated, renamed, updated, or
    /// started from a new image) in `[analyzer] change_window` before the incident opened.
    pub changed: bool,
}

/// The policy's permission to run a low-risk fix without a person. Only [`decide`] makes one.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoApproval {
    pub(super) plan: ActionPlan,
    pub(super) risk: Risk,
    /// Low only because an admin trusts this fix.
    pub(super) trusted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Low risk, automation on, budget left: run it now.
    Automatic(AutoApproval),
    /// A person with at least `role` must approve; `why` says why it did not run on its own.
    NeedsApproval { role: Role, why: String },
    /// Nothing to run: tell people (`notify_only`).
    NotifyOnly,
    /// Dry-run mode: say what would happen, run nothing.
    DryRun { would: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub risk: Risk,
    pub verdict: Verdict,
    /// Trust lowered the risk from medium to low ([`trusted_risk`]).
    pub trust_applied: bool,
}

/// The final risk: the action's floor, raised by the analyzer's assessment, raised to high
/// for protected targets and for memory limits raised beyond the allowed factor.
pub fn final_risk(plan: &ActionPlan, assessed: Risk, protected: bool, max_factor: f64) -> Risk {
    if protected {
        return Risk::High;
    }
    let mut risk = plan.action().risk_floor().max(assessed);
    if let ActionPlan::ContainerMemoryLimit { factor, .. } = plan {
        if *factor > max_factor {
            risk = Risk::High;
        }
    }
    risk
}

/// The risk once trust is taken into account, and whether trust lowered it.
///
/// Trust vouches for the usual case of a fix that people approved, and that verified, again
/// and again; so it lowers exactly that case, medium to low, and nothing else:
/// - never for a `sentinel.protected=true` target (always an admin's decision);
/// - never a high risk: that is the protected target, a memory limit raised beyond
///   `memory_limit_max_factor`, or an analyzer that judged this incident high;
/// - never when the analyzer rated this incident above the action's floor (a cleanup it
///   judged medium): something about this case is unusual, and trust was earned on the usual.
///
/// Low stays low. What follows the risk still holds for a trusted fix: `approve-all` and
/// `dry-run`, the pause switch, and the budget and circuit breaker.
pub fn trusted_risk(
    plan: &ActionPlan,
    assessed: Risk,
    protected: bool,
    untrusted: Risk,
    trusted: bool,
) -> (Risk, bool) {
    let lowers = trusted
        && !protected
        && untrusted == Risk::Medium
        && assessed <= plan.action().risk_floor();
    if lowers {
        (Risk::Low, true)
    } else {
        (untrusted, false)
    }
}

/// The risk once a recent change of the target is taken into account, and whether the
/// change raised it: any fix but `notify_only` on a target that just changed is at least
/// medium, so a person looks before it runs.
pub fn changed_risk(plan: &ActionPlan, risk: Risk, changed: bool) -> (Risk, bool) {
    if changed && plan.action() != ActionId::NotifyOnly && risk < Risk::Medium {
        (Risk::Medium, true)
    } else {
        (risk, false)
    }
}

/// Who may approve a fix of this risk. Low-risk fixes normally run on their own; when one
/// does wait (approve-all mode, a spent budget, a pause), an operator may approve it.
pub fn approver_role(risk: Risk) -> Role {
    match risk {
        Risk::Low | Risk::Medium => Role::Operator,
        Risk::High => Role::Admin,
    }
}

pub fn decide(input: &PolicyInput<'_>) -> Decision {
    let untrusted = final_risk(
        input.plan,
        input.assessed,
        input.protected,
        input.max_memory_factor,
    );
    let (trusted, trust_applied) = trusted_risk(
        input.plan,
        input.assessed,
        input.protected,
        untrusted,
        input.trusted,
    );
    let (risk, raised_by_change) = changed_risk(input.plan, trusted, input.changed);
    // A change that undid trust's lowering means trust did not decide this fix.
    let trust_applied = trust_applied && !raised_by_change;
    let role = approver_role(risk);
    let verdict = if input.plan.action() == ActionId::NotifyOnly {
        Verdict::NotifyOnly
    } else if input.mode == Mode::DryRun {
        Verdict::DryRun {
            would: format!(
                "dry-run: would run {} ({risk} risk{}); nothing was executed",
                input.plan.action(),
                if risk == Risk::Low {
                    ", automatically"
                } else {
                    ", after approval"
                }
            ),
        }
    } else if raised_by_change {
        Verdict::NeedsApproval {
            role,
            why: format!(
                "the target changed just before the incident, so the fix is {risk} risk and \
                 needs an {role}'s approval"
            ),
        }
    } else if risk > Risk::Low {
        Verdict::NeedsApproval {
            role,
            why: format!("{risk} risk needs an {role}'s approval"),
        }
    } else if input.mode == Mode::ApproveAll {
        Verdict::NeedsApproval {
            role,
            why: "mode approve-all: every fix waits for approval".to_owned(),
        }
    } else if input.paused {
        Verdict::NeedsApproval {
            role,
            why: "automatic execution is paused".to_owned(),
        }
    } else if input.recent_automatic >= u64::from(input.budget_per_hour) {
        Verdict::NeedsApproval {
            role,
            why: format!(
                "circuit breaker open: {} automatic {} in the last hour for {} (budget {})",
                input.recent_automatic,
                if input.recent_automatic == 1 {
                    "action"
                } else {
                    "actions"
                },
                input.plan.key(),
                input.budget_per_hour
            ),
        }
    } else {
        Verdict::Automatic(AutoApproval {
            plan: input.plan.clone(),
            risk,
            trusted: trust_applied,
        })
    };
    Decision {
        risk,
        verdict,
        trust_applied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CleanupDir;

    fn cleanup() -> ActionPlan {
        ActionPlan::SandboxCleanup {
            dirs: CleanupDir::ALL.to_vec(),
        }
    }

    fn input(plan: &ActionPlan) -> PolicyInput<'_> {
        PolicyInput {
            plan,
            assessed: Risk::Low,
            protected: false,
            mode: Mode::Auto,
            paused: false,
            recent_automatic: 0,
            budget_per_hour: 3,
            max_memory_factor: 2.0,
            trusted: false,
            changed: false,
        }
    }

    fn kind(decision: &Decision) -> &'static str {
        match decision.verdict {
            Verdict::Automatic(_) => "auto",
            Verdict::NeedsApproval {
                role: Role::Operator,
                ..
            } => "operator",
            Verdict::NeedsApproval {
                role: Role::Admin, ..
            } => "admin",
            Verdict::NeedsApproval { .. } => "viewer?",
            Verdict::NotifyOnly => "notify",
            Verdict::DryRun { .. } => "dry-run",
        }
    }

    #[test]
    fn the_analyzer_may_raise_risk_but_never_lower_it() {
        let restart = ActionPlan::ContainerRestart {
            container: "web".into(),
        };
        assert_eq!(final_risk(&restart, Risk::Low, false, 2.0), Risk::Medium);
        assert_eq!(final_risk(&cleanup(), Risk::High, false, 2.0), Risk::High);
        assert_eq!(final_risk(&cleanup(), Risk::Low, false, 2.0), Risk::Low);
        assert_eq!(
            final_risk(&ActionPlan::NotifyOnly, Risk::Low, true, 2.0),
            Risk::High
        );
        let big = ActionPlan::ContainerMemoryLimit {
            container: "web".into(),
            factor: 3.0,
        };
        assert_eq!(final_risk(&big, Risk::Low, false, 2.0), Risk::High);
        let small = ActionPlan::ContainerMemoryLimit {
            container: "web".into(),
            factor: 1.5,
        };
        assert_eq!(final_risk(&small, Risk::Low, false, 2.0), Risk::Medium);
    }

    /// (what changes from the default input, expected verdict) for a low-risk cleanup.
    #[test]
    fn low_risk_runs_on_its_own_unless_something_says_wait() {
        let plan = cleanup();
        let table: Vec<(&str, PolicyInput, &str)> = vec![
            ("default", input(&plan), "auto"),
            (
                "approve-all",
                PolicyInput {
                    mode: Mode::ApproveAll,
                    ..input(&plan)
                },
                "operator",
            ),
            (
                "dry-run",
                PolicyInput {
                    mode: Mode::DryRun,
                    ..input(&plan)
                },
                "dry-run",
            ),
            (
                "paused",
                PolicyInput {
                    paused: true,
                    ..input(&plan)
                },
                "operator",
            ),
            (
                "budget 2 of 3",
                PolicyInput {
                    recent_automatic: 2,
                    ..input(&plan)
                },
                "auto",
            ),
            (
                "budget spent",
                PolicyInput {
                    recent_automatic: 3,
                    ..input(&plan)
                },
                "operator",
            ),
            (
                "assessed high",
                PolicyInput {
                    assessed: Risk::High,
                    ..input(&plan)
                },
                "admin",
            ),
            (
                "protected",
                PolicyInput {
                    protected: true,
                    ..input(&plan)
                },
                "admin",
            ),
        ];
        for (case, input, expected) in table {
            assert_eq!(kind(&decide(&input)), expected, "{case}");
        }
    }

    #[test]
    fn medium_and_high_always_wait_and_notify_only_never_runs() {
        let restart = ActionPlan::ContainerRestart {
            container: "web".into(),
        };
        assert_eq!(kind(&decide(&input(&restart))), "operator");
        let protected = PolicyInput {
            protected: true,
            ..input(&restart)
        };
        assert_eq!(kind(&decide(&protected)), "admin");
        assert_eq!(kind(&decide(&input(&ActionPlan::NotifyOnly))), "notify");
        let dry = PolicyInput {
            mode: Mode::DryRun,
            ..input(&restart)
        };
        assert_eq!(kind(&decide(&dry)), "dry-run");
    }

    fn start() -> ActionPlan {
        ActionPlan::ContainerStart {
            container: "web".into(),
        }
    }

    /// (case, input, expected verdict, whether trust was applied) for trusted fixes.
    #[test]
    fn trust_lowers_medium_to_low_and_nothing_else() {
        let start = start();
        let cleanup = cleanup();
        let big = ActionPlan::ContainerMemoryLimit {
            container: "web".into(),
            factor: 3.0,
        };
        let small = ActionPlan::ContainerMemoryLimit {
            container: "web".into(),
            factor: 1.5,
        };
        let trusted = |plan| PolicyInput {
            trusted: true,
            assessed: Risk::Medium,
            ..input(plan)
        };
        let table: Vec<(&str, PolicyInput, &str, bool)> = vec![
            ("untrusted medium waits", input(&start), "operator", false),
            ("trusted medium runs", trusted(&start), "auto", true),
            (
                "trusted, analyzer at the floor (low)",
                PolicyInput {
                    assessed: Risk::Low,
                    ..trusted(&start)
                },
                "auto",
                true,
            ),
            (
                "trusted limit within the factor",
                trusted(&small),
                "auto",
                true,
            ),
            (
                "trusted limit beyond the factor stays high",
                trusted(&big),
                "admin",
                false,
            ),
            (
                "protected target: never",
                PolicyInput {
                    protected: true,
                    ..trusted(&start)
                },
                "admin",
                false,
            ),
            (
                "analyzer judged it high: never",
                PolicyInput {
                    assessed: Risk::High,
                    ..trusted(&start)
                },
                "admin",
                false,
            ),
            (
                "analyzer raised a cleanup above its floor: never",
                trusted(&cleanup),
                "operator",
                false,
            ),
            (
                "low stays low, trust not needed",
                PolicyInput {
                    assessed: Risk::Low,
                    ..trusted(&cleanup)
                },
                "auto",
                false,
            ),
            (
                "approve-all still asks",
                PolicyInput {
                    mode: Mode::ApproveAll,
                    ..trusted(&start)
                },
                "operator",
                true,
            ),
            (
                "dry-run still only describes",
                PolicyInput {
                    mode: Mode::DryRun,
                    ..trusted(&start)
                },
                "dry-run",
                true,
            ),
            (
                "paused still waits",
                PolicyInput {
                    paused: true,
                    ..trusted(&start)
                },
                "operator",
                true,
            ),
            (
                "the circuit breaker still opens",
                PolicyInput {
                    recent_automatic: 3,
                    ..trusted(&start)
                },
                "operator",
                true,
            ),
            (
                "notify-only stays notify-only",
                trusted(&ActionPlan::NotifyOnly),
                "notify",
                false,
            ),
        ];
        for (case, input, expected, applied) in table {
            let decision = decide(&input);
            assert_eq!(kind(&decision), expected, "{case}");
            assert_eq!(decision.trust_applied, applied, "{case}");
            if applied {
                assert_eq!(decision.risk, Risk::Low, "{case}");
            }
        }
    }

    #[test]
    fn a_trusted_automatic_approval_says_it_was_trust() {
        let plan = start();
        let decision = decide(&PolicyInput {
            trusted: true,
            ..input(&plan)
        });
        match decision.verdict {
            Verdict::Automatic(approval) => {
                assert!(approval.trusted);
                assert_eq!(approval.risk, Risk::Low);
            }
            other => panic!("expected an automatic run, got {other:?}"),
        }
    }

    /// (case, input, expected verdict, risk, trust applied) for a target that changed in the
    /// window before its incident.
    #[test]
    fn a_changed_target_makes_every_fix_at_least_medium() {
        let start = start();
        let cleanup = cleanup();
        let big = ActionPlan::ContainerMemoryLimit {
            container: "web".into(),
            factor: 3.0,
        };
        let changed = |plan| PolicyInput {
            changed: true,
            ..input(plan)
        };
        let table: Vec<(&str, PolicyInput, &str, Risk, bool)> = vec![
            (
                "unchanged low runs",
                input(&cleanup),
                "auto",
                Risk::Low,
                false,
            ),
            (
                "changed low waits",
                changed(&cleanup),
                "operator",
                Risk::Medium,
                false,
            ),
            (
                "changed medium stays medium",
                changed(&start),
                "operator",
                Risk::Medium,
                false,
            ),
            (
                "trusted and unchanged runs as low",
                PolicyInput {
                    trusted: true,
                    ..input(&start)
                },
                "auto",
                Risk::Low,
                true,
            ),
            (
                "trusted but changed waits, trust not applied",
                PolicyInput {
                    trusted: true,
                    ..changed(&start)
                },
                "operator",
                Risk::Medium,
                false,
            ),
            (
                "changed high stays high",
                changed(&big),
                "admin",
                Risk::High,
                false,
            ),
            (
                "changed notify-only stays notify-only",
                changed(&ActionPlan::NotifyOnly),
                "notify",
                Risk::Low,
                false,
            ),
            (
                "changed under dry-run is still only described",
                PolicyInput {
                    mode: Mode::DryRun,
                    ..changed(&cleanup)
                },
                "dry-run",
                Risk::Medium,
                false,
            ),
        ];
        for (case, input, expected, risk, applied) in table {
            let decision = decide(&input);
            assert_eq!(kind(&decision), expected, "{case}");
            assert_eq!(decision.risk, risk, "{case}");
            assert_eq!(decision.trust_applied, applied, "{case}");
        }
        let Verdict::NeedsApproval { why, .. } = decide(&changed(&cleanup)).verdict else {
            panic!("a changed target waits")
        };
        assert!(why.contains("changed just before the incident"), "{why}");
    }
}
