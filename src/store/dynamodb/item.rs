//! The item layout: pure functions between domain values and DynamoDB items.
//! No I/O here, so all of it is unit- and property-tested without an
//! emulator. The layout is described in docs/dynamodb.md.

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, EventType, IdempotencyKey, JsonObject, KeyId,
    KeyStatus, LeaseId, Role, Source,
};
use crate::store::{Fingerprint, IdempotencyClaim, KeptResponse, NewEvent, StoreError};

pub(crate) type Item = HashMap<String, AttributeValue>;

// Key attributes of the events table and of its local secondary index.
pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
pub(crate) const TSK: &str = "tsk";
/// The TTL attribute (epoch seconds). `ttl` is a reserved word: always
/// written through `#ttl`.
pub(crate) const TTL: &str = "ttl";

// Event attributes (kept short: attribute names count toward item size).
pub(crate) const A_ID: &str = "id";
pub(crate) const A_ACCOUNT: &str = "acct";
pub(crate) const A_TYPE: &str = "et";
pub(crate) const A_PAYLOAD: &str = "pl";
pub(crate) const A_SOURCE: &str = "src";
pub(crate) const A_METADATA: &str = "md";
/// Number of metadata parts kept in separate items (absent: inline).
pub(crate) const A_META_PARTS: &str = "mp";
pub(crate) const A_PART: &str = "part";
/// Milliseconds since the epoch.
pub(crate) const A_TS: &str = "ts";
/// Milliseconds since the epoch; absent while undelivered.
pub(crate) const A_DELIVERED_AT: &str = "da";
/// Times leased (absent: 0). On the event item (the truth) and copied to
/// its inbox or quarantine entry for listings.
pub(crate) const A_LEASE_COUNT: &str = "lc";
/// End of the latest lease, epoch milliseconds (absent: never leased, or
/// released, or requeued). On the event item and copied like `lc`.
pub(crate) const A_LEASED_UNTIL: &str = "lu";
/// The lease holding the event (event item only; absent: none).
pub(crate) const A_LEASE_ID: &str = "lid";
/// Present (N 1) on a quarantined event's item and its quarantine entry.
pub(crate) const A_QUARANTINED: &str = "q";
/// Lease record: its chunk's entries (L of M).
pub(crate) const L_ENTRIES: &str = "ev";

// Key attributes (keys table; its partition key is `pk` = key id).
pub(crate) const K_ACCOUNT: &str = "acct";
pub(crate) const K_EMAIL: &str = "email";
pub(crate) const K_ROLE: &str = "role";
pub(crate) const K_STATUS: &str = "status";
pub(crate) const K_RATE: &str = "rpm";
pub(crate) const K_HASH: &str = "hash";
pub(crate) const K_CREATED: &str = "created";

/// The secret item's value.
pub(crate) const S_VALUE: &str = "v";

/// The sort key of an event's main item.
pub(crate) const EVENT_SK: &str = "E";
/// Sort keys of metadata parts begin with this.
pub(crate) const PART_SK_PREFIX: &str = "M#";
/// Name of the local secondary index over `(pk, tsk)`.
pub(crate) const BY_TYPE_INDEX: &str = "by_type";

/// DynamoDB refuses items over 400 KB (409,600 bytes, names included; for a
/// table with an LSI, the index entry counts too). An event item stays below
/// this estimate, leaving room for the index entry and estimation slack.
pub(crate) const MAX_INLINE_ITEM: usize = 380_000;
/// Size of each metadata part when metadata does not fit inline.
pub(crate) const PART_BYTES: usize = 350_000;

/// `EV#{account}#{event_id}`: one partition per event.
pub(crate) fn event_pk(account: &AccountId, id: &EventId) -> String {
    format!("EV#{account}#{id}")
}

/// `IN#{account}`: the account's inbox partition (undelivered events only).
pub(crate) fn inbox_pk(account: &AccountId) -> String {
    format!("IN#{account}")
}

/// `QU#{account}`: the account's quarantine partition (undelivered,
/// quarantined events; the same items as the inbox's, moved here).
pub(crate) fn quarantine_pk(account: &AccountId) -> String {
    format!("QU#{account}")
}

/// `AV#{account}`: markers (keys only, plus `tsk`) of the account's events
/// that are available and were never leased, or were released or
/// requeued; sort key `{event_id}`, so the oldest come first.
pub(crate) fn available_pk(account: &AccountId) -> String {
    format!("AV#{account}")
}

/// `LX#{account}`: markers of the account's leased events (running or
/// ended); sort key `{leased_until:013}#{event_id}`, so the leases that
/// ended come first.
pub(crate) fn leased_pk(account: &AccountId) -> String {
    format!("LX#{account}")
}

pub(crate) fn leased_sk(until_ms: i64, id: &EventId) -> String {
    format!("{until_ms:013}#{id}")
}

/// Where the leased markers whose lease ended by `now_ms` stop (exclusive).
pub(crate) fn leased_sk_end(now_ms: i64) -> String {
    format!("{:013}", now_ms.saturating_add(1))
}

/// The availability marker of an event never leased (or released).
pub(crate) fn available_marker(account: &AccountId, type_hash: &str, id: &EventId) -> Item {
    let mut it = key(available_pk(account), id.to_string());
    it.insert(TSK.to_owned(), s(format!("{type_hash}#{id}")));
    it
}

/// The marker of an event leased until `until_ms`.
pub(crate) fn leased_marker(
    account: &AccountId,
    type_hash: &str,
    until_ms: i64,
    id: &EventId,
) -> Item {
    let mut it = key(leased_pk(account), leased_sk(until_ms, id));
    it.insert(
        TSK.to_owned(),
        s(format!("{type_hash}#{}", leased_sk(until_ms, id))),
    );
    it
}

/// The event id at the end of a marker's sort key.
pub(crate) fn marker_event_id(item: &Item) -> Result<EventId, StoreError> {
    let sk = get_s(item, SK, "marker key")?;
    let tail = sk.get(sk.len().saturating_sub(36)..).unwrap_or("");
    EventId::parse(tail).ok_or(corrupt("marker event id"))
}

/// The leased-until of a leased marker (its sort key's head).
pub(crate) fn marker_until(item: &Item) -> Result<i64, StoreError> {
    let sk = get_s(item, SK, "marker key")?;
    sk.split('#')
        .next()
        .and_then(|h| h.parse().ok())
        .ok_or(corrupt("marker leased_until"))
}

/// `LS#{account}#{lease_id}`: the record of one lease, one item per chunk
/// of events it took (written in the transaction that leased them).
pub(crate) fn lease_pk(account: &AccountId, lease: &LeaseId) -> String {
    format!("LS#{account}#{lease}")
}

/// One event of a lease record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeaseEntry {
    pub id: EventId,
    /// The event type's hash (for its availability marker on release).
    pub type_hash: String,
    /// This lease quarantined it (its entry moved to `QU#`).
    pub quarantined: bool,
    /// Metadata parts (their TTL is set on ack).
    pub parts: usize,
}

const E_ID: &str = "i";
const E_TYPE: &str = "h";
const E_QUARANTINED: &str = "q";
const E_PARTS: &str = "m";

/// One chunk of a lease record.
pub(crate) fn lease_chunk_item(
    account: &AccountId,
    lease: &LeaseId,
    chunk: &str,
    until: &DateTime<Utc>,
    expires: &DateTime<Utc>,
    entries: &[LeaseEntry],
) -> Item {
    let mut it = key(lease_pk(account, lease), chunk);
    it.insert(A_LEASED_UNTIL.to_owned(), ms(until));
    it.insert(TTL.to_owned(), ttl_secs(expires));
    let list = entries
        .iter()
        .map(|e| {
            let mut m = HashMap::from([
                (E_ID.to_owned(), s(e.id.to_string())),
                (E_TYPE.to_owned(), s(e.type_hash.as_str())),
            ]);
            if e.quarantined {
                m.insert(E_QUARANTINED.to_owned(), n(1));
            }
            if e.parts > 0 {
                m.insert(
                    E_PARTS.to_owned(),
                    n(i64::try_from(e.parts).unwrap_or(i64::MAX)),
                );
            }
            AttributeValue::M(m)
        })
        .collect();
    it.insert(L_ENTRIES.to_owned(), AttributeValue::L(list));
    it
}

/// A lease record's end and entries (oldest event first), from its chunks.
pub(crate) fn lease_record(
    chunks: &[Item],
) -> Result<(DateTime<Utc>, Vec<LeaseEntry>), StoreError> {
    let mut until = None;
    let mut out = Vec::new();
    for c in chunks {
        until = Some(get_ms(c, A_LEASED_UNTIL, "lease.leased_until")?);
        let Some(AttributeValue::L(list)) = c.get(L_ENTRIES) else {
            return Err(corrupt("lease.entries"));
        };
        for e in list {
            let AttributeValue::M(m) = e else {
                return Err(corrupt("lease.entry"));
            };
            out.push(LeaseEntry {
                id: EventId::parse(get_s(m, E_ID, "lease.entry.id")?)
                    .ok_or(corrupt("lease.entry.id"))?,
                type_hash: get_s(m, E_TYPE, "lease.entry.type")?.to_owned(),
                quarantined: m.contains_key(E_QUARANTINED),
                parts: usize::try_from(get_opt_n(m, E_PARTS, "lease.entry.parts")?.unwrap_or(0))
                    .map_err(|_| corrupt("lease.entry.parts"))?,
            });
        }
    }
    out.sort_by_key(|e| e.id);
    Ok((until.ok_or(corrupt("lease record"))?, out))
}

/// A quarantined event's entry (`QU#{account}` / `{id}`), from its event
/// item as the lease that quarantines it leaves it.
pub(crate) fn quarantine_entry(
    event: &Item,
    account: &AccountId,
    id: &EventId,
) -> Result<Item, StoreError> {
    let mut it = event.clone();
    for k in [A_LEASE_ID, A_DELIVERED_AT, TTL] {
        it.remove(k);
    }
    let t = EventType::parse(get_s(event, A_TYPE, "event.event_type")?)
        .map_err(|_| corrupt("event.event_type"))?;
    it.extend(key(quarantine_pk(account), inbox_sk(id)));
    it.insert(TSK.to_owned(), s(type_sk(&t, id)));
    it.insert(A_QUARANTINED.to_owned(), n(1));
    Ok(it)
}

/// A requeued event's inbox entry, from its event item: never leased.
pub(crate) fn requeued_inbox_entry(
    event: &Item,
    account: &AccountId,
    id: &EventId,
) -> Result<Item, StoreError> {
    let mut it = event.clone();
    for k in [
        A_LEASE_ID,
        A_LEASED_UNTIL,
        A_QUARANTINED,
        A_DELIVERED_AT,
        TTL,
    ] {
        it.remove(k);
    }
    let t = EventType::parse(get_s(event, A_TYPE, "event.event_type")?)
        .map_err(|_| corrupt("event.event_type"))?;
    it.extend(key(inbox_pk(account), inbox_sk(id)));
    it.insert(TSK.to_owned(), s(type_sk(&t, id)));
    it.insert(A_LEASE_COUNT.to_owned(), n(0));
    Ok(it)
}

/// The inbox sort key: the hyphenated lowercase UUIDv7, whose byte order is
/// its time order.
pub(crate) fn inbox_sk(id: &EventId) -> String {
    id.to_string()
}

/// 32 hex digits (128 bits) of SHA-256 of the event type: a fixed-size
/// stand-in for types up to 1,020 bytes (an LSI sort key holds at most
/// 1,024 bytes).
pub(crate) fn type_hash(t: &EventType) -> String {
    let digest = Sha256::digest(t.as_str().as_bytes());
    hex::encode(&digest[..16])
}

/// The LSI sort key: `{type_hash}#{event_id}`, ordered by type then time.
pub(crate) fn type_sk(t: &EventType, id: &EventId) -> String {
    format!("{}#{id}", type_hash(t))
}

/// Inclusive bounds for one type's LSI range, starting strictly after
/// `after`. `None` when nothing can follow `after`.
pub(crate) fn type_range(t: &EventType, after: Option<Uuid>) -> Option<(String, String)> {
    let h = type_hash(t);
    let lo = match after {
        None => format!("{h}#"),
        Some(u) => {
            let next = u.as_u128().checked_add(1)?;
            format!("{h}#{}", Uuid::from_u128(next).hyphenated())
        }
    };
    // '$' follows '#': every `{h}#...` sorts below `{h}$`.
    Some((lo, format!("{h}$")))
}

/// `DD#{account}#{fingerprint}`: the dedup record of one fingerprint.
pub(crate) fn dedup_pk(account: &AccountId, fp: &Fingerprint) -> String {
    format!("DD#{account}#{}", fp.to_hex())
}
pub(crate) const DEDUP_SK: &str = "D";

/// `IK#{account}#{key}`: the record of one idempotency key (an account
/// has no `#`, so the key, which may, cannot make two records meet).
pub(crate) fn idempotency_pk(account: &AccountId, key: &IdempotencyKey) -> String {
    format!("IK#{account}#{}", key.as_str())
}
pub(crate) const IDEMPOTENCY_SK: &str = "K";

// Idempotency record attributes.
/// The request digest (B, 32 bytes).
pub(crate) const I_REQUEST: &str = "rq";
/// The claim's token (S, a UUID).
pub(crate) const I_TOKEN: &str = "tok";
/// Expiry, epoch ms: the claim's lapse while in flight, the kept
/// response's end once finished. Reads judge by it; `ttl` only cleans up.
pub(crate) const I_EXPIRES: &str = "exp";
/// The kept status (N); absent while in flight.
pub(crate) const I_STATUS: &str = "st";
/// The kept body (B).
pub(crate) const I_BODY: &str = "body";

/// A claim's record: in flight until it lapses.
pub(crate) fn idempotency_claim_item(claim: &IdempotencyClaim) -> Item {
    let mut it = key(idempotency_pk(&claim.account, &claim.key), IDEMPOTENCY_SK);
    it.insert(
        I_REQUEST.to_owned(),
        AttributeValue::B(Blob::new(claim.request.to_vec())),
    );
    it.insert(I_TOKEN.to_owned(), s(claim.token.to_string()));
    it.insert(I_EXPIRES.to_owned(), ms(&claim.lapses_at));
    it.insert(TTL.to_owned(), ttl_secs(&claim.lapses_at));
    it
}

/// A stored idempotency record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyRecord {
    pub request: [u8; 32],
    pub expires_ms: i64,
    /// `None` while in flight.
    pub response: Option<KeptResponse>,
}

pub(crate) fn idempotency_record(item: &Item) -> Result<IdempotencyRecord, StoreError> {
    let request = match item.get(I_REQUEST) {
        Some(AttributeValue::B(b)) => {
            <[u8; 32]>::try_from(b.as_ref()).map_err(|_| corrupt("idempotency.request"))?
        }
        _ => return Err(corrupt("idempotency.request")),
    };
    let response = match get_opt_n(item, I_STATUS, "idempotency.status")? {
        None => None,
        Some(status) => Some(KeptResponse {
            status: u16::try_from(status).map_err(|_| corrupt("idempotency.status"))?,
            body: match item.get(I_BODY) {
                Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
                _ => return Err(corrupt("idempotency.body")),
            },
        }),
    };
    Ok(IdempotencyRecord {
        request,
        expires_ms: get_n(item, I_EXPIRES, "idempotency.expires")?,
        response,
    })
}

pub(crate) fn secret_pk(name: &str) -> String {
    format!("SECRET#{name}")
}
pub(crate) const SECRET_SK: &str = "S";

pub(crate) const PING_PK: &str = "PING";
pub(crate) const PING_SK: &str = "P";

pub(crate) fn part_sk(i: usize) -> String {
    format!("{PART_SK_PREFIX}{i:03}")
}

pub(crate) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(crate) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(crate) fn ms(t: &DateTime<Utc>) -> AttributeValue {
    n(t.timestamp_millis())
}

/// Epoch seconds for the TTL attribute, rounded up so that TTL never
/// deletes before the instant it stands for.
pub(crate) fn ttl_secs(t: &DateTime<Utc>) -> AttributeValue {
    let millis = t.timestamp_millis();
    n(millis.div_euclid(1000) + i64::from(millis.rem_euclid(1000) != 0))
}

pub(crate) fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

/// Estimated stored size of an item: names plus values, a little generous
/// for numbers.
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn value_size(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::S(x) | AttributeValue::N(x) => x.len() + 1,
        AttributeValue::B(b) => b.as_ref().len() + 1,
        AttributeValue::M(m) => {
            3 + m
                .iter()
                .map(|(k, v)| k.len() + 1 + value_size(v))
                .sum::<usize>()
        }
        AttributeValue::L(l) => 3 + l.iter().map(|v| 1 + value_size(v)).sum::<usize>(),
        AttributeValue::Ss(x) | AttributeValue::Ns(x) => x.iter().map(|v| v.len() + 1).sum(),
        AttributeValue::Bs(x) => x.iter().map(|v| v.as_ref().len() + 1).sum(),
        _ => 1,
    }
}

/// The items one new event is written as.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct EventItems {
    /// `EV#{account}#{id}` / `E`: the event itself, for GET and ack.
    pub event: Item,
    /// `IN#{account}` / `{id}`: its inbox entry, deleted by the ack.
    pub inbox: Item,
    /// `EV#{account}#{id}` / `M#nnn`: metadata too large to sit inline.
    pub parts: Vec<Item>,
    /// `AV#{account}` / `{id}`: available to leases.
    pub available: Item,
}

/// Splits `text` into pieces of at most `max` bytes on char boundaries.
pub(crate) fn split_text(text: &str, max: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(max.max(4));
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = rest.split_at(cut);
        out.push(head);
        rest = tail;
    }
    out
}

/// Maps a new event to its items. Payload and metadata are stored as their
/// JSON text (S attributes), never as DynamoDB maps, so nesting depth and
/// number precision stay exactly as sent.
pub(crate) fn event_items(e: &NewEvent) -> EventItems {
    event_items_with_limits(e, MAX_INLINE_ITEM, PART_BYTES)
}

pub(crate) fn event_items_with_limits(
    e: &NewEvent,
    max_inline: usize,
    part_bytes: usize,
) -> EventItems {
    let pk = event_pk(&e.account, &e.event_id);
    let mut common: Item = HashMap::from([
        (A_ID.to_owned(), s(e.event_id.to_string())),
        (A_ACCOUNT.to_owned(), s(e.account.as_str())),
        (A_TYPE.to_owned(), s(e.event_type.as_str())),
        (A_PAYLOAD.to_owned(), s(e.payload.as_str())),
        (A_TS.to_owned(), ms(&e.timestamp)),
    ]);
    if let Some(src) = &e.source {
        common.insert(A_SOURCE.to_owned(), s(src.as_str()));
    }

    let mut inbox = common.clone();
    inbox.extend(key(inbox_pk(&e.account), inbox_sk(&e.event_id)));
    inbox.insert(TSK.to_owned(), s(type_sk(&e.event_type, &e.event_id)));

    let inline_size = item_size(&inbox) + A_METADATA.len() + e.metadata.len() + 1;
    let mut parts = Vec::new();
    if inline_size <= max_inline {
        common.insert(A_METADATA.to_owned(), s(e.metadata.as_str()));
        inbox.insert(A_METADATA.to_owned(), s(e.metadata.as_str()));
    } else {
        for (i, piece) in split_text(e.metadata.as_str(), part_bytes)
            .into_iter()
            .enumerate()
        {
            let mut part = key(pk.clone(), part_sk(i));
            part.insert(A_PART.to_owned(), s(piece));
            parts.push(part);
        }
        let count = n(i64::try_from(parts.len()).unwrap_or(i64::MAX));
        common.insert(A_META_PARTS.to_owned(), count.clone());
        inbox.insert(A_META_PARTS.to_owned(), count);
    }

    let mut event = common;
    event.extend(key(pk, EVENT_SK));
    EventItems {
        event,
        inbox,
        parts,
        available: available_marker(&e.account, &type_hash(&e.event_type), &e.event_id),
    }
}

fn corrupt(what: &'static str) -> StoreError {
    StoreError::Corrupt { what }
}

/// About how many bytes an item holds (its string and binary values), to
/// bound how much one inbox page reads.
pub(crate) fn approx_bytes(it: &Item) -> usize {
    it.iter()
        .map(|(k, v)| {
            k.len()
                + match v {
                    AttributeValue::S(s) => s.len(),
                    AttributeValue::B(b) => b.as_ref().len(),
                    _ => 8,
                }
        })
        .sum()
}

pub(crate) fn get_s<'a>(
    item: &'a Item,
    name: &str,
    what: &'static str,
) -> Result<&'a str, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v),
        _ => Err(corrupt(what)),
    }
}

fn get_opt_s<'a>(
    item: &'a Item,
    name: &str,
    what: &'static str,
) -> Result<Option<&'a str>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::S(v)) => Ok(Some(v)),
        Some(_) => Err(corrupt(what)),
    }
}

pub(crate) fn get_opt_n(
    item: &Item,
    name: &str,
    what: &'static str,
) -> Result<Option<i64>, StoreError> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v.parse().map(Some).map_err(|_| corrupt(what)),
        Some(_) => Err(corrupt(what)),
    }
}

pub(crate) fn get_n(item: &Item, name: &str, what: &'static str) -> Result<i64, StoreError> {
    get_opt_n(item, name, what)?.ok_or(corrupt(what))
}

pub(crate) fn get_ms(
    item: &Item,
    name: &str,
    what: &'static str,
) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(get_n(item, name, what)?).ok_or(corrupt(what))
}

pub(crate) fn get_opt_ms(
    item: &Item,
    name: &str,
    what: &'static str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    get_opt_n(item, name, what)?
        .map(|v| DateTime::from_timestamp_millis(v).ok_or(corrupt(what)))
        .transpose()
}

pub(crate) fn get_event_id(item: &Item) -> Result<EventId, StoreError> {
    EventId::parse(get_s(item, A_ID, "event.id")?).ok_or(corrupt("event.id"))
}

/// How many metadata parts belong to this event item (0: inline).
pub(crate) fn meta_parts(item: &Item) -> Result<usize, StoreError> {
    let count = get_opt_n(item, A_META_PARTS, "event.metadata parts")?.unwrap_or(0);
    usize::try_from(count).map_err(|_| corrupt("event.metadata parts"))
}

/// Joins metadata parts (any order) back into the JSON text.
pub(crate) fn join_parts(parts: &[Item], expected: usize) -> Result<String, StoreError> {
    let mut pieces = parts
        .iter()
        .map(|p| {
            Ok((
                get_s(p, SK, "metadata part key")?,
                get_s(p, A_PART, "metadata part")?,
            ))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    if pieces.len() != expected {
        return Err(corrupt("event.metadata parts"));
    }
    pieces.sort_unstable_by(|a, b| a.0.cmp(b.0));
    Ok(pieces.into_iter().map(|(_, text)| text).collect())
}

/// Maps an event or inbox item back. `metadata` must be given (joined from
/// the parts) when `meta_parts(item) > 0`.
pub(crate) fn item_to_event(item: &Item, metadata: Option<String>) -> Result<Event, StoreError> {
    let event_id = get_event_id(item)?;
    let account = AccountId::parse(get_s(item, A_ACCOUNT, "event.account")?)
        .map_err(|_| corrupt("event.account"))?;
    let event_type = EventType::parse(get_s(item, A_TYPE, "event.event_type")?)
        .map_err(|_| corrupt("event.event_type"))?;
    let payload = JsonObject::from_json_text(get_s(item, A_PAYLOAD, "event.payload")?.to_owned())
        .map_err(|_| corrupt("event.payload"))?;
    let source = get_opt_s(item, A_SOURCE, "event.source")?
        .map(|v| Source::parse(v).map_err(|_| corrupt("event.source")))
        .transpose()?;
    let metadata_text = match (get_opt_s(item, A_METADATA, "event.metadata")?, metadata) {
        (Some(inline), _) => inline.to_owned(),
        (None, Some(joined)) => joined,
        (None, None) => return Err(corrupt("event.metadata")),
    };
    let metadata =
        JsonObject::from_json_text(metadata_text).map_err(|_| corrupt("event.metadata"))?;
    let timestamp = get_ms(item, A_TS, "event.timestamp")?;
    let delivered_at = get_opt_ms(item, A_DELIVERED_AT, "event.delivered_at")?;
    let lease_count = get_opt_n(item, A_LEASE_COUNT, "event.lease_count")?.unwrap_or(0);
    let quarantined = item.contains_key(A_QUARANTINED);
    Ok(Event {
        event_id,
        account,
        event_type,
        payload,
        source,
        metadata,
        timestamp,
        delivered: delivered_at.is_some(),
        delivered_at,
        lease_count: u32::try_from(lease_count).map_err(|_| corrupt("event.lease_count"))?,
        leased_until: get_opt_ms(item, A_LEASED_UNTIL, "event.leased_until")?,
        quarantined,
    })
}

/// The dedup record: which event holds this fingerprint, since when.
pub(crate) fn dedup_item(e: &NewEvent, fp: &Fingerprint, expires: &DateTime<Utc>) -> Item {
    let mut item = key(dedup_pk(&e.account, fp), DEDUP_SK);
    item.insert(A_ID.to_owned(), s(e.event_id.to_string()));
    item.insert(A_TS.to_owned(), ms(&e.timestamp));
    item.insert(TTL.to_owned(), ttl_secs(expires));
    item
}

/// The original event named by a dedup record.
pub(crate) fn dedup_original(item: &Item) -> Result<(EventId, DateTime<Utc>), StoreError> {
    let id =
        EventId::parse(get_s(item, A_ID, "dedup.event_id")?).ok_or(corrupt("dedup.event_id"))?;
    Ok((id, get_ms(item, A_TS, "dedup.timestamp")?))
}

pub(crate) fn key_to_item(k: &ApiKeyRecord) -> Item {
    HashMap::from([
        (PK.to_owned(), s(k.key_id.as_str())),
        (K_ACCOUNT.to_owned(), s(k.account.as_str())),
        (K_EMAIL.to_owned(), s(k.email.as_str())),
        (K_ROLE.to_owned(), s(k.role.as_str())),
        (K_STATUS.to_owned(), s(k.status.as_str())),
        (K_RATE.to_owned(), n(i64::from(k.rate_limit_per_minute))),
        (K_HASH.to_owned(), s(k.secret_hash.as_str())),
        (K_CREATED.to_owned(), ms(&k.created_at)),
    ])
}

pub(crate) fn item_to_key(item: &Item) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        key_id: KeyId::parse(get_s(item, PK, "key.key_id")?).ok_or(corrupt("key.key_id"))?,
        account: AccountId::parse(get_s(item, K_ACCOUNT, "key.account")?)
            .map_err(|_| corrupt("key.account"))?,
        email: Email::parse(get_s(item, K_EMAIL, "key.email")?)
            .map_err(|_| corrupt("key.email"))?,
        role: Role::parse(get_s(item, K_ROLE, "key.role")?).ok_or(corrupt("key.role"))?,
        status: KeyStatus::parse(get_s(item, K_STATUS, "key.status")?)
            .ok_or(corrupt("key.status"))?,
        rate_limit_per_minute: u32::try_from(get_n(item, K_RATE, "key.rate_limit")?)
            .map_err(|_| corrupt("key.rate_limit"))?,
        secret_hash: get_s(item, K_HASH, "key.secret_hash")?.to_owned(),
        created_at: get_ms(item, K_CREATED, "key.created_at")?,
    })
}

pub(crate) fn secret_from_item(item: &Item) -> Result<[u8; 32], StoreError> {
    match item.get(S_VALUE) {
        Some(AttributeValue::B(b)) => {
            <[u8; 32]>::try_from(b.as_ref()).map_err(|_| corrupt("secret"))
        }
        _ => Err(corrupt("secret")),
    }
}

pub(crate) fn secret_item(name: &str, value: &[u8; 32]) -> Item {
    let mut item = key(secret_pk(name), SECRET_SK);
    item.insert(
        S_VALUE.to_owned(),
        AttributeValue::B(Blob::new(value.to_vec())),
    );
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::trunc_ms;
    use proptest::prelude::*;

    fn new_event(payload: &str, metadata: &str, source: Option<&str>) -> NewEvent {
        NewEvent {
            event_id: EventId::new_v7(),
            account: AccountId::parse("acct-1").expect("valid"),
            event_type: EventType::parse("order.created").expect("valid"),
            payload: JsonObject::from_json_text(payload.to_owned()).expect("object"),
            source: source.map(|v| Source::parse(v).expect("valid")),
            metadata: JsonObject::from_json_text(metadata.to_owned()).expect("object"),
            timestamp: trunc_ms(Utc::now()),
        }
    }

    fn assert_same(e: &NewEvent, back: &Event) {
        assert_eq!(back.event_id, e.event_id);
        assert_eq!(back.account, e.account);
        assert_eq!(back.event_type, e.event_type);
        assert_eq!(back.payload.as_str(), e.payload.as_str());
        assert_eq!(back.source, e.source);
        assert_eq!(back.metadata.as_str(), e.metadata.as_str());
        assert_eq!(back.timestamp, e.timestamp);
        assert!(!back.delivered);
        assert_eq!(back.delivered_at, None);
    }

    fn round_trip(e: &NewEvent, max_inline: usize, part_bytes: usize) {
        let items = event_items_with_limits(e, max_inline, part_bytes);
        for item in [&items.event, &items.inbox] {
            let parts = meta_parts(item).expect("parts count");
            assert_eq!(parts, items.parts.len());
            let joined = (parts > 0).then(|| join_parts(&items.parts, parts).expect("parts join"));
            assert_same(e, &item_to_event(item, joined).expect("maps back"));
        }
    }

    #[test]
    fn event_round_trips_inline() {
        let e = new_event(
            r#"{"n":12345678901234567890.123456789e-5,"z":null,"u":"é✓😀","a":[1,{"b":[]}]}"#,
            r#"{"trace":"x"}"#,
            Some("billing"),
        );
        round_trip(&e, MAX_INLINE_ITEM, PART_BYTES);
        let items = event_items(&e);
        assert!(items.parts.is_empty());
        assert_eq!(
            items.event.get(PK),
            Some(&s(event_pk(&e.account, &e.event_id)))
        );
        assert_eq!(items.inbox.get(SK), Some(&s(e.event_id.to_string())));
        assert!(
            !items.event.contains_key(TSK),
            "only inbox items are in the type index"
        );
    }

    #[test]
    fn large_metadata_goes_to_parts_and_comes_back() {
        let big = format!(r#"{{"blob":"{}"}}"#, "é".repeat(300_000));
        let e = new_event(
            &format!(r#"{{"p":"{}"}}"#, "x".repeat(250 * 1024)),
            &big,
            None,
        );
        let items = event_items(&e);
        assert_eq!(items.parts.len(), 2);
        for item in [&items.event, &items.inbox] {
            assert!(item_size(item) <= MAX_INLINE_ITEM);
        }
        for part in &items.parts {
            assert!(item_size(part) <= PART_BYTES + 100);
        }
        round_trip(&e, MAX_INLINE_ITEM, PART_BYTES);
    }

    #[test]
    fn type_ranges_are_exclusive_of_the_position_and_bounded() {
        let t = EventType::parse("a").expect("valid");
        let id = EventId::new_v7();
        let sk = type_sk(&t, &id);
        let (lo, hi) = type_range(&t, None).expect("range");
        assert!(lo <= sk && sk <= hi);
        let (lo, hi) = type_range(&t, Some(id.as_uuid())).expect("range");
        assert!(sk < lo && lo <= hi);
        let later = EventId::new_v7();
        let later_sk = type_sk(&t, &later);
        if later > id {
            assert!(lo <= later_sk && later_sk <= hi);
        }
        assert_eq!(type_range(&t, Some(Uuid::max())), None);
    }

    #[test]
    fn idempotency_records_round_trip() {
        let now = trunc_ms(Utc::now());
        let claim = IdempotencyClaim {
            account: AccountId::parse("acct").expect("valid"),
            key: IdempotencyKey::parse(b"order#42 / retry").expect("valid"),
            request: [9; 32],
            token: Uuid::new_v4(),
            now,
            lapses_at: now + chrono::Duration::seconds(30),
        };
        let mut it = idempotency_claim_item(&claim);
        assert_eq!(it.get(PK), Some(&s("IK#acct#order#42 / retry".to_owned())));
        let rec = idempotency_record(&it).expect("maps back");
        assert_eq!(rec.request, [9; 32]);
        assert_eq!(rec.expires_ms, claim.lapses_at.timestamp_millis());
        assert_eq!(rec.response, None);
        it.insert(I_STATUS.to_owned(), n(201));
        it.insert(
            I_BODY.to_owned(),
            AttributeValue::B(Blob::new(b"{}".to_vec())),
        );
        assert_eq!(
            idempotency_record(&it).expect("maps back").response,
            Some(KeptResponse {
                status: 201,
                body: b"{}".to_vec()
            })
        );
        it.remove(I_BODY);
        assert!(idempotency_record(&it).is_err());
    }

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        let t = DateTime::from_timestamp_millis(1_700_000_000_001).expect("valid");
        assert_eq!(ttl_secs(&t), n(1_700_000_001));
        let t = DateTime::from_timestamp_millis(1_700_000_000_000).expect("valid");
        assert_eq!(ttl_secs(&t), n(1_700_000_000));
    }

    #[test]
    fn key_records_round_trip() {
        let k = ApiKeyRecord {
            key_id: KeyId::parse("abcdefgh12345678").expect("valid"),
            account: AccountId::parse("acct").expect("valid"),
            email: Email::parse("a@b.c").expect("valid"),
            role: Role::Viewer,
            status: KeyStatus::Inactive,
            rate_limit_per_minute: 77,
            secret_hash: "$2b$04$hash".to_owned(),
            created_at: trunc_ms(Utc::now()),
        };
        assert_eq!(item_to_key(&key_to_item(&k)).expect("maps back"), k);
    }

    #[test]
    fn corrupt_items_are_reported_not_panicked() {
        let e = new_event("{}", "{}", None);
        let mut item = event_items(&e).event;
        item.insert(A_PAYLOAD.to_owned(), s("[1]"));
        assert!(matches!(
            item_to_event(&item, None),
            Err(StoreError::Corrupt {
                what: "event.payload"
            })
        ));
        item.remove(A_PAYLOAD);
        assert!(matches!(
            item_to_event(&item, None),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Arbitrary JSON text: nested objects/arrays, strings with any chars,
    /// numbers with any digits (kept verbatim thanks to arbitrary_precision).
    fn json_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            "-?(0|[1-9][0-9]{0,40})(\\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?",
            any::<String>().prop_map(|v| serde_json::to_string(&v).expect("string")),
        ];
        leaf.prop_recursive(8, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((any::<String>(), inner), 0..6).prop_map(|kv| {
                    let fields: Vec<String> = kv
                        .into_iter()
                        .map(|(k, v)| format!("{}:{v}", serde_json::to_string(&k).expect("key")))
                        .collect();
                    format!("{{{}}}", fields.join(","))
                }),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = String> {
        prop::collection::vec(("[a-z]{1,8}", json_value()), 0..6).prop_map(|kv| {
            let fields: Vec<String> = kv
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", fields.join(","))
        })
    }

    proptest! {
        #[test]
        fn any_event_round_trips(
            payload in json_object(),
            metadata in json_object(),
            event_type in "[^\\p{Cc}]{1,255}",
            source in prop::option::of("\\PC{0,255}"),
            account in "[A-Za-z0-9._-]{1,64}",
            millis in 0i64..=253_402_300_799_999,
            // Small limits force the metadata-parts path too.
            max_inline in prop_oneof![Just(MAX_INLINE_ITEM), 0usize..400],
            part_bytes in 1usize..64,
        ) {
            let e = NewEvent {
                event_id: EventId::new_v7(),
                account: AccountId::parse(&account).expect("valid"),
                event_type: EventType::parse(&event_type).expect("valid"),
                payload: JsonObject::from_json_text(payload).expect("object"),
                source: source.map(|v| Source::parse(&v).expect("valid")),
                metadata: JsonObject::from_json_text(metadata).expect("object"),
                timestamp: DateTime::from_timestamp_millis(millis).expect("in range"),
            };
            round_trip(&e, max_inline, part_bytes);
        }

        #[test]
        fn split_text_rejoins_exactly(text in any::<String>(), max in 1usize..16) {
            let pieces = split_text(&text, max);
            prop_assert_eq!(pieces.concat(), text.as_str());
            for p in pieces {
                prop_assert!(!p.is_empty() && p.len() <= max.max(4));
            }
        }
    }
}
