//! The binary: `keys` commands, the first-start hint, the server and the
//! CLI on one store at once, and durability across kill -9.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_triggers-api");

fn cli(store: &str, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("TRIGGERS_STORE", store)
        .env("TRIGGERS_BCRYPT_COST", "4")
        .output()
        .expect("run the binary")
}

fn ok_json(out: std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn temp_store() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    (dir, url)
}

#[test]
fn keys_create_prints_the_key_once_and_list_never_shows_secrets() {
    let (_dir, store) = temp_store();
    let created = ok_json(cli(
        &store,
        &[
            "keys",
            "create",
            "--account",
            "acme",
            "--email",
            "ops@acme.example",
            "--role",
            "creator",
            "--rate-limit",
            "250",
            "--json",
        ],
    ));
    let key = created["key"].as_str().unwrap();
    let key_id = created["key_id"].as_str().unwrap();
    assert!(key.starts_with(&format!("trg_{key_id}_")));
    assert_eq!(created["rate_limit_per_minute"], 250);
    assert_eq!(created["role"], "creator");
    assert_eq!(created["status"], "active");

    let listed = cli(&store, &["keys", "list", "--json"]);
    let text = String::from_utf8(listed.stdout.clone()).unwrap();
    assert!(!text.contains(&key[20..]), "a secret leaked into keys list");
    let list = ok_json(listed);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["key_id"], key_id);
    assert!(list[0].get("key").is_none() && list[0].get("secret_hash").is_none());

    let plain = cli(&store, &["keys", "list"]);
    assert!(plain.status.success());
    assert!(String::from_utf8(plain.stdout).unwrap().contains(key_id));
}

#[test]
fn keys_can_be_revoked_deactivated_and_limited_with_clear_errors_for_unknown_ids() {
    let (_dir, store) = temp_store();
    let mk = |email: &str| {
        ok_json(cli(
            &store,
            &[
                "keys",
                "create",
                "--account",
                "acme",
                "--email",
                email,
                "--role",
                "viewer",
                "--json",
            ],
        ))
    };
    let a = mk("a@acme.example");
    let b1 = mk("b@acme.example");
    let b2 = mk("b@acme.example");
    let a_id = a["key_id"].as_str().unwrap();

    assert!(cli(&store, &["keys", "set-status", a_id, "inactive"])
        .status
        .success());
    assert!(cli(&store, &["keys", "set-rate-limit", a_id, "9"])
        .status
        .success());
    let out = cli(&store, &["keys", "revoke", "--email", "b@acme.example"]);
    assert!(out.status.success());
    let list = ok_json(cli(
        &store,
        &["keys", "list", "--account", "acme", "--json"],
    ));
    let find = |id: &Value| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|k| k["key_id"] == *id)
            .unwrap()
            .clone()
    };
    assert_eq!(find(&a["key_id"])["status"], "inactive");
    assert_eq!(find(&a["key_id"])["rate_limit_per_minute"], 9);
    assert_eq!(find(&b1["key_id"])["status"], "revoked");
    assert_eq!(find(&b2["key_id"])["status"], "revoked");
    assert!(cli(&store, &["keys", "revoke", a_id]).status.success());

    for args in [
        vec!["keys", "revoke", "zzzzzzzzzzzzzzzz"],
        vec!["keys", "set-status", "nope", "active"],
        vec!["keys", "set-rate-limit", "zzzzzzzzzzzzzzzz", "5"],
        vec!["keys", "revoke", "--email", "nobody@acme.example"],
    ] {
        let out = cli(&store, &args);
        assert!(!out.status.success(), "{args:?} should fail");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains("no key"), "{args:?}: {err}");
    }
    let out = cli(&store, &["keys", "set-status", a_id, "revoked"]);
    assert!(
        !out.status.success(),
        "set-status takes only active|inactive"
    );
    let out = cli(
        &store,
        &[
            "keys",
            "create",
            "--account",
            "bad account!",
            "--email",
            "x@y.z",
            "--role",
            "creator",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("account"));
}

struct Server {
    child: Child,
    base: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the real binary on a free port and waits for its "listening" line.
fn start_server(store: &str) -> Server {
    start_server_with(store, &[], None)
}

/// Likewise, with extra environment and, when given, a lower limit of open
/// files (`ulimit -n`).
fn start_server_with(store: &str, env: &[(&str, &str)], max_files: Option<u32>) -> Server {
    let mut command = match max_files {
        Some(n) => {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\""), BIN]);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = command
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("TRIGGERS_STORE", store)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start server");
    let stdout = child.stdout.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if let Some(addr) = v["addr"].as_str() {
                    let _ = tx.send(addr.to_owned());
                }
            }
            sink.lock().unwrap().push(line);
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server announced its address");
    Server {
        child,
        base: format!("http://{addr}"),
        log,
    }
}

impl Server {
    /// Waits until a log line contains every one of `needles`.
    async fn log_line(&self, needles: &[&str]) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's peak resident memory (VmHWM), in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }
}

fn creator_key(store: &str) -> String {
    let created = ok_json(cli(
        store,
        &[
            "keys",
            "create",
            "--account",
            "acme",
            "--email",
            "a@b.c",
            "--role",
            "creator",
            "--json",
        ],
    ));
    created["key"].as_str().unwrap().to_owned()
}

#[test]
fn a_fresh_store_logs_the_command_that_creates_the_first_key_as_json() {
    let (_dir, store) = temp_store();
    let server = start_server(&store);
    let lines = server.log.lock().unwrap().clone();
    let hint = lines
        .iter()
        .find(|l| l.contains("keys create"))
        .unwrap_or_else(|| panic!("no hint in {lines:?}"));
    let v: Value = serde_json::from_str(hint).expect("log lines are JSON");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(&format!("--store {store}")), "{hint}");
    assert_eq!(v["level"], "WARN");
    // The printed command works as printed.
    let command = &message[message.find(BIN).expect("names the binary")..];
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = Command::new(BIN)
        .args(&args)
        .env("TRIGGERS_BCRYPT_COST", "4")
        .env_remove("TRIGGERS_STORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = ok_json(cli(&store, &["keys", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_and_the_cli_share_a_store_while_both_run() {
    let (_dir, store) = temp_store();
    let server = start_server(&store);
    let created = ok_json(cli(
        &store,
        &[
            "keys",
            "create",
            "--account",
            "acme",
            "--email",
            "a@b.c",
            "--role",
            "creator",
            "--json",
        ],
    ));
    let key = created["key"].as_str().unwrap();
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/events", server.base))
        .bearer_auth(key)
        .json(&json!({"event_type": "cli", "payload": {"n": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    // The access log line is read from the server's stdout by another
    // thread: wait for it rather than race it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = server.log.lock().unwrap().join("\n");
        if log.contains("request completed") || Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!log.contains(&key[20..]), "the key must never be logged");
    assert!(
        log.contains("request completed") && log.contains("request_id"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_event_that_was_answered_201() {
    let (_dir, store) = temp_store();
    let created = ok_json(cli(
        &store,
        &[
            "keys",
            "create",
            "--account",
            "acme",
            "--email",
            "a@b.c",
            "--role",
            "creator",
            "--json",
        ],
    ));
    let key = created["key"].as_str().unwrap().to_owned();
    let mut server = start_server(&store);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (client, base, key, acked) = (
            client.clone(),
            server.base.clone(),
            key.clone(),
            acked.clone(),
        );
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let resp = client
                    .post(format!("{base}/events"))
                    .bearer_auth(&key)
                    .json(&json!({"event_type": "crash", "payload": {"w": w, "i": i}}))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 201 => {
                        let v: Value = match r.json().await {
                            Ok(v) => v,
                            Err(_) => return,
                        };
                        acked
                            .lock()
                            .unwrap()
                            .push(v["event_id"].as_str().unwrap().to_owned());
                    }
                    _ => return,
                }
            }
        }));
    }
    let start = Instant::now();
    while acked.lock().unwrap().len() < 300 && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "only {} events were acknowledged before the kill",
        acked.len()
    );

    let server = start_server(&store);
    let mut seen = std::collections::HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = client
            .get(format!("{}/inbox", server.base))
            .bearer_auth(&key)
            .query(&[("limit", "200")]);
        if let Some(c) = &cursor {
            req = req.query(&[("cursor", c)]);
        }
        let page: Value = req.send().await.unwrap().json().await.unwrap();
        for e in page["events"].as_array().unwrap() {
            seen.insert(e["event_id"].as_str().unwrap().to_owned());
        }
        if page["pagination"]["has_more"] == false {
            break;
        }
        cursor = page["pagination"]["next_cursor"]
            .as_str()
            .map(str::to_owned);
    }
    let lost: Vec<&String> = acked.iter().filter(|id| !seen.contains(*id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost: {lost:?}",
        lost.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_tables_is_idempotent_and_the_keys_cli_works_on_dynamodb() {
    let endpoint = crate::support::dynamodb::endpoint().await;
    let prefix = format!("cli{}", uuid::Uuid::new_v4().simple());
    let store = format!("dynamodb://{prefix}");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("TRIGGERS_STORE", &store)
            .env("TRIGGERS_BCRYPT_COST", "4")
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let out = run(&["dynamodb", "create-tables"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let created = ok_json(run(&[
        "keys",
        "create",
        "--account",
        "acme",
        "--email",
        "d@acme.example",
        "--role",
        "viewer",
        "--json",
    ]));
    let key_id = created["key_id"].as_str().unwrap();
    assert!(run(&["keys", "set-rate-limit", key_id, "77"])
        .status
        .success());
    assert!(run(&["keys", "revoke", key_id]).status.success());
    let list = ok_json(run(&["keys", "list", "--json"]));
    assert_eq!(list[0]["key_id"], key_id);
    assert_eq!(list[0]["status"], "revoked");
    assert_eq!(list[0]["rate_limit_per_minute"], 77);
    let out = run(&["keys", "revoke", "zzzzzzzzzzzzzzzz"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key"));
    // The lease-marker backfill walks every account with a key (here one,
    // with an empty inbox) or the ones named.
    for args in [
        &["dynamodb", "add-lease-markers"][..],
        &["dynamodb", "add-lease-markers", "--account", "acme"],
    ] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "account acme: 0 inbox events, 0 available (marker written)\n"
        );
    }
    let out = run(&["dynamodb", "add-lease-markers", "--account", "not valid"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failure_logs_its_whole_cause_with_the_request_id_and_answers_a_generic_500() {
    let (dir, store) = temp_store();
    let key = creator_key(&store);
    let server = start_server(&store);
    // Break the store under the running server.
    let conn = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
    conn.execute_batch("DROP TABLE events").unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{}/events", server.base))
        .bearer_auth(&key)
        .header("x-request-id", "cause-chain-test-1")
        .json(&json!({"event_type": "t", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let body = resp.text().await.unwrap();
    assert!(!body.contains("table"), "the body stays generic: {body}");
    let line = server
        .log_line(&["cause-chain-test-1", "\"status\":500"])
        .await
        .expect("a log line for the failed request");
    println!("{line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "ERROR");
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("no such table: events"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_pages_of_huge_events_stay_under_300_mib() {
    use std::sync::Arc;
    use triggers_api::domain::{trunc_ms, AccountId, EventId, EventType, JsonObject};
    use triggers_api::store::{Dedup, Fingerprint, NewEvent, Store};

    let (dir, store) = temp_store();
    let key = creator_key(&store);
    let server = start_server(&store);
    // 200 events of ~500 KB (a 250 KB payload and 250 KB of metadata),
    // written straight into the server's store file.
    {
        let writer: Arc<dyn Store> = Arc::new(
            triggers_api::store::sqlite::SqliteStore::open(&dir.path().join("t.db")).unwrap(),
        );
        let account = AccountId::parse("acme").unwrap();
        let pad = "p".repeat(250 * 1024);
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let (writer, account, pad) = (writer.clone(), account.clone(), pad.clone());
            tasks.push(tokio::spawn(async move {
                let event = NewEvent {
                    event_id: EventId::new_v7(),
                    account,
                    event_type: EventType::parse("big").unwrap(),
                    payload: JsonObject::from_json_text(format!(r#"{{"i":{i},"pad":"{pad}"}}"#))
                        .unwrap(),
                    source: None,
                    metadata: JsonObject::from_json_text(format!(r#"{{"m":"{pad}"}}"#)).unwrap(),
                    timestamp: trunc_ms(chrono::Utc::now()),
                };
                let mut fp = [0u8; 32];
                fp[..4].copy_from_slice(&i.to_be_bytes());
                let dedup = Dedup {
                    fingerprint: Fingerprint(fp),
                    window: Duration::from_secs(300),
                    margin: Duration::ZERO,
                };
                writer.insert_event(event, dedup).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let before = server.peak_rss_kib();
    let client = reqwest::Client::new();
    let mut pages = Vec::new();
    for _ in 0..8 {
        let (client, url, key) = (
            client.clone(),
            format!("{}/inbox?limit=200", server.base),
            key.clone(),
        );
        pages.push(tokio::spawn(async move {
            let resp = client.get(url).bearer_auth(key).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body = resp.bytes().await.unwrap();
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["pagination"]["has_more"], true);
            (body.len(), v["events"].as_array().unwrap().len())
        }));
    }
    let mut sizes = Vec::new();
    for p in pages {
        sizes.push(p.await.unwrap());
    }
    let peak = server.peak_rss_kib();
    println!(
        "8 concurrent GET /inbox?limit=200 over 200 events of ~500 KB: pages {sizes:?}, \
         server peak RSS {} MiB -> {} MiB",
        before / 1024,
        peak / 1024
    );
    for (bytes, events) in sizes {
        assert!(
            events >= 1 && bytes <= 2 * 1024 * 1024,
            "{events} events, {bytes} bytes"
        );
    }
    assert!(peak < 300 * 1024, "peak RSS {} MiB", peak / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_trickling_connections_under_ulimit_256_cannot_starve_status() {
    use tokio::io::AsyncWriteExt;
    let (_dir, store) = temp_store();
    let server = start_server_with(&store, &[], Some(256));
    let listening = server
        .log_line(&["listening"])
        .await
        .expect("the listening line");
    let v: Value = serde_json::from_str(&listening).unwrap();
    let cap = v["max_connections"].as_u64().unwrap();
    assert!(cap < 256, "the cap stays under the open-file limit: {cap}");
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut trickling = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
        trickling.push(s);
    }
    // The trickle goes on while /status is asked, a byte at a time.
    for s in trickling.iter_mut() {
        let _ = s.write_all(b"X").await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    for _ in 0..5 {
        let started = Instant::now();
        let resp = client
            .get(format!("{}/status", server.base))
            .send()
            .await
            .expect("GET /status answers");
        assert_eq!(resp.status(), 200);
        println!(
            "GET /status beside 300 trickling connections: {:?}",
            started.elapsed()
        );
    }
    let log = server.log.lock().unwrap().join("\n");
    assert!(!log.contains("Too many open files"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_budget_answers_503_and_status_degrades_while_reads_go_on() {
    let (_dir, store) = temp_store();
    let key = creator_key(&store);
    let server = start_server_with(&store, &[("TRIGGERS_SQLITE_MAX_DB_BYTES", "262144")], None);
    let client = reqwest::Client::new();
    let pad = "x".repeat(8 * 1024);
    let mut answers = std::collections::BTreeMap::<u16, u32>::new();
    let mut first_refusal = None;
    for i in 0..200 {
        let resp = client
            .post(format!("{}/events", server.base))
            .bearer_auth(&key)
            .json(&json!({"event_type": "fill", "payload": {"i": i, "pad": pad}}))
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        *answers.entry(status).or_default() += 1;
        if status != 201 {
            assert_eq!(status, 503, "a full budget is 'unavailable', not a 500");
            assert_eq!(resp.headers()["retry-after"], "1");
            first_refusal.get_or_insert(i);
            break;
        }
    }
    println!("writes until the 256 KiB budget ran out: {answers:?}");
    assert!(first_refusal.is_some(), "the budget ran out: {answers:?}");
    let status = client
        .get(format!("{}/status", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 503);
    let v: Value = status.json().await.unwrap();
    assert_eq!(v["store"]["writable"], false, "{v}");
    // Reads still work (and /status turns ok after the next successful
    // write: tests/it/resilience.rs).
    let inbox = client
        .get(format!("{}/inbox?limit=1", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(inbox.status(), 200);
}
