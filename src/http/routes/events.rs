//! POST /events, GET /inbox, GET and DELETE /events/{id} (aliased under
//! /inbox/{id}).

use axum::extract::State;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{format_ts, Event, EventId};
use crate::http::auth::{require_key, Creator, Viewer};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{decode_cursor, EventIdParam, InboxParams, JsonBody};
use crate::http::idempotency::{
    respond_idempotently, IdempotencyKeyHeader, IdempotencyKeyParam, Rendered,
};
use crate::service::CreateEvent;
use crate::state::AppState;
use crate::store::{AckOutcome, InboxQuery};

/// Every handler here sits behind `require_key`, applied per method so that
/// a wrong method is a 405 whether or not a key was sent; each names its
/// role first, so the role is checked before the body or path is read.
pub fn router(state: AppState) -> Router<AppState> {
    let auth = || from_fn_with_state(state.clone(), require_key);
    Router::new()
        .route("/events", post(create_event).route_layer(auth()))
        .route("/inbox", get(list_inbox).route_layer(auth()))
        // The path clients of the original service call.
        .route("/events/inbox", get(list_inbox).route_layer(auth()))
        .route(
            "/events/{id}",
            get(get_event).delete(ack_event).route_layer(auth()),
        )
        .route(
            "/inbox/{id}",
            get(get_event).delete(ack_event).route_layer(auth()),
        )
}

/// The body of POST /events (documentation of the accepted shape).
#[derive(ToSchema)]
#[allow(dead_code)]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEventRequest {
    /// 1–255 characters, no control characters (Unicode category Cc, as the
    /// pattern says).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    event_type: String,
    /// Any JSON object, kept exactly as sent; at most 256 KiB. The whole
    /// request may nest at most 128 levels deep.
    #[schema(value_type = Object)]
    payload: serde_json::Value,
    /// At most 255 characters.
    #[schema(max_length = 255)]
    source: Option<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventAccepted {
    #[schema(format = Uuid)]
    pub event_id: String,
    /// Always "accepted".
    pub status: &'static str,
    /// Server receive time of the (original) event, RFC 3339 UTC.
    pub timestamp: String,
    /// True when this request repeated an event sent within the dedup window;
    /// `event_id` is then the original's.
    pub duplicate: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
    /// False only on the last page.
    pub has_more: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct InboxResponse {
    pub events: Vec<Event>,
    pub pagination: Pagination,
}

/// Ingest an event (deduplicated).
#[utoipa::path(post, path = "/events", tag = "events",
    request_body(content = CreateEventRequest, content_type = "application/json"),
    params(IdempotencyKeyParam),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = EventAccepted,
         headers(("Location" = String, description = "/events/{event_id}"),
                 ("Idempotent-Replayed" = String, description = "\"true\" when this is the response kept for the Idempotency-Key, sent again"))),
        (status = 200, description = "Duplicate of an event sent within the window", body = EventAccepted,
         headers(("Location" = String, description = "/events/{event_id} of the original"),
                 ("Idempotent-Replayed" = String, description = "\"true\" when this is the response kept for the Idempotency-Key, sent again"))),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The Idempotency-Key was used for a different request, or the same request is still being processed (then with Retry-After)", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_event(
    State(state): State<AppState>,
    Creator(caller): Creator,
    IdempotencyKeyHeader(key): IdempotencyKeyHeader,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = CreateEvent::parse_json(&body, state.settings.max_payload_bytes)?;
    let work = async {
        let out = state.ingest(&caller.account, req).await?;
        let status = if out.duplicate {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        };
        let accepted = EventAccepted {
            event_id: out.event_id.to_string(),
            status: "accepted",
            timestamp: format_ts(&out.timestamp),
            duplicate: out.duplicate,
        };
        Rendered::json(
            status,
            location(&out.event_id).into_iter().collect(),
            &accepted,
        )
    };
    respond_idempotently(
        &state,
        &caller.account,
        key,
        "POST /events",
        &body,
        location_of_accepted,
        work,
    )
    .await
}

/// `Location: /events/{id}`.
fn location(id: &EventId) -> Option<(HeaderName, HeaderValue)> {
    HeaderValue::try_from(format!("/events/{id}"))
        .ok()
        .map(|v| (header::LOCATION, v))
}

/// The `Location` of a kept [`EventAccepted`] body (for its replay).
fn location_of_accepted(body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
    #[derive(serde::Deserialize)]
    struct Accepted {
        event_id: String,
    }
    serde_json::from_slice::<Accepted>(body)
        .ok()
        .and_then(|a| EventId::parse(&a.event_id))
        .and_then(|id| location(&id))
        .into_iter()
        .collect()
}

/// The caller's undelivered events (not quarantined, leased or not), oldest
/// first; with `state=quarantined`, the quarantined ones.
#[utoipa::path(get, path = "/inbox", tag = "inbox",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 200, description = "Most events per page (default 50). A page also ends early, with has_more true, before the event that would take its events past max_page_bytes (default 1 MiB of payload, metadata, type and source text); every page holds at least one event."),
        ("cursor" = Option<String>, Query, description = "next_cursor from the previous page"),
        ("event_type" = Option<String>, Query, min_length = 1, max_length = 255, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
         description = "Only events of this type (1–255 characters, no control characters)"),
        ("state" = Option<InboxStateParam>, Query, description = "inbox (default): undelivered events that are not quarantined, leased or not; quarantined: the quarantined ones (same paging)"),
    ),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = InboxResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_inbox(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    params: InboxParams,
) -> Result<Json<InboxResponse>, ApiError> {
    let query = InboxQuery {
        after: decode_cursor(&state, &caller.account, params.cursor.as_deref())?,
        event_type: params.event_type,
        state: params.state,
        limit: params.limit,
        max_bytes: state.settings.max_page_bytes,
    };
    let page = state.inbox(&caller.account, &query).await?;
    let next_cursor = match (&page.last, page.has_more) {
        (Some(pos), true) => Some(state.cursors.encode(&caller.account, pos)),
        _ => None,
    };
    Ok(Json(InboxResponse {
        events: page.events,
        pagination: Pagination {
            next_cursor,
            has_more: page.has_more,
        },
    }))
}

/// GET /inbox's `state` (OpenAPI).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
pub enum InboxStateParam {
    Inbox,
    Quarantined,
}

/// One event, delivered or not (delivered ones until retention ends).
#[utoipa::path(get, path = "/events/{id}", tag = "events",
    params(("id" = String, Path, description = "event_id (also served at /inbox/{id})")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = Event),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_event(
    State(state): State<AppState>,
    Viewer(caller): Viewer,
    EventIdParam(id): EventIdParam,
) -> Result<Json<Event>, ApiError> {
    state
        .get_event(&caller.account, &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound)
}

/// Acknowledge an event: it leaves the inbox. Idempotent.
#[utoipa::path(delete, path = "/events/{id}", tag = "events",
    params(("id" = String, Path, description = "event_id (also served at /inbox/{id})")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 204, description = "Acknowledged (or already was)"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ack_event(
    State(state): State<AppState>,
    Creator(caller): Creator,
    EventIdParam(id): EventIdParam,
) -> Result<StatusCode, ApiError> {
    match state.ack(&caller.account, &id).await? {
        AckOutcome::Acknowledged | AckOutcome::AlreadyDelivered => Ok(StatusCode::NO_CONTENT),
        AckOutcome::NotFound => Err(ApiError::NotFound),
    }
}
