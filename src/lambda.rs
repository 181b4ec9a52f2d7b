//! The AWS Lambda entry (`--features lambda`, binary `bootstrap`): the same
//! `app()` router and state as the server, behind API Gateway (HTTP API,
//! payload 2.0) instead of our own connection loop.
//!
//! Configured by the environment exactly like `serve` (`TRIGGERS_STORE=
//! dynamodb://PREFIX`, `TRIGGERS_*` limits, the AWS chain for credentials).
//! A cold start opens the store client and reads the cursor secret: no table
//! creation, no key listing, no bcrypt. Connection limits belong to API
//! Gateway here; the purge loop is not needed on DynamoDB, whose TTL removes
//! delivered events and dedup records (reads already hide what is expired).
//! The client address for the bcrypt budgets is API Gateway's `sourceIp`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::{from_fn, Next};
use axum::response::Response;
use clap::Parser;
use lambda_http::request::RequestContext;
use lambda_http::RequestExt;

use crate::clock::SystemClock;
use crate::config::{Cli, ServeArgs, Settings};
use crate::http::ClientAddr;
use crate::state::AppState;

/// API Gateway's view of the caller's address, as the auth budgets' source.
async fn client_addr(mut req: Request, next: Next) -> Response {
    let ip = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.source_ip.as_deref(),
        _ => None,
    }
    .and_then(|s| s.parse::<IpAddr>().ok());
    if let Some(ip) = ip {
        req.extensions_mut()
            .insert(ClientAddr(SocketAddr::new(ip, 0)));
    }
    next.run(req).await
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .without_time()
        .with_ansi(false)
        .try_init();
}

/// Runs the Lambda function until the runtime stops it.
pub async fn run() -> Result<(), lambda_http::Error> {
    let started = std::time::Instant::now();
    init_logging();
    let store_args = Cli::try_parse_from(["bootstrap"])?.store;
    let serve_args = ServeArgs::from_env()?;
    let store = crate::startup::open_store(&store_args).await?;
    let settings = Settings::new(&store_args, &serve_args);
    let state = AppState::new(store, Arc::new(SystemClock), settings).await?;
    let app = crate::http::app(state).layer(from_fn(client_addr));
    tracing::info!(
        init_ms = started.elapsed().as_secs_f64() * 1000.0,
        store = %crate::startup::store_url_text(&store_args.store),
        "function initialised"
    );
    lambda_http::run(app).await
}
