//! Everything HTTP: the router and its layers ([`app`]), the server loop
//! with its connection limits ([`serve`]), errors as problem+json, the
//! request extractors and parsers, auth glue, cursors, rate limits, the
//! OpenAPI document and the routes. Handlers here are thin: extract, call
//! the service, map.

pub mod auth;
pub mod cursor;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod routes;
pub mod serve;

use std::future::Future;

use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use self::error::ApiError;
pub use self::serve::{serve_with, ClientAddr, ServeConfig, TcpAcceptor};
use crate::metrics::ConnMetrics;
use crate::state::AppState;

async fn not_found() -> ApiError {
    ApiError::NotFound
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    ApiError::internal().into_response()
}

/// The whole HTTP API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(routes::meta::router())
        .merge(openapi::router())
        .merge(routes::events::router(state.clone()))
        .merge(routes::batch::router(state.clone()))
        .merge(routes::leases::router(state.clone()))
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            state.settings.request_timeout,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(from_fn_with_state(state.clone(), observe::observe))
        .with_state(state)
}

/// Serves `app` on `listener` with the default connection limits until
/// `shutdown` resolves, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        TcpAcceptor::new(listener),
        app,
        shutdown,
        ServeConfig::default(),
        ConnMetrics::default(),
    )
    .await
}
