//! Monitor: every `interval`, collect what Prometheus (or the local host), Docker (or
//! cAdvisor) and the sandbox say, hand it to `detect`, and apply the decisions through
//! `intake`.
//!
//! In: settings and the collectors of `runtime`. Out: observations, the readings
//! `/api/status` shows, incidents opened, updated and resolved, and a [`CycleReport`].
//!
//! Each collector runs under `collector_timeout`; one that fails or hangs marks its signals
//! unavailable, with a reason worded for people, and never stops the others. A cycle never
//! overlaps the next. With several replicas only the holder of the `monitor` lease runs
//! cycles, and it checks its fencing token right before writing, so a replica that lost the
//! lease while paused writes nothing.
//!
//! Only watched containers (`[monitor] container_include` / `container_exclude`) are
//! reported: an unwatched one opens nothing and is in nobody's inventory.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::SignalReading;
use crate::domain::{Actor, Observation, Resource, Signal, Source, Timestamp};
use crate::pipeline::detect::{self, Decision, DetectorState, Hysteresis};
use crate::pipeline::intake::{self, Intake};
use crate::pipeline::{Pipeline, Readings};
use crate::runtime::docker::DockerCollector;
use crate::runtime::host::HostCollector;
use crate::runtime::prometheus::{CadvisorContainer, PrometheusClient};
use crate::runtime::{sandbox, ContainerEvent, ContainerFilter, ContainerSample, HostSample};
use crate::store::{IncidentQuery, StoreError};

/// The lease that elects the replica running the monitor loop.
pub const LEASE: &str = "monitor";

/// How often the leader looks for work a lost replica left under way
/// (`remediate::adopt_orphans`): a full listing of the recent incidents, so not every cycle.
const ADOPT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The resource container signals are reported under when there is no container to name
/// (Docker unreachable, nothing watched, no reading yet).
pub const CONTAINERS_RESOURCE: &str = "containers";

/// What one cycle collected.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub observations: Vec<Observation>,
    /// Signals that could not be measured, and why (pending ones included: a signal without
    /// a value neither opens nor resolves anything).
    pub unavailable: BTreeMap<Signal, String>,
    /// Every signal with value, threshold, state and source, for `/api/status`.
    pub readings: Vec<SignalReading>,
}

/// The host signals as read this cycle.
#[derive(Debug, Clone)]
pub struct HostRead {
    pub sample: HostSample,
    /// `Prometheus`, or `Local` for this machine.
    pub source: Source,
    /// Why the local host was read although Prometheus is configured, for people.
    pub fallback: Option<String>,
}

/// What Docker (or, without it, cAdvisor) said about containers this cycle.
#[derive(Debug, Clone)]
pub enum ContainersRead {
    /// Docker answered: the watched containers, and how many others it has.
    Docker {
        watched: Vec<ContainerSample>,
        unwatched: usize,
    },
    /// Docker could not be asked (`why`, for people); `cadvisor` is container memory from
    /// Prometheus when it is configured, with the watched containers only.
    Unavailable {
        why: String,
        cadvisor: Option<Result<Vec<CadvisorContainer>, String>>,
    },
}

/// The collectors, built once from the settings.
pub struct Collectors {
    settings: Arc<Settings>,
    prometheus: Option<PrometheusClient>,
    /// Which containers are watched, from `[monitor] container_include` / `_exclude`.
    filter: ContainerFilter,
    /// Keeps the previous CPU and network counters between cycles to compute rates.
    host: Arc<std::sync::Mutex<HostCollector>>,
    /// Connected on first use and again after a failure, so a Docker daemon that starts
    /// after Sentinel is picked up.
    docker: tokio::sync::Mutex<Option<DockerCollector>>,
    /// The last Docker failure logged, so a daemon that stays away is logged once, not
    /// every cycle.
    docker_failure: std::sync::Mutex<Option<String>>,
}

impl Collectors {
    pub fn new(settings: Arc<Settings>) -> Self {
        let timeout = settings.monitor.collector_timeout.0;
        let url = &settings.monitor.prometheus_url;
        let prometheus = if url.is_empty() {
            None
        } else {
            match PrometheusClient::new(url, timeout) {
                Ok(client) => Some(client),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot use Prometheus; reading the local host");
                    None
                }
            }
        };
        let host = HostCollector::new(settings.monitor.disk_mounts.clone());
        Collectors {
            filter: settings.monitor.container_filter(),
            settings,
            prometheus,
            host: Arc::new(std::sync::Mutex::new(host)),
            docker: tokio::sync::Mutex::new(None),
            docker_failure: std::sync::Mutex::new(None),
        }
    }

    /// Runs every collector concurrently, each under the collector timeout.
    #[tracing::instrument(name = "collect", skip_all)]
    pub async fn collect(&self) -> Collected {
        let (host, containers, sandbox) = tokio::join!(
            self.host_signals(),
            self.containers_read(),
            self.sandbox_bytes()
        );
        let metrics = crate::telemetry::metrics::metrics();
        for (collector, failed) in [
            ("host", host.is_err()),
            (
                "docker",
                matches!(containers, ContainersRead::Unavailable { .. }),
            ),
            ("sandbox", sandbox.is_err()),
        ] {
            if failed {
                metrics.collector_error(collector);
            }
        }
        build_observations(&self.settings, host, containers, sandbox)
    }

    async fn host_signals(&self) -> Result<HostRead, String> {
        let timeout = self.settings.monitor.collector_timeout.0;
        let mut fallback = None;
        if let Some(prometheus) = &self.prometheus {
            let query = prometheus.host_sample(
                &self.settings.prometheus,
                &self.settings.monitor.disk_mounts,
            );
            let why = match tokio::time::timeout(timeout, query).await {
                // Prometheus up but node-exporter not scraped: nothing to go on.
                Ok(Ok(sample)) if sample.memory_percent.is_some() => {
                    return Ok(HostRead {
                        sample,
                        source: Source::Prometheus,
                        fallback: None,
                    })
                }
                Ok(Ok(_)) => {
                    tracing::warn!("prometheus has no node-exporter data; reading the local host");
                    "Prometheus has no node-exporter data".to_owned()
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "prometheus failed; reading the local host");
                    e.for_people()
                }
                Err(_) => {
                    tracing::warn!("prometheus timed out; reading the local host");
                    format!(
                        "Prometheus did not answer within {}",
                        humantime::format_duration(timeout)
                    )
                }
            };
            crate::telemetry::metrics::metrics().collector_error("prometheus");
            fallback = Some(format!("{why}; read from this host instead"));
        }
        let host = Arc::clone(&self.host);
        let read = tokio::task::spawn_blocking(move || {
            host.lock().unwrap_or_else(|e| e.into_inner()).sample()
        });
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(sample)) => Ok(HostRead {
                sample,
                source: Source::Local,
                fallback,
            }),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the local host failed");
                Err("reading this host failed".to_owned())
            }
            Err(_) => Err(format!(
                "reading this host took longer than {}",
                humantime::format_duration(timeout)
            )),
        }
    }

    /// The watched containers Docker reports, or why it cannot be asked (for people).
    pub async fn containers(&self) -> Result<Vec<ContainerSample>, String> {
        self.all_containers().await.map(|all| {
            all.into_iter()
                .filter(|c| c.watched_by(&self.filter))
                .collect()
        })
    }

    /// Every container Docker reports, watched or not.
    async fn all_containers(&self) -> Result<Vec<ContainerSample>, String> {
        let timeout = self.settings.monitor.collector_timeout.0;
        let mut docker = self.docker.lock().await;
        let result = async {
            if docker.is_none() {
                *docker = Some(self.connect_docker().await?);
            }
            let Some(collector) = docker.as_ref() else {
                return Err((
                    "Docker: not connected".to_owned(),
                    "not connected".to_owned(),
                ));
            };
            match tokio::time::timeout(timeout, collector.collect()).await {
                Ok(Ok(containers)) => Ok(containers),
                Ok(Err(e)) => Err((e.for_people(), e.to_string())),
                Err(_) => {
                    let why = format!(
                        "Docker: listing containers took longer than {}",
                        humantime::format_duration(timeout)
                    );
                    Err((why.clone(), why))
                }
            }
        }
        .await;
        let mut logged = self
            .docker_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(containers) => {
                if logged.take().is_some() {
                    tracing::info!("docker answers again");
                }
                Ok(containers)
            }
            Err((for_people, full)) => {
                *docker = None;
                if logged.as_deref() != Some(full.as_str()) {
                    tracing::warn!(error = %full, "cannot read containers from docker");
                    *logged = Some(full);
                }
                Err(for_people)
            }
        }
    }

    /// A new connection to the configured Docker, within the collector timeout; the error
    /// for people and in full.
    async fn connect_docker(&self) -> Result<DockerCollector, (String, String)> {
        let monitor = &self.settings.monitor;
        let timeout = monitor.collector_timeout.0;
        let connect =
            DockerCollector::connect(&monitor.docker_host, monitor.docker_concurrency, timeout);
        match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(collector)) => Ok(collector),
            Ok(Err(e)) => Err((e.for_people(), e.to_string())),
            Err(_) => {
                let why = format!(
                    "Docker: did not answer within {}",
                    humantime::format_duration(timeout)
                );
                Err((why.clone(), why))
            }
        }
    }

    /// What Docker recorded about the container `name` from `since` to `until` (see
    /// `DockerCollector::container_events`), or why Docker could not be asked, for people.
    /// Never waits past the collector timeout.
    pub async fn container_events(
        &self,
        name: &str,
        since: Timestamp,
        until: Timestamp,
    ) -> Result<Vec<ContainerEvent>, String> {
        let collector = {
            let mut docker = self.docker.lock().await;
            match docker.as_ref() {
                Some(collector) => collector.clone(),
                None => {
                    let collector = self.connect_docker().await.map_err(|(why, full)| {
                        tracing::debug!(error = %full, "cannot read container events");
                        why
                    })?;
                    *docker = Some(collector.clone());
                    collector
                }
            }
        };
        collector
            .container_events(name, since, until)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, container = name, "cannot read container events");
                e.for_people()
            })
    }

    /// Docker's containers split into watched and not, or, without Docker, container memory
    /// from cAdvisor through Prometheus when it is configured.
    async fn containers_read(&self) -> ContainersRead {
        let why = match self.all_containers().await {
            Ok(all) => {
                let total = all.len();
                let watched: Vec<ContainerSample> = all
                    .into_iter()
                    .filter(|c| c.watched_by(&self.filter))
                    .collect();
                return ContainersRead::Docker {
                    unwatched: total - watched.len(),
                    watched,
                };
            }
            Err(why) => why,
        };
        let cadvisor = match &self.prometheus {
            None => None,
            Some(prometheus) => {
                let timeout = self.settings.monitor.collector_timeout.0;
                let query =
                    prometheus.cadvisor_containers(&self.settings.prometheus.container_memory);
                Some(match tokio::time::timeout(timeout, query).await {
                    Ok(Ok(containers)) => Ok(containers
                        .into_iter()
                        .filter(|c| self.filter.watches(&c.name, |key| c.label(key)))
                        .collect()),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "container memory from cadvisor failed");
                        crate::telemetry::metrics::metrics().collector_error("prometheus");
                        Err(e.for_people())
                    }
                    Err(_) => Err(format!(
                        "Prometheus did not answer within {}",
                        humantime::format_duration(timeout)
                    )),
                })
            }
        };
        ContainersRead::Unavailable { why, cadvisor }
    }

    async fn sandbox_bytes(&self) -> Result<u64, String> {
        let dir = self.settings.sandbox_dir.clone();
        let timeout = self.settings.monitor.collector_timeout.0;
        let walk = tokio::task::spawn_blocking(move || sandbox::sandbox_size(&dir));
        match tokio::time::timeout(timeout, walk).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(e))) => {
                tracing::debug!(error = %e, "cannot measure the sandbox");
                Err(sandbox_reason(&e))
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "measuring the sandbox failed");
                Err("measuring the sandbox failed".to_owned())
            }
            Err(_) => Err(format!(
                "measuring the sandbox took longer than {}",
                humantime::format_duration(timeout)
            )),
        }
    }
}

/// Why the sandbox cannot be measured, for people.
fn sandbox_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "sandbox directory missing".to_owned(),
        std::io::ErrorKind::PermissionDenied => {
            "sandbox directory cannot be read (permission denied)".to_owned()
        }
        std::io::ErrorKind::NotADirectory => "the sandbox path is not a directory".to_owned(),
        _ => "the sandbox cannot be measured".to_owned(),
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The resource the sandbox's signal is reported under.
pub const SANDBOX_RESOURCE: &str = "sandbox";

/// The source network latency will have: measured by Prometheus when a query is configured
/// (and Prometheus is), else an estimate.
fn latency_source(settings: &Settings) -> Source {
    if !settings.monitor.prometheus_url.is_empty()
        && !settings.prometheus.network_latency.trim().is_empty()
    {
        Source::Prometheus
    } else {
        Source::Estimate
    }
}

/// Every signal the settings make Sentinel watch, each `pending` with `reason`: what
/// `/api/status`, the page and `/sentinel status` show before the first cycle.
pub fn pending_readings(settings: &Settings, reason: &str) -> Vec<SignalReading> {
    let host_source = if settings.monitor.prometheus_url.is_empty() {
        Source::Local
    } else {
        Source::Prometheus
    };
    let mut expected = vec![
        (Signal::HostCpu, "host".to_owned(), host_source),
        (Signal::HostMemory, "host".to_owned(), host_source),
    ];
    for mount in &settings.monitor.disk_mounts {
        expected.push((Signal::Disk, mount.clone(), host_source));
    }
    expected.extend([
        (
            Signal::NetworkLatency,
            "host".to_owned(),
            latency_source(settings),
        ),
        (
            Signal::ContainerDown,
            CONTAINERS_RESOURCE.to_owned(),
            Source::Docker,
        ),
        (
            Signal::ContainerMemory,
            CONTAINERS_RESOURCE.to_owned(),
            Source::Docker,
        ),
        (
            Signal::SandboxSize,
            SANDBOX_RESOURCE.to_owned(),
            Source::Sandbox,
        ),
    ]);
    expected
        .into_iter()
        .map(|(signal, resource, source)| {
            let threshold = detect::threshold_of(signal, &settings.thresholds);
            SignalReading {
                signal: signal.as_str().to_owned(),
                resource,
                value: None,
                threshold: threshold.warning.or(threshold.critical),
                state: "pending".to_owned(),
                source: source.as_str().to_owned(),
                reason: Some(reason.to_owned()),
            }
        })
        .collect()
}

/// Builds readings and observations for one cycle.
struct Builder<'a> {
    settings: &'a Settings,
    collected: Collected,
}

impl Builder<'_> {
    /// A measured value: an observation and its reading.
    fn observe(
        &mut self,
        signal: Signal,
        resource: &str,
        value: f64,
        source: Source,
        details: BTreeMap<String, String>,
        reason: Option<String>,
    ) {
        let Ok(resource) = Resource::parse(resource) else {
            return;
        };
        let threshold = detect::threshold_of(signal, &self.settings.thresholds);
        let state = if detect::breach(value, &threshold).is_some() {
            "breached"
        } else {
            "ok"
        };
        self.collected.readings.push(SignalReading {
            signal: signal.as_str().to_owned(),
            resource: resource.as_str().to_owned(),
            value: Some(round(value)),
            threshold: threshold.warning.or(threshold.critical),
            state: state.to_owned(),
            source: source.as_str().to_owned(),
            reason,
        });
        self.collected.observations.push(Observation {
            signal,
            resource,
            value,
            source,
            details,
        });
    }

    /// No value this cycle: `state` is `unavailable`, or `pending` while a first value is
    /// still to come (a rate needs two samples). Either way it neither opens nor resolves.
    fn without_value(
        &mut self,
        signal: Signal,
        resource: &str,
        source: Source,
        state: &str,
        why: &str,
    ) {
        let threshold = detect::threshold_of(signal, &self.settings.thresholds);
        self.collected.unavailable.insert(signal, why.to_owned());
        self.collected.readings.push(SignalReading {
            signal: signal.as_str().to_owned(),
            resource: resource.to_owned(),
            value: None,
            threshold: threshold.warning.or(threshold.critical),
            state: state.to_owned(),
            source: source.as_str().to_owned(),
            reason: Some(why.to_owned()),
        });
    }

    /// A reading that is no value and no failure: nothing there to measure (`no containers
    /// to watch`). Nothing opens, and what was open for it recovers as no longer reported.
    fn nothing_to_measure(&mut self, signal: Signal, source: Source, note: String) {
        let threshold = detect::threshold_of(signal, &self.settings.thresholds);
        self.collected.readings.push(SignalReading {
            signal: signal.as_str().to_owned(),
            resource: CONTAINERS_RESOURCE.to_owned(),
            value: None,
            threshold: threshold.warning.or(threshold.critical),
            state: "ok".to_owned(),
            source: source.as_str().to_owned(),
            reason: Some(note),
        });
    }

    fn host(&mut self, host: Result<HostRead, String>) {
        let settings = self.settings;
        let read = match host {
            Ok(read) => read,
            Err(why) => {
                for signal in [Signal::HostCpu, Signal::HostMemory] {
                    self.without_value(signal, "host", Source::Local, "unavailable", &why);
                }
                for mount in &settings.monitor.disk_mounts {
                    self.without_value(Signal::Disk, mount, Source::Local, "unavailable", &why);
                }
                self.without_value(
                    Signal::NetworkLatency,
                    "host",
                    Source::Estimate,
                    "unavailable",
                    &why,
                );
                return;
            }
        };
        let HostRead {
            sample,
            source,
            fallback,
        } = read;
        let second_sample = "waiting for a second sample to compute a rate";
        match sample.cpu_percent {
            Some(cpu) => self.observe(
                Signal::HostCpu,
                "host",
                cpu,
                source,
                BTreeMap::new(),
                fallback.clone(),
            ),
            None if source == Source::Local => {
                self.without_value(Signal::HostCpu, "host", source, "pending", second_sample)
            }
            None => self.without_value(
                Signal::HostCpu,
                "host",
                source,
                "unavailable",
                "the host_cpu query has no data yet",
            ),
        }
        match sample.memory_percent {
            Some(memory) => self.observe(
                Signal::HostMemory,
                "host",
                memory,
                source,
                BTreeMap::new(),
                fallback.clone(),
            ),
            None => self.without_value(
                Signal::HostMemory,
                "host",
                source,
                "unavailable",
                "/proc/meminfo cannot be read",
            ),
        }
        for mount in &settings.monitor.disk_mounts {
            match sample.disks.get(mount) {
                Some(percent) => self.observe(
                    Signal::Disk,
                    mount,
                    *percent,
                    source,
                    BTreeMap::new(),
                    fallback.clone(),
                ),
                None => self.without_value(
                    Signal::Disk,
                    mount,
                    source,
                    "unavailable",
                    "mount point not found",
                ),
            }
        }
        self.latency(&sample, source, fallback);
    }

    /// Measured by the `[prometheus] network_latency` query when it is set and Prometheus
    /// answered; otherwise estimated from the traffic (source `estimate`).
    fn latency(&mut self, sample: &HostSample, source: Source, fallback: Option<String>) {
        if let Some(measured) = &sample.network_latency_ms {
            match measured {
                Ok(ms) => {
                    let details = BTreeMap::from([(
                        "query".to_owned(),
                        self.settings.prometheus.network_latency.clone(),
                    )]);
                    self.observe(
                        Signal::NetworkLatency,
                        "host",
                        *ms,
                        Source::Prometheus,
                        details,
                        None,
                    );
                }
                Err(why) => self.without_value(
                    Signal::NetworkLatency,
                    "host",
                    Source::Prometheus,
                    "unavailable",
                    why,
                ),
            }
            return;
        }
        match (sample.network_mb_per_s, sample.network_errors_per_s) {
            (Some(mb), Some(errors)) => {
                let latency = 25.0 + 2.0 * mb + 100.0 * errors;
                let details = BTreeMap::from([
                    (
                        "formula".to_owned(),
                        "25 + 2 × MB/s + 100 × errors/s".to_owned(),
                    ),
                    ("network_mb_per_s".to_owned(), format!("{}", round(mb))),
                    (
                        "network_errors_per_s".to_owned(),
                        format!("{}", round(errors)),
                    ),
                    ("traffic_from".to_owned(), source.as_str().to_owned()),
                ]);
                let note = format!(
                    "from {} MB/s and {} errors/s of traffic",
                    round(mb),
                    round(errors)
                );
                let note = match fallback {
                    Some(fallback) => format!("{note} ({fallback})"),
                    None => note,
                };
                self.observe(
                    Signal::NetworkLatency,
                    "host",
                    latency,
                    Source::Estimate,
                    details,
                    Some(note),
                );
            }
            _ if source == Source::Local => self.without_value(
                Signal::NetworkLatency,
                "host",
                Source::Estimate,
                "pending",
                "waiting for a second sample to compute the traffic",
            ),
            _ => self.without_value(
                Signal::NetworkLatency,
                "host",
                Source::Estimate,
                "unavailable",
                "the network traffic queries have no data yet",
            ),
        }
    }

    fn containers(&mut self, containers: ContainersRead) {
        match containers {
            ContainersRead::Docker { watched, unwatched } => {
                self.docker_containers(&watched, unwatched)
            }
            ContainersRead::Unavailable { why, cadvisor } => {
                self.without_value(
                    Signal::ContainerDown,
                    CONTAINERS_RESOURCE,
                    Source::Docker,
                    "unavailable",
                    &why,
                );
                match cadvisor {
                    None => self.without_value(
                        Signal::ContainerMemory,
                        CONTAINERS_RESOURCE,
                        Source::Docker,
                        "unavailable",
                        &why,
                    ),
                    Some(Err(prometheus)) => self.without_value(
                        Signal::ContainerMemory,
                        CONTAINERS_RESOURCE,
                        Source::Cadvisor,
                        "unavailable",
                        &format!("{why}; cAdvisor through Prometheus: {prometheus}"),
                    ),
                    Some(Ok(containers)) if containers.is_empty() => self.without_value(
                        Signal::ContainerMemory,
                        CONTAINERS_RESOURCE,
                        Source::Cadvisor,
                        "unavailable",
                        &format!("{why}; cAdvisor through Prometheus has no container memory"),
                    ),
                    Some(Ok(containers)) => {
                        for container in containers {
                            let details = BTreeMap::from([("docker".to_owned(), why.clone())]);
                            self.observe(
                                Signal::ContainerMemory,
                                &container.name,
                                container.memory_percent,
                                Source::Cadvisor,
                                details,
                                Some(format!("from cAdvisor: {why}")),
                            );
                        }
                    }
                }
            }
        }
    }

    fn docker_containers(&mut self, containers: &[ContainerSample], unwatched: usize) {
        let mut measured = 0;
        for container in containers {
            let mut details = BTreeMap::from([
                ("state".to_owned(), container.state.clone()),
                (
                    "restart_count".to_owned(),
                    container.restart_count.to_string(),
                ),
            ]);
            if let Some(health) = &container.health {
                details.insert("health".to_owned(), health.clone());
            }
            if container.protected() {
                details.insert("protected".to_owned(), "true".to_owned());
            }
            let down = container.down_reason();
            if let Some(reason) = &down {
                details.insert("down_reason".to_owned(), reason.clone());
            }
            self.observe(
                Signal::ContainerDown,
                &container.name,
                if down.is_some() { 1.0 } else { 0.0 },
                Source::Docker,
                details.clone(),
                down.clone(),
            );
            if let Some(percent) = container.memory_percent() {
                if let (Some(used), Some(limit)) =
                    (container.memory_used_bytes, container.memory_limit_bytes)
                {
                    details.insert("memory_used_bytes".to_owned(), used.to_string());
                    details.insert("memory_limit_bytes".to_owned(), limit.to_string());
                }
                measured += 1;
                self.observe(
                    Signal::ContainerMemory,
                    &container.name,
                    percent,
                    Source::Docker,
                    details,
                    None,
                );
            }
        }
        let not_watched = match unwatched {
            0 => String::new(),
            1 => " (1 container is not watched)".to_owned(),
            n => format!(" ({n} containers are not watched)"),
        };
        if containers.is_empty() {
            self.nothing_to_measure(
                Signal::ContainerDown,
                Source::Docker,
                format!("no containers to watch{not_watched}"),
            );
        }
        if measured == 0 {
            self.nothing_to_measure(
                Signal::ContainerMemory,
                Source::Docker,
                format!("no running container to measure{not_watched}"),
            );
        }
    }

    fn sandbox(&mut self, sandbox_bytes: Result<u64, String>) {
        match sandbox_bytes {
            Ok(bytes) => {
                let details = BTreeMap::from([(
                    "path".to_owned(),
                    self.settings.sandbox_dir.display().to_string(),
                )]);
                self.observe(
                    Signal::SandboxSize,
                    SANDBOX_RESOURCE,
                    bytes as f64 / 1e6,
                    Source::Sandbox,
                    details,
                    None,
                );
            }
            Err(why) => self.without_value(
                Signal::SandboxSize,
                SANDBOX_RESOURCE,
                Source::Sandbox,
                "unavailable",
                &why,
            ),
        }
    }
}

/// Turns the collectors' samples into observations, unavailable signals and readings. Pure.
pub fn build_observations(
    settings: &Settings,
    host: Result<HostRead, String>,
    containers: ContainersRead,
    sandbox_bytes: Result<u64, String>,
) -> Collected {
    let mut builder = Builder {
        settings,
        collected: Collected::default(),
    };
    builder.host(host);
    builder.containers(containers);
    builder.sandbox(sandbox_bytes);
    builder.collected
}

/// What one cycle did; the latest is shown in `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    pub started_at: Option<Timestamp>,
    pub duration_ms: u64,
    /// `ok`, `partial` (some signals unavailable or some writes failed) or `skipped` (this
    /// replica does not hold the monitor lease).
    pub outcome: String,
    /// Whether this replica held the monitor lease for this cycle.
    pub leader: bool,
    pub observations: usize,
    pub unavailable: BTreeMap<String, String>,
    pub opened: usize,
    pub updated: usize,
    pub resolved: usize,
    pub silenced: usize,
    pub errors: Vec<String>,
}

/// The monitor loop: collectors, the detector's memory, and the stages it writes through.
pub struct Monitor {
    /// The stages' dependencies: settings, store, the remediation queue.
    pipeline: Arc<Pipeline>,
    /// Where each cycle's readings and report are published.
    readings: Arc<Readings>,
    collectors: Arc<Collectors>,
    detector: tokio::sync::Mutex<DetectorState>,
    /// This replica's name in the lease.
    holder: String,
}

impl Monitor {
    pub fn new(pipeline: Arc<Pipeline>, readings: Arc<Readings>) -> Self {
        let holder = format!(
            "{}-{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "sentinel".to_owned()),
            std::process::id(),
            crate::domain::IncidentId::generate()
                .as_str()
                .trim_start_matches("inc-")
        );
        Monitor {
            collectors: Arc::clone(&pipeline.collectors),
            pipeline,
            readings,
            detector: tokio::sync::Mutex::new(DetectorState::default()),
            holder,
        }
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// One cycle: collect, detect, apply. With `fence`, the lease token is checked right
    /// before writing; a replica that lost the lease meanwhile writes nothing.
    #[tracing::instrument(name = "monitor_cycle", skip_all)]
    pub async fn tick(&self, fence: Option<u64>) -> CycleReport {
        let started = Instant::now();
        let started_at = Timestamp::now();
        let settings = &self.pipeline.settings;
        let store = self.pipeline.store.as_ref();
        let collected = self.collectors.collect().await;
        let mut report = CycleReport {
            started_at: Some(started_at),
            leader: true,
            observations: collected.observations.len(),
            unavailable: collected
                .unavailable
                .iter()
                .map(|(signal, why)| (signal.as_str().to_owned(), why.clone()))
                .collect(),
            ..CycleReport::default()
        };
        self.readings.set_signals(collected.readings.clone());

        let open = match store
            .list_incidents(IncidentQuery {
                open_only: true,
                limit: 10_000,
            })
            .await
        {
            Ok(open) => open
                .into_iter()
                .filter(|i| i.signal != Signal::External)
                .map(|i| i.fingerprint)
                .collect::<BTreeSet<_>>(),
            Err(e) => {
                report
                    .errors
                    .push(format!("listing open incidents: {}", shown(&e)));
                return self.finish(report, started);
            }
        };
        let unavailable: BTreeSet<Signal> = collected.unavailable.keys().copied().collect();
        let decisions = {
            let mut state = self.detector.lock().await;
            detect::detect(
                &mut state,
                &collected.observations,
                &unavailable,
                &open,
                &settings.thresholds,
                Hysteresis {
                    for_samples: settings.monitor.for_samples,
                    clear_for: settings.monitor.clear_for,
                },
            )
        };
        if decisions.is_empty() {
            return self.finish(report, started);
        }
        if let Some(token) = fence {
            match store.check_fence(LEASE, token, Timestamp::now()).await {
                Ok(true) => {}
                Ok(false) => {
                    report.leader = false;
                    report
                        .errors
                        .push("lost the monitor lease before writing; wrote nothing".to_owned());
                    return self.finish(report, started);
                }
                Err(e) => {
                    report
                        .errors
                        .push(format!("checking the monitor lease: {e}"));
                    return self.finish(report, started);
                }
            }
        }
        for decision in decisions {
            let now = Timestamp::now();
            match decision {
                Decision::Breach(detection) => {
                    match intake::open_or_update(store, &detection, now).await {
                        Ok(Intake::Opened(incident)) => {
                            self.pipeline.opened(&incident);
                            tracing::info!(incident = %incident.id, fingerprint = %incident.fingerprint, "incident opened");
                            report.opened += 1;
                        }
                        Ok(Intake::Updated(_)) => report.updated += 1,
                        Ok(Intake::Silenced(_)) => report.silenced += 1,
                        Err(e) => report.errors.push(format!(
                            "{}: {}",
                            detection.fingerprint(),
                            shown(&e)
                        )),
                    }
                }
                Decision::Recovered {
                    fingerprint,
                    message,
                } => match intake::resolve(
                    store,
                    &fingerprint,
                    crate::pipeline::engine::Recovery::Monitor,
                    &Actor::Sentinel,
                    &message,
                    now,
                )
                .await
                {
                    Ok(Some(incident)) if incident.status == crate::domain::Status::Resolved => {
                        tracing::info!(incident = %incident.id, %fingerprint, "incident recovered");
                        report.resolved += 1;
                    }
                    Ok(Some(incident)) => {
                        tracing::info!(incident = %incident.id, %fingerprint, status = %incident.status, "recovery noted while a fix runs");
                    }
                    Ok(None) => {}
                    Err(e) => report.errors.push(format!("{fingerprint}: {}", shown(&e))),
                },
            }
        }
        self.finish(report, started)
    }

    /// Drops cleanup quarantines older than `quarantine_retention`.
    async fn purge_quarantine(&self) {
        let settings = &self.pipeline.settings;
        let sandbox = settings.sandbox_dir.clone();
        let retention = settings.actions.quarantine_retention.0;
        let purged = tokio::task::spawn_blocking(move || {
            crate::runtime::cleanup::purge_quarantine(
                &sandbox,
                retention,
                std::time::SystemTime::now(),
            )
        })
        .await;
        match purged {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(quarantines = n, "purged expired cleanup quarantines"),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot purge the cleanup quarantine"),
            Err(e) => tracing::warn!(error = %e, "purging the quarantine panicked"),
        }
    }

    fn finish(&self, mut report: CycleReport, started: Instant) -> CycleReport {
        let elapsed = started.elapsed();
        report.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        crate::telemetry::metrics::metrics().monitor_cycle(elapsed);
        report.outcome = if report.errors.is_empty() && report.unavailable.is_empty() {
            "ok".to_owned()
        } else {
            "partial".to_owned()
        };
        if !report.errors.is_empty() {
            tracing::warn!(errors = ?report.errors, "monitor cycle had errors");
        }
        tracing::debug!(
            duration_ms = report.duration_ms,
            observations = report.observations,
            opened = report.opened,
            resolved = report.resolved,
            "monitor cycle"
        );
        self.readings.set_cycle(report.clone());
        report
    }

    /// A cycle asked for by a person (`/sentinel check`), through the same fenced path as
    /// the loop: it writes only while this replica holds (or can take) the monitor lease;
    /// on another replica it reads the signals and writes nothing, and says so.
    pub async fn check_now(&self) -> CycleReport {
        let ttl = self.pipeline.settings.monitor.lease_ttl.0;
        let lease = self
            .pipeline
            .store
            .acquire_lease(LEASE, &self.holder, ttl, Timestamp::now())
            .await;
        match lease {
            Ok(Some(lease)) => self.tick(Some(lease.token)).await,
            Ok(None) => {
                // No token of ours is live: the fence refuses every write.
                let mut report = self.tick(Some(0)).await;
                report
                    .errors
                    .retain(|e| !e.starts_with("lost the monitor lease"));
                report.errors.push(
                    "another replica runs the monitor; this check read the signals and wrote nothing"
                        .to_owned(),
                );
                report
            }
            Err(e) => CycleReport {
                started_at: Some(Timestamp::now()),
                outcome: "failed".to_owned(),
                errors: vec![format!(
                    "cannot reach the store for the monitor lease: {}",
                    shown(&e)
                )],
                ..CycleReport::default()
            },
        }
    }

    /// Runs cycles every `interval` until shutdown, on the replica holding the lease.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let settings = Arc::clone(&self.pipeline.settings);
        let interval = settings.interval.0;
        let ttl = settings.monitor.lease_ttl.0;
        let store = Arc::clone(&self.pipeline.store);
        let mut held: Option<crate::store::Lease> = None;
        let mut last_adoption: Option<tokio::time::Instant> = None;
        let mut taken_over = std::collections::HashMap::new();
        loop {
            let cycle_start = tokio::time::Instant::now();
            match store
                .acquire_lease(LEASE, &self.holder, ttl, Timestamp::now())
                .await
            {
                Ok(Some(lease)) => {
                    if held.as_ref().map(|l| l.token) != Some(lease.token) {
                        tracing::info!(holder = %self.holder, token = lease.token, "this replica runs the monitor loop");
                    }
                    let token = lease.token;
                    held = Some(lease);
                    tokio::select! {
                        _ = self.tick(Some(token)) => {}
                        () = shutdown.cancelled() => break,
                    }
                    self.purge_quarantine().await;
                    match crate::pipeline::remediate::expire_approvals(
                        &self.pipeline,
                        Timestamp::now(),
                    )
                    .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(expired = n, "approval requests expired"),
                        Err(e) => tracing::warn!(error = %e, "cannot expire approval requests"),
                    }
                    if last_adoption
                        .is_none_or(|at: tokio::time::Instant| at.elapsed() >= ADOPT_EVERY)
                    {
                        last_adoption = Some(tokio::time::Instant::now());
                        match crate::pipeline::remediate::adopt_orphans(
                            &self.pipeline,
                            Timestamp::now(),
                            &mut taken_over,
                        )
                        .await
                        {
                            Ok(0) => {}
                            Ok(n) => {
                                tracing::warn!(adopted = n, "took over work of a lost replica")
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot look for lost work"),
                        }
                    }
                    match crate::pipeline::remediate::run_due_schedules(
                        &self.pipeline,
                        Timestamp::now(),
                    )
                    .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(ran = n, "scheduled fixes came due"),
                        Err(e) => tracing::warn!(error = %e, "cannot run scheduled fixes"),
                    }
                }
                Ok(None) => {
                    if held.take().is_some() {
                        tracing::warn!("lost the monitor lease to another replica");
                    }
                    self.readings.set_cycle(CycleReport {
                        started_at: Some(Timestamp::now()),
                        outcome: "skipped".to_owned(),
                        leader: false,
                        ..CycleReport::default()
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the store for the monitor lease")
                }
            }
            let next = cycle_start + interval;
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = shutdown.cancelled() => break,
            }
        }
        if let Some(lease) = held {
            if let Err(e) = store.release_lease(&lease).await {
                tracing::warn!(error = %e, "could not release the monitor lease");
            }
        }
    }
}

/// How long a cycle took, for `sentinel check`.
pub fn elapsed_ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// A store error as the cycle report shows it (`/api/status`, the page, Slack): a backend's own
/// message goes to the log only (SPEC §12.3).
fn shown(e: &StoreError) -> String {
    match e {
        StoreError::Unavailable(_) => {
            tracing::warn!(error = %e, "the monitor cannot reach the store");
            "the store is unavailable".to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_report_shows_no_backend_message() {
        let down = StoreError::Unavailable("redis: Connection refused (os error 111)".to_owned());
        assert_eq!(shown(&down), "the store is unavailable");
        let gone = StoreError::NotFound(crate::domain::IncidentId::generate());
        assert_eq!(shown(&gone), gone.to_string());
    }
}
