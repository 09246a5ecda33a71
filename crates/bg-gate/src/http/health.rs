//! The public routes, for the load balancer: the health answers,
//! `/running-service-id` and `/bg/live`. A health answer is the core's
//! verdict ([`Gate::answer_check`]) rendered as a status, a body and
//! headers; nothing here decides, and no handler calls the store (strict
//! mode's refresh aside, which exists to compare against).

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, get_service};
use bg_state::Colour;

use super::reply::{HttpError, Segment, method_not_allowed};
use crate::core::{Gate, LbCheck, Verdict, VerdictKind, Via};

/// `GET/HEAD /balancer-keepalive-check`, `GET /running-service-id`,
/// `GET /bg/check/{colour}`, `GET /bg/live`.
pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    let health = Health(Arc::new(Answers::new(gate)));
    // The load balancer's own check is answered at once, from the view: a
    // plain service with a ready future, not a handler whose extractors
    // clone the gate and whose future is boxed once more. Strict mode
    // reads the store first, so it waits like any handler.
    let keepalive = if gate.config().strict {
        get(keepalive_strict)
    } else {
        get_service(health.clone())
    };
    Router::new()
        .route("/balancer-keepalive-check", keepalive)
        .route("/running-service-id", get(running_service_id))
        .route("/bg/check/{colour}", get(check_colour))
        .route("/bg/live", get(|| async { "alive" }))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(health)
}

fn source(req: &Request) -> Option<IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The gate, and the three answers its settings allow, rendered once.
#[derive(Clone)]
struct Health(Arc<Answers>);

struct Answers {
    gate: Gate,
    ok: Rendered,
    stop: Rendered,
    down: Rendered,
}

impl Answers {
    /// The answers `gate`'s settings make: `200 OK` while the colour
    /// takes traffic; the STOP status (`--stop-status`) when idle; `503
    /// DOWN` while the service beside a sidecar gate is down — a failed
    /// check even with `--stop-status 404`, so the load balancer marks it
    /// down.
    fn new(gate: &Gate) -> Self {
        let cfg = gate.config();
        let stop =
            StatusCode::from_u16(cfg.stop_status.code()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let (ok_body, stop_body) = if cfg.seed_body {
            ("<response>OK</response>", "<response>STOP</response>")
        } else {
            ("OK", "STOP")
        };
        Answers {
            gate: gate.clone(),
            ok: Rendered::new(StatusCode::OK, ok_body),
            stop: Rendered::new(stop, stop_body),
            down: Rendered::new(StatusCode::SERVICE_UNAVAILABLE, "DOWN"),
        }
    }

    /// The answer to a load balancer's check of `colour` from `source`:
    /// the core's verdict, counted and logged there, rendered here. Never
    /// waits: strict mode's read of the store comes before it.
    fn answer(&self, colour: Colour, source: Option<IpAddr>) -> Response {
        let verdict = self
            .gate
            .answer_check(LbCheck::new(colour, source, Via::Http));
        match verdict.kind() {
            VerdictKind::Ok | VerdictKind::Handover => &self.ok,
            VerdictKind::Down => &self.down,
            VerdictKind::Stop => &self.stop,
        }
        .with(verdict)
    }
}

static X_BG_GENERATION: HeaderName = HeaderName::from_static("x-bg-generation");
static X_BG_STALE_MS: HeaderName = HeaderName::from_static("x-bg-stale-ms");

/// One health answer: its status, body and headers, the numbers aside.
///
/// This is the hottest path there is, so the headers are built once and
/// cloned — two allocations, no header name hashed or parsed per answer —
/// and only the generation and staleness are set for each verdict.
struct Rendered {
    status: StatusCode,
    body: &'static str,
    headers: HeaderMap,
}

impl Rendered {
    fn new(status: StatusCode, body: &'static str) -> Self {
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // Never cached: each check must reach the gate.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_BG_GENERATION.clone(), number(0));
        headers.insert(X_BG_STALE_MS.clone(), number(0));
        headers.insert(header::CONTENT_LENGTH, number(body.len() as u64));
        Rendered {
            status,
            body,
            headers,
        }
    }

    /// The answer, headed with the generation and staleness `verdict` was
    /// given from.
    fn with(&self, verdict: Verdict) -> Response {
        let mut headers = self.headers.clone();
        for (name, value) in &mut headers {
            if *name == X_BG_GENERATION {
                *value = number(verdict.generation());
            } else if *name == X_BG_STALE_MS {
                *value = number(verdict.stale_ms());
            }
        }
        let mut res = Response::new(Body::from(self.body));
        *res.status_mut() = self.status;
        *res.headers_mut() = headers;
        res
    }
}

/// Numbers below this are header values read from [`DIGITS`] rather than
/// formatted into an allocation of their own: the generation and the
/// staleness of a health answer nearly always are.
const SMALL: usize = 10_000;
/// The decimal digits of every number below [`SMALL`], four bytes each.
static DIGITS: [u8; SMALL * 4] = digits();

const fn width(n: usize) -> usize {
    match n {
        0..10 => 1,
        10..100 => 2,
        100..1000 => 3,
        _ => 4,
    }
}

const fn digits() -> [u8; SMALL * 4] {
    let mut table = [0; SMALL * 4];
    let mut n = 0;
    while n < SMALL {
        let (mut rest, mut i) = (n, width(n));
        while i > 0 {
            i -= 1;
            table[n * 4 + i] = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        n += 1;
    }
    table
}

/// `n` as a header value.
fn number(n: u64) -> HeaderValue {
    usize::try_from(n)
        .ok()
        .filter(|&n| n < SMALL)
        .and_then(|n| {
            let digits = &DIGITS[n * 4..n * 4 + width(n)];
            HeaderValue::from_maybe_shared(Bytes::from_static(digits)).ok()
        })
        .unwrap_or_else(|| HeaderValue::from(n))
}

/// `/balancer-keepalive-check`: this gate's own colour.
impl tower_service::Service<Request> for Health {
    type Response = Response;
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let own = self.0.gate.config().colour;
        ready(Ok(self.0.answer(own, source(&req))))
    }
}

async fn keepalive_strict(State(Health(health)): State<Health>, req: Request) -> Response {
    health.gate.refresh().await;
    health.answer(health.gate.config().colour, source(&req))
}

async fn check_colour(
    State(Health(health)): State<Health>,
    Segment(colour): Segment,
    req: Request,
) -> Result<Response, HttpError> {
    let colour = colour
        .parse::<Colour>()
        .map_err(|e| HttpError::bad_request(e.to_string()))?;
    if health.gate.config().strict {
        health.gate.refresh().await;
    }
    Ok(health.answer(colour, source(&req)))
}

async fn running_service_id(State(Health(health)): State<Health>) -> String {
    health.gate.config().colour.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_from_the_table_are_those_formatted() {
        for n in [
            0,
            7,
            9,
            10,
            42,
            99,
            100,
            512,
            999,
            1000,
            4321,
            9999,
            10_000,
            u64::MAX,
        ] {
            assert_eq!(number(n), HeaderValue::from(n), "{n}");
        }
    }
}
