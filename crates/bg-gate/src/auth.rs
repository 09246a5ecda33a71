//! Who may switch: named bearer tokens, compared in constant time, and
//! optionally GitLab CI `id_tokens` checked by an [`OidcVerifier`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::http::{HeaderMap, StatusCode, header};
use subtle::ConstantTimeEq;

use crate::oidc::OidcVerifier;

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
            return Err(AuthError(
                "a token name must be 1 to 100 characters without spaces".into(),
            ));
        }
        // The messages name neither the token nor its name: in a file with
        // its columns swapped, the "name" is the secret.
        if secret.len() < MIN_TOKEN_LEN {
            return Err(AuthError(format!(
                "a token is {} bytes long; at least {MIN_TOKEN_LEN} are required",
                secret.len()
            )));
        }
        if secret.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError("a token contains whitespace".into()));
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
    /// 401 (no, wrong, forged or expired credentials) or 403 (switching is
    /// off here, or a genuine token's claims are not allowed to switch).
    pub status: StatusCode,
    /// What to tell the caller; never echoes what they sent.
    pub message: &'static str,
}

/// The switch endpoints' authorisation: bearer tokens and, when one is set
/// with [`Auth::with_oidc`], GitLab CI `id_tokens`. With nothing configured,
/// every switch is refused with 403: never open.
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
    /// If two tokens share a name or a secret.
    pub fn with_tokens(tokens: Vec<NamedToken>) -> Result<Self, AuthError> {
        check_unique(&tokens)?;
        Ok(Auth {
            tokens: RwLock::new(Arc::new(tokens)),
            added: Mutex::default(),
            file: None,
            oidc: None,
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

    /// Adds one more token (e.g. from `BG_TOKEN`) to these; it stays across
    /// [`Auth::reload`].
    ///
    /// # Errors
    /// If its name or secret is already taken.
    pub fn add(&self, token: NamedToken) -> Result<(), AuthError> {
        let mut guard = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        let mut all = (**guard).clone();
        all.push(token.clone());
        check_unique(&all)?;
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
    /// As [`Auth::from_file`], or if a token of the file takes the name or
    /// secret of an added one; `Ok(false)` when there is no file to re-read.
    pub fn reload(&self) -> Result<bool, AuthError> {
        let Some(path) = &self.file else {
            return Ok(false);
        };
        let mut tokens = read_token_file(path)?;
        let mut guard = self.tokens.write().unwrap_or_else(PoisonError::into_inner);
        tokens.extend(
            self.added
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        check_unique(&tokens).map_err(|e| AuthError(format!("{}: {e}", path.display())))?;
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

    /// The actor a request is authorised as: a bearer token's name, or the
    /// identifying claims of a GitLab CI `id_token`.
    ///
    /// A bearer value is first compared with every named token; if none
    /// matches and it has the shape of a JWT (three parts), it goes to the
    /// OIDC verifier, when one is set.
    ///
    /// # Errors
    /// A [`Refusal`] with the status to answer: 403 when nothing is
    /// configured, 401 for missing, wrong, forged or expired credentials, 403
    /// for a genuine token whose claims break a rule.
    pub async fn check(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let tokens = self.current();
        if tokens.is_empty() && self.oidc.is_none() {
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
        if let Some(t) = found {
            return Ok(t.name.clone());
        }
        match &self.oidc {
            Some(oidc) if looks_like_jwt(presented) => oidc.verify(presented).await,
            _ => Err(Refusal {
                status: StatusCode::UNAUTHORIZED,
                message: "invalid token",
            }),
        }
    }
}

/// Only a value shaped like a compact JWS (`header.payload.signature`) is
/// worth the verifier's time.
fn looks_like_jwt(s: &str) -> bool {
    s.bytes().filter(|b| *b == b'.').count() == 2 && !s.starts_with('.')
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

    #[tokio::test]
    async fn refusals() {
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
            let r = auth.check(&headers(h)).await.unwrap_err();
            assert_eq!(r.status, status, "{h:?}");
            assert!(!r.message.contains(GOOD));
        }
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .await
                .unwrap(),
            "ci"
        );
        assert_eq!(
            auth.check(&headers(Some(&format!("bearer  {GOOD} "))))
                .await
                .unwrap(),
            "ci"
        );
    }

    #[tokio::test]
    async fn an_added_token_survives_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("ci {GOOD}\n")).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        let env = "from-the-environment-0123";
        auth.add(NamedToken::new("bg-token", env).unwrap()).unwrap();
        assert!(auth.add(NamedToken::new("ci", env).unwrap()).is_err());
        let bearer = |t: &str| headers(Some(&format!("Bearer {t}")));
        assert!(auth.reload().unwrap());
        assert_eq!(auth.check(&bearer(env)).await.unwrap(), "bg-token");
        assert_eq!(auth.check(&bearer(GOOD)).await.unwrap(), "ci");

        // A file that now clashes with the added token is not taken.
        std::fs::write(&path, format!("bg-token {GOOD}\n")).unwrap();
        let e = auth.reload().unwrap_err();
        assert!(e.0.contains("used twice"), "{e}");
        assert!(!e.0.contains(GOOD) && !e.0.contains(env), "{e}");
        assert_eq!(auth.check(&bearer(GOOD)).await.unwrap(), "ci");
        assert_eq!(auth.check(&bearer(env)).await.unwrap(), "bg-token");
    }

    #[test]
    fn only_jwt_shaped_values_go_to_the_verifier() {
        for (v, jwt) in [
            ("a.b.c", true),
            ("eyJ.eyJ.", true),
            ("a.b", false),
            ("a.b.c.d", false),
            (".b.c", false),
            (GOOD, false),
        ] {
            assert_eq!(looks_like_jwt(v), jwt, "{v}");
        }
    }

    #[tokio::test]
    async fn nothing_configured_is_forbidden() {
        let r = Auth::none()
            .check(&headers(Some(&format!("Bearer {GOOD}"))))
            .await
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

    #[tokio::test]
    async fn token_file_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, format!("# comment\n\nci {GOOD}\n")).unwrap();
        let auth = Auth::from_file(&path).unwrap();
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .await
                .unwrap(),
            "ci"
        );

        let next = "fedcba9876543210-ops";
        std::fs::write(&path, format!("ops {next}\n")).unwrap();
        assert!(auth.reload().unwrap());
        assert!(
            auth.check(&headers(Some(&format!("Bearer {GOOD}"))))
                .await
                .is_err()
        );
        assert_eq!(
            auth.check(&headers(Some(&format!("Bearer {next}"))))
                .await
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
                .await
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
