//! End-to-end tests: real processes against real stores and a real load
//! balancer. The heavy ones run one at a time (see [`serial`]): the machines
//! have two cores.

mod ci;
mod failover;
mod lb;
mod processes;
mod release;
mod ui;

/// Held by each heavy test for its whole run, so they never overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for the other heavy tests to finish.
pub(crate) async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}
