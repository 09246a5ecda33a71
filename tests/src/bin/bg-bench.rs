//! The benchmarks, side by side in one run, written to `docs/benchmarks.md`.
//! Run through `scripts/bench.sh`, which builds everything in release mode
//! and installs `wrk` when it is missing.
//!
//! `bg-bench OUTPUT.md`; `bg-bench --durability` measures only the switch
//! latency under Sentinel with and without `min_replicas`, and prints it;
//! `bg-bench --many-apps` only many apps' gates on one Redis;
//! `bg-bench --websockets` only the releases with websockets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bg_e2e::{
    Ctl, Instance, Stop, Webhooks, addr_of, gate_status, instances, loopback as addr, run,
};
use bg_gate::{Auth, Gate, GateConfig};
use bg_state::{AppName, Colour, ColourStore, InitRequest, RedisStore, SwitchRequest};
use bg_testkit::store::{Overlay, PollOnly};
use bg_testkit::{Process, RedisServer, SentinelSet, wait_for_port};

const TOKEN: &str = "bench-token-0123456789";
const WRK_SECONDS: u64 = 10;

/// A binary built beside this one (`target/release/<name>`).
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let path = exe.parent().expect("a directory").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/bench.sh",
        path.display()
    );
    path
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

/// Resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

struct Wrk {
    rps: f64,
    p50: String,
    p99: String,
}

/// `wrk` against `url` for [`WRK_SECONDS`], 2 threads, 32 connections.
fn wrk(url: &str) -> Wrk {
    let out = Command::new("wrk")
        .args([
            "-t2",
            "-c32",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk runs (scripts/bench.sh installs it)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Requests per second, p50 and p99 from `wrk --latency` output.
fn parse_wrk(text: &str) -> Wrk {
    let find = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_owned()))
            .unwrap_or_else(|| "?".into())
    };
    let rps = find("Requests/sec:").parse().unwrap_or(0.0);
    Wrk {
        rps,
        p50: find("50%"),
        p99: find("99%"),
    }
}

/// Rounds of the same-runtime comparison; each round runs every variant
/// once, in a rotated order, so drift (thermal, other load) spreads evenly.
const ROUNDS: usize = 5;

/// `taskset -c CPUS` in front of `program` when `taskset` exists and the
/// machine has at least two cores, so server and load generator do not
/// fight over one; `None` otherwise.
fn pinned(cpus: &str) -> Option<Vec<String>> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let has_taskset = Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    (cores >= 2 && has_taskset).then(|| vec!["taskset".into(), "-c".into(), cpus.into()])
}

/// `wrk` as [`wrk`] does, pinned to the second core when pinning is possible.
fn wrk_pinned(url: &str, pin: bool) -> Wrk {
    if !pin {
        return wrk(url);
    }
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            "-c32",
            &format!("-d{WRK_SECONDS}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("wrk runs (scripts/bench.sh installs it)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// The gate's health path and the request tracking against a bare handler,
/// all three served by `bg-bare` (same runtime, same server loop), in
/// alternating rounds; medians of the rounds.
/// `requests` keep-alive GETs of `path` from `connections` clients at
/// once, each answer read whole.
fn fixed_requests(addr: SocketAddr, path: &str, requests: usize, connections: usize) {
    use std::io::{Read, Write};
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n");
    let per = requests / connections;
    let threads: Vec<_> = (0..connections)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).expect("connect");
                s.set_nodelay(true).expect("nodelay");
                let mut buf = vec![0u8; 4096];
                for _ in 0..per {
                    s.write_all(request.as_bytes()).expect("write");
                    let mut got = Vec::new();
                    loop {
                        let n = s.read(&mut buf).expect("read");
                        assert!(n > 0, "the server closed the connection");
                        got.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&got);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    let (k, v) = l.split_once(':')?;
                                    k.eq_ignore_ascii_case("content-length")
                                        .then(|| v.trim().parse::<usize>().ok())?
                                })
                                .unwrap_or(0);
                            if got.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread");
    }
}

/// Microseconds of the server's CPU (user and system) per health check,
/// over 100,000 checks from four keep-alive connections: steadier on
/// shared cores than requests per second.
fn cpu_per_check(pid: u32, addr: SocketAddr) -> f64 {
    const REQUESTS: usize = 100_000;
    let before = cpu_seconds(pid);
    fixed_requests(addr, "/balancer-keepalive-check", REQUESTS, 4);
    (cpu_seconds(pid) - before) * 1e6 / REQUESTS as f64
}

fn same_runtime(md: &mut String) {
    let pin = pinned("0");
    let variants = ["bare", "gate", "tracked"];
    let servers: Vec<(Process, SocketAddr)> = variants
        .iter()
        .map(|mode| {
            let a = addr();
            let mut cmd = match &pin {
                Some(prefix) => {
                    let mut c = Command::new(&prefix[0]);
                    c.args(&prefix[1..]).arg(sibling("bg-bare"));
                    c
                }
                None => Command::new(sibling("bg-bare")),
            };
            cmd.arg(a.to_string()).arg(mode);
            let p = Process::spawn(&format!("bg-bare {mode}"), cmd);
            wait_for_port(a, Duration::from_secs(10));
            (p, a)
        })
        .collect();
    let path = "/balancer-keepalive-check";
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            eprintln!("  round {} of {ROUNDS}: {}", round + 1, variants[i]);
            let w = wrk_pinned(&format!("http://{}{path}", servers[i].1), pin.is_some());
            rps[i].push(w.rps);
        }
    }
    // CPU per check: three rounds each, rotated, medians.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..3 {
        for k in 0..variants.len() {
            let i = (round + k) % variants.len();
            eprintln!("  CPU per check, round {} of 3: {}", round + 1, variants[i]);
            cpu[i].push(cpu_per_check(servers[i].0.id(), servers[i].1));
        }
    }
    let cpu_med: Vec<f64> = cpu.iter().map(|r| median(r.clone())).collect();
    let med: Vec<f64> = rps.iter().map(|r| median(r.clone())).collect();
    let ratio = |i: usize| med[i] / med[0].max(1.0);
    let verdict = |r: f64| if r >= 0.95 { "met" } else { "**missed**" };
    let _ = writeln!(
        md,
        "## Same runtime: health path and request tracking\n\n\
         `bg-bare` serves each variant with `bg_gate::server::serve`, the loop `bg-gate` uses, \
         on one Tokio runtime: a bare handler answering `OK`, the gate's public router, and the \
         bare handler inside `Gate::track_requests` (what an embedding service pays on its own \
         routes). {ROUNDS} rounds of `wrk -c32 -d{WRK_SECONDS}s`, the order rotated every round; \
         medians. {}\n",
        if pin.is_some() {
            "Servers pinned to core 0, `wrk` (one thread) to core 1 (`taskset`)."
        } else {
            "Not pinned (no `taskset`, or one core): `wrk -t2` shares the cores with the server."
        }
    );
    let _ = writeln!(
        md,
        "| variant | median requests/s | vs bare | target | rounds | CPU per check |\n\
         | --- | ---: | ---: | --- | --- | ---: |"
    );
    for (i, name) in ["bare handler", "gate health path", "tracked bare handler"]
        .iter()
        .enumerate()
    {
        let rounds = rps[i]
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ");
        let target = if i == 0 {
            "—".to_owned()
        } else {
            format!("≥ 0.95×: {}", verdict(ratio(i)))
        };
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {:.2}× | {target} | {rounds} | {:.2} µs |",
            med[i],
            ratio(i),
            cpu_med[i]
        );
    }
    let _ = writeln!(
        md,
        "\nCPU per check: the server process's user and system time over 100,000 health checks from four keep-alive connections (a plain client, not `wrk`), median of 3 rounds; the gate's health path costs {:.2}× the bare handler's CPU per check.\n",
        cpu_med[1] / cpu_med[0].max(1e-9)
    );
}

/// One keep-alive client at a fixed 1,000 requests per second for 10 s.
async fn paced_latency(url: &str) -> (Duration, Duration, usize) {
    let client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut lat = Vec::with_capacity(10_000);
    let mut failed = 0;
    for _ in 0..10_000 {
        tick.tick().await;
        let t = Instant::now();
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                lat.push(t.elapsed());
            }
            _ => failed += 1,
        }
    }
    lat.sort();
    (percentile(&lat, 0.5), percentile(&lat, 0.99), failed)
}

fn gate_process(redis: &str, extra: &[&str]) -> (Process, SocketAddr) {
    let a = addr();
    let mut cmd = Command::new(sibling("bg-gate"));
    cmd.args([
        "--colour", "blue", "--store", redis, "--app", "bench", "--init", "blue",
    ])
    .args(["--listen", &a.to_string(), "--service-version", "v1"])
    .args(extra)
    .env("RUST_LOG", "warn");
    let p = Process::spawn("bg-gate", cmd);
    wait_for_port(a, Duration::from_secs(20));
    (p, a)
}

/// Time from a switch's commit to both gates answering the new state.
async fn propagation(
    redis: &str,
    notify: bool,
    switches: usize,
    poll: Duration,
) -> (Duration, Duration) {
    let app = AppName::new(if notify { "prop-notify" } else { "prop-poll" }).expect("app");
    let writer: Arc<dyn ColourStore> = Arc::new(RedisStore::open(redis).expect("store"));
    writer
        .init(&app, InitRequest::new(Colour::Blue, "bench"))
        .await
        .expect("init");
    let mut gates = Vec::new();
    for colour in Colour::ALL {
        let store: Arc<dyn ColourStore> = Arc::new(RedisStore::open(redis).expect("store"));
        let store: Arc<dyn ColourStore> = if notify {
            store
        } else {
            Overlay::shared(store, PollOnly)
        };
        let mut cfg = GateConfig::new(app.clone(), colour, "v1");
        cfg.poll_interval = poll;
        cfg.handover = Duration::ZERO;
        let gate = Gate::new(store, cfg, Auth::none()).expect("gate");
        gate.start();
        gates.push(gate);
    }
    while gates.iter().any(|g| g.view().generation() != 1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut took = Vec::with_capacity(switches);
    for _ in 0..switches {
        let s = writer.get(&app).await.expect("get").expect("state");
        let out = writer
            .switch(
                &app,
                SwitchRequest::new(s.idle(), "bench").expect_generation(s.generation),
            )
            .await
            .expect("switch");
        let committed = Instant::now();
        let want = out.state.generation;
        while gates.iter().any(|g| g.view().generation() != want) {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        took.push(committed.elapsed());
    }
    took.sort();
    (percentile(&took, 0.5), percentile(&took, 0.99))
}

/// One field of `INFO` from `redis`.
fn redis_info(redis: &RedisServer, field: &str) -> u64 {
    let info = redis.cli(&["INFO", "all"]);
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("INFO has no {field}"))
}

/// CPU seconds (user + system) process `pid` used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/PID/stat, 12 and 13 here.
    (ticks(11) + ticks(12)) / 100.0
}

/// What many apps on one Redis cost and how fast one app's switch reaches
/// its gates while the others only poll.
struct ManyApps {
    apps: usize,
    gates: usize,
    p50: Duration,
    p99: Duration,
    connections: u64,
    commands_per_s: f64,
    redis_cpu: f64,
}

/// `apps` apps with a blue and a green gate each, every gate with a store
/// (and so Redis connections) of its own, as separate processes would have;
/// `switches` switches of apps picked in turn.
async fn many_apps(apps: usize, switches: usize) -> ManyApps {
    let redis = RedisServer::start();
    let url = redis.url();
    let writer: Arc<dyn ColourStore> = Arc::new(RedisStore::open(&url).expect("store"));
    let names: Vec<AppName> = (0..apps)
        .map(|i| AppName::new(format!("app-{i:04}")).expect("app"))
        .collect();
    let mut gates = Vec::with_capacity(apps * 2);
    for app in &names {
        writer
            .init(app, InitRequest::new(Colour::Blue, "bench"))
            .await
            .expect("init");
        for colour in Colour::ALL {
            let store: Arc<dyn ColourStore> = Arc::new(RedisStore::open(&url).expect("store"));
            let mut cfg = GateConfig::new(app.clone(), colour, "v1");
            cfg.handover = Duration::ZERO;
            let gate = Gate::new(store, cfg, Auth::none()).expect("gate");
            gate.start();
            gates.push(gate);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while gates.iter().any(|g| g.view().generation() != 1) {
        assert!(
            Instant::now() < deadline,
            "the gates never all read their app"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Settled: every gate subscribed, polling, and reporting presence.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = u32::try_from(redis_info(&redis, "process_id")).expect("a pid");
    let connections = redis_info(&redis, "connected_clients");
    let (commands, cpu, t) = (
        redis_info(&redis, "total_commands_processed"),
        cpu_seconds(pid),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let secs = t.elapsed().as_secs_f64();
    let commands_per_s = (redis_info(&redis, "total_commands_processed") - commands) as f64 / secs;
    let redis_cpu = (cpu_seconds(pid) - cpu) / secs;

    let mut took = Vec::with_capacity(switches);
    for i in 0..switches {
        let n = (i * 7919) % apps;
        let app = &names[n];
        let s = writer.get(app).await.expect("get").expect("state");
        let out = writer
            .switch(
                app,
                SwitchRequest::new(s.idle(), "bench").expect_generation(s.generation),
            )
            .await
            .expect("switch");
        let committed = Instant::now();
        let want = out.state.generation;
        let pair = &gates[n * 2..n * 2 + 2];
        while pair.iter().any(|g| g.view().generation() != want) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        took.push(committed.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    took.sort();
    ManyApps {
        apps,
        gates: gates.len(),
        p50: percentile(&took, 0.5),
        p99: percentile(&took, 0.99),
        connections,
        commands_per_s,
        redis_cpu,
    }
}

/// The many-apps section of the report.
async fn many_apps_report(md: &mut String) {
    eprintln!("many apps: 1000 apps, two gates each, on one Redis");
    let m = many_apps(1000, 500).await;
    let per_gate = m.commands_per_s / m.gates as f64;
    let conns_per_gate = m.connections as f64 / m.gates as f64;
    // Redis' own default maxclients, and a core it may use whole.
    let by_connections = 10_000.0 / conns_per_gate;
    let by_cpu = m.gates as f64 / m.redis_cpu.max(1e-6);
    let _ = writeln!(
        md,
        "## Many apps on one Redis\n\n{} apps with a blue and a green gate each ({} gates in one process, each with a store and Redis connections of its own, as separate processes have; default poll 500 ms, presence every 5 s), one `redis-server`. 500 switches of apps in turn, each timed from its commit to both of its gates answering from it, while every other gate polls.\n\n\
         | measure | value |\n| --- | ---: |\n\
         | switch seen by both gates, p50 | {} ms |\n\
         | switch seen by both gates, p99 | {} ms (target ≤ 50 ms) |\n\
         | Redis connections | {} ({conns_per_gate:.1} per gate: commands and the change subscription) |\n\
         | Redis commands per second, idle | {:.0} ({per_gate:.2} per gate) |\n\
         | `redis-server` CPU, idle | {:.1}% of a core |\n\n\
         So one Redis serves about {:.0} gates before its default `maxclients` 10,000 (raise it, and its open-file limit, to go further), and about {:.0} gates before their polling alone fills one core; polling is what costs, so a longer `--poll-interval` buys gates in proportion, at the price of the bound on staleness when a notification is lost.\n",
        m.apps,
        m.gates,
        ms(m.p50),
        ms(m.p99),
        m.connections,
        m.commands_per_s,
        m.redis_cpu * 100.0,
        by_connections,
        by_cpu,
    );
}

/// A release with websockets on the colour it restarts.
struct WebsocketRelease {
    websockets: usize,
    /// `bg-ctl deploy` from start to exit, with its defaults.
    wall: Duration,
    /// From the first websocket asked to move to the last.
    drain: Duration,
    /// The most moved clients that reconnected to the live colour in one second.
    peak_reconnects: u64,
    /// The drained instance with every websocket open: resident set and
    /// its growth per websocket over the idle instance.
    rss_open: f64,
    rss_per_socket_kib: f64,
    /// The share of a core the instance uses with every websocket open.
    open_cpu: f64,
    /// CPU seconds the drained instance spent while its sockets were asked.
    drain_cpu: f64,
    summary: bg_e2e::wsload::Summary,
}

/// `websockets` clients on blue's `ws_echo` (gate-direct: a proxy would need
/// two descriptors per websocket, beyond this machine's 20,000), balanced
/// by the gates' health checks; one release to green (empty), which leaves
/// the clients on blue, now idle; then the release that matters, back to
/// blue, with `bg-ctl deploy`'s default drain (a 20 s window).
async fn websocket_release(redis: &str, websockets: usize) -> WebsocketRelease {
    use bg_e2e::wsload::{Balance, Config, Load};
    let app = format!("ws-{websockets}");
    let instance = |colour| {
        Instance::new(sibling("examples/ws_echo"), colour, redis, &app)
            .args(&["--poll-interval", "100ms", "--handover", "1s"])
            .env("BG_TOKEN", TOKEN)
            .stop(Stop::Graceful(Duration::from_secs(30)))
            .started("v0")
    };
    let instances = instances([instance("blue"), instance("green")]);
    let (blue, green) = (addr_of(&instances, "blue"), addr_of(&instances, "green"));
    let hooks = Webhooks::serve(Arc::clone(&instances), Duration::ZERO).await;
    while !gate_status(blue).is_some_and(|s| s.live) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = |colour: &str| {
        instances.lock().unwrap()[colour]
            .pid()
            .expect("the instance runs")
    };
    let idle_rss = rss_mib(pid("blue"));
    let mut config = Config::new(format!("ws://{blue}/ws"), websockets);
    config.ramp = Duration::from_millis(websockets as u64)
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    config.balance = Some(Balance {
        urls: vec![format!("ws://{blue}/ws"), format!("ws://{green}/ws")],
        check: "/balancer-keepalive-check".into(),
        every: Duration::from_millis(100),
    });
    let load = Load::start(config);
    let deadline = Instant::now() + Duration::from_secs(120);
    while load.connected() < websockets as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {websockets} connected: {}",
            load.connected(),
            load.counts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The health checks must have seen both gates a while (--lb-window).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_open = rss_mib(pid("blue"));
    // What holding them costs while each sends a message every 5 s.
    let (cpu, t) = (cpu_seconds(pid("blue")), Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let open_cpu = (cpu_seconds(pid("blue")) - cpu) / t.elapsed().as_secs_f64();
    let ctl = Ctl::new(sibling("bg-ctl"), redis, &app, TOKEN).release_env(blue, green, &hooks);
    let deploy = |version: &str| {
        ctl.command(&[
            "deploy",
            "--version",
            version,
            "--tag-param",
            "tag",
            "--confirm-lb",
        ])
    };
    let out = run(deploy("v1")).await;
    assert!(
        out.status.success(),
        "the release to green failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blue_pid = pid("blue");
    let cpu_before = cpu_seconds(blue_pid);
    // Watch the moves while the release drains blue.
    let started = Instant::now();
    let release = tokio::spawn(run(deploy("v2")));
    let (mut first, mut last, mut peak) = (None, None, 0);
    let (mut moved_before, mut reconnected_before, mut second) = (0, 0, Instant::now());
    let mut drain_cpu = 0.0;
    while !release.is_finished() {
        let c = load.counts();
        if c.moves > moved_before {
            first.get_or_insert(Instant::now());
            last = Some(Instant::now());
            moved_before = c.moves;
        }
        if last.is_some() && moved_before >= websockets as u64 && drain_cpu == 0.0 {
            drain_cpu = cpu_seconds(blue_pid) - cpu_before;
        }
        if second.elapsed() >= Duration::from_secs(1) {
            peak = peak.max(c.reconnects - reconnected_before);
            reconnected_before = c.reconnects;
            second = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wall = started.elapsed();
    let out = release.await.expect("the release's task");
    assert!(
        out.status.success(),
        "the release to blue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let summary = load.stop().await;
    WebsocketRelease {
        websockets,
        wall,
        drain: match (first, last) {
            (Some(a), Some(b)) => b - a,
            _ => Duration::ZERO,
        },
        peak_reconnects: peak,
        rss_open,
        rss_per_socket_kib: (rss_open - idle_rss) * 1024.0 / websockets as f64,
        open_cpu,
        drain_cpu,
        summary,
    }
}

/// What the gate's own tracking of one websocket costs in memory, apart
/// from the websocket library's buffers: the resident growth of this
/// process over 1,000,000 tracked guards.
fn tracking_cost_bytes() -> f64 {
    const N: usize = 1_000_000;
    let conns = bg_gate::Connections::default();
    let before = rss_mib(std::process::id());
    let guards: Vec<_> = (0..N).map(|_| conns.track_websocket()).collect();
    let after = rss_mib(std::process::id());
    drop(guards);
    (after - before) * 1024.0 * 1024.0 / N as f64
}

/// The websockets section of the report.
async fn websockets_report(md: &mut String) {
    let redis = RedisServer::start();
    let url = redis.url();
    let mut runs = Vec::new();
    for n in [100, 1_000, 10_000] {
        eprintln!("release with {n} websockets on the colour it restarts");
        runs.push(websocket_release(&url, n).await);
    }
    let tracking = tracking_cost_bytes();
    let _ = writeln!(
        md,
        "## Releases with websockets\n\n`ws_echo` instances (the example service, embedding the gate) for blue and green, gate-direct: 10,000 websockets and a proxy in front would need two descriptors per websocket, more than this machine allows one process (20,000). `bg-wsload`'s clients (in process, a message every 5 s each) are spread by the gates' own health checks every 100 ms, as a load balancer with `rise 1 fall 1` would, and the gates count those checks as a load balancer's probes. One release to green leaves the clients on blue; the release measured goes back to blue with `bg-ctl deploy --confirm-lb` and its default drain (a 20 s window, at least 100 websockets a second), so it asks every one of them to move before it restarts blue.\n\n\
         | websockets | release wall time | drain (first to last asked) | peak reconnects/s on green | blue's RSS with all open | per websocket | blue's CPU with all open | blue's CPU while draining | moved | cut | connect failures |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    for r in &runs {
        let _ = writeln!(
            md,
            "| {} | {:.1} s | {:.1} s | {} | {:.0} MiB | {:.1} KiB | {:.1}% of a core | {:.2} s | {} | {} | {} |",
            r.websockets,
            r.wall.as_secs_f64(),
            r.drain.as_secs_f64(),
            r.peak_reconnects,
            r.rss_open,
            r.rss_per_socket_kib,
            r.open_cpu * 100.0,
            r.drain_cpu,
            r.summary.moves,
            r.summary.cuts,
            r.summary.connect_failures,
        );
    }
    let _ = writeln!(
        md,
        "\nThe drain's time grows with the count only up to the window: at the floor rate of 100 a second, 100 websockets are asked in a second and 1,000 in ten; from 2,000 on, every count is asked within the 20 s window (10,000 at 500 a second, 50,000 would be at 2,500), so the release's time stops growing with it. Before the drain was paced by time, it asked 10 a second: 1,000 websockets took 100 s, beyond the default `--drain-timeout` of 60 s, and the release aborted. The gate's own tracking of a websocket (its entry in the tracker and the channel a drain asks through) costs {tracking:.0} bytes (1,000,000 tracked in one process); the rest of the per-websocket figure is the connection itself, its task and the websocket library's buffers, which `ws_echo` sizes for chat-like traffic (a 4 KiB read buffer, no write buffer, 64 KiB messages).\n"
    );
}

/// `bg-ctl deploy` wall time against the instance's own restart time.
async fn release_overhead(redis: &str, releases: usize) -> (Duration, Duration, Duration) {
    let instance = |colour| {
        Instance::new(sibling("bg-gate"), colour, redis, "release")
            .args(&["--poll-interval", "100ms", "--handover", "0s"])
            .env("BG_TOKEN", TOKEN)
            .stop(Stop::Graceful(Duration::from_secs(10)))
            .started("v0")
    };
    let instances = instances([instance("blue"), instance("green")]);
    let (blue, green) = (addr_of(&instances, "blue"), addr_of(&instances, "green"));
    let hooks = Webhooks::serve(instances, Duration::ZERO).await;
    while !gate_status(blue).is_some_and(|s| s.live) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ctl = Ctl::new(sibling("bg-ctl"), redis, "release", TOKEN).release_env(blue, green, &hooks);
    let mut walls = Vec::new();
    for n in 1..=releases {
        let cmd = ctl.command(&[
            "deploy",
            "--version",
            &format!("v{n}"),
            "--tag-param",
            "tag",
            "--poll",
            "20ms",
        ]);
        let t = Instant::now();
        let out = run(cmd).await;
        assert!(
            out.status.success(),
            "release {n} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        walls.push(t.elapsed());
    }
    let median = |mut v: Vec<Duration>| {
        v.sort();
        percentile(&v, 0.5)
    };
    let (wall, restart) = (median(walls), median(hooks.restart_times()));
    (wall, restart, wall.saturating_sub(restart))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_owned())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    format!("{cores} cores ({cpu}), {mem}")
}

fn date() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    bg_state::format_millis(ms)[..10].to_owned()
}

/// The time a switch takes to be acknowledged under Sentinel, with the
/// write confirmed by no replica and by one (`WAIT 1`), 1,000 switches each.
async fn durability(md: &mut String) {
    let set = SentinelSet::start("bench");
    let mut rows = String::new();
    for replicas in [0, 1] {
        let url = format!("{}?min_replicas={replicas}", set.url());
        let store = RedisStore::open(&url).expect("store");
        let app = AppName::new(format!("durable-{replicas}")).expect("app");
        store
            .init(&app, InitRequest::new(Colour::Blue, "bench").force(true))
            .await
            .expect("init");
        let mut took = Vec::with_capacity(1000);
        let mut generation = store
            .get(&app)
            .await
            .expect("read")
            .expect("state")
            .generation;
        for i in 0..1000 {
            let to = if i % 2 == 0 {
                Colour::Green
            } else {
                Colour::Blue
            };
            let started = Instant::now();
            let out = store
                .switch(
                    &app,
                    SwitchRequest::new(to, "bench").expect_generation(generation),
                )
                .await
                .expect("switch");
            took.push(started.elapsed());
            generation = out.state.generation;
        }
        took.sort();
        let _ = writeln!(
            rows,
            "| {replicas} | {} ms | {} ms |",
            ms(percentile(&took, 0.5)),
            ms(percentile(&took, 0.99))
        );
    }
    let _ = writeln!(
        md,
        "## Switch latency and min_replicas\n\n\
         `RedisStore::switch` under Sentinel (a master, one replica, a sentinel, all on loopback), from the call to its answer, 1,000 switches each. With `min_replicas=1` (the Sentinel default) the answer waits for `WAIT 1`: the replica holds the switch before it is acknowledged.\n\n\
         | min_replicas | p50 | p99 |\n| ---: | ---: | ---: |\n{rows}"
    );
}

#[tokio::main]
async fn main() {
    // reqwest is built without a bundled crypto provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Thousands of client sockets and Redis connections in this process.
    let _ = bg_gate::server::raise_open_file_limit();
    if std::env::args().nth(1).as_deref() == Some("--durability") {
        let mut md = String::new();
        durability(&mut md).await;
        println!("{md}");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--websockets") {
        let mut md = String::new();
        websockets_report(&mut md).await;
        println!("{md}");
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("--many-apps") {
        let mut md = String::new();
        many_apps_report(&mut md).await;
        println!("{md}");
        return;
    }
    let out = std::env::args()
        .nth(1)
        .map_or_else(|| PathBuf::from("docs/benchmarks.md"), PathBuf::from);
    let redis = RedisServer::start();
    let url = redis.url();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmarks\n\nProduced by `scripts/bench.sh` on {}, {}; release builds, everything on loopback, load generator on the same machine.\n",
        date(),
        machine()
    );

    // 1. Health checks.
    eprintln!("health checks: bare axum, gate, strict gate (wrk, {WRK_SECONDS} s each)");
    let bare_addr = addr();
    let mut bare_cmd = Command::new(sibling("bg-bare"));
    bare_cmd.arg(bare_addr.to_string());
    let _bare = Process::spawn("bg-bare", bare_cmd);
    wait_for_port(bare_addr, Duration::from_secs(10));
    let (gate, gate_addr) = gate_process(&url, &[]);
    let (_strict, strict_addr) = gate_process(&url, &["--strict", "--gate-id", "strict"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_mib(gate.id());
    let path = "/balancer-keepalive-check";
    let bare = wrk(&format!("http://{bare_addr}{path}"));
    let rss_sampler = {
        let pid = gate.id();
        std::thread::spawn(move || {
            let mut peak: f64 = 0.0;
            for _ in 0..(WRK_SECONDS * 10) {
                peak = peak.max(rss_mib(pid));
                std::thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let g = wrk(&format!("http://{gate_addr}{path}"));
    let load_rss = rss_sampler.join().unwrap_or(0.0);
    let strict = wrk(&format!("http://{strict_addr}{path}"));
    let (paced_p50, paced_p99, paced_failed) =
        paced_latency(&format!("http://{gate_addr}{path}")).await;
    let _ = writeln!(
        md,
        "## Health check\n\n`wrk -t2 -c32 -d{WRK_SECONDS}s --latency` against `{path}`, one after another.\n"
    );
    let _ = writeln!(
        md,
        "| server | requests/s | p50 | p99 | vs bare |\n| --- | ---: | ---: | ---: | ---: |"
    );
    for (name, w) in [
        ("bare axum handler (ceiling)", &bare),
        ("bg-gate (view)", &g),
        ("bg-gate --strict (Redis read per check)", &strict),
    ] {
        let _ = writeln!(
            md,
            "| {name} | {:.0} | {} | {} | {:.2}× |",
            w.rps,
            w.p50,
            w.p99,
            w.rps / bare.rps.max(1.0)
        );
    }
    let _ = writeln!(
        md,
        "\nThe gate does {:.2}× the bare handler's throughput (target ≥ 0.9×) and {:.1}× strict mode's (target ≥ 5×).\n\n\
         At a steady 1,000 requests/s from one keep-alive client (10,000 requests, client time included): p50 {} ms, p99 {} ms (target < 1 ms), {paced_failed} failed.\n",
        g.rps / bare.rps.max(1.0),
        g.rps / strict.rps.max(1.0),
        ms(paced_p50),
        ms(paced_p99),
    );
    let _ = writeln!(
        md,
        "## Gate memory\n\nResident set of the `bg-gate` process: {idle_rss:.1} MiB idle, {load_rss:.1} MiB at most under the load above (target < 20 MiB idle).\n"
    );

    eprintln!("same runtime: bare, gate, tracked ({ROUNDS} alternating rounds)");
    same_runtime(&mut md);

    // 2. Switch propagation.
    eprintln!("switch propagation: 1000 switches with notifications, 1000 polling only");
    let (n50, n99) = propagation(&url, true, 1000, Duration::from_millis(500)).await;
    let (p50, p99) = propagation(&url, false, 1000, Duration::from_millis(100)).await;
    let _ = writeln!(
        md,
        "## Switch propagation\n\nFrom a switch's commit in Redis to both gates (two in one process, each with its own connection) answering from the new generation, 1,000 switches each.\n\n\
         | mode | p50 | p99 |\n| --- | ---: | ---: |\n\
         | notifications (pub/sub), poll 500 ms | {} ms | {} ms |\n\
         | polling only, every 100 ms | {} ms | {} ms |\n\n\
         Target with notifications: p99 < 5 ms.\n",
        ms(n50),
        ms(n99),
        ms(p50),
        ms(p99)
    );

    // 3. Release overhead.
    eprintln!("release overhead: 5 releases");
    let (wall, restart, overhead) = release_overhead(&url, 5).await;
    let _ = writeln!(
        md,
        "## Release overhead\n\n`bg-ctl deploy` against two `bg-gate` processes, a webhook that restarts the idle one (SIGTERM, start, listening), no load balancer; medians of 5 releases.\n\n\
         | deploy wall time | instance restart | overhead |\n| ---: | ---: | ---: |\n| {} ms | {} ms | {} ms |\n\n\
         Target: overhead < 1 s beyond the restart and the load balancer's rise (no load balancer here; `--confirm-lb` adds the LB's rise × interval).\n",
        ms(wall),
        ms(restart),
        ms(overhead)
    );

    // 4. Many apps on one Redis.
    many_apps_report(&mut md).await;

    // 5. Releases with thousands of websockets.
    websockets_report(&mut md).await;

    // 6. What acknowledged writes cost.
    eprintln!("switch latency under Sentinel: min_replicas 0 and 1, 1000 switches each");
    durability(&mut md).await;

    std::fs::write(&out, &md).expect("write the report");
    eprintln!("{md}");
    eprintln!("written to {}", Path::new(&out).display());
}
