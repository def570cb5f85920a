//! The status page, the live stream and `/metrics`, over HTTP against the real app.

use std::time::{Duration, Instant};

use sentinel::domain::{ActionId, Incident, IncidentId, Risk, Status, TimelineEntry, Timestamp};
use sentinel::store::Control;

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};

async fn page(app: &TestApp) -> (reqwest::header::HeaderMap, String) {
    let response = app
        .client
        .get(format!("{}/", app.base))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    (headers, response.text().await.unwrap())
}

/// Text between `<article … id="incident-ID"` and its `</article>`.
fn article<'a>(html: &'a str, id: &IncidentId) -> &'a str {
    let start = html
        .find(&format!("id=\"incident-{id}\""))
        .unwrap_or_else(|| panic!("incident {id} is not on the page"));
    let end = start + html[start..].find("</article>").expect("a closed article");
    &html[start..end]
}

#[tokio::test]
async fn the_page_shows_tiles_with_trends_incidents_and_banners() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.mode = sentinel::config::Mode::DryRun;
    })
    .await;
    let (_, html) = page(&app).await;
    assert!(
        html.contains("class=\"tile state-pending\" data-signal=\"host_cpu\""),
        "before any cycle, every signal is a pending tile"
    );
    assert!(html.contains("<strong>Dry-run</strong> mode"));
    assert!(!html.contains("banner-paused"));

    app.tick_monitor().await;
    app.tick_monitor().await;
    let incident = app.trigger("disk").await;
    app.store
        .set_control(&Control {
            paused: true,
            changed_by: Some("test".to_owned()),
            changed_at: Some(Timestamp::now()),
        })
        .await
        .unwrap();

    let (headers, html) = page(&app).await;
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert_eq!(headers["x-content-type-options"], "nosniff");

    // A tile per reading, with its value, threshold and a trend of the two cycles.
    let tile_start = html
        .find("data-signal=\"host_cpu\"")
        .expect("a host_cpu tile");
    let tile = &html[tile_start..tile_start + html[tile_start..].find("</li>").unwrap()];
    assert!(tile.contains("/ 80 %"), "the threshold: {tile}");
    assert!(tile.contains(" min, 2 samples\""), "{tile}");
    let points = tile
        .split("points=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a polyline");
    assert_eq!(points.split(' ').count(), 2, "{points}");
    for point in points.split(' ') {
        let (x, y) = point.split_once(',').unwrap();
        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!(
            (0.0..=120.0).contains(&x) && (0.0..=32.0).contains(&y),
            "{point}"
        );
    }
    assert!(
        tile.contains("<span class=\"state\">ok</span>")
            || tile.contains("<span class=\"state\">breached</span>"),
        "{tile}"
    );

    // The incident, with its status and timeline; both banners.
    let card = article(&html, &incident.id);
    assert!(
        card.contains("test alert: disk on &#x2f; at 100%"),
        "{card}"
    );
    assert!(card.contains("<dd class=\"status\">"), "{card}");
    assert!(card.contains("<ol class=\"timeline\">"), "{card}");
    assert!(html.contains("Automation is <strong>paused</strong>"));
    assert!(html.contains("<strong>Dry-run</strong> mode"));
    // The monitor saw the real host and Docker, so there may be more than ours.
    let open: usize = html
        .split("Open incidents <span class=\"count\">")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .and_then(|count| count.parse().ok())
        .expect("a count of open incidents");
    assert!(open >= 1);
    app.stop().await;
}

/// The page's text with its tags cut out: what a person reads.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

/// People read words (SPEC §12.2): a status as words, every time relative ("12 s ago") with
/// the exact time on hover and in `datetime`; the JSON API keeps the machine names.
#[tokio::test]
async fn times_read_relative_with_the_exact_time_on_hover_and_statuses_as_words() {
    let app = spawn_app().await;
    let incident = app.trigger("container").await;
    let incident = app.await_approval(&incident.id, Risk::Medium).await;
    let (_, html) = page(&app).await;
    let card = article(&html, &incident.id);
    assert!(
        card.contains(r#"<dd class="status">awaiting approval</dd>"#),
        "{card}"
    );
    assert!(
        card.contains(r#"data-status="awaiting_approval""#),
        "{card}"
    );

    let exact = sentinel::service::postmortem::at_words(incident.opened_at);
    let opened = format!(
        r#"<time datetime="{}" title="{exact}" data-relative>"#,
        incident.opened_at
    );
    let at = card
        .find(&opened)
        .unwrap_or_else(|| panic!("{opened} in {card}"));
    let shown = &card[at + opened.len()..];
    let shown = &shown[..shown.find("</time>").unwrap()];
    assert!(
        shown == "just now" || shown.ends_with(" s ago"),
        "opened moments ago reads {shown:?}"
    );
    // Every timeline entry carries its time the same way.
    let entries = card
        .matches("<li><span class=\"at\"><time datetime=")
        .count();
    assert_eq!(entries, incident.timeline.len(), "{card}");

    // No raw ISO timestamp and no snake_case status is left in what a person reads.
    let text = visible_text(&html);
    let iso = text.split_whitespace().find(|word| {
        word.len() >= 19 && word.as_bytes()[10] == b'T' && word[..4].parse::<u16>().is_ok()
    });
    assert_eq!(iso, None, "a raw timestamp in the page's text");
    for status in Status::ALL {
        let name = status.as_str();
        if name.contains('_') {
            assert!(!text.contains(name), "{name} in the page's text");
        }
    }

    let json = app
        .get(
            &format!("/api/incidents/{}", incident.id),
            Some(&app.keys.viewer),
        )
        .await;
    assert_eq!(
        json.body["status"], "awaiting_approval",
        "the API keeps machine names"
    );
    app.stop().await;
}

#[tokio::test]
async fn resolved_incidents_and_the_fix_history_with_success_rates_are_shown() {
    let app = spawn_app().await;
    // Three restarts: one fixed, one rolled back, one still verifying; one cleanup fixed.
    let mut ids = Vec::new();
    for (scenario, action, outcome) in [
        ("container", ActionId::ContainerRestart, Status::Resolved),
        ("memory", ActionId::ContainerRestart, Status::RolledBack),
        ("latency", ActionId::ContainerRestart, Status::Verifying),
        ("sandbox", ActionId::SandboxCleanup, Status::Resolved),
    ] {
        ids.push(app.record_fix(scenario, action, outcome).await.id);
    }
    let (_, html) = page(&app).await;
    let table = &html[html
        .find("<table class=\"fixes\">")
        .expect("the fixes table")..];
    let table = &table[..table.find("</table>").unwrap()];
    // container_restart: 3 runs, 1 fixed, 1 rolled back, 0 failed, 1 in progress: 50 %.
    assert!(
        table.contains(
            "<td><code>container_restart</code></td><td>3</td><td>1</td><td>1</td><td>0</td><td>1</td><td>50 %</td>"
        ),
        "{table}"
    );
    assert!(
        table.contains(
            "<td><code>sandbox_cleanup</code></td><td>1</td><td>1</td><td>0</td><td>0</td><td>0</td><td>100 %</td>"
        ),
        "{table}"
    );
    let resolved = &html[html.find("Recently resolved").unwrap()..];
    assert!(resolved.contains(&format!("incident-{}", ids[0])));
    assert!(resolved.contains(&format!("incident-{}", ids[3])));
    assert!(
        !resolved.contains(&format!("incident-{}", ids[2])),
        "still open"
    );
    app.stop().await;
}

const HOSTILE: [&str; 4] = [
    "<script>alert('xss')</script>",
    "<img src=x onerror=alert(1)>",
    "\"><svg onload=alert(2)>",
    "</textarea><iframe src=javascript:alert(3)>",
];

#[tokio::test]
async fn attacker_reachable_text_is_escaped_everywhere_on_the_page() {
    const TOKEN: &str = "page-test-alert-token";
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.alertmanager.bearer_token = TOKEN.to_owned().into();
    })
    .await;
    let incident = app.trigger("container").await;
    let mut incident: Incident = app.await_approval(&incident.id, Risk::Medium).await;
    let hostile = HOSTILE.join(" ");
    incident.summary = hostile.clone();
    incident.root_cause = Some(hostile.clone());
    incident.analyzer = Some(hostile.clone());
    incident.approvals = vec![hostile.clone()];
    incident.proposed_action.as_mut().unwrap().params =
        [("container".to_owned(), serde_json::json!(hostile))].into();
    incident.timeline.push(TimelineEntry {
        at: Timestamp::now(),
        step: hostile.clone(),
        actor: hostile.clone(),
        message: hostile.clone(),
    });
    app.store.update_incident(&incident).await.unwrap();
    // And through the alert webhook, the way an attacker would reach it.
    let app_alert = app
        .client
        .post(format!("{}/api/alerts", app.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .json(&serde_json::json!({
            "name": "HostileAlert", "resource": "web-1", "severity": "critical",
            "summary": hostile,
        }))
        .send()
        .await
        .unwrap();
    assert!(app_alert.status().is_success());

    let (_, html) = page(&app).await;
    for text in HOSTILE {
        assert!(!html.contains(text), "{text} reached the page unescaped");
    }
    // Escaped text may read "onerror=", but no element may be opened by it.
    for tag in ["<img", "<svg onload", "<iframe", "<textarea", "\"><svg"] {
        assert!(!html.contains(tag), "{tag} on the page");
    }
    // The only script is the page's own, from this origin.
    assert_eq!(html.matches("<script").count(), 1, "{html}");
    assert!(html.contains("<script src=\"/assets/sentinel.js\" defer></script>"));
    assert!(html.contains("&lt;script&gt;alert(&#x27;xss&#x27;)&lt;&#x2f;script&gt;"));
    let card = article(&html, &incident.id);
    assert!(
        card.matches("&lt;img src=x onerror=alert(1)&gt;").count() >= 6,
        "{card}"
    );
    app.stop().await;
}

const NOT_GET: [&str; 5] = ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

#[tokio::test]
async fn every_method_but_get_and_head_is_refused_on_the_page_and_stream_and_changes_nothing() {
    let app = spawn_app().await;
    let incident = app.trigger("memory").await;
    let before = app.get("/api/incidents", Some(&app.keys.admin)).await;
    let audit_before = app.get("/api/audit", Some(&app.keys.admin)).await;
    for path in [
        "/",
        "/api/stream",
        "/assets/sentinel.js",
        "/assets/sentinel.css",
        "/metrics",
    ] {
        for method in NOT_GET {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            // With an admin key and a body, to be sure nothing is accepted for any caller.
            let response = app
                .client
                .request(method.clone(), format!("{}{path}", app.base))
                .header("x-api-key", &app.keys.admin)
                .header("content-type", "application/json")
                .body(format!(r#"{{"id":"{}"}}"#, incident.id))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 405, "{method} {path}");
        }
        if path != "/api/stream" {
            let head = app
                .client
                .head(format!("{}{path}", app.base))
                .send()
                .await
                .unwrap();
            assert_eq!(head.status(), 200, "HEAD {path}");
            assert!(head.text().await.unwrap().is_empty());
        }
    }
    let after = app.get("/api/incidents", Some(&app.keys.admin)).await;
    assert_eq!(before.body, after.body);
    let audit_after = app.get("/api/audit", Some(&app.keys.admin)).await;
    assert_eq!(audit_before.body, audit_after.body);
    app.stop().await;
}

/// Server-sent events read off a streaming response.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

#[derive(Debug, Default, Clone)]
struct SseEvent {
    id: Option<u64>,
    kind: String,
    data: String,
    comment: Option<String>,
}

impl EventReader {
    async fn open(app: &TestApp) -> Self {
        let response = app
            .client
            .get(format!("{}/api/stream", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next event or comment block; `None` when the stream ended.
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        event.comment = Some(comment.trim().to_owned());
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "id" => event.id = Some(value.parse().expect("numeric ids")),
                            "event" => event.kind = value.to_owned(),
                            "data" => event.data.push_str(value),
                            _ => {}
                        }
                    }
                }
                return Some(event);
            }
            let chunk = self.response.chunk().await.expect("the stream reads")?;
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    async fn next_within(&mut self, limit: Duration) -> SseEvent {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("an event in time")
            .expect("the stream is open")
    }
}

#[tokio::test]
async fn the_stream_sends_incident_and_status_events_with_ids_and_keep_alives() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.http.sse_keep_alive = sentinel::config::HumanDuration(Duration::from_millis(300));
    })
    .await;
    let mut stream = EventReader::open(&app).await;
    let hello = stream.next_within(Duration::from_secs(5)).await;
    assert_eq!(hello.kind, "hello");
    let hello_data: serde_json::Value = serde_json::from_str(&hello.data).unwrap();
    assert_eq!(hello_data["mode"], "auto");

    let incident = app.trigger("cpu").await;
    let mut last_id = hello.id.expect("an id");
    let event = loop {
        let event = stream.next_within(Duration::from_secs(5)).await;
        if event.comment.is_some() {
            continue;
        }
        let id = event.id.expect("every event has an id");
        assert!(id > last_id, "ids increase: {id} after {last_id}");
        last_id = id;
        if event.kind == "incident" {
            break event;
        }
    };
    let data: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(data["id"], incident.id.as_str());
    assert_eq!(data["signal"], "host_cpu");

    app.tick_monitor().await;
    let status = loop {
        let event = stream.next_within(Duration::from_secs(5)).await;
        if event.kind == "status" {
            break event;
        }
    };
    let data: serde_json::Value = serde_json::from_str(&status.data).unwrap();
    assert!(data["signals"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["signal"] == "host_cpu"));

    // Idle: keep-alive comments arrive.
    let started = Instant::now();
    let keep_alive = loop {
        let event = stream.next_within(Duration::from_secs(3)).await;
        if event.comment.is_some() {
            break event;
        }
    };
    assert_eq!(keep_alive.comment.as_deref(), Some("keep-alive"));
    assert!(started.elapsed() < Duration::from_secs(2));
    app.stop().await;
}

#[tokio::test]
async fn open_streams_end_at_shutdown_instead_of_holding_it_up() {
    let app = spawn_app_with(Backend::Redis, |_| {}).await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = EventReader::open(&app).await;
        stream.next_within(Duration::from_secs(5)).await;
        streams.push(stream);
    }
    let metrics = app.get_text("/metrics").await;
    let clients = metric_value(&metrics, "sentinel_sse_clients");
    assert!(clients >= 5.0, "{clients}");
    tokio::time::timeout(Duration::from_secs(10), app.stop())
        .await
        .expect("shutdown is not held up by open streams");
    for mut stream in streams {
        // Whatever was in flight, then the end.
        while let Some(event) = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("the stream ends")
        {
            assert!(event.kind != "hello", "{event:?}");
        }
    }
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{series} is not in /metrics"))
}

/// The metrics the issue asks for, by family name.
const FAMILIES: [&str; 13] = [
    "sentinel_incidents_total",
    "sentinel_actions_total",
    "sentinel_approval_wait_seconds",
    "sentinel_slack_requests_total",
    "sentinel_slack_api_calls_total",
    "sentinel_monitor_cycle_seconds",
    "sentinel_collector_errors_total",
    "sentinel_llm_calls_total",
    "sentinel_llm_call_seconds",
    "sentinel_circuit_breaker_open",
    "sentinel_incidents_open",
    "sentinel_sse_clients",
    "sentinel_build_info",
];

#[tokio::test]
async fn metrics_pass_promtool_and_count_what_happened() {
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.actions.auto_budget_per_hour = 1;
    })
    .await;
    // Spend the budget of one action and target, so its breaker opens.
    app.store
        .record_auto_action("container_restart:web-1", Timestamp::now())
        .await
        .unwrap();
    let before = app.get_text("/metrics").await;
    let opened_series =
        r#"sentinel_incidents_total{outcome="opened",severity="critical",signal="host_memory"}"#;
    let opened_before = metric_value(&before, opened_series);
    let incident = app.trigger("memory").await;
    assert_eq!(incident.severity.as_str(), "critical");
    app.tick_monitor().await;
    let text = app.get_text("/metrics").await;

    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing from /metrics"
        );
    }
    // Counted: the incident (other tests share the process, so at least one more).
    assert!(metric_value(&text, opened_series) >= opened_before + 1.0);
    // The open incident, the breaker, a monitor cycle.
    assert!(metric_value(&text, r#"sentinel_incidents_open{severity="critical"}"#) >= 1.0);
    assert_eq!(
        metric_value(
            &text,
            r#"sentinel_circuit_breaker_open{action="container_restart",target="web-1"}"#
        ),
        1.0
    );
    assert!(metric_value(&text, "sentinel_monitor_cycle_seconds_count") >= 1.0);
    app.stop().await;
}

#[tokio::test]
async fn no_secret_appears_on_the_page_the_stream_or_metrics() {
    const SECRETS: [&str; 4] = [
        "xoxb-secret-bot-token-0451",
        "signing-secret-0452",
        "sk-llm-secret-0453",
        "alert-token-secret-0454",
    ];
    let app = spawn_app_with(Backend::Embedded, |s| {
        s.secrets.slack_bot_token = Some(SECRETS[0].to_owned().into());
        s.secrets.slack_signing_secret = Some(SECRETS[1].to_owned().into());
        s.secrets.llm_api_key = Some(SECRETS[2].to_owned().into());
        s.alertmanager.bearer_token = SECRETS[3].to_owned().into();
        s.slack.api_url = "http://127.0.0.1:9/api/".to_owned();
    })
    .await;
    app.trigger("disk").await;
    app.tick_monitor().await;
    let (_, html) = page(&app).await;
    let metrics = app.get_text("/metrics").await;
    let mut stream = EventReader::open(&app).await;
    let hello = stream.next_within(Duration::from_secs(5)).await;
    for secret in SECRETS {
        let fragment = &secret[secret.len() - 12..];
        for (what, text) in [
            ("page", &html),
            ("metrics", &metrics),
            ("stream", &hello.data),
        ] {
            assert!(!text.contains(fragment), "{what} shows a secret");
        }
    }
    app.stop().await;
}
