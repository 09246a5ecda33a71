//! Sidecar mode: a standalone gate beside a service it cannot see into. A
//! real HTTP service on loopback stands in for it, whose health, version,
//! connection count and drain route the test controls and watches.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::State;
use axum::response::IntoResponse;
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
    /// How its connections route answers: [`COUNTS`], [`FAILS`] or [`HANGS`].
    counting: AtomicU8,
    /// How many of the next stops (`timeout_ms` 0) its drain route refuses.
    refuse_stops: AtomicU32,
    drains: Mutex<Vec<serde_json::Value>>,
}

/// The connections route answers its count.
const COUNTS: u8 = 0;
/// The connections route answers 500.
const FAILS: u8 = 1;
/// The connections route answers after the gate has stopped waiting.
const HANGS: u8 = 2;

impl Service {
    /// The stops (`timeout_ms` 0) it took.
    fn stops(&self) -> usize {
        self.drains
            .lock()
            .unwrap()
            .iter()
            .filter(|d| d["timeout_ms"] == 0)
            .count()
    }
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
                    match s.counting.load(Ordering::SeqCst) {
                        FAILS => return (StatusCode::INTERNAL_SERVER_ERROR, "{}").into_response(),
                        HANGS => tokio::time::sleep(bg_gate::SERVICE_TIMEOUT * 2).await,
                        _ => {}
                    }
                    axum::Json(
                        serde_json::json!({ "connections": s.connections.load(Ordering::SeqCst) }),
                    )
                    .into_response()
                }),
            )
            .route(
                "/drain",
                post(
                    |State(s): State<Arc<Service>>,
                     axum::Json(body): axum::Json<serde_json::Value>| async move {
                        if body["timeout_ms"] == 0
                            && s.refuse_stops
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                        {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        s.drains.lock().unwrap().push(body);
                        axum::Json(
                            serde_json::json!({ "asked": s.connections.load(Ordering::SeqCst) }),
                        )
                        .into_response()
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
    assert_eq!(status(&r).await.connections.websockets, Some(3));

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
    wait_for(|| g.status().connections.websockets == Some(3_000)).await;
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

    // Blue goes live again while the service drains: its drain is stopped,
    // once for every drain forwarded.
    store
        .switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    wait_for(|| svc.stops() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.stops(), 1);

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
    assert_eq!(status(&r).await.connections.websockets, Some(0));

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

/// A service holding `websockets`, healthy, beside a started gate of blue
/// while green is live; returned once the gate has seen it up.
async fn idle_blue_beside(
    websockets: u64,
) -> (
    Arc<Service>,
    std::net::SocketAddr,
    Arc<dyn bg_state::ColourStore>,
    Gate,
    tokio::task::JoinHandle<()>,
) {
    let svc = Arc::new(Service::default());
    svc.healthy.store(true, Ordering::SeqCst);
    svc.connections.store(websockets, Ordering::SeqCst);
    let addr = service(Arc::clone(&svc)).await;
    let store = memory_with(Colour::Green).await;
    let g = gate(&store, sidecar_config(Colour::Blue, addr)).await;
    // Before its first check (a gate restarted beside a busy service) the
    // gate has counted nothing: unknown.
    assert_eq!(g.status().connections.websockets, None);
    let follower = g.start();
    wait_for(|| g.service_up()).await;
    (svc, addr, store, g, follower)
}

#[tokio::test]
async fn a_count_the_gate_cannot_read_is_unknown_not_zero() {
    let (svc, _, _, g, _follower) = idle_blue_beside(5).await;
    let r = router(&g);
    let websockets = |r: &Router| {
        let r = r.clone();
        async move { get(&r, "/bg/state").await.json()["connections"]["websockets"].clone() }
    };
    assert_eq!(websockets(&r).await, 5);

    // The service answers its health route but not its connections route
    // (500, then too slowly): it may still hold its websockets, so the
    // gate says it does not know, in /bg/state and to bg-ctl.
    for how in [FAILS, HANGS] {
        svc.counting.store(how, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let w = websockets(&r).await;
            if w.is_null() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "route {how}: still reported {w} websockets"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(g.service_up(), "only the health route decides");
        let s = get(&r, "/bg/state").await.json();
        assert!(s["service"]["websockets"].is_null(), "{s}");
        assert!(
            s["service"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("/connections"),
            "{s}"
        );
        svc.counting.store(COUNTS, Ordering::SeqCst);
        wait_for(|| g.status().service.and_then(|s| s.websockets) == Some(5)).await;
        assert_eq!(websockets(&r).await, 5);
    }
}

#[tokio::test]
async fn a_stop_the_service_refuses_is_sent_again_until_it_is_taken() {
    let (svc, _, store, g, _follower) = idle_blue_beside(3).await;
    let r = router(&g);
    let a = call(
        &r,
        Method::POST,
        "/bg/drain",
        Some(TOKEN),
        r#"{"timeout_ms":30000}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);

    // Blue is live again while the service drains, and the service fails
    // the first stops it is sent: the gate keeps sending it.
    svc.refuse_stops.store(3, Ordering::SeqCst);
    store
        .switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    wait_for(|| svc.stops() == 1).await;
    assert_eq!(
        svc.refuse_stops.load(Ordering::SeqCst),
        0,
        "three were refused"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(svc.stops(), 1, "taken once, sent no more");
}

#[tokio::test]
async fn a_restarted_gate_stops_a_drain_it_forwarded_before() {
    let (svc, addr, store, g, follower) = idle_blue_beside(3).await;
    {
        let a = call(
            &router(&g),
            Method::POST,
            "/bg/drain",
            Some(TOKEN),
            r#"{"timeout_ms":30000}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
        // The gate stops here: it restarts, and the service drains on.
        drop((g, follower));
    }
    assert_eq!(svc.drains.lock().unwrap().len(), 1);
    store
        .switch(&app(), SwitchRequest::new(Colour::Blue, "t"))
        .await
        .unwrap();
    // The gate back, its colour live: it cannot know whether a drain it
    // forwarded runs on, so it stops any.
    let g = gate(&store, sidecar_config(Colour::Blue, addr)).await;
    let _follower = g.start();
    wait_for(|| svc.stops() == 1).await;
    // Idle, a restarted gate leaves the service's drain alone.
    let svc = Arc::new(Service::default());
    svc.healthy.store(true, Ordering::SeqCst);
    let addr = service(Arc::clone(&svc)).await;
    let g = gate(&store, sidecar_config(Colour::Green, addr)).await;
    let _follower = g.start();
    wait_for(|| g.service_up()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(svc.drains.lock().unwrap().is_empty());
}
