//! A websocket service embedding the gate: what a blue or green instance
//! looks like from the inside.
//!
//! ```text
//! cargo run -p bg-gate --example ws_echo -- --colour blue --listen 127.0.0.1:8081 \
//!     --store redis://127.0.0.1:6380/0 --service-version v1 --init blue
//! ```
//!
//! It takes every option `bg-gate` takes, and serves beside the gate's routes:
//!
//! * `GET /` — `<colour> <version>` in plain text, so a client (or a load
//!   test) can tell which instance answered;
//! * `GET /ws` — a websocket echo that first greets with `hello <colour>
//!   <version>`, so a client knows where it landed. Each connection is tracked by the gate;
//!   when a drain asks, it is closed with code 1012 ("service restart"),
//!   the signal for a client to reconnect — through the load balancer, to
//!   the live colour.

use std::process::ExitCode;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bg_gate::server::GateArgs;
use bg_gate::{DRAIN_CLOSE_CODE, Gate};
use clap::Parser;

/// A websocket echo service behind the bluegreen gate.
#[derive(Debug, Parser)]
#[command(name = "ws_echo")]
struct Cli {
    #[command(flatten)]
    gate: GateArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    bg_gate::server::init_logging();
    let cli = Cli::parse();
    let server = match cli.gate.start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ws_echo: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let service = Router::new()
        .route("/", get(whoami))
        .route("/ws", get(upgrade))
        .with_state(server.gate().clone());
    match server.serve(service).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ws_echo: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn whoami(State(gate): State<Gate>) -> String {
    let cfg = gate.config();
    format!("{} {}", cfg.colour, cfg.service_version)
}

/// Buffers sized for a chat-like service: small messages, thousands of
/// sockets. The websocket library's defaults (128 KiB to read into and
/// 128 KiB to gather writes in, per socket) cost about 134 KiB a socket,
/// over a GiB for 9,000 clients; a 4 KiB read buffer grows when a larger
/// message comes, and writing each message at once needs no write buffer.
const READ_BUFFER: usize = 4 * 1024;
/// The largest message a client may send; a larger one closes its socket.
const MAX_MESSAGE: usize = 64 * 1024;

async fn upgrade(State(gate): State<Gate>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_MESSAGE * 4)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| echo(socket, gate))
}

/// Echoes text and binary messages until the client leaves or a drain asks
/// this connection to move on.
async fn echo(mut socket: WebSocket, gate: Gate) {
    let mut tracked = gate.connections().track_websocket();
    let cfg = gate.config();
    let hello = format!("hello {} {}", cfg.colour, cfg.service_version);
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            () = tracked.drain_requested() => {
                let frame = CloseFrame {
                    code: DRAIN_CLOSE_CODE,
                    reason: "draining: reconnect to the live colour".into(),
                };
                let _ = socket.send(Message::Close(Some(frame))).await;
                // Let the client answer the close before the socket goes.
                let wait = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while let Some(Ok(msg)) = socket.recv().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                });
                let _ = wait.await;
                return;
            }
            msg = socket.recv() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if socket.send(Message::Text(t)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    if socket.send(Message::Binary(b)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            },
        }
    }
}
