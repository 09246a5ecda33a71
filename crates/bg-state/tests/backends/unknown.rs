//! Once a script may have run, a failure is "outcome unknown, retry"
//! (retryable), never a refusal: the errors real servers give (NOREPLICAS,
//! BUSY, MISCONF, READONLY, a `WAIT` answered by a node demoted to replica)
//! and a connection cut after the script was sent. A retry under the same
//! request id is recognised as done. Under Sentinel, such a failure makes
//! the next call look the master up again.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bg_state::{
    AppName, Colour, ColourStore, Error, EventKind, InitRequest, RedisOptions, RedisStore,
    SwitchRequest,
};
use bg_testkit::{Fault, RedisProxy, RedisServer, SentinelSet};

fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(2),
        replica_timeout: Duration::from_millis(300),
        ..RedisOptions::default()
    }
}

fn store(url: &str) -> RedisStore {
    RedisStore::with_options(url, options()).unwrap()
}

fn assert_unknown(err: &Error, code: &str) {
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.is_retryable(),
        "{code}: expected a retryable outcome-unknown failure, got {err:?}"
    );
    assert!(err.to_string().contains(code), "{code}: {err}");
}

async fn initialised(store: &RedisStore, name: &str) -> AppName {
    let app = AppName::new(name).unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    app
}

fn switch(id: &str) -> SwitchRequest {
    SwitchRequest::new(Colour::Green, "t")
        .expect_generation(1)
        .request_id(id)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "after 20 s, not yet: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn noreplicas_is_an_unknown_outcome() {
    let server = RedisServer::start();
    let store = store(&server.url());
    let app = initialised(&store, "noreplicas").await;
    let _ = server.cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let err = store.switch(&app, switch("job-1")).await.unwrap_err();
    assert_unknown(&err, "NOREPLICAS");
    let _ = server.cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    let out = store.switch(&app, switch("job-1")).await.unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));
}

#[tokio::test]
async fn readonly_is_an_unknown_outcome() {
    let master = RedisServer::start();
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &master.port().to_string()]);
    let err = store(&replica.url())
        .init(
            &AppName::new("readonly").unwrap(),
            InitRequest::new(Colour::Blue, "t"),
        )
        .await
        .unwrap_err();
    assert_unknown(&err, "READONLY");
}

/// A script that never ends, from a `redis-cli` of its own; killed (with
/// `SCRIPT KILL`, then the process) when dropped.
struct Busy<'a> {
    server: &'a RedisServer,
    cli: Child,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.server.port().to_string()])
            .args(["SCRIPT", "KILL"])
            .stdout(Stdio::null())
            .status();
        let _ = self.cli.kill();
        let _ = self.cli.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_an_unknown_outcome() {
    let server = RedisServer::start();
    let store = store(&server.url());
    let app = initialised(&store, "busy").await;
    let _ = server.cli(&["CONFIG", "SET", "busy-reply-threshold", "50"]);
    let cli = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &server.port().to_string()])
        .args(["EVAL", "while true do end", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-cli runs");
    let busy = Busy {
        server: &server,
        cli,
    };
    wait_for("the server answers BUSY", || {
        server.cli(&["PING"]).contains("BUSY")
    });
    let err = store.switch(&app, switch("job-2")).await.unwrap_err();
    drop(busy);
    assert_unknown(&err, "BUSY");
    wait_for("the script is killed", || {
        server.cli(&["PING"]).contains("PONG")
    });
    let out = store.switch(&app, switch("job-2")).await.unwrap();
    assert_eq!(out.state.generation, 2);
}

#[tokio::test]
async fn misconf_is_an_unknown_outcome() {
    let server = RedisServer::start_with_args(&["--enable-protected-configs", "yes"]);
    let store = store(&server.url());
    let app = initialised(&store, "misconf").await;
    // Snapshots into a directory that is gone: the background save fails,
    // and the server stops taking writes.
    let gone = server.dir().join("gone");
    std::fs::create_dir(&gone).unwrap();
    let _ = server.cli(&["CONFIG", "SET", "dir", gone.to_str().unwrap()]);
    std::fs::remove_dir(&gone).unwrap();
    let _ = server.cli(&["CONFIG", "SET", "save", "3600 1"]);
    let _ = server.cli(&["BGSAVE"]);
    wait_for("the background save fails", || {
        server
            .cli(&["INFO", "persistence"])
            .contains("rdb_last_bgsave_status:err")
    });
    let err = store.switch(&app, switch("job-3")).await.unwrap_err();
    assert_unknown(&err, "MISCONF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_cut_off_after_its_script_is_retried_by_request_id() {
    let server = RedisServer::start();
    let direct = store(&server.url());
    // The script is loaded, so the first one through the proxy runs.
    let _ = initialised(&direct, "other").await;
    let proxy = RedisProxy::start(server.port(), Fault::CutAfterScript);
    let app = AppName::new("cut").unwrap();
    let init = || InitRequest::new(Colour::Blue, "t").request_id("job-4-init");
    let through = store(&proxy.url());
    let err = through.init(&app, init()).await.unwrap_err();
    assert!(proxy.fired(), "the connection was not cut");
    assert!(err.is_retryable(), "{err:?}");
    let made = direct.get(&app).await.unwrap().expect("the init ran");
    // The retry finds its own init: a success, not "already initialised".
    let retried = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match through.init(&app, init()).await {
                Err(e) if e.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other,
            }
        }
    })
    .await
    .expect("the store reconnects")
    .expect("a retried init under its request id succeeds");
    assert_eq!(retried, made);
    let events = direct.history(&app, 10).await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(events[0].kind, EventKind::Init { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_answered_by_a_demoted_master_is_an_unknown_outcome() {
    let master = RedisServer::start_with_args(&["--repl-diskless-sync-delay", "0"]);
    let replica = RedisServer::start_with_args(&[
        "--repl-diskless-sync-delay",
        "0",
        "--replicaof",
        "127.0.0.1",
        &master.port().to_string(),
    ]);
    wait_for("the replica is in sync", || master.replicated_write());
    let url =
        |port: u16, replicas: u32| format!("redis://127.0.0.1:{port}/0?min_replicas={replicas}");
    let app = initialised(&store(&url(master.port(), 0)), "demoted").await;
    wait_for("the replica holds the init", || master.replicated_write());
    // A failover between the script and its WAIT: once the switch is in,
    // the replica is promoted and the old master follows it.
    let (m, r) = (master.port(), replica.port());
    let proxy = RedisProxy::start(
        m,
        Fault::BeforeWait(Box::new(move || {
            wait_for("the switch is in", || {
                bg_testkit::redis_cli(m, &["HGET", "bg:{demoted}:state", "generation"]).trim()
                    == "2"
            });
            let _ = bg_testkit::redis_cli(r, &["REPLICAOF", "NO", "ONE"]);
            let _ = bg_testkit::redis_cli(m, &["REPLICAOF", "127.0.0.1", &r.to_string()]);
        })),
    );
    let err = store(&url(proxy.port(), 1))
        .switch(&app, switch("job-5"))
        .await
        .unwrap_err();
    assert!(proxy.fired(), "no WAIT went through the proxy");
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    // The retry, on the new master, is recognised or made: one switch.
    let out = store(&url(r, 0))
        .switch(&app, switch("job-5"))
        .await
        .unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sentinel_an_unknown_outcome_looks_the_master_up_again() {
    let set = SentinelSet::start("bgunknown");
    let store = store(&set.url());
    let app = initialised(&store, "relookup").await;
    // More replicas than there are: the script is refused with NOREPLICAS.
    let _ = set
        .master
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "2"]);
    let err = store.switch(&app, switch("job-6")).await.unwrap_err();
    assert_unknown(&err, "NOREPLICAS");
    let _ = set
        .master
        .cli(&["CONFIG", "SET", "min-replicas-to-write", "0"]);
    // The sentinel stops naming the master: only a call that asks it
    // again notices (one on the old connection would go through).
    let _ = set.sentinel.cli(&["SENTINEL", "REMOVE", "bgunknown"]);
    let err = store.get(&app).await.expect_err(
        "the call after an unknown outcome used the old connection, asking no sentinel",
    );
    assert!(err.is_retryable(), "{err:?}");
    let port = set.master.port().to_string();
    let _ = set
        .sentinel
        .cli(&["SENTINEL", "MONITOR", "bgunknown", "127.0.0.1", &port, "1"]);
    let out = store.switch(&app, switch("job-6")).await.unwrap();
    assert_eq!(out.state.generation, 2);
}
