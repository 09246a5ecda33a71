//! The command line: what every command needs (the store, the gates, who
//! is acting), dispatch to the command, and its result on stdout — in the
//! `--json` document (`ok`, `result`, `steps`) or as text. How a result
//! reads is the command's own ([`crate::output::Render`]). The options
//! themselves, their environment variables and help are in `args.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bg_state::{AppName, Colour, ColourStore, LegacyMirror, OpenOptions, RemoteStore};
use serde_json::json;

use crate::commands;
use crate::deploy::{DeployOptions, Deployer};
use crate::error::{CtlError, CtlResult, exit};
use crate::gates::HttpGates;
use crate::output::{self, Render};
use crate::report::Reporter;
use crate::trigger::{ExecTrigger, ShellChecks, Trigger, Webhooks};

mod args;

pub use args::Cli;
use args::{Command, DeployArgs, LeaseCommand};

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

/// Where the state is, before anything is opened.
enum StorePlan {
    /// A gate's store API, through any of these gates.
    Gates(Vec<String>),
    /// A store URL and its options.
    Url(String, Box<OpenOptions>),
}

/// A store that cannot be opened is the command line's fault.
fn usage(e: bg_state::Error) -> CtlError {
    match e {
        bg_state::Error::InvalidInput(i) => CtlError::Usage(i.to_string()),
        other => other.into(),
    }
}

/// Refuses the stores bg-ctl cannot use: one in this process only, or one
/// without Redis for the legacy mirror.
fn usable(backend: &str, mirror: bool) -> CtlResult<()> {
    if mirror && backend != "redis" {
        return Err(CtlError::Usage(
            "--legacy-mirror keeps keys in Redis: it needs --store redis://… (BG_STORE)".into(),
        ));
    }
    if backend == "memory" {
        return Err(CtlError::Usage(
            "memory:// lives in one process only; bg-ctl needs a shared store (file://, redis://) or a gate (--gate)"
                .into(),
        ));
    }
    Ok(())
}

impl Cli {
    /// Runs the command; returns the exit code.
    pub async fn run(self) -> u8 {
        if self.global.check {
            return match self.check() {
                Ok(summary) => {
                    use std::io::Write as _;
                    // A reader that closed the pipe has what it wanted.
                    let _ = writeln!(std::io::stdout().lock(), "{summary}");
                    exit::OK
                }
                Err(e) => {
                    output::to_stderr(&format!("bg-ctl: {e}"));
                    e.exit_code()
                }
            };
        }
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
                    let doc = json!({ "ok": true, "result": done.json(), "steps": report.steps() });
                    output::json(&mut stdout, &doc)
                } else {
                    output::human(&mut stdout, done.as_ref())
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

    /// Where the state is: the gates (`--gate`), or a store URL with the
    /// options it is opened with.
    fn store_plan(&self) -> CtlResult<StorePlan> {
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
                return Ok(StorePlan::Gates(gates.to_vec()));
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
        Ok(StorePlan::Url(url, Box::new(opts)))
    }

    fn open_store(&self) -> CtlResult<Arc<dyn ColourStore>> {
        let g = &self.global;
        match self.store_plan()? {
            StorePlan::Gates(gates) => {
                let store =
                    RemoteStore::with_gates(&gates, g.token.clone(), g.timeout).map_err(usage)?;
                Ok(Arc::new(store))
            }
            StorePlan::Url(url, opts) => {
                let store = bg_state::open_with(&url, &opts).map_err(usage)?;
                usable(store.backend(), opts.redis.mirror.is_some())?;
                Ok(store)
            }
        }
    }

    /// `--check`: the command line and its environment checked as the
    /// command would check them before it reads or changes anything (the
    /// options, the store's URL, a deploy's trigger and settings); nothing
    /// is opened, sent or run.
    fn check(&self) -> CtlResult<String> {
        let g = &self.global;
        let store = match self.store_plan()? {
            StorePlan::Gates(gates) => {
                for gate in &gates {
                    RemoteStore::check_url(gate).map_err(usage)?;
                }
                format!("the store API of {}", gates.join(", "))
            }
            StorePlan::Url(url, opts) => {
                let backend = bg_state::check_url(&url, &opts).map_err(usage)?;
                usable(backend, opts.redis.mirror.is_some())?;
                format!("{} ({backend})", bg_state::redact_url(&url))
            }
        };
        let command = match &self.command {
            Command::Status { .. } => "status",
            Command::Init { .. } => "init",
            Command::Switch { .. } => "switch",
            Command::Rollback { .. } => "rollback",
            Command::History { .. } => "history",
            Command::Lease(LeaseCommand::Show) => "lease show",
            Command::Lease(LeaseCommand::Break { .. }) => "lease break",
            Command::Deploy(args) => {
                args.trigger(g.timeout)?;
                let actor = g.actor.clone().unwrap_or_else(default_actor);
                args.options(&g.app, &actor, &g.gate).check()?;
                "deploy"
            }
        };
        Ok(format!(
            "bg-ctl would run {command} for app {} on {store}\n\
             the options are valid; nothing was opened, sent or run (--check)",
            g.app
        ))
    }

    /// Routes the command: the context it needs (the store, the gates,
    /// who is acting), then the command, whose result shows itself.
    async fn dispatch(self, report: &Reporter) -> CtlResult<Box<dyn Render>> {
        let store = self.open_store()?;
        let store = store.as_ref();
        let g = &self.global;
        let app = &g.app;
        let actor = g.actor.clone().unwrap_or_else(default_actor);
        if g.actor.is_some() && store.backend() == "remote" {
            output::to_stderr(
                "bg-ctl: note: --actor (BG_ACTOR) is not sent through a gate: the gate records the name of the token it accepted",
            );
        }
        let gates = HttpGates::new(g.token.clone(), g.timeout)?;
        Ok(match self.command {
            Command::Status { gates: urls } => {
                Box::new(commands::status(store, &gates, app, &urls.by_colour()).await?)
            }
            Command::Init {
                active: Some(active),
                force,
                reason,
                live_version,
                ..
            } => Box::new(
                commands::init(store, app, active, &actor, force, reason, live_version).await?,
            ),
            Command::Init {
                active: None,
                from_gate,
                force,
                reason,
                ..
            } => Box::new(
                commands::init_from_gates(store, &gates, app, &from_gate, &actor, force, reason)
                    .await?,
            ),
            Command::Switch {
                to,
                expect_generation,
                reason,
                force,
            } => Box::new(
                commands::switch(store, app, to, expect_generation, &actor, reason, force).await?,
            ),
            Command::Rollback {
                gates: urls,
                reason,
            } => Box::new(
                commands::rollback(store, &gates, app, &urls.by_colour(), &actor, reason).await?,
            ),
            Command::History { limit } => Box::new(commands::history(store, app, limit).await?),
            Command::Lease(LeaseCommand::Show) => Box::new(commands::show_lease(store, app).await?),
            Command::Lease(LeaseCommand::Break { reason }) => {
                Box::new(commands::break_lease(store, app, &actor, reason).await?)
            }
            Command::Deploy(args) => {
                let trigger = args.trigger(g.timeout)?;
                let opts = args.options(app, &actor, &g.gate);
                let deployer = Deployer {
                    store,
                    gates: &gates,
                    trigger: trigger.as_ref(),
                    checks: &ShellChecks,
                    report,
                    opts: &opts,
                };
                Box::new(deployer.run().await?)
            }
        })
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

    /// The release's options, for `actor` with a lease holder of its own,
    /// through `store_gates` when the store is gates (`--gate`).
    fn options(&self, app: &AppName, actor: &str, store_gates: &[String]) -> DeployOptions {
        let mut opts = DeployOptions::new(app.clone(), self.version.clone(), actor);
        opts.holder = holder(actor);
        opts.gates = self.gates.by_colour();
        opts.store_gates = store_gates.to_vec();
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
