//! Arbitrary requests at the whole router: no panic, no hang, and without a
//! valid token no change to the state.

use axum::body::Body;
use axum::http::Request;
use bg_state::Colour;
use proptest::prelude::*;
use tower::ServiceExt;

use super::*;

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

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_never_panic_or_switch(
        method in method(),
        path in path(),
        auth in prop::option::of("[ -~]{0,60}"),
        content_type in prop::option::of(prop::sample::select(vec!["application/json", "text/plain", "multipart/form-data; boundary=x"])),
        body in prop::collection::vec(any::<u8>(), 0..300),
        json_body in prop::option::of(r#"\{"to":"(green|blue|x)"(,"expect_generation":[0-9]{1,3})?(,"force":true)?\}"#),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = memory_with(Colour::Blue).await;
            let g = gate(&store, config(Colour::Blue)).await;
            let r = router(&g);
            let mut req = Request::builder().method(method).uri(&path);
            if let Some(a) = &auth {
                req = req.header("authorization", a.as_str());
            }
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            let body = json_body.map_or(body, String::into_bytes);
            let Ok(req) = req.body(Body::from(body)) else {
                return; // not even a request: nothing to send
            };
            let res = tokio::time::timeout(Duration::from_secs(5), r.oneshot(req))
                .await
                .expect("the router hung")
                .unwrap();
            assert!(res.status().as_u16() < 500 || res.status().as_u16() == 503, "{} {path}: {}", method, res.status());
            let s = store.get(&app()).await.unwrap().unwrap();
            assert_eq!((s.active, s.generation), (Colour::Blue, 1), "state changed without a valid token: {method} {path}");
            assert_eq!(store.history(&app(), 10).await.unwrap().len(), 1);
        });
    }
}
