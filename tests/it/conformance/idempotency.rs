//! The Idempotency-Key header of POST /events and POST /events/batch
//! (docs/api.md, "Idempotency keys"), the cases that need a test-only hook:
//! a store that holds, refuses or loses a write, the server's clock (24 h,
//! the claim's lapse), a second instance, a second creator key of one
//! account, the metrics of this server alone. The black-box cases are the
//! `triggers-conformance` crate's (`conformance/src/cases/idempotency.rs`,
//! run here as `blackbox::*`).

use chrono::Duration;
use serde_json::Value;
use triggers_api::domain::Role;

use super::held::{held_app, Inserts};
use crate::support::{assert_problem_snapshot, problem, Backend, TestApp};

const REPLAYED: &str = "idempotent-replayed";

struct Answer {
    status: u16,
    replayed: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON")
    }
}

async fn send(app: &TestApp, path: &str, key: &str, idem: Option<&str>, body: &str) -> Answer {
    let mut req = app.post_raw(path, key, body.to_owned());
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Answer {
        status: resp.status().as_u16(),
        replayed: header(REPLAYED),
        retry_after: header("retry-after"),
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

const EVENT: &str = r#"{"event_type":"order.created","payload":{"order":42}}"#;

fn batch_body(n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"event_type":"b","payload":{{"i":{i}}}}}"#))
        .collect();
    format!(r#"{{"events":[{},{{"event_type":""}}]}}"#, events.join(","))
}

pub async fn the_same_request_while_the_first_is_under_way_is_409_retryable(b: Backend) {
    let (app, hooks) = held_app(b).await;
    let key = app.key("acme", Role::Creator).await;
    hooks.set(Inserts::Hold);
    let first = {
        let req = app
            .post_raw("/events/batch", &key, batch_body(2))
            .header("idempotency-key", "slow");
        tokio::spawn(async move { req.send().await.unwrap() })
    };
    // The first request holds the key and waits in the store.
    tokio::time::timeout(std::time::Duration::from_secs(10), hooks.waiting.notified())
        .await
        .expect("the first request reaches the store");
    let second = send(&app, "/events/batch", &key, Some("slow"), &batch_body(2)).await;
    assert_eq!(second.status, 409);
    assert_eq!(second.retry_after.as_deref(), Some("1"));
    let p = second.json();
    assert_eq!(p["code"], "CONFLICT");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("still being processed"),
        "{p}"
    );
    // Another request with the key while the first is under way: the
    // plain conflict (retrying it would not help).
    let other = send(&app, "/events/batch", &key, Some("slow"), &batch_body(3)).await;
    assert_eq!((other.status, other.retry_after), (409, None));
    let resp = app
        .post_raw("/events/batch", &key, batch_body(2))
        .header("idempotency-key", "slow")
        .send()
        .await
        .unwrap();
    let p = problem(resp, 409, "CONFLICT").await;
    assert_problem_snapshot("conflict_idempotency_key_in_flight", p);

    hooks.set(Inserts::Pass);
    hooks.release();
    let first = first.await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.bytes().await.unwrap().to_vec();
    // Retried after Retry-After: the first response.
    let retried = send(&app, "/events/batch", &key, Some("slow"), &batch_body(2)).await;
    assert_eq!(retried.status, 200);
    assert_eq!(retried.body, first_body);
    assert_eq!(retried.replayed.as_deref(), Some("true"));
}

pub async fn a_kept_response_expires_after_24_hours(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let first = send(&app, "/events", &key, Some("day"), EVENT).await;
    assert_eq!(first.status, 201);
    app.clock
        .advance(Duration::hours(24) - Duration::milliseconds(1));
    let late = send(&app, "/events", &key, Some("day"), EVENT).await;
    assert_eq!((late.status, &late.body), (201, &first.body));
    let other = r#"{"event_type":"t","payload":{"n":1}}"#;
    assert_eq!(
        send(&app, "/events", &key, Some("day"), other).await.status,
        409
    );
    app.clock.advance(Duration::milliseconds(1));
    // Expired: the key is free; the request is served anew (past the
    // dedup window too, so a new event).
    let anew = send(&app, "/events", &key, Some("day"), EVENT).await;
    assert_eq!(anew.status, 201);
    assert_eq!(anew.replayed, None);
    assert_ne!(anew.json()["event_id"], first.json()["event_id"]);
    // And kept again from now on.
    let again = send(&app, "/events", &key, Some("day"), EVENT).await;
    assert_eq!((again.status, &again.body), (201, &anew.body));
    // The purge removes expired records (no effect on answers).
    app.clock.advance(Duration::hours(25));
    app.state.purge_once().await.unwrap();
    assert_eq!(
        send(&app, "/events", &key, Some("day"), other).await.status,
        201
    );
}

pub async fn a_retry_after_a_lost_answer_creates_no_second_event(b: Backend) {
    let (app, hooks) = held_app(b).await;
    let key = app.key("acme", Role::Creator).await;
    // The event is written but the answer is lost (as if the server died
    // after the write): 503, and the key is not kept.
    hooks.set(Inserts::WriteThenFail);
    let lost = send(&app, "/events", &key, Some("crash"), EVENT).await;
    assert_eq!(lost.status, 503);
    let written = app.walk_inbox(&key, 50, None).await;
    assert_eq!(written.len(), 1);
    // The retry (same key, same body) is deduplicated into that event.
    hooks.set(Inserts::Pass);
    let retry = send(&app, "/events", &key, Some("crash"), EVENT).await;
    assert_eq!(retry.status, 200);
    let v = retry.json();
    assert_eq!(v["duplicate"], true);
    assert_eq!(v["event_id"], written[0].as_str());
    assert_eq!(app.walk_inbox(&key, 50, None).await, written);
}

pub async fn a_claim_left_by_a_request_that_died_lapses_after_the_request_timeout(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    use triggers_api::clock::Clock;
    use triggers_api::service::idempotency::request_digest;
    // What a server that crashed mid-request leaves: a claim, never
    // finished.
    let now = app.clock.now();
    let claim = triggers_api::store::IdempotencyClaim {
        account: triggers_api::domain::AccountId::parse("acme").unwrap(),
        key: triggers_api::domain::IdempotencyKey::parse(b"orphan").unwrap(),
        request: request_digest("POST /events", EVENT.as_bytes()),
        token: uuid::Uuid::new_v4(),
        now,
        lapses_at: now + Duration::seconds(30),
    };
    assert_eq!(
        app.state.store.claim_idempotency_key(&claim).await.unwrap(),
        triggers_api::store::ClaimOutcome::Claimed
    );
    let held = send(&app, "/events", &key, Some("orphan"), EVENT).await;
    assert_eq!((held.status, held.retry_after.as_deref()), (409, Some("1")));
    app.clock.advance(Duration::seconds(30));
    let served = send(&app, "/events", &key, Some("orphan"), EVENT).await;
    assert_eq!(served.status, 201);
    // The dead request can no longer finish what is now another's.
    let finished = app
        .state
        .store
        .finish_idempotency_key(
            &claim.account,
            &claim.key,
            claim.token,
            triggers_api::store::Finish::Release,
        )
        .await
        .unwrap();
    assert!(!finished);
    let replay = send(&app, "/events", &key, Some("orphan"), EVENT).await;
    assert_eq!(replay.body, served.body);
}

pub async fn kept_responses_hold_across_instances_and_restarts(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let first = send(
        &app,
        "/events/batch",
        &key,
        Some("everywhere"),
        &batch_body(4),
    )
    .await;
    assert_eq!(first.status, 200);
    let other = app.another_instance().await;
    let again = send(
        &other,
        "/events/batch",
        &key,
        Some("everywhere"),
        &batch_body(4),
    )
    .await;
    assert_eq!(again.body, first.body);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    let conflict = send(
        &other,
        "/events/batch",
        &key,
        Some("everywhere"),
        &batch_body(5),
    )
    .await;
    assert_eq!(conflict.status, 409);
}

/// The replays are counted: exactly these three, on a server of its own
/// (the black-box `a_retry_with_the_same_key_and_body_gets_the_first_response_again`
/// checks the replays themselves).
pub async fn idempotent_replays_are_counted_in_the_metrics(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let first = send(&app, "/events", &key, Some("k-1"), EVENT).await;
    assert_eq!(first.status, 201);
    let again = send(&app, "/events", &key, Some("k-1"), EVENT).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
    let id = first.json()["event_id"].as_str().unwrap().to_owned();
    assert_eq!(app.ack(&key, &id).await, 204);
    let later = send(&app, "/events", &key, Some("k-1"), EVENT).await;
    assert_eq!(later.replayed.as_deref(), Some("true"));
    // A plain duplicate is no replay.
    let plain = send(&app, "/events", &key, None, EVENT).await;
    assert_eq!((plain.status, plain.replayed), (200, None));
    let body = batch_body(3);
    let first = send(&app, "/events/batch", &key, Some("k-2"), &body).await;
    assert_eq!((first.status, first.replayed), (200, None));
    let again = send(&app, "/events/batch", &key, Some("k-2"), &body).await;
    assert_eq!(again.replayed.as_deref(), Some("true"));
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("triggers_idempotent_replays_total 3"),
        "{metrics}"
    );
}

/// Keys belong to the account, not to the API key that sent them (the
/// black-box `equal_keys_of_different_accounts_never_meet` checks that two
/// accounts never meet).
pub async fn an_idempotency_key_belongs_to_the_account_not_to_the_api_key(b: Backend) {
    let app = TestApp::start(b).await;
    let acme = app.key("acme", Role::Creator).await;
    let acme2 = app.key("acme", Role::Creator).await;
    let a = send(&app, "/events", &acme, Some("shared"), EVENT).await;
    assert_eq!(a.status, 201);
    let again = send(&app, "/events", &acme2, Some("shared"), EVENT).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, a.body);
    assert_eq!(again.replayed.as_deref(), Some("true"));
}

/// A 503 leaves the key free: the retry with the same key is served anew,
/// and then kept (the black-box `answers_other_than_2xx_are_not_kept`
/// checks a 400 and a 413).
pub async fn a_503_answer_is_not_kept(b: Backend) {
    let (app, hooks) = held_app(b).await;
    let key = app.key("acme", Role::Creator).await;
    hooks.set(Inserts::Refuse);
    let body = batch_body(2);
    let failed = send(&app, "/events/batch", &key, Some("k5"), &body).await;
    assert_eq!(failed.status, 503);
    hooks.set(Inserts::Pass);
    let retried = send(&app, "/events/batch", &key, Some("k5"), &body).await;
    assert_eq!(retried.status, 200);
    assert_eq!(retried.replayed, None);
    let again = send(&app, "/events/batch", &key, Some("k5"), &body).await;
    assert_eq!(again.body, retried.body);
    assert_eq!(again.replayed.as_deref(), Some("true"));
}
