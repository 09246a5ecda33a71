//! `bg-ctl deploy` for real: a redis-server, two `bg-gate` processes, and a
//! webhook receiver that restarts the idle gate with the new version, the
//! way Portainer restarts a service.

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bg_e2e::{
    Ctl, Instance, Instances, Webhooks, addr_of, gate_status, instances, losing_answers,
    losing_write_answers, run, show,
};
use bg_state::{AppName, Colour, ColourStore, SwitchRequest};
use bg_testkit::{Process, RedisServer, workspace_binary, workspace_example};

const TOKEN: &str = "release-test-token-0123";

struct Rig {
    redis: RedisServer,
    gates: Instances,
    hooks: Webhooks,
    store: Arc<dyn ColourStore>,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(workspace_binary("bg-gate", "bg-gate")).await
    }

    /// The rig with `program` (`bg-gate`, or a service embedding the gate)
    /// as both colours' instances.
    async fn start_with(program: std::path::PathBuf) -> Rig {
        let redis = RedisServer::start();
        let gate = |colour| {
            Instance::new(program.clone(), colour, &redis.url(), "chat")
                .args(&["--poll-interval", "100ms", "--handover", "0s"])
                .env("BG_TOKEN", TOKEN)
                .started("v1")
        };
        let gates = instances([gate("blue"), gate("green")]);
        // A restart begins a moment after the hook answered, as Portainer's does.
        let hooks = Webhooks::serve(Arc::clone(&gates), Duration::from_millis(200)).await;
        let store = bg_state::open(&redis.url()).unwrap();
        let rig = Rig {
            redis,
            gates,
            hooks,
            store,
        };
        // Both gates up, blue live.
        rig.wait_until("blue live", |r| {
            r.answer("blue") == 200 && r.answer("green") == 503
        })
        .await;
        rig
    }

    fn gate_url(&self, colour: &str) -> String {
        format!("http://{}", addr_of(&self.gates, colour))
    }

    /// The gate's answer as 200 or 503, read from `/bg/state` so that the
    /// test's own looking is not logged as a load balancer's probe.
    fn answer(&self, colour: &str) -> u16 {
        match gate_status(addr_of(&self.gates, colour)) {
            None => 0,
            Some(s) if s.live => 200,
            Some(_) => 503,
        }
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&Rig) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self) {
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn bg_ctl(&self, args: &[&str]) -> Command {
        Ctl::workspace(&self.redis.url(), "chat", TOKEN, "release-test")
            .release_env(
                addr_of(&self.gates, "blue"),
                addr_of(&self.gates, "green"),
                &self.hooks,
            )
            .command(args)
    }

    async fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", "--version", version, "--tag-param", "tag"];
        if !extra.contains(&"--ready-timeout") {
            args.extend(["--ready-timeout", "30s"]);
        }
        args.extend(["--poll", "50ms", "--lease-ttl", "3s"]);
        args.extend_from_slice(extra);
        run(self.bg_ctl(&args)).await
    }

    async fn live(&self) -> (Colour, u64) {
        let s = self
            .store
            .get(&AppName::new("chat").unwrap())
            .await
            .unwrap()
            .unwrap();
        (s.active, s.generation)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_release_then_rollback() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;

    let out = rig.deploy("v2", &["--json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["ok"], true, "{}", show(&out));
    assert_eq!(result["result"]["colour"], "green");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(TOKEN));
    assert_eq!(rig.live().await, (Colour::Green, 2));
    rig.wait_until("green serves, blue stops", |r| {
        r.answer("green") == 200 && r.answer("blue") == 503
    })
    .await;

    // The next release goes to blue, then a rollback brings green (v2) back.
    let out = rig.deploy("v3", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 3));
    let out = run(rig.bg_ctl(&["rollback", "--reason", "v3 misbehaves"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 4));

    // Run again (its answer lost, the job retried), it finds v3 rolled back
    // and leaves green live.
    let out = run(rig.bg_ctl(&["rollback"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already rolled back"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Green, 4));

    // The next release goes to blue; green served v2 last, but once it runs
    // something else, a rollback to it is refused.
    let out = rig.deploy("v5", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 5));
    rig.gates
        .lock()
        .unwrap()
        .get_mut("green")
        .unwrap()
        .restart("v9-hotfix");
    let out = run(rig.bg_ctl(&["rollback"])).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rollback refused"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Blue, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_release_can_be_rolled_back() {
    // Day one: the gates made blue live (`--init blue`) running v1; the
    // first release puts v2 on green, and a rollback returns to blue's v1.
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    let out = rig.deploy("v2", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
    let out = run(rig.bg_ctl(&["rollback", "--reason", "v2 misbehaves"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 3));
    let s = rig
        .store
        .get(&AppName::new("chat").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        s.live_version(Colour::Blue).map(|l| l.version.as_str()),
        Some("v1")
    );
    assert!(s.live_version(Colour::Green).is_some_and(|l| l.rolled_back));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_deploys_nothing_is_caught() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    rig.hooks.break_colour("green");
    let out = rig.deploy("v2", &["--ready-timeout", "3s"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    // The hook was called, once, and the wait that ran out is the one for
    // the new version, not an earlier one.
    assert_eq!(rig.hooks.calls(), ["green"], "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out: v2 running on green"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Blue, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pipelines_at_once() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    let (a, b) = tokio::join!(rig.deploy("v2", &[]), rig.deploy("v3", &[]));
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes == [Some(0), Some(3)] || codes == [Some(3), Some(0)],
        "one completes, the other is refused:\n{}\n{}",
        show(&a),
        show(&b)
    );
    assert_eq!(rig.live().await, (Colour::Green, 2));

    // Queued with --wait-lease, both complete, one after the other.
    let (a, b) = tokio::join!(
        rig.deploy("v4", &["--wait-lease", "60s"]),
        rig.deploy("v5", &["--wait-lease", "60s"])
    );
    assert_eq!(a.status.code(), Some(0), "{}", show(&a));
    assert_eq!(b.status.code(), Some(0), "{}", show(&b));
    assert_eq!(rig.live().await, (Colour::Green, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pipeline_killed_midway_blocks_nobody_for_long() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    let app = AppName::new("chat").unwrap();
    // A deploy whose trigger hangs, killed once it has recorded the deploy
    // and started the trigger: midway, not at the lease.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("trigger.pid");
    let exec = format!("echo $$ > {}; exec sleep 60", pid_file.display());
    let mut cmd = rig.bg_ctl(&[
        "deploy",
        "--version",
        "v2",
        "--exec",
        &exec,
        "--lease-ttl",
        "2s",
        "--poll",
        "50ms",
    ]);
    cmd.env_remove("BG_WEBHOOK_BLUE")
        .env_remove("BG_WEBHOOK_GREEN");
    let doomed = Process::spawn("bg-ctl deploy (to be killed)", cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let trigger_pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file)
            && !pid.trim().is_empty()
        {
            break pid.trim().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the doomed deploy never started its trigger"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let state = rig.store.get(&app).await.unwrap().unwrap();
    let recorded = state.deployment(Colour::Green).expect("a deploy record");
    assert_eq!(
        (recorded.version.as_str(), recorded.phase),
        ("v2", bg_state::DeployPhase::Deploying),
        "killed after the deploy record"
    );
    let dead_fence = rig.store.lease(&app).await.unwrap().expect("held").fence;
    let killed = Command::new("kill")
        .args(["-KILL", &doomed.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(doomed);
    // The trigger it started outlives a SIGKILL; the test stops it.
    let _ = Command::new("kill").args(["-KILL", &trigger_pid]).status();

    // Right away: the lease is still held.
    let out = rig.deploy("v3", &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // Once it expires, the next deploy proceeds.
    let out = rig.deploy("v3", &["--wait-lease", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
    let state = rig.store.get(&app).await.unwrap().unwrap();
    assert_eq!(
        state.deployment(Colour::Green).map(|d| d.version.as_str()),
        Some("v3"),
        "the next release's record replaced the dead one's"
    );
    // The dead pipeline's fence is refused.
    let err = rig
        .store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "zombie").fence(dead_fence),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, bg_state::Error::StaleFence { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_release_through_a_gate_when_ci_cannot_reach_redis() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    // The live colour's gate is the store; bg-ctl never sees Redis.
    let mut args = vec![
        "deploy",
        "--version",
        "v2",
        "--tag-param",
        "tag",
        "--poll",
        "50ms",
    ];
    args.extend(["--ready-timeout", "30s", "--lease-ttl", "3s"]);
    let mut cmd = rig.bg_ctl(&args);
    cmd.env_remove("BG_STORE")
        .env("BG_GATE", rig.gate_url("blue"));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
    // The actor is what the gate authenticated (the token's name), not a claim.
    let history = rig
        .store
        .history(&AppName::new("chat").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(history[0].actor, "bg-token");

    // The next release restarts blue: with blue's gate as the only store,
    // its webhook would take the store away halfway. Refused before it starts.
    let mut args = args.clone();
    args[2] = "v3";
    let mut cmd = rig.bg_ctl(&args);
    cmd.env_remove("BG_STORE")
        .env("BG_GATE", rig.gate_url("blue"));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a gate of each colour"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.hooks.calls(), ["green"]);
    // With a gate of each colour it goes through blue's restart.
    let mut cmd = rig.bg_ctl(&args);
    cmd.env_remove("BG_STORE").env(
        "BG_GATE",
        format!("{},{}", rig.gate_url("blue"), rig.gate_url("green")),
    );
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 3));
    assert_eq!(rig.hooks.calls(), ["green", "blue"]);

    // Without the token, the gate refuses the writes.
    let mut cmd = rig.bg_ctl(&["switch"]);
    cmd.env_remove("BG_STORE")
        .env_remove("BG_TOKEN")
        .env("BG_GATE", rig.gate_url("blue"));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_restarted_empty_is_restored_from_the_gates() {
    let _serial = crate::serial().await;
    let mut rig = Rig::start().await;
    let out = rig.deploy("v2", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));

    rig.redis.restart(); // empty
    // The gates keep serving what they know; their presence reports come back.
    let app = AppName::new("chat").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while rig.store.presences(&app).await.map_or(0, |p| p.len()) < 2 {
        assert!(
            Instant::now() < deadline,
            "the gates never reported their presence again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rig.answer("green"), 200);
    // A naive re-init lands at generation 1, below the gates: a switch is refused.
    let out = run(rig.bg_ctl(&["init", "--active", "blue"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = run(rig.bg_ctl(&["switch", "--to", "blue"])).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("init --force --from-gate"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.answer("green"), 200, "the gates never went backwards");

    // A gate that does not answer makes the restore refuse.
    let out = run(rig.bg_ctl(&[
        "init",
        "--force",
        "--from-gate",
        &rig.gate_url("green"),
        "--from-gate",
        "http://127.0.0.1:1",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));

    // The restore lands above every gate: they follow it again.
    let (blue, green) = (rig.gate_url("blue"), rig.gate_url("green"));
    let out = run(rig.bg_ctl(&[
        "init",
        "--force",
        "--from-gate",
        &blue,
        "--from-gate",
        &green,
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 3));
    let out = rig.deploy("v3", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 4));
    rig.wait_until("blue serves", |r| r.answer("blue") == 200)
        .await;
}

/// Keeps a websocket open to `addr` until `stop`: asked to leave, it
/// opens the next one before closing the old, as clients that ignore the
/// load balancer would, so the drain never sees zero.
async fn clinging_client(addr: std::net::SocketAddr, stop: Arc<AtomicBool>) {
    use futures_util::StreamExt;
    let connect = || async {
        loop {
            if let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
                return ws;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let mut ws = connect().await;
    while !stop.load(Ordering::Relaxed) {
        match ws.next().await {
            Some(Ok(m)) if !m.is_close() => {}
            _ => {
                let next = connect().await;
                drop(std::mem::replace(&mut ws, next));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_switch_during_the_drain_triggers_nothing() {
    let _serial = crate::serial().await;
    let rig = Rig::start_with(workspace_example("bg-gate", "ws_echo")).await;
    let app = AppName::new("chat").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let green = addr_of(&rig.gates, "green");
    let clients: Vec<_> = (0..3)
        .map(|_| tokio::spawn(clinging_client(green, Arc::clone(&stop))))
        .collect();
    rig.wait_until("clients on green", |_| {
        gate_status(green).is_some_and(|s| s.connections.websockets.is_some_and(|n| n > 0))
    })
    .await;

    let started = Instant::now();
    let (out, ()) = tokio::join!(rig.deploy("v2", &["--drain-timeout", "20s"]), async {
        // Once the release drains green, an operator forces green live.
        let deadline = Instant::now() + Duration::from_secs(20);
        while rig
            .store
            .get(&app)
            .await
            .unwrap()
            .and_then(|s| s.green)
            .is_none()
        {
            assert!(Instant::now() < deadline, "the release never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let forced = run(rig.bg_ctl(&["switch", "--to", "green", "--force"])).await;
        assert_eq!(forced.status.code(), Some(0), "{}", show(&forced));
    });
    stop.store(true, Ordering::Relaxed);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        rig.hooks.calls().is_empty(),
        "a webhook was called: {:?}\n{}",
        rig.hooks.calls(),
        show(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the drain ran to its timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(rig.live().await, (Colour::Green, 2));
    for c in clients {
        c.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollback_whose_answer_was_lost_is_not_done_twice() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    for version in ["v2", "v3"] {
        let out = rig.deploy(version, &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
    assert_eq!(rig.live().await, (Colour::Blue, 3));

    // CI reaches the store through a gate, and the rollback's answer is lost.
    let proxy = losing_write_answers(addr_of(&rig.gates, "green")).await;
    let rollback = || {
        let mut cmd = rig.bg_ctl(&["rollback"]);
        cmd.env_remove("BG_STORE")
            .env("BG_GATE", format!("http://{proxy}"));
        cmd
    };
    let out = run(rollback()).await;
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 4), "it did commit");

    // The job is retried: blue still runs v3, healthy, but v3 was rolled back.
    let out = run(rollback()).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already rolled back"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Green, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_one_off_probe_is_not_a_load_balancer() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    // Someone curls the idle gate's health route once.
    let green = addr_of(&rig.gates, "green");
    let a = bg_testkit::http::get(green, "/balancer-keepalive-check").unwrap();
    assert_eq!(a.status, 503);
    // Waiting for that "load balancer" would run out the 30 s (exit 4).
    let out = rig.deploy("v2", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_back_whose_answer_was_lost_is_retried() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    // CI reaches the store through blue's gate; the switch back's first
    // answer is lost.
    let (proxy, dropped) =
        losing_answers(addr_of(&rig.gates, "blue"), b"\"rollback\":true", 1).await;
    let mut args = vec!["deploy", "--version", "v2", "--tag-param", "tag"];
    args.extend([
        "--poll",
        "50ms",
        "--ready-timeout",
        "30s",
        "--lease-ttl",
        "3s",
    ]);
    args.extend(["--verify", "false"]);
    let mut cmd = rig.bg_ctl(&args);
    cmd.env_remove("BG_STORE")
        .env("BG_GATE", format!("http://{proxy}"));
    let out = run(cmd).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("; switched back to blue"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Blue, 3), "switched back once");
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        1,
        "the proxy dropped the switch back's first answer"
    );
}
