//! The last known state, for when the store does not answer (SPEC §12.3).
//!
//! In: every status read (`/api/status`, the page, `/sentinel status`). Out: the fresh report
//! while the store answers, remembered; while it does not, the last report that was read,
//! with this replica's current signal readings and monitor cycle, marked
//! `"store": {"ok": false, "since": …}`. The backend's own message is logged, never shown.
//!
//! Once the store has failed to answer, requests no longer wait on it: each failing read costs
//! a reconnect cycle (about 0.5 s refused, the 3 s response timeout when Redis is frozen), and
//! the page makes three. Until the store answers again, one probe at a time, in the
//! background and at most every [`PROBE_PAUSE`], asks it; every request meanwhile answers at
//! once from what is remembered.
//!
//! Read-only, like the page: it never writes to the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::{Incident, Timestamp};
use crate::service::{Sentinel, ServiceError, StatusReport, StoreHealth};
use crate::store::IncidentQuery;

/// How long after a failed probe the next one may start.
const PROBE_PAUSE: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct LastKnown {
    inner: Arc<Mutex<Remembered>>,
    /// A probe of the store is under way (or pausing after a failure).
    probing: Arc<AtomicBool>,
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
    pub async fn status(&self, sentinel: &Arc<Sentinel>) -> Result<StatusReport, ServiceError> {
        if let Some(since) = self.down_since() {
            self.probe(sentinel);
            return Ok(self.remembered(sentinel, since));
        }
        match sentinel.status().await {
            Ok(report) => {
                remember(&self.inner, report.clone());
                Ok(report)
            }
            Err(ServiceError::Store(e)) => {
                let since = self.failed(&e);
                Ok(self.remembered(sentinel, since))
            }
            Err(other) => Err(other),
        }
    }

    /// The last report, marked down since `since`, with this replica's own current readings.
    fn remembered(&self, sentinel: &Sentinel, since: Timestamp) -> StatusReport {
        let inner = lock(&self.inner);
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
        report
    }

    /// Since when the store has been failing, if it is known to fail.
    pub fn down_since(&self) -> Option<Timestamp> {
        lock(&self.inner).down_since
    }

    /// Starts a background read of the status unless one is under way: it answers → the
    /// store is up again, and the next request reads afresh.
    fn probe(&self, sentinel: &Arc<Sentinel>) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (sentinel, inner, probing) = (
            Arc::clone(sentinel),
            Arc::clone(&self.inner),
            Arc::clone(&self.probing),
        );
        tokio::spawn(async move {
            match sentinel.status().await {
                Ok(report) => remember(&inner, report),
                Err(e) => {
                    tracing::debug!(error = %e, "the store still does not answer");
                    tokio::time::sleep(PROBE_PAUSE).await;
                }
            }
            probing.store(false, Ordering::Release);
        });
    }

    /// The page's recent incidents: fresh, or the last known list while the store does not
    /// answer.
    pub async fn recent(&self, sentinel: &Sentinel, limit: usize) -> Vec<Incident> {
        if self.down_since().is_some() {
            return lock(&self.inner).recent.clone();
        }
        let query = IncidentQuery {
            open_only: false,
            limit,
        };
        match sentinel.incidents(query).await {
            Ok(recent) => {
                lock(&self.inner).recent = recent.clone();
                recent
            }
            Err(ServiceError::Store(e)) => {
                self.failed(&e);
                lock(&self.inner).recent.clone()
            }
            // Reading a list asks nothing else of the service that could fail.
            Err(other) => {
                tracing::error!(error = %other, "cannot list recent incidents");
                lock(&self.inner).recent.clone()
            }
        }
    }

    /// Records a failure (logged with the backend's message) and returns since when the store
    /// has been failing.
    fn failed(&self, error: &crate::store::StoreError) -> Timestamp {
        let mut inner = lock(&self.inner);
        let since = *inner.down_since.get_or_insert_with(Timestamp::now);
        tracing::warn!(error = %error, %since, "the store does not answer: showing the last known state");
        since
    }
}

/// A fresh report: remembered, and the store counts as up again.
fn remember(inner: &Mutex<Remembered>, report: StatusReport) {
    let mut inner = lock(inner);
    inner.report = Some(report);
    if inner.down_since.take().is_some() {
        tracing::info!("the store answers again");
    }
}

fn lock(inner: &Mutex<Remembered>) -> std::sync::MutexGuard<'_, Remembered> {
    // A panic while holding it leaves plain data behind: still usable.
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
