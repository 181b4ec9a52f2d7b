//! The embedded store's file format across versions: a file written by
//! version 1 (before leases) is upgraded in place and keeps working.

use chrono::{TimeDelta, Utc};
use triggers_api::domain::{trunc_ms, AccountId, EventId, LeaseId};
use triggers_api::store::sqlite::SqliteStore;
use triggers_api::store::{InboxQuery, InboxState, LeaseRequest, Store, StoreError};

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
    assert_eq!(user_version(&path), 2);
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
    assert_eq!(user_version(&path), 2);
    assert!(store.inbox(&acct, &q).await.unwrap().events.is_empty());
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
        .pragma_update(None, "user_version", 3)
        .unwrap();
    assert!(matches!(
        SqliteStore::open(&path),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(user_version(&path), 3);
}
