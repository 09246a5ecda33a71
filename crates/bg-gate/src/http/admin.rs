//! The admin routes, for operators and tools: the gate's state, the
//! authenticated switch (and the hand-made `/switch`), the drain, and
//! Prometheus metrics.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bg_state::wire::{DrainBody, DrainPace, GateStatus, MAX_DRAIN_BATCH};
use bg_state::{Colour, SwitchRequest};
use serde::Deserialize;
use serde_json::json;

use super::reply::{HttpError, Reply, authorise, json_body, method_not_allowed};
use crate::auth::Scope;
use crate::conns::Pace;
use crate::core::{DRAIN_LASTS_AT_MOST, Gate, VerdictKind, Via};

/// `GET /bg/state`, `POST /bg/switch` and `POST /switch` (a `GET` of
/// either is refused with 405), `POST /bg/drain`, `GET /metrics`.
pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    Router::new()
        .route("/bg/state", get(state_json))
        .route("/bg/switch", get(switch_by_get).post(switch))
        .route("/switch", get(switch_by_get).post(switch))
        .route("/bg/drain", post(drain))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gate.clone())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchBody {
    to: Option<Colour>,
    expect_generation: Option<u64>,
    reason: Option<String>,
    request_id: Option<String>,
}

async fn switch(State(gate): State<Gate>, req: Request) -> Reply {
    let actor = authorise(&gate, req.headers(), Scope::Ci).await?.actor;
    let body: SwitchBody = json_body(&gate, req).await?.unwrap_or_default();
    let cfg = gate.config();
    // The hand-made endpoint's meaning: make the other colour live.
    let to = body.to.unwrap_or(cfg.colour.other());
    let mut request = SwitchRequest::new(to, actor);
    request.expect_generation = body.expect_generation;
    request.reason = body.reason;
    request.request_id = body.request_id;
    let out = gate.switch(request).await?;
    Ok(Json(json!({ "changed": out.changed, "state": out.state })).into_response())
}

async fn switch_by_get() -> Response {
    let refused = HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "switching takes POST with a bearer token (the hand-made GET /switch is gone: see docs/migration.md)",
    );
    ([(header::ALLOW, HeaderValue::from_static("POST"))], refused).into_response()
}

/// How long a drain goes on asking websockets that open after it began,
/// unless the request says (`timeout_ms`, at most an hour).
const DRAIN_LASTS: Duration = Duration::from_secs(60);

/// The pace a drain body asks for: by time (`window_ms`, `max_rate`), or
/// `batch` every `interval_ms` as gates of earlier releases took it.
fn drain_pace(body: &DrainBody) -> Result<Pace, HttpError> {
    let by_time = body.window_ms.is_some() || body.max_rate.is_some();
    let by_batch = body.batch.is_some() || body.interval_ms.is_some();
    if by_time && by_batch {
        return Err(HttpError::bad_request(
            "a drain is paced by time (window_ms, max_rate) or by batches (batch, interval_ms), not both",
        ));
    }
    if by_batch {
        return Ok(Pace::Batches {
            batch: body.batch.unwrap_or(10).clamp(1, MAX_DRAIN_BATCH),
            // At least 10 ms between batches: a drain runs for its whole time.
            pause: Duration::from_millis(body.interval_ms.unwrap_or(1000).clamp(10, 60_000)),
        });
    }
    let defaults = DrainPace::default();
    let pace = DrainPace {
        window: body
            .window_ms
            .map_or(defaults.window, Duration::from_millis),
        max_rate: body.max_rate,
    };
    pace.check()
        .map_err(|why| HttpError::bad_request(format!("window_ms and max_rate: {why}")))?;
    Ok(Pace::Window(pace))
}

async fn drain(State(gate): State<Gate>, req: Request) -> Reply {
    authorise(&gate, req.headers(), Scope::Ci).await?;
    let body: DrainBody = json_body(&gate, req).await?.unwrap_or_default();
    let answer = gate.answer(gate.config().colour);
    if answer.is_ok() {
        return Err(HttpError::new(
            StatusCode::CONFLICT,
            "live",
            "this colour still answers OK (live or in handover): draining it would cut live traffic",
        ));
    }
    let pace = drain_pace(&body)?;
    let lasting = match body.timeout_ms {
        Some(0) => {
            return Err(HttpError::bad_request(
                "timeout_ms must be at least 1: it is how long the drain goes on asking",
            ));
        }
        Some(ms) => Duration::from_millis(ms).min(DRAIN_LASTS_AT_MOST),
        None => DRAIN_LASTS,
    };
    let mut asked = gate.drain(pace, Some(lasting)) as u64;
    match gate.drain_service(pace, lasting).await {
        None => {}
        Some(Ok(n)) => asked += n,
        Some(Err(e)) => {
            return Err(HttpError::new(
                StatusCode::BAD_GATEWAY,
                "service_unavailable",
                format!("the service did not take the drain: {e}"),
            ));
        }
    }
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut answer = json!({ "asked": asked, "timeout_ms": ms(lasting) });
    match pace {
        Pace::Window(p) => {
            answer["window_ms"] = json!(ms(p.window));
            answer["max_rate"] = json!(p.max_rate);
        }
        Pace::Batches { batch, pause } => {
            answer["batch"] = json!(batch);
            answer["interval_ms"] = json!(ms(pause));
        }
    }
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

async fn state_json(State(gate): State<Gate>) -> Json<GateStatus> {
    Json(gate.status())
}

async fn metrics(State(gate): State<Gate>) -> Response {
    use std::fmt::Write;
    let view = gate.view();
    let cfg = gate.config();
    let own = gate.verdict(cfg.colour);
    let c = gate.counts();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP bg_gate_answers_total Load balancers' checks answered, by answer and by front end \
         (http: the health routes; agent: the agent check).\n\
         # TYPE bg_gate_answers_total counter"
    );
    for via in Via::ALL {
        for kind in VerdictKind::ALL {
            let (answer, via_name, n) = (kind.as_str(), via.as_str(), c.answers(kind, via));
            let _ = writeln!(
                out,
                "bg_gate_answers_total{{answer=\"{answer}\",via=\"{via_name}\"}} {n}"
            );
        }
    }
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    metric(
        "bg_gate_live",
        "gauge",
        "1 if this gate's colour answers OK.",
        &[("", u64::from(own.is_ok()))],
    );
    if cfg.service.is_some() {
        metric(
            "bg_gate_service_up",
            "gauge",
            "1 while the service beside this gate passes its health checks.",
            &[("", u64::from(gate.service_up()))],
        );
    }
    metric(
        "bg_gate_generation",
        "gauge",
        "The generation the gate answers from (0: nothing known).",
        &[("", own.generation())],
    );
    metric(
        "bg_gate_stale_milliseconds",
        "gauge",
        "Time since the store last confirmed the view.",
        &[("", own.stale_ms())],
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
        &[("", c.store_errors())],
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
        &[("", c.alarms())],
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
        &[("", c.switches())],
    );
    metric(
        "bg_gate_auth_refusals_total",
        "counter",
        "Write requests refused for credentials.",
        &[("", c.auth_refusals())],
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
