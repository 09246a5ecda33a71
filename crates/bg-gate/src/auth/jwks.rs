//! The issuer's public keys: where they come from (a file or a URL), how
//! they are loaded, and which of them are usable.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use serde_json::Value;

use super::error::OidcError;

/// A key set is a few kilobytes; the cap keeps a hostile or broken
/// endpoint from filling memory.
const MAX_JWKS_LEN: usize = 1024 * 1024;

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
            return Err(OidcError::EmptyJwksSource);
        }
        if let Some(path) = s.strip_prefix("file://") {
            return Ok(JwksSource::File(PathBuf::from(path)));
        }
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            let url = parse_url(s)?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(OidcError::JwksUrlCredentials);
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(OidcError::JwksUrlNoHost);
            }
            return Ok(JwksSource::Url(url.to_string()));
        }
        if s.contains("://") {
            return Err(OidcError::JwksSourceScheme);
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

fn parse_url(s: &str) -> Result<reqwest::Url, OidcError> {
    reqwest::Url::parse(s).map_err(|e| OidcError::JwksUrl {
        reason: e.to_string(),
    })
}

/// Usable keys by key id.
pub(super) type KeySet = HashMap<String, Arc<DecodingKey>>;

/// A [`JwksSource`] ready to load: a URL comes with its HTTP client.
pub(super) enum KeySource {
    File(PathBuf),
    Url {
        url: reqwest::Url,
        client: reqwest::Client,
    },
}

impl KeySource {
    /// The source `jwks` names; a URL's downloads are bounded by `fetch_timeout`.
    pub(super) fn new(jwks: JwksSource, fetch_timeout: Duration) -> Result<Self, OidcError> {
        Ok(match jwks {
            JwksSource::File(path) => KeySource::File(path),
            JwksSource::Url(url) => {
                let url = parse_url(&url)?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(OidcError::JwksUrlScheme);
                }
                KeySource::Url {
                    client: http_client(&url, fetch_timeout)?,
                    url,
                }
            }
        })
    }

    /// The file or URL, for logs and errors.
    pub(super) fn name(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Url { url, .. } => url.to_string(),
        }
    }

    /// The usable keys the source holds now.
    pub(super) async fn load(&self) -> Result<KeySet, OidcError> {
        let text = match self {
            KeySource::File(path) => read_file(path)?,
            KeySource::Url { url, client } => fetch(client, url).await?,
        };
        parse_jwks(&self.name(), &text)
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
        .map_err(|source| OidcError::HttpClient { source })
}

fn read_file(path: &std::path::Path) -> Result<String, OidcError> {
    let cannot = |source: std::io::Error| OidcError::ReadJwks {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(cannot)?.len();
    if len > MAX_JWKS_LEN as u64 {
        return Err(OidcError::JwksFileTooLarge {
            path: path.to_owned(),
            len,
            max: MAX_JWKS_LEN,
        });
    }
    std::fs::read_to_string(path).map_err(cannot)
}

async fn fetch(client: &reqwest::Client, url: &reqwest::Url) -> Result<String, OidcError> {
    let failed = |source: reqwest::Error| OidcError::FetchJwks {
        url: url.to_string(),
        source,
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
            return Err(OidcError::JwksDownloadTooLarge {
                url: url.to_string(),
                max: MAX_JWKS_LEN,
            });
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| OidcError::JwksNotUtf8 {
        url: url.to_string(),
    })
}

/// The usable keys of the JWKS document `text` from `jwks`: RSA keys with a
/// key id, meant for signatures and RS256 where they say so. Others are
/// skipped, so that an issuer adding a key of a new kind does not lock
/// everyone out.
pub(super) fn parse_jwks(jwks: &str, text: &str) -> Result<KeySet, OidcError> {
    #[derive(serde::Deserialize)]
    struct Document {
        keys: Vec<Value>,
    }
    let doc: Document = serde_json::from_str(text).map_err(|source| OidcError::NotAJwks {
        jwks: jwks.to_owned(),
        source,
    })?;
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
        return Err(OidcError::NoUsableKey {
            jwks: jwks.to_owned(),
        });
    }
    Ok(keys)
}
