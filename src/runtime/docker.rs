//! Docker: every container the Engine knows, as [`ContainerSample`]s.
//!
//! In: a Docker host (`unix://…`, `tcp://…`, `http://…`; empty means `DOCKER_HOST`, else the
//! local socket), how many containers to ask about at once, and a time budget.
//! Out: one [`ContainerSample`] per container, running or not, sorted by name: state, health,
//! restart count and policy, exit code, labels and, for running containers, memory as
//! `docker stats` counts it.
//!
//! A collection is one list call, then one inspect per container and one one-shot stats call
//! per running container, at most `concurrency` containers in flight, the whole of it bounded
//! by the time budget. Nothing here decides whether a container is down or its memory too
//! high: that is [`ContainerSample::down_reason`] and `pipeline::detect`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerInspectResponse, ContainerMemoryStats, HealthStatusEnum, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    EventsOptions, InspectContainerOptions, ListContainersOptions, StatsOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::{StreamExt, TryStreamExt};

use super::{ContainerEvent, ContainerSample};
use crate::domain::Timestamp;

/// The Docker actions that can be a recent change to a container (SPEC §12.4).
pub const CHANGE_ACTIONS: [&str; 5] = ["create", "destroy", "rename", "update", "start"];

/// The most events [`DockerCollector::container_events`] returns (the newest ones).
pub const MAX_EVENTS: usize = 100;

/// The socket used when neither the settings nor `DOCKER_HOST` name a host.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("unsupported docker host {host:?}: expected unix://, tcp:// or http://")]
    UnsupportedHost { host: String },
    #[error("docker is not reachable at {host}: {}", chain(.error))]
    Unreachable { host: String, error: BollardError },
    #[error("docker at {host} did not answer within {}", humantime::format_duration(*.timeout))]
    ConnectTimedOut { host: String, timeout: Duration },
    #[error("docker at {host} failed while {doing}: {}", chain(.error))]
    Request {
        host: String,
        /// What was being asked, e.g. `listing containers`.
        doing: String,
        error: BollardError,
    },
    #[error(
        "collecting containers from docker at {host} took longer than {}",
        humantime::format_duration(*.timeout)
    )]
    CollectTimedOut { host: String, timeout: Duration },
    #[error(
        "reading container events from docker at {host} took longer than {}",
        humantime::format_duration(*.timeout)
    )]
    EventsTimedOut { host: String, timeout: Duration },
}

impl DockerError {
    /// The reason in a few words for the status page and `/sentinel status` (`Docker:
    /// connection refused`); the full error, with bollard's chain, goes to the log.
    pub fn for_people(&self) -> String {
        match self {
            DockerError::UnsupportedHost { host } => {
                format!("Docker: {host:?} is not a unix://, tcp:// or http:// address")
            }
            DockerError::Unreachable {
                error: BollardError::SocketNotFoundError(path),
                ..
            } => format!("Docker: no socket at {path}"),
            DockerError::Unreachable { host, error } => match io_kind(error) {
                Some(std::io::ErrorKind::NotFound) => match host.strip_prefix("unix://") {
                    Some(path) => format!("Docker: no socket at {path}"),
                    None => "Docker: not found".to_owned(),
                },
                Some(std::io::ErrorKind::ConnectionRefused) => {
                    "Docker: connection refused".to_owned()
                }
                Some(std::io::ErrorKind::PermissionDenied) => {
                    "Docker: permission denied on its socket".to_owned()
                }
                Some(std::io::ErrorKind::TimedOut) => "Docker: connection timed out".to_owned(),
                _ => format!("Docker: cannot connect to {host}"),
            },
            DockerError::ConnectTimedOut { timeout, .. } => format!(
                "Docker: did not answer within {}",
                humantime::format_duration(*timeout)
            ),
            DockerError::Request { doing, error, .. } => match error {
                BollardError::DockerResponseServerError { status_code, .. } => {
                    format!("Docker: answered HTTP {status_code} while {doing}")
                }
                _ => format!("Docker: failed while {doing}"),
            },
            DockerError::CollectTimedOut { timeout, .. } => format!(
                "Docker: listing containers took longer than {}",
                humantime::format_duration(*timeout)
            ),
            DockerError::EventsTimedOut { timeout, .. } => format!(
                "Docker: reading its events took longer than {}",
                humantime::format_duration(*timeout)
            ),
        }
    }
}

/// The kind of the operating system error behind a bollard error, if there is one.
fn io_kind(error: &BollardError) -> Option<std::io::ErrorKind> {
    if let BollardError::IOError { err } = error {
        return Some(err.kind());
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = cause.source();
    }
    None
}

/// A connected, version-negotiated Docker client that produces [`ContainerSample`]s.
#[derive(Debug, Clone)]
pub struct DockerCollector {
    docker: Docker,
    /// The host as resolved (after `DOCKER_HOST` and the default), for error messages.
    host: String,
    concurrency: usize,
    timeout: Duration,
}

impl DockerCollector {
    /// Connects to `docker_host` (empty: `DOCKER_HOST`, else [`DEFAULT_DOCKER_HOST`]) and
    /// negotiates the API version, within `timeout`. Fails, without hanging, when the daemon
    /// is not there.
    pub async fn connect(
        docker_host: &str,
        concurrency: usize,
        timeout: Duration,
    ) -> Result<Self, DockerError> {
        let env = std::env::var("DOCKER_HOST").ok();
        let host = resolve_host(docker_host, env.as_deref());
        // bollard's own per-request timeout is in whole seconds; it is only a backstop for
        // the `tokio::time::timeout`s here, so round up and never make it zero.
        let client_timeout = timeout.as_secs_f64().ceil().max(1.0) as u64;
        let unreachable = |error| DockerError::Unreachable {
            host: host.clone(),
            error,
        };
        let docker = match Endpoint::parse(&host) {
            Some(Endpoint::Unix(path)) => {
                Docker::connect_with_unix(path, client_timeout, API_DEFAULT_VERSION)
            }
            Some(Endpoint::Http(addr)) => {
                Docker::connect_with_http(addr, client_timeout, API_DEFAULT_VERSION)
            }
            None => return Err(DockerError::UnsupportedHost { host }),
        }
        .map_err(unreachable)?;
        // Debian's docker.io 20.10 speaks API 1.41; bollard 0.21 defaults to 1.53.
        let docker = match tokio::time::timeout(timeout, docker.negotiate_version()).await {
            Ok(Ok(docker)) => docker,
            Ok(Err(error)) => return Err(unreachable(error)),
            Err(_) => return Err(DockerError::ConnectTimedOut { host, timeout }),
        };
        Ok(Self {
            docker,
            host,
            concurrency: concurrency.max(1),
            timeout,
        })
    }

    /// The host this collector talks to, as resolved at connection.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The negotiated bollard client, for whatever must act on containers (and for tests).
    pub fn client(&self) -> &Docker {
        &self.docker
    }

    /// Every container, stopped ones included, sorted by name. A container removed while
    /// this runs is left out; any other Docker failure, or running out of time, is an error.
    pub async fn collect(&self) -> Result<Vec<ContainerSample>, DockerError> {
        match tokio::time::timeout(self.timeout, self.collect_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::CollectTimedOut {
                host: self.host.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn collect_unbounded(&self) -> Result<Vec<ContainerSample>, DockerError> {
        let list = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let containers = self
            .docker
            .list_containers(Some(list))
            .await
            .map_err(|error| self.request_error("listing containers".to_owned(), error))?;
        let ids = containers.into_iter().filter_map(|summary| summary.id);
        let mut samples: Vec<ContainerSample> = futures::stream::iter(ids)
            .map(|id| self.sample(id))
            .buffer_unordered(self.concurrency)
            .try_filter_map(|sample| async move { Ok(sample) })
            .try_collect()
            .await?;
        samples.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(samples)
    }

    /// One container, or `None` when it is gone by the time Docker is asked about it.
    async fn sample(&self, id: String) -> Result<Option<ContainerSample>, DockerError> {
        let inspected = match self
            .docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => inspected,
            Err(error) if is_not_found(&error) => return Ok(None),
            Err(error) => {
                return Err(self.request_error(format!("inspecting container {id}"), error))
            }
        };
        let mut sample = sample_from_inspect(&id, inspected);
        if sample.state != "running" {
            return Ok(Some(sample));
        }
        // One reading, now: `one_shot` skips the second sample Docker otherwise waits about
        // two seconds for (it only matters for CPU, which is not read here).
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        match self.docker.stats(&id, Some(options)).next().await {
            Some(Ok(stats)) => {
                if let Some(memory) = &stats.memory_stats {
                    sample.memory_used_bytes = memory_used_bytes(memory);
                    sample.memory_limit_bytes = memory.limit.filter(|&limit| limit > 0);
                }
            }
            Some(Err(error)) if is_not_found(&error) => return Ok(None),
            // The state, health and restarts are still worth having without memory.
            Some(Err(error)) => tracing::warn!(
                container = %sample.name,
                error = %chain(&error),
                "docker stats failed; reporting the container without memory"
            ),
            None => {}
        }
        Ok(Some(sample))
    }

    /// What Docker recorded about the containers named `name` (or renamed from it) from
    /// `since` to `until`: its create, destroy, rename, update and start events, oldest
    /// first, at most [`MAX_EVENTS`] (the newest), each with the image id it ran
    /// ([`ContainerEvent::image_id`]). Bounded by the time budget; `until` should not be in
    /// the future, or Docker waits for it.
    pub async fn container_events(
        &self,
        name: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<ContainerEvent>, DockerError> {
        let read = self.container_events_unbounded(name, since, until);
        match tokio::time::timeout(self.timeout, read).await {
            Ok(result) => result,
            Err(_) => Err(DockerError::EventsTimedOut {
                host: self.host.clone(),
                timeout: self.timeout,
            }),
        }
    }

    async fn container_events_unbounded(
        &self,
        name: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<ContainerEvent>, DockerError> {
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "event".to_owned(),
                CHANGE_ACTIONS.iter().map(|a| (*a).to_owned()).collect(),
            ),
        ]);
        let options = EventsOptions {
            since: Some(docker_time(since)),
            until: Some(docker_time(until)),
            filters: Some(filters),
        };
        // Docker's own `container` filter matches name prefixes (web-1 would match web-10)
        // and misses a rename away from the name, so the names are matched here.
        let mut events: Vec<ContainerEvent> = self
            .docker
            .events(Some(options))
            .map_err(|error| self.request_error("reading container events".to_owned(), error))
            .try_filter_map(|message| async move {
                Ok(event_from_message(message)
                    .filter(|event| event.name == name || event.old_name.as_deref() == Some(name)))
            })
            .try_collect()
            .await?;
        events.sort_by_key(|event| event.at);
        if events.len() > MAX_EVENTS {
            events.drain(..events.len() - MAX_EVENTS);
        }
        let mut by_container: HashMap<String, Option<String>> = HashMap::new();
        let mut by_reference: HashMap<String, Option<String>> = HashMap::new();
        for event in &mut events {
            if !by_container.contains_key(&event.id) {
                let image = self
                    .docker
                    .inspect_container(&event.id, None::<InspectContainerOptions>)
                    .await
                    .ok()
                    .and_then(|inspected| inspected.image);
                by_container.insert(event.id.clone(), image);
            }
            let mut image_id = by_container[&event.id].clone();
            if image_id.is_none() {
                if let Some(reference) = &event.image {
                    if !by_reference.contains_key(reference) {
                        let id = self
                            .docker
                            .inspect_image(reference)
                            .await
                            .ok()
                            .and_then(|image| image.id);
                        by_reference.insert(reference.clone(), id);
                    }
                    image_id = by_reference[reference].clone();
                }
            }
            event.image_id = image_id;
        }
        Ok(events)
    }

    fn request_error(&self, doing: String, error: BollardError) -> DockerError {
        DockerError::Request {
            host: self.host.clone(),
            doing,
            error,
        }
    }
}

/// `seconds.nanoseconds`, the timestamp form Docker's `since` and `until` take.
fn docker_time(at: Timestamp) -> String {
    let ms = at.unix_millis();
    format!(
        "{}.{:09}",
        ms.div_euclid(1000),
        ms.rem_euclid(1000) * 1_000_000
    )
}

/// A container event, or `None` for anything else (or one without an id or a name).
fn event_from_message(message: bollard::models::EventMessage) -> Option<ContainerEvent> {
    let action = message.action?;
    let actor = message.actor?;
    let id = actor.id?;
    let attributes = actor.attributes.unwrap_or_default();
    let at = match (message.time_nano, message.time) {
        (Some(nanos), _) => nanos.div_euclid(1_000_000),
        (None, Some(seconds)) => seconds.saturating_mul(1000),
        (None, None) => return None,
    };
    let name = attributes.get("name")?.trim_start_matches('/').to_owned();
    Some(ContainerEvent {
        at: Timestamp::from_unix_millis(at),
        action,
        id,
        name,
        old_name: attributes
            .get("oldName")
            .map(|old| old.trim_start_matches('/').to_owned()),
        image: attributes.get("image").cloned(),
        image_id: None,
    })
}

/// The `n` samples using the largest share of their memory limit, largest first; containers
/// without a memory reading are left out.
pub fn top_memory(samples: &[ContainerSample], n: usize) -> Vec<&ContainerSample> {
    let mut with_memory: Vec<(f64, &ContainerSample)> = samples
        .iter()
        .filter_map(|sample| Some((sample.memory_percent()?, sample)))
        .collect();
    with_memory.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.name.cmp(&b.1.name)));
    with_memory
        .into_iter()
        .take(n)
        .map(|(_, sample)| sample)
        .collect()
}

/// Bytes in use as `docker stats` shows them: usage minus the inactive file cache
/// (`total_inactive_file` on cgroup v1, `inactive_file` on v2).
///
/// Only the *inactive* file cache is left out, not all of `cache`: a tmpfs (shmem) is counted
/// as cache but cannot be reclaimed, and a container filling one is really using the memory.
/// As in the Docker CLI, an inactive figure not below usage leaves usage as it is.
pub fn memory_used_bytes(memory: &ContainerMemoryStats) -> Option<u64> {
    let usage = memory.usage?;
    let stats = memory.stats.as_ref();
    let inactive = stats
        .and_then(|stats| stats.get("total_inactive_file"))
        .or_else(|| stats.and_then(|stats| stats.get("inactive_file")))
        .copied()
        .unwrap_or(0);
    Some(if inactive < usage {
        usage - inactive
    } else {
        usage
    })
}

/// Everything but memory, from one inspect answer. `id` is the id the list gave, used when
/// the answer lacks one.
fn sample_from_inspect(id: &str, inspected: ContainerInspectResponse) -> ContainerSample {
    let state = inspected.state.unwrap_or_default();
    let health = state
        .health
        .and_then(|health| health.status)
        .filter(|status| !matches!(status, HealthStatusEnum::EMPTY | HealthStatusEnum::NONE))
        .map(|status| status.to_string());
    // Docker 20.10 leaves the policy name empty for containers created through the API
    // without one; the Engine documents empty as "do not restart".
    let restart_policy = inspected
        .host_config
        .and_then(|host_config| host_config.restart_policy)
        .and_then(|policy| policy.name)
        .filter(|name| *name != RestartPolicyNameEnum::EMPTY)
        .map_or_else(|| "no".to_owned(), |name| name.to_string());
    let labels: HashMap<String, String> = inspected
        .config
        .and_then(|config| config.labels)
        .unwrap_or_default();
    ContainerSample {
        name: inspected
            .name
            .as_deref()
            .unwrap_or(id)
            .trim_start_matches('/')
            .to_owned(),
        id: inspected.id.unwrap_or_else(|| id.to_owned()),
        state: state
            .status
            .map_or_else(|| "unknown".to_owned(), |status| status.to_string()),
        health,
        restart_count: inspected.restart_count.unwrap_or(0),
        exit_code: state.exit_code,
        restart_policy,
        labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
        memory_used_bytes: None,
        memory_limit_bytes: None,
    }
}

/// The host to use: the configured one, else `DOCKER_HOST`, else the local socket.
fn resolve_host(configured: &str, env: Option<&str>) -> String {
    let configured = configured.trim();
    if !configured.is_empty() {
        return configured.to_owned();
    }
    match env.map(str::trim) {
        Some(env) if !env.is_empty() => env.to_owned(),
        _ => DEFAULT_DOCKER_HOST.to_owned(),
    }
}

/// How to reach a host, by its scheme. (The host is resolved here rather than by
/// `Docker::connect_with_local_defaults`, which reads `DOCKER_HOST` itself and would let it
/// override a socket named in the settings.)
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    /// A Unix socket, given as `unix:///path` (bollard strips the scheme itself).
    Unix(&'a str),
    /// Plain HTTP, given as `tcp://host:port` or `http://host:port`.
    Http(&'a str),
}

impl<'a> Endpoint<'a> {
    fn parse(host: &'a str) -> Option<Self> {
        if host.starts_with("unix://") {
            Some(Self::Unix(host))
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Some(Self::Http(host))
        } else {
            None
        }
    }
}

/// Docker answered 404: the container no longer exists.
fn is_not_found(error: &BollardError) -> bool {
    matches!(
        error,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// An error and its causes on one line, `outer: inner: …` (bollard's own messages often say
/// little, e.g. "client error (Connect)", and the reason is further down).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerStatsResponse;
    use serde_json::json;

    fn memory(stats: serde_json::Value) -> ContainerMemoryStats {
        let response: ContainerStatsResponse =
            serde_json::from_value(json!({ "memory_stats": stats })).unwrap();
        response.memory_stats.unwrap()
    }

    #[test]
    fn cgroup_v1_subtracts_total_inactive_file_not_all_of_the_cache() {
        // Shape from docker.io 20.10 on cgroup v1: 48 MiB in a tmpfs is `cache` and `shmem`,
        // but not inactive file cache.
        let stats = memory(json!({
            "usage": 52_000_000u64,
            "max_usage": 53_000_000u64,
            "limit": 67_108_864u64,
            "stats": {
                "cache": 50_700_000u64,
                "shmem": 50_331_648u64,
                "inactive_file": 900_000u64,
                "total_inactive_file": 1_000_000u64,
                "total_cache": 50_700_000u64,
                "rss": 300_000u64
            }
        }));
        assert_eq!(memory_used_bytes(&stats), Some(51_000_000));
        assert_eq!(stats.limit, Some(67_108_864));
    }

    #[test]
    fn cgroup_v2_subtracts_inactive_file() {
        let stats = memory(json!({
            "usage": 52_000_000u64,
            "limit": 67_108_864u64,
            "stats": { "file": 50_700_000u64, "shmem": 50_331_648u64, "inactive_file": 2_000_000u64 }
        }));
        assert_eq!(memory_used_bytes(&stats), Some(50_000_000));
    }

    #[test]
    fn odd_memory_readings() {
        // As the Docker CLI does: inactive not below usage leaves usage.
        let stats = memory(json!({ "usage": 1000u64, "stats": { "inactive_file": 5000u64 } }));
        assert_eq!(memory_used_bytes(&stats), Some(1000));
        // No breakdown: usage as it is.
        assert_eq!(
            memory_used_bytes(&memory(json!({ "usage": 7u64 }))),
            Some(7)
        );
        // A stopped container's stats are empty.
        assert_eq!(memory_used_bytes(&memory(json!({}))), None);
    }

    fn inspected(value: serde_json::Value) -> ContainerInspectResponse {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_inspect_answer_becomes_a_sample() {
        let sample = sample_from_inspect(
            "listed-id",
            inspected(json!({
                "Id": "abc123",
                "Name": "/web-1",
                "RestartCount": 4,
                "State": {
                    "Status": "running", "Running": true, "ExitCode": 0,
                    "Health": { "Status": "unhealthy", "FailingStreak": 3, "Log": [] }
                },
                "HostConfig": { "RestartPolicy": { "Name": "unless-stopped", "MaximumRetryCount": 0 } },
                "Config": { "Labels": { "sentinel.protected": "true", "app": "web" } }
            })),
        );
        assert_eq!(sample.name, "web-1");
        assert_eq!(sample.id, "abc123");
        assert_eq!(sample.state, "running");
        assert_eq!(sample.health.as_deref(), Some("unhealthy"));
        assert_eq!(sample.restart_count, 4);
        assert_eq!(sample.exit_code, Some(0));
        assert_eq!(sample.restart_policy, "unless-stopped");
        assert_eq!(sample.labels["app"], "web");
        assert!(sample.protected());
        assert_eq!(sample.down_reason().as_deref(), Some("unhealthy"));
    }

    #[test]
    fn missing_parts_of_an_inspect_answer_have_plain_defaults() {
        let sample = sample_from_inspect(
            "listed-id",
            inspected(json!({
                "State": { "Status": "exited", "ExitCode": 0, "Health": { "Status": "none" } },
                "HostConfig": { "RestartPolicy": { "Name": "" } },
                "Config": { "Labels": null }
            })),
        );
        assert_eq!(sample.name, "listed-id");
        assert_eq!(sample.id, "listed-id");
        assert_eq!(sample.health, None, "no health check");
        assert_eq!(sample.restart_policy, "no", "empty means do not restart");
        assert!(sample.labels.is_empty());
        assert_eq!(sample.down_reason(), None, "a finished one-off job");
        let bare = sample_from_inspect("x", inspected(json!({})));
        assert_eq!(bare.state, "unknown");
        assert_eq!(bare.restart_count, 0);
    }

    #[test]
    fn the_host_comes_from_settings_then_the_environment_then_the_default() {
        assert_eq!(resolve_host("", None), DEFAULT_DOCKER_HOST);
        assert_eq!(resolve_host(" ", Some("")), DEFAULT_DOCKER_HOST);
        assert_eq!(resolve_host("", Some("tcp://d:2375")), "tcp://d:2375");
        assert_eq!(
            resolve_host("unix:///run/d.sock", Some("tcp://d:2375")),
            "unix:///run/d.sock"
        );
    }

    #[test]
    fn hosts_are_reached_by_their_scheme() {
        assert_eq!(
            Endpoint::parse(DEFAULT_DOCKER_HOST),
            Some(Endpoint::Unix(DEFAULT_DOCKER_HOST))
        );
        assert_eq!(
            Endpoint::parse("unix:///run/d.sock"),
            Some(Endpoint::Unix("unix:///run/d.sock"))
        );
        assert_eq!(
            Endpoint::parse("tcp://d:2375"),
            Some(Endpoint::Http("tcp://d:2375"))
        );
        assert_eq!(
            Endpoint::parse("http://d:2375"),
            Some(Endpoint::Http("http://d:2375"))
        );
        assert_eq!(Endpoint::parse("ssh://d"), None);
        assert_eq!(Endpoint::parse("/var/run/docker.sock"), None);
    }

    #[tokio::test]
    async fn an_unsupported_host_is_refused_by_name() {
        let err = DockerCollector::connect("ssh://box", 4, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, DockerError::UnsupportedHost { .. }));
        assert_eq!(
            err.to_string(),
            "unsupported docker host \"ssh://box\": expected unix://, tcp:// or http://"
        );
    }

    #[test]
    fn an_event_message_becomes_a_container_event() {
        // The shape docker.io 20.10 sends for `docker rename`.
        let message: bollard::models::EventMessage = serde_json::from_value(json!({
            "Type": "container", "Action": "rename",
            "Actor": {"ID": "fb38", "Attributes": {
                "image": "shop/web:2", "name": "web-1", "oldName": "/web-1-blue"}},
            "scope": "local", "time": 1796319627, "timeNano": 1796319627987801375i64
        }))
        .unwrap();
        let event = event_from_message(message).unwrap();
        assert_eq!(event.at, Timestamp::from_unix_millis(1_796_319_627_987));
        assert_eq!(event.action, "rename");
        assert_eq!(event.id, "fb38");
        assert_eq!(event.name, "web-1");
        assert_eq!(event.old_name.as_deref(), Some("web-1-blue"));
        assert_eq!(event.image.as_deref(), Some("shop/web:2"));
        assert_eq!(event.image_id, None, "resolved later, from Docker");
        let nameless: bollard::models::EventMessage = serde_json::from_value(
            json!({"Action": "start", "Actor": {"ID": "x", "Attributes": {}}, "time": 1}),
        )
        .unwrap();
        assert_eq!(event_from_message(nameless), None);
        assert_eq!(
            docker_time(Timestamp::from_unix_millis(1_796_319_627_987)),
            "1796319627.987000000"
        );
    }

    #[test]
    fn only_a_404_means_the_container_is_gone() {
        let gone = BollardError::DockerResponseServerError {
            status_code: 404,
            message: "No such container: x".into(),
        };
        let broken = BollardError::DockerResponseServerError {
            status_code: 500,
            message: "boom".into(),
        };
        assert!(is_not_found(&gone));
        assert!(!is_not_found(&broken));
        assert!(!is_not_found(&BollardError::RequestTimeoutError));
    }

    #[test]
    fn top_memory_ranks_by_share_of_the_limit() {
        let sample = |name: &str, used: Option<u64>, limit: u64| ContainerSample {
            name: name.into(),
            id: name.into(),
            state: "running".into(),
            health: None,
            restart_count: 0,
            exit_code: Some(0),
            restart_policy: "no".into(),
            labels: BTreeMap::new(),
            memory_used_bytes: used,
            memory_limit_bytes: Some(limit),
        };
        let samples = [
            sample("a", Some(10), 100),
            sample("b", Some(90), 100),
            sample("c", None, 100),
            sample("d", Some(50), 1000),
            sample("e", Some(50), 100),
        ];
        let names: Vec<&str> = top_memory(&samples, 3)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["b", "e", "a"]);
        assert_eq!(top_memory(&samples, 10).len(), 4);
    }
}
