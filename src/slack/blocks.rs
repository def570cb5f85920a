//! Block Kit templates: the minijinja templates in `blocks/` rendered to Slack JSON.
//!
//! In: a template name and its context (incident JSON and friends). Out: [`Rendered`], the
//! notification `text` and the `blocks`, checked before anything reaches Slack.
//!
//! The templates are compiled into the binary (`include_str!`), so it needs no files at run
//! time. Each one writes a JSON object `{"text": …, "blocks": [...]}` (or `{"text": …,
//! "view": {...}}` for a modal). Four rules keep what they produce valid and safe:
//!
//! - **Every `{{ value }}` is written as JSON** (a custom formatter, whatever the value), so
//!   no text from an incident can break out of its string.
//! - **Slack's control characters are escaped** by the `esc` filter (`&` `<` `>` become
//!   `&amp;` `&lt;` `&gt;`), so a container named `<!channel>` cannot mention anyone or make
//!   a link. After rendering, any `<` or `>` left in a text is an error: a value a template
//!   forgot to escape is caught here, never shown in the channel.
//! - **Long values are cut**, not refused: `truncate(n)` keeps at most `n` characters of
//!   (already escaped) text, ending in `…`, never splitting an entity. Templates escape the
//!   parts and truncate the whole: `("*Root cause*\n" ~ i.root_cause|esc)|truncate(3000)`.
//! - **The result is checked**: parsed into slack-morphism's Block Kit types (an unknown
//!   block type or a misspelt field fails), then measured against Slack's limits
//!   ([`LIMITS`]). Anything still over a limit is an error, never sent.
//!
//! Templates may end list items with a comma; trailing commas are removed before parsing.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use minijinja::value::{Value as JinjaValue, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind, UndefinedBehavior};
use serde::Deserialize;
use serde_json::{json, Value};
use slack_morphism::prelude::{SlackBlock, SlackView};

use crate::domain::{ContainerState, Status, TargetState};

/// A rendered template: what `chat.postMessage`, `chat.update` or a slash-command answer
/// takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The notification fallback (push notifications, screen readers), mrkdwn-escaped.
    pub text: String,
    /// Block Kit blocks. For a modal template (`reject_modal`) this holds exactly one value:
    /// the whole view (`{"type": "modal", …}`), ready for `views.open`.
    pub blocks: Vec<Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum BlocksError {
    #[error("no template named {0:?}")]
    UnknownTemplate(String),
    #[error("template {template}: {message}")]
    Render { template: String, message: String },
    #[error("template {template}: not valid Block Kit: {message}")]
    Invalid { template: String, message: String },
    #[error("template {template}: {path}: {message}")]
    Limit {
        template: String,
        path: String,
        message: String,
    },
}

/// Slack's Block Kit limits (docs.slack.dev/reference/block-kit), in characters or items.
pub mod limits {
    pub const MESSAGE_BLOCKS: usize = 50;
    pub const MODAL_BLOCKS: usize = 100;
    pub const TEXT: usize = 3000;
    pub const HEADER: usize = 150;
    pub const BUTTON_LABEL: usize = 75;
    pub const ID: usize = 255;
    pub const BUTTON_VALUE: usize = 2000;
    pub const URL: usize = 3000;
    pub const FIELD: usize = 2000;
    pub const FIELDS: usize = 10;
    pub const ACTIONS: usize = 25;
    pub const CONTEXT_ELEMENTS: usize = 10;
    /// The top-level `text`: Slack truncates far later, but keeps it readable past 4000.
    pub const FALLBACK_TEXT: usize = 4000;
    /// Modal titles and the labels of its submit and close buttons.
    pub const MODAL_TITLE: usize = 24;
    pub const INPUT_LABEL: usize = 2000;
}

/// The limits, as a table for documentation and `config check`.
pub const LIMITS: &[(&str, usize)] = &[
    ("blocks per message", limits::MESSAGE_BLOCKS),
    ("blocks per modal", limits::MODAL_BLOCKS),
    ("characters per text", limits::TEXT),
    ("characters per header", limits::HEADER),
    ("characters per button label", limits::BUTTON_LABEL),
    ("characters per block_id or action_id", limits::ID),
    ("characters per button value", limits::BUTTON_VALUE),
    ("characters per field", limits::FIELD),
    ("fields per section", limits::FIELDS),
    ("elements per actions block", limits::ACTIONS),
    ("elements per context block", limits::CONTEXT_ELEMENTS),
];

/// The templates, by name, with their source (the files in `blocks/`).
const TEMPLATES: &[(&str, &str)] = &[
    ("status", include_str!("../../blocks/status.j2")),
    ("help", include_str!("../../blocks/help.j2")),
    ("incidents", include_str!("../../blocks/incidents.j2")),
    (
        "incident_detail",
        include_str!("../../blocks/incident_detail.j2"),
    ),
    ("reject_modal", include_str!("../../blocks/reject_modal.j2")),
    (
        "incident_card",
        include_str!("../../blocks/incident_card.j2"),
    ),
    (
        "timeline_reply",
        include_str!("../../blocks/timeline_reply.j2"),
    ),
    ("home", include_str!("../../blocks/home.j2")),
];

/// A fragment the list templates include (one incident as a section); not renderable alone.
const INCIDENT_SECTION: &str = include_str!("../../blocks/incident_section.j2");

/// The renderable templates, in documentation order (the names in [`TEMPLATES`]).
const NAMES: &[&str] = &[
    "status",
    "help",
    "incidents",
    "incident_detail",
    "reject_modal",
    "incident_card",
    "timeline_reply",
    "home",
];

/// The renderable templates, in documentation order.
pub fn template_names() -> &'static [&'static str] {
    NAMES
}

/// Whether a template renders a view (the reject modal for `views.open`, the App Home tab
/// for `views.publish`) rather than message blocks.
pub fn is_modal(template: &str) -> bool {
    matches!(template, "reject_modal" | "home")
}

static ENV: LazyLock<Environment<'static>> = LazyLock::new(environment);

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // A missing value is an error when printed or iterated, so a context without its
    // incident fails instead of rendering an empty card; `if x` and `x or y` still work.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Every printed value becomes JSON, safe strings included: the templates write JSON.
    env.set_formatter(|out, _state, value| {
        let json = if value.is_undefined() {
            "null".to_owned()
        } else {
            serde_json::to_string(value).map_err(|e| {
                JinjaError::new(ErrorKind::BadSerialization, "cannot write a value as JSON")
                    .with_source(e)
            })?
        };
        out.write_str(&json).map_err(JinjaError::from)
    });
    env.add_filter("esc", |value: JinjaValue| escape(&text_of(&value)));
    env.add_filter("truncate", |value: JinjaValue, limit: usize| {
        truncate_escaped(&text_of(&value), limit)
    });
    env.add_filter("num", |value: JinjaValue| number(&value));
    env.add_filter("when", |value: JinjaValue| when(&text_of(&value)));
    env.add_filter("label", |value: JinjaValue| {
        text_of(&value).replace('_', " ")
    });
    env.add_filter("changes", |execution: JinjaValue| {
        JinjaValue::from(execution_changes(&json_of(&execution)))
    });
    env.add_filter("preview", |snapshot: JinjaValue, fix: JinjaValue| {
        JinjaValue::from(proposal_changes(&json_of(&fix), &json_of(&snapshot)))
    });
    env.add_filter("clock", |value: JinjaValue| clock(&text_of(&value)));
    env.add_filter("scheduled_sentence", |incident: JinjaValue| {
        scheduled_sentence(&json_of(&incident))
    });
    env.add_filter("person", |value: JinjaValue| person(&text_of(&value)));
    env.add_filter("plain", |value: JinjaValue| plain(&json_of(&value)));
    env.add_filter("upper_first", |value: JinjaValue| {
        upper_first(&text_of(&value))
    });
    env.add_global("ICONS", JinjaValue::from(minijinja::value::Serde(json!({
        "critical": ":red_circle:", "warning": ":large_orange_circle:", "info": ":large_blue_circle:"
    }))));
    // The statuses from which the state machine allows rolled_back: where a rollback is
    // accepted (the engine grants a rollback there), so where the card offers one.
    let rollback_statuses: Vec<&str> = Status::ALL
        .into_iter()
        .filter(|status| status.can_transition_to(Status::RolledBack))
        .map(Status::as_str)
        .collect();
    env.add_global("ROLLBACK_STATUSES", JinjaValue::from(rollback_statuses));
    env.add_global(
        "UNITS",
        JinjaValue::from(minijinja::value::Serde(json!({
            "host_cpu": " %", "host_memory": " %", "disk": " %", "container_memory": " %",
            "network_latency": " ms", "sandbox_size": " MB"
        }))),
    );
    env.add_template("incident_section", INCIDENT_SECTION)
        .expect("blocks/incident_section.j2 compiles");
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .unwrap_or_else(|e| panic!("blocks/{name}.j2 does not compile: {e:#}"));
    }
    env
}

/// A value as text: strings as they are, numbers and the rest as minijinja prints them,
/// nothing for none/undefined.
fn text_of(value: &JinjaValue) -> String {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => String::new(),
        _ => match value.as_str() {
            Some(s) => s.to_owned(),
            None => value.to_string(),
        },
    }
}

/// A template value as JSON (`null` for none/undefined), for the Rust-side descriptions.
fn json_of(value: &JinjaValue) -> Value {
    if value.is_undefined() || value.is_none() {
        return Value::Null;
    }
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The first character in upper case, the rest as it is (Jinja's `capitalize` would lower
/// `web-1`'s neighbours, `U123` included).
fn upper_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Who acted, as a person reads it: `slack:U123 (admin)` → `<@U123> (admin)` (Slack shows the
/// mention as the person's name; apply it after `esc`, which would break the mention),
/// `api:ci-bot (operator)` → `ci-bot (operator) through the API`, `sentinel` → `Sentinel`,
/// `analyzer:rules` → `Sentinel's rules analyzer`. Several (`a and b`) are each rewritten;
/// anything else stays as it is.
pub fn person(actor: &str) -> String {
    let one = |who: &str| -> String {
        let who = who.trim();
        if who == "sentinel" {
            "Sentinel".to_owned()
        } else if let Some(name) = who.strip_prefix("analyzer:") {
            format!("Sentinel's {name} analyzer")
        } else if let Some(name) = who.strip_prefix("api:") {
            format!("{name} through the API")
        } else if let Some(user) = who.strip_prefix("slack:") {
            match user.split_once(' ') {
                Some((id, role)) if is_user_id(id) => format!("<@{id}> {role}"),
                None if is_user_id(user) => format!("<@{user}>"),
                _ => format!("Slack user {user}"),
            }
        } else {
            who.to_owned()
        }
    };
    actor
        .split(" and ")
        .map(one)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// `text` with its user mentions (`<@U123>`, the only markup Sentinel writes on purpose) taken
/// out: what is left must carry no `<` or `>`.
pub fn without_mentions(text: &str) -> String {
    let mut left = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<@") {
        let mention = rest[start + 2..]
            .find('>')
            .filter(|&end| is_user_id(&rest[start + 2..start + 2 + end]));
        match mention {
            Some(end) => {
                left.push_str(&rest[..start]);
                rest = &rest[start + 2 + end + 1..];
            }
            None => {
                left.push_str(&rest[..start + 2]);
                rest = &rest[start + 2..];
            }
        }
    }
    left.push_str(rest);
    left
}

/// A Slack user id (`U…` or `W…`, letters and digits): safe inside `<@…>`.
fn is_user_id(id: &str) -> bool {
    id.len() > 1
        && (id.starts_with('U') || id.starts_with('W'))
        && id.chars().all(|c| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------------------------
// Execution records for people
//
// `Execution.before` is the snapshot `pipeline::execute::Executor::snapshot` took, `after`
// what `Executor::run` returned (null until it returns, and for good when it failed):
//
// - `sandbox_cleanup`: before `{dirs, files, bytes, sample, quarantine_max_bytes,
//   quarantine_used_bytes, restorable_files, restorable_bytes, deleted_files, deleted_bytes}`
//   (the last four an estimate that assumes no compression), after `{moved_files,
//   moved_bytes, skipped, quarantine, restorable_files, restorable_bytes, stored_bytes,
//   deleted_files, deleted_bytes, freed_bytes}` measured on disk (and `quarantine_skipped`,
//   `quarantine_error` when they happen); older records lack the quarantine figures. Cleanup
//   sizes are in MB of 1,000,000 bytes, as the sandbox_size signal and its threshold;
// - `container_start`, `container_restart`, `container_memory_limit`: both `{id, name, state,
//   started_at, restart_count, memory, memory_swap}` (`docker inspect`, bytes, 0 = no limit,
//   -1 = unlimited swap; state and started_at may be null);
// - `notify_only`: `{}` and `{}`;
// - a snapshot that could not be taken: `{error}`.
//
// The functions below accept any JSON, so an older or unexpected record still reads.

/// `1 file`, `3 files`.
fn count(n: &Value, one: &str, many: &str) -> String {
    match n.as_u64().or_else(|| n.as_array().map(|a| a.len() as u64)) {
        Some(1) => format!("1 {one}"),
        Some(n) => format!("{n} {many}"),
        None => format!("{} {many}", plain(n)),
    }
}

/// Bytes as megabytes (MiB, as Docker's `64m`): `125829120` → `120 MB`, `1572864` → `1.5 MB`.
fn megabytes(value: &Value) -> String {
    match value.as_f64() {
        Some(bytes) => {
            let mb = bytes / 1_048_576.0;
            if (mb - mb.round()).abs() < 0.05 {
                format!("{} MB", mb.round() as i64)
            } else if mb.abs() < 0.1 {
                format!("{} bytes", bytes.round() as i64)
            } else {
                format!("{mb:.1} MB")
            }
        }
        None => plain(value),
    }
}

/// Docker's memory limit: 0 means none.
fn memory_limit(value: &Value) -> String {
    match value.as_i64() {
        Some(0) => "none".to_owned(),
        _ => megabytes(value),
    }
}

/// Docker's memory + swap limit: -1 unlimited, 0 the default (twice the memory limit).
fn swap_limit(value: &Value) -> String {
    match value.as_i64() {
        Some(-1) => "unlimited".to_owned(),
        Some(0) => "default".to_owned(),
        _ => megabytes(value),
    }
}

/// A container id as `docker ps` shows it: the first 12 characters.
fn short_id(value: &Value) -> String {
    match value.as_str() {
        Some(id) => id.chars().take(12).collect(),
        None => plain(value),
    }
}

fn timestamp(value: &Value) -> String {
    match value.as_str() {
        Some(text) => when(text),
        None => plain(value),
    }
}

/// Any JSON as short text: `–` for null, `yes`/`no`, numbers as people write them, lists
/// joined with commas, objects as `key: value`.
fn plain(value: &Value) -> String {
    match value {
        Value::Null => "–".to_owned(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.to_owned(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            Some(f) => format!("{f:.1}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        Value::Object(map) if map.is_empty() => "–".to_owned(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{}: {}", k.replace('_', " "), plain(v)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Writes one field's value for people.
type Format = fn(&Value) -> String;

/// The fields of a container's state, in the order people look for them.
const CONTAINER_FIELDS: &[(&str, &str, Format)] = &[
    ("state", "state", plain),
    ("memory", "memory limit", memory_limit),
    ("memory_swap", "memory + swap limit", swap_limit),
    ("restart_count", "restarts", plain),
    ("started_at", "started", timestamp),
    ("name", "name", plain),
    ("id", "container id", short_id),
];

/// One key as a label and a formatter: container fields by name, anything else generically.
fn field(key: &str) -> (String, Format) {
    match CONTAINER_FIELDS.iter().find(|(k, _, _)| *k == key) {
        Some((_, label, format)) => ((*label).to_owned(), *format),
        None => (key.replace('_', " "), plain),
    }
}

/// `label: before → after` for every key whose value differs, keys only on one side
/// included (`–` on the other); known container fields first, then the rest by name.
fn diff_lines(before: &Value, after: &Value, skip: &[&str], lines: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut keys: Vec<&str> = CONTAINER_FIELDS
        .iter()
        .map(|(k, _, _)| *k)
        .filter(|k| b.contains_key(*k) || a.contains_key(*k))
        .collect();
    let mut rest: Vec<&str> = b
        .keys()
        .chain(a.keys())
        .map(String::as_str)
        .filter(|k| !keys.contains(k))
        .collect();
    rest.sort_unstable();
    rest.dedup();
    keys.extend(rest);
    for key in keys.into_iter().filter(|k| !skip.contains(k)) {
        let (old, new) = (b.get(key), a.get(key));
        let absent = |v: Option<&Value>| v.is_none_or(Value::is_null);
        if old == new || (absent(old) && absent(new)) {
            continue;
        }
        let (label, format) = field(key);
        let show = |v: Option<&Value>| v.map_or_else(|| "–".to_owned(), format);
        lines.push(format!("{label}: {} → {}", show(old), show(new)));
    }
}

/// The state a container fix starts from, in a few words: `exited, memory limit 512 MB`.
fn container_summary(state: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(s) = state.get("state").filter(|v| !v.is_null()) {
        parts.push(plain(s));
    }
    if let Some(m) = state.get("memory").filter(|v| !v.is_null()) {
        parts.push(format!("memory limit {}", memory_limit(m)));
    }
    if parts.is_empty() {
        "–".to_owned()
    } else {
        parts.join(", ")
    }
}

/// Which cleanup directories, from the snapshot (or the action's parameters).
fn cleanup_dirs(before: &Value, params: &Value) -> String {
    match before.get("dirs").or_else(|| params.get("dirs")) {
        Some(dirs) if !dirs.is_null() => plain(dirs),
        _ => "logs, tmp, cache".to_owned(),
    }
}

/// What a cleanup snapshot holds: `3 files (120 MB)`.
fn cleanup_found(before: &Value) -> String {
    match before.get("files") {
        Some(files) => format!(
            "{} ({})",
            count(files, "file", "files"),
            cleanup_megabytes(before.get("bytes").unwrap_or(&Value::Null))
        ),
        None => "–".to_owned(),
    }
}

/// Cleanup sizes: megabytes of 1,000,000 bytes, as the sandbox_size signal is measured.
fn cleanup_megabytes(value: &Value) -> String {
    match value.as_f64() {
        Some(bytes) => {
            let mb = bytes / 1e6;
            if mb.abs() < 0.1 {
                format!("{} bytes", bytes.round() as i64)
            } else if mb >= 10.0 || (mb - mb.round()).abs() < 0.05 {
                format!("{} MB", mb.round() as i64)
            } else {
                format!("{mb:.1} MB")
            }
        }
        None => plain(value),
    }
}

/// `3 files (120 MB)` from a record's `<what>_files` and `<what>_bytes`.
fn cleanup_files(record: &Value, what: &str) -> String {
    let null = Value::Null;
    format!(
        "{} ({})",
        count(
            record.get(format!("{what}_files")).unwrap_or(&null),
            "file",
            "files"
        ),
        cleanup_megabytes(record.get(format!("{what}_bytes")).unwrap_or(&null))
    )
}

/// What stays restorable and what is deleted for good, said before the cleanup runs from the
/// snapshot's estimate ("about": the compression ratio is unknown until then).
fn cleanup_estimate(snapshot: &Value) -> Option<String> {
    let bytes = snapshot.get("bytes")?.as_u64()?;
    let restorable = snapshot.get("restorable_bytes")?.as_u64()?;
    let deleted = snapshot.get("deleted_bytes")?.as_u64()?;
    let max = snapshot
        .get("quarantine_max_bytes")
        .map(cleanup_megabytes)
        .unwrap_or_else(|| "–".to_owned());
    let mb = |b: u64| cleanup_megabytes(&json!(b));
    if bytes == 0 {
        return None;
    }
    Some(if deleted == 0 {
        format!(
            "all of it stays restorable, compressed in the quarantine (at most {max}); frees \
             what compression saves"
        )
    } else if restorable == 0 {
        format!(
            "frees about {}; the quarantine (at most {max}) has no room left, so all of it is \
             deleted for good and nothing can be rolled back",
            mb(deleted)
        )
    } else {
        format!(
            "frees about {} or more; about {} or more stays restorable (more if the files \
             compress), newest files first, in the quarantine (at most {max}); up to about {} is \
             deleted for good",
            mb(deleted),
            mb(restorable),
            mb(deleted)
        )
    })
}

/// A few of the planned file names: `logs/a.log, logs/b.log and 8 more`.
fn cleanup_sample(before: &Value) -> Option<String> {
    let names: Vec<String> = before
        .get("sample")?
        .as_array()?
        .iter()
        .map(plain)
        .collect();
    if names.is_empty() {
        return None;
    }
    let shown = names.len().min(5);
    let total = before
        .get("files")
        .and_then(Value::as_u64)
        .unwrap_or(names.len() as u64);
    let more = total.saturating_sub(shown as u64);
    let mut text = names[..shown].join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    Some(text)
}

/// The keys a cleanup record is described by; any others are listed generically.
const CLEANUP_KEYS: &[&str] = &[
    "dirs",
    "files",
    "bytes",
    "sample",
    "moved_files",
    "moved_bytes",
    "skipped",
    "quarantine",
    "error",
    "quarantine_max_bytes",
    "quarantine_used_bytes",
    "restorable_files",
    "restorable_bytes",
    "deleted_files",
    "deleted_bytes",
    "stored_bytes",
    "freed_bytes",
    "quarantine_skipped",
    "quarantine_error",
];

/// What an execution record changed, one line per change, for people: the `changes`
/// filter. Empty when there is nothing to say (`notify_only`).
pub fn execution_changes(execution: &Value) -> Vec<String> {
    let null = Value::Null;
    let action = execution
        .pointer("/action/action")
        .and_then(Value::as_str)
        .unwrap_or("");
    let params = execution.pointer("/action/params").unwrap_or(&null);
    let before = execution.get("before").unwrap_or(&null);
    let after = execution.get("after").unwrap_or(&null);
    let finished = execution.get("finished_at").is_some_and(|v| !v.is_null());
    // `after` stays null while the fix runs, and for good when it failed.
    let pending = after.is_null().then_some(if finished {
        "no result: the fix failed"
    } else {
        "not finished yet"
    });
    let mut lines = Vec::new();
    if let Some(error) = before.get("error") {
        lines.push(format!(
            "state before: could not be read ({})",
            plain(error)
        ));
    }
    match action {
        "sandbox_cleanup" => {
            // Records from before the quarantine had a budget lack `stored_bytes`.
            let measured = after.get("stored_bytes").is_some();
            let done = match pending {
                Some(pending) => pending.to_owned(),
                None if measured => format!("{} removed", cleanup_files(after, "moved")),
                None => format!(
                    "{} moved to the quarantine ({})",
                    count(after.get("moved_files").unwrap_or(&null), "file", "files"),
                    cleanup_megabytes(after.get("moved_bytes").unwrap_or(&null))
                ),
            };
            lines.push(format!(
                "{}: {} → {done}",
                cleanup_dirs(before, params),
                cleanup_found(before)
            ));
            if let Some(sample) = cleanup_sample(before) {
                lines.push(format!("files: {sample}"));
            }
            if pending.is_none() && measured {
                if let Some(error) = after.get("quarantine_error") {
                    lines.push(format!(
                        "restorable: all of it, uncompressed in the quarantine: it could not be \
                         compressed ({})",
                        plain(error)
                    ));
                } else {
                    lines.push(format!(
                        "restorable: {}, compressed to {} in the quarantine",
                        cleanup_files(after, "restorable"),
                        cleanup_megabytes(after.get("stored_bytes").unwrap_or(&null))
                    ));
                }
                if after
                    .get("deleted_files")
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
                    > 0
                {
                    lines.push(format!(
                        "deleted for good: {}: they did not fit in the quarantine",
                        cleanup_files(after, "deleted")
                    ));
                }
                lines.push(format!(
                    "freed: {}",
                    cleanup_megabytes(after.get("freed_bytes").unwrap_or(&null))
                ));
            }
            if let Some(skipped) = after.get("skipped") {
                let left = skipped
                    .as_u64()
                    .or_else(|| skipped.as_array().map(|a| a.len() as u64));
                if left != Some(0) {
                    lines.push(format!(
                        "skipped: {} left in place",
                        count(skipped, "file", "files")
                    ));
                }
            }
            if let Some(quarantine) = after.get("quarantine").filter(|q| !q.is_null()) {
                lines.push(format!("quarantine: {}", plain(quarantine)));
            }
            diff_lines(before, after, CLEANUP_KEYS, &mut lines);
        }
        _ => match pending {
            Some(pending) if before.as_object().is_some_and(|b| !b.is_empty()) => {
                lines.push(format!("{} → {pending}", container_summary(before)));
            }
            Some(pending) => lines.push(pending.to_owned()),
            None => {
                let from = lines.len();
                diff_lines(before, after, &["error"], &mut lines);
                let something = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
                if lines.len() == from && (something(before) || something(after)) {
                    lines.push("no visible change".to_owned());
                }
            }
        },
    }
    if execution
        .get("rolled_back_at")
        .is_some_and(|v| !v.is_null())
    {
        lines.push(match action {
            "sandbox_cleanup" => match after.get("deleted_files").and_then(Value::as_u64) {
                Some(deleted) if deleted > 0 => format!(
                    "rolled back: the quarantined files were put back; {} could not be, \
                     deleted for good",
                    cleanup_files(after, "deleted")
                ),
                _ => "rolled back: the quarantined files were put back".to_owned(),
            },
            "container_start" => "rolled back: the container was stopped again".to_owned(),
            "container_memory_limit" => format!(
                "rolled back: the memory limit is {} again",
                memory_limit(before.get("memory").unwrap_or(&null))
            ),
            _ => "rolled back".to_owned(),
        });
    }
    lines
}

/// What a proposed fix would change, from the snapshot taken when it was proposed: the
/// `preview` filter (`snapshot|preview(fix)`). Empty when there is nothing to say.
pub fn proposal_changes(fix: &Value, snapshot: &Value) -> Vec<String> {
    let null = Value::Null;
    let params = fix.get("params").unwrap_or(&null);
    let mut lines = Vec::new();
    if let Some(error) = snapshot.get("error") {
        lines.push(format!(
            "current state: could not be read ({})",
            plain(error)
        ));
        return lines;
    }
    if !snapshot.is_object() {
        return lines;
    }
    let state = || plain(snapshot.get("state").unwrap_or(&null));
    match fix.get("action").and_then(Value::as_str).unwrap_or("") {
        "sandbox_cleanup" => {
            match cleanup_estimate(snapshot) {
                Some(estimate) => {
                    lines.push(format!(
                        "{}: {} → removed",
                        cleanup_dirs(snapshot, params),
                        cleanup_found(snapshot)
                    ));
                    lines.push(estimate);
                }
                None => lines.push(format!(
                    "{}: {} → moved to the quarantine",
                    cleanup_dirs(snapshot, params),
                    cleanup_found(snapshot)
                )),
            }
            if let Some(sample) = cleanup_sample(snapshot) {
                lines.push(format!("files: {sample}"));
            }
        }
        "container_start" => lines.push(format!("state: {} → running", state())),
        "container_restart" => lines.push(format!(
            "state: {}, started {} → restarted",
            state(),
            timestamp(snapshot.get("started_at").unwrap_or(&null))
        )),
        "container_memory_limit" => {
            let memory = snapshot.get("memory").unwrap_or(&null);
            let factor = params.get("factor").and_then(Value::as_f64);
            match (memory.as_f64(), factor) {
                (Some(m), Some(f)) if m > 0.0 => lines.push(format!(
                    "memory limit: {} → {} (×{})",
                    memory_limit(memory),
                    megabytes(&json!((m * f).round())),
                    plain(&json!(f))
                )),
                (Some(m), _) if m <= 0.0 => {
                    lines.push("memory limit: none, so there is nothing to raise".to_owned())
                }
                (Some(_), None) => lines.push(format!("memory limit: {}", memory_limit(memory))),
                _ => {}
            }
        }
        _ => {}
    }
    lines
}

/// `2026-11-28T10:06:00.000Z` → `10:06:00 UTC`; anything else as it is.
fn clock(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.len() >= 19 && bytes.get(10) == Some(&b'T') && text.is_char_boundary(19) {
        format!("{} UTC", &text[11..19])
    } else {
        text.to_owned()
    }
}

/// A wait for people: `60 s`, `5 min`, `about 3 min`, `2 h`.
fn window_words(seconds: i64) -> String {
    match seconds {
        i64::MIN..=119 => format!("{} s", seconds.max(0)),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s if s < 7200 => format!("about {} min", (s + 30) / 60),
        s => format!("about {} h", (s + 1800) / 3600),
    }
}

/// What a scheduled fix will do where, and when, for the card (the `scheduled_sentence`
/// filter, plain unescaped text): `Cleaning logs/, tmp/ and cache/ in the sandbox in 60 s,
/// at 10:06:00 UTC (frees about 112 MB).` The wait is the veto window as scheduled (from
/// the `scheduled` timeline entry to `scheduled_for`), so the card is the same whenever it
/// is drawn. The parenthesis holds what the proposal's snapshot says it changes.
pub fn scheduled_sentence(incident: &Value) -> String {
    let null = Value::Null;
    let fix = incident.get("proposed_action").unwrap_or(&null);
    let params = fix.get("params").unwrap_or(&null);
    let snapshot = incident.get("snapshot").unwrap_or(&null);
    let resource = plain(incident.get("resource").unwrap_or(&null));
    let target = |key: &str| params.get(key).map_or_else(|| resource.clone(), plain);
    let action = fix.get("action").and_then(Value::as_str).unwrap_or("");
    let what = match action {
        "sandbox_cleanup" => {
            let dirs: Vec<String> = match snapshot.get("dirs").or_else(|| params.get("dirs")) {
                Some(Value::Array(dirs)) => dirs.iter().map(|d| format!("{}/", plain(d))).collect(),
                _ => vec!["logs/".into(), "tmp/".into(), "cache/".into()],
            };
            let dirs = match dirs.as_slice() {
                [] => "logs/, tmp/ and cache/".to_owned(),
                [one] => one.clone(),
                [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
            };
            format!("Cleaning {dirs} in the sandbox")
        }
        "container_start" => format!("Starting container `{}`", target("container")),
        "container_restart" => format!("Restarting container `{}`", target("container")),
        "container_memory_limit" => {
            format!(
                "Raising the memory limit of container `{}`",
                target("container")
            )
        }
        "" => "Running the fix".to_owned(),
        other => format!("Running `{other}` on `{resource}`"),
    };
    let due = incident.get("scheduled_for").and_then(Value::as_str);
    let scheduled_at = incident
        .get("timeline")
        .and_then(Value::as_array)
        .and_then(|entries| {
            entries
                .iter()
                .rev()
                .find(|e| e.get("step").and_then(Value::as_str) == Some("scheduled"))
        })
        .and_then(|e| e.get("at"))
        .and_then(Value::as_str);
    let millis = |text: &str| {
        crate::domain::Timestamp::parse_rfc3339(text)
            .ok()
            .map(|t| t.unix_millis())
    };
    let when = match (
        scheduled_at.and_then(millis),
        due.and_then(|d| millis(d).zip(Some(d))),
    ) {
        (Some(from), Some((to, due))) => format!(
            " in {}, at {}",
            window_words((to - from + 500).div_euclid(1000)),
            clock(due)
        ),
        (None, Some((_, due))) => format!(" at {}", clock(due)),
        _ => " when its veto window ends".to_owned(),
    };
    // What it changes, as the proposal's snapshot says (the cleanup's estimate slots in here).
    let mut changes = Vec::new();
    match action {
        "sandbox_cleanup" => {
            let size = |key: &str| snapshot.get(key).and_then(Value::as_u64);
            let mb = |b: u64| cleanup_megabytes(&json!(b));
            match (
                size("restorable_bytes"),
                size("deleted_bytes"),
                size("bytes"),
            ) {
                (Some(_), Some(0), _) => {
                    changes.push("all of it stays restorable in the quarantine".to_owned())
                }
                (Some(0), Some(deleted), _) => changes.push(format!(
                    "frees about {}; nothing stays restorable",
                    mb(deleted)
                )),
                (Some(restorable), Some(deleted), _) => changes.push(format!(
                    "frees about {} or more; about {} or more stays restorable",
                    mb(deleted),
                    mb(restorable)
                )),
                (_, _, Some(bytes)) => changes.push(format!("frees about {}", mb(bytes))),
                _ => {}
            }
        }
        "container_memory_limit" | "container_start" | "container_restart" => {
            changes.extend(proposal_changes(fix, snapshot));
        }
        _ => {}
    }
    let changes = if changes.is_empty() {
        String::new()
    } else {
        format!(" ({})", changes.join("; "))
    };
    format!("{what}{when}{changes}.")
}

/// Escapes Slack's three control characters (docs.slack.dev "Escaping text").
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Keeps at most `limit` characters of already escaped text, ending in `…` when cut, and
/// never cutting through an entity (`&amp;`).
pub fn truncate_escaped(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_owned();
    }
    if limit == 0 {
        return String::new();
    }
    let mut kept: String = text.chars().take(limit - 1).collect();
    // An entity is at most 5 characters (`&amp;`): drop a partial one at the end.
    if let Some(amp) = kept.rfind('&') {
        if !kept[amp..].contains(';') {
            kept.truncate(amp);
        }
    }
    kept.push('…');
    kept
}

/// A number for people: integers as integers, others with one decimal.
fn number(value: &JinjaValue) -> String {
    if let Some(i) = value.as_i64() {
        return i.to_string();
    }
    match f64::try_from(value.clone()) {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
        Ok(f) if f.is_finite() => format!("{f:.1}"),
        _ => text_of(value),
    }
}

/// `2026-11-28T10:00:00.000Z` → `2026-11-28 10:00 UTC`; anything else as it is.
fn when(text: &str) -> String {
    let bytes = text.as_bytes();
    if bytes.len() >= 16 && bytes.get(10) == Some(&b'T') && text.is_char_boundary(16) {
        format!("{} {} UTC", &text[..10], &text[11..16])
    } else {
        text.to_owned()
    }
}

/// Recently rendered replies by template and context. Rendering is a pure function of the
/// two (no clock, no randomness), so an identical request — `/sentinel status` asked again
/// before anything changed — reuses the checked result instead of rendering, parsing and
/// checking the same Block Kit again. Small and cleared when full: it only needs to hold
/// what is being asked for right now.
static RECENT: LazyLock<std::sync::Mutex<HashMap<(&'static str, String), Rendered>>> =
    LazyLock::new(Default::default);
const RECENT_CAPACITY: usize = 64;

/// Renders `template` with `context` and checks the result (see the module comment).
pub fn render(template: &str, context: &Value) -> Result<Rendered, BlocksError> {
    let Some(name) = NAMES.iter().copied().find(|name| *name == template) else {
        return Err(BlocksError::UnknownTemplate(template.to_owned()));
    };
    let key = (name, context.to_string());
    let recent = || RECENT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(rendered) = recent().get(&key) {
        return Ok(rendered.clone());
    }
    let rendered = render_checked(name, context)?;
    let mut cache = recent();
    if cache.len() >= RECENT_CAPACITY {
        cache.clear();
    }
    cache.insert(key, rendered.clone());
    Ok(rendered)
}

/// Renders `template` like [`render`]; when that fails, logs the error, counts it in
/// `sentinel_slack_render_failures_total{template}` and returns [`fallback`] instead, so the
/// message is still posted. For the incident card and its thread replies: a card that
/// cannot be drawn must not hide the incident.
pub fn render_or_fallback(template: &str, context: &Value) -> Rendered {
    match render(template, context) {
        Ok(rendered) => rendered,
        Err(e) => {
            let name = NAMES
                .iter()
                .copied()
                .find(|name| *name == template)
                .unwrap_or("unknown");
            let incident = context
                .pointer("/incident/id")
                .and_then(Value::as_str)
                .unwrap_or("");
            tracing::error!(template = name, incident, error = %e, "cannot render a template; posting the plain-text fallback");
            crate::telemetry::metrics::metrics().slack_render_failure(name);
            fallback(template, context)
        }
    }
}

/// The plain-text card for a message whose template failed: one `section` naming the
/// incident, its signal, resource and status in words, and saying the full card could not
/// be drawn. Built in code (no template), from whatever the context still holds.
pub fn fallback(template: &str, context: &Value) -> Rendered {
    let incident = context.get("incident").unwrap_or(&Value::Null);
    let words = |key: &str, otherwise: &str| match incident.get(key).and_then(Value::as_str) {
        Some(text) if !text.trim().is_empty() => escape(&text.replace('_', " ")),
        _ => otherwise.to_owned(),
    };
    let id = words("id", "an unknown incident");
    let signal = words("signal", "an unknown signal");
    let resource = match incident.get("resource").and_then(Value::as_str) {
        Some(resource) if !resource.is_empty() => escape(resource),
        _ => "an unknown resource".to_owned(),
    };
    let status = words("status", "unknown");
    let what = if template == "incident_card" {
        "card"
    } else {
        "message"
    };
    let line = format!("Incident {id}: {signal} on {resource}, status {status}.");
    let body = format!(
        ":warning: *{}*\n_The full {what} could not be drawn; `/sentinel show {}` has the details._",
        truncate_escaped(&line, 2000),
        truncate_escaped(&id, 200),
    );
    let document = json!({
        "text": truncate_escaped(&line, 300),
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": truncate_escaped(&body, limits::TEXT)}}],
    });
    check_document(template, document).unwrap_or_else(|_| Rendered {
        text: "An incident card could not be drawn.".to_owned(),
        blocks: vec![json!({"type": "section", "text": {"type": "mrkdwn",
            "text": "An incident card could not be drawn; see `/sentinel incidents`."}})],
    })
}

/// [`render`] without the cache: render, parse, check.
fn render_checked(template: &str, context: &Value) -> Result<Rendered, BlocksError> {
    if !NAMES.contains(&template) {
        return Err(BlocksError::UnknownTemplate(template.to_owned()));
    }
    let render_error = |message: String| BlocksError::Render {
        template: template.to_owned(),
        message,
    };
    let invalid = |message: String| BlocksError::Invalid {
        template: template.to_owned(),
        message,
    };
    // One line (`undefined value: `i.version` is undefined (in incident_card:15)`), not
    // minijinja's alternate form with the template excerpt and every variable.
    let source = ENV
        .get_template(template)
        .map_err(|e| render_error(e.to_string()))?;
    let output = source
        .render(JinjaValue::from(minijinja::value::Serde(context)))
        .map_err(|e| render_error(e.to_string()))?;
    let cleaned = strip_trailing_commas(&output);
    let document: Value = serde_json::from_str(&cleaned)
        .map_err(|e| invalid(format!("the template wrote invalid JSON: {e}")))?;
    check_document(template, document)
}

/// Parses and checks a written document (`{"text", "blocks"}` or `{"text", "view"}`):
/// Block Kit types, the round trip and Slack's limits.
fn check_document(template: &str, mut document: Value) -> Result<Rendered, BlocksError> {
    let invalid = |message: String| BlocksError::Invalid {
        template: template.to_owned(),
        message,
    };
    let text = document
        .get("text")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("no top-level \"text\" string (the notification fallback)".into()))?
        .to_owned();
    let mut checker = Checker {
        problems: Vec::new(),
    };
    checker.text("text", &text, 1, limits::FALLBACK_TEXT);
    // Parsed from the tree by reference (`Deserialize for &Value`): no copy of the blocks.
    let blocks = if let Some(view) = document.get_mut("view").map(Value::take) {
        let parsed = SlackView::deserialize(&view).map_err(|e| invalid(format!("view: {e}")))?;
        same_after_round_trip(template, "view", &view, &parsed)?;
        checker.view(&view);
        vec![view]
    } else {
        let Some(Value::Array(blocks)) = document.get_mut("blocks").map(Value::take) else {
            return Err(invalid("no \"blocks\" array and no \"view\"".into()));
        };
        let blocks_value = Value::Array(blocks);
        let parsed = Vec::<SlackBlock>::deserialize(&blocks_value)
            .map_err(|e| invalid(format!("blocks: {e}")))?;
        for (index, block) in parsed.iter().enumerate() {
            if let SlackBlock::Unknown(_) = block {
                return Err(invalid(format!("blocks[{index}]: unknown block type")));
            }
        }
        same_after_round_trip(template, "blocks", &blocks_value, &parsed)?;
        let Value::Array(blocks) = blocks_value else {
            unreachable!("an array above")
        };
        checker.blocks("blocks", &blocks, limits::MESSAGE_BLOCKS);
        blocks
    };
    match checker.problems.into_iter().next() {
        Some((path, message)) => Err(BlocksError::Limit {
            template: template.to_owned(),
            path,
            message,
        }),
        None => Ok(Rendered { text, blocks }),
    }
}

/// The parsed model written back must equal what the template wrote: a field slack-morphism
/// does not know (a typo such as `acton_id`) would otherwise vanish silently.
fn same_after_round_trip<T: serde::Serialize>(
    template: &str,
    what: &str,
    written: &Value,
    parsed: &T,
) -> Result<(), BlocksError> {
    let back = serde_json::to_value(parsed).map_err(|e| BlocksError::Invalid {
        template: template.to_owned(),
        message: format!("{what}: {e}"),
    })?;
    match first_difference(written, &back) {
        None => Ok(()),
        Some(mut steps) => {
            steps.reverse();
            Err(BlocksError::Invalid {
                template: template.to_owned(),
                message: format!(
                    "{what}{}: not part of Block Kit (or not as written)",
                    steps.concat()
                ),
            })
        }
    }
}

/// Where `back` first differs from `written`: the path steps (`.key`, `[i]`), innermost
/// first; built only when there is a difference, as this runs on every rendered reply.
fn first_difference(written: &Value, back: &Value) -> Option<Vec<String>> {
    match (written, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => {
                        if let Some(mut steps) = first_difference(value, other) {
                            steps.push(format!(".{key}"));
                            return Some(steps);
                        }
                    }
                    None if value.is_null() => {}
                    None => return Some(vec![format!(".{key}")]),
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
                let mut steps = first_difference(x, y)?;
                steps.push(format!("[{i}]"));
                Some(steps)
            })
        }
        (a, b) if a == b => None,
        _ => Some(Vec::new()),
    }
}

/// Removes commas that directly precede `]` or `}` (outside strings), so templates can end
/// every list item with a comma.
fn strip_trailing_commas(json: &str) -> String {
    // Byte by byte: the delimiters are ASCII, and UTF-8 never uses ASCII bytes inside a
    // multi-byte character, so the kept bytes are still valid UTF-8.
    let bytes = json.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b',' => {
                let next = bytes[i + 1..].iter().find(|b| !b.is_ascii_whitespace());
                if !matches!(next, Some(b']') | Some(b'}')) {
                    out.push(b);
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).expect("only ASCII commas were removed")
}

/// Walks rendered Block Kit and collects every broken limit as (path, problem).
struct Checker {
    problems: Vec<(String, String)>,
}

impl Checker {
    fn problem(&mut self, path: &str, message: String) {
        self.problems.push((path.to_owned(), message));
    }

    /// A string with a length range; text that reaches Slack must not carry raw `<`/`>`.
    fn text(&mut self, path: &str, text: &str, min: usize, max: usize) {
        let length = text.chars().count();
        if length < min {
            self.problem(path, "is empty".to_owned());
        }
        if length > max {
            self.problem(path, format!("{length} characters, the limit is {max}"));
        }
        if without_mentions(text).contains(['<', '>']) {
            self.problem(
                path,
                "contains an unescaped < or > (escape the value with |esc)".to_owned(),
            );
        }
    }

    fn id(&mut self, path: &str, value: Option<&Value>) {
        if let Some(id) = value.and_then(Value::as_str) {
            let length = id.chars().count();
            if length == 0 || length > limits::ID {
                self.problem(
                    path,
                    format!("{length} characters, allowed 1 to {}", limits::ID),
                );
            }
        }
    }

    /// A text object (`{"type": "plain_text"|"mrkdwn", "text": …}`).
    fn text_object(&mut self, path: &str, object: Option<&Value>, max: usize) {
        let Some(object) = object else { return };
        match object.get("text").and_then(Value::as_str) {
            Some(text) => self.text(&format!("{path}.text"), text, 1, max),
            None => self.problem(path, "a text object without text".to_owned()),
        }
    }

    fn plain_text(&mut self, path: &str, object: Option<&Value>, max: usize) {
        if let Some(kind) = object.and_then(|o| o.get("type")).and_then(Value::as_str) {
            if kind != "plain_text" {
                self.problem(path, format!("must be plain_text, not {kind}"));
            }
        }
        self.text_object(path, object, max);
    }

    fn blocks(&mut self, path: &str, blocks: &[Value], max: usize) {
        if blocks.len() > max {
            self.problem(path, format!("{} blocks, the limit is {max}", blocks.len()));
        }
        let mut block_ids = HashSet::new();
        for (index, block) in blocks.iter().enumerate() {
            let here = format!("{path}[{index}]");
            if let Some(id) = block.get("block_id").and_then(Value::as_str) {
                if !block_ids.insert(id.to_owned()) {
                    self.problem(&here, format!("block_id {id:?} is used twice"));
                }
            }
            self.id(&format!("{here}.block_id"), block.get("block_id"));
            self.block(&here, block);
        }
    }

    fn block(&mut self, path: &str, block: &Value) {
        let kind = block.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "header" => self.plain_text(&format!("{path}.text"), block.get("text"), limits::HEADER),
            "section" => {
                self.text_object(&format!("{path}.text"), block.get("text"), limits::TEXT);
                if let Some(fields) = block.get("fields").and_then(Value::as_array) {
                    if fields.len() > limits::FIELDS {
                        self.problem(
                            &format!("{path}.fields"),
                            format!("{} fields, the limit is {}", fields.len(), limits::FIELDS),
                        );
                    }
                    for (i, field) in fields.iter().enumerate() {
                        self.text_object(
                            &format!("{path}.fields[{i}]"),
                            Some(field),
                            limits::FIELD,
                        );
                    }
                }
                if block.get("text").is_none() && block.get("fields").is_none() {
                    self.problem(path, "a section needs text or fields".to_owned());
                }
                if let Some(accessory) = block.get("accessory") {
                    self.element(&format!("{path}.accessory"), accessory);
                }
            }
            "context" => {
                let elements = block.get("elements").and_then(Value::as_array);
                let elements = elements.map(Vec::as_slice).unwrap_or_default();
                if elements.is_empty() || elements.len() > limits::CONTEXT_ELEMENTS {
                    self.problem(
                        &format!("{path}.elements"),
                        format!(
                            "{} elements, allowed 1 to {}",
                            elements.len(),
                            limits::CONTEXT_ELEMENTS
                        ),
                    );
                }
                for (i, element) in elements.iter().enumerate() {
                    if element.get("text").is_some() {
                        self.text_object(
                            &format!("{path}.elements[{i}]"),
                            Some(element),
                            limits::TEXT,
                        );
                    }
                }
            }
            "actions" => {
                let elements = block.get("elements").and_then(Value::as_array);
                let elements = elements.map(Vec::as_slice).unwrap_or_default();
                if elements.is_empty() || elements.len() > limits::ACTIONS {
                    self.problem(
                        &format!("{path}.elements"),
                        format!(
                            "{} elements, allowed 1 to {}",
                            elements.len(),
                            limits::ACTIONS
                        ),
                    );
                }
                let mut action_ids = HashSet::new();
                for (i, element) in elements.iter().enumerate() {
                    let here = format!("{path}.elements[{i}]");
                    if let Some(id) = element.get("action_id").and_then(Value::as_str) {
                        if !action_ids.insert(id.to_owned()) {
                            self.problem(&here, format!("action_id {id:?} is used twice"));
                        }
                    }
                    self.element(&here, element);
                }
            }
            "input" => {
                self.plain_text(
                    &format!("{path}.label"),
                    block.get("label"),
                    limits::INPUT_LABEL,
                );
                if let Some(element) = block.get("element") {
                    self.element(&format!("{path}.element"), element);
                }
            }
            "divider" => {}
            other => self.problem(
                path,
                format!("block type {other:?} is not used by Sentinel"),
            ),
        }
    }

    fn element(&mut self, path: &str, element: &Value) {
        self.id(&format!("{path}.action_id"), element.get("action_id"));
        if element.get("type").and_then(Value::as_str) == Some("button") {
            self.plain_text(
                &format!("{path}.text"),
                element.get("text"),
                limits::BUTTON_LABEL,
            );
            if let Some(value) = element.get("value").and_then(Value::as_str) {
                let length = value.chars().count();
                if length > limits::BUTTON_VALUE {
                    self.problem(
                        &format!("{path}.value"),
                        format!("{length} characters, the limit is {}", limits::BUTTON_VALUE),
                    );
                }
            }
            if let Some(url) = element.get("url").and_then(Value::as_str) {
                let length = url.chars().count();
                if length > limits::URL
                    || !(url.starts_with("https://") || url.starts_with("http://"))
                {
                    self.problem(
                        &format!("{path}.url"),
                        "not an http(s) URL within 3000 characters".to_owned(),
                    );
                }
            }
            if let Some(confirm) = element.get("confirm") {
                let here = format!("{path}.confirm");
                self.plain_text(&format!("{here}.title"), confirm.get("title"), 100);
                self.text_object(&format!("{here}.text"), confirm.get("text"), 300);
                self.plain_text(&format!("{here}.confirm"), confirm.get("confirm"), 30);
                self.plain_text(&format!("{here}.deny"), confirm.get("deny"), 30);
            }
        }
    }

    fn view(&mut self, view: &Value) {
        self.plain_text("view.title", view.get("title"), limits::MODAL_TITLE);
        self.plain_text("view.submit", view.get("submit"), limits::MODAL_TITLE);
        self.plain_text("view.close", view.get("close"), limits::MODAL_TITLE);
        self.id("view.callback_id", view.get("callback_id"));
        if let Some(metadata) = view.get("private_metadata").and_then(Value::as_str) {
            if metadata.chars().count() > 3000 {
                self.problem("view.private_metadata", "over 3000 characters".to_owned());
            }
        }
        let blocks = view.get("blocks").and_then(Value::as_array);
        self.blocks(
            "view.blocks",
            blocks.map(Vec::as_slice).unwrap_or_default(),
            limits::MODAL_BLOCKS,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sample incidents for every (action, status) pair

/// How far an incident's fix got, as the execution records that occur: none yet; executed
/// (`finished_at` and `after` set); executed then rolled back; failed (`finished_at` set,
/// `after` null); still running or interrupted (neither set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutionState {
    None,
    Executed,
    RolledBack,
    Failed,
    Unfinished,
}

impl ExecutionState {
    pub const ALL: [ExecutionState; 5] = [
        ExecutionState::None,
        ExecutionState::Executed,
        ExecutionState::RolledBack,
        ExecutionState::Failed,
        ExecutionState::Unfinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::None => "no execution",
            ExecutionState::Executed => "executed",
            ExecutionState::RolledBack => "rolled back",
            ExecutionState::Failed => "failed",
            ExecutionState::Unfinished => "unfinished",
        }
    }
}

/// One incident of the sweep: the pair it stands for and its JSON.
#[derive(Debug, Clone)]
pub struct SampleIncident {
    /// The proposed (and maybe executed) catalogue action; `None`: nothing proposed.
    pub action: Option<crate::domain::ActionId>,
    pub status: Status,
    pub execution: ExecutionState,
    /// `serde_json::to_value(&Incident)`, as the card sync renders it.
    pub incident: Value,
}

impl SampleIncident {
    /// `action sandbox_cleanup, status resolved, executed`: what a failure names.
    pub fn label(&self) -> String {
        format!(
            "action {}, status {}, {}",
            self.action.map_or("none", |a| a.as_str()),
            self.status,
            self.execution.as_str()
        )
    }
}

/// A realistic plan for each catalogue action.
fn sample_plan(action: crate::domain::ActionId) -> crate::domain::ActionPlan {
    use crate::domain::{ActionId, ActionPlan, CleanupDir};
    let container = "web-1".to_owned();
    match action {
        ActionId::SandboxCleanup => ActionPlan::SandboxCleanup {
            dirs: CleanupDir::ALL.to_vec(),
        },
        ActionId::ContainerStart => ActionPlan::ContainerStart { container },
        ActionId::ContainerRestart => ActionPlan::ContainerRestart { container },
        ActionId::ContainerMemoryLimit => ActionPlan::ContainerMemoryLimit {
            container,
            factor: 1.5,
        },
        ActionId::NotifyOnly => ActionPlan::NotifyOnly,
    }
}

/// The signal an action is proposed for (SPEC §12.2), on its resource.
fn sample_detection(action: Option<crate::domain::ActionId>) -> crate::domain::Detection {
    use crate::domain::{ActionId, Detection, Resource, Severity, Signal, Source};
    let (signal, resource, value, threshold, source) = match action {
        Some(ActionId::SandboxCleanup) => (
            Signal::SandboxSize,
            "sandbox",
            512.0,
            100.0,
            Source::Sandbox,
        ),
        Some(ActionId::ContainerStart) => {
            (Signal::ContainerDown, "web-1", 1.0, 1.0, Source::Docker)
        }
        Some(ActionId::ContainerRestart | ActionId::ContainerMemoryLimit) => {
            (Signal::ContainerMemory, "web-1", 92.4, 80.0, Source::Docker)
        }
        Some(ActionId::NotifyOnly) => (Signal::HostMemory, "host", 91.0, 85.0, Source::Local),
        None => (Signal::HostCpu, "host", 97.0, 85.0, Source::Local),
    };
    Detection {
        signal,
        resource: Resource::parse(resource).expect("a valid sample resource"),
        severity: Severity::Warning,
        value,
        threshold,
        source,
        summary: format!(
            "{} of {resource} is {value} (threshold {threshold})",
            signal.as_str().replace('_', " ")
        ),
        labels: Default::default(),
    }
}

/// `docker inspect` as `pipeline::execute` records it (`container_state`).
fn sample_container(running: bool, started_at: &str, memory: i64, memory_swap: i64) -> TargetState {
    TargetState::Container(ContainerState {
        id: Some("3f9c2d5e8a7b41c6d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7".to_owned()),
        name: "web-1".to_owned(),
        state: Some(if running { "running" } else { "exited" }.to_owned()),
        started_at: Some(started_at.to_owned()),
        restart_count: Some(0),
        memory,
        memory_swap,
    })
}

/// What `Executor::snapshot` records before the fix, and what `Executor::run` returns after
/// it, for a plan (the shapes listed above [`execution_changes`]).
pub fn sample_records(
    plan: &crate::domain::ActionPlan,
    incident: &str,
) -> (TargetState, TargetState) {
    use crate::domain::{ActionPlan, CleanupPlan, CleanupResult};
    const MB: i64 = 1 << 20;
    const EARLIER: &str = "2026-11-28T08:00:00.123456789Z";
    const NOW: &str = "2026-11-28T10:01:01.987654321Z";
    match plan {
        ActionPlan::NotifyOnly => (TargetState::nothing(), TargetState::nothing()),
        // Cleanup sizes are in MB of 1,000,000 bytes (the sandbox_size signal's unit).
        ActionPlan::SandboxCleanup { dirs } => (
            TargetState::CleanupPlan(CleanupPlan {
                dirs: dirs.clone(),
                files: 3,
                bytes: 120_000_000,
                sample: ["logs/app.log", "logs/app.log.1", "tmp/upload.bin"]
                    .map(str::to_owned)
                    .to_vec(),
                quarantine_max_bytes: 50_000_000,
                quarantine_used_bytes: 0,
                restorable_files: 1,
                restorable_bytes: 40_000_000,
                deleted_files: 2,
                deleted_bytes: 80_000_000,
            }),
            TargetState::CleanupResult(CleanupResult {
                moved_files: 3,
                moved_bytes: 120_000_000,
                skipped: 0,
                quarantine: format!("/srv/sentinel/sandbox/.sentinel-quarantine/{incident}"),
                restorable_files: 2,
                restorable_bytes: 70_000_000,
                stored_bytes: 12_000_000,
                deleted_files: 1,
                deleted_bytes: 50_000_000,
                freed_bytes: 108_000_000,
                quarantine_skipped: None,
                quarantine_error: None,
            }),
        ),
        ActionPlan::ContainerStart { .. } => (
            sample_container(false, EARLIER, 512 * MB, 1024 * MB),
            sample_container(true, NOW, 512 * MB, 1024 * MB),
        ),
        ActionPlan::ContainerRestart { .. } => (
            sample_container(true, EARLIER, 512 * MB, 1024 * MB),
            sample_container(true, NOW, 512 * MB, 1024 * MB),
        ),
        ActionPlan::ContainerMemoryLimit { factor, .. } => {
            let memory = ((512 * MB) as f64 * factor).round() as i64;
            (
                sample_container(true, EARLIER, 512 * MB, 1024 * MB),
                sample_container(true, EARLIER, memory, 1024 * MB + (memory - 512 * MB)),
            )
        }
    }
}

/// The timeline entry that brought an incident to `status`, worded as the pipeline words it.
fn status_entry(status: Status, action: &str, operator: &str) -> (&'static str, String, String) {
    let sentinel = "sentinel".to_owned();
    let step = status.as_str();
    let (actor, message) = match status {
        Status::Detected => (sentinel, "host cpu of host is 97 (threshold 85)".to_owned()),
        Status::Analyzing => (sentinel, "analyzing".to_owned()),
        Status::Scheduled => (
            sentinel,
            format!(
                "{action} runs on its own at 2026-11-28T10:06:00.000Z, in 1m, unless someone \
                 stops it (the policy allows low risk; this is the veto window)"
            ),
        ),
        Status::AwaitingApproval => (
            sentinel,
            "waiting for an operator to approve: medium risk needs an operator".to_owned(),
        ),
        Status::Approved => (operator.to_owned(), format!("approved {action}")),
        Status::Rejected => (
            operator.to_owned(),
            "rejected: not during the release".to_owned(),
        ),
        Status::Executing => (sentinel, format!("executing {action}")),
        Status::Verifying => (sentinel, format!("executed {action}: done")),
        Status::Resolved => (
            sentinel,
            "verified: the signal is under its threshold".to_owned(),
        ),
        Status::RolledBack => (operator.to_owned(), format!("rolled back {action}: done")),
        Status::Escalated => (
            sentinel,
            "the approval request expired after 30m without an answer".to_owned(),
        ),
        Status::Failed if action == "none" => (
            sentinel,
            "lost the execution lease before running; nothing was done".to_owned(),
        ),
        Status::Failed => (
            sentinel,
            format!("{action} failed: docker: no such container"),
        ),
    };
    (step, actor, message)
}

/// Incidents for every catalogue action (and none) × every [`Status`] × every
/// [`ExecutionState`] (only "no execution" without an action), built from the domain types
/// and serialised as the card sync serialises them, so they follow the types.
pub fn sample_incidents() -> Vec<SampleIncident> {
    use crate::domain::{ActionId, Execution, Incident, IncidentId};
    let at = |minute: i64| {
        crate::domain::Timestamp::from_unix_millis(1_795_860_000_000 + minute * 60_000)
    };
    let operator = "slack:U123 (operator)";
    let mut samples = Vec::new();
    let actions = std::iter::once(None).chain(ActionId::ALL.into_iter().map(Some));
    for action in actions {
        for status in Status::ALL {
            let states: &[ExecutionState] = if action.is_some() {
                &ExecutionState::ALL
            } else {
                &[ExecutionState::None]
            };
            for &state in states {
                let id = IncidentId::parse("inc-sample").expect("a valid sample id");
                let detection = sample_detection(action);
                let mut incident = Incident::open(id.clone(), &detection, at(0));
                if status != Status::Detected {
                    incident.record("analyzing", "sentinel", "analyzing", at(1));
                }
                let name = action.map_or("none", |a| a.as_str());
                if let Some(action) = action {
                    let plan = sample_plan(action);
                    let (before, after) = sample_records(&plan, id.as_str());
                    incident.proposed_action = Some(plan.to_proposed());
                    incident.risk = Some(action.risk_floor());
                    incident.root_cause =
                        Some(format!("{} needs {name}", detection.resource.as_str()));
                    incident.confidence = Some(0.8);
                    incident.analyzer = Some("rules".to_owned());
                    incident.evidence = vec![crate::domain::EvidenceItem {
                        id: "metric-1".to_owned(),
                        kind: crate::domain::EvidenceKind::Metric,
                        text: detection.summary.clone(),
                    }];
                    incident.evidence_cited = vec!["metric-1".to_owned()];
                    if plan.container().is_some() {
                        incident.changes = vec![crate::domain::Change {
                            at: at(-4),
                            kind: crate::domain::ChangeKind::Create,
                            detail: format!(
                                "{} was created from image shop/web:2.1 (4f1c2a9e0b7d), 4 min \
                                 before the incident opened",
                                detection.resource.as_str()
                            ),
                        }];
                    }
                    incident.snapshot = Some(before.clone());
                    incident.record(
                        "analyzed",
                        "analyzer:rules",
                        format!(
                            "proposed {name} ({} risk, confidence 0.80)",
                            action.risk_floor()
                        ),
                        at(1),
                    );
                    let approved_by = if action.risk_floor() == crate::domain::Risk::Low {
                        "policy (low risk, automatic)".to_owned()
                    } else {
                        incident.approvals = vec![operator.to_owned()];
                        operator.to_owned()
                    };
                    let execution =
                        |finished: bool, after: Option<TargetState>, rolled_back: bool| Execution {
                            action: plan.to_proposed(),
                            approved_by: approved_by.clone(),
                            started_at: at(2),
                            finished_at: finished.then(|| at(3)),
                            before: before.clone(),
                            after,
                            reversible: action.reversible(),
                            rolled_back_at: rolled_back.then(|| at(9)),
                            rollback: None,
                            proposal_id: None,
                            fencing_token: None,
                        };
                    incident.execution = match state {
                        ExecutionState::None => None,
                        ExecutionState::Executed => Some(execution(true, Some(after), false)),
                        ExecutionState::RolledBack => Some(execution(true, Some(after), true)),
                        ExecutionState::Failed => Some(execution(true, None, false)),
                        ExecutionState::Unfinished => Some(execution(false, None, false)),
                    };
                }
                if status != Status::Detected {
                    let (step, actor, message) = status_entry(status, name, operator);
                    incident.record(step, &actor, message, at(5));
                }
                incident.status = status;
                incident.scheduled_for = (status == Status::Scheduled).then(|| at(6));
                incident.resolved_at = (status == Status::Resolved).then(|| at(5));
                incident.version = 7;
                let incident = serde_json::to_value(&incident).expect("an incident serialises");
                samples.push(SampleIncident {
                    action,
                    status,
                    execution: state,
                    incident,
                });
            }
        }
    }
    samples
}

/// What [`render_every_sample`] covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Sample incidents, one per (action, status, execution state).
    pub incidents: usize,
    /// Renders in all, every template.
    pub renders: usize,
}

/// Renders every template with its sample and every incident template with every
/// [`sample_incidents`] incident (the card with and without a status page, each timeline
/// entry as a reply, the detail, the reject dialog, the lists): what `sentinel config
/// check` runs. The error names the template and the pair.
pub fn render_every_sample() -> Result<Sweep, String> {
    let mut renders = 0;
    let mut check = |name: &str, context: &Value, label: &str| {
        renders += 1;
        render_checked(name, context)
            .map(drop)
            .map_err(|e| format!("{e} (with {label})"))
    };
    for name in NAMES {
        check(name, &sample_context(name), "its sample")?;
    }
    let samples = sample_incidents();
    for sample in &samples {
        let incident = &sample.incident;
        let label = sample.label();
        for public_url in ["", "https://sentinel.example.com"] {
            let context = json!({ "incident": incident, "public_url": public_url });
            check("incident_card", &context, &label)?;
        }
        for entry in incident["timeline"].as_array().into_iter().flatten() {
            let context = json!({ "incident": incident, "entry": entry });
            check("timeline_reply", &context, &label)?;
        }
        check("incident_detail", &json!({ "incident": incident }), &label)?;
        check("reject_modal", &json!({ "incident": incident }), &label)?;
        check("incidents", &json!({ "incidents": [incident] }), &label)?;
        let mut status = sample_context("status");
        status["incidents"] = json!([incident]);
        check("status", &status, &label)?;
    }
    Ok(Sweep {
        incidents: samples.len(),
        renders,
    })
}

/// An incident for the sample contexts: awaiting approval, with a proposal and a snapshot.
fn sample_incident() -> Value {
    json!({
        "id": "inc-01jdx3sample", "fingerprint": "container_memory:web-1",
        "signal": "container_memory", "resource": "web-1", "severity": "warning",
        "status": "awaiting_approval", "value": 72.4, "threshold": 60.0, "risk": "medium",
        "proposed_action": {"action": "container_memory_limit",
                            "params": {"container": "web-1", "factor": 1.5}},
        "root_cause": "container web-1 uses 72.4 % of its memory limit; raising the limit 1.5× gives it room without a restart; web-1 was recreated from a new image 4 min before it started failing; raising its memory limit could hide a bad deploy",
        "confidence": 0.8, "analyzer": "rules",
        "opened_at": "2026-11-28T10:00:00.000Z", "updated_at": "2026-11-28T10:00:05.000Z",
        "version": 4,
        "timeline": [
            {"at": "2026-11-28T10:00:00.000Z", "step": "detected", "actor": "sentinel",
             "message": "container memory of web-1 is 72.4 % (threshold 60 %)"},
            {"at": "2026-11-28T10:00:02.000Z", "step": "analyzing", "actor": "sentinel",
             "message": "analyzing"},
            {"at": "2026-11-28T10:00:04.000Z", "step": "analyzed", "actor": "analyzer:rules",
             "message": "web-1 grew past its 512 MB limit → proposed container_memory_limit (medium risk, confidence 0.80)"},
            {"at": "2026-11-28T10:00:05.000Z", "step": "awaiting_approval", "actor": "sentinel",
             "message": "waiting for an operator to approve: medium risk needs an operator"}
        ],
        "source": "docker", "summary": "container memory of web-1 is 72.4 % (threshold 60 %)",
        "occurrences": 3, "last_seen_at": "2026-11-28T10:00:05.000Z", "resolved_at": null,
        "labels": {"team": "web"},
        "evidence": [
            {"id": "metric-1", "kind": "metric",
             "text": "container memory of web-1 is 72.4 % against a threshold of 60 % (from docker, seen 3 times)"},
            {"id": "docker-1", "kind": "docker", "text": "web-1 is running"},
            {"id": "metric-2", "kind": "metric", "text": "web-1 uses 388.6 MB (72.4 % of its limit)"},
            {"id": "change-1", "kind": "change",
             "text": "a container named web-1 (9d2e4b7a1c3f, image shop/web:2.0 (77aa01c2d3e4)) was removed, 5 min before the incident opened"},
            {"id": "change-2", "kind": "change",
             "text": "web-1 was created from image shop/web:2.1 (4f1c2a9e0b7d), 5 min before the incident opened"},
            {"id": "change-3", "kind": "change",
             "text": "web-1 was started from a new image shop/web:2.1 (4f1c2a9e0b7d); before, it ran image shop/web:2.0 (77aa01c2d3e4), 4 min before the incident opened"}
        ],
        "evidence_cited": ["metric-1", "metric-2", "change-1", "change-2", "change-3"],
        "changes": [
            {"at": "2026-11-28T09:55:10.000Z", "kind": "destroy",
             "detail": "a container named web-1 (9d2e4b7a1c3f, image shop/web:2.0 (77aa01c2d3e4)) was removed, 5 min before the incident opened"},
            {"at": "2026-11-28T09:55:11.000Z", "kind": "create",
             "detail": "web-1 was created from image shop/web:2.1 (4f1c2a9e0b7d), 5 min before the incident opened"},
            {"at": "2026-11-28T09:55:40.000Z", "kind": "start",
             "detail": "web-1 was started from a new image shop/web:2.1 (4f1c2a9e0b7d); before, it ran image shop/web:2.0 (77aa01c2d3e4), 4 min before the incident opened"}
        ],
        "snapshot": {"id": "3f9c2d5e8a7b41c6d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7",
                     "name": "web-1", "state": "running",
                     "started_at": "2026-11-28T08:00:00.123456789Z", "restart_count": 0,
                     "memory": 536870912, "memory_swap": 1073741824},
        "approvals": [], "execution": null
    })
}

/// Sample data for a template: what `sentinel blocks render` prints and `config check`
/// renders. `Null` for an unknown name.
pub fn sample_context(template: &str) -> Value {
    let incident = sample_incident();
    match template {
        "status" => json!({
            "mode": "approve", "paused": false,
            "signals": [
                {"signal": "host_cpu", "resource": "host", "value": 23.5, "threshold": 85.0,
                 "state": "ok", "source": "local"},
                {"signal": "container_memory", "resource": "web-1", "value": 72.4,
                 "threshold": 60.0, "state": "breached", "source": "docker"},
                {"signal": "network_latency", "resource": "host", "value": 31.0,
                 "threshold": 200.0, "state": "ok", "source": "estimate",
                 "reason": "from 3 MB/s and 0 errors/s of traffic"},
                {"signal": "container_down", "resource": "containers", "value": null,
                 "threshold": 1.0, "state": "unavailable", "source": "docker",
                 "reason": "Docker: connection refused"},
                {"signal": "sandbox_size", "resource": "sandbox", "value": null,
                 "threshold": 100.0, "state": "pending", "source": "sandbox",
                 "reason": "waiting for the first monitor cycle"}
            ],
            "incidents": [incident],
            "public_url": "https://sentinel.example.com"
        }),
        "help" => json!({
            "commands": [
                {"usage": "/sentinel status", "who": "viewer",
                 "what": "health of every signal and the open incidents"},
                {"usage": "/sentinel approve <id>", "who": "operator (medium), admin (high)",
                 "what": "approve the proposed fix"},
                {"usage": "/sentinel help", "who": "anyone", "what": "this list"}
            ]
        }),
        "incidents" => json!({ "incidents": [incident] }),
        "incident_detail" | "reject_modal" => json!({ "incident": incident }),
        "incident_card" => json!({
            "incident": incident,
            "public_url": "https://sentinel.example.com",
            "dry_run_preview": "would set the memory limit of web-1 from 512 MB to 768 MB"
        }),
        "home" => {
            let reference = format!(
                r#"{{"incident":"{}","proposal":"prop-0123abcd"}}"#,
                incident["id"].as_str().unwrap_or_default()
            );
            json!({
                "role": "operator", "mode": "auto", "paused": false, "open": 2,
                "signals": sample_context("status")["signals"],
                "signals_more": 0,
                "approvals": [{"incident": incident, "ref": reference, "needs": "operator"}],
                "approvals_more": 0, "approvals_elsewhere": 1,
                "fixes": [
                    {"id": "inc-01jdx3fixed", "action": "container_start", "resource": "api-2",
                     "outcome": "verified", "at": "2026-11-28T09:41:00.000Z"},
                    {"id": "inc-01jdx3older", "action": "sandbox_cleanup", "resource": "sandbox",
                     "outcome": "rolled back", "at": "2026-11-28T08:12:00.000Z"}
                ],
                "fixes_more": 3,
                "public_url": "https://sentinel.example.com"
            })
        }
        "timeline_reply" => json!({
            "incident": incident,
            "entry": {"at": "2026-11-28T10:00:05.000Z", "step": "awaiting_approval",
                      "actor": "sentinel",
                      "message": "waiting for an operator to approve: medium risk needs an operator"}
        }),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_render_comes_from_the_cache_and_equals_a_fresh_one() {
        let context = sample_context("status");
        let first = render("status", &context).unwrap();
        let again = render("status", &context).unwrap();
        assert_eq!(first, again);
        assert_eq!(again, render_checked("status", &context).unwrap());
        let mut changed = context.clone();
        changed["mode"] = json!("dry-run");
        let other = render("status", &changed).unwrap();
        assert_ne!(other, first, "another context is rendered anew");
        assert_eq!(other, render_checked("status", &changed).unwrap());
        assert!(matches!(
            render("nope", &context),
            Err(BlocksError::UnknownTemplate(_))
        ));
    }

    #[test]
    fn a_field_block_kit_does_not_know_is_named_with_its_path() {
        let written = serde_json::json!([
            {"type": "divider"},
            {"type": "section", "text": {"type": "mrkdwn", "text": "x", "verbtim": true}},
        ]);
        let parsed: Vec<SlackBlock> = serde_json::from_value(written.clone()).unwrap();
        let error = same_after_round_trip("card", "blocks", &written, &parsed).unwrap_err();
        assert_eq!(
            error.to_string(),
            BlocksError::Invalid {
                template: "card".into(),
                message: "blocks[1].text.verbtim: not part of Block Kit (or not as written)".into()
            }
            .to_string()
        );
        let fine = serde_json::json!([{"type": "divider"}]);
        let parsed: Vec<SlackBlock> = serde_json::from_value(fine.clone()).unwrap();
        assert!(same_after_round_trip("card", "blocks", &fine, &parsed).is_ok());
    }

    #[test]
    fn escaping_covers_slacks_three_characters() {
        assert_eq!(
            escape("<!channel> & <https://x|y>"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt;"
        );
    }

    #[test]
    fn truncation_never_splits_an_entity() {
        let text = escape("ab<<<<");
        assert_eq!(truncate_escaped(&text, 5), "ab…");
        assert_eq!(truncate_escaped(&text, 7), "ab&lt;…");
        assert_eq!(truncate_escaped("abc", 3), "abc");
        assert_eq!(truncate_escaped("abcd", 3).chars().count(), 3);
    }

    #[test]
    fn trailing_commas_go_but_commas_in_strings_stay() {
        assert_eq!(
            strip_trailing_commas(r#"{"a": [1, 2, ], "b": ",]", }"#),
            r#"{"a": [1, 2 ], "b": ",]" }"#
        );
        assert_eq!(strip_trailing_commas(r#"["\",]",]"#), r#"["\",]"]"#);
    }

    #[test]
    fn the_names_are_the_templates() {
        let names: Vec<&str> = TEMPLATES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, NAMES);
    }

    fn execution(action: crate::domain::ActionId, state: ExecutionState) -> Value {
        let sample = sample_incidents()
            .into_iter()
            .find(|s| {
                s.action == Some(action) && s.status == Status::Resolved && s.execution == state
            })
            .expect("a sample");
        sample.incident["execution"].clone()
    }

    #[test]
    fn execution_records_read_as_changes_for_people() {
        use crate::domain::ActionId::*;
        use ExecutionState::*;
        let q = "/srv/sentinel/sandbox/.sentinel-quarantine/inc-sample";
        assert_eq!(
            execution_changes(&execution(SandboxCleanup, Executed)),
            [
                "logs, tmp, cache: 3 files (120 MB) → 3 files (120 MB) removed",
                "files: logs/app.log, logs/app.log.1, tmp/upload.bin",
                "restorable: 2 files (70 MB), compressed to 12 MB in the quarantine",
                "deleted for good: 1 file (50 MB): they did not fit in the quarantine",
                "freed: 108 MB",
                &format!("quarantine: {q}"),
            ]
        );
        assert_eq!(
            execution_changes(&execution(SandboxCleanup, RolledBack))
                .last()
                .unwrap(),
            "rolled back: the quarantined files were put back; 1 file (50 MB) could not be, \
             deleted for good"
        );
        assert_eq!(
            execution_changes(&execution(ContainerMemoryLimit, Executed)),
            [
                "memory limit: 512 MB → 768 MB",
                "memory + swap limit: 1024 MB → 1280 MB"
            ]
        );
        assert_eq!(
            execution_changes(&execution(ContainerStart, Executed)),
            [
                "state: exited → running",
                "started: 2026-11-28 08:00 UTC → 2026-11-28 10:01 UTC"
            ]
        );
        assert_eq!(
            execution_changes(&execution(ContainerRestart, Executed)),
            ["started: 2026-11-28 08:00 UTC → 2026-11-28 10:01 UTC"]
        );
        assert_eq!(
            execution_changes(&execution(ContainerMemoryLimit, Failed)),
            ["running, memory limit 512 MB → no result: the fix failed"]
        );
        assert_eq!(
            execution_changes(&execution(SandboxCleanup, Unfinished))[0],
            "logs, tmp, cache: 3 files (120 MB) → not finished yet"
        );
        assert!(execution_changes(&execution(NotifyOnly, Executed)).is_empty());
        assert_eq!(
            execution_changes(&execution(NotifyOnly, Unfinished)),
            ["not finished yet"]
        );
    }

    #[test]
    fn odd_records_read_too_keys_on_one_side_nested_values_and_nulls() {
        let record = json!({
            "action": {"action": "container_restart", "params": {}},
            "finished_at": "2026-11-28T10:01:00.000Z",
            "before": {"state": null, "only_before": 1, "limits": {"cpu": 2}, "memory": 0},
            "after": {"state": "running", "only_after": [1, 2], "limits": {"cpu": 4},
                      "memory": 268435456},
        });
        assert_eq!(
            execution_changes(&record),
            [
                "state: – → running",
                "memory limit: none → 256 MB",
                "limits: cpu: 2 → cpu: 4",
                "only after: – → 1, 2",
                "only before: 1 → –",
            ]
        );
        // A snapshot that failed, a cleanup report with a list of skipped names, no record.
        let record = json!({
            "action": {"action": "sandbox_cleanup", "params": {"dirs": ["logs"]}},
            "finished_at": "2026-11-28T10:01:00.000Z",
            "before": {"error": "sandbox: permission denied"},
            "after": {"moved_files": 1, "moved_bytes": 1572864, "skipped": ["logs/x: changed"],
                      "quarantine": null},
        });
        assert_eq!(
            execution_changes(&record),
            [
                "state before: could not be read (sandbox: permission denied)",
                "logs: – → 1 file moved to the quarantine (1.6 MB)",
                "skipped: 1 file left in place",
            ]
        );
        assert_eq!(execution_changes(&Value::Null), ["not finished yet"]);
        assert!(proposal_changes(&Value::Null, &Value::Null).is_empty());
    }

    #[test]
    fn actors_read_as_people() {
        assert_eq!(person("slack:U123 (admin)"), "<@U123> (admin)");
        assert_eq!(
            without_mentions("by <@U123> (admin) at <b>"),
            "by  (admin) at <b>"
        );
        assert_eq!(without_mentions("<@here> <@U1"), "<@here> <@U1");
        // Not an id: no mention is made of it.
        assert_eq!(
            person("slack:<!here> (admin)"),
            "Slack user <!here> (admin)"
        );
        assert_eq!(
            person("api:ci-bot (operator)"),
            "ci-bot (operator) through the API"
        );
        assert_eq!(person("sentinel"), "Sentinel");
        assert_eq!(person("analyzer:rules"), "Sentinel's rules analyzer");
        assert_eq!(
            person("slack:U1 (admin) and slack:U2 (admin)"),
            "<@U1> (admin) and <@U2> (admin)"
        );
        assert_eq!(
            person("policy (low risk, automatic)"),
            "policy (low risk, automatic)"
        );
    }

    #[test]
    fn the_sweep_covers_every_action_status_and_execution_state() {
        use crate::domain::ActionId;
        let samples = sample_incidents();
        let expected = Status::ALL.len() * (1 + ActionId::ALL.len() * ExecutionState::ALL.len());
        assert_eq!(samples.len(), expected);
        assert_eq!(samples.len(), 312);
        let labels: HashSet<String> = samples.iter().map(SampleIncident::label).collect();
        assert_eq!(labels.len(), samples.len(), "every pair once");
        for sample in &samples {
            // The samples are real incidents: they parse back into the domain type.
            let incident: crate::domain::Incident =
                serde_json::from_value(sample.incident.clone()).unwrap();
            assert_eq!(incident.status, sample.status);
            assert_eq!(
                incident.proposed_action.map(|p| p.action),
                sample.action,
                "{}",
                sample.label()
            );
            assert_eq!(
                incident.execution.is_some(),
                sample.execution != ExecutionState::None
            );
        }
        let sweep = render_every_sample().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sweep.incidents, 312);
        assert!(sweep.renders > 312 * 6, "{sweep:?}");
    }

    #[test]
    fn the_rollback_button_is_offered_exactly_where_a_rollback_is_accepted() {
        use crate::domain::{Actor, Role};
        let admin = Actor::SlackUser {
            user_id: "U1".into(),
            role: Role::Admin,
        };
        let mut offered = 0;
        for sample in sample_incidents() {
            let incident: crate::domain::Incident =
                serde_json::from_value(sample.incident.clone()).unwrap();
            let asked = crate::pipeline::engine::Event::RollbackRequested {
                actor: admin.clone(),
            };
            let accepted = matches!(
                crate::pipeline::engine::apply(&incident, &asked, incident.updated_at),
                crate::pipeline::engine::Outcome::Moved(_)
            );
            let card = render(
                "incident_card",
                &json!({"incident": sample.incident, "public_url": ""}),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", sample.label()));
            let shown = serde_json::to_string(&card.blocks)
                .unwrap()
                .contains(r#""action_id":"rollback""#);
            assert_eq!(shown, accepted, "{}", sample.label());
            offered += usize::from(shown);
        }
        // Three reversible actions, executed or failed (finished), verifying or resolved.
        assert_eq!(offered, 3 * 2 * 2);
    }

    #[test]
    fn a_failed_render_falls_back_to_plain_text_and_is_counted() {
        let metrics = crate::telemetry::metrics::metrics();
        let before = metrics.slack_render_failures("incident_card");
        // An incident without most of its fields (no version, no timeline): the card
        // template cannot draw it.
        let broken = json!({
            "incident": {"id": "inc-broken", "signal": "container_memory",
                         "resource": "<!channel>", "status": "awaiting_approval"},
        });
        let error = render("incident_card", &broken).unwrap_err().to_string();
        assert!(error.contains("undefined value"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
        let shown = render_or_fallback("incident_card", &broken);
        assert_eq!(metrics.slack_render_failures("incident_card"), before + 1);
        assert_eq!(shown, fallback("incident_card", &broken));
        assert_eq!(shown.blocks.len(), 1);
        assert_eq!(shown.blocks[0]["type"], "section");
        let text = shown.blocks[0]["text"]["text"].as_str().unwrap();
        assert!(
            text.contains(
                "Incident inc-broken: container memory on &lt;!channel&gt;, status awaiting approval."
            ),
            "{text}"
        );
        assert!(text.contains("could not be drawn"), "{text}");
        // A reply without its entry falls back too, and is counted under its template.
        let replies = metrics.slack_render_failures("timeline_reply");
        let reply =
            render_or_fallback("timeline_reply", &json!({ "incident": broken["incident"] }));
        assert_eq!(metrics.slack_render_failures("timeline_reply"), replies + 1);
        assert!(
            reply.text.starts_with("Incident inc-broken"),
            "{}",
            reply.text
        );
        // Nothing at all to go on still gives a valid card.
        let empty = fallback("incident_card", &json!({}));
        let text = empty.blocks[0]["text"]["text"].as_str().unwrap();
        assert!(text.contains("an unknown incident"), "{text}");
        assert!(text.contains("full card could not be drawn"), "{text}");
    }

    #[test]
    fn every_sample_renders() {
        for name in template_names() {
            render(name, &sample_context(name)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
