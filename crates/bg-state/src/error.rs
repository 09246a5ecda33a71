//! The one error type of every store operation.

use std::fmt;

use crate::model::{AppName, Colour, Millis, State};

/// Result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a store operation did not happen.
///
/// Every variant but [`Error::Unavailable`] means the store answered and
/// refused: nothing was changed. `Unavailable` means the outcome is unknown
/// for writes — a switch that timed out may have committed — which is why
/// switches carry an expected generation or a request id: retrying them is
/// safe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The expected generation is no longer current. Carries what is.
    #[error(
        "conflict on app {}: expected generation {expected}, but it is {} ({} is live)",
        current.app, current.generation, current.active
    )]
    Conflict {
        /// The generation the caller based its change on.
        expected: u64,
        /// The state as it is now.
        current: Box<State>,
    },

    /// The app has no state yet; `init` creates it.
    #[error("app {app} is not initialised: run init with the live colour first")]
    NotInitialised {
        /// The app.
        app: AppName,
    },

    /// `init` found state already there and was not forced.
    #[error(
        "app {} is already initialised ({} live at generation {}); force to re-initialise",
        current.app, current.active, current.generation
    )]
    AlreadyInitialised {
        /// The state that is there.
        current: Box<State>,
    },

    /// A deploy was to be recorded for the live colour, which would cut its traffic.
    #[error("refusing to deploy to {colour} of app {app}: it is the live colour")]
    DeployToLive {
        /// The app.
        app: AppName,
        /// The live colour named by the deploy.
        colour: Colour,
    },

    /// Someone else holds the deploy lease. Its fence is its holder's
    /// secret, so the refusal names who holds it and until when, never the
    /// fence.
    #[error(
        "the deploy lease of app {app} is held by {holder} until {expires_at_ms} (ms since epoch)"
    )]
    LeaseHeld {
        /// The app.
        app: AppName,
        /// Who holds it.
        holder: String,
        /// When it lapses unless renewed.
        expires_at_ms: Millis,
    },

    /// The fence presented is not the one of the lease held now: the caller's
    /// lease expired, was released or was broken. Neither fence is in the
    /// message, which may end up in a log.
    #[error(
        "stale fence for app {app}: the lease it was issued for is no longer held (it expired, was released or was broken)"
    )]
    StaleFence {
        /// The app.
        app: AppName,
        /// The fence the caller presented.
        presented: u64,
    },

    /// The input was rejected before anything was touched.
    #[error(transparent)]
    InvalidInput(#[from] InvalidInput),

    /// What the store holds cannot be understood. Nothing was overwritten.
    #[error("corrupt state in {location}: {detail}")]
    Corrupt {
        /// Where (a key, a file path).
        location: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A remote store (a gate's `/bg/api/v1`) refused the caller's
    /// credentials, or has writes switched off.
    #[error("the remote store refused the request: {message}")]
    Unauthorized {
        /// What the gate said, which never echoes the credentials.
        message: String,
    },

    /// The store could not be reached or did not answer in time.
    #[error("store unavailable ({backend}): {message}{}", if *retryable { "; retrying may help" } else { "" })]
    Unavailable {
        /// The backend (`redis`, `file`, …).
        backend: &'static str,
        /// What happened, without secrets.
        message: String,
        /// Whether retrying the same call can succeed (a timeout, a dropped
        /// connection) or not (a bad URL, a refused password).
        retryable: bool,
    },
}

impl Error {
    /// Whether retrying the same call may succeed.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable {
                retryable: true,
                ..
            }
        )
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidInput::new(field, reason).into()
    }

    #[cfg_attr(not(any(feature = "file", feature = "redis")), allow(dead_code))]
    pub(crate) fn corrupt(location: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            location: location.into(),
            detail: detail.into(),
        }
    }
}

/// Bad input: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    /// The field or argument (`colour`, `app`, `version`, `url`, …).
    pub field: &'static str,
    /// What is wrong, in words a person understands.
    pub reason: String,
}

impl InvalidInput {
    /// A new invalid-input report.
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl std::error::Error for InvalidInput {}
