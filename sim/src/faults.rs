//! Store faults, chosen by the seed: a decorator between the service's
//! `Timed` budget and the real store. A call may fail before it reaches the
//! store, fail *after* a write happened (the caller gets Unavailable and the
//! outcome is unknown), be slow, hang past the store budget (before or after
//! the write: `Timed` must answer 503), or be throttled. How often depends
//! on the current [`Level`], which the run's chaos schedule moves.
//!
//! Besides faults, every call takes a little time, as any real store's
//! does (up to a per-run maximum, possibly zero): requests then overlap
//! inside the service instead of each running to its end in one go.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use triggers_api::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, LeaseId,
};
use triggers_api::store::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, Insert,
    Inserted, KeyChange, LeaseRequest, NewEvent, RequeueOutcome, Settled, Store, StoreError,
};

/// Longer than any store budget: `Timed` gives up first.
const HANG: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Off,
    Light,
    Heavy,
    /// A brownout: every call is slow (a saturated disk, a throttled
    /// table), none fails.
    Slow,
    /// Every call fails.
    Outage,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Off => "off",
            Level::Light => "light",
            Level::Heavy => "heavy",
            Level::Slow => "slow",
            Level::Outage => "outage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    FailBefore,
    FailAfter,
    Latency(Duration),
    HangBefore,
    HangAfter,
    Throttle,
}

/// How many faults of each kind were injected.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultCounts {
    pub fail_before: u64,
    pub fail_after: u64,
    pub latency: u64,
    pub hang: u64,
    pub throttle: u64,
}

struct State {
    rng: ChaCha8Rng,
    level: Level,
    counts: FaultCounts,
}

/// The time one call takes besides faults: up to this (0: none).
#[derive(Debug, Clone, Copy)]
pub struct BaseLatency(pub Duration);

/// The fault schedule's state, shared by the decorator and the chaos actor.
pub struct FaultControl {
    state: Mutex<State>,
    max_latency: Duration,
    base: BaseLatency,
}

impl FaultControl {
    pub fn new(seed: u64, max_latency: Duration, base: BaseLatency) -> Self {
        Self {
            state: Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                level: Level::Off,
                counts: FaultCounts::default(),
            }),
            max_latency,
            base,
        }
    }

    /// How long this call takes besides faults.
    fn base_latency(&self) -> Duration {
        let max = u64::try_from(self.base.0.as_micros()).unwrap_or(0);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.lock().rng.random_range(0..=max))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, level: Level) {
        self.lock().level = level;
    }

    pub fn level(&self) -> Level {
        self.lock().level
    }

    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    fn decide(&self, write: bool) -> Fault {
        let mut s = self.lock();
        // Per mille: fail before, fail after (writes), latency, hang, throttle.
        let [before, after, latency, hang, throttle] = match s.level {
            Level::Off => return Fault::None,
            Level::Light => [15, 15, 80, 5, 15],
            Level::Heavy => [80, 80, 200, 30, 80],
            Level::Slow => [0, 0, 1000, 0, 0],
            Level::Outage => [1000, 0, 0, 0, 0],
        };
        let after = if write { after } else { 0 };
        let roll: u32 = s.rng.random_range(0..1000);
        let max_ms = u64::try_from(self.max_latency.as_millis())
            .unwrap_or(1)
            .max(1);
        let mut edge = 0;
        let mut pick = 5;
        for (i, weight) in [before, after, latency, hang, throttle]
            .into_iter()
            .enumerate()
        {
            edge += weight;
            if roll < edge {
                pick = i;
                break;
            }
        }
        let fault = match pick {
            0 => Fault::FailBefore,
            1 => Fault::FailAfter,
            2 => Fault::Latency(Duration::from_millis(s.rng.random_range(1..=max_ms))),
            3 if write && s.rng.random_bool(0.5) => Fault::HangAfter,
            3 => Fault::HangBefore,
            4 => Fault::Throttle,
            _ => Fault::None,
        };
        let c = &mut s.counts;
        match fault {
            Fault::None => {}
            Fault::FailBefore => c.fail_before += 1,
            Fault::FailAfter => c.fail_after += 1,
            Fault::Latency(_) => c.latency += 1,
            Fault::HangBefore | Fault::HangAfter => c.hang += 1,
            Fault::Throttle => c.throttle += 1,
        }
        fault
    }
}

/// The store as the service sees it in a run: `inner` behind injected faults.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    control: Arc<FaultControl>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>, control: Arc<FaultControl>) -> Self {
        Self { inner, control }
    }

    async fn read<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let base = self.control.base_latency();
        if !base.is_zero() {
            tokio::time::sleep(base).await;
        }
        match self.control.decide(false) {
            Fault::FailBefore | Fault::FailAfter => Err(StoreError::unavailable(
                "injected: connection refused (sim)",
            )),
            Fault::Throttle => Err(StoreError::unavailable("injected: throttled (sim)")),
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                fut.await
            }
            Fault::HangBefore | Fault::HangAfter => {
                tokio::time::sleep(HANG).await;
                fut.await
            }
            Fault::None => fut.await,
        }
    }

    async fn write<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let base = self.control.base_latency();
        if !base.is_zero() {
            tokio::time::sleep(base).await;
        }
        match self.control.decide(true) {
            Fault::FailBefore => Err(StoreError::unavailable(
                "injected: connection refused before the write (sim)",
            )),
            Fault::Throttle => Err(StoreError::unavailable("injected: throttled (sim)")),
            Fault::FailAfter => {
                fut.await?;
                Err(StoreError::unavailable(
                    "injected: connection lost after the write (sim)",
                ))
            }
            Fault::Latency(d) => {
                // Half before the write, half after: a budget that runs out
                // in the second half leaves a write that happened.
                tokio::time::sleep(d / 2).await;
                let out = fut.await;
                tokio::time::sleep(d - d / 2).await;
                out
            }
            Fault::HangBefore => {
                tokio::time::sleep(HANG).await;
                fut.await
            }
            Fault::HangAfter => {
                let out = fut.await;
                tokio::time::sleep(HANG).await;
                out
            }
            Fault::None => fut.await,
        }
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.read(self.inner.ping()).await
    }
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.read(self.inner.secret(name)).await
    }
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.write(self.inner.create_key(key)).await
    }
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.read(self.inner.get_key(key_id)).await
    }
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.read(self.inner.list_keys(account)).await
    }
    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.write(self.inner.update_key(key_id, change)).await
    }
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        self.write(self.inner.revoke_keys_by_email(email)).await
    }
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        self.write(self.inner.insert_event(event, dedup)).await
    }
    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.read(self.inner.get_event(account, event_id, delivered_cutoff))
            .await
    }
    async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        self.read(self.inner.inbox(account, query)).await
    }
    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.write(
            self.inner
                .ack_event(account, event_id, now, delivered_cutoff),
        )
        .await
    }
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        self.write(self.inner.insert_events(events)).await
    }
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        self.write(self.inner.claim_idempotency_key(claim)).await
    }
    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        self.write(
            self.inner
                .finish_idempotency_key(account, key, token, finish),
        )
        .await
    }
    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        self.write(self.inner.lease(account, req)).await
    }
    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.write(
            self.inner
                .ack_leased(account, lease_id, event_ids, now, delivered_cutoff),
        )
        .await
    }
    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.write(
            self.inner
                .release_leased(account, lease_id, event_ids, delivered_cutoff),
        )
        .await
    }
    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        self.write(self.inner.requeue(account, event_id, delivered_cutoff))
            .await
    }
    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
        idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.write(
            self.inner
                .purge(delivered_cutoff, dedup_cutoff, idempotency_cutoff),
        )
        .await
    }
}
