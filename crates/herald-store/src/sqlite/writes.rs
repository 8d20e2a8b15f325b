//! The writes: what each request does inside the writer's transaction, in SQL. An append stages
//! its notifications (see `staging`); every other write to a user first settles the user's
//! staged rows and folds its tail into its `users` row ([`settle_and_fold`]), then changes rows and
//! adjusts the counts by the states of exactly the rows it touched. Listens (`topic_listens`)
//! and topic logs (`topic_heads`, `topic_log`) are apart from the users' logs: they touch
//! neither staged rows nor `users`; a topic append shares only the idempotency keys with appends.
//! Fan-out jobs (`jobs`) are apart from everything: a save is one upsert. So are Web Push's
//! tables (`push_subscriptions`, `push_outbox`, and the markers `push_pending` an append keeps
//! in its own transaction) and presence's (`presence_*`). One job: every write of the SQLite
//! store. Each write is a
//! [`Write`] (the requests are in `request`); batching, transactions and savepoints are the
//! writer's job.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use herald_core::inbox::CountsDelta;
use herald_core::presence::RowChange;
use herald_core::{
    Appended, InboxChange, InboxCounts, ItemState, ListenBounds, Mark, NewNotification, NewTopicEvent,
    Notification, PresenceBeat, PresenceChange, PresenceEvent, PrunedInbox, PushSettle, Receipt,
    ReceiptEntry, Retention, ScopeListens, Seq, SessionId, StoreError, Topic, TopicAppended, TopicEvent,
    TopicReceipt, UserId,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::reads::{UserRow, read_counts, read_scope_topics, read_state, read_user_row};
use super::request::{
    Append, AppendTopic, CompleteReceipt, ForgetSessionListens, InboxChunk, InboxDelete, InboxMark, Job,
    Listen, PresenceHeartbeat, PruneChunk, PrunedChunk, PushClaim, PushClaimPending, PushEnqueue, PushExpand,
    PushSettleRow, PushSubscribe, PushUnsubscribe, RecordPresence, ReleasePresence, Request, Revoke, Rows,
    SaveJob, SettleAll, Unlisten, Write,
};
use super::sql::{db_error, seq_from_sql, session_from_sql, sql_seq, sql_session};
use super::staging::StagingWrites;

/// Notifications (and, separately, durable topic events, idempotency keys, fan-out jobs and
/// revocations) one
/// chunk of `prune` selects. At the bound
/// the chunk commits and the next one queues behind the publishes already waiting, so a large
/// prune never holds the writer for long.
pub const PRUNE_CHUNK_ROWS: i64 = 10_000;

/// Rows one chunk of an inbox mark or delete "all up to N" changes at most. At the bound the
/// chunk commits and the next one queues behind the publishes already waiting, as for `prune`:
/// marking 100,000 notifications read never holds the writer for long.
pub const INBOX_CHUNK_ROWS: i64 = 1_000;

impl Write for Append {
    type Output = Appended;

    fn run(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        retention: &Retention,
        now_ms: i64,
    ) -> Result<Appended, StoreError> {
        append(conn, writes, retention, now_ms, self)
    }

    fn request(job: Job<Self>) -> Request {
        Request::Append(job)
    }
}

impl Write for AppendTopic {
    type Output = TopicAppended;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        retention: &Retention,
        now_ms: i64,
    ) -> Result<TopicAppended, StoreError> {
        append_topic(conn, retention, now_ms, &self.event, self.key.as_deref())
    }

    fn request(job: Job<Self>) -> Request {
        Request::AppendTopic(job)
    }
}

impl Write for CompleteReceipt {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        complete_receipt(conn, &self.key, &self.receipt)
    }

    fn request(job: Job<Self>) -> Request {
        Request::CompleteReceipt(job)
    }
}

impl Write for PruneChunk {
    type Output = PrunedChunk;

    fn run(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<PrunedChunk, StoreError> {
        prune_chunk(conn, writes, self)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PruneChunk(job)
    }
}

impl Write for SaveJob {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        save_job(conn, self)
    }

    fn request(job: Job<Self>) -> Request {
        Request::SaveJob(job)
    }
}

impl Write for PushSubscribe {
    type Output = Vec<String>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Vec<String>, StoreError> {
        push_subscribe(conn, self)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushSubscribe(job)
    }
}

impl Write for PushUnsubscribe {
    type Output = bool;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<bool, StoreError> {
        let removed = conn
            .prepare_cached("DELETE FROM push_subscriptions WHERE id = ?1 AND user = ?2")
            .and_then(|mut stmt| stmt.execute(params![self.id, self.user.as_str()]))
            .map_err(db_error)?;
        Ok(removed > 0)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushUnsubscribe(job)
    }
}

impl Write for PushEnqueue {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        let mut stmt = conn
            .prepare_cached(
                "INSERT INTO push_outbox (id, due_at, delivery) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .map_err(db_error)?;
        for (id, due_at_ms, json) in &self.rows {
            stmt.execute(params![id, due_at_ms, json]).map_err(db_error)?;
        }
        Ok(())
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushEnqueue(job)
    }
}

impl Write for PushSettleRow {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        push_settle(conn, &self.id, self.settle)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushSettleRow(job)
    }
}

impl Write for PushExpand {
    type Output = usize;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<usize, StoreError> {
        let mut remove =
            conn.prepare_cached("DELETE FROM push_pending WHERE user = ?1 AND seq = ?2").map_err(db_error)?;
        let mut insert = conn
            .prepare_cached(
                "INSERT INTO push_outbox (id, due_at, delivery) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
            )
            .map_err(db_error)?;
        let mut added = 0;
        for ((user, seq), deliveries) in &self.expansions {
            // Only the one that removes the marker adds its deliveries: a marker is expanded once.
            if remove.execute(params![user, seq]).map_err(db_error)? == 0 {
                continue;
            }
            for (id, due_at_ms, json) in deliveries {
                added += insert.execute(params![id, due_at_ms, json]).map_err(db_error)?;
            }
        }
        let mut release = conn
            .prepare_cached("UPDATE push_pending SET expand_by = ?3 WHERE user = ?1 AND seq = ?2")
            .map_err(db_error)?;
        for (user, seq) in &self.to_senders {
            release.execute(params![user, seq, self.now_ms]).map_err(db_error)?;
        }
        Ok(added)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushExpand(job)
    }
}

impl Write for PushClaim {
    type Output = Vec<String>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Vec<String>, StoreError> {
        // One writer: no other claim runs meanwhile, so the rows read are the rows moved.
        conn.prepare_cached(
            "UPDATE push_outbox SET due_at = ?3 WHERE id IN
                 (SELECT id FROM push_outbox WHERE due_at <= ?1 ORDER BY due_at, id LIMIT ?2)
             RETURNING delivery",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![self.now_ms, self.limit, self.until_ms], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .map_err(db_error)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushClaim(job)
    }
}

impl Write for PushClaimPending {
    type Output = Vec<(String, i64, String)>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Vec<(String, i64, String)>, StoreError> {
        conn.prepare_cached(
            "UPDATE push_pending SET expand_by = ?3 WHERE (user, seq) IN
                 (SELECT user, seq FROM push_pending WHERE expand_by <= ?1 ORDER BY expand_by LIMIT ?2)
             RETURNING user, seq, request",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![self.now_ms, self.limit, self.until_ms], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()
        })
        .map_err(db_error)
    }

    fn request(job: Job<Self>) -> Request {
        Request::PushClaimPending(job)
    }
}

impl Write for RecordPresence {
    type Output = Vec<PresenceEvent>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Vec<PresenceEvent>, StoreError> {
        record_presence(conn, &self.node, &self.change)
    }

    fn request(job: Job<Self>) -> Request {
        Request::RecordPresence(job)
    }
}

impl Write for PresenceHeartbeat {
    type Output = PresenceBeat;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<PresenceBeat, StoreError> {
        let was_registered = conn
            .prepare_cached("SELECT 1 FROM presence_nodes WHERE node = ?1")
            .and_then(|mut stmt| stmt.exists(params![self.node]))
            .map_err(db_error)?;
        conn.prepare_cached(
            "INSERT INTO presence_nodes (node, last_beat) VALUES (?1, ?2)
             ON CONFLICT (node) DO UPDATE SET last_beat = MAX(last_beat, excluded.last_beat)",
        )
        .and_then(|mut stmt| stmt.execute(params![self.node, self.now_ms]))
        .map_err(db_error)?;
        let dead_nodes = conn
            .prepare_cached("SELECT node FROM presence_nodes WHERE node <> ?1 AND last_beat < ?2")
            .and_then(|mut stmt| {
                stmt.query_map(params![self.node, self.dead_before_ms], |row| row.get(0))?
                    .collect::<Result<Vec<String>, _>>()
            })
            .map_err(db_error)?;
        Ok(PresenceBeat { was_registered, dead_nodes })
    }

    fn request(job: Job<Self>) -> Request {
        Request::PresenceHeartbeat(job)
    }
}

impl Write for ReleasePresence {
    type Output = Option<Vec<PresenceEvent>>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Option<Vec<PresenceEvent>>, StoreError> {
        let sessions = conn
            .prepare_cached("SELECT user, session FROM presence_online WHERE node = ?1 LIMIT ?2")
            .and_then(|mut stmt| {
                stmt.query_map(params![self.node, self.limit as i64], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .map_err(db_error)?;
        if sessions.is_empty() {
            conn.prepare_cached("DELETE FROM presence_nodes WHERE node = ?1")
                .and_then(|mut stmt| stmt.execute(params![self.node]))
                .map_err(db_error)?;
            return Ok(None);
        }
        let mut events = Vec::new();
        for (user, session) in sessions {
            let (Ok(user), Ok(session)) = (UserId::new(user), SessionId::new(session)) else {
                return Err(StoreError::Corrupt("a presence row holds an invalid id".into()));
            };
            let change =
                PresenceChange { user, session, online: Some(false), clients: Vec::new(), at_ms: self.at_ms };
            events.extend(record_presence(conn, &self.node, &change)?);
        }
        Ok(Some(events))
    }

    fn request(job: Job<Self>) -> Request {
        Request::ReleasePresence(job)
    }
}

impl Write for Revoke {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        revoke(conn, &self.user, self.session.as_ref(), self.closed_at_secs)
    }

    fn request(job: Job<Self>) -> Request {
        Request::Revoke(job)
    }
}

impl Write for Listen {
    type Output = ScopeListens;

    /// As of the caller's `now_ms` (the trait's), not the batch's.
    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<ScopeListens, StoreError> {
        listen(conn, &self.user, self.session.as_ref(), &self.topics, self.bounds, self.now_ms)
    }

    fn request(job: Job<Self>) -> Request {
        Request::Listen(job)
    }
}

impl Write for Unlisten {
    type Output = Vec<Topic>;

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<Vec<Topic>, StoreError> {
        unlisten(conn, &self.user, self.session.as_ref(), &self.topics)
    }

    fn request(job: Job<Self>) -> Request {
        Request::Unlisten(job)
    }
}

impl Write for ForgetSessionListens {
    type Output = ();

    fn run(
        &self,
        conn: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        forget_session_listens(conn, &self.user, self.session.as_ref())
    }

    fn request(job: Job<Self>) -> Request {
        Request::ForgetSessionListens(job)
    }
}

impl Write for InboxMark {
    type Output = InboxChunk;

    fn run(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<InboxChunk, StoreError> {
        inbox_mark(conn, writes, &self.user, &self.rows, self.mark, self.at_ms)
    }

    fn request(job: Job<Self>) -> Request {
        Request::InboxMark(job)
    }
}

impl Write for InboxDelete {
    type Output = InboxChunk;

    fn run(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<InboxChunk, StoreError> {
        inbox_delete(conn, writes, &self.user, &self.rows)
    }

    fn request(job: Job<Self>) -> Request {
        Request::InboxDelete(job)
    }
}

impl Write for SettleAll {
    type Output = ();

    /// Nothing in the batch: the writer settles once the batch has committed.
    fn run(
        &self,
        _: &Connection,
        _: &mut StagingWrites<'_>,
        _: &Retention,
        _: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    fn request(job: Job<Self>) -> Request {
        Request::SettleAll(job)
    }
}

fn append(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    retention: &Retention,
    now: i64,
    request: &Append,
) -> Result<Appended, StoreError> {
    let (entries, key): (&[NewNotification], _) = (&request.entries, request.key.as_deref());
    if let Some(key) = key
        && let Some(receipt) = recorded_receipt(conn, retention, now, key)?
    {
        return Ok(Appended::Duplicate(receipt));
    }

    let mut stored = Vec::with_capacity(entries.len());
    // Each touched user's row with `max_seq` kept up to date by this append (so its counts are
    // the user's after it), to apply `max_per_user` once per user, and the users in the order
    // they first appear, for the counts returned.
    let mut heads: HashMap<UserId, UserRow> = HashMap::new();
    let mut users: Vec<UserId> = Vec::new();
    {
        // The `users` row is only written for a new user: the notification joins the tail,
        // which counts it as in the inbox, unread and unseen (see SCHEMA_V3). And it is staged,
        // not inserted into the user's log (see `staging`).
        let mut new_user = conn
            .prepare_cached("INSERT INTO users (user, last_seq, pruned_through) VALUES (?1, 0, 0)")
            .map_err(db_error)?;
        for entry in entries {
            let mut row = match heads.get(&entry.user) {
                Some(row) => *row,
                None => match writes.user_row(conn, &entry.user)? {
                    Some(row) => row,
                    None => {
                        new_user.execute([entry.user.as_str()]).map_err(db_error)?;
                        UserRow::default()
                    }
                },
            };
            let seq = row.head() + 1;
            row.max_seq = seq;
            let notification = Arc::new(Notification::new(
                entry.user.clone(),
                Some(seq_from_sql(seq)?),
                Arc::clone(&entry.kind),
                Arc::clone(&entry.data),
                entry.created_at_ms,
                entry.audience.clone(),
            ));
            writes.stage(conn, &notification, row)?;
            if heads.insert(entry.user.clone(), row).is_none() {
                users.push(entry.user.clone());
            }
            stored.push(notification);
        }
    }

    let max_per_user = i64::try_from(retention.max_per_user).unwrap_or(i64::MAX);
    let mut counts = Vec::with_capacity(users.len());
    for user in users {
        let row = heads[&user];
        let bound = row.head().saturating_sub(max_per_user);
        let user_counts = if bound > row.pruned_through {
            prune_user_through(conn, writes, &user, row.pruned_through, bound)?;
            read_counts(conn, user.as_str())?
        } else {
            // Nothing but this append changed the user's log since the row was read.
            row.counts(user.as_str())?
        };
        counts.push((user, user_counts));
    }

    if let Some(key) = key {
        let receipt = Receipt {
            notifications: stored
                .iter()
                .map(|n| ReceiptEntry { user: n.user.clone(), seq: n.seq.unwrap_or_default() })
                .collect(),
            topic: None,
            job: None,
            delivered: 0,
        };
        record_key(conn, key, now, &receipt)?;
    }
    let push_pending =
        if request.push.is_empty() { Vec::new() } else { mark_pushes(conn, request, &stored)? };
    Ok(Appended::Stored { notifications: stored, counts, push_pending })
}

/// Keeps a push marker for each of `stored` whose entry has a push request and whose user has
/// a push subscription: one statement per distinct request (one per publish), its entries
/// passed as one JSON array of `[user, seq]`, each user checked by one look-up of
/// `push_subscriptions_by_user`; nothing is written for a user without one. Returns the
/// markers kept.
fn mark_pushes(
    conn: &Connection,
    request: &Append,
    stored: &[Arc<Notification>],
) -> Result<Vec<herald_core::PushMarker>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "INSERT INTO push_pending (user, seq, expand_by, request)
             SELECT json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'), ?2, ?3 FROM json_each(?1) AS e
             WHERE EXISTS (SELECT 1 FROM push_subscriptions s WHERE s.user = json_extract(e.value, '$[0]'))
             RETURNING user, seq",
        )
        .map_err(db_error)?;
    let mut marked = Vec::new();
    for push in &request.push {
        let of_this: Vec<(&str, Seq)> = request
            .entries
            .iter()
            .zip(stored)
            .filter(|(entry, _)| entry.push.as_ref().is_some_and(|p| Arc::ptr_eq(p, &push.request)))
            .map(|(_, n)| (n.user.as_str(), n.seq.unwrap_or_default()))
            .collect();
        if of_this.is_empty() {
            continue;
        }
        let pairs = serde_json::to_string(&of_this)
            .map_err(|e| StoreError::Corrupt(format!("push markers do not serialize: {e}")))?;
        let rows = stmt
            .query_map(params![pairs, push.request.expand_by_ms, push.json], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(db_error)?;
        for (user, seq) in rows {
            let user =
                UserId::new(user).map_err(|e| StoreError::Corrupt(format!("a push marker's user: {e}")))?;
            marked.push(herald_core::PushMarker { user, seq: seq_from_sql(seq)? });
        }
    }
    Ok(marked)
}

/// The receipt recorded with `key`, if it was recorded within the idempotency window. Appends
/// and topic appends share the keys: a key names one publish, whatever it published.
fn recorded_receipt(
    conn: &Connection,
    retention: &Retention,
    now: i64,
    key: &str,
) -> Result<Option<Receipt>, StoreError> {
    let found: Option<(i64, String)> = conn
        .prepare_cached("SELECT created_at, receipt FROM idempotency WHERE key = ?1")
        .and_then(|mut stmt| stmt.query_row([key], |row| Ok((row.get(0)?, row.get(1)?))).optional())
        .map_err(db_error)?;
    match found {
        Some((created_at, receipt)) if created_at >= crate::cutoff_ms(now, retention.idempotency_window) => {
            serde_json::from_str(&receipt)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(format!("receipt of idempotency key {key:?}: {e}")))
        }
        _ => Ok(None),
    }
}

/// Remembers `key` as of `now` with `receipt`. An expired record of the same key is replaced:
/// the key now stands for this publish.
fn record_key(conn: &Connection, key: &str, now: i64, receipt: &Receipt) -> Result<(), StoreError> {
    let receipt = crate::receipt_json(receipt)?;
    conn.prepare_cached(
        "INSERT INTO idempotency (key, created_at, receipt) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at, receipt = excluded.receipt",
    )
    .and_then(|mut stmt| stmt.execute(params![key, now, receipt]))
    .map_err(db_error)?;
    Ok(())
}

/// Stores `event` with its topic's next tseq, read and bumped in `topic_heads` (the row is made
/// by the topic's first event and never deleted, so tseqs are never given out twice), applies
/// `topic_max_events` (the oldest go, `pruned_through` rises), and records `key`: all in the
/// writer's transaction, so all of it commits or none.
fn append_topic(
    conn: &Connection,
    retention: &Retention,
    now: i64,
    event: &NewTopicEvent,
    key: Option<&str>,
) -> Result<TopicAppended, StoreError> {
    if let Some(key) = key
        && let Some(receipt) = recorded_receipt(conn, retention, now, key)?
    {
        return Ok(TopicAppended::Duplicate(receipt));
    }
    let topic = event.topic.as_str();
    let (tseq, pruned_through): (i64, i64) = conn
        .prepare_cached(
            "INSERT INTO topic_heads (topic, last_tseq, pruned_through) VALUES (?1, 1, 0)
             ON CONFLICT (topic) DO UPDATE SET last_tseq = last_tseq + 1
             RETURNING last_tseq, pruned_through",
        )
        .and_then(|mut stmt| stmt.query_row([topic], |row| Ok((row.get(0)?, row.get(1)?))))
        .map_err(db_error)?;
    conn.prepare_cached(
        "INSERT INTO topic_log (topic, tseq, type, data, created_at, except_user, except_client)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            topic,
            tseq,
            &*event.kind,
            event.data.get(),
            event.created_at_ms,
            event.except_user.as_ref().map(UserId::as_str),
            event.except_client.as_ref().map(|c| c.as_str()),
        ])
    })
    .map_err(db_error)?;
    let max_events = i64::try_from(retention.topic_max_events).unwrap_or(i64::MAX);
    let bound = tseq.saturating_sub(max_events);
    if bound > pruned_through {
        prune_topic_through(conn, topic, pruned_through, bound)?;
    }
    let tseq = seq_from_sql(tseq)?;
    let stored = Arc::new(TopicEvent::with_tseq(
        Some(tseq),
        event.topic.clone(),
        Arc::clone(&event.kind),
        Arc::clone(&event.data),
        event.created_at_ms,
        event.except_user.clone(),
        event.except_client.clone(),
    ));
    if let Some(key) = key {
        let receipt = Receipt {
            notifications: Vec::new(),
            topic: Some(TopicReceipt { topic: event.topic.clone(), tseq }),
            job: None,
            delivered: 0,
        };
        record_key(conn, key, now, &receipt)?;
    }
    Ok(TopicAppended::Stored(stored))
}

/// Deletes `topic`'s events with tseq in `(from, through]` and raises its `pruned_through` to
/// `through` (never lowers it). Returns how many events went.
fn prune_topic_through(conn: &Connection, topic: &str, from: i64, through: i64) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached("DELETE FROM topic_log WHERE topic = ?1 AND tseq > ?2 AND tseq <= ?3")
        .and_then(|mut stmt| stmt.execute(params![topic, from, through]))
        .map_err(db_error)?;
    conn.prepare_cached(
        "UPDATE topic_heads SET pruned_through = ?2 WHERE topic = ?1 AND pruned_through < ?2",
    )
    .and_then(|mut stmt| stmt.execute(params![topic, through]))
    .map_err(db_error)?;
    Ok(deleted as u64)
}

/// Deletes `user`'s notifications with seq in `(from, through]`, takes them off the counts, and
/// raises its `pruned_through` to `through` (never lowers it). Returns how many notifications
/// went.
fn prune_user_through(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    from: i64,
    through: i64,
) -> Result<u64, StoreError> {
    let user = settle_and_fold(conn, writes, user)?;
    let mut delta = CountsDelta::default();
    let deleted = delete_rows(conn, user, from, through, &mut delta)?;
    if !deleted.is_empty() {
        apply_counts(conn, user, delta)?;
    }
    conn.prepare_cached("UPDATE users SET pruned_through = ?2 WHERE user = ?1 AND pruned_through < ?2")
        .and_then(|mut stmt| stmt.execute(params![user, through]))
        .map_err(db_error)?;
    Ok(deleted.len() as u64)
}

/// Deletes `user`'s notifications with seq in `(from, through]` and adds what they counted for
/// (by their states, as they are deleted) to `delta`, for the caller to apply. Returns the seqs
/// deleted, ascending.
fn delete_rows(
    conn: &Connection,
    user: &str,
    from: i64,
    through: i64,
    delta: &mut CountsDelta,
) -> Result<Vec<Seq>, StoreError> {
    let mut seqs = conn
        .prepare_cached(
            "DELETE FROM notifications WHERE user = ?1 AND seq > ?2 AND seq <= ?3
             RETURNING seq, seen_at, read_at, archived_at",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![user, from, through], |row| {
                Ok((row.get::<_, i64>(0)?, read_state(row, 1)?))
            })?
            .map(|row| {
                row.map(|(seq, state)| {
                    *delta += CountsDelta::between(Some(&state), None);
                    seq
                })
            })
            .collect::<rusqlite::Result<Vec<i64>>>()
        })
        .map_err(db_error)?
        .into_iter()
        .map(seq_from_sql)
        .collect::<Result<Vec<Seq>, _>>()?;
    // RETURNING gives no order.
    seqs.sort_unstable();
    Ok(seqs)
}

/// Marks the selected notifications of `user`: reads the state of each, computes the new one
/// ([`ItemState::marked`], the same rule as every store), writes the rows that change and the
/// counts' difference. A range takes at most [`INBOX_CHUNK_ROWS`] rows that the mark changes.
fn inbox_mark(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    rows: &Rows,
    mark: Mark,
    at_ms: i64,
) -> Result<InboxChunk, StoreError> {
    let user = settle_and_fold(conn, writes, user)?;
    let mut next_after = None;
    let rows: Vec<(i64, ItemState)> = match rows {
        Rows::Seqs(seqs) => {
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seen_at, read_at, archived_at FROM notifications WHERE user = ?1 AND seq = ?2",
                )
                .map_err(db_error)?;
            let mut rows = Vec::with_capacity(seqs.len());
            for &seq in seqs {
                let seq = sql_seq(seq);
                if let Some(state) = stmt
                    .query_row(params![user, seq], |row| read_state(row, 0))
                    .optional()
                    .map_err(db_error)?
                {
                    rows.push((seq, state));
                }
            }
            rows.sort_unstable_by_key(|(seq, _)| *seq);
            rows.dedup_by_key(|(seq, _)| *seq);
            rows
        }
        Rows::Range { after, through } => {
            let rows: Vec<(i64, ItemState)> = conn
                .prepare_cached(&format!(
                    "SELECT seq, seen_at, read_at, archived_at FROM notifications
                     WHERE user = ?1 AND seq > ?2 AND seq <= ?3 AND {} ORDER BY seq LIMIT ?4",
                    // Exactly the rows the mark changes, so that every chunk makes progress.
                    match mark {
                        Mark::Read => "read_at IS NULL",
                        Mark::Unread => "read_at IS NOT NULL",
                        Mark::Seen => "seen_at IS NULL",
                        Mark::Archived => "archived_at IS NULL",
                        Mark::Unarchived => "archived_at IS NOT NULL",
                    }
                ))
                .and_then(|mut stmt| {
                    stmt.query_map(params![user, after, through, INBOX_CHUNK_ROWS], |row| {
                        Ok((row.get(0)?, read_state(row, 1)?))
                    })?
                    .collect()
                })
                .map_err(db_error)?;
            if rows.len() as i64 == INBOX_CHUNK_ROWS {
                next_after = rows.last().map(|(seq, _)| *seq);
            }
            rows
        }
    };
    let mut update = conn
        .prepare_cached(
            "UPDATE notifications SET seen_at = ?3, read_at = ?4, archived_at = ?5 WHERE user = ?1 AND seq = ?2",
        )
        .map_err(db_error)?;
    let mut delta = CountsDelta::default();
    let mut seqs = Vec::new();
    for (seq, state) in rows {
        let Some(next) = state.marked(mark, at_ms) else { continue };
        update
            .execute(params![user, seq, next.seen_at_ms, next.read_at_ms, next.archived_at_ms])
            .map_err(db_error)?;
        delta += CountsDelta::between(Some(&state), Some(&next));
        seqs.push(seq_from_sql(seq)?);
    }
    let counts = if seqs.is_empty() { read_counts(conn, user)? } else { apply_counts(conn, user, delta)? };
    Ok(InboxChunk { change: InboxChange { seqs, counts }, next_after })
}

/// Deletes the selected notifications of `user` and takes them off the counts. Leaves
/// `pruned_through` alone: a deletion is not retention. A range takes at most
/// [`INBOX_CHUNK_ROWS`] rows.
fn inbox_delete(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &UserId,
    rows: &Rows,
) -> Result<InboxChunk, StoreError> {
    let user = settle_and_fold(conn, writes, user)?;
    let mut delta = CountsDelta::default();
    let mut next_after = None;
    let seqs = match rows {
        Rows::Range { after, through } => {
            // The last seq of this chunk: the INBOX_CHUNK_ROWS-th stored one, if there are that many.
            let chunk_end: Option<i64> = conn
                .prepare_cached(
                    "SELECT seq FROM notifications WHERE user = ?1 AND seq > ?2 AND seq <= ?3
                     ORDER BY seq LIMIT 1 OFFSET ?4",
                )
                .and_then(|mut stmt| {
                    stmt.query_row(params![user, after, through, INBOX_CHUNK_ROWS - 1], |row| row.get(0))
                        .optional()
                })
                .map_err(db_error)?;
            let end = match chunk_end {
                Some(end) if end < *through => {
                    next_after = Some(end);
                    end
                }
                _ => *through,
            };
            delete_rows(conn, user, *after, end, &mut delta)?
        }
        Rows::Seqs(seqs) => {
            let mut deleted = Vec::new();
            for &seq in seqs {
                let seq = sql_seq(seq);
                if seq > 0 {
                    deleted.extend(delete_rows(conn, user, seq - 1, seq, &mut delta)?);
                }
            }
            deleted.sort_unstable();
            deleted.dedup();
            deleted
        }
    };
    let counts = if seqs.is_empty() { read_counts(conn, user)? } else { apply_counts(conn, user, delta)? };
    Ok(InboxChunk { change: InboxChange { seqs, counts }, next_after })
}

fn complete_receipt(conn: &Connection, key: &str, receipt: &str) -> Result<(), StoreError> {
    // No row: the key was pruned meanwhile; a later repeat is a new publish, as the window says.
    conn.prepare_cached("UPDATE idempotency SET receipt = ?2 WHERE key = ?1")
        .and_then(|mut stmt| stmt.execute(params![key, receipt]))
        .map_err(db_error)?;
    Ok(())
}

/// One bounded chunk of `prune`.
///
/// Up to [`PRUNE_CHUNK_ROWS`] expired notifications are selected (through the `created_at`
/// index); for each user among them, every seq up to the highest one selected goes, also ones
/// stamped later (clocks step back), so that retention removes a prefix of the log and
/// `pruned_through` keeps its meaning: everything up to it is gone. Each user's counts lose what
/// the removed notifications counted for, and the chunk reports them. Durable topic events go
/// the same way: up to [`PRUNE_CHUNK_ROWS`] expired ones, each topic's highest one taking every
/// lower tseq of its topic with it and raising its `pruned_through`. Idempotency keys, finished
/// fan-out jobs and revocations go up to [`PRUNE_CHUNK_ROWS`] each.
fn prune_chunk(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    chunk: &PruneChunk,
) -> Result<PrunedChunk, StoreError> {
    let PruneChunk { notifications_before, keys_before, revocations_before, topic_events_before } = *chunk;
    writes.settle_older_than(conn, notifications_before)?;
    let expired: Vec<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT user, MAX(seq), COUNT(*) FROM (
                 SELECT user, seq FROM notifications WHERE created_at < ?1 LIMIT ?2
             ) GROUP BY user",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![notifications_before, PRUNE_CHUNK_ROWS], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect()
        })
        .map_err(db_error)?;
    let mut selected = 0;
    let mut notifications = 0;
    let mut inboxes = Vec::with_capacity(expired.len());
    for (user, through, count) in expired {
        selected += count;
        let user =
            UserId::new(user).map_err(|e| StoreError::Corrupt(format!("user id in the store: {e}")))?;
        notifications += prune_user_through(conn, writes, &user, 0, through)?;
        // Any staged rows of the user were settled by the prune: SQLite's counts are all of them.
        let counts = read_counts(conn, user.as_str())?;
        inboxes.push(PrunedInbox { user, through: seq_from_sql(through)?, counts });
    }

    let expired_topics: Vec<(String, i64, i64)> = conn
        .prepare_cached(
            "SELECT topic, MAX(tseq), COUNT(*) FROM (
                 SELECT topic, tseq FROM topic_log WHERE created_at < ?1 LIMIT ?2
             ) GROUP BY topic",
        )
        .and_then(|mut stmt| {
            stmt.query_map(params![topic_events_before, PRUNE_CHUNK_ROWS], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })?
            .collect()
        })
        .map_err(db_error)?;
    let mut topics_selected = 0;
    let mut topic_events = 0;
    for (topic, through, count) in expired_topics {
        topics_selected += count;
        topic_events += prune_topic_through(conn, &topic, 0, through)?;
    }

    let idempotency_keys = conn
        .prepare_cached(
            "DELETE FROM idempotency WHERE rowid IN (
                 SELECT rowid FROM idempotency WHERE created_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![keys_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    // Finished jobs go with their chunks' keys: a job's id is answered as long as they are.
    let jobs = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE rowid IN (
                 SELECT rowid FROM jobs WHERE finished_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![keys_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    // Every token these refuse has expired (see `Retention::revocation_window`).
    let revocations = conn
        .prepare_cached(
            "DELETE FROM revocations WHERE (user, session) IN (
                 SELECT user, session FROM revocations WHERE closed_at < ?1 LIMIT ?2
             )",
        )
        .and_then(|mut stmt| stmt.execute(params![revocations_before, PRUNE_CHUNK_ROWS]))
        .map_err(db_error)? as i64;

    Ok(PrunedChunk {
        notifications,
        idempotency_keys: idempotency_keys as u64,
        revocations: revocations as u64,
        topic_events,
        jobs: jobs as u64,
        inboxes,
        done: selected < PRUNE_CHUNK_ROWS
            && topics_selected < PRUNE_CHUNK_ROWS
            && idempotency_keys < PRUNE_CHUNK_ROWS
            && jobs < PRUNE_CHUNK_ROWS
            && revocations < PRUNE_CHUNK_ROWS,
    })
}

/// Inserts the job, or replaces the row with its id: the indexed copies of its fields with the
/// JSON, so that they never disagree.
fn save_job(conn: &Connection, job: &SaveJob) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO jobs (id, created_at, finished_at, job) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET
             created_at = excluded.created_at, finished_at = excluded.finished_at, job = excluded.job",
    )
    .and_then(|mut stmt| stmt.execute(params![job.id, job.created_at_ms, job.finished_at_ms, job.json]))
    .map_err(db_error)?;
    Ok(())
}

/// Records a presence change of `node` (see `Store::record_presence`): reads the rows the plan
/// needs, writes the node's row, and numbers the events from the user's counter. The writer
/// thread runs one request at a time, so the user is serialized.
fn record_presence(
    conn: &Connection,
    node: &str,
    change: &PresenceChange,
) -> Result<Vec<PresenceEvent>, StoreError> {
    let user = change.user.as_str();
    let session = change.session.as_str();
    let (user_rows, session_rows, had_row): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(session = ?2), 0), COALESCE(SUM(session = ?2 AND node = ?3), 0)
             FROM presence_online WHERE user = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![user, session, node], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        })
        .map_err(db_error)?;
    let plan = change.plan(had_row > 0, session_rows as u64, user_rows as u64);
    match plan.row {
        RowChange::Keep => {}
        RowChange::Insert => {
            conn.prepare_cached("INSERT INTO presence_online (user, session, node) VALUES (?1, ?2, ?3)")
                .and_then(|mut stmt| stmt.execute(params![user, session, node]))
                .map_err(db_error)?;
        }
        RowChange::Delete => {
            conn.prepare_cached("DELETE FROM presence_online WHERE user = ?1 AND session = ?2 AND node = ?3")
                .and_then(|mut stmt| stmt.execute(params![user, session, node]))
                .map_err(db_error)?;
        }
    }
    if plan.events.is_empty() {
        return Ok(Vec::new());
    }
    let last: i64 = conn
        .prepare_cached(
            "INSERT INTO presence_seqs (user, last_seq) VALUES (?1, ?2)
             ON CONFLICT (user) DO UPDATE SET last_seq = last_seq + excluded.last_seq
             RETURNING last_seq",
        )
        .and_then(|mut stmt| stmt.query_row(params![user, plan.events.len() as i64], |row| row.get(0)))
        .map_err(db_error)?;
    Ok(plan.numbered(node, change, last as u64 - plan.events.len() as u64 + 1))
}

/// Records a close, keeping the latest one of the user and session.
fn revoke(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
    closed_at_secs: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO revocations (user, session, closed_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user, session) DO UPDATE SET closed_at = MAX(closed_at, excluded.closed_at)",
    )
    .and_then(|mut stmt| stmt.execute(params![user.as_str(), sql_session(session), closed_at_secs]))
    .map_err(db_error)?;
    Ok(())
}

/// Adds `topics` to `user`'s listens at `session`'s scope (`None`: user scope), within
/// `bounds`, and returns the scope's topics. Reads the scope first and decides before it writes
/// anything: over the scope's bound it changes nothing ([`ScopeListens::TooMany`]); a call that
/// adds no topic is never over it, nor one that names none (it changes nothing at all). A
/// session's first listen when the user already has `sessions_max` sessions with listens forgets
/// the one whose latest listen is the oldest (then the smallest id), in this transaction. Each
/// listen of a session sets `listened_at` on all its rows (see `SCHEMA_V7`).
fn listen(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
    topics: &[Topic],
    bounds: ListenBounds,
    now_ms: i64,
) -> Result<ScopeListens, StoreError> {
    let current = read_scope_topics(conn, user, session)?;
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
        forget_oldest_session_if_full(conn, user, bounds.sessions_max)?;
    }
    let scope = sql_session(session);
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO topic_listens (user, session, topic, listened_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db_error)?;
    for topic in &new {
        insert.execute(params![user.as_str(), scope, topic.as_str(), now_ms]).map_err(db_error)?;
    }
    if session.is_some() {
        conn.prepare_cached("UPDATE topic_listens SET listened_at = ?3 WHERE user = ?1 AND session = ?2")
            .and_then(|mut stmt| stmt.execute(params![user.as_str(), scope, now_ms]))
            .map_err(db_error)?;
    }
    let mut now: Vec<Topic> = current;
    now.extend(new.into_iter().cloned());
    now.sort_unstable();
    Ok(ScopeListens::Listening(now))
}

/// Before a session of `user` gets its first listen: if the user has `sessions_max` sessions
/// with listens (or more), forgets every listen of the one whose latest listen is the oldest
/// (ties: the smallest id), as the hub evicts its least recently active session.
fn forget_oldest_session_if_full(
    conn: &Connection,
    user: &UserId,
    sessions_max: usize,
) -> Result<(), StoreError> {
    // `session > ''`: session scopes only, a range of the primary key.
    let sessions: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT session, MAX(listened_at) FROM topic_listens WHERE user = ?1 AND session > ''
             GROUP BY session",
        )
        .and_then(|mut stmt| stmt.query_map([user.as_str()], |row| Ok((row.get(0)?, row.get(1)?)))?.collect())
        .map_err(db_error)?;
    if sessions.len() < sessions_max {
        return Ok(());
    }
    if let Some((oldest, _)) = sessions.iter().min_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0))) {
        let session = session_from_sql(oldest, "topic_listens")?;
        forget_session_listens(conn, user, session.as_ref())?;
    }
    Ok(())
}

/// Removes `topics` from `user`'s listens at `session`'s scope (those it does not listen to are
/// no error) and returns the scope's topics.
fn unlisten(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
    topics: &[Topic],
) -> Result<Vec<Topic>, StoreError> {
    let mut delete = conn
        .prepare_cached("DELETE FROM topic_listens WHERE user = ?1 AND session = ?2 AND topic = ?3")
        .map_err(db_error)?;
    for topic in topics {
        delete.execute(params![user.as_str(), sql_session(session), topic.as_str()]).map_err(db_error)?;
    }
    read_scope_topics(conn, user, session)
}

/// Forgets the listens of `user`'s `session`, or with `None` of all its sessions (`session >
/// ''`: user scope stays).
fn forget_session_listens(
    conn: &Connection,
    user: &UserId,
    session: Option<&SessionId>,
) -> Result<(), StoreError> {
    match session {
        Some(session) => conn
            .prepare_cached("DELETE FROM topic_listens WHERE user = ?1 AND session = ?2")
            .and_then(|mut stmt| stmt.execute(params![user.as_str(), session.as_str()])),
        None => conn
            .prepare_cached("DELETE FROM topic_listens WHERE user = ?1 AND session > ''")
            .and_then(|mut stmt| stmt.execute([user.as_str()])),
    }
    .map_err(db_error)?;
    Ok(())
}

/// Prepares `user` for a write that is not an append: settles its staged rows (which also drops
/// the row the writer kept for its next append, see `staging`) and folds its tail
/// ([`fold_tail`]). Every write that changes a `users` row or a user's log, other than an
/// append's staging, starts here: that is what keeps the writer's kept rows true.
fn settle_and_fold<'u>(
    conn: &Connection,
    writes: &mut StagingWrites<'_>,
    user: &'u UserId,
) -> Result<&'u str, StoreError> {
    writes.settle_user(conn, user)?;
    fold_tail(conn, user.as_str())?;
    Ok(user.as_str())
}

/// Folds `user`'s tail into its `users` row: its counts and `last_seq` then describe the whole
/// log. Every write but an append does this first (through [`settle_and_fold`]), so that the tail stays what appends made it
/// (consecutive seqs, unread, unseen, not archived) and the row's counts can be adjusted by the
/// states of the rows a write changes.
fn fold_tail(conn: &Connection, user: &str) -> Result<(), StoreError> {
    // Read first, then a plain update: `MAX(seq)` inside the UPDATE's own expression would not
    // get SQLite's min/max optimization and would walk the user's whole log.
    let Some(row) = read_user_row(conn, user)? else { return Ok(()) };
    let tail = row.tail();
    if tail == 0 {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE users SET total = total + ?2, unread = unread + ?2, unseen = unseen + ?2,
             inbox_version = inbox_version + ?2, last_seq = ?3
         WHERE user = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![user, tail, row.max_seq]))
    .map_err(db_error)?;
    Ok(())
}

/// Adds `delta` to `user`'s counts and one to its version; returns the new counts. The caller
/// folded the tail first ([`fold_tail`]).
fn apply_counts(conn: &Connection, user: &str, delta: CountsDelta) -> Result<InboxCounts, StoreError> {
    conn.prepare_cached(
        "UPDATE users SET total = total + ?2, unread = unread + ?3, unseen = unseen + ?4,
             archived = archived + ?5, inbox_version = inbox_version + 1
         WHERE user = ?1",
    )
    .and_then(|mut stmt| stmt.execute(params![user, delta.total, delta.unread, delta.unseen, delta.archived]))
    .map_err(db_error)?;
    read_counts(conn, user)
}

/// Upserts the subscription (by id), then removes what [`herald_core::push_evictions`] says of
/// the user's rows (at most the bound plus one, read by `push_subscriptions_by_user`).
fn push_subscribe(conn: &Connection, request: &PushSubscribe) -> Result<Vec<String>, StoreError> {
    let subscription = &request.subscription;
    conn.prepare_cached(
        "INSERT INTO push_subscriptions (id, user, session, created_at, subscription) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET user = excluded.user, session = excluded.session,
             created_at = excluded.created_at, subscription = excluded.subscription",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            subscription.id,
            subscription.user.as_str(),
            subscription.session.as_str(),
            subscription.created_at_ms,
            request.json
        ])
    })
    .map_err(db_error)?;
    let kept = super::reads::read_push_subscriptions(conn, &subscription.user)?;
    let evicted = herald_core::push_evictions(&kept, &subscription.session, request.bounds);
    let mut delete = conn.prepare_cached("DELETE FROM push_subscriptions WHERE id = ?1").map_err(db_error)?;
    for id in &evicted {
        delete.execute([id]).map_err(db_error)?;
    }
    Ok(evicted)
}

/// Removes a delivery from the outbox, or moves it later with its new attempt count (in its
/// `due_at` column and in its JSON alike).
fn push_settle(conn: &Connection, id: &str, settle: PushSettle) -> Result<(), StoreError> {
    match settle {
        PushSettle::Done => {
            conn.prepare_cached("DELETE FROM push_outbox WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute([id]))
                .map_err(db_error)?;
        }
        PushSettle::Retry { due_at_ms, attempts } => {
            let json: Option<String> = conn
                .prepare_cached("SELECT delivery FROM push_outbox WHERE id = ?1")
                .and_then(|mut stmt| stmt.query_row([id], |row| row.get(0)).optional())
                .map_err(db_error)?;
            let Some(json) = json else { return Ok(()) };
            let mut delivery: herald_core::PushDelivery = crate::push_from_json(&json)?;
            delivery.due_at_ms = due_at_ms;
            delivery.attempts = attempts;
            let json = crate::push_json(&delivery)?;
            conn.prepare_cached("UPDATE push_outbox SET due_at = ?2, delivery = ?3 WHERE id = ?1")
                .and_then(|mut stmt| stmt.execute(params![id, due_at_ms, json]))
                .map_err(db_error)?;
        }
    }
    Ok(())
}
