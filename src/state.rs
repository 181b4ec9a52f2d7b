//! The one cloneable application state.

use std::sync::Arc;
use std::time::Instant;

use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Settings;
use crate::cursor::CursorCodec;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<Authenticator>,
    pub limiter: Arc<RateLimiter>,
    pub metrics: Arc<Metrics>,
    pub cursors: Arc<CursorCodec>,
    pub settings: Arc<Settings>,
    pub started: Instant,
}

impl AppState {
    /// Builds the state; reads the cursor-signing secret from the store (so
    /// every instance on one store accepts the others' cursors).
    pub async fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Result<Self, StoreError> {
        let secret = store.secret("cursor-hmac").await?;
        Ok(Self {
            auth: Arc::new(
                Authenticator::new(store.clone(), settings.auth_cache_ttl)
                    .with_store_timeout(settings.store_timeout),
            ),
            store,
            clock,
            limiter: Arc::new(RateLimiter::new()),
            metrics: Arc::new(Metrics::new()),
            cursors: Arc::new(CursorCodec::new(secret)),
            settings: Arc::new(settings),
            started: Instant::now(),
        })
    }
}
