//! Sidecar mode: a standalone gate beside a service it cannot see into. A
//! real HTTP service on loopback stands in for it, whose health, version,
//! connection count and drain route the test controls and watches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::extract::State;
use axum::routing::{get as get_route, post};
use bg_gate::ServiceConfig;
use bg_state::{Colour, SwitchRequest};

use super::view::{agent_line, wait_for};
use super::*;

/// What the stand-in service does, and the drains it was sent.
#[derive(Default)]
pub(crate) struct Service {
    pub(crate) healthy: AtomicBool,
    version: Mutex<String>,
    connections: AtomicU64,
    drains: Mutex<Vec<serde_json::Value>>,
}

pub(crate) async fn service(s: Arc<Service>) -> std::net::SocketAddr {
    let app =
        Router::new()
            .route(
                "/health",
                get_route(|State(s): State<Arc<Service>>| async move {
                    if s.healthy.load(Ordering::SeqCst) {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::INTERNAL_SERVER_ERROR, "broken")
                    }
                }),
            )
            .route(
                "/version",
                get_route(|State(s): State<Arc<Service>>| async move {
                    let v = s.version.lock().unwrap().clone();
                    // JSON, as a NestJS controller returns an object.
                    axum::Json(serde_json::json!({ "version": v, "name": "chat" }))
                }),
            )
            .route(
                "/connections",
                get_route(|State(s): State<Arc<Service>>| async move {
                    axum::Json(
                        serde_json::json!({ "connections": s.connections.load(Ordering::SeqCst) }),
                    )
                }),
            )
            .route(
                "/drain",
                post(
                    |State(s): State<Arc<Service>>,
                     axum::Json(body): axum::Json<serde_json::Value>| async move {
                        s.drains.lock().unwrap().push(body);
                        axum::Json(
                            serde_json::json!({ "asked": s.connections.load(Ordering::SeqCst) }),
                        )
                    },
                ),
            )
            .with_state(s);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

pub(crate) fn sidecar_config(colour: Colour, addr: std::net::SocketAddr) -> GateConfig {
    let mut cfg = config(colour);
    let mut s = ServiceConfig::new(format!("http://{addr}"));
    s.interval = Duration::from_millis(50);
    s.version_path = Some("/version".into());
    s.drain_path = Some("/drain".into());
    s.connections_path = Some("/connections".into());
    cfg.service = Some(s);
    cfg
}

#[tokio::test]
async fn the_service_decides_whether_the_gate_may_answer_ok() {
    let svc = Arc::new(Service::default());
    *svc.version.lock().unwrap() = "v7".into();
    svc.healthy.store(true, Ordering::SeqCst);
    let addr = service(Arc::clone(&svc)).await;
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, sidecar_config(Colour::Blue, addr)).await;
    let r = router(&g);

    // Down until the service has passed `rise` checks.
    assert_eq!(get(&r, "/balancer-keepalive-check").await.body, "DOWN");
    let _follower = g.start();
    wait_for(|| g.service_up()).await;
    let ok = get(&r, "/balancer-keepalive-check").await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "OK"));
    let s = status(&r).await;
    assert!(s.live);
    assert_eq!(s.version, "v7", "the version comes from the service");
    // HAProxy keeps a server its agent called down until told `up`.
    assert_eq!(agent_line(&g).await, "up ready\n");

    // The service fails its checks: 503 DOWN, live colour or not; the
    // agent says down; the store is not touched.
    svc.healthy.store(false, Ordering::SeqCst);
    wait_for(|| !g.service_up()).await;
    let down = get(&r, "/balancer-keepalive-check").await;
    assert_eq!(
        (down.status, down.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "DOWN")
    );
    assert_eq!(agent_line(&g).await, "down\n");
    let s = status(&r).await;
    assert!(!s.live);
    let service = s.service.expect("sidecar mode reports the service");
    assert!(!service.up);
    assert!(
        service.error.as_deref().unwrap_or("").contains("/health"),
        "{service:?}"
    );
    // A service that does not answer has no version and no websockets:
    // the gate falls back to --service-version and counts none.
    assert_eq!(service.version, None);
    assert_eq!(service.websockets, None);
    assert_eq!(s.version, "v1");
    let metrics = get(&r, "/metrics").await.body;
    assert!(metrics.contains("bg_gate_service_up 0"), "{metrics}");
    assert!(metrics.contains("bg_gate_live 0"), "{metrics}");
    let state = store.get(&app()).await.unwrap().unwrap();
    assert_eq!((state.active, state.generation), (Colour::Blue, 1));
    // The other colour's check is not this service's business.
    assert_eq!(get(&r, "/bg/check/green").await.body, "STOP");

    // Back after `rise` good checks, with the version a restart brought.
    *svc.version.lock().unwrap() = "v8".into();
    svc.healthy.store(true, Ordering::SeqCst);
    wait_for(|| g.service_up()).await;
    assert_eq!(get(&r, "/balancer-keepalive-check").await.body, "OK");
    assert_eq!(status(&r).await.version, "v8");
    assert_eq!(agent_line(&g).await, "up ready\n");
}

#[tokio::test]
async fn only_the_health_route_decides() {
    // A service whose version route is broken still serves: it stays in
    // rotation, and the trouble is reported.
    let svc = Arc::new(Service::default());
    svc.healthy.store(true, Ordering::SeqCst);
    let addr = service(Arc::clone(&svc)).await;
    let store = memory_with(Colour::Blue).await;
    let mut cfg = sidecar_config(Colour::Blue, addr);
    cfg.service.as_mut().unwrap().version_path = Some("/no-version-here".into());
    let g = gate(&store, cfg).await;
    let r = router(&g);
    let _follower = g.start();
    wait_for(|| g.service_up()).await;
    let s = status(&r).await;
    assert!(s.live);
    let service = s.service.unwrap();
    assert!(
        service
            .error
            .as_deref()
            .unwrap_or("")
            .contains("/no-version-here"),
        "{service:?}"
    );
    assert_eq!(service.version, None);
}

#[tokio::test]
async fn drains_go_to_the_service_and_its_websockets_count() {
    let svc = Arc::new(Service::default());
    *svc.version.lock().unwrap() = "v1".into();
    svc.healthy.store(true, Ordering::SeqCst);
    svc.connections.store(3, Ordering::SeqCst);
    let addr = service(Arc::clone(&svc)).await;
    let store = memory_with(Colour::Green).await;
    let g = gate(&store, sidecar_config(Colour::Blue, addr)).await;
    let r = router(&g);
    let _follower = g.start();
    wait_for(|| g.service_up()).await;
    assert_eq!(status(&r).await.connections.websockets, 3);

    let a = call(
        &r,
        Method::POST,
        "/bg/drain",
        Some(TOKEN),
        r#"{"batch":2,"interval_ms":500,"timeout_ms":30000}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["asked"], 3);
    let sent = svc.drains.lock().unwrap().clone();
    assert_eq!(
        sent,
        vec![serde_json::json!({
            "close_code": 1012, "batch": 2, "interval_ms": 500, "timeout_ms": 30000
        })]
    );

    // Paced by time: the service, which takes batches, is sent the
    // window's pace for the websockets it holds (3,000 in 10 s: 300 a
    // second, 30 every 100 ms).
    svc.connections.store(3_000, Ordering::SeqCst);
    wait_for(|| g.status().connections.websockets == 3_000).await;
    let a = call(
        &r,
        Method::POST,
        "/bg/drain",
        Some(TOKEN),
        r#"{"window_ms":10000,"timeout_ms":30000}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["window_ms"], 10_000, "{}", a.body);
    assert_eq!(
        svc.drains.lock().unwrap().last().cloned(),
        Some(serde_json::json!({
            "close_code": 1012, "batch": 30, "interval_ms": 100, "timeout_ms": 30000
        }))
    );
    // Both paces at once: which one is meant is unclear.
    let a = call(
        &r,
        Method::POST,
        "/bg/drain",
        Some(TOKEN),
        r#"{"window_ms":10000,"batch":5}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(svc.drains.lock().unwrap().len(), 2);
    svc.connections.store(3, Ordering::SeqCst);

    // timeout_ms 0 would drain nobody: refused, and not forwarded.
    let a = call(
        &r,
        Method::POST,
        "/bg/drain",
        Some(TOKEN),
        r#"{"timeout_ms":0}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(svc.drains.lock().unwrap().len(), 2);

    // Blue goes live again while the service drains: its drain is stopped
    // (by the watcher of each drain forwarded).
    store
        .switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    wait_for(|| {
        svc.drains
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d["timeout_ms"] == 0)
            .count()
            == 2
    })
    .await;

    // A service that is down holds nothing to drain: nothing is forwarded.
    svc.healthy.store(false, Ordering::SeqCst);
    store
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    wait_for(|| !g.service_up()).await;
    let a = call(&r, Method::POST, "/bg/drain", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(a.json()["asked"], 0);
    let forwarded = svc.drains.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(svc.drains.lock().unwrap().len(), forwarded);
    assert_eq!(status(&r).await.connections.websockets, 0);

    // A service that does not take the drain: the caller is told.
    svc.healthy.store(true, Ordering::SeqCst);
    let store = memory_with(Colour::Green).await;
    let mut cfg = sidecar_config(Colour::Blue, addr);
    cfg.service.as_mut().unwrap().drain_path = Some("/no-such-route".into());
    let g = gate(&store, cfg).await;
    let _follower = g.start();
    wait_for(|| g.service_up()).await;
    let a = call(&router(&g), Method::POST, "/bg/drain", Some(TOKEN), "").await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY, "{}", a.body);
    assert_eq!(a.json()["kind"], "service_unavailable");
    assert!(!a.body.contains(&addr.to_string()), "{}", a.body);
}

#[tokio::test]
async fn bad_service_settings_are_refused() {
    let store = memory_with(Colour::Blue).await;
    let mut cfg = config(Colour::Blue);
    cfg.service = Some(ServiceConfig::new("localhost:3000"));
    let err = Gate::new(Arc::clone(&store), cfg, auth()).unwrap_err();
    assert!(err.to_string().contains("service_url"), "{err}");
    // A drain route without a way to count what it drains.
    let mut cfg = config(Colour::Blue);
    let mut s = ServiceConfig::new("http://127.0.0.1:3000");
    s.drain_path = Some("/drain".into());
    cfg.service = Some(s);
    let err = Gate::new(Arc::clone(&store), cfg, auth()).unwrap_err();
    assert!(
        err.to_string().contains("service_connections_path"),
        "{err}"
    );
}
