//! The in-process store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::engine::{AppRecord, Effect, now_ms};
use crate::error::Result;
use crate::model::{AppName, Change, Event, Lease, Presence, State};
use crate::store::{
    BreakLease, ColourStore, DEFAULT_HISTORY_CAP, DeployRecord, InitRequest, LeaseRequest,
    Subscription, SwitchOutcome, SwitchRequest,
};

/// The embedded default: a store that lives in this process's memory.
///
/// Its state is **per process** and gone when the process exits: two
/// processes (two gates, a gate and `bg-ctl`) each opening `memory://` see
/// two unrelated stores. Use it for tests, examples and single-process
/// setups; share state between processes with the file or Redis backend.
///
/// Cloning is cheap and gives another handle on the same state.
///
/// It is the first choice for your own unit tests: real behaviour, no
/// server, no mock expectations to keep in step with the contract.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    // A std mutex, never held across an `.await`: every operation is a short
    // synchronous step, so an async mutex would only add overhead.
    apps: Mutex<HashMap<AppName, AppRecord>>,
    changes: broadcast::Sender<Change>,
    history_cap: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store keeping [`DEFAULT_HISTORY_CAP`] events per app.
    #[must_use]
    pub fn new() -> Self {
        MemoryStore::with_history_cap(DEFAULT_HISTORY_CAP)
    }

    /// An empty store keeping at most `cap` events per app (at least 1).
    #[must_use]
    pub fn with_history_cap(cap: usize) -> Self {
        let (changes, _) = broadcast::channel(256);
        MemoryStore {
            inner: Arc::new(Inner {
                apps: Mutex::new(HashMap::new()),
                changes,
                history_cap: cap.max(1),
            }),
        }
    }

    fn apps(&self) -> MutexGuard<'_, HashMap<AppName, AppRecord>> {
        // A panic while holding the lock cannot leave a record half-changed:
        // the engine checks before it mutates. So a poisoned lock is usable.
        self.inner
            .apps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the app's record under the lock, then notifies.
    fn with<T>(
        &self,
        app: &AppName,
        f: impl FnOnce(&mut AppRecord, u64, usize) -> Result<(T, Effect)>,
    ) -> Result<T> {
        let (value, generation, effect) = {
            let mut apps = self.apps();
            let rec = apps.entry(app.clone()).or_default();
            let result = f(rec, now_ms(), self.inner.history_cap);
            let generation = rec.state.as_ref().map(|s| s.generation);
            if result.is_err() && *rec == AppRecord::default() {
                // A refused call on an unknown app leaves nothing behind.
                apps.remove(app);
            }
            let (value, effect) = result?;
            (value, generation, effect)
        };
        if effect == Effect::Notify {
            // No receivers is fine: nobody is watching.
            let _ = self.inner.changes.send(Change {
                app: app.clone(),
                generation,
            });
        }
        Ok(value)
    }

    fn read<T>(&self, app: &AppName, f: impl FnOnce(&AppRecord, u64) -> T) -> T {
        let apps = self.apps();
        match apps.get(app) {
            Some(rec) => f(rec, now_ms()),
            None => f(&AppRecord::default(), now_ms()),
        }
    }
}

#[async_trait]
impl ColourStore for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, app: &AppName) -> Result<Option<State>> {
        Ok(self.read(app, |r, _| r.get()))
    }

    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State> {
        self.with(app, |r, now, cap| r.init(app, &req, now, cap))
    }

    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome> {
        self.with(app, |r, now, cap| r.switch(app, &req, now, cap))
    }

    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State> {
        self.with(app, |r, now, cap| r.record_deploy(app, &rec, now, cap))
    }

    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>> {
        Ok(self.read(app, |r, _| r.history(limit)))
    }

    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease> {
        let drawn = crate::fence::draw("memory")?;
        self.with(app, |r, now, _| r.acquire_lease(app, &req, now, drawn))
    }

    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease> {
        self.with(app, |r, now, _| r.renew_lease(app, fence, ttl, now))
    }

    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool> {
        self.with(app, |r, now, _| Ok(r.release_lease(fence, now)))
    }

    async fn lease(&self, app: &AppName) -> Result<Option<Lease>> {
        Ok(self.read(app, |r, now| r.lease(now)))
    }

    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>> {
        self.with(app, |r, now, cap| r.break_lease(&req, now, cap))
    }

    async fn report_presence(
        &self,
        app: &AppName,
        presence: Presence,
        ttl: Duration,
    ) -> Result<()> {
        self.with(app, |r, now, _| r.report_presence(presence, ttl, now))
    }

    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>> {
        Ok(self.read(app, |r, now| r.presences(now)))
    }

    async fn subscribe(&self, app: &AppName) -> Result<Subscription> {
        Ok(Subscription::from_broadcast(
            app.clone(),
            self.inner.changes.subscribe(),
        ))
    }
}
