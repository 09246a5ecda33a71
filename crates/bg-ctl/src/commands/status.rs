//! `status`: the live colour, generation, versions, lease, last change,
//! and what gates answer.

use std::collections::BTreeMap;
use std::fmt;

use bg_state::{AppName, Colour, ColourStore, Lease, Presence, State, format_millis};
use serde::Serialize;

use crate::error::{CtlError, CtlResult};
use crate::gates::{GateStatus, Gates};
use crate::output::{Render, to_json};

/// What `status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The app.
    pub app: AppName,
    /// Its state, `None` if never initialised.
    pub state: Option<State>,
    /// The deploy lease, if held, without its fence (the holder's secret).
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
    let lease = store.lease(app).await?.map(Lease::without_fence);
    let presences = store.presences(app).await?;
    let mut probed = Vec::new();
    for (colour, list) in urls {
        for url in list {
            let (report, error) = match gates.report(url).await {
                Ok(r) => (Some(r), None),
                // Shown after "unreachable:" already.
                Err(CtlError::Unreachable(why)) => (None, Some(why)),
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

impl Render for Status {
    fn human(&self, f: &mut dyn fmt::Write) -> fmt::Result {
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
            if lc.fenced { ", under the lease" } else { "" },
        )?;
        for colour in Colour::ALL {
            // `Colour`'s Display ignores a width; its name takes one.
            let name = colour.as_str();
            match s.deployment(colour) {
                Some(d) => writeln!(
                    f,
                    "  {name:<5}: {} {} by {} at {}",
                    d.phase,
                    d.version,
                    d.actor,
                    format_millis(d.at_ms)
                )?,
                None => writeln!(f, "  {name:<5}: no deploy recorded")?,
            }
        }
        match &self.lease {
            Some(l) => writeln!(
                f,
                "  lease: held by {} until {}",
                l.holder,
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

    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
}
