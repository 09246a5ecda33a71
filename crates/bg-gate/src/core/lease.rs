//! The deploy lease through the store API: its fence serves only the
//! credential that took it and admin ones. The lease records that
//! credential (`Lease::owner`) in the store, so every gate of the app knows
//! it, after any restart.

use bg_state::Lease;

use super::Gate;
use crate::auth::{Caller, Refusal, Scope};

/// Whether `caller` may see and use the fence of `lease`: it took the
/// lease, or it is an admin credential.
pub(crate) fn may_use_fence(caller: &Caller, lease: &Lease) -> bool {
    caller.scope.allows(Scope::Admin) || lease.owner.as_deref() == Some(caller.credential.as_str())
}

impl Gate {
    /// Refuses, counted, a `caller` presenting the fence of `lease`, the
    /// lease held now, unless [`may_use_fence`].
    pub(crate) fn require_lease_owner(
        &self,
        caller: &Caller,
        lease: &Lease,
    ) -> Result<(), Refusal> {
        if may_use_fence(caller, lease) {
            return Ok(());
        }
        tracing::info!(
            actor = %caller.actor,
            holder = %lease.holder,
            "write refused: the lease's fence belongs to another credential"
        );
        self.inner.counters.auth_refused();
        Err(Refusal::NotLeaseOwner)
    }

    /// The caller a read's `Authorization` header names, if it names a
    /// valid one. A read needs no credential: a missing or refused one is
    /// an anonymous reader, not an error.
    pub(crate) async fn reader(&self, authorization: Option<&str>) -> Option<Caller> {
        authorization?;
        self.inner.auth.caller(authorization).await.ok()
    }
}
