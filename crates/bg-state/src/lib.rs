//! The colour state of bluegreen: which of two instances, blue or green, is
//! live for an app, changed in atomic, versioned, fenced and audited steps.
//!
//! This crate knows nothing of HTTP or of command lines; the gate
//! (`bg-gate`) and the CLI (`bg-ctl`) are built on it.
//!
//! # Layout
//!
//! * [`model`] — [`Colour`], [`AppName`], [`State`], history [`Event`]s, the
//!   deploy [`Lease`], gate [`Presence`].
//! * [`ColourStore`] — the trait every backend implements, with the
//!   guarantees written on it; requests such as [`SwitchRequest`].
//! * [`Error`] — the one error type, with a variant per refusal.
//! * Backends: [`MemoryStore`] (the embedded default, per process),
//!   [`FileStore`] (feature `file`: durable JSON for one host),
//!   [`RedisStore`] (feature `redis`: shared by every host, on one node,
//!   under Sentinel or on a Cluster, with an optional [`LegacyMirror`] of
//!   the hand-made design's keys), `RemoteStore`
//!   (feature `remote`: a gate's `/bg/api/v1`, for CI that cannot reach
//!   Redis; its wire bodies are in [`wire`]).
//! * [`open`] — a store from a URL: `memory://`, `file:///path`,
//!   `redis://…`, `redis-sentinel://…`, `redis-cluster://…` (and
//!   `rediss…` for TLS), `http(s)://gate…`.
//! * `conformance` (feature `conformance`) — the suite every backend passes.
//! * `MockColourStore` (feature `mock`) — a `mockall` mock of the trait.
//!   For your own tests prefer [`MemoryStore`]: it is the real behaviour,
//!   in-process; reach for the mock to inject failures such as
//!   [`Error::Unavailable`].
//!
//! # Example
//!
//! Open a store, initialise an app, switch with compare-and-swap, and handle
//! the conflict a concurrent pipeline causes:
//!
//! ```
//! use bg_state::{AppName, Colour, ColourStore, Error, InitRequest, SwitchRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let store = bg_state::open("memory://")?;
//! let app = AppName::new("chat")?;
//!
//! let state = store.init(&app, InitRequest::new(Colour::Blue, "ops")).await?;
//! assert_eq!((state.active, state.generation), (Colour::Blue, 1));
//!
//! // Switch to the idle colour, but only if nobody switched since we read.
//! let seen = store.get(&app).await?.expect("initialised above");
//! let req = SwitchRequest::new(seen.idle(), "pipeline-41")
//!     .expect_generation(seen.generation)
//!     .reason("release v2");
//! let done = store.switch(&app, req.clone()).await?;
//! assert_eq!((done.state.active, done.state.generation), (Colour::Green, 2));
//!
//! // A second pipeline that read generation 1 too is refused, and told what is live.
//! let stale = SwitchRequest::new(Colour::Green, "pipeline-42").expect_generation(1);
//! match store.switch(&app, stale).await {
//!     Err(Error::Conflict { expected, current }) => {
//!         assert_eq!(expected, 1);
//!         assert_eq!(current.generation, 2);
//!     }
//!     other => panic!("expected a conflict, got {other:?}"),
//! }
//!
//! // Every change is in the audit trail, newest first.
//! let history = store.history(&app, 10).await?;
//! assert_eq!(history[0].actor, "pipeline-41");
//! # Ok(())
//! # }
//! ```

pub mod backend;
#[cfg(feature = "conformance")]
pub mod conformance;
mod engine;
mod error;
mod fence;
pub mod model;
mod open;
mod store;
mod text;
pub mod wire;

#[cfg(feature = "file")]
pub use backend::file::FileStore;
pub use backend::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use backend::redis::{LegacyMirror, RedisOptions, RedisStore};
#[cfg(feature = "remote")]
pub use backend::remote::RemoteStore;
pub use error::{Error, InvalidInput, Result};
pub use model::{
    Actor, AppName, Change, Colour, DeployPhase, Deployment, Event, EventKind, LastChange, Lease,
    LiveVersion, Millis, Presence, State,
};
pub use open::{OpenOptions, check_url, open, open_with};
#[cfg(any(test, feature = "mock"))]
pub use store::MockColourStore;
pub use store::{
    BreakLease, ColourStore, DEFAULT_HISTORY_CAP, DeployRecord, InitRequest, LeaseRequest,
    MAX_GENERATION, MAX_NAME_LEN, MAX_PRESENCE_SOURCES, MAX_REASON_LEN, MAX_REQUEST_ID_LEN,
    MAX_SOURCE_LEN, MAX_VERSION_LEN, Subscription, SwitchOutcome, SwitchRequest, check_version,
};
pub use text::{format_millis, parse_duration, redact_url};
