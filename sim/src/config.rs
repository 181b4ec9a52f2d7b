//! What a run is: the seed and a few knobs ([`SimConfig`]), and everything
//! the seed then decides ([`Params`]): accounts and actors, the service's
//! settings, fault rates and the time profile.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use triggers_api::auth::AuthConfig;
use triggers_api::config::{ServeConfig, Settings};

use crate::broken::Broken;
use crate::faults::Level;

/// Where the data lives in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// The in-memory store: deterministic, virtual time.
    Memory,
    /// SQLite in a temporary directory: real threads and real time.
    Sqlite,
    /// DynamoDB (Local) at this endpoint, on fresh tables: real time.
    Dynamodb { endpoint: String },
}

impl Backend {
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Dynamodb { .. } => "dynamodb",
        }
    }

    /// Whether runs on it replay exactly (virtual time, one thread).
    pub fn deterministic(&self) -> bool {
        matches!(self, Backend::Memory)
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Client operations (HTTP requests) to make, at most.
    pub steps: usize,
    /// How much time the run spans (virtual time on the memory backend);
    /// `None`: the backend's profile (24 h virtual, or a few real seconds).
    pub duration: Option<Duration>,
    pub backend: Backend,
    /// A deliberately broken store (to test the checker).
    pub broken: Option<Broken>,
    /// Store faults, restarts and network faults (on by default).
    pub faults: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            steps: 2000,
            duration: None,
            backend: Backend::Memory,
            broken: None,
            faults: true,
        }
    }
}

/// Times that differ between a virtual run (a day in seconds) and a real
/// one (SQLite, DynamoDB: real seconds, so everything shrinks).
#[derive(Debug, Clone)]
pub struct Profile {
    pub duration: Duration,
    pub client_timeout: Duration,
    pub max_store_latency: Duration,
    pub max_net_delay: Duration,
    /// Ranges the seed draws the service's windows from, in milliseconds.
    pub dedup_window_ms: (u64, u64),
    pub retention_ms: (u64, u64),
    pub purge_interval_ms: (u64, u64),
    pub auth_ttl_ms: (u64, u64),
    pub store_timeout: Duration,
    pub request_timeout: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Mean time between restarts, fault changes, partitions.
    pub restart_every: Duration,
    pub faults_every: Duration,
    pub partition_every: Duration,
    pub max_partition: Duration,
    pub max_downtime: Duration,
    pub backoff: Duration,
}

impl Profile {
    pub fn virtual_day() -> Self {
        Self {
            duration: Duration::from_secs(24 * 3600),
            client_timeout: Duration::from_secs(10),
            max_store_latency: Duration::from_millis(2500),
            max_net_delay: Duration::from_secs(2),
            dedup_window_ms: (60_000, 600_000),
            retention_ms: (3_600_000, 6 * 3_600_000),
            purge_interval_ms: (1_000, 300_000),
            auth_ttl_ms: (5_000, 60_000),
            store_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            restart_every: Duration::from_secs(40 * 60),
            faults_every: Duration::from_secs(1800),
            partition_every: Duration::from_secs(3 * 3600),
            max_partition: Duration::from_secs(30),
            max_downtime: Duration::from_secs(10),
            backoff: Duration::from_millis(500),
        }
    }

    pub fn real_seconds() -> Self {
        Self {
            duration: Duration::from_secs(6),
            client_timeout: Duration::from_secs(4),
            max_store_latency: Duration::from_millis(60),
            max_net_delay: Duration::from_millis(50),
            dedup_window_ms: (2_000, 4_000),
            retention_ms: (3_000, 6_000),
            purge_interval_ms: (500, 1_500),
            auth_ttl_ms: (500, 1_500),
            store_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(3),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(1),
            restart_every: Duration::from_secs(3),
            faults_every: Duration::from_secs(2),
            partition_every: Duration::from_secs(4),
            max_partition: Duration::from_millis(500),
            max_downtime: Duration::from_millis(200),
            backoff: Duration::from_millis(50),
        }
    }
}

/// Net fault rates, per mille of requests.
#[derive(Debug, Clone, Copy)]
pub struct NetRates {
    pub drop_request: u32,
    pub delay: u32,
    pub cancel: u32,
    pub drop_response: u32,
}

/// Everything the seed decides.
#[derive(Debug, Clone)]
pub struct Params {
    pub profile: Profile,
    pub settings: Settings,
    pub accounts: usize,
    pub producers: usize,
    pub consumers: usize,
    pub viewers: bool,
    /// A producer of large payloads (pages hit their byte bound).
    pub huge: bool,
    pub wrong_secrets: bool,
    pub cross_tenant: bool,
    pub slow_heads: bool,
    /// When the doomed key is revoked, if one is.
    pub revoke_at: Option<Duration>,
    /// Requests per minute of the one low-limit key (rate limits bite).
    pub low_rate_limit: u32,
    pub net: NetRates,
    /// Every store call takes up to this long (0: none).
    pub store_latency: Duration,
    /// The store's level between fault phases: `Off`, or `Slow` for a
    /// store in a long brownout (swarm testing: some seeds run in a
    /// harsher world than others).
    pub baseline: Level,
    pub max_attempts: u32,
    pub epoch_ms: i64,
}

fn between(rng: &mut ChaCha8Rng, (lo, hi): (u64, u64)) -> Duration {
    Duration::from_millis(rng.random_range(lo..=hi))
}

/// Log-uniform: short values as likely as long ones, decade for decade.
fn log_between(rng: &mut ChaCha8Rng, (lo, hi): (u64, u64)) -> Duration {
    let (lo, hi) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
    Duration::from_millis(rng.random_range(lo..=hi).exp() as u64)
}

impl Params {
    pub fn draw(cfg: &SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_9a7a_0000_0001);
        let mut profile = if cfg.backend.deterministic() {
            Profile::virtual_day()
        } else {
            Profile::real_seconds()
        };
        if let Some(d) = cfg.duration {
            profile.duration = d;
        }
        let settings = Settings {
            dedup_window: between(&mut rng, profile.dedup_window_ms),
            delivered_retention: between(&mut rng, profile.retention_ms),
            purge_interval: log_between(&mut rng, profile.purge_interval_ms),
            store_timeout: profile.store_timeout,
            request_timeout: profile.request_timeout,
            max_page_bytes: [64 * 1024, 256 * 1024, 1024 * 1024][rng.random_range(0..3)],
            auth: AuthConfig {
                cache_ttl: between(&mut rng, profile.auth_ttl_ms),
                concurrency: 2,
                per_key_concurrency: 1,
                ..AuthConfig::default()
            },
            http: ServeConfig {
                header_read_timeout: profile.header_timeout,
                idle_timeout: profile.idle_timeout,
                max_connections: [12, 64, 1024][rng.random_range(0..3)],
                shutdown_grace: profile.shutdown_grace,
            },
            ..Settings::default()
        };
        let faults = cfg.faults;
        let net = if faults {
            NetRates {
                drop_request: rng.random_range(0..=10),
                delay: rng.random_range(0..=40),
                cancel: rng.random_range(0..=15),
                drop_response: rng.random_range(0..=15),
            }
        } else {
            NetRates {
                drop_request: 0,
                delay: 0,
                cancel: 0,
                drop_response: 0,
            }
        };
        let revoke = rng.random_bool(0.7);
        let revoke_frac = rng.random_range(0.05..0.5);
        Self {
            accounts: rng.random_range(2..=4),
            producers: rng.random_range(1..=3),
            consumers: rng.random_range(1..=2),
            viewers: rng.random_bool(0.6),
            huge: rng.random_bool(0.4),
            wrong_secrets: rng.random_bool(0.6),
            cross_tenant: rng.random_bool(0.7),
            slow_heads: rng.random_bool(0.5),
            revoke_at: revoke.then(|| profile.duration.mul_f64(revoke_frac)),
            low_rate_limit: rng.random_range(20..=60),
            net,
            baseline: if faults && rng.random_bool(0.2) {
                Level::Slow
            } else {
                Level::Off
            },
            store_latency: [
                Duration::ZERO,
                Duration::from_millis(2),
                Duration::from_millis(20),
            ][rng.random_range(0..3)],
            max_attempts: 6,
            epoch_ms: 1_893_456_000_000 + rng.random_range(0..365 * 86_400_000),
            profile,
            settings,
        }
    }
}
