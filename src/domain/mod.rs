//! Domain types. Request DTOs are parsed into these at the edge; everything
//! past the handlers works with values that are valid by construction.

pub mod fingerprint;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// Why a value was refused by one of the parsers below. The message is meant
/// for the API client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err(msg: impl Into<String>) -> ParseError {
    ParseError(msg.into())
}

/// A tenant. Every key and every event belongs to exactly one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AccountId(String);

impl AccountId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(err("account must be 1-64 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(err(
                "account may only contain A-Z, a-z, 0-9, '-', '_' and '.'",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// 1–255 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let n = s.chars().count();
        if n == 0 || n > Self::MAX_CHARS {
            return Err(err("must be 1-255 characters"));
        }
        if s.chars().any(char::is_control) {
            return Err(err("must not contain control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most 255 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Source(String);

impl Source {
    pub const MAX_CHARS: usize = 255;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.chars().count() > Self::MAX_CHARS {
            return Err(err("must be at most 255 characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client's `Idempotency-Key`: 1–255 printable ASCII characters (space
/// to `~`), not beginning or ending with a space (HTTP drops spaces around a
/// header value, so such a key could not arrive as sent). Keys live per
/// account: two accounts' equal keys never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &[u8]) -> Result<Self, ParseError> {
        let printable = |b: &u8| (0x20..=0x7e).contains(b);
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(err("must be 1-255 printable ASCII characters"));
        }
        if !s.iter().all(printable) {
            return Err(err(
                "must be printable ASCII characters (space to '~') only",
            ));
        }
        if s.first() == Some(&b' ') || s.last() == Some(&b' ') {
            return Err(err("must not begin or end with a space"));
        }
        // All ASCII, so valid UTF-8.
        let text = std::str::from_utf8(s).map_err(|_| err("must be ASCII"))?;
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Server-assigned, time-ordered (UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// Any string that is not the hyphenated form of a UUIDv7 is not an event
    /// id (the API answers 404 for it, not 400).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        let u = Uuid::parse_str(s).ok()?;
        (u.get_version_num() == 7).then_some(Self(u))
    }

    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Where the service takes new event ids from. Production uses
/// [`SystemEventIds`] (UUIDv7 from the wall clock and the OS random
/// source); a deterministic run injects its own, as it injects the clock.
/// Ids must be UUIDv7 and increase in the order they are taken.
pub trait EventIds: Send + Sync + 'static {
    /// A new id for an event received at `now` (the injected clock's time).
    fn next_id(&self, now: DateTime<Utc>) -> EventId;
}

/// [`EventId::new_v7`]: the wall clock and the OS random source.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemEventIds;

impl EventIds for SystemEventIds {
    fn next_id(&self, _now: DateTime<Utc>) -> EventId {
        EventId::new_v7()
    }
}

/// The text of a JSON object, exactly as the client sent it (key order,
/// whitespace, number literals) and exactly as it is sent back.
#[derive(Debug, Clone)]
pub struct JsonObject(Box<RawValue>);

impl JsonObject {
    pub fn empty() -> Self {
        Self(RawValue::from_string("{}".to_owned()).expect("'{}' is valid JSON"))
    }

    /// From a raw value the caller has checked to be a valid object.
    pub fn from_raw(raw: &RawValue) -> Self {
        Self(raw.to_owned())
    }

    /// From text the store wrote earlier. Refuses anything that is not a
    /// JSON object.
    pub fn from_json_text(text: String) -> Result<Self, ParseError> {
        if !text.trim_start().starts_with('{') {
            return Err(err("not a JSON object"));
        }
        RawValue::from_string(text)
            .map(Self)
            .map_err(|e| err(format!("invalid JSON: {e}")))
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    pub fn len(&self) -> usize {
        self.0.get().len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.get() == "{}"
    }

    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).expect("JsonObject holds valid JSON")
    }
}

impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Serialize for JsonObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// An event as stored and as served by GET.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Event {
    #[schema(value_type = String, format = Uuid)]
    pub event_id: EventId,
    #[serde(skip)]
    pub account: AccountId,
    #[schema(value_type = String)]
    pub event_type: EventType,
    /// Exactly as sent: same values, types and number digits.
    #[schema(value_type = Object)]
    pub payload: JsonObject,
    #[schema(value_type = Option<String>)]
    pub source: Option<Source>,
    /// `{}` when none was sent.
    #[schema(value_type = Object)]
    pub metadata: JsonObject,
    /// Server receive time, RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: DateTime<Utc>,
    pub delivered: bool,
    #[serde(with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub delivered_at: Option<DateTime<Utc>>,
    /// How many times the event has been leased (`POST /inbox/lease`); 0
    /// again after a requeue.
    pub lease_count: u32,
    /// When the event's current lease ends, RFC 3339 UTC; null when it is
    /// not leased (never leased, released, its lease ended, or delivered).
    #[serde(with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub leased_until: Option<DateTime<Utc>>,
    /// Leased `max_leases` times without an acknowledgement: never leased
    /// again and listed under `GET /inbox?state=quarantined` until requeued
    /// or acknowledged.
    pub quarantined: bool,
}

impl Event {
    /// The event as the API shows it at `now`: a lease that has ended, or
    /// one of a delivered event, is no lease (`leased_until` null), and a
    /// delivered event is out of quarantine. Stores keep the end of the
    /// latest lease; whether it is still running is a question of the time
    /// of the request.
    pub fn as_of(mut self, now: DateTime<Utc>) -> Self {
        if self.delivered || self.leased_until.is_some_and(|t| t <= now) {
            self.leased_until = None;
        }
        if self.delivered {
            self.quarantined = false;
        }
        self
    }

    /// About how many bytes this event takes in a response: its payload,
    /// metadata, type and source text plus the fixed fields. What inbox
    /// pages are bounded by.
    pub fn approx_bytes(&self) -> usize {
        const FIXED: usize = 200;
        FIXED
            + self.payload.len()
            + self.metadata.len()
            + self.event_type.as_str().len()
            + self.source.as_ref().map_or(0, |s| s.as_str().len())
    }
}

/// Names one lease (`POST /inbox/lease`): a random (v4) UUID, so it cannot
/// be guessed from another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct LeaseId(Uuid);

impl LeaseId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    /// Any string that is not a hyphenated UUID names no lease (the API
    /// answers 404 for it, like an unknown one).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != 36 {
            return None;
        }
        Uuid::parse_str(s).ok().map(Self)
    }

    pub fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// RFC 3339 UTC with millisecond precision and a `Z`, the one format the API
/// writes timestamps in.
pub fn format_ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Truncates to whole milliseconds: what every store keeps and every
/// response shows, so a stored value compares equal to the one served.
pub fn trunc_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).expect("in range")
}

pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_ts(t))
    }
}

pub mod rfc3339_opt {
    use chrono::{DateTime, Utc};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_ts(t)),
            None => s.serialize_none(),
        }
    }
}

/// What a key may do. `creator` ingests, reads and acknowledges; `viewer`
/// only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Creator,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Creator => "creator",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "creator" => Some(Role::Creator),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Whether this role may perform an action that needs `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match needed {
            Role::Viewer => true,
            Role::Creator => self == Role::Creator,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    Active,
    Inactive,
    Revoked,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Inactive => "inactive",
            KeyStatus::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyStatus::Active),
            "inactive" => Some(KeyStatus::Inactive),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// The public half of an API key: finds its record in O(1).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    pub const LEN: usize = 16;

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()))
        .then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let ok = s.len() <= 254
            && s.split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(err("not an email address"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored API key. The secret exists only as its bcrypt hash.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyRecord {
    pub key_id: KeyId,
    pub account: AccountId,
    pub email: Email,
    pub role: Role,
    pub status: KeyStatus,
    pub rate_limit_per_minute: u32,
    #[serde(skip)]
    pub secret_hash: String,
    #[serde(with = "rfc3339")]
    pub created_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_counts_characters_not_bytes() {
        assert!(EventType::parse(&"é".repeat(255)).is_ok());
        assert!(EventType::parse(&"é".repeat(256)).is_err());
        assert!(EventType::parse("").is_err());
        assert!(EventType::parse("a\u{7}b").is_err());
    }

    #[test]
    fn event_ids_must_be_hyphenated_uuid_v7() {
        let id = EventId::new_v7();
        assert_eq!(EventId::parse(&id.to_string()), Some(id));
        assert_eq!(EventId::parse("not-an-id"), None);
        assert_eq!(EventId::parse(&Uuid::new_v4().to_string()), None);
        assert_eq!(EventId::parse(&id.as_uuid().simple().to_string()), None);
    }

    #[test]
    fn key_ids_are_sixteen_lowercase_alphanumerics() {
        assert!(KeyId::parse("abcdefgh12345678").is_some());
        assert!(KeyId::parse("ABCDEFGH12345678").is_none());
        assert!(KeyId::parse("abc").is_none());
    }

    #[test]
    fn idempotency_keys_are_1_to_255_printable_ascii_without_outer_spaces() {
        for ok in ["a", "order 42", "~!@#$%^&*()", &"k".repeat(255)] {
            assert_eq!(
                IdempotencyKey::parse(ok.as_bytes()).map(|k| k.as_str().to_owned()),
                Ok(ok.to_owned())
            );
        }
        let long = "k".repeat(256);
        for bad in [
            &b""[..],
            long.as_bytes(),
            b" a",
            b"a ",
            b" ",
            b"a\tb",
            b"\x7f",
            "é".as_bytes(),
            b"a\x00",
        ] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_object_text_must_be_an_object() {
        assert!(JsonObject::from_json_text("[1]".into()).is_err());
        assert!(JsonObject::from_json_text("{\"a\":1}".into()).is_ok());
    }
}
