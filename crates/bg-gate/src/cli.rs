//! Helpers for command lines built on the gate.

pub use bg_state::parse_duration;
