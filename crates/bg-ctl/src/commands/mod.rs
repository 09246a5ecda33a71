//! The commands other than `deploy`, written once against the store trait,
//! a module each: the function that does the command, and the result it
//! returns, which says how it is shown ([`crate::output::Render`]).

mod history;
mod init;
mod lease;
mod rollback;
mod status;
mod switch;

pub use history::{History, history};
pub use init::{Initialised, init, init_from_gates};
pub use lease::{LeaseBroken, LeaseShown, break_lease, show_lease};
pub(crate) use rollback::can_return_to;
pub use rollback::{RolledBack, rollback};
pub use status::{ProbedGate, Status, status};
pub use switch::{Switched, switch};

/// A request id for one write of this run: a retry of the write under it
/// is recognised by the store if the write was made.
pub(crate) fn request_id(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("bg-ctl:{what}:{}:{nanos}", std::process::id())
}

/// How often a write whose outcome the store could not tell is sent again
/// with the same request (and request id), 0.2 s, 0.4 s and 0.8 s apart.
const WRITE_RETRIES: u32 = 3;

/// Makes the write `write` sends, and sends the same request again while
/// the store says its outcome is unknown (a retryable error: a dropped
/// connection, a failover, replicas that did not confirm): its request id
/// makes a write that did happen its own success the second time, not
/// "already initialised" or a conflict.
pub(crate) async fn surely<T, F, Fut>(mut write: F) -> Result<T, bg_state::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, bg_state::Error>>,
{
    let mut pause = std::time::Duration::from_millis(200);
    for _ in 0..WRITE_RETRIES {
        match write().await {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            done => return done,
        }
    }
    write().await
}

#[cfg(test)]
mod tests;
