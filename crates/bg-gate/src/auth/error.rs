//! What can go wrong with credentials: a bad configuration ([`AuthError`],
//! [`OidcError`]) and a refused request ([`Refusal`]). None of them ever
//! holds a secret, and none knows of HTTP: the gate's HTTP layer maps a
//! refusal to its status.

use std::path::PathBuf;

/// A bad token configuration. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A token name is empty, too long, or has a character outside
    /// `[A-Za-z0-9._@-]`.
    #[error("a token name must be 1 to 64 of the characters A-Z a-z 0-9 . _ @ -")]
    TokenName,
    /// A token is shorter than [`MIN_TOKEN_LEN`](crate::MIN_TOKEN_LEN).
    #[error("a token is {len} bytes long; at least {min} are required")]
    TokenTooShort {
        /// Its length in bytes.
        len: usize,
        /// The least length accepted.
        min: usize,
    },
    /// A token has whitespace or control characters.
    #[error("a token contains whitespace")]
    TokenWhitespace,
    /// Two tokens share a name.
    #[error("token name {name:?} is used twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// Two tokens share a secret (named by their names only).
    #[error("tokens {first:?} and {second:?} have the same secret")]
    DuplicateSecret {
        /// The name of the first.
        first: String,
        /// The name of the second.
        second: String,
    },
    /// The token file cannot be read.
    #[error("cannot read token file {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the token file is not `name token [scope]`.
    #[error(
        "{} line {line}: expected `name token` or `name token scope` (scope `ci` or `admin`)",
        path.display()
    )]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
    /// A line of the token file holds a token that is not accepted.
    #[error("{} line {line}: {source}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong with the token.
        source: Box<AuthError>,
    },
    /// The token file holds no token: taking it would turn switching off.
    #[error(
        "token file {} holds no token: at least one `name token` line is required",
        path.display()
    )]
    NoTokens {
        /// The file.
        path: PathBuf,
    },
    /// The tokens of a file clash, with each other or with a token given
    /// besides the file.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The clash.
        source: Box<AuthError>,
    },
}

/// A bad OIDC configuration, or a key set that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// A claim rule's name is empty or has whitespace, `=` or control characters.
    #[error("claim rule name {name:?} must be non-empty, without spaces or `=`")]
    ClaimName {
        /// The name given.
        name: String,
    },
    /// A claim rule's value is empty or has control characters.
    #[error("claim rule {name:?} needs a non-empty value without control characters")]
    ClaimValue {
        /// The claim the rule is for.
        name: String,
    },
    /// A claim rule is not written `NAME=VALUE`.
    #[error("claim rule {rule:?} is not NAME=VALUE (e.g. project_id=42)")]
    NotAClaimRule {
        /// What was given.
        rule: String,
    },
    /// The issuer is empty.
    #[error("the OIDC issuer is empty")]
    EmptyIssuer,
    /// The audience is empty.
    #[error("the OIDC audience is empty")]
    EmptyAudience,
    /// No claim rule is set: any project on the issuer could switch.
    #[error(
        "at least one OIDC claim rule is required (e.g. project_id=42): without one, \
         any project on the issuer could switch"
    )]
    NoClaimRule,
    /// The JWKS source is empty.
    #[error("the JWKS source is empty")]
    EmptyJwksSource,
    /// The JWKS source has a scheme that is neither a file nor http(s).
    #[error("the JWKS source must be a file path or an https:// URL")]
    JwksSourceScheme,
    /// The JWKS URL does not parse.
    #[error("JWKS URL is not a valid URL: {reason}")]
    JwksUrl {
        /// The parser's complaint.
        reason: String,
    },
    /// The JWKS URL is neither `https://` nor `http://`.
    #[error("the JWKS URL must be https:// or http://")]
    JwksUrlScheme,
    /// The JWKS URL carries a user name or password.
    #[error("the JWKS URL must not carry credentials: the keys it serves are public")]
    JwksUrlCredentials,
    /// The JWKS URL has no host.
    #[error("the JWKS URL has no host")]
    JwksUrlNoHost,
    /// No HTTP client can be built to fetch the JWKS.
    #[error("cannot build an HTTP client for the JWKS: {source}")]
    HttpClient {
        /// Why.
        source: reqwest::Error,
    },
    /// The JWKS file cannot be read.
    #[error("cannot read the JWKS file {}: {source}", path.display())]
    ReadJwks {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The JWKS file is larger than a key set can be.
    #[error("the JWKS file {} is {len} bytes; a key set is at most {max}", path.display())]
    JwksFileTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
        /// The largest accepted.
        max: usize,
    },
    /// The JWKS cannot be downloaded.
    #[error("cannot fetch the JWKS from {url}: {}", causes(source))]
    FetchJwks {
        /// Where from.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The downloaded JWKS is larger than a key set can be.
    #[error("the JWKS from {url} is larger than {max} bytes")]
    JwksDownloadTooLarge {
        /// Where from.
        url: String,
        /// The largest accepted.
        max: usize,
    },
    /// The downloaded JWKS is not UTF-8.
    #[error("the JWKS from {url} is not UTF-8")]
    JwksNotUtf8 {
        /// Where from.
        url: String,
    },
    /// The JWKS is not a JSON key set.
    #[error("{jwks}: not a JWKS document: {source}")]
    NotAJwks {
        /// The file or URL.
        jwks: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// The key set has no key the verifier can use.
    #[error("{jwks}: no RS256 signing key with a key id")]
    NoUsableKey {
        /// The file or URL.
        jwks: String,
    },
}

/// An error and all its causes, `: `-separated: reqwest's own message hides
/// the cause (refused, TLS, timeout).
fn causes(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        msg.push_str(": ");
        msg.push_str(&c.to_string());
        cause = c.source();
    }
    msg
}

/// Why a request was not allowed to write. Its message never echoes what
/// the caller sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No credential is configured: writes through this gate are off
    /// (HTTP 403).
    #[error("{}", self.message())]
    Off,
    /// The request carries no bearer token (HTTP 401).
    #[error("{}", self.message())]
    Missing,
    /// A wrong, malformed, forged or expired token, or one for another
    /// issuer or audience (HTTP 401).
    #[error("{}", self.message())]
    Invalid,
    /// A genuine `id_token` whose claims break a rule (HTTP 403).
    #[error("{}", self.message())]
    ClaimsNotAllowed,
    /// A valid credential whose scope does not cover the act: `ci` for
    /// one that needs `admin` (HTTP 403).
    #[error("{}", self.message())]
    NeedsAdmin,
    /// A `ci` credential presented the fence of a deploy lease another
    /// credential took (HTTP 403).
    #[error("{}", self.message())]
    NotLeaseOwner,
}

impl Refusal {
    /// What to tell the caller.
    #[must_use]
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Off => "switching through this gate is off: no token is configured",
            Refusal::Missing => "missing bearer token: send Authorization: Bearer <token>",
            Refusal::Invalid => "invalid token",
            Refusal::ClaimsNotAllowed => {
                "this token's claims are not allowed to switch through this gate"
            }
            Refusal::NeedsAdmin => {
                "this act (init, a forced act, lease break, presence) needs a credential with the admin scope"
            }
            Refusal::NotLeaseOwner => {
                "the deploy lease with this fence was taken by another credential: only that credential, \
                 or an admin one, may renew or release it or switch and record deploys under it"
            }
        }
    }
}
