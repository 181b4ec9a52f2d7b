//! Test helpers. They use only the crate's public API.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use triggers_api::auth::admin as keys;
use triggers_api::clock::ManualClock;
use triggers_api::config::Settings;
use triggers_api::domain::Role;
use triggers_api::store::memory::MemoryStore;
use triggers_api::store::sqlite::SqliteStore;
use triggers_api::store::Store;
use triggers_api::{AppState, Application};
use triggers_conformance::Endpoint;

/// bcrypt cost for test keys: the minimum, so tests stay fast.
pub const TEST_BCRYPT_COST: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Dynamodb,
    Memory,
}

/// A store for one test, with whatever it must keep alive.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub _dir: Option<tempfile::TempDir>,
    /// Where the data lives, to open a second handle on it.
    pub location: Location,
}

#[derive(Debug, Clone)]
pub enum Location {
    Sqlite(std::path::PathBuf),
    Dynamodb {
        prefix: String,
    },
    /// A clone of the in-memory store is another handle on its data.
    Memory(MemoryStore),
    Other,
}

impl TestStore {
    /// Another handle on the same data, as a second server instance (or a
    /// restarted one) would open it.
    pub async fn reopen(&self) -> Arc<dyn Store> {
        match &self.location {
            Location::Sqlite(path) => Arc::new(SqliteStore::open(path).expect("reopen sqlite")),
            Location::Dynamodb { prefix } => dynamodb::open(prefix).await,
            Location::Memory(store) => Arc::new(store.clone()),
            Location::Other => panic!("this store cannot be reopened"),
        }
    }
}

pub async fn test_store(backend: Backend) -> TestStore {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("triggers.db");
            let store = SqliteStore::open(&path).expect("open sqlite");
            TestStore {
                store: Arc::new(store),
                _dir: Some(dir),
                location: Location::Sqlite(path),
            }
        }
        Backend::Memory => {
            let store = MemoryStore::new();
            TestStore {
                store: Arc::new(store.clone()),
                _dir: None,
                location: Location::Memory(store),
            }
        }
        Backend::Dynamodb => {
            let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
            let store = dynamodb::open(&prefix).await;
            TestStore {
                store,
                _dir: None,
                location: Location::Dynamodb { prefix },
            }
        }
    }
}

pub mod dynamodb {
    //! Where the DynamoDB for tests comes from, in this order: the explicit
    //! endpoint variable `TRIGGERS_TEST_DYNAMODB_ENDPOINT` (what `make test`
    //! sets after starting AWS DynamoDB Local); else a Docker engine via
    //! testcontainers: LocalStack when `TRIGGERS_TEST_DYNAMODB=localstack`,
    //! DynamoDB Local otherwise. Neither → the test fails, it never skips.

    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::OnceCell;
    use triggers_api::store::dynamodb::{DynamoConfig, DynamoStore};
    use triggers_api::store::Store;

    pub const ENDPOINT_VAR: &str = "TRIGGERS_TEST_DYNAMODB_ENDPOINT";

    static ENDPOINT: OnceCell<String> = OnceCell::const_new();

    fn set_dummy_credentials() {
        // Emulators accept any credentials; the SDK insists on some. Set
        // before any client exists (the first call below), never changed.
        for (k, v) in [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
        ] {
            if std::env::var_os(k).is_none() {
                std::env::set_var(k, v);
            }
        }
    }

    pub const KIND_VAR: &str = "TRIGGERS_TEST_DYNAMODB";

    async fn from_docker() -> Option<String> {
        use testcontainers::runners::AsyncRunner;
        use testcontainers::ImageExt;
        if std::env::var(KIND_VAR).as_deref() == Ok("localstack") {
            use testcontainers_modules::localstack::LocalStack;
            let container = LocalStack::default()
                .with_env_var("SERVICES", "dynamodb")
                .start()
                .await
                .ok()?;
            let port = container.get_host_port_ipv4(4566).await.ok()?;
            Box::leak(Box::new(container));
            return Some(format!("http://127.0.0.1:{port}"));
        }
        use testcontainers_modules::dynamodb_local::DynamoDb;
        let container = DynamoDb::default().start().await.ok()?;
        let port = container.get_host_port_ipv4(8000).await.ok()?;
        // Kept for the life of the test process.
        Box::leak(Box::new(container));
        Some(format!("http://127.0.0.1:{port}"))
    }

    pub async fn endpoint() -> String {
        ENDPOINT
            .get_or_init(|| async {
                set_dummy_credentials();
                if let Ok(e) = std::env::var(ENDPOINT_VAR) {
                    if !e.is_empty() {
                        return e;
                    }
                }
                if let Some(e) = from_docker().await {
                    return e;
                }
                panic!(
                    "no DynamoDB for the DynamoDB tests: set {ENDPOINT_VAR} to a DynamoDB \
                     endpoint, run a Docker engine (with {KIND_VAR}=localstack for \
                     LocalStack), or run `make test`, which starts AWS DynamoDB Local itself"
                )
            })
            .await
            .clone()
    }

    pub fn config(endpoint: &str, prefix: &str) -> DynamoConfig {
        DynamoConfig {
            table_prefix: prefix.to_owned(),
            endpoint_url: Some(endpoint.to_owned()),
            request_timeout: Duration::from_secs(5),
            max_attempts: 3,
        }
    }

    /// A store on the tables of `prefix`, created if missing.
    pub async fn open(prefix: &str) -> Arc<dyn Store> {
        let endpoint = endpoint().await;
        let store = DynamoStore::connect(&config(&endpoint, prefix))
            .await
            .expect("connect to DynamoDB");
        store.create_tables().await.expect("create tables");
        Arc::new(store)
    }
}

/// A running server on port 0 with a manual clock.
pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    store: TestStore,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn test_settings() -> Settings {
    Settings {
        store_timeout: Duration::from_secs(10),
        ..Settings::default()
    }
}

/// The black-box helpers (lease, settle, walk, …) work on it too.
impl Endpoint for TestApp {
    fn http(&self) -> &reqwest::Client {
        &self.client
    }
    fn base(&self) -> &str {
        &self.base
    }
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, test_settings()).await
    }

    pub async fn start_with(backend: Backend, settings: Settings) -> Self {
        let store = test_store(backend).await;
        Self::start_on(store, settings).await
    }

    /// A server on `store` through the service's own start-up path
    /// (`Application`: the store behind its time budget, the purge loop,
    /// the connection limits of `settings`).
    pub async fn start_on(store: TestStore, settings: Settings) -> Self {
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let application =
            Application::build(store.store.clone(), clock.clone(), settings, listener)
                .await
                .expect("start the service");
        let addr = application.local_addr().expect("addr");
        let state = application.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = application
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            clock,
            state,
            stop: Some(stop),
            store,
        }
    }

    /// A second server on the same data (another instance, or this one
    /// restarted), with its own clock set to this one's time.
    pub async fn another_instance(&self) -> TestApp {
        use triggers_api::clock::Clock;
        let store = TestStore {
            store: self.store.reopen().await,
            _dir: None,
            location: self.store.location.clone(),
        };
        let app = TestApp::start_on(store, (*self.state.settings).clone()).await;
        app.clock.set(self.clock.now());
        app
    }

    /// Begins this server's shutdown (as a SIGTERM would): it stops
    /// accepting and drains the requests under way.
    pub fn begin_shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A new key for `account` with a generous rate limit.
    pub async fn key(&self, account: &str, role: Role) -> String {
        self.key_with_limit(account, role, 100_000).await
    }

    pub async fn key_with_limit(&self, account: &str, role: Role, per_minute: u32) -> String {
        keys::create(
            self.state.store.as_ref(),
            account,
            &format!("owner@{account}.example"),
            role,
            per_minute,
            TEST_BCRYPT_COST,
        )
        .await
        .expect("create key")
        .token
    }

    pub fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path)).bearer_auth(key)
    }

    pub fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path)).bearer_auth(key)
    }

    pub fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).expect("serialize"))
    }

    pub fn post_raw(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
    }

    /// A server plus a creator key for account "acme".
    pub async fn with_creator(backend: Backend) -> (Self, String) {
        let app = Self::start(backend).await;
        let key = app.key("acme", Role::Creator).await;
        (app, key)
    }

    /// GET /events/{id} as JSON (asserting 200).
    pub async fn event(&self, key: &str, id: &str) -> Value {
        Endpoint::event(self, key, id).await
    }

    /// DELETE /events/{id}; returns the status code.
    pub async fn ack(&self, key: &str, id: &str) -> u16 {
        Endpoint::ack(self, key, id).await
    }

    /// POST /events; returns the status code.
    pub async fn post_event_status(&self, key: &str, body: &Value) -> u16 {
        Endpoint::post_event_status(self, key, body).await
    }

    /// POSTs an event and returns its id (asserting 201).
    pub async fn create_event(&self, key: &str, body: &Value) -> String {
        Endpoint::create_event(self, key, body).await
    }

    /// Walks every inbox page; returns the event ids in order.
    pub async fn walk_inbox(&self, key: &str, limit: u32, event_type: Option<&str>) -> Vec<String> {
        Endpoint::walk_inbox(self, key, limit, event_type).await
    }
}

/// The suite's own checks (problem bodies, validation fields, deep JSON),
/// shared with the black-box cases of the `triggers-conformance` crate.
pub use triggers_conformance::{error_fields, parse_deep, problem};

/// Snapshots a problem body under the top-level `snapshots/` folder, with
/// the correlation id redacted.
pub fn assert_problem_snapshot(name: &str, mut problem: Value) {
    assert!(problem["correlation_id"].is_string(), "{problem}");
    problem["correlation_id"] = Value::String("[correlation_id]".into());
    // Pretty JSON text (insta's own JSON serializer would expose serde_json's
    // arbitrary-precision number representation).
    let text = serde_json::to_string_pretty(&problem).expect("serialize");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        insta::assert_snapshot!(name, text);
    });
}
