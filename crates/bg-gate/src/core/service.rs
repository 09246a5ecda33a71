//! Sidecar mode: a standalone gate beside a service it cannot see into (a
//! NestJS or any other process). The gate checks the service's health route
//! on a timer, reads its version and its open websockets from it, and
//! forwards drains to it, so the load balancer and `bg-ctl` see the service,
//! not only the gate.
//!
//! The health answer reads one atomic flag that the checker sets: no check
//! ever waits on the service, or on the store.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bg_state::redact_url;
use bg_state::wire::ServiceHealth;

use super::gate::Inner;

/// How long one request to the service may take: each check, each read of
/// its version or connections, each forwarded drain.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a drain goes on (`timeout_ms` at most an hour): also how
/// long a restarted sidecar gate watches for a drain it may have forwarded
/// before, to stop it once its colour is live.
pub(crate) const DRAIN_LASTS_AT_MOST: Duration = Duration::from_secs(3600);

/// How often a stop the service did not take is sent again, at most.
const STOP_RETRY_AT_MOST: Duration = Duration::from_secs(1);

/// The service beside a standalone gate, and how to ask it.
/// [`ServiceConfig::new`] gives the defaults.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Where the service listens: `http://HOST:PORT`.
    pub url: String,
    /// Its health route, checked every `interval`. Default `/health`; any
    /// 2xx answer passes.
    pub health_path: String,
    /// How often to check. Default 1 s.
    pub interval: Duration,
    /// Failed checks in a row that take it down. Default 2.
    pub fall: u32,
    /// Good checks in a row that bring it back. Default 2.
    pub rise: u32,
    /// Its version route (plain text, or JSON with a `version` field), read
    /// with every good check; the gate then reports that version.
    pub version_path: Option<String>,
    /// Where drains go: `POST` with
    /// `{"close_code":1012,"batch":N,"interval_ms":M,"timeout_ms":T}`.
    pub drain_path: Option<String>,
    /// Where its open websockets are counted: JSON `{"connections": N}`,
    /// read with every good check.
    pub connections_path: Option<String>,
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("url", &redact_url(&self.url))
            .field("health_path", &self.health_path)
            .field("interval", &self.interval)
            .field("fall", &self.fall)
            .field("rise", &self.rise)
            .field("version_path", &self.version_path)
            .field("drain_path", &self.drain_path)
            .field("connections_path", &self.connections_path)
            .finish()
    }
}

impl ServiceConfig {
    /// The service at `url` with the default routes and timing.
    pub fn new(url: impl Into<String>) -> Self {
        ServiceConfig {
            url: url.into(),
            health_path: "/health".to_owned(),
            interval: Duration::from_secs(1),
            fall: 2,
            rise: 2,
            version_path: None,
            drain_path: None,
            connections_path: None,
        }
    }

    /// Why these settings cannot work, if they cannot.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        let url = reqwest::Url::parse(&self.url).map_err(|e| {
            (
                "service_url",
                format!("{:?} is not a URL: {e}", redact_url(&self.url)),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err((
                "service_url",
                format!(
                    "{:?} must be http://HOST:PORT or https://HOST:PORT",
                    redact_url(&self.url)
                ),
            ));
        }
        for (field, path) in [
            ("service_health", Some(&self.health_path)),
            ("service_version_path", self.version_path.as_ref()),
            ("service_drain_path", self.drain_path.as_ref()),
            ("service_connections_path", self.connections_path.as_ref()),
        ] {
            if let Some(p) = path
                && (!p.starts_with('/') || p.chars().any(char::is_whitespace))
            {
                return Err((field, format!("{p:?} must be a path starting with /")));
            }
        }
        if self.interval < Duration::from_millis(10) || self.interval > Duration::from_secs(3600) {
            return Err(("service_interval", "must be between 10ms and 1h".to_owned()));
        }
        if self.drain_path.is_some() != self.connections_path.is_some() {
            return Err((
                "service_drain_path",
                "goes with service_connections_path: a drain is waited for by counting".to_owned(),
            ));
        }
        for (field, n) in [("service_fall", self.fall), ("service_rise", self.rise)] {
            if n == 0 || n > 100 {
                return Err((field, "must be between 1 and 100".to_owned()));
            }
        }
        Ok(())
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url.trim_end_matches('/'))
    }
}

/// What the checker found, read by the health answer and `/bg/state`.
#[derive(Debug)]
pub(super) struct ServiceState {
    pub(super) cfg: ServiceConfig,
    client: reqwest::Client,
    up: AtomicBool,
    /// Whether a check has run to its end since the gate started.
    checked: AtomicBool,
    version: ArcSwapOption<String>,
    /// `u64::MAX` until read.
    websockets: AtomicU64,
    error: Mutex<Option<String>>,
    /// Until when a stop is owed to the service's drain once this colour
    /// is live (a drain was forwarded, or may have been before a restart);
    /// `None` when none is. Under its lock: whether a watcher runs.
    stop_owed: Mutex<StopOwed>,
}

#[derive(Debug, Default)]
struct StopOwed {
    until: Option<tokio::time::Instant>,
    watching: bool,
}

impl ServiceState {
    pub(super) fn new(cfg: ServiceConfig) -> Self {
        // reqwest is built without a bundled crypto provider (an https
        // service URL needs one); ring is the one the gate uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(SERVICE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        ServiceState {
            cfg,
            client,
            // Down until its first `rise` good checks: a gate started
            // beside a service that is not up yet sends it nobody.
            up: AtomicBool::new(false),
            checked: AtomicBool::new(false),
            version: ArcSwapOption::empty(),
            websockets: AtomicU64::new(u64::MAX),
            error: Mutex::new(None),
            stop_owed: Mutex::new(StopOwed::default()),
        }
    }

    /// Whether the health route passes, as of the last checks.
    pub(super) fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The version the service last gave.
    pub(super) fn version(&self) -> Option<String> {
        self.version.load().as_deref().cloned()
    }

    /// The open websockets the service last gave.
    pub(super) fn websockets(&self) -> Option<u64> {
        match self.websockets.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// The websockets the service holds, as far as the gate can tell: the
    /// count it last read; none when it has no connections route (the gate
    /// cannot see them) or its checks took it down (a crashed service holds
    /// none); `None`, unknown, before the first check has run (a gate
    /// restarted beside a busy service) and while it is up but its count
    /// could not be read.
    pub(super) fn open_websockets(&self) -> Option<u64> {
        if self.cfg.connections_path.is_none() {
            return Some(0);
        }
        if let Some(n) = self.websockets() {
            return Some(n);
        }
        let checked = self.checked.load(Ordering::Relaxed);
        (checked && !self.is_up()).then_some(0)
    }

    pub(super) fn health(&self) -> ServiceHealth {
        ServiceHealth {
            url: redact_url(&self.cfg.url),
            up: self.is_up(),
            version: self.version(),
            websockets: self.websockets(),
            error: self
                .error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    fn set_error(&self, e: Option<String>) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = e;
    }

    /// A GET of `path`: its body on a 2xx answer.
    async fn get(&self, path: &str) -> Result<String, String> {
        let res = self
            .client
            .get(self.cfg.at(path))
            .send()
            .await
            .map_err(|e| format!("GET {path}: {}", without_url(&e)))?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("GET {path} answered {status}"));
        }
        res.text()
            .await
            .map_err(|e| format!("GET {path}: {}", without_url(&e)))
    }

    /// One check: the health route, which alone decides; then the
    /// version and the connections, each unknown until read again when
    /// its route fails (and all of it unknown when the health route
    /// fails: a crashed service has no version and no websockets).
    async fn check(&self) -> Result<(), String> {
        if let Err(e) = self.get(&self.cfg.health_path).await {
            self.forget();
            return Err(e);
        }
        let mut trouble = None;
        if let Some(path) = &self.cfg.version_path {
            match self.get(path).await.and_then(|body| {
                parse_version(&body).ok_or_else(|| format!("GET {path}: no version in its answer"))
            }) {
                Ok(v) => self.version.store(Some(std::sync::Arc::new(v))),
                Err(e) => {
                    self.version.store(None);
                    trouble = Some(e);
                }
            }
        }
        if let Some(path) = &self.cfg.connections_path {
            match self.get(path).await.and_then(|body| {
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["connections"].as_u64())
                    .filter(|n| *n < u64::MAX)
                    .ok_or_else(|| format!("GET {path}: no {{\"connections\": N}} in its answer"))
            }) {
                Ok(n) => self.websockets.store(n, Ordering::Relaxed),
                Err(e) => {
                    self.websockets.store(u64::MAX, Ordering::Relaxed);
                    trouble = Some(e);
                }
            }
        }
        self.set_error(trouble);
        Ok(())
    }

    /// What the gate knew of a service that stopped answering.
    fn forget(&self) {
        self.version.store(None);
        self.websockets.store(u64::MAX, Ordering::Relaxed);
    }

    /// Forwards a drain to the service; how many websockets it says it
    /// asked (0 if it does not say).
    pub(super) async fn drain(
        &self,
        path: &str,
        batch: usize,
        pause: Duration,
        lasting: Duration,
    ) -> Result<u64, String> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let res = self
            .client
            .post(self.cfg.at(path))
            .json(&serde_json::json!({
                "close_code": crate::DRAIN_CLOSE_CODE,
                "batch": batch,
                "interval_ms": ms(pause),
                "timeout_ms": ms(lasting),
            }))
            .send()
            .await
            .map_err(|e| format!("POST {path}: {}", without_url(&e)))?;
        let status = res.status();
        if !status.is_success() {
            return Err(format!("POST {path} answered {status}"));
        }
        let body: serde_json::Value = res.json().await.unwrap_or_default();
        Ok(body["asked"].as_u64().unwrap_or(0))
    }
}

/// A reqwest error without the URL it carries (it may hold credentials).
fn without_url(e: &reqwest::Error) -> String {
    let e = format!("{}", RemovedUrl(e));
    if e.is_empty() { "failed".to_owned() } else { e }
}

struct RemovedUrl<'a>(&'a reqwest::Error);

impl std::fmt::Display for RemovedUrl<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = self.0;
        if e.is_timeout() {
            write!(f, "no answer within {SERVICE_TIMEOUT:?}")
        } else if e.is_connect() {
            f.write_str("cannot connect")
        } else {
            let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
            let mut last = None;
            while let Some(s) = source {
                last = Some(s.to_string());
                source = s.source();
            }
            f.write_str(last.as_deref().unwrap_or("the request failed"))
        }
    }
}

/// A version from a version route: JSON with a string `version`, or the
/// first line of a plain-text body. Holds to the store's rule for
/// versions ([`bg_state::check_version`]).
fn parse_version(body: &str) -> Option<String> {
    let body = body.trim();
    let v = if body.starts_with('{') {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()?
            .get("version")?
            .as_str()?
            .trim()
            .to_owned()
    } else {
        body.lines().next()?.trim().to_owned()
    };
    bg_state::check_version(&v).ok().map(|()| v)
}

/// Owes the service a stop of its drain for `lasting`: once this colour
/// answers OK again (someone switched back, or a restarted gate finds its
/// colour live), the service is told to stop (`timeout_ms` 0), and told
/// again, backing off to once a second, until it takes the stop or the
/// drain's time is over: otherwise the live colour would go on closing
/// its newcomers' websockets. One watcher serves every drain forwarded.
pub(super) fn owe_stop(inner: &Arc<Inner>, lasting: Duration) {
    let Some(svc) = inner.service.as_ref() else {
        return;
    };
    let until = tokio::time::Instant::now() + lasting;
    let mut owed = svc.stop_owed.lock().unwrap_or_else(PoisonError::into_inner);
    owed.until = Some(owed.until.map_or(until, |u| u.max(until)));
    if !std::mem::replace(&mut owed.watching, true) {
        tokio::spawn(stop_drain_when_live(Arc::downgrade(inner)));
    }
}

/// The watcher [`owe_stop`] starts; ends once no stop is owed.
async fn stop_drain_when_live(weak: Weak<Inner>) {
    let mut pause = Duration::from_millis(100);
    let mut refused = 0u32;
    loop {
        tokio::time::sleep(pause).await;
        let Some(inner) = weak.upgrade() else { return };
        let Some(svc) = inner.service.as_ref() else {
            return;
        };
        {
            let mut owed = svc.stop_owed.lock().unwrap_or_else(PoisonError::into_inner);
            if owed.until.is_none_or(|u| tokio::time::Instant::now() >= u) {
                *owed = StopOwed::default();
                if refused > 0 {
                    tracing::warn!(
                        refused,
                        "the service never took the stop of its drain, whose time is now over"
                    );
                }
                return;
            }
        }
        let live = inner
            .view
            .load()
            .answer(inner.cfg.colour, std::time::Instant::now())
            .is_ok();
        let Some(path) = svc.cfg.drain_path.as_deref().filter(|_| live) else {
            continue;
        };
        let asked_until = svc
            .stop_owed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .until;
        match svc.drain(path, 1, Duration::ZERO, Duration::ZERO).await {
            Ok(_) => {
                let mut owed = svc.stop_owed.lock().unwrap_or_else(PoisonError::into_inner);
                // A drain forwarded while the stop was on its way is owed
                // a stop of its own.
                if owed.until == asked_until {
                    *owed = StopOwed::default();
                    tracing::info!(refused, "this colour is live: the service's drain stopped");
                    return;
                }
            }
            Err(e) => {
                if refused == 0 {
                    tracing::warn!(error = %e, "this colour is live, and the service did not take the stop of its drain: sending it again");
                }
                refused = refused.saturating_add(1);
                pause = (pause * 2).min(STOP_RETRY_AT_MOST);
            }
        }
    }
}

/// The checker: every `interval`, a check; `fall` failures in a row take
/// the service down, `rise` successes bring it back. Ends with the gate.
pub(super) async fn watch_service(weak: Weak<Inner>) {
    let (mut good, mut bad) = (0u32, 0u32);
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let Some(svc) = inner.service.as_ref() else {
            return;
        };
        let result = svc.check().await;
        svc.checked.store(true, Ordering::Relaxed);
        let (rise, fall, interval) = (svc.cfg.rise, svc.cfg.fall, svc.cfg.interval);
        match result {
            Ok(()) => {
                bad = 0;
                good = good.saturating_add(1);
                if good >= rise && !svc.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(version = ?svc.version(), "the service is up: answering by colour");
                    inner.service_changed();
                }
            }
            Err(e) => {
                good = 0;
                bad = bad.saturating_add(1);
                if bad >= fall && svc.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the service is down: answering 503 DOWN");
                    inner.service_changed();
                }
                svc.set_error(Some(e));
            }
        }
        drop(inner);
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_as_text_or_json() {
        assert_eq!(parse_version("v1.2.3\n").as_deref(), Some("v1.2.3"));
        assert_eq!(
            parse_version(r#"{"version":"v9","name":"chat"}"#).as_deref(),
            Some("v9")
        );
        for bad in [
            "",
            "   ",
            "two words",
            r#"{"name":"chat"}"#,
            r#"{"version":7}"#,
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
        assert_eq!(parse_version(&"x".repeat(129)), None);
        // The store's rule: counted in characters, no control characters.
        let accented = "é".repeat(bg_state::MAX_VERSION_LEN);
        assert_eq!(parse_version(&accented), Some(accented.clone()));
        for bad in ["v1\u{7}", "v\u{1b}[31m2", r#"{"version":"v1\u0000"}"#] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(ServiceConfig::new("http://127.0.0.1:3000").check().is_ok());
        for url in ["127.0.0.1:3000", "ftp://x", "http://"] {
            assert_eq!(
                ServiceConfig::new(url).check().unwrap_err().0,
                "service_url"
            );
        }
        let mut c = ServiceConfig::new("http://127.0.0.1:3000");
        c.version_path = Some("version".into());
        assert_eq!(c.check().unwrap_err().0, "service_version_path");
        let mut c = ServiceConfig::new("http://127.0.0.1:3000");
        c.fall = 0;
        assert_eq!(c.check().unwrap_err().0, "service_fall");
    }
}
