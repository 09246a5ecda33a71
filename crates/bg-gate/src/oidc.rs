//! Who may switch, part two: GitLab CI `id_tokens`, RS256 JWTs verified
//! against the issuer's JWKS, with `iss`, `aud`, `exp` (and `nbf`) checked and
//! operator-set claim rules compared as the strings GitLab sends.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use crate::auth::Refusal;

/// The least time between two JWKS refetches triggered by unknown key ids.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// The bound on one JWKS download.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// GitLab's tokens are a few kilobytes; anything far larger is not one, and
/// is refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A key set is a few kilobytes too; the cap keeps a hostile or broken
/// endpoint from filling memory.
const MAX_JWKS_LEN: usize = 1024 * 1024;

const INVALID: Refusal = Refusal {
    status: StatusCode::UNAUTHORIZED,
    message: "invalid token",
};

const CLAIMS_NOT_ALLOWED: Refusal = Refusal {
    status: StatusCode::FORBIDDEN,
    message: "this token's claims are not allowed to switch through this gate",
};

/// A bad OIDC configuration, or a key set that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OidcError(pub String);

/// One operator rule a token's claims must meet, written `NAME=VALUE`
/// (`project_id=42`, `ref_protected=true`, `environment=production`).
///
/// The claim is compared as the string GitLab sends: a JSON string as it is,
/// a number or boolean in its JSON spelling. A missing claim, `null`, an
/// array or an object never matches. Several rules for the same claim are
/// alternatives; rules for different claims must all match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    name: String,
    value: String,
}

impl ClaimRule {
    /// The rule "claim `name` equals `value`".
    ///
    /// # Errors
    /// If the name is empty or has whitespace, `=` or control characters, or
    /// the value is empty or has control characters.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Result<Self, OidcError> {
        let (name, value) = (name.into(), value.into());
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '=')
        {
            return Err(OidcError(format!(
                "claim rule name {name:?} must be non-empty, without spaces or `=`"
            )));
        }
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(OidcError(format!(
                "claim rule {name:?} needs a non-empty value without control characters"
            )));
        }
        Ok(ClaimRule { name, value })
    }

    /// The claim this rule looks at.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The string the claim must equal.
    #[must_use]
    pub fn value(&self) -> &str {
        &self.value
    }

    fn matches(&self, claim: Option<&Value>) -> bool {
        claim.and_then(claim_text).as_deref() == Some(self.value.as_str())
    }
}

impl FromStr for ClaimRule {
    type Err = OidcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, value)) = s.split_once('=') else {
            return Err(OidcError(format!(
                "claim rule {s:?} is not NAME=VALUE (e.g. project_id=42)"
            )));
        };
        ClaimRule::new(name.trim(), value.trim())
    }
}

impl fmt::Display for ClaimRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// Where the issuer's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A local JWKS file, re-read when a token names an unknown key id.
    File(PathBuf),
    /// An `https://` (or `http://`) URL, fetched at start-up and again when a
    /// token names an unknown key id.
    Url(String),
}

impl FromStr for JwksSource {
    type Err = OidcError;

    /// `https://…` or `http://…` is a URL, `file:///path` or anything
    /// without a scheme a file path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(OidcError("the JWKS source is empty".into()));
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(JwksSource::File(PathBuf::from(path)));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            let url = reqwest::Url::parse(s)
                .map_err(|e| OidcError(format!("JWKS URL is not a valid URL: {e}")))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(OidcError(
                    "the JWKS URL must not carry credentials: the keys it serves are public".into(),
                ));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(OidcError("the JWKS URL has no host".into()));
            }
            return Ok(JwksSource::Url(url.to_string()));
        }
        if s.contains("://") {
            return Err(OidcError(
                "the JWKS source must be a file path or an https:// URL".into(),
            ));
        }
        Ok(JwksSource::File(PathBuf::from(s)))
    }
}

impl fmt::Display for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "{}", p.display()),
            JwksSource::Url(u) => f.write_str(u),
        }
    }
}

/// What an [`OidcVerifier`] accepts.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The expected `iss`, e.g. `https://gitlab.com`.
    pub issuer: String,
    /// The expected `aud`: the `aud` set in the job's `id_tokens:`.
    pub audience: String,
    /// Where the public keys come from.
    pub jwks: JwksSource,
    /// Rules every accepted token's claims must meet; at least one is
    /// required, since any project on the issuer can mint a token for any
    /// audience.
    pub rules: Vec<ClaimRule>,
    /// The least time between two refetches for unknown key ids (the
    /// start-up load does not count).
    pub refetch_interval: Duration,
    /// The bound on one JWKS download.
    pub fetch_timeout: Duration,
}

impl OidcConfig {
    /// A configuration with the default refetch interval and timeout.
    #[must_use]
    pub fn new(
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks: JwksSource,
        rules: Vec<ClaimRule>,
    ) -> Self {
        OidcConfig {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks,
            rules,
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

type KeySet = HashMap<String, Arc<DecodingKey>>;

enum Source {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

/// Verifies GitLab CI `id_tokens` (RS256 only) against a JWKS and the
/// operator's claim rules. Holds public keys only; its `Debug` shows the
/// configuration and the key ids.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    rules: Vec<ClaimRule>,
    source: Source,
    validation: Validation,
    keys: RwLock<Arc<KeySet>>,
    /// When the last refetch for an unknown key id began. Held across the
    /// fetch, so that concurrent requests naming the same new key wait for
    /// one download instead of starting their own.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kids: Vec<String> = self.current().keys().cloned().collect();
        kids.sort();
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.source_name())
            .field("rules", &self.rules)
            .field("key_ids", &kids)
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// A verifier for `config`, its keys loaded.
    ///
    /// A JWKS file must load now. A URL that cannot be fetched now only
    /// earns a warning: the gate's health answers matter more than
    /// switching, and the first token retries the download.
    ///
    /// # Errors
    /// If the issuer or audience is empty, there is no claim rule, the file
    /// cannot be read or holds no usable RS256 key, or no HTTP client can be
    /// built.
    pub async fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let OidcConfig {
            issuer,
            audience,
            jwks,
            rules,
            refetch_interval,
            fetch_timeout,
        } = config;
        if issuer.trim().is_empty() {
            return Err(OidcError("the OIDC issuer is empty".into()));
        }
        if audience.trim().is_empty() {
            return Err(OidcError("the OIDC audience is empty".into()));
        }
        if rules.is_empty() {
            return Err(OidcError(
                "at least one OIDC claim rule is required (e.g. project_id=42): without one, \
                 any project on the issuer could switch"
                    .into(),
            ));
        }
        if !rules.iter().any(|r| {
            matches!(
                r.name(),
                "project_id" | "project_path" | "namespace_id" | "namespace_path"
            )
        }) {
            tracing::warn!(
                "no OIDC claim rule names a project or namespace (project_id=…): \
                 jobs of other projects on the issuer may be able to switch"
            );
        }
        let source = match jwks {
            JwksSource::File(path) => Source::File(path),
            JwksSource::Url(url) => {
                let url = reqwest::Url::parse(&url)
                    .map_err(|e| OidcError(format!("JWKS URL is not a valid URL: {e}")))?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(OidcError("the JWKS URL must be https:// or http://".into()));
                }
                Source::Url {
                    client: http_client(&url, fetch_timeout)?,
                    url,
                }
            }
        };

        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_issuer(&[&issuer]);
        validation.set_audience(&[&audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;

        let verifier = OidcVerifier {
            issuer,
            audience,
            rules,
            source,
            validation,
            keys: RwLock::new(Arc::new(KeySet::new())),
            last_refetch: tokio::sync::Mutex::new(None),
            refetch_interval,
        };
        match verifier.load().await {
            Ok(keys) => verifier.install(keys),
            Err(e) => match verifier.source {
                Source::File(_) => return Err(e),
                Source::Url { .. } => tracing::warn!(
                    jwks = %verifier.source_name(),
                    error = %e,
                    "JWKS not loaded at start-up; GitLab id_tokens are refused until a download succeeds"
                ),
            },
        }
        Ok(verifier)
    }

    /// The expected issuer.
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The expected audience.
    #[must_use]
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The claim rules.
    #[must_use]
    pub fn rules(&self) -> &[ClaimRule] {
        &self.rules
    }

    /// The ids of the keys in force, sorted.
    #[must_use]
    pub fn key_ids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.current().keys().cloned().collect();
        kids.sort();
        kids
    }

    /// The actor a token is authorised as: its identifying claims.
    ///
    /// # Errors
    /// A [`Refusal`]: 401 for a token that is malformed, not RS256, signed by
    /// no known key (after one refetch), forged, expired or not yet valid, or
    /// for another issuer or audience; 403 for a genuine token whose claims
    /// break a rule. The refusal never quotes the token.
    pub async fn verify(&self, token: &str) -> Result<String, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            tracing::debug!("JWT refused: too long");
            return Err(INVALID);
        }
        // The header is read unverified only to pick the key; the library
        // checks again that `alg` is the one allowed before verifying.
        let header = decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "JWT refused: unreadable header");
            INVALID
        })?;
        if header.alg != Algorithm::RS256 {
            tracing::debug!(alg = ?header.alg, "JWT refused: only RS256 is accepted");
            return Err(INVALID);
        }
        if header.crit.is_some() {
            tracing::debug!("JWT refused: critical header extensions are not understood");
            return Err(INVALID);
        }
        let Some(kid) = header.kid.as_deref() else {
            tracing::debug!("JWT refused: no key id");
            return Err(INVALID);
        };
        let key = match self.key(kid) {
            Some(k) => k,
            None => self.refetch_for(kid).await.ok_or_else(|| {
                tracing::debug!(kid = %printable(kid, 64), "JWT refused: unknown key id");
                INVALID
            })?,
        };
        let claims = decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| {
                tracing::debug!(reason = %e, "JWT refused");
                INVALID
            })?
            .claims;
        let actor = actor(&claims);
        if let Some(rule) = self.broken_rule(&claims) {
            tracing::info!(
                %actor,
                claim = %rule,
                "JWT refused: its claims do not meet the rules"
            );
            return Err(CLAIMS_NOT_ALLOWED);
        }
        Ok(actor)
    }

    /// The name of the first claim whose rules the claims fail, if any.
    fn broken_rule(&self, claims: &Map<String, Value>) -> Option<&str> {
        self.rules.iter().map(ClaimRule::name).find(|name| {
            let claim = claims.get(*name);
            !self
                .rules
                .iter()
                .filter(|r| r.name == *name)
                .any(|r| r.matches(claim))
        })
    }

    fn current(&self) -> Arc<KeySet> {
        Arc::clone(
            &self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    fn key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        self.current().get(kid).cloned()
    }

    fn install(&self, keys: KeySet) {
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }

    async fn refetch_for(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let mut last = self.last_refetch.lock().await;
        if let Some(key) = self.key(kid) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < self.refetch_interval) {
            return None;
        }
        *last = Some(Instant::now());
        match self.load().await {
            Ok(keys) => {
                tracing::info!(
                    jwks = %self.source_name(),
                    keys = keys.len(),
                    "JWKS reloaded for an unknown key id"
                );
                self.install(keys);
            }
            Err(e) => tracing::warn!(
                jwks = %self.source_name(),
                error = %e,
                "JWKS not reloaded; the keys in force stay"
            ),
        }
        self.key(kid)
    }

    fn source_name(&self) -> String {
        match &self.source {
            Source::File(p) => p.display().to_string(),
            Source::Url { url, .. } => url.to_string(),
        }
    }

    async fn load(&self) -> Result<KeySet, OidcError> {
        let text = match &self.source {
            Source::File(path) => read_file(path)?,
            Source::Url { url, client } => fetch(client, url).await?,
        };
        parse_jwks(&text).map_err(|e| OidcError(format!("{}: {e}", self.source_name())))
    }
}

fn http_client(url: &reqwest::Url, timeout: Duration) -> Result<reqwest::Client, OidcError> {
    // reqwest is built without a default TLS provider; installing one that
    // another part of the process installed first is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if url.scheme() == "http" {
        tracing::warn!(
            jwks = %url,
            "the JWKS is fetched over plain http: whoever sits on the path can forge tokens"
        );
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        // A redirect must not downgrade an https source to http.
        .https_only(url.scheme() == "https")
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|e| OidcError(format!("cannot build an HTTP client for the JWKS: {e}")))
}

fn read_file(path: &std::path::Path) -> Result<String, OidcError> {
    let cannot =
        |e: std::io::Error| OidcError(format!("cannot read the JWKS file {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_JWKS_LEN as u64 {
        return Err(OidcError(format!(
            "the JWKS file {} is {len} bytes; a key set is at most {MAX_JWKS_LEN}",
            path.display()
        )));
    }
    std::fs::read_to_string(path).map_err(cannot)
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<String, OidcError> {
    let failed = |e: reqwest::Error| {
        // reqwest's own message hides the cause (refused, TLS, timeout).
        let mut msg = format!("cannot fetch the JWKS from {url}: {e}");
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        OidcError(msg)
    };
    let mut res = client
        .get(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(failed)?
        .error_for_status()
        .map_err(failed)?;
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(failed)? {
        if body.len() + chunk.len() > MAX_JWKS_LEN {
            return Err(OidcError(format!(
                "the JWKS from {url} is larger than {MAX_JWKS_LEN} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| OidcError(format!("the JWKS from {url} is not UTF-8")))
}

/// The usable keys of a JWKS document: RSA keys with a key id, meant for
/// signatures and RS256 where they say so. Others are skipped, so that an
/// issuer adding a key of a new kind does not lock everyone out.
fn parse_jwks(text: &str) -> Result<KeySet, String> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document =
        serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = KeySet::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let usable = matches!(jwk.algorithm, AlgorithmParameters::RSA(_))
            && jwk
                .common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == PublicKeyUse::Signature)
            && jwk
                .common
                .key_algorithm
                .is_none_or(|a| a == KeyAlgorithm::RS256);
        let Some(kid) = jwk.common.key_id.clone().filter(|_| usable) else {
            continue;
        };
        if let Ok(key) = DecodingKey::from_jwk(&jwk) {
            keys.insert(kid, Arc::new(key));
        }
    }
    if keys.is_empty() {
        return Err("no RS256 signing key with a key id".into());
    }
    Ok(keys)
}

/// A claim as GitLab spells it: strings as they are, numbers and booleans in
/// JSON. Anything else is no value.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// At most `max` characters of `s`, control characters shown as `?`.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `gitlab:<project_path>@<ref> job <job_id> (user <user_login>)` from the
/// claims present, `jwt:<sub>` when the token names no project; cut to the
/// store's limit on an actor.
fn actor(claims: &Map<String, Value>) -> String {
    let claim = |name: &str| {
        claims
            .get(name)
            .and_then(claim_text)
            .filter(|s| !s.trim().is_empty())
            .map(|s| printable(&s, 80))
    };
    // GitLab's project_path already includes the namespace.
    let mut out = match claim("project_path").or_else(|| claim("namespace_path")) {
        Some(project) => format!("gitlab:{project}"),
        None => format!("jwt:{}", claim("sub").unwrap_or_else(|| "unknown".into())),
    };
    if let Some(r) = claim("ref") {
        out.push('@');
        out.push_str(&r);
    }
    if let Some(job) = claim("job_id") {
        out.push_str(" job ");
        out.push_str(&job);
    }
    if let Some(user) = claim("user_login") {
        out.push_str(" (user ");
        out.push_str(&user);
        out.push(')');
    }
    printable(&out, bg_state::MAX_NAME_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode, get_current_timestamp};
    use serde_json::json;

    const KEY_1: &str = include_str!("../tests/fixtures/oidc-key-1.pem");
    const KEY_1_PUB: &str = include_str!("../tests/fixtures/oidc-key-1.pub.pem");
    const KEY_2: &str = include_str!("../tests/fixtures/oidc-key-2.pem");
    const JWKS_1: &str = include_str!("../tests/fixtures/jwks-1.json");
    const ISS: &str = "https://gitlab.example.com";
    const AUD: &str = "https://gate.example.com";

    fn claims() -> Value {
        let now = get_current_timestamp();
        json!({
            "iss": ISS,
            "aud": AUD,
            "sub": "project_path:ops/chat:ref_type:branch:ref:main",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "project_id": "42",
            "project_path": "ops/chat",
            "namespace_path": "ops",
            "ref": "main",
            "ref_protected": "true",
            "job_id": "1234",
            "user_login": "alice",
            "environment": "production",
        })
    }

    fn sign(pem: &str, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.into());
        encode(
            &header,
            claims,
            &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    async fn verifier(rules: &[&str]) -> (tempfile::TempDir, OidcVerifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, JWKS_1).unwrap();
        let rules = rules.iter().map(|r| r.parse().unwrap()).collect();
        let v = OidcVerifier::new(OidcConfig::new(ISS, AUD, JwksSource::File(path), rules))
            .await
            .unwrap();
        (dir, v)
    }

    #[test]
    fn claim_rules_parse_and_compare_as_strings() {
        let r: ClaimRule = "project_id=42".parse().unwrap();
        assert_eq!((r.name(), r.value()), ("project_id", "42"));
        assert_eq!(r.to_string(), "project_id=42");
        assert!(r.matches(Some(&json!("42"))));
        assert!(r.matches(Some(&json!(42))));
        assert!(!r.matches(Some(&json!("042"))));
        assert!(!r.matches(Some(&json!([42]))));
        assert!(!r.matches(None));
        let t: ClaimRule = "ref_protected=true".parse().unwrap();
        assert!(t.matches(Some(&json!("true"))));
        assert!(t.matches(Some(&json!(true))));
        assert!(!t.matches(Some(&json!(false))));
        assert!(!t.matches(Some(&Value::Null)));
        let url: ClaimRule = "environment_url=https://x/?a=b".parse().unwrap();
        assert_eq!(url.value(), "https://x/?a=b");
        for bad in ["project_id", "=42", "project_id=", "pro ject=1", "a=b\nc"] {
            assert!(bad.parse::<ClaimRule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jwks_sources() {
        assert_eq!(
            "https://gitlab.com/oauth/discovery/keys"
                .parse::<JwksSource>()
                .unwrap(),
            JwksSource::Url("https://gitlab.com/oauth/discovery/keys".into())
        );
        assert!(matches!(
            "http://127.0.0.1:9/keys".parse().unwrap(),
            JwksSource::Url(_)
        ));
        assert_eq!(
            "/etc/bg/jwks.json".parse::<JwksSource>().unwrap(),
            JwksSource::File("/etc/bg/jwks.json".into())
        );
        assert_eq!(
            "file:///etc/bg/jwks.json".parse::<JwksSource>().unwrap(),
            JwksSource::File("/etc/bg/jwks.json".into())
        );
        for bad in [
            "",
            "ftp://host/keys",
            "https://",
            "https://user:secret@host/keys",
        ] {
            let e = bad.parse::<JwksSource>().unwrap_err();
            assert!(!e.0.contains("secret"), "{e}");
        }
    }

    #[test]
    fn jwks_keeps_only_rs256_signing_keys_with_ids() {
        let one: Value = serde_json::from_str(JWKS_1).unwrap();
        let rsa = one["keys"][0].clone();
        let mut no_kid = rsa.clone();
        no_kid.as_object_mut().unwrap().remove("kid");
        let mut enc = rsa.clone();
        enc["use"] = json!("enc");
        enc["kid"] = json!("enc");
        let mut rs512 = rsa.clone();
        rs512["alg"] = json!("RS512");
        rs512["kid"] = json!("rs512");
        let hmac = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let strange = json!({"kty": "XYZ", "kid": "strange"});
        let doc = json!({"keys": [rsa, no_kid, enc, rs512, hmac, strange]}).to_string();
        let keys = parse_jwks(&doc).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["key-1"]);
        assert!(parse_jwks(r#"{"keys": []}"#).is_err());
        assert!(parse_jwks("not json").is_err());
    }

    #[tokio::test]
    async fn configuration_is_checked() {
        let src = || JwksSource::File("/nonexistent/jwks.json".into());
        let rule = || vec!["project_id=42".parse().unwrap()];
        for (cfg, needle) in [
            (OidcConfig::new("", AUD, src(), rule()), "issuer"),
            (OidcConfig::new(ISS, " ", src(), rule()), "audience"),
            (OidcConfig::new(ISS, AUD, src(), vec![]), "claim rule"),
            (OidcConfig::new(ISS, AUD, src(), rule()), "cannot read"),
        ] {
            let e = OidcVerifier::new(cfg).await.unwrap_err();
            assert!(e.0.contains(needle), "{e}");
        }
    }

    #[tokio::test]
    async fn accepts_a_good_token_and_names_its_caller() {
        let (_dir, v) = verifier(&["project_id=42", "ref_protected=true"]).await;
        assert_eq!(v.key_ids(), ["key-1"]);
        let token = sign(KEY_1, "key-1", &claims());
        assert_eq!(
            v.verify(&token).await.unwrap(),
            "gitlab:ops/chat@main job 1234 (user alice)"
        );
        let shown = format!("{v:?}");
        assert!(shown.contains("key-1") && shown.contains(ISS), "{shown}");
    }

    #[tokio::test]
    async fn refusals() {
        let (_dir, v) = verifier(&["project_id=42", "environment=production"]).await;
        let now = get_current_timestamp();
        let with = |k: &str, val: Value| {
            let mut c = claims();
            c[k] = val;
            c
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().unwrap().remove(k);
            c
        };
        let hs256_with_public_key = {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("key-1".into());
            encode(
                &h,
                &claims(),
                &EncodingKey::from_secret(KEY_1_PUB.as_bytes()),
            )
            .unwrap()
        };
        let unsigned = {
            let good = sign(KEY_1, "key-1", &claims());
            let mut parts = good.split('.');
            let (_, payload) = (parts.next(), parts.next().unwrap());
            // {"alg":"none","kid":"key-1"}
            format!("eyJhbGciOiJub25lIiwia2lkIjoia2V5LTEifQ.{payload}.")
        };
        let tampered = {
            let good = sign(KEY_1, "key-1", &claims());
            let other = sign(KEY_1, "key-1", &with("project_id", json!("43")));
            let sig = good.rsplit('.').next().unwrap();
            let (unsigned, _) = other.rsplit_once('.').unwrap();
            format!("{unsigned}.{sig}")
        };
        let no_kid = {
            encode(
                &Header::new(Algorithm::RS256),
                &claims(),
                &EncodingKey::from_rsa_pem(KEY_1.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let cases: Vec<(&str, String, StatusCode)> = vec![
            ("garbage", "a.b.c".into(), StatusCode::UNAUTHORIZED),
            ("alg none", unsigned, StatusCode::UNAUTHORIZED),
            (
                "HS/RS confusion",
                hs256_with_public_key,
                StatusCode::UNAUTHORIZED,
            ),
            ("tampered", tampered, StatusCode::UNAUTHORIZED),
            ("no kid", no_kid, StatusCode::UNAUTHORIZED),
            (
                "unknown key",
                sign(KEY_2, "key-2", &claims()),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "wrong key for kid",
                sign(KEY_2, "key-1", &claims()),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "expired",
                sign(KEY_1, "key-1", &with("exp", json!(now - 600))),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "no exp",
                sign(KEY_1, "key-1", &without("exp")),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "not yet valid",
                sign(KEY_1, "key-1", &with("nbf", json!(now + 600))),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "wrong issuer",
                sign(KEY_1, "key-1", &with("iss", json!("https://gitlab.com"))),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "no issuer",
                sign(KEY_1, "key-1", &without("iss")),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "wrong audience",
                sign(KEY_1, "key-1", &with("aud", json!("https://other"))),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "no audience",
                sign(KEY_1, "key-1", &without("aud")),
                StatusCode::UNAUTHORIZED,
            ),
            (
                "other project",
                sign(KEY_1, "key-1", &with("project_id", json!("43"))),
                StatusCode::FORBIDDEN,
            ),
            (
                "no environment",
                sign(KEY_1, "key-1", &without("environment")),
                StatusCode::FORBIDDEN,
            ),
            (
                "other environment",
                sign(KEY_1, "key-1", &with("environment", json!("staging"))),
                StatusCode::FORBIDDEN,
            ),
        ];
        for (what, token, status) in cases {
            let r = v.verify(&token).await.unwrap_err();
            assert_eq!(r.status, status, "{what}");
            assert!(!r.message.contains(&token), "{what}");
        }
        // An audience list naming this gate is fine.
        let token = sign(KEY_1, "key-1", &with("aud", json!(["x", AUD])));
        assert!(v.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn rules_for_one_claim_are_alternatives() {
        let (_dir, v) = verifier(&["environment=production", "environment=staging"]).await;
        let mut c = claims();
        for (env, ok) in [("production", true), ("staging", true), ("review", false)] {
            c["environment"] = json!(env);
            assert_eq!(
                v.verify(&sign(KEY_1, "key-1", &c)).await.is_ok(),
                ok,
                "{env}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_key_rereads_the_file_once_per_interval() {
        let (dir, v) = verifier(&["project_id=42"]).await;
        let path = dir.path().join("jwks.json");
        std::fs::write(
            &path,
            include_str!("../tests/fixtures/jwks-1-2.json").as_bytes(),
        )
        .unwrap();
        let token = sign(KEY_2, "key-2", &claims());
        assert!(v.verify(&token).await.is_ok());
        assert_eq!(v.key_ids(), ["key-1", "key-2"]);

        // Within the interval, a key id still unknown does not reread.
        std::fs::write(&path, JWKS_1).unwrap();
        assert!(v.verify(&sign(KEY_2, "key-3", &claims())).await.is_err());
        assert_eq!(v.key_ids(), ["key-1", "key-2"]);
    }

    #[test]
    fn actor_falls_back_and_stays_printable_and_short() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            actor(&m(
                json!({"sub": "project_path:ops/chat:ref_type:branch:ref:main"})
            )),
            "jwt:project_path:ops/chat:ref_type:branch:ref:main"
        );
        assert_eq!(actor(&m(json!({}))), "jwt:unknown");
        assert_eq!(
            actor(&m(json!({"namespace_path": "ops", "job_id": 7}))),
            "gitlab:ops job 7"
        );
        let long = "x".repeat(500);
        let a = actor(&m(json!({
            "project_path": long, "ref": long, "job_id": long, "user_login": "a\nb"
        })));
        assert!(a.chars().count() <= bg_state::MAX_NAME_LEN, "{a}");
        assert!(!a.chars().any(char::is_control), "{a}");
    }
}
