//! PagerDuty (SPEC §12.5): incidents that need a person page through the Events API v2,
//! their resolution resolves the page, and every fix Sentinel ran or rolled back is a change
//! event.
//!
//! In: incident ids from `Sentinel::subscribe()` and a periodic look over the store (the same
//! hints the Slack cards follow; nothing is threaded through the incident engine). Out:
//! POSTs to `{events_url}enqueue` and `{events_url}change/enqueue`.
//!
//! - **Decided from the incident.** [`events::plan`] (pure) compares the incident with the
//!   record of what was already queued for it ([`events::Announced`]) and says what is due.
//! - **Queued once.** The events and the new record are written in one atomic step
//!   (`Store::outbox_push_marked`), compare-and-set on the record: two replicas, or a
//!   restart, never queue an event twice, and a record never claims an event that is not in
//!   the queue.
//! - **Durable and ordered.** One queue, [`QUEUE`], in the store's outbox, sent strictly in
//!   order: an incident's resolve never overtakes its trigger. What is queued when the
//!   process stops is sent after the next start.
//! - **Retried when it may help.** 429, 5xx and network errors are retried with backoff
//!   (`Retry-After` when PagerDuty sends one), indefinitely; a refused event (400 `invalid
//!   event`) is parked in the store with PagerDuty's `errors` and logged, not retried.
//! - **Sent by one replica.** The queue is drained only by the holder of the lease
//!   [`LEASE`], renewed before every call; an event is removed after PagerDuty accepted it,
//!   so a replica dying between the two causes one repeat (a trigger or resolve repeated
//!   under its `dedup_key` changes nothing in PagerDuty), never a loss.
//!
//! The routing key is added when an event is sent; the store never holds it.

pub mod client;
pub mod events;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::domain::{IncidentId, Severity, Timestamp};
use crate::service::Sentinel;
use crate::store::{IncidentQuery, ParkedItem, SharedStore, StoreError};
use client::{PagerDutyApi, PagerDutyError};
use events::{Announced, Queued};

/// The outbox queue PagerDuty's events wait in (a `:` keeps Slack's sender away from it).
pub const QUEUE: &str = "pagerduty:events";

/// The lease whose holder sends the queue.
pub const LEASE: &str = "pagerduty-outbox";

/// How long a replica holds the queue without renewing.
const LEASE_TTL: Duration = Duration::from_secs(20);

/// How often the sender looks at the queue without being woken (events another replica
/// queued, a lease another replica let go).
const POLL: Duration = Duration::from_secs(2);

/// How often the watcher looks over the store for changes it missed.
pub const CATCH_UP: Duration = Duration::from_secs(30);

/// The first wait after a failed call (doubling up to [`MAX_BACKOFF`]).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// PagerDuty asks for "a backoff of a few minutes" under rate limiting.
const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// The PagerDuty side: exists only with a routing key.
pub struct PagerDuty {
    api: PagerDutyApi,
    store: SharedStore,
    /// `[pagerduty] severities`: which open incidents page without being escalated.
    severities: Vec<Severity>,
    /// The status page's address, for links ("" when unset).
    public_url: String,
    /// Wakes this process's sender when something is queued.
    wake: Notify,
    /// This process's name for the lease.
    holder: String,
    /// Milliseconds of the first wait after a failed call; tests shorten it.
    first_backoff_ms: AtomicU64,
}

impl PagerDuty {
    /// Builds the PagerDuty side from the settings; `None` without a routing key.
    pub fn from_settings(
        settings: &Settings,
        store: SharedStore,
    ) -> anyhow::Result<Option<Arc<PagerDuty>>> {
        let Some(key) = &settings.secrets.pagerduty_routing_key else {
            return Ok(None);
        };
        let api = PagerDutyApi::new(&settings.pagerduty.events_url, key.clone())
            .context("[pagerduty] events_url (PAGERDUTY_EVENTS_URL)")?;
        Ok(Some(Arc::new(PagerDuty {
            api,
            store,
            severities: settings.pagerduty.severities.clone(),
            public_url: settings.public_url.clone(),
            wake: Notify::new(),
            holder: format!("pagerduty-{}", IncidentId::generate().as_str()),
            first_backoff_ms: AtomicU64::new(FIRST_BACKOFF.as_millis() as u64),
        })))
    }

    /// Sets the first wait after a failed call (tests use a few milliseconds).
    pub fn set_first_backoff(&self, wait: Duration) {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        self.first_backoff_ms.store(ms, Ordering::Relaxed);
    }

    /// The watcher and the sender; they stop when `shutdown` is cancelled.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        sentinel: &Arc<Sentinel>,
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(Arc::clone(self).watch(Arc::clone(sentinel), shutdown.clone())),
            tokio::spawn(Arc::clone(self).send(shutdown.clone())),
        ]
    }

    /// How many events wait to be sent.
    pub async fn queued(&self) -> Result<usize, StoreError> {
        self.store.outbox_len(QUEUE).await
    }

    /// The events PagerDuty refused, with its reasons.
    pub async fn parked(&self) -> Result<Vec<ParkedItem>, StoreError> {
        self.store.outbox_parked(QUEUE).await
    }

    /// Queues what is due for incident `id` and not yet queued.
    pub async fn consider(&self, id: &IncidentId) -> Result<(), StoreError> {
        let mark = format!("pagerduty:{id}");
        // A conflict means another replica (or this one's catch-up) queued meanwhile: read
        // both again and decide afresh.
        for _ in 0..10 {
            let Some(incident) = self.store.get_incident(id).await? else {
                return Ok(());
            };
            let stored = self.store.outbox_mark(&mark).await?;
            let announced: Option<Announced> = stored
                .clone()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("pagerduty record of {id}: {e}")))?;
            let Some(plan) = events::plan(
                &incident,
                announced.as_ref(),
                &self.severities,
                Timestamp::now(),
            ) else {
                return Ok(());
            };
            let queued: Vec<Queued> = plan
                .due
                .iter()
                .map(|due| events::event(&incident, *due, &self.public_url))
                .collect();
            let payloads = queued
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<Value>, _>>()
                .map_err(|e| StoreError::Corrupt(format!("a pagerduty event: {e}")))?;
            let record = serde_json::to_value(&plan.announced)
                .map_err(|e| StoreError::Corrupt(format!("a pagerduty record: {e}")))?;
            if self
                .store
                .outbox_push_marked(QUEUE, &mark, stored.as_ref(), &record, &payloads)
                .await?
            {
                let kinds: Vec<&str> = queued.iter().map(|q| q.kind.as_str()).collect();
                tracing::info!(incident = %id, events = ?kinds, "pagerduty events queued");
                self.wake.notify_one();
                return Ok(());
            }
        }
        tracing::warn!(incident = %id, "pagerduty: the incident kept changing; the next look queues its events");
        Ok(())
    }

    /// Looks at the latest incidents, oldest first, and queues what is due for each.
    pub async fn catch_up(&self) {
        let query = IncidentQuery {
            open_only: false,
            limit: 200,
        };
        let mut incidents = match self.store.list_incidents(query).await {
            Ok(incidents) => incidents,
            Err(e) => {
                tracing::warn!(error = %e, "pagerduty catch-up cannot list incidents");
                return;
            }
        };
        incidents.reverse();
        for incident in incidents {
            self.consider_logged(&incident.id).await;
        }
    }

    async fn consider_logged(&self, id: &IncidentId) {
        if let Err(e) = self.consider(id).await {
            tracing::warn!(incident = %id, error = %e, "cannot queue pagerduty events; the next look tries again");
        }
    }

    /// The watcher: subscribes before the first catch-up so no change falls in between.
    async fn watch(self: Arc<Self>, sentinel: Arc<Sentinel>, shutdown: CancellationToken) {
        let mut changes = sentinel.subscribe();
        let mut catch_up = tokio::time::interval(CATCH_UP);
        catch_up.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = catch_up.tick() => self.catch_up().await,
                change = changes.recv() => match change {
                    Ok(id) => self.consider_logged(&id).await,
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "pagerduty watcher lagged; catching up from the store");
                        self.catch_up().await;
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    /// The sender: sends the queue, oldest first, while this process holds the lease.
    async fn send(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.send_head(&shutdown).await {
                Step::Done => {
                    failures = 0;
                    continue;
                }
                Step::Empty => {
                    // Let another replica (or the next start) take over at once.
                    self.release().await;
                    POLL
                }
                Step::Elsewhere => POLL,
                Step::Retry(after) => {
                    failures += 1;
                    after.unwrap_or_else(|| self.backoff(failures))
                }
                Step::Stop => {
                    self.release().await;
                    return;
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return;
                }
                _ = self.wake.notified(), if wait == POLL => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Sends the queue's head, if this process holds the lease.
    async fn send_head(&self, shutdown: &CancellationToken) -> Step {
        if shutdown.is_cancelled() {
            return Step::Stop;
        }
        match self
            .store
            .acquire_lease(LEASE, &self.holder, LEASE_TTL, Timestamp::now())
            .await
        {
            Ok(Some(_)) => {}
            Ok(None) => return Step::Elsewhere,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the pagerduty outbox lease; will retry");
                return Step::Retry(None);
            }
        }
        let head = match self.store.outbox_head(QUEUE).await {
            Ok(Some(head)) => head,
            Ok(None) => return Step::Empty,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pagerduty outbox; will retry");
                return Step::Retry(None);
            }
        };
        let queued = match serde_json::from_value::<Queued>(head.payload.clone()) {
            Ok(queued) => queued,
            Err(e) => {
                tracing::error!(seq = head.seq, error = %e, "unreadable pagerduty event; parked");
                let reason = format!("unreadable event: {e}");
                return self.settle(head.seq, Some(reason), shutdown).await;
            }
        };
        match self.api.send(queued.endpoint, &queued.body).await {
            Ok(()) => {
                tracing::debug!(
                    incident = queued.incident,
                    kind = queued.kind,
                    "pagerduty accepted an event"
                );
                self.settle(head.seq, None, shutdown).await
            }
            Err(PagerDutyError::RateLimited { retry_after }) => {
                tracing::warn!(
                    incident = queued.incident,
                    kind = queued.kind,
                    "pagerduty rate limited the event; will retry"
                );
                Step::Retry(retry_after)
            }
            Err(e) if e.is_retried() => {
                tracing::warn!(incident = queued.incident, kind = queued.kind, error = %e, "pagerduty unreachable; will retry");
                Step::Retry(None)
            }
            Err(e) => {
                tracing::error!(incident = queued.incident, kind = queued.kind, error = %e, "pagerduty refused an event; parked, not retried");
                self.settle(head.seq, Some(e.to_string()), shutdown).await
            }
        }
    }

    /// Removes a handled event from the queue (parked with `error` when PagerDuty refused
    /// it). Retries the store, never the event: PagerDuty already has it.
    async fn settle(&self, seq: u64, error: Option<String>, shutdown: &CancellationToken) -> Step {
        let mut failures = 0;
        loop {
            let done = match &error {
                None => self.store.outbox_ack(QUEUE, seq).await,
                Some(error) => {
                    self.store
                        .outbox_park(QUEUE, seq, error, Timestamp::now())
                        .await
                }
            };
            match done {
                Ok(_) => return Step::Done,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(seq, error = %e, "pagerduty outbox: cannot remove a sent event; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(self.backoff(failures)) => {}
                        _ = shutdown.cancelled() => return Step::Stop,
                    }
                }
            }
        }
    }

    /// Gives the lease up, if this process holds it.
    async fn release(&self) {
        if let Ok(Some(current)) = self
            .store
            .acquire_lease(LEASE, &self.holder, LEASE_TTL, Timestamp::now())
            .await
        {
            if let Err(e) = self.store.release_lease(&current).await {
                tracing::debug!(error = %e, "cannot release the pagerduty outbox lease");
            }
        }
    }

    /// The first backoff, doubling, up to [`MAX_BACKOFF`].
    fn backoff(&self, failures: u32) -> Duration {
        let first = Duration::from_millis(self.first_backoff_ms.load(Ordering::Relaxed));
        backoff(first, failures)
    }
}

/// What one look at the queue came to.
enum Step {
    /// The head was sent (or parked): look again at once.
    Done,
    /// Nothing queued.
    Empty,
    /// Another replica holds the lease.
    Elsewhere,
    /// Try again after this long (`None`: the backoff).
    Retry(Option<Duration>),
    Stop,
}

fn backoff(first: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    first.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_two_minutes() {
        let waits: Vec<u64> = (1..=10)
            .map(|n| backoff(Duration::from_secs(1), n).as_secs())
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
        assert_eq!(
            backoff(Duration::from_millis(20), 3),
            Duration::from_millis(80)
        );
    }
}
