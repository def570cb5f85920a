//! The outbox: every message Sentinel sends to a Slack channel is written to the store first
//! and sent from there, in order, at Slack's pace.
//!
//! In: [`Outbox::post`] (a rendered message) and [`Outbox::sync_incident`] (bring an incident's
//! card and thread up to date, `slack::cards`). Out: Web API calls made by the [`Sender`].
//!
//! - **Durable.** A message is in the store (one queue per channel) before `post` returns;
//!   one still queued when the process stops is sent after the next start.
//! - **Ordered.** Each channel's queue is sent strictly in order: a message stays at the head
//!   until it is sent or given up on.
//! - **Paced.** About one call per second per channel ([`DEFAULT_PACE`]); after HTTP 429 the
//!   channel waits the whole `Retry-After` before its next call.
//! - **Retried when it may help.** Network errors, timeouts and 5xx are retried with backoff
//!   (1 s doubling to a minute), indefinitely: a timeline entry is never dropped because Slack
//!   was down. Slack's `ok: false` answers are not retried: the message is parked in the
//!   store with the error (`Store::outbox_parked`) and logged with the method.
//! - **Sent once across replicas.** A channel's queue is drained only by the holder of the
//!   lease `slack-outbox:<channel>`, renewed before every call. A message is removed after
//!   Slack accepted it, so a replica that dies between the two causes one repeat, never a
//!   loss.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::domain::{IncidentId, Timestamp};
use crate::slack::blocks::Rendered;
use crate::slack::client::{SlackApi, SlackError};
use crate::store::{SharedStore, StoreError};

/// Time between two calls in one channel (Slack: "1 message per second per channel").
pub const DEFAULT_PACE: Duration = Duration::from_secs(1);

/// How long a replica holds a channel's queue without renewing.
const LEASE_TTL: Duration = Duration::from_secs(20);

/// How often the sender looks for queues without waiting to be woken (other replicas' posts,
/// a lease another replica let expire).
const POLL: Duration = Duration::from_secs(2);

/// The longest wait between two tries of a message Slack could not take.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a queued item asks for, as stored (tagged JSON, so new kinds can be added).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Envelope {
    /// `chat.postMessage` of a rendered message.
    Message {
        #[serde(default)]
        thread_ts: Option<String>,
        text: String,
        blocks: Vec<Value>,
        queued_at: Timestamp,
    },
    /// Bring an incident's card and thread up to date (`slack::cards::sync`). The incident
    /// itself records what is already in Slack, so a repeated sync posts nothing twice.
    IncidentSync {
        incident: IncidentId,
        queued_at: Timestamp,
    },
}

/// The queueing side: cheap to clone, shared by handlers, the card task and the sender.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    /// Wakes this process's sender when something is queued.
    wake: Notify,
    /// Incidents this process's sender is syncing right now. A change to one of them needs
    /// no new queue item: the running sync looks again once it is done (see
    /// `Sender::deliver`), so a burst of changes (the sync's own saves included) costs one
    /// sync, not one per change.
    syncing: Mutex<HashSet<IncidentId>>,
    /// Milliseconds between two calls in a channel; tests shorten it.
    pace_ms: AtomicU64,
}

impl Outbox {
    pub fn new(store: SharedStore) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                store,
                wake: Notify::new(),
                syncing: Mutex::new(HashSet::new()),
                pace_ms: AtomicU64::new(DEFAULT_PACE.as_millis() as u64),
            }),
        }
    }

    /// Queues a message for `channel` (a reply in a thread when `thread_ts` is set). Returns
    /// once it is stored; it is sent in order after everything queued before it.
    pub async fn post(
        &self,
        channel: &str,
        thread_ts: Option<&str>,
        rendered: &Rendered,
    ) -> Result<(), StoreError> {
        let envelope = Envelope::Message {
            thread_ts: thread_ts.map(str::to_owned),
            text: rendered.text.clone(),
            blocks: rendered.blocks.clone(),
            queued_at: Timestamp::now(),
        };
        self.push(channel, &envelope).await
    }

    /// Queues a card sync for `incident` in `channel`, unless this process is syncing it
    /// right now (that sync looks again when it is done).
    pub async fn sync_incident(
        &self,
        channel: &str,
        incident: &IncidentId,
    ) -> Result<(), StoreError> {
        if self.syncing().contains(incident) {
            return Ok(());
        }
        let envelope = Envelope::IncidentSync {
            incident: incident.clone(),
            queued_at: Timestamp::now(),
        };
        self.push(channel, &envelope).await
    }

    /// Sets the time between two calls in a channel (tests use a few milliseconds).
    pub fn set_pace(&self, pace: Duration) {
        let ms = u64::try_from(pace.as_millis()).unwrap_or(u64::MAX);
        self.inner.pace_ms.store(ms, Ordering::Relaxed);
    }

    pub fn pace(&self) -> Duration {
        Duration::from_millis(self.inner.pace_ms.load(Ordering::Relaxed))
    }

    /// How many messages `channel` has waiting.
    pub async fn queued(&self, channel: &str) -> Result<usize, StoreError> {
        self.inner.store.outbox_len(channel).await
    }

    async fn push(&self, channel: &str, envelope: &Envelope) -> Result<(), StoreError> {
        let payload = serde_json::to_value(envelope)
            .map_err(|e| StoreError::Corrupt(format!("an outbox message: {e}")))?;
        self.inner.store.outbox_push(channel, &payload).await?;
        self.inner.wake.notify_one();
        Ok(())
    }

    fn syncing(&self) -> std::sync::MutexGuard<'_, HashSet<IncidentId>> {
        self.inner.syncing.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Why a call could not be made.
#[derive(Debug)]
pub enum CallError {
    /// Slack refused it (`ok: false`): do not repeat it.
    Refused(SlackError),
    /// Slack could not be reached (or misbehaved): try again later.
    Transient(SlackError),
    /// Another replica took the channel's queue over; stop without touching it.
    LeaseLost,
    Shutdown,
    Store(StoreError),
}

impl From<StoreError> for CallError {
    fn from(e: StoreError) -> Self {
        CallError::Store(e)
    }
}

/// One channel's turn at the Web API: the pace, 429 waits and the lease, for every call the
/// sender makes in that channel (messages and card syncs alike).
pub struct ChannelCalls<'a> {
    pub api: &'a SlackApi,
    pub channel: &'a str,
    store: &'a SharedStore,
    outbox: &'a Outbox,
    holder: &'a str,
    shutdown: &'a CancellationToken,
    /// No call before this instant (pace, or `Retry-After`).
    next_call: Instant,
}

impl ChannelCalls<'_> {
    /// Runs `call` when the channel may call again, repeating it after each 429 once
    /// `Retry-After` has passed.
    pub async fn call<T, F, Fut>(&mut self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SlackError>>,
    {
        loop {
            self.wait_until(self.next_call).await?;
            self.renew_lease().await?;
            let result = call().await;
            self.next_call = Instant::now() + self.outbox.pace();
            match result {
                Ok(value) => return Ok(value),
                Err(SlackError::RateLimited { retry_after }) => {
                    tracing::warn!(
                        channel = self.channel,
                        retry_after_ms = retry_after.as_millis() as u64,
                        "slack rate limited the channel; waiting"
                    );
                    self.next_call = Instant::now() + retry_after;
                }
                Err(e) if e.is_transient() => return Err(CallError::Transient(e)),
                Err(e) => return Err(CallError::Refused(e)),
            }
        }
    }

    /// Waits until `at`, renewing the channel's lease meanwhile: a `Retry-After` longer
    /// than the lease must not let another replica take the queue and call sooner.
    async fn wait_until(&self, at: Instant) -> Result<(), CallError> {
        loop {
            let step = at.min(Instant::now() + LEASE_TTL / 4);
            tokio::select! {
                _ = tokio::time::sleep_until(step) => {}
                _ = self.shutdown.cancelled() => return Err(CallError::Shutdown),
            }
            if step >= at {
                return Ok(());
            }
            self.renew_lease().await?;
        }
    }

    async fn renew_lease(&self) -> Result<(), CallError> {
        let lease = self
            .store
            .acquire_lease(
                &lease_name(self.channel),
                self.holder,
                LEASE_TTL,
                Timestamp::now(),
            )
            .await?;
        match lease {
            Some(_) => Ok(()),
            None => Err(CallError::LeaseLost),
        }
    }
}

fn lease_name(channel: &str) -> String {
    format!("slack-outbox:{channel}")
}

/// What brings an incident's card and thread up to date for [`Envelope::IncidentSync`]
/// (`slack::cards::CardSync`). The outbox only knows this much of it: the cards sit above
/// the outbox and queue their work here, so the outbox must not depend on them.
pub trait SyncIncident: Send + Sync + 'static {
    /// Makes the calls that bring incident `id`'s card and thread in `calls.channel` up to
    /// date; an error stops the drain and is retried like a message's.
    fn sync(
        &self,
        calls: &mut ChannelCalls<'_>,
        id: &IncidentId,
    ) -> impl std::future::Future<Output = Result<(), CallError>> + Send;
}

/// Sends what the outbox holds. One per process; it drains each channel's queue in its own
/// task while this process holds that channel's lease.
pub struct Sender<C> {
    api: SlackApi,
    outbox: Outbox,
    store: SharedStore,
    /// Card rendering and bookkeeping for [`Envelope::IncidentSync`].
    cards: C,
    /// This process's name for leases.
    holder: String,
}

impl<C: SyncIncident> Sender<C> {
    pub fn new(api: SlackApi, outbox: Outbox, cards: C) -> Self {
        let store = Arc::clone(&outbox.inner.store);
        Sender {
            api,
            outbox,
            store,
            cards,
            holder: format!("outbox-{}", IncidentId::generate().as_str()),
        }
    }

    /// Runs until `shutdown`: a drain task for every channel with queued messages.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut drains: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            drains.retain(|_, task| !task.is_finished());
            match self.store.outbox_channels().await {
                Ok(channels) => {
                    for channel in channels {
                        // Queues with a `:` in their name are other senders' (PagerDuty's
                        // `pagerduty:events`); a Slack conversation id never has one.
                        if channel.contains(':') || drains.contains_key(&channel) {
                            continue;
                        }
                        let sender = Arc::clone(&self);
                        let (name, stop) = (channel.clone(), shutdown.clone());
                        drains.insert(
                            channel,
                            tokio::spawn(async move { sender.drain(&name, &stop).await }),
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the slack outbox"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.outbox.inner.wake.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        for (_, task) in drains {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "a slack outbox task panicked");
            }
        }
    }

    /// Sends `channel`'s queue, oldest first, until it is empty, the lease is someone
    /// else's, or shutdown. Returns without error: problems are logged and retried.
    pub async fn drain(&self, channel: &str, shutdown: &CancellationToken) {
        let mut calls = ChannelCalls {
            api: &self.api,
            channel,
            store: &self.store,
            outbox: &self.outbox,
            holder: &self.holder,
            shutdown,
            next_call: Instant::now(),
        };
        let mut failures: u32 = 0;
        loop {
            if shutdown.is_cancelled() {
                // Let the next process (a restart, another replica) take over at once.
                self.release(channel).await;
                return;
            }
            match calls.renew_lease().await {
                Ok(()) => {}
                Err(CallError::LeaseLost) => return,
                Err(e) => {
                    tracing::warn!(channel, error = ?e, "cannot take the slack outbox lease");
                    return;
                }
            }
            let head = match self.store.outbox_head(channel).await {
                Ok(Some(head)) => head,
                Ok(None) => {
                    // The pace and a `Retry-After` live in `calls`: keep the lease until
                    // they are over, so that the next drain (this process's or another
                    // replica's, which start with no wait) cannot call sooner. Something
                    // queued meanwhile is sent by this drain, at the pace.
                    if calls.next_call > Instant::now() {
                        if calls.wait_until(calls.next_call).await.is_err() {
                            self.release(channel).await;
                            return;
                        }
                        if matches!(self.store.outbox_head(channel).await, Ok(Some(_))) {
                            continue;
                        }
                    }
                    self.release(channel).await;
                    // Something queued while the lease was given up is taken at once rather
                    // than on the sender's next poll.
                    match self.store.outbox_head(channel).await {
                        Ok(Some(_)) => continue,
                        _ => return,
                    }
                }
                Err(e) => {
                    tracing::warn!(channel, error = %e, "cannot read the slack outbox");
                    return;
                }
            };
            let outcome = match serde_json::from_value::<Envelope>(head.payload.clone()) {
                Ok(envelope) => self.deliver(&mut calls, &envelope).await,
                Err(e) => Err(CallError::Refused(SlackError::Api {
                    method: "outbox".to_owned(),
                    error: format!("unreadable message: {e}"),
                })),
            };
            let settle = match outcome {
                Ok(()) => None,
                Err(CallError::Refused(e)) => {
                    tracing::error!(channel, seq = head.seq, error = %e, "slack refused a message; parked, not retried");
                    Some(e.to_string())
                }
                Err(CallError::Transient(e)) => {
                    failures += 1;
                    let wait = backoff(failures);
                    tracing::warn!(channel, seq = head.seq, error = %e, retry_in_ms = wait.as_millis() as u64, "slack unreachable; will retry");
                    calls.next_call = calls.next_call.max(Instant::now() + wait);
                    continue;
                }
                // Before anything was sent (or, for a card sync, with its progress saved):
                // trying the same message again is safe.
                Err(CallError::Store(e)) => {
                    failures += 1;
                    tracing::warn!(channel, error = %e, "slack outbox: store error; will retry");
                    calls.next_call = calls.next_call.max(Instant::now() + backoff(failures));
                    continue;
                }
                Err(CallError::LeaseLost) => return,
                Err(CallError::Shutdown) => {
                    self.release(channel).await;
                    return;
                }
            };
            failures = 0;
            if !self.settle(channel, head.seq, settle, shutdown).await {
                return;
            }
        }
    }

    /// Removes a handled message from the queue (parked with `error` when Slack refused
    /// it). Retries the store, never the message: Slack already has it. False on shutdown.
    async fn settle(
        &self,
        channel: &str,
        seq: u64,
        error: Option<String>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut failures = 0;
        loop {
            let done = match &error {
                None => self.store.outbox_ack(channel, seq).await,
                Some(error) => {
                    self.store
                        .outbox_park(channel, seq, error, Timestamp::now())
                        .await
                }
            };
            match done {
                Ok(_) => return true,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(channel, seq, error = %e, "slack outbox: cannot remove a sent message; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff(failures)) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }

    async fn deliver(
        &self,
        calls: &mut ChannelCalls<'_>,
        envelope: &Envelope,
    ) -> Result<(), CallError> {
        match envelope {
            Envelope::Message {
                thread_ts,
                text,
                blocks,
                ..
            } => {
                let api = calls.api;
                let channel = calls.channel;
                calls
                    .call(|| api.post_message(channel, thread_ts.as_deref(), text, blocks))
                    .await
                    .map(drop)
            }
            Envelope::IncidentSync { incident, .. } => {
                self.outbox.syncing().insert(incident.clone());
                let synced = self.cards.sync(calls, incident).await;
                self.outbox.syncing().remove(incident);
                synced?;
                // A change announced while the sync ran was not queued (see `syncing`);
                // it is in the store by now, so one more look catches it.
                self.cards.sync(calls, incident).await
            }
        }
    }

    /// Gives the channel's lease up, if this process holds it.
    async fn release(&self, channel: &str) {
        // Renewing returns the lease with its token, which releasing needs; it fails (None)
        // when another process holds it, and then there is nothing to give up.
        if let Ok(Some(current)) = self
            .store
            .acquire_lease(
                &lease_name(channel),
                &self.holder,
                LEASE_TTL,
                Timestamp::now(),
            )
            .await
        {
            if let Err(e) = self.store.release_lease(&current).await {
                tracing::debug!(channel, error = %e, "cannot release the slack outbox lease");
            }
        }
    }
}

/// 1 s, 2 s, 4 s, … up to a minute.
fn backoff(failures: u32) -> Duration {
    let seconds = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(seconds).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn envelopes_are_tagged_json() {
        let envelope = Envelope::IncidentSync {
            incident: IncidentId::parse("inc-abc").unwrap(),
            queued_at: Timestamp::from_unix_millis(0),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["kind"], "incident_sync");
        assert_eq!(serde_json::from_value::<Envelope>(json).unwrap(), envelope);
    }
}
