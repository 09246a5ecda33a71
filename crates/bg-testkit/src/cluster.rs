//! A Redis Cluster on loopback: what `redis-cluster://` URLs name.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{RedisServer, TlsFiles, free_port};

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
