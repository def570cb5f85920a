//! Slack, outbound: incident cards and their threads, the outbox's order, pace, retries and
//! durability, all against the Slack Web API double (`slack_double.rs`) on loopback.
//!
//! These tests build the application themselves (not `helpers::spawn_app`) because they need
//! its Slack handle before it runs (to shorten the outbox's pace) and, for the restart test,
//! two applications on one data directory.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sentinel::app::Application;
use sentinel::config::Settings;
use sentinel::domain::{Actor, Incident, IncidentId, Risk, Status, Timestamp};
use sentinel::pipeline::detect::Scenario;
use sentinel::service::Sentinel;
use sentinel::slack::blocks::Rendered;
use sentinel::slack::{cards, Slack};
use sentinel::store::SharedStore;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::{redis_store, redis_url, unique_prefix, Backend};
use crate::slack_double::{Call, Failure, SlackDouble};

/// The channel incident cards go to in these tests.
const CARDS: &str = "C0CARDS";
/// Time between two calls in a channel here (1 s in production).
const PACE: Duration = Duration::from_millis(20);
const WAIT: Duration = Duration::from_secs(15);

struct Running {
    sentinel: Arc<Sentinel>,
    store: SharedStore,
    slack: Arc<Slack>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the application and waits until it has let go of its store.
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        drop(self.slack);
        let store = self.store;
        drop(self.sentinel);
        // The last handles go with the tasks that held them; wait for them.
        for _ in 0..200 {
            if Arc::strong_count(&store) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the store is still held {} times after shutdown",
            Arc::strong_count(&store)
        );
    }
}

fn settings(double: &SlackDouble, dir: &Path, backend: Backend, prefix: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".to_owned();
    settings.data_dir = dir.join("data");
    settings.sandbox_dir = dir.join("sandbox");
    std::fs::create_dir_all(&settings.sandbox_dir).unwrap();
    settings.monitor.enabled = false;
    settings.actions.enabled = false;
    settings.public_url = "https://sentinel.example.com".to_owned();
    settings.slack.api_url = double.api_url();
    settings.slack.channel = CARDS.to_owned();
    settings.secrets.slack_bot_token = Some(SecretString::from(SlackDouble::TOKEN));
    if backend == Backend::Redis {
        settings.secrets.redis_url = Some(SecretString::from(redis_url()));
        settings.store.redis_prefix = prefix.to_owned();
    }
    settings
}

/// Builds the application, shortens its outbox pace, and runs it.
async fn start(settings: Settings) -> Running {
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let slack = app.slack().expect("a bot token is set, so Slack is on");
    slack.outbox.set_pace(PACE);
    let sentinel = app.sentinel();
    let store = app.store();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    Running {
        sentinel,
        store,
        slack,
        shutdown,
        server,
    }
}

async fn trigger(sentinel: &Sentinel, scenario: Scenario) -> Incident {
    match sentinel.trigger(scenario, &Actor::Sentinel).await.unwrap() {
        sentinel::pipeline::intake::Intake::Opened(incident) => incident,
        other => panic!("expected a new incident, got {other:?}"),
    }
}

/// Moves an incident to awaiting approval, as analysis and policy do.
async fn await_approval(store: &SharedStore, id: &IncidentId) -> Incident {
    loop {
        let mut incident = store.get_incident(id).await.unwrap().unwrap();
        let now = Timestamp::now();
        incident
            .transition(Status::Analyzing, "sentinel", "rules analyzer", now)
            .unwrap();
        incident.risk = Some(Risk::Medium);
        incident.root_cause = Some("memory grew after the deploy".to_owned());
        incident.proposed_action = Some(sentinel::domain::ProposedAction {
            action: sentinel::domain::ActionId::ContainerRestart,
            params: [("container".to_owned(), json!("web-1"))].into(),
        });
        incident
            .transition(
                Status::AwaitingApproval,
                "sentinel",
                "medium risk: an operator must approve",
                now,
            )
            .unwrap();
        match store.update_incident(&incident).await {
            Ok(stored) => return stored,
            // The card sync saved its progress meanwhile: read again.
            Err(sentinel::store::StoreError::VersionConflict { .. }) => continue,
            Err(e) => panic!("{e}"),
        }
    }
}

fn cards_posted(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|c| {
            c.method == "chat.postMessage"
                && c.ok()
                && c.thread_ts().is_none()
                && c.channel() == Some(CARDS)
        })
        .collect()
}

fn replies_to<'a>(calls: &'a [Call], ts: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| c.method == "chat.postMessage" && c.ok() && c.thread_ts() == Some(ts))
        .collect()
}

fn message(text: &str) -> Rendered {
    Rendered {
        text: text.to_owned(),
        blocks: vec![json!({"type": "section", "text": {"type": "mrkdwn", "text": text}})],
    }
}

fn button_version(blocks: &Value, action: &str) -> Option<u64> {
    blocks.as_array()?.iter().find_map(|block| {
        block["elements"].as_array()?.iter().find_map(|e| {
            (e["action_id"] == action)
                .then(|| serde_json::from_str::<Value>(e["value"].as_str()?).ok())
                .flatten()
                .and_then(|v| v["version"].as_u64())
        })
    })
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_gets_a_card_kept_in_step_with_one_reply_per_timeline_entry() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;

    let opened = trigger(&app.sentinel, Scenario::Memory).await;
    let calls = double
        .wait_until(WAIT, |calls| {
            cards_posted(calls).len() == 1
                && replies_to(calls, cards_posted(calls)[0].ts.as_deref().unwrap()).len() == 1
        })
        .await;
    let card = cards_posted(&calls)[0];
    let ts = card.ts.clone().unwrap();
    assert!(
        card.text().contains(opened.id.as_str()),
        "fallback text: {}",
        card.text()
    );
    assert!(card.body["blocks"]
        .as_array()
        .is_some_and(|b| !b.is_empty()));
    // The card's ts is stored with the incident before the first reply.
    let stored = app.store.get_incident(&opened.id).await.unwrap().unwrap();
    let slack = stored.slack.clone().expect("the card is recorded");
    assert_eq!(
        (slack.channel.as_str(), slack.ts.as_deref()),
        (CARDS, Some(ts.as_str()))
    );

    // A change: the card is updated in place and each new timeline entry is one reply.
    let awaiting = await_approval(&app.store, &opened.id).await;
    let calls = double
        .wait_until(WAIT, |calls| {
            replies_to(calls, &ts).len() == 3
                && calls.iter().any(|c| {
                    c.method == "chat.update"
                        && c.ok()
                        && button_version(&c.body["blocks"], "approve").is_some()
                })
        })
        .await;
    let update = calls
        .iter()
        .rev()
        .find(|c| c.method == "chat.update" && c.ok())
        .unwrap();
    assert_eq!(
        (update.channel(), update.str("ts")),
        (Some(CARDS), Some(ts.as_str()))
    );
    assert!(
        update.text().contains("approval needed"),
        "{}",
        update.text()
    );
    let replies: Vec<String> = replies_to(&calls, &ts)
        .iter()
        .map(|c| c.text().to_owned())
        .collect();
    // One sentence each, the step in words (blocks/timeline_reply.j2).
    assert!(replies[0].starts_with("Detected: "), "{replies:?}");
    assert!(
        replies[1].starts_with("Analyzing the incident"),
        "{replies:?}"
    );
    assert!(
        replies[2].starts_with("Waiting for approval from an operator"),
        "{replies:?}"
    );
    assert_eq!(cards_posted(&calls).len(), 1, "one card, never two");

    // The buttons carry the version the card was rendered from, which is what a click is
    // checked against.
    let version = button_version(&update.body["blocks"], "approve").unwrap();
    let settled = wait_for_settled(&app.sentinel, &opened.id, 3).await;
    assert_eq!(settled.slack.as_ref().unwrap().rendered_version, version);
    assert!(version >= awaiting.version);
    assert!(cards::click_is_current(&settled, version));
    assert!(!cards::click_is_current(&settled, version - 1));

    // Resolution: one more reply and an update without buttons to approve.
    let mut resolved = settled.clone();
    resolved
        .transition(
            Status::Resolved,
            "sentinel",
            "recovered without action",
            Timestamp::now(),
        )
        .unwrap();
    app.store.update_incident(&resolved).await.unwrap();
    let calls = double
        .wait_until(WAIT, |calls| {
            replies_to(calls, &ts).len() == 4
                && calls
                    .iter()
                    .rev()
                    .find(|c| c.method == "chat.update" && c.ok())
                    .is_some_and(|c| c.text().contains("resolved"))
        })
        .await;
    let last = calls
        .iter()
        .rev()
        .find(|c| c.method == "chat.update" && c.ok())
        .unwrap();
    assert_eq!(button_version(&last.body["blocks"], "approve"), None);
    assert_eq!(
        replies_to(&calls, &ts)[3].text(),
        "Recovered without action",
        "the message says the step already"
    );
    // Nothing more happens once Slack shows everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        double.calls().len(),
        calls.len(),
        "no further calls once in step"
    );
    app.stop().await;
}

/// Waits until `channel`'s queue is empty (a message leaves it just after Slack's answer).
async fn wait_empty(slack: &Slack, channel: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while slack.outbox.queued(channel).await.unwrap() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{channel} never emptied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the incident's card has `entries` replies and shows what it should.
async fn wait_for_settled(sentinel: &Sentinel, id: &IncidentId, entries: usize) -> Incident {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let incident = sentinel.incident(id).await.unwrap();
        if incident
            .slack
            .as_ref()
            .is_some_and(|c| c.posted_entries == entries)
            && !cards::needs_sync(&incident, Timestamp::now(), Duration::from_secs(300))
        {
            return incident;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never settled: {:?}",
            incident.slack
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_messages_under_rate_limiting_all_arrive_in_order_and_never_before_retry_after() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    double.rate_limit_every("chat.postMessage", 6, 1);

    for n in 0..20 {
        app.slack
            .outbox
            .post("C0RATE", None, &message(&format!("message {n}")))
            .await
            .unwrap();
    }
    let calls = double
        .wait_until(Duration::from_secs(30), |calls| {
            calls
                .iter()
                .filter(|c| c.channel() == Some("C0RATE") && c.ok())
                .count()
                == 20
        })
        .await;
    let to_channel: Vec<&Call> = calls
        .iter()
        .filter(|c| c.channel() == Some("C0RATE"))
        .collect();
    let delivered: Vec<&str> = to_channel
        .iter()
        .filter(|c| c.ok())
        .map(|c| c.text())
        .collect();
    let expected: Vec<String> = (0..20).map(|n| format!("message {n}")).collect();
    assert_eq!(delivered, expected, "all delivered, in order, once each");
    let limited: Vec<usize> = (0..to_channel.len())
        .filter(|&i| to_channel[i].status == 429)
        .collect();
    assert!(limited.len() >= 3, "the double rate-limited: {limited:?}");
    for i in limited {
        let (refused, next) = (to_channel[i], to_channel[i + 1]);
        let waited = next.at.duration_since(refused.at);
        assert!(
            waited >= Duration::from_secs(1),
            "call {} came {waited:?} after a 429",
            i + 1
        );
        assert_eq!(
            next.text(),
            refused.text(),
            "the refused message is retried first"
        );
    }
    // Paced: no two calls closer than the pace.
    for pair in to_channel.windows(2) {
        assert!(pair[1].at.duration_since(pair[0].at) >= PACE - Duration::from_millis(2));
    }
    wait_empty(&app.slack, "C0RATE").await;
    app.stop().await;
}

/// The pace holds across an emptied queue and a change of sender: a message queued on
/// another replica just after the channel's queue ran dry waits out the pace of the call
/// before it. The chaos harness (`chaos::slack_429`) found two calls to one channel 30 ms
/// apart: the replica that drained the queue let the lease go at once, and the next one
/// started with no wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_queued_on_another_replica_right_after_the_queue_ran_dry_waits_for_the_pace() {
    let double = SlackDouble::start().await;
    drop(redis_store().await);
    let prefix = unique_prefix();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(settings(&double, dir_a.path(), Backend::Redis, &prefix)).await;
    let b = start(settings(&double, dir_b.path(), Backend::Redis, &prefix)).await;
    let pace = Duration::from_millis(700);
    a.slack.outbox.set_pace(pace);
    b.slack.outbox.set_pace(pace);
    for n in 0..4 {
        // Queued by each replica in turn, each once the one before was taken.
        let queuing = if n % 2 == 0 { &a } else { &b };
        queuing
            .slack
            .outbox
            .post("C0DRY", None, &message(&format!("dry {n}")))
            .await
            .unwrap();
        double
            .wait_until(WAIT, |calls| {
                calls
                    .iter()
                    .any(|c| c.ok() && c.text() == format!("dry {n}"))
            })
            .await;
    }
    let mine: Vec<Call> = double
        .calls()
        .into_iter()
        .filter(|c| c.channel() == Some("C0DRY"))
        .collect();
    assert_eq!(mine.len(), 4, "{mine:?}");
    for pair in mine.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= pace,
            "{:?} came {gap:?} after {:?}",
            pair[1].text(),
            pair[0].text()
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_is_parked_with_its_error_and_not_retried() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    double.fail_next(
        "chat.postMessage",
        Failure::Error("channel_not_found".to_owned()),
    );

    app.slack
        .outbox
        .post("C0GONE", None, &message("lost"))
        .await
        .unwrap();
    app.slack
        .outbox
        .post("C0GONE", None, &message("after"))
        .await
        .unwrap();
    double
        .wait_until(WAIT, |calls| {
            calls.iter().any(|c| c.text() == "after" && c.ok())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tries = double
        .calls_to("chat.postMessage")
        .iter()
        .filter(|c| c.text() == "lost")
        .count();
    assert_eq!(tries, 1, "ok:false is not retried");
    let parked = app.store.outbox_parked("C0GONE").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].payload["text"], "lost");
    assert!(
        parked[0].error.contains("chat.postMessage"),
        "{}",
        parked[0].error
    );
    assert!(
        parked[0].error.contains("channel_not_found"),
        "{}",
        parked[0].error
    );
    wait_empty(&app.slack, "C0GONE").await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_slack_takes_the_message() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    double.fail_next("chat.postMessage", Failure::Status(500));
    double.fail_next("chat.postMessage", Failure::Status(503));

    app.slack
        .outbox
        .post("C0FLAKY", None, &message("first"))
        .await
        .unwrap();
    app.slack
        .outbox
        .post("C0FLAKY", None, &message("second"))
        .await
        .unwrap();
    let calls = double
        .wait_until(WAIT, |calls| calls.iter().filter(|c| c.ok()).count() == 2)
        .await;
    let texts: Vec<(&str, u16)> = calls.iter().map(|c| (c.text(), c.status)).collect();
    assert_eq!(
        texts,
        vec![
            ("first", 500),
            ("first", 503),
            ("first", 200),
            ("second", 200)
        ]
    );
    // Backoff: about 1 s, then 2 s.
    assert!(calls[1].at.duration_since(calls[0].at) >= Duration::from_millis(900));
    assert!(calls[2].at.duration_since(calls[1].at) >= Duration::from_millis(1900));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_before_a_restart_are_sent_after_it_in_order() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Slack is down while the first process runs: nothing gets through.
    for _ in 0..50 {
        double.fail_next("chat.postMessage", Failure::Status(503));
    }
    let first = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    for n in 0..5 {
        first
            .slack
            .outbox
            .post("C0DURABLE", None, &message(&format!("queued {n}")))
            .await
            .unwrap();
    }
    double
        .wait_until(WAIT, |calls| calls.iter().any(|c| c.text() == "queued 0"))
        .await;
    first.stop().await;
    assert!(
        double.calls().iter().all(|c| !c.ok()),
        "nothing was delivered"
    );

    // Slack is back; a new process on the same data directory sends what was queued.
    double.heal();
    let second = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    let calls = double
        .wait_until(WAIT, |calls| calls.iter().filter(|c| c.ok()).count() == 5)
        .await;
    let delivered: Vec<&str> = calls.iter().filter(|c| c.ok()).map(|c| c.text()).collect();
    assert_eq!(
        delivered,
        ["queued 0", "queued 1", "queued 2", "queued 3", "queued 4"]
    );
    wait_empty(&second.slack, "C0DURABLE").await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_slack_refuses_is_recorded_and_not_posted_again() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    double.fail_always("chat.postMessage", "not_in_channel");

    let opened = trigger(&app.sentinel, Scenario::Disk).await;
    let deadline = std::time::Instant::now() + WAIT;
    let card = loop {
        let incident = app.store.get_incident(&opened.id).await.unwrap().unwrap();
        if let Some(card) = incident.slack {
            break card;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failure was never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(card.ts, None);
    assert!(
        card.error.as_deref().unwrap().contains("not_in_channel"),
        "{card:?}"
    );
    // Later changes do not make it try again.
    await_approval(&app.store, &opened.id).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(double.calls_to("chat.postMessage").len(), 1, "tried once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_post_a_card_and_its_replies_once() {
    let double = SlackDouble::start().await;
    drop(redis_store().await);
    let prefix = unique_prefix();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(settings(&double, dir_a.path(), Backend::Redis, &prefix)).await;
    let b = start(settings(&double, dir_b.path(), Backend::Redis, &prefix)).await;

    let opened = trigger(&a.sentinel, Scenario::Cpu).await;
    // Both replicas queue syncs for it, repeatedly, while the first is being sent.
    for _ in 0..5 {
        a.slack
            .outbox
            .sync_incident(CARDS, &opened.id)
            .await
            .unwrap();
        b.slack
            .outbox
            .sync_incident(CARDS, &opened.id)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    await_approval(&b.store, &opened.id).await;
    b.slack
        .outbox
        .sync_incident(CARDS, &opened.id)
        .await
        .unwrap();
    let settled = wait_for_settled(&a.sentinel, &opened.id, 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = double.calls();
    assert_eq!(cards_posted(&calls).len(), 1, "one card");
    let ts = settled.slack.unwrap().ts.unwrap();
    let replies: Vec<&str> = replies_to(&calls, &ts).iter().map(|c| c.text()).collect();
    assert_eq!(replies.len(), 3, "one reply per entry: {replies:?}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_client_speaks_the_web_api_and_classifies_failures() {
    use sentinel::slack::blocks;
    use sentinel::slack::client::{SlackApi, SlackError};
    let double = SlackDouble::start().await;
    let api = SlackApi::new(&double.api_url(), SecretString::from(SlackDouble::TOKEN)).unwrap();

    assert_eq!(api.auth_test().await.unwrap(), "U0SENTINEL");
    let ts = api.post_message("C1", None, "hello", &[]).await.unwrap();
    let reply = api
        .post_message("C1", Some(&ts), "in thread", &[])
        .await
        .unwrap();
    assert_ne!(ts, reply);
    api.update_message("C1", &ts, "edited", &[]).await.unwrap();
    api.post_ephemeral("C1", "U1", "only you", &[])
        .await
        .unwrap();
    let incident = blocks::sample_context("reject_modal");
    let modal = blocks::render("reject_modal", &incident).unwrap();
    api.views_open("trigger-1", &modal.blocks[0]).await.unwrap();
    double.set_usergroup("S1", &["U1", "U2"]);
    assert_eq!(api.usergroup_users("S1").await.unwrap(), ["U1", "U2"]);

    let calls = double.calls();
    assert_eq!(calls[2].thread_ts(), Some(ts.as_str()));
    assert_eq!(calls[3].str("ts"), Some(ts.as_str()));
    assert_eq!(calls[5].body["view"]["callback_id"], "reject_reason");
    assert_eq!(calls[6].str("usergroup"), Some("S1"), "sent as a form");
    assert!(calls.iter().all(Call::ok), "{calls:?}");

    // ok:false is an Api error naming the method; not transient.
    let missing = api.usergroup_users("S404").await.unwrap_err();
    assert_eq!(
        missing,
        SlackError::Api {
            method: "usergroups.users.list".into(),
            error: "no_such_subteam".into()
        }
    );
    assert!(!missing.is_transient());
    // 429 carries Retry-After; 5xx and a dead server are transport errors.
    double.fail_next(
        "chat.postMessage",
        Failure::RateLimited {
            retry_after_secs: 7,
        },
    );
    assert_eq!(
        api.post_message("C1", None, "x", &[]).await.unwrap_err(),
        SlackError::RateLimited {
            retry_after: Duration::from_secs(7)
        }
    );
    double.fail_next("chat.update", Failure::Status(502));
    let bad_gateway = api.update_message("C1", &ts, "x", &[]).await.unwrap_err();
    assert!(matches!(bad_gateway, SlackError::Transport(_)) && bad_gateway.is_transient());
    // A wrong token is refused like Slack does.
    let wrong = SlackApi::new(&double.api_url(), SecretString::from("xoxb-wrong")).unwrap();
    assert!(matches!(
        wrong.auth_test().await.unwrap_err(),
        SlackError::Api { error, .. } if error == "invalid_auth"
    ));
    let gone = SlackApi::new("http://127.0.0.1:9/api/", SecretString::from("t")).unwrap();
    assert!(matches!(
        gone.auth_test().await.unwrap_err(),
        SlackError::Transport(_)
    ));
    assert!(SlackApi::new("ftp://slack.example/", SecretString::from("t")).is_err());
}

/// A Slack that takes a call and never answers. Sentinel's client gives up after
/// `CALL_TIMEOUT` with a transient error (the outbox tries again later); slack-morphism
/// 2.31's `SlackClient`, pointed at the same double, has no time limit on a call and is
/// still waiting well after that. This is why `slack::client` sends slack-morphism's
/// request and response models over its own reqwest transport, not through `SlackClient`.
#[tokio::test]
async fn a_stalled_call_is_given_up_after_call_timeout_and_slack_morphisms_client_waits_on() {
    use hyper_util::client::legacy::connect::HttpConnector;
    use sentinel::slack::client::{SlackApi, SlackError, CALL_TIMEOUT};
    use slack_morphism::prelude::{SlackApiToken, SlackClient, SlackClientHyperConnector};
    let double = SlackDouble::start().await;
    let ours = SlackApi::new(&double.api_url(), SecretString::from(SlackDouble::TOKEN)).unwrap();
    let base = double.api_url();
    let theirs = SlackClient::new(
        SlackClientHyperConnector::with_connector(HttpConnector::new())
            .with_slack_api_url(base.trim_end_matches('/')),
    );
    let token = SlackApiToken::new(SlackDouble::TOKEN.to_owned().into());
    // Both speak to the double while it answers.
    assert_eq!(ours.auth_test().await.unwrap(), "U0SENTINEL");
    let answer = theirs.open_session(&token).auth_test().await.unwrap();
    assert_eq!(answer.user_id.0, "U0SENTINEL");

    double.delay("auth.test", Duration::from_secs(60));
    let started = std::time::Instant::now();
    let (ours, theirs) = tokio::join!(
        async {
            let result = ours.auth_test().await;
            (result, started.elapsed())
        },
        tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(3), async {
            theirs.open_session(&token).auth_test().await
        }),
    );
    let (result, took) = ours;
    assert!(
        matches!(&result, Err(SlackError::Transport(_))),
        "{result:?}"
    );
    assert!(result.unwrap_err().is_transient());
    assert!(
        took >= CALL_TIMEOUT && took < CALL_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        theirs.is_err(),
        "slack-morphism's client answered within {:?}: {theirs:?}",
        CALL_TIMEOUT + Duration::from_secs(3)
    );
}

/// On start, no cards are posted for incidents that were already closed, and old cards are
/// not redrawn (SPEC §12.1): of five resolved incidents and one open one stored before the
/// start, only the open one gets a card, and a card drawn for an incident that closed long
/// ago is left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_posts_cards_only_for_open_incidents() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(&double, dir.path(), Backend::Embedded, "");
    let long_ago = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 2 * 3_600_000);
    let open_id = {
        let store = sentinel::store::embedded::EmbeddedStore::open(
            &settings.data_dir.join("sentinel.redb"),
        )
        .unwrap();
        use sentinel::store::Store;
        let detection = |n: usize| sentinel::domain::Detection {
            signal: sentinel::domain::Signal::External,
            resource: sentinel::domain::Resource::parse(&format!("old-{n}")).unwrap(),
            severity: sentinel::domain::Severity::Warning,
            value: 1.0,
            threshold: 1.0,
            source: sentinel::domain::Source::Alertmanager,
            summary: format!("old alert {n}"),
            labels: Default::default(),
        };
        for n in 0..5 {
            let mut incident = Incident::open(IncidentId::generate(), &detection(n), long_ago);
            incident
                .transition(
                    Status::Resolved,
                    "sentinel",
                    "resolved by its source",
                    long_ago,
                )
                .unwrap();
            store.create_incident(&incident).await.unwrap();
            if n == 0 {
                // One of them had a card, drawn from an older template.
                let card = sentinel::domain::SlackCard {
                    channel: CARDS.to_owned(),
                    ts: Some("1600000000.000001".to_owned()),
                    posted_entries: incident.timeline.len(),
                    digest: "an older drawing".to_owned(),
                    ..Default::default()
                };
                store.put_card(&incident.id, &card).await.unwrap();
            }
        }
        let open = Incident::open(IncidentId::generate(), &detection(9), Timestamp::now());
        store.create_incident(&open).await.unwrap();
        open.id
    };
    let running = start(settings).await;
    double
        .wait_until(WAIT, |calls| !cards_posted(calls).is_empty())
        .await;
    // Give the first catch-up time to queue anything else it would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = double.calls();
    let cards = cards_posted(&calls);
    assert_eq!(cards.len(), 1, "{cards:?}");
    assert!(cards[0].text().contains(open_id.as_str()), "{:?}", cards[0]);
    let redrawn = calls.iter().filter(|c| c.method == "chat.update").count();
    assert_eq!(redrawn, 0, "an old card was redrawn");
    running.stop().await;
}

/// Where `[[slack.routes]]` send critical cards and warnings in this test.
const CRITICAL: &str = "C0CRITICAL";
const WARNINGS: &str = "C0WARNINGS";

fn cards_in<'a>(calls: &'a [Call], channel: &str) -> Vec<&'a Call> {
    calls
        .iter()
        .filter(|c| {
            c.method == "chat.postMessage"
                && c.ok()
                && c.thread_ts().is_none()
                && c.channel() == Some(channel)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_send_critical_cards_and_warnings_to_their_channels_with_their_threads() {
    let double = SlackDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(&double, dir.path(), Backend::Embedded, "");
    settings.slack.routes = vec![
        sentinel::config::SlackRoute {
            channel: CRITICAL.to_owned(),
            severity: Some(sentinel::domain::Severity::Critical),
            signal: None,
            label: None,
        },
        sentinel::config::SlackRoute {
            channel: WARNINGS.to_owned(),
            severity: Some(sentinel::domain::Severity::Warning),
            signal: None,
            label: None,
        },
    ];
    let app = start(settings).await;

    // The memory test alert is critical, the sandbox one a warning.
    let critical = trigger(&app.sentinel, Scenario::Memory).await;
    let warning = trigger(&app.sentinel, Scenario::Sandbox).await;
    assert_eq!(critical.severity, sentinel::domain::Severity::Critical);
    assert_eq!(warning.severity, sentinel::domain::Severity::Warning);
    await_approval(&app.store, &critical.id).await;
    await_approval(&app.store, &warning.id).await;
    // Each card gets its three replies (detected, analyzing, awaiting approval).
    let calls = double
        .wait_until(WAIT, |calls| {
            let (c, w) = (cards_in(calls, CRITICAL), cards_in(calls, WARNINGS));
            c.len() == 1
                && w.len() == 1
                && replies_to(calls, c[0].ts.as_deref().unwrap()).len() == 3
                && replies_to(calls, w[0].ts.as_deref().unwrap()).len() == 3
        })
        .await;
    let critical_card = cards_in(&calls, CRITICAL)[0];
    let warning_card = cards_in(&calls, WARNINGS)[0];
    assert!(critical_card.text().contains(critical.id.as_str()));
    assert!(warning_card.text().contains(warning.id.as_str()));
    assert!(cards_in(&calls, CARDS).is_empty(), "the default got a card");
    for (card, channel) in [(critical_card, CRITICAL), (warning_card, WARNINGS)] {
        let ts = card.ts.as_deref().unwrap();
        for reply in replies_to(&calls, ts) {
            assert_eq!(
                reply.channel(),
                Some(channel),
                "a reply left its thread's channel"
            );
        }
    }
    let stored = app.store.get_incident(&warning.id).await.unwrap().unwrap();
    assert_eq!(stored.slack.as_ref().unwrap().channel, WARNINGS);

    // The warning turns critical: its card is updated where it is, its thread goes on
    // there, and no second card appears in the critical channel.
    let warning_ts = warning_card.ts.clone().unwrap();
    let mut raised = wait_for_settled(&app.sentinel, &warning.id, 3).await;
    let louder = sentinel::domain::Detection {
        signal: raised.signal,
        resource: raised.resource.clone(),
        severity: sentinel::domain::Severity::Critical,
        value: raised.value,
        threshold: raised.threshold,
        source: raised.source,
        summary: "the sandbox kept growing".to_owned(),
        labels: Default::default(),
    };
    assert!(raised.raise_severity(&louder, Timestamp::now()));
    raised
        .transition(
            Status::Rejected,
            "api:test-operator (operator)",
            "not now",
            Timestamp::now(),
        )
        .unwrap();
    app.store.update_incident(&raised).await.unwrap();
    let calls = double
        .wait_until(WAIT, |calls| {
            replies_to(calls, &warning_ts).len() == 4
                && calls.iter().any(|c| {
                    c.method == "chat.update"
                        && c.ok()
                        && c.str("ts") == Some(warning_ts.as_str())
                        && c.text().contains("rejected")
                })
        })
        .await;
    let update = calls
        .iter()
        .rev()
        .find(|c| c.method == "chat.update" && c.str("ts") == Some(warning_ts.as_str()))
        .unwrap();
    assert_eq!(update.channel(), Some(WARNINGS));
    assert_eq!(replies_to(&calls, &warning_ts)[3].channel(), Some(WARNINGS));
    assert_eq!(
        cards_in(&calls, CRITICAL).len(),
        1,
        "the raised card moved channels"
    );
    app.stop().await;
}
