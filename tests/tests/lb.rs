//! The whole claim, for real: HAProxy health-checks two `ws_echo` instances
//! (blue and green, each embedding the gate) while HTTP load and websocket
//! clients flow through it, and `bg-ctl deploy` releases one version after
//! another. No request may fail and no websocket may be cut without a clean
//! close.
//!
//! `BG_E2E_RELEASES` sets how many releases the fast-check run makes
//! (default 10).

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bg_e2e::{
    Ctl, Instance, Instances, Stop, Webhooks, addr_of, gate_status, instances, run, show,
};
use bg_state::wire::GateAnswer;
use bg_state::{AppName, Colour};
use bg_testkit::{Process, RedisServer, free_port, http, wait_for_port, workspace_example};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TOKEN: &str = "lb-test-token-0123456789";

/// How HAProxy checks the instances, and the handover that matches it.
#[derive(Clone, Copy)]
struct Timing {
    inter_ms: u64,
    rise: u32,
    fall: u32,
    handover: &'static str,
}

/// Fast checks, as the issue asks: the gates hand over for 1 s, well above
/// 200 ms × rise 2 plus the time to learn of the switch.
const FAST: Timing = Timing {
    inter_ms: 200,
    rise: 2,
    fall: 2,
    handover: "1s",
};

/// HAProxy's defaults (`inter 2s rise 2 fall 3`) and the gate's default handover.
const DEFAULT: Timing = Timing {
    inter_ms: 2000,
    rise: 2,
    fall: 3,
    handover: "6s",
};

struct Haproxy {
    _process: Process,
    addr: SocketAddr,
}

fn haproxy(blue: SocketAddr, green: SocketAddr, t: Timing, dir: &std::path::Path) -> Haproxy {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The configuration docs/operations.md describes, on test ports.
    let cfg = format!(
        "global\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
         timeout tunnel 1h\n  timeout check 1s\n  retries 3\n  option redispatch\n\
         frontend www\n  bind {addr}\n  default_backend app\n\
         backend app\n  balance roundrobin\n  option httpchk GET /balancer-keepalive-check\n  \
         http-check expect status 200\n  \
         default-server inter {inter}ms fastinter {inter}ms downinter {inter}ms rise {rise} fall {fall}\n  \
         server blue {blue} check\n  server green {green} check\n",
        inter = t.inter_ms,
        rise = t.rise,
        fall = t.fall,
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new("haproxy");
    cmd.arg("-db").arg("-f").arg(&path);
    let process = Process::spawn("haproxy", cmd);
    wait_for_port(addr, Duration::from_secs(10));
    Haproxy {
        _process: process,
        addr,
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
    ws_messages: AtomicU64,
    ws_cut: AtomicU64,
    ws_drained: AtomicU64,
    ws_reconnected: AtomicU64,
    ws_wrong_colour: AtomicU64,
}

/// HTTP requests through HAProxy without pause; any non-2xx or error fails.
async fn load(
    lb: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let answer = tokio::task::spawn_blocking(move || http::get(lb, "/"))
            .await
            .unwrap();
        counts.requests.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok(a) if (200..300).contains(&a.status) => {}
            Ok(a) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                errors
                    .lock()
                    .unwrap()
                    .push(format!("HTTP {}: {}", a.status, a.body.trim()));
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().push(format!("request error: {e}"));
            }
        }
    }
}

/// A websocket client: a message at least every 100 ms, each echo checked;
/// closed with 1012 it reconnects and must land on the live colour.
async fn ws_client(
    lb: SocketAddr,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    live: Arc<Mutex<Colour>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let mut first = true;
    'connect: while !stop.load(Ordering::Relaxed) {
        let (mut ws, _) = match tokio_tungstenite::connect_async(format!("ws://{lb}/ws")).await {
            Ok(c) => c,
            Err(e) => {
                counts.ws_cut.fetch_add(1, Ordering::Relaxed);
                errors
                    .lock()
                    .unwrap()
                    .push(format!("websocket connect failed: {e}"));
                return;
            }
        };
        // The greeting says where we landed.
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                let landed = if t.contains("green") {
                    Colour::Green
                } else {
                    Colour::Blue
                };
                if !first && landed != *live.lock().unwrap() {
                    counts.ws_wrong_colour.fetch_add(1, Ordering::Relaxed);
                }
            }
            other => {
                counts.ws_cut.fetch_add(1, Ordering::Relaxed);
                errors
                    .lock()
                    .unwrap()
                    .push(format!("no greeting: {other:?}"));
                return;
            }
        }
        if !first {
            counts.ws_reconnected.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let msg = format!("m{n}");
            if let Err(e) = ws.send(Message::text(msg.clone())).await {
                counts.ws_cut.fetch_add(1, Ordering::Relaxed);
                errors
                    .lock()
                    .unwrap()
                    .push(format!("websocket send failed: {e}"));
                return;
            }
            match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) if t.as_str() == msg => {
                    counts.ws_messages.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Ok(Message::Close(Some(frame))))) if frame.code == CloseCode::Restart => {
                    counts.ws_drained.fetch_add(1, Ordering::Relaxed);
                    let _ = ws.close(None).await;
                    continue 'connect;
                }
                other => {
                    counts.ws_cut.fetch_add(1, Ordering::Relaxed);
                    errors
                        .lock()
                        .unwrap()
                        .push(format!("websocket cut: {other:?}"));
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = ws.close(None).await;
        return;
    }
}

/// Everything a test needs: Redis, two instances, the webhook receiver,
/// HAProxy, and traffic flowing through it.
struct Harness {
    _dir: tempfile::TempDir,
    redis: RedisServer,
    /// Kept so the instances stop with the harness.
    _instances: Instances,
    hooks: Webhooks,
    lb: Haproxy,
    blue: SocketAddr,
    green: SocketAddr,
    timing: Timing,
    store: Arc<dyn bg_state::ColourStore>,
    app: AppName,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    errors: Arc<Mutex<Vec<String>>>,
    live: Arc<Mutex<Colour>>,
    /// Samples in which neither gate answered OK.
    both_stop: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How many of the latest probes a gate logged were answered STOP.
fn stop_streak(addr: SocketAddr) -> usize {
    gate_status(addr).map_or(0, |s| {
        s.probes
            .iter()
            .rev()
            .take_while(|p| p.answer == GateAnswer::Stop)
            .count()
    })
}

/// Whether a gate answers OK, read from `/bg/state` (not a probe).
fn live_at(addr: SocketAddr) -> bool {
    gate_status(addr).is_some_and(|s| s.live)
}

impl Harness {
    async fn start(timing: Timing, clients: usize) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let instance = |colour| {
            Instance::new(
                workspace_example("bg-gate", "ws_echo"),
                colour,
                &redis.url(),
                "chat",
            )
            .args(&["--poll-interval", "100ms", "--handover", timing.handover])
            .env("BG_TOKEN", TOKEN)
            .stop(Stop::Graceful(Duration::from_secs(10)))
            .started("v0")
        };
        let instances = instances([instance("blue"), instance("green")]);
        let (blue, green) = (addr_of(&instances, "blue"), addr_of(&instances, "green"));
        let hooks = Webhooks::serve(Arc::clone(&instances), Duration::ZERO).await;
        let lb = haproxy(blue, green, timing, dir.path());

        // Wait until HAProxy serves blue.
        let deadline = Instant::now() + Duration::from_secs(60);
        let lb_addr = lb.addr;
        loop {
            if let Ok(a) = tokio::task::spawn_blocking(move || http::get(lb_addr, "/"))
                .await
                .unwrap()
                && a.status == 200
                && a.body.starts_with("blue")
            {
                break;
            }
            assert!(Instant::now() < deadline, "HAProxy never served blue");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // HAProxy starts with both servers up; clients must not land on
        // green before its checks have taken it out.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stops = tokio::task::spawn_blocking(move || stop_streak(green))
                .await
                .unwrap();
            if stops > timing.fall as usize {
                break;
            }
            assert!(Instant::now() < deadline, "HAProxy never took green out");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let mut h = Harness {
            _dir: dir,
            store: bg_state::open(&redis.url()).unwrap(),
            redis,
            _instances: instances,
            hooks,
            lb,
            blue,
            green,
            timing,
            app: AppName::new("chat").unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts::default()),
            errors: Arc::new(Mutex::new(Vec::new())),
            live: Arc::new(Mutex::new(Colour::Blue)),
            both_stop: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        for _ in 0..2 {
            h.tasks.push(tokio::spawn(load(
                h.lb.addr,
                Arc::clone(&h.stop),
                Arc::clone(&h.counts),
                Arc::clone(&h.errors),
            )));
        }
        for _ in 0..clients {
            h.tasks.push(tokio::spawn(ws_client(
                h.lb.addr,
                Arc::clone(&h.stop),
                Arc::clone(&h.counts),
                Arc::clone(&h.live),
                Arc::clone(&h.errors),
            )));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Never both colours STOP.
        let (stop, both, blue, green) = (
            Arc::clone(&h.stop),
            Arc::clone(&h.both_stop),
            h.blue,
            h.green,
        );
        h.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let any = tokio::task::spawn_blocking(move || live_at(blue) || live_at(green))
                    .await
                    .unwrap();
                if !any {
                    both.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
        tokio::time::sleep(Duration::from_millis(500)).await;
        h
    }

    fn bg_ctl(&self, args: &[&str]) -> Command {
        Ctl::workspace(&self.redis.url(), "chat", TOKEN, "lb-test")
            .release_env(self.blue, self.green, &self.hooks)
            .command(args)
    }

    fn deploy_cmd(&self, version: &str, extra: &[&str]) -> Command {
        let (fall, rise) = (self.timing.fall.to_string(), self.timing.rise.to_string());
        let ready = if self.timing.inter_ms >= 1000 {
            "120s"
        } else {
            "60s"
        };
        let mut args = vec![
            "deploy",
            "--version",
            version,
            "--tag-param",
            "tag",
            "--confirm-lb",
        ];
        args.extend(["--lb-fall", &fall, "--lb-rise", &rise, "--poll", "50ms"]);
        args.extend(["--drain-timeout", "30s"]);
        if !extra.contains(&"--ready-timeout") {
            args.extend(["--ready-timeout", ready]);
        }
        args.extend_from_slice(extra);
        self.bg_ctl(&args)
    }

    async fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        let out = run(self.deploy_cmd(version, extra)).await;
        self.note_live().await;
        out
    }

    async fn note_live(&self) {
        let (live, _) = self.state().await;
        *self.live.lock().unwrap() = live;
    }

    /// The store's state; the first call after a Redis restart meets the
    /// dropped connection, so retry what is retryable.
    async fn state(&self) -> (Colour, u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.store.get(&self.app).await {
                Ok(Some(s)) => return (s.active, s.generation),
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => panic!("cannot read the state: {other:?}"),
            }
        }
    }

    /// Every new request is served by `version` of the live colour.
    async fn serves(&self, version: &str) {
        let (live, _) = self.state().await;
        let lb = self.lb.addr;
        for _ in 0..20 {
            let a = tokio::task::spawn_blocking(move || http::get(lb, "/"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                a.body,
                format!("{live} {version}"),
                "not served by the new version"
            );
        }
    }

    /// Stops the traffic and checks nothing failed; prints the counts.
    async fn finish(mut self, what: &str, expect_drains: bool) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "{what}: {} HTTP requests, {} failed; {} websocket echoes, {} drained with 1012 and reconnected {}, {} cut, {} landed on the idle colour; both colours STOP in {} samples",
            load(&c.requests),
            load(&c.failed),
            load(&c.ws_messages),
            load(&c.ws_drained),
            load(&c.ws_reconnected),
            load(&c.ws_cut),
            load(&c.ws_wrong_colour),
            load(&self.both_stop),
        );
        let errors = self.errors.lock().unwrap();
        let some = &errors[..errors.len().min(10)];
        assert_eq!(load(&c.failed), 0, "failed requests: {some:?}");
        assert_eq!(load(&c.ws_cut), 0, "websockets cut: {some:?}");
        assert_eq!(
            load(&c.ws_wrong_colour),
            0,
            "reconnected clients landed on the idle colour"
        );
        assert_eq!(load(&self.both_stop), 0, "both colours answered STOP");
        assert!(load(&c.requests) > 100, "the load generator barely ran");
        assert!(
            load(&c.ws_messages) > 100,
            "the websocket clients barely ran"
        );
        if expect_drains {
            assert!(load(&c.ws_drained) > 0, "no websocket was ever drained");
            assert_eq!(
                load(&c.ws_drained),
                load(&c.ws_reconnected),
                "a drained client did not reconnect"
            );
        }
    }
}

async fn releases_under_traffic(timing: Timing, releases: usize, clients: usize) {
    let h = Harness::start(timing, clients).await;
    for n in 1..=releases {
        let version = format!("v{n}");
        let started = Instant::now();
        // Queued pipelines follow each other at once.
        let out = h.deploy(&version, &["--wait-lease", "60s"]).await;
        assert_eq!(out.status.code(), Some(0), "release {n}:\n{}", show(&out));
        let (live, _) = h.state().await;
        eprintln!(
            "release {n} ({version} to {live}) took {:?}",
            started.elapsed()
        );
        // The LB has seen the switch (--confirm-lb): every new request is served by the new version.
        h.serves(&version).await;
    }
    h.finish(&format!("{releases} releases"), releases >= 2)
        .await;
}

/// The bad days, one after another under the same traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load() {
    let _serial = crate::serial().await;
    let mut h = Harness::start(FAST, 20).await;

    // Redis frozen for 10 s: the gates answer from what they know.
    h.redis.pause();
    tokio::time::sleep(Duration::from_secs(10)).await;
    h.redis.resume();
    let out = h.deploy("v1", &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "after the pause:\n{}",
        show(&out)
    );
    h.serves("v1").await;

    // A webhook that answers 204 and deploys nothing: exit 4, nothing switched.
    let before = h.state().await;
    h.hooks.break_colour(before.0.other().as_str());
    let out = h.deploy("v2", &["--ready-timeout", "3s"]).await;
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert_eq!(h.state().await, before, "a release that never ran switched");
    h.hooks.mend();

    // Two pipelines at once: one releases, the other is refused.
    let (a, b) = tokio::join!(run(h.deploy_cmd("v3", &[])), run(h.deploy_cmd("v4", &[])));
    h.note_live().await;
    let codes = [a.status.code(), b.status.code()];
    assert!(
        codes == [Some(0), Some(3)] || codes == [Some(3), Some(0)],
        "one completes, the other is refused:\n{}\n{}",
        show(&a),
        show(&b)
    );
    assert_eq!(h.state().await.1, before.1 + 1, "exactly one switch");

    // A pipeline killed mid-deploy: its lease expires, the next one proceeds,
    // its fence is refused.
    let mut cmd = h.deploy_cmd("v5", &["--lease-ttl", "2s"]);
    cmd.env("BG_EXEC", "sleep 60")
        .env_remove("BG_WEBHOOK_BLUE")
        .env_remove("BG_WEBHOOK_GREEN");
    let doomed = Process::spawn("bg-ctl deploy (to be killed)", cmd);
    let deadline = Instant::now() + Duration::from_secs(60);
    let fence = loop {
        if let Some(l) = h.store.lease(&h.app).await.unwrap() {
            break l.fence;
        }
        assert!(
            Instant::now() < deadline,
            "the doomed deploy never took the lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        Command::new("kill")
            .args(["-KILL", &doomed.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    drop(doomed);
    let out = h.deploy("v6", &["--wait-lease", "30s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    h.serves("v6").await;
    let stale = h
        .store
        .switch(
            &h.app,
            bg_state::SwitchRequest::new(Colour::Blue, "zombie").fence(fence),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(stale, bg_state::Error::StaleFence { .. }),
        "{stale:?}"
    );

    // Redis killed and restarted empty: the gates keep serving; a restore
    // from the gates lands above them, and releases go on.
    let live_before = h.state().await;
    h.redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (blue, green) = (format!("http://{}", h.blue), format!("http://{}", h.green));
    let out = run(h.bg_ctl(&["init", "--from-gate", &blue, "--from-gate", &green])).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let restored = h.state().await;
    assert_eq!(
        restored.0, live_before.0,
        "the restore changed the live colour"
    );
    assert!(
        restored.1 > live_before.1,
        "the restore did not land above the gates"
    );
    let out = h.deploy("v7", &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "after the restore:\n{}",
        show(&out)
    );
    h.serves("v7").await;

    h.finish("faults", true).await;
}

fn releases() -> usize {
    std::env::var("BG_E2E_RELEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_fast_checks() {
    let _serial = crate::serial().await;
    releases_under_traffic(FAST, releases(), 50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_under_load_with_haproxy_default_checks() {
    let _serial = crate::serial().await;
    releases_under_traffic(DEFAULT, 2, 20).await;
}
