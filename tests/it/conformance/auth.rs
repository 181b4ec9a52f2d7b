//! Authentication cases that need the store (to make an inactive key, to
//! revoke a cached one) or the server's clock. The black-box ones are in
//! the `triggers-conformance` crate.

use triggers_api::auth::admin as keys;
use triggers_api::domain::{KeyStatus, Role};
use triggers_api::store::KeyChange;

use crate::support::{problem, Backend, TestApp};

fn key_id(token: &str) -> &str {
    &token[4..20]
}

pub async fn an_inactive_key_is_403(b: Backend) {
    let app = TestApp::start(b).await;
    let inactive = app.key("acme", Role::Creator).await;
    keys::update(
        app.state.store.as_ref(),
        key_id(&inactive),
        KeyChange::Status(KeyStatus::Inactive),
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

pub async fn a_key_over_its_limit_gets_429_with_retry_after_until_the_window_resets(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key_with_limit("acme", Role::Creator, 3).await;
    for left in (0..3).rev() {
        let resp = app.get("/inbox", &key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["ratelimit-limit"], "3");
        assert_eq!(h["ratelimit-remaining"], left.to_string().as_str());
        assert_eq!(
            h["ratelimit-reset"], "60",
            "the window began with the first"
        );
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
