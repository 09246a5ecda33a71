//! The gate's HTTP surface: a public router for the load balancer and an
//! admin router for people and tools.

// Handlers return `Result<_, Response>` so `?` ends a request with its answer;
// the size of `Response` is no concern on these paths.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bg_state::{Colour, Error as StoreError, SwitchRequest};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::Refusal;
use crate::core::{Answer, Gate, bounded};
use crate::probes::Probe;

/// The largest request body the admin routes accept.
pub const MAX_BODY: usize = 16 * 1024;

impl Gate {
    /// The routes a load balancer (and anyone who reaches it) may call:
    /// `GET/HEAD /balancer-keepalive-check`, `GET /running-service-id`,
    /// `GET /bg/check/{colour}`, `GET /bg/live`. Merge it into the service's
    /// router; it carries its own state, so it fits any `Router<S>`.
    pub fn public_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/balancer-keepalive-check", get(keepalive))
            .route("/running-service-id", get(running_service_id))
            .route("/bg/check/{colour}", get(check_colour))
            .route("/bg/live", get(|| async { "alive" }))
            .with_state(self.clone())
    }

    /// The routes for operators and tools: `GET /bg/state`, `POST /bg/switch`
    /// and `POST /switch` (authenticated), `POST /bg/drain` (authenticated),
    /// `GET /metrics`, and the whole store under `/bg/api/v1` (writes
    /// authenticated; see `docs/api.md`). Serve it on a private listener where you can: anything
    /// merged into the public router is reachable by whoever reaches the
    /// load balancer.
    pub fn admin_router<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/bg/state", get(state_json))
            .route("/bg/switch", get(switch_by_get).post(switch))
            .route("/switch", get(switch_by_get).post(switch))
            .route("/bg/drain", axum::routing::post(drain))
            .route("/metrics", get(metrics))
            .merge(crate::api::router(self))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(self.clone())
    }

    /// Counts the requests `router` serves as in-flight connections of
    /// this gate (shown in `/bg/state` and `/metrics`).
    pub fn track_requests<S: Clone + Send + Sync + 'static>(&self, router: Router<S>) -> Router<S> {
        let conns = self.connections().clone();
        router.layer(axum::middleware::from_fn(
            move |req: Request, next: axum::middleware::Next| {
                let guard = conns.track_request();
                async move {
                    let res = next.run(req).await;
                    drop(guard);
                    res
                }
            },
        ))
    }
}

fn source(req: &Request) -> Option<std::net::IpAddr> {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

/// The health answer for `colour`, recorded in the probe log.
///
/// This is the hottest path there is: no allocation, no store round trip
/// (but in strict mode), one atomic load of the view.
async fn health(gate: &Gate, colour: Colour, source: Option<std::net::IpAddr>) -> Response {
    if gate.config().strict {
        gate.refresh().await;
    }
    let now = Instant::now();
    let view = gate.inner.view.load();
    let answer = view.answer(colour, now);
    let counters = &gate.inner.counters;
    match answer {
        Answer::Ok => &counters.answers_ok,
        Answer::Handover => &counters.answers_handover,
        Answer::Stop => &counters.answers_stop,
    }
    .fetch_add(1, Ordering::Relaxed);
    gate.inner.probes.record(Probe {
        source,
        at_ms: now_ms(),
        colour,
        answer: answer.as_str(),
    });
    let cfg = gate.config();
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
    let mut res = (status, body).into_response();
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
    Path(colour): Path<String>,
    req: Request,
) -> Response {
    match colour.parse::<Colour>() {
        Ok(c) => health(&gate, c, source(&req)).await,
        Err(e) => error(StatusCode::BAD_REQUEST, "invalid_input", &e.to_string()),
    }
}

async fn running_service_id(State(gate): State<Gate>) -> String {
    gate.config().colour.to_string()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A JSON error body: `{"kind": …, "message": …}`.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(bg_state::wire::ErrorBody::new(kind, message))).into_response()
}

/// The status and body a store error is answered with (`docs/api.md`).
pub(crate) fn store_error(e: &StoreError) -> Response {
    let (status, body) = bg_state::wire::error_body(e);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

/// Authorises a write, counting refusals.
pub(crate) async fn authorise(gate: &Gate, headers: &HeaderMap) -> Result<String, Response> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    gate.inner.auth.check(authorization).await.map_err(|r| {
        gate.inner
            .counters
            .auth_refusals
            .fetch_add(1, Ordering::Relaxed);
        let (status, kind) = match r {
            Refusal::Missing | Refusal::Invalid => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Refusal::Off | Refusal::ClaimsNotAllowed => (StatusCode::FORBIDDEN, "forbidden"),
        };
        let mut res = error(status, kind, r.message());
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res
    })
}

/// Reads a JSON body of at most [`MAX_BODY`] bytes within the body timeout;
/// an empty body is `None`.
pub(crate) async fn json_body<T: for<'de> Deserialize<'de>>(
    gate: &Gate,
    req: Request,
) -> Result<Option<T>, Response> {
    let limit = gate.config().body_timeout;
    let bytes = match tokio::time::timeout(limit, Bytes::from_request(req, &())).await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                "the request body did not arrive in time",
            ));
        }
        Ok(Err(rejection)) => {
            let status = rejection.status();
            let kind = if status == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "invalid_input"
            };
            return Err(error(status, kind, &rejection.body_text()));
        }
        Ok(Ok(b)) => b,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            &format!("malformed JSON body: {e}"),
        )
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    to: Option<Colour>,
    expect_generation: Option<u64>,
    reason: Option<String>,
    request_id: Option<String>,
}

async fn switch(State(gate): State<Gate>, req: Request) -> Response {
    let actor = match authorise(&gate, req.headers()).await {
        Ok(a) => a,
        Err(res) => return res,
    };
    let body: SwitchBody = match json_body(&gate, req).await {
        Ok(b) => b.unwrap_or_default(),
        Err(res) => return res,
    };
    let cfg = gate.config();
    // The hand-made endpoint's meaning: make the other colour live.
    let to = body.to.unwrap_or(cfg.colour.other());
    let mut request = SwitchRequest::new(to, actor);
    request.expect_generation = body.expect_generation;
    request.reason = body.reason;
    request.request_id = body.request_id;
    match bounded(cfg.store_timeout, gate.store().switch(&cfg.app, request)).await {
        Ok(out) => {
            if out.changed {
                gate.inner.counters.switches.fetch_add(1, Ordering::Relaxed);
            }
            gate.refresh().await;
            Json(json!({ "changed": out.changed, "state": out.state })).into_response()
        }
        Err(e) => store_error(&e),
    }
}

async fn switch_by_get() -> Response {
    let mut res = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "switching takes POST with a bearer token (the hand-made GET /switch is gone: see docs/migration.md)",
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    res
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    batch: Option<usize>,
    interval_ms: Option<u64>,
}

async fn drain(State(gate): State<Gate>, req: Request) -> Response {
    if let Err(res) = authorise(&gate, req.headers()).await {
        return res;
    }
    let body: Option<DrainBody> = match json_body(&gate, req).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let answer = gate.answer(gate.config().colour);
    if answer.is_ok() {
        return error(
            StatusCode::CONFLICT,
            "live",
            "this colour still answers OK (live or in handover): draining it would cut live traffic",
        );
    }
    let batch = body
        .as_ref()
        .and_then(|b| b.batch)
        .unwrap_or(10)
        .clamp(1, 10_000);
    let interval =
        Duration::from_millis(body.and_then(|b| b.interval_ms).unwrap_or(1000).min(60_000));
    let asked = gate.connections().drain(batch, interval);
    (
        StatusCode::ACCEPTED,
        Json(json!({ "asked": asked, "batch": batch, "interval_ms": interval.as_millis() as u64 })),
    )
        .into_response()
}

async fn state_json(State(gate): State<Gate>) -> Json<Value> {
    let now = Instant::now();
    let view = gate.view();
    let cfg = gate.config();
    let answer = view.answer(cfg.colour, now);
    let handover_ms_left = match (answer, view.handover) {
        (Answer::Handover, Some((_, until))) => {
            Some(until.saturating_duration_since(now).as_millis() as u64)
        }
        _ => None,
    };
    Json(json!({
        "app": cfg.app,
        "gate_id": cfg.gate_id,
        "colour": cfg.colour,
        "version": cfg.service_version,
        "answer": answer.as_str(),
        "live": answer.is_ok(),
        "active": view.state.as_ref().map(|s| s.active),
        "generation": view.generation(),
        "handover_ms_left": handover_ms_left,
        "stale_ms": view.stale_ms(now, gate.inner.started),
        "from_cache": view.from_cache,
        "strict": cfg.strict,
        "store": {
            "backend": gate.store().backend(),
            "healthy": view.store_error.is_none(),
            "error": view.store_error,
        },
        "alarm": view.alarm,
        "connections": {
            "websockets": gate.connections().websockets(),
            "requests": gate.connections().requests(),
        },
        "probes": gate.inner.probes.snapshot(),
        "state": view.state,
    }))
}

async fn metrics(State(gate): State<Gate>) -> Response {
    use std::fmt::Write;
    let now = Instant::now();
    let view = gate.view();
    let cfg = gate.config();
    let c = &gate.inner.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "bg_gate_answers_total",
        "counter",
        "Health answers given, by answer.",
        &[
            ("{answer=\"ok\"}", load(&c.answers_ok)),
            ("{answer=\"handover\"}", load(&c.answers_handover)),
            ("{answer=\"stop\"}", load(&c.answers_stop)),
        ],
    );
    metric(
        "bg_gate_live",
        "gauge",
        "1 if this gate's colour answers OK.",
        &[("", u64::from(view.answer(cfg.colour, now).is_ok()))],
    );
    metric(
        "bg_gate_generation",
        "gauge",
        "The generation the gate answers from (0: nothing known).",
        &[("", view.generation())],
    );
    metric(
        "bg_gate_stale_milliseconds",
        "gauge",
        "Time since the store last confirmed the view.",
        &[("", view.stale_ms(now, gate.inner.started))],
    );
    metric(
        "bg_gate_store_up",
        "gauge",
        "1 if the last store read succeeded.",
        &[("", u64::from(view.store_error.is_none()))],
    );
    metric(
        "bg_gate_store_errors_total",
        "counter",
        "Failed store reads.",
        &[("", load(&c.store_errors))],
    );
    metric(
        "bg_gate_alarm",
        "gauge",
        "1 while the store disagrees with the gate (lost state, lower generation).",
        &[("", u64::from(view.alarm.is_some()))],
    );
    metric(
        "bg_gate_alarms_total",
        "counter",
        "Alarms raised.",
        &[("", load(&c.alarms))],
    );
    metric(
        "bg_gate_websockets",
        "gauge",
        "Open tracked websockets.",
        &[("", gate.connections().websockets())],
    );
    metric(
        "bg_gate_requests_in_flight",
        "gauge",
        "Tracked requests in flight.",
        &[("", gate.connections().requests())],
    );
    metric(
        "bg_gate_switches_total",
        "counter",
        "Switches made through this gate.",
        &[("", load(&c.switches))],
    );
    metric(
        "bg_gate_auth_refusals_total",
        "counter",
        "Write requests refused for credentials.",
        &[("", load(&c.auth_refusals))],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
