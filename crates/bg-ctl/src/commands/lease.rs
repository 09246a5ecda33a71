//! `lease show` and `lease break`: the deploy lease, and breaking it
//! whoever holds it.

use std::fmt;

use bg_state::{AppName, BreakLease, ColourStore, Lease, format_millis};

use crate::error::CtlResult;
use crate::output::{Render, to_json};

/// What `lease show` shows. A fence is its holder's secret, so neither
/// command shows one, even to someone who can read it from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseShown {
    /// The lease, without its fence; `None` when it is free.
    pub lease: Option<Lease>,
}

/// `lease show`.
///
/// # Errors
/// As the store's `lease`.
pub async fn show_lease(store: &dyn ColourStore, app: &AppName) -> CtlResult<LeaseShown> {
    Ok(LeaseShown {
        lease: store.lease(app).await?.map(Lease::without_fence),
    })
}

impl Render for LeaseShown {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match &self.lease {
            Some(l) => writeln!(
                out,
                "held by {} since {} until {}",
                l.holder,
                format_millis(l.acquired_at_ms),
                format_millis(l.expires_at_ms)
            ),
            None => writeln!(out, "free"),
        }
    }

    /// The lease, or `null`.
    fn json(&self) -> serde_json::Value {
        to_json(&self.lease)
    }
}

/// What `lease break` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseBroken {
    /// The lease it broke, without its fence; `None` when none was held.
    pub broken: Option<Lease>,
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
) -> CtlResult<LeaseBroken> {
    let broken = store
        .break_lease(
            app,
            BreakLease {
                actor: actor.to_owned(),
                reason,
            },
        )
        .await?;
    Ok(LeaseBroken {
        broken: broken.map(Lease::without_fence),
    })
}

impl Render for LeaseBroken {
    fn human(&self, out: &mut dyn fmt::Write) -> fmt::Result {
        match &self.broken {
            Some(l) => writeln!(out, "broke the lease of {}", l.holder),
            None => writeln!(out, "no lease was held"),
        }
    }

    /// The lease it broke, or `null`.
    fn json(&self) -> serde_json::Value {
        to_json(&self.broken)
    }
}
