//! The operations: [`Store`] for [`SqliteStore`], where the store's contract meets the reads and
//! the writer. A write (a topic append and a job's save too) becomes a request to the writer (an inbox change of "all up to N", and
//! `prune`, one request per bounded chunk); a read takes the user's staged notifications from
//! memory, then runs on a pooled read-only connection, which merges them in. No SQL lives here:
//! it is in `reads` and `writes`.

use std::sync::Arc;

use async_trait::async_trait;
use herald_core::{
    Appended, Epoch, FanoutJob, InboxChange, InboxCounts, InboxPage, InboxQuery, ListenBounds, LogHead,
    LogPage, Mark, NewNotification, NewTopicEvent, PresenceBeat, PresenceChange, PresenceEvent, PruneReport,
    PushBounds, PushDelivery, PushExpansion, PushMarker, PushPending, PushSettle, PushSubscription, Receipt,
    Revocation, ScopeListens, Selection, Seq, SessionId, Store, StoreError, StoredListen, Topic,
    TopicAppended, TopicHead, TopicListener, TopicPage, UserId,
};

use super::SqliteStore;
use super::reads::{
    read_head, read_inbox_counts, read_inbox_page, read_job, read_listens, read_log_page, read_revocations,
    read_topic_heads, read_topic_listeners, read_topic_page, read_unfinished_jobs,
};
use super::request::{
    Append, AppendPush, AppendTopic, CompleteReceipt, ForgetSessionListens, InboxChunk, InboxDelete,
    InboxMark, Listen, PresenceHeartbeat, PruneChunk, PushClaim, PushClaimPending, PushEnqueue, PushExpand,
    PushSettleRow, PushSubscribe, PushUnsubscribe, RecordPresence, ReleasePresence, Revoke, Rows, SaveJob,
    Unlisten, Write,
};
use super::sql::sql_seq;

#[async_trait]
impl Store for SqliteStore {
    async fn push_subscribe(
        &self,
        subscription: &PushSubscription,
        bounds: PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        let json = crate::push_json(subscription)?;
        // Before the write: an append checked after this sees the user (see `push_users.rs`).
        self.push_users.insert(subscription.user.as_str());
        self.writer.submit(PushSubscribe { subscription: subscription.clone(), json, bounds }).await
    }

    async fn push_unsubscribe(&self, user: &UserId, id: &str) -> Result<bool, StoreError> {
        self.writer.submit(PushUnsubscribe { user: user.clone(), id: id.to_owned() }).await
    }

    async fn push_subscriptions(&self, user: &UserId) -> Result<Vec<PushSubscription>, StoreError> {
        let user = user.clone();
        self.readers.read(move |tx| super::reads::read_push_subscriptions(tx, &user)).await
    }

    async fn push_subscription(&self, id: &str) -> Result<Option<PushSubscription>, StoreError> {
        let id = id.to_owned();
        self.readers.read(move |tx| super::reads::read_push_subscription(tx, &id)).await
    }

    async fn push_enqueue(&self, deliveries: &[PushDelivery]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let rows = deliveries
            .iter()
            .map(|d| Ok((d.id.clone(), d.due_at_ms, crate::push_json(d)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        self.writer.submit(PushEnqueue { rows }).await
    }

    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<PushDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until_ms = now_ms.saturating_add(crate::lease_ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.writer.submit(PushClaim { now_ms, limit, until_ms }).await?;
        let mut claimed = rows
            .iter()
            .map(|json| crate::push_from_json::<PushDelivery>(json))
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by(|a, b| (a.due_at_ms, &a.id).cmp(&(b.due_at_ms, &b.id)));
        Ok(claimed)
    }

    async fn push_expand(
        &self,
        expansions: &[PushExpansion],
        to_senders: &[PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        if expansions.is_empty() && to_senders.is_empty() {
            return Ok(0);
        }
        let key = |m: &PushMarker| (m.user.as_str().to_owned(), sql_seq(m.seq));
        let expansions = expansions
            .iter()
            .map(|e| {
                let deliveries = e
                    .deliveries
                    .iter()
                    .map(|d| Ok((d.id.clone(), d.due_at_ms, crate::push_json(d)?)))
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((key(&e.marker), deliveries))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let to_senders = to_senders.iter().map(key).collect();
        self.writer.submit(PushExpand { expansions, to_senders, now_ms }).await
    }

    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<PushPending>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until_ms = now_ms.saturating_add(crate::lease_ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.writer.submit(PushClaimPending { now_ms, limit, until_ms }).await?;
        let mut claimed = rows
            .into_iter()
            .map(|(user, seq, json)| {
                let user = UserId::new(user)
                    .map_err(|e| StoreError::Corrupt(format!("a push marker's user: {e}")))?;
                let seq = super::sql::seq_from_sql(seq)?;
                let mut request: herald_core::PushRequest = crate::push_from_json(&json)?;
                request.expand_by_ms = until_ms;
                Ok(PushPending { marker: PushMarker { user, seq }, request })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        claimed.sort_by(|a, b| a.marker.cmp(&b.marker));
        Ok(claimed)
    }

    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.readers.read(super::reads::read_push_next_due).await
    }

    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        self.readers.read(super::reads::read_push_outbox_depth).await
    }

    async fn push_settle(&self, id: &str, settle: PushSettle) -> Result<(), StoreError> {
        self.writer.submit(PushSettleRow { id: id.to_owned(), settle }).await
    }

    async fn save_job(&self, job: &FanoutJob) -> Result<(), StoreError> {
        let json = crate::job_json(job)?;
        let (id, created_at_ms, finished_at_ms) = (job.id.clone(), job.created_at_ms, job.finished_at_ms);
        self.writer.submit(SaveJob { id, created_at_ms, finished_at_ms, json }).await
    }

    async fn job(&self, id: &str) -> Result<Option<FanoutJob>, StoreError> {
        let id = id.to_owned();
        self.readers.read(move |tx| read_job(tx, &id)).await
    }

    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<FanoutJob>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.readers.read(move |tx| read_unfinished_jobs(tx, limit)).await
    }

    async fn append_topic(
        &self,
        event: NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<TopicAppended, StoreError> {
        let key = idempotency_key.map(str::to_owned);
        self.writer.submit(AppendTopic { event, key }).await
    }

    async fn topic_heads(&self, topics: &[Topic]) -> Result<(Vec<TopicHead>, Epoch), StoreError> {
        if topics.is_empty() {
            return Ok((Vec::new(), self.epoch()));
        }
        let topics = topics.to_vec();
        let epoch = self.epoch();
        let heads = self.readers.read(move |tx| read_topic_heads(tx, &topics)).await?;
        Ok((heads, epoch))
    }

    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<TopicPage, StoreError> {
        let topic = topic.clone();
        let epoch = self.epoch();
        self.readers.read(move |tx| read_topic_page(tx, &topic, after, limit, epoch)).await
    }

    async fn append(
        &self,
        mut entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        if entries.is_empty() && idempotency_key.is_none() {
            return Ok(Appended::Stored {
                notifications: Vec::new(),
                counts: Vec::new(),
                push_pending: Vec::new(),
            });
        }
        let key = idempotency_key.map(str::to_owned);
        // No push request for a user who surely has no subscription (most of them): an append
        // where none is left does no push work on the writer thread.
        for entry in &mut entries {
            if entry.push.is_some() && !self.push_users.may_have(entry.user.as_str()) {
                entry.push = None;
            }
        }
        // Each distinct push request once (a publish's entries share one), serialized here rather
        // than on the writer thread; none at all when no entry has one.
        let mut push: Vec<AppendPush> = Vec::new();
        for request in entries.iter().filter_map(|entry| entry.push.as_ref()) {
            if !push.iter().any(|p| Arc::ptr_eq(&p.request, request)) {
                push.push(AppendPush { request: Arc::clone(request), json: crate::push_json(&**request)? });
            }
        }
        self.writer.submit(Append { entries, key, push }).await
    }

    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        // Serialized here, not on the writer thread, which every publish waits for.
        let receipt = crate::receipt_json(receipt)?;
        let key = idempotency_key.to_owned();
        self.writer.submit(CompleteReceipt { key, receipt }).await
    }

    // Every read takes the user's staged notifications before its SQLite snapshot and merges
    // them in (see `staging` for why this order gives a prefix of the log).

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let user = user.clone();
        // The staged ones after `after` (a replay needs no others), and the last seq for the head.
        let (staged, last_staged) = {
            let staging = self.staging.lock();
            (staging.notifications_after(&user, after), staging.last_seq(&user))
        };
        let epoch = self.epoch();
        self.readers.read(move |tx| read_log_page(tx, &user, after, limit, staged, last_staged, epoch)).await
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let user = user.clone();
        let last_staged = self.staging.lock().last_seq(&user);
        let epoch = self.epoch();
        self.readers.read(move |tx| read_head(tx, &user, last_staged, epoch)).await
    }

    fn epoch(&self) -> Epoch {
        Arc::clone(&self.epoch)
    }

    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        let (user, query) = (user.clone(), query.clone());
        let staged = self.staging.lock().notifications_after(&user, 0);
        self.readers.read(move |tx| read_inbox_page(tx, &user, &query, staged)).await
    }

    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        let user = user.clone();
        let last_staged = self.staging.lock().last_seq(&user);
        self.readers.read(move |tx| read_inbox_counts(tx, &user, last_staged)).await
    }

    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        self.inbox_change(selection, |rows| InboxMark { user: user.clone(), rows, mark, at_ms }).await
    }

    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        self.inbox_change(selection, |rows| InboxDelete { user: user.clone(), rows }).await
    }

    async fn record_presence(
        &self,
        node: &str,
        change: &PresenceChange,
    ) -> Result<Vec<PresenceEvent>, StoreError> {
        self.writer.submit(RecordPresence { node: node.to_owned(), change: change.clone() }).await
    }

    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<PresenceBeat, StoreError> {
        self.writer.submit(PresenceHeartbeat { node: node.to_owned(), now_ms, dead_before_ms }).await
    }

    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<PresenceEvent>>, StoreError> {
        self.writer.submit(ReleasePresence { node: node.to_owned(), at_ms, limit }).await
    }

    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        let (user, session) = (user.clone(), session.cloned());
        let closed_at_secs = i64::try_from(closed_at_secs).unwrap_or(i64::MAX);
        self.writer.submit(Revoke { user, session, closed_at_secs }).await
    }

    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        let user = user.clone();
        self.readers.read(move |tx| read_revocations(tx, &user)).await
    }

    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        let (user, session, topics) = (user.clone(), session.cloned(), topics.to_vec());
        self.writer.submit(Listen { user, session, topics, bounds, now_ms }).await
    }

    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        let (user, session, topics) = (user.clone(), session.cloned(), topics.to_vec());
        self.writer.submit(Unlisten { user, session, topics }).await
    }

    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        let (user, session) = (user.clone(), session.cloned());
        self.writer.submit(ForgetSessionListens { user, session }).await
    }

    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        let user = user.clone();
        self.readers.read(move |tx| read_listens(tx, &user)).await
    }

    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (topic, after) = (topic.clone(), after.cloned());
        self.readers.read(move |tx| read_topic_listeners(tx, &topic, after.as_ref(), limit)).await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn writer_stats(&self) -> Option<herald_core::StoreWriterStats> {
        let stats = self.writer.stats();
        Some(herald_core::StoreWriterStats {
            requests: stats.requests,
            batches: stats.batches,
            queued: stats.queued as u64,
            commit_duration: self.writer.commit_duration(),
        })
    }

    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let revocations_before = crate::cutoff_ms(now_ms, self.retention.revocation_window) / 1000;
        let topic_events_before = crate::cutoff_ms(now_ms, self.retention.topic_max_age);
        let mut report = PruneReport::default();
        // One request per chunk: each chunk queues behind the publishes already waiting, so they
        // are never stuck behind the whole prune.
        loop {
            let chunk = self
                .writer
                .submit(PruneChunk {
                    notifications_before,
                    keys_before,
                    revocations_before,
                    topic_events_before,
                })
                .await?;
            report.notifications += chunk.notifications;
            report.idempotency_keys += chunk.idempotency_keys;
            report.revocations += chunk.revocations;
            report.topic_events += chunk.topic_events;
            report.jobs += chunk.jobs;
            report.inboxes.extend(chunk.inboxes);
            if chunk.done {
                break;
            }
        }
        if report != PruneReport::default() {
            tracing::debug!(?report, "store pruned");
        }
        Ok(report)
    }
}

impl SqliteStore {
    /// Runs an inbox mark or delete: seqs in one request, "all up to N" in chunks of at most
    /// [`INBOX_CHUNK_ROWS`](super::INBOX_CHUNK_ROWS) rows, one request (and transaction) each,
    /// in seq order. Each chunk keeps the counts exact; the counts returned are those after the
    /// last one. Should a chunk fail, the ones before it stay done (the same request again
    /// finishes the job).
    async fn inbox_change<W: Write<Output = InboxChunk>>(
        &self,
        selection: &Selection,
        write: impl Fn(Rows) -> W,
    ) -> Result<InboxChange, StoreError> {
        match selection {
            Selection::Seqs(seqs) => Ok(self.writer.submit(write(Rows::Seqs(seqs.clone()))).await?.change),
            Selection::AllUpTo(through) => {
                let through = sql_seq(*through);
                let mut change = InboxChange::default();
                let mut after = 0;
                loop {
                    let chunk = self.writer.submit(write(Rows::Range { after, through })).await?;
                    change.seqs.extend(chunk.change.seqs);
                    change.counts = chunk.change.counts;
                    match chunk.next_after {
                        Some(next) => {
                            // Every chunk makes progress, or this loop would not end.
                            debug_assert!(next > after, "an inbox chunk ended at {next}, not after {after}");
                            after = next;
                        }
                        None => return Ok(change),
                    }
                }
            }
        }
    }
}
