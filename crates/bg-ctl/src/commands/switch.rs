//! `switch`: make a colour live, compare-and-swap on the generation.

use std::fmt;

use bg_state::{
    AppName, Colour, ColourStore, Error as StoreError, State, SwitchOutcome, SwitchRequest,
};
use serde::Serialize;

use crate::error::CtlResult;
use crate::output::{Render, to_json};
use crate::readiness;

/// What `switch` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Switched {
    /// The state after it.
    pub state: State,
    /// `false` when the colour was already live, or this was a retry of a
    /// switch that had already committed.
    pub changed: bool,
}

impl From<SwitchOutcome> for Switched {
    fn from(SwitchOutcome { state, changed }: SwitchOutcome) -> Self {
        Switched { state, changed }
    }
}

/// `switch`: to `to` (default: the idle colour), refused while a gate is
/// ahead of the store.
///
/// # Errors
/// As the store's `switch`, or [`CtlError::GateAhead`](crate::CtlError::GateAhead).
pub async fn switch(
    store: &dyn ColourStore,
    app: &AppName,
    to: Option<Colour>,
    expect: Option<u64>,
    actor: &str,
    reason: Option<String>,
    force: bool,
) -> CtlResult<Switched> {
    let state = store
        .get(app)
        .await?
        .ok_or_else(|| StoreError::NotInitialised { app: app.clone() })?;
    readiness::none_ahead(&store.presences(app).await?, state.generation)?;
    let mut req = SwitchRequest::new(to.unwrap_or(state.idle()), actor)
        .force(force)
        .request_id(super::request_id("switch"));
    req.expect_generation = Some(expect.unwrap_or(state.generation));
    req.reason = reason;
    Ok(super::surely(|| store.switch(app, req.clone()))
        .await?
        .into())
}

impl Render for Switched {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        let s = &self.state;
        if self.changed {
            writeln!(
                out,
                "switched: {} is live at generation {}",
                s.active, s.generation
            )
        } else {
            writeln!(
                out,
                "{} was already live (generation {}); nothing changed",
                s.active, s.generation
            )
        }
    }

    fn json(&self) -> serde_json::Value {
        to_json(self)
    }
}
