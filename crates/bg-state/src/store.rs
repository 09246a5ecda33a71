//! The [`ColourStore`] trait every backend implements, and the requests it takes.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::error::{Error, Result};
use crate::model::{AppName, Change, Colour, DeployPhase, Event, Lease, Presence, State};

/// Longest accepted actor, holder or gate id.
pub const MAX_NAME_LEN: usize = 200;
/// Longest accepted reason.
pub const MAX_REASON_LEN: usize = 1000;
/// Longest accepted version string.
pub const MAX_VERSION_LEN: usize = 128;
/// Longest accepted request id.
pub const MAX_REQUEST_ID_LEN: usize = 128;
/// The highest generation or fence a store accepts or reaches: 10^14 - 1, so
/// that every backend represents it exactly (Redis scripts count in doubles
/// and encode JSON numbers with 14 significant digits). At one switch a
/// millisecond that is three thousand years away.
pub const MAX_GENERATION: u64 = 99_999_999_999_999;
/// Most load-balancer sources one presence report may name.
pub const MAX_PRESENCE_SOURCES: usize = 32;
/// Longest accepted load-balancer source in a presence report.
pub const MAX_SOURCE_LEN: usize = 64;
/// History entries a store keeps per app unless configured otherwise.
pub const DEFAULT_HISTORY_CAP: usize = 1000;

/// Create an app's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    /// The colour to make live.
    pub active: Colour,
    /// Who is doing it.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// Replace a state that is already there (recorded as forced). The new
    /// generation is still above the old one.
    pub force: bool,
    /// The new generation is at least this. A restore after the store lost
    /// its data passes one more than the highest generation any gate knows,
    /// since gates never adopt a lower generation.
    pub min_generation: Option<u64>,
    /// The version the colour made live runs, when known: recorded as the
    /// version it serves live, so the first release after installation can
    /// be rolled back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// An idempotency key: a retry of an init that committed under the same
    /// key (its answer lost, its replicas unconfirmed) is answered with the
    /// state it made, not refused as already initialised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl InitRequest {
    /// Initialise with `active` live, on behalf of `actor`.
    pub fn new(active: Colour, actor: impl Into<String>) -> Self {
        InitRequest {
            active,
            actor: actor.into(),
            reason: None,
            force: false,
            min_generation: None,
            version: None,
            request_id: None,
        }
    }
    /// The colour made live runs `version`.
    #[must_use]
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }
    /// Says why.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Replaces existing state.
    #[must_use]
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// Lands at this generation or above.
    #[must_use]
    pub fn min_generation(mut self, generation: u64) -> Self {
        self.min_generation = Some(generation);
        self
    }
    /// With an idempotency key.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// Make a colour live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRequest {
    /// The colour to make live.
    pub to: Colour,
    /// Who is doing it.
    pub actor: String,
    /// Why.
    pub reason: Option<String>,
    /// Compare-and-swap: fail with [`Error::Conflict`] unless this is the
    /// current generation. Checked before anything else.
    pub expect_generation: Option<u64>,
    /// The fence of the deploy lease the caller holds.
    pub fence: Option<u64>,
    /// An idempotency key: a retry of a switch that committed under the same
    /// key is answered as a success without a second change.
    pub request_id: Option<String>,
    /// Switch even though someone else holds the lease (recorded as forced).
    pub force: bool,
    /// Record the switch as a rollback.
    pub rollback: bool,
    /// The version the colour left runs, as its gates report it: recorded
    /// as the version it served live when none is recorded yet (a colour
    /// made live by an init that knew no version), so the first release
    /// after installation can be rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving_version: Option<String>,
}

impl SwitchRequest {
    /// Switch to `to` on behalf of `actor`.
    pub fn new(to: Colour, actor: impl Into<String>) -> Self {
        SwitchRequest {
            to,
            actor: actor.into(),
            reason: None,
            expect_generation: None,
            fence: None,
            request_id: None,
            force: false,
            rollback: false,
            leaving_version: None,
        }
    }
    /// Says why.
    #[must_use]
    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
    /// Only if the generation is still `generation`.
    #[must_use]
    pub fn expect_generation(mut self, generation: u64) -> Self {
        self.expect_generation = Some(generation);
        self
    }
    /// Under the lease with this fence.
    #[must_use]
    pub fn fence(mut self, fence: u64) -> Self {
        self.fence = Some(fence);
        self
    }
    /// With an idempotency key.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
    /// Overriding a lease held by someone else.
    #[must_use]
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// Recorded as a rollback.
    #[must_use]
    pub fn rollback(mut self, rollback: bool) -> Self {
        self.rollback = rollback;
        self
    }
    /// The colour left runs `version` (its live version, if it has none).
    #[must_use]
    pub fn leaving_version(mut self, version: impl Into<String>) -> Self {
        self.leaving_version = Some(version.into());
        self
    }
}

/// What a successful switch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchOutcome {
    /// The state after the call.
    pub state: State,
    /// `false` when nothing changed: the colour was already live, or this was
    /// a retry of a switch that had already committed.
    pub changed: bool,
}

/// Record a deploy to the idle colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// The colour deployed to; never the live one.
    pub colour: Colour,
    /// The version deployed.
    pub version: String,
    /// `Deploying` before the deploy is triggered, `Deployed` once verified.
    pub phase: DeployPhase,
    /// Who is doing it.
    pub actor: String,
    /// The fence of the deploy lease the caller holds.
    pub fence: Option<u64>,
    /// Record even though someone else holds the lease (recorded as forced).
    pub force: bool,
    /// An idempotency key: a retry of a record that was made under the same
    /// key is answered as a success without a second record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl DeployRecord {
    /// A record of `version` on `colour` in `phase`, on behalf of `actor`.
    pub fn new(
        colour: Colour,
        version: impl Into<String>,
        phase: DeployPhase,
        actor: impl Into<String>,
    ) -> Self {
        DeployRecord {
            colour,
            version: version.into(),
            phase,
            actor: actor.into(),
            fence: None,
            force: false,
            request_id: None,
        }
    }
    /// Under the lease with this fence.
    #[must_use]
    pub fn fence(mut self, fence: u64) -> Self {
        self.fence = Some(fence);
        self
    }
    /// Overriding a lease held by someone else.
    #[must_use]
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }
    /// With an idempotency key.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// Take or extend the deploy lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    /// Who wants it. Acquiring again as the same holder and owner extends
    /// the lease and keeps its fence.
    pub holder: String,
    /// How long it lasts unless renewed.
    #[serde(with = "duration_ms")]
    pub ttl: Duration,
    /// The credential asking, recorded in the lease ([`Lease::owner`]): a
    /// gate sets it from the caller's credential. The same holder with
    /// another owner is refused ([`Error::LeaseHeld`]) and never gets the
    /// fence.
    #[serde(default)]
    pub owner: Option<String>,
}

impl LeaseRequest {
    /// `holder` wants the lease for `ttl`.
    pub fn new(holder: impl Into<String>, ttl: Duration) -> Self {
        LeaseRequest {
            holder: holder.into(),
            ttl,
            owner: None,
        }
    }

    /// Asked by the credential `owner`.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// Break the lease whoever holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakLease {
    /// Who breaks it (recorded).
    pub actor: String,
    /// Why (recorded).
    pub reason: Option<String>,
}

/// The operations every backend provides, with the same guarantees.
///
/// * `switch` is one atomic step; there is never a moment at which the store
///   says both colours or neither are live.
/// * The generation goes up by one on every change of the live colour and
///   never goes down, not even across a forced `init`.
/// * While a lease is held, a switch or deploy record without its fence is
///   refused ([`Error::LeaseHeld`]) unless forced; one with another fence is
///   refused ([`Error::StaleFence`]).
/// * A lease's fence is drawn at random and told only to the caller that
///   acquired it: no refusal carries it, and the state records only that a
///   change was fenced ([`crate::LastChange::fenced`]).
/// * A failed call changes nothing.
///
/// Prefer [`crate::MemoryStore`] over a mock in your own tests: it is the
/// real thing, in-process.
///
/// # Compare-and-swap
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use bg_state::{AppName, Colour, ColourStore, Error, MemoryStore, SwitchRequest};
/// let store = MemoryStore::new();
/// let app = AppName::new("chat")?;
/// store.init(&app, bg_state::InitRequest::new(Colour::Blue, "ops")).await?;
/// loop {
///     let seen = store.get(&app).await?.expect("initialised");
///     let req = SwitchRequest::new(seen.idle(), "ci").expect_generation(seen.generation);
///     match store.switch(&app, req).await {
///         Ok(done) => break assert_eq!(done.state.generation, seen.generation + 1),
///         // Someone else switched since we looked: decide again on fresh state.
///         Err(Error::Conflict { .. }) => continue,
///         Err(e) => return Err(e),
///     }
/// }
/// # Ok::<(), Error>(())
/// # }).unwrap();
/// ```
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait ColourStore: Send + Sync + fmt::Debug {
    /// The backend's name (`memory`, `file`, `redis`, …).
    fn backend(&self) -> &'static str;

    /// The app's state, `None` if it was never initialised.
    async fn get(&self, app: &AppName) -> Result<Option<State>>;

    /// Creates the app's state at generation 1 (or above, see
    /// [`InitRequest::min_generation`]). Refused with
    /// [`Error::AlreadyInitialised`] if there is state, unless forced; a
    /// forced init lands one generation above the old one.
    async fn init(&self, app: &AppName, req: InitRequest) -> Result<State>;

    /// Makes `req.to` live in one atomic step.
    ///
    /// Checked in order: a retry of the last committed switch (same request
    /// id, or same fence and target) is its own success; then the expected
    /// generation ([`Error::Conflict`]); then "already live" (success,
    /// nothing changed); then the lease.
    async fn switch(&self, app: &AppName, req: SwitchRequest) -> Result<SwitchOutcome>;

    /// Records a deploy to the idle colour; refused for the live colour and
    /// fenced by the lease like a switch. The generation does not change.
    async fn record_deploy(&self, app: &AppName, rec: DeployRecord) -> Result<State>;

    /// The newest `limit` events, newest first. The store keeps a bounded
    /// number per app; the oldest are dropped.
    async fn history(&self, app: &AppName, limit: usize) -> Result<Vec<Event>>;

    /// Takes the deploy lease with a fresh fence, or extends it if
    /// `req.holder` holds it already through the same `req.owner` (same
    /// fence). [`Error::LeaseHeld`] if someone else does.
    async fn acquire_lease(&self, app: &AppName, req: LeaseRequest) -> Result<Lease>;

    /// Extends the lease with this fence by `ttl` from now.
    /// [`Error::StaleFence`] if it is not the lease held now.
    async fn renew_lease(&self, app: &AppName, fence: u64, ttl: Duration) -> Result<Lease>;

    /// Releases the lease with this fence. `false` if it was not held
    /// (expired, broken, released before): releasing is idempotent and never
    /// touches someone else's lease.
    async fn release_lease(&self, app: &AppName, fence: u64) -> Result<bool>;

    /// The lease held now, if any.
    async fn lease(&self, app: &AppName) -> Result<Option<Lease>>;

    /// Breaks the lease whoever holds it, recording who broke it in history.
    /// Returns the broken lease, `None` if there was none.
    async fn break_lease(&self, app: &AppName, req: BreakLease) -> Result<Option<Lease>>;

    /// Records a gate's presence for `ttl`; the store sets its times.
    async fn report_presence(&self, app: &AppName, presence: Presence, ttl: Duration)
    -> Result<()>;

    /// Gates whose presence has not lapsed, by gate id.
    async fn presences(&self, app: &AppName) -> Result<Vec<Presence>>;

    /// A stream of change hints for `app`. Hints can be lost (a dropped
    /// connection, a slow reader); poll as well.
    async fn subscribe(&self, app: &AppName) -> Result<Subscription>;
}

/// Change hints for one app, from [`ColourStore::subscribe`].
///
/// A lagging reader skips hints rather than blocking the store; it gets a
/// hint without a generation instead, meaning "re-read".
#[derive(Debug)]
pub struct Subscription {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Broadcast {
        app: AppName,
        rx: broadcast::Receiver<Change>,
    },
    Channel(mpsc::Receiver<Change>),
}

impl Subscription {
    /// A subscription fed by a channel; for backends and for mocks.
    #[must_use]
    pub fn from_channel(rx: mpsc::Receiver<Change>) -> Self {
        Subscription {
            inner: Inner::Channel(rx),
        }
    }

    pub(crate) fn from_broadcast(app: AppName, rx: broadcast::Receiver<Change>) -> Self {
        Subscription {
            inner: Inner::Broadcast { app, rx },
        }
    }

    /// The next hint; `None` once the store is gone.
    pub async fn recv(&mut self) -> Option<Change> {
        match &mut self.inner {
            Inner::Channel(rx) => rx.recv().await,
            Inner::Broadcast { app, rx } => loop {
                match rx.recv().await {
                    Ok(change) if change.app == *app => return Some(change),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        return Some(Change {
                            app: app.clone(),
                            generation: None,
                        });
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            },
        }
    }
}

/// Checks free text: length bounds and no control characters.
pub(crate) fn check_text(field: &'static str, value: &str, max: usize) -> Result<()> {
    let len = value.chars().count();
    if value.trim().is_empty() {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if len > max {
        return Err(Error::invalid(
            field,
            format!("{field} is {len} characters long; at most {max} are allowed"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(())
}

/// The rule for a version string: 1 to [`MAX_VERSION_LEN`] characters, no
/// whitespace or control characters, counted in characters. The Redis
/// script checks stored live versions by the same rule (`valid_version` in
/// `store.lua`); a sidecar gate holds what it reads from its service to it.
///
/// # Errors
/// [`Error::InvalidInput`] saying which part of the rule `version` breaks.
pub fn check_version(version: &str) -> Result<()> {
    check_text("version", version, MAX_VERSION_LEN)?;
    if version.chars().any(char::is_whitespace) {
        return Err(Error::invalid(
            "version",
            "version must not contain whitespace",
        ));
    }
    Ok(())
}

fn check_number(field: &'static str, value: Option<u64>) -> Result<()> {
    match value {
        Some(0) => Err(Error::invalid(field, format!("{field} must be at least 1"))),
        Some(v) if v > MAX_GENERATION => Err(Error::invalid(
            field,
            format!("{field} {v} is above the maximum {MAX_GENERATION}"),
        )),
        _ => Ok(()),
    }
}

fn check_opt(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    value.map_or(Ok(()), |v| check_text(field, v, max))
}

pub(crate) fn check_ttl(ttl: Duration) -> Result<()> {
    if ttl < Duration::from_millis(1) || ttl > Duration::from_secs(7 * 24 * 3600) {
        return Err(Error::invalid(
            "ttl",
            format!("ttl of {ttl:?} is out of range: 1 ms to 7 days"),
        ));
    }
    Ok(())
}

impl InitRequest {
    /// Checks what every store checks before taking this request, so a
    /// caller can refuse bad input before it acts on anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_text("actor", &self.actor, MAX_NAME_LEN)?;
        check_opt("reason", self.reason.as_deref(), MAX_REASON_LEN)?;
        if let Some(v) = &self.version {
            check_version(v)?;
        }
        check_opt("request_id", self.request_id.as_deref(), MAX_REQUEST_ID_LEN)?;
        check_number("min_generation", self.min_generation)
    }
}

impl SwitchRequest {
    /// Checks what every store checks before taking this request, so a
    /// caller can refuse bad input before it acts on anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_text("actor", &self.actor, MAX_NAME_LEN)?;
        check_opt("reason", self.reason.as_deref(), MAX_REASON_LEN)?;
        check_opt("request_id", self.request_id.as_deref(), MAX_REQUEST_ID_LEN)?;
        if let Some(v) = &self.leaving_version {
            check_version(v)?;
        }
        check_number("expect_generation", self.expect_generation)?;
        check_number("fence", self.fence)
    }
}

impl DeployRecord {
    /// Checks what every store checks before taking this request, so a
    /// caller can refuse bad input before it acts on anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_text("actor", &self.actor, MAX_NAME_LEN)?;
        check_version(&self.version)?;
        check_opt("request_id", self.request_id.as_deref(), MAX_REQUEST_ID_LEN)?;
        check_number("fence", self.fence)
    }
}

impl LeaseRequest {
    /// Checks what every store checks before taking this request, so a
    /// caller can refuse bad input before it acts on anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_text("holder", &self.holder, MAX_NAME_LEN)?;
        check_opt("owner", self.owner.as_deref(), MAX_NAME_LEN)?;
        check_ttl(self.ttl)
    }
}

impl BreakLease {
    /// Checks what every store checks before taking this request, so a
    /// caller can refuse bad input before it acts on anything.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        check_text("actor", &self.actor, MAX_NAME_LEN)?;
        check_opt("reason", self.reason.as_deref(), MAX_REASON_LEN)
    }
}

impl Presence {
    pub(crate) fn validate(&self) -> Result<()> {
        check_text("gate_id", &self.gate_id, MAX_NAME_LEN)?;
        check_text("service_version", &self.service_version, MAX_VERSION_LEN)?;
        check_opt("request_id", self.request_id.as_deref(), MAX_REQUEST_ID_LEN)?;
        if self.lb_sources.len() > MAX_PRESENCE_SOURCES {
            return Err(Error::invalid(
                "lb_sources",
                format!(
                    "{} load-balancer sources; at most {MAX_PRESENCE_SOURCES} are allowed",
                    self.lb_sources.len()
                ),
            ));
        }
        for source in &self.lb_sources {
            check_text("lb_sources", source, MAX_SOURCE_LEN)?;
        }
        Ok(())
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
