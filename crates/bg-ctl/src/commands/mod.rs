//! The commands other than `deploy`, written once against the store trait,
//! a module each.

mod history;
mod init;
mod lease;
mod rollback;
mod status;
mod switch;

pub use history::describe;
pub use init::{init, init_from_gates};
pub use lease::break_lease;
pub(crate) use rollback::can_return_to;
pub use rollback::rollback;
pub use status::{ProbedGate, Status, status};
pub use switch::switch;

#[cfg(test)]
mod tests;
