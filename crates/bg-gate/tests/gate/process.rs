//! Two `bg-gate` processes on one Redis: a switch through one reaches the
//! other by notification, long before its next poll.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Instant;

use bg_testkit::{Process, RedisServer, free_port, http, wait_for_port};

use super::TOKEN;

fn start_gate(redis: &RedisServer, colour: &str, poll: &str) -> (Process, SocketAddr) {
    start_gate_with(redis, colour, poll, &[])
}

fn start_gate_with(
    redis: &RedisServer,
    colour: &str,
    poll: &str,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", colour, "--store", &redis.url(), "--app", "chat"])
        .args(["--listen", &addr.to_string(), "--service-version", "v7"])
        .args([
            "--init",
            "blue",
            "--poll-interval",
            poll,
            "--handover",
            "0s",
        ])
        .args(extra)
        .env("BG_TOKEN", TOKEN)
        .env("RUST_LOG", "info");
    let p = Process::spawn(&format!("bg-gate {colour}"), cmd);
    wait_for_port(addr, std::time::Duration::from_secs(20));
    (p, addr)
}

fn answer(addr: SocketAddr) -> u16 {
    http::get(addr, "/balancer-keepalive-check").unwrap().status
}

#[test]
fn a_switch_through_one_gate_reaches_the_other_by_notification() {
    let redis = RedisServer::start();
    // Polls so rare that only a notification can explain a quick change.
    let (_blue, blue) = start_gate(&redis, "blue", "60s");
    let (_green, green) = start_gate(&redis, "green", "60s");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while answer(blue) != 200 || answer(green) != 503 {
        assert!(
            Instant::now() < deadline,
            "the gates never agreed that blue is live"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let auth = format!("Bearer {TOKEN}");
    let res = http::request(
        blue,
        "POST",
        "/bg/switch",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        r#"{"to":"green","reason":"test"}"#,
    )
    .unwrap();
    assert_eq!(res.status, 200, "{}", res.body);
    let switched = Instant::now();
    while answer(green) != 200 {
        assert!(
            switched.elapsed() < std::time::Duration::from_secs(30),
            "the other gate never heard of the switch"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let took = switched.elapsed();
    eprintln!("the other process answered OK {took:?} after the switch");
    assert!(
        took < std::time::Duration::from_secs(30),
        "no faster than the poll: the notification path is broken"
    );
    assert_eq!(
        answer(blue),
        503,
        "with no handover the old colour stops at once"
    );

    let state = http::get(green, "/bg/state").unwrap();
    let status: bg_state::wire::GateStatus = serde_json::from_str(&state.body).unwrap();
    assert_eq!(status.generation, 2, "{status:?}");
    // The probes this test made are in the log, with their source address.
    assert!(
        status
            .probes
            .iter()
            .any(|p| p.source == Some([127, 0, 0, 1].into())),
        "{status:?}"
    );
}

#[test]
fn bad_options_are_usage_errors() {
    for (args, needle) in [
        (vec!["--colour", "purple"], "is not a colour"),
        (
            vec!["--colour", "blue", "--poll-interval", "5"],
            "is not a duration",
        ),
        (
            vec!["--colour", "blue", "--store", "postgres://x"],
            "unknown store scheme",
        ),
        (vec!["--colour", "blue", "--app", "Bad App"], "app name"),
        (
            vec!["--colour", "blue", "--stop-status", "500"],
            "not a STOP status",
        ),
        (
            vec!["--colour", "blue", "--lb-source", "10.0.0.0/33"],
            "not an address range",
        ),
        (
            vec!["--colour", "blue", "--lb-source", "lb.internal"],
            "not an address range",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_bg-gate"))
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_bg-gate"))
        .args(["--colour", "blue", "--listen", "127.0.0.1:0"])
        .env("BG_TOKEN", "short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("at least 16") && !err.contains("short\""),
        "{err}"
    );
}

#[test]
fn with_lb_sources_only_their_probes_are_logged() {
    let redis = RedisServer::start();
    let probes = |addr| {
        let state = http::get(addr, "/bg/state").unwrap();
        let status: bg_state::wire::GateStatus = serde_json::from_str(&state.body).unwrap();
        status.probes
    };
    let (_other, other) = start_gate_with(&redis, "green", "1s", &["--lb-source", "10.0.0.0/8"]);
    let (_ours, ours) = start_gate_with(
        &redis,
        "blue",
        "1s",
        &[
            "--lb-source",
            "192.168.7.0/24",
            "--lb-source",
            "127.0.0.1/32",
        ],
    );
    for addr in [other, ours] {
        for _ in 0..3 {
            answer(addr);
        }
    }
    assert_eq!(
        probes(other),
        vec![],
        "a source not listed is no load balancer"
    );
    let logged = probes(ours);
    assert_eq!(logged.len(), 3, "{logged:?}");
    let status: bg_state::wire::GateStatus =
        serde_json::from_str(&http::get(ours, "/bg/state").unwrap().body).unwrap();
    assert!(
        status.named_lb_sources,
        "bg-ctl must know the log holds only load balancers"
    );
    assert!(
        logged
            .iter()
            .all(|p| p.source == Some([127, 0, 0, 1].into()))
    );
}

#[test]
fn admin_routes_on_a_public_listener_need_to_be_asked_for() {
    // Not loopback, no --admin-listen: refused before anything is bound.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", "blue", "--listen", "0.0.0.0:0"]);
    let (code, err) = exit_within(cmd, std::time::Duration::from_secs(20));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--admin-listen") && err.contains("--admin-on-public"),
        "{err}"
    );

    // Asked for explicitly, the gate serves them there.
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", "blue", "--init", "blue", "--admin-on-public"])
        .args(["--listen", &format!("0.0.0.0:{port}")]);
    let p = Process::spawn("bg-gate public admin", cmd);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for_port(addr, std::time::Duration::from_secs(20));
    assert_eq!(http::get(addr, "/bg/state").unwrap().status, 200);
    drop(p);

    // A private admin listener needs no such flag.
    let port = free_port();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", "blue", "--init", "blue"])
        .args(["--listen", &format!("0.0.0.0:{port}")])
        .args(["--admin-listen", &admin.to_string()]);
    let _p = Process::spawn("bg-gate private admin", cmd);
    wait_for_port(admin, std::time::Duration::from_secs(20));
    assert_eq!(http::get(admin, "/bg/state").unwrap().status, 200);
    let public: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(http::get(public, "/bg/state").unwrap().status, 404);
    // The status page too: on the admin listener, and nowhere else.
    for path in ["/bg/ui", "/bg/ui/data"] {
        assert_eq!(http::get(admin, path).unwrap().status, 200, "{path}");
        assert_eq!(http::get(public, path).unwrap().status, 404, "{path}");
    }
}

/// The exit code and standard error of `cmd`, killed (code `None`) if it
/// is still running after `limit`: a gate that should have refused to
/// start would otherwise serve forever.
pub(crate) fn exit_within(mut cmd: Command, limit: std::time::Duration) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err)
}

#[test]
fn an_empty_token_file_is_refused_at_start_and_ignored_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "# nobody yet\n").unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", "blue", "--listen", "127.0.0.1:0"])
        .arg("--token-file")
        .arg(&tokens);
    let (code, err) = exit_within(cmd, std::time::Duration::from_secs(20));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("holds no token"), "{err}");

    std::fs::write(&tokens, format!("ci {TOKEN}\n")).unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bg-gate"));
    cmd.args(["--colour", "blue", "--init", "blue", "--handover", "0s"])
        .args(["--listen", &addr.to_string()])
        .arg("--token-file")
        .arg(&tokens);
    let p = Process::spawn("bg-gate tokens", cmd);
    wait_for_port(addr, std::time::Duration::from_secs(20));
    let auth = format!("Bearer {TOKEN}");
    let switch = |to: &str| {
        http::request(
            addr,
            "POST",
            "/bg/switch",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            &format!(r#"{{"to":"{to}"}}"#),
        )
        .unwrap()
        .status
    };
    assert_eq!(switch("green"), 200);

    // Emptied and re-read: the token in force stays, and it is an error.
    std::fs::write(&tokens, "").unwrap();
    Command::new("kill")
        .args(["-HUP", &p.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !p.output().contains("ERROR") {
        assert!(Instant::now() < deadline, "{}", p.output());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = p.output();
    assert!(
        log.contains("holds no token") && !log.contains(TOKEN),
        "{log}"
    );
    assert!(!log.contains("token file re-read"), "{log}");
    assert_eq!(switch("blue"), 200, "{}", p.output());
}
