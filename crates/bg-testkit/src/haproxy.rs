//! A real HAProxy running the project's example configuration
//! (`docs/examples/haproxy.cfg`) with the test's addresses and ports put in,
//! and its servers' states read from the example's stats socket.
//!
//! ```no_run
//! use bg_testkit::haproxy::{Config, Haproxy};
//!
//! let blue = "127.0.0.11:8080".parse().unwrap();
//! let green = "127.0.0.12:8080".parse().unwrap();
//! let mut config = Config::example();
//! config.servers("blue", &[("blue".to_owned(), blue)]);
//! config.servers("green", &[("green".to_owned(), green)]);
//! let haproxy = Haproxy::start(config);
//! haproxy.stats().wait_for("chat", "green", std::time::Duration::from_secs(10), |s| {
//!     s.starts_with("DOWN")
//! });
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::{Process, examples, free_port, substitute, wait_for_port};

const FILE: &str = "haproxy.cfg";

/// The example's servers: the colour's name and host in each backend.
const SERVERS: [(&str, &str); 2] = [("blue", "10.0.0.11:8080"), ("green", "10.0.0.12:8080")];

/// How many backends the example holds, one per way of reading the gates.
const BACKENDS: usize = 4;

/// `docs/examples/haproxy.cfg`, being given the test's addresses.
#[derive(Debug, Clone)]
pub struct Config {
    text: String,
}

impl Config {
    /// The example as it is.
    ///
    /// # Panics
    /// If it cannot be read.
    #[must_use]
    pub fn example() -> Config {
        let text = std::fs::read_to_string(examples().join(FILE)).expect("the example haproxy.cfg");
        Config { text }
    }

    /// Replaces the `n` occurrences of `from` with `to`.
    ///
    /// # Panics
    /// If the example holds `from` a different number of times.
    pub fn substitute(&mut self, from: &str, to: &str, n: usize) -> &mut Config {
        substitute(&mut self.text, FILE, from, to, n);
        self
    }

    /// `servers` (name and address) in every backend, in place of the
    /// example's one server of `colour` (`blue` or `green`): several
    /// instances of a colour are a line each, as the example advises.
    ///
    /// # Panics
    /// If `colour` is neither, or the example's server lines changed.
    pub fn servers(&mut self, colour: &str, servers: &[(String, SocketAddr)]) -> &mut Config {
        let (_, host) = SERVERS
            .iter()
            .find(|(c, _)| *c == colour)
            .unwrap_or_else(|| panic!("no colour {colour:?} in the example"));
        let lines: String = servers
            .iter()
            .map(|(name, addr)| format!("    server {name} {addr} check\n"))
            .collect();
        self.substitute(
            &format!("    server {colour} {host} check\n"),
            &lines,
            BACKENDS,
        )
    }

    /// Makes `backend` the one in use, as the example says to: enabled,
    /// `default_backend`, and `backend chat` disabled in its place.
    ///
    /// # Panics
    /// If `backend` is not one of the example's disabled backends.
    pub fn use_backend(&mut self, backend: &str) -> &mut Config {
        self.substitute(
            "default_backend chat\n",
            &format!("default_backend {backend}\n"),
            1,
        );
        self.substitute(
            &format!(
                "backend {backend}\n    # Not in use. To use it: delete the next line, add it to backend chat,\n    \
                 # and point default_backend at this one.\n    disabled\n"
            ),
            &format!("backend {backend}\n"),
            1,
        );
        self.substitute("backend chat\n", "backend chat\n    disabled\n", 1)
    }

    /// Checks (`inter`, `agent-inter`) every `interval` (`200ms`, say)
    /// instead of the example's 2 s and 1 s.
    ///
    /// # Panics
    /// If the example's intervals changed.
    pub fn check_interval(&mut self, interval: &str) -> &mut Config {
        self.substitute("agent-inter 1s", &format!("agent-inter {interval}"), 1);
        self.substitute("inter 2s", &format!("inter {interval}"), BACKENDS)
    }
}

/// This test's own HAProxy, in the foreground; killed on drop, its output
/// printed if the test failed.
#[derive(Debug)]
pub struct Haproxy {
    _process: Process,
    addr: SocketAddr,
    stats: Stats,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy with `config`, its frontend on a free loopback port
    /// (the example's `bind :8000`) and its stats socket on another, and
    /// waits until it listens.
    ///
    /// # Panics
    /// If HAProxy is not installed (the README's test command installs it),
    /// rejects the configuration or does not listen within 10 s.
    #[must_use]
    pub fn start(mut config: Config) -> Haproxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stats = SocketAddr::from(([127, 0, 0, 1], free_port()));
        config.substitute("bind :8000", &format!("bind {addr}"), 1);
        config.substitute("ipv4@127.0.0.1:9999", &format!("ipv4@{stats}"), 1);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(FILE);
        std::fs::write(&path, &config.text).expect("write haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db").arg("-f").arg(&path);
        let process = Process::spawn("haproxy", cmd);
        wait_for_port(addr, Duration::from_secs(10));
        Haproxy {
            _process: process,
            addr,
            stats: Stats(stats),
            _dir: dir,
        }
    }

    /// Where its frontend listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its stats socket.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }
}

/// HAProxy's stats socket (the example's `stats socket`), where the
/// servers' states are read.
#[derive(Debug, Clone, Copy)]
pub struct Stats(SocketAddr);

impl Stats {
    /// A server's status in `show stat` (`UP`, `DOWN`, `NOLB`, `DRAIN`, `UP
    /// 1/3` while going down, …), or `None` if the socket does not answer
    /// or has no such server.
    #[must_use]
    pub fn status(self, backend: &str, server: &str) -> Option<String> {
        let mut s = TcpStream::connect_timeout(&self.0, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut csv = String::new();
        s.read_to_string(&mut csv).ok()?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = header.iter().position(|h| *h == "status")?;
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.first() == Some(&backend) && f.get(1) == Some(&server))
            .and_then(|f| f.get(col).map(|s| (*s).to_owned()))
    }

    /// Waits up to `limit` for `server`'s status in `backend` to satisfy
    /// `done`, blocking the thread (from async code, call it on
    /// `spawn_blocking`).
    ///
    /// # Panics
    /// If it does not.
    pub fn wait_for(
        self,
        backend: &str,
        server: &str,
        limit: Duration,
        done: impl Fn(&str) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(backend, server);
            if status.as_deref().is_some_and(&done) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy's {backend}/{server} is still {status:?} after {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
