//! The in-memory store: the third backend, for tests and for the
//! deterministic simulator (`sim/`). It passes the same conformance suite as
//! SQLite and DynamoDB.
//!
//! Deterministic by construction: ordered maps only (no hash iteration order
//! can leak into an answer), no threads, no I/O, every call answered without
//! waiting. Secrets come from the OS random source, or from a seed
//! ([`MemoryStore::with_seed`]) so that a run can be replayed. The data lives
//! as long as any handle on it: a clone is another handle on the same data,
//! as a restarted server instance would reopen a file; nothing survives the
//! process.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, InboxState,
    Insert, Inserted, KeptResponse, KeyChange, LeaseRequest, NewEvent, Position, RequeueOutcome,
    Settled, Store, StoreError,
};
use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, KeyStatus, LeaseId,
};

/// The in-memory store; cheap to clone (a clone shares the data).
#[derive(Clone)]
pub struct MemoryStore {
    data: Arc<Mutex<Data>>,
}

struct Data {
    /// Where new secrets come from: seeded, or `None` for the OS source.
    rng: Option<StdRng>,
    next_seq: u64,
    /// Every stored event by its sequence number (insertion order).
    events: BTreeMap<u64, Event>,
    by_id: BTreeMap<EventId, u64>,
    /// Undelivered events: (account, seq).
    inbox: BTreeSet<(AccountId, u64)>,
    /// Undelivered events by type: (account, event_type, seq).
    inbox_by_type: BTreeSet<(AccountId, String, u64)>,
    /// Delivered events: (delivered_at ms, seq), for the purge.
    delivered: BTreeSet<(i64, u64)>,
    /// (account, fingerprint) -> the original event and its timestamp.
    dedup: BTreeMap<(AccountId, [u8; 32]), (EventId, DateTime<Utc>)>,
    /// The lease that holds an event (by seq): set by a lease, cleared by
    /// a release or a requeue; kept after an acknowledgement or once the
    /// lease ended (an event nobody took since is still held by it).
    held_by: BTreeMap<u64, LeaseId>,
    /// Lease records: the account, when the lease ends, its events.
    leases: BTreeMap<LeaseId, LeaseRecord>,
    /// (account, key) -> the idempotency record.
    idempotency: BTreeMap<(AccountId, String), IdempotencyRecord>,
    keys: BTreeMap<String, ApiKeyRecord>,
    secrets: BTreeMap<String, [u8; 32]>,
}

struct LeaseRecord {
    account: AccountId,
    leased_until: DateTime<Utc>,
    event_ids: Vec<EventId>,
}

struct IdempotencyRecord {
    request: [u8; 32],
    token: uuid::Uuid,
    /// The claim's lapse time while in flight; the kept response's expiry
    /// once finished.
    expires_at: DateTime<Utc>,
    /// `None` while the claim is in flight.
    kept: Option<KeptResponse>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.lock();
        f.debug_struct("MemoryStore")
            .field("events", &d.events.len())
            .field("keys", &d.keys.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store whose secrets come from the OS random source.
    pub fn new() -> Self {
        Self::with_rng(None)
    }

    /// An empty store whose secrets are drawn from `seed`: the same seed
    /// gives the same secrets (so cursors replay byte for byte).
    pub fn with_seed(seed: u64) -> Self {
        Self::with_rng(Some(StdRng::seed_from_u64(seed)))
    }

    fn with_rng(rng: Option<StdRng>) -> Self {
        Self {
            data: Arc::new(Mutex::new(Data {
                rng,
                next_seq: 0,
                events: BTreeMap::new(),
                by_id: BTreeMap::new(),
                inbox: BTreeSet::new(),
                inbox_by_type: BTreeSet::new(),
                delivered: BTreeSet::new(),
                dedup: BTreeMap::new(),
                held_by: BTreeMap::new(),
                leases: BTreeMap::new(),
                idempotency: BTreeMap::new(),
                keys: BTreeMap::new(),
                secrets: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Data> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn decode_position(p: &Position) -> Result<u64, StoreError> {
    let bytes: [u8; 8] =
        p.0.as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt { what: "position" })?;
    Ok(u64::from_be_bytes(bytes))
}

fn purged(event: &Event, delivered_cutoff: DateTime<Utc>) -> bool {
    event.delivered_at.is_some_and(|at| at <= delivered_cutoff)
}

impl Data {
    /// Inserts `e` unless it is a duplicate (the caller checked its id).
    fn insert(&mut self, e: NewEvent, dedup: &Dedup) -> Inserted {
        let window = chrono::Duration::from_std(dedup.window).unwrap_or(chrono::Duration::MAX);
        let dedup_key = (e.account.clone(), dedup.fingerprint.0);
        if let Some((event_id, timestamp)) = self.dedup.get(&dedup_key) {
            if timestamp
                .checked_add_signed(window)
                .is_none_or(|end| end > e.timestamp)
            {
                return Inserted::Duplicate {
                    event_id: *event_id,
                    timestamp: *timestamp,
                };
            }
        }
        self.next_seq += 1;
        let seq = self.next_seq;
        self.dedup.insert(dedup_key, (e.event_id, e.timestamp));
        self.by_id.insert(e.event_id, seq);
        self.inbox.insert((e.account.clone(), seq));
        self.inbox_by_type
            .insert((e.account.clone(), e.event_type.as_str().to_owned(), seq));
        self.events.insert(
            seq,
            Event {
                event_id: e.event_id,
                account: e.account,
                event_type: e.event_type,
                payload: e.payload,
                source: e.source,
                metadata: e.metadata,
                timestamp: e.timestamp,
                delivered: false,
                delivered_at: None,
                lease_count: 0,
                leased_until: None,
                quarantined: false,
            },
        );
        Inserted::Created
    }

    /// Marks the undelivered event `seq` delivered at `now`.
    fn deliver(&mut self, seq: u64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let event = self.events.get_mut(&seq).ok_or(StoreError::Corrupt {
            what: "event index",
        })?;
        event.delivered = true;
        event.delivered_at = Some(now);
        let (account, event_type) = (event.account.clone(), event.event_type.as_str().to_owned());
        self.inbox.remove(&(account.clone(), seq));
        self.inbox_by_type.remove(&(account, event_type, seq));
        self.delivered.insert((now.timestamp_millis(), seq));
        Ok(())
    }

    /// The events a lease of `account` holds by its record, unless it is
    /// unknown or kept past the cutoff.
    fn lease_record(
        &self,
        account: &AccountId,
        lease: &LeaseId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Option<Vec<EventId>> {
        let r = self.leases.get(lease)?;
        (r.account == *account && r.leased_until > delivered_cutoff).then(|| r.event_ids.clone())
    }

    /// Runs `one` on the seq of every listed id the lease still holds; the
    /// rest are stale. `None` for an unknown lease.
    fn settle(
        &mut self,
        account: &AccountId,
        lease: &LeaseId,
        wanted: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
        mut one: impl FnMut(&mut Self, u64) -> Result<(), StoreError>,
    ) -> Result<Option<Settled>, StoreError> {
        let Some(held) = self.lease_record(account, lease, delivered_cutoff) else {
            return Ok(None);
        };
        let of_lease: BTreeSet<EventId> = held.iter().copied().collect();
        let ids: Vec<EventId> = match wanted {
            Some(w) => {
                let mut seen = BTreeSet::new();
                w.iter().copied().filter(|id| seen.insert(*id)).collect()
            }
            None => held,
        };
        let mut out = Settled::default();
        for id in ids {
            let still_held = of_lease.contains(&id)
                && self
                    .event(account, &id)
                    .and_then(|(seq, e)| {
                        (!e.delivered && self.held_by.get(&seq) == Some(lease)).then_some(seq)
                    })
                    .is_some();
            if still_held {
                let seq = self.by_id[&id];
                one(self, seq)?;
                out.done.push(id);
            } else {
                out.stale.push(id);
            }
        }
        Ok(Some(out))
    }

    fn event(&self, account: &AccountId, id: &EventId) -> Option<(u64, &Event)> {
        let seq = *self.by_id.get(id)?;
        let event = self.events.get(&seq)?;
        (event.account == *account).then_some((seq, event))
    }

    /// The sequence numbers of `account`'s undelivered events after `after`
    /// (of `event_type` when given), in order.
    fn undelivered_after<'a>(
        &'a self,
        account: &'a AccountId,
        event_type: Option<&'a str>,
        after: u64,
    ) -> Box<dyn Iterator<Item = u64> + 'a> {
        let start = after.saturating_add(1);
        match event_type {
            None => Box::new(
                self.inbox
                    .range((account.clone(), start)..)
                    .take_while(move |(a, _)| a == account)
                    .map(|(_, seq)| *seq),
            ),
            Some(t) => Box::new(
                self.inbox_by_type
                    .range((account.clone(), t.to_owned(), start)..)
                    .take_while(move |(a, ty, _)| a == account && ty == t)
                    .map(|(_, _, seq)| *seq),
            ),
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let mut d = self.lock();
        if let Some(s) = d.secrets.get(name) {
            return Ok(*s);
        }
        let mut fresh = [0u8; 32];
        match d.rng.as_mut() {
            Some(rng) => rng.fill_bytes(&mut fresh),
            None => rand::rng().fill_bytes(&mut fresh),
        }
        d.secrets.insert(name.to_owned(), fresh);
        Ok(fresh)
    }

    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut d = self.lock();
        if d.keys.contains_key(key.key_id.as_str()) {
            return Err(StoreError::Conflict);
        }
        d.keys.insert(key.key_id.as_str().to_owned(), key.clone());
        Ok(())
    }

    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.get(key_id.as_str()).cloned())
    }

    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let d = self.lock();
        let mut out: Vec<ApiKeyRecord> = d
            .keys
            .values()
            .filter(|k| account.is_none_or(|a| k.account == *a))
            .cloned()
            .collect();
        out.sort_by(|a, b| {
            (a.created_at, a.key_id.as_str()).cmp(&(b.created_at, b.key_id.as_str()))
        });
        Ok(out)
    }

    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let mut d = self.lock();
        let Some(k) = d.keys.get_mut(key_id.as_str()) else {
            return Ok(None);
        };
        match change {
            KeyChange::Status(s) => k.status = s,
            KeyChange::RateLimit(n) => k.rate_limit_per_minute = n,
        }
        Ok(Some(k.clone()))
    }

    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        let mut d = self.lock();
        let mut out = Vec::new();
        for k in d.keys.values_mut().filter(|k| k.email == *email) {
            k.status = KeyStatus::Revoked;
            out.push(k.key_id.clone());
        }
        Ok(out)
    }

    async fn insert_event(&self, e: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        let mut d = self.lock();
        if d.by_id.contains_key(&e.event_id) {
            return Err(StoreError::internal("event id already stored"));
        }
        Ok(d.insert(e, &dedup))
    }

    /// All or none, like SQLite's: every id is checked before anything is
    /// written; then each event in order (a later one sees the dedup
    /// records of the earlier ones).
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        let mut d = self.lock();
        let mut ids = BTreeSet::new();
        for i in &events {
            if d.by_id.contains_key(&i.event.event_id) || !ids.insert(i.event.event_id) {
                return Err(StoreError::internal("event id already stored"));
            }
        }
        Ok(events
            .into_iter()
            .map(|i| d.insert(i.event, &i.dedup))
            .collect())
    }

    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        let mut d = self.lock();
        let k = (claim.account.clone(), claim.key.as_str().to_owned());
        if let Some(r) = d.idempotency.get(&k) {
            if r.expires_at > claim.now {
                let same_request = r.request == claim.request;
                return Ok(match &r.kept {
                    None => ClaimOutcome::InFlight { same_request },
                    Some(response) => ClaimOutcome::Kept {
                        same_request,
                        response: response.clone(),
                    },
                });
            }
        }
        d.idempotency.insert(
            k,
            IdempotencyRecord {
                request: claim.request,
                token: claim.token,
                expires_at: claim.lapses_at,
                kept: None,
            },
        );
        Ok(ClaimOutcome::Claimed)
    }

    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        let mut d = self.lock();
        let k = (account.clone(), key.as_str().to_owned());
        match d.idempotency.get_mut(&k) {
            Some(r) if r.token == token && r.kept.is_none() => {
                match finish {
                    Finish::Keep {
                        response,
                        expires_at,
                    } => {
                        r.kept = Some(response);
                        r.expires_at = expires_at;
                    }
                    Finish::Release => {
                        d.idempotency.remove(&k);
                    }
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        let d = self.lock();
        Ok(d.event(account, event_id)
            .filter(|(_, e)| !purged(e, delivered_cutoff))
            .map(|(_, e)| e.clone()))
    }

    async fn inbox(&self, account: &AccountId, q: &InboxQuery) -> Result<InboxPage, StoreError> {
        let after = q
            .after
            .as_ref()
            .map(decode_position)
            .transpose()?
            .unwrap_or(0);
        let d = self.lock();
        let limit = q.limit as usize;
        let mut events = Vec::with_capacity(limit.min(256));
        let mut last_seq = None;
        let mut has_more = false;
        let mut bytes = 0usize;
        let quarantined = q.state == InboxState::Quarantined;
        for seq in d.undelivered_after(account, q.event_type.as_ref().map(|t| t.as_str()), after) {
            let event = d.events.get(&seq).ok_or(StoreError::Corrupt {
                what: "inbox entry",
            })?;
            if event.quarantined != quarantined {
                continue;
            }
            if events.len() == limit {
                has_more = true;
                break;
            }
            bytes = bytes.saturating_add(event.approx_bytes());
            if bytes > q.max_bytes && !events.is_empty() {
                has_more = true;
                break;
            }
            last_seq = Some(seq);
            events.push(event.clone());
        }
        Ok(InboxPage {
            events,
            has_more,
            last: last_seq.map(|s| Position(s.to_be_bytes().to_vec())),
        })
    }

    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        let mut d = self.lock();
        let Some((seq, event)) = d.event(account, event_id) else {
            return Ok(AckOutcome::NotFound);
        };
        if purged(event, delivered_cutoff) {
            return Ok(AckOutcome::NotFound);
        }
        if event.delivered {
            return Ok(AckOutcome::AlreadyDelivered);
        }
        d.deliver(seq, now)?;
        Ok(AckOutcome::Acknowledged)
    }

    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = req.limit.clamp(1, 100) as usize;
        let max_leases = req.max_leases.max(1);
        let mut d = self.lock();
        let seqs: Vec<u64> = d
            .undelivered_after(account, req.event_type.as_ref().map(|t| t.as_str()), 0)
            .filter(|seq| {
                d.events.get(seq).is_some_and(|e| {
                    !e.quarantined && e.leased_until.is_none_or(|until| until <= req.now)
                })
            })
            .take(limit)
            .collect();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut events = Vec::with_capacity(seqs.len());
        let mut bytes = 0usize;
        for seq in seqs {
            let event = d.events.get_mut(&seq).ok_or(StoreError::Corrupt {
                what: "inbox entry",
            })?;
            bytes = bytes.saturating_add(event.approx_bytes());
            if bytes > req.max_bytes && !events.is_empty() {
                break;
            }
            event.lease_count = event.lease_count.saturating_add(1);
            event.leased_until = Some(req.leased_until);
            event.quarantined = event.lease_count >= max_leases;
            events.push(event.clone());
            d.held_by.insert(seq, req.lease_id);
        }
        d.leases.insert(
            req.lease_id,
            LeaseRecord {
                account: account.clone(),
                leased_until: req.leased_until,
                event_ids: events.iter().map(|e| e.event_id).collect(),
            },
        );
        Ok(events)
    }

    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.lock()
            .settle(account, lease_id, event_ids, delivered_cutoff, |d, seq| {
                d.deliver(seq, now)
            })
    }

    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.lock()
            .settle(account, lease_id, event_ids, delivered_cutoff, |d, seq| {
                d.held_by.remove(&seq);
                if let Some(e) = d.events.get_mut(&seq) {
                    e.leased_until = None;
                }
                Ok(())
            })
    }

    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        let mut d = self.lock();
        let Some((seq, event)) = d.event(account, event_id) else {
            return Ok(RequeueOutcome::NotFound);
        };
        if purged(event, delivered_cutoff) {
            return Ok(RequeueOutcome::NotFound);
        }
        if event.delivered || !event.quarantined {
            return Ok(RequeueOutcome::NotQuarantined);
        }
        d.held_by.remove(&seq);
        let event = d.events.get_mut(&seq).ok_or(StoreError::Corrupt {
            what: "event index",
        })?;
        event.quarantined = false;
        event.lease_count = 0;
        event.leased_until = None;
        Ok(RequeueOutcome::Requeued(event.clone()))
    }

    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
        idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut d = self.lock();
        let cutoff_ms = delivered_cutoff.timestamp_millis();
        let gone: Vec<(i64, u64)> = d
            .delivered
            .range(..=(cutoff_ms, u64::MAX))
            .copied()
            .collect();
        for entry in &gone {
            d.delivered.remove(entry);
            d.held_by.remove(&entry.1);
            if let Some(event) = d.events.remove(&entry.1) {
                d.by_id.remove(&event.event_id);
            }
        }
        d.dedup.retain(|_, (_, ts)| *ts > dedup_cutoff);
        d.leases.retain(|_, l| l.leased_until > delivered_cutoff);
        d.idempotency
            .retain(|_, r| r.expires_at > idempotency_cutoff);
        Ok(gone.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_seeded_store_draws_the_same_secrets_and_a_clone_shares_the_data() {
        let a = MemoryStore::with_seed(7);
        let b = MemoryStore::with_seed(7);
        let s = a.secret("cursor-hmac").await.unwrap();
        assert_eq!(s, b.secret("cursor-hmac").await.unwrap());
        assert_ne!(
            s,
            MemoryStore::with_seed(8)
                .secret("cursor-hmac")
                .await
                .unwrap()
        );
        assert_eq!(a.clone().secret("cursor-hmac").await.unwrap(), s);
    }
}
