//! The HAProxy `agent-check` responder: one line per connection, `ready`
//! while this colour answers OK and `drain` when it is idle.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::core::Gate;

impl Gate {
    /// Answers HAProxy agent checks on `listener` until `shutdown` resolves.
    pub async fn serve_agent(&self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((mut stream, _)) => {
                    let line: &[u8] = if self.answer(self.config().colour).is_ok() {
                        b"ready\n"
                    } else {
                        b"drain\n"
                    };
                    tokio::spawn(async move {
                        let _ = stream.write_all(line).await;
                        let _ = stream.shutdown().await;
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
