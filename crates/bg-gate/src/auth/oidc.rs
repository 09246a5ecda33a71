//! Who may switch, part two: GitLab CI `id_tokens`, RS256 JWTs verified
//! against the issuer's JWKS, with `iss`, `aud`, `exp` (and `nbf`) checked and
//! operator-set claim rules compared as the strings GitLab sends.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde_json::{Map, Value};

use super::claims::{self, ClaimRule};
use super::error::{OidcError, Refusal};
use super::jwks::{JwksSource, KeySet, KeySource};
use super::scope::{Caller, Scope};

/// The least time between two JWKS refetches triggered by unknown key ids.
pub const DEFAULT_REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How often the JWKS is loaded again, unknown key ids or not, so keys the
/// issuer withdrew stop being accepted.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(600);

/// The bound on one JWKS download.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// GitLab's tokens are a few kilobytes; anything far larger is not one, and
/// is refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;

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
    /// Rules that grant the `admin` scope to a token that meets `rules`
    /// too, with the same meaning (rules for different claims must all
    /// match, rules for one claim are alternatives). Empty, the default:
    /// `id_tokens` get the `ci` scope only.
    pub admin_rules: Vec<ClaimRule>,
    /// The least time between two refetches for unknown key ids (the
    /// start-up load does not count).
    pub refetch_interval: Duration,
    /// How often the key set is loaded again on a timer, once a gate
    /// holding this verifier is started ([`Gate::start`](crate::Gate::start)):
    /// keys withdrawn from the set are dropped then. A load that fails
    /// keeps the keys in force.
    pub refresh_interval: Duration,
    /// The bound on one JWKS download.
    pub fetch_timeout: Duration,
}

/// What [`OidcVerifier::new`] refuses before it loads any key.
fn check(issuer: &str, audience: &str, rules: &[ClaimRule]) -> Result<(), OidcError> {
    if issuer.trim().is_empty() {
        return Err(OidcError::EmptyIssuer);
    }
    if audience.trim().is_empty() {
        return Err(OidcError::EmptyAudience);
    }
    if rules.is_empty() {
        return Err(OidcError::NoClaimRule);
    }
    Ok(())
}

impl OidcConfig {
    /// Checks what [`OidcVerifier::new`] checks before it loads the keys:
    /// an issuer, an audience and at least one claim rule.
    ///
    /// # Errors
    /// The [`OidcError`] the verifier would start with.
    pub fn check(&self) -> Result<(), OidcError> {
        check(&self.issuer, &self.audience, &self.rules)
    }

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
            admin_rules: Vec::new(),
            refetch_interval: DEFAULT_REFETCH_INTERVAL,
            refresh_interval: DEFAULT_REFRESH_INTERVAL,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }
}

/// Verifies GitLab CI `id_tokens` (RS256 only) against a JWKS and the
/// operator's claim rules. Holds public keys only; its `Debug` shows the
/// configuration and the key ids.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    rules: Vec<ClaimRule>,
    admin_rules: Vec<ClaimRule>,
    source: KeySource,
    validation: Validation,
    keys: RwLock<Arc<KeySet>>,
    /// When the last refetch for an unknown key id began. Held across the
    /// fetch, so that concurrent requests naming the same new key wait for
    /// one download instead of starting their own.
    last_refetch: tokio::sync::Mutex<Option<Instant>>,
    refetch_interval: Duration,
    refresh_interval: Duration,
}

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("jwks", &self.source.name())
            .field("rules", &self.rules)
            .field("key_ids", &self.key_ids())
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
    /// [`OidcError::EmptyIssuer`], [`OidcError::EmptyAudience`],
    /// [`OidcError::NoClaimRule`]; for a file that cannot be read or holds no
    /// usable RS256 key, the reason it cannot be loaded; for a URL that
    /// cannot be used, or no HTTP client, the reason.
    pub async fn new(config: OidcConfig) -> Result<Self, OidcError> {
        let OidcConfig {
            issuer,
            audience,
            jwks,
            rules,
            admin_rules,
            refetch_interval,
            refresh_interval,
            fetch_timeout,
        } = config;
        check(&issuer, &audience, &rules)?;
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
        let source = KeySource::new(jwks, fetch_timeout)?;

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
            admin_rules,
            source,
            validation,
            keys: RwLock::new(Arc::new(KeySet::new())),
            last_refetch: tokio::sync::Mutex::new(None),
            refetch_interval,
            refresh_interval: refresh_interval.max(Duration::from_millis(10)),
        };
        match verifier.source.load().await {
            Ok(keys) => verifier.install(keys),
            Err(e) => match verifier.source {
                KeySource::File(_) => return Err(e),
                KeySource::Url { .. } => tracing::warn!(
                    jwks = %verifier.source.name(),
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

    /// The rules that grant the `admin` scope (empty: none is granted).
    #[must_use]
    pub fn admin_rules(&self) -> &[ClaimRule] {
        &self.admin_rules
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
    /// [`Refusal::Invalid`] for a token that is malformed, not RS256, signed
    /// by no known key (after one refetch), forged, expired or not yet
    /// valid, or for another issuer or audience;
    /// [`Refusal::ClaimsNotAllowed`] for a genuine token whose claims break
    /// a rule.
    pub async fn verify(&self, token: &str) -> Result<String, Refusal> {
        self.verify_caller(token).await.map(|c| c.actor)
    }

    /// As [`OidcVerifier::verify`], with the token's [`Scope`]: `admin` when
    /// its claims also meet the admin rules, `ci` otherwise.
    ///
    /// # Errors
    /// As [`OidcVerifier::verify`].
    pub async fn verify_caller(&self, token: &str) -> Result<Caller, Refusal> {
        if token.len() > MAX_TOKEN_LEN {
            tracing::debug!("JWT refused: too long");
            return Err(Refusal::Invalid);
        }
        // The header is read unverified only to pick the key; the library
        // checks again that `alg` is the one allowed before verifying.
        let header = decode_header(token).map_err(|e| {
            tracing::debug!(error = %e, "JWT refused: unreadable header");
            Refusal::Invalid
        })?;
        if header.alg != Algorithm::RS256 {
            tracing::debug!(alg = ?header.alg, "JWT refused: only RS256 is accepted");
            return Err(Refusal::Invalid);
        }
        if header.crit.is_some() {
            tracing::debug!("JWT refused: critical header extensions are not understood");
            return Err(Refusal::Invalid);
        }
        let Some(kid) = header.kid.as_deref() else {
            tracing::debug!("JWT refused: no key id");
            return Err(Refusal::Invalid);
        };
        let key = match self.key(kid) {
            Some(k) => k,
            None => self.refetch_for(kid).await.ok_or_else(|| {
                tracing::debug!(kid = %claims::printable(kid, 64), "JWT refused: unknown key id");
                Refusal::Invalid
            })?,
        };
        let claims = decode::<Map<String, Value>>(token, &key, &self.validation)
            .map_err(|e| {
                tracing::debug!(reason = %e, "JWT refused");
                Refusal::Invalid
            })?
            .claims;
        let actor = claims::actor(&claims);
        if let Some(rule) = claims::broken_rule(&self.rules, &claims) {
            tracing::info!(
                %actor,
                claim = %rule,
                "JWT refused: its claims do not meet the rules"
            );
            return Err(Refusal::ClaimsNotAllowed);
        }
        let scope = if !self.admin_rules.is_empty()
            && claims::broken_rule(&self.admin_rules, &claims).is_none()
        {
            Scope::Admin
        } else {
            Scope::Ci
        };
        Ok(Caller::new(actor, scope, claims::credential(&claims)))
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

    /// Loads the key set again and puts it in force whole, so a key the
    /// issuer withdrew is dropped; on failure the keys in force stay.
    pub(crate) async fn refresh_keys(&self) {
        let _serialised = self.last_refetch.lock().await;
        match self.source.load().await {
            Ok(keys) => {
                tracing::debug!(jwks = %self.source.name(), keys = keys.len(), "JWKS refreshed");
                self.install(keys);
            }
            Err(e) => tracing::warn!(
                jwks = %self.source.name(),
                error = %e,
                "JWKS not refreshed; the keys in force stay"
            ),
        }
    }

    /// How often [`OidcVerifier::refresh_keys`] runs on a timer.
    pub(crate) fn refresh_interval(&self) -> Duration {
        self.refresh_interval
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
        match self.source.load().await {
            Ok(keys) => {
                tracing::info!(
                    jwks = %self.source.name(),
                    keys = keys.len(),
                    "JWKS reloaded for an unknown key id"
                );
                self.install(keys);
            }
            Err(e) => tracing::warn!(
                jwks = %self.source.name(),
                error = %e,
                "JWKS not reloaded; the keys in force stay"
            ),
        }
        self.key(kid)
    }
}

#[cfg(test)]
mod tests;
