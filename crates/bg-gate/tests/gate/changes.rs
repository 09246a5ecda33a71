//! The change stream answers from the gate's view and waits on the gate's
//! one subscription: waiting clients cost the store no connection, and
//! each source may hold only so many.

use std::io::{Read, Write};

use bg_state::{Colour, SwitchRequest};

use super::*;

/// The number of clients connected to the redis-server at `port`.
fn redis_clients(port: u16) -> usize {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"CLIENT LIST\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    // A bulk reply: `$LEN\r\n` then LEN bytes and `\r\n`.
    loop {
        let n = s.read(&mut buf).unwrap();
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply);
        if let Some((head, rest)) = text.split_once("\r\n") {
            let len: usize = head.trim_start_matches('$').parse().unwrap();
            if rest.len() >= len {
                // Less this connection itself.
                return rest[..len].lines().filter(|l| l.contains("id=")).count() - 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_open_no_store_connections() {
    let server = bg_testkit::RedisServer::start();
    let store: Arc<dyn ColourStore> = bg_state::open(&server.url()).unwrap();
    store
        .init(&app(), bg_state::InitRequest::new(Colour::Blue, "test"))
        .await
        .unwrap();
    let g = gate(&store, config(Colour::Blue)).await;
    let _follower = g.start();
    let r = router(&g);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = server.port();
    let before = tokio::task::spawn_blocking(move || redis_clients(port))
        .await
        .unwrap();

    let polls: Vec<_> = (0..200)
        .map(|i| {
            let r = r.clone();
            // Half wait on the current generation, half ask past it.
            let since = if i % 2 == 0 { 1 } else { 5 };
            tokio::spawn(async move {
                get(
                    &r,
                    &format!("/bg/api/v1/apps/chat/changes?since={since}&timeout_ms=2000"),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = tokio::task::spawn_blocking(move || redis_clients(port))
        .await
        .unwrap();
    assert!(
        during <= before + 2,
        "{before} store clients before, {during} while 200 polls wait"
    );
    // A switch wakes the waiting ones.
    store
        .switch(&app(), SwitchRequest::new(Colour::Green, "t"))
        .await
        .unwrap();
    let mut woken = 0;
    let mut limited = 0;
    for p in polls {
        let a = p.await.unwrap();
        match a.status {
            StatusCode::OK => {
                let v = a.json();
                if v["changed"] == true {
                    woken += 1;
                }
            }
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(a.json()["kind"], "too_many_requests");
                limited += 1;
            }
            s => panic!("{s}: {}", a.body),
        }
    }
    assert!(woken > 0 && limited > 0, "{woken} woken, {limited} limited");
}
