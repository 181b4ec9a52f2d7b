use serde_json::json;
use triggers_api::auth::admin as keys;
use triggers_api::domain::{KeyStatus, Role};
use triggers_api::store::KeyChange;

use crate::support::{problem, Backend, TestApp};

fn key_id(token: &str) -> &str {
    &token[4..20]
}

pub async fn a_request_without_a_key_is_401(b: Backend) {
    let app = TestApp::start(b).await;
    for path in ["/inbox", "/events/0190f0e0-0000-7000-8000-000000000000"] {
        let resp = app.client.get(app.url(path)).send().await.unwrap();
        problem(resp, 401, "UNAUTHORIZED").await;
    }
    let resp = app
        .client
        .get(app.url("/inbox"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    problem(resp, 401, "UNAUTHORIZED").await;
}

pub async fn a_malformed_or_unknown_key_is_401(b: Backend) {
    let app = TestApp::start(b).await;
    let real = app.key("acme", Role::Creator).await;
    let unknown = format!("trg_zzzzzzzzzzzzzzzz{}", &real[20..]);
    for key in [
        "nope",
        "trg_",
        "trg_abc_def",
        unknown.as_str(),
        &real[..real.len() - 1],
    ] {
        let resp = app.get("/inbox", key).send().await.unwrap();
        problem(resp, 401, "UNAUTHORIZED").await;
    }
}

pub async fn a_wrong_secret_for_a_real_key_id_is_401(b: Backend) {
    let app = TestApp::start(b).await;
    let real = app.key("acme", Role::Creator).await;
    let last = real.chars().last().unwrap();
    let wrong = format!(
        "{}{}",
        &real[..real.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    for _ in 0..3 {
        problem(
            app.get("/inbox", &wrong).send().await.unwrap(),
            401,
            "UNAUTHORIZED",
        )
        .await;
    }
    assert_eq!(app.get("/inbox", &real).send().await.unwrap().status(), 200);
}

pub async fn the_x_api_key_header_is_accepted(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key("acme", Role::Viewer).await;
    let resp = app
        .client
        .get(app.url("/inbox"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

pub async fn inactive_and_revoked_keys_are_403(b: Backend) {
    let app = TestApp::start(b).await;
    let store = app.state.store.as_ref();
    let inactive = app.key("acme", Role::Creator).await;
    keys::update(
        store,
        key_id(&inactive),
        KeyChange::Status(KeyStatus::Inactive),
    )
    .await
    .unwrap();
    let revoked = app.key("acme", Role::Creator).await;
    keys::update(
        store,
        key_id(&revoked),
        KeyChange::Status(KeyStatus::Revoked),
    )
    .await
    .unwrap();
    let p = problem(
        app.get("/inbox", &inactive).send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("inactive"));
    let p = problem(
        app.get("/inbox", &revoked).send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("revoked"));
}

pub async fn a_revoked_key_stops_working_once_the_auth_cache_expires(b: Backend) {
    // The cache lives on the injected clock: exact to the millisecond.
    let app = TestApp::start(b).await;
    let ttl = app.state.settings.auth.cache_ttl;
    let key = app.key("acme", Role::Creator).await;
    assert_eq!(app.get("/inbox", &key).send().await.unwrap().status(), 200);
    keys::update(
        app.state.store.as_ref(),
        key_id(&key),
        KeyChange::Status(KeyStatus::Revoked),
    )
    .await
    .unwrap();
    app.clock
        .advance(chrono::Duration::from_std(ttl).unwrap() - chrono::Duration::milliseconds(1));
    assert_eq!(
        app.get("/inbox", &key).send().await.unwrap().status(),
        200,
        "still served from the cache just before it expires"
    );
    app.clock.advance(chrono::Duration::milliseconds(1));
    problem(
        app.get("/inbox", &key).send().await.unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
}

pub async fn a_viewer_may_read_but_not_ingest_or_acknowledge(b: Backend) {
    let app = TestApp::start(b).await;
    let creator = app.key("acme", Role::Creator).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let id = app
        .create_event(&creator, &json!({"event_type": "v", "payload": {}}))
        .await;
    let body = json!({"event_type": "v2", "payload": {}});
    problem(
        app.post_json("/events", &viewer, &body)
            .send()
            .await
            .unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    problem(
        app.delete(&format!("/events/{id}"), &viewer)
            .send()
            .await
            .unwrap(),
        403,
        "FORBIDDEN",
    )
    .await;
    assert_eq!(
        app.get("/inbox", &viewer).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        app.get(&format!("/events/{id}"), &viewer)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

pub async fn authenticated_responses_carry_ratelimit_headers(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key_with_limit("acme", Role::Creator, 7).await;
    let resp = app.get("/inbox", &key).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["ratelimit-limit"], "7");
    assert_eq!(h["ratelimit-remaining"], "6");
    let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset));
    // Error responses of an authenticated caller carry them too.
    let resp = app.get("/events/not-an-id", &key).send().await.unwrap();
    assert_eq!(resp.headers()["ratelimit-remaining"], "5");
}

pub async fn a_key_over_its_limit_gets_429_with_retry_after_until_the_window_resets(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key_with_limit("acme", Role::Creator, 3).await;
    for _ in 0..3 {
        assert_eq!(app.get("/inbox", &key).send().await.unwrap().status(), 200);
    }
    app.clock.advance(chrono::Duration::seconds(15));
    let resp = app.get("/inbox", &key).send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "45");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    problem(resp, 429, "RATE_LIMITED").await;
    // Another key of the same account has its own budget.
    let other = app.key_with_limit("acme", Role::Creator, 3).await;
    assert_eq!(
        app.get("/inbox", &other).send().await.unwrap().status(),
        200
    );
    app.clock.advance(chrono::Duration::seconds(45));
    assert_eq!(app.get("/inbox", &key).send().await.unwrap().status(), 200);
}
