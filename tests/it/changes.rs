//! Recent changes (SPEC §12.4) on real Docker: two local images made with `docker import`
//! (busybox and a marker file that differs, so their ids differ). A container that exceeds
//! its memory threshold long after it was created gets the default risk and no changes;
//! trusted, the same fix runs as low risk; recreated from the other image just before the
//! breach, the same fix is medium risk despite the trust, the root cause says why, and the
//! card Slack received lists the change. The status page lists it too.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use sentinel::domain::{
    ActionId, ChangeKind, Incident, IncidentId, Risk, Signal, Status, Timestamp, TrustGrant,
    TrustKey,
};

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::slack_double::SlackDouble;

/// How far back the app reads events: long enough to hold a recreate and the ticks that
/// detect the breach after it, short enough to wait out.
const WINDOW: Duration = Duration::from_secs(10);
const CHANNEL: &str = "C0CHANGES";

/// An image imported from a tarball: /bin/busybox, a few applets, and `/etc/marker`
/// holding `marker`. Removed when dropped.
struct Image(String);

impl Image {
    fn import(tag: &str, marker: &str) -> Image {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox"))
            .expect("/bin/busybox (Debian package busybox-static)");
        for applet in ["sh", "sleep", "dd", "rm"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        std::fs::write(root.path().join("etc/marker"), marker).unwrap();
        let mut tar = Command::new("tar")
            .args(["-C", root.path().to_str().unwrap(), "-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar runs");
        let imported = Command::new("docker")
            .args(["import", "-c", "ENV PATH=/bin", "-", tag])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .expect("the docker CLI runs");
        assert!(tar.wait().unwrap().success(), "tar of the image root");
        assert!(
            imported.status.success(),
            "docker import {tag}: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        Image(tag.to_owned())
    }

    fn id(&self) -> String {
        docker(&["image", "inspect", "-f", "{{.Id}}", &self.0])
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn run(name: &str, image: &Image) {
    docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        "--memory",
        "64m",
        "--shm-size",
        "64m",
        &image.0,
        "sleep",
        "3600",
    ]);
}

/// 40 MB in the container's tmpfs: 62.5 % of its 64 MB limit, past the 60 % warning.
fn fill(name: &str) {
    docker(&[
        "exec",
        name,
        "dd",
        "if=/dev/zero",
        "of=/dev/shm/fill",
        "bs=1M",
        "count=40",
    ]);
}

async fn open_incident(app: &TestApp, fingerprint: &str) -> Option<Incident> {
    app.store
        .list_incidents(sentinel::store::IncidentQuery {
            open_only: true,
            limit: 1000,
        })
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.fingerprint.as_str() == fingerprint)
}

async fn detect(app: &TestApp, fingerprint: &str) -> Incident {
    for _ in 0..20 {
        app.tick_monitor().await;
        if let Some(incident) = open_incident(app, fingerprint).await {
            return incident;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{fingerprint} was never detected");
}

async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if incident.status == status {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never reached {status}; timeline: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The blocks of the latest card Slack received for `id` once it shows `status`.
async fn card_in_slack(double: &SlackDouble, id: &IncidentId, status: &str) -> String {
    let calls = double
        .wait_until(Duration::from_secs(20), |calls| {
            calls.iter().any(|c| {
                (c.method == "chat.postMessage" || c.method == "chat.update")
                    && c.thread_ts().is_none()
                    && c.text().contains(id.as_str())
                    && c.text().contains(status)
            })
        })
        .await;
    let card = calls
        .iter()
        .rev()
        .find(|c| {
            (c.method == "chat.postMessage" || c.method == "chat.update")
                && c.thread_ts().is_none()
                && c.text().contains(id.as_str())
                && c.text().contains(status)
        })
        .unwrap_or_else(|| panic!("no card of {id} showing {status} reached Slack"));
    assert_eq!(card.channel(), Some(CHANNEL));
    let blocks = &card.body["blocks"];
    match blocks {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Clears the breach and lets the detector see clean samples before the next one.
async fn clear(app: &TestApp, name: &str, incident: &IncidentId) {
    docker(&["exec", name, "rm", "-f", "/dev/shm/fill"]);
    let reply = app
        .post(
            &format!("/api/incidents/{incident}/resolve"),
            Some(&app.keys.operator),
            r#"{"note":"next case"}"#,
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    for _ in 0..3 {
        app.tick_monitor().await;
    }
}

fn steps(incident: &Incident) -> Vec<&str> {
    incident.timeline.iter().map(|e| e.step.as_str()).collect()
}

#[tokio::test]
async fn a_container_recreated_from_a_new_image_gets_a_medium_fix_with_the_change_on_its_card() {
    let suffix = IncidentId::generate().as_str()[4..].to_owned();
    let old = Image::import(&format!("sentinel-test/changes-a:{suffix}"), "a");
    let new = Image::import(&format!("sentinel-test/changes-b:{suffix}"), "b");
    assert_ne!(old.id(), new.id(), "the two images differ");
    let name = format!("sentinel-changes-{suffix}");
    let _guard = Container(name.clone());
    run(&name, &old);
    let created = Instant::now();

    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let selector = sentinel::domain::ContainerSelector::parse(&format!("name:{name}")).unwrap();
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.analyzer.kind = sentinel::config::AnalyzerKind::Rules;
        s.analyzer.change_window = sentinel::config::HumanDuration(WINDOW);
        // A trusted fix is scheduled first, so it can be looked at (and stopped) unrun.
        s.actions.veto_window = sentinel::config::HumanDuration(Duration::from_secs(600));
        s.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
        s.slack.api_url = api_url;
        s.slack.channel = CHANNEL.to_owned();
        // Only this test's container: other tests' containers share the daemon.
        s.monitor.container_include = vec![selector];
    })
    .await;
    let fingerprint = format!("container_memory:{name}");

    // Created well before the window: no change, the memory-limit fix at its default risk.
    tokio::time::sleep((WINDOW + Duration::from_secs(1)).saturating_sub(created.elapsed())).await;
    fill(&name);
    let plain = detect(&app, &fingerprint).await;
    let plain = wait_for(&app, &plain.id, Status::AwaitingApproval).await;
    assert_eq!(
        plain.risk,
        Some(ActionId::ContainerMemoryLimit.risk_floor())
    );
    assert_eq!(plain.risk, Some(Risk::Medium));
    assert_eq!(plain.changes, []);
    let root_cause = plain.root_cause.clone().unwrap();
    assert!(!root_cause.contains("bad deploy"), "{root_cause}");
    assert!(
        plain
            .evidence
            .iter()
            .any(|e| e.text.starts_with("Docker recorded no create, destroy")),
        "{:?}",
        plain.evidence
    );
    assert!(!steps(&plain).contains(&"changes_unknown"));
    let card = card_in_slack(&double, &plain.id, "awaiting approval").await;
    assert!(!card.contains("Recent changes"), "{card}");
    assert!(
        card.contains("`metric-1`"),
        "the card shows cited evidence: {card}"
    );
    clear(&app, &name, &plain.id).await;

    // The same container, its fix trusted: low risk, scheduled to run on its own.
    let key = TrustKey {
        signal: Signal::ContainerMemory,
        action: ActionId::ContainerMemoryLimit,
        target: name.clone(),
    };
    app.store.trust_count_verified(&key).await.unwrap();
    let grant = TrustGrant {
        id: format!("trust-{suffix}"),
        key,
        granted_by: "api:test-admin (admin)".to_owned(),
        granted_at: Timestamp::now(),
        earned_by: 1,
    };
    assert_eq!(
        app.store.grant_trust(&grant, 1).await.unwrap(),
        sentinel::store::TrustGrantOutcome::Granted
    );
    fill(&name);
    let trusted = detect(&app, &fingerprint).await;
    let trusted = wait_for(&app, &trusted.id, Status::Scheduled).await;
    assert_eq!(trusted.risk, Some(Risk::Low));
    assert_eq!(trusted.changes, []);
    let stop = app
        .post(
            &format!("/api/incidents/{}/stop", trusted.id),
            Some(&app.keys.viewer),
            "",
        )
        .await;
    assert_eq!(stop.status, 200, "{stop:?}");
    clear(&app, &name, &trusted.id).await;

    // Recreated from the new image, then over its threshold at once: the trusted fix is
    // medium risk again and waits for a person; the card and the root cause say why.
    docker(&["rm", "-f", &name]);
    run(&name, &new);
    let recreated = Instant::now();
    fill(&name);
    let changed = detect(&app, &fingerprint).await;
    assert!(
        recreated.elapsed() < WINDOW,
        "detection took {:?}, longer than the window",
        recreated.elapsed()
    );
    let changed = wait_for(&app, &changed.id, Status::AwaitingApproval).await;
    assert!(changed.risk >= Some(Risk::Medium), "{:?}", changed.risk);
    assert_eq!(changed.risk, Some(Risk::Medium));
    let kinds: Vec<ChangeKind> = changed.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [ChangeKind::Destroy, ChangeKind::Create, ChangeKind::Start],
        "{:#?}",
        changed.changes
    );
    let new_short = &new.id()["sha256:".len().."sha256:".len() + 12];
    let old_short = &old.id()["sha256:".len().."sha256:".len() + 12];
    let start = &changed.changes[2].detail;
    assert!(
        start.contains(&format!("{name} was started from a new image"))
            && start.contains(new_short)
            && start.contains(old_short),
        "{start}"
    );
    let root_cause = changed.root_cause.clone().unwrap();
    assert!(
        root_cause.contains(&format!("; {name} was recreated from a new image "))
            && root_cause.ends_with(
                " before it started failing; raising its memory limit could hide a bad deploy"
            ),
        "{root_cause}"
    );
    let waiting = changed
        .timeline
        .iter()
        .find(|e| e.step == "awaiting_approval")
        .unwrap();
    assert!(
        waiting
            .message
            .contains("the target changed just before the incident"),
        "{}",
        waiting.message
    );
    assert!(
        !steps(&changed).contains(&"trusted"),
        "trust did not decide it: {:?}",
        steps(&changed)
    );
    let cited_changes = changed
        .evidence_cited
        .iter()
        .filter(|id| id.starts_with("change-"))
        .count();
    assert_eq!(cited_changes, 3, "{:?}", changed.evidence_cited);

    let card = card_in_slack(&double, &changed.id, "awaiting approval").await;
    assert!(
        card.contains(&format!("Recent changes to `{name}`")),
        "{card}"
    );
    assert!(card.contains("was started from a new image"), "{card}");
    assert!(card.contains("could hide a bad deploy"), "{card}");
    assert!(card.contains("`change-3`"), "{card}");

    // What the policy decided on is audited, for replay.
    let audit = app
        .get("/api/audit?limit=1000", Some(&app.keys.admin))
        .await;
    let proposed: Vec<&serde_json::Value> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "ActionProposed")
        .collect();
    let changed_flag = |id: &IncidentId| {
        proposed
            .iter()
            .find(|e| e["incident"] == id.as_str())
            .map(|e| e["details"]["policy"]["changed"].clone())
    };
    assert_eq!(changed_flag(&plain.id), Some(serde_json::json!(false)));
    assert_eq!(changed_flag(&changed.id), Some(serde_json::json!(true)));

    // The status page lists the changes.
    let page = app.get_text("/").await;
    assert!(page.contains("recent changes"), "the page has the list");
    assert!(page.contains("was started from a new image"));
}

/// The collector against real Docker: exactly the name's events (not a longer name sharing
/// its prefix), a rename away from it included, oldest first, with the image ids resolved;
/// and the pure reading of them says update and rename.
#[tokio::test]
async fn the_collector_reads_exactly_the_names_events_with_their_image_ids() {
    use sentinel::runtime::docker::DockerCollector;
    let suffix = IncidentId::generate().as_str()[4..].to_owned();
    let name = format!("sentinel-events-{suffix}");
    let longer = format!("{name}0");
    let moved = format!("{name}-old");
    let _guards = [
        Container(name.clone()),
        Container(longer.clone()),
        Container(moved.clone()),
    ];
    let image = Image::import(&format!("sentinel-test/changes-e:{suffix}"), "e");
    let since = Timestamp::now();
    run(&name, &image);
    run(&longer, &image);
    docker(&["update", "--memory", "96m", "--memory-swap", "192m", &name]);
    docker(&["rename", &name, &moved]);
    let until = Timestamp::now();

    let collector = DockerCollector::connect("", 4, Duration::from_secs(10))
        .await
        .expect("Docker answers");
    let events = collector
        .container_events(&name, since, until)
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["create", "start", "update", "rename"],
        "{events:#?}"
    );
    assert!(events
        .iter()
        .all(|e| e.image_id.as_deref() == Some(image.id().as_str())));
    assert_eq!(events[3].old_name.as_deref(), Some(name.as_str()));
    assert_eq!(events[3].name, moved);

    let changes = sentinel::pipeline::analyze::changes::from_events(&name, &events, until);
    let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds,
        [ChangeKind::Create, ChangeKind::Update, ChangeKind::Rename],
        "a first start is no change of image: {changes:#?}"
    );
    assert!(changes[2]
        .detail
        .starts_with(&format!("{name} was renamed to {moved}")));
}
