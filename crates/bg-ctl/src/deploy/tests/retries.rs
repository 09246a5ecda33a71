//! Lost answers, retried jobs, lost leases and the switch back after a
//! failed verify.

use super::*;

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

#[tokio::test(start_paused = true)]
async fn a_lease_lost_during_the_switch_back_of_a_retried_release_is_reported_too() {
    // The retried job finds v2 live and verified, and its --verify fails;
    // the lease goes while the switch back is sent.
    let (real, _) = released_v2().await;
    let deployed = Arc::new(AtomicBool::new(true));
    let g = FakeGates::following(&real).deployed_when(&deployed).build();
    let mock = overlay(&real, SwitchBackLosesTheLease::commits(true));
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let mut o = opts();
    o.verify = Some("./verify".into());
    o.ready_timeout = Duration::from_secs(5);
    let err = run(&*mock, &g, &t, &failing_checks(), &o)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CtlError::Verify(v) if v.to == Colour::Green
            && matches!(v.back, SwitchBack::Done(3))),
        "{err:?}"
    );
    assert_eq!(live(&real).await, (Colour::Blue, 3));
}

#[tokio::test(start_paused = true)]
async fn a_live_gate_that_does_not_know_its_version_is_not_running_something_else() {
    // A sidecar of green whose service has not said its version yet
    // reports "unknown": asked again, not a reason for a second release.
    let (store, _) = released_v2().await;
    let deployed = Arc::new(AtomicBool::new(true));
    let reads = Arc::new(AtomicU64::new(0));
    let r2 = Arc::clone(&reads);
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .green(move |r| {
            if r2.fetch_add(1, Ordering::SeqCst) < 2 {
                r.version = bg_state::wire::UNKNOWN_VERSION.into();
            }
        })
        .build();
    let mut t = MockTrigger::new();
    t.expect_deploy().never();
    let out = run(&store, &g, &t, &passing_checks(), &opts())
        .await
        .unwrap();
    assert!(out.already_live, "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn an_unknown_version_is_never_recorded_as_served_live() {
    let store = MemoryStore::new();
    store
        .init(&app(), InitRequest::new(Colour::Blue, "ops"))
        .await
        .unwrap();
    let deployed = Arc::new(AtomicBool::new(false));
    let g = FakeGates::following(&store)
        .deployed_when(&deployed)
        .blue(|r| r.version = bg_state::wire::UNKNOWN_VERSION.into())
        .build();
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
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!(s.live_version(Colour::Blue), None);
}

/// Records every deploy record's fence and request id, then passes it on.
#[derive(Debug, Default)]
struct SeesRecords(std::sync::Mutex<Vec<(Option<u64>, Option<String>)>>);

#[async_trait::async_trait]
impl bg_testkit::store::Override for SeesRecords {
    async fn record_deploy(
        &self,
        inner: &dyn ColourStore,
        app: &bg_state::AppName,
        rec: bg_state::DeployRecord,
    ) -> bg_state::Result<bg_state::State> {
        self.0
            .lock()
            .unwrap()
            .push((rec.fence, rec.request_id.clone()));
        inner.record_deploy(app, rec).await
    }
}

#[tokio::test(start_paused = true)]
async fn no_request_id_carries_the_fence() {
    // Request ids are kept in the state, which anyone may read.
    let real = store().await;
    let mock = bg_testkit::store::Overlay::new(Arc::new(real.clone()), SeesRecords::default());
    release(&mock, &real, &passing_checks(), &opts())
        .await
        .unwrap();
    let seen = mock.over().0.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    for (fence, id) in seen.iter() {
        let (fence, id) = (fence.unwrap().to_string(), id.clone().unwrap());
        assert!(!id.contains(&fence), "{id} carries the fence {fence}");
    }
    let state = serde_json::to_string(&real.get(&app()).await.unwrap()).unwrap();
    assert!(!state.contains(&seen[0].0.unwrap().to_string()), "{state}");
}
