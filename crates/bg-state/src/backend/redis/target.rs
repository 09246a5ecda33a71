//! What a Redis store URL names: one node, a Sentinel-managed master or a
//! Cluster, with TLS or not, and bluegreen's own settings (`ca`,
//! `min_replicas`).
//!
//! redis-rs parses single-node URLs only, and would take a `#insecure`
//! fragment as leave to skip certificate checks; so every form is parsed
//! here, checked, and turned into what redis-rs needs.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// How the servers are arranged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server.
    Single,
    /// Sentinels that name the master of `master`.
    Sentinel { master: String },
    /// A Redis Cluster, found through any of its nodes.
    Cluster,
}

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub topology: Topology,
    pub tls: bool,
    /// The nodes named: the server, the sentinels, or the cluster seeds.
    pub nodes: Vec<(String, u16)>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: i64,
    /// `?ca=FILE`: the CA that signed the servers' certificates.
    pub ca: Option<PathBuf>,
    /// `?min_replicas=N`.
    pub min_replicas: Option<u32>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("nodes", &self.nodes)
            .field("db", &self.db)
            .field("ca", &self.ca)
            .field("min_replicas", &self.min_replicas)
            .finish_non_exhaustive()
    }
}

/// The URL forms, for messages.
pub(crate) const FORMS: &str = "redis://[:PASSWORD@]HOST[:PORT][/DB], \
    redis-sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB] or \
    redis-cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT…] (rediss… for TLS), \
    with ?ca=FILE and ?min_replicas=N";

impl Target {
    /// Parses `url`; `shown` is the same URL without its password, for messages.
    pub(crate) fn parse(url: &str, shown: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("url", format!("{shown}: {why}"));
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(bad(&format!("not a Redis URL; expected {FORMS}")));
        };
        let (topology_kind, tls) = match scheme.to_ascii_lowercase().as_str() {
            "redis" => ("single", false),
            "rediss" => ("single", true),
            "redis-sentinel" => ("sentinel", false),
            "rediss-sentinel" => ("sentinel", true),
            "redis-cluster" => ("cluster", false),
            "rediss-cluster" => ("cluster", true),
            _ => return Err(bad(&format!("unknown scheme; expected {FORMS}"))),
        };
        // The user part ends at the last `@`: a password may hold a raw
        // `/`, `?` or `#`, which must not be read as a path, a query or a
        // fragment (nor quoted back as a host).
        let (userinfo, rest) = match rest.rsplit_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, rest),
        };
        if rest.contains('#') {
            return Err(bad(
                "a URL fragment (such as #insecure) is not accepted: certificates are always \
                 verified; name the CA with ?ca=FILE or BG_REDIS_CA",
            ));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                let user = Some(decode(user).ok_or_else(|| bad("the user name is garbled"))?)
                    .filter(|u| !u.is_empty());
                let pass = match pass {
                    Some(p) => Some(decode(p).ok_or_else(|| bad("the password is garbled"))?),
                    None => None,
                };
                (user, pass)
            }
        };
        let default_port = if topology_kind == "sentinel" {
            26379
        } else {
            6379
        };
        let mut nodes = Vec::new();
        for node in hosts.split(',') {
            nodes.push(parse_node(node, default_port).map_err(|why| bad(&why))?);
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let parse_db = |s: &str| {
            s.parse::<i64>()
                .ok()
                .filter(|d| (0..=65535).contains(d))
                .ok_or_else(|| bad(&format!("{s:?} is not a database number")))
        };
        let (topology, db) = match topology_kind {
            "single" => {
                if nodes.len() > 1 {
                    return Err(bad(
                        "names several hosts; use redis-sentinel:// or redis-cluster:// for those",
                    ));
                }
                match segments.as_slice() {
                    [] => (Topology::Single, 0),
                    [db] => (Topology::Single, parse_db(db)?),
                    _ => return Err(bad("the path is /DB")),
                }
            }
            "sentinel" => match segments.as_slice() {
                [master] => (
                    Topology::Sentinel {
                        master: (*master).to_owned(),
                    },
                    0,
                ),
                [master, db] => (
                    Topology::Sentinel {
                        master: (*master).to_owned(),
                    },
                    parse_db(db)?,
                ),
                _ => {
                    return Err(bad(
                        "name the master: redis-sentinel://HOST:PORT/MASTER_NAME",
                    ));
                }
            },
            _ => {
                if !segments.is_empty() {
                    return Err(bad(
                        "a Redis Cluster has no databases; the URL takes no path",
                    ));
                }
                (Topology::Cluster, 0)
            }
        };
        let mut target = Target {
            topology,
            tls,
            nodes,
            username,
            password,
            db,
            ca: None,
            min_replicas: None,
        };
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value).ok_or_else(|| bad(&format!("{key} is garbled")))?;
            match key {
                "ca" if !value.is_empty() => target.ca = Some(PathBuf::from(value)),
                "ca" => return Err(bad("?ca= names no file")),
                "min_replicas" => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 100)
                        .ok_or_else(|| {
                            bad(&format!(
                                "min_replicas={value:?} is not a number of replicas (0 to 100)"
                            ))
                        })?;
                    target.min_replicas = Some(n);
                }
                other => {
                    return Err(bad(&format!(
                        "unknown setting {:?}; the settings are ca and min_replicas",
                        crate::text::shorten(other)
                    )));
                }
            }
        }
        if target.ca.is_some() && !target.tls {
            return Err(bad("?ca= needs TLS: use the rediss… form of the URL"));
        }
        if matches!(target.topology, Topology::Cluster) && target.min_replicas.unwrap_or(0) > 0 {
            // The Cluster client sends WAIT to every master and takes the
            // least answer: it would count other slots' replicas, not the
            // app's. Refused rather than half kept.
            return Err(bad(
                "min_replicas is not supported on a Cluster (WAIT there would count every \
                 master's replicas, not those of the app's slot); use Sentinel for acknowledged \
                 switches that survive a failover",
            ));
        }
        Ok(target)
    }

    /// The replicas a write waits for unless the URL says otherwise: one
    /// under Sentinel (the replica a failover promotes), none elsewhere.
    pub(crate) fn min_replicas(&self) -> u32 {
        self.min_replicas.unwrap_or(match self.topology {
            Topology::Sentinel { .. } => 1,
            Topology::Single | Topology::Cluster => 0,
        })
    }

    /// A URL redis-rs parses for node `i`, with the credentials when
    /// `with_auth` (the user and password are re-encoded).
    pub(crate) fn node_url(&self, (host, port): &(String, u16), with_auth: bool) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let auth = match (&self.username, &self.password) {
            (_, _) if !with_auth => String::new(),
            (None, None) => String::new(),
            (u, Some(p)) => format!(
                "{}:{}@",
                encode(u.as_deref().unwrap_or_default()),
                encode(p)
            ),
            (Some(u), None) => format!("{}@", encode(u)),
        };
        format!("{scheme}://{auth}{host}:{port}/{}", self.db)
    }
}

fn parse_node(node: &str, default_port: u16) -> std::result::Result<(String, u16), String> {
    let (host, port) = if let Some(v6) = node.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{node:?} is not a host"))?;
        (host, after.strip_prefix(':'))
    } else {
        match node.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (node, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err(format!("{:?} is not a host", crate::text::shorten(node)));
    }
    if matches!(host, "0.0.0.0" | "::") {
        return Err(format!("cannot connect to the wildcard address {host}"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{:?} is not a port", crate::text::shorten(p)))?,
    };
    Ok((host.to_owned(), port))
}

/// Percent-decoding; `None` for a broken escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Target> {
        Target::parse(url, &crate::text::redact_url(url))
    }

    fn refusal(url: &str) -> String {
        let e = parse(url).expect_err(url).to_string();
        assert!(!e.contains("hunter2"), "{e}");
        e
    }

    #[test]
    fn a_password_may_hold_a_slash_a_question_mark_or_a_hash() {
        for pass in ["hun/ter2", "hun?ter2", "hun#ter2"] {
            let t = parse(&format!("redis://:{pass}@127.0.0.1:7000/3")).unwrap();
            assert_eq!(t.password.as_deref(), Some(pass));
            assert_eq!(t.nodes, [("127.0.0.1".to_owned(), 7000)]);
            assert_eq!(t.db, 3);
        }
        // A bad URL with such a password: the error shows no part of it.
        for url in [
            "redis://:hun/ter2@",
            "redis://:hun?ter2@h:x",
            "redis://:hun#ter2@h/zz",
        ] {
            let e = parse(url).unwrap_err().to_string();
            assert!(!e.contains("hun") && !e.contains("ter2"), "{url}: {e}");
        }
    }

    #[test]
    fn single_node() {
        let t = parse("redis://:hunter2@127.0.0.1:7000/3").unwrap();
        assert_eq!(t.topology, Topology::Single);
        assert_eq!(t.nodes, [("127.0.0.1".to_owned(), 7000)]);
        assert_eq!(t.db, 3);
        assert_eq!(t.password.as_deref(), Some("hunter2"));
        assert_eq!(t.min_replicas(), 0);
        assert_eq!(
            t.node_url(&t.nodes[0], true),
            "redis://:hunter2@127.0.0.1:7000/3"
        );
        let t = parse("rediss://redis.internal?ca=/etc/ca.pem&min_replicas=2").unwrap();
        assert!(t.tls);
        assert_eq!(t.nodes, [("redis.internal".to_owned(), 6379)]);
        assert_eq!(t.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.min_replicas(), 2);
    }

    #[test]
    fn sentinel_and_cluster() {
        let t = parse("redis-sentinel://:p%40ss@s1:26379,s2,[::1]:26380/mymaster/2").unwrap();
        assert_eq!(
            t.topology,
            Topology::Sentinel {
                master: "mymaster".into()
            }
        );
        assert_eq!(
            t.nodes,
            [
                ("s1".to_owned(), 26379),
                ("s2".to_owned(), 26379),
                ("::1".to_owned(), 26380)
            ]
        );
        assert_eq!(t.password.as_deref(), Some("p@ss"));
        assert_eq!(t.db, 2);
        assert_eq!(t.min_replicas(), 1);
        assert_eq!(
            t.node_url(&t.nodes[2], true),
            "redis://:p%40ss@[::1]:26380/2"
        );
        let t = parse("rediss-cluster://a:7000,b:7001").unwrap();
        assert_eq!(t.topology, Topology::Cluster);
        assert!(t.tls);
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.min_replicas(), 0);
        let e = parse("rediss-cluster://a:7000,b:7001?min_replicas=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not supported on a Cluster"), "{e}");
    }

    #[test]
    fn refuses_clearly() {
        assert!(refusal("rediss://:hunter2@h/#insecure").contains("always verified"));
        assert!(refusal("redis://:hunter2@a:1,b:2").contains("redis-sentinel://"));
        assert!(refusal("redis-sentinel://:hunter2@a:1").contains("name the master"));
        assert!(refusal("redis-cluster://a:1/0").contains("no databases"));
        assert!(refusal("redis://h/0?ca=/x.pem").contains("needs TLS"));
        assert!(refusal("redis://h/0?min_replicas=x").contains("min_replicas"));
        assert!(refusal("redis://h/0?foo=1").contains("unknown setting"));
        assert!(refusal("redis://h:99999/0").contains("not a port"));
        assert!(refusal("redis://h/x").contains("database number"));
        assert!(refusal("redis://0.0.0.0/0").contains("wildcard"));
        assert!(refusal("redis:///0").contains("not a host"));
    }
}
