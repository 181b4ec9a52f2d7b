//! The Idempotency-Key header of POST /events and POST /events/batch
//! (docs/api.md, "Idempotency keys"): the first 2xx kept per (account, key)
//! and replayed byte for byte with `Idempotent-Replayed: true`; a different
//! request with the key, 409; nothing else kept.
//!
//! Every key a case sends is its own and this run's
//! ([`Ctx::idempotency_key`]): a deployment keeps an answer for 24 hours.

use serde_json::Value;

use super::transport::post_oversize;
use crate::{error_fields, problem, Ctx, Endpoint};

const REPLAYED: &str = "idempotent-replayed";

struct Answer {
    status: u16,
    replayed: Option<String>,
    location: Option<String>,
    retry_after: Option<String>,
    body: Vec<u8>,
}

impl Answer {
    async fn of(resp: reqwest::Response) -> Answer {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        Answer {
            status: resp.status().as_u16(),
            replayed: header(REPLAYED),
            location: header("location"),
            retry_after: header("retry-after"),
            body: resp.bytes().await.unwrap().to_vec(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON")
    }
}

/// POSTs `body` to `path` with the `Idempotency-Key` `idem` (none when
/// `None`).
async fn send(cx: &Ctx, path: &str, key: &str, idem: Option<&str>, body: &str) -> Answer {
    let mut req = cx.post_raw(path, key, body.to_owned());
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    Answer::of(req.send().await.unwrap()).await
}

/// A POST /events body of type `t`.
fn event(t: &str) -> String {
    format!(r#"{{"event_type":"{t}","payload":{{"order":42}}}}"#)
}

/// A batch of `n` events of type `t` and one refused event.
fn batch_body(t: &str, n: usize) -> String {
    let events: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"event_type":"{t}","payload":{{"i":{i}}}}}"#))
        .collect();
    format!(r#"{{"events":[{},{{"event_type":""}}]}}"#, events.join(","))
}

pub async fn a_retry_with_the_same_key_and_body_gets_the_first_response_again(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let (k1, k2) = (cx.idempotency_key("k-1"), cx.idempotency_key("k-2"));
    let first = send(cx, "/events", key, Some(&k1), &event(&t)).await;
    assert_eq!(first.status, 201);
    assert_eq!(first.replayed, None);
    let again = send(cx, "/events", key, Some(&k1), &event(&t)).await;
    // Not a 200 duplicate: the first response itself, byte for byte.
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.location, first.location);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    // Even after the event was acknowledged.
    let id = first.json()["event_id"].as_str().unwrap().to_owned();
    assert_eq!(cx.ack(key, &id).await, 204);
    let later = send(cx, "/events", key, Some(&k1), &event(&t)).await;
    assert_eq!((later.status, &later.body), (201, &first.body));
    // Without a key the same body is a plain duplicate.
    let plain = send(cx, "/events", key, None, &event(&t)).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.replayed, None);

    // A batch (with a refused item: still a 200, kept whole).
    let body = batch_body(&t, 3);
    let first = send(cx, "/events/batch", key, Some(&k2), &body).await;
    assert_eq!(first.status, 200);
    let statuses: Vec<u64> = first.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [201, 201, 201, 400]);
    let again = send(cx, "/events/batch", key, Some(&k2), &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body);
    assert_eq!(again.replayed.as_deref(), Some("true"));
    assert_eq!(cx.walk_inbox(key, 50, Some(&t)).await.len(), 3);
}

pub async fn the_same_key_with_another_body_or_route_is_409(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("order.created");
    let k = cx.idempotency_key("k");
    let body = event(&t);
    assert_eq!(send(cx, "/events", key, Some(&k), &body).await.status, 201);
    // Another payload; the same JSON spelled differently (the body must be
    // byte-identical); the other ingest route.
    let others = [
        (
            "/events",
            format!(r#"{{"event_type":"{t}","payload":{{"order":43}}}}"#),
        ),
        (
            "/events",
            format!(r#"{{"payload":{{"order":42}},"event_type":"{t}"}}"#),
        ),
        ("/events", format!("{body} ")),
        ("/events/batch", format!(r#"{{"events":[{body}]}}"#)),
    ];
    for (path, other) in others {
        let a = send(cx, path, key, Some(&k), &other).await;
        assert_eq!(a.status, 409, "{path} {other}");
        assert_eq!(a.retry_after, None, "not retryable");
        let p = a.json();
        assert_eq!(p["code"], "CONFLICT");
        assert!(
            p["detail"].as_str().unwrap().contains("different request"),
            "{p}"
        );
    }
    assert_eq!(cx.walk_inbox(key, 50, Some(&t)).await.len(), 1);
    // The conflict is a problem like any other.
    let resp = cx
        .post_raw(
            "/events",
            key,
            format!(r#"{{"event_type":"{t}","payload":{{}}}}"#),
        )
        .header("idempotency-key", &k)
        .send()
        .await
        .unwrap();
    problem(resp, 409, "CONFLICT").await;
}

pub async fn equal_keys_of_different_accounts_never_meet(cx: &Ctx) {
    let (acme, other) = (&cx.creator, &cx.other_account);
    let t = cx.ty("t");
    let body = event(&t);
    let shared = cx.idempotency_key("shared");
    let a = send(cx, "/events", acme, Some(&shared), &body).await;
    let g = send(cx, "/events", other, Some(&shared), &body).await;
    assert_eq!((a.status, g.status), (201, 201));
    assert_eq!(g.replayed, None);
    assert_ne!(a.json()["event_id"], g.json()["event_id"]);
    let another = format!(r#"{{"event_type":"{t}","payload":{{}}}}"#);
    let only = cx.idempotency_key("acme-only");
    let g2 = send(cx, "/events", other, Some(&only), &another).await;
    let a2 = send(cx, "/events", acme, Some(&only), &body).await;
    assert_eq!((g2.status, a2.status), (201, 200));
    assert_eq!(a2.replayed, None);
}

/// Its own case: API Gateway and the `cargo lambda` emulator join repeated
/// headers with commas, so behind them the service sees one key.
pub async fn a_repeated_idempotency_key_header_is_400_naming_it(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let body = event(&t);
    for path in ["/events", "/events/batch"] {
        let resp = cx
            .post_raw(path, key, body.clone())
            .header("idempotency-key", cx.idempotency_key("a"))
            .header("idempotency-key", cx.idempotency_key("b"))
            .send()
            .await
            .unwrap();
        let p = problem(resp, 400, "VALIDATION_ERROR").await;
        assert_eq!(error_fields(&p), ["Idempotency-Key"]);
    }
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
}

pub async fn an_invalid_idempotency_key_is_400_naming_the_header(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    let body = event(&t);
    let long = "k".repeat(256);
    let bad: Vec<reqwest::header::HeaderValue> = vec![
        reqwest::header::HeaderValue::from_static(""),
        reqwest::header::HeaderValue::from_str(&long).unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        reqwest::header::HeaderValue::from_bytes(b"a\tb").unwrap(),
    ];
    for path in ["/events", "/events/batch"] {
        for v in &bad {
            // Checked before the body is read: a malformed body does not
            // change the answer.
            let resp = cx
                .post_raw(path, key, "{not json")
                .header("idempotency-key", v.clone())
                .send()
                .await
                .unwrap();
            let p = problem(resp, 400, "VALIDATION_ERROR").await;
            assert_eq!(error_fields(&p), ["Idempotency-Key"], "{v:?}: {p}");
        }
    }
    assert!(cx.walk_inbox(key, 50, Some(&t)).await.is_empty());
    // The longest and the oddest valid keys work.
    let mut longest = cx.idempotency_key("");
    longest.extend(std::iter::repeat_n('~', 255 - longest.len()));
    assert_eq!(
        send(cx, "/events", key, Some(&longest), &body).await.status,
        201
    );
    let odd = cx.idempotency_key(r#"a b"c\d{}#"#);
    let other = format!(r#"{{"event_type":"{t}","payload":{{"odd":1}}}}"#);
    assert_eq!(
        send(cx, "/events", key, Some(&odd), &other).await.status,
        201
    );
    assert_eq!(
        send(cx, "/events", key, Some(&odd), &other)
            .await
            .replayed
            .as_deref(),
        Some("true")
    );
}

/// A 400 or a 413 leaves the key free (a 503 too: the in-process
/// `idempotency::a_503_answer_is_not_kept`, which needs a store that fails).
pub async fn answers_other_than_2xx_are_not_kept(cx: &Ctx) {
    let key = &cx.creator;
    let t = cx.ty("t");
    // A 400 (the body is invalid) leaves the key free ...
    let k4 = cx.idempotency_key("k4");
    let invalid = format!(r#"{{"event_type":"{t}"}}"#);
    assert_eq!(
        send(cx, "/events", key, Some(&k4), &invalid).await.status,
        400
    );
    assert_eq!(
        send(cx, "/events", key, Some(&k4), &event(&t)).await.status,
        201
    );
    // ... and so does a 413.
    let k413 = cx.idempotency_key("k413");
    let big = format!(
        r#"{{"event_type":"{t}","payload":{{"p":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let resp = post_oversize(cx, "/events", key, big)
        .header("idempotency-key", &k413)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let small = format!(r#"{{"event_type":"{t}","payload":{{"p":"x"}}}}"#);
    assert_eq!(
        send(cx, "/events", key, Some(&k413), &small).await.status,
        201
    );
}
