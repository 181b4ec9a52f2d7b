use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use triggers_api::domain::Role;

use crate::support::{error_fields, problem, Backend, TestApp};

async fn page(app: &TestApp, key: &str, query: &str) -> Value {
    let resp = app
        .get(&format!("/inbox{query}"), key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{query}");
    resp.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect()
}

pub async fn the_inbox_lists_undelivered_events_oldest_first(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let empty = page(&app, &key, "").await;
    assert_eq!(
        empty,
        json!({"events": [], "pagination": {"next_cursor": null, "has_more": false}})
    );
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(
            app.create_event(&key, &json!({"event_type": "t", "payload": {"i": i}}))
                .await,
        );
    }
    app.delete(&format!("/events/{}", created[1]), &key)
        .send()
        .await
        .unwrap();
    let p = page(&app, &key, "").await;
    let expected: Vec<String> = created
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(ids(&p), expected);
    let first = &p["events"][0];
    assert_eq!(first["payload"], json!({"i": 0}));
    assert_eq!(first["delivered"], false);
    assert_eq!(first["delivered_at"], Value::Null);
}

pub async fn limit_out_of_range_or_not_a_number_is_400(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    for q in [
        "limit=0",
        "limit=201",
        "limit=abc",
        "limit=-5",
        "limit=1e2",
        "limit=",
    ] {
        let resp = app.get(&format!("/inbox?{q}"), &key).send().await.unwrap();
        let p = problem(resp, 400, "VALIDATION_ERROR").await;
        assert_eq!(error_fields(&p), ["limit"], "{q}");
    }
    for q in ["limit=1", "limit=200"] {
        assert_eq!(
            app.get(&format!("/inbox?{q}"), &key)
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

pub async fn unknown_query_parameters_are_400(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let resp = app.get("/inbox?limt=5", &key).send().await.unwrap();
    let p = problem(resp, 400, "VALIDATION_ERROR").await;
    assert_eq!(error_fields(&p), ["limt"]);
}

pub async fn a_malformed_tampered_or_foreign_cursor_is_400_invalid_cursor(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key("acme", Role::Creator).await;
    let other = app.key("other", Role::Creator).await;
    for i in 0..3 {
        app.create_event(&key, &json!({"event_type": "c", "payload": {"i": i}}))
            .await;
        app.create_event(&other, &json!({"event_type": "c", "payload": {"i": i}}))
            .await;
    }
    let p = page(&app, &key, "?limit=1").await;
    let cursor = p["pagination"]["next_cursor"].as_str().unwrap().to_owned();
    let mut tampered: Vec<char> = cursor.chars().collect();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    for bad in ["!!!", "AAAA", "x", tampered.as_str(), &"A".repeat(600)] {
        let resp = app
            .client
            .get(app.url("/inbox"))
            .bearer_auth(&key)
            .query(&[("cursor", bad)])
            .send()
            .await
            .unwrap();
        problem(resp, 400, "INVALID_CURSOR").await;
    }
    let resp = app
        .client
        .get(app.url("/inbox"))
        .bearer_auth(&other)
        .query(&[("cursor", &cursor)])
        .send()
        .await
        .unwrap();
    problem(resp, 400, "INVALID_CURSOR").await;
    // Another key of the same account may continue the walk.
    let viewer = app.key("acme", Role::Viewer).await;
    let resp = app
        .client
        .get(app.url("/inbox"))
        .bearer_auth(&viewer)
        .query(&[("cursor", &cursor)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

pub async fn the_event_type_filter_is_exact(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let mut want = Vec::new();
    for i in 0..7 {
        let t = match i % 3 {
            0 => "order.created",
            1 => "order.created.v2",
            _ => "Order.Created",
        };
        let id = app
            .create_event(&key, &json!({"event_type": t, "payload": {"i": i}}))
            .await;
        if t == "order.created" {
            want.push(id);
        }
    }
    assert_eq!(app.walk_inbox(&key, 1, Some("order.created")).await, want);
    assert_eq!(
        app.walk_inbox(&key, 200, Some("order")).await,
        Vec::<String>::new()
    );
}

pub async fn has_more_is_false_only_on_the_last_page(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    for i in 0..4 {
        app.create_event(&key, &json!({"event_type": "h", "payload": {"i": i}}))
            .await;
    }
    let p1 = page(&app, &key, "?limit=2").await;
    assert_eq!(p1["pagination"]["has_more"], true);
    let c = p1["pagination"]["next_cursor"].as_str().unwrap();
    let p2 = page(&app, &key, &format!("?limit=2&cursor={c}")).await;
    assert_eq!(ids(&p2).len(), 2);
    assert_eq!(
        p2["pagination"],
        json!({"next_cursor": null, "has_more": false})
    );
    let all = page(&app, &key, "?limit=4").await;
    assert_eq!(all["pagination"]["has_more"], false);
    let p = page(&app, &key, "?limit=3").await;
    assert_eq!(p["pagination"]["has_more"], true);
}

pub async fn walking_pages_while_events_are_added_and_acknowledged_never_repeats_one(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let mut order: HashMap<String, usize> = HashMap::new();
    let mut initial = Vec::new();
    for i in 0..30 {
        let id = app
            .create_event(&key, &json!({"event_type": "w", "payload": {"i": i}}))
            .await;
        order.insert(id.clone(), i);
        initial.push(id);
    }
    let mut acked: HashSet<String> = HashSet::new();
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut n = 30;
    let mut round = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=7&cursor={c}"),
            None => "?limit=7".into(),
        };
        let p = page(&app, &key, &q).await;
        seen.extend(ids(&p));
        // Between pages: two new events, one ack ahead of the walk, one behind.
        for _ in 0..2 {
            let id = app
                .create_event(&key, &json!({"event_type": "w", "payload": {"i": n}}))
                .await;
            order.insert(id, n);
            n += 1;
        }
        let ahead = &initial[(round * 7 + 10).min(29)];
        if acked.insert(ahead.clone()) {
            assert_eq!(app.ack(&key, ahead).await, 204);
        }
        if let Some(behind) = seen.first().cloned() {
            if acked.insert(behind.clone()) {
                app.delete(&format!("/events/{behind}"), &key)
                    .send()
                    .await
                    .unwrap();
            }
        }
        round += 1;
        if p["pagination"]["has_more"] == false {
            break;
        }
        cursor = Some(p["pagination"]["next_cursor"].as_str().unwrap().to_owned());
        assert!(round < 100, "the walk must end");
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an event appeared twice");
    let positions: Vec<usize> = seen.iter().map(|id| order[id]).collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "out of order: {positions:?}"
    );
    for id in &initial {
        if !acked.contains(id) {
            assert!(
                unique.contains(id),
                "{id} was undelivered throughout and never appeared"
            );
        }
    }
}

pub async fn the_inbox_is_read_your_writes(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    for i in 0..10 {
        let id = app
            .create_event(&key, &json!({"event_type": "ryw", "payload": {"i": i}}))
            .await;
        let p = page(&app, &key, "?limit=200").await;
        assert!(ids(&p).contains(&id), "visible as soon as POST answered");
        assert_eq!(app.ack(&key, &id).await, 204);
        let p = page(&app, &key, "?limit=200").await;
        assert!(!ids(&p).contains(&id), "gone as soon as DELETE answered");
    }
}

pub async fn an_account_sees_only_its_own_inbox(b: Backend) {
    let app = TestApp::start(b).await;
    let a = app.key("acct-a", Role::Creator).await;
    let z = app.key("acct-z", Role::Creator).await;
    let ia = app
        .create_event(&a, &json!({"event_type": "t", "payload": {}}))
        .await;
    let iz = app
        .create_event(&z, &json!({"event_type": "t", "payload": {"z": 1}}))
        .await;
    assert_eq!(app.walk_inbox(&a, 50, None).await, vec![ia]);
    assert_eq!(app.walk_inbox(&z, 50, None).await, vec![iz]);
}

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
        let p = page(&app, &key, &query).await;
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
        seen.extend(ids(&p));
        if !p["pagination"]["has_more"].as_bool().unwrap() {
            break;
        }
        let cursor = p["pagination"]["next_cursor"].as_str().unwrap();
        query = format!("?limit=200&cursor={cursor}");
    }
    assert_eq!(seen, created, "every event once, in order");
    assert_eq!(sizes, vec![3, 3, 3, 1, 2], "pages cut by bytes: {sizes:?}");
}

pub async fn clients_of_the_original_service_work_unchanged(b: Backend) {
    let (app, key) = TestApp::with_creator(b).await;
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(
            app.create_event(&key, &json!({"event_type": "t", "payload": {"i": i}}))
                .await,
        );
    }
    // GET /events/inbox is /inbox, with limit and cursor.
    let first = page(&app, &key, "").await;
    let p1 = {
        let resp = app.get("/events/inbox?limit=2", &key).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    assert_eq!(ids(&p1), created[..2]);
    let cursor = p1["pagination"]["next_cursor"].as_str().unwrap();
    let resp = app
        .get(&format!("/events/inbox?limit=2&cursor={cursor}"), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(ids(&resp.json::<Value>().await.unwrap()), created[2..]);
    assert_eq!(ids(&first), created);
    // ?timestamp= on event routes is accepted (and ignored).
    let ts = "timestamp=2024-01-01T00:00:00Z";
    let resp = app
        .get(&format!("/events/{}?{ts}", created[0]), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = app
        .delete(&format!("/events/{}?{ts}", created[0]), &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}
