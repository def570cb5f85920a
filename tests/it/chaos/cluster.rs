//! The harness's moving parts: a private `redis-server` it may kill or freeze, `sentinel
//! serve` replicas on it (the binary in `SENTINEL_BIN`, else the one cargo built), a
//! round-robin TCP proxy in front of them, and `docker events` for the scenario's containers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::helpers::{free_port, unique_prefix};
use crate::slack_inbound::sign;

/// The signing secret every replica checks Slack's requests against.
pub const SECRET: &str = "chaos-signing-secret-0123456789abcdef";
/// The Slack app the replicas belong to.
pub const APP_ID: &str = "A0CHAOS";
/// A Slack user with the operator role, and one with admin.
pub const OPERATOR: &str = "UCHAOSOP1";
pub const ADMIN: &str = "UCHAOSADM1";
/// The channel cards go to.
pub const CHANNEL: &str = "CCHAOS";
/// How long a replica may take to answer `/readyz` with 200.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// The binary under test: `SENTINEL_BIN` (a release build, say), else the dev build.
pub fn sentinel_bin() -> PathBuf {
    match std::env::var_os("SENTINEL_BIN") {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "SENTINEL_BIN={} is not a file",
                path.display()
            );
            path
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_sentinel")),
    }
}

/// A `redis-server` of the scenario's own, on a free loopback port, so that killing or
/// freezing it disturbs no other test. Killed when dropped.
pub struct PrivateRedis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    durable: bool,
}

impl PrivateRedis {
    /// Without persistence: a kill loses everything (use [`PrivateRedis::durable`] to keep it).
    pub fn start() -> PrivateRedis {
        PrivateRedis::launch(false)
    }

    /// With an append-only file synced on every write: a `kill -9` loses nothing.
    pub fn durable() -> PrivateRedis {
        PrivateRedis::launch(true)
    }

    fn launch(durable: bool) -> PrivateRedis {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut redis = PrivateRedis {
            child: None,
            port: free_port(),
            dir,
            durable,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            &self.dir.path().display().to_string(),
        ]);
        if self.durable {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "redis-server does not start ({e}): the chaos harness runs a private one; \
                     install the Debian package redis-server"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the private redis-server on port {} did not listen within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (after [`PrivateRedis::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the port still accepts connections, nothing answers.
    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("a redis URL")
            .get_multiplexed_async_connection()
            .await
            .expect("the private redis answers")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id() as i32, "CONT");
        }
        self.kill();
    }
}

/// Sends `kill -<sig> pid`.
pub fn signal(pid: i32, sig: &str) {
    if pid > 0 {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}

/// What the replicas of one scenario share: the directory (config, sandbox, logs), the
/// Redis they run on, the API keys and the Slack double's URL, if any.
pub struct ClusterConfig {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub prefix: String,
    pub admin_key: String,
    pub operator_key: String,
    pub redis_url: String,
    pub slack_api_url: Option<String>,
    /// The label every container of this scenario carries; the replicas watch only those.
    pub label: String,
}

impl ClusterConfig {
    /// `extra` is TOML appended to the common configuration (its own tables only).
    pub fn new(redis_url: &str, slack_api_url: Option<String>, monitor: bool, extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("sandbox")).unwrap();
        let (admin_key, admin_sha) = sentinel::web::auth::new_key();
        let (operator_key, operator_sha) = sentinel::web::auth::new_key();
        let prefix = unique_prefix();
        let label = format!(
            "sentinel-chaos={}",
            prefix
                .trim_start_matches("sentinel-test:")
                .trim_end_matches(':')
        );
        let config = dir.path().join("sentinel.toml");
        let toml = format!(
            "interval = \"1s\"\nsettle = \"2s\"\n\n\
             [[api_keys]]\nname = \"chaos-admin\"\nrole = \"admin\"\nsha256 = \"{admin_sha}\"\n\n\
             [[api_keys]]\nname = \"chaos-operator\"\nrole = \"operator\"\nsha256 = \"{operator_sha}\"\n\n\
             [thresholds]\n\
             host_memory = {{ warning = 100, critical = 100 }}\n\
             host_cpu = {{ warning = 100, critical = 100 }}\n\
             disk = {{ critical = 100 }}\n\
             network_latency = {{ warning = 100000000, critical = 100000000 }}\n\
             sandbox_size_mb = {{ warning = 100000000 }}\n\
             container_memory = {{ warning = 100, critical = 100 }}\n\n\
             [monitor]\nenabled = {monitor}\nfor = 1\nlease_ttl = \"3s\"\n\
             container_include = [\"label:{label}\"]\n\n\
             [actions]\nenabled = true\n\n\
             [store]\nredis_prefix = \"{prefix}\"\n\n\
             [slack]\napp_id = \"{APP_ID}\"\nchannel = \"{CHANNEL}\"\n\n\
             [rbac]\ndefault_role = \"none\"\noperators = [\"{OPERATOR}\"]\nadmins = [\"{ADMIN}\"]\n\n\
             {extra}\n"
        );
        std::fs::write(&config, toml).expect("the configuration file is written");
        ClusterConfig {
            dir,
            config,
            prefix,
            admin_key,
            operator_key,
            redis_url: redis_url.to_owned(),
            slack_api_url,
            label,
        }
    }

    pub fn sandbox(&self) -> PathBuf {
        self.dir.path().join("sandbox")
    }

    /// Starts one replica and waits until it is ready.
    pub async fn replica(&self, name: &str) -> Replica {
        for _ in 0..3 {
            let mut replica = self.spawn(name);
            match replica.wait_ready().await {
                Ok(()) => return replica,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!(
                    "replica {name} did not become ready within {READY_WITHIN:?}; its log:\n{log}"
                ),
            }
        }
        panic!("replica {name} found no free port in three tries");
    }

    /// Starts one replica without waiting.
    pub fn spawn(&self, name: &str) -> Replica {
        let port = free_port();
        let log = self.dir.path().join(format!("{name}-{port}.log"));
        let file = std::fs::File::create(&log).expect("a log file");
        let mut command = Command::new(sentinel_bin());
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "SENTINEL_DATA_DIR",
                self.dir.path().join(format!("data-{name}")),
            )
            .env("SENTINEL_SANDBOX_DIR", self.sandbox())
            .env("SENTINEL_CONFIG", &self.config)
            .env("REDIS_URL", &self.redis_url)
            .env("SLACK_SIGNING_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        if let Some(url) = &self.slack_api_url {
            command
                .env("SLACK_API_URL", url)
                .env("SLACK_BOT_TOKEN", crate::slack_double::SlackDouble::TOKEN);
        }
        let child = command.spawn().expect("the sentinel binary starts");
        Replica {
            name: name.to_owned(),
            child: Arc::new(Mutex::new(Some(child))),
            port,
            log,
        }
    }

    /// `n` replicas, started side by side.
    pub async fn replicas(&self, n: usize) -> Vec<Replica> {
        let starts = (0..n).map(|i| self.replica_owned(format!("r{i}")));
        futures::future::join_all(starts).await
    }

    async fn replica_owned(&self, name: String) -> Replica {
        self.replica(&name).await
    }
}

/// A `sentinel serve` process; SIGKILLed and reaped when dropped.
pub struct Replica {
    pub name: String,
    child: Arc<Mutex<Option<Child>>>,
    pub port: u16,
    pub log: PathBuf,
}

impl Replica {
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    pub fn pid(&self) -> i32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |c| c.id() as i32)
    }

    pub fn alive(&self) -> bool {
        self.child
            .lock()
            .unwrap()
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if !self.alive() {
                return Err(format!("(exited)\n{}", read_log(&self.log)));
            }
            let reply = client
                .get(format!("{}/readyz", self.base()))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if reply.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(read_log(&self.log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `kill -9`, and reaps the process.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn stop(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn cont(&self) {
        signal(self.pid(), "CONT");
    }

    /// SIGTERM, then waits up to `within` for a graceful exit, then SIGKILL.
    pub async fn terminate(&self, within: Duration) {
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + within;
        while self.alive() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = read_log(&self.log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.cont();
        self.kill();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

/// A round-robin TCP proxy on a loopback port: each new connection goes to the next
/// backend that accepts it. Backends can be swapped while it runs (rolling restarts).
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    backends: Arc<Mutex<Vec<std::net::SocketAddr>>>,
    /// The backend the latest connection was sent to (see [`Proxy::last_backend`]).
    last: Arc<Mutex<Option<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(backends: Vec<std::net::SocketAddr>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().unwrap();
        let backends = Arc::new(Mutex::new(backends));
        let next = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let shared = Arc::clone(&backends);
        let routed = Arc::clone(&last);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let (backends, next) = (Arc::clone(&shared), Arc::clone(&next));
                let routed = Arc::clone(&routed);
                tokio::spawn(async move {
                    let list = backends.lock().unwrap().clone();
                    for _ in 0..list.len() {
                        let i = next.fetch_add(1, Ordering::Relaxed) % list.len();
                        let connect = tokio::net::TcpStream::connect(list[i]);
                        let Ok(Ok(mut outbound)) =
                            tokio::time::timeout(Duration::from_secs(1), connect).await
                        else {
                            continue;
                        };
                        *routed.lock().unwrap() = Some(list[i]);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        return;
                    }
                });
            }
        });
        Proxy {
            addr,
            backends,
            last,
            task,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_backends(&self, backends: Vec<std::net::SocketAddr>) {
        *self.backends.lock().unwrap() = backends;
    }

    /// The backend the latest connection went to, set before the backend reads a byte of
    /// it: with one request in flight, the replica that serves it.
    pub fn last_backend(&self) -> Option<std::net::SocketAddr> {
        *self.last.lock().unwrap()
    }

    /// The same, shared, for a thread that must read it the instant something happens.
    pub fn last_backend_slot(&self) -> Arc<Mutex<Option<std::net::SocketAddr>>> {
        Arc::clone(&self.last)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A client that opens a new connection per request, so the proxy spreads them.
pub fn spreading_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Sends a request with an API key; the status and JSON body (status 0: no answer).
pub async fn api(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> (u16, Value) {
    let reply = client
        .request(method, format!("{base}{path}"))
        .header("x-api-key", key)
        .send()
        .await;
    match reply {
        Ok(reply) => {
            let status = reply.status().as_u16();
            let text = reply.text().await.unwrap_or_default();
            (
                status,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        }
        Err(e) => (0, Value::String(e.to_string())),
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// POSTs a Slack request signed with `SECRET` at `timestamp`; the status and how long the
/// answer took.
pub async fn slack_post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    content_type: &str,
    body: &str,
    timestamp: i64,
    extra: &[(&str, String)],
) -> (u16, Duration) {
    let signature = sign(SECRET, &timestamp.to_string(), body.as_bytes());
    let mut request = client
        .post(format!("{base}{path}"))
        .header("content-type", content_type)
        .header("x-slack-request-timestamp", timestamp.to_string())
        .header("x-slack-signature", signature)
        .body(body.to_owned());
    for (name, value) in extra {
        request = request.header(*name, value);
    }
    let started = Instant::now();
    let status = match request.send().await {
        Ok(reply) => reply.status().as_u16(),
        Err(_) => 0,
    };
    (status, started.elapsed())
}

/// The `q`-quantile of some durations (nearest rank), `ZERO` when there are none.
pub fn quantile(durations: &mut [Duration], q: f64) -> Duration {
    if durations.is_empty() {
        return Duration::ZERO;
    }
    durations.sort();
    let rank = ((q * durations.len() as f64).ceil() as usize).clamp(1, durations.len());
    durations[rank - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{:.0}ms", d.as_secs_f64() * 1000.0)
}

/// One Docker event of a watched container.
#[derive(Debug, Clone)]
pub struct DockerEvent {
    pub at: SystemTime,
    pub name: String,
    pub action: String,
}

/// `docker events` for containers carrying `label`, from now, read by a thread.
pub struct DockerEvents {
    child: Child,
    events: Arc<Mutex<Vec<DockerEvent>>>,
}

impl DockerEvents {
    pub fn watch(label: &str) -> DockerEvents {
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
                &format!("label={label}"),
                "--format",
                "{{.TimeNano}}|{{.Action}}|{{.Actor.Attributes.name}}",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events starts (install docker.io, run scripts/services.sh start)");
        let stdout = child.stdout.take().expect("a pipe");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut parts = line.splitn(3, '|');
                let (Some(nanos), Some(action), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                sink.lock().unwrap().push(DockerEvent {
                    at: UNIX_EPOCH + Duration::from_nanos(nanos.parse().unwrap_or(0)),
                    name: name.to_owned(),
                    action: action.to_owned(),
                });
            }
        });
        DockerEvents { child, events }
    }

    pub fn all(&self) -> Vec<DockerEvent> {
        self.events.lock().unwrap().clone()
    }

    /// How many `action` events (`start`, `restart`, `stop`, `kill`, `die`, …) Docker reported.
    pub fn count(&self, action: &str) -> usize {
        self.all().iter().filter(|e| e.action == action).count()
    }

    /// The actions Sentinel could have made: everything but exec and health noise.
    pub fn actions(&self) -> Vec<DockerEvent> {
        self.all()
            .into_iter()
            .filter(|e| !e.action.starts_with("exec_") && !e.action.starts_with("health_status"))
            .collect()
    }
}

impl Drop for DockerEvents {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the docker CLI without blocking the runtime.
pub async fn docker(args: &[&str]) -> Result<String, String> {
    let output = tokio::process::Command::new("docker")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("the docker CLI does not run ({e}); install docker.io"))?;
    if !output.status.success() {
        return Err(format!(
            "docker {args:?} failed: {} — the chaos harness needs a running Docker daemon and \
             the image {}: run `scripts/services.sh start`",
            String::from_utf8_lossy(&output.stderr).trim(),
            crate::containers::IMAGE
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A container of the scenario (its label, `--network none`), removed when dropped.
pub struct ChaosContainer {
    pub name: String,
}

impl ChaosContainer {
    /// Runs `sh -c script` in the test image, labelled for the scenario.
    pub async fn run(label: &str, name: &str, script: &str) -> Result<ChaosContainer, String> {
        let container = ChaosContainer {
            name: name.to_owned(),
        };
        docker(&[
            "run",
            "-d",
            "--network",
            "none",
            "--label",
            label,
            "--name",
            name,
            crate::containers::IMAGE,
            "sh",
            "-c",
            script,
        ])
        .await?;
        Ok(container)
    }
}

impl Drop for ChaosContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

/// Polls `GET /api/incidents?status=all` at `base` until one with `fingerprint` satisfies
/// `done`.
pub async fn wait_for_incident(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    fingerprint: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<Value> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let (status, list) = api(
            client,
            base,
            key,
            reqwest::Method::GET,
            "/api/incidents?status=all",
        )
        .await;
        if status == 200 {
            let found = list.as_array().and_then(|all| {
                all.iter()
                    .find(|i| i["fingerprint"] == fingerprint && done(i))
                    .cloned()
            });
            if found.is_some() {
                return found;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Whether an incident as the API shows it has nothing left to do.
pub fn terminal(incident: &Value) -> bool {
    matches!(
        incident["status"].as_str(),
        Some("resolved" | "rolled_back" | "escalated" | "failed" | "rejected")
    ) && (incident["execution"]["rollback"].is_null()
        || !incident["execution"]["rolled_back_at"].is_null())
}
