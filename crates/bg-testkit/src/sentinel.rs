//! A master, its replica and a sentinel: what `redis-sentinel://` URLs name.

use std::time::{Duration, Instant};

use crate::{RedisServer, TlsFiles};

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
