//! POST /events/batch (docs/api.md, "POST /events/batch"): each event
//! validated and deduplicated as a POST /events would be and answered in
//! its own result, the envelope all or nothing, the byte limit on what is
//! read, one store call, 503 for the whole batch on a store failure.

use serde_json::{json, Value};
use triggers_api::domain::Role;

use super::held::{held_app, Inserts};
use crate::support::{
    assert_problem_snapshot, error_fields, problem, test_settings, Backend, TestApp,
};

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

pub async fn a_batch_answers_every_event_in_request_order(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let earlier = app
        .create_event(&key, &json!({"event_type": "seen", "payload": {"a": 1}}))
        .await;
    let events = [
        ev(1),
        json!({"event_type": "x"}),
        // Key order does not make a payload different: a duplicate.
        json!({"payload": {"a": 1}, "event_type": "seen", "metadata": {"m": 1}}),
        json!({"event_type": "x", "payload": {}, "colour": "red"}),
        json!({"event_type": "x", "payload": {"big": "p".repeat(257 * 1024)}}),
        json!("not an event"),
        json!({"event_type": "", "payload": [], "source": 7}),
        ev(2),
    ];
    let (status, v) = post_batch(&app, &key, &events).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [201, 400, 200, 400, 413, 400, 400, 201]);
    let r = results(&v);
    for (i, item) in r.iter().enumerate() {
        assert_eq!(item["index"], i, "{item}");
    }
    // Accepted events: id, timestamp, duplicate; nothing else.
    for i in [0, 2, 7] {
        let keys: Vec<&str> = r[i]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            ["index", "status", "event_id", "timestamp", "duplicate"],
            "{}",
            r[i]
        );
    }
    assert_eq!(r[0]["duplicate"], false);
    assert_eq!(r[2]["duplicate"], true);
    assert_eq!(r[2]["event_id"], earlier.as_str());
    // Refused events: the code and every invalid field, as POST /events
    // would list them.
    assert_eq!(r[1]["code"], "VALIDATION_ERROR");
    assert_eq!(error_fields(&r[1]), ["payload"]);
    assert_eq!(error_fields(&r[3]), ["colour"]);
    assert_eq!(r[4]["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(error_fields(&r[4]), ["payload"]);
    assert_eq!(error_fields(&r[5]), ["body"]);
    assert_eq!(error_fields(&r[6]), ["event_type", "payload", "source"]);
    for i in [1, 3, 4, 5, 6] {
        assert!(r[i].get("event_id").is_none(), "{}", r[i]);
    }
    // The accepted ones are written, in request order, after the earlier.
    let first = r[0]["event_id"].as_str().unwrap().to_owned();
    let last = r[7]["event_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.walk_inbox(&key, 50, None).await,
        [earlier, first.clone(), last]
    );
    let e = app.event(&key, &first).await;
    assert_eq!(e["payload"], json!({"n": 1}));
    assert_eq!(e["timestamp"], r[0]["timestamp"]);
}

pub async fn a_repeat_inside_one_batch_is_a_duplicate_of_its_first(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let a = json!({"event_type": "t", "payload": {"a": 1, "b": 2}, "source": "s"});
    let a_again = json!({"event_type": "t", "payload": {"b": 2, "a": 1}, "source": "s", "metadata": {"x": 1}});
    let other_source = json!({"event_type": "t", "payload": {"a": 1, "b": 2}});
    let (status, v) = post_batch(&app, &key, &[a.clone(), a_again, other_source, a]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [201, 200, 201, 200]);
    let r = results(&v);
    assert_eq!(r[1]["event_id"], r[0]["event_id"]);
    assert_eq!(r[3]["event_id"], r[0]["event_id"]);
    assert_eq!(r[1]["timestamp"], r[0]["timestamp"]);
    assert_eq!(r[1]["duplicate"], true);
    assert_ne!(r[2]["event_id"], r[0]["event_id"]);
    assert_eq!(app.walk_inbox(&key, 50, None).await.len(), 2);
    // The same batch again: every event a duplicate of the first time's.
    let (_, again) = post_batch(
        &app,
        &key,
        &[json!({"event_type": "t", "payload": {"a": 1, "b": 2}, "source": "s"})],
    )
    .await;
    assert_eq!(statuses(&again), [200]);
    assert_eq!(results(&again)[0]["event_id"], r[0]["event_id"]);
}

pub async fn a_malformed_envelope_is_400_for_the_whole_batch(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let hundred_and_one: Vec<String> = (0..101).map(|i| ev(i).to_string()).collect();
    let cases: Vec<(String, &[&str])> = vec![
        ("[]".into(), &["body"]),
        (r#""events""#.into(), &["body"]),
        ("{}".into(), &["events"]),
        (r#"{"events":{}}"#.into(), &["events"]),
        (r#"{"events":"x"}"#.into(), &["events"]),
        (r#"{"events":null}"#.into(), &["events"]),
        (r#"{"events":[]}"#.into(), &["events"]),
        (
            format!(r#"{{"events":[{}]}}"#, hundred_and_one.join(",")),
            &["events"],
        ),
        (
            format!(r#"{{"events":[{}],"mode":"all"}}"#, ev(1)),
            &["mode"],
        ),
        (
            format!(r#"{{"events":[{}],"events":[{}]}}"#, ev(1), ev(2)),
            &["events"],
        ),
        (format!(r#"{{"events":[{}]"#, ev(1)), &["body"]),
        (format!(r#"{{"events":[{}]}} x"#, ev(1)), &["body"]),
        // Malformed JSON inside an item is the body's, not the item's.
        (
            r#"{"events":[{"event_type":"t","payload":{]}"#.into(),
            &["body"],
        ),
    ];
    for (body, fields) in cases {
        let resp = app
            .post_raw("/events/batch", &key, body.clone())
            .send()
            .await
            .unwrap();
        let p = problem(resp, 400, "VALIDATION_ERROR").await;
        assert_eq!(
            error_fields(&p),
            *fields,
            "{}: {p}",
            &body[..body.len().min(80)]
        );
    }
    // Invalid UTF-8 anywhere makes the body malformed.
    let mut bytes = br#"{"events":[{"event_type":"t","payload":{"s":"#.to_vec();
    bytes.extend_from_slice(b"\"\xff\"}}]}");
    let p = problem(
        app.post_raw("/events/batch", &key, bytes)
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(error_fields(&p), ["body"]);
    assert!(app.walk_inbox(&key, 50, None).await.is_empty());
    assert_problem_snapshot(
        "validation_batch_envelope",
        app.post_raw("/events/batch", &key, r#"{"events":[],"mode":"all"}"#)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
}

pub async fn a_batch_of_100_events_is_accepted_and_101_is_400(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let events: Vec<Value> = (0..100).map(ev).collect();
    let (status, v) = post_batch(&app, &key, &events).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), vec![201; 100]);
    let ids: Vec<String> = results(&v)
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    // Written in request order, each once.
    assert_eq!(app.walk_inbox(&key, 37, None).await, ids);
    let events: Vec<Value> = (100..201).map(ev).collect();
    let (status, v) = post_batch(&app, &key, &events).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_fields(&v), ["events"]);
    assert_eq!(app.walk_inbox(&key, 200, None).await.len(), 100);
}

pub async fn the_batch_byte_limit_holds_on_the_bytes_read_and_events_keep_theirs(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    // Over 512 KiB (a POST /events body) but within 1 MiB: accepted.
    let big =
        |n: usize| json!({"event_type": "big", "payload": {"n": n, "p": "x".repeat(250 * 1024)}});
    let (status, v) = post_batch(&app, &key, &[big(1), big(2), big(3)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [201, 201, 201]);
    // One event over 512 KiB (payload within 256 KiB, metadata not): 413
    // for that event only.
    let fat = json!({"event_type": "fat", "payload": {"p": "x".repeat(200 * 1024)},
                     "metadata": {"m": "m".repeat(330 * 1024)}});
    let (status, v) = post_batch(&app, &key, &[fat, ev(1)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [413, 201]);
    assert_eq!(error_fields(&results(&v)[0]), ["body"]);
    assert_eq!(results(&v)[0]["code"], "PAYLOAD_TOO_LARGE");

    // Over 1 MiB: 413 before parsing (whitespace is not parsed at all),
    // declared, chunked, or with a Content-Length that says less.
    let limit = test_settings().max_batch_body_bytes;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |body: reqwest::Body| {
        client
            .post(app.url("/events/batch"))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body)
    };
    let p = problem(
        post(vec![b' '; limit + 1].into()).send().await.unwrap(),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("1048576"), "{p}");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..17).map(|_| Ok(vec![b' '; 64 * 1024])).collect();
    problem(
        post(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap(),
        413,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    // Exactly at the limit is read (and here refused as empty JSON, 400).
    problem(
        post(vec![b' '; limit].into()).send().await.unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(app.walk_inbox(&key, 200, None).await.len(), 4);
}

pub async fn nesting_is_judged_per_event(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    // The event object is level 1, as the body of a POST /events: a
    // payload may nest 127 levels (128 in all), and one more is refused —
    // for that event only.
    let nested = |levels: usize| {
        format!(
            r#"{{"event_type":"deep","payload":{}{}}}"#,
            "{\"a\":".repeat(levels - 1) + "{}",
            "}".repeat(levels - 1)
        )
    };
    let body = format!(
        r#"{{"events":[{},{},{}]}}"#,
        nested(127),
        nested(128),
        ev(1)
    );
    let resp = app
        .post_raw("/events/batch", &key, body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = crate::support::parse_deep(&resp.text().await.unwrap());
    assert_eq!(statuses(&v), [201, 400, 201]);
    assert_eq!(error_fields(&results(&v)[1]), ["body"]);
    // A whole body nested far deeper is refused per event too, never by a
    // stack overflow.
    let deep = format!(
        r#"{{"events":[{}{},{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000),
        ev(2)
    );
    let resp = app
        .post_raw("/events/batch", &key, deep)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(statuses(&v), [400, 201]);
}

pub async fn a_viewer_gets_403_on_batch_before_the_body_or_key_is_read(b: Backend) {
    let app = TestApp::start(b).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let post = |body: reqwest::Body| {
        client
            .post(app.url("/events/batch"))
            .bearer_auth(&viewer)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases = [
        client
            .post(app.url("/events/batch"))
            .bearer_auth(&viewer)
            .header("content-type", "text/plain")
            .body("x"),
        post("{not json".into()),
        post(r#"{"events":[]}"#.into()),
        post(vec![b' '; 2 * 1024 * 1024].into()),
        post(json!({"events": [ev(1)]}).to_string().into()).header("idempotency-key", ""),
    ];
    for req in cases {
        let p = problem(req.send().await.unwrap(), 403, "FORBIDDEN").await;
        assert!(p["detail"].as_str().unwrap().contains("role"), "{p}");
    }
    assert!(app.walk_inbox(&viewer, 50, None).await.is_empty());
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

pub async fn concurrent_identical_batches_create_each_event_once(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let events: Vec<Value> = (0..40).map(ev).collect();
    let sends = (0..6).map(|_| post_batch(&app, &key, &events));
    let answers = futures::future::join_all(sends).await;
    let mut created = 0;
    for (status, v) in &answers {
        assert_eq!(*status, 200, "{v}");
        created += statuses(v).iter().filter(|s| **s == 201).count();
    }
    assert_eq!(created, 40);
    // Every answer names the same event for each item.
    for (_, v) in &answers[1..] {
        for (a, b) in results(v).iter().zip(results(&answers[0].1)) {
            assert_eq!(a["event_id"], b["event_id"]);
        }
    }
    assert_eq!(app.walk_inbox(&key, 200, None).await.len(), 40);
}

pub async fn a_batch_wakes_a_long_poll_and_its_events_are_leasable(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let lease = app
        .post_json(
            "/inbox/lease",
            &key,
            &json!({"limit": 100, "wait_seconds": 5}),
        )
        .send();
    let poll = tokio::spawn(async move {
        let resp = lease.await.unwrap();
        resp.json::<Value>().await.unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, v) = post_batch(&app, &key, &[ev(1), ev(2)]).await;
    assert_eq!(statuses(&v), [201, 201]);
    let leased = tokio::time::timeout(std::time::Duration::from_secs(3), poll)
        .await
        .expect("the long poll answers at once")
        .unwrap();
    let ids: Vec<&Value> = leased["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    assert!(!ids.is_empty(), "{leased}");
    assert_eq!(*ids[0], results(&v)[0]["event_id"]);
}

/// Store-independent: the OpenAPI document states the batch route, its
/// constraints and the Idempotency-Key header (schemathesis checks the
/// server against them).
pub async fn the_openapi_document_states_the_batch_route_and_the_idempotency_key(b: Backend) {
    let app = TestApp::start(b).await;
    let v: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch = &v["paths"]["/events/batch"]["post"];
    for status in ["200", "400", "409", "413", "503"] {
        assert!(batch["responses"][status].is_object(), "{status}");
    }
    let req = &v["components"]["schemas"]["BatchEventsRequest"];
    assert_eq!(req["additionalProperties"], false);
    assert_eq!(req["required"], json!(["events"]));
    let events = &req["properties"]["events"];
    assert_eq!(
        (&events["minItems"], &events["maxItems"]),
        (&json!(1), &json!(100))
    );
    for path in ["/events", "/events/batch"] {
        let op = &v["paths"][path]["post"];
        let header = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "Idempotency-Key")
            .unwrap_or_else(|| panic!("{path}: no Idempotency-Key"));
        assert_eq!(header["in"], "header");
        assert_eq!(header["required"], false);
        assert_eq!(header["schema"]["maxLength"], 255);
        assert!(op["responses"]["409"].is_object(), "{path}");
        assert!(
            op["responses"]["200"]["headers"]["Idempotent-Replayed"].is_object(),
            "{path}"
        );
    }
}
