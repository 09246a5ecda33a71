//! Deploy records and the deploy lease: fences, expiry, forced acts.

use std::time::Duration;

use super::{Config, fresh_app, initialised};
use crate::{
    BreakLease, Colour, ColourStore, DeployPhase, DeployRecord, Error, EventKind, InitRequest,
    LeaseRequest, LiveVersion, SwitchRequest,
};

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
            expires_at_ms,
            ..
        } => {
            assert_eq!(holder, "pipeline-a");
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
    let other = a.fence % crate::MAX_GENERATION + 1;
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "old").fence(other))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleFence { presented, .. } if presented == other),
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
    assert!(out.state.last_change.fenced);
    let forced = store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ops").force(true))
        .await
        .unwrap();
    assert!(forced.changed);
    assert!(forced.state.last_change.forced);
    assert!(store.history(&app, 1).await.unwrap()[0].forced);

    // Renew, release, and a new lease gets a new fence.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let renewed = store.renew_lease(&app, a.fence, ttl).await.unwrap();
    assert_eq!(renewed.fence, a.fence);
    assert!(
        renewed.expires_at_ms > again.expires_at_ms,
        "renewing did not extend the lease"
    );
    let err = store.renew_lease(&app, other, ttl).await.unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
    assert!(
        !store.release_lease(&app, other).await.unwrap(),
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
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
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
    assert_ne!(b.fence, a.fence);

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

/// A lease lapses by itself, after which another holder gets another fence.
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
    assert_ne!(b.fence, a.fence);
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "killed-job").fence(a.fence),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StaleFence { .. }), "{err:?}");
}

/// Each colour keeps the version it last served live, apart from its deploy
/// record: a switch sets it from a verified record; a release that failed,
/// or stopped before the switch (`--no-switch`), leaves it; a rollback
/// marks the release it takes out of service, and keeps what the colour it
/// returns to served.
pub async fn live_versions(store: &dyn ColourStore) {
    let app = initialised(store, "live", Colour::Blue).await;
    let record = |c, v: &str, p| {
        let app = app.clone();
        let rec = DeployRecord::new(c, v, p, "ci");
        async move { store.record_deploy(&app, rec).await.unwrap() }
    };
    let switch = |c, rollback| {
        let app = app.clone();
        async move {
            store
                .switch(&app, SwitchRequest::new(c, "ci").rollback(rollback))
                .await
                .unwrap()
                .state
        }
    };
    let live = |v: &str, rolled_back| {
        Some(LiveVersion {
            version: v.into(),
            rolled_back,
        })
    };
    let s = store.get(&app).await.unwrap().unwrap();
    assert_eq!((s.blue_live.clone(), s.green_live.clone()), (None, None));

    // v2 to green, verified and switched: green served v2.
    record(Colour::Green, "v2", DeployPhase::Deploying).await;
    record(Colour::Green, "v2", DeployPhase::Deployed).await;
    let s = switch(Colour::Green, false).await;
    assert_eq!(s.green_live, live("v2", false));
    assert_eq!(s.live_version(Colour::Green), s.green_live.as_ref());

    // v3 to blue, verified, not switched (--no-switch): blue never served it.
    record(Colour::Blue, "v3", DeployPhase::Deploying).await;
    let s = record(Colour::Blue, "v3", DeployPhase::Deployed).await;
    assert_eq!(
        (s.blue_live.clone(), s.green_live.clone()),
        (None, live("v2", false))
    );
    // Promoted later: now it did.
    let s = switch(Colour::Blue, false).await;
    assert_eq!(s.blue_live, live("v3", false));

    // v4 to green fails after the trigger: green still served v2 last.
    let s = record(Colour::Green, "v4", DeployPhase::Deploying).await;
    assert_eq!(s.green_live, live("v2", false));
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);

    // A rollback to green: it serves v2 again (its record, v4, never went
    // live), and blue's v3 is marked rolled back.
    let s = switch(Colour::Green, true).await;
    assert_eq!(
        (s.blue_live.clone(), s.green_live.clone()),
        (live("v3", true), live("v2", false))
    );
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);

    // A deliberate switch back to blue clears the mark.
    let s = switch(Colour::Blue, false).await;
    assert_eq!(s.blue_live, live("v3", false));
}

/// A colour that went live without a live version (state from before the
/// live versions were recorded, or a forced init) gets one when a switch
/// leaves it: its deploy record's version if that was verified, since that
/// is what it served; nothing for a record that never was.
pub async fn live_version_of_the_colour_left(store: &dyn ColourStore) {
    for (phase, expected) in [
        (DeployPhase::Deployed, Some("v1")),
        (DeployPhase::Deploying, None),
    ] {
        for rollback in [false, true] {
            let app = initialised(store, "left", Colour::Blue).await;
            store
                .record_deploy(
                    &app,
                    DeployRecord::new(Colour::Green, "v1", DeployPhase::Deploying, "ci"),
                )
                .await
                .unwrap();
            if phase == DeployPhase::Deployed {
                store
                    .record_deploy(&app, DeployRecord::new(Colour::Green, "v1", phase, "ci"))
                    .await
                    .unwrap();
            }
            // Green goes live without passing through a switch.
            let s = store
                .init(&app, InitRequest::new(Colour::Green, "ops").force(true))
                .await
                .unwrap();
            assert_eq!((s.blue_live, s.green_live), (None, None));
            let s = store
                .switch(
                    &app,
                    SwitchRequest::new(Colour::Blue, "ci").rollback(rollback),
                )
                .await
                .unwrap()
                .state;
            let want = expected.map(|v| LiveVersion {
                version: v.into(),
                rolled_back: rollback,
            });
            assert_eq!(s.green_live, want, "{phase} record, rollback {rollback}");
            assert_eq!(s.blue_live, None);
            assert_eq!(store.get(&app).await.unwrap().unwrap(), s);
        }
    }
}

/// A version known when a colour is made live by `init` is the version it
/// serves live: the first release after installation can be rolled back to
/// it. A forced init with a version replaces a rolled-back mark; one
/// without keeps what was known; a bad version changes nothing.
pub async fn live_version_known_at_init(store: &dyn ColourStore) {
    let app = fresh_app("init-version");
    let s = store
        .init(&app, InitRequest::new(Colour::Blue, "ops").version("v1"))
        .await
        .unwrap();
    let v1 = LiveVersion {
        version: "v1".into(),
        rolled_back: false,
    };
    assert_eq!(
        (s.blue_live.as_ref(), s.green_live.as_ref()),
        (Some(&v1), None)
    );
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);

    // The first release: green runs v2 and goes live; blue keeps v1.
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(&app, DeployRecord::new(Colour::Green, "v2", phase, "ci"))
            .await
            .unwrap();
    }
    let s = store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap()
        .state;
    assert_eq!(s.live_version(Colour::Blue), Some(&v1));
    // Its rollback returns to v1 and marks v2 rolled back.
    let s = store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ci").rollback(true))
        .await
        .unwrap()
        .state;
    assert_eq!(s.live_version(Colour::Blue), Some(&v1));
    assert!(s.live_version(Colour::Green).is_some_and(|l| l.rolled_back));

    // A forced init without a version keeps what was known.
    let s = store
        .init(&app, InitRequest::new(Colour::Green, "ops").force(true))
        .await
        .unwrap();
    assert_eq!(s.live_version(Colour::Blue), Some(&v1));
    assert!(s.live_version(Colour::Green).is_some_and(|l| l.rolled_back));
    // With one, it is the colour's live version again, not rolled back.
    let s = store
        .init(
            &app,
            InitRequest::new(Colour::Green, "ops")
                .force(true)
                .version("v3"),
        )
        .await
        .unwrap();
    let v3 = LiveVersion {
        version: "v3".into(),
        rolled_back: false,
    };
    assert_eq!(s.live_version(Colour::Green), Some(&v3));
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);

    // A version the store's rule refuses: nothing changes.
    for bad in [
        "",
        "two words",
        "v\u{7}",
        &"x".repeat(crate::MAX_VERSION_LEN + 1),
    ] {
        let err = store
            .init(
                &app,
                InitRequest::new(Colour::Blue, "ops")
                    .force(true)
                    .version(bad),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{bad:?}: {err}");
    }
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);
}

/// The first switch away from a colour with no live version (an init that
/// knew none) records the version the caller says the colour runs; a
/// verified deploy record, or a live version already known, wins over it.
pub async fn live_version_reported_on_leaving(store: &dyn ColourStore) {
    let live = |v: &str| LiveVersion {
        version: v.into(),
        rolled_back: false,
    };
    let app = initialised(store, "leaving", Colour::Blue).await;
    let s = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "ci").leaving_version("v1"),
        )
        .await
        .unwrap()
        .state;
    assert_eq!(s.live_version(Colour::Blue), Some(&live("v1")));
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);
    // Known now: a later report does not replace it.
    store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ci"))
        .await
        .unwrap();
    let s = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "ci").leaving_version("v7"),
        )
        .await
        .unwrap()
        .state;
    assert_eq!(s.live_version(Colour::Blue), Some(&live("v1")));

    // A verified record of the colour left is what it served.
    let app = initialised(store, "leaving", Colour::Blue).await;
    store
        .record_deploy(
            &app,
            DeployRecord::new(Colour::Green, "v2", DeployPhase::Deployed, "ci"),
        )
        .await
        .unwrap();
    store
        .init(&app, InitRequest::new(Colour::Green, "ops").force(true))
        .await
        .unwrap();
    let s = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "ci").leaving_version("v9"),
        )
        .await
        .unwrap()
        .state;
    assert_eq!(s.live_version(Colour::Green), Some(&live("v2")));

    // A version the store's rule refuses: nothing changes.
    let before = store.get(&app).await.unwrap().unwrap();
    let err = store
        .switch(
            &app,
            SwitchRequest::new(Colour::Green, "ci").leaving_version("two words"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert_eq!(store.get(&app).await.unwrap().unwrap(), before);
}
