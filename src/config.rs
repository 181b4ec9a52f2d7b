//! All configuration: one typed struct per command, flags with env twins,
//! read once in `main` and passed down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::auth::AuthConfig;
use crate::domain::{KeyStatus, Role};

#[derive(Debug, Parser)]
#[command(
    name = "triggers-api",
    version,
    about = "Triggers API: ingest events, read an account's inbox, acknowledge them",
    after_help = "Without a subcommand it runs `serve`, configured by its environment variables."
)]
pub struct Cli {
    /// What to run [default: serve].
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Store options; global, so they go before or after any subcommand.
    #[command(flatten)]
    pub store: StoreArgs,
}

/// `serve`'s options from the environment and defaults alone (no
/// subcommand given).
#[derive(Debug, Parser)]
struct ServeFromEnv {
    #[command(flatten)]
    serve: ServeArgs,
}

impl ServeArgs {
    pub fn from_env() -> Result<Self, clap::Error> {
        ServeFromEnv::try_parse_from(["triggers-api"]).map(|c| c.serve)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API (the default).
    Serve(ServeArgs),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// DynamoDB administration.
    Dynamodb {
        #[command(subcommand)]
        command: DynamoCommand,
    },
    /// Run the black-box conformance suite against a deployment: each case
    /// as PASS, FAIL or SKIP (with the reason), a summary, optionally a
    /// JUnit report. Exit 0 when every case that ran passed, 1 when one
    /// failed, 2 when the run could not start (keys missing or not what
    /// they claim, server unreachable).
    #[cfg(feature = "conformance")]
    Conformance(ConformanceArgs),
    /// Exit 0 when a running server's GET /status answers 200, else 1 (a
    /// container health check that needs no shell or curl).
    Healthcheck {
        /// The status URL (plain http).
        #[arg(
            long,
            env = "TRIGGERS_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/status"
        )]
        url: String,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

/// `triggers-api conformance`. The four keys come from the environment
/// (TRIGGERS_CONFORMANCE_CREATOR_KEY, _VIEWER_KEY, _OTHER_ACCOUNT_KEY,
/// _REVOKED_KEY) or, for those not set there, from the --keys file; never
/// from the command line, where other users of the machine could read them.
#[cfg(feature = "conformance")]
#[derive(Debug, Args)]
#[command(
    after_help = "Keys: a creator key of the account the run works in, a viewer key of \
the same account, a creator key of another account, and a key revoked more than 30 s ago. \
Create the first three with a high --rate-limit (the run makes about a thousand requests). \
Use a test account: the run's events are acknowledged as it goes, but a consumer of the \
account may see them meanwhile."
)]
pub struct ConformanceArgs {
    /// The deployment's base URL; every request path is appended to it, so
    /// it may end in a path prefix (http://127.0.0.1:9000/lambda-url/bootstrap).
    #[arg(
        long,
        env = "TRIGGERS_CONFORMANCE_BASE_URL",
        required_unless_present = "list"
    )]
    pub base_url: Option<String>,
    /// A file of NAME=VALUE lines with the keys (the environment variable
    /// names; # comments; a shell can source it).
    #[arg(long, env = "TRIGGERS_CONFORMANCE_KEYS")]
    pub keys: Option<PathBuf>,
    /// Also write a JUnit XML report to this file.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Run only the cases whose group::name contains this (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Skip the cases whose group::name contains this (repeatable);
    /// `NAME=REASON` prints REASON as the case's skip reason.
    #[arg(long)]
    pub skip: Vec<String>,
    /// A case (with its clean-up) that takes longer fails.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub case_timeout_secs: u64,
    /// The store backend GET /status must report [default: sqlite or dynamodb].
    #[arg(long)]
    pub expect_backend: Option<String>,
    /// The version / and /status must report [default: any].
    #[arg(long)]
    pub expect_version: Option<String>,
    /// List the cases, and why some are skipped, without running any.
    #[arg(long)]
    pub list: bool,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it (the only time it is shown).
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Requests per minute for this key [default: --default-rate-limit].
        #[arg(long)]
        rate_limit: Option<u32>,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        account: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id, or every key of an owner with --email.
    Revoke {
        #[arg(required_unless_present = "email", conflicts_with = "email")]
        key_id: Option<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// Set a key's status to active or inactive.
    SetStatus {
        key_id: String,
        #[arg(value_parser = parse_settable_status)]
        status: KeyStatus,
    },
    /// Set a key's requests-per-minute limit.
    SetRateLimit {
        key_id: String,
        #[arg(value_parser = clap::value_parser!(u32).range(1..))]
        per_minute: u32,
    },
}

fn parse_settable_status(s: &str) -> Result<KeyStatus, String> {
    match s {
        "active" => Ok(KeyStatus::Active),
        "inactive" => Ok(KeyStatus::Inactive),
        _ => Err("expected 'active' or 'inactive' (use 'keys revoke' to revoke)".into()),
    }
}

#[derive(Debug, Subcommand)]
pub enum DynamoCommand {
    /// Create the tables (idempotent) with TTL enabled.
    CreateTables {
        /// Table prefix; overrides the one in --store.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Make events written before leases existed leasable: writes their
    /// availability markers (idempotent; safe while the service runs).
    AddLeaseMarkers {
        /// Table prefix; overrides the one in --store.
        #[arg(long)]
        prefix: Option<String>,
        /// Only these accounts [default: every account that has a key].
        #[arg(long)]
        account: Vec<String>,
    },
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Dynamodb { table_prefix: String },
}

impl FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, e.g. sqlite://./data/triggers.db".into());
            }
            Ok(Self::Sqlite(PathBuf::from(path)))
        } else if let Some(prefix) = s.strip_prefix("dynamodb://") {
            let ok = !prefix.is_empty()
                && prefix.len() <= 200
                && prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err("dynamodb:// needs a table prefix of A-Z a-z 0-9 - _ .".into());
            }
            Ok(Self::Dynamodb {
                table_prefix: prefix.to_owned(),
            })
        } else {
            Err("expected sqlite://PATH or dynamodb://TABLE_PREFIX".into())
        }
    }
}

/// Options every command that opens the store shares.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The store: sqlite://PATH (embedded) or dynamodb://TABLE_PREFIX.
    #[arg(
        long,
        global = true,
        env = "TRIGGERS_STORE",
        default_value = "sqlite://./data/triggers.db"
    )]
    pub store: StoreUrl,
    /// Budget for one store call, in milliseconds; past it the API answers 503.
    #[arg(
        long,
        global = true,
        env = "TRIGGERS_STORE_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub store_timeout_ms: u64,
    /// bcrypt cost for new keys (4-31).
    #[arg(long, global = true, env = "TRIGGERS_BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// SQLite only: a disk budget for the database file, in bytes; a write
    /// that would grow it past the budget answers 503 (and /status turns
    /// degraded) instead of filling the disk. Unset: no limit but the disk's.
    #[arg(long, global = true, env = "TRIGGERS_SQLITE_MAX_DB_BYTES",
          value_parser = clap::value_parser!(u64).range(65536..))]
    pub sqlite_max_db_bytes: Option<u64>,
    /// Requests per minute for keys created without --rate-limit.
    #[arg(long, global = true, env = "TRIGGERS_DEFAULT_RATE_LIMIT", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub default_rate_limit: u32,
}

impl StoreArgs {
    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TRIGGERS_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
    /// Log format (JSON lines by default); the level comes from RUST_LOG.
    #[arg(long, env = "TRIGGERS_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Largest request body, in bytes.
    #[arg(long, env = "TRIGGERS_MAX_BODY_BYTES", default_value_t = 512 * 1024)]
    pub max_body_bytes: usize,
    /// Largest serialized payload, in bytes.
    #[arg(long, env = "TRIGGERS_MAX_PAYLOAD_BYTES", default_value_t = 256 * 1024)]
    pub max_payload_bytes: usize,
    /// Largest POST /events/batch body, in bytes (each of its events also
    /// within --max-body-bytes and --max-payload-bytes).
    #[arg(long, env = "TRIGGERS_MAX_BATCH_BODY_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=16 * 1024 * 1024))]
    pub max_batch_body_bytes: u64,
    /// How long the response to a request with an Idempotency-Key is kept
    /// and replayed, in seconds (24 h).
    #[arg(long, env = "TRIGGERS_IDEMPOTENCY_TTL_SECS", default_value_t = 24 * 3600,
          value_parser = clap::value_parser!(u64).range(1..=30 * 24 * 3600))]
    pub idempotency_ttl_secs: u64,
    /// Deduplication window, in seconds.
    #[arg(long, env = "TRIGGERS_DEDUP_WINDOW_SECS", default_value_t = 300)]
    pub dedup_window_secs: u64,
    /// How long acknowledged events stay readable, in seconds (30 days).
    #[arg(long, env = "TRIGGERS_DELIVERED_RETENTION_SECS", default_value_t = 30 * 24 * 3600)]
    pub delivered_retention_secs: u64,
    /// How often the purge of expired delivered events runs, in seconds.
    #[arg(long, env = "TRIGGERS_PURGE_INTERVAL_SECS", default_value_t = 60)]
    pub purge_interval_secs: u64,
    /// How long a verified key is served from memory (bounds how long a
    /// revoked key keeps working), in seconds.
    #[arg(long, env = "TRIGGERS_AUTH_CACHE_SECS", default_value_t = 30)]
    pub auth_cache_secs: u64,
    /// Budget for a whole request, in seconds.
    #[arg(long, env = "TRIGGERS_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// DynamoDB: create the tables at start if they are missing.
    #[arg(long, env = "TRIGGERS_CREATE_TABLES",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub create_tables: bool,
    /// An inbox page ends early before the event that would take it past
    /// this many bytes of payload, metadata, type and source (every page
    /// holds at least one event).
    #[arg(long, env = "TRIGGERS_MAX_PAGE_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..))]
    pub max_page_bytes: u64,
    /// A request head must arrive within this many seconds of its first byte.
    #[arg(long, env = "TRIGGERS_HEADER_READ_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_secs: u64,
    /// A keep-alive connection with no request for this many seconds closes.
    #[arg(long, env = "TRIGGERS_IDLE_TIMEOUT_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Most open client connections (lowered to stay under the process's
    /// open-file limit).
    #[arg(long, env = "TRIGGERS_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// On shutdown, requests under way get this many seconds to finish.
    #[arg(long, env = "TRIGGERS_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
    /// bcrypt verifications per key id and client network (IPv4 address or
    /// IPv6 /64) per minute.
    #[arg(long, env = "TRIGGERS_AUTH_BCRYPT_PER_SOURCE", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_bcrypt_per_source: u32,
    /// bcrypt verifications per key id per minute, whatever the addresses.
    #[arg(long, env = "TRIGGERS_AUTH_BCRYPT_PER_KEY", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_bcrypt_per_key: u32,
    /// bcrypt verifications at once [default: the number of CPUs, at least 2].
    #[arg(long, env = "TRIGGERS_AUTH_BCRYPT_CONCURRENCY",
          value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub auth_bcrypt_concurrency: Option<u64>,
    /// The lease that brings an event's lease count to this quarantines it
    /// (it is never leased again until requeued).
    #[arg(long, env = "TRIGGERS_MAX_LEASES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_leases: u32,
    /// Most lease calls waiting for events (wait_seconds > 0) at once, in
    /// total; past it a call answers at once with what is available.
    #[arg(long, env = "TRIGGERS_LEASE_WAITERS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub lease_waiters: u64,
    /// Most lease calls waiting at once per account.
    #[arg(long, env = "TRIGGERS_LEASE_WAITERS_PER_ACCOUNT", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub lease_waiters_per_account: u64,
}

/// File descriptors kept free for everything but client connections (the
/// store's files and connections, the listener, logs).
const FD_RESERVE: u64 = 64;

/// The server's connection limits (README, "Security").
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServeConfig {
    /// `max_connections`, lowered to stay under this process's limit of
    /// open files.
    pub fn connection_cap(&self) -> usize {
        let limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(u64::MAX);
        let room = usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX);
        self.max_connections.min(room).max(1)
    }
}

/// What the running service needs, read once from the command line and
/// environment and passed down; tests build it directly.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    pub max_payload_bytes: usize,
    /// The largest POST /events/batch body.
    pub max_batch_body_bytes: usize,
    /// How long a response kept for an Idempotency-Key is replayed.
    pub idempotency_ttl: Duration,
    pub dedup_window: Duration,
    pub delivered_retention: Duration,
    pub store_timeout: Duration,
    pub request_timeout: Duration,
    pub max_page_bytes: usize,
    pub purge_interval: Duration,
    /// See [`ServeArgs::max_leases`].
    pub max_leases: u32,
    /// Waiting lease calls at once, in total and per account.
    pub lease_waiters: usize,
    pub lease_waiters_per_account: usize,
    /// How often a waiting lease call looks at the store again when nothing
    /// woke it (events written by other instances, leases that ended).
    pub lease_recheck: Duration,
    pub auth: AuthConfig,
    pub http: ServeConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            max_body_bytes: 512 * 1024,
            max_payload_bytes: 256 * 1024,
            max_batch_body_bytes: 1024 * 1024,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(300),
            delivered_retention: Duration::from_secs(30 * 24 * 3600),
            store_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_page_bytes: 1024 * 1024,
            purge_interval: Duration::from_secs(60),
            max_leases: 5,
            lease_waiters: 500,
            lease_waiters_per_account: 50,
            lease_recheck: Duration::from_secs(1),
            auth: AuthConfig::default(),
            http: ServeConfig::default(),
        }
    }
}

impl Settings {
    /// How long a dedup record is kept past the window ([`crate::store::Dedup`]):
    /// the request's time budget plus one store call's, so that a repeat
    /// stamped just inside the window whose insert reaches the store as late
    /// as its budgets allow still finds the original (35 s by default).
    pub fn dedup_margin(&self) -> Duration {
        self.request_timeout.saturating_add(self.store_timeout)
    }

    pub fn new(store: &StoreArgs, a: &ServeArgs) -> Self {
        let d = Self::default();
        let concurrency = a
            .auth_bcrypt_concurrency
            .map_or(d.auth.concurrency, |n| usize::try_from(n).unwrap_or(1));
        Self {
            max_body_bytes: a.max_body_bytes,
            max_payload_bytes: a.max_payload_bytes,
            max_batch_body_bytes: usize::try_from(a.max_batch_body_bytes).unwrap_or(usize::MAX),
            idempotency_ttl: Duration::from_secs(a.idempotency_ttl_secs),
            dedup_window: Duration::from_secs(a.dedup_window_secs),
            delivered_retention: Duration::from_secs(a.delivered_retention_secs),
            store_timeout: store.store_timeout(),
            request_timeout: Duration::from_secs(a.request_timeout_secs),
            max_page_bytes: usize::try_from(a.max_page_bytes).unwrap_or(usize::MAX),
            purge_interval: Duration::from_secs(a.purge_interval_secs.max(1)),
            max_leases: a.max_leases,
            lease_waiters: usize::try_from(a.lease_waiters).unwrap_or(usize::MAX),
            lease_waiters_per_account: usize::try_from(a.lease_waiters_per_account)
                .unwrap_or(usize::MAX),
            lease_recheck: d.lease_recheck,
            auth: AuthConfig {
                cache_ttl: Duration::from_secs(a.auth_cache_secs),
                per_source_per_minute: a.auth_bcrypt_per_source,
                per_key_per_minute: a.auth_bcrypt_per_key,
                concurrency,
                per_key_concurrency: (concurrency / 2).max(1),
                ..d.auth
            },
            http: ServeConfig {
                header_read_timeout: Duration::from_secs(a.header_read_timeout_secs),
                idle_timeout: Duration::from_secs(a.idle_timeout_secs),
                max_connections: usize::try_from(a.max_connections).unwrap_or(usize::MAX),
                shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_parse_or_explain() {
        assert_eq!(
            "sqlite://./x.db".parse::<StoreUrl>(),
            Ok(StoreUrl::Sqlite("./x.db".into()))
        );
        assert!(matches!(
            "dynamodb://prod".parse::<StoreUrl>(),
            Ok(StoreUrl::Dynamodb { .. })
        ));
        assert!("postgres://x".parse::<StoreUrl>().is_err());
        assert!("dynamodb://".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn store_options_go_before_or_after_any_subcommand() {
        for args in [
            &["t", "keys", "list", "--store", "sqlite://x.db"][..],
            &["t", "--store", "sqlite://x.db", "keys", "list"],
            &[
                "t",
                "serve",
                "--store",
                "sqlite://x.db",
                "--bind",
                "127.0.0.1:1",
            ],
            &[
                "t",
                "--store",
                "sqlite://x.db",
                "serve",
                "--bind",
                "127.0.0.1:1",
            ],
            &["t", "--store", "sqlite://x.db"],
            &["t", "healthcheck", "--store", "sqlite://x.db"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.store.store, StoreUrl::Sqlite("x.db".into()), "{args:?}");
        }
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;

    #[test]
    fn the_flags_defaults_are_the_settings_defaults() {
        let store = Cli::try_parse_from(["t"]).unwrap().store;
        let from_flags = Settings::new(&store, &ServeArgs::from_env().unwrap());
        let d = Settings::default();
        assert_eq!(format!("{from_flags:?}"), format!("{d:?}"));
    }
}
