//! The simulated world the actors share: the run's parameters, the history
//! recorder, the network, the server instances (started, restarted and
//! stopped through the service's own `Application`), the keys, and a board
//! of what has been seen (ids, cursors, contents) for actors to reuse.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use triggers_api::clock::Clock;
use triggers_api::domain::{trunc_ms, AccountId, ApiKeyRecord, Email, KeyId, KeyStatus, Role};
use triggers_api::state::Providers;
use triggers_api::store::Store;
use triggers_api::{AppState, Application};

use crate::broken::BrokenStore;
use crate::config::Params;
use crate::env::{check_on_runtime, SeededEventIds, SimClock};
use crate::faults::FaultControl;
use crate::history::{Content, Note, Recorder};
use crate::net::Network;

/// bcrypt cost of the simulated keys (the minimum: the work is the same
/// code path, only cheaper).
pub const KEY_BCRYPT_COST: u32 = 4;

/// A key the simulation created.
#[derive(Debug, Clone)]
pub struct SimKey {
    pub label: String,
    pub key_id: String,
    pub token: String,
    pub account: String,
    pub role: Role,
}

/// Creates a key record directly in the store (the admin path), with its
/// secret and salt drawn from `rng` so the run replays.
pub async fn create_key(
    store: &dyn Store,
    rng: &mut ChaCha8Rng,
    clock: &SimClock,
    label: &str,
    account: &str,
    role: Role,
    rate_limit: u32,
) -> anyhow::Result<SimKey> {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let id: String = (0..KeyId::LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let mut salt = [0u8; 16];
    rng.fill_bytes(&mut salt);
    let hash = bcrypt::hash_with_salt(&secret, KEY_BCRYPT_COST, salt)?.to_string();
    let key_id = KeyId::parse(&id).ok_or_else(|| anyhow::anyhow!("bad key id"))?;
    let record = ApiKeyRecord {
        key_id,
        account: AccountId::parse(account).map_err(|e| anyhow::anyhow!("{e}"))?,
        email: Email::parse(&format!("{label}@{account}.sim"))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        role,
        status: KeyStatus::Active,
        rate_limit_per_minute: rate_limit,
        secret_hash: hash,
        created_at: trunc_ms(clock.now()),
    };
    store.create_key(&record).await?;
    Ok(SimKey {
        label: label.to_owned(),
        token: format!("trg_{id}_{secret}"),
        key_id: id,
        account: account.to_owned(),
        role,
    })
}

/// What actors have seen, for others to reuse: event ids per account (for
/// viewers and the cross-tenant prober), the latest cursor per account, and
/// contents sent per account (for identical re-sends).
#[derive(Default)]
pub struct Board {
    pub ids: BTreeMap<String, Vec<String>>,
    pub cursors: BTreeMap<String, String>,
    pub contents: BTreeMap<String, Vec<Content>>,
}

const BOARD_KEEP: usize = 200;

impl Board {
    pub fn add_id(&mut self, account: &str, id: &str) {
        let ids = self.ids.entry(account.to_owned()).or_default();
        ids.push(id.to_owned());
        if ids.len() > BOARD_KEEP {
            ids.remove(0);
        }
    }

    pub fn add_content(&mut self, c: &Content) {
        let cs = self.contents.entry(c.account.clone()).or_default();
        cs.push(c.clone());
        if cs.len() > BOARD_KEEP {
            cs.remove(0);
        }
    }
}

struct Running {
    instance: u32,
    state: AppState,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// The server instances over one store.
pub struct Server {
    running: Mutex<Option<Running>>,
    instances: AtomicU64,
    /// Instances that started (an instance whose start-up store read
    /// failed never served).
    started: AtomicU64,
    /// bcrypt runs of instances that are gone.
    past_runs: AtomicU64,
}

/// Everything the actors share.
pub struct World {
    pub params: Params,
    pub seed: u64,
    pub rec: Recorder,
    pub net: Network,
    pub clock: Arc<SimClock>,
    /// The store as the service gets it (with faults).
    pub store: Arc<dyn Store>,
    /// The store without faults (the admin path).
    pub admin: Arc<dyn Store>,
    pub broken: Option<Arc<BrokenStore>>,
    pub faults: Arc<FaultControl>,
    pub ids: Arc<SeededEventIds>,
    pub board: Mutex<Board>,
    pub server: Server,
    pub keys: Vec<SimKey>,
    pub steps: usize,
    pub end: Instant,
    /// Virtual time on one thread (the memory backend): seeded event ids,
    /// bcrypt as a task of the runtime. Otherwise production's providers.
    pub deterministic: bool,
    sends: AtomicU64,
    walks: AtomicU64,
    quiesced: AtomicBool,
    stop: tokio::sync::watch::Sender<bool>,
}

impl World {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        params: Params,
        seed: u64,
        rec: Recorder,
        clock: Arc<SimClock>,
        store: Arc<dyn Store>,
        admin: Arc<dyn Store>,
        broken: Option<Arc<BrokenStore>>,
        faults: Arc<FaultControl>,
        keys: Vec<SimKey>,
        steps: usize,
        deterministic: bool,
    ) -> Self {
        let end = Instant::now() + params.profile.duration;
        Self {
            ids: Arc::new(SeededEventIds::new(seed ^ 0x1d5)),
            params,
            seed,
            rec,
            net: Network::new(),
            clock,
            store,
            admin,
            broken,
            faults,
            board: Mutex::new(Board::default()),
            server: Server {
                running: Mutex::new(None),
                instances: AtomicU64::new(0),
                started: AtomicU64::new(0),
                past_runs: AtomicU64::new(0),
            },
            keys,
            steps,
            end,
            deterministic,
            sends: AtomicU64::new(0),
            walks: AtomicU64::new(0),
            quiesced: AtomicBool::new(false),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    pub fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        self.board.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The workload is over: the op budget is spent or the time is up.
    pub fn over(&self) -> bool {
        self.quiesced.load(Ordering::Relaxed)
            || self.rec.calls() >= self.steps
            || Instant::now() >= self.end
    }

    /// Ends the workload: every actor and chaos task stops at its next
    /// step (waits end at once).
    pub fn quiesce(&self) {
        self.quiesced.store(true, Ordering::Relaxed);
        self.stop.send_replace(true);
    }

    pub fn is_quiesced(&self) -> bool {
        self.quiesced.load(Ordering::Relaxed)
    }

    /// Waits `d` (at most until the end of the run, or until it is
    /// quiesced); whether the workload goes on.
    pub async fn pause(&self, d: Duration) -> bool {
        let left = self.end.saturating_duration_since(Instant::now());
        let mut stop = self.stop.subscribe();
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {}
            () = tokio::time::sleep(d.min(left)) => {}
        }
        !self.over()
    }

    pub fn next_send(&self) -> u64 {
        self.sends.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn next_walk(&self) -> u64 {
        self.walks.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn key(&self, label: &str) -> Option<&SimKey> {
        self.keys.iter().find(|k| k.label == label)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.server
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a new server instance on the network (it takes every new
    /// connection from now on). `false` when it could not start (its store
    /// read at start-up failed); the old instance, if any, is left running.
    pub async fn start_server(&self) -> bool {
        let instance = u32::try_from(self.server.instances.fetch_add(1, Ordering::Relaxed) + 1)
            .unwrap_or(u32::MAX);
        // A deterministic run injects its ids and runs bcrypt on its own
        // thread; a real-time run uses production's.
        let providers = if self.deterministic {
            Providers {
                event_ids: self.ids.clone(),
                check_runner: check_on_runtime,
            }
        } else {
            Providers::default()
        };
        let (listener, route) = self.net.listener();
        let built = Application::build_on(
            self.store.clone(),
            self.clock.clone(),
            self.params.settings.clone(),
            providers,
            listener,
        )
        .await;
        let app = match built {
            Ok(app) => app,
            Err(_) => {
                self.rec.note(Note::ServerStartFailed { instance });
                return false;
            }
        };
        self.net.route(route);
        self.server.started.fetch_add(1, Ordering::Relaxed);
        let state = app.state().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let old = self.running().replace(Running {
            instance,
            state,
            stop,
            task,
        });
        self.rec.note(Note::ServerStarted { instance });
        if let Some(old) = old {
            self.retire(old).await;
        }
        true
    }

    /// Graceful stop of an instance: its shutdown signal, then its drain.
    async fn retire(&self, old: Running) {
        self.server
            .past_runs
            .fetch_add(old.state.metrics.auth.bcrypt_runs.get(), Ordering::Relaxed);
        let started = Instant::now();
        let _ = old.stop.send(());
        let _ = old.task.await;
        self.rec.note(Note::ServerStopped {
            instance: old.instance,
            took_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
    }

    /// Starts an instance, trying again (backing off up to a minute, as a
    /// supervisor would) while its start-up store read fails.
    pub async fn start_until_up(&self) {
        let mut delay = self.params.profile.backoff;
        while !self.start_server().await {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.params.profile.backoff * 120);
        }
    }

    /// A rolling restart: a new instance starts, then the old one drains
    /// (if the new one cannot start, the old one keeps serving).
    pub async fn restart_graceful(&self) {
        let instance = self.running().as_ref().map_or(0, |r| r.instance);
        self.rec.note(Note::Restart {
            graceful: true,
            instance,
        });
        self.restarted();
        let mut delay = self.params.profile.backoff;
        for _ in 0..5 {
            if self.start_server().await {
                return;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }

    /// A crash: the old instance's task is dropped mid-flight (its
    /// connections and requests with it), some downtime, a new instance.
    pub async fn restart_abrupt(&self, downtime: Duration) {
        let old = self.running().take();
        if let Some(old) = old {
            self.rec.note(Note::Restart {
                graceful: false,
                instance: old.instance,
            });
            self.server
                .past_runs
                .fetch_add(old.state.metrics.auth.bcrypt_runs.get(), Ordering::Relaxed);
            old.task.abort();
        }
        self.restarted();
        tokio::time::sleep(downtime).await;
        self.start_until_up().await;
    }

    fn restarted(&self) {
        if let Some(b) = &self.broken {
            b.restarted(self.clock.now());
        }
    }

    /// Stops the running instance gracefully (end of the run).
    pub async fn stop_server(&self) {
        let old = self.running().take();
        if let Some(old) = old {
            self.retire(old).await;
        }
    }

    /// (instance, its bcrypt runs so far) of the running instance.
    pub fn bcrypt_runs(&self) -> (u32, u64) {
        self.running().as_ref().map_or((0, 0), |r| {
            (r.instance, r.state.metrics.auth.bcrypt_runs.get())
        })
    }

    /// The running instance's state (for resource checks).
    pub fn state(&self) -> Option<AppState> {
        self.running().as_ref().map(|r| r.state.clone())
    }

    /// bcrypt runs over every instance so far.
    pub fn total_bcrypt_runs(&self) -> u64 {
        self.server.past_runs.load(Ordering::Relaxed) + self.bcrypt_runs().1
    }

    /// Instances that started and served.
    pub fn instances(&self) -> u64 {
        self.server.started.load(Ordering::Relaxed)
    }
}
