//! `bg-ctl`: see and change which colour is live, and release from CI.

use std::process::ExitCode;

use bg_ctl::cli::Cli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits 2 on usage errors by itself, as documented.
    let cli = Cli::parse();
    ExitCode::from(cli.run().await)
}
