//! The Redis store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{Client, RedisError, RetryMethod, Script, TlsCertificates};
use tokio::sync::{OnceCell, mpsc};

use crate::engine::ms;
use crate::error::{Error, Result};
use crate::model::{AppName, Change, Colour, Event, Lease, Presence, State};
use crate::store::{
    BreakLease, ColourStore, DEFAULT_HISTORY_CAP, DeployRecord, InitRequest, LeaseRequest,
    Subscription, SwitchOutcome, SwitchRequest,
};

mod mirror;
mod reply;
mod target;

pub use mirror::LegacyMirror;
use reply::{Reply, parse_lease, parse_state};
use target::{Target, Topology};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store.lua")));

/// How a [`RedisStore`] connects and what it keeps.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for one reply. Every call fails with a retryable
    /// [`Error::Unavailable`] within `connect_timeout + response_timeout`
    /// (a switch or init that waits for replicas, see `min_replicas` in
    /// [`RedisStore::open`], within that plus `replica_timeout`).
    pub response_timeout: Duration,
    /// Bound on waiting for replicas to confirm a switch or init.
    pub replica_timeout: Duration,
    /// Events kept per app in the history stream.
    pub history_cap: usize,
    /// Also keep the hand-made design's per-colour keys, see [`LegacyMirror`].
    pub mirror: Option<LegacyMirror>,
    /// The CA certificate file (PEM) that signed the servers' certificates,
    /// for TLS URLs whose `?ca=FILE` names none (the binaries take it from
    /// `BG_REDIS_CA`). Without either, the system's trusted roots are used.
    pub ca_file: Option<PathBuf>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            replica_timeout: Duration::from_secs(1),
            history_cap: DEFAULT_HISTORY_CAP,
            mirror: None,
            ca_file: None,
        }
    }
}

/// State in Redis, shared by every gate and pipeline.
///
/// Layout per app, all keys sharing the hash tag `{app}` so they live in one
/// Cluster slot: `bg:{app}:state` (a hash: the state, the lease, the fence
/// counter), `bg:{app}:history` (a stream capped at the history cap),
/// `bg:{app}:gates` (a hash of gate presences), and the pub/sub channel
/// `bg:{app}:changes`. Every change is one Lua script: the scripts check
/// everything before they write, and `WATCH` is never used, because it is
/// per connection and unsafe on a multiplexed one. Times come from the Redis
/// server's clock.
///
/// The connection is made lazily and re-made after a failure; a call that
/// meets a broken or paused server fails within the configured timeouts with
/// a retryable [`Error::Unavailable`]. Under Sentinel the master is looked up
/// again after a connection failure, a `READONLY` answer (a demoted master)
/// or a `+switch-master` event.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    target: Target,
    /// The CA to verify servers against, when one is named.
    certs: Option<TlsCertificates>,
    conn: Connector,
    opts: RedisOptions,
    /// The URL with any password removed, for messages.
    shown: String,
}

/// Where connections come from.
enum Connector {
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
enum AnyConn {
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

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown)
            .finish_non_exhaustive()
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
    fn unavailable(&self, e: &RedisError) -> Error {
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
        let retryable = !matches!(e.retry_method(), RetryMethod::NoRetry)
            && e.kind() != redis::ErrorKind::AuthenticationFailed;
        Error::Unavailable {
            backend: "redis",
            message: e.to_string(),
            retryable,
        }
    }
}

fn timed_out(after: Duration) -> Error {
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
fn read_ca(path: &std::path::Path) -> Result<Vec<u8>> {
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
    /// A store on the Redis the URL names, with default options. No
    /// connection is made until the first call.
    ///
    /// * `redis://[:PASSWORD@]HOST[:PORT][/DB]`: one server.
    /// * `redis-sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB]`:
    ///   the master the sentinels name, looked up again after a failover;
    ///   the password is the master's.
    /// * `redis-cluster://[:PASSWORD@]HOST:PORT[,HOST:PORT…]`: a Redis
    ///   Cluster found through any of the nodes named.
    /// * `rediss://`, `rediss-sentinel://`, `rediss-cluster://`: the same
    ///   over TLS. Certificates are always verified, against `?ca=FILE` (or
    ///   [`RedisOptions::ca_file`]) when set, else the system's roots; a
    ///   certificate that fails is [`Error::InvalidInput`], not a retryable
    ///   outage.
    /// * `?min_replicas=N`: a switch or init succeeds only once `WAIT`
    ///   confirmed N replicas hold it (default 1 under Sentinel, 0
    ///   otherwise); if they do not within [`RedisOptions::replica_timeout`],
    ///   the caller gets a retryable [`Error::Unavailable`]: the outcome is
    ///   unknown, and a retry with the same request id is safe.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a URL Redis cannot use, or a CA file
    /// that cannot be read.
    pub fn open(url: &str) -> Result<Self> {
        RedisStore::with_options(url, RedisOptions::default())
    }

    /// As [`RedisStore::open`], with options.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub fn with_options(url: &str, opts: RedisOptions) -> Result<Self> {
        let shown = crate::text::redact_url(url);
        let mut target = Target::parse(url, &shown)?;
        if target.tls {
            // rustls needs a process-wide crypto provider; ring builds quickly
            // and needs no C toolchain beyond cc. Another one installed first wins.
            let _ = rustls::crypto::ring::default_provider().install_default();
            if target.ca.is_none() {
                target.ca.clone_from(&opts.ca_file);
            }
        }
        if opts.mirror.is_some() && target.topology == Topology::Cluster {
            return Err(Error::invalid(
                "mirror",
                "the legacy mirror cannot run on a Redis Cluster: the hand-made design's \
                 lb-status keys cannot share the app's hash slot; use one node or Sentinel",
            ));
        }
        let certs = match &target.ca {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca(path)?),
            }),
            None => None,
        };
        let unusable = |e: RedisError| {
            Error::invalid(
                "url",
                format!(
                    "{shown} is not a usable Redis URL: {}",
                    e.detail().unwrap_or("malformed")
                ),
            )
        };
        let conn = match &target.topology {
            Topology::Single => {
                let url = target.node_url(&target.nodes[0], true);
                let client = match certs.clone() {
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
                let certs = certs.clone();
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
                client: cluster_builder(&target, &opts, certs.as_ref())
                    .build()
                    .map_err(unusable)?,
                conn: OnceCell::new(),
            },
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                target,
                certs,
                conn,
                opts: RedisOptions {
                    history_cap: opts.history_cap.max(1),
                    ..opts
                },
                shown,
            }),
        })
    }

    async fn conn(&self) -> Result<AnyConn> {
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
    fn cluster_builder(&self) -> ClusterClientBuilder {
        cluster_builder(
            &self.inner.target,
            &self.inner.opts,
            self.inner.certs.as_ref(),
        )
    }

    /// Forgets the Sentinel master's connection, so the next call looks the
    /// master up again.
    async fn forget_master(&self) {
        if let Connector::Sentinel { master, .. } = &self.inner.conn {
            master.lock().await.take();
        }
    }

    fn deadline(&self) -> Duration {
        self.inner.opts.connect_timeout + self.inner.opts.response_timeout
    }

    /// Runs a command under the overall deadline.
    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        self.bounded_by(self.deadline(), fut).await
    }

    async fn bounded_by<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                let moved = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if moved {
                    self.forget_master().await;
                }
                Err(self.inner.unavailable(&e))
            }
            Err(_) => {
                self.forget_master().await;
                Err(timed_out(limit))
            }
        }
    }

    /// Waits until `min_replicas` replicas hold every write made so far on
    /// this connection: an acknowledged switch or init survives a failover.
    async fn confirm_replicas(&self, conn: &mut AnyConn) -> Result<()> {
        let wanted = self.inner.target.min_replicas();
        if wanted == 0 {
            return Ok(());
        }
        let wait = self.inner.opts.replica_timeout;
        let got: u64 = self
            .bounded_by(
                self.deadline() + wait,
                redis::cmd("WAIT")
                    .arg(wanted)
                    .arg(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1))
                    .query_async(conn),
            )
            .await?;
        if got < u64::from(wanted) {
            return Err(Error::Unavailable {
                backend: "redis",
                message: format!(
                    "the change is written but only {got} of {wanted} replicas confirmed it \
                     within {wait:?}; the outcome is unknown until a retry with the same request \
                     id, or a read, shows it"
                ),
                retryable: true,
            });
        }
        Ok(())
    }

    /// Runs the store script for `app`.
    async fn run(&self, app: &AppName, op: &str, args: &[String]) -> Result<Reply> {
        self.run_with(app, op, args, false).await
    }

    /// Runs the store script for `app`; when `durable`, a change it made
    /// (or found already made) is confirmed by the replicas `min_replicas` asks for.
    async fn run_with(
        &self,
        app: &AppName,
        op: &str,
        args: &[String],
        durable: bool,
    ) -> Result<Reply> {
        let tag = app.as_str();
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(format!("bg:{{{tag}}}:state"))
            .key(format!("bg:{{{tag}}}:history"))
            .key(format!("bg:{{{tag}}}:gates"));
        if let Some(m) = self.inner.opts.mirror.as_ref().filter(|m| m.app == *app) {
            inv.key(m.key(Colour::Blue)).key(m.key(Colour::Green));
        }
        inv.arg(op)
            .arg(channel(app))
            .arg(self.inner.opts.history_cap)
            .arg(crate::MAX_GENERATION);
        for a in args {
            inv.arg(a);
        }
        let mut conn = self.conn().await?;
        let raw: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let reply = Reply::parse(app, raw)?;
        if durable && matches!(reply.status.as_str(), "ok" | "unchanged") {
            if reply.status == "unchanged" && self.inner.target.min_replicas() > 0 {
                // WAIT counts the writes of this connection, and an
                // unchanged answer wrote nothing here (the change was made
                // earlier, maybe by another process): one small write in
                // the app's slot, after the change, makes the replicas'
                // acknowledgement cover the change too.
                self.bounded(
                    redis::cmd("SET")
                        .arg(format!("bg:{{{tag}}}:synced"))
                        .arg(reply.now)
                        .arg("PX")
                        .arg(60_000)
                        .query_async::<()>(&mut conn),
                )
                .await?;
            }
            self.confirm_replicas(&mut conn).await?;
        }
        Ok(reply)
    }

    fn state_of(&self, app: &AppName, reply: &Reply) -> Result<State> {
        parse_state(app, &reply.fields)?.ok_or_else(|| Error::NotInitialised { app: app.clone() })
    }

    /// Turns a refusal status into its error.
    fn refusal(&self, app: &AppName, reply: &Reply) -> Error {
        let now = reply.now;
        match reply.status.as_str() {
            "not_init" => Error::NotInitialised { app: app.clone() },
            "corrupt" => Error::corrupt(
                format!("redis {}: bg:{{{app}}}:state", self.inner.shown),
                format!(
                    "field {:?} is missing or garbage; left untouched",
                    reply.detail
                ),
            ),
            "already_init" => match self.state_of(app, reply) {
                Ok(s) => Error::AlreadyInitialised {
                    current: Box::new(s),
                },
                Err(e) => e,
            },
            "conflict" => match self.state_of(app, reply) {
                Ok(s) => Error::Conflict {
                    expected: reply.detail.parse().unwrap_or_default(),
                    current: Box::new(s),
                },
                Err(e) => e,
            },
            "deploy_live" => Error::DeployToLive {
                app: app.clone(),
                colour: reply
                    .fields
                    .get("active")
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(Colour::Blue),
            },
            "lease_held" => match parse_lease(&reply.fields, "lease_", now) {
                Ok(Some(l)) => Error::LeaseHeld {
                    app: app.clone(),
                    holder: l.holder,
                    fence: l.fence,
                    expires_at_ms: l.expires_at_ms,
                },
                Ok(None) => Error::corrupt(format!("bg:{{{app}}}:state"), "lease fields vanished"),
                Err(e) => e,
            },
            other => Error::Unavailable {
                backend: "redis",
                message: format!("unexpected script status {other:?}"),
                retryable: false,
            },
        }
    }

    fn stale_fence(app: &AppName, presented: u64, reply: &Reply) -> Error {
        Error::StaleFence {
            app: app.clone(),
            presented,
            current: reply.detail.parse().ok(),
        }
    }

    fn lease_reply(&self, app: &AppName, presented: Option<u64>, reply: &Reply) -> Result<Lease> {
        match reply.status.as_str() {
            "ok" => parse_lease(&reply.fields, "lease_", reply.now)?
                .ok_or_else(|| Error::corrupt(format!("bg:{{{app}}}:state"), "lease not written")),
            "stale_fence" => Err(Self::stale_fence(app, presented.unwrap_or_default(), reply)),
            _ => Err(self.refusal(app, reply)),
        }
    }
}

/// The pub/sub channel of an app.
fn channel(app: &AppName) -> String {
    format!("bg:{{{}}}:changes", app.as_str())
}

fn opt(s: Option<&str>) -> String {
    s.unwrap_or_default().to_owned()
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_owned()
}

#[async_trait]
impl ColourStore for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, app: &AppName) -> Result<Option<State>> {
        let mut conn = self.conn().await?;
        let key = format!("bg:{{{}}}:state", app.as_str());
        let fields: HashMap<String, String> = self
            .bounded(redis::cmd("HGETALL").arg(&key).query_async(&mut conn))
            .await?;
        parse_state(app, &fields)
    }

    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State> {
        req.validate()?;
        let args = [
            req.active.to_string(),
            req.actor.clone(),
            opt(req.reason.as_deref()),
            flag(req.force),
            req.min_generation.unwrap_or(1).to_string(),
        ];
        let reply = self.run_with(app, "init", &args, true).await?;
        match reply.status.as_str() {
            "ok" => self.state_of(app, &reply),
            _ => Err(self.refusal(app, &reply)),
        }
    }

    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome> {
        req.validate()?;
        let args = [
            req.to.to_string(),
            req.actor.clone(),
            opt(req.reason.as_deref()),
            req.expect_generation
                .map(|g| g.to_string())
                .unwrap_or_default(),
            req.fence.map(|g| g.to_string()).unwrap_or_default(),
            opt(req.request_id.as_deref()),
            flag(req.force),
            flag(req.rollback),
        ];
        let reply = self.run_with(app, "switch", &args, true).await?;
        match reply.status.as_str() {
            "ok" | "unchanged" => Ok(SwitchOutcome {
                state: self.state_of(app, &reply)?,
                changed: reply.status == "ok",
            }),
            "stale_fence" => Err(Self::stale_fence(
                app,
                req.fence.unwrap_or_default(),
                &reply,
            )),
            _ => Err(self.refusal(app, &reply)),
        }
    }

    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State> {
        rec.validate()?;
        let args = [
            rec.colour.to_string(),
            rec.version.clone(),
            rec.phase.to_string(),
            rec.actor.clone(),
            rec.fence.map(|g| g.to_string()).unwrap_or_default(),
            flag(rec.force),
        ];
        let reply = self.run(app, "deploy", &args).await?;
        match reply.status.as_str() {
            "ok" => self.state_of(app, &reply),
            "stale_fence" => Err(Self::stale_fence(
                app,
                rec.fence.unwrap_or_default(),
                &reply,
            )),
            _ => Err(self.refusal(app, &reply)),
        }
    }

    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let key = format!("bg:{{{}}}:history", app.as_str());
        let entries: Vec<(String, HashMap<String, String>)> = self
            .bounded(
                redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(limit.min(self.inner.opts.history_cap))
                    .query_async(&mut conn),
            )
            .await?;
        entries
            .into_iter()
            .map(|(id, f)| {
                f.get("e")
                    .and_then(|json| serde_json::from_str(json).ok())
                    .ok_or_else(|| {
                        Error::corrupt(format!("{key} entry {id}"), "not a bluegreen event")
                    })
            })
            .collect()
    }

    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease> {
        req.validate()?;
        let args = [req.holder.clone(), ms(req.ttl).to_string()];
        let reply = self.run(app, "acquire", &args).await?;
        self.lease_reply(app, None, &reply)
    }

    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease> {
        crate::store::check_ttl(ttl)?;
        let args = [fence.to_string(), ms(ttl).to_string()];
        let reply = self.run(app, "renew", &args).await?;
        self.lease_reply(app, Some(fence), &reply)
    }

    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool> {
        let reply = self.run(app, "release", &[fence.to_string()]).await?;
        Ok(reply.status == "released")
    }

    async fn lease(&self, app: &AppName) -> Result<Option<Lease>> {
        let reply = self.run(app, "read", &[]).await?;
        parse_lease(&reply.fields, "lease_", reply.now)
    }

    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>> {
        req.validate()?;
        let args = [req.actor.clone(), opt(req.reason.as_deref())];
        let reply = self.run(app, "break", &args).await?;
        // The broken lease is reported as it was, so judge it live at its own expiry - 1.
        parse_lease(&reply.fields, "broken_", 0)
    }

    async fn report_presence(
        &self,
        app: &AppName,
        presence: Presence,
        ttl: Duration,
    ) -> Result<()> {
        presence.validate()?;
        crate::store::check_ttl(ttl)?;
        let json = serde_json::to_string(&presence)
            .map_err(|e| Error::invalid("presence", e.to_string()))?;
        let args = [presence.gate_id.clone(), json, ms(ttl).to_string()];
        self.run(app, "presence", &args).await.map(|_| ())
    }

    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>> {
        let reply = self.run(app, "presences", &[]).await?;
        let mut out = Vec::new();
        for (gate, json) in &reply.fields {
            let p: Presence = serde_json::from_str(json).map_err(|_| {
                Error::corrupt(
                    format!("bg:{{{app}}}:gates field {:?}", crate::text::shorten(gate)),
                    "not a bluegreen presence report",
                )
            })?;
            if p.expires_at_ms > reply.now {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.gate_id.cmp(&b.gate_id));
        Ok(out)
    }

    async fn subscribe(&self, app: &AppName) -> Result<Subscription> {
        let (tx, rx) = mpsc::channel(16);
        let store = self.clone();
        let app = app.clone();
        // Subscribe before returning when the server is there, so no change
        // made after this call is missed; otherwise keep trying in the background.
        let mut current = store.listen(&app).await;
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(mut events) = current.take() {
                    backoff = Duration::from_millis(100);
                    loop {
                        let generation = tokio::select! {
                            () = tx.closed() => return,
                            heard = events.next() => match heard {
                                Some(Heard::Change(g)) => g,
                                // Anything may have changed while the subscription moved.
                                Some(Heard::Resubscribed) => None,
                                Some(Heard::Moved) => {
                                    store.forget_master().await;
                                    break;
                                }
                                Some(Heard::Lost) | None => break,
                            },
                        };
                        if tx
                            .send(Change {
                                app: app.clone(),
                                generation,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    tracing::debug!(app = %app, "change subscription lost; subscribing again");
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                current = store.listen(&app).await;
                // Anything may have changed while nobody was listening.
                if current.is_some()
                    && tx
                        .send(Change {
                            app: app.clone(),
                            generation: None,
                        })
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }
}

/// What a change subscription heard.
enum Heard {
    /// A change, with its generation when the message carried one.
    Change(Option<u64>),
    /// The subscription was made again (a Cluster's topology changed).
    Resubscribed,
    /// Sentinel named a new master: subscribe there.
    Moved,
    /// The connection is gone.
    Lost,
}

type Events = std::pin::Pin<Box<dyn futures_util::Stream<Item = Heard> + Send>>;

fn generation_of(payload: Option<String>) -> Heard {
    Heard::Change(payload.and_then(|g| g.parse().ok()))
}

impl RedisStore {
    /// A subscription to the app's channel, or `None` if none can be made now.
    async fn listen(&self, app: &AppName) -> Option<Events> {
        let deadline = self.deadline();
        let attempt = tokio::time::timeout(deadline, self.try_listen(app)).await;
        match attempt {
            Ok(Ok(events)) => Some(events),
            Ok(Err(e)) => {
                tracing::debug!(app = %app, error = %self.inner.unavailable(&e), "cannot subscribe to changes");
                None
            }
            Err(_) => {
                tracing::debug!(app = %app, "subscribing to changes timed out");
                None
            }
        }
    }

    async fn try_listen(&self, app: &AppName) -> redis::RedisResult<Events> {
        let changes = |pubsub: redis::aio::PubSub| {
            pubsub
                .into_on_message()
                .map(|m| generation_of(m.get_payload::<String>().ok()))
                .chain(futures_util::stream::once(async { Heard::Lost }))
        };
        match &self.inner.conn {
            Connector::Single { client, .. } => {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(channel(app)).await?;
                Ok(Box::pin(changes(pubsub)))
            }
            Connector::Sentinel { sentinel, name, .. } => {
                let (master, watcher) = {
                    let mut sentinel = sentinel.lock().await;
                    let master = sentinel.async_get_client().await?;
                    // Without a sentinel to listen to, a failover is still
                    // noticed when the old master's connection breaks.
                    let watcher = sentinel.async_get_sentinel_client().await.ok();
                    (master, watcher)
                };
                let mut pubsub = master.get_async_pubsub().await?;
                pubsub.subscribe(channel(app)).await?;
                let mut events: Events = Box::pin(changes(pubsub));
                if let Some(watcher) = watcher
                    && let Ok(mut sentinel_pubsub) = watcher.get_async_pubsub().await
                    && sentinel_pubsub.subscribe("+switch-master").await.is_ok()
                {
                    let prefix = format!("{name} ");
                    let moved = sentinel_pubsub.into_on_message().filter_map(move |m| {
                        let ours = m
                            .get_payload::<String>()
                            .is_ok_and(|p| p.starts_with(&prefix));
                        async move { ours.then_some(Heard::Moved) }
                    });
                    events = Box::pin(futures_util::stream::select(events, moved));
                }
                Ok(events)
            }
            Connector::Cluster { .. } => {
                let (push_tx, push_rx) = mpsc::unbounded_channel();
                let client = self
                    .cluster_builder()
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push_tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.subscribe(channel(app)).await?;
                let mut subscribed_once = false;
                let events = futures_util::stream::unfold(
                    (push_rx, conn),
                    move |(mut rx, conn)| async move {
                        loop {
                            let push = rx.recv().await?;
                            let heard = match push.kind {
                                redis::PushKind::Message => generation_of(
                                    push.data
                                        .get(1)
                                        .and_then(|v| redis::from_redis_value_ref(v).ok()),
                                ),
                                redis::PushKind::Subscribe => Heard::Resubscribed,
                                _ => continue,
                            };
                            return Some((heard, (rx, conn)));
                        }
                    },
                )
                .filter(move |h| {
                    // The first confirmation is of the subscribe just made.
                    let first = matches!(h, Heard::Resubscribed) && !subscribed_once;
                    if first {
                        subscribed_once = true;
                    }
                    std::future::ready(!first)
                })
                .chain(futures_util::stream::once(async { Heard::Lost }));
                Ok(Box::pin(events))
            }
        }
    }
}
