//! Startup as a value: [`Application::build`] opens the store, binds the listener and wires
//! every part; [`Application::run`] serves until the shutdown token is cancelled.
//!
//! Tests build the same application on port 0 (`tests/it/helpers.rs`).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pipeline::monitor::Monitor;
use crate::service::Sentinel;
use crate::store::{self, SharedStore};
use crate::web::{self, auth::ApiKeys, AppContext};

pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    sentinel: Arc<Sentinel>,
    /// The observed store: the service's, and the doors' own bookkeeping (delivery claims,
    /// cards, the outbox) beside it.
    store: SharedStore,
    monitor: Arc<Monitor>,
    /// Slack's client and outbox, when `SLACK_BOT_TOKEN` is set.
    slack: Option<Arc<crate::slack::Slack>>,
    /// PagerDuty's watcher and sender, when a routing key is set; `run` spawns them.
    pagerduty: Option<Arc<crate::pagerduty::PagerDuty>>,
    /// The Socket Mode client, when `SLACK_APP_TOKEN` is set; `run` spawns it.
    socket_mode: Option<crate::slack::socket_mode::SocketMode>,
    /// The remediation queue's receiving end, handed to the worker by `run`.
    jobs: tokio::sync::mpsc::UnboundedReceiver<crate::pipeline::remediate::Job>,
    /// Cancelled by Ctrl-C, SIGTERM or a test; every task watches it.
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        // A first run has no sandbox yet: made here, so its signal reads 0 MB, not
        // "unavailable". Sentinel never deletes anything but inside it.
        std::fs::create_dir_all(&settings.sandbox_dir).with_context(|| {
            format!(
                "cannot create the sandbox directory {}",
                settings.sandbox_dir.display()
            )
        })?;
        crate::telemetry::metrics::metrics()
            .start_templates_at_zero(crate::slack::blocks::template_names());
        // Every write through this store is announced to the card sync and the live stream.
        let observed = store::observed::Observed::new(store::open(&settings).await?)
            .with_audit_mark(
                settings
                    .data_dir
                    .join(crate::pipeline::audit::HIGH_WATER_FILE),
            );
        let changes = observed.changes();
        let store: SharedStore = Arc::new(observed);
        let (sentinel, jobs) = Sentinel::new(Arc::clone(&settings), Arc::clone(&store), changes);
        let sentinel = Arc::new(sentinel);
        let monitor = Arc::new(Monitor::new(
            Arc::clone(sentinel.pipeline()),
            Arc::clone(sentinel.readings()),
        ));
        let slack = crate::slack::Slack::from_settings(&settings, Arc::clone(&store))?;
        let pagerduty = crate::pagerduty::PagerDuty::from_settings(&settings, Arc::clone(&store))?;
        let shutdown = CancellationToken::new();
        let state = Arc::new(AppContext {
            stream: web::stream::Hub::start(Arc::clone(&sentinel), shutdown.clone()),
            sentinel: Arc::clone(&sentinel),
            store: Arc::clone(&store),
            keys: ApiKeys::from_config(&settings.api_keys),
            body_limit: settings.http.body_limit,
            last_known: web::last_known::LastKnown::default(),
        });
        let socket_mode = crate::slack::socket_mode::SocketMode::from_settings(
            &state,
            Arc::clone(&monitor),
            slack.clone(),
        )?;
        let slack_routes: axum::Router<web::AppState> =
            crate::slack::http::router(Arc::clone(&state), Arc::clone(&monitor), slack.clone());
        let addr = settings.listen_addr();
        let listener = listen(addr).with_context(|| format!("cannot listen on {addr}"))?;
        Ok(Application {
            listener,
            router: web::router(state, slack_routes),
            sentinel,
            store,
            monitor,
            slack,
            pagerduty,
            socket_mode,
            jobs,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener")
    }

    pub fn sentinel(&self) -> Arc<Sentinel> {
        Arc::clone(&self.sentinel)
    }

    /// The store (observed: writes reach the card sync and the stream); for tests that set a
    /// situation up underneath the service.
    pub fn store(&self) -> SharedStore {
        Arc::clone(&self.store)
    }

    /// The monitor; tests run its cycles with `tick` instead of waiting for the loop.
    pub fn monitor(&self) -> Arc<Monitor> {
        Arc::clone(&self.monitor)
    }

    /// Slack's client and outbox, when a bot token is set.
    pub fn slack(&self) -> Option<Arc<crate::slack::Slack>> {
        self.slack.clone()
    }

    /// PagerDuty's side, when a routing key is set.
    pub fn pagerduty(&self) -> Option<Arc<crate::pagerduty::PagerDuty>> {
        self.pagerduty.clone()
    }

    /// The token that stops the application when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until shutdown; requests in flight are finished first.
    pub async fn run(self) -> anyhow::Result<()> {
        let settings = self.sentinel.settings();
        if !settings.slack_enabled() {
            tracing::info!(
                "slack is off: set SLACK_BOT_TOKEN, and SLACK_SIGNING_SECRET or SLACK_APP_TOKEN"
            );
        }
        tracing::info!("analyzer: {}", settings.analyzer_choice().reason);
        tracing::info!(
            addr = %self.local_addr(),
            store = self.store.backend(),
            mode = settings.mode.as_str(),
            "sentinel ready"
        );
        let worker = if settings.actions.enabled {
            tokio::spawn(crate::pipeline::remediate::run_worker(
                Arc::clone(self.sentinel.pipeline()),
                self.jobs,
                self.shutdown.clone(),
            ))
        } else {
            tracing::info!("remediation is off on this replica ([actions] enabled = false)");
            tokio::spawn(async {})
        };
        let monitor = settings
            .monitor
            .enabled
            .then(|| tokio::spawn(Arc::clone(&self.monitor).run(self.shutdown.clone())));
        if monitor.is_none() {
            tracing::info!("the monitor loop is off on this replica ([monitor] enabled = false)");
        }
        let mut slack_tasks = match &self.slack {
            Some(slack) => slack.spawn_tasks(&self.sentinel, &self.shutdown),
            None => Vec::new(),
        };
        match &self.pagerduty {
            Some(pagerduty) => {
                tracing::info!(events_url = %settings.pagerduty.events_url, "pagerduty is on");
                slack_tasks.extend(pagerduty.spawn_tasks(&self.sentinel, &self.shutdown));
            }
            None => tracing::debug!("pagerduty is off: no PAGERDUTY_ROUTING_KEY"),
        }
        if let Some(socket_mode) = self.socket_mode {
            slack_tasks.push(tokio::spawn(socket_mode.run(self.shutdown.clone())));
        }
        let limits = web::server::Limits {
            header_timeout: settings.http.header_timeout.0,
            max_connections: settings.http.max_connections,
        };
        web::server::serve(self.listener, self.router, limits, self.shutdown.clone()).await;
        // The server stopped (shutdown, or it failed): stop the loop too and let it finish.
        self.shutdown.cancel();
        // Clicks acknowledged before the stop are finished, within reason.
        if tokio::time::timeout(
            std::time::Duration::from_secs(10),
            self.sentinel.background().idle(),
        )
        .await
        .is_err()
        {
            tracing::warn!("stopping with acknowledged slack clicks still being handled");
        }
        if let Some(monitor) = monitor {
            if let Err(e) = monitor.await {
                tracing::error!(error = %e, "the monitor loop panicked");
            }
        }
        for task in slack_tasks {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a slack or pagerduty task panicked");
            }
        }
        if let Err(e) = worker.await {
            tracing::error!(error = %e, "the remediation worker panicked");
        }
        tracing::info!("sentinel stopped");
        Ok(())
    }
}

/// Every route the server answers, each with who may call it: the API's and the page's
/// (`web`) and Slack's. The RBAC sweep and the deployment checks walk this table.
pub fn routes() -> Vec<web::RouteSpec> {
    let mut routes = web::routes();
    routes.extend(crate::slack::http::routes());
    routes
}

/// How many connections may wait to be accepted. `TcpListener::bind` uses 128, which a burst
/// (every open status page reconnecting after a restart, 500 at once in bench/sse.sh)
/// overflows: the kernel then drops SYNs and clients retry a second later. The kernel caps
/// it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
