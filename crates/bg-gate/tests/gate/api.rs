//! The store over HTTP: the conformance suite through `RemoteStore` against
//! a real gate on a real socket, and what only the API can get wrong.

use std::net::SocketAddr;

use bg_state::conformance::{Config, run_all};
use bg_state::{Colour, ColourStore, Error, InitRequest, MemoryStore, RemoteStore, SwitchRequest};

use axum::http::{Method, StatusCode};

use super::*;

/// A gate over `store` serving its admin router on a free port.
async fn serve(store: Arc<dyn ColourStore>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    // The conformance suite works on apps of its own.
    let mut cfg = config(Colour::Blue);
    cfg.api_any_app = true;
    let gate = Gate::new(store, cfg, auth()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = gate.admin_router::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    (addr, task)
}

fn remote(addr: SocketAddr, token: Option<&str>) -> Arc<dyn ColourStore> {
    Arc::new(
        RemoteStore::new(
            &format!("http://{addr}"),
            token.map(str::to_owned),
            Duration::from_secs(10),
        )
        .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_through_a_gate() {
    let (addr, server) = serve(Arc::new(MemoryStore::with_history_cap(20))).await;
    let stores = [
        remote(addr, Some(TOKEN)),
        remote(addr, Some(TOKEN)),
        remote(addr, Some(TOKEN)),
    ];
    let cfg = Config {
        history_cap: 20,
        credential_actor: Some("ci".into()),
        credential_owner: Some("token:ci".into()),
        ..Config::default()
    };
    run_all(&stores, &cfg).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance_through_a_gate_over_redis() {
    let server = bg_testkit::RedisServer::start();
    let opts = bg_state::RedisOptions {
        history_cap: 20,
        ..bg_state::RedisOptions::default()
    };
    let redis = Arc::new(bg_state::RedisStore::with_options(&server.url(), opts).unwrap());
    let (addr, task) = serve(redis).await;
    let stores = [remote(addr, Some(TOKEN)), remote(addr, Some(TOKEN))];
    let cfg = Config {
        history_cap: 20,
        credential_actor: Some("ci".into()),
        credential_owner: Some("token:ci".into()),
        ..Config::default()
    };
    run_all(&stores, &cfg).await;
    task.abort();
}

#[tokio::test]
async fn writes_need_credentials_and_record_the_caller() {
    let store: Arc<dyn ColourStore> = Arc::new(MemoryStore::new());
    let (addr, server) = serve(Arc::clone(&store)).await;
    let anonymous = remote(addr, None);
    let wrong = remote(addr, Some("not-the-token-0123456789"));
    let ci = remote(addr, Some(TOKEN));

    for s in [&anonymous, &wrong] {
        let err = s
            .init(&app(), InitRequest::new(Colour::Blue, "mallory"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
        assert!(!err.to_string().contains("not-the-token"), "{err}");
    }
    assert_eq!(store.get(&app()).await.unwrap(), None);

    ci.init(&app(), InitRequest::new(Colour::Blue, "claimed-name"))
        .await
        .unwrap();
    // Reads are open; the actor is the token's name, not what the request claimed.
    let s = anonymous.get(&app()).await.unwrap().unwrap();
    assert_eq!(s.last_change.actor, "ci");
    let out = ci
        .switch(&app(), SwitchRequest::new(Colour::Green, "claimed-name"))
        .await
        .unwrap();
    assert!(out.changed);
    assert_eq!(anonymous.history(&app(), 10).await.unwrap()[0].actor, "ci");
    server.abort();
}

/// Several gates of one store: a gate that cannot be connected to is
/// passed over, and the one that answered is asked first from then on; a
/// gate that answers with a refusal is not.
#[tokio::test]
async fn a_gate_that_never_answers_the_connection_is_passed_over_too() {
    let store: Arc<dyn ColourStore> = Arc::new(MemoryStore::new());
    store
        .init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let (up, _server) = serve(Arc::clone(&store)).await;
    // A listener that never accepts, its queue full: the kernel drops
    // further connection attempts, as a firewall that drops would.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .unwrap();
    let silent = socket.listen(1).unwrap();
    let hole = silent.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(c)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(hole),
        )
        .await
        {
            fillers.push(c);
        }
    }
    let urls = [format!("http://{hole}"), format!("http://{up}")];
    let both = RemoteStore::with_gates(&urls, None, Duration::from_secs(6)).unwrap();
    let started = std::time::Instant::now();
    let state = both.get(&app()).await.unwrap().unwrap();
    assert_eq!(state.active, Colour::Blue);
    // Passed over at its connection timeout (a third of the request's),
    // not at the request's own 6 s.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_store_over_several_gates_moves_on_from_one_that_is_down() {
    let store: Arc<dyn ColourStore> = Arc::new(MemoryStore::new());
    let (up, server) = serve(Arc::clone(&store)).await;
    let down = {
        // A port that was free a moment ago: nothing listens there.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let urls = [format!("http://{down}"), format!("http://{up}/")];
    let both = RemoteStore::with_gates(&urls, Some(TOKEN.into()), Duration::from_secs(5)).unwrap();
    assert_eq!(both.gates(), [urls[0].clone(), format!("http://{up}")]);
    both.init(&app(), InitRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    let out = both
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    assert_eq!(out.state.generation, 2);
    assert_eq!(
        store.get(&app()).await.unwrap().unwrap().active,
        Colour::Green
    );

    // A refusal is the store's answer: no other gate is asked.
    let refused = RemoteStore::with_gates(
        &urls,
        Some("not-the-token-0123456789".into()),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = refused
        .switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");

    // Every gate down: unavailable, and retryable.
    server.abort();
    let _ = server.await;
    let err = both.get(&app()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unavailable {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );

    for bad in [
        &[][..],
        &["http://gate:9090".to_owned(), "ftp://x".to_owned()][..],
    ] {
        let err = RemoteStore::with_gates(bad, None, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    }
}

#[tokio::test]
async fn the_api_answers_bad_requests_with_kinds() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let r = router(&g);
    /// Method, path, token, body, expected status and kind.
    type Case<'a> = (
        Method,
        &'a str,
        Option<&'a str>,
        &'a str,
        StatusCode,
        &'a str,
    );
    let cases: [Case<'_>; 8] = [
        (
            Method::GET,
            "/bg/api/v1/apps/Bad%20App/state",
            None,
            "",
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::GET,
            "/bg/api/v1/apps/chat/nothing",
            None,
            "",
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/bg/api/v1/apps/chat/switch",
            Some(TOKEN),
            "",
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/bg/api/v1/apps/chat/switch",
            Some(TOKEN),
            r#"{"to":"green","actor":"x"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            Method::POST,
            "/bg/api/v1/apps/chat/switch",
            None,
            r#"{"to":"green"}"#,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            Method::POST,
            "/bg/api/v1/apps/chat/switch",
            Some(TOKEN),
            r#"{"to":"blue","expect_generation":9}"#,
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            Method::POST,
            "/bg/api/v1/apps/chat/deploys",
            Some(TOKEN),
            r#"{"colour":"blue","version":"v2","phase":"deploying"}"#,
            StatusCode::CONFLICT,
            "deploy_to_live",
        ),
        (
            Method::GET,
            "/bg/api/v1/apps/chat/history?limit=many",
            None,
            "",
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
    ];
    for (method, path, token, body, status, kind) in cases {
        let a = call(&r, method.clone(), path, token, body).await;
        assert_eq!(a.status, status, "{method} {path} {body}: {}", a.body);
        assert_eq!(a.json()["kind"], kind, "{method} {path}");
    }
    let s = store.get(&app()).await.unwrap().unwrap();
    assert_eq!((s.active, s.generation), (Colour::Blue, 1));

    // Another app in the same store is out of this gate's reach.
    for (method, path) in [
        (Method::GET, "/bg/api/v1/apps/other/state"),
        (Method::POST, "/bg/api/v1/apps/other/init"),
    ] {
        let a = call(&r, method, path, Some(TOKEN), r#"{"active":"green"}"#).await;
        assert_eq!(a.status, StatusCode::NOT_FOUND, "{path}: {}", a.body);
        assert!(a.body.contains("serves app chat only"), "{}", a.body);
    }
    assert_eq!(
        store
            .get(&bg_state::AppName::new("other").unwrap())
            .await
            .unwrap(),
        None
    );

    // The long poll times out with "nothing changed", and answers at once when behind.
    let a = get(&r, "/bg/api/v1/apps/chat/changes?since=1&timeout_ms=50").await;
    assert_eq!(
        a.json(),
        serde_json::json!({"changed": false, "generation": 1})
    );
    let a = get(&r, "/bg/api/v1/apps/chat/changes?since=0&timeout_ms=5000").await;
    assert_eq!(
        a.json(),
        serde_json::json!({"changed": true, "generation": 1})
    );
}
