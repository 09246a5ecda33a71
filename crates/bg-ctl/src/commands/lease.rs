//! `lease break`: the deploy lease broken, whoever holds it.

use bg_state::{AppName, BreakLease, ColourStore, Lease};

use crate::error::CtlResult;

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
