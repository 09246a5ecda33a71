//! The ceiling for the health-check benchmark, and what the gate costs
//! against it on the same runtime and the same server loop.
//!
//! `bg-bare ADDR [bare|gate|tracked]`
//!
//! * `bare` (the default) — a bare axum handler answering `OK` at
//!   `/balancer-keepalive-check`;
//! * `gate` — the gate's public router over an in-memory store, blue live;
//! * `tracked` — the bare handler inside `Gate::track_requests`: what an
//!   embedding service pays on its own routes.
//!
//! All three are served by `bg_gate::server::serve`, as `bg-gate` serves.

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bg_gate::server::Limits;
use bg_gate::{Auth, Gate, GateConfig};
use bg_state::{AppName, Colour};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr: SocketAddr = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: bg-bare ADDR [bare|gate|tracked]");
    let mode = args.next().unwrap_or_else(|| "bare".to_owned());
    let bare = || Router::new().route("/balancer-keepalive-check", get(|| async { "OK" }));
    let store = bg_state::open("memory://").expect("memory store");
    let mut cfg = GateConfig::new(AppName::new("bench").expect("app"), Colour::Blue, "v1");
    cfg.init = Some(Colour::Blue);
    let gate = Gate::new(store, cfg, Auth::none()).expect("gate");
    let _follower = gate.start();
    while gate.view().state.is_none() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let app = match mode.as_str() {
        "bare" => bare(),
        "gate" => gate.public_router(),
        "tracked" => gate.track_requests(bare()),
        other => panic!("unknown mode {other:?}: bare, gate or tracked"),
    };
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    bg_gate::server::serve(
        listener,
        app,
        gate.public_router(),
        Limits::default(),
        std::future::pending(),
    )
    .await;
}
