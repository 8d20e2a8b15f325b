//! [`MemoryStore`]: every user's log in memory, for `herald serve --memory` and tests. One job,
//! the whole [`herald_core::Store`] in one process's memory: besides the logs and inboxes, the
//! topics' logs and listens, idempotency keys, fan-out jobs, revocations, presence, and Web
//! Push's subscriptions, outbox and markers, each as the SQL stores keep them.
//!
//! Everything lives behind one `parking_lot::Mutex`, taken only for short, synchronous work and
//! never held across an `.await`; that one lock is what makes an `append` atomic and its seqs
//! gap-free, and what lets two concurrent appends with one idempotency key store exactly once.
//! It keeps the same [`Retention`] as [`crate::SqliteStore`], with the same rule: retention only
//! removes a prefix of a log, so what is left holds seqs `pruned_through + 1 ..= last_seq`,
//! minus those deleted on purpose (inbox deletes).
//!
//! Each log keeps its inbox counts next to its entries, updated under the same lock as every
//! change, so counts are read in O(1). Inbox pages walk the log from the newest entry, skipping
//! the ones the page does not list: fine for a log of at most `max_per_user` in memory.
//!
//! Its [`Epoch`] is random, made with the store: a server restarted with `--memory` has
//! forgotten every log and gives seqs out from 1 again, so clients resuming with seqs of the
//! previous process get a `reset` (not a refusal of a resume point ahead of the log, nor, once
//! the new log has grown past it, notifications they never saw under seqs they did).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use herald_core::inbox::CountsDelta;
use herald_core::notification::now_ms;
use herald_core::presence::RowChange;
use herald_core::{
    Appended, Epoch, FanoutJob, InboxChange, InboxCounts, InboxItem, InboxPage, InboxQuery, ItemState,
    ListenBounds, LogHead, LogPage, Mark, NewNotification, NewTopicEvent, Notification, PresenceBeat,
    PresenceChange, PresenceEvent, PruneReport, PrunedInbox, PushBounds, PushDelivery, PushExpansion,
    PushMarker, PushPending, PushSettle, PushSubscription, Receipt, ReceiptEntry, Retention, Revocation,
    ScopeListens, Selection, Seq, SessionId, Store, StoreError, StoredListen, Topic, TopicAppended,
    TopicEvent, TopicHead, TopicListener, TopicPage, TopicReceipt, UserId,
};
use parking_lot::Mutex;

/// Users whose logs one `prune` examines per hold of the lock. At the bound the lock is released
/// and taken again, so that publishes waiting for it get in between and a prune of many users
/// never stalls them for long.
const PRUNE_USERS_PER_LOCK: usize = 1_000;

static EMPTY_TOPICS: BTreeSet<Topic> = BTreeSet::new();

/// A store that keeps everything in memory and loses it all when dropped.
#[derive(Debug)]
pub struct MemoryStore {
    retention: Retention,
    /// Random, one per store: see the module docs.
    epoch: Epoch,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, UserLog>,
    idempotency: HashMap<String, IdempotencyRecord>,
    /// Each user's latest close per session (`None`: all sessions), in Unix seconds.
    revocations: HashMap<UserId, HashMap<Option<SessionId>, u64>>,
    /// Each user's listens kept in the store.
    listens: HashMap<UserId, UserListens>,
    /// Each topic's log of durable events.
    topics: HashMap<Topic, TopicLog>,
    /// Fan-out jobs, by id.
    jobs: HashMap<String, FanoutJob>,
    /// Push subscriptions by id.
    push_subscriptions: HashMap<String, PushSubscription>,
    /// The ids of each user's push subscriptions: whether an append keeps a marker is one
    /// look-up, as in the SQL stores' index.
    push_subscriptions_by_user: HashMap<UserId, HashSet<String>>,
    /// The push outbox by id.
    push_outbox: HashMap<String, PushDelivery>,
    /// Push markers (`push_pending`), by notification; `request.expand_by_ms` is when a sender
    /// may take the marker (moved by claims).
    push_pending: HashMap<PushMarker, PushPending>,
    /// Presence reported online: per user, its (session, node) rows.
    presence: HashMap<UserId, Vec<(SessionId, String)>>,
    /// Each user's last `user_seq` (never forgotten, so it only grows).
    presence_seqs: HashMap<UserId, u64>,
    /// Each node's last presence heartbeat, Unix ms.
    presence_nodes: HashMap<String, i64>,
}

impl Inner {
    /// Keeps `subscription`, replacing the one with its id (whoever's it was).
    fn insert_push_subscription(&mut self, subscription: &PushSubscription) {
        self.remove_push_subscription(&subscription.id);
        self.push_subscriptions_by_user
            .entry(subscription.user.clone())
            .or_default()
            .insert(subscription.id.clone());
        self.push_subscriptions.insert(subscription.id.clone(), subscription.clone());
    }

    /// Forgets subscription `id`, if kept.
    fn remove_push_subscription(&mut self, id: &str) {
        if let Some(old) = self.push_subscriptions.remove(id)
            && let Some(ids) = self.push_subscriptions_by_user.get_mut(&old.user)
        {
            ids.remove(id);
            if ids.is_empty() {
                self.push_subscriptions_by_user.remove(&old.user);
            }
        }
    }

    /// [`Store::record_presence`] under the lock.
    fn record_presence(&mut self, node: &str, change: &PresenceChange) -> Vec<PresenceEvent> {
        let rows = self.presence.entry(change.user.clone()).or_default();
        let had_row = rows.iter().any(|(s, n)| s == &change.session && n == node);
        let session_rows = rows.iter().filter(|(s, _)| s == &change.session).count() as u64;
        let plan = change.plan(had_row, session_rows, rows.len() as u64);
        match plan.row {
            RowChange::Keep => {}
            RowChange::Insert => rows.push((change.session.clone(), node.to_owned())),
            RowChange::Delete => rows.retain(|(s, n)| !(s == &change.session && n == node)),
        }
        if rows.is_empty() {
            self.presence.remove(&change.user);
        }
        let last = self.presence_seqs.entry(change.user.clone()).or_default();
        let events = plan.numbered(node, change, *last + 1);
        *last += events.len() as u64;
        events
    }
}

/// One topic's durable events: tseqs `head.pruned_through + 1 ..= head.last_seq`, oldest first.
/// The head stays when retention empties the log, so a tseq is never given out twice.
#[derive(Debug, Default)]
struct TopicLog {
    head: TopicHead,
    events: VecDeque<Arc<TopicEvent>>,
}

impl TopicLog {
    /// Removes the events up to `through` and raises `pruned_through`. Returns how many went.
    fn prune_through(&mut self, through: Seq) -> u64 {
        if through <= self.head.pruned_through {
            return 0;
        }
        let keep_from = self.events.partition_point(|e| e.tseq.unwrap_or(0) <= through);
        self.events.drain(..keep_from);
        self.head.pruned_through = through;
        keep_from as u64
    }
}

/// One user's listens: at user scope, and per session with the time of its latest listen.
#[derive(Debug, Default)]
struct UserListens {
    user: BTreeSet<Topic>,
    sessions: HashMap<SessionId, (i64, BTreeSet<Topic>)>,
}

impl UserListens {
    fn is_empty(&self) -> bool {
        self.user.is_empty() && self.sessions.is_empty()
    }
}

#[derive(Debug, Default)]
struct UserLog {
    head: Head,
    /// Seqs above `head.pruned_through`, up to `head.last_seq`, oldest first; gaps only where
    /// notifications were deleted on purpose.
    entries: VecDeque<Entry>,
    counts: InboxCounts,
}

/// A [`LogHead`] without its epoch, which is the store's.
#[derive(Debug, Clone, Copy, Default)]
struct Head {
    last_seq: Seq,
    pruned_through: Seq,
}

impl Head {
    fn with(self, epoch: &Epoch) -> LogHead {
        LogHead { last_seq: self.last_seq, pruned_through: self.pruned_through, epoch: Arc::clone(epoch) }
    }
}

#[derive(Debug)]
struct Entry {
    notification: Arc<Notification>,
    state: ItemState,
}

impl Entry {
    fn seq(&self) -> Seq {
        self.notification.seq.unwrap_or(0)
    }
}

impl UserLog {
    /// Removes every entry with seq <= `through` and raises `pruned_through` to `through`
    /// (never lowers it), keeping the counts exact. Returns how many entries went.
    fn prune_through(&mut self, through: Seq) -> u64 {
        if through <= self.head.pruned_through {
            return 0;
        }
        let gone = self.remove_up_to(through);
        self.head.pruned_through = through;
        gone.len() as u64
    }

    /// Removes every entry with seq <= `through` (a prefix), keeping the counts exact. Returns
    /// the seqs removed.
    fn remove_up_to(&mut self, through: Seq) -> Vec<Seq> {
        let keep_from = self.entries.partition_point(|e| e.seq() <= through);
        let mut delta = CountsDelta::default();
        let gone: Vec<Seq> = self
            .entries
            .drain(..keep_from)
            .map(|e| {
                delta += CountsDelta::between(Some(&e.state), None);
                e.seq()
            })
            .collect();
        if !gone.is_empty() {
            self.counts.apply(delta);
        }
        gone
    }

    fn position(&self, seq: Seq) -> Option<usize> {
        self.entries.binary_search_by_key(&seq, Entry::seq).ok()
    }
}

#[derive(Debug)]
struct IdempotencyRecord {
    created_at_ms: i64,
    receipt: Receipt,
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        // 128 random bits as 32 hex digits: two stores never share one.
        let epoch = Epoch::from(format!("{:032x}", rand::random::<u128>()));
        Self { retention, epoch, inner: Mutex::new(Inner::default()) }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(Retention::default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn append(
        &self,
        entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError> {
        let now = now_ms();
        let key_valid_from = crate::cutoff_ms(now, self.retention.idempotency_window);
        let mut inner = self.inner.lock();
        if let Some(key) = idempotency_key
            && let Some(record) = inner.idempotency.get(key)
            && record.created_at_ms >= key_valid_from
        {
            return Ok(Appended::Duplicate(record.receipt.clone()));
        }

        let mut stored = Vec::with_capacity(entries.len());
        let mut push_pending = Vec::new();
        let mut last_counts = InboxCounts::default();
        for entry in entries {
            if let Some(request) = &entry.push
                && inner.push_subscriptions_by_user.contains_key(&entry.user)
            {
                let seq = inner.users.get(&entry.user).map_or(0, |log| log.head.last_seq) + 1;
                let marker = PushMarker { user: entry.user.clone(), seq };
                let pending = PushPending { marker: marker.clone(), request: (**request).clone() };
                inner.push_pending.insert(marker.clone(), pending);
                push_pending.push(marker);
            }
            let log = inner.users.entry(entry.user.clone()).or_default();
            log.head.last_seq += 1;
            let notification = Arc::new(Notification::new(
                entry.user,
                Some(log.head.last_seq),
                entry.kind,
                entry.data,
                entry.created_at_ms,
                entry.audience,
            ));
            let state = ItemState::default();
            log.counts.apply(CountsDelta::between(None, Some(&state)));
            log.entries.push_back(Entry { notification: Arc::clone(&notification), state });
            // Enforced per entry rather than per user at the end: a log never holds more than
            // `max_per_user`, even for a moment, and the result is the same.
            let bound = log.head.last_seq.saturating_sub(self.retention.max_per_user);
            log.prune_through(bound);
            last_counts = log.counts;
            stored.push(notification);
        }
        // Each user's counts once, in the order the users first appear. Most publishes are for
        // one user: its counts are the last log's (kept from the loop above, not looked up
        // again: a look-up of a user id is a cache miss or two), and no set is made for them
        // (it was 4 % of this function at full load).
        let mut counts: Vec<(UserId, InboxCounts)> = Vec::with_capacity(1);
        if let [notification] = stored.as_slice() {
            counts.push((notification.user.clone(), last_counts));
        } else {
            let mut counted: HashSet<&UserId> = HashSet::new();
            for notification in &stored {
                if counted.insert(&notification.user) {
                    counts.push((notification.user.clone(), inner.users[&notification.user].counts));
                }
            }
        }

        if let Some(key) = idempotency_key {
            let receipt = Receipt {
                notifications: stored
                    .iter()
                    .map(|n| ReceiptEntry { user: n.user.clone(), seq: n.seq.unwrap_or(0) })
                    .collect(),
                topic: None,
                job: None,
                delivered: 0,
            };
            inner.idempotency.insert(key.to_owned(), IdempotencyRecord { created_at_ms: now, receipt });
        }
        Ok(Appended::Stored { notifications: stored, counts, push_pending })
    }

    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        // A key already pruned has nothing to complete; a later repeat is then a new publish,
        // which is what the window promises anyway.
        if let Some(record) = self.inner.lock().idempotency.get_mut(idempotency_key) {
            record.receipt = receipt.clone();
        }
        Ok(())
    }

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.users.get(user) else {
            return Ok(LogPage { notifications: Vec::new(), head: LogHead::empty(self.epoch()) });
        };
        let from = log.entries.partition_point(|e| e.seq() <= after);
        let notifications =
            log.entries.iter().skip(from).take(limit).map(|e| e.notification.clone()).collect();
        Ok(LogPage { notifications, head: log.head.with(&self.epoch) })
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let head = self.inner.lock().users.get(user).map(|log| log.head).unwrap_or_default();
        Ok(head.with(&self.epoch))
    }

    fn epoch(&self) -> Epoch {
        Arc::clone(&self.epoch)
    }

    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        let notifications_before = crate::cutoff_ms(now_ms, self.retention.max_age);
        let keys_before = crate::cutoff_ms(now_ms, self.retention.idempotency_window);
        let mut report = PruneReport::default();

        let users: Vec<UserId> = self.inner.lock().users.keys().cloned().collect();
        for chunk in users.chunks(PRUNE_USERS_PER_LOCK) {
            let mut inner = self.inner.lock();
            for user in chunk {
                let Some(log) = inner.users.get_mut(user) else { continue };
                // The newest expired entry, not the first unexpired one: `created_at` need not
                // grow with seq (clocks step back), and retention only removes a prefix, so
                // everything up to the newest expired entry goes with it.
                let through = log
                    .entries
                    .iter()
                    .rev()
                    .find(|e| e.notification.created_at_ms < notifications_before)
                    .map(Entry::seq);
                if let Some(through) = through {
                    report.notifications += log.prune_through(through);
                    report.inboxes.push(PrunedInbox { user: user.clone(), through, counts: log.counts });
                }
            }
        }

        let topics_before = crate::cutoff_ms(now_ms, self.retention.topic_max_age);
        let mut inner = self.inner.lock();
        for log in inner.topics.values_mut() {
            // The newest expired event and everything before it, as for users' logs.
            let through =
                log.events.iter().rev().find(|e| e.created_at_ms < topics_before).and_then(|e| e.tseq);
            if let Some(through) = through {
                report.topic_events += log.prune_through(through);
            }
        }
        let jobs_before = inner.jobs.len();
        inner.jobs.retain(|_, job| job.finished_at_ms.is_none_or(|at| at >= keys_before));
        report.jobs = (jobs_before - inner.jobs.len()) as u64;
        let before = inner.idempotency.len();
        inner.idempotency.retain(|_, record| record.created_at_ms >= keys_before);
        report.idempotency_keys = (before - inner.idempotency.len()) as u64;

        let revocations_before =
            u64::try_from(crate::cutoff_ms(now_ms, self.retention.revocation_window) / 1000).unwrap_or(0);
        let mut forgotten = 0;
        inner.revocations.retain(|_, sessions| {
            let before = sessions.len();
            sessions.retain(|_, closed_at| *closed_at >= revocations_before);
            forgotten += (before - sessions.len()) as u64;
            !sessions.is_empty()
        });
        report.revocations = forgotten;
        Ok(report)
    }

    async fn append_topic(
        &self,
        event: NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<TopicAppended, StoreError> {
        let now = now_ms();
        let key_valid_from = crate::cutoff_ms(now, self.retention.idempotency_window);
        let mut inner = self.inner.lock();
        if let Some(key) = idempotency_key
            && let Some(record) = inner.idempotency.get(key)
            && record.created_at_ms >= key_valid_from
        {
            return Ok(TopicAppended::Duplicate(record.receipt.clone()));
        }
        let log = inner.topics.entry(event.topic.clone()).or_default();
        log.head.last_tseq += 1;
        let tseq = log.head.last_tseq;
        let stored = Arc::new(TopicEvent::with_tseq(
            Some(tseq),
            event.topic,
            event.kind,
            event.data,
            event.created_at_ms,
            event.except_user,
            event.except_client,
        ));
        log.events.push_back(Arc::clone(&stored));
        log.prune_through(tseq.saturating_sub(self.retention.topic_max_events));
        if let Some(key) = idempotency_key {
            let receipt = Receipt {
                notifications: Vec::new(),
                topic: Some(TopicReceipt { topic: stored.topic.clone(), tseq }),
                job: None,
                delivered: 0,
            };
            inner.idempotency.insert(key.to_owned(), IdempotencyRecord { created_at_ms: now, receipt });
        }
        Ok(TopicAppended::Stored(stored))
    }

    async fn topic_heads(&self, topics: &[Topic]) -> Result<(Vec<TopicHead>, Epoch), StoreError> {
        let inner = self.inner.lock();
        let heads =
            topics.iter().map(|t| inner.topics.get(t).map(|log| log.head).unwrap_or_default()).collect();
        Ok((heads, self.epoch()))
    }

    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<TopicPage, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.topics.get(topic) else {
            return Ok(TopicPage { events: Vec::new(), head: TopicHead::default(), epoch: self.epoch() });
        };
        let from = log.events.partition_point(|e| e.tseq.unwrap_or(0) <= after);
        let events = log.events.iter().skip(from).take(limit).cloned().collect();
        Ok(TopicPage { events, head: log.head, epoch: self.epoch() })
    }

    async fn push_subscribe(
        &self,
        subscription: &PushSubscription,
        bounds: PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        let mut inner = self.inner.lock();
        inner.insert_push_subscription(subscription);
        let kept: Vec<PushSubscription> =
            inner.push_subscriptions.values().filter(|s| s.user == subscription.user).cloned().collect();
        let evicted = herald_core::push_evictions(&kept, &subscription.session, bounds);
        for id in &evicted {
            inner.remove_push_subscription(id);
        }
        Ok(evicted)
    }

    async fn push_unsubscribe(&self, user: &UserId, id: &str) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock();
        let theirs = inner.push_subscriptions.get(id).is_some_and(|s| &s.user == user);
        if theirs {
            inner.remove_push_subscription(id);
        }
        Ok(theirs)
    }

    async fn push_subscriptions(&self, user: &UserId) -> Result<Vec<PushSubscription>, StoreError> {
        let inner = self.inner.lock();
        let mut subscriptions: Vec<PushSubscription> =
            inner.push_subscriptions.values().filter(|s| &s.user == user).cloned().collect();
        subscriptions.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(subscriptions)
    }

    async fn push_subscription(&self, id: &str) -> Result<Option<PushSubscription>, StoreError> {
        Ok(self.inner.lock().push_subscriptions.get(id).cloned())
    }

    async fn push_enqueue(&self, deliveries: &[PushDelivery]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        for delivery in deliveries {
            inner.push_outbox.entry(delivery.id.clone()).or_insert_with(|| delivery.clone());
        }
        Ok(())
    }

    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<PushDelivery>, StoreError> {
        let mut inner = self.inner.lock();
        let mut due: Vec<PushDelivery> =
            inner.push_outbox.values().filter(|d| d.due_at_ms <= now_ms).cloned().collect();
        due.sort_by(|a, b| (a.due_at_ms, &a.id).cmp(&(b.due_at_ms, &b.id)));
        due.truncate(limit);
        let until = now_ms.saturating_add(crate::lease_ms(lease));
        for delivery in &due {
            if let Some(kept) = inner.push_outbox.get_mut(&delivery.id) {
                kept.due_at_ms = until;
            }
        }
        Ok(due)
    }

    async fn push_expand(
        &self,
        expansions: &[PushExpansion],
        to_senders: &[PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let mut inner = self.inner.lock();
        let mut added = 0;
        for expansion in expansions {
            if inner.push_pending.remove(&expansion.marker).is_none() {
                continue;
            }
            for delivery in &expansion.deliveries {
                if !inner.push_outbox.contains_key(&delivery.id) {
                    inner.push_outbox.insert(delivery.id.clone(), delivery.clone());
                    added += 1;
                }
            }
        }
        for marker in to_senders {
            if let Some(pending) = inner.push_pending.get_mut(marker) {
                pending.request.expand_by_ms = now_ms;
            }
        }
        Ok(added)
    }

    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<PushPending>, StoreError> {
        let mut inner = self.inner.lock();
        let mut due: Vec<PushPending> =
            inner.push_pending.values().filter(|p| p.request.expand_by_ms <= now_ms).cloned().collect();
        due.sort_by(|a, b| (a.request.expand_by_ms, &a.marker).cmp(&(b.request.expand_by_ms, &b.marker)));
        due.truncate(limit);
        let until = now_ms.saturating_add(crate::lease_ms(lease));
        for pending in &mut due {
            pending.request.expand_by_ms = until;
            if let Some(kept) = inner.push_pending.get_mut(&pending.marker) {
                kept.request.expand_by_ms = until;
            }
        }
        Ok(due)
    }

    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        let inner = self.inner.lock();
        let deliveries = inner.push_outbox.values().map(|d| d.due_at_ms);
        let markers = inner.push_pending.values().map(|p| p.request.expand_by_ms);
        Ok(deliveries.chain(markers).min())
    }

    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().push_outbox.len() as u64)
    }

    async fn push_settle(&self, id: &str, settle: PushSettle) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        match settle {
            PushSettle::Done => {
                inner.push_outbox.remove(id);
            }
            PushSettle::Retry { due_at_ms, attempts } => {
                if let Some(delivery) = inner.push_outbox.get_mut(id) {
                    delivery.due_at_ms = due_at_ms;
                    delivery.attempts = attempts;
                }
            }
        }
        Ok(())
    }

    async fn save_job(&self, job: &FanoutJob) -> Result<(), StoreError> {
        self.inner.lock().jobs.insert(job.id.clone(), job.clone());
        Ok(())
    }

    async fn job(&self, id: &str) -> Result<Option<FanoutJob>, StoreError> {
        Ok(self.inner.lock().jobs.get(id).cloned())
    }

    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<FanoutJob>, StoreError> {
        let inner = self.inner.lock();
        let mut jobs: Vec<FanoutJob> = inner.jobs.values().filter(|j| !j.is_finished()).cloned().collect();
        jobs.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        jobs.truncate(limit);
        Ok(jobs)
    }

    async fn record_presence(
        &self,
        node: &str,
        change: &PresenceChange,
    ) -> Result<Vec<PresenceEvent>, StoreError> {
        Ok(self.inner.lock().record_presence(node, change))
    }

    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<PresenceBeat, StoreError> {
        let mut inner = self.inner.lock();
        let was_registered = inner.presence_nodes.insert(node.to_owned(), now_ms).is_some();
        let dead_nodes = inner
            .presence_nodes
            .iter()
            .filter(|(n, at)| n.as_str() != node && **at < dead_before_ms)
            .map(|(n, _)| n.clone())
            .collect();
        Ok(PresenceBeat { was_registered, dead_nodes })
    }

    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<PresenceEvent>>, StoreError> {
        let mut inner = self.inner.lock();
        let sessions: Vec<(UserId, SessionId)> = inner
            .presence
            .iter()
            .flat_map(|(user, rows)| {
                rows.iter().filter(|(_, n)| n == node).map(move |(s, _)| (user.clone(), s.clone()))
            })
            .take(limit)
            .collect();
        if sessions.is_empty() {
            inner.presence_nodes.remove(node);
            return Ok(None);
        }
        let mut events = Vec::new();
        for (user, session) in sessions {
            let change = PresenceChange { user, session, online: Some(false), clients: Vec::new(), at_ms };
            events.extend(inner.record_presence(node, &change));
        }
        Ok(Some(events))
    }

    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let closed_at =
            inner.revocations.entry(user.clone()).or_default().entry(session.cloned()).or_default();
        *closed_at = (*closed_at).max(closed_at_secs);
        Ok(())
    }

    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        let inner = self.inner.lock();
        Ok(inner
            .revocations
            .get(user)
            .into_iter()
            .flatten()
            .map(|(session, closed_at)| Revocation { session: session.clone(), closed_at_secs: *closed_at })
            .collect())
    }

    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        let mut inner = self.inner.lock();
        let listens = inner.listens.entry(user.clone()).or_default();
        let (current, max) = match session {
            None => (&listens.user, bounds.user_topics_max),
            Some(session) => (
                listens.sessions.get(session).map_or(&EMPTY_TOPICS, |(_, topics)| topics),
                bounds.session_topics_max,
            ),
        };
        if topics.is_empty() {
            // Names nothing, changes nothing: no session made (with no topics) nor evicted.
            let current = current.iter().cloned().collect();
            if listens.is_empty() {
                inner.listens.remove(user);
            }
            return Ok(ScopeListens::Listening(current));
        }
        let count = current.len()
            + topics.iter().collect::<BTreeSet<_>>().iter().filter(|t| !current.contains(**t)).count();
        if count > max && count > current.len() {
            if listens.is_empty() {
                inner.listens.remove(user);
            }
            return Ok(ScopeListens::TooMany { count, max });
        }
        let scope = match session {
            None => &mut listens.user,
            Some(session) => {
                if !listens.sessions.contains_key(session) && listens.sessions.len() >= bounds.sessions_max {
                    // The session whose latest listen is the oldest (then the smallest id).
                    let oldest = listens
                        .sessions
                        .iter()
                        .min_by(|a, b| (a.1.0, a.0).cmp(&(b.1.0, b.0)))
                        .map(|(s, _)| s.clone());
                    if let Some(oldest) = oldest {
                        listens.sessions.remove(&oldest);
                    }
                }
                let (latest, topics) = listens.sessions.entry(session.clone()).or_default();
                *latest = now_ms;
                topics
            }
        };
        scope.extend(topics.iter().cloned());
        Ok(ScopeListens::Listening(scope.iter().cloned().collect()))
    }

    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        let mut inner = self.inner.lock();
        let Some(listens) = inner.listens.get_mut(user) else { return Ok(Vec::new()) };
        let left: Vec<Topic> = match session {
            None => {
                listens.user.retain(|t| !topics.contains(t));
                listens.user.iter().cloned().collect()
            }
            Some(session) => match listens.sessions.get_mut(session) {
                None => Vec::new(),
                Some((_, scope)) => {
                    scope.retain(|t| !topics.contains(t));
                    let left = scope.iter().cloned().collect();
                    if scope.is_empty() {
                        listens.sessions.remove(session);
                    }
                    left
                }
            },
        };
        if listens.is_empty() {
            inner.listens.remove(user);
        }
        Ok(left)
    }

    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let Some(listens) = inner.listens.get_mut(user) else { return Ok(()) };
        match session {
            None => listens.sessions.clear(),
            Some(session) => {
                listens.sessions.remove(session);
            }
        }
        if listens.is_empty() {
            inner.listens.remove(user);
        }
        Ok(())
    }

    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        let inner = self.inner.lock();
        let Some(listens) = inner.listens.get(user) else { return Ok(Vec::new()) };
        let mut all: Vec<StoredListen> =
            listens.user.iter().map(|topic| StoredListen { session: None, topic: topic.clone() }).collect();
        for (session, (_, topics)) in &listens.sessions {
            all.extend(
                topics
                    .iter()
                    .map(|topic| StoredListen { session: Some(session.clone()), topic: topic.clone() }),
            );
        }
        all.sort();
        Ok(all)
    }

    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError> {
        let inner = self.inner.lock();
        let mut found: Vec<TopicListener> = Vec::new();
        for (user, listens) in &inner.listens {
            if listens.user.contains(topic) {
                found.push(TopicListener { user: user.clone(), session: None });
            }
            for (session, (_, topics)) in &listens.sessions {
                if topics.contains(topic) {
                    found.push(TopicListener { user: user.clone(), session: Some(session.clone()) });
                }
            }
        }
        found.sort();
        found.retain(|listener| after.is_none_or(|after| listener > after));
        found.truncate(limit);
        Ok(found)
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        let inner = self.inner.lock();
        let Some(log) = inner.users.get(user) else {
            return Ok(InboxPage::default());
        };
        let before = query.before.unwrap_or(Seq::MAX);
        let end = log.entries.partition_point(|e| e.seq() < before);
        let mut matching = log.entries.range(..end).rev().filter(|e| {
            e.state.is_in(query.status)
                && query.kind.as_deref().is_none_or(|kind| *e.notification.kind == *kind)
        });
        let items: Vec<InboxItem> = matching
            .by_ref()
            .take(query.limit)
            .map(|e| InboxItem { notification: e.notification.clone(), state: e.state })
            .collect();
        let more = query.limit > 0 && matching.next().is_some();
        let next_before = if more { items.last().map(InboxItem::seq) } else { None };
        Ok(InboxPage { items, next_before, counts: log.counts })
    }

    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        Ok(self.inner.lock().users.get(user).map(|log| log.counts).unwrap_or_default())
    }

    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        let mut inner = self.inner.lock();
        let Some(log) = inner.users.get_mut(user) else {
            return Ok(InboxChange::default());
        };
        let positions: Vec<usize> = match selection {
            Selection::Seqs(seqs) => {
                let mut positions: Vec<usize> = seqs.iter().filter_map(|&seq| log.position(seq)).collect();
                positions.sort_unstable();
                positions.dedup();
                positions
            }
            Selection::AllUpTo(through) => {
                (0..log.entries.partition_point(|e| e.seq() <= *through)).collect()
            }
        };
        let mut change = InboxChange::default();
        let mut delta = CountsDelta::default();
        for i in positions {
            let entry = &mut log.entries[i];
            if let Some(next) = entry.state.marked(mark, at_ms) {
                delta += CountsDelta::between(Some(&entry.state), Some(&next));
                entry.state = next;
                change.seqs.push(entry.seq());
            }
        }
        if !change.seqs.is_empty() {
            log.counts.apply(delta);
        }
        change.counts = log.counts;
        Ok(change)
    }

    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        let mut inner = self.inner.lock();
        let Some(log) = inner.users.get_mut(user) else {
            return Ok(InboxChange::default());
        };
        let seqs = match selection {
            Selection::AllUpTo(through) => log.remove_up_to(*through),
            Selection::Seqs(seqs) => {
                let mut gone = Vec::new();
                let mut delta = CountsDelta::default();
                let mut seqs = seqs.clone();
                seqs.sort_unstable();
                seqs.dedup();
                // Highest first, so that earlier positions stay valid.
                for &seq in seqs.iter().rev() {
                    if let Some(i) = log.position(seq) {
                        let entry = log.entries.remove(i).expect("the position is in range");
                        delta += CountsDelta::between(Some(&entry.state), None);
                        gone.push(seq);
                    }
                }
                if !gone.is_empty() {
                    log.counts.apply(delta);
                }
                gone.reverse();
                gone
            }
        };
        Ok(InboxChange { seqs, counts: log.counts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn make(retention: Retention) -> Arc<dyn Store> {
        Arc::new(MemoryStore::new(retention))
    }

    crate::conformance_tests!(make);
}
