//! Verifying a presented key without a bcrypt run per request, and without
//! letting anyone who knows a key id burn the server's CPU.
//!
//! A presented key is parsed into (key id, secret); the record is fetched by
//! id (O(1)). bcrypt runs on the blocking pool, and its result is kept in
//! memory keyed by SHA-256 of the presented key for `cache_ttl` (which bounds
//! how long a revoked key keeps working). Wrong keys are cached negatively
//! for as long.
//!
//! - **A secret that verified once keeps working** whatever others send:
//!   when its cache entry expires the record is read again (status is fresh)
//!   and, if the store still holds the hash it verified against, bcrypt does
//!   not run and no budget is consulted.
//! - **Budgets** ([`BcryptBudget`]): at most `per_source` bcrypt runs per key
//!   id and client network per minute, and `per_key` per key id, counted
//!   before bcrypt starts. An attempt over budget is answered at once
//!   ([`AuthError::Throttled`], a 429 with Retry-After), never queued.
//! - **Concurrency**: at most `concurrency` bcrypt runs at once in total and
//!   `per_key_concurrency` for one key id, so one attacked key id cannot take
//!   every verifier from the others. The permits move into the blocking task
//!   and are released exactly when bcrypt ends, even when the request that
//!   started it was abandoned. A run that cannot get a verifier within
//!   `queue_wait` is answered 503 ([`AuthError::Busy`]) and not counted.
//!
//! Time comes from the injected clock (windows, cache expiry), so every rule
//! is testable to the millisecond.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::budget::{BcryptBudget, ClientNet, Reservation};
use super::key;
use crate::clock::Clock;
use crate::domain::{AccountId, ApiKeyRecord, KeyId, KeyStatus, Role};
use crate::store::{Store, StoreError};

const CACHE_CAPACITY: u64 = 100_000;
/// How long a key that verified is remembered (by digest, with the hash it
/// verified against) after its last use, to refresh without bcrypt.
const VERIFIED_IDLE: Duration = Duration::from_secs(3600);
/// Budget windows kept in memory at most.
const MAX_TRACKED_WINDOWS: usize = 100_000;

/// The verifier's limits. Defaults are the service's (README, "Security").
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// How long a verified (or refused) key is served from memory.
    pub cache_ttl: Duration,
    /// bcrypt runs per key id and client network per minute.
    pub per_source_per_minute: u32,
    /// bcrypt runs per key id per minute, whatever the addresses.
    pub per_key_per_minute: u32,
    /// bcrypt runs at once, in total.
    pub concurrency: usize,
    /// bcrypt runs at once for one key id.
    pub per_key_concurrency: usize,
    /// How long an attempt within budget may wait for a free verifier.
    pub queue_wait: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let concurrency = cores.max(2);
        Self {
            cache_ttl: Duration::from_secs(30),
            per_source_per_minute: 20,
            per_key_per_minute: 100,
            concurrency,
            per_key_concurrency: (concurrency / 2).max(1),
            queue_wait: Duration::from_secs(1),
        }
    }
}

/// Who is calling: resolved from a valid, active key.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key_id: KeyId,
    pub account: AccountId,
    pub role: Role,
    pub rate_limit_per_minute: u32,
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
    /// Over the bcrypt budget of this key id (and source): retry later.
    #[error("too many verification attempts for this key id")]
    Throttled { retry_after_secs: u64 },
    /// No verifier free within the wait: retry shortly.
    #[error("every key verifier is busy")]
    Busy,
    /// The bcrypt task died (a panic): nothing was decided, nothing cached.
    #[error("key verification failed")]
    Verifier(#[source] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the verifier reports to `/metrics`: counter handles registered by
/// the metrics registry.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    /// bcrypt runs started.
    pub bcrypt_runs: Counter,
    /// bcrypt runs under way.
    pub bcrypt_in_flight: Gauge,
    /// Attempts refused without bcrypt because they were over budget.
    pub over_budget: Counter,
    /// Attempts answered 503 because no verifier was free in time.
    pub busy: Counter,
}

#[derive(Debug)]
struct Verified {
    record: ApiKeyRecord,
    expires_ms: i64,
}

pub struct Authenticator {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    cfg: AuthConfig,
    ttl_ms: i64,
    positive: moka::future::Cache<[u8; 32], Arc<Verified>>,
    /// Digest of a refused key -> until when it stays refused (clock ms).
    negative: moka::sync::Cache<[u8; 32], i64>,
    /// Digest of a presented key -> the bcrypt hash it verified against.
    verified_hashes: moka::sync::Cache<[u8; 32], Arc<str>>,
    budget: BcryptBudget,
    slots: Arc<Semaphore>,
    key_slots: moka::sync::Cache<KeyId, Arc<Semaphore>>,
    metrics: AuthMetrics,
    high_water: Arc<AtomicU64>,
    check: SecretCheck,
    runner: CheckRunner,
}

/// Checks a secret against a stored hash: `bcrypt::verify`, replaceable for
/// tests of what happens when it fails.
pub type SecretCheck = fn(&str, &str) -> Result<bool, bcrypt::BcryptError>;

fn bcrypt_check(secret: &str, hash: &str) -> Result<bool, bcrypt::BcryptError> {
    bcrypt::verify(secret, hash)
}

/// One secret check, ready to run; it owns the verifier permits it holds.
pub type CheckJob = Box<dyn FnOnce() -> Result<bool, bcrypt::BcryptError> + Send + 'static>;

/// Where a secret check runs: [`on_blocking_pool`] in production, so bcrypt
/// never holds up a runtime worker. Injectable like the clock: a
/// deterministic run (the simulator: one thread, paused time) runs the job
/// as a task of its own runtime, so no thread outside it decides when a
/// check finishes. Either way the job owns its permits, released when the
/// check ends, not when the request that started it goes away.
pub type CheckRunner = fn(CheckJob) -> tokio::task::JoinHandle<Result<bool, bcrypt::BcryptError>>;

/// The production [`CheckRunner`]: tokio's blocking pool.
pub fn on_blocking_pool(
    job: CheckJob,
) -> tokio::task::JoinHandle<Result<bool, bcrypt::BcryptError>> {
    tokio::task::spawn_blocking(job)
}

impl Authenticator {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        cfg: AuthConfig,
        metrics: AuthMetrics,
    ) -> Self {
        let ttl_ms = i64::try_from(cfg.cache_ttl.as_millis()).unwrap_or(i64::MAX);
        Self {
            store,
            clock,
            ttl_ms,
            positive: moka::future::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .build(),
            verified_hashes: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_idle(VERIFIED_IDLE)
                .build(),
            budget: BcryptBudget::new(
                cfg.per_source_per_minute,
                cfg.per_key_per_minute,
                MAX_TRACKED_WINDOWS,
            ),
            slots: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            key_slots: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .build(),
            cfg,
            metrics,
            high_water: Arc::new(AtomicU64::new(0)),
            check: bcrypt_check,
            runner: on_blocking_pool,
        }
    }

    /// Replaces the secret check (bcrypt by default).
    pub fn with_secret_check(mut self, check: SecretCheck) -> Self {
        self.check = check;
        self
    }

    /// Replaces where secret checks run (the blocking pool by default).
    pub fn with_check_runner(mut self, runner: CheckRunner) -> Self {
        self.runner = runner;
        self
    }

    /// The most bcrypt runs that were ever under way at once.
    pub fn bcrypt_high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Checks a presented key from `source`; `Ok` only for an existing,
    /// active key whose secret verifies.
    pub async fn authenticate(&self, token: &str, source: ClientNet) -> Result<Caller, AuthError> {
        let digest = key::digest(token);
        let now = self.now_ms();
        if let Some(until) = self.negative.get(&digest) {
            if until > now {
                return Err(AuthError::Invalid);
            }
            self.negative.invalidate(&digest);
        }
        let verified = match self.positive.get(&digest).await {
            Some(v) if v.expires_ms > now => v,
            stale => {
                if stale.is_some() {
                    self.positive.invalidate(&digest).await;
                }
                // Concurrent requests with the same key share one verification.
                self.positive
                    .try_get_with(digest, self.verify(token, digest, source))
                    .await
                    .map_err(unshare)?
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

    fn refuse(&self, digest: [u8; 32]) -> AuthError {
        self.negative
            .insert(digest, self.now_ms().saturating_add(self.ttl_ms));
        AuthError::Invalid
    }

    fn accept(&self, record: ApiKeyRecord) -> Arc<Verified> {
        Arc::new(Verified {
            record,
            expires_ms: self.now_ms().saturating_add(self.ttl_ms),
        })
    }

    fn reserve(&self, key_id: &KeyId, source: ClientNet) -> Result<Reservation, AuthError> {
        self.budget
            .try_reserve(key_id, source, self.now_ms())
            .map_err(|over| {
                self.metrics.over_budget.inc();
                AuthError::Throttled {
                    retry_after_secs: over.retry_after_secs,
                }
            })
    }

    async fn verify(
        &self,
        token: &str,
        digest: [u8; 32],
        source: ClientNet,
    ) -> Result<Arc<Verified>, AuthError> {
        let Some(presented) = key::parse(token) else {
            return Err(self.refuse(digest));
        };
        let known_hash = self.verified_hashes.get(&digest);
        // A secret never verified costs budget before anything else happens,
        // so an attempt over budget costs not even a store read.
        let mut reservation = match known_hash {
            Some(_) => None,
            None => Some(self.reserve(&presented.key_id, source)?),
        };
        let record = match self.store.get_key(&presented.key_id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                if let Some(r) = reservation {
                    self.budget.refund(r);
                }
                return Err(self.refuse(digest));
            }
            Err(e) => {
                if let Some(r) = reservation {
                    self.budget.refund(r);
                }
                return Err(e.into());
            }
        };
        if let Some(h) = &known_hash {
            if **h == *record.secret_hash {
                return Ok(self.accept(record));
            }
            // The key's hash changed since: verify again, within budget.
            reservation = Some(self.reserve(&presented.key_id, source)?);
        }
        let Some(reservation) = reservation else {
            return Err(AuthError::Invalid);
        };
        let permits = match self.permits(&presented.key_id).await {
            Some(p) => p,
            None => {
                self.budget.refund(reservation);
                self.metrics.busy.inc();
                return Err(AuthError::Busy);
            }
        };
        match self
            .run_bcrypt(presented.secret, &record.secret_hash, permits)
            .await?
        {
            Ok(true) => {
                self.verified_hashes
                    .insert(digest, Arc::from(record.secret_hash.as_str()));
                Ok(self.accept(record))
            }
            Ok(false) => Err(self.refuse(digest)),
            // A hash bcrypt cannot read: the stored record is bad, not the key.
            Err(_) => Err(StoreError::Corrupt {
                what: "key secret hash",
            }
            .into()),
        }
    }

    /// A verifier for `key_id`: its own slot first, then a global one, both
    /// within `queue_wait`.
    async fn permits(&self, key_id: &KeyId) -> Option<[OwnedSemaphorePermit; 2]> {
        let per_key = self.cfg.per_key_concurrency.max(1);
        let key_slots = self
            .key_slots
            .get_with(key_id.clone(), || Arc::new(Semaphore::new(per_key)));
        let deadline = tokio::time::Instant::now() + self.cfg.queue_wait;
        let mine = tokio::time::timeout_at(deadline, key_slots.acquire_owned())
            .await
            .ok()?
            .ok()?;
        let global = tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        Some([mine, global])
    }

    /// Runs bcrypt through the [`CheckRunner`] (the blocking pool). The
    /// permits are held by the job itself, so they are released when bcrypt
    /// ends, not when the request that started it goes away.
    async fn run_bcrypt(
        &self,
        secret: &str,
        hash: &str,
        permits: [OwnedSemaphorePermit; 2],
    ) -> Result<Result<bool, bcrypt::BcryptError>, AuthError> {
        let (secret, hash) = (secret.to_owned(), hash.to_owned());
        let in_flight = self.metrics.bcrypt_in_flight.clone();
        let high_water = self.high_water.clone();
        let check = self.check;
        self.metrics.bcrypt_runs.inc();
        (self.runner)(Box::new(move || {
            let _permits = permits;
            let now = in_flight.inc() + 1;
            let _running = Running(in_flight);
            high_water.fetch_max(u64::try_from(now).unwrap_or(0), Ordering::Relaxed);
            check(&secret, &hash)
        }))
        .await
        .map_err(AuthError::Verifier)
    }
}

/// Counts a bcrypt run as under way until dropped (a panic included).
struct Running(Gauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// An error moka handed to several waiters at once, back as our own.
fn unshare(e: Arc<AuthError>) -> AuthError {
    Arc::try_unwrap(e).unwrap_or_else(|shared| match &*shared {
        // The cause itself went to the first waiter (and its log line).
        AuthError::Store(_) => AuthError::Store(StoreError::unavailable("key lookup failed")),
        AuthError::Verifier(_) => AuthError::Busy,
        AuthError::Missing => AuthError::Missing,
        AuthError::Invalid => AuthError::Invalid,
        AuthError::Inactive => AuthError::Inactive,
        AuthError::Revoked => AuthError::Revoked,
        AuthError::Busy => AuthError::Busy,
        AuthError::Throttled { retry_after_secs } => AuthError::Throttled {
            retry_after_secs: *retry_after_secs,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::sqlite::SqliteStore;
    use crate::store::KeyChange;

    fn panicking_check(_: &str, _: &str) -> Result<bool, bcrypt::BcryptError> {
        panic!("bcrypt panicked (test)")
    }

    async fn fixture(
        check: Option<SecretCheck>,
    ) -> (tempfile::TempDir, Authenticator, String, AuthMetrics) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
        let token = crate::auth::admin::create(
            store.as_ref(),
            "acme",
            "a@acme.example",
            Role::Creator,
            100,
            4,
        )
        .await
        .unwrap()
        .token;
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let metrics = AuthMetrics::default();
        let mut auth = Authenticator::new(store, clock, AuthConfig::default(), metrics.clone());
        if let Some(check) = check {
            auth = auth.with_secret_check(check);
        }
        (dir, auth, token, metrics)
    }

    /// A verifier, its store and clock, and one key of `acme` (bcrypt cost 4).
    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        clock: Arc<ManualClock>,
        auth: Authenticator,
        metrics: AuthMetrics,
        token: String,
    }

    impl Fixture {
        async fn new(cfg: AuthConfig, check: Option<SecretCheck>) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> =
                Arc::new(SqliteStore::open(&dir.path().join("a.db")).unwrap());
            let token = Self::create(store.as_ref()).await;
            let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
            let metrics = AuthMetrics::default();
            let mut auth = Authenticator::new(store.clone(), clock.clone(), cfg, metrics.clone());
            if let Some(check) = check {
                auth = auth.with_secret_check(check);
            }
            Self {
                dir,
                store,
                clock,
                auth,
                metrics,
                token,
            }
        }

        async fn create(store: &dyn Store) -> String {
            crate::auth::admin::create(store, "acme", "a@acme.example", Role::Creator, 100, 4)
                .await
                .unwrap()
                .token
        }

        async fn auth(&self, token: &str) -> Result<Caller, AuthError> {
            self.auth.authenticate(token, ClientNet::UNKNOWN).await
        }

        fn advance_ms(&self, ms: i64) {
            self.clock.advance(chrono::Duration::milliseconds(ms));
        }

        fn key_id(&self) -> KeyId {
            key::parse(&self.token).unwrap().key_id
        }
    }

    /// The same key with the `n`th other secret (same key id, same format).
    fn other_secret(token: &str, n: usize) -> String {
        let (head, last) = token.split_at(token.len() - 1);
        let c = "ABCD"
            .chars()
            .filter(|c| last != c.to_string())
            .nth(n)
            .unwrap();
        format!("{head}{c}")
    }

    fn wrong_secret(token: &str) -> String {
        other_secret(token, 0)
    }

    fn slow_check(secret: &str, hash: &str) -> Result<bool, bcrypt::BcryptError> {
        std::thread::sleep(Duration::from_millis(300));
        bcrypt::verify(secret, hash)
    }

    const TTL_MS: i64 = 30_000;

    #[tokio::test]
    async fn the_right_secret_is_accepted_with_its_records_identity() {
        let f = Fixture::new(AuthConfig::default(), None).await;
        let c = f.auth(&f.token).await.unwrap();
        assert_eq!(c.key_id, f.key_id());
        assert_eq!(
            (c.account.as_str(), c.role, c.rate_limit_per_minute),
            ("acme", Role::Creator, 100)
        );
        assert_eq!(f.metrics.bcrypt_runs.get(), 1);
        assert_eq!(f.auth.bcrypt_high_water(), 1);
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_the_refusal_kept_for_exactly_the_cache_ttl() {
        let f = Fixture::new(AuthConfig::default(), None).await;
        let wrong = wrong_secret(&f.token);
        assert!(matches!(f.auth(&wrong).await, Err(AuthError::Invalid)));
        assert_eq!(f.metrics.bcrypt_runs.get(), 1);
        f.advance_ms(TTL_MS - 1);
        assert!(matches!(f.auth(&wrong).await, Err(AuthError::Invalid)));
        assert_eq!(f.metrics.bcrypt_runs.get(), 1, "refused from memory");
        f.advance_ms(1);
        assert!(matches!(f.auth(&wrong).await, Err(AuthError::Invalid)));
        assert_eq!(f.metrics.bcrypt_runs.get(), 2, "checked again");
        // The right secret of the same key id is not affected.
        assert!(f.auth(&f.token).await.is_ok());
    }

    #[tokio::test]
    async fn a_revoked_key_keeps_working_for_exactly_the_cache_ttl_then_is_refused_without_bcrypt()
    {
        let f = Fixture::new(AuthConfig::default(), None).await;
        assert!(f.auth(&f.token).await.is_ok());
        f.store
            .update_key(&f.key_id(), KeyChange::Status(KeyStatus::Revoked))
            .await
            .unwrap();
        f.advance_ms(TTL_MS - 1);
        assert!(f.auth(&f.token).await.is_ok(), "served from memory");
        f.advance_ms(1);
        assert!(matches!(f.auth(&f.token).await, Err(AuthError::Revoked)));
        f.store
            .update_key(&f.key_id(), KeyChange::Status(KeyStatus::Inactive))
            .await
            .unwrap();
        f.advance_ms(TTL_MS);
        assert!(matches!(f.auth(&f.token).await, Err(AuthError::Inactive)));
        // The record was read again each time; bcrypt ran once.
        assert_eq!(f.metrics.bcrypt_runs.get(), 1);
    }

    #[tokio::test]
    async fn a_secret_is_verified_again_when_the_stored_hash_changed() {
        let f = Fixture::new(AuthConfig::default(), None).await;
        assert!(f.auth(&f.token).await.is_ok());
        let other = bcrypt::hash("another secret", 4).unwrap();
        rusqlite::Connection::open(f.dir.path().join("a.db"))
            .unwrap()
            .execute(
                "UPDATE api_keys SET secret_hash = ?1 WHERE key_id = ?2",
                rusqlite::params![other, f.key_id().as_str()],
            )
            .unwrap();
        f.advance_ms(TTL_MS);
        assert!(matches!(f.auth(&f.token).await, Err(AuthError::Invalid)));
        assert_eq!(f.metrics.bcrypt_runs.get(), 2);
    }

    #[tokio::test]
    async fn verifications_of_two_key_ids_run_at_the_same_time() {
        let f = Fixture::new(AuthConfig::default(), Some(slow_check)).await;
        let second = Fixture::create(f.store.as_ref()).await;
        let (a, b) = tokio::join!(f.auth(&f.token), f.auth(&second));
        assert!(a.is_ok() && b.is_ok());
        assert_eq!(f.auth.bcrypt_high_water(), 2);
        assert_eq!(f.metrics.bcrypt_in_flight.get(), 0);
    }

    #[tokio::test]
    async fn an_attempt_waits_up_to_queue_wait_for_its_key_ids_verifier() {
        let cfg = AuthConfig {
            per_key_concurrency: 1,
            queue_wait: Duration::from_secs(10),
            ..AuthConfig::default()
        };
        let f = Fixture::new(cfg, Some(slow_check)).await;
        let wrong = wrong_secret(&f.token);
        let (a, b) = tokio::join!(f.auth(&f.token), f.auth(&wrong));
        assert!(a.is_ok(), "{a:?}");
        assert!(matches!(b, Err(AuthError::Invalid)), "{b:?}");
        assert_eq!(f.metrics.busy.get(), 0);
        assert_eq!(f.auth.bcrypt_high_water(), 1, "one at a time for a key id");
    }

    #[tokio::test]
    async fn an_attempt_that_finds_no_verifier_in_time_is_busy_and_costs_no_budget() {
        let cfg = AuthConfig {
            per_key_concurrency: 1,
            per_source_per_minute: 1,
            queue_wait: Duration::from_millis(20),
            ..AuthConfig::default()
        };
        let f = Fixture::new(cfg, Some(slow_check)).await;
        let wrong = wrong_secret(&f.token);
        let net = ClientNet::of(std::net::Ipv4Addr::new(10, 0, 0, 1).into());
        let other = ClientNet::of(std::net::Ipv4Addr::new(10, 0, 0, 2).into());
        let (a, b) = tokio::join!(f.auth.authenticate(&f.token, other), async {
            // Once the first attempt holds the key id's verifier (bounded:
            // if it never gets there, fail instead of hanging).
            tokio::time::timeout(Duration::from_secs(5), async {
                while f.metrics.bcrypt_in_flight.get() == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
            .expect("the first attempt never reached the verifier");
            f.auth.authenticate(&wrong, net).await
        });
        assert!(a.is_ok(), "{a:?}");
        assert!(matches!(b, Err(AuthError::Busy)), "{b:?}");
        assert_eq!(f.metrics.busy.get(), 1);
        // The busy attempt was given back: its one run a minute is left.
        assert!(matches!(
            f.auth.authenticate(&wrong, net).await,
            Err(AuthError::Invalid)
        ));
        assert!(matches!(
            f.auth.authenticate(&other_secret(&f.token, 1), net).await,
            Err(AuthError::Throttled { .. })
        ));
    }

    #[tokio::test]
    async fn a_panicking_verifier_decides_nothing_and_caches_nothing() {
        let (_dir, auth, token, metrics) = fixture(Some(panicking_check)).await;
        for _ in 0..2 {
            // Not "invalid" from a negative cache the second time: nothing
            // was cached, the check ran again.
            // 503 either way (the cause stays with the first waiter).
            let e = auth.authenticate(&token, ClientNet::UNKNOWN).await;
            assert!(
                matches!(e, Err(AuthError::Verifier(_) | AuthError::Busy)),
                "{e:?}"
            );
        }
        assert_eq!(metrics.bcrypt_runs.get(), 2);
        assert_eq!(
            metrics.bcrypt_in_flight.get(),
            0,
            "the gauge survives a panic"
        );
    }

    #[tokio::test]
    async fn an_unknown_key_id_costs_a_lookup_but_no_budget_or_bcrypt() {
        let (_dir, auth, token, metrics) = fixture(None).await;
        let unknown = format!("trg_zzzzzzzzzzzzzzzz{}", &token[20..]);
        for _ in 0..50 {
            assert!(matches!(
                auth.authenticate(&unknown, ClientNet::UNKNOWN).await,
                Err(AuthError::Invalid)
            ));
        }
        assert_eq!(metrics.bcrypt_runs.get(), 0);
        assert_eq!(auth.budget.tracked(), 0);
        assert!(auth.authenticate(&token, ClientNet::UNKNOWN).await.is_ok());
    }
}
