use std::time::{Duration, Instant};

use bg_state::{
    AppName, Colour, ColourStore, DeployPhase, DeployRecord, Error, InitRequest, LegacyMirror,
    LiveVersion, Presence, RedisOptions, RedisStore, SwitchRequest,
};
use bg_testkit::RedisServer;

use super::{HISTORY_CAP, conform_on_redis};

fn options() -> RedisOptions {
    RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(300),
        history_cap: HISTORY_CAP,
        ..RedisOptions::default()
    }
}

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let server = RedisServer::start();
    // Separate stores have separate connections: the race crosses them.
    conform_on_redis(&server.url(), options()).await;
}

#[tokio::test]
async fn keys_share_the_apps_hash_tag() {
    let server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let app = AppName::new("chat.ws").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    store
        .report_presence(
            &app,
            bg_state::Presence::new("g1", Colour::Blue, "v1", 1),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let mut conn = raw(&server).await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    keys.sort();
    assert_eq!(
        keys,
        [
            "bg:{chat.ws}:gates",
            "bg:{chat.ws}:history",
            "bg:{chat.ws}:state"
        ]
    );
}

/// Calls during an outage fail fast with a retryable error, and the same
/// store works again once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_then_recovers() {
    let server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let app = AppName::new("paused").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();

    // The request id makes the retry safe: a switch sent into the pause may
    // be executed when the server thaws, and its retry is then recognised.
    let switch = || {
        SwitchRequest::new(Colour::Green, "t")
            .expect_generation(1)
            .request_id("job-1-switch")
    };
    server.pause();
    for attempt in 0..2 {
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(10), store.switch(&app, switch()))
            .await
            .expect("a call to a paused Redis hung")
            .unwrap_err();
        assert!(err.is_retryable(), "attempt {attempt}: {err:?}");
        eprintln!(
            "paused server: attempt {attempt} failed after {:?}: {err}",
            started.elapsed()
        );
    }
    server.resume();

    let out = retry(|| store.switch(&app, switch())).await;
    assert_eq!(out.state.active, Colour::Green);
    assert_eq!(out.state.generation, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_server_fails_fast_and_a_restart_is_reconnected() {
    let mut server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let app = AppName::new("killed").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    let mut sub = store.subscribe(&app).await.unwrap();

    server.kill();
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), store.get(&app))
        .await
        .expect("a call to a dead Redis hung")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(err.is_retryable(), "{err:?}");
    assert!(matches!(
        err,
        Error::Unavailable {
            backend: "redis",
            ..
        }
    ));

    server.restart();
    // Restarted empty: the state is gone, which callers must see as such.
    let state = retry(|| store.get(&app)).await;
    assert_eq!(state, None);
    store
        .init(&app, InitRequest::new(Colour::Blue, "t").min_generation(5))
        .await
        .unwrap();

    // The subscription reconnects on its own and hears changes again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut heard_switch = false;
    while Instant::now() < deadline && !heard_switch {
        store
            .switch(&app, SwitchRequest::new(Colour::Green, "t"))
            .await
            .unwrap();
        if let Ok(Some(change)) = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await
        {
            heard_switch = change.generation.is_none() || change.generation >= Some(6);
        }
    }
    assert!(
        heard_switch,
        "the subscription did not come back after the restart"
    );
}

async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    }
}

#[tokio::test]
async fn corrupt_state_is_reported_and_left_alone() {
    let server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let mut conn = raw(&server).await;
    const OK: [(&str, &str); 4] = [
        ("generation", "3"),
        ("active", "blue"),
        ("lc_actor", "ops"),
        ("lc_at", "1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        OK.iter()
            .chain(extra)
            .copied()
            .collect::<Vec<(&str, &str)>>()
    };
    let cases: [(&str, Vec<(&str, &str)>); 11] = [
        (
            "garbage-gen",
            vec![("generation", "lots"), ("active", "blue")],
        ),
        (
            "bad-colour",
            vec![("generation", "3"), ("active", "purple")],
        ),
        ("no-active", vec![("generation", "3")]),
        ("no-actor", vec![("generation", "3"), ("active", "blue")]),
        (
            "bad-deploy",
            with(&[("green_version", "v1"), ("green_phase", "sideways")]),
        ),
        // A phase without a version: the switch to green would otherwise
        // write half of itself before failing on the missing version.
        (
            "phase-no-version",
            with(&[
                ("green_phase", "deployed"),
                ("green_at", "1"),
                ("green_actor", "ci"),
            ]),
        ),
        ("empty-live", with(&[("green_live", "")])),
        ("spaced-live", with(&[("green_live", "v 1")])),
        (
            "bad-live-rb",
            with(&[("blue_live", "v1"), ("blue_live_rb", "yes")]),
        ),
        (
            "empty-live-rb",
            with(&[("green_live", "v1"), ("green_live_rb", "")]),
        ),
        ("rb-no-live", with(&[("blue_live_rb", "1")])),
    ];
    for (name, fields) in cases {
        let app = AppName::new(name).unwrap();
        let key = format!("bg:{{{name}}}:state");
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(fields)
            .query_async(&mut conn)
            .await
            .unwrap();
        let before: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let history = format!("bg:{{{name}}}:history");
        let mut sub = store.subscribe(&app).await.unwrap();

        let err = store.get(&app).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(&key), "{name}: {err}");
        let switched = store
            .switch(&app, SwitchRequest::new(Colour::Green, "t"))
            .await;
        let forced = store
            .init(&app, InitRequest::new(Colour::Green, "t").force(true))
            .await;
        assert!(
            matches!(switched, Err(Error::Corrupt { .. })),
            "{name}: {switched:?}"
        );
        assert!(
            matches!(forced, Err(Error::Corrupt { .. })),
            "{name}: {forced:?}"
        );
        let after: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(before, after, "{name}: a corrupt hash was written to");
        let events: usize = redis::cmd("XLEN")
            .arg(&history)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(events, 0, "{name}: a refused call recorded an event");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), sub.recv())
                .await
                .is_err(),
            "{name}: a refused call notified"
        );
    }

    // Bookkeeping fields and key types are checked before any write too.
    let app = AppName::new("bad-fence").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("bg:{bad-fence}:state")
        .arg("fence_seq")
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store
        .acquire_lease(
            &app,
            bg_state::LeaseRequest::new("p", Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    let app = AppName::new("bad-type").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg("bg:{bad-type}:history")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("bg:{bad-type}:history")
        .arg("oops")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a string"), "{err}");
    let state: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg("bg:{bad-type}:state")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        state.contains(&("active".into(), "blue".into())),
        "a refused switch wrote: {state:?}"
    );

    let app = AppName::new("bad-presence").unwrap();
    let _: () = redis::cmd("HSET")
        .arg("bg:{bad-presence}:gates")
        .arg("g1")
        .arg("{nope")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.presences(&app).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");

    let app = AppName::new("bad-history").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("bg:{bad-history}:history")
        .arg("*")
        .arg("e")
        .arg("{nonsense")
        .query_async(&mut conn)
        .await
        .unwrap();
    let err = store.history(&app, 10).await.unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
}

/// The hand-made design's keys follow every change, in the same script.
#[tokio::test]
async fn legacy_mirror_follows_every_change() {
    let server = RedisServer::start();
    let app = AppName::new("legacy").unwrap();
    let opts = RedisOptions {
        mirror: Some(LegacyMirror::new(app.clone(), "alfa", "beta").unwrap()),
        ..options()
    };
    let store = RedisStore::with_options(&server.url(), opts).unwrap();
    let mut conn = raw(&server).await;
    let mut legacy = async || -> (String, String) {
        redis::cmd("MGET")
            .arg("lb-status-alfa")
            .arg("lb-status-beta")
            .query_async(&mut conn)
            .await
            .unwrap()
    };

    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    assert_eq!(legacy().await, ("1".into(), "0".into()));
    store
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    assert_eq!(legacy().await, ("0".into(), "1".into()));
    // A refused switch leaves them alone.
    store
        .switch(
            &app,
            SwitchRequest::new(Colour::Blue, "t").expect_generation(1),
        )
        .await
        .unwrap_err();
    assert_eq!(legacy().await, ("0".into(), "1".into()));
    store
        .init(&app, InitRequest::new(Colour::Blue, "t").force(true))
        .await
        .unwrap();
    assert_eq!(legacy().await, ("1".into(), "0".into()));
    // Another app in the same store leaves the legacy keys alone.
    let other = AppName::new("other").unwrap();
    store
        .init(&other, InitRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    store
        .switch(&other, SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    assert_eq!(legacy().await, ("1".into(), "0".into()));

    for (blue, green) in [("", "beta"), ("alfa", "alfa"), ("al fa", "beta")] {
        let err = LegacyMirror::new(app.clone(), blue, green).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
}

/// The mirror's ids are kept in the app's state: a store opened without
/// the mirror (`bg-ctl --store redis://…`) moves the legacy keys too, and
/// data from before the ids were kept loads and gains them.
#[tokio::test]
async fn legacy_mirror_ids_live_in_the_state() {
    let server = RedisServer::start();
    let app = AppName::new("legacy").unwrap();
    let plain = RedisStore::with_options(&server.url(), options()).unwrap();
    let mirrored = |blue, green| {
        RedisStore::with_options(
            &server.url(),
            RedisOptions {
                mirror: Some(LegacyMirror::new(app.clone(), blue, green).unwrap()),
                ..options()
            },
        )
        .unwrap()
    };
    let mut conn = raw(&server).await;
    let mut legacy = async |keys: [&str; 2]| -> (Option<String>, Option<String>) {
        redis::cmd("MGET")
            .arg(keys[0])
            .arg(keys[1])
            .query_async(&mut conn)
            .await
            .unwrap()
    };
    let ours = ["lb-status-alfa", "lb-status-beta"];
    let some = |a: &str, b: &str| (Some(a.to_owned()), Some(b.to_owned()));

    // State written before the mirror existed: green live, no legacy keys.
    plain
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    plain
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    assert_eq!(legacy(ours).await, (None, None));

    // A gate started with the mirror reports its presence: the ids are
    // recorded and the keys set at once, before any change.
    let gate = mirrored("alfa", "beta");
    gate.report_presence(
        &app,
        Presence::new("gate-1", Colour::Blue, "v1", 2),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(legacy(ours).await, some("0", "1"));

    // A switch by a store that knows nothing of the mirror moves them.
    let done = plain
        .switch(&app, SwitchRequest::new(Colour::Blue, "ci"))
        .await
        .unwrap();
    assert_eq!(done.state.generation, 3);
    assert_eq!(legacy(ours).await, some("1", "0"));
    plain
        .switch(&app, SwitchRequest::new(Colour::Green, "ci").rollback(true))
        .await
        .unwrap();
    assert_eq!(legacy(ours).await, some("0", "1"));
    plain
        .init(&app, InitRequest::new(Colour::Blue, "t").force(true))
        .await
        .unwrap();
    assert_eq!(legacy(ours).await, some("1", "0"));

    // Recorded once: a store with other ids does not move them by a switch;
    // an init with the mirror replaces them.
    let other = mirrored("x1", "x2");
    other
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    assert_eq!(legacy(ours).await, some("0", "1"));
    assert_eq!(legacy(["lb-status-x1", "lb-status-x2"]).await, (None, None));
    other
        .init(&app, InitRequest::new(Colour::Blue, "t").force(true))
        .await
        .unwrap();
    assert_eq!(
        legacy(["lb-status-x1", "lb-status-x2"]).await,
        some("1", "0")
    );
    plain
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap();
    assert_eq!(
        legacy(["lb-status-x1", "lb-status-x2"]).await,
        some("0", "1")
    );
    assert_eq!(
        plain.get(&app).await.unwrap().unwrap().active,
        Colour::Green
    );
}

/// Recorded ids that are not ids are refused like any garbage field.
#[tokio::test]
async fn garbage_mirror_ids_are_refused() {
    let server = RedisServer::start();
    let app = AppName::new("legacy").unwrap();
    let plain = RedisStore::with_options(&server.url(), options()).unwrap();
    plain
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let mut conn = raw(&server).await;
    let () = redis::cmd("HSET")
        .arg("bg:{legacy}:state")
        .arg("mirror_blue")
        .arg("a b")
        .arg("mirror_green")
        .arg("beta")
        .query_async(&mut conn)
        .await
        .map(|_: i64| ())
        .unwrap();
    let err = plain
        .switch(&app, SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Corrupt { .. }), "{err:?}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("lb-status-*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[test]
fn passwords_never_show() {
    let store = RedisStore::open("redis://:hunter2-secret@127.0.0.1:1/0").unwrap();
    let shown = format!("{store:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let err = RedisStore::open("redis://:hunter2-secret@127.0.0.1:notaport/0").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let err = RedisStore::open("redis://127.0.0.1:1/0?pass=hunter2-secret").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("unknown setting"), "{err}");
    let err = RedisStore::open("unix:///tmp/redis.sock?pass=hunter2-secret").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("unknown scheme"), "{err}");
}

#[tokio::test]
async fn a_wrong_password_is_not_retryable() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right-password-123")
        .query_async(&mut conn)
        .await
        .unwrap();
    let url = format!("redis://:wrong-password-456@127.0.0.1:{}/0", server.port());
    let store = RedisStore::with_options(&url, options()).unwrap();
    let err = store.get(&AppName::new("auth").unwrap()).await.unwrap_err();
    assert!(!err.to_string().contains("wrong-password-456"), "{err}");
    assert!(
        matches!(
            err,
            Error::Unavailable {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
}

/// A hash written before the per-colour live versions existed has none; the
/// colour a switch leaves gets the version its verified deploy record says
/// it served, so the first rollback after the upgrade has a target.
#[tokio::test]
async fn a_hash_without_live_versions_gets_them_on_a_switch() {
    let server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let mut conn = raw(&server).await;
    let app = AppName::new("upgraded").unwrap();
    store
        .init(&app, InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    for (colour, version) in [(Colour::Green, "v1"), (Colour::Blue, "v2")] {
        for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
            store
                .record_deploy(&app, DeployRecord::new(colour, version, phase, "ci"))
                .await
                .unwrap();
        }
        store
            .switch(&app, SwitchRequest::new(colour, "ci"))
            .await
            .unwrap();
    }
    // Blue serves v2, green's record is v1, which it served before.
    let _: () = redis::cmd("HDEL")
        .arg("bg:{upgraded}:state")
        .arg(&["blue_live", "blue_live_rb", "green_live", "green_live_rb"])
        .query_async(&mut conn)
        .await
        .unwrap();
    let s = store.get(&app).await.unwrap().unwrap();
    assert_eq!(
        (s.active, s.blue_live, s.green_live),
        (Colour::Blue, None, None)
    );

    let live = |v: &str, rolled_back| {
        Some(LiveVersion {
            version: v.into(),
            rolled_back,
        })
    };
    // A release of v3 to green, switched: blue leaves serving v2.
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(&app, DeployRecord::new(Colour::Green, "v3", phase, "ci"))
            .await
            .unwrap();
    }
    let s = store
        .switch(&app, SwitchRequest::new(Colour::Green, "ci"))
        .await
        .unwrap()
        .state;
    assert_eq!(
        (s.blue_live, s.green_live),
        (live("v2", false), live("v3", false))
    );
    // So the rollback has a target, and marks the release it leaves.
    let s = store
        .switch(&app, SwitchRequest::new(Colour::Blue, "ci").rollback(true))
        .await
        .unwrap()
        .state;
    assert_eq!(
        (s.blue_live.clone(), s.green_live.clone()),
        (live("v2", false), live("v3", true))
    );
    assert_eq!(store.get(&app).await.unwrap().unwrap(), s);
}

/// The script and the client read a stored live version by one rule, the
/// version rule, non-ASCII whitespace and length in characters included:
/// what one refuses as corrupt the other does too.
#[tokio::test]
async fn script_and_client_agree_on_live_versions() {
    let server = RedisServer::start();
    let store = RedisStore::with_options(&server.url(), options()).unwrap();
    let mut conn = raw(&server).await;
    let cases = [
        ("v1".to_owned(), true),
        ("ü-1.0+build".to_owned(), true),
        ("é".repeat(128), true),
        ("v\u{200b}1".to_owned(), true),
        ("é".repeat(129), false),
        ("v\u{a0}1".to_owned(), false),
        ("v\u{85}1".to_owned(), false),
        ("v\u{2003}1".to_owned(), false),
        ("v\u{3000}1".to_owned(), false),
        ("v\u{7f}".to_owned(), false),
        (" ".to_owned(), false),
    ];
    for (i, (version, valid)) in cases.into_iter().enumerate() {
        let app = AppName::new(format!("live-{i}")).unwrap();
        store
            .init(&app, InitRequest::new(Colour::Blue, "t"))
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("bg:{{live-{i}}}:state"))
            .arg("green_live")
            .arg(&version)
            .query_async(&mut conn)
            .await
            .unwrap();
        let read = store.get(&app).await;
        let switched = store
            .switch(&app, SwitchRequest::new(Colour::Green, "t"))
            .await;
        if valid {
            let state = read.unwrap().unwrap();
            assert_eq!(state.green_live.unwrap().version, version);
            assert!(switched.unwrap().changed, "{version:?}");
        } else {
            assert!(
                matches!(read, Err(Error::Corrupt { .. })),
                "{version:?}: {read:?}"
            );
            assert!(
                matches!(switched, Err(Error::Corrupt { .. })),
                "{version:?}: {switched:?}"
            );
        }
    }
}
