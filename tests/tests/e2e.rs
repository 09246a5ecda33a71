//! End-to-end tests: real processes against real stores.

mod processes;
mod release;
