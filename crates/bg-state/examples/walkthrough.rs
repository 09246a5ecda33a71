//! A release told through the store alone, on the embedded default.
//!
//! ```text
//! cargo run -p bg-state --example walkthrough [STORE_URL]
//! ```
//!
//! With no argument it uses `memory://`; give `file:///tmp/bg.json` or
//! `redis://127.0.0.1:PORT/0` to watch the same steps on another backend.

use std::process::ExitCode;
use std::time::Duration;

use bg_state::{
    AppName, DeployPhase, DeployRecord, Error, InitRequest, LeaseRequest, SwitchRequest,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    match run(&url).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(url: &str) -> Result<(), Error> {
    let store = bg_state::open(url)?;
    let app = AppName::new("walkthrough")?;
    println!("store: {} ({url})", store.backend());

    let state = match store.get(&app).await? {
        Some(s) => s,
        None => {
            store
                .init(
                    &app,
                    InitRequest::new(bg_state::Colour::Blue, "ops").reason("first setup"),
                )
                .await?
        }
    };
    println!(
        "live: {} at generation {}; idle: {}",
        state.active,
        state.generation,
        state.idle()
    );

    // Pipeline A takes the deploy lease; pipeline B, started a moment later, is told to wait.
    let lease = store
        .acquire_lease(
            &app,
            LeaseRequest::new("pipeline-a", Duration::from_secs(30)),
        )
        .await?;
    // The fence is the holder's secret: used, never printed.
    println!("pipeline-a holds the lease until {}", lease.expires_at_ms);
    if let Err(e) = store
        .acquire_lease(
            &app,
            LeaseRequest::new("pipeline-b", Duration::from_secs(30)),
        )
        .await
    {
        println!("pipeline-b refused: {e}");
    }

    // Deploy to the idle colour, fenced by the lease. The live colour is refused.
    let idle = state.idle();
    if let Err(e) = store
        .record_deploy(
            &app,
            DeployRecord::new(state.active, "v2", DeployPhase::Deploying, "pipeline-a")
                .fence(lease.fence),
        )
        .await
    {
        println!("deploy to the live colour refused: {e}");
    }
    for phase in [DeployPhase::Deploying, DeployPhase::Deployed] {
        store
            .record_deploy(
                &app,
                DeployRecord::new(idle, "v2", phase, "pipeline-a").fence(lease.fence),
            )
            .await?;
        println!("recorded: {phase} v2 on {idle}");
    }

    // Someone switches by hand without the fence: refused while the lease is held.
    if let Err(e) = store
        .switch(&app, SwitchRequest::new(idle, "someone"))
        .await
    {
        println!("unfenced switch refused: {e}");
    }

    // The pipeline switches with compare-and-swap on the generation it read.
    let done = store
        .switch(
            &app,
            SwitchRequest::new(idle, "pipeline-a")
                .expect_generation(state.generation)
                .fence(lease.fence)
                .reason("release v2"),
        )
        .await?;
    println!(
        "switched: {} live at generation {}",
        done.state.active, done.state.generation
    );

    // A retry of the same switch is harmless; a stale one is a conflict.
    let again = store
        .switch(
            &app,
            SwitchRequest::new(idle, "pipeline-a")
                .expect_generation(state.generation)
                .fence(lease.fence),
        )
        .await?;
    println!("retried switch changed something: {}", again.changed);
    match store
        .switch(
            &app,
            SwitchRequest::new(state.active, "pipeline-b")
                .expect_generation(state.generation)
                .force(true),
        )
        .await
    {
        Err(Error::Conflict { current, .. }) => println!(
            "stale switch refused: generation is {} now",
            current.generation
        ),
        other => println!("unexpected: {other:?}"),
    }
    store.release_lease(&app, lease.fence).await?;
    println!("lease released");

    println!("history, newest first:");
    for e in store.history(&app, 10).await? {
        println!("  gen {:>3}  {:<12} {}", e.generation, e.actor, e.kind);
    }
    Ok(())
}
