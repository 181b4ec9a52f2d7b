//! A typed client for the Triggers API.
//!
//! Systems send events; each account's consumers walk their **inbox** of
//! undelivered events and **acknowledge** them. The contract is
//! `docs/api.md` in the repository.
//!
//! ```no_run
//! use futures::TryStreamExt;
//! use serde_json::json;
//! use triggers_client::{Client, InboxFilter, NewEvent};
//!
//! # async fn run() -> Result<(), triggers_client::Error> {
//! let client = Client::new("https://api.example.com", "trg_...")?;
//!
//! // Ingest: 201 for a new event, 200 with the original id for a repeat.
//! let accepted = client
//!     .send(&NewEvent::new("order.created", json!({"order": 42})).source("shop"))
//!     .await?;
//! println!("{} duplicate={}", accepted.event_id, accepted.duplicate);
//!
//! // Consume: walk every page of the inbox, process, acknowledge.
//! let mut events = std::pin::pin!(client.inbox_stream(InboxFilter::all(), 100));
//! while let Some(event) = events.try_next().await? {
//!     // ... process event.payload ...
//!     client.ack(event.event_id).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Every failure is one [`Error`]. An error answer of the API is
//! [`Error::Api`] with its [`Problem`]: the HTTP status, the machine-readable
//! [`ErrorCode`] (`VALIDATION_ERROR`, `INVALID_CURSOR`, `UNAUTHORIZED`,
//! `FORBIDDEN`, `NOT_FOUND`, `RATE_LIMITED`, `SERVICE_UNAVAILABLE`, …), the
//! `detail`, the `correlation_id` to quote when reporting a problem (the
//! request's `X-Request-ID`), and for a `VALIDATION_ERROR` every invalid
//! field. [`Error::status`] and [`Error::code`] reach them directly.
//!
//! # Retries, and why they are safe
//!
//! The client retries, with exponential backoff and jitter, a request that
//! was answered **429** `RATE_LIMITED` (after the `Retry-After` delay the
//! server sends), **503** `SERVICE_UNAVAILABLE` (after its `Retry-After`,
//! else the backoff) or **409** `CONFLICT` with `Retry-After` (its
//! idempotency key's first attempt is still being processed), and one that
//! got no answer (connection refused or
//! reset, timeout). Attempts are bounded ([`RetryPolicy::max_attempts`], 4 by
//! default), and a `Retry-After` longer than
//! [`RetryPolicy::max_retry_after`] is not waited for: the error is returned
//! with [`Problem::retry_after`] set, for the caller to decide.
//!
//! Retrying is safe for every call:
//!
//! - **send** (`POST /events`): ingest is deduplicated by the server. The
//!   same account sending the same `event_type`, `payload` and `source`
//!   within the dedup window (5 minutes by default) gets `200` with the
//!   *original* event's id and timestamp and `duplicate: true`. So a retry
//!   of a send whose first attempt did land (a timeout, a lost answer, a 503
//!   for a write whose outcome was unknown) does not create a second event:
//!   it answers with the first one. `metadata` is not part of the
//!   comparison, and two deliberately identical events sent within the
//!   window are one event; make the payload differ (e.g. an id of your own)
//!   if they must be two.
//! - **send_batch** (`POST /events/batch`): every event of the batch is
//!   deduplicated the same way, so a retry of a whole batch after a 503 or
//!   a lost answer gets the events that did land back as duplicates.
//! - **ack** (`DELETE /events/{id}`) is idempotent: acknowledging again
//!   answers 204 and keeps the first `delivered_at`.
//! - **get** and **inbox** only read.
//!
//! Errors that a retry cannot fix (400, 401, 403, 404, 413, 415, 500, and a
//! 409 without `Retry-After`) are returned at once.
//!
//! # Idempotency keys
//!
//! [`SendOptions::idempotency_key`] (or [`ClientBuilder::idempotency_keys`]
//! for a fresh random key per send) sends an `Idempotency-Key` header, the
//! same on every retry of that send ([`Client::send_with`],
//! [`Client::send_batch_with`]). The server keeps the first successful
//! answer per account and key for 24 hours and sends it again, byte for
//! byte, to a retry with the same key and the same body
//! ([`BatchAccepted::replayed`] tells); this holds past the dedup window,
//! and a retry sees the answer of the first attempt (201) rather than a
//! duplicate (200). The same key with another body is a 409 `CONFLICT`
//! error; the same send while its first attempt is still being processed
//! is a 409 with `Retry-After`, which the client waits for and retries
//! like a 503.
//!
//! # Several consumers: leases
//!
//! [`Client::lease`] takes the account's oldest available events for a
//! while (`lease_seconds`), so that no two consumers process one event at a
//! time; [`Client::ack_lease`] acknowledges them, [`Client::release`] hands
//! them back, and an event leased too often without an ack is quarantined
//! until [`Client::requeue`]. A consumer loop: lease with `wait_seconds`
//! (long polling), process, ack; release on failure.
//!
//! ```no_run
//! use triggers_client::{Client, LeaseRequest};
//!
//! # async fn run(client: Client) -> Result<(), triggers_client::Error> {
//! loop {
//!     let lease = client
//!         .lease(&LeaseRequest::new(100).lease_seconds(60).wait_seconds(20))
//!         .await?;
//!     let Some(lease_id) = lease.lease_id else { continue };
//!     for event in &lease.events {
//!         // ... process event.payload ...
//!     }
//!     client.ack_lease(lease_id, None).await?;
//! }
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::Stream;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

mod error;
mod retry;

pub use error::{Error, ErrorCode, FieldError, Problem};
pub use retry::RetryPolicy;

/// The header carrying an idempotency key on `POST /events` and
/// `POST /events/batch`.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The header of an answer the server kept for an idempotency key and sent
/// again.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
const X_API_KEY: &str = "x-api-key";
const X_REQUEST_ID: &str = "x-request-id";

/// JSON to send: a [`serde_json::Value`], or JSON text kept exactly as
/// written (every digit of every number, key order) with a [`RawValue`].
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Json {
    Value(serde_json::Value),
    Raw(Box<RawValue>),
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        Json::Value(v)
    }
}

impl From<Box<RawValue>> for Json {
    fn from(v: Box<RawValue>) -> Self {
        Json::Raw(v)
    }
}

/// An event to send (`POST /events`). The server validates it: `event_type`
/// 1–255 characters without control characters, `payload` a JSON object of
/// at most 256 KiB, `source` at most 255 characters, `metadata` an object.
#[derive(Debug, Clone, Serialize)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Json>,
}

impl NewEvent {
    pub fn new(event_type: impl Into<String>, payload: impl Into<Json>) -> Self {
        Self {
            event_type: event_type.into(),
            payload: payload.into(),
            source: None,
            metadata: None,
        }
    }

    /// Where the event comes from; part of the dedup comparison.
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Extra data kept with the event; not part of the dedup comparison.
    pub fn metadata(mut self, metadata: impl Into<Json>) -> Self {
        self.metadata = Some(metadata.into());
        self
    }
}

/// Per-send options.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    idempotency_key: Option<String>,
}

impl SendOptions {
    /// Sends `Idempotency-Key: key` (1–255 printable ASCII characters), the
    /// same on every retry of this send.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// The answer to a send.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct Accepted {
    /// The new event's id, or the original's when `duplicate`.
    pub event_id: Uuid,
    /// Server receive time of the (original) event.
    pub timestamp: DateTime<Utc>,
    /// True (HTTP 200) when this repeated an event sent within the dedup
    /// window; false (HTTP 201) for a new event.
    pub duplicate: bool,
    /// Always `"accepted"`.
    pub status: String,
}

/// The answer to a batch send (`POST /events/batch`): one result per
/// event, in the order sent.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct BatchAccepted {
    pub results: Vec<BatchResult>,
    /// The server answered with the response it kept for this send's
    /// `Idempotency-Key` (`Idempotent-Replayed: true`): an earlier attempt
    /// had been answered already.
    #[serde(skip)]
    pub replayed: bool,
}

impl BatchAccepted {
    /// The events accepted (new or duplicates), with their index.
    pub fn accepted(&self) -> impl Iterator<Item = (usize, Accepted)> + '_ {
        self.results
            .iter()
            .filter_map(|r| r.accepted().map(|a| (r.index, a)))
    }

    /// The events refused (400 or 413), each with why.
    pub fn refused(&self) -> impl Iterator<Item = &BatchResult> {
        self.results.iter().filter(|r| r.accepted().is_none())
    }
}

/// What became of one event of a batch: what a `POST /events` of it would
/// have answered.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct BatchResult {
    /// Its position in the batch, from 0.
    pub index: usize,
    /// 201 created, 200 duplicate, 400 invalid, 413 too large.
    pub status: u16,
    /// 201 and 200: the event's id (the original's for a duplicate).
    pub event_id: Option<Uuid>,
    /// 201 and 200: the (original) event's receive time.
    pub timestamp: Option<DateTime<Utc>>,
    /// 201 and 200.
    pub duplicate: Option<bool>,
    /// 400 and 413: `VALIDATION_ERROR` or `PAYLOAD_TOO_LARGE`.
    #[serde(default)]
    pub code: Option<ErrorCode>,
    /// 400 and 413: what is wrong, field by field.
    #[serde(default)]
    pub errors: Vec<FieldError>,
}

impl BatchResult {
    /// The event as a single send would have answered it, if accepted.
    pub fn accepted(&self) -> Option<Accepted> {
        match (self.status, self.event_id, self.timestamp) {
            (200 | 201, Some(event_id), Some(timestamp)) => Some(Accepted {
                event_id,
                timestamp,
                duplicate: self.duplicate.unwrap_or(self.status == 200),
                status: "accepted".to_owned(),
            }),
            _ => None,
        }
    }
}

/// An event as the API returns it. `payload` and `metadata` are the JSON
/// text the server returned, exactly as it was sent (all digits, key order);
/// [`Event::payload_as`] and [`Event::metadata_as`] parse them.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Event {
    pub event_id: Uuid,
    pub event_type: String,
    pub payload: Box<RawValue>,
    pub source: Option<String>,
    /// `{}` when none was sent.
    pub metadata: Box<RawValue>,
    pub timestamp: DateTime<Utc>,
    pub delivered: bool,
    pub delivered_at: Option<DateTime<Utc>>,
    /// How many times the event was leased (0 from a server without leases).
    #[serde(default)]
    pub lease_count: u32,
    /// When the lease running now ends; `None` when none is running.
    #[serde(default)]
    pub leased_until: Option<DateTime<Utc>>,
    /// Leased too often without an acknowledgement: no longer leased until
    /// someone requeues it ([`Client::requeue`]).
    #[serde(default)]
    pub quarantined: bool,
}

/// What to lease ([`Client::lease`]); the defaults are the server's.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct LeaseRequest {
    /// 1–100 events (server default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// 1–3600 s (server default 300).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
    /// 0–20 s to wait for an event when none is available (server default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_seconds: Option<u32>,
    /// Only events of this type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
}

impl LeaseRequest {
    /// Up to `limit` events (1–100).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: Some(limit),
            ..Self::default()
        }
    }

    pub fn lease_seconds(mut self, seconds: u32) -> Self {
        self.lease_seconds = Some(seconds);
        self
    }

    /// Long polling: wait up to `seconds` (0–20) for an event.
    pub fn wait_seconds(mut self, seconds: u32) -> Self {
        self.wait_seconds = Some(seconds);
        self
    }

    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }
}

/// A lease ([`Client::lease`]): its events are this consumer's until
/// `leased_until`. `lease_id` is `None` when nothing was available.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Lease {
    pub lease_id: Option<Uuid>,
    pub leased_until: Option<DateTime<Utc>>,
    pub events: Vec<Event>,
}

/// What [`Client::ack_lease`] or [`Client::release`] did: `done` are the
/// events acknowledged (or released); `stale` those the lease no longer
/// held (its lease ended and another took them, or they were released,
/// requeued or acknowledged meanwhile), left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settled {
    pub done: Vec<Uuid>,
    pub stale: Vec<Uuid>,
}

#[derive(Deserialize)]
struct AckBody {
    acknowledged: Vec<Uuid>,
    stale: Vec<Uuid>,
}

#[derive(Deserialize)]
struct ReleaseBody {
    released: Vec<Uuid>,
    stale: Vec<Uuid>,
}

#[derive(Serialize)]
struct SettleRequest<'a> {
    lease_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_ids: Option<&'a [Uuid]>,
}

impl Event {
    /// The payload parsed as `T` (e.g. [`serde_json::Value`] or a struct).
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.payload.get())
    }

    /// The metadata parsed as `T`.
    pub fn metadata_as<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.metadata.get())
    }
}

/// One page of `GET /inbox`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InboxPage {
    /// Undelivered events, oldest first.
    pub events: Vec<Event>,
    /// Pass as [`InboxQuery::cursor`] for the next page; `None` on the last.
    pub next_cursor: Option<String>,
    /// False only on the last page.
    pub has_more: bool,
}

#[derive(Deserialize)]
struct InboxBody {
    events: Vec<Event>,
    pagination: PaginationBody,
}

#[derive(Deserialize)]
struct PaginationBody {
    next_cursor: Option<String>,
    has_more: bool,
}

/// Which inbox events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    /// Only events of exactly this type.
    pub event_type: Option<String>,
}

impl InboxFilter {
    /// Every undelivered event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only events of this type.
    pub fn event_type(event_type: impl Into<String>) -> Self {
        Self {
            event_type: Some(event_type.into()),
        }
    }
}

/// One `GET /inbox` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxQuery {
    /// Page size, 1–200 (the server's default is 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page; `None` for the first page.
    pub cursor: Option<String>,
    pub filter: InboxFilter,
}

/// `GET /status`.
#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct Status {
    /// `"ok"` or `"degraded"`.
    pub status: String,
    pub version: String,
    pub uptime_seconds: u64,
    pub store: StoreStatus,
}

#[derive(Debug, Clone, Deserialize)]
#[non_exhaustive]
pub struct StoreStatus {
    /// `"sqlite"` or `"dynamodb"`.
    pub backend: String,
    pub reachable: bool,
}

/// How the API key is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthScheme {
    /// `Authorization: Bearer <key>` (the default).
    #[default]
    Bearer,
    /// `X-API-Key: <key>`.
    XApiKey,
}

/// Builds a [`Client`]; [`Client::builder`].
#[derive(Clone)]
pub struct ClientBuilder {
    base_url: String,
    api_key: String,
    auth: AuthScheme,
    timeout: Duration,
    connect_timeout: Duration,
    user_agent: String,
    retry: RetryPolicy,
    idempotency_keys: bool,
    http: Option<reqwest::Client>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("auth", &self.auth)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("idempotency_keys", &self.idempotency_keys)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Timeout of one attempt (default 30 s); ignored with [`Self::http_client`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connect timeout (default 5 s); ignored with [`Self::http_client`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// `User-Agent` (default `triggers-client/VERSION`); ignored with
    /// [`Self::http_client`].
    pub fn user_agent(mut self, user_agent: impl Into<String>) -> Self {
        self.user_agent = user_agent.into();
        self
    }

    /// How the key is sent (default `Authorization: Bearer`).
    pub fn auth_scheme(mut self, auth: AuthScheme) -> Self {
        self.auth = auth;
        self
    }

    /// Retries of 429, 503 and unanswered requests (default
    /// [`RetryPolicy::default`]; [`RetryPolicy::none`] disables them).
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Send a fresh random `Idempotency-Key` with every send that has none
    /// of its own (default off).
    pub fn idempotency_keys(mut self, on: bool) -> Self {
        self.idempotency_keys = on;
        self
    }

    /// Use this HTTP client (proxies, TLS roots, pools of your own).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let mut base = Url::parse(&self.base_url)
            .map_err(|e| Error::Config(format!("invalid base URL {:?}: {e}", self.base_url)))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::Config(format!(
                "the base URL must be http(s)://host[:port][/path], not {:?}",
                self.base_url
            )));
        }
        // Paths are joined relative to the base: keep its path as a folder
        // (an API Gateway stage, a reverse-proxy prefix).
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        base.set_query(None);
        base.set_fragment(None);

        let (name, value) = match self.auth {
            AuthScheme::Bearer => (AUTHORIZATION.as_str(), format!("Bearer {}", self.api_key)),
            AuthScheme::XApiKey => (X_API_KEY, self.api_key.clone()),
        };
        let mut auth_value = HeaderValue::from_str(&value)
            .map_err(|_| Error::Config("the API key is not a valid header value".into()))?;
        auth_value.set_sensitive(true);

        let http = match self.http {
            Some(h) => h,
            None => reqwest::Client::builder()
                .timeout(self.timeout)
                .connect_timeout(self.connect_timeout)
                .user_agent(self.user_agent)
                .build()
                .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                auth: (name, auth_value),
                retry: self.retry,
                idempotency_keys: self.idempotency_keys,
            }),
        })
    }
}

/// A Triggers API client for one API key. Cheap to clone (shared
/// connection pool); use one per process and key.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    auth: (&'static str, HeaderValue),
    retry: RetryPolicy,
    idempotency_keys: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base.as_str())
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

/// A request to make (and perhaps repeat).
struct Call<'a> {
    method: Method,
    path: &'a str,
    query: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    headers: Vec<(&'static str, String)>,
    authenticated: bool,
}

impl<'a> Call<'a> {
    fn new(method: Method, path: &'a str) -> Self {
        Self {
            method,
            path,
            query: Vec::new(),
            body: None,
            headers: Vec::new(),
            authenticated: true,
        }
    }
}

/// A successful answer: its status and body, as received.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    /// `Idempotent-Replayed: true`.
    replayed: bool,
}

impl Client {
    /// A client with the default options; see [`Client::builder`].
    pub fn new(base_url: &str, api_key: &str) -> Result<Client, Error> {
        Self::builder(base_url, api_key).build()
    }

    /// A builder for `base_url` (e.g. `https://api.example.com`, or an API
    /// Gateway URL with a stage path) and the API key.
    pub fn builder(base_url: impl Into<String>, api_key: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: api_key.into(),
            auth: AuthScheme::Bearer,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            user_agent: concat!("triggers-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            retry: RetryPolicy::default(),
            idempotency_keys: false,
            http: None,
        }
    }

    /// The base URL requests are made against (always ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// `POST /events`: ingests an event. Needs a `creator` key.
    pub async fn send(&self, event: &NewEvent) -> Result<Accepted, Error> {
        self.send_with(event, &SendOptions::default()).await
    }

    /// [`Client::send`] with options (an idempotency key).
    pub async fn send_with(&self, event: &NewEvent, opts: &SendOptions) -> Result<Accepted, Error> {
        let body = serde_json::to_vec(event).map_err(Error::Encode)?;
        let mut call = Call::new(Method::POST, "events");
        call.body = Some(body);
        if let Some(k) = self.idempotency_key(opts) {
            call.headers.push((IDEMPOTENCY_KEY, k));
        }
        let answer = self.execute(&call).await?;
        decode(&answer)
    }

    /// `POST /events/batch`: ingests 1–100 events in one request (and one
    /// count against the key's rate limit). Each is validated and
    /// deduplicated as [`Client::send`] would be and answered in its own
    /// [`BatchResult`]: one refused event does not refuse the others. An
    /// `Err` means no result at all: a malformed batch (400: none or over
    /// 100 events), a body over the server's batch limit (413, 1 MiB by
    /// default), or a store failure (503, retried by the client: retrying a
    /// whole batch is safe, its events are deduplicated). Needs a
    /// `creator` key.
    pub async fn send_batch(&self, events: &[NewEvent]) -> Result<BatchAccepted, Error> {
        self.send_batch_with(events, &SendOptions::default()).await
    }

    /// [`Client::send_batch`] with options (an idempotency key: every retry
    /// of this batch sends the same one, and gets the first answer again).
    pub async fn send_batch_with(
        &self,
        events: &[NewEvent],
        opts: &SendOptions,
    ) -> Result<BatchAccepted, Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            events: &'a [NewEvent],
        }
        let body = serde_json::to_vec(&Body { events }).map_err(Error::Encode)?;
        let mut call = Call::new(Method::POST, "events/batch");
        call.body = Some(body);
        if let Some(k) = self.idempotency_key(opts) {
            call.headers.push((IDEMPOTENCY_KEY, k));
        }
        let answer = self.execute(&call).await?;
        let mut out: BatchAccepted = decode(&answer)?;
        out.replayed = answer.replayed;
        Ok(out)
    }

    fn idempotency_key(&self, opts: &SendOptions) -> Option<String> {
        match (&opts.idempotency_key, self.inner.idempotency_keys) {
            (Some(k), _) => Some(k.clone()),
            (None, true) => Some(Uuid::new_v4().to_string()),
            (None, false) => None,
        }
    }

    /// `GET /events/{id}`: one event of the key's account, delivered or not
    /// (delivered ones until their retention ends). Needs a `viewer` key.
    pub async fn get(&self, event_id: Uuid) -> Result<Event, Error> {
        let path = format!("events/{event_id}");
        let answer = self.execute(&Call::new(Method::GET, &path)).await?;
        decode(&answer)
    }

    /// `DELETE /events/{id}`: acknowledges an event (it leaves the inbox).
    /// Idempotent: acknowledging again succeeds too. Needs a `creator` key.
    pub async fn ack(&self, event_id: Uuid) -> Result<(), Error> {
        let path = format!("events/{event_id}");
        self.execute(&Call::new(Method::DELETE, &path)).await?;
        Ok(())
    }

    /// `GET /inbox`: one page of undelivered events, oldest first. Needs a
    /// `viewer` key.
    pub async fn inbox(&self, query: &InboxQuery) -> Result<InboxPage, Error> {
        let mut call = Call::new(Method::GET, "inbox");
        if let Some(limit) = query.limit {
            call.query.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &query.cursor {
            call.query.push(("cursor", cursor.clone()));
        }
        if let Some(t) = &query.filter.event_type {
            call.query.push(("event_type", t.clone()));
        }
        let answer = self.execute(&call).await?;
        let body: InboxBody = decode(&answer)?;
        Ok(InboxPage {
            events: body.events,
            next_cursor: body.pagination.next_cursor,
            has_more: body.pagination.has_more,
        })
    }

    /// Every undelivered event matching `filter`, oldest first, fetched
    /// `page_size` (1–200) at a time by following the cursors. Each event
    /// comes once; events added during the walk come if they sort after the
    /// position reached, and acknowledging events as they come does not
    /// disturb the walk. An `Err` (after the retries) ends the stream.
    pub fn inbox_stream(
        &self,
        filter: InboxFilter,
        page_size: u32,
    ) -> impl Stream<Item = Result<Event, Error>> + Send + 'static {
        struct Walk {
            client: Client,
            query: InboxQuery,
            buffered: VecDeque<Event>,
            done: bool,
        }
        let walk = Walk {
            client: self.clone(),
            query: InboxQuery {
                limit: Some(page_size),
                cursor: None,
                filter,
            },
            buffered: VecDeque::new(),
            done: false,
        };
        futures::stream::unfold(walk, |mut walk| async move {
            loop {
                if let Some(event) = walk.buffered.pop_front() {
                    return Some((Ok(event), walk));
                }
                if walk.done {
                    return None;
                }
                match walk.client.inbox(&walk.query).await {
                    Ok(page) => {
                        walk.buffered.extend(page.events);
                        match (page.has_more, page.next_cursor) {
                            (true, Some(next)) => walk.query.cursor = Some(next),
                            _ => walk.done = true,
                        }
                    }
                    Err(e) => {
                        walk.done = true;
                        return Some((Err(e), walk));
                    }
                }
            }
        })
    }

    /// `POST /inbox/lease`: leases the account's oldest available events
    /// (not delivered, not quarantined, under no running lease). Two leases
    /// never hold one event at once. Needs a `creator` key.
    ///
    /// A retried lease (after a lost answer) may have leased events the
    /// caller never saw: they come back when that lease ends (at least
    /// once), so keep `lease_seconds` no longer than processing needs.
    pub async fn lease(&self, request: &LeaseRequest) -> Result<Lease, Error> {
        let mut call = Call::new(Method::POST, "inbox/lease");
        call.body = Some(serde_json::to_vec(request).map_err(Error::Encode)?);
        let answer = self.execute(&call).await?;
        decode(&answer)
    }

    /// `POST /inbox/ack`: acknowledges events of a lease (all of them when
    /// `event_ids` is `None`): delivered, exactly as [`Client::ack`].
    ///
    /// Safe to retry; an event a lost first attempt already acknowledged is
    /// then listed as stale.
    pub async fn ack_lease(
        &self,
        lease_id: Uuid,
        event_ids: Option<&[Uuid]>,
    ) -> Result<Settled, Error> {
        let body: AckBody = self.settle("inbox/ack", lease_id, event_ids).await?;
        Ok(Settled {
            done: body.acknowledged,
            stale: body.stale,
        })
    }

    /// `POST /inbox/release`: hands events of a lease back (all of them
    /// when `event_ids` is `None`), available again at once.
    pub async fn release(
        &self,
        lease_id: Uuid,
        event_ids: Option<&[Uuid]>,
    ) -> Result<Settled, Error> {
        let body: ReleaseBody = self.settle("inbox/release", lease_id, event_ids).await?;
        Ok(Settled {
            done: body.released,
            stale: body.stale,
        })
    }

    async fn settle<T: DeserializeOwned>(
        &self,
        path: &str,
        lease_id: Uuid,
        event_ids: Option<&[Uuid]>,
    ) -> Result<T, Error> {
        let mut call = Call::new(Method::POST, path);
        let request = SettleRequest {
            lease_id,
            event_ids,
        };
        call.body = Some(serde_json::to_vec(&request).map_err(Error::Encode)?);
        let answer = self.execute(&call).await?;
        decode(&answer)
    }

    /// `POST /events/{id}/requeue`: brings a quarantined event back
    /// (`lease_count` 0, available at once). An event that is not
    /// quarantined is an error with code `CONFLICT`.
    pub async fn requeue(&self, event_id: Uuid) -> Result<Event, Error> {
        let path = format!("events/{event_id}/requeue");
        let answer = self.execute(&Call::new(Method::POST, &path)).await?;
        decode(&answer)
    }

    /// `GET /status` (no key needed): `Ok` for 200 (`"ok"`); a degraded
    /// service answers 503, which is an `Err` after the retries.
    pub async fn status(&self) -> Result<Status, Error> {
        let mut call = Call::new(Method::GET, "status");
        call.authenticated = false;
        let answer = self.execute(&call).await?;
        decode(&answer)
    }

    /// Sends `call`, retrying per the policy; a 2xx is `Ok`, anything else
    /// an [`Error`]. Every endpoint goes through here.
    async fn execute(&self, call: &Call<'_>) -> Result<Answer, Error> {
        let inner = &self.inner;
        let url = inner
            .base
            .join(call.path)
            .map_err(|e| Error::Config(format!("cannot build the URL for {}: {e}", call.path)))?;
        let policy = &inner.retry;
        let mut attempt: u32 = 1;
        loop {
            let mut req = inner.http.request(call.method.clone(), url.clone());
            if !call.query.is_empty() {
                req = req.query(&call.query);
            }
            if call.authenticated {
                req = req.header(inner.auth.0, inner.auth.1.clone());
            }
            for (name, value) in &call.headers {
                req = req.header(*name, value.as_str());
            }
            if let Some(body) = &call.body {
                req = req
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone());
            }
            let failure = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    let body = match resp.bytes().await {
                        Ok(b) => b.to_vec(),
                        Err(e) => {
                            // The answer was cut off: as good as none.
                            match policy.delay_after_transport_error(attempt, &e) {
                                Some(delay) => {
                                    tokio::time::sleep(delay).await;
                                    attempt += 1;
                                    continue;
                                }
                                None => return Err(Error::Transport(e)),
                            }
                        }
                    };
                    if status.is_success() {
                        let replayed = headers
                            .get(IDEMPOTENT_REPLAYED)
                            .is_some_and(|v| v.as_bytes() == b"true");
                        return Ok(Answer {
                            status,
                            body,
                            replayed,
                        });
                    }
                    Problem::from_response(status, &headers, &body, attempt)
                }
                Err(e) => match policy.delay_after_transport_error(attempt, &e) {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                        continue;
                    }
                    None => return Err(Error::Transport(e)),
                },
            };
            match policy.delay_after_status(attempt, failure.status, failure.retry_after) {
                Some(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                None => return Err(Error::Api(Box::new(failure))),
            }
        }
    }
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, Error> {
    serde_json::from_slice(&answer.body).map_err(|source| Error::Decode {
        status: answer.status.as_u16(),
        source,
    })
}

/// Seconds of a `Retry-After` header (delta-seconds form).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_keeps_its_path_as_a_folder() {
        let c = Client::new("https://api.example.com/prod", "k").expect("client");
        assert_eq!(c.base_url().as_str(), "https://api.example.com/prod/");
        assert_eq!(
            c.base_url().join("events").expect("join").as_str(),
            "https://api.example.com/prod/events"
        );
        let c = Client::new("http://127.0.0.1:8080", "k").expect("client");
        assert_eq!(
            c.base_url().join("inbox").expect("join").as_str(),
            "http://127.0.0.1:8080/inbox"
        );
    }

    #[test]
    fn bad_base_urls_and_keys_are_config_errors() {
        for bad in ["", "not a url", "ftp://x.example", "mailto:a@b.example"] {
            assert!(
                matches!(Client::new(bad, "k"), Err(Error::Config(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            Client::new("http://x.example", "bad\nkey"),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn the_api_key_is_never_in_debug_output() {
        let b = Client::builder("http://x.example", "trg_secretsecret");
        assert!(!format!("{b:?}").contains("secretsecret"));
        let c = b.build().expect("client");
        assert!(!format!("{c:?}").contains("secretsecret"));
    }

    #[test]
    fn a_new_event_serialises_without_absent_fields_and_raw_json_verbatim() {
        let e = NewEvent::new("t", serde_json::json!({"a": 1}));
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"event_type":"t","payload":{"a":1}}"#
        );
        let raw = RawValue::from_string(r#"{"n": 1.50, "b": 1e400}"#.to_owned()).expect("raw");
        let e = NewEvent::new("t", raw)
            .source("s")
            .metadata(serde_json::json!({}));
        assert_eq!(
            serde_json::to_string(&e).expect("json"),
            r#"{"event_type":"t","payload":{"n": 1.50, "b": 1e400},"source":"s","metadata":{}}"#
        );
    }

    #[test]
    fn retry_after_reads_delta_seconds_only() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
