//! `spawn_app()`: the real application on port 0 with a fresh embedded store or its own
//! Redis key prefix, three API keys (viewer, operator, admin) and typed request helpers.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sentinel::app::Application;
use sentinel::config::{ApiKeyEntry, Settings};
use sentinel::domain::{ActionId, Incident, IncidentId, Risk, Role, Status};
use sentinel::pipeline::monitor::{CycleReport, Monitor};
use sentinel::service::Sentinel;
use sentinel::store::{embedded::EmbeddedStore, redis::RedisStore, SharedStore};
use sentinel::web::auth::new_key;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
}

/// The Redis the tests use: `REDIS_URL`, else the one `scripts/services.sh` starts.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("sentinel-test:{}:", IncidentId::generate().as_str())
}

/// A Redis store under a fresh prefix. Fails the test, naming what is missing, when Redis
/// does not answer: tests never pass by skipping.
pub async fn redis_store() -> RedisStore {
    let url = redis_url();
    match RedisStore::connect(&url, &unique_prefix()).await {
        Ok(store) => store,
        Err(e) => panic!(
            "Redis is not reachable at {url} ({e}); these tests need a real redis-server: \
             run `scripts/services.sh start` (Debian package redis-server) or set REDIS_URL"
        ),
    }
}

pub fn embedded_store() -> (EmbeddedStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let store = EmbeddedStore::open(&dir.path().join("sentinel.redb")).expect("a fresh store");
    (store, dir)
}

pub struct Keys {
    pub viewer: String,
    pub operator: String,
    pub admin: String,
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub keys: Keys,
    pub sentinel: Arc<Sentinel>,
    pub store: SharedStore,
    pub monitor: Arc<Monitor>,
    /// The sandbox directory of this app (inside its temporary directory).
    pub sandbox: std::path::PathBuf,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data_dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Embedded, |_| {}).await
}

/// The real application, with `customize` applied to its settings before it starts.
pub async fn spawn_app_with(backend: Backend, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let mut settings = Settings::defaults();
    settings.listen = "127.0.0.1:0".to_owned();
    settings.data_dir = data_dir.path().join("data");
    settings.sandbox_dir = data_dir.path().join("sandbox");
    std::fs::create_dir_all(&settings.sandbox_dir).unwrap();
    // Tests run monitor cycles themselves with `tick_monitor`, never on a timer.
    settings.monitor.enabled = false;
    // Tests that exercise remediation turn it on; the others drive incidents by hand.
    settings.actions.enabled = false;
    // Low-risk fixes run at once, without the veto window (`[actions] veto_window`), unless
    // a test is about the window (tests/it/veto.rs sets its own).
    settings.actions.veto_window = sentinel::config::HumanDuration(Duration::ZERO);
    let mut entry = |name: &str, role: Role| {
        let (key, sha256) = new_key();
        settings.api_keys.push(ApiKeyEntry {
            name: name.to_owned(),
            role,
            sha256,
        });
        key
    };
    let keys = Keys {
        viewer: entry("test-viewer", Role::Viewer),
        operator: entry("test-operator", Role::Operator),
        admin: entry("test-admin", Role::Admin),
    };
    if backend == Backend::Redis {
        // Fail early, with the reason, when Redis is missing.
        drop(redis_store().await);
        settings.secrets.redis_url = Some(SecretString::from(redis_url()));
        settings.store.redis_prefix = unique_prefix();
    }
    customize(&mut settings);
    let app = Application::build(settings)
        .await
        .expect("the application builds");
    let addr = app.local_addr();
    let sentinel = app.sentinel();
    let store = app.store();
    let monitor = app.monitor();
    let shutdown = app.shutdown_token();
    let server = tokio::spawn(app.run());
    TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        keys,
        store,
        monitor,
        sandbox: sentinel.settings().sandbox_dir.clone(),
        sentinel,
        shutdown,
        server: Some(server),
        _data_dir: data_dir,
    }
}

/// A response reduced to what tests look at.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl TestApp {
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        key: Option<&str>,
        body: Option<&str>,
    ) -> Reply {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("{path} answered {status} with non-JSON {text:?}"))
        };
        Reply { status, body }
    }

    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        self.request(reqwest::Method::GET, path, key, None).await
    }

    /// A GET whose answer is text (the page, `/metrics`); panics unless it is a 200.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(response.status(), 200, "GET {path}");
        response.text().await.expect("a body")
    }

    pub async fn post(&self, path: &str, key: Option<&str>, body: &str) -> Reply {
        self.request(reqwest::Method::POST, path, key, Some(body))
            .await
    }

    /// Injects a test alert as an admin and returns the incident.
    pub async fn trigger(&self, scenario: &str) -> Incident {
        let reply = self
            .post(
                "/api/trigger-alert",
                Some(&self.keys.admin),
                &format!(r#"{{"scenario":"{scenario}"}}"#),
            )
            .await;
        assert!(
            reply.status == 201 || reply.status == 200,
            "trigger {scenario}: {reply:?}"
        );
        serde_json::from_value(reply.body).expect("an incident")
    }

    /// Puts an incident in `awaiting_approval` with the given risk, as analysis and policy
    /// will once they exist.
    pub async fn await_approval(&self, id: &IncidentId, risk: Risk) -> Incident {
        let mut incident = self.store.get_incident(id).await.unwrap().unwrap();
        let now = sentinel::domain::Timestamp::now();
        incident
            .transition(Status::Analyzing, "sentinel", "analyzing", now)
            .unwrap();
        incident.risk = Some(risk);
        incident.propose(
            sentinel::domain::ProposedAction {
                action: sentinel::domain::ActionId::ContainerRestart,
                params: [("container".to_owned(), serde_json::json!("web-1"))].into(),
            },
            sentinel::domain::TargetState::nothing(),
        );
        incident
            .transition(Status::AwaitingApproval, "sentinel", "needs approval", now)
            .unwrap();
        self.store.update_incident(&incident).await.unwrap()
    }

    /// An incident whose fix (`action`) was approved and ran, then ended in `outcome`
    /// (`Resolved`, `RolledBack`, or `Verifying` for still in progress), written directly.
    pub async fn record_fix(&self, scenario: &str, action: ActionId, outcome: Status) -> Incident {
        let now = sentinel::domain::Timestamp::now();
        let incident = self.trigger(scenario).await;
        let mut incident = self.await_approval(&incident.id, Risk::Medium).await;
        let proposed = incident.proposed_action.as_mut().expect("a proposal");
        proposed.action = action;
        if action == ActionId::SandboxCleanup {
            proposed.params = [("dir".to_owned(), serde_json::json!("logs"))].into();
        }
        let by = "api:test-operator (operator)";
        incident
            .transition(Status::Approved, by, "approved", now)
            .unwrap();
        incident
            .transition(Status::Executing, "sentinel", "executing", now)
            .unwrap();
        incident.approvals = vec![by.to_owned()];
        incident.execution = Some(sentinel::domain::Execution {
            action: incident.proposed_action.clone().unwrap(),
            approved_by: by.to_owned(),
            started_at: now,
            finished_at: Some(now),
            before: sentinel::domain::TargetState::nothing(),
            after: Some(sentinel::domain::TargetState::nothing()),
            reversible: true,
            rolled_back_at: (outcome == Status::RolledBack).then_some(now),
            rollback: (outcome == Status::RolledBack).then(|| sentinel::domain::RollbackStart {
                by: by.to_owned(),
                at: now,
            }),
            proposal_id: None,
            fencing_token: None,
        });
        incident
            .transition(Status::Verifying, "sentinel", "verifying", now)
            .unwrap();
        if outcome != Status::Verifying {
            incident
                .transition(outcome, "sentinel", "done", now)
                .unwrap();
        }
        self.store.update_incident(&incident).await.unwrap()
    }

    /// Sends `n` approvals of one incident at once, alternating operator and admin keys, and
    /// returns the statuses.
    pub async fn approve_concurrently(&self, id: &IncidentId, n: usize) -> Vec<u16> {
        let url = format!("{}/api/incidents/{id}/approve", self.base);
        let mut tasks = Vec::new();
        for i in 0..n {
            let key = if i % 2 == 0 {
                self.keys.operator.clone()
            } else {
                self.keys.admin.clone()
            };
            let (client, url) = (self.client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let response = client.post(url).header("x-api-key", key).send().await;
                response.expect("the server answers").status().as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.expect("the request task"));
        }
        statuses
    }

    /// Runs one monitor cycle now.
    pub async fn tick_monitor(&self) -> CycleReport {
        self.monitor.tick(None).await
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A loopback port nobody listens on right now (for a spawned binary).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A spawned process, SIGKILLed and reaped when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves one fixed Prometheus text exposition on every request, on a loopback port, until
/// dropped: a stand-in for an exporter with no Debian package (cAdvisor).
pub struct MetricsServer {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl MetricsServer {
    pub async fn serve(body: String) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        MetricsServer { port, task }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A Prometheus of the test's own (Debian package `prometheus`), scraping one loopback target
/// every second as `job`; stopped when dropped.
pub struct PrivatePrometheus {
    pub url: String,
    _process: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl PrivatePrometheus {
    /// Starts it and waits (bounded) until `ready` returns `series` series.
    pub async fn scraping(job: &str, target_port: u16, ready: &str, series: usize) -> Self {
        use std::process::{Command, Stdio};
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n\
                 \x20     - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let process = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (Debian package prometheus)");
        let prometheus = PrivatePrometheus {
            url: format!("http://127.0.0.1:{port}"),
            _process: KillOnDrop(process),
            _dir: dir,
        };
        let client = sentinel::runtime::prometheus::PrometheusClient::new(
            &prometheus.url,
            Duration::from_secs(2),
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if client
                .instant_query(ready)
                .await
                .is_ok_and(|s| s.len() == series)
            {
                return prometheus;
            }
            assert!(
                Instant::now() < deadline,
                "the private Prometheus never scraped {job} at 127.0.0.1:{target_port} \
                 (`{ready}` did not return {series} series)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
