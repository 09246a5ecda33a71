//! The HAProxy `agent-check` responder: one line per connection, the
//! gate's verdict in the agent's words — `ready` while this colour takes
//! traffic, `drain` when it is idle. Each query is answered, counted and
//! logged by [`Gate::answer_check`], as an HTTP health check is; this file
//! only renders the verdict.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::core::{Gate, LbCheck, VerdictKind, Via};

/// Agent connections being answered at once; more wait in the backlog.
const MAX_AGENT_CONNECTIONS: usize = 256;
/// How long writing the answer may take before the connection is dropped.
const AGENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Gate {
    /// Answers HAProxy agent checks on `listener` until `shutdown` resolves.
    /// At most 256 connections are answered at once, each within 5 s.
    pub async fn serve_agent(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(MAX_AGENT_CONNECTIONS));
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            // A slot first, so a flood waits in the backlog instead of
            // holding descriptors here.
            let slot = tokio::select! {
                () = &mut shutdown => return,
                s = Arc::clone(&slots).acquire_owned() => match s {
                    Ok(s) => s,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((mut stream, peer)) => {
                    let check = LbCheck::new(self.config().colour, Some(peer.ip()), Via::Agent);
                    let verdict = self.answer_check(check);
                    let line = agent_line(verdict.kind(), self.config().service.is_some());
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(AGENT_WRITE_TIMEOUT, async {
                            let _ = stream.write_all(line).await;
                            let _ = stream.shutdown().await;
                        })
                        .await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "agent-check accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// The agent's words for a verdict. In sidecar mode they also set the
/// server's operational state: `down` while the service is down, and `up`
/// with every other answer, since HAProxy keeps a server the agent called
/// down until told `up`.
fn agent_line(kind: VerdictKind, sidecar: bool) -> &'static [u8] {
    match (kind, sidecar) {
        (VerdictKind::Down, _) => b"down\n",
        (VerdictKind::Ok | VerdictKind::Handover, true) => b"up ready\n",
        (VerdictKind::Stop, true) => b"up drain\n",
        (VerdictKind::Ok | VerdictKind::Handover, false) => b"ready\n",
        (VerdictKind::Stop, false) => b"drain\n",
    }
}
