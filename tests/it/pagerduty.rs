//! PagerDuty, end to end: the real application against the Events API v2 double
//! (`pagerduty_double.rs`) on loopback, with real alerts (the Alertmanager webhook), a real
//! fix in a real sandbox, the embedded store across a restart and two replicas on Redis.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sentinel::app::Application;
use sentinel::config::Settings;
use sentinel::domain::{Fingerprint, Incident, IncidentId, Resource, Signal, Status};
use sentinel::pagerduty::PagerDuty;
use sentinel::store::SharedStore;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::helpers::{redis_url, spawn_app_with, unique_prefix, Backend, TestApp};
use crate::pagerduty_double::{Answer, PagerDutyDouble, Received};

const TOKEN: &str = "am-pagerduty-test-token";
const PUBLIC_URL: &str = "https://sentinel.example.com";
const WAIT: Duration = Duration::from_secs(20);

fn with_pagerduty(settings: &mut Settings, double: &PagerDutyDouble) {
    settings.pagerduty.events_url = double.events_url();
    settings.secrets.pagerduty_routing_key = Some(SecretString::from(PagerDutyDouble::ROUTING_KEY));
    settings.alertmanager.bearer_token = TOKEN.to_owned().into();
    settings.public_url = PUBLIC_URL.to_owned();
}

/// An Alertmanager (version 4) delivery of one alert.
fn alert(status: &str, fingerprint: &str, severity: &str) -> String {
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"DiskPressure\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "sentinel",
        "groupLabels": {"alertname": "DiskPressure"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": [{
            "status": status,
            "labels": {"alertname": "DiskPressure", "severity": severity, "instance": "db-1:9100"},
            "annotations": {"summary": "the data volume is 97% full"},
            "startsAt": "2026-11-28T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus.local/graph",
            "fingerprint": fingerprint
        }]
    })
    .to_string()
}

async fn send_alert(client: &reqwest::Client, base: &str, body: String) {
    let response = client
        .post(format!("{base}/api/alertmanager"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "alertmanager webhook: {}",
        response.status()
    );
}

async fn incident_of(store: &SharedStore, fingerprint: &str) -> Incident {
    let fingerprint = Fingerprint::new(Signal::External, &Resource::parse(fingerprint).unwrap());
    for _ in 0..200 {
        if let Some(incident) = store.open_incident_for(&fingerprint).await.unwrap() {
            return incident;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{fingerprint} has no open incident");
}

async fn wait_status(store: &SharedStore, id: &IncidentId, status: Status) -> Incident {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let incident = store.get_incident(id).await.unwrap().unwrap();
        if incident.status == status {
            return incident;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached {status}: {:#?}",
            incident.timeline
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until events for `id` are queued (the watcher has looked at it).
async fn wait_queued_for(store: &SharedStore, id: &IncidentId) {
    let deadline = std::time::Instant::now() + WAIT;
    while store
        .outbox_mark(&format!("pagerduty:{id}"))
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing queued for {id}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn actions(events: &[Received]) -> Vec<&str> {
    events.iter().map(Received::action).collect()
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_pages_once_however_often_the_alert_repeats_and_resolves_with_it() {
    let double = PagerDutyDouble::start().await;
    // Remediation on: the rules find no catalogue fix for an external alert, so the policy
    // escalates it (notify only), and a warning pages because it is escalated.
    let app = spawn_app_with(Backend::Embedded, |s| {
        with_pagerduty(s, &double);
        s.actions.enabled = true;
    })
    .await;
    for _ in 0..25 {
        send_alert(
            &app.client,
            &app.base,
            alert("firing", "fpdisk1", "warning"),
        )
        .await;
    }
    let incident = incident_of(&app.store, "fpdisk1").await;
    let id = incident.id.as_str().to_owned();
    wait_status(&app.store, &incident.id, Status::Escalated).await;
    double
        .wait_until(WAIT, |_| double.accepted_for(&id).len() == 1)
        .await;
    // The alert keeps firing, and the watcher's catch-up looks again: no second page.
    for _ in 0..25 {
        send_alert(
            &app.client,
            &app.base,
            alert("firing", "fpdisk1", "warning"),
        )
        .await;
    }
    let seen = app.store.get_incident(&incident.id).await.unwrap().unwrap();
    assert_eq!(seen.occurrences, 50, "every repeat reached the incident");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(actions(&double.accepted_for(&id)), ["trigger"]);

    send_alert(
        &app.client,
        &app.base,
        alert("resolved", "fpdisk1", "warning"),
    )
    .await;
    wait_status(&app.store, &incident.id, Status::Resolved).await;
    double
        .wait_until(WAIT, |_| double.accepted_for(&id).len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = double.accepted_for(&id);
    assert_eq!(actions(&events), ["trigger", "resolve"]);
    assert_eq!(double.alerts_opened(&id), 1, "one PagerDuty alert");
    assert!(
        !double.alert_open(&id),
        "the alert is resolved with the incident"
    );
    assert!(
        double.received().iter().all(Received::accepted),
        "the double refused something: {:#?}",
        double.received()
    );

    let trigger = &events[0].body;
    assert_eq!(trigger["dedup_key"], id);
    assert_eq!(
        trigger["payload"]["severity"], "error",
        "escalated: at least error"
    );
    assert_eq!(trigger["payload"]["source"], "db-1:9100");
    let summary = events[0].summary();
    assert!(
        summary.starts_with("Sentinel needs a person for ") && summary.contains("97% full"),
        "{summary}"
    );
    assert!(
        summary.contains("No catalogue action fixes this"),
        "{summary}"
    );
    assert_eq!(trigger["links"][0]["href"], format!("{PUBLIC_URL}/#{id}"));
    assert_eq!(events[1].body["dedup_key"], id);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_and_its_rollback_are_change_events_and_a_warning_pages_nobody() {
    let double = PagerDutyDouble::start().await;
    let app: TestApp = spawn_app_with(Backend::Embedded, |s| {
        with_pagerduty(s, &double);
        s.actions.enabled = true;
        s.settle = sentinel::config::HumanDuration(Duration::from_millis(300));
        s.thresholds.sandbox_size_mb.warning = Some(1.0);
        s.monitor.for_samples = 1;
    })
    .await;
    let logs = app.sandbox.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("big.log"), vec![b'x'; 3 << 20]).unwrap();
    let fingerprint = "sandbox_size:sandbox";
    let mut incident = None;
    for _ in 0..20 {
        app.tick_monitor().await;
        incident = app
            .store
            .list_incidents(sentinel::store::IncidentQuery {
                open_only: false,
                limit: 100,
            })
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.fingerprint.as_str() == fingerprint);
        if incident.is_some() {
            break;
        }
    }
    let incident = incident.expect("the sandbox breach opens an incident");
    let id = incident.id.as_str().to_owned();
    // Low risk: the cleanup runs on its own and verifies.
    let resolved = wait_status(&app.store, &incident.id, Status::Resolved).await;
    assert!(resolved.execution.is_some());
    assert!(!logs.join("big.log").exists());
    let events = double
        .wait_until(WAIT, |_| !double.accepted_for(&id).is_empty())
        .await;
    let fix = events
        .iter()
        .find(|r| r.incident() == Some(&id))
        .unwrap()
        .clone();
    assert_eq!(fix.endpoint, "change/enqueue");
    assert!(
        fix.summary()
            .starts_with("Sentinel ran sandbox_cleanup on sandbox"),
        "{}",
        fix.summary()
    );
    assert_eq!(
        fix.body["payload"]["custom_details"]["action"],
        "sandbox_cleanup"
    );

    // An admin rolls the cleanup back: a second change event, still no page (a warning).
    let rolled = app
        .post(
            &format!("/api/incidents/{id}/rollback"),
            Some(&app.keys.admin),
            "",
        )
        .await;
    assert_eq!(rolled.status, 200, "{rolled:?}");
    assert!(
        logs.join("big.log").exists(),
        "the rollback restored the log"
    );
    double
        .wait_until(WAIT, |_| double.accepted_for(&id).len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = double.accepted_for(&id);
    assert_eq!(actions(&events), ["change", "change"]);
    assert!(
        events[1]
            .summary()
            .starts_with("Sentinel rolled back sandbox_cleanup on sandbox"),
        "{}",
        events[1].summary()
    );
    assert_eq!(
        double.alerts_opened(&id),
        0,
        "a warning that was fixed paged someone"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Applications built here, for a short backoff and restarts on one data directory.

struct Running {
    base: String,
    client: reqwest::Client,
    store: SharedStore,
    pagerduty: Arc<PagerDuty>,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Stops the application and waits until it has let go of its store.
    async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.unwrap().unwrap();
        drop(self.pagerduty);
        let store = self.store;
        for _ in 0..200 {
            if Arc::strong_count(&store) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the store is still held after shutdown");
    }

    async fn fire(&self, fingerprint: &str) -> Incident {
        send_alert(
            &self.client,
            &self.base,
            alert("firing", fingerprint, "critical"),
        )
        .await;
        incident_of(&self.store, fingerprint).await
    }

    async fn resolve(&self, fingerprint: &str) {
        send_alert(
            &self.client,
            &self.base,
            alert("resolved", fingerprint, "critical"),
        )
        .await;
    }
}

fn settings(double: &PagerDutyDouble, dir: &Path, backend: Backend, prefix: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".to_owned();
    settings.data_dir = dir.join("data");
    settings.sandbox_dir = dir.join("sandbox");
    settings.monitor.enabled = false;
    settings.actions.enabled = false;
    with_pagerduty(&mut settings, double);
    if backend == Backend::Redis {
        settings.secrets.redis_url = Some(SecretString::from(redis_url()));
        settings.store.redis_prefix = prefix.to_owned();
    }
    settings
}

/// Builds the application, shortens PagerDuty's backoff to 20 ms, and runs it.
async fn start(settings: Settings) -> Running {
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let pagerduty = app.pagerduty().expect("a routing key is set");
    pagerduty.set_first_backoff(Duration::from_millis(20));
    let running = Running {
        base: format!("http://{}", app.local_addr()),
        client: reqwest::Client::new(),
        store: app.store(),
        pagerduty,
        shutdown: app.shutdown_token(),
        server: tokio::spawn(app.run()),
    };
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pagerduty_answering_429_and_503_nothing_is_lost_and_order_per_incident_holds() {
    let double = PagerDutyDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    // Before anything is processed: three 429s and a 500, then 202s.
    double.answer_next([
        Answer::RateLimited,
        Answer::RateLimited,
        Answer::Status(500),
        Answer::RateLimited,
    ]);
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    let fingerprints = ["fpa1", "fpb2", "fpc3", "fpd4"];
    let mut ids = Vec::new();
    for fingerprint in fingerprints {
        let incident = app.fire(fingerprint).await;
        // Critical: the trigger is queued before the alert resolves.
        wait_queued_for(&app.store, &incident.id).await;
        app.resolve(fingerprint).await;
        wait_status(&app.store, &incident.id, Status::Resolved).await;
        ids.push(incident.id.as_str().to_owned());
    }
    let received = double
        .wait_until(WAIT, |received| {
            received.iter().filter(|r| r.accepted()).count() == 2 * ids.len()
        })
        .await;
    for id in &ids {
        assert_eq!(
            actions(&double.accepted_for(id)),
            ["trigger", "resolve"],
            "{id}: lost, repeated or out of order"
        );
        assert!(!double.alert_open(id));
    }
    // Everything arrived in the order it was queued: each incident's pair in turn.
    let accepted: Vec<&str> = received
        .iter()
        .filter(|r| r.accepted())
        .map(|r| r.incident().unwrap())
        .collect();
    let expected: Vec<&str> = ids
        .iter()
        .flat_map(|id| [id.as_str(), id.as_str()])
        .collect();
    assert_eq!(accepted, expected);
    // The first event was refused four times, then taken: the same body each time, each
    // retry after the backoff (20 ms, doubling).
    let first: Vec<&Received> = received.iter().take(5).collect();
    assert_eq!(
        first.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 429, 500, 429, 202]
    );
    assert!(first.iter().all(|r| r.body == first[4].body));
    for pair in first.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(15),
            "retried without waiting"
        );
    }
    assert_eq!(app.pagerduty.queued().await.unwrap(), 0);
    assert!(app.pagerduty.parked().await.unwrap().is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_parked_with_pagerdutys_errors_and_the_rest_still_go() {
    let double = PagerDutyDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    double.answer_next([Answer::Invalid(vec![
        "'payload.severity' is missing or blank".to_owned(),
    ])]);
    let app = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    let refused = app.fire("fprefused").await;
    wait_queued_for(&app.store, &refused.id).await;
    let taken = app.fire("fptaken").await;
    let taken_id = taken.id.as_str().to_owned();
    double
        .wait_until(WAIT, |_| double.accepted_for(&taken_id).len() == 1)
        .await;
    let parked = app.pagerduty.parked().await.unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0].payload["incident"], refused.id.as_str());
    assert_eq!(parked[0].payload["kind"], "trigger");
    assert!(
        parked[0]
            .error
            .contains("Event object is invalid: 'payload.severity' is missing or blank"),
        "{}",
        parked[0].error
    );
    // Not retried: the refused trigger was sent once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let attempts = double
        .received()
        .iter()
        .filter(|r| r.incident() == Some(refused.id.as_str()))
        .count();
    assert_eq!(attempts, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_queued_before_a_restart_are_delivered_after_it_once() {
    let double = PagerDutyDouble::start().await;
    let dir = tempfile::tempdir().unwrap();
    double.set_down(true);
    let first = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    let incident = first.fire("fprestart").await;
    let id = incident.id.as_str().to_owned();
    wait_queued_for(&first.store, &incident.id).await;
    // PagerDuty is down: the trigger is tried and stays queued.
    double.wait_until(WAIT, |r| r.len() >= 2).await;
    assert_eq!(first.pagerduty.queued().await.unwrap(), 1);
    first.stop().await;

    double.set_down(false);
    let second = start(settings(&double, dir.path(), Backend::Embedded, "")).await;
    double
        .wait_until(WAIT, |_| double.accepted_for(&id).len() == 1)
        .await;
    // The new process's watcher looked at the incident too, and queued nothing again.
    second.pagerduty.catch_up().await;
    second.resolve("fprestart").await;
    double
        .wait_until(WAIT, |_| double.accepted_for(&id).len() == 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(actions(&double.accepted_for(&id)), ["trigger", "resolve"]);
    assert!(double
        .received()
        .iter()
        .filter(|r| !r.accepted())
        .all(|r| r.status == 503));
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_send_each_event_once() {
    let double = PagerDutyDouble::start().await;
    let prefix = unique_prefix();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(settings(&double, dir_a.path(), Backend::Redis, &prefix)).await;
    let b = start(settings(&double, dir_b.path(), Backend::Redis, &prefix)).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        let fingerprint = format!("fpreplica{n}");
        // Alerts arrive at either replica; both watch every incident.
        let replica = if n % 2 == 0 { &a } else { &b };
        let incident = replica.fire(&fingerprint).await;
        wait_queued_for(&replica.store, &incident.id).await;
        replica.resolve(&fingerprint).await;
        ids.push(incident.id.as_str().to_owned());
    }
    double
        .wait_until(WAIT, |r| r.iter().filter(|r| r.accepted()).count() >= 8)
        .await;
    a.pagerduty.catch_up().await;
    b.pagerduty.catch_up().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &ids {
        assert_eq!(
            actions(&double.accepted_for(id)),
            ["trigger", "resolve"],
            "{id}"
        );
    }
    assert_eq!(double.received().len(), 8, "{:#?}", double.received());
    a.stop().await;
    b.stop().await;
}
