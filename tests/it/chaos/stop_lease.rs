//! SIGSTOP of the monitor lease holder for twice the lease's time to live, then SIGCONT: a
//! holder that wakes up after another replica took the lease over acts on nothing with its
//! old token.
//!
//! Three replicas on a private Redis run the monitor (lease `monitor`, `lease_ttl = "3s"`,
//! a cycle a second). One labelled container on `--network none` has earned trust for
//! `container_start` (one fix approved by an operator that verified, then `POST /api/trust`),
//! so each time it goes down the monitor leader opens a `container_down` incident whose
//! low-risk start is `scheduled` for `veto_window = "2s"` and then runs on its own: the
//! leader has work in flight right after the kill (the cycle that sees the container down,
//! the analysis, the schedule's timer, the execution).
//!
//! Each trial: the harness reads the lease holder from the private Redis (`lease:monitor`,
//! `<token>|<holder>`, the holder naming its pid), kills the container (`docker kill`), and
//! freezes the holder with SIGSTOP at a point of the trial's kind: after a delay that walks
//! the first 2.5 s after the kill (mid-cycle, mid-analysis, …), as soon as the incident is
//! `scheduled` (the holder's timer pending), or around the moment the schedule is due (the
//! holder about to run the fix, or running it). It stays frozen 6 s (2 × the lease) while another replica takes
//! the lease with a larger token, then gets SIGCONT. The trial ends once the incident is
//! terminal and a second passed.
//!
//! Counted at the boundary, per trial: Docker's events for the container after the kill
//! (exactly one `start`, and no action but the harness's own kill), the incidents of its
//! fingerprint opened since the kill (exactly one, resolved), the lease keys in Redis (the
//! takeover's token is larger; the execution's `fencing_token`, as the incident shows it,
//! is the newest token of its execution lease when Docker reports the start: the harness
//! reads `lease:execute:<id>` every 10 ms, which also says which replica ran it), and
//! at the end the audit (one `IncidentOpened` and one `ActionExecuted` per incident, no
//! `ActionFailed`, a chain that verifies). An action whose token is older than its lease's
//! current token is a failure.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::AsyncCommands;
use serde_json::Value;

use super::cluster::{
    api, docker, spreading_client, terminal, ChaosContainer, ClusterConfig, DockerEvents,
    PrivateRedis, Replica,
};
use super::{report, size};

/// The harness's `lease_ttl`.
const LEASE_TTL: Duration = Duration::from_secs(3);
/// How long the holder stays frozen: twice the lease.
const FROZEN: Duration = Duration::from_secs(6);
/// The veto window of the trusted fix.
const VETO: Duration = Duration::from_secs(2);

/// Where in the trial the holder is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// After a delay walking the first 2.5 s after the kill.
    Delay(Duration),
    /// As soon as the incident shows `scheduled`.
    Scheduled,
    /// Around the moment the schedule is due: `offset_ms` from its `scheduled_for`, from
    /// 300 ms before (the holder's timer about to fire) to 250 ms after (the holder running
    /// the fix: approved, executing, or Docker starting the container).
    AroundDue(i64),
}

impl Kind {
    fn of_trial(n: usize) -> Kind {
        match n % 3 {
            0 => Kind::AroundDue(((n / 3) as i64 * 61 + 400) % 550 - 300),
            1 => Kind::Delay(Duration::from_millis(((n / 3) as u64 * 277 + 700) % 2_500)),
            _ => Kind::Scheduled,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Delay(_) => "delay",
            Kind::Scheduled => "scheduled",
            Kind::AroundDue(_) => "around_due",
        }
    }
}

/// What one trial saw.
#[derive(Debug, Default)]
struct Trial {
    /// The state of the trial's incident at the freeze, in words.
    at_freeze: String,
    /// The Docker start landed while the holder was frozen, after it woke, or before.
    start_when: &'static str,
    /// Who held the execution lease: the frozen holder (`frozen`) or another replica.
    executed_by: &'static str,
    /// Execution lease tokens of the incident larger than the action's, taken after it.
    later_leases: usize,
    /// The incident never ended: the container stays down, later trials cannot run.
    stuck: bool,
    /// The incident ended escalated or failed with no action: why, from its timeline.
    fail_closed: Option<String>,
    incident: Option<String>,
    failures: Vec<String>,
}

/// `(token, holder)` of lease `name`, when it is held.
async fn lease(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    name: &str,
) -> Option<(u64, String)> {
    let value: Option<String> = conn.get(format!("{prefix}lease:{name}")).await.ok()?;
    let (token, holder) = value?
        .split_once('|')
        .map(|(t, h)| (t.to_owned(), h.to_owned()))?;
    Some((token.parse().ok()?, holder))
}

/// Every `(token, holder)` the execution leases (`lease:execute:<incident>`) were seen with,
/// and when first, by incident: the private Redis is read every 10 ms while the trials run.
type ExecutionHolders = Arc<Mutex<BTreeMap<String, BTreeMap<(u64, String), SystemTime>>>>;

fn watch_execution_leases(
    mut conn: redis::aio::MultiplexedConnection,
    prefix: String,
) -> (ExecutionHolders, tokio::task::JoinHandle<()>) {
    let seen: ExecutionHolders = Arc::default();
    let sink = Arc::clone(&seen);
    let task = tokio::spawn(async move {
        let pattern = format!("{prefix}lease:execute:*");
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            for key in keys {
                let value: Option<String> = conn.get(&key).await.unwrap_or(None);
                let Some((token, holder)) = value.as_deref().and_then(|v| v.split_once('|')) else {
                    continue;
                };
                let (Ok(token), Some(id)) = (token.parse(), key.rsplit(':').next()) else {
                    continue;
                };
                sink.lock()
                    .unwrap()
                    .entry(id.to_owned())
                    .or_default()
                    .entry((token, holder.to_owned()))
                    .or_insert_with(SystemTime::now);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (seen, task)
}

/// The replica the monitor lease's holder names (`<host>-<pid>-<id>`).
fn holder_of<'a>(replicas: &'a [Replica], holder: &str) -> Option<&'a Replica> {
    replicas
        .iter()
        .find(|r| holder.contains(&format!("-{}-", r.pid())))
}

/// Whether an execution lease's holder (`<pid>-<id>`) is the process `pid`.
fn executed_by(holder: &str, pid: i32) -> bool {
    holder.starts_with(&format!("{pid}-"))
}

/// The incidents of `fingerprint`, as `base` lists them.
async fn incidents_of(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    fingerprint: &str,
) -> Option<Vec<Value>> {
    let (status, list) = api(
        client,
        base,
        key,
        reqwest::Method::GET,
        "/api/incidents?status=all",
    )
    .await;
    (status == 200).then(|| {
        list.as_array()
            .map(|all| {
                all.iter()
                    .filter(|i| i["fingerprint"] == fingerprint)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_sigstop_of_the_lease_holder_past_its_lease_acts_on_no_stale_token() {
    let trials = size(2, 100);
    let redis = PrivateRedis::start();
    let mut conn = redis.connection().await;
    let cluster = ClusterConfig::new(
        &redis.url(),
        None,
        true,
        // Analysis does not read the container's recent changes: its creation by the
        // harness would make every fix at least medium, trust or not.
        "[analyzer]\nchange_window = \"0s\"\n",
    );
    // The trusted fix runs after a short veto window; one verified approval earns trust; the
    // automatic budget does not stop a hundred trials on one container.
    let config = std::fs::read_to_string(&cluster.config).unwrap();
    let config = config.replacen(
        "[actions]\nenabled = true\n",
        &format!(
            "[actions]\nenabled = true\nveto_window = \"{}s\"\ntrust_after = 1\n\
             auto_budget_per_hour = 10000\n",
            VETO.as_secs()
        ),
        1,
    );
    assert!(config.contains("trust_after = 1"), "{config}");
    std::fs::write(&cluster.config, config).unwrap();
    let replicas = cluster.replicas(3).await;
    let client = spreading_client();

    let name = format!(
        "sentinel-chaos-stop-{}",
        cluster.label.rsplit('=').next().unwrap_or("x")
    );
    let fingerprint = format!("container_down:{name}");
    let events = DockerEvents::watch(&cluster.label);
    let container = ChaosContainer::run(&cluster.label, &name, "while true; do sleep 1; done")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Trust, earned: one start approved by an operator that verified.
    docker(&["kill", &name])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let any = replicas[0].base();
    let waiting = wait_for(&client, &any, &cluster.admin_key, &fingerprint, &[], |i| {
        i["status"] == "awaiting_approval"
    })
    .await
    .unwrap_or_else(|| panic!("no {fingerprint} incident awaiting approval within 30 s"));
    let first = waiting["id"].as_str().unwrap_or_default().to_owned();
    let (status, body) = api(
        &client,
        &any,
        &cluster.operator_key,
        reqwest::Method::POST,
        &format!("/api/incidents/{first}/approve"),
    )
    .await;
    assert_eq!(status, 200, "approving {first}: {body}");
    let resolved = wait_for(&client, &any, &cluster.admin_key, &fingerprint, &[], |i| {
        i["id"] == first.as_str() && terminal(i)
    })
    .await
    .unwrap_or_else(|| panic!("{first} did not end within 30 s"));
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    let grant = client
        .post(format!("{any}/api/trust"))
        .header("x-api-key", &cluster.admin_key)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"signal":"container_down","action":"container_start","target":"{name}"}}"#
        ))
        .send()
        .await
        .expect("POST /api/trust answers");
    let granted = grant.status().as_u16();
    assert!(
        (200..300).contains(&granted),
        "POST /api/trust answered {granted}: {}",
        grant.text().await.unwrap_or_default()
    );

    let (holders, poller) =
        watch_execution_leases(redis.connection().await, cluster.prefix.clone());
    let started = Instant::now();
    let mut seen_ids: Vec<String> = vec![first.clone()];
    let mut records = Vec::new();
    let mut takeovers = Vec::new();
    for n in 0..trials {
        let kind = Kind::of_trial(n);
        let mut trial = Trial::default();
        run_trial(
            &mut trial,
            kind,
            &replicas,
            &cluster,
            &client,
            &mut conn,
            &events,
            &name,
            &fingerprint,
            &mut seen_ids,
            &mut takeovers,
            &holders,
        )
        .await;
        println!(
            "stop_lease trial {n}: kind={} at_freeze=[{}] start={} by={} later_leases={} \
             incident={}{} failures={}{}",
            kind.name(),
            trial.at_freeze,
            trial.start_when,
            trial.executed_by,
            trial.later_leases,
            trial.incident.as_deref().unwrap_or("-"),
            trial
                .fail_closed
                .as_ref()
                .map_or(String::new(), |why| format!(" fail_closed=[{why}]")),
            trial.failures.len(),
            if trial.failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", trial.failures.join("; "))
            }
        );
        let stuck = trial.stuck;
        records.push((kind, trial));
        if stuck {
            break;
        }
    }
    let took = started.elapsed();
    poller.abort();

    // The audit, at the end: one opening and one execution per incident, nothing failed.
    let mut failures: Vec<String> = records
        .iter()
        .enumerate()
        .flat_map(|(n, (_, t))| t.failures.iter().map(move |f| format!("trial {n}: {f}")))
        .collect();
    let entries = audit_entries(&client, &replicas[0].base(), &cluster.admin_key).await;
    let mut per_incident: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for entry in &entries.0 {
        if let Some(id) = entry["incident"].as_str() {
            *per_incident
                .entry(id.to_owned())
                .or_default()
                .entry(entry["event"].as_str().unwrap_or("").to_owned())
                .or_insert(0) += 1;
        }
    }
    let mut audited_executions = 0;
    for (n, (_, trial)) in records.iter().enumerate() {
        let Some(id) = &trial.incident else { continue };
        let events = per_incident.get(id).cloned().unwrap_or_default();
        let count = |event: &str| events.get(event).copied().unwrap_or(0);
        audited_executions += count("ActionExecuted");
        let executions = usize::from(trial.fail_closed.is_none());
        if count("IncidentOpened") != 1
            || count("ActionExecuted") != executions
            || count("ActionFailed") != 0
        {
            failures.push(format!(
                "trial {n}: {id} audited {events:?}, expected one IncidentOpened, \
                 {executions} ActionExecuted and no ActionFailed"
            ));
        }
    }
    if !entries.1 {
        failures.push("the audit chain does not verify".to_owned());
    }
    for replica in &replicas {
        if !replica.alive() {
            failures.push(format!(
                "replica {} exited: {}",
                replica.name,
                replica.log_tail(20)
            ));
        }
    }

    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut start_when: BTreeMap<String, usize> = BTreeMap::new();
    for (kind, trial) in &records {
        let class = trial.at_freeze.split(',').next().unwrap_or("").to_owned();
        *classes
            .entry(format!("{}:{class}", kind.name()))
            .or_insert(0) += 1;
        *start_when
            .entry(format!("{}_by_{}", trial.start_when, trial.executed_by))
            .or_insert(0) += 1;
    }
    let stale = records
        .iter()
        .filter(|(_, t)| t.failures.iter().any(|f| f.contains("stale")))
        .count();
    let fail_closed = records
        .iter()
        .filter(|(_, t)| t.fail_closed.is_some())
        .count();
    let later_leases: usize = records.iter().map(|(_, t)| t.later_leases).sum();
    let max_takeover = takeovers.iter().max().copied().unwrap_or_default();
    report(
        "sigstop_past_lease",
        &format!(
            "trials={trials} run={} frozen={}s lease_ttl={}s replicas=3 stale_token_actions={stale} \
             failed_trials={} fail_closed={fail_closed} audited_executions={audited_executions} \
             later_execution_leases={later_leases} takeovers={} max_takeover={:.1}s at_freeze={classes:?} start={start_when:?} \
             took={:.0}s",
            records.len(),
            FROZEN.as_secs(),
            LEASE_TTL.as_secs(),
            records
                .iter()
                .filter(|(_, t)| !t.failures.is_empty())
                .count(),
            takeovers.len(),
            max_takeover.as_secs_f64(),
            took.as_secs_f64()
        ),
        &failures,
    );
    drop(container);
}

/// Polls `base` until an incident of `fingerprint` not in `old` satisfies `done` (30 s).
async fn wait_for(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    fingerprint: &str,
    old: &[String],
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(list) = incidents_of(client, base, key, fingerprint).await {
            let found = list
                .into_iter()
                .find(|i| !old.iter().any(|o| i["id"] == o.as_str()) && done(i));
            if found.is_some() {
                return found;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// Every audit entry, paged, and whether the chain verifies.
async fn audit_entries(client: &reqwest::Client, base: &str, key: &str) -> (Vec<Value>, bool) {
    let mut all = Vec::new();
    let mut after = 0;
    let mut verified = true;
    loop {
        let (status, page) = api(
            client,
            base,
            key,
            reqwest::Method::GET,
            &format!("/api/audit?after={after}&limit=200"),
        )
        .await;
        assert_eq!(status, 200, "GET /api/audit: {page}");
        verified &= page["chain"]["verified"] == true;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        let Some(last) = entries.iter().filter_map(|e| e["seq"].as_u64()).max() else {
            break;
        };
        all.extend(entries);
        if last <= after {
            break;
        }
        after = last;
    }
    (all, verified)
}

#[allow(clippy::too_many_arguments)]
async fn run_trial(
    trial: &mut Trial,
    kind: Kind,
    replicas: &[Replica],
    cluster: &ClusterConfig,
    client: &reqwest::Client,
    conn: &mut redis::aio::MultiplexedConnection,
    events: &DockerEvents,
    name: &str,
    fingerprint: &str,
    seen_ids: &mut Vec<String>,
    takeovers: &mut Vec<Duration>,
    holders: &ExecutionHolders,
) {
    let prefix = &cluster.prefix;
    let key = &cluster.admin_key;
    let Some((token_before, holder)) = lease(conn, prefix, "monitor").await else {
        trial
            .failures
            .push("nobody holds the monitor lease".to_owned());
        return;
    };
    let Some(frozen) = holder_of(replicas, &holder) else {
        trial.failures.push(format!(
            "the lease holder {holder:?} is none of the replicas"
        ));
        return;
    };
    // Where the harness looks while the holder is frozen: another replica.
    let other = replicas
        .iter()
        .find(|r| r.pid() != frozen.pid())
        .expect("three replicas");
    let watch = other.base();

    let killed_at = SystemTime::now();
    if let Err(e) = docker(&["kill", name]).await {
        trial.failures.push(e);
        return;
    }
    match kind {
        Kind::Delay(delay) => tokio::time::sleep(delay).await,
        Kind::Scheduled | Kind::AroundDue(_) => {
            let scheduled = wait_for(client, &watch, key, fingerprint, seen_ids, |i| {
                i["status"] != "detected" && i["status"] != "analyzing"
            })
            .await;
            let due = scheduled.as_ref().and_then(|i| {
                sentinel::domain::Timestamp::parse_rfc3339(i["scheduled_for"].as_str()?).ok()
            });
            if let (Some(due), Kind::AroundDue(offset)) = (due, kind) {
                let at = due.unix_millis() + offset;
                let now = sentinel::domain::Timestamp::now().unix_millis();
                let wait = u64::try_from(at - now).unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
    }
    frozen.stop();
    let frozen_at = Instant::now();
    let frozen_wall = SystemTime::now();

    // The state at the freeze, read from another replica.
    let new = incidents_of(client, &watch, key, fingerprint)
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|i| !seen_ids.iter().any(|o| i["id"] == o.as_str()));
    let started_before = events
        .all()
        .iter()
        .any(|e| e.name == name && e.action == "start" && e.at >= killed_at && e.at <= frozen_wall);
    trial.at_freeze = match &new {
        None => "no_incident".to_owned(),
        Some(i) => format!(
            "{}{}",
            i["status"].as_str().unwrap_or("?"),
            if started_before { ",started" } else { "" }
        ),
    };

    // Frozen past the lease: another replica takes it over with a larger token.
    let mut takeover = None;
    while frozen_at.elapsed() < FROZEN {
        if takeover.is_none() {
            if let Some((token, now_holder)) = lease(conn, prefix, "monitor").await {
                if token > token_before && now_holder != holder {
                    takeover = Some((token, frozen_at.elapsed()));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frozen.cont();
    let thawed_wall = SystemTime::now();
    let token_during = match takeover {
        Some((token, after)) => {
            takeovers.push(after);
            token
        }
        None => {
            trial.failures.push(format!(
                "no other replica took the monitor lease (token {token_before}) while its \
                 holder was frozen for {FROZEN:?}"
            ));
            token_before
        }
    };

    // The trial's incident ends; a second more for anything the woken holder still does.
    let done = wait_for(client, &watch, key, fingerprint, seen_ids, terminal).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ended_wall = SystemTime::now();

    let mine: Vec<Value> = incidents_of(client, &watch, key, fingerprint)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !seen_ids.iter().any(|o| i["id"] == o.as_str()))
        .collect();
    for i in &mine {
        seen_ids.push(i["id"].as_str().unwrap_or_default().to_owned());
    }
    if mine.len() != 1 {
        trial.failures.push(format!(
            "{} incidents of {fingerprint} opened since the kill, expected 1: {:?}",
            mine.len(),
            mine.iter()
                .map(|i| format!("{} {}", i["id"], i["status"]))
                .collect::<Vec<_>>()
        ));
    }
    let incident = match done {
        Some(done) => done,
        None => {
            let timelines: Vec<String> = mine
                .iter()
                .map(|i| {
                    format!(
                        "{} {} execution={} timeline={}",
                        i["id"], i["status"], i["execution"], i["timeline"]
                    )
                })
                .collect();
            let docker: Vec<String> = events
                .all()
                .iter()
                .filter(|e| e.name == name && e.at >= killed_at)
                .map(|e| e.action.clone())
                .collect();
            trial.failures.push(format!(
                "the incident did not end within 30 s of the thaw: {timelines:?}; docker since \
                 the kill {docker:?}; execution leases seen {:?}; the frozen replica {}'s log:\n{}",
                holders.lock().unwrap(),
                frozen.name,
                frozen.log_tail(30)
            ));
            trial.stuck = true;
            return;
        }
    };
    let id = incident["id"].as_str().unwrap_or_default().to_owned();
    trial.incident = Some(id.clone());
    // Failing closed is allowed: an incident that ended escalated (or failed) without any
    // Docker action, a person told, is not an action on a stale token. Why, in its words.
    let closed = matches!(incident["status"].as_str(), Some("escalated" | "failed"))
        && incident["execution"]["after"].is_null();
    if closed {
        trial.fail_closed = Some(
            incident["timeline"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .rev()
                        .take(3)
                        .map(|e| format!("{}: {}", e["step"], e["message"]))
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
                .unwrap_or_default(),
        );
    } else if incident["status"] != "resolved" {
        trial.failures.push(format!(
            "{id} ended {}, expected resolved",
            incident["status"]
        ));
    }

    // Docker, between the kill and now.
    let actions: Vec<_> = events
        .actions()
        .into_iter()
        .filter(|e| e.name == name && e.at >= killed_at && e.at <= ended_wall)
        .collect();
    let starts: Vec<SystemTime> = actions
        .iter()
        .filter(|e| e.action == "start")
        .map(|e| e.at)
        .collect();
    let kills = actions.iter().filter(|e| e.action == "kill").count();
    let others: Vec<&str> = actions
        .iter()
        .filter(|e| !matches!(e.action.as_str(), "start" | "kill" | "die"))
        .map(|e| e.action.as_str())
        .collect();
    let expected_starts = usize::from(trial.fail_closed.is_none());
    if starts.len() != expected_starts || kills != 1 || !others.is_empty() {
        trial.failures.push(format!(
            "Docker after the kill: {} start(s), {kills} kill(s) (the harness's is 1), \
             others {others:?}; expected {expected_starts} start(s)",
            starts.len()
        ));
    }
    if trial.fail_closed.is_some() {
        // Up again for the next trial, by the harness, outside this trial's count.
        if let Err(e) = docker(&["start", name]).await {
            trial.failures.push(e);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        return;
    }
    trial.start_when = match starts.first() {
        None => "none",
        Some(at) if *at < frozen_wall => "before_freeze",
        Some(at) if *at < thawed_wall => "while_frozen",
        Some(_) => "after_thaw",
    };

    // The action's token, against its execution lease as the harness saw it: no larger
    // token of that lease may have been issued before Docker reported the start.
    let token = incident["execution"]["fencing_token"].as_u64();
    let issued: Option<u64> = conn
        .get(format!("{prefix}lease-token:execute:{id}"))
        .await
        .ok()
        .flatten();
    let seen = holders
        .lock()
        .unwrap()
        .get(&id)
        .cloned()
        .unwrap_or_default();
    trial.later_leases = seen.keys().filter(|(t, _)| Some(*t) > token).count();
    trial.executed_by = match token.and_then(|t| seen.keys().find(|(s, _)| *s == t)) {
        None => "unseen",
        Some((_, h)) if executed_by(h, frozen.pid()) => "frozen",
        Some(_) => "other",
    };
    match (token, starts.first()) {
        (None, _) => trial.failures.push(format!(
            "{id}'s execution carries no fencing token: {}",
            incident["execution"]
        )),
        (Some(token), Some(start)) => {
            let newer: Vec<_> = seen
                .iter()
                .filter(|((t, _), first_seen)| *t > token && *first_seen < start)
                .collect();
            if !newer.is_empty() || issued.is_none_or(|issued| issued < token) {
                trial.failures.push(format!(
                    "stale fencing token: {id} started with token {token} while its execution \
                     lease had newer ones {newer:?} (issued up to {issued:?})"
                ));
            }
        }
        (Some(_), None) => {}
    }
    // The monitor lease never went back to an older token.
    match lease(conn, prefix, "monitor").await {
        Some((token, _)) if token >= token_during => {}
        other => trial.failures.push(format!(
            "the monitor lease is {other:?} after the trial, older than the takeover's token \
             {token_during}"
        )),
    }
}
