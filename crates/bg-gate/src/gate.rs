//! The gate: its configuration, its in-memory view of the store, and the
//! task that keeps that view current.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bg_state::{AppName, Colour, ColourStore, Error as StoreError, InitRequest, Presence, State};
use tokio::sync::{Notify, watch};

use crate::auth::Auth;
use crate::conns::Connections;
use crate::probes::ProbeLog;

/// What an idle colour answers to the health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopStatus {
    /// `503 Service Unavailable` (the default).
    #[default]
    ServiceUnavailable,
    /// `404 Not Found`, for HAProxy's `http-check disable-on-404`.
    NotFound,
}

impl StopStatus {
    /// The HTTP status code.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            StopStatus::ServiceUnavailable => 503,
            StopStatus::NotFound => 404,
        }
    }
}

impl std::str::FromStr for StopStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "503" => Ok(StopStatus::ServiceUnavailable),
            "404" => Ok(StopStatus::NotFound),
            other => Err(format!(
                "{other:?} is not a STOP status: use 503 (default) or 404 (HAProxy disable-on-404)"
            )),
        }
    }
}

/// How a gate behaves. [`GateConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateConfig {
    /// The app whose state this gate follows.
    pub app: AppName,
    /// The colour this gate serves.
    pub colour: Colour,
    /// The version of the service this gate runs in (image tag, commit).
    pub service_version: String,
    /// Unique per gate, for presence reports. Default: `<colour>-<host>-<pid>`.
    pub gate_id: String,
    /// What an idle colour answers with. Default 503.
    pub stop_status: StopStatus,
    /// Answer `<response>OK</response>` / `<response>STOP</response>` like
    /// the hand-made health route, instead of bare `OK` / `STOP`.
    pub seed_body: bool,
    /// How often the view re-reads the store, notifications or not. Default 500 ms.
    pub poll_interval: Duration,
    /// How long a colour that lost live status keeps answering OK, from the
    /// moment this gate learns of the switch, so the load balancer marks the
    /// new colour up before the old one down. Default 6 s (HAProxy's default
    /// `inter 2s rise 2` needs at least 4 s, plus a poll and margin).
    pub handover: Duration,
    /// Where to keep the last known state, so a gate restarted while the
    /// store is down answers from it.
    pub cache_file: Option<PathBuf>,
    /// Read the store on every health check (the hand-made design), for
    /// comparison. Answers then wait on the store, bounded by `store_timeout`.
    pub strict: bool,
    /// Initialise an empty store with this colour live, when the gate knows
    /// no state either.
    pub init: Option<Colour>,
    /// How long a presence report lasts. Default 15 s; renewed every third of it.
    pub presence_ttl: Duration,
    /// How many load-balancer probes to remember. Default 64.
    pub probe_log: usize,
    /// Bound on any store call the gate makes. Default 2 s.
    pub store_timeout: Duration,
    /// Close this colour's tracked websockets by itself once it has answered
    /// STOP for this long (a paced drain, as `POST /bg/drain` does). Off by default.
    pub drain_after: Option<Duration>,
    /// Websockets closed per batch of a drain. Default 10.
    pub drain_batch: usize,
    /// Pause between batches of a drain. Default 1 s.
    pub drain_interval: Duration,
    /// How long a client may take to send a request body to the admin
    /// routes before it is answered 408. Default 10 s.
    pub body_timeout: Duration,
    /// Let the store API (`/bg/api/v1`) serve every app in the store, not
    /// only this gate's. Off by default: a credential accepted by this gate
    /// then reaches only its own app.
    pub api_any_app: bool,
    /// A shell command (`sh -c`) run whenever the live colour this gate
    /// answers from changes, and once when it first knows a state (so a
    /// load balancer configured by it is right after a restart): the push
    /// model for load balancers without active health checks, such as
    /// open-source nginx. It sees `BG_ACTIVE` (the live colour),
    /// `BG_GENERATION`, `BG_APP` and `BG_COLOUR` (this gate's colour), not
    /// `BG_TOKEN`. Runs go one at a time, off the health-check path, once
    /// [`Gate::start`] has been called; a run that fails or outlasts 30 s
    /// (then killed) is logged and retried, with a pause growing from 1 s
    /// to 30 s, until it succeeds or a newer change replaces it. Off by default.
    pub on_change: Option<String>,
}

/// How long one run of [`GateConfig::on_change`] may take before it is killed.
const ON_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

impl GateConfig {
    /// Defaults for a gate of `colour` running `service_version` of `app`.
    pub fn new(app: AppName, colour: Colour, service_version: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        GateConfig {
            gate_id: format!("{colour}-{host}-{}", std::process::id()),
            app,
            colour,
            service_version: service_version.into(),
            stop_status: StopStatus::default(),
            seed_body: false,
            poll_interval: Duration::from_millis(500),
            handover: Duration::from_secs(6),
            cache_file: None,
            strict: false,
            init: None,
            presence_ttl: Duration::from_secs(15),
            probe_log: 64,
            store_timeout: Duration::from_secs(2),
            drain_after: None,
            drain_batch: 10,
            drain_interval: Duration::from_secs(1),
            body_timeout: crate::http::BODY_TIMEOUT,
            api_any_app: false,
            on_change: None,
        }
    }
}

/// The health answer for a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Live: send new connections here.
    Ok,
    /// No longer live, but still answering OK until the load balancer has
    /// had time to mark the new colour up.
    Handover,
    /// Idle (or nothing known): no new connections.
    Stop,
}

impl Answer {
    /// Whether the answer is `OK`.
    #[must_use]
    pub fn is_ok(self) -> bool {
        !matches!(self, Answer::Stop)
    }

    /// `ok`, `handover` or `stop`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Ok => "ok",
            Answer::Handover => "handover",
            Answer::Stop => "stop",
        }
    }
}

/// The gate's view of the store at one moment.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The last state the gate adopted; `None` for a cold gate.
    pub state: Option<State>,
    /// The colour that lost live status, and until when it still answers OK.
    pub handover: Option<(Colour, Instant)>,
    /// When the store last confirmed `state` (or confirmed it has none).
    pub confirmed_at: Option<Instant>,
    /// The last store error, cleared by the next good read.
    pub store_error: Option<String>,
    /// Something the store said that the gate refuses to believe.
    pub alarm: Option<String>,
    /// Whether `state` came from the local cache file and not yet from the store.
    pub from_cache: bool,
}

impl View {
    /// The answer for `colour` at `now`.
    #[must_use]
    pub fn answer(&self, colour: Colour, now: Instant) -> Answer {
        match &self.state {
            None => Answer::Stop,
            Some(s) if s.active == colour => Answer::Ok,
            Some(_) => match self.handover {
                Some((c, until)) if c == colour && now < until => Answer::Handover,
                _ => Answer::Stop,
            },
        }
    }

    /// Milliseconds since the store last confirmed the view (since `started`
    /// if it never did).
    #[must_use]
    pub fn stale_ms(&self, now: Instant, started: Instant) -> u64 {
        let since = self.confirmed_at.unwrap_or(started);
        u64::try_from(now.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
    }

    /// The generation the gate answers from, 0 when cold.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.generation)
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub answers_ok: AtomicU64,
    pub answers_handover: AtomicU64,
    pub answers_stop: AtomicU64,
    pub store_errors: AtomicU64,
    pub alarms: AtomicU64,
    pub switches: AtomicU64,
    pub auth_refusals: AtomicU64,
}

/// A health gate for one colour of one app. Cheap to clone.
///
/// Build it with [`Gate::new`], start following the store with
/// [`Gate::start`], and serve [`Gate::public_router`] and
/// [`Gate::admin_router`].
#[derive(Clone)]
pub struct Gate {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("app", &self.inner.cfg.app)
            .field("colour", &self.inner.cfg.colour)
            .field("store", &self.inner.store.backend())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub cfg: GateConfig,
    pub store: Arc<dyn ColourStore>,
    pub view: ArcSwap<View>,
    /// Serialises view updates (readers never take it), and holds the
    /// number of the newest read applied: a read that started before it
    /// finished after it, and is stale.
    update: Mutex<u64>,
    /// Numbers store reads in the order they start.
    reads: AtomicU64,
    /// Serialises cache-file writes and holds the generation last written,
    /// so two quick adoptions cannot leave the older state on disk.
    cache_written: Arc<Mutex<u64>>,
    pub changed: Notify,
    pub started: Instant,
    pub counters: Counters,
    pub auth: Auth,
    pub probes: ProbeLog,
    pub conns: Connections,
    /// Bounds the `changes` long polls waiting at once (each may hold a
    /// store subscription).
    pub polls: tokio::sync::Semaphore,
    /// The live colour and generation of the last adopted state, for the
    /// on-change runner; receivers wake only when the colour changes.
    live: watch::Sender<Option<(Colour, u64)>>,
}

/// Why a gate could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GateError {
    /// A setting is out of range.
    #[error("invalid gate setting {field}: {reason}")]
    Config {
        /// Which setting.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Gate {
    /// A gate over `store` with `cfg`, switching authorised by `auth`.
    ///
    /// Reads the cache file if one is configured and present; a cache that
    /// cannot be read is logged and ignored (the store decides).
    ///
    /// # Errors
    /// [`GateError::Config`] for settings out of range.
    pub fn new(
        store: Arc<dyn ColourStore>,
        cfg: GateConfig,
        auth: Auth,
    ) -> Result<Gate, GateError> {
        let bad = |field, reason: &str| GateError::Config {
            field,
            reason: reason.to_owned(),
        };
        let v = &cfg.service_version;
        if v.trim().is_empty()
            || v.len() > bg_state::MAX_VERSION_LEN
            || v.chars().any(char::is_whitespace)
        {
            return Err(bad(
                "service_version",
                "must be 1 to 128 characters without whitespace",
            ));
        }
        if cfg.gate_id.trim().is_empty() || cfg.gate_id.len() > bg_state::MAX_NAME_LEN {
            return Err(bad("gate_id", "must be 1 to 200 characters"));
        }
        for (field, d) in [
            ("poll_interval", cfg.poll_interval),
            ("presence_ttl", cfg.presence_ttl),
            ("store_timeout", cfg.store_timeout),
        ] {
            if d < Duration::from_millis(10) || d > Duration::from_secs(3600) {
                return Err(bad(field, "must be between 10ms and 1h"));
            }
        }
        if cfg.handover > Duration::from_secs(3600) {
            return Err(bad("handover", "must be at most 1h"));
        }
        let mut view = View::default();
        if let Some(path) = &cfg.cache_file {
            match crate::cache::load(path, &cfg.app) {
                Ok(Some(state)) => {
                    tracing::info!(generation = state.generation, active = %state.active, "answering from the cached state until the store answers");
                    view.state = Some(state);
                    view.from_cache = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring the cache file"),
            }
        }
        // A state from the cache counts as known: the first run of the
        // on-change command pushes it even while the store is down.
        let (live, _) = watch::channel(view.state.as_ref().map(|s| (s.active, s.generation)));
        Ok(Gate {
            inner: Arc::new(Inner {
                live,
                probes: ProbeLog::new(cfg.probe_log),
                cfg,
                store,
                view: ArcSwap::from_pointee(view),
                update: Mutex::new(0),
                reads: AtomicU64::new(0),
                cache_written: Arc::new(Mutex::new(0)),
                changed: Notify::new(),
                started: Instant::now(),
                counters: Counters::default(),
                auth,
                conns: Connections::default(),
                polls: tokio::sync::Semaphore::new(64),
            }),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &GateConfig {
        &self.inner.cfg
    }

    /// The store the gate follows.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn ColourStore> {
        &self.inner.store
    }

    /// The view now. Never waits on the store.
    #[must_use]
    pub fn view(&self) -> Arc<View> {
        self.inner.view.load_full()
    }

    /// The health answer for `colour` now, from the view.
    #[must_use]
    pub fn answer(&self, colour: Colour) -> Answer {
        self.inner.view.load().answer(colour, Instant::now())
    }

    /// Re-reads the token file (on SIGHUP); `Ok(false)` if there is none.
    ///
    /// # Errors
    /// If the file is unreadable or malformed; the tokens in force stay.
    pub fn reload_tokens(&self) -> Result<bool, crate::AuthError> {
        self.inner.auth.reload()
    }

    /// The connection tracker of this gate.
    #[must_use]
    pub fn connections(&self) -> &Connections {
        &self.inner.conns
    }

    /// Starts following the store: a background task that subscribes to
    /// change hints, polls every `poll_interval`, reports presence, and
    /// initialises an empty store if told to. It stops when the last clone of
    /// the gate is dropped. With [`GateConfig::on_change`] set, a second task
    /// runs that command on every change of the live colour. Call it once.
    pub fn start(&self) -> tokio::task::JoinHandle<()> {
        if let Some(command) = &self.inner.cfg.on_change {
            tokio::spawn(push_changes(
                command.clone(),
                self.inner.cfg.app.clone(),
                self.inner.cfg.colour,
                self.inner.live.subscribe(),
            ));
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(follow(weak))
    }

    /// Reads the store once and updates the view. The follower does this on
    /// every hint and poll; call it to catch up at once (after a switch).
    pub async fn refresh(&self) {
        let (seq, read) = self.read_store().await;
        self.inner.apply(seq, read);
    }

    /// Reads the store, numbered so that a slow read cannot override a newer one.
    async fn read_store(&self) -> (u64, Result<Option<State>, StoreError>) {
        let seq = self.inner.reads.fetch_add(1, Ordering::Relaxed) + 1;
        let read = bounded(
            self.inner.cfg.store_timeout,
            self.inner.store.get(&self.inner.cfg.app),
        )
        .await;
        (seq, read)
    }

    /// Resolves once this gate's colour answers STOP (after any handover)
    /// on a known state; a cold gate that knows nothing yet waits to learn.
    pub async fn idle(&self) {
        loop {
            let notified = self.inner.changed.notified();
            let view = self.inner.view.load_full();
            match view.answer(self.inner.cfg.colour, Instant::now()) {
                Answer::Stop if view.state.is_none() => notified.await,
                Answer::Stop => return,
                Answer::Handover => {
                    let until = view.handover.map_or_else(Instant::now, |(_, t)| t);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(until.into()) => {}
                    }
                }
                Answer::Ok => notified.await,
            }
        }
    }
}

/// A store call bounded by `limit`; running out is a retryable outage.
pub(crate) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable {
            backend: "gate",
            message: format!("the store did not answer within {limit:?}"),
            retryable: true,
        })
    })
}

impl Inner {
    /// Folds a store read into the view. Never adopts a lower generation;
    /// never forgets a state because the store lost it.
    pub(crate) fn apply(&self, seq: u64, read: Result<Option<State>, StoreError>) {
        let mut newest = self
            .update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seq < *newest {
            // A newer read was applied while this one was in flight.
            return;
        }
        *newest = seq;
        let current = self.view.load_full();
        let mut next = (*current).clone();
        let now = Instant::now();
        let mut adopted = false;
        match read {
            Ok(Some(state)) => {
                next.store_error = None;
                match &current.state {
                    Some(known) if state.generation < known.generation => {
                        let msg = format!(
                            "the store is at generation {} ({} live) but this gate applied generation {}: \
                             keeping the last known state; if the store lost its data, restore it with \
                             `bg-ctl init --from-gate`",
                            state.generation, state.active, known.generation
                        );
                        self.raise(&mut next, msg);
                    }
                    Some(known)
                        if state.generation == known.generation && state.active != known.active =>
                    {
                        let msg = format!(
                            "the store says {} is live at generation {}, but this gate applied {} at that \
                             generation: two histories; keeping the last known state",
                            state.active, state.generation, known.active
                        );
                        self.raise(&mut next, msg);
                    }
                    Some(known) => {
                        if state.generation > known.generation {
                            adopted = true;
                            if known.active != state.active {
                                next.handover = Some((known.active, now + self.cfg.handover));
                            }
                        }
                        next.state = Some(state);
                        next.confirmed_at = Some(now);
                        next.alarm = None;
                        next.from_cache = false;
                    }
                    None => {
                        adopted = true;
                        next.state = Some(state);
                        next.confirmed_at = Some(now);
                        next.alarm = None;
                    }
                }
            }
            Ok(None) => {
                next.store_error = None;
                match &current.state {
                    Some(known) => {
                        let msg = format!(
                            "the store has no state for app {} but this gate applied generation {} ({} live): \
                             keeping it; restore the store with `bg-ctl init --from-gate`",
                            self.cfg.app, known.generation, known.active
                        );
                        self.raise(&mut next, msg);
                    }
                    None => next.confirmed_at = Some(now),
                }
            }
            Err(e) => {
                self.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if current.store_error.is_none() {
                    tracing::warn!(error = %e, "store unavailable; answering from the last known state");
                }
                next.store_error = Some(e.to_string());
            }
        }
        let save = match (&next.state, &self.cfg.cache_file) {
            (Some(state), Some(path)) if adopted => Some((path.clone(), state.clone())),
            _ => None,
        };
        let live = match &next.state {
            Some(state) if adopted => {
                tracing::info!(active = %state.active, generation = state.generation, "adopted state");
                Some((state.active, state.generation))
            }
            _ => None,
        };
        self.view.store(Arc::new(next));
        // Still under the lock, so the runner sees changes in view order.
        if let Some(seen) = live
            && self.cfg.on_change.is_some()
        {
            self.live.send_if_modified(|last| {
                let changed = last.is_none_or(|(active, _)| active != seen.0);
                // A newer generation of the same colour is kept for the
                // environment of a run still to come, without waking anyone.
                *last = Some(seen);
                changed
            });
        }
        drop(newest);
        self.changed.notify_waiters();
        // Off the async workers and outside the lock: an fsync can be slow.
        if let Some((path, state)) = save {
            let written = Arc::clone(&self.cache_written);
            let write = move || {
                let mut last = written
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if state.generation < *last {
                    return; // a newer state is already on disk
                }
                match crate::cache::save(&path, &state) {
                    Ok(()) => *last = state.generation,
                    Err(e) => tracing::warn!(error = %e, "cannot write the cache file"),
                }
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(write)),
                Err(_) => write(),
            }
        }
    }

    fn raise(&self, next: &mut View, msg: String) {
        if next.alarm.as_ref() != Some(&msg) {
            self.counters.alarms.fetch_add(1, Ordering::Relaxed);
            tracing::error!(alarm = %msg, "store disagrees with the gate");
        }
        next.alarm = Some(msg);
    }
}

/// The follower: hints plus polling, presence, and `--init`.
async fn follow(weak: Weak<Inner>) {
    let mut subscription = None;
    let mut last_presence: Option<Instant> = None;
    // When this colour started answering STOP, and whether it was drained since.
    let mut idle_since: Option<Instant> = None;
    let mut drained = false;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let gate = Gate { inner };
        let cfg = &gate.inner.cfg;

        if subscription.is_none() {
            subscription = bounded(cfg.store_timeout, gate.inner.store.subscribe(&cfg.app))
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "cannot subscribe to changes yet"))
                .ok();
        }

        let (seq, read) = gate.read_store().await;
        if let (Ok(None), Some(colour), None) = (&read, cfg.init, &gate.view().state) {
            initialise(&gate, colour).await;
            gate.refresh().await;
        } else {
            gate.inner.apply(seq, read);
        }

        let presence_every = cfg.presence_ttl / 3;
        if last_presence.is_none_or(|t| t.elapsed() >= presence_every) {
            let view = gate.view();
            let report = Presence::new(
                cfg.gate_id.clone(),
                cfg.colour,
                cfg.service_version.clone(),
                view.generation(),
            );
            match bounded(
                cfg.store_timeout,
                gate.inner
                    .store
                    .report_presence(&cfg.app, report, cfg.presence_ttl),
            )
            .await
            {
                Ok(()) => last_presence = Some(Instant::now()),
                Err(e) => tracing::debug!(error = %e, "cannot report presence"),
            }
        }

        if gate.view().state.is_some() && gate.answer(cfg.colour) == Answer::Stop {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if let Some(after) = cfg.drain_after
                && !drained
                && since.elapsed() >= after
            {
                drained = true;
                let asked = gate
                    .connections()
                    .drain(cfg.drain_batch, cfg.drain_interval);
                if asked > 0 {
                    tracing::info!(
                        asked,
                        "idle long enough: draining websockets to the live colour"
                    );
                }
            }
        } else {
            idle_since = None;
            drained = false;
        }

        let poll = cfg.poll_interval;
        // Wait for a hint or the next poll, without keeping the gate alive.
        let mut sub = subscription.take();
        drop(gate);
        tokio::select! {
            hint = async {
                match sub.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                if hint.is_none() {
                    sub = None; // the store closed it; subscribe again
                }
            }
            () = tokio::time::sleep(poll) => {}
        }
        subscription = sub;
    }
}

async fn initialise(gate: &Gate, colour: Colour) {
    let cfg = &gate.inner.cfg;
    let req = InitRequest::new(colour, cfg.gate_id.clone()).reason("bg-gate --init");
    match bounded(cfg.store_timeout, gate.inner.store.init(&cfg.app, req)).await {
        Ok(s) => tracing::info!(active = %s.active, "initialised the store"),
        Err(StoreError::AlreadyInitialised { current }) if current.active != colour => {
            tracing::warn!(
                active = %current.active,
                wanted = %colour,
                "the store was initialised meanwhile with another live colour; following it"
            );
        }
        Err(StoreError::AlreadyInitialised { .. }) => {}
        Err(e) => tracing::warn!(error = %e, "cannot initialise the store yet"),
    }
}

/// The on-change runner: pushes the live colour to the command, one run at
/// a time, skipping changes overtaken while a run was going.
async fn push_changes(
    command: String,
    app: AppName,
    colour: Colour,
    mut live: watch::Receiver<Option<(Colour, u64)>>,
) {
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    let mut pushed: Option<Colour> = None;
    let mut retry = FIRST_RETRY;
    loop {
        let latest = *live.borrow_and_update();
        let mut failed = false;
        if let Some((active, generation)) = latest
            && pushed != Some(active)
        {
            if run_on_change(&command, &app, colour, active, generation).await {
                pushed = Some(active);
                retry = FIRST_RETRY;
            } else {
                failed = true;
            }
        }
        let woke = if failed {
            let pause = retry;
            retry = (retry * 2).min(ON_CHANGE_TIMEOUT);
            tokio::select! {
                r = live.changed() => r,
                () = tokio::time::sleep(pause) => Ok(()),
            }
        } else {
            live.changed().await
        };
        if woke.is_err() {
            return; // the gate is gone
        }
    }
}

/// One run of the on-change command; whether it succeeded. Never logs the
/// command itself: it may carry credentials for a load balancer's API.
async fn run_on_change(
    command: &str,
    app: &AppName,
    colour: Colour,
    active: Colour,
    generation: u64,
) -> bool {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .env("BG_ACTIVE", active.to_string())
        .env("BG_GENERATION", generation.to_string())
        .env("BG_APP", app.as_str())
        .env("BG_COLOUR", colour.to_string())
        .env_remove("BG_TOKEN")
        .stdin(std::process::Stdio::null())
        // The gate's stdout is not a log; the command's output joins the log stream.
        .stdout(std::io::stderr());
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(error = %e, %active, generation, "cannot run the on-change command; retrying");
            return false;
        }
    };
    // Polled rather than awaited: the process API of std needs no extra
    // runtime feature, and a 20 ms lag does not matter for a reload.
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= ON_CHANGE_TIMEOUT => {
                let _ = child.kill();
                break Err(format!("still running after {ON_CHANGE_TIMEOUT:?}; killed"));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                let _ = child.kill();
                break Err(format!("cannot wait for it: {e}"));
            }
        }
    };
    if outcome.is_err() {
        // Reap it; after SIGKILL this returns at once.
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(status) if status.success() => {
            tracing::info!(%active, generation, took_ms, "on-change command done");
            true
        }
        Ok(status) => {
            tracing::error!(%active, generation, took_ms, %status, "the on-change command failed; retrying");
            false
        }
        Err(why) => {
            tracing::error!(%active, generation, took_ms, error = %why, "the on-change command failed; retrying");
            false
        }
    }
}
