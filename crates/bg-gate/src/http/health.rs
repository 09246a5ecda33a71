//! The public routes, for the load balancer: the health answers,
//! `/running-service-id` and `/bg/live`. Answered from the view alone: no
//! handler here calls the store (strict mode's refresh aside, which exists
//! to compare against).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bg_state::Colour;

use super::reply::{HttpError, Segment, method_not_allowed};
use crate::core::{Gate, GateConfig, LbCheck, Verdict, VerdictKind, Via};

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

/// The answer to a load balancer's check of `colour` from `source`: the
/// core's verdict, counted and logged there, rendered here.
///
/// This is the hottest path there is: no store round trip (but in strict
/// mode), one atomic load of the view, and in sidecar mode one of the
/// service's health flag.
async fn health(gate: &Gate, colour: Colour, source: Option<std::net::IpAddr>) -> Response {
    if gate.config().strict {
        gate.refresh().await;
    }
    let verdict = gate.answer_check(LbCheck::new(colour, source, Via::Http));
    render(verdict, gate.config())
}

/// A verdict as an HTTP health answer: `200 OK` while the colour takes
/// traffic; the STOP status (`--stop-status`) when idle; `503 DOWN` while
/// the service beside a sidecar gate is down — a failed check even with
/// `--stop-status 404`, so the load balancer marks it down. Never cached,
/// and headed with the generation and staleness it was given from.
fn render(verdict: Verdict, cfg: &GateConfig) -> Response {
    let (status, body) = match (verdict.kind(), cfg.seed_body) {
        (VerdictKind::Down, _) => (StatusCode::SERVICE_UNAVAILABLE, "DOWN"),
        (VerdictKind::Ok | VerdictKind::Handover, false) => (StatusCode::OK, "OK"),
        (VerdictKind::Ok | VerdictKind::Handover, true) => {
            (StatusCode::OK, "<response>OK</response>")
        }
        (VerdictKind::Stop, seed) => (
            StatusCode::from_u16(cfg.stop_status.code()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            if seed {
                "<response>STOP</response>"
            } else {
                "STOP"
            },
        ),
    };
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-bg-generation", HeaderValue::from(verdict.generation()));
    h.insert("x-bg-stale-ms", HeaderValue::from(verdict.stale_ms()));
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
