//! The status page, `GET /bg/ui`, and its data, `GET /bg/ui/data`: the
//! gate's app as people would rather look at it during a release. Both are
//! on the admin router only and read the store (never the view, except for
//! the generation the change stream starts from); neither takes a token,
//! and neither shows the lease's fence.
//!
//! The page is one self-contained document: the snapshot rendered here
//! (`render.rs`), readable with scripts off, plus one inline script
//! (`page.js`) that follows the change stream and renders the data again,
//! and one inline style sheet (`page.css`). The Content-Security-Policy
//! allows exactly those two by their SHA-256 hashes and nothing else but
//! requests to the page's own origin.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bg_state::{Colour, Event, EventKind, Lease, Presence, State as AppState};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::reply::{HttpError, method_not_allowed};
use crate::core::{Gate, bounded};

mod render;

/// The history events the page shows.
pub(crate) const HISTORY_SHOWN: usize = 20;

/// The page's script, inlined and allowed by its hash.
const SCRIPT: &str = include_str!("page.js");
/// The page's style sheet, inlined and allowed by its hash.
const STYLE: &str = include_str!("page.css");

pub(super) fn router<S: Clone + Send + Sync + 'static>(gate: &Gate) -> Router<S> {
    Router::new()
        .route("/bg/ui", get(page))
        .route("/bg/ui/data", get(data))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(gate.clone())
}

/// What the page shows: the store's state, presence reports, lease and
/// recent history of the gate's app, with nothing a reader must not see
/// (no fence, no idempotency key).
#[derive(Debug, Serialize)]
pub(crate) struct Snapshot {
    app: String,
    /// The gate serving the page.
    gate: GateSelf,
    /// When the snapshot was taken (the gate's clock).
    now_ms: u64,
    /// The generation the change stream is followed from: the gate's view.
    follow: u64,
    state: Option<StateView>,
    gates: Vec<GateView>,
    lease: Option<LeaseView>,
    history: Vec<EventView>,
}

#[derive(Debug, Serialize)]
struct GateSelf {
    gate_id: String,
    colour: Colour,
    version: String,
}

#[derive(Debug, Serialize)]
struct StateView {
    active: Colour,
    generation: u64,
    changed_at_ms: u64,
    changed_by: String,
    reason: Option<String>,
    colours: Vec<ColourView>,
}

#[derive(Debug, Serialize)]
struct ColourView {
    colour: Colour,
    live: bool,
    /// The deploy record: `v2 (deployed)`.
    deployed: Option<String>,
    /// The version it last served live: `v1`, or `v1 (rolled back)`.
    last_live: Option<String>,
}

#[derive(Debug, Serialize)]
struct GateView {
    gate_id: String,
    colour: Colour,
    version: String,
    applied_generation: u64,
    seen_ms_ago: u64,
    view_age_ms: Option<u64>,
    websockets: Option<u64>,
    draining: bool,
    lb_sources: Vec<String>,
}

#[derive(Debug, Serialize)]
struct LeaseView {
    holder: String,
    expires_at_ms: u64,
}

#[derive(Debug, Serialize)]
struct EventView {
    at_ms: u64,
    generation: u64,
    what: String,
    actor: String,
    reason: Option<String>,
}

impl Snapshot {
    /// Reads the store for the gate's app, each read bounded by the gate's
    /// store timeout.
    async fn read(gate: &Gate) -> Result<Snapshot, HttpError> {
        let cfg = gate.config();
        let (store, app, limit) = (gate.store(), &cfg.app, cfg.store_timeout);
        let (state, presences, lease, history) = tokio::join!(
            bounded(limit, store.get(app)),
            bounded(limit, store.presences(app)),
            bounded(limit, store.lease(app)),
            bounded(limit, store.history(app, HISTORY_SHOWN)),
        );
        let now_ms = unix_ms();
        let mut gates: Vec<GateView> = presences?
            .into_iter()
            .map(|p| GateView::of(p, now_ms))
            .collect();
        gates.sort_by(|a, b| (a.colour, &a.gate_id).cmp(&(b.colour, &b.gate_id)));
        Ok(Snapshot {
            app: app.to_string(),
            gate: GateSelf {
                gate_id: cfg.gate_id.clone(),
                colour: cfg.colour,
                version: gate.service_version(),
            },
            now_ms,
            follow: gate.view().generation(),
            state: state?.map(StateView::of),
            gates,
            lease: lease?.map(LeaseView::of),
            history: history?.into_iter().map(EventView::of).collect(),
        })
    }
}

impl StateView {
    fn of(s: AppState) -> Self {
        let colours = Colour::ALL
            .into_iter()
            .map(|colour| ColourView {
                colour,
                live: colour == s.active,
                deployed: s
                    .deployment(colour)
                    .map(|d| format!("{} ({})", d.version, d.phase)),
                last_live: s.live_version(colour).map(|l| {
                    if l.rolled_back {
                        format!("{} (rolled back)", l.version)
                    } else {
                        l.version.clone()
                    }
                }),
            })
            .collect();
        StateView {
            active: s.active,
            generation: s.generation,
            changed_at_ms: s.last_change.at_ms,
            changed_by: s.last_change.actor,
            reason: s.last_change.reason,
            colours,
        }
    }
}

impl GateView {
    fn of(p: Presence, now_ms: u64) -> Self {
        GateView {
            seen_ms_ago: now_ms.saturating_sub(p.seen_at_ms),
            gate_id: p.gate_id,
            colour: p.colour,
            version: p.service_version,
            applied_generation: p.applied_generation,
            view_age_ms: p.view_age_ms,
            websockets: p.websockets,
            draining: p.draining,
            lb_sources: p.lb_sources,
        }
    }
}

impl LeaseView {
    /// Holder and expiry only: the fence is its holder's secret, and the
    /// time it was acquired is left out too, since a store may draw a
    /// fence from its clock at that moment.
    fn of(l: Lease) -> Self {
        LeaseView {
            holder: l.holder,
            expires_at_ms: l.expires_at_ms,
        }
    }
}

impl EventView {
    fn of(e: Event) -> Self {
        let mut what = match &e.kind {
            // Its display names the fence; the page never does.
            EventKind::LeaseBroken { holder, .. } => format!("lease of {holder} broken"),
            kind => kind.to_string(),
        };
        if e.forced {
            what.push_str(" (forced)");
        }
        EventView {
            at_ms: e.at_ms,
            generation: e.generation,
            what,
            actor: e.actor,
            reason: e.reason,
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Standard base64 with padding, as CSP hashes are written.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The page's Content-Security-Policy: nothing but its own inline script
/// and style (by hash) and requests to its own origin.
fn policy() -> &'static HeaderValue {
    static POLICY: OnceLock<HeaderValue> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |text: &str| format!("'sha256-{}'", base64(&Sha256::digest(text.as_bytes())));
        let csp = format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash(SCRIPT),
            hash(STYLE)
        );
        HeaderValue::from_str(&csp)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    })
}

/// The headers both routes carry: never cached, never sniffed, never framed.
fn no_store(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn page(State(gate): State<Gate>) -> Response {
    let (status, html) = match Snapshot::read(&gate).await {
        Ok(snapshot) => (StatusCode::OK, render::page(&snapshot, SCRIPT, STYLE)),
        Err(e) => {
            let message = match &e {
                HttpError::Store(e) => e.to_string(),
                HttpError::Status { message, .. } => message.clone(),
                HttpError::Auth(_) => String::new(),
            };
            let status = e.into_response().status();
            let html = render::unavailable(gate.config().app.as_str(), &message, STYLE);
            (status, html)
        }
    };
    let mut res = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    res.headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, policy().clone());
    res.headers_mut()
        .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    no_store(res)
}

async fn data(State(gate): State<Gate>) -> Response {
    no_store(match Snapshot::read(&gate).await {
        Ok(snapshot) => Json(snapshot).into_response(),
        Err(e) => e.into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_pads_as_the_standard_says() {
        for (raw, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), coded, "{raw:?}");
        }
    }
}
