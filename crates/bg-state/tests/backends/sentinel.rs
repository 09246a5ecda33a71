//! Redis under Sentinel: one master, one replica, one sentinel, shared by
//! every check of the first test (run in order): the suite, writes the
//! replicas must confirm, the legacy mirror, which works with one master,
//! and a failover with the old master alive. A sentinel names one address
//! per master, so the suite over TLS has a set of its own.

use std::time::Duration;

use bg_state::{
    AppName, Colour, ColourStore, Error, InitRequest, LegacyMirror, RedisOptions, RedisStore,
    SwitchRequest,
};
use bg_testkit::{SentinelSet, TlsFiles};

use super::{HISTORY_CAP, conform_on_redis};

fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(1),
        replica_timeout: Duration::from_millis(300),
        history_cap: HISTORY_CAP,
        ..RedisOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_managed_master() {
    let mut set = SentinelSet::start("bgmaster");
    let url = set.url();

    // The suite, unchanged; every switch and init waits for the replica.
    conform_on_redis(&url, options()).await;

    // More replicas than there are: the write happens, but is not
    // acknowledged; its retry by request id is recognised once confirmed.
    let app = AppName::new("durable").unwrap();
    let store = RedisStore::with_options(&url, options()).unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let greedy = RedisStore::with_options(&format!("{url}?min_replicas=2"), options()).unwrap();
    let switch = || {
        SwitchRequest::new(Colour::Green, "t")
            .expect_generation(1)
            .request_id("job-7-switch")
    };
    let err = greedy.switch(&app, switch()).await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    assert!(err.to_string().contains("only 1 of 2 replicas"), "{err}");
    let out = store.switch(&app, switch()).await.unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));
    let err = greedy
        .init(&app, InitRequest::new(Colour::Blue, "t").force(true))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");

    // A replica that stops acknowledging (paused, still connected): a
    // switch is not confirmed, and neither is its retry by a new process
    // (a new connection, to which the script answers "unchanged").
    let app = AppName::new("lagging").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let switch = || SwitchRequest::new(Colour::Green, "t").request_id("job-8-switch");
    set.replica.pause();
    let first = RedisStore::with_options(&url, options()).unwrap();
    let err = first.switch(&app, switch()).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let retry = RedisStore::with_options(&url, options()).unwrap();
    let err = retry.switch(&app, switch()).await;
    set.replica.resume();
    let err = err.expect_err("a retry confirmed a switch no replica holds");
    assert!(err.to_string().contains("0 of 1 replicas"), "{err}");
    let again = RedisStore::with_options(&url, options()).unwrap();
    let out = again.switch(&app, switch()).await.unwrap();
    assert_eq!((out.state.active, out.state.generation), (Colour::Green, 2));

    // The legacy mirror works: there is one master.
    let app = AppName::new("legacy").unwrap();
    let opts = RedisOptions {
        mirror: Some(LegacyMirror::new(app.clone(), "alfa", "beta").unwrap()),
        ..options()
    };
    let store = RedisStore::with_options(&url, opts).unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    let master = set
        .master
        .cli(&["MGET", "lb-status-alfa", "lb-status-beta"]);
    assert_eq!(master.split_whitespace().collect::<Vec<_>>(), ["0", "1"]);
    // The replica holds it too: the switch waited for it.
    let replica = set
        .replica
        .cli(&["HGET", "bg:{legacy}:state", "generation"]);
    assert_eq!(replica.trim(), "2");

    // A failover with the old master alive (it becomes a replica and
    // answers writes with READONLY): the store finds the new master, and a
    // subscription made before hears a switch made after.
    let app = AppName::new("moved").unwrap();
    // No replica will be left to confirm writes: min_replicas=0 here.
    let store = RedisStore::with_options(&format!("{url}?min_replicas=0"), options()).unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let mut changes = store.subscribe(&app).await.unwrap();
    let old = set.master_port();
    let _ = set.sentinel.cli(&["SENTINEL", "FAILOVER", "bgmaster"]);
    set.wait_until("the sentinel names the replica", || {
        set.master_port() != old
    });
    // The old master goes away for good: a subscription still on it (or
    // on anything that replicates from the new master) would hear
    // nothing more; only one that moved to the new master hears the switch.
    set.master.kill();
    let switch = || SwitchRequest::new(Colour::Green, "t").request_id("after-failover");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        match store.switch(&app, switch()).await {
            Ok(out) => break out,
            Err(e) if e.is_retryable() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no switch after the failover: {e:?}"),
        }
    };
    assert_eq!(out.state.generation, 2);
    // A hint is a hint: whether it carries the generation or (after the
    // subscription moved to the new master) says "read again", the read it
    // leads to shows the switch.
    let heard = tokio::time::timeout(Duration::from_secs(10), async {
        while changes.recv().await.is_some() {
            if let Ok(Some(state)) = store.get(&app).await
                && state.generation == 2
            {
                return;
            }
        }
    })
    .await;
    assert!(
        heard.is_ok(),
        "the subscription did not follow the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_managed_master_over_tls() {
    let tls = TlsFiles::generate();
    let set = SentinelSet::start_tls("bgmaster", &tls);
    let url = format!("{}?ca={}", set.tls_url(), tls.ca().display());
    conform_on_redis(&url, options()).await;
}

#[test]
fn the_legacy_mirror_is_refused_with_a_cluster() {
    let opts = RedisOptions {
        mirror: Some(LegacyMirror::new(AppName::new("x").unwrap(), "alfa", "beta").unwrap()),
        ..RedisOptions::default()
    };
    let err =
        RedisStore::with_options("redis-cluster://127.0.0.1:1,127.0.0.1:2", opts).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("Redis Cluster"), "{err}");
}
