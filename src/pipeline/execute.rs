//! Execute: carry out an approved catalogue action against Docker or the sandbox, and undo
//! it on rollback (SPEC §4, §5).
//!
//! In: an [`ApprovedAction`], which only `policy` (automatic) or `approve` (a person with
//! the right role) can make. Out: the state after, a [`TargetState`], to set beside the
//! snapshot taken before. Also: [`Executor::snapshot`] (what the action would change, captured when it is
//! proposed and again right before it runs) and [`Executor::undo`].
//!
//! Must not: decide anything (policy did), run anything not in the catalogue (the plan type
//! has no other variants), or touch files other than through `runtime::cleanup`, which moves
//! files out of the sandbox's logs/, tmp/ and cache/ only, without following links.
//!
//! A cleanup's records carry sizes: the [`CleanupPlan`] an estimate made before (`restorable_bytes`
//! and `deleted_bytes` assume no compression, so more may stay restorable), the result the
//! figures measured on disk once the quarantine kept what fits in `[actions]
//! quarantine_max_bytes` ([`CleanupResult`]), and a rollback what came back and what could
//! not ([`RestoreResult`]).

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::ContainerUpdateBody;
use bollard::query_parameters::{RestartContainerOptions, StopContainerOptions};
use bollard::Docker;

use crate::config::Settings;
use crate::domain::{
    ActionPlan, CleanupPlan, CleanupResult, ContainerState, IncidentId, RestoreResult, TargetState,
};
use crate::pipeline::approve::ApprovedAction;
use crate::pipeline::engine::RollbackPermit;
use crate::runtime::cleanup;
use crate::runtime::docker::DockerCollector;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("docker: {0}")]
    Docker(String),
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error("{0}")]
    Refused(String),
}

/// The hands: a Docker client (connected per use, so a daemon restart is no problem) and
/// the sandbox path.
pub struct Executor {
    docker_host: String,
    timeout: Duration,
    sandbox: PathBuf,
    /// `[actions] quarantine_max_bytes`: what cleanup's quarantine keeps at most.
    quarantine_max_bytes: u64,
}

impl Executor {
    pub fn new(settings: &Settings) -> Self {
        Executor {
            docker_host: settings.monitor.docker_host.clone(),
            // Long enough for a restart, which waits up to 10 s for the container to stop.
            timeout: Duration::from_secs(120),
            sandbox: settings.sandbox_dir.clone(),
            quarantine_max_bytes: settings.actions.quarantine_max_bytes.0,
        }
    }

    async fn docker(&self) -> Result<Docker, ExecError> {
        let collector = DockerCollector::connect(&self.docker_host, 1, self.timeout)
            .await
            .map_err(|e| ExecError::Docker(e.to_string()))?;
        Ok(collector.client().clone())
    }

    /// What the action would change, now: the container's state and limits, or the files
    /// cleanup would move (counted, with a sample of names).
    pub async fn snapshot(&self, plan: &ActionPlan) -> Result<TargetState, ExecError> {
        match plan {
            ActionPlan::NotifyOnly => Ok(TargetState::nothing()),
            ActionPlan::SandboxCleanup { dirs } => {
                let sandbox = self.sandbox.clone();
                let to_plan = dirs.clone();
                let (planned, used) = tokio::task::spawn_blocking(move || {
                    let planned = cleanup::plan_cleanup(&sandbox, &to_plan)?;
                    let used = cleanup::quarantine_bytes(&sandbox)?;
                    Ok::<_, std::io::Error>((planned, used))
                })
                .await
                .map_err(|e| ExecError::Sandbox(e.to_string()))?
                .map_err(|e| ExecError::Sandbox(e.to_string()))?;
                let estimate = planned.estimate(self.quarantine_max_bytes.saturating_sub(used));
                let sample = planned
                    .files
                    .iter()
                    .take(20)
                    .map(|f| f.path.clone())
                    .collect();
                Ok(TargetState::CleanupPlan(CleanupPlan {
                    dirs: dirs.clone(),
                    files: planned.files.len() as u64,
                    bytes: planned.bytes,
                    sample,
                    quarantine_max_bytes: self.quarantine_max_bytes,
                    quarantine_used_bytes: used,
                    restorable_files: estimate.restorable_files,
                    restorable_bytes: estimate.restorable_bytes,
                    deleted_files: estimate.deleted_files,
                    deleted_bytes: estimate.deleted_bytes,
                }))
            }
            ActionPlan::ContainerStart { container }
            | ActionPlan::ContainerRestart { container }
            | ActionPlan::ContainerMemoryLimit { container, .. } => {
                container_state(&self.docker().await?, container).await
            }
        }
    }

    /// Whether the target is still what the approval saw. Containers are compared on
    /// identity, state and limits; the sandbox always changes a little, so cleanup is pinned
    /// to its directories and each file is re-checked as it is moved.
    /// A target that could not be read then and cannot now is unchanged as far as anyone
    /// knows: the approval saw that, and running reports the error.
    pub fn unchanged(plan: &ActionPlan, approved: &TargetState, now: &TargetState) -> bool {
        use TargetState::{CleanupPlan as Plan, Container, Unreadable};
        match (plan, approved, now) {
            (ActionPlan::NotifyOnly, _, _) => true,
            (ActionPlan::SandboxCleanup { .. }, Plan(approved), Plan(now)) => {
                approved.dirs == now.dirs
            }
            (_, Container(a), Container(n)) => {
                (&a.id, &a.state, a.memory, a.memory_swap)
                    == (&n.id, &n.state, n.memory, n.memory_swap)
            }
            (_, Unreadable(_), Unreadable(_)) => true,
            _ => false,
        }
    }

    /// Runs the action. Returns the state after.
    pub async fn run(
        &self,
        action: &ApprovedAction,
        before: &TargetState,
    ) -> Result<TargetState, ExecError> {
        match action.plan() {
            ActionPlan::NotifyOnly => Ok(TargetState::nothing()),
            ActionPlan::SandboxCleanup { dirs } => {
                let sandbox = self.sandbox.clone();
                let dirs = dirs.clone();
                let id = cleanup_id(action.incident());
                let max_bytes = self.quarantine_max_bytes;
                let (report, kept) = tokio::task::spawn_blocking(move || {
                    let plan = cleanup::plan_cleanup(&sandbox, &dirs)?;
                    let report = cleanup::execute_cleanup(&sandbox, &plan, &id)?;
                    // The files are out of the cleanup directories now: whatever happens
                    // next, the result must say so, so a failure here is part of it.
                    let kept = cleanup::keep_within(&sandbox, &id, max_bytes);
                    Ok::<_, std::io::Error>((report, kept))
                })
                .await
                .map_err(|e| ExecError::Sandbox(e.to_string()))?
                .map_err(|e| ExecError::Sandbox(e.to_string()))?;
                let after = match kept {
                    Ok(kept) => CleanupResult {
                        moved_files: report.moved_files,
                        moved_bytes: report.moved_bytes,
                        skipped: report.skipped.len() as u64,
                        quarantine: report.quarantine,
                        restorable_files: kept.restorable_files,
                        restorable_bytes: kept.restorable_bytes,
                        stored_bytes: kept.stored_bytes,
                        deleted_files: kept.deleted_files,
                        deleted_bytes: kept.deleted_bytes,
                        freed_bytes: report.moved_bytes.saturating_sub(kept.stored_bytes),
                        quarantine_skipped: (kept.skipped_count > 0).then_some(kept.skipped_count),
                        quarantine_error: None,
                    },
                    // Everything moved stays in the quarantine uncompressed: restorable,
                    // not freed.
                    Err(e) => CleanupResult {
                        moved_files: report.moved_files,
                        moved_bytes: report.moved_bytes,
                        skipped: report.skipped.len() as u64,
                        quarantine: report.quarantine,
                        restorable_files: report.moved_files,
                        restorable_bytes: report.moved_bytes,
                        stored_bytes: report.moved_bytes,
                        deleted_files: 0,
                        deleted_bytes: 0,
                        freed_bytes: 0,
                        quarantine_skipped: None,
                        quarantine_error: Some(e.to_string()),
                    },
                };
                Ok(TargetState::CleanupResult(after))
            }
            ActionPlan::ContainerStart { container } => {
                let docker = self.docker().await?;
                docker
                    .start_container(container, None)
                    .await
                    .map_err(|e| ExecError::Docker(e.to_string()))?;
                container_state(&docker, container).await
            }
            ActionPlan::ContainerRestart { container } => {
                let docker = self.docker().await?;
                let options = RestartContainerOptions {
                    t: Some(10),
                    signal: None,
                };
                docker
                    .restart_container(container, Some(options))
                    .await
                    .map_err(|e| ExecError::Docker(e.to_string()))?;
                container_state(&docker, container).await
            }
            ActionPlan::ContainerMemoryLimit { container, factor } => {
                let docker = self.docker().await?;
                let (memory, swap) = before
                    .container()
                    .map_or((0, 0), |c| (c.memory, c.memory_swap));
                if memory <= 0 {
                    return Err(ExecError::Refused(format!(
                        "container {container} has no memory limit to raise"
                    )));
                }
                let new_memory = (memory as f64 * factor).round() as i64;
                // Keep the same swap allowance on top of the new limit (-1: unlimited).
                let new_swap = if swap > 0 {
                    swap + (new_memory - memory)
                } else {
                    swap
                };
                set_memory(&docker, container, new_memory, new_swap).await?;
                container_state(&docker, container).await
            }
        }
    }

    /// Whether an interrupted execution reached the target, judged from the target itself
    /// (`now`, a fresh [`Self::snapshot`]) against the state recorded before it: a started
    /// container runs, a restarted one has a new start time or restart count, a limit
    /// changed, the incident's quarantine holds files.
    pub fn reached(
        &self,
        incident: &IncidentId,
        plan: &ActionPlan,
        before: &TargetState,
        now: &TargetState,
    ) -> bool {
        let containers = before.container().zip(now.container());
        match plan {
            ActionPlan::NotifyOnly => false,
            ActionPlan::ContainerStart { .. } => containers.is_some_and(|(before, now)| {
                now.running() && (!before.running() || before.started_at != now.started_at)
            }),
            ActionPlan::ContainerRestart { .. } => containers.is_some_and(|(before, now)| {
                before.started_at != now.started_at || before.restart_count != now.restart_count
            }),
            ActionPlan::ContainerMemoryLimit { .. } => containers.is_some_and(|(before, now)| {
                (before.memory, before.memory_swap) != (now.memory, now.memory_swap)
            }),
            ActionPlan::SandboxCleanup { .. } => {
                let quarantine = self
                    .sandbox
                    .join(cleanup::QUARANTINE_DIR)
                    .join(cleanup_id(incident));
                // symlink_metadata: the quarantine is ours, and a link there is not it.
                std::fs::symlink_metadata(&quarantine).is_ok_and(|m| m.is_dir())
                    && std::fs::read_dir(&quarantine).is_ok_and(|mut d| d.next().is_some())
            }
        }
    }

    /// Whether the target already looks as it did before the fix in what the undo restores
    /// (a stopped container, the old limit), so a resumed rollback need not touch it again.
    /// Cleanup's restore is idempotent on its own: never already undone here.
    pub fn undone(plan: &ActionPlan, before: &TargetState, now: &TargetState) -> bool {
        match plan {
            ActionPlan::ContainerStart { .. } => now
                .container()
                .is_some_and(|now| now.state.is_some() && !now.running()),
            ActionPlan::ContainerMemoryLimit { .. } => before
                .container()
                .zip(now.container())
                .is_some_and(|(before, now)| {
                    (before.memory, before.memory_swap) == (now.memory, now.memory_swap)
                }),
            ActionPlan::ContainerRestart { .. }
            | ActionPlan::NotifyOnly
            | ActionPlan::SandboxCleanup { .. } => false,
        }
    }

    /// Undoes a reversible action: stops a started container, restores a memory limit,
    /// brings quarantined files back. Needs the [`RollbackPermit`] that only the engine's one
    /// stored transition into a rollback grants, so concurrent requests make one undo.
    pub async fn undo(&self, permit: &RollbackPermit) -> Result<TargetState, ExecError> {
        let (incident, plan, before) = (permit.incident(), permit.plan(), permit.before());
        match plan {
            ActionPlan::ContainerRestart { .. } | ActionPlan::NotifyOnly => Err(
                ExecError::Refused(format!("{} cannot be undone", plan.action())),
            ),
            ActionPlan::ContainerStart { container } => {
                let docker = self.docker().await?;
                let options = StopContainerOptions {
                    t: Some(10),
                    signal: None,
                };
                docker
                    .stop_container(container, Some(options))
                    .await
                    .map_err(|e| ExecError::Docker(e.to_string()))?;
                container_state(&docker, container).await
            }
            ActionPlan::ContainerMemoryLimit { container, .. } => {
                let docker = self.docker().await?;
                let (memory, swap) = before
                    .container()
                    .map_or((0, 0), |c| (c.memory, c.memory_swap));
                if memory <= 0 {
                    return Err(ExecError::Refused(
                        "no recorded limit to restore".to_owned(),
                    ));
                }
                set_memory(&docker, container, memory, swap).await?;
                container_state(&docker, container).await
            }
            ActionPlan::SandboxCleanup { .. } => {
                let sandbox = self.sandbox.clone();
                let id = cleanup_id(incident);
                let report = tokio::task::spawn_blocking(move || cleanup::restore(&sandbox, &id))
                    .await
                    .map_err(|e| ExecError::Sandbox(e.to_string()))?
                    .map_err(|e| ExecError::Sandbox(e.to_string()))?;
                Ok(TargetState::Restored(RestoreResult {
                    restored_files: report.restored_files,
                    restored_bytes: report.restored_bytes,
                    skipped: report.skipped_count,
                    deleted_files: report.deleted_files,
                    deleted_bytes: report.deleted_bytes,
                }))
            }
        }
    }
}

/// What a fix's result says, in words for people, where the generic before → after
/// listing would not do: a cleanup's figures. `None` for the other actions.
pub fn result_summary(plan: &ActionPlan, after: &TargetState) -> Option<String> {
    let (ActionPlan::SandboxCleanup { .. }, TargetState::CleanupResult(after)) = (plan, after)
    else {
        return None;
    };
    let mut text = format!(
        "moved {} out of the sandbox's cleanup directories",
        files_and_size(after.moved_files, after.moved_bytes)
    );
    if let Some(error) = &after.quarantine_error {
        text.push_str(&format!(
            "; they could not be compressed ({error}), so all of it stays restorable, \
             uncompressed in the quarantine, and nothing was freed"
        ));
        return Some(text);
    }
    if after.deleted_files == 0 {
        text.push_str(&format!(
            "; all of it stays restorable in the quarantine ({} compressed)",
            megabytes(after.stored_bytes)
        ));
    } else {
        text.push_str(&format!(
            "; {} stay restorable in the quarantine ({} compressed); {} were deleted for good, \
             as they did not fit in the quarantine",
            files_and_size(after.restorable_files, after.restorable_bytes),
            megabytes(after.stored_bytes),
            files_and_size(after.deleted_files, after.deleted_bytes),
        ));
    }
    text.push_str(&format!("; freed {}", megabytes(after.freed_bytes)));
    if after.skipped > 0 {
        text.push_str(&format!(
            "; {} changed since planning and stayed in place",
            plural(after.skipped, "file", "files")
        ));
    }
    Some(text)
}

/// What an undo's result says, in words for people: for a cleanup, what came back byte for
/// byte (zstd's checksum verified) and what could not. `None` for the other actions.
pub fn undo_summary(plan: &ActionPlan, restored: &TargetState) -> Option<String> {
    let (ActionPlan::SandboxCleanup { .. }, TargetState::Restored(restored)) = (plan, restored)
    else {
        return None;
    };
    let mut text = format!(
        "restored {} from the quarantine, byte for byte",
        files_and_size(restored.restored_files, restored.restored_bytes)
    );
    if restored.deleted_files > 0 {
        text.push_str(&format!(
            "; {} could not be restored: they were deleted for good when the quarantine was full",
            files_and_size(restored.deleted_files, restored.deleted_bytes)
        ));
    }
    if restored.skipped > 0 {
        text.push_str(&format!(
            "; {} stayed in the quarantine (a file of that name exists, or a link was in the way)",
            plural(restored.skipped, "entry", "entries")
        ));
    }
    Some(text)
}

/// `3 files (120 MB)`.
fn files_and_size(files: u64, bytes: u64) -> String {
    format!("{} ({})", plural(files, "file", "files"), megabytes(bytes))
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Bytes as megabytes of 1,000,000 bytes, as the sandbox_size signal and its threshold.
fn megabytes(bytes: u64) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 10.0 {
        format!("{mb:.0} MB")
    } else if mb >= 0.1 || bytes == 0 {
        format!("{mb:.1} MB")
    } else {
        format!("{} KB", bytes.div_ceil(1000))
    }
}

/// The quarantine directory name of an incident's cleanup.
pub fn cleanup_id(incident: &IncidentId) -> String {
    incident.as_str().to_owned()
}

async fn set_memory(
    docker: &Docker,
    container: &str,
    memory: i64,
    swap: i64,
) -> Result<(), ExecError> {
    let body = ContainerUpdateBody {
        memory: Some(memory),
        memory_swap: Some(swap),
        ..Default::default()
    };
    docker
        .update_container(container, body)
        .await
        .map_err(|e| ExecError::Docker(e.to_string()))
}

/// The parts of `docker inspect` an action changes or depends on.
async fn container_state(docker: &Docker, container: &str) -> Result<TargetState, ExecError> {
    let inspect = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| ExecError::Docker(e.to_string()))?;
    let state = inspect.state.as_ref();
    let host = inspect.host_config.as_ref();
    Ok(TargetState::Container(ContainerState {
        id: inspect.id,
        name: container.to_owned(),
        state: state.and_then(|s| s.status).map(|s| s.to_string()),
        started_at: state.and_then(|s| s.started_at.clone()),
        restart_count: inspect.restart_count,
        memory: host.and_then(|h| h.memory).unwrap_or(0),
        memory_swap: host.and_then(|h| h.memory_swap).unwrap_or(0),
    }))
}
