//! `on_change`: the command a gate runs when the live colour changes, for
//! load balancers that are told rather than asking.

use std::path::Path;
use std::time::Instant;

use axum::http::StatusCode;
use bg_gate::Answer;
use bg_state::{Colour, SwitchRequest};

use super::view::wait_for;
use super::*;

/// The lines the command wrote so far.
pub(crate) fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Quotes a path for `sh`: temporary paths hold no single quote.
pub(crate) fn q(path: &Path) -> String {
    let s = path.to_str().unwrap();
    assert!(!s.contains('\''), "{s}");
    format!("'{s}'")
}

async fn switch(store: &Arc<dyn ColourStore>, gate: &Gate, to: Colour) {
    store
        .switch(&app(), SwitchRequest::new(to, "t"))
        .await
        .unwrap();
    gate.refresh().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_on_a_switch_with_the_environment_and_not_on_a_refresh() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Green);
    cfg.on_change = Some(format!(
        "printf '%s %s %s %s\\n' \"$BG_ACTIVE\" \"$BG_GENERATION\" \"$BG_APP\" \"$BG_COLOUR\" >> {}",
        q(&out)
    ));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();

    // Once at start-up, for the first state learned.
    wait_for(|| !lines(&out).is_empty()).await;
    assert_eq!(lines(&out), ["blue 1 chat green"]);

    // Reads that change nothing run nothing, nor does a switch to the live colour.
    for _ in 0..5 {
        gate.refresh().await;
    }
    switch(&store, &gate, Colour::Blue).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&out), ["blue 1 chat green"]);

    switch(&store, &gate, Colour::Green).await;
    wait_for(|| lines(&out).len() == 2).await;
    switch(&store, &gate, Colour::Blue).await;
    wait_for(|| lines(&out).len() == 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        lines(&out),
        [
            "blue 1 chat green",
            "green 2 chat green",
            "blue 3 chat green"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_one_at_a_time_off_the_health_check_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let busy = dir.path().join("busy");
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    // A slow command that notices if another run overlaps it.
    cfg.on_change = Some(format!(
        "mkdir {busy} || echo overlap >> {out}; sleep 1; \
         echo \"$BG_ACTIVE $BG_GENERATION\" >> {out}; rmdir {busy}",
        busy = q(&busy),
        out = q(&out)
    ));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();
    wait_for(|| lines(&out) == ["blue 1"]).await;
    wait_for(|| !busy.exists()).await;

    let r = router(&gate);
    switch(&store, &gate, Colour::Green).await;
    wait_for(|| busy.exists()).await;
    // The command is running; the view has moved on and answers at once.
    let started = Instant::now();
    let a = get(&r, "/balancer-keepalive-check").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_millis(200));
    assert_eq!(gate.answer(Colour::Green), Answer::Ok);

    // Changes that pile up meanwhile: only the latest runs, after the first.
    switch(&store, &gate, Colour::Blue).await;
    switch(&store, &gate, Colour::Green).await;
    switch(&store, &gate, Colour::Blue).await;
    assert!(
        busy.exists(),
        "the first run ended before the changes piled up"
    );
    wait_for(|| lines(&out).len() >= 3).await;
    wait_for(|| !busy.exists()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lines(&out), ["blue 1", "green 2", "blue 5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_retried_and_never_stops_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let ready = dir.path().join("ready");
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.on_change = Some(format!(
        "test -e {ready} || exit 3; echo \"$BG_ACTIVE\" >> {out}",
        ready = q(&ready),
        out = q(&out)
    ));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(lines(&out).is_empty());
    assert_eq!(gate.answer(Colour::Blue), Answer::Ok);

    // The load balancer comes back (say): the next retry pushes the state.
    std::fs::write(&ready, "").unwrap();
    wait_for(|| lines(&out) == ["blue"]).await;
    switch(&store, &gate, Colour::Green).await;
    wait_for(|| lines(&out) == ["blue", "green"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_outage_pushes_the_cached_state() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("runs");
    let cache = dir.path().join("gate-cache.json");
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.cache_file = Some(cache.clone());
    let cached = || -> Option<String> {
        let text = std::fs::read_to_string(&cache).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["state"]["active"].as_str().map(str::to_owned)
    };
    let g = gate(&store, cfg.clone()).await;
    // One write at a time: two cache writes in flight may land in either order.
    wait_for(|| cached().as_deref() == Some("blue")).await;
    switch(&store, &g, Colour::Green).await;
    wait_for(|| cached().as_deref() == Some("green")).await;
    drop(g);

    // Restarted while the store is unreachable (nothing listens on port 1):
    // the load balancer is still pointed at the live colour it knew.
    let down = bg_state::open("redis://127.0.0.1:1/0").unwrap();
    cfg.on_change = Some(format!("echo \"$BG_ACTIVE $BG_GENERATION\" >> {}", q(&out)));
    let g = Gate::new(down, cfg, auth()).unwrap();
    let _follower = g.start();
    wait_for(|| lines(&out) == ["green 2"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_gets_a_minimal_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Green);
    cfg.on_change = Some(format!("env > {}.part && mv {0}.part {0}", q(&out)));
    let gate = Gate::new(Arc::clone(&store), cfg, auth()).unwrap();
    let _follower = gate.start();
    wait_for(|| out.exists()).await;
    let names: Vec<String> = lines(&out)
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_owned()))
        .collect();
    // `sh` itself may add PWD, SHLVL and `_`; nothing of the gate's own
    // environment (store URL, tokens, cloud credentials) comes through.
    let allowed = [
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TZ",
        "BG_ACTIVE",
        "BG_GENERATION",
        "BG_APP",
        "BG_COLOUR",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "_",
    ];
    for name in &names {
        assert!(allowed.contains(&name.as_str()), "{name} in {names:?}");
    }
    assert!(names.iter().any(|n| n == "PATH"), "{names:?}");
    assert!(names.iter().any(|n| n == "BG_ACTIVE"), "{names:?}");
}
