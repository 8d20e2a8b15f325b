//! [`SqliteStore`]: each user's log in one SQLite file, for a single node.
//!
//! # How it works
//! - **WAL mode**, so that readers never wait for the writer nor the writer for readers.
//! - **One writer thread** owns the only write connection. Every write (`append`,
//!   `complete_receipt`, a chunk of `prune`) is a request on a bounded queue. The writer takes the
//!   first request, then whatever else is already waiting (up to [`BATCH_REQUESTS_MAX`]), runs
//!   them all in one transaction (should one fail, the batch runs again with each request in its
//!   own SAVEPOINT, so that it fails alone: see `run_batch`), commits once, and only then answers
//!   each request. Many concurrent publishes thus share one fsync (group commit), and a single writer
//!   means seqs never race: `last_seq + 1` is read and written inside the transaction.
//! - **`synchronous=FULL`**: in WAL mode SQLite then fsyncs the WAL at every commit, so a commit
//!   that returned is on disk; answering after the commit means an acknowledged append survives
//!   `kill -9` and power loss. (`NORMAL` would only fsync at checkpoints: it survives a process
//!   crash but may lose the last commits on power loss, which the delivery guarantee forbids.)
//! - **Staged appends** (`sqlite/staging.rs`): an append inserts its rows into `staged`, a small rowid
//!   table whose inserts all land on its last page, not into the users' logs; between batches the
//!   writer settles them into `notifications` in generations, many rows per user and page. Readers
//!   merge each user's staged rows (kept in memory) with what they read; opening the file settles
//!   what a crash left staged. Every write other than an append settles its user first.
//! - **Reads** (`read_after`, `head`) use a pool of [`READER_CONNECTIONS`] read-only connections
//!   on tokio's blocking threads (`spawn_blocking`), one read transaction each, so a page and its
//!   head come from the same snapshot. A semaphore bounds concurrent reads to the pool size and
//!   queues the rest fairly; reads are short and bursty, so borrowing blocking threads on demand
//!   beats keeping dedicated reader threads (and a second queue) alive.
//!
//! Retention only removes prefixes of a log: what is left holds seqs `pruned_through + 1 ..=
//! last_seq`, minus those deleted on purpose (inbox deletes).
//!
//! # The inbox (schema versions 2 and 3)
//! Each notification row has `seen_at`, `read_at`, `archived_at` (ms, NULL until set), and each
//! `users` row keeps the user's counts (`total`, `unread`, `unseen`, `archived`) and an
//! `inbox_version`, as of the row's `last_seq`. The notifications appended after it (the
//! user's tail) count as what they are (new: unread, unseen), so an append writes no `users`
//! row; every other write (marks, deletes, retention chunks, `max_per_user` pruning) first
//! folds the tail into the row, then updates the counts in the same transaction from the states
//! of exactly the rows it touched. Counts and heads are thus one `users` lookup plus one
//! primary-key lookup (`MAX(seq)`), never a count of rows (`UserRow`). Inbox pages walk the
//! primary key or a partial index newest first (see [`SCHEMA_V3`] and [`inbox_list_sql`]): an
//! append writes only the primary key and the `created_at` index, and a page reads the rows it
//! returns plus the ones it skips, bounded by the user's log.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_core::inbox::CountsDelta;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, Audience, ClientId, InboxChange, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxStatus,
    ItemState, LogHead, LogPage, Mark, NewNotification, Notification, PruneReport, PrunedInbox, Receipt,
    ReceiptEntry, Retention, Revocation, Selection, Seq, SessionId, Store, StoreError, UserId,
};
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde_json::value::RawValue;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, oneshot};

mod staging;

pub use staging::Settling;
use staging::{Settler, Staging, StagingWrites};

use crate::lock::{LockError, LockFile};

/// The schema this code writes, kept in `PRAGMA user_version`. A database with a higher version
/// was written by a newer Herald: opening it fails rather than guess.
pub const SCHEMA_VERSION: i32 = 5;

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

/// Rows one chunk of an inbox mark or delete "all up to N" changes at most. At the bound the
/// chunk commits and the next one queues behind the publishes already waiting, as for `prune`:
/// marking 100,000 notifications read never holds the writer for long.
pub const INBOX_CHUNK_ROWS: i64 = 1_000;

/// How long a connection retries when the database is locked by someone else (another process on
/// the same file; a checkpoint). Past it, the operation fails with `Overloaded`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint, so that a burst of writes does not
/// leave a huge file behind forever.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// How often the checkpointer thread copies the WAL back into the database. Checkpoints run there,
/// off the commit path: with SQLite's automatic checkpoint, the commit that crosses the threshold
/// also copies pages and fsyncs the database file, a latency spike for every publish in that
/// batch (measured: 4.8% of server CPU inside commits, and most of the p99 at 1,000/s).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// WAL pages after which the writer checkpoints by itself anyway: a safety valve for when the
/// checkpointer cannot keep up (readers holding old snapshots). 16,384 pages of 4 KiB: 64 MiB.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// Free pages an incremental vacuum step gives back to the file system at most: 256 pages of
/// 4 KiB, 1 MiB.
///
/// Why vacuum at all: SQLite keeps the pages freed by deletes (retention, inbox deletes, settled
/// staged rows) in the file for reuse and never shrinks it by itself, so a burst of large
/// notifications left a file at its high-water mark forever. The database uses incremental
/// auto-vacuum (`use_incremental_vacuum`), and the writer gives free pages back a step at a
/// time, only when no request has come for [`VACUUM_IDLE`]: under load, freed pages are reused
/// by the next appends anyway, and a step never delays a publish by more than its own length.
/// Why this bound: a step moves up to this many pages from the end of the file into free slots
/// and truncates it; 256 pages took 2.6 ms (median; 1.3 ms at best, 25 ms at worst, of 36 steps
/// of `freed_space_is_given_back`, debug build on a loaded 2-core machine), which is what a
/// publish arriving meanwhile may wait. At the bound the next step, after the
/// next idle wait, goes on: an idle store gives back about 10 MiB/s.
const VACUUM_STEP_PAGES: i64 = 256;
/// Free pages the vacuum leaves in the file for the next appends to reuse (1 MiB): below this
/// there is nothing to give back, so an idle writer does not wake up for a handful of pages.
const VACUUM_KEEP_FREE_PAGES: i64 = 256;
/// How long the writer waits for a request before it runs a vacuum step (the store is idle).
const VACUUM_IDLE: Duration = Duration::from_millis(100);
/// After a vacuum step failed, how long the writer leaves free pages alone (one warning per
/// pause, not one per idle wait).
const VACUUM_RETRY_DELAY: Duration = Duration::from_secs(60);

/// Prepared statements kept per connection; the store uses fewer than this (inbox pages: one
/// per status, with and without a type), so none is ever re-prepared.
const STATEMENT_CACHE_CAPACITY: usize = 64;

/// Schema version 1. `notifications` is `WITHOUT ROWID`, clustered by (user, seq): a replay is
/// one range scan. A new database gets it, then [`SCHEMA_V2`], like an old one.
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

/// Version 1 → 2: the inbox. Each notification's state (ms, NULL until set); each user's counts,
/// computed once here from the rows (every notification of a version 1 file is unread and
/// unseen: nothing was ever marked), then kept by every write; and one partial index per inbox
/// status, on (user, seq), so that a page of any status is a range scan of just the rows it
/// lists, newest first. Pages filtered by type use `inbox_by_type` and check the status per row.
/// An append adds entries to `inbox_all`, `inbox_unread`, `inbox_unseen` and `inbox_by_type`;
/// `inbox_read` and `inbox_archived` only change when notifications are marked.
pub const SCHEMA_V2: &str = "
ALTER TABLE notifications ADD COLUMN seen_at INTEGER;
ALTER TABLE notifications ADD COLUMN read_at INTEGER;
ALTER TABLE notifications ADD COLUMN archived_at INTEGER;
ALTER TABLE users ADD COLUMN total INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN unread INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN unseen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN archived INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN inbox_version INTEGER NOT NULL DEFAULT 0;
UPDATE users SET inbox_version = last_seq;
UPDATE users SET total = c.n, unread = c.n, unseen = c.n
    FROM (SELECT user, COUNT(*) AS n FROM notifications GROUP BY user) AS c
    WHERE c.user = users.user;
CREATE INDEX inbox_all ON notifications (user, seq) WHERE archived_at IS NULL;
CREATE INDEX inbox_unread ON notifications (user, seq) WHERE read_at IS NULL AND archived_at IS NULL;
CREATE INDEX inbox_unseen ON notifications (user, seq) WHERE seen_at IS NULL AND archived_at IS NULL;
CREATE INDEX inbox_read ON notifications (user, seq) WHERE read_at IS NOT NULL AND archived_at IS NULL;
CREATE INDEX inbox_archived ON notifications (user, seq) WHERE archived_at IS NOT NULL;
CREATE INDEX inbox_by_type ON notifications (user, type, seq);
";

/// Version 2 → 3: fewer indexes written by every append. Each index on (user, …) costs an append
/// a random page of its own, written whole to the WAL at commit and again at checkpoint: with
/// version 2's six b-trees per notification the store wrote about 27 KB per append and spent
/// most of its CPU doing so (`cargo bench -p herald-store --bench publish`). Version 3 keeps, of
/// the indexes an append touches, only the primary key and the sequential
/// `notifications_by_created_at`. Pages of `all`, `unread` and `unseen`, and pages by type, walk
/// the primary key newest first and skip the rows that do not match (archived ones, read ones,
/// seen ones, other types); `inbox_read` and `inbox_archived`, which only marks write, stay.
///
/// So a page reads the rows it returns plus the rows it skips, which are bounded by the user's
/// log (`Retention::max_per_user`, 10,000 by default: walking all of it takes about 1 ms). The
/// first page of a status also stops as soon as it has found as many rows as the user's counts
/// say there are (see `read_inbox_page`), so "3 unread" does not walk the whole log to find that
/// there is no fourth.
///
/// And an append no longer writes its user's `users` row (another random page), except the
/// first one of a new user. The row's `last_seq` and counts describe the log up to that
/// `last_seq`; the notifications after it, the user's **tail**, were appended since and nothing
/// else touched them: their seqs follow on from `last_seq` and each is in the inbox, unread and
/// unseen, and was one change. So the log's last seq is `MAX(last_seq, MAX(seq))` and each count
/// is the row's plus the tail's length (`MAX(seq) - last_seq`), both one index lookup. Every
/// other write (mark, delete, retention) first folds the tail into the row (`fold_tail`) and
/// then adjusts the counts by the states of the rows it changes, as in version 2. Deleting the
/// newest notifications leaves `last_seq` where it was, so seqs are never given out twice. A
/// version 2 file upgrades as it is: all its rows have empty tails.
pub const SCHEMA_V3: &str = "
DROP INDEX inbox_all;
DROP INDEX inbox_unread;
DROP INDEX inbox_unseen;
DROP INDEX inbox_by_type;
";

/// Version 3 → 4: staged appends (see `sqlite/staging.rs`). An append inserts into `staged`, a rowid
/// table whose inserts all go to its last page, and the writer moves the rows into
/// `notifications` later, many per user and page at a time. The columns are those of
/// `notifications` that an append sets.
pub const SCHEMA_V4: &str = "
CREATE TABLE staged (
    id            INTEGER PRIMARY KEY,
    user          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    type          TEXT NOT NULL,
    data          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    session       TEXT,
    client        TEXT,
    except_client TEXT
);
";

/// Version 4 → 5: revocations (sign-outs, see `herald_core::revocation`). One row per user and
/// session with the latest close; `session` is `''` for "all sessions" (a session id is never
/// empty). Retention deletes rows by `closed_at`, hence its index.
pub const SCHEMA_V5: &str = "
CREATE TABLE revocations (
    user      TEXT NOT NULL,
    session   TEXT NOT NULL,
    closed_at INTEGER NOT NULL,
    PRIMARY KEY (user, session)
) WITHOUT ROWID;
CREATE INDEX revocations_by_closed_at ON revocations (closed_at);
";

/// The index each inbox status walks (`None`: the primary key) and the condition of the status.
/// The condition implies the partial index's own, which is what lets SQLite use it (and `INDEXED
/// BY` makes sure it does).
fn inbox_status_sql(status: InboxStatus) -> (Option<&'static str>, &'static str) {
    match status {
        InboxStatus::All => (None, "archived_at IS NULL"),
        InboxStatus::Unread => (None, "read_at IS NULL AND archived_at IS NULL"),
        InboxStatus::Unseen => (None, "seen_at IS NULL AND archived_at IS NULL"),
        InboxStatus::Read => (Some("inbox_read"), "read_at IS NOT NULL AND archived_at IS NULL"),
        InboxStatus::Archived => (Some("inbox_archived"), "archived_at IS NOT NULL"),
    }
}

/// The query of an inbox page: `?1` user, `?2` before (exclusive), `?3` limit, and `?4` type if
/// `by_type`. Newest first, a range of the status's index (or of the primary key) from `before`
/// down, never a scan of the table nor a sort; it stops at the `limit`-th row that matches.
pub fn inbox_list_sql(status: InboxStatus, by_type: bool) -> String {
    let (index, condition) = inbox_status_sql(status);
    let indexed_by = index.map(|index| format!(" INDEXED BY {index}")).unwrap_or_default();
    let type_condition = if by_type { " AND type = ?4" } else { "" };
    format!(
        "SELECT seq, type, data, created_at, session, client, except_client, seen_at, read_at, archived_at
         FROM notifications{indexed_by}
         WHERE user = ?1 AND seq < ?2 AND {condition}{type_condition}
         ORDER BY seq DESC LIMIT ?3"
    )
}

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
    /// Dropping the sender stops the checkpointer thread.
    checkpointer: Option<(std::sync::mpsc::Sender<()>, JoinHandle<()>)>,
    readers: Arc<ReaderPool>,
    counters: Arc<Counters>,
    /// Appends committed to `staged` and not yet settled into `notifications`: readers merge
    /// them with what they read (see `sqlite/staging.rs`).
    staging: Arc<Mutex<Staging>>,
    /// The database is this store's alone while it is open (see [`lock_path`]). Declared last,
    /// so released last: after the writer has stopped and every connection is closed.
    _lock: LockFile,
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
    /// Bytes of pages the writer wrote to the WAL (pages × page size; frame headers not
    /// counted). Every page a transaction changes is written whole, so this over the number of
    /// appends is the store's write amplification.
    pub wal_bytes: u64,
    /// Notifications staged now (appended, not yet settled into the users' logs).
    pub staged: usize,
    /// Notifications settled by the writer's generations so far (not counting those a mark,
    /// delete or retention settled early).
    pub settled: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    batches: AtomicU64,
    wal_bytes: AtomicU64,
    settled: AtomicU64,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path` and starts the writer thread.
    ///
    /// Blocking (it opens files and may create the schema): call it at startup, or from
    /// `spawn_blocking`. The parent directory must exist.
    ///
    /// Fails with [`StoreError::Locked`] if another store (in any process) has the file open,
    /// and with [`StoreError::NotAStore`] if the file exists but is not a Herald database (empty,
    /// or another program's), both before anything in the file is read or changed.
    pub fn open(path: &Path, retention: Retention) -> Result<Self, StoreError> {
        Self::open_with(path, retention, Settling::default())
    }

    /// [`SqliteStore::open`] with other [`Settling`] than the default.
    pub fn open_with(path: &Path, retention: Retention, settling: Settling) -> Result<Self, StoreError> {
        let context = |e: StoreError| match e {
            StoreError::Unavailable(e) => {
                StoreError::Unavailable(format!("cannot open the store at {}: {e}", path.display()))
            }
            other => other,
        };
        // Before anything touches the file: a second store on it would settle this one's staged
        // appends behind its back, and both would hand out the same seqs.
        let lock = LockFile::acquire(&lock_path(path)).map_err(|e| match e {
            LockError::Held { pid, .. } => StoreError::Locked { path: path.to_owned(), pid },
            LockError::Io { .. } => {
                StoreError::Unavailable(format!("cannot open the store at {}: {e}", path.display()))
            }
        })?;
        refuse_an_empty_file(path)?;
        // The writer first: it sets WAL mode and creates the schema, which readers need.
        let mut writer = open_writer(path).map_err(context)?;
        migrate(&mut writer, path).map_err(context)?;
        use_incremental_vacuum(&writer).map_err(context)?;
        let recovered = staging::recover(&mut writer).map_err(context)?;
        if recovered > 0 {
            tracing::info!(notifications = recovered, "settled the appends the last run left staged");
        }
        let readers = (0..READER_CONNECTIONS)
            .map(|_| open_reader(path).map_err(db_error))
            .collect::<Result<Vec<_>, _>>()
            .map_err(context)?;

        let (queue, requests) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let staging = Arc::new(Mutex::new(Staging::default()));
        let writer_staging = Arc::clone(&staging);
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || {
                run_writer(writer, requests, retention, settling, &writer_staging, &writer_counters)
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's writer thread: {e}")))?;

        let checkpoint_conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|conn| configure(&conn).map(|()| conn))
        .map_err(db_error)
        .map_err(context)?;
        let (stop_checkpointer, checkpointer_stop) = std::sync::mpsc::channel();
        let checkpointer = std::thread::Builder::new()
            .name("herald-store-checkpointer".into())
            .spawn(move || run_checkpointer(checkpoint_conn, checkpointer_stop))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the store's checkpointer thread: {e}"))
            })?;

        Ok(Self {
            path: path.to_owned(),
            retention,
            queue,
            writer: Some(thread),
            checkpointer: Some((stop_checkpointer, checkpointer)),
            readers: Arc::new(ReaderPool::new(readers)),
            counters,
            staging,
            _lock: lock,
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
            wal_bytes: self.counters.wal_bytes.load(Ordering::Relaxed),
            staged: self.staging.lock().rows(),
            settled: self.counters.settled.load(Ordering::Relaxed),
        }
    }

    /// Settles every staged append into the users' logs now, and empties `staged` (the store
    /// does it by itself, see `sqlite/staging.rs`; this is for tests and tools that read the file).
    pub async fn settle_all(&self) -> Result<(), StoreError> {
        self.write(|reply| Request::SettleAll { reply }).await
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

    /// Runs an inbox mark or delete: seqs in one request, "all up to N" in chunks of at most
    /// [`INBOX_CHUNK_ROWS`] rows, one request (and transaction) each, in seq order. Each chunk
    /// keeps the counts exact; the counts returned are those after the last one. Should a chunk
    /// fail, the ones before it stay done (the same request again finishes the job).
    async fn inbox_change<R: FnOnce(Reply<InboxChunk>) -> Request>(
        &self,
        selection: &Selection,
        request: impl Fn(Rows) -> R,
    ) -> Result<InboxChange, StoreError> {
        match selection {
            Selection::Seqs(seqs) => Ok(self.write(request(Rows::Seqs(seqs.clone()))).await?.change),
            Selection::AllUpTo(through) => {
                let through = sql_seq(*through);
                let mut change = InboxChange::default();
                let mut after = 0;
                loop {
                    let chunk = self.write(request(Rows::Range { after, through })).await?;
                    change.seqs.extend(chunk.change.seqs);
                    change.counts = chunk.change.counts;
                    match chunk.next_after {
                        Some(next) => after = next,
                        None => return Ok(change),
                    }
                }
            }
        }
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
        if let Some((stop, checkpointer)) = self.checkpointer.take() {
            drop(stop);
            if checkpointer.join().is_err() {
                tracing::error!(path = %self.path.display(), "the store's checkpointer thread panicked");
            }
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
            return Ok(Appended::Stored { notifications: Vec::new(), counts: Vec::new() });
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

    // Every read takes the user's staged notifications before its SQLite snapshot and merges
    // them in (see `staging` for why this order gives a prefix of the log).

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let user = user.clone();
        // The staged ones after `after` (a replay needs no others), and the last seq for the head.
        let (staged, last_staged) = {
            let staging = self.staging.lock();
            (staging.notifications_after(&user, after), staging.last_seq(&user))
        };
        self.read(move |tx| {
            let head = read_head(tx, &user, last_staged)?;
            let mut notifications = Vec::new();
            if limit > 0 && after < head.last_seq {
                notifications = read_notifications(tx, &user, after, limit)?;
                // Staged ones follow on from the settled ones (those settled since `staged` was
                // taken are in both: only the ones after the last read are added).
                let from = notifications.last().and_then(|n| n.seq).unwrap_or(after);
                let room = limit - notifications.len();
                notifications.extend(staged.into_iter().filter(|n| n.seq > Some(from)).take(room));
            }
            Ok(LogPage { notifications, head })
        })
        .await
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let user = user.clone();
        let last_staged = self.staging.lock().last_seq(&user);
        self.read(move |tx| read_head(tx, &user, last_staged)).await
    }

    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        let (user, query) = (user.clone(), query.clone());
        let staged = self.staging.lock().notifications_after(&user, 0);
        self.read(move |tx| read_inbox_page(tx, &user, &query, staged)).await
    }

    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        let user = user.clone();
        let last_staged = self.staging.lock().last_seq(&user);
        self.read(move |tx| match read_user_row(tx, user.as_str())? {
            None => Ok(InboxCounts::default()),
            Some(row) => row.with_staged(last_staged).counts(user.as_str()),
        })
        .await
    }

    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        self.inbox_change(selection, |rows| {
            let user = user.clone();
            move |reply| Request::InboxMark { user, rows, mark, at_ms, reply }
        })
        .await
    }

    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        self.inbox_change(selection, |rows| {
            let user = user.clone();
            move |reply| Request::InboxDelete { user, rows, reply }
        })
        .await
    }

    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        let (user, session) = (user.clone(), session.cloned());
        let closed_at_secs = i64::try_from(closed_at_secs).unwrap_or(i64::MAX);
        self.write(|reply| Request::Revoke { user, session, closed_at_secs, reply }).await
    }

    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        let user = user.clone();
        self.read(move |tx| {
            let rows: Vec<(String, i64)> = tx
                .prepare_cached("SELECT session, closed_at FROM revocations WHERE user = ?1")
                .and_then(|mut stmt| {
                    stmt.query_map([user.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?.collect()
                })
                .map_err(db_error)?;
            rows.into_iter()
                .map(|(session, closed_at)| {
                    let session =
                        match session.as_str() {
                            "" => None,
                            id => Some(SessionId::new(id).map_err(|e| {
                                StoreError::Corrupt(format!("session id in revocations: {e}"))
                            })?),
                        };
                    let closed_at_secs = u64::try_from(closed_at).map_err(|_| {
                        StoreError::Corrupt(format!("negative close time {closed_at} in revocations"))
                    })?;
                    Ok(Revocation { session, closed_at_secs })
                })
                .collect()
        })
        .await
    }

    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let revocations_before = crate::cutoff_ms(now_ms, self.retention.revocation_window) / 1000;
        let mut report = PruneReport::default();
        // One request per chunk: each chunk queues behind the publishes already waiting, so they
        // are never stuck behind the whole prune.
        loop {
            let chunk = self
                .write(|reply| Request::PruneChunk {
                    notifications_before,
                    keys_before,
                    revocations_before,
                    reply,
                })
                .await?;
            report.notifications += chunk.notifications;
            report.idempotency_keys += chunk.idempotency_keys;
            report.revocations += chunk.revocations;
            report.inboxes.extend(chunk.inboxes);
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

/// The lock file of the database at `path`: `herald.db.lock` beside it, named after the real
/// file, so that two names of one database (a symlinked dir, `data/../data/herald.db`) take the
/// same lock.
fn lock_path(path: &Path) -> PathBuf {
    let real = std::fs::canonicalize(path)
        .or_else(|_| {
            let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
            std::fs::canonicalize(parent).map(|parent| parent.join(path.file_name().unwrap_or_default()))
        })
        .unwrap_or_else(|_| path.to_owned());
    let mut name = real.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    real.with_file_name(name)
}

/// Refuses a database file that exists and is empty. SQLite would take it for a new database,
/// and the store would start over with every user's seqs at 1 (clients resuming from their last
/// seq would get `invalid_last_event_id`, or worse, new notifications under seqs they have
/// seen). Herald never leaves one: the file has its header as soon as SQLite switches it to WAL
/// mode, right after creating it.
fn refuse_an_empty_file(path: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 => Err(StoreError::NotAStore {
            path: path.to_owned(),
            reason: "the file is empty (0 bytes); a Herald database never is: restore it from a backup, \
                     or delete it to start an empty store"
                .into(),
        }),
        _ => Ok(()),
    }
}

fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    // Takes effect in a new database (before its first table); an old one is converted by
    // `use_incremental_vacuum`. Why: see [`VACUUM_STEP_PAGES`].
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(db_error)?;
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
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES).map_err(db_error)?;
    Ok(conn)
}

/// Checkpoints the WAL every [`CHECKPOINT_INTERVAL`] on its own connection until `stop` is
/// dropped. PASSIVE: it never blocks the writer or readers; what it cannot copy now (pages a
/// reader still needs) it copies next time.
fn run_checkpointer(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
    }
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    configure(&conn)?;
    Ok(conn)
}

/// Creates the schema in an empty database, upgrades an older one step by step (a new database
/// takes the same steps), and refuses a newer one, or another program's (at `path`). All in one
/// transaction: a failed upgrade leaves the file as it was.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    // IMMEDIATE: two processes opening a new file at once do not both create the schema.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_error)?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(db_error)?;
    if version == 0 {
        // Every Herald database has a schema version: one without it but with tables is some
        // other program's, and is left alone.
        let objects: i64 =
            tx.query_row("SELECT COUNT(*) FROM sqlite_master", [], |row| row.get(0)).map_err(db_error)?;
        if objects > 0 {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: format!("it is another program's SQLite database ({objects} tables and indexes)"),
            });
        }
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database has schema version {version}, this Herald knows up to {SCHEMA_VERSION}: upgrade Herald"
        )));
    }
    if version < 1 {
        // Plain CREATE TABLE, not IF NOT EXISTS: a file that is some other program's database
        // fails here instead of being mixed into.
        tx.execute_batch(SCHEMA_V1).map_err(db_error)?;
    }
    if version < 2 {
        if version == 1 {
            tracing::info!("upgrading the store to schema version 2 (the inbox)");
        }
        tx.execute_batch(SCHEMA_V2).map_err(db_error)?;
    }
    if version < 3 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 3 (fewer indexes per notification)");
        }
        tx.execute_batch(SCHEMA_V3).map_err(db_error)?;
    }
    if version < 4 {
        tx.execute_batch(SCHEMA_V4).map_err(db_error)?;
    }
    if version < 5 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 5 (revocations)");
        }
        tx.execute_batch(SCHEMA_V5).map_err(db_error)?;
    }
    if version != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(db_error)?;
    }
    tx.commit().map_err(db_error)
}

/// Converts a database made without auto-vacuum (before Herald gave space back) to incremental
/// auto-vacuum, once: a `VACUUM`, which rewrites the whole file (it needs as much free disk
/// again, and takes about a second per few hundred MB; it is logged). New databases have it
/// from the start (see `open_writer`).
fn use_incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
    const INCREMENTAL: i64 = 2;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0)).map_err(db_error)?;
    if mode == INCREMENTAL {
        return Ok(());
    }
    tracing::info!("converting the store to incremental vacuum, once (rewrites the database file)");
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(db_error)?;
    conn.execute_batch("VACUUM").map_err(db_error)?;
    let mode: i64 = conn.pragma_query_value(None, "auto_vacuum", |row| row.get(0)).map_err(db_error)?;
    if mode != INCREMENTAL {
        tracing::warn!(
            mode,
            "the store could not switch to incremental vacuum; freed space stays in the file"
        );
    }
    Ok(())
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

/// A user's `users` row and the last seq of its log, as stored. See [`SCHEMA_V3`] for why the
/// row's `last_seq` may be behind the log's.
#[derive(Debug, Clone, Copy, Default)]
struct UserRow {
    /// Up to where the row's counts describe the log.
    last_seq: i64,
    pruned_through: i64,
    /// The highest seq in the log (0: none).
    max_seq: i64,
    total: i64,
    unread: i64,
    unseen: i64,
    archived: i64,
    version: i64,
}

impl UserRow {
    /// The row with the user's staged notifications, up to `last_staged`, counted in the tail:
    /// they are appends not yet in `notifications` (see `sqlite/staging.rs`).
    fn with_staged(mut self, last_staged: Option<Seq>) -> Self {
        if let Some(last) = last_staged {
            self.max_seq = self.max_seq.max(sql_seq(last));
        }
        self
    }

    /// The log's last seq: the row's, or the tail's end.
    fn head(&self) -> i64 {
        self.last_seq.max(self.max_seq)
    }

    /// How many notifications follow the row's `last_seq`: appends not folded in yet.
    fn tail(&self) -> i64 {
        (self.max_seq - self.last_seq).max(0)
    }

    /// The counts of the whole log: the row's plus the tail's, whose every notification is in the
    /// inbox, unread and unseen, and was one change.
    fn counts(&self, user: &str) -> Result<InboxCounts, StoreError> {
        let tail = self.tail();
        let count = |n: i64| {
            u64::try_from(n)
                .map_err(|_| StoreError::Corrupt(format!("negative inbox count {n} of user {user}")))
        };
        Ok(InboxCounts {
            total: count(self.total + tail)?,
            unread: count(self.unread + tail)?,
            unseen: count(self.unseen + tail)?,
            archived: count(self.archived)?,
            version: count(self.version + tail)?,
        })
    }
}

/// The query of [`read_user_row`]: two primary-key lookups.
const USER_ROW_SQL: &str = "
    SELECT last_seq, pruned_through, IFNULL((SELECT MAX(seq) FROM notifications WHERE user = ?1), 0),
           total, unread, unseen, archived, inbox_version
    FROM users WHERE user = ?1";

/// `user`'s row, `None` if it has none (it never had a notification).
fn read_user_row(conn: &Connection, user: &str) -> Result<Option<UserRow>, StoreError> {
    conn.prepare_cached(USER_ROW_SQL)
        .and_then(|mut stmt| {
            stmt.query_row([user], |row| {
                Ok(UserRow {
                    last_seq: row.get(0)?,
                    pruned_through: row.get(1)?,
                    max_seq: row.get(2)?,
                    total: row.get(3)?,
                    unread: row.get(4)?,
                    unseen: row.get(5)?,
                    archived: row.get(6)?,
                    version: row.get(7)?,
                })
            })
            .optional()
        })
        .map_err(db_error)
}

/// `user`'s head, its staged notifications up to `last_staged` included.
fn read_head(conn: &Connection, user: &UserId, last_staged: Option<Seq>) -> Result<LogHead, StoreError> {
    match read_user_row(conn, user.as_str())? {
        None => Ok(LogHead::default()),
        Some(row) => Ok(LogHead {
            last_seq: seq_from_sql(row.with_staged(last_staged).head())?,
            pruned_through: seq_from_sql(row.pruned_through)?,
        }),
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
    /// The row from the columns `seq, type, data, created_at, session, client, except_client`.
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Row {
            seq: row.get(0)?,
            kind: row.get(1)?,
            data: row.get(2)?,
            created_at_ms: row.get(3)?,
            session: row.get(4)?,
            client: row.get(5)?,
            except_client: row.get(6)?,
        })
    }
}

/// An inbox state from the columns `seen_at, read_at, archived_at` starting at `first`.
fn read_state(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<ItemState> {
    Ok(ItemState {
        seen_at_ms: row.get(first)?,
        read_at_ms: row.get(first + 1)?,
        archived_at_ms: row.get(first + 2)?,
    })
}

/// `user`'s counts: those of its `users` row plus its tail (see [`UserRow::counts`]).
fn read_counts(conn: &Connection, user: &str) -> Result<InboxCounts, StoreError> {
    match read_user_row(conn, user)? {
        None => Ok(InboxCounts::default()),
        Some(row) => row.counts(user),
    }
}

/// Folds `user`'s tail into its `users` row: its counts and `last_seq` then describe the whole
/// log. Every write but an append does this first, so that the tail stays what appends made it
/// (consecutive seqs, unread, unseen, not archived) and the row's counts can be adjusted by the
/// states of the rows a write changes.
fn fold_tail(conn: &Connection, user: &str) -> Result<(), StoreError> {
    // Read first, then a plain update: `MAX(seq)` inside the UPDATE's own expression would not
    // get SQLite's min/max optimization and would walk the user's whole log.
    let Some(row) = read_user_row(conn, user)? else { return Ok(()) };
    let tail = row.tail();
    if tail == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE users SET total = total + ?2, unread = unread + ?2, unseen = unseen + ?2,
             inbox_version = inbox_version + ?2, last_seq = ?3
         WHERE user = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![user, tail, row.max_seq]))
    .map_err(db_error)?;
    Ok(())
}

/// Adds `delta` to `user`'s counts and one to its version; returns the new counts. The caller
/// folded the tail first ([`fold_tail`]).
fn apply_counts(conn: &Connection, user: &str, delta: CountsDelta) -> Result<InboxCounts, StoreError> {
    conn.prepare_cached(
        "UPDATE users SET total = total + ?2, unread = unread + ?3, unseen = unseen + ?4,
             archived = archived + ?5, inbox_version = inbox_version + 1
         WHERE user = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![user, delta.total, delta.unread, delta.unseen, delta.archived]))
    .map_err(db_error)?;
    read_counts(conn, user)
}

/// A page of `user`'s inbox, its `staged` notifications (taken before this snapshot) included.
fn read_inbox_page(
    conn: &Connection,
    user: &UserId,
    query: &InboxQuery,
    mut staged: Vec<Arc<Notification>>,
) -> Result<InboxPage, StoreError> {
    let Some(row) = read_user_row(conn, user.as_str())? else {
        return Ok(InboxPage { items: Vec::new(), next_before: None, counts: InboxCounts::default() });
    };
    // Those settled since `staged` was taken are in this snapshot's `notifications`.
    let settled_head = row.head();
    staged.retain(|n| n.seq.is_some_and(|seq| sql_seq(seq) > settled_head));
    let counts = row.with_staged(staged.last().and_then(|n| n.seq)).counts(user.as_str())?;
    if query.limit == 0 {
        return Ok(InboxPage { items: Vec::new(), next_before: None, counts });
    }
    let before = query.before.map_or(i64::MAX, sql_seq);
    // One more than asked: whether it exists says whether there is a next page.
    let mut fetch = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
    if query.before.is_none() && query.kind.is_none() {
        // The first page of a status: the counts (same snapshot) say how many rows match in
        // all, so the walk stops at the last of them instead of going on to the log's start.
        let matching = match query.status {
            InboxStatus::All => counts.total,
            InboxStatus::Unread => counts.unread,
            InboxStatus::Unseen => counts.unseen,
            InboxStatus::Read => counts.total.saturating_sub(counts.unread),
            InboxStatus::Archived => counts.archived,
        };
        fetch = fetch.min(i64::try_from(matching).unwrap_or(i64::MAX));
        if fetch == 0 {
            return Ok(InboxPage { items: Vec::new(), next_before: None, counts });
        }
    }
    // Staged notifications come first: they are the newest, and each is in the inbox, unseen
    // and unread (a mark or delete settles its user first).
    let mut items: Vec<InboxItem> = Vec::new();
    if matches!(query.status, InboxStatus::All | InboxStatus::Unread | InboxStatus::Unseen) {
        items.extend(
            staged
                .iter()
                .rev()
                .filter(|n| n.seq.is_some_and(|seq| sql_seq(seq) < before))
                .filter(|n| query.kind.as_deref().is_none_or(|kind| *n.kind == *kind))
                .take(usize::try_from(fetch).unwrap_or(usize::MAX))
                .map(|n| InboxItem { notification: Arc::clone(n), state: ItemState::default() }),
        );
    }
    fetch -= items.len() as i64;
    let sql = inbox_list_sql(query.status, query.kind.is_some());
    let rows: Vec<(Row, ItemState)> = if fetch == 0 {
        Vec::new()
    } else {
        conn.prepare_cached(&sql)
            .and_then(|mut stmt| {
                let map = |row: &rusqlite::Row<'_>| Ok((Row::read(row)?, read_state(row, 7)?));
                match &query.kind {
                    Some(kind) => stmt.query_map(params![user.as_str(), before, fetch, kind], map)?.collect(),
                    None => stmt.query_map(params![user.as_str(), before, fetch], map)?.collect(),
                }
            })
            .map_err(db_error)?
    };
    for (row, state) in rows {
        items.push(InboxItem { notification: row.into_notification(user)?, state });
    }
    let more = items.len() > query.limit;
    items.truncate(query.limit);
    let next_before = if more { items.last().map(InboxItem::seq) } else { None };
    Ok(InboxPage { items, next_before, counts })
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
            stmt.query_map(params![user.as_str(), sql_seq(after), limit], Row::read)?
                .collect::<rusqlite::Result<Vec<Row>>>()
        })
        .map_err(db_error)?;
    rows.into_iter().map(|row| row.into_notification(user)).collect()
}

// ---------------------------------------------------------------------------------------------
// The writer

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Append {
        entries: Vec<NewNotification>,
        key: Option<String>,
        reply: Reply<Appended>,
    },
    CompleteReceipt {
        key: String,
        receipt: String,
        reply: Reply<()>,
    },
    PruneChunk {
        notifications_before: i64,
        keys_before: i64,
        /// Unix seconds.
        revocations_before: i64,
        reply: Reply<PruneChunk>,
    },
    Revoke {
        user: UserId,
        session: Option<SessionId>,
        closed_at_secs: i64,
        reply: Reply<()>,
    },
    InboxMark {
        user: UserId,
        rows: Rows,
        mark: Mark,
        at_ms: i64,
        reply: Reply<InboxChunk>,
    },
    InboxDelete {
        user: UserId,
        rows: Rows,
        reply: Reply<InboxChunk>,
    },
    /// Settle everything staged, once the batch it is in has committed ([`SqliteStore::settle_all`]).
    SettleAll {
        reply: Reply<()>,
    },
}

/// The rows of one inbox request.
#[derive(Debug, Clone)]
enum Rows {
    Seqs(Vec<Seq>),
    /// Seqs in `(after, through]`, at most [`INBOX_CHUNK_ROWS`] of them that the request changes.
    Range {
        after: i64,
        through: i64,
    },
}

/// What one inbox request changed, and where the next chunk starts (`None`: done).
#[derive(Debug)]
struct InboxChunk {
    change: InboxChange,
    next_after: Option<i64>,
}

/// What one chunk of `prune` removed, and whether anything expired is left.
#[derive(Debug)]
struct PruneChunk {
    notifications: u64,
    idempotency_keys: u64,
    revocations: u64,
    inboxes: Vec<PrunedInbox>,
    done: bool,
}

/// What running a request gave, before its batch committed.
enum Outcome {
    Append(Result<Appended, StoreError>),
    CompleteReceipt(Result<(), StoreError>),
    Revoke(Result<(), StoreError>),
    PruneChunk(Result<PruneChunk, StoreError>),
    Inbox(Result<InboxChunk, StoreError>),
    /// Nothing done yet: the writer settles after the batch commits.
    SettleAll,
}

impl Outcome {
    fn error(&self) -> Option<&StoreError> {
        match self {
            Outcome::Append(result) => result.as_ref().err(),
            Outcome::CompleteReceipt(result) | Outcome::Revoke(result) => result.as_ref().err(),
            Outcome::PruneChunk(result) => result.as_ref().err(),
            Outcome::Inbox(result) => result.as_ref().err(),
            Outcome::SettleAll => None,
        }
    }

    /// `request` failed with `error`.
    fn failed(request: &Request, error: StoreError) -> Outcome {
        match request {
            Request::Append { .. } => Outcome::Append(Err(error)),
            Request::CompleteReceipt { .. } => Outcome::CompleteReceipt(Err(error)),
            Request::Revoke { .. } => Outcome::Revoke(Err(error)),
            Request::PruneChunk { .. } => Outcome::PruneChunk(Err(error)),
            Request::InboxMark { .. } | Request::InboxDelete { .. } => Outcome::Inbox(Err(error)),
            Request::SettleAll { .. } => Outcome::SettleAll,
        }
    }
}

/// A request's outcome with its reply, held until its batch has committed.
enum Answer {
    Append(Reply<Appended>, Result<Appended, StoreError>),
    CompleteReceipt(Reply<()>, Result<(), StoreError>),
    PruneChunk(Reply<PruneChunk>, Result<PruneChunk, StoreError>),
    Inbox(Reply<InboxChunk>, Result<InboxChunk, StoreError>),
    SettleAll(Reply<()>, Result<(), StoreError>),
}

impl Request {
    /// Runs the request on `conn` (inside the batch's transaction). It only reads the request,
    /// so that a batch can run again after a rollback (see `run_batch`).
    fn execute(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        retention: &Retention,
        now: i64,
    ) -> Outcome {
        match self {
            Request::Append { entries, key, .. } => {
                Outcome::Append(append(conn, writes, retention, now, entries, key.as_deref()))
            }
            Request::CompleteReceipt { key, receipt, .. } => {
                Outcome::CompleteReceipt(complete_receipt(conn, key, receipt))
            }
            Request::PruneChunk { notifications_before, keys_before, revocations_before, .. } => {
                Outcome::PruneChunk(prune_chunk(
                    conn,
                    writes,
                    *notifications_before,
                    *keys_before,
                    *revocations_before,
                ))
            }
            Request::Revoke { user, session, closed_at_secs, .. } => {
                Outcome::Revoke(revoke(conn, user, session.as_ref(), *closed_at_secs))
            }
            Request::InboxMark { user, rows, mark, at_ms, .. } => {
                Outcome::Inbox(inbox_mark(conn, writes, user, rows, *mark, *at_ms))
            }
            Request::InboxDelete { user, rows, .. } => Outcome::Inbox(inbox_delete(conn, writes, user, rows)),
            Request::SettleAll { .. } => Outcome::SettleAll,
        }
    }

    /// The request's answer: its reply with `outcome`, which [`Request::execute`] gave for it.
    fn answer(self, outcome: Outcome) -> Answer {
        match (self, outcome) {
            (Request::Append { reply, .. }, Outcome::Append(result)) => Answer::Append(reply, result),
            (Request::CompleteReceipt { reply, .. }, Outcome::CompleteReceipt(result)) => {
                Answer::CompleteReceipt(reply, result)
            }
            (Request::PruneChunk { reply, .. }, Outcome::PruneChunk(result)) => {
                Answer::PruneChunk(reply, result)
            }
            (Request::Revoke { reply, .. }, Outcome::Revoke(result)) => {
                Answer::CompleteReceipt(reply, result)
            }
            (
                Request::InboxMark { reply, .. } | Request::InboxDelete { reply, .. },
                Outcome::Inbox(result),
            ) => Answer::Inbox(reply, result),
            (Request::SettleAll { reply }, Outcome::SettleAll) => Answer::SettleAll(reply, Ok(())),
            // `execute` gives each kind of request its own kind of outcome.
            (request, _) => request.fail(&StoreError::Unavailable("a write's outcome was mixed up".into())),
        }
    }

    fn fail(self, error: &StoreError) -> Answer {
        match self {
            Request::Append { reply, .. } => Answer::Append(reply, Err(copy_error(error))),
            Request::CompleteReceipt { reply, .. } | Request::Revoke { reply, .. } => {
                Answer::CompleteReceipt(reply, Err(copy_error(error)))
            }
            Request::PruneChunk { reply, .. } => Answer::PruneChunk(reply, Err(copy_error(error))),
            Request::InboxMark { reply, .. } | Request::InboxDelete { reply, .. } => {
                Answer::Inbox(reply, Err(copy_error(error)))
            }
            Request::SettleAll { reply } => Answer::SettleAll(reply, Err(copy_error(error))),
        }
    }
}

impl Answer {
    fn is_settle_all(&self) -> bool {
        matches!(self, Answer::SettleAll(_, Ok(())))
    }

    /// The writer settled everything after the batch, with `result`.
    fn settled_all(&mut self, result: &Result<(), StoreError>) {
        if let Answer::SettleAll(_, answer @ Ok(())) = self
            && let Err(error) = result
        {
            *answer = Err(copy_error(error));
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
            Answer::Inbox(reply, result) => {
                let _ = reply.send(result);
            }
            Answer::SettleAll(reply, result) => {
                let _ = reply.send(result);
            }
        }
    }
}

/// One error for each request of a failed batch: the same error, so that its message says what
/// failed once (rewrapping its whole text used to read `store unavailable: store unavailable: …`).
fn copy_error(error: &StoreError) -> StoreError {
    error.clone()
}

/// How long the writer waits before trying again when settling failed (a disk error) while too
/// many rows are staged; it then takes requests again and retries after the next batch.
const SETTLE_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The writer thread: batches until the queue is closed (the store dropped), settling staged
/// appends between batches (see `sqlite/staging.rs`); then settles what is left and returns, closing the
/// write connection.
fn run_writer(
    mut conn: Connection,
    mut queue: mpsc::Receiver<Request>,
    retention: Retention,
    settling: Settling,
    staging: &Mutex<Staging>,
    counters: &Counters,
) {
    let page_size: u64 = conn.pragma_query_value(None, "page_size", |row| row.get(0)).unwrap_or(4_096);
    take_pages_written(&conn);
    let mut settler = Settler::new(settling);
    // Only to wait for a request with a timeout (when something is staged and will be due for
    // settling); tokio's channel has no blocking receive with a timeout.
    let waiter = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(waiter) => waiter,
        Err(error) => {
            tracing::error!(%error, "the store's writer cannot start its timer; it stops");
            return;
        }
    };
    // What the writer did since it last counted: pages written, rows settled.
    let account = |conn: &Connection, settler: &Settler| {
        counters.settled.store(settler.settled, Ordering::Relaxed);
        counters.wal_bytes.fetch_add(take_pages_written(conn) * page_size, Ordering::Relaxed);
    };
    // Whether it settled anything; `None`: the writer must stop.
    let step = |conn: &mut Connection, settler: &mut Settler, idle: bool| -> Option<bool> {
        let stepped = match settler.step(conn, staging, idle) {
            Ok(stepped) => stepped,
            Err(error) => {
                tracing::warn!(%error, "settling staged appends failed; will retry");
                // Settle chunks commit without fsync; appends must never. If the connection
                // cannot be set back to FULL, stop rather than acknowledge what is not durable.
                if let Err(error) = conn.pragma_update(None, "synchronous", "FULL") {
                    tracing::error!(%error, "the store cannot make its commits durable again; its writer stops");
                    return None;
                }
                false
            }
        };
        account(conn, settler);
        Some(stepped)
    };
    // When free pages may be given back next (`None`: never, the file has no incremental
    // auto-vacuum, so a step would free nothing and the writer would wake for nothing).
    let mut vacuum_from = conn
        .pragma_query_value(None, "auto_vacuum", |row| row.get::<_, i64>(0))
        .is_ok_and(|mode| mode == 2)
        .then(Instant::now);
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    loop {
        // Too much staged: settle before taking more requests (they wait in the queue).
        while settler.must_settle(staging) {
            let Some(stepped) = step(&mut conn, &mut settler, false) else { return };
            if !stepped {
                std::thread::sleep(SETTLE_RETRY_DELAY);
                break;
            }
        }
        // Free pages to give back: then the writer waits for requests only so long.
        let vacuum_due =
            vacuum_from.is_some_and(|from| Instant::now() >= from) && free_pages_to_give_back(&conn) > 0;
        let idle_timeout = match (settler.idle_timeout(), vacuum_due) {
            (None, false) => None,
            (None, true) => Some(VACUUM_IDLE),
            (Some(timeout), vacuum_due) => Some(if vacuum_due { timeout.min(VACUUM_IDLE) } else { timeout }),
        };
        let waiting = match idle_timeout {
            None => Ok(queue.blocking_recv()),
            // Settling is due: no timer (it would fire on the time driver's next tick, a
            // millisecond later), only what is already queued.
            Some(timeout) if timeout.is_zero() => match queue.try_recv() {
                Ok(request) => Ok(Some(request)),
                Err(mpsc::error::TryRecvError::Disconnected) => Ok(None),
                Err(mpsc::error::TryRecvError::Empty) => Err(()),
            },
            // The timer is made inside `block_on`: it needs the runtime's context.
            Some(timeout) => {
                waiter.block_on(async { tokio::time::timeout(timeout, queue.recv()).await }).map_err(|_| ())
            }
        };
        let first = match waiting {
            Ok(request) => request,
            Err(()) => {
                // Idle and settling is due: a chunk now, then look at the queue again.
                let Some(settled) = step(&mut conn, &mut settler, true) else { return };
                // Idle, nothing to settle: give free pages back, one bounded step.
                if !settled
                    && vacuum_due
                    && let Err(error) = vacuum_step(&conn)
                {
                    tracing::warn!(%error, "giving free pages back failed; will retry in {VACUUM_RETRY_DELAY:?}");
                    vacuum_from = Some(Instant::now() + VACUUM_RETRY_DELAY);
                    if let Err(error) = conn.pragma_update(None, "synchronous", "FULL") {
                        tracing::error!(%error, "the store cannot make its commits durable again; its writer stops");
                        return;
                    }
                }
                continue;
            }
        };
        let Some(first) = first else { break };
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
        let (mut answers, staged) = run_batch(&mut conn, &retention, staging, &mut batch);
        settler.staged(staged);
        if answers.iter().any(Answer::is_settle_all) {
            let result = settler.settle_all(&mut conn, staging);
            for answer in &mut answers {
                answer.settled_all(&result);
            }
        }
        // Counted before answering, so that whoever got an answer sees its batch counted.
        account(&conn, &settler);
        for answer in answers {
            answer.send();
        }
        // One chunk of settling per batch at most, after answering: a publish waits for at most
        // one chunk.
        if step(&mut conn, &mut settler, false).is_none() {
            return;
        }
    }
    if let Err(error) = settler.settle_all(&mut conn, staging) {
        // Nothing is lost: the next open settles what is still staged.
        tracing::warn!(%error, "could not settle the staged appends on closing");
    }
}

/// Free pages in the file beyond the ones kept for reuse ([`VACUUM_KEEP_FREE_PAGES`]); 0 if
/// they cannot be counted. Reads the database header: cheap enough for every time the writer
/// goes idle.
fn free_pages_to_give_back(conn: &Connection) -> i64 {
    let free: i64 = conn
        .prepare_cached("PRAGMA freelist_count")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .unwrap_or(0);
    (free - VACUUM_KEEP_FREE_PAGES).max(0)
}

/// Gives up to [`VACUUM_STEP_PAGES`] free pages back to the file system (the file shrinks at the
/// next checkpoint). Without fsync, like a settle chunk (see `staging::settle_chunk`): it only
/// moves committed pages, a crash loses at most the step itself, and the next synced commit
/// makes it durable.
fn vacuum_step(conn: &Connection) -> Result<(), StoreError> {
    let pages = free_pages_to_give_back(conn).min(VACUUM_STEP_PAGES);
    if pages == 0 {
        return Ok(());
    }
    conn.pragma_update(None, "synchronous", "OFF").map_err(db_error)?;
    // Each step of the statement frees one page: run it to the end.
    let vacuumed = conn
        .prepare(&format!("PRAGMA incremental_vacuum({pages})"))
        .and_then(|mut stmt| {
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        })
        .map_err(db_error);
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_error)?;
    vacuumed
}

/// Pages this connection wrote out since the last call (`SQLITE_DBSTATUS_CACHE_WRITE`, reset
/// by reading it): in WAL mode, the WAL frames its commits appended.
fn take_pages_written(conn: &Connection) -> u64 {
    let (mut current, mut highest) = (0, 0);
    // SAFETY: the handle is valid while `conn` is borrowed, and sqlite3_db_status only writes
    // the two integers it is given.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE,
            &mut current,
            &mut highest,
            1,
        )
    };
    if rc == rusqlite::ffi::SQLITE_OK { u64::try_from(current).unwrap_or(0) } else { 0 }
}

/// Runs `batch` in one transaction and commits once. The answers are only sent by the caller,
/// after the commit: nothing is acknowledged before it is durable.
///
/// First without savepoints: a savepoint makes SQLite copy every page a request is about to
/// change into a sub-journal, about 5 µs per append (`cargo bench -p herald-store --bench
/// publish`), and requests almost never fail alone. If one does, that transaction is rolled back
/// and the batch runs again with each request in its own savepoint, so the failing request fails
/// alone and the others of its batch still commit.
/// The batch is left empty (its requests are answered), its allocation kept for the next one.
///
/// Also returns how many notifications the batch staged (see `sqlite/staging.rs`); what it changed in
/// `staging` is applied after the commit, before the answers go out.
fn run_batch(
    conn: &mut Connection,
    retention: &Retention,
    staging: &Mutex<Staging>,
    batch: &mut Vec<Request>,
) -> (Vec<Answer>, usize) {
    let now = now_ms();
    let outcomes = match run_transaction(conn, retention, now, staging, batch, Isolation::Batch) {
        Err(Failure::OneRequest) => {
            run_transaction(conn, retention, now, staging, batch, Isolation::EachRequest)
        }
        done => done,
    };
    match outcomes {
        Ok((outcomes, staged)) => {
            let answers =
                batch.drain(..).zip(outcomes).map(|(request, outcome)| request.answer(outcome)).collect();
            (answers, staged)
        }
        Err(failure) => {
            let error = match failure {
                Failure::Transaction(error) => error,
                // Not from `EachRequest`, where a request fails alone; but never a panic here.
                Failure::OneRequest => StoreError::Unavailable("a write of the batch failed".into()),
            };
            (batch.drain(..).map(|request| request.fail(&error)).collect(), 0)
        }
    }
}

/// How the requests of a batch are kept apart within its transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// Not at all: one failing request fails the transaction ([`Failure::OneRequest`]).
    Batch,
    /// Each in its own savepoint: a failing request is rolled back alone.
    EachRequest,
}

/// Why a batch's transaction did not commit.
enum Failure {
    /// A request failed (with [`Isolation::Batch`]); the transaction was rolled back.
    OneRequest,
    /// The transaction itself failed (begin, commit, or SQLite rolled it all back): every
    /// request of the batch fails with this.
    Transaction(StoreError),
}

/// One transaction for the whole batch; the outcome of each request, in order, and the number of
/// notifications staged, if it committed (its changes to `staging` are then applied).
fn run_transaction(
    conn: &mut Connection,
    retention: &Retention,
    now: i64,
    staging: &Mutex<Staging>,
    batch: &[Request],
    isolation: Isolation,
) -> Result<(Vec<Outcome>, usize), Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| {
        let error = db_error(e);
        tracing::error!(%error, "the store cannot start a write transaction");
        Failure::Transaction(error)
    })?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut writes = StagingWrites::new(staging);
    for request in batch {
        let outcome = match isolation {
            Isolation::Batch => request.execute(&tx, &mut writes, retention, now),
            Isolation::EachRequest => execute_in_savepoint(&tx, &mut writes, retention, now, request),
        };
        // Some errors (I/O, disk full, out of memory) make SQLite roll back the whole
        // transaction, not just the statement. The requests before this one are gone then,
        // although their savepoints were released: fail them all rather than acknowledge them.
        if tx.is_autocommit() {
            // The cause as it is (`database or disk is full`): what the publisher is told.
            let error = match outcome.error() {
                Some(e) => e.clone(),
                None => StoreError::Unavailable("the write transaction was rolled back".into()),
            };
            tracing::error!(%error, "the store lost a batch of writes (rolled back)");
            return Err(Failure::Transaction(error));
        }
        if isolation == Isolation::Batch && outcome.error().is_some() {
            // Dropping the transaction rolls it back.
            return Err(Failure::OneRequest);
        }
        outcomes.push(outcome);
    }
    tx.commit().map_err(|e| {
        let error = db_error(e);
        tracing::error!(%error, "the store cannot commit a batch of writes");
        Failure::Transaction(error)
    })?;
    Ok((outcomes, writes.commit()))
}

/// Runs one request inside a savepoint: released if it succeeds, rolled back if it fails, so a
/// failing request leaves no trace and takes nothing else of its batch down.
fn execute_in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    writes: &mut StagingWrites<'_>,
    retention: &Retention,
    now: i64,
    request: &Request,
) -> Outcome {
    // `Transaction::savepoint` needs `&mut`; the SQL is the same.
    if let Err(e) = tx.execute_batch("SAVEPOINT request") {
        return Outcome::failed(request, db_error(e));
    }
    // What the request changes in `staging` is rolled back with it.
    let before = writes.overlay().clone();
    let outcome = request.execute(tx, writes, retention, now);
    let failed = outcome.error().is_some();
    let end = if failed { "ROLLBACK TO request; RELEASE request" } else { "RELEASE request" };
    match tx.execute_batch(end) {
        Ok(()) if !failed => outcome,
        Ok(()) => {
            writes.restore(before);
            outcome
        }
        Err(e) => {
            writes.restore(before);
            Outcome::failed(request, db_error(e))
        }
    }
}

fn append(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    retention: &Retention,
    now: i64,
    entries: &[NewNotification],
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
    // Each touched user's row with `max_seq` kept up to date by this append (so its counts are
    // the user's after it), to apply `max_per_user` once per user, and the users in the order
    // they first appear, for the counts returned.
    let mut heads: HashMap<UserId, UserRow> = HashMap::new();
    let mut users: Vec<UserId> = Vec::new();
    {
        // The `users` row is only written for a new user: the notification joins the tail,
        // which counts it as in the inbox, unread and unseen (see SCHEMA_V3). And it is staged,
        // not inserted into the user's log (see `staging`).
        let mut new_user = conn
            .prepare_cached("INSERT INTO users (user, last_seq, pruned_through) VALUES (?1, 0, 0)")
            .map_err(db_error)?;
        for entry in entries {
            let mut row = match heads.get(&entry.user) {
                Some(row) => *row,
                None => match writes.user_row(conn, &entry.user)? {
                    Some(row) => row,
                    None => {
                        new_user.execute([entry.user.as_str()]).map_err(db_error)?;
                        UserRow::default()
                    }
                },
            };
            let seq = row.head() + 1;
            row.max_seq = seq;
            let notification = Arc::new(Notification::new(
                entry.user.clone(),
                Some(seq_from_sql(seq)?),
                Arc::clone(&entry.kind),
                Arc::clone(&entry.data),
                entry.created_at_ms,
                entry.audience.clone(),
            ));
            writes.stage(conn, &notification, row)?;
            if heads.insert(entry.user.clone(), row).is_none() {
                users.push(entry.user.clone());
            }
            stored.push(notification);
        }
    }

    let max_per_user = i64::try_from(retention.max_per_user).unwrap_or(i64::MAX);
    let mut counts = Vec::with_capacity(users.len());
    for user in users {
        let row = heads[&user];
        let bound = row.head().saturating_sub(max_per_user);
        let user_counts = if bound > row.pruned_through {
            prune_user_through(conn, writes, &user, row.pruned_through, bound)?;
            read_counts(conn, user.as_str())?
        } else {
            // Nothing but this append changed the user's log since the row was read.
            row.counts(user.as_str())?
        };
        counts.push((user, user_counts));
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
    Ok(Appended::Stored { notifications: stored, counts })
}

/// Deletes `user`'s notifications with seq in `(from, through]`, takes them off the counts, and
/// raises its `pruned_through` to `through` (never lowers it). Returns how many notifications
/// went.
fn prune_user_through(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    from: i64,
    through: i64,
) -> Result<u64, StoreError> {
    writes.settle_user(conn, user)?;
    let user = user.as_str();
    fold_tail(conn, user)?;
    let mut delta = CountsDelta::default();
    let deleted = delete_rows(conn, user, from, through, &mut delta)?;
    if !deleted.is_empty() {
        apply_counts(conn, user, delta)?;
    }
    conn.prepare_cached("UPDATE users SET pruned_through = ?2 WHERE user = ?1 AND pruned_through < ?2")
        .and_then(|mut stmt| stmt.execute(params![user, through]))
        .map_err(db_error)?;
    Ok(deleted.len() as u64)
}

/// Deletes `user`'s notifications with seq in `(from, through]` and adds what they counted for
/// (by their states, as they are deleted) to `delta`, for the caller to apply. Returns the seqs
/// deleted, ascending.
fn delete_rows(
    conn: &Connection,
    user: &str,
    from: i64,
    through: i64,
    delta: &mut CountsDelta,
) -> Result<Vec<Seq>, StoreError> {
    let mut seqs = conn
        .prepare_cached(
            "DELETE FROM notifications WHERE user = ?1 AND seq > ?2 AND seq <= ?3
             RETURNING seq, seen_at, read_at, archived_at",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![user, from, through], |row| {
                Ok((row.get::<_, i64>(0)?, read_state(row, 1)?))
            })?
            .map(|row| {
                row.map(|(seq, state)| {
                    *delta += CountsDelta::between(Some(&state), None);
                    seq
                })
            })
            .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .map_err(db_error)?
        .into_iter()
        .map(seq_from_sql)
        .collect::<Result<Vec<Seq>, _>>()?;
    // RETURNING gives no order.
    seqs.sort_unstable();
    Ok(seqs)
}

/// Marks the selected notifications of `user`: reads the state of each, computes the new one
/// ([`ItemState::marked`], the same rule as every store), writes the rows that change and the
/// counts' difference. A range takes at most [`INBOX_CHUNK_ROWS`] rows that the mark changes.
fn inbox_mark(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    rows: &Rows,
    mark: Mark,
    at_ms: i64,
) -> Result<InboxChunk, StoreError> {
    writes.settle_user(conn, user)?;
    let user = user.as_str();
    fold_tail(conn, user)?;
    let mut next_after = None;
    let rows: Vec<(i64, ItemState)> = match rows {
        Rows::Seqs(seqs) => {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seen_at, read_at, archived_at FROM notifications WHERE user = ?1 AND seq = ?2",
                )
                .map_err(db_error)?;
            let mut rows = Vec::with_capacity(seqs.len());
            for &seq in seqs {
                let seq = sql_seq(seq);
                if let Some(state) = stmt
                    .query_row(params![user, seq], |row| read_state(row, 0))
                    .optional()
                    .map_err(db_error)?
                {
                    rows.push((seq, state));
                }
            }
            rows.sort_unstable_by_key(|(seq, _)| *seq);
            rows.dedup_by_key(|(seq, _)| *seq);
            rows
        }
        Rows::Range { after, through } => {
            let rows: Vec<(i64, ItemState)> = conn
                .prepare_cached(&format!(
                    "SELECT seq, seen_at, read_at, archived_at FROM notifications
                     WHERE user = ?1 AND seq > ?2 AND seq <= ?3 AND {} ORDER BY seq LIMIT ?4",
                    // Exactly the rows the mark changes, so that every chunk makes progress.
                    match mark {
                        Mark::Read => "read_at IS NULL",
                        Mark::Unread => "read_at IS NOT NULL",
                        Mark::Seen => "seen_at IS NULL",
                        Mark::Archived => "archived_at IS NULL",
                        Mark::Unarchived => "archived_at IS NOT NULL",
                    }
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![user, after, through, INBOX_CHUNK_ROWS], |row| {
                        Ok((row.get(0)?, read_state(row, 1)?))
                    })?
                    .collect()
                })
                .map_err(db_error)?;
            if rows.len() as i64 == INBOX_CHUNK_ROWS {
                next_after = rows.last().map(|(seq, _)| *seq);
            }
            rows
        }
    };
    let mut update = conn
        .prepare_cached(
            "UPDATE notifications SET seen_at = ?3, read_at = ?4, archived_at = ?5 WHERE user = ?1 AND seq = ?2",
        )
        .map_err(db_error)?;
    let mut delta = CountsDelta::default();
    let mut seqs = Vec::new();
    for (seq, state) in rows {
        let Some(next) = state.marked(mark, at_ms) else { continue };
        update
            .execute(params![user, seq, next.seen_at_ms, next.read_at_ms, next.archived_at_ms])
            .map_err(db_error)?;
        delta += CountsDelta::between(Some(&state), Some(&next));
        seqs.push(seq_from_sql(seq)?);
    }
    let counts = if seqs.is_empty() { read_counts(conn, user)? } else { apply_counts(conn, user, delta)? };
    Ok(InboxChunk { change: InboxChange { seqs, counts }, next_after })
}

/// Deletes the selected notifications of `user` and takes them off the counts. Leaves
/// `pruned_through` alone: a deletion is not retention. A range takes at most
/// [`INBOX_CHUNK_ROWS`] rows.
fn inbox_delete(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    rows: &Rows,
) -> Result<InboxChunk, StoreError> {
    writes.settle_user(conn, user)?;
    let user = user.as_str();
    fold_tail(conn, user)?;
    let mut delta = CountsDelta::default();
    let mut next_after = None;
    let seqs = match rows {
        Rows::Range { after, through } => {
            // The last seq of this chunk: the INBOX_CHUNK_ROWS-th stored one, if there are that many.
            let chunk_end: Option<i64> = conn
                .prepare_cached(
                    "SELECT seq FROM notifications WHERE user = ?1 AND seq > ?2 AND seq <= ?3
                     ORDER BY seq LIMIT 1 OFFSET ?4",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![user, after, through, INBOX_CHUNK_ROWS - 1], |row| row.get(0))
                        .optional()
                })
                .map_err(db_error)?;
            let end = match chunk_end {
                Some(end) if end < *through => {
                    next_after = Some(end);
                    end
                }
                _ => *through,
            };
            delete_rows(conn, user, *after, end, &mut delta)?
        }
        Rows::Seqs(seqs) => {
            let mut deleted = Vec::new();
            for &seq in seqs {
                let seq = sql_seq(seq);
                if seq > 0 {
                    deleted.extend(delete_rows(conn, user, seq - 1, seq, &mut delta)?);
                }
            }
            deleted.sort_unstable();
            deleted.dedup();
            deleted
        }
    };
    let counts = if seqs.is_empty() { read_counts(conn, user)? } else { apply_counts(conn, user, delta)? };
    Ok(InboxChunk { change: InboxChange { seqs, counts }, next_after })
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
/// stamped later (clocks step back), so that retention removes a prefix of the log and
/// `pruned_through` keeps its meaning: everything up to it is gone. Each user's counts lose what
/// the removed notifications counted for, and the chunk reports them.
fn prune_chunk(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    notifications_before: i64,
    keys_before: i64,
    revocations_before: i64,
) -> Result<PruneChunk, StoreError> {
    writes.settle_older_than(conn, notifications_before)?;
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
    let mut inboxes = Vec::with_capacity(expired.len());
    for (user, through, count) in expired {
        selected += count;
        let user =
            UserId::new(user).map_err(|e| StoreError::Corrupt(format!("user id in the store: {e}")))?;
        notifications += prune_user_through(conn, writes, &user, 0, through)?;
        // Any staged rows of the user were settled by the prune: SQLite's counts are all of them.
        let counts = read_counts(conn, user.as_str())?;
        inboxes.push(PrunedInbox { user, through: seq_from_sql(through)?, counts });
    }

    let idempotency_keys = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency WHERE created_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![keys_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    // Every token these refuse has expired (see `Retention::revocation_window`).
    let revocations = conn
        .prepare_cached(
            "DELETE FROM revocations WHERE (user, session) IN (
                 SELECT user, session FROM revocations WHERE closed_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![revocations_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    Ok(PruneChunk {
        notifications,
        idempotency_keys: idempotency_keys as u64,
        revocations: revocations as u64,
        inboxes,
        done: selected < PRUNE_CHUNK_ROWS
            && idempotency_keys < PRUNE_CHUNK_ROWS
            && revocations < PRUNE_CHUNK_ROWS,
    })
}

/// The session column of `revocations`: `''` for all sessions.
fn revocation_session(session: Option<&SessionId>) -> &str {
    session.map_or("", SessionId::as_str)
}

/// Records a close, keeping the latest one of the user and session.
fn revoke(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
    closed_at_secs: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO revocations (user, session, closed_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user, session) DO UPDATE SET closed_at = MAX(closed_at, excluded.closed_at)",
    )
    .and_then(|mut stmt| stmt.execute(params![user.as_str(), revocation_session(session), closed_at_secs]))
    .map_err(db_error)?;
    Ok(())
}

#[cfg(test)]
mod tests;
