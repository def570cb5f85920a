//! Earned autonomy and replay (SPEC §12.4), on real Docker and the real stores: after
//! `trust_after` verified approvals an admin's grant makes the next identical fix run on its
//! own; a failed verification revokes the grant and the next fix waits again; `sentinel
//! replay` over that history prints the decisions made then under the same configuration,
//! different ones under `approve-all`, and leaves the store byte for byte as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sentinel::domain::{Incident, IncidentId, Risk, Status};

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, TestApp};

const BIN: &str = env!("CARGO_BIN_EXE_sentinel");

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

/// Polls until `done` holds for the stored incident (bounded).
async fn wait_until(
    app: &TestApp,
    id: &IncidentId,
    what: &str,
    done: impl Fn(&Incident) -> bool,
) -> Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if done(&incident) {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never {what}; timeline: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> Incident {
    wait_until(app, id, &format!("reached {status}"), |i| {
        i.status == status
    })
    .await
}

fn has_step(incident: &Incident, step: &str) -> bool {
    incident.timeline.iter().any(|e| e.step == step)
}

/// Ticks the monitor until the fingerprint has an open incident (bounded).
async fn detect(app: &TestApp, fingerprint: &str) -> Incident {
    for _ in 0..30 {
        app.tick_monitor().await;
        if let Some(incident) = open_incident(app, fingerprint).await {
            return incident;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{fingerprint} was never detected");
}

/// Stops the container and waits for Sentinel's incident about it.
async fn stop_and_detect(app: &TestApp, container: &Container) -> Incident {
    // Clean samples first, so the detector has seen it up since the last incident.
    app.tick_monitor().await;
    app.tick_monitor().await;
    docker(&["stop", "-t", "1", &container.0]);
    detect(app, &format!("container_down:{}", container.0)).await
}

async fn audit_events(app: &TestApp) -> Vec<(String, Option<String>)> {
    let audit = app
        .get("/api/audit?limit=1000", Some(&app.keys.admin))
        .await;
    assert_eq!(audit.body["chain"]["verified"], true, "{:?}", audit.body);
    audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["incident"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

fn grant_body(container: &Container) -> String {
    format!(
        r#"{{"signal":"container_down","action":"container_start","target":"{}"}}"#,
        container.0
    )
}

fn sha256_of(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn replay(data_dir: &Path, config: Option<&Path>, extra_env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("SENTINEL_DATA_DIR", data_dir)
        .args(["replay", "--since", "1h"]);
    for (key, value) in extra_env {
        command.env(key, value);
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.output().expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The replay line of one incident.
fn line_of<'a>(out: &'a str, id: &IncidentId) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(id.as_str()))
        .unwrap_or_else(|| panic!("no replay line for {id} in:\n{out}"))
}

#[tokio::test]
async fn verified_approvals_earn_trust_a_failed_fix_revokes_it_and_replay_shows_it() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    // Fails once when /fail exists (removing it), else runs: the container can be made to
    // fail its next start from outside.
    let container = Container::run(
        "sentinel-trust",
        &[],
        &[
            "sh",
            "-c",
            "if [ -f /fail ]; then rm /fail; exit 1; fi; sleep 3600",
        ],
    );
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.actions.trust_after = 2;
        // The container was created moments ago, which is a recent change that keeps every
        // fix on it at medium risk, trust or not (tests/it/changes.rs): read none here.
        s.analyzer.change_window = sentinel::config::HumanDuration(Duration::ZERO);
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
        s.data_dir = data_dir.clone();
        // Only this test's container: other tests' containers share the daemon.
        s.monitor.container_include =
            vec![
                sentinel::domain::ContainerSelector::parse(&format!("name:{}", container.0))
                    .unwrap(),
            ];
    })
    .await;

    // Two fixes approved by an operator, each verified.
    let mut approved = Vec::new();
    for n in 0..2 {
        let incident = stop_and_detect(&app, &container).await;
        let waiting = wait_for(&app, &incident.id, Status::AwaitingApproval).await;
        assert_eq!(waiting.risk, Some(Risk::Medium), "fix {n}");
        if n == 0 {
            // One verified approval has not earned trust yet.
            let early = app
                .post("/api/trust", Some(&app.keys.admin), &grant_body(&container))
                .await;
            assert_eq!(early.status, 409, "{early:?}");
            assert!(
                early.body["error"]
                    .as_str()
                    .unwrap()
                    .contains("0 approved fixes in a row"),
                "{early:?}"
            );
        }
        let path = format!("/api/incidents/{}/approve", incident.id);
        let reply = app.post(&path, Some(&app.keys.operator), "").await;
        assert_eq!(reply.status, 200, "{reply:?}");
        wait_for(&app, &incident.id, Status::Resolved).await;
        approved.push(incident.id);
    }
    // The second verified approval reaches trust_after: its thread and card offer trust.
    let offered = wait_until(&app, &approved[1], "offered trust", |i| {
        has_step(i, "trust_offered")
    })
    .await;
    assert!(!has_step(
        &app.store.get_incident(&approved[0]).await.unwrap().unwrap(),
        "trust_offered"
    ));
    let card = sentinel::slack::cards::render_card(&offered, "").unwrap();
    let card = serde_json::to_string(&card.blocks).unwrap();
    assert!(card.contains("Let Sentinel do this"), "{card}");
    let runs = app.get("/api/trust", Some(&app.keys.viewer)).await;
    assert_eq!(runs.status, 200);
    assert_eq!(
        runs.body["runs"][0]["verified_in_a_row"], 2,
        "{:?}",
        runs.body
    );
    assert_eq!(runs.body["runs"][0]["earned"], true);

    // Only an admin grants it.
    let refused = app
        .post(
            "/api/trust",
            Some(&app.keys.operator),
            &grant_body(&container),
        )
        .await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let bad = app
        .post(
            "/api/trust",
            Some(&app.keys.admin),
            r#"{"signal":"host_cpu","action":"container_start","target":"x"}"#,
        )
        .await;
    assert_eq!(bad.status, 400, "{bad:?}");
    let granted = app
        .post("/api/trust", Some(&app.keys.admin), &grant_body(&container))
        .await;
    assert_eq!(granted.status, 201, "{granted:?}");
    let grant_id = granted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(granted.body["earned_by"], 2);
    let twice = app
        .post("/api/trust", Some(&app.keys.admin), &grant_body(&container))
        .await;
    assert_eq!(twice.status, 409, "{twice:?}");
    let page = app.get_text("/").await;
    assert!(page.contains("Trusted fixes"), "the page has the section");
    assert!(page.contains(&grant_id), "the page lists the grant");

    // The next identical fix runs on its own, as low risk, and says why.
    let trusted = stop_and_detect(&app, &container).await;
    let done = wait_for(&app, &trusted.id, Status::Resolved).await;
    assert_eq!(done.risk, Some(Risk::Low));
    assert!(done.approvals.is_empty(), "no person approved it");
    let execution = done.execution.as_ref().unwrap();
    assert_eq!(
        execution.approved_by,
        "policy (low risk, trusted, automatic)"
    );
    assert!(has_step(&done, "trusted"), "{:#?}", done.timeline);
    assert!(!has_step(&done, "awaiting_approval"));
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "running"
    );

    // A trusted fix that fails verification revokes the trust, in the thread and the audit.
    let failing = {
        app.tick_monitor().await;
        app.tick_monitor().await;
        docker(&["stop", "-t", "1", &container.0]);
        let marker = data.path().join("fail");
        std::fs::write(&marker, b"x").unwrap();
        docker(&[
            "cp",
            marker.to_str().unwrap(),
            &format!("{}:/fail", container.0),
        ]);
        detect(&app, &format!("container_down:{}", container.0)).await
    };
    let revoked = wait_until(&app, &failing.id, "revoked trust", |i| {
        has_step(i, "trust_revoked")
    })
    .await;
    assert!(has_step(&revoked, "trusted"), "it ran on trust");
    let reply = revoked
        .timeline
        .iter()
        .find(|e| e.step == "trust_revoked")
        .unwrap();
    assert!(reply.message.contains("failed verification"), "{reply:?}");
    assert!(reply.message.contains(&grant_id), "{reply:?}");
    assert!(sentinel::slack::cards::announces("trust_revoked"));
    let escalated = wait_for(&app, &failing.id, Status::Escalated).await;
    let listed = app.get("/api/trust", Some(&app.keys.viewer)).await;
    assert_eq!(
        listed.body["grants"],
        serde_json::json!([]),
        "{:?}",
        listed.body
    );
    assert_eq!(
        listed.body["runs"],
        serde_json::json!([]),
        "the run starts again"
    );
    let events = audit_events(&app).await;
    let named = |event: &str| events.iter().filter(|(e, _)| e == event).count();
    assert_eq!(named("TrustOffered"), 1, "{events:?}");
    assert_eq!(named("TrustGranted"), 1, "{events:?}");
    assert!(events.contains(&(
        "TrustRevoked".to_owned(),
        Some(failing.id.as_str().to_owned())
    )));

    // The next fix waits for a person again.
    let resolve = format!("/api/incidents/{}/resolve", escalated.id);
    let reply = app
        .post(&resolve, Some(&app.keys.operator), r#"{"note":"seen"}"#)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let after = detect(&app, &format!("container_down:{}", container.0)).await;
    let waiting = wait_for(&app, &after.id, Status::AwaitingApproval).await;
    assert_eq!(waiting.risk, Some(Risk::Medium));

    // Replay while the server runs: redb's lock says no, and replay says what to do.
    let busy = replay(&data_dir, None, &[]);
    assert!(!busy.status.success());
    assert!(
        text(&busy).contains("in use by a running Sentinel"),
        "{}",
        text(&busy)
    );

    // With the server stopped, replay reads the history and changes nothing.
    let ids = [
        approved[0].clone(),
        approved[1].clone(),
        trusted.id.clone(),
        failing.id.clone(),
        after.id.clone(),
    ];
    app.stop().await;
    let file = data_dir.join("sentinel.redb");
    let before = sha256_of(&file);
    let same = replay_when_closed(&data_dir, None);
    let out = text(&same);
    assert!(same.status.success(), "{out}");
    for id in &ids {
        assert!(line_of(&out, id).ends_with("— same"), "{out}");
    }
    assert!(line_of(&out, &approved[0]).contains(
        "then waited for an operator's approval (medium risk); now would wait for an operator's approval (medium risk)"
    ), "{out}");
    assert!(
        line_of(&out, &trusted.id).contains("now would run automatically (low risk, trusted)"),
        "{out}"
    );
    // Host signals may have opened notify-only incidents meanwhile: they replay the same.
    let n = incidents_replayed(&out);
    assert!(n >= 5, "{out}");
    assert!(
        out.contains(&format!("{n} incidents: {n} same, 0 different")),
        "{out}"
    );

    let approve_all = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(approve_all.path(), "mode = \"approve-all\"\n").unwrap();
    let changed = replay_when_closed(&data_dir, Some(approve_all.path()));
    let out = text(&changed);
    assert!(changed.status.success(), "{out}");
    for id in [&trusted.id, &failing.id] {
        let line = line_of(&out, id);
        assert!(line.ends_with("— different"), "{out}");
        assert!(
            line.contains("then ran automatically (low risk); now would wait for an operator's approval (low risk, trusted): mode approve-all"),
            "{line}"
        );
    }
    assert!(line_of(&out, &approved[0]).ends_with("— same"), "{out}");
    assert!(
        out.contains(&format!(
            "{n} incidents: {} same, 2 different: 2 would wait for approval",
            n - 2
        )),
        "{out}"
    );
    assert_eq!(sha256_of(&file), before, "replay left the store as it was");
}

/// The count the total line starts with.
fn incidents_replayed(out: &str) -> usize {
    let total = out.lines().last().unwrap_or_default();
    total
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no total line in:\n{out}"))
}

/// Replay, retried briefly while the stopped server's last tasks let go of the file.
fn replay_when_closed(data_dir: &Path, config: Option<&Path>) -> Output {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = replay(data_dir, config, &[]);
        if !text(&output).contains("in use") || Instant::now() > deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every key under `prefix` with its `DUMP`.
async fn dump(prefix: &str) -> BTreeMap<String, Vec<u8>> {
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut dumped = BTreeMap::new();
    for key in keys {
        let bytes: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        dumped.insert(key, bytes);
    }
    dumped
}

#[tokio::test]
async fn replay_on_redis_reads_the_history_and_leaves_every_key_as_it_was() {
    let app = spawn_app_with(Backend::Redis, |s| {
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(100));
    })
    .await;
    let prefix = app.sentinel.settings().store.redis_prefix.clone();
    std::fs::create_dir_all(app.sandbox.join("logs")).unwrap();
    std::fs::write(app.sandbox.join("logs/app.log"), vec![b'x'; 1 << 20]).unwrap();
    // Test alerts: a low-risk cleanup the policy approves on its own (recorded as a dry run).
    let mut ids = Vec::new();
    for _ in 0..2 {
        let incident = app.trigger("sandbox").await;
        let done = wait_for(&app, &incident.id, Status::Resolved).await;
        assert!(has_step(&done, "dry_run"), "{:#?}", done.timeline);
        ids.push(incident.id);
    }
    app.stop().await;
    let before = dump(&prefix).await;
    assert!(before.len() > 3, "{:?}", before.keys());
    let url = crate::helpers::redis_url();
    let env = [("REDIS_URL", url.as_str())];
    let config = tempfile::NamedTempFile::new().unwrap();
    let write_config = |mode: &str| {
        std::fs::write(
            config.path(),
            format!("mode = \"{mode}\"\n[store]\nredis_prefix = \"{prefix}\"\n"),
        )
        .unwrap();
    };
    let nowhere = tempfile::tempdir().unwrap();

    write_config("auto");
    let same = replay(nowhere.path(), Some(config.path()), &env);
    let out = text(&same);
    assert!(same.status.success(), "{out}");
    for id in &ids {
        assert!(
            line_of(&out, id).contains(
                "then ran automatically (low risk); now would run automatically (low risk) — same"
            ),
            "{out}"
        );
    }
    assert!(out.contains("2 incidents: 2 same, 0 different"), "{out}");

    write_config("approve-all");
    let changed = replay(nowhere.path(), Some(config.path()), &env);
    let out = text(&changed);
    assert!(changed.status.success(), "{out}");
    assert!(
        out.contains("2 incidents: 0 same, 2 different: 2 would wait for approval"),
        "{out}"
    );
    assert_eq!(dump(&prefix).await, before, "replay changed a key");
    assert!(
        !nowhere.path().join("sentinel.redb").exists(),
        "replay on Redis made no embedded store"
    );
}
