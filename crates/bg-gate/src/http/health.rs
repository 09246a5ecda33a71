//! The public routes, for the load balancer: the health answers,
//! `/running-service-id` and `/bg/live`. Answered from the view alone: no
//! handler here calls the store (strict mode's refresh aside, which exists
//! to compare against).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bg_state::Colour;

use super::reply::{HttpError, Segment, method_not_allowed};
use crate::core::{Answer, Gate, View};

/// `GET/HEAD /balancer-keepalive-check`, `GET /running-service-id`,
/// `GET /bg/check/{colour}`, `GET /bg/live`.
pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    Router::new()
        .route("/balancer-keepalive-check", get(keepalive))
        .route("/running-service-id", get(running_service_id))
        .route("/bg/check/{colour}", get(check_colour))
        .route("/bg/live", get(|| async { "alive" }))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gate.clone())
}

fn source(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The health answer for `colour`, recorded in the probe log.
///
/// This is the hottest path there is: no allocation, no store round trip
/// (but in strict mode), one atomic load of the view, and in sidecar mode
/// one of the service's health flag.
async fn health(gate: &Gate, colour: Colour, source: Option<std::net::IpAddr>) -> Response {
    if gate.config().strict {
        gate.refresh().await;
    }
    let now = Instant::now();
    let view = gate.inner.view.load();
    let cfg = gate.config();
    let counters = &gate.inner.counters;
    if colour == cfg.colour && !gate.service_up() {
        // The service beside this gate is down: nobody is sent here,
        // whichever colour is live. A failed check (503), even with
        // --stop-status 404, so the load balancer marks it down.
        counters.answers_down.fetch_add(1, Ordering::Relaxed);
        gate.record_probe(source, colour, Answer::Stop);
        return headed(
            (StatusCode::SERVICE_UNAVAILABLE, "DOWN").into_response(),
            gate,
            &view,
            now,
        );
    }
    let answer = view.answer(colour, now);
    match answer {
        Answer::Ok => &counters.answers_ok,
        Answer::Handover => &counters.answers_handover,
        Answer::Stop => &counters.answers_stop,
    }
    .fetch_add(1, Ordering::Relaxed);
    gate.record_probe(source, colour, answer);
    let (status, word) = if answer.is_ok() {
        (StatusCode::OK, "OK")
    } else {
        (
            StatusCode::from_u16(cfg.stop_status.code()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "STOP",
        )
    };
    let body: &'static str = match (cfg.seed_body, answer.is_ok()) {
        (false, _) => word,
        (true, true) => "<response>OK</response>",
        (true, false) => "<response>STOP</response>",
    };
    headed((status, body).into_response(), gate, &view, now)
}

/// A health answer with its headers: not cached, and the generation and
/// staleness it was given from.
fn headed(mut res: Response, gate: &Gate, view: &View, now: Instant) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-bg-generation", HeaderValue::from(view.generation()));
    h.insert(
        "x-bg-stale-ms",
        HeaderValue::from(view.stale_ms(now, gate.inner.started)),
    );
    res
}

async fn keepalive(State(gate): State<Gate>, req: Request) -> Response {
    let src = source(&req);
    health(&gate, gate.config().colour, src).await
}

async fn check_colour(
    State(gate): State<Gate>,
    Segment(colour): Segment,
    req: Request,
) -> Result<Response, HttpError> {
    let colour = colour
        .parse::<Colour>()
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    Ok(health(&gate, colour, source(&req)).await)
}

async fn running_service_id(State(gate): State<Gate>) -> String {
    gate.config().colour.to_string()
}
