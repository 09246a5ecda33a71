//! The command line: dispatch to the commands, and their results on stdout.
//! The options themselves, their environment variables and help are in
//! `args.rs`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bg_state::{AppName, Colour, ColourStore, LegacyMirror, OpenOptions, RemoteStore};
use serde_json::json;

use crate::commands;
use crate::deploy::{DeployOptions, Deployer};
use crate::error::{CtlError, CtlResult, exit};
use crate::gates::HttpGates;
use crate::output;
use crate::report::Reporter;
use crate::trigger::{ExecTrigger, ShellChecks, Trigger, Webhooks};

mod args;

pub use args::Cli;
use args::{Command, DeployArgs, GateUrls, LeaseCommand};

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

/// What a command that succeeded shows: text for people, a value for `--json`.
struct Done {
    text: String,
    value: serde_json::Value,
}

impl Done {
    fn new(text: impl Into<String>, value: &impl serde::Serialize) -> Self {
        Done {
            text: text.into(),
            value: serde_json::to_value(value).unwrap_or_default(),
        }
    }
}

impl Cli {
    /// Runs the command; returns the exit code.
    pub async fn run(self) -> u8 {
        let json = self.global.json;
        let report = Reporter::new();
        // A cancelled job must not leave a deploy command running: on a
        // signal the command's future is dropped, which stops what it runs.
        let result = tokio::select! {
            result = self.dispatch(&report) => result,
            signal = stop_signal() => Err(CtlError::Stopped(signal)),
        };
        report.finish();
        let mut stdout = std::io::stdout().lock();
        match result {
            Ok(done) => {
                let written = if json {
                    let doc = json!({ "ok": true, "result": done.value, "steps": report.steps() });
                    output::json(&mut stdout, &doc)
                } else {
                    output::human(&mut stdout, &done.text)
                };
                match written {
                    Ok(()) => exit::OK,
                    Err(e) => {
                        output::to_stderr(&format!("bg-ctl: cannot write the result: {e}"));
                        exit::FAILED
                    }
                }
            }
            Err(e) => {
                let code = e.exit_code();
                if json {
                    // The failure is the news; a failed write would only hide it.
                    let _ = output::json(
                        &mut stdout,
                        &json!({
                            "ok": false,
                            "error": { "kind": e.kind(), "message": e.to_string(), "exit_code": code },
                            "steps": report.steps(),
                        }),
                    );
                }
                output::to_stderr(&format!("bg-ctl: {e}"));
                code
            }
        }
    }

    fn open_store(&self) -> CtlResult<Arc<dyn ColourStore>> {
        let g = &self.global;
        let url = match (&g.store, g.gate.as_slice()) {
            (Some(s), _) => s.clone(),
            (None, []) => {
                return Err(CtlError::Usage(
                    "say where the state is: --store URL (BG_STORE) or --gate URL (BG_GATE)".into(),
                ));
            }
            (None, gates) => {
                if matches!(
                    self.command,
                    Command::Init {
                        legacy_mirror: Some(_),
                        ..
                    }
                ) {
                    return Err(CtlError::Usage(
                        "--legacy-mirror keeps keys in Redis: it needs --store redis://… (BG_STORE), not --gate".into(),
                    ));
                }
                let store = RemoteStore::with_gates(gates, g.token.clone(), g.timeout).map_err(
                    |e| match e {
                        bg_state::Error::InvalidInput(i) => CtlError::Usage(i.to_string()),
                        other => other.into(),
                    },
                )?;
                return Ok(Arc::new(store));
            }
        };
        let mut opts = OpenOptions::default();
        let mirror = match &self.command {
            Command::Init {
                legacy_mirror: Some(ids),
                ..
            } => Some(legacy_mirror(&g.app, ids)?),
            _ => None,
        };
        opts.redis.mirror.clone_from(&mirror);
        opts.remote_token.clone_from(&g.token);
        opts.remote_timeout = g.timeout;
        opts.redis.response_timeout = g.timeout;
        opts.redis.connect_timeout = g.timeout;
        opts.redis.ca_file.clone_from(&g.redis_ca);
        let store = bg_state::open_with(&url, &opts).map_err(|e| match e {
            bg_state::Error::InvalidInput(i) => CtlError::Usage(i.to_string()),
            other => other.into(),
        })?;
        if mirror.is_some() && store.backend() != "redis" {
            return Err(CtlError::Usage(
                "--legacy-mirror keeps keys in Redis: it needs --store redis://… (BG_STORE)".into(),
            ));
        }
        if store.backend() == "memory" {
            return Err(CtlError::Usage(
                "memory:// lives in one process only; bg-ctl needs a shared store (file://, redis://) or a gate (--gate)"
                    .into(),
            ));
        }
        Ok(store)
    }

    async fn dispatch(self, report: &Reporter) -> CtlResult<Done> {
        let store = self.open_store()?;
        let g = &self.global;
        let app = &g.app;
        let actor = g.actor.clone().unwrap_or_else(default_actor);
        if g.actor.is_some() && store.backend() == "remote" {
            output::to_stderr(
                "bg-ctl: note: --actor (BG_ACTOR) is not sent through a gate: the gate records the name of the token it accepted",
            );
        }
        let gates = HttpGates::new(g.token.clone(), g.timeout)?;
        let done = match self.command {
            Command::Status { gates: urls } => {
                let s = commands::status(store.as_ref(), &gates, app, &urls.by_colour()).await?;
                Done::new(s.to_string(), &s)
            }
            Command::Init {
                active,
                from_gate,
                force,
                reason,
                legacy_mirror: _,
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
                let text = format!(
                    "{}: {} is live at generation {}\n",
                    s.app, s.active, s.generation
                );
                Done::new(text, &s)
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
                let text = if out.changed {
                    format!(
                        "switched: {} is live at generation {}\n",
                        out.state.active, out.state.generation
                    )
                } else {
                    format!(
                        "{} was already live (generation {}); nothing changed\n",
                        out.state.active, out.state.generation
                    )
                };
                Done::new(text, &out)
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
                let text = if out.changed {
                    format!(
                        "rolled back: {} is live at generation {}\n",
                        out.state.active, out.state.generation
                    )
                } else {
                    format!(
                        "already rolled back: {} was rolled back; {} stays live at generation {}\n",
                        out.state
                            .live_version(out.state.idle())
                            .map_or("the previous release", |l| l.version.as_str()),
                        out.state.active,
                        out.state.generation
                    )
                };
                Done::new(text, &out)
            }
            Command::History { limit } => {
                let events = store.history(app, limit).await?;
                let mut text = String::new();
                if events.is_empty() {
                    let _ = writeln!(text, "app {app}: no history");
                }
                for e in &events {
                    let _ = writeln!(text, "{}", commands::describe(e));
                }
                Done::new(text, &events)
            }
            Command::Lease(LeaseCommand::Show) => {
                let lease = store.lease(app).await?;
                let text = match &lease {
                    Some(l) => format!(
                        "held by {} (fence {}) since {} until {}\n",
                        l.holder,
                        l.fence,
                        bg_state::format_millis(l.acquired_at_ms),
                        bg_state::format_millis(l.expires_at_ms)
                    ),
                    None => "free\n".to_owned(),
                };
                Done::new(text, &lease)
            }
            Command::Lease(LeaseCommand::Break { reason }) => {
                let broken = commands::break_lease(store.as_ref(), app, &actor, reason).await?;
                let text = match &broken {
                    Some(l) => format!("broke the lease of {} (fence {})\n", l.holder, l.fence),
                    None => "no lease was held\n".to_owned(),
                };
                Done::new(text, &broken)
            }
            Command::Deploy(args) => {
                let trigger = args.trigger(g.timeout)?;
                refuse_store_gates_of_the_target(store.as_ref(), app, &g.gate, &args.gates).await?;
                let opts = args.options(app, &actor);
                let deployer = Deployer {
                    store: store.as_ref(),
                    gates: &gates,
                    trigger: trigger.as_ref(),
                    checks: &ShellChecks,
                    report,
                    opts: &opts,
                };
                let out = deployer.run().await?;
                let text = if out.already_live {
                    format!(
                        "{} is already live on {} at generation {}: nothing released\n",
                        out.version, out.colour, out.generation
                    )
                } else if out.switched {
                    format!(
                        "released {} on {}: live at generation {}\n",
                        out.version, out.colour, out.generation
                    )
                } else {
                    format!(
                        "deployed {} on {} (not switched)\n",
                        out.version, out.colour
                    )
                };
                Done::new(text, &out)
            }
        };
        Ok(done)
    }
}

impl DeployArgs {
    /// What starts the deploy: `--exec`, or both colours' webhooks.
    fn trigger(&self, timeout: Duration) -> CtlResult<Box<dyn Trigger>> {
        if let Some(cmd) = &self.exec {
            return Ok(Box::new(ExecTrigger {
                cmd: cmd.clone(),
                timeout: self.ready_timeout,
            }));
        }
        let mut urls = BTreeMap::new();
        if let Some(u) = &self.webhook_blue {
            urls.insert(Colour::Blue, u.clone());
        }
        if let Some(u) = &self.webhook_green {
            urls.insert(Colour::Green, u.clone());
        }
        // Releases alternate colours: both hooks are needed sooner or
        // later, so a missing one fails now, before anything is touched.
        if urls.len() < 2 {
            return Err(CtlError::Usage(
                "deploy needs a trigger: --webhook-blue and --webhook-green (BG_WEBHOOK_BLUE, BG_WEBHOOK_GREEN), or --exec CMD".into(),
            ));
        }
        Ok(Box::new(Webhooks::new(
            urls,
            self.tag_param.clone(),
            timeout,
        )?))
    }

    /// The release's options, for `actor` with a lease holder of its own.
    fn options(&self, app: &AppName, actor: &str) -> DeployOptions {
        let mut opts = DeployOptions::new(app.clone(), self.version.clone(), actor);
        opts.holder = holder(actor);
        opts.gates = self.gates.by_colour();
        opts.lease_ttl = self.lease_ttl;
        opts.wait_lease = self.wait_lease;
        opts.ready_timeout = self.ready_timeout;
        opts.drain_timeout = self.drain_timeout;
        opts.on_drain_timeout = self.on_drain_timeout;
        opts.drain_pace = bg_state::wire::DrainPace {
            window: self.drain_window,
            max_rate: self.drain_max_rate,
        };
        opts.lb_fall = self.lb_fall;
        opts.lb_rise = self.lb_rise;
        opts.lb_window = self.lb_window;
        opts.confirm_lb = self.confirm_lb;
        opts.max_stale = self.max_stale;
        opts.smoke.clone_from(&self.smoke);
        opts.verify.clone_from(&self.verify);
        opts.watch = self.watch;
        opts.no_switch = self.no_switch;
        opts.poll = self.poll;
        opts.reason.clone_from(&self.reason);
        opts
    }
}

/// `BLUE_ID,GREEN_ID` as the mirror of `app`.
fn legacy_mirror(app: &AppName, ids: &str) -> CtlResult<LegacyMirror> {
    let Some((blue, green)) = ids.split_once(',') else {
        return Err(CtlError::Usage(
            "--legacy-mirror takes the hand-made ids of blue and green as BLUE_ID,GREEN_ID (e.g. alfa,beta)".into(),
        ));
    };
    LegacyMirror::new(app.clone(), blue.trim(), green.trim())
        .map_err(|e| CtlError::Usage(e.to_string()))
}

/// A release through gates (`--gate`) that are all gates of the colour it
/// is about to restart would lose its store halfway, at the webhook: it is
/// refused before it starts.
async fn refuse_store_gates_of_the_target(
    store: &dyn ColourStore,
    app: &AppName,
    store_gates: &[String],
    gates: &GateUrls,
) -> CtlResult<()> {
    if store.backend() != "remote" || store_gates.is_empty() {
        return Ok(());
    }
    let key = |u: &str| {
        url::Url::parse(u.trim()).map_or_else(
            |_| u.trim().to_owned(),
            |u| u.as_str().trim_end_matches('/').to_owned(),
        )
    };
    let by_colour = gates.by_colour();
    let Some((&colour, _)) = by_colour.iter().find(|(_, urls)| {
        store_gates
            .iter()
            .all(|s| urls.iter().any(|u| key(u) == key(s)))
    }) else {
        return Ok(());
    };
    let Some(state) = store.get(app).await? else {
        return Ok(());
    };
    if state.idle() != colour {
        return Ok(());
    }
    Err(CtlError::Usage(format!(
        "every store gate (--gate, BG_GATE) is a gate of {colour}, the colour this release restarts: \
         its webhook would take bg-ctl's store away halfway; list a gate of each colour \
         (BG_GATE=BLUE_GATE,GREEN_GATE)"
    )))
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

/// The first SIGINT or SIGTERM, by number; never, if they cannot be
/// listened for.
async fn stop_signal() -> i32 {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => tokio::select! {
                _ = int.recv() => 2,
                _ = term.recv() => 15,
            },
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        match tokio::signal::ctrl_c().await {
            Ok(()) => 2,
            Err(_) => std::future::pending().await,
        }
    }
}
