//! Triggers API: systems POST events; each account's consumers read their
//! inbox of undelivered events and acknowledge them.
//!
//! Layers: [`http`] (router, server loop, errors, extractors, routes),
//! [`auth`] (keys: format, verification with budgets, administration),
//! [`service`] (what handlers call), [`domain`] (types, fingerprint),
//! [`store`] (the trait and its backends), [`cli`] and [`config`].
//! [`startup::Application`] is the one start-up path of the binary and the
//! tests. `app(state)` builds the router; `serve(listener, app, shutdown)`
//! runs it on a listener the caller bound (tests bind port 0).

pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod domain;
pub mod http;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod metrics;
pub mod service;
pub mod startup;
pub mod state;
pub mod store;

pub use http::{app, serve};
pub use startup::Application;
pub use state::AppState;
