//! The colour-state model: colours, app names, the state of one app, its
//! history events, the deploy lease and gate presence.
//!
//! Every value here is plain data. Times are milliseconds since the Unix epoch
//! as seen by the store (the Redis backend uses the server's clock, so several
//! clients with skewed clocks still agree on lease expiry).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, InvalidInput};
use crate::text::shorten;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// One of the two identical instances behind the load balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    /// The blue instance.
    Blue,
    /// The green instance.
    Green,
}

impl Colour {
    /// Both colours, blue first.
    pub const ALL: [Colour; 2] = [Colour::Blue, Colour::Green];

    /// The other colour.
    #[must_use]
    pub fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    /// The lowercase name, as used on the wire and in keys.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Colour {
    type Err = Error;

    /// Parses `blue` or `green` (case-insensitive, surrounding whitespace
    /// ignored); anything else is [`Error::InvalidInput`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "blue" => Ok(Colour::Blue),
            "green" => Ok(Colour::Green),
            _ => Err(InvalidInput::new(
                "colour",
                format!(
                    "{:?} is not a colour: expected \"blue\" or \"green\"",
                    shorten(s)
                ),
            )
            .into()),
        }
    }
}

/// A validated application name: `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// Many apps share one store; the name is part of every key, so it is
/// restricted to characters that are safe in Redis keys, file names and URLs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

impl AppName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming what is wrong with it.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let problem = if name.is_empty() {
            Some("is empty".to_owned())
        } else if name.len() > 63 {
            Some(format!(
                "is {} characters long; at most 63 are allowed",
                name.len()
            ))
        } else if !name.as_bytes()[0].is_ascii_lowercase() && !name.as_bytes()[0].is_ascii_digit() {
            Some("must start with a lowercase letter or a digit".to_owned())
        } else {
            name.chars()
                .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '-'))
                .map(|c| format!("contains {c:?}; only a-z, 0-9, '.', '_' and '-' are allowed"))
        };
        match problem {
            None => Ok(AppName(name)),
            Some(p) => {
                Err(InvalidInput::new("app", format!("app name {:?} {p}", shorten(&name))).into())
            }
        }
    }

    /// The name as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for AppName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AppName::new(s)
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppName::new(s).map_err(serde::de::Error::custom)
    }
}

/// Who did something: a token name, a CI job, a person. Recorded in history.
///
/// Validated like other free text: 1 to 200 characters, no control characters.
pub type Actor = String;

/// What the store holds for one app: which colour is live and how it got there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The app this state belongs to.
    pub app: AppName,
    /// The live colour.
    pub active: Colour,
    /// +1 on every change of `active`; the compare-and-swap version and the
    /// fencing token gates use. It never goes down.
    pub generation: u64,
    /// The change that produced this generation (an init or a switch).
    pub last_change: LastChange,
    /// What runs on the blue instance, as far as deploys recorded it.
    pub blue: Option<Deployment>,
    /// What runs on the green instance, as far as deploys recorded it.
    pub green: Option<Deployment>,
    /// The version blue last served live: what a rollback to blue may
    /// return to. Unlike `blue`, no deploy record changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_live: Option<LiveVersion>,
    /// The version green last served live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub green_live: Option<LiveVersion>,
}

impl State {
    /// The colour that is not live.
    #[must_use]
    pub fn idle(&self) -> Colour {
        self.active.other()
    }

    /// The recorded deployment of `colour`.
    #[must_use]
    pub fn deployment(&self, colour: Colour) -> Option<&Deployment> {
        match colour {
            Colour::Blue => self.blue.as_ref(),
            Colour::Green => self.green.as_ref(),
        }
    }

    /// The version `colour` last served live.
    #[must_use]
    pub fn live_version(&self, colour: Colour) -> Option<&LiveVersion> {
        match colour {
            Colour::Blue => self.blue_live.as_ref(),
            Colour::Green => self.green_live.as_ref(),
        }
    }

    pub(crate) fn live_version_mut(&mut self, colour: Colour) -> &mut Option<LiveVersion> {
        match colour {
            Colour::Blue => &mut self.blue_live,
            Colour::Green => &mut self.green_live,
        }
    }

    /// What a switch to `to` (from the other colour) does to the versions
    /// served live: the colour it leaves, if it has no live version (state
    /// from before live versions were kept, or a forced init), gets its
    /// deploy record's version when that was verified, since that is what
    /// it served; a plain switch to a colour with a verified deploy record
    /// makes that version its live one; a rollback returns to what it
    /// served before (its record may be a release that never went live)
    /// and marks the version it leaves as rolled back. Without a verified
    /// record, the colour left gets `leaving`, what its gates reported
    /// running (the first switch away from a colour an init made live).
    /// Every backend applies this same rule.
    pub(crate) fn apply_switch_to_live(
        &mut self,
        to: Colour,
        rollback: bool,
        leaving: Option<&str>,
    ) {
        let from = to.other();
        if self.live_version(from).is_none()
            && let Some(version) = self
                .deployment(from)
                .filter(|d| d.phase == DeployPhase::Deployed)
                .map(|d| d.version.as_str())
                .or(leaving)
        {
            *self.live_version_mut(from) = Some(LiveVersion {
                version: version.to_owned(),
                rolled_back: false,
            });
        }
        let verified = self
            .deployment(to)
            .filter(|d| d.phase == DeployPhase::Deployed)
            .map(|d| d.version.clone());
        let entering = self.live_version_mut(to);
        match (rollback, verified) {
            (false, Some(version)) => {
                *entering = Some(LiveVersion {
                    version,
                    rolled_back: false,
                });
            }
            _ => {
                if let Some(l) = entering.as_mut() {
                    l.rolled_back = false;
                }
            }
        }
        if rollback && let Some(l) = self.live_version_mut(from).as_mut() {
            l.rolled_back = true;
        }
    }

    pub(crate) fn deployment_mut(&mut self, colour: Colour) -> &mut Option<Deployment> {
        match colour {
            Colour::Blue => &mut self.blue,
            Colour::Green => &mut self.green,
        }
    }
}

/// Who made the live colour what it is, when and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastChange {
    /// Who made the change.
    pub actor: Actor,
    /// When it committed.
    pub at_ms: Millis,
    /// Why, if they said.
    pub reason: Option<String>,
    /// Whether it overrode a lease or an existing state.
    pub forced: bool,
    /// The caller's idempotency key, so a retry of this change is recognised.
    pub request_id: Option<String>,
    /// Whether it was made under the deploy lease. The fence itself stays
    /// in the store (a retry under it is recognised) and is never part of
    /// the state: the lease may still be held.
    #[serde(default)]
    pub fenced: bool,
}

/// Where a colour's deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployPhase {
    /// Recorded before the deploy was triggered; not yet verified.
    Deploying,
    /// The instance was seen running this version.
    Deployed,
}

impl DeployPhase {
    /// The lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            DeployPhase::Deploying => "deploying",
            DeployPhase::Deployed => "deployed",
        }
    }
}

impl fmt::Display for DeployPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The version recorded for one colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Image tag, commit or any version string, 1 to 128 printable characters.
    pub version: String,
    /// Whether the deploy was verified.
    pub phase: DeployPhase,
    /// When it was recorded.
    pub at_ms: Millis,
    /// Who recorded it.
    pub actor: Actor,
    /// The idempotency key it was recorded under, so a retry is recognised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A version a colour served live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveVersion {
    /// The version.
    pub version: String,
    /// A rollback took the live colour away from it: a rollback never
    /// returns to it, only a deliberate switch does.
    #[serde(default)]
    pub rolled_back: bool,
}

/// The deploy lease: at most one pipeline per app works on a release at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Who holds it (a CI job id, a host name…).
    pub holder: String,
    /// The fencing token, the holder's secret: drawn at random in
    /// `1..=MAX_GENERATION`, never the fence of the lease before, unchanged
    /// by renewals. `0` in a lease read by someone who may not see it: a
    /// gate shows it only to the credential that took the lease and to
    /// admin ones ([`Lease::without_fence`]).
    #[serde(default, skip_serializing_if = "fence_hidden")]
    pub fence: u64,
    /// The credential that took it through a gate, as the gate names it
    /// (`token:<name>`, `oidc:<digest>`; never a secret): only that
    /// credential, or an admin one, may use the fence there. `None` for a
    /// lease taken on the store directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// When it was first acquired.
    pub acquired_at_ms: Millis,
    /// When it expires unless renewed.
    pub expires_at_ms: Millis,
}

/// serde's `skip_serializing_if` passes a reference.
fn fence_hidden(fence: &u64) -> bool {
    *fence == 0
}

impl Lease {
    /// This lease as someone who may not see its fence reads it: the
    /// holder, the owner and the times, the fence `0`.
    #[must_use]
    pub fn without_fence(mut self) -> Self {
        self.fence = 0;
        self
    }
}

/// One entry of an app's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The generation after the event.
    pub generation: u64,
    /// When it happened.
    pub at_ms: Millis,
    /// Who did it.
    pub actor: Actor,
    /// Whether a lease or an existing state was overridden.
    pub forced: bool,
    /// Why, if they said.
    pub reason: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What an [`Event`] records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// The state was created (or, forced, re-created).
    Init {
        /// The live colour it was created with.
        active: Colour,
    },
    /// The live colour changed.
    Switch {
        /// The colour that was live.
        from: Colour,
        /// The colour that is live now.
        to: Colour,
    },
    /// A switch back to the previous colour.
    Rollback {
        /// The colour that was live.
        from: Colour,
        /// The colour that is live now.
        to: Colour,
    },
    /// A deploy was recorded for the idle colour.
    Deploy {
        /// The colour deployed to.
        colour: Colour,
        /// The version.
        version: String,
        /// Triggered or verified.
        phase: DeployPhase,
    },
    /// A lease was broken by someone other than its holder.
    LeaseBroken {
        /// Who held it.
        holder: String,
        /// Its fence.
        fence: u64,
    },
}

impl fmt::Display for EventKind {
    /// A short description for people, e.g. `switch blue -> green`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::Init { active } => write!(f, "init: {active} live"),
            EventKind::Switch { from, to } => write!(f, "switch {from} -> {to}"),
            EventKind::Rollback { from, to } => write!(f, "rollback {from} -> {to}"),
            EventKind::Deploy {
                colour,
                version,
                phase,
            } => write!(f, "{phase} {version} on {colour}"),
            EventKind::LeaseBroken { holder, fence } => {
                write!(f, "lease of {holder} (fence {fence}) broken")
            }
        }
    }
}

/// A gate's report of itself, so tools can see every gate without knowing
/// its address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Unique per gate (host name, pod name, URL…), 1 to 200 characters.
    pub gate_id: String,
    /// The colour this gate serves.
    pub colour: Colour,
    /// The service version it runs.
    pub service_version: String,
    /// The generation of the state it answers from.
    pub applied_generation: u64,
    /// When it reported this (store clock; set by the store).
    pub seen_at_ms: Millis,
    /// When this report lapses (store clock; set by the store).
    pub expires_at_ms: Millis,
    /// The idempotency key of the report: a retry of a report the store
    /// took is answered as done without a second write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// How old the gate's view was when it reported: milliseconds since
    /// the store last confirmed it. `None` from gates that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_age_ms: Option<u64>,
    /// The websockets it held open when it reported, if it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websockets: Option<u64>,
    /// Whether it was asking its websockets to move to the live colour.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The sources whose health checks it logged lately (its load
    /// balancers, as addresses), at most [`MAX_PRESENCE_SOURCES`](crate::MAX_PRESENCE_SOURCES).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lb_sources: Vec<String>,
}

impl Presence {
    /// A report for a gate; the store fills in the times.
    #[must_use]
    pub fn new(
        gate_id: impl Into<String>,
        colour: Colour,
        service_version: impl Into<String>,
        applied_generation: u64,
    ) -> Self {
        Presence {
            gate_id: gate_id.into(),
            colour,
            service_version: service_version.into(),
            applied_generation,
            seen_at_ms: 0,
            expires_at_ms: 0,
            request_id: None,
            view_age_ms: None,
            websockets: None,
            draining: false,
            lb_sources: Vec::new(),
        }
    }

    /// With an idempotency key.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }
}

/// A hint that an app's state changed. Notifications can be lost or
/// coalesced; a subscriber re-reads the state and never relies on them alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The app whose state changed.
    pub app: AppName,
    /// The generation the notifier saw, if it knew it.
    pub generation: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_parses_and_rejects() {
        assert_eq!("blue".parse::<Colour>().unwrap(), Colour::Blue);
        assert_eq!(" GREEN ".parse::<Colour>().unwrap(), Colour::Green);
        let err = "purple".parse::<Colour>().unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)));
        assert!(
            err.to_string().contains("\"purple\" is not a colour"),
            "{err}"
        );
        assert_eq!(Colour::Blue.other(), Colour::Green);
    }

    #[test]
    fn app_names() {
        for ok in ["a", "chat", "chat-ws.v2_x", "0app", &"a".repeat(63)] {
            AppName::new(ok).unwrap();
        }
        for (bad, why) in [
            ("", "is empty"),
            ("Chat", "must start"),
            ("-x", "must start"),
            ("chat ws", "contains ' '"),
            ("chat/ws", "contains '/'"),
            ("cHat", "contains 'H'"),
        ] {
            let err = AppName::new(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        assert!(
            AppName::new("a".repeat(64))
                .unwrap_err()
                .to_string()
                .contains("64 characters")
        );
    }

    #[test]
    fn app_name_deserialisation_validates() {
        assert!(serde_json::from_str::<AppName>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<AppName>("\"Not Ok\"").is_err());
    }

    #[test]
    fn event_json_is_flat() {
        let e = Event {
            generation: 3,
            at_ms: 5,
            actor: "ci".into(),
            forced: false,
            reason: None,
            kind: EventKind::Switch {
                from: Colour::Blue,
                to: Colour::Green,
            },
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "switch");
        assert_eq!(v["to"], "green");
        assert_eq!(serde_json::from_value::<Event>(v).unwrap(), e);
    }
}
