//! Why the standalone gate could not start or stopped with an error, and
//! the exit code each ends with.

use std::net::SocketAddr;

use crate::{AuthError, GateError, OidcError};

/// The exit codes of `bg-gate` (and of services built on [`GateArgs`](super::GateArgs)),
/// as documented in `--help` and the README.
pub mod exit {
    /// Stopped by SIGTERM or SIGINT.
    pub const OK: u8 = 0;
    /// A listener cannot be bound, or a server failed while serving.
    pub const FAILED: u8 = 1;
    /// Usage error or invalid option: a bad flag or value, or a store,
    /// token or OIDC setting that cannot be used.
    pub const USAGE: u8 = 2;
}

/// A start-up or serving failure of the standalone gate. Never contains a
/// secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// `--legacy-mirror` is not `BLUE_ID,GREEN_ID` (exit 2).
    #[error(
        "--legacy-mirror takes the hand-made ids of blue and green as BLUE_ID,GREEN_ID \
         (e.g. alfa,beta), got {given:?}"
    )]
    LegacyMirrorIds {
        /// What was given.
        given: String,
    },
    /// The legacy mirror's ids are refused (exit 2).
    #[error(transparent)]
    LegacyMirror(bg_state::Error),
    /// `--legacy-mirror` with a store that is not Redis (exit 2).
    #[error("--legacy-mirror keeps keys in Redis: it needs a redis:// or rediss:// store")]
    LegacyMirrorNeedsRedis,
    /// The store URL cannot be opened (exit 2).
    #[error(transparent)]
    Store(bg_state::Error),
    /// The token file cannot be used, or a token clashes with another (exit 2).
    #[error(transparent)]
    Tokens(AuthError),
    /// `BG_TOKEN` is not an acceptable token (exit 2).
    #[error("BG_TOKEN: {0}")]
    BgToken(#[source] AuthError),
    /// Some of the OIDC options are given, but not all of them (exit 2).
    #[error(
        "GitLab id_tokens need --oidc-issuer, --oidc-audience and --oidc-jwks together \
         (and at least one --oidc-claim)"
    )]
    OidcOptions,
    /// The OIDC verifier cannot be built (exit 2).
    #[error("GitLab id_tokens: {0}")]
    Oidc(#[source] OidcError),
    /// The admin routes would share a listener that is not loopback, and
    /// neither `--admin-listen` nor `--admin-on-public` says so (exit 2).
    #[error(
        "--listen {listen} is not a loopback address, and without --admin-listen the admin \
         routes (switch, drain, store API, state, metrics) would be served there too: give \
         them a private address with --admin-listen, or pass --admin-on-public if that is \
         really meant"
    )]
    AdminOnPublic {
        /// The shared listener's address.
        listen: SocketAddr,
    },
    /// A connection limit is out of range (exit 2).
    #[error("{option} {reason}")]
    Limit {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A gate setting is out of range (exit 2).
    #[error(transparent)]
    Gate(GateError),
    /// A listener cannot be bound (exit 1).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A server failed while serving (exit 1).
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl ServerError {
    /// The process exit code for this failure: [`exit::USAGE`] or
    /// [`exit::FAILED`].
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        match self {
            ServerError::LegacyMirrorIds { .. }
            | ServerError::LegacyMirror(_)
            | ServerError::LegacyMirrorNeedsRedis
            | ServerError::Store(_)
            | ServerError::Tokens(_)
            | ServerError::BgToken(_)
            | ServerError::OidcOptions
            | ServerError::Oidc(_)
            | ServerError::Gate(_)
            | ServerError::AdminOnPublic { .. }
            | ServerError::Limit { .. } => exit::USAGE,
            ServerError::Listen { .. } | ServerError::Serve(_) => exit::FAILED,
        }
    }
}
