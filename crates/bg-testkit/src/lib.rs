//! Test support: real servers started on free loopback ports, stopped when
//! dropped, their logs printed when a test fails.
//!
//! Tests never touch a server they did not start: every [`RedisServer`] is a
//! new `redis-server` process on a port the kernel just handed out, with
//! persistence off and its files in a temporary directory.
//!
//! * [`RedisServer`] (`redis.rs`), [`SentinelSet`] (`sentinel.rs`),
//!   [`RedisCluster`] (`cluster.rs`), with [`TlsFiles`] (`tls.rs`) for their
//!   TLS forms — real Redis servers on loopback, killed on drop.
//! * [`RedisProxy`] (`proxy.rs`) — a proxy in front of one of them that
//!   reads the commands going through, to cut a connection once a script
//!   ran or act on the servers just before a `WAIT` reaches them.
//! * [`Process`] (`process.rs`), [`free_port`], [`wait_for_port`] — any
//!   program as a child process, killed on drop.
//! * [`http`] — a blocking HTTP/1.1 client small enough to trust in a test.
//! * [`workspace_binary`], [`workspace_example`] — the workspace's own
//!   programs, rebuilt when stale.
//! * [`haproxy`], [`caddy`], [`nginx`] — real load balancers running the
//!   configurations of `docs/examples` ([`examples`]) with only the test's
//!   addresses and ports put in: HAProxy with its servers' states read from
//!   the stats socket, Caddy with directories and an admin port of its own,
//!   nginx under a prefix of its own.
//! * `store` (feature `store`) — stores that pass every call to another
//!   store except the ones a test takes over.
//! * [`names`] — the flags and environment variables that messages and
//!   help name, checked against a `clap` tree (feature `names`).
//! * [`doc_commands`] — the `bg-gate` and `bg-ctl` command lines of the
//!   README and `docs/`, each run through the program's `--check`.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub mod caddy;
mod cluster;
pub mod doc_commands;
pub mod haproxy;
pub mod http;
pub mod names;
pub mod nginx;
mod process;
mod proxy;
mod redis;
mod sentinel;
#[cfg(feature = "store")]
pub mod store;
mod tls;

pub use cluster::RedisCluster;
pub use process::Process;
pub use proxy::{Fault, RedisProxy};
pub use redis::{RedisServer, redis_cli};
pub use sentinel::SentinelSet;
pub use tls::TlsFiles;

/// `docs/examples`, where the files users copy live.
#[must_use]
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

/// Replaces the `n` occurrences of `from` in `text`, the content of the
/// example file `file`.
///
/// # Panics
/// If `text` holds `from` a different number of times: the example changed
/// under the test, which would otherwise run something else than the file.
pub(crate) fn substitute(text: &mut String, file: &str, from: &str, to: &str, n: usize) {
    assert_eq!(
        text.matches(from).count(),
        n,
        "docs/examples/{file} should hold {from:?} {n} times"
    );
    *text = text.replace(from, to);
}

/// A port nobody listened on a moment ago.
///
/// # Panics
/// If the kernel hands out no loopback port.
#[must_use]
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits up to `limit` for `addr` to accept connections.
///
/// # Panics
/// If it never does.
pub fn wait_for_port(addr: std::net::SocketAddr, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The path of binary `bin` of workspace package `package`
/// (`target/debug/<bin>`), brought up to date first: a test run of one
/// package does not rebuild the others' binaries, and a stale one would
/// test old code.
///
/// # Panics
/// If it cannot be built.
#[must_use]
pub fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    built(package, "--bin", bin, bin)
}

/// The path of example `example` of workspace package `package`
/// (`target/debug/examples/<example>`), brought up to date first.
///
/// # Panics
/// If it cannot be built.
#[must_use]
pub fn workspace_example(package: &str, example: &str) -> PathBuf {
    built(
        package,
        "--example",
        example,
        &format!("examples/{example}"),
    )
}

fn built(package: &str, kind: &str, name: &str, relative: &str) -> PathBuf {
    static DONE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>");
    let path = dir.join(relative);
    let mut done = DONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if done.iter().any(|d| d == relative) {
        return path;
    }
    // `cargo test` of the whole workspace builds every binary and example
    // first; building again here, with another feature set, would rebuild
    // half the dependency tree. So build only what is missing or older than
    // the sources.
    let built_at = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let stale = match (built_at, newest_source()) {
        (Some(b), Some(src)) => b < src,
        _ => true,
    };
    if stale {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "--quiet", "-p", package, kind, name])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot build {relative} of {package}");
    }
    done.push(relative.to_owned());
    path
}

/// When the workspace's sources (`crates/`) last changed.
fn newest_source() -> Option<std::time::SystemTime> {
    let mut dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    while !std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|t| t.contains("[workspace]"))
    {
        dir = dir.parent()?.to_path_buf();
    }
    let mut newest = None;
    let mut todo = vec![dir.join("crates")];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).ok()?.flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(t) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(t));
            }
        }
    }
    newest
}
