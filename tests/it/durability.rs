//! Durability: a write Sentinel acknowledged survives `kill -9` of the process.
//!
//! The real binary (`sentinel serve`) runs as a child process on a data directory (embedded
//! store) or a Redis key prefix. Each round injects a test alert, takes the `201` as the
//! acknowledgement, SIGKILLs the process at once (no graceful shutdown, no flush), starts a
//! new process on the same state and checks that every incident acknowledged so far is
//! there, unchanged, with its `IncidentOpened` audit entry in a chain that still verifies.
//! At the end the state is also read directly through the store, without the server.

use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use sentinel::domain::{verify_chain, Incident, IncidentId};
use sentinel::store::embedded::EmbeddedStore;
use sentinel::store::redis::RedisStore;
use sentinel::store::Store;
use serde_json::{json, Value};

use crate::helpers::{free_port, redis_store, redis_url, unique_prefix, Backend};

/// The alerts injected, one per round, each followed by `kill -9`.
const SCENARIOS: [&str; 3] = ["memory", "cpu", "disk"];

/// How long a freshly started process may take to answer `/readyz` with 200.
const READY_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn an_acknowledged_incident_survives_kill_9_on_the_embedded_store() {
    acknowledged_incidents_survive_kill_9(Backend::Embedded).await;
}

#[tokio::test]
async fn an_acknowledged_incident_survives_kill_9_on_redis() {
    acknowledged_incidents_survive_kill_9(Backend::Redis).await;
}

async fn acknowledged_incidents_survive_kill_9(backend: Backend) {
    let setup = Setup::new(backend).await;
    let mut acknowledged: Vec<Value> = Vec::new();
    let mut server = setup.start().await;
    for scenario in SCENARIOS {
        let (status, incident) = server
            .send(
                reqwest::Method::POST,
                "/api/trigger-alert",
                Some(json!({ "scenario": scenario })),
            )
            .await;
        assert_eq!(status, 201, "trigger {scenario}: {incident}");
        let id = incident["id"].as_str().expect("the incident has an id");
        assert!(IncidentId::parse(id).is_ok(), "{id:?} is an incident id");

        // The write is acknowledged: kill the process right now, without any grace.
        let exit = server.kill_9();
        assert_eq!(
            exit.signal(),
            Some(9),
            "{scenario}: killed by SIGKILL, got {exit}"
        );
        acknowledged.push(incident);

        server = setup.start().await;
        expect_all_acknowledged(&server, &acknowledged).await;
    }

    // Finally read the state with the store itself, the server gone (killed again).
    server.kill_9();
    let store = setup.open_store().await;
    expect_in_store(store.as_ref(), &acknowledged).await;
}

/// Everything acknowledged so far is served back unchanged, and audited in a sound chain.
async fn expect_all_acknowledged(server: &Server, acknowledged: &[Value]) {
    for incident in acknowledged {
        let id = incident["id"].as_str().unwrap();
        let (status, body) = server
            .send(reqwest::Method::GET, &format!("/api/incidents/{id}"), None)
            .await;
        assert_eq!(status, 200, "GET {id} after kill -9: {body}");
        assert_eq!(body["id"], incident["id"]);
        assert_eq!(body["fingerprint"], incident["fingerprint"]);
        assert_eq!(body["version"], incident["version"]);
        assert_eq!(&body, incident, "{id} reads back exactly as acknowledged");
    }

    let (status, list) = server
        .send(reqwest::Method::GET, "/api/incidents?status=all", None)
        .await;
    assert_eq!(status, 200, "{list}");
    let mut listed: Vec<&str> = list
        .as_array()
        .expect("a list of incidents")
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = acknowledged
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    expected.sort_unstable();
    assert_eq!(listed, expected, "exactly the acknowledged incidents exist");

    let (status, audit) = server.send(reqwest::Method::GET, "/api/audit", None).await;
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["chain"]["verified"], true, "{audit}");
    assert_eq!(audit["chain"]["length"], acknowledged.len(), "{audit}");
    let entries = audit["entries"].as_array().expect("audit entries");
    assert_eq!(entries.len(), acknowledged.len(), "{audit}");
    for (i, (entry, incident)) in entries.iter().zip(acknowledged).enumerate() {
        assert_eq!(entry["seq"], i + 1);
        assert_eq!(entry["event"], "IncidentOpened", "{entry}");
        assert_eq!(entry["incident"], incident["id"], "{entry}");
        assert_eq!(entry["details"]["fingerprint"], incident["fingerprint"]);
    }
}

/// The same, read straight from the store the server wrote.
async fn expect_in_store(store: &dyn Store, acknowledged: &[Value]) {
    for incident in acknowledged {
        let expected: Incident = serde_json::from_value(incident.clone()).unwrap();
        assert_eq!(
            store.get_incident(&expected.id).await.unwrap(),
            Some(expected.clone()),
            "{} is in the store as acknowledged",
            expected.id
        );
        assert_eq!(
            store
                .open_incident_for(&expected.fingerprint)
                .await
                .unwrap(),
            Some(expected)
        );
    }
    let entries = store.list_audit().await.unwrap();
    assert_eq!(entries.len(), acknowledged.len());
    assert!(verify_chain(&entries).verified);
}

/// One test's state: a temporary directory (data, config, logs), an admin key and, on Redis,
/// a key prefix; every process of the test is started from it.
struct Setup {
    backend: Backend,
    dir: tempfile::TempDir,
    config: PathBuf,
    prefix: String,
    admin_key: String,
    client: reqwest::Client,
}

impl Setup {
    async fn new(backend: Backend) -> Setup {
        if backend == Backend::Redis {
            // Fail now, naming what is missing, when Redis does not answer.
            drop(redis_store().await);
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (admin_key, sha256) = sentinel::web::auth::new_key();
        let prefix = unique_prefix();
        let config = dir.path().join("sentinel.toml");
        let toml = format!(
            "[[api_keys]]\nname = \"durability-admin\"\nrole = \"admin\"\nsha256 = \"{sha256}\"\n\n\
             [store]\nredis_prefix = \"{prefix}\"\n\n\
             # Nothing but the writes under test changes the incidents.\n\
             [monitor]\nenabled = false\n[actions]\nenabled = false\n"
        );
        std::fs::write(&config, toml).expect("the configuration file is written");
        Setup {
            backend,
            dir,
            config,
            prefix,
            admin_key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Embedded => "embedded",
            Backend::Redis => "redis",
        }
    }

    /// Starts `sentinel serve` and waits until it is ready. Retries on another port when the
    /// free port it picked was taken meanwhile.
    async fn start(&self) -> Server {
        for _ in 0..3 {
            let mut server = self.spawn();
            match server.wait_ready(&self.client, self.backend_name()).await {
                Ok(()) => return server,
                Err(stderr) if stderr.contains("cannot listen") => continue,
                Err(stderr) => panic!(
                    "sentinel ({}) did not become ready within {READY_WITHIN:?}; its stderr:\n{stderr}",
                    self.backend_name()
                ),
            }
        }
        panic!("sentinel could not find a free port in three tries");
    }

    fn spawn(&self) -> Server {
        let port = free_port();
        let stderr_path = self.dir.path().join(format!("stderr-{port}.log"));
        let stderr = File::create(&stderr_path).expect("a log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_sentinel"));
        command
            .arg("serve")
            // Nothing inherited (SENTINEL_*, REDIS_URL, SLACK_*, …) may change what runs.
            .env_clear()
            .env("SENTINEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("SENTINEL_DATA_DIR", self.data_dir())
            .env("SENTINEL_SANDBOX_DIR", self.dir.path().join("sandbox"))
            .env("SENTINEL_CONFIG", &self.config)
            .env("RUST_LOG", "warn")
            .env("RUST_BACKTRACE", "1")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if self.backend == Backend::Redis {
            command.env("REDIS_URL", redis_url());
        }
        let child = command.spawn().expect("the sentinel binary starts");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            stderr: stderr_path,
            admin_key: self.admin_key.clone(),
            client: self.client.clone(),
        }
    }

    /// The store the server used, opened directly (the server must be stopped for redb).
    async fn open_store(&self) -> Box<dyn Store> {
        let redb = self.data_dir().join("sentinel.redb");
        match self.backend {
            Backend::Embedded => Box::new(EmbeddedStore::open(&redb).expect("the store opens")),
            Backend::Redis => {
                assert!(
                    !redb.exists(),
                    "with REDIS_URL set, nothing is written to {}",
                    redb.display()
                );
                Box::new(
                    RedisStore::connect(&redis_url(), &self.prefix)
                        .await
                        .expect("Redis answers"),
                )
            }
        }
    }
}

/// A running `sentinel serve`. Dropping it SIGKILLs and reaps the process, so a failing test
/// never leaves one behind.
struct Server {
    child: Child,
    base: String,
    stderr: PathBuf,
    admin_key: String,
    client: reqwest::Client,
}

impl Server {
    /// Polls `/readyz` until 200; on failure returns the process's stderr.
    async fn wait_ready(&mut self, client: &reqwest::Client, backend: &str) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("the child can be polled") {
                return Err(format!(
                    "(exited with {status})\n{}",
                    read_log(&self.stderr)
                ));
            }
            let reply = client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if let Ok(reply) = reply {
                if reply.status() == 200 {
                    let body: Value = reply.json().await.expect("readyz answers JSON");
                    assert_eq!(
                        body["store"], backend,
                        "the server runs on {backend}: {body}"
                    );
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(read_log(&self.stderr));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a request as the admin; returns the status and the JSON body.
    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}; stderr:\n{}", read_log(&self.stderr)));
        let status = reply.status().as_u16();
        let text = reply.text().await.expect("a body");
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{path} answered {status} with non-JSON {text:?}"));
        (status, body)
    }

    /// `kill -9` (SIGKILL on unix) and wait for the process to be gone.
    fn kill_9(&mut self) -> ExitStatus {
        self.child.kill().expect("the child can be killed");
        self.child.wait().expect("the child can be reaped")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
