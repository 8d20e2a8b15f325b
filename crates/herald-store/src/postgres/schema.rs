//! The schema and its migrations: the tables of each schema version, each with why it is so,
//! and [`migrate`], which creates the schema in an empty database (or schema) and upgrades an
//! older one, under an advisory lock so that several nodes starting at once migrate once; and
//! [`read_epoch`], the database's epoch. The queries that walk these tables live with the
//! reads and the writes; connecting, in `pool`.
//!
//! Every table is prefixed `herald_`, so that Herald can share a database (even its `public`
//! schema) with an application without taking its `users` table for its own.

use herald_core::StoreError;
use tokio_postgres::Client;

use super::sql::Error;

/// The schema this code writes, kept in `herald_meta.schema_version`. A database with a higher
/// version was migrated by a newer Herald: opening it fails rather than guess.
pub const SCHEMA_VERSION: i32 = 7;

/// Schema version 1: everything the `Store` contract needed then (listens came with
/// [`SCHEMA_V2`], topic logs with [`SCHEMA_V3`], fan-out jobs with [`SCHEMA_V4`]).
///
/// - `herald_meta`: one row, the schema version and the **epoch**, a random id made with the
///   schema (see `read_epoch`).
/// - `herald_users`: one row per user with its head (`last_seq`, `pruned_through`) and its inbox
///   counts as of every commit. An append adds to `last_seq` and the counts in the same
///   transaction as its rows: the row lock is what makes seqs gap-free and never reused, whatever
///   node appends, and it is the only thing two appends to one user wait on. `fillfactor = 70`
///   leaves room in each page for the new version of a row, so that those updates are HOT (no
///   index is written: no indexed column changes).
/// - `herald_notifications`: clustered by its primary key (user, seq), so a replay is one range
///   scan. Inbox pages of `all`, `unread`, `unseen` and by type walk the primary key newest first
///   and skip what they do not list (bounded by `Retention::max_per_user`), as in the SQLite
///   store; `read` and `archived`, which only marks write, have partial indexes. Retention by age
///   finds the expired rows through `created_at`.
/// - `herald_idempotency`: the keys of publishes, with the receipt; `created_at` for the window.
/// - `herald_revocations`: the latest close per user and session (`''`: all sessions; a
///   session id is never empty).
///
/// Ids are `COLLATE "C"`: compared byte by byte, as the store sorts them in Rust (locks are
/// taken in that order) and faster than a locale's rules.
pub const SCHEMA_V1: &str = r#"
CREATE TABLE herald_meta (
    id             boolean PRIMARY KEY DEFAULT true CHECK (id),
    schema_version integer NOT NULL,
    epoch          text NOT NULL DEFAULT gen_random_uuid()::text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE herald_users (
    user_id        text COLLATE "C" PRIMARY KEY,
    last_seq       bigint NOT NULL,
    pruned_through bigint NOT NULL DEFAULT 0,
    total          bigint NOT NULL DEFAULT 0,
    unread         bigint NOT NULL DEFAULT 0,
    unseen         bigint NOT NULL DEFAULT 0,
    archived       bigint NOT NULL DEFAULT 0,
    inbox_version  bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 70);
CREATE TABLE herald_notifications (
    user_id       text COLLATE "C" NOT NULL,
    seq           bigint NOT NULL,
    type          text NOT NULL,
    data          text NOT NULL,
    created_at    bigint NOT NULL,
    session       text,
    client        text,
    except_client text,
    seen_at       bigint,
    read_at       bigint,
    archived_at   bigint,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX herald_notifications_by_created_at ON herald_notifications (created_at);
CREATE INDEX herald_inbox_read ON herald_notifications (user_id, seq)
    WHERE read_at IS NOT NULL AND archived_at IS NULL;
CREATE INDEX herald_inbox_archived ON herald_notifications (user_id, seq) WHERE archived_at IS NOT NULL;
CREATE TABLE herald_idempotency (
    key        text COLLATE "C" PRIMARY KEY,
    created_at bigint NOT NULL,
    receipt    text NOT NULL
);
CREATE INDEX herald_idempotency_by_created_at ON herald_idempotency (created_at);
CREATE TABLE herald_revocations (
    user_id   text COLLATE "C" NOT NULL,
    session   text COLLATE "C" NOT NULL,
    closed_at bigint NOT NULL,
    PRIMARY KEY (user_id, session)
);
CREATE INDEX herald_revocations_by_closed_at ON herald_revocations (closed_at);
INSERT INTO herald_meta (schema_version) VALUES (1);
"#;

/// Version 1 → 2: **listens kept in the store** (see `herald_core::StoredListen`), in
/// `herald_topic_listens`: one row per user, scope and topic, as in the SQLite store's
/// `topic_listens` (its schema version 7). `session` is `''` for user scope (every tab of the
/// user, the "follow" case): a session id is never empty, and `''` sorts before every one, as
/// user scope comes first in `Store::listens` and `Store::topic_listeners`.
///
/// - The primary key (user, session, topic) holds a user's listens together, by scope: a
///   scope's topics (sorted, `COLLATE "C"` as Rust sorts them), the user's sessions and all its
///   listens are ranges of it, and only the user's rows are read to check its bounds.
/// - `herald_topic_listens_by_topic` (topic, user, session): who listens to a topic, in the
///   order of `topic_listeners`' keyset pages; a page is a range of it from the last (user,
///   session) on, read from the index alone.
/// - `listened_at` (ms): for session scope, the session's latest listen, set on all its rows by
///   each of its listens, so that the session with the oldest one can be forgotten when a user
///   has too many (`ListenBounds::sessions_max`); for user scope, when the topic was listened
///   to, which nothing reads.
///
/// Writers of one user's listens take an advisory lock of the user (see
/// `writes::LISTENS_LOCK`), not these rows: a user's first listens have no row to lock yet.
pub const SCHEMA_V2: &str = r#"
CREATE TABLE herald_topic_listens (
    user_id     text COLLATE "C" NOT NULL,
    session     text COLLATE "C" NOT NULL DEFAULT '',
    topic       text COLLATE "C" NOT NULL,
    listened_at bigint NOT NULL,
    PRIMARY KEY (user_id, session, topic)
);
CREATE INDEX herald_topic_listens_by_topic ON herald_topic_listens (topic, user_id, session);
UPDATE herald_meta SET schema_version = 2;
"#;

/// Version 2 → 3: **durable topic logs** (see `Store::append_topic`), as in the SQLite store's
/// `topic_log` and `topic_heads` (its schema version 8).
///
/// - `herald_topic_heads`: one row per topic ever published durably, its `last_tseq` and
///   `pruned_through`. An append takes the next tseq from it with an upsert (`ON CONFLICT DO
///   UPDATE SET last_tseq = last_tseq + 1 RETURNING`), which locks the row until the append
///   commits: whichever nodes append to one topic, they do it one after the other, so tseqs are
///   gap-free, never reused and visible in order, and appends to other topics do not wait. The
///   row stays when retention empties the log, so a tseq is never given out twice.
///   `fillfactor = 70`, as `herald_users`: room for HOT updates (no indexed column changes).
/// - `herald_topic_log`: clustered by its primary key (topic, tseq): a replay is one range
///   scan, and `topic_max_events` deletes a range of it. Retention by age finds the expired
///   events through `created_at`.
pub const SCHEMA_V3: &str = r#"
CREATE TABLE herald_topic_heads (
    topic          text COLLATE "C" PRIMARY KEY,
    last_tseq      bigint NOT NULL,
    pruned_through bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 70);
CREATE TABLE herald_topic_log (
    topic         text COLLATE "C" NOT NULL,
    tseq          bigint NOT NULL,
    type          text NOT NULL,
    data          text NOT NULL,
    created_at    bigint NOT NULL,
    except_user   text,
    except_client text,
    PRIMARY KEY (topic, tseq)
);
CREATE INDEX herald_topic_log_by_created_at ON herald_topic_log (created_at);
UPDATE herald_meta SET schema_version = 3;
"#;

/// Version 3 → 4: **fan-out jobs** (see `Store::save_job` and `herald_core::jobs`), as in the
/// SQLite store's `jobs` (its schema version 9).
///
/// - `herald_jobs`: one row per job, the whole job as JSON in `job` (`text`, not `jsonb`: the
///   job's data must read back byte for byte), with copies of the fields it is queried by: `id`
///   (`COLLATE "C"`, so that `unfinished_jobs` orders ids as Rust does), `created_at`,
///   `finished_at` (NULL while it runs). A save is one upsert; several nodes may save one job
///   (two runners after a restart): the last save wins, and each is the whole job.
/// - `herald_jobs_unfinished`: the running jobs in `unfinished_jobs`' order, a partial index,
///   so the query of every node's start (and of its periodic look for jobs left behind) reads
///   `limit` entries and sorts nothing, however many finished jobs the window holds.
/// - `herald_jobs_by_finished_at`: retention finds the finished jobs past the idempotency
///   window (that of their chunks' keys) in bounded chunks.
pub const SCHEMA_V4: &str = r#"
CREATE TABLE herald_jobs (
    id          text COLLATE "C" PRIMARY KEY,
    created_at  bigint NOT NULL,
    finished_at bigint,
    job         text NOT NULL
);
CREATE INDEX herald_jobs_unfinished ON herald_jobs (created_at, id) WHERE finished_at IS NULL;
CREATE INDEX herald_jobs_by_finished_at ON herald_jobs (finished_at) WHERE finished_at IS NOT NULL;
UPDATE herald_meta SET schema_version = 4;
"#;

/// Version 4 → 5: **Web Push** (see `herald_core::push`), as SQLite's version 10.
///
/// - `herald_push_subscriptions`: one row per browser subscription, keyed by its id (made from
///   its endpoint), the whole subscription as JSON text in `subscription`, with copies of what it
///   is queried by (`user_id`, `session_id`, `created_at`); `herald_push_subscriptions_by_user`
///   is a user's subscriptions oldest first (the publisher API's list, and the rows a new
///   subscription's bounds are checked on, under the user's advisory lock of push).
/// - `herald_push_outbox`: the pushes waiting to be sent, one row per notification and
///   subscription (the id), the whole delivery as JSON text, `due_at` copied for
///   `herald_push_outbox_by_due_at`, the sender's scan of what is due.
pub const SCHEMA_V5: &str = r#"
CREATE TABLE herald_push_subscriptions (
    id           text COLLATE "C" PRIMARY KEY,
    user_id      text COLLATE "C" NOT NULL,
    session_id   text COLLATE "C" NOT NULL,
    created_at   bigint NOT NULL,
    subscription text NOT NULL
);
CREATE INDEX herald_push_subscriptions_by_user ON herald_push_subscriptions (user_id, created_at, id);
CREATE TABLE herald_push_outbox (
    id       text COLLATE "C" PRIMARY KEY,
    due_at   bigint NOT NULL,
    delivery text NOT NULL
);
CREATE INDEX herald_push_outbox_by_due_at ON herald_push_outbox (due_at, id);
UPDATE herald_meta SET schema_version = 5;
"#;

/// Version 5 → 6: presence reported to the app (herald-core `presence`, webhooks), as SQLite's
/// schema version 11: `herald_presence_online`, one row per (user, session, node) reported
/// online (a user's rows and a session's are ranges of the key; by node for a dead node's
/// release), `herald_presence_seqs`, each user's last `user_seq` (kept when the user goes
/// offline; its row is also the lock that serializes a user's changes across nodes), and
/// `herald_presence_nodes`, each node's last heartbeat.
pub const SCHEMA_V6: &str = r#"
CREATE TABLE herald_presence_online (
    user_id text COLLATE "C" NOT NULL,
    session text COLLATE "C" NOT NULL,
    node    text COLLATE "C" NOT NULL,
    PRIMARY KEY (user_id, session, node)
);
CREATE INDEX herald_presence_online_by_node ON herald_presence_online (node);
CREATE TABLE herald_presence_seqs (
    user_id  text COLLATE "C" PRIMARY KEY,
    last_seq bigint NOT NULL
);
CREATE TABLE herald_presence_nodes (
    node      text COLLATE "C" PRIMARY KEY,
    last_beat bigint NOT NULL
);
UPDATE herald_meta SET schema_version = 6;
"#;

/// Version 6 → 7: **push markers** (see `herald_core::push`, "Why a marker"), as SQLite's
/// schema version 12: `herald_push_pending`, one row per stored notification whose pushes are
/// not in the outbox yet, written by the append in its statement (only for a user with a row
/// in `herald_push_subscriptions`) and removed when its pushes are; by `expand_by` for the
/// senders' scan of the markers their publish left.
pub const SCHEMA_V7: &str = r#"
CREATE TABLE herald_push_pending (
    user_id   text COLLATE "C" NOT NULL,
    seq       bigint NOT NULL,
    expand_by bigint NOT NULL,
    request   text NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX herald_push_pending_by_expand_by ON herald_push_pending (expand_by);
UPDATE herald_meta SET schema_version = 7;
"#;

/// The advisory lock migrations hold (for their transaction): one per schema, so several nodes
/// starting at once on one database migrate one after the other, and the later ones find the
/// schema done. `hashtext` of the schema's name: stores in other schemas of the database do not
/// wait for each other.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':herald-migrate'))";

/// Creates the schema in an empty database (or schema), upgrades an older one step by step,
/// and refuses a newer one, all in one transaction under [`MIGRATION_LOCK`]: a failed upgrade
/// leaves the database as it was, and a node that waited for another's migration finds it done.
/// `place` names the database (and schema) in errors.
pub(super) async fn migrate(client: &mut Client, place: &str) -> Result<(), Error> {
    let tx = client.transaction().await?;
    let schema: Option<String> = tx.query_one("SELECT current_schema()", &[]).await?.get(0);
    if schema.is_none() {
        return Err(StoreError::Unavailable(format!(
            "{place}: no schema of the search_path exists (create it, or name an existing one)"
        ))
        .into());
    }
    tx.execute(MIGRATION_LOCK, &[]).await?;
    let has_meta: bool = tx.query_one("SELECT to_regclass('herald_meta') IS NOT NULL", &[]).await?.get(0);
    let version: i32 =
        if has_meta { tx.query_one("SELECT schema_version FROM herald_meta", &[]).await?.get(0) } else { 0 };
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "{place} has Herald schema version {version}, this Herald knows up to {SCHEMA_VERSION}: upgrade Herald"
        ))
        .into());
    }
    if version < 1 {
        tracing::info!(place, "creating Herald's tables (schema version 1)");
        // Plain CREATE TABLE: tables of another program with these names fail the migration
        // instead of being mixed into.
        tx.batch_execute(SCHEMA_V1).await?;
    }
    if version < 2 {
        if version >= 1 {
            tracing::info!(
                place,
                "upgrading Herald's tables to schema version 2 (listens kept in the store)"
            );
        }
        tx.batch_execute(SCHEMA_V2).await?;
    }
    if version < 3 {
        if version >= 1 {
            tracing::info!(place, "upgrading Herald's tables to schema version 3 (durable topic logs)");
        }
        tx.batch_execute(SCHEMA_V3).await?;
    }
    if version < 4 {
        if version >= 1 {
            tracing::info!(place, "upgrading Herald's tables to schema version 4 (fan-out jobs)");
        }
        tx.batch_execute(SCHEMA_V4).await?;
    }
    if version < 5 {
        if version >= 1 {
            tracing::info!(place, "upgrading Herald's tables to schema version 5 (Web Push)");
        }
        tx.batch_execute(SCHEMA_V5).await?;
    }
    if version < 6 {
        if version >= 1 {
            tracing::info!(place, "upgrading Herald's tables to schema version 6 (presence webhooks)");
        }
        tx.batch_execute(SCHEMA_V6).await?;
    }
    if version < 7 {
        if version >= 1 {
            tracing::info!(place, "upgrading Herald's tables to schema version 7 (push markers)");
        }
        tx.batch_execute(SCHEMA_V7).await?;
    }
    // Later versions: `if version < 8 { … }`, each bumping `herald_meta.schema_version`.
    tx.commit().await?;
    Ok(())
}

/// The database's epoch: `{id}.{system}.{timeline}`.
///
/// - `id`: the random id `herald_meta` was made with. It changes only when the schema is made
///   again (a new, empty store) or an operator renews it after restoring a dump into the same
///   cluster (`UPDATE herald_meta SET epoch = gen_random_uuid()`).
/// - `system`: the PostgreSQL cluster's system identifier (made by `initdb`; a dump restored
///   into another cluster has another one; replicas share their primary's).
/// - `timeline`: the cluster's WAL timeline, which grows at every promotion of a replica and
///   every point-in-time recovery: exactly when commits acknowledged before may be lost.
///
/// Seqs handed out under one epoch are never handed out again under it; a client resuming with
/// seqs of another epoch must be given a `reset`, since the log it resumed from may have lost
/// commits and the seqs after them may be reused. A failover that lost nothing changes the
/// timeline too: clients then reset once, needlessly but safely. Where the control functions
/// are not granted, the epoch is the id alone (and a failover is not seen).
///
/// The system identifier goes out digested (every client sees the epoch, in `hello`): it tells
/// PostgreSQL clusters apart just as well, without telling anyone when and where the database's
/// `initdb` ran (the identifier is made from its time and process id).
pub(super) async fn read_epoch(client: &Client) -> Result<String, Error> {
    let id: String = client.query_one("SELECT epoch FROM herald_meta", &[]).await?.get(0);
    // A standby has no current WAL position (it is not written to); its timeline is not asked.
    let control = client
        .query_one(
            "SELECT (SELECT system_identifier FROM pg_control_system())::text,
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
            &[],
        )
        .await;
    Ok(match control {
        Ok(row) => {
            let system: Option<String> = row.get(0);
            let timeline: Option<String> = row.get(1);
            let timeline = timeline.and_then(|t| u32::from_str_radix(&t, 16).ok()).unwrap_or(0);
            format!("{id}.{:016x}.{timeline}", system_digest(&system.unwrap_or_default()))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read PostgreSQL's system id and timeline: the store's epoch is its id alone");
            id
        }
    })
}

/// FNV-1a of the system identifier's text: stable across processes and versions (the std
/// hasher is seeded per process), which an epoch must be.
fn system_digest(system: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in system.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::system_digest;

    /// The digest is a fixed function: a node of another build must compute the same epoch.
    #[test]
    fn the_system_digest_is_fnv1a_and_does_not_show_the_identifier() {
        assert_eq!(system_digest(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(system_digest("a"), 0xaf63_dc4c_8601_ec8c);
        let identifier = "7441234567890123456";
        assert!(!format!("{:016x}", system_digest(identifier)).contains(identifier));
    }
}
