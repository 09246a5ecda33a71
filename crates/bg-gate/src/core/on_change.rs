//! The on-change runner: the push model for load balancers without active
//! health checks. It runs [`GateConfig::on_change`](super::GateConfig::on_change)
//! whenever the live colour the gate answers from changes.

use std::time::{Duration, Instant};

use bg_state::{AppName, Colour};
use tokio::sync::watch;

/// The only variables of the gate's environment the command sees, besides
/// the `BG_*` ones set for it.
const INHERITED_ENV: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// How long one run of the command may take before it is killed.
const ON_CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The on-change runner: pushes the live colour to the command, one run at
/// a time, skipping changes overtaken while a run was going.
pub(super) async fn push_changes(
    command: String,
    app: AppName,
    colour: Colour,
    mut live: watch::Receiver<Option<(Colour, u64)>>,
) {
    const FIRST_RETRY: Duration = Duration::from_secs(1);
    let mut pushed: Option<Colour> = None;
    let mut retry = FIRST_RETRY;
    loop {
        let latest = *live.borrow_and_update();
        let mut failed = false;
        if let Some((active, generation)) = latest
            && pushed != Some(active)
        {
            if run_on_change(&command, &app, colour, active, generation).await {
                pushed = Some(active);
                retry = FIRST_RETRY;
            } else {
                failed = true;
            }
        }
        let woke = if failed {
            let pause = retry;
            retry = (retry * 2).min(ON_CHANGE_TIMEOUT);
            tokio::select! {
                r = live.changed() => r,
                () = tokio::time::sleep(pause) => Ok(()),
            }
        } else {
            live.changed().await
        };
        if woke.is_err() {
            return; // the gate is gone
        }
    }
}

/// One run of the on-change command; whether it succeeded. Never logs the
/// command itself: it may carry credentials for a load balancer's API.
async fn run_on_change(
    command: &str,
    app: &AppName,
    colour: Colour,
    active: Colour,
    generation: u64,
) -> bool {
    let mut cmd = std::process::Command::new("sh");
    // A minimal environment: the gate's own holds its store URL, tokens
    // and whatever else its host gave it, none of which the command needs.
    cmd.env_clear();
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    cmd.arg("-c")
        .arg(command)
        .env("BG_ACTIVE", active.to_string())
        .env("BG_GENERATION", generation.to_string())
        .env("BG_APP", app.as_str())
        .env("BG_COLOUR", colour.to_string())
        .stdin(std::process::Stdio::null())
        // The gate's stdout is not a log; the command's output joins the log stream.
        .stdout(std::io::stderr());
    let started = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            tracing::error!(error = %e, %active, generation, "cannot run the on-change command; retrying");
            return false;
        }
    };
    // Polled rather than awaited: the process API of std needs no extra
    // runtime feature, and a 20 ms lag does not matter for a reload.
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= ON_CHANGE_TIMEOUT => {
                let _ = child.kill();
                break Err(format!("still running after {ON_CHANGE_TIMEOUT:?}; killed"));
            }
            Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                let _ = child.kill();
                break Err(format!("cannot wait for it: {e}"));
            }
        }
    };
    if outcome.is_err() {
        // Reap it; after SIGKILL this returns at once.
        let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    }
    let took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(status) if status.success() => {
            tracing::info!(%active, generation, took_ms, "on-change command done");
            true
        }
        Ok(status) => {
            tracing::error!(%active, generation, took_ms, %status, "the on-change command failed; retrying");
            false
        }
        Err(why) => {
            tracing::error!(%active, generation, took_ms, error = %why, "the on-change command failed; retrying");
            false
        }
    }
}
