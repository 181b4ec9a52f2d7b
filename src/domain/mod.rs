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

    fn ts(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    fn event() -> Event {
        Event {
            event_id: EventId::new_v7(),
            account: AccountId::parse("acme").unwrap(),
            event_type: EventType::parse("order.created").unwrap(),
            payload: JsonObject::from_json_text(r#"{"n":1}"#.into()).unwrap(),
            source: Some(Source::parse("billing").unwrap()),
            metadata: JsonObject::from_json_text(r#"{"m":"x"}"#.into()).unwrap(),
            timestamp: ts(1_700_000_000_123),
            delivered: false,
            delivered_at: None,
            lease_count: 0,
            leased_until: None,
            quarantined: false,
        }
    }

    #[test]
    fn account_ids_are_1_to_64_of_letters_digits_dash_underscore_and_dot() {
        for ok in ["a", "Acme-Corp_2.0", &"x".repeat(64)] {
            let a = AccountId::parse(ok).expect(ok);
            assert_eq!((a.as_str(), a.to_string().as_str()), (ok, ok));
        }
        for bad in ["", &"x".repeat(65), "a b", "a/b", "a#b", "é", "a\n"] {
            assert!(AccountId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn event_types_are_kept_as_given() {
        let t = EventType::parse("order.created v2").unwrap();
        assert_eq!(t.as_str(), "order.created v2");
        assert!(EventType::parse("x").is_ok());
    }

    #[test]
    fn sources_are_at_most_255_characters_and_may_be_empty() {
        assert_eq!(Source::parse("").unwrap().as_str(), "");
        let max = "é".repeat(255);
        assert_eq!(Source::parse(&max).unwrap().as_str(), max);
        assert!(Source::parse(&"é".repeat(256)).is_err());
        assert!(Source::parse(&"s".repeat(256)).is_err());
    }

    #[test]
    fn event_ids_keep_their_uuid_and_print_hyphenated() {
        let u = Uuid::now_v7();
        let id = EventId::from_uuid(u);
        assert_eq!(id.as_uuid(), u);
        assert_eq!(id.to_string(), u.hyphenated().to_string());
        // The braced and URN forms are UUIDs too, but not event ids.
        assert_eq!(EventId::parse(&u.braced().to_string()), None);
        assert_eq!(EventId::parse(&u.urn().to_string()), None);
        assert_ne!(EventId::new_v7(), EventId::new_v7());
    }

    #[test]
    fn lease_ids_are_any_hyphenated_uuid() {
        let l = LeaseId::new_random();
        assert_eq!(LeaseId::parse(&l.to_string()), Some(l));
        assert_eq!(l.to_string(), l.as_uuid().hyphenated().to_string());
        assert_eq!(LeaseId::from_uuid(l.as_uuid()), l);
        assert_eq!(LeaseId::parse(&l.as_uuid().simple().to_string()), None);
        assert_eq!(LeaseId::parse("nope"), None);
        assert_ne!(LeaseId::new_random(), l);
    }

    #[test]
    fn json_objects_keep_their_text_and_compare_by_it() {
        let text = "{ \"b\": 1.50, \"a\": [true] }";
        let o = JsonObject::from_json_text(text.into()).unwrap();
        assert_eq!((o.as_str(), o.len()), (text, text.len()));
        assert!(!o.is_empty());
        assert!(JsonObject::empty().is_empty());
        assert_eq!(JsonObject::empty().as_str(), "{}");
        let v = o.to_value();
        assert_eq!(v["a"], serde_json::json!([true]));
        assert_eq!(v["b"].to_string(), "1.50", "number digits as sent");
        assert_eq!(serde_json::to_string(&o).unwrap(), text);
        let same = JsonObject::from_json_text(text.into()).unwrap();
        let other = JsonObject::from_json_text("{\"b\":1.50,\"a\":[true]}".into()).unwrap();
        assert!(o == same);
        assert!(o != other, "same value, other text");
        // Leading whitespace is allowed; text that only starts like an
        // object is not valid.
        assert!(JsonObject::from_json_text("  {}".into()).is_ok());
        assert!(JsonObject::from_json_text("{".into()).is_err());
        assert!(JsonObject::from_json_text("null".into()).is_err());
    }

    #[test]
    fn an_event_counts_its_texts_and_a_fixed_overhead_in_bytes() {
        let e = event();
        // 200 + payload 7 + metadata 9 + type 13 + source 7.
        assert_eq!(e.approx_bytes(), 200 + 7 + 9 + 13 + 7);
        let no_source = Event {
            source: None,
            ..event()
        };
        assert_eq!(no_source.approx_bytes(), 200 + 7 + 9 + 13);
    }

    #[test]
    fn a_lease_that_ended_or_a_delivered_event_shows_no_lease() {
        let now = ts(1_700_000_100_000);
        let leased = Event {
            leased_until: Some(now + chrono::Duration::milliseconds(1)),
            lease_count: 1,
            ..event()
        };
        assert_eq!(leased.clone().as_of(now), leased, "a running lease");
        let ended = Event {
            leased_until: Some(now),
            ..leased.clone()
        };
        assert_eq!(ended.as_of(now).leased_until, None, "ended at now");
        let delivered = Event {
            delivered: true,
            delivered_at: Some(now),
            quarantined: true,
            ..leased.clone()
        };
        let shown = delivered.as_of(now);
        assert_eq!((shown.leased_until, shown.quarantined), (None, false));
        let quarantined = Event {
            quarantined: true,
            ..event()
        };
        assert!(quarantined.as_of(now).quarantined);
    }

    #[test]
    fn timestamps_are_written_as_rfc3339_utc_with_milliseconds() {
        let t = ts(1_700_000_000_120);
        assert_eq!(format_ts(&t), "2023-11-14T22:13:20.120Z");
        let with_nanos = t + chrono::Duration::nanoseconds(999_999);
        assert_eq!(trunc_ms(with_nanos), t);
        assert_eq!(trunc_ms(ts(-1)), ts(-1));
        let json = serde_json::to_value(Event {
            delivered: true,
            delivered_at: Some(ts(1_700_000_001_000)),
            ..event()
        })
        .unwrap();
        assert_eq!(json["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(json["delivered_at"], "2023-11-14T22:13:21.000Z");
        assert_eq!(json["leased_until"], serde_json::Value::Null);
        assert_eq!(json["payload"], serde_json::json!({"n": 1}));
    }

    #[test]
    fn roles_and_statuses_parse_back_from_their_names() {
        for r in [Role::Creator, Role::Viewer] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(
            (Role::Creator.as_str(), Role::Viewer.as_str()),
            ("creator", "viewer")
        );
        assert_eq!(Role::parse("admin"), None);
        for s in [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Revoked] {
            assert_eq!(KeyStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(
            [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Revoked].map(KeyStatus::as_str),
            ["active", "inactive", "revoked"]
        );
        assert_eq!(KeyStatus::parse("Active"), None);
    }

    #[test]
    fn only_a_creator_may_do_what_needs_a_creator() {
        assert!(Role::Creator.allows(Role::Creator));
        assert!(Role::Creator.allows(Role::Viewer));
        assert!(Role::Viewer.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Creator));
    }

    #[test]
    fn key_ids_print_as_given() {
        let k = KeyId::parse("0123456789abcdef").unwrap();
        assert_eq!(
            (k.as_str(), k.to_string().as_str()),
            ("0123456789abcdef", "0123456789abcdef")
        );
        assert!(KeyId::parse("0123456789abcde-").is_none());
        assert!(KeyId::parse("0123456789abcdef0").is_none());
    }

    #[test]
    fn emails_need_a_local_part_and_a_domain_and_no_spaces() {
        let e = Email::parse("  a@b.example \n").unwrap();
        assert_eq!(e.as_str(), "a@b.example");
        let local = "l".repeat(254 - "@b.c".len());
        assert!(Email::parse(&format!("{local}@b.c")).is_ok(), "254 bytes");
        assert!(Email::parse(&format!("{local}x@b.c")).is_err(), "255 bytes");
        for bad in [
            "",
            "ab.c",
            "@b.c",
            "a@",
            "a b@c.d",
            "a@c\td",
            "a\u{7}@c.d",
            "a@b\u{85}c",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
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
