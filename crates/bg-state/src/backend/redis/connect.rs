//! Where the store's connections come from: one node, the master a
//! Sentinel names (looked up again after a failure), or a Cluster; and
//! how their errors read (an untrusted certificate is a configuration
//! error, not an outage).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, RedisError, RetryMethod, TlsCertificates};
use tokio::sync::OnceCell;

use super::target::{Target, Topology};
use super::{Inner, RedisOptions, RedisStore};
use crate::error::{Error, Result};

/// Where connections come from.
pub(super) enum Connector {
    Single {
        client: Client,
        /// Made on first use, inside the caller's runtime (the manager spawns
        /// its reconnect task), so opening a store needs no runtime.
        conn: OnceCell<ConnectionManager>,
    },
    Sentinel {
        sentinel: tokio::sync::Mutex<SentinelClient>,
        /// The connection to the master last named, dropped on failure.
        master: tokio::sync::Mutex<Option<MultiplexedConnection>>,
        name: String,
    },
    Cluster {
        client: ClusterClient,
        conn: OnceCell<ClusterConnection>,
    },
}

/// One of the connection kinds, for commands and scripts alike.
#[derive(Clone)]
pub(super) enum AnyConn {
    Manager(ConnectionManager),
    Multiplexed(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for AnyConn {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            AnyConn::Manager(c) => c.req_packed_command(cmd),
            AnyConn::Multiplexed(c) => c.req_packed_command(cmd),
            AnyConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            AnyConn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Multiplexed(c) => c.req_packed_commands(pipeline, offset, count),
            AnyConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            AnyConn::Manager(c) => c.get_db(),
            AnyConn::Multiplexed(c) => c.get_db(),
            AnyConn::Cluster(c) => c.get_db(),
        }
    }
}

impl Connector {
    /// The connector for `target`; no connection is made yet.
    pub(super) fn new(
        target: &Target,
        opts: &RedisOptions,
        certs: Option<&TlsCertificates>,
        shown: &str,
    ) -> Result<Connector> {
        let unusable = |e: RedisError| {
            Error::invalid(
                "url",
                format!(
                    "{shown} is not a usable Redis URL: {}",
                    e.detail().unwrap_or("malformed")
                ),
            )
        };
        Ok(match &target.topology {
            Topology::Single => {
                let url = target.node_url(&target.nodes[0], true);
                let client = match certs.cloned() {
                    Some(c) => Client::build_with_tls(url, c),
                    None => Client::open(url),
                }
                .map_err(unusable)?;
                Connector::Single {
                    client,
                    conn: OnceCell::new(),
                }
            }
            Topology::Sentinel { master } => {
                let certs = certs.cloned();
                let tls_mode = target.tls.then_some(redis::TlsMode::Secure);
                let addrs = target.nodes.iter().map(|(host, port)| {
                    if target.tls {
                        redis::ConnectionAddr::TcpTls {
                            host: host.clone(),
                            port: *port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        redis::ConnectionAddr::Tcp(host.clone(), *port)
                    }
                });
                let mut b = SentinelClientBuilder::new(addrs, master, SentinelServerType::Master)
                    .map_err(unusable)?
                    .set_client_to_redis_db(target.db);
                if let Some(mode) = tls_mode {
                    b = b
                        .set_client_to_redis_tls_mode(mode)
                        .set_client_to_sentinel_tls_mode(mode);
                }
                if let Some(c) = certs {
                    b = b
                        .set_client_to_redis_certificates(c.clone())
                        .set_client_to_sentinel_certificates(c);
                }
                if let Some(u) = &target.username {
                    b = b.set_client_to_redis_username(u);
                }
                if let Some(p) = &target.password {
                    b = b.set_client_to_redis_password(p);
                }
                Connector::Sentinel {
                    sentinel: tokio::sync::Mutex::new(b.build().map_err(unusable)?),
                    master: tokio::sync::Mutex::new(None),
                    name: master.clone(),
                }
            }
            Topology::Cluster => Connector::Cluster {
                client: cluster_builder(target, opts, certs)
                    .build()
                    .map_err(unusable)?,
                conn: OnceCell::new(),
            },
        })
    }
}

/// A certificate the client cannot trust, found anywhere in the error's
/// chain of causes: a configuration error, which no retry mends.
fn certificate_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(tls) = c.downcast_ref::<rustls::Error>() {
            if let rustls::Error::InvalidCertificate(why) = tls {
                return Some(format!("{why:?}"));
            }
            return None;
        }
        // redis-rs keeps causes behind an `Arc`, and an I/O error hides the
        // error it carries from `source`: look inside both.
        if let Some(shared) = c.downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()
            && let Some(found) = certificate_failure(shared.as_ref())
        {
            return Some(found);
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = certificate_failure(inner)
        {
            return Some(found);
        }
        cause = c.source();
    }
    None
}

impl Inner {
    pub(super) fn unavailable(&self, e: &RedisError) -> Error {
        if let Some(why) = certificate_failure(e) {
            return Error::invalid(
                "tls",
                format!(
                    "the certificate of the Redis server at {} is not trusted ({why}); \
                     name the CA that signed it with ?ca=FILE on the URL or BG_REDIS_CA",
                    self.shown
                ),
            );
        }
        let retryable = outcome_unknown(e)
            || (!matches!(e.retry_method(), RetryMethod::NoRetry)
                && e.kind() != redis::ErrorKind::AuthenticationFailed);
        let message = match (e.code(), e.detail()) {
            (Some(code), Some(detail)) => format!("{code} {detail}"),
            _ => e.to_string(),
        };
        Error::Unavailable {
            backend: "redis",
            message,
            retryable,
        }
    }
}

/// Failures after which a write may or may not have been made, or kept:
/// the connection went (the script may have run), the server was demoted
/// (READONLY, or a `WAIT` answered by a replica), or it refuses writes for
/// now (NOREPLICAS, MISCONF, BUSY with another script, LOADING, a cluster
/// moving). A retry by request id, on the master looked up again, is how
/// to know; none of them means the request was wrong.
pub(super) fn outcome_unknown(e: &RedisError) -> bool {
    let demoted_wait = e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("WAIT cannot be used with replica"));
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || demoted_wait
        || matches!(
            e.code(),
            Some(
                "READONLY"
                    | "NOREPLICAS"
                    | "MISCONF"
                    | "BUSY"
                    | "LOADING"
                    | "MASTERDOWN"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
            )
        )
}

pub(super) fn timed_out(after: Duration) -> Error {
    Error::Unavailable {
        backend: "redis",
        message: format!("no answer within {after:?}"),
        retryable: true,
    }
}

fn cluster_builder(
    target: &Target,
    opts: &RedisOptions,
    certs: Option<&TlsCertificates>,
) -> ClusterClientBuilder {
    let nodes: Vec<String> = target
        .nodes
        .iter()
        .map(|n| target.node_url(n, false))
        .collect();
    let mut b = ClusterClientBuilder::new(nodes)
        .connection_timeout(opts.connect_timeout)
        .response_timeout(opts.response_timeout)
        .retries(2);
    if target.tls {
        b = b.tls(redis::TlsMode::Secure);
    }
    if let Some(c) = certs {
        b = b.certs(c.clone());
    }
    if let Some(u) = &target.username {
        b = b.username(u);
    }
    if let Some(p) = &target.password {
        b = b.password(p);
    }
    b
}

/// The PEM of the CA, checked to hold at least one certificate.
pub(super) fn read_ca(path: &std::path::Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| {
        Error::invalid(
            "ca",
            format!("cannot read the CA file {}: {e}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(Error::invalid(
            "ca",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

impl RedisStore {
    pub(super) async fn conn(&self) -> Result<AnyConn> {
        let inner = &self.inner;
        let deadline = self.deadline();
        match &inner.conn {
            Connector::Single { client, conn } => conn
                .get_or_try_init(|| async {
                    let config = redis::aio::ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(inner.opts.connect_timeout))
                        .set_response_timeout(Some(inner.opts.response_timeout))
                        .set_number_of_retries(1)
                        .set_max_delay(inner.opts.connect_timeout);
                    ConnectionManager::new_lazy_with_config(client.clone(), config)
                        .map_err(|e| inner.unavailable(&e))
                })
                .await
                .cloned()
                .map(AnyConn::Manager),
            Connector::Sentinel {
                sentinel, master, ..
            } => {
                let mut current = master.lock().await;
                if let Some(c) = &*current {
                    return Ok(AnyConn::Multiplexed(c.clone()));
                }
                let found = tokio::time::timeout(deadline, async {
                    let client = sentinel.lock().await.async_get_client().await?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(inner.opts.connect_timeout))
                        .set_response_timeout(Some(inner.opts.response_timeout));
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                })
                .await;
                match found {
                    Ok(Ok(c)) => {
                        *current = Some(c.clone());
                        Ok(AnyConn::Multiplexed(c))
                    }
                    Ok(Err(e)) => Err(inner.unavailable(&e)),
                    Err(_) => Err(timed_out(deadline)),
                }
            }
            Connector::Cluster { client, conn, .. } => {
                let made = tokio::time::timeout(
                    deadline,
                    conn.get_or_try_init(|| async {
                        client
                            .get_async_connection()
                            .await
                            .map_err(|e| inner.unavailable(&e))
                    }),
                )
                .await;
                match made {
                    Ok(r) => r.cloned().map(AnyConn::Cluster),
                    Err(_) => Err(timed_out(deadline)),
                }
            }
        }
    }

    /// A builder of clients for the Cluster the URL names.
    pub(super) fn cluster_builder(&self) -> ClusterClientBuilder {
        cluster_builder(
            &self.inner.target,
            &self.inner.opts,
            self.inner.certs.as_ref(),
        )
    }

    /// Forgets the Sentinel master's connection, so the next call looks the
    /// master up again.
    pub(super) async fn forget_master(&self) {
        if let Connector::Sentinel { master, .. } = &self.inner.conn {
            master.lock().await.take();
        }
    }
}
