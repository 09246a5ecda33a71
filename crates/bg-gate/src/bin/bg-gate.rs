//! `bg-gate`: the health gate as a standalone process or sidecar.

use std::process::ExitCode;

use axum::Router;
use bg_gate::server::GateArgs;
use clap::Parser;

const EXIT_CODES: &str = "Exit codes:\n  \
    0  stopped by SIGTERM or SIGINT\n  \
    1  a listener cannot be bound, or a server failed while serving\n  \
    2  usage error or invalid option: a bad flag or value, or a store, token or OIDC\n     \
       setting that cannot be used (an unreadable token file or JWKS file, a short BG_TOKEN)";

const ENVIRONMENT: &str = "Environment only (never an option: a command line is visible to every user of the host):\n  \
    BG_TOKEN  one more token allowed to write, with the ci scope, recorded as actor bg-token;\n            \
    at least 16 bytes";

/// The bluegreen health gate: answers the load balancer's health check for
/// one colour (OK when live, STOP when idle) from an in-memory view of the
/// shared state, and offers an authenticated switch.
#[derive(Debug, Parser)]
#[command(
    name = "bg-gate",
    version,
    after_help = format!("{ENVIRONMENT}\n\n{EXIT_CODES}\n\n\
        Check a command line without starting (exit 0, or 2 with the error a start would give):\n  \
        bg-gate --check --colour blue --store redis://redis:6379/0 --listen 0.0.0.0:8080 --admin-listen 10.0.0.5:9090\n\n\
        Example, on the embedded store (this process only):\n  \
        BG_TOKEN=$(head -c 24 /dev/urandom | base64) bg-gate --colour blue --init blue --service-version v1\n  \
        curl -i localhost:8080/balancer-keepalive-check\n\n\
        Example, shared through Redis:\n  \
        bg-gate --colour green --store redis://redis:6379/0 --app chat --service-version \"$IMAGE_TAG\" \\\n    \
        --token-file /run/secrets/bg-tokens --admin-listen 127.0.0.1:9090")
)]
struct Cli {
    /// Check the options and the environment as a start would (every value, and the rules that
    /// combine them), print what would run and exit: 0 if it would start, 2 with the error it
    /// would stop with. Opens no store, reads no file the options name (token file, JWKS, CA,
    /// cache), fetches nothing and binds nothing, so it runs anywhere: in CI, before a rollout.
    #[arg(long)]
    check: bool,

    #[command(flatten)]
    gate: GateArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    bg_gate::server::init_logging();
    let cli = Cli::parse();
    if cli.check {
        return match cli.gate.check() {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::from(bg_gate::server::exit::OK)
            }
            Err(e) => {
                eprintln!("bg-gate: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    let result = match cli.gate.start().await {
        Ok(server) => server.serve(Router::new()).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => ExitCode::from(bg_gate::server::exit::OK),
        Err(e) => {
            eprintln!("bg-gate: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
