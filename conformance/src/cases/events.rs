use std::time::Duration;

use serde_json::{json, Value};

use crate::{problem, ts, Ctx, Endpoint};

/// GET and DELETE on `path` both answer a 404 problem.
async fn assert_gone(cx: &Ctx, key: &str, path: &str) {
    problem(cx.get(path, key).send().await.unwrap(), 404, "NOT_FOUND").await;
    problem(cx.delete(path, key).send().await.unwrap(), 404, "NOT_FOUND").await;
}

/// RFC 3339 UTC with milliseconds: `2026-03-01T12:00:00.123Z`.
fn assert_server_time(v: &Value) {
    let s = v.as_str().unwrap_or_else(|| panic!("a timestamp: {v}"));
    let millis = s
        .strip_suffix('Z')
        .and_then(|s| s.rsplit_once('.'))
        .map(|(_, ms)| ms.len() == 3 && ms.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(millis, Some(true), "{s} is not UTC with milliseconds");
    ts(v);
}

/// POSTs a raw body; the status and the answer.
async fn post_raw(cx: &Ctx, body: String) -> (u16, Value) {
    let resp = cx
        .post_raw("/events", &cx.creator, body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

pub async fn posting_an_event_answers_201_with_location_and_an_accepted_body(cx: &Ctx) {
    let key = &cx.creator;
    let resp = cx
        .post_json(
            "/events",
            key,
            &json!({"event_type": cx.ty("order.created"), "payload": {"id": 1}}),
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
    assert_server_time(&v["timestamp"]);
    assert_eq!(cx.event(key, id).await["timestamp"], v["timestamp"]);
}

pub async fn payload_and_metadata_come_back_exactly_as_sent(cx: &Ctx) {
    let key = &cx.creator;
    let raw = r#"{"event_type":"TYPE","payload":{"z":1,"a":null,"big":123456789012345678901234567890,"f":1.50,"e":1e400,"neg":-0,"s":"ünïcødé \u2028 \"q\"","arr":[1,"2",[3],{"k":false}],"nested":{"deep":{"x":[]}}},"source":"billing","metadata":{"trace":"abc","n":9007199254740993}}"#;
    let (status, v) = post_raw(cx, raw.replace("TYPE", &cx.ty("exact"))).await;
    assert_eq!(status, 201);
    let id = v["event_id"].as_str().unwrap();
    let text = cx
        .get(&format!("/events/{id}"), key)
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
    let spaced = "{\"event_type\":\"TYPE\",\"payload\":{ \"b\" : 1E5 ,\n \"a\" : [ ] }}";
    let (status, v) = post_raw(cx, spaced.replace("TYPE", &cx.ty("ws"))).await;
    assert_eq!(status, 201);
    let id = v["event_id"].as_str().unwrap();
    let text2 = cx
        .get(&format!("/events/{id}"), key)
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

pub async fn a_fetched_event_has_every_field_and_is_undelivered(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let id = cx
        .create_event(key, &json!({"event_type": t, "payload": {"a": 1}}))
        .await;
    let v = cx.event(key, &id).await;
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
    assert_eq!(v["event_type"], t.as_str());
    assert_eq!(v["payload"], json!({"a": 1}));
    assert_eq!(v["source"], Value::Null);
    assert_eq!(v["metadata"], json!({}));
    assert_eq!(v["delivered"], false);
    assert_eq!(v["delivered_at"], Value::Null);
    assert_server_time(&v["timestamp"]);
}

pub async fn a_repeat_within_the_window_answers_200_with_the_original_id(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("d");
    let body = json!({"event_type": t, "payload": {"n": 1}, "source": "s"});
    let first = cx.post_json("/events", key, &body).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = cx.post_json("/events", key, &body).send().await.unwrap();
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
    assert_eq!(cx.walk_inbox(key, 50, Some(&t)).await.len(), 1);
}

pub async fn key_order_and_whitespace_do_not_make_a_payload_different(cx: &Ctx) {
    let t = cx.ty("k");
    let a = r#"{"event_type":"TYPE","payload":{"a":1,"b":{"c":[1,2],"d":"x"}}}"#;
    let bb = "{ \"payload\" : { \"b\" : { \"d\" : \"x\", \"c\" : [ 1, 2 ] },\n \"a\" : 1 } , \"event_type\" : \"TYPE\" }";
    let (s1, r1) = post_raw(cx, a.replace("TYPE", &t)).await;
    assert_eq!(s1, 201);
    let (s2, r2) = post_raw(cx, bb.replace("TYPE", &t)).await;
    assert_eq!(s2, 200);
    assert_eq!(r1["event_id"], r2["event_id"]);
}

pub async fn escape_and_exponent_spelling_do_not_make_a_payload_different_but_digits_do(cx: &Ctx) {
    let t = cx.ty("e");
    let post = |body: &str| post_raw(cx, body.replace("TYPE", &t));
    let (s1, first) = post(r#"{"event_type":"TYPE","payload":{"s":"é/A","n":1E5}}"#).await;
    assert_eq!(s1, 201);
    let (s2, again) =
        post(r#"{"event_type":"TYPE","payload":{"n":1e+5,"s":"\u00e9\/\u0041"}}"#).await;
    assert_eq!((s2, &again["event_id"]), (200, &first["event_id"]));
    // The digits themselves count: 1e5 and 100000 are different payloads.
    let (s3, other) = post(r#"{"event_type":"TYPE","payload":{"s":"é/A","n":100000}}"#).await;
    assert_eq!(s3, 201);
    assert_ne!(other["event_id"], first["event_id"]);
}

pub async fn a_different_type_payload_or_source_is_not_a_duplicate(cx: &Ctx) {
    let key = &cx.creator;
    let (x, y) = (cx.ty("x"), cx.ty("y"));
    let bodies = [
        json!({"event_type": x, "payload": {"a": 1}}),
        json!({"event_type": y, "payload": {"a": 1}}),
        json!({"event_type": x, "payload": {"a": 2}}),
        json!({"event_type": x, "payload": {"a": 1}, "source": "s1"}),
        json!({"event_type": x, "payload": {"a": 1}, "source": "s2"}),
        json!({"event_type": x, "payload": {"a": 1}, "source": ""}),
    ];
    let mut ids = Vec::new();
    for body in &bodies {
        ids.push(cx.create_event(key, body).await);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), bodies.len());
    // metadata is not part of the fingerprint.
    let body = json!({"event_type": x, "payload": {"a": 1}, "metadata": {"m": 1}});
    assert_eq!(cx.post_event_status(key, &body).await, 200);
}

pub async fn concurrent_identical_posts_create_exactly_one_event(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("race");
    let body = json!({"event_type": t, "payload": {"n": 42}});
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let req = cx.post_json("/events", key, &body);
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
    assert_eq!(cx.walk_inbox(key, 50, Some(&t)).await, vec![first.clone()]);
}

pub async fn deduplication_is_per_account(cx: &Ctx) {
    let body = json!({"event_type": cx.ty("same"), "payload": {"x": 1}});
    let ia = cx.create_event(&cx.creator, &body).await;
    let iz = cx.create_event(&cx.other_account, &body).await;
    assert_ne!(ia, iz);
}

pub async fn acknowledging_removes_from_the_inbox_but_keeps_the_event_readable(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("a");
    let id = cx
        .create_event(key, &json!({"event_type": t, "payload": {}}))
        .await;
    let resp = cx
        .delete(&format!("/events/{id}"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
    let v = cx.event(key, &id).await;
    assert_eq!(v["delivered"], true);
    assert_server_time(&v["delivered_at"]);
    assert!(ts(&v["delivered_at"]) >= ts(&v["timestamp"]), "{v}");
}

pub async fn a_second_acknowledgement_is_204_and_keeps_the_first_delivered_at(cx: &Ctx) {
    let key = &cx.creator;
    let id = cx
        .create_event(key, &json!({"event_type": cx.ty("a"), "payload": {}}))
        .await;
    let path = format!("/events/{id}");
    assert_eq!(cx.delete(&path, key).send().await.unwrap().status(), 204);
    let first = cx.event(key, &id).await;
    // Later by more than the timestamps' millisecond.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(cx.delete(&path, key).send().await.unwrap().status(), 204);
    let second = cx.event(key, &id).await;
    assert!(first["delivered_at"].is_string(), "{first}");
    assert_eq!(first["delivered_at"], second["delivered_at"]);
}

pub async fn an_invalid_or_unknown_event_id_is_404(cx: &Ctx) {
    let v4 = uuid::Uuid::new_v4().to_string();
    let unknown_v7 = uuid::Uuid::now_v7().to_string();
    for id in ["not-an-id", "123", v4.as_str(), unknown_v7.as_str(), "%ZZ"] {
        assert_gone(cx, &cx.creator, &format!("/events/{id}")).await;
    }
}

pub async fn the_inbox_alias_paths_read_and_acknowledge(cx: &Ctx) {
    let key = &cx.creator;
    let id = cx
        .create_event(key, &json!({"event_type": cx.ty("a"), "payload": {}}))
        .await;
    let v: Value = cx
        .get(&format!("/inbox/{id}"), key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["event_id"], id.as_str());
    assert_eq!(
        cx.delete(&format!("/inbox/{id}"), key)
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let v = cx.event(key, &id).await;
    assert_eq!(v["delivered"], true);
}

pub async fn another_accounts_event_is_404_for_read_and_acknowledge(cx: &Ctx) {
    let (mine, theirs) = (&cx.creator, &cx.other_account);
    let id = cx
        .create_event(mine, &json!({"event_type": cx.ty("a"), "payload": {}}))
        .await;
    for path in [format!("/events/{id}"), format!("/inbox/{id}")] {
        assert_gone(cx, theirs, &path).await;
    }
    let v = cx.event(mine, &id).await;
    assert_eq!(v["delivered"], false, "a foreign ack must not deliver it");
}
