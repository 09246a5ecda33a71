//! Operator claim rules and what a GitLab `id_token`'s claims say about its
//! caller, compared and quoted as the strings GitLab sends.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use super::error::OidcError;

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
    /// [`OidcError::ClaimName`] if the name is empty or has whitespace, `=`
    /// or control characters, [`OidcError::ClaimValue`] if the value is
    /// empty or has control characters.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Result<Self, OidcError> {
        let (name, value) = (name.into(), value.into());
        if name.is_empty()
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '=')
        {
            return Err(OidcError::ClaimName { name });
        }
        if value.is_empty() || value.chars().any(char::is_control) {
            return Err(OidcError::ClaimValue { name });
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

    pub(super) fn matches(&self, claim: Option<&Value>) -> bool {
        claim.and_then(claim_text).as_deref() == Some(self.value.as_str())
    }
}

impl FromStr for ClaimRule {
    type Err = OidcError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((name, value)) = s.split_once('=') else {
            return Err(OidcError::NotAClaimRule { rule: s.to_owned() });
        };
        ClaimRule::new(name.trim(), value.trim())
    }
}

impl fmt::Display for ClaimRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// The name of the first claim whose rules `claims` fail, if any.
pub(super) fn broken_rule<'r>(
    rules: &'r [ClaimRule],
    claims: &Map<String, Value>,
) -> Option<&'r str> {
    rules.iter().map(ClaimRule::name).find(|name| {
        let claim = claims.get(*name);
        !rules
            .iter()
            .filter(|r| r.name == *name)
            .any(|r| r.matches(claim))
    })
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
pub(super) fn printable(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `oidc:` and 32 hex digits of the SHA-256 of the token's `iss`, `sub`
/// and `pipeline_id` claims: the same for every job of one pipeline (a
/// lease taken in one job serves the next), another for another pipeline
/// of the same project and ref. Stable, bounded, and no secret.
pub(super) fn credential(claims: &Map<String, Value>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for name in ["iss", "sub", "pipeline_id"] {
        let text = claims.get(name).and_then(claim_text).unwrap_or_default();
        // Length-prefixed, so one claim cannot run into the next.
        h.update((text.len() as u64).to_be_bytes());
        h.update(text.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("oidc:{hex}")
}

/// `gitlab:<project_path>@<ref> job <job_id> (user <user_login>)` from the
/// claims present, `jwt:<sub>` when the token names no project; cut to the
/// store's limit on an actor.
pub(super) fn actor(claims: &Map<String, Value>) -> String {
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
