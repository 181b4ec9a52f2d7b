//! Authentication without a bcrypt verification per request.
//!
//! A presented key is parsed into (key id, secret); the record is fetched by
//! id (O(1)); bcrypt runs once, on the blocking pool, and the result is kept
//! in memory keyed by SHA-256 of the presented key for `cache_ttl` (30 s by
//! default, which bounds how long a revoked key keeps working). Unknown or
//! wrong keys land in a bounded negative cache, and a key id that keeps
//! failing is refused without bcrypt for a while, so bad keys cannot burn CPU.
//!
//! When a cached entry expires, the record is read again (so a revoked or
//! deactivated key stops working within `cache_ttl`), but bcrypt does not run
//! again if this exact key (by digest) already verified against the very
//! hash the store still holds: the expiry is then a cheap O(1) store read,
//! not a ~250 ms stall of every request with that key.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::apikey;
use crate::domain::{AccountId, ApiKeyRecord, KeyId, KeyStatus, Role};
use crate::error::ApiError;
use crate::ratelimit::RateDecision;
use crate::state::AppState;
use crate::store::{Store, StoreError};

const CACHE_CAPACITY: u64 = 100_000;
const NEGATIVE_CAPACITY: u64 = 100_000;
/// How long a key that verified is remembered (by digest, with the hash it
/// verified against) after its last use, to refresh without bcrypt.
const VERIFIED_IDLE: Duration = Duration::from_secs(3600);
/// Wrong secrets tolerated per key id per `FAILURE_WINDOW` before that key id
/// is refused without verification.
const MAX_FAILURES: u32 = 20;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Who is calling: resolved from a valid, active key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: KeyId,
    pub account: AccountId,
    pub role: Role,
    pub rate_limit_per_minute: u32,
}

impl Caller {
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        if self.role.allows(needed) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "This key's role does not allow this operation.",
            ))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no API key presented")]
    Missing,
    #[error("malformed, unknown or wrong API key")]
    Invalid,
    #[error("key is inactive")]
    Inactive,
    #[error("key is revoked")]
    Revoked,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing => ApiError::Unauthorized(
                "Send an API key as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
            ),
            AuthError::Invalid => ApiError::Unauthorized("The API key is not valid."),
            AuthError::Inactive => ApiError::Forbidden("The API key is inactive."),
            AuthError::Revoked => ApiError::Forbidden("The API key has been revoked."),
            AuthError::Store(e) => e.into(),
        }
    }
}

#[derive(Debug, Clone)]
struct Verified {
    record: ApiKeyRecord,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    store_timeout: Duration,
    positive: moka::future::Cache<[u8; 32], Arc<Verified>>,
    negative: moka::sync::Cache<[u8; 32], ()>,
    failures: moka::sync::Cache<KeyId, Arc<std::sync::atomic::AtomicU32>>,
    /// Digest of a presented key -> the bcrypt hash it verified against.
    verified_hashes: moka::sync::Cache<[u8; 32], Arc<str>>,
    bcrypt_slots: Semaphore,
}

impl Authenticator {
    pub fn new(store: Arc<dyn Store>, cache_ttl: Duration) -> Self {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            store,
            store_timeout: Duration::from_secs(5),
            positive: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(cache_ttl)
                .build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(cache_ttl)
                .build(),
            failures: moka::sync::Cache::builder()
                .max_capacity(NEGATIVE_CAPACITY)
                .time_to_live(FAILURE_WINDOW)
                .build(),
            verified_hashes: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(VERIFIED_IDLE)
                .build(),
            bcrypt_slots: Semaphore::new(slots),
        }
    }

    /// Bounds the key lookup like every other store call (default 5 s).
    pub fn with_store_timeout(mut self, store_timeout: Duration) -> Self {
        self.store_timeout = store_timeout;
        self
    }

    /// Checks a presented key; `Ok` only for an existing, active key whose
    /// secret verifies.
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let digest = apikey::digest(token);
        if self.negative.contains_key(&digest) {
            return Err(AuthError::Invalid);
        }
        let verified = match self.positive.get(&digest).await {
            Some(v) => v,
            None => {
                // Concurrent requests with the same new key share one
                // verification.
                let res = self.positive.try_get_with(digest, self.verify(token)).await;
                res.map_err(unshare)?
            }
        };
        let r = &verified.record;
        match r.status {
            KeyStatus::Active => Ok(Caller {
                key_id: r.key_id.clone(),
                account: r.account.clone(),
                role: r.role,
                rate_limit_per_minute: r.rate_limit_per_minute,
            }),
            KeyStatus::Inactive => Err(AuthError::Inactive),
            KeyStatus::Revoked => Err(AuthError::Revoked),
        }
    }

    async fn verify(&self, token: &str) -> Result<Arc<Verified>, AuthError> {
        let digest = apikey::digest(token);
        let Some(presented) = apikey::parse(token) else {
            self.negative.insert(digest, ());
            return Err(AuthError::Invalid);
        };
        let failures = self.failures.get(&presented.key_id);
        if failures
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed) >= MAX_FAILURES)
        {
            return Err(AuthError::Invalid);
        }
        let lookup =
            tokio::time::timeout(self.store_timeout, self.store.get_key(&presented.key_id));
        let found = match lookup.await {
            Ok(r) => r?,
            Err(elapsed) => return Err(StoreError::unavailable(elapsed).into()),
        };
        let Some(record) = found else {
            self.negative.insert(digest, ());
            return Err(AuthError::Invalid);
        };
        // Verified before against this same hash: no need to run bcrypt again
        // (the record, and so its status, is fresh from the store).
        if self
            .verified_hashes
            .get(&digest)
            .is_some_and(|h| *h == *record.secret_hash)
        {
            return Ok(Arc::new(Verified { record }));
        }
        let ok = {
            let _slot = self
                .bcrypt_slots
                .acquire()
                .await
                .map_err(|_| AuthError::Invalid)?;
            let secret = presented.secret.to_owned();
            let hash = record.secret_hash.clone();
            tokio::task::spawn_blocking(move || bcrypt::verify(secret, &hash).unwrap_or(false))
                .await
                .unwrap_or(false)
        };
        if !ok {
            self.negative.insert(digest, ());
            self.failures
                .get_with(presented.key_id.clone(), Default::default)
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(AuthError::Invalid);
        }
        self.verified_hashes
            .insert(digest, Arc::from(record.secret_hash.as_str()));
        Ok(Arc::new(Verified { record }))
    }
}

/// An error moka handed to several waiters at once, back as our own.
fn unshare(e: Arc<AuthError>) -> AuthError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| match &*shared {
        // The store error itself went to the first waiter (and its log line).
        AuthError::Store(_) => AuthError::Store(StoreError::unavailable("key lookup failed")),
        AuthError::Missing => AuthError::Missing,
        AuthError::Invalid => AuthError::Invalid,
        AuthError::Inactive => AuthError::Inactive,
        AuthError::Revoked => AuthError::Revoked,
    })
}

/// The presented key from `Authorization: Bearer` or `X-API-Key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn rate_headers(headers: &mut HeaderMap, d: &RateDecision) {
    headers.insert("ratelimit-limit", HeaderValue::from(d.limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(d.remaining));
    headers.insert("ratelimit-reset", HeaderValue::from(d.reset_secs));
}

/// Route layer for every authenticated route: authenticates, applies the
/// key's rate limit, hands the handler a `Caller`, and adds the RateLimit-*
/// headers to the response.
pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = match presented_key(req.headers()) {
        None | Some("") => Err(AuthError::Missing),
        Some(token) => state.auth.authenticate(token).await,
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let decision = state.limiter.check(
        &caller.key_id,
        caller.rate_limit_per_minute,
        state.clock.now(),
    );
    let mut resp = if decision.allowed {
        req.extensions_mut().insert(caller);
        next.run(req).await
    } else {
        ApiError::RateLimited {
            retry_after_secs: decision.reset_secs,
        }
        .into_response()
    };
    rate_headers(resp.headers_mut(), &decision);
    resp
}
