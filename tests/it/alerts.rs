//! External alerts (Alertmanager v4 and the generic webhook) and silences, end to end.

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, Reply, TestApp};

const TOKEN: &str = "am-test-token-3b9f";

async fn app_with_token() -> TestApp {
    spawn_app_with(Backend::Embedded, |s| {
        s.alertmanager.bearer_token = TOKEN.to_owned().into();
    })
    .await
}

fn alert(status: &str, fingerprint: &str, name: &str) -> Value {
    json!({
        "status": status,
        "labels": {"alertname": name, "severity": "critical", "instance": "db-1:9100"},
        "annotations": {"summary": "replication lag above 30 s"},
        "startsAt": "2026-11-28T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": fingerprint
    })
}

fn payload(alerts: Vec<Value>) -> String {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"ReplicationLag\"}",
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "sentinel",
        "groupLabels": {"alertname": "ReplicationLag"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts
    })
    .to_string()
}

async fn send(app: &TestApp, token: Option<&str>, body: &str) -> Reply {
    let mut request = app
        .client
        .post(format!("{}/api/alertmanager", app.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    Reply {
        status,
        body: response.json().await.unwrap(),
    }
}

async fn incidents(app: &TestApp) -> Vec<Value> {
    let reply = app.get("/api/incidents", Some(&app.keys.viewer)).await;
    reply.body.as_array().unwrap().clone()
}

#[tokio::test]
async fn firing_alerts_open_external_incidents_and_repeats_never_duplicate() {
    let app = app_with_token().await;
    let first = send(
        &app,
        Some(TOKEN),
        &payload(vec![alert("firing", "a1", "ReplicationLag")]),
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["opened"], 1);
    let again = send(
        &app,
        Some(TOKEN),
        &payload(vec![alert("firing", "a1", "ReplicationLag")]),
    )
    .await;
    assert_eq!(again.body["updated"], 1);
    assert_eq!(again.body["opened"], 0);
    let listed = incidents(&app).await;
    assert_eq!(listed.len(), 1);
    let incident = &listed[0];
    assert_eq!(incident["fingerprint"], "external:a1");
    assert_eq!(incident["signal"], "external");
    assert_eq!(incident["severity"], "critical");
    assert_eq!(incident["source"], "alertmanager");
    assert_eq!(incident["occurrences"], 2);
    assert!(incident["root_cause"].is_null());
    assert!(incident["summary"]
        .as_str()
        .unwrap()
        .contains("replication lag"));

    // A group of several alerts, one already open.
    let group = send(
        &app,
        Some(TOKEN),
        &payload(vec![
            alert("firing", "a1", "ReplicationLag"),
            alert("firing", "b2", "DiskPressure"),
            alert("firing", "c3", "HighLoad"),
        ]),
    )
    .await;
    assert_eq!(
        (
            group.body["opened"].as_u64(),
            group.body["updated"].as_u64()
        ),
        (Some(2), Some(1))
    );
    assert_eq!(incidents(&app).await.len(), 3);

    // Resolved alerts resolve their incidents; an unknown one is ignored.
    let resolved = send(
        &app,
        Some(TOKEN),
        &payload(vec![
            alert("resolved", "a1", "ReplicationLag"),
            alert("resolved", "zz", "Gone"),
        ]),
    )
    .await;
    assert_eq!(resolved.body["resolved"], 1, "{resolved:?}");
    assert_eq!(resolved.body["ignored"], 1);
    let open = app
        .get("/api/incidents?status=open", Some(&app.keys.viewer))
        .await;
    assert_eq!(open.body.as_array().unwrap().len(), 2);
    let all = incidents(&app).await;
    let a1 = all
        .iter()
        .find(|i| i["fingerprint"] == "external:a1")
        .unwrap();
    assert_eq!(a1["status"], "resolved");
    let last = a1["timeline"].as_array().unwrap().last().unwrap();
    assert!(last["message"]
        .as_str()
        .unwrap()
        .starts_with("resolved by its source"));

    // Firing again after resolution opens a new incident.
    let reopened = send(
        &app,
        Some(TOKEN),
        &payload(vec![alert("firing", "a1", "ReplicationLag")]),
    )
    .await;
    assert_eq!(reopened.body["opened"], 1);
}

#[tokio::test]
async fn a_wrong_missing_or_unconfigured_token_is_refused_and_stores_nothing() {
    let app = app_with_token().await;
    let body = payload(vec![alert("firing", "a1", "ReplicationLag")]);
    for token in [
        None,
        Some("wrong"),
        Some(""),
        Some(&TOKEN[..TOKEN.len() - 1]),
    ] {
        let reply = send(&app, token, &body).await;
        assert_eq!(reply.status, 401, "{token:?}: {reply:?}");
        assert!(reply.body["error"].is_string());
    }
    // An API key is not a bearer token.
    let with_key = app
        .post("/api/alertmanager", Some(&app.keys.admin), &body)
        .await;
    assert_eq!(with_key.status, 401);
    assert!(incidents(&app).await.is_empty());

    let unconfigured = spawn_app_with(Backend::Embedded, |_| {}).await;
    let reply = send(&unconfigured, Some(TOKEN), &body).await;
    assert_eq!(reply.status, 401);
    assert!(incidents(&unconfigured).await.is_empty());
}

#[tokio::test]
async fn malformed_payloads_get_400_with_the_reason_and_store_nothing() {
    let app = app_with_token().await;
    let cases = [
        ("{not json".to_owned(), ""),
        (
            json!({"version": "4", "groupKey": "g"}).to_string(),
            "alerts",
        ),
        (
            json!({"version": "2", "groupKey": "g", "alerts": [alert("firing", "a", "X")]})
                .to_string(),
            "version",
        ),
        // One bad alert refuses the whole group: the good one before it is not stored.
        (
            payload(vec![
                alert("firing", "ok1", "X"),
                alert("pending", "b", "Y"),
            ]),
            "alerts[1].status",
        ),
        (
            payload(vec![alert("firing", "has space", "X")]),
            "fingerprint",
        ),
    ];
    for (body, says) in cases {
        let reply = send(&app, Some(TOKEN), &body).await;
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
        let error = reply.body["error"].as_str().unwrap();
        assert!(error.contains(says), "{error:?} does not say {says:?}");
    }
    assert!(incidents(&app).await.is_empty());
    assert!(app.store.list_audit().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_generic_webhook_opens_and_resolves_an_incident() {
    let app = app_with_token().await;
    let post = |body: Value| {
        let app = &app;
        async move {
            let response = app
                .client
                .post(format!("{}/api/alerts", app.base))
                .header("authorization", format!("Bearer {TOKEN}"))
                .json(&body)
                .send()
                .await
                .unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = post(json!({"name": "QueueBacklog", "resource": "orders",
        "severity": "warning", "summary": "12k waiting", "value": 12000}))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["opened"], 1);
    let (_, body) =
        post(json!({"name": "QueueBacklog", "resource": "orders", "status": "resolved"})).await;
    assert_eq!(body["resolved"], 1);
    let (status, body) = post(json!({"name": "bad name!", "resource": "x"})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(json!({"name": "X", "resource": "y", "unknown": true})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn silences_suppress_new_incidents_until_they_are_expired() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    let operator = Some(app.keys.operator.as_str());
    let created = app
        .post(
            "/api/silences",
            operator,
            r#"{"target":"host_memory:host","duration":"1h","reason":"load test"}"#,
        )
        .await;
    assert_eq!(created.status, 201, "{created:?}");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["created_by"], "api:test-operator");

    let silenced = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"memory"}"#,
        )
        .await;
    assert_eq!(silenced.status, 409, "{silenced:?}");
    assert!(silenced.body["error"]
        .as_str()
        .unwrap()
        .contains("silenced"));
    // Another fingerprint is not silenced.
    app.trigger("cpu").await;

    let listed = app.get("/api/silences", Some(&app.keys.viewer)).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    let expired = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/silences/{id}"),
            operator,
            None,
        )
        .await;
    assert_eq!(expired.status, 200, "{expired:?}");
    let again = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/silences/{id}"),
            operator,
            None,
        )
        .await;
    assert_eq!(again.status, 404);
    let opened = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"memory"}"#,
        )
        .await;
    assert_eq!(opened.status, 201);

    // A resource silence covers every signal of the resource.
    app.post(
        "/api/silences",
        operator,
        r#"{"target":"sentinel-test","duration":"10m"}"#,
    )
    .await;
    let container = app
        .post(
            "/api/trigger-alert",
            Some(&app.keys.admin),
            r#"{"scenario":"container"}"#,
        )
        .await;
    assert_eq!(container.status, 409);

    for bad in [
        r#"{"target":"x","duration":"forever"}"#,
        r#"{"target":"x","duration":"0s"}"#,
        r#"{"target":"x","duration":"400d"}"#,
        r#"{"target":"","duration":"1h"}"#,
        r#"{"duration":"1h"}"#,
    ] {
        let reply = app.post("/api/silences", operator, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
    }
    let audit = app.store.list_audit().await.unwrap();
    let events: Vec<&str> = audit.iter().map(|e| e.record.event.as_str()).collect();
    assert!(
        events.contains(&"SilenceCreated") && events.contains(&"SilenceExpired"),
        "{events:?}"
    );
}

/// `/metrics` counts every open incident, not the status report's first hundred: an
/// Alertmanager storm of 130 fingerprints shows as 130.
#[tokio::test]
async fn the_open_incidents_gauge_counts_past_the_status_reports_hundred() {
    let app = app_with_token().await;
    let alerts = (0..130)
        .map(|n| alert("firing", &format!("f{n:04}"), &format!("Storm{n}")))
        .collect();
    assert_eq!(send(&app, Some(TOKEN), &payload(alerts)).await.status, 200);
    let metrics = app.get_text("/metrics").await;
    let open: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sentinel_incidents_open{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(open, 130.0, "{metrics}");
    let status = app.get("/api/status", Some(&app.keys.viewer)).await;
    assert_eq!(status.body["incidents"].as_array().unwrap().len(), 100);
}
