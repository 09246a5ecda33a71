//! The gate's options as flags and environment variables, and the start-up
//! they describe.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bg_state::{AppName, Colour};
use tokio::net::TcpListener;

use super::error::ServerError;
use super::run::GateServer;
use crate::cli::parse_duration;
use crate::{Auth, ClaimRule, Gate, JwksSource, OidcVerifier, StopStatus};

mod check;

use check::open_store;

/// The gate's options, as flags and environment variables. Flatten it into
/// a service's own `clap` parser to give it the same options as `bg-gate`.
#[derive(clap::Args)]
pub struct GateArgs {
    /// The colour this gate serves.
    #[arg(long, env = "BG_COLOUR", value_parser = parse_colour)]
    colour: Colour,

    /// Where the state lives: memory://, file:///path, redis://host:port/db,
    /// redis-sentinel://host:port[,host:port…]/master_name,
    /// redis-cluster://host:port[,host:port…], or rediss… for TLS
    #[arg(
        long,
        env = "BG_STORE",
        default_value = "memory://",
        hide_env_values = true
    )]
    store: String,

    /// The CA certificate (PEM) that signed the Redis servers' certificates,
    /// for rediss… URLs without ?ca=FILE
    #[arg(long, env = "BG_REDIS_CA")]
    redis_ca: Option<std::path::PathBuf>,

    /// The app whose state this gate follows.
    #[arg(long, env = "BG_APP", default_value = "default", value_parser = parse_app)]
    app: AppName,

    /// Address for the health check and, without --admin-listen, the admin routes.
    #[arg(long, env = "BG_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Serve the admin routes (state, switch, drain, metrics) on this private address instead.
    #[arg(long, env = "BG_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,

    /// Serve the admin routes beside the health check on a --listen address that is not
    /// loopback. Without it, and without --admin-listen, such a gate refuses to start.
    #[arg(long, env = "BG_ADMIN_ON_PUBLIC")]
    admin_on_public: bool,

    /// The version of the service this gate stands for (image tag, commit).
    #[arg(long, env = "BG_SERVICE_VERSION", default_value = crate::UNKNOWN_VERSION)]
    service_version: String,

    /// A file of `name token [scope]` lines (scope `ci`, the default, or `admin`) allowed to
    /// write; re-read on SIGHUP. One more
    /// token may come from the environment as BG_TOKEN (never from the command line).
    #[arg(long, env = "BG_TOKEN_FILE")]
    token_file: Option<PathBuf>,

    /// One more token, recorded as actor `bg-token`, with the ci scope: read from `BG_TOKEN`
    /// only, since a command line is visible to every user of the host.
    #[arg(skip = std::env::var("BG_TOKEN").ok())]
    token: Option<String>,

    /// Accept GitLab CI id_tokens from this issuer (`iss`), e.g. `https://gitlab.com`.
    #[arg(long, env = "BG_OIDC_ISSUER")]
    oidc_issuer: Option<String>,

    /// The audience (`aud`) the job's `id_tokens:` entry sets for this gate.
    #[arg(long, env = "BG_OIDC_AUDIENCE")]
    oidc_audience: Option<String>,

    /// The issuer's public keys: a JWKS file, or a URL such as `https://gitlab.com/oauth/discovery/keys`.
    #[arg(long, env = "BG_OIDC_JWKS", value_parser = parse_jwks)]
    oidc_jwks: Option<JwksSource>,

    /// A claim every id_token must carry, NAME=VALUE (project_id=42, ref_protected=true); repeatable,
    /// comma-separated in the environment. Rules for one claim are alternatives.
    #[arg(
        long = "oidc-claim",
        env = "BG_OIDC_CLAIMS",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        value_parser = parse_claim
    )]
    oidc_claims: Vec<ClaimRule>,

    /// A claim an id_token must also carry to get the admin scope (init, forced acts, lease
    /// break, presence), NAME=VALUE (ref_protected=true); repeatable, comma-separated in the
    /// environment, same meaning as --oidc-claim. Without one, id_tokens get the ci scope only.
    #[arg(
        long = "oidc-admin-claim",
        env = "BG_OIDC_ADMIN_CLAIMS",
        value_name = "NAME=VALUE",
        value_delimiter = ',',
        value_parser = parse_claim
    )]
    oidc_admin_claims: Vec<ClaimRule>,

    /// Initialise the store with this colour live if neither the store nor the gate knows a state.
    #[arg(long, env = "BG_INIT", value_parser = parse_colour)]
    init: Option<Colour>,

    /// What the idle colour answers: 503, or 404 for HAProxy `http-check disable-on-404`.
    #[arg(long, env = "BG_STOP_STATUS", default_value = "503")]
    stop_status: StopStatus,

    /// Answer `<response>OK</response>` when live and `<response>STOP</response>` when idle,
    /// word for word like the hand-made health route; the status codes stay as they are
    /// (200 for OK, --stop-status for STOP).
    #[arg(long, env = "BG_SEED_BODY")]
    seed_body: bool,

    /// How often to re-read the store besides change notifications.
    #[arg(long, env = "BG_POLL_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    poll_interval: Duration,

    /// How long a colour that lost live status keeps answering OK (make-before-break).
    #[arg(long, env = "BG_HANDOVER", default_value = "6s", value_parser = parse_duration)]
    handover: Duration,

    /// Keep the last known state here, to answer from it after a restart while the store is down.
    #[arg(long, env = "BG_CACHE_FILE")]
    cache_file: Option<PathBuf>,

    /// Answer HAProxy agent checks (`ready` / `drain`) on this address.
    #[arg(long, env = "BG_AGENT_LISTEN")]
    agent_listen: Option<SocketAddr>,

    /// Read the store on every health check (the hand-made design), for comparison.
    #[arg(long, env = "BG_STRICT")]
    strict: bool,

    /// Close a connection whose request head has not fully arrived this long after its first
    /// byte (or after the connection was opened), on every listener.
    #[arg(long, env = "BG_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,

    /// Close a kept-alive connection that sends no new request for this long (websockets,
    /// once upgraded, are not subject to it).
    #[arg(long, env = "BG_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Open connections (websockets included) each listener serves. Default: what the process's
    /// open-file limit (ulimit -n, raised to its hard limit at start) leaves after 320 for the
    /// gate's own files, store connections and reserve. Beyond it, a reserve of 64 more is served
    /// the gate's own routes on that listener only (health; state and admin where they are
    /// served), one request each, and anything else is answered 503 over_capacity; past that,
    /// connections are closed.
    #[arg(long, env = "BG_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Bound on every store call.
    #[arg(long, env = "BG_STORE_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    store_timeout: Duration,

    /// This gate's id in presence reports (default: colour-host-pid).
    #[arg(long, env = "BG_GATE_ID")]
    gate_id: Option<String>,

    /// A load balancer's address range (CIDR, repeatable): only health checks from these count as a load balancer's probes.
    #[arg(
        long = "lb-source",
        env = "BG_LB_SOURCES",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    lb_sources: Vec<crate::probes::LbSource>,

    /// Close the websockets this gate serves itself (paced, close code 1012) once its colour has
    /// been idle this long. A sidecar gate does not forward it: its service's websockets are
    /// drained by bg-ctl deploy or POST /bg/drain only.
    #[arg(long, env = "BG_DRAIN_AFTER", value_parser = parse_duration)]
    drain_after: Option<Duration>,

    /// How long a drain takes to ask every websocket to move, however many there are
    /// (--drain-after's own drain; bg-ctl sends its own window): a small colour is asked in a
    /// moment, at no less than 100 a second.
    #[arg(long, env = "BG_DRAIN_WINDOW", default_value = "20s", value_parser = parse_duration)]
    drain_window: Duration,

    /// At most this many websockets a second asked to move by --drain-after's drain, for a live
    /// colour that cannot take the reconnects faster; the window stretches to fit.
    #[arg(long, env = "BG_DRAIN_MAX_RATE", value_name = "PER_SECOND")]
    drain_max_rate: Option<u32>,

    /// Replaced by --drain-window: ignored with a warning saying so.
    #[arg(long, env = "BG_DRAIN_BATCH", hide = true, hide_env = true)]
    drain_batch: Option<String>,

    /// Replaced by --drain-window: ignored with a warning saying so.
    #[arg(long, env = "BG_DRAIN_INTERVAL", hide = true, hide_env = true)]
    drain_interval: Option<String>,

    /// Run this shell command on every change of the live colour and once at start-up, with
    /// BG_ACTIVE, BG_GENERATION, BG_APP and BG_COLOUR set: for load balancers without active
    /// health checks (open-source nginx: rewrite the upstream, reload). Failures are retried.
    /// Its environment is minimal (PATH, HOME, LANG, LC_ALL, TZ and those four): pass what it
    /// needs in the command itself.
    #[arg(long, env = "BG_ON_CHANGE", value_name = "CMD", hide_env_values = true)]
    on_change: Option<String>,

    /// Also keep the hand-made design's Redis keys lb-status-BLUE_ID and lb-status-GREEN_ID
    /// (1 live, 0 idle) for this app, for instances still reading them during a migration.
    /// The first gate started with it records the ids in the app's state, so every change
    /// moves the keys, whoever makes it (bg-ctl --store redis://… too); later ids do not
    /// replace them (`bg-ctl init --force --legacy-mirror` does). Needs one Redis master:
    /// a redis:// or redis-sentinel:// store (not a Cluster).
    #[arg(long, env = "BG_LEGACY_MIRROR", value_name = "BLUE_ID,GREEN_ID")]
    legacy_mirror: Option<String>,

    /// Sidecar mode: the service beside this gate, http://HOST:PORT. Its health route is checked
    /// every --service-interval; while it fails, this colour answers 503 DOWN whatever the store
    /// says (agent check: down), and the store is not touched.
    #[arg(
        long,
        env = "BG_SERVICE_URL",
        value_name = "URL",
        help_heading = "Sidecar mode"
    )]
    service_url: Option<String>,

    /// The service's health route: any 2xx answer within 1 s passes.
    #[arg(
        long,
        env = "BG_SERVICE_HEALTH",
        value_name = "PATH",
        default_value = "/health",
        requires = "service_url",
        help_heading = "Sidecar mode"
    )]
    service_health: String,

    /// How often to check the service (each check bounded by 1 s).
    #[arg(long, env = "BG_SERVICE_INTERVAL", default_value = "1s", value_parser = parse_duration,
          requires = "service_url", help_heading = "Sidecar mode")]
    service_interval: Duration,

    /// Failed checks in a row after which the service counts as down.
    #[arg(
        long,
        env = "BG_SERVICE_FALL",
        default_value_t = 2,
        requires = "service_url",
        help_heading = "Sidecar mode"
    )]
    service_fall: u32,

    /// Good checks in a row after which it counts as up again (a new gate starts it down).
    #[arg(
        long,
        env = "BG_SERVICE_RISE",
        default_value_t = 2,
        requires = "service_url",
        help_heading = "Sidecar mode"
    )]
    service_rise: u32,

    /// The service's version route (plain text, or JSON with a "version" field), read with every
    /// check: the gate reports that version instead of --service-version, so a service restarted
    /// by its webhook shows its new version through the same gate.
    #[arg(
        long,
        env = "BG_SERVICE_VERSION_PATH",
        value_name = "PATH",
        requires = "service_url",
        help_heading = "Sidecar mode"
    )]
    service_version_path: Option<String>,

    /// Forward drains to this route of the service: POST
    /// {"close_code":1012,"batch":N,"interval_ms":M,"timeout_ms":T} (timeout_ms 0: stop). Goes
    /// with --service-connections-path: bg-ctl drains only the websockets it can count.
    #[arg(
        long,
        env = "BG_SERVICE_DRAIN_PATH",
        value_name = "PATH",
        requires_all = ["service_url", "service_connections_path"],
        help_heading = "Sidecar mode"
    )]
    service_drain_path: Option<String>,

    /// Read the service's open websockets from this route ({"connections": N}) with every check,
    /// so bg-ctl's drain waits for the service's own clients.
    #[arg(
        long,
        env = "BG_SERVICE_CONNECTIONS_PATH",
        value_name = "PATH",
        requires_all = ["service_url", "service_drain_path"],
        help_heading = "Sidecar mode"
    )]
    service_connections_path: Option<String>,
}

fn parse_colour(s: &str) -> Result<Colour, String> {
    s.parse().map_err(|e: bg_state::Error| e.to_string())
}

fn parse_app(s: &str) -> Result<AppName, String> {
    AppName::new(s).map_err(|e| e.to_string())
}

fn parse_jwks(s: &str) -> Result<JwksSource, String> {
    s.parse().map_err(|e: crate::OidcError| e.to_string())
}

fn parse_claim(s: &str) -> Result<ClaimRule, String> {
    s.parse().map_err(|e: crate::OidcError| e.to_string())
}

/// The id_token verifier the OIDC options ask for, if any.
async fn oidc(args: &GateArgs) -> Result<Option<OidcVerifier>, ServerError> {
    let Some(cfg) = args.oidc_config()? else {
        return Ok(None);
    };
    let jwks = cfg.jwks.clone();
    let verifier = OidcVerifier::new(cfg).await.map_err(ServerError::Oidc)?;
    tracing::info!(
        issuer = verifier.issuer(),
        audience = verifier.audience(),
        jwks = %jwks,
        rules = %verifier
            .rules()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        admin_rules = %verifier
            .admin_rules()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        "GitLab id_tokens accepted for switching"
    );
    Ok(Some(verifier))
}

impl GateArgs {
    /// Builds the gate these options describe, binds its listeners and
    /// starts following the store.
    ///
    /// # Errors
    /// A [`ServerError`] whose [`exit_code`](ServerError::exit_code) is 2
    /// for options that cannot be used, 1 for a listener that cannot be
    /// bound.
    pub async fn start(self) -> Result<GateServer, ServerError> {
        let args = self;
        let drain_pace = args.checked_limits()?;
        args.warn_of_ignored_options();
        // A gate holding thousands of websockets needs more descriptors
        // than the usual soft limit of 1,024, whatever its cap.
        let files = super::conn::raise_open_file_limit();
        let limits = args.limits();
        if let Some(files) = files
            && limits.max_connections as u64 > files
        {
            tracing::warn!(
                max_connections = limits.max_connections,
                open_file_limit = files,
                "--max-connections is above the open-file limit: connections past it are refused by the kernel, not answered; raise the limit (ulimit -n, LimitNOFILE) or lower --max-connections"
            );
        }
        tracing::info!(
            max_connections = limits.max_connections,
            "serving at most this many connections per listener, websockets included"
        );
        let store = open_store(&args)?;
        if store.backend() == "memory" {
            tracing::warn!(
                "the state lives in this process only (memory://): other gates and bg-ctl cannot see it; use file:// or redis:// to share it"
            );
        }
        let mut auth = match &args.token_file {
            Some(path) => Auth::from_file(path).map_err(ServerError::Tokens)?,
            None => Auth::none(),
        };
        if let Some(verifier) = oidc(&args).await? {
            auth = auth.with_oidc(verifier);
        }
        if let Some(token) = args.bg_token()? {
            auth.add(token).map_err(ServerError::Tokens)?;
        }
        if !auth.is_configured() {
            tracing::warn!(
                "no credentials configured (--token-file, BG_TOKEN, --oidc-*): switching through this gate is off"
            );
        }

        let cfg = args.gate_config(drain_pace);
        let gate = Gate::new(Arc::clone(&store), cfg, auth).map_err(ServerError::Gate)?;
        let follower = gate.start();

        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })
        };
        let admin = match args.admin_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let listener = bind(args.listen).await?;
        let agent = match args.agent_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        if args.admin_listen.is_none() && !args.listen.ip().is_loopback() {
            tracing::warn!(
                listen = %args.listen,
                "the admin routes (state, switch, drain, store API, metrics) share the public listener, as --admin-on-public asks"
            );
        }
        tracing::info!(
            listen = %args.listen,
            admin = ?args.admin_listen,
            agent = ?args.agent_listen,
            colour = %gate.config().colour,
            app = %gate.config().app,
            store = store.backend(),
            "bg-gate serving"
        );
        Ok(GateServer {
            gate,
            follower,
            listener,
            admin,
            agent,
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::GateArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        gate: GateArgs,
    }

    #[test]
    fn debug_shows_no_secret() {
        let cli = Cli::try_parse_from([
            "bg-gate",
            "--colour",
            "blue",
            "--store",
            "redis://:hunter2-store-password@redis:6379/0",
            "--on-change",
            "curl -H 'X-Key: lb-api-secret' http://lb/reload",
        ])
        .unwrap();
        let shown = format!("{cli:?}");
        for secret in ["hunter2-store-password", "lb-api-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("redis"), "{shown}");
    }

    #[test]
    fn a_token_is_never_taken_from_the_command_line() {
        let e = Cli::try_parse_from([
            "bg-gate",
            "--colour",
            "blue",
            "--token",
            "0123456789abcdef-on-the-command-line",
        ])
        .unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{e}");
    }
}
