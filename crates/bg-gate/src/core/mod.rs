//! The gate's core: its configuration, its view of the store and the fold
//! of each store read into it, the one verdict every front end renders, the
//! follower that keeps the view current, and the on-change runner. Its
//! state is private to it, and it imports nothing from the front ends: the
//! routers in `http/` and the agent responder are built on its methods,
//! never the other way round.
//!
//! * `config.rs` — [`GateConfig`], [`StopStatus`];
//! * `view.rs` — [`View`], [`Answer`] and `View::fold`, the rules for
//!   adopting a read (never a lower generation; alarms; the handover);
//! * `verdict.rs` — [`Verdict`], [`Gate::verdict`] and
//!   [`Gate::answer_check`]: what a load balancer is told, counted and
//!   logged in one place;
//! * `counters.rs` — what `/metrics` counts;
//! * `gate.rs` — [`Gate`], its private state and `Inner::apply`, which puts
//!   a folded view in place and acts on it (counters, cache file, on-change);
//! * `follow.rs` — [`Gate::start`] and the follower task;
//! * `on_change.rs` — the runner of `--on-change` commands;
//! * `service.rs` — sidecar mode: the service beside a standalone gate,
//!   checked, read and drained over HTTP;
//! * `cache.rs` — the local cache file of the last adopted state;
//! * `lease.rs` — whose the deploy lease's fence is, for the store API.

mod cache;
mod config;
mod counters;
mod follow;
mod gate;
mod lease;
mod on_change;
mod service;
mod verdict;
mod view;

pub use config::{BODY_TIMEOUT, GateConfig, StopStatus, UNKNOWN_VERSION};
pub(crate) use gate::bounded;
pub use gate::{Gate, GateError};
pub(crate) use lease::may_use_fence;
pub(crate) use service::DRAIN_LASTS_AT_MOST;
pub use service::{SERVICE_TIMEOUT, ServiceConfig};
pub use verdict::{LbCheck, Verdict, VerdictKind, Via};
pub use view::{Answer, View};
