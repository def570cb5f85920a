//! The last known state, for when the store does not answer (SPEC §12.3).
//!
//! In: every status read (`/api/status`, the page, `/sentinel status`). Out: the fresh report
//! while the store answers, remembered; while it does not, the last report that was read,
//! with this replica's current signal readings and monitor cycle, marked
//! `"store": {"ok": false, "since": …}`. The backend's own message is logged, never shown.
//!
//! Read-only, like the page: it never writes to the store.

use std::sync::Mutex;

use crate::domain::{Incident, Timestamp};
use crate::service::{Sentinel, ServiceError, StatusReport, StoreHealth};
use crate::store::IncidentQuery;

#[derive(Default)]
pub struct LastKnown {
    inner: Mutex<Remembered>,
}

#[derive(Default)]
struct Remembered {
    report: Option<StatusReport>,
    /// The page's list of recent incidents.
    recent: Vec<Incident>,
    /// When the store first failed to answer, while it still fails.
    down_since: Option<Timestamp>,
}

impl LastKnown {
    /// The status: fresh, or the last known one while the store does not answer. Errors other
    /// than the store's are passed on.
    pub async fn status(&self, sentinel: &Sentinel) -> Result<StatusReport, ServiceError> {
        match sentinel.status().await {
            Ok(report) => {
                let mut inner = self.lock();
                inner.report = Some(report.clone());
                if inner.down_since.take().is_some() {
                    tracing::info!("the store answers again");
                }
                Ok(report)
            }
            Err(ServiceError::Store(e)) => {
                let since = self.failed(&e);
                let inner = self.lock();
                let mut report = inner.report.clone().unwrap_or_else(|| StatusReport {
                    mode: sentinel.settings().mode.as_str(),
                    paused: false,
                    store: StoreHealth::down(since),
                    signals: Vec::new(),
                    incidents: Vec::new(),
                    monitor: None,
                    breakers: Vec::new(),
                });
                report.store = StoreHealth::down(since);
                // This replica's own readings do not come from the store: they are current.
                report.signals = sentinel.signal_readings();
                report.monitor = sentinel.last_cycle().or(report.monitor);
                Ok(report)
            }
            Err(other) => Err(other),
        }
    }

    /// The page's recent incidents: fresh, or the last known list while the store does not
    /// answer.
    pub async fn recent(&self, sentinel: &Sentinel, limit: usize) -> Vec<Incident> {
        let query = IncidentQuery {
            open_only: false,
            limit,
        };
        match sentinel.incidents(query).await {
            Ok(recent) => {
                self.lock().recent = recent.clone();
                recent
            }
            Err(ServiceError::Store(e)) => {
                self.failed(&e);
                self.lock().recent.clone()
            }
            // Reading a list asks nothing else of the service that could fail.
            Err(other) => {
                tracing::error!(error = %other, "cannot list recent incidents");
                self.lock().recent.clone()
            }
        }
    }

    /// Records a failure (logged with the backend's message) and returns since when the store
    /// has been failing.
    fn failed(&self, error: &crate::store::StoreError) -> Timestamp {
        let mut inner = self.lock();
        let since = *inner.down_since.get_or_insert_with(Timestamp::now);
        tracing::warn!(error = %error, %since, "the store does not answer: showing the last known state");
        since
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Remembered> {
        // A panic while holding it leaves plain data behind: still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
