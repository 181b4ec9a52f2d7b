//! Extractors whose every rejection is an `ApiError` (so every 4xx has the
//! problem+json shape), and the parsers that turn request DTOs into domain
//! values.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Deserialize;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;

use super::error::{ApiError, FieldError};
use crate::domain::fingerprint::fingerprint;
use crate::domain::{EventId, EventType, JsonObject, LeaseId, Source};
use crate::service::leases::LeaseParams;
use crate::service::CreateEvent;
use crate::state::AppState;
use crate::store::{InboxState, Position};

/// The deepest nesting a request document may have (the body object is
/// level 1, so a payload may nest 127 levels).
pub const MAX_DEPTH: usize = 128;

/// How deeply `bytes` nest arrays and objects, counted without parsing (so
/// a hostile body cannot exhaust the stack); stops counting past `cap`.
pub fn nesting_depth(bytes: &[u8], cap: usize) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    max = depth;
                    if max > cap {
                        return max;
                    }
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

fn is_json_content_type(v: Option<&header::HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Reads a body declared as JSON, refusing more than `limit` bytes: a
/// declared length over it before reading, and the bytes actually read
/// whatever the headers said (chunked bodies included).
async fn read_json_body(req: Request, limit: usize) -> Result<bytes::Bytes, ApiError> {
    if !is_json_content_type(req.headers().get(header::CONTENT_TYPE)) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let too_large =
        || ApiError::PayloadTooLarge(format!("The request body exceeds {limit} bytes."));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Err(_) => Err(ApiError::validation(
            "body",
            "the request body could not be read",
        )),
    }
}

fn too_deep() -> ApiError {
    ApiError::validation(
        "body",
        format!("JSON nesting deeper than {MAX_DEPTH} levels"),
    )
}

/// A request body sent as JSON, read within the body limit and checked
/// for nesting depth; not yet parsed.
pub struct JsonBody(pub bytes::Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_json_body(req, state.settings.max_body_bytes).await?;
        if nesting_depth(&bytes, MAX_DEPTH) > MAX_DEPTH {
            return Err(too_deep());
        }
        Ok(Self(bytes))
    }
}

/// A POST /events/batch body sent as JSON, read within the batch body
/// limit; not yet parsed. Its nesting depth is checked per event
/// ([`BatchRequest::parse_json`]): the envelope is read without recursion.
pub struct BatchBody(pub bytes::Bytes);

impl FromRequest<AppState> for BatchBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_json_body(req, state.settings.max_batch_body_bytes)
            .await
            .map(Self)
    }
}

fn raw_type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// Fully parses (and so validates: escapes, surrogates, UTF-8) a raw object.
fn parse_object(raw: &RawValue) -> Result<serde_json::Map<String, Value>, String> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    // The depth was bounded by the extractor.
    de.disable_recursion_limit();
    serde_json::Map::<String, Value>::deserialize(&mut de)
        .map_err(|e| format!("malformed JSON: {e}"))
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn raw_string(raw: &RawValue) -> Option<String> {
    if raw.get().starts_with('"') {
        serde_json::from_str(raw.get()).ok()
    } else {
        None
    }
}

/// The top-level members of a body object, raw, and the names given more
/// than once (each listed once).
struct TopLevel {
    fields: BTreeMap<String, Box<RawValue>>,
    repeated: Vec<String>,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = TopLevel;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<TopLevel, A::Error> {
                let mut out = TopLevel {
                    fields: BTreeMap::new(),
                    repeated: Vec::new(),
                };
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    match out.fields.entry(k) {
                        std::collections::btree_map::Entry::Occupied(e) => {
                            if !out.repeated.contains(e.key()) {
                                out.repeated.push(e.key().clone());
                            }
                        }
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(v);
                        }
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Members)
    }
}

/// A body object's members, raw, by name.
type Members = BTreeMap<String, Box<RawValue>>;

/// The members of a body that must be a JSON object (already within the
/// size and depth limits), and the errors of its shape: a repeated member
/// (refused: a gateway that reads the first copy would see another request
/// than the one served) and members not in `known`. Malformed JSON or a
/// body that is not an object fails at once.
fn top_level_members(body: &[u8], known: &[&str]) -> Result<(Members, Vec<FieldError>), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    // The depth was bounded by the extractor.
    de.disable_recursion_limit();
    let TopLevel { fields, repeated } = TopLevel::deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| ApiError::validation("body", format!("malformed JSON: {e}")))?;
    let mut errors: Vec<FieldError> = repeated
        .into_iter()
        .map(|k| FieldError::new(k, "given more than once"))
        .collect();
    for k in fields.keys() {
        if !known.contains(&k.as_str()) {
            errors.push(FieldError::new(k.clone(), "unknown field"));
        }
    }
    Ok((fields, errors))
}

impl CreateEvent {
    pub const FIELDS: [&'static str; 4] = ["event_type", "payload", "source", "metadata"];

    /// Parses a POST /events body (already within the size and depth
    /// limits), reporting every invalid field at once. `payload` and
    /// `metadata` keep the exact text the client sent.
    pub fn parse_json(body: &[u8], max_payload_bytes: usize) -> Result<Self, ApiError> {
        let (fields, mut errors) = top_level_members(body, &Self::FIELDS)?;
        let event_type = match fields.get("event_type") {
            None => {
                errors.push(FieldError::new("event_type", "is required"));
                None
            }
            Some(raw) => match raw_string(raw) {
                Some(s) => EventType::parse(&s)
                    .map_err(|e| errors.push(FieldError::new("event_type", e.0)))
                    .ok(),
                None => {
                    errors.push(FieldError::new(
                        "event_type",
                        format!("must be a string, not {}", raw_type_name(raw)),
                    ));
                    None
                }
            },
        };
        let payload = match fields.get("payload") {
            None => {
                errors.push(FieldError::new("payload", "is required"));
                None
            }
            Some(raw) if raw.get().starts_with('{') => Some(raw),
            Some(raw) => {
                errors.push(FieldError::new(
                    "payload",
                    format!("must be a JSON object, not {}", raw_type_name(raw)),
                ));
                None
            }
        };
        let source = match fields.get("source") {
            None => None,
            Some(raw) if is_null(raw) => None,
            Some(raw) => match raw_string(raw) {
                Some(s) => Source::parse(&s)
                    .map_err(|e| errors.push(FieldError::new("source", e.0)))
                    .ok(),
                None => {
                    errors.push(FieldError::new(
                        "source",
                        format!("must be a string, not {}", raw_type_name(raw)),
                    ));
                    None
                }
            },
        };
        let metadata = match fields.get("metadata") {
            None => Some(JsonObject::empty()),
            Some(raw) if is_null(raw) => Some(JsonObject::empty()),
            Some(raw) if raw.get().starts_with('{') => match parse_object(raw) {
                Ok(_) => Some(JsonObject::from_raw(raw)),
                Err(e) => {
                    errors.push(FieldError::new("metadata", e));
                    None
                }
            },
            Some(raw) => {
                errors.push(FieldError::new(
                    "metadata",
                    format!("must be a JSON object, not {}", raw_type_name(raw)),
                ));
                None
            }
        };
        let (Some(event_type), Some(payload_raw), Some(metadata)) = (event_type, payload, metadata)
        else {
            return Err(ApiError::Validation(errors));
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        if payload_raw.get().len() > max_payload_bytes {
            return Err(ApiError::PayloadTooLarge(format!(
                "The serialized payload exceeds {max_payload_bytes} bytes."
            )));
        }
        // Canonicalising the text also checks what the raw parse above
        // leaves out (escapes that are not valid Unicode), without building
        // a tree.
        let fingerprint = fingerprint(
            event_type.as_str(),
            payload_raw.get(),
            source.as_ref().map(Source::as_str),
        )
        .map_err(|e| ApiError::validation("payload", e.to_string()))?;
        Ok(Self {
            event_type,
            payload: JsonObject::from_raw(payload_raw),
            source,
            metadata,
            fingerprint,
        })
    }
}

/// A parsed POST /events/batch body: each event validated on its own, as
/// the body of a POST /events (`Err`: its 400 or 413).
pub struct BatchRequest {
    pub events: Vec<Result<CreateEvent, ApiError>>,
}

/// The members of an array, raw, up to `max` of them, and how many there
/// were in all (the rest are skipped without being kept).
struct Items<'de> {
    kept: Vec<&'de RawValue>,
    count: usize,
}

struct ItemsVisitor {
    max: usize,
}

impl<'de> serde::de::Visitor<'de> for ItemsVisitor {
    type Value = Items<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Items<'de>, A::Error> {
        let mut out = Items {
            kept: Vec::new(),
            count: 0,
        };
        loop {
            if out.count < self.max {
                match seq.next_element::<&'de RawValue>()? {
                    Some(item) => out.kept.push(item),
                    None => return Ok(out),
                }
            } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(out);
            }
            out.count += 1;
        }
    }
}

impl BatchRequest {
    pub const FIELDS: [&'static str; 1] = ["events"];
    pub const MAX_EVENTS: usize = 100;

    /// Parses a POST /events/batch body (within its byte limit). The
    /// envelope — a JSON object whose only member is `events`, an array of
    /// 1 to 100 items, the whole body well-formed JSON — is all or nothing
    /// (400 listing every problem). Each item is then judged as the body of
    /// a POST /events would be: over `max_event_bytes` 413, nested deeper
    /// than 128 levels 400, otherwise [`CreateEvent::parse_json`]. Nothing
    /// here recurses before an item's depth is known.
    pub fn parse_json(
        body: &[u8],
        max_event_bytes: usize,
        max_payload_bytes: usize,
    ) -> Result<Self, ApiError> {
        let (fields, mut errors) = top_level_members(body, &Self::FIELDS)?;
        let events = match fields.get("events") {
            None => {
                errors.push(FieldError::new("events", "is required"));
                None
            }
            Some(raw) => {
                let mut de = serde_json::Deserializer::from_str(raw.get());
                // Items are skipped without recursion; each one's depth is
                // checked before it is parsed.
                de.disable_recursion_limit();
                let parsed = serde::Deserializer::deserialize_seq(
                    &mut de,
                    ItemsVisitor {
                        max: Self::MAX_EVENTS,
                    },
                );
                match parsed {
                    Ok(items) if (1..=Self::MAX_EVENTS).contains(&items.count) => Some(items.kept),
                    Ok(_) => {
                        errors.push(FieldError::new(
                            "events",
                            format!("must hold 1 to {} events", Self::MAX_EVENTS),
                        ));
                        None
                    }
                    Err(_) => {
                        errors.push(FieldError::new(
                            "events",
                            format!("must be an array of events, not {}", raw_type_name(raw)),
                        ));
                        None
                    }
                }
            }
        };
        let Some(items) = events.filter(|_| errors.is_empty()) else {
            return Err(ApiError::Validation(errors));
        };
        let events = items
            .into_iter()
            .map(|item| {
                let text = item.get().as_bytes();
                if text.len() > max_event_bytes {
                    return Err(ApiError::PayloadTooLarge(format!(
                        "The event exceeds {max_event_bytes} bytes (the largest POST /events body)."
                    )));
                }
                if nesting_depth(text, MAX_DEPTH) > MAX_DEPTH {
                    return Err(too_deep());
                }
                CreateEvent::parse_json(text, max_payload_bytes)
            })
            .collect();
        Ok(Self { events })
    }
}

/// An optional integer member within `range`: absent or null gives
/// `default`; anything else (a fraction, an exponent, a string, out of
/// range) is an error naming the field.
fn int_member(
    fields: &Members,
    name: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
    errors: &mut Vec<FieldError>,
) -> u64 {
    match fields.get(name) {
        None => default,
        Some(raw) if is_null(raw) => default,
        Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
            Ok(n) if range.contains(&n) => n,
            _ => {
                errors.push(FieldError::new(
                    name,
                    format!(
                        "must be an integer from {} to {}",
                        range.start(),
                        range.end()
                    ),
                ));
                default
            }
        },
    }
}

impl LeaseParams {
    pub const FIELDS: [&'static str; 4] = ["limit", "lease_seconds", "wait_seconds", "event_type"];

    /// Parses a POST /inbox/lease body, reporting every invalid field at
    /// once. Every member is optional; null means absent.
    pub fn parse_json(body: &[u8]) -> Result<Self, ApiError> {
        let (fields, mut errors) = top_level_members(body, &Self::FIELDS)?;
        let limit = int_member(
            &fields,
            "limit",
            1..=u64::from(Self::MAX_LIMIT),
            u64::from(Self::DEFAULT_LIMIT),
            &mut errors,
        );
        let lease_secs = int_member(
            &fields,
            "lease_seconds",
            1..=Self::MAX_LEASE_SECS,
            Self::DEFAULT_LEASE_SECS,
            &mut errors,
        );
        let wait_secs = int_member(
            &fields,
            "wait_seconds",
            0..=Self::MAX_WAIT_SECS,
            0,
            &mut errors,
        );
        let event_type = match fields.get("event_type") {
            None => None,
            Some(raw) if is_null(raw) => None,
            Some(raw) => match raw_string(raw) {
                Some(s) => EventType::parse(&s)
                    .map_err(|e| errors.push(FieldError::new("event_type", e.0)))
                    .ok(),
                None => {
                    errors.push(FieldError::new(
                        "event_type",
                        format!("must be a string, not {}", raw_type_name(raw)),
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(ApiError::Validation(errors));
        }
        Ok(Self {
            limit: u32::try_from(limit).unwrap_or(Self::DEFAULT_LIMIT),
            lease_for: std::time::Duration::from_secs(lease_secs),
            wait: std::time::Duration::from_secs(wait_secs),
            event_type,
        })
    }
}

/// A parsed POST /inbox/ack or /inbox/release body.
#[derive(Debug, Clone, PartialEq)]
pub struct SettleParams {
    /// `None`: a string that is no lease id, so no lease (answered 404 like
    /// an unknown one).
    pub lease_id: Option<LeaseId>,
    /// `None`: every event of the lease.
    pub event_ids: Option<Vec<EventId>>,
}

impl SettleParams {
    pub const FIELDS: [&'static str; 2] = ["lease_id", "event_ids"];
    pub const MAX_IDS: usize = 100;

    pub fn parse_json(body: &[u8]) -> Result<Self, ApiError> {
        let (fields, mut errors) = top_level_members(body, &Self::FIELDS)?;
        let lease_id = match fields.get("lease_id") {
            None => {
                errors.push(FieldError::new("lease_id", "is required"));
                None
            }
            Some(raw) => match raw_string(raw) {
                Some(s) => Some(LeaseId::parse(&s)),
                None => {
                    errors.push(FieldError::new(
                        "lease_id",
                        format!("must be a string, not {}", raw_type_name(raw)),
                    ));
                    None
                }
            },
        };
        let event_ids = match fields.get("event_ids") {
            None => None,
            Some(raw) if is_null(raw) => None,
            Some(raw) => match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
                Ok(items) if (1..=Self::MAX_IDS).contains(&items.len()) => {
                    let mut ids = Vec::with_capacity(items.len());
                    for (i, item) in items.iter().enumerate() {
                        match raw_string(item).as_deref().and_then(EventId::parse) {
                            Some(id) => ids.push(id),
                            None => errors.push(FieldError::new(
                                format!("event_ids[{i}]"),
                                "must be an event id",
                            )),
                        }
                    }
                    Some(ids)
                }
                Ok(_) => {
                    errors.push(FieldError::new(
                        "event_ids",
                        format!("must hold 1 to {} event ids", Self::MAX_IDS),
                    ));
                    None
                }
                Err(_) => {
                    errors.push(FieldError::new(
                        "event_ids",
                        format!("must be an array of event ids, not {}", raw_type_name(raw)),
                    ));
                    None
                }
            },
        };
        match (lease_id, errors.is_empty()) {
            (Some(lease_id), true) => Ok(Self {
                lease_id,
                event_ids,
            }),
            _ => Err(ApiError::Validation(errors)),
        }
    }
}

/// GET /inbox's query, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxParams {
    pub limit: u32,
    pub cursor: Option<String>,
    pub event_type: Option<EventType>,
    pub state: InboxState,
}

impl InboxParams {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;

    pub fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
            .map_err(|_| ApiError::validation("query", "the query string is malformed"))?;
        let mut errors = Vec::new();
        let mut seen = Vec::new();
        let mut out = Self {
            limit: Self::DEFAULT_LIMIT,
            cursor: None,
            event_type: None,
            state: InboxState::Inbox,
        };
        for (k, v) in pairs {
            if seen.contains(&k) {
                errors.push(FieldError::new(k, "given more than once"));
                continue;
            }
            seen.push(k.clone());
            match k.as_str() {
                "limit" => match v.parse::<u32>() {
                    Ok(n) if (1..=Self::MAX_LIMIT).contains(&n) => out.limit = n,
                    _ => errors.push(FieldError::new("limit", "must be an integer from 1 to 200")),
                },
                "cursor" => out.cursor = (!v.is_empty()).then_some(v),
                "event_type" => match EventType::parse(&v) {
                    Ok(t) => out.event_type = Some(t),
                    Err(e) => errors.push(FieldError::new("event_type", e.0)),
                },
                "state" => match v.as_str() {
                    "inbox" => out.state = InboxState::Inbox,
                    "quarantined" => out.state = InboxState::Quarantined,
                    _ => errors.push(FieldError::new("state", "must be 'inbox' or 'quarantined'")),
                },
                _ => errors.push(FieldError::new(k, "unknown query parameter")),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(ApiError::Validation(errors))
        }
    }
}

impl FromRequestParts<AppState> for InboxParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Self::parse(parts.uri.query())
    }
}

/// The `{id}` path segment as an event id; anything else is a 404.
pub struct EventIdParam(pub EventId);

impl FromRequestParts<AppState> for EventIdParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::NotFound)?;
        EventId::parse(&raw).map(Self).ok_or(ApiError::NotFound)
    }
}

/// Decodes a cursor for `account`.
pub fn decode_cursor(
    state: &AppState,
    account: &crate::domain::AccountId,
    cursor: Option<&str>,
) -> Result<Option<Position>, ApiError> {
    cursor
        .map(|c| {
            state
                .cursors
                .decode(account, c)
                .map_err(|_| ApiError::InvalidCursor)
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert_eq!(nesting_depth(br#"{"a":[1,{"b":"[[[{{"}]}"#, 10), 3);
        assert_eq!(nesting_depth(br#""\"[""#, 10), 0);
        assert_eq!(nesting_depth(b"[[[[[[", 3), 4);
    }

    #[test]
    fn depth_falls_back_after_each_closing_bracket() {
        assert_eq!(nesting_depth(b"[][][{}]", 10), 2);
        assert_eq!(nesting_depth(br#"{"a":{},"b":[{}],"c":1}"#, 10), 3);
    }

    #[test]
    fn a_repeated_top_level_field_is_refused_and_named_once() {
        let body = br#"{"event_type":"a","payload":{},"event_type":"b","event_type":"c"}"#;
        match CreateEvent::parse_json(body, 1024) {
            Err(ApiError::Validation(errs)) => {
                assert_eq!(
                    errs,
                    vec![FieldError::new("event_type", "given more than once")]
                );
            }
            other => panic!("expected a validation error, got {:?}", other.map(|_| ())),
        }
        // Inside the payload, keys are the client's business (kept as sent).
        let ok = br#"{"event_type":"a","payload":{"k":1,"k":2}}"#;
        assert!(CreateEvent::parse_json(ok, 1024).is_ok());
    }

    #[test]
    fn inbox_limit_must_be_in_range() {
        assert_eq!(InboxParams::parse(None).unwrap().limit, 50);
        assert_eq!(InboxParams::parse(Some("limit=200")).unwrap().limit, 200);
        for bad in [
            "limit=0",
            "limit=201",
            "limit=abc",
            "limit=-1",
            "limit=",
            "limit=1.5",
        ] {
            assert!(InboxParams::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    fn fields_of(e: Result<impl std::fmt::Debug, ApiError>) -> Vec<String> {
        match e {
            Err(ApiError::Validation(errs)) => errs.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_lease_body_takes_defaults_and_lists_every_bad_field() {
        let p = LeaseParams::parse_json(b"{}").unwrap();
        assert_eq!(p, LeaseParams::default());
        let p = LeaseParams::parse_json(
            br#"{"limit":100,"lease_seconds":3600,"wait_seconds":20,"event_type":"a"}"#,
        )
        .unwrap();
        assert_eq!(
            (p.limit, p.lease_for.as_secs(), p.wait.as_secs()),
            (100, 3600, 20)
        );
        let p = LeaseParams::parse_json(br#"{"limit":null,"wait_seconds":0}"#).unwrap();
        assert_eq!(p.limit, LeaseParams::DEFAULT_LIMIT);
        assert_eq!(
            fields_of(LeaseParams::parse_json(
                br#"{"limit":0,"lease_seconds":3601,"wait_seconds":21,"event_type":"","x":1}"#
            )),
            ["x", "limit", "lease_seconds", "wait_seconds", "event_type"]
        );
        for bad in [
            r#"{"limit":1.0}"#,
            r#"{"limit":1e1}"#,
            r#"{"limit":"5"}"#,
            r#"{"limit":-1}"#,
            r#"{"limit":101}"#,
            r#"{"limit":18446744073709551616}"#,
        ] {
            assert_eq!(
                fields_of(LeaseParams::parse_json(bad.as_bytes())),
                ["limit"],
                "{bad}"
            );
        }
        assert_eq!(
            fields_of(LeaseParams::parse_json(br#"{"limit":5,"limit":6}"#)),
            ["limit"]
        );
        assert_eq!(fields_of(LeaseParams::parse_json(b"[]")), ["body"]);
        assert_eq!(fields_of(LeaseParams::parse_json(b"{")), ["body"]);
    }

    #[test]
    fn a_settle_body_needs_a_lease_id_and_at_most_100_event_ids() {
        let lease = LeaseId::new_random();
        let id = EventId::new_v7();
        let p =
            SettleParams::parse_json(format!(r#"{{"lease_id":"{lease}"}}"#).as_bytes()).unwrap();
        assert_eq!((p.lease_id, p.event_ids), (Some(lease), None));
        let p = SettleParams::parse_json(
            format!(r#"{{"lease_id":"{lease}","event_ids":["{id}"]}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(p.event_ids, Some(vec![id]));
        // Not a lease id: no such lease (404), not a 400.
        let p = SettleParams::parse_json(br#"{"lease_id":"nope"}"#).unwrap();
        assert_eq!(p.lease_id, None);
        assert_eq!(fields_of(SettleParams::parse_json(b"{}")), ["lease_id"]);
        assert_eq!(
            fields_of(SettleParams::parse_json(
                format!(r#"{{"lease_id":7,"event_ids":["{id}","x",3],"y":0}}"#).as_bytes()
            )),
            ["y", "lease_id", "event_ids[1]", "event_ids[2]"]
        );
        for bad in [r#""a""#, "{}", "[]"] {
            let body = format!(r#"{{"lease_id":"{lease}","event_ids":{bad}}}"#);
            assert_eq!(
                fields_of(SettleParams::parse_json(body.as_bytes())),
                ["event_ids"],
                "{bad}"
            );
        }
        let many: Vec<String> = (0..101).map(|_| format!("\"{id}\"")).collect();
        let body = format!(
            r#"{{"lease_id":"{lease}","event_ids":[{}]}}"#,
            many.join(",")
        );
        assert_eq!(
            fields_of(SettleParams::parse_json(body.as_bytes())),
            ["event_ids"]
        );
    }

    #[test]
    fn the_inbox_state_is_inbox_or_quarantined() {
        assert_eq!(InboxParams::parse(None).unwrap().state, InboxState::Inbox);
        assert_eq!(
            InboxParams::parse(Some("state=quarantined")).unwrap().state,
            InboxState::Quarantined
        );
        assert_eq!(
            InboxParams::parse(Some("state=inbox")).unwrap().state,
            InboxState::Inbox
        );
        assert!(InboxParams::parse(Some("state=leased")).is_err());
    }

    fn errors_of(e: Result<impl std::fmt::Debug, ApiError>) -> Vec<(String, String)> {
        match e {
            Err(ApiError::Validation(errs)) => {
                errs.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn event_errors(body: &str) -> Vec<(String, String)> {
        errors_of(CreateEvent::parse_json(body.as_bytes(), 1024).map(|_| ()))
    }

    fn pair(field: &str, message: &str) -> (String, String) {
        (field.to_owned(), message.to_owned())
    }

    #[test]
    fn json_and_json_suffixed_media_types_are_json_and_nothing_else() {
        let is_json =
            |v: &str| is_json_content_type(Some(&header::HeaderValue::from_str(v).unwrap()));
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            " application/json ;x=y",
            "application/problem+json",
        ] {
            assert!(is_json(ok), "{ok}");
        }
        for bad in [
            "text/json",
            "application/jsonx",
            "text/plain+json",
            "application/xml",
            "",
        ] {
            assert!(!is_json(bad), "{bad}");
        }
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn a_wrong_type_is_named_in_the_error() {
        for (value, name) in [
            ("1.5", "a number"),
            ("null", "null"),
            ("true", "a boolean"),
            ("false", "a boolean"),
            ("[]", "an array"),
            ("{}", "an object"),
        ] {
            assert_eq!(
                event_errors(&format!(r#"{{"event_type":{value},"payload":{{}}}}"#)),
                [pair("event_type", &format!("must be a string, not {name}"))],
                "{value}"
            );
        }
        assert_eq!(
            event_errors(r#"{"event_type":"t","payload":"{}"}"#),
            [pair("payload", "must be a JSON object, not a string")]
        );
        assert_eq!(
            event_errors(r#"{"event_type":"t","payload":{},"source":5,"metadata":[1]}"#),
            [
                pair("source", "must be a string, not a number"),
                pair("metadata", "must be a JSON object, not an array")
            ]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_told_so() {
        for body in ["[]", " [1]", "\"x\"", "1"] {
            assert_eq!(
                event_errors(body),
                [pair("body", "must be a JSON object")],
                "{body}"
            );
        }
        let e = event_errors("{\"event_type\":\"t\"} x");
        assert!(e[0].1.starts_with("malformed JSON"), "{e:?}");
    }

    #[test]
    fn null_source_and_metadata_mean_absent() {
        let e = CreateEvent::parse_json(
            br#"{"event_type":"t","payload":{"a":1},"source":null,"metadata":null}"#,
            1024,
        )
        .unwrap();
        assert_eq!((e.source, e.metadata.as_str()), (None, "{}"));
        let e = CreateEvent::parse_json(
            br#"{"event_type":"t","payload":{},"source":"s","metadata":{"m":[1, 2]}}"#,
            1024,
        )
        .unwrap();
        assert_eq!(e.source.as_ref().map(Source::as_str), Some("s"));
        assert_eq!(e.metadata.as_str(), r#"{"m":[1, 2]}"#);
        assert_eq!(
            e.fingerprint,
            fingerprint("t", "{}", Some("s")).unwrap(),
            "the source is part of the fingerprint, metadata is not"
        );
        assert_eq!(
            event_errors(r#"{"payload":{}}"#),
            [pair("event_type", "is required")]
        );
        assert_eq!(
            event_errors(r#"{"event_type":"t"}"#),
            [pair("payload", "is required")]
        );
    }

    #[test]
    fn metadata_with_an_invalid_string_is_refused() {
        let e = event_errors(r#"{"event_type":"t","payload":{},"metadata":{"m":"\ud800"}}"#);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, "metadata");
        assert!(e[0].1.starts_with("malformed JSON"), "{e:?}");
        let e = event_errors(r#"{"event_type":"t","payload":{"p":"\ud800"}}"#);
        assert_eq!(e, [pair("payload", "lone leading surrogate in hex escape")]);
    }

    #[test]
    fn a_payload_of_exactly_the_maximum_size_is_accepted() {
        let body = br#"{"event_type":"t","payload":{"a":12}}"#;
        assert!(CreateEvent::parse_json(body, 8).is_ok());
        assert!(matches!(
            CreateEvent::parse_json(body, 7),
            Err(ApiError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn a_lease_body_may_name_an_event_type_or_null() {
        let p = LeaseParams::parse_json(br#"{"event_type":"order.created"}"#).unwrap();
        assert_eq!(
            p.event_type.as_ref().map(EventType::as_str),
            Some("order.created")
        );
        let p = LeaseParams::parse_json(br#"{"event_type":null,"lease_seconds":null}"#).unwrap();
        assert_eq!(p.event_type, None);
        assert_eq!(p.lease_for.as_secs(), LeaseParams::DEFAULT_LEASE_SECS);
        assert_eq!(
            errors_of(LeaseParams::parse_json(br#"{"event_type":1}"#)),
            [pair("event_type", "must be a string, not a number")]
        );
    }

    #[test]
    fn a_settle_body_may_give_null_event_ids() {
        let lease = LeaseId::new_random();
        let p = SettleParams::parse_json(
            format!(r#"{{"lease_id":"{lease}","event_ids":null}}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!((p.lease_id, p.event_ids), (Some(lease), None));
        let ids: Vec<String> = (0..SettleParams::MAX_IDS)
            .map(|_| format!("\"{}\"", EventId::new_v7()))
            .collect();
        let p = SettleParams::parse_json(
            format!(
                r#"{{"lease_id":"{lease}","event_ids":[{}]}}"#,
                ids.join(",")
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.event_ids.map(|v| v.len()), Some(SettleParams::MAX_IDS));
    }

    #[test]
    fn the_inbox_query_takes_a_cursor_and_an_event_type() {
        let p = InboxParams::parse(Some("cursor=abc&event_type=order.created&limit=7")).unwrap();
        assert_eq!(p.cursor.as_deref(), Some("abc"));
        assert_eq!(
            p.event_type.as_ref().map(EventType::as_str),
            Some("order.created")
        );
        assert_eq!(p.limit, 7);
        assert_eq!(InboxParams::parse(Some("cursor=")).unwrap().cursor, None);
        assert_eq!(
            errors_of(InboxParams::parse(Some("event_type=&x=1&limit=1&limit=2"))),
            [
                pair("event_type", "must be 1-255 characters"),
                pair("x", "unknown query parameter"),
                pair("limit", "given more than once")
            ]
        );
    }

    async fn state(max_body_bytes: usize) -> (tempfile::TempDir, AppState) {
        state_with(crate::config::Settings {
            max_body_bytes,
            ..Default::default()
        })
        .await
    }

    async fn state_with(settings: crate::config::Settings) -> (tempfile::TempDir, AppState) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("s.db")).unwrap();
        let state = AppState::new(
            std::sync::Arc::new(store),
            std::sync::Arc::new(crate::clock::SystemClock),
            settings,
        )
        .await
        .unwrap();
        (dir, state)
    }

    fn request(
        content_type: Option<&str>,
        length: Option<usize>,
        body: axum::body::Body,
    ) -> Request {
        let mut r = Request::builder().method("POST").uri("/events");
        if let Some(t) = content_type {
            r = r.header(header::CONTENT_TYPE, t);
        }
        if let Some(n) = length {
            r = r.header(header::CONTENT_LENGTH, n);
        }
        r.body(body).unwrap()
    }

    async fn read(state: &AppState, req: Request) -> Result<bytes::Bytes, ApiError> {
        JsonBody::from_request(req, state).await.map(|b| b.0)
    }

    #[tokio::test]
    async fn a_json_body_is_read_up_to_the_limit_and_no_further() {
        let (_dir, s) = state(16).await;
        let json = Some("application/json");
        let at_limit = "[1,2,3,4,5,6,7]".to_owned() + " ";
        assert_eq!(at_limit.len(), 16);
        let got = read(&s, request(json, Some(16), at_limit.clone().into())).await;
        assert_eq!(got.unwrap(), at_limit.as_bytes());
        // Declared too large: refused before reading.
        let e = read(&s, request(json, Some(17), "{}".into())).await;
        assert!(matches!(e, Err(ApiError::PayloadTooLarge(_))), "{e:?}");
        // Not declared, but larger once read.
        let e = read(&s, request(json, None, "[1,2,3,4,5,6,7,8]".into())).await;
        assert!(matches!(e, Err(ApiError::PayloadTooLarge(_))), "{e:?}");
        let e = read(&s, request(Some("text/plain"), None, "{}".into())).await;
        assert!(matches!(e, Err(ApiError::UnsupportedMediaType)), "{e:?}");
        let e = read(&s, request(None, None, "{}".into())).await;
        assert!(matches!(e, Err(ApiError::UnsupportedMediaType)), "{e:?}");
    }

    #[tokio::test]
    async fn a_body_that_fails_to_arrive_is_a_validation_error_not_too_large() {
        let (_dir, s) = state(1024).await;
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = vec![
            Ok(bytes::Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ];
        let body = axum::body::Body::from_stream(futures::stream::iter(chunks));
        let e = read(&s, request(Some("application/json"), None, body)).await;
        assert_eq!(
            errors_of(e),
            [pair("body", "the request body could not be read")]
        );
    }

    #[tokio::test]
    async fn a_body_nested_max_depth_deep_is_read_and_one_deeper_is_refused() {
        let (_dir, s) = state(4096).await;
        let json = Some("application/json");
        let nested = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        let ok = nested(MAX_DEPTH);
        assert!(read(&s, request(json, None, ok.into())).await.is_ok());
        let e = read(&s, request(json, None, nested(MAX_DEPTH + 1).into())).await;
        assert_eq!(
            errors_of(e),
            [pair(
                "body",
                &format!("JSON nesting deeper than {MAX_DEPTH} levels")
            )]
        );
    }

    #[tokio::test]
    async fn a_cursor_decodes_for_its_own_account_only() {
        let (_dir, s) = state(1024).await;
        let a = crate::domain::AccountId::parse("a").unwrap();
        let b = crate::domain::AccountId::parse("b").unwrap();
        let pos = Position(vec![0, 0, 0, 0, 0, 0, 0, 9]);
        let c = s.cursors.encode(&a, &pos);
        assert_eq!(decode_cursor(&s, &a, Some(&c)).unwrap(), Some(pos));
        assert_eq!(decode_cursor(&s, &a, None).unwrap(), None);
        assert!(matches!(
            decode_cursor(&s, &b, Some(&c)),
            Err(ApiError::InvalidCursor)
        ));
    }

    fn outcome(r: &Result<CreateEvent, ApiError>) -> String {
        match r {
            Ok(c) => format!(
                "ok {} {} {:?} {:?} {}",
                c.event_type.as_str(),
                c.payload.as_str(),
                c.source,
                c.fingerprint,
                c.metadata.as_str()
            ),
            Err(ApiError::Validation(errs)) => format!("400 {errs:?}"),
            Err(ApiError::PayloadTooLarge(m)) => format!("413 {m}"),
            Err(e) => format!("other {e:?}"),
        }
    }

    /// One batch item as JSON text: valid events, each kind of invalid
    /// one, and values that are not events at all.
    fn batch_item() -> impl Strategy<Value = String> {
        let text = prop_oneof![
            Just(String::new()),
            "[a-z.]{1,12}",
            "\\PC{0,8}",
            Just("\u{7}".to_owned()),
        ];
        let value = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            text.clone().prop_map(Value::from),
            proptest::collection::btree_map("[a-c]{1,2}", any::<u8>(), 0..4)
                .prop_map(|m| serde_json::json!(m)),
            "[a-z]{0,80}".prop_map(|s| serde_json::json!({ "pad": s })),
            Just(serde_json::json!([1, 2])),
        ];
        let member = prop_oneof![
            Just("event_type"),
            Just("payload"),
            Just("source"),
            Just("metadata"),
            Just("colour"),
        ];
        prop_oneof![
            proptest::collection::vec((member, value.clone()), 0..6).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\" : {v}"))
                    .collect();
                format!("{{ {} }}", fields.join(" , "))
            }),
            value.prop_map(|v| v.to_string()),
        ]
    }

    #[test]
    fn a_batch_envelope_is_refused_as_a_whole() {
        let event = r#"{"event_type":"t","payload":{}}"#;
        for (body, field) in [
            ("[]".to_owned(), "body"),
            ("{}".to_owned(), "events"),
            (r#"{"events":{}}"#.to_owned(), "events"),
            (r#"{"events":[]}"#.to_owned(), "events"),
            (format!(r#"{{"events":[{event}],"x":1}}"#), "x"),
            (format!(r#"{{"events":[{event}],"events":[]}}"#), "events"),
            (format!(r#"{{"events":[{event}]"#), "body"),
        ] {
            match BatchRequest::parse_json(body.as_bytes(), 1024, 1024) {
                Err(ApiError::Validation(errs)) => {
                    assert_eq!(errs[0].field, field, "{body}")
                }
                _ => panic!("{body}: not refused"),
            }
        }
    }

    fn batch_of(item: &str) -> String {
        format!(r#"{{"events":[{item}]}}"#)
    }

    #[test]
    fn a_batch_item_of_exactly_the_event_limit_is_judged_and_one_byte_more_is_too_large() {
        let item = r#"{"event_type":"t","payload":{}}"#;
        let n = item.len();
        let parsed = BatchRequest::parse_json(batch_of(item).as_bytes(), n, 1024).unwrap();
        assert!(parsed.events[0].is_ok(), "{}", outcome(&parsed.events[0]));
        let parsed = BatchRequest::parse_json(batch_of(item).as_bytes(), n - 1, 1024).unwrap();
        assert_eq!(
            outcome(&parsed.events[0]),
            format!(
                "413 The event exceeds {} bytes (the largest POST /events body).",
                n - 1
            )
        );
    }

    #[test]
    fn a_batch_item_nested_max_depth_deep_is_judged_and_one_deeper_is_refused() {
        // The item object is level 1 and its payload level 2, so a payload
        // of `d` levels makes an item `d + 1` deep.
        let item = |d: usize| {
            format!(
                r#"{{"event_type":"t","payload":{}{{}}{}}}"#,
                r#"{"a":"#.repeat(d - 1),
                "}".repeat(d - 1)
            )
        };
        assert_eq!(
            nesting_depth(item(MAX_DEPTH - 1).as_bytes(), 1000),
            MAX_DEPTH
        );
        let parsed =
            BatchRequest::parse_json(batch_of(&item(MAX_DEPTH - 1)).as_bytes(), 4096, 4096)
                .unwrap();
        assert!(parsed.events[0].is_ok(), "{}", outcome(&parsed.events[0]));
        let parsed =
            BatchRequest::parse_json(batch_of(&item(MAX_DEPTH)).as_bytes(), 4096, 4096).unwrap();
        assert_eq!(
            outcome(&parsed.events[0]),
            outcome(&Err(too_deep())),
            "an item {} deep",
            MAX_DEPTH + 1
        );
    }

    #[tokio::test]
    async fn a_batch_body_is_read_up_to_the_batch_limit_not_the_event_limit() {
        let (_dir, s) = state_with(crate::config::Settings {
            max_body_bytes: 8,
            max_batch_body_bytes: 16,
            ..Default::default()
        })
        .await;
        let req = |body: &str| request(Some("application/json"), None, body.to_owned().into());
        let at_limit = "[1,2,3,4,5,6,7] ";
        let got = BatchBody::from_request(req(at_limit), &s)
            .await
            .map(|b| b.0);
        assert_eq!(got.unwrap(), at_limit.as_bytes());
        let e = BatchBody::from_request(req("[1,2,3,4,5,6,7,8]"), &s).await;
        assert!(matches!(e, Err(ApiError::PayloadTooLarge(_))));
        let e = BatchBody::from_request(
            request(Some("text/plain"), None, at_limit.to_owned().into()),
            &s,
        )
        .await;
        assert!(matches!(e, Err(ApiError::UnsupportedMediaType)));
    }

    proptest! {
        #[test]
        fn batch_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = BatchRequest::parse_json(&body, 64, 32);
        }

        #[test]
        fn a_batch_holds_1_to_100_events(n in 0usize..150) {
            let items = vec![r#"{"event_type":"t","payload":{}}"#; n].join(",");
            let body = format!(r#"{{"events":[{items}]}}"#);
            let parsed = BatchRequest::parse_json(body.as_bytes(), 1024, 1024);
            prop_assert_eq!(parsed.is_ok(), (1..=100).contains(&n));
        }

        /// Each item is judged exactly as the same text sent alone to POST
        /// /events (within the same limits) would be.
        #[test]
        fn each_batch_item_is_judged_as_its_own_post(items in proptest::collection::vec(batch_item(), 1..8)) {
            let body = format!("{{ \"events\" : [ {} ] }}", items.join(" , "));
            let parsed = BatchRequest::parse_json(body.as_bytes(), 96, 40).expect("a valid envelope");
            prop_assert_eq!(parsed.events.len(), items.len());
            for (item, got) in items.iter().zip(&parsed.events) {
                let alone = if item.len() > 96 {
                    Err(ApiError::PayloadTooLarge("The event exceeds 96 bytes (the largest POST /events body).".into()))
                } else {
                    CreateEvent::parse_json(item.as_bytes(), 40)
                };
                prop_assert_eq!(outcome(got), outcome(&alone), "{}", item);
            }
        }

        #[test]
        fn lease_body_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LeaseParams::parse_json(&body);
            let _ = SettleParams::parse_json(&body);
        }

        #[test]
        fn limits_parse_exactly_when_in_range(n in -1000i64..1000) {
            let r = InboxParams::parse(Some(&format!("limit={n}")));
            prop_assert_eq!(r.is_ok(), (1..=200).contains(&n));
        }

        #[test]
        fn depth_matches_a_parser_on_nested_arrays(d in 1usize..300) {
            let s = format!("{}{}", "[".repeat(d), "]".repeat(d));
            prop_assert_eq!(nesting_depth(s.as_bytes(), 1000), d);
        }

        #[test]
        fn event_body_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = CreateEvent::parse_json(&body, 1024);
        }

        #[test]
        fn valid_bodies_keep_payload_text_exactly(ws in "[ \n\t]{0,3}", n in any::<i64>(), s in "[a-z]{0,5}") {
            let payload = format!("{{{ws}\"n\"{ws}:{ws}{n}{ws},\"s\":\"{s}\"}}");
            let body = format!("{{\"event_type\":\"t\",\"payload\":{payload}}}");
            let parsed = CreateEvent::parse_json(body.as_bytes(), 1024).unwrap();
            prop_assert_eq!(parsed.payload.as_str(), payload.as_str());
            // Whitespace and key order are not part of the fingerprint.
            let canonical = format!("{{\"s\":\"{s}\",\"n\":{n}}}");
            prop_assert_eq!(parsed.fingerprint, crate::domain::fingerprint::fingerprint("t", &canonical, None).unwrap());
        }
    }
}
