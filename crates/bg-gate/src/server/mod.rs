//! The standalone gate: its options, listeners and signals, shared by the
//! `bg-gate` binary and services that want the same flags (see
//! `examples/ws_echo.rs`). Behind the `server` feature (on by default), so
//! a service that embeds the routers alone does not pull `clap` or
//! `tracing-subscriber`.
//!
//! * `args.rs` — [`GateArgs`] and [`GateArgs::start`];
//! * `run.rs` — [`GateServer`], signals, [`init_logging`];
//! * `conn.rs` — serving a listener within [`Limits`]: request head and
//!   idle timeouts, a connection cap with a reserve for the health routes;
//! * `error.rs` — [`ServerError`] and the [`exit`] codes.

mod args;
mod conn;
mod error;
mod run;

pub use args::GateArgs;
pub use conn::{
    DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, FD_RESERVE, HEALTH_RESERVE, Limits,
    default_max_connections, raise_open_file_limit, serve,
};
pub use error::{ServerError, exit};
pub use run::{GateServer, init_logging};
