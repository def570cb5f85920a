//! Demo scenarios (SPEC §12.2): a real, harmless situation a new user can watch Sentinel
//! handle end to end, and `reset`, which takes it away again.
//!
//! In: a [`DemoScenario`], the `[demo]` settings, the sandbox and the Docker daemon. Out: a
//! [`DemoReport`] saying what was made or removed. This module only sets the stage; the
//! monitor finds the situation on its next cycles like any other, and the incident takes the
//! normal path (analysis, policy, approval, execution, verification).
//!
//! - `sandbox`: about 120 MB of demo logs, `logs/sentinel-demo-*.log`, in the sandbox: past
//!   the default `sandbox_size_mb` warning (100 MB), fixed by a low-risk cleanup on its own.
//! - `container`: container `[demo] container` (`sentinel-demo`) from `[demo] image`, created,
//!   started and stopped: down, and a medium-risk start waits for approval.
//! - `memory`: container `sentinel-demo-memory` with a 64 MB limit holding 48 MB in its
//!   `/dev/shm` tmpfs, about 75 % of its limit (past the `container_memory` warning, 60 %):
//!   a medium-risk fix waits for approval.
//!
//! What it may touch, and nothing else: regular files named `sentinel-demo-*.log` directly in
//! the sandbox's `logs/` (opened without following links, a file that is there is unlinked
//! before it is written, never truncated through a link), and containers that carry the label
//! `sentinel.demo=true` *and* one of the two demo names. A container of a demo name without
//! the label is somebody else's: the scenario refuses and changes nothing.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use bollard::Docker;
use futures::StreamExt;
use rustix::fs::{mkdirat, openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;
use serde::Serialize;

use crate::config::Settings;
use crate::runtime::docker::DockerCollector;

/// The label every demo container carries; reset removes only containers with it.
pub const DEMO_LABEL: &str = "sentinel.demo";
/// What demo files are called: `logs/sentinel-demo-01.log` …
pub const FILE_PREFIX: &str = "sentinel-demo-";
const FILE_SUFFIX: &str = ".log";
/// The sandbox scenario writes this many files of [`FILE_BYTES`]: 120 MB.
const FILES: usize = 12;
const FILE_BYTES: usize = 10_000_000;
/// The memory scenario's limit and what it fills of it (48 of 64 MB: 75 %).
const MEMORY_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
const MEMORY_FILL_MB: u32 = 48;
/// How long pulling a missing demo image may take.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// A demo scenario, as named in `POST /api/scenarios/{name}` and `sentinel demo <name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoScenario {
    Sandbox,
    Container,
    Memory,
    Reset,
}

impl DemoScenario {
    pub const ALL: [DemoScenario; 4] = [
        DemoScenario::Sandbox,
        DemoScenario::Container,
        DemoScenario::Memory,
        DemoScenario::Reset,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DemoScenario::Sandbox => "sandbox",
            DemoScenario::Container => "container",
            DemoScenario::Memory => "memory",
            DemoScenario::Reset => "reset",
        }
    }
}

impl fmt::Display for DemoScenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown demo scenario {0:?}: expected sandbox, container, memory or reset")]
pub struct UnknownDemoScenario(pub String);

impl FromStr for DemoScenario {
    type Err = UnknownDemoScenario;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DemoScenario::ALL
            .into_iter()
            .find(|scenario| scenario.as_str() == s)
            .ok_or_else(|| UnknownDemoScenario(s.to_owned()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Docker could not be reached, or refused what was asked.
    #[error("{0}")]
    Docker(String),
    /// Something that is not Sentinel's demo is in the way; nothing was changed.
    #[error("{0}")]
    Conflict(String),
    /// The sandbox could not be written or read.
    #[error("{0}")]
    Sandbox(String),
    /// Not allowed, or the store failed.
    #[error(transparent)]
    Service(#[from] crate::service::ServiceError),
}

/// What a scenario made, or what reset removed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DemoReport {
    pub scenario: String,
    /// For people: what happened and what to watch for.
    pub message: String,
    /// Demo containers made (or, for reset, removed).
    pub containers: Vec<String>,
    /// Demo files written (or removed) under the sandbox's `logs/`, and their size.
    pub files: usize,
    pub bytes: u64,
    /// Reset only: the incidents it resolved (step `reset`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resolved: Vec<String>,
}

/// The demo stage: where demo files go and which containers are the demo's.
#[derive(Debug, Clone)]
pub struct Demo {
    sandbox: PathBuf,
    image: String,
    container: String,
    docker_host: String,
    timeout: Duration,
}

impl Demo {
    pub fn new(settings: &Settings) -> Self {
        Demo {
            sandbox: settings.sandbox_dir.clone(),
            image: settings.demo.image.clone(),
            container: settings.demo.container.clone(),
            docker_host: settings.monitor.docker_host.clone(),
            timeout: settings
                .monitor
                .collector_timeout
                .0
                .max(Duration::from_secs(5)),
        }
    }

    /// The container of the `container` scenario.
    pub fn container_name(&self) -> &str {
        &self.container
    }

    /// The container of the `memory` scenario.
    pub fn memory_container_name(&self) -> String {
        format!("{}-memory", self.container)
    }

    /// Both demo container names.
    pub fn container_names(&self) -> [String; 2] {
        [self.container.clone(), self.memory_container_name()]
    }

    /// Sets up `scenario` (not `reset`: see [`Self::remove_all`]).
    pub async fn make(&self, scenario: DemoScenario) -> Result<DemoReport, DemoError> {
        match scenario {
            DemoScenario::Sandbox => self.sandbox().await,
            DemoScenario::Container => self.stopped_container().await,
            DemoScenario::Memory => self.memory_container().await,
            DemoScenario::Reset => self.remove_all().await,
        }
    }

    async fn sandbox(&self) -> Result<DemoReport, DemoError> {
        let root = self.sandbox.clone();
        let (files, bytes) = tokio::task::spawn_blocking(move || write_demo_logs(&root))
            .await
            .map_err(|e| DemoError::Sandbox(format!("writing demo logs stopped: {e}")))?
            .map_err(|e| DemoError::Sandbox(format!("cannot write demo logs: {e}")))?;
        Ok(DemoReport {
            scenario: "sandbox".to_owned(),
            message: format!(
                "wrote {files} demo log files ({}) to {}/logs/; once the monitor has seen the \
                 sandbox over its size threshold on consecutive cycles, Sentinel cleans it up \
                 on its own (low risk)",
                megabytes(bytes),
                self.sandbox.display()
            ),
            containers: Vec::new(),
            files,
            bytes,
            resolved: Vec::new(),
        })
    }

    async fn stopped_container(&self) -> Result<DemoReport, DemoError> {
        let docker = self.docker().await?;
        let name = self.container.clone();
        self.replace_container(&docker, &name, None, &["sleep", "3600"])
            .await?;
        let stop = StopContainerOptions {
            signal: None,
            t: Some(0),
        };
        docker
            .stop_container(&name, Some(stop))
            .await
            .map_err(|e| DemoError::Docker(format!("cannot stop {name}: {e}")))?;
        Ok(DemoReport {
            scenario: "container".to_owned(),
            message: format!(
                "created and stopped container {name} ({}); Sentinel sees it down and proposes \
                 to start it, which is medium risk and waits for an operator's approval",
                self.image
            ),
            containers: vec![name],
            ..DemoReport::default()
        })
    }

    async fn memory_container(&self) -> Result<DemoReport, DemoError> {
        let docker = self.docker().await?;
        let name = self.memory_container_name();
        let fill = format!(
            "dd if=/dev/zero of=/dev/shm/sentinel-demo bs=1M count={MEMORY_FILL_MB} \
             2>/dev/null; exec sleep 3600"
        );
        self.replace_container(
            &docker,
            &name,
            Some(MEMORY_LIMIT_BYTES),
            &["sh", "-c", &fill],
        )
        .await?;
        Ok(DemoReport {
            scenario: "memory".to_owned(),
            message: format!(
                "started container {name} with a {} memory limit and {MEMORY_FILL_MB} MB held in \
                 its memory (about 75 %); Sentinel proposes a fix, which is medium risk and \
                 waits for an operator's approval",
                megabytes(MEMORY_LIMIT_BYTES as u64)
            ),
            containers: vec![name],
            ..DemoReport::default()
        })
    }

    /// Removes every demo container and demo file. Docker being unreachable is not an error
    /// here (there is nothing of the demo's to remove there then); it is said in the message.
    pub async fn remove_all(&self) -> Result<DemoReport, DemoError> {
        let root = self.sandbox.clone();
        let (files, bytes) = tokio::task::spawn_blocking(move || remove_demo_logs(&root))
            .await
            .map_err(|e| DemoError::Sandbox(format!("removing demo logs stopped: {e}")))?
            .map_err(|e| DemoError::Sandbox(format!("cannot remove demo logs: {e}")))?;
        let mut containers = Vec::new();
        let mut notes = Vec::new();
        match self.docker().await {
            Ok(docker) => {
                for name in self.demo_containers(&docker).await? {
                    let options = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    docker
                        .remove_container(&name, Some(options))
                        .await
                        .map_err(|e| DemoError::Docker(format!("cannot remove {name}: {e}")))?;
                    containers.push(name);
                }
            }
            Err(e) => notes.push(format!("no containers removed: {e}")),
        }
        let mut message = format!(
            "removed {} demo container{}{} and {files} demo log file{} ({})",
            containers.len(),
            if containers.len() == 1 { "" } else { "s" },
            if containers.is_empty() {
                String::new()
            } else {
                format!(" ({})", containers.join(", "))
            },
            if files == 1 { "" } else { "s" },
            megabytes(bytes)
        );
        for note in notes {
            message.push_str("; ");
            message.push_str(&note);
        }
        Ok(DemoReport {
            scenario: "reset".to_owned(),
            message,
            containers,
            files,
            bytes,
            resolved: Vec::new(),
        })
    }

    /// The demo containers that exist: the demo label and a demo name, both.
    async fn demo_containers(&self, docker: &Docker) -> Result<Vec<String>, DemoError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_owned(),
                vec![format!("{DEMO_LABEL}=true")],
            )])),
            ..Default::default()
        };
        let listed = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| DemoError::Docker(format!("cannot list containers: {e}")))?;
        let names = self.container_names();
        Ok(listed
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .and_then(|labels| labels.get(DEMO_LABEL))
                    .is_some_and(|v| v == "true")
            })
            .flat_map(|c| c.names.unwrap_or_default())
            .map(|name| name.trim_start_matches('/').to_owned())
            .filter(|name| names.contains(name))
            .collect())
    }

    /// Creates and starts container `name` afresh: a demo container of that name from an
    /// earlier run is removed first; anyone else's is left alone and refused.
    async fn replace_container(
        &self,
        docker: &Docker,
        name: &str,
        memory: Option<i64>,
        command: &[&str],
    ) -> Result<(), DemoError> {
        match docker.inspect_container(name, None).await {
            Ok(existing) => {
                let ours = existing
                    .config
                    .and_then(|c| c.labels)
                    .and_then(|labels| labels.get(DEMO_LABEL).cloned())
                    .is_some_and(|v| v == "true");
                if !ours {
                    return Err(DemoError::Conflict(format!(
                        "a container named {name} exists and is not a Sentinel demo container \
                         (no label {DEMO_LABEL}=true); nothing was changed"
                    )));
                }
                let options = RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                };
                docker
                    .remove_container(name, Some(options))
                    .await
                    .map_err(|e| DemoError::Docker(format!("cannot remove the old {name}: {e}")))?;
            }
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {}
            Err(e) => return Err(DemoError::Docker(format!("cannot inspect {name}: {e}"))),
        }
        self.ensure_image(docker).await?;
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(command.iter().map(|s| (*s).to_owned()).collect()),
            labels: Some(HashMap::from([(DEMO_LABEL.to_owned(), "true".to_owned())])),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                memory,
                // No swap: what the container holds stays in its memory, as Docker counts it.
                memory_swap: memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| DemoError::Docker(format!("cannot create {name}: {e}")))?;
        docker
            .start_container(name, None)
            .await
            .map_err(|e| DemoError::Docker(format!("cannot start {name}: {e}")))?;
        Ok(())
    }

    /// The demo image, pulled when it is not there yet.
    async fn ensure_image(&self, docker: &Docker) -> Result<(), DemoError> {
        if docker.inspect_image(&self.image).await.is_ok() {
            return Ok(());
        }
        let options = CreateImageOptions {
            from_image: Some(self.image.clone()),
            ..Default::default()
        };
        let pull = async {
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                step?;
            }
            Ok::<(), bollard::errors::Error>(())
        };
        match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DemoError::Docker(format!(
                "image {} is not here and could not be pulled ({e}); set [demo] image to an \
                 image you have",
                self.image
            ))),
            Err(_) => Err(DemoError::Docker(format!(
                "pulling image {} took longer than {}",
                self.image,
                humantime::format_duration(PULL_TIMEOUT)
            ))),
        }
    }

    async fn docker(&self) -> Result<Docker, DemoError> {
        DockerCollector::connect(&self.docker_host, 1, self.timeout)
            .await
            .map(|collector| collector.client().clone())
            .map_err(|e| DemoError::Docker(format!("docker is not reachable: {e}")))
    }
}

/// `12 MB`, `120 MB`: sizes for people, in the monitor's megabytes (10⁶ bytes).
fn megabytes(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

/// The sandbox's `logs/`, opened without following a link, created when missing.
fn open_logs(root: &Path, create: bool) -> std::io::Result<Option<OwnedFd>> {
    let dir = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    if create {
        std::fs::create_dir_all(root)?;
    }
    let root = match openat(rustix::fs::CWD, root, dir, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) if !create => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if create {
        match mkdirat(&root, "logs", Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    match openat(&root, "logs", dir | OFlags::NOFOLLOW, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) if !create => Ok(None),
        Err(Errno::LOOP | Errno::NOTDIR) => Err(std::io::Error::other(
            "the sandbox's logs/ is not a directory (a symbolic link is never followed)",
        )),
        Err(e) => Err(e.into()),
    }
}

fn is_demo_file(name: &str) -> bool {
    name.starts_with(FILE_PREFIX) && name.ends_with(FILE_SUFFIX)
}

/// Writes the sandbox scenario's logs; returns (files, bytes).
pub fn write_demo_logs(root: &Path) -> std::io::Result<(usize, u64)> {
    let logs = open_logs(root, true)?.expect("created");
    let line = "2026-01-01T00:00:00Z INFO demo-app: GET /api/orders status=200 duration_ms=12 \
                (a Sentinel demo log line, safe to delete)\n";
    let chunk = line.repeat(1 + (1 << 20) / line.len());
    let mut bytes = 0u64;
    for n in 1..=FILES {
        let name = format!("{FILE_PREFIX}{n:02}{FILE_SUFFIX}");
        // A file of this name from an earlier run is unlinked first (a link is removed, never
        // followed), then the new one is created exclusively: nothing is written through a
        // link, hard or symbolic.
        match unlinkat(&logs, name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = openat(&logs, name.as_str(), flags, Mode::from_raw_mode(0o644))?;
        let mut file = std::fs::File::from(fd);
        let mut left = FILE_BYTES;
        while left > 0 {
            let n = left.min(chunk.len());
            file.write_all(&chunk.as_bytes()[..n])?;
            left -= n;
        }
        file.sync_all()?;
        bytes += FILE_BYTES as u64;
    }
    Ok((FILES, bytes))
}

/// Removes the demo's files from the sandbox's `logs/`: regular files named
/// `sentinel-demo-*.log`, nothing else. Returns (files, bytes).
pub fn remove_demo_logs(root: &Path) -> std::io::Result<(usize, u64)> {
    let Some(logs) = open_logs(root, false)? else {
        return Ok((0, 0));
    };
    let mut names = Vec::new();
    for entry in Dir::read_from(&logs)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if is_demo_file(name) {
            names.push(name.to_owned());
        }
    }
    let (mut files, mut bytes) = (0, 0);
    for name in names {
        let stat = match statat(&logs, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            continue;
        }
        match unlinkat(&logs, name.as_str(), AtFlags::empty()) {
            Ok(()) => {
                files += 1;
                bytes += stat.st_size as u64;
            }
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_parse_by_name_and_unknown_ones_are_refused() {
        for scenario in DemoScenario::ALL {
            assert_eq!(scenario.as_str().parse::<DemoScenario>(), Ok(scenario));
        }
        assert!("meteor".parse::<DemoScenario>().is_err());
        assert!("Sandbox ".parse::<DemoScenario>().is_err());
    }

    #[test]
    fn demo_logs_are_written_and_reset_removes_only_them() {
        let sandbox = tempfile::tempdir().unwrap();
        let root = sandbox.path();
        let (files, bytes) = write_demo_logs(root).unwrap();
        assert_eq!((files, bytes), (FILES, (FILES * FILE_BYTES) as u64));
        assert!(
            bytes >= 100_000_000,
            "past the default sandbox_size warning"
        );
        // Someone else's files, and a link with a demo name, stay.
        std::fs::write(root.join("logs/app.log"), "mine").unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::write(root.join("data/sentinel-demo-01.log"), "data").unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("precious.log");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, root.join("logs/sentinel-demo-link.log")).unwrap();
        // Writing again replaces the files instead of writing through what is there.
        let planted = root.join(format!("logs/{FILE_PREFIX}01{FILE_SUFFIX}"));
        std::fs::remove_file(&planted).unwrap();
        std::os::unix::fs::symlink(&target, &planted).unwrap();
        write_demo_logs(root).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

        let (removed, removed_bytes) = remove_demo_logs(root).unwrap();
        assert_eq!((removed, removed_bytes), (files, bytes));
        let left: Vec<String> = std::fs::read_dir(root.join("logs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut left = left;
        left.sort();
        assert_eq!(left, ["app.log", "sentinel-demo-link.log"]);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(root.join("data/sentinel-demo-01.log").exists());
        // Nothing to remove is not an error, nor is a sandbox that does not exist.
        assert_eq!(remove_demo_logs(root).unwrap(), (0, 0));
        assert_eq!(remove_demo_logs(&root.join("missing")).unwrap(), (0, 0));
    }

    #[test]
    fn a_linked_logs_directory_is_refused() {
        let sandbox = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), sandbox.path().join("logs")).unwrap();
        assert!(write_demo_logs(sandbox.path()).is_err());
        assert!(remove_demo_logs(sandbox.path()).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }
}
