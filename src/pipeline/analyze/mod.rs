//! Analyze: turn an incident and its evidence into a root cause, a proposed catalogue action,
//! a risk assessment, a confidence and the facts used (SPEC §3).
//!
//! In: an `Incident` and [`Evidence`]. Out: an [`Analysis`]. Two analyzers: [`rules`]
//! (deterministic, pure, always available) and [`llm`] (an OpenAI-compatible endpoint that
//! only proposes). [`settle`] asks the configured one and returns a [`Settled`] proposal.
//! Whatever any analyzer proposes goes through [`check_proposal`] (an action outside the
//! catalogue, parameters outside its schema, a container not in the inventory or a path
//! outside the sandbox's cleanup directories never leave this module) and [`check_allowed`]
//! (the per-signal table of [`allowed_actions`], on the incident's own resource only). A
//! refused LLM proposal is recorded (`proposal_refused`) and the rules decide.
//!
//! Every analysis carries the facts it had ([`facts::Catalogue`], items with ids) and cites
//! the ones its root cause relies on; an LLM answer that cites none, or an id its prompt did
//! not list, is refused the same way ([`check_citations`]). A target container that changed
//! in `[analyzer] change_window` before the incident ([`changes`]) is named in the root cause
//! of any fix on it ([`explain_changes`]); the policy makes that fix at least medium risk.

pub mod changes;
pub mod facts;
pub mod llm;
pub mod rules;

use std::time::Duration;

use crate::domain::{
    ActionId, ActionPlan, Change, EvidenceItem, Incident, ProposedAction, Risk, Signal,
};
use crate::runtime::ContainerSample;
use facts::Catalogue;

/// What was learnt of the target container's recent changes (SPEC §12.4).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum ChangesRead {
    /// Not asked: the incident has no target container, or `change_window` is `"0s"`.
    #[default]
    NotRead,
    /// Docker's events of the `window` before the incident opened, as changes (maybe none).
    Read {
        window: Duration,
        changes: Vec<Change>,
    },
    /// Docker could not be asked: why, for people. Nothing is recorded as changed.
    Unknown(String),
}

impl ChangesRead {
    /// The changes read; none when nothing was read.
    pub fn changes(&self) -> &[Change] {
        match self {
            ChangesRead::Read { changes, .. } => changes,
            ChangesRead::NotRead | ChangesRead::Unknown(_) => &[],
        }
    }
}

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
    /// The watched disk mounts (`[monitor] disk_mounts`) that hold the sandbox: a `disk`
    /// incident may be answered with `sandbox_cleanup` only on one of these.
    pub sandbox_mounts: Vec<String>,
    /// The target container's recent changes.
    pub changes: ChangesRead,
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
    /// The facts the analyzer had, with their ids ([`facts::Catalogue`]).
    pub evidence: Vec<EvidenceItem>,
    /// The ids of the facts the root cause relies on, as the analyzer cited them (an LLM's
    /// may name ids it was not given until [`check_citations`] refuses them).
    pub cited: Vec<String>,
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

/// The actions allowed per signal (SPEC §12.2), each on the incident's own resource only
/// ([`check_allowed`]). The one definition of the table.
pub fn allowed_actions(signal: Signal) -> &'static [ActionId] {
    use ActionId::*;
    match signal {
        // Disk: cleanup only when the sandbox is on that mount (checked in `check_allowed`).
        Signal::SandboxSize | Signal::Disk => &[SandboxCleanup, NotifyOnly],
        Signal::ContainerDown => &[ContainerStart, ContainerRestart, NotifyOnly],
        Signal::ContainerMemory => &[ContainerRestart, ContainerMemoryLimit, NotifyOnly],
        Signal::HostCpu | Signal::HostMemory | Signal::NetworkLatency | Signal::External => {
            &[NotifyOnly]
        }
    }
}

/// Whether `plan` may answer `incident`: allowed for its signal by [`allowed_actions`], and
/// acting on the incident's own resource (its container; the sandbox, on a `disk` incident
/// only when the sandbox is on that mount). Pure.
pub fn check_allowed(
    incident: &Incident,
    plan: &ActionPlan,
    evidence: &Evidence,
) -> Result<(), Refused> {
    let signal = incident.signal;
    let resource = incident.resource.as_str();
    let allowed = allowed_actions(signal);
    if !allowed.contains(&plan.action()) {
        let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
        return Err(Refused(format!(
            "{} is not allowed for a {signal} incident (allowed: {})",
            plan.action(),
            names.join(", ")
        )));
    }
    match plan {
        ActionPlan::ContainerStart { container }
        | ActionPlan::ContainerRestart { container }
        | ActionPlan::ContainerMemoryLimit { container, .. }
            if container != resource =>
        {
            Err(Refused(format!(
                "{} of container {container:?} is not the incident's own container {resource:?}",
                plan.action()
            )))
        }
        ActionPlan::SandboxCleanup { .. }
            if signal == Signal::Disk && !evidence.sandbox_mounts.iter().any(|m| m == resource) =>
        {
            Err(Refused(format!(
                "sandbox_cleanup cannot free mount {resource}: the sandbox is not on it"
            )))
        }
        _ => Ok(()),
    }
}

/// Both checks: the catalogue and inventory ([`check_proposal`]), then the table
/// ([`check_allowed`]).
pub fn check(
    incident: &Incident,
    proposed: &ProposedAction,
    evidence: &Evidence,
) -> Result<ActionPlan, Refused> {
    let plan = check_proposal(proposed, evidence)?;
    check_allowed(incident, &plan, evidence)?;
    Ok(plan)
}

/// Whether `cited` holds the analysis to its facts: at least one id, and only ids of
/// `catalogue` (what the analyzer was shown).
pub fn check_citations(cited: &[String], catalogue: &Catalogue) -> Result<(), Refused> {
    if cited.is_empty() {
        return Err(Refused(
            "it cited no evidence (its answer must cite the ids of the facts it relied on)"
                .to_owned(),
        ));
    }
    let unknown: Vec<&str> = cited
        .iter()
        .filter(|id| catalogue.get(id).is_none())
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let quoted: Vec<String> = unknown.iter().take(5).map(|id| format!("{id:?}")).collect();
        return Err(Refused(format!(
            "it cited evidence {} that its prompt did not list",
            quoted.join(", ")
        )));
    }
    Ok(())
}

/// A fix on a target that changed just before its incident says so in its root cause
/// (`…; web-1 was recreated from a new image 4 min before it started failing; a restart
/// could hide a bad deploy`) and cites the changes. Nothing for `notify_only` or without
/// changes.
pub fn explain_changes(
    analysis: &mut Analysis,
    plan: &ActionPlan,
    incident: &Incident,
    evidence: &Evidence,
    catalogue: &Catalogue,
) {
    let Some(target) = plan.container() else {
        return;
    };
    let Some(headline) = changes::headline(target, evidence.changes.changes(), incident.opened_at)
    else {
        return;
    };
    if !analysis.root_cause.contains(&headline) {
        analysis.root_cause = format!(
            "{}; {headline}; {}",
            analysis.root_cause.trim_end_matches(['.', ' ']),
            changes::consequence(plan.action())
        );
    }
    for id in catalogue.cite(&catalogue.change_facts()) {
        if !analysis.cited.contains(&id) {
            analysis.cited.push(id);
        }
    }
}

/// What analysis settled on: the analysis, its checked plan, and the lines for the
/// timeline about what went wrong on the way. A line starting with `the LLM` is the
/// analyzer falling back (`analyzer_fell_back`); any other is a refusal (`proposal_refused`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub analysis: Analysis,
    pub plan: ActionPlan,
    pub refusals: Vec<String>,
}

/// Asks the LLM when one is configured ([`crate::config::Settings::analyzer_choice`]),
/// else the rules. A failing LLM, or an LLM proposal that [`check`] or [`check_citations`]
/// refuses, leaves the decision to the rules; a rules proposal refused too (which the table
/// tests rule out) becomes `notify_only`.
pub async fn settle(
    llm: Option<&llm::LlmAnalyzer>,
    incident: &Incident,
    evidence: &Evidence,
) -> Settled {
    let mut refusals = Vec::new();
    let catalogue = Catalogue::build(incident, evidence);
    if let Some(llm) = llm {
        match llm.analyze_reporting(incident, evidence).await {
            Ok(answered) => {
                if let Some(earlier) = answered.earlier_failures_summary() {
                    refusals.push(format!("the LLM answered after failed tries: {earlier}"));
                }
                let checked = check(incident, &answered.analysis.proposed_action, evidence)
                    .and_then(|plan| {
                        check_citations(&answered.analysis.cited, &catalogue).map(|()| plan)
                    });
                match checked {
                    Ok(plan) => {
                        let mut analysis = answered.analysis;
                        explain_changes(&mut analysis, &plan, incident, evidence, &catalogue);
                        return Settled {
                            analysis,
                            plan,
                            refusals,
                        };
                    }
                    Err(Refused(why)) => refusals.push(format!(
                        "proposal refused: {} proposed {}; {why}, so the rules decided",
                        answered.analysis.analyzer,
                        describe_proposal(&answered.analysis.proposed_action),
                    )),
                }
            }
            Err(failure) => refusals.push(format!(
                "the LLM analyzer failed, so the rules decided: {failure}"
            )),
        }
    }
    let mut analysis = rules::analyze(incident, evidence);
    let plan = match check(incident, &analysis.proposed_action, evidence) {
        Ok(plan) => plan,
        Err(refused) => {
            refusals.push(refused.to_string());
            analysis.proposed_action = ActionPlan::NotifyOnly.to_proposed();
            analysis.risk_assessment = Risk::Low;
            ActionPlan::NotifyOnly
        }
    };
    Settled {
        analysis,
        plan,
        refusals,
    }
}

/// `sandbox_cleanup`, `container_restart of web-1`.
fn describe_proposal(proposed: &ProposedAction) -> String {
    match proposed.params.get("container").and_then(|c| c.as_str()) {
        Some(container) => format!("{} of {container}", proposed.action),
        None => proposed.action.to_string(),
    }
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

    fn incident(signal: Signal, resource: &str) -> Incident {
        use crate::domain::{Detection, IncidentId, Resource, Severity, Source, Timestamp};
        let detection = Detection {
            signal,
            resource: Resource::parse(resource).unwrap(),
            severity: Severity::Warning,
            value: 1.0,
            threshold: 1.0,
            source: Source::Local,
            summary: "test".into(),
            labels: BTreeMap::new(),
        };
        Incident::open(
            IncidentId::generate(),
            &detection,
            Timestamp::from_unix_millis(0),
        )
    }

    /// Each catalogue action aimed at `own`, the incident's own resource.
    fn plan_on(action: ActionId, own: &str) -> ActionPlan {
        let container = own.to_owned();
        match action {
            ActionId::SandboxCleanup => ActionPlan::SandboxCleanup {
                dirs: crate::domain::CleanupDir::ALL.to_vec(),
            },
            ActionId::ContainerStart => ActionPlan::ContainerStart { container },
            ActionId::ContainerRestart => ActionPlan::ContainerRestart { container },
            ActionId::ContainerMemoryLimit => ActionPlan::ContainerMemoryLimit {
                container,
                factor: 1.5,
            },
            ActionId::NotifyOnly => ActionPlan::NotifyOnly,
        }
    }

    /// SPEC §12.2's table, written out apart from `allowed_actions`: every (signal, action)
    /// cell, the action aimed at the incident's own resource (the sandbox on the disk's mount).
    #[test]
    fn every_cell_of_the_per_signal_table() {
        use ActionId::*;
        let table: [(Signal, &str, [bool; 5]); 8] = [
            //                            cleanup start  restart limit  notify
            (
                Signal::SandboxSize,
                "sandbox",
                [true, false, false, false, true],
            ),
            (Signal::Disk, "/", [true, false, false, false, true]),
            (
                Signal::ContainerDown,
                "web-1",
                [false, true, true, false, true],
            ),
            (
                Signal::ContainerMemory,
                "web-1",
                [false, false, true, true, true],
            ),
            (Signal::HostCpu, "host", [false, false, false, false, true]),
            (
                Signal::HostMemory,
                "host",
                [false, false, false, false, true],
            ),
            (
                Signal::NetworkLatency,
                "host",
                [false, false, false, false, true],
            ),
            (
                Signal::External,
                "orders-queue",
                [false, false, false, false, true],
            ),
        ];
        let actions = [
            SandboxCleanup,
            ContainerStart,
            ContainerRestart,
            ContainerMemoryLimit,
            NotifyOnly,
        ];
        assert_eq!(actions.to_vec(), ActionId::ALL.to_vec());
        let evidence = Evidence {
            sandbox_mounts: vec!["/".into()],
            ..Evidence::default()
        };
        let mut cells = 0;
        for (signal, resource, row) in table {
            let incident = incident(signal, resource);
            for (action, expected) in actions.into_iter().zip(row) {
                let got = check_allowed(&incident, &plan_on(action, resource), &evidence);
                assert_eq!(got.is_ok(), expected, "{signal} × {action}: {got:?}");
                assert_eq!(allowed_actions(signal).contains(&action), expected);
                cells += 1;
            }
        }
        assert_eq!(cells, Signal::ALL.len() * ActionId::ALL.len());
    }

    #[test]
    fn actions_must_aim_at_the_incidents_own_resource() {
        let evidence = Evidence::default();
        let down = incident(Signal::ContainerDown, "web-1");
        for action in [ActionId::ContainerStart, ActionId::ContainerRestart] {
            let other = check_allowed(&down, &plan_on(action, "db-1"), &evidence).unwrap_err();
            assert!(
                other.0.contains("not the incident's own container"),
                "{other}"
            );
        }
        let memory = incident(Signal::ContainerMemory, "web-1");
        for action in [ActionId::ContainerRestart, ActionId::ContainerMemoryLimit] {
            assert!(check_allowed(&memory, &plan_on(action, "db-1"), &evidence).is_err());
            assert!(check_allowed(&memory, &plan_on(action, "web-1"), &evidence).is_ok());
        }
        // A disk whose mount does not hold the sandbox: cleanup frees nothing there.
        let disk = incident(Signal::Disk, "/var");
        let on_root = Evidence {
            sandbox_mounts: vec!["/".into()],
            ..Evidence::default()
        };
        let cleanup = plan_on(ActionId::SandboxCleanup, "sandbox");
        let refused = check_allowed(&disk, &cleanup, &on_root).unwrap_err();
        assert!(refused.0.contains("not on it"), "{refused}");
        assert!(check_allowed(&disk, &ActionPlan::NotifyOnly, &on_root).is_ok());
        // An external alert never gets a cleanup, whatever its text says.
        let external = incident(Signal::External, "logs");
        assert!(check_allowed(&external, &cleanup, &on_root).is_err());
    }

    /// The rules obey the table for every signal, whatever the evidence.
    #[test]
    fn the_rules_only_propose_what_the_table_allows() {
        let big = ContainerSample {
            state: "exited".into(),
            ..container("web-1", Some(900_000_000))
        };
        let evidences = [
            Evidence::default(),
            Evidence {
                containers: vec![
                    container("web-1", Some(900_000_000)),
                    container("db-1", Some(10)),
                ],
                sandbox_dirs: vec![("logs".into(), 500_000_000), ("data".into(), 10)],
                sandbox_bytes: Some(500_000_010),
                docker_available: true,
                sandbox_mounts: vec!["/".into()],
                changes: ChangesRead::Unknown("Docker: connection refused".into()),
            },
            Evidence {
                containers: vec![big],
                sandbox_dirs: vec![("cache".into(), 50_000_000)],
                docker_available: true,
                ..Evidence::default()
            },
        ];
        for evidence in &evidences {
            for signal in Signal::ALL {
                for resource in ["web-1", "/", "host", "sandbox"] {
                    let incident = incident(signal, resource);
                    let analysis = rules::analyze(&incident, evidence);
                    let plan = analysis.proposed_action.plan().unwrap();
                    assert!(
                        check_allowed(&incident, &plan, evidence).is_ok(),
                        "rules proposed {:?} for {signal} on {resource}",
                        analysis.proposed_action
                    );
                    // The rules cite their own facts, by ids of the catalogue they had.
                    let catalogue = Catalogue::build(&incident, evidence);
                    assert_eq!(analysis.evidence, catalogue.items());
                    assert_eq!(
                        check_citations(&analysis.cited, &catalogue),
                        Ok(()),
                        "{signal} on {resource}: {:?}",
                        analysis.cited
                    );
                }
            }
        }
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

    #[test]
    fn citations_must_name_listed_ids_and_at_least_one() {
        let evidence = Evidence {
            containers: vec![container("web-1", Some(10))],
            docker_available: true,
            ..Evidence::default()
        };
        let catalogue = Catalogue::build(&incident(Signal::ContainerMemory, "web-1"), &evidence);
        let ids = |ids: &[&str]| ids.iter().map(|id| id.to_string()).collect::<Vec<_>>();
        assert_eq!(check_citations(&ids(&["metric-1"]), &catalogue), Ok(()));
        let none = check_citations(&[], &catalogue).unwrap_err();
        assert!(none.0.contains("cited no evidence"), "{none}");
        let unknown = check_citations(&ids(&["metric-1", "metric-99"]), &catalogue).unwrap_err();
        assert_eq!(
            unknown.0,
            "it cited evidence \"metric-99\" that its prompt did not list"
        );
        // A fact in words rather than by id is not a citation.
        assert!(check_citations(&ids(&["web-1 uses 10 bytes"]), &catalogue).is_err());
    }

    #[test]
    fn a_fix_on_a_changed_target_says_why_in_its_root_cause() {
        use crate::domain::{Change, ChangeKind, Timestamp};
        let mut memory = incident(Signal::ContainerMemory, "web-1");
        memory.opened_at = Timestamp::from_unix_millis(600_000);
        let changed = Evidence {
            containers: vec![container("web-1", Some(900_000_000))],
            docker_available: true,
            changes: ChangesRead::Read {
                window: std::time::Duration::from_secs(1800),
                changes: vec![
                    Change {
                        at: Timestamp::from_unix_millis(300_000),
                        kind: ChangeKind::Create,
                        detail: "web-1 was created".into(),
                    },
                    Change {
                        at: Timestamp::from_unix_millis(360_000),
                        kind: ChangeKind::Start,
                        detail: "web-1 was started from a new image".into(),
                    },
                ],
            },
            ..Evidence::default()
        };
        let analysis = rules::analyze(&memory, &changed);
        assert!(
            analysis.root_cause.ends_with(
                "; web-1 was recreated from a new image 4 min before it started failing; \
                 raising its memory limit could hide a bad deploy"
            ),
            "{}",
            analysis.root_cause
        );
        assert!(analysis.cited.contains(&"change-1".to_owned()));
        assert!(analysis.cited.contains(&"change-2".to_owned()));
        // Without changes the root cause is the plain one.
        let unchanged = Evidence {
            changes: ChangesRead::default(),
            ..changed
        };
        let plain = rules::analyze(&memory, &unchanged);
        assert!(
            !plain.root_cause.contains("bad deploy"),
            "{}",
            plain.root_cause
        );
        assert!(plain.cited.iter().all(|id| !id.starts_with("change-")));
    }
}
