//! The live stream, `GET /api/stream`: server-sent events of incident and status changes.
//!
//! In: the service's incident-change announcements and its monitor-cycle counter. Out: SSE
//! events, each with an id (a per-process counter), a kind and JSON data:
//! - `hello` on connect: the mode and whether automation is paused;
//! - `incident` when an incident is created or changes: its id, status, version, signal,
//!   resource, severity and summary (the page fetches the rest);
//! - `status` after every monitor cycle on this replica: the signal readings;
//! - `resync` when this client fell behind and missed events: read everything again.
//!
//! One fan-out task turns each change into an event once and broadcasts the finished event to
//! every client, so a change costs one store read however many pages are open. Read-only:
//! nothing here writes. Streams end when the server shuts down, so graceful shutdown is never
//! held up by an open page; a keep-alive comment is sent every `[http] sse_keep_alive`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde_json::json;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::AppState;
use crate::service::{Sentinel, ServiceError};
use crate::telemetry::metrics::metrics;

/// How many finished events wait for a slow client before it gets `resync` instead.
const CLIENT_BACKLOG: usize = 256;

/// One event, made once and sent to every client.
#[derive(Debug)]
pub struct StreamEvent {
    pub id: u64,
    pub kind: &'static str,
    pub data: String,
}

/// The fan-out point between the service and the connected clients.
pub struct Hub {
    events: broadcast::Sender<Arc<StreamEvent>>,
    /// Ids for events; shared by the fan-out task and the per-client `hello`/`resync`.
    next_id: AtomicU64,
    /// Ends every client stream when the server shuts down.
    shutdown: CancellationToken,
}

impl Hub {
    /// The hub, with its fan-out task running until `shutdown`.
    pub fn start(sentinel: Arc<Sentinel>, shutdown: CancellationToken) -> Arc<Hub> {
        let (events, _) = broadcast::channel(CLIENT_BACKLOG);
        let hub = Arc::new(Hub {
            events,
            next_id: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(fan_out(Arc::clone(&hub), sentinel));
        hub
    }

    fn event(&self, kind: &'static str, data: String) -> StreamEvent {
        StreamEvent {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            kind,
            data,
        }
    }

    fn publish(&self, event: StreamEvent) {
        // No client connected is fine.
        let _ = self.events.send(Arc::new(event));
    }

    /// How many clients are connected.
    pub fn clients(&self) -> usize {
        self.events.receiver_count()
    }
}

async fn fan_out(hub: Arc<Hub>, sentinel: Arc<Sentinel>) {
    let mut changes = sentinel.subscribe();
    let mut cycles = sentinel.watch_cycles();
    loop {
        tokio::select! {
            () = hub.shutdown.cancelled() => return,
            change = changes.recv() => match change {
                Ok(id) => match sentinel.incident(&id).await {
                    Ok(incident) => {
                        let data = json!({
                            "id": incident.id,
                            "status": incident.status,
                            "version": incident.version,
                            "signal": incident.signal,
                            "resource": incident.resource,
                            "severity": incident.severity,
                            "summary": incident.summary,
                        });
                        hub.publish(hub.event("incident", data.to_string()));
                    }
                    Err(ServiceError::NotFound(_)) => {}
                    Err(e) => {
                        tracing::warn!(incident = %id, error = %e, "stream: cannot read the incident");
                        hub.publish(hub.event("resync", "{}".to_owned()));
                    }
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "stream: fell behind the incident changes");
                    hub.publish(hub.event("resync", "{}".to_owned()));
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            changed = cycles.changed() => {
                if changed.is_err() {
                    return;
                }
                let status = sentinel.signal_readings();
                let data = json!({ "signals": status });
                hub.publish(hub.event("status", data.to_string()));
            }
        }
    }
}

/// Counts the client in `sentinel_sse_clients` for as long as its stream lives.
struct Connected;

impl Connected {
    fn new() -> Self {
        metrics().sse_connected();
        Connected
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        metrics().sse_disconnected();
    }
}

fn to_sse(event: &StreamEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.kind)
        .data(&event.data)
}

/// `GET /api/stream`.
pub async fn stream(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let hub = Arc::clone(&state.stream);
    let receiver = hub.events.subscribe();
    let settings = state.sentinel.settings();
    let paused = state.sentinel.paused().await.ok();
    let hello = hub.event(
        "hello",
        json!({ "mode": settings.mode.as_str(), "paused": paused }).to_string(),
    );
    let keep_alive = settings.http.sse_keep_alive.0;
    let shutdown = hub.shutdown.clone();
    struct Client {
        hub: Arc<Hub>,
        receiver: broadcast::Receiver<Arc<StreamEvent>>,
        first: Option<StreamEvent>,
        _connected: Connected,
    }
    let client = Client {
        hub,
        receiver,
        first: Some(hello),
        _connected: Connected::new(),
    };
    let events = futures::stream::unfold(client, |mut client| async move {
        if let Some(hello) = client.first.take() {
            let event = to_sse(&hello);
            return Some((Ok(event), client));
        }
        let event = match client.receiver.recv().await {
            Ok(event) => to_sse(&event),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                to_sse(&client.hub.event("resync", "{}".to_owned()))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), client))
    });
    let events = futures::StreamExt::take_until(events, shutdown.cancelled_owned());
    Sse::new(events).keep_alive(KeepAlive::new().interval(keep_alive).text("keep-alive"))
}
