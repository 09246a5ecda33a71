//! The gate's HTTP surface, built on the core and never imported by it: a
//! public router for the load balancer and an admin router for people and
//! tools.
//!
//! * `health.rs` — the public routes; they answer from the view and touch
//!   no store;
//! * `admin.rs` — `/bg/state`, the switch, the drain, `/metrics`;
//! * `api.rs` — the store over HTTP, `/bg/api/v1`;
//! * `changes.rs` — its change stream (the long polls and their bounds);
//! * `ui/` — the status page, `/bg/ui`, and the data it follows;
//! * `reply.rs` — `HttpError`, the one error answer, and the steps every
//!   write shares (authorisation, the bounded JSON body).

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;

use crate::conns::{Connections, RequestGuard};
use crate::core::Gate;

mod admin;
mod api;
mod changes;
mod health;
mod reply;
mod ui;

pub use api::GENERATION_MARGIN;
pub use changes::{MAX_POLLS, MAX_POLLS_PER_SOURCE};

/// The largest request body the admin routes accept.
pub const MAX_BODY: usize = 16 * 1024;

impl Gate {
    /// The routes a load balancer (and anyone who reaches it) may call:
    /// `GET/HEAD /balancer-keepalive-check`, `GET /running-service-id`,
    /// `GET /bg/check/{colour}`, `GET /bg/live`. Merge it into the service's
    /// router; it carries its own state, so it fits any `Router<S>`.
    pub fn public_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        health::router(self)
    }

    /// The routes for operators and tools: `GET /bg/state`, `POST /bg/switch`
    /// and `POST /switch` (authenticated), `POST /bg/drain` (authenticated),
    /// `GET /metrics`, the whole store under `/bg/api/v1` (writes
    /// authenticated; see `docs/api.md`), and the read-only status page
    /// `GET /bg/ui` with its data `GET /bg/ui/data`. Serve it on a private listener
    /// where you can: anything merged into the public router is reachable
    /// by whoever reaches the load balancer.
    ///
    /// The bounds on waiting change polls ([`MAX_POLLS`],
    /// [`MAX_POLLS_PER_SOURCE`]) belong to the router returned: to serve the
    /// admin routes on several listeners, build it once and clone it.
    pub fn admin_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        admin::router(self)
            .merge(api::router(self))
            .merge(changes::router(self))
            .merge(ui::router(self))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
    }

    /// Counts the requests `router` serves as in-flight connections of
    /// this gate (shown in `/bg/state` and `/metrics`).
    ///
    /// A plain tower layer: no boxed future, one counter up and down.
    pub fn track_requests<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        router.layer(TrackLayer {
            conns: self.connections().clone(),
        })
    }
}

/// Counts each request as in flight until its response is produced.
#[derive(Clone)]
struct TrackLayer {
    conns: Connections,
}

impl<S> tower_layer::Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            conns: self.conns.clone(),
        }
    }
}

#[derive(Clone)]
struct Track<S> {
    inner: S,
    conns: Connections,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Track<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Tracked<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        Tracked {
            guard: Some(self.conns.track_request()),
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    struct Tracked<F> {
        #[pin]
        inner: F,
        guard: Option<RequestGuard>,
    }
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.guard.take();
        Poll::Ready(out)
    }
}
