//! Inbox cases that need special settings. The black-box ones are in the
//! `triggers-conformance` crate.

use serde_json::{json, Value};
use triggers_api::domain::Role;
use triggers_conformance::ids;

use crate::support::{Backend, TestApp};

pub async fn a_page_ends_early_at_its_byte_bound_with_a_cursor_and_at_least_one_event(b: Backend) {
    let settings = triggers_api::config::Settings {
        max_page_bytes: 20 * 1024,
        ..crate::support::test_settings()
    };
    let app = TestApp::start_with(b, settings).await;
    let key = app.key("acme", Role::Creator).await;
    let mut created = Vec::new();
    // Nine events of ~6 KiB (three fit a 20 KiB page), then one of 30 KiB
    // (alone over the bound), then two small ones.
    for i in 0..9 {
        let body = json!({"event_type": "t", "payload": {"i": i, "pad": "x".repeat(6 * 1024)}});
        created.push(app.create_event(&key, &body).await);
    }
    let big = json!({"event_type": "t", "payload": {"pad": "y".repeat(30 * 1024)}});
    created.push(app.create_event(&key, &big).await);
    for i in 0..2 {
        created.push(
            app.create_event(&key, &json!({"event_type": "t", "payload": {"small": i}}))
                .await,
        );
    }
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    let mut query = "?limit=200".to_owned();
    loop {
        let resp = app
            .get(&format!("/inbox{query}"), &key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{query}");
        let p: Value = resp.json().await.unwrap();
        let n = p["events"].as_array().unwrap().len();
        assert!(n >= 1, "every page holds at least one event: {p}");
        let bytes = serde_json::to_string(&p["events"]).unwrap().len();
        if n > 1 {
            assert!(
                bytes <= 20 * 1024 + 1024,
                "a page of {n} events is {bytes} bytes"
            );
        }
        sizes.push(n);
        seen.extend(ids(&p["events"]));
        if !p["pagination"]["has_more"].as_bool().unwrap() {
            break;
        }
        let cursor = p["pagination"]["next_cursor"].as_str().unwrap();
        query = format!("?limit=200&cursor={cursor}");
    }
    assert_eq!(seen, created, "every event once, in order");
    assert_eq!(sizes, vec![3, 3, 3, 1, 2], "pages cut by bytes: {sizes:?}");
}
