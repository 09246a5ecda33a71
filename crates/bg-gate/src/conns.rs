//! Connection tracking: websockets and in-flight requests, and the paced
//! drain that asks lingering websocket clients to move to the live colour —
//! every one of them, including those that arrive while it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// The close code a drained websocket is closed with: 1012, "service restart".
pub const DRAIN_CLOSE_CODE: u16 = 1012;

/// Counts and handles of the connections a service holds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

/// Whether a drain may go on: asked before every batch.
type KeepOn = Arc<dyn Fn() -> bool + Send + Sync>;

/// The drain under way, if any: what its task reads before every batch.
struct Draining {
    batch: usize,
    pause: Duration,
    /// `None`: for as long as `keep_on` says.
    until: Option<Instant>,
    keep_on: KeepOn,
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("batch", &self.batch)
            .field("pause", &self.pause)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Inner {
    requests: AtomicU64,
    next_id: AtomicU64,
    /// Open websockets; `None` once asked to close.
    websockets: Mutex<BTreeMap<u64, Option<oneshot::Sender<()>>>>,
    draining: Mutex<Option<Draining>>,
    /// Websockets opened while a drain ran, since the latest drain call.
    arrived_draining: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Connections {
    /// Registers a websocket; keep the guard for the connection's lifetime.
    #[must_use]
    pub fn track_websocket(&self) -> WebSocketGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if locked(&self.inner.draining).is_some() {
            self.inner.arrived_draining.fetch_add(1, Ordering::Relaxed);
        }
        self.sockets().insert(id, Some(tx));
        WebSocketGuard {
            conns: Arc::clone(&self.inner),
            id,
            drain: Some(rx),
        }
    }

    /// Registers an in-flight request; keep the guard until it is answered.
    #[must_use]
    pub fn track_request(&self) -> RequestGuard {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            conns: Arc::clone(&self.inner),
        }
    }

    /// Open websockets.
    #[must_use]
    pub fn websockets(&self) -> u64 {
        self.sockets().len() as u64
    }

    /// Requests in flight.
    #[must_use]
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Websockets opened while a drain was running, counted since the
    /// latest call to [`drain`](Self::drain) (one that started a drain or
    /// joined the running one): clients that a load balancer still sends to
    /// a colour being drained.
    #[must_use]
    pub fn arrived_while_draining(&self) -> u64 {
        self.inner.arrived_draining.load(Ordering::Relaxed)
    }

    fn sockets(&self) -> MutexGuard<'_, BTreeMap<u64, Option<oneshot::Sender<()>>>> {
        locked(&self.inner.websockets)
    }

    /// Asks every open websocket to close, `batch` at a time with `pause`
    /// between batches, so the clients do not all reconnect at once — and
    /// goes on asking the ones that open later, at the same pace, for
    /// `lasting` (`None`: with no end of its own), as long as `keep_on`
    /// (asked before every batch) says so. A drain called while one runs
    /// joins it: the newer pace, the later end, the newer `keep_on`.
    ///
    /// Returns how many open websockets were not asked yet; the asking goes
    /// on in the background.
    pub fn drain(
        &self,
        batch: usize,
        pause: Duration,
        lasting: Option<Duration>,
        keep_on: impl Fn() -> bool + Send + Sync + 'static,
    ) -> usize {
        let until = lasting.map(|d| Instant::now() + d);
        let order = Draining {
            batch: batch.max(1),
            pause,
            until,
            keep_on: Arc::new(keep_on),
        };
        let unasked = self.sockets().values().filter(|s| s.is_some()).count();
        let mut draining = locked(&self.inner.draining);
        // Counted from this call on, joined or new: what its caller sees
        // arrive is what its own drain could not keep away.
        self.inner.arrived_draining.store(0, Ordering::Relaxed);
        match draining.as_mut() {
            Some(d) => {
                d.until = match (d.until, order.until) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    _ => None,
                };
                d.batch = order.batch;
                d.pause = order.pause;
                d.keep_on = order.keep_on;
            }
            None => {
                *draining = Some(order);
                tokio::spawn(Self::keep_draining(Arc::clone(&self.inner)));
            }
        }
        unasked
    }

    /// The drain's task: a batch, a pause, until its end, `keep_on` says
    /// stop, or every handle to the connections is gone.
    async fn keep_draining(inner: Arc<Inner>) {
        let weak = Arc::downgrade(&inner);
        drop(inner);
        loop {
            let Some(inner) = weak.upgrade() else { return };
            let (batch, pause) = {
                let mut draining = locked(&inner.draining);
                let Some(d) = draining.as_ref() else { return };
                // Decided under the lock, so a drain called meanwhile
                // either extends this one or starts the next.
                if d.until.is_some_and(|u| Instant::now() >= u) || !(d.keep_on)() {
                    *draining = None;
                    return;
                }
                (d.batch, d.pause)
            };
            let asked: Vec<oneshot::Sender<()>> = locked(&inner.websockets)
                .values_mut()
                .filter_map(Option::take)
                .take(batch)
                .collect();
            drop(inner);
            for tx in asked {
                let _ = tx.send(());
            }
            tokio::time::sleep(pause).await;
        }
    }
}

/// A tracked websocket. Dropping it ends the tracking.
#[derive(Debug)]
pub struct WebSocketGuard {
    conns: Arc<Inner>,
    id: u64,
    drain: Option<oneshot::Receiver<()>>,
}

impl WebSocketGuard {
    /// Resolves when a drain asks this connection to close: send a close
    /// frame with [`DRAIN_CLOSE_CODE`] and end the connection. Pending forever
    /// otherwise, so it sits in a `select!` beside the socket.
    pub async fn drain_requested(&mut self) {
        match self.drain.as_mut() {
            Some(rx) => {
                if rx.await.is_ok() {
                    self.drain = None;
                    return;
                }
                self.drain = None;
                std::future::pending::<()>().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for WebSocketGuard {
    fn drop(&mut self) {
        locked(&self.conns.websockets).remove(&self.id);
    }
}

/// A tracked request. Dropping it ends the tracking.
#[derive(Debug)]
pub struct RequestGuard {
    conns: Arc<Inner>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conns.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_is_paced_and_tracking_counts() {
        let conns = Connections::default();
        let mut guards: Vec<_> = (0..5).map(|_| conns.track_websocket()).collect();
        let req = conns.track_request();
        assert_eq!((conns.websockets(), conns.requests()), (5, 1));
        drop(req);
        assert_eq!(conns.requests(), 0);

        assert_eq!(conns.drain(2, Duration::from_secs(1), MINUTE, || true), 5);
        tokio::task::yield_now().await;
        assert_eq!(newly_asked(&mut guards), 2, "first batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut guards), 2, "second batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut guards), 1, "last batch");
        // Already-asked connections are not asked twice by a second drain.
        assert_eq!(conns.drain(2, Duration::from_secs(1), MINUTE, || true), 0);
        guards.clear();
        assert_eq!(conns.websockets(), 0);
    }

    const MINUTE: Option<Duration> = Some(Duration::from_secs(60));

    #[tokio::test(start_paused = true)]
    async fn a_websocket_that_arrives_during_a_drain_is_asked_too() {
        let conns = Connections::default();
        let mut first = conns.track_websocket();
        assert_eq!(conns.drain(10, Duration::from_secs(1), MINUTE, || true), 1);
        tokio::task::yield_now().await;
        assert!(futures_ready(first.drain_requested()));
        drop(first);

        // A client that came back to the colour being drained (the load
        // balancer still sent it here) is asked at the next batch.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut late = conns.track_websocket();
        assert_eq!(conns.arrived_while_draining(), 1);
        assert!(!futures_ready(late.drain_requested()));
        tokio::time::sleep(Duration::from_millis(701)).await;
        assert!(
            futures_ready(late.drain_requested()),
            "a websocket opened after the drain began was never asked"
        );
        // And at the same pace: one batch per pause.
        let mut more: Vec<_> = (0..15).map(|_| conns.track_websocket()).collect();
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut more), 10, "one batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut more), 5, "the rest");
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_ends_at_its_deadline_or_when_told() {
        let conns = Connections::default();
        conns.drain(
            10,
            Duration::from_secs(1),
            Some(Duration::from_secs(5)),
            || true,
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut after_the_end = conns.track_websocket();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!futures_ready(after_the_end.drain_requested()));
        assert_eq!(conns.arrived_while_draining(), 0);

        // Told to stop (the colour went live again): nobody new is asked.
        let go_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&go_on);
        assert_eq!(
            conns.drain(10, Duration::from_secs(1), None, move || flag
                .load(Ordering::Relaxed)),
            1
        );
        tokio::task::yield_now().await;
        assert!(futures_ready(after_the_end.drain_requested()));
        go_on.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut live_again = conns.track_websocket();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!futures_ready(live_again.drain_requested()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_drain_joins_the_running_one_and_extends_it() {
        let conns = Connections::default();
        conns.drain(
            10,
            Duration::from_secs(1),
            Some(Duration::from_secs(2)),
            || true,
        );
        conns.drain(
            10,
            Duration::from_secs(1),
            Some(Duration::from_secs(10)),
            || true,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut late = conns.track_websocket();
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert!(
            futures_ready(late.drain_requested()),
            "the later end applies"
        );
    }

    /// How many of `guards` were asked to close since the last look.
    fn newly_asked(guards: &mut [WebSocketGuard]) -> usize {
        guards
            .iter_mut()
            .map(|g| futures_ready(g.drain_requested()))
            .filter(|ready| *ready)
            .count()
    }

    /// Polls a future once: whether it is ready now.
    fn futures_ready(fut: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx).is_ready()
    }
}
