//! Redis Sentinel failing over, and a Redis Cluster moving the app's slot,
//! under two running `bg-gate` processes. Under Sentinel the
//! gates answer the same while the master is gone, `bg-ctl` switches on the
//! promoted replica, and no acknowledged switch is lost.

use std::time::{Duration, Instant};

use bg_e2e::{Ctl, Instance, addr_of, gate_status, instances, run, show};
use bg_state::{AppName, Colour};
use bg_testkit::{RedisCluster, SentinelSet, workspace_binary};

const TOKEN: &str = "failover-test-token-0123";

/// Both gates' answers: whether each says its colour is live.
fn answers(gates: &bg_e2e::Instances) -> (Option<bool>, Option<bool>) {
    let live = |colour| gate_status(addr_of(gates, colour)).map(|s| s.live);
    (live("blue"), live("green"))
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two `bg-gate` processes on `url`, blue live.
async fn two_gates(url: &str) -> bg_e2e::Instances {
    let program = workspace_binary("bg-gate", "bg-gate");
    let gate = |colour| {
        Instance::new(program.clone(), colour, url, "chat")
            .args(&["--poll-interval", "100ms", "--handover", "0s"])
            .env("BG_TOKEN", TOKEN)
            .started("v1")
    };
    let gates = instances([gate("blue"), gate("green")]);
    wait_for("blue live", || answers(&gates) == (Some(true), Some(false))).await;
    gates
}

/// `bg-ctl switch --to green` as `actor`, and both gates following it.
async fn switch_to_green(url: &str, gates: &bg_e2e::Instances, actor: &str) -> Ctl {
    let ctl = Ctl::workspace(url, "chat", TOKEN, actor);
    let out = run(ctl.command(&["switch", "--to", "green", "--timeout", "3s"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    wait_for("green live", || answers(gates) == (Some(false), Some(true))).await;
    ctl
}

/// The state, read again while the store answers that retrying may help
/// (the first call after a failover meets the old master's broken connection).
async fn read(store: &dyn bg_state::ColourStore, app: &AppName) -> bg_state::State {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.get(app).await {
            Ok(Some(state)) => return state,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("cannot read the state: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sentinel_failover_under_running_gates_loses_no_acknowledged_switch() {
    let _serial = crate::serial().await;
    let mut set = SentinelSet::start("bgmaster");
    let url = set.url();
    let gates = two_gates(&url).await;

    // The master dies right after it acknowledged the switch, before
    // anything else reads it: the switch must live on in the replica.
    let ctl = Ctl::workspace(&url, "chat", TOKEN, "failover-test");
    let out = run(ctl.command(&["switch", "--to", "green", "--timeout", "3s"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let old_master = set.master_port();
    set.master.kill();

    // Until the sentinel promotes the replica, each gate answers from the
    // state it holds: generation 1 (blue live) or, once it saw the switch,
    // 2 (green live), never back, never anything else.
    let started = Instant::now();
    let mut samples = 0;
    let mut seen = [1, 1];
    while set.master_port() == old_master {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the sentinel promoted nobody"
        );
        for (i, colour) in ["blue", "green"].into_iter().enumerate() {
            let s = gate_status(addr_of(&gates, colour))
                .unwrap_or_else(|| panic!("{colour}'s gate stopped answering during the failover"));
            assert!(
                s.generation >= seen[i] && s.generation <= 2,
                "{colour} went from generation {} to {} during the failover",
                seen[i],
                s.generation
            );
            let live_colour = if s.generation == 2 { "green" } else { "blue" };
            assert_eq!(
                s.live,
                colour == live_colour,
                "{colour} during the failover: {s:?}"
            );
            seen[i] = s.generation;
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "failover: promoted after {:?}, {samples} samples of both gates",
        started.elapsed()
    );
    // The sentinel waits a second (down-after-milliseconds) before it acts:
    // the gates were looked at throughout, not once or never.
    assert!(
        samples >= 5,
        "only {samples} samples were taken during the failover"
    );
    assert_eq!(set.master_port(), set.replica.port());
    // The acknowledged switch survived: the replica had confirmed it.
    let store = bg_state::open(&url).unwrap();
    let app = AppName::new("chat").unwrap();
    let after = read(store.as_ref(), &app).await;
    assert_eq!((after.active, after.generation), (Colour::Green, 2));
    wait_for(
        "both gates follow the switch on the promoted replica",
        || answers(&gates) == (Some(false), Some(true)),
    )
    .await;

    // With no replica left, a switch cannot be confirmed: the outcome is
    // unknown (exit 5), never success.
    let out = run(ctl.command(&["switch", "--to", "blue", "--timeout", "2s"])).await;
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));

    // The old node comes back empty as a replica of the new master (the
    // sentinel would turn it into one too, in its own time), and the same
    // switch, run again, is confirmed.
    set.master.restart();
    let old = set.master.port();
    let new = set.replica.port().to_string();
    let _ = bg_testkit::redis_cli(old, &["REPLICAOF", "127.0.0.1", &new]);
    set.wait_until("the old master rejoins as a replica", || {
        bg_testkit::redis_cli(old, &["INFO", "replication"]).contains("master_link_status:up")
            && set.replica.replicated_write()
    });
    let out = run(ctl.command(&["switch", "--to", "blue", "--timeout", "3s"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    wait_for("both gates follow the switch after the failover", || {
        answers(&gates) == (Some(true), Some(false))
    })
    .await;
    let last = read(store.as_ref(), &app).await;
    assert_eq!((last.active, last.generation), (Colour::Blue, 3));
    for colour in ["blue", "green"] {
        let status = gate_status(addr_of(&gates, colour)).unwrap();
        assert_eq!(status.generation, 3, "{colour}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_moves_the_apps_slot_under_running_gates() {
    let _serial = crate::serial().await;
    let cluster = RedisCluster::start(3);
    let url = cluster.url();
    let gates = two_gates(&url).await;
    let ctl = switch_to_green(&url, &gates, "reshard-test").await;

    // The app's slot moves to another master while the gates poll and listen.
    let slot = cluster.slot_of("bg:{chat}:state");
    let from = cluster.owner_of(slot);
    cluster.move_slot(slot, (from + 1) % 3);
    assert_eq!(answers(&gates), (Some(false), Some(true)));

    let out = run(ctl.command(&["switch", "--to", "blue", "--timeout", "3s"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    wait_for("both gates see the switch after the move", || {
        answers(&gates) == (Some(true), Some(false))
    })
    .await;
    for colour in ["blue", "green"] {
        let status = gate_status(addr_of(&gates, colour)).unwrap();
        assert_eq!(status.generation, 3, "{colour}: {status:?}");
    }
}
