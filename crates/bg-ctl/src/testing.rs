//! Fixtures for bg-ctl's unit tests: an app on a memory store, what gates
//! say, fake gates that follow the store, a mock store that passes all but
//! the calls a test overrides, and a release run against all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bg_state::{AppName, Colour, ColourStore, InitRequest, MemoryStore, MockColourStore};

use crate::deploy::{DeployOptions, DeployOutcome, Deployer};
use crate::error::CtlResult;
use crate::gates::{ConnectionCounts, GateReport, Gates, MockGates, ProbeReport, StoreHealth};
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

/// A memory store with the app initialised: blue live at generation 1.
pub async fn store() -> MemoryStore {
    let s = MemoryStore::new();
    s.init(&app(), InitRequest::new(Colour::Blue, "ops"))
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
pub fn report(colour: Colour, live: Colour, version: &str, generation: u64) -> GateReport {
    let answer = if colour == live { "ok" } else { "stop" };
    GateReport {
        colour,
        version: version.into(),
        answer: answer.into(),
        active: Some(live),
        generation,
        stale_ms: 20,
        store: StoreHealth { healthy: true },
        alarm: None,
        connections: ConnectionCounts {
            websockets: 0,
            requests: 0,
        },
        probes: (0..3)
            .map(|_| ProbeReport {
                source: Some("10.0.0.1".into()),
                at_ms: 0,
                colour,
                answer: answer.into(),
            })
            .collect(),
    }
}

/// Builds gates at [`BLUE`] and [`GREEN`] that follow a memory store: each
/// answers for its colour from the store's state, blue runs "v1", green
/// runs "v2" once the release's trigger has fired and "v1" before.
pub struct FakeGates {
    store: MemoryStore,
    deployed: Arc<AtomicBool>,
    green: Box<dyn FnMut(&mut GateReport) + Send>,
}

impl FakeGates {
    /// Gates following `store`, never deployed to.
    pub fn following(store: &MemoryStore) -> Self {
        FakeGates {
            store: store.clone(),
            deployed: Arc::new(AtomicBool::new(false)),
            green: Box::new(|_| {}),
        }
    }

    /// Green runs "v2" once `deployed` is set.
    #[must_use]
    pub fn deployed_when(mut self, deployed: &Arc<AtomicBool>) -> Self {
        self.deployed = Arc::clone(deployed);
        self
    }

    /// Changes every report green gives, after the rest is filled in.
    #[must_use]
    pub fn green(mut self, edit: impl FnMut(&mut GateReport) + Send + 'static) -> Self {
        self.green = Box::new(edit);
        self
    }

    /// The gates, as a mock a test can add `drain` expectations to.
    pub fn build(self) -> MockGates {
        let FakeGates {
            store,
            deployed,
            mut green,
        } = self;
        let mut g = MockGates::new();
        g.expect_report().returning(move |url| {
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

/// A mock store that passes everything a release calls but `switch` to
/// `real`; the test says what `switch` does.
pub fn delegating(real: &MemoryStore) -> MockColourStore {
    let mut mock = MockColourStore::new();
    let r = real.clone();
    mock.expect_acquire_lease()
        .returning(move |a, req| futures_now(r.acquire_lease(a, req)));
    let r = real.clone();
    mock.expect_renew_lease()
        .returning(move |a, f, t| futures_now(r.renew_lease(a, f, t)));
    let r = real.clone();
    mock.expect_get().returning(move |a| futures_now(r.get(a)));
    let r = real.clone();
    mock.expect_presences()
        .returning(move |a| futures_now(r.presences(a)));
    let r = real.clone();
    mock.expect_record_deploy()
        .returning(move |a, rec| futures_now(r.record_deploy(a, rec)));
    let r = real.clone();
    mock.expect_release_lease()
        .returning(move |a, f| futures_now(r.release_lease(a, f)));
    mock
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
