//! The one error type, and the API's problem+json bodies.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;

/// Everything a call can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API answered with an error status (after the retries, if it was
    /// retryable).
    #[error("{0}")]
    Api(Box<Problem>),
    /// No answer: connection refused or reset, timeout, TLS failure (after
    /// the retries).
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// A success status with a body that is not what the API returns.
    #[error("unreadable {status} response: {source}")]
    Decode {
        status: u16,
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded.
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
    /// The client was built with an unusable base URL or key.
    #[error("invalid client configuration: {0}")]
    Config(String),
}

impl Error {
    /// The HTTP status of an error answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(p) => Some(p.status),
            Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code of an error answer.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.problem().map(|p| &p.code)
    }

    /// The error answer, if the API answered.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(p) => Some(p),
            _ => None,
        }
    }
}

/// The API's error codes (`code` of a problem+json body).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(from = "String")]
#[non_exhaustive]
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
    /// Announced for the next API version (idempotency-key conflicts).
    Conflict,
    /// A code this client does not know, as sent; or `HTTP_<status>` for an
    /// error answer that was not problem+json and whose status has no code.
    Other(String),
}

impl ErrorCode {
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::ValidationError => "VALIDATION_ERROR",
            ErrorCode::InvalidCursor => "INVALID_CURSOR",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Forbidden => "FORBIDDEN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::InternalError => "INTERNAL_ERROR",
            ErrorCode::ServiceUnavailable => "SERVICE_UNAVAILABLE",
            ErrorCode::Conflict => "CONFLICT",
            ErrorCode::Other(s) => s,
        }
    }

    /// The code the API uses with this status, for error answers that are
    /// not problem+json (a gateway or proxy answered).
    fn for_status(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            400 => ErrorCode::ValidationError,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            429 => ErrorCode::RateLimited,
            500 => ErrorCode::InternalError,
            503 => ErrorCode::ServiceUnavailable,
            s => ErrorCode::Other(format!("HTTP_{s}")),
        }
    }
}

impl From<String> for ErrorCode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "VALIDATION_ERROR" => ErrorCode::ValidationError,
            "INVALID_CURSOR" => ErrorCode::InvalidCursor,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "FORBIDDEN" => ErrorCode::Forbidden,
            "NOT_FOUND" => ErrorCode::NotFound,
            "METHOD_NOT_ALLOWED" => ErrorCode::MethodNotAllowed,
            "PAYLOAD_TOO_LARGE" => ErrorCode::PayloadTooLarge,
            "UNSUPPORTED_MEDIA_TYPE" => ErrorCode::UnsupportedMediaType,
            "RATE_LIMITED" => ErrorCode::RateLimited,
            "INTERNAL_ERROR" => ErrorCode::InternalError,
            "SERVICE_UNAVAILABLE" => ErrorCode::ServiceUnavailable,
            "CONFLICT" => ErrorCode::Conflict,
            _ => ErrorCode::Other(s),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One invalid field of a `VALIDATION_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FieldError {
    /// The field (e.g. `event_type`, `payload`, `limit`).
    pub field: String,
    pub message: String,
}

/// An error answer: the RFC 9457 problem+json body the API sends, with the
/// HTTP status, and what the client learnt around it.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Problem {
    /// HTTP status.
    pub status: u16,
    pub code: ErrorCode,
    pub title: String,
    pub detail: String,
    /// The request's `X-Request-ID`: quote it when reporting a problem.
    pub correlation_id: String,
    /// A reference to the problem type's documentation.
    #[serde(rename = "type", default)]
    pub type_uri: String,
    /// Every invalid field of a `VALIDATION_ERROR` (empty otherwise).
    #[serde(default)]
    pub errors: Vec<FieldError>,
    /// The answer's `Retry-After` (429 and 503).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// Attempts made, this one included.
    #[serde(skip)]
    pub attempts: u32,
    /// False when the body was not problem+json (a gateway or proxy
    /// answered): `code` then comes from the status, `detail` is the start
    /// of the body.
    #[serde(skip)]
    pub is_problem_json: bool,
}

impl Problem {
    pub(crate) fn from_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        attempts: u32,
    ) -> Problem {
        let is_problem = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/problem+json"));
        let parsed = if is_problem {
            serde_json::from_slice::<Problem>(body).ok()
        } else {
            None
        };
        let mut problem = match parsed {
            Some(mut p) => {
                p.is_problem_json = true;
                p
            }
            None => {
                let text = String::from_utf8_lossy(body);
                Problem {
                    status: status.as_u16(),
                    code: ErrorCode::for_status(status),
                    title: status.canonical_reason().unwrap_or("error").to_owned(),
                    detail: text.chars().take(500).collect(),
                    correlation_id: crate::request_id(headers).unwrap_or_default(),
                    type_uri: String::new(),
                    errors: Vec::new(),
                    retry_after: None,
                    attempts,
                    is_problem_json: false,
                }
            }
        };
        // The status line is authoritative.
        problem.status = status.as_u16();
        problem.retry_after = crate::retry_after(headers);
        problem.attempts = attempts;
        problem
    }

    /// The names of the invalid fields.
    pub fn fields(&self) -> Vec<&str> {
        self.errors.iter().map(|e| e.field.as_str()).collect()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.detail)?;
        if !self.errors.is_empty() {
            let fields: Vec<String> = self
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            write!(f, " [{}]", fields.join("; "))?;
        }
        if !self.correlation_id.is_empty() {
            write!(f, " (correlation_id {})", self.correlation_id)?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_problem_body_maps_every_field() {
        let body = br#"{"type":"/docs#problem-validation-error","title":"Validation failed",
            "status":400,"detail":"The request is not valid; see errors.","code":"VALIDATION_ERROR",
            "correlation_id":"req-1","errors":[{"field":"event_type","message":"required"},
            {"field":"payload","message":"must be an object"}]}"#;
        let p = Problem::from_response(
            StatusCode::BAD_REQUEST,
            &headers(&[("content-type", "application/problem+json")]),
            body,
            1,
        );
        assert_eq!(p.status, 400);
        assert_eq!(p.code, ErrorCode::ValidationError);
        assert_eq!(p.correlation_id, "req-1");
        assert_eq!(p.fields(), ["event_type", "payload"]);
        assert_eq!(p.type_uri, "/docs#problem-validation-error");
        assert!(p.is_problem_json);
        let text = p.to_string();
        assert!(text.contains("400 VALIDATION_ERROR"), "{text}");
        assert!(text.contains("payload: must be an object"), "{text}");
        assert!(text.contains("req-1"), "{text}");
    }

    #[test]
    fn unknown_codes_are_kept_and_known_ones_round_trip() {
        for code in [
            "VALIDATION_ERROR",
            "INVALID_CURSOR",
            "UNAUTHORIZED",
            "FORBIDDEN",
            "NOT_FOUND",
            "METHOD_NOT_ALLOWED",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "RATE_LIMITED",
            "INTERNAL_ERROR",
            "SERVICE_UNAVAILABLE",
            "CONFLICT",
        ] {
            let c = ErrorCode::from(code.to_owned());
            assert!(!matches!(c, ErrorCode::Other(_)), "{code}");
            assert_eq!(c.as_str(), code);
        }
        assert_eq!(
            ErrorCode::from("SOMETHING_NEW".to_owned()),
            ErrorCode::Other("SOMETHING_NEW".into())
        );
    }

    #[test]
    fn a_gateway_answer_that_is_not_problem_json_maps_by_status() {
        let p = Problem::from_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &headers(&[
                ("content-type", "application/json"),
                ("x-request-id", "gw-1"),
            ]),
            br#"{"message":"Service Unavailable"}"#,
            3,
        );
        assert_eq!(p.code, ErrorCode::ServiceUnavailable);
        assert_eq!(p.status, 503);
        assert_eq!(p.correlation_id, "gw-1");
        assert!(p.detail.contains("Service Unavailable"));
        assert!(!p.is_problem_json);
        assert_eq!(p.attempts, 3);
        let p = Problem::from_response(StatusCode::BAD_GATEWAY, &HeaderMap::new(), b"", 1);
        assert_eq!(p.code, ErrorCode::Other("HTTP_502".into()));
    }

    #[test]
    fn retry_after_is_read_from_the_answer() {
        let p = Problem::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[
                ("content-type", "application/problem+json"),
                ("retry-after", "42"),
            ]),
            br#"{"type":"t","title":"Too many requests","status":429,"detail":"d","code":"RATE_LIMITED","correlation_id":"c"}"#,
            1,
        );
        assert_eq!(p.code, ErrorCode::RateLimited);
        assert_eq!(p.retry_after, Some(Duration::from_secs(42)));
    }
}
