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

#[cfg(test)]
mod tests;
