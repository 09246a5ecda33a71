//! Initialisation, generations and the switch: compare-and-swap and retries.

use std::time::Duration;

use super::{Config, fresh_app, initialised};
use crate::{
    Colour, ColourStore, DeployPhase, DeployRecord, Error, EventKind, InitRequest, LeaseRequest,
    SwitchRequest,
};

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
