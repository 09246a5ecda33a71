//! The `ws_echo` example as a user runs it: a real process, a real
//! websocket, a switch and a drain that closes the socket with 1012.

use std::net::SocketAddr;
use std::process::Command;

use bg_testkit::{Process, free_port, http, wait_for_port};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::*;

#[tokio::test]
async fn ws_echo_serves_tracks_and_drains() {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut cmd = Command::new(bg_testkit::workspace_example("bg-gate", "ws_echo"));
    cmd.args([
        "--colour",
        "blue",
        "--listen",
        &addr.to_string(),
        "--store",
        "memory://",
    ])
    .args([
        "--service-version",
        "v9",
        "--init",
        "blue",
        "--handover",
        "0s",
    ])
    .env("BG_TOKEN", TOKEN);
    let _p = Process::spawn("ws_echo", cmd);
    tokio::task::spawn_blocking(move || wait_for_port(addr, Duration::from_secs(20)))
        .await
        .unwrap();
    let get =
        |path: &'static str| tokio::task::spawn_blocking(move || http::get(addr, path).unwrap());

    assert_eq!(get("/").await.unwrap().body, "blue v9");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while get("/balancer-keepalive-check").await.unwrap().status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "blue never became live"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello blue v9")
    );
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let state = get("/bg/state").await.unwrap();
    let status: bg_state::wire::GateStatus = serde_json::from_str(&state.body).unwrap();
    assert_eq!(status.connections.websockets, Some(1), "{status:?}");

    let post = |path: &'static str, body: &'static str| {
        tokio::task::spawn_blocking(move || {
            let auth = format!("Bearer {TOKEN}");
            http::request(
                addr,
                "POST",
                path,
                &[
                    ("authorization", &auth),
                    ("content-type", "application/json"),
                ],
                body,
            )
            .unwrap()
        })
    };
    // Live: a drain is refused.
    assert_eq!(post("/bg/drain", "").await.unwrap().status, 409);
    // Blue goes idle; now the drain asks the socket to move on.
    let res = post("/bg/switch", r#"{"to":"green"}"#).await.unwrap();
    assert_eq!(res.status, 200, "{}", res.body);
    let res = post("/bg/drain", r#"{"batch":1,"interval_ms":10}"#)
        .await
        .unwrap();
    assert_eq!(res.status, 202, "{}", res.body);
    let close = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the drain closes the socket")
        .unwrap()
        .unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected a close frame with 1012, got {other:?}"),
    }

    // A client that reconnects to the colour being drained (its load
    // balancer had not taken it out yet) is asked to move as well.
    let (mut late, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    assert_eq!(
        late.next().await.unwrap().unwrap(),
        Message::text("hello blue v9")
    );
    let close = tokio::time::timeout(Duration::from_secs(10), late.next())
        .await
        .expect("a websocket opened during the drain is drained too")
        .unwrap()
        .unwrap();
    match close {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::Restart),
        other => panic!("expected a close frame with 1012, got {other:?}"),
    }
    let state = get("/bg/state").await.unwrap();
    let status: bg_state::wire::GateStatus = serde_json::from_str(&state.body).unwrap();
    assert_eq!(status.connections.arrived_while_draining, 1, "{status:?}");
}
