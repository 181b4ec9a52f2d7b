//! The service under attack, in process (one backend: none of this depends
//! on the store): bcrypt budgets and fairness, no lockout of the real key
//! holder, roles checked before the body is read, slow and idle clients,
//! the connection cap, shutdown with a deadline, limits on the request
//! head, bounded metric labels, duplicate fields.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triggers_api::auth::admin as keys;
use triggers_api::auth::key;
use triggers_api::domain::Role;
use triggers_api::http::ServeConfig;
use triggers_api::metrics::CloseReason;

use crate::support::{problem, test_settings, test_store, Backend, TestApp};

/// The same key id with another secret of the right shape.
fn wrong_secret(token: &str, n: u64) -> String {
    let cut = token.len() - 16;
    format!("{}{:016x}", &token[..cut], n)
}

async fn key_with_cost(app: &TestApp, account: &str, cost: u32) -> String {
    keys::create(
        app.state.store.as_ref(),
        account,
        &format!("owner@{account}.example"),
        Role::Creator,
        1_000_000,
        cost,
    )
    .await
    .unwrap()
    .token
}

fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
        .build()
        .unwrap()
}

fn bcrypt_runs(app: &TestApp) -> u64 {
    app.state.metrics.auth.bcrypt_runs.get()
}

async fn inbox_status(client: &reqwest::Client, app: &TestApp, key: &str) -> u16 {
    client
        .get(app.url("/inbox"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_wrong_secrets_for_one_key_id_run_bcrypt_at_most_twenty_times() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = key_with_cost(&app, "acme", 6).await;
    let before = bcrypt_runs(&app);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let (client, url, token) = (app.client.clone(), app.url("/inbox"), wrong_secret(&key, i));
        tasks.push(tokio::spawn(async move {
            let resp = client.get(url).bearer_auth(token).send().await.unwrap();
            let retry_after = resp.headers().get("retry-after").cloned();
            (resp.status().as_u16(), retry_after)
        }));
    }
    let mut by_status = std::collections::BTreeMap::<u16, u32>::new();
    for t in tasks {
        let (status, retry_after) = t.await.unwrap();
        *by_status.entry(status).or_default() += 1;
        if status == 429 {
            assert!(retry_after.is_some(), "a 429 says when to retry");
        }
    }
    let runs = bcrypt_runs(&app) - before;
    println!("200 concurrent wrong secrets: {runs} bcrypt runs, answers {by_status:?}");
    assert!(runs <= 20, "{runs} bcrypt runs for one key id and address");
    assert!(runs >= 1);
    assert_eq!(by_status.get(&200), None);
    assert!(
        by_status.get(&429).copied().unwrap_or(0) >= 180,
        "{by_status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_requests_run_no_more_bcrypt_than_the_budget_and_never_above_the_concurrency_cap()
{
    let app = TestApp::start(Backend::Sqlite).await;
    // Cost 10: each run outlives the 20 ms its client waits.
    let key = key_with_cost(&app, "acme", 10).await;
    let before = bcrypt_runs(&app);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (client, url, token) = (impatient.clone(), app.url("/inbox"), wrong_secret(&key, i));
        tasks.push(tokio::spawn(async move {
            let _ = client.get(url).bearer_auth(token).send().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Let the runs already started finish.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.state.metrics.auth.bcrypt_in_flight.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let runs = bcrypt_runs(&app) - before;
    let high_water = app.state.auth.bcrypt_high_water();
    println!("60 abandoned requests: {runs} bcrypt runs, at most {high_water} at once");
    assert!(runs <= 20, "{runs} runs");
    assert!(
        high_water <= app.state.settings.auth.concurrency as u64,
        "{high_water} runs at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_time_valid_key_of_another_id_is_verified_during_a_burst_without_waiting_for_it() {
    let app = TestApp::start(Backend::Sqlite).await;
    let attacked = key_with_cost(&app, "acme", 10).await;
    let other = key_with_cost(&app, "other", 10).await;
    let mut burst = Vec::new();
    for i in 0..200 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/inbox"),
            wrong_secret(&attacked, i),
        );
        burst.push(tokio::spawn(async move {
            let _ = client.get(url).bearer_auth(token).send().await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let status = inbox_status(&app.client, &app, &other).await;
    let took = started.elapsed();
    println!("first-time key of another id during the burst: {status} in {took:?}");
    assert_eq!(status, 200);
    // Before the budgets it waited 30 s and got 503. 0.11–0.21 s beside a
    // running `make test` (the figure is printed); the bound leaves room for
    // a loaded CI machine (1.14 s was seen once under a parallel build).
    assert!(took < Duration::from_secs(3), "took {took:?}");
    for t in burst {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_that_verified_keeps_working_whatever_wrong_secrets_others_send() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("acme", Role::Creator).await;
    assert_eq!(inbox_status(&app.client, &app, &key).await, 200);
    for i in 0..40 {
        let s = inbox_status(&app.client, &app, &wrong_secret(&key, i)).await;
        assert!(s == 401 || s == 429, "{s}");
    }
    // Past the cache time the record is read again, but no budget applies
    // to a secret that already verified against the same hash.
    let ttl = chrono::Duration::from_std(app.state.settings.auth.cache_ttl).unwrap();
    app.clock.advance(ttl + chrono::Duration::seconds(1));
    let runs = bcrypt_runs(&app);
    assert_eq!(inbox_status(&app.client, &app, &key).await, 200);
    assert_eq!(bcrypt_runs(&app), runs, "no bcrypt for a known secret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_secret_from_a_clean_address_is_verified_while_another_address_is_over_budget() {
    let app = TestApp::start(Backend::Sqlite).await;
    // Never used yet: as after a restart, nothing is known about it.
    let key = app.key("acme", Role::Creator).await;
    let attacker = client_from(2);
    let mut last = 0;
    for i in 0..25 {
        last = inbox_status(&attacker, &app, &wrong_secret(&key, i)).await;
    }
    assert_eq!(last, 429, "the attacker's address is over budget");
    let owner = client_from(1);
    assert_eq!(inbox_status(&owner, &app, &key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_id_cap_bounds_bcrypt_whatever_the_addresses() {
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("acme", Role::Creator).await;
    let cap = app.state.settings.auth.per_key_per_minute;
    let per_source = app.state.settings.auth.per_source_per_minute;
    let addresses = (cap / per_source + 2) as u8;
    let before = bcrypt_runs(&app);
    for a in 0..addresses {
        let client = client_from(10 + a);
        for i in 0..per_source {
            inbox_status(
                &client,
                &app,
                &wrong_secret(&key, u64::from(a) * 1000 + u64::from(i)),
            )
            .await;
        }
    }
    let runs = bcrypt_runs(&app) - before;
    assert_eq!(runs, u64::from(cap), "{addresses} addresses");
    // A minute later the budget is back.
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(inbox_status(&client_from(3), &app, &key).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_gets_403_on_creator_routes_before_the_body_or_id_is_read() {
    let app = TestApp::start(Backend::Sqlite).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "wrong content type",
            app.client
                .post(app.url("/events"))
                .bearer_auth(&viewer)
                .header("content-type", "text/plain")
                .body("x"),
        ),
        (
            "malformed JSON",
            app.post_raw("/events", &viewer, "{not json"),
        ),
        (
            "a body over the limit",
            app.post_raw("/events", &viewer, vec![b' '; 600 * 1024]),
        ),
        (
            "an invalid event id",
            app.delete("/events/not-an-event-id", &viewer),
        ),
    ];
    for (what, req) in cases {
        let p = problem(req.send().await.unwrap(), 403, "FORBIDDEN").await;
        assert!(
            p["detail"].as_str().unwrap().contains("role"),
            "{what}: {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_top_level_field_is_400_naming_it() {
    let (app, key) = TestApp::with_creator(Backend::Sqlite).await;
    let body = r#"{"event_type":"a","payload":{},"event_type":"b"}"#;
    let p = problem(
        app.post_raw("/events", &key, body).send().await.unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    assert_eq!(
        p["errors"],
        json!([{"field": "event_type", "message": "given more than once"}])
    );
}

fn quick_limits() -> triggers_api::config::Settings {
    triggers_api::config::Settings {
        http: ServeConfig {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            max_connections: 16,
            shutdown_grace: Duration::from_secs(1),
        },
        ..test_settings()
    }
}

fn addr(app: &TestApp) -> SocketAddr {
    app.base.trim_start_matches("http://").parse().unwrap()
}

/// How long until the server closes `s` (reads until EOF or reset).
async fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_request_head_is_cut_at_the_header_read_timeout() {
    let app = TestApp::start_with(Backend::Sqlite, quick_limits()).await;
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let closed = time_to_close(s, Duration::from_secs(10)).await;
    println!("half-sent head closed after {closed:?}");
    let closed = closed.expect("closed");
    assert!(closed >= Duration::from_millis(800) && closed < Duration::from_secs(4));
    assert!(
        app.state
            .metrics
            .connections
            .closed_count(CloseReason::HeaderTimeout)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_keep_alive_connections_close_at_the_idle_timeout() {
    let app = TestApp::start_with(Backend::Sqlite, quick_limits()).await;
    let silent = TcpStream::connect(addr(&app)).await.unwrap();
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let (silent, idle) = tokio::join!(
        time_to_close(silent, Duration::from_secs(10)),
        time_to_close(idle, Duration::from_secs(10))
    );
    println!("silent connection closed after {silent:?}, idle keep-alive after {idle:?}");
    for closed in [silent.expect("silent closed"), idle.expect("idle closed")] {
        // The idle timeout (2 s), not the header-read one (1 s).
        assert!(closed >= Duration::from_millis(1500) && closed < Duration::from_secs(5));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_trickling_clients_make_room_and_status_still_answers() {
    let app = TestApp::start_with(Backend::Sqlite, quick_limits()).await;
    let mut trickling = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr(&app)).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
        trickling.push(s);
    }
    let started = Instant::now();
    let resp = reqwest::Client::new()
        .get(app.url("/status"))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .expect("status answers at the cap");
    println!(
        "GET /status at the cap: {} in {:?}",
        resp.status(),
        started.elapsed()
    );
    assert_eq!(resp.status(), 200);
    let conns = &app.state.metrics.connections;
    assert!(conns.closed_count(CloseReason::Evicted) >= 24);
    assert!(conns.open_now() <= 17, "{} open", conns.open_now());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_the_grace_period_whatever_clients_leave_open() {
    let store = test_store(Backend::Sqlite).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let settings = quick_limits();
    let key_store = store.store.clone();
    let app = triggers_api::Application::build(
        store.store.clone(),
        Arc::new(triggers_api::clock::SystemClock),
        settings,
        listener,
    )
    .await
    .unwrap();
    let at = app.local_addr().unwrap();
    let key = keys::create(key_store.as_ref(), "acme", "a@b.c", Role::Creator, 1000, 4)
        .await
        .unwrap()
        .token;
    let metrics = app.state().metrics.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    // One half-sent head, and one request whose body never finishes.
    let mut half = TcpStream::connect(at).await.unwrap();
    half.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
    let mut body = TcpStream::connect(at).await.unwrap();
    body.write_all(
        format!(
            "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ev"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stopped within its grace period")
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    println!("shutdown with a half-sent head and an unfinished body took {took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(
        metrics
            .connections
            .closed_count(CloseReason::ShutdownForced)
            >= 1
    );
    drop((half, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_headers_and_too_long_targets_are_problems_with_a_request_id() {
    let app = TestApp::start(Backend::Sqlite).await;
    let mut req = app.client.get(app.url("/status"));
    for i in 0..120 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let p = problem(req.send().await.unwrap(), 431, "PAYLOAD_TOO_LARGE").await;
    assert!(p["detail"].as_str().unwrap().contains("100"));
    let long = format!("/status?{}", "a".repeat(9000));
    problem(
        app.client.get(app.url(&long)).send().await.unwrap(),
        414,
        "PAYLOAD_TOO_LARGE",
    )
    .await;
    // Past hyper's own limit the answer is hyper's (no body), but the
    // connection is counted and logged.
    let mut s = TcpStream::connect(addr(&app)).await.unwrap();
    let mut head = String::from("GET /status HTTP/1.1\r\nHost: x\r\n");
    for i in 0..300 {
        head.push_str(&format!("x-h{i}: v\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 431"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        app.state
            .metrics
            .connections
            .closed_count(CloseReason::HeadTooLarge)
            >= 1
    );
}

async fn metrics_text(app: &TestApp) -> String {
    app.client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_random_methods_and_paths_add_no_metric_series() {
    let app = TestApp::start(Backend::Sqlite).await;
    let method = |i: u32| reqwest::Method::from_bytes(format!("M{i:08X}").as_bytes()).unwrap();
    // One of each kind first, so every series the attack can touch exists.
    let _ = app
        .client
        .request(method(0), app.url("/nowhere/0"))
        .send()
        .await
        .unwrap();
    let _ = app
        .client
        .request(method(0), app.url("/status"))
        .send()
        .await;
    // And the series of GET /metrics itself.
    let _ = metrics_text(&app).await;
    let before = metrics_text(&app).await;
    for i in 1..2000 {
        let path = if i % 2 == 0 {
            "/status".to_owned()
        } else {
            format!("/nowhere/{i}")
        };
        let _ = app
            .client
            .request(method(i), app.url(&path))
            .send()
            .await
            .unwrap();
    }
    let after = metrics_text(&app).await;
    let series = |t: &str| t.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "/metrics: {} -> {} bytes, {} -> {} series",
        before.len(),
        after.len(),
        series(&before),
        series(&after)
    );
    let new: Vec<&str> = after
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            let name = l.split(' ').next().unwrap_or("");
            !before.lines().any(|b| b.split(' ').next() == Some(name))
        })
        .collect();
    assert!(new.is_empty(), "new series: {new:?}");
    assert!(after.contains("method=\"other\""));
    assert!(after.contains("route=\"unmatched\""));
    assert!(!after.contains("M0000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_key_naming_a_real_key_id_costs_no_bcrypt() {
    // A key id counts only in a key of the exact format, so junk is refused
    // before any budget, store read or bcrypt.
    let app = TestApp::start(Backend::Sqlite).await;
    let key = app.key("acme", Role::Creator).await;
    let id = key::parse(&key).unwrap().key_id;
    let junk = format!("trg_{id}_short");
    assert!(key::parse(&junk).is_none());
    let before = bcrypt_runs(&app);
    problem(
        app.get("/inbox", &junk).send().await.unwrap(),
        401,
        "UNAUTHORIZED",
    )
    .await;
    assert_eq!(bcrypt_runs(&app), before);
    let v: Value = app
        .get("/inbox", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["events"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_still_sending_a_refused_body_reads_the_answer_not_a_reset() {
    // The server answers 413 (or 403) without reading the whole body; the
    // client is still writing it. The answer must reach the client: a
    // connection closed at once would have the kernel reset it.
    let app = TestApp::start(Backend::Sqlite).await;
    let creator = app.key("acme", Role::Creator).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut resets = Vec::new();
    for i in 0..40 {
        let (key, status, code) = if i % 2 == 0 {
            (&creator, 413, "PAYLOAD_TOO_LARGE")
        } else {
            (&viewer, 403, "FORBIDDEN")
        };
        let sent = client
            .post(app.url("/events"))
            .bearer_auth(key)
            .header("content-type", "application/json")
            .body(vec![b' '; 4 * 1024 * 1024])
            .send()
            .await;
        match sent {
            Ok(resp) => {
                problem(resp, status, code).await;
            }
            Err(e) => resets.push(format!("{i}: {e:?}")),
        }
    }
    assert!(
        resets.is_empty(),
        "{} of 40 failed: {resets:#?}",
        resets.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_its_body_was_read_says_connection_close() {
    // The connection closes after such an answer; a client that is not told
    // so sends its next request on it and loses that request.
    let app = TestApp::start(Backend::Sqlite).await;
    let viewer = app.key("acme", Role::Viewer).await;
    let creator = app.key("acme", Role::Creator).await;
    let client = reqwest::Client::new(); // pooled: reuses connections
    for i in 0..20 {
        let resp = client
            .post(app.url("/events"))
            .bearer_auth(&viewer)
            .header("content-type", "application/json")
            .body(vec![b' '; 600 * 1024])
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {i}, oversize POST: {e:?}"));
        assert_eq!(resp.headers()["connection"], "close");
        problem(resp, 403, "FORBIDDEN").await;
        let next = client
            .delete(app.url("/events/not-an-event-id"))
            .bearer_auth(&viewer)
            .send()
            .await
            .unwrap_or_else(|e| panic!("round {i}, the request after it: {e:?}"));
        problem(next, 403, "FORBIDDEN").await;
    }
    // A request whose body was read keeps its connection open.
    let ok = client
        .post(app.url("/events"))
        .bearer_auth(&creator)
        .json(&json!({"event_type": "t", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
    assert!(
        ok.headers().get("connection").is_none(),
        "{:?}",
        ok.headers()
    );
}
