//! The [`Notifier`]: the handle that publishes notifications from anywhere.
//!
//! It needs no request context (Eliom's notify needed the site data of a request): clone it
//! into a background task, a thread with a runtime handle, or another service's client, and call
//! [`Notifier::publish`] or [`Notifier::notify`].
//!
//! One job: a publish from its checks to its receipt (resolving its audience, the append, the
//! hand-over to the bus), with the topic listens and fan-out jobs a publish may involve. What a
//! publish asks of Web Push (its push request, turning the append's markers into deliveries,
//! and the senders' recovery of markers left behind) is the same `impl Notifier`, in
//! `notifier/push.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bus::{Bus, BusError, RevocationNews, reload_listens};
use crate::client::CloseReason;
use crate::data::{DataError, check_data};
use crate::hub::{Hub, ListenError, Presence};
use crate::ids::{ClientId, ID_BYTES_MAX, Seq, SessionId, Topic, UserId};
use crate::inbox::{InboxCounts, InboxEvent};
use crate::inbox_service::Inbox;
use crate::jobs::{FanoutJob, JOB_CHUNK_TRIES_MAX, JOB_CHUNK_USERS_MAX, JOBS_UNFINISHED_MAX, job_id_of_key};
use crate::metrics::{PublishOutcome, REFUSAL_REASONS};
use crate::notification::{
    Audience, FOLLOWERS_PER_PUBLISH_MAX, KIND_BYTES_MAX, Notification, Publish, Receipt, ReceiptEntry,
    Target, TopicReceipt, now_ms,
};
use crate::push::{PUSH_PAYLOAD_BYTES_MAX, PushOutbox, PushPolicy, is_push_topic, push_body};
use crate::revocation::Revocations;
use crate::store::{
    Appended, ListenBounds, NewNotification, NewTopicEvent, ScopeListens, Store, StoreError, TopicAppended,
};
use crate::topic::TopicEvent;
use crate::topic::TopicListener;

mod push;

/// Who listens to a topic ([`Notifier::topic_listeners`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicListeners {
    /// Users listening at user scope, sorted.
    pub users: Vec<UserId>,
    /// Sessions listening at session scope, sorted by user then session.
    pub sessions: Vec<(UserId, SessionId)>,
    /// Tabs listening, at any scope, on every node.
    pub tabs: Vec<crate::hub::TopicTab>,
    /// Some were left out (over the bound asked for).
    pub truncated: bool,
    /// The topic's last tseq (0: never published durably).
    pub last_tseq: Seq,
}

/// Why a publish was refused or failed. All but `ClientNotFound`, `Store` and `Bus` are the
/// publisher's fault, each a rule of its own; none of them changed anything. `ClientNotFound`:
/// the client is gone (or never was); `Store` and `Bus` are the server's.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `data` longer than [`crate::Limits::data_bytes_max`] as JSON text.
    #[error("data is {bytes} bytes of JSON; at most {max} are allowed")]
    DataTooLarge { bytes: usize, max: usize },
    /// `data` that some client could not decode ([`check_data`]).
    #[error(transparent)]
    InvalidData(#[from] DataError),
    /// A `type` that is empty or longer than [`KIND_BYTES_MAX`].
    #[error("type must be 1 to {max} bytes long, not {bytes}")]
    InvalidKind { bytes: usize, max: usize },
    /// An idempotency key that is empty or longer than [`ID_BYTES_MAX`].
    #[error("idempotency_key must be 1 to {max} bytes long, not {bytes}")]
    InvalidIdempotencyKey { bytes: usize, max: usize },
    /// A `push_payload` whose push would be longer than [`crate::push::PUSH_PAYLOAD_BYTES_MAX`].
    #[error("the push would carry {bytes} bytes; at most {max} fit a push (make push_payload smaller)")]
    PushPayloadTooLarge { bytes: usize, max: usize },
    /// A push topic that cannot be an RFC 8030 `Topic` header.
    #[error("push_topic must be 1 to 32 characters of A-Z a-z 0-9 - _")]
    InvalidPushTopic,
    /// A [`Target::Users`] that names nobody.
    #[error("`users` must not be empty")]
    NoUsers,
    /// A [`Target::Users`] over [`crate::Limits::users_per_publish_max`].
    #[error("{count} users in one publish; at most {max} are allowed")]
    TooManyUsers { count: usize, max: usize },
    /// `data` times its users over [`crate::Limits::publish_bytes_max`].
    #[error(
        "{users} users × {data_bytes} bytes of data is {bytes} bytes in one publish; at most {max} are allowed \
         (send less data, e.g. an id to fetch, or fewer users per publish)"
    )]
    PublishTooLarge { users: usize, data_bytes: usize, bytes: usize, max: usize },
    /// `except_user` on a target other than a topic (a user target excepting a user is nobody).
    #[error("except_user applies only to a topic target")]
    ExceptUserWithoutTopic,
    /// A [`Target::Followers`] publish that needs a background job while
    /// [`JOBS_UNFINISHED_MAX`] jobs are not finished.
    #[error("{max} fan-out jobs are running: try again once one has finished")]
    TooManyJobs { max: usize },
    /// A [`Target::Followers`] publish that is not durable: an inbox keeps durable notifications.
    #[error("a publish to a topic's followers' inboxes is durable: drop \"durable\": false")]
    EphemeralInbox,
    /// A listen or unlisten that names no topic.
    #[error("`topics` must not be empty")]
    NoTopics,
    /// A listen refused by the tab's bounds, or for a tab that is not here.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A [`Target::Client`] this node does not know (never connected, or forgotten after
    /// [`crate::Limits::client_linger`]).
    #[error("client {0} is not connected to this server")]
    ClientNotFound(ClientId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// The index in [`REFUSAL_REASONS`] of why `error` refused a publish.
fn refusal_reason(error: &NotifyError) -> usize {
    let reason = match error {
        NotifyError::InvalidData(_)
        | NotifyError::InvalidKind { .. }
        | NotifyError::InvalidIdempotencyKey { .. }
        | NotifyError::NoUsers
        | NotifyError::ExceptUserWithoutTopic
        | NotifyError::EphemeralInbox
        | NotifyError::NoTopics
        | NotifyError::InvalidPushTopic => "invalid",
        NotifyError::DataTooLarge { .. }
        | NotifyError::PublishTooLarge { .. }
        | NotifyError::PushPayloadTooLarge { .. } => "too_large",
        NotifyError::TooManyUsers { .. } => "too_many_users",
        NotifyError::TooManyJobs { .. } => "too_many_jobs",
        NotifyError::Listen(_) => "listen",
        NotifyError::ClientNotFound(_) => "client_not_found",
        NotifyError::Store(_) => "store_unavailable",
        NotifyError::Bus(_) => "bus_unavailable",
    };
    REFUSAL_REASONS.iter().position(|&r| r == reason).unwrap_or(REFUSAL_REASONS.len() - 1)
}

/// Applies what the bus says about revocations made on other nodes to the cache, until the bus
/// or the notifier is gone. Needs a Tokio runtime (a multi-node bus runs in one anyway).
fn apply_revocation_news(
    notifier: std::sync::Weak<NotifierInner>,
    mut news: tokio::sync::mpsc::Receiver<RevocationNews>,
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime: revocations made on other nodes are not applied here");
        return;
    };
    runtime.spawn(async move {
        while let Some(news) = news.recv().await {
            let Some(inner) = notifier.upgrade() else { return };
            match news {
                RevocationNews::User(user) => inner.revocations.forget(&user),
                RevocationNews::All => inner.revocations.forget_all(),
                RevocationNews::Unreliable => inner.revocations.pause_cache(),
            }
        }
    });
}

/// Publishes notifications: stores the durable ones, then hands them to the bus. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<NotifierInner>,
}

struct NotifierInner {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    hub: Hub,
    inbox: Inbox,
    revocations: Revocations,
    /// Ids of the fan-out jobs this process runs, so that one is never run twice here.
    running_jobs: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// This node's side of the push outbox: its depth, the sender's wake-up, the counters.
    push_outbox: Arc<PushOutbox>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(store: Arc<dyn Store>, bus: Arc<dyn Bus>, hub: Hub) -> Self {
        let inbox = Inbox::new(store.clone(), bus.clone());
        let revocations = Revocations::new(store.clone());
        let news = bus.revocation_news();
        let running_jobs = parking_lot::Mutex::default();
        let push_outbox = Arc::default();
        let inner =
            Arc::new(NotifierInner { store, bus, hub, inbox, revocations, running_jobs, push_outbox });
        if let Some(news) = news {
            apply_revocation_news(Arc::downgrade(&inner), news);
        }
        Self { inner }
    }

    /// The deny-list of closed sessions that subscriber tokens are checked against.
    pub fn revocations(&self) -> &Revocations {
        &self.inner.revocations
    }

    /// The users' inboxes: read state, counts, and the `inbox` events, on the same store and bus.
    pub fn inbox(&self) -> &Inbox {
        &self.inner.inbox
    }

    /// Makes every topic event pass through `prepare` for each user whose tabs listen, once per
    /// user (see [`crate::Prepare`]); set it on every node. Once: a second call is refused
    /// (`false`).
    pub fn set_prepare(&self, prepare: Arc<dyn crate::Prepare>) -> bool {
        self.inner.hub.set_prepare(prepare)
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// This node's side of the push outbox (its depth, the sender's wake-up, the counters).
    pub fn push_outbox(&self) -> &Arc<PushOutbox> {
        &self.inner.push_outbox
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The bus this notifier publishes on.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.inner.bus
    }

    /// A durable notification of type `kind` with JSON `data` for every client of `user`.
    pub async fn notify(
        &self,
        user: &UserId,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<Receipt, NotifyError> {
        let data = serde_json::value::to_raw_value(data)
            .expect("a serde_json::Value always serializes: its keys are strings, its numbers finite");
        self.publish(Publish::to_user(user.clone(), kind, Arc::from(data))).await
    }

    /// Publishes `publish`: validates it, stores it if durable (the seqs are durable when this
    /// returns), and hands it to every node. Returns the seqs and how many clients of this node
    /// it was handed to.
    pub async fn publish(&self, publish: Publish) -> Result<Receipt, NotifyError> {
        let started = Instant::now();
        let mut outcome = if publish.durable { PublishOutcome::Stored } else { PublishOutcome::Ephemeral };
        let result = self.publish_unmeasured(publish, &mut outcome).await;
        let metrics = self.inner.hub.metrics();
        match &result {
            Ok(_) => metrics.published(outcome, started.elapsed()),
            Err(error) => metrics.refused(refusal_reason(error), started.elapsed()),
        }
        result
    }

    /// [`Notifier::publish`], which counts what this did: `outcome` is set to
    /// [`PublishOutcome::Repeat`] or [`PublishOutcome::Job`] when it was one.
    async fn publish_unmeasured(
        &self,
        publish: Publish,
        outcome: &mut PublishOutcome,
    ) -> Result<Receipt, NotifyError> {
        let limits = self.inner.hub.limits();
        // The target's shape first: whom a publish is for decides what else is worth checking.
        if let Target::Users(users) = &publish.target {
            if users.len() > limits.users_per_publish_max {
                return Err(NotifyError::TooManyUsers {
                    count: users.len(),
                    max: limits.users_per_publish_max,
                });
            }
            if users.is_empty() {
                return Err(NotifyError::NoUsers);
            }
        }
        let data_bytes = publish.data.get().len();
        if data_bytes > limits.data_bytes_max {
            return Err(NotifyError::DataTooLarge { bytes: data_bytes, max: limits.data_bytes_max });
        }
        // Once here, for every path that publishes (the API, the demo, `notify`, embedders):
        // what is stored is what every client can decode.
        check_data(publish.data.get())?;
        if publish.kind.is_empty() || publish.kind.len() > KIND_BYTES_MAX {
            return Err(NotifyError::InvalidKind { bytes: publish.kind.len(), max: KIND_BYTES_MAX });
        }
        if let Some(key) = &publish.idempotency_key
            && (key.is_empty() || key.len() > ID_BYTES_MAX)
        {
            return Err(NotifyError::InvalidIdempotencyKey { bytes: key.len(), max: ID_BYTES_MAX });
        }
        if let Some(payload) = &publish.push.payload {
            check_data(payload.get())?;
            let bytes = push_body(&publish.kind, Some(u64::MAX), payload.get(), false).len();
            if bytes > PUSH_PAYLOAD_BYTES_MAX {
                return Err(NotifyError::PushPayloadTooLarge { bytes, max: PUSH_PAYLOAD_BYTES_MAX });
            }
        }
        if publish.push.topic.as_deref().is_some_and(|t| !is_push_topic(t)) {
            return Err(NotifyError::InvalidPushTopic);
        }
        if let Target::Topic(topic) = &publish.target {
            let topic = topic.clone();
            return self.publish_topic(&topic, publish, outcome).await;
        }
        if publish.except_user.is_some() && !matches!(publish.target, Target::Followers(_)) {
            return Err(NotifyError::ExceptUserWithoutTopic);
        }
        if matches!(publish.target, Target::Followers(_)) && !publish.durable {
            return Err(NotifyError::EphemeralInbox);
        }
        let mut audiences = match &publish.target {
            // Into the followers' inboxes: at once when they fit one publish, else as a job.
            Target::Followers(topic) => match self.followers(topic, data_bytes).await? {
                Some(users) => {
                    let audience =
                        Audience { except_client: publish.except_client.clone(), ..Audience::user() };
                    users.into_iter().map(|user| (user, audience.clone())).collect()
                }
                None => {
                    let topic = topic.clone();
                    *outcome = PublishOutcome::Job;
                    return self.start_job(topic, publish).await;
                }
            },
            target => self.resolve(target, publish.except_client.as_ref()).await?,
        };
        if let Some(except) = &publish.except_user {
            audiences.retain(|(user, _)| user != except);
        }
        let publish_bytes = data_bytes.saturating_mul(audiences.len());
        if publish_bytes > limits.publish_bytes_max {
            return Err(NotifyError::PublishTooLarge {
                users: audiences.len(),
                data_bytes,
                bytes: publish_bytes,
                max: limits.publish_bytes_max,
            });
        }
        let key = publish.idempotency_key.as_deref();
        let created_at_ms = now_ms();
        let push = self.push_request(&publish, created_at_ms);
        let mut push_pending = Vec::new();
        let (notifications, counts): (Vec<Arc<Notification>>, Vec<(UserId, InboxCounts)>) = if publish.durable
        {
            let entries: Vec<NewNotification> = audiences
                .into_iter()
                .map(|(user, audience)| NewNotification {
                    user,
                    kind: publish.kind.clone(),
                    data: publish.data.clone(),
                    created_at_ms,
                    audience,
                    push: push.clone(),
                })
                .collect();
            let users = entries.len();
            match self.timed_append(self.inner.store.append(entries, key)).await? {
                Appended::Stored { notifications, counts, push_pending: pending } => {
                    // The receipt and the fan-out below take one stored notification per entry.
                    debug_assert!(
                        notifications.len() == users && notifications.iter().all(|n| n.seq.is_some()),
                        "a store's append returns each entry it was given, with its seq"
                    );
                    push_pending = pending;
                    (notifications, counts)
                }
                Appended::Duplicate(receipt) => {
                    *outcome = PublishOutcome::Repeat;
                    return Ok(receipt);
                }
            }
        } else {
            if let Some(key) = key
                && let Appended::Duplicate(receipt) = self.inner.store.append(Vec::new(), Some(key)).await?
            {
                *outcome = PublishOutcome::Repeat;
                return Ok(receipt);
            }
            let notifications = audiences
                .into_iter()
                .map(|(user, audience)| {
                    Arc::new(Notification::new(
                        user,
                        None,
                        publish.kind.clone(),
                        publish.data.clone(),
                        created_at_ms,
                        audience,
                    ))
                })
                .collect();
            (notifications, Vec::new())
        };
        // What to push, kept apart before the hand-over takes the notifications: the durable
        // ones the append marked, or every ephemeral one under `always`.
        let to_push: Vec<Arc<Notification>> = match &push {
            // No marker: none of the users has a subscription (the usual case).
            Some(_) if publish.durable && push_pending.is_empty() => Vec::new(),
            Some(_) if publish.durable => {
                let marked: std::collections::HashSet<(&UserId, Seq)> =
                    push_pending.iter().map(|m| (&m.user, m.seq)).collect();
                notifications
                    .iter()
                    .filter(|n| n.seq.is_some_and(|seq| marked.contains(&(&n.user, seq))))
                    .cloned()
                    .collect()
            }
            Some(_) => notifications.clone(),
            None => Vec::new(),
        };
        let receipt = self.hand_over(notifications, counts).await?;
        // After the hand-over: a tab that got it live has it; `offline` looks for tabs now.
        if let Some(push) = &push
            && !to_push.is_empty()
        {
            self.expand_pushes(push, to_push).await;
        }
        if let Some(key) = key
            && let Err(error) = self.inner.store.complete_receipt(key, &receipt).await
        {
            // The publish itself succeeded; a retry would get `delivered: 0`, nothing worse.
            tracing::warn!(%error, "cannot record the receipt of an idempotent publish");
        }
        Ok(receipt)
    }

    /// Awaits a publish's append, timing it for `/metrics`.
    async fn timed_append<T>(
        &self,
        append: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let appended = append.await;
        self.inner.hub.metrics().store_append(started.elapsed(), appended.is_err());
        appended
    }

    /// Hands stored (or ephemeral) notifications and their users' new counts to the bus: every
    /// node's tabs get them. Returns the receipt (seqs, tabs reached on this node).
    async fn hand_over(
        &self,
        notifications: Vec<Arc<Notification>>,
        counts: Vec<(UserId, InboxCounts)>,
    ) -> Result<Receipt, NotifyError> {
        let mut receipt = Receipt::default();
        for notification in &notifications {
            if let Some(seq) = notification.seq {
                receipt.notifications.push(ReceiptEntry { user: notification.user.clone(), seq });
            }
        }
        // Then the new counts, to the clients that follow them (a badge): after the
        // notifications, so a follower sees a notification before the counts that include it.
        let appended: Vec<Arc<InboxEvent>> = match (receipt.notifications.as_slice(), counts.as_slice()) {
            // Most publishes: one notification for one user, no map to make.
            ([entry], [(user, counts)]) if entry.user == *user => {
                vec![Arc::new(InboxEvent::appended(user.clone(), &[entry.seq], *counts))]
            }
            _ => {
                let mut seqs_of: HashMap<&UserId, Vec<Seq>> = HashMap::with_capacity(counts.len());
                for entry in &receipt.notifications {
                    seqs_of.entry(&entry.user).or_default().push(entry.seq);
                }
                counts
                    .iter()
                    .map(|(user, counts)| {
                        let seqs = seqs_of.get(user).map(Vec::as_slice).unwrap_or_default();
                        Arc::new(InboxEvent::appended(user.clone(), seqs, *counts))
                    })
                    .collect()
            }
        };
        // One hand-over: a multi-node bus sends the notifications and the counts of a user
        // together (one message per shard, not two per user).
        receipt.delivered = self.inner.bus.publish_all(notifications, appended).await?;
        Ok(receipt)
    }

    /// A publish to everyone listening to `topic`, checked but for its target: one `topic`
    /// event, serialized once, handed to every node.
    async fn publish_topic(
        &self,
        topic: &Topic,
        publish: Publish,
        outcome: &mut PublishOutcome,
    ) -> Result<Receipt, NotifyError> {
        let key = publish.idempotency_key.as_deref();
        let event = if publish.durable {
            // Stored first, with its key, in one transaction: a publish answered is in the log,
            // and a tab resuming the topic gets it even if the fan-out below never reached it.
            let new = NewTopicEvent {
                topic: topic.clone(),
                kind: publish.kind,
                data: publish.data,
                created_at_ms: now_ms(),
                except_user: publish.except_user,
                except_client: publish.except_client,
            };
            match self.timed_append(self.inner.store.append_topic(new, key)).await? {
                TopicAppended::Stored(event) => event,
                TopicAppended::Duplicate(receipt) => {
                    *outcome = PublishOutcome::Repeat;
                    return Ok(receipt);
                }
            }
        } else {
            if let Some(key) = key
                && let Appended::Duplicate(receipt) = self.inner.store.append(Vec::new(), Some(key)).await?
            {
                *outcome = PublishOutcome::Repeat;
                return Ok(receipt);
            }
            Arc::new(TopicEvent::new(
                topic.clone(),
                publish.kind,
                publish.data,
                now_ms(),
                publish.except_user,
                publish.except_client,
            ))
        };
        let stored = event.tseq.map(|tseq| TopicReceipt { topic: topic.clone(), tseq });
        let delivered = self.inner.bus.publish_topic(event).await?;
        let receipt = Receipt { notifications: Vec::new(), topic: stored, job: None, delivered };
        if let Some(key) = key
            && let Err(error) = self.inner.store.complete_receipt(key, &receipt).await
        {
            tracing::warn!(%error, "cannot record the receipt of an idempotent publish");
        }
        Ok(receipt)
    }

    /// Makes the tab `client` of `user` in `session` listen to `topics` too (client scope: until
    /// it unlistens or is forgotten), on whichever node it is connected to. Returns the topics
    /// it listens to now.
    pub async fn listen(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, NotifyError> {
        self.check_listen(topics)?;
        Ok(self.inner.bus.change_listens(user, session, client, topics, true).await??)
    }

    /// Makes the tab stop listening to `topics`. Returns the topics it listens to now.
    pub async fn unlisten(
        &self,
        user: &UserId,
        session: &SessionId,
        client: &ClientId,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, NotifyError> {
        self.check_listen(topics)?;
        Ok(self.inner.bus.change_listens(user, session, client, topics, false).await??)
    }

    /// Makes `user` listen to `topics` in every tab (`session` `None`: user scope, kept until
    /// unlistened) or in the tabs of `session` (session scope, until the session is closed),
    /// kept in the store: the user's tabs on every node listen to them from then on, those
    /// open now included. Returns the scope's topics now, sorted. This node's tabs listen when
    /// it returns; other nodes' follow at once, through the bus.
    pub async fn listen_scope(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, NotifyError> {
        self.check_listen(topics)?;
        let limits = self.inner.hub.limits();
        let bounds = ListenBounds {
            user_topics_max: limits.topics_per_user_max,
            session_topics_max: limits.topics_per_session_max,
            sessions_max: limits.sessions_per_user_max,
        };
        match self.inner.store.listen(user, session, topics, bounds, now_ms()).await? {
            ScopeListens::TooMany { count, max } => Err(ListenError::TooManyTopics { count, max }.into()),
            ScopeListens::Listening(listening) => {
                self.listens_changed(user).await;
                Ok(listening)
            }
        }
    }

    /// Makes `user` (or its `session`) stop listening to `topics` at that scope. Returns the
    /// scope's topics now, sorted.
    pub async fn unlisten_scope(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, NotifyError> {
        self.check_listen(topics)?;
        let listening = self.inner.store.unlisten(user, session, topics).await?;
        self.listens_changed(user).await;
        Ok(listening)
    }

    /// `user`'s listens kept in the store changed: this node's tabs follow now, the other
    /// nodes' through the bus. The change is stored: a failure here is logged, and the tabs
    /// follow at their next connection.
    async fn listens_changed(&self, user: &UserId) {
        match reload_listens(&self.inner.hub, self.inner.store.as_ref(), user).await {
            Ok(Some(gained)) => self.inner.hub.topics_ready(&gained).await,
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, %user, "cannot read the listens a change just stored"),
        }
        if let Err(error) = self.inner.bus.listens_changed(user).await {
            tracing::warn!(%error, %user, "cannot tell the other nodes of a change of listens");
        }
    }

    /// Who listens to `topic`: at most `max` users at user scope and sessions at session scope
    /// (from the store), and at most `max` tabs (on every node); `truncated` when there were
    /// more of either.
    pub async fn topic_listeners(&self, topic: &Topic, max: usize) -> Result<TopicListeners, NotifyError> {
        let stored =
            self.inner.store.topic_listeners(topic, None, max.saturating_mul(2).saturating_add(1)).await?;
        let mut listeners = TopicListeners::default();
        for listener in stored {
            match listener.session {
                None if listeners.users.len() < max => listeners.users.push(listener.user),
                Some(session) if listeners.sessions.len() < max => {
                    listeners.sessions.push((listener.user, session))
                }
                _ => listeners.truncated = true,
            }
        }
        let (tabs, total) = self.inner.bus.topic_tabs(topic, max).await?;
        listeners.truncated |= total > tabs.len();
        listeners.tabs = tabs;
        let (heads, _) = self.inner.store.topic_heads(std::slice::from_ref(topic)).await?;
        listeners.last_tseq = heads.first().map_or(0, |head| head.last_tseq);
        Ok(listeners)
    }

    /// The users who follow `topic` (listen at user scope), read from the store in pages, if
    /// one publish takes them all: at most [`FOLLOWERS_PER_PUBLISH_MAX`], and their copies of
    /// `data_bytes` within the publish bound. `None`: more (a job does it).
    async fn followers(&self, topic: &Topic, data_bytes: usize) -> Result<Option<Vec<UserId>>, NotifyError> {
        const PAGE: usize = 1_000;
        let bytes_max = self.inner.hub.limits().publish_bytes_max;
        let max = FOLLOWERS_PER_PUBLISH_MAX.min(bytes_max / data_bytes.max(1));
        let mut users = Vec::new();
        let mut after = None;
        loop {
            let page = self.inner.store.topic_listeners(topic, after.as_ref(), PAGE).await?;
            let full = page.len() == PAGE;
            after = page.last().cloned();
            users.extend(page.into_iter().filter(|l| l.session.is_none()).map(|l| l.user));
            if users.len() > max {
                return Ok(None);
            }
            if !full {
                return Ok(Some(users));
            }
        }
    }

    // ---- fan-out jobs (see `crate::jobs`) ----

    /// Starts a job that stores `publish` in the inbox of every follower of `topic`, and answers
    /// with its id. A publish with an idempotency key names its job after the key, so a repeat
    /// answers the same job instead of starting another.
    async fn start_job(&self, topic: Topic, publish: Publish) -> Result<Receipt, NotifyError> {
        let id = match &publish.idempotency_key {
            Some(key) => job_id_of_key(key),
            None => crate::jobs::random_job_id(),
        };
        if self.inner.store.job(&id).await?.is_some() {
            return Ok(Receipt { job: Some(id), ..Receipt::default() });
        }
        if self.inner.store.unfinished_jobs(JOBS_UNFINISHED_MAX).await?.len() >= JOBS_UNFINISHED_MAX {
            return Err(NotifyError::TooManyJobs { max: JOBS_UNFINISHED_MAX });
        }
        let job = FanoutJob {
            id: id.clone(),
            topic,
            kind: publish.kind,
            data: publish.data,
            created_at_ms: now_ms(),
            except_user: publish.except_user,
            except_client: publish.except_client,
            cursor: None,
            stored: 0,
            finished_at_ms: None,
        };
        self.inner.store.save_job(&job).await?;
        self.spawn_job(job);
        Ok(Receipt { job: Some(id), ..Receipt::default() })
    }

    /// The job with this id, as the store has it (running, or finished within a day).
    pub async fn job(&self, id: &str) -> Result<Option<FanoutJob>, NotifyError> {
        Ok(self.inner.store.job(id).await?)
    }

    /// Runs again the jobs a stopped or crashed process left unfinished (call it once at start,
    /// on every node: a job run by two is still done once). Returns how many it started.
    pub async fn resume_jobs(&self) -> Result<usize, NotifyError> {
        let jobs = self.inner.store.unfinished_jobs(JOBS_UNFINISHED_MAX).await?;
        let count = jobs.len();
        for job in jobs {
            tracing::info!(job = %job.id, topic = %job.topic, stored = job.stored, "resuming a fan-out job");
            self.spawn_job(job);
        }
        Ok(count)
    }

    fn spawn_job(&self, job: FanoutJob) {
        if !self.inner.running_jobs.lock().insert(job.id.clone()) {
            return;
        }
        let notifier = self.clone();
        tokio::spawn(async move {
            let id = job.id.clone();
            notifier.run_job(job).await;
            notifier.inner.running_jobs.lock().remove(&id);
        });
    }

    /// Stores the job's chunks one after the other until every follower has it. A chunk that
    /// fails is tried again after a pause (1 s, doubling to 30 s), at most
    /// [`JOB_CHUNK_TRIES_MAX`] times in a row; then the job is left unfinished, for the next
    /// start to resume.
    async fn run_job(&self, mut job: FanoutJob) {
        let mut failures = 0u32;
        while !job.is_finished() {
            match self.run_chunk(&mut job).await {
                Ok(()) => failures = 0,
                Err(error) => {
                    failures += 1;
                    if failures >= JOB_CHUNK_TRIES_MAX {
                        tracing::error!(job = %job.id, %error, "a fan-out job keeps failing: left unfinished until the next start");
                        return;
                    }
                    let pause =
                        Duration::from_secs(1u64 << (failures - 1).min(5)).min(Duration::from_secs(30));
                    tracing::warn!(job = %job.id, %error, ?pause, "a chunk of a fan-out job failed; trying again");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        tracing::info!(job = %job.id, topic = %job.topic, stored = job.stored, "fan-out job finished");
    }

    /// Stores the next chunk of `job` (the followers after its cursor) under the chunk's key,
    /// hands it to the bus, and saves the job's new cursor (finished when none are left).
    async fn run_chunk(&self, job: &mut FanoutJob) -> Result<(), NotifyError> {
        const PAGE: usize = 1_000;
        let store = &self.inner.store;
        let bytes_max = self.inner.hub.limits().publish_bytes_max;
        let chunk_max = JOB_CHUNK_USERS_MAX.min(bytes_max / job.data.get().len().max(1)).max(1);
        let after = job.cursor.clone().map(|user| TopicListener { user, session: None });
        let page = store.topic_listeners(&job.topic, after.as_ref(), PAGE).await?;
        let mut users: Vec<UserId> = Vec::new();
        let mut last_read = None;
        let mut cut = false;
        for listener in &page {
            if users.len() == chunk_max {
                cut = true;
                break;
            }
            last_read = Some(listener.user.clone());
            if listener.session.is_none() && job.except_user.as_ref() != Some(&listener.user) {
                users.push(listener.user.clone());
            }
        }
        let done = !cut && page.len() < PAGE;
        if users.is_empty() {
            // Only session listeners, or the excepted user, in this page: move past them.
            if let Some(user) = last_read {
                job.cursor = Some(user);
            }
        } else {
            let created_at_ms = job.created_at_ms;
            let audience = Audience { except_client: job.except_client.clone(), ..Audience::user() };
            let entries: Vec<NewNotification> = users
                .iter()
                .map(|user| NewNotification {
                    user: user.clone(),
                    kind: job.kind.clone(),
                    data: job.data.clone(),
                    created_at_ms,
                    audience: audience.clone(),
                    // A followers' publish pushes to nobody (Web Push is not for broadcasts).
                    push: None,
                })
                .collect();
            let key = job.chunk_key();
            let last = users.last().cloned();
            match store.append(entries, Some(&key)).await? {
                Appended::Stored { notifications, counts, .. } => {
                    job.stored += notifications.len() as u64;
                    self.hand_over(notifications, counts).await?;
                    job.cursor = last;
                }
                // Stored before a crash (or by another node's runner): go on after the users it
                // stored, whatever the followers are now.
                Appended::Duplicate(receipt) => {
                    job.stored += receipt.notifications.len() as u64;
                    job.cursor = receipt.notifications.iter().map(|e| e.user.clone()).max().or(last);
                }
            }
        }
        if done {
            job.finished_at_ms = Some(now_ms());
        }
        store.save_job(job).await?;
        Ok(())
    }

    /// A listen or unlisten names 1 to [`crate::Limits::topics_per_client_max`] topics.
    fn check_listen(&self, topics: &[Topic]) -> Result<(), NotifyError> {
        let max = self.inner.hub.limits().topics_per_client_max;
        if topics.is_empty() {
            return Err(NotifyError::NoTopics);
        }
        if topics.len() > max {
            return Err(ListenError::TooManyTopics { count: topics.len(), max }.into());
        }
        Ok(())
    }

    /// Signs out one session of `user` (all sessions when `None`): revokes the tokens issued
    /// until now (see [`crate::revocation`]), then closes the clients connected now with reason
    /// `session_closed`. Returns how many connections of this node were closed.
    ///
    /// Revoked first: a client that connects in between is refused, or attached already and
    /// closed with the others.
    pub async fn close_sessions(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<u64, NotifyError> {
        let closed_at_secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
        self.inner.revocations.revoke(user, session, closed_at_secs).await?;
        let closed = self.inner.bus.close_sessions(user, session, CloseReason::SessionClosed).await?;
        // Session-scope listens end with their session.
        self.inner.store.forget_session_listens(user, session).await?;
        self.listens_changed(user).await;
        Ok(closed)
    }

    /// Who of `user` is connected, on every node.
    pub async fn presence(&self, user: &UserId) -> Result<Presence, NotifyError> {
        Ok(self.inner.bus.presence(user).await?)
    }

    async fn resolve(
        &self,
        target: &Target,
        except_client: Option<&ClientId>,
    ) -> Result<Vec<(UserId, Audience)>, NotifyError> {
        let audience = |session: Option<&SessionId>, client: Option<&ClientId>| Audience {
            session: session.cloned(),
            client: client.cloned(),
            except_client: except_client.cloned(),
        };
        Ok(match target {
            Target::User(user) => vec![(user.clone(), audience(None, None))],
            Target::Users(users) => {
                debug_assert!(!users.is_empty(), "publish checks the users' count before it resolves them");
                // Duplicates are ignored, first occurrence kept (a linear `contains` would be
                // quadratic at the 1,000-user bound).
                let mut seen = std::collections::HashSet::with_capacity(users.len());
                users
                    .iter()
                    .filter(|user| seen.insert(*user))
                    .map(|user| (user.clone(), audience(None, None)))
                    .collect()
            }
            Target::Session(user, session) => vec![(user.clone(), audience(Some(session), None))],
            Target::Topic(_) => unreachable!("a topic publish has no users to resolve"),
            Target::Followers(_) => unreachable!("publish resolves followers itself"),
            Target::Client(client) => {
                // On any node: the bus asks the others when this one does not know the client.
                let (user, session) = self
                    .inner
                    .bus
                    .locate(client)
                    .await?
                    .ok_or_else(|| NotifyError::ClientNotFound(client.clone()))?;
                vec![(user, audience(Some(&session), Some(client)))]
            }
        })
    }
}
