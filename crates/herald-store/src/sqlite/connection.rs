//! The store's connections to its file: the lock file taken before anything else
//! ([`lock_path`]), the refusal of an empty file, the write connection and its pragmas (WAL,
//! `synchronous=FULL`, incremental auto-vacuum, the WAL's bounds), and the [`ReaderPool`] of
//! read-only connections that every read runs on. The writer checkpoints the WAL itself (see
//! `writer::CHECKPOINT_INTERVAL`). What
//! the tables are is in `schema`; what runs on these connections, in `reads` and the writer.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald_core::StoreError;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;

use super::sql::db_error;

/// Read-only connections in the pool. At the bound, further reads wait (fairly, first come first
/// served) for a connection to come back.
pub const READER_CONNECTIONS: usize = 4;

/// How long a connection retries when the database is locked by someone else (another process on
/// the same file; a checkpoint). Past it, the operation fails with `Overloaded`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The WAL is truncated back to this size after a checkpoint, so that a burst of writes does not
/// leave a huge file behind forever.
const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;
/// WAL pages after which SQLite checkpoints inside a commit anyway: a safety valve for when the
/// writer's own checkpoints cannot keep up (readers holding old snapshots). Not the usual path:
/// such a checkpoint copies pages and fsyncs the database file inside a commit, a latency spike
/// for every publish of that batch. 16,384 pages of 4 KiB: 64 MiB.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// Prepared statements kept per connection; the store uses fewer than this (inbox pages: one
/// per status, with and without a type), so none is ever re-prepared.
const STATEMENT_CACHE_CAPACITY: usize = 64;

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
    Ok(())
}

/// The lock file of the database at `path`: `herald.db.lock` beside it, named after the real
/// file, so that two names of one database (a symlinked dir, `data/../data/herald.db`) take the
/// same lock.
pub(super) fn lock_path(path: &Path) -> PathBuf {
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
pub(super) fn refuse_an_empty_file(path: &Path) -> Result<(), StoreError> {
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

/// Opens (creating it if missing) the write connection, the only one that writes: WAL mode,
/// `synchronous=FULL`, and the WAL's bounds.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let flags =
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_error)?;
    configure(&conn).map_err(db_error)?;
    // Takes effect in a new database (before its first table); an old one is converted by
    // `schema::use_incremental_vacuum`. Why: see `writer::VACUUM_STEP_PAGES`.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(db_error)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)).map_err(db_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Only possible on a file system without shared memory support; never run without WAL
        // silently, since readers would then block the writer.
        return Err(StoreError::Unavailable(format!("cannot switch to WAL mode (journal mode is {mode})")));
    }
    // Why FULL: see the `sqlite` module docs (an acknowledged append must survive power loss).
    conn.pragma_update(None, "synchronous", "FULL").map_err(db_error)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES).map_err(db_error)?;
    conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES).map_err(db_error)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    configure(&conn)?;
    Ok(conn)
}

/// The read-only connections every read runs on, [`READER_CONNECTIONS`] of them, each read on
/// one of tokio's blocking threads (`spawn_blocking`) inside one read transaction, so that a page
/// and its head come from the same snapshot. A semaphore bounds concurrent reads to the pool size
/// and queues the rest fairly; reads are short and bursty, so borrowing blocking threads on
/// demand beats keeping dedicated reader threads (and a second queue) alive.
pub(super) struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    /// One permit per connection: a holder of a permit always finds an idle connection.
    permits: Arc<Semaphore>,
}

impl ReaderPool {
    /// Opens the pool's connections to the database at `path`, which must have its schema (the
    /// writer opens first: it sets WAL mode and creates the schema).
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let connections = (0..READER_CONNECTIONS)
            .map(|_| open_reader(path).map_err(db_error))
            .collect::<Result<Vec<_>, _>>()?;
        let permits = Arc::new(Semaphore::new(connections.len()));
        Ok(Self { idle: Mutex::new(connections), permits })
    }

    /// Runs `read` on a pooled read-only connection, inside one read transaction.
    pub(super) async fn read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store's reader pool is closed".into()))?;
        let pool = Arc::clone(self);
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
