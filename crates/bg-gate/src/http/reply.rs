//! What the HTTP layer shares: [`HttpError`], the one way a request ends
//! early, and the two steps every write takes first, [`authorise`] and
//! [`json_body`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bg_state::Error as StoreError;
use bg_state::wire::{self, ErrorBody};
use serde::Deserialize;

use crate::auth::{Caller, Refusal, Scope};
use crate::core::Gate;

/// A handler's answer: `Err` ends the request with an error body, so `?`
/// ends a request.
pub(crate) type Reply = Result<Response, HttpError>;

/// Why a request ends early. Answered as a JSON body
/// `{"kind": …, "message": …}` with its status, as `docs/api.md` lists them.
#[derive(Debug)]
pub(crate) enum HttpError {
    /// A refusal decided here: bad input, no such path, a conflict with
    /// this gate's own state, a timeout.
    Status {
        status: StatusCode,
        kind: &'static str,
        message: String,
    },
    /// The store refused or failed; status and body as `bg_state::wire`
    /// maps them, which the API's clients map back.
    Store(Box<StoreError>),
    /// The credentials did not pass: 401 with `WWW-Authenticate: Bearer`,
    /// or 403 when writing is off or a genuine token is not allowed.
    Auth(Refusal),
}

impl HttpError {
    /// An answer of `status` with `kind` and `message`.
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        HttpError::Status {
            status,
            kind,
            message: message.into(),
        }
    }

    /// `400 invalid_input`.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_input", message)
    }

    /// `404 not_found`.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// `503 unavailable`.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<StoreError> for HttpError {
    fn from(e: StoreError) -> Self {
        HttpError::Store(Box::new(e))
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        match self {
            HttpError::Status {
                status,
                kind,
                message,
            } => (status, Json(ErrorBody::new(kind, message))).into_response(),
            HttpError::Store(e) => {
                let (status, body) = wire::error_body(&e);
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                (status, Json(body)).into_response()
            }
            HttpError::Auth(refusal) => {
                let (status, kind) = match refusal {
                    Refusal::Missing | Refusal::Invalid => {
                        (StatusCode::UNAUTHORIZED, "unauthorized")
                    }
                    Refusal::Off
                    | Refusal::ClaimsNotAllowed
                    | Refusal::NeedsAdmin
                    | Refusal::NotLeaseOwner => (StatusCode::FORBIDDEN, "forbidden"),
                };
                let mut res =
                    (status, Json(ErrorBody::new(kind, refusal.message()))).into_response();
                if status == StatusCode::UNAUTHORIZED {
                    res.headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                }
                res
            }
        }
    }
}

/// One path segment (`{app}`, `{colour}`), percent-decoded; a segment
/// that does not decode to UTF-8 is `400 invalid_input`, like every other
/// bad input, instead of axum's plain-text rejection.
pub(crate) struct Segment(pub(crate) String);

impl<S: Send + Sync> FromRequestParts<S> for Segment {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, HttpError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(s)| Segment(s))
            .map_err(|e| HttpError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

/// The answer to a method a route does not take: `405
/// method_not_allowed` (axum adds the `Allow` header).
pub(crate) async fn method_not_allowed() -> HttpError {
    HttpError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this path does not take that method; the Allow header lists those it takes",
    )
}

/// Who a write is authorised as, from its `Authorization` header, if its
/// credential's scope covers `needed`; refusals are counted.
pub(crate) async fn authorise(
    gate: &Gate,
    headers: &HeaderMap,
    needed: Scope,
) -> Result<Caller, HttpError> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    gate.authorise(authorization, needed)
        .await
        .map_err(HttpError::Auth)
}

/// Refuses (403, counted) a `caller` whose scope does not cover `needed`.
pub(crate) fn require(gate: &Gate, caller: &Caller, needed: Scope) -> Result<(), HttpError> {
    gate.require(caller, needed).map_err(HttpError::Auth)
}

/// Reads a JSON body of at most [`MAX_BODY`](crate::MAX_BODY) bytes within
/// the gate's body timeout; an empty body is `None`.
pub(crate) async fn json_body<T: for<'de> Deserialize<'de>>(
    gate: &Gate,
    req: Request,
) -> Result<Option<T>, HttpError> {
    let limit = gate.config().body_timeout;
    let bytes = match tokio::time::timeout(limit, Bytes::from_request(req, &())).await {
        Err(_) => {
            return Err(HttpError::new(
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
            return Err(HttpError::new(status, kind, rejection.body_text()));
        }
        Ok(Ok(b)) => b,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| HttpError::bad_request(format!("malformed JSON body: {e}")))
}
