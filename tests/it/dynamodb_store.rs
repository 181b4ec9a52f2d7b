//! Store-level tests of the DynamoDB backend against a real DynamoDB (AWS
//! DynamoDB Local under `make test`). Every test gets tables of its own
//! (random prefix), so they run in parallel.
//!
//! The endpoint comes from `crate::support::dynamodb::endpoint` (the
//! `TRIGGERS_TEST_DYNAMODB_ENDPOINT` variable, else testcontainers); without
//! one these tests fail (never skip).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, TimeDelta, Utc};
use triggers_api::domain::{
    trunc_ms, AccountId, ApiKeyRecord, Email, Event, EventId, EventType, IdempotencyKey,
    JsonObject, KeyId, KeyStatus, LeaseId, Role, Source,
};
use triggers_api::store::dynamodb::{DynamoConfig, DynamoStore};
use triggers_api::store::{
    AckOutcome, ClaimOutcome, Dedup, Fingerprint, Finish, IdempotencyClaim, InboxQuery, InboxState,
    Insert, Inserted, KeptResponse, KeyChange, LeaseRequest, NewEvent, Position, RequeueOutcome,
    Store, StoreError,
};

const WINDOW: Duration = Duration::from_secs(300);
/// The request/store budget the service keeps dedup records past the window.
const MARGIN: Duration = Duration::from_secs(35);
const RETENTION: TimeDelta = TimeDelta::days(30);

/// The shared resolver: the endpoint variable, else testcontainers, else a
/// failure (never a skip). It also sets dummy credentials when absent.
async fn endpoint() -> String {
    crate::support::dynamodb::endpoint().await
}

async fn config(prefix: &str) -> DynamoConfig {
    DynamoConfig {
        table_prefix: prefix.to_owned(),
        endpoint_url: Some(endpoint().await),
        // Generous: the emulator shares 2 cores with the rest of the suite.
        request_timeout: Duration::from_secs(10),
        max_attempts: 3,
    }
}

fn new_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// A store on brand-new tables of its own.
async fn fresh() -> DynamoStore {
    let store = DynamoStore::connect(&config(&new_prefix()).await)
        .await
        .expect("connect");
    store.create_tables().await.expect("create tables");
    store
}

fn account(s: &str) -> AccountId {
    AccountId::parse(s).expect("valid account")
}

fn etype(s: &str) -> EventType {
    EventType::parse(s).expect("valid event type")
}

fn obj(text: &str) -> JsonObject {
    JsonObject::from_json_text(text.to_owned()).expect("a JSON object")
}

fn now() -> DateTime<Utc> {
    trunc_ms(Utc::now())
}

fn new_event(acct: &AccountId, t: &str, payload: &str) -> NewEvent {
    NewEvent {
        event_id: EventId::new_v7(),
        account: acct.clone(),
        event_type: etype(t),
        payload: obj(payload),
        source: None,
        metadata: JsonObject::empty(),
        timestamp: now(),
    }
}

/// A fingerprint unique to this text (tests do not need the real one).
fn fp(text: &str) -> Fingerprint {
    use sha2::Digest;
    Fingerprint(sha2::Sha256::digest(text.as_bytes()).into())
}

fn unique_dedup() -> Dedup {
    Dedup {
        fingerprint: fp(&uuid::Uuid::new_v4().to_string()),
        window: WINDOW,
        margin: MARGIN,
    }
}

async fn insert(store: &DynamoStore, e: &NewEvent) {
    let r = store
        .insert_event(e.clone(), unique_dedup())
        .await
        .expect("insert");
    assert_eq!(r, Inserted::Created);
}

fn cutoff(at: DateTime<Utc>) -> DateTime<Utc> {
    at - RETENTION
}

fn assert_event_matches(got: &Event, sent: &NewEvent) {
    assert_eq!(got.event_id, sent.event_id);
    assert_eq!(got.account, sent.account);
    assert_eq!(got.event_type, sent.event_type);
    assert_eq!(
        got.payload.as_str(),
        sent.payload.as_str(),
        "payload text must be unchanged"
    );
    assert_eq!(got.source, sent.source);
    assert_eq!(
        got.metadata.as_str(),
        sent.metadata.as_str(),
        "metadata text must be unchanged"
    );
    assert_eq!(got.timestamp, sent.timestamp);
}

async fn get(store: &DynamoStore, e: &NewEvent) -> Option<Event> {
    store
        .get_event(&e.account, &e.event_id, cutoff(now()))
        .await
        .expect("get_event")
}

/// Walks every page of an inbox; returns the ids and each page's has_more.
async fn walk(
    store: &DynamoStore,
    acct: &AccountId,
    t: Option<&str>,
    limit: u32,
) -> (Vec<EventId>, Vec<bool>) {
    let mut ids = Vec::new();
    let mut more = Vec::new();
    let mut after: Option<Position> = None;
    loop {
        let page = store
            .inbox(
                acct,
                &InboxQuery {
                    after: after.clone(),
                    event_type: t.map(etype),
                    state: InboxState::Inbox,
                    limit,
                    max_bytes: usize::MAX,
                },
            )
            .await
            .expect("inbox");
        assert!(page.events.len() <= limit as usize);
        for e in &page.events {
            assert!(!e.delivered, "the inbox holds undelivered events only");
            if let Some(t) = t {
                assert_eq!(e.event_type.as_str(), t);
            }
        }
        ids.extend(page.events.iter().map(|e| e.event_id));
        more.push(page.has_more);
        if !page.has_more {
            return (ids, more);
        }
        assert_eq!(
            page.events.len(),
            limit as usize,
            "only the last page may be short"
        );
        after = page.last.clone();
        assert!(after.is_some());
    }
}

fn deep_payload(levels: usize) -> String {
    let mut s = String::from(r#"{"leaf":[1.50,-0,1e400,null]}"#);
    for i in 0..levels - 1 {
        s = format!(r#"{{"l{i}":{s}}}"#);
    }
    s
}

#[tokio::test]
async fn every_event_field_round_trips_exactly() {
    let store = fresh().await;
    let acct = account("acct-roundtrip");
    let unicode = r#"{"s":"é✓😀 \u0000 \"quoted\" \\ \ud83d\ude00","k\u00e9y":{"nested":"ü"},"empty":"","arr":[]}"#;
    let numbers = r#"{"big":12345678901234567890.123456789e-5,"int":123456789012345678901234567890,"neg":-0.000000000000000000001,"f":1.0,"e":1E+2}"#;
    let nulls = r#"{"a":null,"b":[null,null],"c":{"d":null}}"#;
    let large = format!(r#"{{"blob":"{}","n":1}}"#, "x".repeat(250 * 1024));
    let long_source = "s".repeat(255);
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (deep_payload(100), Some("deep"), "{}"),
        (large, None, r#"{"trace":"t-1"}"#),
        (
            numbers.to_owned(),
            Some(""),
            r#"{"n":0.10000000000000000000001}"#,
        ),
        (nulls.to_owned(), Some("ünïcødé source ✓"), r#"{"m":null}"#),
        (unicode.to_owned(), Some(long_source.as_str()), unicode),
        ("{}".to_owned(), None, "{}"),
    ];
    let mut sent = Vec::new();
    for (payload, source, metadata) in cases {
        let mut e = new_event(&acct, &"é".repeat(255), &payload);
        e.source = source.map(|s| Source::parse(s).expect("valid source"));
        e.metadata = obj(metadata);
        insert(&store, &e).await;
        let got = get(&store, &e).await.expect("the event exists");
        assert_event_matches(&got, &e);
        assert!(!got.delivered);
        assert_eq!(got.delivered_at, None);
        sent.push(e);
    }
    let page = store
        .inbox(
            &acct,
            &InboxQuery {
                after: None,
                event_type: None,
                state: InboxState::Inbox,
                limit: 200,
                max_bytes: usize::MAX,
            },
        )
        .await
        .expect("inbox");
    assert_eq!(page.events.len(), sent.len());
    assert!(!page.has_more);
    sent.sort_by_key(|e| e.event_id);
    for (got, e) in page.events.iter().zip(&sent) {
        assert_event_matches(got, e);
    }
    // The filtered inbox (served by the LSI) carries full events too.
    let page = store
        .inbox(
            &acct,
            &InboxQuery {
                after: None,
                event_type: Some(etype(&"é".repeat(255))),
                state: InboxState::Inbox,
                limit: 200,
                max_bytes: usize::MAX,
            },
        )
        .await
        .expect("filtered inbox");
    assert_eq!(page.events.len(), sent.len());
    for (got, e) in page.events.iter().zip(&sent) {
        assert_event_matches(got, e);
    }
}

#[tokio::test]
async fn oversize_metadata_is_kept_in_parts_and_acked_whole() {
    let store = fresh().await;
    let acct = account("acct-big");
    // 250 KiB payload + 250 KiB metadata: over DynamoDB's 400 KB item limit
    // together, within the API's 512 KiB body limit.
    let mut e = new_event(
        &acct,
        "big",
        &format!(r#"{{"p":"{}"}}"#, "p".repeat(250 * 1024)),
    );
    e.metadata = obj(&format!(r#"{{"m":"{}","u":"✓"}}"#, "ü".repeat(125 * 1024)));
    insert(&store, &e).await;
    assert_event_matches(&get(&store, &e).await.expect("exists"), &e);

    // Metadata alone may be nearly the whole body.
    let mut lone = new_event(&acct, "big", "{}");
    lone.metadata = obj(&format!(r#"{{"m":"{}"}}"#, "m".repeat(500 * 1024)));
    insert(&store, &lone).await;
    assert_event_matches(&get(&store, &lone).await.expect("exists"), &lone);

    let (ids, _) = walk(&store, &acct, None, 1).await;
    let mut want = vec![e.event_id, lone.event_id];
    want.sort();
    assert_eq!(ids, want);

    let at = now();
    assert_eq!(
        store
            .ack_event(&acct, &e.event_id, at, cutoff(at))
            .await
            .expect("ack"),
        AckOutcome::Acknowledged
    );
    assert_eq!(
        store
            .ack_event(&acct, &e.event_id, at, cutoff(at))
            .await
            .expect("ack again"),
        AckOutcome::AlreadyDelivered
    );
    let got = get(&store, &e).await.expect("still readable");
    assert_event_matches(&got, &e);
    assert_eq!(got.delivered_at, Some(at));
    let (ids, _) = walk(&store, &acct, None, 10).await;
    assert_eq!(ids, vec![lone.event_id]);

    // Every item of the event got its TTL.
    let raw = raw_client().await;
    let (events_table, _) = store.table_names();
    let out = raw
        .query()
        .table_name(events_table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(
            ":pk",
            AttributeValue::S(format!("EV#{acct}#{}", e.event_id)),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("raw query");
    let items = out.items();
    assert!(items.len() >= 2, "the event item and its metadata parts");
    for it in items {
        assert!(
            it.contains_key("ttl"),
            "every item of a delivered event expires: {:?}",
            it.get("sk")
        );
    }
}

/// The dedup record's TTL is its timestamp + the window + the margin (a
/// repeat stamped inside the window may reach the store up to the margin
/// later), never just the window.
#[tokio::test]
async fn the_dedup_record_expires_after_the_window_and_its_margin() {
    let store = fresh().await;
    let acct = account("acct-dedup-ttl");
    let dedup = Dedup {
        fingerprint: fp("ttl"),
        window: WINDOW,
        margin: MARGIN,
    };
    let e = new_event(&acct, "t", r#"{"a":1}"#);
    assert_eq!(
        store.insert_event(e.clone(), dedup).await.expect("insert"),
        Inserted::Created
    );
    let raw = raw_client().await;
    let (events_table, _) = store.table_names();
    let item = raw
        .get_item()
        .table_name(events_table)
        .key(
            "pk",
            AttributeValue::S(format!("DD#{acct}#{}", dedup.fingerprint.to_hex())),
        )
        .key("sk", AttributeValue::S("D".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("raw get")
        .item
        .expect("the dedup record");
    let ttl: i64 = item
        .get("ttl")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .expect("a numeric ttl attribute");
    let want = (e.timestamp + TimeDelta::from_std(WINDOW + MARGIN).unwrap()).timestamp_millis();
    assert!(
        ttl * 1000 >= want && ttl * 1000 < want + 1000,
        "ttl {ttl}, want {want} ms"
    );
}

#[tokio::test]
async fn dedup_holds_inside_the_window_and_not_outside() {
    let store = fresh().await;
    let acct = account("acct-dedup");
    let dedup = Dedup {
        fingerprint: fp("same"),
        window: WINDOW,
        margin: MARGIN,
    };
    let t0 = now();
    let mut first = new_event(&acct, "t", r#"{"a":1}"#);
    first.timestamp = t0;
    assert_eq!(
        store
            .insert_event(first.clone(), dedup)
            .await
            .expect("insert"),
        Inserted::Created
    );

    // 1 ms before the window closes: the original answers.
    let mut dup = new_event(&acct, "t", r#"{"a":1}"#);
    dup.timestamp = t0 + TimeDelta::milliseconds(299_999);
    assert_eq!(
        store
            .insert_event(dup.clone(), dedup)
            .await
            .expect("insert"),
        Inserted::Duplicate {
            event_id: first.event_id,
            timestamp: t0
        }
    );
    assert!(
        get(&store, &dup).await.is_none(),
        "a duplicate writes no event"
    );

    // The same fingerprint in another account is another event.
    let mut other = new_event(&account("acct-other"), "t", r#"{"a":1}"#);
    other.timestamp = dup.timestamp;
    assert_eq!(
        store.insert_event(other, dedup).await.expect("insert"),
        Inserted::Created
    );

    // Exactly at the window's end: a new event (judged by timestamps; the
    // dedup record's TTL has nothing to do with it).
    let mut later = new_event(&acct, "t", r#"{"a":1}"#);
    later.timestamp = t0 + TimeDelta::milliseconds(300_000);
    assert_eq!(
        store
            .insert_event(later.clone(), dedup)
            .await
            .expect("insert"),
        Inserted::Created
    );
    // ...which opens a window of its own.
    let mut again = new_event(&acct, "t", r#"{"a":1}"#);
    again.timestamp = later.timestamp + TimeDelta::seconds(1);
    assert_eq!(
        store.insert_event(again, dedup).await.expect("insert"),
        Inserted::Duplicate {
            event_id: later.event_id,
            timestamp: later.timestamp
        }
    );

    // The dedup window survives a new store instance (another server).
    let (events, _) = store.table_names();
    let prefix = events.trim_end_matches("-events").to_owned();
    let second = DynamoStore::connect(&config(&prefix).await)
        .await
        .expect("connect");
    let mut via_second = new_event(&acct, "t", r#"{"a":1}"#);
    via_second.timestamp = later.timestamp + TimeDelta::seconds(2);
    assert_eq!(
        second
            .insert_event(via_second, dedup)
            .await
            .expect("insert"),
        Inserted::Duplicate {
            event_id: later.event_id,
            timestamp: later.timestamp
        }
    );

    let (ids, _) = walk(&store, &acct, None, 50).await;
    assert_eq!(ids, vec![first.event_id, later.event_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_identical_inserts_create_exactly_one_event() {
    let store = Arc::new(fresh().await);
    let acct = account("acct-race");
    let dedup = Dedup {
        fingerprint: fp("race"),
        window: WINDOW,
        margin: MARGIN,
    };
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            let e = new_event(&acct, "race", r#"{"same":true}"#);
            tokio::spawn(async move { (e.event_id, store.insert_event(e, dedup).await) })
        })
        .collect();
    let mut created = Vec::new();
    let mut originals = HashSet::new();
    for t in tasks {
        let (id, r) = t.await.expect("task");
        match r.expect("insert") {
            Inserted::Created => created.push(id),
            Inserted::Duplicate { event_id, .. } => {
                originals.insert(event_id);
            }
        }
    }
    eprintln!(
        "20 concurrent inserts: {:?}",
        store.request_counts().get("TransactWriteItems")
    );
    assert_eq!(created.len(), 1, "exactly one insert creates the event");
    assert!(
        originals.iter().all(|id| *id == created[0]),
        "duplicates name the original"
    );
    let (ids, _) = walk(&store, &acct, None, 50).await;
    assert_eq!(ids, created);
}

#[tokio::test]
async fn inbox_pages_in_order_with_filter_and_acks_interleaved() {
    let store = fresh().await;
    let acct = account("acct-inbox");
    let types = ["a", "b", "a", "c", "a", "b", "a", "a", "b", "a"];
    let mut all = Vec::new();
    for round in 0..3 {
        for (i, t) in types.iter().enumerate() {
            let e = new_event(&acct, t, &format!(r#"{{"round":{round},"i":{i}}}"#));
            insert(&store, &e).await;
            all.push(e);
        }
    }
    all.sort_by_key(|e| e.event_id);
    // Ack every third event, and all the "c" ones.
    let at = now();
    let mut acked = HashSet::new();
    for (i, e) in all.iter().enumerate() {
        if i % 3 == 0 || e.event_type.as_str() == "c" {
            let r = store
                .ack_event(&acct, &e.event_id, at, cutoff(at))
                .await
                .expect("ack");
            assert_eq!(r, AckOutcome::Acknowledged);
            acked.insert(e.event_id);
        }
    }
    let expect = |t: Option<&str>| -> Vec<EventId> {
        all.iter()
            .filter(|e| !acked.contains(&e.event_id))
            .filter(|e| t.is_none_or(|t| e.event_type.as_str() == t))
            .map(|e| e.event_id)
            .collect()
    };
    for t in [None, Some("a"), Some("b"), Some("c"), Some("never")] {
        let want = expect(t);
        for limit in [1, 2, 3, 7, want.len().max(1) as u32, 200] {
            let (ids, more) = walk(&store, &acct, t, limit).await;
            assert_eq!(ids, want, "type {t:?}, limit {limit}");
            assert_eq!(more.iter().filter(|m| !**m).count(), 1);
            if want.len() == limit as usize {
                assert_eq!(more, vec![false], "an exactly full page is the last one");
            }
        }
    }
    // Another account sees none of it.
    let (ids, _) = walk(&store, &account("acct-stranger"), None, 10).await;
    assert!(ids.is_empty());

    // Read-your-writes: visible as soon as the insert returned, gone as soon
    // as the ack returned.
    let e = new_event(&acct, "ryw", "{}");
    insert(&store, &e).await;
    let (ids, _) = walk(&store, &acct, Some("ryw"), 10).await;
    assert_eq!(ids, vec![e.event_id]);
    store
        .ack_event(&acct, &e.event_id, at, cutoff(at))
        .await
        .expect("ack");
    let (ids, _) = walk(&store, &acct, Some("ryw"), 10).await;
    assert!(ids.is_empty());
}

#[tokio::test]
async fn inbox_pages_larger_than_one_megabyte_are_complete() {
    // DynamoDB returns at most 1 MB per Query: a page of big events takes
    // several calls, and has_more must still be exact.
    let store = fresh().await;
    let acct = account("acct-heavy");
    let mut sent = Vec::new();
    for i in 0..9 {
        let t = if i % 3 == 0 { "x" } else { "y" };
        let e = new_event(
            &acct,
            t,
            &format!(r#"{{"i":{i},"blob":"{}"}}"#, "b".repeat(250 * 1024)),
        );
        insert(&store, &e).await;
        sent.push(e);
    }
    sent.sort_by_key(|e| e.event_id);
    let all: Vec<EventId> = sent.iter().map(|e| e.event_id).collect();
    for limit in [4, 8, 9, 200] {
        let (ids, _) = walk(&store, &acct, None, limit).await;
        assert_eq!(ids, all, "limit {limit}");
    }
    let ys: Vec<EventId> = sent
        .iter()
        .filter(|e| e.event_type.as_str() == "y")
        .map(|e| e.event_id)
        .collect();
    for limit in [5, 6, 200] {
        let (ids, _) = walk(&store, &acct, Some("y"), limit).await;
        assert_eq!(ids, ys, "type y, limit {limit}");
    }
    let (calls, n) = count(&store, walk(&store, &acct, None, 200)).await;
    assert_eq!(calls.0.len(), 9);
    assert!(
        n.get("Query").copied().unwrap_or(0) >= 2,
        "paged past 1 MB: {n:?}"
    );
}

#[tokio::test]
async fn ack_is_idempotent_keeps_first_delivery_and_honours_the_cutoff() {
    let store = fresh().await;
    let acct = account("acct-ack");
    let e = new_event(&acct, "t", r#"{"x":1}"#);
    insert(&store, &e).await;

    let first = now();
    assert_eq!(
        store
            .ack_event(&acct, &e.event_id, first, cutoff(first))
            .await
            .expect("ack"),
        AckOutcome::Acknowledged
    );
    let later = first + TimeDelta::seconds(10);
    assert_eq!(
        store
            .ack_event(&acct, &e.event_id, later, cutoff(later))
            .await
            .expect("ack"),
        AckOutcome::AlreadyDelivered
    );
    let got = get(&store, &e).await.expect("still readable after ack");
    assert!(got.delivered);
    assert_eq!(
        got.delivered_at,
        Some(first),
        "a second ack keeps the first delivered_at"
    );

    // The item carries the TTL: delivered_at + retention, in epoch seconds.
    let raw = raw_client().await;
    let (events_table, _) = store.table_names();
    let item = raw
        .get_item()
        .table_name(events_table)
        .key("pk", AttributeValue::S(format!("EV#{acct}#{}", e.event_id)))
        .key("sk", AttributeValue::S("E".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("raw get")
        .item
        .expect("item");
    let ttl: i64 = item
        .get("ttl")
        .and_then(|v| v.as_n().ok())
        .and_then(|n| n.parse().ok())
        .expect("a numeric ttl attribute");
    let want = (first + RETENTION).timestamp_millis();
    assert!(ttl * 1000 >= want && ttl * 1000 < want + 1000, "ttl {ttl}");

    // Past the retention the event counts as purged, for reads and acks,
    // whether or not TTL deleted it yet.
    let purged_at = first + RETENTION;
    assert!(store
        .get_event(&acct, &e.event_id, cutoff(purged_at))
        .await
        .expect("get")
        .is_none());
    assert_eq!(
        store
            .ack_event(&acct, &e.event_id, purged_at, cutoff(purged_at))
            .await
            .expect("ack"),
        AckOutcome::NotFound
    );
    // 1 ms before, still there.
    let just_before = purged_at - TimeDelta::milliseconds(1);
    assert!(store
        .get_event(&acct, &e.event_id, cutoff(just_before))
        .await
        .expect("get")
        .is_some());

    // Unknown ids, and other accounts' events: not found, and an ack
    // creates nothing.
    let ghost = EventId::new_v7();
    assert_eq!(
        store
            .ack_event(&acct, &ghost, first, cutoff(first))
            .await
            .expect("ack"),
        AckOutcome::NotFound
    );
    assert!(store
        .get_event(&acct, &ghost, cutoff(first))
        .await
        .expect("get")
        .is_none());
    let stranger = account("acct-stranger");
    let pending = new_event(&acct, "t", r#"{"x":2}"#);
    insert(&store, &pending).await;
    assert!(store
        .get_event(&stranger, &pending.event_id, cutoff(first))
        .await
        .expect("get")
        .is_none());
    assert_eq!(
        store
            .ack_event(&stranger, &pending.event_id, first, cutoff(first))
            .await
            .expect("ack"),
        AckOutcome::NotFound
    );
    let out = raw
        .get_item()
        .table_name(events_table)
        .key("pk", AttributeValue::S(format!("EV#{acct}#{ghost}")))
        .key("sk", AttributeValue::S("E".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("raw get");
    assert!(out.item.is_none(), "an ack never creates an event");
    let (ids, _) = walk(&store, &acct, None, 10).await;
    assert_eq!(
        ids,
        vec![pending.event_id],
        "the stranger's ack left it in the inbox"
    );
}

fn key_record(id: &str, acct: &str, email: &str, created_at: DateTime<Utc>) -> ApiKeyRecord {
    ApiKeyRecord {
        key_id: KeyId::parse(id).expect("valid key id"),
        account: account(acct),
        email: Email::parse(email).expect("valid email"),
        role: Role::Creator,
        status: KeyStatus::Active,
        rate_limit_per_minute: 100,
        secret_hash: format!("$2b$04$hash-of-{id}"),
        created_at,
    }
}

#[tokio::test]
async fn keys_create_get_list_update_revoke() {
    let store = fresh().await;
    let t = now();
    let a1 = key_record("aaaaaaaaaaaaaaa1", "acct-1", "ann@example.com", t);
    let a2 = key_record(
        "aaaaaaaaaaaaaaa2",
        "acct-1",
        "bob@example.com",
        t + TimeDelta::milliseconds(1),
    );
    let mut b1 = key_record("0aaaaaaaaaaaaaa3", "acct-2", "ann@example.com", t);
    b1.role = Role::Viewer;
    for k in [&a1, &a2, &b1] {
        store.create_key(k).await.expect("create");
    }
    assert!(matches!(
        store.create_key(&a1).await,
        Err(StoreError::Conflict)
    ));

    assert_eq!(
        store.get_key(&a1.key_id).await.expect("get"),
        Some(a1.clone())
    );
    assert_eq!(
        store.get_key(&b1.key_id).await.expect("get"),
        Some(b1.clone())
    );
    let missing = KeyId::parse("zzzzzzzzzzzzzzzz").expect("valid");
    assert_eq!(store.get_key(&missing).await.expect("get"), None);

    // Oldest first, ties by key id.
    assert_eq!(
        store.list_keys(None).await.expect("list"),
        vec![b1.clone(), a1.clone(), a2.clone()]
    );
    assert_eq!(
        store
            .list_keys(Some(&account("acct-1")))
            .await
            .expect("list"),
        vec![a1.clone(), a2.clone()]
    );
    assert!(store
        .list_keys(Some(&account("nobody")))
        .await
        .expect("list")
        .is_empty());

    let inactive = store
        .update_key(&a2.key_id, KeyChange::Status(KeyStatus::Inactive))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(inactive.status, KeyStatus::Inactive);
    let limited = store
        .update_key(&a2.key_id, KeyChange::RateLimit(7))
        .await
        .expect("update")
        .expect("exists");
    assert_eq!(limited.rate_limit_per_minute, 7);
    assert_eq!(limited.status, KeyStatus::Inactive);
    assert_eq!(store.get_key(&a2.key_id).await.expect("get"), Some(limited));
    assert_eq!(
        store
            .update_key(&missing, KeyChange::RateLimit(1))
            .await
            .expect("update"),
        None
    );
    assert_eq!(
        store.get_key(&missing).await.expect("get"),
        None,
        "no upsert"
    );

    let revoked = store
        .revoke_keys_by_email(&Email::parse("ann@example.com").expect("valid"))
        .await
        .expect("revoke");
    assert_eq!(revoked, vec![b1.key_id.clone(), a1.key_id.clone()]);
    for id in [&a1.key_id, &b1.key_id] {
        let k = store.get_key(id).await.expect("get").expect("exists");
        assert_eq!(k.status, KeyStatus::Revoked);
    }
    assert_eq!(
        store
            .get_key(&a2.key_id)
            .await
            .expect("get")
            .expect("exists")
            .status,
        KeyStatus::Inactive,
        "other owners' keys untouched"
    );
    assert!(store
        .revoke_keys_by_email(&Email::parse("nobody@example.com").expect("valid"))
        .await
        .expect("revoke")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_created_once_and_shared() {
    let store = Arc::new(fresh().await);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.secret("cursor").await })
        })
        .collect();
    let mut seen = HashSet::new();
    for t in tasks {
        seen.insert(t.await.expect("task").expect("secret"));
    }
    assert_eq!(seen.len(), 1, "concurrent first uses agree on one secret");
    let s = *seen.iter().next().expect("one");
    assert_eq!(store.secret("cursor").await.expect("secret"), s);
    assert_ne!(store.secret("other").await.expect("secret"), s);

    let (events, _) = store.table_names();
    let prefix = events.trim_end_matches("-events").to_owned();
    let second = DynamoStore::connect(&config(&prefix).await)
        .await
        .expect("connect");
    assert_eq!(
        second.secret("cursor").await.expect("secret"),
        s,
        "shared by instances"
    );
}

#[tokio::test]
async fn create_tables_is_idempotent_and_ping_answers() {
    let store = fresh().await;
    store.create_tables().await.expect("again");
    let (events, _) = store.table_names();
    let prefix = events.trim_end_matches("-events").to_owned();
    let others: Vec<_> = (0..3)
        .map(|_| {
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let s = DynamoStore::connect(&config(&prefix).await)
                    .await
                    .expect("connect");
                s.create_tables().await
            })
        })
        .collect();
    for t in others {
        t.await.expect("task").expect("concurrent create_tables");
    }
    store.ping().await.expect("ping");
    assert_eq!(store.backend(), "dynamodb");

    // Tables created concurrently from scratch, too.
    let prefix = new_prefix();
    let racers: Vec<_> = (0..3)
        .map(|_| {
            let prefix = prefix.clone();
            tokio::spawn(async move {
                let s = DynamoStore::connect(&config(&prefix).await)
                    .await
                    .expect("connect");
                s.create_tables().await
            })
        })
        .collect();
    for t in racers {
        t.await.expect("task").expect("racing create_tables");
    }
    // A store whose tables do not exist is not healthy.
    let missing = DynamoStore::connect(&config(&new_prefix()).await)
        .await
        .expect("connect");
    assert!(missing.ping().await.is_err());
}

async fn assert_unavailable_within<T: std::fmt::Debug>(
    what: &str,
    budget: Duration,
    f: impl std::future::Future<Output = Result<T, StoreError>>,
) {
    let t = Instant::now();
    let r = f.await;
    let took = t.elapsed();
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{what}: expected Unavailable, got {r:?}"
    );
    assert!(
        took <= budget + Duration::from_millis(300),
        "{what}: took {took:?}, budget {budget:?}"
    );
}

/// Every request-path operation, concurrently (each timed on its own).
async fn exercise_unavailable(store: &DynamoStore, budget: Duration) {
    let acct = account("acct");
    let e = new_event(&acct, "t", "{}");
    let at = now();
    let id = KeyId::parse("abcdefghijklmnop").expect("valid");
    let query = InboxQuery {
        after: None,
        event_type: None,
        state: InboxState::Inbox,
        limit: 10,
        max_bytes: usize::MAX,
    };
    tokio::join!(
        assert_unavailable_within("ping", budget, store.ping()),
        assert_unavailable_within(
            "insert",
            budget,
            store.insert_event(e.clone(), unique_dedup())
        ),
        assert_unavailable_within("get_event", budget, store.get_event(&acct, &e.event_id, at)),
        assert_unavailable_within("inbox", budget, store.inbox(&acct, &query)),
        assert_unavailable_within("ack", budget, store.ack_event(&acct, &e.event_id, at, at)),
        assert_unavailable_within("get_key", budget, store.get_key(&id)),
        assert_unavailable_within("secret", budget, store.secret("s")),
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable_within_the_budget() {
    endpoint().await; // credentials
    let budget = Duration::from_secs(2);
    let cfg = DynamoConfig {
        table_prefix: "unreachable".into(),
        endpoint_url: Some("http://127.0.0.1:1".into()),
        request_timeout: budget,
        max_attempts: 3,
    };
    let store = DynamoStore::connect(&cfg)
        .await
        .expect("connect builds a client only");
    exercise_unavailable(&store, budget).await;
}

#[tokio::test]
async fn a_silent_endpoint_times_out_within_the_budget() {
    endpoint().await; // credentials
                      // Accepts connections and never answers: only timeouts can end a call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = listener.accept().await {
            conns.push(c);
        }
    });
    let budget = Duration::from_secs(2);
    let cfg = DynamoConfig {
        table_prefix: "silent".into(),
        endpoint_url: Some(format!("http://{addr}")),
        request_timeout: budget,
        max_attempts: 3,
    };
    let store = DynamoStore::connect(&cfg).await.expect("connect");
    exercise_unavailable(&store, budget).await;
    hold.abort();
}

async fn raw_client() -> aws_sdk_dynamodb::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint().await)
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&conf)
}

/// Requests sent (by operation) while `f` runs.
async fn count<T>(
    store: &DynamoStore,
    f: impl std::future::Future<Output = T>,
) -> (T, BTreeMap<String, u64>) {
    let before = store.request_counts();
    let out = f.await;
    let mut diff = BTreeMap::new();
    for (op, n) in store.request_counts() {
        let d = n - before.get(&op).copied().unwrap_or(0);
        if d > 0 {
            diff.insert(op, d);
        }
    }
    (out, diff)
}

/// Concurrent lease calls read the same candidates; the conditional writes
/// let one of them have each event, and the others skip it (and look
/// again). Together they lease every event exactly once.
#[tokio::test]
async fn concurrent_leases_never_share_an_event_and_the_losers_skip_what_they_lost() {
    let store = fresh().await;
    let acct = account("acct-race");
    let mut created = Vec::new();
    for i in 0..40 {
        let e = new_event(&acct, "r", &format!(r#"{{"i":{i}}}"#));
        insert(&store, &e).await;
        created.push(e.event_id);
    }
    let before = store.request_counts();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (s, a) = (store.clone(), acct.clone());
        tasks.push(tokio::spawn(async move {
            s.lease(&a, &lease_request(10, 5)).await
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(
            t.await
                .expect("task")
                .expect("lease")
                .into_iter()
                .map(|e| e.event_id),
        );
    }
    let unique: HashSet<EventId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an event was leased twice");
    let txs = store
        .request_counts()
        .get("TransactWriteItems")
        .copied()
        .unwrap_or(0)
        - before.get("TransactWriteItems").copied().unwrap_or(0);
    eprintln!(
        "8 concurrent leases of 10 over 40 events: {} leased, {txs} TransactWriteItems",
        seen.len()
    );
    loop {
        let more = store
            .lease(&acct, &lease_request(100, 5))
            .await
            .expect("lease");
        if more.is_empty() {
            break;
        }
        seen.extend(more.into_iter().map(|e| e.event_id));
    }
    seen.sort();
    assert_eq!(seen, created, "every event leased exactly once");
}

/// Events written before leases have no availability marker; the admin
/// backfill writes one for each that is available, and only for those.
#[tokio::test]
async fn events_written_before_leases_become_leasable_after_add_lease_markers() {
    let store = fresh().await;
    let acct = account("acct-old");
    let mut created = Vec::new();
    for i in 0..5 {
        let e = new_event(&acct, "o", &format!(r#"{{"i":{i}}}"#));
        insert(&store, &e).await;
        created.push(e.event_id);
    }
    // The first is leased by this version; the others look like version 1
    // wrote them: no marker.
    let held = lease_request(1, 5);
    assert_eq!(store.lease(&acct, &held).await.expect("lease").len(), 1);
    let raw = raw_client().await;
    let (events, _) = store.table_names();
    for id in &created[1..] {
        raw.delete_item()
            .table_name(events)
            .key("pk", AttributeValue::S(format!("AV#{acct}")))
            .key("sk", AttributeValue::S(id.to_string()))
            .send()
            .await
            .expect("delete marker");
    }
    assert!(store
        .lease(&acct, &lease_request(100, 5))
        .await
        .expect("lease")
        .is_empty());
    let at = now();
    assert_eq!(
        store
            .ack_event(&acct, &created[4], at, cutoff(at))
            .await
            .expect("ack"),
        AckOutcome::Acknowledged
    );
    let (seen, written) = store.add_lease_markers(&acct).await.expect("backfill");
    assert_eq!(
        (seen, written),
        (4, 3),
        "the leased and the delivered one skipped"
    );
    // Again: nothing changes (the same markers are written again).
    assert_eq!(
        store.add_lease_markers(&acct).await.expect("backfill"),
        (4, 3)
    );
    let leased: Vec<EventId> = store
        .lease(&acct, &lease_request(100, 5))
        .await
        .expect("lease")
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    assert_eq!(leased, created[1..4]);
}

/// A lease of up to `limit` events for 5 minutes from now.
fn lease_request(limit: u32, max_leases: u32) -> LeaseRequest {
    let at = now();
    LeaseRequest {
        lease_id: LeaseId::new_random(),
        event_type: None,
        limit,
        now: at,
        leased_until: at + TimeDelta::minutes(5),
        forget_after: at + TimeDelta::minutes(5) + RETENTION,
        max_leases,
        max_bytes: usize::MAX,
    }
}

fn calls(list: &[(&str, u64)]) -> BTreeMap<String, u64> {
    list.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// The request count of every store operation, measured from the SDK (an
/// interceptor counting each HTTP request); docs/dynamodb.md quotes these.
#[tokio::test]
async fn request_counts_per_operation() {
    let store = fresh().await;
    let acct = account("acct-count");
    let mut table: Vec<(&str, BTreeMap<String, u64>)> = Vec::new();
    let mut check = |what: &'static str, got: BTreeMap<String, u64>, want: &[(&str, u64)]| {
        assert_eq!(got, calls(want), "{what}");
        table.push((what, got));
    };

    let e = new_event(&acct, "t", r#"{"n":1}"#);
    let dedup = unique_dedup();
    let (r, c) = count(&store, store.insert_event(e.clone(), dedup)).await;
    assert_eq!(r.expect("insert"), Inserted::Created);
    check("POST /events (new)", c, &[("TransactWriteItems", 1)]);

    let mut dup = new_event(&acct, "t", r#"{"n":1}"#);
    dup.timestamp = e.timestamp;
    let (r, c) = count(&store, store.insert_event(dup, dedup)).await;
    assert!(matches!(r.expect("insert"), Inserted::Duplicate { .. }));
    check("POST /events (duplicate)", c, &[("TransactWriteItems", 1)]);

    let (r, c) = count(&store, store.get_event(&acct, &e.event_id, cutoff(now()))).await;
    assert!(r.expect("get").is_some());
    check("GET /events/{id}", c, &[("GetItem", 1)]);

    let q = InboxQuery {
        after: None,
        event_type: None,
        state: InboxState::Inbox,
        limit: 50,
        max_bytes: usize::MAX,
    };
    let (r, c) = count(&store, store.inbox(&acct, &q)).await;
    assert_eq!(r.expect("inbox").events.len(), 1);
    check("GET /inbox", c, &[("Query", 1)]);

    let q = InboxQuery {
        after: None,
        event_type: Some(etype("t")),
        state: InboxState::Inbox,
        limit: 50,
        max_bytes: usize::MAX,
    };
    let (r, c) = count(&store, store.inbox(&acct, &q)).await;
    assert_eq!(r.expect("inbox").events.len(), 1);
    check("GET /inbox?event_type=", c, &[("Query", 1)]);

    let at = now();
    let (r, c) = count(&store, store.ack_event(&acct, &e.event_id, at, cutoff(at))).await;
    assert_eq!(r.expect("ack"), AckOutcome::Acknowledged);
    check("DELETE /events/{id}", c, &[("TransactWriteItems", 1)]);
    let (r, c) = count(&store, store.ack_event(&acct, &e.event_id, at, cutoff(at))).await;
    assert_eq!(r.expect("ack"), AckOutcome::AlreadyDelivered);
    check(
        "DELETE /events/{id} (again)",
        c,
        &[("TransactWriteItems", 1)],
    );
    let (r, c) = count(
        &store,
        store.ack_event(&acct, &EventId::new_v7(), at, cutoff(at)),
    )
    .await;
    assert_eq!(r.expect("ack"), AckOutcome::NotFound);
    check(
        "DELETE /events/{id} (unknown)",
        c,
        &[("TransactWriteItems", 1)],
    );

    let mut big = new_event(
        &acct,
        "t",
        &format!(r#"{{"p":"{}"}}"#, "p".repeat(250 * 1024)),
    );
    big.metadata = obj(&format!(r#"{{"m":"{}"}}"#, "m".repeat(250 * 1024)));
    let (r, c) = count(&store, store.insert_event(big.clone(), unique_dedup())).await;
    assert_eq!(r.expect("insert"), Inserted::Created);
    check(
        "POST /events (metadata in parts)",
        c,
        &[("TransactWriteItems", 1)],
    );
    let (r, c) = count(&store, store.get_event(&acct, &big.event_id, cutoff(now()))).await;
    assert!(r.expect("get").is_some());
    check(
        "GET /events/{id} (metadata in parts)",
        c,
        &[("GetItem", 1), ("Query", 1)],
    );
    let (r, c) = count(
        &store,
        store.ack_event(&acct, &big.event_id, at, cutoff(at)),
    )
    .await;
    assert_eq!(r.expect("ack"), AckOutcome::Acknowledged);
    check(
        "DELETE /events/{id} (metadata in parts)",
        c,
        &[("TransactWriteItems", 2)],
    );

    // Leases: 100 events of their own account, then lease 1 and 99.
    let la = account("acct-lease");
    for i in 0..100 {
        insert(&store, &new_event(&la, "l", &format!(r#"{{"i":{i}}}"#))).await;
    }
    let one = lease_request(1, 5);
    let (r, c) = count(&store, store.lease(&la, &one)).await;
    assert_eq!(r.expect("lease").len(), 1);
    check(
        "POST /inbox/lease (1 event)",
        c,
        &[("BatchGetItem", 1), ("Query", 2), ("TransactWriteItems", 1)],
    );
    let hundred = lease_request(100, 5);
    let (r, c) = count(&store, store.lease(&la, &hundred)).await;
    assert_eq!(r.expect("lease").len(), 99);
    check(
        "POST /inbox/lease (99 events)",
        c,
        &[("BatchGetItem", 1), ("Query", 2), ("TransactWriteItems", 5)],
    );
    let (r, c) = count(&store, store.lease(&la, &lease_request(100, 5))).await;
    assert!(r.expect("lease").is_empty());
    check("POST /inbox/lease (none available)", c, &[("Query", 2)]);
    let at = now();
    let some: Vec<EventId> = Vec::new();
    let (r, c) = count(
        &store,
        store.release_leased(&la, &one.lease_id, None, cutoff(at)),
    )
    .await;
    assert_eq!(r.expect("release").expect("known").done.len(), 1);
    check(
        "POST /inbox/release (1 event)",
        c,
        &[("Query", 1), ("TransactWriteItems", 1)],
    );
    let (r, c) = count(
        &store,
        store.ack_leased(&la, &hundred.lease_id, None, at, cutoff(at)),
    )
    .await;
    assert_eq!(r.expect("ack").expect("known").done.len(), 99);
    check(
        "POST /inbox/ack (99 events)",
        c,
        &[("Query", 1), ("TransactWriteItems", 4)],
    );
    let (r, c) = count(
        &store,
        store.ack_leased(&la, &hundred.lease_id, Some(&some), at, cutoff(at)),
    )
    .await;
    assert_eq!(r.expect("ack").expect("known").done.len(), 0);
    check("POST /inbox/ack (no event listed)", c, &[("Query", 1)]);
    let (r, c) = count(
        &store,
        store.ack_leased(&la, &LeaseId::new_random(), None, at, cutoff(at)),
    )
    .await;
    assert!(r.expect("ack").is_none());
    check("POST /inbox/ack (unknown lease)", c, &[("Query", 1)]);
    let last = lease_request(1, 1);
    let leased = store.lease(&la, &last).await.expect("lease");
    assert!(leased[0].quarantined);
    let (r, c) = count(&store, store.requeue(&la, &leased[0].event_id, cutoff(at))).await;
    assert!(matches!(r.expect("requeue"), RequeueOutcome::Requeued(_)));
    check(
        "POST /events/{id}/requeue",
        c,
        &[("GetItem", 1), ("TransactWriteItems", 1)],
    );
    let (r, c) = count(&store, store.requeue(&la, &leased[0].event_id, cutoff(at))).await;
    assert_eq!(r.expect("requeue"), RequeueOutcome::NotQuarantined);
    check(
        "POST /events/{id}/requeue (not quarantined)",
        c,
        &[("GetItem", 1)],
    );
    let q = InboxQuery {
        after: None,
        event_type: None,
        state: InboxState::Quarantined,
        limit: 50,
        max_bytes: usize::MAX,
    };
    let (r, c) = count(&store, store.inbox(&la, &q)).await;
    assert!(r.expect("inbox").events.is_empty());
    check("GET /inbox?state=quarantined", c, &[("Query", 1)]);

    // Batch ingest: 100 new events; the same 100 again (all duplicates);
    // 50 new among 50 duplicates (every transaction cancelled once, then
    // sent again without its duplicates).
    let ba = account("acct-batch");
    let batch: Vec<Insert> = (0..100)
        .map(|i| batch_insert(&ba, &format!("b{i}")))
        .collect();
    let (r, c) = count(&store, store.insert_events(batch.clone())).await;
    assert_eq!(r.expect("batch"), vec![Inserted::Created; 100]);
    check(
        "POST /events/batch (100 new)",
        c,
        &[("TransactWriteItems", 4)],
    );
    let again: Vec<Insert> = batch.iter().map(renewed).collect();
    let (r, c) = count(&store, store.insert_events(again)).await;
    let r = r.expect("batch");
    assert!(r.iter().all(|o| matches!(o, Inserted::Duplicate { .. })));
    check(
        "POST /events/batch (100 duplicates)",
        c,
        &[("TransactWriteItems", 4)],
    );
    let mixed: Vec<Insert> = (0..100)
        .map(|i| {
            if i % 2 == 0 {
                renewed(&batch[i])
            } else {
                batch_insert(&ba, &format!("m{i}"))
            }
        })
        .collect();
    let (r, c) = count(&store, store.insert_events(mixed)).await;
    let r = r.expect("batch");
    assert_eq!(
        r.iter().filter(|o| **o == Inserted::Created).count(),
        50,
        "{r:?}"
    );
    check(
        "POST /events/batch (50 new, 50 duplicates)",
        c,
        &[("TransactWriteItems", 8)],
    );
    // Idempotency keys.
    let claim = IdempotencyClaim {
        account: ba.clone(),
        key: IdempotencyKey::parse(b"count").expect("key"),
        request: [1; 32],
        token: uuid::Uuid::new_v4(),
        now: now(),
        lapses_at: now() + TimeDelta::seconds(30),
    };
    let (r, c) = count(&store, store.claim_idempotency_key(&claim)).await;
    assert_eq!(r.expect("claim"), ClaimOutcome::Claimed);
    check("Idempotency-Key: claim", c, &[("PutItem", 1)]);
    let (r, c) = count(&store, store.claim_idempotency_key(&claim)).await;
    assert_eq!(
        r.expect("claim"),
        ClaimOutcome::InFlight { same_request: true }
    );
    check("Idempotency-Key: claim (in flight)", c, &[("PutItem", 1)]);
    let keep = Finish::Keep {
        response: KeptResponse {
            status: 201,
            body: b"{}".to_vec(),
        },
        expires_at: now() + TimeDelta::hours(24),
    };
    let (r, c) = count(
        &store,
        store.finish_idempotency_key(&ba, &claim.key, claim.token, keep),
    )
    .await;
    assert!(r.expect("keep"));
    check(
        "Idempotency-Key: keep the response",
        c,
        &[("UpdateItem", 1)],
    );
    let (r, c) = count(&store, store.claim_idempotency_key(&claim)).await;
    assert!(matches!(r.expect("claim"), ClaimOutcome::Kept { .. }));
    check(
        "Idempotency-Key: claim (kept: replay)",
        c,
        &[("PutItem", 1)],
    );
    let other = IdempotencyClaim {
        key: IdempotencyKey::parse(b"count-2").expect("key"),
        ..claim.clone()
    };
    store.claim_idempotency_key(&other).await.expect("claim");
    let (r, c) = count(
        &store,
        store.finish_idempotency_key(&ba, &other.key, other.token, Finish::Release),
    )
    .await;
    assert!(r.expect("release"));
    check("Idempotency-Key: release", c, &[("DeleteItem", 1)]);

    let k = key_record("cccccccccccccccc", "acct-count", "c@example.com", now());
    let (r, c) = count(&store, store.create_key(&k)).await;
    r.expect("create key");
    check("keys create", c, &[("PutItem", 1)]);
    let (r, c) = count(&store, store.get_key(&k.key_id)).await;
    assert!(r.expect("get key").is_some());
    check("auth (key lookup)", c, &[("GetItem", 1)]);
    let (r, c) = count(&store, store.list_keys(None)).await;
    assert_eq!(r.expect("list").len(), 1);
    check("keys list", c, &[("Scan", 1)]);
    let (r, c) = count(&store, store.update_key(&k.key_id, KeyChange::RateLimit(5))).await;
    assert!(r.expect("update").is_some());
    check("keys update", c, &[("UpdateItem", 1)]);
    let k2 = key_record("dddddddddddddddd", "acct-count", "c@example.com", now());
    store.create_key(&k2).await.expect("create");
    let (r, c) = count(&store, store.revoke_keys_by_email(&k.email)).await;
    assert_eq!(r.expect("revoke").len(), 2);
    check(
        "keys revoke --email (2 keys)",
        c,
        &[("Scan", 1), ("UpdateItem", 2)],
    );

    let (r, c) = count(&store, store.secret("cursor")).await;
    r.expect("secret");
    check("secret (first use)", c, &[("GetItem", 1), ("PutItem", 1)]);
    let (r, c) = count(&store, store.secret("cursor")).await;
    r.expect("secret");
    check("secret (later)", c, &[("GetItem", 1)]);
    let (r, c) = count(&store, store.ping()).await;
    r.expect("ping");
    check("GET /status (ping)", c, &[("GetItem", 1)]);

    let mut report = String::from("\nDynamoDB requests per store operation:\n");
    for (what, c) in &table {
        let parts: Vec<String> = c.iter().map(|(op, n)| format!("{n} {op}")).collect();
        report.push_str(&format!("  {what:<42} {}\n", parts.join(" + ")));
    }
    eprintln!("{report}");
}

/// A unique new event of `acct` for a batch.
fn batch_insert(acct: &AccountId, tag: &str) -> Insert {
    Insert {
        event: new_event(acct, "batch", &format!(r#"{{"tag":"{tag}"}}"#)),
        dedup: Dedup {
            fingerprint: fp(&format!("{acct}/{tag}")),
            window: WINDOW,
            margin: MARGIN,
        },
    }
}

/// The same event sent again (a new id, the same fingerprint).
fn renewed(i: &Insert) -> Insert {
    let mut e = i.event.clone();
    e.event_id = EventId::new_v7();
    e.timestamp = now();
    Insert {
        event: e,
        dedup: i.dedup,
    }
}

/// A batch's events come back in order; a repeat within the batch is a
/// duplicate of its first (one dedup record is never in two writes of one
/// transaction); events with metadata parts take more items per
/// transaction; and a repeat whose first is older than its window is
/// judged by the store, after it.
#[tokio::test]
async fn a_batch_is_deduplicated_within_itself_and_against_the_store() {
    let store = fresh().await;
    let acct = account("acct-b");
    let a = batch_insert(&acct, "a");
    let b = batch_insert(&acct, "b");
    let earlier = batch_insert(&acct, "earlier");
    assert_eq!(
        store
            .insert_event(earlier.event.clone(), earlier.dedup)
            .await
            .expect("insert"),
        Inserted::Created
    );
    let mut big = batch_insert(&acct, "big");
    big.event.metadata = obj(&format!(r#"{{"m":"{}"}}"#, "m".repeat(400 * 1024)));
    let events = vec![
        a.clone(),
        renewed(&a),
        renewed(&earlier),
        b.clone(),
        big.clone(),
        renewed(&b),
    ];
    let out = store.insert_events(events).await.expect("batch");
    let dup = |i: &Insert| Inserted::Duplicate {
        event_id: i.event.event_id,
        timestamp: i.event.timestamp,
    };
    assert_eq!(
        out,
        [
            Inserted::Created,
            dup(&a),
            dup(&earlier),
            Inserted::Created,
            Inserted::Created,
            dup(&b),
        ]
    );
    let got = get(&store, &big.event).await.expect("big event");
    assert_eq!(got.metadata.as_str(), big.event.metadata.as_str());

    // Timestamps further apart than the window: the later repeat is a new
    // event, and the one after it a duplicate of that one.
    let c = batch_insert(&acct, "c");
    let mut c_late = renewed(&c);
    c_late.event.timestamp = c.event.timestamp + TimeDelta::seconds(301);
    let mut c_later = renewed(&c);
    c_later.event.timestamp = c_late.event.timestamp + TimeDelta::seconds(1);
    let out = store
        .insert_events(vec![c.clone(), c_late.clone(), c_later])
        .await
        .expect("batch");
    assert_eq!(out, [Inserted::Created, Inserted::Created, dup(&c_late)]);
}

/// Concurrent identical batches create each event once; every batch
/// names the same event for each item.
#[tokio::test]
async fn concurrent_identical_batches_create_each_event_exactly_once() {
    let store = Arc::new(fresh().await);
    let acct = account("acct-cb");
    let batch: Vec<Insert> = (0..60)
        .map(|i| batch_insert(&acct, &format!("{i}")))
        .collect();
    let runs = (0..5).map(|_| {
        let (store, events) = (store.clone(), batch.iter().map(renewed).collect::<Vec<_>>());
        tokio::spawn(async move {
            let ids: Vec<EventId> = events.iter().map(|i| i.event.event_id).collect();
            let out = store.insert_events(events).await.expect("batch");
            out.into_iter()
                .zip(ids)
                .map(|(o, id)| match o {
                    Inserted::Created => (id, true),
                    Inserted::Duplicate { event_id, .. } => (event_id, false),
                })
                .collect::<Vec<_>>()
        })
    });
    let results: Vec<Vec<(EventId, bool)>> = futures::future::join_all(runs)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let created: usize = results
        .iter()
        .map(|r| r.iter().filter(|(_, c)| *c).count())
        .sum();
    assert_eq!(created, 60);
    for r in &results[1..] {
        let ids: Vec<EventId> = r.iter().map(|(id, _)| *id).collect();
        let first: Vec<EventId> = results[0].iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, first);
    }
}

/// Idempotency records: a claim meets the live record (in flight or kept,
/// same request or not), an expired one is taken over, and only the
/// claim's own token finishes it.
#[tokio::test]
async fn idempotency_claims_meet_live_records_and_take_over_expired_ones() {
    let store = fresh().await;
    let t0 = now();
    let claim = IdempotencyClaim {
        account: account("acct-i"),
        key: IdempotencyKey::parse(b"k").expect("key"),
        request: [1; 32],
        token: uuid::Uuid::new_v4(),
        now: t0,
        lapses_at: t0 + TimeDelta::seconds(30),
    };
    assert_eq!(
        store.claim_idempotency_key(&claim).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    let other = IdempotencyClaim {
        request: [2; 32],
        token: uuid::Uuid::new_v4(),
        ..claim.clone()
    };
    assert_eq!(
        store.claim_idempotency_key(&other).await.expect("claim"),
        ClaimOutcome::InFlight {
            same_request: false
        }
    );
    // Another account's equal key is another record.
    let foreign = IdempotencyClaim {
        account: account("acct-j"),
        ..other.clone()
    };
    assert_eq!(
        store.claim_idempotency_key(&foreign).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    // Lapsed: taken over; the first token can no longer finish it.
    let later = IdempotencyClaim {
        now: t0 + TimeDelta::seconds(30),
        lapses_at: t0 + TimeDelta::seconds(60),
        ..other.clone()
    };
    assert_eq!(
        store.claim_idempotency_key(&later).await.expect("claim"),
        ClaimOutcome::Claimed
    );
    let keep = |status| Finish::Keep {
        response: KeptResponse {
            status,
            body: format!("{{\"s\":{status}}}").into_bytes(),
        },
        expires_at: t0 + TimeDelta::hours(24),
    };
    assert!(!store
        .finish_idempotency_key(&claim.account, &claim.key, claim.token, keep(201))
        .await
        .expect("finish"));
    assert!(store
        .finish_idempotency_key(&later.account, &later.key, later.token, keep(200))
        .await
        .expect("finish"));
    // Finished: neither kept again nor released.
    assert!(!store
        .finish_idempotency_key(&later.account, &later.key, later.token, Finish::Release)
        .await
        .expect("finish"));
    let replay = IdempotencyClaim {
        now: t0 + TimeDelta::hours(1),
        token: uuid::Uuid::new_v4(),
        ..later.clone()
    };
    assert_eq!(
        store.claim_idempotency_key(&replay).await.expect("claim"),
        ClaimOutcome::Kept {
            same_request: true,
            response: KeptResponse {
                status: 200,
                body: b"{\"s\":200}".to_vec()
            }
        }
    );
    // Expired (by its stored expiry, whatever TTL has done): free again.
    let next_day = IdempotencyClaim {
        now: t0 + TimeDelta::hours(24),
        lapses_at: t0 + TimeDelta::hours(24) + TimeDelta::seconds(30),
        ..replay.clone()
    };
    assert_eq!(
        store.claim_idempotency_key(&next_day).await.expect("claim"),
        ClaimOutcome::Claimed
    );
}

/// Sanity of the test helpers themselves (no DynamoDB needed).
#[test]
fn deep_payload_has_the_requested_depth() {
    let v: serde_json::Value = serde_json::from_str(&deep_payload(100)).expect("valid JSON");
    let mut depth = 0;
    let mut cur = &v;
    while let Some((_, next)) = cur.as_object().and_then(|m| m.iter().next()) {
        depth += 1;
        cur = next;
    }
    assert_eq!(depth, 100);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 16,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// The lease model of `props` (every event in exactly one state after
    /// every step) on DynamoDB; fewer and shorter cases than on SQLite.
    #[test]
    fn random_lease_sequences_keep_every_event_in_exactly_one_state(
        ops in crate::props::lease_ops(30)
    ) {
        crate::props::runtime().block_on(crate::props::check_lease_model(
            crate::support::Backend::Dynamodb,
            &ops,
        ))?;
    }
}
