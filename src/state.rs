//! The one cloneable application state.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Settings;
use crate::http::cursor::CursorCodec;
use crate::http::ratelimit::RateLimiter;
use crate::metrics::Metrics;
use crate::service::waiters::LeaseWaiters;
use crate::store::timed::{Timed, WriteHealth};
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct AppState {
    /// The store, through the [`Timed`] decorator (one budget per call).
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    pub cursors: Arc<CursorCodec>,
    pub settings: Arc<Settings>,
    /// How recent writes went (for `/status`).
    pub write_health: Arc<WriteHealth>,
    /// Lease calls waiting for events on this instance.
    pub waiters: Arc<LeaseWaiters>,
    /// Turns true when the server begins to shut down: what long-running
    /// requests (long polls) wait on beside their own work.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    pub started: Instant,
}

impl AppState {
    /// Builds the state over `store`, which it wraps in the [`Timed`]
    /// decorator; reads the cursor-signing secret from the store (so every
    /// instance on one store accepts the others' cursors).
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let timed = Timed::new(store, settings.store_timeout, clock.clone());
        let write_health = timed.health();
        let store: Arc<dyn Store> = Arc::new(timed);
        let secret = store.secret("cursor-hmac").await?;
        let metrics = Arc::new(Metrics::new());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        Ok(Self {
            auth: Arc::new(Authenticator::new(
                store.clone(),
                clock.clone(),
                settings.auth.clone(),
                metrics.auth.clone(),
            )),
            store,
            clock,
            limiter: Arc::new(RateLimiter::new()),
            metrics,
            cursors: Arc::new(CursorCodec::new(secret)),
            waiters: Arc::new(LeaseWaiters::new(
                settings.lease_waiters,
                settings.lease_waiters_per_account,
            )),
            settings: Arc::new(settings),
            write_health,
            stopping,
            stop: Arc::new(stop),
            started: Instant::now(),
        })
    }

    /// Tells everything waiting on [`AppState::stopping`] that the server
    /// is shutting down.
    pub fn begin_shutdown(&self) {
        let _ = self.stop.send(true);
    }
}
