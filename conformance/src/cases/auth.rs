use serde_json::json;

use crate::{problem, Ctx, Endpoint};

pub async fn a_request_without_a_key_is_401(cx: &Ctx) {
    for path in ["/inbox", "/events/0190f0e0-0000-7000-8000-000000000000"] {
        let resp = cx.client.get(cx.url(path)).send().await.unwrap();
        problem(resp, 401, "UNAUTHORIZED").await;
    }
    let resp = cx
        .client
        .get(cx.url("/inbox"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    problem(resp, 401, "UNAUTHORIZED").await;
}

pub async fn a_malformed_or_unknown_key_is_401(cx: &Ctx) {
    let real = &cx.creator;
    let unknown = format!("trg_zzzzzzzzzzzzzzzz{}", &real[20..]);
    for key in [
        "nope",
        "trg_",
        "trg_abc_def",
        unknown.as_str(),
        &real[..real.len() - 1],
    ] {
        let resp = cx.get("/inbox", key).send().await.unwrap();
        problem(resp, 401, "UNAUTHORIZED").await;
    }
}

pub async fn a_wrong_secret_for_a_real_key_id_is_401(cx: &Ctx) {
    let real = &cx.creator;
    let last = real.chars().last().unwrap();
    let wrong = format!(
        "{}{}",
        &real[..real.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    for _ in 0..3 {
        problem(
            cx.get("/inbox", &wrong).send().await.unwrap(),
            401,
            "UNAUTHORIZED",
        )
        .await;
    }
    assert_eq!(cx.get("/inbox", real).send().await.unwrap().status(), 200);
}

pub async fn the_x_api_key_header_is_accepted(cx: &Ctx) {
    let resp = cx
        .client
        .get(cx.url("/inbox"))
        .header("x-api-key", &cx.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

pub async fn a_revoked_key_is_403(cx: &Ctx) {
    let p = problem(
        cx.get("/inbox", &cx.revoked).send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("revoked"), "{p}");
    let body = json!({"event_type": cx.ty("r"), "payload": {}});
    problem(
        cx.post_json("/events", &cx.revoked, &body)
            .send()
            .await
            .unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    let resp = cx
        .client
        .get(cx.url("/inbox"))
        .header("x-api-key", &cx.revoked)
        .send()
        .await
        .unwrap();
    problem(resp, 403, "FORBIDDEN").await;
}

pub async fn a_viewer_may_read_but_not_ingest_or_acknowledge(cx: &Ctx) {
    let (creator, viewer) = (&cx.creator, &cx.viewer);
    let id = cx
        .create_event(creator, &json!({"event_type": cx.ty("v"), "payload": {}}))
        .await;
    let body = json!({"event_type": cx.ty("v2"), "payload": {}});
    problem(
        cx.post_json("/events", viewer, &body).send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    problem(
        cx.delete(&format!("/events/{id}"), viewer)
            .send()
            .await
            .unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    assert_eq!(cx.get("/inbox", viewer).send().await.unwrap().status(), 200);
    assert_eq!(
        cx.get(&format!("/events/{id}"), viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(cx.event(viewer, &id).await["delivered"], false);
}

fn header(resp: &reqwest::Response, name: &str) -> u64 {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number"))
}

/// Two requests in a row: the second has one request less left, unless a
/// new window began between them (the count is per instance, so behind a
/// load balancer of several instances this case needs both to reach one).
pub async fn authenticated_responses_carry_ratelimit_headers(cx: &Ctx) {
    let key = &cx.creator;
    let resp = cx.get("/inbox?limit=1", key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let limit = header(&resp, "ratelimit-limit");
    let remaining = header(&resp, "ratelimit-remaining");
    let reset = header(&resp, "ratelimit-reset");
    assert!(remaining < limit, "{remaining} left of {limit}");
    assert!((1..=60).contains(&reset), "reset {reset}");
    // Error responses of an authenticated caller carry them too.
    let resp = cx.get("/events/not-an-id", key).send().await.unwrap();
    let (remaining2, reset2) = (
        header(&resp, "ratelimit-remaining"),
        header(&resp, "ratelimit-reset"),
    );
    assert_eq!(header(&resp, "ratelimit-limit"), limit);
    assert!((1..=60).contains(&reset2), "reset {reset2}");
    if reset2 <= reset {
        assert_eq!(remaining2 + 1, remaining, "the same window");
    } else {
        assert_eq!(remaining2 + 1, limit, "a new window");
    }
    problem(resp, 404, "NOT_FOUND").await;
}
