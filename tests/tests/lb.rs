//! The whole claim, for real, through every load balancer mode that
//! `docs/operations.md` offers: two `ws_echo` instances (blue and green,
//! each embedding the gate) behind HAProxy — with its plain HTTP check,
//! `disable-on-404`, or `agent-check` — behind Caddy's active health check,
//! or behind nginx told of switches by a standalone gate, while HTTP load
//! and websocket clients flow through it and `bg-ctl deploy` releases one
//! version after another. No request may fail and no websocket may be cut
//! without a clean close.
//!
//! The load balancers run the files users copy: `docs/examples/haproxy.cfg`,
//! `docs/examples/Caddyfile` and `docs/examples/nginx.conf` with only
//! addresses and ports put in (and, for the fast-check runs, the check
//! intervals), so the examples are what is proven. Starting them is
//! `bg_testkit`'s part; this file has the modes, the traffic and the
//! verdict.
//!
//! `BG_E2E_RELEASES` sets how many releases each mode's run makes (by
//! default 10 for the plain HTTP check with fast checks, 3 for the others).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bg_e2e::wsload::{self, Load};
use bg_e2e::{
    Ctl, Instance, Instances, Stop, Webhooks, addrs_of, gate_status, instances, loopback, run, show,
};
use bg_state::wire::GateAnswer;
use bg_state::{AppName, Colour};
use bg_testkit::caddy::{self, Caddy};
use bg_testkit::haproxy::{self, Haproxy};
use bg_testkit::nginx::{Nginx, Prefix};
use bg_testkit::{
    Process, RedisServer, examples, free_port, http, workspace_binary, workspace_example,
};

const TOKEN: &str = "lb-test-token-0123456789";

/// The hosts of the example configuration (`10.0.0.11`, `10.0.0.12`), on
/// loopback: each colour has an address of its own, as on two hosts, so
/// both agents listen on the one `agent-port` the example gives.
const BLUE_IP: [u8; 4] = [127, 0, 0, 11];
const GREEN_IP: [u8; 4] = [127, 0, 0, 12];

/// How the load balancer learns which colour is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// HAProxy, `backend chat`: the idle colour's 503 fails the check.
    HttpCheck,
    /// HAProxy, `backend chat_disable_on_404`: gates with `--stop-status 404`.
    DisableOn404,
    /// HAProxy, `backend chat_agent`: gates with `--agent-listen`.
    Agent,
    /// nginx, pointed at the live colour by a standalone gate's `--on-change`.
    NginxPush,
    /// HAProxy, `backend chat_sidecar`: the Node.js example service
    /// (`docs/examples/node-ws`) beside a standalone gate in sidecar mode;
    /// the webhook restarts the service only.
    Sidecar,
    /// Caddy, `docs/examples/Caddyfile`: active health checks, the idle
    /// colour's 503 fails them.
    Caddy,
}

impl Mode {
    /// The backend of `docs/examples/haproxy.cfg` for this mode.
    fn backend(self) -> &'static str {
        match self {
            Mode::HttpCheck => "chat",
            Mode::DisableOn404 => "chat_disable_on_404",
            Mode::Agent => "chat_agent",
            Mode::Sidecar => "chat_sidecar",
            Mode::NginxPush | Mode::Caddy => unreachable!("{self:?} has no HAProxy backend"),
        }
    }

    /// The load balancer's rise and fall, which `bg-ctl`'s `--lb-rise` and
    /// `--lb-fall` match; `None` for one that never asks the gates.
    fn rise_fall(self) -> Option<(u32, u32)> {
        match self {
            // The example's `default-server` line: `rise 2 fall 3`.
            Mode::HttpCheck | Mode::DisableOn404 | Mode::Agent | Mode::Sidecar => Some((2, 3)),
            // Caddy 2.6: one check either way.
            Mode::Caddy => Some((1, 1)),
            Mode::NginxPush => None,
        }
    }
}

/// How often the load balancer checks, and the handover that covers it.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// Checks every 200 ms (HAProxy's `inter` and `agent-inter`, Caddy's
    /// `health_interval`) instead of the examples' 2 s (1 s for agents).
    fast: bool,
    handover: &'static str,
}

/// Fast checks: the gates hand over for 1 s, well above 200 ms × rise 2
/// plus the time to learn of the switch.
const FAST: Timing = Timing {
    fast: true,
    handover: "1s",
};

/// The example file's timing as it is, with the gate's default handover.
const EXAMPLE: Timing = Timing {
    fast: false,
    handover: "6s",
};

/// The load balancer in front of the two colours.
enum Front {
    Haproxy(Haproxy),
    Caddy(Caddy),
    Nginx {
        nginx: Nginx,
        /// The standalone gate that runs the example script on every change.
        _pusher: Instance,
    },
}

impl Front {
    fn addr(&self) -> SocketAddr {
        match self {
            Front::Haproxy(haproxy) => haproxy.addr(),
            Front::Caddy(caddy) => caddy.addr(),
            Front::Nginx { nginx, .. } => nginx.addr(),
        }
    }
}

/// `docs/examples/haproxy.cfg` with the test's addresses and ports, the
/// mode's backend as the default, and for fast checks the intervals.
fn haproxy(
    mode: Mode,
    timing: Timing,
    blue: &[SocketAddr],
    green: &[SocketAddr],
    ports: Ports,
) -> Front {
    let mut cfg = haproxy::Config::example();
    // A server line per instance, named as `servers` names them.
    for (colour, addrs) in [(Colour::Blue, blue), (Colour::Green, green)] {
        let named: Vec<(String, SocketAddr)> = servers(colour, addrs.len())
            .into_iter()
            .zip(addrs.iter().copied())
            .collect();
        cfg.servers(colour.as_str(), &named);
    }
    cfg.substitute("agent-port 9091", &format!("agent-port {}", ports.agent), 1);
    cfg.substitute(
        "fall 3 port 9090",
        &format!("fall 3 port {}", ports.sidecar),
        1,
    );
    if mode != Mode::HttpCheck {
        cfg.use_backend(mode.backend());
    }
    if timing.fast {
        cfg.check_interval("200ms");
    }
    Front::Haproxy(Haproxy::start(cfg))
}

/// `docs/examples/Caddyfile` with the test's addresses and ports, and for
/// fast checks the interval.
fn caddy(timing: Timing, blue: &[SocketAddr], green: &[SocketAddr]) -> Front {
    let mut cfg = caddy::Config::example();
    cfg.upstreams(blue, green);
    if timing.fast {
        cfg.health_interval("200ms");
    }
    Front::Caddy(Caddy::start(cfg))
}

/// The names of `colour`'s servers in HAProxy: the colour for one instance,
/// `blue-1`, `blue-2`, … for several (the example's advice).
fn servers(colour: Colour, n: usize) -> Vec<String> {
    if n == 1 {
        return vec![colour.to_string()];
    }
    (1..=n).map(|i| format!("{colour}-{i}")).collect()
}

/// The hosts of a colour's instances: the example's two hosts for the
/// first instance of each colour, `127.0.0.21` and `127.0.0.22` for the
/// second, and so on.
fn host(colour: Colour, i: usize) -> [u8; 4] {
    let base = if colour == Colour::Blue {
        BLUE_IP
    } else {
        GREEN_IP
    };
    [
        127,
        0,
        0,
        base[3] + 10 * u8::try_from(i).expect("a few instances"),
    ]
}

/// The ports every colour's host uses alike: the agent's, the sidecar
/// gate's, and the service's control listener (for its gate).
#[derive(Debug, Clone, Copy)]
struct Ports {
    agent: u16,
    sidecar: u16,
    control: u16,
}

/// The example service of `docs/examples/node-ws`, with its packages
/// installed (the README's test command runs `npm ci` there), its routes for
/// the gate on `control`.
fn node_service(colour: &str, control: SocketAddr) -> Instance {
    let dir = examples().join("node-ws");
    assert!(
        dir.join("node_modules/ws").is_dir(),
        "docs/examples/node-ws has no node_modules: run `npm ci --prefix docs/examples/node-ws` \
         (the README's test command does)"
    );
    let control = control.to_string();
    Instance::process(
        "node",
        colour,
        &[
            dir.join("server.js").to_str().unwrap(),
            "--control-listen",
            &control,
        ],
    )
}

/// Waits up to `limit` for `server`'s status in `backend` to satisfy `done`.
///
/// # Panics
/// If it does not.
async fn haproxy_until(
    stats: haproxy::Stats,
    backend: &'static str,
    server: &str,
    limit: Duration,
    done: impl Fn(&str) -> bool + Send + 'static,
) {
    let server = server.to_owned();
    tokio::task::spawn_blocking(move || stats.wait_for(backend, &server, limit, done))
        .await
        .unwrap();
}

/// nginx as `docs/operations.md` sets it up: the example configuration
/// under a prefix, the example script run once by hand to write the
/// upstream file (it exits 1: nginx is not running yet to reload), nginx
/// started, and a standalone gate that runs the script on every change.
fn nginx(redis: &RedisServer, blue: SocketAddr, green: SocketAddr) -> Front {
    let prefix = Prefix::new(loopback());
    let first = Command::new("sh")
        .arg(examples().join("nginx-on-change.sh"))
        .env("BG_ACTIVE", "blue")
        .envs(prefix.script_env(blue, green))
        .output()
        .unwrap();
    assert!(
        prefix.live_file().exists(),
        "the first run of the script wrote nothing: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    let on_change = prefix.on_change(blue, green);
    let nginx = Nginx::start(prefix);
    let pusher = Instance::new(
        workspace_binary("bg-gate", "bg-gate"),
        "blue",
        &redis.url(),
        "chat",
    )
    .args(&["--poll-interval", "100ms", "--on-change", &on_change])
    .env("BG_TOKEN", TOKEN)
    .started("pusher");
    Front::Nginx {
        nginx,
        _pusher: pusher,
    }
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    failed: AtomicU64,
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

/// Everything a test needs: Redis, two instances, the webhook receiver,
/// the load balancer, and traffic flowing through it.
struct Harness {
    redis: RedisServer,
    /// Kept so the instances stop with the harness.
    instances: Instances,
    hooks: Webhooks,
    lb: Front,
    /// Sidecar mode: the standalone gates beside the services.
    sidecars: Vec<Instance>,
    mode: Mode,
    /// Every gate of each colour.
    blue: Vec<SocketAddr>,
    green: Vec<SocketAddr>,
    timing: Timing,
    store: Arc<dyn bg_state::ColourStore>,
    app: AppName,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
    errors: Arc<Mutex<Vec<String>>>,
    /// The websocket clients.
    websockets: Option<Load>,
    /// Samples in which no gate answered OK.
    both_stop: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The websocket clients a harness runs: `clients` of them, each sending a
/// message every `interval`.
#[derive(Debug, Clone, Copy)]
struct Clients {
    clients: usize,
    interval: Duration,
}

/// Fifty clients, a message each every 100 ms.
const BUSY_50: Clients = Clients {
    clients: 50,
    interval: Duration::from_millis(100),
};

/// Twenty clients, a message each every 100 ms.
const BUSY_20: Clients = Clients {
    clients: 20,
    interval: Duration::from_millis(100),
};

/// Whether a gate answers OK, read from `/bg/state` (not a probe).
fn live_at(addr: SocketAddr) -> bool {
    gate_status(addr).is_some_and(|s| s.live)
}

/// How many of the load balancer's probes the gate at `addr` has answered
/// STOP, in its recent log.
fn stop_probes(addr: SocketAddr) -> usize {
    gate_status(addr).map_or(0, |s| {
        s.probes
            .iter()
            .filter(|p| p.answer == GateAnswer::Stop)
            .count()
    })
}

impl Harness {
    /// Redis, `per_colour` instances of each colour behind the load
    /// balancer, and traffic through it: two HTTP loops and `clients`.
    async fn start(mode: Mode, timing: Timing, clients: Clients, per_colour: usize) -> Harness {
        // A socket per client: more than a soft limit of 1,024 allows.
        let _ = bg_gate::server::raise_open_file_limit();
        let redis = RedisServer::start();
        let ports = Ports {
            agent: free_port(),
            sidecar: free_port(),
            control: free_port(),
        };
        let instance = |colour, ip: [u8; 4]| {
            if mode == Mode::Sidecar {
                return node_service(colour, SocketAddr::from((ip, ports.control)))
                    .on(ip)
                    .stop(Stop::Graceful(Duration::from_secs(10)))
                    .started("v0");
            }
            let mut i = Instance::new(
                workspace_example("bg-gate", "ws_echo"),
                colour,
                &redis.url(),
                "chat",
            )
            .on(ip)
            .args(&["--poll-interval", "100ms", "--handover", timing.handover]);
            match mode {
                Mode::DisableOn404 => i = i.args(&["--stop-status", "404"]),
                Mode::Agent => {
                    let agent = SocketAddr::from((ip, ports.agent)).to_string();
                    i = i.args(&["--agent-listen", &agent]);
                }
                Mode::HttpCheck | Mode::NginxPush | Mode::Sidecar | Mode::Caddy => {}
            }
            i.env("BG_TOKEN", TOKEN)
                .stop(Stop::Graceful(Duration::from_secs(10)))
                .started("v0")
        };
        assert!(
            per_colour == 1 || matches!(mode, Mode::HttpCheck),
            "several instances per colour run with the plain HTTP check"
        );
        let instances = instances(Colour::ALL.into_iter().flat_map(|colour| {
            servers(colour, per_colour)
                .into_iter()
                .enumerate()
                .map(move |(i, name)| {
                    instance(colour.as_str(), host(colour, i))
                        .named(&name)
                        .args(&["--gate-id", &name])
                })
        }));
        let services = (addrs_of(&instances, "blue"), addrs_of(&instances, "green"));
        let hooks = Webhooks::serve(Arc::clone(&instances), Duration::ZERO).await;
        // The gates: in the services, or beside them.
        let sidecars: Vec<Instance> = if mode == Mode::Sidecar {
            [("blue", BLUE_IP), ("green", GREEN_IP)]
                .into_iter()
                .map(|(colour, ip)| {
                    let url = format!("http://{}", SocketAddr::from((ip, ports.control)));
                    Instance::new(
                        workspace_binary("bg-gate", "bg-gate"),
                        colour,
                        &redis.url(),
                        "chat",
                    )
                    .at(SocketAddr::from((ip, ports.sidecar)))
                    .args(&["--poll-interval", "100ms", "--handover", timing.handover])
                    .args(&["--service-url", &url, "--service-version-path", "/version"])
                    .args(&["--service-drain-path", "/drain"])
                    .args(&["--service-connections-path", "/connections"])
                    .env("BG_TOKEN", TOKEN)
                    .started("unknown")
                })
                .collect()
        } else {
            Vec::new()
        };
        let (blue, green) = match sidecars.as_slice() {
            [b, g] => (vec![b.addr], vec![g.addr]),
            _ => services.clone(),
        };
        let lb = match mode {
            Mode::NginxPush => nginx(&redis, services.0[0], services.1[0]),
            Mode::Caddy => caddy(timing, &services.0, &services.1),
            Mode::HttpCheck | Mode::DisableOn404 | Mode::Agent | Mode::Sidecar => {
                haproxy(mode, timing, &services.0, &services.1, ports)
            }
        };

        // Wait until the load balancer serves blue.
        let deadline = Instant::now() + Duration::from_secs(60);
        let lb_addr = lb.addr();
        loop {
            if let Ok(a) = tokio::task::spawn_blocking(move || http::get(lb_addr, "/"))
                .await
                .unwrap()
                && a.status == 200
                && a.body.starts_with("blue")
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the load balancer never served blue"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // HAProxy starts with both servers up, and Caddy takes green out
        // only at its first check; clients must not land on green before
        // the checks have taken it out. (nginx only ever knew blue.)
        match &lb {
            Front::Haproxy(haproxy) => {
                for server in servers(Colour::Green, per_colour) {
                    // `DOWN`, `NOLB`, `DRAIN (agent)`; not `UP 1/3` (going down).
                    haproxy_until(
                        haproxy.stats(),
                        mode.backend(),
                        &server,
                        Duration::from_secs(60),
                        |s| {
                            ["DOWN", "NOLB", "DRAIN"]
                                .iter()
                                .any(|out| s.starts_with(out))
                        },
                    )
                    .await;
                }
            }
            Front::Caddy(_) => {
                // Caddy 2.6 does not say whether an upstream is healthy (its
                // admin API lists requests and failures only), but one failed
                // check takes it out: a second STOP answer from each of
                // green's gates shows Caddy has had the first.
                for gate in green.clone() {
                    let deadline = Instant::now() + Duration::from_secs(60);
                    while tokio::task::spawn_blocking(move || stop_probes(gate))
                        .await
                        .unwrap()
                        < 2
                    {
                        assert!(
                            Instant::now() < deadline,
                            "Caddy never checked green's gate at {gate}"
                        );
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            Front::Nginx { .. } => {}
        }

        let mut h = Harness {
            store: bg_state::open(&redis.url()).unwrap(),
            redis,
            instances,
            hooks,
            lb,
            sidecars,
            mode,
            blue,
            green,
            timing,
            app: AppName::new("chat").unwrap(),
            stop: Arc::new(AtomicBool::new(false)),
            counts: Arc::new(Counts::default()),
            errors: Arc::new(Mutex::new(Vec::new())),
            websockets: None,
            both_stop: Arc::new(AtomicU64::new(0)),
            tasks: Vec::new(),
        };
        let lb_addr = h.lb.addr();
        for _ in 0..2 {
            h.tasks.push(tokio::spawn(load(
                lb_addr,
                Arc::clone(&h.stop),
                Arc::clone(&h.counts),
                Arc::clone(&h.errors),
            )));
        }
        // A client a drain moved must not land back on the colour that
        // moved it while that colour answers STOP: it was still in
        // rotation. (Back on it after the next switch made it live is
        // fine: the load balancer sends a client to a colour only a check
        // after it answers OK, and the sampling below sees that within
        // 50 ms; and a colour drained has answered STOP for longer than
        // the load balancer's fall.)
        let last_ok: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::new(Mutex::new(BTreeMap::from(
            [(Colour::Blue.to_string(), Instant::now())],
        )));
        let seen_ok = Arc::clone(&last_ok);
        let mut config = wsload::Config::new(format!("ws://{lb_addr}/ws"), clients.clients);
        config.interval = clients.interval;
        config.reconnect_jitter = Duration::from_millis(200);
        config.ramp = Duration::from_millis(5 * clients.clients as u64).min(Duration::from_secs(5));
        let gates_of: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::from([
            (Colour::Blue.to_string(), h.blue.clone()),
            (Colour::Green.to_string(), h.green.clone()),
        ]);
        config.landing_ok = Some(Arc::new(move |l: &wsload::Landing<'_>| {
            let colour = wsload::Landing::colour(l.greeting);
            let answered_ok = || {
                seen_ok
                    .lock()
                    .unwrap()
                    .get(colour)
                    .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
            };
            // Rare (a client moved back), so asked at once, not sampled: a
            // switch a moment ago made that colour live.
            let live_now = || {
                gates_of.get(colour).is_some_and(|gates| {
                    tokio::task::block_in_place(|| gates.iter().any(|g| live_at(*g)))
                })
            };
            !l.moved_back() || answered_ok() || live_now()
        }));
        let ws = Load::start(config);
        let deadline = Instant::now() + Duration::from_secs(60);
        while ws.connected() < clients.clients as u64 {
            assert!(
                Instant::now() < deadline,
                "only {} of {} websocket clients connected: {}",
                ws.connected(),
                clients.clients,
                ws.counts()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        h.websockets = Some(ws);
        // Never every gate STOP; and when each colour last answered OK.
        let (stop, both) = (Arc::clone(&h.stop), Arc::clone(&h.both_stop));
        let gates: Vec<(Colour, SocketAddr)> = h
            .blue
            .iter()
            .map(|a| (Colour::Blue, *a))
            .chain(h.green.iter().map(|a| (Colour::Green, *a)))
            .collect();
        h.tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let gates = gates.clone();
                let live: Vec<Colour> = tokio::task::spawn_blocking(move || {
                    gates
                        .into_iter()
                        .filter(|(_, a)| live_at(*a))
                        .map(|(c, _)| c)
                        .collect()
                })
                .await
                .unwrap();
                let now = Instant::now();
                for colour in &live {
                    last_ok.lock().unwrap().insert(colour.to_string(), now);
                }
                if live.is_empty() {
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
            .release_env_all(&self.blue, &self.green, &self.hooks)
            .command(args)
    }

    fn deploy_cmd(&self, version: &str, extra: &[&str]) -> Command {
        let ready = if self.timing.fast { "60s" } else { "120s" };
        let mut args = vec![
            "deploy",
            "--version",
            version,
            "--tag-param",
            "tag",
            "--poll",
            "50ms",
        ];
        // nginx never asks the gates: there is no probe to confirm with.
        let counts = self
            .mode
            .rise_fall()
            .map(|(rise, fall)| (rise.to_string(), fall.to_string()));
        if let Some((rise, fall)) = &counts {
            args.extend(["--confirm-lb", "--lb-fall", fall, "--lb-rise", rise]);
        }
        args.extend(["--drain-timeout", "30s"]);
        if !extra.contains(&"--ready-timeout") {
            args.extend(["--ready-timeout", ready]);
        }
        args.extend_from_slice(extra);
        self.bg_ctl(&args)
    }

    async fn deploy(&self, version: &str, extra: &[&str]) -> Output {
        run(self.deploy_cmd(version, extra)).await
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
        let lb = self.lb.addr();
        let expected = format!("{live} {version}");
        if self.mode == Mode::NginxPush {
            // Nothing confirms a push: nginx moves once the gate's
            // --on-change has reloaded it, a moment after the switch.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let a = tokio::task::spawn_blocking(move || http::get(lb, "/"))
                    .await
                    .unwrap()
                    .unwrap();
                if a.body == expected {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx never moved to {expected}: {}",
                    a.body
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The old workers finish what they hold.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for _ in 0..20 {
            let a = tokio::task::spawn_blocking(move || http::get(lb, "/"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(a.body, expected, "not served by the new version");
        }
    }

    /// Stops the traffic and checks nothing failed; prints the counts.
    /// Stops the traffic and checks nothing failed; prints the counts and
    /// returns the websocket clients'.
    async fn finish(&mut self, what: &str, expect_drains: bool) -> wsload::Summary {
        let ws = self.websockets.take().expect("the clients run");
        // Clients asked to move a moment ago are let back in first.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = ws.counts();
            if c.reconnects >= c.moves || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let w = ws.stop().await;
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        eprintln!(
            "{what}: {} HTTP requests, {} failed; websockets: {w}; every gate STOP in {} samples",
            load(&c.requests),
            load(&c.failed),
            load(&self.both_stop),
        );
        let errors = self.errors.lock().unwrap();
        let some = &errors[..errors.len().min(10)];
        assert_eq!(load(&c.failed), 0, "failed requests: {some:?}");
        assert_eq!(w.cuts, 0, "websockets cut: {:?}", w.errors);
        assert_eq!(
            w.connect_failures, 0,
            "websocket connects failed: {:?}",
            w.errors
        );
        assert_eq!(
            w.wrong_landing, 0,
            "reconnected clients landed on the idle colour: {:?}",
            w.errors
        );
        assert_eq!(load(&self.both_stop), 0, "every gate answered STOP");
        assert!(load(&c.requests) > 100, "the load generator barely ran");
        assert!(w.messages > 100, "the websocket clients barely ran");
        if expect_drains {
            assert!(w.moves > 0, "no websocket was ever drained");
            assert_eq!(
                w.move_codes.keys().copied().collect::<Vec<_>>(),
                [1012],
                "moved by anything but a drain"
            );
            assert_eq!(w.moves, w.reconnects, "a drained client did not reconnect");
        }
        w
    }
}

async fn releases_under_traffic(mode: Mode, timing: Timing, releases: usize, clients: Clients) {
    let mut h = Harness::start(mode, timing, clients, 1).await;
    h.releases(releases).await;
    h.finish(
        &format!("{mode:?}, {timing:?}: {releases} releases"),
        releases >= 2,
    )
    .await;
}

impl Harness {
    /// `releases` releases back to back, each checked through the load balancer.
    async fn releases(&self, releases: usize) {
        let mode = self.mode;
        for n in 1..=releases {
            let version = format!("v{n}");
            let started = Instant::now();
            // Queued pipelines follow each other at once.
            let out = self.deploy(&version, &["--wait-lease", "60s"]).await;
            assert_eq!(out.status.code(), Some(0), "release {n}:\n{}", show(&out));
            let (live, _) = self.state().await;
            let took = started.elapsed();
            eprintln!("{mode:?}: release {n} ({version} to {live}) took {took:?}");
            if took > Duration::from_secs(30) || std::env::var_os("BG_E2E_VERBOSE").is_some() {
                // Where the time went, step by step.
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
            // The LB has seen the switch (--confirm-lb): every new request is served by the new version.
            self.serves(&version).await;
        }
    }
}

/// The bad days, one after another under the same traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_under_load() {
    let _serial = crate::serial().await;
    let mut h = Harness::start(Mode::HttpCheck, FAST, BUSY_20, 1).await;

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
    let (blue, green) = (
        format!("http://{}", h.blue[0]),
        format!("http://{}", h.green[0]),
    );
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

/// `BG_E2E_RELEASES`, or `default`.
fn releases(default: usize) -> usize {
    std::env::var("BG_E2E_RELEASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_fast_checks() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::HttpCheck, FAST, releases(10), BUSY_50).await;
}

/// The size of a real service: 2,000 websockets on two instances per
/// colour behind one HAProxy backend, each instance with its gate, and
/// `bg-ctl deploy` with its default drain settings. The first release goes
/// to the empty colour; the second drains all 2,000 from the colour they
/// are on, every one of its gates, before restarting it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_websockets_on_two_instances_per_colour() {
    let _serial = crate::serial().await;
    let clients = Clients {
        clients: 2_000,
        interval: Duration::from_secs(2),
    };
    let mut h = Harness::start(Mode::HttpCheck, FAST, clients, 2).await;
    // Both instances of blue hold their share.
    for gate in &h.blue {
        let held = gate_status(*gate)
            .expect("a gate answers")
            .connections
            .websockets;
        assert!(
            held.is_some_and(|n| n >= 500),
            "blue's gate at {gate} holds {held:?} websockets"
        );
    }
    h.releases(2).await;
    let w = h
        .finish(
            "2,000 websockets, two instances per colour: 2 releases",
            true,
        )
        .await;
    assert!(
        w.moves >= 2_000,
        "the second release drained {} websockets of 2,000",
        w.moves
    );
    assert_eq!(
        w.landed.get("green").copied().unwrap_or(0),
        w.moves,
        "every drained client moved to green"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_disable_on_404() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::DisableOn404, FAST, releases(3), BUSY_50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_agent_checks() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::Agent, FAST, releases(3), BUSY_50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_behind_nginx() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::NginxPush, FAST, releases(3), BUSY_50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_behind_caddy() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::Caddy, FAST, releases(3), BUSY_50).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_the_example_timing() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::HttpCheck, EXAMPLE, 2, BUSY_20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_agent_checks_at_the_example_timing() {
    let _serial = crate::serial().await;
    releases_under_traffic(Mode::Agent, EXAMPLE, 2, BUSY_20).await;
}

/// The Node.js example service beside standalone gates in sidecar mode,
/// released by webhooks that restart the service only; then the live
/// service crashes: its colour leaves rotation (the gate answers DOWN),
/// and nothing is switched in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn releases_under_load_with_sidecar_gates_then_a_crashed_service() {
    let _serial = crate::serial().await;
    let releases = releases(3);
    let mut h = Harness::start(Mode::Sidecar, FAST, BUSY_50, 1).await;
    h.releases(releases).await;
    h.finish(&format!("Sidecar: {releases} releases"), releases >= 2)
        .await;
    assert_eq!(h.sidecars.len(), 2);

    let (live, generation) = h.state().await;
    let Front::Haproxy(haproxy) = &h.lb else {
        unreachable!("sidecar mode runs behind HAProxy")
    };
    let stats = haproxy.stats();
    let gate = if live == Colour::Blue {
        h.blue[0]
    } else {
        h.green[0]
    };
    let crashed = Instant::now();
    h.instances
        .lock()
        .unwrap()
        .get_mut(live.as_str())
        .unwrap()
        .kill();
    let server = live.as_str();
    let backend = Mode::Sidecar.backend();
    haproxy_until(stats, backend, server, Duration::from_secs(20), |s| {
        s.starts_with("DOWN")
    })
    .await;
    let took = crashed.elapsed();
    // --service-fall 2 × --service-interval 1 s, then HAProxy's fall 3 ×
    // inter 200 ms; a second more for the checks' own timing.
    let bound = Duration::from_millis(2 * 1000 + 3 * 200 + 1000);
    eprintln!("Sidecar: the crashed {live} left rotation after {took:?} (bound {bound:?})");
    assert!(
        took <= bound,
        "the crashed {live} left rotation only after {took:?}"
    );
    let s = tokio::task::spawn_blocking(move || gate_status(gate))
        .await
        .unwrap()
        .expect("the gate outlives its service");
    assert!(!s.live, "{s:?}");
    assert!(s.service.is_some_and(|svc| !svc.up));
    assert_eq!(
        h.state().await,
        (live, generation),
        "a crashed service switched the store"
    );

    // The service comes back: after --service-rise good checks the gate
    // answers OK again, and HAProxy takes it back in.
    let back = Instant::now();
    let version = format!("v{releases}");
    let instances = Arc::clone(&h.instances);
    tokio::task::spawn_blocking(move || {
        instances
            .lock()
            .unwrap()
            .get_mut(live.as_str())
            .unwrap()
            .restart(&version);
    })
    .await
    .unwrap();
    haproxy_until(stats, backend, server, Duration::from_secs(20), |s| {
        s == "UP"
    })
    .await;
    eprintln!(
        "Sidecar: the restarted {live} was back in rotation after {:?}",
        back.elapsed()
    );
    assert_eq!(h.state().await, (live, generation));
}
