//! One run: the seed draws the world, the actors play it out on a runtime
//! (one thread and virtual time for the memory backend; real threads and
//! time for SQLite and DynamoDB), the run quiesces, the checker's own final
//! walks read every inbox, and the checker judges the history.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use triggers_api::domain::Role;
use triggers_api::store::dynamodb::{DynamoConfig, DynamoStore};
use triggers_api::store::memory::MemoryStore;
use triggers_api::store::sqlite::SqliteStore;
use triggers_api::store::Store;

use crate::broken::{Broken, BrokenStore};
use crate::checker::{check, CheckConfig, Violation};
use crate::config::{Backend, Params, SimConfig};
use crate::env::SimClock;
use crate::faults::{BaseLatency, FaultControl, FaultCounts, FaultyStore, Level};
use crate::history::{fmt_time, History, Kind, Note, Recorder};
use crate::workload::{self, Actor, ConsumerProtocol};
use crate::world::{create_key, SimKey, World};

/// What a run did and what the checker found.
pub struct RunResult {
    pub seed: u64,
    pub backend: &'static str,
    pub broken: Option<Broken>,
    /// The operation budget the run was given.
    pub steps: usize,
    /// Client operations (HTTP requests and stalled connections).
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub history: History,
    pub violations: Vec<Violation>,
    /// How much (virtual) time the run spanned.
    pub span_ms: u64,
    pub wall: Duration,
    pub faults: FaultCounts,
    pub instances: u64,
    pub bcrypt_runs: u64,
}

impl RunResult {
    /// `seed 42: 2000 operations, 0 violations, digest …`
    pub fn summary(&self) -> String {
        format!(
            "seed {}: {} operations ({} ok, {} fail, {} info), {} violations, digest {} [{}{}, {} simulated in {:.2} s, {} server instances, store faults {}]",
            self.seed,
            self.ops,
            self.ok,
            self.fail,
            self.info,
            self.violations.len(),
            self.history.digest,
            self.backend,
            self.broken.map(|b| format!(" broken={}", b.name())).unwrap_or_default(),
            fmt_time(self.span_ms),
            self.wall.as_secs_f64(),
            self.instances,
            self.faults.fail_before
                + self.faults.fail_after
                + self.faults.latency
                + self.faults.hang
                + self.faults.throttle,
        )
    }

    /// The failure report: per invariant, the first violation with its
    /// step, time and shortest history excerpt, and how many more.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut shown: Vec<&'static str> = Vec::new();
        for v in &self.violations {
            if shown.contains(&v.invariant) {
                continue;
            }
            shown.push(v.invariant);
            let more = self
                .violations
                .iter()
                .filter(|x| x.invariant == v.invariant)
                .count()
                - 1;
            let _ = writeln!(
                out,
                "\nVIOLATION {} (seed {}, step {} of the history, {}){}",
                v.invariant,
                self.seed,
                v.at,
                fmt_time(v.time),
                if more > 0 {
                    format!(" and {more} more like it")
                } else {
                    String::new()
                }
            );
            let _ = writeln!(out, "  {}", v.message);
            let _ = writeln!(out, "  history excerpt:");
            for line in v.excerpt(&self.history) {
                let _ = writeln!(out, "  {line}");
            }
        }
        if !self.violations.is_empty() {
            let mut args = Vec::new();
            if self.backend != "memory" {
                args.push(format!("--backend {}", self.backend));
            }
            if let Some(b) = self.broken {
                args.push(format!("--broken {}", b.name()));
            }
            let _ = writeln!(
                out,
                "\nreplay: make sim SEED={} STEPS={}{}{}",
                self.seed,
                self.steps,
                if args.is_empty() {
                    String::new()
                } else {
                    format!(" ARGS='{}'", args.join(" "))
                },
                if self.backend == "memory" {
                    ""
                } else {
                    " (real time: the same workload, not the same interleaving)"
                }
            );
        }
        out
    }
}

/// Runs `cfg` to the end and checks it.
pub fn run(cfg: &SimConfig) -> anyhow::Result<RunResult> {
    let started = std::time::Instant::now();
    let rt = if cfg.backend.deterministic() {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    let mut result = rt.block_on(simulate(cfg))?;
    drop(rt);
    result.wall = started.elapsed();
    Ok(result)
}

async fn open_store(
    cfg: &SimConfig,
) -> anyhow::Result<(Arc<dyn Store>, Option<tempfile::TempDir>)> {
    Ok(match &cfg.backend {
        Backend::Memory => (
            Arc::new(MemoryStore::with_seed(cfg.seed ^ 0x005e_c2e7)),
            None,
        ),
        Backend::Sqlite => {
            let dir = tempfile::tempdir()?;
            let store = SqliteStore::open(&dir.path().join("sim.db"))?;
            (Arc::new(store), Some(dir))
        }
        Backend::Dynamodb { endpoint } => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let store = DynamoStore::connect(&DynamoConfig {
                table_prefix: format!("sim{}x{nanos}", cfg.seed),
                endpoint_url: Some(endpoint.clone()),
                request_timeout: Duration::from_secs(2),
                max_attempts: 3,
            })
            .await?;
            store.create_tables().await?;
            (Arc::new(store), None)
        }
    })
}

async fn simulate(cfg: &SimConfig) -> anyhow::Result<RunResult> {
    let params = Params::draw(cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let epoch = DateTime::from_timestamp_millis(params.epoch_ms)
        .ok_or_else(|| anyhow::anyhow!("epoch out of range"))?;
    let clock = Arc::new(SimClock::new(epoch));
    let rec = Recorder::new(clock.clone());
    {
        let s = &params.settings;
        rec.note(Note::Settings {
            text: format!(
                "dedup window {:?}, retention {:?}, purge every {:?}, auth cache {:?}, store budget {:?}, store calls up to {:?} (between fault phases: {}), page bound {} bytes, {} connections, {} accounts",
                s.dedup_window,
                s.delivered_retention,
                s.purge_interval,
                s.auth.cache_ttl,
                s.store_timeout,
                params.store_latency,
                params.baseline.name(),
                s.max_page_bytes,
                s.http.max_connections,
                params.accounts
            ),
        });
    }
    let (raw, _dir) = open_store(cfg).await?;
    let broken = cfg
        .broken
        .map(|b| Arc::new(BrokenStore::new(b, raw.clone(), cfg.seed ^ 0xb40c)));
    let under: Arc<dyn Store> = match &broken {
        Some(b) => b.clone(),
        None => raw.clone(),
    };
    let faults = Arc::new(FaultControl::new(
        cfg.seed ^ 0xfa17,
        params.profile.max_store_latency,
        BaseLatency(if cfg.backend.deterministic() {
            params.store_latency
        } else {
            // A real store takes its own time.
            Duration::ZERO
        }),
    ));
    let store: Arc<dyn Store> = Arc::new(FaultyStore::new(under, faults.clone()));

    // Keys: straight into the store, as the admin CLI would.
    let accounts: Vec<String> = (0..params.accounts).map(|i| format!("acct{i}")).collect();
    let mut keys: Vec<SimKey> = Vec::new();
    for (ai, a) in accounts.iter().enumerate() {
        for p in 0..params.producers {
            let limit = if ai == 0 && p == 0 {
                params.low_rate_limit
            } else {
                100_000
            };
            keys.push(
                create_key(
                    raw.as_ref(),
                    &mut rng,
                    &clock,
                    &format!("{a}-p{p}"),
                    a,
                    Role::Creator,
                    limit,
                )
                .await?,
            );
        }
        for c in 0..params.consumers {
            keys.push(
                create_key(
                    raw.as_ref(),
                    &mut rng,
                    &clock,
                    &format!("{a}-c{c}"),
                    a,
                    Role::Creator,
                    100_000,
                )
                .await?,
            );
        }
        if params.viewers {
            keys.push(
                create_key(
                    raw.as_ref(),
                    &mut rng,
                    &clock,
                    &format!("{a}-v0"),
                    a,
                    Role::Viewer,
                    100_000,
                )
                .await?,
            );
        }
    }
    let last = accounts.last().cloned().unwrap_or_default();
    if params.revoke_at.is_some() {
        keys.push(
            create_key(
                raw.as_ref(),
                &mut rng,
                &clock,
                "acct0-doomed",
                "acct0",
                Role::Creator,
                100_000,
            )
            .await?,
        );
    }
    if params.cross_tenant {
        keys.push(
            create_key(
                raw.as_ref(),
                &mut rng,
                &clock,
                &format!("{last}-prober"),
                &last,
                Role::Creator,
                100_000,
            )
            .await?,
        );
    }
    for k in &keys {
        rec.note(Note::Key {
            label: k.label.clone(),
            key_id: k.key_id.clone(),
            account: k.account.clone(),
            role: k.role.as_str(),
        });
    }
    let n_keys = keys.len() as u64;
    let w = Arc::new(World::new(
        params.clone(),
        cfg.seed,
        rec.clone(),
        clock.clone(),
        store,
        raw.clone(),
        broken,
        faults.clone(),
        keys,
        cfg.steps,
        cfg.backend.deterministic(),
    ));
    faults.set(params.baseline);
    if params.baseline != Level::Off {
        rec.note(Note::Faults {
            level: params.baseline.name(),
        });
    }
    w.start_until_up().await;

    // The actors.
    let mut actors: Vec<(Actor, &'static str)> = Vec::new();
    for (ai, a) in accounts.iter().enumerate() {
        let net = u8::try_from(ai + 1).unwrap_or(1);
        for p in 0..params.producers {
            let label = format!("{a}-p{p}");
            let role = if ai == 0 && p == 0 && params.huge {
                "huge"
            } else {
                "producer"
            };
            actors.push((
                Actor::new(&w, &label, a, w.key(&label), net, 10 + p as u8),
                role,
            ));
        }
        for c in 0..params.consumers {
            let label = format!("{a}-c{c}");
            actors.push((
                Actor::new(&w, &label, a, w.key(&label), net, 20 + c as u8),
                "consumer",
            ));
        }
        if params.viewers {
            let label = format!("{a}-v0");
            actors.push((Actor::new(&w, &label, a, w.key(&label), net, 30), "viewer"));
        }
        // Lease consumers (v2), two to four sharing the inbox, on the first
        // consumer's key.
        let mut lr =
            ChaCha8Rng::seed_from_u64(cfg.seed ^ workload::stable_hash(&format!("{a}-leases")));
        let label = format!("{a}-c0");
        for l in 0..lr.random_range(2..=4u8) {
            actors.push((
                Actor::new(&w, &format!("{a}-l{l}"), a, w.key(&label), net, 60 + l),
                "lease",
            ));
        }
    }
    if params.revoke_at.is_some() {
        actors.push((
            Actor::new(&w, "acct0-doomed", "acct0", w.key("acct0-doomed"), 1, 40),
            "producer",
        ));
    }
    if params.cross_tenant {
        let label = format!("{last}-prober");
        actors.push((
            Actor::new(&w, &label, &last, w.key(&label), 99, 1),
            "prober",
        ));
    }
    if params.slow_heads {
        actors.push((Actor::new(&w, "slow-head", "-", None, 250, 1), "slow"));
    }
    let wrong: Vec<Actor> = if params.wrong_secrets {
        (0..4)
            .map(|i| Actor::new(&w, &format!("wrong-secret{i}"), "-", None, 200 + i, 1))
            .collect()
    } else {
        Vec::new()
    };
    let n_actors = u32::try_from(actors.len() + usize::from(!wrong.is_empty())).unwrap_or(1);
    let steps = u32::try_from(cfg.steps.max(1)).unwrap_or(u32::MAX);
    // Each actor's mean think time, so that the op budget lasts about the
    // run's duration (an actor's turn makes about two requests).
    let pace = (params.profile.duration * n_actors * 2 / steps).max(Duration::from_millis(1));
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    for (a, role) in actors {
        let w = w.clone();
        tasks.push(tokio::spawn(async move {
            match role {
                "producer" => workload::producer(a, w, pace, false).await,
                "huge" => workload::producer(a, w, pace, true).await,
                "consumer" => workload::consumer(a, w, pace, ConsumerProtocol::WalkAndAck).await,
                "lease" => workload::lease_consumer(a, w, pace).await,
                "viewer" => workload::viewer(a, w, pace).await,
                "prober" => workload::cross_tenant(a, w, pace * 2).await,
                _ => workload::slow_heads(a, w, pace * 4).await,
            }
        }));
    }
    if !wrong.is_empty() {
        // A few bursts a run.
        tasks.push(tokio::spawn(workload::wrong_secrets(
            wrong,
            w.clone(),
            params.profile.duration / 5,
        )));
    }
    let mut chaos: Vec<JoinHandle<()>> = Vec::new();
    if cfg.faults {
        for (i, f) in [0u64, 1, 2].into_iter().enumerate() {
            let w = w.clone();
            let r = ChaCha8Rng::seed_from_u64(cfg.seed ^ (0xc4a0 + f));
            chaos.push(tokio::spawn(async move {
                match i {
                    0 => workload::restarts(w, r).await,
                    1 => workload::store_faults(w, r).await,
                    _ => workload::partitions(w, r).await,
                }
            }));
        }
    }
    if let Some(at) = params.revoke_at {
        chaos.push(tokio::spawn(workload::revoke(
            w.clone(),
            at,
            "acct0-doomed".to_owned(),
        )));
    }
    for t in tasks {
        t.await?;
    }
    w.quiesce();
    for t in chaos {
        t.await?;
    }

    // Quiesce: every fault off, a server up, stragglers done.
    faults.set(Level::Off);
    w.net.heal();
    rec.note(Note::Quiesce);
    if w.state().is_none() {
        w.start_until_up().await;
    }
    // Nothing is in flight on the client side; what may linger in the
    // server is a store call (the purge loop's) within its budget.
    tokio::time::sleep(params.settings.store_timeout * 2).await;
    for (ai, a) in accounts.iter().enumerate() {
        let label = format!("{a}-c0");
        let mut checker = Actor::new(
            &w,
            &format!("final-{a}"),
            a,
            w.key(&label),
            150,
            u8::try_from(ai + 1).unwrap_or(1),
        );
        checker.walk(&w, 200, None, true, 0.0, 0.0).await;
        checker
            .walk_state(&w, 200, None, true, true, 0.0, 0.0)
            .await;
    }
    // Everything closed: nothing may be left running in the server.
    tokio::time::sleep(params.profile.backoff * 4).await;
    if let Some(state) = w.state() {
        rec.note(Note::Resource {
            what: "bcrypt runs under way",
            value: state.metrics.auth.bcrypt_in_flight.get(),
        });
        rec.note(Note::Resource {
            what: "open connections",
            value: state.metrics.connections.open_now(),
        });
    }
    let bcrypt_runs = w.total_bcrypt_runs();
    w.stop_server().await;
    let span_ms = clock.elapsed_ms();

    let history = rec.finish();
    let s = &params.settings;
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let check_cfg = CheckConfig {
        dedup_window_ms: ms(s.dedup_window),
        retention_ms: ms(s.delivered_retention),
        auth_ttl_ms: ms(s.auth.cache_ttl),
        max_page_bytes: s.max_page_bytes,
        header_timeout_ms: ms(s.http.header_read_timeout),
        per_key_per_minute: s.auth.per_key_per_minute,
        per_source_per_minute: s.auth.per_source_per_minute,
        keys: n_keys,
        shutdown_bound_ms: ms(s.http.shutdown_grace + s.store_timeout) + 2000,
        max_leases: s.max_leases,
    };
    let violations = check(&history, &check_cfg);
    let (mut ok, mut fail, mut info) = (0, 0, 0);
    for c in history.all_calls() {
        match c.outcome.map_or(Kind::Info, |o| o.kind()) {
            Kind::Ok => ok += 1,
            Kind::Fail => fail += 1,
            Kind::Info => info += 1,
        }
    }
    Ok(RunResult {
        seed: cfg.seed,
        backend: cfg.backend.name(),
        broken: cfg.broken,
        steps: cfg.steps,
        ops: history.calls.len(),
        ok,
        fail,
        info,
        history,
        violations,
        span_ms,
        wall: Duration::ZERO,
        faults: faults.counts(),
        instances: w.instances(),
        bcrypt_runs,
    })
}

/// A seed drawn from the OS (for `sim-long`).
pub fn random_seed() -> u64 {
    rand::rng().random()
}
