//! `rollback`: the previous colour live again, only where it can return to.

use std::collections::BTreeMap;
use std::fmt;

use bg_state::{
    AppName, Colour, ColourStore, Error as StoreError, State, SwitchOutcome, SwitchRequest,
};
use serde::Serialize;

use crate::error::{CtlError, CtlResult, RollbackRefused};
use crate::gates::Gates;
use crate::output::{Render, to_json};
use crate::readiness::{self, NotYet, Readiness};

/// What `rollback` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RolledBack {
    /// The state after it.
    pub state: State,
    /// `false` when the release it would take out of service had been
    /// rolled back already (a retry, or a second rollback).
    pub changed: bool,
}

impl From<SwitchOutcome> for RolledBack {
    fn from(SwitchOutcome { state, changed }: SwitchOutcome) -> Self {
        RolledBack { state, changed }
    }
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
) -> CtlResult<RolledBack> {
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
        return Ok(RolledBack {
            state,
            changed: false,
        });
    }
    let want = served.version.clone();
    let urls = urls.get(&previous).map_or(&[][..], Vec::as_slice);
    can_return_to(store, gates, app, urls, previous, &want, state.generation).await?;
    let mut req = SwitchRequest::new(previous, actor)
        .expect_generation(state.generation)
        .rollback(true)
        .request_id(super::request_id("rollback"));
    req.reason = Some(reason.unwrap_or_else(|| format!("rollback to {want}")));
    Ok(super::surely(|| store.switch(app, req.clone()))
        .await?
        .into())
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

impl Render for RolledBack {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let s = &self.state;
        if self.changed {
            writeln!(
                out,
                "rolled back: {} is live at generation {}",
                s.active, s.generation
            )
        } else {
            writeln!(
                out,
                "already rolled back: {} was rolled back; {} stays live at generation {}",
                s.live_version(s.idle())
                    .map_or("the previous release", |l| l.version.as_str()),
                s.active,
                s.generation
            )
        }
    }

    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
}
