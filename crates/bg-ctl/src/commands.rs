//! The commands other than `deploy`, written once against the store trait.

use std::collections::BTreeMap;

use bg_state::{
    AppName, BreakLease, Colour, ColourStore, Error as StoreError, Event, InitRequest, Lease,
    Presence, State, SwitchRequest, format_millis,
};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, RestoreRefused, RollbackRefused};
use crate::gates::{GateStatus, Gates};
use crate::readiness::{self, NotYet, Readiness};

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The app.
    pub app: AppName,
    /// Its state, `None` if never initialised.
    pub state: Option<State>,
    /// The deploy lease, if held.
    pub lease: Option<Lease>,
    /// Gates that reported their presence.
    pub gates: Vec<Presence>,
    /// What each named gate URL answers (or why it could not be asked).
    pub probed: Vec<ProbedGate>,
}

/// One gate URL asked by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbedGate {
    /// The colour it was named for.
    pub colour: Colour,
    /// Its URL.
    pub url: String,
    /// Its report.
    pub report: Option<GateStatus>,
    /// Why it could not be asked.
    pub error: Option<String>,
}

/// `status`.
///
/// # Errors
/// When the store cannot be read.
pub async fn status(
    store: &dyn ColourStore,
    gates: &dyn Gates,
    app: &AppName,
    urls: &BTreeMap<Colour, Vec<String>>,
) -> CtlResult<Status> {
    let state = store.get(app).await?;
    let lease = store.lease(app).await?;
    let presences = store.presences(app).await?;
    let mut probed = Vec::new();
    for (colour, list) in urls {
        for url in list {
            let (report, error) = match gates.report(url).await {
                Ok(r) => (Some(r), None),
                Err(e) => (None, Some(e.to_string())),
            };
            probed.push(ProbedGate {
                colour: *colour,
                url: crate::gates::redact(url),
                report,
                error,
            });
        }
    }
    Ok(Status {
        app: app.clone(),
        state,
        lease,
        gates: presences,
        probed,
    })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(s) = &self.state else {
            return writeln!(
                f,
                "app {}: not initialised (bg-ctl init --active COLOUR)",
                self.app
            );
        };
        writeln!(
            f,
            "app {}: {} is live at generation {}",
            self.app, s.active, s.generation
        )?;
        let lc = &s.last_change;
        writeln!(
            f,
            "  last change: {} by {} at {}{}{}",
            if lc.forced { "forced" } else { "made" },
            lc.actor,
            format_millis(lc.at_ms),
            lc.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default(),
            lc.fence.map(|f| format!(", fence {f}")).unwrap_or_default(),
        )?;
        for colour in Colour::ALL {
            match s.deployment(colour) {
                Some(d) => writeln!(
                    f,
                    "  {colour:<5}: {} {} by {} at {}",
                    d.phase,
                    d.version,
                    d.actor,
                    format_millis(d.at_ms)
                )?,
                None => writeln!(f, "  {colour:<5}: no deploy recorded")?,
            }
        }
        match &self.lease {
            Some(l) => writeln!(
                f,
                "  lease: held by {} (fence {}) until {}",
                l.holder,
                l.fence,
                format_millis(l.expires_at_ms)
            )?,
            None => writeln!(f, "  lease: free")?,
        }
        for p in &self.gates {
            writeln!(
                f,
                "  gate {} ({}): runs {}, applied generation {}, seen {}",
                p.gate_id,
                p.colour,
                p.service_version,
                p.applied_generation,
                format_millis(p.seen_at_ms)
            )?;
        }
        for g in &self.probed {
            match (&g.report, &g.error) {
                (Some(r), _) => writeln!(
                    f,
                    "  {} ({}): answers {}, runs {}, generation {}, view {} ms old{}",
                    g.url,
                    g.colour,
                    r.answer.as_str().to_uppercase(),
                    r.version,
                    r.generation,
                    r.stale_ms,
                    r.alarm
                        .as_deref()
                        .map(|a| format!(", ALARM: {a}"))
                        .unwrap_or_default()
                )?,
                (None, e) => writeln!(
                    f,
                    "  {} ({}): unreachable: {}",
                    g.url,
                    g.colour,
                    e.as_deref().unwrap_or("?")
                )?,
            }
        }
        Ok(())
    }
}

/// `init --active COLOUR`.
///
/// # Errors
/// As the store's `init`.
pub async fn init(
    store: &dyn ColourStore,
    app: &AppName,
    active: Colour,
    actor: &str,
    force: bool,
    reason: Option<String>,
) -> CtlResult<State> {
    let mut req = InitRequest::new(active, actor).force(force);
    req.reason = reason;
    Ok(store.init(app, req).await?)
}

/// `init --from-gate URL…`: restore the colour the gates serve, above every
/// generation they know. Refused if any named gate cannot be reached, or
/// if they disagree on the live colour at their highest generation.
///
/// # Errors
/// [`CtlError::Unreachable`] for a gate that does not answer,
/// [`CtlError::Restore`] when gates disagree or know nothing, or the
/// store's refusal.
pub async fn init_from_gates(
    store: &dyn ColourStore,
    gates: &dyn Gates,
    app: &AppName,
    urls: &[String],
    actor: &str,
    force: bool,
) -> CtlResult<State> {
    if urls.is_empty() {
        return Err(CtlError::Usage(
            "init --from-gate needs at least one gate URL".into(),
        ));
    }
    let mut reports = Vec::new();
    for url in urls {
        reports.push((url, gates.report(url).await?));
    }
    let top = reports.iter().map(|(_, r)| r.generation).max().unwrap_or(0);
    let actives: Vec<Colour> = reports
        .iter()
        .filter(|(_, r)| r.generation == top)
        .filter_map(|(_, r)| r.active)
        .collect();
    let Some(&active) = actives.first() else {
        return Err(CtlError::Restore(RestoreRefused::NothingKnown));
    };
    if actives.iter().any(|c| *c != active) {
        return Err(CtlError::Restore(RestoreRefused::Disagree(top)));
    }
    let req = InitRequest::new(active, actor)
        .force(force)
        .min_generation(top + 1)
        .reason(format!(
            "restored from {} gate(s) at generation {top}",
            reports.len()
        ));
    Ok(store.init(app, req).await?)
}

/// `switch`: to `to` (default: the idle colour), refused while a gate is
/// ahead of the store.
///
/// # Errors
/// As the store's `switch`, or [`CtlError::GateAhead`].
pub async fn switch(
    store: &dyn ColourStore,
    app: &AppName,
    to: Option<Colour>,
    expect: Option<u64>,
    actor: &str,
    reason: Option<String>,
    force: bool,
) -> CtlResult<bg_state::SwitchOutcome> {
    let state = store
        .get(app)
        .await?
        .ok_or_else(|| StoreError::NotInitialised { app: app.clone() })?;
    readiness::none_ahead(&store.presences(app).await?, state.generation)?;
    let mut req = SwitchRequest::new(to.unwrap_or(state.idle()), actor).force(force);
    req.expect_generation = Some(expect.unwrap_or(state.generation));
    req.reason = reason;
    Ok(store.switch(app, req).await?)
}

/// `rollback`: make the previous colour live again, only if its gates still
/// run the version it last served live and answer with a fresh view.
///
/// Safe to retry: the release it takes out of service is marked rolled
/// back, so a retry (or a second rollback) finds it so, changes nothing and
/// answers `changed: false`; it never makes that release live again.
///
/// # Errors
/// [`CtlError::RollbackRefused`] saying why, or the store's refusal.
pub async fn rollback(
    store: &dyn ColourStore,
    gates: &dyn Gates,
    app: &AppName,
    urls: &BTreeMap<Colour, Vec<String>>,
    actor: &str,
    reason: Option<String>,
) -> CtlResult<bg_state::SwitchOutcome> {
    let state = store
        .get(app)
        .await?
        .ok_or_else(|| StoreError::NotInitialised { app: app.clone() })?;
    readiness::none_ahead(&store.presences(app).await?, state.generation)?;
    let previous = state.idle();
    let refused = CtlError::RollbackRefused;
    // The target is what the previous colour last served live, not its
    // deploy record: that may be a release that failed, never went live
    // (--no-switch), or was itself rolled back.
    let Some(served) = state.live_version(previous) else {
        return Err(refused(RollbackRefused::NothingRecorded(previous)));
    };
    if served.rolled_back {
        // The rollback that took `previous` out of service is the last
        // change: this is a retry of it (its answer was lost), or a second
        // one. Either way it is done, and the live colour stays.
        return Ok(bg_state::SwitchOutcome {
            state,
            changed: false,
        });
    }
    let want = served.version.clone();
    let urls = urls.get(&previous).map_or(&[][..], Vec::as_slice);
    can_return_to(store, gates, app, urls, previous, &want, state.generation).await?;
    let mut req = SwitchRequest::new(previous, actor)
        .expect_generation(state.generation)
        .rollback(true);
    req.reason = Some(reason.unwrap_or_else(|| format!("rollback to {want}")));
    Ok(store.switch(app, req).await?)
}

/// What `rollback` checks before it makes `colour` live again, and the
/// switch back after a failed `--verify` too: its gates (at `urls`, or
/// else their presence reports) answer, run `want`, and follow the store
/// at `generation`.
///
/// # Errors
/// [`CtlError::RollbackRefused`] saying why it cannot be returned to, or
/// the store's failure.
pub(crate) async fn can_return_to(
    store: &dyn ColourStore,
    gates: &dyn Gates,
    app: &AppName,
    urls: &[String],
    colour: Colour,
    want: &str,
    generation: u64,
) -> CtlResult<()> {
    let refused = CtlError::RollbackRefused;
    let mut checked = 0;
    for url in urls {
        let r = gates.report(url).await.map_err(|e| {
            refused(RollbackRefused::GateSilent {
                colour,
                source: Box::new(e),
            })
        })?;
        match readiness::runs_version(&r, url, want, generation, None) {
            Readiness::Ready => checked += 1,
            Readiness::Pending(NotYet::Runs { version, .. }) => {
                return Err(refused(RollbackRefused::RunsOther {
                    colour,
                    runs: version,
                    want: want.to_owned(),
                }));
            }
            Readiness::Pending(_) => {
                return Err(refused(RollbackRefused::NotFollowing {
                    colour,
                    url: crate::gates::redact(url),
                    generation: r.generation,
                    store: generation,
                }));
            }
        }
    }
    if checked == 0 {
        let presences = store.presences(app).await?;
        match readiness::presences_run(&presences, colour, want, generation) {
            Readiness::Ready => {}
            Readiness::Pending(NotYet::PresenceLags {
                gate,
                version,
                generation: applied,
            }) => {
                return Err(refused(RollbackRefused::PresenceLags {
                    colour,
                    gate,
                    runs: version,
                    generation: applied,
                    want: want.to_owned(),
                    store: generation,
                }));
            }
            Readiness::Pending(_) => return Err(refused(RollbackRefused::NoGate(colour))),
        }
    }
    Ok(())
}

/// One history line.
#[must_use]
pub fn describe(e: &Event) -> String {
    let what = &e.kind;
    format!(
        "{}  gen {:>4}  {:<28} {what}{}{}",
        format_millis(e.at_ms),
        e.generation,
        e.actor,
        if e.forced { " [forced]" } else { "" },
        e.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// `lease break`.
///
/// # Errors
/// As the store's `break_lease`.
pub async fn break_lease(
    store: &dyn ColourStore,
    app: &AppName,
    actor: &str,
    reason: Option<String>,
) -> CtlResult<Option<Lease>> {
    Ok(store
        .break_lease(
            app,
            BreakLease {
                actor: actor.to_owned(),
                reason,
            },
        )
        .await?)
}

#[cfg(test)]
mod tests;
