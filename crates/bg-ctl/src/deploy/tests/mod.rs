//! The release against a memory store and fake gates, on paused time:
//! every failure path leaves the live colour, with its exit code.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bg_state::{
    BreakLease, ColourStore, EventKind, InitRequest, LeaseRequest, MemoryStore, Presence,
    SwitchRequest,
};

use super::*;
use crate::error::{CheckFailed, GateAhead, LeaseLost, Pending, RollbackRefused, SwitchBack, exit};
use crate::gates::MockGates;
use crate::testing::{
    BLUE, FakeGates, FirstAnswerLost, FirstRecordLost, GREEN, OneReadFails,
    SwitchBackLosesTheLease, SwitchLostWithTheLease, SwitchUnreachable, app, failing_checks,
    futures_now, gates, live, opts, overlay, passing_checks, release, run, store,
    trigger_that_deploys,
};
use crate::trigger::MockTrigger;

mod drain;
mod retries;

#[tokio::test(start_paused = true)]
async fn a_release_switches_after_the_new_version_is_seen() {
    let store = store().await;
    let mut o = opts();
    o.smoke = Some("true".into());
    o.verify = Some("true".into());
    o.confirm_lb = true;
    let out = release(&store, &store, &passing_checks(), &o)
        .await
        .unwrap();
    assert_eq!(
        out,
        DeployOutcome {
            version: "v2".into(),
            colour: Colour::Green,
            generation: 2,
            switched: true,
            already_live: false
        }
    );
    assert_eq!(live(&store).await, (Colour::Green, 2));
    let history = store.history(&app(), 10).await.unwrap();
    let kinds: Vec<_> = history.iter().map(|e| &e.kind).collect();
    assert!(
        matches!(
            kinds[0],
            EventKind::Switch {
                to: Colour::Green,
                ..
            }
        ),
        "{kinds:?}"
    );
    assert!(matches!(
        kinds[1],
        EventKind::Deploy {
            phase: DeployPhase::Deployed,
            ..
        }
    ));
    assert!(matches!(
        kinds[2],
        EventKind::Deploy {
            phase: DeployPhase::Deploying,
            ..
        }
    ));
    assert_eq!(history[0].actor, "ci");
    assert_eq!(
        store.lease(&app()).await.unwrap(),
        None,
        "the lease is released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_webhook_that_deploys_nothing_ends_in_a_timeout_and_no_switch() {
    let store = store().await;
    let never = Arc::new(AtomicBool::new(false));
    let mut t = MockTrigger::new();
    t.expect_deploy().times(1).returning(|_, _| Ok(())); // "204", and nothing happens
    let err = run(
        &store,
        &gates(&store, &never),
        &t,
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    assert!(
        matches!(
            &err,
            CtlError::Timeout(Timeout::Gates {
                waited: WaitFor::Running { .. },
                pending: Pending::Gates(NotYet::Runs { url, version }),
                ..
            }) if url == GREEN && version == "v1"
        ),
        "{err}"
    );
    assert_eq!(live(&store).await, (Colour::Blue, 1));
    assert_eq!(store.lease(&app()).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn a_switch_meanwhile_is_a_conflict_and_nothing_is_overwritten() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let mut t = MockTrigger::new();
    let s = store.clone();
    t.expect_deploy().times(1).returning(move |_, _| {
        // Someone forces a switch while the deploy runs.
        futures_now(s.switch(
            &app(),
            SwitchRequest::new(Colour::Green, "someone").force(true),
        ))
        .unwrap();
        Ok(())
    });
    let err = run(
        &store,
        &gates(&store, &deployed),
        &t,
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!(
        (s.active, s.generation, s.last_change.actor.as_str()),
        (Colour::Green, 2, "someone")
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_or_lagging_target_is_never_switched_to() {
    for (stale_ms, healthy, generation) in [(60_000, true, 1), (20, false, 1), (20, true, 0)] {
        let store = store().await;
        let deployed = Arc::new(AtomicBool::new(false));
        let g = FakeGates::following(&store)
            .deployed_when(&deployed)
            .green(move |r| {
                if r.version == "v2" {
                    r.stale_ms = stale_ms;
                    r.store.healthy = healthy;
                    r.generation = generation;
                }
            })
            .build();
        let err = run(
            &store,
            &g,
            &trigger_that_deploys(&deployed),
            &passing_checks(),
            &opts(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.exit_code(),
            exit::TIMEOUT,
            "{stale_ms} {healthy} {generation}: {err}"
        );
        assert_eq!(live(&store).await, (Colour::Blue, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn a_gate_ahead_of_the_store_stops_everything() {
    let store = store().await;
    store
        .report_presence(
            &app(),
            Presence::new("green-1", Colour::Green, "v1", 9),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let deployed = Arc::new(AtomicBool::new(false));
    let err = run(
        &store,
        &gates(&store, &deployed),
        &t,
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
    assert!(
        matches!(&err, CtlError::GateAhead(GateAhead::Presences { store: 1, gates })
            if *gates == [("green-1".to_owned(), 9)]),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_before_the_switch_leave_the_live_colour() {
    // The trigger fails.
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let mut t = MockTrigger::new();
    t.expect_deploy().returning(|_, _| {
        Err(CtlError::Unreachable(
            "webhook https://portainer/…: refused".into(),
        ))
    });
    let err = run(
        &store,
        &gates(&store, &deployed),
        &t,
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE);
    assert_eq!(live(&store).await, (Colour::Blue, 1));

    // The smoke check fails.
    let store = self::store().await;
    let checks = failing_checks();
    let mut o = opts();
    o.smoke = Some("curl -f $BG_GATE_URL".into());
    let err = release(&store, &store, &checks, &o).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED);
    assert!(
        matches!(&err, CtlError::Smoke(e) if matches!(**e, CtlError::Check(CheckFailed::Exit { .. }))),
        "{err}"
    );
    assert_eq!(live(&store).await, (Colour::Blue, 1));
    let last = &store.history(&app(), 1).await.unwrap()[0];
    assert!(
        matches!(
            last.kind,
            EventKind::Deploy {
                phase: DeployPhase::Deploying,
                ..
            }
        ),
        "no 'deployed' after a failed smoke check"
    );

    // Not initialised.
    let empty = MemoryStore::new();
    let err = run(
        &empty,
        &MockGates::new(),
        &MockTrigger::new(),
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED);
    assert!(matches!(
        err,
        CtlError::Store(StoreError::NotInitialised { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_held_lease_is_a_conflict_or_a_wait() {
    let store = store().await;
    store
        .acquire_lease(
            &app(),
            LeaseRequest::new("pipeline-0", Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let deployed = Arc::new(AtomicBool::new(false));
    let err = run(
        &store,
        &gates(&store, &deployed),
        &MockTrigger::new(),
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
    let mut o = opts();
    o.wait_lease = Some(Duration::from_millis(300));
    let err = run(
        &store,
        &gates(&store, &deployed),
        &MockTrigger::new(),
        &passing_checks(),
        &o,
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    assert_eq!(live(&store).await, (Colour::Blue, 1));
}

#[tokio::test(start_paused = true)]
async fn no_switch_deploys_and_verifies_only() {
    let store = store().await;
    let mut o = opts();
    o.no_switch = true;
    let out = release(&store, &store, &passing_checks(), &o)
        .await
        .unwrap();
    assert!(!out.switched);
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!((s.active, s.generation), (Colour::Blue, 1));
    assert_eq!(s.green.unwrap().phase, DeployPhase::Deployed);
}

#[tokio::test(start_paused = true)]
async fn a_store_outage_at_the_switch_is_exit_5() {
    let real = store().await;
    let mock = overlay(&real, SwitchUnreachable);
    let err = release(&*mock, &real, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
    assert!(
        matches!(
            err,
            CtlError::SwitchUnconfirmed {
                to: Colour::Green,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(live(&real).await, (Colour::Blue, 1));
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_stops_the_release() {
    let store = store().await;
    let never = Arc::new(AtomicBool::new(false));
    let mut t = MockTrigger::new();
    let s = store.clone();
    t.expect_deploy().times(1).returning(move |_, _| {
        // Someone breaks the lease while the deploy runs.
        futures_now(s.break_lease(
            &app(),
            BreakLease {
                actor: "ops".into(),
                reason: None,
            },
        ))
        .unwrap();
        Ok(())
    });
    let mut o = opts();
    o.lease_ttl = Duration::from_millis(150);
    o.ready_timeout = Duration::from_secs(5);
    let err = run(&store, &gates(&store, &never), &t, &passing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(err, CtlError::LeaseLost(LeaseLost::Broken(_))),
        "{err:?}"
    );
    assert_eq!(err.exit_code(), exit::CONFLICT);
    assert_eq!(live(&store).await, (Colour::Blue, 1));
}

#[tokio::test(start_paused = true)]
async fn input_the_store_would_refuse_is_refused_before_the_lease() {
    let multi_line = "Fix the login\n\nLong description".to_owned();
    for (version, reason) in [
        ("v".repeat(129), None),
        ("v 2".to_owned(), None),
        ("v2".to_owned(), Some(multi_line)),
    ] {
        let store = store().await;
        let mut t = MockTrigger::new();
        t.expect_deploy().never();
        let mut o = opts();
        o.version = version;
        o.reason = reason;
        let never = Arc::new(AtomicBool::new(false));
        let err = run(&store, &gates(&store, &never), &t, &passing_checks(), &o)
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), exit::USAGE, "{err}");
        let history = store.history(&app(), 10).await.unwrap();
        assert!(
            history
                .iter()
                .all(|e| !matches!(e.kind, EventKind::Deploy { .. })),
            "nothing recorded: {history:?}"
        );
        assert_eq!(
            store.lease(&app()).await.unwrap(),
            None,
            "no lease was taken"
        );
        let s = store.get(&app()).await.unwrap().unwrap();
        assert_eq!((s.active, s.generation, s.green), (Colour::Blue, 1, None));
    }
}

#[tokio::test(start_paused = true)]
async fn the_longest_version_the_store_takes_is_released_all_the_way() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let long = format!("v2-{}", "x".repeat(117));
    let mut o = opts();
    o.version.clone_from(&long);
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green({
            let long = long.clone();
            move |r| {
                if r.version == "v2" {
                    r.version.clone_from(&long);
                }
            }
        })
        .build();
    let mut t = MockTrigger::new();
    let d = Arc::clone(&deployed);
    t.expect_deploy().times(1).returning(move |_, _| {
        d.store(true, Ordering::SeqCst);
        Ok(())
    });
    let out = run(&store, &g, &t, &passing_checks(), &o).await.unwrap();
    assert!(out.switched);
    assert_eq!(live(&store).await, (Colour::Green, 2));
}

#[tokio::test(start_paused = true)]
async fn one_transient_store_error_during_a_wait_is_retried() {
    // A clean release counts the reads: step 2, then the waits' looks.
    let clean = OneReadFails::after(usize::MAX);
    let reads = clean.reads();
    let real = store().await;
    let out = release(&*overlay(&real, clean), &real, &passing_checks(), &opts()).await;
    assert!(out.is_ok_and(|o| o.switched));
    let reads = reads.load(Ordering::SeqCst);
    assert!(reads >= 4, "a release reads the state {reads} times");
    // Each read after step 2 fails once in turn, and the failure fires.
    for after in 1..reads {
        let real = store().await;
        let fails = OneReadFails::after(after);
        let made = fails.reads();
        let mock = overlay(&real, fails);
        let out = release(&*mock, &real, &passing_checks(), &opts()).await;
        assert!(
            made.load(Ordering::SeqCst) > after,
            "read {after} was never made, so no failure was injected"
        );
        assert!(
            out.as_ref().is_ok_and(|o| o.switched),
            "read {after} failed: {out:?}"
        );
        assert_eq!(live(&real).await, (Colour::Green, 2));
    }
}

/// Through gates (`--gate`) that are all gates of the colour it would
/// restart, a release is refused before it takes the lease; with a gate of
/// the live colour among them, it goes on to the lease.
#[tokio::test]
async fn a_release_that_would_restart_its_own_store_is_refused_first() {
    let state = store().await.get(&app()).await.unwrap();
    let remote = || {
        let mut remote = bg_state::MockColourStore::new();
        remote.expect_backend().return_const("remote");
        let state = state.clone();
        remote.expect_get().returning(move |_| Ok(state.clone()));
        remote
    };
    let release = |store: bg_state::MockColourStore, o: DeployOptions| async move {
        run(
            &store,
            &MockGates::new(),
            &MockTrigger::new(),
            &passing_checks(),
            &o,
        )
        .await
        .unwrap_err()
    };
    let mut o = opts();
    o.store_gates = vec![format!("{GREEN}/")];
    let err = release(remote(), o.clone()).await;
    assert_eq!(err.exit_code(), exit::USAGE, "{err}");
    assert!(err.to_string().contains("a gate of each colour"), "{err}");

    o.store_gates.push(BLUE.into());
    let mut held = remote();
    held.expect_acquire_lease().returning(|app, _| {
        Err(StoreError::LeaseHeld {
            app: app.clone(),
            holder: "pipeline-0".into(),
            expires_at_ms: 0,
        })
    });
    let err = release(held, o).await;
    assert!(
        matches!(err, CtlError::Store(StoreError::LeaseHeld { .. })),
        "{err}"
    );
}
