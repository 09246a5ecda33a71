//! Named bearer tokens: their validation, the token file, and the
//! constant-time comparison.

use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::AuthError;
use super::scope::Scope;

/// The shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// The longest token name accepted, in characters.
pub const MAX_TOKEN_NAME_LEN: usize = 64;

/// A named secret. Only the secret's SHA-256 digest is kept, and compared:
/// digests all have one length, so the comparison's time says nothing of
/// the secret's length. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct NamedToken {
    name: String,
    digest: [u8; 32],
    scope: Scope,
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl NamedToken {
    /// A token called `name` (recorded as the actor) with `secret`.
    ///
    /// # Errors
    /// [`AuthError::TokenName`] unless the name is 1 to 64 of
    /// `A-Z a-z 0-9 . _ @ -` (it goes into history and logs),
    /// [`AuthError::TokenTooShort`] if the secret is shorter than
    /// [`MIN_TOKEN_LEN`] bytes, [`AuthError::TokenWhitespace`] if it has
    /// whitespace. The error never contains the secret.
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> Result<Self, AuthError> {
        let (name, secret) = (name.into(), secret.into());
        if name.is_empty()
            || name.len() > MAX_TOKEN_NAME_LEN
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_@".contains(&b))
        {
            return Err(AuthError::TokenName);
        }
        // The errors name neither the token nor its name: in a file with
        // its columns swapped, the "name" is the secret.
        if secret.len() < MIN_TOKEN_LEN {
            return Err(AuthError::TokenTooShort {
                len: secret.len(),
                min: MIN_TOKEN_LEN,
            });
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::TokenWhitespace);
        }
        Ok(NamedToken {
            name,
            digest: digest(secret.as_bytes()),
            scope: Scope::Ci,
        })
    }

    /// This token with `scope` (a new token has [`Scope::Ci`]).
    #[must_use]
    pub fn with_scope(mut self, scope: Scope) -> Self {
        self.scope = scope;
        self
    }

    /// What the token may do.
    #[must_use]
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The token's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The token whose secret is `presented`, if any. Compares the digests,
/// in constant time, against every token, so the time taken says nothing
/// about which one (if any) came close, nor how long any of them is.
pub(super) fn matching<'a>(tokens: &'a [NamedToken], presented: &str) -> Option<&'a NamedToken> {
    let presented = digest(presented.as_bytes());
    let mut found = None;
    for t in tokens {
        if bool::from(t.digest.ct_eq(&presented)) {
            found = Some(t);
        }
    }
    found
}

/// Refuses two tokens with one name or one secret.
pub(super) fn check_unique(tokens: &[NamedToken]) -> Result<(), AuthError> {
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[i + 1..] {
            if a.name == b.name {
                return Err(AuthError::DuplicateName {
                    name: a.name.clone(),
                });
            }
            if a.digest == b.digest {
                return Err(AuthError::DuplicateSecret {
                    first: a.name.clone(),
                    second: b.name.clone(),
                });
            }
        }
    }
    Ok(())
}

/// `err` as a clash among the tokens of the file at `path`.
pub(super) fn in_file(path: &Path, err: AuthError) -> AuthError {
    AuthError::File {
        path: path.to_owned(),
        source: Box::new(err),
    }
}

/// The tokens of a file of `name token [scope]` lines; `#` comments and blank
/// lines are skipped. Errors name the line, never quote it.
pub(super) fn read_token_file(path: &Path) -> Result<Vec<NamedToken>, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let malformed = || AuthError::Malformed {
            path: path.to_owned(),
            line: n + 1,
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(secret), scope, None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let scope = match scope {
            None => Scope::Ci,
            Some(s) => s.parse().map_err(|_| malformed())?,
        };
        let token = NamedToken::new(name, secret).map_err(|e| AuthError::Line {
            path: path.to_owned(),
            line: n + 1,
            source: Box::new(e),
        })?;
        tokens.push(token.with_scope(scope));
    }
    if tokens.is_empty() {
        return Err(AuthError::NoTokens {
            path: path.to_owned(),
        });
    }
    check_unique(&tokens).map_err(|e| in_file(path, e))?;
    Ok(tokens)
}
