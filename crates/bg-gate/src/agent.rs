//! The HAProxy `agent-check` responder: one line per connection, `ready`
//! while this colour answers OK and `drain` when it is idle. Each query is
//! logged in the probe log like an HTTP health check.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::core::{Answer, Gate};

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
                    let colour = self.config().colour;
                    let up = self.service_up();
                    let answer = if up {
                        self.answer(colour)
                    } else {
                        Answer::Stop
                    };
                    // Logged as a probe, as an HTTP check is: a release
                    // waits for the agent to have been told `drain`.
                    self.record_probe(Some(peer.ip()), colour, answer);
                    // In sidecar mode the agent also sets the server's
                    // operational state: `down` while the service is down,
                    // and `up` with every other answer, since HAProxy keeps
                    // a server the agent called down until told `up`.
                    let sidecar = self.inner.service.is_some();
                    let line: &[u8] = match (sidecar, up, answer.is_ok()) {
                        (true, false, _) => {
                            self.inner
                                .counters
                                .answers_down
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            b"down\n"
                        }
                        (true, true, true) => b"up ready\n",
                        (true, true, false) => b"up drain\n",
                        (false, _, true) => b"ready\n",
                        (false, _, false) => b"drain\n",
                    };
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
