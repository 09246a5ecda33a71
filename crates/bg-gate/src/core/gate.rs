//! The gate handle: its shared state, its view held for lock-free reads,
//! and the one place store reads are applied to that view.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bg_state::wire::{ConnectionCounts, GateStatus, StoreHealth};
use bg_state::{Colour, ColourStore, Error as StoreError, State, SwitchOutcome, SwitchRequest};
use tokio::sync::{Notify, watch};

use super::config::GateConfig;
use super::counters::{Counters, Counts};
use super::service::ServiceState;
use super::view::{Answer, Folded, View};
use crate::auth::{Auth, AuthError, Caller, Refusal, Scope};
use crate::conns::{Connections, Pace};
use crate::probes::ProbeLog;

/// A health gate for one colour of one app. Cheap to clone.
///
/// Build it with [`Gate::new`], start following the store with
/// [`Gate::start`], and serve [`Gate::public_router`] and
/// [`Gate::admin_router`].
#[derive(Clone)]
pub struct Gate {
    pub(super) inner: Arc<Inner>,
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

/// The gate's state, private to the core: the HTTP layer, the agent
/// responder and the runner go through [`Gate`]'s methods.
pub(super) struct Inner {
    pub(super) cfg: GateConfig,
    pub(super) store: Arc<dyn ColourStore>,
    pub(super) view: ArcSwap<View>,
    /// Serialises view updates (readers never take it), and holds the
    /// number of the newest read applied: a read that started before it
    /// finished after it, and is stale.
    update: Mutex<u64>,
    /// Numbers store reads in the order they start.
    reads: AtomicU64,
    /// Serialises cache-file writes and holds the generation last written,
    /// so two quick adoptions cannot leave the older state on disk.
    cache_written: Arc<Mutex<u64>>,
    pub(super) changed: Notify,
    pub(super) started: Instant,
    pub(super) counters: Counters,
    pub(super) auth: Auth,
    pub(super) probes: ProbeLog,
    conns: Connections,
    /// The generation of the view, for whoever waits for it to move (the
    /// `changes` long polls): all on this one broadcast, fed by the
    /// follower's one subscription.
    generation: watch::Sender<u64>,
    /// The colour the push model sends traffic to and the generation that
    /// made it so, for the on-change runner; receivers wake only when the
    /// colour changes.
    pub(super) live: watch::Sender<Option<(Colour, u64)>>,
    /// Sidecar mode: what the checker found out about the service.
    pub(super) service: Option<ServiceState>,
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
        cfg.drain_pace
            .check()
            .map_err(|reason| bad("drain_pace", reason))?;
        if let Some(service) = &cfg.service {
            service
                .check()
                .map_err(|(field, reason)| GateError::Config { field, reason })?;
        }
        let mut view = View::default();
        if let Some(path) = &cfg.cache_file {
            match super::cache::load(path, &cfg.app) {
                Ok(Some(state)) => {
                    tracing::info!(generation = state.generation, active = %state.active, "answering from the cached state until the store answers");
                    view.state = Some(state);
                    view.from_cache = true;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "ignoring the cache file"),
            }
        }
        let (live, _) = watch::channel(None);
        let (generation, _) = watch::channel(view.generation());
        let inner = Inner {
            service: cfg.service.clone().map(ServiceState::new),
            live,
            probes: ProbeLog::new(cfg.probe_log, cfg.lb_sources.clone()),
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
            generation,
        };
        // A state from the cache counts as known: the first run of the
        // on-change command pushes it even while the store is down.
        inner.publish_pushed(&inner.view.load());
        Ok(Gate {
            inner: Arc::new(inner),
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

    /// What the store's view says of `colour` now (live, in its handover,
    /// or idle), before the service beside a sidecar gate is considered:
    /// whether this colour's websockets should move. What a load balancer
    /// is told is [`Gate::verdict`].
    #[must_use]
    pub fn answer(&self, colour: Colour) -> Answer {
        self.inner.view.load().answer(colour, Instant::now())
    }

    /// Asks this colour's websockets to move to the live colour at `pace`,
    /// including those that open while it runs, for `lasting` (`None`: for
    /// as long as the colour is idle). Stops as soon as this colour answers
    /// OK again. Returns how many open websockets were not asked yet.
    pub fn drain(&self, pace: Pace, lasting: Option<Duration>) -> usize {
        let weak = Arc::downgrade(&self.inner);
        let colour = self.inner.cfg.colour;
        self.inner.conns.drain(pace, lasting, move || {
            weak.upgrade()
                .is_some_and(|inner| !inner.view.load().answer(colour, Instant::now()).is_ok())
        })
    }

    /// What this gate reports at `GET /bg/state`: its colour and version,
    /// its answer, the view it answers from and how old that is, the store's
    /// health, its connections and the load balancer's recent probes.
    #[must_use]
    pub fn status(&self) -> GateStatus {
        let now = Instant::now();
        let view = self.view();
        let cfg = self.config();
        let answer = view.answer(cfg.colour, now);
        let verdict = self.inner.verdict_on(&view, cfg.colour, now);
        let handover_ms_left = match (answer, view.handover) {
            (Answer::Handover, Some((_, until))) => {
                Some(millis(until.saturating_duration_since(now)))
            }
            _ => None,
        };
        let service = self.inner.service.as_ref();
        GateStatus {
            app: cfg.app.clone(),
            gate_id: cfg.gate_id.clone(),
            colour: cfg.colour,
            version: self.service_version(),
            answer,
            live: verdict.is_ok(),
            active: view.state.as_ref().map(|s| s.active),
            generation: verdict.generation(),
            handover_ms_left,
            stale_ms: verdict.stale_ms(),
            from_cache: view.from_cache,
            strict: cfg.strict,
            store: StoreHealth {
                backend: self.store().backend().to_owned(),
                healthy: view.store_error.is_none(),
                error: view.store_error.clone(),
            },
            alarm: view.alarm.clone(),
            connections: ConnectionCounts {
                websockets: match service {
                    Some(s) => s
                        .open_websockets()
                        .map(|n| n + self.connections().websockets()),
                    None => Some(self.connections().websockets()),
                },
                requests: self.connections().requests(),
                arrived_while_draining: self.connections().arrived_while_draining(),
            },
            probes: self.inner.probes.snapshot(),
            named_lb_sources: !cfg.lb_sources.is_empty(),
            state: view.state.clone(),
            service: service.map(ServiceState::health),
        }
    }

    /// The version this gate reports: the service's own, read from it in
    /// sidecar mode once it has answered, else `service_version`.
    #[must_use]
    pub fn service_version(&self) -> String {
        self.inner
            .service
            .as_ref()
            .and_then(ServiceState::version)
            .unwrap_or_else(|| self.inner.cfg.service_version.clone())
    }

    /// Whether the service is up: always, but in sidecar mode, where the
    /// checker decides. While it is not, the gate's own colour answers
    /// `503 DOWN` whatever the store says.
    #[must_use]
    pub fn service_up(&self) -> bool {
        self.inner.service_up()
    }

    /// In sidecar mode with a drain route: forwards a drain to the service
    /// and returns how many websockets it says it asked. `None` without one.
    ///
    /// # Errors
    /// The service did not take the drain; the message holds no URL.
    pub async fn drain_service(
        &self,
        pace: Pace,
        lasting: Duration,
    ) -> Option<Result<u64, String>> {
        let svc = self.inner.service.as_ref()?;
        let path = svc.cfg.drain_path.as_ref()?;
        if !svc.is_up() {
            // A service that is down holds no websockets to move.
            return Some(Ok(0));
        }
        // The service takes batches: the window's pace for the websockets
        // it holds now (newcomers are asked at that pace too).
        let (batch, pause) = match pace {
            Pace::Batches { batch, pause } => (batch, pause),
            Pace::Window(p) => p.as_batches(svc.websockets().unwrap_or(0)),
        };
        let asked = svc.drain(path, batch, pause, lasting).await;
        if asked.is_ok() {
            // The service cannot tell when this colour is live again: stop
            // its drain then (`timeout_ms` 0), as the gate stops its own.
            super::service::owe_stop(&self.inner, lasting);
        }
        Some(asked)
    }

    /// Re-reads the token file (on SIGHUP); `Ok(false)` if there is none.
    ///
    /// # Errors
    /// If the file is unreadable or malformed; the tokens in force stay.
    pub fn reload_tokens(&self) -> Result<bool, AuthError> {
        self.inner.auth.reload()
    }

    /// Who the text of an `Authorization` header names, if that caller's
    /// scope covers `needed`; a refusal is counted.
    pub(crate) async fn authorise(
        &self,
        authorization: Option<&str>,
        needed: Scope,
    ) -> Result<Caller, Refusal> {
        let caller = self
            .inner
            .auth
            .caller(authorization)
            .await
            .inspect_err(|_| self.inner.counters.auth_refused())?;
        self.require(&caller, needed)?;
        Ok(caller)
    }

    /// Refuses, counted, a `caller` whose scope does not cover `needed`.
    pub(crate) fn require(&self, caller: &Caller, needed: Scope) -> Result<(), Refusal> {
        if caller.scope.allows(needed) {
            return Ok(());
        }
        tracing::info!(actor = %caller.actor, scope = %caller.scope, %needed, "write refused: scope");
        self.inner.counters.auth_refused();
        Err(Refusal::NeedsAdmin)
    }

    /// Switches this gate's app in the store, within the store timeout; a
    /// switch that changed the live colour is counted, and the view catches
    /// up at once.
    pub(crate) async fn switch(&self, request: SwitchRequest) -> Result<SwitchOutcome, StoreError> {
        let cfg = &self.inner.cfg;
        let out = bounded(
            cfg.store_timeout,
            self.inner.store.switch(&cfg.app, request),
        )
        .await?;
        if out.changed {
            self.inner.counters.switched();
        }
        self.refresh().await;
        Ok(out)
    }

    /// The counters `/metrics` shows, now.
    pub(crate) fn counts(&self) -> Counts {
        self.inner.counters.snapshot()
    }

    /// The generation the view answers from, as a receiver that wakes each
    /// time the view adopts another one: what the `changes` long polls of
    /// the gate's own app wait on, so that none needs a store subscription.
    pub(crate) fn generations(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// The connection tracker of this gate.
    #[must_use]
    pub fn connections(&self) -> &Connections {
        &self.inner.conns
    }

    /// Reads the store once and updates the view. The follower does this on
    /// every hint and poll; call it to catch up at once (after a switch).
    pub async fn refresh(&self) {
        let (seq, read) = self.read_store().await;
        self.inner.apply(seq, read);
    }

    /// Reads the store, numbered so that a slow read cannot override a newer one.
    pub(super) async fn read_store(&self) -> (u64, Result<Option<State>, StoreError>) {
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
    /// Applies store read number `seq` to the view, unless a newer read
    /// was applied first: folds it in ([`View::fold`] holds the rules),
    /// counts and logs what it raised, and on adoption wakes the on-change
    /// runner and writes the cache file.
    pub(super) fn apply(&self, seq: u64, read: Result<Option<State>, StoreError>) {
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
        let failed = read.is_err();
        // A refusal of the configuration (an untrusted certificate) is no
        // outage that passes: say so as an error, not as a warning.
        let misconfigured = matches!(read, Err(StoreError::InvalidInput(_)));
        let Folded {
            view: next,
            adopted,
            raised,
        } = current.fold(read, &self.cfg.app, self.cfg.handover, Instant::now());
        if let Some(alarm) = &raised {
            self.counters.alarm();
            tracing::error!(alarm = %alarm, "store disagrees with the gate");
        }
        if failed {
            self.counters.store_error();
            match (&current.store_error, &next.store_error) {
                (None, Some(e)) if misconfigured => tracing::error!(
                    error = %e,
                    "the store cannot be used as configured; fix the configuration (answering from the last known state meanwhile)"
                ),
                (None, Some(e)) => {
                    tracing::warn!(error = %e, "store unavailable; answering from the last known state")
                }
                _ => {}
            }
        }
        let save = match (&next.state, &self.cfg.cache_file) {
            (Some(state), Some(path)) if adopted => Some((path.clone(), state.clone())),
            _ => None,
        };
        if let Some(state) = &next.state
            && adopted
        {
            tracing::info!(active = %state.active, generation = state.generation, "adopted state");
        }
        let generation = next.generation();
        // Still under the lock, so the runner sees changes in view order.
        self.publish_pushed(&next);
        self.view.store(Arc::new(next));
        self.generation.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
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
                match super::cache::save(&path, &state) {
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
}

impl Inner {
    /// Whether the service is up: always, but in sidecar mode, where the
    /// checker decides.
    pub(super) fn service_up(&self) -> bool {
        self.service.as_ref().is_none_or(ServiceState::is_up)
    }

    /// Tells the on-change runner the colour the push model sends traffic
    /// to on `view`, waking it only when that colour changes. With no such
    /// colour the last one stands: there is nothing else to push.
    pub(super) fn publish_pushed(&self, view: &View) {
        if self.cfg.on_change.is_none() {
            return;
        }
        let Some(seen) = self.pushed_on(view) else {
            return;
        };
        self.live.send_if_modified(|last| {
            let changed = last.is_none_or(|(colour, _)| colour != seen.0);
            // A newer generation of the same colour is kept for the
            // environment of a run still to come, without waking anyone.
            *last = Some(seen);
            changed
        });
    }

    /// The service beside a sidecar gate came up or went down: the colour
    /// the push model sends traffic to may have changed with it.
    pub(super) fn service_changed(&self) {
        // Under the view's lock, so the runner sees this in order with
        // the view's changes.
        let _order = self
            .update
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.publish_pushed(&self.view.load());
    }
}

/// A duration in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
