//! The operations: [`Store`] for [`PostgresStore`], where the store's contract meets the reads,
//! the writes and the writer. An append goes to the writer (group commit); every other write (a
//! topic append too; a job's save is one statement) is one transaction on a pooled connection (retention, one per chunk); a read is one statement.
//! Each runs through `Pool::run`: bounded in time, again after a deadlock. No SQL lives here.

use async_trait::async_trait;
use herald_core::notification::now_ms;
use herald_core::{
    Appended, Epoch, FanoutJob, Health, InboxChange, InboxCounts, InboxPage, InboxQuery, ListenBounds,
    LogHead, LogPage, Mark, NewNotification, NewTopicEvent, PresenceBeat, PresenceChange, PresenceEvent,
    PruneReport, Receipt, Revocation, ScopeListens, Selection, Seq, SessionId, Store, StoreError,
    StoredListen, Topic, TopicAppended, TopicHead, TopicListener, TopicPage, UserId,
};

use super::PostgresStore;
use super::presence::{presence_heartbeat, presence_sessions_of, record_presence};
use super::reads::{
    ping, read_head, read_inbox_counts, read_inbox_page, read_job, read_last_seqs, read_listens,
    read_log_page, read_revocations, read_topic_heads, read_topic_listeners, read_topic_page,
    read_unfinished_jobs,
};
use super::writes::{
    AppendRequest, PrunedChunk, append_topic, complete_receipt, forget_session_listens, inbox_delete,
    inbox_mark, listen, prune_jobs, prune_keys, prune_notifications, prune_revocations, prune_topic_events,
    revoke, save_job, unlisten,
};

#[async_trait]
impl Store for PostgresStore {
    async fn push_subscribe(
        &self,
        subscription: &herald_core::PushSubscription,
        bounds: herald_core::PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        let json = crate::push_json(subscription)?;
        let (pool, json) = (&*self.pool, &json);
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let evicted = super::writes::push_subscribe(&tx, subscription, json, bounds).await?;
            tx.commit().await?;
            Ok(evicted)
        })
        .await
    }

    async fn push_unsubscribe(&self, user: &UserId, id: &str) -> Result<bool, StoreError> {
        let pool = &*self.pool;
        pool.run(
            move || async move { super::writes::push_unsubscribe(&*pool.client().await?, user, id).await },
        )
        .await
    }

    async fn push_subscriptions(
        &self,
        user: &UserId,
    ) -> Result<Vec<herald_core::PushSubscription>, StoreError> {
        let pool = &*self.pool;
        pool.run(
            move || async move { super::reads::read_push_subscriptions(&pool.client().await?, user).await },
        )
        .await
    }

    async fn push_subscription(&self, id: &str) -> Result<Option<herald_core::PushSubscription>, StoreError> {
        let pool = &*self.pool;
        pool.run(
            move || async move { super::reads::read_push_subscription(&*pool.client().await?, id).await },
        )
        .await
    }

    async fn push_enqueue(&self, deliveries: &[herald_core::PushDelivery]) -> Result<(), StoreError> {
        if deliveries.is_empty() {
            return Ok(());
        }
        let pool = &*self.pool;
        pool.run(move || async move { super::writes::push_enqueue(&*pool.client().await?, deliveries).await })
            .await
    }

    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushDelivery>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until_ms = now_ms.saturating_add(crate::lease_ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let pool = &*self.pool;
        let mut claimed = pool
            .run(move || async move {
                super::writes::push_claim(&*pool.client().await?, now_ms, limit, until_ms).await
            })
            .await?;
        claimed.sort_by(|a, b| (a.due_at_ms, &a.id).cmp(&(b.due_at_ms, &b.id)));
        Ok(claimed)
    }

    async fn push_expand(
        &self,
        expansions: &[herald_core::PushExpansion],
        to_senders: &[herald_core::PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        if expansions.is_empty() && to_senders.is_empty() {
            return Ok(0);
        }
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let added = super::writes::push_expand(&tx, expansions, to_senders, now_ms).await?;
            tx.commit().await?;
            Ok(added)
        })
        .await
    }

    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushPending>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let until_ms = now_ms.saturating_add(crate::lease_ms(lease));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let pool = &*self.pool;
        pool.run(move || async move {
            super::writes::push_claim_pending(&*pool.client().await?, now_ms, limit, until_ms).await
        })
        .await
    }

    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { super::reads::read_push_next_due(&*pool.client().await?).await }).await
    }

    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { super::reads::read_push_outbox_depth(&*pool.client().await?).await })
            .await
    }

    async fn push_settle(&self, id: &str, settle: herald_core::PushSettle) -> Result<(), StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { super::writes::push_settle(&*pool.client().await?, id, settle).await })
            .await
    }

    /// One statement on a pooled connection (its own commit), not the writer's group commit:
    /// a job is saved once per chunk of a thousand users, not once per publish.
    async fn save_job(&self, job: &FanoutJob) -> Result<(), StoreError> {
        let json = crate::job_json(job)?;
        let (pool, json) = (&*self.pool, &json);
        pool.run(move || async move {
            save_job(&*pool.client().await?, &job.id, job.created_at_ms, job.finished_at_ms, json).await
        })
        .await
    }

    async fn job(&self, id: &str) -> Result<Option<FanoutJob>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_job(&*pool.client().await?, id).await }).await
    }

    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<FanoutJob>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pool = &*self.pool;
        pool.run(move || async move { read_unfinished_jobs(&*pool.client().await?, limit).await }).await
    }

    /// One transaction on a pooled connection, not the writer's group commit: the writer's
    /// batches are set-based statements over users' appends, and a topic append (its key, the
    /// head row's upsert, the bound) is a short transaction whose head row serializes the
    /// appends of its topic anyway.
    async fn append_topic(
        &self,
        event: NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<TopicAppended, StoreError> {
        let (pool, retention, event) = (&*self.pool, &self.retention, &event);
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let appended = append_topic(&tx, retention, now_ms(), event, idempotency_key).await?;
            tx.commit().await?;
            Ok(appended)
        })
        .await
    }

    async fn topic_heads(&self, topics: &[Topic]) -> Result<(Vec<TopicHead>, Epoch), StoreError> {
        if topics.is_empty() {
            return Ok((Vec::new(), self.epoch()));
        }
        let pool = &*self.pool;
        pool.run(
            move || async move { read_topic_heads(&*pool.client().await?, topics, || pool.epoch()).await },
        )
        .await
    }

    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<TopicPage, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            read_topic_page(&*pool.client().await?, topic, after, limit, || pool.epoch()).await
        })
        .await
    }

    async fn append(
        &self,
        entries: Vec<NewNotification>,
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
        // Each distinct push request once (a publish's entries share one); none at all when no
        // entry has one.
        let mut push: Vec<(std::sync::Arc<herald_core::PushRequest>, String)> = Vec::new();
        for request in entries.iter().filter_map(|entry| entry.push.as_ref()) {
            if !push.iter().any(|(p, _)| std::sync::Arc::ptr_eq(p, request)) {
                push.push((std::sync::Arc::clone(request), crate::push_json(&**request)?));
            }
        }
        self.writer.submit(AppendRequest { entries, key, push }).await
    }

    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        let receipt = crate::receipt_json(receipt)?;
        let (pool, receipt) = (&*self.pool, receipt.as_str());
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            complete_receipt(&tx, idempotency_key, receipt).await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    // The epoch of a head is the pool's once the head was read (see `reads::head_from`).

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            read_log_page(&*pool.client().await?, user, after, limit, || pool.epoch()).await
        })
        .await
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_head(&*pool.client().await?, user, || pool.epoch()).await }).await
    }

    /// The epoch as of the newest connection (see the module docs of `postgres`).
    fn epoch(&self) -> Epoch {
        self.pool.epoch()
    }

    async fn last_seqs(&self, users: &[UserId]) -> Result<Vec<Seq>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_last_seqs(&*pool.client().await?, users).await }).await
    }

    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_inbox_page(&*pool.client().await?, user, query).await }).await
    }

    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_inbox_counts(&*pool.client().await?, user).await }).await
    }

    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let change = inbox_mark(&tx, user, selection, mark, at_ms).await?;
            tx.commit().await?;
            Ok(change)
        })
        .await
    }

    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let change = inbox_delete(&tx, user, selection).await?;
            tx.commit().await?;
            Ok(change)
        })
        .await
    }

    async fn record_presence(
        &self,
        node: &str,
        change: &PresenceChange,
    ) -> Result<Vec<PresenceEvent>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let events = record_presence(&tx, node, change).await?;
            tx.commit().await?;
            Ok(events)
        })
        .await
    }

    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<PresenceBeat, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            presence_heartbeat(&pool.client().await?, node, now_ms, dead_before_ms).await
        })
        .await
    }

    /// One transaction per session released (each locks its user only).
    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<PresenceEvent>>, StoreError> {
        let pool = &*self.pool;
        let sessions = pool
            .run(move || async move { presence_sessions_of(&pool.client().await?, node, limit).await })
            .await?;
        if sessions.is_empty() {
            return Ok(None);
        }
        let mut events = Vec::new();
        for (user, session) in sessions {
            let change = PresenceChange { user, session, online: Some(false), clients: Vec::new(), at_ms };
            events.extend(self.record_presence(node, &change).await?);
        }
        Ok(Some(events))
    }

    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        let closed_at_secs = i64::try_from(closed_at_secs).unwrap_or(i64::MAX);
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            revoke(&tx, user, session, closed_at_secs).await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_revocations(&*pool.client().await?, user).await }).await
    }

    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let listens = listen(&tx, user, session, topics, bounds, now_ms).await?;
            tx.commit().await?;
            Ok(listens)
        })
        .await
    }

    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            let topics = unlisten(&tx, user, session, topics).await?;
            tx.commit().await?;
            Ok(topics)
        })
        .await
    }

    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move {
            let mut client = pool.client().await?;
            let tx = client.transaction().await?;
            forget_session_listens(&tx, user, session).await?;
            Ok(tx.commit().await?)
        })
        .await
    }

    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { read_listens(&*pool.client().await?, user).await }).await
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
        let pool = &*self.pool;
        pool.run(
            move || async move { read_topic_listeners(&*pool.client().await?, topic, after, limit).await },
        )
        .await
    }

    fn kind(&self) -> &'static str {
        "postgres"
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

    /// Degraded from an operation that could not reach PostgreSQL until one that does (see
    /// `pool`'s "Health").
    fn health(&self) -> Health {
        self.pool.health()
    }

    /// `SELECT 1` on a pooled connection (a new one if the pool has none that works), within
    /// the operations' bounds.
    async fn probe(&self) -> Result<(), StoreError> {
        let pool = &*self.pool;
        pool.run(move || async move { ping(&*pool.client().await?).await }).await
    }

    /// Chunk by chunk, each its own transaction under retention's advisory lock (bounded in time
    /// by `Pool::run`, so a large prune is many short operations). If another node holds the
    /// lock, this one stops where it is: that node is pruning.
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let revocations_before = crate::cutoff_ms(now_ms, self.retention.revocation_window) / 1000;
        let topic_events_before = crate::cutoff_ms(now_ms, self.retention.topic_max_age);
        let mut report = PruneReport::default();
        let pool = &*self.pool;
        let chunk = async |job: Job, before: i64| -> Result<PrunedChunk, StoreError> {
            pool.run(move || async move {
                let mut client = pool.client().await?;
                let tx = client.transaction().await?;
                let chunk = match job {
                    Job::Notifications => prune_notifications(&tx, before).await?,
                    Job::Keys => prune_keys(&tx, before).await?,
                    Job::Revocations => prune_revocations(&tx, before).await?,
                    Job::TopicEvents => prune_topic_events(&tx, before).await?,
                    Job::FanoutJobs => prune_jobs(&tx, before).await?,
                };
                tx.commit().await?;
                Ok(chunk)
            })
            .await
        };
        for (job, before) in [
            (Job::Notifications, notifications_before),
            (Job::Keys, keys_before),
            (Job::Revocations, revocations_before),
            (Job::TopicEvents, topic_events_before),
            // Finished jobs go with their chunks' keys.
            (Job::FanoutJobs, keys_before),
        ] {
            loop {
                let done = chunk(job, before).await?;
                if done.skipped {
                    tracing::debug!("another node is applying retention; this one skips its turn");
                    return Ok(report);
                }
                let more = done.removed > 0 || !done.inboxes.is_empty();
                match job {
                    Job::Notifications => {
                        report.notifications += done.removed;
                        report.inboxes.extend(done.inboxes);
                    }
                    Job::Keys => report.idempotency_keys += done.removed,
                    Job::Revocations => report.revocations += done.removed,
                    Job::TopicEvents => report.topic_events += done.removed,
                    Job::FanoutJobs => report.jobs += done.removed,
                }
                // A chunk of keys, revocations or jobs that removed less than its bound found
                // everything there was. (A chunk of a log removes prefixes, more rows than it
                // selected: it is done when one removes nothing.)
                let bounded = matches!(job, Job::Keys | Job::Revocations | Job::FanoutJobs);
                if !more || (bounded && done.removed < super::PRUNE_CHUNK_ROWS as u64) {
                    break;
                }
            }
        }
        if report != PruneReport::default() {
            tracing::debug!(?report, "store pruned");
        }
        Ok(report)
    }
}

/// What a chunk of retention removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Notifications,
    Keys,
    Revocations,
    TopicEvents,
    /// Finished fan-out jobs (not to be confused with this enum, a job of retention).
    FanoutJobs,
}
