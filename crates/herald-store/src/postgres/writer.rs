//! Group commit: the writer task and its queue. [`Writer::submit`] queues an append (bounded,
//! [`WRITE_QUEUE_CAPACITY`]); the task takes what is waiting as one batch (up to
//! [`BATCH_REQUESTS_MAX`]), stores it on one pooled connection (`writes::append_batch`: one
//! statement committed by itself, or a transaction when the batch has idempotency keys), and only
//! then answers. Concurrent publishes on a node thus share one commit and one WAL flush, and the
//! next batch is taken while nothing else runs on the writer. Should a batch fail on a working connection (one request's bad data), each of
//! its requests runs again alone, so that it fails alone; if the database cannot be reached,
//! every request of the batch fails (`Unavailable`) at once.
//!
//! Only appends are batched: they are most of the writes, and their transactions touch only
//! their users' rows. Other writes (marks, deletes, receipts, revocations, retention) run on
//! pooled connections directly, each in its own transaction (see `operations`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use herald_core::notification::now_ms;
use herald_core::{Appended, Retention, StoreError};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};

use super::pool::{OPERATION_TIMEOUT, Pool, timed_out};
use super::sql::Error;
use super::writes::{AppendRequest, append_batch};

/// Appends waiting for the writer task. When the queue is full, an append waits for a slot
/// within its [`OPERATION_TIMEOUT`] and then fails with [`StoreError::Overloaded`]: PostgreSQL
/// is not keeping up, and publishers get a retryable error instead of piling up without bound.
/// 4,096 = 8 full batches: a backlog the database clears in well under a second when healthy.
pub const WRITE_QUEUE_CAPACITY: usize = 4_096;

/// Appends the writer commits together at most. At the bound the rest stay queued for the next
/// batch: one transaction (its row locks, and the latency of the appends it answers) stays
/// bounded.
pub const BATCH_REQUESTS_MAX: usize = 512;

/// How many times at most the writer lets the runtime run before it commits a batch taken under
/// load, to gather the appends of requests already on their way (see `run_writer`). At the bound
/// the batch is committed as it is: a steady stream of appends cannot hold it back.
pub const GATHER_ROUNDS_MAX: usize = 8;

/// What the writer has done so far, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Appends taken off the queue.
    pub requests: u64,
    /// Batches run, one transaction each. `requests / batches` is the group-commit factor.
    pub batches: u64,
    /// Appends waiting in the queue now.
    pub queued: usize,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    batches: AtomicU64,
    /// Each batch's transaction, commit included (`/metrics`).
    commit_duration: herald_core::metrics::DurationHistogram,
}

struct Job {
    request: AppendRequest,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The writer task's queue. Dropping it closes the queue: the task answers what is queued, then
/// ends.
pub(super) struct Writer {
    queue: mpsc::Sender<Job>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer task (on the current tokio runtime).
    pub(super) fn start(pool: Arc<Pool>, retention: Retention) -> Self {
        let (queue, jobs) = mpsc::channel(WRITE_QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        tokio::spawn(run_writer(pool, retention, jobs, Arc::clone(&counters)));
        Self { queue, counters }
    }

    /// How long each batch's transaction took so far (see [`herald_core::Store::writer_stats`]).
    pub(super) fn commit_duration(&self) -> herald_core::metrics::HistogramSnapshot {
        self.counters.commit_duration.snapshot()
    }

    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            queued: WRITE_QUEUE_CAPACITY - self.queue.capacity(),
        }
    }

    /// Queues `request` and waits for its result, which comes once its batch has committed; all
    /// of it within [`OPERATION_TIMEOUT`]. A caller that stops waiting (timed out, or its future
    /// dropped) before its batch started is skipped: its append is not stored. One that stops
    /// waiting later may find it stored: a publisher that retries with its idempotency key is
    /// safe.
    pub(super) async fn submit(&self, request: AppendRequest) -> Result<Appended, StoreError> {
        let (reply, answer) = oneshot::channel();
        let waited = tokio::time::timeout(OPERATION_TIMEOUT, async {
            match self.queue.try_send(Job { request, reply }) {
                Ok(()) => {}
                Err(TrySendError::Closed(_)) => return Err(writer_stopped()),
                Err(TrySendError::Full(job)) => {
                    if self.queue.send(job).await.is_err() {
                        return Err(writer_stopped());
                    }
                }
            }
            answer.await.map_err(|_| writer_stopped())?
        })
        .await;
        match waited {
            Ok(done) => done,
            Err(_) if self.queue.capacity() == 0 => Err(StoreError::Overloaded(format!(
                "{WRITE_QUEUE_CAPACITY} appends were waiting for PostgreSQL for {OPERATION_TIMEOUT:?}"
            ))),
            Err(_) => Err(timed_out()),
        }
    }
}

fn writer_stopped() -> StoreError {
    StoreError::Unavailable("the store's writer task has stopped".into())
}

/// The writer task: a batch at a time until the queue is closed (the store dropped).
async fn run_writer(
    pool: Arc<Pool>,
    retention: Retention,
    mut jobs: mpsc::Receiver<Job>,
    counters: Arc<Counters>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_REQUESTS_MAX);
    let mut last_batch = 0;
    while let Some(first) = jobs.recv().await {
        batch.push(first);
        // Group commit: whatever queued up while the previous batch ran joins this one.
        take_queued(&mut jobs, &mut batch);
        // Under load (the last batch was not a lone append), the appends of requests the
        // runtime is about to run join too: each round lets every task that is ready run (and
        // the runtime read its sockets) before the writer looks again; the rounds stop at the
        // first that brings nothing. A commit costs PostgreSQL about 200 µs of CPU whatever its
        // size (the WAL flush and the answer: measured in BENCHMARKS.md), so on a node of a
        // busy cluster fewer, larger batches are most of what an append costs. No timer: a
        // round takes microseconds, and a lone append is still committed at once.
        if last_batch > 1 {
            for _ in 0..GATHER_ROUNDS_MAX {
                let before = batch.len();
                if before >= BATCH_REQUESTS_MAX {
                    break;
                }
                tokio::task::yield_now().await;
                take_queued(&mut jobs, &mut batch);
                if batch.len() == before {
                    break;
                }
            }
        }
        last_batch = batch.len();
        // Whoever gave up waiting has been answered (timed out): not stored.
        batch.retain(|job| !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        counters.requests.fetch_add(batch.len() as u64, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let requests: Vec<&AppendRequest> = batch.iter().map(|job| &job.request).collect();
        let started = std::time::Instant::now();
        let committed = commit(&pool, &retention, &requests).await;
        counters.commit_duration.observe(started.elapsed());
        match committed {
            Ok(answers) => {
                debug_assert_eq!(answers.len(), batch.len(), "one answer per request");
                for (job, answer) in batch.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(error) if batch.len() == 1 || error.is_connection() => {
                let error = error.into_store();
                tracing::warn!(%error, appends = batch.len(), "a batch of appends failed");
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
            Err(error) => {
                tracing::warn!(error = ?error, appends = batch.len(), "a batch of appends failed; each alone again");
                for job in batch.drain(..) {
                    let answer = commit(&pool, &retention, &[&job.request]).await;
                    let answer = answer.map(|mut one| one.pop().expect("one answer for one request"));
                    let _ = job.reply.send(answer.map_err(Error::into_store));
                }
            }
        }
    }
}

/// Moves what is queued into `batch`, up to [`BATCH_REQUESTS_MAX`].
fn take_queued(jobs: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < BATCH_REQUESTS_MAX {
        match jobs.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Runs `requests` as one batch and commits it (again after a deadlock), within
/// [`OPERATION_TIMEOUT`].
async fn commit(
    pool: &Pool,
    retention: &Retention,
    requests: &[&AppendRequest],
) -> Result<Vec<Appended>, Error> {
    pool.run_raw(move || async move {
        let mut client = pool.client().await?;
        append_batch(&mut client, retention, now_ms(), requests).await
    })
    .await
}
