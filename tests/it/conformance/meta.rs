use serde_json::{json, Value};
use triggers_api::domain::Role;

use crate::support::{Backend, TestApp};

pub async fn the_index_names_the_service_and_links_the_docs(b: Backend) {
    let app = TestApp::start(b).await;
    let resp = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], "triggers-api");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["links"]["docs"], "/docs");
    assert_eq!(v["links"]["openapi"], "/openapi.json");
}

pub async fn status_reports_ok_with_version_uptime_and_store(b: Backend) {
    let app = TestApp::start(b).await;
    let resp = app.client.get(app.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["uptime_seconds"].is_u64());
    let backend = match b {
        Backend::Sqlite => "sqlite",
        Backend::Dynamodb => "dynamodb",
        Backend::Memory => "memory",
    };
    assert_eq!(
        v["store"],
        json!({"backend": backend, "reachable": true, "writable": true})
    );
}

pub async fn the_openapi_document_is_3_1_and_covers_every_endpoint(b: Backend) {
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
    assert!(
        v["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        v["openapi"]
    );
    let paths = &v["paths"];
    for (path, method) in [
        ("/", "get"),
        ("/status", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
        ("/events", "post"),
        ("/inbox", "get"),
        ("/events/{id}", "get"),
        ("/events/{id}", "delete"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    let problem = &v["components"]["schemas"]["Problem"]["properties"];
    for f in [
        "type",
        "title",
        "status",
        "detail",
        "code",
        "correlation_id",
        "errors",
    ] {
        assert!(problem[f].is_object(), "Problem.{f} missing");
    }
}

pub async fn the_docs_page_renders_the_openapi_document_without_external_assets(b: Backend) {
    let app = TestApp::start(b).await;
    let resp = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("/openapi.json"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );
    assert!(html.contains("id=\"problem-validation-error\""));
}

pub async fn metrics_expose_requests_latency_ingests_duplicates_and_acks(b: Backend) {
    let app = TestApp::start(b).await;
    let key = app.key("acme", Role::Creator).await;
    let body = json!({"event_type": "m", "payload": {"a": 1}});
    let id = app.create_event(&key, &body).await;
    let dup = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(dup.status(), 200);
    assert_eq!(app.ack(&key, &id).await, 204);

    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no metric line starting {prefix}:\n{text}"))
            .to_owned()
    };
    assert!(line("triggers_events_ingested_total").ends_with(" 1"));
    assert!(line("triggers_events_duplicate_total").ends_with(" 1"));
    assert!(line("triggers_inbox_acks_total").ends_with(" 1"));
    assert!(
        text.contains(r#"route="/events""#) && text.contains(r#"status="201""#),
        "{text}"
    );
    assert!(text.contains("triggers_http_request_duration_seconds_bucket"));
}
