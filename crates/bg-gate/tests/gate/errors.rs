//! Every error answer is JSON with a `kind`, as `docs/api.md` promises,
//! including those axum would answer by itself: a wrong method and a path
//! segment that does not decode.

use axum::http::{Method, StatusCode, header};
use bg_state::Colour;

use super::{call, gate, memory_with, router};

#[tokio::test]
async fn a_wrong_method_is_405_json_with_an_allow_header() {
    let store = memory_with(Colour::Blue).await;
    let r = router(&gate(&store, super::config(Colour::Blue)).await);
    for (method, uri, allow) in [
        (Method::POST, "/balancer-keepalive-check", "GET"),
        (Method::DELETE, "/bg/check/blue", "GET"),
        (Method::PUT, "/bg/state", "GET"),
        (Method::GET, "/bg/drain", "POST"),
        (Method::POST, "/metrics", "GET"),
        (Method::GET, "/bg/api/v1/apps/chat/init", "POST"),
        (Method::DELETE, "/bg/api/v1/apps/chat/state", "GET"),
        (Method::PUT, "/bg/api/v1/apps/chat/lease", "GET"),
    ] {
        let a = call(&r, method.clone(), uri, None, "").await;
        assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
        assert_eq!(a.json()["kind"], "method_not_allowed", "{method} {uri}");
        assert!(a.json()["message"].is_string(), "{method} {uri}");
        let header = a.headers[header::ALLOW].to_str().unwrap();
        assert!(header.contains(allow), "{method} {uri}: Allow {header}");
    }
}

#[tokio::test]
async fn an_undecodable_path_segment_is_400_json() {
    let store = memory_with(Colour::Blue).await;
    let r = router(&gate(&store, super::config(Colour::Blue)).await);
    for (method, uri) in [
        (Method::GET, "/bg/check/%FF"),
        (Method::GET, "/bg/api/v1/apps/%FF%FE/state"),
        (Method::GET, "/bg/api/v1/apps/%C3%28/history"),
        (Method::POST, "/bg/api/v1/apps/%FF/switch"),
        (Method::GET, "/bg/api/v1/apps/%FF/changes?since=1"),
    ] {
        let a = call(&r, method.clone(), uri, None, "").await;
        assert_eq!(
            a.status,
            StatusCode::BAD_REQUEST,
            "{method} {uri}: {}",
            a.body
        );
        assert_eq!(a.json()["kind"], "invalid_input", "{method} {uri}");
    }
    // Nothing was written by any of them.
    assert_eq!(
        store.get(&super::app()).await.unwrap().unwrap().generation,
        1
    );
}
