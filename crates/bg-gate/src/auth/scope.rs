//! What a credential may do: [`Scope`], and [`Caller`], who a request is
//! authorised as.

use std::fmt;
use std::str::FromStr;

/// What a credential may do. `Admin` includes everything `Ci` may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Scope {
    /// A release: switch, drain, record deploys, take, renew and release
    /// the deploy lease. The default for a named token.
    #[default]
    Ci,
    /// Besides: initialise, forced acts (switch, deploy record, init),
    /// breaking the lease, writing presence.
    Admin,
}

impl Scope {
    /// Its name as written in the token file.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ci => "ci",
            Scope::Admin => "admin",
        }
    }

    /// Whether a credential of this scope may do what `needed` allows.
    #[must_use]
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scope name that is neither `ci` nor `admin`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a scope is `ci` or `admin`")]
pub struct UnknownScope;

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ci" => Ok(Scope::Ci),
            "admin" => Ok(Scope::Admin),
            _ => Err(UnknownScope),
        }
    }
}

/// Who a request is authorised as: the actor history records, what the
/// credential may do, and which credential it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Caller {
    /// A token's name, or an `id_token`'s identifying claims.
    pub actor: String,
    /// What the credential may do.
    pub scope: Scope,
    /// The credential, named stably and without its secret: `token:<name>`
    /// for a named token, `oidc:<digest>` for an `id_token` (of its issuer,
    /// subject and pipeline). A deploy lease records the credential that
    /// took it, and its fence serves that credential only (and admin ones).
    pub credential: String,
}

impl Caller {
    pub(crate) fn new(actor: String, scope: Scope, credential: String) -> Self {
        Caller {
            actor,
            scope,
            credential,
        }
    }
}
