//! Postmortems and catch-up against the real application: a real fix on real Docker
//! (a stopped container started on an operator's approval, verified, then rolled back by an
//! admin), its postmortem over HTTP and in the card's thread, every statement citing the
//! audit entry it comes from; and `/sentinel catchup` over a window.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use sentinel::config::DefaultRole;
use sentinel::domain::{IncidentId, Status, Timestamp};
use serde_json::Value;

use crate::containers::{docker, Container};
use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::home::{form_field, ADMIN, APP_ID, OPERATOR, SECRET, VIEWER};
use crate::slack_double::SlackDouble;

/// The app with Slack on; `remediate`: fixes run (and analysis follows every new incident).
async fn spawn(channel: &str, remediate: bool) -> (TestApp, SlackDouble) {
    let double = SlackDouble::start().await;
    let api_url = double.api_url();
    let channel = channel.to_owned();
    let app = spawn_app_with(Backend::Embedded, |settings| {
        settings.actions.enabled = remediate;
        settings.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
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

async fn wait_for(app: &TestApp, id: &IncidentId, status: Status) -> sentinel::domain::Incident {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let incident = app.store.get_incident(id).await.unwrap().unwrap();
        if incident.status == status {
            return incident;
        }
        assert!(
            Instant::now() < deadline,
            "never reached {status}: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `/sentinel <text>` from `user`; the JSON answer.
async fn slash(app: &TestApp, user: &str, text: &str) -> Value {
    let body = [
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", user),
        ("command", "/sentinel"),
        ("text", text),
        ("api_app_id", APP_ID),
        (
            "trigger_id",
            &format!("1700000000.{}", &IncidentId::generate().as_str()[4..]),
        ),
    ]
    .iter()
    .map(|(k, v)| form_field(k, v))
    .collect::<Vec<_>>()
    .join("&");
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let response = app
        .client
        .post(format!("{}/slack/commands", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", &ts)
        .header(
            "X-Slack-Signature",
            crate::slack_inbound::sign(SECRET, &ts, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The lines of a postmortem that state something: not empty, not headings.
fn statements(markdown: &str) -> Vec<&str> {
    markdown
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect()
}

#[tokio::test]
async fn a_postmortem_of_an_approved_executed_verified_and_rolled_back_fix_cites_every_step() {
    let (app, double) = spawn("C0PM", true).await;
    // A container that stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it, and
    // the rollback's stop would wait out Docker's grace period).
    let container = Container::run(
        "sentinel-pm",
        &[],
        &["sh", "-c", "trap 'exit 143' TERM; sleep 3600 & wait"],
    );
    docker(&["stop", "-t", "1", &container.0]);
    let fingerprint = format!("container_down:{}", container.0);
    let mut incident = None;
    for _ in 0..20 {
        app.tick_monitor().await;
        let open = app
            .store
            .list_incidents(sentinel::store::IncidentQuery {
                open_only: true,
                limit: 100,
            })
            .await
            .unwrap();
        incident = open
            .into_iter()
            .find(|i| i.fingerprint.as_str() == fingerprint);
        if incident.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let id = incident.expect("the stopped container is detected").id;
    wait_for(&app, &id, Status::AwaitingApproval).await;
    let path = format!("/api/incidents/{id}");
    let approved = app
        .post(&format!("{path}/approve"), Some(&app.keys.operator), "")
        .await;
    assert_eq!(approved.status, 200, "{approved:?}");
    wait_for(&app, &id, Status::Resolved).await;
    let rolled = app
        .post(&format!("{path}/rollback"), Some(&app.keys.admin), "")
        .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    wait_for(&app, &id, Status::RolledBack).await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Status}}", &container.0]),
        "exited",
        "the start was undone for real"
    );

    // The postmortem over HTTP, for a viewer, as Markdown.
    let response = app
        .client
        .get(format!("{}{path}/postmortem", app.base))
        .header("x-api-key", &app.keys.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/markdown; charset=utf-8"
    );
    let markdown = response.text().await.unwrap();

    // Every step, with the sequence number /api/audit gives its entry.
    let audit = app
        .get("/api/audit?limit=1000", Some(&app.keys.admin))
        .await;
    let entries: Vec<Value> = audit.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["incident"] == id.as_str())
        .cloned()
        .collect();
    let seq_of = |event: &str| -> u64 {
        entries
            .iter()
            .find(|e| e["event"] == event)
            .unwrap_or_else(|| panic!("no {event} in {entries:#?}"))["seq"]
            .as_u64()
            .unwrap()
    };
    for (event, words) in [
        ("IncidentOpened", "incident opened"),
        ("ActionProposed", "proposed `container_start`"),
        ("ApprovalRequested", "approval requested from an operator"),
        (
            "ApprovalGranted",
            "approved `container_start` by test-operator (operator) through the API",
        ),
        ("ActionExecuted", "`container_start` executed"),
        ("VerificationSucceeded", "verified"),
        ("ActionRolledBack", "`container_start` rolled back"),
    ] {
        let seq = seq_of(event);
        let line = markdown
            .lines()
            .find(|l| l.contains(words) && l.ends_with(&format!("[#{seq}]")))
            .unwrap_or_else(|| panic!("no line naming {event} with [#{seq}]:\n{markdown}"));
        assert!(line.starts_with("- "), "{line}");
    }
    for (label, event) in [
        ("- Opened: ", "IncidentOpened"),
        ("- First human response: ", "ApprovalGranted"),
        ("- Fixed: ", "ActionExecuted"),
        ("- Resolved: ", "VerificationSucceeded"),
        ("- Rolled back: ", "ActionRolledBack"),
    ] {
        let line = markdown
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label:?} line:\n{markdown}"));
        assert!(
            line.ends_with(&format!("[#{}]", seq_of(event))),
            "{line} should cite {event}"
        );
        if label != "- Opened: " {
            assert!(line.contains(" after opening"), "{line}");
        }
        assert!(line.contains(" UTC"), "{line}");
    }
    // Every statement carries its entry, and only entries of this incident are cited.
    let cited: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    for line in statements(&markdown) {
        let seq: u64 = line
            .rsplit_once("[#")
            .and_then(|(_, rest)| rest.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a statement without [#SEQ]: {line:?}"));
        assert!(
            cited.contains(&seq),
            "{line} cites another incident's entry"
        );
    }
    for heading in ["## Summary", "## Impact", "## Timeline", "## Decisions"] {
        assert!(markdown.contains(heading), "{heading} missing:\n{markdown}");
    }

    // Unknown incidents: JSON 404.
    let missing = app
        .get(
            "/api/incidents/inc-doesnotexist/postmortem",
            Some(&app.keys.viewer),
        )
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body["error"].is_string());

    // In Slack: posted in the card's thread as markdown blocks; the asker is told.
    let card = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stored = app.store.get_incident(&id).await.unwrap().unwrap();
            if let Some(card) = stored.slack.filter(|c| c.ts.is_some()) {
                break card;
            }
            assert!(Instant::now() < deadline, "the card was never posted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let answer = slash(&app, VIEWER, &format!("postmortem {id}")).await;
    assert_eq!(answer["response_type"], "ephemeral");
    assert!(
        answer["text"]
            .as_str()
            .unwrap()
            .contains("in its card's thread"),
        "{answer}"
    );
    let calls = double
        .wait_until(Duration::from_secs(10), |calls| {
            calls.iter().any(|c| {
                c.method == "chat.postMessage" && c.ok() && c.text().starts_with("Postmortem of")
            })
        })
        .await;
    let posted = calls
        .iter()
        .find(|c| c.method == "chat.postMessage" && c.text().starts_with("Postmortem of"))
        .unwrap();
    assert_eq!(posted.channel(), Some(card.channel.as_str()));
    assert_eq!(posted.thread_ts(), card.ts.as_deref());
    let block = &posted.body["blocks"][0];
    assert_eq!(block["type"], "markdown");
    let text = block["text"].as_str().unwrap();
    assert!(text.chars().count() <= 12_000);
    assert!(
        text.contains(&format!("[#{}]", seq_of("ActionRolledBack"))),
        "{text}"
    );

    // Someone without a role cannot ask.
    let refused = slash(&app, "UNOBODY", &format!("postmortem {id}")).await;
    assert!(refused["text"]
        .as_str()
        .unwrap()
        .contains("needs the viewer role"));
}

#[tokio::test]
async fn without_a_card_the_postmortem_is_the_answer_itself() {
    let (app, _double) = spawn("", false).await;
    let incident = app.trigger("cpu").await;
    let answer = slash(&app, VIEWER, &format!("postmortem {}", incident.id)).await;
    assert_eq!(answer["response_type"], "ephemeral");
    let block = &answer["blocks"][0];
    assert_eq!(block["type"], "markdown", "{answer}");
    let text = block["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("# Postmortem: {}", incident.id)),
        "{text}"
    );
    assert!(statements(text).iter().all(|l| l.contains("[#")), "{text}");
    let unknown = slash(&app, VIEWER, "postmortem inc-doesnotexist").await;
    assert!(
        unknown["text"].as_str().unwrap().contains("not found"),
        "{unknown}"
    );
}

#[tokio::test]
async fn catchup_lists_what_happened_in_the_window_and_leaves_out_what_did_not() {
    let (app, _double) = spawn("", false).await;
    let recent = app.trigger("cpu").await;
    let resolved = app.trigger("disk").await;
    let done = app
        .post(
            &format!("/api/incidents/{}/resolve", resolved.id),
            Some(&app.keys.operator),
            r#"{"note":"fixed by hand"}"#,
        )
        .await;
    assert_eq!(done.status, 200, "{done:?}");
    // One from before the window: opened three hours ago and closed then.
    let old = app.trigger("latency").await;
    let three_hours_ago =
        Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 3 * 3_600_000);
    loop {
        // The analysis worker may write it meanwhile: read again on a conflict.
        let mut stored = app.store.get_incident(&old.id).await.unwrap().unwrap();
        stored.opened_at = three_hours_ago;
        stored.status = Status::Resolved;
        stored.resolved_at = Some(three_hours_ago);
        match app.store.update_incident(&stored).await {
            Ok(_) => break,
            Err(sentinel::store::StoreError::VersionConflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
    // One waiting for an approval, whoever may give it named.
    let waiting = app.trigger("memory").await;
    app.await_approval(&waiting.id, sentinel::domain::Risk::Medium)
        .await;

    let answer = slash(&app, VIEWER, "catchup 2h").await;
    assert_eq!(answer["response_type"], "ephemeral");
    let text = answer["text"].as_str().unwrap();
    assert!(text.starts_with("*Catch-up: the last 2 h*"), "{text}");
    assert!(text.contains(recent.id.as_str()), "{text}");
    assert!(text.contains(resolved.id.as_str()), "{text}");
    assert!(text.contains("*Resolved (1)*"), "{text}");
    assert!(
        !text.contains(old.id.as_str()),
        "outside the window: {text}"
    );
    let pending = text
        .lines()
        .find(|l| l.contains(waiting.id.as_str()) && l.contains("may approve"))
        .unwrap_or_else(|| panic!("no pending approval line: {text}"));
    assert!(pending.contains(&format!("<@{OPERATOR}>")), "{pending}");
    assert!(pending.contains(&format!("<@{ADMIN}>")), "{pending}");

    // The default window is 8 h and takes the old one in.
    let wide = slash(&app, VIEWER, "catchup").await;
    let wide = wide["text"].as_str().unwrap();
    assert!(wide.starts_with("*Catch-up: the last 8 h*"), "{wide}");
    assert!(wide.contains(old.id.as_str()), "{wide}");
    // Bad input is answered with the usage and changes nothing.
    let bad = slash(&app, VIEWER, "catchup soon").await;
    assert!(bad["text"].as_str().unwrap().contains("Usage"), "{bad}");
}
