//! Store failures as clients see them: 503 with Retry-After (never a hang,
//! never a 2xx for a write that did not happen), a generic 500 for a store
//! bug, and /status degraded. Backend-independent: a switchable wrapper
//! around a real store.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use triggers_api::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, IdempotencyKey, KeyId, LeaseId, Role,
};
use triggers_api::store::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, Insert,
    Inserted, KeyChange, LeaseRequest, NewEvent, RequeueOutcome, Settled, Store, StoreError,
};

use crate::support::{
    assert_problem_snapshot, problem, test_settings, test_store, Backend, TestApp, TestStore,
};

const OK: u8 = 0;
const UNAVAILABLE: u8 = 1;
const HANG: u8 = 2;
const BROKEN: u8 = 3;
/// Reads and pings work; every write fails (a full disk, say).
const WRITES_FAIL: u8 = 4;

struct Switchable {
    inner: Arc<dyn Store>,
    mode: Arc<AtomicU8>,
}

impl Switchable {
    async fn gate(&self) -> Result<(), StoreError> {
        match self.mode.load(Ordering::SeqCst) {
            UNAVAILABLE => Err(StoreError::unavailable("connection refused (test)")),
            HANG => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            BROKEN => Err(StoreError::internal("bug (test)")),
            _ => Ok(()),
        }
    }

    async fn gate_write(&self) -> Result<(), StoreError> {
        if self.mode.load(Ordering::SeqCst) == WRITES_FAIL {
            return Err(StoreError::unavailable("database or disk is full (test)"));
        }
        self.gate().await
    }
}

#[async_trait]
impl Store for Switchable {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.gate().await?;
        self.inner.ping().await
    }
    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        self.gate().await?;
        self.inner.secret(name).await
    }
    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        self.gate_write().await?;
        self.inner.create_key(key).await
    }
    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.gate().await?;
        self.inner.get_key(key_id).await
    }
    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        self.gate().await?;
        self.inner.list_keys(account).await
    }
    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        self.gate_write().await?;
        self.inner.update_key(key_id, change).await
    }
    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        self.gate_write().await?;
        self.inner.revoke_keys_by_email(email).await
    }
    async fn insert_event(&self, event: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        self.gate_write().await?;
        self.inner.insert_event(event, dedup).await
    }
    async fn get_event(
        &self,
        a: &AccountId,
        id: &EventId,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        self.gate().await?;
        self.inner.get_event(a, id, cutoff).await
    }
    async fn inbox(&self, a: &AccountId, q: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.gate().await?;
        self.inner.inbox(a, q).await
    }
    async fn ack_event(
        &self,
        a: &AccountId,
        id: &EventId,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        self.gate_write().await?;
        self.inner.ack_event(a, id, now, cutoff).await
    }
    async fn lease(&self, a: &AccountId, r: &LeaseRequest) -> Result<Vec<Event>, StoreError> {
        self.gate_write().await?;
        self.inner.lease(a, r).await
    }
    async fn ack_leased(
        &self,
        a: &AccountId,
        l: &LeaseId,
        ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.gate_write().await?;
        self.inner.ack_leased(a, l, ids, now, cutoff).await
    }
    async fn release_leased(
        &self,
        a: &AccountId,
        l: &LeaseId,
        ids: Option<&[EventId]>,
        cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        self.gate_write().await?;
        self.inner.release_leased(a, l, ids, cutoff).await
    }
    async fn requeue(
        &self,
        a: &AccountId,
        id: &EventId,
        cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        self.gate_write().await?;
        self.inner.requeue(a, id, cutoff).await
    }
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        self.gate_write().await?;
        self.inner.insert_events(events).await
    }
    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        self.gate_write().await?;
        self.inner.claim_idempotency_key(claim).await
    }
    async fn finish_idempotency_key(
        &self,
        a: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        self.gate_write().await?;
        self.inner
            .finish_idempotency_key(a, key, token, finish)
            .await
    }
    async fn purge(
        &self,
        d: DateTime<Utc>,
        f: DateTime<Utc>,
        i: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.gate_write().await?;
        self.inner.purge(d, f, i).await
    }
}

async fn switchable_app() -> (TestApp, Arc<AtomicU8>, String) {
    let base = test_store(Backend::Sqlite).await;
    let mode = Arc::new(AtomicU8::new(OK));
    let store = TestStore {
        store: Arc::new(Switchable {
            inner: base.store.clone(),
            mode: mode.clone(),
        }),
        _dir: base._dir,
        location: crate::support::Location::Other,
    };
    let settings = triggers_api::config::Settings {
        store_timeout: Duration::from_millis(300),
        ..test_settings()
    };
    let app = TestApp::start_on(store, settings).await;
    let key = app.key("acme", Role::Creator).await;
    // Authenticate once, so the key is cached before the store goes away.
    assert_eq!(app.get("/inbox", &key).send().await.unwrap().status(), 200);
    (app, mode, key)
}

#[tokio::test]
async fn an_unreachable_store_answers_503_with_retry_after_and_writes_nothing() {
    let (app, mode, key) = switchable_app().await;
    mode.store(UNAVAILABLE, Ordering::SeqCst);
    let body = json!({"event_type": "x", "payload": {}});
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let p = problem(resp, 503, "SERVICE_UNAVAILABLE").await;
    assert!(
        !p["detail"].as_str().unwrap().contains("test"),
        "no cause leaks: {p}"
    );
    assert_problem_snapshot("service_unavailable", p);
    problem(
        app.get("/inbox", &key).send().await.unwrap(),
        503,
        "SERVICE_UNAVAILABLE",
    )
    .await;

    let status = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 503);
    let v: Value = status.json().await.unwrap();
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["store"]["reachable"], false);

    mode.store(OK, Ordering::SeqCst);
    assert!(
        app.walk_inbox(&key, 50, None).await.is_empty(),
        "the refused write did not happen"
    );
    assert_eq!(app.post_event_status(&key, &body).await, 201);
}

#[tokio::test]
async fn status_is_degraded_while_writes_fail_and_ok_again_once_one_succeeds() {
    let (app, mode, key) = switchable_app().await;
    let status = || async {
        let resp = app.client.get(app.url("/status")).send().await.unwrap();
        let code = resp.status().as_u16();
        (code, resp.json::<Value>().await.unwrap())
    };
    assert_eq!(status().await.0, 200);
    mode.store(WRITES_FAIL, Ordering::SeqCst);
    let body = json!({"event_type": "x", "payload": {"n": 1}});
    assert_eq!(app.post_event_status(&key, &body).await, 503);
    let (code, v) = status().await;
    assert_eq!(code, 503, "{v}");
    assert_eq!(v["status"], "degraded");
    assert_eq!(v["store"]["reachable"], true);
    assert_eq!(v["store"]["writable"], false);
    // Reads still work meanwhile.
    assert_eq!(app.get("/inbox", &key).send().await.unwrap().status(), 200);

    mode.store(OK, Ordering::SeqCst);
    assert_eq!(
        status().await.0,
        503,
        "still degraded: no write has succeeded yet"
    );
    assert_eq!(app.post_event_status(&key, &body).await, 201);
    let (code, v) = status().await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["store"]["writable"], true);
}

#[tokio::test]
async fn a_hanging_store_answers_503_within_the_store_budget() {
    let (app, mode, key) = switchable_app().await;
    mode.store(HANG, Ordering::SeqCst);
    let started = Instant::now();
    let resp = app
        .post_json("/events", &key, &json!({"event_type": "x", "payload": {}}))
        .send()
        .await
        .unwrap();
    problem(resp, 503, "SERVICE_UNAVAILABLE").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let status = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn a_store_bug_is_a_generic_500_without_its_cause() {
    let (app, mode, key) = switchable_app().await;
    mode.store(BROKEN, Ordering::SeqCst);
    let resp = app.get("/inbox", &key).send().await.unwrap();
    let p = problem(resp, 500, "INTERNAL_ERROR").await;
    assert!(!p.to_string().contains("bug"), "{p}");
    assert_problem_snapshot("internal_error", p);
}

#[tokio::test]
async fn a_hanging_store_during_key_lookup_answers_503_within_the_store_budget() {
    let (app, mode, _cached) = switchable_app().await;
    let fresh = app.key("acme", Role::Viewer).await;
    mode.store(HANG, Ordering::SeqCst);
    let started = Instant::now();
    let resp = app.get("/inbox", &fresh).send().await.unwrap();
    problem(resp, 503, "SERVICE_UNAVAILABLE").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
}

/// A TCP proxy in front of DynamoDB that the test can cut: afterwards every
/// connection is refused and every open one is closed.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let tasks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let conns = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let t = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                conns.lock().unwrap().push(t);
            }
        });
        Self {
            addr,
            tasks,
            accept,
        }
    }

    fn cut(&self) {
        self.accept.abort();
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_dynamodb_answers_503_within_the_budget_and_status_degrades() {
    use triggers_api::store::dynamodb::{DynamoConfig, DynamoStore};
    let upstream = crate::support::dynamodb::endpoint().await;
    let proxy = CuttableProxy::start(upstream).await;
    let budget = Duration::from_secs(2);
    let cfg = DynamoConfig {
        table_prefix: format!("t{}", uuid::Uuid::new_v4().simple()),
        endpoint_url: Some(format!("http://{}", proxy.addr)),
        request_timeout: budget,
        max_attempts: 3,
    };
    let store = DynamoStore::connect(&cfg).await.unwrap();
    store.create_tables().await.unwrap();
    let settings = triggers_api::config::Settings {
        store_timeout: budget,
        ..test_settings()
    };
    let app = TestApp::start_on(
        TestStore {
            store: Arc::new(store),
            _dir: None,
            location: crate::support::Location::Other,
        },
        settings,
    )
    .await;
    let key = app.key("acme", Role::Creator).await;
    let body = json!({"event_type": "x", "payload": {"n": 1}});
    assert_eq!(app.post_event_status(&key, &body).await, 201);

    proxy.cut();
    let started = Instant::now();
    let resp = app
        .post_json(
            "/events",
            &key,
            &json!({"event_type": "x", "payload": {"n": 2}}),
        )
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.headers()["retry-after"], "1");
    problem(resp, 503, "SERVICE_UNAVAILABLE").await;
    assert!(took < budget + Duration::from_millis(1500), "took {took:?}");
    let started = Instant::now();
    problem(
        app.get("/inbox", &key).send().await.unwrap(),
        503,
        "SERVICE_UNAVAILABLE",
    )
    .await;
    assert!(started.elapsed() < budget + Duration::from_millis(1500));
    let status = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(status.status(), 503);
    assert_eq!(status.json::<Value>().await.unwrap()["status"], "degraded");
}
