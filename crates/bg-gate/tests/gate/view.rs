//! The view: handover, alarms, the cache file, `--init`, presence, strict
//! mode, the idle signal and the agent check.

use std::time::Instant;

use axum::http::StatusCode;
use bg_gate::Answer;
use bg_state::{Colour, InitRequest, SwitchRequest};
use bg_testkit::store::{Overlay, Override};
use tokio::io::AsyncReadExt;

use super::*;

#[tokio::test]
async fn the_old_colour_hands_over_before_it_stops() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let mut cfg = config(Colour::Blue);
        cfg.handover = Duration::from_secs(2);
        let blue = gate(&store, cfg).await;
        store
            .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
        let learned = Instant::now();
        blue.refresh().await;
        // The store says green; the old colour still answers OK for a while.
        assert_eq!(blue.answer(Colour::Green), Answer::Ok);
        assert_eq!(blue.answer(Colour::Blue), Answer::Handover);
        let r = router(&blue);
        let v = status(&r).await;
        assert_eq!(v.answer, Answer::Handover, "{v:?}");
        assert!(v.live, "{v:?}");
        assert!(v.handover_ms_left.unwrap() <= 2000);
        assert_eq!(
            get(&r, "/balancer-keepalive-check").await.status,
            StatusCode::OK
        );
        tokio::time::timeout(Duration::from_secs(10), blue.idle())
            .await
            .expect("the idle signal fires once the handover is over");
        assert!(
            learned.elapsed() >= Duration::from_secs(2),
            "handover cut short"
        );
        assert_eq!(blue.answer(Colour::Blue), Answer::Stop);
        assert_eq!(
            get(&r, "/balancer-keepalive-check").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}

/// A store whose first `get` is slow: its answer arrives after a newer one.
#[derive(Debug, Default)]
struct SlowFirstRead {
    calls: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl Override for SlowFirstRead {
    async fn get(
        &self,
        inner: &dyn ColourStore,
        app: &bg_state::AppName,
    ) -> bg_state::Result<Option<bg_state::State>> {
        let read = inner.get(app).await;
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read
    }
}

#[tokio::test]
async fn a_slow_read_cannot_undo_a_newer_one() {
    let memory = memory_with(Colour::Blue).await;
    let slow = Overlay::shared(Arc::clone(&memory), SlowFirstRead::default());
    let g = Gate::new(slow, config(Colour::Green), auth()).unwrap();
    // The first read sees generation 1 but answers late...
    let late = tokio::spawn({
        let g = g.clone();
        async move { g.refresh().await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // ...after a switch and a fresh read of generation 2.
    memory
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    g.refresh().await;
    late.await.unwrap();
    let view = g.view();
    assert_eq!(view.generation(), 2);
    assert_eq!(view.alarm, None, "a stale read raised an alarm");
    assert_eq!(g.answer(Colour::Green), Answer::Ok);
}

#[tokio::test]
async fn another_history_at_the_same_generation_is_an_alarm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/state.json", dir.path().display());
    let store = bg_state::open(&url).unwrap();
    store
        .init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let g = gate(&store, config(Colour::Blue)).await;
    // The store is lost and re-initialised at generation 1 with green live.
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    store
        .init(&app(), InitRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    g.refresh().await;
    let view = g.view();
    assert!(
        view.alarm.as_deref().unwrap().contains("two histories"),
        "{view:?}"
    );
    assert_eq!(
        g.answer(Colour::Blue),
        Answer::Ok,
        "no flip without a handover"
    );
}

#[tokio::test]
async fn a_lower_or_vanished_state_is_an_alarm_and_the_last_known_stands() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/state.json", dir.path().display());
    let store = bg_state::open(&url).unwrap();
    store
        .init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    store
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    let g = gate(&store, config(Colour::Green)).await;
    assert_eq!(g.view().generation(), 2);

    // The store loses its data.
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    g.refresh().await;
    let view = g.view();
    assert!(
        view.alarm.as_deref().unwrap().contains("no state"),
        "{view:?}"
    );
    assert_eq!(
        g.answer(Colour::Green),
        Answer::Ok,
        "a lost store must not flip the answer"
    );

    // Someone re-initialises it naively: generation 1 < 2, blue live.
    store
        .init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    g.refresh().await;
    let view = g.view();
    assert!(
        view.alarm
            .as_deref()
            .unwrap()
            .contains("but this gate applied generation 2"),
        "{view:?}"
    );
    assert_eq!(view.generation(), 2);
    assert_eq!(g.answer(Colour::Green), Answer::Ok);
    let m = get(&router(&g), "/metrics").await.body;
    assert!(m.contains("bg_gate_alarm 1"), "{m}");
    let v = status(&router(&g)).await;
    assert!(
        // The store holds a state: a restore must replace it.
        v.alarm
            .as_deref()
            .unwrap()
            .contains("bg-ctl init --force --from-gate"),
        "{v:?}"
    );

    // The proper restore lands above, and the alarm clears.
    store
        .init(
            &app(),
            InitRequest::new(Colour::Green, "t")
                .force(true)
                .min_generation(3),
        )
        .await
        .unwrap();
    g.refresh().await;
    assert_eq!(g.view().alarm, None);
    assert_eq!(g.view().generation(), 3);
}

#[tokio::test]
async fn a_restart_during_an_outage_answers_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("gate-cache.json");
    let store = memory_with(Colour::Green).await;
    let mut cfg = config(Colour::Green);
    cfg.cache_file = Some(cache.clone());
    let g = gate(&store, cfg.clone()).await;
    assert_eq!(g.answer(Colour::Green), Answer::Ok);
    wait_for(|| cache.exists()).await;
    drop(g);

    // Restarted, and the store is unreachable (nothing listens on port 1).
    let down = bg_state::open("redis://127.0.0.1:1/0").unwrap();
    let g = gate(&down, cfg).await;
    assert_eq!(g.answer(Colour::Green), Answer::Ok);
    let view = g.view();
    assert!(view.from_cache && view.store_error.is_some(), "{view:?}");

    // Without a cache, the same restart answers STOP: nothing is known.
    let g = gate(&down, config(Colour::Green)).await;
    assert_eq!(g.answer(Colour::Green), Answer::Stop);

    // A cache of another app is not used.
    let mut other = GateConfig::new(
        bg_state::AppName::new("other").unwrap(),
        Colour::Green,
        "v1",
    );
    other.cache_file = Some(cache);
    let g = Gate::new(down, other, auth()).unwrap();
    assert_eq!(g.view().state, None);
}

#[tokio::test]
async fn init_only_fills_an_empty_store() {
    let store = bg_state::open("memory://").unwrap();
    let mut cfg = config(Colour::Green);
    cfg.init = Some(Colour::Green);
    let g = Gate::new(Arc::clone(&store), cfg.clone(), auth()).unwrap();
    let _follower = g.start();
    wait_for(|| g.view().state.is_some()).await;
    assert_eq!(
        store.get(&app()).await.unwrap().unwrap().active,
        Colour::Green
    );

    // State already there, with another colour: followed, not overwritten.
    let store = memory_with(Colour::Blue).await;
    let g = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = g.start();
    wait_for(|| g.view().state.is_some()).await;
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!((s.active, s.generation), (Colour::Blue, 1));
    assert_eq!(g.answer(Colour::Green), Answer::Stop);
}

#[tokio::test]
async fn the_follower_reports_presence_and_follows_changes() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let mut cfg = config(Colour::Green);
        cfg.gate_id = "green-1".into();
        cfg.poll_interval = Duration::from_secs(30); // only notifications can be quick
        let g = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
        let _follower = g.start();
        wait_for(|| g.view().state.is_some()).await;
        let seen = store.presences(&app()).await.unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            (
                seen[0].gate_id.as_str(),
                seen[0].colour,
                seen[0].applied_generation
            ),
            ("green-1", Colour::Green, 1)
        );

        store
            .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
        wait_for(|| g.answer(Colour::Green) == Answer::Ok).await;
    }
}

#[tokio::test]
async fn strict_mode_reads_the_store_on_every_check() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let mut cfg = config(Colour::Green);
        cfg.strict = true;
        let g = gate(&store, cfg).await;
        let r = router(&g);
        assert_eq!(
            get(&r, "/balancer-keepalive-check").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        store
            .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
        // No follower runs, no refresh was called: only the check itself read the store.
        assert_eq!(
            get(&r, "/balancer-keepalive-check").await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn agent_check_says_ready_or_drain() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        for (colour, line) in [(Colour::Blue, "ready\n"), (Colour::Green, "drain\n")] {
            let g = gate(&store, config(colour)).await;
            assert_eq!(agent_line(&g).await, line);
            // Each agent query is a probe, as a health check is: step 3 of a
            // release and --confirm-lb read them.
            let probes = g.status().probes;
            assert_eq!(probes.len(), 1, "{probes:?}");
            let p = &probes[0];
            assert_eq!(p.source, Some([127, 0, 0, 1].into()));
            assert_eq!(p.colour, colour);
            let answer = if colour == Colour::Blue {
                Answer::Ok
            } else {
                Answer::Stop
            };
            assert_eq!(p.answer, answer);
        }
    }
}

#[tokio::test]
async fn agent_queries_from_outside_the_lb_sources_are_answered_not_logged() {
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Green);
    cfg.lb_sources = vec!["10.0.0.0/8".parse().unwrap()];
    let g = gate(&store, cfg).await;
    assert_eq!(agent_line(&g).await, "drain\n");
    assert!(g.status().probes.is_empty());
}

/// One agent check of `gate`, over a real socket: the line it answers.
pub(crate) async fn agent_line(gate: &Gate) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn({
        let g = gate.clone();
        async move {
            g.serve_agent(listener, async {
                let _ = rx.await;
            })
            .await
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    tx.send(()).unwrap();
    server.await.unwrap();
    got
}

pub(crate) async fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_idle_colour_drains_by_itself_when_told_to() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let mut cfg = config(Colour::Green);
        cfg.drain_after = Some(Duration::from_millis(100));
        cfg.drain_pace.window = Duration::from_millis(200);
        let g = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
        let mut sockets: Vec<_> = (0..3).map(|_| g.connections().track_websocket()).collect();
        let started = Instant::now();
        let _follower = g.start();
        for s in &mut sockets {
            tokio::time::timeout(Duration::from_secs(10), s.drain_requested())
                .await
                .expect("an idle colour drains its websockets");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "drained before the idle time"
        );

        // The live colour never drains by itself.
        let mut cfg = config(Colour::Blue);
        cfg.drain_after = Some(Duration::from_millis(10));
        let g = Gate::new(store, cfg, auth()).unwrap();
        let mut socket = g.connections().track_websocket();
        let _follower = g.start();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), socket.drain_requested())
                .await
                .is_err(),
            "the live colour drained"
        );
    }
}
