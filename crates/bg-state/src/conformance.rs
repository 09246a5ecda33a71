//! The conformance suite: every guarantee of [`ColourStore`], checked the
//! same way against any backend.
//!
//! Each check is a free `async fn` that panics on a violation and works on
//! an app name of its own, so they can share one store. A backend's tests
//! call [`run_all`]; a new backend is done when it passes unchanged.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use bg_state::conformance::{run_all, Config};
//! let store: Arc<dyn bg_state::ColourStore> = Arc::new(bg_state::MemoryStore::with_history_cap(20));
//! run_all(&[store], &Config { history_cap: 20, ..Config::default() }).await;
//! # }
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{
    AppName, BreakLease, Colour, ColourStore, DeployPhase, DeployRecord, Error, EventKind,
    InitRequest, LeaseRequest, Presence, SwitchRequest,
};

/// What the suite needs to know about the stores under test.
#[derive(Debug, Clone)]
pub struct Config {
    /// The history cap the stores were built with.
    pub history_cap: usize,
    /// How long a change notification may take to arrive.
    pub notify_within: Duration,
    /// Concurrent writers in the race.
    pub race_writers: usize,
    /// Compare-and-swap attempts per writer in the race.
    pub race_rounds: usize,
    /// The actor every change is recorded under, when the store takes it
    /// from the caller's credentials rather than the request (a remote
    /// store); `None` when requests name their actor.
    pub credential_actor: Option<String>,
}

impl Config {
    /// The actor a change requested by `requested` is recorded as.
    fn actor<'a>(&'a self, requested: &'a str) -> &'a str {
        self.credential_actor.as_deref().unwrap_or(requested)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_cap: crate::DEFAULT_HISTORY_CAP,
            notify_within: Duration::from_secs(5),
            race_writers: 8,
            race_rounds: 100,
            credential_actor: None,
        }
    }
}

/// Runs every check. `stores` are handles on one backing store (for the file
/// backend, several instances on one path); the first one is used for the
/// single-handle checks and all of them in the race.
///
/// # Panics
/// On the first guarantee a store breaks, or if `stores` is empty.
pub async fn run_all(stores: &[Arc<dyn ColourStore>], cfg: &Config) {
    let store = stores.first().expect("at least one store").as_ref();
    uninitialised(store).await;
    init_rules(store, cfg).await;
    generation_never_goes_down(store).await;
    switch_compare_and_swap(store, cfg).await;
    switch_retries_are_recognised(store).await;
    deploy_records(store, cfg).await;
    lease_rules(store, cfg).await;
    lease_expiry(store).await;
    history_is_bounded(store, cfg.history_cap).await;
    bad_input_changes_nothing(store).await;
    presence(store).await;
    notifications(store, cfg.notify_within).await;
    compare_and_swap_race(stores, cfg.race_writers, cfg.race_rounds).await;
}

/// A fresh app name for one check.
#[must_use]
pub fn fresh_app(what: &str) -> AppName {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    AppName::new(format!("conf-{what}-{t}-{n}")).expect("valid app name")
}

async fn initialised(store: &dyn ColourStore, what: &str, active: Colour) -> AppName {
    let app = fresh_app(what);
    store
        .init(&app, InitRequest::new(active, "conformance"))
        .await
        .expect("init of a fresh app");
    app
}

/// An app never initialised has no state, and state-changing calls say so.
pub async fn uninitialised(store: &dyn ColourStore) {
    let app = fresh_app("uninit");
    assert_eq!(store.get(&app).await.unwrap(), None);
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotInitialised { .. }), "{err:?}");
    let err = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v1", DeployPhase::Deploying, "t"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotInitialised { .. }), "{err:?}");
    assert!(store.history(&app, 10).await.unwrap().is_empty());
    assert_eq!(store.lease(&app).await.unwrap(), None);
    assert!(store.presences(&app).await.unwrap().is_empty());
}

/// Init creates generation 1 once; a second init is refused unless forced;
/// a forced init lands above the old generation; a floor is honoured.
pub async fn init_rules(store: &dyn ColourStore, cfg: &Config) {
    let app = fresh_app("init");
    let s = store
        .init(&app, InitRequest::new(Colour::Blue, "ops").reason("first"))
        .await
        .unwrap();
    assert_eq!((s.active, s.generation), (Colour::Blue, 1));
    assert_eq!(s.app, app);
    assert_eq!(s.last_change.actor, cfg.actor("ops"));
    assert_eq!(s.last_change.reason.as_deref(), Some("first"));
    assert!(!s.last_change.forced);
    assert_eq!(store.get(&app).await.unwrap(), Some(s.clone()));

    let err = store
        .init(&app, InitRequest::new(Colour::Green, "ops"))
        .await
        .unwrap_err();
    match err {
        Error::AlreadyInitialised { current } => assert_eq!(*current, s),
        other => panic!("expected AlreadyInitialised, got {other:?}"),
    }
    assert_eq!(
        store.get(&app).await.unwrap(),
        Some(s),
        "a refused init changed state"
    );

    let forced = store
        .init(&app, InitRequest::new(Colour::Green, "ops").force(true))
        .await
        .unwrap();
    assert_eq!((forced.active, forced.generation), (Colour::Green, 2));
    assert!(forced.last_change.forced);
    let events = store.history(&app, 10).await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0].forced);
    assert!(matches!(
        events[0].kind,
        EventKind::Init {
            active: Colour::Green
        }
    ));
    assert_eq!(events[0].generation, 2);

    let floored = store
        .init(
            &app,
            InitRequest::new(Colour::Blue, "ops")
                .force(true)
                .min_generation(40),
        )
        .await
        .unwrap();
    assert_eq!(floored.generation, 40);
    let above = store
        .init(
            &app,
            InitRequest::new(Colour::Blue, "ops")
                .force(true)
                .min_generation(3),
        )
        .await
        .unwrap();
    assert_eq!(
        above.generation, 41,
        "a floor below the current generation must not lower it"
    );

    let fresh = fresh_app("init-floor");
    let s = store
        .init(
            &fresh,
            InitRequest::new(Colour::Green, "restore").min_generation(17),
        )
        .await
        .unwrap();
    assert_eq!((s.active, s.generation), (Colour::Green, 17));
}

/// No sequence of switches and forced inits lowers the generation, and each
/// change of the live colour adds exactly one.
pub async fn generation_never_goes_down(store: &dyn ColourStore) {
    let app = initialised(store, "monotonic", Colour::Blue).await;
    let mut last = 1;
    for i in 0..6u64 {
        let s = if i % 3 == 2 {
            store
                .init(&app, InitRequest::new(Colour::Blue, "t").force(true))
                .await
                .unwrap()
        } else {
            let cur = store.get(&app).await.unwrap().unwrap();
            store
                .switch(&app, SwitchRequest::new(cur.idle(), "t"))
                .await
                .unwrap()
                .state
        };
        assert_eq!(s.generation, last + 1);
        last = s.generation;
    }
}

/// Compare-and-swap: the expected generation is checked first; switching to
/// the live colour is a success that changes nothing.
pub async fn switch_compare_and_swap(store: &dyn ColourStore, cfg: &Config) {
    let app = initialised(store, "cas", Colour::Blue).await;
    let out = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "ci")
                .expect_generation(1)
                .reason("release"),
        )
        .await
        .unwrap();
    assert!(out.changed);
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));
    assert_eq!(out.state.last_change.actor, cfg.actor("ci"));
    assert_eq!(out.state.last_change.reason.as_deref(), Some("release"));
    assert_eq!(store.get(&app).await.unwrap(), Some(out.state.clone()));

    // A stale expectation fails with the current state, even when the target
    // is already live: the check comes first.
    for to in Colour::ALL {
        let err = store
            .switch(&app, SwitchRequest::new(to, "ci").expect_generation(1))
            .await
            .unwrap_err();
        match err {
            Error::Conflict { expected, current } => {
                assert_eq!(expected, 1);
                assert_eq!(*current, out.state);
            }
            other => panic!("expected Conflict, got {other:?}"),
        }
    }

    // Already live: success, nothing changed, nothing recorded.
    let before = store.history(&app, 100).await.unwrap().len();
    for req in [
        SwitchRequest::new(Colour::Green, "retry"),
        SwitchRequest::new(Colour::Green, "retry").expect_generation(2),
    ] {
        let same = store.switch(&app, req).await.unwrap();
        assert!(!same.changed);
        assert_eq!(same.state, out.state);
    }
    assert_eq!(store.history(&app, 100).await.unwrap().len(), before);

    let back = store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ops").rollback(true))
        .await
        .unwrap();
    assert_eq!(back.state.generation, 3);
    let last = &store.history(&app, 1).await.unwrap()[0];
    assert!(
        matches!(
            last.kind,
            EventKind::Rollback {
                from: Colour::Green,
                to: Colour::Blue
            }
        ),
        "{last:?}"
    );
}

/// A retried switch that already committed, under the same request id or
/// the same fence, is recognised as its own success.
pub async fn switch_retries_are_recognised(store: &dyn ColourStore) {
    let app = initialised(store, "retry", Colour::Blue).await;
    let req = SwitchRequest::new(Colour::Green, "ci")
        .expect_generation(1)
        .request_id("job-77-switch");
    let first = store.switch(&app, req.clone()).await.unwrap();
    assert!(first.changed);
    assert_eq!(
        first.state.last_change.request_id.as_deref(),
        Some("job-77-switch")
    );
    let again = store.switch(&app, req).await.unwrap();
    assert!(!again.changed, "a retry must not switch twice");
    assert_eq!(again.state, first.state);

    // The same, under a lease's fence.
    let app = initialised(store, "retry-fence", Colour::Blue).await;
    let lease = store
        .acquire_lease(&app, LeaseRequest::new("pipeline", Duration::from_secs(30)))
        .await
        .unwrap();
    let req = SwitchRequest::new(Colour::Green, "pipeline")
        .expect_generation(1)
        .fence(lease.fence);
    let first = store.switch(&app, req.clone()).await.unwrap();
    assert!(first.changed);
    let again = store.switch(&app, req).await.unwrap();
    assert!(!again.changed);
    assert_eq!(again.state.generation, 2);
    // A different expectation under the same fence is not a retry.
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "pipeline")
                .expect_generation(5)
                .fence(lease.fence),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
}

/// Deploys are recorded for the idle colour only, fenced by the lease, and
/// leave the generation alone.
pub async fn deploy_records(store: &dyn ColourStore, cfg: &Config) {
    let app = initialised(store, "deploy", Colour::Blue).await;
    let err = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Blue, "v2", DeployPhase::Deploying, "ci"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DeployToLive {
                colour: Colour::Blue,
                ..
            }
        ),
        "{err:?}"
    );
    let s = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deploying, "ci"),
        )
        .await
        .unwrap();
    assert_eq!(s.generation, 1);
    let d = s.green.clone().expect("green deployment recorded");
    assert_eq!(
        (d.version.as_str(), d.phase),
        ("v2", DeployPhase::Deploying)
    );
    assert_eq!(d.actor, cfg.actor("ci"));
    assert_eq!(s.blue, None);

    let s = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deployed, "ci"),
        )
        .await
        .unwrap();
    assert_eq!(s.green.as_ref().unwrap().phase, DeployPhase::Deployed);
    assert_eq!(store.get(&app).await.unwrap(), Some(s.clone()));
    let events = store.history(&app, 2).await.unwrap();
    assert!(
        matches!(
            &events[0].kind,
            EventKind::Deploy { colour: Colour::Green, version, phase: DeployPhase::Deployed } if version == "v2"
        ),
        "{:?}",
        events[0]
    );
    assert!(matches!(
        events[1].kind,
        EventKind::Deploy {
            phase: DeployPhase::Deploying,
            ..
        }
    ));

    // Versions survive switches.
    let out = store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    assert_eq!(out.state.green.as_ref().unwrap().version, "v2");

    // Fenced: with a lease held, a record needs its fence.
    let lease = store
        .acquire_lease(&app, LeaseRequest::new("p1", Duration::from_secs(30)))
        .await
        .unwrap();
    let rec = DeployRecord::new(Colour::Blue, "v3", DeployPhase::Deploying, "p2");
    let (state_before, history_before) = (
        store.get(&app).await.unwrap(),
        store.history(&app, 100).await.unwrap(),
    );
    let err = store.record_deploy(&app, rec.clone()).await.unwrap_err();
    assert!(
        matches!(err, Error::LeaseHeld { ref holder, .. } if holder == "p1"),
        "{err:?}"
    );
    let err = store
        .record_deploy(&app, rec.clone().fence(lease.fence + 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert_eq!(
        store.get(&app).await.unwrap(),
        state_before,
        "a refused deploy record changed state"
    );
    assert_eq!(
        store.history(&app, 100).await.unwrap(),
        history_before,
        "a refused deploy record was recorded"
    );
    let s = store
        .record_deploy(&app, rec.clone().fence(lease.fence))
        .await
        .unwrap();
    assert_eq!(s.blue.unwrap().version, "v3");
    let s = store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Blue, "v4", DeployPhase::Deploying, "ops").force(true),
        )
        .await
        .unwrap();
    assert_eq!(s.blue.unwrap().version, "v4");
    assert!(store.history(&app, 1).await.unwrap()[0].forced);
}

/// One holder at a time; acquiring again as the holder extends; fences only
/// grow; a lease refuses unfenced and stale-fenced switches unless forced.
pub async fn lease_rules(store: &dyn ColourStore, cfg: &Config) {
    let app = initialised(store, "lease", Colour::Blue).await;
    let ttl = Duration::from_secs(30);
    let a = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-a", ttl))
        .await
        .unwrap();
    assert_eq!(a.holder, "pipeline-a");
    assert!(a.fence >= 1);
    assert!(a.expires_at_ms > a.acquired_at_ms);
    assert_eq!(store.lease(&app).await.unwrap(), Some(a.clone()));

    let again = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-a", ttl))
        .await
        .unwrap();
    assert_eq!(
        again.fence, a.fence,
        "re-acquiring as the holder keeps the fence"
    );
    assert!(again.expires_at_ms >= a.expires_at_ms);

    let err = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-b", ttl))
        .await
        .unwrap_err();
    match err {
        Error::LeaseHeld {
            holder,
            fence,
            expires_at_ms,
            ..
        } => {
            assert_eq!(holder, "pipeline-a");
            assert_eq!(fence, a.fence);
            assert!(expires_at_ms >= a.expires_at_ms);
        }
        other => panic!("expected LeaseHeld, got {other:?}"),
    }

    // Switches while the lease is held.
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "other"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LeaseHeld { .. }), "{err:?}");
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "old").fence(a.fence + 7),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleFence { presented, current: Some(c), .. } if presented == a.fence + 7 && c == a.fence),
        "{err:?}"
    );
    assert_eq!(
        store.get(&app).await.unwrap().unwrap().generation,
        1,
        "refused switches changed state"
    );
    let out = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "pipeline-a").fence(a.fence),
        )
        .await
        .unwrap();
    assert_eq!(out.state.last_change.fence, Some(a.fence));
    let forced = store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ops").force(true))
        .await
        .unwrap();
    assert!(forced.changed);
    assert!(forced.state.last_change.forced);
    assert!(store.history(&app, 1).await.unwrap()[0].forced);

    // Renew, release, and fences only grow.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renewed = store.renew_lease(&app, a.fence, ttl).await.unwrap();
    assert_eq!(renewed.fence, a.fence);
    assert!(
        renewed.expires_at_ms > again.expires_at_ms,
        "renewing did not extend the lease"
    );
    let err = store.renew_lease(&app, a.fence + 1, ttl).await.unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert!(
        !store.release_lease(&app, a.fence + 1).await.unwrap(),
        "released someone else's lease"
    );
    assert!(store.lease(&app).await.unwrap().is_some());
    assert!(store.release_lease(&app, a.fence).await.unwrap());
    assert!(
        !store.release_lease(&app, a.fence).await.unwrap(),
        "release is idempotent"
    );
    assert_eq!(store.lease(&app).await.unwrap(), None);
    let err = store.renew_lease(&app, a.fence, ttl).await.unwrap_err();
    assert!(
        matches!(err, Error::StaleFence { current: None, .. }),
        "{err:?}"
    );
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "late").fence(a.fence),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleFence { .. }),
        "a released fence still switched: {err:?}"
    );

    let b = store
        .acquire_lease(&app, LeaseRequest::new("pipeline-b", ttl))
        .await
        .unwrap();
    assert!(b.fence > a.fence);

    // Breaking is recorded.
    let broken = store
        .break_lease(
            &app,
            BreakLease {
                actor: "ops".into(),
                reason: Some("stuck job".into()),
            },
        )
        .await
        .unwrap()
        .expect("a lease was held");
    assert_eq!(
        (broken.holder.as_str(), broken.fence),
        ("pipeline-b", b.fence)
    );
    assert_eq!(store.lease(&app).await.unwrap(), None);
    let last = &store.history(&app, 1).await.unwrap()[0];
    assert_eq!(last.actor, cfg.actor("ops"));
    assert!(last.forced);
    assert_eq!(last.reason.as_deref(), Some("stuck job"));
    assert!(
        matches!(&last.kind, EventKind::LeaseBroken { holder, fence } if holder == "pipeline-b" && *fence == b.fence),
        "{last:?}"
    );
    let none = store
        .break_lease(
            &app,
            BreakLease {
                actor: "ops".into(),
                reason: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(none, None);
}

/// A lease lapses by itself, after which another holder gets a greater fence.
pub async fn lease_expiry(store: &dyn ColourStore) {
    let app = initialised(store, "expiry", Colour::Blue).await;
    let a = store
        .acquire_lease(
            &app,
            LeaseRequest::new("killed-job", Duration::from_millis(300)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(store.lease(&app).await.unwrap(), None);
    // An expired lease blocks nobody.
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "next"))
        .await
        .unwrap();
    let b = store
        .acquire_lease(&app, LeaseRequest::new("next-job", Duration::from_secs(30)))
        .await
        .unwrap();
    assert!(b.fence > a.fence);
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "killed-job").fence(a.fence),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
}

/// History is newest first, honours the limit and keeps at most `cap` events.
pub async fn history_is_bounded(store: &dyn ColourStore, cap: usize) {
    let app = initialised(store, "history", Colour::Blue).await;
    let switches = cap + 5;
    let mut to = Colour::Green;
    for _ in 0..switches {
        store
            .switch(&app, SwitchRequest::new(to, "h"))
            .await
            .unwrap();
        to = to.other();
    }
    let all = store.history(&app, cap * 10).await.unwrap();
    assert_eq!(all.len(), cap, "history must be capped at {cap}");
    let last_generation = 1 + switches as u64;
    assert_eq!(all[0].generation, last_generation, "newest first");
    assert!(all.windows(2).all(|w| w[0].generation > w[1].generation));
    assert_eq!(store.history(&app, 3).await.unwrap(), all[..3].to_vec());
    assert!(store.history(&app, 0).await.unwrap().is_empty());
    assert_eq!(store.history(&app, usize::MAX).await.unwrap(), all);
}

/// Bad input is refused with `InvalidInput` and changes nothing.
pub async fn bad_input_changes_nothing(store: &dyn ColourStore) {
    let app = initialised(store, "bad-input", Colour::Blue).await;
    let before = store.get(&app).await.unwrap();
    let long = "x".repeat(crate::MAX_NAME_LEN + 1);
    let refusals = [
        store
            .switch(&app, SwitchRequest::new(Colour::Green, ""))
            .await
            .err(),
        store
            .switch(&app, SwitchRequest::new(Colour::Green, long.as_str()))
            .await
            .err(),
        store
            .switch(&app, SwitchRequest::new(Colour::Green, "a\nb"))
            .await
            .err(),
        store
            .switch(
                &app,
                SwitchRequest::new(Colour::Green, "t").expect_generation(0),
            )
            .await
            .err(),
        store
            .switch(
                &app,
                SwitchRequest::new(Colour::Green, "t").expect_generation(crate::MAX_GENERATION + 1),
            )
            .await
            .err(),
        store
            .record_deploy(
                &app,
                DeployRecord::new(Colour::Green, "", DeployPhase::Deploying, "t"),
            )
            .await
            .err(),
        store
            .record_deploy(
                &app,
                DeployRecord::new(Colour::Green, "v 1", DeployPhase::Deploying, "t"),
            )
            .await
            .err(),
        store
            .init(
                &app,
                InitRequest::new(Colour::Green, "t")
                    .force(true)
                    .min_generation(0),
            )
            .await
            .err(),
        store
            .acquire_lease(&app, LeaseRequest::new("h", Duration::ZERO))
            .await
            .err(),
        store
            .acquire_lease(&app, LeaseRequest::new("", Duration::from_secs(1)))
            .await
            .err(),
        store
            .report_presence(
                &app,
                Presence::new("", Colour::Blue, "v1", 1),
                Duration::from_secs(1),
            )
            .await
            .err(),
    ];
    for (i, r) in refusals.into_iter().enumerate() {
        match r {
            Some(Error::InvalidInput(e)) => assert!(!e.reason.is_empty()),
            other => panic!("refusal {i}: expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(store.get(&app).await.unwrap(), before);
    assert_eq!(store.history(&app, 10).await.unwrap().len(), 1);
    assert_eq!(store.lease(&app).await.unwrap(), None);
}

/// Gates report themselves; reports lapse after their TTL.
pub async fn presence(store: &dyn ColourStore) {
    let app = initialised(store, "presence", Colour::Blue).await;
    store
        .report_presence(
            &app,
            Presence::new("gate-b1", Colour::Blue, "v1", 1),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    store
        .report_presence(
            &app,
            Presence::new("gate-g1", Colour::Green, "v2", 1),
            Duration::from_millis(300),
        )
        .await
        .unwrap();
    let seen = store.presences(&app).await.unwrap();
    let ids: Vec<_> = seen.iter().map(|p| p.gate_id.as_str()).collect();
    assert_eq!(ids, ["gate-b1", "gate-g1"]);
    let g = &seen[1];
    assert_eq!(
        (g.colour, g.service_version.as_str(), g.applied_generation),
        (Colour::Green, "v2", 1)
    );
    assert!(g.seen_at_ms > 0 && g.expires_at_ms > g.seen_at_ms);

    // A newer report replaces the old one.
    store
        .report_presence(
            &app,
            Presence::new("gate-b1", Colour::Blue, "v1", 2),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(450)).await;
    let seen = store.presences(&app).await.unwrap();
    assert_eq!(seen.len(), 1, "the lapsed report must be gone: {seen:?}");
    assert_eq!(
        (seen[0].gate_id.as_str(), seen[0].applied_generation),
        ("gate-b1", 2)
    );
}

/// A subscriber hears of a switch.
pub async fn notifications(store: &dyn ColourStore, within: Duration) {
    let app = initialised(store, "notify", Colour::Blue).await;
    let other = initialised(store, "notify-other", Colour::Blue).await;
    let mut sub = store.subscribe(&app).await.unwrap();
    store
        .switch(&other, SwitchRequest::new(Colour::Green, "n"))
        .await
        .unwrap();
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "n"))
        .await
        .unwrap();
    let change = tokio::time::timeout(within, sub.recv())
        .await
        .expect("no change notification in time")
        .expect("subscription ended");
    assert_eq!(change.app, app, "a change of another app was delivered");
    assert_eq!(change.generation, Some(2));
}

/// Many writers, each switching to the colour not live at its read with
/// compare-and-swap: no update is lost. The successful generations are
/// unique and contiguous, and the final generation is 1 + their count.
pub async fn compare_and_swap_race(stores: &[Arc<dyn ColourStore>], writers: usize, rounds: usize) {
    assert!(!stores.is_empty());
    let app = initialised(stores[0].as_ref(), "race", Colour::Blue).await;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = Arc::clone(&stores[w % stores.len()]);
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            for _ in 0..rounds {
                let seen = store.get(&app).await.unwrap().unwrap();
                let req = SwitchRequest::new(seen.idle(), format!("writer-{w}"))
                    .expect_generation(seen.generation);
                match store.switch(&app, req).await {
                    Ok(out) => {
                        assert!(out.changed, "a switch to the idle colour changed nothing");
                        assert_eq!(out.state.generation, seen.generation + 1);
                        assert_eq!(out.state.active, seen.idle());
                        won.push(out.state.generation);
                    }
                    Err(Error::Conflict { current, .. }) => {
                        assert!(current.generation > seen.generation);
                    }
                    Err(e) => panic!("writer {w}: {e}"),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer panicked"));
    }
    let unique: BTreeSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        all.len(),
        "two writers committed the same generation"
    );
    assert!(!all.is_empty(), "no writer ever won");
    let expected: BTreeSet<u64> = (2..=1 + all.len() as u64).collect();
    assert_eq!(
        unique, expected,
        "successful generations are not contiguous"
    );
    let last = stores[0].get(&app).await.unwrap().unwrap();
    assert_eq!(last.generation, 1 + all.len() as u64);
    // Every success alternated the colour, so parity says who is live.
    let expect_active = if all.len() % 2 == 0 {
        Colour::Blue
    } else {
        Colour::Green
    };
    assert_eq!(last.active, expect_active);
}
