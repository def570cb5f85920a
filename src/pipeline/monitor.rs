//! Monitor: every `interval`, collect what Prometheus (or the local host), Docker and the
//! sandbox say, hand it to `detect`, and apply the decisions through `intake`.
//!
//! In: settings and the collectors of `runtime`. Out: observations, the readings
//! `/api/status` shows, incidents opened, updated and resolved, and a [`CycleReport`].
//!
//! Each collector runs under `collector_timeout`; one that fails or hangs marks its signals
//! unavailable and never stops the others. A cycle never overlaps the next. With several
//! replicas only the holder of the `monitor` lease runs cycles, and it checks its fencing
//! token right before writing, so a replica that lost the lease while paused writes nothing.

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
use crate::runtime::prometheus::PrometheusClient;
use crate::runtime::{sandbox, ContainerSample, HostSample};
use crate::store::IncidentQuery;

/// The lease that elects the replica running the monitor loop.
pub const LEASE: &str = "monitor";

/// What one cycle collected.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub observations: Vec<Observation>,
    /// Signals that could not be measured, and why.
    pub unavailable: BTreeMap<Signal, String>,
    /// Every signal with value, threshold, state and source, for `/api/status`.
    pub readings: Vec<SignalReading>,
}

/// The collectors, built once from the settings.
pub struct Collectors {
    settings: Arc<Settings>,
    prometheus: Option<PrometheusClient>,
    /// Keeps the previous CPU and network counters between cycles to compute rates.
    host: Arc<std::sync::Mutex<HostCollector>>,
    /// Connected on first use and again after a failure, so a Docker daemon that starts
    /// after Sentinel is picked up.
    docker: tokio::sync::Mutex<Option<DockerCollector>>,
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
            settings,
            prometheus,
            host: Arc::new(std::sync::Mutex::new(host)),
            docker: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs every collector concurrently, each under the collector timeout.
    #[tracing::instrument(name = "collect", skip_all)]
    pub async fn collect(&self) -> Collected {
        let (host, containers, sandbox) =
            tokio::join!(self.host_signals(), self.containers(), self.sandbox_bytes());
        let metrics = crate::telemetry::metrics::metrics();
        for (collector, failed) in [
            ("host", host.is_err()),
            ("docker", containers.is_err()),
            ("sandbox", sandbox.is_err()),
        ] {
            if failed {
                metrics.collector_error(collector);
            }
        }
        build_observations(&self.settings, host, containers, sandbox)
    }

    async fn host_signals(&self) -> Result<(HostSample, Source), String> {
        let timeout = self.settings.monitor.collector_timeout.0;
        if let Some(prometheus) = &self.prometheus {
            let query = prometheus.host_sample(
                &self.settings.prometheus,
                &self.settings.monitor.disk_mounts,
            );
            match tokio::time::timeout(timeout, query).await {
                // Prometheus up but node-exporter not scraped: nothing to go on.
                Ok(Ok(sample)) if sample.memory_percent.is_some() => {
                    return Ok((sample, Source::Prometheus))
                }
                Ok(Ok(_)) => {
                    crate::telemetry::metrics::metrics().collector_error("prometheus");
                    tracing::warn!("prometheus has no node-exporter data; reading the local host")
                }
                Ok(Err(e)) => {
                    crate::telemetry::metrics::metrics().collector_error("prometheus");
                    tracing::warn!(error = %e, "prometheus failed; reading the local host")
                }
                Err(_) => {
                    crate::telemetry::metrics::metrics().collector_error("prometheus");
                    tracing::warn!("prometheus timed out; reading the local host")
                }
            }
        }
        let host = Arc::clone(&self.host);
        let read = tokio::task::spawn_blocking(move || {
            host.lock().unwrap_or_else(|e| e.into_inner()).sample()
        });
        match tokio::time::timeout(timeout, read).await {
            Ok(Ok(sample)) => Ok((sample, Source::Local)),
            Ok(Err(e)) => Err(format!("reading the local host failed: {e}")),
            Err(_) => Err("reading the local host timed out".to_owned()),
        }
    }

    /// The containers Docker reports, or why it cannot be asked.
    pub async fn containers(&self) -> Result<Vec<ContainerSample>, String> {
        let monitor = &self.settings.monitor;
        let timeout = monitor.collector_timeout.0;
        let mut docker = self.docker.lock().await;
        if docker.is_none() {
            let connect =
                DockerCollector::connect(&monitor.docker_host, monitor.docker_concurrency, timeout);
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(collector)) => *docker = Some(collector),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err("connecting to docker timed out".to_owned()),
            }
        }
        let collector = docker.as_ref().expect("connected above");
        let result = match tokio::time::timeout(timeout, collector.collect()).await {
            Ok(Ok(containers)) => Ok(containers),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("docker timed out".to_owned()),
        };
        if result.is_err() {
            *docker = None;
        }
        result
    }

    async fn sandbox_bytes(&self) -> Result<u64, String> {
        let dir = self.settings.sandbox_dir.clone();
        let timeout = self.settings.monitor.collector_timeout.0;
        let walk = tokio::task::spawn_blocking(move || sandbox::sandbox_size(&dir));
        match tokio::time::timeout(timeout, walk).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(e))) => Err(format!(
                "cannot measure the sandbox {}: {e}",
                self.settings.sandbox_dir.display()
            )),
            Ok(Err(e)) => Err(format!("measuring the sandbox failed: {e}")),
            Err(_) => Err("measuring the sandbox timed out".to_owned()),
        }
    }
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The resource the sandbox's signal is reported under.
pub const SANDBOX_RESOURCE: &str = "sandbox";

/// Turns the collectors' samples into observations, unavailable signals and readings. Pure.
pub fn build_observations(
    settings: &Settings,
    host: Result<(HostSample, Source), String>,
    containers: Result<Vec<ContainerSample>, String>,
    sandbox_bytes: Result<u64, String>,
) -> Collected {
    let mut collected = Collected::default();
    let thresholds = &settings.thresholds;
    let observe = |collected: &mut Collected,
                   signal: Signal,
                   resource: &str,
                   value: f64,
                   source: Source,
                   details: BTreeMap<String, String>| {
        let Ok(resource) = Resource::parse(resource) else {
            return;
        };
        let threshold = detect::threshold_of(signal, thresholds);
        let state = if detect::breach(value, &threshold).is_some() {
            "breached"
        } else {
            "ok"
        };
        collected.readings.push(SignalReading {
            signal: signal.as_str().to_owned(),
            resource: resource.as_str().to_owned(),
            value: Some(round(value)),
            threshold: threshold.warning.or(threshold.critical),
            state: state.to_owned(),
            source: source_name(source).to_owned(),
        });
        collected.observations.push(Observation {
            signal,
            resource,
            value,
            source,
            details,
        });
    };
    let unavailable =
        |collected: &mut Collected, signal: Signal, resource: &str, source: &str, why: &str| {
            let threshold = detect::threshold_of(signal, thresholds);
            collected.unavailable.insert(signal, why.to_owned());
            collected.readings.push(SignalReading {
                signal: signal.as_str().to_owned(),
                resource: resource.to_owned(),
                value: None,
                threshold: threshold.warning.or(threshold.critical),
                state: "unavailable".to_owned(),
                source: source.to_owned(),
            });
        };

    match host {
        Ok((sample, source)) => {
            let from = source_name(source);
            let no_rate = "no rate yet: needs a second sample";
            match sample.cpu_percent {
                Some(cpu) => observe(
                    &mut collected,
                    Signal::HostCpu,
                    "host",
                    cpu,
                    source,
                    BTreeMap::new(),
                ),
                None => unavailable(&mut collected, Signal::HostCpu, "host", from, no_rate),
            }
            match sample.memory_percent {
                Some(memory) => observe(
                    &mut collected,
                    Signal::HostMemory,
                    "host",
                    memory,
                    source,
                    BTreeMap::new(),
                ),
                None => unavailable(&mut collected, Signal::HostMemory, "host", from, "no value"),
            }
            for mount in &settings.monitor.disk_mounts {
                match sample.disks.get(mount) {
                    Some(percent) => observe(
                        &mut collected,
                        Signal::Disk,
                        mount,
                        *percent,
                        source,
                        BTreeMap::new(),
                    ),
                    None => {
                        unavailable(&mut collected, Signal::Disk, mount, from, "mount not found")
                    }
                }
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
                    ]);
                    observe(
                        &mut collected,
                        Signal::NetworkLatency,
                        "host",
                        latency,
                        source,
                        details,
                    );
                }
                _ => unavailable(
                    &mut collected,
                    Signal::NetworkLatency,
                    "host",
                    from,
                    no_rate,
                ),
            }
        }
        Err(why) => {
            for signal in [Signal::HostCpu, Signal::HostMemory, Signal::NetworkLatency] {
                unavailable(&mut collected, signal, "host", "local", &why);
            }
            for mount in &settings.monitor.disk_mounts {
                unavailable(&mut collected, Signal::Disk, mount, "local", &why);
            }
        }
    }

    match containers {
        Ok(containers) => {
            for container in &containers {
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
                observe(
                    &mut collected,
                    Signal::ContainerDown,
                    &container.name,
                    if down.is_some() { 1.0 } else { 0.0 },
                    Source::Docker,
                    details.clone(),
                );
                if let Some(percent) = container.memory_percent() {
                    if let (Some(used), Some(limit)) =
                        (container.memory_used_bytes, container.memory_limit_bytes)
                    {
                        details.insert("memory_used_bytes".to_owned(), used.to_string());
                        details.insert("memory_limit_bytes".to_owned(), limit.to_string());
                    }
                    observe(
                        &mut collected,
                        Signal::ContainerMemory,
                        &container.name,
                        percent,
                        Source::Docker,
                        details,
                    );
                }
            }
        }
        Err(why) => {
            unavailable(
                &mut collected,
                Signal::ContainerDown,
                "containers",
                "docker",
                &why,
            );
            unavailable(
                &mut collected,
                Signal::ContainerMemory,
                "containers",
                "docker",
                &why,
            );
        }
    }

    match sandbox_bytes {
        Ok(bytes) => {
            let details = BTreeMap::from([(
                "path".to_owned(),
                settings.sandbox_dir.display().to_string(),
            )]);
            observe(
                &mut collected,
                Signal::SandboxSize,
                SANDBOX_RESOURCE,
                bytes as f64 / 1e6,
                Source::Sandbox,
                details,
            );
        }
        Err(why) => unavailable(
            &mut collected,
            Signal::SandboxSize,
            SANDBOX_RESOURCE,
            "sandbox",
            &why,
        ),
    }
    collected
}

fn source_name(source: Source) -> &'static str {
    match source {
        Source::Prometheus => "prometheus",
        Source::Local => "local",
        Source::Docker => "docker",
        Source::Sandbox => "sandbox",
        Source::Alertmanager => "alertmanager",
        Source::Trigger => "trigger",
    }
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
                report.errors.push(format!("listing open incidents: {e}"));
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
                        Err(e) => report
                            .errors
                            .push(format!("{}: {e}", detection.fingerprint())),
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
                    Err(e) => report.errors.push(format!("{fingerprint}: {e}")),
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
                errors: vec![format!("cannot reach the store for the monitor lease: {e}")],
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
