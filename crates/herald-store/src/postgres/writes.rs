//! The writes, in SQL: a batch of appends (one commit for the whole batch: see `writer`, the
//! push markers an append keeps included), receipts, inbox marks and deletes, revocations,
//! listens, topic appends, fan-out jobs, the chunks of retention, and Web Push's subscriptions,
//! outbox claims and marker expansions. One job, every write of the PostgreSQL store; presence,
//! which has its own tables and no user rows, is in `presence.rs`.
//!
//! **Locks, always in one order**, so that writers on several nodes do not deadlock: idempotency
//! keys (sorted), then users' `herald_users` rows (sorted, `COLLATE "C"`, as Rust sorts strings),
//! then those users' notifications. Every write to a user's notifications holds the user's row
//! first (an append updates it, a mark or delete takes it `FOR UPDATE`, retention too): the row
//! is what serializes writers of one user, and only of that user. Retention's deletes of old
//! keys and revocations skip rows locked by a writer (`SKIP LOCKED`) instead of waiting for
//! them. Should PostgreSQL still find a deadlock, the transaction runs again (`pool::RETRIES_MAX`).
//!
//! **Topic logs** take the publish's idempotency key (if any), then the topic's
//! `herald_topic_heads` row (the upsert that gives the tseq), then that topic's events;
//! retention of topic events takes the heads it changes (sorted, `FOR UPDATE`) before their
//! events, in the same order. They share no lock with users' logs but the keys.
//!
//! **Fan-out jobs** are apart from everything: a save is one statement on its job's row.
//!
//! **Listens** are apart from the logs: a write of a user's listens takes the user's advisory
//! lock of listens ([`LISTENS_LOCK`]) and then only that user's `herald_topic_listens` rows,
//! never a `herald_users` row, so it waits on no other kind of write and none waits on it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, GenericClient, Object, Transaction};
use herald_core::inbox::CountsDelta;
use herald_core::{
    Appended, InboxChange, InboxCounts, ItemState, ListenBounds, Mark, NewNotification, NewTopicEvent,
    Notification, PrunedInbox, Receipt, ReceiptEntry, Retention, ScopeListens, Selection, Seq, SessionId,
    StoreError, Topic, TopicAppended, TopicEvent, TopicReceipt, UserId,
};
use tokio_postgres::Row;

use super::reads::{COUNTS_COLUMNS, counts_from_row, read_scope_topics};
use super::sql::{Error, seq_from_sql, sql_seq, sql_session};

/// Notifications one chunk of retention removes at most (and, separately, idempotency keys and
/// revocations). At the bound the chunk commits and the next one starts: the users' rows it
/// locks are held for one chunk only, so publishes to them wait for one chunk at most.
pub const PRUNE_CHUNK_ROWS: i64 = 10_000;

/// Retention's advisory lock: a chunk runs only if it gets it at once (`pg_try_…`), so one node
/// prunes at a time and the others skip their turn (retention runs once per cluster). Held for
/// the chunk's transaction.
const PRUNE_LOCK: &str = "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || ':herald-prune'))";

/// One `Store::append` call, as the writer batches it.
#[derive(Debug)]
pub(super) struct AppendRequest {
    pub entries: Vec<NewNotification>,
    pub key: Option<String>,
    /// The distinct push requests of the entries (by `Arc`: usually one, the publish's), with
    /// their JSON, serialized by the requester; empty when no entry has one, and then the
    /// append's statement has no push part at all.
    pub push: Vec<(Arc<herald_core::PushRequest>, String)>,
}

/// What becomes of one request of a batch once the keys are claimed.
enum Fate {
    Store,
    /// An earlier request of the batch has the same key: its receipt.
    DuplicateOf(usize),
    Duplicate(Receipt),
}

/// Runs a batch of appends on `client` and commits it: gives each entry the next seq of its
/// user, stores it, applies `max_per_user`, and records the receipts of idempotency keys. One
/// [`Appended`] per request, in order. Each request's counts are its users' counts once the
/// batch commits (which is when the append commits).
///
/// A batch without idempotency keys (the common case) is **one statement in one round trip**,
/// committed by itself (`store_entries`): no `BEGIN`, no `COMMIT`. With the small batches of a
/// cluster (each node batches its own publishes) those round trips were most of what an append
/// cost PostgreSQL. A batch with keys claims them first, so it runs in a transaction of its own:
/// the claims, the same statement, the receipts, the commit.
pub(super) async fn append_batch(
    client: &mut Object,
    retention: &Retention,
    now_ms: i64,
    batch: &[&AppendRequest],
) -> Result<Vec<Appended>, Error> {
    let max_per_user = i64::try_from(retention.max_per_user).unwrap_or(i64::MAX);
    if batch.iter().all(|request| request.key.is_none()) {
        let fates: Vec<Fate> = batch.iter().map(|_| Fate::Store).collect();
        let mut stored = store_entries(&*client, max_per_user, batch, &fates).await?;
        if let Some(users) = stored.over_max.take() {
            // Not atomic with the append, and need not be: should this node stop in between,
            // the user's next append finds the user still over the bound and prunes then.
            let tx = client.transaction().await?;
            for (user, after) in enforce_max_per_user(&tx, &users, max_per_user).await? {
                stored.counts.insert(user, after);
            }
            tx.commit().await?;
        }
        return Ok(answers(fates, stored));
    }

    let tx = client.transaction().await?;
    let fates = claim_keys(&tx, now_ms, retention, batch).await?;
    let mut stored = store_entries(&tx, max_per_user, batch, &fates).await?;
    if let Some(users) = stored.over_max.take() {
        for (user, after) in enforce_max_per_user(&tx, &users, max_per_user).await? {
            stored.counts.insert(user, after);
        }
    }
    // Receipts of the keys this batch claimed.
    let (mut keys, mut receipts) = (Vec::new(), Vec::new());
    for ((request, fate), notifications) in batch.iter().zip(&fates).zip(&stored.notifications) {
        if let (Fate::Store, Some(key), Some(notifications)) = (fate, &request.key, notifications) {
            keys.push(key.as_str());
            receipts.push(crate::receipt_json(&receipt_of(notifications))?);
        }
    }
    if !keys.is_empty() {
        let statement = tx
            .prepare_cached(
                "UPDATE herald_idempotency AS i SET receipt = t.receipt
                 FROM unnest($1::text[], $2::text[]) AS t(key, receipt) WHERE i.key = t.key",
            )
            .await?;
        tx.execute(&statement, &[&keys, &receipts]).await?;
    }
    tx.commit().await?;
    Ok(answers(fates, stored))
}

/// What `store_entries` stored.
struct Stored {
    /// Per request: its notifications, with their seqs; `None` for a request not stored (a
    /// duplicate).
    notifications: Vec<Option<Vec<Arc<Notification>>>>,
    /// The counts of every user of the batch once it is stored.
    counts: HashMap<String, InboxCounts>,
    /// The users of the batch, if one of them went over `max_per_user`.
    over_max: Option<Vec<String>>,
    /// The push markers the batch kept, of all its requests.
    push_pending: Vec<herald_core::PushMarker>,
}

/// The entries of a batch that carry a push request, one array per column (`unnest`), and the
/// batch's distinct requests as JSON (each entry names its own by a 1-based index).
#[derive(Default)]
struct PushRows<'a> {
    users: Vec<&'a str>,
    back: Vec<i64>,
    expand_by: Vec<i64>,
    request: Vec<i32>,
    requests: Vec<&'a str>,
}

impl<'a> PushRows<'a> {
    /// The push rows of the entries stored by `batch` (those whose fate is to be stored), with
    /// the `back` of each from `rows`, which lists the same entries in the same order.
    fn of(batch: &[&'a AppendRequest], fates: &[Fate], rows: &EntryRows<'a>) -> Self {
        let mut push = PushRows::default();
        if batch.iter().all(|request| request.push.is_empty()) {
            return push;
        }
        let mut index = 0;
        for (request, fate) in batch.iter().zip(fates) {
            if !matches!(fate, Fate::Store) {
                continue;
            }
            for entry in &request.entries {
                let back = rows.back[index];
                index += 1;
                let Some(wanted) = &entry.push else { continue };
                let Some((request, json)) = request.push.iter().find(|(r, _)| Arc::ptr_eq(r, wanted)) else {
                    continue;
                };
                let position = match push.requests.iter().position(|r| std::ptr::eq(*r, json.as_str())) {
                    Some(position) => position,
                    None => {
                        push.requests.push(json);
                        push.requests.len() - 1
                    }
                };
                push.users.push(entry.user.as_str());
                push.back.push(back);
                push.expand_by.push(request.expand_by_ms);
                push.request.push(i32::try_from(position + 1).unwrap_or(i32::MAX));
            }
        }
        push
    }
}

/// Stores the entries of the requests whose fate is [`Fate::Store`], in **one statement**: the
/// upsert of every user's counter row (users sorted: the order their rows are locked in; the
/// lock, the seqs and the counts at once) and, in the same statement, the insert of every
/// notification, each seq computed from its user's new `last_seq`. The entries are sent with
/// their distance from their user's last seq (`back`: the user's last entry in the batch is 0),
/// which Rust knows before the statement runs; the seqs come out as `last_seq - back`, on both
/// sides.
async fn store_entries<C: GenericClient>(
    client: &C,
    max_per_user: i64,
    batch: &[&AppendRequest],
    fates: &[Fate],
) -> Result<Stored, Error> {
    let to_store = || batch.iter().zip(fates).filter(|(_, fate)| matches!(fate, Fate::Store));
    // Entries per user, users sorted.
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for (request, _) in to_store() {
        for entry in &request.entries {
            *per_user.entry(entry.user.as_str()).or_default() += 1;
        }
    }
    let mut stored = Stored {
        notifications: Vec::with_capacity(batch.len()),
        counts: HashMap::with_capacity(per_user.len()),
        over_max: None,
        push_pending: Vec::new(),
    };
    if per_user.is_empty() {
        // Only requests without entries (an ephemeral publish recording its key).
        stored.notifications = fates.iter().map(|fate| matches!(fate, Fate::Store).then(Vec::new)).collect();
        return Ok(stored);
    }

    // Each entry's `back`: how many entries of its user come after it in the batch.
    let mut remaining = per_user.clone();
    let mut rows = EntryRows::default();
    for (request, _) in to_store() {
        for entry in &request.entries {
            let left = remaining.get_mut(entry.user.as_str()).expect("every user of the batch is counted");
            *left -= 1;
            rows.push(entry, *left);
        }
    }
    let users: Vec<&str> = per_user.keys().copied().collect();
    let added: Vec<i64> = per_user.values().copied().collect();
    let push = PushRows::of(batch, fates, &rows);
    let push_part = if push.users.is_empty() {
        ""
    } else {
        // One marker per entry with a push request whose user has a subscription, in the same
        // statement (so the same transaction) as the entries: the seqs come out as theirs do.
        ", markers AS (
             INSERT INTO herald_push_pending (user_id, seq, expand_by, request)
             SELECT m.user_id, c.last_seq - m.back, m.expand_by, ($14::text[])[m.request]
             FROM unnest($11::text[], $12::bigint[], $13::bigint[], $15::int[])
                      AS m(user_id, back, expand_by, request)
             JOIN counters c ON c.user_id = m.user_id
             WHERE EXISTS (SELECT 1 FROM herald_push_subscriptions s WHERE s.user_id = m.user_id)
             RETURNING user_id, seq
         )"
    };
    let push_seqs = if push.users.is_empty() {
        ""
    } else {
        ", (SELECT array_agg(m.seq) FROM markers m WHERE m.user_id = counters.user_id) AS push_seqs"
    };
    let statement = client
        .prepare_cached(&format!(
            "WITH counters AS (
                 INSERT INTO herald_users AS u (user_id, last_seq, total, unread, unseen, inbox_version)
                 SELECT t.user_id, t.n, t.n, t.n, t.n, t.n
                 FROM unnest($1::text[], $2::bigint[]) AS t(user_id, n) ORDER BY t.user_id
                 ON CONFLICT (user_id) DO UPDATE SET
                     last_seq = u.last_seq + EXCLUDED.last_seq,
                     total = u.total + EXCLUDED.total,
                     unread = u.unread + EXCLUDED.unread,
                     unseen = u.unseen + EXCLUDED.unseen,
                     inbox_version = u.inbox_version + EXCLUDED.inbox_version
                 RETURNING u.user_id, u.last_seq, u.pruned_through, {COUNTS_COLUMNS}
             ), notifications AS (
                 INSERT INTO herald_notifications
                     (user_id, seq, type, data, created_at, session, client, except_client)
                 SELECT e.user_id, c.last_seq - e.back, e.type, e.data, e.created_at, e.session, e.client,
                        e.except_client
                 FROM unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::text[],
                             $9::text[], $10::text[])
                          AS e(user_id, back, type, data, created_at, session, client, except_client)
                 JOIN counters c ON c.user_id = e.user_id
             ){push_part}
             SELECT *{push_seqs} FROM counters"
        ))
        .await?;
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
        &users,
        &added,
        &rows.users,
        &rows.back,
        &rows.kinds,
        &rows.data,
        &rows.created_at,
        &rows.sessions,
        &rows.clients,
        &rows.except_clients,
    ];
    if !push.users.is_empty() {
        params.extend([
            &push.users as &(dyn tokio_postgres::types::ToSql + Sync),
            &push.back,
            &push.expand_by,
            &push.requests,
            &push.request,
        ]);
    }
    let answered = client.query(&statement, &params).await?;
    let mut last_seqs: HashMap<&str, i64> = HashMap::with_capacity(per_user.len());
    let mut over_max = false;
    for row in &answered {
        let user: String = row.get(0);
        let (last_seq, pruned_through): (i64, i64) = (row.get(1), row.get(2));
        let (&key, _) = per_user.get_key_value(user.as_str()).ok_or_else(|| {
            StoreError::Corrupt(format!("the upsert of users returned {user}, not in the batch"))
        })?;
        last_seqs.insert(key, last_seq);
        over_max |= last_seq.saturating_sub(max_per_user) > pruned_through;
        if !push.users.is_empty() {
            let seqs: Option<Vec<i64>> = row.try_get("push_seqs")?;
            for seq in seqs.unwrap_or_default() {
                let user = UserId::new(user.as_str())
                    .map_err(|e| StoreError::Corrupt(format!("a push marker's user: {e}")))?;
                stored.push_pending.push(herald_core::PushMarker { user, seq: seq_from_sql(seq)? });
            }
        }
        stored.counts.insert(user, counts_from_row(row, 3)?);
    }
    if last_seqs.len() != per_user.len() {
        return Err(StoreError::Corrupt(format!(
            "the upsert of users returned {} of the batch's {} users",
            last_seqs.len(),
            per_user.len()
        ))
        .into());
    }
    if over_max {
        stored.over_max = Some(users.iter().map(|user| (*user).to_owned()).collect());
    }

    // The same seqs on this side: `last_seq - back`, entry by entry in the order of the batch.
    let mut backs = rows.back.iter();
    for (request, fate) in batch.iter().zip(fates) {
        if !matches!(fate, Fate::Store) {
            stored.notifications.push(None);
            continue;
        }
        let mut notifications = Vec::with_capacity(request.entries.len());
        for entry in &request.entries {
            let back = backs.next().expect("one back per entry");
            let seq = seq_from_sql(last_seqs[entry.user.as_str()] - back)?;
            notifications.push(Arc::new(Notification::new(
                entry.user.clone(),
                Some(seq),
                Arc::clone(&entry.kind),
                Arc::clone(&entry.data),
                entry.created_at_ms,
                entry.audience.clone(),
            )));
        }
        stored.notifications.push(Some(notifications));
    }
    Ok(stored)
}

/// The receipt of the publish that stored `notifications`.
fn receipt_of(notifications: &[Arc<Notification>]) -> Receipt {
    Receipt {
        notifications: notifications
            .iter()
            .map(|n| ReceiptEntry { user: n.user.clone(), seq: n.seq.unwrap_or_default() })
            .collect(),
        topic: None,
        job: None,
        delivered: 0,
    }
}

/// One [`Appended`] per request of the batch.
fn answers(fates: Vec<Fate>, mut stored: Stored) -> Vec<Appended> {
    let mut answers: Vec<Appended> = Vec::with_capacity(fates.len());
    for (i, fate) in fates.into_iter().enumerate() {
        answers.push(match fate {
            Fate::Store => {
                let notifications =
                    stored.notifications[i].take().expect("a stored request has its notifications");
                let mut seen: HashSet<&UserId> = HashSet::new();
                let mut user_counts = Vec::new();
                for n in &notifications {
                    if seen.insert(&n.user) {
                        user_counts.push((
                            n.user.clone(),
                            stored.counts.get(n.user.as_str()).copied().unwrap_or_default(),
                        ));
                    }
                }
                // The batch's markers that are this request's notifications.
                let push_pending = if stored.push_pending.is_empty() {
                    Vec::new()
                } else {
                    let mine: HashSet<(&UserId, Seq)> =
                        notifications.iter().filter_map(|n| Some((&n.user, n.seq?))).collect();
                    stored.push_pending.iter().filter(|m| mine.contains(&(&m.user, m.seq))).cloned().collect()
                };
                Appended::Stored { notifications, counts: user_counts, push_pending }
            }
            Fate::DuplicateOf(first) => {
                // `take` above only emptied requests before `i`; the first of a key comes before.
                let receipt = match &answers[first] {
                    Appended::Stored { notifications, .. } => receipt_of(notifications),
                    Appended::Duplicate(receipt) => receipt.clone(),
                };
                Appended::Duplicate(receipt)
            }
            Fate::Duplicate(receipt) => Appended::Duplicate(receipt),
        });
    }
    answers
}

/// The columns of the entries a batch inserts, one array each (`unnest`).
#[derive(Default)]
struct EntryRows<'a> {
    users: Vec<&'a str>,
    /// How many entries of the same user come after this one in the batch.
    back: Vec<i64>,
    kinds: Vec<&'a str>,
    data: Vec<&'a str>,
    created_at: Vec<i64>,
    sessions: Vec<Option<&'a str>>,
    clients: Vec<Option<&'a str>>,
    except_clients: Vec<Option<&'a str>>,
}

impl<'a> EntryRows<'a> {
    fn push(&mut self, entry: &'a NewNotification, back: i64) {
        self.users.push(entry.user.as_str());
        self.back.push(back);
        self.kinds.push(&entry.kind);
        self.data.push(entry.data.get());
        self.created_at.push(entry.created_at_ms);
        self.sessions.push(entry.audience.session.as_ref().map(|s| s.as_str()));
        self.clients.push(entry.audience.client.as_ref().map(|c| c.as_str()));
        self.except_clients.push(entry.audience.except_client.as_ref().map(|c| c.as_str()));
    }
}

/// Claims the batch's idempotency keys (sorted: the lock order), each new or expired one for
/// the first request that has it; the others are duplicates, of that request or of the receipt
/// stored. A key claimed by a transaction still open (another node's) is waited for: its
/// receipt is then the one committed.
async fn claim_keys(
    tx: &Transaction<'_>,
    now_ms: i64,
    retention: &Retention,
    batch: &[&AppendRequest],
) -> Result<Vec<Fate>, Error> {
    let mut keys: Vec<&str> = batch.iter().filter_map(|r| r.key.as_deref()).collect();
    if keys.is_empty() {
        return Ok(batch.iter().map(|_| Fate::Store).collect());
    }
    keys.sort_unstable();
    keys.dedup();
    let valid_from = crate::cutoff_ms(now_ms, retention.idempotency_window);
    let claim = tx
        .prepare_cached(
            "INSERT INTO herald_idempotency AS i (key, created_at, receipt)
             SELECT k, $2, '' FROM unnest($1::text[]) AS k ORDER BY k
             ON CONFLICT (key) DO UPDATE SET created_at = EXCLUDED.created_at, receipt = ''
                 WHERE i.created_at < $3
             RETURNING i.key",
        )
        .await?;
    let claimed: HashSet<String> =
        tx.query(&claim, &[&keys, &now_ms, &valid_from]).await?.iter().map(|row| row.get(0)).collect();
    let taken: Vec<&str> = keys.iter().copied().filter(|k| !claimed.contains(*k)).collect();
    let mut receipts: HashMap<String, Receipt> = HashMap::with_capacity(taken.len());
    if !taken.is_empty() {
        let read =
            tx.prepare_cached("SELECT key, receipt FROM herald_idempotency WHERE key = ANY($1)").await?;
        for row in tx.query(&read, &[&taken]).await? {
            let (key, receipt): (String, String) = (row.get(0), row.get(1));
            let receipt = serde_json::from_str(&receipt)
                .map_err(|e| StoreError::Corrupt(format!("receipt of idempotency key {key:?}: {e}")))?;
            receipts.insert(key, receipt);
        }
    }
    let mut first_with: HashMap<&str, usize> = HashMap::new();
    let mut fates = Vec::with_capacity(batch.len());
    for (i, request) in batch.iter().enumerate() {
        fates.push(match request.key.as_deref() {
            None => Fate::Store,
            Some(key) if claimed.contains(key) => match first_with.get(key) {
                Some(&first) => Fate::DuplicateOf(first),
                None => {
                    first_with.insert(key, i);
                    Fate::Store
                }
            },
            Some(key) => Fate::Duplicate(receipts.get(key).cloned().ok_or_else(|| {
                StoreError::Unavailable(format!("idempotency key {key:?} neither claimed nor found"))
            })?),
        });
    }
    Ok(fates)
}

/// Applies `max_per_user` to `users` (rows locked by this transaction): removes every
/// notification at or below `last_seq - max_per_user`, raises `pruned_through` to it, and takes
/// what went off the counts. Returns the new counts of each user it changed.
async fn enforce_max_per_user(
    tx: &Transaction<'_>,
    users: &[String],
    max_per_user: i64,
) -> Result<Vec<(String, InboxCounts)>, Error> {
    let statement = tx
        .prepare_cached(&format!(
            "WITH bounds AS (
                 SELECT user_id, last_seq - $2 AS bound FROM herald_users
                 WHERE user_id = ANY($1) AND last_seq - $2 > pruned_through
             ), gone AS (
                 DELETE FROM herald_notifications n USING bounds b
                 WHERE n.user_id = b.user_id AND n.seq <= b.bound
                 RETURNING n.user_id, n.archived_at IS NULL AS inbox, n.read_at IS NULL AS unread,
                           n.seen_at IS NULL AS unseen
             ), lost AS (
                 SELECT user_id, count(*) FILTER (WHERE inbox) AS total,
                        count(*) FILTER (WHERE inbox AND unread) AS unread,
                        count(*) FILTER (WHERE inbox AND unseen) AS unseen,
                        count(*) FILTER (WHERE NOT inbox) AS archived
                 FROM gone GROUP BY user_id
             )
             UPDATE herald_users u SET pruned_through = b.bound,
                 total = u.total - coalesce(l.total, 0),
                 unread = u.unread - coalesce(l.unread, 0),
                 unseen = u.unseen - coalesce(l.unseen, 0),
                 archived = u.archived - coalesce(l.archived, 0),
                 inbox_version = u.inbox_version + CASE WHEN l.user_id IS NULL THEN 0 ELSE 1 END
             FROM bounds b LEFT JOIN lost l ON l.user_id = b.user_id
             WHERE u.user_id = b.user_id
             RETURNING u.user_id, {COUNTS_COLUMNS}"
        ))
        .await?;
    let mut changed = Vec::new();
    for row in tx.query(&statement, &[&users, &max_per_user]).await? {
        changed.push((row.get(0), counts_from_row(&row, 1)?));
    }
    Ok(changed)
}

/// Records the final receipt of the publish that used `key`.
pub(super) async fn complete_receipt(tx: &Transaction<'_>, key: &str, receipt: &str) -> Result<(), Error> {
    let statement = tx.prepare_cached("UPDATE herald_idempotency SET receipt = $2 WHERE key = $1").await?;
    tx.execute(&statement, &[&key, &receipt]).await?;
    Ok(())
}

/// Keeps the latest close of `user`'s `session` (`None`: all sessions).
pub(super) async fn revoke(
    tx: &Transaction<'_>,
    user: &UserId,
    session: Option<&SessionId>,
    closed_at_secs: i64,
) -> Result<(), Error> {
    let statement = tx
        .prepare_cached(
            "INSERT INTO herald_revocations AS r (user_id, session, closed_at) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, session) DO UPDATE SET closed_at = GREATEST(r.closed_at, EXCLUDED.closed_at)",
        )
        .await?;
    tx.execute(&statement, &[&user.as_str(), &sql_session(session), &closed_at_secs]).await?;
    Ok(())
}

/// The advisory lock of one user's listens (`$1`: the user), held by every write of them until
/// its transaction ends. It is what keeps a scope within its bound across nodes: a listen counts
/// the scope's topics and then inserts, and two nodes doing that at once for one user, each in
/// its own snapshot, would both pass the bound. Row locks cannot do it: `SELECT … FOR UPDATE`
/// locks only the rows that exist, and a user's first listens (a new session's, a bound reached
/// by new topics) have none to lock; SERIALIZABLE would, at the price of failed transactions to
/// run again. Under the lock, each statement that follows it (READ COMMITTED: a snapshot per
/// statement) sees what the previous holder committed.
///
/// Two keys of 32 bits (the schema's, the user's `hashtext`): that key space is apart from the
/// one-key locks of migrations and retention, so a user's hash never waits on those. Two users
/// with the same hash only wait for each other; one lock per transaction, so no deadlock.
const LISTENS_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext(current_schema() || ':herald-listens'), hashtext($1))";

/// Takes `user`'s lock of listens ([`LISTENS_LOCK`]) for this transaction.
async fn lock_listens(tx: &Transaction<'_>, user: &UserId) -> Result<(), Error> {
    let statement = tx.prepare_cached(LISTENS_LOCK).await?;
    tx.execute(&statement, &[&user.as_str()]).await?;
    Ok(())
}

/// Adds `topics` to `user`'s listens at `session`'s scope (`None`: user scope), within `bounds`,
/// under the user's lock of listens, and returns the scope's topics. Reads the scope first and
/// decides before it writes anything: over the scope's bound it changes nothing
/// ([`ScopeListens::TooMany`]); a call that adds no topic is never over it, nor one that names
/// none (it changes nothing at all). A session's first listen when the user already has
/// `sessions_max` sessions with listens forgets the one whose latest listen is the oldest (then
/// the smallest id), in this transaction. Each listen of a session sets `listened_at` on all its
/// rows (see `SCHEMA_V2`).
pub(super) async fn listen(
    tx: &Transaction<'_>,
    user: &UserId,
    session: Option<&SessionId>,
    topics: &[Topic],
    bounds: ListenBounds,
    now_ms: i64,
) -> Result<ScopeListens, Error> {
    lock_listens(tx, user).await?;
    let current = read_scope_topics(tx, user, session).await?;
    if topics.is_empty() {
        return Ok(ScopeListens::Listening(current));
    }
    // `current` is sorted: the topics named that the scope does not listen to yet, once each.
    let new: BTreeSet<&Topic> = topics.iter().filter(|topic| current.binary_search(topic).is_err()).collect();
    let count = current.len() + new.len();
    let max = if session.is_some() { bounds.session_topics_max } else { bounds.user_topics_max };
    if count > max && !new.is_empty() {
        return Ok(ScopeListens::TooMany { count, max });
    }
    if session.is_some() && current.is_empty() {
        forget_oldest_session_if_full(tx, user, bounds.sessions_max).await?;
    }
    let scope = sql_session(session);
    if !new.is_empty() {
        let statement = tx
            .prepare_cached(
                "INSERT INTO herald_topic_listens (user_id, session, topic, listened_at)
                 SELECT $1, $2, t.topic, $4 FROM unnest($3::text[]) AS t(topic)",
            )
            .await?;
        let added: Vec<&str> = new.iter().map(|topic| topic.as_str()).collect();
        tx.execute(&statement, &[&user.as_str(), &scope, &added, &now_ms]).await?;
    }
    if session.is_some() {
        let statement = tx
            .prepare_cached(
                "UPDATE herald_topic_listens SET listened_at = $3 WHERE user_id = $1 AND session = $2",
            )
            .await?;
        tx.execute(&statement, &[&user.as_str(), &scope, &now_ms]).await?;
    }
    let mut now: Vec<Topic> = current;
    now.extend(new.into_iter().cloned());
    now.sort_unstable();
    Ok(ScopeListens::Listening(now))
}

/// Before a session of `user` gets its first listen: if the user has `sessions_max` sessions
/// with listens (or more), forgets every listen of the one whose latest listen is the oldest
/// (ties: the smallest id), as the hub evicts its least recently active session. The caller
/// holds the user's lock of listens.
async fn forget_oldest_session_if_full(
    tx: &Transaction<'_>,
    user: &UserId,
    sessions_max: usize,
) -> Result<(), Error> {
    // `session > ''`: session scopes only, a range of the primary key.
    let statement = tx
        .prepare_cached(
            "SELECT session, max(listened_at) FROM herald_topic_listens WHERE user_id = $1 AND session > ''
             GROUP BY session",
        )
        .await?;
    let sessions: Vec<(String, i64)> =
        tx.query(&statement, &[&user.as_str()]).await?.iter().map(|row| (row.get(0), row.get(1))).collect();
    if sessions.len() < sessions_max {
        return Ok(());
    }
    if let Some((oldest, _)) = sessions.iter().min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))) {
        let statement =
            tx.prepare_cached("DELETE FROM herald_topic_listens WHERE user_id = $1 AND session = $2").await?;
        tx.execute(&statement, &[&user.as_str(), oldest]).await?;
    }
    Ok(())
}

/// Removes `topics` from `user`'s listens at `session`'s scope (those it does not listen to are
/// no error), under the user's lock of listens, and returns the scope's topics.
pub(super) async fn unlisten(
    tx: &Transaction<'_>,
    user: &UserId,
    session: Option<&SessionId>,
    topics: &[Topic],
) -> Result<Vec<Topic>, Error> {
    lock_listens(tx, user).await?;
    let statement = tx
        .prepare_cached(
            "DELETE FROM herald_topic_listens WHERE user_id = $1 AND session = $2 AND topic = ANY($3)",
        )
        .await?;
    let topics: Vec<&str> = topics.iter().map(Topic::as_str).collect();
    tx.execute(&statement, &[&user.as_str(), &sql_session(session), &topics]).await?;
    read_scope_topics(tx, user, session).await
}

/// Forgets the listens of `user`'s `session`, or with `None` of all its sessions (`session >
/// ''`: user scope stays), under the user's lock of listens.
pub(super) async fn forget_session_listens(
    tx: &Transaction<'_>,
    user: &UserId,
    session: Option<&SessionId>,
) -> Result<(), Error> {
    lock_listens(tx, user).await?;
    match session {
        Some(session) => {
            let statement = tx
                .prepare_cached("DELETE FROM herald_topic_listens WHERE user_id = $1 AND session = $2")
                .await?;
            tx.execute(&statement, &[&user.as_str(), &session.as_str()]).await?;
        }
        None => {
            let statement = tx
                .prepare_cached("DELETE FROM herald_topic_listens WHERE user_id = $1 AND session > ''")
                .await?;
            tx.execute(&statement, &[&user.as_str()]).await?;
        }
    }
    Ok(())
}

/// Takes `user`'s row (`FOR UPDATE`): the lock every write to the user's notifications holds
/// first. Its counts; `None` for a user never seen.
async fn lock_user(tx: &Transaction<'_>, user: &UserId) -> Result<Option<InboxCounts>, Error> {
    let statement = tx
        .prepare_cached(&format!(
            "SELECT {COUNTS_COLUMNS} FROM herald_users u WHERE u.user_id = $1 FOR UPDATE"
        ))
        .await?;
    match tx.query_opt(&statement, &[&user.as_str()]).await? {
        Some(row) => Ok(Some(counts_from_row(&row, 0)?)),
        None => Ok(None),
    }
}

/// Which rows `selection` picks, as SQL on `$2` (`seq = ANY($2)` or `seq <= $2`), and `$2`.
enum Picked {
    Seqs(Vec<i64>),
    UpTo(i64),
}

impl Picked {
    fn of(selection: &Selection) -> Self {
        match selection {
            Selection::Seqs(seqs) => Picked::Seqs(seqs.iter().map(|&s| sql_seq(s)).collect()),
            Selection::AllUpTo(through) => Picked::UpTo(sql_seq(*through)),
        }
    }

    fn condition(&self) -> &'static str {
        match self {
            Picked::Seqs(_) => "seq = ANY($2)",
            Picked::UpTo(_) => "seq <= $2",
        }
    }

    async fn query(&self, tx: &Transaction<'_>, sql: &str, user: &UserId) -> Result<Vec<Row>, Error> {
        let statement = tx.prepare_cached(sql).await?;
        Ok(match self {
            Picked::Seqs(seqs) => tx.query(&statement, &[&user.as_str(), seqs]).await?,
            Picked::UpTo(through) => tx.query(&statement, &[&user.as_str(), through]).await?,
        })
    }
}

/// The rows a mark would change: those not in its state already.
fn not_marked(mark: Mark) -> &'static str {
    match mark {
        Mark::Read => "(read_at IS NULL OR seen_at IS NULL)",
        Mark::Unread => "read_at IS NOT NULL",
        Mark::Seen => "seen_at IS NULL",
        Mark::Archived => "archived_at IS NULL",
        Mark::Unarchived => "archived_at IS NOT NULL",
    }
}

fn state_of(row: &Row) -> ItemState {
    ItemState { seen_at_ms: row.get(1), read_at_ms: row.get(2), archived_at_ms: row.get(3) }
}

/// Writes `counts` (with their new version) to `user`'s row, locked by this transaction.
async fn write_counts(tx: &Transaction<'_>, user: &UserId, counts: &InboxCounts) -> Result<(), Error> {
    let statement = tx
        .prepare_cached(
            "UPDATE herald_users SET total = $2, unread = $3, unseen = $4, archived = $5, inbox_version = $6
             WHERE user_id = $1",
        )
        .await?;
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    tx.execute(
        &statement,
        &[
            &user.as_str(),
            &n(counts.total),
            &n(counts.unread),
            &n(counts.unseen),
            &n(counts.archived),
            &n(counts.version),
        ],
    )
    .await?;
    Ok(())
}

/// Marks the selected notifications of `user` and updates the counts, under the user's lock.
/// The new states are computed by `ItemState::marked`, the one definition of a mark.
pub(super) async fn inbox_mark(
    tx: &Transaction<'_>,
    user: &UserId,
    selection: &Selection,
    mark: Mark,
    at_ms: i64,
) -> Result<InboxChange, Error> {
    let Some(mut counts) = lock_user(tx, user).await? else { return Ok(InboxChange::default()) };
    let picked = Picked::of(selection);
    let sql = format!(
        "SELECT seq, seen_at, read_at, archived_at FROM herald_notifications
         WHERE user_id = $1 AND {} AND {} ORDER BY seq",
        picked.condition(),
        not_marked(mark)
    );
    let rows = picked.query(tx, &sql, user).await?;
    let mut change = InboxChange::default();
    let mut delta = CountsDelta::default();
    let (mut seqs, mut seen, mut read, mut archived) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for row in &rows {
        let state = state_of(row);
        if let Some(next) = state.marked(mark, at_ms) {
            delta += CountsDelta::between(Some(&state), Some(&next));
            let seq: i64 = row.get(0);
            change.seqs.push(seq_from_sql(seq)?);
            seqs.push(seq);
            seen.push(next.seen_at_ms);
            read.push(next.read_at_ms);
            archived.push(next.archived_at_ms);
        }
    }
    if !seqs.is_empty() {
        let statement = tx
            .prepare_cached(
                "UPDATE herald_notifications AS n SET seen_at = t.seen_at, read_at = t.read_at, archived_at = t.archived_at
                 FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS t(seq, seen_at, read_at, archived_at)
                 WHERE n.user_id = $1 AND n.seq = t.seq",
            )
            .await?;
        tx.execute(&statement, &[&user.as_str(), &seqs, &seen, &read, &archived]).await?;
        counts.apply(delta);
        write_counts(tx, user, &counts).await?;
    }
    change.counts = counts;
    Ok(change)
}

/// Deletes the selected notifications of `user` and updates the counts, under the user's lock.
/// `pruned_through` stays: a deletion is not retention.
pub(super) async fn inbox_delete(
    tx: &Transaction<'_>,
    user: &UserId,
    selection: &Selection,
) -> Result<InboxChange, Error> {
    let Some(mut counts) = lock_user(tx, user).await? else { return Ok(InboxChange::default()) };
    let picked = Picked::of(selection);
    let sql = format!(
        "DELETE FROM herald_notifications WHERE user_id = $1 AND {} RETURNING seq, seen_at, read_at, archived_at",
        picked.condition()
    );
    let rows = picked.query(tx, &sql, user).await?;
    let mut change = InboxChange::default();
    let mut delta = CountsDelta::default();
    for row in &rows {
        delta += CountsDelta::between(Some(&state_of(row)), None);
        change.seqs.push(seq_from_sql(row.get(0))?);
    }
    change.seqs.sort_unstable();
    if !change.seqs.is_empty() {
        counts.apply(delta);
        write_counts(tx, user, &counts).await?;
    }
    change.counts = counts;
    Ok(change)
}

/// What one chunk of retention removed.
#[derive(Debug, Default)]
pub(super) struct PrunedChunk {
    pub removed: u64,
    pub inboxes: Vec<PrunedInbox>,
    /// Another node holds retention's lock: this node skips its turn.
    pub skipped: bool,
}

/// Whether this transaction got retention's lock (see [`PRUNE_LOCK`]).
async fn prune_lock(tx: &Transaction<'_>) -> Result<bool, Error> {
    let statement = tx.prepare_cached(PRUNE_LOCK).await?;
    Ok(tx.query_one(&statement, &[]).await?.get(0))
}

/// One chunk of retention by age: of up to [`PRUNE_CHUNK_ROWS`] notifications created before
/// `before_ms`, each user's newest one takes every lower seq of its user with it (retention
/// removes a prefix, even of rows stamped later: clocks step back), `pruned_through` rises to
/// it, and the counts lose what went.
pub(super) async fn prune_notifications(tx: &Transaction<'_>, before_ms: i64) -> Result<PrunedChunk, Error> {
    if !prune_lock(tx).await? {
        return Ok(PrunedChunk { skipped: true, ..PrunedChunk::default() });
    }
    let expired = tx
        .prepare_cached(
            "SELECT user_id, max(seq) FROM (
                 SELECT user_id, seq FROM herald_notifications WHERE created_at < $1 ORDER BY created_at LIMIT $2
             ) AS e GROUP BY user_id ORDER BY user_id",
        )
        .await?;
    let expired = tx.query(&expired, &[&before_ms, &PRUNE_CHUNK_ROWS]).await?;
    if expired.is_empty() {
        return Ok(PrunedChunk::default());
    }
    let users: Vec<String> = expired.iter().map(|row| row.get(0)).collect();
    let through: Vec<i64> = expired.iter().map(|row| row.get(1)).collect();
    let lock = tx
        .prepare_cached(&format!(
            "SELECT u.user_id, {COUNTS_COLUMNS} FROM herald_users u WHERE u.user_id = ANY($1)
             ORDER BY u.user_id FOR UPDATE"
        ))
        .await?;
    let mut counts: HashMap<String, InboxCounts> = HashMap::with_capacity(users.len());
    for row in tx.query(&lock, &[&users]).await? {
        counts.insert(row.get(0), counts_from_row(&row, 1)?);
    }
    let delete = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM herald_notifications n USING unnest($1::text[], $2::bigint[]) AS t(user_id, through)
                 WHERE n.user_id = t.user_id AND n.seq <= t.through
                 RETURNING n.user_id, n.archived_at IS NULL AS inbox, n.read_at IS NULL AS unread,
                           n.seen_at IS NULL AS unseen
             )
             SELECT user_id, count(*) FILTER (WHERE inbox), count(*) FILTER (WHERE inbox AND unread),
                    count(*) FILTER (WHERE inbox AND unseen), count(*) FILTER (WHERE NOT inbox)
             FROM gone GROUP BY user_id",
        )
        .await?;
    let mut chunk = PrunedChunk::default();
    let mut lost: HashMap<String, CountsDelta> = HashMap::new();
    for row in tx.query(&delete, &[&users, &through]).await? {
        let (total, unread, unseen, archived): (i64, i64, i64, i64) =
            (row.get(1), row.get(2), row.get(3), row.get(4));
        chunk.removed += u64::try_from(total + archived).unwrap_or(0);
        lost.insert(
            row.get(0),
            CountsDelta { total: -total, unread: -unread, unseen: -unseen, archived: -archived },
        );
    }
    let (mut versions, mut totals, mut unreads, mut unseens, mut archiveds) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (user, &through) in users.iter().zip(&through) {
        let mut after = counts.get(user).copied().unwrap_or_default();
        if let Some(delta) = lost.get(user) {
            after.apply(*delta);
        }
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        totals.push(n(after.total));
        unreads.push(n(after.unread));
        unseens.push(n(after.unseen));
        archiveds.push(n(after.archived));
        versions.push(n(after.version));
        let user = UserId::new(user)
            .map_err(|e| StoreError::Corrupt(format!("user id {user:?} in the store: {e}")))?;
        chunk.inboxes.push(PrunedInbox { user, through: seq_from_sql(through)?, counts: after });
    }
    let update = tx
        .prepare_cached(
            "UPDATE herald_users AS u SET pruned_through = GREATEST(u.pruned_through, t.through),
                 total = t.total, unread = t.unread, unseen = t.unseen, archived = t.archived,
                 inbox_version = t.version
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
                 AS t(user_id, through, total, unread, unseen, archived, version)
             WHERE u.user_id = t.user_id",
        )
        .await?;
    tx.execute(&update, &[&users, &through, &totals, &unreads, &unseens, &archiveds, &versions]).await?;
    Ok(chunk)
}

/// One chunk of forgetting idempotency keys recorded before `before_ms`; how many went.
pub(super) async fn prune_keys(tx: &Transaction<'_>, before_ms: i64) -> Result<PrunedChunk, Error> {
    if !prune_lock(tx).await? {
        return Ok(PrunedChunk { skipped: true, ..PrunedChunk::default() });
    }
    let statement = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM herald_idempotency WHERE key IN (
                     SELECT key FROM herald_idempotency WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
                 ) RETURNING 1
             ) SELECT count(*) FROM gone",
        )
        .await?;
    let removed: i64 = tx.query_one(&statement, &[&before_ms, &PRUNE_CHUNK_ROWS]).await?.get(0);
    Ok(PrunedChunk { removed: u64::try_from(removed).unwrap_or(0), ..PrunedChunk::default() })
}

/// Inserts the job, or replaces the row with its id (the copies of its fields with the JSON,
/// so that they never disagree): one statement, its own commit.
pub(super) async fn save_job(
    client: &ClientWrapper,
    id: &str,
    created_at_ms: i64,
    finished_at_ms: Option<i64>,
    json: &str,
) -> Result<(), Error> {
    let statement = client
        .prepare_cached(
            "INSERT INTO herald_jobs (id, created_at, finished_at, job) VALUES ($1, $2, $3, $4)
             ON CONFLICT (id) DO UPDATE SET
                 created_at = EXCLUDED.created_at, finished_at = EXCLUDED.finished_at, job = EXCLUDED.job",
        )
        .await?;
    client.execute(&statement, &[&id, &created_at_ms, &finished_at_ms, &json]).await?;
    Ok(())
}

/// One chunk of forgetting fan-out jobs finished before `before_ms` (the idempotency window:
/// their chunks' keys go at the same time); how many went.
pub(super) async fn prune_jobs(tx: &Transaction<'_>, before_ms: i64) -> Result<PrunedChunk, Error> {
    if !prune_lock(tx).await? {
        return Ok(PrunedChunk { skipped: true, ..PrunedChunk::default() });
    }
    let statement = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM herald_jobs WHERE id IN (
                     SELECT id FROM herald_jobs WHERE finished_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED
                 ) RETURNING 1
             ) SELECT count(*) FROM gone",
        )
        .await?;
    let removed: i64 = tx.query_one(&statement, &[&before_ms, &PRUNE_CHUNK_ROWS]).await?.get(0);
    Ok(PrunedChunk { removed: u64::try_from(removed).unwrap_or(0), ..PrunedChunk::default() })
}

/// One chunk of forgetting revocations closed before `before_secs`; how many went.
pub(super) async fn prune_revocations(tx: &Transaction<'_>, before_secs: i64) -> Result<PrunedChunk, Error> {
    if !prune_lock(tx).await? {
        return Ok(PrunedChunk { skipped: true, ..PrunedChunk::default() });
    }
    let statement = tx
        .prepare_cached(
            "WITH gone AS (
                 DELETE FROM herald_revocations WHERE (user_id, session) IN (
                     SELECT user_id, session FROM herald_revocations WHERE closed_at < $1
                     LIMIT $2 FOR UPDATE SKIP LOCKED
                 ) RETURNING 1
             ) SELECT count(*) FROM gone",
        )
        .await?;
    let removed: i64 = tx.query_one(&statement, &[&before_secs, &PRUNE_CHUNK_ROWS]).await?.get(0);
    Ok(PrunedChunk { removed: u64::try_from(removed).unwrap_or(0), ..PrunedChunk::default() })
}

/// Stores `event` in one transaction: claims `key` (a key used within the window makes it a
/// duplicate: nothing is stored, the first publish's receipt is returned), takes the topic's
/// next tseq from its head row and inserts the event in one statement, applies
/// `topic_max_events` (the oldest go, `pruned_through` rises), and records the receipt naming
/// the event. See [`SCHEMA_V3`](super::schema::SCHEMA_V3) for why the head row makes tseqs
/// gap-free across nodes.
pub(super) async fn append_topic(
    tx: &Transaction<'_>,
    retention: &Retention,
    now_ms: i64,
    event: &NewTopicEvent,
    key: Option<&str>,
) -> Result<TopicAppended, Error> {
    if let Some(key) = key {
        // As `claim_keys`, for one key: a key claimed by a transaction still open (another
        // node's) is waited for, and its committed receipt is then the answer.
        let valid_from = crate::cutoff_ms(now_ms, retention.idempotency_window);
        let claim = tx
            .prepare_cached(
                "INSERT INTO herald_idempotency AS i (key, created_at, receipt) VALUES ($1, $2, '')
                 ON CONFLICT (key) DO UPDATE SET created_at = EXCLUDED.created_at, receipt = ''
                     WHERE i.created_at < $3
                 RETURNING i.key",
            )
            .await?;
        if tx.query_opt(&claim, &[&key, &now_ms, &valid_from]).await?.is_none() {
            let read = tx.prepare_cached("SELECT receipt FROM herald_idempotency WHERE key = $1").await?;
            let receipt: String = tx.query_one(&read, &[&key]).await?.get(0);
            let receipt = serde_json::from_str(&receipt)
                .map_err(|e| StoreError::Corrupt(format!("receipt of idempotency key {key:?}: {e}")))?;
            return Ok(TopicAppended::Duplicate(receipt));
        }
    }
    let statement = tx
        .prepare_cached(
            "WITH head AS (
                 INSERT INTO herald_topic_heads AS h (topic, last_tseq) VALUES ($1::text, 1)
                 ON CONFLICT (topic) DO UPDATE SET last_tseq = h.last_tseq + 1
                 RETURNING h.last_tseq, h.pruned_through
             ), event AS (
                 INSERT INTO herald_topic_log (topic, tseq, type, data, created_at, except_user, except_client)
                 SELECT $1::text, head.last_tseq, $2::text, $3::text, $4::bigint, $5::text, $6::text FROM head
             )
             SELECT last_tseq, pruned_through FROM head",
        )
        .await?;
    let topic = event.topic.as_str();
    let row = tx
        .query_one(
            &statement,
            &[
                &topic,
                &&*event.kind,
                &event.data.get(),
                &event.created_at_ms,
                &event.except_user.as_ref().map(UserId::as_str),
                &event.except_client.as_ref().map(|c| c.as_str()),
            ],
        )
        .await?;
    let (tseq, pruned_through): (i64, i64) = (row.get(0), row.get(1));
    let max_events = i64::try_from(retention.topic_max_events).unwrap_or(i64::MAX);
    let bound = tseq.saturating_sub(max_events);
    if bound > pruned_through {
        // A statement of its own, after the insert: with `topic_max_events` = 0 the new event
        // goes too, which a delete in the insert's statement (its snapshot) would not see.
        let prune = tx
            .prepare_cached(
                "WITH gone AS (
                     DELETE FROM herald_topic_log WHERE topic = $1 AND tseq > $2 AND tseq <= $3
                 )
                 UPDATE herald_topic_heads SET pruned_through = $3 WHERE topic = $1 AND pruned_through < $3",
            )
            .await?;
        tx.execute(&prune, &[&topic, &pruned_through, &bound]).await?;
    }
    let tseq = seq_from_sql(tseq)?;
    if let Some(key) = key {
        let receipt = Receipt {
            notifications: Vec::new(),
            topic: Some(TopicReceipt { topic: event.topic.clone(), tseq }),
            job: None,
            delivered: 0,
        };
        complete_receipt(tx, key, &crate::receipt_json(&receipt)?).await?;
    }
    Ok(TopicAppended::Stored(Arc::new(TopicEvent::with_tseq(
        Some(tseq),
        event.topic.clone(),
        Arc::clone(&event.kind),
        Arc::clone(&event.data),
        event.created_at_ms,
        event.except_user.clone(),
        event.except_client.clone(),
    ))))
}

/// One chunk of retention of durable topic events by age: of up to [`PRUNE_CHUNK_ROWS`] events
/// created before `before_ms`, each topic's newest one takes every lower tseq of its topic with
/// it (a prefix, as for users' logs), and `pruned_through` rises to it. The topics' head rows are
/// locked first (sorted), as an append holds its head before it deletes its oldest events.
pub(super) async fn prune_topic_events(tx: &Transaction<'_>, before_ms: i64) -> Result<PrunedChunk, Error> {
    if !prune_lock(tx).await? {
        return Ok(PrunedChunk { skipped: true, ..PrunedChunk::default() });
    }
    let expired = tx
        .prepare_cached(
            "SELECT topic, max(tseq) FROM (
                 SELECT topic, tseq FROM herald_topic_log WHERE created_at < $1 ORDER BY created_at LIMIT $2
             ) AS e GROUP BY topic ORDER BY topic",
        )
        .await?;
    let expired = tx.query(&expired, &[&before_ms, &PRUNE_CHUNK_ROWS]).await?;
    if expired.is_empty() {
        return Ok(PrunedChunk::default());
    }
    let topics: Vec<String> = expired.iter().map(|row| row.get(0)).collect();
    let through: Vec<i64> = expired.iter().map(|row| row.get(1)).collect();
    let lock = tx
        .prepare_cached(
            "SELECT topic FROM herald_topic_heads WHERE topic = ANY($1) ORDER BY topic FOR UPDATE",
        )
        .await?;
    tx.query(&lock, &[&topics]).await?;
    let delete = tx
        .prepare_cached(
            "WITH bounds AS (
                 SELECT * FROM unnest($1::text[], $2::bigint[]) AS t(topic, through)
             ), gone AS (
                 DELETE FROM herald_topic_log l USING bounds b
                 WHERE l.topic = b.topic AND l.tseq <= b.through
                 RETURNING 1
             ), raised AS (
                 UPDATE herald_topic_heads h SET pruned_through = GREATEST(h.pruned_through, b.through)
                 FROM bounds b WHERE h.topic = b.topic
             )
             SELECT count(*) FROM gone",
        )
        .await?;
    let removed: i64 = tx.query_one(&delete, &[&topics, &through]).await?.get(0);
    Ok(PrunedChunk { removed: u64::try_from(removed).unwrap_or(0), ..PrunedChunk::default() })
}

/// The advisory lock of a user's push subscriptions, for the transaction: two subscribes of one
/// user (on two nodes) check the bounds one after the other.
const PUSH_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('herald-push:' || $1))";

/// Upserts the subscription (by id), then removes what [`herald_core::push_evictions`] says of
/// the user's rows, under the user's [`PUSH_LOCK`]; the ids removed.
pub(super) async fn push_subscribe(
    tx: &Transaction<'_>,
    subscription: &herald_core::PushSubscription,
    json: &str,
    bounds: herald_core::PushBounds,
) -> Result<Vec<String>, Error> {
    let user = subscription.user.as_str();
    let statement = tx.prepare_cached(PUSH_LOCK).await?;
    tx.execute(&statement, &[&user]).await?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO herald_push_subscriptions (id, user_id, session_id, created_at, subscription)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET user_id = EXCLUDED.user_id, session_id = EXCLUDED.session_id,
                 created_at = EXCLUDED.created_at, subscription = EXCLUDED.subscription",
        )
        .await?;
    tx.execute(
        &statement,
        &[&subscription.id, &user, &subscription.session.as_str(), &subscription.created_at_ms, &json],
    )
    .await?;
    let kept = super::reads::read_push_subscriptions(tx, &subscription.user).await?;
    let evicted = herald_core::push_evictions(&kept, &subscription.session, bounds);
    if !evicted.is_empty() {
        let statement = tx.prepare_cached("DELETE FROM herald_push_subscriptions WHERE id = ANY($1)").await?;
        tx.execute(&statement, &[&evicted]).await?;
    }
    Ok(evicted)
}

/// Forgets `user`'s subscription `id`; whether there was one.
pub(super) async fn push_unsubscribe(client: &ClientWrapper, user: &UserId, id: &str) -> Result<bool, Error> {
    let statement =
        client.prepare_cached("DELETE FROM herald_push_subscriptions WHERE id = $1 AND user_id = $2").await?;
    Ok(client.execute(&statement, &[&id, &user.as_str()]).await? > 0)
}

/// Adds deliveries to the outbox, leaving those whose id is kept already, in one statement.
pub(super) async fn push_enqueue(
    client: &ClientWrapper,
    deliveries: &[herald_core::PushDelivery],
) -> Result<(), Error> {
    let mut ids = Vec::with_capacity(deliveries.len());
    let mut due = Vec::with_capacity(deliveries.len());
    let mut json = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        ids.push(delivery.id.as_str());
        due.push(delivery.due_at_ms);
        json.push(crate::push_json(delivery)?);
    }
    let statement = client
        .prepare_cached(
            "INSERT INTO herald_push_outbox (id, due_at, delivery)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    client.execute(&statement, &[&ids, &due, &json]).await?;
    Ok(())
}

/// Removes a delivery, or moves it later with its new attempt count (column and JSON alike).
pub(super) async fn push_settle(
    client: &ClientWrapper,
    id: &str,
    settle: herald_core::PushSettle,
) -> Result<(), Error> {
    match settle {
        herald_core::PushSettle::Done => {
            let statement = client.prepare_cached("DELETE FROM herald_push_outbox WHERE id = $1").await?;
            client.execute(&statement, &[&id]).await?;
        }
        herald_core::PushSettle::Retry { due_at_ms, attempts } => {
            let statement = client
                .prepare_cached(
                    "UPDATE herald_push_outbox SET due_at = $2,
                         delivery = jsonb_set(jsonb_set(delivery::jsonb, '{due_at_ms}', to_jsonb($2::bigint)),
                                              '{attempts}', to_jsonb($3::bigint))::text
                     WHERE id = $1",
                )
                .await?;
            client.execute(&statement, &[&id, &due_at_ms, &i64::from(attempts)]).await?;
        }
    }
    Ok(())
}

/// Claims up to `limit` due deliveries until `until_ms`, in one statement: `FOR UPDATE SKIP
/// LOCKED` makes two nodes' claims take different rows (a row another claim is moving is
/// skipped, and once moved it is no longer due). Their JSON, in no order.
pub(super) async fn push_claim(
    client: &ClientWrapper,
    now_ms: i64,
    limit: i64,
    until_ms: i64,
) -> Result<Vec<herald_core::PushDelivery>, Error> {
    let statement = client
        .prepare_cached(
            "UPDATE herald_push_outbox SET due_at = $3
             WHERE id IN (SELECT id FROM herald_push_outbox WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2
                          FOR UPDATE SKIP LOCKED)
             RETURNING delivery",
        )
        .await?;
    let rows = client.query(&statement, &[&now_ms, &limit, &until_ms]).await?;
    Ok(rows.iter().map(|row| crate::push_from_json(row.get(0))).collect::<Result<_, _>>()?)
}

/// Removes the markers of `expansions` and adds the deliveries of those it removed, then makes
/// `to_senders` due at `now_ms`, in `tx`; how many deliveries were added. A marker another
/// transaction removes first (the publish, or another node's sender) is waited for, then not
/// found: its deliveries are not added twice.
pub(super) async fn push_expand(
    tx: &Transaction<'_>,
    expansions: &[herald_core::PushExpansion],
    to_senders: &[herald_core::PushMarker],
    now_ms: i64,
) -> Result<usize, Error> {
    let mut added = 0;
    if !expansions.is_empty() {
        let (mut users, mut seqs) = (Vec::new(), Vec::new());
        let (mut of_user, mut of_seq, mut ids, mut due, mut json) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        // Sorted: the order the markers' rows are locked in.
        let mut sorted: Vec<&herald_core::PushExpansion> = expansions.iter().collect();
        sorted.sort_by(|a, b| a.marker.cmp(&b.marker));
        for expansion in sorted {
            let seq = sql_seq(expansion.marker.seq);
            users.push(expansion.marker.user.as_str());
            seqs.push(seq);
            for delivery in &expansion.deliveries {
                of_user.push(expansion.marker.user.as_str());
                of_seq.push(seq);
                ids.push(delivery.id.as_str());
                due.push(delivery.due_at_ms);
                json.push(crate::push_json(delivery)?);
            }
        }
        let statement = tx
            .prepare_cached(
                "WITH removed AS (
                     DELETE FROM herald_push_pending p USING unnest($1::text[], $2::bigint[]) AS t(user_id, seq)
                     WHERE p.user_id = t.user_id AND p.seq = t.seq
                     RETURNING p.user_id, p.seq
                 )
                 INSERT INTO herald_push_outbox (id, due_at, delivery)
                 SELECT d.id, d.due_at, d.delivery
                 FROM unnest($3::text[], $4::bigint[], $5::text[], $6::bigint[], $7::text[])
                          AS d(user_id, seq, id, due_at, delivery)
                 JOIN removed r ON r.user_id = d.user_id AND r.seq = d.seq
                 ON CONFLICT (id) DO NOTHING",
            )
            .await?;
        let inserted = tx.execute(&statement, &[&users, &seqs, &of_user, &of_seq, &ids, &due, &json]).await?;
        added = usize::try_from(inserted).unwrap_or(usize::MAX);
    }
    if !to_senders.is_empty() {
        let users: Vec<&str> = to_senders.iter().map(|m| m.user.as_str()).collect();
        let seqs: Vec<i64> = to_senders.iter().map(|m| sql_seq(m.seq)).collect();
        let statement = tx
            .prepare_cached(
                "UPDATE herald_push_pending p SET expand_by = $3
                 FROM unnest($1::text[], $2::bigint[]) AS t(user_id, seq)
                 WHERE p.user_id = t.user_id AND p.seq = t.seq",
            )
            .await?;
        tx.execute(&statement, &[&users, &seqs, &now_ms]).await?;
    }
    Ok(added)
}

/// Claims up to `limit` markers to expand until `until_ms`, as [`push_claim`] does deliveries:
/// `(user, seq, request JSON)`.
pub(super) async fn push_claim_pending(
    client: &ClientWrapper,
    now_ms: i64,
    limit: i64,
    until_ms: i64,
) -> Result<Vec<herald_core::PushPending>, Error> {
    let statement = client
        .prepare_cached(
            "UPDATE herald_push_pending SET expand_by = $3
             WHERE (user_id, seq) IN (SELECT user_id, seq FROM herald_push_pending WHERE expand_by <= $1
                                      ORDER BY expand_by LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING user_id, seq, request",
        )
        .await?;
    let rows = client.query(&statement, &[&now_ms, &limit, &until_ms]).await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let user = UserId::new(row.get::<_, String>(0))
            .map_err(|e| StoreError::Corrupt(format!("a push marker's user: {e}")))?;
        let seq = seq_from_sql(row.get(1))?;
        let mut request: herald_core::PushRequest = crate::push_from_json(row.get(2))?;
        request.expand_by_ms = until_ms;
        claimed.push(herald_core::PushPending { marker: herald_core::PushMarker { user, seq }, request });
    }
    claimed.sort_by(|a, b| a.marker.cmp(&b.marker));
    Ok(claimed)
}
