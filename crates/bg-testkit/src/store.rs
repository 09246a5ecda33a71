//! Stores that behave like another store except in the one way a test needs
//! (feature `store`).
//!
//! [`Overlay`] passes every call to an inner [`ColourStore`] unless its
//! [`Override`] takes the call over; an `Override` implements only the calls
//! it changes. [`PollOnly`] is the one most tests want: notifications never
//! arrive, so a gate has only its poll.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bg_state::{
    AppName, BreakLease, ColourStore, DeployRecord, Event, InitRequest, Lease, LeaseRequest,
    Presence, Result, State, Subscription, SwitchOutcome, SwitchRequest,
};

/// The calls a test may take over; each one's default passes the call to
/// `inner`, the wrapped store.
#[async_trait]
pub trait Override: std::fmt::Debug + Send + Sync + 'static {
    /// [`ColourStore::get`].
    async fn get(&self, inner: &dyn ColourStore, app: &AppName) -> Result<Option<State>> {
        inner.get(app).await
    }
    /// [`ColourStore::switch`].
    async fn switch(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        req: SwitchRequest,
    ) -> Result<SwitchOutcome> {
        inner.switch(app, req).await
    }
    /// [`ColourStore::record_deploy`].
    async fn record_deploy(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        rec: DeployRecord,
    ) -> Result<State> {
        inner.record_deploy(app, rec).await
    }
    /// [`ColourStore::renew_lease`].
    async fn renew_lease(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        fence: u64,
        ttl: Duration,
    ) -> Result<Lease> {
        inner.renew_lease(app, fence, ttl).await
    }
    /// [`ColourStore::subscribe`].
    async fn subscribe(&self, inner: &dyn ColourStore, app: &AppName) -> Result<Subscription> {
        inner.subscribe(app).await
    }
}

/// `inner` with the calls `over` takes over.
#[derive(Debug)]
pub struct Overlay<O> {
    inner: Arc<dyn ColourStore>,
    over: O,
}

impl<O: Override> Overlay<O> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ColourStore>, over: O) -> Self {
        Overlay { inner, over }
    }

    /// As an `Arc<dyn ColourStore>`, the form gates and commands take.
    pub fn shared(inner: Arc<dyn ColourStore>, over: O) -> Arc<dyn ColourStore> {
        Arc::new(Self::new(inner, over))
    }

    /// The override, to read what it counted.
    pub fn over(&self) -> &O {
        &self.over
    }
}

#[async_trait]
impl<O: Override> ColourStore for Overlay<O> {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn get(&self, app: &AppName) -> Result<Option<State>> {
        self.over.get(&*self.inner, app).await
    }
    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State> {
        self.inner.init(app, req).await
    }
    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome> {
        self.over.switch(&*self.inner, app, req).await
    }
    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State> {
        self.over.record_deploy(&*self.inner, app, rec).await
    }
    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>> {
        self.inner.history(app, limit).await
    }
    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease> {
        self.inner.acquire_lease(app, req).await
    }
    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease> {
        self.over.renew_lease(&*self.inner, app, fence, ttl).await
    }
    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool> {
        self.inner.release_lease(app, fence).await
    }
    async fn lease(&self, app: &AppName) -> Result<Option<Lease>> {
        self.inner.lease(app).await
    }
    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>> {
        self.inner.break_lease(app, req).await
    }
    async fn report_presence(
        &self,
        app: &AppName,
        presence: Presence,
        ttl: Duration,
    ) -> Result<()> {
        self.inner.report_presence(app, presence, ttl).await
    }
    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>> {
        self.inner.presences(app).await
    }
    async fn subscribe(&self, app: &AppName) -> Result<Subscription> {
        self.over.subscribe(&*self.inner, app).await
    }
}

/// Change notifications switched off: a subscription that never delivers,
/// so whoever follows the store has only its poll.
#[derive(Debug, Default)]
pub struct PollOnly;

#[async_trait]
impl Override for PollOnly {
    async fn subscribe(&self, _: &dyn ColourStore, _: &AppName) -> Result<Subscription> {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        // Never sends, and never closes: hints never come.
        std::mem::forget(tx);
        Ok(Subscription::from_channel(rx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bg_state::{Colour, MemoryStore};

    #[tokio::test]
    async fn calls_pass_through_except_the_overridden_ones() {
        let memory: Arc<dyn ColourStore> = Arc::new(MemoryStore::new());
        let app = AppName::new("app").unwrap();
        let store = Overlay::shared(Arc::clone(&memory), PollOnly);
        store
            .init(&app, InitRequest::new(Colour::Blue, "t"))
            .await
            .unwrap();
        let mut sub = store.subscribe(&app).await.unwrap();
        store
            .switch(&app, SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
        assert_eq!(
            memory.get(&app).await.unwrap().unwrap().active,
            Colour::Green
        );
        let hint = tokio::time::timeout(Duration::from_millis(100), sub.recv()).await;
        assert!(hint.is_err(), "a poll-only store delivered a notification");
    }
}
