//! The probe log under a flood: a burst from one source never evicts
//! another source's probes, and the number of sources is bounded.

use std::net::{IpAddr, SocketAddr};

use bg_gate::MAX_PROBE_SOURCES;
use bg_state::Colour;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::*;

/// One health check from `from`, over a connection of its own.
async fn probe(server: SocketAddr, from: IpAddr) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut s = socket.connect(server).await.unwrap();
    s.write_all(b"GET /balancer-keepalive-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_source_never_evicts_another() {
    let store = memory_with(Colour::Blue).await;
    let g = gate(&store, config(Colour::Blue)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = g.public_router::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let lb: IpAddr = [127, 0, 0, 1].into();
    let flood: IpAddr = [127, 0, 0, 2].into();
    for _ in 0..5 {
        probe(addr, lb).await;
    }
    for _ in 0..300 {
        probe(addr, flood).await;
    }
    let probes = g.status().probes;
    let from = |ip: IpAddr| probes.iter().filter(|p| p.source == Some(ip)).count();
    assert_eq!(from(lb), 5, "the load balancer's probes were evicted");
    assert!(from(flood) <= g.config().probe_log, "{}", from(flood));
    assert!(from(flood) > 0);

    // Many sources: the table is bounded, and the first ones stay.
    for last in 3..(3 + 2 * MAX_PROBE_SOURCES) {
        let ip: IpAddr = [127, 0, 0, u8::try_from(last).unwrap()].into();
        probe(addr, ip).await;
    }
    let probes = g.status().probes;
    let mut sources: Vec<_> = probes.iter().map(|p| p.source).collect();
    sources.sort();
    sources.dedup();
    assert!(sources.len() <= MAX_PROBE_SOURCES, "{}", sources.len());
    assert_eq!(
        probes.iter().filter(|p| p.source == Some(lb)).count(),
        5,
        "a new source evicted a recent one"
    );
    server.abort();
}
