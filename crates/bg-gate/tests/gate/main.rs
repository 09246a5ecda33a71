//! The gate over real stores: its HTTP surface, its view of the store, and
//! its behaviour when the store misbehaves.

mod api;
mod changes;
#[cfg(feature = "server")]
mod docs;
// The runner, the binary and the example need the `server` feature.
mod errors;
#[cfg(feature = "server")]
mod example;
mod fuzz;
mod http;
#[cfg(feature = "server")]
mod lease;
#[cfg(feature = "server")]
mod legacy_mirror;
#[cfg(feature = "server")]
mod limits;
#[cfg(feature = "server")]
mod names;
mod nginx;
mod oidc;
mod on_change;
mod probes;
#[cfg(feature = "server")]
mod process;
mod redis;
mod scopes;
mod sidecar;
mod ui;
mod verdict;
mod view;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bg_gate::{Auth, Gate, GateConfig, NamedToken};
use bg_state::{AppName, Colour, ColourStore, InitRequest};
use http_body_util::BodyExt;
use tower::ServiceExt;

pub(crate) const TOKEN: &str = "test-token-0123456789";

pub(crate) fn app() -> AppName {
    AppName::new("chat").unwrap()
}

pub(crate) fn config(colour: Colour) -> GateConfig {
    let mut cfg = GateConfig::new(app(), colour, "v1");
    cfg.poll_interval = Duration::from_millis(50);
    cfg.handover = Duration::ZERO;
    cfg.store_timeout = Duration::from_millis(500);
    cfg
}

/// The tests' token, named `ci` but with the admin scope: most tests act
/// as an operator (`scopes.rs` checks what the `ci` scope may not do).
pub(crate) fn auth() -> Auth {
    Auth::with_tokens(vec![
        NamedToken::new("ci", TOKEN)
            .unwrap()
            .with_scope(bg_gate::Scope::Admin),
    ])
    .unwrap()
}

/// A gate over `store`, its view brought up to date.
pub(crate) async fn gate(store: &Arc<dyn ColourStore>, cfg: GateConfig) -> Gate {
    let gate = Gate::new(Arc::clone(store), cfg, auth()).unwrap();
    gate.refresh().await;
    gate
}

pub(crate) async fn memory_with(active: Colour) -> Arc<dyn ColourStore> {
    let store = bg_state::open("memory://").unwrap();
    store
        .init(&app(), InitRequest::new(active, "test"))
        .await
        .unwrap();
    store
}

pub(crate) fn router(gate: &Gate) -> Router {
    gate.public_router().merge(gate.admin_router())
}

pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

pub(crate) async fn call(
    router: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> Answer {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = router
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body =
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

pub(crate) async fn get(router: &Router, uri: &str) -> Answer {
    call(router, Method::GET, uri, None, "").await
}

/// `GET /bg/state`, read as the type bg-ctl reads it with.
pub(crate) async fn status(router: &Router) -> bg_state::wire::GateStatus {
    let a = get(router, "/bg/state").await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    serde_json::from_str(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.body))
}

/// A store a behaviour is checked on, and the server behind it, if any.
pub(crate) struct Backend {
    pub(crate) store: Arc<dyn ColourStore>,
    _server: Option<bg_testkit::RedisServer>,
}

/// The memory store and a real redis-server, initialised with `active`
/// live unless `None`: every behaviour is checked on both.
pub(crate) async fn backends(active: Option<Colour>) -> Vec<Backend> {
    let server = bg_testkit::RedisServer::start();
    let opts = bg_state::RedisOptions {
        connect_timeout: Duration::from_millis(500),
        response_timeout: Duration::from_millis(500),
        ..bg_state::RedisOptions::default()
    };
    let redis: Arc<dyn ColourStore> =
        Arc::new(bg_state::RedisStore::with_options(&server.url(), opts).unwrap());
    let all = vec![
        Backend {
            store: bg_state::open("memory://").unwrap(),
            _server: None,
        },
        Backend {
            store: redis,
            _server: Some(server),
        },
    ];
    if let Some(colour) = active {
        for b in &all {
            b.store
                .init(&app(), InitRequest::new(colour, "test"))
                .await
                .unwrap();
        }
    }
    all
}
