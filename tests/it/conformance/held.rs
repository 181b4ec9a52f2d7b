//! A store decorator for the batch and idempotency cases: it passes every
//! call through to a real store (either backend), except that event
//! inserts (`insert_event`, `insert_events`) can be held until released,
//! refused as unavailable before they reach the store, or carried out and
//! then answered as unavailable (a write whose answer was lost).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use triggers_api::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, LeaseId,
};
use triggers_api::store::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, Insert,
    Inserted, KeyChange, LeaseRequest, NewEvent, RequeueOutcome, Settled, Store, StoreError,
};

use triggers_api::config::Settings;

use crate::support::{test_settings, test_store, Backend, TestApp, TestStore};

/// What event inserts do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Inserts {
    Pass = 0,
    /// Wait for [`Hooks::release`] (each held insert takes one permit).
    Hold = 1,
    /// Refused before the store: nothing written.
    Refuse = 2,
    /// Written, then answered as unavailable (the answer was lost).
    WriteThenFail = 3,
}

/// The switches of a [`Held`] store.
pub struct Hooks {
    mode: AtomicU8,
    permits: Semaphore,
    /// Notified each time an insert starts waiting.
    pub waiting: Notify,
}

impl Hooks {
    pub fn set(&self, mode: Inserts) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Lets one held insert go on.
    pub fn release(&self) {
        self.permits.add_permits(1);
    }

    async fn gate(&self) -> Result<bool, StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            m if m == Inserts::Hold as u8 => {
                self.waiting.notify_one();
                let permit = self.permits.acquire().await.expect("semaphore");
                permit.forget();
                Ok(false)
            }
            m if m == Inserts::Refuse as u8 => {
                Err(StoreError::unavailable("inserts refused (test)"))
            }
            m if m == Inserts::WriteThenFail as u8 => Ok(true),
            _ => Ok(false),
        }
    }
}

/// The decorator.
pub struct Held {
    inner: Arc<dyn Store>,
    hooks: Arc<Hooks>,
}

/// A server on a fresh store of `backend` behind a [`Held`] decorator.
pub async fn held_app(backend: Backend) -> (TestApp, Arc<Hooks>) {
    held_app_with(backend, test_settings()).await
}

/// [`held_app`] with `settings`.
pub async fn held_app_with(backend: Backend, settings: Settings) -> (TestApp, Arc<Hooks>) {
    let base = test_store(backend).await;
    let hooks = Arc::new(Hooks {
        mode: AtomicU8::new(Inserts::Pass as u8),
        permits: Semaphore::new(0),
        waiting: Notify::new(),
    });
    let store = TestStore {
        store: Arc::new(Held {
            inner: base.store.clone(),
            hooks: hooks.clone(),
        }),
        _dir: base._dir,
        location: base.location,
    };
    (TestApp::start_on(store, settings).await, hooks)
}

fn lost() -> StoreError {
    StoreError::unavailable("the answer was lost (test)")
}

#[async_trait]
impl Store for Held {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.inner.secret(name).await
    }
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.create_key(key).await
    }
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_key(key_id).await
    }
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_keys(account).await
    }
    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.update_key(key_id, change).await
    }
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        self.inner.revoke_keys_by_email(email).await
    }
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        let fail_after = self.hooks.gate().await?;
        let out = self.inner.insert_event(event, dedup).await?;
        if fail_after {
            return Err(lost());
        }
        Ok(out)
    }
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        let fail_after = self.hooks.gate().await?;
        let out = self.inner.insert_events(events).await?;
        if fail_after {
            return Err(lost());
        }
        Ok(out)
    }
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        self.inner.claim_idempotency_key(claim).await
    }
    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        self.inner
            .finish_idempotency_key(account, key, token, finish)
            .await
    }
    async fn get_event(
        &self,
        a: &AccountId,
        id: &EventId,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.inner.get_event(a, id, cutoff).await
    }
    async fn inbox(&self, a: &AccountId, q: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.inner.inbox(a, q).await
    }
    async fn ack_event(
        &self,
        a: &AccountId,
        id: &EventId,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.inner.ack_event(a, id, now, cutoff).await
    }
    async fn lease(&self, a: &AccountId, r: &LeaseRequest) -> Result<Vec<Event>, StoreError> {
        self.inner.lease(a, r).await
    }
    async fn ack_leased(
        &self,
        a: &AccountId,
        l: &LeaseId,
        ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.inner.ack_leased(a, l, ids, now, cutoff).await
    }
    async fn release_leased(
        &self,
        a: &AccountId,
        l: &LeaseId,
        ids: Option<&[EventId]>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.inner.release_leased(a, l, ids, cutoff).await
    }
    async fn requeue(
        &self,
        a: &AccountId,
        id: &EventId,
        cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        self.inner.requeue(a, id, cutoff).await
    }
    async fn purge(
        &self,
        d: DateTime<Utc>,
        f: DateTime<Utc>,
        i: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner.purge(d, f, i).await
    }
}
