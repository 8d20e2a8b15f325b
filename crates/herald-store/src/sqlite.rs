//! [`SqliteStore`]: each user's log in one SQLite file, for a single node.
//!
//! # How it works
//! - **WAL mode**, so that readers never wait for the writer nor the writer for readers.
//! - **One writer thread** owns the only write connection. Every write (`append`,
//!   `append_topic`, `complete_receipt`, `save_job`, a chunk of `prune`) is a request on a
//!   bounded queue. The writer takes the
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
//! - **Reads** (`read_after`, `head`, inbox pages) use a pool of [`READER_CONNECTIONS`] read-only connections
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
//!
//! # Layout
//! In reading order, each module using only those above it:
//! - `sql`: SQLite's errors as [`StoreError`]s, seqs in and out of SQLite's integers.
//! - `schema`: the tables of each schema version and the migrations that upgrade a file in place.
//! - `connection`: the lock file, opening the file and its pragmas, the pool of read-only
//!   connections.
//! - `reads`: what a read transaction does: heads, log pages, inbox pages and counts
//!   (`UserRow`, a user's row with its tail), revocations, listens kept in the store, topic logs,
//!   fan-out jobs.
//! - `staging`: staged appends, kept in memory for readers and settled into the logs.
//! - `request`: the writer's requests, each write with its typed reply.
//! - `writes`: what each request does in SQL, inside the writer's transaction.
//! - `writer`: the writer thread and its queue: batches, group commit, savepoints, settling,
//!   checkpoints and vacuum between batches.
//! - `operations`: [`Store`] for [`SqliteStore`], delegating to the reads and the writer.

mod connection;
mod operations;
mod push_users;
mod reads;
mod request;
mod schema;
mod sql;
mod staging;
mod writer;
mod writes;

use std::path::{Path, PathBuf};
use std::sync::Arc;

#[cfg(doc)]
use herald_core::Store;
use herald_core::{Epoch, Retention, StoreError};
use parking_lot::Mutex;

pub use connection::READER_CONNECTIONS;
pub use push_users::PUSH_USERS_FILTER_BITS;
pub use reads::inbox_list_sql;
pub use schema::{
    SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6, SCHEMA_V7, SCHEMA_V8, SCHEMA_V9, SCHEMA_V10,
    SCHEMA_VERSION,
};
pub use staging::Settling;
pub use writer::{BATCH_REQUESTS_MAX, ENQUEUE_TIMEOUT, WRITE_QUEUE_CAPACITY, WriterStats};
pub use writes::{INBOX_CHUNK_ROWS, PRUNE_CHUNK_ROWS};

use crate::lock::{LockError, LockFile};
use connection::{ReaderPool, lock_path, open_writer, refuse_an_empty_file};
use push_users::PushUsers;
use request::SettleAll;
use schema::{migrate, read_epoch, renew_epoch, use_incremental_vacuum};
use staging::Staging;
use writer::Writer;

/// Each user's durable log in one SQLite file. See the module docs for the design.
///
/// Dropping the store stops its writer thread once the requests already queued are done (the
/// drop waits for that: the queue is empty unless the store was dropped mid-burst), and closes
/// every connection.
pub struct SqliteStore {
    path: PathBuf,
    retention: Retention,
    /// The database's, read at open: nothing else changes it while the store holds the file
    /// (see [`SqliteStore::renew_epoch`]).
    epoch: Epoch,
    // Fields are dropped in order: the writer stops (answering what is queued and settling what
    // is staged) before the readers and the lock.
    writer: Writer,
    readers: Arc<ReaderPool>,
    /// Appends committed to `staged` and not yet settled into `notifications`: readers merge
    /// them with what they read (see `sqlite/staging.rs`).
    staging: Arc<Mutex<Staging>>,
    /// Which users may have a push subscription (see `sqlite/push_users.rs`): an append for
    /// users who have none does no push work.
    push_users: PushUsers,
    /// The database is this store's alone while it is open (see `connection::lock_path`).
    /// Declared last, so released last: after the writer has stopped and every connection is
    /// closed.
    _lock: LockFile,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("retention", &self.retention)
            .field("epoch", &self.epoch)
            .field("writer", &self.writer_stats())
            .finish_non_exhaustive()
    }
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
        let context = open_context(path);
        // Before anything touches the file: a second store on it would settle this one's staged
        // appends behind its back, and both would hand out the same seqs.
        let lock = lock_store(path)?;
        refuse_an_empty_file(path)?;
        // The writer first: it sets WAL mode and creates the schema, which readers need.
        let mut writer = open_writer(path).map_err(context)?;
        migrate(&mut writer, path).map_err(context)?;
        let epoch = read_epoch(&writer).map_err(context)?;
        use_incremental_vacuum(&writer).map_err(context)?;
        let recovered = staging::recover(&mut writer).map_err(context)?;
        if recovered > 0 {
            tracing::info!(notifications = recovered, "settled the appends the last run left staged");
        }
        let push_users = PushUsers::default();
        for user in reads::read_push_users(&writer).map_err(context)? {
            push_users.insert(&user);
        }
        let readers = ReaderPool::open(path).map_err(context)?;
        let staging = Arc::new(Mutex::new(Staging::default()));
        let writer = Writer::start(writer, path, retention, settling, Arc::clone(&staging))?;
        Ok(Self {
            path: path.to_owned(),
            retention,
            epoch,
            writer,
            readers: Arc::new(readers),
            staging,
            push_users,
            _lock: lock,
        })
    }

    /// Gives the database at `path` a new random epoch and returns it, without serving it: what
    /// an operator runs after putting back an older copy of the file (see [`SCHEMA_V6`] for
    /// why). Clients that resume with seqs of the old epoch then get a `reset`.
    ///
    /// Takes the store's lock like [`SqliteStore::open`], so it fails with
    /// [`StoreError::Locked`] while a server has the database open (stop it first), and with
    /// [`StoreError::NotAStore`] if there is no Herald database at `path`. Upgrades an older
    /// database first, as opening it would.
    pub fn renew_epoch(path: &Path) -> Result<Epoch, StoreError> {
        if !path.is_file() {
            return Err(StoreError::NotAStore {
                path: path.to_owned(),
                reason: "there is no such file".into(),
            });
        }
        let context = open_context(path);
        let _lock = lock_store(path)?;
        refuse_an_empty_file(path)?;
        let mut conn = open_writer(path).map_err(context)?;
        migrate(&mut conn, path).map_err(context)?;
        renew_epoch(&conn).map_err(context)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Settles every staged append into the users' logs now, and empties `staged` (the store
    /// does it by itself, see `sqlite/staging.rs`; this is for tests and tools that read the file).
    pub async fn settle_all(&self) -> Result<(), StoreError> {
        self.writer.submit(SettleAll).await
    }
}

/// Makes the message of a failure to open the store at `path` say so.
fn open_context(path: &Path) -> impl Fn(StoreError) -> StoreError + Copy + '_ {
    move |e| match e {
        StoreError::Unavailable(e) => {
            StoreError::Unavailable(format!("cannot open the store at {}: {e}", path.display()))
        }
        other => other,
    }
}

/// Takes the lock of the database at `path` (see `connection::lock_path`).
fn lock_store(path: &Path) -> Result<LockFile, StoreError> {
    LockFile::acquire(&lock_path(path)).map_err(|e| match e {
        LockError::Held { pid, .. } => StoreError::Locked { path: path.to_owned(), pid },
        LockError::Io { .. } => {
            StoreError::Unavailable(format!("cannot open the store at {}: {e}", path.display()))
        }
    })
}

#[cfg(test)]
mod tests;
