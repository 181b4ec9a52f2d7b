//! Deduplication at the end of its window, with the purge running while a
//! repeat is in flight (a defect the simulator's window-edge re-sends aim
//! at, see README "Simulation"): the repeat's timestamp is inside the
//! window, so it must get the original back even if its store call runs
//! after the purge pass that came once the window was over.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::sync::Notify;
use triggers_api::domain::{AccountId, ApiKeyRecord, Email, Event, EventId, KeyId, Role};
use triggers_api::store::{
    AckOutcome, Dedup, InboxPage, InboxQuery, Inserted, KeyChange, NewEvent, Store, StoreError,
};

use crate::support::{test_settings, test_store, Backend, Location, TestApp, TestStore};

/// Inserts wait at a gate while it is closed (a busy store, within the
/// store budget).
struct Held {
    inner: Arc<dyn Store>,
    closed: std::sync::atomic::AtomicBool,
    waiting: Notify,
    open: Notify,
}

#[async_trait]
impl Store for Held {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.inner.secret(name).await
    }
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.inner.create_key(key).await
    }
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.get_key(key_id).await
    }
    async fn list_keys(&self, a: Option<&AccountId>) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.inner.list_keys(a).await
    }
    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.inner.update_key(key_id, change).await
    }
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        self.inner.revoke_keys_by_email(email).await
    }
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            let open = self.open.notified();
            self.waiting.notify_one();
            open.await;
        }
        self.inner.insert_event(event, dedup).await
    }
    async fn get_event(
        &self,
        a: &AccountId,
        id: &EventId,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.inner.get_event(a, id, cutoff).await
    }
    async fn inbox(&self, a: &AccountId, q: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.inner.inbox(a, q).await
    }
    async fn ack_event(
        &self,
        a: &AccountId,
        id: &EventId,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.inner.ack_event(a, id, now, cutoff).await
    }
    async fn purge(&self, d: DateTime<Utc>, f: DateTime<Utc>) -> Result<u64, StoreError> {
        self.inner.purge(d, f).await
    }
}

async fn repeat_in_flight_across_a_purge(b: Backend) {
    let base = test_store(b).await;
    let held = Arc::new(Held {
        inner: base.store.clone(),
        closed: false.into(),
        waiting: Notify::new(),
        open: Notify::new(),
    });
    let store = TestStore {
        store: held.clone(),
        _dir: base._dir,
        location: Location::Other,
    };
    let window = Duration::from_secs(300);
    let settings = triggers_api::config::Settings {
        dedup_window: window,
        // Only the purge pass this test runs.
        purge_interval: Duration::from_secs(3600),
        ..test_settings()
    };
    let app = TestApp::start_on(store, settings).await;
    let key = app.key("acme", Role::Creator).await;
    let body = json!({"event_type": "edge", "payload": {"n": 1}});
    let original = app.create_event(&key, &body).await;

    // The repeat is received 1 ms before the window ends; its insert waits.
    app.clock
        .advance(chrono::Duration::from_std(window).unwrap() - chrono::Duration::milliseconds(1));
    held.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    let waiting = held.waiting.notified();
    let repeat = tokio::spawn(app.post_json("/events", &key, &body).send());
    waiting.await;
    // Meanwhile the window ends and a purge pass runs.
    app.clock.advance(chrono::Duration::milliseconds(2));
    app.state.purge_once().await.unwrap();
    held.closed
        .store(false, std::sync::atomic::Ordering::SeqCst);
    held.open.notify_one();

    let resp = repeat.await.unwrap().unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    assert_eq!(v["event_id"], original.as_str(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_in_flight_at_the_end_of_the_window_survives_a_purge_on_sqlite() {
    repeat_in_flight_across_a_purge(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeat_in_flight_at_the_end_of_the_window_survives_a_purge_on_memory() {
    repeat_in_flight_across_a_purge(Backend::Memory).await;
}
