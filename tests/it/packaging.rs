//! Packaging: the Dockerfile, docker-compose.yml, Prometheus, Grafana and the Kubernetes
//! manifests, checked against the code they package: the files `src/` compiles in, the route
//! table, the metric names, the environment variables of SPEC §9 and the configuration the
//! real binary accepts. Images cannot be built here (no registry to pull base images from),
//! so the Dockerfile is checked as text. Missing tools fail the test, naming the package.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_norway::Value;

use crate::helpers::spawn_app;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// SPEC §9: every environment variable Sentinel reads.
const SPEC_ENV: &[&str] = &[
    "SLACK_SIGNING_SECRET",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_API_URL",
    "SLACK_CHANNEL",
    "SENTINEL_LISTEN",
    "SENTINEL_CONFIG",
    "SENTINEL_DATA_DIR",
    "SENTINEL_SANDBOX_DIR",
    "REDIS_URL",
    "PROMETHEUS_URL",
    "DOCKER_HOST",
    "SENTINEL_LLM_URL",
    "SENTINEL_LLM_MODEL",
    "SENTINEL_LLM_API_KEY",
    "OPENROUTER_API_KEY",
    "SENTINEL_INTERVAL",
    "SENTINEL_SETTLE",
    "PUBLIC_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "RUST_LOG",
];

/// Sentinel's own metrics (`GET /metrics`); histograms by their base name.
const METRICS: &[&str] = &[
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

const DASHBOARD: &str = "manifests/grafana/dashboards/sentinel.json";

fn root() -> &'static Path {
    Path::new(ROOT)
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every YAML document in a file (empty documents left out).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut documents = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .unwrap_or_else(|e| panic!("{} document {}: {e}", path.display(), i + 1));
        if !value.is_null() {
            documents.push(value);
        }
    }
    documents
}

fn yaml(relative: &str) -> Value {
    let mut documents = yaml_documents(&root().join(relative));
    assert_eq!(documents.len(), 1, "{relative}: one YAML document");
    documents.remove(0)
}

/// A string field, or a failure naming where it was expected.
fn string<'a>(value: &'a Value, key: &str, what: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: `{key}` is not a string: {:?}", value[key]))
}

fn sequence<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what}: expected a list, got {value:?}"))
}

/// A string map (labels, selectors) as pairs.
fn string_map(value: &Value, what: &str) -> BTreeMap<String, String> {
    let mapping = value
        .as_mapping()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {value:?}"));
    mapping
        .iter()
        .map(|(k, v)| {
            let k = k.as_str().unwrap_or_else(|| panic!("{what}: key {k:?}"));
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("{what}.{k}: not a scalar: {other:?}"),
            };
            (k.to_owned(), v)
        })
        .collect()
}

/// An installed tool, or a failure naming the Debian package: these tests never skip.
fn tool(name: &str, package: &str) -> Command {
    let found = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is not installed; this test needs it: apt-get install {package} \
         (.ci/run installs it)"
    );
    let mut command = Command::new(name);
    command.current_dir(root());
    command
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"))
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `a/b/../c` → `a/c`, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// YAML everywhere

#[test]
fn every_yaml_file_under_manifests_and_the_compose_file_parse() {
    let mut files = vec![root().join("docker-compose.yml")];
    for entry in walkdir::WalkDir::new(root().join("manifests")) {
        let entry = entry.expect("manifests/ is readable");
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        ) {
            files.push(path.to_owned());
        }
    }
    assert!(files.len() > 10, "found only {files:?}");
    for file in &files {
        assert!(
            !yaml_documents(file).is_empty(),
            "{} has no YAML document",
            file.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// Dockerfile

/// Every file `src/` compiles in with `include_str!`/`include_bytes!`, relative to the
/// repository root.
fn embedded_files() -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    for entry in walkdir::WalkDir::new(root().join("src")) {
        let entry = entry.expect("src/ is readable");
        if entry.path().extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let source = std::fs::read_to_string(entry.path()).unwrap();
        // Comments may mention the macros; only code counts.
        let code: String = source
            .lines()
            .map(|line| {
                if line.trim_start().starts_with("//") {
                    ""
                } else {
                    line
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        for macro_name in ["include_str!", "include_bytes!"] {
            for (at, _) in code.match_indices(macro_name) {
                let rest = code[at + macro_name.len()..].trim_start();
                let Some(rest) = rest.strip_prefix('(') else {
                    continue;
                };
                let rest = rest.trim_start();
                let where_ = format!("{} ({macro_name})", entry.path().display());
                let path = if let Some(literal) = rest.strip_prefix('"') {
                    let literal = &literal[..literal.find('"').expect("a closed string")];
                    let dir = entry.path().parent().unwrap();
                    normalize(&dir.join(literal))
                        .strip_prefix(root())
                        .unwrap_or_else(|_| panic!("{where_}: {literal} is outside the repository"))
                        .to_owned()
                } else if let Some(tail) = rest
                    .strip_prefix("concat!(env!(\"CARGO_MANIFEST_DIR\")")
                    .and_then(|tail| tail.trim_start().strip_prefix(','))
                {
                    let tail = tail.trim_start().strip_prefix('"').unwrap_or_else(|| {
                        panic!("{where_}: expected a string after CARGO_MANIFEST_DIR")
                    });
                    let literal = &tail[..tail.find('"').expect("a closed string")];
                    normalize(Path::new(literal.trim_start_matches('/')))
                } else {
                    panic!(
                        "{where_}: cannot read this argument ({}…); teach \
                         tests/it/packaging.rs::embedded_files this form",
                        &rest[..rest.len().min(60)]
                    )
                };
                assert!(
                    root().join(&path).is_file(),
                    "{where_}: {} does not exist",
                    path.display()
                );
                files.insert(path);
            }
        }
    }
    files
}

/// One Dockerfile instruction: the keyword (upper case) and its arguments.
struct Instruction {
    keyword: String,
    args: String,
}

/// The stages of a Dockerfile, each a list of instructions starting with its FROM.
fn dockerfile_stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages: Vec<Vec<Instruction>> = Vec::new();
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        };
        if instruction.keyword == "FROM" {
            stages.push(Vec::new());
        }
        stages
            .last_mut()
            .expect("the Dockerfile starts with FROM")
            .push(instruction);
    }
    stages
}

#[test]
fn dockerfile_runs_as_non_root_with_a_healthcheck_and_copies_every_embedded_file() {
    let text = read("Dockerfile");
    let stages = dockerfile_stages(&text);
    assert!(
        stages.len() >= 2,
        "a multi-stage build: {} stage(s)",
        stages.len()
    );
    let last = stages.last().unwrap();

    let user = last
        .iter()
        .rev()
        .find(|i| i.keyword == "USER")
        .expect("the final stage sets USER");
    let name = user.args.split(':').next().unwrap();
    assert!(
        !["root", "0", ""].contains(&name),
        "the final stage runs as {:?}",
        user.args
    );
    let healthcheck = last
        .iter()
        .find(|i| i.keyword == "HEALTHCHECK")
        .expect("the final stage has a HEALTHCHECK");
    assert!(
        healthcheck.args.contains("CMD") && healthcheck.args.contains("/healthz"),
        "HEALTHCHECK probes /healthz: {}",
        healthcheck.args
    );
    let health_route = sentinel::app::routes()
        .into_iter()
        .any(|r| r.method == axum::http::Method::GET && r.path == "/healthz");
    assert!(health_route, "GET /healthz is a route of the app");

    // The variables the image sets are Sentinel's own.
    for env in last.iter().filter(|i| i.keyword == "ENV") {
        for pair in env.args.split_whitespace() {
            let name = pair.split('=').next().unwrap();
            assert!(SPEC_ENV.contains(&name), "ENV {name} is not in SPEC §9");
        }
    }

    // The build stage (the one running cargo) gets every file the compiler reads from
    // outside src/, at the same path below its WORKDIR, and .dockerignore keeps none out.
    let build = stages
        .iter()
        .find(|stage| {
            stage
                .iter()
                .any(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        })
        .expect("a stage runs cargo build");
    let workdir = build
        .iter()
        .rev()
        .find(|i| i.keyword == "WORKDIR")
        .map(|i| i.args.clone())
        .unwrap_or_else(|| "/".to_owned());
    // (source as written, where it lands relative to WORKDIR)
    let mut copies: Vec<(PathBuf, PathBuf)> = Vec::new();
    for copy in build.iter().filter(|i| i.keyword == "COPY") {
        let words: Vec<&str> = copy
            .args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        assert!(words.len() >= 2, "COPY {}", copy.args);
        let (sources, dest) = words.split_at(words.len() - 1);
        let dest = dest[0];
        let dest_dir = dest.ends_with('/') || sources.len() > 1;
        let dest = match dest.strip_prefix('/') {
            Some(absolute) => {
                let relative = Path::new("/").join(absolute);
                relative
                    .strip_prefix(&workdir)
                    .unwrap_or_else(|_| panic!("COPY to {dest} is outside WORKDIR {workdir}"))
                    .to_owned()
            }
            None => normalize(Path::new(dest)),
        };
        for source in sources {
            let source = normalize(Path::new(source));
            let lands = if dest_dir {
                dest.join(source.file_name().unwrap_or_default())
            } else {
                dest.clone()
            };
            copies.push((source, lands));
        }
    }
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.trim_end_matches('/').to_owned())
        .collect();
    let mut needed = embedded_files();
    for file in ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs"] {
        needed.insert(PathBuf::from(file));
    }
    let top_level: BTreeSet<_> = needed
        .iter()
        .filter_map(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    assert!(
        top_level.contains("blocks") && top_level.contains("config"),
        "the scan of src/ found {top_level:?}"
    );
    for file in &needed {
        let copied = copies.iter().find_map(|(source, lands)| {
            let rest = file.strip_prefix(source).ok()?;
            Some(normalize(&lands.join(rest)))
        });
        let lands = copied.unwrap_or_else(|| {
            panic!(
                "the Dockerfile's build stage does not COPY {} (src/ compiles it in); \
                 add `COPY {} ./{}`",
                file.display(),
                file.components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy(),
                file.components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy(),
            )
        });
        assert_eq!(
            &lands,
            file,
            "the build stage puts {} at {} below WORKDIR",
            file.display(),
            lands.display()
        );
        for pattern in &ignored {
            let hit = match pattern.strip_prefix("**/") {
                Some(name) => file.components().any(|c| c.as_os_str() == name),
                None => file.starts_with(pattern),
            };
            assert!(
                !hit,
                ".dockerignore's {pattern} leaves out {}",
                file.display()
            );
        }
    }
    for excluded in ["target", ".git"] {
        assert!(
            ignored.iter().any(|p| p == excluded),
            ".dockerignore leaves out {excluded}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// docker-compose.yml and Prometheus

fn compose() -> Value {
    yaml("docker-compose.yml")
}

/// A service's `environment`, in either of compose's two forms.
fn compose_environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(_) => string_map(&service["environment"], "environment"),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("KEY=value");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment: {other:?}"),
    }
}

#[test]
fn docker_compose_config_accepts_the_compose_file() {
    let output = run(tool("docker-compose", "docker-compose")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .args(["--file", "docker-compose.yml", "config", "--quiet"]));
    assert!(
        output.status.success(),
        "docker-compose config rejects docker-compose.yml: {}",
        describe(&output)
    );
}

#[test]
fn compose_services_are_wired_to_each_other_and_published_on_loopback_only() {
    let compose = compose();
    let services = compose["services"]
        .as_mapping()
        .expect("compose has services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    for expected in [
        "sentinel",
        "redis",
        "prometheus",
        "node-exporter",
        "cadvisor",
        "jaeger",
        "grafana",
    ] {
        assert!(
            names.contains(expected),
            "compose lacks {expected}: {names:?}"
        );
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        if let Some(ports) = service["ports"].as_sequence() {
            for port in ports {
                let port = port.as_str().expect("ports written as strings");
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{name} publishes {port} beyond loopback"
                );
            }
        }
        if let Some(volumes) = service["volumes"].as_sequence() {
            for volume in volumes {
                let source = volume.as_str().unwrap().split(':').next().unwrap();
                if source.starts_with("./") {
                    assert!(
                        root().join(source).exists(),
                        "{name} mounts {source}, which does not exist"
                    );
                }
            }
        }
    }

    let sentinel = &compose["services"]["sentinel"];
    assert!(
        sentinel["build"].is_string() || sentinel["build"].is_mapping(),
        "sentinel is built from the Dockerfile"
    );
    let env = compose_environment(sentinel);
    for name in env.keys() {
        assert!(
            SPEC_ENV.contains(&name.as_str()),
            "compose gives sentinel {name}, which is not among SPEC §9's variables"
        );
    }
    let host_of = |url: &str| -> String {
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        rest.split([':', '/']).next().unwrap().to_owned()
    };
    for (var, scheme) in [
        ("REDIS_URL", "redis://"),
        ("PROMETHEUS_URL", "http://"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"),
    ] {
        let url = env.get(var).unwrap_or_else(|| panic!("compose sets {var}"));
        assert!(url.starts_with(scheme), "{var}={url}");
        assert!(
            names.contains(host_of(url).as_str()),
            "{var}={url} names no compose service"
        );
    }
    assert_eq!(env["OTEL_EXPORTER_OTLP_ENDPOINT"], "http://jaeger:4318");

    // Prometheus scrapes compose services, Sentinel included.
    let prometheus = yaml("manifests/prometheus.yml");
    let mut targets = BTreeMap::new();
    for job in sequence(&prometheus["scrape_configs"], "scrape_configs") {
        for config in sequence(&job["static_configs"], "static_configs") {
            for target in sequence(&config["targets"], "targets") {
                let target = target.as_str().unwrap();
                let (host, _) = target.split_once(':').expect("host:port");
                assert!(
                    names.contains(host),
                    "Prometheus scrapes {target}: no such compose service"
                );
                targets.insert(host.to_owned(), string(job, "job_name", "job").to_owned());
            }
        }
    }
    for host in ["sentinel", "node-exporter", "cadvisor"] {
        assert!(targets.contains_key(host), "Prometheus scrapes {host}");
    }
}

#[test]
fn promtool_accepts_the_prometheus_configuration() {
    let output =
        run(tool("promtool", "prometheus").args(["check", "config", "manifests/prometheus.yml"]));
    assert!(
        output.status.success(),
        "promtool check config: {}",
        describe(&output)
    );
}

// ---------------------------------------------------------------------------------------
// Grafana

/// The metric names a PromQL expression reads (functions, keywords, label names, label
/// values, durations, numbers and Grafana variables left out).
fn promql_metrics(expr: &str) -> Vec<String> {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Aggregations may put `by (…)` between their name and `(`.
    const KEYWORDS: &[&str] = &[
        "bool",
        "offset",
        "and",
        "or",
        "unless",
        "atan2",
        "inf",
        "nan",
        "Inf",
        "NaN",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |mut i: usize, close: char| {
        // Past the matching `close`, skipping quoted strings.
        while i < chars.len() && chars[i] != close {
            if matches!(chars[i], '"' | '\'' | '`') {
                let quote = chars[i];
                i += 1;
                while i < chars.len() && chars[i] != quote {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_to(i + 1, c);
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let call = chars.get(next) == Some(&'(');
            if GROUPING.contains(&word.as_str()) {
                if call {
                    i = skip_to(next + 1, ')');
                }
            } else if !KEYWORDS.contains(&word.as_str()) && !call {
                names.push(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// A metric name as exported: histogram series by their base name.
fn base_metric(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if METRICS.contains(&base) {
                return base;
            }
        }
    }
    name
}

#[test]
fn the_promql_reader_finds_metrics_only() {
    let expr = r#"histogram_quantile(0.95, sum by (le, action) (rate(a_seconds_bucket{x="b{c}",y=~"$v"}[$__rate_interval]))) / on (job) group_left (version) b_total offset 5m > bool 1e3 and ignoring(i) c"#;
    assert_eq!(
        promql_metrics(expr),
        ["a_seconds_bucket", "b_total", "c"],
        "{expr}"
    );
}

/// Every PromQL expression of the dashboard, with where it is.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
            panels(&panel["panels"], out);
        }
    }
    panels(&dashboard["panels"], &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            serde_json::Value::String(q) => q.clone(),
            object => object["query"].as_str().unwrap_or_default().to_owned(),
        };
        // Grafana's label_values(metric, label): the metric is PromQL.
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
        {
            if let Some((metric, _label)) = args.rsplit_once(',') {
                let name = variable["name"].as_str().unwrap_or("?");
                queries.push((format!("variable {name:?}"), metric.trim().to_owned()));
            }
        }
    }
    queries
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

/// The metric names the dashboard reads, each with the first place it is read.
fn dashboard_metrics() -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    for (place, expr) in dashboard_queries(&dashboard()) {
        for name in promql_metrics(&expr) {
            used.entry(base_metric(&name).to_owned())
                .or_insert_with(|| format!("{place}: {expr}"));
        }
    }
    used
}

#[test]
fn the_dashboard_reads_only_sentinels_metrics_and_all_of_them() {
    let dashboard = dashboard();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let used = dashboard_metrics();
    for (name, place) in &used {
        assert!(
            METRICS.contains(&name.as_str()),
            "{name} is not one of Sentinel's metrics ({place})"
        );
    }
    for name in METRICS {
        assert!(used.contains_key(*name), "no panel shows {name}");
    }
    // The histograms are shown as quantiles.
    let queries = dashboard_queries(&dashboard);
    for histogram in [
        "sentinel_approval_wait_seconds",
        "sentinel_monitor_cycle_seconds",
        "sentinel_llm_call_seconds",
    ] {
        let bucket = format!("{histogram}_bucket");
        assert!(
            queries
                .iter()
                .any(|(_, e)| e.contains("histogram_quantile(") && e.contains(&bucket)),
            "no histogram_quantile over {bucket}"
        );
    }

    // Every panel's datasource is the provisioned Prometheus, by uid.
    let datasources = yaml("manifests/grafana/provisioning/datasources/prometheus.yaml");
    let provisioned = &sequence(&datasources["datasources"], "datasources")[0];
    let uid = string(provisioned, "uid", "the datasource");
    assert_eq!(string(provisioned, "type", "the datasource"), "prometheus");
    let mut stack = vec![&dashboard];
    while let Some(value) = stack.pop() {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(ds) = map.get("datasource").filter(|d| d["type"] == "prometheus") {
                    assert_eq!(ds["uid"], uid, "a datasource that is not provisioned: {ds}");
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    // Grafana finds the dashboard where compose mounts it.
    let providers = yaml("manifests/grafana/provisioning/dashboards/sentinel.yaml");
    let path = string(
        &sequence(&providers["providers"], "providers")[0]["options"],
        "path",
        "the dashboard provider",
    );
    let compose = compose();
    let mounts = sequence(
        &compose["services"]["grafana"]["volumes"],
        "grafana volumes",
    );
    let mounted = mounts.iter().filter_map(Value::as_str).any(|m| {
        let mut parts = m.split(':');
        let (source, target) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        target == path && root().join(source).join("sentinel.json") == root().join(DASHBOARD)
    });
    assert!(mounted, "compose mounts {DASHBOARD}'s folder at {path}");
}

/// The dashboards Grafana provisions: every `*.json` in the mounted folder, by file name.
const DASHBOARDS: &[&str] = &["containers.json", "host.json", "sentinel.json"];

fn dashboard_file(name: &str) -> serde_json::Value {
    let relative = format!("manifests/grafana/dashboards/{name}");
    serde_json::from_str(&read(&relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// A dashboard query with Grafana's variables filled in as "everything".
fn fill_variables(expr: &str, rate_interval: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", rate_interval)
        .replace("$__interval", "1m")
        .replace("$instance", ".*")
        .replace("$name", ".*");
    assert!(!expr.contains('$'), "an unknown Grafana variable in {expr}");
    expr
}

/// The folder holds exactly the dashboards named above, each with its own uid and title, each
/// reading only the provisioned Prometheus.
#[test]
fn grafana_provisions_the_sentinel_host_and_container_dashboards() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("manifests/grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, DASHBOARDS, "manifests/grafana/dashboards/");
    let datasources = yaml("manifests/grafana/provisioning/datasources/prometheus.yaml");
    let uid = string(
        &sequence(&datasources["datasources"], "datasources")[0],
        "uid",
        "the datasource",
    )
    .to_owned();
    let mut uids = BTreeSet::new();
    for name in DASHBOARDS {
        let dashboard = dashboard_file(name);
        let id = dashboard["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: a uid"));
        assert!(uids.insert(id.to_owned()), "{name}: uid {id} is taken");
        assert!(dashboard["title"].is_string(), "{name}: a title");
        assert!(
            dashboard_queries(&dashboard).len() >= 8,
            "{name}: too few queries to be a dashboard"
        );
        let mut stack = vec![&dashboard];
        let mut typed = 0;
        while let Some(value) = stack.pop() {
            match value {
                serde_json::Value::Object(map) => {
                    // Grafana's built-in datasource (annotations) aside, every one is Prometheus.
                    if let Some(ds) = map
                        .get("datasource")
                        .filter(|d| !d.is_null() && d["type"] != "grafana")
                    {
                        assert_eq!(ds["type"], "prometheus", "{name}: {ds}");
                        assert_eq!(ds["uid"], uid.as_str(), "{name}: unprovisioned {ds}");
                        typed += 1;
                    }
                    stack.extend(map.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        assert!(typed > 0, "{name}: no panel names its datasource");
    }
}

/// promtool parses every expression of every dashboard (as recording rules).
#[test]
fn promtool_parses_every_dashboard_query() {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let mut i = 0;
    for name in DASHBOARDS {
        for (_, expr) in dashboard_queries(&dashboard_file(name)) {
            rules.push_str(&format!(
                "      - record: dashboard:query{i}\n        expr: {}\n",
                serde_json::to_string(&fill_variables(&expr, "5m")).unwrap()
            ));
            i += 1;
        }
    }
    let file = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    std::fs::write(file.path(), &rules).unwrap();
    let output = run(tool("promtool", "prometheus")
        .args(["check", "rules"])
        .arg(file.path()));
    assert!(
        output.status.success(),
        "promtool rejects a dashboard query: {}\n{rules}",
        describe(&output)
    );
}

/// Runs every query of `name` against the Prometheus at `url` until each returns a series
/// (bounded: rates need two scrapes), and fails naming the ones that never did.
async fn every_query_returns_data(name: &str, url: &str) -> usize {
    use sentinel::runtime::prometheus::PrometheusClient;
    let client = PrometheusClient::new(url, std::time::Duration::from_secs(5)).unwrap();
    let queries = dashboard_queries(&dashboard_file(name));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (place, expr) in &queries {
            let expr = fill_variables(expr, "1m");
            match client.instant_query(&expr).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => empty.push(format!("{place}: {expr} (no series)")),
                Err(e) => empty.push(format!("{place}: {expr} ({e})")),
            }
        }
        if empty.is_empty() {
            return queries.len();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: queries with no data from {url} after 30 s:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The host dashboard against the real Prometheus scraping the real node-exporter
/// (scripts/services.sh): every panel's query, the host variable's included, has data.
#[tokio::test]
async fn every_host_dashboard_query_has_data_from_node_exporter() {
    let url = std::env::var("PROMETHEUS_URL").unwrap_or_else(|_| "http://127.0.0.1:9090".into());
    let n = every_query_returns_data("host.json", &url).await;
    println!("host.json: {n} queries, each with data from {url}");
}

/// cAdvisor has no Debian package: a stand-in serves its exposition for two containers as
/// cAdvisor v0.49 writes it (metric names and labels), a private Prometheus scrapes it, and
/// every query of the containers dashboard has data.
#[tokio::test]
async fn every_container_dashboard_query_has_data_from_cadvisor_metrics() {
    use crate::helpers::{MetricsServer, PrivatePrometheus};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut body = String::new();
    for (metric, kind) in [
        ("container_last_seen", "gauge"),
        ("container_start_time_seconds", "gauge"),
        ("container_cpu_usage_seconds_total", "counter"),
        ("container_memory_working_set_bytes", "gauge"),
        ("container_spec_memory_limit_bytes", "gauge"),
        ("container_network_receive_bytes_total", "counter"),
        ("container_network_transmit_bytes_total", "counter"),
        ("container_fs_usage_bytes", "gauge"),
    ] {
        body.push_str(&format!("# TYPE {metric} {kind}\n"));
        for (i, name) in ["web", "worker"].iter().enumerate() {
            let labels = match metric {
                "container_network_receive_bytes_total"
                | "container_network_transmit_bytes_total" => {
                    format!(r#"id="/docker/{i}",image="busybox",interface="eth0",name="{name}""#)
                }
                "container_fs_usage_bytes" => {
                    format!(r#"device="/dev/vda1",id="/docker/{i}",image="busybox",name="{name}""#)
                }
                _ => format!(r#"id="/docker/{i}",image="busybox",name="{name}""#),
            };
            let value = match metric {
                "container_last_seen" => now.to_string(),
                "container_start_time_seconds" => (now - 600).to_string(),
                "container_spec_memory_limit_bytes" => "67108864".to_owned(),
                _ => format!("{}", 1_048_576 * (i + 1)),
            };
            body.push_str(&format!("{metric}{{{labels}}} {value}\n"));
        }
    }
    let server = MetricsServer::serve(body).await;
    let prometheus =
        PrivatePrometheus::scraping("cadvisor", server.port, "container_last_seen", 2).await;
    let n = every_query_returns_data("containers.json", &prometheus.url).await;
    println!("containers.json: {n} queries, each with data from a stand-in cAdvisor");
}

/// The names a `GET /metrics` body exports, histograms by their base name.
fn exported_metrics(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            names.insert(rest.split_whitespace().next().unwrap_or("").to_owned());
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            names.insert(base_metric(name).to_owned());
        }
    }
    names
}

/// `GET /metrics` of a running app.
async fn scrape(app: &crate::helpers::TestApp) -> String {
    let response = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    assert_eq!(status, 200, "GET /metrics: {text}");
    text
}

/// The dashboard's metrics are the app's: a fresh app exports every one of them, except the
/// breaker gauge, which has a series per `action:target` only once that key acted on its
/// own; with its budget spent, that series is 1.
#[tokio::test]
async fn every_metric_the_dashboard_reads_is_served_at_metrics() {
    const BREAKER: &str = "sentinel_circuit_breaker_open";
    let app = spawn_app().await;
    let exported = exported_metrics(&scrape(&app).await);
    let missing: Vec<_> = dashboard_metrics()
        .into_keys()
        .filter(|name| name != BREAKER && !exported.contains(name))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard reads {missing:?}, which a fresh app's GET /metrics does not export \
         (a labelled metric with no series yet is not printed: start its known label values \
         at 0). Exported: {exported:?}"
    );

    let budget = app.sentinel.settings().actions.auto_budget_per_hour;
    let now = sentinel::domain::Timestamp::now();
    for _ in 0..budget {
        app.store
            .record_auto_action("sandbox_cleanup:sandbox", now)
            .await
            .unwrap();
    }
    let text = scrape(&app).await;
    let series = format!(r#"{BREAKER}{{action="sandbox_cleanup",target="sandbox"}} 1"#);
    assert!(
        text.lines().any(|line| line == series),
        "a spent budget shows as `{series}` in GET /metrics:\n{text}"
    );
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// Every document of manifests/k8s/, with its file.
fn k8s_documents() -> Vec<(String, Value)> {
    let mut documents = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(root().join("manifests/k8s"))
        .expect("manifests/k8s/")
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        for document in yaml_documents(&file) {
            documents.push((name.clone(), document));
        }
    }
    documents
}

fn k8s_object(kind: &str, name: &str) -> Value {
    let found: Vec<_> = k8s_documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one {kind} {name} in manifests/k8s/");
    found.into_iter().next().unwrap().1
}

fn sentinel_container(deployment: &Value) -> &Value {
    let containers = sequence(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    containers
        .iter()
        .find(|c| c["name"] == "sentinel")
        .expect("a container named sentinel")
}

/// The container's literal `env` values, and the names set from secrets.
fn container_env(container: &Value) -> (BTreeMap<String, String>, BTreeMap<String, Value>) {
    let mut literal = BTreeMap::new();
    let mut from = BTreeMap::new();
    for var in sequence(&container["env"], "env") {
        let name = string(var, "name", "an env entry").to_owned();
        match (&var["value"], &var["valueFrom"]) {
            (Value::String(v), Value::Null) => {
                literal.insert(name, v.clone());
            }
            (Value::Null, source @ Value::Mapping(_)) => {
                from.insert(name, source.clone());
            }
            other => panic!("env {name}: {other:?}"),
        }
    }
    (literal, from)
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn every_kubernetes_document_names_its_kind_and_the_kustomization_lists_existing_files() {
    let documents = k8s_documents();
    let kinds: BTreeSet<String> = documents
        .iter()
        .map(|(file, d)| {
            string(d, "apiVersion", file);
            string(&d["metadata"], "name", file);
            string(d, "kind", file).to_owned()
        })
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "ServiceAccount",
        "PodDisruptionBudget",
        "Kustomization",
    ] {
        assert!(kinds.contains(kind), "manifests/k8s/ has no {kind}");
    }
    let kustomization = yaml("manifests/k8s/kustomization.yaml");
    let listed: BTreeSet<&str> = sequence(&kustomization["resources"], "resources")
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for resource in &listed {
        assert!(
            root().join("manifests/k8s").join(resource).is_file(),
            "kustomization.yaml lists {resource}, which does not exist"
        );
    }
    for (file, _) in &documents {
        if file != "kustomization.yaml" && file != "secret.template.yaml" {
            assert!(
                listed.contains(file.as_str()),
                "kustomization.yaml omits {file}"
            );
        }
    }
    assert!(
        !listed.contains("secret.template.yaml"),
        "the Secret template is applied by hand, never by `apply -k`"
    );
}

#[test]
fn the_deployment_runs_two_non_root_replicas_on_redis_with_probes_on_real_routes() {
    let deployment = k8s_object("Deployment", "sentinel");
    assert_eq!(deployment["spec"]["replicas"], 2, "two replicas");
    let pod = &deployment["spec"]["template"];
    let labels = string_map(&pod["metadata"]["labels"], "pod labels");
    let selector = string_map(
        &deployment["spec"]["selector"]["matchLabels"],
        "Deployment selector",
    );
    assert!(
        selects(&selector, &labels),
        "the Deployment selects its pods"
    );
    let container = sentinel_container(&deployment);

    let (literal, from_secret) = container_env(container);
    for name in literal.keys().chain(from_secret.keys()) {
        assert!(
            SPEC_ENV.contains(&name.as_str()),
            "env {name} is not in SPEC §9"
        );
    }
    let redis = literal
        .get("REDIS_URL")
        .map(String::as_str)
        .or_else(|| from_secret.contains_key("REDIS_URL").then_some("(secret)"))
        .expect("the Deployment sets REDIS_URL");
    assert!(
        redis == "(secret)" || redis.starts_with("redis://") || redis.starts_with("rediss://"),
        "REDIS_URL={redis}"
    );

    // The probes ask routes the app serves, on the port it listens on.
    let routes = sentinel::app::routes();
    let ports = sequence(&container["ports"], "ports");
    let port = &ports[0];
    let container_port = port["containerPort"].as_u64().expect("a containerPort");
    let listen = literal
        .get("SENTINEL_LISTEN")
        .expect("the Deployment sets SENTINEL_LISTEN (the image's default may change)");
    assert_eq!(
        listen,
        &format!("0.0.0.0:{container_port}"),
        "Sentinel listens on the container port, on every interface"
    );
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &container[probe]["httpGet"];
        let actual = string(get, "path", probe);
        assert_eq!(actual, path, "{probe}");
        assert!(
            routes
                .iter()
                .any(|r| r.method == axum::http::Method::GET && r.path == actual),
            "{probe} asks {actual}, which is not a route of sentinel::app::routes()"
        );
        let probe_port = &get["port"];
        assert!(
            *probe_port == port["name"] || probe_port.as_u64() == Some(container_port),
            "{probe} asks port {probe_port:?}"
        );
    }

    // Non-root, read-only root filesystem, no privileges, bounded resources.
    let pod_security = &pod["spec"]["securityContext"];
    let security = &container["securityContext"];
    assert!(
        pod_security["runAsNonRoot"] == true || security["runAsNonRoot"] == true,
        "runAsNonRoot"
    );
    for context in [pod_security, security] {
        if let Some(uid) = context["runAsUser"].as_u64() {
            assert_ne!(uid, 0, "runAsUser 0");
        }
    }
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                !container["resources"][kind][resource].is_null(),
                "resources.{kind}.{resource}"
            );
        }
    }

    // A read-only root: the sandbox and /tmp are volumes.
    let mounts: BTreeSet<&str> = sequence(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| string(m, "mountPath", "a volumeMount"))
        .collect();
    for path in ["/var/lib/sentinel/sandbox", "/tmp"] {
        assert!(mounts.contains(path), "nothing is mounted at {path}");
    }

    // The ServiceAccount exists.
    let account = string(&pod["spec"], "serviceAccountName", "the pod");
    k8s_object("ServiceAccount", account);

    // Secrets come from the Secret template's keys.
    let secret = k8s_object("Secret", "sentinel-secrets");
    let keys = string_map(&secret["stringData"], "the Secret's stringData");
    for (name, value) in &keys {
        assert!(SPEC_ENV.contains(&name.as_str()), "Secret key {name}");
        assert!(
            value.is_empty(),
            "the Secret template holds a value for {name}; it must stay a template"
        );
    }
    for (name, source) in &from_secret {
        let reference = &source["secretKeyRef"];
        assert_eq!(reference["name"], "sentinel-secrets", "env {name}");
        let key = string(reference, "key", name);
        assert!(
            keys.contains_key(key),
            "env {name} reads {key}, not in the Secret"
        );
    }
}

#[test]
fn the_service_and_the_disruption_budget_select_the_sentinel_pods_only() {
    let deployment = k8s_object("Deployment", "sentinel");
    let labels = string_map(
        &deployment["spec"]["template"]["metadata"]["labels"],
        "pod labels",
    );
    let other_pods: Vec<(String, BTreeMap<String, String>)> = k8s_documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] == "Deployment" && d["metadata"]["name"] != "sentinel")
        .map(|(_, d)| {
            let name = d["metadata"]["name"].as_str().unwrap().to_owned();
            let labels = string_map(&d["spec"]["template"]["metadata"]["labels"], &name);
            (name, labels)
        })
        .collect();

    let service = k8s_object("Service", "sentinel");
    let pdb = k8s_object("PodDisruptionBudget", "sentinel");
    for (what, selector) in [
        ("the Service", &service["spec"]["selector"]),
        (
            "the PodDisruptionBudget",
            &pdb["spec"]["selector"]["matchLabels"],
        ),
    ] {
        let selector = string_map(selector, what);
        assert!(
            selects(&selector, &labels),
            "{what} selects the Sentinel pods"
        );
        for (name, other) in &other_pods {
            assert!(
                !selects(&selector, other),
                "{what} also selects {name}'s pods"
            );
        }
    }
    let container = sentinel_container(&deployment);
    let port = &sequence(&container["ports"], "ports")[0];
    let target = &sequence(&service["spec"]["ports"], "Service ports")[0]["targetPort"];
    assert!(
        *target == port["name"] || *target == port["containerPort"],
        "the Service sends traffic to port {target:?}"
    );
    // At least one replica stays up, and a node can still be drained.
    let replicas = deployment["spec"]["replicas"].as_u64().unwrap();
    let budget = &pdb["spec"];
    let allowed = match (
        budget["minAvailable"].as_u64(),
        budget["maxUnavailable"].as_u64(),
    ) {
        (Some(min), None) => (1..replicas).contains(&min),
        (None, Some(max)) => (1..replicas).contains(&max),
        _ => false,
    };
    assert!(allowed, "a budget of {budget:?} for {replicas} replicas");
}

#[test]
fn the_configmap_sentinel_toml_is_accepted_by_the_binary_where_the_pod_mounts_it() {
    let config_map = k8s_object("ConfigMap", "sentinel-config");
    let toml = string(&config_map["data"], "sentinel.toml", "the ConfigMap");

    // SENTINEL_CONFIG names the file where the Deployment mounts the ConfigMap.
    let deployment = k8s_object("Deployment", "sentinel");
    let container = sentinel_container(&deployment);
    let (literal, _) = container_env(container);
    let config_path = literal
        .get("SENTINEL_CONFIG")
        .expect("the Deployment sets SENTINEL_CONFIG");
    let volumes = sequence(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    );
    let mounted = sequence(&container["volumeMounts"], "volumeMounts")
        .iter()
        .any(|mount| {
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]);
            let from_config_map =
                volume.is_some_and(|v| v["configMap"]["name"] == "sentinel-config");
            let path = Path::new(string(mount, "mountPath", "a volumeMount"));
            let file = match mount["subPath"].as_str() {
                Some(_) => path.to_owned(),
                None => path.join("sentinel.toml"),
            };
            from_config_map && file == Path::new(config_path)
        });
    assert!(
        mounted,
        "SENTINEL_CONFIG={config_path} is where sentinel.toml is mounted"
    );

    // The real binary accepts it, with the Deployment's own literal environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sentinel.toml");
    std::fs::write(&file, toml).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
    command.env_clear();
    for (name, value) in &literal {
        command.env(name, value);
    }
    command
        .env("SENTINEL_CONFIG", &file)
        .args(["config", "check"]);
    let output = run(&mut command);
    assert!(
        output.status.success(),
        "sentinel config check rejects the ConfigMap's sentinel.toml: {}",
        describe(&output)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(summary.contains("configuration is valid"), "{summary}");
}
