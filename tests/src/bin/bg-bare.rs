//! The ceiling for the health-check benchmark: a bare axum handler that
//! answers `OK`, served the way `bg-gate` serves.
//!
//! `bg-bare ADDR`

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: bg-bare ADDR");
    let app = Router::new().route("/balancer-keepalive-check", get(|| async { "OK" }));
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .expect("serve");
}
