//! POST /events/batch (docs/api.md, "POST /events/batch"): each event
//! validated and deduplicated as a POST /events would be and answered in
//! its own result, the envelope all or nothing, the byte limit on what is
//! read. The limits checked are the defaults (1 MiB a batch body, 100
//! events, 512 KiB an event, 256 KiB a payload), as the transport cases
//! check the defaults of a POST /events.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::transport::post_oversize;
use crate::{error_fields, parse_deep, problem, Ctx, Endpoint};

/// The default `--max-batch-body-bytes`.
const BATCH_BODY_LIMIT: usize = 1024 * 1024;

/// POSTs `{"events": events}`; the status and the body.
async fn post_batch(cx: &Ctx, key: &str, events: &[Value]) -> (u16, Value) {
    let resp = cx
        .post_json("/events/batch", key, &json!({ "events": events }))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, parse_deep(&resp.text().await.unwrap()))
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("results: {v}"))
}

fn statuses(v: &Value) -> Vec<u64> {
    results(v)
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect()
}

/// An event of type `t` with payload `{"n": n}`.
fn ev(t: &str, n: usize) -> Value {
    json!({"event_type": t, "payload": {"n": n}})
}

pub async fn a_batch_answers_every_event_in_request_order(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("item");
    let earlier = cx
        .create_event(key, &json!({"event_type": t, "payload": {"a": 1}}))
        .await;
    let events = [
        ev(&t, 1),
        json!({"event_type": t}),
        // Key order does not make a payload different: a duplicate.
        json!({"payload": {"a": 1}, "event_type": t, "metadata": {"m": 1}}),
        json!({"event_type": t, "payload": {}, "colour": "red"}),
        json!({"event_type": t, "payload": {"big": "p".repeat(257 * 1024)}}),
        json!("not an event"),
        json!({"event_type": "", "payload": [], "source": 7}),
        ev(&t, 2),
    ];
    let (status, v) = post_batch(cx, key, &events).await;
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
        cx.walk_inbox(key, 50, Some(&t)).await,
        [earlier, first.clone(), last]
    );
    let e = cx.event(key, &first).await;
    assert_eq!(e["payload"], json!({"n": 1}));
    assert_eq!(e["timestamp"], r[0]["timestamp"]);
}

pub async fn a_repeat_inside_one_batch_is_a_duplicate_of_its_first(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let a = json!({"event_type": t, "payload": {"a": 1, "b": 2}, "source": "s"});
    let a_again =
        json!({"event_type": t, "payload": {"b": 2, "a": 1}, "source": "s", "metadata": {"x": 1}});
    let other_source = json!({"event_type": t, "payload": {"a": 1, "b": 2}});
    let (status, v) = post_batch(cx, key, &[a.clone(), a_again, other_source, a.clone()]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [201, 200, 201, 200]);
    let r = results(&v);
    assert_eq!(r[1]["event_id"], r[0]["event_id"]);
    assert_eq!(r[3]["event_id"], r[0]["event_id"]);
    assert_eq!(r[1]["timestamp"], r[0]["timestamp"]);
    assert_eq!(r[1]["duplicate"], true);
    assert_ne!(r[2]["event_id"], r[0]["event_id"]);
    assert_eq!(cx.walk_inbox(key, 50, Some(&t)).await.len(), 2);
    // The same batch again: every event a duplicate of the first time's.
    let (_, again) = post_batch(cx, key, &[a]).await;
    assert_eq!(statuses(&again), [200]);
    assert_eq!(results(&again)[0]["event_id"], r[0]["event_id"]);
}

pub async fn a_malformed_envelope_is_400_for_the_whole_batch(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("item");
    let ev = |n: usize| ev(&t, n);
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
            format!(
                r#"{{"events":[{},{{"event_type":"{t}","payload":{{]}}"#,
                ev(1)
            ),
            &["body"],
        ),
    ];
    for (body, fields) in cases {
        let resp = cx
            .post_raw("/events/batch", key, body.clone())
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
    // None of it wrote an event.
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
}

/// Its own case: some gateways (the `cargo lambda` emulator among them)
/// answer a body that is not UTF-8 themselves, before the service sees it.
pub async fn invalid_utf8_anywhere_in_a_batch_is_a_400_for_the_body(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("item");
    let ev = |n: usize| ev(&t, n);
    // Invalid UTF-8 inside an item makes the whole body malformed.
    let mut bytes = format!(
        r#"{{"events":[{},{{"event_type":"{t}","payload":{{"s":"#,
        ev(1)
    )
    .into_bytes();
    bytes.extend_from_slice(b"\"\xff\"}}]}");
    let p = problem(
        cx.post_raw("/events/batch", key, bytes)
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(error_fields(&p), ["body"]);
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
}

pub async fn a_batch_of_100_events_is_accepted_and_101_is_400(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("item");
    let events: Vec<Value> = (0..100).map(|n| ev(&t, n)).collect();
    let (status, v) = post_batch(cx, key, &events).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), vec![201; 100]);
    let ids: Vec<String> = results(&v)
        .iter()
        .map(|r| r["event_id"].as_str().unwrap().to_owned())
        .collect();
    // Written in request order, each once.
    assert_eq!(cx.walk_inbox(key, 37, Some(&t)).await, ids);
    let events: Vec<Value> = (100..201).map(|n| ev(&t, n)).collect();
    let (status, v) = post_batch(cx, key, &events).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(error_fields(&v), ["events"]);
    assert_eq!(cx.walk_inbox(key, 200, Some(&t)).await.len(), 100);
}

pub async fn the_batch_byte_limit_holds_on_the_bytes_read_and_events_keep_theirs(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("big");
    // Over 512 KiB (a POST /events body) but within 1 MiB: accepted.
    let big = |n: usize| json!({"event_type": t, "payload": {"n": n, "p": "x".repeat(250 * 1024)}});
    let (status, v) = post_batch(cx, key, &[big(1), big(2), big(3)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [201, 201, 201]);
    // One event over 512 KiB (payload within 256 KiB, metadata not): 413
    // for that event only.
    let fat = json!({"event_type": t, "payload": {"p": "x".repeat(200 * 1024)},
                     "metadata": {"m": "m".repeat(330 * 1024)}});
    let (status, v) = post_batch(cx, key, &[fat, ev(&t, 1)]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(statuses(&v), [413, 201]);
    assert_eq!(error_fields(&results(&v)[0]), ["body"]);
    assert_eq!(results(&v)[0]["code"], "PAYLOAD_TOO_LARGE");

    // Over 1 MiB: 413 before parsing (whitespace is not parsed at all),
    // declared, chunked, or with a Content-Length that says less. Each on
    // a connection of its own: the server may answer before reading it.
    let post = |body: reqwest::Body| post_oversize(cx, "/events/batch", key, body);
    let p = problem(
        post(vec![b' '; BATCH_BODY_LIMIT + 1].into())
            .send()
            .await
            .unwrap(),
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
        post(vec![b' '; BATCH_BODY_LIMIT].into())
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(cx.walk_inbox(key, 200, Some(&t)).await.len(), 4);
}

pub async fn nesting_is_judged_per_event(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("deep");
    // The event object is level 1, as the body of a POST /events: a
    // payload may nest 127 levels (128 in all), and one more is refused —
    // for that event only.
    let nested = |levels: usize| {
        format!(
            r#"{{"event_type":"{t}","payload":{}{}}}"#,
            "{\"a\":".repeat(levels - 1) + "{}",
            "}".repeat(levels - 1)
        )
    };
    let body = format!(
        r#"{{"events":[{},{},{}]}}"#,
        nested(127),
        nested(128),
        ev(&t, 1)
    );
    let resp = cx
        .post_raw("/events/batch", key, body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = parse_deep(&resp.text().await.unwrap());
    assert_eq!(statuses(&v), [201, 400, 201]);
    assert_eq!(error_fields(&results(&v)[1]), ["body"]);
    // A whole body nested far deeper is refused per event too, never by a
    // stack overflow.
    let deep = format!(
        r#"{{"events":[{}{},{}]}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000),
        ev(&t, 2)
    );
    let resp = cx
        .post_raw("/events/batch", key, deep)
        .send()
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(statuses(&v), [400, 201]);
}

pub async fn a_viewer_gets_403_on_batch_before_the_body_or_key_is_read(cx: &Ctx) {
    let viewer = &cx.viewer;
    let t = cx.ty("item");
    // Each on a connection of its own: the server answers before reading
    // the body, and then closes the connection.
    let post = |body: reqwest::Body| post_oversize(cx, "/events/batch", viewer, body);
    let cases = [
        cx.unpooled
            .post(cx.url("/events/batch"))
            .bearer_auth(viewer)
            .header("content-type", "text/plain")
            .body("x"),
        post("{not json".into()),
        post(r#"{"events":[]}"#.into()),
        post(vec![b' '; 2 * 1024 * 1024].into()),
        post(json!({"events": [ev(&t, 1)]}).to_string().into()).header("idempotency-key", ""),
    ];
    for req in cases {
        let p = problem(req.send().await.unwrap(), 403, "FORBIDDEN").await;
        assert!(p["detail"].as_str().unwrap().contains("role"), "{p}");
    }
    assert!(cx.walk_inbox(viewer, 50, Some(&t)).await.is_empty());
}

pub async fn concurrent_identical_batches_create_each_event_once(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("race");
    let events: Vec<Value> = (0..40).map(|n| ev(&t, n)).collect();
    let sends = (0..6).map(|_| post_batch(cx, key, &events));
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
    assert_eq!(cx.walk_inbox(key, 200, Some(&t)).await.len(), 40);
}

/// The long poll is answered within about a second of the batch, whichever
/// instance takes it (as `leases::a_long_poll_wakes_up_when_an_event_is_ingested`).
pub async fn a_batch_wakes_a_long_poll_and_its_events_are_leasable(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("w");
    let lease = cx.post_json(
        "/inbox/lease",
        key,
        &json!({"limit": 100, "wait_seconds": 5, "event_type": t}),
    );
    let started = Instant::now();
    let poll = tokio::spawn(async move {
        let resp = lease.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        (resp.json::<Value>().await.unwrap(), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = post_batch(cx, key, &[ev(&t, 1), ev(&t, 2)]).await;
    assert_eq!(statuses(&v), [201, 201]);
    let posted = started.elapsed();
    let (leased, took) = poll.await.unwrap();
    assert!(
        took < posted + Duration::from_millis(1_800),
        "answered {took:?}, the batch answered at {posted:?}"
    );
    let ids: Vec<&Value> = leased["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event_id"])
        .collect();
    assert!(!ids.is_empty(), "{leased}");
    assert_eq!(*ids[0], results(&v)[0]["event_id"]);
}

/// The OpenAPI document states the batch route, its constraints and the
/// Idempotency-Key header (schemathesis checks the server against them).
pub async fn the_openapi_document_states_the_batch_route_and_the_idempotency_key(cx: &Ctx) {
    let v: Value = cx
        .client
        .get(cx.url("/openapi.json"))
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
