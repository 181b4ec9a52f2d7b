//! Deduplication at the end of its window, with the purge running while a
//! repeat is in flight (a defect the simulator's window-edge re-sends aim
//! at, see README "Simulation"): the repeat's timestamp is inside the
//! window, so it must get the original back even if its store call runs
//! after a purge pass that came once the window was over. And the decision
//! itself still uses exactly the window: a repeat received at its end is a
//! new event, purge or not.

use std::time::Duration;

use serde_json::{json, Value};
use triggers_api::domain::Role;

use crate::conformance::held::{held_app_with, Inserts};
use crate::support::{test_settings, Backend, TestApp};

const WINDOW: Duration = Duration::from_secs(300);

async fn app(b: Backend) -> (TestApp, std::sync::Arc<crate::conformance::held::Hooks>) {
    let settings = triggers_api::config::Settings {
        dedup_window: WINDOW,
        // Only the purge passes this test runs.
        purge_interval: Duration::from_secs(3600),
        ..test_settings()
    };
    held_app_with(b, settings).await
}

fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

fn window() -> chrono::Duration {
    chrono::Duration::from_std(WINDOW).unwrap()
}

/// POST `path` with `body` while inserts are held: returns once the
/// insert waits at the gate.
async fn send_held(
    app: &TestApp,
    hooks: &crate::conformance::held::Hooks,
    path: &str,
    key: &str,
    body: &Value,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    hooks.set(Inserts::Hold);
    let waiting = hooks.waiting.notified();
    let req = app.post_json(path, key, body).send();
    let handle = tokio::spawn(req);
    waiting.await;
    handle
}

async fn repeat_in_flight_across_a_purge(b: Backend) {
    let (app, hooks) = app(b).await;
    let key = app.key("acme", Role::Creator).await;
    let body = json!({"event_type": "edge", "payload": {"n": 1}});
    let original = app.create_event(&key, &body).await;

    // The repeat is received 1 ms before the window ends; its insert waits.
    app.clock.advance(window() - ms(1));
    let repeat = send_held(&app, &hooks, "/events", &key, &body).await;
    // Meanwhile the window ends and a purge pass runs.
    app.clock.advance(ms(2));
    app.state.purge_once().await.unwrap();
    hooks.set(Inserts::Pass);
    hooks.release();

    let resp = repeat.await.unwrap().unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    assert_eq!(v["event_id"], original.as_str(), "{v}");
}

/// The same through POST /events/batch (the batch path of every store).
async fn batch_repeat_in_flight_across_a_purge(b: Backend) {
    let (app, hooks) = app(b).await;
    let key = app.key("acme", Role::Creator).await;
    let event = json!({"event_type": "edge", "payload": {"n": 2}});
    let original = app.create_event(&key, &event).await;

    app.clock.advance(window() - ms(1));
    let batch = json!({"events": [event]});
    let repeat = send_held(&app, &hooks, "/events/batch", &key, &batch).await;
    app.clock.advance(ms(2));
    app.state.purge_once().await.unwrap();
    hooks.set(Inserts::Pass);
    hooks.release();

    let resp = repeat.await.unwrap().unwrap();
    let v: Value = resp.json().await.unwrap();
    let item = &v["results"][0];
    assert_eq!(item["duplicate"], true, "{v}");
    assert_eq!(item["event_id"], original.as_str(), "{v}");
}

/// The decision uses exactly the window, whatever the purge keeps: 1 ms
/// before its end a repeat is a duplicate, at its end a new event (with a
/// purge pass in between, which now keeps the record a little longer).
async fn the_window_still_ends_exactly_at_its_bound(b: Backend) {
    let (app, _hooks) = app(b).await;
    let key = app.key("acme", Role::Creator).await;
    let body = json!({"event_type": "edge", "payload": {"n": 3}});
    let original = app.create_event(&key, &body).await;

    app.clock.advance(window() - ms(1));
    app.state.purge_once().await.unwrap();
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["event_id"], original.as_str(), "{v}");

    app.clock.advance(ms(1));
    app.state.purge_once().await.unwrap();
    let resp = app.post_json("/events", &key, &body).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    assert_ne!(v["event_id"], original.as_str(), "{v}");
    assert_eq!(v["duplicate"], false, "{v}");
}

macro_rules! on_every_backend {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$case(crate::support::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn dynamodb() {
                    super::$case(crate::support::Backend::Dynamodb).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$case(crate::support::Backend::Memory).await;
                }
            }
        )*
    };
}

on_every_backend! {
    repeat_in_flight_across_a_purge,
    batch_repeat_in_flight_across_a_purge,
    the_window_still_ends_exactly_at_its_bound,
}
