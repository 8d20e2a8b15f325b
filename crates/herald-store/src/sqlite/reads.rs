//! The reads: what a read transaction on a pooled connection does for `read_after`, `head`,
//! inbox pages and counts, revocations, listens, topic logs (heads and pages) and fan-out jobs,
//! the log's reads merging in the user's staged
//! notifications that the caller took before the snapshot (see `staging` for why that order
//! gives a prefix of the log). Also [`UserRow`], a user's `users` row with its tail, which the writes read too. Nothing
//! here writes; taking the staged notifications and the pooled connection is the operations'
//! job.

use std::sync::Arc;

use herald_core::{
    Audience, ClientId, Epoch, FanoutJob, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxStatus,
    ItemState, LogHead, LogPage, Notification, Revocation, Seq, SessionId, StoreError, StoredListen, Topic,
    TopicEvent, TopicHead, TopicListener, TopicPage, UserId,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::value::RawValue;

use super::sql::{db_error, seq_from_sql, session_from_sql, sql_seq, sql_session};

/// A user's `users` row and the last seq of its log, as stored. See
/// [`SCHEMA_V3`](super::schema::SCHEMA_V3) for why the row's `last_seq` may be behind the log's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct UserRow {
    /// Up to where the row's counts describe the log.
    pub last_seq: i64,
    pub pruned_through: i64,
    /// The highest seq in the log (0: none).
    pub max_seq: i64,
    total: i64,
    unread: i64,
    unseen: i64,
    archived: i64,
    version: i64,
}

impl UserRow {
    /// The row with the user's staged notifications, up to `last_staged`, counted in the tail:
    /// they are appends not yet in `notifications` (see `sqlite/staging.rs`).
    pub(super) fn with_staged(mut self, last_staged: Option<Seq>) -> Self {
        if let Some(last) = last_staged {
            self.max_seq = self.max_seq.max(sql_seq(last));
        }
        self
    }

    /// The log's last seq: the row's, or the tail's end.
    pub(super) fn head(&self) -> i64 {
        self.last_seq.max(self.max_seq)
    }

    /// How many notifications follow the row's `last_seq`: appends not folded in yet.
    pub(super) fn tail(&self) -> i64 {
        (self.max_seq - self.last_seq).max(0)
    }

    /// The counts of the whole log: the row's plus the tail's, whose every notification is in the
    /// inbox, unread and unseen, and was one change.
    pub(super) fn counts(&self, user: &str) -> Result<InboxCounts, StoreError> {
        let tail = self.tail();
        let count = |n: i64| {
            u64::try_from(n)
                .map_err(|_| StoreError::Corrupt(format!("negative inbox count {n} of user {user}")))
        };
        Ok(InboxCounts {
            total: count(self.total + tail)?,
            unread: count(self.unread + tail)?,
            unseen: count(self.unseen + tail)?,
            archived: count(self.archived)?,
            version: count(self.version + tail)?,
        })
    }
}

/// The query of [`read_user_row`]: two primary-key lookups.
pub(super) const USER_ROW_SQL: &str = "
    SELECT last_seq, pruned_through, IFNULL((SELECT MAX(seq) FROM notifications WHERE user = ?1), 0),
           total, unread, unseen, archived, inbox_version
    FROM users WHERE user = ?1";

/// `user`'s row, `None` if it has none (it never had a notification).
pub(super) fn read_user_row(conn: &Connection, user: &str) -> Result<Option<UserRow>, StoreError> {
    conn.prepare_cached(USER_ROW_SQL)
        .and_then(|mut stmt| {
            stmt.query_row([user], |row| {
                Ok(UserRow {
                    last_seq: row.get(0)?,
                    pruned_through: row.get(1)?,
                    max_seq: row.get(2)?,
                    total: row.get(3)?,
                    unread: row.get(4)?,
                    unseen: row.get(5)?,
                    archived: row.get(6)?,
                    version: row.get(7)?,
                })
            })
            .optional()
        })
        .map_err(db_error)
}

/// `user`'s head, its staged notifications up to `last_staged` included, under `epoch` (the
/// database's: it cannot change while the store holds the file).
pub(super) fn read_head(
    conn: &Connection,
    user: &UserId,
    last_staged: Option<Seq>,
    epoch: Epoch,
) -> Result<LogHead, StoreError> {
    match read_user_row(conn, user.as_str())? {
        None => Ok(LogHead::empty(epoch)),
        Some(row) => Ok(LogHead {
            last_seq: seq_from_sql(row.with_staged(last_staged).head())?,
            pruned_through: seq_from_sql(row.pruned_through)?,
            epoch,
        }),
    }
}

/// One row of `notifications`, as stored.
struct Row {
    seq: i64,
    kind: String,
    data: String,
    created_at_ms: i64,
    session: Option<String>,
    client: Option<String>,
    except_client: Option<String>,
}

impl Row {
    /// The row from the columns `seq, type, data, created_at, session, client, except_client`.
    fn read(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Row {
            seq: row.get(0)?,
            kind: row.get(1)?,
            data: row.get(2)?,
            created_at_ms: row.get(3)?,
            session: row.get(4)?,
            client: row.get(5)?,
            except_client: row.get(6)?,
        })
    }
}

/// An inbox state from the columns `seen_at, read_at, archived_at` starting at `first`.
pub(super) fn read_state(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<ItemState> {
    Ok(ItemState {
        seen_at_ms: row.get(first)?,
        read_at_ms: row.get(first + 1)?,
        archived_at_ms: row.get(first + 2)?,
    })
}

/// `user`'s counts: those of its `users` row plus its tail (see [`UserRow::counts`]).
pub(super) fn read_counts(conn: &Connection, user: &str) -> Result<InboxCounts, StoreError> {
    match read_user_row(conn, user)? {
        None => Ok(InboxCounts::default()),
        Some(row) => row.counts(user),
    }
}

/// The index each inbox status walks (`None`: the primary key) and the condition of the status.
/// The condition implies the partial index's own, which is what lets SQLite use it (and `INDEXED
/// BY` makes sure it does).
pub(super) fn inbox_status_sql(status: InboxStatus) -> (Option<&'static str>, &'static str) {
    match status {
        InboxStatus::All => (None, "archived_at IS NULL"),
        InboxStatus::Unread => (None, "read_at IS NULL AND archived_at IS NULL"),
        InboxStatus::Unseen => (None, "seen_at IS NULL AND archived_at IS NULL"),
        InboxStatus::Read => (Some("inbox_read"), "read_at IS NOT NULL AND archived_at IS NULL"),
        InboxStatus::Archived => (Some("inbox_archived"), "archived_at IS NOT NULL"),
    }
}

/// The query of an inbox page: `?1` user, `?2` before (exclusive), `?3` limit, and `?4` type if
/// `by_type`. Newest first, a range of the status's index (or of the primary key) from `before`
/// down, never a scan of the table nor a sort; it stops at the `limit`-th row that matches (see
/// [`SCHEMA_V3`](super::schema::SCHEMA_V3) for what that costs).
pub fn inbox_list_sql(status: InboxStatus, by_type: bool) -> String {
    let (index, condition) = inbox_status_sql(status);
    let indexed_by = index.map(|index| format!(" INDEXED BY {index}")).unwrap_or_default();
    let type_condition = if by_type { " AND type = ?4" } else { "" };
    format!(
        "SELECT seq, type, data, created_at, session, client, except_client, seen_at, read_at, archived_at
         FROM notifications{indexed_by}
         WHERE user = ?1 AND seq < ?2 AND {condition}{type_condition}
         ORDER BY seq DESC LIMIT ?3"
    )
}

/// A page of `user`'s inbox, its `staged` notifications (taken before this snapshot) included.
pub(super) fn read_inbox_page(
    conn: &Connection,
    user: &UserId,
    query: &InboxQuery,
    mut staged: Vec<Arc<Notification>>,
) -> Result<InboxPage, StoreError> {
    let Some(row) = read_user_row(conn, user.as_str())? else {
        return Ok(InboxPage { items: Vec::new(), next_before: None, counts: InboxCounts::default() });
    };
    // Those settled since `staged` was taken are in this snapshot's `notifications`.
    let settled_head = row.head();
    staged.retain(|n| n.seq.is_some_and(|seq| sql_seq(seq) > settled_head));
    let counts = row.with_staged(staged.last().and_then(|n| n.seq)).counts(user.as_str())?;
    if query.limit == 0 {
        return Ok(InboxPage { items: Vec::new(), next_before: None, counts });
    }
    let before = query.before.map_or(i64::MAX, sql_seq);
    // One more than asked: whether it exists says whether there is a next page.
    let mut fetch = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
    if query.before.is_none() && query.kind.is_none() {
        // The first page of a status: the counts (same snapshot) say how many rows match in
        // all, so the walk stops at the last of them instead of going on to the log's start.
        let matching = match query.status {
            InboxStatus::All => counts.total,
            InboxStatus::Unread => counts.unread,
            InboxStatus::Unseen => counts.unseen,
            InboxStatus::Read => counts.total.saturating_sub(counts.unread),
            InboxStatus::Archived => counts.archived,
        };
        fetch = fetch.min(i64::try_from(matching).unwrap_or(i64::MAX));
        if fetch == 0 {
            return Ok(InboxPage { items: Vec::new(), next_before: None, counts });
        }
    }
    // Staged notifications come first: they are the newest, and each is in the inbox, unseen
    // and unread (a mark or delete settles its user first).
    let mut items: Vec<InboxItem> = Vec::new();
    if matches!(query.status, InboxStatus::All | InboxStatus::Unread | InboxStatus::Unseen) {
        items.extend(
            staged
                .iter()
                .rev()
                .filter(|n| n.seq.is_some_and(|seq| sql_seq(seq) < before))
                .filter(|n| query.kind.as_deref().is_none_or(|kind| *n.kind == *kind))
                .take(usize::try_from(fetch).unwrap_or(usize::MAX))
                .map(|n| InboxItem { notification: Arc::clone(n), state: ItemState::default() }),
        );
    }
    fetch -= items.len() as i64;
    let sql = inbox_list_sql(query.status, query.kind.is_some());
    let rows: Vec<(Row, ItemState)> = if fetch == 0 {
        Vec::new()
    } else {
        conn.prepare_cached(&sql)
            .and_then(|mut stmt| {
                let map = |row: &rusqlite::Row<'_>| Ok((Row::read(row)?, read_state(row, 7)?));
                match &query.kind {
                    Some(kind) => stmt.query_map(params![user.as_str(), before, fetch, kind], map)?.collect(),
                    None => stmt.query_map(params![user.as_str(), before, fetch], map)?.collect(),
                }
            })
            .map_err(db_error)?
    };
    for (row, state) in rows {
        items.push(InboxItem { notification: row.into_notification(user)?, state });
    }
    let more = items.len() > query.limit;
    items.truncate(query.limit);
    let next_before = if more { items.last().map(InboxItem::seq) } else { None };
    Ok(InboxPage { items, next_before, counts })
}

impl Row {
    fn into_notification(self, user: &UserId) -> Result<Arc<Notification>, StoreError> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{what} of notification {user}/{}: {e}", self.seq))
        };
        let data = RawValue::from_string(self.data.clone()).map_err(|e| corrupt("data", &e))?;
        let audience = Audience {
            session: self
                .session
                .as_deref()
                .map(SessionId::new)
                .transpose()
                .map_err(|e| corrupt("session", &e))?,
            client: self
                .client
                .as_deref()
                .map(ClientId::new)
                .transpose()
                .map_err(|e| corrupt("client", &e))?,
            except_client: self
                .except_client
                .as_deref()
                .map(ClientId::new)
                .transpose()
                .map_err(|e| corrupt("except_client", &e))?,
        };
        Ok(Arc::new(Notification::new(
            user.clone(),
            Some(seq_from_sql(self.seq)?),
            Arc::from(self.kind),
            Arc::from(data),
            self.created_at_ms,
            audience,
        )))
    }
}

fn read_notifications(
    conn: &Connection,
    user: &UserId,
    after: Seq,
    limit: usize,
) -> Result<Vec<Arc<Notification>>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = conn
        .prepare_cached(
            "SELECT seq, type, data, created_at, session, client, except_client FROM notifications
             WHERE user = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![user.as_str(), sql_seq(after), limit], Row::read)?
                .collect::<rusqlite::Result<Vec<Row>>>()
        })
        .map_err(db_error)?;
    rows.into_iter().map(|row| row.into_notification(user)).collect()
}

/// A page of up to `limit` of `user`'s notifications after `after`, oldest first, with its head:
/// the settled ones from this snapshot, then the `staged` ones (taken before it, with seqs above
/// `after`) that follow them; `last_staged` is the user's last staged seq, for the head.
pub(super) fn read_log_page(
    conn: &Connection,
    user: &UserId,
    after: Seq,
    limit: usize,
    staged: Vec<Arc<Notification>>,
    last_staged: Option<Seq>,
    epoch: Epoch,
) -> Result<LogPage, StoreError> {
    let head = read_head(conn, user, last_staged, epoch)?;
    let mut notifications = Vec::new();
    if limit > 0 && after < head.last_seq {
        notifications = read_notifications(conn, user, after, limit)?;
        // Staged ones follow on from the settled ones (those settled since `staged` was
        // taken are in both: only the ones after the last read are added).
        let from = notifications.last().and_then(|n| n.seq).unwrap_or(after);
        let room = limit - notifications.len();
        notifications.extend(staged.into_iter().filter(|n| n.seq > Some(from)).take(room));
    }
    Ok(LogPage { notifications, head })
}

/// `user`'s inbox counts, its staged notifications up to `last_staged` included.
pub(super) fn read_inbox_counts(
    conn: &Connection,
    user: &UserId,
    last_staged: Option<Seq>,
) -> Result<InboxCounts, StoreError> {
    match read_user_row(conn, user.as_str())? {
        None => Ok(InboxCounts::default()),
        Some(row) => row.with_staged(last_staged).counts(user.as_str()),
    }
}

/// `user`'s recorded closes, one per session (`None`: all sessions), in no particular order.
pub(super) fn read_revocations(conn: &Connection, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
    let rows: Vec<(String, i64)> = conn
        .prepare_cached("SELECT session, closed_at FROM revocations WHERE user = ?1")
        .and_then(|mut stmt| stmt.query_map([user.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?.collect())
        .map_err(db_error)?;
    rows.into_iter()
        .map(|(session, closed_at)| {
            let session = session_from_sql(&session, "revocations")?;
            let closed_at_secs = u64::try_from(closed_at).map_err(|_| {
                StoreError::Corrupt(format!("negative close time {closed_at} in revocations"))
            })?;
            Ok(Revocation { session, closed_at_secs })
        })
        .collect()
}

/// A topic of `topic_listens`.
fn topic_from_sql(topic: &str) -> Result<Topic, StoreError> {
    Topic::new(topic).map_err(|e| StoreError::Corrupt(format!("topic {topic:?} in topic_listens: {e}")))
}

/// A user id of `topic_listens`.
fn user_from_sql(user: &str) -> Result<UserId, StoreError> {
    UserId::new(user).map_err(|e| StoreError::Corrupt(format!("user id in topic_listens: {e}")))
}

/// The topics `user` listens to at `session`'s scope (`None`: user scope), sorted: a range of
/// the primary key. The writes read it too, in the writer's transaction.
pub(super) fn read_scope_topics(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
) -> Result<Vec<Topic>, StoreError> {
    let topics: Vec<String> = conn
        .prepare_cached("SELECT topic FROM topic_listens WHERE user = ?1 AND session = ?2 ORDER BY topic")
        .and_then(|mut stmt| {
            stmt.query_map(params![user.as_str(), sql_session(session)], |row| row.get(0))?.collect()
        })
        .map_err(db_error)?;
    topics.iter().map(|topic| topic_from_sql(topic)).collect()
}

/// Everything `user` listens to, user scope (`''`) first, then each session's, topics sorted
/// within each: the primary key's order, one range of it.
pub(super) fn read_listens(conn: &Connection, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
    let rows: Vec<(String, String)> = conn
        .prepare_cached("SELECT session, topic FROM topic_listens WHERE user = ?1 ORDER BY session, topic")
        .and_then(|mut stmt| stmt.query_map([user.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?.collect())
        .map_err(db_error)?;
    rows.iter()
        .map(|(session, topic)| {
            Ok(StoredListen {
                session: session_from_sql(session, "topic_listens")?,
                topic: topic_from_sql(topic)?,
            })
        })
        .collect()
}

/// Up to `limit` of those who listen to `topic`, by user then session (user scope, `''`,
/// first), after `after` (exclusive): a range of `topic_listens_by_topic` from `after` on. With
/// no `after`, from `('', '')`, before every (user, session): a user id is never empty.
pub(super) fn read_topic_listeners(
    conn: &Connection,
    topic: &Topic,
    after: Option<&TopicListener>,
    limit: usize,
) -> Result<Vec<TopicListener>, StoreError> {
    let (after_user, after_session) =
        after.map_or(("", ""), |after| (after.user.as_str(), sql_session(after.session.as_ref())));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<(String, String)> = conn
        .prepare_cached(TOPIC_LISTENERS_SQL)
        .and_then(|mut stmt| {
            stmt.query_map(params![topic.as_str(), after_user, after_session, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect()
        })
        .map_err(db_error)?;
    rows.iter()
        .map(|(user, session)| {
            Ok(TopicListener {
                user: user_from_sql(user)?,
                session: session_from_sql(session, "topic_listens")?,
            })
        })
        .collect()
}

/// The query of a page of [`read_topic_listeners`]: `?1` topic, `?2` and `?3` the (user,
/// session) the page starts after, `?4` limit.
pub(super) const TOPIC_LISTENERS_SQL: &str = "
    SELECT user, session FROM topic_listens INDEXED BY topic_listens_by_topic
    WHERE topic = ?1 AND (user, session) > (?2, ?3)
    ORDER BY user, session LIMIT ?4";

/// `topic`'s head; all zeros for a topic never published durably. One primary-key lookup.
fn read_topic_head(conn: &Connection, topic: &Topic) -> Result<TopicHead, StoreError> {
    let row: Option<(i64, i64)> = conn
        .prepare_cached("SELECT last_tseq, pruned_through FROM topic_heads WHERE topic = ?1")
        .and_then(|mut stmt| {
            stmt.query_row([topic.as_str()], |row| Ok((row.get(0)?, row.get(1)?))).optional()
        })
        .map_err(db_error)?;
    match row {
        None => Ok(TopicHead::default()),
        Some((last_tseq, pruned_through)) => Ok(TopicHead {
            last_tseq: seq_from_sql(last_tseq)?,
            pruned_through: seq_from_sql(pruned_through)?,
        }),
    }
}

/// The head of each of `topics`, in order, all from this read transaction's snapshot.
pub(super) fn read_topic_heads(conn: &Connection, topics: &[Topic]) -> Result<Vec<TopicHead>, StoreError> {
    topics.iter().map(|topic| read_topic_head(conn, topic)).collect()
}

/// The query of a page of [`read_topic_page`]: `?1` topic, `?2` the tseq it starts after, `?3`
/// limit. One range of `topic_log`'s primary key.
pub(super) const TOPIC_PAGE_SQL: &str = "
    SELECT tseq, type, data, created_at, except_user, except_client FROM topic_log
    WHERE topic = ?1 AND tseq > ?2 ORDER BY tseq LIMIT ?3";

/// Up to `limit` events of `topic` after `after`, oldest first, with its head, from one snapshot.
pub(super) fn read_topic_page(
    conn: &Connection,
    topic: &Topic,
    after: Seq,
    limit: usize,
    epoch: Epoch,
) -> Result<TopicPage, StoreError> {
    let head = read_topic_head(conn, topic)?;
    let mut events = Vec::new();
    if limit > 0 && after < head.last_tseq {
        type EventRow = (i64, String, String, i64, Option<String>, Option<String>);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<EventRow> = conn
            .prepare_cached(TOPIC_PAGE_SQL)
            .and_then(|mut stmt| {
                stmt.query_map(params![topic.as_str(), sql_seq(after), limit], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?, row.get(5)?))
                })?
                .collect()
            })
            .map_err(db_error)?;
        events.reserve(rows.len());
        for (tseq, kind, data, created_at_ms, except_user, except_client) in rows {
            let corrupt = |what: &str, e: &dyn std::fmt::Display| {
                StoreError::Corrupt(format!("{what} of topic {topic}'s tseq {tseq}: {e}"))
            };
            let data = RawValue::from_string(data).map_err(|e| corrupt("data", &e))?;
            let except_user =
                except_user.map(UserId::new).transpose().map_err(|e| corrupt("except_user", &e))?;
            let except_client =
                except_client.map(ClientId::new).transpose().map_err(|e| corrupt("except_client", &e))?;
            events.push(Arc::new(TopicEvent::with_tseq(
                Some(seq_from_sql(tseq)?),
                topic.clone(),
                Arc::from(kind),
                Arc::from(data),
                created_at_ms,
                except_user,
                except_client,
            )));
        }
    }
    Ok(TopicPage { events, head, epoch })
}

/// The job with `id`, if the store has it. One primary-key lookup.
pub(super) fn read_job(conn: &Connection, id: &str) -> Result<Option<FanoutJob>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT job FROM jobs WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
        .map_err(db_error)?;
    json.as_deref().map(crate::job_from_json).transpose()
}

/// The query of [`read_unfinished_jobs`]: `?1` limit. The first entries of the partial index
/// `jobs_unfinished`, which is in this order.
pub(super) const UNFINISHED_JOBS_SQL: &str = "
    SELECT job FROM jobs WHERE finished_at IS NULL ORDER BY created_at, id LIMIT ?1";

/// Up to `limit` jobs not finished, oldest first (then by id).
pub(super) fn read_unfinished_jobs(conn: &Connection, limit: usize) -> Result<Vec<FanoutJob>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows: Vec<String> = conn
        .prepare_cached(UNFINISHED_JOBS_SQL)
        .and_then(|mut stmt| stmt.query_map([limit], |row| row.get(0))?.collect())
        .map_err(db_error)?;
    rows.iter().map(|json| crate::job_from_json(json)).collect()
}

/// Every user with a push subscription, once each (an index-only scan of
/// `push_subscriptions_by_user`): what the store's `PushUsers` filter starts from.
pub(super) fn read_push_users(conn: &Connection) -> Result<Vec<String>, StoreError> {
    conn.prepare("SELECT DISTINCT user FROM push_subscriptions")
        .and_then(|mut stmt| stmt.query_map([], |row| row.get(0))?.collect())
        .map_err(db_error)
}

/// `user`'s push subscriptions, oldest first (the index `push_subscriptions_by_user`).
pub(super) fn read_push_subscriptions(
    conn: &Connection,
    user: &UserId,
) -> Result<Vec<herald_core::PushSubscription>, StoreError> {
    let rows: Vec<String> = conn
        .prepare_cached("SELECT subscription FROM push_subscriptions WHERE user = ?1 ORDER BY created_at, id")
        .and_then(|mut stmt| stmt.query_map([user.as_str()], |row| row.get(0))?.collect())
        .map_err(db_error)?;
    rows.iter().map(|json| crate::push_from_json(json)).collect()
}

/// The push subscription with this id.
pub(super) fn read_push_subscription(
    conn: &Connection,
    id: &str,
) -> Result<Option<herald_core::PushSubscription>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT subscription FROM push_subscriptions WHERE id = ?1")
        .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
        .map_err(db_error)?;
    json.as_deref().map(crate::push_from_json).transpose()
}

/// When the next delivery of the push outbox is due or the next push marker is to be expanded
/// (ms): the first entry of `push_outbox_by_due_at` and of `push_pending_by_expand_by`.
pub(super) fn read_push_next_due(tx: &rusqlite::Transaction<'_>) -> Result<Option<i64>, StoreError> {
    tx.prepare_cached(
        "SELECT MIN(t) FROM (SELECT MIN(due_at) AS t FROM push_outbox
                              UNION ALL SELECT MIN(expand_by) FROM push_pending)",
    )
    .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
    .map_err(db_error)
}

/// How many deliveries the push outbox holds.
pub(super) fn read_push_outbox_depth(tx: &rusqlite::Transaction<'_>) -> Result<u64, StoreError> {
    let count: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM push_outbox")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get(0)))
        .map_err(db_error)?;
    Ok(u64::try_from(count).unwrap_or(0))
}
