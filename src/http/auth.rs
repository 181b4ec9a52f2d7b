//! Authentication on the HTTP side: the layer every authenticated route
//! sits behind (key → [`Caller`], the key's rate limit, RateLimit-* headers),
//! and the role extractors handlers name ([`Creator`], [`Viewer`]). A role
//! extractor comes first in a handler's arguments, so the role is checked
//! before the body is read or the path parsed: a viewer gets 403 on a
//! creator route whatever it sent.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::ratelimit::RateDecision;
use super::serve::ClientAddr;
use crate::auth::{AuthError, Caller, ClientNet};
use crate::domain::Role;
use crate::state::AppState;

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::Unauthorized(
                "Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            ),
            AuthError::Invalid => ApiError::Unauthorized("The API key is not valid."),
            AuthError::Inactive => ApiError::Forbidden("The API key is inactive."),
            AuthError::Revoked => ApiError::Forbidden("The API key has been revoked."),
            AuthError::Throttled { retry_after_secs } => ApiError::RateLimited { retry_after_secs },
            AuthError::Busy => ApiError::Unavailable(None),
            AuthError::Verifier(e) => ApiError::unavailable(e),
            AuthError::Store(e) => e.into(),
        }
    }
}

/// The presented key from `Authorization: Bearer` or `X-API-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn rate_headers(headers: &mut HeaderMap, d: &RateDecision) {
    headers.insert("ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// Route layer for every authenticated route: authenticates, applies the
/// key's rate limit, hands the handler a `Caller` (through the role
/// extractors), and adds the RateLimit-* headers to the response.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<ClientAddr>()
        .map_or(ClientNet::UNKNOWN, |a| ClientNet::of(a.0.ip()));
    let caller = match presented_key(req.headers()) {
        None | Some("") => Err(AuthError::Missing),
        Some(token) => state.auth.authenticate(token, source).await,
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let decision = state.limiter.check(
        &caller.key_id,
        caller.rate_limit_per_minute,
        state.clock.now(),
    );
    let mut resp = if decision.allowed {
        req.extensions_mut().insert(caller);
        next.run(req).await
    } else {
        ApiError::RateLimited {
            retry_after_secs: decision.reset_secs,
        }
        .into_response()
    };
    rate_headers(resp.headers_mut(), &decision);
    resp
}

fn caller_with(parts: &Parts, needed: Role) -> Result<Caller, ApiError> {
    let Some(caller) = parts.extensions.get::<Caller>() else {
        // A route that names a role but is not behind `require_key`: a bug.
        tracing::error!("role extractor on a route without the auth layer");
        return Err(ApiError::internal());
    };
    if caller.role.allows(needed) {
        Ok(caller.clone())
    } else {
        Err(ApiError::Forbidden(
            "This key's role does not allow this operation.",
        ))
    }
}

/// A caller whose key may ingest and acknowledge.
pub struct Creator(pub Caller);

/// A caller whose key may read.
pub struct Viewer(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for Creator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        caller_with(parts, Role::Creator).map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        caller_with(parts, Role::Viewer).map(Self)
    }
}
