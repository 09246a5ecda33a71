//! `bg-wsload`: many websocket clients through one address during a
//! release, counting the closes a drain asks for (moves) apart from the ones
//! it must never cause (cuts). The work is done by [`bg_e2e::wsload`].
//!
//! Exit codes: 0 when nothing was cut, every connect succeeded and no
//! reconnect landed wrong; 1 otherwise; 2 for a usage error or too few file
//! descriptors.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use bg_e2e::wsload::{Balance, Config, Load};
use bg_state::parse_duration;
use clap::Parser;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

// Descriptors kept for the runtime, stdio and the odd file, beyond one
// socket a client.
const SPARE_FDS: u64 = 64;

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Websocket clients through one address, each sending a text message at an
/// interval and checking its echo, counting moves, cuts and connect failures.
#[derive(Debug, Parser)]
#[command(
    name = "bg-wsload",
    version,
    long_about = "Websocket clients through one address, each sending a text message at an \
interval and checking its echo: the load to hold during a release.

A MOVE is a close by the server with code 1012 (service restart: what a draining gate \
sends): the client waits a random jitter (up to --jitter) and reconnects, as a \
well-behaved client does. A CUT is every other end: another close code (1001, what a \
service shutting down sends, included), a close \
without a code, a read or write error, the connection ending without a close frame, \
or a greeting or an echo that does not arrive within --echo-timeout. A CONNECT \
FAILURE is a refused, failed or slow TCP connect or handshake, counted at each \
attempt. Cut and refused clients count it and reconnect after a jitter, so the load \
stays.

The server is expected to greet each connection first with `hello <colour> \
<version>` (as the ws_echo example and the Node.js example do); the summary \
counts landings per colour. Use --no-greeting for a server that does not greet.

Progress goes to stderr every 5 s; one summary line goes to stdout at the end \
(after --duration, or on SIGINT or SIGTERM).",
    after_help = "Exit status: 0 when nothing was cut and every connect succeeded, \
1 otherwise, 2 for a usage error or too few file descriptors.

Examples:
  bg-wsload --url ws://127.0.0.1:8000/ws --clients 1000 --interval 5s --duration 60s
  bg-wsload --url 10.0.0.11:8080 --url 10.0.0.12:8080 --check /balancer-keepalive-check --clients 10000"
)]
struct Cli {
    /// Where the clients connect: ws://HOST:PORT/PATH (a load balancer). Without a scheme,
    /// ws:// is assumed; without a path, /ws. Repeat it with --check to spread the clients
    /// over servers directly.
    #[arg(long, value_name = "URL", value_parser = parse_url, required = true)]
    url: Vec<String>,

    /// With several --url and no load balancer in front (a proxy needs two descriptors a
    /// websocket): check each server's health route PATH every 100 ms and send each connect
    /// and reconnect to the next one answering 200, as a load balancer with active checks
    /// does (e.g. /balancer-keepalive-check). Gates log these checks as a load balancer's.
    #[arg(long, value_name = "PATH")]
    check: Option<String>,

    /// How many clients run at once; each holds one file descriptor.
    #[arg(long, default_value = "100", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    clients: u32,

    /// How often each client sends a message (500ms, 5s, 2m…).
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    interval: Duration,

    /// How long to run; without it, until SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,

    /// How long a connect, the greeting or an echo may take.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    echo_timeout: Duration,

    /// The most a client waits before reconnecting (each wait is random up
    /// to this).
    #[arg(long, default_value = "1s", value_name = "DURATION", value_parser = parse_duration)]
    jitter: Duration,

    /// Spread the first connects over this time.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration)]
    ramp: Duration,

    /// The server sends no greeting: count no landings.
    #[arg(long)]
    no_greeting: bool,
}

fn parse_url(s: &str) -> Result<String, String> {
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("ws://{s}")
    };
    let url = match with_scheme.split_once("://") {
        Some((_, rest)) if !rest.contains('/') => format!("{with_scheme}/ws"),
        _ => with_scheme,
    };
    if !url.starts_with("ws://") {
        return Err(format!(
            "{s:?}: only ws:// is supported (no TLS): point it at the load balancer's plain port"
        ));
    }
    url.as_str()
        .into_client_request()
        .map_err(|e| format!("{s:?} is not a websocket URL: {e}"))?;
    Ok(url)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending().await,
            }
        } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let clients = u64::from(cli.clients);
    let limit = bg_gate::server::raise_open_file_limit();
    if let Some(limit) = limit
        && clients + SPARE_FDS > limit
    {
        eprintln!(
            "bg-wsload: --clients {clients} needs {} file descriptors (one a client, \
             {SPARE_FDS} spare), but this process may open {limit} (RLIMIT_NOFILE, raised to \
             its hard limit); lower --clients to at most {} or raise the hard limit (as root: \
             ulimit -Hn, systemd LimitNOFILE=, docker --ulimit nofile=)",
            clients + SPARE_FDS,
            limit.saturating_sub(SPARE_FDS),
        );
        return ExitCode::from(2);
    }
    let url = cli.url[0].clone();
    let balance = match (cli.url.len(), cli.check) {
        (1, None) => None,
        (_, Some(check)) => Some(Balance {
            urls: cli.url,
            check,
            every: Duration::from_millis(100),
        }),
        (_, None) => {
            eprintln!(
                "bg-wsload: several --url need --check PATH, the health route that says which of them take new clients"
            );
            return ExitCode::from(2);
        }
    };

    let mut config = Config::new(url, cli.clients as usize);
    config.balance = balance;
    config.interval = cli.interval;
    config.echo_timeout = cli.echo_timeout;
    config.reconnect_jitter = cli.jitter;
    config.ramp = cli.ramp;
    config.greeting = !cli.no_greeting;
    let load = Load::start(config);

    let end = async {
        match cli.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let signal = shutdown_signal();
    tokio::pin!(end, signal);
    let mut progress =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            () = &mut end => break,
            () = &mut signal => break,
            _ = progress.tick() => eprintln!("bg-wsload: {}", load.counts().progress()),
        }
    }

    let summary = load.stop().await;
    for e in &summary.errors {
        eprintln!("bg-wsload: {e}");
    }
    // A closed stdout (piped into `head`) is not a failure of the run.
    let _ = writeln!(std::io::stdout().lock(), "bg-wsload: {summary}");
    if summary.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
