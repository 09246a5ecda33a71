//! Keeping the deploy lease while the steps run (step 1's "renewed while
//! working").

use bg_state::{Error as StoreError, Lease};
use tokio::time::Instant;

use super::Deployer;
use crate::error::{CtlError, LeaseLost};

impl Deployer<'_> {
    /// Renews the lease every third of its TTL; returns only when it is
    /// lost: refused as stale, or left unrenewed for a whole TTL (by our
    /// clock, counted from before each request, so never later than the
    /// store's).
    pub(super) async fn keep_lease(&self, lease: &Lease) -> CtlError {
        let o = self.opts;
        let every = o.lease_ttl / 3;
        let mut held_until = Instant::now() + o.lease_ttl;
        loop {
            tokio::time::sleep(every).await;
            let asked = Instant::now();
            match self
                .store
                .renew_lease(&o.app, lease.fence, o.lease_ttl)
                .await
            {
                Ok(_) => held_until = asked + o.lease_ttl,
                Err(e @ StoreError::StaleFence { .. }) => {
                    return CtlError::LeaseLost(LeaseLost::Broken(e));
                }
                Err(e) => {
                    // Transient: the lease outlives a few failed renewals, not more.
                    if Instant::now() + every >= held_until {
                        return CtlError::LeaseLost(LeaseLost::Expired(e));
                    }
                    self.report.warn(format!("cannot renew the lease: {e}"));
                }
            }
        }
    }
}
