//! A `redis-server` of a test's own, and `redis-cli` against it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{TlsFiles, free_port};

/// A `redis-server` of this test's own.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Arguments beyond the defaults (TLS, replication, cluster mode).
    extra: Vec<String>,
    pub(crate) tls_port: Option<u16>,
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

    pub(crate) fn start_with(extra: &[String], tls: bool, files: Option<&TlsFiles>) -> Self {
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

    pub(crate) fn start_sentinel_with(
        name: &str,
        master_port: u16,
        tls: Option<&TlsFiles>,
    ) -> Self {
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
