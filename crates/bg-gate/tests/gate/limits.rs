//! Connection hygiene on a real process: half-open requests time out, idle
//! keep-alive connections close, the connection cap holds with the health
//! check still answering, and websockets outlive the idle limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Instant;

use bg_testkit::{Process, free_port, http, wait_for_port};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::*;

/// The head timeout and idle limit most tests run under.
const TIMEOUTS: [&str; 4] = ["--header-timeout", "1s", "--idle-timeout", "3s"];

fn start(program: std::path::PathBuf, name: &str) -> (Process, SocketAddr) {
    start_with(program, name, &TIMEOUTS)
}

fn start_with(program: std::path::PathBuf, name: &str, timeouts: &[&str]) -> (Process, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(program);
    cmd.args(["--colour", "blue", "--init", "blue", "--handover", "0s"])
        .args(["--listen", &addr.to_string()])
        .args(timeouts)
        .args(["--max-connections", "40"]);
    let p = Process::spawn(name, cmd);
    wait_for_port(addr, Duration::from_secs(20));
    (p, addr)
}

/// Whether the server closed `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn half_open_requests_time_out_and_the_health_check_answers_at_the_cap() {
    // The idle limit (60 s) far above the bound below (10 s), so only the
    // head timeout (1 s) can close a half-open request in time.
    let (_p, addr) = start_with(
        env!("CARGO_BIN_EXE_bg-gate").into(),
        "bg-gate limits",
        &["--header-timeout", "1s", "--idle-timeout", "60s"],
    );
    let sent = Instant::now();
    // More half-open requests than the cap: a request line, no blank line.
    let mut half_open: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /balancer-keepalive-check HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The load balancer's check still answers.
    let a = http::get(addr, "/balancer-keepalive-check").unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    // And every half-open request is closed after the head timeout, long
    // before the idle limit could.
    let bound = Duration::from_secs(10);
    for s in &mut half_open {
        let left = bound.saturating_sub(sent.elapsed());
        assert!(
            closed_within(s, left.max(Duration::from_millis(1))),
            "a half-open request was still open {:?} after it was sent",
            sent.elapsed()
        );
    }
}

#[test]
fn idle_keep_alive_connections_close_after_the_idle_limit() {
    let (_p, addr) = start(env!("CARGO_BIN_EXE_bg-gate").into(), "bg-gate idle");
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /bg/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("alive"));
    // Idle past the head timeout (1 s) but within the idle limit (3 s): open.
    assert!(
        !closed_within(&mut s, Duration::from_millis(1800)),
        "closed before the idle limit"
    );
    // Past the idle limit: closed.
    assert!(
        closed_within(&mut s, Duration::from_secs(4)),
        "still open after the idle limit"
    );
}

/// `bg-gate ARGS` under `ulimit LIMIT` (`-n 400`: soft and hard; `-Sn
/// 400`: soft only), on a free loopback port.
fn start_under_ulimit(limit: &str, name: &str) -> (Process, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_bg-gate"))
        .args(["--colour", "blue", "--init", "blue", "--handover", "0s"])
        .args(["--listen", &addr.to_string(), "--header-timeout", "60s"]);
    let p = Process::spawn(name, cmd);
    wait_for_port(addr, Duration::from_secs(20));
    (p, addr)
}

/// The soft and hard open-file limits of process `pid`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line.split_whitespace().skip(3);
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[test]
fn the_cap_follows_the_open_file_limit_and_at_the_cap_refuses_honestly() {
    // 400 descriptors, too few to keep 320 back: half of them are, and the
    // cap is the other 200.
    let (p, addr) = start_under_ulimit("-n 400", "bg-gate at 400 files");
    assert_eq!(open_file_limits(p.id()), ("400".into(), "400".into()));
    let held: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The load balancer's check and bg-ctl's routes answer from the reserve.
    let check = http::get(addr, "/balancer-keepalive-check").unwrap();
    assert_eq!(check.status, 200, "{}", check.body);
    let state = http::get(addr, "/bg/state").unwrap();
    assert_eq!(state.status, 200, "{}", state.body);
    // Anything else is refused as what it is, not as "not found".
    let other = http::get(addr, "/anything-else").unwrap();
    assert_eq!(other.status, 503, "{}", other.body);
    let body: serde_json::Value = serde_json::from_str(&other.body).unwrap();
    assert_eq!(body["kind"], "over_capacity", "{body}");
    assert!(
        other.headers.iter().any(|(k, _)| k == "retry-after"),
        "{:?}",
        other.headers
    );
    drop(held);

    // A low soft limit under a higher hard one is raised to the hard one.
    let (p, _) = start_under_ulimit("-Sn 400", "bg-gate at a soft 400");
    let (soft, hard) = open_file_limits(p.id());
    assert_eq!(soft, hard, "the soft limit was not raised");
    assert_ne!(soft, "400");
}

#[tokio::test]
async fn websockets_are_not_subject_to_the_idle_limit() {
    let program = bg_testkit::workspace_example("bg-gate", "ws_echo");
    let (_p, addr) = tokio::task::spawn_blocking(move || start(program, "ws_echo idle"))
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    let hello = ws.next().await.unwrap().unwrap();
    assert!(hello.to_text().unwrap().starts_with("hello blue"));
    // Quiet for longer than the idle limit (3 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    ws.send(Message::Text("still here".into())).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.to_text().unwrap(), "still here");
}

#[tokio::test]
async fn a_streaming_response_is_not_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let app: Router = Router::new().route(
        "/events",
        axum::routing::get(|| async {
            let ticks = futures_util::stream::unfold(0u32, |n| async move {
                if n == 8 {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(400)).await;
                Some((
                    Ok::<_, std::convert::Infallible>(format!("tick {n}\n")),
                    n + 1,
                ))
            });
            axum::body::Body::from_stream(ticks)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = bg_gate::server::Limits {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        ..bg_gate::server::Limits::default()
    };
    let server = tokio::spawn(bg_gate::server::serve(
        listener,
        app,
        g.public_router(),
        limits,
        std::future::pending(),
    ));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = String::new();
    s.read_to_string(&mut got).await.unwrap();
    // 3.2 s of ticks, past the 1 s idle limit: all of them arrived.
    assert!(got.contains("tick 7"), "{got}");
    server.abort();
}
