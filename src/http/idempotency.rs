//! The `Idempotency-Key` header of POST /events and POST /events/batch on
//! the HTTP side: the header's extractor (validated before the body is
//! read) and [`respond_idempotently`], which wraps a handler's work with
//! the claim, the replay and the conflicts (the rules: docs/api.md,
//! "Idempotency keys"; the mechanics: `crate::service::idempotency`).

use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::domain::{AccountId, IdempotencyKey};
use crate::service::idempotency::{request_digest, Begun};
use crate::state::AppState;
use crate::store::KeptResponse;

/// The request header.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// On a replayed response: `Idempotent-Replayed: true`.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
/// How the header is named in errors.
const HEADER_FIELD: &str = "Idempotency-Key";

/// The optional `Idempotency-Key` header, valid (else 400 naming it).
pub struct IdempotencyKeyHeader(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKeyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
        match (values.next(), values.next()) {
            (None, _) => Ok(Self(None)),
            (Some(_), Some(_)) => Err(ApiError::validation(HEADER_FIELD, "must be sent once")),
            (Some(v), None) => IdempotencyKey::parse(v.as_bytes())
                .map(|k| Self(Some(k)))
                .map_err(|e| ApiError::validation(HEADER_FIELD, e.0)),
        }
    }
}

/// A successful answer, rendered: what is sent, and what is kept for the
/// key (status and body; headers are derived from the body again on a
/// replay).
pub struct Rendered {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// JSON.
    pub body: Vec<u8>,
}

impl Rendered {
    /// `value` as JSON with `status` and `headers`.
    pub fn json(
        status: StatusCode,
        headers: Vec<(HeaderName, HeaderValue)>,
        value: &impl serde::Serialize,
    ) -> Result<Self, ApiError> {
        let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(Some(Box::new(e))))?;
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    fn into_response(self, replayed: bool) -> Response {
        let mut resp = (self.status, self.body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            h.insert(name, value);
        }
        if replayed {
            h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        resp
    }
}

/// Answers with `work`, under `key` when the request has one:
///
/// - no key: `work`'s answer;
/// - the key is free (or its record expired): `work` runs; a 2xx is kept
///   for the key before it is sent (if it cannot be kept, 503: the events
///   are durable and a retry is deduplicated into them), anything else
///   releases the key;
/// - the same request was answered: that status and body again, with
///   `Idempotent-Replayed: true` and the headers `replay_headers` derives
///   from the body;
/// - the same request is under way: 409 with `Retry-After`;
/// - the key was used for another request (route and body not
///   byte-identical): 409.
///
/// `route` and the raw `body` make the request's identity
/// ([`request_digest`]). Call it once the request is known valid: answers
/// before it (400, 413, …) never touch the key.
pub async fn respond_idempotently(
    state: &AppState,
    account: &AccountId,
    key: Option<IdempotencyKey>,
    route: &'static str,
    body: &[u8],
    replay_headers: fn(&[u8]) -> Vec<(HeaderName, HeaderValue)>,
    work: impl Future<Output = Result<Rendered, ApiError>>,
) -> Result<Response, ApiError> {
    let Some(key) = key else {
        return work.await.map(|r| r.into_response(false));
    };
    let claim = match state
        .claim_idempotency_key(account, key, request_digest(route, body))
        .await?
    {
        Begun::Claimed(claim) => claim,
        Begun::Replay(KeptResponse { status, body }) => {
            let status =
                StatusCode::from_u16(status).map_err(|e| ApiError::Internal(Some(Box::new(e))))?;
            let rendered = Rendered {
                status,
                headers: replay_headers(&body),
                body,
            };
            return Ok(rendered.into_response(true));
        }
        Begun::InFlight => {
            return Err(ApiError::ConflictRetry(
                "A request with this Idempotency-Key is still being processed; retry after the Retry-After delay.",
            ))
        }
        Begun::OtherRequest => {
            return Err(ApiError::Conflict(
                "This Idempotency-Key was used for a different request (another body or route); use a new key for a new request.",
            ))
        }
    };
    match work.await {
        Ok(rendered) if rendered.status.is_success() => {
            let kept = KeptResponse {
                status: rendered.status.as_u16(),
                body: rendered.body.clone(),
            };
            match claim.keep(kept).await {
                Ok(true) => Ok(rendered.into_response(false)),
                Ok(false) => Err(ApiError::unavailable(
                    "the idempotency claim lapsed before its response could be kept",
                )),
                Err(e) => Err(e.into()),
            }
        }
        Ok(rendered) => {
            claim.release().await;
            Ok(rendered.into_response(false))
        }
        Err(e) => {
            claim.release().await;
            Err(e)
        }
    }
}

/// The optional `Idempotency-Key` header of the ingest routes (OpenAPI).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKeyParam {
    /// Makes retries of this request safe for 24 h: the first answer (a
    /// 2xx) is kept per account and key, and a retry with the same key and
    /// a byte-identical body gets it again, with Idempotent-Replayed: true.
    /// The same key with another body is 409, and so is the same request
    /// while the first is still being processed (with Retry-After). 1–255
    /// printable ASCII characters, not beginning or ending with a space.
    #[param(
        rename = "Idempotency-Key",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]([ -~]{0,253}[!-~])?$"
    )]
    idempotency_key: Option<String>,
}
