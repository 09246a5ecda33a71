//! Writes the replicas must confirm: the script and its `WAIT` travel in
//! one pipeline, on one connection, so `WAIT` counts that write's replicas
//! (a `WAIT` sent after a reconnection would count none and pass).

use redis::RedisResult;

use super::connect::AnyConn;
use super::reply::Reply;
use super::{RedisStore, SCRIPT};
use crate::error::{Error, Result};
use crate::model::AppName;

impl RedisStore {
    /// Runs the script with `keys` and `argv`, then waits until `wanted`
    /// replicas hold every write of this connection. A change the script
    /// made, or found already made ("unchanged", maybe by another process),
    /// is answered only once they do; otherwise the outcome is unknown and
    /// the caller gets a retryable [`Error::Unavailable`].
    pub(super) async fn run_confirmed(
        &self,
        app: &AppName,
        conn: &mut AnyConn,
        keys: &[String],
        argv: &[String],
        wanted: u32,
    ) -> Result<Reply> {
        let wait = self.inner.opts.replica_timeout;
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.ignore_errors()
            .cmd("EVALSHA")
            .arg(SCRIPT.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(argv)
            // A script that found its change made wrote nothing here: one
            // small write in the app's slot, after it, makes the replicas'
            // acknowledgement cover the change too.
            .cmd("SET")
            .arg(format!("bg:{{{}}}:synced", app.as_str()))
            .arg(1)
            .arg("PX")
            .arg(60_000)
            .ignore()
            .cmd("WAIT")
            .arg(wanted)
            .arg(wait_ms);
        let limit = self.deadline() + wait;
        let mut loaded = false;
        loop {
            let (script, acked): (RedisResult<Vec<String>>, RedisResult<u64>) =
                self.bounded_by(limit, pipe.query_async(conn)).await?;
            let raw = match script {
                Ok(raw) => raw,
                Err(e)
                    if !loaded
                        && e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.bounded(SCRIPT.load_async(conn)).await?;
                    loaded = true;
                    continue;
                }
                Err(e) => return Err(self.failed(&e).await),
            };
            let reply = Reply::parse(app, raw)?;
            if !matches!(reply.status.as_str(), "ok" | "unchanged") {
                return Ok(reply);
            }
            let got = match acked {
                Ok(got) => got,
                Err(e) => return Err(self.failed(&e).await),
            };
            if got < u64::from(wanted) {
                self.forget_master().await;
                return Err(Error::Unavailable {
                    backend: "redis",
                    message: format!(
                        "the change is written but only {got} of {wanted} replicas confirmed it \
                         within {wait:?}; the outcome is unknown until a retry with the same \
                         request id, or a read, shows it"
                    ),
                    retryable: true,
                });
            }
            return Ok(reply);
        }
    }
}
