//! Consumer leases: POST /inbox/lease, /inbox/ack, /inbox/release and
//! POST /events/{id}/requeue. Like every handler: the role first (checked
//! before the body or path is read), then extract, call the service, map.

use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{format_ts, Event, EventId};
use crate::http::auth::{require_key, Creator};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{EventIdParam, JsonBody, SettleParams};
use crate::service::leases::LeaseParams;
use crate::state::AppState;
use crate::store::{RequeueOutcome, Settled};

pub fn router(state: AppState) -> Router<AppState> {
    let auth = || from_fn_with_state(state.clone(), require_key);
    Router::new()
        .route("/inbox/lease", post(lease).route_layer(auth()))
        .route("/inbox/ack", post(ack).route_layer(auth()))
        .route("/inbox/release", post(release).route_layer(auth()))
        .route("/events/{id}/requeue", post(requeue).route_layer(auth()))
}

/// The body of POST /inbox/lease (documentation of the accepted shape;
/// unknown members are refused).
#[derive(ToSchema)]
#[allow(dead_code)]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRequest {
    /// Most events to lease (default 10).
    #[schema(minimum = 1, maximum = 100)]
    limit: Option<u32>,
    /// How long the lease holds its events, in seconds (default 300).
    #[schema(minimum = 1, maximum = 3600)]
    lease_seconds: Option<u32>,
    /// When no event is available, wait up to this many seconds for one
    /// (default 0: answer at once). The call answers as soon as events are
    /// leased, and never later than wait_seconds + 1 s.
    #[schema(minimum = 0, maximum = 20)]
    wait_seconds: Option<u32>,
    /// Only events of this type (1–255 characters, no control characters).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    event_type: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaseResponse {
    /// Names the lease in POST /inbox/ack and /inbox/release; null when no
    /// event was leased.
    #[schema(format = Uuid)]
    pub lease_id: Option<String>,
    /// When the lease ends (RFC 3339 UTC); its events are available again
    /// from then on unless acknowledged. Null when no event was leased.
    pub leased_until: Option<String>,
    /// The leased events, oldest first (each with its new lease_count and
    /// leased_until).
    pub events: Vec<Event>,
}

/// The body of POST /inbox/ack and /inbox/release (unknown members are
/// refused).
#[derive(ToSchema)]
#[allow(dead_code)]
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    /// From POST /inbox/lease.
    #[schema(format = Uuid)]
    lease_id: String,
    /// Some of the lease's events (default: all of them).
    #[schema(min_items = 1, max_items = 100, value_type = Option<Vec<EventIdString>>)]
    event_ids: Option<Vec<String>>,
}

/// An event id in a request body (OpenAPI): the hyphenated form of a
/// UUIDv7; any other string there is refused with 400.
pub struct EventIdString;

impl utoipa::PartialSchema for EventIdString {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(
                "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-7[0-9a-fA-F]{3}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$",
            ))
            .description(Some("An event id (the hyphenated form of a UUIDv7)."))
            .into()
    }
}

impl ToSchema for EventIdString {}

#[derive(Debug, Serialize, ToSchema)]
pub struct AckResponse {
    /// Delivered by this call (exactly as DELETE /events/{id}).
    #[schema(value_type = Vec<String>)]
    pub acknowledged: Vec<EventId>,
    /// Left alone: no longer held by this lease (leased again after it
    /// ended, released, requeued or acknowledged meanwhile) or not of it.
    #[schema(value_type = Vec<String>)]
    pub stale: Vec<EventId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseResponse {
    /// Available again at once (a quarantined event stays quarantined).
    #[schema(value_type = Vec<String>)]
    pub released: Vec<EventId>,
    /// Left alone, as for POST /inbox/ack.
    #[schema(value_type = Vec<String>)]
    pub stale: Vec<EventId>,
}

/// Lease the oldest available events of the caller's account.
#[utoipa::path(post, path = "/inbox/lease", tag = "leases",
    request_body(content = LeaseRequest, content_type = "application/json"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Leased (events may be empty)", body = LeaseResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 429, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn lease(
    State(state): State<AppState>,
    Creator(caller): Creator,
    JsonBody(body): JsonBody,
) -> Result<Json<LeaseResponse>, ApiError> {
    let params = LeaseParams::parse_json(&body)?;
    let leased = state.lease(&caller.account, &params).await?;
    Ok(Json(LeaseResponse {
        lease_id: leased.lease_id.map(|l| l.to_string()),
        leased_until: leased.leased_until.as_ref().map(format_ts),
        events: leased.events,
    }))
}

fn settled_or_404(s: Option<Settled>) -> Result<Settled, ApiError> {
    s.ok_or(ApiError::NotFound)
}

/// Acknowledge events of a lease (all of them unless event_ids is given).
#[utoipa::path(post, path = "/inbox/ack", tag = "leases",
    request_body(content = SettleRequest, content_type = "application/json"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = AckResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such lease for this account", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn ack(
    State(state): State<AppState>,
    Creator(caller): Creator,
    JsonBody(body): JsonBody,
) -> Result<Json<AckResponse>, ApiError> {
    let p = SettleParams::parse_json(&body)?;
    let lease = p.lease_id.ok_or(ApiError::NotFound)?;
    let s = settled_or_404(
        state
            .ack_leased(&caller.account, &lease, p.event_ids.as_deref())
            .await?,
    )?;
    Ok(Json(AckResponse {
        acknowledged: s.done,
        stale: s.stale,
    }))
}

/// Release events of a lease: available again at once.
#[utoipa::path(post, path = "/inbox/release", tag = "leases",
    request_body(content = SettleRequest, content_type = "application/json"),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, body = ReleaseResponse),
        (status = 400, body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such lease for this account", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release(
    State(state): State<AppState>,
    Creator(caller): Creator,
    JsonBody(body): JsonBody,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let p = SettleParams::parse_json(&body)?;
    let lease = p.lease_id.ok_or(ApiError::NotFound)?;
    let s = settled_or_404(
        state
            .release_leased(&caller.account, &lease, p.event_ids.as_deref())
            .await?,
    )?;
    Ok(Json(ReleaseResponse {
        released: s.done,
        stale: s.stale,
    }))
}

/// Take a quarantined event out of quarantine: lease_count 0, available at
/// once.
#[utoipa::path(post, path = "/events/{id}/requeue", tag = "leases",
    params(("id" = String, Path, description = "event_id")),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 200, description = "Requeued", body = Event),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The event is not quarantined", body = Problem, content_type = "application/problem+json"),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn requeue(
    State(state): State<AppState>,
    Creator(caller): Creator,
    EventIdParam(id): EventIdParam,
) -> Result<Json<Event>, ApiError> {
    match state.requeue(&caller.account, &id).await? {
        RequeueOutcome::Requeued(event) => Ok(Json(event)),
        RequeueOutcome::NotQuarantined => Err(ApiError::Conflict(
            "The event is not quarantined (it is available, leased or delivered).",
        )),
        RequeueOutcome::NotFound => Err(ApiError::NotFound),
    }
}
