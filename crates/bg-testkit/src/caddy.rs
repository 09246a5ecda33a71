//! A real Caddy running the project's example configuration
//! (`docs/examples/Caddyfile`) with the test's addresses and ports put in.
//!
//! It never meets a system Caddy (Debian's package runs one on port 80,
//! admin on `localhost:2019`): its site and admin endpoint listen on free
//! loopback ports, and its configuration and data directories
//! (`XDG_CONFIG_HOME`, `XDG_DATA_HOME`) are in a temporary directory of its
//! own.
//!
//! ```no_run
//! use bg_testkit::caddy::{Caddy, Config};
//!
//! let blue = "127.0.0.11:8080".parse().unwrap();
//! let green = "127.0.0.12:8080".parse().unwrap();
//! let mut config = Config::example();
//! config.upstreams(&[blue], &[green]).health_interval("200ms");
//! let caddy = Caddy::start(config);
//! println!("proxying on {}", caddy.addr());
//! ```

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::{Process, examples, free_port, substitute, wait_for_port};

const FILE: &str = "Caddyfile";

/// The example's upstreams: blue's host, then green's.
const UPSTREAMS: &str = "reverse_proxy 10.0.0.11:8080 10.0.0.12:8080 {";

/// `docs/examples/Caddyfile`, being given the test's addresses.
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
        let text = std::fs::read_to_string(examples().join(FILE)).expect("the example Caddyfile");
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

    /// `blue`'s and `green`'s instances as the upstreams, in place of the
    /// example's one host per colour.
    ///
    /// # Panics
    /// If the example's upstreams changed.
    pub fn upstreams(&mut self, blue: &[SocketAddr], green: &[SocketAddr]) -> &mut Config {
        let all: Vec<String> = blue.iter().chain(green).map(ToString::to_string).collect();
        self.substitute(UPSTREAMS, &format!("reverse_proxy {} {{", all.join(" ")), 1)
    }

    /// Checks every `interval` (`200ms`, say) instead of the example's 2 s.
    ///
    /// # Panics
    /// If the example's interval changed.
    pub fn health_interval(&mut self, interval: &str) -> &mut Config {
        self.substitute(
            "health_interval 2s\n",
            &format!("health_interval {interval}\n"),
            1,
        )
    }
}

/// This test's own Caddy (`caddy run`), in the foreground; killed on drop,
/// its output printed if the test failed.
#[derive(Debug)]
pub struct Caddy {
    _process: Process,
    addr: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Caddy {
    /// Starts Caddy with `config`, its site on a free port bound to
    /// loopback only (the example's `:8000`, which is every address) and its
    /// admin endpoint on another, and waits until it listens.
    ///
    /// # Panics
    /// If Caddy is not installed (the README's test command installs it),
    /// rejects the configuration or does not listen within 10 s.
    #[must_use]
    pub fn start(mut config: Config) -> Caddy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        config.substitute(
            "\n:8000 {\n",
            &format!("\n:{} {{\n\tbind {}\n", addr.port(), addr.ip()),
            1,
        );
        config.substitute("admin localhost:2019\n", &format!("admin {admin}\n"), 1);
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join(FILE);
        std::fs::write(&path, &config.text).expect("write the Caddyfile");
        let mut cmd = Command::new("caddy");
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .args(["--adapter", "caddyfile"])
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .env("HOME", dir.path());
        let process = Process::spawn("caddy", cmd);
        wait_for_port(addr, Duration::from_secs(10));
        Caddy {
            _process: process,
            addr,
            admin,
            _dir: dir,
        }
    }

    /// Where its site listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where its admin endpoint listens (`caddy reload --address`).
    #[must_use]
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }
}
