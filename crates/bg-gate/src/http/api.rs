//! The store over HTTP: `/bg/api/v1/apps/{app}/…`, the contract written in
//! `docs/api.md`. Reads go to the store, never to the gate's view; writes
//! are authenticated and recorded as the authenticated caller.

use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bg_state::wire;
use bg_state::{
    AppName, BreakLease, DeployRecord, InitRequest, LeaseRequest, Presence, SwitchRequest,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::reply::{HttpError, Reply, Segment, authorise, json_body, method_not_allowed, require};
use crate::auth::{Caller, Scope};
use crate::core::{Gate, bounded, may_use_fence};

/// How far above the highest generation known (to the store, its gates'
/// presence reports and this gate) a generation floor or a reported
/// generation may reach. A restore needs only "above every gate"; a
/// number near the ceiling would leave the app unable to switch.
pub const GENERATION_MARGIN: u64 = 1_000_000;

pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    Router::new()
        .route("/bg/api/v1/apps/{app}/state", get(state))
        .route("/bg/api/v1/apps/{app}/init", post(init))
        .route("/bg/api/v1/apps/{app}/switch", post(switch))
        .route("/bg/api/v1/apps/{app}/deploys", post(deploy))
        .route("/bg/api/v1/apps/{app}/history", get(history))
        .route("/bg/api/v1/apps/{app}/lease", get(lease).post(acquire))
        .route("/bg/api/v1/apps/{app}/lease/renew", post(renew))
        .route("/bg/api/v1/apps/{app}/lease/release", post(release))
        .route("/bg/api/v1/apps/{app}/lease/break", post(break_lease))
        .route(
            "/bg/api/v1/apps/{app}/presence",
            get(presences).post(presence),
        )
        // A route, not a fallback: a host router may have a fallback of its
        // own, and axum refuses to merge two.
        .route("/bg/api/v1/{*rest}", axum::routing::any(not_found))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gate.clone())
}

async fn not_found() -> HttpError {
    HttpError::not_found("no such API path; see docs/api.md")
}

/// The app of the path, if this gate serves it through the API.
pub(super) fn app_name(gate: &Gate, raw: &str) -> Result<AppName, HttpError> {
    let app = AppName::new(raw)?;
    let own = &gate.config().app;
    if app != *own && !gate.config().api_any_app {
        return Err(HttpError::not_found(format!(
            "this gate serves app {own} only"
        )));
    }
    Ok(app)
}

/// The app, the authenticated caller (whose scope covers `needed`) and
/// the body of a write.
async fn write<T: DeserializeOwned>(
    gate: &Gate,
    app: &str,
    req: Request,
    needed: Scope,
) -> Result<(AppName, Caller, T), HttpError> {
    let app = app_name(gate, app)?;
    let actor = authorise(gate, req.headers(), needed).await?;
    let body = json_body::<T>(gate, req)
        .await?
        .ok_or_else(|| HttpError::bad_request("a JSON body is required"))?;
    Ok((app, actor, body))
}

/// Runs a store call bounded by the gate's store timeout and answers it.
async fn answer<T: serde::Serialize>(
    gate: &Gate,
    fut: impl Future<Output = bg_state::Result<T>>,
) -> Reply {
    let v = bounded(gate.config().store_timeout, fut).await?;
    Ok(Json(v).into_response())
}

/// The highest generation a caller may name for `app`: the highest known
/// plus [`GENERATION_MARGIN`].
async fn generation_bound(gate: &Gate, app: &AppName) -> Result<u64, HttpError> {
    let limit = gate.config().store_timeout;
    let state = bounded(limit, gate.store().get(app)).await?;
    let presences = bounded(limit, gate.store().presences(app)).await?;
    let mut known = state.map_or(0, |s| s.generation);
    known = presences
        .iter()
        .map(|p| p.applied_generation)
        .fold(known, u64::max);
    if *app == gate.config().app {
        known = known.max(gate.view().generation());
    }
    Ok(known.saturating_add(GENERATION_MARGIN))
}

/// Refuses `value` of `field` above [`generation_bound`].
async fn check_generation(
    gate: &Gate,
    app: &AppName,
    field: &str,
    value: u64,
) -> Result<(), HttpError> {
    let bound = generation_bound(gate, app).await?;
    if value > bound {
        return Err(HttpError::bad_request(format!(
            "{field} {value} is more than {GENERATION_MARGIN} above the highest generation known ({}); \
             nothing was changed",
            bound - GENERATION_MARGIN
        )));
    }
    Ok(())
}

/// Refuses (403) a caller presenting `fence` when it is the fence of the
/// lease held now and another credential took that lease; an admin may.
/// A fence that is not the live lease's goes on to the store, which
/// refuses it as stale.
async fn check_fence_owner(
    gate: &Gate,
    app: &AppName,
    caller: &Caller,
    fence: Option<u64>,
) -> Result<(), HttpError> {
    let Some(fence) = fence else {
        return Ok(());
    };
    if caller.scope.allows(Scope::Admin) {
        return Ok(());
    }
    let held = bounded(gate.config().store_timeout, gate.store().lease(app)).await?;
    match held {
        Some(lease) if lease.fence == fence => gate
            .require_lease_owner(caller, &lease)
            .map_err(HttpError::Auth),
        _ => Ok(()),
    }
}

fn ttl(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

async fn state(State(gate): State<Gate>, Segment(app): Segment) -> Reply {
    let app = app_name(&gate, &app)?;
    answer(&gate, async {
        Ok(wire::StateAnswer {
            state: gate.store().get(&app).await?,
        })
    })
    .await
}

async fn init(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::InitBody>(&gate, &app, req, Scope::Admin).await?;
    if let Some(floor) = b.min_generation {
        check_generation(&gate, &app, "min_generation", floor).await?;
    }
    let request = InitRequest {
        active: b.active,
        actor: caller.actor,
        reason: b.reason,
        force: b.force,
        min_generation: b.min_generation,
        version: b.version,
        request_id: b.request_id,
    };
    let res = answer(&gate, async {
        Ok(wire::StateAnswer {
            state: Some(gate.store().init(&app, request).await?),
        })
    })
    .await;
    gate.refresh().await;
    res
}

async fn switch(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::SwitchBody>(&gate, &app, req, Scope::Ci).await?;
    if b.force {
        require(&gate, &caller, Scope::Admin)?;
    }
    check_fence_owner(&gate, &app, &caller, b.fence).await?;
    let request = SwitchRequest {
        to: b.to,
        actor: caller.actor,
        reason: b.reason,
        expect_generation: b.expect_generation,
        fence: b.fence,
        request_id: b.request_id,
        force: b.force,
        rollback: b.rollback,
        leaving_version: b.leaving_version,
    };
    let res = answer(&gate, gate.store().switch(&app, request)).await;
    gate.refresh().await;
    res
}

async fn deploy(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::DeployBody>(&gate, &app, req, Scope::Ci).await?;
    if b.force {
        require(&gate, &caller, Scope::Admin)?;
    }
    check_fence_owner(&gate, &app, &caller, b.fence).await?;
    let mut rec = DeployRecord::new(b.colour, b.version, b.phase, caller.actor);
    rec.fence = b.fence;
    rec.force = b.force;
    rec.request_id = b.request_id;
    answer(&gate, async {
        Ok(wire::StateAnswer {
            state: Some(gate.store().record_deploy(&app, rec).await?),
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(gate): State<Gate>,
    Segment(app): Segment,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Reply {
    let app = app_name(&gate, &app)?;
    let Ok(Query(q)) = query else {
        return Err(HttpError::bad_request("history takes ?limit=N"));
    };
    let limit = q.limit.unwrap_or(20).min(wire::MAX_HISTORY_LIMIT);
    answer(&gate, async {
        Ok(wire::HistoryAnswer {
            events: gate.store().history(&app, limit).await?,
        })
    })
    .await
}

/// The lease held now: its fence only to the credential that took it and
/// to admin ones, never to an anonymous reader.
async fn lease(State(gate): State<Gate>, Segment(app): Segment, headers: HeaderMap) -> Reply {
    let app = app_name(&gate, &app)?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let reader = gate.reader(authorization).await;
    answer(&gate, async {
        let lease = gate.store().lease(&app).await?.map(|l| {
            if reader.as_ref().is_some_and(|r| may_use_fence(r, &l)) {
                l
            } else {
                l.without_fence()
            }
        });
        Ok(wire::LeaseAnswer { lease })
    })
    .await
}

/// Takes the lease for the caller's credential, which the lease records
/// as its owner.
async fn acquire(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::AcquireBody>(&gate, &app, req, Scope::Ci).await?;
    let request = LeaseRequest::new(b.holder, ttl(b.ttl_ms)).owner(caller.credential);
    answer(&gate, async {
        Ok(wire::LeaseAnswer {
            lease: Some(gate.store().acquire_lease(&app, request).await?),
        })
    })
    .await
}

async fn renew(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::RenewBody>(&gate, &app, req, Scope::Ci).await?;
    check_fence_owner(&gate, &app, &caller, Some(b.fence)).await?;
    answer(&gate, async {
        Ok(wire::LeaseAnswer {
            lease: Some(
                gate.store()
                    .renew_lease(&app, b.fence, ttl(b.ttl_ms))
                    .await?,
            ),
        })
    })
    .await
}

async fn release(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::ReleaseBody>(&gate, &app, req, Scope::Ci).await?;
    check_fence_owner(&gate, &app, &caller, Some(b.fence)).await?;
    answer(&gate, async {
        Ok(wire::ReleasedAnswer {
            released: gate.store().release_lease(&app, b.fence).await?,
        })
    })
    .await
}

async fn break_lease(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, caller, b) = write::<wire::BreakBody>(&gate, &app, req, Scope::Admin).await?;
    let request = BreakLease {
        actor: caller.actor,
        reason: b.reason,
    };
    answer(&gate, async {
        Ok(wire::LeaseAnswer {
            lease: gate.store().break_lease(&app, request).await?,
        })
    })
    .await
}

async fn presences(State(gate): State<Gate>, Segment(app): Segment) -> Reply {
    let app = app_name(&gate, &app)?;
    answer(&gate, async {
        Ok(wire::GatesAnswer {
            gates: gate.store().presences(&app).await?,
        })
    })
    .await
}

async fn presence(State(gate): State<Gate>, Segment(app): Segment, req: Request) -> Reply {
    let (app, _caller, b) = write::<wire::PresenceBody>(&gate, &app, req, Scope::Admin).await?;
    check_generation(&gate, &app, "applied_generation", b.applied_generation).await?;
    let mut report = Presence::new(b.gate_id, b.colour, b.service_version, b.applied_generation);
    report.request_id = b.request_id;
    report.view_age_ms = b.view_age_ms;
    report.websockets = b.websockets;
    report.draining = b.draining;
    report.lb_sources = b.lb_sources;
    bounded(
        gate.config().store_timeout,
        gate.store().report_presence(&app, report, ttl(b.ttl_ms)),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
