//! The store backends.

#[cfg(feature = "file")]
pub mod file;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "remote")]
pub mod remote;
