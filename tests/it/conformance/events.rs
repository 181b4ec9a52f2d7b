use chrono::{DateTime, Duration};
use serde_json::{json, Value};
use triggers_api::domain::Role;

use crate::support::{problem, Backend, TestApp};

/// GET and DELETE on `path` both answer a 404 problem.
async fn assert_gone(app: &TestApp, key: &str, path: &str) {
    problem(app.get(path, key).send().await.unwrap(), 404, "NOT_FOUND").await;
    problem(
        app.delete(path, key).send().await.unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
}

fn ts(v: &Value) -> DateTime<chrono::FixedOffset> {
    DateTime::parse_from_rfc3339(v.as_str().expect("timestamp string")).expect("RFC 3339")
}

pub async fn posting_an_event_answers_201_with_location_and_an_accepted_body(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let resp = app
        .post_json(
            "/events",
            &key,
            &json!({"event_type": "order.created", "payload": {"id": 1}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    let id = v["event_id"].as_str().unwrap();
    assert_eq!(location, format!("/events/{id}"));
    assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
    assert_eq!(v["status"], "accepted");
    assert_eq!(v["duplicate"], false);
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ts(&v["timestamp"]).timestamp_millis(), app.clock_now_ms());
}

impl TestApp {
    fn clock_now_ms(&self) -> i64 {
        use triggers_api::clock::Clock;
        self.clock.now().timestamp_millis()
    }
}

pub async fn payload_and_metadata_come_back_exactly_as_sent(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let raw = r#"{"event_type":"exact","payload":{"z":1,"a":null,"big":123456789012345678901234567890,"f":1.50,"e":1e400,"neg":-0,"s":"ünïcødé \u2028 \"q\"","arr":[1,"2",[3],{"k":false}],"nested":{"deep":{"x":[]}}},"source":"billing","metadata":{"trace":"abc","n":9007199254740993}}"#;
    let resp = app.post_raw("/events", &key, raw).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = app
        .get(&format!("/events/{id}"), &key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The payload and metadata text come back byte for byte: key order,
    // every digit, exponent spelling, escapes.
    let payload = r#""payload":{"z":1,"a":null,"big":123456789012345678901234567890,"f":1.50,"e":1e400,"neg":-0,"s":"ünïcødé \u2028 \"q\"","arr":[1,"2",[3],{"k":false}],"nested":{"deep":{"x":[]}}}"#;
    assert!(text.contains(payload), "{text}");
    assert!(
        text.contains(r#""metadata":{"trace":"abc","n":9007199254740993}"#),
        "{text}"
    );
    let spaced = "{\"event_type\":\"ws\",\"payload\":{ \"b\" : 1E5 ,\n \"a\" : [ ] }}";
    let resp = app.post_raw("/events", &key, spaced).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text2 = app
        .get(&format!("/events/{id}"), &key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text2.contains("\"payload\":{ \"b\" : 1E5 ,\n \"a\" : [ ] }"),
        "{text2}"
    );
    assert!(text.contains(r#""source":"billing""#));
}

pub async fn a_fetched_event_has_every_field_and_is_undelivered(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "t", "payload": {"a": 1}}))
        .await;
    let v = app.event(&key, &id).await;
    let obj = v.as_object().unwrap();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "delivered",
            "delivered_at",
            "event_id",
            "event_type",
            "lease_count",
            "leased_until",
            "metadata",
            "payload",
            "quarantined",
            "source",
            "timestamp"
        ]
    );
    // v2: never leased.
    assert_eq!(v["lease_count"], 0);
    assert_eq!(v["leased_until"], Value::Null);
    assert_eq!(v["quarantined"], false);
    assert_eq!(v["event_id"], id.as_str());
    assert_eq!(v["event_type"], "t");
    assert_eq!(v["payload"], json!({"a": 1}));
    assert_eq!(v["source"], Value::Null);
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["delivered"], false);
    assert_eq!(v["delivered_at"], Value::Null);
    ts(&v["timestamp"]);
}

pub async fn a_repeat_within_the_window_answers_200_with_the_original_id(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let body = json!({"event_type": "d", "payload": {"n": 1}, "source": "s"});
    let first = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    app.clock.advance(Duration::seconds(60));
    let again = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.headers()["location"].to_str().unwrap(),
        format!("/events/{}", first["event_id"].as_str().unwrap())
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["event_id"], first["event_id"]);
    assert_eq!(again["timestamp"], first["timestamp"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["status"], "accepted");
    assert_eq!(app.walk_inbox(&key, 50, None).await.len(), 1);
}

pub async fn key_order_and_whitespace_do_not_make_a_payload_different(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let a = r#"{"event_type":"k","payload":{"a":1,"b":{"c":[1,2],"d":"x"}}}"#;
    let bb = "{ \"payload\" : { \"b\" : { \"d\" : \"x\", \"c\" : [ 1, 2 ] },\n \"a\" : 1 } , \"event_type\" : \"k\" }";
    let r1: Value = app
        .post_raw("/events", &key, a)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r2 = app.post_raw("/events", &key, bb).send().await.unwrap();
    assert_eq!(r2.status(), 200);
    let r2: Value = r2.json().await.unwrap();
    assert_eq!(r1["event_id"], r2["event_id"]);
}

pub async fn escape_and_exponent_spelling_do_not_make_a_payload_different_but_digits_do(
    b: Backend,
) {
    let (app, key) = TestApp::with_creator(b).await;
    let post = |body: &'static str| {
        let (app, key) = (&app, &key);
        async move {
            let r = app.post_raw("/events", key, body).send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v["event_id"].clone())
        }
    };
    let (s1, first) = post(r#"{"event_type":"e","payload":{"s":"é/A","n":1E5}}"#).await;
    assert_eq!(s1, 201);
    let (s2, again) = post(r#"{"event_type":"e","payload":{"n":1e+5,"s":"\u00e9\/\u0041"}}"#).await;
    assert_eq!((s2, &again), (200, &first));
    // The digits themselves count: 1e5 and 100000 are different payloads.
    let (s3, other) = post(r#"{"event_type":"e","payload":{"s":"é/A","n":100000}}"#).await;
    assert_eq!(s3, 201);
    assert_ne!(other, first);
}

pub async fn a_different_type_payload_or_source_is_not_a_duplicate(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let bodies = [
        json!({"event_type": "x", "payload": {"a": 1}}),
        json!({"event_type": "y", "payload": {"a": 1}}),
        json!({"event_type": "x", "payload": {"a": 2}}),
        json!({"event_type": "x", "payload": {"a": 1}, "source": "s1"}),
        json!({"event_type": "x", "payload": {"a": 1}, "source": "s2"}),
        json!({"event_type": "x", "payload": {"a": 1}, "source": ""}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        ids.push(app.create_event(&key, body).await);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bodies.len());
    // metadata is not part of the fingerprint.
    let body = json!({"event_type": "x", "payload": {"a": 1}, "metadata": {"m": 1}});
    assert_eq!(app.post_event_status(&key, &body).await, 200);
}

pub async fn the_dedup_window_ends_exactly_at_its_bound(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let body = json!({"event_type": "w", "payload": {}});
    let first = app.create_event(&key, &body).await;
    app.clock
        .advance(Duration::seconds(300) - Duration::milliseconds(1));
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200, "1 ms before the bound");
    app.clock.advance(Duration::milliseconds(1));
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 201, "at the bound");
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

pub async fn concurrent_identical_posts_create_exactly_one_event(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let body = json!({"event_type": "race", "payload": {"n": 42}});
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let req = app.post_json("/events", &key, &body);
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: Value = resp.json().await.unwrap();
            (status, v["event_id"].as_str().unwrap().to_owned())
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
    assert_eq!(
        results.iter().filter(|(s, _)| *s == 200).count(),
        23,
        "{results:?}"
    );
    let first = &results[0].1;
    assert!(results.iter().all(|(_, id)| id == first));
    assert_eq!(app.walk_inbox(&key, 50, None).await, vec![first.clone()]);
}

pub async fn deduplication_is_per_account(b: Backend) {
    let app = TestApp::start(b).await;
    let a = app.key("acct-a", Role::Creator).await;
    let z = app.key("acct-z", Role::Creator).await;
    let body = json!({"event_type": "same", "payload": {"x": 1}});
    let ia = app.create_event(&a, &body).await;
    let iz = app.create_event(&z, &body).await;
    assert_ne!(ia, iz);
}

pub async fn acknowledging_removes_from_the_inbox_but_keeps_the_event_readable(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "a", "payload": {}}))
        .await;
    app.clock.advance(Duration::seconds(5));
    let resp = app
        .delete(&format!("/events/{id}"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert!(app.walk_inbox(&key, 50, None).await.is_empty());
    let v = app.event(&key, &id).await;
    assert_eq!(v["delivered"], true);
    let delivered_at = ts(&v["delivered_at"]);
    assert_eq!(
        delivered_at.timestamp_millis() - ts(&v["timestamp"]).timestamp_millis(),
        5000
    );
}

pub async fn a_second_acknowledgement_is_204_and_keeps_the_first_delivered_at(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "a", "payload": {}}))
        .await;
    let path = format!("/events/{id}");
    assert_eq!(app.delete(&path, &key).send().await.unwrap().status(), 204);
    let first: Value = app
        .get(&path, &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    app.clock.advance(Duration::seconds(10));
    assert_eq!(app.delete(&path, &key).send().await.unwrap().status(), 204);
    let second: Value = app
        .get(&path, &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["delivered_at"], second["delivered_at"]);
}

pub async fn an_invalid_or_unknown_event_id_is_404(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let v4 = uuid::Uuid::new_v4().to_string();
    let unknown_v7 = uuid::Uuid::now_v7().to_string();
    for id in ["not-an-id", "123", v4.as_str(), unknown_v7.as_str(), "%ZZ"] {
        assert_gone(&app, &key, &format!("/events/{id}")).await;
    }
}

pub async fn the_inbox_alias_paths_read_and_acknowledge(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let id = app
        .create_event(&key, &json!({"event_type": "a", "payload": {}}))
        .await;
    let v: Value = app
        .get(&format!("/inbox/{id}"), &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["event_id"], id.as_str());
    assert_eq!(
        app.delete(&format!("/inbox/{id}"), &key)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let v = app.event(&key, &id).await;
    assert_eq!(v["delivered"], true);
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
    assert_eq!(
        app.get(&format!("/events/{id}"), &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    app.clock.advance(Duration::seconds(1));
    // Hidden at once, whether or not a purge has run…
    assert_gone(&app, &key, &format!("/events/{id}")).await;
    // …and the purge leaves undelivered events alone.
    app.state.purge_once().await.unwrap();
    problem(
        app.get(&format!("/events/{id}"), &key)
            .send()
            .await
            .unwrap(),
        404,
        "NOT_FOUND",
    )
    .await;
    assert_eq!(app.walk_inbox(&key, 50, None).await, vec![keep]);
}

pub async fn another_accounts_event_is_404_for_read_and_acknowledge(b: Backend) {
    let app = TestApp::start(b).await;
    let mine = app.key("mine", Role::Creator).await;
    let theirs = app.key("theirs", Role::Creator).await;
    let id = app
        .create_event(&mine, &json!({"event_type": "a", "payload": {}}))
        .await;
    for path in [format!("/events/{id}"), format!("/inbox/{id}")] {
        assert_gone(&app, &theirs, &path).await;
    }
    let v = app.event(&mine, &id).await;
    assert_eq!(v["delivered"], false, "a foreign ack must not deliver it");
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
