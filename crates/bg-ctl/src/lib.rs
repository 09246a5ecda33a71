//! The bluegreen command line's library: every `bg-ctl` command written once
//! against [`bg_state::ColourStore`], so it works the same on any store.
//!
//! So far it holds only the re-export of the store it drives.

pub use bg_state::{ColourStore, open};
