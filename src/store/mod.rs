//! The store trait: the one seam between the service and its backends. No
//! SQL or SDK type crosses it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, EventType, IdempotencyKey, JsonObject, KeyId,
    KeyStatus, LeaseId, Source,
};

pub mod dynamodb;
pub mod memory;
pub mod sqlite;
pub mod timed;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in a store. Knows nothing of HTTP.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached, timed out or throttled us. For a
    /// write, the outcome may be unknown: the caller must not claim it failed
    /// for certain (a retry is safe because ingest is deduplicated).
    #[error("store unavailable")]
    Unavailable(#[source] BoxError),
    /// A record with this identity exists already (e.g. a key id collision).
    #[error("record already exists")]
    Conflict,
    /// A stored record could not be mapped back to the domain.
    #[error("stored record is corrupt: {what}")]
    Corrupt { what: &'static str },
    /// Anything else: a bug or an unexpected backend answer.
    #[error("store failure")]
    Internal(#[source] BoxError),
}

impl StoreError {
    pub fn unavailable(e: impl Into<BoxError>) -> Self {
        Self::Unavailable(e.into())
    }
    pub fn internal(e: impl Into<BoxError>) -> Self {
        Self::Internal(e.into())
    }
}

/// A position in an account's inbox, opaque to everything but the store that
/// produced it. The API layer signs it into a cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position(pub Vec<u8>);

/// An event ready to insert; the service assigned id and timestamp.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: EventId,
    pub account: AccountId,
    pub event_type: EventType,
    pub payload: JsonObject,
    pub source: Option<Source>,
    pub metadata: JsonObject,
    /// Server receive time, whole milliseconds.
    pub timestamp: DateTime<Utc>,
}

pub use crate::domain::fingerprint::Fingerprint;

/// How to deduplicate an insert: an earlier event of the same account with
/// the same fingerprint whose `timestamp + window > new.timestamp` makes the
/// new one a duplicate. Judged by timestamps, never by TTL deletion.
///
/// The record must outlive the window by `margin`: a repeat stamped just
/// inside the window may reach the store up to the request's time budget
/// later, and must still find the original. A store that deletes records
/// by TTL expires them at `timestamp + window + margin`; the service's
/// purge cutoff keeps them as long ([`Store::purge`]).
#[derive(Debug, Clone, Copy)]
pub struct Dedup {
    pub fingerprint: Fingerprint,
    pub window: Duration,
    /// How long past the window the record is kept (never used to decide).
    pub margin: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    Created,
    /// The original event's id and timestamp.
    Duplicate {
        event_id: EventId,
        timestamp: DateTime<Utc>,
    },
}

/// One event of a batch insert ([`Store::insert_events`]).
#[derive(Debug, Clone)]
pub struct Insert {
    pub event: NewEvent,
    pub dedup: Dedup,
}

/// A request that claims an idempotency key
/// ([`Store::claim_idempotency_key`]).
#[derive(Debug, Clone)]
pub struct IdempotencyClaim {
    pub account: AccountId,
    pub key: IdempotencyKey,
    /// What makes two requests "the same" (the service's digest of the
    /// route and the raw body); compared byte for byte.
    pub request: [u8; 32],
    /// Random; names this claim when it is finished.
    pub token: uuid::Uuid,
    /// The time of the request: a record that expired at or before it is
    /// as good as absent.
    pub now: DateTime<Utc>,
    /// When the claim lapses if it is never finished (a request that died
    /// holds the key no longer than this).
    pub lapses_at: DateTime<Utc>,
}

/// The response kept for an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptResponse {
    /// An HTTP status code.
    pub status: u16,
    /// The body, byte for byte.
    pub body: Vec<u8>,
}

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// No live record: the key is this request's now, until the claim
    /// lapses or is finished.
    Claimed,
    /// Another request holds the key (its claim has not lapsed).
    InFlight {
        /// That request is the same as this one.
        same_request: bool,
    },
    /// A response is kept for the key (not expired).
    Kept {
        same_request: bool,
        response: KeptResponse,
    },
}

/// How a claim ends ([`Store::finish_idempotency_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Keep `response` for the key until `expires_at`.
    Keep {
        response: KeptResponse,
        expires_at: DateTime<Utc>,
    },
    /// Forget the claim: the key is free again at once.
    Release,
}

/// Which of an account's undelivered events a listing walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboxState {
    /// Undelivered and not quarantined, leased or not (the v1 inbox).
    #[default]
    Inbox,
    /// Undelivered and quarantined.
    Quarantined,
}

#[derive(Debug, Clone)]
pub struct InboxQuery {
    /// Start strictly after this position (from the previous page).
    pub after: Option<Position>,
    pub event_type: Option<EventType>,
    pub state: InboxState,
    /// 1..=200
    pub limit: u32,
    /// The page ends early, with `has_more`, before the event that would
    /// take its events past this many bytes ([`Event::approx_bytes`]); the
    /// first event is always included, whatever its size.
    pub max_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct InboxPage {
    /// Undelivered events, oldest first.
    pub events: Vec<Event>,
    /// Whether more undelivered events (matching the filter) follow. A page
    /// cut short by `max_bytes` always has more.
    pub has_more: bool,
    /// Position of the last event in `events`; `None` when empty.
    pub last: Option<Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    Acknowledged,
    AlreadyDelivered,
    NotFound,
}

/// A lease to take (`Store::lease`).
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// The new lease's id (random; the service draws it).
    pub lease_id: LeaseId,
    /// Only events of this type.
    pub event_type: Option<EventType>,
    /// At most this many events, 1..=100.
    pub limit: u32,
    /// The time of the lease, whole milliseconds: an event whose lease ends
    /// at or before `now` is available.
    pub now: DateTime<Utc>,
    /// When the new lease ends (`now` + the lease's duration).
    pub leased_until: DateTime<Utc>,
    /// When the lease record may go (`leased_until` + the delivered
    /// retention); reads already treat it as unknown once
    /// `leased_until <= delivered_cutoff`. For stores that expire records
    /// by TTL.
    pub forget_after: DateTime<Utc>,
    /// The lease that brings an event's `lease_count` to this value
    /// quarantines it (at least 1).
    pub max_leases: u32,
    /// The lease stops before the event that would take its events past
    /// this many bytes ([`Event::approx_bytes`]); the first event is always
    /// included, whatever its size.
    pub max_bytes: usize,
}

/// What acknowledging or releasing events of a lease did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Acknowledged (or released) by this call.
    pub done: Vec<EventId>,
    /// Left alone: not (or no longer) held by this lease.
    pub stale: Vec<EventId>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RequeueOutcome {
    /// Back in the inbox: out of quarantine, `lease_count` 0, not leased.
    Requeued(Event),
    /// The event exists but is not quarantined (available, leased or
    /// delivered); nothing changed.
    NotQuarantined,
    /// No such event of this account (or purged).
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Status(KeyStatus),
    RateLimit(u32),
}

/// Every backend implements this; one conformance suite runs against each.
///
/// Delivered events whose `delivered_at <= delivered_cutoff` count as purged
/// everywhere (reads, acks), whether or not a purge has removed them yet.
///
/// ## Leases
///
/// An undelivered event is in exactly one of three states, judged at a time
/// `now` the caller passes (the store has no clock of its own):
///
/// - **available**: not quarantined, and its latest lease (if any) ends at
///   or before `now`, or was released;
/// - **leased**: not quarantined, and its latest lease ends after `now`;
/// - **quarantined**: the lease that brought its `lease_count` to
///   `max_leases` quarantined it. That last lease still runs to its end (it
///   may be acknowledged or released), but the event is never leased again
///   and is listed under [`InboxState::Quarantined`], not in the inbox,
///   until it is requeued or acknowledged.
///
/// Returned events carry the end of their latest lease in `leased_until`,
/// which may lie in the past ([`Event::as_of`] shows it as the API does);
/// `leased_until` is `None` after a release or requeue.
///
/// A lease is held by its id. Events of a lease are **stale** for it when
/// the lease no longer holds them: they were leased again (by any lease,
/// after this one ended), released, requeued or delivered (acknowledged
/// through any path) since. An event whose lease ended but that nobody took
/// since is still held by it. Lease records are kept as long as delivered
/// events: a lease whose `leased_until <= delivered_cutoff` counts as
/// unknown.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// "sqlite", "dynamodb" or "memory".
    fn backend(&self) -> &'static str;

    /// A cheap round trip proving the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// A named 32-byte secret, created at random on first use and shared by
    /// every instance on this store (used to sign cursors).
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError>;

    /// Fails with `Conflict` if the key id exists.
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// All keys (or one account's), oldest first. Admin path, not per request.
    async fn list_keys(&self, account: Option<&AccountId>)
        -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// `None` when the key does not exist.
    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError>;
    /// Revokes every key of this owner; returns the ids revoked.
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError>;

    /// Inserts the event unless it is a duplicate, atomically with the dedup
    /// check. Returns only once the write is durable.
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError>;

    /// Inserts a batch (1–100 events, the service's batch ingest): the
    /// outcome of each, in order, is what [`Store::insert_event`] would
    /// give if the events were inserted one after another in this order —
    /// so an event whose fingerprint an earlier one of the batch shares
    /// (within the window) is a duplicate of that one. Each event is
    /// atomic with its dedup check, as in `insert_event`. Returns only once
    /// every created event is durable.
    ///
    /// On an error, any subset of the events may have been written (each
    /// whole, with its dedup record; SQLite writes all or none): the caller
    /// must not answer any of them as written, and a retry of the batch is
    /// deduplicated into what was.
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError>;

    /// Claims `claim.key` of `claim.account` for a request, atomically: if
    /// the account has no record for the key whose expiry is after
    /// `claim.now`, records the claim (request digest, token, expiry
    /// `lapses_at`) and answers `Claimed`; otherwise answers what the live
    /// record holds (in flight, or a kept response), with whether its
    /// request digest equals `claim.request`, and changes nothing.
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Finishes the claim `token` made on `key`: keeps the response (the
    /// record's expiry becomes `expires_at`) or releases the key (the
    /// record goes). Only while the record is still that claim, in flight
    /// (lapsed or not): returns false, changing nothing, when another claim
    /// took the key over or the record is already finished or gone.
    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError>;

    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError>;

    /// Strongly consistent: sees every insert and ack that has returned.
    async fn inbox(&self, account: &AccountId, query: &InboxQuery)
        -> Result<InboxPage, StoreError>;

    /// Marks delivered at `now` (idempotent; a second ack keeps the first
    /// `delivered_at`). Never recreates a purged event.
    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError>;

    /// Leases the account's oldest available events (of `event_type` when
    /// given) to `req.lease_id` until `req.leased_until`: each one's
    /// `lease_count` goes up by one, and the lease that brings it to
    /// `max_leases` quarantines it. Returns them oldest first, as they are
    /// after the lease; an empty list records no lease.
    ///
    /// Atomic per event and exclusive: no two calls, on any instance, lease
    /// one event for overlapping times. A call may return fewer than
    /// `limit` events while more are available when it lost them to a
    /// concurrent call (see the backend's notes), never more.
    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError>;

    /// Acknowledges the events of a lease that it still holds (`event_ids`,
    /// or all of the lease's when `None`), each exactly as
    /// [`Store::ack_event`] at `now`; every other listed id (stale, or not
    /// of this lease) is left alone and reported stale. `None` when the
    /// account has no such lease (unknown, another account's, or kept past
    /// `delivered_cutoff`). Each event is settled atomically; the call as a
    /// whole is not (after an error, some may be done).
    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError>;

    /// Releases the events of a lease that it still holds: each is
    /// available again at once (a quarantined one stays quarantined, its
    /// last lease ended). Otherwise as [`Store::ack_leased`].
    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError>;

    /// Takes a quarantined event out of quarantine: `lease_count` 0, no
    /// lease (a last lease still running ends: stale for its holder),
    /// available at once. Atomic.
    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError>;

    /// Removes delivered events with `delivered_at <= delivered_cutoff`,
    /// lease records with `leased_until <= delivered_cutoff`, dedup
    /// records stamped at or before `dedup_cutoff` (the service passes
    /// `now - window - margin`, see [`Dedup`]: by then no request that
    /// could still match them can be under way) and
    /// idempotency records whose expiry is at or before
    /// `idempotency_cutoff` (the present: claims already treat them as
    /// absent); returns how many events went. A backend whose TTL does this
    /// may do less here, as long as reads already hide what is expired.
    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
        idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}
