//! The OpenAPI 3.1 document, generated from the handlers' annotations, and
//! the two routes that serve it (`/openapi.json`, `/docs`).

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::routes::{batch, events, leases, meta};
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Triggers API",
        description = "Systems POST events; each account's consumers read their inbox of undelivered events and acknowledge them."
    ),
    paths(
        meta::index, meta::status, meta::metrics, openapi, docs,
        events::create_event, batch::create_batch, events::list_inbox, events::get_event, events::ack_event,
        leases::lease, leases::ack, leases::release, leases::requeue,
    ),
    components(schemas(super::error::ErrorCode, super::error::FieldError, events::InboxStateParam)),
    modifiers(&Security),
    tags(
        (name = "events", description = "Ingest, read and acknowledge events"),
        (name = "inbox", description = "An account's undelivered events"),
        (name = "leases", description = "Several consumers, one inbox: lease events, then acknowledge or release them; quarantine and requeue"),
        (name = "meta", description = "Service information"),
    )
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/docs", get(docs))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}

/// A page rendering the OpenAPI document; works offline (no CDN).
#[utoipa::path(get, path = "/docs", tag = "meta",
    responses((status = 200, description = "HTML", content_type = "text/html")))]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("docs.html"))
}

struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}
