//! A store that is a gate's `/bg/api/v1`, for CI that reaches the services
//! but not Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::engine::ms;
use crate::error::{Error, Result};
use crate::model::{AppName, Change, Event, Lease, Presence, State};
use crate::store::{
    BreakLease, ColourStore, DeployRecord, InitRequest, LeaseRequest, Subscription, SwitchOutcome,
    SwitchRequest,
};
use crate::wire;

/// How long the change long poll waits on the server per request.
const LONG_POLL: Duration = Duration::from_secs(20);

/// The store behind a gate's HTTP API (`http://…`, `https://…`).
///
/// Every call is one HTTP request to the gate, which runs it on its own
/// store: the guarantees are the store's. Writes need a token the gate
/// accepts; the actor recorded is whoever that token says, and the `actor`
/// fields of requests are not sent. Transport failures are retryable
/// [`Error::Unavailable`]; refused credentials are [`Error::Unauthorized`].
///
/// Several gates of the same store ([`RemoteStore::with_gates`]) make it
/// survive the restart of one: a request that cannot connect to one gate
/// goes to the next, and the gate that answered is asked first from then
/// on. Only a refused connection moves on: a request that reached a gate
/// may have been carried out, so its failure is reported, not repeated.
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Inner>,
}

struct Inner {
    bases: Vec<String>,
    /// The gate that answered last: asked first.
    current: AtomicUsize,
    token: Option<String>,
    client: reqwest::Client,
    timeout: Duration,
}

impl std::fmt::Debug for RemoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStore")
            .field("gates", &self.inner.bases)
            .field("token", &self.inner.token.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl RemoteStore {
    /// A store behind the gate at `base` (e.g. `https://gate.internal:9090`),
    /// authenticating writes with `token`; each request bounded by `timeout`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a URL that is not `http(s)://host…` or
    /// carries credentials or a query (put the token in `token`).
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self> {
        Self::with_gates([base], token, timeout)
    }

    /// Checks a gate URL as [`new`](Self::new) does, without building a client.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn check_url(base: &str) -> Result<()> {
        gate_base(base).map(|_| ())
    }

    /// A store behind any of the gates at `bases`, all in front of the same
    /// store: each request goes to the gate that answered last, and to the
    /// next one when it cannot connect.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for no gate at all, or any URL [`new`](Self::new)
    /// refuses.
    pub fn with_gates<I, S>(bases: I, token: Option<String>, timeout: Duration) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let bases = bases
            .into_iter()
            .map(|b| gate_base(b.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if bases.is_empty() {
            return Err(Error::invalid("url", "no gate URL given"));
        }
        // reqwest is built without a bundled crypto provider; ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // A gate that does not answer the connection at all (a firewall
        // that drops, a service address with no task behind it) must fail
        // as a connection error, well before the request's own timeout,
        // so that the next gate is tried: nothing was sent to it.
        let connect = (timeout / 3).clamp(Duration::from_millis(100), Duration::from_secs(2));
        let client = reqwest::Client::builder()
            .connect_timeout(connect.min(timeout))
            .build()
            .map_err(|e| Error::Unavailable {
                backend: "remote",
                message: format!("cannot build an HTTP client: {e}"),
                retryable: false,
            })?;
        Ok(RemoteStore {
            inner: Arc::new(Inner {
                bases,
                current: AtomicUsize::new(0),
                token,
                client,
                timeout,
            }),
        })
    }

    /// The gates' base URLs, as given (normalised).
    #[must_use]
    pub fn gates(&self) -> &[String] {
        &self.inner.bases
    }

    fn url(&self, base: &str, app: &AppName, path: &str) -> String {
        format!("{base}/bg/api/v1/apps/{}/{path}", app.as_str())
    }

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        app: &AppName,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<Option<T>> {
        let bases = &self.inner.bases;
        let first = self.inner.current.load(Ordering::Relaxed) % bases.len();
        let mut tried = 0;
        let res = loop {
            let at = (first + tried) % bases.len();
            let mut req = self
                .inner
                .client
                .request(method.clone(), self.url(&bases[at], app, path))
                .timeout(timeout);
            if let Some(t) = &self.inner.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(res) => {
                    self.inner.current.store(at, Ordering::Relaxed);
                    break res;
                }
                // Nothing reached this gate: the next one may take it.
                Err(e) if e.is_connect() && tried + 1 < bases.len() => tried += 1,
                Err(e) => return Err(transport(&e)),
            }
        };
        let status = res.status();
        let bytes = res.bytes().await.map_err(|e| transport(&e))?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Unavailable {
                    backend: "remote",
                    message: format!("the gate answered {status} with an unexpected body: {e}"),
                    retryable: false,
                });
        }
        let body: wire::ErrorBody = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            wire::ErrorBody::new(
                "",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(200)
                    .collect::<String>(),
            )
        });
        Err(wire::error_from_body(app, status.as_u16(), body))
    }

    async fn get<T: DeserializeOwned>(&self, app: &AppName, path: &str) -> Result<T> {
        self.call::<(), T>(app, Method::GET, path, None, self.inner.timeout)
            .await?
            .ok_or_else(empty)
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        app: &AppName,
        path: &str,
        body: &B,
    ) -> Result<T> {
        self.call(app, Method::POST, path, Some(body), self.inner.timeout)
            .await?
            .ok_or_else(empty)
    }
}

/// `base` checked and without its trailing slash.
fn gate_base(base: &str) -> Result<String> {
    let url = url::Url::parse(base.trim())
        .map_err(|e| Error::invalid("url", format!("gate URL is malformed: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::invalid(
            "url",
            "a gate URL is http://host[:port] or https://host[:port]",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(Error::invalid(
            "url",
            "a gate URL must carry no credentials or query: pass the token separately",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

fn empty() -> Error {
    Error::Unavailable {
        backend: "remote",
        message: "the gate answered without a body".into(),
        retryable: false,
    }
}

fn transport(e: &reqwest::Error) -> Error {
    // The error text can name the URL, never the token: the token travels
    // in a header reqwest does not print.
    Error::Unavailable {
        backend: "remote",
        message: format!("cannot reach the gate: {e}"),
        retryable: e.is_timeout() || e.is_connect() || e.is_request() || e.is_body(),
    }
}

#[async_trait]
impl ColourStore for RemoteStore {
    fn backend(&self) -> &'static str {
        "remote"
    }

    async fn get(&self, app: &AppName) -> Result<Option<State>> {
        Ok(self.get::<wire::StateAnswer>(app, "state").await?.state)
    }

    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State> {
        req.validate()?;
        let body = wire::InitBody {
            active: req.active,
            reason: req.reason,
            force: req.force,
            min_generation: req.min_generation,
            version: req.version,
            request_id: req.request_id,
        };
        let a: wire::StateAnswer = self.post(app, "init", &body).await?;
        a.state.ok_or_else(empty)
    }

    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome> {
        req.validate()?;
        let body = wire::SwitchBody {
            to: req.to,
            reason: req.reason,
            expect_generation: req.expect_generation,
            fence: req.fence,
            request_id: req.request_id,
            force: req.force,
            rollback: req.rollback,
            leaving_version: req.leaving_version,
        };
        self.post(app, "switch", &body).await
    }

    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State> {
        rec.validate()?;
        let body = wire::DeployBody {
            colour: rec.colour,
            version: rec.version,
            phase: rec.phase,
            fence: rec.fence,
            force: rec.force,
            request_id: rec.request_id,
        };
        let a: wire::StateAnswer = self.post(app, "deploys", &body).await?;
        a.state.ok_or_else(empty)
    }

    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = limit.min(wire::MAX_HISTORY_LIMIT);
        let a: wire::HistoryAnswer = self.get(app, &format!("history?limit={limit}")).await?;
        Ok(a.events)
    }

    /// The gate records this store's credential as the lease's owner,
    /// whatever `req.owner` says.
    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease> {
        req.validate()?;
        let body = wire::AcquireBody {
            holder: req.holder,
            ttl_ms: ms(req.ttl),
        };
        let a: wire::LeaseAnswer = self.post(app, "lease", &body).await?;
        a.lease.ok_or_else(empty)
    }

    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease> {
        crate::store::check_ttl(ttl)?;
        let body = wire::RenewBody {
            fence,
            ttl_ms: ms(ttl),
        };
        let a: wire::LeaseAnswer = self.post(app, "lease/renew", &body).await?;
        a.lease.ok_or_else(empty)
    }

    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool> {
        let a: wire::ReleasedAnswer = self
            .post(app, "lease/release", &wire::ReleaseBody { fence })
            .await?;
        Ok(a.released)
    }

    /// The fence is `0` unless this store's credential took the lease or
    /// is an admin one: the gate shows it to nobody else.
    async fn lease(&self, app: &AppName) -> Result<Option<Lease>> {
        Ok(self.get::<wire::LeaseAnswer>(app, "lease").await?.lease)
    }

    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>> {
        req.validate()?;
        let a: wire::LeaseAnswer = self
            .post(app, "lease/break", &wire::BreakBody { reason: req.reason })
            .await?;
        Ok(a.lease)
    }

    async fn report_presence(
        &self,
        app: &AppName,
        presence: Presence,
        ttl: Duration,
    ) -> Result<()> {
        presence.validate()?;
        crate::store::check_ttl(ttl)?;
        let body = wire::PresenceBody {
            gate_id: presence.gate_id,
            colour: presence.colour,
            service_version: presence.service_version,
            applied_generation: presence.applied_generation,
            ttl_ms: ms(ttl),
            request_id: presence.request_id,
            view_age_ms: presence.view_age_ms,
            websockets: presence.websockets,
            draining: presence.draining,
            lb_sources: presence.lb_sources,
        };
        self.call::<_, serde_json::Value>(
            app,
            Method::POST,
            "presence",
            Some(&body),
            self.inner.timeout,
        )
        .await
        .map(|_| ())
    }

    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>> {
        Ok(self.get::<wire::GatesAnswer>(app, "presence").await?.gates)
    }

    async fn subscribe(&self, app: &AppName) -> Result<Subscription> {
        // Read where we start, so a change made after this call returns is
        // seen by the first poll even if it lands before the poll does.
        let mut since = ColourStore::get(self, app)
            .await?
            .map_or(0, |s| s.generation);
        let (tx, rx) = mpsc::channel(16);
        let store = self.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let path = format!("changes?since={since}&timeout_ms={}", LONG_POLL.as_millis());
                let poll = store.call::<(), wire::ChangesAnswer>(
                    &app,
                    Method::GET,
                    &path,
                    None,
                    LONG_POLL + store.inner.timeout,
                );
                let answer = tokio::select! {
                    () = tx.closed() => return,
                    a = poll => a,
                };
                match answer {
                    Ok(Some(a)) => {
                        backoff = Duration::from_millis(100);
                        if a.changed {
                            if let Some(g) = a.generation {
                                since = g;
                            }
                            let change = Change {
                                app: app.clone(),
                                generation: a.generation,
                            };
                            if tx.send(change).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => {
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(Subscription::from_channel(rx))
    }
}
