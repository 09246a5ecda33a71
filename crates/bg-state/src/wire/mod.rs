//! The JSON bodies of the store over HTTP (`/bg/api/v1`, see `docs/api.md`),
//! shared by the server (the gate) and the client ([`crate::RemoteStore`]),
//! so both sides read one definition. Errors map to and from a body with a
//! `kind` here too.
//!
//! [`GateStatus`] is the other contract of the gate's: the body of
//! `GET /bg/state`, built by the gate and read by `bg-ctl` and the tests.

use serde::{Deserialize, Serialize};

use crate::error::{Error, InvalidInput};
use crate::model::{AppName, Colour, DeployPhase, Event, Lease, Presence, State};

mod drain;
mod gate;

pub use drain::{
    DEFAULT_DRAIN_WINDOW, DRAIN_FLOOR_RATE, DRAIN_TICK, DrainBody, DrainPace, MAX_DRAIN_BATCH,
    MAX_DRAIN_WINDOW,
};
pub use gate::{
    ConnectionCounts, GateAnswer, GateStatus, ProbeRecord, ServiceHealth, StoreHealth,
    UNKNOWN_VERSION, is_known_version,
};

/// The most events one `history` request returns.
pub const MAX_HISTORY_LIMIT: usize = 10_000;

/// `POST init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct InitBody {
    pub active: Colour,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST switch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct SwitchBody {
    pub to: Colour,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub force: bool,
    #[serde(default)]
    pub rollback: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaving_version: Option<String>,
}

/// `POST deploys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct DeployBody {
    pub colour: Colour,
    pub version: String,
    pub phase: DeployPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<u64>,
    #[serde(default)]
    pub force: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// `POST lease`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct AcquireBody {
    pub holder: String,
    pub ttl_ms: u64,
}

/// `POST lease/renew`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RenewBody {
    pub fence: u64,
    pub ttl_ms: u64,
}

/// `POST lease/release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct ReleaseBody {
    pub fence: u64,
}

/// `POST lease/break`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct BreakBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct PresenceBody {
    pub gate_id: String,
    pub colour: Colour,
    pub service_version: String,
    pub applied_generation: u64,
    pub ttl_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_age_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websockets: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lb_sources: Vec<String>,
}

/// `{"state": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct StateAnswer {
    pub state: Option<State>,
}

/// `{"events": […]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct HistoryAnswer {
    pub events: Vec<Event>,
}

/// `{"lease": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct LeaseAnswer {
    pub lease: Option<Lease>,
}

/// `{"released": …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ReleasedAnswer {
    pub released: bool,
}

/// `{"gates": […]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct GatesAnswer {
    pub gates: Vec<Presence>,
}

/// The answer of the `changes` long poll.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ChangesAnswer {
    pub changed: bool,
    pub generation: Option<u64>,
}

/// An error as it travels: `kind`, `message`, and the fields some kinds carry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct ErrorBody {
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub colour: Option<Colour>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presented: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
}

impl ErrorBody {
    /// A body of `kind` with `message` and nothing else.
    pub fn new(kind: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            kind: kind.to_owned(),
            message: message.into(),
            ..ErrorBody::default()
        }
    }
}

/// The HTTP status and body a store error travels as.
#[must_use]
pub fn error_body(e: &Error) -> (u16, ErrorBody) {
    let mut b = ErrorBody::new("", e.to_string());
    let status = match e {
        Error::Conflict { expected, current } => {
            b.kind = "conflict".into();
            b.expected = Some(*expected);
            b.current = serde_json::to_value(current).ok();
            409
        }
        Error::NotInitialised { .. } => {
            b.kind = "not_initialised".into();
            409
        }
        Error::AlreadyInitialised { current } => {
            b.kind = "already_initialised".into();
            b.current = serde_json::to_value(current).ok();
            409
        }
        Error::DeployToLive { colour, .. } => {
            b.kind = "deploy_to_live".into();
            b.colour = Some(*colour);
            409
        }
        Error::LeaseHeld {
            holder,
            expires_at_ms,
            ..
        } => {
            b.kind = "lease_held".into();
            b.holder = Some(holder.clone());
            b.expires_at_ms = Some(*expires_at_ms);
            409
        }
        Error::StaleFence { presented, .. } => {
            b.kind = "stale_fence".into();
            b.presented = Some(*presented);
            409
        }
        Error::InvalidInput(i) => {
            b.kind = "invalid_input".into();
            b.field = Some(i.field.to_owned());
            400
        }
        Error::Corrupt { location, detail } => {
            b.kind = "corrupt".into();
            b.location = Some(location.clone());
            b.detail = Some(detail.clone());
            500
        }
        Error::Unavailable { retryable, .. } => {
            b.kind = "unavailable".into();
            b.retryable = Some(*retryable);
            503
        }
        Error::Unauthorized { message } => {
            b.kind = "unauthorized".into();
            b.message.clone_from(message);
            401
        }
    };
    (status, b)
}

/// The names an [`InvalidInput`] field can have, so one from the wire maps
/// back to the same `&'static str`.
const FIELDS: &[&str] = &[
    "colour",
    "app",
    "actor",
    "reason",
    "version",
    "request_id",
    "expect_generation",
    "min_generation",
    "fence",
    "generation",
    "holder",
    "owner",
    "ttl",
    "gate_id",
    "service_version",
    "url",
    "mirror",
    "presence",
    "body",
];

/// The store error a body with `status` stands for, on the client side.
#[must_use]
pub fn error_from_body(app: &AppName, status: u16, b: ErrorBody) -> Error {
    let state =
        |v: Option<serde_json::Value>| v.and_then(|v| serde_json::from_value::<State>(v).ok());
    let garbled = |what: &str| Error::Unavailable {
        backend: "remote",
        message: format!(
            "the gate answered {status} {what} without its details: {}",
            b.message
        ),
        retryable: false,
    };
    match b.kind.as_str() {
        "conflict" => match (b.expected, state(b.current.clone())) {
            (Some(expected), Some(current)) => Error::Conflict {
                expected,
                current: Box::new(current),
            },
            _ => garbled("conflict"),
        },
        "not_initialised" => Error::NotInitialised { app: app.clone() },
        "already_initialised" => match state(b.current.clone()) {
            Some(current) => Error::AlreadyInitialised {
                current: Box::new(current),
            },
            None => garbled("already_initialised"),
        },
        "deploy_to_live" => match b.colour {
            Some(colour) => Error::DeployToLive {
                app: app.clone(),
                colour,
            },
            None => garbled("deploy_to_live"),
        },
        "lease_held" => match (b.holder.clone(), b.expires_at_ms) {
            (Some(holder), Some(expires_at_ms)) => Error::LeaseHeld {
                app: app.clone(),
                holder,
                expires_at_ms,
            },
            _ => garbled("lease_held"),
        },
        "stale_fence" => match b.presented {
            Some(presented) => Error::StaleFence {
                app: app.clone(),
                presented,
            },
            None => garbled("stale_fence"),
        },
        "invalid_input" => {
            let field = b
                .field
                .as_deref()
                .and_then(|f| FIELDS.iter().find(|k| **k == f).copied())
                .unwrap_or("input");
            // The message already says "invalid <field>: …"; keep only the reason.
            let reason = b
                .message
                .split_once(": ")
                .filter(|(head, _)| head.starts_with("invalid "))
                .map_or(b.message.clone(), |(_, r)| r.to_owned());
            InvalidInput::new(field, reason).into()
        }
        "corrupt" => Error::Corrupt {
            location: b.location.unwrap_or_default(),
            detail: b.detail.unwrap_or(b.message),
        },
        "unavailable" => Error::Unavailable {
            backend: "remote",
            message: b.message,
            retryable: b.retryable.unwrap_or(true),
        },
        "unauthorized" | "forbidden" => Error::Unauthorized { message: b.message },
        "too_large" => InvalidInput::new("body", b.message).into(),
        // The gate gave up waiting for the body (the transport, not the
        // input), or has too many of this caller's requests waiting: both
        // pass, so a retry can help.
        "timeout" | "too_many_requests" => Error::Unavailable {
            backend: "remote",
            message: b.message,
            retryable: true,
        },
        _ => Error::Unavailable {
            backend: "remote",
            message: format!("the gate answered {status}: {}", b.message),
            retryable: status >= 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LastChange;

    fn state() -> State {
        State {
            app: AppName::new("chat").unwrap(),
            active: Colour::Green,
            generation: 7,
            last_change: LastChange {
                actor: "ci".into(),
                at_ms: 1,
                reason: None,
                forced: false,
                request_id: None,
                fenced: false,
            },
            blue: None,
            green: None,
            blue_live: None,
            green_live: None,
        }
    }

    /// Every error survives the trip to JSON and back as the same variant.
    #[test]
    fn errors_round_trip() {
        let app = AppName::new("chat").unwrap();
        let errors = vec![
            Error::Conflict {
                expected: 6,
                current: Box::new(state()),
            },
            Error::NotInitialised { app: app.clone() },
            Error::AlreadyInitialised {
                current: Box::new(state()),
            },
            Error::DeployToLive {
                app: app.clone(),
                colour: Colour::Blue,
            },
            Error::LeaseHeld {
                app: app.clone(),
                holder: "p".into(),
                expires_at_ms: 9,
            },
            Error::StaleFence {
                app: app.clone(),
                presented: 2,
            },
            InvalidInput::new("version", "version must not be empty").into(),
            Error::Corrupt {
                location: "x".into(),
                detail: "y".into(),
            },
            Error::Unavailable {
                backend: "redis",
                message: "down".into(),
                retryable: true,
            },
            Error::Unauthorized {
                message: "invalid token".into(),
            },
        ];
        for e in errors {
            let (status, body) = error_body(&e);
            let json = serde_json::to_string(&body).unwrap();
            let back = error_from_body(&app, status, serde_json::from_str(&json).unwrap());
            match (&e, &back) {
                (
                    Error::Unavailable {
                        message: a,
                        retryable: ra,
                        ..
                    },
                    Error::Unavailable {
                        message: b,
                        retryable: rb,
                        ..
                    },
                ) => {
                    assert!(
                        b.contains(a.as_str()) || a.contains(b.as_str()) || e.to_string() == *b,
                        "{e} vs {back}"
                    );
                    assert_eq!(ra, rb);
                }
                _ => assert_eq!(format!("{e:?}"), format!("{back:?}"), "{json}"),
            }
        }
    }

    /// A gate that gave up waiting for a request's body says nothing about
    /// the input: it is a transport failure, worth a retry, and bg-ctl's
    /// exit 5 — not an invalid input (exit 2).
    #[test]
    fn a_gate_timeout_is_unavailable_not_invalid_input() {
        let app = AppName::new("chat").unwrap();
        for (kind, status) in [("timeout", 408), ("too_many_requests", 429)] {
            let body = ErrorBody::new(kind, "the gate is busy");
            let e = error_from_body(&app, status, body);
            assert!(
                matches!(
                    e,
                    Error::Unavailable {
                        retryable: true,
                        ..
                    }
                ),
                "{kind}: {e:?}"
            );
        }
    }
}
