//! [`SqliteStore`]: each user's log in one SQLite file, for a single node.
//!
//! # How it works
//! - **WAL mode**, so that readers never wait for the writer nor the writer for readers.
//! - **One writer thread** owns the only write connection. Every write (`append`,
//!   `complete_receipt`, a chunk of `prune`) is a request on a bounded queue. The writer takes the
//!   first request, then whatever else is already waiting (up to [`BATCH_REQUESTS_MAX`]), runs
//!   them all in one transaction, each inside its own SAVEPOINT (a request that fails is rolled
//!   back alone, the others of its batch still commit), commits once, and only then answers each
//!   request. Many concurrent publishes thus share one fsync (group commit), and a single writer
//!   means seqs never race: `last_seq + 1` is read and written inside the transaction.
//! - **`synchronous=FULL`**: in WAL mode SQLite then fsyncs the WAL at every commit, so a commit
//!   that returned is on disk; answering after the commit means an acknowledged append survives
//!   `kill -9` and power loss. (`NORMAL` would only fsync at checkpoints: it survives a process
//!   crash but may lose the last commits on power loss, which the delivery guarantee forbids.)
//! - **Reads** (`read_after`, `head`) use a pool of [`READER_CONNECTIONS`] read-only connections
//!   on tokio's blocking threads (`spawn_blocking`), one read transaction each, so a page and its
//!   head come from the same snapshot. A semaphore bounds concurrent reads to the pool size and
//!   queues the rest fairly; reads are short and bursty, so borrowing blocking threads on demand
//!   beats keeping dedicated reader threads (and a second queue) alive.
//!
//! Every log stays a contiguous run of seqs `pruned_through + 1 ..= last_seq`: retention only
//! removes prefixes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, ClientId, LogHead, LogPage, NewNotification, Notification, PruneReport, Receipt,
    ReceiptEntry, Retention, Seq, SessionId, Store, StoreError, UserId,
};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::value::RawValue;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The schema this code writes, kept in `PRAGMA user_version`. A database with a higher version
/// was written by a newer Herald: opening it fails rather than guess.
pub const SCHEMA_VERSION: i32 = 1;

/// Write requests waiting for the writer thread. When the queue is full, a write waits for a
/// slot for at most [`ENQUEUE_TIMEOUT`], then fails with [`StoreError::Overloaded`]: the disk is
/// not keeping up, and publishers get a retryable error instead of piling up without bound.
pub const WRITE_QUEUE_CAPACITY: usize = 4_096;

/// How long a write waits for a slot in a full queue before failing with `Overloaded`.
pub const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests the writer commits together at most. At the bound, the rest stay queued for the next
/// batch: one transaction (and the latency of the requests answered by it) stays bounded.
pub const BATCH_REQUESTS_MAX: usize = 512;

/// Read-only connections in the pool. At the bound, further reads wait (fairly, first come first
/// served) for a connection to come back.
pub const READER_CONNECTIONS: usize = 4;

/// Notifications (and, separately, idempotency keys) one chunk of `prune` selects. At the bound
/// the chunk commits and the next one queues behind the publishes already waiting, so a large
/// prune never holds the writer for long.
pub const PRUNE_CHUNK_ROWS: i64 = 10_000;

/// How long a connection retries when the database is locked by someone else (another process on
/// the same file; a checkpoint). Past it, the operation fails with `Overloaded`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint, so that a burst of writes does not
/// leave a huge file behind forever.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// Prepared statements kept per connection; the store uses fewer than this, so none is ever
/// re-prepared.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// Schema version 1. `notifications` is `WITHOUT ROWID`, clustered by (user, seq): a replay is
/// one range scan. The inbox (a later issue) will add nullable `seen_at`, `read_at`,
/// `archived_at` columns to `notifications` in version 2.
const SCHEMA_V1: &str = "
CREATE TABLE users (
    user           TEXT PRIMARY KEY,
    last_seq       INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL
);
CREATE TABLE notifications (
    user          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    type          TEXT NOT NULL,
    data          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    session       TEXT,
    client        TEXT,
    except_client TEXT,
    PRIMARY KEY (user, seq)
) WITHOUT ROWID;
CREATE INDEX notifications_by_created_at ON notifications (created_at);
CREATE TABLE idempotency (
    key        TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    receipt    TEXT NOT NULL
);
CREATE INDEX idempotency_by_created_at ON idempotency (created_at);
";

/// Each user's durable log in one SQLite file. See the module docs for the design.
///
/// Dropping the store stops its writer thread once the requests already queued are done (the
/// drop waits for that: the queue is empty unless the store was dropped mid-burst), and closes
/// every connection.
pub struct SqliteStore {
    path: PathBuf,
    retention: Retention,
    queue: mpsc::Sender<Request>,
    writer: Option<JoinHandle<()>>,
    readers: Arc<ReaderPool>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .field("writer", &self.writer_stats())
            .finish_non_exhaustive()
    }
}

/// What the writer thread has done so far, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Requests taken off the queue.
    pub requests: u64,
    /// Batches run, one transaction each. `requests / batches` is the group-commit factor.
    pub batches: u64,
    /// Requests waiting in the queue now.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    batches: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path` and starts the writer thread.
    ///
    /// Blocking (it opens files and may create the schema): call it at startup, or from
    /// `spawn_blocking`. The parent directory must exist.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        let context = |e: StoreError| match e {
            StoreError::Unavailable(e) => {
                StoreError::Unavailable(format!("cannot open the store at {}: {e}", path.display()))
            }
            other => other,
        };
        // The writer first: it sets WAL mode and creates the schema, which readers need.
        let mut writer = open_writer(path).map_err(context)?;
        migrate(&mut writer).map_err(context)?;
        let readers = (0..READER_CONNECTIONS)
            .map(|_| open_reader(path).map_err(db_error))
            .collect::<Result<Vec<_>, _>>()
            .map_err(context)?;

        let (queue, requests) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || run_writer(writer, requests, retention, &writer_counters))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's writer thread: {e}")))?;

        Ok(Self {
            path: path.to_owned(),
            retention,
            queue,
            writer: Some(thread),
            readers: Arc::new(ReaderPool::new(readers)),
            counters,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            queued: WRITE_QUEUE_CAPACITY - self.queue.capacity(),
        }
    }

    /// Queues a write and waits for its answer, which comes once its batch has committed.
    ///
    /// If the caller stops waiting (its future is dropped), the write still happens: it may
    /// already be in a transaction. A publisher that retries with its idempotency key is safe.
    async fn write<T>(&self, request: impl FnOnce(Reply<T>) -> Request) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(request(reply)) {
            Ok(()) => {}
            Err(TrySendError::Closed(_)) => return Err(writer_stopped()),
            // Only a full queue arms a timer (so only then is tokio's time driver needed): the
            // common path stays as cheap as a channel send.
            Err(TrySendError::Full(request)) => {
                match tokio::time::timeout(ENQUEUE_TIMEOUT, self.queue.send(request)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return Err(writer_stopped()),
                    Err(_) => {
                        return Err(StoreError::Overloaded(format!(
                            "{WRITE_QUEUE_CAPACITY} writes were waiting for the disk for {ENQUEUE_TIMEOUT:?}"
                        )));
                    }
                }
            }
        }
        answer.await.map_err(|_| writer_stopped())?
    }

    /// Runs `read` on a pooled read-only connection, inside one read transaction.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = Arc::clone(&self.readers.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store's reader pool is closed".into()))?;
        let pool = Arc::clone(&self.readers);
        tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: the connection is back in the pool before the permit
            // that lets the next reader take it.
            let _permit = permit;
            let mut conn = pool.checkout()?;
            // Dropped without commit on every path (a read-only transaction has nothing to
            // commit): rolled back even if `read` panics, so the connection goes back clean.
            let tx = conn.transaction().map_err(db_error)?;
            read(&tx)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a store read failed: {e}")))?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the queue is what stops the writer: it commits and answers what it holds and
        // what is still queued, then sees the queue closed and returns. Swapping in a dead
        // sender drops the real one.
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, dead));
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the store's writer thread panicked");
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer thread has stopped".into())
}

#[async_trait]
impl Store for SqliteStore {
    async fn append(
        &self,
        entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        if entries.is_empty() && idempotency_key.is_none() {
            return Ok(Appended::Stored(Vec::new()));
        }
        let key = idempotency_key.map(str::to_owned);
        self.write(|reply| Request::Append { entries, key, reply }).await
    }

    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        // Serialized here, not on the writer thread, which every publish waits for.
        let receipt = serde_json::to_string(receipt)
            .map_err(|e| StoreError::Corrupt(format!("a receipt does not serialize: {e}")))?;
        let key = idempotency_key.to_owned();
        self.write(|reply| Request::CompleteReceipt { key, receipt, reply }).await
    }

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let user = user.clone();
        self.read(move |tx| {
            let head = read_head(tx, &user)?;
            let notifications = if limit == 0 || after >= head.last_seq {
                Vec::new()
            } else {
                read_notifications(tx, &user, after, limit)?
            };
            Ok(LogPage { notifications, head })
        })
        .await
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let user = user.clone();
        self.read(move |tx| read_head(tx, &user)).await
    }

    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let mut report = PruneReport::default();
        // One request per chunk: each chunk queues behind the publishes already waiting, so they
        // are never stuck behind the whole prune.
        loop {
            let chunk =
                self.write(|reply| Request::PruneChunk { notifications_before, keys_before, reply }).await?;
            report.notifications += chunk.notifications;
            report.idempotency_keys += chunk.idempotency_keys;
            if chunk.done {
                break;
            }
        }
        if report != PruneReport::default() {
            tracing::debug!(?report, "store pruned");
        }
        Ok(report)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections and schema

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(db_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Only possible on a file system without shared memory support; never run without WAL
        // silently, since readers would then block the writer.
        return Err(StoreError::Unavailable(format!("cannot switch to WAL mode (journal mode is {mode})")));
    }
    // Why FULL: see the module docs (an acknowledged append must survive power loss).
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_error)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES).map_err(db_error)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    configure(&conn)?;
    Ok(conn)
}

/// Creates the schema in an empty database, checks the version of an existing one.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once do not both create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_error)?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db_error)?;
    match version {
        // Plain CREATE TABLE, not IF NOT EXISTS: a file that is some other program's database
        // fails here instead of being mixed into.
        0 => {
            tx.execute_batch(SCHEMA_V1).map_err(db_error)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db_error)?;
        }
        SCHEMA_VERSION => {}
        other => {
            return Err(StoreError::Unavailable(format!(
                "the database has schema version {other}, this Herald knows up to {SCHEMA_VERSION}: upgrade Herald"
            )));
        }
    }
    tx.commit().map_err(db_error)
}

/// Maps SQLite's errors onto the store's: busy → `Overloaded` (retry later), damaged file or
/// undecodable row → `Corrupt`, the rest (I/O, disk full, constraint) → `Unavailable`.
fn db_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Overloaded(format!("the database stayed locked: {e}"))
        }
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt(e.to_string()),
        _ => match e {
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::InvalidColumnType(..) => StoreError::Corrupt(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        },
    }
}

/// A seq as SQLite stores it (INTEGER is i64). Seqs never come near 2^63; a larger one (only a
/// bogus `after` could be) saturates, which reads as "after everything".
fn sql_seq(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn seq_from_sql(seq: i64) -> Result<Seq, StoreError> {
    Seq::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative seq {seq} in the store")))
}

// ---------------------------------------------------------------------------------------------
// Reads

struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a holder of a permit always finds an idle connection.
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    fn new(connections: Vec<Connection>) -> Self {
        let permits = Arc::new(Semaphore::new(connections.len()));
        Self { idle: Mutex::new(connections), permits }
    }

    fn checkout(&self) -> Result<PooledConnection<'_>, StoreError> {
        let conn = self.idle.lock().pop().ok_or_else(|| {
            StoreError::Unavailable("no idle reader connection (one was lost to a panic)".into())
        })?;
        Ok(PooledConnection { pool: self, conn: Some(conn) })
    }
}

/// A reader connection, returned to the pool when dropped (also when a read panics).
struct PooledConnection<'a> {
    pool: &'a ReaderPool,
    conn: Option<Connection>,
}

impl std::ops::Deref for PooledConnection<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledConnection<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledConnection<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool.idle.lock().push(conn);
        }
    }
}

fn read_head(conn: &Connection, user: &UserId) -> Result<LogHead, StoreError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT last_seq, pruned_through FROM users WHERE user = ?1")
        .and_then(|mut stmt| stmt.query_row([user.as_str()], |row| Ok((row.get(0)?, row.get(1)?))).optional())
        .map_err(db_error)?;
    match row {
        None => Ok(LogHead::default()),
        Some((last_seq, pruned_through)) => {
            Ok(LogHead { last_seq: seq_from_sql(last_seq)?, pruned_through: seq_from_sql(pruned_through)? })
        }
    }
}

/// One row of `notifications`, as stored.
struct Row {
    seq: i64,
    kind: String,
    data: String,
    created_at_ms: i64,
    session: Option<String>,
    client: Option<String>,
    except_client: Option<String>,
}

impl Row {
    fn into_notification(self, user: &UserId) -> Result<Arc<Notification>, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{what} of notification {user}/{}: {e}", self.seq))
        };
        let data = RawValue::from_string(self.data.clone()).map_err(|e| corrupt("data", &e))?;
        let audience = Audience {
            session: self
                .session
                .as_deref()
                .map(SessionId::new)
                .transpose()
                .map_err(|e| corrupt("session", &e))?,
            client: self
                .client
                .as_deref()
                .map(ClientId::new)
                .transpose()
                .map_err(|e| corrupt("client", &e))?,
            except_client: self
                .except_client
                .as_deref()
                .map(ClientId::new)
                .transpose()
                .map_err(|e| corrupt("except_client", &e))?,
        };
        Ok(Arc::new(Notification::new(
            user.clone(),
            Some(seq_from_sql(self.seq)?),
            Arc::from(self.kind),
            Arc::from(data),
            self.created_at_ms,
            audience,
        )))
    }
}

fn read_notifications(
    conn: &Connection,
    user: &UserId,
    after: Seq,
    limit: usize,
) -> Result<Vec<Arc<Notification>>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .prepare_cached(
            "SELECT seq, type, data, created_at, session, client, except_client FROM notifications
             WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![user.as_str(), sql_seq(after), limit], |row| {
                Ok(Row {
                    seq: row.get(0)?,
                    kind: row.get(1)?,
                    data: row.get(2)?,
                    created_at_ms: row.get(3)?,
                    session: row.get(4)?,
                    client: row.get(5)?,
                    except_client: row.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<Row>>>()
        })
        .map_err(db_error)?;
    rows.into_iter().map(|row| row.into_notification(user)).collect()
}

// ---------------------------------------------------------------------------------------------
// The writer

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Append { entries: Vec<NewNotification>, key: Option<String>, reply: Reply<Appended> },
    CompleteReceipt { key: String, receipt: String, reply: Reply<()> },
    PruneChunk { notifications_before: i64, keys_before: i64, reply: Reply<PruneChunk> },
}

/// What one chunk of `prune` removed, and whether anything expired is left.
#[derive(Debug)]
struct PruneChunk {
    notifications: u64,
    idempotency_keys: u64,
    done: bool,
}

/// A request's outcome, held until its batch has committed.
enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    CompleteReceipt(Reply<()>, Result<(), StoreError>),
    PruneChunk(Reply<PruneChunk>, Result<PruneChunk, StoreError>),
}

impl Request {
    fn fail(self, error: &StoreError) -> Answer {
        match self {
            Request::Append { reply, .. } => Answer::Append(reply, Err(copy_error(error))),
            Request::CompleteReceipt { reply, .. } => Answer::CompleteReceipt(reply, Err(copy_error(error))),
            Request::PruneChunk { reply, .. } => Answer::PruneChunk(reply, Err(copy_error(error))),
        }
    }
}

impl Answer {
    fn is_ok(&self) -> bool {
        match self {
            Answer::Append(_, result) => result.is_ok(),
            Answer::CompleteReceipt(_, result) => result.is_ok(),
            Answer::PruneChunk(_, result) => result.is_ok(),
        }
    }

    /// The same answer, failed with `error` (its batch did not commit).
    fn fail(self, error: &StoreError) -> Answer {
        match self {
            Answer::Append(reply, _) => Answer::Append(reply, Err(copy_error(error))),
            Answer::CompleteReceipt(reply, _) => Answer::CompleteReceipt(reply, Err(copy_error(error))),
            Answer::PruneChunk(reply, _) => Answer::PruneChunk(reply, Err(copy_error(error))),
        }
    }

    fn send(self) {
        // A requester that stopped waiting gets nothing; its write is done all the same.
        match self {
            Answer::Append(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::CompleteReceipt(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::PruneChunk(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// One error for each request of a failed batch (`StoreError` is not `Clone`).
fn copy_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Overloaded(m) => StoreError::Overloaded(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The writer thread: batches until the queue is closed (the store dropped), then returns,
/// closing the write connection.
fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Request>,
    retention: Retention,
    counters: &Counters,
) {
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        // Group commit: whatever queued up while the previous batch was being fsynced joins this
        // one. No waiting for more: a lone request is committed at once.
        while batch.len() < BATCH_REQUESTS_MAX {
            match queue.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        counters.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        for answer in run_batch(&mut conn, &retention, batch.drain(..)) {
            answer.send();
        }
    }
}

/// Runs `batch` in one transaction, each request in its own savepoint, and commits once. The
/// answers are only sent by the caller, after the commit: nothing is acknowledged before it is
/// durable.
fn run_batch(
    conn: &mut Connection,
    retention: &Retention,
    mut batch: impl Iterator<Item = Request>,
) -> Vec<Answer> {
    let now = now_ms();
    let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(tx) => tx,
        Err(e) => {
            let error = db_error(e);
            tracing::error!(%error, "the store cannot start a write transaction");
            return batch.map(|request| request.fail(&error)).collect();
        }
    };
    let mut answers = Vec::with_capacity(BATCH_REQUESTS_MAX);
    while let Some(request) = batch.next() {
        let answer = run_request(&mut tx, retention, now, request);
        // Some errors (I/O, disk full, out of memory) make SQLite roll back the whole
        // transaction, not just the statement. The requests before this one are gone then,
        // although their savepoints were released: fail them all rather than acknowledge them.
        if tx.is_autocommit() {
            let error = match &answer {
                Answer::Append(_, Err(e))
                | Answer::CompleteReceipt(_, Err(e))
                | Answer::PruneChunk(_, Err(e)) => {
                    StoreError::Unavailable(format!("the write transaction was rolled back: {e}"))
                }
                _ => StoreError::Unavailable("the write transaction was rolled back".into()),
            };
            tracing::error!(%error, "the store lost a batch of writes");
            answers.push(answer);
            let mut failed: Vec<Answer> = answers.into_iter().map(|a| a.fail(&error)).collect();
            failed.extend(batch.map(|request| request.fail(&error)));
            return failed;
        }
        answers.push(answer);
    }
    if let Err(e) = tx.commit() {
        let error = db_error(e);
        tracing::error!(%error, "the store cannot commit a batch of writes");
        return answers.into_iter().map(|answer| answer.fail(&error)).collect();
    }
    answers
}

/// Runs one request inside a savepoint: released if it succeeds, rolled back if it fails, so a
/// failing request leaves no trace and takes nothing else of its batch down.
fn run_request(
    tx: &mut rusqlite::Transaction<'_>,
    retention: &Retention,
    now: i64,
    request: Request,
) -> Answer {
    let savepoint = match tx.savepoint() {
        Ok(savepoint) => savepoint,
        Err(e) => return request.fail(&db_error(e)),
    };
    let answer = match request {
        Request::Append { entries, key, reply } => {
            Answer::Append(reply, append(&savepoint, retention, now, entries, key.as_deref()))
        }
        Request::CompleteReceipt { key, receipt, reply } => {
            Answer::CompleteReceipt(reply, complete_receipt(&savepoint, &key, &receipt))
        }
        Request::PruneChunk { notifications_before, keys_before, reply } => {
            Answer::PruneChunk(reply, prune_chunk(&savepoint, notifications_before, keys_before))
        }
    };
    if !answer.is_ok() {
        // Dropping the savepoint rolls it back.
        return answer;
    }
    match savepoint.commit() {
        Ok(()) => answer,
        Err(e) => answer.fail(&db_error(e)),
    }
}

fn append(
    conn: &Connection,
    retention: &Retention,
    now: i64,
    entries: Vec<NewNotification>,
    key: Option<&str>,
) -> Result<Appended, StoreError> {
    if let Some(key) = key {
        let found: Option<(i64, String)> = conn
            .prepare_cached("SELECT created_at, receipt FROM idempotency WHERE key = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |row| Ok((row.get(0)?, row.get(1)?))).optional())
            .map_err(db_error)?;
        if let Some((created_at, receipt)) = found
            && created_at >= crate::cutoff_ms(now, retention.idempotency_window)
        {
            let receipt = serde_json::from_str(&receipt)
                .map_err(|e| StoreError::Corrupt(format!("receipt of idempotency key {key:?}: {e}")))?;
            return Ok(Appended::Duplicate(receipt));
        }
    }

    let mut stored = Vec::with_capacity(entries.len());
    // Each touched user's head after this append, to apply `max_per_user` once per user.
    let mut heads: HashMap<UserId, (i64, i64)> = HashMap::new();
    {
        let mut next_seq = conn
            .prepare_cached(
                "INSERT INTO users (user, last_seq, pruned_through) VALUES (?1, 1, 0)
                 ON CONFLICT (user) DO UPDATE SET last_seq = last_seq + 1
                 RETURNING last_seq, pruned_through",
            )
            .map_err(db_error)?;
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO notifications (user, seq, type, data, created_at, session, client, except_client)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(db_error)?;
        for entry in entries {
            let (seq, pruned_through): (i64, i64) = next_seq
                .query_row([entry.user.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db_error)?;
            let audience = &entry.audience;
            insert
                .execute(params![
                    entry.user.as_str(),
                    seq,
                    &*entry.kind,
                    entry.data.get(),
                    entry.created_at_ms,
                    audience.session.as_ref().map(SessionId::as_str),
                    audience.client.as_ref().map(ClientId::as_str),
                    audience.except_client.as_ref().map(ClientId::as_str),
                ])
                .map_err(db_error)?;
            heads.insert(entry.user.clone(), (seq, pruned_through));
            stored.push(Arc::new(Notification::new(
                entry.user,
                Some(seq_from_sql(seq)?),
                entry.kind,
                entry.data,
                entry.created_at_ms,
                entry.audience,
            )));
        }
    }

    let max_per_user = i64::try_from(retention.max_per_user).unwrap_or(i64::MAX);
    for (user, (last_seq, pruned_through)) in heads {
        let bound = last_seq.saturating_sub(max_per_user);
        if bound > pruned_through {
            prune_user_through(conn, user.as_str(), pruned_through, bound)?;
        }
    }

    if let Some(key) = key {
        let receipt = Receipt {
            notifications: stored
                .iter()
                .map(|n| ReceiptEntry { user: n.user.clone(), seq: n.seq.unwrap_or_default() })
                .collect(),
            delivered: 0,
        };
        let receipt = serde_json::to_string(&receipt)
            .map_err(|e| StoreError::Corrupt(format!("a receipt does not serialize: {e}")))?;
        // An expired record of the same key is replaced: the key now stands for this publish.
        conn.prepare_cached(
            "INSERT INTO idempotency (key, created_at, receipt) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at, receipt = excluded.receipt",
        )
        .and_then(|mut stmt| stmt.execute(params![key, now, receipt]))
        .map_err(db_error)?;
    }
    Ok(Appended::Stored(stored))
}

/// Deletes `user`'s notifications with seq in `(from, through]` and raises its `pruned_through`
/// to `through` (never lowers it). Returns how many notifications went.
fn prune_user_through(conn: &Connection, user: &str, from: i64, through: i64) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM notifications WHERE user = ?1 AND seq > ?2 AND seq <= ?3")
        .and_then(|mut stmt| stmt.execute(params![user, from, through]))
        .map_err(db_error)?;
    conn.prepare_cached("UPDATE users SET pruned_through = ?2 WHERE user = ?1 AND pruned_through < ?2")
        .and_then(|mut stmt| stmt.execute(params![user, through]))
        .map_err(db_error)?;
    Ok(deleted as u64)
}

fn complete_receipt(conn: &Connection, key: &str, receipt: &str) -> Result<(), StoreError> {
    // No row: the key was pruned meanwhile; a later repeat is a new publish, as the window says.
    conn.prepare_cached("UPDATE idempotency SET receipt = ?2 WHERE key = ?1")
        .and_then(|mut stmt| stmt.execute(params![key, receipt]))
        .map_err(db_error)?;
    Ok(())
}

/// One bounded chunk of `prune`.
///
/// Up to [`PRUNE_CHUNK_ROWS`] expired notifications are selected (through the `created_at`
/// index); for each user among them, every seq up to the highest one selected goes, also ones
/// stamped later (clocks step back), so that a log stays a contiguous run of seqs and
/// `pruned_through` keeps its meaning: everything up to it is gone.
fn prune_chunk(
    conn: &Connection,
    notifications_before: i64,
    keys_before: i64,
) -> Result<PruneChunk, StoreError> {
    let expired: Vec<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT user, MAX(seq), COUNT(*) FROM (
                 SELECT user, seq FROM notifications WHERE created_at < ?1 LIMIT ?2
             ) GROUP BY user",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![notifications_before, PRUNE_CHUNK_ROWS], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect()
        })
        .map_err(db_error)?;
    let mut selected = 0;
    let mut notifications = 0;
    for (user, through, count) in expired {
        selected += count;
        notifications += prune_user_through(conn, &user, 0, through)?;
    }

    let idempotency_keys = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency WHERE created_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![keys_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    Ok(PruneChunk {
        notifications,
        idempotency_keys: idempotency_keys as u64,
        done: selected < PRUNE_CHUNK_ROWS && idempotency_keys < PRUNE_CHUNK_ROWS,
    })
}

#[cfg(test)]
mod tests;
