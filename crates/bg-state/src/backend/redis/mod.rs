//! The Redis store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::{Script, TlsCertificates};
use tokio::sync::mpsc;

use crate::engine::ms;
use crate::error::{Error, Result};
use crate::model::{AppName, Change, Colour, Event, Lease, Presence, State};
use crate::store::{
    BreakLease, ColourStore, DEFAULT_HISTORY_CAP, DeployRecord, InitRequest, LeaseRequest,
    Subscription, SwitchOutcome, SwitchRequest,
};

mod confirm;
mod connect;
mod listen;
mod mirror;
mod reply;
mod target;

use connect::{Connector, outcome_unknown, read_ca, timed_out};
use listen::Heard;
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
/// a retryable [`Error::Unavailable`]. Once a script may have run, every
/// failure is such an outcome-unknown error, never a refusal: a dropped
/// connection, `READONLY` (a demoted master), `NOREPLICAS`, `MISCONF`,
/// `BUSY`, a `WAIT` answered by a replica; a retry with the same request id
/// is recognised if the write was made. Under Sentinel the master is looked
/// up again after any of them, and after a `+switch-master` event.
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

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.inner.shown)
            .finish_non_exhaustive()
    }
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
        let mut target = Self::checked_target(url, &opts, &shown)?;
        if target.tls {
            // rustls needs a process-wide crypto provider; ring builds quickly
            // and needs no C toolchain beyond cc. Another one installed first wins.
            let _ = rustls::crypto::ring::default_provider().install_default();
            if target.ca.is_none() {
                target.ca.clone_from(&opts.ca_file);
            }
        }
        let certs = match &target.ca {
            Some(path) => Some(TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca(path)?),
            }),
            None => None,
        };
        let conn = Connector::new(&target, &opts, certs.as_ref(), &shown)?;
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

    /// Checks `url` and `opts` as [`with_options`](Self::with_options) does,
    /// without reading the CA file or building a client.
    ///
    /// # Errors
    /// As [`with_options`](Self::with_options), but for an unreadable CA file.
    pub fn check_url(url: &str, opts: &RedisOptions) -> Result<()> {
        Self::checked_target(url, opts, &crate::text::redact_url(url)).map(|_| ())
    }

    fn checked_target(url: &str, opts: &RedisOptions, shown: &str) -> Result<Target> {
        let target = Target::parse(url, shown)?;
        if opts.mirror.is_some() && target.topology == Topology::Cluster {
            return Err(Error::invalid(
                "mirror",
                "the legacy mirror cannot run on a Redis Cluster: the hand-made design's \
                 lb-status keys cannot share the app's hash slot; use one node or Sentinel",
            ));
        }
        Ok(target)
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
            Ok(Err(e)) => Err(self.failed(&e).await),
            Err(_) => {
                self.forget_master().await;
                Err(timed_out(limit))
            }
        }
    }

    /// The error for a failed command; after one that leaves the outcome
    /// unknown, the next call looks the Sentinel master up again.
    async fn failed(&self, e: &redis::RedisError) -> Error {
        if outcome_unknown(e) {
            self.forget_master().await;
        }
        self.inner.unavailable(e)
    }

    /// Runs the store script for `app`.
    async fn run(&self, app: &AppName, op: &str, args: &[String]) -> Result<Reply> {
        self.run_with(app, op, args, false).await
    }

    /// Runs the store script for `app`; when `durable`, a change it made
    /// (or found already made) is confirmed by the replicas `min_replicas`
    /// asks for, see [`RedisStore::run_confirmed`].
    async fn run_with(
        &self,
        app: &AppName,
        op: &str,
        args: &[String],
        durable: bool,
    ) -> Result<Reply> {
        let tag = app.as_str();
        let mut keys = vec![
            format!("bg:{{{tag}}}:state"),
            format!("bg:{{{tag}}}:history"),
            format!("bg:{{{tag}}}:gates"),
        ];
        if let Some(m) = self.inner.opts.mirror.as_ref().filter(|m| m.app == *app) {
            keys.extend([m.key(Colour::Blue), m.key(Colour::Green)]);
        }
        let mut argv = vec![
            op.to_owned(),
            channel(app),
            self.inner.opts.history_cap.to_string(),
            crate::MAX_GENERATION.to_string(),
        ];
        argv.extend_from_slice(args);
        let mut conn = self.conn().await?;
        let wanted = self.inner.target.min_replicas();
        if durable && wanted > 0 {
            return self
                .run_confirmed(app, &mut conn, &keys, &argv, wanted)
                .await;
        }
        let mut inv = SCRIPT.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        for a in &argv {
            inv.arg(a);
        }
        let raw: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        Reply::parse(app, raw)
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
            opt(req.request_id.as_deref()),
            opt(req.version.as_deref()),
        ];
        let reply = self.run_with(app, "init", &args, true).await?;
        match reply.status.as_str() {
            "ok" | "unchanged" => self.state_of(app, &reply),
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
            opt(req.leaving_version.as_deref()),
        ];
        let reply = self.run_with(app, "switch", &args, true).await?;
        match reply.status.as_str() {
            "ok" | "unchanged" => Ok(SwitchOutcome {
                state: self.state_of(app, &reply)?,
                changed: reply.status == "ok",
            }),
            "stale_fence" => Err(Self::stale_fence(app, req.fence.unwrap_or_default())),
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
            opt(rec.request_id.as_deref()),
        ];
        let reply = self.run(app, "deploy", &args).await?;
        match reply.status.as_str() {
            "ok" => self.state_of(app, &reply),
            "stale_fence" => Err(Self::stale_fence(app, rec.fence.unwrap_or_default())),
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
        // The fence is drawn here, from the operating system's generator:
        // a script's `math.random` is neither secret nor, on older
        // servers, different from one run to the next.
        let drawn = crate::fence::draw("redis")?;
        let args = [
            req.holder.clone(),
            ms(req.ttl).to_string(),
            opt(req.owner.as_deref()),
            drawn.to_string(),
        ];
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
