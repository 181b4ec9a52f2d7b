//! Goose load test of the Triggers API.
//!
//! Without `--host` it starts `target/release/triggers-api serve` itself on
//! the embedded store in a temp dir on a free 127.0.0.1 port, creates a key
//! through the CLI, runs, and stops the server. With `--host` it targets that
//! deployment, with the key from `TRIGGERS_API_KEY`.
//!
//! Scenarios (`--scenario`): `status`, `ingest`, `drain`, `inbox`, `mixed`,
//! `hotpath` (status, then ingest, then ingest + inbox readers, in one run
//! against one server) and `lease` (consumers lease and acknowledge while
//! producers ingest; see `lease.rs`). Thresholds are enforced: the exit status is 1
//! when one is missed. Reports go to `target/loadtest/`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use goose::client::GooseClientBuilder;
use goose::config::GooseConfiguration;
use goose::goose::{GooseMethod, GooseRequest, GooseUser, Scenario, Transaction, TransactionError};
use goose::metrics::GooseMetrics;
use goose::prelude::{GooseAttack, TransactionResult};
use goose::test_plan::TestPlanStepAction;
use serde_json::{json, Value};

mod lean;
mod lease;

use lease::lease_and_ack;

/// Events are spread over this many event types so that drain consumers
/// (one type each) do not compete for the same events.
const PARTS: usize = 8;
const PAYLOAD_BYTES: usize = 1024;
const PAGE: u32 = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    /// GET /status only: the HTTP stack's ceiling.
    Status,
    /// Producers POST unique 1 KiB events.
    Ingest,
    /// Consumers page the inbox and DELETE every event (after a seed).
    Drain,
    /// Readers page the inbox (limit 50) with cursors, read-only (after a seed).
    Inbox,
    /// POST/inbox/get/ack/status at 10:3:2:1:1 (after a small seed).
    Mixed,
    /// status, then ingest, then ingest + inbox readers; checks the hot-path goals.
    Hotpath,
    /// --consumers lease 100 events at a time and acknowledge each lease
    /// while --producers ingest (after a seed); checks that no event is
    /// leased twice within a lease or after its acknowledgement.
    Lease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    /// goose: per-request metrics, HTML/JSON reports, every scenario.
    Goose,
    /// A minimal keep-alive HTTP/1.1 client on one thread (status, ingest,
    /// inbox, hotpath): leaves the server more of a shared machine's CPU.
    Lean,
}

#[derive(Debug, Parser)]
#[command(
    name = "triggers-loadtest",
    about = "Closed-loop (goose) load test of the Triggers API",
    after_help = "Without --host the server is built elsewhere (scripts/loadtest.sh builds it) and \
                  started here on a temp SQLite store. Goose is closed-loop: it hides coordinated \
                  omission; scripts/openloop.sh runs the open-loop (fixed-rate) counterpart."
)]
struct Args {
    /// Base URL of a running deployment (keys from TRIGGERS_API_KEY). Only
    /// loopback addresses are allowed unless --allow-remote is given.
    #[arg(long, env = "TRIGGERS_LOADTEST_HOST")]
    host: Option<String>,
    /// Allow a --host that is not on 127.0.0.0/8 or localhost.
    #[arg(long)]
    allow_remote: bool,
    /// A creator key for --host.
    #[arg(long, env = "TRIGGERS_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// PID of the --host server on this machine, to report its peak RSS.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Which scenario to run.
    #[arg(long, value_enum, default_value_t = Kind::Mixed)]
    scenario: Kind,
    /// Which client drives the load (reports: goose writes HTML and JSON per
    /// phase; both write the summary JSON).
    #[arg(long, value_enum, default_value_t = Engine::Goose)]
    engine: Engine,
    /// Concurrent users (closed loop: each waits for its answer).
    #[arg(long, default_value_t = 32)]
    users: usize,
    /// lease scenario: consumers (each leases 100, then acknowledges them).
    #[arg(long, default_value_t = 8)]
    consumers: usize,
    /// lease scenario: producers POSTing events meanwhile.
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// lease scenario: milliseconds a consumer spends "processing" each
    /// lease before acknowledging it (0: ack at once, a closed loop as fast
    /// as the server answers).
    #[arg(long, default_value_t = 0)]
    process_ms: u64,
    /// Seconds each phase runs after all users have started.
    #[arg(long, default_value_t = 30)]
    run_time: u64,
    /// Events POSTed before drain / inbox / mixed so there is something to read.
    #[arg(long)]
    seed_events: Option<usize>,
    /// The server binary to start when --host is not given.
    #[arg(long, default_value = "target/release/triggers-api")]
    server_bin: PathBuf,
    /// RUST_LOG for the server it starts (the default, info, logs every request).
    #[arg(long, default_value = "info")]
    server_log: String,
    /// Reports (HTML, JSON) and the summary go here.
    #[arg(long, default_value = "target/loadtest")]
    out_dir: PathBuf,
    /// Threshold: POST /events p95, ms.
    #[arg(long, default_value_t = 100.0)]
    post_p95_ms: f64,
    /// Threshold: GET /inbox p95, ms.
    #[arg(long, default_value_t = 200.0)]
    inbox_p95_ms: f64,
    /// Threshold: events ingested (or, for drain, acknowledged) per second.
    #[arg(long, default_value_t = 1000.0)]
    min_events_per_sec: f64,
    /// Threshold: share of failed requests.
    #[arg(long, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Also fail when a hot-path goal (hotpath scenario) is missed.
    #[arg(long)]
    strict: bool,
    /// Report, but never fail on thresholds.
    #[arg(long)]
    no_thresholds: bool,
}

/// What every transaction needs; set once before the first phase.
struct Target {
    key: String,
    nonce: u64,
}

static TARGET: OnceLock<Target> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);
static LAST_ACK: Mutex<Option<Instant>> = Mutex::new(None);

fn target() -> &'static Target {
    TARGET.get().expect("set before any phase runs")
}

/// A unique payload of exactly `PAYLOAD_BYTES` bytes of compact JSON.
fn event_body() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = target();
    let head = format!(
        r#"{{"n":{n},"nonce":"{:016x}","order":{{"id":"ord_{n}","total":"19.99","currency":"EUR","lines":[{{"sku":"A-1","qty":2,"price":4.5}},{{"sku":"B-7","qty":1,"price":10.99}}]}},"customer":{{"id":42,"vip":false,"email":null}},"pad":""#,
        t.nonce
    );
    let pad = PAYLOAD_BYTES.saturating_sub(head.len() + 2);
    let payload = format!("{head}{}\"}}", "x".repeat(pad));
    format!(
        r#"{{"event_type":"load.p{}","source":"loadtest","payload":{payload},"metadata":{{"run":"{:016x}"}}}}"#,
        n % PARTS as u64,
        t.nonce
    )
}

async fn post_event(user: &mut GooseUser) -> TransactionResult {
    let rb = user
        .get_request_builder(&GooseMethod::Post, "/events")?
        .bearer_auth(&target().key)
        .header("content-type", "application/json")
        .body(event_body());
    let req = GooseRequest::builder()
        .method(GooseMethod::Post)
        .path("/events")
        .name("/events")
        .expect_status_code(201)
        .set_request_builder(rb)
        .build();
    let resp = user.request(req).await?;
    // Remember ids for the mixed scenario's GET and DELETE.
    if let Some(recent) = user.get_session_data_mut::<Recent>() {
        if let Ok(r) = resp.response {
            if let Ok(v) = r.json::<Value>().await {
                if let Some(id) = v["event_id"].as_str() {
                    recent.ids.push_back(id.to_owned());
                    if recent.ids.len() > 256 {
                        recent.ids.pop_front();
                    }
                }
            }
        }
    }
    Ok(())
}

async fn get_status(user: &mut GooseUser) -> TransactionResult {
    let req = GooseRequest::builder()
        .path("/status")
        .name("/status")
        .build();
    user.request(req).await?;
    Ok(())
}

/// GET /inbox; returns the parsed page (None when the request failed).
async fn inbox_page(
    user: &mut GooseUser,
    cursor: Option<&str>,
    event_type: Option<&str>,
) -> Result<Option<Value>, Box<TransactionError>> {
    let limit = PAGE.to_string();
    let mut q: Vec<(&str, &str)> = vec![("limit", limit.as_str())];
    if let Some(c) = cursor {
        q.push(("cursor", c));
    }
    if let Some(t) = event_type {
        q.push(("event_type", t));
    }
    let rb = user
        .get_request_builder(&GooseMethod::Get, "/inbox")?
        .bearer_auth(&target().key)
        .query(&q);
    let req = GooseRequest::builder()
        .path("/inbox")
        .name("/inbox")
        .set_request_builder(rb)
        .build();
    let resp = user.request(req).await?;
    match resp.response {
        Ok(r) if r.status().is_success() => Ok(r.json::<Value>().await.ok()),
        _ => Ok(None),
    }
}

async fn get_one(user: &mut GooseUser, id: &str) -> TransactionResult {
    let path = format!("/events/{id}");
    let rb = user
        .get_request_builder(&GooseMethod::Get, &path)?
        .bearer_auth(&target().key);
    let req = GooseRequest::builder()
        .path(path.as_str())
        .name("/events/{id}")
        .set_request_builder(rb)
        .build();
    user.request(req).await?;
    Ok(())
}

async fn ack(user: &mut GooseUser, id: &str) -> TransactionResult {
    let path = format!("/events/{id}");
    let rb = user
        .get_request_builder(&GooseMethod::Delete, &path)?
        .bearer_auth(&target().key);
    let req = GooseRequest::builder()
        .method(GooseMethod::Delete)
        .path(path.as_str())
        .name("/events/{id}")
        .expect_status_code(204)
        .set_request_builder(rb)
        .build();
    let resp = user.request(req).await?;
    if resp.response.is_ok_and(|r| r.status().as_u16() == 204) {
        let mut last = LAST_ACK.lock().unwrap_or_else(|e| e.into_inner());
        *last = Some(Instant::now());
    }
    Ok(())
}

/// Session of a mixed-scenario user: ids it created, for GET and DELETE.
#[derive(Default, Clone)]
struct Recent {
    ids: VecDeque<String>,
}

/// Session of an inbox reader: where its walk is.
#[derive(Default, Clone)]
struct Pager {
    cursor: Option<String>,
}

async fn start_recent(user: &mut GooseUser) -> TransactionResult {
    user.set_session_data(Recent::default());
    Ok(())
}

async fn start_pager(user: &mut GooseUser) -> TransactionResult {
    user.set_session_data(Pager::default());
    Ok(())
}

/// One page of a read-only walk of the inbox; restarts at the end.
async fn walk_inbox(user: &mut GooseUser) -> TransactionResult {
    let cursor = user
        .get_session_data::<Pager>()
        .and_then(|p| p.cursor.clone());
    let page = inbox_page(user, cursor.as_deref(), None).await?;
    let next = page.and_then(|p| p["pagination"]["next_cursor"].as_str().map(str::to_owned));
    if let Some(p) = user.get_session_data_mut::<Pager>() {
        p.cursor = next;
    }
    Ok(())
}

/// A consumer: a page of its event type, then DELETE every event on it.
async fn drain_page(user: &mut GooseUser) -> TransactionResult {
    let part = format!("load.p{}", user.weighted_users_index % PARTS);
    let page = inbox_page(user, None, Some(&part)).await?;
    let ids: Vec<String> = page
        .as_ref()
        .and_then(|p| p["events"].as_array())
        .map(|evs| {
            evs.iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.is_empty() {
        // Nothing left for this consumer: back off instead of spinning.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for id in ids {
        ack(user, &id).await?;
    }
    Ok(())
}

async fn mixed_get(user: &mut GooseUser) -> TransactionResult {
    let id = user
        .get_session_data::<Recent>()
        .and_then(|r| r.ids.back().cloned());
    match id {
        Some(id) => get_one(user, &id).await,
        None => Ok(()),
    }
}

async fn mixed_ack(user: &mut GooseUser) -> TransactionResult {
    let id = user
        .get_session_data_mut::<Recent>()
        .and_then(|r| r.ids.pop_front());
    match id {
        Some(id) => ack(user, &id).await,
        None => Ok(()),
    }
}

async fn mixed_inbox(user: &mut GooseUser) -> TransactionResult {
    inbox_page(user, None, None).await.map(|_| ())
}

fn tx(t: Transaction, weight: usize) -> Result<Transaction, goose::GooseError> {
    t.set_weight(weight)
}

fn scenario(kind: Kind) -> anyhow::Result<Scenario> {
    use goose::prelude::*;
    Ok(match kind {
        Kind::Status => scenario!("status").register_transaction(transaction!(get_status)),
        Kind::Ingest => scenario!("ingest").register_transaction(transaction!(post_event)),
        Kind::Drain => scenario!("drain").register_transaction(transaction!(drain_page)),
        Kind::Inbox => scenario!("inbox")
            .register_transaction(transaction!(start_pager).set_on_start())
            .register_transaction(transaction!(walk_inbox)),
        Kind::Mixed => scenario!("mixed")
            .register_transaction(transaction!(start_recent).set_on_start())
            .register_transaction(tx(transaction!(post_event), 10)?)
            .register_transaction(tx(transaction!(mixed_inbox), 3)?)
            .register_transaction(tx(transaction!(mixed_get), 2)?)
            .register_transaction(tx(transaction!(mixed_ack), 1)?)
            .register_transaction(tx(transaction!(get_status), 1)?),
        Kind::Lease => scenario!("lease").register_transaction(transaction!(lease_and_ack)),
        Kind::Hotpath => bail!("hotpath is a plan of phases, not one scenario"),
    })
}

/// One goose run: some scenarios (with weights), some users, for a while.
struct Phase {
    name: String,
    scenarios: Vec<(Kind, usize)>,
    users: usize,
}

/// Per-endpoint figures of one phase.
#[derive(Debug, Clone, serde::Serialize)]
struct Endpoint {
    method: String,
    name: String,
    count: usize,
    fails: usize,
    per_sec: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    statuses: std::collections::BTreeMap<u16, usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PhaseResult {
    name: String,
    users: usize,
    seconds: f64,
    endpoints: Vec<Endpoint>,
    events_created_per_sec: f64,
    events_acked_per_sec: f64,
    /// Max VmRSS sampled during the phase, MiB.
    server_rss_max_mib: Option<f64>,
    /// The lease scenario's figures and findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    leases: Option<lease::LeaseStats>,
}

impl PhaseResult {
    fn endpoint(&self, method: &str, name: &str) -> Option<&Endpoint> {
        self.endpoints
            .iter()
            .find(|e| e.method == method && e.name == name)
    }
}

/// When the measured part began and ended (ms since the epoch).
fn measured_window(m: &GooseMetrics) -> Option<(i64, i64)> {
    let start = m
        .history
        .iter()
        .find(|h| matches!(h.action, TestPlanStepAction::Maintaining))?
        .timestamp;
    let end = m
        .history
        .iter()
        .find(|h| {
            matches!(
                h.action,
                TestPlanStepAction::Decreasing
                    | TestPlanStepAction::Canceling
                    | TestPlanStepAction::Finished
            )
        })?
        .timestamp;
    Some((start.timestamp_millis(), end.timestamp_millis()))
}

/// How long the measured part (after all users started) lasted.
fn measured_seconds(m: &GooseMetrics) -> f64 {
    let start = m
        .history
        .iter()
        .find(|h| matches!(h.action, TestPlanStepAction::Maintaining))
        .map(|h| h.timestamp);
    let end = m
        .history
        .iter()
        .find(|h| {
            matches!(
                h.action,
                TestPlanStepAction::Decreasing
                    | TestPlanStepAction::Canceling
                    | TestPlanStepAction::Finished
            )
        })
        .map(|h| h.timestamp);
    match (start, end) {
        (Some(s), Some(e)) if e > s => (e - s).num_milliseconds() as f64 / 1000.0,
        _ => m.duration.max(1) as f64,
    }
}

fn summarize(name: &str, users: usize, m: &GooseMetrics, rss: Option<f64>) -> PhaseResult {
    let seconds = measured_seconds(m);
    let mut endpoints: Vec<Endpoint> = m
        .requests
        .values()
        .map(|a| {
            let d = &a.raw_data;
            let ms = |p: f32| d.percentile_us(p) as f64 / 1000.0;
            Endpoint {
                method: a.method_label().to_owned(),
                name: a.path.clone(),
                count: d.counter,
                fails: a.fail_count,
                per_sec: d.counter as f64 / seconds,
                p50_ms: ms(0.50),
                p95_ms: ms(0.95),
                p99_ms: ms(0.99),
                max_ms: d.maximum_time_us as f64 / 1000.0,
                statuses: a.status_code_counts.iter().map(|(k, v)| (*k, *v)).collect(),
            }
        })
        .collect();
    endpoints.sort_by_key(|e| std::cmp::Reverse(e.count));
    let count = |method: &str, status: u16| {
        endpoints
            .iter()
            .filter(|e| e.method == method)
            .map(|e| e.statuses.get(&status).copied().unwrap_or(0))
            .sum::<usize>() as f64
    };
    let created = count("POST", 201);
    let acked = count("DELETE", 204);
    // A drain may empty the inbox before the phase ends: rate up to the
    // last acknowledgement.
    let ack_secs = LAST_ACK
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .zip(
            m.history
                .iter()
                .find(|h| matches!(h.action, TestPlanStepAction::Maintaining)),
        )
        .map(|(last, h)| {
            let since = (chrono::Utc::now() - h.timestamp).num_milliseconds() as f64 / 1000.0;
            let ago = last.elapsed().as_secs_f64();
            (since - ago).clamp(0.001, seconds)
        })
        .unwrap_or(seconds);
    PhaseResult {
        name: name.to_owned(),
        users,
        seconds,
        events_created_per_sec: created / seconds,
        events_acked_per_sec: acked / ack_secs,
        endpoints,
        server_rss_max_mib: rss,
        leases: None,
    }
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Samples the server's VmRSS every 250 ms until dropped.
struct RssSampler {
    max_kib: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let max_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = pid.map(|pid| {
            let (max_kib, stop) = (max_kib.clone(), stop.clone());
            std::thread::spawn(move || {
                // Bounded: at most one hour of samples.
                for _ in 0..14_400 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(kib) = proc_status_kib(pid, "VmRSS:") {
                        max_kib.fetch_max(kib, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            })
        });
        Self {
            max_kib,
            stop,
            handle,
        }
    }

    fn finish(mut self) -> Option<f64> {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take()?;
        let _ = h.join();
        let kib = self.max_kib.load(Ordering::Relaxed);
        (kib > 0).then(|| kib as f64 / 1024.0)
    }
}

async fn run_phase(
    args: &Args,
    host: &str,
    phase: &Phase,
    pid: Option<u32>,
) -> anyhow::Result<PhaseResult> {
    let stem = args.out_dir.join(&phase.name);
    let html = format!("{}.html", stem.display());
    let json = format!("{}.json", stem.display());
    let users = phase.users.max(phase.scenarios.len()).to_string();
    let run_time = format!("{}s", args.run_time);
    let config = GooseConfiguration::parse_args_default(&[
        "--host",
        host,
        "--users",
        &users,
        // Start everyone within a second; metrics reset once all are up.
        "--increase-rate",
        "1000",
        "--run-time",
        &run_time,
        "--timeout",
        "15",
        "--report-file",
        &html,
        "--report-file",
        &json,
        "--no-telnet",
        "--no-print-metrics",
        "--quiet",
    ])
    .map_err(|e| anyhow::anyhow!("goose configuration: {e:?}"))?;
    let mut attack = GooseAttack::initialize_with_config(config)?
        .set_client_builder_without_cookies(
            GooseClientBuilder::new()
                .without_cookies()
                .timeout(Duration::from_secs(15)),
        )?;
    for (kind, weight) in &phase.scenarios {
        attack = attack.register_scenario(scenario(*kind)?.set_weight(*weight)?);
    }
    eprintln!(
        "phase {}: {} users for {}s against {host} ...",
        phase.name, users, args.run_time
    );
    let sampler = RssSampler::start(pid);
    let metrics = attack.execute().await?;
    let rss = sampler.finish();
    let mut result = summarize(&phase.name, phase.users, &metrics, rss);
    if phase.scenarios.iter().any(|(k, _)| *k == Kind::Lease) {
        let (from, to) = measured_window(&metrics).unwrap_or((0, i64::MAX));
        let stats = lease::stats(from, to, result.seconds);
        result.events_acked_per_sec = stats.acked_per_sec;
        result.leases = Some(stats);
    }
    Ok(result)
}

/// The server this load test started: stopped (SIGTERM, then SIGKILL) on drop.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn create_key(bin: &Path, store: &str, account: &str) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args([
            "keys",
            "--store",
            store,
            "create",
            "--account",
            account,
            "--email",
            "loadtest@example.com",
            "--role",
            "creator",
            "--rate-limit",
            "100000000",
            "--json",
        ])
        .output()
        .with_context(|| format!("running {} keys create", bin.display()))?;
    if !out.status.success() {
        bail!(
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("keys create --json output")?;
    v["key"]
        .as_str()
        .map(str::to_owned)
        .context("no key in keys create output")
}

async fn wait_ready(url: &str, deadline: Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(r) = client.get(format!("{url}/status")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the server at {url} did not answer /status within {deadline:?}")
}

async fn start_server(args: &Args) -> anyhow::Result<(Server, String)> {
    if !args.server_bin.exists() {
        bail!(
            "{} not found: build it first (cargo build --release --bin triggers-api), or run scripts/loadtest.sh",
            args.server_bin.display()
        );
    }
    // The temp dir lives under target/ (on disk), not /tmp (maybe a tmpfs,
    // where fsync costs nothing): durable writes are measured as deployed.
    std::fs::create_dir_all(&args.out_dir)?;
    let dir = tempfile::Builder::new()
        .prefix("store-")
        .tempdir_in(&args.out_dir)?;
    let store = format!("sqlite://{}", dir.path().join("triggers.db").display());
    let key = create_key(&args.server_bin, &store, "loadtest")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log = std::fs::File::create(args.out_dir.join("server.log"))?;
    let child = Command::new(&args.server_bin)
        .args(["serve", "--store", &store, "--bind", &addr.to_string()])
        .env("RUST_LOG", &args.server_log)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", args.server_bin.display()))?;
    let server = Server {
        child,
        _dir: dir,
        url: format!("http://{addr}"),
    };
    wait_ready(&server.url, Duration::from_secs(30)).await?;
    Ok((server, key))
}

/// One authenticated request, so the key's (cost-12) bcrypt verification
/// happens before anything is measured.
async fn warm_up(url: &str) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .get(format!("{url}/inbox?limit=1"))
        .bearer_auth(&target().key)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("warm-up GET /inbox answered {}", r.status());
    }
    Ok(())
}

/// POSTs `n` events with 32 concurrent senders (not measured).
async fn seed(url: &str, n: usize) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    eprintln!("seeding {n} events ...");
    let client = reqwest::Client::new();
    let senders = 32.min(n);
    let mut tasks = Vec::new();
    for s in 0..senders {
        let (client, url) = (client.clone(), url.to_owned());
        let count = n / senders + usize::from(s < n % senders);
        tasks.push(tokio::spawn(async move {
            for _ in 0..count {
                let r = client
                    .post(format!("{url}/events"))
                    .bearer_auth(&target().key)
                    .header("content-type", "application/json")
                    .body(event_body())
                    .send()
                    .await?;
                if !r.status().is_success() {
                    anyhow::bail!("seed POST answered {}", r.status());
                }
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn is_loopback(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host
        .rsplit_once(':')
        .filter(|(h, p)| p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':'))
        .map_or(host, |(h, _)| h);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

#[derive(Debug, serde::Serialize)]
struct Check {
    what: String,
    value: f64,
    limit: String,
    ok: bool,
    /// Enforced (exit status) or reported only.
    enforced: bool,
}

impl Check {
    fn new(what: impl Into<String>, value: f64, op: &str, limit: f64, enforced: bool) -> Self {
        let ok = match op {
            "<" => value < limit,
            "<=" => value <= limit,
            ">=" => value >= limit,
            other => unreachable!("no comparison {other}"),
        };
        Self {
            what: what.into(),
            value,
            limit: format!("{op} {limit}"),
            ok,
            enforced,
        }
    }

    /// `value < limit`.
    fn below(what: impl Into<String>, value: f64, limit: f64, enforced: bool) -> Self {
        Self::new(what, value, "<", limit, enforced)
    }

    /// `value <= limit`.
    fn at_most(what: impl Into<String>, value: f64, limit: f64, enforced: bool) -> Self {
        Self::new(what, value, "<=", limit, enforced)
    }

    /// `value >= limit`.
    fn at_least(what: impl Into<String>, value: f64, limit: f64, enforced: bool) -> Self {
        Self::new(what, value, ">=", limit, enforced)
    }
}

fn checks(args: &Args, results: &[PhaseResult]) -> Vec<Check> {
    let mut out = Vec::new();
    for r in results {
        let total: usize = r.endpoints.iter().map(|e| e.count).sum();
        let fails: usize = r.endpoints.iter().map(|e| e.fails).sum();
        let name = &r.name;
        if total > 0 {
            let rate = fails as f64 / total as f64;
            out.push(Check::at_most(
                format!("{name}: error rate"),
                rate,
                args.max_error_rate,
                true,
            ));
        }
        if let Some(l) = &r.leases {
            out.extend(lease_checks(args, r, l));
            continue;
        }
        if let Some(e) = r.endpoint("POST", "/events") {
            out.push(Check::below(
                format!("{name}: POST /events p95 ms"),
                e.p95_ms,
                args.post_p95_ms,
                true,
            ));
            out.push(Check::at_least(
                format!("{name}: events created/s"),
                r.events_created_per_sec,
                args.min_events_per_sec,
                true,
            ));
        } else if r.endpoint("DELETE", "/events/{id}").is_some() {
            out.push(Check::at_least(
                format!("{name}: events acknowledged/s"),
                r.events_acked_per_sec,
                args.min_events_per_sec,
                true,
            ));
        }
        if let Some(e) = r.endpoint("GET", "/inbox") {
            out.push(Check::below(
                format!("{name}: GET /inbox p95 ms"),
                e.p95_ms,
                args.inbox_p95_ms,
                true,
            ));
        }
    }
    if args.scenario == Kind::Hotpath {
        out.extend(hotpath_goals(args, results));
    }
    out
}

/// The lease scenario: what it proves (enforced) and its goals (enforced
/// with --strict): ≥ 5,000 events leased and acknowledged per second, lease
/// call p95 < 20 ms.
fn lease_checks(args: &Args, r: &PhaseResult, l: &lease::LeaseStats) -> Vec<Check> {
    let name = &r.name;
    let mut out = vec![
        Check::at_most(
            format!("{name}: events leased while a lease held them"),
            l.overlapping_leases as f64,
            0.0,
            true,
        ),
        Check::at_most(
            format!("{name}: events leased after their ack"),
            l.leased_after_ack as f64,
            0.0,
            true,
        ),
        Check::at_least(
            "goal: events leased+acknowledged/s",
            l.acked_per_sec,
            5000.0,
            args.strict,
        ),
    ];
    if let Some(e) = r.endpoint("POST", "/inbox/lease") {
        out.push(Check::below(
            "goal: POST /inbox/lease p95 ms",
            e.p95_ms,
            20.0,
            args.strict,
        ));
    }
    if let Some(e) = r.endpoint("POST", "/events") {
        out.push(Check::below(
            format!("{name}: POST /events p95 ms"),
            e.p95_ms,
            args.post_p95_ms,
            true,
        ));
    }
    out
}

/// The hot-path goals of issue 4, judged on the hotpath plan's phases.
fn hotpath_goals(args: &Args, results: &[PhaseResult]) -> Vec<Check> {
    let mut out = Vec::new();
    let strict = args.strict;
    let by = |n: &str| results.iter().find(|r| r.name.ends_with(n));
    let status = by("-status").and_then(|r| r.endpoint("GET", "/status"));
    let ingest = by("-ingest");
    let post = ingest.and_then(|r| r.endpoint("POST", "/events"));
    if let (Some(s), Some(i), Some(p)) = (status, ingest, post) {
        out.push(Check::at_least(
            "goal: POST /events/s (1 KiB)",
            i.events_created_per_sec,
            5000.0,
            strict,
        ));
        out.push(Check::below(
            "goal: POST /events p95 ms",
            p.p95_ms,
            20.0,
            strict,
        ));
        let ratio = p.per_sec / s.per_sec.max(f64::MIN_POSITIVE);
        out.push(Check::at_least(
            "goal: POST/s over GET /status/s",
            ratio,
            0.3,
            strict,
        ));
    }
    if let Some(inbox) = by("-ingest+inbox").and_then(|r| r.endpoint("GET", "/inbox")) {
        out.push(Check::at_least(
            "goal: GET /inbox pages/s while ingesting",
            inbox.per_sec,
            1000.0,
            strict,
        ));
        out.push(Check::below(
            "goal: GET /inbox p95 ms while ingesting",
            inbox.p95_ms,
            50.0,
            strict,
        ));
    }
    out
}

fn print_summary(
    out: &mut impl std::io::Write,
    results: &[PhaseResult],
    hwm: Option<f64>,
    checks: &[Check],
) -> std::io::Result<()> {
    for r in results {
        writeln!(
            out,
            "\n== {} ({} users, {:.1} s measured){}",
            r.name,
            r.users,
            r.seconds,
            r.server_rss_max_mib
                .map(|m| format!(", server RSS max {m:.1} MiB"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "  {:<7}{:<15}{:>9}{:>7}{:>10}{:>9}{:>9}{:>9}{:>9}",
            "method",
            "endpoint",
            "requests",
            "fails",
            "req/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms"
        )?;
        for e in &r.endpoints {
            writeln!(
                out,
                "  {:<7}{:<15}{:>9}{:>7}{:>10.0}{:>9.2}{:>9.2}{:>9.2}{:>9.1}",
                e.method,
                e.name,
                e.count,
                e.fails,
                e.per_sec,
                e.p50_ms,
                e.p95_ms,
                e.p99_ms,
                e.max_ms
            )?;
        }
        writeln!(
            out,
            "  events created/s {:.0}, acknowledged/s {:.0}",
            r.events_created_per_sec, r.events_acked_per_sec
        )?;
        if let Some(l) = &r.leases {
            writeln!(
                out,
                "  leases: {} events leased ({} distinct, {} leased again), {} while a lease held them, \
                 {} after their ack, {} stale in acks, {} empty lease calls",
                l.events_leased,
                l.distinct_events,
                l.events_leased_again,
                l.overlapping_leases,
                l.leased_after_ack,
                l.stale_acks,
                l.empty_leases
            )?;
        }
    }
    if let Some(h) = hwm {
        writeln!(out, "\nserver peak RSS (VmHWM): {h:.1} MiB")?;
    }
    writeln!(out, "\nchecks:")?;
    for c in checks {
        writeln!(
            out,
            "  [{}] {:<45} {:>10.3}  {}{}",
            if c.ok { " ok " } else { "MISS" },
            c.what,
            c.value,
            c.limit,
            if c.enforced { "" } else { "  (goal, reported)" }
        )?;
    }
    Ok(())
}

fn plan(args: &Args) -> Vec<Phase> {
    let s = |name: &str, scenarios: Vec<(Kind, usize)>, users: usize| Phase {
        name: name.to_owned(),
        scenarios,
        users,
    };
    let u = args.users;
    match args.scenario {
        Kind::Status => vec![s("status", vec![(Kind::Status, 1)], u)],
        Kind::Ingest => vec![s("ingest", vec![(Kind::Ingest, 1)], u)],
        Kind::Drain => vec![s("drain", vec![(Kind::Drain, 1)], u.min(PARTS))],
        Kind::Inbox => vec![s("inbox", vec![(Kind::Inbox, 1)], u)],
        Kind::Mixed => vec![s("mixed", vec![(Kind::Mixed, 1)], u)],
        Kind::Lease => {
            let mut scenarios = vec![(Kind::Lease, args.consumers.max(1))];
            if args.producers > 0 {
                scenarios.push((Kind::Ingest, args.producers));
            }
            vec![s(
                "lease",
                scenarios,
                args.consumers.max(1) + args.producers,
            )]
        }
        Kind::Hotpath => vec![
            s("hotpath-status", vec![(Kind::Status, 1)], u),
            s("hotpath-ingest", vec![(Kind::Ingest, 1)], u),
            s(
                "hotpath-ingest+inbox",
                vec![(Kind::Ingest, 1), (Kind::Inbox, 1)],
                u,
            ),
        ],
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.out_dir)?;
    let (server, url, key, pid) = match &args.host {
        Some(h) => {
            if !is_loopback(h) && !args.allow_remote {
                bail!("--host {h} is not a loopback address; pass --allow-remote to load a remote deployment you own");
            }
            let key = args
                .key
                .clone()
                .context("--host needs a creator key in TRIGGERS_API_KEY (or --key)")?;
            (
                None,
                h.trim_end_matches('/').to_owned(),
                key,
                args.server_pid,
            )
        }
        None => {
            let (server, key) = start_server(&args).await?;
            let url = server.url.clone();
            let pid = server.child.id();
            eprintln!("started {} (pid {pid}) at {url}", args.server_bin.display());
            (Some(server), url, key, Some(pid))
        }
    };
    lease::set_process_ms(args.process_ms);
    let _ = TARGET.set(Target {
        key,
        nonce: rand::random(),
    });
    wait_ready(&url, Duration::from_secs(10)).await?;
    warm_up(&url).await?;
    let seed_n = args.seed_events.unwrap_or(match args.scenario {
        Kind::Drain => 30_000,
        Kind::Inbox | Kind::Hotpath => 5_000,
        Kind::Lease => 100_000,
        Kind::Mixed => 1_000,
        Kind::Status | Kind::Ingest => 0,
    });
    seed(&url, seed_n).await?;

    let mut results = Vec::new();
    for phase in plan(&args) {
        let r = match args.engine {
            Engine::Goose => run_phase(&args, &url, &phase, pid).await?,
            Engine::Lean => {
                tokio::task::block_in_place(|| lean::run_phase(&url, &phase, args.run_time, pid))?
            }
        };
        results.push(r);
    }
    let hwm = pid
        .and_then(|p| proc_status_kib(p, "VmHWM:"))
        .map(|k| k as f64 / 1024.0);
    drop(server);

    let checks = checks(&args, &results);
    let mut stdout = std::io::stdout().lock();
    print_summary(&mut stdout, &results, hwm, &checks)?;
    let name = format!("{:?}", args.scenario).to_lowercase();
    let summary = json!({
        "scenario": name,
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "host": url,
        "users": if args.scenario == Kind::Lease {
            args.consumers.max(1) + args.producers
        } else {
            args.users
        },
        "consumers": (args.scenario == Kind::Lease).then_some(args.consumers),
        "producers": (args.scenario == Kind::Lease).then_some(args.producers),
        "process_ms": (args.scenario == Kind::Lease).then_some(args.process_ms),
        "run_time_secs": args.run_time,
        "seed_events": seed_n,
        "server_peak_rss_mib": hwm,
        "phases": results,
        "checks": checks,
        "finished_at": chrono::Utc::now().to_rfc3339(),
    });
    let path = args.out_dir.join(format!("summary-{name}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)?;
    writeln!(
        stdout,
        "\nreports: {}/{{{name}*.html,{name}*.json}}, summary {}",
        args.out_dir.display(),
        path.display()
    )?;
    let failed = checks.iter().any(|c| c.enforced && !c.ok);
    if failed && args.no_thresholds {
        writeln!(stdout, "thresholds missed (not enforced: --no-thresholds)")?;
        return Ok(true);
    }
    if failed {
        writeln!(stdout, "FAILED: a threshold was missed")?;
    }
    Ok(!failed)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_1_kib_and_unique() {
        let _ = TARGET.set(Target {
            key: String::new(),
            nonce: 7,
        });
        let a: Value = serde_json::from_str(&event_body()).expect("json");
        let b: Value = serde_json::from_str(&event_body()).expect("json");
        let pa = serde_json::to_string(&a["payload"]).expect("text");
        assert_eq!(pa.len(), PAYLOAD_BYTES);
        assert_ne!(a["payload"], b["payload"]);
    }

    #[test]
    fn checks_compare_and_print_their_limit() {
        let c = Check::below("p95", 19.9, 20.0, true);
        assert!(c.ok && c.limit == "< 20");
        assert!(!Check::below("p95", 20.0, 20.0, true).ok);
        let c = Check::at_least("ratio", 0.29, 0.3, false);
        assert!(!c.ok && c.limit == ">= 0.3" && !c.enforced);
        let c = Check::at_most("errors", 0.01, 0.01, true);
        assert!(c.ok && c.limit == "<= 0.01");
    }

    #[test]
    fn only_loopback_hosts_by_default() {
        assert!(is_loopback("http://127.0.0.1:8080"));
        assert!(is_loopback("http://localhost:1/x"));
        assert!(is_loopback("http://[::1]:80"));
        assert!(!is_loopback("http://10.0.0.1:8080"));
        assert!(!is_loopback("https://api.example.com"));
    }
}
