//! Cited evidence (SPEC §12.4), end to end through the app with the LLM double: every
//! analysis lists facts with ids; the prompt lists them; an LLM answer citing none, or an id
//! its prompt did not list, is refused on the timeline (`proposal_refused`) and the rules
//! decide, citing their own; an answer citing listed ids is accepted and its citations are
//! what the incident shows. And Docker unreachable while its events are read: analysis goes
//! on, nothing is recorded as changed, and the timeline says so.

use std::time::{Duration, Instant};

use sentinel::domain::{Incident, IncidentId, Status};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::llm_double::{LlmDouble, Reply};

const KEY: &str = "llm-evidence-key";

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

fn answer(root_cause: &str, evidence: Value) -> String {
    json!({
        "root_cause": root_cause,
        "proposed_action": {"action": "notify_only", "params": {}},
        "risk_assessment": "low", "confidence": 0.6, "evidence": evidence,
    })
    .to_string()
}

/// The ids of the `evidence` list in the user message of a recorded request.
fn prompt_ids(request: &crate::llm_double::RecordedRequest) -> Vec<String> {
    let user = request.message("user");
    let open = user.find("<<<DATA\n").expect("the data fence opens") + "<<<DATA\n".len();
    let close = user.find("\nDATA>>>").expect("the data fence closes");
    let data: Value = serde_json::from_str(&user[open..close]).expect("the data is JSON");
    data["evidence"]
        .as_array()
        .expect("the prompt lists evidence")
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

fn step<'a>(incident: &'a Incident, step: &str) -> Option<&'a str> {
    incident
        .timeline
        .iter()
        .find(|e| e.step == step)
        .map(|e| e.message.as_str())
}

#[tokio::test]
async fn an_llm_answer_must_cite_ids_from_its_prompt_or_the_rules_decide() {
    let double = LlmDouble::start(Some(KEY)).await;
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.analyzer.kind = sentinel::config::AnalyzerKind::Llm;
        s.llm.url = double.url.clone();
        s.llm.timeout = sentinel::config::HumanDuration(Duration::from_secs(5));
        s.secrets.llm_api_key = Some(secrecy::SecretString::from(KEY));
    })
    .await;

    // No citation at all: refused once (not retried), the rules decide and cite their own.
    double.script([Reply::content(answer("the CPU is busy", json!([])))]);
    let cpu = app.trigger("cpu").await;
    let decided = wait_for(&app, &cpu.id, Status::Escalated).await;
    assert_eq!(double.requests().len(), 1, "a refusal is not retried");
    assert_eq!(
        decided.analyzer.as_deref(),
        Some("rules"),
        "{:#?}",
        decided.timeline
    );
    let refused = step(&decided, "proposal_refused").expect("the refusal is on the timeline");
    assert!(
        refused.starts_with(
            "proposal refused: llm:deepseek/deepseek-r1 proposed notify_only; it cited no evidence"
        ),
        "{refused}"
    );
    assert!(refused.ends_with("so the rules decided"), "{refused}");
    let listed = prompt_ids(&double.requests()[0]);
    assert_eq!(listed[0], "metric-1", "{listed:?}");
    let stored: Vec<&str> = decided.evidence.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        stored, listed,
        "the incident keeps the facts the prompt listed"
    );
    assert!(!decided.evidence_cited.is_empty());
    assert!(decided
        .evidence_cited
        .iter()
        .all(|id| stored.contains(&id.as_str())));
    assert_ne!(decided.root_cause.as_deref(), Some("the CPU is busy"));

    // One id the prompt listed and one it did not: refused, naming the stranger.
    double.script([Reply::content(answer(
        "memory is short",
        json!(["metric-1", "docker-99"]),
    ))]);
    let memory = app.trigger("memory").await;
    let decided = wait_for(&app, &memory.id, Status::Escalated).await;
    assert_eq!(decided.analyzer.as_deref(), Some("rules"));
    let listed = prompt_ids(&double.requests()[1]);
    assert!(listed.contains(&"metric-1".to_owned()));
    assert!(!listed.contains(&"docker-99".to_owned()), "{listed:?}");
    let refused = step(&decided, "proposal_refused").expect("the refusal is on the timeline");
    assert!(
        refused.contains("it cited evidence \"docker-99\" that its prompt did not list"),
        "{refused}"
    );
    let events = app.get("/api/audit", Some(&app.keys.admin)).await;
    let refusals = events.body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "ProposalRefused" && e["incident"] == memory.id.as_str())
        .count();
    assert_eq!(refusals, 1, "the refusal is audited");

    // Citing what it was given: accepted; the incident shows the model's citations.
    double.script([Reply::content(answer(
        "network latency rose with the traffic",
        json!(["metric-1"]),
    ))]);
    let latency = app.trigger("latency").await;
    let accepted = wait_for(&app, &latency.id, Status::Escalated).await;
    assert_eq!(
        accepted.analyzer.as_deref(),
        Some("llm:deepseek/deepseek-r1"),
        "{:#?}",
        accepted.timeline
    );
    assert_eq!(
        accepted.root_cause.as_deref(),
        Some("network latency rose with the traffic")
    );
    assert!(step(&accepted, "proposal_refused").is_none());
    assert_eq!(accepted.evidence_cited, ["metric-1"]);
    let json = app
        .get(
            &format!("/api/incidents/{}", latency.id),
            Some(&app.keys.viewer),
        )
        .await;
    assert_eq!(json.body["evidence_cited"], json!(["metric-1"]));
    assert_eq!(json.body["evidence"][0]["id"], "metric-1");
    assert_eq!(json.body["evidence"][0]["kind"], "metric");
    assert!(
        json.body["evidence"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("network latency of host is"),
        "{:?}",
        json.body["evidence"]
    );
    // The card shows the cited fact.
    let card = sentinel::slack::cards::render_card(&accepted, "").unwrap();
    let card = serde_json::to_string(&card.blocks).unwrap();
    assert!(
        card.contains("`metric-1` network latency of host is"),
        "{card}"
    );
    assert_eq!(double.requests().len(), 3);
}

#[tokio::test]
async fn docker_unreachable_while_reading_events_leaves_the_changes_unknown_and_says_so() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.enabled = true;
        s.analyzer.kind = sentinel::config::AnalyzerKind::Rules;
        s.monitor.docker_host = "unix:///nonexistent/sentinel-evidence/docker.sock".to_owned();
    })
    .await;
    let down = app.trigger("container").await;
    let decided = wait_for(&app, &down.id, Status::Escalated).await;
    assert!(decided.changes.is_empty(), "{:?}", decided.changes);
    let unknown = step(&decided, "changes_unknown").expect("the timeline says so");
    assert_eq!(
        unknown,
        "recent changes to sentinel-test are unknown: Docker: no socket at \
         /nonexistent/sentinel-evidence/docker.sock"
    );
    let fact = decided
        .evidence
        .iter()
        .find(|e| e.text.starts_with("Docker's events could not be read"))
        .expect("the analysis lists it");
    assert_eq!(fact.kind, sentinel::domain::EvidenceKind::Docker);
    assert!(decided.root_cause.is_some());
    assert_eq!(decided.analyzer.as_deref(), Some("rules"));
}
