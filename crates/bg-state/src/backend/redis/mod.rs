//! The Redis store.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use redis::{Client, RedisError, RetryMethod, Script};
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

pub use mirror::LegacyMirror;
use reply::{Reply, parse_lease, parse_state};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("store.lua")));

/// How a [`RedisStore`] connects and what it keeps.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Bound on establishing a connection.
    pub connect_timeout: Duration,
    /// Bound on waiting for one reply. Every call fails with a retryable
    /// [`Error::Unavailable`] within `connect_timeout + response_timeout`.
    pub response_timeout: Duration,
    /// Events kept per app in the history stream.
    pub history_cap: usize,
    /// Also keep the hand-made design's per-colour keys, see [`LegacyMirror`].
    pub mirror: Option<LegacyMirror>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            history_cap: DEFAULT_HISTORY_CAP,
            mirror: None,
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
/// a retryable [`Error::Unavailable`].
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Made on first use, inside the caller's runtime (the manager spawns
    /// its reconnect task), so opening a store needs no runtime.
    conn: OnceCell<ConnectionManager>,
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

fn unavailable(e: &RedisError) -> Error {
    let retryable = !matches!(e.retry_method(), RetryMethod::NoRetry)
        && e.kind() != redis::ErrorKind::AuthenticationFailed;
    Error::Unavailable {
        backend: "redis",
        message: e.to_string(),
        retryable,
    }
}

fn timed_out(after: Duration) -> Error {
    Error::Unavailable {
        backend: "redis",
        message: format!("no answer within {after:?}"),
        retryable: true,
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://` or `rediss://`), with
    /// default options. No connection is made until the first call.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a URL Redis cannot use.
    pub fn open(url: &str) -> Result<Self> {
        RedisStore::with_options(url, RedisOptions::default())
    }

    /// As [`RedisStore::open`], with options.
    ///
    /// # Errors
    /// As [`RedisStore::open`].
    pub fn with_options(url: &str, opts: RedisOptions) -> Result<Self> {
        let shown = crate::text::redact_url(url);
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("redis" | "rediss")) {
            return Err(Error::invalid(
                "url",
                format!("{shown} is not a redis:// or rediss:// URL"),
            ));
        }
        if url.starts_with("rediss://") {
            // rustls needs a process-wide crypto provider; ring builds quickly
            // and needs no C toolchain beyond cc. Another one installed first wins.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = Client::open(url).map_err(|e| {
            Error::invalid(
                "url",
                format!(
                    "{shown} is not a usable Redis URL: {}",
                    e.detail().unwrap_or("malformed")
                ),
            )
        })?;
        Ok(RedisStore {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                opts: RedisOptions {
                    history_cap: opts.history_cap.max(1),
                    ..opts
                },
                shown,
            }),
        })
    }

    async fn conn(&self) -> Result<ConnectionManager> {
        let inner = &self.inner;
        inner
            .conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(inner.opts.connect_timeout))
                    .set_response_timeout(Some(inner.opts.response_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(inner.opts.connect_timeout);
                ConnectionManager::new_lazy_with_config(inner.client.clone(), config)
                    .map_err(|e| unavailable(&e))
            })
            .await
            .cloned()
    }

    fn deadline(&self) -> Duration {
        self.inner.opts.connect_timeout + self.inner.opts.response_timeout
    }

    /// Runs a command under the overall deadline.
    async fn bounded<T>(&self, fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        match tokio::time::timeout(self.deadline(), fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(&e)),
            Err(_) => Err(timed_out(self.deadline())),
        }
    }

    /// Runs the store script for `app`.
    async fn run(&self, app: &AppName, op: &str, args: &[String]) -> Result<Reply> {
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
        Reply::parse(app, raw)
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
        let reply = self.run(app, "init", &args).await?;
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
        let reply = self.run(app, "switch", &args).await?;
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
        let client = self.inner.client.clone();
        let app = app.clone();
        let deadline = self.deadline();
        // Subscribe before returning when the server is there, so no change
        // made after this call is missed; otherwise keep trying in the background.
        let mut current = listen(&client, &app, deadline).await;
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                if let Some(mut pubsub) = current.take() {
                    backoff = Duration::from_millis(100);
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            () = tx.closed() => return,
                            msg = messages.next() => {
                                let Some(msg) = msg else { break };
                                let generation = msg
                                    .get_payload::<String>()
                                    .ok()
                                    .and_then(|g| g.parse().ok());
                                if tx.send(Change { app: app.clone(), generation }).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    tracing::debug!(app = %app, "change subscription lost; reconnecting");
                }
                tokio::select! {
                    () = tx.closed() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                current = listen(&client, &app, deadline).await;
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

/// A pub/sub connection subscribed to the app's channel, or `None`.
async fn listen(client: &Client, app: &AppName, deadline: Duration) -> Option<redis::aio::PubSub> {
    let attempt = tokio::time::timeout(deadline, async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel(app)).await?;
        Ok::<_, RedisError>(pubsub)
    })
    .await;
    match attempt {
        Ok(Ok(pubsub)) => Some(pubsub),
        Ok(Err(e)) => {
            tracing::debug!(app = %app, error = %e, "cannot subscribe to changes");
            None
        }
        Err(_) => {
            tracing::debug!(app = %app, "subscribing to changes timed out");
            None
        }
    }
}
