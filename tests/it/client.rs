//! The typed client (`client/`, crate `triggers-client`) against the real
//! server (SQLite store), and its retry loop against a scripted local stub
//! (no timing games: the stub answers 503 or 429 as told).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;
use serde_json::value::RawValue;
use triggers_api::domain::Role;
use triggers_client::{
    AuthScheme, Client, Error, ErrorCode, InboxFilter, InboxQuery, LeaseRequest, NewEvent,
    RetryPolicy, SendOptions,
};
use uuid::Uuid;

use crate::support::{Backend, TestApp};

/// Quick retries: the tests wait for the server's Retry-After, not for
/// backoff.
fn fast() -> RetryPolicy {
    RetryPolicy::default().with_backoff(Duration::from_millis(5), Duration::from_millis(20))
}

fn client(base: &str, key: &str) -> Client {
    Client::builder(base, key)
        .retry_policy(fast())
        .build()
        .expect("client")
}

fn api_error(e: Error) -> Box<triggers_client::Problem> {
    match e {
        Error::Api(p) => p,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn send_answers_created_then_duplicate_with_the_original_id_and_timestamp() {
    let app = TestApp::start(Backend::Sqlite).await;
    let c = client(&app.base, &app.key("acme", Role::Creator).await);
    let event =
        NewEvent::new("order.created", json!({"order": 42, "lines": [1, 2]})).source("shop");

    let first = c.send(&event).await.expect("send");
    assert!(!first.duplicate);
    assert_eq!(first.status, "accepted");

    // Same type, payload (keys reordered) and source: the original back.
    let again = NewEvent::new("order.created", json!({"lines": [1, 2], "order": 42}))
        .source("shop")
        .metadata(json!({"attempt": 2}));
    let dup = c.send(&again).await.expect("send duplicate");
    assert!(dup.duplicate);
    assert_eq!(dup.event_id, first.event_id);
    assert_eq!(dup.timestamp, first.timestamp);

    // Another source is another event.
    let other = c
        .send(&NewEvent::new("order.created", json!({"order": 42, "lines": [1, 2]})).source("pos"))
        .await
        .expect("send");
    assert!(!other.duplicate);
    assert_ne!(other.event_id, first.event_id);
}

#[tokio::test]
async fn get_returns_the_event_exactly_as_sent_and_ack_marks_it_delivered() {
    let app = TestApp::start(Backend::Sqlite).await;
    let c = client(&app.base, &app.key("acme", Role::Creator).await);
    // Digits that a float would lose, key order, a null: all kept.
    let payload = r#"{"price":1.50,"big":12345678901234567890.123456789e-5,"huge":1e400,"z":null,"a":{"y":1,"x":2}}"#;
    let raw = RawValue::from_string(payload.to_owned()).expect("raw JSON");
    let sent = NewEvent::new("invoice.paid", raw).metadata(json!({"trace": "t-1"}));
    let accepted = c.send(&sent).await.expect("send");

    let got = c.get(accepted.event_id).await.expect("get");
    assert_eq!(got.event_id, accepted.event_id);
    assert_eq!(got.event_type, "invoice.paid");
    assert_eq!(got.payload.get(), payload);
    assert_eq!(got.metadata.get(), r#"{"trace":"t-1"}"#);
    assert_eq!(got.source, None);
    assert_eq!(got.timestamp, accepted.timestamp);
    assert!(!got.delivered);
    assert_eq!(got.delivered_at, None);
    let meta: serde_json::Value = got.metadata_as().expect("metadata parses");
    assert_eq!(meta["trace"], "t-1");

    c.ack(accepted.event_id).await.expect("ack");
    let acked = c.get(accepted.event_id).await.expect("get after ack");
    assert!(acked.delivered);
    let delivered_at = acked.delivered_at.expect("delivered_at");
    // Idempotent: a second ack succeeds and keeps the first delivered_at.
    c.ack(accepted.event_id).await.expect("second ack");
    let again = c.get(accepted.event_id).await.expect("get");
    assert_eq!(again.delivered_at, Some(delivered_at));
    let page = c.inbox(&InboxQuery::default()).await.expect("inbox");
    assert!(page.events.is_empty());
    assert!(!page.has_more);
}

#[tokio::test]
async fn send_batch_answers_every_event_in_order_and_a_keyed_retry_gets_the_first_answer() {
    let app = TestApp::start(Backend::Sqlite).await;
    let c = client(&app.base, &app.key("acme", Role::Creator).await);
    let before = c
        .send(&NewEvent::new("order.created", json!({"order": 1})))
        .await
        .expect("send");
    let events = [
        NewEvent::new("order.created", json!({"order": 2})).source("shop"),
        NewEvent::new("", json!({"order": 3})),
        NewEvent::new("order.created", json!({"order": 1})),
        NewEvent::new("order.created", json!({"order": 2})).source("shop"),
    ];
    let opts = SendOptions::default().idempotency_key("batch-1");
    let answer = c.send_batch_with(&events, &opts).await.expect("batch");
    assert!(!answer.replayed);
    let statuses: Vec<u16> = answer.results.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 400, 200, 200]);
    let accepted: Vec<(usize, triggers_client::Accepted)> = answer.accepted().collect();
    assert_eq!(accepted.len(), 3);
    assert!(!accepted[0].1.duplicate);
    assert_eq!(accepted[1].1.event_id, before.event_id);
    assert!(accepted[1].1.duplicate);
    // The repeat within the batch is the first one's duplicate.
    assert_eq!(accepted[2].1.event_id, accepted[0].1.event_id);
    let refused: Vec<&triggers_client::BatchResult> = answer.refused().collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].index, 1);
    assert_eq!(refused[0].code, Some(ErrorCode::ValidationError));
    assert_eq!(refused[0].errors[0].field, "event_type");
    // The event is readable like any other.
    let got = c.get(accepted[0].1.event_id).await.expect("get");
    assert_eq!(got.source.as_deref(), Some("shop"));

    // The same send again with its key: the first answer, replayed.
    let again = c.send_batch_with(&events, &opts).await.expect("again");
    assert!(again.replayed);
    assert_eq!(again.results, answer.results);
    // The key with another batch: a conflict, not retried.
    let e = c
        .send_batch_with(&events[..1], &opts)
        .await
        .expect_err("conflict");
    assert_eq!(e.status(), Some(409));
    assert_eq!(e.code(), Some(&ErrorCode::Conflict));
    // A malformed batch has no results: an error.
    let e = c.send_batch(&[]).await.expect_err("empty batch");
    assert_eq!(e.code(), Some(&ErrorCode::ValidationError));
}

#[tokio::test]
async fn the_inbox_stream_walks_every_page_in_order_with_and_without_a_filter() {
    let app = TestApp::start(Backend::Sqlite).await;
    let c = client(&app.base, &app.key("acme", Role::Creator).await);
    let mut all = Vec::new();
    let mut billing = Vec::new();
    for i in 0..23 {
        let t = if i % 3 == 0 {
            "billing.charged"
        } else {
            "order.created"
        };
        let a = c
            .send(&NewEvent::new(t, json!({ "i": i })))
            .await
            .expect("send");
        all.push(a.event_id);
        if t == "billing.charged" {
            billing.push(a.event_id);
        }
    }

    // One page by hand: 5 events, a cursor, more to come.
    let first = c
        .inbox(&InboxQuery {
            limit: Some(5),
            ..InboxQuery::default()
        })
        .await
        .expect("page 1");
    assert_eq!(
        first.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        all[..5]
    );
    assert!(first.has_more);
    let second = c
        .inbox(&InboxQuery {
            limit: Some(5),
            cursor: first.next_cursor.clone(),
            ..InboxQuery::default()
        })
        .await
        .expect("page 2");
    assert_eq!(
        second.events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        all[5..10]
    );

    // The stream: 23 events over 5 pages of 5, each once, in order.
    let walked: Vec<Uuid> = c
        .inbox_stream(InboxFilter::all(), 5)
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .expect("walk");
    assert_eq!(walked, all);
    let filtered: Vec<Uuid> = c
        .inbox_stream(InboxFilter::event_type("billing.charged"), 3)
        .map_ok(|e| e.event_id)
        .try_collect()
        .await
        .expect("filtered walk");
    assert_eq!(filtered, billing);
    assert_eq!(filtered.len(), 8);
}

#[tokio::test]
async fn draining_the_stream_with_acks_empties_the_inbox() {
    let app = TestApp::start(Backend::Sqlite).await;
    let c = client(&app.base, &app.key("acme", Role::Creator).await);
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(
            c.send(&NewEvent::new("t", json!({ "i": i })))
                .await
                .expect("send")
                .event_id,
        );
    }
    let mut seen = Vec::new();
    let mut events = std::pin::pin!(c.inbox_stream(InboxFilter::all(), 5));
    while let Some(e) = events.try_next().await.expect("walk") {
        c.ack(e.event_id).await.expect("ack");
        seen.push(e.event_id);
    }
    assert_eq!(seen, sent);
    let page = c.inbox(&InboxQuery::default()).await.expect("inbox");
    assert!(page.events.is_empty() && !page.has_more && page.next_cursor.is_none());
}

#[tokio::test]
async fn api_errors_carry_status_code_detail_correlation_id_and_fields() {
    let app = TestApp::start(Backend::Sqlite).await;
    let creator = client(&app.base, &app.key("acme", Role::Creator).await);

    // 401: a key that does not exist.
    let stranger = client(&app.base, "trg_zzzzzzzzzzzzzzzzsecretsecretsecret");
    let p = api_error(
        stranger
            .inbox(&InboxQuery::default())
            .await
            .expect_err("401"),
    );
    assert_eq!((p.status, &p.code), (401, &ErrorCode::Unauthorized));
    assert!(!p.correlation_id.is_empty(), "{p:?}");
    assert!(!p.detail.is_empty() && p.is_problem_json && p.attempts == 1);

    // 403: a viewer may read but not send.
    let viewer = client(&app.base, &app.key("acme", Role::Viewer).await);
    let e = viewer
        .send(&NewEvent::new("t", json!({})))
        .await
        .expect_err("403");
    assert_eq!(e.status(), Some(403));
    assert_eq!(e.code(), Some(&ErrorCode::Forbidden));

    // 404: an unknown event, for get and ack alike.
    let unknown = Uuid::now_v7();
    let e = creator.get(unknown).await.expect_err("404");
    assert_eq!(e.code(), Some(&ErrorCode::NotFound));
    let e = creator.ack(unknown).await.expect_err("404");
    assert_eq!(e.status(), Some(404));

    // 400 with every invalid field listed.
    let p = api_error(
        creator
            .send(&NewEvent::new("", json!([1, 2])))
            .await
            .expect_err("400"),
    );
    assert_eq!((p.status, &p.code), (400, &ErrorCode::ValidationError));
    let mut fields = p.fields();
    fields.sort_unstable();
    assert_eq!(fields, ["event_type", "payload"], "{p}");
    assert!(p.to_string().contains(&p.correlation_id));

    // 400 INVALID_CURSOR, and a limit out of range.
    let e = creator
        .inbox(&InboxQuery {
            cursor: Some("not-a-cursor".into()),
            ..InboxQuery::default()
        })
        .await
        .expect_err("bad cursor");
    assert_eq!(e.code(), Some(&ErrorCode::InvalidCursor));
    let p = api_error(
        creator
            .inbox(&InboxQuery {
                limit: Some(0),
                ..InboxQuery::default()
            })
            .await
            .expect_err("bad limit"),
    );
    assert_eq!(p.code, ErrorCode::ValidationError);
    assert_eq!(p.fields(), ["limit"]);
}

#[tokio::test]
async fn a_rate_limit_too_long_to_wait_is_returned_with_its_retry_after() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key_with_limit("acme", Role::Creator, 1).await;
    let c = Client::builder(&app.base, &key)
        .retry_policy(fast().with_max_retry_after(Duration::from_secs(5)))
        .build()
        .expect("client");
    c.send(&NewEvent::new("t", json!({"n": 1})))
        .await
        .expect("first send");
    let started = Instant::now();
    let p = api_error(
        c.send(&NewEvent::new("t", json!({"n": 2})))
            .await
            .expect_err("over the limit"),
    );
    assert_eq!((p.status, &p.code), (429, &ErrorCode::RateLimited));
    let wait = p.retry_after.expect("Retry-After");
    assert!(
        wait > Duration::from_secs(5) && wait <= Duration::from_secs(60),
        "{wait:?}"
    );
    assert_eq!(
        p.attempts, 1,
        "a wait over max_retry_after is not waited for"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    app.clock.advance(chrono::Duration::seconds(61));
    c.send(&NewEvent::new("t", json!({"n": 2})))
        .await
        .expect("a new window");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_send_waits_for_retry_after_and_then_succeeds() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key_with_limit("acme", Role::Creator, 1).await;
    let c = client(&app.base, &key);
    c.send(&NewEvent::new("t", json!({"n": 1})))
        .await
        .expect("first send");
    // One second left in the window: the 429 says Retry-After: 1.
    app.clock.advance(chrono::Duration::seconds(59));

    // The server's clock is manual: once the 429 has been answered, move
    // it past the window, as the second the client waits would have.
    let clock = app.clock.clone();
    let metrics = app.url("/metrics");
    let http = app.client.clone();
    let mover = tokio::spawn(async move {
        for _ in 0..500 {
            let text = http
                .get(&metrics)
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .expect("text");
            if text.contains("status=\"429\"") {
                clock.advance(chrono::Duration::seconds(2));
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    let started = Instant::now();
    let accepted = c
        .send(&NewEvent::new("t", json!({"n": 2})))
        .await
        .expect("send after one retry");
    assert!(mover.await.expect("task"), "the server never answered 429");
    assert!(!accepted.duplicate);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured ({:?})",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_workflow_leases_acks_releases_quarantines_and_requeues() {
    let settings = triggers_api::config::Settings {
        max_leases: 2,
        ..crate::support::test_settings()
    };
    let app = TestApp::start_with(Backend::Sqlite, settings).await;
    let key = app.key("acme", Role::Creator).await;
    let c = client(&app.base, &key);
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(
            c.send(&NewEvent::new("job", json!({"i": i})))
                .await
                .expect("send")
                .event_id,
        );
    }
    // Two consumers: their leases never share an event.
    let a = c.lease(&LeaseRequest::new(2)).await.expect("lease a");
    let b = c.lease(&LeaseRequest::new(2)).await.expect("lease b");
    let a_ids: Vec<Uuid> = a.events.iter().map(|e| e.event_id).collect();
    let b_ids: Vec<Uuid> = b.events.iter().map(|e| e.event_id).collect();
    assert_eq!(a_ids, sent[..2]);
    assert_eq!(b_ids, sent[2..]);
    assert!(a
        .events
        .iter()
        .all(|e| e.lease_count == 1 && e.leased_until.is_some()));
    // a acknowledges one and releases the other; acking it again is stale.
    let a_id = a.lease_id.expect("a lease");
    let acked = c.ack_lease(a_id, Some(&a_ids[..1])).await.expect("ack");
    assert_eq!(
        (acked.done.clone(), acked.stale.clone()),
        (a_ids[..1].to_vec(), vec![])
    );
    let released = c.release(a_id, None).await.expect("release");
    assert_eq!(released.done, a_ids[1..].to_vec());
    assert_eq!(released.stale, a_ids[..1].to_vec(), "already acknowledged");
    assert!(c.get(a_ids[0]).await.expect("get").delivered);
    // The released event is leased a second time (max_leases 2): quarantined.
    let again = c.lease(&LeaseRequest::new(10)).await.expect("lease again");
    assert_eq!(again.events[0].event_id, a_ids[1]);
    c.release(again.lease_id.expect("lease"), None)
        .await
        .expect("release");
    let quarantined = c.get(a_ids[1]).await.expect("get");
    assert!(quarantined.quarantined);
    let err = api_error(c.requeue(sent[2]).await.expect_err("not quarantined"));
    assert_eq!(err.code, ErrorCode::Conflict);
    let back = c.requeue(a_ids[1]).await.expect("requeue");
    assert_eq!((back.lease_count, back.quarantined), (0, false));
    // Nothing available: a lease without events, after its short wait.
    c.ack_lease(b.lease_id.expect("b lease"), None)
        .await
        .expect("ack b");
    let last = c.lease(&LeaseRequest::new(10)).await.expect("lease");
    c.ack_lease(last.lease_id.expect("lease"), None)
        .await
        .expect("ack");
    let started = Instant::now();
    let empty = c
        .lease(&LeaseRequest::new(10).wait_seconds(1))
        .await
        .expect("empty lease");
    assert!(empty.lease_id.is_none() && empty.events.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    let err = api_error(
        c.ack_lease(Uuid::new_v4(), None)
            .await
            .expect_err("unknown"),
    );
    assert_eq!(err.status, 404);
}

#[tokio::test]
async fn status_reports_the_backend() {
    let app = TestApp::start(Backend::Sqlite).await;
    let s = client(&app.base, "no key needed")
        .status()
        .await
        .expect("status");
    assert_eq!(s.status, "ok");
    assert_eq!(s.store.backend, "sqlite");
    assert!(s.store.reachable);
    assert!(!s.version.is_empty());
}

// --- The retry loop against a scripted stub ---------------------------------

/// A request the stub received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

/// One scripted answer: status, headers, body.
type Answer = (u16, Vec<(&'static str, &'static str)>, &'static str);

struct StubState {
    script: Vec<Answer>,
    seen: Mutex<Vec<Seen>>,
}

/// A local HTTP server that answers with `script` in order (the last
/// answer repeats) and records every request.
struct Stub {
    base: String,
    state: Arc<StubState>,
}

impl Stub {
    async fn start(script: Vec<Answer>) -> Stub {
        assert!(!script.is_empty());
        let state = Arc::new(StubState {
            script,
            seen: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .fallback(stub_answer)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Stub {
            base: format!("http://{addr}"),
            state,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().expect("lock").clone()
    }
}

async fn stub_answer(State(state): State<Arc<StubState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    let n = {
        let mut seen = state.seen.lock().expect("lock");
        seen.push(Seen {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers: parts.headers.clone(),
            body,
        });
        seen.len()
    };
    let (status, headers, body) = &state.script[(n - 1).min(state.script.len() - 1)];
    let mut resp = (
        StatusCode::from_u16(*status).expect("status"),
        body.to_string(),
    )
        .into_response();
    for (k, v) in headers {
        resp.headers_mut()
            .insert(*k, v.parse().expect("header value"));
    }
    resp
}

const PROBLEM: (&str, &str) = ("content-type", "application/problem+json");
const JSON: (&str, &str) = ("content-type", "application/json");
const UNAVAILABLE: &str = r#"{"type":"/docs#problem-service-unavailable","title":"Service unavailable","status":503,"detail":"The service is temporarily unavailable.","code":"SERVICE_UNAVAILABLE","correlation_id":"stub-503"}"#;
const RATE_LIMITED: &str = r#"{"type":"/docs#problem-rate-limited","title":"Too many requests","status":429,"detail":"Rate limit exceeded.","code":"RATE_LIMITED","correlation_id":"stub-429"}"#;
const INVALID: &str = r#"{"type":"/docs#problem-validation-error","title":"Validation failed","status":400,"detail":"The request is not valid; see errors.","code":"VALIDATION_ERROR","correlation_id":"stub-400","errors":[{"field":"payload","message":"must be an object"}]}"#;
const INTERNAL: &str = r#"{"type":"/docs#problem-internal-error","title":"Internal server error","status":500,"detail":"An internal error occurred.","code":"INTERNAL_ERROR","correlation_id":"stub-500"}"#;
const CREATED: &str = r#"{"event_id":"0190f0e0-0000-7000-8000-000000000001","status":"accepted","timestamp":"2026-01-02T03:04:05.678Z","duplicate":false}"#;

#[tokio::test]
async fn a_503_twice_then_201_is_retried_with_one_idempotency_key_and_the_same_body() {
    let stub = Stub::start(vec![
        (503, vec![PROBLEM, ("retry-after", "0")], UNAVAILABLE),
        (503, vec![PROBLEM], UNAVAILABLE),
        (201, vec![JSON, ("location", "/events/x")], CREATED),
    ])
    .await;
    let c = Client::builder(&stub.base, "trg_key")
        .retry_policy(fast())
        .idempotency_keys(true)
        .build()
        .expect("client");
    let accepted = c
        .send(&NewEvent::new("t", json!({"n": 1})))
        .await
        .expect("third attempt succeeds");
    assert_eq!(
        accepted.event_id,
        "0190f0e0-0000-7000-8000-000000000001"
            .parse::<Uuid>()
            .expect("uuid")
    );
    assert!(!accepted.duplicate);

    let seen = stub.seen();
    assert_eq!(seen.len(), 3, "two retries");
    let keys: Vec<&str> = seen
        .iter()
        .map(|s| {
            s.headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .expect("an Idempotency-Key on every attempt")
        })
        .collect();
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
    Uuid::parse_str(keys[0]).expect("a UUID key");
    for s in &seen {
        assert_eq!((s.method.as_str(), s.path.as_str()), ("POST", "/events"));
        assert_eq!(s.body, seen[0].body);
        assert_eq!(s.headers["authorization"], "Bearer trg_key");
        assert_eq!(s.headers["content-type"], "application/json");
    }
    assert_eq!(
        &seen[0].body[..],
        br#"{"event_type":"t","payload":{"n":1}}"#
    );

    // A key of the caller's own, and a fresh one for the next send.
    let stub = Stub::start(vec![(201, vec![JSON], CREATED)]).await;
    let c = Client::builder(&stub.base, "trg_key")
        .idempotency_keys(true)
        .build()
        .expect("client");
    let e = NewEvent::new("t", json!({}));
    c.send_with(&e, &SendOptions::default().idempotency_key("order-42"))
        .await
        .expect("send");
    c.send(&e).await.expect("send");
    let seen = stub.seen();
    assert_eq!(seen[0].headers["idempotency-key"], "order-42");
    assert_ne!(seen[1].headers["idempotency-key"], "order-42");
}

const IN_FLIGHT: &str = r#"{"type":"/docs#problem-conflict","title":"Conflict","status":409,"detail":"A request with this Idempotency-Key is still being processed.","code":"CONFLICT","correlation_id":"stub-409"}"#;

#[tokio::test]
async fn a_409_with_retry_after_is_retried_with_the_same_key_and_one_without_is_not() {
    let stub = Stub::start(vec![
        (409, vec![PROBLEM, ("retry-after", "0")], IN_FLIGHT),
        (201, vec![JSON, ("idempotent-replayed", "true")], CREATED),
    ])
    .await;
    let c = client(&stub.base, "trg_key");
    let opts = SendOptions::default().idempotency_key("once");
    c.send_with(&NewEvent::new("t", json!({})), &opts)
        .await
        .expect("the retry gets the kept answer");
    let seen = stub.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.headers["idempotency-key"] == "once"));

    let stub = Stub::start(vec![(409, vec![PROBLEM], IN_FLIGHT)]).await;
    let c = client(&stub.base, "trg_key");
    let p = api_error(
        c.send_with(&NewEvent::new("t", json!({})), &opts)
            .await
            .expect_err("a key used for another request"),
    );
    assert_eq!(
        (p.status, &p.code, p.attempts),
        (409, &ErrorCode::Conflict, 1)
    );
}

#[tokio::test]
async fn no_idempotency_key_is_sent_unless_asked_for() {
    let stub = Stub::start(vec![(201, vec![JSON], CREATED)]).await;
    let c = client(&stub.base, "k");
    c.send(&NewEvent::new("t", json!({}))).await.expect("send");
    assert!(stub.seen()[0].headers.get("idempotency-key").is_none());
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_delay() {
    let stub = Stub::start(vec![
        (429, vec![PROBLEM, ("retry-after", "1")], RATE_LIMITED),
        (201, vec![JSON], CREATED),
    ])
    .await;
    let c = client(&stub.base, "k");
    let started = Instant::now();
    c.send(&NewEvent::new("t", json!({})))
        .await
        .expect("second attempt succeeds");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(stub.seen().len(), 2);
}

#[tokio::test]
async fn retries_stop_after_max_attempts_and_the_error_says_how_many() {
    let stub = Stub::start(vec![(
        503,
        vec![PROBLEM, ("retry-after", "0")],
        UNAVAILABLE,
    )])
    .await;
    let c = Client::builder(&stub.base, "k")
        .retry_policy(fast().with_max_attempts(3))
        .build()
        .expect("client");
    let p = api_error(c.get(Uuid::now_v7()).await.expect_err("always 503"));
    assert_eq!((p.status, &p.code), (503, &ErrorCode::ServiceUnavailable));
    assert_eq!(p.attempts, 3);
    assert_eq!(p.correlation_id, "stub-503");
    assert_eq!(p.retry_after, Some(Duration::ZERO));
    assert_eq!(stub.seen().len(), 3);

    // RetryPolicy::none(): one attempt.
    let stub = Stub::start(vec![(503, vec![PROBLEM], UNAVAILABLE)]).await;
    let c = Client::builder(&stub.base, "k")
        .retry_policy(RetryPolicy::none())
        .build()
        .expect("client");
    assert_eq!(
        c.ack(Uuid::now_v7()).await.expect_err("503").status(),
        Some(503)
    );
    assert_eq!(stub.seen().len(), 1);
}

#[tokio::test]
async fn errors_that_a_retry_cannot_fix_are_returned_at_once() {
    for (answer, code) in [
        ((400, vec![PROBLEM], INVALID), ErrorCode::ValidationError),
        ((500, vec![PROBLEM], INTERNAL), ErrorCode::InternalError),
        (
            (502, vec![JSON], r#"{"message":"Bad Gateway"}"#),
            ErrorCode::Other("HTTP_502".into()),
        ),
    ] {
        let status = answer.0;
        let stub = Stub::start(vec![answer]).await;
        let p = api_error(
            client(&stub.base, "k")
                .send(&NewEvent::new("t", json!({})))
                .await
                .expect_err("error answer"),
        );
        assert_eq!(p.status, status);
        assert_eq!(p.code, code);
        assert_eq!(stub.seen().len(), 1, "{status} was retried");
        if status == 400 {
            assert_eq!(p.fields(), ["payload"]);
        }
        if status == 502 {
            assert!(!p.is_problem_json);
            assert!(p.detail.contains("Bad Gateway"));
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported_as_a_transport_error() {
    // A port that was just free: connections are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let c = Client::builder(format!("http://127.0.0.1:{port}"), "k")
        .retry_policy(fast().with_max_attempts(3))
        .build()
        .expect("client");
    let started = Instant::now();
    let e = c.get(Uuid::now_v7()).await.expect_err("refused");
    assert!(matches!(e, Error::Transport(_)), "{e:?}");
    assert_eq!(e.status(), None);
    // Two backoffs of at least 2.5 ms and 5 ms happened.
    assert!(
        started.elapsed() >= Duration::from_millis(7),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_base_url_path_and_the_x_api_key_scheme_are_used() {
    let stub = Stub::start(vec![(
        200,
        vec![JSON],
        r#"{"events":[],"pagination":{"next_cursor":null,"has_more":false}}"#,
    )])
    .await;
    let c = Client::builder(format!("{}/prod", stub.base), "trg_key")
        .auth_scheme(AuthScheme::XApiKey)
        .build()
        .expect("client");
    let page = c
        .inbox(&InboxQuery {
            limit: Some(7),
            cursor: Some("abc".into()),
            filter: InboxFilter::event_type("a b"),
        })
        .await
        .expect("inbox");
    assert!(page.events.is_empty() && !page.has_more);
    let seen = stub.seen();
    assert_eq!(seen[0].path, "/prod/inbox");
    assert_eq!(seen[0].query, "limit=7&cursor=abc&event_type=a+b");
    assert_eq!(seen[0].headers["x-api-key"], "trg_key");
    assert!(seen[0].headers.get("authorization").is_none());
}
