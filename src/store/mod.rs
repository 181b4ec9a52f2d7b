//! The store trait: the one seam between the service and its backends. No
//! SQL or SDK type crosses it.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, EventType, JsonObject, KeyId, KeyStatus, Source,
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
#[derive(Debug, Clone, Copy)]
pub struct Dedup {
    pub fingerprint: Fingerprint,
    pub window: Duration,
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

#[derive(Debug, Clone)]
pub struct InboxQuery {
    /// Start strictly after this position (from the previous page).
    pub after: Option<Position>,
    pub event_type: Option<EventType>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChange {
    Status(KeyStatus),
    RateLimit(u32),
}

/// Every backend implements this; one conformance suite runs against each.
///
/// Delivered events whose `delivered_at <= delivered_cutoff` count as purged
/// everywhere (reads, acks), whether or not a purge has removed them yet.
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

    /// Removes delivered events with `delivered_at <= delivered_cutoff` and
    /// dedup records older than `dedup_cutoff` (they can no longer match);
    /// returns how many events went. A backend whose TTL does this may do
    /// less here, as long as reads already hide what is expired.
    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError>;
}
