//! A gate over a real redis-server that is paused, killed and restarted:
//! health answers stay and never wait on Redis; the gate catches up after.

use std::time::Instant;

use axum::http::StatusCode;
use bg_gate::Answer;
use bg_state::{Colour, ColourStore, InitRequest, RedisOptions, RedisStore, SwitchRequest};
use bg_testkit::RedisServer;

use super::view::wait_for;
use super::*;

fn store(server: &RedisServer) -> Arc<dyn ColourStore> {
    let opts = RedisOptions {
        connect_timeout: Duration::from_millis(300),
        response_timeout: Duration::from_millis(300),
        ..RedisOptions::default()
    };
    Arc::new(RedisStore::with_options(&server.url(), opts).unwrap())
}

/// Every health answer during the outage is the last known one, and comes
/// well inside the store's own timeout: it never waits on Redis.
async fn answers_hold(router: &Router, status: StatusCode, rounds: usize) {
    for _ in 0..rounds {
        let started = Instant::now();
        let a = get(router, "/balancer-keepalive-check").await;
        let took = started.elapsed();
        assert_eq!(a.status, status);
        assert!(
            took < Duration::from_millis(300),
            "a health answer waited {took:?} on the store"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_and_killed_redis_under_a_running_gate() {
    let mut server = RedisServer::start();
    let s = store(&server);
    s.init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let blue = Gate::new(Arc::clone(&s), config(Colour::Blue), auth()).unwrap();
    let green = Gate::new(Arc::clone(&s), config(Colour::Green), auth()).unwrap();
    let _f = (blue.start(), green.start());
    wait_for(|| blue.answer(Colour::Blue) == Answer::Ok && green.view().state.is_some()).await;
    let (rb, rg) = (router(&blue), router(&green));

    server.pause();
    answers_hold(&rb, StatusCode::OK, 15).await;
    answers_hold(&rg, StatusCode::SERVICE_UNAVAILABLE, 5).await;
    wait_for(|| blue.view().store_error.is_some()).await;
    let v = status(&rb).await;
    assert!(!v.store.healthy, "{v:?}");
    assert!(v.stale_ms > 0);
    // A switch through the gate while Redis is frozen: 503, nothing else.
    let a = call(
        &rb,
        axum::http::Method::POST,
        "/bg/switch",
        Some(TOKEN),
        r#"{"to":"green","expect_generation":1,"request_id":"r1"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    server.resume();
    wait_for(|| blue.view().store_error.is_none()).await;

    // The switch sent into the pause may have run once Redis thawed; its
    // retry with the same request id is safe either way.
    let a = call(
        &rb,
        axum::http::Method::POST,
        "/bg/switch",
        Some(TOKEN),
        r#"{"to":"green","expect_generation":1,"request_id":"r1"}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    wait_for(|| green.answer(Colour::Green) == Answer::Ok).await;

    server.kill();
    answers_hold(&rg, StatusCode::OK, 15).await;
    wait_for(|| green.view().store_error.is_some()).await;

    // Back, but empty: an alarm, and the last known state stands.
    server.restart();
    wait_for(|| green.view().alarm.is_some()).await;
    assert_eq!(green.answer(Colour::Green), Answer::Ok);
    answers_hold(&rg, StatusCode::OK, 3).await;

    // Restored above what the gates know: they follow again.
    let s2 = store(&server);
    s2.init(
        &app(),
        InitRequest::new(Colour::Green, "restore").min_generation(3),
    )
    .await
    .unwrap();
    wait_for(|| green.view().alarm.is_none() && green.view().generation() == 3).await;
    s2.switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    wait_for(|| {
        blue.answer(Colour::Blue) == Answer::Ok && green.answer(Colour::Green) == Answer::Stop
    })
    .await;
}

/// A Redis over TLS whose certificate nobody vouched for: the gate says
/// what to fix in `/bg/state` (the CA), not "retrying may help".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_redis_certificate_is_reported_as_configuration() {
    let tls = bg_testkit::TlsFiles::generate();
    let server = RedisServer::start_tls(&tls);
    let s: Arc<dyn ColourStore> = Arc::new(RedisStore::open(&server.tls_url()).unwrap());
    let gate = Gate::new(s, config(Colour::Blue), auth()).unwrap();
    let _f = gate.start();
    wait_for(|| gate.view().store_error.is_some()).await;
    let v = status(&router(&gate)).await;
    let error = v.store.error.unwrap_or_default();
    assert!(error.contains("not trusted"), "{error}");
    assert!(error.contains("BG_REDIS_CA"), "{error}");
    assert!(!error.contains("retrying may help"), "{error}");
}
