//! `bg-ctl deploy` for real: a redis-server, two `bg-gate` processes, and a
//! webhook receiver that restarts the idle gate with the new version, the
//! way Portainer restarts a service.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use bg_state::{AppName, Colour, ColourStore, SwitchRequest};
use bg_testkit::{Process, RedisServer, free_port, http, wait_for_port, workspace_binary};

const TOKEN: &str = "release-test-token-0123";

/// One colour's gate process, restartable with another version.
struct GateProc {
    colour: &'static str,
    addr: SocketAddr,
    redis: String,
    process: Option<Process>,
}

impl GateProc {
    fn start(colour: &'static str, redis: &RedisServer, version: &str) -> Self {
        let mut g = GateProc {
            colour,
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            redis: redis.url(),
            process: None,
        };
        g.restart(version);
        g
    }

    fn restart(&mut self, version: &str) {
        self.process = None; // killed and reaped on drop
        let mut cmd = Command::new(workspace_binary("bg-gate", "bg-gate"));
        cmd.args([
            "--colour",
            self.colour,
            "--store",
            &self.redis,
            "--app",
            "chat",
        ])
        .args([
            "--listen",
            &self.addr.to_string(),
            "--service-version",
            version,
        ])
        .args([
            "--init",
            "blue",
            "--poll-interval",
            "100ms",
            "--handover",
            "0s",
        ])
        .env("BG_TOKEN", TOKEN);
        self.process = Some(Process::spawn(&format!("bg-gate {}", self.colour), cmd));
        wait_for_port(self.addr, Duration::from_secs(20));
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

type Gates = Arc<Mutex<BTreeMap<String, GateProc>>>;

/// `POST /hook/{colour}?tag=V`: answers 204 at once and restarts that
/// colour's gate with version V in the background, unless the colour is in
/// `broken` (a webhook that answers 204 and deploys nothing).
async fn hook(
    State((gates, broken)): State<(Gates, Arc<Mutex<Vec<String>>>)>,
    Path(colour): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> StatusCode {
    let version = q.get("tag").cloned().unwrap_or_default();
    if broken.lock().unwrap().contains(&colour) {
        return StatusCode::NO_CONTENT;
    }
    tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(200));
        if let Some(g) = gates.lock().unwrap().get_mut(&colour) {
            g.restart(&version);
        }
    });
    StatusCode::NO_CONTENT
}

struct Rig {
    redis: RedisServer,
    gates: Gates,
    broken: Arc<Mutex<Vec<String>>>,
    hooks: SocketAddr,
    store: Arc<dyn ColourStore>,
}

impl Rig {
    async fn start() -> Rig {
        let redis = RedisServer::start();
        let gates: Gates = Arc::new(Mutex::new(BTreeMap::new()));
        {
            let blue = GateProc::start("blue", &redis, "v1");
            let green = GateProc::start("green", &redis, "v1");
            let mut g = gates.lock().unwrap();
            g.insert("blue".into(), blue);
            g.insert("green".into(), green);
        }
        let broken = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hooks = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/hook/{colour}", post(hook))
            .with_state((Arc::clone(&gates), Arc::clone(&broken)));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let store = bg_state::open(&redis.url()).unwrap();
        let rig = Rig {
            redis,
            gates,
            broken,
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
        self.gates.lock().unwrap()[colour].url()
    }

    /// The gate's answer as 200 or 503, read from `/bg/state` so that the
    /// test's own looking is not logged as a load balancer's probe.
    fn answer(&self, colour: &str) -> u16 {
        let addr = self.gates.lock().unwrap()[colour].addr;
        let Ok(a) = http::get(addr, "/bg/state") else {
            return 0;
        };
        let v: serde_json::Value = serde_json::from_str(&a.body).unwrap_or_default();
        if v["live"] == true { 200 } else { 503 }
    }

    async fn wait_until(&self, what: &str, cond: impl Fn(&Rig) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cond(self) {
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn bg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(workspace_binary("bg-ctl", "bg-ctl"));
        cmd.env("BG_STORE", self.redis.url())
            .env("BG_APP", "chat")
            .env("BG_TOKEN", TOKEN)
            .env("BG_ACTOR", "release-test")
            .env("BG_GATE_BLUE", self.gate_url("blue"))
            .env("BG_GATE_GREEN", self.gate_url("green"))
            .env(
                "BG_WEBHOOK_BLUE",
                format!("http://{}/hook/blue", self.hooks),
            )
            .env(
                "BG_WEBHOOK_GREEN",
                format!("http://{}/hook/green", self.hooks),
            )
            .env("NO_COLOR", "1")
            .args(args);
        cmd
    }

    async fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let mut args = vec!["deploy", "--version", version, "--tag-param", "tag"];
        if !extra.contains(&"--ready-timeout") {
            args.extend(["--ready-timeout", "30s"]);
        }
        args.extend(["--poll", "50ms", "--lease-ttl", "3s"]);
        args.extend_from_slice(extra);
        let mut cmd = self.bg_ctl(&args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
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

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    let mut cmd = rig.bg_ctl(&["rollback", "--reason", "v3 misbehaves"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 4));

    // Blue is now the previous colour, recorded as running v3; once it runs
    // something else, a rollback to it is refused.
    rig.gates
        .lock()
        .unwrap()
        .get_mut("blue")
        .unwrap()
        .restart("v9-hotfix");
    let mut cmd = rig.bg_ctl(&["rollback"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rollback refused"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.live().await, (Colour::Green, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_that_deploys_nothing_is_caught() {
    let _serial = crate::serial().await;
    let rig = Rig::start().await;
    rig.broken.lock().unwrap().push("green".into());
    let out = rig.deploy("v2", &["--ready-timeout", "3s"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
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
    // A deploy whose trigger hangs, killed while it holds the lease.
    let mut cmd = rig.bg_ctl(&[
        "deploy",
        "--version",
        "v2",
        "--exec",
        "sleep 60",
        "--lease-ttl",
        "2s",
        "--poll",
        "50ms",
    ]);
    cmd.env_remove("BG_WEBHOOK_BLUE")
        .env_remove("BG_WEBHOOK_GREEN");
    let doomed = Process::spawn("bg-ctl deploy (to be killed)", cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead_fence = loop {
        if let Some(l) = rig.store.lease(&app).await.unwrap() {
            break l.fence;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed deploy never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let killed = Command::new("kill")
        .args(["-KILL", &doomed.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    drop(doomed);

    // Right away: the lease is still held.
    let out = rig.deploy("v3", &[]).await;
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // Once it expires, the next deploy proceeds.
    let out = rig.deploy("v3", &["--wait-lease", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
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
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 2));
    // The actor is what the gate authenticated (the token's name), not a claim.
    let history = rig
        .store
        .history(&AppName::new("chat").unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(history[0].actor, "bg-token");

    // Without the token, the gate refuses the writes.
    let mut cmd = rig.bg_ctl(&["switch"]);
    cmd.env_remove("BG_STORE")
        .env_remove("BG_TOKEN")
        .env("BG_GATE", rig.gate_url("blue"));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
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
    let mut cmd = rig.bg_ctl(&["init", "--active", "blue"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let mut cmd = rig.bg_ctl(&["switch", "--to", "blue"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("init --from-gate"),
        "{}",
        show(&out)
    );
    assert_eq!(rig.answer("green"), 200, "the gates never went backwards");

    // A gate that does not answer makes the restore refuse.
    let mut cmd = rig.bg_ctl(&[
        "init",
        "--force",
        "--from-gate",
        &rig.gate_url("green"),
        "--from-gate",
        "http://127.0.0.1:1",
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));

    // The restore lands above every gate: they follow it again.
    let (blue, green) = (rig.gate_url("blue"), rig.gate_url("green"));
    let mut cmd = rig.bg_ctl(&[
        "init",
        "--force",
        "--from-gate",
        &blue,
        "--from-gate",
        &green,
    ]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Green, 3));
    let out = rig.deploy("v3", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(rig.live().await, (Colour::Blue, 4));
    rig.wait_until("blue serves", |r| r.answer("blue") == 200)
        .await;
}
