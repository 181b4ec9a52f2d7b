use serde_json::{json, Value};

use crate::{error_fields, parse_deep, problem, Ctx, Endpoint};

pub async fn an_unknown_route_is_a_404_problem(cx: &Ctx) {
    let resp = cx.client.get(cx.url("/nope")).send().await.unwrap();
    problem(resp, 404, "NOT_FOUND").await;
}

pub async fn a_wrong_method_is_a_405_problem_with_an_allow_header(cx: &Ctx) {
    let key = &cx.creator;
    for (method, path) in [
        (reqwest::Method::PUT, "/events"),
        (reqwest::Method::POST, "/status"),
        (
            reqwest::Method::PATCH,
            "/events/0190f0e0-0000-7000-8000-000000000000",
        ),
    ] {
        let resp = cx
            .client
            .request(method.clone(), cx.url(path))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers().contains_key("allow"),
            "{method} {path}: no Allow header"
        );
        problem(resp, 405, "METHOD_NOT_ALLOWED").await;
    }
    // The method is wrong whoever asks: 405 before authentication.
    let resp = cx.client.put(cx.url("/events")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    problem(resp, 405, "METHOD_NOT_ALLOWED").await;
}

pub async fn a_sane_request_id_is_echoed_and_an_insane_one_replaced(cx: &Ctx) {
    let resp = cx
        .client
        .get(cx.url("/nope"))
        .header("x-request-id", "client-chosen id 42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-chosen id 42");
    let p = problem(resp, 404, "NOT_FOUND").await;
    assert_eq!(p["correlation_id"], "client-chosen id 42");

    let long = "x".repeat(129);
    let resp = cx
        .client
        .get(cx.url("/status"))
        .header("x-request-id", &long)
        .send()
        .await
        .unwrap();
    let got = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(got, long);
    assert!(uuid::Uuid::parse_str(&got).is_ok(), "generated id {got}");

    let resp = cx.client.get(cx.url("/status")).send().await.unwrap();
    assert!(resp.headers().contains_key("x-request-id"));
}

pub async fn a_body_that_is_not_json_content_type_is_415(cx: &Ctx) {
    let key = &cx.creator;
    let body = json!({"event_type": cx.ty("a"), "payload": {}}).to_string();
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut req = cx
            .client
            .post(cx.url("/events"))
            .bearer_auth(key)
            .body(body.clone());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        problem(req.send().await.unwrap(), 415, "UNSUPPORTED_MEDIA_TYPE").await;
    }
    let ok = cx
        .client
        .post(cx.url("/events"))
        .bearer_auth(key)
        .header("content-type", "application/json; charset=utf-8")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
}

pub async fn malformed_json_is_a_400_validation_error(cx: &Ctx) {
    for body in [
        "{",
        "",
        "nul",
        r#"{"event_type":"a","payload":{}} trailing"#,
        "[1,2]",
        "\"str\"",
    ] {
        let resp = cx
            .post_raw("/events", &cx.creator, body)
            .send()
            .await
            .unwrap();
        let p = problem(resp, 400, "VALIDATION_ERROR").await;
        assert_eq!(error_fields(&p), ["body"], "{body:?}: {p}");
    }
}

pub async fn invalid_utf8_is_a_400_validation_error(cx: &Ctx) {
    let mut body = br#"{"event_type":"a","payload":{"s":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}}"#);
    let resp = cx
        .post_raw("/events", &cx.creator, body)
        .send()
        .await
        .unwrap();
    problem(resp, 400, "VALIDATION_ERROR").await;
}

/// POST `body` as JSON on a connection of its own (the server may answer
/// before reading it, and then closes the connection).
pub(crate) fn post_oversize(
    cx: &Ctx,
    path: &str,
    key: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::RequestBuilder {
    cx.unpooled
        .post(cx.url(path))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(body)
}

fn big_body(event_type: &str, bytes: usize) -> Vec<u8> {
    let filler = "a".repeat(bytes);
    serde_json::to_vec(&json!({"event_type": event_type, "payload": {"f": filler}})).unwrap()
}

pub async fn a_body_over_512_kib_is_413_before_parsing(cx: &Ctx) {
    // Not even JSON: refused for its size, not its syntax.
    let body = vec![b'{'; 512 * 1024 + 1];
    let resp = post_oversize(cx, "/events", &cx.creator, body)
        .send()
        .await
        .unwrap();
    problem(resp, 413, "PAYLOAD_TOO_LARGE").await;
}

pub async fn a_chunked_body_over_the_limit_is_413(cx: &Ctx) {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..80).map(|_| Ok(vec![b' '; 8 * 1024])).collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let resp = post_oversize(cx, "/events", &cx.creator, body)
        .send()
        .await
        .unwrap();
    problem(resp, 413, "PAYLOAD_TOO_LARGE").await;
}

/// Writes `head` + `body` on a new connection and reads what comes back
/// within `wait` (`None` when this target is not plain http).
async fn raw_exchange(
    cx: &Ctx,
    head: &str,
    body: &str,
    read_all: bool,
    wait: std::time::Duration,
) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some((addr, prefix)) = cx.raw_http() else {
        cx.cannot_run("writes HTTP/1.1 by hand on a TCP connection: needs an http:// base URL");
        return None;
    };
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = head
        .replace("{prefix}", &prefix)
        .replace("{host}", &addr)
        .replace("{key}", &cx.creator);
    s.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    if read_all {
        let mut out = String::new();
        let _ = tokio::time::timeout(wait, s.read_to_string(&mut out)).await;
        Some(out)
    } else {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(wait, s.read(&mut buf))
            .await
            .expect("answered without the body")
            .unwrap();
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

pub async fn a_content_length_shorter_than_the_body_reads_only_what_it_declares(cx: &Ctx) {
    // Claims 10 bytes, sends a valid small body: the server reads exactly
    // 10 bytes and the rest is not a body it ever parses as this request.
    let body = json!({"event_type": cx.ty("a"), "payload": {}}).to_string();
    let head = "POST {prefix}/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\
                Content-Type: application/json\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
    let Some(out) = raw_exchange(cx, head, &body, true, std::time::Duration::from_secs(10)).await
    else {
        return;
    };
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("application/problem+json"), "{out}");
}

pub async fn a_declared_length_over_the_limit_is_413_before_any_body_is_read(cx: &Ctx) {
    // Declares 600 KiB and sends none of it: the answer cannot wait for it.
    let head = format!(
        "POST {{prefix}}/events HTTP/1.1\r\nHost: {{host}}\r\nAuthorization: Bearer {{key}}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        600 * 1024
    );
    let Some(out) = raw_exchange(cx, &head, "", false, std::time::Duration::from_secs(5)).await
    else {
        return;
    };
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("application/problem+json"), "{out}");
}

pub async fn a_payload_over_256_kib_is_413(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("big");
    let resp = post_oversize(cx, "/events", key, big_body(&t, 256 * 1024))
        .send()
        .await
        .unwrap();
    problem(resp, 413, "PAYLOAD_TOO_LARGE").await;
    // Just under the limit is fine: {"f":"…"} adds 8 bytes.
    let resp = cx
        .post_raw("/events", key, big_body(&t, 256 * 1024 - 8))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

/// A request body nested `depth` levels deep in all (the body object is
/// level 1, the payload level 2, …).
fn nested(event_type: &str, depth: usize) -> String {
    format!(
        r#"{{"event_type":"{event_type}","payload":{}{}}}"#,
        "{\"a\":".repeat(depth - 2) + "{",
        "}".repeat(depth - 1)
    )
}

pub async fn request_nesting_of_128_is_accepted_and_129_is_400(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("deep");
    let resp = cx
        .post_raw("/events", key, nested(&t, 128))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = resp.json::<Value>().await.unwrap()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let text = cx
        .get(&format!("/events/{id}"), key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ev = parse_deep(&text);
    let mut depth = 0;
    let mut cur = &ev["payload"];
    while cur.is_object() {
        depth += 1;
        cur = &cur["a"];
    }
    assert_eq!(depth, 127);

    let resp = cx
        .post_raw("/events", key, nested(&t, 129))
        .send()
        .await
        .unwrap();
    let p = problem(resp, 400, "VALIDATION_ERROR").await;
    assert!(p["errors"][0]["message"].as_str().unwrap().contains("128"));
    // Far deeper input is refused the same way, without exhausting anything.
    let resp = cx
        .post_raw("/events", key, nested(&t, 50_000))
        .send()
        .await
        .unwrap();
    problem(resp, 400, "VALIDATION_ERROR").await;
}

pub async fn unknown_fields_are_400_and_listed(cx: &Ctx) {
    let body = json!({"event_type": "a", "payload": {}, "extra": 1, "delivered": true});
    let p = problem(
        cx.post_json("/events", &cx.creator, &body)
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let mut fields = error_fields(&p);
    fields.sort();
    assert_eq!(fields, ["delivered", "extra"]);
}

pub async fn missing_and_mistyped_fields_are_all_listed(cx: &Ctx) {
    let key = &cx.creator;
    let p = problem(
        cx.post_json("/events", key, &json!({}))
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let mut fields = error_fields(&p);
    fields.sort();
    assert_eq!(fields, ["event_type", "payload"]);

    let body = json!({"event_type": 5, "payload": "x", "source": 1, "metadata": []});
    let p = problem(
        cx.post_json("/events", key, &body).send().await.unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    let mut fields = error_fields(&p);
    fields.sort();
    assert_eq!(fields, ["event_type", "metadata", "payload", "source"]);
}

pub async fn event_type_must_be_1_to_255_characters_without_control_characters(cx: &Ctx) {
    let key = &cx.creator;
    for bad in [
        String::new(),
        "x".repeat(256),
        "a\nb".into(),
        "tab\there".into(),
    ] {
        let body = json!({"event_type": bad, "payload": {}});
        let p = problem(
            cx.post_json("/events", key, &body).send().await.unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(error_fields(&p), ["event_type"]);
    }
    // Characters, not bytes: 255 of them, many of two bytes each.
    for good in [
        cx.ty_of_length("x", 'x', 255),
        cx.ty_of_length("u", 'ü', 255),
        cx.ty("order.created v2"),
    ] {
        let body = json!({"event_type": good, "payload": {}});
        assert_eq!(cx.post_event_status(key, &body).await, 201, "{good}");
    }
}

pub async fn source_must_be_at_most_255_characters(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("a");
    let body = json!({"event_type": t, "payload": {}, "source": "s".repeat(256)});
    let p = problem(
        cx.post_json("/events", key, &body).send().await.unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(error_fields(&p), ["source"]);
    let body = json!({"event_type": t, "payload": {}, "source": "s".repeat(255)});
    assert_eq!(cx.post_event_status(key, &body).await, 201);
}

pub async fn payload_and_metadata_must_be_objects(cx: &Ctx) {
    for (payload, metadata, field) in [
        (json!([1]), json!({}), "payload"),
        (json!(null), json!({}), "payload"),
        (json!({}), json!("m"), "metadata"),
        (json!({}), json!(3), "metadata"),
    ] {
        let body = json!({"event_type": "a", "payload": payload, "metadata": metadata});
        let p = problem(
            cx.post_json("/events", &cx.creator, &body)
                .send()
                .await
                .unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        assert_eq!(error_fields(&p), [field]);
    }
}
