//! What the options mean before anything is opened: every rule a start
//! enforces that needs no store, file, network or listener, shared by
//! [`GateArgs::start`] and `bg-gate --check`, which runs these alone.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bg_state::Colour;
use bg_state::wire::DrainPace;

use super::GateArgs;
use crate::server::conn::{Limits, default_max_connections};
use crate::server::error::ServerError;
use crate::{Auth, Gate, GateConfig, NamedToken, OidcConfig, ServiceConfig};

impl GateArgs {
    /// The listener and connection rules, and the drain's pace.
    pub(super) fn checked_limits(&self) -> Result<DrainPace, ServerError> {
        if self.admin_listen.is_none() && !self.listen.ip().is_loopback() && !self.admin_on_public {
            return Err(ServerError::AdminOnPublic {
                listen: self.listen,
            });
        }
        for (name, d) in [
            ("--header-timeout", self.header_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
                return Err(ServerError::Limit {
                    option: name,
                    reason: "must be between 100ms and 1h",
                });
            }
        }
        if self.max_connections == Some(0) {
            return Err(ServerError::Limit {
                option: "--max-connections",
                reason: "must be at least 1",
            });
        }
        let drain_pace = DrainPace {
            window: self.drain_window,
            max_rate: self.drain_max_rate,
        };
        drain_pace.check().map_err(|reason| ServerError::Limit {
            option: "--drain-window or --drain-max-rate",
            reason,
        })?;
        Ok(drain_pace)
    }

    /// An environment left from an earlier release must not stop the gate
    /// from starting; it is said once, and ignored.
    pub(super) fn warn_of_ignored_options(&self) {
        for (option, given) in [
            ("--drain-batch (BG_DRAIN_BATCH)", &self.drain_batch),
            ("--drain-interval (BG_DRAIN_INTERVAL)", &self.drain_interval),
        ] {
            if given.is_some() {
                tracing::warn!(
                    "{option} is ignored: a drain is paced by time now; set --drain-window (how long asking every websocket takes) and, to cap it, --drain-max-rate"
                );
            }
        }
    }

    /// The connection limits, the cap from the open-file limit as it is now.
    pub(super) fn limits(&self) -> Limits {
        Limits {
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_connections: self.max_connections.unwrap_or_else(default_max_connections),
        }
    }

    /// The store's options: the CA file and the legacy mirror.
    fn open_options(&self) -> Result<bg_state::OpenOptions, ServerError> {
        let mut opts = bg_state::OpenOptions::default();
        opts.redis.ca_file.clone_from(&self.redis_ca);
        if let Some(ids) = &self.legacy_mirror {
            let Some((blue, green)) = ids.split_once(',') else {
                return Err(ServerError::LegacyMirrorIds { given: ids.clone() });
            };
            let mirror = bg_state::LegacyMirror::new(self.app.clone(), blue.trim(), green.trim())
                .map_err(ServerError::LegacyMirror)?;
            opts.redis.mirror = Some(mirror);
        }
        Ok(opts)
    }

    /// The OIDC settings, if any: all three of issuer, audience and keys,
    /// or none of the OIDC options at all.
    pub(super) fn oidc_config(&self) -> Result<Option<OidcConfig>, ServerError> {
        let (issuer, audience, jwks) =
            match (&self.oidc_issuer, &self.oidc_audience, &self.oidc_jwks) {
                (None, None, None)
                    if self.oidc_claims.is_empty() && self.oidc_admin_claims.is_empty() =>
                {
                    return Ok(None);
                }
                (Some(i), Some(a), Some(j)) => (i, a, j),
                _ => return Err(ServerError::OidcOptions),
            };
        let mut cfg = OidcConfig::new(
            issuer.as_str(),
            audience.as_str(),
            jwks.clone(),
            self.oidc_claims.clone(),
        );
        cfg.admin_rules.clone_from(&self.oidc_admin_claims);
        cfg.check().map_err(ServerError::Oidc)?;
        Ok(Some(cfg))
    }

    /// The token from `BG_TOKEN`, if set.
    pub(super) fn bg_token(&self) -> Result<Option<NamedToken>, ServerError> {
        self.token
            .as_deref()
            .map(|secret| NamedToken::new("bg-token", secret).map_err(ServerError::BgToken))
            .transpose()
    }

    /// The gate's configuration.
    pub(super) fn gate_config(&self, drain_pace: DrainPace) -> GateConfig {
        let mut cfg = GateConfig::new(self.app.clone(), self.colour, self.service_version.clone());
        if let Some(id) = &self.gate_id {
            cfg.gate_id.clone_from(id);
        }
        cfg.stop_status = self.stop_status;
        cfg.seed_body = self.seed_body;
        cfg.poll_interval = self.poll_interval;
        cfg.handover = self.handover;
        cfg.cache_file.clone_from(&self.cache_file);
        cfg.strict = self.strict;
        cfg.init = self.init;
        cfg.store_timeout = self.store_timeout;
        cfg.drain_after = self.drain_after;
        cfg.drain_pace = drain_pace;
        cfg.lb_sources.clone_from(&self.lb_sources);
        cfg.on_change.clone_from(&self.on_change);
        cfg.service = self.service_url.as_ref().map(|url| {
            let mut s = ServiceConfig::new(url.clone());
            s.health_path.clone_from(&self.service_health);
            s.interval = self.service_interval;
            s.fall = self.service_fall;
            s.rise = self.service_rise;
            s.version_path.clone_from(&self.service_version_path);
            s.drain_path.clone_from(&self.service_drain_path);
            s.connections_path
                .clone_from(&self.service_connections_path);
            s
        });
        cfg
    }

    /// Checks the options as a start would, without opening the store,
    /// reading a file (token file, JWKS, CA, cache), fetching keys or
    /// binding a listener; returns what the gate would run.
    ///
    /// # Errors
    /// The [`ServerError`] a start would stop with (exit 2).
    pub fn check(&self) -> Result<String, ServerError> {
        let drain_pace = self.checked_limits()?;
        let opts = self.open_options()?;
        let backend = bg_state::check_url(&self.store, &opts).map_err(ServerError::Store)?;
        if opts.redis.mirror.is_some() && backend != "redis" {
            return Err(ServerError::LegacyMirrorNeedsRedis);
        }
        let oidc = self.oidc_config()?;
        let token = self.bg_token()?;
        // The gate's own rules, on a store that is not the real one and
        // without the cache file, which only a start reads.
        let mut cfg = self.gate_config(drain_pace);
        cfg.cache_file = None;
        let probe: Arc<dyn bg_state::ColourStore> = Arc::new(bg_state::MemoryStore::new());
        Gate::new(probe, cfg, Auth::none()).map_err(ServerError::Gate)?;
        Ok(self.summary(backend, oidc.is_some(), token.is_some()))
    }

    /// What `--check` prints: what would run, no secret.
    fn summary(&self, backend: &str, oidc: bool, token: bool) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "bg-gate would serve the {} colour of app {} (version {})",
            self.colour, self.app, self.service_version
        );
        let _ = writeln!(
            out,
            "  store:       {} ({backend}){}",
            bg_state::redact_url(&self.store),
            match self.init {
                Some(c) => format!(", initialised with {c} live if empty"),
                None => String::new(),
            }
        );
        let _ = writeln!(out, "  health:      {}", self.listen);
        let admin = match self.admin_listen {
            Some(a) => a.to_string(),
            None => format!("{} (beside the health check)", self.listen),
        };
        let _ = writeln!(out, "  admin:       {admin}");
        if let Some(agent) = self.agent_listen {
            let _ = writeln!(out, "  agent check: {agent}");
        }
        let mut creds = Vec::new();
        if let Some(f) = &self.token_file {
            creds.push(format!("token file {}", f.display()));
        }
        if token {
            creds.push("BG_TOKEN".into());
        }
        if oidc {
            creds.push("GitLab id_tokens".into());
        }
        let creds = if creds.is_empty() {
            "none: switching through this gate is off".into()
        } else {
            creds.join(", ")
        };
        let _ = writeln!(out, "  credentials: {creds}");
        if let Some(url) = &self.service_url {
            let _ = writeln!(
                out,
                "  sidecar:     {} (health {})",
                bg_state::redact_url(url),
                self.service_health
            );
        }
        if self.on_change.is_some() {
            let _ = writeln!(out, "  on change:   a command (not shown)");
        }
        if self.legacy_mirror.is_some() {
            let _ = writeln!(out, "  legacy keys: kept in step");
        }
        let _ = write!(
            out,
            "the options are valid; nothing was opened, read or bound (--check)"
        );
        out
    }
}

/// The store the options name, with the legacy mirror if one is asked for.
pub(super) fn open_store(args: &GateArgs) -> Result<Arc<dyn bg_state::ColourStore>, ServerError> {
    let opts = args.open_options()?;
    let store = bg_state::open_with(&args.store, &opts).map_err(ServerError::Store)?;
    if let Some(mirror) = &opts.redis.mirror {
        if store.backend() != "redis" {
            return Err(ServerError::LegacyMirrorNeedsRedis);
        }
        tracing::info!(
            blue = mirror.key(Colour::Blue),
            green = mirror.key(Colour::Green),
            "keeping the hand-made design's keys in step with every change made through this gate"
        );
    }
    Ok(store)
}

/// Shows the options with their secrets left out: the token, the store
/// URL's credentials, and the on-change command (it may carry a load
/// balancer's API key).
impl std::fmt::Debug for GateArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |v: bool| if v { "<set>" } else { "<unset>" };
        f.debug_struct("GateArgs")
            .field("colour", &self.colour)
            .field("store", &bg_state::redact_url(&self.store))
            .field("redis_ca", &self.redis_ca)
            .field("app", &self.app)
            .field("listen", &self.listen)
            .field("admin_listen", &self.admin_listen)
            .field("admin_on_public", &self.admin_on_public)
            .field("service_version", &self.service_version)
            .field("token_file", &self.token_file)
            .field("token", &set(self.token.is_some()))
            .field("oidc_issuer", &self.oidc_issuer)
            .field("oidc_audience", &self.oidc_audience)
            .field("oidc_jwks", &self.oidc_jwks)
            .field("oidc_claims", &self.oidc_claims)
            .field("oidc_admin_claims", &self.oidc_admin_claims)
            .field("init", &self.init)
            .field("stop_status", &self.stop_status)
            .field("seed_body", &self.seed_body)
            .field("poll_interval", &self.poll_interval)
            .field("handover", &self.handover)
            .field("cache_file", &self.cache_file)
            .field("agent_listen", &self.agent_listen)
            .field("strict", &self.strict)
            .field("header_timeout", &self.header_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .field("store_timeout", &self.store_timeout)
            .field("gate_id", &self.gate_id)
            .field("drain_after", &self.drain_after)
            .field("drain_window", &self.drain_window)
            .field("drain_max_rate", &self.drain_max_rate)
            .field("on_change", &set(self.on_change.is_some()))
            .field("legacy_mirror", &self.legacy_mirror)
            .field(
                "service_url",
                &self.service_url.as_deref().map(bg_state::redact_url),
            )
            .field("service_health", &self.service_health)
            .field("service_interval", &self.service_interval)
            .field("service_fall", &self.service_fall)
            .field("service_rise", &self.service_rise)
            .field("service_version_path", &self.service_version_path)
            .field("service_drain_path", &self.service_drain_path)
            .field("service_connections_path", &self.service_connections_path)
            .finish()
    }
}
