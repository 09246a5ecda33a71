//! What can go wrong, and the exit code each kind of failure ends with.
//!
//! The variants say what happened, so callers and tests match on them; the
//! messages are what people read. A module of its own that imports nothing
//! from the rest of bg-ctl, so every other module can use it.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

use bg_state::{Colour, Error as StoreError};

use crate::reason::NotYet;

/// A failed command. Every variant maps to one documented exit code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// Bad options or input (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The store refused or failed (exit by kind: 2, 3, 5 or 1).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A gate knows a generation the store does not: switching now could
    /// send gates backwards (exit 3).
    #[error(transparent)]
    GateAhead(#[from] GateAhead),
    /// This run's deploy lease was lost: it expired unrenewed, or was broken
    /// and maybe taken by another pipeline (exit 3).
    #[error("the deploy lease was lost: {0}")]
    LeaseLost(LeaseLost),
    /// Waiting ran out (exit 4).
    #[error("timed out: {0}")]
    Timeout(Timeout),
    /// A gate or webhook could not be reached (exit 5).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The store did not confirm a switch that was sent: it may or may not
    /// have happened (exit 5).
    #[error(
        "unreachable: the switch to {to} was sent but never confirmed, so it may or may not have happened: {source}; \
         check with `bg-ctl status`"
    )]
    SwitchUnconfirmed {
        /// The colour the switch was to.
        to: Colour,
        /// The store's last answer.
        source: StoreError,
    },
    /// A command bg-ctl ran (`--smoke`, `--verify`, `--exec`) failed (exit 1).
    #[error(transparent)]
    Check(#[from] CheckFailed),
    /// The `--exec` command that deploys failed (exit 1).
    #[error("--exec deploy of {version} to {colour}: {source}")]
    ExecDeploy {
        /// The version it was to deploy.
        version: String,
        /// Where.
        colour: Colour,
        /// How it failed.
        source: CheckFailed,
    },
    /// The smoke check failed before the switch; nothing was switched (exit 1).
    #[error("smoke check failed, nothing switched: {0}")]
    Smoke(Box<CtlError>),
    /// The verify check failed after the switch (exit 1).
    #[error(transparent)]
    Verify(Box<VerifyFailed>),
    /// `rollback` refused, and why (exit 1).
    #[error("rollback refused: {0}")]
    RollbackRefused(RollbackRefused),
    /// `init --from-gate` found nothing it could restore (exit 1).
    #[error(transparent)]
    Restore(RestoreRefused),
    /// Anything else, with its own message (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Told to stop (SIGINT or SIGTERM, e.g. a cancelled CI job): what was
    /// running was dropped, and any command it ran was stopped with its
    /// process group (exit 128 + the signal's number: 130, 143).
    #[error("stopped by {}; check with `bg-ctl status` and `bg-ctl lease show`", signal_name(*.0))]
    Stopped(i32),
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        2 => "SIGINT",
        15 => "SIGTERM",
        _ => "a signal",
    }
}

/// A gate ahead of the store: the store lost state, and only
/// `bg-ctl init --force --from-gate` puts it back above what the gates know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GateAhead {
    /// A gate asked over HTTP reports the generation it applied.
    #[error(
        "gate {} applied generation {applied} but the store is at {store}: the store lost state; \
         restore it with `bg-ctl init --force --from-gate GATE…` (the store holds a state, so it \
         needs --force)",
        crate::reason::shown(.url)
    )]
    Report {
        /// The gate, as given.
        url: String,
        /// The generation it applied.
        applied: u64,
        /// The store's.
        store: u64,
    },
    /// Gates' presence reports in the store.
    #[error(
        "gates are ahead of the store (at generation {store}): {}; restore it with \
         `bg-ctl init --force --from-gate GATE…` (the store holds a state, so it needs --force)",
        list_gates(.gates)
    )]
    Presences {
        /// The store's generation.
        store: u64,
        /// Each gate ahead, with the generation it applied.
        gates: Vec<(String, u64)>,
    },
}

fn list_gates(gates: &[(String, u64)]) -> String {
    gates
        .iter()
        .map(|(id, g)| format!("{id} (generation {g})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How this run lost its deploy lease.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseLost {
    /// The store refused a renewal: the lease was broken, maybe taken.
    #[error("{0}; stopped before doing anything more")]
    Broken(StoreError),
    /// Renewals kept failing until the lease's time was up.
    #[error("it could not be renewed before it expired ({0}); stopped before doing anything more")]
    Expired(StoreError),
    /// Lost while the switch was under way; read back, the switch had
    /// committed, but what comes after it (`--confirm-lb`, `--verify`) did
    /// not run.
    #[error(
        "the switch had committed ({to} is live at generation {generation}), but the lease was lost before \
         --confirm-lb and --verify had finished; check the release by hand"
    )]
    AfterSwitch {
        /// The colour now live.
        to: Colour,
        /// Its generation.
        generation: u64,
        /// How the lease was lost.
        lost: Box<CtlError>,
    },
}

/// Why a wait on the gates was still not over when it ran out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Pending {
    /// The gates answered, and not yet as the step needs.
    #[error("{0}")]
    Gates(NotYet),
    /// A gate restarting for the deploy did not answer.
    #[error("{0}")]
    Unreachable(String),
    /// The store failed in a way that a retry could help.
    #[error("the store: {0}")]
    Store(StoreError),
}

/// What a drain left behind when it ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undrained {
    /// The colour being drained.
    pub colour: Colour,
    /// `--drain-timeout`.
    pub limit: Duration,
    /// Websockets still open: the restart cuts them. `None` when a gate
    /// could not count them.
    pub websockets: Option<u64>,
    /// Requests still in flight.
    pub requests: u64,
    /// Websockets opened while the drain ran.
    pub arrived: u64,
}

impl fmt::Display for Undrained {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Undrained {
            colour,
            limit,
            websockets,
            requests,
            arrived,
        } = self;
        write!(f, "{colour} not drained within {limit:?}: ")?;
        match (websockets, requests) {
            (None, r) => write!(
                f,
                "a gate cannot count its websockets (its service's connections route fails or \
                 is slow), so its restart may cut an unknown number, and {r} requests in flight"
            )?,
            (Some(0), r) => write!(f, "{r} requests still in flight")?,
            (Some(w), 0) => write!(f, "{w} websockets still open, which its restart would cut")?,
            (Some(w), r) => write!(
                f,
                "{w} websockets still open, which its restart would cut, and {r} requests in flight"
            )?,
        }
        if *arrived > 0 {
            write!(
                f,
                "; {arrived} websockets opened on {colour} after the drain began: the load \
                 balancer still sends clients there, so {colour} is not out of rotation \
                 (check its health checks, or start its gates naming the load balancers with \
                 bg-gate --lb-source)"
            )
        } else if websockets.is_none() {
            write!(
                f,
                "; fix the service's connections route (bg-gate --service-connections-path), \
                 or pass --on-drain-timeout proceed to restart anyway"
            )
        } else if websockets.is_some_and(|w| w > 0) {
            write!(
                f,
                "; their clients were asked to reconnect (close code 1012) and did not: \
                 they must reconnect on 1012, or raise --drain-timeout"
            )
        } else {
            Ok(())
        }
    }
}

/// What ran out of time.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Timeout {
    /// A wait on the gates.
    #[error("{waited} within {limit:?}: {pending}")]
    Gates {
        /// What was waited for.
        waited: WaitFor,
        /// For how long.
        limit: Duration,
        /// Why it was still not done at the end.
        pending: Pending,
    },
    /// The load balancer's confirmation, after the switch was made.
    #[error("switched to {to}, but the load balancer did not confirm it: {wait}")]
    LbUnconfirmed {
        /// The colour now live.
        to: Colour,
        /// The wait that ran out.
        wait: Box<Timeout>,
    },
    /// The drain of the idle colour (`--on-drain-timeout abort`).
    #[error("{0}")]
    Drain(Undrained),
    /// The queue for another pipeline's lease (`--wait-lease`).
    #[error("--wait-lease ran out: {0}")]
    Lease(StoreError),
    /// A command bg-ctl ran; it was stopped with every process it started.
    #[error(
        "the command was still running after {after:?}; it was stopped with every process it started"
    )]
    Command {
        /// Its bound.
        after: Duration,
    },
}

/// What a release waits for the gates to show.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitFor {
    /// Step 3: the idle colour out of rotation.
    OutOfRotation(Colour),
    /// Step 4: no websockets or requests left on it.
    Drained(Colour),
    /// Step 6: the new version running there with a fresh view.
    Running {
        /// The version.
        version: String,
        /// The colour.
        colour: Colour,
    },
    /// Step 8: every load balancer has seen the switch.
    LbConfirmation,
}

impl fmt::Display for WaitFor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitFor::OutOfRotation(c) => write!(f, "{c} out of rotation"),
            WaitFor::Drained(c) => write!(f, "{c} drained"),
            WaitFor::Running { version, colour } => write!(f, "{version} running on {colour}"),
            WaitFor::LbConfirmation => f.write_str("load balancer confirmation"),
        }
    }
}

/// How a command bg-ctl ran (`sh -c CMD`) failed. The command line is
/// never part of the message: it may carry credentials. Which command it
/// was (`--smoke`, `--verify`, `--exec`) the enclosing error says.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckFailed {
    /// It could not be started.
    #[error("the command could not be started: {source}")]
    Spawn {
        /// Why.
        source: std::io::Error,
    },
    /// It ended unsuccessfully.
    #[error("the command failed ({status})")]
    Exit {
        /// How it ended.
        status: ExitStatus,
    },
    /// Its end could not be waited for.
    #[error("the command could not be waited for: {source}")]
    Wait {
        /// Why.
        source: std::io::Error,
    },
}

/// The verify check failed after the switch, and what became of the
/// switch back.
#[derive(Debug)]
pub struct VerifyFailed {
    /// Why verify failed.
    pub failure: CtlError,
    /// The colour switched to.
    pub to: Colour,
    /// The colour that was live before.
    pub from: Colour,
    /// Whether it is live again.
    pub back: SwitchBack,
}

/// The switch back after a failed verify.
#[derive(Debug)]
#[non_exhaustive]
pub enum SwitchBack {
    /// Not tried: what `rollback` checks does not hold for the old colour
    /// (its gates do not answer, run something else, or do not follow the
    /// store), and why.
    NotTried(Box<CtlError>),
    /// Done: the old colour is live again at this generation.
    Done(u64),
    /// Tried, and the store refused, or never confirmed it.
    Failed(Box<CtlError>),
}

impl fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let VerifyFailed {
            failure,
            to,
            from,
            back,
        } = self;
        match back {
            SwitchBack::NotTried(why) => write!(
                f,
                "verify failed ({failure}) after the switch to {to}; not switched back to {from} ({why}): {to} stays live"
            ),
            SwitchBack::Done(_) => write!(f, "verify failed ({failure}); switched back to {from}"),
            SwitchBack::Failed(e) => write!(
                f,
                "verify failed ({failure}) and switching back to {from} failed too: {e}"
            ),
        }
    }
}

impl std::error::Error for VerifyFailed {}

/// Why `rollback` refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RollbackRefused {
    /// No version is recorded as having been live on the previous colour
    /// (a release that failed or stopped before its switch does not count).
    #[error("no version is recorded as having been live on {0}, so there is nothing to return to")]
    NothingRecorded(Colour),
    /// A gate named for it did not answer.
    #[error("{colour}'s gate does not answer: {source}")]
    GateSilent {
        /// The previous colour.
        colour: Colour,
        /// Why.
        source: Box<CtlError>,
    },
    /// It runs something else now.
    #[error("{colour} runs {runs} now, not the previous version {want}")]
    RunsOther {
        /// The previous colour.
        colour: Colour,
        /// What its gate reports.
        runs: String,
        /// The version recorded for it.
        want: String,
    },
    /// A gate of it cannot hear the store, or is at another generation.
    #[error(
        "{colour}'s gate at {url} does not follow the store (generation {generation} of {store})"
    )]
    NotFollowing {
        /// The previous colour.
        colour: Colour,
        /// The gate, redacted.
        url: String,
        /// The generation it reports.
        generation: u64,
        /// The store's.
        store: u64,
    },
    /// No gate URL was given and no gate of it reports its presence.
    #[error("no gate of {0} answers or reports its presence (--gate-{0})")]
    NoGate(Colour),
    /// A gate's presence report says it runs something else, or lags.
    #[error(
        "gate {gate} of {colour} runs {runs} at generation {generation}, not {want} at {store}"
    )]
    PresenceLags {
        /// The previous colour.
        colour: Colour,
        /// The gate's id.
        gate: String,
        /// What it runs.
        runs: String,
        /// The generation it applied.
        generation: u64,
        /// The version recorded for the colour.
        want: String,
        /// The store's generation.
        store: u64,
    },
}

/// Why `init --from-gate` restored nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreRefused {
    /// No gate knows a live colour.
    #[error("the gates know no state to restore: initialise with --active COLOUR")]
    NothingKnown,
    /// Gates at the highest generation disagree on the live colour.
    #[error(
        "the gates disagree on the live colour at generation {0}; restore by hand with --active"
    )]
    Disagree(u64),
}

/// The exit codes, as documented in `--help` and the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other failure: not initialised, rollback refused, a check failed.
    pub const FAILED: u8 = 1;
    /// Usage error or invalid input.
    pub const USAGE: u8 = 2;
    /// Conflict: the generation moved, the lease is held by another, or a
    /// switch was refused because a lease is held or a gate is ahead of the store.
    pub const CONFLICT: u8 = 3;
    /// Timed out waiting: the new version never appeared, the drain or the
    /// load balancer's confirmation did not finish, `--wait-lease` ran out.
    pub const TIMEOUT: u8 = 4;
    /// The store or a gate could not be reached.
    pub const UNREACHABLE: u8 = 5;
}

impl CtlError {
    /// The process exit code for this failure.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Stopped(signal) => 128 + u8::try_from(*signal).unwrap_or(0).min(127),
            CtlError::GateAhead(_) | CtlError::LeaseLost(_) => exit::CONFLICT,
            CtlError::Timeout(_) => exit::TIMEOUT,
            CtlError::Unreachable(_) | CtlError::SwitchUnconfirmed { .. } => exit::UNREACHABLE,
            CtlError::Check(_)
            | CtlError::ExecDeploy { .. }
            | CtlError::Smoke(_)
            | CtlError::Verify(_)
            | CtlError::RollbackRefused(_)
            | CtlError::Restore(_)
            | CtlError::Failed(_) => exit::FAILED,
            CtlError::Store(e) => match e {
                StoreError::InvalidInput(_) => exit::USAGE,
                StoreError::Conflict { .. }
                | StoreError::LeaseHeld { .. }
                | StoreError::StaleFence { .. }
                | StoreError::AlreadyInitialised { .. } => exit::CONFLICT,
                StoreError::Unavailable { .. } => exit::UNREACHABLE,
                _ => exit::FAILED,
            },
        }
    }

    /// A short machine-readable kind, for `--json`.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            CtlError::Usage(_) => "usage",
            CtlError::Stopped(_) => "stopped",
            CtlError::GateAhead(_) => "gate_ahead",
            CtlError::LeaseLost(_) => "lease_lost",
            CtlError::Timeout(_) => "timeout",
            CtlError::Unreachable(_) | CtlError::SwitchUnconfirmed { .. } => "unreachable",
            CtlError::Check(_)
            | CtlError::ExecDeploy { .. }
            | CtlError::Smoke(_)
            | CtlError::Verify(_)
            | CtlError::RollbackRefused(_)
            | CtlError::Restore(_)
            | CtlError::Failed(_) => "failed",
            CtlError::Store(e) => match e {
                StoreError::Conflict { .. } => "conflict",
                StoreError::LeaseHeld { .. } => "lease_held",
                StoreError::StaleFence { .. } => "stale_fence",
                StoreError::AlreadyInitialised { .. } => "already_initialised",
                StoreError::NotInitialised { .. } => "not_initialised",
                StoreError::InvalidInput(_) => "invalid_input",
                StoreError::Unavailable { .. } => "unavailable",
                StoreError::Unauthorized { .. } => "unauthorized",
                StoreError::DeployToLive { .. } => "deploy_to_live",
                StoreError::Corrupt { .. } => "corrupt",
                _ => "store",
            },
        }
    }
}

/// Result of a command.
pub type CtlResult<T> = Result<T, CtlError>;

#[cfg(test)]
mod tests;
