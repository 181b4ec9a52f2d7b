//! The outermost per-request middleware: X-Request-ID, the request's log
//! span, problem+json rendering of every error (with its correlation id,
//! including the framework's own rejections), metrics and the access log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::error::{ApiError, LoggedCause, ProblemSpec, PROBLEM_JSON};
use crate::metrics::method_label;
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";
const MAX_REQUEST_ID: usize = 128;
/// The most header fields a request may have (431 past it).
pub const MAX_HEADERS: usize = 100;
/// The longest request target, path and query, in bytes (414 past it).
pub const MAX_URI_BYTES: usize = 8192;

/// The request's correlation id, in request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-sent id is kept when it is 1–128 printable ASCII characters.
pub fn sane_request_id(v: &HeaderValue) -> Option<&str> {
    let b = v.as_bytes();
    (!b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| (0x20..0x7f).contains(c)))
        .then(|| v.to_str().ok())
        .flatten()
}

fn is_json(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json") || ct.starts_with(PROBLEM_JSON))
}

pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(sane_request_id)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = method_label(&method),
        route = %route
    );
    let start = Instant::now();

    let too_large = if req.headers().len() > MAX_HEADERS {
        Some(ApiError::HeadersTooLarge { max: MAX_HEADERS })
    } else if req
        .uri()
        .path_and_query()
        .is_some_and(|pq| pq.as_str().len() > MAX_URI_BYTES)
    {
        Some(ApiError::UriTooLong { max: MAX_URI_BYTES })
    } else {
        None
    };
    let mut resp = match too_large {
        Some(e) => axum::response::IntoResponse::into_response(e),
        None => next.run(req).instrument(span.clone()).await,
    };

    if let Some(spec) = resp.extensions_mut().remove::<ProblemSpec>() {
        resp = spec.render_into(resp, &id);
    } else if (resp.status().is_client_error() || resp.status().is_server_error())
        && !is_json(&resp)
    {
        // A rejection from the framework or a layer (405, timeout, …).
        resp = ProblemSpec::for_status(resp.status()).render_into(resp, &id);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let elapsed = start.elapsed();
    let status = resp.status().as_u16();
    state
        .metrics
        .observe_request(&method, &route, status, elapsed.as_secs_f64());
    let latency_ms = elapsed.as_secs_f64() * 1000.0;
    let cause = resp.extensions_mut().remove::<LoggedCause>();
    span.in_scope(|| match cause {
        // The whole cause chain, in the request's own line (with its id).
        Some(LoggedCause(error)) if status >= 500 && status != 503 => {
            tracing::error!(status, latency_ms, error, "request failed")
        }
        Some(LoggedCause(error)) => {
            tracing::warn!(status, latency_ms, error, "request failed")
        }
        None => tracing::info!(status, latency_ms, "request completed"),
    });
    resp
}
