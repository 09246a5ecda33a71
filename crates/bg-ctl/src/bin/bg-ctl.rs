//! `bg-ctl`: see and change which colour is live, and release from CI.

use std::process::ExitCode;

use bg_ctl::cli::Cli;

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors exit 2, as documented.
    let cli = Cli::from_command_line();
    ExitCode::from(cli.run().await)
}
