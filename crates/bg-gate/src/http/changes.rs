//! The change stream, `GET /bg/api/v1/apps/{app}/changes`: a long poll that
//! answers once the app's generation is not the one the client knows. For
//! the gate's own app it waits on the gate's generation broadcast, which the
//! follower's one store subscription feeds; for any other app
//! (`api_any_app`) it reads the store every poll interval through the
//! gate's one store client. No poll opens a subscription of its own.
//!
//! The bookkeeping that keeps the waiting bounded lives here, beside the
//! route: how many polls wait on one admin router, and how many per source
//! address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bg_state::{AppName, wire};
use serde::Deserialize;
use tokio::sync::Semaphore;

use super::api::app_name;
use super::reply::{HttpError, Reply, Segment, method_not_allowed};
use crate::core::{Gate, bounded};

/// The `changes` long polls that may wait at once on one gate (on one
/// [`Gate::admin_router`] and its clones, as the standalone gate serves it).
pub const MAX_POLLS: usize = 1024;
/// The `changes` long polls that may wait at once per source address.
pub const MAX_POLLS_PER_SOURCE: usize = 32;

/// The longest a `changes` long poll waits.
const MAX_LONG_POLL: Duration = Duration::from_secs(25);

/// The long polls waiting: shared by every clone of the router that holds
/// it, so the bounds hold across the listeners it is served on.
#[derive(Debug)]
struct Polls {
    all: Semaphore,
    by_source: Mutex<HashMap<Option<IpAddr>, usize>>,
}

#[derive(Clone)]
struct Changes {
    gate: Gate,
    polls: Arc<Polls>,
}

pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    Router::new()
        .route("/bg/api/v1/apps/{app}/changes", get(changes))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Changes {
            gate: gate.clone(),
            polls: Arc::new(Polls {
                all: Semaphore::new(MAX_POLLS),
                by_source: Mutex::default(),
            }),
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    since: Option<u64>,
    timeout_ms: Option<u64>,
}

/// A place among the polls of one source, given back on drop.
struct SourceSlot<'a> {
    polls: &'a Polls,
    source: Option<IpAddr>,
}

impl<'a> SourceSlot<'a> {
    fn take(polls: &'a Polls, source: Option<IpAddr>) -> Option<Self> {
        let mut by_source = polls
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = by_source.entry(source).or_insert(0);
        if *n >= MAX_POLLS_PER_SOURCE {
            return None;
        }
        *n += 1;
        Some(SourceSlot { polls, source })
    }
}

impl Drop for SourceSlot<'_> {
    fn drop(&mut self) {
        let mut by_source = self
            .polls
            .by_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

async fn changes(
    State(Changes { gate, polls }): State<Changes>,
    Segment(app): Segment,
    query: Result<Query<ChangesQuery>, axum::extract::rejection::QueryRejection>,
    req: Request,
) -> Reply {
    let app = app_name(&gate, &app)?;
    let Ok(Query(q)) = query else {
        return Err(HttpError::bad_request(
            "changes takes ?since=GENERATION&timeout_ms=N",
        ));
    };
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(a)| a.ip());
    let Some(_slot) = SourceSlot::take(&polls, source) else {
        return Err(HttpError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            format!(
                "{MAX_POLLS_PER_SOURCE} change polls from this address are waiting already; \
                 wait for one to end"
            ),
        ));
    };
    let Ok(_permit) = polls.all.try_acquire() else {
        return Err(HttpError::unavailable(
            "too many change polls are waiting on this gate; poll the state instead",
        ));
    };
    let since = q.since.unwrap_or(0);
    let wait = q
        .timeout_ms
        .map_or(MAX_LONG_POLL, Duration::from_millis)
        .min(MAX_LONG_POLL);
    let generation = if app == gate.config().app {
        let mut rx = gate.generations();
        let now = *rx.borrow_and_update();
        if now == since {
            match tokio::time::timeout(wait, rx.wait_for(|g| *g != since)).await {
                Ok(Ok(g)) => Some(*g),
                Ok(Err(_)) => return Err(HttpError::unavailable("the gate is shutting down")),
                Err(_) => None,
            }
        } else {
            Some(now)
        }
    } else {
        poll_store(&gate, &app, since, wait).await?
    };
    let answer = match generation {
        Some(g) => wire::ChangesAnswer {
            changed: true,
            generation: Some(g),
        },
        None => wire::ChangesAnswer {
            changed: false,
            generation: Some(since),
        },
    };
    Ok(Json(answer).into_response())
}

/// The generation of `app` once it is not `since`, read every poll
/// interval until `wait` runs out (`None`).
async fn poll_store(
    gate: &Gate,
    app: &AppName,
    since: u64,
    wait: Duration,
) -> Result<Option<u64>, HttpError> {
    let limit = gate.config().store_timeout;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = bounded(limit, gate.store().get(app))
            .await?
            .map_or(0, |s| s.generation);
        if now != since {
            return Ok(Some(now));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep_until(
            deadline.min(tokio::time::Instant::now() + gate.config().poll_interval),
        )
        .await;
    }
}
