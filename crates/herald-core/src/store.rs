//! The [`Store`] trait: each user's durable log of notifications, and idempotency records.
//!
//! The store is the only place where seqs are assigned. Implementations live in other crates
//! (`herald-store`: SQLite, in-memory, PostgreSQL); this module knows no SQL.
//!
//! **Contract every implementation keeps:**
//! - `append` assigns each user the next seqs (`last_seq + 1`, …, no gaps) and makes them
//!   durable before it returns; one call is atomic: all of it is stored or none.
//! - Seqs of one user become visible in order: once seq `n` can be read, every seq below `n`
//!   that is still retained can be read too. (Subscriptions rely on it to fill gaps.)
//! - `pruned_through` only grows, and only retention moves it: a notification deleted on
//!   purpose does not make resuming clients `reset`.
//! - Each user's inbox counts ([`InboxCounts`]) are exact at every commit: `append`, every
//!   inbox mark and delete, and retention (by age in `prune`, by `max_per_user` in `append`)
//!   update them in the same transaction as the rows, and reading them costs O(1). Their
//!   `version` grows with every change. See [`crate::inbox`] for the states and counts.
//! - Revocations ([`Revocation`], sign-outs) are durable once `revoke` returns; for each user
//!   and session (or "all sessions") only the latest close is kept, and `prune` forgets those
//!   older than [`Retention::revocation_window`]. See [`crate::revocation`].
//! - A seq means something only with its [`Epoch`]: under one epoch a user's seq is given out
//!   once. A store whose log may have lost acknowledged appends (a database restored from a
//!   backup, a failover to a replica that lacked the last commits, a process that kept its log
//!   in memory and restarted) has another epoch, so that a client resuming with a seq of the old
//!   one is told (`reset`) instead of being handed different notifications under seqs it saw.
//!   Every [`LogHead`] carries the epoch it was read under.
//! - Listens kept in the store ([`StoredListen`]: a user's topics at user scope, each
//!   session's at session scope) are durable once `listen` returns; one call changes one scope
//!   atomically, within its [`ListenBounds`] or not at all.
//! - Each topic's log of durable events keeps the same promises as a user's: `append_topic`
//!   gives the next `tseq` of the topic (`last_tseq + 1`, no gaps, never reused under one epoch,
//!   even once retention removed every event), durable before it returns, atomically with its
//!   idempotency key; tseqs become visible in order; a [`TopicHead`]'s `pruned_through` only
//!   grows, and only retention ([`Retention::topic_max_age`], [`Retention::topic_max_events`])
//!   moves it.
//! - Fan-out jobs ([`FanoutJob`]) are durable once `save_job` returns; `prune` forgets finished
//!   ones older than the idempotency window.
//! - Push subscriptions ([`PushSubscription`]) are durable once `push_subscribe` returns, one
//!   per endpoint (its id), within the user's [`PushBounds`]; the push outbox's deliveries
//!   ([`PushDelivery`]) are durable once `push_enqueue` (or `push_expand`) returns, one per id:
//!   enqueuing an id kept already changes nothing. An `append` whose entries carry a
//!   [`PushRequest`] keeps, in its own transaction, one marker ([`PushPending`]) per stored
//!   notification whose user has a push subscription then (and writes nothing to the push
//!   tables for entries without one); `push_expand` adds a marker's deliveries only if it
//!   removes the marker, atomically, so a marker is expanded once. `push_claim` and
//!   `push_claim_pending` hand a row to one claimer at a time: a claimed row is not handed out
//!   again before its lease ends. See [`crate::push`].
//! - Presence reported online ([`crate::presence`]) is one row per (user, session, node),
//!   durable once `record_presence` returns; a user's `user_seq` only grows (one counter per
//!   user, never reset, not even by `release_presence`), so a receiver can drop what it saw.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::value::RawValue;

use crate::health::Health;
use crate::ids::{Seq, SessionId, Topic, UserId};
use crate::inbox::{InboxChange, InboxCounts, InboxPage, InboxQuery, Mark, PrunedInbox, Selection};
use crate::jobs::FanoutJob;
use crate::notification::{Audience, Notification, Receipt};
use crate::presence::{PresenceBeat, PresenceChange, PresenceEvent};
use crate::push::{
    PushBounds, PushDelivery, PushExpansion, PushMarker, PushPending, PushRequest, PushSettle,
    PushSubscription,
};
use crate::topic::TopicEvent;
pub use crate::topic::{StoredListen, TopicListener};

/// A notification to store; the store adds the seq.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user: UserId,
    pub kind: Arc<str>,
    pub data: Arc<RawValue>,
    pub created_at_ms: i64,
    pub audience: Audience,
    /// The publish's push, if it asks for one and push is on: the append keeps a marker for
    /// this notification if its user has a push subscription (see [`crate::push`]). One
    /// `Arc` for all the entries of a publish: a store serializes it once.
    pub push: Option<Arc<PushRequest>>,
}

/// What `append` did.
#[derive(Debug)]
pub enum Appended {
    /// Stored, in the order given, each with its new seq.
    Stored {
        notifications: Vec<Arc<Notification>>,
        /// Each user's inbox counts once this append committed, one entry per user, in the
        /// order users first appear in the entries.
        counts: Vec<(UserId, InboxCounts)>,
        /// The markers this append kept (entries with a push request whose user has a push
        /// subscription), in no particular order: what the publish expands after its
        /// hand-over ([`Store::push_expand`]).
        push_pending: Vec<PushMarker>,
    },
    /// The idempotency key was used within the window: nothing was stored; here is the
    /// receipt of the first publish (its `delivered` is 0 if that publish has not finished).
    Duplicate(Receipt),
}

/// The name of a history of the store's seqs: an opaque, printable id (at most
/// [`EPOCH_BYTES_MAX`] bytes of `A-Z a-z 0-9 . _ -`) that changes when the log may have lost
/// acknowledged appends, so that seqs given out before could be given out again. Clients get it
/// in `hello` and give it back when they resume; a resume point of another epoch gets a `reset`.
///
/// What makes a new epoch is each store's business: the SQLite store makes a random one with
/// the database (renewed by an operator who restores an older copy of the file), the memory
/// store one per process, the PostgreSQL store one from its schema's id, the cluster's identity
/// and its WAL timeline (a failover changes it).
pub type Epoch = Arc<str>;

/// Longest [`Epoch`], in bytes (the PostgreSQL store's are about 60).
pub const EPOCH_BYTES_MAX: usize = 128;

/// Where a user's log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The highest seq ever assigned to this user (0: none yet).
    pub last_seq: Seq,
    /// Every seq up to this one was removed by retention (0: none). A client resuming from
    /// below it has lost notifications and must be told (`reset`).
    pub pruned_through: Seq,
    /// The store's epoch when this head was read: its seqs are seqs of this epoch. It is part of
    /// the head, read by the same operation, rather than asked for apart (with
    /// [`Store::epoch`]): a store whose epoch changes while it runs (a failover) could otherwise
    /// pair the old epoch, read just before, with a head read from the new history just after,
    /// and a client resuming with the old epoch would be judged by seqs of the new one.
    pub epoch: Epoch,
}

impl LogHead {
    /// The head of a user who never had a notification, under `epoch`.
    pub fn empty(epoch: Epoch) -> Self {
        Self { last_seq: 0, pruned_through: 0, epoch }
    }
}

/// A durable topic event to store; the store adds the `tseq`.
#[derive(Debug, Clone)]
pub struct NewTopicEvent {
    pub topic: Topic,
    pub kind: Arc<str>,
    pub data: Arc<RawValue>,
    pub created_at_ms: i64,
    /// No tab of this user gets it, replayed or live (Eliom's `notfor`).
    pub except_user: Option<UserId>,
    /// This tab does not get it.
    pub except_client: Option<crate::ids::ClientId>,
}

/// What `append_topic` did.
#[derive(Debug)]
pub enum TopicAppended {
    /// Stored, with its new `tseq`.
    Stored(Arc<TopicEvent>),
    /// The idempotency key was used within the window: nothing was stored; here is the receipt
    /// of the first publish.
    Duplicate(Receipt),
}

/// Where a topic's log stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicHead {
    /// The highest tseq ever given to the topic (0: none yet).
    pub last_tseq: Seq,
    /// Every tseq up to this one was removed by retention (0: none). A tab resuming the topic
    /// from below it has lost events and is told (a `reset` of the topic).
    pub pruned_through: Seq,
}

/// A page of a topic's log, oldest first, with its head and the epoch it was read under.
#[derive(Debug)]
pub struct TopicPage {
    pub events: Vec<Arc<TopicEvent>>,
    pub head: TopicHead,
    pub epoch: Epoch,
}

/// A page of a user's log, oldest first.
#[derive(Debug)]
pub struct LogPage {
    pub notifications: Vec<Arc<Notification>>,
    pub head: LogHead,
}

/// How long and how much of each user's log is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Notifications older than this are removed (default 30 days).
    pub max_age: Duration,
    /// At most this many notifications per user; the oldest go first (default 10,000).
    pub max_per_user: u64,
    /// Idempotency keys are remembered this long (24 hours).
    pub idempotency_window: Duration,
    /// Revocations are remembered this long (30 days): set it to the longest token lifetime
    /// accepted (`--token-ttl-max`), after which every token a revocation refuses has expired.
    pub revocation_window: Duration,
    /// Durable topic events older than this are removed (default 24 hours).
    pub topic_max_age: Duration,
    /// At most this many events per topic; the oldest go first, removed by `append_topic`
    /// itself (default 1,000).
    pub topic_max_events: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(30 * 24 * 3600),
            max_per_user: 10_000,
            idempotency_window: Duration::from_secs(24 * 3600),
            revocation_window: Duration::from_secs(30 * 24 * 3600),
            topic_max_age: Duration::from_secs(24 * 3600),
            topic_max_events: 1_000,
        }
    }
}

/// What one retention pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub notifications: u64,
    pub idempotency_keys: u64,
    /// Revocations forgotten (older than [`Retention::revocation_window`]).
    pub revocations: u64,
    /// Durable topic events removed (older than [`Retention::topic_max_age`]).
    pub topic_events: u64,
    /// Finished fan-out jobs forgotten (finished longer ago than the idempotency window).
    pub jobs: u64,
    /// Each user who lost notifications, with where their log now starts and their new counts
    /// (one entry per user and chunk of work: a user may appear more than once, the last entry
    /// is the newest).
    pub inboxes: Vec<PrunedInbox>,
}

/// A sign-out recorded in the store: the tokens of a user (for one session, or for all of them)
/// issued at or before `closed_at_secs` are refused. See [`crate::revocation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The session closed; `None`: every session of the user.
    pub session: Option<SessionId>,
    /// When it was closed, seconds since the Unix epoch (the resolution of a token's `iat`).
    pub closed_at_secs: u64,
}

/// What [`Store::listen`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopeListens {
    /// The topics the scope listens to now, sorted.
    Listening(Vec<Topic>),
    /// The scope would listen to `count` topics, over its bound: nothing changed.
    TooMany { count: usize, max: usize },
}

/// Bounds of the listens a store keeps for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenBounds {
    /// Topics at user scope.
    pub user_topics_max: usize,
    /// Topics at one session's scope.
    pub session_topics_max: usize,
    /// Sessions with session-scope listens: a listen for one more session forgets every listen
    /// of the session whose latest listen is the oldest (as the hub evicts the least recently
    /// active session), so that sessions never closed do not pile up.
    pub sessions_max: usize,
}

/// A store failure. Not the caller's fault; the publish or subscription fails and can be retried.
/// The last two only come from opening a store.
///
/// Each message says what failed once: a variant's text is the cause itself (`database or disk
/// is full`), never another `StoreError`'s whole message, so that no prefix is said twice.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store is full: {0}")]
    Overloaded(String),
    #[error("corrupt record in store: {0}")]
    Corrupt(String),
    /// Another store (in this process or another) has the same database open. Two writers on one
    /// log would hand out the same seqs, so a store takes an exclusive lock before it reads or
    /// changes anything, and a second one is refused. `pid`: the holder's, if it could be read.
    #[error("the store at {} is in use by another process ({})", .path.display(), holder(*.pid))]
    Locked { path: std::path::PathBuf, pid: Option<u32> },
    /// The file exists but is not a store's (empty, or another program's database): opening it
    /// as a new, empty store would restart every user's seqs, so it is refused, unchanged.
    #[error("{} is not a Herald database: {reason}", .path.display())]
    NotAStore { path: std::path::PathBuf, reason: String },
}

/// `pid 1234`, or `pid unknown`.
fn holder(pid: Option<u32>) -> String {
    pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
}

/// What a store's writer (its group-commit queue) has done since it opened
/// ([`Store::writer_stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreWriterStats {
    /// Requests (appends, and for SQLite every other write) taken off the queue.
    pub requests: u64,
    /// Batches run, one transaction (one commit) each.
    pub batches: u64,
    /// Requests waiting in the queue now.
    pub queued: u64,
    /// How long each batch's transaction took, its commit (and fsync) included.
    pub commit_duration: crate::metrics::HistogramSnapshot,
}

/// Each user's durable log of notifications.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Stores `entries` atomically, giving each the next seq of its user. With an
    /// `idempotency_key` seen within the window, stores nothing and returns the first receipt;
    /// otherwise remembers the key (even when `entries` is empty: an ephemeral publish).
    async fn append(
        &self,
        entries: Vec<NewNotification>,
        idempotency_key: Option<&str>,
    ) -> Result<Appended, StoreError>;

    /// Records the final receipt of the publish that used `idempotency_key`.
    async fn complete_receipt(&self, idempotency_key: &str, receipt: &Receipt) -> Result<(), StoreError>;

    /// Up to `limit` notifications of `user` with seq > `after`, oldest first, and the head
    /// (with the epoch the page was read under).
    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError>;

    /// Where `user`'s log stands, and under which epoch. A subscription judges a resume point by
    /// this one read.
    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError>;

    /// The last seq of each of `users`, in order (0 for a user never seen): what a multi-node
    /// bus's repair pass compares with its clients' positions, for every user of its node. One
    /// [`Store::head`] after the other by default; a shared store answers many at once.
    async fn last_seqs(&self, users: &[UserId]) -> Result<Vec<Seq>, StoreError> {
        let mut seqs = Vec::with_capacity(users.len());
        for user in users {
            seqs.push(self.head(user).await?.last_seq);
        }
        Ok(seqs)
    }

    /// The store's epoch now, without I/O: for when there is no read to take it from (a poller
    /// resumed from its parked queue). A resume point is judged by [`LogHead::epoch`], read with
    /// the head.
    fn epoch(&self) -> Epoch;

    /// Applies the store's [`Retention`] as of `now_ms`: removes notifications older than
    /// `max_age`, idempotency keys older than their window and revocations older than theirs.
    /// (`max_per_user` is enforced by `append` itself, so a log never holds more.)
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError>;

    /// A page of `user`'s inbox: the notifications in `query.status` (of `query.kind`, below
    /// `query.before`), newest first, at most `query.limit`, with `next_before` (`None` when no
    /// more match) and the counts, all from one snapshot.
    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError>;

    /// `user`'s inbox counts, in O(1). A user never seen has all zeros.
    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError>;

    /// Marks the selected notifications of `user` with `mark` at `at_ms` (see
    /// [`crate::inbox::ItemState::marked`]) and updates the counts, atomically. Seqs not stored
    /// (never, deleted, pruned) or already in that state are not changed, and are no error.
    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError>;

    /// Deletes the selected notifications of `user` and updates the counts, atomically. Unlike
    /// retention it leaves `pruned_through` alone (a resuming client skips deleted seqs without
    /// a `reset`). Seqs not stored are not changed, and are no error.
    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError>;

    /// Records that `user`'s `session` (or, with `None`, all the user's sessions) was closed at
    /// `closed_at_secs`. Keeps the latest close of each (user, session) only: an earlier
    /// `closed_at_secs` than the one stored changes nothing.
    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        closed_at_secs: u64,
    ) -> Result<(), StoreError>;

    /// Every revocation of `user` still remembered (at most one per session, plus one for all
    /// sessions), in no particular order. A user never signed out has none.
    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError>;

    /// Adds `topics` to what `user` listens to at user scope (`session` `None`) or at
    /// `session`'s scope, at `now_ms`; those listened to already at that scope stay as they
    /// are. Atomic: if the scope would then hold more topics than its bound, nothing changes
    /// ([`ScopeListens::TooMany`]). A session's first listen beyond
    /// [`ListenBounds::sessions_max`] sessions forgets the listens of the session whose latest
    /// listen is the oldest, in the same transaction. Returns the scope's topics now, sorted.
    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError>;

    /// Removes `topics` from what `user` listens to at that scope (those it does not listen to
    /// are ignored). Returns the scope's topics now, sorted.
    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError>;

    /// Forgets the session-scope listens of `user`'s `session` (of all its sessions with
    /// `None`): the session was closed. User-scope listens stay.
    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError>;

    /// Everything `user` listens to, at user scope and in each session, sorted (user scope
    /// first).
    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError>;

    /// Who listens to `topic` at user or session scope, sorted by user then session (user
    /// scope first), after `after` (exclusive; `None`: from the start), at most `limit`.
    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError>;

    /// Stores a durable topic event, giving it the topic's next tseq, and keeps at most
    /// [`Retention::topic_max_events`] of the topic's events (the oldest go, moving its
    /// `pruned_through`), in one transaction. With an `idempotency_key` seen within the window,
    /// stores nothing and returns the first receipt; otherwise remembers the key with a receipt
    /// naming the event (completed by [`Store::complete_receipt`]).
    async fn append_topic(
        &self,
        event: NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<TopicAppended, StoreError>;

    /// The head of each of `topics`, in order (a topic never published durably: all zeros), and
    /// the epoch they were read under, from one snapshot.
    async fn topic_heads(&self, topics: &[Topic]) -> Result<(Vec<TopicHead>, Epoch), StoreError>;

    /// Up to `limit` events of `topic` with tseq > `after`, oldest first, and the topic's head.
    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<TopicPage, StoreError>;

    /// Stores `job` as it is now, replacing the job with its id if there is one.
    async fn save_job(&self, job: &FanoutJob) -> Result<(), StoreError>;

    /// The job with this id, if the store has it (running, or finished within the idempotency
    /// window).
    async fn job(&self, id: &str) -> Result<Option<FanoutJob>, StoreError>;

    /// The jobs not finished, oldest first, at most `limit`.
    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<FanoutJob>, StoreError>;

    /// Keeps `subscription` for its user and session, replacing the one with its id (its
    /// endpoint: a browser that subscribes again, possibly signed in as someone else now). Then,
    /// in the same transaction, forgets the oldest subscriptions (by `created_at_ms`, then id)
    /// of the session beyond [`PushBounds::per_session_max`] and of the user beyond
    /// [`PushBounds::per_user_max`]. Returns the ids forgotten that way.
    async fn push_subscribe(
        &self,
        subscription: &PushSubscription,
        bounds: PushBounds,
    ) -> Result<Vec<String>, StoreError>;

    /// Forgets `user`'s subscription `id`; whether there was one (another user's is left alone).
    async fn push_unsubscribe(&self, user: &UserId, id: &str) -> Result<bool, StoreError>;

    /// `user`'s push subscriptions, oldest first (by `created_at_ms`, then id).
    async fn push_subscriptions(&self, user: &UserId) -> Result<Vec<PushSubscription>, StoreError>;

    /// The push subscription with this id, if it is kept.
    async fn push_subscription(&self, id: &str) -> Result<Option<PushSubscription>, StoreError>;

    /// Adds `deliveries` to the push outbox, atomically; a delivery whose id is there already
    /// is left as it is (so a push is never enqueued twice for one notification and
    /// subscription).
    async fn push_enqueue(&self, deliveries: &[PushDelivery]) -> Result<(), StoreError>;

    /// Claims up to `limit` deliveries due at `now_ms` (`due_at_ms <= now_ms`), the earliest
    /// first (then by id), for `lease`: each is due again at `now_ms + lease`, so that no other
    /// claimer (another node's sender) takes it meanwhile, and one whose claimer died is taken
    /// again once the lease ends. Atomic: two claims never return the same row within a lease.
    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<PushDelivery>, StoreError>;

    /// For each expansion, removes its marker and, only if there was one, adds its deliveries
    /// (an id kept already is left as it is); each marker of `to_senders` is made due for the
    /// senders at once (its `expand_by_ms` set to `now_ms`). One transaction. Returns how many
    /// deliveries were added.
    async fn push_expand(
        &self,
        expansions: &[PushExpansion],
        to_senders: &[PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError>;

    /// Claims up to `limit` markers whose `expand_by_ms` is at or before `now_ms` (the earliest
    /// first), for `lease`, as [`Store::push_claim`] does deliveries.
    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<PushPending>, StoreError>;

    /// When the next delivery is due or the next marker is to be expanded (ms), whichever is
    /// first; `None` when the outbox and the markers are empty.
    async fn push_next_due(&self) -> Result<Option<i64>, StoreError>;

    /// How many deliveries the outbox holds (a count of its rows: the sender's, now and then,
    /// never a publish's).
    async fn push_outbox_depth(&self) -> Result<u64, StoreError>;

    /// Removes delivery `id` from the outbox ([`PushSettle::Done`]) or moves it to a later time
    /// with its new count of attempts ([`PushSettle::Retry`]). An id not kept is no error.
    async fn push_settle(&self, id: &str, settle: PushSettle) -> Result<(), StoreError>;

    /// Records what `node` saw change in one session of a user (see [`crate::presence`]) and
    /// returns the events it makes, each with the user's next `user_seq`, in this order: for a
    /// session coming online, `user.online` if no node had a session of the user online,
    /// `session.online` if no node had this session online, then the tabs' events; for a
    /// session going offline, the tabs' events, `session.offline` if no node has the session
    /// online any more, `user.offline` if none has the user. A session already recorded online
    /// (or offline) for `node` makes no session or user event. Atomic, and serialized per user
    /// across nodes.
    async fn record_presence(
        &self,
        node: &str,
        change: &PresenceChange,
    ) -> Result<Vec<PresenceEvent>, StoreError>;

    /// Records that `node` is alive at `now_ms`, and names the other nodes last alive before
    /// `dead_before_ms` (see [`PresenceBeat`]).
    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<PresenceBeat, StoreError>;

    /// Records up to `limit` of `node`'s online sessions offline at `at_ms` (it died, or this
    /// is its restart), as [`Store::record_presence`] would, and returns their events; once
    /// it has none left, forgets the node and answers `None`.
    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<PresenceEvent>>, StoreError>;

    /// What kind of store this is, for `/healthz` and logs: `"sqlite"`, `"memory"`,
    /// `"postgres"`; `"custom"` unless an implementation names itself.
    fn kind(&self) -> &'static str {
        "custom"
    }

    /// What the store's writer has done, for `/metrics`: read from its counters, no I/O.
    /// `None` (the default) for a store without a writer queue.
    fn writer_stats(&self) -> Option<StoreWriterStats> {
        None
    }

    /// Whether the store can be reached, as of its last operations and its last
    /// [`Store::probe`]. Answers at once, without I/O (see [`crate::health`]). By default
    /// always [`Health::Ok`]: a store in this process has nothing to lose contact with.
    fn health(&self) -> Health {
        Health::Ok
    }

    /// A cheap check that the store can be reached now (a networked store: one round trip,
    /// within its usual bounds), which updates [`Store::health`]. The server runs it every few
    /// seconds, so that health is known, and recovery seen, without traffic. By default it
    /// does nothing.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
