//! The embedded store: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Writes go through one writer thread that commits in groups: it takes
//! every write waiting in its queue (up to `MAX_BATCH`), runs each in its own
//! savepoint inside one transaction, commits once (one fsync), and only then
//! answers each caller. So a 2xx always follows a durable commit, yet the
//! service is not serialised behind one fsync per request. Reads run on a
//! small pool of connections on the blocking thread pool; WAL lets them
//! proceed while the writer commits. Several processes (the server and the
//! `keys` CLI) may open the same file: `BEGIN IMMEDIATE` plus a busy timeout
//! serialise their writers.
//!
//! A batch of events (`insert_events`) is one job: every event with its
//! dedup check, in order, in the job's savepoint, so the batch commits
//! whole or not at all, and a later event of the batch sees the dedup
//! records of the earlier ones. Idempotency keys are rows of
//! `idempotency` (see `MIGRATE_V3`), claimed and finished by writer jobs
//! (the read and the write of a claim are one atomic step).
//!
//! Leases are writes like any other, so the one writer serialises them: a
//! lease reads its candidates and marks them in one job, and no two leases
//! can take one event. The lease state lives in columns of `events`
//! (`lease_count`, `leased_until_ms`, `lease_id`, `quarantined`); partial
//! indexes by state let leasing read only available rows and listings only
//! their own state (see `MIGRATE_V2`). Each lease is recorded in `leases`
//! (its id, account, end and event ids) for ack and release.
//!
//! An event's payload and metadata are not in its `events` row but in
//! `event_bodies`, keyed by the same `seq` (see `MIGRATE_V4`), written once
//! by the insert and deleted with the event by the purge. Leases, acks,
//! releases and requeues rewrite only the narrow `events` row (~100 bytes,
//! dozens to a page), so a lease of 100 consecutive events dirties a few
//! table pages rather than one page per three events, and writes that much
//! less WAL; reads join the two by `seq` (events first, then the body by
//! its rowid).
//!
//! WAL checkpoints (copying committed pages from the WAL into the database
//! file, then fsyncing it) run on a background thread of their own, not
//! inline in the writer after a commit, so the group-commit pipeline does
//! not wait for the bulk of that work. They do not affect durability: a
//! commit is durable once its WAL frames are fsynced.
//!
//! The WAL must also be *restarted* (written again from its beginning) now
//! and then, or it grows without bound. SQLite restarts it only when a
//! write transaction begins while every frame in it has been copied, which
//! a background checkpoint never achieves under a steady stream of commits
//! (new frames arrive while it copies). So the WAL grows until SQLite's
//! automatic checkpoint in the writer (at `WRITER_AUTOCHECKPOINT_PAGES`)
//! copies what is left, inline, after a commit; the next group then
//! restarts it. Every group waits for that copy and the database fsync that
//! ends it, so it must be small: the background checkpointer therefore runs
//! every `CHECKPOINT_EVERY` (10 ms) while commits keep coming, leaving at
//! most a few milliseconds of frames for the writer. (At 200 ms it left up
//! to 200 ms of frames — ~5 WAL pages per 1 KiB event, tens of MiB under
//! load — and that inline copy was the largest source of POST tail latency;
//! see docs/performance.md, "Tail latency".)

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::{mpsc, oneshot};

use super::{
    AckOutcome, ClaimOutcome, Dedup, Finish, IdempotencyClaim, InboxPage, InboxQuery, InboxState,
    Insert, Inserted, KeptResponse, KeyChange, LeaseRequest, NewEvent, Position, RequeueOutcome,
    Settled, Store, StoreError,
};
use crate::domain::{
    AccountId, ApiKeyRecord, Email, Event, EventId, EventType, IdempotencyKey, JsonObject, KeyId,
    KeyStatus, LeaseId, Role, Source,
};

const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;
const READERS_KEPT: usize = 8;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const PURGE_CHUNK: i64 = 5000;
/// 1: events, dedup, keys, secrets. 2: leases (columns on `events`, the
/// `leases` table, indexes by state). 3: idempotency keys. 4: payload and
/// metadata moved to `event_bodies`.
const SCHEMA_VERSION: i64 = 4;
/// How often the background checkpointer runs a passive checkpoint while
/// the WAL keeps changing: often, so that little is left for the writer's
/// automatic checkpoint (see the module docs).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(10);
/// ... and once a pass found nothing new since the previous one.
const CHECKPOINT_IDLE: Duration = Duration::from_millis(50);
/// The writer's own automatic checkpoint, in WAL pages (SQLite's default is
/// 1000): it restarts the WAL, which therefore stays under ~40 MiB.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Version 1, as it was released: what a new file starts from before the
/// migrations below run (so a new file and an upgraded one are alike).
const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        BLOB    NOT NULL UNIQUE,
    account         TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    source          TEXT,
    metadata        TEXT    NOT NULL,
    ts_ms           INTEGER NOT NULL,
    delivered_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS events_inbox ON events (account, seq)
    WHERE delivered_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS events_inbox_by_type ON events (account, event_type, seq)
    WHERE delivered_at_ms IS NULL;
CREATE INDEX IF NOT EXISTS events_delivered ON events (delivered_at_ms)
    WHERE delivered_at_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS dedup (
    account     TEXT    NOT NULL,
    fingerprint BLOB    NOT NULL,
    event_id    BLOB    NOT NULL,
    ts_ms       INTEGER NOT NULL,
    PRIMARY KEY (account, fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedup_ts ON dedup (ts_ms);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id        TEXT    PRIMARY KEY,
    account       TEXT    NOT NULL,
    email         TEXT    NOT NULL,
    role          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    rate_limit    INTEGER NOT NULL,
    secret_hash   TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS api_keys_email ON api_keys (email);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys (account, created_at_ms);
CREATE TABLE IF NOT EXISTS secrets (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
";

/// Version 1 to 2: leases. Every undelivered event is in one of the
/// partial indexes below by state, so that listing the inbox skips the
/// quarantined, listing the quarantine skips the rest, and leasing reads
/// only available rows: `leased_until_ms` is 0 for an event never leased
/// (or released, or requeued), else the end of its latest lease; leasing
/// takes the `= 0` range in `seq` order and the expired range
/// (`1..=now`) beside it, never a row whose lease is running.
const MIGRATE_V2: &str = "
ALTER TABLE events ADD COLUMN lease_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN leased_until_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN lease_id BLOB;
ALTER TABLE events ADD COLUMN quarantined INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS events_inbox;
DROP INDEX IF EXISTS events_inbox_by_type;
CREATE INDEX events_open ON events (account, quarantined, seq)
    WHERE delivered_at_ms IS NULL;
CREATE INDEX events_open_by_type ON events (account, event_type, quarantined, seq)
    WHERE delivered_at_ms IS NULL;
CREATE INDEX events_leasable ON events (account, leased_until_ms, seq)
    WHERE delivered_at_ms IS NULL AND quarantined = 0;
CREATE INDEX events_leasable_by_type ON events (account, event_type, leased_until_ms, seq)
    WHERE delivered_at_ms IS NULL AND quarantined = 0;
CREATE TABLE leases (
    lease_id        BLOB    PRIMARY KEY,
    account         TEXT    NOT NULL,
    leased_until_ms INTEGER NOT NULL,
    -- 16 bytes per event id, in the order the lease returned them
    event_ids       BLOB    NOT NULL
) WITHOUT ROWID;
CREATE INDEX leases_until ON leases (leased_until_ms);
";

/// Version 2 to 3: idempotency keys. One row per (account, key): the
/// request digest, the token of the claim that made it, its expiry (the
/// claim's lapse while in flight, the kept response's end once finished)
/// and, once finished, the response. A row whose expiry has passed counts
/// as absent; the purge deletes it (`idempotency_expires`). A rowid table:
/// a kept body can be tens of KiB.
const MIGRATE_V3: &str = "
CREATE TABLE idempotency (
    account    TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    request    BLOB    NOT NULL,
    token      BLOB    NOT NULL,
    expires_ms INTEGER NOT NULL,
    -- NULL while in flight
    status     INTEGER,
    body       BLOB,
    PRIMARY KEY (account, key)
);
CREATE INDEX idempotency_expires ON idempotency (expires_ms);
";

/// Version 3 to 4: an event's payload and metadata move out of its
/// `events` row into `event_bodies` (same `seq`), so that the writes that
/// change an event's state (lease, ack, release, requeue) rewrite a narrow
/// row, not one that carries up to ~1 KiB of JSON. Existing rows are
/// copied, then the two columns dropped (which rewrites `events` without
/// them, in this same transaction; indexes, `seq`s and the AUTOINCREMENT
/// counter are kept as they are).
const MIGRATE_V4: &str = "
CREATE TABLE event_bodies (
    seq      INTEGER PRIMARY KEY,
    payload  TEXT    NOT NULL,
    metadata TEXT    NOT NULL
);
INSERT INTO event_bodies (seq, payload, metadata)
    SELECT seq, payload, metadata FROM events ORDER BY seq;
ALTER TABLE events DROP COLUMN payload;
ALTER TABLE events DROP COLUMN metadata;
";

/// Why a group commit failed; the cause is logged by the writer.
#[derive(Debug, thiserror::Error)]
#[error("sqlite commit failed ({code:?})")]
struct CommitFailed {
    code: Option<rusqlite::ErrorCode>,
}

fn is_unavailable(code: Option<rusqlite::ErrorCode>) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        code,
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | CannotOpen
                | ReadOnly
                | OutOfMemory
        )
    )
}

fn map_err(e: rusqlite::Error) -> StoreError {
    if is_unavailable(e.sqlite_error_code()) {
        StoreError::unavailable(e)
    } else {
        StoreError::internal(e)
    }
}

fn map_ref(e: &rusqlite::Error) -> StoreError {
    let code = e.sqlite_error_code();
    let err = CommitFailed { code };
    if is_unavailable(code) {
        StoreError::unavailable(err)
    } else {
        StoreError::internal(err)
    }
}

/// SQLite rolled a group's transaction back by itself part-way through it
/// (it may on SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM or SQLITE_BUSY); the
/// cause is logged with the job that hit it.
#[derive(Debug, thiserror::Error)]
#[error("sqlite rolled the transaction back (disk full, I/O error, out of memory or busy)")]
struct RolledBack;

/// How the transaction a job ran in ended.
enum End<'a> {
    /// Committed and durable.
    Committed,
    /// COMMIT failed with this error (the outcome may be unknown).
    Failed(&'a rusqlite::Error),
    /// Rolled back by SQLite itself: nothing the job wrote is on disk.
    RolledBack,
}

type Completion = Box<dyn FnOnce(End<'_>) + Send>;
type Job = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Completion + Send>;

pub struct SqliteStore {
    jobs: mpsc::Sender<Job>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<Path>,
    /// The checkpointer thread stops once this is dropped.
    _alive: Arc<()>,
}

/// `PRAGMA wal_checkpoint(PASSIVE)`: (busy, frames in the WAL, frames
/// copied into the database file).
fn passive_checkpoint(conn: &Connection) -> Result<(i64, i64, i64), rusqlite::Error> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

/// Passive checkpoints on a connection of its own, every `CHECKPOINT_EVERY`
/// while the WAL keeps changing (`CHECKPOINT_IDLE` otherwise), until the
/// store is dropped. Errors (e.g. busy) are left for the next turn.
fn checkpoint_loop(path: Arc<Path>, alive: std::sync::Weak<()>) {
    let Ok(conn) = open_conn(&path) else {
        tracing::warn!("sqlite checkpointer could not open the database; the writer's automatic checkpoint remains");
        return;
    };
    let mut last = (0, 0);
    let mut pause = CHECKPOINT_IDLE;
    loop {
        std::thread::sleep(pause);
        if alive.upgrade().is_none() {
            return;
        }
        match passive_checkpoint(&conn) {
            Ok((_busy, frames, copied)) => {
                pause = if (frames, copied) == last {
                    CHECKPOINT_IDLE
                } else {
                    CHECKPOINT_EVERY
                };
                last = (frames, copied);
            }
            Err(e) => {
                tracing::debug!(
                    error = &e as &dyn std::error::Error,
                    "sqlite checkpoint skipped"
                );
                pause = CHECKPOINT_EVERY;
            }
        }
    }
}

fn open_conn(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A commit is on disk (WAL fsynced) before COMMIT returns: a 201
    // survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Settings of an embedded store; `Default` is what [`SqliteStore::open`] uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// A disk budget for the database file, in bytes (`None`: no limit but
    /// the disk's). Enforced by SQLite (`PRAGMA max_page_count`, rounded down
    /// to whole pages) on this store's writes: a write that would grow the
    /// file past it fails with `StoreError::Unavailable` and writes nothing,
    /// while reads, acknowledgements and purges keep working (freed pages are
    /// reused). It counts the main database file only, not the WAL (which
    /// checkpoints keep short) and not writes by other processes (the `keys`
    /// CLI) that open the file without it. A budget below the file's current
    /// size holds it at that size.
    pub max_db_bytes: Option<u64>,
}

impl SqliteOptions {
    /// With a disk budget of `bytes` for the database file.
    pub fn max_db_bytes(mut self, bytes: u64) -> Self {
        self.max_db_bytes = Some(bytes);
        self
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder, with the
    /// default options.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens (creating if needed) the database file and its folder.
    pub fn open_with(path: &Path, options: SqliteOptions) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(StoreError::unavailable)?;
        }
        let mut conn = open_conn(path).map_err(map_err)?;
        // The version is read inside the write transaction, so two processes
        // opening one old file migrate it once.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(map_err)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(map_err)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                what: "database schema is newer than this binary",
            });
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).map_err(map_err)?;
        }
        if version < 2 {
            tx.execute_batch(MIGRATE_V2).map_err(map_err)?;
        }
        if version < 3 {
            tx.execute_batch(MIGRATE_V3).map_err(map_err)?;
        }
        if version < 4 {
            tx.execute_batch(MIGRATE_V4).map_err(map_err)?;
        }
        if version != SCHEMA_VERSION {
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(map_err)?;
            tracing::info!(
                from = version,
                to = SCHEMA_VERSION,
                "sqlite schema upgraded"
            );
        }
        tx.commit().map_err(map_err)?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)
            .map_err(map_err)?;
        if let Some(bytes) = options.max_db_bytes {
            let page_size: u64 = conn
                .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
                .map_err(map_err)?
                .try_into()
                .map_err(|_| StoreError::Corrupt { what: "page size" })?;
            // Only the writer connection writes pages, so only it needs the
            // limit. SQLite keeps it at least the current page count.
            let pages = i64::try_from((bytes / page_size.max(1)).max(1)).unwrap_or(i64::MAX);
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(map_err)?;
        }

        let (jobs, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(StoreError::internal)?;
        let path: Arc<Path> = Arc::from(path);
        let alive = Arc::new(());
        {
            let (path, alive) = (path.clone(), Arc::downgrade(&alive));
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpoint_loop(path, alive))
                .map_err(StoreError::internal)?;
        }
        Ok(Self {
            jobs,
            readers: Arc::new(Mutex::new(Vec::new())),
            path,
            _alive: alive,
        })
    }

    /// Runs `f` inside the next group commit; answers once it is durable.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(map_ref(e)));
                    return Box::new(|_| {});
                }
            };
            let result = in_savepoint(conn, f);
            Box::new(move |end| {
                let _ = tx.send(match end {
                    End::Committed => result,
                    End::Failed(e) => Err(map_ref(e)),
                    // A job that failed wrote nothing either way: its own
                    // error stands. One that succeeded was undone.
                    End::RolledBack => {
                        result.and_then(|_| Err(StoreError::unavailable(RolledBack)))
                    }
                });
            })
        });
        self.jobs
            .send(job)
            .await
            .map_err(|_| StoreError::internal("sqlite writer stopped"))?;
        rx.await
            .map_err(|_| StoreError::internal("sqlite writer dropped a job"))?
    }

    /// Runs `f` on a pooled read connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let taken = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match taken {
                Some(c) => c,
                None => open_conn(&path).map_err(map_err)?,
            };
            let out = f(&conn);
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READERS_KEPT {
                pool.push(conn);
            }
            out
        })
        .await
        .map_err(StoreError::internal)?
    }
}

/// Runs `f` in a savepoint of the writer's open transaction: on error, what
/// `f` wrote is undone and the rest of the group goes on. If SQLite rolls the
/// whole transaction back meanwhile (see [`RolledBack`]), the writer notices
/// (`is_autocommit`) and answers the group accordingly.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Outside a transaction, SAVEPOINT would begin one of its own and RELEASE
    // would commit it, apart from the group and its answers.
    if conn.is_autocommit() {
        return Err(StoreError::internal(
            "sqlite write job outside the group transaction",
        ));
    }
    conn.execute_batch("SAVEPOINT job").map_err(map_err)?;
    let result = f(conn).and_then(|v| {
        conn.execute_batch("RELEASE job")
            .map(|()| v)
            .map_err(map_err)
    });
    if result.is_err() && !conn.is_autocommit() {
        if let Err(rb) = conn.execute_batch("ROLLBACK TO job; RELEASE job") {
            // The job's writes may still be in the transaction: give it up
            // whole rather than commit them under an error answer.
            tracing::error!(
                error = &rb as &dyn std::error::Error,
                "savepoint rollback failed; rolling back the group"
            );
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
    result
}

/// Group commit: every waiting job (up to `MAX_BATCH`) runs in its own
/// savepoint of one transaction, then one COMMIT (one fsync) and only then
/// the answers. Should SQLite roll that transaction back by itself part-way
/// (disk full, I/O error, ...), every job run in it so far is answered with
/// an error — none of it is on disk — and the rest of the group continues in
/// a new transaction, so no job ever runs, or commits, outside a transaction
/// whose outcome its answer reports.
fn writer_loop(conn: Connection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut ran: Vec<Completion> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut jobs = batch.drain(..);
        while let Some(job) = jobs.next() {
            if conn.is_autocommit() {
                if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                    tracing::error!(error = &e as &dyn std::error::Error, "sqlite BEGIN failed");
                    // Each job answers its caller with the error; nothing to complete.
                    let _ = job(Err(&e));
                    jobs.by_ref().for_each(|job| drop(job(Err(&e))));
                    break;
                }
            }
            let completion = job(Ok(&conn));
            if conn.is_autocommit() {
                tracing::error!(
                    writes = ran.len() + 1,
                    "sqlite rolled back a group commit by itself; answering its writes with an error"
                );
                ran.drain(..)
                    .chain(std::iter::once(completion))
                    .for_each(|c| c(End::RolledBack));
            } else {
                ran.push(completion);
            }
        }
        drop(jobs);
        if ran.is_empty() {
            continue;
        }
        match conn.execute_batch("COMMIT") {
            Ok(()) => ran.drain(..).for_each(|c| c(End::Committed)),
            Err(e) => {
                tracing::error!(error = &e as &dyn std::error::Error, "sqlite COMMIT failed");
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                ran.drain(..).for_each(|c| c(End::Failed(&e)));
            }
        }
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_millis(v).ok_or(StoreError::Corrupt { what: "timestamp" })
}

fn id_bytes(id: &EventId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// The columns [`row_to_event`] reads, from [`EVENT_FROM`].
const EVENT_COLS: &str = "events.seq, event_id, account, event_type, b.payload, source, \
     b.metadata, ts_ms, delivered_at_ms, lease_count, leased_until_ms, quarantined";

/// An event with its body: `events` is always the outer loop (CROSS JOIN
/// fixes the order), each body is then one rowid lookup.
const EVENT_FROM: &str = "events CROSS JOIN event_bodies AS b ON b.seq = events.seq";

fn row_to_event(row: &Row<'_>) -> Result<(i64, Event), StoreError> {
    let get_err = |_| StoreError::Corrupt { what: "event row" };
    let seq: i64 = row.get(0).map_err(get_err)?;
    let id: Vec<u8> = row.get(1).map_err(get_err)?;
    let id = uuid::Uuid::from_slice(&id).map_err(|_| StoreError::Corrupt { what: "event id" })?;
    let account: String = row.get(2).map_err(get_err)?;
    let event_type: String = row.get(3).map_err(get_err)?;
    let payload: String = row.get(4).map_err(get_err)?;
    let source: Option<String> = row.get(5).map_err(get_err)?;
    let metadata: String = row.get(6).map_err(get_err)?;
    let ts: i64 = row.get(7).map_err(get_err)?;
    let delivered_at: Option<i64> = row.get(8).map_err(get_err)?;
    let lease_count: i64 = row.get(9).map_err(get_err)?;
    let leased_until: i64 = row.get(10).map_err(get_err)?;
    let quarantined: i64 = row.get(11).map_err(get_err)?;
    let corrupt = |what| move |_| StoreError::Corrupt { what };
    Ok((
        seq,
        Event {
            event_id: EventId::from_uuid(id),
            account: AccountId::parse(&account).map_err(corrupt("account"))?,
            event_type: EventType::parse(&event_type).map_err(corrupt("event_type"))?,
            payload: JsonObject::from_json_text(payload).map_err(corrupt("payload"))?,
            source: source
                .map(|s| Source::parse(&s))
                .transpose()
                .map_err(corrupt("source"))?,
            metadata: JsonObject::from_json_text(metadata).map_err(corrupt("metadata"))?,
            timestamp: from_ms(ts)?,
            delivered: delivered_at.is_some(),
            delivered_at: delivered_at.map(from_ms).transpose()?,
            lease_count: u32::try_from(lease_count).map_err(|_| StoreError::Corrupt {
                what: "lease_count",
            })?,
            leased_until: (leased_until != 0)
                .then(|| from_ms(leased_until))
                .transpose()?,
            quarantined: quarantined != 0,
        },
    ))
}

fn row_to_key(row: &Row<'_>) -> Result<ApiKeyRecord, StoreError> {
    let get_err = |_| StoreError::Corrupt { what: "key row" };
    let key_id: String = row.get(0).map_err(get_err)?;
    let account: String = row.get(1).map_err(get_err)?;
    let email: String = row.get(2).map_err(get_err)?;
    let role: String = row.get(3).map_err(get_err)?;
    let status: String = row.get(4).map_err(get_err)?;
    let rate_limit: i64 = row.get(5).map_err(get_err)?;
    let secret_hash: String = row.get(6).map_err(get_err)?;
    let created_at: i64 = row.get(7).map_err(get_err)?;
    Ok(ApiKeyRecord {
        key_id: KeyId::parse(&key_id).ok_or(StoreError::Corrupt { what: "key id" })?,
        account: AccountId::parse(&account).map_err(|_| StoreError::Corrupt { what: "account" })?,
        email: Email::parse(&email).map_err(|_| StoreError::Corrupt { what: "email" })?,
        role: Role::parse(&role).ok_or(StoreError::Corrupt { what: "role" })?,
        status: KeyStatus::parse(&status).ok_or(StoreError::Corrupt { what: "status" })?,
        rate_limit_per_minute: u32::try_from(rate_limit)
            .map_err(|_| StoreError::Corrupt { what: "rate limit" })?,
        secret_hash,
        created_at: from_ms(created_at)?,
    })
}

const KEY_COLS: &str =
    "key_id, account, email, role, status, rate_limit, secret_hash, created_at_ms";

fn select_key(conn: &Connection, key_id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {KEY_COLS} FROM api_keys WHERE key_id = ?1"
        ))
        .map_err(map_err)?;
    let mut rows = stmt.query(params![key_id]).map_err(map_err)?;
    match rows.next().map_err(map_err)? {
        Some(row) => row_to_key(row).map(Some),
        None => Ok(None),
    }
}

fn lease_bytes(id: &LeaseId) -> [u8; 16] {
    *id.as_uuid().as_bytes()
}

/// `seq`s of the account's available events, at most `limit` of each kind:
/// never leased (or released), and whose lease ended by `now`. Each is one
/// range of `events_leasable[_by_type]`; no running lease is read.
fn available_seqs(
    c: &Connection,
    account: &AccountId,
    event_type: Option<&EventType>,
    now: i64,
    limit: i64,
) -> Result<Vec<i64>, StoreError> {
    let mut seqs = Vec::new();
    for ended in [false, true] {
        let sql = available_sql(event_type.is_some(), ended);
        let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
        let mut rows = match (event_type, ended) {
            (Some(t), true) => stmt.query(params![account.as_str(), limit, now, t.as_str()]),
            (Some(t), false) => {
                stmt.query(params![account.as_str(), limit, None::<i64>, t.as_str()])
            }
            (None, true) => stmt.query(params![account.as_str(), limit, now]),
            (None, false) => stmt.query(params![account.as_str(), limit]),
        }
        .map_err(map_err)?;
        while let Some(row) = rows.next().map_err(map_err)? {
            seqs.push(row.get::<_, i64>(0).map_err(map_err)?);
        }
    }
    seqs.sort_unstable();
    seqs.dedup();
    seqs.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(seqs)
}

/// An inbox or quarantine page: `?1` account, `?2` after, `?3` limit, `?4`
/// type, `?5` quarantined (0 or 1); `events_open[_by_type]` in order.
fn inbox_sql(typed: bool) -> String {
    let type_clause = if typed {
        "event_type = ?4"
    } else {
        "?4 IS NULL"
    };
    format!(
        "SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE account = ?1 AND {type_clause} \
         AND quarantined = ?5 AND delivered_at_ms IS NULL AND events.seq > ?2 \
         ORDER BY events.seq LIMIT ?3"
    )
}

/// The candidates query: `?1` account, `?2` limit, `?3` now, `?4` type.
/// Never leased (or released): `leased_until_ms = 0`, read in `seq` order
/// straight from the index. Ended leases: `1..=now`, sorted (only rows that
/// are available are read).
fn available_sql(typed: bool, ended: bool) -> String {
    let type_clause = if typed { "AND event_type = ?4" } else { "" };
    let range = if ended {
        "leased_until_ms BETWEEN 1 AND ?3"
    } else {
        "leased_until_ms = 0"
    };
    format!(
        "SELECT seq FROM events WHERE account = ?1 {type_clause} \
         AND delivered_at_ms IS NULL AND quarantined = 0 AND {range} \
         ORDER BY seq LIMIT ?2"
    )
}

fn lease_in(
    c: &Connection,
    account: &AccountId,
    req: &LeaseRequest,
) -> Result<Vec<Event>, StoreError> {
    let limit = i64::from(req.limit.clamp(1, 100));
    let seqs = available_seqs(c, account, req.event_type.as_ref(), ms(req.now), limit)?;
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let mut read = c
        .prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE events.seq = ?1"
        ))
        .map_err(map_err)?;
    // Two statements, so that the usual lease does not name `quarantined`
    // (an UPDATE that sets a column rewrites the entries of every index on
    // it, here `events_open[_by_type]`, even to the same value).
    let mut update = c
        .prepare_cached(
            "UPDATE events SET lease_count = lease_count + 1, leased_until_ms = ?2, \
             lease_id = ?3 WHERE seq = ?1",
        )
        .map_err(map_err)?;
    let mut last_update = c
        .prepare_cached(
            "UPDATE events SET lease_count = lease_count + 1, leased_until_ms = ?2, \
             lease_id = ?3, quarantined = 1 WHERE seq = ?1",
        )
        .map_err(map_err)?;
    let (until, lease) = (ms(req.leased_until), lease_bytes(&req.lease_id));
    let max_leases = i64::from(req.max_leases.max(1));
    let mut events = Vec::with_capacity(seqs.len());
    let mut ids = Vec::with_capacity(seqs.len() * 16);
    let mut bytes = 0usize;
    for seq in seqs {
        let mut ev = read
            .query_row(params![seq], |row| Ok(row_to_event(row)))
            .map_err(map_err)??
            .1;
        bytes = bytes.saturating_add(ev.approx_bytes());
        if bytes > req.max_bytes && !events.is_empty() {
            break;
        }
        ev.lease_count = ev.lease_count.saturating_add(1);
        ev.leased_until = Some(req.leased_until);
        ev.quarantined = i64::from(ev.lease_count) >= max_leases;
        let stmt = if ev.quarantined {
            &mut last_update
        } else {
            &mut update
        };
        stmt.execute(params![seq, until, lease.as_slice()])
            .map_err(map_err)?;
        ids.extend_from_slice(&id_bytes(&ev.event_id));
        events.push(ev);
    }
    c.prepare_cached(
        "INSERT INTO leases (lease_id, account, leased_until_ms, event_ids) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(map_err)?
    .execute(params![lease.as_slice(), account.as_str(), until, ids])
    .map_err(map_err)?;
    Ok(events)
}

/// The event ids a lease of `account` holds, unless it is unknown or past
/// the cutoff.
fn lease_record(
    c: &Connection,
    account: &AccountId,
    lease: &LeaseId,
    cutoff: i64,
) -> Result<Option<Vec<EventId>>, StoreError> {
    let row: Option<(i64, Vec<u8>)> = c
        .prepare_cached(
            "SELECT leased_until_ms, event_ids FROM leases WHERE lease_id = ?1 AND account = ?2",
        )
        .map_err(map_err)?
        .query_row(
            params![lease_bytes(lease).as_slice(), account.as_str()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(map_err)?;
    let Some((until, bytes)) = row else {
        return Ok(None);
    };
    if until <= cutoff {
        return Ok(None);
    }
    bytes
        .chunks(16)
        .map(|b| {
            uuid::Uuid::from_slice(b)
                .map(EventId::from_uuid)
                .map_err(|_| StoreError::Corrupt {
                    what: "lease event id",
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// Runs `one` for every listed id the lease holds (by its record); `one`
/// says whether the event was still the lease's (its conditional UPDATE
/// changed a row).
fn settle_in(
    c: &Connection,
    account: &AccountId,
    lease: &LeaseId,
    wanted: Option<&[EventId]>,
    cutoff: i64,
    mut one: impl FnMut(&[u8; 16]) -> Result<bool, StoreError>,
) -> Result<Option<Settled>, StoreError> {
    let Some(held) = lease_record(c, account, lease, cutoff)? else {
        return Ok(None);
    };
    let of_lease: std::collections::HashSet<EventId> = held.iter().copied().collect();
    let ids = match wanted {
        Some(w) => {
            let mut seen = std::collections::HashSet::new();
            w.iter().copied().filter(|id| seen.insert(*id)).collect()
        }
        None => held,
    };
    let mut out = Settled::default();
    for id in ids {
        if of_lease.contains(&id) && one(&id_bytes(&id))? {
            out.done.push(id);
        } else {
            out.stale.push(id);
        }
    }
    Ok(Some(out))
}

/// Inserts one event unless it is a duplicate (within the writer's
/// transaction: the dedup check and the insert are one atomic step).
fn insert_in(c: &Connection, e: &NewEvent, dedup: &Dedup) -> Result<Inserted, StoreError> {
    let window_ms = i64::try_from(dedup.window.as_millis()).unwrap_or(i64::MAX);
    let account = e.account.as_str();
    let ts = ms(e.timestamp);
    let prior: Option<(Vec<u8>, i64)> = c
        .prepare_cached("SELECT event_id, ts_ms FROM dedup WHERE account = ?1 AND fingerprint = ?2")
        .map_err(map_err)?
        .query_row(params![account, dedup.fingerprint.0.as_slice()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()
        .map_err(map_err)?;
    if let Some((id, orig_ts)) = prior {
        if orig_ts.saturating_add(window_ms) > ts {
            let id = uuid::Uuid::from_slice(&id).map_err(|_| StoreError::Corrupt {
                what: "dedup event id",
            })?;
            return Ok(Inserted::Duplicate {
                event_id: EventId::from_uuid(id),
                timestamp: from_ms(orig_ts)?,
            });
        }
    }
    let id = id_bytes(&e.event_id);
    c.prepare_cached(
        "INSERT OR REPLACE INTO dedup (account, fingerprint, event_id, ts_ms) VALUES (?1, ?2, ?3, ?4)",
    )
    .map_err(map_err)?
    .execute(params![account, dedup.fingerprint.0.as_slice(), id.as_slice(), ts])
    .map_err(map_err)?;
    let seq: i64 = c
        .prepare_cached(
            "INSERT INTO events (event_id, account, event_type, source, ts_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5) RETURNING seq",
        )
        .map_err(map_err)?
        .query_row(
            params![
                id.as_slice(),
                account,
                e.event_type.as_str(),
                e.source.as_ref().map(Source::as_str),
                ts
            ],
            |r| r.get(0),
        )
        .map_err(map_err)?;
    c.prepare_cached("INSERT INTO event_bodies (seq, payload, metadata) VALUES (?1, ?2, ?3)")
        .map_err(map_err)?
        .execute(params![seq, e.payload.as_str(), e.metadata.as_str()])
        .map_err(map_err)?;
    Ok(Inserted::Created)
}

/// [`Store::claim_idempotency_key`] in the writer's transaction: the read
/// and the write are one atomic step.
fn claim_in(c: &Connection, claim: &IdempotencyClaim) -> Result<ClaimOutcome, StoreError> {
    let (account, key) = (claim.account.as_str(), claim.key.as_str());
    /// request, expires_ms, status, body
    type Row = (Vec<u8>, i64, Option<i64>, Option<Vec<u8>>);
    let row: Option<Row> = c
        .prepare_cached(
            "SELECT request, expires_ms, status, body FROM idempotency \
             WHERE account = ?1 AND key = ?2",
        )
        .map_err(map_err)?
        .query_row(params![account, key], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()
        .map_err(map_err)?;
    if let Some((request, expires_ms, status, body)) = row {
        if expires_ms > ms(claim.now) {
            let same_request = request.as_slice() == claim.request.as_slice();
            return Ok(match status {
                None => ClaimOutcome::InFlight { same_request },
                Some(status) => ClaimOutcome::Kept {
                    same_request,
                    response: KeptResponse {
                        status: u16::try_from(status).map_err(|_| StoreError::Corrupt {
                            what: "idempotency status",
                        })?,
                        body: body.unwrap_or_default(),
                    },
                },
            });
        }
    }
    c.prepare_cached(
        "INSERT OR REPLACE INTO idempotency (account, key, request, token, expires_ms, status, body) \
         VALUES (?1, ?2, ?3, ?4, ?5, NULL, NULL)",
    )
    .map_err(map_err)?
    .execute(params![
        account,
        key,
        claim.request.as_slice(),
        claim.token.as_bytes().as_slice(),
        ms(claim.lapses_at)
    ])
    .map_err(map_err)?;
    Ok(ClaimOutcome::Claimed)
}

fn decode_position(p: &Position) -> Result<i64, StoreError> {
    let bytes: [u8; 8] =
        p.0.as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt { what: "position" })?;
    Ok(i64::from_be_bytes(bytes))
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(map_err))
            .await
    }

    async fn secret(&self, name: &str) -> Result<[u8; 32], StoreError> {
        let name = name.to_owned();
        self.write(move |c| {
            let fresh: [u8; 32] = rand::random();
            c.execute(
                "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
                params![name, fresh.as_slice()],
            )
            .map_err(map_err)?;
            let v: Vec<u8> = c
                .query_row(
                    "SELECT value FROM secrets WHERE name = ?1",
                    params![name],
                    |r| r.get(0),
                )
                .map_err(map_err)?;
            v.try_into()
                .map_err(|_| StoreError::Corrupt { what: "secret" })
        })
        .await
    }

    async fn create_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let k = key.clone();
        self.write(move |c| {
            let n = c
                .execute(
                    &format!("INSERT OR IGNORE INTO api_keys ({KEY_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
                    params![
                        k.key_id.as_str(),
                        k.account.as_str(),
                        k.email.as_str(),
                        k.role.as_str(),
                        k.status.as_str(),
                        k.rate_limit_per_minute,
                        k.secret_hash,
                        ms(k.created_at)
                    ],
                )
                .map_err(map_err)?;
            if n == 0 {
                Err(StoreError::Conflict)
            } else {
                Ok(())
            }
        })
        .await
    }

    async fn get_key(&self, key_id: &KeyId) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = key_id.clone();
        self.read(move |c| select_key(c, id.as_str())).await
    }

    async fn list_keys(
        &self,
        account: Option<&AccountId>,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let account = account.cloned();
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {KEY_COLS} FROM api_keys WHERE ?1 IS NULL OR account = ?1 ORDER BY created_at_ms, key_id"
                ))
                .map_err(map_err)?;
            let mut rows = stmt
                .query(params![account.as_ref().map(AccountId::as_str)])
                .map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                out.push(row_to_key(row)?);
            }
            Ok(out)
        })
        .await
    }

    async fn update_key(
        &self,
        key_id: &KeyId,
        change: KeyChange,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let id = key_id.clone();
        self.write(move |c| {
            let n = match change {
                KeyChange::Status(s) => c.execute(
                    "UPDATE api_keys SET status = ?2 WHERE key_id = ?1",
                    params![id.as_str(), s.as_str()],
                ),
                KeyChange::RateLimit(n) => c.execute(
                    "UPDATE api_keys SET rate_limit = ?2 WHERE key_id = ?1",
                    params![id.as_str(), n],
                ),
            }
            .map_err(map_err)?;
            if n == 0 {
                return Ok(None);
            }
            select_key(c, id.as_str())
        })
        .await
    }

    async fn revoke_keys_by_email(&self, email: &Email) -> Result<Vec<KeyId>, StoreError> {
        let email = email.clone();
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "UPDATE api_keys SET status = 'revoked' WHERE email = ?1 RETURNING key_id",
                )
                .map_err(map_err)?;
            let mut rows = stmt.query(params![email.as_str()]).map_err(map_err)?;
            let mut out = Vec::new();
            while let Some(row) = rows.next().map_err(map_err)? {
                let id: String = row.get(0).map_err(map_err)?;
                out.push(KeyId::parse(&id).ok_or(StoreError::Corrupt { what: "key id" })?);
            }
            Ok(out)
        })
        .await
    }

    async fn insert_event(&self, e: NewEvent, dedup: Dedup) -> Result<Inserted, StoreError> {
        self.write(move |c| insert_in(c, &e, &dedup)).await
    }

    /// One job of the writer: every event in its savepoint, in order (a
    /// later one sees the dedup records of the earlier ones), committed in
    /// one group transaction: all or none.
    async fn insert_events(&self, events: Vec<Insert>) -> Result<Vec<Inserted>, StoreError> {
        self.write(move |c| {
            events
                .iter()
                .map(|i| insert_in(c, &i.event, &i.dedup))
                .collect()
        })
        .await
    }

    async fn claim_idempotency_key(
        &self,
        claim: &IdempotencyClaim,
    ) -> Result<ClaimOutcome, StoreError> {
        let claim = claim.clone();
        self.write(move |c| claim_in(c, &claim)).await
    }

    async fn finish_idempotency_key(
        &self,
        account: &AccountId,
        key: &IdempotencyKey,
        token: uuid::Uuid,
        finish: Finish,
    ) -> Result<bool, StoreError> {
        let (account, key) = (account.clone(), key.clone());
        self.write(move |c| {
            let n = match finish {
                Finish::Keep {
                    response,
                    expires_at,
                } => c
                    .prepare_cached(
                        "UPDATE idempotency SET status = ?4, body = ?5, expires_ms = ?6 \
                         WHERE account = ?1 AND key = ?2 AND token = ?3 AND status IS NULL",
                    )
                    .map_err(map_err)?
                    .execute(params![
                        account.as_str(),
                        key.as_str(),
                        token.as_bytes().as_slice(),
                        response.status,
                        response.body,
                        ms(expires_at)
                    ]),
                Finish::Release => c
                    .prepare_cached(
                        "DELETE FROM idempotency WHERE account = ?1 AND key = ?2 AND token = ?3 \
                         AND status IS NULL",
                    )
                    .map_err(map_err)?
                    .execute(params![
                        account.as_str(),
                        key.as_str(),
                        token.as_bytes().as_slice()
                    ]),
            }
            .map_err(map_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn get_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Event>, StoreError> {
        let (account, id, cutoff) = (account.clone(), id_bytes(event_id), ms(delivered_cutoff));
        self.read(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE event_id = ?1 AND account = ?2 \
                     AND (delivered_at_ms IS NULL OR delivered_at_ms > ?3)"
                ))
                .map_err(map_err)?;
            let mut rows = stmt
                .query(params![id.as_slice(), account.as_str(), cutoff])
                .map_err(map_err)?;
            match rows.next().map_err(map_err)? {
                Some(row) => Ok(Some(row_to_event(row)?.1)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn inbox(&self, account: &AccountId, q: &InboxQuery) -> Result<InboxPage, StoreError> {
        let after = q
            .after
            .as_ref()
            .map(decode_position)
            .transpose()?
            .unwrap_or(0);
        let (account, event_type, limit) = (account.clone(), q.event_type.clone(), q.limit);
        let quarantined = i64::from(q.state == InboxState::Quarantined);
        let max_bytes = q.max_bytes;
        self.read(move |c| {
            let sql = inbox_sql(event_type.is_some());
            let mut stmt = c.prepare_cached(&sql).map_err(map_err)?;
            let mut rows = stmt
                .query(params![
                    account.as_str(),
                    after,
                    i64::from(limit) + 1,
                    event_type.as_ref().map(EventType::as_str),
                    quarantined
                ])
                .map_err(map_err)?;
            let mut events = Vec::with_capacity(limit as usize + 1);
            let mut last_seq = None;
            let mut has_more = false;
            let mut bytes = 0usize;
            while let Some(row) = rows.next().map_err(map_err)? {
                if events.len() == limit as usize {
                    has_more = true;
                    break;
                }
                let (seq, ev) = row_to_event(row)?;
                bytes = bytes.saturating_add(ev.approx_bytes());
                if bytes > max_bytes && !events.is_empty() {
                    has_more = true;
                    break;
                }
                last_seq = Some(seq);
                events.push(ev);
            }
            Ok(InboxPage {
                events,
                has_more,
                last: last_seq.map(|s| Position(s.to_be_bytes().to_vec())),
            })
        })
        .await
    }

    async fn ack_event(
        &self,
        account: &AccountId,
        event_id: &EventId,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<AckOutcome, StoreError> {
        let (account, id) = (account.clone(), id_bytes(event_id));
        let (now, cutoff) = (ms(now), ms(delivered_cutoff));
        self.write(move |c| {
            let state: Option<Option<i64>> = c
                .prepare_cached("SELECT delivered_at_ms FROM events WHERE event_id = ?1 AND account = ?2")
                .map_err(map_err)?
                .query_row(params![id.as_slice(), account.as_str()], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            match state {
                None => Ok(AckOutcome::NotFound),
                Some(Some(at)) if at <= cutoff => Ok(AckOutcome::NotFound),
                Some(Some(_)) => Ok(AckOutcome::AlreadyDelivered),
                Some(None) => {
                    c.prepare_cached(
                        "UPDATE events SET delivered_at_ms = ?3 WHERE event_id = ?1 AND account = ?2 \
                         AND delivered_at_ms IS NULL",
                    )
                    .map_err(map_err)?
                    .execute(params![id.as_slice(), account.as_str(), now])
                    .map_err(map_err)?;
                    Ok(AckOutcome::Acknowledged)
                }
            }
        })
        .await
    }

    /// One job of the writer (so leases are serialised with every other
    /// write: two leases never take one event): two index range reads for
    /// the candidates, then one UPDATE per event and one INSERT of the
    /// lease record, committed with the group.
    async fn lease(
        &self,
        account: &AccountId,
        req: &LeaseRequest,
    ) -> Result<Vec<Event>, StoreError> {
        let (account, req) = (account.clone(), req.clone());
        self.write(move |c| lease_in(c, &account, &req)).await
    }

    async fn ack_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        now: DateTime<Utc>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        let (account, lease, ids) = (account.clone(), *lease_id, event_ids.map(<[_]>::to_vec));
        let (now, cutoff) = (ms(now), ms(delivered_cutoff));
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "UPDATE events SET delivered_at_ms = ?3 WHERE event_id = ?1 AND account = ?2 \
                     AND lease_id = ?4 AND delivered_at_ms IS NULL",
                )
                .map_err(map_err)?;
            let lease_bytes = lease_bytes(&lease);
            settle_in(c, &account, &lease, ids.as_deref(), cutoff, |id| {
                stmt.execute(params![
                    id.as_slice(),
                    account.as_str(),
                    now,
                    lease_bytes.as_slice()
                ])
                .map(|n| n == 1)
                .map_err(map_err)
            })
        })
        .await
    }

    async fn release_leased(
        &self,
        account: &AccountId,
        lease_id: &LeaseId,
        event_ids: Option<&[EventId]>,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<Option<Settled>, StoreError> {
        let (account, lease, ids) = (account.clone(), *lease_id, event_ids.map(<[_]>::to_vec));
        let cutoff = ms(delivered_cutoff);
        self.write(move |c| {
            let mut stmt = c
                .prepare_cached(
                    "UPDATE events SET lease_id = NULL, leased_until_ms = 0 \
                     WHERE event_id = ?1 AND account = ?2 AND lease_id = ?3 \
                     AND delivered_at_ms IS NULL",
                )
                .map_err(map_err)?;
            let lease_bytes = lease_bytes(&lease);
            settle_in(c, &account, &lease, ids.as_deref(), cutoff, |id| {
                stmt.execute(params![
                    id.as_slice(),
                    account.as_str(),
                    lease_bytes.as_slice()
                ])
                .map(|n| n == 1)
                .map_err(map_err)
            })
        })
        .await
    }

    async fn requeue(
        &self,
        account: &AccountId,
        event_id: &EventId,
        delivered_cutoff: DateTime<Utc>,
    ) -> Result<RequeueOutcome, StoreError> {
        let (account, id, cutoff) = (account.clone(), id_bytes(event_id), ms(delivered_cutoff));
        self.write(move |c| {
            let requeued: Option<i64> = c
                .prepare_cached(
                    "UPDATE events SET quarantined = 0, lease_count = 0, lease_id = NULL, \
                     leased_until_ms = 0 WHERE event_id = ?1 AND account = ?2 \
                     AND delivered_at_ms IS NULL AND quarantined = 1 RETURNING seq",
                )
                .map_err(map_err)?
                .query_row(params![id.as_slice(), account.as_str()], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            if let Some(seq) = requeued {
                let mut read = c
                    .prepare_cached(&format!(
                        "SELECT {EVENT_COLS} FROM {EVENT_FROM} WHERE events.seq = ?1"
                    ))
                    .map_err(map_err)?;
                let ev = read
                    .query_row(params![seq], |row| Ok(row_to_event(row)))
                    .map_err(map_err)??
                    .1;
                return Ok(RequeueOutcome::Requeued(ev));
            }
            let state: Option<Option<i64>> = c
                .prepare_cached(
                    "SELECT delivered_at_ms FROM events WHERE event_id = ?1 AND account = ?2",
                )
                .map_err(map_err)?
                .query_row(params![id.as_slice(), account.as_str()], |r| r.get(0))
                .optional()
                .map_err(map_err)?;
            Ok(match state {
                None => RequeueOutcome::NotFound,
                Some(Some(at)) if at <= cutoff => RequeueOutcome::NotFound,
                Some(_) => RequeueOutcome::NotQuarantined,
            })
        })
        .await
    }

    async fn purge(
        &self,
        delivered_cutoff: DateTime<Utc>,
        dedup_cutoff: DateTime<Utc>,
        idempotency_cutoff: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let (dc, fc, ic) = (
            ms(delivered_cutoff),
            ms(dedup_cutoff),
            ms(idempotency_cutoff),
        );
        let mut total = 0u64;
        // In chunks, so one purge never holds the writer for long.
        loop {
            let (events, dedups) = self
                .write(move |c| {
                    let seqs = c
                        .prepare_cached(
                            "DELETE FROM events WHERE seq IN (SELECT seq FROM events \
                             WHERE delivered_at_ms IS NOT NULL AND delivered_at_ms <= ?1 LIMIT ?2) \
                             RETURNING seq",
                        )
                        .map_err(map_err)?
                        .query_map(params![dc, PURGE_CHUNK], |r| r.get::<_, i64>(0))
                        .map_err(map_err)?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(map_err)?;
                    let mut body = c
                        .prepare_cached("DELETE FROM event_bodies WHERE seq = ?1")
                        .map_err(map_err)?;
                    for seq in &seqs {
                        body.execute(params![seq]).map_err(map_err)?;
                    }
                    let events = seqs.len();
                    let dedups = c
                        .execute(
                            "DELETE FROM dedup WHERE (account, fingerprint) IN (SELECT account, fingerprint \
                             FROM dedup WHERE ts_ms <= ?1 LIMIT ?2)",
                            params![fc, PURGE_CHUNK],
                        )
                        .map_err(map_err)?;
                    let leases = c
                        .execute(
                            "DELETE FROM leases WHERE lease_id IN (SELECT lease_id FROM leases \
                             WHERE leased_until_ms <= ?1 LIMIT ?2)",
                            params![dc, PURGE_CHUNK],
                        )
                        .map_err(map_err)?;
                    let keys = c
                        .execute(
                            "DELETE FROM idempotency WHERE rowid IN (SELECT rowid FROM idempotency \
                             WHERE expires_ms <= ?1 LIMIT ?2)",
                            params![ic, PURGE_CHUNK],
                        )
                        .map_err(map_err)?;
                    Ok((events as u64, dedups.max(leases).max(keys) as u64))
                })
                .await?;
            total += events;
            if events < PURGE_CHUNK as u64 && dedups < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Connection {
        let c = Connection::open_in_memory().expect("in memory");
        c.execute_batch(SCHEMA_V1).expect("v1");
        c.execute_batch(MIGRATE_V2).expect("v2");
        c.execute_batch(MIGRATE_V3).expect("v3");
        c.execute_batch(MIGRATE_V4).expect("v4");
        c
    }

    fn plan(c: &Connection, sql: &str) -> String {
        let mut stmt = c
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let n = stmt.parameter_count();
        let rows = stmt
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(1i64, n)),
                |r| r.get::<_, String>(3),
            )
            .expect("plan")
            .collect::<Result<Vec<_>, _>>()
            .expect("rows");
        rows.join(" | ")
    }

    /// The planner must find these without statistics (parameters bound to
    /// 1; their values do not change the plan).
    #[test]
    fn leasing_reads_only_available_rows_through_the_leasable_indexes() {
        let c = schema();
        for typed in [false, true] {
            let index = if typed {
                "events_leasable_by_type"
            } else {
                "events_leasable"
            };
            let fresh = plan(&c, &available_sql(typed, false));
            assert!(
                fresh.starts_with("SEARCH events USING ")
                    && fresh.contains(&format!("INDEX {index} (account=? AND"))
                    && fresh.contains("leased_until_ms=?)")
                    && !fresh.contains("TEMP B-TREE"),
                "{fresh}"
            );
            let ended = plan(&c, &available_sql(typed, true));
            assert!(
                ended.starts_with("SEARCH events USING ")
                    && ended.contains(&format!("INDEX {index} (account=? AND"))
                    && ended.contains("leased_until_ms>? AND leased_until_ms<?)"),
                "{ended}"
            );
        }
    }

    /// A distinct dedup fingerprint per `i`.
    fn fingerprint(i: usize) -> [u8; 32] {
        let mut f = [0u8; 32];
        f[..8].copy_from_slice(&(i as u64).to_be_bytes());
        f
    }

    /// Every row of `sql`, as SQLite values.
    fn rows(c: &Connection, sql: &str) -> Vec<Vec<rusqlite::types::Value>> {
        let mut stmt = c.prepare(sql).expect(sql);
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            (0..n)
                .map(|i| r.get::<_, rusqlite::types::Value>(i))
                .collect::<Result<Vec<_>, _>>()
        })
        .expect(sql)
        .collect::<Result<Vec<_>, _>>()
        .expect(sql)
    }

    /// Every event as version 3 stored it (payload and metadata in the row).
    const V3_EVENTS: &str =
        "SELECT seq, event_id, account, event_type, payload, source, metadata, \
         ts_ms, delivered_at_ms, lease_count, leased_until_ms, lease_id, quarantined \
         FROM events ORDER BY seq";
    /// ... and as version 4 does (the body in `event_bodies`).
    const V4_EVENTS: &str = "SELECT e.seq, e.event_id, e.account, e.event_type, b.payload, \
         e.source, b.metadata, e.ts_ms, e.delivered_at_ms, e.lease_count, e.leased_until_ms, \
         e.lease_id, e.quarantined FROM events e JOIN event_bodies b ON b.seq = e.seq \
         ORDER BY e.seq";
    /// The tables whose rows the upgrade must leave as they are.
    const KEPT: [&str; 6] = [
        "SELECT * FROM dedup ORDER BY account, fingerprint",
        "SELECT * FROM leases ORDER BY lease_id",
        "SELECT * FROM api_keys ORDER BY key_id",
        "SELECT * FROM secrets ORDER BY name",
        "SELECT * FROM idempotency ORDER BY account, key",
        "SELECT * FROM sqlite_sequence ORDER BY name",
    ];

    /// A file written by version 3 (its schema made by the statements
    /// version 3 ran on a new file, its rows by the statements version 3's
    /// writer ran: inserts, leases, acks, quarantines, purges, dedup, keys,
    /// secrets, idempotency records) is upgraded to version 4 when opened:
    /// every row reads back identically, and the store works on it.
    #[tokio::test]
    async fn a_version_3_file_is_upgraded_in_place_losing_nothing() {
        use crate::domain::{trunc_ms, EventId, IdempotencyKey, LeaseId};
        use chrono::TimeDelta;

        const N: usize = 700;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("v3.db");
        let acct = AccountId::parse("acme").expect("account");
        let now = trunc_ms(Utc::now());
        let (now_ms, later, earlier) = (
            ms(now),
            ms(now + TimeDelta::seconds(60)),
            ms(now - TimeDelta::seconds(60)),
        );
        let running = LeaseId::new_random();
        let ended = LeaseId::new_random();
        let mut ids = Vec::new();
        {
            let mut c = open_conn(&path).expect("open");
            let tx = c.transaction().expect("tx");
            tx.execute_batch(SCHEMA_V1).expect("v1");
            tx.execute_batch(MIGRATE_V2).expect("v2");
            tx.execute_batch(MIGRATE_V3).expect("v3");
            tx.pragma_update(None, "user_version", 3).expect("version");
            tx.commit().expect("commit");
            let tx = c.transaction().expect("tx");
            let mut running_ids = Vec::new();
            for i in 0..N {
                let id = EventId::new_v7();
                ids.push(id);
                let pad = r#"é\"\\ "#.repeat(i % 300);
                tx.execute(
                    "INSERT INTO events (event_id, account, event_type, payload, source, metadata, ts_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        id_bytes(&id).as_slice(),
                        if i % 11 == 0 { "other" } else { "acme" },
                        format!("type.{}", i % 4),
                        format!(r#"{{"i":{i},"pad":"{pad}"}}"#),
                        (i % 2 == 0).then(|| format!("src-{i}")),
                        if i % 3 == 0 { format!(r#"{{"m":{i}}}"#) } else { "{}".to_owned() },
                        now_ms - i64::try_from(N - i).expect("n"),
                    ],
                )
                .expect("insert");
                tx.execute(
                    "INSERT OR REPLACE INTO dedup (account, fingerprint, event_id, ts_ms) \
                     VALUES ('acme', ?1, ?2, ?3)",
                    params![fingerprint(i).as_slice(), id_bytes(&id).as_slice(), now_ms],
                )
                .expect("dedup");
                if i % 11 == 0 {
                    continue;
                }
                // Version 3's lease, ack and quarantine statements.
                let (lease, until, quarantine, delivered) = match i % 6 {
                    0 => (Some(ended), earlier, false, Some(now_ms)),
                    1 => (Some(running), later, false, None),
                    2 => (Some(ended), earlier, true, None),
                    3 => (Some(ended), earlier, false, None),
                    _ => (None, 0, false, None),
                };
                if let Some(lease) = lease {
                    tx.execute(
                        "UPDATE events SET lease_count = lease_count + 1, leased_until_ms = ?2, \
                         lease_id = ?3, quarantined = ?4 WHERE seq = (SELECT seq FROM events \
                         WHERE event_id = ?1)",
                        params![
                            id_bytes(&id).as_slice(),
                            until,
                            lease_bytes(&lease).as_slice(),
                            i64::from(quarantine)
                        ],
                    )
                    .expect("lease");
                    if lease == running {
                        running_ids.extend_from_slice(&id_bytes(&id));
                    }
                }
                if let Some(at) = delivered {
                    tx.execute(
                        "UPDATE events SET delivered_at_ms = ?2 WHERE event_id = ?1",
                        params![id_bytes(&id).as_slice(), at],
                    )
                    .expect("ack");
                }
            }
            for (lease, until, held) in [(running, later, running_ids), (ended, earlier, vec![])] {
                tx.execute(
                    "INSERT INTO leases (lease_id, account, leased_until_ms, event_ids) \
                     VALUES (?1, 'acme', ?2, ?3)",
                    params![lease_bytes(&lease).as_slice(), until, held],
                )
                .expect("lease record");
            }
            // The purge took the newest event: the counter is past max(seq).
            tx.execute(
                "DELETE FROM events WHERE seq = (SELECT max(seq) FROM events)",
                [],
            )
            .expect("purge");
            ids.pop();
            tx.execute(
                "INSERT INTO api_keys (key_id, account, email, role, status, rate_limit, \
                 secret_hash, created_at_ms) VALUES ('k0k0k0k0k0k0k0k0', 'acme', 'a@b.c', \
                 'creator', 'active', 600, '$argon2id$x', ?1)",
                params![now_ms],
            )
            .expect("key");
            tx.execute(
                "INSERT INTO secrets (name, value) VALUES ('cursor', ?1)",
                params![[9u8; 32].as_slice()],
            )
            .expect("secret");
            tx.execute(
                "INSERT INTO idempotency (account, key, request, token, expires_ms, status, body) \
                 VALUES ('acme', 'kept', ?1, ?2, ?3, 201, ?4), \
                        ('acme', 'flying', ?1, ?2, ?3, NULL, NULL)",
                params![
                    [7u8; 32].as_slice(),
                    [1u8; 16].as_slice(),
                    later,
                    b"{\"ok\":1}".as_slice()
                ],
            )
            .expect("idempotency");
            tx.commit().expect("commit");
        }
        let (events, kept, seq_max) = {
            let c = open_conn(&path).expect("open");
            let kept: Vec<_> = KEPT.iter().map(|q| rows(&c, q)).collect();
            let seq_max: i64 = c
                .query_row(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                    [],
                    |r| r.get(0),
                )
                .expect("sequence");
            (rows(&c, V3_EVENTS), kept, seq_max)
        };
        assert_eq!(events.len(), N - 1);

        let store = SqliteStore::open(&path).expect("upgrade");
        {
            let c = open_conn(&path).expect("open");
            let version: i64 = c
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .expect("version");
            assert_eq!(version, SCHEMA_VERSION);
            let cols = rows(
                &c,
                "SELECT name FROM pragma_table_info('events') ORDER BY cid",
            );
            assert!(
                !cols.iter().any(|r| matches!(&r[0], rusqlite::types::Value::Text(n) if n == "payload" || n == "metadata")),
                "{cols:?}"
            );
            assert_eq!(rows(&c, V4_EVENTS), events, "events, with their bodies");
            let bodies: i64 = c
                .query_row("SELECT count(*) FROM event_bodies", [], |r| r.get(0))
                .expect("count");
            assert_eq!(
                usize::try_from(bodies).expect("count"),
                N - 1,
                "no body without its event"
            );
            let after: Vec<_> = KEPT.iter().map(|q| rows(&c, q)).collect();
            assert_eq!(after, kept);
            let check: String = c
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity");
            assert_eq!(check, "ok");
        }

        // The store reads every event as version 3 did.
        let cutoff = now - TimeDelta::days(30);
        for (i, id) in ids.iter().enumerate() {
            let account = AccountId::parse(if i % 11 == 0 { "other" } else { "acme" }).expect("a");
            let ev = store
                .get_event(&account, id, cutoff)
                .await
                .expect("get")
                .expect("found");
            let pad = r#"é\"\\ "#.repeat(i % 300);
            assert_eq!(ev.payload.as_str(), format!(r#"{{"i":{i},"pad":"{pad}"}}"#));
            assert_eq!(
                ev.source.as_ref().map(Source::as_str),
                (i % 2 == 0).then(|| format!("src-{i}")).as_deref()
            );
            let leased = i % 11 != 0 && i % 6 < 4;
            assert_eq!(ev.lease_count, u32::from(leased), "{i}");
            assert_eq!(ev.delivered, i % 11 != 0 && i % 6 == 0, "{i}");
            assert_eq!(ev.quarantined, i % 11 != 0 && i % 6 == 2, "{i}");
        }
        // The running lease is still held, and acknowledged by its record.
        let held: Vec<EventId> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 11 != 0 && i % 6 == 1)
            .map(|(_, id)| *id)
            .collect();
        let acked = store
            .ack_leased(&acct, &running, None, now, cutoff)
            .await
            .expect("ack")
            .expect("lease known");
        assert_eq!(acked.done, held);
        // Dedup records still answer: the first event's fingerprint.
        let dup = store
            .insert_event(
                NewEvent {
                    event_id: EventId::new_v7(),
                    account: acct.clone(),
                    event_type: EventType::parse("type.1").expect("t"),
                    payload: JsonObject::from_json_text("{}".to_owned()).expect("j"),
                    source: None,
                    metadata: JsonObject::empty(),
                    timestamp: now,
                },
                Dedup {
                    fingerprint: crate::store::Fingerprint(fingerprint(1)),
                    window: Duration::from_secs(300),
                    margin: Duration::from_secs(35),
                },
            )
            .await
            .expect("insert");
        assert_eq!(
            dup,
            Inserted::Duplicate {
                event_id: ids[1],
                timestamp: now
            }
        );
        // A new event takes a seq past every earlier one, the purged too.
        let fresh = NewEvent {
            event_id: EventId::new_v7(),
            account: acct.clone(),
            event_type: EventType::parse("type.1").expect("t"),
            payload: JsonObject::from_json_text(r#"{"new":true}"#.to_owned()).expect("j"),
            source: None,
            metadata: JsonObject::from_json_text(r#"{"m":"new"}"#.to_owned()).expect("j"),
            timestamp: now,
        };
        let fresh_id = fresh.event_id;
        let created = store
            .insert_event(
                fresh,
                Dedup {
                    fingerprint: crate::store::Fingerprint([200u8; 32]),
                    window: Duration::from_secs(300),
                    margin: Duration::from_secs(35),
                },
            )
            .await
            .expect("insert");
        assert_eq!(created, Inserted::Created);
        let idem = IdempotencyClaim {
            account: acct.clone(),
            key: IdempotencyKey::parse(b"kept").expect("key"),
            request: [7; 32],
            token: uuid::Uuid::new_v4(),
            now,
            lapses_at: now + TimeDelta::seconds(30),
        };
        assert_eq!(
            store.claim_idempotency_key(&idem).await.expect("claim"),
            ClaimOutcome::Kept {
                same_request: true,
                response: KeptResponse {
                    status: 201,
                    body: b"{\"ok\":1}".to_vec()
                }
            }
        );
        assert_eq!(store.secret("cursor").await.expect("secret"), [9u8; 32]);
        assert_eq!(store.list_keys(Some(&acct)).await.expect("keys").len(), 1);
        drop(store);
        let c = open_conn(&path).expect("open");
        let (seq, payload, metadata): (i64, String, String) = c
            .query_row(
                "SELECT e.seq, b.payload, b.metadata FROM events e JOIN event_bodies b \
                 ON b.seq = e.seq WHERE e.event_id = ?1",
                params![id_bytes(&fresh_id).as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("fresh row");
        assert_eq!(seq, seq_max + 1);
        assert_eq!(
            (payload.as_str(), metadata.as_str()),
            (r#"{"new":true}"#, r#"{"m":"new"}"#)
        );

        // The purge deletes an event's body with it.
        let store = SqliteStore::open(&path).expect("reopen");
        let purged = store
            .purge(
                now + TimeDelta::seconds(1),
                now - TimeDelta::days(1),
                now - TimeDelta::days(1),
            )
            .await
            .expect("purge");
        assert!(purged > 0);
        drop(store);
        let orphans: i64 = c
            .query_row(
                "SELECT count(*) FROM event_bodies WHERE seq NOT IN (SELECT seq FROM events)",
                [],
                |r| r.get(0),
            )
            .expect("orphans");
        assert_eq!(orphans, 0);
        let left: i64 = c
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("left");
        let bodies: i64 = c
            .query_row("SELECT count(*) FROM event_bodies", [], |r| r.get(0))
            .expect("bodies");
        assert_eq!(left, bodies);
    }

    #[test]
    fn inbox_and_quarantine_pages_read_their_state_in_index_order() {
        let c = schema();
        for (typed, index) in [(false, "events_open"), (true, "events_open_by_type")] {
            let p = plan(&c, &inbox_sql(typed));
            assert!(
                p.contains(&format!("SEARCH events USING INDEX {index}"))
                    && p.contains("quarantined=?")
                    && !p.contains("TEMP B-TREE"),
                "{p}"
            );
        }
    }

    // The row mapping, through the store: what goes in comes back, field
    // by field, and positions and lease ids select what they name.

    fn ts(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("in range")
    }

    fn new_event(n: u32, at: i64) -> NewEvent {
        NewEvent {
            event_id: EventId::new_v7(),
            account: AccountId::parse("acme").expect("valid"),
            event_type: EventType::parse("t").expect("valid"),
            payload: JsonObject::from_json_text(format!(r#"{{"n":{n}}}"#)).expect("object"),
            source: (n % 2 == 0).then(|| Source::parse("src").expect("valid")),
            metadata: JsonObject::from_json_text(r#"{"m":true}"#.into()).expect("object"),
            timestamp: ts(at),
        }
    }

    fn dedup(n: u32) -> Dedup {
        Dedup {
            fingerprint: crate::domain::fingerprint::Fingerprint([n as u8; 32]),
            window: Duration::from_secs(60),
            margin: Duration::from_secs(35),
        }
    }

    async fn store_with(events: &[NewEvent]) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("t.db")).expect("open");
        for (i, e) in events.iter().enumerate() {
            let r = store
                .insert_event(e.clone(), dedup(i as u32))
                .await
                .expect("insert");
            assert_eq!(r, Inserted::Created);
        }
        (dir, store)
    }

    fn assert_maps_back(e: &NewEvent, got: &Event) {
        assert_eq!(got.event_id, e.event_id);
        assert_eq!(got.account, e.account);
        assert_eq!(got.event_type, e.event_type);
        assert_eq!(got.payload, e.payload);
        assert_eq!(got.source, e.source);
        assert_eq!(got.metadata, e.metadata);
        assert_eq!(got.timestamp, e.timestamp);
    }

    const T0: i64 = 1_700_000_000_123;

    #[tokio::test]
    async fn events_map_back_field_by_field_and_by_their_own_id() {
        let evs = [new_event(1, T0), new_event(2, T0 + 1)];
        let (_dir, s) = store_with(&evs).await;
        let acct = &evs[0].account;
        for e in &evs {
            let got = s
                .get_event(acct, &e.event_id, ts(0))
                .await
                .expect("get")
                .expect("found");
            assert_maps_back(e, &got);
            assert!(!got.delivered && !got.quarantined);
            assert_eq!(
                (got.delivered_at, got.leased_until, got.lease_count),
                (None, None, 0)
            );
        }
        let ack = s
            .ack_event(acct, &evs[1].event_id, ts(T0 + 5), ts(0))
            .await
            .expect("ack");
        assert_eq!(ack, AckOutcome::Acknowledged);
        let got = s
            .get_event(acct, &evs[1].event_id, ts(0))
            .await
            .expect("get")
            .expect("found");
        assert_eq!((got.delivered, got.delivered_at), (true, Some(ts(T0 + 5))));
        let other = s
            .get_event(acct, &evs[0].event_id, ts(0))
            .await
            .expect("get")
            .expect("found");
        assert!(!other.delivered, "only the acknowledged event");
    }

    #[tokio::test]
    async fn an_inbox_page_continues_strictly_after_its_position() {
        let evs = [new_event(1, T0), new_event(2, T0 + 1), new_event(3, T0 + 2)];
        let (_dir, s) = store_with(&evs).await;
        let mut q = InboxQuery {
            after: None,
            event_type: None,
            state: InboxState::Inbox,
            limit: 1,
            max_bytes: usize::MAX,
        };
        let mut seen = Vec::new();
        for pages in 1.. {
            // One event a page: more pages than events means the pages
            // never end (fail, do not hang).
            assert!(pages <= evs.len() + 1, "the pages never end: {seen:?}");
            let page = s.inbox(&evs[0].account, &q).await.expect("page");
            seen.extend(page.events.iter().map(|e| e.event_id));
            if !page.has_more {
                break;
            }
            q.after = page.last;
        }
        assert_eq!(seen, evs.iter().map(|e| e.event_id).collect::<Vec<_>>());
        // A position is 8 bytes; anything else is not one of ours.
        q.after = Some(Position(vec![0; 7]));
        assert!(matches!(
            s.inbox(&evs[0].account, &q).await,
            Err(StoreError::Corrupt { what: "position" })
        ));
    }

    #[tokio::test]
    async fn leased_and_quarantined_events_map_back_with_their_lease() {
        let evs = [new_event(1, T0)];
        let (_dir, s) = store_with(&evs).await;
        let acct = &evs[0].account;
        let lease = LeaseId::new_random();
        let req = LeaseRequest {
            lease_id: lease,
            event_type: None,
            limit: 10,
            now: ts(T0 + 10),
            leased_until: ts(T0 + 30_010),
            forget_after: ts(T0 + 100_000),
            max_leases: 1,
            max_bytes: usize::MAX,
        };
        let leased = s.lease(acct, &req).await.expect("lease");
        assert_eq!(leased.len(), 1);
        assert_maps_back(&evs[0], &leased[0]);
        assert_eq!(
            (
                leased[0].lease_count,
                leased[0].leased_until,
                leased[0].quarantined
            ),
            (1, Some(ts(T0 + 30_010)), true)
        );
        // Another lease id holds nothing; this one holds the event.
        let other = s
            .ack_leased(acct, &LeaseId::new_random(), None, ts(T0 + 20), ts(0))
            .await
            .expect("ack");
        assert_eq!(other, None);
        let done = s
            .ack_leased(acct, &lease, None, ts(T0 + 20), ts(0))
            .await
            .expect("ack")
            .expect("known lease");
        assert_eq!(done.done, vec![evs[0].event_id]);
    }

    #[tokio::test]
    async fn keys_map_back_field_by_field() {
        let (_dir, s) = store_with(&[]).await;
        let k = ApiKeyRecord {
            key_id: KeyId::parse("abcdefgh12345678").expect("valid"),
            account: AccountId::parse("acme").expect("valid"),
            email: Email::parse("a@acme.example").expect("valid"),
            role: Role::Viewer,
            status: KeyStatus::Inactive,
            rate_limit_per_minute: 42,
            secret_hash: "$2b$04$x".into(),
            created_at: ts(T0),
        };
        s.create_key(&k).await.expect("create");
        assert_eq!(s.get_key(&k.key_id).await.expect("get"), Some(k));
    }
}
