//! [`PostgresStore`]: each user's log in PostgreSQL, shared by every node of a cluster.
//!
//! # How it works
//! - **Seqs are assigned in the database**, in the append's statement: each user's
//!   `herald_users` row holds its `last_seq` and its inbox counts, and an append adds to them
//!   (an upsert that locks the row) and inserts its notifications with the seqs it got. Whichever node appends,
//!   two appends to one user take that row one after the other, so seqs are gap-free and never
//!   reused; appends to other users do not wait on each other.
//! - **Group commit** (`postgres/writer.rs`): appends queue for one writer task per store, which
//!   runs whatever is waiting (up to [`BATCH_REQUESTS_MAX`], and under load what the runtime
//!   is about to queue: [`GATHER_ROUNDS_MAX`]) as one commit (one set-based statement over
//!   arrays whatever the batch's size; a transaction of a few when it has idempotency keys) and
//!   answers each once it has committed. The queue is bounded ([`WRITE_QUEUE_CAPACITY`]).
//! - **Other writes** (inbox marks and deletes, receipts, revocations, retention) are one
//!   transaction each on a pooled connection, and take their user's row first, so that every
//!   writer of a user's notifications holds that lock (see `postgres/writes.rs` for the order of
//!   locks that keeps nodes from deadlocking). Writes of a user's listens are one transaction
//!   each too, under an advisory lock of the user's listens, so that two nodes listening for one
//!   user at once cannot both pass its bounds.
//! - **Topic appends** (durable topic events) are one transaction each too: the key claimed,
//!   then the topic's `herald_topic_heads` row upserted (`last_tseq + 1 … RETURNING`, which
//!   locks it until the commit) and the event inserted in one statement, `topic_max_events`
//!   applied and the receipt written. The head row is what makes a topic's tseqs gap-free and
//!   never reused whatever node appends (see [`SCHEMA_V3`]).
//! - **Fan-out jobs** (`herald_jobs`, see [`SCHEMA_V4`]): a save is one upsert (`ON CONFLICT DO
//!   UPDATE`), a read one statement; retention forgets the finished ones with their chunks' keys.
//! - **Reads** are one statement each, so a page and its head, or a page and its counts, come
//!   from one snapshot. Inbox counts are the user's row: O(1).
//! - **Retention** runs chunk by chunk under an advisory lock taken with `pg_try_…`: one node
//!   prunes at a time, the others skip their turn.
//! - **The epoch** ([`Store::epoch`], and each [`LogHead`](herald_core::LogHead)'s) names the
//!   history the seqs belong to: a random id made with the schema, PostgreSQL's system id and its
//!   WAL timeline, read by every new connection. After a failover to a replica or a restore it
//!   is different, and clients resuming with seqs of the old one are given a `reset` (their seqs
//!   may have been given out again). See `schema::read_epoch`, and `reads::head_from` for why a
//!   head's epoch is taken after the head is read.
//! - **PostgreSQL down**: every operation fails with [`StoreError::Unavailable`] within
//!   [`OPERATION_TIMEOUT`] and never hangs; the pool makes new connections by itself once the
//!   database answers again. See `postgres/pool.rs` for each timeout.
//!
//! Retention only removes prefixes of a log: what is left holds seqs `pruned_through + 1 ..=
//! last_seq`, minus those deleted on purpose (inbox deletes).
//!
//! # Layout
//! In reading order, each module using only those above it:
//! - `sql`: the store's errors (driver, pool) as [`StoreError`]s, seqs in and out of `bigint`.
//! - `schema`: the tables of each schema version, the migrations (under an advisory lock), the
//!   epoch.
//! - `pool`: connection settings and their timeouts, the bounded pool, `Pool::run` (a bounded
//!   time per operation, retries after deadlocks).
//! - `reads`: heads, log pages, inbox pages and counts, revocations, listens, topic logs, jobs:
//!   one statement each.
//! - `writes`: what each write does in SQL (a batch of appends, marks, deletes, retention
//!   chunks, listens), and the order locks are taken in.
//! - `presence`: presence reported to the app (webhooks): a change, a heartbeat, a dead
//!   node's sessions; one user's rows per transaction.
//! - `writer`: the writer task and its bounded queue (group commit).
//! - `operations`: [`Store`] for [`PostgresStore`].
//! - `testing` (tests, or feature `test-support`): the test database, schemas of one's own, a
//!   private PostgreSQL server to stop and start.

mod operations;
mod pool;
mod presence;
mod reads;
mod schema;
mod sql;
mod tls;
mod writer;
mod writes;

use std::sync::Arc;

#[cfg(doc)]
use herald_core::Store;
use herald_core::{Retention, StoreError};

pub use pool::{
    CONNECT_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT, OPERATION_TIMEOUT, POOL_CONNECTIONS_MAX, POOL_WAIT_TIMEOUT,
    PostgresOptions, RETRIES_MAX, STATEMENT_TIMEOUT, TCP_USER_TIMEOUT,
};
pub use schema::{SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_VERSION};
pub use writer::{BATCH_REQUESTS_MAX, GATHER_ROUNDS_MAX, WRITE_QUEUE_CAPACITY, WriterStats};
pub use writes::PRUNE_CHUNK_ROWS;

use pool::Pool;
use sql::Error;
use writer::Writer;

/// Each user's durable log in PostgreSQL. See the module docs for the design.
///
/// Dropping the store closes the writer's queue (the task answers what is queued, then ends)
/// and the pool.
pub struct PostgresStore {
    place: String,
    retention: Retention,
    writer: Writer,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("place", &self.place)
            .field("retention", &self.retention)
            .field("epoch", &self.pool.epoch())
            .field("writer", &self.writer_stats())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `options`, creates its schema (if named and missing) and
    /// Herald's tables or upgrades them (under an advisory lock: several nodes may open at once),
    /// reads the epoch, and starts the writer task on the current tokio runtime.
    ///
    /// Fails with [`StoreError::Unavailable`] if the database cannot be reached within
    /// [`OPERATION_TIMEOUT`] or was migrated by a newer Herald.
    pub async fn open(options: PostgresOptions, retention: Retention) -> Result<Self, StoreError> {
        let place = options.place();
        let context = |e: Error| match e.into_store() {
            StoreError::Unavailable(e) => {
                StoreError::Unavailable(format!("cannot open the store ({place}): {e}"))
            }
            other => other,
        };
        let (pool, mut client) = Pool::connect(&options).await?;
        let opening = async {
            if let Some(schema) = &options.schema {
                // Under a lock: two `CREATE SCHEMA IF NOT EXISTS` at once can both try to create it.
                let tx = client.transaction().await?;
                tx.execute(
                    "SELECT pg_advisory_xact_lock(hashtext('herald-create-schema:' || $1))",
                    &[schema],
                )
                .await?;
                // The name is checked (letters, digits, `_`): quoting it keeps its case.
                tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")).await?;
                tx.commit().await?;
            }
            schema::migrate(&mut client, &place).await?;
            schema::read_epoch(&client).await
        };
        let epoch = tokio::time::timeout(OPERATION_TIMEOUT * 6, opening)
            .await
            .map_err(|_| StoreError::Unavailable(format!("cannot open the store ({place}): timed out")))?
            .map_err(context)?;
        pool.set_epoch(epoch);
        drop(client);
        let pool = Arc::new(pool);
        let writer = Writer::start(Arc::clone(&pool), retention);
        Ok(Self { place, retention, writer, pool })
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(test)]
mod tests;
