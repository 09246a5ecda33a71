//! The options, their environment variables, and help with examples.

use std::collections::BTreeMap;
use std::time::Duration;

use bg_state::{AppName, Colour, parse_duration};
use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

use crate::deploy::OnDrainTimeout;

const EXIT_CODES: &str = "Exit codes:\n  \
    0  success\n  \
    1  any other failure (not initialised, rollback refused, smoke or verify check failed)\n  \
    2  usage error or invalid input\n  \
    3  conflict: the generation moved, the lease is held by another, or a switch was refused\n     \
       because a lease is held or a gate is ahead of the store\n  \
    4  timed out waiting: new version, drain, load balancer confirmation, --wait-lease\n  \
    5  store or gate unreachable\n  \
    130, 143  stopped by SIGINT or SIGTERM; a command it ran is stopped with its process group";

const ENVIRONMENT: &str = "Environment:\n  \
    Every setting of every command can come from BG_ and its long name (BG_VERSION, BG_LB_FALL, …).\n  \
    The acts --force, --to, --expect-generation, --active, --from-gate, --json and --check come\n  \
    only from the command line, which wins over the environment: --store sets BG_GATE aside, --gate BG_STORE.";

/// bluegreen's command line: see and change which colour is live, and run
/// a whole blue/green release from CI.
#[derive(Debug, Parser)]
#[command(
    name = "bg-ctl",
    version,
    after_help = format!("{EXIT_CODES}\n\n{ENVIRONMENT}\n\nExample (GitLab CI, the settings from CI/CD variables):\n  \
        BG_GATE=https://gate-blue.internal:9090,https://gate-green.internal:9090 BG_APP=chat \\\n    \
        bg-ctl deploy --version \"$CI_COMMIT_TAG\"")
)]
pub struct Cli {
    #[command(flatten)]
    pub(super) global: Global,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Debug, Args)]
pub(super) struct Global {
    /// Where the state lives: file:///path, redis://host:port/db,
    /// redis-sentinel://host:port[,host:port…]/master_name,
    /// redis-cluster://host:port[,host:port…], or rediss… for TLS.
    /// Given on the command line, it wins over BG_GATE in the environment;
    /// when both are in the environment, BG_STORE wins.
    #[arg(long, env = "BG_STORE", global = true, hide_env_values = true)]
    pub(super) store: Option<String>,

    /// The CA certificate (PEM) that signed the Redis servers' certificates,
    /// for rediss… URLs without ?ca=FILE
    #[arg(long, env = "BG_REDIS_CA", global = true)]
    pub(super) redis_ca: Option<std::path::PathBuf>,

    /// Use a gate's store API as the store (when CI reaches the services but
    /// not Redis). Repeat it (comma-separated in BG_GATE) with a gate of each
    /// colour: requests go to whichever answers, so a release survives the
    /// restart of the gate it was using. Given on the command line, it wins
    /// over BG_STORE in the environment.
    #[arg(long, env = "BG_GATE", global = true, value_delimiter = ',')]
    pub(super) gate: Vec<String>,

    /// Token for the gate's writes and drains (a named token or a GitLab id_token).
    #[arg(long, env = "BG_TOKEN", global = true, hide_env_values = true)]
    pub(super) token: Option<String>,

    /// The app.
    #[arg(long, env = "BG_APP", global = true, default_value = "default", value_parser = parse_app)]
    pub(super) app: AppName,

    /// Who is acting, recorded in history (default: the GitLab user and job,
    /// or user@host). Not sent through a gate (--gate): the gate records the
    /// name of the token it accepted.
    #[arg(long, env = "BG_ACTOR", global = true)]
    pub(super) actor: Option<String>,

    /// Print one machine-readable JSON result on stdout.
    #[arg(long, global = true)]
    pub(super) json: bool,

    /// Check the command line and its environment as the command would before it reads or
    /// changes anything (every option, the store's URL, a deploy's trigger and settings), print
    /// what would run and exit: 0, or 2 with the usage error. Opens no store, sends nothing,
    /// runs nothing: a pipeline can check its bg-ctl line before it needs it.
    #[arg(long, global = true)]
    pub(super) check: bool,

    /// Bound on each request to the store or a gate.
    #[arg(long, env = "BG_TIMEOUT", global = true, default_value = "10s", value_parser = parse_duration)]
    pub(super) timeout: Duration,
}

#[derive(Debug, Args, Clone, Default)]
pub(super) struct GateUrls {
    /// A gate of the blue colour (its admin address); repeat for replicas, or comma-separate
    /// them (BG_GATE_BLUE=URL,URL). Without the idle colour's gates, deploy cannot see that
    /// colour: it warns and skips the wait until it is out of rotation and the drain.
    #[arg(long = "gate-blue", env = "BG_GATE_BLUE", value_delimiter = ',')]
    pub(super) blue: Vec<String>,
    /// A gate of the green colour (its admin address); repeat for replicas, or comma-separate
    /// them (BG_GATE_GREEN=URL,URL).
    #[arg(long = "gate-green", env = "BG_GATE_GREEN", value_delimiter = ',')]
    pub(super) green: Vec<String>,
}

impl GateUrls {
    pub(super) fn by_colour(&self) -> BTreeMap<Colour, Vec<String>> {
        let mut m = BTreeMap::new();
        if !self.blue.is_empty() {
            m.insert(Colour::Blue, self.blue.clone());
        }
        if !self.green.is_empty() {
            m.insert(Colour::Green, self.green.clone());
        }
        m
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum Command {
    /// Show the live colour, generation, versions, lease, last change, and what gates answer.
    #[command(
        after_help = "Example:\n  bg-ctl --store redis://redis:6379/0 --app chat status --gate-blue http://blue:9090 --gate-green http://green:9090"
    )]
    Status {
        #[command(flatten)]
        gates: GateUrls,
    },
    /// Create the state (generation 1), or restore it from the gates after the store lost it.
    #[command(
        after_help = "Examples:\n  bg-ctl --app chat init --active blue --live-version v1.4.2\n  \
        bg-ctl --app chat init --from-gate http://blue:9090 --from-gate http://green:9090   # after Redis restarted empty"
    )]
    Init {
        /// The colour to make live.
        #[arg(long, value_parser = parse_colour, required_unless_present = "from_gate", conflicts_with = "from_gate")]
        active: Option<Colour>,
        /// Restore what these gates serve, above every generation they know; all must answer.
        #[arg(long = "from-gate")]
        from_gate: Vec<String>,
        /// Replace state that is there (recorded as forced; the generation still goes up).
        #[arg(long)]
        force: bool,
        /// The version the colour made live runs (image tag, commit): recorded as its live
        /// version, so `bg-ctl rollback` can return to it after the first release. With
        /// --from-gate it is what the live colour's gates report, when they agree (this is
        /// not read). Not BG_VERSION, which a pipeline sets to the version it releases.
        #[arg(long, env = "BG_LIVE_VERSION", value_name = "VERSION")]
        live_version: Option<String>,
        /// Keep the hand-made design's keys `lb-status-<BLUE_ID>` and
        /// `lb-status-<GREEN_ID>` in step with the live colour, whoever makes
        /// the change: the ids are recorded in the app's state (Redis store
        /// only, single node).
        #[arg(long, env = "BG_LEGACY_MIRROR", value_name = "BLUE_ID,GREEN_ID")]
        legacy_mirror: Option<String>,
        /// Why (recorded).
        #[arg(long, env = "BG_REASON")]
        reason: Option<String>,
    },
    /// Make a colour live, atomically (compare-and-swap on the generation).
    #[command(
        after_help = "Example:\n  bg-ctl --app chat switch --to green --expect-generation 7 --reason \"release v2\""
    )]
    Switch {
        /// The colour to make live (default: the idle one). Pass it in CI: without it a retry after a lost answer flips back.
        #[arg(long, value_parser = parse_colour)]
        to: Option<Colour>,
        /// Only if the generation is still this (default: the one just read).
        #[arg(long)]
        expect_generation: Option<u64>,
        /// Why (recorded).
        #[arg(long, env = "BG_REASON")]
        reason: Option<String>,
        /// Switch even though a deploy lease is held (recorded as forced).
        #[arg(long)]
        force: bool,
    },
    /// The whole release: lease, deploy to the idle colour, verify, switch.
    #[command(
        after_help = "Steps: take the lease; record \"deploying\"; wait until the idle colour is out of \
        rotation; drain it; trigger the deploy; wait until its gates run the new version with a fresh view; \
        --smoke; record \"deployed\"; switch (compare-and-swap); --confirm-lb; --verify through --watch; \
        release the lease. The first failure stops it with the live colour unchanged.\n\n\
        Example (Portainer webhooks, the settings from CI/CD variables):\n  \
        BG_WEBHOOK_BLUE=… BG_WEBHOOK_GREEN=… BG_GATE_BLUE=http://blue:9090 BG_GATE_GREEN=http://green:9090 \\\n    \
        bg-ctl --gate http://blue:9090 --gate http://green:9090 --app chat deploy --version \"$CI_COMMIT_TAG\" --tag-param tag"
    )]
    Deploy(Box<DeployArgs>),
    /// Make the previous colour live again, if it still runs the previous version.
    #[command(
        after_help = "Example:\n  bg-ctl --app chat rollback --gate-blue http://blue:9090 --reason \"errors after v2\""
    )]
    Rollback {
        #[command(flatten)]
        gates: GateUrls,
        /// Why (recorded).
        #[arg(long, env = "BG_REASON")]
        reason: Option<String>,
    },
    /// The audit trail, newest first.
    #[command(after_help = "Example:\n  bg-ctl --app chat history --limit 50")]
    History {
        /// How many events.
        #[arg(long, env = "BG_LIMIT", default_value_t = 20)]
        limit: usize,
    },
    /// The deploy lease: who holds it; break it.
    #[command(
        subcommand,
        after_help = "Examples:\n  bg-ctl --app chat lease show\n  bg-ctl --app chat lease break --reason \"pipeline 4711 was killed\""
    )]
    Lease(LeaseCommand),
}

#[derive(Debug, Subcommand)]
pub(super) enum LeaseCommand {
    /// Who holds the deploy lease, and until when.
    #[command(after_help = "Example:\n  bg-ctl --app chat lease show")]
    Show,
    /// Break the lease whoever holds it (recorded in history).
    #[command(
        after_help = "Example:\n  bg-ctl --app chat lease break --reason \"pipeline 4711 was killed\""
    )]
    Break {
        /// Why (recorded).
        #[arg(long, env = "BG_REASON")]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
pub(super) struct DeployArgs {
    /// The version to release (image tag, commit).
    #[arg(long, env = "BG_VERSION")]
    pub(super) version: String,
    #[command(flatten)]
    pub(super) gates: GateUrls,
    /// The blue colour's deploy webhook (e.g. Portainer's service webhook).
    #[arg(long, env = "BG_WEBHOOK_BLUE", hide_env_values = true)]
    pub(super) webhook_blue: Option<String>,
    /// The green colour's deploy webhook.
    #[arg(long, env = "BG_WEBHOOK_GREEN", hide_env_values = true)]
    pub(super) webhook_green: Option<String>,
    /// Send the version as this query parameter of the webhook (`tag` for Portainer).
    #[arg(long, env = "BG_TAG_PARAM")]
    pub(super) tag_param: Option<String>,
    /// Deploy with this command instead of a webhook (it gets BG_COLOUR and BG_VERSION).
    /// Given on the command line, it sets BG_WEBHOOK_* in the environment aside.
    #[arg(long, env = "BG_EXEC")]
    pub(super) exec: Option<String>,
    /// Must succeed before the switch (gets BG_COLOUR, BG_VERSION, BG_GATE_URL).
    #[arg(long, env = "BG_SMOKE")]
    pub(super) smoke: Option<String>,
    /// Run through the --watch window after the switch; failure switches back.
    #[arg(long, env = "BG_VERIFY")]
    pub(super) verify: Option<String>,
    /// How long to keep running --verify after the switch.
    #[arg(long, env = "BG_WATCH", default_value = "0s", value_parser = parse_duration)]
    pub(super) watch: Duration,
    /// After the switch, wait until every load balancer probe source has seen it.
    #[arg(long, env = "BG_CONFIRM_LB", value_parser = BoolishValueParser::new())]
    pub(super) confirm_lb: bool,
    /// The load balancer's fall count: before restarting the idle colour,
    /// bg-ctl waits until every probe source has seen it answer STOP one
    /// time more than this (the load balancer takes it out at the fall-th);
    /// with --confirm-lb, until they have seen the old colour answer STOP
    /// this many times.
    #[arg(long, env = "BG_LB_FALL", default_value_t = 3)]
    pub(super) lb_fall: usize,
    /// The load balancer's rise count: with --confirm-lb, bg-ctl waits
    /// until every probe source has seen the new colour answer OK this many
    /// times in a row.
    #[arg(long, env = "BG_LB_RISE", default_value_t = 2)]
    pub(super) lb_rise: usize,
    /// A probe source counts as a load balancer once it probed at least 3 times within this, at a steady interval, and while it probed within this of the newest probe. Keep it at least 3 times your load balancer's check interval, or start the gates with bg-gate --lb-source, whose sources count from their first probe.
    #[arg(long, env = "BG_LB_WINDOW", default_value = "20s", value_parser = parse_duration)]
    pub(super) lb_window: Duration,
    /// Deploy and verify only; promote later with `bg-ctl switch`.
    #[arg(long, env = "BG_NO_SWITCH", value_parser = BoolishValueParser::new())]
    pub(super) no_switch: bool,
    /// Bound on each wait for the gates (out of rotation, the new version, the load balancer)
    /// and on each command bg-ctl runs (--exec, --smoke, each --verify): a deploy whose new
    /// version is not up within it exits 4, so keep it above your slowest deploy.
    #[arg(long, env = "BG_READY_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub(super) ready_timeout: Duration,
    /// Bound on the drain of lingering websockets.
    #[arg(long, env = "BG_DRAIN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(super) drain_timeout: Duration,
    /// How long asking every websocket of the idle colour to move takes, however many there are:
    /// each gate asks at the rate that finishes in this window (a small colour in a moment, at
    /// no less than 100 a second). Keep it well below --drain-timeout, which also covers the
    /// clients' reconnects.
    #[arg(long, env = "BG_DRAIN_WINDOW", default_value = "20s", value_parser = parse_duration)]
    pub(super) drain_window: Duration,
    /// At most this many websockets a second asked to move, per gate, for a live colour that
    /// cannot take the reconnects faster. When it makes --drain-window impossible, bg-ctl says
    /// so before the drain starts, and refuses if --drain-timeout cannot cover it.
    #[arg(long, env = "BG_DRAIN_MAX_RATE", value_name = "PER_SECOND")]
    pub(super) drain_max_rate: Option<u32>,
    /// What to do when websockets are still open at the end of the drain: abort the release
    /// (exit 4, the live colour unchanged, nothing cut) or proceed (the restart cuts them).
    #[arg(long, env = "BG_ON_DRAIN_TIMEOUT", value_enum, default_value_t = OnDrainTimeout::Abort)]
    pub(super) on_drain_timeout: OnDrainTimeout,
    /// The deploy lease's time to live; renewed every third of it.
    #[arg(long, env = "BG_LEASE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub(super) lease_ttl: Duration,
    /// Queue behind another pipeline's lease for up to this long instead of failing.
    #[arg(long, env = "BG_WAIT_LEASE", value_parser = parse_duration)]
    pub(super) wait_lease: Option<Duration>,
    /// How old a gate's view of the store may be to count as fresh.
    #[arg(long, env = "BG_MAX_STALE", default_value = "3s", value_parser = parse_duration)]
    pub(super) max_stale: Duration,
    /// How often to look at the gates while waiting.
    #[arg(long, env = "BG_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub(super) poll: Duration,
    /// Why (recorded with the switch).
    #[arg(long, env = "BG_REASON")]
    pub(super) reason: Option<String>,
}

fn parse_colour(s: &str) -> Result<Colour, String> {
    s.parse().map_err(|e: bg_state::Error| e.to_string())
}

fn parse_app(s: &str) -> Result<AppName, String> {
    AppName::new(s).map_err(|e| e.to_string())
}

/// The options that are acts of one invocation, not settings: they have no
/// environment variable, because a CI variable left set must never force a
/// switch, pick its colour or overwrite a state.
#[cfg(test)]
const ACTS: &[&str] = &[
    "force",
    "to",
    "expect-generation",
    "active",
    "from-gate",
    "json",
    "check",
];

impl Cli {
    /// Parses the command line, with every setting's environment variable,
    /// exiting with a usage error (exit 2) or the help as clap does.
    #[must_use]
    pub fn from_command_line() -> Self {
        Self::try_from_args(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// As [`from_command_line`](Self::from_command_line), from `args`.
    ///
    /// What the command line gives wins over the environment: `--store` on
    /// the command line sets BG_GATE aside and `--gate` sets BG_STORE aside;
    /// both on the command line is a usage error. With both only in the
    /// environment, BG_STORE wins.
    ///
    /// # Errors
    /// The usage error or the help, as a [`clap::Error`] to print or exit on.
    pub fn try_from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};

        let mut cmd = Self::command();
        let matches = cmd.try_get_matches_from_mut(args)?;
        let mut cli = Self::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))?;
        // Global options are recorded where they were given: on the
        // top-level command or on any subcommand below it.
        let from_command_line = |id: &str| {
            let mut m = Some(&matches);
            while let Some(level) = m {
                if level.value_source(id) == Some(ValueSource::CommandLine) {
                    return true;
                }
                m = level.subcommand().map(|(_, sub)| sub);
            }
            false
        };
        // A CI variable set to nothing is no setting.
        cli.global.store = cli.global.store.take().filter(|s| !s.trim().is_empty());
        cli.global.gate.retain(|g| !g.trim().is_empty());
        if cli.global.store.is_some() && !cli.global.gate.is_empty() {
            match (from_command_line("store"), from_command_line("gate")) {
                (true, true) => {
                    return Err(cmd.error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--store and --gate both name the store: give one",
                    ));
                }
                (false, true) => cli.global.store = None,
                (true, false) | (false, false) => cli.global.gate.clear(),
            }
        }
        // The trigger likewise: --exec or the webhooks, the command line's
        // over the environment's.
        if let Command::Deploy(d) = &mut cli.command
            && d.exec.is_some()
            && (d.webhook_blue.is_some() || d.webhook_green.is_some())
        {
            let given = |id: &str| {
                matches
                    .subcommand_matches("deploy")
                    .and_then(|m| m.value_source(id))
                    == Some(ValueSource::CommandLine)
            };
            let exec = given("exec");
            let hooks = given("webhook_blue") || given("webhook_green");
            match (exec, hooks) {
                (true, false) => {
                    d.webhook_blue = None;
                    d.webhook_green = None;
                }
                (false, true) => d.exec = None,
                (true, true) | (false, false) => {
                    return Err(cmd.error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--exec and --webhook-blue/--webhook-green (BG_EXEC, BG_WEBHOOK_*) both \
                         name the deploy trigger: give one",
                    ));
                }
            }
        }
        Ok(cli)
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every setting of every command has its environment variable, `BG_`
    /// and the long name; the acts have none.
    #[test]
    fn every_setting_has_an_environment_variable_and_no_act_has_one() {
        fn walk(cmd: &clap::Command, path: &str, wrong: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if matches!(
                    arg.get_action(),
                    clap::ArgAction::Help
                        | clap::ArgAction::HelpShort
                        | clap::ArgAction::HelpLong
                        | clap::ArgAction::Version
                ) {
                    continue;
                }
                let Some(long) = arg.get_long() else {
                    wrong.push(format!("{path}: {} has no long name", arg.get_id()));
                    continue;
                };
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                if ACTS.contains(&long) {
                    if let Some(env) = env {
                        wrong.push(format!("{path} --{long} is an act but reads {env}"));
                    }
                } else {
                    let want = format!("BG_{}", long.to_uppercase().replace('-', "_"));
                    if env.as_deref() != Some(want.as_str()) {
                        wrong.push(format!("{path} --{long} reads {env:?}, not {want}"));
                    }
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), wrong);
            }
        }
        let mut wrong = Vec::new();
        walk(&Cli::command(), "bg-ctl", &mut wrong);
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}
