//! What the stages need, and nothing of the service above them: settings, the store, the
//! collectors, the executor, the analyzer and the remediation queue ([`Pipeline`]); and where
//! the monitor publishes what it measured ([`Readings`]).
//!
//! The service (`Sentinel`) holds both and hands them to the monitor loop and the
//! remediation worker; the pipeline never imports the service.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::domain::{Incident, Sample, SignalReading, Timestamp, Trends};
use crate::pipeline::analyze::llm::LlmAnalyzer;
use crate::pipeline::execute::Executor;
use crate::pipeline::monitor::{Collectors, CycleReport};
use crate::pipeline::remediate::Job;
use crate::store::SharedStore;

/// The stages' dependencies.
pub struct Pipeline {
    pub settings: Arc<Settings>,
    pub store: SharedStore,
    /// The collectors, shared by the monitor loop, analysis (evidence) and verification.
    pub collectors: Arc<Collectors>,
    /// Sentinel's hands: Docker and the sandbox.
    pub executor: Executor,
    /// The LLM analyzer, when `[analyzer] kind = "llm"` and an API key is set.
    pub llm: Option<LlmAnalyzer>,
    /// Remediation work for the worker task (analysis, execution, verification, ...).
    jobs: mpsc::UnboundedSender<Job>,
}

impl Pipeline {
    /// The stages, and the receiving end of their job queue for `remediate::run_worker`.
    pub fn new(
        settings: Arc<Settings>,
        store: SharedStore,
        llm: Option<LlmAnalyzer>,
    ) -> (Self, mpsc::UnboundedReceiver<Job>) {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let pipeline = Pipeline {
            collectors: Arc::new(Collectors::new(Arc::clone(&settings))),
            executor: Executor::new(&settings),
            llm,
            jobs,
            settings,
            store,
        };
        (pipeline, receiver)
    }

    /// Queues remediation work. Never blocks; if the worker is gone (shutting down), the
    /// work is picked up again from the incident's status on the next start.
    pub fn enqueue(&self, job: Job) {
        if self.jobs.send(job).is_err() {
            tracing::debug!("the remediation worker has stopped; the job resumes on restart");
        }
    }

    /// Queues analysis of a newly opened incident.
    pub fn opened(&self, incident: &Incident) {
        self.enqueue(Job::Analyze {
            id: incident.id.clone(),
            resumed: false,
        });
    }
}

/// The monitor's latest readings on this replica: written once per cycle, read by status
/// requests, the page's trend charts and the live stream.
pub struct Readings {
    /// Until the first cycle, every configured signal as `pending` ([`Readings::pending`]).
    signals: RwLock<Vec<SignalReading>>,
    /// The latest monitor cycle on this replica, for `/api/status`.
    last_cycle: RwLock<Option<CycleReport>>,
    /// The last hour of readings, for the status page's trend charts.
    trends: Mutex<Trends>,
    /// Bumped after every monitor cycle, so the live stream can tell pages the signals moved.
    cycles: tokio::sync::watch::Sender<u64>,
}

impl Default for Readings {
    fn default() -> Self {
        Readings {
            signals: RwLock::new(Vec::new()),
            last_cycle: RwLock::new(None),
            trends: Mutex::new(Trends::new()),
            cycles: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Readings {
    /// Readings that list every signal `settings` watch as `pending` until the first cycle,
    /// so status, the page and `/sentinel status` show them from the first moment.
    pub fn pending(settings: &Settings) -> Self {
        let reason = if settings.monitor.enabled {
            "waiting for the first monitor cycle"
        } else {
            "no monitor cycle has run on this replica ([monitor] enabled = false)"
        };
        Readings {
            signals: RwLock::new(crate::pipeline::monitor::pending_readings(settings, reason)),
            ..Readings::default()
        }
    }

    pub fn set_cycle(&self, report: CycleReport) {
        *self.last_cycle.write().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    pub fn last_cycle(&self) -> Option<CycleReport> {
        self.last_cycle
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Publishes one cycle's readings: for `/api/status`, the trend charts and the stream.
    pub fn set_signals(&self, readings: Vec<SignalReading>) {
        self.trends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(
                Timestamp::now(),
                readings
                    .iter()
                    .map(|r| (r.signal.as_str(), r.resource.as_str(), r.value)),
            );
        *self.signals.write().unwrap_or_else(|e| e.into_inner()) = readings;
        self.cycles
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// The latest readings (every signal `pending` before the first cycle).
    pub fn signals(&self) -> Vec<SignalReading> {
        self.signals
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The recent samples of one signal, oldest first.
    pub fn trend(&self, signal: &str, resource: &str) -> Vec<Sample> {
        self.trends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .samples(signal, resource)
    }

    /// How many cycles have published readings so far (wraps).
    pub fn cycles(&self) -> u64 {
        *self.cycles.borrow()
    }

    /// Changes whenever a monitor cycle has published new readings.
    pub fn watch_cycles(&self) -> tokio::sync::watch::Receiver<u64> {
        self.cycles.subscribe()
    }
}
