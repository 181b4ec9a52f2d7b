//! The outermost per-request middleware: X-Request-ID, the request's log
//! span, problem+json rendering of every error (with its correlation id,
//! including the framework's own rejections), metrics and the access log.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::{ProblemSpec, PROBLEM_JSON};
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-request-id";
const MAX_REQUEST_ID: usize = 128;

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
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_owned();
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let start = Instant::now();

    let mut resp = next.run(req).instrument(span.clone()).await;

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
    span.in_scope(|| {
        tracing::info!(
            status,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        )
    });
    resp
}
