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
async fn a_failed_verify_switches_back() {
    let store = store().await;
    let checks = failing_checks();
    let mut o = opts();
    o.verify = Some("./verify".into());
    let err = release(&store, &store, &checks, &o).await.unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED);
    assert!(
        matches!(&err, CtlError::Verify(v)
            if matches!(v.failure, CtlError::Check(CheckFailed::Exit { .. }))
                && v.from == Colour::Blue && matches!(v.back, SwitchBack::Done(3))),
        "{err}"
    );
    assert_eq!(live(&store).await, (Colour::Blue, 3));
    let last = &store.history(&app(), 1).await.unwrap()[0];
    assert!(
        matches!(
            last.kind,
            EventKind::Rollback {
                to: Colour::Blue,
                ..
            }
        ),
        "{last:?}"
    );
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
async fn lingering_websockets_are_drained_first() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicU64::new(4));
    let o2 = Arc::clone(&open);
    let mut g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(move |r| r.connections.websockets = Some(o2.load(Ordering::SeqCst)))
        .build();
    let o3 = Arc::clone(&open);
    g.expect_drain()
        .withf(|url, _, _, lasting| url == GREEN && *lasting == opts().drain_timeout)
        .times(1)
        .returning(move |_, _, _, _| {
            o3.store(0, Ordering::SeqCst);
            Ok(4)
        });
    let out = run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap();
    assert!(out.switched);
}

#[tokio::test(start_paused = true)]
async fn a_gate_that_cannot_count_its_websockets_holds_the_drain() {
    // Green's sidecar gate cannot read its service's count for a while:
    // unknown, not zero. The release waits, asks it to drain all the same
    // (it forwards the drain to its service), and goes on once it counts 0.
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let r2 = Arc::clone(&reads);
    let mut g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(move |r| {
            let n = r2.fetch_add(1, Ordering::SeqCst);
            r.connections.websockets = (n >= 8).then_some(0);
        })
        .build();
    g.expect_drain()
        .withf(|url, _, n, _| url == GREEN && *n == 0)
        .times(1)
        .returning(|_, _, _, _| Ok(0));
    let mut o = opts();
    o.drain_timeout = Duration::from_secs(60);
    let out = run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &passing_checks(),
        &o,
    )
    .await
    .unwrap();
    assert!(out.switched);
    assert!(reads.load(Ordering::SeqCst) > 8, "it waited for a count");

    // A count that never comes: the drain runs out, and the restart is not
    // made, with why.
    let store = self::store().await;
    let mut g = FakeGates::following(&store)
        .green(|r| r.connections.websockets = None)
        .build();
    g.expect_drain().times(1).returning(|_, _, _, _| Ok(0));
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let err = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    let msg = err.to_string();
    for said in [
        "green not drained within 300ms",
        "a gate cannot count its websockets",
        "may cut an unknown number",
        "--service-connections-path",
    ] {
        assert!(msg.contains(said), "{said:?} not in: {msg}");
    }
    assert_eq!(live(&store).await, (Colour::Blue, 1));
}

#[tokio::test(start_paused = true)]
async fn every_gate_of_the_colour_is_drained_with_its_own_count() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    // Two green instances with 1,500 websockets each.
    let open = Arc::new(AtomicU64::new(1_500));
    let o2 = Arc::clone(&open);
    let mut g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(move |r| r.connections.websockets = Some(o2.load(Ordering::SeqCst)))
        .build();
    let mut o = opts();
    o.drain_timeout = Duration::from_secs(60);
    let second = "http://green-2";
    o.gates
        .insert(Colour::Green, vec![GREEN.into(), second.into()]);
    let asked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (a2, o3) = (Arc::clone(&asked), Arc::clone(&open));
    let pace = o.drain_pace;
    g.expect_drain()
        .withf(move |_, p, n, _| *p == pace && *n == 1_500)
        .times(2)
        .returning(move |url, _, n, _| {
            let mut asked = a2.lock().unwrap();
            asked.push(url.to_owned());
            if asked.len() == 2 {
                o3.store(0, Ordering::SeqCst);
            }
            Ok(n)
        });
    let out = run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &passing_checks(),
        &o,
    )
    .await
    .unwrap();
    assert!(out.switched);
    assert_eq!(*asked.lock().unwrap(), [GREEN, second]);
}

#[tokio::test(start_paused = true)]
async fn a_drain_pace_that_cannot_finish_in_time_is_refused_before_anything_is_asked() {
    let store = self::store().await;
    let g = {
        let mut g = FakeGates::following(&store)
            .green(|r| r.connections.websockets = Some(10_000))
            .build();
        g.expect_drain().never();
        g
    };
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let mut o = opts();
    o.drain_timeout = Duration::from_secs(60);
    // 10,000 at 100 a second: 100 s, longer than the 60 s the drain has.
    o.drain_pace.max_rate = Some(100);
    let err = run(&store, &g, &t, &passing_checks(), &o)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE, "{err}");
    let msg = err.to_string();
    for said in [
        "10000 websockets",
        "100s",
        "--drain-max-rate",
        "--drain-timeout 60s",
    ] {
        assert!(msg.contains(said), "{said:?} not in: {msg}");
    }
    assert_eq!(live(&store).await, (Colour::Blue, 1));

    // A window longer than the drain's time, the same.
    o.drain_pace.max_rate = None;
    o.drain_pace.window = Duration::from_secs(90);
    let err = run(&store, &g, &t, &passing_checks(), &o)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::USAGE, "{err}");
    assert!(err.to_string().contains("shorten --drain-window"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_that_runs_out_aborts_by_default_and_says_what_it_would_cut() {
    // Clients drained from green came back to it: the load balancer still
    // sends them there.
    let store = self::store().await;
    let mut g = FakeGates::following(&store)
        .green(|r| {
            r.connections.websockets = Some(3);
            r.connections.arrived_while_draining = 2;
        })
        .build();
    g.expect_drain().returning(|_, _, _, _| Ok(3));
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let err = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    let msg = err.to_string();
    for said in [
        "green not drained within 300ms",
        "3 websockets still open, which its restart would cut",
        "2 websockets opened on green after the drain began",
        "green is not out of rotation",
        // The flag is bg-gate's, and said to be.
        "bg-gate --lb-source",
    ] {
        assert!(msg.contains(said), "{said:?} not in: {msg}");
    }
    assert_eq!(live(&store).await, (Colour::Blue, 1));

    // Clients that ignore the close: said as such.
    let store = self::store().await;
    let mut g = FakeGates::following(&store)
        .green(|r| r.connections.websockets = Some(2))
        .build();
    g.expect_drain().returning(|_, _, _, _| Ok(2));
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let err = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    assert!(err.to_string().contains("did not"), "{err}");

    // Told to proceed, it deploys (and cuts them).
    let store = self::store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let mut g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(|r| r.connections.websockets = Some(2))
        .build();
    g.expect_drain().returning(|_, _, _, _| Ok(2));
    let mut o = opts();
    o.on_drain_timeout = OnDrainTimeout::Proceed;
    let out = run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &passing_checks(),
        &o,
    )
    .await
    .unwrap();
    assert!(out.switched);
}

#[tokio::test(start_paused = true)]
async fn the_idle_colour_must_be_out_of_rotation_first() {
    let store = store().await;
    let g = FakeGates::following(&store)
        .green(|r| r.answer = GateAnswer::Handover) // still answering OK
        .build();
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let err = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::TIMEOUT, "{err}");
    assert!(
        matches!(
            err,
            CtlError::Timeout(Timeout::Gates {
                waited: WaitFor::OutOfRotation(Colour::Green),
                ..
            })
        ),
        "{err}"
    );
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
async fn a_switch_whose_answer_was_lost_is_retried_safely() {
    let real = store().await;
    let mock = overlay(&real, FirstAnswerLost::of_a_switch());
    let out = release(&*mock, &real, &passing_checks(), &opts())
        .await
        .unwrap();
    assert_eq!(out.generation, 2, "one switch, recognised on retry");
    assert_eq!(live(&real).await, (Colour::Green, 2));
}

#[tokio::test(start_paused = true)]
async fn a_deploy_record_whose_answer_was_lost_is_retried_safely() {
    let real = store().await;
    let mock = overlay(&real, FirstRecordLost::default());
    let out = release(&*mock, &real, &passing_checks(), &opts())
        .await
        .unwrap();
    assert_eq!(out.generation, 2);
    let records = real
        .history(&app(), 20)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.kind, EventKind::Deploy { .. }))
        .count();
    assert_eq!(records, 2, "one deploying and one deployed record");
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
async fn a_drain_under_way_is_still_waited_for() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let open = Arc::new(AtomicU64::new(3));
    let polls = Arc::new(AtomicU64::new(0));
    let (o2, p) = (Arc::clone(&open), Arc::clone(&polls));
    let mut g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(move |r| {
            // The gate's own drain closes them over a few looks.
            if p.fetch_add(1, Ordering::SeqCst) > 4 {
                o2.store(0, Ordering::SeqCst);
            }
            r.connections.websockets = Some(o2.load(Ordering::SeqCst));
        })
        .build();
    g.expect_drain().returning(|_, _, _, _| Ok(0)); // asked already: nobody new
    let d2 = Arc::clone(&deployed);
    let o3 = Arc::clone(&open);
    let mut t = MockTrigger::new();
    t.expect_deploy().times(1).returning(move |_, _| {
        assert_eq!(
            o3.load(Ordering::SeqCst),
            0,
            "deployed while websockets were still open"
        );
        d2.store(true, Ordering::SeqCst);
        Ok(())
    });
    let out = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap();
    assert!(out.switched);
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
async fn a_forced_switch_during_the_drain_stops_it_at_once_and_triggers_nothing() {
    let store = store().await;
    let mut g = FakeGates::following(&store)
        .green(|r| r.connections.websockets = Some(2)) // clients keep coming back
        .build();
    let s = store.clone();
    g.expect_drain().returning(move |_, _, _, _| {
        // An operator forces the idle colour live while it drains.
        futures_now(s.switch(&app(), SwitchRequest::new(Colour::Green, "ops").force(true)))
            .unwrap();
        Ok(2)
    });
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let mut o = opts();
    o.drain_timeout = Duration::from_secs(60);
    let started = Instant::now();
    let err = run(&store, &g, &t, &passing_checks(), &o)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the drain ran on for {:?}",
        started.elapsed()
    );
    assert_eq!(live(&store).await, (Colour::Green, 2));
}

#[tokio::test(start_paused = true)]
async fn a_lease_broken_during_the_drain_triggers_nothing() {
    let store = store().await;
    let mut g = FakeGates::following(&store)
        .green(|r| r.connections.websockets = Some(2))
        .build();
    let s = store.clone();
    g.expect_drain().returning(move |_, _, _, _| {
        futures_now(s.break_lease(
            &app(),
            BreakLease {
                actor: "ops".into(),
                reason: None,
            },
        ))
        .unwrap();
        Ok(2)
    });
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    // The drain runs out and proceeds before the next renewal would notice.
    let mut o = opts();
    o.lease_ttl = Duration::from_secs(30);
    o.on_drain_timeout = OnDrainTimeout::Proceed;
    let err = run(&store, &g, &t, &passing_checks(), &o)
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::CONFLICT, "{err}");
    assert!(
        matches!(err, CtlError::LeaseLost(LeaseLost::Broken(_))),
        "{err:?}"
    );
    assert_eq!(live(&store).await, (Colour::Blue, 1));
}

#[tokio::test(start_paused = true)]
async fn a_switch_lost_while_the_lease_is_lost_is_read_back() {
    let real = store().await;
    let mock = overlay(&real, SwitchLostWithTheLease::default());
    let mut o = opts();
    // The switch is retried long enough for a renewal to find the lease gone.
    o.ready_timeout = Duration::from_secs(5);
    let out = release(&*mock, &real, &passing_checks(), &o).await;
    assert_eq!(live(&real).await, (Colour::Green, 2));
    let out = out.unwrap();
    assert_eq!((out.switched, out.generation), (true, 2), "{out:?}");
}

/// A store and gates after a release of v2 (to green) went through.
async fn released_v2() -> (MemoryStore, MockGates) {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    let g = gates(&store, &deployed);
    run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &passing_checks(),
        &opts(),
    )
    .await
    .unwrap();
    (store, g)
}

#[tokio::test(start_paused = true)]
async fn a_version_already_live_and_verified_is_success_without_a_release() {
    let (store, g) = released_v2().await;
    // The job is retried after its answer was lost.
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let out = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap();
    assert_eq!(
        out,
        DeployOutcome {
            version: "v2".into(),
            colour: Colour::Green,
            generation: 2,
            switched: false,
            already_live: true
        }
    );
    assert_eq!(live(&store).await, (Colour::Green, 2));
    assert_eq!(
        store.history(&app(), 10).await.unwrap().len(),
        4,
        "nothing recorded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_checks_again_what_the_release_asked_for() {
    let (store, g) = released_v2().await;
    // The same release, retried with --verify, now failing: not a success.
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let mut o = opts();
    o.verify = Some("./verify".into());
    let err = run(&store, &g, &t, &failing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CtlError::Verify(v) if v.to == Colour::Green && v.from == Colour::Blue),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_first_release_after_an_init_without_a_version_can_be_rolled_back() {
    // Blue was made live by an init that knew no version; its gates run
    // v1. The release's switch records that as what blue served live.
    let store = MemoryStore::new();
    store
        .init(&app(), InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap();
    let out = release(&store, &store, &passing_checks(), &opts())
        .await
        .unwrap();
    assert!(out.switched);
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!(
        s.live_version(Colour::Blue).map(|l| l.version.as_str()),
        Some("v1")
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_release_is_not_started_again_because_a_live_gate_blinked() {
    let (store, _) = released_v2().await;
    let deployed = Arc::new(AtomicBool::new(true));
    // The job is retried; green's gate misses two reports, then answers.
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green_silent_for(2)
        .build();
    let out = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap();
    assert!(out.already_live && !out.switched, "{out:?}");
    assert_eq!(live(&store).await, (Colour::Green, 2));

    // One that never answers: unknown, so the job stops (exit 5), and no
    // second release starts.
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green_silent_for(usize::MAX)
        .build();
    let err = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap_err();
    assert_eq!(err.exit_code(), exit::UNREACHABLE, "{err}");
    assert!(
        err.to_string().contains("not starting a second release"),
        "{err}"
    );
    assert_eq!(live(&store).await, (Colour::Green, 2));
    let history = store.history(&app(), 10).await.unwrap();
    assert_eq!(history.len(), 4, "nothing recorded: {history:?}");
}

#[tokio::test(start_paused = true)]
async fn the_switch_back_of_a_retried_release_goes_where_rollback_would() {
    let (store, _) = released_v2().await;
    // Blue served v1 live; since, someone put a hotfix on it by hand. The
    // release is retried with --verify, which fails: there is no going
    // back to a version blue never served live.
    let deployed = Arc::new(AtomicBool::new(true));
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .blue(|r| r.version = "v9-hotfix".into())
        .build();
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let mut o = opts();
    o.verify = Some("./verify".into());
    let err = run(&store, &g, &t, &failing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CtlError::Verify(v) if matches!(&v.back, SwitchBack::NotTried(why)
            if matches!(**why, CtlError::RollbackRefused(RollbackRefused::RunsOther { .. })))),
        "{err:?}"
    );
    assert_eq!(live(&store).await, (Colour::Green, 2));

    // Blue back on v1: the switch back goes there.
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .build();
    let err = run(&store, &g, &t, &failing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CtlError::Verify(v) if matches!(v.back, SwitchBack::Done(3))),
        "{err:?}"
    );
    assert_eq!(live(&store).await, (Colour::Blue, 3));
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

#[tokio::test(start_paused = true)]
async fn no_switch_back_to_an_old_colour_that_does_not_follow_the_store() {
    let store = store().await;
    let deployed = Arc::new(AtomicBool::new(false));
    // Blue still runs v1, but cannot hear the store.
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .blue(|r| r.store.healthy = false)
        .build();
    let mut o = opts();
    o.verify = Some("./verify".into());
    let err = run(
        &store,
        &g,
        &trigger_that_deploys(&deployed),
        &failing_checks(),
        &o,
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_code(), exit::FAILED, "{err}");
    assert!(
        matches!(&err, CtlError::Verify(v) if matches!(v.back, SwitchBack::NotTried(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("not switched back"), "{err}");
    assert_eq!(live(&store).await, (Colour::Green, 2));
}

#[tokio::test(start_paused = true)]
async fn a_switch_back_whose_answer_was_lost_is_retried_safely() {
    let real = store().await;
    let mock = overlay(&real, FirstAnswerLost::of_a_rollback());
    let mut o = opts();
    o.verify = Some("./verify".into());
    let err = release(&*mock, &real, &failing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CtlError::Verify(v) if matches!(v.back, SwitchBack::Done(3))),
        "{err:?}"
    );
    assert_eq!(live(&real).await, (Colour::Blue, 3), "switched back once");
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_during_the_switch_back_is_reported_as_what_happened() {
    for commits in [true, false] {
        let real = store().await;
        let mock = overlay(&real, SwitchBackLosesTheLease::commits(commits));
        let mut o = opts();
        o.verify = Some("./verify".into());
        // The switch back is retried long enough for a renewal to find the
        // lease gone.
        o.ready_timeout = Duration::from_secs(5);
        let err = release(&*mock, &real, &failing_checks(), &o)
            .await
            .unwrap_err();
        let CtlError::Verify(v) = &err else {
            panic!("commits {commits}: not reported as a failed verify: {err:?}");
        };
        assert_eq!((v.to, v.from), (Colour::Green, Colour::Blue));
        assert_eq!(err.exit_code(), exit::FAILED, "{err}");
        let msg = err.to_string();
        assert!(msg.starts_with("verify failed ("), "{msg}");
        if commits {
            assert!(matches!(v.back, SwitchBack::Done(3)), "{err:?}");
            assert!(msg.contains("switched back to blue"), "{msg}");
            assert_eq!(live(&real).await, (Colour::Blue, 3));
        } else {
            assert!(
                matches!(&v.back, SwitchBack::Failed(e)
                if matches!(**e, CtlError::LeaseLost(_))),
                "{err:?}"
            );
            assert!(msg.contains("switching back to blue failed too"), "{msg}");
            assert_eq!(live(&real).await, (Colour::Green, 2));
        }
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
