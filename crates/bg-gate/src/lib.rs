//! The bluegreen gate: the health answer a load balancer asks of each colour
//! (`OK` when live, `STOP` when idle), served from an in-memory view of the
//! [`bg_state`] store so that no health check waits on the store.
//!
//! This crate is the home of the embeddable routers and the `bg-gate`
//! binary; so far it holds only the re-export of the state model it serves.

pub use bg_state::{AppName, Colour, State};
