//! Who may write through the gate: named bearer tokens, compared in
//! constant time, and optionally GitLab CI `id_tokens` checked by an
//! [`OidcVerifier`]. Nothing here knows HTTP: a request's credentials come
//! in as the `Authorization` header's text, and a refusal goes out as a
//! [`Refusal`] for the HTTP layer to answer.
//!
//! * `error.rs` — [`AuthError`], [`OidcError`] and [`Refusal`];
//! * `tokens.rs` — [`NamedToken`] and the token file;
//! * `oidc.rs` — [`OidcVerifier`], over `jwks.rs` (the issuer's keys) and
//!   `claims.rs` (the operator's rules and the actor a token names).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

mod claims;
mod error;
mod jwks;
mod oidc;
mod scope;
mod tokens;

pub use claims::ClaimRule;
pub use error::{AuthError, OidcError, Refusal};
pub use jwks::JwksSource;
pub use oidc::{
    DEFAULT_FETCH_TIMEOUT, DEFAULT_REFETCH_INTERVAL, DEFAULT_REFRESH_INTERVAL, OidcConfig,
    OidcVerifier,
};
pub use scope::{Caller, Scope, UnknownScope};
pub use tokens::{MAX_TOKEN_NAME_LEN, MIN_TOKEN_LEN, NamedToken};

/// The gate's write authorisation: bearer tokens and, when one is set with
/// [`Auth::with_oidc`], GitLab CI `id_tokens`. With nothing configured,
/// every write is refused ([`Refusal::Off`]): never open.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: RwLock<Arc<Vec<NamedToken>>>,
    /// Tokens given with [`Auth::add`] rather than in the file: a reload
    /// keeps them. Locked only while `tokens` is write-locked.
    added: Mutex<Vec<NamedToken>>,
    file: Option<PathBuf>,
    oidc: Option<Arc<OidcVerifier>>,
}

impl Auth {
    /// No credentials: switching through this gate is off.
    #[must_use]
    pub fn none() -> Self {
        Auth::default()
    }

    /// These tokens.
    ///
    /// # Errors
    /// [`AuthError::DuplicateName`] or [`AuthError::DuplicateSecret`] if two
    /// tokens share a name or a secret.
    pub fn with_tokens(tokens: Vec<NamedToken>) -> Result<Self, AuthError> {
        tokens::check_unique(&tokens)?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            added: Mutex::default(),
            file: None,
            oidc: None,
        })
    }

    /// Tokens from a file of `name token [scope]` lines (`#` comments and
    /// blank lines allowed; the scope is `ci`, the default, or `admin`);
    /// [`Auth::reload`] re-reads it.
    ///
    /// # Errors
    /// If the file cannot be read ([`AuthError::ReadFile`]), a line is
    /// malformed ([`AuthError::Malformed`], [`AuthError::Line`]: named by
    /// number, never quoted), or two tokens clash ([`AuthError::File`]).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let tokens = tokens::read_token_file(&path)?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            added: Mutex::default(),
            file: Some(path),
            oidc: None,
        })
    }

    /// These credentials, and GitLab CI `id_tokens` accepted by `verifier`.
    #[must_use]
    pub fn with_oidc(mut self, verifier: impl Into<Arc<OidcVerifier>>) -> Self {
        self.oidc = Some(verifier.into());
        self
    }

    /// The `id_tokens` verifier, if one is set.
    #[must_use]
    pub fn oidc(&self) -> Option<&OidcVerifier> {
        self.oidc.as_deref()
    }

    /// The verifier as shared, for the gate's key refresh timer.
    pub(crate) fn oidc_shared(&self) -> Option<&Arc<OidcVerifier>> {
        self.oidc.as_ref()
    }

    /// Adds one more token (e.g. from `BG_TOKEN`) to these; it stays across
    /// [`Auth::reload`].
    ///
    /// # Errors
    /// [`AuthError::DuplicateName`] or [`AuthError::DuplicateSecret`] if its
    /// name or secret is already taken.
    pub fn add(&self, token: NamedToken) -> Result<(), AuthError> {
        let mut guard = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        let mut all = (**guard).clone();
        all.push(token.clone());
        tokens::check_unique(&all)?;
        self.added
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(token);
        *guard = Arc::new(all);
        Ok(())
    }

    /// Re-reads the token file; tokens given with [`Auth::add`] stay. On
    /// error the tokens in force stay.
    ///
    /// # Errors
    /// As [`Auth::from_file`], or [`AuthError::File`] if a token of the file
    /// takes the name or secret of an added one; `Ok(false)` when there is
    /// no file to re-read.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut tokens = tokens::read_token_file(path)?;
        let mut guard = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.extend(
            self.added
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        tokens::check_unique(&tokens).map_err(|e| tokens::in_file(path, e))?;
        *guard = Arc::new(tokens);
        Ok(true)
    }

    /// Whether any credential is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        self.oidc.is_some() || !self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<NamedToken>> {
        Arc::clone(&self.tokens.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The actor a request is authorised as, given the text of its
    /// `Authorization` header (`None` without one): a bearer token's name,
    /// or the identifying claims of a GitLab CI `id_token`.
    ///
    /// A bearer value is first compared with every named token; if none
    /// matches and it has the shape of a JWT (three parts), it goes to the
    /// OIDC verifier, when one is set.
    ///
    /// # Errors
    /// [`Refusal::Off`] when nothing is configured, [`Refusal::Missing`]
    /// without a bearer token, [`Refusal::Invalid`] for wrong, forged or
    /// expired credentials, [`Refusal::ClaimsNotAllowed`] for a genuine
    /// `id_token` whose claims break a rule.
    pub async fn check(&self, authorization: Option<&str>) -> Result<String, Refusal> {
        self.caller(authorization).await.map(|c| c.actor)
    }

    /// As [`Auth::check`], with the credential's [`Scope`]: a named token's
    /// from the token file, an `id_token`'s from the admin claim rules.
    ///
    /// # Errors
    /// As [`Auth::check`].
    pub async fn caller(&self, authorization: Option<&str>) -> Result<Caller, Refusal> {
        let tokens = self.current();
        if tokens.is_empty() && self.oidc.is_none() {
            return Err(Refusal::Off);
        }
        let Some(presented) = authorization.and_then(bearer).filter(|p| !p.is_empty()) else {
            return Err(Refusal::Missing);
        };
        if let Some(t) = tokens::matching(&tokens, presented) {
            return Ok(Caller::new(
                t.name().to_owned(),
                t.scope(),
                format!("token:{}", t.name()),
            ));
        }
        match &self.oidc {
            Some(oidc) if looks_like_jwt(presented) => oidc.verify_caller(presented).await,
            _ => Err(Refusal::Invalid),
        }
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value
/// (the scheme in any case), trimmed.
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, rest) = authorization.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Only a value shaped like a compact JWS (`header.payload.signature`) is
/// worth the verifier's time.
fn looks_like_jwt(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'.').count() == 2 && !s.starts_with('.')
}

#[cfg(test)]
mod tests;
