//! Connection tracking: websockets and in-flight requests, and the paced
//! drain that asks lingering websocket clients to move to the live colour.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// The close code a drained websocket is closed with: 1012, "service restart".
pub const DRAIN_CLOSE_CODE: u16 = 1012;

/// Counts and handles of the connections a service holds. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: AtomicU64,
    next_id: AtomicU64,
    websockets: Mutex<BTreeMap<u64, Option<oneshot::Sender<()>>>>,
}

impl Connections {
    /// Registers a websocket; keep the guard for the connection's lifetime.
    #[must_use]
    pub fn track_websocket(&self) -> WebSocketGuard {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
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

    fn sockets(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Option<oneshot::Sender<()>>>> {
        self.inner
            .websockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks every open websocket to close, `batch` at a time with `pause`
    /// between batches, so the clients do not all reconnect at once.
    /// Returns how many were asked; the asking goes on in the background.
    pub fn drain(&self, batch: usize, pause: Duration) -> usize {
        let batch = batch.max(1);
        let mut pending: Vec<oneshot::Sender<()>> = self
            .sockets()
            .values_mut()
            .filter_map(Option::take)
            .collect();
        let n = pending.len();
        tokio::spawn(async move {
            while !pending.is_empty() {
                let rest = pending.split_off(pending.len().min(batch));
                for tx in pending {
                    let _ = tx.send(());
                }
                pending = rest;
                if !pending.is_empty() {
                    tokio::time::sleep(pause).await;
                }
            }
        });
        n
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
        self.conns
            .websockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
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

        assert_eq!(conns.drain(2, Duration::from_secs(1)), 5);
        tokio::task::yield_now().await;
        let asked = |guards: &mut Vec<WebSocketGuard>| {
            guards
                .iter_mut()
                .map(|g| futures_ready(g.drain_requested()))
                .filter(|ready| *ready)
                .count()
        };
        assert_eq!(asked(&mut guards), 2, "first batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(asked(&mut guards), 2, "second batch");
        tokio::time::sleep(Duration::from_millis(1001)).await;
        assert_eq!(asked(&mut guards), 1, "last batch");
        // Already-asked connections are not asked twice by a second drain.
        assert_eq!(conns.drain(2, Duration::from_secs(1)), 0);
        guards.clear();
        assert_eq!(conns.websockets(), 0);
    }

    /// Polls a future once: whether it is ready now.
    fn futures_ready(fut: impl std::future::Future<Output = ()>) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx).is_ready()
    }
}
