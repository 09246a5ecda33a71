//! The HTTP surface, path by path, on the memory store.

use axum::http::{Method, StatusCode};
use bg_gate::{Auth, Gate, StopStatus};
use bg_state::{Colour, ColourStore, Error, EventKind, MockColourStore};
use std::sync::Arc;

use super::*;

#[tokio::test]
async fn live_and_idle_answers() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let blue = router(&gate(&store, config(Colour::Blue)).await);
        let green = router(&gate(&store, config(Colour::Green)).await);

        let a = get(&blue, "/balancer-keepalive-check").await;
        assert_eq!((a.status, a.body.as_str()), (StatusCode::OK, "OK"));
        assert_eq!(a.headers["x-bg-generation"], "1");
        assert!(a.headers.contains_key("x-bg-stale-ms"));
        assert_eq!(a.headers["cache-control"], "no-store");

        let a = get(&green, "/balancer-keepalive-check").await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "STOP")
        );

        let a = call(&green, Method::HEAD, "/balancer-keepalive-check", None, "").await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "")
        );
        let a = call(&blue, Method::HEAD, "/balancer-keepalive-check", None, "").await;
        assert_eq!(a.status, StatusCode::OK);

        assert_eq!(get(&green, "/running-service-id").await.body, "green");
        assert_eq!(get(&green, "/bg/live").await.status, StatusCode::OK);

        // One gate answers for both colours.
        assert_eq!(get(&green, "/bg/check/blue").await.status, StatusCode::OK);
        assert_eq!(
            get(&green, "/bg/check/green").await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let a = get(&green, "/bg/check/purple").await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST);
        assert_eq!(a.json()["kind"], "invalid_input");
        assert_eq!(get(&green, "/nope").await.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn health_answers_carry_their_headers_whatever_the_verdict() {
    let store = memory_with(Colour::Blue).await;
    for (colour, body) in [(Colour::Blue, "OK"), (Colour::Green, "STOP")] {
        let r = router(&gate(&store, config(colour)).await);
        for method in [Method::GET, Method::HEAD] {
            let a = call(&r, method.clone(), "/balancer-keepalive-check", None, "").await;
            let mut names: Vec<_> = a.headers.keys().map(|k| k.as_str()).collect();
            names.sort_unstable();
            assert_eq!(
                names,
                [
                    "cache-control",
                    "content-length",
                    "content-type",
                    "x-bg-generation",
                    "x-bg-stale-ms"
                ],
                "{method} {colour}"
            );
            assert_eq!(a.headers["content-type"], "text/plain; charset=utf-8");
            assert_eq!(a.headers["content-length"], body.len().to_string().as_str());
            assert_eq!(a.headers["cache-control"], "no-store");
            assert_eq!(a.headers["x-bg-generation"], "1");
            let stale = a.headers["x-bg-stale-ms"].to_str().unwrap();
            assert!(stale.parse::<u64>().is_ok(), "{stale}");
        }
    }
}

#[tokio::test]
async fn stop_status_and_seed_body_are_selectable() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let mut cfg = config(Colour::Green);
        cfg.stop_status = StopStatus::NotFound;
        cfg.seed_body = true;
        let green = router(&gate(&store, cfg).await);
        let a = get(&green, "/balancer-keepalive-check").await;
        assert_eq!(
            (a.status, a.body.as_str()),
            (StatusCode::NOT_FOUND, "<response>STOP</response>")
        );
        let mut cfg = config(Colour::Blue);
        cfg.seed_body = true;
        let blue = router(&gate(&store, cfg).await);
        assert_eq!(
            get(&blue, "/balancer-keepalive-check").await.body,
            "<response>OK</response>"
        );
    }
}

#[tokio::test]
async fn a_cold_gate_answers_stop() {
    for backend in backends(None).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let a = get(&router(&g), "/balancer-keepalive-check").await;
        assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(a.headers["x-bg-generation"], "0");
    }
}

#[tokio::test]
async fn state_json_has_what_tools_read() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);
        get(&r, "/balancer-keepalive-check").await;
        let _ws = g.connections().track_websocket();
        let v = get(&r, "/bg/state").await.json();
        for field in [
            "colour",
            "version",
            "active",
            "generation",
            "stale_ms",
            "connections",
            "probes",
            "answer",
            "store",
            "alarm",
        ] {
            assert!(v.get(field).is_some(), "missing {field}: {v}");
        }
        assert_eq!(v["answer"], "ok", "the answer is a lowercase word: {v}");
        let s = status(&r).await;
        assert_eq!(s.colour, Colour::Blue);
        assert_eq!(s.version, "v1");
        assert_eq!(s.active, Some(Colour::Blue));
        assert_eq!(s.generation, 1);
        assert_eq!(s.answer, bg_gate::Answer::Ok);
        assert!(s.live && s.store.healthy);
        assert_eq!(s.connections.websockets, Some(1));
        assert_eq!(s.probes.len(), 1, "reading /bg/state is not a probe");
        assert_eq!(s.probes[0].answer, bg_gate::Answer::Ok);
        // Served without connect info, the source is simply unknown.
        assert_eq!(s.probes[0].source, None);
    }
}

#[tokio::test]
async fn switching_needs_a_token() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);
        let cases: [(Option<&str>, StatusCode, &str); 3] = [
            (None, StatusCode::UNAUTHORIZED, "unauthorized"),
            (
                Some("wrong-token-0123456789"),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                Some(&TOKEN[..TOKEN.len() - 1]),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
        ];
        for path in ["/bg/switch", "/switch"] {
            for (token, status, kind) in cases {
                let a = call(&r, Method::POST, path, token, "").await;
                assert_eq!(a.status, status, "{path} {token:?}");
                assert_eq!(a.json()["kind"], kind);
                assert!(
                    !a.body.contains(TOKEN) && !a.body.contains("wrong-token"),
                    "{}",
                    a.body
                );
            }
        }
        assert_eq!(
            store.get(&app()).await.unwrap().unwrap().generation,
            1,
            "a refused switch switched"
        );

        // No auth configured: off, never open.
        let open = Gate::new(Arc::clone(&store), config(Colour::Blue), Auth::none()).unwrap();
        let a = call(&router(&open), Method::POST, "/bg/switch", Some(TOKEN), "").await;
        assert_eq!(a.status, StatusCode::FORBIDDEN);
        assert_eq!(a.json()["kind"], "forbidden");
    }
}

#[tokio::test]
async fn switch_semantics() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);

        // The hand-made meaning: an empty body makes the other colour live.
        let a = call(&r, Method::POST, "/switch", Some(TOKEN), "").await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let v = a.json();
        assert_eq!(
            (v["changed"].as_bool(), v["state"]["active"].as_str()),
            (Some(true), Some("green"))
        );
        assert_eq!(
            g.view().generation(),
            2,
            "the switching gate caught up at once"
        );
        let last = &store.history(&app(), 1).await.unwrap()[0];
        assert_eq!(last.actor, "ci", "the actor is the token's name");

        // Compare-and-swap, and its conflict.
        let a = call(
            &r,
            Method::POST,
            "/bg/switch",
            Some(TOKEN),
            r#"{"to":"blue","expect_generation":1,"reason":"x"}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        let v = a.json();
        assert_eq!(v["kind"], "conflict");
        assert_eq!(v["current"]["generation"], 2);
        let a = call(
            &r,
            Method::POST,
            "/bg/switch",
            Some(TOKEN),
            r#"{"to":"blue","expect_generation":2,"reason":"back"}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let last = &store.history(&app(), 1).await.unwrap()[0];
        assert!(matches!(
            last.kind,
            EventKind::Switch {
                to: Colour::Blue,
                ..
            }
        ));
        assert_eq!(last.reason.as_deref(), Some("back"));

        // Already live: success, nothing changed.
        let a = call(
            &r,
            Method::POST,
            "/bg/switch",
            Some(TOKEN),
            r#"{"to":"blue"}"#,
        )
        .await;
        assert_eq!(
            (a.status, a.json()["changed"].as_bool()),
            (StatusCode::OK, Some(false))
        );
    }
}

/// The hand-made `GET /switch`, as docs/migration.md tells it: `405` with a
/// pointer on the admin listener, `404` on the public one, which has no
/// switch at all (a host service may keep its own `/switch` there).
#[tokio::test]
async fn get_switch_is_405_on_the_admin_listener_and_404_on_the_public_one() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Green)).await;
    let a = call(&g.admin_router(), Method::GET, "/switch", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(a.body.contains("docs/migration.md"), "{}", a.body);
    for method in [Method::GET, Method::POST] {
        let a = call(&g.public_router(), method, "/switch", Some(TOKEN), "").await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
    }
    let state = store.get(&app()).await.unwrap().unwrap();
    assert_eq!((state.active, state.generation), (Colour::Blue, 1));
}

#[tokio::test]
async fn bad_switch_requests_change_nothing() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);
        let big = format!(
            r#"{{"to":"green","reason":"{}"}}"#,
            "x".repeat(bg_gate::MAX_BODY)
        );
        let cases: [(&str, StatusCode, &str); 7] = [
            ("{", StatusCode::BAD_REQUEST, "invalid_input"),
            (
                r#"{"to":"purple"}"#,
                StatusCode::BAD_REQUEST,
                "invalid_input",
            ),
            (
                r#"{"to":"green","actor":"mallory"}"#,
                StatusCode::BAD_REQUEST,
                "invalid_input",
            ),
            (
                r#"{"to":"green","expect_generation":-1}"#,
                StatusCode::BAD_REQUEST,
                "invalid_input",
            ),
            (
                r#"{"to":"green","expect_generation":0}"#,
                StatusCode::BAD_REQUEST,
                "invalid_input",
            ),
            (r#"[1,2]"#, StatusCode::BAD_REQUEST, "invalid_input"),
            (&big, StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        ];
        for (body, status, kind) in cases {
            let a = call(&r, Method::POST, "/bg/switch", Some(TOKEN), body).await;
            assert_eq!(a.status, status, "{}", &body[..body.len().min(60)]);
            assert_eq!(a.json()["kind"], kind);
        }
        for path in ["/switch", "/bg/switch"] {
            let a = call(&r, Method::GET, path, Some(TOKEN), "").await;
            assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(a.headers["allow"], "POST");
            assert!(a.body.contains("migration"), "{}", a.body);
        }
        let state = store.get(&app()).await.unwrap().unwrap();
        assert_eq!((state.active, state.generation), (Colour::Blue, 1));
        assert_eq!(store.history(&app(), 10).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn store_outage_is_503_and_health_answers_stay() {
    let store = memory_with(Colour::Blue).await;
    let good = store.get(&app()).await.unwrap();
    let mut mock = MockColourStore::new();
    mock.expect_backend().return_const("redis");
    let mut first = Some(good);
    mock.expect_get().returning(move |_| match first.take() {
        Some(s) => Ok(s),
        None => Err(Error::Unavailable {
            backend: "redis",
            message: "connection refused".into(),
            retryable: true,
        }),
    });
    mock.expect_switch().returning(|_, _| {
        Err(Error::Unavailable {
            backend: "redis",
            message: "connection refused".into(),
            retryable: true,
        })
    });
    let mock: Arc<dyn ColourStore> = Arc::new(mock);
    let g = gate(&mock, config(Colour::Blue)).await;
    g.refresh().await; // this read fails
    let r = router(&g);
    let a = call(&r, Method::POST, "/bg/switch", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["retryable"], true);
    let a = get(&r, "/balancer-keepalive-check").await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "fail-static: the last known state stands"
    );
    let v = status(&r).await;
    assert!(!v.store.healthy);
    assert!(
        v.store
            .error
            .as_deref()
            .unwrap()
            .contains("connection refused"),
        "{v:?}"
    );
    let m = get(&r, "/metrics").await.body;
    assert!(m.contains("bg_gate_store_up 0"), "{m}");
    assert!(m.contains("bg_gate_store_errors_total 1"), "{m}");
}

#[tokio::test]
async fn metrics_speak_prometheus() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let g = gate(&store, config(Colour::Blue)).await;
        let r = router(&g);
        get(&r, "/balancer-keepalive-check").await;
        get(&r, "/bg/check/green").await;
        let a = get(&r, "/metrics").await;
        assert!(
            a.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        for line in [
            "bg_gate_answers_total{answer=\"ok\",via=\"http\"} 1",
            "bg_gate_answers_total{answer=\"stop\",via=\"http\"} 1",
            "bg_gate_live 1",
            "bg_gate_generation 1",
            "bg_gate_alarm 0",
            "# TYPE bg_gate_answers_total counter",
        ] {
            assert!(
                a.body.lines().any(|l| l == line),
                "missing {line:?} in\n{}",
                a.body
            );
        }
    }
}

#[tokio::test]
async fn drain_only_when_idle() {
    for backend in backends(Some(Colour::Blue)).await {
        let store = backend.store.clone();
        let blue = gate(&store, config(Colour::Blue)).await;
        let a = call(&router(&blue), Method::POST, "/bg/drain", Some(TOKEN), "").await;
        assert_eq!(a.status, StatusCode::CONFLICT);
        assert_eq!(a.json()["kind"], "live");

        let green = gate(&store, config(Colour::Green)).await;
        let mut guards: Vec<_> = (0..3)
            .map(|_| green.connections().track_websocket())
            .collect();
        let r = router(&green);
        assert_eq!(
            call(&r, Method::POST, "/bg/drain", None, "").await.status,
            StatusCode::UNAUTHORIZED
        );
        let a = call(
            &r,
            Method::POST,
            "/bg/drain",
            Some(TOKEN),
            r#"{"batch":2,"interval_ms":10}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        assert_eq!(a.json()["asked"], 3);
        for g in &mut guards {
            tokio::time::timeout(Duration::from_secs(5), g.drain_requested())
                .await
                .expect("every websocket is asked to close");
        }
        assert_eq!(bg_gate::DRAIN_CLOSE_CODE, 1012);
    }
}

#[tokio::test]
async fn a_body_that_never_finishes_times_out() {
    use axum::body::{Body, Bytes};
    use tower::ServiceExt;

    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.body_timeout = Duration::from_millis(200);
    let g = gate(&store, cfg).await;
    for path in ["/bg/switch", "/bg/api/v1/apps/chat/switch"] {
        let never = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
        let req = axum::http::Request::builder()
            .method("POST")
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Body::from_stream(never))
            .unwrap();
        let res = tokio::time::timeout(Duration::from_secs(5), router(&g).oneshot(req))
            .await
            .expect("a slow body hung the request")
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT, "{path}");
    }
    assert_eq!(store.get(&app()).await.unwrap().unwrap().generation, 1);
}

#[tokio::test]
async fn tracked_requests_count_while_in_flight() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let release = Arc::new(tokio::sync::Notify::new());
    let wait = Arc::clone(&release);
    let service: Router = g.track_requests(Router::new().route(
        "/slow",
        axum::routing::get(move || {
            let wait = Arc::clone(&wait);
            async move {
                wait.notified().await;
                "done"
            }
        }),
    ));
    assert_eq!(g.connections().requests(), 0);
    let pending = tokio::spawn(async move { get(&service, "/slow").await });
    while g.connections().requests() != 1 {
        tokio::task::yield_now().await;
    }
    release.notify_one();
    let a = pending.await.unwrap();
    assert_eq!(a.body, "done");
    assert_eq!(g.connections().requests(), 0);
}
