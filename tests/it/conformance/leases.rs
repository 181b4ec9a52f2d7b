//! Lease cases that need the server's clock, special settings, a second
//! instance or a shutdown. The black-box ones are in the
//! `triggers-conformance` crate.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use triggers_api::config::Settings;
use triggers_api::domain::Role;
use triggers_conformance::{error_fields, ids, lease_id, ts, Endpoint};

use crate::support::{problem, test_settings, Backend, TestApp};

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn with_max_leases(n: u32) -> Settings {
    Settings {
        max_leases: n,
        ..test_settings()
    }
}

pub async fn leased_events_are_available_again_exactly_at_leased_until(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let created = app.create_n(&key, 2, "x").await;
    let first = app.lease(&key, json!({"lease_seconds": 30})).await;
    assert_eq!(ids(&first["events"]), created);
    let until = ts(&first["leased_until"]);
    app.clock.set(until - ms(1));
    let v = app.event(&key, &created[0]).await;
    assert_eq!(v["leased_until"], first["leased_until"], "still leased");
    let early = app.lease(&key, json!({})).await;
    assert_eq!(early["events"], json!([]), "one millisecond early");
    app.clock.set(until);
    let v = app.event(&key, &created[0]).await;
    assert_eq!(v["leased_until"], Value::Null, "the lease has ended");
    assert_eq!(v["lease_count"], 1);
    let again = app.lease(&key, json!({"lease_seconds": 1})).await;
    assert_eq!(
        ids(&again["events"]),
        created,
        "available again at leased_until"
    );
    for e in again["events"].as_array().unwrap() {
        assert_eq!(e["lease_count"], 2);
    }
    assert_eq!(
        ts(&again["leased_until"]).timestamp_millis(),
        (until + chrono::Duration::seconds(1)).timestamp_millis()
    );
}

pub async fn an_event_leased_max_leases_times_is_quarantined(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(3)).await;
    let key = app.key("acme", Role::Creator).await;
    let e = app.create_n(&key, 2, "q").await;
    let mut last = Value::Null;
    for n in 1..=3 {
        last = app
            .lease(&key, json!({"limit": 1, "lease_seconds": 5}))
            .await;
        assert_eq!(ids(&last["events"]), e[..1], "lease {n}");
        let ev = &last["events"][0];
        assert_eq!(ev["lease_count"], n);
        // The lease that reaches max_leases quarantines it.
        assert_eq!(ev["quarantined"], n == 3, "lease {n}: {ev}");
        if n < 3 {
            app.clock.advance(chrono::Duration::seconds(5));
        }
    }
    // Its last lease still runs; it has left the inbox for the quarantine.
    assert_eq!(app.walk_inbox(&key, 50, None).await, e[1..]);
    assert_eq!(app.walk(&key, "&state=quarantined", 50).await, e[..1]);
    let v = app.event(&key, &e[0]).await;
    assert_eq!(v["quarantined"], true);
    assert_eq!(v["leased_until"], last["leased_until"]);
    // Once that lease has ended, it is never leased again.
    app.clock.advance(chrono::Duration::seconds(60));
    let next = app.lease(&key, json!({"limit": 100})).await;
    assert_eq!(ids(&next["events"]), e[1..]);
    app.clock.advance(chrono::Duration::seconds(600));
    let next = app.lease(&key, json!({"limit": 100})).await;
    assert_eq!(ids(&next["events"]), e[1..], "only the other event again");
    let v = app.event(&key, &e[0]).await;
    assert_eq!(
        (v["quarantined"].clone(), v["leased_until"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(v["lease_count"], 3);
    // DELETE still acknowledges a quarantined event.
    assert_eq!(app.ack(&key, &e[0]).await, 204);
    assert!(app.walk(&key, "&state=quarantined", 50).await.is_empty());
    let v = app.event(&key, &e[0]).await;
    assert_eq!(v["delivered"], true);
    assert_eq!(v["quarantined"], false, "delivered, so out of quarantine");
    assert_eq!(v["lease_count"], 3, "its lease count is kept");
}

pub async fn the_last_lease_of_a_quarantined_event_may_still_acknowledge_it(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(1)).await;
    let key = app.key("acme", Role::Creator).await;
    let e = app.create_n(&key, 2, "q").await;
    let l = app.lease(&key, json!({})).await;
    assert_eq!(app.walk(&key, "&state=quarantined", 50).await, e);
    // Released: the lease ends, the event stays quarantined.
    let out = app
        .settle(
            &key,
            "release",
            json!({"lease_id": lease_id(&l), "event_ids": [e[1]]}),
        )
        .await;
    assert_eq!(out, json!({"released": [e[1]], "stale": []}));
    let v = app.event(&key, &e[1]).await;
    assert_eq!(
        (v["quarantined"].clone(), v["leased_until"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(app.lease(&key, json!({})).await["events"], json!([]));
    let out = app
        .settle(&key, "ack", json!({"lease_id": lease_id(&l)}))
        .await;
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": [e[1]]}));
    assert_eq!(app.walk(&key, "&state=quarantined", 50).await, e[1..]);
}

pub async fn the_quarantined_listing_pages_like_the_inbox(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(1)).await;
    let key = app.key("acme", Role::Creator).await;
    let mut created = Vec::new();
    let mut of_a = Vec::new();
    for i in 0..9 {
        let t = if i % 3 == 0 { "a" } else { "b" };
        let id = app
            .create_event(&key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        if t == "a" {
            of_a.push(id.clone());
        }
        created.push(id);
    }
    let l = app.lease(&key, json!({"limit": 100})).await;
    assert_eq!(ids(&l["events"]), created);
    assert!(app.walk_inbox(&key, 50, None).await.is_empty());
    for limit in [1, 2, 4, 200] {
        assert_eq!(
            app.walk(&key, "&state=quarantined", limit).await,
            created,
            "limit {limit}"
        );
        assert_eq!(
            app.walk(&key, "&state=quarantined&event_type=a", limit)
                .await,
            of_a,
            "limit {limit}"
        );
    }
    // `state=inbox` is the default listing.
    assert!(app.walk(&key, "&state=inbox", 10).await.is_empty());
    // The same parameter rules: a bad state or cursor is 400.
    let resp = app.get("/inbox?state=leased", &key).send().await.unwrap();
    let p = problem(resp, 400, "VALIDATION_ERROR").await;
    assert_eq!(error_fields(&p), ["state"]);
    let resp = app
        .get("/inbox?state=quarantined&cursor=bogus", &key)
        .send()
        .await
        .unwrap();
    problem(resp, 400, "INVALID_CURSOR").await;
    // Events acknowledged during a walk never appear twice.
    let p: Value = app
        .get("/inbox?state=quarantined&limit=3", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&p["events"]), created[..3]);
    assert_eq!(app.ack(&key, &created[1]).await, 204);
    assert_eq!(app.ack(&key, &created[5]).await, 204);
    let cursor = p["pagination"]["next_cursor"].as_str().unwrap();
    let rest: Value = app
        .get(
            &format!("/inbox?state=quarantined&limit=100&cursor={cursor}"),
            &key,
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let want: Vec<String> = created[3..]
        .iter()
        .filter(|id| **id != created[5])
        .cloned()
        .collect();
    assert_eq!(ids(&rest["events"]), want);
    assert_eq!(rest["pagination"]["has_more"], false);
}

pub async fn requeue_brings_a_quarantined_event_back_with_lease_count_0(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(2)).await;
    let key = app.key("acme", Role::Creator).await;
    let e = app.create_n(&key, 2, "r").await;
    app.lease(&key, json!({"limit": 1, "lease_seconds": 1}))
        .await;
    app.clock.advance(chrono::Duration::seconds(1));
    let last = app.lease(&key, json!({"limit": 1})).await;
    assert_eq!(last["events"][0]["quarantined"], true);
    // Requeued while its last lease runs: the lease ends for its holder.
    let resp = app
        .client
        .post(app.url(&format!("/events/{}/requeue", e[0])))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["event_id"], e[0].as_str());
    assert_eq!(v["lease_count"], 0);
    assert_eq!(v["leased_until"], Value::Null);
    assert_eq!(v["quarantined"], false);
    assert_eq!(v["delivered"], false);
    assert_eq!(v["payload"], json!({"i": 0}));
    assert_eq!(app.event(&key, &e[0]).await, v);
    assert_eq!(app.walk_inbox(&key, 50, None).await, e);
    assert!(app.walk(&key, "&state=quarantined", 50).await.is_empty());
    let out = app
        .settle(&key, "ack", json!({"lease_id": lease_id(&last)}))
        .await;
    assert_eq!(out, json!({"acknowledged": [], "stale": [e[0]]}));
    // Available at once, with its full budget of leases again.
    let again = app.lease(&key, json!({"limit": 1})).await;
    assert_eq!(ids(&again["events"]), e[..1]);
    assert_eq!(again["events"][0]["lease_count"], 1);
    assert_eq!(again["events"][0]["quarantined"], false);
    // Not quarantined (leased, available, delivered): 409; no such event: 404.
    let requeue = |id: &str| {
        app.client
            .post(app.url(&format!("/events/{id}/requeue")))
            .bearer_auth(&key)
            .send()
    };
    problem(requeue(&e[0]).await.unwrap(), 409, "CONFLICT").await;
    problem(requeue(&e[1]).await.unwrap(), 409, "CONFLICT").await;
    assert_eq!(app.ack(&key, &e[1]).await, 204);
    problem(requeue(&e[1]).await.unwrap(), 409, "CONFLICT").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    problem(requeue(&unknown).await.unwrap(), 404, "NOT_FOUND").await;
    problem(requeue("not-an-id").await.unwrap(), 404, "NOT_FOUND").await;
    let other = app.key("other", Role::Creator).await;
    let resp = app
        .client
        .post(app.url(&format!("/events/{}/requeue", e[0])))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    problem(resp, 404, "NOT_FOUND").await;
}

pub async fn a_long_poll_wakes_up_when_an_event_is_ingested_on_this_instance(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let req = app.post_json("/inbox/lease", &key, &json!({"wait_seconds": 10}));
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.json::<Value>().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = app
        .create_event(&key, &json!({"event_type": "w", "payload": {}}))
        .await;
    let posted = started.elapsed();
    let (v, took) = waiting.await.unwrap();
    assert_eq!(ids(&v["events"]), [id]);
    assert!(took >= posted.min(Duration::from_millis(300)), "{took:?}");
    // Woken, not found by the once-a-second recheck.
    assert!(
        took < posted + Duration::from_millis(700),
        "answered {took:?}, posted at {posted:?}"
    );
}

pub async fn a_long_poll_wakes_up_when_an_event_is_ingested_on_another_instance(b: Backend) {
    let (one, key) = TestApp::with_creator(b).await;
    let two = one.another_instance().await;
    let req = one.post_json("/inbox/lease", &key, &json!({"wait_seconds": 10}));
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.json::<Value>().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = two
        .create_event(&key, &json!({"event_type": "w", "payload": {}}))
        .await;
    let posted = started.elapsed();
    let (v, took) = waiting.await.unwrap();
    assert_eq!(ids(&v["events"]), [id]);
    // Found by the recheck, at most 1 s later (plus a store call).
    assert!(
        took < posted + Duration::from_millis(1_800),
        "answered {took:?}, posted at {posted:?}"
    );
}

pub async fn shutdown_ends_a_long_poll_promptly(b: Backend) {
    let (mut app, key) = TestApp::with_creator(b).await;
    let req = app.post_json("/inbox/lease", &key, &json!({"wait_seconds": 20}));
    let waiting = tokio::spawn(async move {
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    app.begin_shutdown();
    let (status, v) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the long poll ended")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200);
    assert_eq!(v["events"], json!([]));
}

pub async fn over_the_waiter_budget_a_lease_answers_at_once(b: Backend) {
    let settings = Settings {
        lease_waiters_per_account: 1,
        ..test_settings()
    };
    let app = TestApp::start_with(b, settings).await;
    let key = app.key("acme", Role::Creator).await;
    let other = app.key("other", Role::Creator).await;
    let req = app.post_json("/inbox/lease", &key, &json!({"wait_seconds": 10}));
    let first = tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let v = app.lease(&key, json!({"wait_seconds": 10})).await;
    assert_eq!(v["events"], json!([]));
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "answered at once"
    );
    // Another account has a budget of its own.
    let req = app.post_json("/inbox/lease", &other, &json!({"wait_seconds": 1}));
    let started = Instant::now();
    req.send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited");
    // The waiting call still gets the next event.
    let id = app
        .create_event(&key, &json!({"event_type": "w", "payload": {}}))
        .await;
    let v = first.await.unwrap().unwrap();
    assert_eq!(ids(&v["events"]), [id]);
}

pub async fn leases_hold_across_instances_and_restarts(b: Backend) {
    let (one, key) = TestApp::with_creator(b).await;
    let e = one.create_n(&key, 2, "i").await;
    let l = one.lease(&key, json!({"limit": 1})).await;
    let two = one.another_instance().await;
    let other = two.lease(&key, json!({"limit": 10})).await;
    assert_eq!(
        ids(&other["events"]),
        e[1..],
        "the other instance sees the lease"
    );
    // A restarted server (a fresh handle on the store) knows both leases.
    drop(two);
    let restarted = one.another_instance().await;
    let out = restarted
        .settle(&key, "ack", json!({"lease_id": lease_id(&l)}))
        .await;
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": []}));
    let out = restarted
        .settle(&key, "release", json!({"lease_id": lease_id(&other)}))
        .await;
    assert_eq!(out, json!({"released": [e[1]], "stale": []}));
}
