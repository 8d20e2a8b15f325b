//! The writer: the one thread that writes the database, and its queue. [`Writer`] owns both
//! ends: a write is queued ([`Writer::submit`], bounded, [`WRITE_QUEUE_CAPACITY`]), and the
//! thread takes what is waiting as one batch (group commit, up to [`BATCH_REQUESTS_MAX`]), runs
//! it in one transaction (again with a savepoint per request if one fails), commits, and only
//! then answers. Between batches it settles staged appends (the mechanism is in `staging`),
//! checkpoints the WAL ([`CHECKPOINT_INTERVAL`]) and, when idle, gives free pages back
//! (incremental vacuum). What each request does in SQL is in `writes`; the requests themselves,
//! in `request`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use herald_core::notification::now_ms;
use herald_core::{Retention, StoreError};
use parking_lot::Mutex;
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::request::{Job, Request, Write};
use super::sql::db_error;
use super::staging::{ChunkBound, MIN_CHUNK_ROWS, Settler, Settling, Staging, StagingWrites};

/// Write requests waiting for the writer thread. When the queue is full, a write waits for a
/// slot for at most [`ENQUEUE_TIMEOUT`], then fails with [`StoreError::Overloaded`]: the disk is
/// not keeping up, and publishers get a retryable error instead of piling up without bound.
pub const WRITE_QUEUE_CAPACITY: usize = 4_096;

/// How long a write waits for a slot in a full queue before failing with `Overloaded`.
pub const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests the writer commits together at most. At the bound, the rest stay queued for the next
/// batch: one transaction (and the latency of the requests answered by it) stays bounded.
pub const BATCH_REQUESTS_MAX: usize = 512;

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

/// How often the writer copies the WAL back into the database file (a PASSIVE checkpoint), when
/// it wrote anything since the last time.
///
/// Why the writer and not a thread of its own: SQLite starts the WAL over from its beginning only
/// when a write transaction finds every frame copied back. A checkpointer running beside the
/// writer never finds that under a steady load (a commit always lands while it copies), so the
/// WAL grew to the autocheckpoint bound and every commit appended to the file: its fdatasync
/// then also wrote the inode (the size changed) and ran beside the checkpointer's own syncs. Run
/// by the writer between batches, a checkpoint copies every frame, the next commit overwrites
/// the WAL from the start, and no sync ever runs beside a commit's.
/// Why 1 s: a checkpoint costs about one fsync of the database file plus copying the pages
/// changed since the last one (the same few pages, written many times, are copied once).
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a due checkpoint waits for a moment when no request is queued. Past it (a sustained
/// full load), it runs between two batches anyway: the requests queued meanwhile wait for it.
const CHECKPOINT_DEFER_MAX: Duration = Duration::from_secs(1);

/// How long the writer waits before trying again when settling failed (a disk error) while too
/// many rows are staged; it then takes requests again and retries after the next batch.
const SETTLE_RETRY_DELAY: Duration = Duration::from_millis(100);

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
    /// Users whose row the writer keeps now, all their appends settled (see `sqlite/staging.rs`,
    /// at most `KEPT_ROWS_MAX`).
    pub kept_rows: usize,
    /// Notifications settled by the writer's generations so far (not counting those a mark,
    /// delete or retention settled early).
    pub settled: u64,
    /// Settle transactions (chunks) those generations took: a chunk that gave way to a waiting
    /// request leaves the rest of its users to the next one.
    pub settle_chunks: u64,
    /// Generations begun (see `sqlite/staging.rs`).
    pub settle_generations: u64,
    /// WAL checkpoints the writer ran.
    pub checkpoints: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    batches: AtomicU64,
    wal_bytes: AtomicU64,
    settled: AtomicU64,
    settle_chunks: AtomicU64,
    settle_generations: AtomicU64,
    checkpoints: AtomicU64,
    /// Each batch's transaction, commit and fsync included (`/metrics`).
    commit_duration: herald_core::metrics::DurationHistogram,
}

/// The writer thread and its queue. Dropping it stops the thread once the requests already
/// queued are done, and waits for that: closing the queue is what stops the writer, which
/// commits and answers what it holds and what is still queued, settles what is staged, then sees
/// the queue closed and returns, closing the write connection.
pub(super) struct Writer {
    path: PathBuf,
    queue: mpsc::Sender<Request>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    staging: Arc<Mutex<Staging>>,
}

impl Writer {
    /// Starts the writer thread on `conn`, the write connection of the database at `path`, which
    /// has its schema and nothing staged (see `staging::recover`).
    pub(super) fn start(
        conn: Connection,
        path: &Path,
        retention: Retention,
        settling: Settling,
        staging: Arc<Mutex<Staging>>,
    ) -> Result<Self, StoreError> {
        let (queue, requests) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let writer_counters = Arc::clone(&counters);
        let writer_staging = Arc::clone(&staging);
        let thread = std::thread::Builder::new()
            .name("herald-store-writer".into())
            .spawn(move || run_writer(conn, requests, retention, settling, &writer_staging, &writer_counters))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store's writer thread: {e}")))?;
        Ok(Self { path: path.to_owned(), queue, thread: Some(thread), counters, staging })
    }

    /// How long each batch's transaction took so far (see [`herald_core::Store::writer_stats`]).
    pub(super) fn commit_duration(&self) -> herald_core::metrics::HistogramSnapshot {
        self.counters.commit_duration.snapshot()
    }

    pub(super) fn stats(&self) -> WriterStats {
        // One lock for both (a guard in a struct literal lives to the end of the statement).
        let (staged, kept_rows) = {
            let staging = self.staging.lock();
            (staging.rows(), staging.kept_rows())
        };
        WriterStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            queued: WRITE_QUEUE_CAPACITY - self.queue.capacity(),
            wal_bytes: self.counters.wal_bytes.load(Ordering::Relaxed),
            staged,
            kept_rows,
            settled: self.counters.settled.load(Ordering::Relaxed),
            settle_chunks: self.counters.settle_chunks.load(Ordering::Relaxed),
            settle_generations: self.counters.settle_generations.load(Ordering::Relaxed),
            checkpoints: self.counters.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Queues `write` and waits for its result, which comes once its batch has committed.
    ///
    /// If the caller stops waiting (its future is dropped), the write still happens: it may
    /// already be in a transaction. A publisher that retries with its idempotency key is safe.
    pub(super) async fn submit<W: Write>(&self, write: W) -> Result<W::Output, StoreError> {
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(W::request(Job::new(write, reply))) {
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
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Swapping in a dead sender drops the real one, which closes the queue.
        let (dead, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.queue, dead));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "the store's writer thread panicked");
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer thread has stopped".into())
}

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
        counters.settle_chunks.store(settler.chunks, Ordering::Relaxed);
        counters.settle_generations.store(settler.generations, Ordering::Relaxed);
        counters.wal_bytes.fetch_add(take_pages_written(conn) * page_size, Ordering::Relaxed);
    };
    // Whether it settled anything; `None`: the writer must stop.
    let step = |conn: &mut Connection, settler: &mut Settler, bound: ChunkBound<'_>| -> Option<bool> {
        let stepped = match settler.step(conn, staging, bound) {
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
    let mut checkpoints = Checkpoints::new(counters);
    let mut batch = Vec::with_capacity(BATCH_REQUESTS_MAX);
    loop {
        // Too much staged: settle before taking more requests (they wait in the queue).
        while settler.must_settle(staging) {
            let Some(stepped) = step(&mut conn, &mut settler, ChunkBound::whole(settling.chunk_rows)) else {
                return;
            };
            if !stepped {
                std::thread::sleep(SETTLE_RETRY_DELAY);
                break;
            }
        }
        // Free pages to give back: then the writer waits for requests only so long.
        let vacuum_due =
            vacuum_from.is_some_and(|from| Instant::now() >= from) && free_pages_to_give_back(&conn) > 0;
        let idle_timeout =
            [settler.idle_timeout(), vacuum_due.then_some(VACUUM_IDLE), checkpoints.due_in(counters)]
                .into_iter()
                .flatten()
                .min();
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
                // Idle and a checkpoint is due: now, when nothing waits for it.
                if checkpoints.due_in(counters) == Some(Duration::ZERO) {
                    checkpoints.run(&conn, counters);
                    continue;
                }
                // Idle and settling is due: a chunk now, then look at the queue again.
                let bound = ChunkBound {
                    min_rows: MIN_CHUNK_ROWS,
                    max_rows: usize::MAX,
                    request_waiting: &|| !queue.is_empty(),
                };
                let Some(settled) = step(&mut conn, &mut settler, bound) else { return };
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
        let started = std::time::Instant::now();
        let staged = run_batch(&mut conn, &retention, staging, &mut batch);
        counters.commit_duration.observe(started.elapsed());
        settler.staged(staged);
        if batch.iter_mut().any(|request| request.settle_all_due().is_some())
            && let Err(error) = settler.settle_all(&mut conn, staging)
        {
            for job in batch.iter_mut().filter_map(Request::settle_all_due) {
                job.fail(error.clone());
            }
        }
        // Counted before answering, so that whoever got an answer sees its batch counted.
        account(&conn, &settler);
        // Emptied, its allocation kept for the next batch.
        for request in batch.drain(..) {
            request.send();
        }
        // One chunk of settling per batch at most, after answering. It gives way to a waiting
        // request once it has settled as many rows as this batch staged (so settling keeps pace
        // with appends), and at least MIN_CHUNK_ROWS.
        let bound = ChunkBound {
            min_rows: staged.max(MIN_CHUNK_ROWS),
            max_rows: usize::MAX,
            request_waiting: &|| !queue.is_empty(),
        };
        if step(&mut conn, &mut settler, bound).is_none() {
            return;
        }
        if checkpoints.due_in(counters) == Some(Duration::ZERO) && (queue.is_empty() || checkpoints.overdue())
        {
            checkpoints.run(&conn, counters);
        }
    }
    if let Err(error) = settler.settle_all(&mut conn, staging) {
        // Nothing is lost: the next open settles what is still staged.
        tracing::warn!(%error, "could not settle the staged appends on closing");
    }
}

/// When the writer last checkpointed the WAL, and how much it had written by then.
struct Checkpoints {
    last: Instant,
    wal_bytes_at_last: u64,
}

impl Checkpoints {
    fn new(counters: &Counters) -> Self {
        Self { last: Instant::now(), wal_bytes_at_last: counters.wal_bytes.load(Ordering::Relaxed) }
    }

    /// How long until a checkpoint is due (zero: it is); `None` if nothing was written since the
    /// last one.
    fn due_in(&self, counters: &Counters) -> Option<Duration> {
        (counters.wal_bytes.load(Ordering::Relaxed) > self.wal_bytes_at_last)
            .then(|| CHECKPOINT_INTERVAL.saturating_sub(self.last.elapsed()))
    }

    /// Whether a due checkpoint has waited [`CHECKPOINT_DEFER_MAX`] for an empty queue.
    fn overdue(&self) -> bool {
        self.last.elapsed() >= CHECKPOINT_INTERVAL + CHECKPOINT_DEFER_MAX
    }

    /// Copies the WAL back into the database (PASSIVE: what a reader's snapshot still needs
    /// stays, for the next time). SQLite syncs the WAL, then the database file.
    fn run(&mut self, conn: &Connection, counters: &Counters) {
        if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(%error, "WAL checkpoint failed; will retry");
        }
        self.last = Instant::now();
        counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.wal_bytes_at_last = counters.wal_bytes.load(Ordering::Relaxed);
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
///
/// The crate's one unsafe block (the crate denies `unsafe_code` everywhere else): rusqlite has
/// no safe `sqlite3_db_status`, and `WriterStats::wal_bytes` is how the store's write
/// amplification is measured.
#[allow(unsafe_code)]
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

/// Runs `batch` in one transaction and commits once; then every request of the batch holds its
/// result (or the batch's error). The answers are only sent by the caller, after the commit:
/// nothing is acknowledged before it is durable.
///
/// First without savepoints: a savepoint makes SQLite copy every page a request is about to
/// change into a sub-journal, about 5 µs per append (`cargo bench -p herald-store --bench
/// publish`), and requests almost never fail alone. If one does, that transaction is rolled back
/// and the batch runs again with each request in its own savepoint, so the failing request fails
/// alone and the others of its batch still commit.
///
/// Returns how many notifications the batch staged (see `sqlite/staging.rs`); what it changed in
/// `staging` is applied after the commit, before the answers go out.
pub(super) fn run_batch(
    conn: &mut Connection,
    retention: &Retention,
    staging: &Mutex<Staging>,
    batch: &mut [Request],
) -> usize {
    let now = now_ms();
    let committed = match run_transaction(conn, retention, now, staging, batch, Isolation::Batch) {
        Err(Failure::OneRequest) => {
            run_transaction(conn, retention, now, staging, batch, Isolation::EachRequest)
        }
        done => done,
    };
    match committed {
        Ok(staged) => staged,
        Err(failure) => {
            let error = match failure {
                Failure::Transaction(error) => error,
                // Not from `EachRequest`, where a request fails alone; but never a panic here.
                Failure::OneRequest => StoreError::Unavailable("a write of the batch failed".into()),
            };
            for request in batch {
                request.fail(error.clone());
            }
            0
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

/// One transaction for the whole batch, each request keeping its result; the number of
/// notifications staged, if it committed (its changes to `staging` are then applied).
fn run_transaction(
    conn: &mut Connection,
    retention: &Retention,
    now: i64,
    staging: &Mutex<Staging>,
    batch: &mut [Request],
    isolation: Isolation,
) -> Result<usize, Failure> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| {
        let error = db_error(e);
        tracing::error!(%error, "the store cannot start a write transaction");
        Failure::Transaction(error)
    })?;
    let mut writes = StagingWrites::new(staging);
    for request in batch {
        let result = match isolation {
            Isolation::Batch => request.execute(&tx, &mut writes, retention, now),
            Isolation::EachRequest => execute_in_savepoint(&tx, &mut writes, retention, now, request),
        };
        // Some errors (I/O, disk full, out of memory) make SQLite roll back the whole
        // transaction, not just the statement. The requests before this one are gone then,
        // although their savepoints were released: fail them all rather than acknowledge them.
        if tx.is_autocommit() {
            // The cause as it is (`database or disk is full`): what the publisher is told.
            let error = match result {
                Err(error) => error,
                Ok(()) => StoreError::Unavailable("the write transaction was rolled back".into()),
            };
            tracing::error!(%error, "the store lost a batch of writes (rolled back)");
            return Err(Failure::Transaction(error));
        }
        if isolation == Isolation::Batch && result.is_err() {
            // Dropping the transaction rolls it back.
            return Err(Failure::OneRequest);
        }
    }
    tx.commit().map_err(|e| {
        let error = db_error(e);
        tracing::error!(%error, "the store cannot commit a batch of writes");
        Failure::Transaction(error)
    })?;
    Ok(writes.commit())
}

/// Runs one request inside a savepoint: released if it succeeds, rolled back if it fails, so a
/// failing request leaves no trace and takes nothing else of its batch down. Returns the
/// request's error, if it failed.
fn execute_in_savepoint(
    tx: &rusqlite::Transaction<'_>,
    writes: &mut StagingWrites<'_>,
    retention: &Retention,
    now: i64,
    request: &mut Request,
) -> Result<(), StoreError> {
    // The request fails with `error`, which the batch is told too.
    let fail = |request: &mut Request, error: StoreError| {
        request.fail(error.clone());
        Err(error)
    };
    // `Transaction::savepoint` needs `&mut`; the SQL is the same.
    if let Err(e) = tx.execute_batch("SAVEPOINT request") {
        return fail(request, db_error(e));
    }
    // What the request changes in `staging` is rolled back with it.
    let before = writes.overlay().clone();
    let result = request.execute(tx, writes, retention, now);
    let end = if result.is_err() { "ROLLBACK TO request; RELEASE request" } else { "RELEASE request" };
    match tx.execute_batch(end) {
        Ok(()) if result.is_ok() => result,
        Ok(()) => {
            writes.restore(before);
            result
        }
        Err(e) => {
            writes.restore(before);
            fail(request, db_error(e))
        }
    }
}
