//! Deliberately broken stores, to show that the checker catches what it
//! claims to: each wraps a correct store and breaks one promise of the
//! store contract. The harness's own tests run a seed over each and expect
//! the checker to fail naming the invariant.

use std::collections::BTreeSet;
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
    Inserted, KeyChange, LeaseRequest, NewEvent, Position, RequeueOutcome, Settled, Store,
    StoreError,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Broken {
    /// Answers some inserts as created without storing them (expect `lost`).
    DropsWrite,
    /// Now and then puts another account's event in an inbox page (expect
    /// `cross-tenant`).
    LeaksAccount,
    /// Starts each next page at the last event of the previous one, an
    /// off-by-one cursor (expect `walk-repeat`).
    RepeatsEntry,
    /// Loses its dedup records when the server restarts (expect
    /// `duplicated`).
    ForgetsDedup,
    /// Now and then leases as if every running lease had ended: hands an
    /// event still under an unexpired lease to a second one (expect
    /// `double-lease`).
    StealsLeases,
}

impl Broken {
    pub const ALL: [Broken; 5] = [
        Broken::DropsWrite,
        Broken::LeaksAccount,
        Broken::RepeatsEntry,
        Broken::ForgetsDedup,
        Broken::StealsLeases,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Broken::DropsWrite => "drops-write",
            Broken::LeaksAccount => "leaks-account",
            Broken::RepeatsEntry => "repeats-entry",
            Broken::ForgetsDedup => "forgets-dedup",
            Broken::StealsLeases => "steals-leases",
        }
    }

    /// The invariant the checker must name for this store.
    pub fn expected_invariant(self) -> &'static str {
        match self {
            Broken::DropsWrite => "lost",
            Broken::LeaksAccount => "cross-tenant",
            Broken::RepeatsEntry => "walk-repeat",
            Broken::ForgetsDedup => "duplicated",
            Broken::StealsLeases => "double-lease",
        }
    }
}

/// A broken store over `inner`.
pub struct BrokenStore {
    kind: Broken,
    inner: Arc<dyn Store>,
    state: Mutex<State>,
}

struct State {
    rng: ChaCha8Rng,
    accounts: BTreeSet<AccountId>,
    /// When the server last restarted (for `ForgetsDedup`).
    restarted_at: Option<DateTime<Utc>>,
}

impl BrokenStore {
    pub fn new(kind: Broken, inner: Arc<dyn Store>, seed: u64) -> Self {
        Self {
            kind,
            inner,
            state: Mutex::new(State {
                rng: ChaCha8Rng::seed_from_u64(seed),
                accounts: BTreeSet::new(),
                restarted_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The server restarted at `now`.
    pub fn restarted(&self, now: DateTime<Utc>) {
        self.lock().restarted_at = Some(now);
    }

    fn chance(&self, p: f64) -> bool {
        self.lock().rng.random_bool(p)
    }
}

#[async_trait]
impl Store for BrokenStore {
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
        self.lock().accounts.insert(event.account.clone());
        match self.kind {
            Broken::DropsWrite if self.chance(0.08) => Ok(Inserted::Created),
            Broken::ForgetsDedup => {
                let restarted_at = self.lock().restarted_at;
                match self.inner.insert_event(event.clone(), dedup).await? {
                    Inserted::Duplicate { timestamp, .. }
                        if restarted_at.is_some_and(|r| timestamp < r) =>
                    {
                        // The record from before the restart is "forgotten".
                        let forgetful = Dedup {
                            window: Duration::ZERO,
                            ..dedup
                        };
                        self.inner.insert_event(event, forgetful).await
                    }
                    other => Ok(other),
                }
            }
            _ => self.inner.insert_event(event, dedup).await,
        }
    }

    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.inner
            .get_event(account, event_id, delivered_cutoff)
            .await
    }

    async fn inbox(
        &self,
        account: &AccountId,
        query: &InboxQuery,
    ) -> Result<InboxPage, StoreError> {
        match self.kind {
            Broken::RepeatsEntry => {
                let mut q = query.clone();
                if let Some(Position(bytes)) = &query.after {
                    if let Ok(b) = <[u8; 8]>::try_from(bytes.as_slice()) {
                        let seq = u64::from_be_bytes(b).saturating_sub(1);
                        q.after = Some(Position(seq.to_be_bytes().to_vec()));
                    }
                }
                self.inner.inbox(account, &q).await
            }
            Broken::LeaksAccount if self.chance(0.2) => {
                let mut page = self.inner.inbox(account, query).await?;
                let other = {
                    let s = self.lock();
                    s.accounts.iter().find(|a| *a != account).cloned()
                };
                if let Some(other) = other {
                    let q = InboxQuery {
                        after: None,
                        event_type: None,
                        state: query.state,
                        limit: 1,
                        max_bytes: query.max_bytes,
                    };
                    if let Some(e) = self.inner.inbox(&other, &q).await?.events.pop() {
                        page.events.insert(0, e);
                    }
                }
                Ok(page)
            }
            _ => self.inner.inbox(account, query).await,
        }
    }

    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.inner
            .ack_event(account, event_id, now, delivered_cutoff)
            .await
    }

    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        self.inner.insert_events(events).await
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
    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        if self.kind == Broken::StealsLeases && self.chance(0.3) {
            // Judges availability an hour ahead: every running lease (of
            // the sim's lengths) looks ended.
            let mut blind = req.clone();
            blind.now = req.now + chrono::Duration::hours(1);
            return self.inner.lease(account, &blind).await;
        }
        self.inner.lease(account, req).await
    }
    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.inner
            .ack_leased(account, lease_id, event_ids, now, delivered_cutoff)
            .await
    }
    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.inner
            .release_leased(account, lease_id, event_ids, delivered_cutoff)
            .await
    }
    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        self.inner
            .requeue(account, event_id, delivered_cutoff)
            .await
    }
    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
        idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.inner
            .purge(delivered_cutoff, dedup_cutoff, idempotency_cutoff)
            .await
    }
}
