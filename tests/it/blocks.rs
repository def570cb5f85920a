//! The Block Kit templates in `blocks/`: every template rendered with fixtures, hostile ones
//! included, is valid Block Kit within Slack's limits, escapes what incidents carry, and
//! matches its checked-in snapshot (`tests/it/snapshots/blocks__<name>.json`).
//!
//! A layout change shows up as a snapshot diff. To accept it, run
//! `UPDATE_SNAPSHOTS=1 cargo test --test it blocks::` and review the changed files.

use std::path::PathBuf;

use sentinel::domain::{ActionId, Status};
use sentinel::slack::blocks::{self, limits, BlocksError, ExecutionState, SampleIncident};
use serde_json::{json, Value};

const HOSTILE: &str = "<!channel> <https://evil.example|click> & <@U123> <#C1|general>";

fn long(n: usize) -> String {
    "x<&>".repeat(n / 4 + 1).chars().take(n).collect()
}

/// An incident awaiting approval, as the JSON the store and the API use.
fn incident() -> Value {
    blocks::sample_context("incident_detail")["incident"].clone()
}

/// The same incident with every text an attacker can reach made hostile and huge.
fn hostile_incident() -> Value {
    let mut i = incident();
    let huge = format!("{HOSTILE} {}", long(5000));
    i["resource"] = json!(format!("{HOSTILE}{}", long(300)));
    i["fingerprint"] = json!(format!("container_memory:{HOSTILE}"));
    i["summary"] = json!(huge);
    i["root_cause"] = json!(huge);
    i["analyzer"] = json!(huge);
    i["labels"] = json!({ HOSTILE: huge });
    i["approvals"] = json!([huge, HOSTILE]);
    i["proposed_action"] = json!({"action": "container_memory_limit",
                                  "params": {"container": huge, HOSTILE: huge, "memory_mb": 768}});
    i["snapshot"] = json!({"container": HOSTILE, HOSTILE: 1, "memory_mb": 512});
    let entry =
        json!({"at": "2026-11-28T10:00:00.000Z", "step": HOSTILE, "actor": huge, "message": huge});
    i["timeline"] = Value::Array(vec![entry; 400]);
    i
}

/// An incident whose reversible fix (a raised memory limit) ran and was verified, with the
/// records `pipeline::execute` really writes.
fn executed_incident() -> Value {
    let mut i = incident();
    let proposed: sentinel::domain::ProposedAction =
        serde_json::from_value(i["proposed_action"].clone()).unwrap();
    let (before, after) = blocks::sample_records(&proposed.plan().unwrap(), "inc-01jdx3sample");
    i["status"] = json!("resolved");
    i["resolved_at"] = json!("2026-11-28T10:05:00.000Z");
    i["approvals"] = json!(["slack:U123 (operator)"]);
    i["execution"] = json!({
        "action": i["proposed_action"].clone(),
        "approved_by": "slack:U123 (operator)",
        "started_at": "2026-11-28T10:01:00.000Z", "finished_at": "2026-11-28T10:01:02.000Z",
        "before": before,
        "after": after,
        "reversible": true, "rolled_back_at": null
    });
    i
}

/// The sweep's incident for one action, status and execution state.
fn sample(action: Option<ActionId>, status: Status, execution: ExecutionState) -> SampleIncident {
    blocks::sample_incidents()
        .into_iter()
        .find(|s| s.action == action && s.status == status && s.execution == execution)
        .unwrap_or_else(|| panic!("no sample {action:?} {status} {execution:?}"))
}

/// The text of the card's fix section (`*Proposed fix*`, `*Fix applied*`, …).
fn fix_section(rendered: &blocks::Rendered) -> String {
    rendered
        .blocks
        .iter()
        .filter_map(|b| b["text"]["text"].as_str())
        .find(|t| t.starts_with("*Proposed fix*") || t.starts_with("*Fix "))
        .unwrap_or_default()
        .to_owned()
}

/// The card's context line (id, opened, approved by, rolled back, resolved): the context
/// block that starts with the incident's id (the evidence is a context block too).
fn context_line(rendered: &blocks::Rendered) -> String {
    rendered
        .blocks
        .iter()
        .filter(|b| b["type"] == "context")
        .filter_map(|b| b["elements"][0]["text"].as_str())
        .find(|text| text.starts_with("inc-"))
        .unwrap_or_default()
        .to_owned()
}

fn reply(incident: &Value, entry: Value) -> blocks::Rendered {
    blocks::render(
        "timeline_reply",
        &json!({ "incident": incident, "entry": entry }),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Every string anywhere in `value`, with its path.
fn strings<'a>(value: &'a Value, path: String, out: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => out.push((path, s)),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings(item, format!("{path}[{i}]"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                strings(item, format!("{path}.{key}"), out);
            }
        }
        _ => {}
    }
}

/// No text in the output can mention anyone or make a link.
fn assert_no_slack_control_sequences(rendered: &blocks::Rendered) {
    let mut found = vec![("text".to_owned(), rendered.text.as_str())];
    let all = Value::Array(rendered.blocks.clone());
    strings(&all, "blocks".to_owned(), &mut found);
    for (path, text) in found {
        if path.ends_with(".url") {
            continue;
        }
        // A user mention is the one markup written on purpose.
        let text = blocks::without_mentions(text);
        assert!(
            !text.contains('<') && !text.contains('>'),
            "{path} carries a raw < or >: {text:.200}"
        );
    }
}

fn buttons(rendered: &blocks::Rendered) -> Vec<Value> {
    rendered
        .blocks
        .iter()
        .filter(|b| b["type"] == "actions")
        .flat_map(|b| b["elements"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn action_ids(rendered: &blocks::Rendered) -> Vec<String> {
    buttons(rendered)
        .iter()
        .map(|b| b["action_id"].as_str().unwrap().to_owned())
        .collect()
}

fn card(incident: Value, public_url: &str) -> blocks::Rendered {
    blocks::render(
        "incident_card",
        &json!({ "incident": incident, "public_url": public_url }),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_scheduled_fix_says_what_runs_where_and_when_with_stop_and_run_now() {
    let expected = [
        (
            ActionId::SandboxCleanup,
            "Cleaning logs/, tmp/ and cache/ in the sandbox in 60 s, at 10:06:00 UTC (frees about \
             80 MB or more; about 40 MB or more stays restorable).",
        ),
        (
            ActionId::ContainerStart,
            "Starting container `web-1` in 60 s, at 10:06:00 UTC (state: exited → running).",
        ),
    ];
    for (action, sentence) in expected {
        let mut incident = sample(Some(action), Status::Scheduled, ExecutionState::None).incident;
        incident["proposal_id"] = json!("prop-0123456789abcdef");
        let rendered = card(incident.clone(), "");
        let section = rendered
            .blocks
            .iter()
            .find(|b| b["block_id"] == "veto_window")
            .unwrap_or_else(|| panic!("{action}: no veto window section"));
        let text = section["text"]["text"].as_str().unwrap();
        assert!(text.contains(sentence), "{action}: {text}");
        let buttons: Vec<(&str, &str)> = rendered
            .blocks
            .iter()
            .filter(|b| b["type"] == "actions")
            .flat_map(|b| b["elements"].as_array().unwrap())
            .map(|e| {
                (
                    e["action_id"].as_str().unwrap(),
                    e["value"].as_str().unwrap_or(""),
                )
            })
            .collect();
        let reference = json!({"incident": incident["id"], "proposal": incident["proposal_id"]});
        for wanted in ["stop", "run_now"] {
            let (_, value) = buttons
                .iter()
                .find(|(id, _)| *id == wanted)
                .unwrap_or_else(|| panic!("{action}: no {wanted} button in {buttons:?}"));
            let value: Value = serde_json::from_str(value).unwrap();
            assert_eq!(
                value, reference,
                "{action}: {wanted} carries incident and proposal"
            );
        }
        assert!(
            !buttons
                .iter()
                .any(|(id, _)| *id == "approve" || *id == "reject"),
            "{action}: a scheduled fix is stopped, not rejected: {buttons:?}"
        );
    }
    // At any other status there is neither section nor Stop.
    let waiting = card(
        sample(
            Some(ActionId::SandboxCleanup),
            Status::AwaitingApproval,
            ExecutionState::None,
        )
        .incident,
        "",
    );
    let json = serde_json::to_string(&waiting.blocks).unwrap();
    assert!(
        !json.contains("veto_window") && !json.contains("\"stop\""),
        "{json}"
    );
}

// ---------------------------------------------------------------------------------------------

#[test]
fn every_template_renders_its_sample_within_limits() {
    assert_eq!(blocks::template_names().len(), 8);
    for name in blocks::template_names() {
        let rendered = blocks::render(name, &blocks::sample_context(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!rendered.text.is_empty(), "{name}: a fallback text");
        assert!(!rendered.blocks.is_empty(), "{name}: blocks");
        assert!(rendered.blocks.len() <= limits::MESSAGE_BLOCKS, "{name}");
        assert_no_slack_control_sequences(&rendered);
    }
}

#[test]
fn hostile_and_huge_values_are_escaped_and_cut_to_fit() {
    let i = hostile_incident();
    let status_signals: Vec<Value> = (0..200)
        .map(|n| {
            json!({"signal": "container_memory", "resource": format!("{HOSTILE}-{n}"),
                        "value": 99.5, "threshold": 60.0, "state": "breached", "source": HOSTILE})
        })
        .collect();
    let many: Vec<Value> = (0..120).map(|_| i.clone()).collect();
    let mut executed = executed_incident();
    executed["execution"]["before"] = json!({"memory_mb": HOSTILE, HOSTILE: long(5000)});
    executed["execution"]["after"] = json!({"memory_mb": long(5000), HOSTILE: 2});
    executed["execution"]["approved_by"] = json!(HOSTILE);
    let contexts = [
        (
            "incident_card",
            json!({"incident": i, "public_url": "https://sentinel.example.com/",
                                 "dry_run_preview": long(5000)}),
        ),
        (
            "incident_card",
            json!({"incident": executed, "public_url": ""}),
        ),
        ("incident_detail", json!({"incident": i})),
        (
            "timeline_reply",
            json!({"incident": i, "entry": i["timeline"][0].clone()}),
        ),
        ("reject_modal", json!({"incident": i})),
        ("incidents", json!({"incidents": many})),
        (
            "status",
            json!({"mode": HOSTILE, "paused": true, "signals": status_signals,
                          "incidents": many, "public_url": "https://sentinel.example.com"}),
        ),
        (
            "help",
            json!({"commands": (0..80).map(|_| json!({"usage": long(5000), "who": HOSTILE,
                                                                "what": long(5000)})).collect::<Vec<_>>()}),
        ),
    ];
    for (name, context) in contexts {
        let rendered = blocks::render(name, &context).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_no_slack_control_sequences(&rendered);
        let all = serde_json::to_string(&rendered.blocks).unwrap() + &rendered.text;
        assert!(
            all.contains("&lt;!channel&gt;") || name == "help",
            "{name}: the hostile name shows, escaped"
        );
        assert!(rendered.text.chars().count() <= limits::FALLBACK_TEXT);
        if name != "reject_modal" {
            assert!(
                rendered.blocks.len() <= limits::MESSAGE_BLOCKS,
                "{name}: {} blocks",
                rendered.blocks.len()
            );
        }
    }
}

#[test]
fn truncation_marks_the_cut_and_keeps_entities_whole() {
    let mut i = incident();
    i["root_cause"] = json!("&".repeat(5000));
    let rendered = card(i, "");
    let root = rendered
        .blocks
        .iter()
        .find_map(|b| {
            b["text"]["text"]
                .as_str()
                .filter(|t| t.starts_with("*Root cause*"))
        })
        .expect("a root cause section");
    assert!(root.chars().count() <= limits::TEXT);
    assert!(root.ends_with("&amp;…"), "{}", &root[root.len() - 20..]);
}

#[test]
fn the_card_offers_approve_and_reject_only_while_awaiting_approval() {
    let awaiting = card(incident(), "https://sentinel.example.com");
    assert_eq!(
        action_ids(&awaiting),
        ["approve", "reject", "silence", "status_page"]
    );
    let approve = &buttons(&awaiting)[0];
    assert_eq!(approve["style"], "primary");
    assert!(
        buttons(&awaiting)[1].get("style").is_none(),
        "reject has no style"
    );
    // Button values name the incident and version only, never action parameters.
    for button in buttons(&awaiting)
        .iter()
        .filter(|b| b.get("value").is_some())
    {
        let value: Value = serde_json::from_str(button["value"].as_str().unwrap()).unwrap();
        assert_eq!(value, json!({"incident": "inc-01jdx3sample", "version": 4}));
    }
    assert_eq!(
        buttons(&awaiting)[3]["url"],
        "https://sentinel.example.com/#inc-01jdx3sample"
    );
    assert!(
        awaiting.text.contains("approval needed"),
        "{}",
        awaiting.text
    );

    let mut analyzing = incident();
    analyzing["status"] = json!("analyzing");
    assert_eq!(action_ids(&card(analyzing, "")), ["silence"]);
}

#[test]
fn the_card_offers_rollback_with_a_confirmation_after_a_reversible_fix() {
    let rendered = card(executed_incident(), "");
    assert_eq!(action_ids(&rendered), ["rollback"]);
    let rollback = &buttons(&rendered)[0];
    assert_eq!(rollback["style"], "danger");
    assert_eq!(rollback["confirm"]["confirm"]["text"], "Roll back");
    let all = serde_json::to_string(&rendered.blocks).unwrap();
    assert!(
        all.contains("memory limit: 512 MB → 768 MB"),
        "before → after: {all}"
    );
    assert!(all.contains("approved by <@U123> (operator)"), "{all}");

    // Rolled back, or not reversible: no Rollback.
    let mut rolled = executed_incident();
    rolled["execution"]["rolled_back_at"] = json!("2026-11-28T10:09:00.000Z");
    assert!(action_ids(&card(rolled, "")).is_empty());
    let mut permanent = executed_incident();
    permanent["execution"]["reversible"] = json!(false);
    assert!(action_ids(&card(permanent, "")).is_empty());
    // No actions at all: no actions block.
    let rendered = card(executed_incident_without_rollback(), "");
    assert!(rendered.blocks.iter().all(|b| b["type"] != "actions"));
}

fn executed_incident_without_rollback() -> Value {
    let mut i = executed_incident();
    i["execution"]["reversible"] = json!(false);
    i
}

#[test]
fn the_reject_modal_is_a_view_with_one_reason_input() {
    let rendered = blocks::render("reject_modal", &json!({ "incident": incident() })).unwrap();
    assert!(blocks::is_modal("reject_modal"));
    assert_eq!(rendered.blocks.len(), 1, "the view is the one element");
    let view = &rendered.blocks[0];
    assert_eq!(view["type"], "modal");
    assert_eq!(view["callback_id"], "reject_reason");
    assert_eq!(view["private_metadata"], "inc-01jdx3sample");
    let inputs: Vec<&Value> = view["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["type"] == "input")
        .collect();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0]["block_id"], "reason");
    assert_eq!(inputs[0]["element"]["type"], "plain_text_input");
    assert_eq!(inputs[0]["element"]["action_id"], "reason");
}

#[test]
fn lists_stay_within_fifty_blocks_and_say_what_they_left_out() {
    let many: Vec<Value> = (0..100).map(|_| incident()).collect();
    let rendered = blocks::render("incidents", &json!({ "incidents": many })).unwrap();
    assert!(rendered.blocks.len() <= 50);
    let all = serde_json::to_string(&rendered.blocks).unwrap();
    assert!(all.contains("and 55 more"), "{all:.300}");
    let empty = blocks::render("incidents", &json!({ "incidents": [] })).unwrap();
    assert!(serde_json::to_string(&empty.blocks)
        .unwrap()
        .contains("No open incidents"));
}

#[test]
fn unknown_templates_and_missing_values_are_errors_not_panics() {
    assert!(matches!(
        blocks::render("nope", &json!({})),
        Err(BlocksError::UnknownTemplate(_))
    ));
    assert!(blocks::sample_context("nope").is_null());
    // A card without an incident renders nothing valid: an error, never a broken message.
    assert!(blocks::render("incident_card", &json!({})).is_err());
}

// ---------------------------------------------------------------------------------------------
// Cards for every action and outcome, with the records the executor writes

/// What the card says after each action ran, in words: sizes in MB, names, counts.
#[test]
fn an_executed_fix_reads_as_before_and_after_for_people() {
    let expected: [(ActionId, &[&str]); 5] = [
        (
            ActionId::SandboxCleanup,
            &[
                "• logs, tmp, cache: 3 files (120 MB) → 3 files (120 MB) removed",
                "• files: logs/app.log, logs/app.log.1, tmp/upload.bin",
                "• restorable: 2 files (70 MB), compressed to 12 MB in the quarantine",
                "• deleted for good: 1 file (50 MB): they did not fit in the quarantine",
                "• freed: 108 MB",
                "• quarantine: /srv/sentinel/sandbox/.sentinel-quarantine/inc-sample",
            ],
        ),
        (
            ActionId::ContainerStart,
            &[
                "• state: exited → running",
                "• started: 2026-11-28 08:00 UTC → 2026-11-28 10:01 UTC",
            ],
        ),
        (
            ActionId::ContainerRestart,
            &["• started: 2026-11-28 08:00 UTC → 2026-11-28 10:01 UTC"],
        ),
        (
            ActionId::ContainerMemoryLimit,
            &[
                "• memory limit: 512 MB → 768 MB",
                "• memory + swap limit: 1024 MB → 1280 MB",
            ],
        ),
        (ActionId::NotifyOnly, &[]),
    ];
    for (action, lines) in expected {
        let s = sample(Some(action), Status::Resolved, ExecutionState::Executed);
        let rendered = card(s.incident.clone(), "");
        let section = fix_section(&rendered);
        assert!(section.starts_with("*Fix applied*\n`"), "{section}");
        if lines.is_empty() {
            assert!(!section.contains("Before → after"), "{section}");
        } else {
            let shown: Vec<&str> = section
                .split_once("*Before → after*\n")
                .unwrap_or_else(|| panic!("{action}: {section}"))
                .1
                .lines()
                .collect();
            assert_eq!(shown, lines, "{action}");
        }
        // Not raw JSON: no braces, brackets or quotes from the records.
        assert!(!section.contains(['{', '[', '"']), "{section}");
        assert_no_slack_control_sequences(&rendered);
    }
    // The parameters read as words too.
    let s = sample(
        Some(ActionId::SandboxCleanup),
        Status::AwaitingApproval,
        ExecutionState::None,
    );
    let section = fix_section(&card(s.incident, ""));
    assert!(
        section.starts_with("*Proposed fix*\n`sandbox_cleanup` dirs=logs, tmp, cache\n"),
        "{section}"
    );
    assert!(
        section.contains(
            "*What it would change*\n• logs, tmp, cache: 3 files (120 MB) → removed\n\
            • frees about 80 MB or more; about 40 MB or more stays restorable (more if the \
            files compress), newest files first, in the quarantine (at most 50 MB); up to about \
            80 MB is deleted for good"
        ),
        "{section}"
    );
}

/// Every action through every outcome: the card renders, passes the Block Kit checks, and
/// says what happened.
#[test]
fn cards_for_every_action_and_outcome_render_and_say_what_happened() {
    let outcomes = [
        (
            "executed",
            Status::Verifying,
            ExecutionState::Executed,
            "*Fix applied*",
        ),
        (
            "verified",
            Status::Resolved,
            ExecutionState::Executed,
            "*Fix applied*",
        ),
        (
            "rolled back",
            Status::RolledBack,
            ExecutionState::RolledBack,
            "*Fix rolled back*",
        ),
        (
            "failed",
            Status::Failed,
            ExecutionState::Failed,
            "*Fix failed*",
        ),
        (
            "interrupted",
            Status::Executing,
            ExecutionState::Unfinished,
            "*Fix running*",
        ),
        (
            "escalated",
            Status::Escalated,
            ExecutionState::Executed,
            "*Fix applied*",
        ),
        (
            "expired approval",
            Status::Escalated,
            ExecutionState::None,
            "*Proposed fix*",
        ),
    ];
    for action in ActionId::ALL {
        for (outcome, status, execution, heading) in outcomes {
            let s = sample(Some(action), status, execution);
            let what = format!("{action}, {outcome}");
            let rendered = card(s.incident.clone(), "https://sentinel.example.com");
            assert_no_slack_control_sequences(&rendered);
            assert!(
                rendered.text.contains(&status.as_str().replace('_', " ")),
                "{what}: {}",
                rendered.text
            );
            let section = fix_section(&rendered);
            assert!(
                section.starts_with(&format!("{heading}\n`{action}`")),
                "{what}: {section}"
            );
            let ids = action_ids(&rendered);
            assert!(!ids.contains(&"approve".to_owned()), "{what}: {ids:?}");
            match execution {
                ExecutionState::Failed if action != ActionId::NotifyOnly => {
                    assert!(
                        section.contains("→ no result: the fix failed"),
                        "{what}: {section}"
                    )
                }
                ExecutionState::Unfinished => {
                    assert!(section.contains("not finished yet"), "{what}: {section}")
                }
                ExecutionState::RolledBack => {
                    assert!(section.contains("• rolled back"), "{what}: {section}");
                    assert!(
                        context_line(&rendered).contains("rolled back 2026-11-28 10:09 UTC"),
                        "{what}"
                    );
                }
                _ => {}
            }
        }
    }
    // Every (action, status, execution) sample renders, each one checked as Block Kit.
    for s in blocks::sample_incidents() {
        blocks::render(
            "incident_card",
            &json!({ "incident": s.incident, "public_url": "" }),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", s.label()));
    }
}

#[test]
fn rollback_is_offered_after_an_executed_reversible_fix_and_never_otherwise() {
    for action in ActionId::ALL {
        for status in [Status::Verifying, Status::Resolved] {
            let s = sample(Some(action), status, ExecutionState::Executed);
            let ids = action_ids(&card(s.incident, ""));
            assert_eq!(
                ids.contains(&"rollback".to_owned()),
                action.reversible(),
                "{action} {status}: {ids:?}"
            );
        }
        let not_offered = [
            (Status::RolledBack, ExecutionState::RolledBack),
            (Status::Resolved, ExecutionState::RolledBack),
            (Status::Escalated, ExecutionState::Executed),
            (Status::Executing, ExecutionState::Unfinished),
            (Status::Failed, ExecutionState::Failed),
            (Status::AwaitingApproval, ExecutionState::None),
            (Status::Resolved, ExecutionState::None),
        ];
        for (status, execution) in not_offered {
            let s = sample(Some(action), status, execution);
            let ids = action_ids(&card(s.incident, ""));
            assert!(
                !ids.contains(&"rollback".to_owned()),
                "{action} {status} {execution:?}: {ids:?}"
            );
        }
    }
}

#[test]
fn a_card_that_cannot_be_drawn_is_posted_as_plain_text_and_counted() {
    let metrics = sentinel::telemetry::metrics::metrics();
    let before = metrics.slack_render_failures("incident_card");
    // A deliberately broken context: an incident that lost its version and timeline.
    let mut broken = incident();
    broken.as_object_mut().unwrap().remove("version");
    broken.as_object_mut().unwrap().remove("timeline");
    let context = json!({ "incident": broken, "public_url": "" });
    assert!(blocks::render("incident_card", &context).is_err());
    let shown = blocks::render_or_fallback("incident_card", &context);
    assert!(metrics.slack_render_failures("incident_card") > before);
    assert_eq!(shown.blocks.len(), 1);
    assert_eq!(shown.blocks[0]["type"], "section");
    assert_eq!(shown.blocks[0]["text"]["type"], "mrkdwn");
    let text = shown.blocks[0]["text"]["text"].as_str().unwrap();
    assert_eq!(
        text,
        ":warning: *Incident inc-01jdx3sample: container memory on web-1, status awaiting approval.*\n\
         _The full card could not be drawn; `/sentinel show inc-01jdx3sample` has the details._"
    );
    assert_no_slack_control_sequences(&shown);
    // The counter is served at /metrics under its template.
    let exposition = metrics.render(None);
    let series = r#"sentinel_slack_render_failures_total{template="incident_card"} "#;
    let line = exposition
        .lines()
        .find(|l| l.starts_with(series))
        .expect("the series is exported");
    assert!(line[series.len()..].parse::<u64>().unwrap() >= 1, "{line}");
    // A card that renders is the card itself.
    let fine = blocks::sample_context("incident_card");
    assert_eq!(
        blocks::render_or_fallback("incident_card", &fine),
        blocks::render("incident_card", &fine).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// Thread replies

#[test]
fn thread_replies_are_one_sentence_without_repeating_the_step() {
    let i = incident();
    let at = "2026-11-28T10:00:00.000Z";
    let cases = [
        (
            json!({"at": at, "step": "analyzing", "actor": "sentinel", "message": "analyzing"}),
            ":mag: Analyzing the incident",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "detected", "actor": "sentinel",
                   "message": "container memory of web-1 is 72.4 % (threshold 60 %)"}),
            ":rotating_light: Detected: container memory of web-1 is 72.4 % (threshold 60 %)",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "awaiting_approval", "actor": "sentinel",
                   "message": "waiting for an admin to approve: high risk"}),
            ":raising_hand: Waiting for an admin to approve: high risk",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "approved", "actor": "slack:U123 (operator)",
                   "message": "approved container_memory_limit"}),
            ":white_check_mark: Approved container_memory_limit",
            "by <@U123> (operator)",
        ),
        (
            json!({"at": at, "step": "rejected", "actor": "api:ci-bot (operator)",
                   "message": "rejected: not during the release"}),
            ":no_entry_sign: Rejected: not during the release",
            "by ci-bot (operator) through the API",
        ),
        (
            json!({"at": at, "step": "resolved", "actor": "sentinel",
                   "message": "verified: container_memory on web-1 is 41.2 %, under its threshold (was 72.4 %)"}),
            ":large_green_circle: Verified: container_memory on web-1 is 41.2 %, under its threshold (was 72.4 %)",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "failed", "actor": "sentinel",
                   "message": "container_memory_limit failed: docker: no such container"}),
            ":x: The fix `container_memory_limit` failed: docker: no such container",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "escalated", "actor": "sentinel",
                   "message": "the approval request expired after 30m without an answer"}),
            ":sos: Escalated to people: the approval request expired after 30m without an answer",
            "by Sentinel",
        ),
        (
            json!({"at": at, "step": "rolled_back", "actor": "slack:U9 (admin)",
                   "message": "rolled back container_memory_limit: memory 805306368 → 536870912"}),
            ":leftwards_arrow_with_hook: Rolled back container_memory_limit: memory 805306368 → 536870912",
            "by <@U9> (admin)",
        ),
        (
            json!({"at": at, "step": "analyzed", "actor": "analyzer:rules",
                   "message": "web-1 grew → proposed container_memory_limit (medium risk, confidence 0.80)"}),
            ":mag: Analyzed: web-1 grew → proposed container_memory_limit (medium risk, confidence 0.80)",
            "by Sentinel's rules analyzer",
        ),
    ];
    for (entry, sentence, by) in cases {
        let rendered = reply(&i, entry.clone());
        let text = rendered.blocks[0]["text"]["text"].as_str().unwrap();
        assert_eq!(text, sentence.replace('>', "&gt;"), "{entry}");
        let context = rendered.blocks[1]["elements"][0]["text"].as_str().unwrap();
        assert_eq!(
            context,
            format!("{by} · 2026-11-28 10:00 UTC · inc-01jdx3sample")
        );
        assert!(
            !rendered.text.starts_with(':'),
            "the fallback text is the sentence alone"
        );
    }
    // "Fix executed" reads the execution record, not the raw message.
    let executed = executed_incident();
    let rendered = reply(
        &executed,
        json!({"at": at, "step": "verifying", "actor": "sentinel",
               "message": "executed container_memory_limit: memory 536870912 → 805306368"}),
    );
    assert_eq!(
        rendered.text,
        "Fix executed: `container_memory_limit`: memory limit: 512 MB → 768 MB; \
         memory + swap limit: 1024 MB → 1280 MB"
    );
    // No reply of any sample repeats its step as "step: step".
    for s in blocks::sample_incidents() {
        for entry in s.incident["timeline"].as_array().unwrap() {
            let rendered = reply(&s.incident, entry.clone());
            let label = entry["step"].as_str().unwrap().replace('_', " ");
            let lower = rendered.text.to_lowercase();
            assert!(
                !lower.contains(&format!("{label}: {label}")),
                "{}: {}",
                s.label(),
                rendered.text
            );
            let step = entry["step"].as_str().unwrap();
            assert!(
                !step.contains('_') || !rendered.text.contains(step),
                "the step in words, not {step}: {}",
                rendered.text
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The records the executor really writes

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

/// The sweep's records must have the shapes `pipeline::execute` writes: run the real
/// executor on a real sandbox and a real container and compare, then draw the card from
/// the real records.
#[tokio::test]
async fn the_sample_records_have_the_shapes_the_executor_writes() {
    use sentinel::domain::{ActionPlan, Actor, CleanupDir, Incident, Role, Timestamp};
    use sentinel::pipeline::{approve, execute::Executor};
    let data = tempfile::tempdir().unwrap();
    let mut settings = sentinel::config::Settings::defaults();
    settings.sandbox_dir = data.path().join("sandbox");
    std::fs::create_dir_all(settings.sandbox_dir.join("logs")).unwrap();
    std::fs::write(
        settings.sandbox_dir.join("logs/app.log"),
        vec![b'x'; 3 << 20],
    )
    .unwrap();
    let executor = Executor::new(&settings);
    let admin = Actor::SlackUser {
        user_id: "U1".into(),
        role: Role::Admin,
    };
    // Runs `plan` for real, as the pipeline does: snapshot, approval, run.
    async fn run(executor: &Executor, admin: &Actor, plan: &ActionPlan) -> Value {
        let action = plan.action();
        let mut sample = sample(Some(action), Status::AwaitingApproval, ExecutionState::None);
        sample.incident["proposed_action"] = serde_json::to_value(plan.to_proposed()).unwrap();
        let awaiting: Incident = serde_json::from_value(sample.incident.clone()).unwrap();
        let before = executor.snapshot(plan).await.unwrap();
        let approval = approve::approve(&awaiting, admin, None, false, Timestamp::now()).unwrap();
        let after = executor
            .run(&approval.action.unwrap(), &before)
            .await
            .unwrap();
        let (sample_before, sample_after) = blocks::sample_records(plan, "inc-sample");
        // The same kind of record, field for field.
        let (before, after) = (before.to_json(), after.to_json());
        let (sample_before, sample_after) = (sample_before.to_json(), sample_after.to_json());
        assert_eq!(
            keys(&before),
            keys(&sample_before),
            "{action} before: {before}"
        );
        assert_eq!(keys(&after), keys(&sample_after), "{action} after: {after}");
        let mut executed = sample.incident;
        executed["status"] = json!("verifying");
        executed["execution"] = json!({
            "action": plan.to_proposed(), "approved_by": "slack:U1 (admin)",
            "started_at": "2026-11-28T10:01:00.000Z", "finished_at": "2026-11-28T10:01:02.000Z",
            "before": before, "after": after, "reversible": action.reversible(),
            "rolled_back_at": null,
        });
        executed
    }
    let cleanup = ActionPlan::SandboxCleanup {
        dirs: CleanupDir::ALL.to_vec(),
    };
    let executed = run(&executor, &admin, &cleanup).await;
    let section = fix_section(&card(executed, ""));
    assert!(
        section.contains(
            "• logs, tmp, cache: 1 file (3.1 MB) → 1 file (3.1 MB) removed\n\
                       • files: logs/app.log\n\
                       • restorable: 1 file (3.1 MB), compressed to "
        ),
        "{section}"
    );
    assert!(section.contains("• files: logs/app.log"), "{section}");

    let container = crate::containers::Container::run(
        "sentinel-cards",
        &["--memory", "64m"],
        &["sleep", "3600"],
    );
    let raise = ActionPlan::ContainerMemoryLimit {
        container: container.0.clone(),
        factor: 1.5,
    };
    let executed = run(&executor, &admin, &raise).await;
    let rendered = card(executed, "");
    let section = fix_section(&rendered);
    assert!(
        section.contains("• memory limit: 64 MB → 96 MB"),
        "{section}"
    );
    assert!(!section.contains(['{', '"']), "{section}");
    assert_eq!(action_ids(&rendered), ["rollback", "silence"]);
}

// ---------------------------------------------------------------------------------------------
// Snapshots

fn snapshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/snapshots")
        .join(format!("blocks__{name}.json"))
}

/// Compares `actual` with the checked-in snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
fn assert_snapshot(name: &str, actual: &Value) {
    let path = snapshot_path(name);
    let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "no snapshot {}; run UPDATE_SNAPSHOTS=1 cargo test --test it blocks:: and review it",
            path.display()
        )
    });
    if expected != text {
        let first = expected
            .lines()
            .zip(text.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(text.lines().count()));
        panic!(
            "{name} differs from {} at line {}:\n  expected: {}\n  actual:   {}\n\
             (UPDATE_SNAPSHOTS=1 to accept)",
            path.display(),
            first + 1,
            expected.lines().nth(first).unwrap_or("<end>"),
            text.lines().nth(first).unwrap_or("<end>"),
        );
    }
}

#[test]
fn every_template_matches_its_snapshot() {
    for name in blocks::template_names() {
        let rendered = blocks::render(name, &blocks::sample_context(name)).unwrap();
        let document = if blocks::is_modal(name) {
            json!({ "text": rendered.text, "view": rendered.blocks[0] })
        } else {
            json!({ "text": rendered.text, "blocks": rendered.blocks })
        };
        assert_snapshot(name, &document);
    }
    let rolled = card(executed_incident(), "");
    assert_snapshot(
        "incident_card_executed",
        &json!({ "text": rolled.text, "blocks": rolled.blocks }),
    );
    let cleaned = card(
        sample(
            Some(ActionId::SandboxCleanup),
            Status::Resolved,
            ExecutionState::Executed,
        )
        .incident,
        "",
    );
    assert_snapshot(
        "incident_card_cleanup_executed",
        &json!({ "text": cleaned.text, "blocks": cleaned.blocks }),
    );
    let scheduled = card(
        sample(
            Some(ActionId::SandboxCleanup),
            Status::Scheduled,
            ExecutionState::None,
        )
        .incident,
        "",
    );
    assert_snapshot(
        "incident_card_cleanup_scheduled",
        &json!({ "text": scheduled.text, "blocks": scheduled.blocks }),
    );
    let fallback = blocks::fallback("incident_card", &json!({ "incident": incident() }));
    assert_snapshot(
        "incident_card_fallback",
        &json!({ "text": fallback.text, "blocks": fallback.blocks }),
    );
}

// ---------------------------------------------------------------------------------------------
// The command line

#[test]
fn blocks_render_prints_a_template_as_block_kit_json() {
    let sentinel = env!("CARGO_BIN_EXE_sentinel");
    let output = std::process::Command::new(sentinel)
        .args(["blocks", "render", "incident_card"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let rendered =
        blocks::render("incident_card", &blocks::sample_context("incident_card")).unwrap();
    assert_eq!(
        printed,
        json!({ "text": rendered.text, "blocks": rendered.blocks })
    );

    let modal = std::process::Command::new(sentinel)
        .args(["blocks", "render", "reject_modal"])
        .env_clear()
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&modal.stdout).unwrap();
    assert_eq!(printed["view"]["type"], "modal");

    let unknown = std::process::Command::new(sentinel)
        .args(["blocks", "render", "nope"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("incident_card"),
        "lists the names"
    );
}

#[test]
fn config_check_renders_every_template() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["config", "check"])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("8 render within Slack's limits (312 sample incidents"),
        "{stdout}"
    );
}

/// The sweep `config check` runs: every catalogue action and none, every status, every
/// execution state an action has (none, executed, rolled back, failed, unfinished).
#[test]
fn the_config_check_sweep_covers_every_action_and_status() {
    let samples = blocks::sample_incidents();
    assert_eq!(
        samples.len(),
        Status::ALL.len() * (1 + ActionId::ALL.len() * ExecutionState::ALL.len())
    );
    assert_eq!(samples.len(), 312);
    for action in std::iter::once(None).chain(ActionId::ALL.into_iter().map(Some)) {
        for status in Status::ALL {
            assert!(
                samples
                    .iter()
                    .any(|s| s.action == action && s.status == status),
                "no sample for {action:?} × {status}"
            );
        }
    }
    let sweep = blocks::render_every_sample().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(sweep.incidents, 312);
    // Six incident templates per sample, a reply per timeline entry, plus the samples.
    assert!(sweep.renders >= 312 * 7 + 7, "{sweep:?}");
}
