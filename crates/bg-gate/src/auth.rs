//! Who may switch: named bearer tokens, compared in constant time.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

/// The shortest token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;

/// A named secret. Its `Debug` never shows the secret.
#[derive(Clone)]
pub struct NamedToken {
    name: String,
    secret: Vec<u8>,
}

impl std::fmt::Debug for NamedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamedToken")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl NamedToken {
    /// A token called `name` (recorded as the actor) with `secret`.
    ///
    /// # Errors
    /// If the name is empty or has whitespace, or the secret is shorter than
    /// [`MIN_TOKEN_LEN`] bytes or has whitespace. The message never contains
    /// the secret.
    pub fn new(name: impl Into<String>, secret: impl Into<String>) -> Result<Self, AuthError> {
        let (name, secret) = (name.into(), secret.into());
        if name.is_empty()
            || name.len() > 100
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(AuthError(format!(
                "token name {:?} must be 1 to 100 characters without spaces",
                name.chars().take(100).collect::<String>()
            )));
        }
        if secret.len() < MIN_TOKEN_LEN {
            return Err(AuthError(format!(
                "token {name:?} is {} bytes long; at least {MIN_TOKEN_LEN} are required",
                secret.len()
            )));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError(format!("token {name:?} contains whitespace")));
        }
        Ok(NamedToken {
            name,
            secret: secret.into_bytes(),
        })
    }

    /// The token's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A bad token configuration. Never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Why a request was not allowed to switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// 401 (no or wrong credentials) or 403 (switching is off here).
    pub status: StatusCode,
    /// What to tell the caller; never echoes what they sent.
    pub message: &'static str,
}

/// The switch endpoints' authorisation. With nothing configured, every
/// switch is refused with 403: never open.
#[derive(Debug, Default)]
pub struct Auth {
    tokens: RwLock<Arc<Vec<NamedToken>>>,
    file: Option<PathBuf>,
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
    /// If two tokens share a name or a secret.
    pub fn with_tokens(tokens: Vec<NamedToken>) -> Result<Self, AuthError> {
        check_unique(&tokens)?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            file: None,
        })
    }

    /// Tokens from a file of `name token` lines (`#` comments and blank
    /// lines allowed); [`Auth::reload`] re-reads it.
    ///
    /// # Errors
    /// If the file cannot be read or a line is malformed (named by number,
    /// never quoted).
    pub fn from_file(path: impl Into<PathBuf>) -> Result<Self, AuthError> {
        let path = path.into();
        let tokens = read_token_file(&path)?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            file: Some(path),
        })
    }

    /// Adds one more token (e.g. from `BG_TOKEN`) to these.
    ///
    /// # Errors
    /// If its name or secret is already taken.
    pub fn add(&self, token: NamedToken) -> Result<(), AuthError> {
        let mut guard = self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = (**guard).clone();
        all.push(token);
        check_unique(&all)?;
        *guard = Arc::new(all);
        Ok(())
    }

    /// Re-reads the token file. On error the tokens in force stay.
    ///
    /// # Errors
    /// As [`Auth::from_file`]; `Ok(false)` when there is no file to re-read.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let tokens = read_token_file(path)?;
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(tokens);
        Ok(true)
    }

    /// Whether any credential is configured.
    #[must_use]
    pub fn is_configured(&self) -> bool {
        !self.current().is_empty()
    }

    fn current(&self) -> Arc<Vec<NamedToken>> {
        Arc::clone(
            &self
                .tokens
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// The actor a request is authorised as.
    ///
    /// # Errors
    /// A [`Refusal`] with the status to answer.
    pub fn check(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let tokens = self.current();
        if tokens.is_empty() {
            return Err(Refusal {
                status: StatusCode::FORBIDDEN,
                message: "switching through this gate is off: no token is configured",
            });
        }
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            });
        let Some(presented) = presented.filter(|p| !p.is_empty()) else {
            return Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "missing bearer token: send Authorization: Bearer <token>",
            });
        };
        // Compare against every token, so the time taken says nothing about
        // which one (if any) came close.
        let mut found: Option<&NamedToken> = None;
        for t in tokens.iter() {
            if bool::from(t.secret.as_slice().ct_eq(presented.as_bytes())) {
                found = Some(t);
            }
        }
        found.map(|t| t.name.clone()).ok_or(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "invalid token",
        })
    }
}

fn check_unique(tokens: &[NamedToken]) -> Result<(), AuthError> {
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[i + 1..] {
            if a.name == b.name {
                return Err(AuthError(format!("token name {:?} is used twice", a.name)));
            }
            if a.secret == b.secret {
                return Err(AuthError(format!(
                    "tokens {:?} and {:?} have the same secret",
                    a.name, b.name
                )));
            }
        }
    }
    Ok(())
}

fn read_token_file(path: &Path) -> Result<Vec<NamedToken>, AuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AuthError(format!("cannot read token file {}: {e}", path.display())))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(secret), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(AuthError(format!(
                "{} line {}: expected `name token`",
                path.display(),
                n + 1
            )));
        };
        tokens.push(
            NamedToken::new(name, secret)
                .map_err(|e| AuthError(format!("{} line {}: {e}", path.display(), n + 1)))?,
        );
    }
    check_unique(&tokens).map_err(|e| AuthError(format!("{}: {e}", path.display())))?;
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "0123456789abcdef-ci";

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, a.parse().unwrap());
        }
        h
    }

    #[test]
    fn refusals() {
        let auth = Auth::with_tokens(vec![NamedToken::new("ci", GOOD).unwrap()]).unwrap();
        let cases: [(Option<&str>, StatusCode); 7] = [
            (None, StatusCode::UNAUTHORIZED),
            (Some("Bearer"), StatusCode::UNAUTHORIZED),
            (Some("Bearer "), StatusCode::UNAUTHORIZED),
            (Some("Basic Y2k6eA=="), StatusCode::UNAUTHORIZED),
            (Some("Bearer 0123456789abcdef"), StatusCode::UNAUTHORIZED),
            (
                Some("Bearer 0123456789abcdef-ci-and-more"),
                StatusCode::UNAUTHORIZED,
            ),
            (Some(GOOD), StatusCode::UNAUTHORIZED),
        ];
        for (h, status) in cases {
            let r = auth.check(&headers(h)).unwrap_err();
            assert_eq!(r.status, status, "{h:?}");
            assert!(!r.message.contains(GOOD));
        }
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .unwrap(),
            "ci"
        );
        assert_eq!(
            auth.check(&headers(Some(&format!("bearer  {GOOD} "))))
                .unwrap(),
            "ci"
        );
    }

    #[test]
    fn nothing_configured_is_forbidden() {
        let r = Auth::none()
            .check(&headers(Some(&format!("Bearer {GOOD}"))))
            .unwrap_err();
        assert_eq!(r.status, StatusCode::FORBIDDEN);
    }

    #[test]
    fn short_or_duplicate_tokens_are_refused_without_showing_them() {
        let e = NamedToken::new("ci", "short-secret").unwrap_err();
        assert!(e.0.contains("12 bytes"), "{e}");
        assert!(!e.0.contains("short-secret"), "{e}");
        let e = Auth::with_tokens(vec![
            NamedToken::new("a", GOOD).unwrap(),
            NamedToken::new("b", GOOD).unwrap(),
        ])
        .unwrap_err();
        assert!(!e.0.contains(GOOD), "{e}");
        let shown = format!("{:?}", NamedToken::new("ci", GOOD).unwrap());
        assert!(!shown.contains(GOOD), "{shown}");
    }

    #[test]
    fn token_file_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# comment\n\nci {GOOD}\n")).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .unwrap(),
            "ci"
        );

        let next = "fedcba9876543210-ops";
        std::fs::write(&path, format!("ops {next}\n")).unwrap();
        assert!(auth.reload().unwrap());
        assert!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .is_err()
        );
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {next}"))))
                .unwrap(),
            "ops"
        );

        // A broken file keeps the tokens in force and names the line, not the secret.
        std::fs::write(&path, format!("ops {next}\nbroken tooshort\n")).unwrap();
        let e = auth.reload().unwrap_err();
        assert!(e.0.contains("line 2"), "{e}");
        assert!(!e.0.contains("tooshort"), "{e}");
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {next}"))))
                .unwrap(),
            "ops"
        );
        std::fs::write(&path, format!("ops {next} extra\n")).unwrap();
        assert!(
            auth.reload()
                .unwrap_err()
                .0
                .contains("expected `name token`")
        );
    }
}
