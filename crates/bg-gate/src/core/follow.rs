//! The follower: the background task that keeps a gate's view current
//! (change hints plus a poll), reports its presence, initialises an empty
//! store when told to, and drains an idle colour's websockets.

use std::sync::{Arc, Weak};
use std::time::Instant;

use bg_state::{Colour, Error as StoreError, InitRequest, Presence};

use super::gate::{Gate, Inner, bounded};
use super::on_change::push_changes;
use super::view::Answer;

impl Gate {
    /// Starts following the store: a background task that subscribes to
    /// change hints, polls every `poll_interval`, reports presence, and
    /// initialises an empty store if told to. It stops when the last clone of
    /// the gate is dropped. With [`GateConfig::on_change`](super::GateConfig::on_change) set, a second task
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
        if let Some(oidc) = self.inner.auth.oidc_shared() {
            tokio::spawn(refresh_jwks(Arc::downgrade(oidc)));
        }
        if let Some(svc) = &self.inner.service {
            tokio::spawn(super::service::watch_service(Arc::downgrade(&self.inner)));
            if svc.cfg.drain_path.is_some() {
                // A drain forwarded before a restart may run on in the
                // service: once this colour is live, it is stopped.
                super::service::owe_stop(&self.inner, super::DRAIN_LASTS_AT_MOST);
            }
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(follow(weak))
    }
}

/// Loads the id_token verifier's key set again on its timer, until the
/// gate (and with it the verifier) is gone.
async fn refresh_jwks(weak: Weak<crate::auth::OidcVerifier>) {
    loop {
        let Some(interval) = weak.upgrade().map(|v| v.refresh_interval()) else {
            return;
        };
        tokio::time::sleep(interval).await;
        let Some(verifier) = weak.upgrade() else {
            return;
        };
        verifier.refresh_keys().await;
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
            let report = presence_report(&gate);
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
                // Goes on asking newcomers for as long as the colour is idle.
                let asked = gate.drain(crate::conns::Pace::Window(cfg.drain_pace), None);
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

/// How long after its last probe a source still counts among the load
/// balancers a presence report names.
const LB_SOURCE_RECENT_MS: u64 = 60_000;

/// What this gate reports of itself: its colour, version and generation,
/// how old its view is, its websockets, whether it drains, and the sources
/// that probed it within the last minute (newest first).
fn presence_report(gate: &Gate) -> Presence {
    let cfg = &gate.inner.cfg;
    let status = gate.status();
    let mut report = Presence::new(
        cfg.gate_id.clone(),
        cfg.colour,
        status.version,
        status.generation,
    );
    report.view_age_ms = Some(status.stale_ms);
    report.websockets = status.connections.websockets;
    report.draining = gate.connections().draining();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let recent = now_ms.saturating_sub(LB_SOURCE_RECENT_MS);
    for probe in status.probes.iter().rev().filter(|p| p.at_ms >= recent) {
        let Some(source) = probe.source.map(|ip| ip.to_string()) else {
            continue;
        };
        if report.lb_sources.len() < bg_state::MAX_PRESENCE_SOURCES
            && !report.lb_sources.contains(&source)
        {
            report.lb_sources.push(source);
        }
    }
    report
}

async fn initialise(gate: &Gate, colour: Colour) {
    let cfg = &gate.inner.cfg;
    let mut req = InitRequest::new(colour, cfg.gate_id.clone()).reason("bg-gate --init");
    // The colour made live runs what this gate reports, when it is this
    // gate's colour and the version is known: what a rollback after the
    // first release returns to.
    let version = gate.service_version();
    if colour == cfg.colour && bg_state::wire::is_known_version(&version) {
        req = req.version(version);
    }
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
