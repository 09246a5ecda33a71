//! Fixtures for bg-ctl's unit tests: an app on a memory store, what gates
//! say, fake gates that follow the store, a mock store that passes all but
//! the calls a test overrides, and a release run against all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bg_state::{
    AppName, Colour, ColourStore, InitRequest, MemoryStore, SwitchOutcome, SwitchRequest,
};
use bg_testkit::store::{Overlay, Override};

use crate::deploy::{DeployOptions, DeployOutcome, Deployer};
use crate::error::{CheckFailed, CtlError, CtlResult};
use crate::gates::{
    ConnectionCounts, GateAnswer, GateStatus, Gates, MockGates, ProbeRecord, StoreHealth,
};
use crate::report::Reporter;
use crate::trigger::{Checks, MockChecks, MockTrigger, Trigger};

/// The blue gate's URL in [`opts`].
pub const BLUE: &str = "http://blue";
/// The green gate's URL in [`opts`].
pub const GREEN: &str = "http://green";

/// The app every test uses.
pub fn app() -> AppName {
    AppName::new("chat").unwrap()
}

/// A memory store with the app initialised: blue live at generation 1,
/// running v1.
pub async fn store() -> MemoryStore {
    let s = MemoryStore::new();
    s.init(&app(), InitRequest::new(Colour::Blue, "ops").version("v1"))
        .await
        .unwrap();
    s
}

/// Who is live, at which generation.
pub async fn live(store: &MemoryStore) -> (Colour, u64) {
    let s = store.get(&app()).await.unwrap().unwrap();
    (s.active, s.generation)
}

/// What a gate of `colour` says, given who is live and what it runs: its
/// answer, and one load balancer that has probed it three times.
pub fn report(colour: Colour, live: Colour, version: &str, generation: u64) -> GateStatus {
    let answer = if colour == live {
        GateAnswer::Ok
    } else {
        GateAnswer::Stop
    };
    GateStatus {
        app: AppName::new("chat").expect("a valid name"),
        gate_id: format!("{colour}-1"),
        colour,
        version: version.into(),
        answer,
        live: answer.is_ok(),
        active: Some(live),
        generation,
        handover_ms_left: None,
        stale_ms: 20,
        from_cache: false,
        strict: false,
        store: StoreHealth {
            backend: "memory".into(),
            healthy: true,
            error: None,
        },
        alarm: None,
        connections: ConnectionCounts {
            websockets: Some(0),
            ..ConnectionCounts::default()
        },
        probes: (0..3)
            .map(|_| ProbeRecord {
                source: Some([10, 0, 0, 1].into()),
                at_ms: 0,
                colour,
                answer,
            })
            .collect(),
        named_lb_sources: false,
        state: None,
        service: None,
    }
}

/// Builds gates at [`BLUE`] and [`GREEN`] that follow a memory store: each
/// answers for its colour from the store's state, blue runs "v1", green
/// runs "v2" once the release's trigger has fired and "v1" before.
pub struct FakeGates {
    store: MemoryStore,
    deployed: Arc<AtomicBool>,
    green: Box<dyn FnMut(&mut GateStatus) + Send>,
    blue: Box<dyn FnMut(&mut GateStatus) + Send>,
    /// How many of green's next reports fail as an unreachable gate.
    green_silent: usize,
}

impl FakeGates {
    /// Gates following `store`, never deployed to.
    pub fn following(store: &MemoryStore) -> Self {
        FakeGates {
            store: store.clone(),
            deployed: Arc::new(AtomicBool::new(false)),
            green: Box::new(|_| {}),
            blue: Box::new(|_| {}),
            green_silent: 0,
        }
    }

    /// Green's first `n` reports fail: its gate does not answer.
    #[must_use]
    pub fn green_silent_for(mut self, n: usize) -> Self {
        self.green_silent = n;
        self
    }

    /// Green runs "v2" once `deployed` is set.
    #[must_use]
    pub fn deployed_when(mut self, deployed: &Arc<AtomicBool>) -> Self {
        self.deployed = Arc::clone(deployed);
        self
    }

    /// Changes every report green gives, after the rest is filled in.
    #[must_use]
    pub fn green(mut self, edit: impl FnMut(&mut GateStatus) + Send + 'static) -> Self {
        self.green = Box::new(edit);
        self
    }

    /// Changes every report blue gives, after the rest is filled in.
    #[must_use]
    pub fn blue(mut self, edit: impl FnMut(&mut GateStatus) + Send + 'static) -> Self {
        self.blue = Box::new(edit);
        self
    }

    /// The gates, as a mock a test can add `drain` expectations to.
    pub fn build(self) -> MockGates {
        let FakeGates {
            store,
            deployed,
            mut green,
            mut blue,
            mut green_silent,
        } = self;
        let mut g = MockGates::new();
        g.expect_report().returning(move |url| {
            if url == GREEN && green_silent > 0 {
                green_silent -= 1;
                return Err(CtlError::Unreachable(format!("{url}: connection refused")));
            }
            let state = futures_now(store.get(&app())).unwrap().unwrap();
            let colour = if url == BLUE {
                Colour::Blue
            } else {
                Colour::Green
            };
            let version = if colour == Colour::Green && deployed.load(Ordering::SeqCst) {
                "v2"
            } else {
                "v1"
            };
            let mut r = report(colour, state.active, version, state.generation);
            if colour == Colour::Green {
                green(&mut r);
            } else {
                blue(&mut r);
            }
            Ok(r)
        });
        g
    }
}

/// Memory-store futures complete at once; run one from a sync mock.
pub fn futures_now<T>(f: impl Future<Output = T>) -> T {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("a memory store call did not complete at once"),
    }
}

/// The error a dropped Redis connection gives.
fn connection_reset() -> bg_state::Error {
    bg_state::Error::Unavailable {
        backend: "redis",
        message: "connection reset".into(),
        retryable: true,
    }
}

/// Every switch fails as if the connection dropped before it reached the
/// store; everything else reaches the store.
#[derive(Debug, Default)]
pub struct SwitchUnreachable;

#[async_trait::async_trait]
impl Override for SwitchUnreachable {
    async fn switch(
        &self,
        _: &dyn ColourStore,
        _: &AppName,
        _: SwitchRequest,
    ) -> bg_state::Result<SwitchOutcome> {
        Err(connection_reset())
    }
}

/// The first deploy record commits, but its answer is lost on the way
/// back; every later call reaches the store as usual.
#[derive(Debug, Default)]
pub struct FirstRecordLost {
    lost: AtomicBool,
}

#[async_trait::async_trait]
impl Override for FirstRecordLost {
    async fn record_deploy(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        rec: bg_state::DeployRecord,
    ) -> bg_state::Result<bg_state::State> {
        let out = inner.record_deploy(app, rec).await;
        if self.lost.swap(true, Ordering::SeqCst) {
            out
        } else {
            Err(connection_reset())
        }
    }
}

/// The first switch (of every switch, or only of those recorded as a
/// rollback) commits, but its answer is lost on the way back; every later
/// call reaches the store as usual.
#[derive(Debug, Default)]
pub struct FirstAnswerLost {
    only_rollbacks: bool,
    lost: AtomicBool,
}

impl FirstAnswerLost {
    /// The first switch's answer is lost.
    pub fn of_a_switch() -> Self {
        Self::default()
    }

    /// The first rollback's answer is lost; other switches pass.
    pub fn of_a_rollback() -> Self {
        FirstAnswerLost {
            only_rollbacks: true,
            ..Self::default()
        }
    }
}

#[async_trait::async_trait]
impl Override for FirstAnswerLost {
    async fn switch(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        req: SwitchRequest,
    ) -> bg_state::Result<SwitchOutcome> {
        let counts = req.rollback || !self.only_rollbacks;
        let out = inner.switch(app, req).await;
        if !counts || self.lost.swap(true, Ordering::SeqCst) {
            out
        } else {
            Err(connection_reset())
        }
    }
}

/// The first switch commits, then the lease is broken and the store stops
/// answering switches: the answer, and every retry's, is lost while the
/// lease is being lost.
#[derive(Debug, Default)]
pub struct SwitchLostWithTheLease {
    sent: AtomicBool,
}

#[async_trait::async_trait]
impl Override for SwitchLostWithTheLease {
    async fn switch(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        req: SwitchRequest,
    ) -> bg_state::Result<SwitchOutcome> {
        if !self.sent.swap(true, Ordering::SeqCst) {
            inner.switch(app, req).await?;
            inner
                .break_lease(
                    app,
                    bg_state::BreakLease {
                        actor: "ops".into(),
                        reason: None,
                    },
                )
                .await?;
        }
        Err(connection_reset())
    }
}

/// The switch back after a failed verify: the lease is broken as it is
/// sent, after it commits (`commits`) or before, and the store stops
/// answering switches, so the lease is found lost while the answer is
/// awaited.
#[derive(Debug)]
pub struct SwitchBackLosesTheLease {
    /// Whether the switch back commits before the lease is broken.
    commits: bool,
    broken: AtomicBool,
}

impl SwitchBackLosesTheLease {
    /// The switch back commits before the lease is broken, or not.
    pub fn commits(commits: bool) -> Self {
        SwitchBackLosesTheLease {
            commits,
            broken: AtomicBool::new(false),
        }
    }
}

#[async_trait::async_trait]
impl Override for SwitchBackLosesTheLease {
    async fn switch(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
        req: SwitchRequest,
    ) -> bg_state::Result<SwitchOutcome> {
        if !req.rollback {
            return inner.switch(app, req).await;
        }
        if !self.broken.swap(true, Ordering::SeqCst) {
            if self.commits {
                inner.switch(app, req).await?;
            }
            inner
                .break_lease(
                    app,
                    bg_state::BreakLease {
                        actor: "ops".into(),
                        reason: None,
                    },
                )
                .await?;
        }
        Err(connection_reset())
    }
}

/// Reads of the state fail once, with a dropped connection, after the
/// first `after` reads; every other call reaches the store. The counter
/// ([`OneReadFails::reads`]) says how many reads were made, so a test can
/// tell that the failure really fired.
#[derive(Debug)]
pub struct OneReadFails {
    after: usize,
    reads: Arc<std::sync::atomic::AtomicUsize>,
}

impl OneReadFails {
    /// The read after `after` good ones fails.
    pub fn after(after: usize) -> Self {
        OneReadFails {
            after,
            reads: Arc::default(),
        }
    }

    /// The reads made so far, the failed one included; shared with the
    /// overlay this is given to.
    pub fn reads(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        Arc::clone(&self.reads)
    }
}

#[async_trait::async_trait]
impl Override for OneReadFails {
    async fn get(
        &self,
        inner: &dyn ColourStore,
        app: &AppName,
    ) -> bg_state::Result<Option<bg_state::State>> {
        if self.reads.fetch_add(1, Ordering::SeqCst) == self.after {
            return Err(connection_reset());
        }
        inner.get(app).await
    }
}

/// `real` with the calls `over` takes over.
pub fn overlay(real: &MemoryStore, over: impl Override) -> Arc<dyn ColourStore> {
    Overlay::shared(Arc::new(real.clone()), over)
}

/// Release options for [`FakeGates`]: v2 by "ci", short waits.
pub fn opts() -> DeployOptions {
    let mut o = DeployOptions::new(app(), "v2", "ci");
    o.holder = "pipeline-1".into();
    o.gates.insert(Colour::Blue, vec![BLUE.into()]);
    o.gates.insert(Colour::Green, vec![GREEN.into()]);
    o.ready_timeout = Duration::from_millis(400);
    o.drain_timeout = Duration::from_millis(300);
    o.poll = Duration::from_millis(10);
    o.lease_ttl = Duration::from_secs(3);
    o.lb_fall = 2;
    o.lb_rise = 2;
    o
}

/// A trigger that deploys v2 to green once, setting `deployed`.
pub fn trigger_that_deploys(deployed: &Arc<AtomicBool>) -> MockTrigger {
    let mut t = MockTrigger::new();
    let d = Arc::clone(deployed);
    t.expect_deploy()
        .withf(|c, v| *c == Colour::Green && v == "v2")
        .times(1)
        .returning(move |_, _| {
            d.store(true, Ordering::SeqCst);
            Ok(())
        });
    t
}

/// Checks that always pass.
pub fn passing_checks() -> MockChecks {
    let mut c = MockChecks::new();
    c.expect_run().returning(|_, _, _| Ok(()));
    c
}

/// Checks that all fail as a command exiting 1 does.
pub fn failing_checks() -> MockChecks {
    use std::os::unix::process::ExitStatusExt;
    let mut c = MockChecks::new();
    c.expect_run().returning(|_, _, _| {
        Err(CheckFailed::Exit {
            status: std::process::ExitStatus::from_raw(1 << 8),
        }
        .into())
    });
    c
}

/// A release against `store` with gates that follow `real` and a webhook
/// that deploys: what most tests vary is only the checks and the options.
pub async fn release(
    store: &dyn ColourStore,
    real: &MemoryStore,
    checks: &dyn Checks,
    opts: &DeployOptions,
) -> CtlResult<DeployOutcome> {
    let deployed = Arc::new(AtomicBool::new(false));
    run(
        store,
        &gates(real, &deployed),
        &trigger_that_deploys(&deployed),
        checks,
        opts,
    )
    .await
}

/// Runs a release, reporting nothing.
pub async fn run(
    store: &dyn ColourStore,
    gates: &dyn Gates,
    trigger: &dyn Trigger,
    checks: &dyn Checks,
    opts: &DeployOptions,
) -> CtlResult<DeployOutcome> {
    let report = Reporter::silent();
    Deployer {
        store,
        gates,
        trigger,
        checks,
        report: &report,
        opts,
    }
    .run()
    .await
}

/// [`FakeGates`] following `store`, green running "v2" once `deployed`.
pub fn gates(store: &MemoryStore, deployed: &Arc<AtomicBool>) -> MockGates {
    FakeGates::following(store).deployed_when(deployed).build()
}
