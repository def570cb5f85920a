//! The App Home tab against the real application and the Slack double: `app_home_opened`
//! publishes the person's Home with the approvals their role may give, a click on its
//! button approves like the card's, a viewer sees no buttons, and a change republishes.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use sentinel::config::DefaultRole;
use sentinel::domain::{Incident, Risk, Status};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::slack_double::SlackDouble;
use crate::slack_inbound::sign;

pub const SECRET: &str = "test-signing-secret-home-0123456789";
pub const APP_ID: &str = "A0SENTINEL";
pub const ADMIN: &str = "UHOMEADMIN";
pub const OPERATOR: &str = "UHOMEOPS";
pub const VIEWER: &str = "UHOMEVIEW";
pub const STRANGER: &str = "UHOMENOBODY";

/// The app with Slack on (signing secret, bot token on the double, a card channel) and
/// one person per role.
pub async fn spawn_slack(channel: &str) -> (TestApp, SlackDouble) {
    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let channel = channel.to_owned();
    let app = spawn_app_with(Backend::Embedded, |settings| {
        settings.secrets.slack_signing_secret = Some(SecretString::from(SECRET));
        settings.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
        settings.slack.api_url = api_url;
        settings.slack.app_id = APP_ID.to_owned();
        settings.slack.channel = channel;
        settings.rbac.default_role = DefaultRole::None;
        settings.rbac.admins = vec![ADMIN.to_owned()];
        settings.rbac.operators = vec![OPERATOR.to_owned()];
        settings.rbac.viewers = vec![VIEWER.to_owned()];
    })
    .await;
    (app, double)
}

fn unique() -> String {
    sentinel::domain::IncidentId::generate().as_str()[4..].to_owned()
}

/// Posts a body to a Slack route, signed like Slack; returns the status.
pub async fn signed(app: &TestApp, path: &str, content_type: &str, body: &str) -> u16 {
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    app.client
        .post(format!("{}{path}", app.base))
        .header("content-type", content_type)
        .header("X-Slack-Request-Timestamp", &ts)
        .header("X-Slack-Signature", sign(SECRET, &ts, body.as_bytes()))
        .body(body.to_owned())
        .send()
        .await
        .expect("the server answers")
        .status()
        .as_u16()
}

/// `application/x-www-form-urlencoded` of one field.
pub fn form_field(name: &str, value: &str) -> String {
    let mut out = format!("{name}=");
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// An `app_home_opened` event for `user`, as the Events API delivers it.
async fn open_home(app: &TestApp, user: &str) {
    let body = json!({
        "type": "event_callback", "team_id": "T1", "api_app_id": APP_ID,
        "event_id": format!("Ev{}", unique()), "event_time": 1_700_000_000,
        "event": {"type": "app_home_opened", "user": user, "channel": "D0HOME",
                  "tab": "home", "event_ts": "1700000000.000100"},
    });
    let status = signed(app, "/slack/events", "application/json", &body.to_string()).await;
    assert_eq!(status, 200);
}

/// A click on a Home tab button: `container.type = "view"`, the view along, no channel,
/// no message, no response_url.
async fn click_on_home(app: &TestApp, user: &str, action_id: &str, value: &str) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "team_id": "T1"},
        "api_app_id": APP_ID,
        "team": {"id": "T1"},
        "trigger_id": format!("1700000000.{}", unique()),
        "container": {"type": "view", "view_id": "V0HOME1"},
        "view": {"id": "V0HOME1", "type": "home", "team_id": "T1", "hash": "1.2",
                 "blocks": [], "private_metadata": "", "callback_id": "",
                 "state": {"values": {}}},
        "actions": [{"type": "button", "action_id": action_id, "value": value,
                     "block_id": "home_actions", "action_ts": "1700000001.000200"}],
    });
    let body = form_field("payload", &payload.to_string());
    let status = signed(
        app,
        "/slack/interactions",
        "application/x-www-form-urlencoded",
        &body,
    )
    .await;
    assert_eq!(status, 200);
    app.sentinel.background().idle().await;
}

/// Every button of a published view.
fn buttons(view: &Value) -> Vec<Value> {
    view["blocks"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["type"] == "button")
        .collect()
}

/// The value of the `action_id` button for `incident` in a published view.
fn button_for(view: &Value, incident: &Incident, action_id: &str) -> Option<String> {
    buttons(view).into_iter().find_map(|b| {
        let value = b["value"].as_str()?.to_owned();
        let parsed: Value = serde_json::from_str(&value).ok()?;
        (b["action_id"] == action_id && parsed["incident"] == incident.id.as_str()).then_some(value)
    })
}

async fn published_home(double: &SlackDouble, user: &str, after: usize) -> Value {
    let calls = double
        .wait_until(Duration::from_secs(10), |calls| {
            calls
                .iter()
                .filter(|c| c.method == "views.publish" && c.str("user_id") == Some(user))
                .count()
                > after
        })
        .await;
    let call = calls
        .iter()
        .rev()
        .find(|c| c.method == "views.publish" && c.str("user_id") == Some(user))
        .unwrap();
    assert!(call.ok(), "views.publish refused: {:?}", call.error);
    assert_eq!(call.body["view"]["type"], "home");
    call.body["view"].clone()
}

fn publishes_to(double: &SlackDouble, user: &str) -> usize {
    double
        .calls_to("views.publish")
        .iter()
        .filter(|c| c.str("user_id") == Some(user))
        .count()
}

#[tokio::test]
async fn an_operator_opens_home_and_approves_from_it_like_from_the_card() {
    let (app, double) = spawn_slack("C0HOME").await;
    let medium = app.trigger("memory").await;
    let medium = app.await_approval(&medium.id, Risk::Medium).await;
    let high = app.trigger("cpu").await;
    let high = app.await_approval(&high.id, Risk::High).await;

    open_home(&app, OPERATOR).await;
    let view = published_home(&double, OPERATOR, 0).await;
    let approve = button_for(&view, &medium, "approve").expect("the approve button");
    let expected = json!({"incident": medium.id.as_str(),
                          "proposal": medium.proposal_id.as_deref().unwrap()});
    assert_eq!(
        serde_json::from_str::<Value>(&approve).unwrap(),
        expected,
        "the card's value"
    );
    assert!(button_for(&view, &medium, "reject").is_some());
    assert!(
        button_for(&view, &high, "approve").is_none(),
        "high risk needs an admin"
    );
    assert!(
        view.to_string().contains("1 more waits for an admin"),
        "{view}"
    );

    // The admin sees both.
    open_home(&app, ADMIN).await;
    let admin_view = published_home(&double, ADMIN, 0).await;
    assert!(button_for(&admin_view, &medium, "approve").is_some());
    assert!(button_for(&admin_view, &high, "approve").is_some());

    let before = publishes_to(&double, OPERATOR);
    click_on_home(&app, OPERATOR, "approve", &approve).await;
    let stored = app.store.get_incident(&medium.id).await.unwrap().unwrap();
    assert_ne!(
        stored.status,
        Status::AwaitingApproval,
        "{:?}",
        stored.timeline
    );
    let audit = app.get("/api/audit", Some(&app.keys.admin)).await;
    let granted = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "ApprovalGranted" && e["incident"] == medium.id.as_str())
        .cloned()
        .expect("an ApprovalGranted entry");
    assert_eq!(granted["actor"], format!("slack:{OPERATOR}"));
    assert_eq!(granted["role"], "operator");

    // The change republishes the operator's Home (paced: within a few seconds) without
    // the decided approval.
    let refreshed = published_home(&double, OPERATOR, before).await;
    assert!(
        button_for(&refreshed, &medium, "approve").is_none(),
        "{refreshed}"
    );
    // A click on a stale Home button changes nothing.
    let settled = app.store.get_incident(&medium.id).await.unwrap().unwrap();
    click_on_home(&app, OPERATOR, "approve", &approve).await;
    let again = app.store.get_incident(&medium.id).await.unwrap().unwrap();
    assert_eq!(again.version, settled.version, "{:?}", again.timeline);
    assert_eq!(again.timeline.len(), settled.timeline.len());
}

#[tokio::test]
async fn a_viewers_home_has_no_buttons_and_a_stranger_sees_nothing_of_sentinel() {
    let (app, double) = spawn_slack("C0HOME").await;
    let incident = app.trigger("memory").await;
    let incident = app.await_approval(&incident.id, Risk::Medium).await;

    open_home(&app, VIEWER).await;
    let view = published_home(&double, VIEWER, 0).await;
    assert!(buttons(&view).is_empty(), "{view}");
    let text = view.to_string();
    assert!(text.contains("cannot approve fixes"), "{text}");
    assert!(text.contains("1 waits for an operator or admin"), "{text}");
    assert!(
        text.contains("*Signals*"),
        "a viewer sees the status: {text}"
    );

    open_home(&app, STRANGER).await;
    let stranger = published_home(&double, STRANGER, 0).await;
    assert!(buttons(&stranger).is_empty());
    let text = stranger.to_string();
    assert!(!text.contains(incident.id.as_str()), "{text}");
    assert!(text.contains("your role: none"), "{text}");

    // The Messages tab publishes nothing.
    let before = double.calls_to("views.publish").len();
    let body = json!({
        "type": "event_callback", "api_app_id": APP_ID, "event_id": format!("Ev{}", unique()),
        "event": {"type": "app_home_opened", "user": VIEWER, "channel": "D0", "tab": "messages"},
    });
    assert_eq!(
        signed(&app, "/slack/events", "application/json", &body.to_string()).await,
        200
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(double.calls_to("views.publish").len(), before);
}

#[tokio::test]
async fn changes_republish_for_people_who_opened_home_at_most_once_per_interval() {
    let (app, double) = spawn_slack("C0HOME").await;
    open_home(&app, OPERATOR).await;
    published_home(&double, OPERATOR, 0).await;
    let remembered = app
        .store
        .remembered(
            sentinel::slack::home::HOME_SET,
            sentinel::domain::Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(remembered, [OPERATOR]);

    // A burst of changes in quick succession: five incidents opened, each put up for
    // approval, then one more.
    let started = Instant::now();
    for scenario in ["cpu", "disk", "latency", "container", "sandbox"] {
        let incident = app.trigger(scenario).await;
        app.await_approval(&incident.id, Risk::Medium).await;
    }
    let last = app.trigger("memory").await;
    let last = app.await_approval(&last.id, Risk::Medium).await;
    let view = loop {
        let view = published_home(&double, OPERATOR, 1).await;
        if button_for(&view, &last, "approve").is_some() {
            break view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never republished with the last change"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(button_for(&view, &last, "approve").is_some());
    let publishes: Vec<Instant> = double
        .calls_to("views.publish")
        .iter()
        .filter(|c| c.str("user_id") == Some(OPERATOR))
        .map(|c| c.at)
        .collect();
    for pair in publishes.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(4900),
            "two publishes {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[test]
fn the_manifest_enables_the_home_tab_and_its_event() {
    let manifest = sentinel::cli::manifest("https://sentinel.example.org", false).unwrap();
    assert!(manifest.contains("home_tab_enabled: true"), "{manifest}");
    assert!(manifest.contains("- app_home_opened"), "{manifest}");
    let socket = sentinel::cli::manifest("", true).unwrap();
    assert!(socket.contains("home_tab_enabled: true"), "{socket}");
}
