//! The writer's requests. Each write is a type that implements [`Write`] (its arguments, and the
//! type of its result); a [`Job`] holds one with the channel its result goes back on, typed by the
//! write, and with the result itself once the write has run; a [`Request`] is any one job, as
//! the writer's queue carries them. A reply can thus only ever carry the result of its own write:
//! there is no outcome to match with its request, and none to mix up. What each write does in SQL
//! is in `writes`; how the writer batches requests and answers them once their batch has
//! committed, in `writer`.

use herald_core::{
    InboxChange, ListenBounds, Mark, NewNotification, NewTopicEvent, PresenceChange, PrunedInbox, PushBounds,
    PushRequest, PushSettle, PushSubscription, Retention, Seq, SessionId, StoreError, Topic, UserId,
};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::staging::StagingWrites;

/// Where a write's result goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A write the writer runs inside a batch's transaction.
pub(super) trait Write: Sized {
    /// What the requester gets back once the write's batch has committed.
    type Output;

    /// Runs the write on `conn`, inside the batch's transaction, as of `now_ms`. It only reads
    /// the write, so that a batch can run again after a rollback (see `writer::run_batch`).
    fn run(
        &self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        retention: &Retention,
        now_ms: i64,
    ) -> Result<Self::Output, StoreError>;

    /// The request that carries `job` to the writer.
    fn request(job: Job<Self>) -> Request;
}

/// A write, its reply, and its result, held by the writer until the write's batch has committed.
pub(super) struct Job<W: Write> {
    write: W,
    reply: Reply<W::Output>,
    /// What the write's last run gave; `None` before it ran. A batch that runs again (with
    /// savepoints, or failed as a whole) replaces it.
    result: Option<Result<W::Output, StoreError>>,
}

impl<W: Write> Job<W> {
    pub fn new(write: W, reply: Reply<W::Output>) -> Self {
        Self { write, reply, result: None }
    }

    /// Runs the write (see [`Write::run`]) and keeps its result for the reply; returns its error,
    /// if it failed, for the writer to decide about the batch.
    fn execute(
        &mut self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        retention: &Retention,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let result = self.write.run(conn, writes, retention, now_ms);
        let error = result.as_ref().err().cloned();
        self.result = Some(result);
        error.map_or(Ok(()), Err)
    }

    /// The write did not happen (or was rolled back): its requester gets `error`.
    pub fn fail(&mut self, error: StoreError) {
        self.result = Some(Err(error));
    }

    /// Whether the write ran and succeeded.
    fn succeeded(&self) -> bool {
        matches!(self.result, Some(Ok(_)))
    }

    /// Sends the result, once the write's batch has committed (or failed).
    fn send(self) {
        // The writer runs or fails every request of a batch before it answers any.
        debug_assert!(self.result.is_some(), "a request was answered before it ran");
        // No result (never, see above) drops the reply: the requester's wait ends with an
        // error. A requester that stopped waiting gets nothing; its write is done all the same.
        if let Some(result) = self.result {
            let _ = self.reply.send(result);
        }
    }
}

/// One request on the writer's queue: a [`Job`] of any write.
pub(super) enum Request {
    Append(Job<Append>),
    AppendTopic(Job<AppendTopic>),
    CompleteReceipt(Job<CompleteReceipt>),
    PruneChunk(Job<PruneChunk>),
    SaveJob(Job<SaveJob>),
    RecordPresence(Job<RecordPresence>),
    PresenceHeartbeat(Job<PresenceHeartbeat>),
    ReleasePresence(Job<ReleasePresence>),
    Revoke(Job<Revoke>),
    Listen(Job<Listen>),
    Unlisten(Job<Unlisten>),
    ForgetSessionListens(Job<ForgetSessionListens>),
    InboxMark(Job<InboxMark>),
    InboxDelete(Job<InboxDelete>),
    SettleAll(Job<SettleAll>),
    PushSubscribe(Job<PushSubscribe>),
    PushUnsubscribe(Job<PushUnsubscribe>),
    PushEnqueue(Job<PushEnqueue>),
    PushSettleRow(Job<PushSettleRow>),
    PushExpand(Job<PushExpand>),
    PushClaim(Job<PushClaim>),
    PushClaimPending(Job<PushClaimPending>),
}

/// `$body` with `$job` bound to the request's job, whatever its write: the one place that lists
/// the variants for the methods below, whose code is the same for every kind of write.
macro_rules! with_job {
    ($request:expr, $job:ident => $body:expr) => {
        match $request {
            Request::Append($job) => $body,
            Request::AppendTopic($job) => $body,
            Request::CompleteReceipt($job) => $body,
            Request::PruneChunk($job) => $body,
            Request::SaveJob($job) => $body,
            Request::RecordPresence($job) => $body,
            Request::PresenceHeartbeat($job) => $body,
            Request::ReleasePresence($job) => $body,
            Request::Revoke($job) => $body,
            Request::Listen($job) => $body,
            Request::Unlisten($job) => $body,
            Request::ForgetSessionListens($job) => $body,
            Request::InboxMark($job) => $body,
            Request::InboxDelete($job) => $body,
            Request::SettleAll($job) => $body,
            Request::PushSubscribe($job) => $body,
            Request::PushUnsubscribe($job) => $body,
            Request::PushEnqueue($job) => $body,
            Request::PushSettleRow($job) => $body,
            Request::PushExpand($job) => $body,
            Request::PushClaim($job) => $body,
            Request::PushClaimPending($job) => $body,
        }
    };
}

impl Request {
    /// Runs the request's write and keeps its result (see [`Write::run`]); returns its error.
    pub fn execute(
        &mut self,
        conn: &Connection,
        writes: &mut StagingWrites<'_>,
        retention: &Retention,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        with_job!(self, job => job.execute(conn, writes, retention, now_ms))
    }

    /// The request's write did not happen: its requester gets `error`.
    pub fn fail(&mut self, error: StoreError) {
        with_job!(self, job => job.fail(error))
    }

    /// Answers the requester. Only once the request's batch has committed: nothing is
    /// acknowledged before it is durable.
    pub fn send(self) {
        with_job!(self, job => job.send())
    }

    /// The job of a [`SettleAll`] whose batch committed: the writer settles everything now and
    /// tells it how that went.
    pub fn settle_all_due(&mut self) -> Option<&mut Job<SettleAll>> {
        match self {
            Request::SettleAll(job) if job.succeeded() => Some(job),
            _ => None,
        }
    }
}

/// Stores `entries`, each with the next seq of its user (`Store::append`), and a push marker
/// for each entry with a push request whose user has a push subscription.
pub(super) struct Append {
    pub entries: Vec<NewNotification>,
    pub key: Option<String>,
    /// The distinct push requests of the entries (by `Arc`: usually one, the publish's),
    /// serialized by the requester; empty when no entry has one, and then the append does no
    /// push work at all.
    pub push: Vec<AppendPush>,
}

/// One push request of an append, with its JSON.
pub(super) struct AppendPush {
    pub request: std::sync::Arc<PushRequest>,
    pub json: String,
}

/// Stores `event` with the next tseq of its topic, keeping at most `topic_max_events` of the
/// topic's events (`Store::append_topic`).
pub(super) struct AppendTopic {
    pub event: NewTopicEvent,
    pub key: Option<String>,
}

/// Records the final receipt of the publish that used `key` (`Store::complete_receipt`).
pub(super) struct CompleteReceipt {
    pub key: String,
    /// Serialized by the requester, not on the writer thread, which every publish waits for.
    pub receipt: String,
}

/// Stores a fan-out job, replacing the one with its id (`Store::save_job`).
pub(super) struct SaveJob {
    pub id: String,
    pub created_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    /// The whole job, serialized by the requester, not on the writer thread (as a receipt is).
    pub json: String,
}

/// Records what `node` saw change in a session (`Store::record_presence`).
pub(super) struct RecordPresence {
    pub node: String,
    pub change: PresenceChange,
}

/// Records that `node` is alive and finds the dead ones (`Store::presence_heartbeat`).
pub(super) struct PresenceHeartbeat {
    pub node: String,
    pub now_ms: i64,
    pub dead_before_ms: i64,
}

/// Records up to `limit` of `node`'s sessions offline (`Store::release_presence`).
pub(super) struct ReleasePresence {
    pub node: String,
    pub at_ms: i64,
    pub limit: usize,
}

/// One bounded chunk of retention (`Store::prune` sends them until one is done).
#[derive(Debug, Clone, Copy)]
pub(super) struct PruneChunk {
    /// Notifications created before this (ms) go.
    pub notifications_before: i64,
    /// Idempotency keys recorded before this (ms) go, and so do fan-out jobs finished before it:
    /// a job is kept as long as its chunks' keys are.
    pub keys_before: i64,
    /// Revocations closed before this (Unix seconds) go.
    pub revocations_before: i64,
    /// Durable topic events created before this (ms) go.
    pub topic_events_before: i64,
}

/// What one chunk of `prune` removed, and whether anything expired is left.
#[derive(Debug)]
pub(super) struct PrunedChunk {
    pub notifications: u64,
    pub idempotency_keys: u64,
    pub revocations: u64,
    pub topic_events: u64,
    pub jobs: u64,
    pub inboxes: Vec<PrunedInbox>,
    pub done: bool,
}

/// Records a close of `user`'s `session` (`None`: all its sessions), keeping the latest one.
pub(super) struct Revoke {
    pub user: UserId,
    pub session: Option<SessionId>,
    pub closed_at_secs: i64,
}

/// Adds `topics` to what `user` listens to at user scope (`session` `None`) or at `session`'s
/// scope, within `bounds`, as of `now_ms` (`Store::listen`).
pub(super) struct Listen {
    pub user: UserId,
    pub session: Option<SessionId>,
    pub topics: Vec<Topic>,
    pub bounds: ListenBounds,
    pub now_ms: i64,
}

/// Removes `topics` from what `user` listens to at that scope (`Store::unlisten`).
pub(super) struct Unlisten {
    pub user: UserId,
    pub session: Option<SessionId>,
    pub topics: Vec<Topic>,
}

/// Forgets the session-scope listens of `user`'s `session` (`None`: of all its sessions)
/// (`Store::forget_session_listens`).
pub(super) struct ForgetSessionListens {
    pub user: UserId,
    pub session: Option<SessionId>,
}

/// Marks `rows` of `user`'s inbox with `mark` at `at_ms`.
pub(super) struct InboxMark {
    pub user: UserId,
    pub rows: Rows,
    pub mark: Mark,
    pub at_ms: i64,
}

/// Deletes `rows` of `user`'s inbox.
pub(super) struct InboxDelete {
    pub user: UserId,
    pub rows: Rows,
}

/// The rows of one inbox request.
#[derive(Debug, Clone)]
pub(super) enum Rows {
    Seqs(Vec<Seq>),
    /// Seqs in `(after, through]`, at most [`INBOX_CHUNK_ROWS`](super::INBOX_CHUNK_ROWS) of them
    /// that the request changes.
    Range {
        after: i64,
        through: i64,
    },
}

/// What one inbox request changed, and where the next chunk starts (`None`: done).
#[derive(Debug)]
pub(super) struct InboxChunk {
    pub change: InboxChange,
    pub next_after: Option<i64>,
}

/// Settles everything staged, once the batch it is in has committed
/// ([`SqliteStore::settle_all`](super::SqliteStore::settle_all)): it runs nothing in the batch
/// itself, and the writer settles after the commit (see [`Request::settle_all_due`]).
pub(super) struct SettleAll;

/// Keeps a push subscription, then forgets its session's and user's oldest beyond `bounds`
/// (`Store::push_subscribe`).
pub(super) struct PushSubscribe {
    pub subscription: PushSubscription,
    /// The whole subscription, serialized by the requester (as a job is).
    pub json: String,
    pub bounds: PushBounds,
}

/// Forgets `user`'s push subscription `id` (`Store::push_unsubscribe`).
pub(super) struct PushUnsubscribe {
    pub user: UserId,
    pub id: String,
}

/// Adds deliveries to the push outbox, leaving those whose id is kept already
/// (`Store::push_enqueue`).
pub(super) struct PushEnqueue {
    pub rows: Vec<OutboxRow>,
}

/// A delivery as a row of `push_outbox`: `(id, due_at_ms, json)`.
pub(super) type OutboxRow = (String, i64, String);

/// A push marker's key in `push_pending`: `(user, seq)`.
pub(super) type MarkerKey = (String, i64);

/// Removes or reschedules one delivery of the push outbox (`Store::push_settle`).
pub(super) struct PushSettleRow {
    pub id: String,
    pub settle: PushSettle,
}

/// Expands push markers (`Store::push_expand`): each marker `(user, seq)` is removed and, only
/// if it was there, its deliveries `(id, due_at_ms, json)` are added; the markers of
/// `to_senders` are made due for the senders at `now_ms`.
pub(super) struct PushExpand {
    pub expansions: Vec<(MarkerKey, Vec<OutboxRow>)>,
    pub to_senders: Vec<MarkerKey>,
    pub now_ms: i64,
}

/// Claims up to `limit` deliveries due at `now_ms` until `until_ms` (`Store::push_claim`);
/// answers their JSON, parsed by the requester.
pub(super) struct PushClaim {
    pub now_ms: i64,
    pub limit: i64,
    pub until_ms: i64,
}

/// Claims up to `limit` markers to expand at `now_ms` until `until_ms`
/// (`Store::push_claim_pending`); answers `(user, seq, request JSON)`.
pub(super) struct PushClaimPending {
    pub now_ms: i64,
    pub limit: i64,
    pub until_ms: i64,
}
