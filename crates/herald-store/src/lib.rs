//! Herald's stores: implementations of [`herald_core::Store`], each user's durable log of
//! notifications, each topic's log of durable events, the idempotency records of publishes, the
//! topics users listen to kept in the store, and fan-out jobs.
//!
//! - [`SqliteStore`] is the store of a single node (`herald serve`): one SQLite file in WAL mode,
//!   written by one thread that commits concurrent publishes together (group commit), read
//!   through a small pool of read-only connections. An acknowledged append survives `kill -9`
//!   and power loss.
//! - [`MemoryStore`] keeps everything in memory (`herald serve --memory`, tests).
//! - [`PostgresStore`] is the store of a cluster: every node's log in one PostgreSQL database,
//!   seqs assigned in the database, concurrent appends of a node committed together.
//!
//! All keep the same contract (see [`herald_core::store`]), checked by one shared test suite.
//! In all, retention only ever removes a prefix of
//! a user's log, so what is left holds seqs `pruned_through + 1 ..= last_seq`, but for those
//! deleted on purpose (inbox deletes); and all keep each user's inbox counts next to the log,
//! updated with every change, so that reading them is O(1). Each has an epoch
//! ([`herald_core::Epoch`]): random per [`MemoryStore`], random per database and kept in it for
//! [`SqliteStore`] (renewed by [`SqliteStore::renew_epoch`] after an older copy is put back),
//! made of the schema's id and the cluster's identity and timeline for [`PostgresStore`].
//!
//! # Layout
//! In reading order:
//! - [`lock`]: [`LockFile`], the exclusive lock that keeps a database (and `herald serve`'s data
//!   dir) to one process.
//! - [`memory`]: [`MemoryStore`], per-user logs behind one mutex.
//! - [`sqlite`]: [`SqliteStore`], split by job, bottom up (its own `# Layout` says more):
//!   - `sqlite/sql.rs`: SQLite's errors as [`StoreError`]s, seqs as
//!     SQLite integers;
//!   - `sqlite/schema.rs`: the tables of each schema version, the migrations, the epoch;
//!   - `sqlite/connection.rs`: the lock file, opening the file and its pragmas, the checkpointer
//!     thread, the read pool;
//!   - `sqlite/reads.rs`: what a read transaction does (heads, log and inbox pages, counts,
//!     revocations, listens);
//!   - `sqlite/staging.rs`: staged appends and how they settle into the users' logs;
//!   - `sqlite/request.rs`: the writer's requests, each write with its typed reply;
//!   - `sqlite/writes.rs`: what each request does in SQL;
//!   - `sqlite/writer.rs`: the writer thread and its queue (batches, group commit, savepoints,
//!     settling and vacuum between batches);
//!   - `sqlite/operations.rs`: `Store` for `SqliteStore`, delegating to the reads and the writer.
//! - [`postgres`]: [`PostgresStore`], split by job, bottom up (its own `# Layout` says more):
//!   - `postgres/sql.rs`: driver and pool errors as `StoreError`s, seqs as `bigint`;
//!   - `postgres/schema.rs`: the tables, the migrations under an advisory lock, the epoch;
//!   - `postgres/pool.rs`: connection settings and timeouts, the bounded pool, bounded operations;
//!   - `postgres/reads.rs`: heads, log and inbox pages, counts, revocations, listens (one
//!     statement each);
//!   - `postgres/writes.rs`: each write in SQL, and the one order of locks;
//!   - `postgres/writer.rs`: the writer task and its bounded queue (group commit);
//!   - `postgres/operations.rs`: `Store` for `PostgresStore`;
//!   - `postgres/testing.rs` (tests, or feature `test-support`): the test database, schemas of
//!     one's own, a private PostgreSQL server to stop and start.
//! - `conformance` (tests, or feature `conformance`): the test suite every store must pass.

// One unsafe block, allowed where it is (`sqlite::writer::take_pages_written`: rusqlite has no
// safe `sqlite3_db_status`); `forbid` would not let it be allowed there.
#![deny(unsafe_code)]

pub mod lock;
pub mod memory;
pub mod postgres;
pub mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use lock::{LockError, LockFile};
pub use memory::MemoryStore;
pub use postgres::{PostgresOptions, PostgresStore};
pub use sqlite::{Settling, SqliteStore, WriterStats};

use std::time::Duration;

use herald_core::{FanoutJob, Receipt, StoreError};

/// `d` in milliseconds, as SQL and `created_at_ms` count time; saturates instead of wrapping, so
/// an absurd retention means "keep forever" rather than "delete everything".
fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now_ms - d`, saturating: the oldest timestamp still inside a window of length `d`.
fn cutoff_ms(now_ms: i64, d: Duration) -> i64 {
    now_ms.saturating_sub(duration_ms(d))
}

/// A publish's receipt as the JSON both SQL stores keep beside its idempotency key.
fn receipt_json(receipt: &Receipt) -> Result<String, StoreError> {
    serde_json::to_string(receipt)
        .map_err(|e| StoreError::Corrupt(format!("a receipt does not serialize: {e}")))
}

/// A fan-out job as the JSON both SQL stores keep in its row (the whole job; the row's other
/// columns are copies of the fields they are queried by). Text, not PostgreSQL's `jsonb`: the
/// job's `data` must read back byte for byte, as the notifications it becomes are stored.
fn job_json(job: &FanoutJob) -> Result<String, StoreError> {
    serde_json::to_string(job)
        .map_err(|e| StoreError::Corrupt(format!("fan-out job {:?} does not serialize: {e}", job.id)))
}

/// A push subscription or delivery as the JSON both SQL stores keep in its row (the whole
/// value; the row's other columns are copies of the fields they are queried by).
fn push_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("a push record does not serialize: {e}")))
}

/// The push subscription or delivery a row's JSON holds ([`push_json`]).
fn push_from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a push record in the store: {e}")))
}

/// The job a row's JSON holds ([`job_json`]).
fn job_from_json(json: &str) -> Result<FanoutJob, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a fan-out job in the store: {e}")))
}

/// A claim's lease in ms, as the stores add it to `now_ms` (saturating: a lease of centuries is
/// "until released").
fn lease_ms(lease: std::time::Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}
