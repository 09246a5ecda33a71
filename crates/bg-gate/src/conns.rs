//! Connection tracking: websockets and in-flight requests, and the paced
//! drain that asks lingering websocket clients to move to the live colour —
//! every one of them, including those that arrive while it runs.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bg_state::wire::{DRAIN_TICK, DrainPace};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// The close code a drained websocket is closed with: 1012, "service restart".
pub const DRAIN_CLOSE_CODE: u16 = 1012;

/// Counts and handles of the connections a service holds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

/// How a drain paces its asking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// By time: every open websocket within the window, whatever their
    /// number (see [`DrainPace`]).
    Window(DrainPace),
    /// `batch` websockets every `pause`, as gates of earlier releases took
    /// a drain (`batch`, `interval_ms`).
    Batches {
        /// Websockets asked per batch, at least 1.
        batch: usize,
        /// The pause between batches.
        pause: Duration,
    },
}

impl Default for Pace {
    fn default() -> Self {
        Pace::Window(DrainPace::default())
    }
}

/// Whether a drain may go on: asked before every batch.
type KeepOn = Arc<dyn Fn() -> bool + Send + Sync>;

/// The drain under way, if any: what its task reads before every batch.
struct Draining {
    pace: Pace,
    /// When the window of a [`Pace::Window`] ends.
    window_end: Instant,
    /// Websockets owed by the pace and not yet asked: a fraction of one
    /// per tick at slow rates.
    credit: f64,
    /// `None`: for as long as `keep_on` says.
    until: Option<Instant>,
    keep_on: KeepOn,
}

impl std::fmt::Debug for Draining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draining")
            .field("pace", &self.pace)
            .field("window_end", &self.window_end)
            .field("until", &self.until)
            .finish_non_exhaustive()
    }
}

impl Draining {
    /// How many websockets to ask now, of `left` not yet asked, and how
    /// long to wait before the next look.
    fn next(&mut self, left: usize, now: Instant) -> (usize, Duration) {
        match self.pace {
            Pace::Batches { batch, pause } => (batch, pause),
            Pace::Window(pace) => {
                if left == 0 {
                    // Nothing owed while nobody waits: newcomers are asked
                    // at the pace, not in a burst of saved-up credit.
                    self.credit = 0.0;
                    return (0, DRAIN_TICK);
                }
                let remaining = self.window_end.saturating_duration_since(now);
                match pace.rate(left as u64, remaining) {
                    None => (left, DRAIN_TICK),
                    Some(rate) => {
                        self.credit += rate * DRAIN_TICK.as_secs_f64();
                        let n = self.credit.floor();
                        self.credit -= n;
                        let n = n as usize;
                        if n >= left {
                            self.credit = 0.0;
                        }
                        (n.min(left), DRAIN_TICK)
                    }
                }
            }
        }
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

    /// Whether a drain is under way.
    #[must_use]
    pub fn draining(&self) -> bool {
        locked(&self.inner.draining).is_some()
    }

    fn sockets(&self) -> MutexGuard<'_, BTreeMap<u64, Option<oneshot::Sender<()>>>> {
        locked(&self.inner.websockets)
    }

    /// Asks every open websocket to close at `pace`, so the clients do
    /// not all reconnect at once — and goes on asking the ones that open
    /// later, at the same pace, for `lasting` (`None`: with no end of its
    /// own), as long as `keep_on` (asked before every batch) says so. A
    /// drain called while one runs joins it: the newer pace (its window
    /// counted from this call), the later end, the newer `keep_on`.
    ///
    /// Returns how many open websockets were not asked yet; the asking goes
    /// on in the background.
    pub fn drain(
        &self,
        pace: Pace,
        lasting: Option<Duration>,
        keep_on: impl Fn() -> bool + Send + Sync + 'static,
    ) -> usize {
        let now = Instant::now();
        // A deadline too far to represent is no deadline in practice.
        let after = |d: Duration| {
            now.checked_add(d)
                .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
        };
        let pace = match pace {
            Pace::Batches { batch, pause } => Pace::Batches {
                batch: batch.max(1),
                pause,
            },
            window @ Pace::Window(_) => window,
        };
        let order = Draining {
            pace,
            window_end: match pace {
                Pace::Window(p) => after(p.window),
                Pace::Batches { .. } => now,
            },
            credit: 0.0,
            until: lasting.map(after),
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
                d.pace = order.pace;
                d.window_end = order.window_end;
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
            let (asked, pause) = {
                let mut draining = locked(&inner.draining);
                let Some(d) = draining.as_mut() else { return };
                let now = Instant::now();
                // Decided under the lock, so a drain called meanwhile
                // either extends this one or starts the next.
                if d.until.is_some_and(|u| now >= u) || !(d.keep_on)() {
                    *draining = None;
                    return;
                }
                let mut sockets = locked(&inner.websockets);
                let left = sockets.values().filter(|s| s.is_some()).count();
                let (batch, pause) = d.next(left, now);
                let asked: Vec<oneshot::Sender<()>> = sockets
                    .values_mut()
                    .filter_map(Option::take)
                    .take(batch)
                    .collect();
                (asked, pause)
            };
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

        assert_eq!(conns.drain(batches(2), MINUTE, || true), 5);
        tokio::task::yield_now().await;
        assert_eq!(newly_asked(&mut guards), 2, "first batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut guards), 2, "second batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(newly_asked(&mut guards), 1, "last batch");
        // Already-asked connections are not asked twice by a second drain.
        assert_eq!(conns.drain(batches(2), MINUTE, || true), 0);
        guards.clear();
        assert_eq!(conns.websockets(), 0);
    }

    const MINUTE: Option<Duration> = Some(Duration::from_secs(60));

    /// The earlier pace: `batch` every second.
    fn batches(batch: usize) -> Pace {
        Pace::Batches {
            batch,
            pause: Duration::from_secs(1),
        }
    }

    fn window(secs: u64, max_rate: Option<u32>) -> Pace {
        Pace::Window(DrainPace {
            window: Duration::from_secs(secs),
            max_rate,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_are_asked_within_the_window_a_few_in_a_moment() {
        let conns = Connections::default();
        let mut many: Vec<_> = (0..10_000).map(|_| conns.track_websocket()).collect();
        assert_eq!(conns.drain(window(20, None), MINUTE, || true), 10_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let half = newly_asked(&mut many);
        assert!(
            (4_500..=5_500).contains(&half),
            "half the window asks about half: {half}"
        );
        tokio::time::sleep(Duration::from_millis(10_100)).await;
        assert_eq!(
            newly_asked(&mut many),
            10_000 - half,
            "all within the window"
        );

        // 50 on a small colour: the floor rate, not the window.
        let conns = Connections::default();
        let mut few: Vec<_> = (0..50).map(|_| conns.track_websocket()).collect();
        conns.drain(window(20, None), MINUTE, || true);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(newly_asked(&mut few), 50, "a small colour drains at once");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_holds_the_pace_below_the_window() {
        let conns = Connections::default();
        let mut many: Vec<_> = (0..1_000).map(|_| conns.track_websocket()).collect();
        conns.drain(window(2, Some(100)), MINUTE, || true);
        tokio::time::sleep(Duration::from_millis(2_020)).await;
        let asked = newly_asked(&mut many);
        assert!(
            (190..=210).contains(&asked),
            "100 a second for 2 s, window or not: {asked}"
        );
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(asked + newly_asked(&mut many), 1_000, "and the rest later");
    }

    #[tokio::test(start_paused = true)]
    async fn newcomers_after_the_window_are_asked_at_once() {
        let conns = Connections::default();
        conns.drain(window(1, None), MINUTE, || true);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let mut late: Vec<_> = (0..30).map(|_| conns.track_websocket()).collect();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(newly_asked(&mut late), 30);
        assert_eq!(conns.arrived_while_draining(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn a_websocket_that_arrives_during_a_drain_is_asked_too() {
        let conns = Connections::default();
        let mut first = conns.track_websocket();
        assert_eq!(conns.drain(batches(10), MINUTE, || true), 1);
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
        conns.drain(batches(10), Some(Duration::from_secs(5)), || true);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut after_the_end = conns.track_websocket();
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!futures_ready(after_the_end.drain_requested()));
        assert_eq!(conns.arrived_while_draining(), 0);

        // Told to stop (the colour went live again): nobody new is asked.
        let go_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = Arc::clone(&go_on);
        assert_eq!(
            conns.drain(batches(10), None, move || flag.load(Ordering::Relaxed)),
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
        conns.drain(batches(10), Some(Duration::from_secs(2)), || true);
        conns.drain(batches(10), Some(Duration::from_secs(10)), || true);
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

    /// Polls a future once: whether it is ready now. Outside tokio's
    /// budget, which would answer "pending" after 128 polls in a row.
    fn futures_ready(fut: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(tokio::task::unconstrained(fut));
        fut.as_mut().poll(&mut cx).is_ready()
    }
}
