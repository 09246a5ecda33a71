//! The one decision: what the gate tells a load balancer about a colour.
//! Every front end asks here — the health routes, the agent check, the
//! push model, `/bg/state` and `/metrics` — and only renders the answer,
//! so no two of them can drift apart. A load balancer's check is counted
//! and logged here too, whichever front end received it.

use std::net::IpAddr;
use std::time::Instant;

use bg_state::Colour;

use super::gate::{Gate, Inner};
use super::view::{Answer, View};

/// What the gate tells a load balancer about a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VerdictKind {
    /// Live: send it traffic.
    Ok,
    /// It lost live status moments ago and still takes traffic while the
    /// load balancer marks the new colour up (make-before-break).
    Handover,
    /// Idle, or nothing known yet: send it nothing.
    Stop,
    /// Sidecar mode: the service beside this gate fails its health checks,
    /// whatever the store says.
    Down,
}

impl VerdictKind {
    /// Every kind, in the order `/metrics` lists them.
    pub const ALL: [VerdictKind; 4] = [
        VerdictKind::Ok,
        VerdictKind::Handover,
        VerdictKind::Stop,
        VerdictKind::Down,
    ];

    /// Its name, as `bg_gate_answers_total{answer=…}` gives it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Ok => "ok",
            VerdictKind::Handover => "handover",
            VerdictKind::Stop => "stop",
            VerdictKind::Down => "down",
        }
    }
}

/// The gate's decision for one colour at one moment, with the view it was
/// made from (its generation and staleness, which the health routes put in
/// headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    kind: VerdictKind,
    generation: u64,
    stale_ms: u64,
}

impl Verdict {
    /// What the load balancer is told.
    #[must_use]
    pub fn kind(self) -> VerdictKind {
        self.kind
    }

    /// Whether the colour takes traffic: live, or in its handover.
    #[must_use]
    pub fn is_ok(self) -> bool {
        matches!(self.kind, VerdictKind::Ok | VerdictKind::Handover)
    }

    /// The verdict as the probe log records it: `Down` is a `Stop` there,
    /// since either takes the server out of rotation.
    #[must_use]
    pub fn answer(self) -> Answer {
        match self.kind {
            VerdictKind::Ok => Answer::Ok,
            VerdictKind::Handover => Answer::Handover,
            VerdictKind::Stop | VerdictKind::Down => Answer::Stop,
        }
    }

    /// The generation of the state it was decided from, 0 when none is known.
    #[must_use]
    pub fn generation(self) -> u64 {
        self.generation
    }

    /// Milliseconds since the store last confirmed that state.
    #[must_use]
    pub fn stale_ms(self) -> u64 {
        self.stale_ms
    }
}

/// The front end a load balancer's check came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Via {
    /// The health routes: `/balancer-keepalive-check`, `/bg/check/{colour}`.
    Http,
    /// The HAProxy `agent-check` responder.
    Agent,
}

impl Via {
    /// Every front end, in the order `/metrics` lists them.
    pub const ALL: [Via; 2] = [Via::Http, Via::Agent];

    /// Its name, as `bg_gate_answers_total{via=…}` gives it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::Agent => "agent",
        }
    }
}

/// A load balancer's check of a colour, as a front end received it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LbCheck {
    /// The colour asked about.
    pub colour: Colour,
    /// Where the check came from, when the server knows.
    pub source: Option<IpAddr>,
    /// The front end that received it.
    pub via: Via,
}

impl LbCheck {
    /// A check of `colour` from `source` through `via`.
    #[must_use]
    pub fn new(colour: Colour, source: Option<IpAddr>, via: Via) -> Self {
        LbCheck {
            colour,
            source,
            via,
        }
    }
}

/// The rule itself: the service beside a sidecar gate, when down, takes
/// the gate's own colour out whatever the store says; otherwise the view
/// decides.
fn decide(view: &View, colour: Colour, own: Colour, service_up: bool, now: Instant) -> VerdictKind {
    if colour == own && !service_up {
        return VerdictKind::Down;
    }
    match view.answer(colour, now) {
        Answer::Ok => VerdictKind::Ok,
        Answer::Handover => VerdictKind::Handover,
        Answer::Stop => VerdictKind::Stop,
    }
}

/// The colour the push model sends traffic to: the one whose verdict is
/// `Ok` (not one in its handover: a pushed load balancer moves at once),
/// with the generation that made it so. `None` while no colour is: nothing
/// known yet, or this gate's own live colour down.
fn pushed(view: &View, own: Colour, service_up: bool, now: Instant) -> Option<(Colour, u64)> {
    Colour::ALL
        .into_iter()
        .find(|&c| decide(view, c, own, service_up, now) == VerdictKind::Ok)
        .map(|c| (c, view.generation()))
}

impl Inner {
    /// The verdict for `colour` on `view` at `now`.
    pub(super) fn verdict_on(&self, view: &View, colour: Colour, now: Instant) -> Verdict {
        Verdict {
            kind: decide(view, colour, self.cfg.colour, self.service_up(), now),
            generation: view.generation(),
            stale_ms: view.stale_ms(now, self.started),
        }
    }

    /// The colour the push model sends traffic to on `view` (see
    /// [`pushed`]).
    pub(super) fn pushed_on(&self, view: &View) -> Option<(Colour, u64)> {
        pushed(view, self.cfg.colour, self.service_up(), Instant::now())
    }
}

impl Gate {
    /// What `colour` is told now: the one decision every front end
    /// renders. Records nothing: for reads that are not a load balancer's
    /// check (`/bg/state`, `/metrics`, the push model); a check goes
    /// through [`Gate::answer_check`].
    #[must_use]
    pub fn verdict(&self, colour: Colour) -> Verdict {
        let inner = &*self.inner;
        inner.verdict_on(&inner.view.load(), colour, Instant::now())
    }

    /// Answers a load balancer's check: [`Gate::verdict`], counted in
    /// `bg_gate_answers_total` by kind and front end, and logged in the
    /// probe log (unless `lb_sources` names the load balancers and the
    /// check's source is not one of them). Takes no lock shared with other
    /// checks, and never waits on the store.
    pub fn answer_check(&self, check: LbCheck) -> Verdict {
        let verdict = self.verdict(check.colour);
        let inner = &*self.inner;
        inner.counters.answered(check.via, verdict.kind);
        inner
            .probes
            .record(check.source, check.colour, verdict.answer());
        verdict
    }
}

#[cfg(test)]
mod tests;
