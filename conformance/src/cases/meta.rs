use serde_json::{json, Value};

use crate::{Ctx, Endpoint};

/// `version` is a non-empty string, the expected one when the target says.
fn check_version(cx: &Ctx, v: &Value) {
    let version = v.as_str().unwrap_or_else(|| panic!("version: {v}"));
    assert!(!version.is_empty(), "an empty version");
    if let Some(want) = &cx.expect_version {
        assert_eq!(version, want, "version");
    }
}

pub async fn the_index_names_the_service_and_links_the_docs(cx: &Ctx) {
    let resp = cx.client.get(cx.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["name"], "triggers-api");
    check_version(cx, &v["version"]);
    assert_eq!(v["links"]["docs"], "/docs");
    assert_eq!(v["links"]["openapi"], "/openapi.json");
    assert_eq!(v["links"]["status"], "/status");
    assert_eq!(v["links"]["metrics"], "/metrics");
}

pub async fn status_reports_ok_with_version_uptime_and_store(cx: &Ctx) {
    let resp = cx.client.get(cx.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    check_version(cx, &v["version"]);
    assert!(v["uptime_seconds"].is_u64(), "{v}");
    match &cx.expect_backend {
        Some(backend) => assert_eq!(
            v["store"],
            json!({"backend": backend, "reachable": true, "writable": true})
        ),
        None => {
            assert!(
                matches!(v["store"]["backend"].as_str(), Some("sqlite" | "dynamodb")),
                "{v}"
            );
            assert_eq!(v["store"]["reachable"], true, "{v}");
        }
    }
}

pub async fn the_openapi_document_is_3_1_and_covers_every_endpoint(cx: &Ctx) {
    let v: Value = cx
        .client
        .get(cx.url("/openapi.json"))
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
        ("/inbox/lease", "post"),
        ("/inbox/ack", "post"),
        ("/inbox/release", "post"),
        ("/events/{id}/requeue", "post"),
    ] {
        assert!(paths[path][method].is_object(), "{method} {path} missing");
    }
    // v2 fields and constraints are documented.
    let event = &v["components"]["schemas"]["Event"]["properties"];
    for f in ["lease_count", "leased_until", "quarantined"] {
        assert!(event[f].is_object(), "Event.{f} missing");
    }
    let lease = &v["components"]["schemas"]["LeaseRequest"]["properties"];
    for (f, min, max) in [
        ("limit", 1, 100),
        ("lease_seconds", 1, 3600),
        ("wait_seconds", 0, 20),
    ] {
        assert_eq!(lease[f]["minimum"], min, "LeaseRequest.{f}: {}", lease[f]);
        assert_eq!(lease[f]["maximum"], max, "LeaseRequest.{f}: {}", lease[f]);
    }
    assert!(v["components"]["schemas"]["ErrorCode"]
        .to_string()
        .contains("CONFLICT"));
    let inbox_params = paths["/inbox"]["get"]["parameters"].to_string();
    assert!(inbox_params.contains("\"state\""), "{inbox_params}");
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

pub async fn the_docs_page_renders_the_openapi_document_without_external_assets(cx: &Ctx) {
    let resp = cx.client.get(cx.url("/docs")).send().await.unwrap();
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

/// GET /metrics: the Prometheus text.
async fn metrics(cx: &Ctx) -> String {
    let resp = cx.client.get(cx.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    resp.text().await.unwrap()
}

/// The sum of every series of the metric `name`.
fn total(text: &str, name: &str) -> f64 {
    let mut found = false;
    let mut sum = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        found = true;
        let value = rest.rsplit(' ').next().unwrap_or("");
        sum += value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("{name}: not a number in {line:?}"));
    }
    assert!(found, "no metric {name}:\n{text}");
    sum
}

/// The counters grow by what this case did (at least: a shared deployment
/// has other clients; /metrics is per instance, so behind a load balancer
/// of several instances this case needs the requests to reach one).
pub async fn metrics_expose_requests_latency_ingests_duplicates_and_acks(cx: &Ctx) {
    let counters = [
        "triggers_events_ingested_total",
        "triggers_events_duplicate_total",
        "triggers_inbox_acks_total",
    ];
    let before_text = metrics(cx).await;
    let before: Vec<f64> = counters
        .iter()
        .map(|c| {
            if before_text.contains(c) {
                total(&before_text, c)
            } else {
                0.0
            }
        })
        .collect();
    let key = &cx.creator;
    let body = json!({"event_type": cx.ty("m"), "payload": {"a": 1}});
    let id = cx.create_event(key, &body).await;
    let dup = cx.post_json("/events", key, &body).send().await.unwrap();
    assert_eq!(dup.status(), 200);
    assert_eq!(cx.ack(key, &id).await, 204);

    let text = metrics(cx).await;
    for (c, before) in counters.iter().zip(before) {
        let after = total(&text, c);
        assert!(after >= before + 1.0, "{c}: {before} before, {after} after");
    }
    assert!(
        text.contains(r#"route="/events""#) && text.contains(r#"status="201""#),
        "{text}"
    );
    assert!(text.contains("triggers_http_request_duration_seconds_bucket"));
}
