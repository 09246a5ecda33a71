//! What can go wrong, and the exit code each kind of failure ends with.

use bg_state::Error as StoreError;

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
    #[error("{0}")]
    GateAhead(String),
    /// This run's deploy lease was lost: it expired unrenewed, or was broken
    /// and maybe taken by another pipeline (exit 3).
    #[error("the deploy lease was lost: {0}")]
    LeaseLost(String),
    /// Waiting ran out (exit 4).
    #[error("timed out: {0}")]
    Timeout(String),
    /// A gate or webhook could not be reached (exit 5).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Anything else, with its own message (exit 1).
    #[error("{0}")]
    Failed(String),
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
            CtlError::GateAhead(_) | CtlError::LeaseLost(_) => exit::CONFLICT,
            CtlError::Timeout(_) => exit::TIMEOUT,
            CtlError::Unreachable(_) => exit::UNREACHABLE,
            CtlError::Failed(_) => exit::FAILED,
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
            CtlError::GateAhead(_) => "gate_ahead",
            CtlError::LeaseLost(_) => "lease_lost",
            CtlError::Timeout(_) => "timeout",
            CtlError::Unreachable(_) => "unreachable",
            CtlError::Failed(_) => "failed",
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
