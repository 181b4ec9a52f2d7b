//! The black-box part of the Triggers API conformance suite: every rule of
//! `docs/api.md` that a client can check over HTTP with four given keys, and
//! nothing else. `triggers-api conformance --base-url URL` runs it against
//! any deployment ([`runner`]); the repository's own tests run every case in
//! process against each backend (`tests/it/conformance/`), beside the cases
//! that need a test-only hook (the server's clock, its store, its settings, a
//! second instance), which this crate lists as skipped with their reason.
//!
//! A case is an `async fn(&Ctx)`; it fails by panicking (an assertion), as a
//! test does, and the runner reports the panic's message. Cases may run
//! against a **shared** deployment: none assumes an empty inbox. Each one
//! sends event types of its own, `conf.<run id>.<case>.<suffix>`
//! ([`Ctx::ty`]), reads the inbox and leases only through `event_type`
//! filters of those types, and after the case every event of those types is
//! acknowledged ([`Case::run_once`]).

pub mod cases;
mod check;
mod registry;
pub mod runner;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use check::{enc, error_fields, ids, lease_id, parse_deep, problem, ts};
pub use registry::{case, cases, Case, Kind};

/// The four keys a run needs, as `triggers-api keys create` prints them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    /// A creator key of the account the run works in.
    pub creator: String,
    /// A viewer key of the same account.
    pub viewer: String,
    /// A creator key of another account.
    pub other_account: String,
    /// A revoked key (of any account), revoked more than the auth cache time
    /// (30 s) ago or never used before its revocation.
    pub revoked: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Keys {
    /// The keys by their public ids, never their secrets.
    pub fn describe(&self) -> String {
        let id = |k: &str| k.get(4..20).unwrap_or("?").to_owned();
        format!(
            "keys (ids): creator {}, viewer {}, other account {}, revoked {}",
            id(&self.creator),
            id(&self.viewer),
            id(&self.other_account),
            id(&self.revoked)
        )
    }
}

/// The environment variables (and the names in a keys file) of the keys.
pub const KEY_VARS: [(&str, &str); 4] = [
    ("TRIGGERS_CONFORMANCE_CREATOR_KEY", "a creator key"),
    (
        "TRIGGERS_CONFORMANCE_VIEWER_KEY",
        "a viewer key of the same account",
    ),
    (
        "TRIGGERS_CONFORMANCE_OTHER_ACCOUNT_KEY",
        "a creator key of another account",
    ),
    ("TRIGGERS_CONFORMANCE_REVOKED_KEY", "a revoked key"),
];

impl Keys {
    /// The keys from the environment (`lookup` reads a variable), each
    /// falling back to the same name in `file`: lines `NAME=VALUE`, with
    /// `#` comments, an optional `export ` and optional quotes (a file a
    /// shell can source).
    pub fn load(
        file: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Keys, String> {
        let from_file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read the keys file {}: {e}", path.display()))?;
                parse_keys_file(&text).map_err(|e| format!("keys file {}: {e}", path.display()))?
            }
            None => BTreeMap::new(),
        };
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for (var, what) in KEY_VARS {
            match lookup(var)
                .filter(|v| !v.trim().is_empty())
                .or_else(|| from_file.get(var).cloned())
            {
                Some(v) => found.push(v.trim().to_owned()),
                None => missing.push(format!("{var} ({what})")),
            }
        }
        if !missing.is_empty() {
            return Err(format!(
                "missing keys: {}; set them in the environment or in a file given with --keys",
                missing.join(", ")
            ));
        }
        let [creator, viewer, other_account, revoked]: [String; 4] = found
            .try_into()
            .map_err(|_| "four keys expected".to_owned())?;
        Ok(Keys {
            creator,
            viewer,
            other_account,
            revoked,
        })
    }
}

fn parse_keys_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: expected NAME=VALUE", n + 1));
        };
        let name = name.trim();
        if !KEY_VARS.iter().any(|(v, _)| *v == name) {
            return Err(format!(
                "line {}: unknown name {name:?} (expected one of {})",
                n + 1,
                KEY_VARS.map(|(v, _)| v).join(", ")
            ));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        out.insert(name.to_owned(), value.to_owned());
    }
    Ok(out)
}

/// A deployment under test: where it is, the keys, an HTTP client, and what
/// to expect where the contract leaves a value to the deployment.
#[derive(Clone)]
pub struct Target {
    /// The base URL without a trailing `/`; every request path is appended
    /// to it, so it may carry a path prefix.
    pub base: String,
    pub creator: String,
    pub viewer: String,
    pub other_account: String,
    pub revoked: String,
    pub client: reqwest::Client,
    /// A client that never reuses a connection: for requests whose body the
    /// server may leave unread (an oversize one), after which it closes the
    /// connection; back in a pool, that connection would fail the next
    /// request.
    pub unpooled: reqwest::Client,
    /// The `store.backend` that `GET /status` must report (any when unset).
    pub expect_backend: Option<String>,
    /// The `version` that `/` and `/status` must report (any when unset).
    pub expect_version: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys by id only: a debug print must not leak a secret.
        let keys = Keys {
            creator: self.creator.clone(),
            viewer: self.viewer.clone(),
            other_account: self.other_account.clone(),
            revoked: self.revoked.clone(),
        };
        f.debug_struct("Target")
            .field("base", &self.base)
            .field("keys", &keys.describe())
            .field("expect_backend", &self.expect_backend)
            .field("expect_version", &self.expect_version)
            .finish()
    }
}

impl Target {
    /// A target at `base` (http or https, any path prefix, no query).
    pub fn new(base: &str, keys: Keys) -> Result<Target, String> {
        let url = reqwest::Url::parse(base).map_err(|e| format!("--base-url {base:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "--base-url {base:?}: expected an http or https URL"
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "--base-url {base:?}: a base URL has no query or fragment"
            ));
        }
        let client = |idle: usize| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_max_idle_per_host(idle)
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        Ok(Target {
            base: url.as_str().trim_end_matches('/').to_owned(),
            creator: keys.creator,
            viewer: keys.viewer,
            other_account: keys.other_account,
            revoked: keys.revoked,
            client: client(usize::MAX)?,
            unpooled: client(0)?,
            expect_backend: None,
            expect_version: None,
        })
    }

    /// `host:port` and the path prefix, for the cases that write HTTP/1.1
    /// by hand; `None` for https (they need a plain TCP connection).
    pub fn raw_http(&self) -> Option<(String, String)> {
        let url = reqwest::Url::parse(&self.base).ok()?;
        if url.scheme() != "http" {
            return None;
        }
        let host = url.host_str()?;
        let port = url.port_or_known_default()?;
        let host = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Some((host, url.path().trim_end_matches('/').to_owned()))
    }
}

/// Requests against a server: implemented by [`Target`] (and [`Ctx`]) here
/// and by the in-process test server in `tests/it`, so that one set of
/// helpers serves both.
pub trait Endpoint: Sync {
    fn http(&self) -> &reqwest::Client;
    fn base(&self) -> &str;

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    fn get(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http().get(self.url(path)).bearer_auth(key)
    }

    fn delete(&self, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.http().delete(self.url(path)).bearer_auth(key)
    }

    fn post_raw(
        &self,
        path: &str,
        key: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.http()
            .post(self.url(path))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(body)
    }

    fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::RequestBuilder {
        self.post_raw(path, key, serde_json::to_vec(body).expect("serialize"))
    }

    /// POSTs an event and returns its id (asserting 201).
    fn create_event<'a>(
        &'a self,
        key: &'a str,
        body: &'a Value,
    ) -> impl Future<Output = String> + Send + 'a {
        async move {
            let resp = self
                .post_json("/events", key, body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 201, "POST /events {body}");
            let v: Value = resp.json().await.expect("json");
            v["event_id"].as_str().expect("event_id").to_owned()
        }
    }

    /// POST /events; returns the status code.
    fn post_event_status<'a>(
        &'a self,
        key: &'a str,
        body: &'a Value,
    ) -> impl Future<Output = u16> + Send + 'a {
        async move {
            self.post_json("/events", key, body)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    }

    /// GET /events/{id} as JSON (asserting 200).
    fn event<'a>(&'a self, key: &'a str, id: &'a str) -> impl Future<Output = Value> + Send + 'a {
        async move {
            let resp = self
                .get(&format!("/events/{id}"), key)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 200, "GET /events/{id}");
            parse_deep(&resp.text().await.expect("body"))
        }
    }

    /// DELETE /events/{id}; returns the status code.
    fn ack<'a>(&'a self, key: &'a str, id: &'a str) -> impl Future<Output = u16> + Send + 'a {
        async move {
            self.delete(&format!("/events/{id}"), key)
                .send()
                .await
                .expect("send")
                .status()
                .as_u16()
        }
    }

    /// Walks every page of `GET /inbox?limit=…{query}`; returns the event
    /// ids in order (`query` adds parameters, e.g. `&state=quarantined`).
    fn walk<'a>(
        &'a self,
        key: &'a str,
        query: &'a str,
        limit: u32,
    ) -> impl Future<Output = Vec<String>> + Send + 'a {
        async move {
            let mut out = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let mut url = format!("/inbox?limit={limit}{query}");
                if let Some(c) = &cursor {
                    url.push_str(&format!("&cursor={}", enc(c)));
                }
                let resp = self.get(&url, key).send().await.expect("send");
                assert_eq!(resp.status(), 200, "GET {url}");
                // Events may nest deeper than serde_json's default allows.
                let page = parse_deep(&resp.text().await.expect("body"));
                out.extend(ids(&page["events"]));
                if page["pagination"]["has_more"] == false {
                    assert!(page["pagination"]["next_cursor"].is_null(), "{page}");
                    return out;
                }
                cursor = Some(
                    page["pagination"]["next_cursor"]
                        .as_str()
                        .expect("next_cursor when has_more")
                        .to_owned(),
                );
                assert!(out.len() < 100_000, "the walk must end");
            }
        }
    }

    /// Walks every inbox page (of `event_type` when given); the ids in order.
    fn walk_inbox<'a>(
        &'a self,
        key: &'a str,
        limit: u32,
        event_type: Option<&'a str>,
    ) -> impl Future<Output = Vec<String>> + Send + 'a {
        async move {
            let query = event_type
                .map(|t| format!("&event_type={}", enc(t)))
                .unwrap_or_default();
            self.walk(key, &query, limit).await
        }
    }

    /// POST /inbox/lease, asserting 200.
    fn lease<'a>(&'a self, key: &'a str, body: Value) -> impl Future<Output = Value> + Send + 'a {
        async move {
            let resp = self
                .post_json("/inbox/lease", key, &body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 200, "POST /inbox/lease {body}");
            resp.json().await.expect("json")
        }
    }

    /// POST /inbox/ack or /inbox/release (`what`), asserting 200.
    fn settle<'a>(
        &'a self,
        key: &'a str,
        what: &'a str,
        body: Value,
    ) -> impl Future<Output = Value> + Send + 'a {
        async move {
            let resp = self
                .post_json(&format!("/inbox/{what}"), key, &body)
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 200, "POST /inbox/{what} {body}");
            resp.json().await.expect("json")
        }
    }

    /// `n` events of `event_type` (payload `{"i": i}`), oldest first.
    fn create_n<'a>(
        &'a self,
        key: &'a str,
        n: usize,
        event_type: &'a str,
    ) -> impl Future<Output = Vec<String>> + Send + 'a {
        async move {
            let mut out = Vec::new();
            for i in 0..n {
                let body = serde_json::json!({"event_type": event_type, "payload": {"i": i}});
                out.push(self.create_event(key, &body).await);
            }
            out
        }
    }
}

impl Endpoint for Target {
    fn http(&self) -> &reqwest::Client {
        &self.client
    }
    fn base(&self) -> &str {
        &self.base
    }
}

/// What one case sees: the target, its own namespace of event types, and a
/// way to say it cannot run here.
#[derive(Debug)]
pub struct Ctx {
    target: Arc<Target>,
    namespace: String,
    types: Mutex<Vec<String>>,
    cannot_run: Mutex<Option<String>>,
}

impl std::ops::Deref for Ctx {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

impl Endpoint for Ctx {
    fn http(&self) -> &reqwest::Client {
        &self.target.client
    }
    fn base(&self) -> &str {
        &self.target.base
    }
}

impl Ctx {
    fn new(target: Arc<Target>, run_id: &str, case: &str) -> Self {
        Ctx {
            target,
            namespace: format!("conf.{run_id}.{case}"),
            types: Mutex::new(Vec::new()),
            cannot_run: Mutex::new(None),
        }
    }

    /// An event type of this case and run: `conf.<run id>.<case>.<suffix>`.
    /// Its events are acknowledged once the case ends.
    pub fn ty(&self, suffix: &str) -> String {
        let t = format!("{}.{suffix}", self.namespace);
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        if !types.contains(&t) {
            types.push(t.clone());
        }
        t
    }

    /// An event type of this case, padded with `fill` to exactly `chars`
    /// characters.
    pub fn ty_of_length(&self, suffix: &str, fill: char, chars: usize) -> String {
        let mut t = self.ty(suffix);
        let have = t.chars().count();
        assert!(have <= chars, "the case name is too long for {chars}");
        t.extend(std::iter::repeat_n(fill, chars - have));
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.push(t.clone());
        t
    }

    /// An `Idempotency-Key` of this case and run:
    /// `conf.<run id>.<case>.<suffix>`. A deployment keeps the answer of a
    /// key for 24 hours, so a key is never sent again by a later run.
    pub fn idempotency_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.namespace)
    }

    /// Ends the case as skipped (the caller returns right after): this
    /// target cannot run it (e.g. an https base URL for a raw-socket case).
    pub fn cannot_run(&self, reason: &str) {
        *self.cannot_run.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.to_owned());
    }

    fn skipped(&self) -> Option<String> {
        self.cannot_run
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Acknowledges every undelivered event of this case's types, in both
    /// accounts (a shared inbox is left as it was found).
    async fn clean_up(&self) {
        let types = self.types.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for t in types {
            for key in [&self.creator, &self.other_account] {
                for id in self.walk_inbox(key, 200, Some(&t)).await {
                    let status = self.ack(key, &id).await;
                    assert_eq!(status, 204, "clean-up: DELETE /events/{id}");
                }
            }
        }
    }
}

/// A short random run id (8 hex digits).
pub fn new_run_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_the_environment_before_the_file() {
        let dir = std::env::temp_dir().join(format!("keys-{}", new_run_id()));
        std::fs::write(
            &dir,
            "# conformance keys\nexport TRIGGERS_CONFORMANCE_CREATOR_KEY=\"trg_c\"\n\
             TRIGGERS_CONFORMANCE_VIEWER_KEY='trg_v'\nTRIGGERS_CONFORMANCE_OTHER_ACCOUNT_KEY=trg_o\n\
             TRIGGERS_CONFORMANCE_REVOKED_KEY = trg_r \n",
        )
        .unwrap();
        let env =
            |name: &str| (name == "TRIGGERS_CONFORMANCE_VIEWER_KEY").then(|| "trg_env".into());
        let keys = Keys::load(Some(&dir), env).unwrap();
        assert_eq!(keys.creator, "trg_c");
        assert_eq!(keys.viewer, "trg_env");
        assert_eq!(keys.other_account, "trg_o");
        assert_eq!(keys.revoked, "trg_r");
        std::fs::remove_file(&dir).unwrap();
    }

    #[test]
    fn missing_keys_are_named() {
        let env = |name: &str| (name == "TRIGGERS_CONFORMANCE_CREATOR_KEY").then(|| "trg_c".into());
        let err = Keys::load(None, env).unwrap_err();
        assert!(err.contains("TRIGGERS_CONFORMANCE_VIEWER_KEY"), "{err}");
        assert!(err.contains("TRIGGERS_CONFORMANCE_REVOKED_KEY"), "{err}");
        assert!(!err.contains("CREATOR"), "{err}");
        assert!(parse_keys_file("NOPE=1")
            .unwrap_err()
            .contains("unknown name"));
        assert!(parse_keys_file("just a line").is_err());
    }

    #[test]
    fn a_base_url_keeps_its_path_prefix() {
        let keys = Keys {
            creator: "c".into(),
            viewer: "v".into(),
            other_account: "o".into(),
            revoked: "r".into(),
        };
        let t = Target::new("http://127.0.0.1:9000/lambda-url/bootstrap/", keys.clone()).unwrap();
        assert_eq!(t.base, "http://127.0.0.1:9000/lambda-url/bootstrap");
        assert_eq!(
            t.url("/events"),
            "http://127.0.0.1:9000/lambda-url/bootstrap/events"
        );
        assert_eq!(
            t.raw_http(),
            Some(("127.0.0.1:9000".into(), "/lambda-url/bootstrap".into()))
        );
        let t = Target::new("https://api.example/", keys.clone()).unwrap();
        assert_eq!(t.url("/inbox"), "https://api.example/inbox");
        assert_eq!(t.raw_http(), None);
        let debug = format!("{t:?}");
        assert!(
            !debug.contains("\"c\"") && debug.contains("creator ?"),
            "{debug}"
        );
        assert!(Target::new("ftp://x", keys.clone()).is_err());
        assert!(Target::new("http://x/?a=1", keys).is_err());
    }
}
