//! A started gate serving: its listeners, the agent check, signals, and
//! logging.

use std::net::SocketAddr;

use axum::Router;
use tokio::net::TcpListener;

use super::conn::Limits;
use super::error::ServerError;
use crate::Gate;

/// A started gate with its listeners bound, ready to serve.
#[derive(Debug)]
pub struct GateServer {
    pub(super) gate: Gate,
    pub(super) follower: tokio::task::JoinHandle<()>,
    pub(super) listener: TcpListener,
    pub(super) admin: Option<TcpListener>,
    pub(super) agent: Option<TcpListener>,
    pub(super) limits: Limits,
}

impl GateServer {
    /// The gate, to track connections or await idleness.
    #[must_use]
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The address the public routes are served on.
    ///
    /// # Errors
    /// If the listener cannot say.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves `service` (the host's own routes, may be empty) with the
    /// gate's public routes on the main listener, the admin routes on the
    /// admin listener or beside them, and the agent check, until SIGTERM or
    /// SIGINT; SIGHUP re-reads the token file.
    ///
    /// # Errors
    /// [`ServerError::Serve`] (exit code 1) if a server fails.
    pub async fn serve(self, service: Router) -> Result<(), ServerError> {
        let GateServer {
            gate,
            follower,
            listener,
            admin,
            agent,
            limits,
        } = self;
        let public = gate.track_requests(service.merge(gate.public_router()));
        // One admin router, cloned wherever it is served, so its bounds on
        // waiting change polls hold for the whole gate.
        let admin_routes = gate.admin_router();
        // Over the cap, each listener still serves the gate's own routes
        // it has: the load balancer's check, and bg-ctl's state and drain.
        let (main_router, main_reserve, admin) = match admin {
            Some(l) => (public, gate.public_router(), Some((l, admin_routes))),
            None => (
                public.merge(admin_routes.clone()),
                gate.public_router().merge(admin_routes),
                None,
            ),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(serve(
            listener,
            main_router,
            main_reserve,
            limits,
            stopped(),
        ));
        if let Some((l, r)) = admin {
            let reserve = r.clone();
            tasks.spawn(serve(l, r, reserve, limits, stopped()));
        }
        if let Some(l) = agent {
            let gate = gate.clone();
            let stop = stopped();
            tasks.spawn(async move {
                gate.serve_agent(l, stop).await;
                Ok(())
            });
        }

        signals(&gate).await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        let mut result = Ok(());
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                result = Err(e);
            }
        }
        follower.abort();
        result
    }
}

async fn serve(
    listener: TcpListener,
    router: Router,
    reserve: Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    super::conn::serve(listener, router, reserve, limits, stop).await;
    Ok(())
}

/// Waits for SIGTERM or SIGINT; re-reads the token file on SIGHUP meanwhile.
async fn signals(gate: &Gate) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => return,
            _ = int.recv() => return,
            _ = hup.recv() => match gate.reload_tokens() {
                Ok(true) => tracing::info!("token file re-read"),
                Ok(false) => tracing::info!("SIGHUP: no token file to re-read"),
                Err(e) => tracing::error!(error = %e, "token file not re-read; the tokens in force stay"),
            },
        }
    }
}

/// Logs to stderr with `tracing`, level from `RUST_LOG` (default `info`),
/// in colour only on a terminal and never with `NO_COLOR` set.
pub fn init_logging() {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_ansi(colour)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
