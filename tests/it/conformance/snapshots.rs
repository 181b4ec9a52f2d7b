//! Every error body the API can send, snapshotted under `snapshots/`
//! (correlation ids redacted). Both backends must produce the same bodies.

use serde_json::{json, Value};
use triggers_api::auth::admin as keys;
use triggers_api::domain::{KeyStatus, Role};
use triggers_api::store::KeyChange;

use crate::support::{assert_problem_snapshot, Backend, TestApp};

async fn body(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap()
}

pub async fn every_error_body_matches_its_snapshot(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key_with_limit("acme", Role::Creator, 1000).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let store = app.state.store.as_ref();

    let post = |raw: &'static str| app.post_raw("/events", &key, raw).send();
    assert_problem_snapshot(
        "validation_missing_fields",
        body(post("{}").await.unwrap()).await,
    );
    assert_problem_snapshot(
        "validation_unknown_field",
        body(
            post(r#"{"event_type":"a","payload":{},"x":1}"#)
                .await
                .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "validation_malformed_json",
        body(post("{").await.unwrap()).await,
    );
    assert_problem_snapshot(
        "validation_wrong_types",
        body(
            post(r#"{"event_type":"","payload":[],"source":7,"metadata":"m"}"#)
                .await
                .unwrap(),
        )
        .await,
    );
    let deep = format!(
        r#"{{"event_type":"d","payload":{}}}"#,
        "[".repeat(200) + &"]".repeat(200)
    );
    assert_problem_snapshot(
        "validation_nesting",
        body(app.post_raw("/events", &key, deep).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "validation_limit",
        body(app.get("/inbox?limit=0", &key).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "validation_unknown_query_parameter",
        body(app.get("/inbox?page=2", &key).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "invalid_cursor",
        body(app.get("/inbox?cursor=bogus", &key).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "unauthorized_missing_key",
        body(app.client.get(app.url("/inbox")).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "unauthorized_invalid_key",
        body(app.get("/inbox", "trg_nope").send().await.unwrap()).await,
    );

    let inactive = app.key("acme", Role::Creator).await;
    keys::update(
        store,
        &inactive[4..20],
        KeyChange::Status(KeyStatus::Inactive),
    )
    .await
    .unwrap();
    assert_problem_snapshot(
        "forbidden_inactive_key",
        body(app.get("/inbox", &inactive).send().await.unwrap()).await,
    );
    let revoked = app.key("acme", Role::Creator).await;
    keys::update(
        store,
        &revoked[4..20],
        KeyChange::Status(KeyStatus::Revoked),
    )
    .await
    .unwrap();
    assert_problem_snapshot(
        "forbidden_revoked_key",
        body(app.get("/inbox", &revoked).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "forbidden_role",
        body(
            app.post_json(
                "/events",
                &viewer,
                &json!({"event_type": "a", "payload": {}}),
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "not_found_route",
        body(app.client.get(app.url("/nope")).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "not_found_event",
        body(app.get("/events/nope", &key).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "method_not_allowed",
        body(app.client.put(app.url("/status")).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "payload_too_large_body",
        body(
            app.post_raw("/events", &key, vec![b' '; 600 * 1024])
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    let big =
        serde_json::to_vec(&json!({"event_type": "b", "payload": {"f": "a".repeat(300 * 1024)}}))
            .unwrap();
    assert_problem_snapshot(
        "payload_too_large_payload",
        body(app.post_raw("/events", &key, big).send().await.unwrap()).await,
    );
    assert_problem_snapshot(
        "unsupported_media_type",
        body(
            app.client
                .post(app.url("/events"))
                .bearer_auth(&key)
                .body("{}")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    // v2: leases.
    assert_problem_snapshot(
        "validation_lease_body",
        body(
            app.post_raw(
                "/inbox/lease",
                &key,
                r#"{"limit":0,"lease_seconds":3601,"wait_seconds":2.5,"event_type":"","x":1}"#,
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "validation_settle_body",
        body(
            app.post_raw("/inbox/ack", &key, r#"{"event_ids":["nope"]}"#)
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "not_found_lease",
        body(
            app.post_raw(
                "/inbox/release",
                &key,
                r#"{"lease_id":"00000000-0000-4000-8000-000000000000"}"#,
            )
            .send()
            .await
            .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "validation_inbox_state",
        body(app.get("/inbox?state=leased", &key).send().await.unwrap()).await,
    );
    let id = app
        .create_event(&key, &json!({"event_type": "q", "payload": {}}))
        .await;
    assert_problem_snapshot(
        "conflict_not_quarantined",
        body(
            app.client
                .post(app.url(&format!("/events/{id}/requeue")))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    // Batch ingest and idempotency keys (their cases are black-box ones,
    // which cannot compare with the snapshots here).
    assert_problem_snapshot(
        "validation_batch_envelope",
        body(
            app.post_raw("/events/batch", &key, r#"{"events":[],"mode":"all"}"#)
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    let event = r#"{"event_type":"order.created","payload":{"order":42}}"#;
    let resp = app
        .post_raw("/events", &key, event)
        .header("idempotency-key", "k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_problem_snapshot(
        "conflict_idempotency_key_reused",
        body(
            app.post_raw("/events", &key, r#"{"event_type":"x","payload":{}}"#)
                .header("idempotency-key", "k")
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    assert_problem_snapshot(
        "validation_idempotency_key",
        body(
            app.post_raw("/events", &key, event)
                .header("idempotency-key", "k".repeat(256))
                .send()
                .await
                .unwrap(),
        )
        .await,
    );
    let limited = app.key_with_limit("acme", Role::Creator, 1).await;
    app.get("/inbox", &limited).send().await.unwrap();
    assert_problem_snapshot(
        "rate_limited",
        body(app.get("/inbox", &limited).send().await.unwrap()).await,
    );
}
