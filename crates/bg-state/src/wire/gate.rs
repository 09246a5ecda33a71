//! `GET /bg/state`: what a gate reports about itself.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{AppName, Colour, Millis, State};

/// What a gate's health routes answer for a colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateAnswer {
    /// Live: send new connections here (`200 OK`).
    Ok,
    /// No longer live, but still answering OK until the load balancer has
    /// had time to mark the new colour up (make-before-break).
    Handover,
    /// Idle, or nothing known: no new connections (`STOP`).
    Stop,
}

impl GateAnswer {
    /// `ok`, `handover` or `stop`, as in the JSON and the metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            GateAnswer::Ok => "ok",
            GateAnswer::Handover => "handover",
            GateAnswer::Stop => "stop",
        }
    }

    /// Whether the load balancer is told OK (live or in handover).
    #[must_use]
    pub fn is_ok(self) -> bool {
        !matches!(self, GateAnswer::Stop)
    }
}

impl std::fmt::Display for GateAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of `GET /bg/state`.
///
/// A reader ignores fields it does not know, and the fields marked
/// `default` may be missing; the others, and every answer, are the contract
/// a gate and `bg-ctl` of one release share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateStatus {
    /// The app the gate serves.
    pub app: AppName,
    /// The gate's id in the store's presence records.
    pub gate_id: String,
    /// The colour the gate serves.
    pub colour: Colour,
    /// The service version it runs.
    pub version: String,
    /// What its health route answers for its own colour now.
    pub answer: GateAnswer,
    /// Whether that answer is OK (`answer` is `ok` or `handover`).
    pub live: bool,
    /// The live colour in its view, if it knows one.
    pub active: Option<Colour>,
    /// The generation it answers from (0: nothing known).
    pub generation: u64,
    /// Milliseconds of handover left, while handing over.
    #[serde(default)]
    pub handover_ms_left: Option<u64>,
    /// Milliseconds since the store last confirmed its view.
    pub stale_ms: u64,
    /// Whether its view came from the local cache file, not the store.
    #[serde(default)]
    pub from_cache: bool,
    /// Whether it reads the store on every health check.
    #[serde(default)]
    pub strict: bool,
    /// Whether the store answers it.
    pub store: StoreHealth,
    /// Something the store said that the gate refuses to believe (a lost
    /// state, a lower generation).
    #[serde(default)]
    pub alarm: Option<String>,
    /// Its tracked connections.
    pub connections: ConnectionCounts,
    /// The load balancer's recent probes, oldest first.
    #[serde(default)]
    pub probes: Vec<ProbeRecord>,
    /// Whether the gate was told which sources are load balancers
    /// (`--lb-source`): it then logs only their probes, and each source in
    /// the log is a load balancer from its first probe.
    #[serde(default)]
    pub named_lb_sources: bool,
    /// The state it answers from.
    #[serde(default)]
    pub state: Option<State>,
    /// The service beside a standalone gate (sidecar mode), if it has one.
    #[serde(default)]
    pub service: Option<ServiceHealth>,
}

/// The version a gate reports when it was told none (bg-gate's
/// `--service-version` default, or a sidecar whose service has not said):
/// not a version anything runs, so never recorded as one, and never taken
/// to mean a gate runs something else.
pub const UNKNOWN_VERSION: &str = "unknown";

/// Whether `version`, as a gate reports it, is one a colour can be said to
/// run: not [`UNKNOWN_VERSION`], and by the store's rule for versions.
#[must_use]
pub fn is_known_version(version: &str) -> bool {
    version != UNKNOWN_VERSION && crate::check_version(version).is_ok()
}

/// The service a sidecar gate stands beside, as its last checks found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// Where it is, credentials removed.
    pub url: String,
    /// Whether its health route passes: after `rise` good checks in a row,
    /// until `fall` failed ones. While it does not, the gate answers `503
    /// DOWN` for its colour whatever the store says.
    pub up: bool,
    /// The version its version route last gave, if it has one.
    #[serde(default)]
    pub version: Option<String>,
    /// The open websockets its connections route last gave, if it has one.
    #[serde(default)]
    pub websockets: Option<u64>,
    /// What went wrong with the last check, if it failed.
    #[serde(default)]
    pub error: Option<String>,
}

impl GateStatus {
    /// Whether this gate answers STOP for its own colour (past any handover).
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.answer == GateAnswer::Stop
    }

    /// Whether this gate answers OK for its own colour and is not handing
    /// over: it is the live colour.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.answer == GateAnswer::Ok
    }
}

/// The store's health as a gate sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// The backend's name (`memory`, `file`, `redis`, `remote`).
    #[serde(default)]
    pub backend: String,
    /// Whether its last read succeeded.
    pub healthy: bool,
    /// Why the last read failed, credentials removed.
    #[serde(default)]
    pub error: Option<String>,
}

/// A gate's tracked connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// Open websockets; `None` (`null`) when the gate cannot count them
    /// (a sidecar gate whose service is up but whose connections route
    /// fails or does not answer in time): unknown, never 0.
    pub websockets: Option<u64>,
    /// Requests in flight.
    #[serde(default)]
    pub requests: u64,
    /// Websockets opened while a drain ran, since the latest drain request
    /// (one that started a drain or joined the running one): clients the
    /// load balancer still sends to the colour being drained.
    #[serde(default)]
    pub arrived_while_draining: u64,
}

/// One health check a gate answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// Who asked, when the server knows the peer address.
    pub source: Option<IpAddr>,
    /// When, by the gate's clock.
    pub at_ms: Millis,
    /// The colour asked about.
    pub colour: Colour,
    /// What it was told.
    pub answer: GateAnswer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_lowercase_words() {
        for (a, s) in [
            (GateAnswer::Ok, "ok"),
            (GateAnswer::Handover, "handover"),
            (GateAnswer::Stop, "stop"),
        ] {
            assert_eq!(serde_json::to_value(a).unwrap(), s);
            assert_eq!(a.as_str(), s);
        }
        assert!(GateAnswer::Handover.is_ok());
        assert!(!GateAnswer::Stop.is_ok());
        assert!(serde_json::from_value::<GateAnswer>("OK".into()).is_err());
    }

    #[test]
    fn a_minimal_status_reads_with_defaults() {
        let s: GateStatus = serde_json::from_value(serde_json::json!({
            "app": "chat", "gate_id": "g1", "colour": "blue", "version": "v1",
            "answer": "stop", "live": false, "active": "green", "generation": 4,
            "stale_ms": 12, "store": { "healthy": true },
            "connections": { "websockets": 3 },
            "a_field_from_a_newer_gate": 1
        }))
        .unwrap();
        assert!(s.is_stopped() && !s.is_ok());
        assert_eq!(s.active, Some(Colour::Green));
        assert_eq!(s.connections.requests, 0);
        assert!(s.probes.is_empty() && s.alarm.is_none() && s.state.is_none());
        let back: GateStatus = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
