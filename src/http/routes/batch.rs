//! POST /events/batch: up to 100 events in one request, each validated and
//! deduplicated as a POST /events would be, written in one store call, and
//! answered item by item in request order.

use axum::extract::State;
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::format_ts;
use crate::http::auth::{require_key, Creator};
use crate::http::error::{ApiError, ErrorCode, FieldError, Problem};
use crate::http::extract::{BatchBody, BatchRequest};
use crate::http::idempotency::{
    respond_idempotently, IdempotencyKeyHeader, IdempotencyKeyParam, Rendered,
};
use crate::service::{CreateEvent, Ingested};
use crate::state::AppState;

/// Behind `require_key` like every ingest route (per method: a wrong
/// method is a 405 with or without a key).
pub fn router(state: AppState) -> Router<AppState> {
    Router::new().route(
        "/events/batch",
        post(create_batch).route_layer(from_fn_with_state(state, require_key)),
    )
}

/// At most this many entries in an item's `errors` (the last one then says
/// how many more there were), so that an answer stays small enough to keep
/// for an idempotency key.
pub const MAX_ITEM_ERRORS: usize = 5;
/// Field names in an item's `errors` are cut to this many characters.
pub const MAX_FIELD_CHARS: usize = 64;
/// Messages are cut to this many characters (none is this long today).
const MAX_MESSAGE_CHARS: usize = 200;

/// The body of POST /events/batch (documentation of the accepted shape).
#[derive(ToSchema)]
#[allow(dead_code)]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchEventsRequest {
    /// 1–100 events, each exactly the body of a POST /events
    /// (`{event_type, payload, source?, metadata?}`, at most 512 KiB, its
    /// payload at most 256 KiB). Each is validated on its own: an invalid
    /// one is answered in its result (400 or 413) and does not reject the
    /// others, so the items are not constrained here.
    #[schema(min_items = 1, max_items = 100, value_type = Vec<serde_json::Value>)]
    events: Vec<serde_json::Value>,
}

/// The outcome of one event of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchItemResult {
    /// The event's position in the request's `events`, from 0.
    pub index: usize,
    /// What a POST /events of this event would have answered: 201 created,
    /// 200 duplicate, 400 invalid, 413 too large.
    pub status: u16,
    /// 201 and 200: the event's id (the original's for a duplicate).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Uuid)]
    pub event_id: Option<String>,
    /// 201 and 200: the (original) event's server receive time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<String>,
    /// 201 and 200: whether the event repeated one sent within the dedup
    /// window (earlier, or earlier in this batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    /// 400 and 413: VALIDATION_ERROR or PAYLOAD_TOO_LARGE.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
    /// 400 and 413: what is wrong, field by field as for POST /events
    /// ("body" is the event as a whole); at most 5 entries, field names
    /// cut to 64 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One result per event, in request order.
    pub results: Vec<BatchItemResult>,
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// The result of an event refused by validation (`e` from
/// [`BatchRequest::parse_json`]: a 400 or a 413).
fn refused(index: usize, e: ApiError) -> BatchItemResult {
    let (status, code, mut errors) = match e {
        ApiError::Validation(errs) => (StatusCode::BAD_REQUEST, ErrorCode::ValidationError, errs),
        ApiError::PayloadTooLarge(msg) => {
            let field = if msg.contains("payload") {
                "payload"
            } else {
                "body"
            };
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                vec![FieldError::new(field, msg)],
            )
        }
        // Not produced by the parser; refused all the same.
        _ => (
            StatusCode::BAD_REQUEST,
            ErrorCode::ValidationError,
            vec![FieldError::new("body", "is not a valid event")],
        ),
    };
    if errors.len() > MAX_ITEM_ERRORS {
        let more = errors.len() - (MAX_ITEM_ERRORS - 1);
        errors.truncate(MAX_ITEM_ERRORS - 1);
        errors.push(FieldError::new("body", format!("and {more} more problems")));
    }
    let errors = errors
        .into_iter()
        .map(|e| FieldError {
            field: cut(&e.field, MAX_FIELD_CHARS),
            message: cut(&e.message, MAX_MESSAGE_CHARS),
        })
        .collect();
    BatchItemResult {
        index,
        status: status.as_u16(),
        event_id: None,
        timestamp: None,
        duplicate: None,
        code: Some(code),
        errors: Some(errors),
    }
}

fn accepted(index: usize, out: &Ingested) -> BatchItemResult {
    BatchItemResult {
        index,
        status: if out.duplicate { 200 } else { 201 },
        event_id: Some(out.event_id.to_string()),
        timestamp: Some(format_ts(&out.timestamp)),
        duplicate: Some(out.duplicate),
        code: None,
        errors: None,
    }
}

/// Splits parsed items into the valid events (to ingest) and the results
/// of the refused ones, by index.
fn split(
    items: Vec<Result<CreateEvent, ApiError>>,
) -> (Vec<(usize, CreateEvent)>, Vec<BatchItemResult>) {
    let mut valid = Vec::new();
    let mut refused_items = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ok(req) => valid.push((i, req)),
            Err(e) => refused_items.push(refused(i, e)),
        }
    }
    (valid, refused_items)
}

/// Every result, in request order.
fn merge(
    accepted_items: Vec<BatchItemResult>,
    refused_items: Vec<BatchItemResult>,
) -> BatchResponse {
    let mut results: Vec<BatchItemResult> =
        accepted_items.into_iter().chain(refused_items).collect();
    results.sort_by_key(|r| r.index);
    BatchResponse { results }
}

/// Ingest up to 100 events in one request (each deduplicated).
#[utoipa::path(post, path = "/events/batch", tag = "events",
    request_body(content = BatchEventsRequest, content_type = "application/json",
        description = "At most 1 MiB (--max-batch-body-bytes). The envelope must be a JSON object with only `events`, an array of 1 to 100 items, and the whole body well-formed JSON; otherwise 400 for the whole request."),
    params(IdempotencyKeyParam),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Every event answered in `results`, in request order; each accepted one (201 or 200) is durable", body = BatchResponse,
         headers(("Idempotent-Replayed" = String, description = "\"true\" when this is the response kept for the Idempotency-Key, sent again"))),
        (status = 400, description = "A malformed envelope (not an object, no events, not an array, 0 or over 100 items, unknown or repeated top-level fields, malformed JSON) or an invalid Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used for a different request, or the same request is still being processed (then with Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "The body is over the batch limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The store failed: no event of the batch is reported written; retry the whole batch (deduplication makes it safe)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_batch(
    State(state): State<AppState>,
    Creator(caller): Creator,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    BatchBody(body): BatchBody,
) -> Result<Response, ApiError> {
    let parsed = BatchRequest::parse_json(
        &body,
        state.settings.max_body_bytes,
        state.settings.max_payload_bytes,
    )?;
    let work = async {
        let (valid, refused_items) = split(parsed.events);
        let (at, reqs): (Vec<usize>, Vec<CreateEvent>) = valid.into_iter().unzip();
        let ingested = state.ingest_batch(&caller.account, reqs).await?;
        let accepted_items = at
            .into_iter()
            .zip(&ingested)
            .map(|(i, out)| accepted(i, out))
            .collect();
        Rendered::json(
            StatusCode::OK,
            Vec::new(),
            &merge(accepted_items, refused_items),
        )
    };
    respond_idempotently(
        &state,
        &caller.account,
        key,
        "POST /events/batch",
        &body,
        |_| Vec::new(),
        work,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventId;

    fn size(r: &BatchResponse) -> usize {
        serde_json::to_vec(r).expect("serialize").len()
    }

    #[test]
    fn an_answer_of_100_accepted_events_is_about_13_kb() {
        let out = Ingested {
            event_id: EventId::new_v7(),
            timestamp: chrono::Utc::now(),
            duplicate: false,
        };
        let r = merge((0..100).map(|i| accepted(i, &out)).collect(), Vec::new());
        let n = size(&r);
        assert!((10_000..14_000).contains(&n), "{n}");
    }

    /// The bound stated in the README for a kept batch answer: 100 items,
    /// each refused with the most and longest errors possible.
    #[test]
    fn the_largest_batch_answer_is_under_192_kib() {
        let body = {
            let fields: Vec<String> = (0..50)
                .map(|i| format!("\"{}{i}\":1", "\\u0001".repeat(300)))
                .collect();
            format!("{{{}}}", fields.join(","))
        };
        let parsed = CreateEvent::parse_json(body.as_bytes(), 1024);
        let Err(e) = parsed else {
            panic!("not refused")
        };
        let one = refused(99, e);
        let errors = one.errors.as_ref().expect("errors");
        assert_eq!(errors.len(), MAX_ITEM_ERRORS);
        assert_eq!(errors[4].message, "and 48 more problems");
        let items = (0..100)
            .map(|i| {
                let Err(e) = CreateEvent::parse_json(body.as_bytes(), 1024) else {
                    panic!("not refused")
                };
                refused(i, e)
            })
            .collect();
        let n = size(&merge(Vec::new(), items));
        assert!(n < 192 * 1024, "{n}");
    }

    #[test]
    fn long_field_names_are_cut_on_a_character_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("ééééé", 2), "éé…");
    }
}
