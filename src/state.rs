//! The one cloneable application state.

use std::sync::Arc;

use tokio::time::Instant;

use crate::auth::{on_blocking_pool, Authenticator, CheckRunner};
use crate::clock::Clock;
use crate::config::Settings;
use crate::domain::{EventIds, SystemEventIds};
use crate::http::cursor::CursorCodec;
use crate::http::ratelimit::RateLimiter;
use crate::metrics::Metrics;
use crate::service::waiters::LeaseWaiters;
use crate::store::timed::{Timed, WriteHealth};
use crate::store::{Store, StoreError};

/// What the service takes from its surroundings besides the store, the
/// clock and the settings: injected, like the clock, so that a run can be
/// made deterministic (the simulator). `Default` is production.
#[derive(Clone)]
pub struct Providers {
    /// New event ids ([`SystemEventIds`]: UUIDv7 from the wall clock).
    pub event_ids: Arc<dyn EventIds>,
    /// Where bcrypt runs ([`on_blocking_pool`]).
    pub check_runner: CheckRunner,
}

impl Default for Providers {
    fn default() -> Self {
        Self {
            event_ids: Arc::new(SystemEventIds),
            check_runner: on_blocking_pool,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    /// The store, through the [`Timed`] decorator (one budget per call).
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub event_ids: Arc<dyn EventIds>,
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
    /// tokio's clock: the wall clock, or virtual time on a paused runtime.
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
        Self::with_providers(store, clock, settings, Providers::default()).await
    }

    /// [`AppState::new`] with `providers` instead of production's.
    pub async fn with_providers(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        providers: Providers,
    ) -> Result<Self, StoreError> {
        let timed = Timed::new(store, settings.store_timeout, clock.clone());
        let write_health = timed.health();
        let store: Arc<dyn Store> = Arc::new(timed);
        let secret = store.secret("cursor-hmac").await?;
        let metrics = Arc::new(Metrics::new());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        Ok(Self {
            auth: Arc::new(
                Authenticator::new(
                    store.clone(),
                    clock.clone(),
                    settings.auth.clone(),
                    metrics.auth.clone(),
                )
                .with_check_runner(providers.check_runner),
            ),
            store,
            clock,
            event_ids: providers.event_ids,
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
