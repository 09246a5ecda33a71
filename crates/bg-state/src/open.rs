//! Opening a store from a URL.

use std::sync::Arc;
#[cfg(feature = "file")]
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::{ColourStore, DEFAULT_HISTORY_CAP};
use crate::text::redact_url;

/// Settings for [`open_with`] that a URL does not carry.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Events kept per app.
    pub history_cap: usize,
    /// How often a file store's subscriptions look at the file.
    #[cfg(feature = "file")]
    pub file_poll_interval: Duration,
    /// Timeouts and the legacy mirror of the Redis store.
    #[cfg(feature = "redis")]
    pub redis: crate::RedisOptions,
    /// The token a remote store (a gate's API) sends with writes.
    #[cfg(feature = "remote")]
    pub remote_token: Option<String>,
    /// Bound on each request of a remote store.
    #[cfg(feature = "remote")]
    pub remote_timeout: std::time::Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            history_cap: DEFAULT_HISTORY_CAP,
            #[cfg(feature = "file")]
            file_poll_interval: crate::backend::file::DEFAULT_POLL_INTERVAL,
            #[cfg(feature = "redis")]
            redis: crate::RedisOptions::default(),
            #[cfg(feature = "remote")]
            remote_token: None,
            #[cfg(feature = "remote")]
            remote_timeout: std::time::Duration::from_secs(10),
        }
    }
}

const SCHEMES: &str = "memory://, file:///absolute/path, redis://[:password@]host[:port][/db], \
    redis-sentinel://host:port[,host:port…]/master_name, redis-cluster://host:port[,host:port…] \
    (rediss… for TLS) or http(s)://gate";

/// Opens the store a URL names, with default options.
///
/// | URL | store |
/// | --- | --- |
/// | `memory://` | a new, empty [`crate::MemoryStore`] (this process only) |
/// | `file:///var/lib/bluegreen/state.json` | a `FileStore` (feature `file`) |
/// | `redis://host:6379/0`, `rediss://…` | a `RedisStore` on one server (feature `redis`) |
/// | `redis-sentinel://s1:26379,s2:26379/mymaster`, `rediss-sentinel://…` | a `RedisStore` on the master Sentinel names |
/// | `redis-cluster://n1:7000,n2:7000`, `rediss-cluster://…` | a `RedisStore` on a Redis Cluster |
/// | `https://gate.internal:9090` | a `RemoteStore`: a gate's store API (feature `remote`) |
///
/// No connection is made here: a Redis store connects on first use, so a
/// service can start while Redis is down.
///
/// # Errors
/// [`Error::InvalidInput`] for an empty or malformed URL, an unknown scheme,
/// or a backend this build does not include. Passwords never appear in the
/// message.
pub fn open(url: &str) -> Result<Arc<dyn ColourStore>> {
    open_with(url, &OpenOptions::default())
}

/// As [`open`], with options.
///
/// # Errors
/// As [`open`].
pub fn open_with(url: &str, opts: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    let url = url.trim();
    match scheme_of(url)? {
        Scheme::Memory => Ok(Arc::new(crate::MemoryStore::with_history_cap(
            opts.history_cap,
        ))),
        Scheme::File => open_file(url, opts),
        Scheme::Redis => open_redis(url, opts),
        Scheme::Remote => open_remote(url, opts),
    }
}

/// Checks a store URL as [`open_with`] would, without opening anything: no
/// file or directory is looked at, no CA file read, no connection made.
/// Returns the backend the URL names (`memory`, `file`, `redis`, `remote`),
/// so a command line can be checked on a machine that is not where it runs.
///
/// # Errors
/// As [`open`], except for what only opening finds (a missing directory, an
/// unreadable CA file).
pub fn check_url(url: &str, opts: &OpenOptions) -> Result<&'static str> {
    let url = url.trim();
    match scheme_of(url)? {
        Scheme::Memory => Ok("memory"),
        Scheme::File => check_file(url).map(|_| "file"),
        Scheme::Redis => check_redis(url, opts).map(|()| "redis"),
        Scheme::Remote => check_remote(url).map(|()| "remote"),
    }
}

/// The backends a URL can name.
enum Scheme {
    Memory,
    File,
    Redis,
    Remote,
}

fn scheme_of(url: &str) -> Result<Scheme> {
    if url.is_empty() {
        return Err(Error::invalid(
            "url",
            format!("the store URL is empty; expected {SCHEMES}"),
        ));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(Error::invalid(
            "url",
            format!(
                "{:?} is not a store URL; expected {SCHEMES}",
                redact_url(url)
            ),
        ));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => {
            if !rest.is_empty() && rest != "/" {
                return Err(Error::invalid(
                    "url",
                    format!(
                        "memory:// takes nothing after it, got {:?}",
                        redact_url(url)
                    ),
                ));
            }
            Ok(Scheme::Memory)
        }
        "file" => Ok(Scheme::File),
        "redis" | "rediss" | "redis-sentinel" | "rediss-sentinel" | "redis-cluster"
        | "rediss-cluster" => Ok(Scheme::Redis),
        "http" | "https" => Ok(Scheme::Remote),
        other => Err(Error::invalid(
            "url",
            format!(
                "unknown store scheme {:?}; expected {SCHEMES}",
                crate::text::shorten(other)
            ),
        )),
    }
}

/// The path a `file://` URL names, checked as far as the URL goes.
#[cfg(feature = "file")]
fn check_file(url: &str) -> Result<std::path::PathBuf> {
    let parsed = url::Url::parse(url)
        .map_err(|e| Error::invalid("url", format!("{:?} is malformed: {e}", redact_url(url))))?;
    let path = parsed.to_file_path().map_err(|()| {
        Error::invalid(
            "url",
            format!(
                "{:?} does not name a local file; expected file:///absolute/path",
                redact_url(url)
            ),
        )
    })?;
    if parsed.path().ends_with('/') {
        return Err(Error::invalid(
            "url",
            format!(
                "{:?} names a directory; name the state file",
                redact_url(url)
            ),
        ));
    }
    Ok(path)
}

#[cfg(feature = "file")]
fn open_file(url: &str, opts: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    let path = check_file(url)?;
    Ok(Arc::new(crate::FileStore::with_options(
        path,
        opts.history_cap,
        opts.file_poll_interval,
    )?))
}

#[cfg(not(feature = "file"))]
fn check_file(_: &str) -> Result<std::path::PathBuf> {
    Err(Error::invalid(
        "url",
        "this build has no file store (feature \"file\")",
    ))
}

#[cfg(not(feature = "file"))]
fn open_file(url: &str, _: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    Err(check_file(url)
        .err()
        .unwrap_or_else(|| Error::invalid("url", "no file store")))
}

#[cfg(feature = "remote")]
fn check_remote(url: &str) -> Result<()> {
    crate::RemoteStore::check_url(url)
}

#[cfg(not(feature = "remote"))]
fn check_remote(_: &str) -> Result<()> {
    Err(Error::invalid(
        "url",
        "this build has no remote store (feature \"remote\")",
    ))
}

#[cfg(feature = "redis")]
fn check_redis(url: &str, opts: &OpenOptions) -> Result<()> {
    crate::RedisStore::check_url(url, &opts.redis)
}

#[cfg(not(feature = "redis"))]
fn check_redis(_: &str, _: &OpenOptions) -> Result<()> {
    Err(Error::invalid(
        "url",
        "this build has no Redis store (feature \"redis\")",
    ))
}

#[cfg(feature = "remote")]
fn open_remote(url: &str, opts: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    Ok(Arc::new(crate::RemoteStore::new(
        url,
        opts.remote_token.clone(),
        opts.remote_timeout,
    )?))
}

#[cfg(not(feature = "remote"))]
fn open_remote(_: &str, _: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    Err(Error::invalid(
        "url",
        "this build has no remote store (feature \"remote\")",
    ))
}

#[cfg(feature = "redis")]
fn open_redis(url: &str, opts: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    let redis = crate::RedisOptions {
        history_cap: opts.history_cap,
        ..opts.redis.clone()
    };
    Ok(Arc::new(crate::RedisStore::with_options(url, redis)?))
}

#[cfg(not(feature = "redis"))]
fn open_redis(_: &str, _: &OpenOptions) -> Result<Arc<dyn ColourStore>> {
    Err(Error::invalid(
        "url",
        "this build has no Redis store (feature \"redis\")",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        match open(url) {
            Ok(s) => panic!("{url:?} opened a {} store", s.backend()),
            Err(e) => {
                assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
                e.to_string()
            }
        }
    }

    #[test]
    fn opens_by_scheme() {
        assert_eq!(open("memory://").unwrap().backend(), "memory");
        let dir = tempfile::tempdir().unwrap();
        let file = format!("file://{}/state.json", dir.path().display());
        assert_eq!(open(&file).unwrap().backend(), "file");
    }

    #[tokio::test]
    async fn opens_redis_lazily() {
        // Nothing listens on port 1; opening must still succeed without a round trip.
        assert_eq!(open("redis://127.0.0.1:1/0").unwrap().backend(), "redis");
        assert_eq!(open("rediss://127.0.0.1:1/0").unwrap().backend(), "redis");
        let sentinel = "redis-sentinel://127.0.0.1:1,127.0.0.1:2/mymaster";
        assert_eq!(open(sentinel).unwrap().backend(), "redis");
        let cluster = "rediss-cluster://127.0.0.1:1,127.0.0.1:2";
        assert_eq!(open(cluster).unwrap().backend(), "redis");
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        assert!(err("").contains("empty"));
        assert!(err("localhost:6379").contains("is not a store URL"));
        assert!(err("postgres://db").contains("unknown store scheme \"postgres\""));
        assert!(err("memory://x").contains("takes nothing"));
        assert!(err("file://remotehost/x.json").contains("does not name a local file"));
        assert!(err("file:///nonexistent-dir-bg/state.json").contains("does not exist"));
        assert!(err("file:///tmp/").contains("names a directory"));
    }

    #[test]
    fn a_check_agrees_with_opening_and_touches_nothing() {
        let opts = OpenOptions::default();
        for (url, backend) in [
            ("memory://", "memory"),
            ("file:///nonexistent-dir-bg/state.json", "file"),
            ("redis://redis:6379/0", "redis"),
            ("rediss://redis:6379/0?ca=/nonexistent/ca.pem", "redis"),
            ("redis-sentinel://s1:26379,s2:26379/mymaster", "redis"),
            ("https://gate.internal:9090", "remote"),
        ] {
            assert_eq!(check_url(url, &opts).unwrap(), backend, "{url}");
        }
        for url in [
            "",
            "localhost:6379",
            "postgres://db",
            "memory://x",
            "file://remotehost/x.json",
            "file:///tmp/",
            "redis://redis:6379/0#insecure",
            "https://user:pw@gate:9090",
        ] {
            let e = check_url(url, &opts).unwrap_err();
            assert!(matches!(e, Error::InvalidInput(_)), "{url}: {e:?}");
            if url != "file:///nonexistent-dir-bg/state.json" {
                assert!(
                    open_with(url, &opts).is_err(),
                    "{url} opens but fails its check"
                );
            }
        }
    }

    #[test]
    fn never_shows_a_password() {
        let msg = err("redis://:hunter2-secret@[bad/0");
        assert!(!msg.contains("hunter2"), "{msg}");
        let msg = err("nope://user:hunter2-secret@host/");
        assert!(!msg.contains("hunter2"), "{msg}");
    }
}
