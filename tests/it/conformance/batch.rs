//! POST /events/batch, the cases that need a test-only hook: a key with a
//! small rate limit, the metrics of this server alone, a store that fails.
//! The black-box batch cases are the `triggers-conformance` crate's
//! (`conformance/src/cases/batch.rs`, run here as `blackbox::*`).

use serde_json::{json, Value};
use triggers_api::domain::Role;

use super::held::{held_app, Inserts};
use crate::support::{problem, Backend, TestApp};

/// POSTs `{"events": events}`; the status and the body.
async fn post_batch(app: &TestApp, key: &str, events: &[Value]) -> (u16, Value) {
    let resp = app
        .post_json("/events/batch", key, &json!({ "events": events }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        crate::support::parse_deep(&resp.text().await.unwrap()),
    )
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().expect("results")
}

fn statuses(v: &Value) -> Vec<u64> {
    results(v)
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect()
}

fn ev(n: usize) -> Value {
    json!({"event_type": "batch.item", "payload": {"n": n}})
}

pub async fn a_batch_counts_once_against_the_rate_limit(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key_with_limit("acme", Role::Creator, 2).await;
    let events: Vec<Value> = (0..50).map(ev).collect();
    let send = || {
        app.post_json("/events/batch", &key, &json!({ "events": events }))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["ratelimit-remaining"], "0");
    let third = send().await.unwrap();
    let p = problem(third, 429, "RATE_LIMITED").await;
    assert!(p["detail"].is_string());
}

pub async fn batch_events_count_in_the_ingest_and_duplicate_metrics(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    let scrape = || async {
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let before = scrape().await;
    let (_, v) = post_batch(&app, &key, &[ev(1), ev(2), ev(1), json!({})]).await;
    assert_eq!(statuses(&v), [201, 201, 200, 400]);
    let after = scrape().await;
    for (name, more) in [
        ("triggers_events_ingested_total", 2),
        ("triggers_events_duplicate_total", 1),
    ] {
        assert_eq!(metric(&after, name), metric(&before, name) + more, "{name}");
    }
}

pub async fn a_store_failure_fails_the_whole_batch_and_its_retry_is_deduplicated(b: Backend) {
    let (app, hooks) = held_app(b).await;
    let key = app.key("acme", Role::Creator).await;
    let events: Vec<Value> = (0..30).map(ev).collect();
    // Refused by the store: 503, nothing written.
    hooks.set(Inserts::Refuse);
    let resp = app
        .post_json("/events/batch", &key, &json!({ "events": events }))
        .send()
        .await
        .unwrap();
    let p = problem(resp, 503, "SERVICE_UNAVAILABLE").await;
    assert!(p.get("results").is_none());
    assert!(app.walk_inbox(&key, 200, None).await.is_empty());
    // Written but the answer lost: still 503 (never a 2xx unless the
    // outcome is known) ...
    hooks.set(Inserts::WriteThenFail);
    let resp = app
        .post_json("/events/batch", &key, &json!({ "events": events }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let written = app.walk_inbox(&key, 200, None).await;
    assert_eq!(written.len(), 30);
    // ... and the client's retry of the whole batch is deduplicated into
    // what was written.
    hooks.set(Inserts::Pass);
    let (status, v) = post_batch(&app, &key, &events).await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&v), vec![200; 30]);
    let ids: Vec<&str> = results(&v)
        .iter()
        .map(|r| r["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, written);
    assert_eq!(app.walk_inbox(&key, 200, None).await, written);
}
