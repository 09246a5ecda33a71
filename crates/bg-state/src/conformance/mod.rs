//! The conformance suite: every guarantee of [`ColourStore`], checked the
//! same way against any backend.
//!
//! Each check is a free `async fn` that panics on a violation and works on
//! an app name of its own, so they can share one store. A backend's tests
//! call [`run_all`]; a new backend is done when it passes unchanged.
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use bg_state::conformance::{run_all, Config};
//! let store: Arc<dyn bg_state::ColourStore> = Arc::new(bg_state::MemoryStore::with_history_cap(20));
//! run_all(&[store], &Config { history_cap: 20, ..Config::default() }).await;
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::{AppName, Colour, ColourStore, InitRequest};

mod bookkeeping;
mod deploys;
mod fences;
mod race;
mod retries;
mod switching;

pub use bookkeeping::{bad_input_changes_nothing, history_is_bounded, notifications, presence};
pub use deploys::{
    deploy_records, lease_expiry, lease_rules, live_version_known_at_init,
    live_version_of_the_colour_left, live_version_reported_on_leaving, live_versions,
};
pub use fences::{
    fences_are_unguessable, fences_stay_with_the_holder, leases_are_bound_to_their_owner,
    shows_fence,
};
pub use race::compare_and_swap_race;
pub use retries::{
    deploy_retries_are_recognised, init_retries_are_recognised, presence_retries_are_recognised,
    rollback_retries_are_recognised,
};
pub use switching::{
    generation_never_goes_down, init_rules, switch_compare_and_swap, switch_retries_are_recognised,
    uninitialised,
};

/// What the suite needs to know about the stores under test.
#[derive(Debug, Clone)]
pub struct Config {
    /// The history cap the stores were built with.
    pub history_cap: usize,
    /// How long a change notification may take to arrive.
    pub notify_within: Duration,
    /// Concurrent writers in the race.
    pub race_writers: usize,
    /// Compare-and-swap attempts per writer in the race.
    pub race_rounds: usize,
    /// The actor every change is recorded under, when the store takes it
    /// from the caller's credentials rather than the request (a remote
    /// store); `None` when requests name their actor.
    pub credential_actor: Option<String>,
    /// The owner every lease is recorded with, when the store takes it
    /// from the caller's credentials rather than the request (a remote
    /// store); `None` when requests name their owner.
    pub credential_owner: Option<String>,
}

impl Config {
    /// The actor a change requested by `requested` is recorded as.
    fn actor<'a>(&'a self, requested: &'a str) -> &'a str {
        self.credential_actor.as_deref().unwrap_or(requested)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            history_cap: crate::DEFAULT_HISTORY_CAP,
            notify_within: Duration::from_secs(5),
            race_writers: 8,
            race_rounds: 100,
            credential_actor: None,
            credential_owner: None,
        }
    }
}

/// Runs every check. `stores` are handles on one backing store (for the file
/// backend, several instances on one path); the first one is used for the
/// single-handle checks and all of them in the race.
///
/// # Panics
/// On the first guarantee a store breaks, or if `stores` is empty.
pub async fn run_all(stores: &[Arc<dyn ColourStore>], cfg: &Config) {
    let store = stores.first().expect("at least one store").as_ref();
    uninitialised(store).await;
    init_rules(store, cfg).await;
    generation_never_goes_down(store).await;
    switch_compare_and_swap(store, cfg).await;
    switch_retries_are_recognised(store).await;
    init_retries_are_recognised(store).await;
    rollback_retries_are_recognised(store).await;
    deploy_retries_are_recognised(store).await;
    presence_retries_are_recognised(store).await;
    deploy_records(store, cfg).await;
    live_versions(store).await;
    live_version_of_the_colour_left(store).await;
    live_version_known_at_init(store).await;
    live_version_reported_on_leaving(store).await;
    lease_rules(store, cfg).await;
    lease_expiry(store).await;
    fences_are_unguessable(store).await;
    fences_stay_with_the_holder(store).await;
    leases_are_bound_to_their_owner(store, cfg).await;
    history_is_bounded(store, cfg.history_cap).await;
    bad_input_changes_nothing(store).await;
    presence(store).await;
    notifications(store, cfg.notify_within).await;
    compare_and_swap_race(stores, cfg.race_writers, cfg.race_rounds).await;
}

/// A fresh app name for one check.
#[must_use]
pub fn fresh_app(what: &str) -> AppName {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() % 1_000_000_000_000);
    AppName::new(format!("conf-{what}-{t}-{n}")).expect("valid app name")
}

async fn initialised(store: &dyn ColourStore, what: &str, active: Colour) -> AppName {
    let app = fresh_app(what);
    store
        .init(&app, InitRequest::new(active, "conformance"))
        .await
        .expect("init of a fresh app");
    app
}
