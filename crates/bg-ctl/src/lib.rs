//! bluegreen's command line as a library: every `bg-ctl` command written
//! once against [`bg_state::ColourStore`], so it works the same on Redis, a
//! state file, or a gate's store API (`--gate`, for CI that cannot reach
//! Redis). bg-ctl holds no storage logic of its own.
//!
//! # Layout
//!
//! * [`cli`] — the options, their environment variables, help; dispatch,
//!   which only routes: the store, the gates and the actor, then the
//!   command, then its result to [`output`].
//! * [`deploy`] — the release: lease, deploy to the idle colour, verify,
//!   switch, one function per step of the spec, over traits
//!   ([`gates::Gates`], [`trigger::Trigger`], [`trigger::Checks`]) so every
//!   failure path is tested against mocks; its result is
//!   [`deploy::DeployOutcome`].
//! * [`readiness`] — when the gates are ready for the next step: pure rules
//!   over gate reports and the state, shared by `deploy` and `rollback`.
//! * [`reason`] — why a wait is not over yet ([`reason::NotYet`]).
//! * [`commands`] — status, init (and restore from gates), switch,
//!   rollback, history, lease show and break: a module each, with the
//!   result the command returns and how it reads.
//! * [`gates`] — what a gate's `/bg/state` says, and its drain.
//! * [`trigger`] — webhooks (Portainer), commands, checks.
//! * [`report`] — progress for people and CI.
//! * [`output`] — [`output::Render`], which every command's result
//!   implements: text for people, the value for `--json`; writing them on
//!   stdout, where a closed pipe ends them quietly.
//! * [`error`] — failures and their exit codes.

pub mod cli;
pub mod commands;
pub mod deploy;
pub mod error;
pub mod gates;
pub mod output;
pub mod readiness;
pub mod reason;
pub mod report;
#[cfg(test)]
mod testing;
pub mod trigger;

pub use error::{CtlError, CtlResult, exit};
