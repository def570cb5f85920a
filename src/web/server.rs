//! The accept loop: HTTP/1 connections served by hyper with the limits `axum::serve` lacks.
//!
//! In: the bound listener, the router and `[http] header_timeout` / `max_connections`. Out:
//! served connections until shutdown, then a graceful drain.
//!
//! - A connection that does not finish its request head within `header_timeout` is closed
//!   (hyper's header-read timeout); so is a kept-alive connection idle that long.
//! - At most `max_connections` are open. At the cap the oldest *idle* connection (no request
//!   under way: half-open, sending its head slowly, or kept alive) is closed to make room;
//!   with none idle, accepting waits.
//! - When the process runs out of file descriptors (`EMFILE`), the oldest idle connection is
//!   closed and the waiting one accepted; with none idle, a reserve descriptor is freed to
//!   accept and close the waiting connection, so the backlog never stalls. Together these
//!   keep `/healthz` answered while slow or half-open connections hold every descriptor.
//!
//! Must not: close a connection with a request or a response (an SSE stream) under way,
//! except at shutdown.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// The limits the loop enforces (`[http]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown`, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let open = Arc::new(OpenConnections::default());
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    // Freed to accept (and close) one waiting connection when descriptors run out and no
    // connection can be shed; reopened right after.
    let mut reserve = open_reserve();
    let mut warned_at: Option<Instant> = None;
    loop {
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // At the cap: make room by closing the oldest idle connection, else wait.
                open.shed_oldest_idle().await;
                tokio::select! {
                    permit = Arc::clone(&slots).acquire_owned() => {
                        permit.expect("the connection semaphore is never closed")
                    }
                    () = shutdown.cancelled() => break,
                }
            }
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                open.spawn(stream, permit, &router, &builder, &shutdown);
            }
            Err(e) if out_of_descriptors(&e) => {
                drop(permit);
                if warned_at.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        error = %e,
                        open = open.len(),
                        "out of file descriptors: closing idle connections to accept new ones"
                    );
                    warned_at = Some(Instant::now());
                }
                if open.shed_oldest_idle().await {
                    continue;
                }
                // Nothing idle to close: accept the waiting connection with the reserve
                // descriptor and close it at once rather than leave it hanging.
                drop(reserve.take());
                if let Ok(Ok((stream, _))) =
                    tokio::time::timeout(Duration::from_millis(10), listener.accept()).await
                {
                    drop(stream);
                }
                reserve = open_reserve();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => {
                // A connection reset before it was accepted, and the like: the next one.
                tracing::debug!(error = %e, "accept failed");
            }
        }
    }
    drop(listener);
    // Shutdown: every connection finishes what it is doing (see `OpenConnections::spawn`);
    // all permits back means all connections closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

fn open_reserve() -> Option<std::fs::File> {
    std::fs::File::open("/dev/null").ok()
}

fn out_of_descriptors(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    matches!(
        Errno::from_io_error(e),
        Some(Errno::MFILE) | Some(Errno::NFILE) | Some(Errno::NOBUFS) | Some(Errno::NOMEM)
    )
}

/// The open connections, oldest first (ids only grow), with whether each has a request under
/// way, so the oldest idle one can be closed.
#[derive(Default)]
struct OpenConnections {
    next_id: AtomicU64,
    by_id: Mutex<BTreeMap<u64, Connection>>,
}

struct Connection {
    /// Requests (with their response bodies) under way on this connection.
    busy: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl OpenConnections {
    fn len(&self) -> usize {
        self.by_id.lock().expect("connections lock").len()
    }

    fn spawn(
        self: &Arc<Self>,
        stream: TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
        router: &Router,
        builder: &Arc<hyper::server::conn::http1::Builder>,
        shutdown: &CancellationToken,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let service = {
            let busy = Arc::clone(&busy);
            let router = router.clone();
            hyper::service::service_fn(move |request: Request<Incoming>| {
                let under_way = UnderWay::start(&busy);
                let router = router.clone();
                async move {
                    let response = router
                        .oneshot(request.map(Body::new))
                        .await
                        .unwrap_or_else(|never: Infallible| match never {});
                    // The request counts as under way until its body is sent (or dropped).
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _under_way: under_way,
                    }))
                }
            })
        };
        let builder = Arc::clone(builder);
        let shutdown = shutdown.clone();
        let forget = Forget {
            id,
            open: Arc::clone(self),
        };
        // The map is locked while spawning, so the task's own removal (on exit) always
        // comes after its insertion.
        let mut by_id = self.by_id.lock().expect("connections lock");
        let task = tokio::spawn(async move {
            let _forget = forget;
            let _permit = permit;
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        by_id.insert(id, Connection { busy, task });
    }

    /// Closes the oldest connection with no request under way; false when there is none.
    /// Returns once it is closed, its descriptor free.
    async fn shed_oldest_idle(&self) -> bool {
        let task = {
            let mut by_id = self.by_id.lock().expect("connections lock");
            let oldest = by_id
                .iter()
                .find(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            match oldest.and_then(|id| by_id.remove(&id)) {
                Some(connection) => connection.task,
                None => return false,
            }
        };
        task.abort();
        let _ = task.await;
        tracing::debug!("closed the oldest idle connection to make room");
        true
    }
}

/// Removes a connection from [`OpenConnections`] when its task ends, however it ends.
struct Forget {
    id: u64,
    open: Arc<OpenConnections>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Ok(mut by_id) = self.open.by_id.lock() {
            by_id.remove(&self.id);
        }
    }
}

/// One request under way on a connection, until dropped.
struct UnderWay(Arc<AtomicUsize>);

impl UnderWay {
    fn start(busy: &Arc<AtomicUsize>) -> Self {
        busy.fetch_add(1, Ordering::AcqRel);
        UnderWay(Arc::clone(busy))
    }
}

impl Drop for UnderWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as under way while it is being sent.
struct Tracked {
    body: Body,
    _under_way: UnderWay,
}

impl http_body::Body for Tracked {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
