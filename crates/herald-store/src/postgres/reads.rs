//! The reads: heads, log pages, inbox pages and counts, revocations, listens, topic heads and
//! pages, fan-out jobs, and the probe's ping. Each
//! is one statement, so what it returns comes from one snapshot (a page and its head, a page and
//! its counts), on a pooled connection outside any transaction. Nothing here writes.
//!
//! Seqs of a user become visible in order (the store's contract): every append to a user
//! updates the user's `herald_users` row, so two appends to one user commit one after the other,
//! in seq order, whichever nodes they come from; a snapshot that sees seq `n` sees every seq
//! below it.

use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, GenericClient};
use herald_core::{
    Audience, ClientId, Epoch, FanoutJob, InboxCounts, InboxItem, InboxPage, InboxQuery, InboxStatus,
    ItemState, LogHead, LogPage, Notification, Revocation, Seq, SessionId, StoreError, StoredListen, Topic,
    TopicEvent, TopicHead, TopicListener, TopicPage, UserId,
};
use serde_json::value::RawValue;
use tokio_postgres::Row;

use super::sql::{Error, count_from_sql, seq_from_sql, session_from_sql, sql_seq, sql_session};

/// One round trip that touches no table: the store's probe (whether the database answers).
pub(super) async fn ping(client: &ClientWrapper) -> Result<(), Error> {
    Ok(client.batch_execute("SELECT 1").await?)
}

/// The columns of a notification, in the order [`notification_from_row`] reads them (from
/// `offset` on).
pub(super) const NOTIFICATION_COLUMNS: &str = "n.seq, n.type, n.data, n.created_at, n.session, n.client, n.except_client, n.seen_at, n.read_at, n.archived_at";

/// The columns of a user's counts, in the order [`counts_from_row`] reads them.
pub(super) const COUNTS_COLUMNS: &str = "u.total, u.unread, u.unseen, u.archived, u.inbox_version";

/// The notification of `user` in `row` (columns [`NOTIFICATION_COLUMNS`] from `offset`), with
/// its inbox state.
pub(super) fn notification_from_row(
    user: &UserId,
    row: &Row,
    offset: usize,
) -> Result<(Arc<Notification>, ItemState), StoreError> {
    let seq: i64 = row.get(offset);
    let kind: String = row.get(offset + 1);
    let data: String = row.get(offset + 2);
    let data = RawValue::from_string(data)
        .map_err(|e| StoreError::Corrupt(format!("data of {user}'s seq {seq} is not JSON: {e}")))?;
    let id = |column: usize| -> Option<String> { row.get(offset + column) };
    let audience = Audience {
        session: id(4).map(SessionId::new).transpose().map_err(|e| corrupt_id(user, seq, e))?,
        client: id(5).map(ClientId::new).transpose().map_err(|e| corrupt_id(user, seq, e))?,
        except_client: id(6).map(ClientId::new).transpose().map_err(|e| corrupt_id(user, seq, e))?,
    };
    let notification = Notification::new(
        user.clone(),
        Some(seq_from_sql(seq)?),
        Arc::from(kind),
        Arc::from(data),
        row.get(offset + 3),
        audience,
    );
    let state = ItemState {
        seen_at_ms: row.get(offset + 7),
        read_at_ms: row.get(offset + 8),
        archived_at_ms: row.get(offset + 9),
    };
    Ok((Arc::new(notification), state))
}

fn corrupt_id(user: &UserId, seq: i64, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("audience of {user}'s seq {seq}: {e}"))
}

/// A user's counts from `row` (columns [`COUNTS_COLUMNS`] from `offset`).
pub(super) fn counts_from_row(row: &Row, offset: usize) -> Result<InboxCounts, StoreError> {
    let count = |i: usize| count_from_sql(row.get(offset + i));
    Ok(InboxCounts {
        total: count(0)?,
        unread: count(1)?,
        unseen: count(2)?,
        archived: count(3)?,
        version: count(4)?,
    })
}

/// `user`'s head; (0, 0) for a user never seen. `epoch` is asked once the statement has
/// answered (see [`head_from`]).
pub(super) async fn read_head(
    client: &ClientWrapper,
    user: &UserId,
    epoch: impl FnOnce() -> Epoch,
) -> Result<LogHead, Error> {
    let statement =
        client.prepare_cached("SELECT last_seq, pruned_through FROM herald_users WHERE user_id = $1").await?;
    let row = client.query_opt(&statement, &[&user.as_str()]).await?;
    head_from(row.as_ref(), epoch)
}

/// The head in the first two columns of `row` (`None`: a user never seen), under the epoch
/// `epoch` gives: the pool's, asked only now that the statement has answered. The connection
/// that ran it read its database's epoch when it was made (the pool's hook), so the epoch asked
/// now is that one or a newer one (a failover makes every connection new), never an older one:
/// a head read from the log after a failover is never paired with the epoch from before it
/// (which would let a client of the old epoch resume against the new log's seqs).
fn head_from(row: Option<&Row>, epoch: impl FnOnce() -> Epoch) -> Result<LogHead, Error> {
    let epoch = epoch();
    match row {
        Some(row) => Ok(LogHead {
            last_seq: seq_from_sql(row.get(0))?,
            pruned_through: seq_from_sql(row.get(1))?,
            epoch,
        }),
        None => Ok(LogHead::empty(epoch)),
    }
}

/// The last seq of each of `users`, in order; 0 for a user never seen. One statement.
pub(super) async fn read_last_seqs(client: &ClientWrapper, users: &[UserId]) -> Result<Vec<Seq>, Error> {
    let statement =
        client.prepare_cached("SELECT user_id, last_seq FROM herald_users WHERE user_id = ANY($1)").await?;
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let mut found = std::collections::HashMap::with_capacity(users.len());
    for row in client.query(&statement, &[&ids]).await? {
        let user: &str = row.get(0);
        found.insert(user.to_owned(), seq_from_sql(row.get(1))?);
    }
    Ok(users.iter().map(|u| found.get(u.as_str()).copied().unwrap_or(0)).collect())
}

/// Up to `limit` notifications of `user` after `after`, oldest first, with the head, from one
/// snapshot: the head row joined with the page (a user never seen has no row, hence no page).
pub(super) async fn read_log_page(
    client: &ClientWrapper,
    user: &UserId,
    after: Seq,
    limit: usize,
    epoch: impl FnOnce() -> Epoch,
) -> Result<LogPage, Error> {
    let statement = client
        .prepare_cached(&format!(
            "SELECT u.last_seq, u.pruned_through, {NOTIFICATION_COLUMNS}
             FROM herald_users u LEFT JOIN LATERAL (
                 SELECT * FROM herald_notifications
                 WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
             ) n ON true
             WHERE u.user_id = $1"
        ))
        .await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&statement, &[&user.as_str(), &sql_seq(after), &limit]).await?;
    let head = head_from(rows.first(), epoch)?;
    let mut notifications = Vec::with_capacity(rows.len());
    for row in &rows {
        // The LEFT JOIN's one row of NULLs when the page is empty.
        if row.get::<_, Option<i64>>(2).is_some() {
            notifications.push(notification_from_row(user, row, 2)?.0);
        }
    }
    Ok(LogPage { notifications, head })
}

/// The condition a status's page lists (see `InboxStatus`), on `herald_notifications`.
fn status_condition(status: InboxStatus) -> &'static str {
    match status {
        InboxStatus::All => "archived_at IS NULL",
        InboxStatus::Unread => "read_at IS NULL AND archived_at IS NULL",
        InboxStatus::Unseen => "seen_at IS NULL AND archived_at IS NULL",
        InboxStatus::Read => "read_at IS NOT NULL AND archived_at IS NULL",
        InboxStatus::Archived => "archived_at IS NOT NULL",
    }
}

/// A page of `user`'s inbox with the counts, from one snapshot. One row more than `limit` is
/// read, to tell whether a next page exists.
pub(super) async fn read_inbox_page(
    client: &ClientWrapper,
    user: &UserId,
    query: &InboxQuery,
) -> Result<InboxPage, Error> {
    let by_kind = if query.kind.is_some() { "AND type = $4" } else { "AND $4::text IS NULL" };
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COUNTS_COLUMNS}, {NOTIFICATION_COLUMNS}
             FROM herald_users u LEFT JOIN LATERAL (
                 SELECT * FROM herald_notifications
                 WHERE user_id = $1 AND seq < $2 AND {} {by_kind}
                 ORDER BY seq DESC LIMIT $3
             ) n ON true
             WHERE u.user_id = $1",
            status_condition(query.status)
        ))
        .await?;
    let before = query.before.map_or(i64::MAX, sql_seq);
    let limit = i64::try_from(query.limit).unwrap_or(i64::MAX).saturating_add(1);
    let rows = client.query(&statement, &[&user.as_str(), &before, &limit, &query.kind]).await?;
    let Some(first) = rows.first() else { return Ok(InboxPage::default()) };
    let counts = counts_from_row(first, 0)?;
    let mut items = Vec::with_capacity(rows.len().min(query.limit));
    let mut more = false;
    for row in &rows {
        if row.get::<_, Option<i64>>(5).is_none() {
            continue;
        }
        if items.len() == query.limit {
            more = true;
            break;
        }
        let (notification, state) = notification_from_row(user, row, 5)?;
        items.push(InboxItem { notification, state });
    }
    let next_before = if more { items.last().map(InboxItem::seq) } else { None };
    Ok(InboxPage { items, next_before, counts })
}

/// `user`'s counts: one row by its primary key.
pub(super) async fn read_inbox_counts(client: &ClientWrapper, user: &UserId) -> Result<InboxCounts, Error> {
    let statement = client
        .prepare_cached(&format!("SELECT {COUNTS_COLUMNS} FROM herald_users u WHERE u.user_id = $1"))
        .await?;
    match client.query_opt(&statement, &[&user.as_str()]).await? {
        Some(row) => Ok(counts_from_row(&row, 0)?),
        None => Ok(InboxCounts::default()),
    }
}

/// Every revocation of `user` still remembered.
pub(super) async fn read_revocations(
    client: &ClientWrapper,
    user: &UserId,
) -> Result<Vec<Revocation>, Error> {
    let statement =
        client.prepare_cached("SELECT session, closed_at FROM herald_revocations WHERE user_id = $1").await?;
    let rows = client.query(&statement, &[&user.as_str()]).await?;
    let mut revocations = Vec::with_capacity(rows.len());
    for row in rows {
        let session = session_from_sql(row.get(0), "herald_revocations")?;
        let closed_at: i64 = row.get(1);
        let closed_at_secs = u64::try_from(closed_at)
            .map_err(|_| StoreError::Corrupt(format!("negative revocation time of {user}")))?;
        revocations.push(Revocation { session, closed_at_secs });
    }
    Ok(revocations)
}

/// A topic of `herald_topic_listens`.
fn topic_from_sql(topic: &str) -> Result<Topic, StoreError> {
    Topic::new(topic)
        .map_err(|e| StoreError::Corrupt(format!("topic {topic:?} in herald_topic_listens: {e}")))
}

/// The topics `user` listens to at `session`'s scope (`None`: user scope), sorted: a range of
/// the primary key. The writes read it too, inside their transaction.
pub(super) async fn read_scope_topics<C: GenericClient>(
    client: &C,
    user: &UserId,
    session: Option<&SessionId>,
) -> Result<Vec<Topic>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT topic FROM herald_topic_listens WHERE user_id = $1 AND session = $2 ORDER BY topic",
        )
        .await?;
    let rows = client.query(&statement, &[&user.as_str(), &sql_session(session)]).await?;
    Ok(rows.iter().map(|row| topic_from_sql(row.get(0))).collect::<Result<_, _>>()?)
}

/// Everything `user` listens to, user scope (`''`) first, then each session's, topics sorted
/// within each: the primary key's order, one range of it.
pub(super) async fn read_listens(client: &ClientWrapper, user: &UserId) -> Result<Vec<StoredListen>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT session, topic FROM herald_topic_listens WHERE user_id = $1 ORDER BY session, topic",
        )
        .await?;
    let rows = client.query(&statement, &[&user.as_str()]).await?;
    let mut listens = Vec::with_capacity(rows.len());
    for row in &rows {
        listens.push(StoredListen {
            session: session_from_sql(row.get(0), "herald_topic_listens")?,
            topic: topic_from_sql(row.get(1))?,
        });
    }
    Ok(listens)
}

/// Up to `limit` of those who listen to `topic`, by user then session (user scope, `''`,
/// first), after `after` (exclusive): a range of `herald_topic_listens_by_topic` from `after`
/// on. With no `after`, from `('', '')`, before every (user, session): a user id is never empty.
pub(super) async fn read_topic_listeners(
    client: &ClientWrapper,
    topic: &Topic,
    after: Option<&TopicListener>,
    limit: usize,
) -> Result<Vec<TopicListener>, Error> {
    let statement = client.prepare_cached(TOPIC_LISTENERS_SQL).await?;
    let (after_user, after_session) =
        after.map_or(("", ""), |after| (after.user.as_str(), sql_session(after.session.as_ref())));
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&statement, &[&topic.as_str(), &after_user, &after_session, &limit]).await?;
    let mut listeners = Vec::with_capacity(rows.len());
    for row in &rows {
        let user: &str = row.get(0);
        listeners.push(TopicListener {
            user: UserId::new(user)
                .map_err(|e| StoreError::Corrupt(format!("user id in herald_topic_listens: {e}")))?,
            session: session_from_sql(row.get(1), "herald_topic_listens")?,
        });
    }
    Ok(listeners)
}

/// The query of a page of [`read_topic_listeners`]: `$1` topic, `$2` and `$3` the (user,
/// session) the page starts after, `$4` limit.
pub(super) const TOPIC_LISTENERS_SQL: &str = "
    SELECT user_id, session FROM herald_topic_listens
    WHERE topic = $1 AND (user_id, session) > ($2, $3)
    ORDER BY user_id, session LIMIT $4";

/// A topic's head from the first two columns of `row` (`None`: a topic never published durably).
fn topic_head_from(row: Option<&Row>) -> Result<TopicHead, StoreError> {
    match row {
        Some(row) => {
            Ok(TopicHead { last_tseq: seq_from_sql(row.get(0))?, pruned_through: seq_from_sql(row.get(1))? })
        }
        None => Ok(TopicHead::default()),
    }
}

/// The head of each of `topics`, in order (zeros for a topic never published durably), and the
/// epoch asked once the statement has answered (see [`head_from`]). One statement.
pub(super) async fn read_topic_heads(
    client: &ClientWrapper,
    topics: &[Topic],
    epoch: impl FnOnce() -> Epoch,
) -> Result<(Vec<TopicHead>, Epoch), Error> {
    let statement = client
        .prepare_cached(
            "SELECT last_tseq, pruned_through, topic FROM herald_topic_heads WHERE topic = ANY($1)",
        )
        .await?;
    let names: Vec<&str> = topics.iter().map(Topic::as_str).collect();
    let rows = client.query(&statement, &[&names]).await?;
    let epoch = epoch();
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let topic: &str = row.get(2);
        found.insert(topic, topic_head_from(Some(row))?);
    }
    let heads = topics.iter().map(|t| found.get(t.as_str()).copied().unwrap_or_default()).collect();
    Ok((heads, epoch))
}

/// The query of [`read_topic_page`]: the head row joined with up to `$3` events of topic `$1`
/// after tseq `$2` (a range of the primary key). A topic never published has no row.
pub(super) const TOPIC_PAGE_SQL: &str = "
    SELECT h.last_tseq, h.pruned_through, e.tseq, e.type, e.data, e.created_at, e.except_user, e.except_client
    FROM herald_topic_heads h LEFT JOIN LATERAL (
        SELECT * FROM herald_topic_log WHERE topic = $1 AND tseq > $2 ORDER BY tseq LIMIT $3
    ) e ON true
    WHERE h.topic = $1";

/// Up to `limit` events of `topic` after `after`, oldest first, with the head, from one
/// statement, and the epoch asked once it has answered.
pub(super) async fn read_topic_page(
    client: &ClientWrapper,
    topic: &Topic,
    after: Seq,
    limit: usize,
    epoch: impl FnOnce() -> Epoch,
) -> Result<TopicPage, Error> {
    let statement = client.prepare_cached(TOPIC_PAGE_SQL).await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client.query(&statement, &[&topic.as_str(), &sql_seq(after), &limit]).await?;
    let epoch = epoch();
    let head = topic_head_from(rows.first())?;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        // The LEFT JOIN's one row of NULLs when the page is empty.
        let Some(tseq) = row.get::<_, Option<i64>>(2) else { continue };
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("{what} of topic {topic}'s tseq {tseq}: {e}"))
        };
        let kind: String = row.get(3);
        let data = RawValue::from_string(row.get(4)).map_err(|e| corrupt("data", &e))?;
        let except_user: Option<String> = row.get(6);
        let except_client: Option<String> = row.get(7);
        events.push(Arc::new(TopicEvent::with_tseq(
            Some(seq_from_sql(tseq)?),
            topic.clone(),
            Arc::from(kind),
            Arc::from(data),
            row.get(5),
            except_user.map(UserId::new).transpose().map_err(|e| corrupt("except_user", &e))?,
            except_client.map(ClientId::new).transpose().map_err(|e| corrupt("except_client", &e))?,
        )));
    }
    Ok(TopicPage { events, head, epoch })
}

/// The job with `id`, if the store has it. One primary-key lookup.
pub(super) async fn read_job(client: &ClientWrapper, id: &str) -> Result<Option<FanoutJob>, Error> {
    let statement = client.prepare_cached("SELECT job FROM herald_jobs WHERE id = $1").await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    Ok(row.map(|row| crate::job_from_json(row.get(0))).transpose()?)
}

/// The query of [`read_unfinished_jobs`]: `$1` limit. The first entries of the partial index
/// `herald_jobs_unfinished`, which is in this order.
pub(super) const UNFINISHED_JOBS_SQL: &str =
    "SELECT job FROM herald_jobs WHERE finished_at IS NULL ORDER BY created_at, id LIMIT $1";

/// Up to `limit` jobs not finished, oldest first (then by id, bytewise).
pub(super) async fn read_unfinished_jobs(
    client: &ClientWrapper,
    limit: usize,
) -> Result<Vec<FanoutJob>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let statement = client.prepare_cached(UNFINISHED_JOBS_SQL).await?;
    let rows = client.query(&statement, &[&limit]).await?;
    Ok(rows.iter().map(|row| crate::job_from_json(row.get(0))).collect::<Result<_, _>>()?)
}

/// `user`'s push subscriptions, oldest first (`herald_push_subscriptions_by_user`).
pub(super) async fn read_push_subscriptions(
    client: &impl GenericClient,
    user: &UserId,
) -> Result<Vec<herald_core::PushSubscription>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT subscription FROM herald_push_subscriptions WHERE user_id = $1 ORDER BY created_at, id",
        )
        .await?;
    let rows = client.query(&statement, &[&user.as_str()]).await?;
    Ok(rows.iter().map(|row| crate::push_from_json(row.get(0))).collect::<Result<_, _>>()?)
}

/// The push subscription with this id.
pub(super) async fn read_push_subscription(
    client: &ClientWrapper,
    id: &str,
) -> Result<Option<herald_core::PushSubscription>, Error> {
    let statement =
        client.prepare_cached("SELECT subscription FROM herald_push_subscriptions WHERE id = $1").await?;
    let row = client.query_opt(&statement, &[&id]).await?;
    Ok(row.map(|row| crate::push_from_json(row.get(0))).transpose()?)
}

/// When the next delivery is due or the next marker is to be expanded (the first entry of
/// `herald_push_outbox_by_due_at` and of `herald_push_pending_by_expand_by`).
pub(super) async fn read_push_next_due(client: &ClientWrapper) -> Result<Option<i64>, Error> {
    let statement = client
        .prepare_cached(
            "SELECT LEAST((SELECT MIN(due_at) FROM herald_push_outbox),
                          (SELECT MIN(expand_by) FROM herald_push_pending))",
        )
        .await?;
    Ok(client.query_one(&statement, &[]).await?.get(0))
}

/// How many deliveries the push outbox holds.
pub(super) async fn read_push_outbox_depth(client: &ClientWrapper) -> Result<u64, Error> {
    let statement = client.prepare_cached("SELECT COUNT(*) FROM herald_push_outbox").await?;
    let count: i64 = client.query_one(&statement, &[]).await?.get(0);
    Ok(u64::try_from(count).unwrap_or(0))
}
