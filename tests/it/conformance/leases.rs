//! Consumer leases (v2): lease, ack, release, quarantine, requeue and long
//! polls, beside the v1 inbox walk and DELETE.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use triggers_api::clock::Clock;
use triggers_api::config::Settings;
use triggers_api::domain::Role;

use crate::support::{error_fields, problem, test_settings, Backend, TestApp};

/// POST /inbox/lease, asserting 200.
async fn lease(app: &TestApp, key: &str, body: Value) -> Value {
    let resp = app
        .post_json("/inbox/lease", key, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "POST /inbox/lease {body}");
    resp.json().await.unwrap()
}

/// POST /inbox/ack or /inbox/release, asserting 200.
async fn settle(app: &TestApp, key: &str, what: &str, body: Value) -> Value {
    let resp = app
        .post_json(&format!("/inbox/{what}"), key, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "POST /inbox/{what} {body}");
    resp.json().await.unwrap()
}

fn ids(events: &Value) -> Vec<String> {
    events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

fn lease_id(leased: &Value) -> String {
    leased["lease_id"].as_str().expect("a lease id").to_owned()
}

fn ts(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().expect("a timestamp"))
        .unwrap()
        .with_timezone(&Utc)
}

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

async fn create_n(app: &TestApp, key: &str, n: usize, event_type: &str) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(
            app.create_event(key, &json!({"event_type": event_type, "payload": {"i": i}}))
                .await,
        );
    }
    out
}

/// Every id on every page of a listing (`?state=...`), in order.
async fn walk(app: &TestApp, key: &str, query: &str, limit: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/inbox?limit={limit}{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let resp = app.get(&url, key).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let page: Value = resp.json().await.unwrap();
        out.extend(ids(&page["events"]));
        if page["pagination"]["has_more"] == false {
            assert!(page["pagination"]["next_cursor"].is_null());
            return out;
        }
        cursor = Some(
            page["pagination"]["next_cursor"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
        assert!(out.len() < 10_000, "the walk must end");
    }
}

fn with_max_leases(n: u32) -> Settings {
    Settings {
        max_leases: n,
        ..test_settings()
    }
}

pub async fn a_lease_takes_the_oldest_available_events_and_holds_them_until_leased_until(
    b: Backend,
) {
    let (app, key) = TestApp::with_creator(b).await;
    let created = create_n(&app, &key, 12, "t").await;
    let t0 = app.clock.now();
    let first = lease(&app, &key, json!({"limit": 3})).await;
    assert_eq!(ids(&first["events"]), created[..3]);
    assert_eq!(lease_id(&first).len(), 36, "{first}");
    // Default lease: 300 s from the injected clock.
    let until = ts(&first["leased_until"]);
    assert_eq!(
        until.timestamp_millis(),
        (t0 + chrono::Duration::seconds(300)).timestamp_millis()
    );
    for e in first["events"].as_array().unwrap() {
        assert_eq!(e["lease_count"], 1, "{e}");
        assert_eq!(e["leased_until"], first["leased_until"], "{e}");
        assert_eq!(e["quarantined"], false);
        assert_eq!(e["delivered"], false);
    }
    let fetched = app.event(&key, &created[0]).await;
    assert_eq!(fetched["lease_count"], 1);
    assert_eq!(fetched["leased_until"], first["leased_until"]);
    // The default limit is 10; held events are skipped.
    let second = lease(&app, &key, json!({})).await;
    assert_eq!(ids(&second["events"]), created[3..]);
    assert_ne!(second["lease_id"], first["lease_id"]);
    // Nothing left: no lease at all.
    let none = lease(&app, &key, json!({"limit": 100})).await;
    assert_eq!(
        none,
        json!({"lease_id": null, "leased_until": null, "events": []})
    );
    // An event that was never leased shows no lease.
    let fresh = app
        .create_event(&key, &json!({"event_type": "t", "payload": {"fresh": 1}}))
        .await;
    let v = app.event(&key, &fresh).await;
    assert_eq!(
        (v["lease_count"].clone(), v["leased_until"].clone()),
        (json!(0), Value::Null)
    );
}

pub async fn two_concurrent_leases_never_share_an_event(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let created = create_n(&app, &key, 40, "c").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app.post_json("/inbox/lease", &key, &json!({"limit": 10}));
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let v: Value = resp.json().await.unwrap();
            ids(&v["events"])
        }));
    }
    let mut seen: Vec<String> = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(
        unique.len(),
        seen.len(),
        "an event was leased twice: {seen:?}"
    );
    // Whatever the concurrent calls left (a call may return fewer when it
    // lost races) is leased by later calls: every event exactly once.
    loop {
        let v = lease(&app, &key, json!({"limit": 100})).await;
        let more = ids(&v["events"]);
        if more.is_empty() {
            break;
        }
        seen.extend(more);
    }
    let mut all = seen.clone();
    all.sort();
    let mut want = created.clone();
    want.sort();
    assert_eq!(all, want, "every event leased exactly once");
}

pub async fn leased_events_are_available_again_exactly_at_leased_until(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let created = create_n(&app, &key, 2, "x").await;
    let first = lease(&app, &key, json!({"lease_seconds": 30})).await;
    assert_eq!(ids(&first["events"]), created);
    let until = ts(&first["leased_until"]);
    app.clock.set(until - ms(1));
    let v = app.event(&key, &created[0]).await;
    assert_eq!(v["leased_until"], first["leased_until"], "still leased");
    let early = lease(&app, &key, json!({})).await;
    assert_eq!(early["events"], json!([]), "one millisecond early");
    app.clock.set(until);
    let v = app.event(&key, &created[0]).await;
    assert_eq!(v["leased_until"], Value::Null, "the lease has ended");
    assert_eq!(v["lease_count"], 1);
    let again = lease(&app, &key, json!({"lease_seconds": 1})).await;
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

pub async fn an_ack_after_the_lease_ended_is_stale_only_for_events_leased_again_or_acknowledged(
    b: Backend,
) {
    let (app, key) = TestApp::with_creator(b).await;
    let created = create_n(&app, &key, 3, "s").await;
    let a = lease(&app, &key, json!({"lease_seconds": 10})).await;
    assert_eq!(ids(&a["events"]), created);
    app.clock.advance(chrono::Duration::seconds(10));
    // Lease B takes the first event again; the third is acknowledged by
    // DELETE meanwhile; the second nobody touched.
    let b_lease = lease(&app, &key, json!({"limit": 1})).await;
    assert_eq!(ids(&b_lease["events"]), created[..1]);
    assert_eq!(app.ack(&key, &created[2]).await, 204);
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&a)})).await;
    assert_eq!(
        out,
        json!({"acknowledged": [created[1]], "stale": [created[0], created[2]]})
    );
    // The event B holds was left alone; B acknowledges it.
    let v = app.event(&key, &created[0]).await;
    assert_eq!(v["delivered"], false);
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&b_lease)})).await;
    assert_eq!(out, json!({"acknowledged": [created[0]], "stale": []}));
    // An ack is a delivery, exactly as DELETE: readable, delivered, gone
    // from the inbox; a DELETE afterwards is 204 and keeps delivered_at.
    let v = app.event(&key, &created[1]).await;
    assert_eq!(v["delivered"], true);
    assert_eq!(v["leased_until"], Value::Null);
    let delivered_at = v["delivered_at"].clone();
    assert!(delivered_at.is_string());
    app.clock.advance(chrono::Duration::seconds(5));
    assert_eq!(app.ack(&key, &created[1]).await, 204);
    assert_eq!(
        app.event(&key, &created[1]).await["delivered_at"],
        delivered_at
    );
    assert!(app.walk_inbox(&key, 50, None).await.is_empty());
    // Acknowledging again: everything stale, nothing changes.
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&a)})).await;
    assert_eq!(out["acknowledged"], json!([]));
}

pub async fn ack_and_release_of_a_subset_leave_the_rest_of_the_lease_held(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let e = create_n(&app, &key, 5, "p").await;
    let l = lease(&app, &key, json!({"limit": 4})).await;
    let lid = lease_id(&l);
    assert_eq!(ids(&l["events"]), e[..4]);
    let out = settle(
        &app,
        &key,
        "ack",
        json!({"lease_id": lid, "event_ids": [e[0], e[0], e[4]]}),
    )
    .await;
    // Listed once; an event of another lease (or none) is left alone.
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": [e[4]]}));
    let out = settle(
        &app,
        &key,
        "release",
        json!({"lease_id": lid, "event_ids": [e[1]]}),
    )
    .await;
    assert_eq!(out, json!({"released": [e[1]], "stale": []}));
    // Released: available at once, its lease count kept.
    let v = app.event(&key, &e[1]).await;
    assert_eq!(v["leased_until"], Value::Null);
    assert_eq!(v["lease_count"], 1);
    let next = lease(&app, &key, json!({"limit": 10})).await;
    assert_eq!(ids(&next["events"]), [e[1].clone(), e[4].clone()]);
    assert_eq!(next["events"][0]["lease_count"], 2);
    // The rest of the first lease is still held by it.
    let out = settle(&app, &key, "ack", json!({"lease_id": lid})).await;
    assert_eq!(
        out,
        json!({"acknowledged": [e[2], e[3]], "stale": [e[0], e[1]]})
    );
    // Releasing what is no longer held changes nothing.
    let out = settle(&app, &key, "release", json!({"lease_id": lid})).await;
    assert_eq!(
        out,
        json!({"released": [], "stale": [e[0], e[1], e[2], e[3]]})
    );
    let v = app.event(&key, &e[1]).await;
    assert_eq!(
        v["leased_until"], next["leased_until"],
        "still the second lease's"
    );
}

pub async fn an_unknown_or_foreign_lease_id_is_404(b: Backend) {
    let app = TestApp::start(b).await;
    let mine = app.key("acme", Role::Creator).await;
    let other = app.key("other", Role::Creator).await;
    app.create_event(&other, &json!({"event_type": "t", "payload": {}}))
        .await;
    let theirs = lease(&app, &other, json!({})).await;
    for what in ["ack", "release"] {
        for lease_id in [
            uuid::Uuid::new_v4().to_string(),
            "not-a-lease".to_owned(),
            lease_id(&theirs),
        ] {
            let resp = app
                .post_json(
                    &format!("/inbox/{what}"),
                    &mine,
                    &json!({ "lease_id": lease_id }),
                )
                .send()
                .await
                .unwrap();
            problem(resp, 404, "NOT_FOUND").await;
        }
    }
    // The foreign lease was left alone.
    let out = settle(&app, &other, "ack", json!({"lease_id": lease_id(&theirs)})).await;
    assert_eq!(out["acknowledged"].as_array().unwrap().len(), 1);
}

pub async fn an_event_leased_max_leases_times_is_quarantined(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(3)).await;
    let key = app.key("acme", Role::Creator).await;
    let e = create_n(&app, &key, 2, "q").await;
    let mut last = Value::Null;
    for n in 1..=3 {
        last = lease(&app, &key, json!({"limit": 1, "lease_seconds": 5})).await;
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
    assert_eq!(walk(&app, &key, "&state=quarantined", 50).await, e[..1]);
    let v = app.event(&key, &e[0]).await;
    assert_eq!(v["quarantined"], true);
    assert_eq!(v["leased_until"], last["leased_until"]);
    // Once that lease has ended, it is never leased again.
    app.clock.advance(chrono::Duration::seconds(60));
    let next = lease(&app, &key, json!({"limit": 100})).await;
    assert_eq!(ids(&next["events"]), e[1..]);
    app.clock.advance(chrono::Duration::seconds(600));
    let next = lease(&app, &key, json!({"limit": 100})).await;
    assert_eq!(ids(&next["events"]), e[1..], "only the other event again");
    let v = app.event(&key, &e[0]).await;
    assert_eq!(
        (v["quarantined"].clone(), v["leased_until"].clone()),
        (json!(true), Value::Null)
    );
    assert_eq!(v["lease_count"], 3);
    // DELETE still acknowledges a quarantined event.
    assert_eq!(app.ack(&key, &e[0]).await, 204);
    assert!(walk(&app, &key, "&state=quarantined", 50).await.is_empty());
    let v = app.event(&key, &e[0]).await;
    assert_eq!(v["delivered"], true);
    assert_eq!(v["quarantined"], false, "delivered, so out of quarantine");
    assert_eq!(v["lease_count"], 3, "its lease count is kept");
}

pub async fn the_last_lease_of_a_quarantined_event_may_still_acknowledge_it(b: Backend) {
    let app = TestApp::start_with(b, with_max_leases(1)).await;
    let key = app.key("acme", Role::Creator).await;
    let e = create_n(&app, &key, 2, "q").await;
    let l = lease(&app, &key, json!({})).await;
    assert_eq!(walk(&app, &key, "&state=quarantined", 50).await, e);
    // Released: the lease ends, the event stays quarantined.
    let out = settle(
        &app,
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
    assert_eq!(lease(&app, &key, json!({})).await["events"], json!([]));
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&l)})).await;
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": [e[1]]}));
    assert_eq!(walk(&app, &key, "&state=quarantined", 50).await, e[1..]);
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
    let l = lease(&app, &key, json!({"limit": 100})).await;
    assert_eq!(ids(&l["events"]), created);
    assert!(app.walk_inbox(&key, 50, None).await.is_empty());
    for limit in [1, 2, 4, 200] {
        assert_eq!(
            walk(&app, &key, "&state=quarantined", limit).await,
            created,
            "limit {limit}"
        );
        assert_eq!(
            walk(&app, &key, "&state=quarantined&event_type=a", limit).await,
            of_a,
            "limit {limit}"
        );
    }
    // `state=inbox` is the default listing.
    assert!(walk(&app, &key, "&state=inbox", 10).await.is_empty());
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
    let e = create_n(&app, &key, 2, "r").await;
    lease(&app, &key, json!({"limit": 1, "lease_seconds": 1})).await;
    app.clock.advance(chrono::Duration::seconds(1));
    let last = lease(&app, &key, json!({"limit": 1})).await;
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
    assert!(walk(&app, &key, "&state=quarantined", 50).await.is_empty());
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&last)})).await;
    assert_eq!(out, json!({"acknowledged": [], "stale": [e[0]]}));
    // Available at once, with its full budget of leases again.
    let again = lease(&app, &key, json!({"limit": 1})).await;
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

pub async fn the_event_type_filter_applies_to_leases(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let mut a = Vec::new();
    let mut other = Vec::new();
    for i in 0..6 {
        let t = if i % 2 == 0 { "a" } else { "b" };
        let id = app
            .create_event(&key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        if i % 2 == 0 { &mut a } else { &mut other }.push(id);
    }
    let la = lease(&app, &key, json!({"event_type": "a", "lease_seconds": 10})).await;
    assert_eq!(ids(&la["events"]), a);
    assert_eq!(
        lease(&app, &key, json!({"event_type": "a"})).await["events"],
        json!([])
    );
    assert_eq!(
        lease(&app, &key, json!({"event_type": "A"})).await["events"],
        json!([])
    );
    // An ended lease of the type is available to the filter again.
    app.clock.advance(chrono::Duration::seconds(10));
    let lb = lease(&app, &key, json!({"limit": 2, "event_type": "b"})).await;
    assert_eq!(ids(&lb["events"]), other[..2]);
    let la2 = lease(&app, &key, json!({"limit": 1, "event_type": "a"})).await;
    assert_eq!(ids(&la2["events"]), a[..1]);
    let rest = lease(&app, &key, json!({"limit": 100})).await;
    assert_eq!(
        ids(&rest["events"]),
        [a[1].clone(), a[2].clone(), other[2].clone()]
    );
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

pub async fn a_long_poll_answers_empty_when_its_wait_ends(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    // A held event is not available either.
    app.create_event(&key, &json!({"event_type": "w", "payload": {}}))
        .await;
    lease(&app, &key, json!({})).await;
    let started = Instant::now();
    let v = lease(&app, &key, json!({"wait_seconds": 1})).await;
    let took = started.elapsed();
    assert_eq!(v["events"], json!([]));
    assert!(took >= Duration::from_millis(950), "{took:?}");
    assert!(
        took < Duration::from_secs(2),
        "never longer than wait + 1 s: {took:?}"
    );
    // wait_seconds 0 answers at once.
    let started = Instant::now();
    lease(&app, &key, json!({"wait_seconds": 0})).await;
    assert!(started.elapsed() < Duration::from_millis(500));
}

pub async fn a_long_poll_finds_a_lease_that_ends_while_it_waits(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "w", "payload": {}}))
        .await;
    lease(&app, &key, json!({"lease_seconds": 30})).await;
    let req = app.post_json("/inbox/lease", &key, &json!({"wait_seconds": 5}));
    let waiting = tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.clock.advance(chrono::Duration::seconds(30));
    let v = waiting.await.unwrap().unwrap();
    assert_eq!(ids(&v["events"]), [id]);
    assert_eq!(v["events"][0]["lease_count"], 2);
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
    let v = lease(&app, &key, json!({"wait_seconds": 10})).await;
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

pub async fn v1_walks_and_delete_keep_working_beside_leases(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let e = create_n(&app, &key, 6, "v").await;
    let l = lease(&app, &key, json!({"limit": 3})).await;
    // The plain inbox lists leased events too, in order, with their lease.
    for limit in [1, 2, 50] {
        assert_eq!(app.walk_inbox(&key, limit, None).await, e);
    }
    let page: Value = app
        .get("/inbox?limit=50", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["events"][0]["leased_until"], l["leased_until"]);
    assert_eq!(page["events"][0]["lease_count"], 1);
    assert_eq!(page["events"][3]["leased_until"], Value::Null);
    // DELETE acknowledges leased and unleased events alike.
    assert_eq!(app.ack(&key, &e[1]).await, 204);
    assert_eq!(app.ack(&key, &e[4]).await, 204);
    assert_eq!(
        app.walk_inbox(&key, 2, None).await,
        [e[0].clone(), e[2].clone(), e[3].clone(), e[5].clone()]
    );
    let out = settle(&app, &key, "ack", json!({"lease_id": lease_id(&l)})).await;
    assert_eq!(out, json!({"acknowledged": [e[0], e[2]], "stale": [e[1]]}));
    let next = lease(&app, &key, json!({})).await;
    assert_eq!(ids(&next["events"]), [e[3].clone(), e[5].clone()]);
    assert_eq!(
        app.walk_inbox(&key, 10, Some("v")).await,
        [e[3].clone(), e[5].clone()]
    );
}

pub async fn an_event_deleted_while_leased_takes_no_place_in_later_leases(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let e = create_n(&app, &key, 4, "d").await;
    lease(&app, &key, json!({"limit": 1, "lease_seconds": 1})).await;
    assert_eq!(app.ack(&key, &e[0]).await, 204);
    // Its lease has ended too; it is delivered, so never leased again, and
    // the oldest three that are available fill the lease.
    app.clock.advance(chrono::Duration::seconds(1));
    let l = lease(&app, &key, json!({"limit": 3})).await;
    assert_eq!(ids(&l["events"]), e[1..]);
    assert_eq!(lease(&app, &key, json!({})).await["events"], json!([]));
}

pub async fn leases_hold_across_instances_and_restarts(b: Backend) {
    let (one, key) = TestApp::with_creator(b).await;
    let e = create_n(&one, &key, 2, "i").await;
    let l = lease(&one, &key, json!({"limit": 1})).await;
    let two = one.another_instance().await;
    let other = lease(&two, &key, json!({"limit": 10})).await;
    assert_eq!(
        ids(&other["events"]),
        e[1..],
        "the other instance sees the lease"
    );
    // A restarted server (a fresh handle on the store) knows both leases.
    drop(two);
    let restarted = one.another_instance().await;
    let out = settle(&restarted, &key, "ack", json!({"lease_id": lease_id(&l)})).await;
    assert_eq!(out, json!({"acknowledged": [e[0]], "stale": []}));
    let out = settle(
        &restarted,
        &key,
        "release",
        json!({"lease_id": lease_id(&other)}),
    )
    .await;
    assert_eq!(out, json!({"released": [e[1]], "stale": []}));
}

pub async fn a_viewer_gets_403_on_the_lease_routes_before_the_body_is_read(b: Backend) {
    let app = TestApp::start(b).await;
    let viewer = app.key("acme", Role::Viewer).await;
    // A connection of its own per request: the server answers the oversize
    // one before reading its body and then closes that connection.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for path in ["/inbox/lease", "/inbox/ack", "/inbox/release"] {
        let post = |body: reqwest::Body| {
            client
                .post(app.url(path))
                .bearer_auth(&viewer)
                .header("content-type", "application/json")
                .body(body)
        };
        let cases = [
            client
                .post(app.url(path))
                .bearer_auth(&viewer)
                .header("content-type", "text/plain")
                .body("x"),
            post("{not json".into()),
            post(r#"{"limit":0,"lease_id":7}"#.into()),
            post(vec![b' '; 600 * 1024].into()),
        ];
        for req in cases {
            let p = problem(req.send().await.unwrap(), 403, "FORBIDDEN").await;
            assert!(
                p["detail"].as_str().unwrap().contains("role"),
                "{path}: {p}"
            );
        }
    }
    let resp = app
        .client
        .post(app.url("/events/not-an-id/requeue"))
        .bearer_auth(&viewer)
        .send()
        .await
        .unwrap();
    problem(resp, 403, "FORBIDDEN").await;
    // A viewer may still read the quarantine.
    assert_eq!(
        app.get("/inbox?state=quarantined", &viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

pub async fn lease_ack_and_release_bodies_are_validated(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let bad = |path: &'static str, body: &'static str| app.post_raw(path, &key, body).send();
    let p = problem(
        bad(
            "/inbox/lease",
            r#"{"limit":101,"lease_seconds":0,"wait_seconds":21,"event_type":"","x":1}"#,
        )
        .await
        .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(
        error_fields(&p),
        ["x", "limit", "lease_seconds", "wait_seconds", "event_type"]
    );
    for (body, field) in [
        (r#"{"limit":2.5}"#, "limit"),
        (r#"{"limit":"5"}"#, "limit"),
        (r#"{"lease_seconds":3601}"#, "lease_seconds"),
        (r#"{"wait_seconds":-1}"#, "wait_seconds"),
        (r#"{"event_type":7}"#, "event_type"),
        (r#"{"limit":1,"limit":2}"#, "limit"),
        ("[]", "body"),
        ("{", "body"),
    ] {
        let p = problem(
            bad("/inbox/lease", body).await.unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(error_fields(&p), [field], "{body}");
    }
    for path in ["/inbox/ack", "/inbox/release"] {
        for (body, fields) in [
            ("{}", vec!["lease_id"]),
            (r#"{"lease_id":null}"#, vec!["lease_id"]),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","event_ids":[]}"#,
                vec!["event_ids"],
            ),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","event_ids":["x"],"z":1}"#,
                vec!["z", "event_ids[0]"],
            ),
            (
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000","lease_id":"x"}"#,
                vec!["lease_id"],
            ),
        ] {
            let p = problem(bad(path, body).await.unwrap(), 400, "VALIDATION_ERROR").await;
            assert_eq!(error_fields(&p), fields, "{path} {body}");
        }
    }
    // Valid shape, no such lease: 404.
    let resp = bad(
        "/inbox/ack",
        r#"{"lease_id":"00000000-0000-4000-8000-000000000000"}"#,
    )
    .await
    .unwrap();
    problem(resp, 404, "NOT_FOUND").await;
}
