//! The gate's core: its configuration, its view of the store and the fold
//! of each store read into it, the follower that keeps the view current, and
//! the on-change runner. It imports nothing from the HTTP layer: the
//! routers in `http/` are built on it, never the other way round.
//!
//! * `config.rs` — [`GateConfig`], [`StopStatus`];
//! * `view.rs` — [`View`], [`Answer`] and `View::fold`, the rules for
//!   adopting a read (never a lower generation; alarms; the handover);
//! * `gate.rs` — [`Gate`], its shared state and `Inner::apply`, which puts a
//!   folded view in place and acts on it (counters, cache file, on-change);
//! * `follow.rs` — [`Gate::start`] and the follower task;
//! * `on_change.rs` — the runner of `--on-change` commands;
//! * `service.rs` — sidecar mode: the service beside a standalone gate,
//!   checked, read and drained over HTTP;
//! * `cache.rs` — the local cache file of the last adopted state.

mod cache;
mod config;
mod follow;
mod gate;
mod on_change;
mod service;
mod view;

pub use config::{BODY_TIMEOUT, GateConfig, StopStatus};
pub(crate) use gate::bounded;
pub use gate::{Gate, GateError};
pub use service::{SERVICE_TIMEOUT, ServiceConfig};
pub use view::{Answer, View};
