//! Traces and logs of the real binary: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans of every
//! pipeline step, carrying the incident id, arrive over OTLP/HTTP as protobuf; with
//! `log_format = "json"` every log line is a JSON object.
//!
//! The receiver here stands in for Jaeger or an OpenTelemetry collector (neither is packaged
//! in Debian): it accepts `POST /v1/traces` as the OTLP/HTTP specification describes and
//! decodes the body with the OpenTelemetry protobuf definitions, so a malformed export fails.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::{json, Value};

/// One received span: its name and string attributes, and the service that sent it.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    content_types: Vec<String>,
}

async fn otlp_receiver() -> (String, Arc<Mutex<Received>>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let state = Arc::clone(&state);
            async move {
                let content_type = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                    return (StatusCode::BAD_REQUEST, Vec::new());
                };
                let mut state = state.lock().unwrap();
                state.content_types.push(content_type);
                for resource_spans in request.resource_spans {
                    let service = resource_spans
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                        .map(|v| match v {
                            AnyValue::StringValue(s) => s.clone(),
                            other => format!("{other:?}"),
                        })
                        .unwrap_or_default();
                    for scope in resource_spans.scope_spans {
                        for span in scope.spans {
                            let attributes = span
                                .attributes
                                .iter()
                                .filter_map(|kv| {
                                    let value = match kv.value.as_ref()?.value.as_ref()? {
                                        AnyValue::StringValue(s) => s.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    Some((kv.key.clone(), value))
                                })
                                .collect();
                            state.spans.push(ReceivedSpan {
                                service: service.clone(),
                                name: span.name,
                                attributes,
                            });
                        }
                    }
                }
                // An empty ExportTraceServiceResponse.
                (StatusCode::OK, Vec::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, received)
}

#[tokio::test]
async fn pipeline_spans_with_the_incident_id_are_exported_over_otlp_and_logs_are_json() {
    let (otlp, received) = otlp_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let (admin_key, sha256) = sentinel::web::auth::new_key();
    let config = dir.path().join("sentinel.toml");
    std::fs::write(
        &config,
        format!(
            "[[api_keys]]\nname = \"traces-admin\"\nrole = \"admin\"\nsha256 = \"{sha256}\"\n\
             [monitor]\nenabled = false\n[telemetry]\nlog_format = \"json\"\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("sandbox")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .arg("serve")
        .env_clear()
        .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("SENTINEL_DATA_DIR", dir.path().join("data"))
        .env("SENTINEL_SANDBOX_DIR", dir.path().join("sandbox"))
        .env("SENTINEL_CONFIG", &config)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{otlp}/"))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("the sentinel binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    while client
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map_or(true, |r| r.status() != 200)
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "sentinel did not start: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let incident: Value = client
        .post(format!("{base}/api/trigger-alert"))
        .header("x-api-key", &admin_key)
        .json(&json!({"scenario": "sandbox"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = incident["id"].as_str().expect("an incident").to_owned();
    // Analysis runs in the background; wait for its decision on the timeline.
    let started = Instant::now();
    loop {
        let current: Value = client
            .get(format!("{base}/api/incidents/{id}"))
            .header("x-api-key", &admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if current["status"] != "detected" && current["status"] != "analyzing" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{current}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // SIGTERM: a graceful stop flushes the spans not yet exported.
    let terminated = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");

    let received = received.lock().unwrap();
    assert!(!received.spans.is_empty(), "no span arrived");
    assert!(received
        .content_types
        .iter()
        .all(|t| t == "application/x-protobuf"));
    assert!(received.spans.iter().all(|s| s.service == "sentinel"));
    let names: Vec<&str> = received.spans.iter().map(|s| s.name.as_str()).collect();
    for step in ["trigger", "intake", "analyze", "gather_evidence", "request"] {
        assert!(names.contains(&step), "no {step} span in {names:?}");
    }
    let analyze = received.spans.iter().find(|s| s.name == "analyze").unwrap();
    assert_eq!(analyze.attributes.get("incident"), Some(&id), "{analyze:?}");

    // Every log line is one JSON object with a level and fields.
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    let mut lines = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"].is_object(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines > 0);
    assert!(log.contains("exporting traces over OTLP/HTTP"), "{log}");
}
