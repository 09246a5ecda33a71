//! `switch`: make a colour live, compare-and-swap on the generation.

use bg_state::{AppName, Colour, ColourStore, Error as StoreError, SwitchRequest};

use crate::error::CtlResult;
use crate::readiness;

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
