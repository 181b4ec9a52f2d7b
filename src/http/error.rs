//! The HTTP error layer: one enum, mapped to status codes in one `match`,
//! rendered as RFC 9457 problem+json by the `observe` middleware (which adds
//! the correlation id). 5xx bodies are generic; causes are logged.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::{BoxError, StoreError};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ValidationError,
    InvalidCursor,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    InternalError,
    ServiceUnavailable,
    Conflict,
}

/// One entry of a validation failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Everything the API answers with a 4xx or 5xx.
#[derive(Debug)]
pub enum ApiError {
    Validation(Vec<FieldError>),
    InvalidCursor,
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound,
    /// 409: the resource is not in a state that allows this (the detail
    /// says which).
    Conflict(&'static str),
    /// 409 with `Retry-After`: another request holds the resource now (the
    /// detail says which); the same request may succeed later.
    ConflictRetry(&'static str),
    MethodNotAllowed,
    PayloadTooLarge(String),
    /// More request header fields than `max` (431).
    HeadersTooLarge {
        max: usize,
    },
    /// A request target longer than `max` bytes (414).
    UriTooLong {
        max: usize,
    },
    UnsupportedMediaType,
    RateLimited {
        retry_after_secs: u64,
    },
    /// 503; the cause, when known, is logged with the request, never sent.
    Unavailable(Option<BoxError>),
    /// 500; likewise.
    Internal(Option<BoxError>),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// A 500 with no cause worth logging beyond the message already logged.
    pub fn internal() -> Self {
        Self::Internal(None)
    }

    /// A 503 whose cause is `e`.
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(Some(e.into()))
    }

    /// Seconds a client should wait after a 503.
    pub const UNAVAILABLE_RETRY_SECS: u64 = 1;
    /// Seconds a client should wait after a retryable 409.
    pub const CONFLICT_RETRY_SECS: u64 = 1;

    fn spec(&self) -> ProblemSpec {
        use ApiError::*;
        let (status, code, detail, errors, retry_after) = match self {
            Validation(errs) => (
                StatusCode::BAD_REQUEST,
                ErrorCode::ValidationError,
                "The request is not valid; see errors.".to_owned(),
                Some(errs.clone()),
                None,
            ),
            InvalidCursor => (
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidCursor,
                "The cursor is malformed, was altered, or belongs to another account.".to_owned(),
                None,
                None,
            ),
            Unauthorized(why) => (
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                (*why).to_owned(),
                None,
                None,
            ),
            Forbidden(why) => (
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                (*why).to_owned(),
                None,
                None,
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "No such resource.".to_owned(),
                None,
                None,
            ),
            Conflict(why) => (
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                (*why).to_owned(),
                None,
                None,
            ),
            ConflictRetry(why) => (
                StatusCode::CONFLICT,
                ErrorCode::Conflict,
                (*why).to_owned(),
                None,
                Some(Self::CONFLICT_RETRY_SECS),
            ),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "This method is not allowed on this resource; see the Allow header.".to_owned(),
                None,
                None,
            ),
            PayloadTooLarge(what) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                what.clone(),
                None,
                None,
            ),
            HeadersTooLarge { max } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!("The request has more than {max} header fields."),
                None,
                None,
            ),
            UriTooLong { max } => (
                StatusCode::URI_TOO_LONG,
                ErrorCode::PayloadTooLarge,
                format!("The request target is longer than {max} bytes."),
                None,
                None,
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::UnsupportedMediaType,
                "Send the body as application/json.".to_owned(),
                None,
                None,
            ),
            RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "Rate limit exceeded for this key; retry after the Retry-After delay.".to_owned(),
                None,
                Some(*retry_after_secs),
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                "The service is temporarily unavailable; retry after the Retry-After delay."
                    .to_owned(),
                None,
                Some(Self::UNAVAILABLE_RETRY_SECS),
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::InternalError,
                "An internal error occurred; quote the correlation_id when reporting it."
                    .to_owned(),
                None,
                None,
            ),
        };
        ProblemSpec {
            status,
            code,
            detail,
            errors,
            retry_after,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => ApiError::Unavailable(Some(Box::new(e))),
            _ => ApiError::Internal(Some(Box::new(e))),
        }
    }
}

/// Every cause in an error's chain, outermost first, joined by ": " (a
/// message repeated by its own source is written once). What the log line of
/// a failed request carries.
pub fn cause_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut last = out.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !last.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        cur = c.source();
    }
    out
}

/// The cause of a 5xx, for the request's log line (`observe`).
#[derive(Debug, Clone)]
pub struct LoggedCause(pub String);

/// A problem before the correlation id is known; carried in the response's
/// extensions to the `observe` middleware.
#[derive(Debug, Clone)]
pub struct ProblemSpec {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub detail: String,
    pub errors: Option<Vec<FieldError>>,
    pub retry_after: Option<u64>,
}

impl ProblemSpec {
    /// For responses the framework produced without going through ApiError.
    pub fn for_status(status: StatusCode) -> Self {
        let err = match status {
            StatusCode::NOT_FOUND => ApiError::NotFound,
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("The request body is too large.".into())
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
            StatusCode::CONFLICT => ApiError::Conflict("Conflict."),
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized("Authentication required."),
            StatusCode::FORBIDDEN => ApiError::Forbidden("Forbidden."),
            StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited {
                retry_after_secs: 1,
            },
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
                ApiError::Unavailable(None)
            }
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                ApiError::PayloadTooLarge("The request head is too large.".into())
            }
            StatusCode::URI_TOO_LONG => {
                ApiError::PayloadTooLarge("The request target is too long.".into())
            }
            s if s.is_client_error() => {
                ApiError::validation("request", s.canonical_reason().unwrap_or("Bad request"))
            }
            _ => ApiError::internal(),
        };
        err.spec()
    }

    fn title(&self) -> &'static str {
        match self.code {
            ErrorCode::ValidationError => "Validation failed",
            ErrorCode::InvalidCursor => "Invalid cursor",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::InternalError => "Internal server error",
            ErrorCode::ServiceUnavailable => "Service unavailable",
            ErrorCode::Conflict => "Conflict",
        }
    }

    pub fn body(&self, correlation_id: &str) -> Problem {
        let slug = serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(|s| s.to_ascii_lowercase().replace('_', "-")))
            .unwrap_or_default();
        Problem {
            r#type: format!("/docs#problem-{slug}"),
            title: self.title().to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code,
            correlation_id: correlation_id.to_owned(),
            errors: self.errors.clone(),
        }
    }

    /// Writes this problem into `resp` (status, headers, body), keeping the
    /// other headers `resp` already has (e.g. `Allow` on a 405).
    pub fn render_into(&self, mut resp: Response, correlation_id: &str) -> Response {
        let body = serde_json::to_vec(&self.body(correlation_id)).unwrap_or_default();
        *resp.status_mut() = self.status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.remove(header::CONTENT_LENGTH);
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        *resp.body_mut() = axum::body::Body::from(body);
        resp
    }
}

/// The RFC 9457 body every error has.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A reference to this problem type's documentation.
    pub r#type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: ErrorCode,
    /// The request's X-Request-ID.
    pub correlation_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let spec = self.spec();
        // Rendered once here (so the body is never empty) and again by the
        // `observe` middleware with the request's correlation id.
        let mut resp = spec.render_into(Response::new(axum::body::Body::empty()), "");
        resp.extensions_mut().insert(spec);
        if let ApiError::Unavailable(Some(cause)) | ApiError::Internal(Some(cause)) = &self {
            resp.extensions_mut()
                .insert(LoggedCause(cause_chain(cause.as_ref())));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_chain_names_every_cause_once() {
        let io = std::io::Error::other("disk I/O error");
        let e = StoreError::unavailable(io);
        assert_eq!(cause_chain(&e), "store unavailable: disk I/O error");
    }

    #[test]
    fn a_5xx_body_is_generic_and_its_cause_goes_to_the_log_only() {
        let e = ApiError::from(StoreError::internal(std::io::Error::other(
            "no such table: events",
        )));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cause = resp.extensions().get::<LoggedCause>().expect("a cause");
        assert_eq!(cause.0, "store failure: no such table: events");
        let spec = resp.extensions().get::<ProblemSpec>().expect("a problem");
        assert!(!spec.detail.contains("table"), "{}", spec.detail);
    }
}
