//! Where the store's values and errors meet SQLite's: [`db_error`] maps every SQLite error onto
//! a [`StoreError`], and seqs go in and out of SQLite's `INTEGER` (an `i64`) through
//! [`sql_seq`] and [`seq_from_sql`], and the optional session of a revocation or a listen in
//! and out of a `TEXT NOT NULL` column through [`sql_session`] and [`session_from_sql`]. The
//! leaf every other module of the store uses; no SQL statement lives here.

use herald_core::{Seq, SessionId, StoreError};

/// Maps SQLite's errors onto the store's: busy → `Overloaded` (retry later), damaged file or
/// undecodable row → `Corrupt`, the rest (I/O, disk full, constraint) → `Unavailable`.
pub(super) fn db_error(e: rusqlite::Error) -> StoreError {
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
pub(super) fn sql_seq(seq: Seq) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(super) fn seq_from_sql(seq: i64) -> Result<Seq, StoreError> {
    Seq::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative seq {seq} in the store")))
}

/// The `session` column of `revocations` and `topic_listens`: the session's id, or `''` for
/// "all sessions" (a revocation) and user scope (a listen). No session is mistaken for it: a
/// session id is never empty (`SessionId::new` refuses it).
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
