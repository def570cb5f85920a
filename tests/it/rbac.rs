//! The RBAC sweep: every route × {no key, wrong key, viewer, operator, admin} → status.

use std::collections::BTreeSet;

use reqwest::Method;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

/// A well-formed id no incident has: callers who pass the access check get 404.
const UNKNOWN: &str = "inc-doesnotexist";

/// (method, route as the router names it, statuses for no key, wrong key, viewer, operator,
/// admin). Written out by hand, independently of the router's own table.
const SWEEP: &[(&str, &str, [u16; 5])] = &[
    // The read-only page, its assets, the live stream and metrics: open to all.
    ("GET", "/", [200, 200, 200, 200, 200]),
    ("GET", "/assets/sentinel.css", [200, 200, 200, 200, 200]),
    ("GET", "/assets/sentinel.js", [200, 200, 200, 200, 200]),
    ("GET", "/api/stream", [200, 200, 200, 200, 200]),
    ("GET", "/metrics", [200, 200, 200, 200, 200]),
    ("GET", "/healthz", [200, 200, 200, 200, 200]),
    ("GET", "/readyz", [200, 200, 200, 200, 200]),
    ("GET", "/api/status", [200, 200, 200, 200, 200]),
    (
        "GET",
        "/api/infrastructure-status",
        [200, 200, 200, 200, 200],
    ),
    ("GET", "/api/approvals/pending", [401, 401, 200, 200, 200]),
    ("GET", "/api/incidents", [401, 401, 200, 200, 200]),
    ("GET", "/api/incidents/{id}", [401, 401, 404, 404, 404]),
    (
        "GET",
        "/api/incidents/{id}/postmortem",
        [401, 401, 404, 404, 404],
    ),
    (
        "POST",
        "/api/incidents/{id}/approve",
        [401, 401, 403, 404, 404],
    ),
    (
        "POST",
        "/api/incidents/{id}/reject",
        [401, 401, 403, 404, 404],
    ),
    // The veto window: a viewer may stop a scheduled fix; running it now needs an operator.
    (
        "POST",
        "/api/incidents/{id}/stop",
        [401, 401, 404, 404, 404],
    ),
    (
        "POST",
        "/api/incidents/{id}/run-now",
        [401, 401, 403, 404, 404],
    ),
    (
        "POST",
        "/api/incidents/{id}/resolve",
        [401, 401, 403, 404, 404],
    ),
    (
        "POST",
        "/api/incidents/{id}/rollback",
        [401, 401, 403, 403, 404],
    ),
    ("POST", "/api/trigger-alert", [401, 401, 403, 403, 201]),
    // Swept with the literal name "{name}", an unknown scenario: admins get 404.
    ("POST", "/api/scenarios/{name}", [401, 401, 403, 403, 404]),
    ("GET", "/api/audit", [401, 401, 403, 403, 200]),
    ("GET", "/api/silences", [401, 401, 200, 200, 200]),
    ("POST", "/api/silences", [401, 401, 403, 201, 201]),
    ("DELETE", "/api/silences/{id}", [401, 401, 403, 404, 404]),
    ("GET", "/api/trust", [401, 401, 200, 200, 200]),
    // Admins pass the access check; a fix with no verified approvals has not earned trust.
    ("POST", "/api/trust", [401, 401, 403, 403, 409]),
    ("DELETE", "/api/trust/{id}", [401, 401, 403, 403, 404]),
    // Bearer-token routes ignore API keys; with no token configured they always refuse.
    ("POST", "/api/alertmanager", [401, 401, 401, 401, 401]),
    ("POST", "/api/alerts", [401, 401, 401, 401, 401]),
    // Slack routes take a Slack signature, never an API key; with no signing secret
    // configured (as here) Slack is off and they answer 404 to everyone.
    ("POST", "/slack/events", [404, 404, 404, 404, 404]),
    ("POST", "/slack/commands", [404, 404, 404, 404, 404]),
    ("POST", "/slack/interactions", [404, 404, 404, 404, 404]),
];

/// Routes whose successful answer is not JSON.
const NOT_JSON: [&str; 5] = [
    "/",
    "/assets/sentinel.css",
    "/assets/sentinel.js",
    "/api/stream",
    "/metrics",
];

fn body_for(path: &str) -> Option<&'static str> {
    match path {
        "/api/trigger-alert" => Some(r#"{"scenario":"cpu"}"#),
        "/api/silences" => Some(r#"{"target":"web-1","duration":"1h"}"#),
        "/api/trust" => {
            Some(r#"{"signal":"container_down","action":"container_start","target":"web-1"}"#)
        }
        "/api/alerts" => Some(r#"{"name":"X","resource":"y"}"#),
        "/api/alertmanager" => Some(r#"{"version":"4","groupKey":"g","alerts":[]}"#),
        p if p.ends_with("/reject") => Some(r#"{"reason":"sweep"}"#),
        _ => None,
    }
}

async fn sweep(app: &TestApp) {
    let identities: [(&str, Option<&str>); 5] = [
        ("no key", None),
        (
            "wrong key",
            Some("sk-sentinel-0000000000000000000000000000000000000000"),
        ),
        ("viewer", Some(&app.keys.viewer)),
        ("operator", Some(&app.keys.operator)),
        ("admin", Some(&app.keys.admin)),
    ];
    for (method, route, expected) in SWEEP {
        let path = route.replace("{id}", UNKNOWN);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        for ((who, key), want) in identities.iter().zip(expected) {
            if NOT_JSON.contains(route) {
                // HTML, CSS, text or an endless stream: the status is enough.
                let url = format!("{}{path}", app.base);
                let mut request = app.client.request(method.clone(), url);
                if let Some(key) = key {
                    request = request.header("x-api-key", *key);
                }
                let status = request.send().await.expect("the server answers").status();
                assert_eq!(status.as_u16(), *want, "{method} {path} as {who}");
                continue;
            }
            let reply = app
                .request(method.clone(), &path, *key, body_for(route))
                .await;
            assert_eq!(
                reply.status, *want,
                "{method} {path} as {who}: expected {want}, got {reply:?}"
            );
            if reply.status >= 400 {
                assert!(
                    reply.body["error"].is_string(),
                    "{method} {path} as {who}: error body is not {{\"error\": …}}: {reply:?}"
                );
            }
        }
    }
}

#[test]
fn the_sweep_covers_every_route_of_the_router() {
    let routed: BTreeSet<(String, String)> = sentinel::app::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    let swept: BTreeSet<(String, String)> = SWEEP
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&swept).collect();
    let stale: Vec<_> = swept.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from the RBAC sweep: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "swept routes the router does not have: {stale:?}"
    );
}

#[tokio::test]
async fn every_route_answers_each_identity_as_the_spec_says() {
    let app = spawn_app().await;
    sweep(&app).await;
}

#[tokio::test]
async fn every_route_answers_each_identity_as_the_spec_says_on_redis() {
    let app = spawn_app_with(Backend::Redis, |_| {}).await;
    sweep(&app).await;
}

#[tokio::test]
async fn refused_callers_change_nothing() {
    let app = spawn_app().await;
    let incident = app.trigger("memory").await;
    app.await_approval(&incident.id, sentinel::domain::Risk::Medium)
        .await;
    let before = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    let audit_before = app.store.list_audit().await.unwrap().len();
    for key in [None, Some("bogus"), Some(app.keys.viewer.as_str())] {
        for action in ["approve", "reject", "rollback"] {
            let path = format!("/api/incidents/{}/{action}", incident.id);
            let reply = app.post(&path, key, "{}").await;
            assert!(matches!(reply.status, 401 | 403), "{path}: {reply:?}");
        }
        let reply = app
            .post("/api/trigger-alert", key, r#"{"scenario":"disk"}"#)
            .await;
        assert!(matches!(reply.status, 401 | 403), "{reply:?}");
    }
    let after = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(before, after, "a refused caller changed the incident");
    assert_eq!(app.store.list_audit().await.unwrap().len(), audit_before);
    let open = app
        .get("/api/incidents?status=open", Some(&app.keys.viewer))
        .await;
    assert_eq!(open.body.as_array().unwrap().len(), 1, "{open:?}");
}
