//! The rules of every operation, on one app's record held in process.
//!
//! The memory and file backends keep an [`AppRecord`] per app and run these
//! functions under their lock; the Redis backend runs the same rules as Lua
//! scripts. Every function checks everything before it mutates anything, so
//! a refused call leaves the record as it was.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Deployment;
use crate::model::{
    AppName, Event, EventKind, LastChange, Lease, LiveVersion, Millis, Presence, State,
};
use crate::store::{
    BreakLease, DeployRecord, InitRequest, LeaseRequest, SwitchOutcome, SwitchRequest,
};

/// Everything a store keeps for one app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppRecord {
    #[serde(default)]
    pub state: Option<State>,
    /// The highest generation this record ever held.
    #[serde(default)]
    pub high_water: u64,
    /// The last fence issued (the name is from when fences were counted).
    #[serde(default)]
    pub fence_seq: u64,
    /// The fence the last change of the live colour was made under: kept
    /// here, out of the state anyone reads, to recognise that change's retry.
    #[serde(default)]
    pub change_fence: Option<u64>,
    #[serde(default)]
    pub lease: Option<Lease>,
    /// Oldest first.
    #[serde(default)]
    pub history: VecDeque<Event>,
    #[serde(default)]
    pub gates: BTreeMap<String, Presence>,
}

/// What an operation did to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing changed.
    None,
    /// Changed, but not the state gates follow (a lease, a presence).
    Quiet,
    /// The state changed: persist and notify.
    Notify,
}

pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl AppRecord {
    fn live_lease(&self, now: Millis) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.expires_at_ms > now)
    }

    fn push_event(&mut self, event: Event, cap: usize) {
        self.history.push_back(event);
        while self.history.len() > cap {
            self.history.pop_front();
        }
    }

    /// The lease rule shared by switches and deploy records.
    fn check_fence(
        &self,
        app: &AppName,
        fence: Option<u64>,
        force: bool,
        now: Millis,
    ) -> Result<()> {
        if force {
            return Ok(());
        }
        let live = self.live_lease(now);
        match (fence, live) {
            (Some(f), Some(l)) if l.fence == f => Ok(()),
            (Some(f), _) => Err(Error::StaleFence {
                app: app.clone(),
                presented: f,
            }),
            (None, Some(l)) => Err(lease_held(app, l)),
            (None, None) => Ok(()),
        }
    }

    /// Makes `state` current after a change of the live colour, recording
    /// its last change as an event.
    fn commit(&mut self, state: State, kind: EventKind, cap: usize) -> State {
        let last = &state.last_change;
        self.push_event(
            Event {
                generation: state.generation,
                at_ms: last.at_ms,
                actor: last.actor.clone(),
                forced: last.forced,
                reason: last.reason.clone(),
                kind,
            },
            cap,
        );
        self.high_water = self.high_water.max(state.generation);
        self.state = Some(state.clone());
        state
    }

    pub fn get(&self) -> Option<State> {
        self.state.clone()
    }

    pub fn init(
        &mut self,
        app: &AppName,
        req: &InitRequest,
        now: Millis,
        cap: usize,
    ) -> Result<(State, Effect)> {
        req.validate()?;
        let old = self.state.as_ref();
        if let Some(current) = old
            && current.active == req.active
            && same_request(
                current.last_change.request_id.as_ref(),
                req.request_id.as_ref(),
            )
        {
            return Ok((current.clone(), Effect::None));
        }
        if let (Some(current), false) = (old, req.force) {
            return Err(Error::AlreadyInitialised {
                current: Box::new(current.clone()),
            });
        }
        let held = self.high_water.max(old.map_or(0, |s| s.generation));
        let generation = (held + 1).max(req.min_generation.unwrap_or(1));
        check_ceiling(generation)?;
        let state = State {
            app: app.clone(),
            active: req.active,
            generation,
            last_change: LastChange {
                actor: req.actor.clone(),
                at_ms: now,
                reason: req.reason.clone(),
                forced: req.force,
                request_id: req.request_id.clone(),
                fenced: false,
            },
            blue: old.and_then(|s| s.blue.clone()),
            green: old.and_then(|s| s.green.clone()),
            blue_live: old.and_then(|s| s.blue_live.clone()),
            green_live: old.and_then(|s| s.green_live.clone()),
        };
        let mut state = state;
        if let Some(version) = &req.version {
            *state.live_version_mut(req.active) = Some(LiveVersion {
                version: version.clone(),
                rolled_back: false,
            });
        }
        let kind = EventKind::Init { active: req.active };
        self.change_fence = None;
        Ok((self.commit(state, kind, cap), Effect::Notify))
    }

    pub fn switch(
        &mut self,
        app: &AppName,
        req: &SwitchRequest,
        now: Millis,
        cap: usize,
    ) -> Result<(SwitchOutcome, Effect)> {
        req.validate()?;
        let Some(current) = self.state.as_ref() else {
            return Err(Error::NotInitialised { app: app.clone() });
        };
        let unchanged = || SwitchOutcome {
            state: current.clone(),
            changed: false,
        };
        if is_retry_of_last(current, self.change_fence, req) {
            return Ok((unchanged(), Effect::None));
        }
        if let Some(expected) = req.expect_generation
            && expected != current.generation
        {
            return Err(Error::Conflict {
                expected,
                current: Box::new(current.clone()),
            });
        }
        if current.active == req.to {
            return Ok((unchanged(), Effect::None));
        }
        self.check_fence(app, req.fence, req.force, now)?;

        let from = current.active;
        let generation = current.generation + 1;
        check_ceiling(generation)?;
        let mut state = current.clone();
        state.active = req.to;
        state.generation = generation;
        state.last_change = LastChange {
            actor: req.actor.clone(),
            at_ms: now,
            reason: req.reason.clone(),
            forced: req.force,
            request_id: req.request_id.clone(),
            fenced: req.fence.is_some(),
        };
        state.apply_switch_to_live(req.to, req.rollback, req.leaving_version.as_deref());
        let kind = if req.rollback {
            EventKind::Rollback { from, to: req.to }
        } else {
            EventKind::Switch { from, to: req.to }
        };
        let state = self.commit(state, kind, cap);
        self.change_fence = req.fence;
        Ok((
            SwitchOutcome {
                state,
                changed: true,
            },
            Effect::Notify,
        ))
    }

    pub fn record_deploy(
        &mut self,
        app: &AppName,
        rec: &DeployRecord,
        now: Millis,
        cap: usize,
    ) -> Result<(State, Effect)> {
        rec.validate()?;
        let Some(current) = self.state.as_ref() else {
            return Err(Error::NotInitialised { app: app.clone() });
        };
        if current.deployment(rec.colour).is_some_and(|d| {
            d.version == rec.version
                && d.phase == rec.phase
                && same_request(d.request_id.as_ref(), rec.request_id.as_ref())
        }) {
            return Ok((current.clone(), Effect::None));
        }
        if current.active == rec.colour {
            return Err(Error::DeployToLive {
                app: app.clone(),
                colour: rec.colour,
            });
        }
        self.check_fence(app, rec.fence, rec.force, now)?;
        let mut state = current.clone();
        *state.deployment_mut(rec.colour) = Some(Deployment {
            version: rec.version.clone(),
            phase: rec.phase,
            at_ms: now,
            actor: rec.actor.clone(),
            request_id: rec.request_id.clone(),
        });
        self.push_event(
            Event {
                generation: state.generation,
                at_ms: now,
                actor: rec.actor.clone(),
                forced: rec.force,
                reason: None,
                kind: EventKind::Deploy {
                    colour: rec.colour,
                    version: rec.version.clone(),
                    phase: rec.phase,
                },
            },
            cap,
        );
        self.state = Some(state.clone());
        Ok((state, Effect::Notify))
    }

    pub fn history(&self, limit: usize) -> Vec<Event> {
        self.history.iter().rev().take(limit).cloned().collect()
    }

    /// Takes the lease with the fence `drawn` (at random, by the caller),
    /// or extends it for the same holder and owner.
    pub fn acquire_lease(
        &mut self,
        app: &AppName,
        req: &LeaseRequest,
        now: Millis,
        drawn: u64,
    ) -> Result<(Lease, Effect)> {
        req.validate()?;
        let expires_at_ms = now.saturating_add(ms(req.ttl));
        if let Some(live) = self.live_lease(now) {
            // The fence goes back only to whoever took it: the same holder
            // through another credential is someone else.
            if live.holder != req.holder || live.owner != req.owner {
                return Err(lease_held(app, live));
            }
            let mut lease = live.clone();
            lease.expires_at_ms = expires_at_ms;
            self.lease = Some(lease.clone());
            return Ok((lease, Effect::Quiet));
        }
        self.fence_seq = crate::fence::next(drawn, self.fence_seq);
        let lease = Lease {
            holder: req.holder.clone(),
            fence: self.fence_seq,
            owner: req.owner.clone(),
            acquired_at_ms: now,
            expires_at_ms,
        };
        self.lease = Some(lease.clone());
        Ok((lease, Effect::Quiet))
    }

    pub fn renew_lease(
        &mut self,
        app: &AppName,
        fence: u64,
        ttl: Duration,
        now: Millis,
    ) -> Result<(Lease, Effect)> {
        crate::store::check_ttl(ttl)?;
        match self.live_lease(now) {
            Some(l) if l.fence == fence => {
                let mut lease = l.clone();
                lease.expires_at_ms = now.saturating_add(ms(ttl));
                self.lease = Some(lease.clone());
                Ok((lease, Effect::Quiet))
            }
            _ => Err(Error::StaleFence {
                app: app.clone(),
                presented: fence,
            }),
        }
    }

    pub fn release_lease(&mut self, fence: u64, now: Millis) -> (bool, Effect) {
        match self.live_lease(now) {
            Some(l) if l.fence == fence => {
                self.lease = None;
                (true, Effect::Quiet)
            }
            _ => (false, Effect::None),
        }
    }

    pub fn lease(&self, now: Millis) -> Option<Lease> {
        self.live_lease(now).cloned()
    }

    pub fn break_lease(
        &mut self,
        req: &BreakLease,
        now: Millis,
        cap: usize,
    ) -> Result<(Option<Lease>, Effect)> {
        req.validate()?;
        let Some(broken) = self.live_lease(now).cloned() else {
            return Ok((None, Effect::None));
        };
        self.lease = None;
        self.push_event(
            Event {
                generation: self.state.as_ref().map_or(0, |s| s.generation),
                at_ms: now,
                actor: req.actor.clone(),
                forced: true,
                reason: req.reason.clone(),
                kind: EventKind::LeaseBroken {
                    holder: broken.holder.clone(),
                    fence: broken.fence,
                },
            },
            cap,
        );
        Ok((Some(broken), Effect::Quiet))
    }

    pub fn report_presence(
        &mut self,
        mut presence: Presence,
        ttl: Duration,
        now: Millis,
    ) -> Result<((), Effect)> {
        presence.validate()?;
        crate::store::check_ttl(ttl)?;
        if self.gates.get(&presence.gate_id).is_some_and(|p| {
            p.expires_at_ms > now
                && same_request(p.request_id.as_ref(), presence.request_id.as_ref())
        }) {
            return Ok(((), Effect::None));
        }
        presence.seen_at_ms = now;
        presence.expires_at_ms = now.saturating_add(ms(ttl));
        self.gates.retain(|_, p| p.expires_at_ms > now);
        self.gates.insert(presence.gate_id.clone(), presence);
        Ok(((), Effect::Quiet))
    }

    pub fn presences(&self, now: Millis) -> Vec<Presence> {
        self.gates
            .values()
            .filter(|p| p.expires_at_ms > now)
            .cloned()
            .collect()
    }
}

/// The refusal of someone who does not hold `live`: who does, until when,
/// never its fence.
fn lease_held(app: &AppName, live: &Lease) -> Error {
    Error::LeaseHeld {
        app: app.clone(),
        holder: live.holder.clone(),
        expires_at_ms: live.expires_at_ms,
    }
}

/// Refuses to go past [`crate::MAX_GENERATION`].
fn check_ceiling(n: u64) -> Result<()> {
    if n > crate::MAX_GENERATION {
        return Err(Error::invalid(
            "generation",
            format!("{n} would exceed the maximum {}", crate::MAX_GENERATION),
        ));
    }
    Ok(())
}

/// Whether a request carries the id a write was made under.
fn same_request(made: Option<&String>, asked: Option<&String>) -> bool {
    asked.is_some() && made == asked
}

/// Whether `req` repeats the switch that produced `current`, made under
/// `change_fence`.
fn is_retry_of_last(current: &State, change_fence: Option<u64>, req: &SwitchRequest) -> bool {
    let last = &current.last_change;
    if current.active != req.to {
        return false;
    }
    let same_request = req.request_id.is_some() && last.request_id == req.request_id;
    let same_fence = req.fence.is_some()
        && change_fence == req.fence
        && req
            .expect_generation
            .is_none_or(|e| e.checked_add(1) == Some(current.generation));
    same_request || same_fence
}

/// Milliseconds since the Unix epoch by this process's clock.
pub(crate) fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, ms)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::Colour;

    fn app() -> AppName {
        AppName::new("prop").unwrap()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Init(bool, bool, Option<u64>),
        Switch(bool, Option<u64>, bool, Option<u64>),
        Deploy(bool),
        Acquire(bool, bool, u64),
        Release(u64),
        Break,
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (any::<bool>(), any::<bool>(), proptest::option::of(1u64..50))
                .prop_map(|(a, f, m)| Op::Init(a, f, m)),
            (
                any::<bool>(),
                proptest::option::of(1u64..20),
                any::<bool>(),
                proptest::option::of(1u64..6)
            )
                .prop_map(|(c, e, f, fence)| Op::Switch(c, e, f, fence)),
            any::<bool>().prop_map(Op::Deploy),
            (any::<bool>(), any::<bool>(), 1u64..6).prop_map(|(h, o, d)| Op::Acquire(h, o, d)),
            (1u64..6).prop_map(Op::Release),
            Just(Op::Break),
            (0u64..2000).prop_map(Op::Tick),
        ]
    }

    fn colour(b: bool) -> Colour {
        if b { Colour::Blue } else { Colour::Green }
    }

    proptest! {
        /// Whatever sequence of calls arrives, the generation never goes
        /// down, moves by exactly one per change of the live colour, a refused
        /// call changes nothing, and a new lease never gets the fence of the
        /// one before. (Fences do not grow: they are drawn at random, and
        /// the store only ever checks one for equality.)
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..80)) {
            let app = app();
            let mut rec = AppRecord::default();
            let mut now = 1_000u64;
            for op in ops {
                let before = rec.clone();
                let result: Result<Effect> = match op {
                    Op::Init(a, force, min) => {
                        let mut req = InitRequest::new(colour(a), "p").force(force);
                        req.min_generation = min;
                        rec.init(&app, &req, now, 10).map(|(_, e)| e)
                    }
                    Op::Switch(c, expect, force, fence) => {
                        let mut req = SwitchRequest::new(colour(c), "p").force(force);
                        req.expect_generation = expect;
                        req.fence = fence;
                        rec.switch(&app, &req, now, 10).map(|(_, e)| e)
                    }
                    Op::Deploy(c) => rec
                        .record_deploy(&app, &DeployRecord::new(colour(c), "v1", crate::model::DeployPhase::Deploying, "p"), now, 10)
                        .map(|(_, e)| e),
                    Op::Acquire(h, o, drawn) => {
                        let mut req = LeaseRequest::new(if h { "a" } else { "b" }, Duration::from_millis(500));
                        if o {
                            req = req.owner("token:x");
                        }
                        rec.acquire_lease(&app, &req, now, drawn).map(|(_, e)| e)
                    }
                    Op::Release(f) => Ok(rec.release_lease(f, now).1),
                    Op::Break => rec.break_lease(&BreakLease { actor: "p".into(), reason: None }, now, 10).map(|(_, e)| e),
                    Op::Tick(d) => { now += d; Ok(Effect::None) }
                };
                match result {
                    Err(_) | Ok(Effect::None) => prop_assert_eq!(&rec, &before),
                    Ok(_) => {}
                }
                prop_assert!(rec.history.len() <= 10);
                if let Some(l) = &rec.lease
                    && before.lease.as_ref().is_none_or(|b| b.acquired_at_ms != l.acquired_at_ms)
                {
                    prop_assert!((1..=crate::MAX_GENERATION).contains(&l.fence));
                    prop_assert!(l.fence != before.fence_seq, "a new lease got the fence before it");
                    prop_assert_eq!(l.fence, rec.fence_seq);
                }
                prop_assert!(rec.high_water >= before.high_water, "the high-water mark went down");
                if let (Some(b), Some(a)) = (&before.state, &rec.state) {
                    prop_assert!(a.generation >= b.generation);
                    let forced_init = matches!(rec.history.back().map(|e| &e.kind), Some(EventKind::Init { .. }))
                        && rec.history != before.history;
                    if forced_init {
                        prop_assert!(a.generation > b.generation, "a forced init did not go above");
                    } else if a.active != b.active {
                        prop_assert!(a.generation == b.generation + 1);
                    }
                }
                if let Some(s) = &rec.state {
                    prop_assert!(s.generation <= rec.high_water);
                    prop_assert!(s.generation >= 1);
                }
            }
        }
    }
}
