//! Steps 3 and 4: out of rotation, then the paced drain.

use super::*;

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
