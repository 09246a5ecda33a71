//! Serving a listener with connection hygiene: a bound on the time a
//! request head may take, idle keep-alive connections closed, and a cap on
//! open connections, with the health routes still answering at the cap.
//!
//! hyper's own `header_read_timeout` also runs while a kept-alive
//! connection waits for its next request, which would make the idle limit
//! the head limit; so both are kept here, by a watcher per connection that
//! knows whether a request is in flight and whether a head has begun.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;

/// The default bound on the time from a connection's first byte of a
/// request (or from its accept) to the end of the request's head.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time a kept-alive connection may wait for its next request.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Descriptors kept back from the connection cap, beside the health
/// reserve, for everything else the process holds: the store's
/// connections, the agent check, files, the admin listener's connections.
pub const FD_RESERVE: usize = 256;

/// The default cap on a listener's open connections, websockets included:
/// the process's open-file limit as it is now (the gate raises it first,
/// see [`raise_open_file_limit`]) less [`FD_RESERVE`] and
/// [`HEALTH_RESERVE`], or less half of it when the limit is that low. A
/// process without a limit gets 1,000,000.
#[must_use]
pub fn default_max_connections() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let files = limit
        .current
        .map_or(1_000_000, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let reserve = (FD_RESERVE + HEALTH_RESERVE).min(files / 2);
    (files - reserve).clamp(1, 1_000_000)
}

/// Raises this process's soft open-file limit to its hard one, as a
/// process holding thousands of sockets must (the usual soft default of
/// 1,024 is for programs that open a few files), and returns the soft limit
/// now in force: `None` when there is none.
#[must_use]
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Connections over the cap still served, one request each to the gate's
/// own routes, so the load balancer's check and `bg-ctl` get answers while
/// the cap is reached.
pub const HEALTH_RESERVE: usize = 64;
/// The limits for a connection served from the reserve.
const RESERVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The limits a listener is served with.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// See [`DEFAULT_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// See [`DEFAULT_IDLE_TIMEOUT`]. Websockets, once upgraded, are not
    /// subject to it.
    pub idle_timeout: Duration,
    /// See [`default_max_connections`].
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop` resolves,
/// then shuts every connection down gracefully and waits for them. A
/// connection over the cap is served by `reserve` alone (give it the gate's
/// own routers on this listener: [`Gate::public_router`](crate::Gate::public_router),
/// and [`Gate::admin_router`](crate::Gate::admin_router) where it is served
/// here too), one request, from a small reserve; any other path is answered
/// `503` with the JSON kind `over_capacity`. When the reserve is taken too,
/// the connection is closed at once. Requests carry
/// `ConnectInfo<SocketAddr>`, as the probe log wants.
///
/// This is how the standalone gate serves each listener; a service that
/// serves its own router with the gate's routers merged can use it too.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    reserve_router: Router,
    limits: Limits,
    stop: impl Future<Output = ()>,
) {
    let health = reserve_router.fallback(over_capacity);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let reserve = Arc::new(Semaphore::new(HEALTH_RESERVE));
    let (stopping, _) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let (stream, addr) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors, most likely: wait for some to free.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while conns.try_join_next().is_some() {}
        let (router, limits, permit) = if let Ok(p) = Arc::clone(&slots).try_acquire_owned() {
            (router.clone(), limits, p)
        } else if let Ok(p) = Arc::clone(&reserve).try_acquire_owned() {
            let tight = Limits {
                header_timeout: limits.header_timeout.min(RESERVE_TIMEOUT),
                idle_timeout: limits.idle_timeout.min(RESERVE_TIMEOUT),
                max_connections: limits.max_connections,
            };
            (health.clone(), tight, p)
        } else {
            tracing::debug!(%addr, "connection refused: the cap and the health reserve are taken");
            drop(stream);
            continue;
        };
        let stopping = stopping.subscribe();
        conns.spawn(connection(stream, addr, router, limits, permit, stopping));
    }
    let _ = stopping.send(true);
    while conns.join_next().await.is_some() {}
}

/// What a connection served from the reserve gets for anything but the
/// gate's own routes.
async fn over_capacity() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = bg_state::wire::ErrorBody::new(
        "over_capacity",
        "this listener holds --max-connections connections: only the gate's own routes answer until some close",
    );
    (
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        [(axum::http::header::RETRY_AFTER, "1")],
        axum::Json(body),
    )
        .into_response()
}

/// What the watcher of one connection knows.
#[derive(Debug)]
struct Activity {
    /// Requests dispatched and not yet answered.
    in_flight: AtomicUsize,
    /// Whether bytes arrived since the connection last went idle (a head
    /// has begun), and since when the connection has been idle.
    reading: AtomicBool,
    idle_since: Mutex<Instant>,
    /// When the first byte since going idle arrived, in ms after `born`.
    head_started_ms: AtomicU64,
    /// When bytes last went out, in ms after `born`: a response body still
    /// streaming (server-sent events, a slow download) is not idle.
    wrote_ms: AtomicU64,
    born: Instant,
}

impl Activity {
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            in_flight: AtomicUsize::new(0),
            // A new connection's head timeout runs from its accept.
            reading: AtomicBool::new(true),
            idle_since: Mutex::new(now),
            head_started_ms: AtomicU64::new(0),
            wrote_ms: AtomicU64::new(0),
            born: now,
        }
    }

    fn read_some(&self) {
        if !self.reading.swap(true, Ordering::AcqRel) {
            let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.head_started_ms.store(ms, Ordering::Release);
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn wrote_some(&self) {
        self.wrote_ms.store(self.ms(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn request_done(&self) {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.reading.store(false, Ordering::Release);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection is due to be closed, if nothing happens first;
    /// `None` while a request is in flight.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if self.reading.load(Ordering::Acquire) {
            let started =
                self.born + Duration::from_millis(self.head_started_ms.load(Ordering::Acquire));
            Some(started + limits.header_timeout)
        } else {
            let since = *self
                .idle_since
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let wrote = self.born + Duration::from_millis(self.wrote_ms.load(Ordering::Relaxed));
            Some(since.max(wrote) + limits.idle_timeout)
        }
    }
}

/// A connection's stream, noting when bytes arrive; it holds the
/// connection's place under the cap for as long as it lives (through a
/// websocket upgrade too).
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Ends a request's in-flight count when dropped, answered or not.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

async fn connection(
    stream: TcpStream,
    addr: SocketAddr,
    router: Router,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        stream,
        activity: Arc::clone(&activity),
        _permit: permit,
    });
    let seen = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        seen.request_started();
        let guard = InFlight(Arc::clone(&seen));
        req.extensions_mut().insert(ConnectInfo(addr));
        let router = router.clone();
        async move {
            let res = router.oneshot(req.map(Body::new)).await;
            drop(guard);
            res
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut shutting_down = false;
    loop {
        // Re-checked at least this often, so a request's end is noticed.
        let deadline = activity.deadline(&limits);
        let wake = deadline
            .unwrap_or_else(|| Instant::now() + limits.idle_timeout.min(limits.header_timeout));
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::trace!(%addr, error = %e, "connection ended");
                }
                return;
            }
            () = tokio::time::sleep_until(wake.into()) => {
                // Recomputed: a request may have begun or ended meanwhile.
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%addr, "connection closed: request head or idle timeout");
                    return;
                }
            }
            changed = stopping.changed(), if !shutting_down => {
                shutting_down = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
