//! Slack's inbound side against the real application: signed requests to `/slack/events`,
//! `/slack/commands` and `/slack/interactions`, and what they may and may not change.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sentinel::config::{DefaultRole, Settings};
use sentinel::domain::{Actor, Incident, Risk, Role, Status};
use sentinel::service::ServiceError;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::slack_double::SlackDouble;

const SECRET: &str = "test-signing-secret-0123456789abcdef";
const ADMIN: &str = "UADMIN1";
pub(crate) const OPERATOR: &str = "UOPERATOR1";
pub(crate) const VIEWER: &str = "UVIEWER1";
const STRANGER: &str = "USTRANGER1";
const APP_ID: &str = "A0SENTINEL";

// ---------------------------------------------------------------------------------------
// The test signer and request builders.

/// Signs like Slack: `v0=` + hex HMAC-SHA256(secret, `v0:{timestamp}:{body}`).
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `application/x-www-form-urlencoded`, as Slack writes it.
fn form(pairs: &[(&str, &str)]) -> String {
    fn encode(text: &str) -> String {
        let mut out = String::new();
        for byte in text.bytes() {
            match byte {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    out.push(byte as char)
                }
                b' ' => out.push('+'),
                other => out.push_str(&format!("%{other:02X}")),
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// How to sign (or not) one request.
#[derive(Debug, Clone)]
enum Signing {
    Valid,
    /// Signed at this many seconds from now.
    At(i64),
    /// No signature headers at all.
    Unsigned,
    /// Signed with another secret.
    WrongSecret,
    /// A signature made for an earlier timestamp, sent with a fresh one.
    Replayed,
    /// Signed, then one bit of the body flipped.
    BodyBitFlipped,
    /// Signed, then one bit of the signature flipped.
    SignatureBitFlipped,
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Value,
    elapsed: Duration,
}

async fn send(
    app: &TestApp,
    path: &str,
    content_type: &str,
    body: &str,
    signing: Signing,
    extra: &[(&str, &str)],
) -> Answer {
    let mut body = body.as_bytes().to_vec();
    let now = now_secs();
    let (timestamp, signature) = match signing {
        Signing::Valid => (now, sign(SECRET, &now.to_string(), &body)),
        Signing::At(offset) => {
            let ts = now + offset;
            (ts, sign(SECRET, &ts.to_string(), &body))
        }
        Signing::Unsigned => (0, String::new()),
        Signing::WrongSecret => (now, sign("another-secret", &now.to_string(), &body)),
        Signing::Replayed => (now, sign(SECRET, &(now - 120).to_string(), &body)),
        Signing::BodyBitFlipped => {
            let signature = sign(SECRET, &now.to_string(), &body);
            let middle = body.len() / 2;
            body[middle] ^= 0x04;
            (now, signature)
        }
        Signing::SignatureBitFlipped => {
            let mut signature = sign(SECRET, &now.to_string(), &body).into_bytes();
            let last = signature.len() - 1;
            signature[last] = if signature[last] == b'0' { b'1' } else { b'0' };
            (now, String::from_utf8(signature).unwrap())
        }
    };
    let unsigned = matches!(signing, Signing::Unsigned);
    let mut request = app
        .client
        .post(format!("{}{path}", app.base))
        .header("content-type", content_type)
        .body(body);
    if !unsigned {
        request = request
            .header("X-Slack-Request-Timestamp", timestamp.to_string())
            .header("X-Slack-Signature", signature);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let started = Instant::now();
    let response = request.send().await.expect("the server answers");
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path} answered {status} with non-JSON {text:?}"))
    };
    Answer {
        status,
        body,
        elapsed,
    }
}

/// A slash command's form, with a fresh `trigger_id` (commands that change something run once
/// per trigger id).
fn command_body(user: &str, text: &str, response_url: Option<&str>) -> String {
    let trigger = format!("{}.{}", now_secs(), rand_suffix());
    command_body_with_trigger(user, text, response_url, &trigger)
}

fn command_body_with_trigger(
    user: &str,
    text: &str,
    response_url: Option<&str>,
    trigger: &str,
) -> String {
    let mut pairs = vec![
        ("token", "deprecated"),
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", user),
        ("command", "/sentinel"),
        ("text", text),
        ("api_app_id", APP_ID),
        ("trigger_id", trigger),
    ];
    if let Some(url) = response_url {
        pairs.push(("response_url", url));
    }
    form(&pairs)
}

pub(crate) async fn slash(app: &TestApp, user: &str, text: &str) -> Answer {
    slash_with(app, user, text, None).await
}

async fn slash_with(app: &TestApp, user: &str, text: &str, response_url: Option<&str>) -> Answer {
    let body = command_body(user, text, response_url);
    send(
        app,
        "/slack/commands",
        "application/x-www-form-urlencoded",
        &body,
        Signing::Valid,
        &[],
    )
    .await
}

/// A `block_actions` payload for a card button.
fn click_body(user: &str, action_id: &str, value: &Value) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": "T1"},
        "api_app_id": APP_ID,
        "team": {"id": "T1"},
        "trigger_id": format!("{}.{}", now_secs(), rand_suffix()),
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C1"},
        "channel": {"id": "C1", "name": "incidents"},
        // Not Slack, not the configured API: never called (tests make no outside calls).
        "response_url": "http://127.0.0.1:9/actions/T1/1/x",
        "actions": [{
            "type": "button",
            "action_id": action_id,
            "block_id": "incident_actions",
            "value": value.to_string(),
            "action_ts": "1700000001.000200",
        }],
    });
    form(&[("payload", &payload.to_string())])
}

/// A button's value as the card draws it: the incident and its current proposal (cards of
/// incidents without one carry the version).
pub(crate) fn card_ref(incident: &Incident) -> Value {
    match &incident.proposal_id {
        Some(proposal) => json!({"incident": incident.id.as_str(), "proposal": proposal}),
        None => json!({"incident": incident.id.as_str(), "version": incident.version}),
    }
}

/// The value of button `action_id` on the first card the double received for `incident`.
fn first_drawn_button(double: &SlackDouble, incident: &Incident, action_id: &str) -> Option<Value> {
    double
        .accepted("chat.postMessage")
        .into_iter()
        .chain(double.accepted("chat.update"))
        .filter(|c| c.thread_ts().is_none() && c.text().contains(incident.id.as_str()))
        .find_map(|c| {
            let blocks = c.body.get("blocks")?.clone();
            let blocks: Vec<Value> = match blocks {
                Value::String(text) => serde_json::from_str(&text).ok()?,
                Value::Array(blocks) => blocks,
                _ => return None,
            };
            blocks.iter().find_map(|block| {
                block.get("elements")?.as_array()?.iter().find_map(|e| {
                    (e.get("action_id")?.as_str()? == action_id)
                        .then(|| serde_json::from_str(e.get("value")?.as_str()?).ok())
                        .flatten()
                })
            })
        })
}

/// Clicks, then waits until the click is handled (it is acknowledged first, handled after).
pub(crate) async fn click(app: &TestApp, user: &str, action_id: &str, value: &Value) -> Answer {
    let answer = send(
        app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &click_body(user, action_id, value),
        Signing::Valid,
        &[],
    )
    .await;
    app.sentinel.background().idle().await;
    answer
}

fn submission_body(user: &str, private_metadata: &str, reason: &str) -> String {
    let payload = json!({
        "type": "view_submission",
        "user": {"id": user},
        "api_app_id": APP_ID,
        "trigger_id": format!("{}.{}", now_secs(), rand_suffix()),
        "view": {
            "id": "V1",
            "type": "modal",
            "callback_id": "reject_reason",
            "private_metadata": private_metadata,
            "state": {"values": {"reason": {
                "reason": {"type": "plain_text_input", "value": reason},
            }}},
        },
    });
    form(&[("payload", &payload.to_string())])
}

async fn submit_reject(app: &TestApp, user: &str, private_metadata: &str, reason: &str) -> Answer {
    send(
        app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &submission_body(user, private_metadata, reason),
        Signing::Valid,
        &[],
    )
    .await
}

fn event_body(event_id: &str, api_app_id: &str, user: &str, text: &str) -> String {
    json!({
        "token": "deprecated",
        "team_id": "T1",
        "api_app_id": api_app_id,
        "type": "event_callback",
        "event_id": event_id,
        "event_time": now_secs(),
        "event": {
            "type": "app_mention",
            "user": user,
            "text": format!("<@U0SENTINEL> {text}"),
            "ts": "1700000000.000300",
            "channel": "C1",
            "event_ts": "1700000000.000300",
        },
    })
    .to_string()
}

async fn event(app: &TestApp, body: &str, extra: &[(&str, &str)]) -> Answer {
    send(
        app,
        "/slack/events",
        "application/json",
        body,
        Signing::Valid,
        extra,
    )
    .await
}

fn rand_suffix() -> String {
    sentinel::domain::IncidentId::generate()
        .as_str()
        .trim_start_matches("inc-")
        .to_owned()
}

// ---------------------------------------------------------------------------------------
// The application under test.

pub(crate) fn slack_settings(settings: &mut Settings) {
    settings.secrets.slack_signing_secret = Some(SecretString::from(SECRET));
    settings.slack.app_id = APP_ID.to_owned();
    settings.rbac.default_role = DefaultRole::None;
    settings.rbac.admins = vec![ADMIN.to_owned()];
    settings.rbac.operators = vec![OPERATOR.to_owned()];
    settings.rbac.viewers = vec![VIEWER.to_owned()];
}

async fn spawn_slack_app() -> TestApp {
    spawn_app_with(Backend::Embedded, slack_settings).await
}

/// An incident awaiting approval of a medium-risk fix.
async fn awaiting(app: &TestApp, scenario: &str, risk: Risk) -> Incident {
    let incident = app.trigger(scenario).await;
    app.await_approval(&incident.id, risk).await
}

async fn stored(app: &TestApp, incident: &Incident) -> Incident {
    app.store.get_incident(&incident.id).await.unwrap().unwrap()
}

/// Waits until `check` holds, for at most five seconds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A tiny HTTP server recording every POST body (a `response_url`), answering 200.
async fn recorder() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |body: String| {
        let record = Arc::clone(&record);
        async move {
            let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
            record.lock().unwrap().push(value);
            axum::Json(json!({"ok": true}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

/// A Prometheus that takes ten seconds to answer anything.
async fn slow_prometheus() -> String {
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        "{}"
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------
// Verification.

#[test]
fn the_test_signer_reproduces_slacks_worked_example() {
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    assert_eq!(
        sign(
            "8f742231b10e8888abcd99yyyzzz85a5",
            "1531420618",
            body.as_bytes()
        ),
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
    );
}

#[tokio::test]
async fn unsigned_forged_stale_future_replayed_and_flipped_requests_get_401_and_change_nothing() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let before = stored(&app, &incident).await;
    let audit_before = app.store.list_audit().await.unwrap();
    let silences_before = app.sentinel.silences().await.unwrap().len();

    // Each would change something if it were accepted.
    let requests: Vec<(&str, &str, String)> = vec![
        (
            "/slack/commands",
            "application/x-www-form-urlencoded",
            command_body(ADMIN, &format!("approve {}", incident.id), None),
        ),
        (
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            click_body(ADMIN, "approve", &card_ref(&before)),
        ),
        (
            "/slack/events",
            "application/json",
            event_body("EvForged1", APP_ID, ADMIN, "silence web-9 1h"),
        ),
    ];
    let attacks = [
        Signing::Unsigned,
        Signing::WrongSecret,
        Signing::At(-301),
        Signing::At(-3600),
        Signing::At(301),
        Signing::At(86_400),
        Signing::Replayed,
        Signing::BodyBitFlipped,
        Signing::SignatureBitFlipped,
    ];
    for (path, content_type, body) in &requests {
        for attack in &attacks {
            let answer = send(&app, path, content_type, body, attack.clone(), &[]).await;
            assert_eq!(answer.status, 401, "{path} {attack:?}: {answer:?}");
            assert_eq!(
                answer.body,
                json!({"error": "unauthorized"}),
                "{path} {attack:?}: the refusal says nothing about why"
            );
        }
    }
    // Give anything that slipped through into a background task the time to act.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored(&app, &incident).await,
        before,
        "the incident changed"
    );
    assert_eq!(app.store.list_audit().await.unwrap(), audit_before);
    assert_eq!(
        app.sentinel.silences().await.unwrap().len(),
        silences_before
    );

    // The same requests, signed properly, do act: the refusals above were the signature's.
    let (path, content_type, body) = &requests[0];
    let answer = send(&app, path, content_type, body, Signing::Valid, &[]).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
    // Just inside the window, both ways.
    for offset in [-290, 290] {
        let answer = slash_with(&app, VIEWER, "whoami", None).await;
        assert_eq!(answer.status, 200);
        let body = command_body(VIEWER, "whoami", None);
        let answer = send(
            &app,
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &body,
            Signing::At(offset),
            &[],
        )
        .await;
        assert_eq!(answer.status, 200, "{offset}: {answer:?}");
    }
}

#[tokio::test]
async fn without_a_signing_secret_every_slack_route_is_404() {
    let app = spawn_app_with(Backend::Embedded, |settings| {
        slack_settings(settings);
        settings.secrets.slack_signing_secret = None;
    })
    .await;
    for path in ["/slack/events", "/slack/commands", "/slack/interactions"] {
        let answer = send(&app, path, "application/json", "{}", Signing::Valid, &[]).await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert_eq!(answer.body, json!({"error": "slack is not configured"}));
    }
}

#[tokio::test]
async fn api_keys_do_not_open_the_slack_routes() {
    let app = spawn_slack_app().await;
    for key in [&app.keys.viewer, &app.keys.operator, &app.keys.admin] {
        let reply = app.post("/slack/commands", Some(key), "{}").await;
        assert_eq!(reply.status, 401, "{reply:?}");
    }
}

// ---------------------------------------------------------------------------------------
// Events.

#[tokio::test]
async fn url_verification_is_answered_with_the_challenge_once_verified() {
    let app = spawn_slack_app().await;
    let body = r#"{"token":"x","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    let answer = event(&app, body, &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"})
    );
    let forged = send(
        &app,
        "/slack/events",
        "application/json",
        body,
        Signing::WrongSecret,
        &[],
    )
    .await;
    assert_eq!(forged.status, 401);
}

#[tokio::test]
async fn an_event_delivered_three_times_is_handled_once() {
    let app = spawn_slack_app().await;
    let body = event_body("Ev0RETRIED", APP_ID, OPERATOR, "silence web-7 1h");
    // The first delivery and two retries, the retries concurrently.
    let first = event(&app, &body, &[]).await;
    assert_eq!(first.status, 200);
    let (second, third) = tokio::join!(
        event(
            &app,
            &body,
            &[
                ("X-Slack-Retry-Num", "1"),
                ("X-Slack-Retry-Reason", "http_timeout")
            ]
        ),
        event(
            &app,
            &body,
            &[
                ("X-Slack-Retry-Num", "2"),
                ("X-Slack-Retry-Reason", "http_timeout")
            ]
        ),
    );
    assert_eq!((second.status, third.status), (200, 200));
    eventually("the silence", || async {
        !app.sentinel.silences().await.unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let silences = app.sentinel.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0].created_by, format!("slack:{OPERATOR}"));
    let created = app
        .store
        .list_audit()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.event == "SilenceCreated")
        .count();
    assert_eq!(created, 1);
}

#[tokio::test]
async fn events_for_another_app_are_acknowledged_and_ignored() {
    let app = spawn_slack_app().await;
    let other = event_body("Ev0OTHER", "A0SOMEONEELSE", OPERATOR, "silence other-1 1h");
    assert_eq!(event(&app, &other, &[]).await.status, 200);
    let ours = event_body("Ev0OURS", APP_ID, OPERATOR, "silence ours-1 1h");
    assert_eq!(event(&app, &ours, &[]).await.status, 200);
    eventually("our event's silence", || async {
        !app.sentinel.silences().await.unwrap().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let targets: Vec<String> = app
        .sentinel
        .silences()
        .await
        .unwrap()
        .into_iter()
        .map(|s| format!("{:?}", s.target))
        .collect();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(targets[0].contains("ours-1"), "{targets:?}");
}

#[tokio::test]
async fn a_mention_by_someone_without_the_role_changes_nothing() {
    let app = spawn_slack_app().await;
    for (n, user) in [VIEWER, STRANGER].into_iter().enumerate() {
        let body = event_body(&format!("Ev0VIEW{n}"), APP_ID, user, "silence web-8 1h");
        assert_eq!(event(&app, &body, &[]).await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(app.sentinel.silences().await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Slash commands.

#[tokio::test]
async fn every_subcommand_answers_and_unknown_text_gets_usage() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "cpu", Risk::Medium).await;
    let id = incident.id.as_str();
    // (text, response type) as an admin; the changes come last so the questions see the
    // incident as set up.
    let table: Vec<(String, &str)> = vec![
        ("".into(), "ephemeral"),
        ("help".into(), "ephemeral"),
        ("status".into(), "ephemeral"),
        ("incidents".into(), "ephemeral"),
        (format!("show {id}"), "ephemeral"),
        ("whoami".into(), "ephemeral"),
        ("silence web-3 30m load test".into(), "in_channel"),
        ("unsilence web-3".into(), "in_channel"),
        ("pause".into(), "in_channel"),
        ("resume".into(), "in_channel"),
        ("check".into(), "in_channel"),
        ("trigger disk".into(), "in_channel"),
        (format!("reject {id} not now"), "in_channel"),
        ("dance".into(), "ephemeral"),
        ("approve".into(), "ephemeral"),
    ];
    for (text, response_type) in &table {
        let answer = slash(&app, ADMIN, text).await;
        assert_eq!(answer.status, 200, "{text:?}: {answer:?}");
        assert_eq!(
            answer.body["response_type"], *response_type,
            "{text:?}: {answer:?}"
        );
        assert!(
            !answer.body["text"].as_str().unwrap_or_default().is_empty(),
            "{text:?}: {answer:?}"
        );
    }
    let unknown = slash(&app, ADMIN, "dance").await;
    assert!(
        unknown.body["text"].as_str().unwrap().contains("dance"),
        "{unknown:?}"
    );
    assert!(
        unknown.body["blocks"].is_array(),
        "unknown text gets the help: {unknown:?}"
    );
    let usage = slash(&app, ADMIN, "approve").await;
    assert!(
        usage.body["text"]
            .as_str()
            .unwrap()
            .contains("Usage: `/sentinel approve &lt;id&gt;`"),
        "{usage:?}"
    );
    // The changes happened.
    assert_eq!(stored(&app, &incident).await.status, Status::Rejected);
    assert!(!app.store.control().await.unwrap().paused);
    let events: Vec<String> = app
        .store
        .list_audit()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.record.actor == format!("slack:{ADMIN}"))
        .map(|e| e.record.event)
        .collect();
    for expected in [
        "SilenceCreated",
        "SilenceExpired",
        "AutomationPaused",
        "AutomationResumed",
        "ApprovalRejected",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} missing: {events:?}"
        );
    }
}

#[tokio::test]
async fn status_is_an_ephemeral_block_kit_reply() {
    let app = spawn_slack_app().await;
    awaiting(&app, "memory", Risk::Medium).await;
    let answer = slash(&app, VIEWER, "status").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["response_type"], "ephemeral");
    let blocks = answer.body["blocks"].as_array().expect("blocks");
    assert!(!blocks.is_empty(), "{answer:?}");
    assert!(blocks.iter().all(|b| b["type"].is_string()), "{blocks:?}");
    // Someone with no role gets nothing but the refusal.
    let refused = slash(&app, STRANGER, "status").await;
    assert_eq!(refused.body["response_type"], "ephemeral");
    assert!(refused.body["text"]
        .as_str()
        .unwrap()
        .contains("no Sentinel role"));
    assert!(refused.body.get("blocks").is_none());
    // whoami works for anyone.
    let whoami = slash(&app, STRANGER, "whoami").await;
    assert!(whoami.body["text"]
        .as_str()
        .unwrap()
        .contains("no Sentinel role"));
    let whoami = slash(&app, OPERATOR, "whoami").await;
    assert!(whoami.body["text"].as_str().unwrap().contains("operator"));
}

#[tokio::test]
async fn an_unknown_command_is_said_to_be_not_understood_before_the_help() {
    let app = spawn_slack_app().await;
    let answer = slash(&app, VIEWER, "frobnicate the cluster").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let first = answer.body["blocks"][0]["text"]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(
        first.starts_with("I did not understand `frobnicate the cluster`."),
        "{answer:?}"
    );
    assert!(answer.body["text"]
        .as_str()
        .unwrap()
        .starts_with("I did not understand"));
    // The help follows: every command is still listed after it.
    assert!(answer.body["blocks"]
        .to_string()
        .contains("/sentinel status"));
}

#[tokio::test]
async fn a_status_reply_kept_ready_still_shows_every_change_at_once() {
    let app = spawn_slack_app().await;
    let open = |answer: &Answer| answer.body["text"].as_str().unwrap().to_owned();
    let before = slash(&app, VIEWER, "status").await;
    assert!(open(&before).contains("0 open incidents"), "{before:?}");
    // The same question again is answered (from the reply kept ready), the same.
    let again = slash(&app, VIEWER, "status").await;
    assert_eq!(again.body, before.body);
    // A change on this replica shows in the very next answer, not a second later.
    app.trigger("memory").await;
    let after = slash(&app, VIEWER, "status").await;
    assert!(open(&after).contains("1 open incident"), "{after:?}");
    // So does a pause (a control change, not an incident).
    let paused = slash(&app, ADMIN, "pause").await;
    assert_eq!(paused.status, 200, "{paused:?}");
    let now = slash(&app, VIEWER, "status").await;
    let shows_paused = |answer: &Answer| answer.body["blocks"].to_string().contains("paused");
    assert!(!shows_paused(&after), "{after:?}");
    assert!(shows_paused(&now), "{now:?}");
}

#[tokio::test]
async fn an_operator_approves_a_medium_incident_and_a_viewer_cannot() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let audit_before = app.store.list_audit().await.unwrap().len();

    let refused = slash(&app, VIEWER, &format!("approve {}", incident.id)).await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.body["response_type"], "ephemeral", "{refused:?}");
    assert!(refused.body["text"]
        .as_str()
        .unwrap()
        .contains("needs the operator role"));
    assert_eq!(
        stored(&app, &incident).await,
        incident,
        "a viewer changed it"
    );
    assert_eq!(app.store.list_audit().await.unwrap().len(), audit_before);

    let approved = slash(&app, OPERATOR, &format!("approve {}", incident.id)).await;
    assert_eq!(approved.body["response_type"], "in_channel", "{approved:?}");
    let now = stored(&app, &incident).await;
    assert_eq!(now.status, Status::Approved);
    let last = now.timeline.last().unwrap();
    assert_eq!(last.actor, format!("slack:{OPERATOR} (operator)"));
    let entry = app.store.list_audit().await.unwrap().pop().unwrap();
    assert_eq!(entry.record.event, "ApprovalGranted");
    assert_eq!(entry.record.actor, format!("slack:{OPERATOR}"));
    assert_eq!(entry.record.role.as_deref(), Some("operator"));
}

#[tokio::test]
async fn high_risk_needs_an_admin_even_from_slack() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "disk", Risk::High).await;
    let refused = slash(&app, OPERATOR, &format!("approve {}", incident.id)).await;
    assert_eq!(refused.body["response_type"], "ephemeral", "{refused:?}");
    assert!(refused.body["text"].as_str().unwrap().contains("admin"));
    assert_eq!(
        stored(&app, &incident).await.status,
        Status::AwaitingApproval
    );
    let approved = slash(&app, ADMIN, &format!("approve {}", incident.id)).await;
    assert_eq!(approved.body["response_type"], "in_channel", "{approved:?}");
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
}

#[tokio::test]
async fn check_answers_at_once_and_posts_the_cycle_later() {
    let (recorder_url, seen) = recorder().await;
    let prometheus = slow_prometheus().await;
    let app = spawn_app_with(Backend::Embedded, |settings| {
        slack_settings(settings);
        // Follow-ups may only go to Slack or to the configured Web API's origin.
        settings.slack.api_url = format!("{recorder_url}/api/");
        settings.monitor.prometheus_url = prometheus;
        settings.monitor.collector_timeout =
            sentinel::config::HumanDuration(Duration::from_millis(2500));
    })
    .await;
    let response_url = format!("{recorder_url}/response/1");
    let answer = slash_with(&app, OPERATOR, "check", Some(&response_url)).await;
    eprintln!("check acknowledged in {:?}", answer.elapsed);
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body["response_type"], "in_channel");
    assert!(answer.body["text"]
        .as_str()
        .unwrap()
        .contains("running a monitoring cycle"));
    assert!(
        answer.elapsed < Duration::from_millis(2500),
        "the ack took {:?}",
        answer.elapsed
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(posted) = seen.lock().unwrap().first().cloned() {
            assert!(
                posted["text"]
                    .as_str()
                    .unwrap()
                    .contains("monitoring cycle"),
                "{posted}"
            );
            assert_eq!(posted["replace_original"], false);
            break;
        }
        assert!(Instant::now() < deadline, "no follow-up was posted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A viewer may not run one.
    let refused = slash(&app, VIEWER, "check").await;
    assert_eq!(refused.body["response_type"], "ephemeral");
}

#[tokio::test]
async fn mentions_and_events_are_acknowledged_at_once() {
    let app = spawn_slack_app().await;
    let mut slowest = Duration::ZERO;
    for n in 0..5 {
        let body = event_body(&format!("Ev0FAST{n}"), APP_ID, OPERATOR, "check");
        let answer = event(&app, &body, &[]).await;
        assert_eq!(answer.status, 200);
        slowest = slowest.max(answer.elapsed);
    }
    eprintln!("slowest event acknowledgement: {slowest:?}");
    assert!(slowest < Duration::from_millis(2500), "{slowest:?}");
}

// ---------------------------------------------------------------------------------------
// Buttons and the reject dialog.

#[tokio::test]
async fn an_operator_clicks_approve_and_a_viewer_cannot() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let audit_before = app.store.list_audit().await.unwrap().len();

    for user in [VIEWER, STRANGER] {
        let answer = click(&app, user, "approve", &card_ref(&incident)).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stored(&app, &incident).await,
        incident,
        "a viewer changed it"
    );
    assert_eq!(app.store.list_audit().await.unwrap().len(), audit_before);

    let answer = click(&app, OPERATOR, "approve", &card_ref(&incident)).await;
    assert_eq!(answer.status, 200);
    eprintln!("approve click acknowledged in {:?}", answer.elapsed);
    let now = stored(&app, &incident).await;
    assert_eq!(now.status, Status::Approved);
    let entry = app.store.list_audit().await.unwrap().pop().unwrap();
    assert_eq!(entry.record.event, "ApprovalGranted");
    assert_eq!(entry.record.actor, format!("slack:{OPERATOR}"));
    assert_eq!(entry.record.role.as_deref(), Some("operator"));
    assert_eq!(
        now.timeline.last().unwrap().actor,
        format!("slack:{OPERATOR} (operator)")
    );
}

#[tokio::test]
async fn a_click_on_a_stale_card_changes_nothing() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    // Drawn before the approval was requested: the incident has moved on since.
    let stale = json!({"incident": incident.id.as_str(), "version": incident.version - 1});
    let audit_before = app.store.list_audit().await.unwrap().len();
    click(&app, ADMIN, "approve", &stale).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&app, &incident).await, incident);
    assert_eq!(
        app.store.list_audit().await.unwrap().len(),
        audit_before,
        "refused before the service was asked"
    );

    // A proposal that is not the current one is refused the same way.
    let other_proposal = json!({"incident": incident.id.as_str(), "proposal": "prop-00000000"});
    click(&app, OPERATOR, "approve", &other_proposal).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(stored(&app, &incident).await, incident);

    // A repeat of the breach is an observation: the version and proposal stay, and the card
    // as drawn before the repeat still approves.
    let repeated = app.trigger("memory").await;
    assert_eq!(repeated.version, incident.version);
    assert_eq!(repeated.occurrences, incident.occurrences + 1);
    click(&app, OPERATOR, "approve", &card_ref(&incident)).await;
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
}

/// A click hands the service the incident it read to check the card; if that copy goes stale
/// before the decision is stored, the decision is made again on the stored incident.
#[tokio::test]
async fn an_approval_decided_on_a_copy_gone_stale_is_decided_again_on_the_stored_incident() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let seen = stored(&app, &incident).await;
    let admin = Actor::SlackUser {
        user_id: ADMIN.to_owned(),
        role: Role::Admin,
    };
    let rejected = app
        .sentinel
        .reject(&incident.id, &admin, Some("not tonight"))
        .await
        .unwrap();
    assert_eq!(rejected.status, Status::Rejected);

    let operator = Actor::SlackUser {
        user_id: OPERATOR.to_owned(),
        role: Role::Operator,
    };
    let refused = app.sentinel.approve_seen(seen, None, &operator).await;
    assert!(
        matches!(refused, Err(ServiceError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(
        stored(&app, &incident).await,
        rejected,
        "the stale copy won"
    );

    // A fresh copy is decided at once.
    let other = awaiting(&app, "cpu", Risk::Medium).await;
    let approved = app
        .sentinel
        .approve_seen(other, None, &operator)
        .await
        .unwrap();
    assert_eq!(approved.status, Status::Approved);
}

#[tokio::test]
async fn rollback_and_silence_buttons_need_their_roles() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "cpu", Risk::Medium).await;
    // Silence: operators.
    click(&app, VIEWER, "silence", &card_ref(&incident)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(app.sentinel.silences().await.unwrap().is_empty());
    click(&app, OPERATOR, "silence", &card_ref(&incident)).await;
    let silences = app.sentinel.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:?}");
    assert_eq!(silences[0].created_by, format!("slack:{OPERATOR}"));
    // Rollback: admins only; an operator's click is refused before the service is asked.
    let audit_before = app.store.list_audit().await.unwrap().len();
    click(&app, OPERATOR, "rollback", &card_ref(&incident)).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(app.store.list_audit().await.unwrap().len(), audit_before);
    // An admin reaches the service, which refuses: nothing was executed to roll back.
    click(&app, ADMIN, "rollback", &card_ref(&incident)).await;
    let last = app.store.list_audit().await.unwrap().pop().unwrap();
    assert_eq!(
        (last.record.event.as_str(), last.record.actor.as_str()),
        ("DecisionRefused", "slack:UADMIN1")
    );
}

#[tokio::test]
async fn reject_through_the_dialog_records_the_reason() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let metadata = card_ref(&incident).to_string();

    // A viewer's submission keeps the dialog open with the reason and changes nothing.
    let refused = submit_reject(&app, VIEWER, &metadata, "nope").await;
    assert_eq!(refused.status, 200);
    assert_eq!(refused.body["response_action"], "errors", "{refused:?}");
    assert!(refused.body["errors"]["reason"]
        .as_str()
        .unwrap()
        .contains("operator"));
    assert_eq!(stored(&app, &incident).await, incident);

    let answer = submit_reject(&app, OPERATOR, &metadata, "  during the release freeze ").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, Value::Null, "an empty 200 closes the dialog");
    let now = stored(&app, &incident).await;
    assert_eq!(now.status, Status::Rejected);
    let last = now.timeline.last().unwrap();
    assert_eq!(last.message, "rejected: during the release freeze");
    assert_eq!(last.actor, format!("slack:{OPERATOR} (operator)"));
    let entry = app.store.list_audit().await.unwrap().pop().unwrap();
    assert_eq!(entry.record.event, "ApprovalRejected");
    assert_eq!(entry.record.actor, format!("slack:{OPERATOR}"));

    // Submitting again: the incident is no longer awaiting; the dialog says so.
    let again = submit_reject(&app, OPERATOR, &now.id.to_string(), "twice").await;
    assert_eq!(again.body["response_action"], "errors", "{again:?}");
}

// ---------------------------------------------------------------------------------------
// With Slack's Web API (the double): ephemeral answers, the dialog, threads, user groups.

const GROUP: &str = "S0OPERATORS";
const GROUPIE: &str = "UGROUPIE1";

async fn spawn_with_double(channel: &str) -> (TestApp, SlackDouble) {
    let double = SlackDouble::start().await;
    double.set_usergroup(GROUP, &[GROUPIE]);
    let api_url = double.api_url();
    let app = spawn_app_with(Backend::Embedded, |settings| {
        slack_settings(settings);
        settings.slack.api_url = api_url;
        settings.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
        settings.slack.channel = channel.to_owned();
        settings.rbac.operators.push(GROUP.to_owned());
    })
    .await;
    (app, double)
}

pub(crate) fn ephemerals_to(double: &SlackDouble, user: &str) -> Vec<String> {
    double
        .accepted("chat.postEphemeral")
        .into_iter()
        .filter(|c| c.str("user") == Some(user))
        .map(|c| c.text().to_owned())
        .collect()
}

#[tokio::test]
async fn the_same_click_delivered_three_times_is_acknowledged_each_time_and_handled_once() {
    let app = spawn_slack_app().await;
    let incident = awaiting(&app, "disk", Risk::Medium).await;
    // Silence has no compare-and-set to hide a second run: only the dedup can.
    let body = click_body(OPERATOR, "silence", &card_ref(&incident));
    let sends = (0..3).map(|_| {
        send(
            &app,
            "/slack/interactions",
            "application/x-www-form-urlencoded",
            &body,
            Signing::Valid,
            &[],
        )
    });
    for answer in futures::future::join_all(sends).await {
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    app.sentinel.background().idle().await;
    let silences = app.sentinel.silences().await.unwrap();
    assert_eq!(silences.len(), 1, "{silences:?}");
}

#[tokio::test]
async fn a_click_is_acknowledged_before_slow_work_and_finished_before_shutdown() {
    let (app, double) = spawn_with_double("").await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    // Telling the user takes Slack 1.5 s here; the acknowledgement must not wait for it.
    double.delay("chat.postEphemeral", Duration::from_millis(1500));
    let answer = send(
        &app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &click_body(OPERATOR, "approve", &card_ref(&incident)),
        Signing::Valid,
        &[],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.elapsed < Duration::from_millis(1000),
        "{:?}",
        answer.elapsed
    );
    assert!(
        ephemerals_to(&double, OPERATOR).is_empty(),
        "still being told"
    );
    // A graceful stop now still finishes the acknowledged click.
    let store = std::sync::Arc::clone(&app.store);
    app.stop().await;
    assert!(
        ephemerals_to(&double, OPERATOR)
            .iter()
            .any(|t| t.contains("You approved")),
        "{:?}",
        double.calls()
    );
    let approved = store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(approved.status, Status::Approved);
}

#[tokio::test]
async fn clicks_are_answered_ephemerally_to_the_clicker() {
    let (app, double) = spawn_with_double("").await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;

    click(&app, VIEWER, "approve", &card_ref(&incident)).await;
    let calls = double
        .wait_until(Duration::from_secs(5), |calls| {
            calls.iter().any(|c| c.method == "chat.postEphemeral")
        })
        .await;
    let refusal = calls
        .iter()
        .find(|c| c.method == "chat.postEphemeral")
        .unwrap();
    assert_eq!(refusal.channel(), Some("C1"));
    assert_eq!(refusal.str("user"), Some(VIEWER));
    assert!(refusal.text().contains("operator role"), "{refusal:?}");
    assert_eq!(stored(&app, &incident).await, incident);

    click(&app, OPERATOR, "approve", &card_ref(&incident)).await;
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
    double
        .wait_until(Duration::from_secs(5), |_| {
            ephemerals_to(&double, OPERATOR)
                .iter()
                .any(|t| t.contains("You approved"))
        })
        .await;
    // Nothing went to the channel for everyone.
    assert!(double.calls_to("chat.postMessage").is_empty());
}

#[tokio::test]
async fn the_reject_button_opens_the_dialog_and_its_submission_rejects() {
    let (app, double) = spawn_with_double("").await;
    let incident = awaiting(&app, "memory", Risk::Medium).await;
    let body = click_body(OPERATOR, "reject", &card_ref(&incident));
    let trigger = serde_json::from_str::<Value>(&decode_payload(&body)).unwrap()["trigger_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = send(
        &app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
        Signing::Valid,
        &[],
    )
    .await;
    assert_eq!(answer.status, 200);
    let calls = double
        .wait_until(Duration::from_secs(5), |calls| {
            calls.iter().any(|c| c.method == "views.open")
        })
        .await;
    let opened = calls.iter().find(|c| c.method == "views.open").unwrap();
    assert!(opened.ok(), "{opened:?}");
    assert_eq!(opened.str("trigger_id"), Some(trigger.as_str()));
    let view = &opened.body["view"];
    assert_eq!(view["type"], "modal");
    assert_eq!(view["callback_id"], "reject_reason");
    let metadata = view["private_metadata"].as_str().unwrap().to_owned();
    assert_eq!(
        serde_json::from_str::<Value>(&metadata).unwrap(),
        card_ref(&incident)
    );
    // Opening the dialog changed nothing.
    assert_eq!(stored(&app, &incident).await, incident);

    let submitted = submit_reject(&app, OPERATOR, &metadata, "not during the freeze").await;
    assert_eq!(submitted.body, Value::Null, "{submitted:?}");
    let now = stored(&app, &incident).await;
    assert_eq!(now.status, Status::Rejected);
    assert_eq!(
        now.timeline.last().unwrap().message,
        "rejected: not during the freeze"
    );
}

/// The JSON in a `payload=` form body built by [`form`].
fn decode_payload(body: &str) -> String {
    let encoded = body.strip_prefix("payload=").unwrap();
    let mut out = Vec::new();
    let bytes = encoded.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                out.push(u8::from_str_radix(&encoded[i + 1..i + 3], 16).unwrap());
                i += 2;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_mention_is_answered_in_its_thread() {
    let (app, double) = spawn_with_double("").await;
    let body = event_body("Ev0THREAD", APP_ID, VIEWER, "status");
    assert_eq!(event(&app, &body, &[]).await.status, 200);
    let calls = double
        .wait_until(Duration::from_secs(10), |calls| {
            calls
                .iter()
                .any(|c| c.method == "chat.postMessage" && c.ok())
        })
        .await;
    let reply = calls
        .iter()
        .find(|c| c.method == "chat.postMessage")
        .unwrap();
    assert_eq!(reply.channel(), Some("C1"));
    assert_eq!(reply.thread_ts(), Some("1700000000.000300"));
    assert!(reply.body["blocks"]
        .as_array()
        .is_some_and(|b| !b.is_empty()));

    // A mention inside a thread is answered in that thread (its parent), not a new one.
    let mut in_thread: Value =
        serde_json::from_str(&event_body("Ev0THREAD2", APP_ID, VIEWER, "whoami")).unwrap();
    in_thread["event"]["ts"] = json!("1700000000.000900");
    in_thread["event"]["thread_ts"] = json!("1700000000.000800");
    assert_eq!(event(&app, &in_thread.to_string(), &[]).await.status, 200);
    double
        .wait_until(Duration::from_secs(10), |calls| {
            calls.iter().any(|c| {
                c.method == "chat.postMessage"
                    && c.thread_ts() == Some("1700000000.000800")
                    && c.text().contains("viewer")
            })
        })
        .await;
}

#[tokio::test]
async fn user_group_members_get_the_groups_role() {
    let (app, double) = spawn_with_double("").await;
    let whoami = slash(&app, GROUPIE, "whoami").await;
    assert!(
        whoami.body["text"].as_str().unwrap().contains("operator"),
        "{whoami:?}"
    );
    let incident = awaiting(&app, "cpu", Risk::Medium).await;
    let approved = slash(&app, GROUPIE, &format!("approve {}", incident.id)).await;
    assert_eq!(approved.body["response_type"], "in_channel", "{approved:?}");
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
    // Cached: one look-up for both commands.
    assert_eq!(double.calls_to("usergroups.users.list").len(), 1);
    // Someone outside the group has no role (default_role = "none").
    let outsider = slash(&app, STRANGER, "status").await;
    assert!(outsider.body["text"]
        .as_str()
        .unwrap()
        .contains("no Sentinel role"));
}

#[tokio::test]
async fn a_card_on_screen_stays_clickable_and_a_replaced_one_does_not() {
    let (app, double) = spawn_with_double("C0CARDS").await;
    let detected = app.trigger("memory").await;
    let incident = app.await_approval(&detected.id, Risk::Medium).await;
    // Wait for the card sync to draw the card as the incident is now.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let now = stored(&app, &incident).await;
        let caught_up = now.slack.as_ref().is_some_and(|card| {
            card.ts.is_some() && card.digest == sentinel::slack::cards::card_digest(&now)
        });
        if caught_up {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the card was not drawn: {:?}",
            now.slack
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        shown.version, incident.version,
        "the card's bookkeeping is a record of its own, not a decision"
    );
    assert_eq!(
        shown.slack.as_ref().unwrap().rendered_version,
        incident.version,
        "the card on screen was drawn from the incident as it is"
    );

    // A click on the card as first drawn (before approval was asked, a legacy version
    // button): replaced since.
    click(
        &app,
        OPERATOR,
        "approve",
        &json!({"incident": detected.id.as_str(), "version": detected.version}),
    )
    .await;
    double
        .wait_until(Duration::from_secs(5), |_| {
            ephemerals_to(&double, OPERATOR)
                .iter()
                .any(|t| t.contains("changed since this card was drawn"))
        })
        .await;
    assert_eq!(
        stored(&app, &incident).await.status,
        Status::AwaitingApproval
    );

    // The Approve button on the card on screen names the proposal, and works.
    let button = first_drawn_button(&double, &incident, "approve").expect("an Approve button");
    assert_eq!(
        button,
        json!({"incident": incident.id.as_str(), "proposal": incident.proposal_id.clone().unwrap()})
    );
    click(&app, OPERATOR, "approve", &button).await;
    assert_eq!(stored(&app, &incident).await.status, Status::Approved);
}

/// The whole story in Slack: a container goes down, its card is posted, an operator clicks
/// Approve on it, the fix runs and is verified, the card is updated in place and the thread
/// carries every timeline step in order.
#[tokio::test]
async fn an_incident_card_approved_by_click_is_fixed_and_told_in_its_thread_in_order() {
    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let app = spawn_app_with(Backend::Embedded, |s| {
        slack_settings(s);
        s.slack.api_url = api_url;
        s.slack.channel = "CINCIDENTS".to_owned();
        s.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
        // Only this test's container: other tests' containers on the shared daemon would
        // queue their cards ahead of ours (about one message a second per channel).
        s.monitor.container_include =
            vec![sentinel::domain::ContainerSelector::parse("name:sentinel-slack-*").unwrap()];
    })
    .await;
    let container = crate::containers::Container::run("sentinel-slack", &[], &["sleep", "3600"]);
    crate::containers::docker(&["stop", "-t", "1", &container.0]);
    let fingerprint = format!("container_down:{}", container.0);
    let mut incident = None;
    for _ in 0..10 {
        app.tick_monitor().await;
        let open = app
            .store
            .list_incidents(sentinel::store::IncidentQuery {
                open_only: true,
                limit: 1000,
            })
            .await
            .unwrap();
        incident = open
            .into_iter()
            .find(|i| i.fingerprint.as_str() == fingerprint);
        if incident.is_some() {
            break;
        }
    }
    let incident = incident.expect("container_down detected");
    // Wait until it waits for approval and its card is on screen with that state.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let current = stored(&app, &incident).await;
        if current.status == Status::AwaitingApproval
            && current.slack.as_ref().is_some_and(|c| {
                c.ts.is_some()
                    && sentinel::slack::cards::click_is_current(&current, c.rendered_version)
            })
        {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "no card awaiting approval: {current:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let card = shown.slack.clone().unwrap();
    let card_ts = card.ts.clone().unwrap();
    let posted = double.accepted("chat.postMessage");
    let card_call = posted
        .iter()
        .find(|c| c.thread_ts().is_none())
        .expect("the card");
    assert_eq!(card_call.channel(), Some("CINCIDENTS"));
    assert!(!card_call.text().is_empty(), "a text fallback");

    // The operator clicks Approve on the card as it is shown.
    let value = first_drawn_button(&double, &shown, "approve").expect("an Approve button");
    let answer = click(&app, OPERATOR, "approve", &value).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let resolved = loop {
        let current = stored(&app, &incident).await;
        if current.status == Status::Resolved {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "never resolved: {:#?}",
            current.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        crate::containers::docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "running"
    );
    let execution = resolved.execution.as_ref().unwrap();
    assert_eq!(
        execution.approved_by,
        format!("slack:{OPERATOR} (operator)")
    );

    // Every status change becomes one thread reply under the card, in order.
    let announced: Vec<_> = resolved
        .timeline
        .iter()
        .filter(|e| sentinel::slack::cards::announces(&e.step))
        .collect();
    let expected = announced.len();
    let replies = double
        .wait_until(Duration::from_secs(20), |calls| {
            calls
                .iter()
                .filter(|c| {
                    c.method == "chat.postMessage"
                        && c.ok()
                        && c.thread_ts() == Some(card_ts.as_str())
                })
                .count()
                >= expected
        })
        .await
        .into_iter()
        .filter(|c| {
            c.method == "chat.postMessage" && c.ok() && c.thread_ts() == Some(card_ts.as_str())
        })
        .collect::<Vec<_>>();
    assert_eq!(replies.len(), expected, "one reply per status change");
    for (reply, entry) in replies.iter().zip(announced) {
        // Each reply is the sentence its entry renders to (the step in words).
        let context = json!({ "incident": &resolved, "entry": entry });
        let expected = sentinel::slack::blocks::render("timeline_reply", &context).unwrap();
        assert_eq!(
            reply.text(),
            expected.text,
            "replies out of order: {:?} for {:?}",
            reply.text(),
            entry.step
        );
    }
    // The card itself was updated in place, last to the resolved state.
    let updates = double
        .wait_until(Duration::from_secs(10), |calls| {
            calls.iter().any(|c| {
                c.method == "chat.update" && c.ok() && c.text().to_lowercase().contains("resolved")
            })
        })
        .await;
    let last_update = updates
        .iter()
        .rev()
        .find(|c| c.method == "chat.update" && c.ok())
        .unwrap();
    assert_eq!(last_update.str("ts"), Some(card_ts.as_str()));
    // And the audit names the Slack user and role.
    let audit = app.store.list_audit().await.unwrap();
    assert!(audit.iter().any(|e| e.record.event == "ApprovalGranted"
        && e.record.actor == format!("slack:{OPERATOR}")
        && e.record.role.as_deref() == Some("operator")));
}

/// A real breach that persists (a stopped container, seen by every monitoring cycle): the
/// card as first drawn with its buttons stays valid across 20 cycles, the card is not
/// redrawn for the repeats (at most 2 `chat.update` calls: SPEC §12.1), the reject dialog
/// opened before 10 cycles still records its reason, and the first drawing's Approve
/// approves. Counted at the Slack double, not in our own logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_drawn_first_stays_valid_through_twenty_cycles_of_a_persisting_breach() {
    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let app = spawn_app_with(Backend::Embedded, |s| {
        slack_settings(s);
        s.slack.api_url = api_url;
        s.slack.channel = "CPERSIST".to_owned();
        s.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
        s.actions.enabled = true;
    })
    .await;
    let stopped = |name: &str| {
        let container = crate::containers::Container::run(name, &[], &["sleep", "3600"]);
        crate::containers::docker(&["stop", "-t", "1", &container.0]);
        container
    };
    let (first, second) = (stopped("sentinel-persist-a"), stopped("sentinel-persist-b"));
    let find = |name: String| {
        let app = &app;
        async move {
            let open = app
                .store
                .list_incidents(sentinel::store::IncidentQuery {
                    open_only: true,
                    limit: 1000,
                })
                .await
                .unwrap();
            open.into_iter()
                .find(|i| i.fingerprint.as_str() == format!("container_down:{name}"))
        }
    };
    let mut cycles = 0;
    let (a, b) = loop {
        app.tick_monitor().await;
        cycles += 1;
        if let (Some(a), Some(b)) = (find(first.0.clone()).await, find(second.0.clone()).await) {
            break (a, b);
        }
        assert!(cycles < 10, "container_down not detected");
    };
    // Both wait for approval, and their cards are drawn with buttons.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (buttons_a, reject_b) = loop {
        let drawn = (
            first_drawn_button(&double, &a, "approve"),
            first_drawn_button(&double, &b, "reject"),
        );
        if let (Some(approve), Some(reject)) = drawn {
            break (approve, reject);
        }
        assert!(Instant::now() < deadline, "no cards with buttons drawn");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let a = stored(&app, &a).await;
    assert_eq!(a.status, Status::AwaitingApproval);
    let card_ts = a.slack.as_ref().and_then(|c| c.ts.clone()).unwrap();

    // The reject dialog for b opens now, and is submitted only after 10 more cycles.
    let answer = click(&app, OPERATOR, "reject", &reject_b).await;
    assert_eq!(answer.status, 200);
    let calls = double
        .wait_until(Duration::from_secs(5), |calls| {
            calls.iter().any(|c| c.method == "views.open")
        })
        .await;
    let opened = calls.iter().find(|c| c.method == "views.open").unwrap();
    let metadata = opened.body["view"]["private_metadata"]
        .as_str()
        .unwrap()
        .to_owned();

    let (version_a, seen_a) = (a.version, a.occurrences);
    for _ in 0..10 {
        app.tick_monitor().await;
    }
    let submitted = submit_reject(&app, OPERATOR, &metadata, "the batch job owns it").await;
    assert_eq!(submitted.body, Value::Null, "{submitted:?}");
    let b = stored(&app, &b).await;
    assert_eq!(b.status, Status::Rejected);
    assert_eq!(
        b.timeline.last().unwrap().message,
        "rejected: the batch job owns it"
    );

    for _ in 0..10 {
        app.tick_monitor().await;
    }
    let a = stored(&app, &a).await;
    assert_eq!(a.status, Status::AwaitingApproval);
    assert!(a.occurrences >= seen_a + 20, "{} sightings", a.occurrences);
    assert_eq!(a.version, version_a, "sightings never bump the version");
    // Let the card sync catch up with whatever the cycles asked of it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let updates = double
        .calls_to("chat.update")
        .into_iter()
        .filter(|c| c.str("ts") == Some(card_ts.as_str()))
        .count();
    eprintln!("chat.update calls for the card over 20+ cycles: {updates}");
    assert!(updates <= 2, "{updates} chat.update calls for one card");

    // The first drawing's Approve still approves.
    let answer = click(&app, OPERATOR, "approve", &buttons_a).await;
    assert_eq!(answer.status, 200);
    let now = stored(&app, &a).await;
    assert!(
        matches!(
            now.status,
            Status::Approved | Status::Executing | Status::Verifying | Status::Resolved
        ),
        "{:?}",
        now.timeline
    );
    assert!(now
        .timeline
        .iter()
        .any(|e| e.step == "approved" && e.actor == format!("slack:{OPERATOR} (operator)")));
}

/// Replies to people never wait behind card traffic (SPEC §12.1): with 20 new incidents'
/// cards and threads queued in the channel (about one call a second), an `@sentinel status`
/// asked in that channel is answered in its thread within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_is_answered_within_two_seconds_during_a_burst_of_twenty_cards() {
    let (app, double) = spawn_with_double("C1").await;
    for n in 0..20 {
        let detection = sentinel::domain::Detection {
            signal: sentinel::domain::Signal::External,
            resource: sentinel::domain::Resource::parse(&format!("burst-{n}")).unwrap(),
            severity: sentinel::domain::Severity::Warning,
            value: 1.0,
            threshold: 1.0,
            source: sentinel::domain::Source::Alertmanager,
            summary: format!("burst alert {n}"),
            labels: Default::default(),
        };
        sentinel::pipeline::intake::open_or_update(
            app.store.as_ref(),
            &detection,
            sentinel::domain::Timestamp::now(),
        )
        .await
        .unwrap();
    }
    // The burst is under way: the first cards are going out.
    double
        .wait_until(Duration::from_secs(10), |calls| {
            calls.iter().any(|c| c.method == "chat.postMessage")
        })
        .await;
    let asked = Instant::now();
    let body = event_body("Ev0BURST", APP_ID, OPERATOR, "status");
    assert_eq!(event(&app, &body, &[]).await.status, 200);
    let calls = double
        .wait_until(Duration::from_secs(10), |calls| {
            calls.iter().any(|c| {
                c.method == "chat.postMessage" && c.thread_ts() == Some("1700000000.000300")
            })
        })
        .await;
    let answered = calls
        .iter()
        .find(|c| c.method == "chat.postMessage" && c.thread_ts() == Some("1700000000.000300"))
        .unwrap();
    let waited = answered.at.duration_since(asked);
    let cards = calls
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.thread_ts().is_none())
        .count();
    eprintln!("status answered after {waited:?}, with {cards} of 20 cards posted");
    assert!(answered.ok(), "{answered:?}");
    assert!(
        cards < 20,
        "the burst was over before the answer: not a test of it"
    );
    assert!(waited <= Duration::from_secs(2), "{waited:?}");
}

// ---------------------------------------------------------------------------------------
// Replayed slash commands (SPEC §12.3).

/// The same signed `/sentinel pause` delivered again, after a resume, changes nothing and
/// says "already done"; a fresh trigger id pauses again; a replayed question is answered.
async fn a_replayed_command_changes_nothing(backend: Backend) {
    let app = spawn_app_with(backend, slack_settings).await;
    let trigger = format!("{}.{}", now_secs(), rand_suffix());
    let pause = command_body_with_trigger(ADMIN, "pause", None, &trigger);
    let send_pause = || {
        send(
            &app,
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &pause,
            Signing::Valid,
            &[],
        )
    };
    let first = send_pause().await;
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["response_type"], "in_channel", "{first:?}");
    assert!(app.store.control().await.unwrap().paused);
    let resumed = slash(&app, ADMIN, "resume").await;
    assert_eq!(resumed.body["response_type"], "in_channel", "{resumed:?}");
    assert!(!app.store.control().await.unwrap().paused);
    let audit_before = app.store.list_audit().await.unwrap().len();

    let replay = send_pause().await;
    assert_eq!(replay.status, 200, "{replay:?}");
    assert_eq!(replay.body["response_type"], "ephemeral", "{replay:?}");
    let text = replay.body["text"].as_str().unwrap_or_default();
    assert!(text.to_lowercase().contains("already done"), "{replay:?}");
    assert!(
        !app.store.control().await.unwrap().paused,
        "the replay paused again"
    );
    assert_eq!(app.store.list_audit().await.unwrap().len(), audit_before);

    // Questions are not claimed: asking twice with one trigger id answers twice.
    let status = command_body_with_trigger(ADMIN, "status", None, "9.9.9");
    for _ in 0..2 {
        let answer = send(
            &app,
            "/slack/commands",
            "application/x-www-form-urlencoded",
            &status,
            Signing::Valid,
            &[],
        )
        .await;
        let text = answer.body["text"].as_str().unwrap_or_default();
        assert!(!text.to_lowercase().contains("already done"), "{answer:?}");
    }
    // A new command (a new trigger id) is not a replay.
    let again = slash(&app, ADMIN, "pause").await;
    assert_eq!(again.body["response_type"], "in_channel", "{again:?}");
    assert!(app.store.control().await.unwrap().paused);
}

#[tokio::test]
async fn a_replayed_slash_command_changes_nothing_on_the_embedded_store() {
    a_replayed_command_changes_nothing(Backend::Embedded).await;
}

#[tokio::test]
async fn a_replayed_slash_command_changes_nothing_on_redis() {
    a_replayed_command_changes_nothing(Backend::Redis).await;
}

/// "Let Sentinel do this" (earned autonomy): an operator's click is refused with an
/// ephemeral saying who may; an admin's click grants trust to the fix the incident names, and
/// the incident's thread says so; `/sentinel trust` lists and revokes it, admins only.
#[tokio::test]
async fn the_trust_button_and_command_need_an_admin() {
    let (app, double) = spawn_with_double("").await;
    let incident = awaiting(&app, "container", Risk::Medium).await;
    let key = sentinel::domain::TrustKey::of_incident(&incident).unwrap();
    for _ in 0..app.sentinel.settings().actions.trust_after {
        app.store.trust_count_verified(&key).await.unwrap();
    }
    click(&app, OPERATOR, "trust", &card_ref(&incident)).await;
    double
        .wait_until(Duration::from_secs(5), |_| {
            ephemerals_to(&double, OPERATOR).iter().any(|t| {
                t.contains("you need the admin role and you are operator")
                    && t.contains("Nothing was changed")
            })
        })
        .await;
    assert!(app.store.trust_grants().await.unwrap().is_empty());

    click(&app, ADMIN, "trust", &card_ref(&incident)).await;
    let grants = app.store.trust_grants().await.unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].key, key);
    assert_eq!(grants[0].granted_by, format!("slack:{ADMIN} (admin)"));
    assert_eq!(grants[0].earned_by, 5);
    let noted = stored(&app, &incident).await;
    assert_eq!(noted.timeline.last().unwrap().step, "trust_granted");
    double
        .wait_until(Duration::from_secs(5), |_| {
            ephemerals_to(&double, ADMIN)
                .iter()
                .any(|t| t.contains("You trusted"))
        })
        .await;

    let listed = slash(&app, VIEWER, "trust list").await;
    assert!(
        listed.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains(&grants[0].id),
        "{listed:?}"
    );
    let refused = slash(&app, OPERATOR, &format!("trust revoke {}", grants[0].id)).await;
    assert!(
        refused.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("admin role"),
        "{refused:?}"
    );
    assert_eq!(app.store.trust_grants().await.unwrap().len(), 1);
    let revoked = slash(&app, ADMIN, &format!("trust revoke {}", grants[0].id)).await;
    assert!(
        revoked.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("revoked the trust"),
        "{revoked:?}"
    );
    assert!(app.store.trust_grants().await.unwrap().is_empty());
    let unknown = slash(&app, ADMIN, "trust grant host_cpu container_restart web-1").await;
    assert!(
        unknown.body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot be trusted"),
        "{unknown:?}"
    );
    let events: Vec<String> = app
        .store
        .list_audit()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.record.event)
        .collect();
    assert!(events.contains(&"TrustGranted".to_owned()), "{events:?}");
    assert!(events.contains(&"TrustRevoked".to_owned()), "{events:?}");
}
