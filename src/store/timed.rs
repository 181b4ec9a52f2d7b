//! The production decorator every store is used through: one time budget
//! for every call (the service, auth, the CLI and the purge loop alike), and
//! a record of how recent writes went, which `/status` reports.
//!
//! Past the budget a call is `Unavailable`: for a write its outcome is then
//! unknown to the caller, which is why ingest is deduplicated (a retry is
//! safe).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, Insert,
    Inserted, KeyChange, LeaseRequest, NewEvent, RequeueOutcome, Settled, Store, StoreError,
};
use crate::clock::Clock;
use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, LeaseId,
};

/// How long a failed write keeps `/status` degraded when no write follows.
pub const WRITE_FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// How recent writes went: `failing` while the latest write failed (for a
/// reason of the store's, not the caller's) and no write has succeeded
/// since, for at most [`WRITE_FAILURE_MEMORY`].
#[derive(Debug, Default)]
pub struct WriteHealth {
    /// Orders outcomes (clock readings can be equal).
    seq: AtomicU64,
    last_ok: AtomicU64,
    last_failure: AtomicU64,
    last_failure_ms: AtomicI64,
}

impl WriteHealth {
    fn record(&self, now_ms: i64, ok: bool) {
        let n = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if ok {
            self.last_ok.fetch_max(n, Ordering::AcqRel);
        } else {
            self.last_failure_ms.store(now_ms, Ordering::Release);
            self.last_failure.fetch_max(n, Ordering::AcqRel);
        }
    }

    /// Whether writes are failing at `now`.
    pub fn failing(&self, now: DateTime<Utc>) -> bool {
        let memory = i64::try_from(WRITE_FAILURE_MEMORY.as_millis()).unwrap_or(i64::MAX);
        self.last_failure.load(Ordering::Acquire) > self.last_ok.load(Ordering::Acquire)
            && now.timestamp_millis() - self.last_failure_ms.load(Ordering::Acquire) < memory
    }
}

/// Wraps a store: every call within `budget`; writes recorded in `health`.
pub struct Timed {
    inner: Arc<dyn Store>,
    budget: Duration,
    clock: Arc<dyn Clock>,
    health: Arc<WriteHealth>,
}

impl Timed {
    pub fn new(inner: Arc<dyn Store>, budget: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            inner,
            budget,
            clock,
            health: Arc::default(),
        }
    }

    /// The write record `/status` reads.
    pub fn health(&self) -> Arc<WriteHealth> {
        self.health.clone()
    }

    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.budget, fut).await {
            Ok(r) => r,
            Err(elapsed) => Err(StoreError::unavailable(elapsed)),
        }
    }

    async fn write<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let out = self.call(fut).await;
        let ok = !matches!(
            out,
            Err(StoreError::Unavailable(_) | StoreError::Internal(_) | StoreError::Corrupt { .. })
        );
        self.health.record(self.clock.now().timestamp_millis(), ok);
        out
    }
}

#[async_trait]
impl Store for Timed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.call(self.inner.ping()).await
    }
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.call(self.inner.secret(name)).await
    }
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.write(self.inner.create_key(key)).await
    }
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.call(self.inner.get_key(key_id)).await
    }
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.call(self.inner.list_keys(account)).await
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
    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.call(self.inner.get_event(account, event_id, delivered_cutoff))
            .await
    }
    async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        self.call(self.inner.inbox(account, query)).await
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
        // Chunks committed before the budget ran out stay done; the next
        // pass goes on from there.
        self.write(
            self.inner
                .purge(delivered_cutoff, dedup_cutoff, idempotency_cutoff),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    #[test]
    fn writes_are_failing_from_a_failure_until_the_next_success() {
        let h = WriteHealth::default();
        assert!(!h.failing(at(1_000)));
        h.record(1_000, true);
        h.record(2_000, false);
        assert!(h.failing(at(2_500)));
        // Order decides, not the clock (readings can be equal).
        h.record(2_000, true);
        assert!(!h.failing(at(2_000)));
    }

    #[test]
    fn a_failure_with_no_write_after_it_is_forgotten_after_a_minute() {
        let h = WriteHealth::default();
        h.record(10_000, false);
        assert!(h.failing(at(69_999)));
        assert!(!h.failing(at(70_000)));
    }
}
