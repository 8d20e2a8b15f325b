//! Where the store's values and errors meet PostgreSQL's: [`Error`], what a query, the pool or
//! the store itself can fail with, and how each maps onto a [`StoreError`]; seqs in and out of
//! `bigint`; the optional session of a revocation or a listen in and out of a `text NOT NULL`
//! column. The leaf every other module of the store uses; no SQL statement lives here.

use herald_core::{Seq, SessionId, StoreError};
use tokio_postgres::error::SqlState;

/// What an operation of the store can fail with before it becomes a [`StoreError`] (`?` turns
/// a driver or pool error into one). Kept apart from `StoreError` so that [`Error::is_retryable`]
/// can still see the SQLSTATE.
#[derive(Debug)]
pub(super) enum Error {
    Db(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Db(e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Error::Pool(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

impl Error {
    /// A deadlock or serialization failure: PostgreSQL rolled the transaction back and the
    /// same transaction, run again, will most likely pass (see `pool::Pool::run`).
    pub(super) fn is_retryable(&self) -> bool {
        matches!(self, Error::Db(e) if e.code().is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED
            || *c == SqlState::T_R_SERIALIZATION_FAILURE))
    }

    /// Whether the database could not be reached or the connection broke (rather than a
    /// statement failing on a working connection): a batch that failed so is not tried again
    /// request by request.
    pub(super) fn is_connection(&self) -> bool {
        match self {
            Error::Pool(_) => true,
            Error::Db(e) => {
                e.is_closed()
                    || e.code().is_none_or(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
            }
            Error::Store(StoreError::Unavailable(_)) => true,
            Error::Store(_) => false,
        }
    }

    /// The store's error: the database unreachable, a pool wait that timed out, a statement
    /// cancelled by `statement_timeout`, … → `Unavailable`; too many connections → `Overloaded`;
    /// a row that does not decode, or a value out of range → `Corrupt`.
    pub(super) fn into_store(self) -> StoreError {
        self.to_store()
    }

    /// [`Error::into_store`], keeping `self` (for the store's health, which notes the error
    /// and passes it on).
    pub(super) fn to_store(&self) -> StoreError {
        match self {
            Error::Store(e) => e.clone(),
            Error::Pool(deadpool_postgres::PoolError::Timeout(kind)) => StoreError::Unavailable(format!(
                "no PostgreSQL connection within the pool's {} timeout",
                match kind {
                    deadpool_postgres::TimeoutType::Wait => "wait",
                    deadpool_postgres::TimeoutType::Create => "connect",
                    deadpool_postgres::TimeoutType::Recycle => "recycle",
                }
            )),
            Error::Pool(deadpool_postgres::PoolError::Backend(e)) => db_error(e),
            // A new connection whose first statement (reading the epoch) failed: the driver's
            // error says why, the hook's own text only "db error".
            Error::Pool(deadpool_postgres::PoolError::PostCreateHook(
                deadpool_postgres::HookError::Backend(e),
            )) => db_error(e),
            Error::Pool(e) => StoreError::Unavailable(format!("PostgreSQL pool: {e}")),
            Error::Db(e) => db_error(e),
        }
    }
}

/// One driver error as a `StoreError`, with PostgreSQL's own message (and its detail) as the
/// cause.
fn db_error(e: &tokio_postgres::Error) -> StoreError {
    let message = match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{}: {detail}", db.message()),
            None => db.message().to_owned(),
        },
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    match e.code() {
        Some(c) if *c == SqlState::TOO_MANY_CONNECTIONS => StoreError::Overloaded(message),
        Some(c)
            if c.code().starts_with("22")
                || *c == SqlState::DATA_CORRUPTED
                || *c == SqlState::INDEX_CORRUPTED =>
        {
            StoreError::Corrupt(message)
        }
        _ => StoreError::Unavailable(format!("PostgreSQL: {message}")),
    }
}

/// A seq as PostgreSQL stores it (`bigint` is i64). Seqs never come near 2^63; a larger one
/// (only a bogus `after` or `before` could be) saturates, which reads as "after everything".
pub(super) fn sql_seq(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn seq_from_sql(seq: i64) -> Result<Seq, StoreError> {
    Seq::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative seq {seq} in the store")))
}

/// A count kept in `users` (never negative: see `InboxCounts::apply`).
pub(super) fn count_from_sql(n: i64) -> Result<u64, StoreError> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative inbox count {n} in the store")))
}

/// The `session` column of `herald_revocations` and `herald_topic_listens`: the session's id, or
/// `''` for "all sessions" (a revocation) and user scope (a listen). No session is mistaken for
/// it: a session id is never empty (`SessionId::new` refuses it).
pub(super) fn sql_session(session: Option<&SessionId>) -> &str {
    session.map_or("", SessionId::as_str)
}

/// The session of a `session` column ([`sql_session`]); `table` names it in the error.
pub(super) fn session_from_sql(session: &str, table: &str) -> Result<Option<SessionId>, StoreError> {
    match session {
        "" => Ok(None),
        id => SessionId::new(id)
            .map(Some)
            .map_err(|e| StoreError::Corrupt(format!("session id in {table}: {e}"))),
    }
}
