//! How a gate behaves: [`GateConfig`] and its defaults.

use std::path::PathBuf;
use std::time::Duration;

use bg_state::{AppName, Colour};

/// How long a client may take to send its request body to the admin
/// routes, unless the gate's configuration says otherwise.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub use bg_state::wire::UNKNOWN_VERSION;

/// What an idle colour answers to the health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopStatus {
    /// `503 Service Unavailable` (the default).
    #[default]
    ServiceUnavailable,
    /// `404 Not Found`, for HAProxy's `http-check disable-on-404`.
    NotFound,
}

impl StopStatus {
    /// The HTTP status code.
    #[must_use]
    pub fn code(self) -> u16 {
        match self {
            StopStatus::ServiceUnavailable => 503,
            StopStatus::NotFound => 404,
        }
    }
}

impl std::str::FromStr for StopStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "503" => Ok(StopStatus::ServiceUnavailable),
            "404" => Ok(StopStatus::NotFound),
            other => Err(format!(
                "{other:?} is not a STOP status: use 503 (default) or 404 (HAProxy disable-on-404)"
            )),
        }
    }
}

/// How a gate behaves. [`GateConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GateConfig {
    /// The app whose state this gate follows.
    pub app: AppName,
    /// The colour this gate serves.
    pub colour: Colour,
    /// The version of the service this gate runs in (image tag, commit);
    /// [`UNKNOWN_VERSION`] when not known.
    pub service_version: String,
    /// Unique per gate, for presence reports. Default: `<colour>-<host>-<pid>`.
    pub gate_id: String,
    /// What an idle colour answers with. Default 503.
    pub stop_status: StopStatus,
    /// Answer `<response>OK</response>` / `<response>STOP</response>` like
    /// the hand-made health route, instead of bare `OK` / `STOP`.
    pub seed_body: bool,
    /// How often the view re-reads the store, notifications or not. Default 500 ms.
    pub poll_interval: Duration,
    /// How long a colour that lost live status keeps answering OK, from the
    /// moment this gate learns of the switch, so the load balancer marks the
    /// new colour up before the old one down. Default 6 s (HAProxy's default
    /// `inter 2s rise 2` needs at least 4 s, plus a poll and margin).
    pub handover: Duration,
    /// Where to keep the last known state, so a gate restarted while the
    /// store is down answers from it.
    pub cache_file: Option<PathBuf>,
    /// Read the store on every health check (the hand-made design), for
    /// comparison. Answers then wait on the store, bounded by `store_timeout`.
    pub strict: bool,
    /// Initialise an empty store with this colour live, when the gate knows
    /// no state either.
    pub init: Option<Colour>,
    /// How long a presence report lasts. Default 15 s; renewed every third of it.
    pub presence_ttl: Duration,
    /// How many load-balancer probes to remember per source (of at most
    /// [`MAX_PROBE_SOURCES`](crate::MAX_PROBE_SOURCES) sources). Default 64.
    pub probe_log: usize,
    /// Where the load balancers' health checks come from. When given, only
    /// probes from these ranges are logged (and so counted by `bg-ctl`);
    /// anyone else still gets an answer. Empty by default: every source is
    /// logged, and `bg-ctl` tells load balancers by their steady probing.
    pub lb_sources: Vec<crate::probes::LbSource>,
    /// Bound on any store call the gate makes. Default 2 s.
    pub store_timeout: Duration,
    /// Close this colour's tracked websockets by itself once it has answered
    /// STOP for this long (a paced drain, as `POST /bg/drain` does). Off by default.
    pub drain_after: Option<Duration>,
    /// The pace of the drain `drain_after` starts: every websocket asked
    /// within a window (default 20 s; a small colour in a moment), with an
    /// optional cap per second.
    pub drain_pace: bg_state::wire::DrainPace,
    /// How long a client may take to send a request body to the admin
    /// routes before it is answered 408. Default 10 s.
    pub body_timeout: Duration,
    /// Let the store API (`/bg/api/v1`) serve every app in the store, not
    /// only this gate's. Off by default: a credential accepted by this gate
    /// then reaches only its own app.
    pub api_any_app: bool,
    /// A shell command (`sh -c`) run whenever the live colour this gate
    /// answers from changes, and once when it first knows a state (so a
    /// load balancer configured by it is right after a restart): the push
    /// model for load balancers without active health checks, such as
    /// open-source nginx. The live colour is the one whose
    /// [`Gate::verdict`](crate::Gate::verdict) is `Ok`: in sidecar mode,
    /// never this gate's own colour while its service is down. Its environment is minimal: `BG_ACTIVE` (the live
    /// colour), `BG_GENERATION`, `BG_APP` and `BG_COLOUR` (this gate's
    /// colour), and of the gate's own only `PATH`, `HOME`, `LANG`, `LC_ALL`
    /// and `TZ` — no token, no store URL. Runs go one at a time, off the health-check path, once
    /// [`Gate::start`](crate::Gate::start) has been called; a run that fails
    /// or outlasts 30 s (then killed) is logged and retried, with a pause
    /// growing from 1 s to 30 s, until it succeeds or a newer change
    /// replaces it. Off by default.
    pub on_change: Option<String>,
    /// Sidecar mode: the service beside this standalone gate. Its health
    /// decides whether the gate may answer OK at all, and its version,
    /// websockets and drain stand in for the gate's own. Off by default.
    pub service: Option<super::ServiceConfig>,
}

impl GateConfig {
    /// Defaults for a gate of `colour` running `service_version` of `app`.
    pub fn new(app: AppName, colour: Colour, service_version: impl Into<String>) -> Self {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".to_owned());
        GateConfig {
            gate_id: format!("{colour}-{host}-{}", std::process::id()),
            app,
            colour,
            service_version: service_version.into(),
            stop_status: StopStatus::default(),
            seed_body: false,
            poll_interval: Duration::from_millis(500),
            handover: Duration::from_secs(6),
            cache_file: None,
            strict: false,
            init: None,
            presence_ttl: Duration::from_secs(15),
            probe_log: 64,
            lb_sources: Vec::new(),
            store_timeout: Duration::from_secs(2),
            drain_after: None,
            drain_pace: bg_state::wire::DrainPace::default(),
            body_timeout: BODY_TIMEOUT,
            api_any_app: false,
            on_change: None,
            service: None,
        }
    }
}
