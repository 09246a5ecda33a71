//! The gate's view of the store, the answer it gives from it, and the fold
//! of a store read into it.

use std::time::{Duration, Instant};

use bg_state::{AppName, Colour, Error as StoreError, State};

/// The health answer for a colour: the same type `GET /bg/state` reports.
pub use bg_state::wire::GateAnswer as Answer;

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

/// A view after one store read was folded into it.
#[derive(Debug)]
pub(super) struct Folded {
    /// The view now.
    pub view: View,
    /// Whether the read brought a state to adopt: a higher generation, or
    /// the first one known.
    pub adopted: bool,
    /// An alarm the read raised that the view did not already hold.
    pub raised: Option<String>,
}

impl View {
    /// Folds a store read for `app`, made at `now`, into this view. Never
    /// adopts a lower generation; never forgets a state because the store
    /// lost it: both raise an alarm instead. A colour that loses live status
    /// answers OK for `handover` more.
    pub(super) fn fold(
        &self,
        read: Result<Option<State>, StoreError>,
        app: &AppName,
        handover: Duration,
        now: Instant,
    ) -> Folded {
        let mut next = self.clone();
        let mut adopted = false;
        let mut raised = None;
        match read {
            Ok(Some(state)) => {
                next.store_error = None;
                match &self.state {
                    Some(known) if state.generation < known.generation => {
                        let msg = format!(
                            "the store is at generation {} ({} live) but this gate applied generation {}: \
                             keeping the last known state; if the store lost its data, restore it with \
                             `bg-ctl init --force --from-gate GATE…` (it holds a state, so the restore \
                             must replace it)",
                            state.generation, state.active, known.generation
                        );
                        raised = next.raise(msg);
                    }
                    Some(known)
                        if state.generation == known.generation && state.active != known.active =>
                    {
                        let msg = format!(
                            "the store says {} is live at generation {}, but this gate applied {} at that \
                             generation: two histories; keeping the last known state",
                            state.active, state.generation, known.active
                        );
                        raised = next.raise(msg);
                    }
                    Some(known) => {
                        if state.generation > known.generation {
                            adopted = true;
                            if known.active != state.active {
                                next.handover = Some((known.active, now + handover));
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
                match &self.state {
                    Some(known) => {
                        let msg = format!(
                            "the store has no state for app {} but this gate applied generation {} ({} live): \
                             keeping it; restore the store with `bg-ctl init --from-gate`",
                            app, known.generation, known.active
                        );
                        raised = next.raise(msg);
                    }
                    None => next.confirmed_at = Some(now),
                }
            }
            Err(e) => next.store_error = Some(e.to_string()),
        }
        Folded {
            view: next,
            adopted,
            raised,
        }
    }

    /// Holds the alarm `msg`; returns it if it was not already held.
    fn raise(&mut self, msg: String) -> Option<String> {
        let new = self.alarm.as_ref() != Some(&msg);
        self.alarm = Some(msg.clone());
        new.then_some(msg)
    }
}

#[cfg(test)]
pub(super) mod tests;
