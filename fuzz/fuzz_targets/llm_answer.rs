//! The LLM's answer: a chat-completions body through `llm::parse_completion`, the step every
//! try takes after the HTTP call (content found, reasoning and fences stripped, the JSON
//! object extracted, the proposal checked against the per-signal table and the evidence).
//! The first byte chooses whether the rest is the whole response body or only the message
//! content (wrapped in a well-formed completion), so the fuzzer reaches the answer parser
//! without first having to discover the envelope. Any bytes: an error, never a panic.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sentinel::domain::{
    Detection, Incident, IncidentId, Resource, Severity, Signal, Source, Timestamp,
};
use sentinel::pipeline::analyze::facts::Catalogue;
use sentinel::pipeline::analyze::llm::parse_completion;
use sentinel::pipeline::analyze::{ChangesRead, Evidence};
use sentinel::runtime::ContainerSample;

fn container(name: &str, used: Option<u64>) -> ContainerSample {
    ContainerSample {
        name: name.into(),
        id: format!("id-{name}"),
        state: if used.is_some() { "running" } else { "exited" }.into(),
        health: None,
        restart_count: 0,
        exit_code: Some(0),
        restart_policy: "no".into(),
        labels: BTreeMap::new(),
        memory_used_bytes: used,
        memory_limit_bytes: used.map(|_| 1000),
    }
}

/// One container_memory incident on `web-1` with the evidence a real analysis gathers.
fn fixture() -> &'static (Evidence, Catalogue) {
    static FIXTURE: OnceLock<(Evidence, Catalogue)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let evidence = Evidence {
            containers: vec![container("web-1", Some(950)), container("worker", None)],
            sandbox_dirs: vec![("logs".into(), 5_000_000), ("data".into(), 10)],
            sandbox_bytes: Some(5_000_010),
            docker_available: true,
            sandbox_mounts: vec!["/".into()],
            changes: ChangesRead::NotRead,
        };
        let detection = Detection {
            signal: Signal::ContainerMemory,
            resource: Resource::parse("web-1").unwrap(),
            severity: Severity::Critical,
            value: 95.0,
            threshold: 90.0,
            source: Source::Docker,
            summary: "web-1 at 95 % of its memory limit".into(),
            labels: BTreeMap::new(),
        };
        let incident = Incident::open(
            IncidentId::generate(),
            &detection,
            Timestamp::from_unix_millis(0),
        );
        let catalogue = Catalogue::build(&incident, &evidence);
        (evidence, catalogue)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (evidence, catalogue) = fixture();
    if mode & 1 == 0 {
        let _ = parse_completion(rest, evidence, catalogue, "llm:fuzz");
    } else {
        let content = String::from_utf8_lossy(rest);
        let body = serde_json::json!({"choices": [{"message": {"content": content}}]}).to_string();
        let _ = parse_completion(body.as_bytes(), evidence, catalogue, "llm:fuzz");
    }
});
