//! The bluegreen gate: the health answer a load balancer asks of each colour
//! (`OK` when live, `STOP` when idle), served from an in-memory view of the
//! [`bg_state`] store so that no health check waits on the store.
//!
//! # Layout
//!
//! The layers point one way: the runner is built on the front ends, the
//! front ends on the core, the core on the leaves; never the other way
//! round, and the core's state is private to it.
//!
//! * The core (`core/`): [`Gate`] and [`GateConfig`] — one gate per colour
//!   (or replica): its [`View`] of the store, kept current by
//!   [`Gate::start`] (change hints plus a poll), with make-before-break
//!   handover, alarms when the store loses or lowers the state, a local
//!   cache file, presence reports, `--init` and the on-change command. And
//!   the one decision every load balancer gets: [`Gate::verdict`] says what
//!   a colour is told ([`VerdictKind`]: ok, handover, stop, down);
//!   [`Gate::answer_check`] answers a load balancer's [`LbCheck`] with it,
//!   counted and logged whichever front end ([`Via`]) received it.
//! * The front ends, which only render the verdict:
//!   * the HTTP layer (`http/`): [`Gate::public_router`] —
//!     `/balancer-keepalive-check`, `/running-service-id`,
//!     `/bg/check/{colour}`, `/bg/live`: for the load balancer.
//!     [`Gate::admin_router`] — `/bg/state`, `POST /bg/switch` and the
//!     hand-made `POST /switch`, `POST /bg/drain`, `/metrics` and the store
//!     API under `/bg/api/v1` with its change stream: for people and tools,
//!     on a private listener where possible;
//!   * [`Gate::serve_agent`] — the HAProxy `agent-check` responder.
//! * The leaves, which know nothing of the gate: auth (`auth/`): [`Auth`] —
//!   named bearer tokens and GitLab CI `id_tokens` ([`OidcVerifier`]);
//!   with none configured, switching is off. [`Connections`] — websocket
//!   and request tracking, and the paced drain that closes idle-colour
//!   websockets with code 1012. [`ProbeLog`] — the load balancers' recent
//!   checks, and [`LbSource`], who counts as one.
//! * `server` (feature `server`, on by default) — the standalone runner:
//!   the `bg-gate` flags as a `clap` struct, listeners, signals, logging,
//!   and exit codes. Without it the crate pulls neither `clap` nor
//!   `tracing-subscriber`.
//!
//! # Example
//!
//! A service embeds the gate in a few lines:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use bg_gate::{Auth, Gate, GateConfig};
//! use bg_state::{AppName, Colour};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = bg_state::open("memory://")?;
//! let app = AppName::new("chat")?;
//! let mut cfg = GateConfig::new(app, Colour::Blue, "v1.4.2");
//! cfg.init = Some(Colour::Blue); // first start: blue is live
//! let gate = Gate::new(store, cfg, Auth::none())?;
//! gate.start();
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .merge(gate.public_router())
//!     .merge(gate.admin_router()); // better: serve this one on a private listener
//! # let _ = app;
//! # gate.refresh().await;
//! # tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//! // The answer never waits on the store:
//! # while gate.view().state.is_none() { tokio::time::sleep(std::time::Duration::from_millis(10)).await; }
//! assert!(gate.verdict(Colour::Blue).is_ok());
//! # Ok(())
//! # }
//! ```

mod agent;
mod auth;
pub mod cli;
mod conns;
mod core;
mod http;
mod probes;
#[cfg(feature = "server")]
pub mod server;

pub use crate::core::{
    Answer, BODY_TIMEOUT, Gate, GateConfig, GateError, LbCheck, SERVICE_TIMEOUT, ServiceConfig,
    StopStatus, UNKNOWN_VERSION, Verdict, VerdictKind, Via, View,
};
pub use auth::{
    Auth, AuthError, Caller, ClaimRule, DEFAULT_FETCH_TIMEOUT, DEFAULT_REFETCH_INTERVAL,
    DEFAULT_REFRESH_INTERVAL, JwksSource, MAX_TOKEN_NAME_LEN, MIN_TOKEN_LEN, NamedToken,
    OidcConfig, OidcError, OidcVerifier, Refusal, Scope, UnknownScope,
};
pub use conns::{Connections, DRAIN_CLOSE_CODE, Pace, RequestGuard, WebSocketGuard};
pub use http::{GENERATION_MARGIN, MAX_BODY, MAX_POLLS, MAX_POLLS_PER_SOURCE};
pub use probes::{BadLbSource, LbSource, MAX_PROBE_SOURCES, Probe, ProbeLog};
