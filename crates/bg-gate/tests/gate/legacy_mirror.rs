//! `--legacy-mirror`: a gate that keeps the hand-made design's Redis keys in
//! step, for instances still reading them during a migration.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;

use bg_gate::server::{GateArgs, ServerError, exit};
use bg_state::{Colour, SwitchRequest};
use bg_testkit::RedisServer;
use clap::Parser;

use super::view::wait_for;
use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    gate: GateArgs,
}

fn args(extra: &[&str]) -> GateArgs {
    let mut argv = vec!["bg-gate", "--listen", "127.0.0.1:0", "--app", "chat"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).unwrap().gate
}

/// `GET key` over a plain connection: the value, `None` for no key.
fn redis_get(server: &RedisServer, key: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    write!(s, "*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    r.read_line(&mut head).unwrap();
    if head.starts_with("$-1") {
        return None;
    }
    assert!(head.starts_with('$'), "unexpected reply {head:?}");
    let mut value = String::new();
    r.read_line(&mut value).unwrap();
    Some(value.trim_end().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_keeps_the_hand_made_keys_in_step() {
    let redis = RedisServer::start();
    let url = redis.url();
    let server = args(&[
        "--colour",
        "blue",
        "--store",
        &url,
        "--init",
        "blue",
        "--legacy-mirror",
        "alfa,beta",
        "--poll-interval",
        "50ms",
    ])
    .start()
    .await
    .unwrap();
    let gate = server.gate().clone();
    wait_for(|| gate.view().state.is_some()).await;
    assert_eq!(redis_get(&redis, "lb-status-alfa").as_deref(), Some("1"));
    assert_eq!(redis_get(&redis, "lb-status-beta").as_deref(), Some("0"));

    // A switch through this gate's store (its API, `bg-ctl --gate`) moves both keys.
    gate.store()
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    assert_eq!(redis_get(&redis, "lb-status-alfa").as_deref(), Some("0"));
    assert_eq!(redis_get(&redis, "lb-status-beta").as_deref(), Some("1"));

    // So does a switch by a store that knows nothing of the mirror
    // (`bg-ctl --store redis://…`): the gate recorded its ids in the state.
    bg_state::open(&url)
        .unwrap()
        .switch(&app(), SwitchRequest::new(Colour::Blue, "ci"))
        .await
        .unwrap();
    assert_eq!(redis_get(&redis, "lb-status-alfa").as_deref(), Some("1"));
    assert_eq!(redis_get(&redis, "lb-status-beta").as_deref(), Some("0"));
}

#[tokio::test]
async fn the_mirror_is_refused_where_it_cannot_work() {
    let refused = |extra: [&'static str; 4]| async move {
        let mut argv = vec!["--colour", "blue"];
        argv.extend_from_slice(&extra);
        let e = args(&argv).start().await.unwrap_err();
        assert_eq!(e.exit_code(), exit::USAGE, "{e}");
        e
    };
    let e = refused(["--store", "memory://", "--legacy-mirror", "alfa,beta"]).await;
    assert!(matches!(e, ServerError::LegacyMirrorNeedsRedis), "{e}");
    let e = refused([
        "--store",
        "redis://127.0.0.1:1/0",
        "--legacy-mirror",
        "alfa",
    ])
    .await;
    assert!(matches!(e, ServerError::LegacyMirrorIds { .. }), "{e}");
    let e = refused([
        "--store",
        "redis://127.0.0.1:1/0",
        "--legacy-mirror",
        "alfa,alfa",
    ])
    .await;
    assert!(
        matches!(
            e,
            ServerError::LegacyMirror(bg_state::Error::InvalidInput(_))
        ),
        "{e}"
    );
    // A Cluster cannot hold the legacy keys in the app's slot.
    let e = refused([
        "--store",
        "redis-cluster://127.0.0.1:1,127.0.0.1:2",
        "--legacy-mirror",
        "alfa,beta",
    ])
    .await;
    assert!(e.to_string().contains("Redis Cluster"), "{e}");
}
