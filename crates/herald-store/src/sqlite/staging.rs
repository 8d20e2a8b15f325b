//! Staged appends: an append is made durable in the small, append-only `staged` table and
//! **settled** into the users' logs (`notifications`) later, many at a time, off the publish path.
//!
//! # Why
//! `notifications` is clustered by (user, seq), so an append inserts into a random leaf page of a
//! large b-tree, and SQLite writes every page a transaction changes whole to the WAL: with ~17
//! appends per commit to ~17 users, each append wrote its own leaf page of 4 KiB plus a share of
//! the `created_at` index and the parents, about 7 KB of WAL and 25–34 µs of CPU per append, most
//! of it copying, checksumming and fsyncing pages for ~100-byte rows (`cargo bench -p
//! herald-store --bench publish`; with staging: about 3 KB and 16–18 µs, settling included).
//! `staged` is a rowid table: its inserts go to its last page, which the whole batch shares. Settling then inserts many rows per user in one
//! transaction, users in key order, so a leaf page (and its parents) is written once for all the
//! rows a user got since the last settle instead of once per append.
//!
//! # How
//! - An append inserts its rows into `staged` (seqs assigned as before, from the user's row) and
//!   commits with the batch (fsync: durable before it is acknowledged). After the commit the
//!   writer adds them to [`Staging`], the in-memory copy readers merge with what they read from
//!   SQLite. An appended user's [`UserRow`] is kept there too, so the next append to that user
//!   reads nothing; and once a generation has settled all of a user's rows, the row stays kept
//!   (up to [`KEPT_ROWS_MAX`] users), so an append to a user settled a moment ago reads nothing
//!   either (reading it cost two b-tree searches, `users` and the log's last seq: 6 to 8 %
//!   of the writer's work per append at full load).
//! - The writer starts a **generation** when [`Settling::rows`] rows are staged or the oldest is
//!   [`Settling::after`] old: every row staged so far (ids up to `through`). It settles it in
//!   chunks of at most [`Settling::chunk_rows`] rows, whole users in key order, one transaction
//!   each, run between batches of requests. A chunk stops early, once it has settled its
//!   [`ChunkBound::min_rows`], when a request is waiting: a publish waits for a few users' rows
//!   at most, not for a whole chunk, while under load settling still keeps pace with appends. A chunk commits without fsync (see `settle_chunk` for
//!   why that is safe). The last chunk also deletes the generation's rows from `staged` (a prefix
//!   of its rowids: cheap).
//! - Every other write to a user (inbox marks and deletes, retention) first settles all of that
//!   user's staged rows, in the write's own transaction, so those writes only ever see
//!   `notifications`, as before staging existed. Afterwards the user's kept row is dropped (the
//!   write changes it); `writes::settle_and_fold` is the one way in for those writes. What a
//!   batch stages and settles is kept aside ([`Overlay`]) and applied to [`Staging`] once the
//!   batch has committed.
//! - Past [`Settling::max_rows`] staged rows, the writer settles before it takes more requests:
//!   appends wait (and, with the queue full, fail with `Overloaded` after `ENQUEUE_TIMEOUT`).
//! - Readers take a user's staged rows from [`Staging`] *before* they open their SQLite snapshot:
//!   a row settled in between is then in both (the reader drops the copy), and a row settled
//!   before the snapshot while staged after the copy cannot exist, because a user's rows settle in
//!   seq order. So what a reader sees is always a prefix of the user's log.
//!
//! # Which staged rows are settled
//! A row settled by a generation stays in `staged` until the generation's last chunk deletes
//! its prefix; a row settled early (by a mark, a delete, retention, or an append that prunes its
//! user at `max_per_user`) is deleted from `staged` in that same transaction. So `staged` holds
//! the rows of [`Staging`] plus those of the generation in progress already settled: at most
//! about twice [`Settling::max_rows`] rows, whatever the users' retention. On opening, the store settles whatever `staged`
//! holds: a staged row of `user` is already settled iff its seq ≤ `max(users.last_seq,
//! MAX(notifications.seq))`, because a user's rows settle in seq order and a settled row can only
//! be deleted by a write that first folds the tail, which sets `last_seq` past it. Counts need no
//! recovery: staged rows are part of the user's tail (see `SCHEMA_V3`), counted from the seqs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::{Notification, Seq, StoreError, UserId};
use parking_lot::Mutex;
use rusqlite::{Connection, params};

use super::reads::{UserRow, read_user_row};
use super::sql::{db_error, sql_seq};

/// When and how much the writer settles. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settling {
    /// A generation starts once this many rows were staged since the last one began. More rows
    /// per generation means more rows per user per page written (less CPU and disk per append),
    /// and more memory (each staged row is held until settled).
    pub rows: usize,
    /// ... or once the oldest row staged since the last generation began is this old.
    pub after: Duration,
    /// Rows one settle transaction takes at most (whole users: it can take a few more): 256 rows
    /// take about 1.5 ms. A chunk stops earlier when a request is waiting (see [`ChunkBound`]),
    /// so this bounds the work per transaction, not what a publish waits for.
    pub chunk_rows: usize,
    /// Staged rows at most. At the bound the writer settles before it takes more requests.
    pub max_rows: usize,
}

impl Default for Settling {
    fn default() -> Self {
        Self { rows: 16_384, after: Duration::from_secs(2), chunk_rows: 256, max_rows: 65_536 }
    }
}

impl Settling {
    /// Settle every append at once (a generation per batch): for tests that look at
    /// `notifications` directly.
    pub fn immediately() -> Self {
        Self { rows: 1, after: Duration::ZERO, chunk_rows: usize::MAX, max_rows: 1 }
    }
}

/// Users whose row the writer keeps after their staged rows have all settled (about 100 to 150
/// bytes each with the map's share and the user id: at most about 2.5 MB). At the bound the
/// kept rows are dropped all at once and kept again as generations settle: an append to a user
/// not kept reads its row from SQLite, as it would without them.
pub const KEPT_ROWS_MAX: usize = 16_384;

/// Rows a settle chunk takes at least before it gives way to a waiting request: about 0.1 ms of
/// work (settling costs about 6 µs a row), so that a publish arriving meanwhile waits for little
/// more than that, while every chunk still makes progress.
pub const MIN_CHUNK_ROWS: usize = 16;

/// How far one settle chunk goes: at least `min_rows` (whole users, so a few more), at most
/// `max_rows`, and in between it stops as soon as `request_waiting` says a request is queued.
#[derive(Clone, Copy)]
pub(super) struct ChunkBound<'a> {
    pub min_rows: usize,
    pub max_rows: usize,
    pub request_waiting: &'a dyn Fn() -> bool,
}

impl ChunkBound<'_> {
    /// A chunk of exactly `rows` (whole users), whatever waits: when too much is staged, or the
    /// store is closing.
    pub fn whole(rows: usize) -> ChunkBound<'static> {
        ChunkBound { min_rows: rows, max_rows: rows, request_waiting: &|| false }
    }
}

/// One staged notification and its rowid in `staged`.
#[derive(Debug, Clone)]
pub(super) struct Staged {
    pub id: i64,
    pub notification: Arc<Notification>,
}

#[derive(Debug)]
struct StagedUser {
    /// The user's `users` row with `max_seq` the last staged seq: the user's whole log as the
    /// writer sees it. Nothing but appends and settling writes a user while it has staged rows
    /// (any other write settles the user first), and settling changes nothing this describes.
    row: UserRow,
    /// Ascending seq (and id).
    rows: Vec<Staged>,
}

/// The staged rows of every user, as committed: written by the writer after each commit, read by
/// readers. See the module docs.
#[derive(Debug, Default)]
pub(super) struct Staging {
    users: HashMap<UserId, StagedUser>,
    rows: usize,
    /// The rows of users settled by a generation and not written since, as SQLite has them
    /// (the writer's alone: readers never look here). A user is in `users` or here, not both.
    kept: HashMap<UserId, UserRow>,
}

impl Staging {
    /// Rows staged now.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Keeps `row`, `user`'s row now that all its staged rows have settled (settling changes
    /// nothing a row describes: see [`StagedUser::row`]).
    fn keep(&mut self, user: UserId, row: UserRow) {
        if self.kept.len() >= KEPT_ROWS_MAX && !self.kept.contains_key(&user) {
            self.kept.clear();
        }
        self.kept.insert(user, row);
    }

    /// Users whose row is kept now.
    pub fn kept_rows(&self) -> usize {
        self.kept.len()
    }

    /// `user`'s staged notifications with a seq above `after` (0: all), ascending. Take them
    /// *before* opening the SQLite snapshot they are merged with (see the module docs).
    pub fn notifications_after(&self, user: &UserId, after: Seq) -> Vec<Arc<Notification>> {
        let Some(staged) = self.users.get(user) else { return Vec::new() };
        let from = staged.rows.partition_point(|row| row.notification.seq.is_some_and(|seq| seq <= after));
        staged.rows[from..].iter().map(|row| Arc::clone(&row.notification)).collect()
    }

    /// The seq of `user`'s last staged notification, if any (all a head or counts need).
    pub fn last_seq(&self, user: &UserId) -> Option<Seq> {
        self.users.get(user).and_then(|staged| staged.rows.last()).and_then(|row| row.notification.seq)
    }

    /// Checks (in debug builds) what readers and the settler rely on: `rows` counts every
    /// staged row, and each user's rows have consecutive seqs (a prefix of them is what a
    /// reader merges, see the module docs), ascending ids (a generation takes each user's rows
    /// up to an id), and end at the user's kept row's `max_seq`. O(users): debug builds only.
    fn debug_check(&self) {
        if cfg!(debug_assertions) {
            let rows: usize = self.users.values().map(|staged| staged.rows.len()).sum();
            debug_assert_eq!(self.rows, rows, "the staged rows' count is off");
            for (user, staged) in &self.users {
                debug_assert!(!staged.rows.is_empty(), "{user} is kept with no staged row");
                debug_assert!(!self.kept.contains_key(user), "{user} is both staged and kept");
                for pair in staged.rows.windows(2) {
                    let (a, b) = (&pair[0], &pair[1]);
                    debug_assert!(a.id < b.id, "{user}'s staged ids are not ascending");
                    debug_assert_eq!(
                        a.notification.seq.map(|seq| seq + 1),
                        b.notification.seq,
                        "{user}'s staged seqs are not consecutive"
                    );
                }
                debug_assert_eq!(
                    staged.rows.last().and_then(|row| row.notification.seq).map(sql_seq),
                    Some(staged.row.max_seq),
                    "{user}'s kept row does not end at its last staged seq"
                );
            }
        }
    }
}

/// What a batch's requests changed in [`Staging`], applied once the batch has committed (and
/// dropped if it did not).
#[derive(Debug, Clone, Default)]
pub(super) struct Overlay {
    users: HashMap<UserId, UserChange>,
}

#[derive(Debug, Clone, Default)]
struct UserChange {
    /// The rows staged before this batch were settled by it.
    settled: bool,
    /// The user's row as it stands now; `None`: read it from SQLite.
    row: Option<UserRow>,
    /// Rows this batch staged (and did not settle).
    added: Vec<Staged>,
}

/// The writer's view of [`Staging`] during a batch: the committed state plus the batch's own
/// changes.
pub(super) struct StagingWrites<'a> {
    staging: &'a Mutex<Staging>,
    overlay: Overlay,
}

impl<'a> StagingWrites<'a> {
    pub fn new(staging: &'a Mutex<Staging>) -> Self {
        Self { staging, overlay: Overlay::default() }
    }

    /// The batch's changes so far (to restore them if a request is rolled back alone).
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    pub fn restore(&mut self, overlay: Overlay) {
        self.overlay = overlay;
    }

    /// `user`'s row and last seq, staged rows included; `None` if the user has no `users` row yet.
    pub fn user_row(&mut self, conn: &Connection, user: &UserId) -> Result<Option<UserRow>, StoreError> {
        let change = self.overlay.users.get(user);
        if let Some(row) = change.and_then(|change| change.row) {
            return Ok(Some(row));
        }
        if !change.is_some_and(|change| change.settled) {
            let staging = self.staging.lock();
            if let Some(staged) = staging.users.get(user) {
                return Ok(Some(staged.row));
            }
            if let Some(row) = staging.kept.get(user).copied() {
                drop(staging);
                // Debug builds check every kept row against SQLite: a write that changed a user
                // without settling it first would show here, in any test that appends after it.
                if cfg!(debug_assertions) {
                    debug_assert_eq!(
                        read_user_row(conn, user.as_str())?,
                        Some(row),
                        "{user}'s kept row is not SQLite's"
                    );
                }
                return Ok(Some(row));
            }
        }
        read_user_row(conn, user.as_str())
    }

    /// Stages `notification` (its seq assigned from `row`, which is the user's row after it).
    pub fn stage(
        &mut self,
        conn: &Connection,
        notification: &Arc<Notification>,
        row: UserRow,
    ) -> Result<(), StoreError> {
        let n = notification;
        // Seqs are assigned from the row: `row` is the user's row after `n`.
        debug_assert_eq!(n.seq.map(sql_seq), Some(row.max_seq), "staged at another seq than its row's");
        insert_row(conn, INSERT_STAGED, n)?;
        let id = conn.last_insert_rowid();
        let change = self.overlay.users.entry(n.user.clone()).or_default();
        debug_assert!(
            change.added.last().is_none_or(|last| last.notification.seq.map(|seq| seq + 1) == n.seq),
            "{}'s appends in one batch are not consecutive",
            n.user
        );
        change.row = Some(row);
        change.added.push(Staged { id, notification: Arc::clone(n) });
        Ok(())
    }

    /// Settles every staged row of `user` into `notifications`, before a write that is not an
    /// append changes the user, and deletes them from `staged` (no generation will: they leave
    /// [`Staging`]). Its row is read from SQLite again afterwards.
    pub fn settle_user(&mut self, conn: &Connection, user: &UserId) -> Result<(), StoreError> {
        let change = self.overlay.users.entry(user.clone()).or_default();
        if !change.settled {
            let committed: Vec<Staged> =
                self.staging.lock().users.get(user).map(|staged| staged.rows.clone()).unwrap_or_default();
            for row in &committed {
                settle_early(conn, row)?;
            }
            change.settled = true;
        }
        for row in &change.added {
            settle_early(conn, row)?;
        }
        change.added.clear();
        change.row = None;
        Ok(())
    }

    /// Settles every user with a staged notification created before `cutoff_ms`, so that
    /// retention by age, which reads `notifications`, finds it.
    pub fn settle_older_than(&mut self, conn: &Connection, cutoff_ms: i64) -> Result<(), StoreError> {
        let expired = |rows: &[Staged]| rows.iter().any(|row| row.notification.created_at_ms < cutoff_ms);
        let mut users: Vec<UserId> = self
            .staging
            .lock()
            .users
            .iter()
            .filter(|(user, staged)| {
                !self.overlay.users.get(*user).is_some_and(|change| change.settled) && expired(&staged.rows)
            })
            .map(|(user, _)| user.clone())
            .collect();
        users.extend(
            self.overlay
                .users
                .iter()
                .filter(|(_, change)| expired(&change.added))
                .map(|(user, _)| user.clone()),
        );
        for user in users {
            self.settle_user(conn, &user)?;
        }
        Ok(())
    }

    /// The batch committed: its changes become what readers see. Returns how many notifications
    /// it staged.
    pub fn commit(self) -> usize {
        if self.overlay.users.is_empty() {
            return 0;
        }
        let mut added = 0;
        let mut staging = self.staging.lock();
        for (user, change) in self.overlay.users {
            // Every user here was staged to or settled by the batch: a row kept for it is either
            // stale now or about to be kept with its staged rows.
            staging.kept.remove(&user);
            if change.settled
                && let Some(staged) = staging.users.remove(&user)
            {
                staging.rows -= staged.rows.len();
            }
            if change.added.is_empty() {
                continue;
            }
            // Always there: `stage` sets the row with every row it adds (`settle_user` clears both).
            debug_assert!(change.row.is_some(), "{user} has staged rows but no row");
            let Some(row) = change.row else { continue };
            added += change.added.len();
            staging.rows += change.added.len();
            let staged = staging.users.entry(user).or_insert_with(|| StagedUser { row, rows: Vec::new() });
            // The batch read the user's row from `staging` (or SQLite, when none was kept) and
            // gave its appends the seqs that follow.
            debug_assert!(
                staged.rows.last().zip(change.added.first()).is_none_or(|(last, first)| {
                    last.notification.seq.map(|seq| seq + 1) == first.notification.seq
                }),
                "a user's staged seqs do not follow on from the batch before"
            );
            staged.row = row;
            staged.rows.extend(change.added);
        }
        staging.debug_check();
        added
    }
}

const INSERT_STAGED: &str = "
    INSERT INTO staged (user, seq, type, data, created_at, session, client, except_client)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
const INSERT_SETTLED: &str = "
    INSERT INTO notifications (user, seq, type, data, created_at, session, client, except_client)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// Moves `row` from `staged` into its user's log, in the caller's transaction: a row settled
/// outside a generation is deleted here, since no generation's delete covers it (issue 10: a
/// user kept at `max_per_user`, whose every append settles it, left every row in `staged`).
fn settle_early(conn: &Connection, row: &Staged) -> Result<(), StoreError> {
    insert_settled(conn, &row.notification)?;
    conn.prepare_cached("DELETE FROM staged WHERE id = ?1")
        .and_then(|mut stmt| stmt.execute([row.id]))
        .map_err(db_error)?;
    Ok(())
}

/// Inserts a staged notification into its user's log.
fn insert_settled(conn: &Connection, n: &Notification) -> Result<(), StoreError> {
    insert_row(conn, INSERT_SETTLED, n)
}

/// Runs `sql` ([`INSERT_STAGED`] or [`INSERT_SETTLED`]) with `n`'s columns.
fn insert_row(conn: &Connection, sql: &str, n: &Notification) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| {
            stmt.execute(params![
                n.user.as_str(),
                n.seq.map_or(0, sql_seq),
                &*n.kind,
                n.data.get(),
                n.created_at_ms,
                n.audience.session.as_ref().map(|s| s.as_str()),
                n.audience.client.as_ref().map(|c| c.as_str()),
                n.audience.except_client.as_ref().map(|c| c.as_str()),
            ])
        })
        .map_err(db_error)?;
    Ok(())
}

/// The rows of `staged` one generation settles, and the users left to settle.
#[derive(Debug)]
struct Generation {
    /// The highest `staged` rowid in the generation.
    through: i64,
    /// Users still to settle, in descending key order (the next one is popped off the end).
    users: Vec<UserId>,
}

/// The writer's settling state: when to start a generation, and the one in progress.
#[derive(Debug)]
pub(super) struct Settler {
    settling: Settling,
    generation: Option<Generation>,
    /// Rows staged since the last generation began, and when the first of them was.
    new_rows: usize,
    new_since: Option<Instant>,
    /// Rows settled by generations so far.
    pub settled: u64,
    /// Chunks (settle transactions) that committed so far.
    pub chunks: u64,
    /// Generations begun so far.
    pub generations: u64,
}

impl Settler {
    pub fn new(settling: Settling) -> Self {
        Self {
            settling,
            generation: None,
            new_rows: 0,
            new_since: None,
            settled: 0,
            chunks: 0,
            generations: 0,
        }
    }

    /// `rows` were staged by a batch that committed.
    pub fn staged(&mut self, rows: usize) {
        if rows > 0 {
            self.new_rows += rows;
            self.new_since.get_or_insert_with(Instant::now);
        }
    }

    /// Whether settling must go on before the writer takes more requests: too many rows staged.
    pub fn must_settle(&self, staging: &Mutex<Staging>) -> bool {
        staging.lock().rows >= self.settling.max_rows
    }

    /// How long the writer may wait for requests before it has settling to do (`None`: no
    /// limit, nothing staged; zero: a generation is in progress or due).
    pub fn idle_timeout(&self) -> Option<Duration> {
        if self.generation.is_some() {
            return Some(Duration::ZERO);
        }
        self.new_since.map(|since| self.settling.after.saturating_sub(since.elapsed()))
    }

    /// Runs one chunk of settling, as far as `bound` lets it, if a generation is due or in
    /// progress. Returns whether it did anything.
    pub fn step(
        &mut self,
        conn: &mut Connection,
        staging: &Mutex<Staging>,
        bound: ChunkBound<'_>,
    ) -> Result<bool, StoreError> {
        if self.generation.is_none() {
            let due = self.new_rows >= self.settling.rows
                || self.new_since.is_some_and(|since| since.elapsed() >= self.settling.after)
                || staging.lock().rows >= self.settling.max_rows;
            if !due {
                return Ok(false);
            }
            self.begin_generation(staging);
        }
        let max_rows = bound.max_rows.min(self.settling.chunk_rows);
        let bound = ChunkBound { min_rows: bound.min_rows.min(max_rows), max_rows, ..bound };
        self.settle_next(conn, staging, bound)?;
        Ok(true)
    }

    /// A generation of every row staged so far; rows staged from now on count toward the next.
    fn begin_generation(&mut self, staging: &Mutex<Staging>) {
        self.generation = start_generation(staging);
        self.generations += u64::from(self.generation.is_some());
        self.new_rows = 0;
        self.new_since = None;
    }

    /// Settles the next chunk of the generation in progress. If that fails, the generation is
    /// given up: the users it took off its list are still staged, and its last chunk must not
    /// delete their rows from `staged`. The next generation takes them all again.
    fn settle_next(
        &mut self,
        conn: &mut Connection,
        staging: &Mutex<Staging>,
        bound: ChunkBound<'_>,
    ) -> Result<(), StoreError> {
        let Some(generation) = self.generation.as_mut() else { return Ok(()) };
        match settle_chunk(conn, staging, generation, bound) {
            Ok(settled) => {
                self.settled += settled as u64;
                self.chunks += 1;
                if generation.users.is_empty() {
                    self.generation = None;
                }
                Ok(())
            }
            Err(error) => {
                self.generation = None;
                self.new_since.get_or_insert_with(Instant::now);
                Err(error)
            }
        }
    }

    /// Settles everything staged (the store is closing, or a test asked): generation after
    /// generation until nothing is staged, then empties `staged`.
    pub fn settle_all(&mut self, conn: &mut Connection, staging: &Mutex<Staging>) -> Result<(), StoreError> {
        loop {
            if self.generation.is_none() {
                if staging.lock().rows == 0 {
                    break;
                }
                self.begin_generation(staging);
            }
            self.settle_next(conn, staging, ChunkBound::whole(usize::MAX))?;
        }
        // Nothing should be left (rows settled early are deleted as they settle); whatever is
        // left was settled already.
        conn.execute("DELETE FROM staged", []).map_err(db_error)?;
        Ok(())
    }
}

fn start_generation(staging: &Mutex<Staging>) -> Option<Generation> {
    let staging = staging.lock();
    let through = staging.users.values().filter_map(|staged| staged.rows.last()).map(|row| row.id).max()?;
    let mut users: Vec<UserId> = staging.users.keys().cloned().collect();
    // Descending, so that popping settles them in key order: neighbouring users share leaf and
    // interior pages, which a chunk then writes once.
    users.sort_unstable_by(|a, b| b.cmp(a));
    Some(Generation { through, users })
}

/// Settles the next users of `generation` (their rows up to `through`), as many as `bound` lets
/// it, in one transaction, and, with the last users, deletes the generation's rows from
/// `staged`. Returns how many rows it settled.
fn settle_chunk(
    conn: &mut Connection,
    staging: &Mutex<Staging>,
    generation: &mut Generation,
    bound: ChunkBound<'_>,
) -> Result<usize, StoreError> {
    // Only the writer changes `staging`, and this is the writer: what is read here holds until
    // the commit below.
    let mut chunk: Vec<(UserId, Vec<Arc<Notification>>)> = Vec::new();
    let mut rows = 0;
    {
        let staging = staging.lock();
        while rows < bound.max_rows {
            let Some(user) = generation.users.pop() else { break };
            let Some(staged) = staging.users.get(&user) else { continue };
            let due: Vec<Arc<Notification>> = staged
                .rows
                .iter()
                .take_while(|row| row.id <= generation.through)
                .map(|row| Arc::clone(&row.notification))
                .collect();
            rows += due.len();
            if !due.is_empty() {
                chunk.push((user, due));
            }
        }
    }
    // Not fsynced, so that a publish that arrives meanwhile does not wait for a settle chunk's
    // fsync on top of its own (the chunk's CPU is all it waits for). Safe because settling only
    // moves rows that are durable already, in `staged`, and only the generation's last chunk
    // deletes them: the WAL is a sequence, so a crash can lose only a suffix of unsynced commits
    // (a settle chunk's delete only with the chunks before it), `recover` then settles those rows
    // again, and the next fsynced commit (an append's; a checkpoint's, which syncs the WAL
    // before copying it) makes them all durable.
    conn.pragma_update(None, "synchronous", "OFF").map_err(db_error)?;
    let settled = settle_in_transaction(conn, &chunk, generation, bound);
    let restored = conn.pragma_update(None, "synchronous", "FULL").map_err(db_error);
    let settled_users = settled?;
    restored?;

    // The users the chunk gave way before go back on the generation's list, in the order they
    // came off it.
    for (user, _) in chunk.drain(settled_users..).rev() {
        generation.users.push(user);
    }
    let rows = chunk.iter().map(|(_, notifications)| notifications.len()).sum();
    let mut staging = staging.lock();
    for (user, notifications) in chunk {
        let Some(staged) = staging.users.get_mut(&user) else { continue };
        // Only the writer changes `staging`: the rows settled are still its first ones.
        debug_assert!(
            staged.rows.first().map(|row| row.notification.seq) == notifications.first().map(|n| n.seq),
            "{user}'s settled rows are no longer its first staged ones"
        );
        staged.rows.drain(..notifications.len());
        let empty = staged.rows.is_empty();
        staging.rows -= notifications.len();
        if empty && let Some(settled) = staging.users.remove(&user) {
            staging.keep(user, settled.row);
        }
    }
    staging.debug_check();
    Ok(rows)
}

/// Settles the users of `chunk` in order, in one transaction, until `bound` says to give way;
/// returns how many users it settled (the chunk's first ones). With the generation's last user,
/// also deletes its rows from `staged`.
fn settle_in_transaction(
    conn: &mut Connection,
    chunk: &[(UserId, Vec<Arc<Notification>>)],
    generation: &Generation,
    bound: ChunkBound<'_>,
) -> Result<usize, StoreError> {
    let tx = conn.transaction().map_err(db_error)?;
    let (mut users, mut rows) = (0, 0);
    for (_, notifications) in chunk {
        if rows >= bound.min_rows && (bound.request_waiting)() {
            break;
        }
        for n in notifications {
            insert_settled(&tx, n)?;
        }
        users += 1;
        rows += notifications.len();
    }
    if users == chunk.len() && generation.users.is_empty() {
        tx.prepare_cached("DELETE FROM staged WHERE id <= ?1")
            .and_then(|mut stmt| stmt.execute([generation.through]))
            .map_err(db_error)?;
    }
    tx.commit().map_err(db_error)?;
    Ok(users)
}

/// Settles what `staged` holds when the store opens (what the last run left: it stopped without
/// settling, or crashed) and empties it. See the module docs for which rows were settled already.
pub(super) fn recover(conn: &mut Connection) -> Result<usize, StoreError> {
    let tx = conn.transaction().map_err(db_error)?;
    let mut settled = 0;
    {
        let mut select = tx
            .prepare(
                "SELECT user, seq, type, data, created_at, session, client, except_client
                 FROM staged ORDER BY id",
            )
            .map_err(db_error)?;
        let mut rows = select.query([]).map_err(db_error)?;
        let mut insert = tx.prepare(INSERT_SETTLED).map_err(db_error)?;
        // Each user's last settled seq, then the last one settled here.
        let mut heads: HashMap<String, i64> = HashMap::new();
        while let Some(row) = rows.next().map_err(db_error)? {
            let user: String = row.get(0).map_err(db_error)?;
            let seq: i64 = row.get(1).map_err(db_error)?;
            let head = match heads.get(&user) {
                Some(head) => *head,
                None => read_user_row(&tx, &user)?.map_or(0, |row| row.head()),
            };
            if seq > head {
                insert
                    .execute(params![
                        user,
                        seq,
                        row.get::<_, String>(2).map_err(db_error)?,
                        row.get::<_, String>(3).map_err(db_error)?,
                        row.get::<_, i64>(4).map_err(db_error)?,
                        row.get::<_, Option<String>>(5).map_err(db_error)?,
                        row.get::<_, Option<String>>(6).map_err(db_error)?,
                        row.get::<_, Option<String>>(7).map_err(db_error)?,
                    ])
                    .map_err(db_error)?;
                settled += 1;
                heads.insert(user, seq);
            } else {
                heads.insert(user, head);
            }
        }
    }
    tx.execute("DELETE FROM staged", []).map_err(db_error)?;
    tx.commit().map_err(db_error)?;
    Ok(settled)
}
