//! The HTTP API against the real application: shapes, errors, decisions, races.

use std::collections::BTreeSet;

use sentinel::domain::{Incident, Risk, Status};
use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

const SPEC_INCIDENT_KEYS: [&str; 17] = [
    "id",
    "fingerprint",
    "signal",
    "resource",
    "severity",
    "status",
    "value",
    "threshold",
    "risk",
    "proposed_action",
    "root_cause",
    "confidence",
    "analyzer",
    "opened_at",
    "updated_at",
    "version",
    "timeline",
];

fn audit_events(reply: &Value) -> Vec<(String, String, Option<String>)> {
    reply["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
                e["role"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[tokio::test]
async fn health_readiness_and_status_answer_without_a_key() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz", None).await.body["status"], "ok");
    let ready = app.get("/readyz", None).await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.body["store"], "embedded");
    let status = app.get("/api/status", None).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body["mode"], "auto");
    assert_eq!(status.body["paused"], false);
    let signals = status.body["signals"].as_array().unwrap();
    assert!(!signals.is_empty(), "every configured signal is listed");
    assert!(
        signals
            .iter()
            .all(|s| s["state"] == "pending" && s["value"].is_null()),
        "no monitor cycle yet: {signals:?}"
    );
    assert_eq!(status.body["incidents"], Value::Array(vec![]));

    // What the monitor reports is what status shows, in the SPEC's shape.
    app.sentinel
        .set_signals(vec![sentinel::service::SignalReading {
            signal: "host_memory".into(),
            resource: "host".into(),
            value: Some(41.2),
            threshold: Some(60.0),
            state: "ok".into(),
            source: "local".into(),
            reason: None,
        }]);
    let status = app.get("/api/status", None).await;
    assert_eq!(
        status.body["signals"][0],
        serde_json::json!({"signal": "host_memory", "resource": "host", "value": 41.2,
            "threshold": 60.0, "state": "ok", "source": "local"})
    );
}

#[tokio::test]
async fn a_test_alert_opens_one_incident_with_the_spec_shape_and_repeats_update_it() {
    let app = spawn_app().await;
    let reply = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"memory"}"#,
        )
        .await;
    assert_eq!(reply.status, 201, "{reply:?}");
    for key in SPEC_INCIDENT_KEYS {
        assert!(
            reply.body.get(key).is_some(),
            "incident JSON lacks {key}: {reply:?}"
        );
    }
    let first: Incident = serde_json::from_value(reply.body.clone()).unwrap();
    assert!(first.id.as_str().starts_with("inc-"));
    // A test alert has a fingerprint of its own: no real breach folds into it.
    assert_eq!(reply.body["fingerprint"], "test:host_memory:host");
    assert_eq!(reply.body["synthetic"], true);
    assert_eq!(reply.body["signal"], "host_memory");
    assert_eq!(reply.body["status"], "detected");
    assert_eq!(reply.body["timeline"][0]["step"], "detected");
    assert!(first.value >= first.threshold);

    let again = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"memory"}"#,
        )
        .await;
    assert_eq!(
        again.status, 200,
        "a repeat updates, it does not open: {again:?}"
    );
    assert_eq!(again.body["id"], reply.body["id"]);
    assert_eq!(again.body["occurrences"], 2);

    let listed = app.get("/api/incidents", Some(&app.keys.viewer)).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    let status = app.get("/api/status", None).await;
    assert_eq!(status.body["incidents"][0]["id"], reply.body["id"]);

    let one = app
        .get(
            &format!("/api/incidents/{}", first.id),
            Some(&app.keys.viewer),
        )
        .await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["id"], reply.body["id"]);

    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    assert_eq!(audit.body["chain"]["verified"], true);
    let events = audit_events(&audit.body);
    assert_eq!(
        events,
        vec![("IncidentOpened".into(), "sentinel".into(), None)]
    );
}

#[tokio::test]
async fn incidents_are_listed_newest_first_and_filter_open() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for scenario in ["memory", "cpu", "disk", "latency", "container", "sandbox"] {
        ids.push(app.trigger(scenario).await.id);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let listed = app.get("/api/incidents", Some(&app.keys.viewer)).await;
    let listed: Vec<String> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    let newest_first: Vec<String> = ids.iter().rev().map(|i| i.to_string()).collect();
    assert_eq!(listed, newest_first);

    // Resolve one; `?status=open` no longer shows it, the full list still does.
    let mut first = app.store.get_incident(&ids[0]).await.unwrap().unwrap();
    first
        .transition(
            Status::Resolved,
            "sentinel",
            "recovered",
            sentinel::domain::Timestamp::now(),
        )
        .unwrap();
    app.store.update_incident(&first).await.unwrap();
    let open = app
        .get("/api/incidents?status=open", Some(&app.keys.viewer))
        .await;
    let open_ids: BTreeSet<&str> = open
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(open_ids.len(), 5);
    assert!(!open_ids.contains(ids[0].as_str()));
    let limited = app
        .get("/api/incidents?limit=2", Some(&app.keys.viewer))
        .await;
    assert_eq!(limited.body.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bad_input_gets_a_json_error_and_changes_nothing() {
    let app = spawn_app().await;
    let admin = Some(app.keys.admin.as_str());
    let cases: [(&str, &str, u16, &str); 6] = [
        (
            "/api/trigger-alert",
            r#"{"scenario":"nuke"}"#,
            400,
            "unknown scenario",
        ),
        ("/api/trigger-alert", r#"{"scenario":"#, 400, ""),
        (
            "/api/trigger-alert",
            r#"{"scenario":"cpu","extra":1}"#,
            400,
            "extra",
        ),
        ("/api/trigger-alert", "[1,2,3]", 400, ""),
        ("/api/trigger-alert", "", 400, ""),
        ("/api/trigger-alert", &"x".repeat(0), 400, ""),
    ];
    for (path, body, status, says) in cases {
        let reply = app.post(path, admin, body).await;
        assert_eq!(reply.status, status, "{body:?}: {reply:?}");
        let error = reply.body["error"].as_str().expect("an error message");
        assert!(
            error.contains(says),
            "{body:?}: {error:?} does not say {says:?}"
        );
    }
    // Without a JSON content type.
    let plain = app
        .client
        .post(format!("{}/api/trigger-alert", app.base))
        .header("x-api-key", &app.keys.admin)
        .body(r#"{"scenario":"cpu"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    // Over the body limit.
    let huge = format!(r#"{{"scenario":"{}"}}"#, "a".repeat(100_000));
    let reply = app.post("/api/trigger-alert", admin, &huge).await;
    assert_eq!(reply.status, 413, "{:?}", reply.status);
    assert!(reply.body["error"].is_string());

    for query in [
        "?status=bogus",
        "?limit=0",
        "?limit=abc",
        "?limit=5000",
        "?colour=red",
    ] {
        let reply = app
            .get(&format!("/api/incidents{query}"), Some(&app.keys.viewer))
            .await;
        assert_eq!(reply.status, 400, "{query}: {reply:?}");
    }
    for id in ["inc-doesnotexist", "not-an-id", "inc-..%2F..%2Fetc"] {
        let reply = app
            .get(&format!("/api/incidents/{id}"), Some(&app.keys.viewer))
            .await;
        assert_eq!(reply.status, 404, "{id}: {reply:?}");
        assert!(reply.body["error"].is_string());
    }
    let unknown = app.get("/api/nothing-here", None).await;
    assert_eq!(unknown.status, 404);
    let wrong_method = app.post("/api/status", None, "{}").await;
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.body["error"].is_string());

    // Nothing above opened an incident or wrote to the audit log.
    assert!(app.store.list_audit().await.unwrap().is_empty());
    let all = app.get("/api/incidents", Some(&app.keys.viewer)).await;
    assert_eq!(all.body, Value::Array(vec![]));
}

async fn approval_flow(app: &TestApp) {
    let incident = app.trigger("container").await;
    // Still `detected`: nothing to approve yet.
    let early = app
        .post(
            &format!("/api/incidents/{}/approve", incident.id),
            Some(&app.keys.operator),
            "",
        )
        .await;
    assert_eq!(early.status, 409, "{early:?}");

    app.await_approval(&incident.id, Risk::Medium).await;
    let path = format!("/api/incidents/{}/approve", incident.id);
    let approved = app.post(&path, Some(&app.keys.operator), "").await;
    assert_eq!(approved.status, 200, "{approved:?}");
    assert_eq!(approved.body["status"], "approved");
    let last = approved.body["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["step"], "approved");
    assert_eq!(last["actor"], "api:test-operator (operator)");

    let twice = app.post(&path, Some(&app.keys.admin), "").await;
    assert_eq!(twice.status, 409, "approving twice: {twice:?}");

    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    assert_eq!(audit.body["chain"]["verified"], true);
    let events = audit_events(&audit.body);
    assert!(events.contains(&(
        "ApprovalGranted".into(),
        "api:test-operator".into(),
        Some("operator".into())
    )));
}

#[tokio::test]
async fn an_operator_approves_a_medium_risk_fix_once() {
    approval_flow(&spawn_app().await).await;
}

#[tokio::test]
async fn an_operator_approves_a_medium_risk_fix_once_on_redis() {
    approval_flow(&spawn_app_with(Backend::Redis, |_| {}).await).await;
}

#[tokio::test]
async fn high_risk_needs_an_admin() {
    let app = spawn_app().await;
    let incident = app.trigger("memory").await;
    app.await_approval(&incident.id, Risk::High).await;
    let path = format!("/api/incidents/{}/approve", incident.id);
    let refused = app.post(&path, Some(&app.keys.operator), "").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    let unchanged = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(unchanged.status, Status::AwaitingApproval);
    let reject = app
        .post(
            &format!("/api/incidents/{}/reject", incident.id),
            Some(&app.keys.operator),
            r#"{"reason":"mine"}"#,
        )
        .await;
    assert_eq!(reject.status, 403);
    let approved = app.post(&path, Some(&app.keys.admin), "").await;
    assert_eq!(approved.status, 200, "{approved:?}");
    // The refusals are in the audit log with who tried and with which role.
    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    let events = audit_events(&audit.body);
    let refused: Vec<_> = events.iter().filter(|e| e.0 == "DecisionRefused").collect();
    assert_eq!(refused.len(), 2, "{events:?}");
    assert!(refused.iter().all(|e| e.2.as_deref() == Some("operator")));
}

#[tokio::test]
async fn a_rejection_records_the_reason_and_ends_the_proposal() {
    let app = spawn_app().await;
    let incident = app.trigger("disk").await;
    app.await_approval(&incident.id, Risk::Medium).await;
    let path = format!("/api/incidents/{}/reject", incident.id);
    let bad = app.post(&path, Some(&app.keys.operator), "{not json").await;
    assert_eq!(bad.status, 400);
    let rejected = app
        .post(
            &path,
            Some(&app.keys.operator),
            r#"{"reason":"maintenance window"}"#,
        )
        .await;
    assert_eq!(rejected.status, 200, "{rejected:?}");
    assert_eq!(rejected.body["status"], "rejected");
    let last = rejected.body["timeline"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["message"], "rejected: maintenance window");
    let approve = app
        .post(
            &format!("/api/incidents/{}/approve", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(approve.status, 409);
}

#[tokio::test]
async fn approving_a_resolved_incident_is_a_conflict() {
    let app = spawn_app().await;
    let incident = app.trigger("cpu").await;
    let mut stored = app.await_approval(&incident.id, Risk::Medium).await;
    stored
        .transition(
            Status::Resolved,
            "sentinel",
            "recovered",
            sentinel::domain::Timestamp::now(),
        )
        .unwrap();
    app.store.update_incident(&stored).await.unwrap();
    let reply = app
        .post(
            &format!("/api/incidents/{}/approve", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    assert!(reply.body["error"].as_str().unwrap().contains("resolved"));
}

#[tokio::test]
async fn rolling_back_an_incident_with_no_executed_fix_is_a_conflict() {
    let app = spawn_app().await;
    let incident = app.trigger("sandbox").await;
    let reply = app
        .post(
            &format!("/api/incidents/{}/rollback", incident.id),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(reply.status, 409, "{reply:?}");
    let unchanged = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(unchanged.status, Status::Detected);
}

async fn concurrent_approvals(app: &TestApp) {
    let incident = app.trigger("memory").await;
    app.await_approval(&incident.id, Risk::Medium).await;
    let mut statuses = app.approve_concurrently(&incident.id, 10).await;
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{statuses:?}"
    );
    let audit = app.store.list_audit().await.unwrap();
    let granted = audit
        .iter()
        .filter(|e| e.record.event == "ApprovalGranted")
        .count();
    assert_eq!(granted, 1);
    let stored = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    let approvals = stored
        .timeline
        .iter()
        .filter(|e| e.step == "approved")
        .count();
    assert_eq!(approvals, 1);
}

#[tokio::test]
async fn concurrent_approvals_apply_exactly_once() {
    concurrent_approvals(&spawn_app().await).await;
}

#[tokio::test]
async fn concurrent_approvals_apply_exactly_once_on_redis() {
    concurrent_approvals(&spawn_app_with(Backend::Redis, |_| {}).await).await;
}

#[tokio::test]
async fn status_reports_the_shared_pause_flag_and_mode() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.mode = sentinel::config::Mode::DryRun;
    })
    .await;
    app.store
        .set_control(&sentinel::store::Control {
            paused: true,
            changed_by: Some("slack:U1".into()),
            changed_at: None,
        })
        .await
        .unwrap();
    let status = app.get("/api/status", None).await;
    assert_eq!(status.body["mode"], "dry-run");
    assert_eq!(status.body["paused"], true);
}

#[tokio::test]
async fn the_server_stops_gracefully_when_asked() {
    let app = spawn_app().await;
    let base = app.base.clone();
    app.stop().await;
    let after = reqwest::Client::new()
        .get(format!("{base}/healthz"))
        .timeout(std::time::Duration::from_secs(2))
        .send()
        .await;
    assert!(after.is_err(), "the server still answers after shutdown");
}
