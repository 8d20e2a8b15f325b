//! The schema and its migrations: the tables and indexes of each schema version, each with why
//! it is so, and [`migrate`], which creates the schema in a new file and upgrades an older one in
//! place when the store opens (with [`use_incremental_vacuum`], the one-time conversion of a file
//! made before Herald gave space back), and the database's epoch ([`read_epoch`],
//! [`renew_epoch`]). The queries that walk these tables live with the reads and the writes;
//! opening the file and its pragmas, in `connection`.

use std::path::Path;

use herald_core::{Epoch, StoreError};
use rusqlite::{Connection, TransactionBehavior};

use super::sql::db_error;

/// The schema this code writes, kept in `PRAGMA user_version`. A database with a higher version
/// was written by a newer Herald: opening it fails rather than guess.
pub const SCHEMA_VERSION: i32 = 12;

/// Schema version 1. `notifications` is `WITHOUT ROWID`, clustered by (user, seq): a replay is
/// one range scan. A new database gets it, then [`SCHEMA_V2`], like an old one.
pub(super) const SCHEMA_V1: &str = "
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

/// Version 5 → 6: the database's **epoch** (see `herald_core::Epoch`), in a one-row `meta`
/// table: 128 random bits (SQLite's `randomblob`, from the OS's randomness) as 32 hex digits,
/// made with the database, or when an older one is upgraded. A seq is meaningful only with it:
/// another database's seqs (a file restored from another server's backup, a new file in place
/// of a lost one) are seqs of another epoch, and clients resuming with them get a `reset`.
///
/// A copy of the file is the same database and keeps the epoch. So an operator who puts back
/// an older copy of this very database (a backup taken before appends it lacks) must renew it
/// before serving it (`herald reset-epoch --data-dir DIR`, `SqliteStore::renew_epoch`): otherwise the seqs
/// given out after the copy was taken are given out again, to other notifications, and clients
/// that saw the first ones resume past the second ones without a word.
pub const SCHEMA_V6: &str = "
CREATE TABLE meta (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch TEXT NOT NULL
);
INSERT INTO meta (id, epoch) VALUES (1, lower(hex(randomblob(16))));
";

/// Version 6 → 7: **listens kept in the store** (see `herald_core::StoredListen`): a user's
/// topics at user scope (every tab of the user: the "follow" case) and at each session's scope.
/// One row per user, scope and topic; `session` is `''` for user scope, which no session can
/// be mistaken for (a session id is never empty), and which sorts first, as user scope does in
/// `Store::listens` and `Store::topic_listeners`.
///
/// - The primary key (user, session, topic), `WITHOUT ROWID`, clusters a user's listens by
///   scope: a scope's topics, sorted, are one range scan; so are all of a user's (`listens`), and
///   counting a scope against its bound, or a user's sessions against theirs, reads only that
///   user's rows.
/// - `topic_listens_by_topic` (topic, user, session) answers who listens to a topic, in the
///   order of its keyset pages (`after` a (user, session), `LIMIT`): a range of the index from
///   where the last page ended, never a sort.
/// - `listened_at` (ms): for session scope, when the session last listened, set on every row
///   of the session by each of its listens (so that unlistening one topic does not make the
///   session look older): the session whose rows have the oldest one goes first when a user
///   has too many sessions (`ListenBounds::sessions_max`). For user scope, when the topic was
///   listened to; nothing reads it.
pub const SCHEMA_V7: &str = "
CREATE TABLE topic_listens (
    user        TEXT NOT NULL,
    session     TEXT NOT NULL DEFAULT '',
    topic       TEXT NOT NULL,
    listened_at INTEGER NOT NULL,
    PRIMARY KEY (user, session, topic)
) WITHOUT ROWID;
CREATE INDEX topic_listens_by_topic ON topic_listens (topic, user, session);
";

/// Version 7 → 8: **durable topic logs** (see `Store::append_topic`): each topic's events with
/// their `tseq`, as `notifications` holds each user's with their seq.
///
/// - `topic_heads`: one row per topic ever published durably, its `last_tseq` and
///   `pruned_through`. The row stays when retention empties the topic's log, so a tseq is never
///   given out twice (`MAX(tseq)` of an emptied log would start again at 1). An append reads and
///   bumps it in the writer's transaction: one writer, so tseqs never race.
/// - `topic_log`: clustered by (topic, tseq), `WITHOUT ROWID`, so a replay of a topic
///   (`read_topic_after`) is one range scan and an append writes the end of its topic's range.
///   Unlike a user's notifications, events are inserted here directly, not staged: a topic
///   event is one row of one topic (no per-user b-tree pages to spread over), and topics are
///   few next to users.
/// - `topic_log_by_created_at`: retention by age (`Retention::topic_max_age`) finds the
///   expired events in bounded chunks, as `notifications_by_created_at` does for users' logs.
///   `Retention::topic_max_events` needs no index: the append deletes a range of the primary
///   key.
pub const SCHEMA_V8: &str = "
CREATE TABLE topic_heads (
    topic          TEXT PRIMARY KEY,
    last_tseq      INTEGER NOT NULL,
    pruned_through INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE topic_log (
    topic         TEXT NOT NULL,
    tseq          INTEGER NOT NULL,
    type          TEXT NOT NULL,
    data          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    except_user   TEXT,
    except_client TEXT,
    PRIMARY KEY (topic, tseq)
) WITHOUT ROWID;
CREATE INDEX topic_log_by_created_at ON topic_log (created_at);
";

/// Version 8 → 9: **fan-out jobs** (see `Store::save_job` and `herald_core::jobs`).
///
/// - `jobs`: one row per job, the whole [`FanoutJob`](herald_core::FanoutJob) as JSON in `job`
///   (read and written whole: a job is saved after each chunk), with copies of the fields it is
///   queried by in `id`, `created_at` and `finished_at` (NULL while it runs). A rowid table, not
///   `WITHOUT ROWID`: `job` holds the publish's data, up to `Limits::publish_bytes_max`, and
///   large rows belong outside a clustered b-tree. Jobs are few: at most
///   `JOBS_UNFINISHED_MAX` running, and the finished ones of one idempotency window.
/// - `jobs_unfinished`: the running jobs in `unfinished_jobs`' order (oldest first, then by id),
///   so that the query at startup reads `limit` entries of a small partial index and sorts
///   nothing, however many finished jobs the window holds.
/// - `jobs_by_finished_at`: retention finds the finished jobs past the window (the window of
///   their chunks' idempotency keys) in bounded chunks, as it does for keys.
pub const SCHEMA_V9: &str = "
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER,
    job         TEXT NOT NULL
);
CREATE INDEX jobs_unfinished ON jobs (created_at, id) WHERE finished_at IS NULL;
CREATE INDEX jobs_by_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
";

/// Version 9 → 10: **Web Push** (see `herald_core::push`).
///
/// - `push_subscriptions`: one row per browser subscription, keyed by its id (made from its
///   endpoint), the whole [`PushSubscription`](herald_core::PushSubscription) as JSON in
///   `subscription`, with copies of what it is queried by (`user`, `session`, `created_at`).
///   `push_subscriptions_by_user` is a user's subscriptions oldest first: the publisher API's
///   list, and the rows a new subscription's bounds are checked on (at most the bound plus one).
/// - `push_outbox`: the pushes waiting to be sent, one row per notification and subscription
///   (the id), the whole [`PushDelivery`](herald_core::PushDelivery) as JSON in `delivery`, with
///   its `due_at` copied for `push_outbox_by_due_at`, the sender's scan of what is due.
pub const SCHEMA_V10: &str = "
CREATE TABLE push_subscriptions (
    id           TEXT PRIMARY KEY,
    user         TEXT NOT NULL,
    session      TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    subscription TEXT NOT NULL
);
CREATE INDEX push_subscriptions_by_user ON push_subscriptions (user, created_at, id);
CREATE TABLE push_outbox (
    id       TEXT PRIMARY KEY,
    due_at   INTEGER NOT NULL,
    delivery TEXT NOT NULL
);
CREATE INDEX push_outbox_by_due_at ON push_outbox (due_at, id);
";

/// Version 10 → 11: presence reported to the app (herald-core `presence`, webhooks).
/// - `presence_online`: one row per (user, session, node) reported online, keyed so that a
///   user's rows and a session's are ranges of the key (the counts a change needs); an index
///   by node for releasing a dead node's sessions in chunks.
/// - `presence_seqs`: each user's last `user_seq`. Kept when the user goes offline (a seq is
///   never given out twice): one small row per user ever reported online.
/// - `presence_nodes`: each node's last heartbeat (ms), to find dead nodes.
pub const SCHEMA_V11: &str = "
CREATE TABLE presence_online (
    user    TEXT NOT NULL,
    session TEXT NOT NULL,
    node    TEXT NOT NULL,
    PRIMARY KEY (user, session, node)
) WITHOUT ROWID;
CREATE INDEX presence_online_by_node ON presence_online (node);
CREATE TABLE presence_seqs (
    user     TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE presence_nodes (
    node      TEXT PRIMARY KEY,
    last_beat INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Version 11 → 12: **push markers** (see `herald_core::push`, "Why a marker").
/// - `push_pending`: one row per stored notification whose pushes are not in the outbox yet,
///   written by the append in its transaction (only for a user with a row in
///   `push_subscriptions`), removed when its pushes are: keyed by (user, seq), `WITHOUT ROWID`,
///   the [`PushRequest`](herald_core::PushRequest) as JSON in `request`.
///   `push_pending_by_expand_by`: the senders' scan of the markers their publish left.
pub const SCHEMA_V12: &str = "
CREATE TABLE push_pending (
    user      TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    expand_by INTEGER NOT NULL,
    request   TEXT NOT NULL,
    PRIMARY KEY (user, seq)
) WITHOUT ROWID;
CREATE INDEX push_pending_by_expand_by ON push_pending (expand_by);
";

/// Creates the schema in an empty database, upgrades an older one step by step (a new database
/// takes the same steps), and refuses a newer one, or another program's (at `path`). All in one
/// transaction: a failed upgrade leaves the file as it was.
pub(super) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
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
    if version < 6 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 6 (the epoch)");
        }
        tx.execute_batch(SCHEMA_V6).map_err(db_error)?;
    }
    if version < 7 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 7 (listens kept in the store)");
        }
        tx.execute_batch(SCHEMA_V7).map_err(db_error)?;
    }
    if version < 8 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 8 (durable topic logs)");
        }
        tx.execute_batch(SCHEMA_V8).map_err(db_error)?;
    }
    if version < 9 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 9 (fan-out jobs)");
        }
        tx.execute_batch(SCHEMA_V9).map_err(db_error)?;
    }
    if version < 10 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 10 (Web Push)");
        }
        tx.execute_batch(SCHEMA_V10).map_err(db_error)?;
    }
    if version < 11 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 11 (presence reported by webhooks)");
        }
        tx.execute_batch(SCHEMA_V11).map_err(db_error)?;
    }
    if version < 12 {
        if version >= 1 {
            tracing::info!("upgrading the store to schema version 12 (push markers)");
        }
        tx.execute_batch(SCHEMA_V12).map_err(db_error)?;
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
pub(super) fn use_incremental_vacuum(conn: &Connection) -> Result<(), StoreError> {
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

/// The database's epoch (see [`SCHEMA_V6`]), once migrated.
pub(super) fn read_epoch(conn: &Connection) -> Result<Epoch, StoreError> {
    let epoch: String =
        conn.query_row("SELECT epoch FROM meta WHERE id = 1", [], |row| row.get(0)).map_err(db_error)?;
    Ok(Epoch::from(epoch))
}

/// Gives the database a new random epoch and returns it (see [`SCHEMA_V6`] for when an operator
/// must). Clients that resume with a seq of the old one get a `reset`.
pub(super) fn renew_epoch(conn: &Connection) -> Result<Epoch, StoreError> {
    let epoch: String = conn
        .query_row(
            "UPDATE meta SET epoch = lower(hex(randomblob(16))) WHERE id = 1 RETURNING epoch",
            [],
            |row| row.get(0),
        )
        .map_err(db_error)?;
    Ok(Epoch::from(epoch))
}
