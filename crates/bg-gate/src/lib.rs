//! The bluegreen gate: the health answer a load balancer asks of each colour
//! (`OK` when live, `STOP` when idle), served from an in-memory view of the
//! [`bg_state`] store so that no health check waits on the store.
//!
//! # Layout
//!
//! * [`Gate`] and [`GateConfig`] — one gate per colour (or replica): its
//!   view of the store, kept current by [`Gate::start`] (change hints plus a
//!   poll), with make-before-break handover, alarms when the store loses or
//!   lowers the state, a local cache file, presence reports and `--init`.
//! * [`Gate::public_router`] — `/balancer-keepalive-check`,
//!   `/running-service-id`, `/bg/check/{colour}`, `/bg/live`: for the load
//!   balancer.
//! * [`Gate::admin_router`] — `/bg/state`, `POST /bg/switch` and the hand-made
//!   `POST /switch`, `POST /bg/drain`, `/metrics`: for people and tools, on a
//!   private listener where possible.
//! * [`Auth`] — named bearer tokens; with none configured, switching is off.
//! * [`Connections`] — websocket and request tracking, and the paced drain
//!   that closes idle-colour websockets with code 1012.
//! * [`Gate::serve_agent`] — the HAProxy `agent-check` responder.
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
//! assert!(gate.answer(Colour::Blue).is_ok());
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
pub mod server;

pub use crate::core::{Answer, BODY_TIMEOUT, Gate, GateConfig, GateError, StopStatus, View};
pub use auth::{
    Auth, AuthError, ClaimRule, DEFAULT_FETCH_TIMEOUT, DEFAULT_REFETCH_INTERVAL, JwksSource,
    MIN_TOKEN_LEN, NamedToken, OidcConfig, OidcError, OidcVerifier, Refusal,
};
pub use conns::{Connections, DRAIN_CLOSE_CODE, RequestGuard, WebSocketGuard};
pub use http::MAX_BODY;
pub use probes::{Probe, ProbeLog};
