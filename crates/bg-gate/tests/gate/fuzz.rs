//! Arbitrary requests at the whole router: no panic, no hang; without a
//! valid token no change to the state; with the real token at most one
//! change, and only on success.
//!
//! Half the requests are shaped like the API's writes (POST, JSON, the real
//! token most of the time), so bodies get past authentication and reach the
//! parsers and the store; the run counts how many did, and fails if none did.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::Request;
use bg_state::Colour;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use tower::ServiceExt;

use super::*;

/// One request as the fuzzer builds it.
#[derive(Debug, Clone)]
struct Fuzzed {
    method: &'static str,
    path: String,
    auth: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

fn real_token() -> String {
    format!("Bearer {TOKEN}")
}

fn method() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS",
    ])
}

fn path() -> impl Strategy<Value = String> {
    let known = prop::sample::select(vec![
        "/balancer-keepalive-check",
        "/running-service-id",
        "/bg/check/blue",
        "/bg/check/%ff",
        "/bg/live",
        "/bg/state",
        "/bg/switch",
        "/switch",
        "/bg/drain",
        "/metrics",
        "/bg/api/v1/apps/chat/state",
        "/bg/api/v1/apps/chat/switch",
        "/bg/api/v1/apps/chat/init",
        "/bg/api/v1/apps/chat/deploys",
        "/bg/api/v1/apps/chat/lease",
        "/bg/api/v1/apps/chat/lease/break",
        "/bg/api/v1/apps/chat/history?limit=-1",
        "/bg/api/v1/apps/chat/changes?since=x",
        "/bg/api/v1/apps/Bad%20App/state",
    ])
    .prop_map(str::to_owned);
    prop_oneof![4 => known, 1 => "/[a-z/%0-9?=&]{0,40}"]
}

/// A write route with a body meant for it (or for another route).
fn write() -> impl Strategy<Value = (String, Vec<u8>)> {
    let route = |path: &'static str, body: &'static str| {
        (Just(path.to_owned()), body.prop_map(String::into_bytes))
    };
    prop_oneof![
        route(
            "/bg/api/v1/apps/chat/switch",
            r#"\{"to":"(green|blue)"(,"expect_generation":[0-2])?(,"rollback":true)?\}"#
        ),
        route(
            "/bg/switch",
            r#"\{"to":"(green|blue|x)"(,"expect_generation":[0-2])?\}"#
        ),
        route(
            "/bg/api/v1/apps/chat/init",
            r#"\{"active":"(green|blue)"(,"force":true)?(,"min_generation":[0-9])?\}"#
        ),
        route(
            "/bg/api/v1/apps/chat/deploys",
            r#"\{"colour":"(green|blue)","version":"v[0-9]{1,3}","phase":"(deploying|deployed)"\}"#
        ),
        route(
            "/bg/api/v1/apps/chat/lease",
            r#"\{"holder":"[a-z]{1,8}","ttl_ms":[0-9]{1,6}\}"#
        ),
        route(
            "/bg/api/v1/apps/chat/lease/break",
            r#"\{("reason":"[a-z ]{0,10}")?\}"#
        ),
        route("/bg/drain", r#"\{("timeout_ms":[0-9]{1,4})?\}"#),
        (write_path(), json_body()),
    ]
}

/// The routes that write.
fn write_path() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "/bg/switch",
        "/switch",
        "/bg/drain",
        "/bg/api/v1/apps/chat/switch",
        "/bg/api/v1/apps/chat/init",
        "/bg/api/v1/apps/chat/deploys",
        "/bg/api/v1/apps/chat/lease",
        "/bg/api/v1/apps/chat/lease/renew",
        "/bg/api/v1/apps/chat/lease/release",
        "/bg/api/v1/apps/chat/lease/break",
        "/bg/api/v1/apps/chat/presence",
    ])
    .prop_map(str::to_owned)
}

/// The authorization header: none, arbitrary text, or the real token.
fn authorization() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        1 => "[ -~]{0,60}".prop_map(Some),
        1 => Just(Some(real_token())),
    ]
}

/// Bodies shaped like the API's, with holes, so the parsers see both.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        r#"\{"to":"(green|blue|x)"(,"expect_generation":[0-9]{1,3})?(,"force":(true|1))?(,"rollback":true)?\}"#,
        r#"\{"active":"(green|blue|x)"(,"force":true)?(,"min_generation":[0-9]{1,2})?\}"#,
        r#"\{"colour":"(green|blue)","version":"[ -~]{0,8}","phase":"(deploying|deployed|x)"(,"fence":[0-9])?\}"#,
        r#"\{"holder":"[a-z]{0,8}","ttl_ms":[0-9]{1,7}\}"#,
        r#"\{"fence":[0-9]{1,3}(,"ttl_ms":[0-9]{1,5})?\}"#,
        r#"\{"to":"green"[ -~]{0,20}"#,
    ]
    .prop_map(String::into_bytes)
}

/// Anything at all.
fn arbitrary() -> impl Strategy<Value = Fuzzed> {
    (
        method(),
        path(),
        authorization(),
        prop::option::of(prop::sample::select(vec![
            "application/json",
            "text/plain",
            "multipart/form-data; boundary=x",
        ])),
        prop_oneof![prop::collection::vec(any::<u8>(), 0..300), json_body()],
    )
        .prop_map(|(method, path, auth, content_type, body)| Fuzzed {
            method,
            path,
            auth,
            content_type,
            body,
        })
}

/// A write as a client would send it, mostly with the real token.
fn shaped() -> impl Strategy<Value = Fuzzed> {
    (
        write(),
        prop_oneof![4 => Just(Some(real_token())), 1 => authorization()],
    )
        .prop_map(|((path, body), auth)| Fuzzed {
            method: "POST",
            path,
            auth,
            content_type: Some("application/json"),
            body,
        })
}

/// What the run saw, to tell that bodies reached the parsers.
#[derive(Default)]
struct Seen {
    /// Requests with the real token that were answered 2xx and changed
    /// the state or its history.
    changed: AtomicUsize,
    /// Requests with the real token refused for their body (400, 409, 422).
    refused_body: AtomicUsize,
}

/// Sends one request to a fresh gate and checks what may change.
fn one(req: &Fuzzed, seen: &Seen) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = memory_with(Colour::Blue).await;
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);
        let mut builder = Request::builder().method(req.method).uri(&req.path);
        if let Some(a) = &req.auth {
            builder = builder.header("authorization", a.as_str());
        }
        if let Some(ct) = req.content_type {
            builder = builder.header("content-type", ct);
        }
        let Ok(http) = builder.body(Body::from(req.body.clone())) else {
            return; // not even a request: nothing to send
        };
        let res = tokio::time::timeout(Duration::from_secs(5), r.oneshot(http))
            .await
            .expect("the router hung")
            .unwrap();
        let (method, path, status) = (req.method, &req.path, res.status());
        assert!(
            status.as_u16() < 500 || status.as_u16() == 503,
            "{method} {path}: {status}"
        );
        let s = store.get(&app()).await.unwrap().unwrap();
        let events = store.history(&app(), 10).await.unwrap().len();
        let unchanged = (s.active, s.generation, events) == (Colour::Blue, 1, 1);
        if req.auth.as_deref() != Some(real_token().as_str()) {
            assert!(
                unchanged,
                "state changed without a valid token: {method} {path}"
            );
            return;
        }
        assert_ne!(
            status.as_u16(),
            401,
            "the real token was refused: {method} {path}"
        );
        assert!(
            unchanged || status.is_success(),
            "a refused request ({status}) changed the state: {method} {path}"
        );
        // One step up, or to the `min_generation` (at most 99 here) of a
        // forced init.
        let highest = if path.ends_with("/init") { 99 } else { 2 };
        assert!(
            s.generation <= highest && events <= 2,
            "one request made more than one change: {method} {path}: {s:?}"
        );
        assert!(
            s.generation == 1 || events == 2,
            "a switch without its event: {method} {path}"
        );
        if !unchanged {
            seen.changed.fetch_add(1, Ordering::Relaxed);
        }
        if matches!(status.as_u16(), 400 | 409 | 422) {
            seen.refused_body.fetch_add(1, Ordering::Relaxed);
        }
    });
}

#[test]
fn arbitrary_requests_never_panic_or_change_more_than_the_token_allows() {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 192,
        ..ProptestConfig::default()
    });
    let seen = Seen::default();
    runner
        .run(&prop_oneof![arbitrary(), shaped()], |req| {
            one(&req, &seen);
            Ok(())
        })
        .unwrap();
    let changed = seen.changed.load(Ordering::Relaxed);
    let refused = seen.refused_body.load(Ordering::Relaxed);
    assert!(
        changed > 0 && refused > 0,
        "the real token reached no handler: {changed} changes, {refused} bodies refused"
    );
}
