//! Decision regression: a fixture set of incidents (metrics snapshot and evidence) replayed
//! through the rules analyzer and the policy; each must give the recorded action, risk and
//! verdict. A change to the rules or the policy shows up here as a diff of decisions.

use std::collections::BTreeMap;

use sentinel::config::{Mode, Settings};
use sentinel::domain::{
    Change, ChangeKind, Detection, Incident, IncidentId, Resource, Risk, Severity, Signal, Source,
    Timestamp,
};
use sentinel::pipeline::analyze::facts::Catalogue;
use sentinel::pipeline::analyze::{check, check_citations, rules, ChangesRead, Evidence};
use sentinel::pipeline::policy::{decide, PolicyInput, Verdict};
use sentinel::runtime::ContainerSample;

const MB: u64 = 1_000_000;

fn container(name: &str, state: &str, used_mb: Option<u64>, limit_mb: u64) -> ContainerSample {
    ContainerSample {
        name: name.to_owned(),
        id: format!("id-{name}"),
        state: state.to_owned(),
        health: None,
        restart_count: 0,
        exit_code: Some(if state == "exited" { 137 } else { 0 }),
        restart_policy: "no".to_owned(),
        labels: BTreeMap::new(),
        memory_used_bytes: used_mb.map(|m| m * MB),
        memory_limit_bytes: used_mb.map(|_| limit_mb * MB),
    }
}

struct Case {
    name: &'static str,
    signal: Signal,
    resource: &'static str,
    value: f64,
    severity: Severity,
    evidence: Evidence,
    mode: Mode,
    paused: bool,
    recent: u64,
    /// Expected: action id, final risk, verdict ("auto", "operator", "admin", "notify", "dry-run").
    expect: (&'static str, Risk, &'static str),
}

fn case(
    name: &'static str,
    signal: Signal,
    resource: &'static str,
    value: f64,
    expect: (&'static str, Risk, &'static str),
) -> Case {
    Case {
        name,
        signal,
        resource,
        value,
        severity: Severity::Warning,
        evidence: Evidence {
            docker_available: true,
            ..Evidence::default()
        },
        mode: Mode::Auto,
        paused: false,
        recent: 0,
        expect,
    }
}

fn with_containers(mut c: Case, containers: Vec<ContainerSample>) -> Case {
    c.evidence.containers = containers;
    c
}

/// A sandbox holding `dirs`, on the `/` mount.
fn with_sandbox(mut c: Case, dirs: &[(&str, u64)]) -> Case {
    c.evidence.sandbox_mounts = vec!["/".to_owned()];
    c.evidence.sandbox_dirs = dirs.iter().map(|(n, b)| (n.to_string(), b * MB)).collect();
    c.evidence.sandbox_bytes = Some(dirs.iter().map(|(_, b)| b * MB).sum());
    c
}

/// Docker recorded `changes` on the target in the window before the incident.
fn with_changes(mut c: Case, changes: &[(ChangeKind, &str)]) -> Case {
    c.evidence.changes = ChangesRead::Read {
        window: std::time::Duration::from_secs(1800),
        changes: changes
            .iter()
            .map(|(kind, detail)| Change {
                at: Timestamp::from_unix_millis(0),
                kind: *kind,
                detail: detail.to_string(),
            })
            .collect(),
    };
    c
}

fn critical(mut c: Case) -> Case {
    c.severity = Severity::Critical;
    c
}

fn protected(mut c: Case) -> Case {
    for container in &mut c.evidence.containers {
        container
            .labels
            .insert("sentinel.protected".into(), "true".into());
    }
    c
}

fn cases() -> Vec<Case> {
    use Risk::{High, Low, Medium};
    use Signal::*;
    let web = || container("web-1", "running", Some(700), 1024);
    let small = || container("sidecar", "running", Some(20), 128);
    let mut cases = vec![
        // Host memory: no action is allowed (SPEC §12.2); the root cause names the biggest
        // container and people decide.
        with_containers(
            case(
                "memory, one big container",
                HostMemory,
                "host",
                72.0,
                ("notify_only", Low, "notify"),
            ),
            vec![web(), small()],
        ),
        with_containers(
            critical(case(
                "memory critical, big container",
                HostMemory,
                "host",
                93.0,
                ("notify_only", Low, "notify"),
            )),
            vec![small(), web()],
        ),
        with_containers(
            case(
                "memory, only small containers",
                HostMemory,
                "host",
                70.0,
                ("notify_only", Low, "notify"),
            ),
            vec![small()],
        ),
        case(
            "memory, no containers",
            HostMemory,
            "host",
            65.0,
            ("notify_only", Low, "notify"),
        ),
        protected(with_containers(
            case(
                "memory, big container protected",
                HostMemory,
                "host",
                75.0,
                ("notify_only", Low, "notify"),
            ),
            vec![web()],
        )),
        // CPU and latency: nothing in the catalogue helps.
        case(
            "cpu warning",
            HostCpu,
            "host",
            85.0,
            ("notify_only", Low, "notify"),
        ),
        critical(case(
            "cpu critical",
            HostCpu,
            "host",
            99.0,
            ("notify_only", Low, "notify"),
        )),
        case(
            "latency warning",
            NetworkLatency,
            "host",
            250.0,
            ("notify_only", Low, "notify"),
        ),
        critical(case(
            "latency critical",
            NetworkLatency,
            "host",
            1500.0,
            ("notify_only", Low, "notify"),
        )),
        // Disk: clean the sandbox when it holds enough, else tell people.
        with_sandbox(
            critical(case(
                "disk, big logs",
                Disk,
                "/",
                96.0,
                ("sandbox_cleanup", Low, "auto"),
            )),
            &[("logs", 800), ("data", 100)],
        ),
        {
            let mut elsewhere = with_sandbox(
                critical(case(
                    "disk, big logs, sandbox on another mount",
                    Disk,
                    "/var",
                    96.0,
                    ("notify_only", Low, "notify"),
                )),
                &[("logs", 800)],
            );
            elsewhere.evidence.sandbox_mounts = vec!["/".to_owned()];
            elsewhere
        },
        with_sandbox(
            critical(case(
                "disk, only data",
                Disk,
                "/",
                97.0,
                ("notify_only", Low, "notify"),
            )),
            &[("data", 900)],
        ),
        with_sandbox(
            critical(case(
                "disk, tiny cache",
                Disk,
                "/",
                96.0,
                ("notify_only", Low, "notify"),
            )),
            &[("cache", 2)],
        ),
        // Sandbox size.
        with_sandbox(
            case(
                "sandbox logs",
                SandboxSize,
                "sandbox",
                150.0,
                ("sandbox_cleanup", Low, "auto"),
            ),
            &[("logs", 150)],
        ),
        with_sandbox(
            case(
                "sandbox tmp and cache",
                SandboxSize,
                "sandbox",
                130.0,
                ("sandbox_cleanup", Low, "auto"),
            ),
            &[("tmp", 80), ("cache", 50)],
        ),
        with_sandbox(
            case(
                "sandbox only data",
                SandboxSize,
                "sandbox",
                400.0,
                ("notify_only", Low, "notify"),
            ),
            &[("data", 400)],
        ),
        with_sandbox(
            case(
                "sandbox mixed",
                SandboxSize,
                "sandbox",
                300.0,
                ("sandbox_cleanup", Low, "auto"),
            ),
            &[("data", 200), ("logs", 100)],
        ),
        // Container down.
        with_containers(
            critical(case(
                "exited container",
                ContainerDown,
                "web-1",
                1.0,
                ("container_start", Medium, "operator"),
            )),
            vec![container("web-1", "exited", None, 0)],
        ),
        with_containers(
            critical(case(
                "dead container",
                ContainerDown,
                "web-1",
                1.0,
                ("container_start", High, "admin"),
            )),
            vec![container("web-1", "dead", None, 0)],
        ),
        with_containers(
            critical(case(
                "unhealthy container",
                ContainerDown,
                "web-1",
                1.0,
                ("container_restart", Medium, "operator"),
            )),
            vec![{
                let mut c = web();
                c.health = Some("unhealthy".into());
                c
            }],
        ),
        with_containers(
            critical(case(
                "crash loop",
                ContainerDown,
                "web-1",
                1.0,
                ("notify_only", Low, "notify"),
            )),
            vec![{
                let mut c = container("web-1", "restarting", None, 0);
                c.restart_count = 12;
                c
            }],
        ),
        critical(case(
            "container gone",
            ContainerDown,
            "web-1",
            1.0,
            ("notify_only", Low, "notify"),
        )),
        {
            let mut c = critical(case(
                "docker unreachable",
                ContainerDown,
                "web-1",
                1.0,
                ("notify_only", Low, "notify"),
            ));
            c.evidence.docker_available = false;
            c
        },
        protected(with_containers(
            critical(case(
                "protected exited",
                ContainerDown,
                "web-1",
                1.0,
                ("container_start", High, "admin"),
            )),
            vec![container("web-1", "exited", None, 0)],
        )),
        // Container memory: raise the limit, 1.5× on warning, 2× on critical.
        with_containers(
            case(
                "container memory warning",
                ContainerMemory,
                "web-1",
                70.0,
                ("container_memory_limit", Medium, "operator"),
            ),
            vec![web()],
        ),
        with_containers(
            critical(case(
                "container memory critical",
                ContainerMemory,
                "web-1",
                95.0,
                ("container_memory_limit", Medium, "operator"),
            )),
            vec![web()],
        ),
        protected(with_containers(
            case(
                "protected container memory",
                ContainerMemory,
                "web-1",
                75.0,
                ("container_memory_limit", High, "admin"),
            ),
            vec![web()],
        )),
        case(
            "container memory, gone",
            ContainerMemory,
            "web-1",
            75.0,
            ("notify_only", Low, "notify"),
        ),
        // External alerts are for people.
        critical(case(
            "external critical",
            External,
            "a1b2c3",
            1.0,
            ("notify_only", Low, "notify"),
        )),
        case(
            "external warning",
            External,
            "QueueBacklog/orders",
            1.0,
            ("notify_only", Low, "notify"),
        ),
    ];
    // The same low-risk fix under each thing that makes it wait.
    let cleanup = || {
        with_sandbox(
            case(
                "",
                SandboxSize,
                "sandbox",
                150.0,
                ("sandbox_cleanup", Low, "auto"),
            ),
            &[("logs", 150)],
        )
    };
    let mut approve_all = cleanup();
    approve_all.name = "cleanup in approve-all mode";
    approve_all.mode = Mode::ApproveAll;
    approve_all.expect.2 = "operator";
    let mut dry_run = cleanup();
    dry_run.name = "cleanup in dry-run mode";
    dry_run.mode = Mode::DryRun;
    dry_run.expect.2 = "dry-run";
    let mut paused = cleanup();
    paused.name = "cleanup while paused";
    paused.paused = true;
    paused.expect.2 = "operator";
    let mut spent = cleanup();
    spent.name = "cleanup with the budget spent";
    spent.recent = 3;
    spent.expect.2 = "operator";
    let mut almost = cleanup();
    almost.name = "cleanup with budget left";
    almost.recent = 2;
    let mut dry_medium = with_containers(
        case(
            "restart in dry-run mode",
            ContainerDown,
            "web-1",
            1.0,
            ("container_restart", Medium, "dry-run"),
        ),
        vec![{
            let mut c = web();
            c.health = Some("unhealthy".into());
            c
        }],
    );
    dry_medium.mode = Mode::DryRun;
    cases.extend([approve_all, dry_run, paused, spent, almost, dry_medium]);
    // A target that changed just before: container fixes stay at their medium floor (trust,
    // the one way below it, is in `policy::tests`); nothing on a host signal changes.
    cases.extend([
        with_changes(
            with_containers(
                case(
                    "container memory, recreated from a new image",
                    ContainerMemory,
                    "web-1",
                    72.0,
                    ("container_memory_limit", Medium, "operator"),
                ),
                vec![web()],
            ),
            &[
                (ChangeKind::Destroy, "a container named web-1 was removed"),
                (ChangeKind::Create, "web-1 was created"),
                (ChangeKind::Start, "web-1 was started from a new image"),
            ],
        ),
        with_changes(
            with_containers(
                case(
                    "container down, renamed",
                    ContainerDown,
                    "web-1",
                    1.0,
                    ("container_start", Medium, "operator"),
                ),
                vec![container("web-1", "exited", None, 0)],
            ),
            &[(
                ChangeKind::Rename,
                "container web-1-blue was renamed to web-1",
            )],
        ),
    ]);
    cases
}

#[test]
fn every_fixture_gets_its_recorded_decision() {
    let settings = Settings::defaults();
    let cases = cases();
    assert!(
        cases.len() >= 30,
        "the fixture set has {} incidents",
        cases.len()
    );
    let mut wrong = Vec::new();
    for case in &cases {
        let detection = Detection {
            signal: case.signal,
            resource: Resource::parse(case.resource).unwrap(),
            severity: case.severity,
            value: case.value,
            threshold: 60.0,
            source: Source::Local,
            summary: case.name.to_owned(),
            labels: BTreeMap::from([
                ("network_mb_per_s".to_owned(), "80".to_owned()),
                ("network_errors_per_s".to_owned(), "0.5".to_owned()),
            ]),
        };
        let incident = Incident::open(IncidentId::generate(), &detection, Timestamp::now());
        let analysis = rules::analyze(&incident, &case.evidence);
        assert_eq!(analysis.analyzer, "rules");
        assert!((0.0..=1.0).contains(&analysis.confidence), "{}", case.name);
        assert!(!analysis.root_cause.is_empty(), "{}", case.name);
        let plan = check(&incident, &analysis.proposed_action, &case.evidence)
            .unwrap_or_else(|e| panic!("{}: the rules proposed something refused: {e}", case.name));
        // The rules cite their own facts, by the ids of what they had.
        let catalogue = Catalogue::build(&incident, &case.evidence);
        check_citations(&analysis.cited, &catalogue)
            .unwrap_or_else(|e| panic!("{}: the rules' citations were refused: {e}", case.name));
        let changed = plan.container().is_some() && !case.evidence.changes.changes().is_empty();
        if changed {
            assert!(
                analysis.root_cause.contains("before it started failing")
                    && analysis.root_cause.contains("could hide a bad deploy"),
                "{}: {}",
                case.name,
                analysis.root_cause
            );
            assert!(
                analysis.cited.iter().any(|id| id.starts_with("change-")),
                "{}: {:?}",
                case.name,
                analysis.cited
            );
        }
        let decision = decide(&PolicyInput {
            plan: &plan,
            assessed: analysis.risk_assessment,
            protected: plan
                .container()
                .and_then(|n| case.evidence.container(n))
                .is_some_and(|c| c.protected()),
            mode: case.mode,
            paused: case.paused,
            recent_automatic: case.recent,
            budget_per_hour: settings.actions.auto_budget_per_hour,
            max_memory_factor: settings.actions.memory_limit_max_factor,
            // Trust has its own table (`policy::tests`) and the end-to-end test (`trust.rs`).
            trusted: false,
            changed,
        });
        let verdict = match &decision.verdict {
            Verdict::Automatic(_) => "auto",
            Verdict::NeedsApproval { role, .. } => role.as_str(),
            Verdict::NotifyOnly => "notify",
            Verdict::DryRun { .. } => "dry-run",
        };
        let got = (plan.action().as_str(), decision.risk, verdict);
        if got != case.expect {
            wrong.push(format!(
                "{}: expected {:?}, got {:?} ({})",
                case.name, case.expect, got, analysis.root_cause
            ));
        }
    }
    assert!(wrong.is_empty(), "decisions changed:\n{}", wrong.join("\n"));
}
