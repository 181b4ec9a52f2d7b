//! Event cases that need the server's clock, a second instance or the
//! purge. The black-box ones are in the `triggers-conformance` crate.

use chrono::Duration;
use serde_json::{json, Value};
use triggers_api::clock::Clock;
use triggers_conformance::ts;

use crate::support::{problem, Backend, TestApp};

pub async fn the_server_clock_stamps_timestamp_and_delivered_at(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let t0 = app.clock.now().timestamp_millis();
    let resp = app
        .post_json("/events", &key, &json!({"event_type": "t", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(ts(&v["timestamp"]).timestamp_millis(), t0);
    let id = v["event_id"].as_str().unwrap();
    app.clock.advance(Duration::seconds(5));
    assert_eq!(app.ack(&key, id).await, 204);
    let ev = app.event(&key, id).await;
    assert_eq!(ev["timestamp"], v["timestamp"]);
    assert_eq!(ts(&ev["delivered_at"]).timestamp_millis(), t0 + 5000);
    // A later acknowledgement keeps the first delivered_at.
    app.clock.advance(Duration::seconds(10));
    assert_eq!(app.ack(&key, id).await, 204);
    assert_eq!(
        app.event(&key, id).await["delivered_at"],
        ev["delivered_at"]
    );
}

pub async fn the_dedup_window_ends_exactly_at_its_bound(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let body = json!({"event_type": "w", "payload": {}});
    let first = app.create_event(&key, &body).await;
    app.clock.advance(Duration::seconds(60));
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "a minute later");
    app.clock
        .advance(Duration::seconds(240) - Duration::milliseconds(1));
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "1 ms before the bound");
    app.clock.advance(Duration::milliseconds(1));
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 201, "at the bound: the window did not slide");
    let second: Value = resp.json().await.unwrap();
    assert_ne!(second["event_id"], first.as_str());
    // The new event opens a new window.
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["event_id"],
        second["event_id"]
    );
}

pub async fn a_delivered_event_is_purged_after_the_retention_period(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "p", "payload": {}}))
        .await;
    let keep = app
        .create_event(&key, &json!({"event_type": "p", "payload": {"k": 1}}))
        .await;
    assert_eq!(app.ack(&key, &id).await, 204);
    app.clock.advance(Duration::days(30) - Duration::seconds(1));
    let path = format!("/events/{id}");
    assert_eq!(app.get(&path, &key).send().await.unwrap().status(), 200);
    app.clock.advance(Duration::seconds(1));
    // Hidden at once, whether or not a purge has run…
    problem(app.get(&path, &key).send().await.unwrap(), 404, "NOT_FOUND").await;
    problem(
        app.delete(&path, &key).send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    // …and the purge leaves undelivered events alone.
    app.state.purge_once().await.unwrap();
    problem(app.get(&path, &key).send().await.unwrap(), 404, "NOT_FOUND").await;
    assert_eq!(app.walk_inbox(&key, 50, None).await, vec![keep]);
}

pub async fn deduplication_holds_across_instances_and_restarts(b: Backend) {
    let (one, key) = TestApp::with_creator(b).await;
    let two = one.another_instance().await;
    let body = json!({"event_type": "multi", "payload": {"n": 7}});
    let mut tasks = Vec::new();
    for i in 0..16 {
        let req = if i % 2 == 0 { &one } else { &two }.post_json("/events", &key, &body);
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<Value>().await.unwrap()["event_id"].clone(),
            )
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 201).count(),
        1,
        "{results:?}"
    );
    assert!(
        results.iter().all(|(_, id)| *id == results[0].1),
        "{results:?}"
    );
    let original = results[0].1.clone();
    // A restarted server (a fresh handle on the same store) still knows it.
    drop(two);
    let restarted = one.another_instance().await;
    restarted.clock.advance(Duration::seconds(299));
    let resp = restarted
        .post_json("/events", &key, &body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["event_id"], original);
    // Each instance reads the other's writes.
    assert_eq!(
        restarted.walk_inbox(&key, 10, None).await,
        vec![original.as_str().unwrap().to_owned()]
    );
}
