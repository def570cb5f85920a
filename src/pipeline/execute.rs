//! Execute: carry out an approved catalogue action against Docker or the sandbox, and undo
//! it on rollback (SPEC §4, §5).
//!
//! In: an [`ApprovedAction`], which only `policy` (automatic) or `approve` (a person with
//! the right role) can make. Out: the state after, as JSON, to set beside the snapshot taken
//! before. Also: [`Executor::snapshot`] (what the action would change, captured when it is
//! proposed and again right before it runs) and [`Executor::undo`].
//!
//! Must not: decide anything (policy did), run anything not in the catalogue (the plan type
//! has no other variants), or touch files other than through `runtime::cleanup`, which moves
//! files out of the sandbox's logs/, tmp/ and cache/ only, without following links.

use std::path::PathBuf;
use std::time::Duration;

use bollard::models::ContainerUpdateBody;
use bollard::query_parameters::{RestartContainerOptions, StopContainerOptions};
use bollard::Docker;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::domain::{ActionPlan, IncidentId};
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
}

impl Executor {
    pub fn new(settings: &Settings) -> Self {
        Executor {
            docker_host: settings.monitor.docker_host.clone(),
            // Long enough for a restart, which waits up to 10 s for the container to stop.
            timeout: Duration::from_secs(120),
            sandbox: settings.sandbox_dir.clone(),
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
    pub async fn snapshot(&self, plan: &ActionPlan) -> Result<Value, ExecError> {
        match plan {
            ActionPlan::NotifyOnly => Ok(json!({})),
            ActionPlan::SandboxCleanup { dirs } => {
                let sandbox = self.sandbox.clone();
                let dirs = dirs.clone();
                let planned =
                    tokio::task::spawn_blocking(move || cleanup::plan_cleanup(&sandbox, &dirs))
                        .await
                        .map_err(|e| ExecError::Sandbox(e.to_string()))?
                        .map_err(|e| ExecError::Sandbox(e.to_string()))?;
                let sample: Vec<&str> = planned
                    .files
                    .iter()
                    .take(20)
                    .map(|f| f.path.as_str())
                    .collect();
                Ok(json!({
                    "dirs": plan.to_proposed().params.get("dirs"),
                    "files": planned.files.len(),
                    "bytes": planned.bytes,
                    "sample": sample,
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
    pub fn unchanged(plan: &ActionPlan, approved: &Value, now: &Value) -> bool {
        match plan {
            ActionPlan::NotifyOnly => true,
            ActionPlan::SandboxCleanup { .. } => approved.get("dirs") == now.get("dirs"),
            _ => ["id", "state", "memory", "memory_swap"]
                .iter()
                .all(|key| approved.get(key) == now.get(key)),
        }
    }

    /// Runs the action. Returns the state after.
    pub async fn run(&self, action: &ApprovedAction, before: &Value) -> Result<Value, ExecError> {
        match action.plan() {
            ActionPlan::NotifyOnly => Ok(json!({})),
            ActionPlan::SandboxCleanup { dirs } => {
                let sandbox = self.sandbox.clone();
                let dirs = dirs.clone();
                let id = cleanup_id(action.incident());
                let report = tokio::task::spawn_blocking(move || {
                    let plan = cleanup::plan_cleanup(&sandbox, &dirs)?;
                    cleanup::execute_cleanup(&sandbox, &plan, &id)
                })
                .await
                .map_err(|e| ExecError::Sandbox(e.to_string()))?
                .map_err(|e| ExecError::Sandbox(e.to_string()))?;
                Ok(json!({
                    "moved_files": report.moved_files,
                    "moved_bytes": report.moved_bytes,
                    "skipped": report.skipped.len(),
                    "quarantine": report.quarantine,
                }))
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
                let memory = before["memory"].as_i64().unwrap_or(0);
                if memory <= 0 {
                    return Err(ExecError::Refused(format!(
                        "container {container} has no memory limit to raise"
                    )));
                }
                let swap = before["memory_swap"].as_i64().unwrap_or(0);
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
        before: &Value,
        now: &Value,
    ) -> bool {
        match plan {
            ActionPlan::NotifyOnly => false,
            ActionPlan::ContainerStart { .. } => {
                now.get("state") == Some(&json!("running"))
                    && (before.get("state") != Some(&json!("running"))
                        || before.get("started_at") != now.get("started_at"))
            }
            ActionPlan::ContainerRestart { .. } => {
                before.get("started_at") != now.get("started_at")
                    || before.get("restart_count") != now.get("restart_count")
            }
            ActionPlan::ContainerMemoryLimit { .. } => {
                before.get("memory") != now.get("memory")
                    || before.get("memory_swap") != now.get("memory_swap")
            }
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
    pub fn undone(plan: &ActionPlan, before: &Value, now: &Value) -> bool {
        match plan {
            ActionPlan::ContainerStart { .. } => {
                now.get("state").is_some() && now.get("state") != Some(&json!("running"))
            }
            ActionPlan::ContainerMemoryLimit { .. } => {
                before.get("memory") == now.get("memory")
                    && before.get("memory_swap") == now.get("memory_swap")
            }
            ActionPlan::ContainerRestart { .. }
            | ActionPlan::NotifyOnly
            | ActionPlan::SandboxCleanup { .. } => false,
        }
    }

    /// Undoes a reversible action: stops a started container, restores a memory limit,
    /// brings quarantined files back. Needs the [`RollbackPermit`] that only the engine's one
    /// stored transition into a rollback grants, so concurrent requests make one undo.
    pub async fn undo(&self, permit: &RollbackPermit) -> Result<Value, ExecError> {
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
                let memory = before["memory"].as_i64().unwrap_or(0);
                let swap = before["memory_swap"].as_i64().unwrap_or(0);
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
                Ok(json!({
                    "restored_files": report.restored_files,
                    "skipped": report.skipped.len(),
                }))
            }
        }
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
async fn container_state(docker: &Docker, container: &str) -> Result<Value, ExecError> {
    let inspect = docker
        .inspect_container(container, None)
        .await
        .map_err(|e| ExecError::Docker(e.to_string()))?;
    let state = inspect.state.as_ref();
    let host = inspect.host_config.as_ref();
    Ok(json!({
        "id": inspect.id,
        "name": container,
        "state": state.and_then(|s| s.status).map(|s| s.to_string()),
        "started_at": state.and_then(|s| s.started_at.clone()),
        "restart_count": inspect.restart_count,
        "memory": host.and_then(|h| h.memory).unwrap_or(0),
        "memory_swap": host.and_then(|h| h.memory_swap).unwrap_or(0),
    }))
}
