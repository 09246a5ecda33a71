//! `history`: the audit trail, newest first.

use std::fmt;

use bg_state::{AppName, ColourStore, Event, format_millis};

use crate::error::CtlResult;
use crate::output::{Render, to_json};

/// What `history` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The app.
    pub app: AppName,
    /// Its events, newest first.
    pub events: Vec<Event>,
}

/// `history`: the last `limit` events.
///
/// # Errors
/// As the store's `history`.
pub async fn history(store: &dyn ColourStore, app: &AppName, limit: usize) -> CtlResult<History> {
    Ok(History {
        app: app.clone(),
        events: store.history(app, limit).await?,
    })
}

impl Render for History {
    /// A line per event: when, the generation after it, who, what, and why.
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        if self.events.is_empty() {
            writeln!(out, "app {}: no history", self.app)?;
        }
        for e in &self.events {
            writeln!(
                out,
                "{}  gen {:>4}  {:<28} {}{}{}",
                format_millis(e.at_ms),
                e.generation,
                e.actor,
                e.kind,
                if e.forced { " [forced]" } else { "" },
                e.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            )?;
        }
        Ok(())
    }

    /// The events, as the store keeps them.
    fn json(&self) -> serde_json::Value {
        to_json(&self.events)
    }
}
