//! `init`: create the state, or restore it from the gates
//! (`init --from-gate`) after the store lost it.

use std::fmt;

use bg_state::{AppName, Colour, ColourStore, InitRequest, State};

use crate::error::{CtlError, CtlResult, RestoreRefused};
use crate::gates::Gates;
use crate::output::{Render, to_json};

/// What `init` made, from a colour or from the gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initialised {
    /// The state as created.
    pub state: State,
}

/// `init --active COLOUR [--version V]`.
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
    version: Option<String>,
) -> CtlResult<Initialised> {
    let mut req = InitRequest::new(active, actor)
        .force(force)
        .request_id(super::request_id("init"));
    req.reason = reason;
    req.version = version;
    Ok(Initialised {
        state: super::surely(|| store.init(app, req.clone())).await?,
    })
}

/// `init --from-gate URL…`: restore the colour the gates serve, above every
/// generation they know, with the version the live colour's gates report
/// as its live one when they agree. Refused if any named gate cannot be
/// reached, or if they disagree on the live colour at their highest
/// generation. `reason` is recorded after what was restored.
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
    reason: Option<String>,
) -> CtlResult<Initialised> {
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
    let restored = format!(
        "restored from {} gate(s) at generation {top}",
        reports.len()
    );
    let mut req = InitRequest::new(active, actor)
        .force(force)
        .request_id(super::request_id("init"))
        .min_generation(top + 1)
        .reason(match reason {
            Some(why) => format!("{restored}: {why}"),
            None => restored,
        });
    // What the live colour's gates run is what it serves live, when they
    // agree and it holds to the store's rule for versions.
    let mut running = reports
        .iter()
        .filter(|(_, r)| r.colour == active)
        .map(|(_, r)| r.version.as_str());
    if let Some(first) = running.next()
        && running.all(|v| v == first)
        && bg_state::wire::is_known_version(first)
    {
        req = req.version(first);
    }
    Ok(Initialised {
        state: super::surely(|| store.init(app, req.clone())).await?,
    })
}

impl Render for Initialised {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let s = &self.state;
        writeln!(
            out,
            "{}: {} is live at generation {}",
            s.app, s.active, s.generation
        )
    }

    /// The state itself.
    fn json(&self) -> serde_json::Value {
        to_json(&self.state)
    }
}
