//! Unauthenticated routes: service index, status, metrics (the OpenAPI
//! document and its page: `crate::http::openapi`).

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const STATUS_PING_BUDGET: Duration = Duration::from_secs(2);

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
}

#[derive(Serialize, ToSchema)]
pub struct Index {
    pub name: &'static str,
    pub version: &'static str,
    pub links: Links,
}

#[derive(Serialize, ToSchema)]
pub struct Links {
    pub docs: &'static str,
    pub openapi: &'static str,
    pub status: &'static str,
    pub metrics: &'static str,
}

/// Service name, version and links.
#[utoipa::path(get, path = "/", tag = "meta", responses((status = 200, body = Index)))]
pub async fn index() -> Json<Index> {
    Json(Index {
        name: "triggers-api",
        version: VERSION,
        links: Links {
            docs: "/docs",
            openapi: "/openapi.json",
            status: "/status",
            metrics: "/metrics",
        },
    })
}

#[derive(Serialize, ToSchema)]
pub struct StoreStatus {
    /// "sqlite", "dynamodb" or "memory".
    pub backend: &'static str,
    /// The store answered a ping just now.
    pub reachable: bool,
    /// False while recent writes are failing (the latest write failed and
    /// none has succeeded since, within the last minute).
    pub writable: bool,
}

#[derive(Serialize, ToSchema)]
pub struct Status {
    /// "ok" or "degraded".
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_seconds: u64,
    pub store: StoreStatus,
}

/// Health: 200 when the store answers and writes succeed, 503 "degraded"
/// when it does not answer or recent writes are failing.
#[utoipa::path(get, path = "/status", tag = "meta", responses(
    (status = 200, body = Status), (status = 503, body = Status)))]
pub async fn status(State(state): State<AppState>) -> Response {
    let reachable = matches!(
        tokio::time::timeout(STATUS_PING_BUDGET, state.store.ping()).await,
        Ok(Ok(()))
    );
    let writable = !state.write_health.failing(state.clock.now());
    let ok = reachable && writable;
    let body = Status {
        status: if ok { "ok" } else { "degraded" },
        version: VERSION,
        uptime_seconds: state.started.elapsed().as_secs(),
        store: StoreStatus {
            backend: state.store.backend(),
            reachable,
            writable,
        },
    };
    if ok {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            Json(body),
        )
            .into_response()
    }
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
