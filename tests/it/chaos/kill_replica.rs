//! `kill -9` of the replica holding an execution, at the six kill points of the
//! single-process matrix (`tests/it/crash.rs`), in a cluster: three `sentinel serve`
//! replicas on one private durable Redis (append-only file, `fsync` on every write) behind the
//! round-robin proxy, the monitor on, watching the run's labelled container. Every request
//! goes through the proxy, so any replica may answer it.
//!
//! Who holds the execution: the replica that accepts an approval queues the execution on
//! itself (`Service::approve_from` enqueues `Job::Execute` locally), takes the per-incident
//! lease `execute:<id>` (holder `<pid>-<random>`, `src/pipeline/remediate.rs`), runs the fix,
//! and queues the verification on itself after `settle`; a rollback asked over the API runs
//! on the replica that accepts the request, under the same lease. So the harness knows the
//! replica from the boundary, the proxy (which backend it sent the approval's, or the
//! rollback's, connection to, recorded before the backend reads a byte), and checks it
//! against the store: the pid in the lease the dead process left behind (it lives on until
//! it expires), else the last one a watcher reading the lease key every 5 ms saw before the
//! kill (the lease is released once the fix ran), must be the killed replica's.
//!
//! | kill point | fix | the executing replica is killed when |
//! |---|---|---|
//! | `after_approval` | `container_start` | the approval's 200 arrives |
//! | `after_intent` | `container_start` | the store shows `executing` (read every 5 ms) |
//! | `during_docker_call` | `container_restart` | Docker reports the restart's SIGTERM (the call then lasts 10 s) |
//! | `after_docker_call` | `container_start` | Docker reports the `start` |
//! | `during_verification` | `container_start` | the store shows `verifying` |
//! | `during_rollback` | `container_start` | after an admin's rollback, Docker reports the undo's SIGTERM |
//!
//! The container's shell ignores SIGTERM, so every stop Docker makes takes its 10 s timeout.
//! The Docker-triggered kills fire from the thread reading `docker events`, the instant the
//! event arrives, at the replica the proxy sent the request to.
//!
//! After the kill the store says where it landed (a miss is reported, not failed), the
//! killed replica stays down for [`DOWN`] (whether the survivors moved the incident's status
//! meanwhile, or wrote to it at all, is counted: no replica but the holder picks up another's
//! execution, so only a restart, whose recovery reads every incident, moves it on) and is
//! then started again, as a supervisor would, on a new port the
//! proxy now sends to. Each run then checks: **lost** — the incident reaches a terminal
//! status (no rollback under way) within `settle` + 60 s of the restart (the figure
//! `to_terminal` counts from the kill) and no other
//! incident of the run has work under way; **doubled** — at most one action per step reached
//! Docker (one `start` for a start; one `restart`, one `start` and one SIGTERM for a restart;
//! one `stop`, one SIGTERM and at most one `start` for the undo); and, as in the single-process
//! matrix, that the audit names the interruption after the kill (`RemediationResumed` or
//! `ExecutionReconciled`), an interrupted `executing` is `reconciled`, an interrupted
//! rollback is resumed and completed or reported, and the chain verifies.
//!
//! **No restart** (`survivors_take_over_…`, line `kill_replica_no_restart`): the same six
//! kill points, but the killed replica is never started again and the proxy sends to the two
//! survivors only from the kill on. The monitor's leader (a survivor; if the killed replica
//! led, its 3 s monitor lease passes to one) must take the work over
//! (`remediate::adopt_orphans`: stale for the execution lease + `settle` + 30 s, lease free,
//! looked for every 10 s). What the survivors wrote is read when the killed holder's
//! execution lease has surely run out (15 s after the kill: a takeover before would be one
//! worker too many). Each run then checks: **lost** — no work under way within
//! [`TAKEOVER_WITHIN`] of the kill; **doubled** as above; the audit holds, after the kill, for
//! a run killed with work under way exactly one `RemediationResumed` and it says
//! `after: "replica lost"` (the time from the kill to it is the figure `to_resumed`), for a
//! run with none under way none; and the same `reconciled`/`rollback_resumed`/chain checks.
//!
//! Runs go concurrently: a pool of workers, each with its own private durable Redis, takes
//! (kill point, run) pairs from one queue, and every run has a cluster of its own (a fresh
//! key prefix, label, directory and three replicas), so a restart's recovery sees only its
//! own run's incidents. Short mode: one run per kill point, the six side by side. Full
//! (`SENTINEL_CHAOS=full`): 50 per kill point, 300 runs (no restart: 10 per kill point, 60
//! runs), on [`FULL_WORKERS`] workers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::AsyncCommands;
use sentinel::domain::{Execution, Incident, IncidentId, Status, Timestamp};
use sentinel::store::redis::RedisStore;
use sentinel::store::{IncidentQuery, Store};
use serde_json::Value;

use super::cluster::{
    api, docker, spreading_client, terminal, wait_for_incident, ClusterConfig, PrivateRedis, Proxy,
    Replica,
};
use super::{full, report, size};
use crate::containers::IMAGE;

/// The `settle` of [`ClusterConfig`]: how long after a fix Sentinel measures again.
const SETTLE: Duration = Duration::from_secs(2);

/// After the restart every incident of the run must have no work under way within this
/// (SPEC: `settle` + 60 s).
const TERMINAL_WITHIN: Duration = Duration::from_secs(SETTLE.as_secs() + 60);

/// Bound on each wait before the kill (detection, approval, execution, resolution).
const STAGE_WITHIN: Duration = Duration::from_secs(60);

/// How long the killed replica stays down before it is started again.
const DOWN: Duration = Duration::from_secs(2);

/// The execution lease's ttl (`EXECUTION_LEASE` in `src/pipeline/remediate.rs`): a killed
/// holder's lease runs out at most this long after the kill.
const EXECUTION_LEASE: Duration = Duration::from_secs(15);

/// With no restart, every incident of the run must have no work under way within this of
/// the kill: the work is stale once its last step is older than the execution lease +
/// `settle` + 30 s (`ORPHAN_GRACE`), the monitor's leader looks every 10 s
/// (`ADOPT_EVERY` in `src/pipeline/monitor.rs`), and then the work itself, as after a
/// restart, has `settle` + 60 s. A killed leader's monitor lease (3 s) fits in the slack.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(
    EXECUTION_LEASE.as_secs() + SETTLE.as_secs() + 30 + 10 + TERMINAL_WITHIN.as_secs(),
);

/// Workers at full size: 300 runs of 10–35 s each, in about half an hour on two cores.
const FULL_WORKERS: usize = 10;

/// The shell of every container: it ignores SIGTERM, so a stop takes Docker's 10 s.
const STUBBORN: &str = "rm -f /tmp/broken; trap '' TERM; while true; do sleep 1; done";

/// Audit events that name an interruption by a restart.
const INTERRUPTION_EVENTS: [&str; 2] = ["RemediationResumed", "ExecutionReconciled"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KillPoint {
    AfterApproval,
    AfterIntent,
    DuringDockerCall,
    AfterDockerCall,
    DuringVerification,
    DuringRollback,
}

const POINTS: [KillPoint; 6] = [
    KillPoint::DuringRollback,
    KillPoint::DuringDockerCall,
    KillPoint::AfterDockerCall,
    KillPoint::AfterIntent,
    KillPoint::AfterApproval,
    KillPoint::DuringVerification,
];

/// Which fix a kill point runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fix {
    /// `container_start` of a container killed by `docker kill`.
    Start,
    /// `container_restart` of a running container whose health check fails.
    Restart,
}

impl KillPoint {
    fn name(self) -> &'static str {
        match self {
            KillPoint::AfterApproval => "after_approval",
            KillPoint::AfterIntent => "after_intent",
            KillPoint::DuringDockerCall => "during_docker_call",
            KillPoint::AfterDockerCall => "after_docker_call",
            KillPoint::DuringVerification => "during_verification",
            KillPoint::DuringRollback => "during_rollback",
        }
    }

    fn fix(self) -> Fix {
        match self {
            KillPoint::DuringDockerCall => Fix::Restart,
            _ => Fix::Start,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kill_9_of_the_replica_holding_an_execution_loses_and_doubles_nothing() {
    let workers = if full() { FULL_WORKERS } else { POINTS.len() };
    matrix(Restart::After(DOWN), size(1, 50), workers).await;
}

/// The killed replica stays dead: the two survivors (the monitor's leader,
/// `remediate::adopt_orphans`) must finish its work.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_take_over_the_work_of_a_replica_killed_for_good() {
    let workers = if full() { FULL_WORKERS } else { POINTS.len() };
    matrix(Restart::Never, size(1, 10), workers).await;
}

/// Whether, and when, the killed replica is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// Started again this long after the kill, as a supervisor would.
    After(Duration),
    /// Never: the proxy sends to the two survivors only from the kill on.
    Never,
}

impl Restart {
    fn scenario(self) -> &'static str {
        match self {
            Restart::After(_) => "kill_replica",
            Restart::Never => "kill_replica_no_restart",
        }
    }

    /// How long after the kill the store is read for what the survivors wrote meanwhile:
    /// until the restart, or, with none, until the killed holder's execution lease has
    /// surely run out (nobody may take the work over before).
    fn hands_off(self) -> Duration {
        match self {
            Restart::After(down) => down,
            Restart::Never => EXECUTION_LEASE,
        }
    }
}

/// `runs` runs of every kill point on `workers` workers; prints the scenario's line.
async fn matrix(restart: Restart, runs: usize, workers: usize) {
    let started = Instant::now();
    let queue: VecDeque<(KillPoint, usize)> = (1..=runs)
        .flat_map(|run| POINTS.iter().map(move |point| (*point, run)))
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let pool = (0..workers).map(|_| {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move {
            let redis = PrivateRedis::durable();
            let mut records = Vec::new();
            loop {
                let next = queue.lock().unwrap().pop_front();
                let Some((point, run)) = next else { break };
                // A panic in the harness (a replica that never became ready) fails this run
                // only, with its message.
                let record = tokio::spawn(run_once(redis.url(), point, run, restart))
                    .await
                    .unwrap_or_else(|e| {
                        let mut record = RunRecord::new(point, run, restart);
                        record.fail(format!("the run panicked: {e}"));
                        record
                    });
                println!("{}", record.line());
                records.push(record);
            }
            records
        })
    });
    let mut records = Vec::new();
    for worker in futures::future::join_all(pool).await {
        records.extend(worker.expect("a worker finishes"));
    }
    let wall = started.elapsed();

    let mut failures = Vec::new();
    for record in &records {
        for failure in &record.failures {
            failures.push(format!(
                "{} run {}: {failure}",
                record.point.name(),
                record.run
            ));
        }
    }
    let lost = records.iter().filter(|r| r.lost).count();
    let doubled = records.iter().filter(|r| r.doubled).count();
    let per_point: Vec<String> = POINTS
        .iter()
        .map(|point| {
            let mine: Vec<&RunRecord> = records.iter().filter(|r| r.point == *point).collect();
            point_figures(*point, &mine, restart)
        })
        .collect();
    let takeover = match restart {
        Restart::After(_) => String::new(),
        Restart::Never => format!(
            "survivors=2 resumed_replica_lost={}/{} killed_leader={} ",
            records
                .iter()
                .filter(|r| r.under_way && r.resumed_lost > 0)
                .count(),
            records.iter().filter(|r| r.under_way).count(),
            records.iter().filter(|r| r.killed_leader).count(),
        ),
    };
    report(
        restart.scenario(),
        &format!(
            "replicas=3 {takeover}runs={} lost={lost} doubled={doubled} failed_runs={} \
             workers={workers} wall={:.0}s | {}",
            records.len(),
            records.iter().filter(|r| !r.failures.is_empty()).count(),
            wall.as_secs_f64(),
            per_point.join(" | ")
        ),
        &failures,
    );
}

/// One kill point's figures: runs, lost, doubled, where the kill landed, what the survivors
/// wrote before the restart (or, with none, while the killed holder's lease may have
/// lived), with no restart the takeovers audited and when, time to terminal.
fn point_figures(point: KillPoint, records: &[&RunRecord], restart: Restart) -> String {
    let span = |times: Vec<Duration>| match (times.iter().min(), times.iter().max()) {
        (Some(min), Some(max)) => format!("{:.1}s..{:.1}s", min.as_secs_f64(), max.as_secs_f64()),
        _ => "n/a".to_owned(),
    };
    let mut finals = std::collections::BTreeMap::new();
    for record in records {
        let status = record.final_status.split('(').next().unwrap_or("?");
        *finals.entry(status.to_owned()).or_insert(0) += 1;
    }
    let finals: Vec<String> = finals.iter().map(|(s, n)| format!("{s}:{n}")).collect();
    let seen = records.iter().filter(|r| r.holder_seen.is_some()).count();
    let confirmed = records
        .iter()
        .filter(|r| r.holder_seen == Some(true))
        .count();
    let (window, takeover) = match restart {
        Restart::After(_) => ("while_down", String::new()),
        Restart::Never => (
            "in_lease",
            format!(
                " resumed={}/{} to_resumed={}",
                records
                    .iter()
                    .filter(|r| r.under_way && r.resumed_lost > 0)
                    .count(),
                records.iter().filter(|r| r.under_way).count(),
                span(records.iter().filter_map(|r| r.to_resumed).collect()),
            ),
        ),
    };
    format!(
        "{} runs={} lost={} doubled={} landed={} killed_holder={confirmed}/{seen} \
         moved_{window}={} written_{window}={}{takeover} to_terminal={} final={}",
        point.name(),
        records.len(),
        records.iter().filter(|r| r.lost).count(),
        records.iter().filter(|r| r.doubled).count(),
        records.iter().filter(|r| r.landed).count(),
        records
            .iter()
            .filter(|r| r.while_down.as_ref().is_some_and(|d| d.status_changed))
            .count(),
        records
            .iter()
            .filter(|r| r.while_down.as_ref().is_some_and(|d| d.version_changed))
            .count(),
        span(records.iter().filter_map(|r| r.to_terminal).collect()),
        finals.join(","),
    )
}

/// What one run found.
struct RunRecord {
    point: KillPoint,
    run: usize,
    restart: Restart,
    /// Whether the kill fell where the kill point means.
    landed: bool,
    /// The killed replica (`r0`…`r2`), and which replica led the monitor then.
    killed: String,
    /// Whether the execution lease's holder, as the store named it before the kill, was the
    /// killed replica; `None` when no holder was seen (killed before the lease was taken).
    holder_seen: Option<bool>,
    /// The incident as the store held it at the kill, in words.
    at_kill: String,
    /// Whether the killed replica led the monitor (with no restart, a survivor then takes
    /// the monitor lease over before it can take the work over).
    killed_leader: bool,
    /// What the survivors wrote to the incident while the killed replica was down (with no
    /// restart: while the killed holder's execution lease may have lived).
    while_down: Option<WhileDown>,
    /// Whether the kill left work under way (not awaiting approval, not done).
    under_way: bool,
    /// With no restart: how many `RemediationResumed` entries with `after: replica lost`
    /// the audit holds for the incident after the kill, and from the kill to the first.
    resumed_lost: usize,
    to_resumed: Option<Duration>,
    /// From the kill to no work under way, when that happened in time.
    to_terminal: Option<Duration>,
    final_status: String,
    /// The Docker actions counted per step, in words.
    docker: String,
    lost: bool,
    doubled: bool,
    failures: Vec<String>,
}

impl RunRecord {
    fn new(point: KillPoint, run: usize, restart: Restart) -> RunRecord {
        RunRecord {
            point,
            run,
            restart,
            landed: false,
            killed: "(none)".to_owned(),
            holder_seen: None,
            at_kill: "(not killed)".to_owned(),
            killed_leader: false,
            while_down: None,
            under_way: false,
            resumed_lost: 0,
            to_resumed: None,
            to_terminal: None,
            final_status: "?".to_owned(),
            docker: String::new(),
            lost: false,
            doubled: false,
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, failure: impl Into<String>) {
        self.failures.push(failure.into());
    }

    fn line(&self) -> String {
        format!(
            "{} run: point={} run={} killed={} holder={} landed={} at_kill=[{}] \
             {}=[{}]{} final={} to_terminal={} docker=[{}] failures={}{}",
            self.restart.scenario(),
            self.point.name(),
            self.run,
            self.killed,
            match self.holder_seen {
                Some(true) => "killed",
                Some(false) => "OTHER",
                None => "not-yet",
            },
            if self.landed { "yes" } else { "MISSED" },
            self.at_kill,
            match self.restart {
                Restart::After(_) => "while_down",
                Restart::Never => "in_lease",
            },
            self.while_down.as_ref().map_or_else(
                || "?".to_owned(),
                |d| format!(
                    "status {}, version {}, steps {:?}",
                    if d.status_changed { "CHANGED" } else { "same" },
                    if d.version_changed { "moved" } else { "same" },
                    d.steps
                )
            ),
            match self.restart {
                Restart::After(_) => String::new(),
                Restart::Never => format!(
                    " resumed_replica_lost={} to_resumed={}",
                    self.resumed_lost,
                    self.to_resumed.map_or_else(
                        || "never".to_owned(),
                        |d| format!("{:.1}s", d.as_secs_f64())
                    )
                ),
            },
            self.final_status,
            self.to_terminal.map_or_else(
                || "never".to_owned(),
                |d| format!("{:.1}s", d.as_secs_f64())
            ),
            self.docker,
            self.failures.len(),
            if self.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.failures.join("; "))
            }
        )
    }
}

/// What changed in the store between the kill and the restart (with no restart: the end
/// of the killed holder's execution lease).
struct WhileDown {
    status_changed: bool,
    /// Whether anything of the incident was written (its version moved).
    version_changed: bool,
    /// The timeline steps written meanwhile.
    steps: Vec<String>,
}

/// One run: a cluster of its own, a container, an incident, an approval, a kill, a restart
/// (or none), the checks.
async fn run_once(redis_url: String, point: KillPoint, run: usize, restart: Restart) -> RunRecord {
    let mut record = RunRecord::new(point, run, restart);
    let cluster = ClusterConfig::new(&redis_url, None, true, "");
    let container = match StubbornContainer::broken(&cluster.label, point.fix()).await {
        Ok(container) => container,
        Err(e) => {
            record.fail(e);
            return record;
        }
    };
    if let Err(e) = drive(
        &redis_url,
        &cluster,
        &container,
        point,
        restart,
        &mut record,
    )
    .await
    {
        record.fail(e);
    }
    record
}

/// The run's replicas, shared with the Docker events thread that may kill one of them.
type Replicas = Vec<Arc<Replica>>;

fn index_of(replicas: &Replicas, addr: Option<SocketAddr>) -> Option<usize> {
    let addr = addr?;
    replicas.iter().position(|r| r.addr() == addr)
}

/// The pid in a lease value `<token>|<pid>-<random>` (execution) or
/// `<token>|<host>-<pid>-<random>` (monitor).
fn lease_pid(value: &str, monitor: bool) -> Option<i32> {
    let (_, holder) = value.split_once('|')?;
    let mut parts = holder.split('-');
    if monitor {
        parts.next();
    }
    parts.next()?.parse().ok()
}

/// Everything after the container is broken; `Err` when the run cannot go on.
async fn drive(
    redis_url: &str,
    cluster: &ClusterConfig,
    container: &StubbornContainer,
    point: KillPoint,
    restart: Restart,
    record: &mut RunRecord,
) -> Result<(), String> {
    let mut replicas: Replicas = cluster
        .replicas(3)
        .await
        .into_iter()
        .map(Arc::new)
        .collect();
    let pids: Vec<i32> = replicas.iter().map(|r| r.pid()).collect();
    let proxy = Proxy::start(replicas.iter().map(|r| r.addr()).collect()).await;
    let client = spreading_client();
    let base = proxy.base();
    let store = harness_store(redis_url, &cluster.prefix).await?;
    let conn = redis::Client::open(redis_url)
        .map_err(|e| e.to_string())?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("the private Redis does not answer: {e}"))?;

    let fingerprint = format!("container_down:{}", container.name);
    let waiting = wait_for_incident(
        &client,
        &base,
        &cluster.admin_key,
        &fingerprint,
        STAGE_WITHIN,
        |i| i["status"] == "awaiting_approval",
    )
    .await
    .ok_or_else(|| format!("no {fingerprint} incident awaiting approval"))?;
    let id = waiting["id"].as_str().unwrap_or_default().to_owned();
    let expected_action = match point.fix() {
        Fix::Start => "container_start",
        Fix::Restart => "container_restart",
    };
    let proposed = waiting["proposed_action"]["action"].as_str().unwrap_or("");
    if proposed != expected_action {
        return Err(format!(
            "the rules proposed {proposed:?}, not {expected_action}: {waiting}"
        ));
    }
    let incident_id = IncidentId::parse(&id).map_err(|e| format!("incident id {id}: {e}"))?;

    let events = KillEvents::watch(&container.name);
    let lease_key = format!("{}lease:execute:{id}", cluster.prefix);
    let holders = LeaseWatch::start(conn.clone(), lease_key.clone());
    let slot = proxy.last_backend_slot();
    match point {
        KillPoint::DuringDockerCall => events.arm("kill", Some("15"), &slot, &replicas),
        KillPoint::AfterDockerCall => events.arm("start", None, &slot, &replicas),
        _ => {}
    }
    let (status, body) = api(
        &client,
        &base,
        &cluster.operator_key,
        reqwest::Method::POST,
        &format!("/api/incidents/{id}/approve"),
    )
    .await;
    let approver = index_of(&replicas, proxy.last_backend());
    if status != 200 {
        return Err(format!("the approval answered {status}: {body}"));
    }
    let approver = approver.ok_or("the proxy did not record where the approval went")?;

    // The kill, at the replica holding the work.
    let mut rollback_requested_at = None;
    let (killed, killed_at) = match point {
        KillPoint::AfterApproval => (approver, kill(&replicas[approver])),
        KillPoint::AfterIntent => {
            poll_store(&store, &incident_id, Duration::from_millis(5), |i| {
                i.status != Status::Approved
            })
            .await;
            (approver, kill(&replicas[approver]))
        }
        KillPoint::DuringDockerCall | KillPoint::AfterDockerCall => {
            match events.wait_fired(STAGE_WITHIN).await {
                Some(fired) => fired,
                None => {
                    record.fail("the Docker event to kill on never came");
                    (approver, kill(&replicas[approver]))
                }
            }
        }
        KillPoint::DuringVerification => {
            poll_store(&store, &incident_id, Duration::from_millis(5), |i| {
                !matches!(i.status, Status::Approved | Status::Executing)
            })
            .await;
            (approver, kill(&replicas[approver]))
        }
        KillPoint::DuringRollback => {
            let resolved = poll_store(&store, &incident_id, Duration::from_millis(50), done).await;
            if resolved.as_ref().map(|i| i.status) != Some(Status::Resolved) {
                return Err(format!(
                    "the fix did not resolve the incident: {:?}",
                    resolved.map(|i| i.status)
                ));
            }
            events.arm("kill", Some("15"), &slot, &replicas);
            rollback_requested_at = Some(SystemTime::now());
            // The undo takes Docker's 10 s stop: the request is still open when the kill
            // comes, and then fails; only the kill matters.
            let request = client
                .post(format!("{base}/api/incidents/{id}/rollback"))
                .header("x-api-key", &cluster.admin_key)
                .timeout(Duration::from_secs(30))
                .send();
            let in_flight = tokio::spawn(async move { drop(request.await) });
            let fired = match events.wait_fired(STAGE_WITHIN).await {
                Some(fired) => fired,
                None => {
                    record.fail("the undo's SIGTERM never reached Docker");
                    let at = index_of(&replicas, proxy.last_backend()).unwrap_or(approver);
                    (at, kill(&replicas[at]))
                }
            };
            in_flight.abort();
            fired
        }
    };
    let holders_seen = holders.stop().await;

    // Where the kill landed, read from the store while the killed replica is down.
    let at_kill = store
        .get_incident(&incident_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the incident is gone from the store")?;
    let existing: Vec<IncidentId> = store
        .list_incidents(IncidentQuery {
            open_only: false,
            limit: 10_000,
        })
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|i| i.id)
        .collect();
    let audit_at_kill = store.list_audit().await.map_err(|e| e.to_string())?.len();
    let mut conn = conn;
    // The lease a killed holder leaves behind (until it expires) names it too.
    let left_behind: Option<String> = conn.get(&lease_key).await.unwrap_or(None);
    let monitor: Option<String> = conn
        .get(format!("{}lease:monitor", cluster.prefix))
        .await
        .unwrap_or(None);
    let leader = monitor
        .as_deref()
        .and_then(|v| lease_pid(v, true))
        .and_then(|pid| pids.iter().position(|p| *p == pid));
    let killed_pid = pids[killed];
    record.killed_leader = leader == Some(killed);
    if restart == Restart::Never {
        // The killed replica is gone for good: the proxy, as a load balancer whose health
        // check failed, sends to the survivors only.
        proxy.set_backends(
            replicas
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != killed)
                .map(|(_, r)| r.addr())
                .collect(),
        );
    }
    record.killed = format!(
        "r{killed}{}",
        if leader == Some(killed) {
            "(monitor leader)"
        } else {
            ""
        }
    );
    // The holder the store names: the lease the dead process left behind, else (once the fix
    // ran the lease is released, before verification) the watcher's last sighting before
    // the kill.
    let before_kill = holders_seen
        .iter()
        .filter(|(at, _)| *at <= killed_at)
        .map(|(_, pid)| *pid)
        .next_back();
    let holder = left_behind
        .as_deref()
        .and_then(|v| lease_pid(v, false))
        .or(before_kill);
    if let Some(holder) = holder.as_ref() {
        record.holder_seen = Some(*holder == killed_pid);
        if *holder != killed_pid {
            record.fail(format!(
                "killed r{killed} (pid {killed_pid}), but the store named pid {holder} ({}) as \
                 the execution lease's holder; pids {pids:?}",
                pids.iter()
                    .position(|p| p == holder)
                    .map_or("no replica".to_owned(), |i| format!("r{i}"))
            ));
        }
    }

    let seen_at_kill = events.before(killed_at);
    let rolling_at_kill = at_kill
        .execution
        .as_ref()
        .is_some_and(Execution::rolling_back);
    let count = |list: &[KillEvent], action: &str, signal: Option<&str>| {
        list.iter()
            .filter(|e| e.action == action && (signal.is_none() || e.signal.as_deref() == signal))
            .count()
    };
    record.landed = match point {
        KillPoint::AfterApproval => at_kill.status == Status::Approved,
        KillPoint::AfterIntent => at_kill.status == Status::Executing,
        KillPoint::DuringDockerCall => {
            at_kill.status == Status::Executing
                && count(&seen_at_kill, "kill", Some("15")) == 1
                && count(&seen_at_kill, "restart", None) == 0
        }
        KillPoint::AfterDockerCall => {
            at_kill.status == Status::Executing && count(&seen_at_kill, "start", None) == 1
        }
        KillPoint::DuringVerification => at_kill.status == Status::Verifying,
        KillPoint::DuringRollback => rolling_at_kill && count(&seen_at_kill, "stop", None) == 0,
    };
    record.at_kill = format!(
        "{}{}, docker before kill: {}",
        at_kill.status,
        if rolling_at_kill {
            ", rollback under way"
        } else {
            ""
        },
        describe(&seen_at_kill)
    );
    let under_way_at_kill =
        rolling_at_kill || (at_kill.status != Status::AwaitingApproval && !done(&at_kill));
    record.under_way = under_way_at_kill;

    // Down for a while, then started again, as a supervisor would (or never).
    let down_until = killed_at + restart.hands_off();
    if let Ok(left) = down_until.duration_since(SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    let before_restart = store
        .get_incident(&incident_id)
        .await
        .map_err(|e| e.to_string())?;
    record.while_down = before_restart.map(|i| WhileDown {
        status_changed: i.status != at_kill.status,
        version_changed: i.version != at_kill.version,
        steps: i
            .timeline
            .iter()
            .skip(at_kill.timeline.len())
            .map(|e| e.step.clone())
            .collect(),
    });
    let (deadline, within) = match restart {
        Restart::After(_) => {
            let restarted = Instant::now();
            let again = cluster.replica(&format!("r{killed}")).await;
            replicas[killed] = Arc::new(again);
            proxy.set_backends(replicas.iter().map(|r| r.addr()).collect());
            (restarted + TERMINAL_WITHIN, "after the restart")
        }
        Restart::Never => {
            let since_kill = SystemTime::now()
                .duration_since(killed_at)
                .unwrap_or_default();
            (
                Instant::now() + TAKEOVER_WITHIN.saturating_sub(since_kill),
                "of the kill, with no restart",
            )
        }
    };
    let within_for = match restart {
        Restart::After(_) => TERMINAL_WITHIN,
        Restart::Never => TAKEOVER_WITHIN,
    };

    // Everything must settle by itself.
    let mut last = Value::Null;
    let mut others_busy = Vec::new();
    loop {
        let (status, list) = api(
            &client,
            &base,
            &cluster.admin_key,
            reqwest::Method::GET,
            "/api/incidents?status=all",
        )
        .await;
        if status == 200 {
            let all = list.as_array().cloned().unwrap_or_default();
            if let Some(incident) = all.iter().find(|i| i["id"] == id.as_str()) {
                last = incident.clone();
            }
            others_busy = all
                .iter()
                .filter(|i| i["id"] != id.as_str())
                .filter(|i| existing.iter().any(|e| i["id"] == e.as_str()))
                .filter(|i| !terminal(i) && i["status"] != "awaiting_approval")
                .map(|i| format!("{} {} {}", i["id"], i["fingerprint"], i["status"]))
                .collect();
            if terminal(&last) && others_busy.is_empty() {
                record.to_terminal = SystemTime::now().duration_since(killed_at).ok();
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let last_step = last["timeline"]
        .as_array()
        .and_then(|t| t.last())
        .and_then(|e| e["step"].as_str())
        .unwrap_or("?");
    record.final_status = format!(
        "{}{}{}",
        last["status"].as_str().unwrap_or("?"),
        if !last["execution"]["rollback"].is_null() && last["execution"]["rolled_back_at"].is_null()
        {
            "+rolling_back"
        } else if !last["execution"]["rolled_back_at"].is_null() {
            "+rolled_back_at"
        } else {
            ""
        },
        if last["status"] == last_step {
            String::new()
        } else {
            format!("(last step {last_step})")
        }
    );
    if record.to_terminal.is_none() {
        record.lost = true;
        let logs: Vec<String> = replicas
            .iter()
            .map(|r| format!("--- {}:\n{}", r.name, r.log_tail(15)))
            .collect();
        record.fail(format!(
            "LOST: not terminal within {within_for:?} {within}: the incident is {}, others \
             under way: {others_busy:?}; timeline: {}; the replicas logged:\n{}",
            record.final_status,
            last["timeline"],
            logs.join("\n")
        ));
    }

    // Let a late Docker action show itself before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = events.all();
    let (fix_events, undo_events): (Vec<KillEvent>, Vec<KillEvent>) = match rollback_requested_at {
        Some(at) => all.into_iter().partition(|e| e.at < at),
        None => (all, Vec::new()),
    };
    let mut per_step = vec![];
    match point.fix() {
        Fix::Start => per_step.push(("start", count(&fix_events, "start", None))),
        Fix::Restart => {
            per_step.push(("restart", count(&fix_events, "restart", None)));
            per_step.push(("start", count(&fix_events, "start", None)));
            per_step.push(("SIGTERM", count(&fix_events, "kill", Some("15"))));
        }
    }
    if point == KillPoint::DuringRollback {
        per_step.push(("undo stop", count(&undo_events, "stop", None)));
        per_step.push(("undo SIGTERM", count(&undo_events, "kill", Some("15"))));
        per_step.push(("undo start", count(&undo_events, "start", None)));
    }
    record.docker = per_step
        .iter()
        .map(|(what, n)| format!("{what}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    for (what, n) in &per_step {
        if *n > 1 {
            record.doubled = true;
            record.fail(format!(
                "DOUBLED: {n} × {what} reached Docker for one step; events: {}",
                describe(&events.all())
            ));
        }
    }
    if point == KillPoint::DuringRollback && !last["execution"]["rolled_back_at"].is_null() {
        let stopped = count(&undo_events, "stop", None);
        if stopped != 1 {
            record.fail(format!(
                "recorded as rolled back, yet Docker stopped it {stopped} times"
            ));
        }
    }
    // An interrupted rollback is completed or reported (SPEC §12.1).
    if rolling_at_kill
        && last["execution"]["rolled_back_at"].is_null()
        && !last["timeline"]
            .as_array()
            .is_some_and(|t| t.iter().any(|e| e["step"] == "rollback_failed"))
    {
        record.fail("the interrupted rollback was neither completed nor reported");
    }

    // The audit names the interruption, after the kill, in a sound chain.
    let (status, audit) = api(
        &client,
        &base,
        &cluster.admin_key,
        reqwest::Method::GET,
        "/api/audit?limit=1000",
    )
    .await;
    if status != 200 {
        record.fail(format!("GET /api/audit answered {status}: {audit}"));
        return Ok(());
    }
    if audit["chain"]["verified"] != true {
        record.fail(format!(
            "the audit chain does not verify: {}",
            audit["chain"]
        ));
    }
    let entries_after_kill: Vec<&Value> = audit["entries"]
        .as_array()
        .map(|e| e.as_slice())
        .unwrap_or_default()
        .iter()
        .skip(audit_at_kill)
        .filter(|e| e["incident"] == id.as_str())
        .collect();
    let after_kill: Vec<String> = entries_after_kill
        .iter()
        .filter_map(|e| e["event"].as_str().map(str::to_owned))
        .collect();
    if restart == Restart::Never {
        // Only a survivor's takeover can resume the work: the audit says so, once.
        let resumed: Vec<&&Value> = entries_after_kill
            .iter()
            .filter(|e| e["event"] == "RemediationResumed")
            .collect();
        let lost: Vec<&&Value> = resumed
            .iter()
            .copied()
            .filter(|e| e["details"]["after"] == "replica lost")
            .collect();
        record.resumed_lost = lost.len();
        record.to_resumed = lost
            .first()
            .and_then(|e| e["at"].as_str())
            .and_then(|at| Timestamp::parse_rfc3339(at).ok())
            .and_then(|at| {
                let killed_ms = killed_at.duration_since(UNIX_EPOCH).ok()?.as_millis();
                let at_ms = u128::try_from(at.unix_millis()).ok()?;
                Some(Duration::from_millis(
                    u64::try_from(at_ms.saturating_sub(killed_ms)).ok()?,
                ))
            });
        if under_way_at_kill && lost.is_empty() {
            record.fail(format!(
                "killed at {} with work under way and never restarted, yet no \
                 RemediationResumed with after = \"replica lost\" after the kill; audited \
                 after the kill: {after_kill:?}; the survivors logged: {}",
                record.at_kill,
                takeover_log(&replicas, killed)
            ));
        }
        if !under_way_at_kill && !resumed.is_empty() {
            record.fail(format!(
                "nothing was under way at the kill ({}), yet {} RemediationResumed: {resumed:?}",
                record.at_kill,
                resumed.len()
            ));
        }
        if lost.len() > 1 {
            record.fail(format!(
                "the work was taken over {} times (each queues it again): {lost:?}; the \
                 survivors logged: {}",
                lost.len(),
                takeover_log(&replicas, killed)
            ));
        }
        if resumed.len() != lost.len() {
            record.fail(format!(
                "no replica restarted, yet a RemediationResumed names another cause: \
                 {resumed:?}"
            ));
        }
    }
    if under_way_at_kill
        && !after_kill
            .iter()
            .any(|e| INTERRUPTION_EVENTS.contains(&e.as_str()))
    {
        record.fail(format!(
            "killed at {} with work under way, yet no audit entry after the kill names the \
             interruption ({INTERRUPTION_EVENTS:?}); audited after the kill: {after_kill:?}",
            record.at_kill
        ));
    }
    let steps: Vec<&str> = last["timeline"]
        .as_array()
        .map(|t| t.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["step"].as_str())
        .collect();
    if at_kill.status == Status::Executing && !rolling_at_kill && !steps.contains(&"reconciled") {
        record.fail(format!(
            "killed while executing, yet no `reconciled` step: {steps:?}"
        ));
    }
    if rolling_at_kill && !steps.contains(&"rollback_resumed") {
        record.fail(format!(
            "killed during a rollback, yet no `rollback_resumed` step: {steps:?}"
        ));
    }
    drop(proxy);
    Ok(())
}

/// What the survivors logged about leading the monitor and taking work over (they log at
/// `warn`: a takeover, a lost monitor lease), each line under its replica's name.
fn takeover_log(replicas: &Replicas, killed: usize) -> String {
    let lines: Vec<String> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != killed)
        .flat_map(|(_, r)| {
            std::fs::read_to_string(&r.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains("lost replica")
                        || l.contains("monitor lease")
                        || l.contains("lost work")
                })
                .map(|l| format!("{}: {l}", r.name))
                .collect::<Vec<_>>()
        })
        .collect();
    if lines.is_empty() {
        "(nothing)".to_owned()
    } else {
        format!("[{}]", lines.join(" || "))
    }
}

/// The harness's own view of the run's store. On this busy machine the private Redis, which
/// `fsync`s every write, has once taken more than the store's 3 s to answer the harness's
/// first ping (a full run, 1 of 300): three tries, one second apart, before the run fails.
async fn harness_store(redis_url: &str, prefix: &str) -> Result<RedisStore, String> {
    let mut tries = 0;
    loop {
        tries += 1;
        match RedisStore::connect(redis_url, prefix).await {
            Ok(store) => return Ok(store),
            Err(e) if tries >= 3 => {
                return Err(format!(
                    "the private Redis does not answer the harness ({tries} tries): {e}"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// `kill -9` of a replica, now; when.
fn kill(replica: &Replica) -> SystemTime {
    let at = SystemTime::now();
    replica.kill();
    at
}

/// Reads the incident from the store every `every` until `until` holds or it has nothing left
/// to do, within [`STAGE_WITHIN`]; the last read.
async fn poll_store(
    store: &RedisStore,
    id: &IncidentId,
    every: Duration,
    until: impl Fn(&Incident) -> bool,
) -> Option<Incident> {
    let deadline = Instant::now() + STAGE_WITHIN;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(Some(incident)) = store.get_incident(id).await {
            if until(&incident) || done(&incident) {
                return Some(incident);
            }
            last = Some(incident);
        }
        tokio::time::sleep(every).await;
    }
    last
}

/// Whether a stored incident has nothing left to do (a terminal status, no rollback under
/// way).
fn done(incident: &Incident) -> bool {
    matches!(
        incident.status,
        Status::Resolved
            | Status::RolledBack
            | Status::Escalated
            | Status::Failed
            | Status::Rejected
    ) && !incident
        .execution
        .as_ref()
        .is_some_and(Execution::rolling_back)
}

/// Reads the execution lease's key every 5 ms and notes each holder's pid when first seen.
struct LeaseWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(SystemTime, i32)>>,
}

impl LeaseWatch {
    fn start(mut conn: redis::aio::MultiplexedConnection, key: String) -> LeaseWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut seen: Vec<(SystemTime, i32)> = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                let value: Option<String> = conn.get(&key).await.unwrap_or(None);
                let at = SystemTime::now();
                if let Some(pid) = value.as_deref().and_then(|v| lease_pid(v, false)) {
                    if seen.last().map(|(_, p)| *p) != Some(pid) {
                        seen.push((at, pid));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        });
        LeaseWatch { stop, task }
    }

    async fn stop(self) -> Vec<(SystemTime, i32)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// A container of the run, labelled for its cluster, whose shell ignores SIGTERM; removed
/// when dropped.
struct StubbornContainer {
    name: String,
}

impl StubbornContainer {
    /// A container in need of `fix`: killed (exited 137) for a start; running with a failing
    /// health check, which a restart repairs, for a restart.
    async fn broken(label: &str, fix: Fix) -> Result<StubbornContainer, String> {
        let name = format!(
            "sentinel-chaos-kill-{}",
            &IncidentId::generate().as_str()[4..]
        );
        let container = StubbornContainer { name };
        let name = container.name.as_str();
        let mut run = vec![
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            label,
            "--name",
            name,
        ];
        if fix == Fix::Restart {
            run.extend([
                "--health-cmd",
                "test ! -f /tmp/broken",
                "--health-interval",
                "1s",
                "--health-timeout",
                "1s",
                "--health-retries",
                "1",
            ]);
        }
        run.extend([IMAGE, "sh", "-c", STUBBORN]);
        docker(&run).await?;
        match fix {
            Fix::Start => docker(&["kill", name]).await?,
            Fix::Restart => docker(&["exec", name, "sh", "-c", ": > /tmp/broken"]).await?,
        };
        Ok(container)
    }
}

impl Drop for StubbornContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// One Docker event for the container.
#[derive(Debug, Clone)]
struct KillEvent {
    at: SystemTime,
    action: String,
    signal: Option<String>,
}

fn describe(events: &[KillEvent]) -> String {
    let shown: Vec<String> = events
        .iter()
        .filter(|e| !e.action.starts_with("exec_") && !e.action.starts_with("health_status"))
        .map(|e| match &e.signal {
            Some(signal) => format!("{}({signal})", e.action),
            None => e.action.clone(),
        })
        .collect();
    if shown.is_empty() {
        "none".to_owned()
    } else {
        shown.join(",")
    }
}

/// A kill to fire from the reader thread when a matching event arrives: at the replica the
/// proxy sent its latest connection to (the request that started the work), looked up then.
struct Trigger {
    action: &'static str,
    signal: Option<&'static str>,
    slot: Arc<Mutex<Option<SocketAddr>>>,
    replicas: Replicas,
}

/// `docker events` for one container, from the moment it was started, read by a thread that
/// can SIGKILL a replica the instant a given event arrives.
struct KillEvents {
    child: Child,
    events: Arc<Mutex<Vec<KillEvent>>>,
    trigger: Arc<Mutex<Option<Trigger>>>,
    fired: Arc<Mutex<Option<(usize, SystemTime)>>>,
}

impl KillEvents {
    fn watch(container: &str) -> KillEvents {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &format!("{since:.3}"),
                "--filter",
                "type=container",
                "--filter",
                &format!("container={container}"),
                "--format",
                "{{.TimeNano}}|{{.Action}}|{{.Actor.Attributes.signal}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events starts (install docker.io, run scripts/services.sh start)");
        let stdout = child.stdout.take().expect("a pipe");
        let events = Arc::new(Mutex::new(Vec::new()));
        let trigger: Arc<Mutex<Option<Trigger>>> = Arc::new(Mutex::new(None));
        let fired = Arc::new(Mutex::new(None));
        {
            let (events, trigger, fired) = (events.clone(), trigger.clone(), fired.clone());
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let mut parts = line.splitn(3, '|');
                    let (Some(nanos), Some(action), Some(signal)) =
                        (parts.next(), parts.next(), parts.next())
                    else {
                        continue;
                    };
                    let event = KillEvent {
                        at: UNIX_EPOCH + Duration::from_nanos(nanos.parse().unwrap_or(0)),
                        action: action.to_owned(),
                        signal: (signal != "<no value>" && !signal.is_empty())
                            .then(|| signal.to_owned()),
                    };
                    let mut armed = trigger.lock().unwrap();
                    let matches = armed.as_ref().is_some_and(|t| {
                        t.action == event.action
                            && (t.signal.is_none() || t.signal == event.signal.as_deref())
                    });
                    if matches {
                        if let Some(t) = armed.take() {
                            let target = index_of(&t.replicas, *t.slot.lock().unwrap());
                            if let Some(i) = target {
                                let at = kill(&t.replicas[i]);
                                *fired.lock().unwrap() = Some((i, at));
                            }
                        }
                    }
                    drop(armed);
                    events.lock().unwrap().push(event);
                }
            });
        }
        KillEvents {
            child,
            events,
            trigger,
            fired,
        }
    }

    /// SIGKILLs the replica the proxy last routed to when the next `action` (with `signal`,
    /// if given) arrives.
    fn arm(
        &self,
        action: &'static str,
        signal: Option<&'static str>,
        slot: &Arc<Mutex<Option<SocketAddr>>>,
        replicas: &Replicas,
    ) {
        *self.trigger.lock().unwrap() = Some(Trigger {
            action,
            signal,
            slot: Arc::clone(slot),
            replicas: replicas.clone(),
        });
    }

    /// Which replica the armed kill hit and when, waiting up to `within`.
    async fn wait_fired(&self, within: Duration) -> Option<(usize, SystemTime)> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(fired) = *self.fired.lock().unwrap() {
                return Some(fired);
            }
            if Instant::now() > deadline {
                *self.trigger.lock().unwrap() = None;
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn all(&self) -> Vec<KillEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The events Docker reported before `at`.
    fn before(&self, at: SystemTime) -> Vec<KillEvent> {
        self.all().into_iter().filter(|e| e.at < at).collect()
    }
}

impl Drop for KillEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
