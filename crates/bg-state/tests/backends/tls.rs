//! Redis over TLS, with a CA the test made: the suite through a verified
//! connection, and a certificate nobody vouched for as a configuration
//! error, never as an outage worth retrying.

use std::time::Duration;

use bg_state::{AppName, ColourStore, Error, RedisOptions, RedisStore};
use bg_testkit::{RedisServer, TlsFiles};

use super::{HISTORY_CAP, conform_on_redis};

fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
        history_cap: HISTORY_CAP,
        ..RedisOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_over_tls_with_the_ca_on_the_url() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);
    let url = format!("{}?ca={}", server.tls_url(), tls.ca().display());
    conform_on_redis(&url, options()).await;
}

#[tokio::test]
async fn the_ca_can_come_from_the_options() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);
    let opts = RedisOptions {
        ca_file: Some(tls.ca()),
        ..options()
    };
    let store = RedisStore::with_options(&server.tls_url(), opts).unwrap();
    let app = AppName::new("tls").unwrap();
    assert_eq!(store.get(&app).await.unwrap(), None);
}

fn assert_untrusted(err: &Error) {
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("not trusted"), "{msg}");
    assert!(
        msg.contains("?ca=FILE") && msg.contains("BG_REDIS_CA"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_configuration_error() {
    let tls = TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);
    let app = AppName::new("tls").unwrap();
    let url = server.tls_url().replace("rediss://", "rediss://:hunter2@");

    // The system's roots do not know the test's CA.
    let store = RedisStore::with_options(&url, options()).unwrap();
    assert_untrusted(&store.get(&app).await.unwrap_err());
    let sub = store.subscribe(&app).await;
    assert!(sub.is_ok(), "a subscription keeps trying in the background");

    // Another CA does not vouch for it either.
    let other = TlsFiles::generate();
    let url = format!("{url}?ca={}", other.ca().display());
    let store = RedisStore::with_options(&url, options()).unwrap();
    assert_untrusted(&store.get(&app).await.unwrap_err());
}

#[test]
fn a_missing_or_empty_ca_file_is_refused_at_once() {
    let err = RedisStore::open("rediss://127.0.0.1:1/0?ca=/nonexistent/ca.pem").unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("cannot read the CA file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err =
        RedisStore::open(&format!("rediss://127.0.0.1:1/0?ca={}", empty.display())).unwrap_err();
    assert!(
        err.to_string().contains("holds no PEM certificate"),
        "{err}"
    );
}
