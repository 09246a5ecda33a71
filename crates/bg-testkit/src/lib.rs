//! Test support: real servers started on free loopback ports, stopped when
//! dropped, their logs printed when a test fails.
//!
//! Tests never touch a server they did not start: every [`RedisServer`] is a
//! new `redis-server` process on a port the kernel just handed out, with
//! persistence off and its files in a temporary directory.
//!
//! * [`RedisServer`], [`Process`], [`free_port`], [`wait_for_port`] — real
//!   processes on loopback, killed on drop.
//! * [`http`] — a blocking HTTP/1.1 client small enough to trust in a test.
//! * [`workspace_binary`], [`workspace_example`] — the workspace's own
//!   programs, rebuilt when stale.
//! * [`nginx`] — a real nginx with the example configuration under a
//!   prefix of its own.
//! * `store` (feature `store`) — stores that pass every call to another
//!   store except the ones a test takes over.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod nginx;
#[cfg(feature = "store")]
pub mod store;

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

/// A `redis-server` of this test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments beyond the defaults (TLS, replication, cluster mode).
    extra: Vec<String>,
    tls_port: Option<u16>,
    /// A sentinel's configuration file (sentinels rewrite it).
    sentinel_conf: Option<String>,
}

impl RedisServer {
    /// Starts `redis-server` on a free port and waits until it answers.
    ///
    /// # Panics
    /// If `redis-server` is not installed (the README's test command installs
    /// it) or does not come up; a test needing Redis must fail, not skip.
    #[must_use]
    pub fn start() -> Self {
        RedisServer::start_with(&[], false, None)
    }

    /// Starts `redis-server` with `extra` arguments after the defaults
    /// (`--replicaof …`, `--cluster-enabled yes`, …).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[must_use]
    pub fn start_with_args(extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        RedisServer::start_with(&extra, false, None)
    }

    /// Starts `redis-server` answering TLS on [`RedisServer::tls_url`] with
    /// the certificate `tls` signed (and plain TCP on [`RedisServer::url`]).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[must_use]
    pub fn start_tls(tls: &TlsFiles) -> Self {
        RedisServer::start_with(&[], true, Some(tls))
    }

    fn start_with(extra: &[String], tls: bool, files: Option<&TlsFiles>) -> Self {
        let mut last_err = String::new();
        // A port found free can be taken before the server binds it: retry.
        for _ in 0..5 {
            let tls_port = tls.then(free_port);
            let mut args = extra.to_vec();
            if let (Some(port), Some(files)) = (tls_port, files) {
                args.extend(["--tls-port".to_owned(), port.to_string()]);
                args.extend(files.server_args());
            }
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                extra: args,
                tls_port,
                sentinel_conf: None,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.log_path();
        let mut cmd = Command::new("redis-server");
        if let Some(conf) = &self.sentinel_conf {
            let path = self.dir.path().join("sentinel.conf");
            std::fs::write(&path, conf).map_err(|e| format!("cannot write {path:?}: {e}"))?;
            cmd.arg(path).arg("--sentinel");
        }
        let child = cmd
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "cannot run redis-server ({e}); install it (the README's test command does: apt-get install -y redis-server)"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(format!("redis-server exited with {status}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        Err(format!(
            "redis-server did not answer within 10 s: {}",
            self.log()
        ))
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// The server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts a sentinel (`redis-server --sentinel`) watching the master
    /// `name` at `master_port` on loopback, alone in its quorum, quick to
    /// declare it down (1 s) and to fail over.
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    #[must_use]
    pub fn start_sentinel(name: &str, master_port: u16) -> Self {
        RedisServer::start_sentinel_with(name, master_port, None)
    }

    fn start_sentinel_with(name: &str, master_port: u16, tls: Option<&TlsFiles>) -> Self {
        let mut last_err = String::new();
        for _ in 0..5 {
            let tls_port = tls.map(|_| free_port());
            let mut extra = Vec::new();
            if let (Some(port), Some(files)) = (tls_port, tls) {
                extra.extend(["--tls-port".to_owned(), port.to_string()]);
                extra.extend(files.server_args());
                extra.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
            }
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().expect("a temporary directory"),
                extra,
                tls_port,
                sentinel_conf: Some(format!(
                    "sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                     sentinel down-after-milliseconds {name} 1000\n\
                     sentinel failover-timeout {name} 10000\n\
                     sentinel parallel-syncs {name} 1\n"
                )),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("redis-server --sentinel did not start: {last_err}");
    }

    /// The TLS port of a server made by [`RedisServer::start_tls`].
    ///
    /// # Panics
    /// If the server has no TLS port.
    #[must_use]
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("a server started with start_tls")
    }

    /// `rediss://127.0.0.1:<tls port>/0`.
    ///
    /// # Panics
    /// If the server has no TLS port.
    #[must_use]
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.tls_port())
    }

    /// Runs `redis-cli` against this server with `args`, and answers its output.
    ///
    /// # Panics
    /// If `redis-cli` cannot run or fails.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.port, args)
    }

    /// Whether a write on this master reaches a replica within 100 ms
    /// (`WAIT` on the connection that wrote): a replica just synced takes a
    /// moment before the master streams to it.
    #[must_use]
    pub fn replicated_write(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let script = b"SET bg-testkit-sync 1\r\nWAIT 1 100\r\nDEL bg-testkit-sync\r\n";
        if s.write_all(script).is_err() {
            return false;
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        // +OK, :<replicas>, :1
        while got.iter().filter(|b| **b == b'\n').count() < 3 {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&got).lines().nth(1) == Some(":1")
    }

    /// The port clients are told of: the TLS port when there is one.
    #[must_use]
    pub fn client_port(&self) -> u16 {
        self.tls_port.unwrap_or(self.port)
    }

    /// Whether the process is still running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The server's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let ok = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills the server (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port, empty.
    ///
    /// # Panics
    /// If it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn().expect("redis-server restarts on its port");
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A paused server still dies of SIGKILL.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's working directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server on port {} log ---\n{}--- end of log ---",
                self.port,
                self.log()
            );
        }
        self.stop();
    }
}

/// A master, its replica and a sentinel watching them: what
/// `redis-sentinel://` URLs name. Everything stops on drop.
#[derive(Debug)]
pub struct SentinelSet {
    /// The master it started with (after a failover, a replica or dead).
    pub master: RedisServer,
    /// The replica it started with (after a failover, the master).
    pub replica: RedisServer,
    /// The sentinel.
    pub sentinel: RedisServer,
    name: String,
}

impl SentinelSet {
    /// Starts the three servers and waits until the replica is in sync and
    /// the sentinel knows it (so that it can promote it).
    ///
    /// # Panics
    /// If any does not come up within 20 s.
    #[must_use]
    pub fn start(name: &str) -> Self {
        SentinelSet::start_with(name, None)
    }

    /// As [`SentinelSet::start`], every server also answering TLS with the
    /// certificate `tls` signed, replication and the sentinel's own
    /// connections over TLS: the sentinel names the TLS ports.
    ///
    /// # Panics
    /// As [`SentinelSet::start`].
    #[must_use]
    pub fn start_tls(name: &str, tls: &TlsFiles) -> Self {
        SentinelSet::start_with(name, Some(tls))
    }

    fn start_with(name: &str, tls: Option<&TlsFiles>) -> Self {
        // Either may be the master after a failover; neither waits for more
        // replicas before it syncs one.
        let mut quick: Vec<String> = vec!["--repl-diskless-sync-delay".into(), "0".into()];
        if tls.is_some() {
            quick.extend(["--tls-replication".to_owned(), "yes".to_owned()]);
        }
        let master = RedisServer::start_with(&quick, tls.is_some(), tls);
        let master_port = master.client_port();
        let mut replica_args = quick.clone();
        replica_args.extend(["--replicaof", "127.0.0.1"].map(str::to_owned));
        replica_args.push(master_port.to_string());
        let replica = RedisServer::start_with(&replica_args, tls.is_some(), tls);
        let sentinel = RedisServer::start_sentinel_with(name, master_port, tls);
        let set = SentinelSet {
            master,
            replica,
            sentinel,
            name: name.to_owned(),
        };
        set.wait_until("the replica is in sync and known to the sentinel", || {
            set.replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
                && set.master.replicated_write()
                && set
                    .sentinel
                    .cli(&["SENTINEL", "replicas", name])
                    .contains(&set.replica.client_port().to_string())
        });
        set
    }

    /// `rediss-sentinel://127.0.0.1:<sentinel TLS port>/<name>`.
    ///
    /// # Panics
    /// Unless the set was made by [`SentinelSet::start_tls`].
    #[must_use]
    pub fn tls_url(&self) -> String {
        format!(
            "rediss-sentinel://127.0.0.1:{}/{}",
            self.sentinel.tls_port(),
            self.name
        )
    }

    /// `redis-sentinel://127.0.0.1:<sentinel port>/<name>`.
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "redis-sentinel://127.0.0.1:{}/{}",
            self.sentinel.port(),
            self.name
        )
    }

    /// The port of the master the sentinel names now (its TLS port in a
    /// set made by [`SentinelSet::start_tls`]).
    ///
    /// # Panics
    /// If the sentinel does not answer.
    #[must_use]
    pub fn master_port(&self) -> u16 {
        let out = self
            .sentinel
            .cli(&["SENTINEL", "get-master-addr-by-name", &self.name]);
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the sentinel names no master: {out:?}"))
    }

    /// Waits up to 20 s for `done`.
    ///
    /// # Panics
    /// If it never holds.
    pub fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "after 20 s, not yet: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A Redis Cluster of `n` masters without replicas on loopback, built with
/// `redis-cli --cluster create`: what `redis-cluster://` URLs name.
/// Every node stops on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// The nodes, each a master.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) nodes, joins them, and waits until every
    /// node says the cluster is ok.
    ///
    /// # Panics
    /// If the cluster does not form within 20 s.
    #[must_use]
    pub fn start(n: usize) -> Self {
        RedisCluster::start_with(n, None)
    }

    /// As [`RedisCluster::start`], every node also answering TLS with the
    /// certificate `tls` signed, the cluster bus over TLS too
    /// (`--tls-cluster yes`): TLS clients are told the nodes' TLS ports.
    ///
    /// # Panics
    /// As [`RedisCluster::start`].
    #[must_use]
    pub fn start_tls(n: usize, tls: &TlsFiles) -> Self {
        RedisCluster::start_with(n, Some(tls))
    }

    fn start_with(n: usize, tls: Option<&TlsFiles>) -> Self {
        let mut args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .map(str::to_owned)
        .to_vec();
        if tls.is_some() {
            args.extend(["--tls-cluster".to_owned(), "yes".to_owned()]);
        }
        // The bus port would otherwise be the port + 10000: above 55535 it
        // cannot be, and it may be another test's free port.
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                let mut node = args.clone();
                node.extend(["--cluster-port".to_owned(), free_port().to_string()]);
                RedisServer::start_with(&node, tls.is_some(), tls)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port.unwrap_or(n.port())))
            .collect();
        let ca = tls.map(|t| t.ca().display().to_string());
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        if let Some(ca) = &ca {
            args.extend(["--tls", "--cacert", ca]);
        }
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli runs (the README's test command installs it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cluster
            .nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the cluster is not ok after 20 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    /// `redis-cluster://127.0.0.1:<port>,…` naming every node.
    #[must_use]
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis-cluster://{}", nodes.join(","))
    }

    /// `rediss-cluster://127.0.0.1:<tls port>,…` naming every node.
    ///
    /// # Panics
    /// Unless the cluster was made by [`RedisCluster::start_tls`].
    #[must_use]
    pub fn tls_url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port()))
            .collect();
        format!("rediss-cluster://{}", nodes.join(","))
    }

    /// The hash slot of `key`.
    ///
    /// # Panics
    /// If the node does not answer.
    #[must_use]
    pub fn slot_of(&self, key: &str) -> u16 {
        let out = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        out.trim().parse().expect("a slot number")
    }

    /// The node serving `slot`.
    ///
    /// # Panics
    /// If no node claims it.
    #[must_use]
    pub fn owner_of(&self, slot: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| node_owns(n, slot))
            .expect("a node serving the slot")
    }

    /// Moves `slot` and its keys from the node that serves it to node `to`,
    /// the way `redis-cli --cluster reshard` does: importing and migrating
    /// marks, `MIGRATE` of every key, then the new owner told to every node.
    ///
    /// # Panics
    /// If a step fails.
    pub fn move_slot(&self, slot: u16, to: usize) {
        let from = self.owner_of(slot);
        assert_ne!(from, to, "the slot is already there");
        let id = |i: usize| self.nodes[i].cli(&["CLUSTER", "MYID"]).trim().to_owned();
        let (from_id, to_id) = (id(from), id(to));
        let slot_s = slot.to_string();
        let (src, dst) = (&self.nodes[from], &self.nodes[to]);
        let ok = |node: &RedisServer, args: &[&str]| {
            let out = node.cli(args);
            assert_eq!(out.trim(), "OK", "{args:?}");
        };
        ok(dst, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        ok(src, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        loop {
            let keys = src.cli(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            let keys: Vec<&str> = keys
                .lines()
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .collect();
            if keys.is_empty() {
                break;
            }
            // With the cluster bus over TLS, MIGRATE speaks TLS too.
            let port = dst.tls_port.unwrap_or(dst.port()).to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys);
            ok(src, &args);
        }
        for node in [dst, src] {
            ok(node, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if i != from && i != to {
                ok(node, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
            }
        }
    }
}

/// Whether `node`'s own `CLUSTER NODES` line lists `slot` among its ranges.
fn node_owns(node: &RedisServer, slot: u16) -> bool {
    let nodes = node.cli(&["CLUSTER", "NODES"]);
    let Some(me) = nodes.lines().find(|l| l.contains("myself")) else {
        return false;
    };
    me.split_whitespace().skip(8).any(|range| {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        match (lo.parse::<u16>(), hi.parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
            _ => false,
        }
    })
}

/// Runs `redis-cli -p port args…`, and answers its output.
///
/// # Panics
/// If `redis-cli` cannot run or fails.
#[must_use]
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli runs (the README's test command installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A certificate authority of a test's own and a server certificate it
/// signed for `127.0.0.1` and `localhost`, made with `openssl` in a
/// temporary directory.
#[derive(Debug)]
pub struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    /// Makes a new CA and a server certificate.
    ///
    /// # Panics
    /// If `openssl` is missing or fails (the README's test command installs it).
    #[must_use]
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .output()
                .expect("openssl runs (the README's test command installs it)");
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=bluegreen test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat());
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .expect("a certificate extension file");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TlsFiles { dir }
    }

    /// The CA certificate (PEM) a client trusts.
    #[must_use]
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The arguments that give `redis-server` (or a sentinel) this
    /// certificate, without asking clients for one.
    #[must_use]
    pub fn server_args(&self) -> Vec<String> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            "--tls-cert-file".into(),
            p("server.pem"),
            "--tls-key-file".into(),
            p("server.key"),
            "--tls-ca-cert-file".into(),
            p("ca.pem"),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// A minimal HTTP/1.1 client for tests: one request per connection, no
/// dependencies, bounded by a 10 s timeout.
pub mod http {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;

    /// An answer: status code, headers (lowercased names) and body.
    #[derive(Debug, Clone)]
    pub struct Answer {
        /// The status code.
        pub status: u16,
        /// Header lines as (lowercased name, value).
        pub headers: Vec<(String, String)>,
        /// The body as text.
        pub body: String,
    }

    /// Sends `method path` with `headers` and `body` to `addr`.
    ///
    /// # Errors
    /// If the connection fails or the answer is not HTTP.
    pub fn request(
        addr: SocketAddr,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Answer> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
        let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(bad)?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect::<Vec<_>>();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = s.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            s = rest[n..].trim_start_matches("\r\n");
        }
        out
    }

    /// `GET path`.
    ///
    /// # Errors
    /// As [`request`].
    pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
        request(addr, "GET", path, &[], "")
    }
}

/// A child process killed (and reaped) on drop, its output shown when a test fails.
#[derive(Debug)]
pub struct Process {
    child: std::process::Child,
    name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `cmd` with stdout and stderr going to a log file.
    ///
    /// # Panics
    /// If it cannot be started.
    #[must_use]
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let log = dir.path().join("out.log");
        let out = std::fs::File::create(&log).expect("a log file");
        let err = out.try_clone().expect("a log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Process {
            child,
            name: name.to_owned(),
            log,
            _dir: dir,
        }
    }

    /// What it printed so far.
    #[must_use]
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its process id.
    #[must_use]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Asks it to stop (SIGTERM), as a container runtime does, and waits up
    /// to `grace` for it to finish what it is doing; then kills it.
    pub fn stop_gracefully(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Drop kills what is left.
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            // The end is what explains a failure; a proxy's access log can
            // run to many thousands of lines before it.
            let out = self.output();
            let lines: Vec<&str> = out.lines().collect();
            let shown = lines.len().saturating_sub(PRINTED_LINES);
            eprintln!(
                "--- {} output{} ---\n{}\n--- end of output ---",
                self.name,
                if shown > 0 {
                    format!(", its last {PRINTED_LINES} lines")
                } else {
                    String::new()
                },
                lines[shown..].join("\n")
            );
        }
    }
}

/// How much of a process's output a failing test prints.
const PRINTED_LINES: usize = 300;

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
