//! Settings: the embedded `config/sentinel.toml`, then the user's file, then the environment.
//!
//! In: a path (optional) and a way to read environment variables. Out: a validated
//! [`Settings`], or one [`ConfigError`] naming the key and the problem. The defaults are the
//! documented file itself, compiled in, so the two can never disagree. Secrets live in
//! [`Secrets`] as `SecretString`s, read only from the environment or from files, and never
//! printed.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::domain::Role;

/// The documented defaults, compiled in.
pub const DEFAULT_CONFIG: &str = include_str!("../config/sentinel.toml");

/// Bad configuration: which key, and what is wrong with it. Displays as one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {key}: {problem}")]
pub struct ConfigError {
    /// A TOML key path (`thresholds.host_cpu.warning`), an environment variable, or a file.
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// What to do with a fix once policy has decided on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Auto,
    ApproveAll,
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::ApproveAll => "approve-all",
            Mode::DryRun => "dry-run",
        }
    }
}

/// A duration written like `"30s"` or `"1h 30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    fn parse(text: &str) -> Result<Self, String> {
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|e| {
                format!("{text:?} is not a duration ({e}); write it like \"30s\" or \"5m\"")
            })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        HumanDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Warning and critical levels of one signal.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub warning: Option<f64>,
    pub critical: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub host_memory: Threshold,
    pub host_cpu: Threshold,
    pub disk: Threshold,
    pub network_latency: Threshold,
    pub container_memory: Threshold,
    pub sandbox_size_mb: Threshold,
}

impl Thresholds {
    /// Each threshold with its key and whether it is a percentage.
    fn each(&self) -> [(&'static str, &Threshold, bool); 6] {
        [
            ("host_memory", &self.host_memory, true),
            ("host_cpu", &self.host_cpu, true),
            ("disk", &self.disk, true),
            ("network_latency", &self.network_latency, false),
            ("container_memory", &self.container_memory, true),
            ("sandbox_size_mb", &self.sandbox_size_mb, false),
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSettings {
    pub enabled: bool,
    pub lease_ttl: HumanDuration,
    #[serde(rename = "for")]
    pub for_samples: u32,
    pub clear_for: u32,
    pub collector_timeout: HumanDuration,
    pub disk_mounts: Vec<String>,
    pub prometheus_url: String,
    pub docker_host: String,
    pub docker_concurrency: usize,
    /// Containers watched: any of these match (empty: all), then none of `container_exclude`.
    pub container_include: Vec<crate::domain::ContainerSelector>,
    pub container_exclude: Vec<crate::domain::ContainerSelector>,
}

impl MonitorSettings {
    /// Which containers are watched.
    pub fn container_filter(&self) -> crate::domain::ContainerFilter {
        crate::domain::ContainerFilter {
            include: self.container_include.clone(),
            exclude: self.container_exclude.clone(),
        }
    }
}

/// PromQL instant queries for host signals (`[prometheus]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusQueries {
    pub host_cpu: String,
    pub host_memory: String,
    /// `$mount` is replaced by each watched mount point.
    pub disk: String,
    /// Bytes per second in and out.
    pub network_bytes: String,
    /// Errors per second in and out.
    pub network_errors: String,
    /// Percent of the limit, one series per container `name`.
    pub container_memory: String,
    /// Measured network latency in milliseconds, one number. Empty: the latency is
    /// estimated from the traffic (source `estimate`).
    pub network_latency: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSettings {
    pub enabled: bool,
    pub auto_budget_per_hour: u32,
    pub quarantine_retention: HumanDuration,
    /// The most the quarantine (every cleanup's, together) keeps on disk, compressed; what
    /// does not fit is deleted for good.
    pub quarantine_max_bytes: ByteSize,
    pub memory_limit_max_factor: f64,
    pub two_person_rule: bool,
    /// Consecutive approved fixes of one (signal, action, target) that verified before an
    /// admin is offered to trust it (SPEC §12.4).
    pub trust_after: u32,
    /// How long a low-risk automatic fix stays `scheduled`, stoppable, before it runs;
    /// zero runs it at once.
    pub veto_window: HumanDuration,
}

/// A size in bytes, written like `"50MB"`, `"1.5GB"`, `"512KiB"` or a plain integer.
/// `KB`, `MB`, `GB` are powers of 1000 (as `sandbox_size_mb`); `KiB`, `MiB`, `GiB` of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            _ => {
                return Err(format!(
                    "{text:?} is not a size; write it like \"50MB\" (B, KB, MB, GB, KiB, MiB, GiB)"
                ))
            }
        };
        let value: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a size; write it like \"50MB\""))?;
        let bytes = value * factor as f64;
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
            return Err(format!("{text:?} is out of range"));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => ByteSize::parse(&text).map_err(serde::de::Error::custom),
        }
    }
}

/// Which analyzer proposes fixes: `auto` (the default) is the LLM when an LLM API key is
/// configured and the rules otherwise; `rules` and `llm` force one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalyzerKind {
    Auto,
    Rules,
    Llm,
}

impl AnalyzerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalyzerKind::Auto => "auto",
            AnalyzerKind::Rules => "rules",
            AnalyzerKind::Llm => "llm",
        }
    }
}

/// The analyzer in use and why, as `sentinel config check` and the startup log say it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyzerChoice {
    /// Whether the LLM is asked (the rules remain the fallback).
    pub llm: bool,
    /// One line for people: which analyzer, and the setting that decided it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzerSettings {
    pub kind: AnalyzerKind,
    /// How far before an incident opened its target container's Docker events are read for
    /// recent changes (SPEC §12.4); zero reads none.
    pub change_window: HumanDuration,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    pub url: String,
    pub model: String,
    pub timeout: HumanDuration,
    pub attempts: u32,
    pub api_key_file: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    pub channel: String,
    pub app_id: String,
    pub api_url: String,
    pub signing_secret_file: String,
    pub bot_token_file: String,
    pub app_token_file: String,
    /// How old a card's value and occurrence count may get before the card is redrawn for
    /// them alone (a decision change redraws it at once).
    pub card_refresh: HumanDuration,
    /// `[[slack.routes]]`: where a new card goes; the first matching route wins, else
    /// `channel`.
    #[serde(default)]
    pub routes: Vec<SlackRoute>,
}

impl SlackSettings {
    /// The channel a new card of `incident` goes to: the first route it matches, else
    /// `[slack] channel`; `None` when that is empty too. A card stays where it was posted.
    pub fn channel_for(&self, incident: &crate::domain::Incident) -> Option<&str> {
        self.routes
            .iter()
            .find(|route| route.matches(incident))
            .map(|route| route.channel.as_str())
            .or_else(|| Some(self.channel.trim()).filter(|c| !c.is_empty()))
    }

    /// Whether any card can be posted at all.
    pub fn has_channels(&self) -> bool {
        !self.channel.trim().is_empty() || !self.routes.is_empty()
    }
}

/// One `[[slack.routes]]` entry: incidents matching every condition it names go to
/// `channel`. Validated at load: a channel id, at least one condition, a signal glob that
/// matches a signal, `KEY=VALUE` labels, and no route hidden behind an earlier one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackRoute {
    pub channel: String,
    #[serde(default)]
    pub severity: Option<crate::domain::Severity>,
    /// A glob over signal names (`container_*`; `*` any run of characters, `?` any one).
    #[serde(default)]
    pub signal: Option<String>,
    /// `KEY=VALUE`: the incident carries label KEY with exactly VALUE.
    #[serde(default)]
    pub label: Option<String>,
}

impl SlackRoute {
    pub fn matches(&self, incident: &crate::domain::Incident) -> bool {
        self.severity.is_none_or(|s| s == incident.severity)
            && self
                .signal
                .as_deref()
                .is_none_or(|glob| crate::domain::glob_matches(glob, incident.signal.as_str()))
            && self.label.as_deref().is_none_or(|label| {
                label.split_once('=').is_some_and(|(key, value)| {
                    incident.labels.get(key).is_some_and(|v| v == value)
                })
            })
    }

    /// The signals this route can match.
    fn signals(&self) -> Vec<crate::domain::Signal> {
        crate::domain::Signal::ALL
            .into_iter()
            .filter(|signal| {
                self.signal
                    .as_deref()
                    .is_none_or(|glob| crate::domain::glob_matches(glob, signal.as_str()))
            })
            .collect()
    }

    /// Whether every incident `later` matches is matched by this route already.
    fn covers(&self, later: &SlackRoute) -> bool {
        let severity = self.severity.is_none() || self.severity == later.severity;
        let label = self.label.is_none() || self.label == later.label;
        let mine = self.signals();
        let signals = later.signals().iter().all(|s| mine.contains(s));
        severity && label && signals
    }
}

/// `[pagerduty]`: incidents that need a person page through the Events API v2
/// (`crate::pagerduty`). On only with a routing key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutySettings {
    /// The Events API v2 base: events go to `{events_url}enqueue` and
    /// `{events_url}change/enqueue`. Always ends with `/` once loaded.
    pub events_url: String,
    /// A file holding the routing key, instead of `PAGERDUTY_ROUTING_KEY`.
    pub routing_key_file: String,
    /// Incidents of these severities page as soon as they open; escalated ones always do.
    pub severities: Vec<crate::domain::Severity>,
}

/// `default_role`: a role, or `none` (unknown Slack users may do nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultRole {
    None,
    Role(Role),
}

impl<'de> Deserialize<'de> for DefaultRole {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text == "none" {
            return Ok(DefaultRole::None);
        }
        text.parse::<Role>().map(DefaultRole::Role).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown role {text:?} (expected viewer, operator, admin or none)"
            ))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacSettings {
    pub default_role: DefaultRole,
    pub admins: Vec<String>,
    pub operators: Vec<String>,
    pub viewers: Vec<String>,
    pub usergroup_cache_ttl: HumanDuration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSettings {
    pub bearer_token: SecretString,
}

impl fmt::Debug for AlertmanagerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlertmanagerSettings")
            .field("bearer_token", &"[redacted]")
            .finish()
    }
}

impl AlertmanagerSettings {
    /// The token, or `None` when none is configured (then the webhook always answers 401).
    pub fn bearer_token(&self) -> Option<&SecretString> {
        (!self.bearer_token.expose_secret().is_empty()).then_some(&self.bearer_token)
    }
}

/// `[demo]`: the scenarios `sentinel demo` sets up (`crate::service::demo`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoSettings {
    /// The image demo containers run; it must have `sh`, `sleep` and `dd` (busybox has).
    pub image: String,
    /// The demo container's name; the memory scenario's is this plus `-memory`.
    pub container: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSettings {
    pub redis_prefix: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub body_limit: usize,
    pub sse_keep_alive: HumanDuration,
    /// How long a connection may take to send a request head (and how long it may sit idle
    /// between requests) before it is closed.
    pub header_timeout: HumanDuration,
    /// How many connections may be open at once; past it the oldest idle one is closed.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
    pub otlp_endpoint: String,
}

/// One `[[api_keys]]` entry: a key known only by its SHA-256.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    pub name: String,
    pub role: Role,
    pub sha256: String,
}

/// Secrets, from the environment or from files only.
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    pub slack_signing_secret: Option<SecretString>,
    pub slack_bot_token: Option<SecretString>,
    pub slack_app_token: Option<SecretString>,
    pub llm_api_key: Option<SecretString>,
    /// Where the LLM key came from (`SENTINEL_LLM_API_KEY`, `OPENROUTER_API_KEY` or
    /// `llm.api_key_file`): a name, never the key.
    pub llm_api_key_from: Option<&'static str>,
    /// May carry a password, so it is treated as a secret.
    pub redis_url: Option<SecretString>,
    /// The PagerDuty integration key (`PAGERDUTY_ROUTING_KEY` or `[pagerduty]
    /// routing_key_file`); without it nothing is sent to PagerDuty.
    pub pagerduty_routing_key: Option<SecretString>,
}

/// The whole configuration, validated.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    pub interval: HumanDuration,
    pub settle: HumanDuration,
    pub listen: String,
    pub data_dir: PathBuf,
    pub sandbox_dir: PathBuf,
    pub public_url: String,
    pub approval_timeout: HumanDuration,
    pub thresholds: Thresholds,
    pub monitor: MonitorSettings,
    pub prometheus: PrometheusQueries,
    pub actions: ActionSettings,
    pub analyzer: AnalyzerSettings,
    pub llm: LlmSettings,
    pub slack: SlackSettings,
    pub rbac: RbacSettings,
    pub alertmanager: AlertmanagerSettings,
    pub store: StoreSettings,
    pub http: HttpSettings,
    pub telemetry: TelemetrySettings,
    pub demo: DemoSettings,
    pub pagerduty: PagerDutySettings,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
    #[serde(skip)]
    pub secrets: Secrets,
}

/// Where settings come from: an optional file and an environment.
pub struct Sources<'a> {
    pub file: Option<&'a Path>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// A variable, with empty values treated as unset.
    fn var(&self, name: &str) -> Option<String> {
        (self.env)(name).filter(|v| !v.trim().is_empty())
    }
}

/// Reads the process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Settings {
    /// The built-in defaults alone (what `config/sentinel.toml` documents).
    pub fn defaults() -> Settings {
        Settings::load(&Sources {
            file: None,
            env: &|_| None,
        })
        .expect("the embedded config/sentinel.toml is valid")
    }

    /// Defaults, then the file, then the environment; validated.
    pub fn load(sources: &Sources<'_>) -> Result<Settings, ConfigError> {
        let mut merged = parse_toml(DEFAULT_CONFIG, "config/sentinel.toml (built in)")?;
        if let Some(path) = sources.file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    path.display().to_string(),
                    format!("cannot read the configuration file: {e}"),
                )
            })?;
            let user = parse_toml(&text, &path.display().to_string())?;
            merge(&mut merged, user);
        }
        let mut settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(merged))
            .map_err(|e| {
            let key = e.path().to_string();
            ConfigError::new(key, e.into_inner().message().trim().replace('\n', " "))
        })?;
        settings.apply_env(sources)?;
        settings.validate()?;
        Ok(settings)
    }

    fn apply_env(&mut self, sources: &Sources<'_>) -> Result<(), ConfigError> {
        let duration = |name: &str, text: &str| {
            HumanDuration::parse(text).map_err(|problem| ConfigError::new(name, problem))
        };
        if let Some(v) = sources.var("SENTINEL_INTERVAL") {
            self.interval = duration("SENTINEL_INTERVAL", &v)?;
        }
        if let Some(v) = sources.var("SENTINEL_SETTLE") {
            self.settle = duration("SENTINEL_SETTLE", &v)?;
        }
        let strings: [(&str, &mut String); 9] = [
            ("SENTINEL_LISTEN", &mut self.listen),
            ("PUBLIC_URL", &mut self.public_url),
            ("PROMETHEUS_URL", &mut self.monitor.prometheus_url),
            ("DOCKER_HOST", &mut self.monitor.docker_host),
            ("SENTINEL_LLM_URL", &mut self.llm.url),
            ("SENTINEL_LLM_MODEL", &mut self.llm.model),
            ("SLACK_API_URL", &mut self.slack.api_url),
            ("SLACK_CHANNEL", &mut self.slack.channel),
            ("PAGERDUTY_EVENTS_URL", &mut self.pagerduty.events_url),
        ];
        for (name, field) in strings {
            if let Some(v) = sources.var(name) {
                *field = v;
            }
        }
        if let Some(v) = sources.var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.telemetry.otlp_endpoint = v;
        }
        if let Some(v) = sources.var("SENTINEL_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = sources.var("SENTINEL_SANDBOX_DIR") {
            self.sandbox_dir = PathBuf::from(v);
        }

        let secret = |env_name: &str, file_key: &str, file: &str| -> Result<_, ConfigError> {
            if let Some(v) = sources.var(env_name) {
                return Ok(Some(SecretString::from(v)));
            }
            if file.is_empty() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::new(file_key, format!("cannot read secret file {file:?}: {e}"))
            })?;
            Ok(Some(SecretString::from(text.trim().to_owned())))
        };
        self.secrets = Secrets {
            slack_signing_secret: secret(
                "SLACK_SIGNING_SECRET",
                "slack.signing_secret_file",
                &self.slack.signing_secret_file,
            )?,
            slack_bot_token: secret(
                "SLACK_BOT_TOKEN",
                "slack.bot_token_file",
                &self.slack.bot_token_file,
            )?,
            slack_app_token: secret(
                "SLACK_APP_TOKEN",
                "slack.app_token_file",
                &self.slack.app_token_file,
            )?,
            llm_api_key: None,
            llm_api_key_from: None,
            redis_url: sources.var("REDIS_URL").map(SecretString::from),
            pagerduty_routing_key: secret(
                "PAGERDUTY_ROUTING_KEY",
                "pagerduty.routing_key_file",
                &self.pagerduty.routing_key_file,
            )?,
        };
        // The first of SENTINEL_LLM_API_KEY, OPENROUTER_API_KEY, [llm] api_key_file.
        let (key, from) = match secret("SENTINEL_LLM_API_KEY", "llm.api_key_file", "")? {
            Some(key) => (Some(key), "SENTINEL_LLM_API_KEY"),
            None => {
                let key = secret(
                    "OPENROUTER_API_KEY",
                    "llm.api_key_file",
                    &self.llm.api_key_file,
                )?;
                let from = if sources.var("OPENROUTER_API_KEY").is_some() {
                    "OPENROUTER_API_KEY"
                } else {
                    "llm.api_key_file"
                };
                (key, from)
            }
        };
        self.secrets.llm_api_key_from = key.is_some().then_some(from);
        self.secrets.llm_api_key = key;
        if !self.pagerduty.events_url.is_empty() && !self.pagerduty.events_url.ends_with('/') {
            self.pagerduty.events_url.push('/');
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::new("interval", "must be at least 1s"));
        }
        if self.approval_timeout.0 < Duration::from_secs(1) {
            return Err(ConfigError::new("approval_timeout", "must be at least 1s"));
        }
        if self.actions.veto_window.0 > Duration::from_secs(24 * 3600) {
            return Err(ConfigError::new(
                "actions.veto_window",
                "must be at most 24h (\"0s\" turns it off)",
            ));
        }
        if self.analyzer.change_window.0 > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::new(
                "analyzer.change_window",
                "must be at most 7d (\"0s\" reads no recent changes)",
            ));
        }
        self.listen.parse::<SocketAddr>().map_err(|_| {
            ConfigError::new(
                "listen",
                format!("{:?} is not an address like 127.0.0.1:3000", self.listen),
            )
        })?;
        for (key, url, may_be_empty) in [
            ("public_url", &self.public_url, true),
            ("monitor.prometheus_url", &self.monitor.prometheus_url, true),
            ("llm.url", &self.llm.url, false),
            ("slack.api_url", &self.slack.api_url, false),
            ("pagerduty.events_url", &self.pagerduty.events_url, false),
            (
                "telemetry.otlp_endpoint",
                &self.telemetry.otlp_endpoint,
                true,
            ),
        ] {
            check_url(key, url, may_be_empty)?;
        }
        if let Some(redis) = &self.secrets.redis_url {
            let url = redis.expose_secret();
            if !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("unix://"))
            {
                // Never echo the value: it may hold a password.
                return Err(ConfigError::new(
                    "REDIS_URL",
                    "must start with redis://, rediss:// or unix://",
                ));
            }
        }
        if let Some(token) = &self.secrets.slack_app_token {
            if !token.expose_secret().starts_with("xapp-") {
                return Err(ConfigError::new(
                    "SLACK_APP_TOKEN",
                    "must be an app-level token starting with xapp-",
                ));
            }
        }

        self.validate_slack_channels()?;
        if let Some(key) = &self.secrets.pagerduty_routing_key {
            let key = key.expose_secret();
            if key.is_empty() || key.len() > 64 || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
                // Never echo the value: it is a secret.
                return Err(ConfigError::new(
                    "PAGERDUTY_ROUTING_KEY",
                    "must be the integration key of an Events API v2 integration (32 letters \
                     and digits)",
                ));
            }
        }

        for (name, threshold, percent) in self.thresholds.each() {
            for (level, value) in [
                ("warning", threshold.warning),
                ("critical", threshold.critical),
            ] {
                let Some(value) = value else { continue };
                let key = format!("thresholds.{name}.{level}");
                if !value.is_finite() || value < 0.0 {
                    return Err(ConfigError::new(key, format!("{value} must be 0 or more")));
                }
                if percent && value > 100.0 {
                    return Err(ConfigError::new(
                        key,
                        format!("{value} is not a percentage between 0 and 100"),
                    ));
                }
            }
            if let (Some(warning), Some(critical)) = (threshold.warning, threshold.critical) {
                if warning > critical {
                    return Err(ConfigError::new(
                        format!("thresholds.{name}"),
                        format!("warning ({warning}) is above critical ({critical})"),
                    ));
                }
            }
        }

        if self.demo.image.trim().is_empty() {
            return Err(ConfigError::new("demo.image", "must name an image"));
        }
        let name = &self.demo.container;
        let valid_name = name.len() <= 100
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !valid_name {
            return Err(ConfigError::new(
                "demo.container",
                format!("{name:?} is not a container name (letters, digits, _ . -)"),
            ));
        }

        if self.monitor.lease_ttl.0 <= self.interval.0 {
            return Err(ConfigError::new(
                "monitor.lease_ttl",
                "must be longer than interval, or the lease lapses between cycles",
            ));
        }
        if self.actions.trust_after == 0 {
            return Err(ConfigError::new(
                "actions.trust_after",
                "must be at least 1: trust is earned by verified approvals",
            ));
        }
        if self.monitor.for_samples == 0 {
            return Err(ConfigError::new("monitor.for", "must be at least 1"));
        }
        if self.monitor.clear_for == 0 {
            return Err(ConfigError::new("monitor.clear_for", "must be at least 1"));
        }
        if self.monitor.docker_concurrency == 0 {
            return Err(ConfigError::new(
                "monitor.docker_concurrency",
                "must be at least 1",
            ));
        }
        if let Some(mount) = self
            .monitor
            .disk_mounts
            .iter()
            .find(|m| !m.starts_with('/'))
        {
            return Err(ConfigError::new(
                "monitor.disk_mounts",
                format!("{mount:?} is not an absolute path"),
            ));
        }
        let factor = self.actions.memory_limit_max_factor;
        if !(factor.is_finite() && factor > 1.0) {
            return Err(ConfigError::new(
                "actions.memory_limit_max_factor",
                format!("{factor} must be greater than 1"),
            ));
        }
        if self.llm.attempts == 0 {
            return Err(ConfigError::new("llm.attempts", "must be at least 1"));
        }
        if self.http.body_limit < 1024 {
            return Err(ConfigError::new(
                "http.body_limit",
                "must be at least 1024 bytes",
            ));
        }
        if self.store.redis_prefix.is_empty() {
            return Err(ConfigError::new("store.redis_prefix", "must not be empty"));
        }
        if self.http.sse_keep_alive.0 < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "http.sse_keep_alive",
                "must be at least 100ms",
            ));
        }
        if self.http.header_timeout.0 < Duration::from_millis(100) {
            return Err(ConfigError::new(
                "http.header_timeout",
                "must be at least 100ms",
            ));
        }
        if self.http.max_connections < 16 {
            return Err(ConfigError::new(
                "http.max_connections",
                "must be at least 16",
            ));
        }

        for (key, ids) in [
            ("rbac.admins", &self.rbac.admins),
            ("rbac.operators", &self.rbac.operators),
            ("rbac.viewers", &self.rbac.viewers),
        ] {
            if let Some(bad) = ids.iter().find(|id| !is_slack_principal(id)) {
                return Err(ConfigError::new(
                    key,
                    format!("{bad:?} is not a Slack user id (U…, W…) or user group id (S…)"),
                ));
            }
        }

        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (index, key) in self.api_keys.iter().enumerate() {
            let at = format!("api_keys[{index}]");
            if key.name.trim().is_empty() {
                return Err(ConfigError::new(format!("{at}.name"), "must not be empty"));
            }
            if !names.insert(key.name.as_str()) {
                return Err(ConfigError::new(
                    format!("{at}.name"),
                    format!("{:?} is used by more than one key", key.name),
                ));
            }
            let hash = key.sha256.to_ascii_lowercase();
            if hash.len() != 64 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(ConfigError::new(
                    format!("{at}.sha256"),
                    "must be 64 hexadecimal digits, as printed by `sentinel keys new`",
                ));
            }
            if !hashes.insert(hash) {
                return Err(ConfigError::new(
                    format!("{at}.sha256"),
                    "the same key is configured twice",
                ));
            }
        }
        Ok(())
    }

    /// `[slack] channel` and every `[[slack.routes]]` entry: channel ids, not names, and no
    /// route that can never match.
    fn validate_slack_channels(&self) -> Result<(), ConfigError> {
        if !self.slack.channel.trim().is_empty() {
            check_channel_id("slack.channel", self.slack.channel.trim())?;
        }
        for (index, route) in self.slack.routes.iter().enumerate() {
            let at = format!("slack.routes[{index}]");
            check_channel_id(&format!("{at}.channel"), &route.channel)?;
            if route.severity.is_none() && route.signal.is_none() && route.label.is_none() {
                return Err(ConfigError::new(
                    at,
                    "names no severity, signal or label, so it would take every incident; \
                     put its channel in [slack] channel instead",
                ));
            }
            if let Some(glob) = &route.signal {
                if route.signals().is_empty() {
                    let known: Vec<&str> = crate::domain::Signal::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect();
                    return Err(ConfigError::new(
                        format!("{at}.signal"),
                        format!(
                            "{glob:?} matches no signal, so the route can never match (signals: \
                             {})",
                            known.join(", ")
                        ),
                    ));
                }
            }
            if let Some(label) = &route.label {
                let valid = label
                    .split_once('=')
                    .is_some_and(|(key, _)| !key.trim().is_empty());
                if !valid {
                    return Err(ConfigError::new(
                        format!("{at}.label"),
                        format!("{label:?} is not KEY=VALUE"),
                    ));
                }
            }
            if let Some(earlier) = self.slack.routes[..index]
                .iter()
                .position(|earlier| earlier.covers(route))
            {
                return Err(ConfigError::new(
                    at,
                    format!(
                        "can never match: slack.routes[{earlier}] before it takes every incident \
                         it would (the first matching route wins)"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen.parse().expect("validated at load")
    }

    /// Whether Slack is on: Sentinel needs at least the signing secret to accept requests.
    pub fn slack_enabled(&self) -> bool {
        self.secrets.slack_signing_secret.is_some() || self.secrets.slack_app_token.is_some()
    }

    /// Which analyzer proposes fixes, and why (`[analyzer] kind`, and whether an LLM API key
    /// is configured). Never names the key itself.
    pub fn analyzer_choice(&self) -> AnalyzerChoice {
        let endpoint = format!("{} at {}", self.llm.model, url_host(&self.llm.url));
        let key_from = self.secrets.llm_api_key_from.unwrap_or("a secret");
        let no_key = "set SENTINEL_LLM_API_KEY, OPENROUTER_API_KEY or [llm] api_key_file";
        let (llm, reason) = match (self.analyzer.kind, self.secrets.llm_api_key.is_some()) {
            (AnalyzerKind::Rules, _) => (
                false,
                "rules ([analyzer] kind = \"rules\")".to_owned(),
            ),
            (AnalyzerKind::Llm, true) => (
                true,
                format!(
                    "llm {endpoint} ([analyzer] kind = \"llm\", key from {key_from}); the \
                     rules when it fails"
                ),
            ),
            (AnalyzerKind::Llm, false) => (
                true,
                format!(
                    "llm {endpoint} ([analyzer] kind = \"llm\") without an API key: requests \
                     carry no Authorization header; the rules when it fails"
                ),
            ),
            (AnalyzerKind::Auto, true) => (
                true,
                format!(
                    "llm {endpoint} ([analyzer] kind = \"auto\" and an API key is set, from \
                     {key_from}); the rules when it fails"
                ),
            ),
            (AnalyzerKind::Auto, false) => (
                false,
                format!("rules ([analyzer] kind = \"auto\" and no LLM API key: {no_key} to use the LLM)"),
            ),
        };
        AnalyzerChoice { llm, reason }
    }

    /// A summary for `sentinel config check` and the startup log. Secrets show as set or not.
    pub fn summary(&self) -> BTreeMap<&'static str, String> {
        let set = |s: &Option<SecretString>| if s.is_some() { "set" } else { "not set" };
        let store = if self.secrets.redis_url.is_some() {
            format!("redis (prefix {:?})", self.store.redis_prefix)
        } else {
            format!("embedded ({})", self.data_dir.display())
        };
        let or_none = |s: &str, none: &str| {
            if s.is_empty() {
                none.to_owned()
            } else {
                s.to_owned()
            }
        };
        BTreeMap::from([
            ("mode", self.mode.as_str().to_owned()),
            (
                "interval",
                humantime::format_duration(self.interval.0).to_string(),
            ),
            (
                "settle",
                humantime::format_duration(self.settle.0).to_string(),
            ),
            ("listen", self.listen.clone()),
            ("store", store),
            ("sandbox", self.sandbox_dir.display().to_string()),
            (
                "prometheus",
                or_none(&self.monitor.prometheus_url, "local host fallback"),
            ),
            ("slack channel", or_none(&self.slack.channel, "none")),
            ("slack routes", self.slack.routes.len().to_string()),
            (
                "pagerduty",
                if self.secrets.pagerduty_routing_key.is_some() {
                    format!("on ({})", self.pagerduty.events_url)
                } else {
                    "off (no PAGERDUTY_ROUTING_KEY)".to_owned()
                },
            ),
            (
                "slack signing secret",
                set(&self.secrets.slack_signing_secret).to_owned(),
            ),
            (
                "slack bot token",
                set(&self.secrets.slack_bot_token).to_owned(),
            ),
            (
                "slack app token",
                set(&self.secrets.slack_app_token).to_owned(),
            ),
            ("llm api key", set(&self.secrets.llm_api_key).to_owned()),
            ("analyzer", self.analyzer_choice().reason),
            (
                "recent changes",
                if self.analyzer.change_window.0.is_zero() {
                    "not read ([analyzer] change_window = \"0s\")".to_owned()
                } else {
                    format!(
                        "Docker events of the target container in the {} before an incident",
                        humantime::format_duration(self.analyzer.change_window.0)
                    )
                },
            ),
            (
                "quarantine",
                format!(
                    "at most {} bytes, kept {}",
                    self.actions.quarantine_max_bytes.0,
                    humantime::format_duration(self.actions.quarantine_retention.0)
                ),
            ),
            ("api keys", self.api_keys.len().to_string()),
        ])
    }
}

/// `scheme://host[:port]` of a URL, without any credentials or path: safe to print.
fn url_host(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "an invalid URL".to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or(authority);
    format!("{scheme}://{host}")
}

/// A Slack channel must be named by its id (`C…`, or `G…` for an older private channel):
/// names change and are not unique, and the Web API wants ids.
fn check_channel_id(key: &str, channel: &str) -> Result<(), ConfigError> {
    let mut chars = channel.chars();
    let valid = matches!(chars.next(), Some('C' | 'G'))
        && (2..=32).contains(&channel.len())
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if valid {
        return Ok(());
    }
    let problem = if channel.starts_with('#') || channel.chars().any(|c| c.is_ascii_lowercase()) {
        format!(
            "{channel:?} looks like a channel name; use the channel's id instead (C…, shown at \
             the bottom of the channel's details in Slack)"
        )
    } else {
        format!("{channel:?} is not a Slack channel id (C… or G…)")
    };
    Err(ConfigError::new(key, problem))
}

fn is_slack_principal(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('U' | 'W' | 'S'))
        && id.len() >= 3
        && id.len() <= 32
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn check_url(key: &str, url: &str, may_be_empty: bool) -> Result<(), ConfigError> {
    if url.is_empty() {
        return if may_be_empty {
            Ok(())
        } else {
            Err(ConfigError::new(key, "must not be empty"))
        };
    }
    let valid = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .split_once("://")
            .is_some_and(|(_, rest)| !rest.is_empty())
        && !url.chars().any(char::is_whitespace);
    if valid {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        ))
    }
}

/// Parses TOML, turning a syntax error into one line with its line number.
fn parse_toml(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
        let key = match line {
            Some(line) => format!("{origin} line {line}"),
            None => origin.to_owned(),
        };
        ConfigError::new(key, e.message().trim().replace('\n', " "))
    })
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else is replaced.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base_table)), toml::Value::Table(overlay_table)) => {
                merge(base_table, overlay_table)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load_with(file_text: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let file = file_text.map(|text| {
            let mut file = tempfile::NamedTempFile::new().unwrap();
            file.write_all(text.as_bytes()).unwrap();
            file
        });
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&Sources {
            file: file.as_ref().map(|f| f.path()),
            env: &|name| env.get(name).cloned(),
        })
    }

    #[test]
    fn defaults_are_the_values_the_spec_documents() {
        let s = Settings::defaults();
        assert_eq!(s.mode, Mode::Auto);
        assert_eq!(s.interval.0, Duration::from_secs(30));
        assert_eq!(s.settle.0, Duration::from_secs(30));
        assert_eq!(s.listen, "127.0.0.1:3000");
        assert_eq!(s.data_dir, PathBuf::from("./data/sentinel"));
        let t = &s.thresholds;
        assert_eq!(
            (t.host_memory.warning, t.host_memory.critical),
            (Some(60.0), Some(90.0))
        );
        assert_eq!(
            (t.host_cpu.warning, t.host_cpu.critical),
            (Some(80.0), Some(95.0))
        );
        assert_eq!((t.disk.warning, t.disk.critical), (None, Some(95.0)));
        assert_eq!(
            (t.network_latency.warning, t.network_latency.critical),
            (Some(200.0), Some(1000.0))
        );
        assert_eq!(
            (t.container_memory.warning, t.container_memory.critical),
            (Some(60.0), Some(90.0))
        );
        assert_eq!(t.sandbox_size_mb.warning, Some(100.0));
        assert_eq!((s.monitor.for_samples, s.monitor.clear_for), (2, 2));
        assert!(s.monitor.container_include.is_empty());
        assert_eq!(
            s.monitor.container_exclude,
            vec![crate::domain::ContainerSelector::parse("label:sentinel.ignore=true").unwrap()]
        );
        assert_eq!(s.prometheus.network_latency, "");
        assert_eq!(s.actions.auto_budget_per_hour, 3);
        assert_eq!(s.actions.trust_after, 5);
        assert_eq!(s.rbac.default_role, DefaultRole::Role(Role::Viewer));
        assert!(s.alertmanager.bearer_token().is_none());
        assert_eq!(s.llm.model, "deepseek/deepseek-r1");
        assert_eq!(s.slack.api_url, "https://slack.com/api/");
        assert!(s.api_keys.is_empty());
        assert!(!s.slack_enabled());
    }

    #[test]
    fn the_change_window_defaults_to_30m_reads_none_at_0s_and_is_bounded() {
        let defaults = Settings::defaults();
        assert_eq!(defaults.analyzer.change_window.0, Duration::from_secs(1800));
        assert!(defaults.summary()["recent changes"].contains("30m before an incident"));
        let off = load_with(Some("[analyzer]\nchange_window = \"0s\"\n"), &[]).unwrap();
        assert!(off.analyzer.change_window.0.is_zero());
        assert!(off.summary()["recent changes"].starts_with("not read"));
        let long = load_with(Some("[analyzer]\nchange_window = \"8d\"\n"), &[]).unwrap_err();
        assert_eq!(long.key, "analyzer.change_window");
    }

    #[test]
    fn the_analyzer_is_the_llm_exactly_when_a_key_is_configured_unless_forced() {
        let defaults = Settings::defaults();
        assert_eq!(defaults.analyzer.kind, AnalyzerKind::Auto);
        let choice = defaults.analyzer_choice();
        assert!(!choice.llm);
        assert!(choice
            .reason
            .starts_with("rules ([analyzer] kind = \"auto\" and no LLM API key"));
        for env in ["SENTINEL_LLM_API_KEY", "OPENROUTER_API_KEY"] {
            let s = load_with(
                None,
                &[
                    (env, "sk-secret-value"),
                    ("SENTINEL_LLM_URL", "https://u:p@llm.example:8443/v1"),
                ],
            )
            .unwrap();
            let choice = s.analyzer_choice();
            assert!(choice.llm, "{env}");
            assert!(choice.reason.contains(env), "{}", choice.reason);
            assert!(
                choice.reason.contains("https://llm.example:8443"),
                "{}",
                choice.reason
            );
            assert!(!choice.reason.contains("sk-secret-value") && !choice.reason.contains("u:p"));
            assert_eq!(s.summary()["analyzer"], choice.reason);
        }
        let mut key_file = tempfile::NamedTempFile::new().unwrap();
        writeln!(key_file, "from-a-file").unwrap();
        let text = format!(
            "[llm]\napi_key_file = {:?}\n",
            key_file.path().display().to_string()
        );
        let s = load_with(Some(&text), &[]).unwrap();
        assert!(s.analyzer_choice().llm);
        assert!(s.analyzer_choice().reason.contains("llm.api_key_file"));
        // Forced: the rules with a key, the LLM without one.
        let rules = load_with(
            Some("[analyzer]\nkind = \"rules\"\n"),
            &[("OPENROUTER_API_KEY", "k")],
        );
        assert!(!rules.unwrap().analyzer_choice().llm);
        let llm = load_with(Some("[analyzer]\nkind = \"llm\"\n"), &[]).unwrap();
        assert!(llm.analyzer_choice().llm);
        assert!(llm.analyzer_choice().reason.contains("without an API key"));
        let bad = load_with(Some("[analyzer]\nkind = \"gpt\"\n"), &[]).unwrap_err();
        assert_eq!(bad.key, "analyzer.kind");
    }

    #[test]
    fn sizes_are_written_with_units() {
        assert_eq!(
            Settings::defaults().actions.quarantine_max_bytes,
            ByteSize(50_000_000)
        );
        for (text, bytes) in [
            ("50MB", 50_000_000),
            ("1.5 GB", 1_500_000_000),
            ("512KiB", 524_288),
            ("2MiB", 2_097_152),
            ("0", 0),
            ("10 b", 10),
        ] {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "MB", "-1MB", "5 parsecs", "1e999MB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let plain = load_with(Some("[actions]\nquarantine_max_bytes = 1000\n"), &[]).unwrap();
        assert_eq!(plain.actions.quarantine_max_bytes, ByteSize(1000));
        let bad = load_with(Some("[actions]\nquarantine_max_bytes = \"lots\"\n"), &[]).unwrap_err();
        assert_eq!(bad.key, "actions.quarantine_max_bytes");
        assert!(bad.problem.contains("not a size"), "{}", bad.problem);
    }

    #[test]
    fn a_user_file_names_only_what_it_changes() {
        let s = load_with(
            Some("mode = \"dry-run\"\n[thresholds]\nhost_memory = { warning = 70 }\n"),
            &[],
        )
        .unwrap();
        assert_eq!(s.mode, Mode::DryRun);
        assert_eq!(s.thresholds.host_memory.warning, Some(70.0));
        // The part the file did not name keeps its default.
        assert_eq!(s.thresholds.host_memory.critical, Some(90.0));
        assert_eq!(s.interval.0, Duration::from_secs(30));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let s = load_with(
            Some("interval = \"10s\"\nlisten = \"127.0.0.1:4000\"\n"),
            &[
                ("SENTINEL_INTERVAL", "5s"),
                ("SENTINEL_LISTEN", "127.0.0.1:5000"),
                ("SENTINEL_DATA_DIR", "/tmp/x"),
                ("SLACK_SIGNING_SECRET", "shh"),
                ("OPENROUTER_API_KEY", "or-key"),
                ("REDIS_URL", "redis://127.0.0.1:6379/2"),
                ("SLACK_CHANNEL", "C123"),
            ],
        )
        .unwrap();
        assert_eq!(s.interval.0, Duration::from_secs(5));
        assert_eq!(s.listen, "127.0.0.1:5000");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(s.slack.channel, "C123");
        assert_eq!(
            s.secrets
                .slack_signing_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "shh"
        );
        assert_eq!(
            s.secrets.llm_api_key.as_ref().unwrap().expose_secret(),
            "or-key"
        );
        assert!(s.slack_enabled());
    }

    #[test]
    fn secrets_come_from_files_and_never_show_in_debug_output() {
        let mut secret_file = tempfile::NamedTempFile::new().unwrap();
        writeln!(secret_file, "file-secret-value").unwrap();
        let config = format!(
            "[slack]\nsigning_secret_file = {:?}\n[alertmanager]\nbearer_token = \"am-token-value\"\n",
            secret_file.path().display().to_string()
        );
        let s = load_with(
            Some(&config),
            &[("SLACK_BOT_TOKEN", "xoxb-bot-token-value")],
        )
        .unwrap();
        assert_eq!(
            s.secrets
                .slack_signing_secret
                .as_ref()
                .unwrap()
                .expose_secret(),
            "file-secret-value"
        );
        let shown = format!("{s:?} {:?}", s.summary());
        for secret in [
            "file-secret-value",
            "am-token-value",
            "xoxb-bot-token-value",
        ] {
            assert!(!shown.contains(secret), "{secret} leaked into {shown}");
        }
    }

    /// Each bad input, and the key the one-line error must name.
    #[test]
    fn bad_configuration_is_refused_with_the_key_and_the_problem() {
        /// (file, environment, key named, problem said)
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            ("interval = \"banana\"", &[], "interval", "banana"),
            ("mode = \"yolo\"", &[], "mode", "yolo"),
            (
                "[thresholds]\nhost_cpu = { warning = 150 }",
                &[],
                "thresholds.host_cpu.warning",
                "150",
            ),
            (
                "[thresholds]\nhost_memory = { warning = 95, critical = 90 }",
                &[],
                "thresholds.host_memory",
                "above critical",
            ),
            (
                "[thresholds]\ndisk = { critical = \"high\" }",
                &[],
                "thresholds.disk.critical",
                "",
            ),
            (
                "[rbac]\ndefault_role = \"superuser\"",
                &[],
                "rbac.default_role",
                "superuser",
            ),
            (
                "[[api_keys]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"",
                &[],
                "api_keys[0].role",
                "root",
            ),
            (
                "[[api_keys]]\nname = \"x\"\nrole = \"admin\"\nsha256 = \"00\"",
                &[],
                "api_keys[0].sha256",
                "64",
            ),
            ("[rbac]\nadmins = [\"bob\"]", &[], "rbac.admins", "bob"),
            ("listen = \"everywhere\"", &[], "listen", "everywhere"),
            ("no_such_option = 1", &[], "no_such_option", "unknown field"),
            ("[monitor]\nfor = 0", &[], "monitor.for", "at least 1"),
            (
                "[monitor]\ncontainer_exclude = [\"label:sentinel.ignore=true\", \"image:x\"]",
                &[],
                "monitor.container_exclude[1]",
                "label:KEY",
            ),
            (
                "[monitor]\ncontainer_include = [\"name:\"]",
                &[],
                "monitor.container_include[0]",
                "name:GLOB",
            ),
            (
                "[monitor]\nprometheus_url = \"localhost:9090\"",
                &[],
                "monitor.prometheus_url",
                "URL",
            ),
            ("mode = ", &[], "line 1", ""),
            (
                "",
                &[("SENTINEL_INTERVAL", "soon")],
                "SENTINEL_INTERVAL",
                "soon",
            ),
            (
                "",
                &[("SLACK_APP_TOKEN", "xoxb-wrong")],
                "SLACK_APP_TOKEN",
                "xapp-",
            ),
            (
                "",
                &[("REDIS_URL", "http://user:pw@host")],
                "REDIS_URL",
                "redis://",
            ),
            ("", &[("PUBLIC_URL", "ftp://x")], "public_url", "ftp://x"),
            (
                "[slack]\nchannel = \"#incidents\"",
                &[],
                "slack.channel",
                "use the channel's id",
            ),
            ("", &[("SLACK_CHANNEL", "general")], "slack.channel", "id"),
            (
                "[[slack.routes]]\nchannel = \"#oncall\"\nseverity = \"critical\"",
                &[],
                "slack.routes[0].channel",
                "use the channel's id",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"",
                &[],
                "slack.routes[0]",
                "names no severity, signal or label",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"\nsignal = \"contaner_*\"",
                &[],
                "slack.routes[0].signal",
                "matches no signal",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"\nseverity = \"urgent\"",
                &[],
                "slack.routes[0].severity",
                "urgent",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"\nlabel = \"team\"",
                &[],
                "slack.routes[0].label",
                "KEY=VALUE",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"\nsignal = \"*\"\n\
                 [[slack.routes]]\nchannel = \"C2\"\nseverity = \"critical\"",
                &[],
                "slack.routes[1]",
                "can never match: slack.routes[0]",
            ),
            (
                "[[slack.routes]]\nchannel = \"C1\"\nseverity = \"critical\"\n\
                 [[slack.routes]]\nchannel = \"C2\"\nseverity = \"warning\"\n\
                 [[slack.routes]]\nchannel = \"C3\"\nseverity = \"critical\"\nsignal = \"container_*\"",
                &[],
                "slack.routes[2]",
                "can never match: slack.routes[0]",
            ),
            (
                "[pagerduty]\nseverities = [\"critical\", \"urgent\"]",
                &[],
                "pagerduty.severities[1]",
                "urgent",
            ),
            (
                "",
                &[("PAGERDUTY_EVENTS_URL", "events.pagerduty.com")],
                "pagerduty.events_url",
                "URL",
            ),
            (
                "",
                &[("PAGERDUTY_ROUTING_KEY", "not a key")],
                "PAGERDUTY_ROUTING_KEY",
                "integration key",
            ),
        ];
        for (file, env, key, problem) in cases {
            let err = load_with(Some(file), env).expect_err(file);
            let line = err.to_string();
            assert!(
                err.key.contains(key) || line.contains(key),
                "{file:?}: error {line:?} does not name {key:?}"
            );
            assert!(
                line.contains(problem),
                "{file:?}: {line:?} does not say {problem:?}"
            );
            assert!(!line.contains('\n'), "{line:?} is more than one line");
        }
        // The Redis URL may carry a password: the error never repeats it.
        let err = load_with(None, &[("REDIS_URL", "http://user:pw@host")]).unwrap_err();
        assert!(!err.to_string().contains("pw@"));
    }

    #[test]
    fn routes_pick_the_first_matching_channel_else_the_default() {
        use crate::domain::{Detection, Incident, IncidentId, Resource, Severity, Signal, Source};
        let s = load_with(
            Some(
                "[slack]\nchannel = \"C0DEFAULT\"\n\
                 [[slack.routes]]\nchannel = \"C0PAYMENTS\"\nlabel = \"team=payments\"\n\
                 [[slack.routes]]\nchannel = \"C0CRITICAL\"\nseverity = \"critical\"\n\
                 [[slack.routes]]\nchannel = \"G0CONTAINERS\"\nsignal = \"container_*\"\n",
            ),
            &[],
        )
        .unwrap();
        let incident = |signal, severity, labels: &[(&str, &str)]| {
            let detection = Detection {
                signal,
                resource: Resource::parse("web-1").unwrap(),
                severity,
                value: 95.0,
                threshold: 90.0,
                source: Source::Docker,
                summary: "seen".to_owned(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            Incident::open(
                IncidentId::generate(),
                &detection,
                crate::domain::Timestamp::now(),
            )
        };
        let route = |i: &Incident| s.slack.channel_for(i).map(str::to_owned);
        let cases = [
            (
                incident(Signal::HostCpu, Severity::Warning, &[]),
                "C0DEFAULT",
            ),
            (
                incident(Signal::HostCpu, Severity::Critical, &[]),
                "C0CRITICAL",
            ),
            (
                incident(Signal::ContainerMemory, Severity::Critical, &[]),
                "C0CRITICAL",
            ),
            (
                incident(Signal::ContainerMemory, Severity::Warning, &[]),
                "G0CONTAINERS",
            ),
            (
                incident(
                    Signal::External,
                    Severity::Critical,
                    &[("team", "payments")],
                ),
                "C0PAYMENTS",
            ),
            (
                incident(Signal::External, Severity::Info, &[("team", "payment")]),
                "C0DEFAULT",
            ),
        ];
        for (incident, channel) in &cases {
            assert_eq!(
                route(incident).as_deref(),
                Some(*channel),
                "{} {} {:?}",
                incident.signal,
                incident.severity,
                incident.labels
            );
        }
        // Without a default channel, an incident no route takes gets no card.
        let mut none = s.slack.clone();
        none.channel = String::new();
        assert_eq!(none.channel_for(&cases[0].0), None);
        assert!(none.has_channels());
    }

    #[test]
    fn pagerduty_is_off_without_a_routing_key_and_reads_it_from_a_file() {
        let s = Settings::defaults();
        assert!(s.secrets.pagerduty_routing_key.is_none());
        assert_eq!(s.pagerduty.events_url, "https://events.pagerduty.com/v2/");
        assert_eq!(
            s.pagerduty.severities,
            vec![crate::domain::Severity::Critical]
        );
        let mut key_file = tempfile::NamedTempFile::new().unwrap();
        writeln!(key_file, "R0123456789abcdef0123456789abcde").unwrap();
        let config = format!(
            "[pagerduty]\nrouting_key_file = {:?}\nevents_url = \"http://127.0.0.1:9/pd/v2\"\n",
            key_file.path().display().to_string()
        );
        let s = load_with(Some(&config), &[]).unwrap();
        assert_eq!(
            s.secrets
                .pagerduty_routing_key
                .as_ref()
                .unwrap()
                .expose_secret(),
            "R0123456789abcdef0123456789abcde"
        );
        // The base always ends with a slash, so `{events_url}enqueue` is a path below it.
        assert_eq!(s.pagerduty.events_url, "http://127.0.0.1:9/pd/v2/");
        assert!(!format!("{s:?}").contains("R0123456789abcdef"));
        let s = load_with(None, &[("PAGERDUTY_ROUTING_KEY", "abc123")]).unwrap();
        assert!(s.secrets.pagerduty_routing_key.is_some());
    }

    #[test]
    fn an_unreadable_file_names_the_file() {
        let err = Settings::load(&Sources {
            file: Some(Path::new("/nonexistent/sentinel.toml")),
            env: &|_| None,
        })
        .unwrap_err();
        assert_eq!(err.key, "/nonexistent/sentinel.toml");
        assert!(err.problem.contains("cannot read"));
    }
}
