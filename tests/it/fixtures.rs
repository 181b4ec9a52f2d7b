//! Every file under `fixtures/` against a live server.

use std::path::PathBuf;

use serde_json::Value;
use triggers_api::domain::Role;

use crate::support::{error_fields, problem, Backend, TestApp};

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn files(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "expectations.json")
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn every_good_fixture_is_accepted_and_reads_back_unchanged() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("fixtures", Role::Creator).await;
    let good = files("good");
    assert!(good.len() >= 5);
    for (name, body) in good {
        let resp = app
            .post_raw("/events", &key, body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{name}");
        let id = resp.json::<Value>().await.unwrap()["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = crate::support::parse_deep(
            &app.get(&format!("/events/{id}"), &key)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        let sent = crate::support::parse_deep(std::str::from_utf8(&body).unwrap());
        assert_eq!(got["payload"], sent["payload"], "{name}");
        let metadata = if sent["metadata"].is_object() {
            sent["metadata"].clone()
        } else {
            serde_json::json!({})
        };
        assert_eq!(got["metadata"], metadata, "{name}");
        assert_eq!(got["event_type"], sent["event_type"], "{name}");
    }
}

#[tokio::test]
async fn every_bad_fixture_is_refused_as_its_expectation_says() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("fixtures", Role::Creator).await;
    let expectations: Value =
        serde_json::from_slice(&std::fs::read(dir("bad").join("expectations.json")).unwrap())
            .unwrap();
    let expectations = expectations.as_object().unwrap();
    let bad = files("bad");
    assert_eq!(
        bad.len(),
        expectations.len(),
        "every bad fixture has an expectation and vice versa"
    );
    for (name, body) in bad {
        let want = expectations
            .get(&name)
            .unwrap_or_else(|| panic!("no expectation for {name}"));
        let resp = app.post_raw("/events", &key, body).send().await.unwrap();
        let p = problem(
            resp,
            want["status"].as_u64().unwrap() as u16,
            want["code"].as_str().unwrap(),
        )
        .await;
        let want_fields: Vec<String> = want["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(error_fields(&p), want_fields, "{name}: {p}");
    }
    assert!(
        app.walk_inbox(&key, 200, None).await.is_empty(),
        "nothing bad was stored"
    );
}

/// POST /events/batch judges each event exactly as POST /events judges the
/// same body: every good fixture and every bad one that is well-formed
/// JSON (a malformed one makes the whole batch body malformed) in one
/// batch, each answered in its own result as its expectation says.
#[tokio::test]
async fn a_batch_of_every_fixture_answers_each_as_post_events_would() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("fixtures", Role::Creator).await;
    let expectations: Value =
        serde_json::from_slice(&std::fs::read(dir("bad").join("expectations.json")).unwrap())
            .unwrap();
    let malformed = [
        "truncated.json",
        "trailing-garbage.json",
        "invalid-utf8.json",
    ];
    let good = files("good");
    let bad: Vec<(String, Vec<u8>)> = files("bad")
        .into_iter()
        .filter(|(name, _)| !malformed.contains(&name.as_str()))
        .collect();
    let mut body = b"{\"events\":[".to_vec();
    for (i, (_, item)) in good.iter().chain(&bad).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    let resp = app
        .post_raw("/events/batch", &key, body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v = crate::support::parse_deep(&resp.text().await.unwrap());
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), good.len() + bad.len());
    for ((name, item), r) in good.iter().zip(results) {
        assert_eq!(r["status"], 201, "{name}: {r}");
        let got = crate::support::parse_deep(
            &app.get(
                &format!("/events/{}", r["event_id"].as_str().unwrap()),
                &key,
            )
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        );
        let sent = crate::support::parse_deep(std::str::from_utf8(item).unwrap());
        assert_eq!(got["payload"], sent["payload"], "{name}");
    }
    for ((name, _), r) in bad.iter().zip(&results[good.len()..]) {
        let want = &expectations[name.as_str()];
        assert_eq!(r["status"], want["status"], "{name}: {r}");
        assert_eq!(r["code"], want["code"], "{name}: {r}");
        let want_fields: Vec<String> = want["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(error_fields(r), want_fields, "{name}: {r}");
    }
    // Only the good ones were stored (the inbox holds a deep payload: read
    // it without a depth limit).
    let inbox = crate::support::parse_deep(
        &app.get("/inbox?limit=200", &key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert_eq!(inbox["events"].as_array().unwrap().len(), good.len());
}
