//! The command line: options, environment variables, help, and dispatch.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bg_state::{AppName, Colour, ColourStore, OpenOptions, parse_duration};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::commands;
use crate::deploy::{DeployOptions, Deployer, OnDrainTimeout};
use crate::error::{CtlError, CtlResult, exit};
use crate::gates::HttpGates;
use crate::report::Reporter;
use crate::trigger::{ExecTrigger, ShellChecks, Trigger, Webhooks};

const EXIT_CODES: &str = "Exit codes:\n  \
    0  success\n  \
    1  any other failure (not initialised, rollback refused, smoke or verify check failed)\n  \
    2  usage error or invalid input\n  \
    3  conflict: the generation moved, the lease is held by another, or a switch was refused\n     \
       because a lease is held or a gate is ahead of the store\n  \
    4  timed out waiting: new version, drain, load balancer confirmation, --wait-lease\n  \
    5  store or gate unreachable";

/// bluegreen's command line: see and change which colour is live, and run
/// a whole blue/green release from CI.
#[derive(Debug, Parser)]
#[command(
    name = "bg-ctl",
    version,
    after_help = format!("{EXIT_CODES}\n\nExample (GitLab CI, every option from the environment):\n  \
        BG_GATE=https://gate.internal:9090 BG_APP=chat bg-ctl deploy --version \"$CI_COMMIT_TAG\"")
)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Global {
    /// Where the state lives: file:///path, redis://host:port/db, rediss://…
    #[arg(
        long,
        env = "BG_STORE",
        global = true,
        hide_env_values = true,
        conflicts_with = "gate"
    )]
    store: Option<String>,

    /// Use a gate's store API as the store (when CI reaches the services but not Redis).
    #[arg(long, env = "BG_GATE", global = true)]
    gate: Option<String>,

    /// Token for the gate's writes and drains (a named token or a GitLab id_token).
    #[arg(long, env = "BG_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,

    /// The app.
    #[arg(long, env = "BG_APP", global = true, default_value = "default", value_parser = parse_app)]
    app: AppName,

    /// Who is acting, recorded in history (default: the GitLab user and job, or user@host).
    #[arg(long, env = "BG_ACTOR", global = true)]
    actor: Option<String>,

    /// Print one machine-readable JSON result on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// Bound on each request to the store or a gate.
    #[arg(long, env = "BG_TIMEOUT", global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Args, Clone, Default)]
struct GateUrls {
    /// A gate of the blue colour (its admin address); repeat for replicas.
    #[arg(long = "gate-blue", env = "BG_GATE_BLUE", value_delimiter = ',')]
    blue: Vec<String>,
    /// A gate of the green colour (its admin address); repeat for replicas.
    #[arg(long = "gate-green", env = "BG_GATE_GREEN", value_delimiter = ',')]
    green: Vec<String>,
}

impl GateUrls {
    fn by_colour(&self) -> BTreeMap<Colour, Vec<String>> {
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
enum Command {
    /// Show the live colour, generation, versions, lease, last change, and what gates answer.
    #[command(
        after_help = "Example:\n  bg-ctl --store redis://redis:6379/0 --app chat status --gate-blue http://blue:9090 --gate-green http://green:9090"
    )]
    Status {
        #[command(flatten)]
        gates: GateUrls,
    },
    /// Create the state (generation 1), or restore it from the gates after the store lost it.
    #[command(after_help = "Examples:\n  bg-ctl --app chat init --active blue\n  \
        bg-ctl --app chat init --from-gate http://blue:9090 --from-gate http://green:9090   # after Redis restarted empty")]
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
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Make a colour live, atomically (compare-and-swap on the generation).
    #[command(
        after_help = "Example:\n  bg-ctl --app chat switch --to green --expect-generation 7 --reason \"release v2\""
    )]
    Switch {
        /// The colour to make live (default: the idle one).
        #[arg(long, value_parser = parse_colour)]
        to: Option<Colour>,
        /// Only if the generation is still this (default: the one just read).
        #[arg(long)]
        expect_generation: Option<u64>,
        /// Why (recorded).
        #[arg(long)]
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
        Example (Portainer webhooks, every option from CI variables):\n  \
        BG_WEBHOOK_BLUE=… BG_WEBHOOK_GREEN=… BG_GATE_BLUE=http://blue:9090 BG_GATE_GREEN=http://green:9090 \\\n    \
        bg-ctl --gate https://gate.internal:9090 --app chat deploy --version \"$CI_COMMIT_TAG\" --tag-param tag"
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
        #[arg(long)]
        reason: Option<String>,
    },
    /// The audit trail, newest first.
    #[command(after_help = "Example:\n  bg-ctl --app chat history --limit 50")]
    History {
        /// How many events.
        #[arg(long, default_value_t = 20)]
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
enum LeaseCommand {
    /// Who holds the deploy lease, and until when.
    #[command(after_help = "Example:\n  bg-ctl --app chat lease show")]
    Show,
    /// Break the lease whoever holds it (recorded in history).
    #[command(
        after_help = "Example:\n  bg-ctl --app chat lease break --reason \"pipeline 4711 was killed\""
    )]
    Break {
        /// Why (recorded).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// The version to release (image tag, commit).
    #[arg(long)]
    version: String,
    #[command(flatten)]
    gates: GateUrls,
    /// The blue colour's deploy webhook (e.g. Portainer's service webhook).
    #[arg(long, env = "BG_WEBHOOK_BLUE", hide_env_values = true)]
    webhook_blue: Option<String>,
    /// The green colour's deploy webhook.
    #[arg(long, env = "BG_WEBHOOK_GREEN", hide_env_values = true)]
    webhook_green: Option<String>,
    /// Send the version as this query parameter of the webhook (`tag` for Portainer).
    #[arg(long, env = "BG_TAG_PARAM")]
    tag_param: Option<String>,
    /// Deploy with this command instead of a webhook (it gets BG_COLOUR and BG_VERSION).
    #[arg(long, env = "BG_EXEC", conflicts_with_all = ["webhook_blue", "webhook_green"])]
    exec: Option<String>,
    /// Must succeed before the switch (gets BG_COLOUR, BG_VERSION, BG_GATE_URL).
    #[arg(long, env = "BG_SMOKE")]
    smoke: Option<String>,
    /// Run through the --watch window after the switch; failure switches back.
    #[arg(long, env = "BG_VERIFY")]
    verify: Option<String>,
    /// How long to keep running --verify after the switch.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    watch: Duration,
    /// After the switch, wait until every load balancer probe source has seen it.
    #[arg(long)]
    confirm_lb: bool,
    /// The load balancer's fall count: before restarting the idle colour,
    /// bg-ctl waits until every probe source has seen it answer STOP one
    /// time more than this.
    #[arg(long, default_value_t = 3)]
    lb_fall: usize,
    /// Probes in a row answered OK that show a colour is in rotation.
    #[arg(long, default_value_t = 2)]
    lb_rise: usize,
    /// A probe source counts as a load balancer while it probed within this of the newest probe.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    lb_window: Duration,
    /// Deploy and verify only; promote later with `bg-ctl switch`.
    #[arg(long)]
    no_switch: bool,
    /// Bound on each wait for the gates.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    ready_timeout: Duration,
    /// Bound on the drain of lingering websockets.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// What to do when the drain runs out of time.
    #[arg(long, value_enum, default_value_t = OnDrainTimeout::Proceed)]
    on_drain_timeout: OnDrainTimeout,
    /// The deploy lease's time to live; renewed every third of it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease_ttl: Duration,
    /// Queue behind another pipeline's lease for up to this long instead of failing.
    #[arg(long, value_parser = parse_duration)]
    wait_lease: Option<Duration>,
    /// How old a gate's view of the store may be to count as fresh.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    max_stale: Duration,
    /// How often to look at the gates while waiting.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    poll: Duration,
    /// Why (recorded with the switch).
    #[arg(long)]
    reason: Option<String>,
}

fn parse_colour(s: &str) -> Result<Colour, String> {
    s.parse().map_err(|e: bg_state::Error| e.to_string())
}

fn parse_app(s: &str) -> Result<AppName, String> {
    AppName::new(s).map_err(|e| e.to_string())
}

/// The actor when none is given: the GitLab user and job, or user@host.
fn default_actor() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let actor = match (var("GITLAB_USER_LOGIN"), var("CI_JOB_ID")) {
        (Some(user), Some(job)) => format!("gitlab:{user} job {job}"),
        (None, Some(job)) => format!("ci job {job}"),
        _ => format!(
            "{}@{}",
            var("USER").unwrap_or_else(|| "someone".into()),
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_else(|_| "host".into())
        ),
    };
    actor.chars().take(bg_state::MAX_NAME_LEN).collect()
}

impl Cli {
    /// Runs the command; returns the exit code.
    pub async fn run(self) -> u8 {
        let json = self.global.json;
        let report = Reporter::new();
        let result = self.dispatch(&report).await;
        report.finish();
        match result {
            Ok(value) => {
                if json {
                    print_json(&json!({ "ok": true, "result": value, "steps": report.steps() }));
                }
                exit::OK
            }
            Err(e) => {
                let code = e.exit_code();
                if json {
                    print_json(&json!({
                        "ok": false,
                        "error": { "kind": e.kind(), "message": e.to_string(), "exit_code": code },
                        "steps": report.steps(),
                    }));
                }
                eprintln!("bg-ctl: {e}");
                code
            }
        }
    }

    fn open_store(&self) -> CtlResult<Arc<dyn ColourStore>> {
        let g = &self.global;
        let url = match (&g.store, &g.gate) {
            (Some(s), _) => s.clone(),
            (None, Some(gate)) => gate.clone(),
            (None, None) => {
                return Err(CtlError::Usage(
                    "say where the state is: --store URL (BG_STORE) or --gate URL (BG_GATE)".into(),
                ));
            }
        };
        let mut opts = OpenOptions::default();
        opts.remote_token.clone_from(&g.token);
        opts.remote_timeout = g.timeout;
        opts.redis.response_timeout = g.timeout;
        opts.redis.connect_timeout = g.timeout;
        let store = bg_state::open_with(&url, &opts).map_err(|e| match e {
            bg_state::Error::InvalidInput(i) => CtlError::Usage(i.to_string()),
            other => other.into(),
        })?;
        if store.backend() == "memory" {
            return Err(CtlError::Usage(
                "memory:// lives in one process only; bg-ctl needs a shared store (file://, redis://) or a gate (--gate)"
                    .into(),
            ));
        }
        Ok(store)
    }

    async fn dispatch(self, report: &Reporter) -> CtlResult<serde_json::Value> {
        let store = self.open_store()?;
        let g = &self.global;
        let app = &g.app;
        let actor = g.actor.clone().unwrap_or_else(default_actor);
        let gates = HttpGates::new(g.token.clone(), g.timeout)?;
        let json = g.json;
        let say = |text: String| {
            if !json {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
        };
        let value = match self.command {
            Command::Status { gates: urls } => {
                let s = commands::status(store.as_ref(), &gates, app, &urls.by_colour()).await?;
                say(s.to_string());
                serde_json::to_value(&s).unwrap_or_default()
            }
            Command::Init {
                active,
                from_gate,
                force,
                reason,
            } => {
                let s = match active {
                    Some(c) => {
                        commands::init(store.as_ref(), app, c, &actor, force, reason).await?
                    }
                    None => {
                        commands::init_from_gates(
                            store.as_ref(),
                            &gates,
                            app,
                            &from_gate,
                            &actor,
                            force,
                        )
                        .await?
                    }
                };
                say(format!(
                    "{}: {} is live at generation {}\n",
                    s.app, s.active, s.generation
                ));
                serde_json::to_value(&s).unwrap_or_default()
            }
            Command::Switch {
                to,
                expect_generation,
                reason,
                force,
            } => {
                let out = commands::switch(
                    store.as_ref(),
                    app,
                    to,
                    expect_generation,
                    &actor,
                    reason,
                    force,
                )
                .await?;
                say(if out.changed {
                    format!(
                        "switched: {} is live at generation {}\n",
                        out.state.active, out.state.generation
                    )
                } else {
                    format!(
                        "{} was already live (generation {}); nothing changed\n",
                        out.state.active, out.state.generation
                    )
                });
                serde_json::to_value(&out).unwrap_or_default()
            }
            Command::Rollback {
                gates: urls,
                reason,
            } => {
                let out = commands::rollback(
                    store.as_ref(),
                    &gates,
                    app,
                    &urls.by_colour(),
                    &actor,
                    reason,
                )
                .await?;
                say(format!(
                    "rolled back: {} is live at generation {}\n",
                    out.state.active, out.state.generation
                ));
                serde_json::to_value(&out).unwrap_or_default()
            }
            Command::History { limit } => {
                let events = store.history(app, limit).await?;
                if events.is_empty() {
                    say(format!("app {app}: no history\n"));
                }
                for e in &events {
                    say(format!("{}\n", commands::describe(e)));
                }
                serde_json::to_value(&events).unwrap_or_default()
            }
            Command::Lease(LeaseCommand::Show) => {
                let lease = store.lease(app).await?;
                say(match &lease {
                    Some(l) => format!(
                        "held by {} (fence {}) since {} until {}\n",
                        l.holder,
                        l.fence,
                        bg_state::format_millis(l.acquired_at_ms),
                        bg_state::format_millis(l.expires_at_ms)
                    ),
                    None => "free\n".to_owned(),
                });
                serde_json::to_value(&lease).unwrap_or_default()
            }
            Command::Lease(LeaseCommand::Break { reason }) => {
                let broken = commands::break_lease(store.as_ref(), app, &actor, reason).await?;
                say(match &broken {
                    Some(l) => format!("broke the lease of {} (fence {})\n", l.holder, l.fence),
                    None => "no lease was held\n".to_owned(),
                });
                serde_json::to_value(&broken).unwrap_or_default()
            }
            Command::Deploy(args) => {
                let trigger: Box<dyn Trigger> = match &args.exec {
                    Some(cmd) => Box::new(ExecTrigger {
                        cmd: cmd.clone(),
                        timeout: args.ready_timeout,
                    }),
                    None => {
                        let mut urls = BTreeMap::new();
                        if let Some(u) = &args.webhook_blue {
                            urls.insert(Colour::Blue, u.clone());
                        }
                        if let Some(u) = &args.webhook_green {
                            urls.insert(Colour::Green, u.clone());
                        }
                        // Releases alternate colours: both hooks are needed
                        // sooner or later, so a missing one fails now, before
                        // anything is touched.
                        if urls.len() < 2 {
                            return Err(CtlError::Usage(
                                "deploy needs a trigger: --webhook-blue and --webhook-green (BG_WEBHOOK_BLUE, BG_WEBHOOK_GREEN), or --exec CMD".into(),
                            ));
                        }
                        Box::new(Webhooks::new(urls, args.tag_param.clone(), g.timeout)?)
                    }
                };
                let mut opts = DeployOptions::new(app.clone(), args.version.clone(), actor.clone());
                opts.holder = holder(&actor);
                opts.gates = args.gates.by_colour();
                opts.lease_ttl = args.lease_ttl;
                opts.wait_lease = args.wait_lease;
                opts.ready_timeout = args.ready_timeout;
                opts.drain_timeout = args.drain_timeout;
                opts.on_drain_timeout = args.on_drain_timeout;
                opts.lb_fall = args.lb_fall;
                opts.lb_rise = args.lb_rise;
                opts.lb_window = args.lb_window;
                opts.confirm_lb = args.confirm_lb;
                opts.max_stale = args.max_stale;
                opts.smoke.clone_from(&args.smoke);
                opts.verify.clone_from(&args.verify);
                opts.watch = args.watch;
                opts.no_switch = args.no_switch;
                opts.poll = args.poll;
                opts.reason.clone_from(&args.reason);
                let deployer = Deployer {
                    store: store.as_ref(),
                    gates: &gates,
                    trigger: trigger.as_ref(),
                    checks: &ShellChecks,
                    report,
                    opts: &opts,
                };
                let out = deployer.run().await?;
                say(if out.switched {
                    format!(
                        "released {} on {}: live at generation {}\n",
                        out.version, out.colour, out.generation
                    )
                } else {
                    format!(
                        "deployed {} on {} (not switched)\n",
                        out.version, out.colour
                    )
                });
                serde_json::to_value(&out).unwrap_or_default()
            }
        };
        Ok(value)
    }
}

/// A lease holder unique to this run: two pipelines sharing an actor and a
/// (container) pid must still not share a lease.
fn holder(actor: &str) -> String {
    let base: String = actor.chars().take(120).collect();
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() ^ (d.as_secs() as u32));
    let job = std::env::var("CI_JOB_ID")
        .map(|j| format!(" job {j}"))
        .unwrap_or_default();
    format!("{base}{job} pid {} #{nonce:08x}", std::process::id())
}

fn print_json(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    // A closed pipe (`bg-ctl … | head`) is not an error worth a panic.
    let _ = serde_json::to_writer_pretty(&mut out, v);
    let _ = writeln!(out);
}
