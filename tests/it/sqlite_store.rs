//! The embedded store's own behaviour below the HTTP layer: under failure
//! (a disk budget running out mid-batch), and its file format across
//! versions (a file written by version 1, before leases, is upgraded in
//! place through every later version and keeps working; the upgrade from
//! version 3, which moves payloads to `event_bodies`, is checked row by row
//! in `src/store/sqlite.rs`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};
use triggers_api::domain::{trunc_ms, AccountId, EventId, EventType, JsonObject, LeaseId, Source};
use triggers_api::store::sqlite::{SqliteOptions, SqliteStore};
use triggers_api::store::{
    Dedup, Fingerprint, InboxQuery, InboxState, Inserted, LeaseRequest, NewEvent, Store, StoreError,
};

/// A unique event with a payload of about `bytes` bytes.
fn event(account: &AccountId, n: usize, bytes: usize) -> (NewEvent, Dedup) {
    let text = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(bytes));
    let fingerprint = Fingerprint(Sha256::digest(text.as_bytes()).into());
    (
        NewEvent {
            event_id: EventId::new_v7(),
            account: account.clone(),
            event_type: EventType::parse("disk.budget").unwrap(),
            payload: JsonObject::from_json_text(text).unwrap(),
            source: Some(Source::parse("test").unwrap()),
            metadata: JsonObject::empty(),
            timestamp: trunc_ms(Utc::now()),
        },
        Dedup {
            fingerprint,
            window: Duration::from_secs(300),
            margin: Duration::ZERO,
        },
    )
}

/// SQLite answers SQLITE_FULL when a write would pass the disk budget
/// (`max_page_count`), and on SQLITE_FULL it rolls back the whole open
/// transaction by itself, not just the failing statement. The writer's
/// group commit must then still answer every write in the batch according
/// to what is on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answer_matches_the_disk_when_the_disk_budget_runs_out_mid_batch() {
    // About 4 KiB of pages per event: the budget holds ~240 of the 384.
    const WAVES: usize = 6;
    const WAVE: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("budget.db");
    let options = SqliteOptions::default().max_db_bytes(1024 * 1024);
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(&path, options).unwrap());
    let account = AccountId::parse("budget").unwrap();

    // Waves of concurrent writes, so the writer finds many waiting and
    // commits them in groups; the budget runs out part-way through one.
    let mut answers: Vec<(EventId, Result<Inserted, StoreError>)> = Vec::new();
    for wave in 0..WAVES {
        let writes: Vec<_> = (0..WAVE)
            .map(|n| {
                let (ev, dedup) = event(&account, wave * WAVE + n, 3 * 1024);
                let id = ev.event_id;
                let store = store.clone();
                (
                    id,
                    tokio::spawn(async move { store.insert_event(ev, dedup).await }),
                )
            })
            .collect();
        for (id, task) in writes {
            answers.push((id, task.await.unwrap()));
        }
    }
    drop(store);

    let reopened = SqliteStore::open(&path).unwrap();
    let long_ago = DateTime::<Utc>::UNIX_EPOCH;
    let (mut created, mut failed) = (0, 0);
    let (mut created_missing, mut failed_on_disk, mut not_unavailable) = (0, 0, 0);
    for (id, answer) in &answers {
        let on_disk = reopened
            .get_event(&account, id, long_ago)
            .await
            .unwrap()
            .is_some();
        match answer {
            Ok(Inserted::Created) => {
                created += 1;
                created_missing += usize::from(!on_disk);
            }
            Ok(other) => panic!("a unique event was answered {other:?}"),
            Err(e) => {
                failed += 1;
                failed_on_disk += usize::from(on_disk);
                not_unavailable += usize::from(!matches!(e, StoreError::Unavailable(_)));
            }
        }
    }
    assert_eq!(
        (created_missing, failed_on_disk),
        (0, 0),
        "answers must match the disk: of {created} answered Created, {created_missing} are \
         missing; of {failed} answered with an error, {failed_on_disk} are on disk"
    );
    assert!(
        created > 0 && failed > 0,
        "the budget should run out part-way: {created} created, {failed} failed"
    );
    assert_eq!(
        not_unavailable, 0,
        "a write refused for lack of disk is Unavailable (503), not an internal error"
    );
}

/// Once the budget is spent, a write fails without writing anything and the
/// store keeps serving: reads work, and acknowledging (no new pages) works.
#[tokio::test]
async fn a_store_whose_disk_budget_is_spent_still_reads_and_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spent.db");
    let options = SqliteOptions::default().max_db_bytes(128 * 1024);
    let store = SqliteStore::open_with(&path, options).unwrap();
    let account = AccountId::parse("spent").unwrap();
    let mut kept = Vec::new();
    let refused = loop {
        let (ev, dedup) = event(&account, kept.len(), 3 * 1024);
        let id = ev.event_id;
        match store.insert_event(ev, dedup).await {
            Ok(Inserted::Created) => kept.push(id),
            Ok(other) => panic!("a unique event was answered {other:?}"),
            Err(e) => break (id, e),
        }
        assert!(kept.len() < 1000, "the budget never ran out");
    };
    assert!(
        matches!(refused.1, StoreError::Unavailable(_)),
        "{:?}",
        refused.1
    );
    assert!(!kept.is_empty());
    let long_ago = DateTime::<Utc>::UNIX_EPOCH;
    assert!(store
        .get_event(&account, &refused.0, long_ago)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_event(&account, &kept[0], long_ago)
        .await
        .unwrap()
        .is_some());
    let now = trunc_ms(Utc::now());
    assert_eq!(
        store
            .ack_event(&account, &kept[0], now, long_ago)
            .await
            .unwrap(),
        triggers_api::store::AckOutcome::Acknowledged
    );
}

const V1_SCHEMA: &str = include_str!("../../fixtures/sqlite-schema-v1.sql");

fn user_version(path: &std::path::Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_version_1_file_is_upgraded_in_place_and_its_events_can_be_leased() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    let acct = AccountId::parse("acme").unwrap();
    let now = trunc_ms(Utc::now());
    let ids: Vec<EventId> = (0..3).map(|_| EventId::new_v7()).collect();
    {
        // What version 1 wrote: its schema, three events (the second
        // delivered), user_version 1.
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(V1_SCHEMA).unwrap();
        for (i, id) in ids.iter().enumerate() {
            let delivered = (i == 1).then_some(now.timestamp_millis());
            c.execute(
                "INSERT INTO events (event_id, account, event_type, payload, source, metadata, \
                 ts_ms, delivered_at_ms) VALUES (?1, 'acme', 't', ?2, NULL, '{}', ?3, ?4)",
                rusqlite::params![
                    id.as_uuid().as_bytes().as_slice(),
                    format!(r#"{{"i":{i}}}"#),
                    now.timestamp_millis(),
                    delivered
                ],
            )
            .unwrap();
        }
        c.pragma_update(None, "user_version", 1).unwrap();
    }

    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    let q = InboxQuery {
        after: None,
        event_type: None,
        state: InboxState::Inbox,
        limit: 50,
        max_bytes: usize::MAX,
    };
    let page = store.inbox(&acct, &q).await.unwrap();
    let listed: Vec<EventId> = page.events.iter().map(|e| e.event_id).collect();
    assert_eq!(listed, [ids[0], ids[2]]);
    assert!(page
        .events
        .iter()
        .all(|e| e.lease_count == 0 && e.leased_until.is_none() && !e.quarantined));
    let cutoff = now - TimeDelta::days(30);
    let delivered = store
        .get_event(&acct, &ids[1], cutoff)
        .await
        .unwrap()
        .unwrap();
    assert!(delivered.delivered);
    assert_eq!(delivered.payload.as_str(), r#"{"i":1}"#);

    // Old events are leased like new ones.
    let req = LeaseRequest {
        lease_id: LeaseId::new_random(),
        event_type: None,
        limit: 10,
        now,
        leased_until: now + TimeDelta::seconds(30),
        forget_after: now + TimeDelta::days(31),
        max_leases: 5,
        max_bytes: usize::MAX,
    };
    let leased = store.lease(&acct, &req).await.unwrap();
    assert_eq!(
        leased.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [ids[0], ids[2]]
    );
    let acked = store
        .ack_leased(&acct, &req.lease_id, None, now, cutoff)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(acked.done, [ids[0], ids[2]]);
    drop(store);

    // Opening it again changes nothing; the data is all there.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(user_version(&path), 4);
    assert!(store.inbox(&acct, &q).await.unwrap().events.is_empty());
    // Version 3's idempotency records work on the upgraded file.
    let claim = triggers_api::store::IdempotencyClaim {
        account: acct.clone(),
        key: triggers_api::domain::IdempotencyKey::parse(b"k").unwrap(),
        request: [7; 32],
        token: uuid::Uuid::new_v4(),
        now,
        lapses_at: now + TimeDelta::seconds(30),
    };
    assert_eq!(
        store.claim_idempotency_key(&claim).await.unwrap(),
        triggers_api::store::ClaimOutcome::Claimed
    );
    assert!(
        store
            .get_event(&acct, &ids[0], cutoff)
            .await
            .unwrap()
            .unwrap()
            .delivered
    );
    drop(store);

    // A file from a newer version is refused, not rewritten.
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 5)
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(user_version(&path), 5);
}
