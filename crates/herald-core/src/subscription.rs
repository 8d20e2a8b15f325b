//! [`Subscription`]: one client's exact stream of events, whatever the transport.
//!
//! The hand-over from stored notifications to live ones is race-free because the order is:
//! 1. read the user's [`LogHead`] (to check the resume point),
//! 2. attach to the hub, so every live notification from now on lands in the client's queue,
//! 3. replay from the store everything after the resume point,
//! 4. take live notifications from the queue, dropping those whose seq was already handled.
//!
//! The subscription keeps `position`: every durable seq up to it has been handled (given to the
//! client, or skipped because it was for another session or client). A live seq beyond
//! `position + 1` means notifications were fanned out in another order than their seqs
//! (concurrent publishes, or several nodes): the subscription fills the gap from the store,
//! where every lower seq is already visible (see the [`Store`] contract). So a client sees each
//! durable notification meant for it exactly once and in seq order.
//!
//! A resume point is a seq of an [`Epoch`]: the client gives back the epoch its `hello` named.
//! One of another epoch than the head's is a seq of another history (a restored database, a
//! failover, a restarted memory store): the stream starts from the head as a new one would, with
//! a `reset` after `hello`, and is never judged by that seq (nor refused when it is ahead of the
//! log). A resume point without an epoch is taken as one of the current epoch (older clients).
//! Should a replay page come from another epoch than the stream's (the store failed over while
//! it ran), the stream ends with `closed: error`, and the client's resume gets its `reset`.
//!
//! **Durable topics** follow the same rules, one sequence (tseq) per topic: the subscription
//! keeps each listened topic's position, reads the topics' heads after attaching (so that what
//! is published from then on reaches the queue), replays each topic's log after the position
//! the client gave back, drops live events at or below a position, and fills a gap from the
//! topic's log. A topic's position older than what its log retains (or of another epoch) gets a
//! `topic_reset` for that topic alone. One id names every position ([`ResumePoint`]), so that a
//! browser's automatic reconnect resumes the topics exactly too. A topic listened to while the
//! stream is open starts at its first durable event the stream gets.
//!
//! [`poll`] builds one long-poll answer on the same machinery.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt;
use tokio::time::Instant;

use crate::client::{ClientInfo, CloseReason, Transport};
use crate::hub::ListenError;
use crate::hub::{Attachment, ClientShared, Hub};
use crate::ids::{ClientId, Seq, SessionId, Topic, UserId};
use crate::inbox::InboxEvent;
use crate::notification::Notification;
use crate::queue::Received;
use crate::resume::write_resume_id;
pub use crate::resume::{InvalidResumePoint, ResumePoint};

mod positions;
use crate::store::{Epoch, LogHead, Store, StoreError};
use crate::topic::TopicEvent;
use positions::{TopicPosition, TopicPositions, wants_type};

/// Most `type` prefixes one tab filters its topic events with.
pub const TYPE_PREFIXES_MAX: usize = 16;

/// Most notifications in one long-poll answer (Eliom's comet answers hold at most 100 too), and
/// most topic events: an answer ends at either bound, and the next poll goes on from there.
pub const POLL_NOTIFICATIONS_MAX: usize = 100;

/// What a transport sends to a client, in order.
#[derive(Debug, Clone)]
pub enum ClientEvent {
    /// First event: who the client is. `last_seq` is the user's last seq when it attached;
    /// `position` is where this stream starts (the resume point, or `last_seq` for a new one or
    /// one resumed from another epoch); `epoch` is the epoch of both, which the client gives back
    /// with its resume point.
    /// `topics`: those the tab listens to; `positions`: where the stream starts in each of them
    /// (the last tseq handled: the resume point's, or the topic's last tseq).
    Hello {
        info: ClientInfo,
        last_seq: Seq,
        position: Seq,
        epoch: Epoch,
        topics: Box<[Topic]>,
        positions: Box<[(Topic, Seq)]>,
    },
    /// A notification for this client, durable (in seq order, once) or ephemeral.
    Notification(Arc<Notification>),
    /// A change of the user's inbox (ephemeral: only while connected, never replayed).
    Inbox(Arc<InboxEvent>),
    /// An event of a topic the tab listens to: a durable one (with its `tseq`) once and in tseq
    /// order per topic, an ephemeral one only while connected.
    Topic(Arc<TopicEvent>),
    /// The position given for `topic` is older than what its log retains (or of another
    /// epoch): its events were lost to this client. The topic goes on after `last_tseq`.
    TopicReset { topic: Topic, last_tseq: Seq },
    /// The resume point is older than what is retained, or of another epoch: notifications were
    /// lost to this client, which should reload its state. The stream goes on after `last_seq`.
    Reset { last_seq: Seq },
    /// Nothing happened for a keep-alive period (see [`Hub::tick`]): the transport shows the
    /// connection is alive (an SSE comment, a WebSocket ping) or ignores it.
    KeepAlive,
    /// The last event: the server ends the stream.
    Closed(CloseReason),
}

/// Why a subscription could not start. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error("cannot resume after seq {requested}: the user's last seq is {last_seq}")]
    ResumeAhead { requested: Seq, last_seq: Seq },
    /// The topics asked for would take the tab over its bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One client's stream of [`ClientEvent`]s. Dropping it detaches the client from the hub.
pub struct Subscription {
    hub: Hub,
    store: Arc<dyn Store>,
    /// The client's connection state, who it is (`shared.info`) included.
    shared: Arc<ClientShared>,
    attachment: u64,
    /// The epoch of `position` and of every seq handed out (see the module docs).
    epoch: Epoch,
    /// Every durable seq up to here has been handled (queued in `pending` or skipped).
    position: Seq,
    /// Events decided but not yet taken by `next`. Bounded by one replay page plus the
    /// `hello`, `reset` and one `topic_reset` per topic.
    pending: VecDeque<ClientEvent>,
    /// Positions in the tab's durable topics, and its `type` filter; `None` while it has neither
    /// (most tabs: no allocation).
    topics: Option<TopicPositions>,
    /// Whether the store may hold seqs after `position` that were not yet read.
    replaying: bool,
    finished: bool,
    /// Set by [`poll`] when its answer left nothing undecided (caught up): the client's entry is
    /// then parked in the hub when this subscription ends, for the next poll to resume.
    park: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("info", &self.shared.info)
            .field("position", &self.position)
            .finish()
    }
}

/// [`Subscription::next_before`] reached its deadline with nothing to hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// Tells when the hub ended a client (evicted, replaced, lagging, session closed, token
/// expired, shutdown), whatever its connection is doing; see [`Subscription::end_signal`]. One
/// task at a time may wait on it.
#[derive(Clone)]
pub struct EndSignal {
    shared: Arc<ClientShared>,
}

impl std::fmt::Debug for EndSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndSignal").field("reason", &self.shared.close_reason()).finish()
    }
}

impl EndSignal {
    /// `Ready(reason)` once the hub ended the client; else `Pending`, and the task is woken
    /// when it does.
    pub fn poll_ended(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<CloseReason> {
        match self.shared.queue.poll_closed(cx) {
            // The reason is recorded before the queue is closed (a queue closed for no reason
            // is a hub that went away: a shutdown).
            std::task::Poll::Ready(()) => {
                std::task::Poll::Ready(self.shared.close_reason().unwrap_or(CloseReason::Shutdown))
            }
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    /// Why the hub ended the client, if it did.
    pub fn reason(&self) -> Option<CloseReason> {
        self.shared.close_reason()
    }

    /// Waits until the hub ends the client.
    pub async fn ended(&self) -> CloseReason {
        std::future::poll_fn(|cx| self.poll_ended(cx)).await
    }
}

/// Where a new subscription starts and who it is for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest<'a> {
    pub user: &'a UserId,
    pub session: &'a SessionId,
    /// The client id the client gives back (`?client=`), if any.
    pub client: Option<&'a str>,
    pub transport: Transport,
    /// The last seq the client saw; `None` starts at the user's current last seq.
    pub resume_after: Option<Seq>,
    /// The epoch of `resume_after` (the one its `hello` named); `None`: the current one.
    pub epoch: Option<&'a str>,
    /// The last tseq the client handled in each durable topic (the rest of its
    /// [`ResumePoint`]). A topic the tab listens to that is not named starts at its last tseq.
    pub topic_positions: &'a [(Topic, Seq)],
    /// Prefixes of `type`: when not empty, the tab gets only the topic events whose type starts
    /// with one of them (notifications are not filtered). See [`TYPE_PREFIXES_MAX`].
    pub types: &'a [Box<str>],
    /// Topics the tab listens to from now on (client scope), besides those it listened to.
    pub topics: &'a [Topic],
}

impl Subscription {
    /// Attaches a client and prepares its stream: `hello`, then `reset` if its resume point is
    /// no longer retained (or of another epoch), then every retained notification after it, then
    /// live ones.
    pub async fn open(
        hub: &Hub,
        store: &Arc<dyn Store>,
        request: SubscribeRequest<'_>,
    ) -> Result<Self, SubscribeError> {
        let head = store.head(request.user).await?;
        // A seq of another epoch says nothing about this log: start from its head, with a reset.
        let other_epoch = request.resume_after.is_some() && request.epoch.is_some_and(|e| *e != *head.epoch);
        let resume_after = request.resume_after.filter(|_| !other_epoch);
        if let Some(requested) = resume_after
            && requested > head.last_seq
        {
            return Err(SubscribeError::ResumeAhead { requested, last_seq: head.last_seq });
        }
        let Attachment { shared, attachment, topics } =
            hub.attach(request.user, request.session, request.client, request.transport, request.topics)?;
        let mut subscription = Self {
            hub: hub.clone(),
            store: store.clone(),
            shared,
            attachment,
            epoch: head.epoch.clone(),
            position: 0,
            pending: VecDeque::new(),
            topics: TopicPositions::filtering(request.types),
            replaying: true,
            finished: false,
            park: false,
        };
        // Heard of by the other nodes before the replay's first read (on the first `next`):
        // whatever is stored after that read then reaches the queue, from this node or another,
        // and whatever was stored before it is in the read. (The head above only places the
        // start; a refused request has touched nothing.) Awaited once the subscription exists,
        // so that a caller that gives up meanwhile detaches it by dropping it.
        hub.interest_ready(request.user).await;
        // The same for the user's listens kept in the store: read once the other nodes' news
        // of a change reaches this node, so a change is in this read or applied after it.
        let topics = match crate::bus::reload_listens(hub, store.as_ref(), request.user).await? {
            Some(_) => hub.topics_of(&subscription.shared.info).unwrap_or_default().into_boxed_slice(),
            None => topics,
        };
        hub.topics_ready(&topics).await;
        // Read after the tab listens (here and on the other nodes): a durable event stored
        // after this read reaches the queue, one stored before it is at or below its head.
        let topic_heads = if topics.is_empty() { None } else { Some(store.topic_heads(&topics).await?) };
        subscription.start(head, resume_after, other_epoch, topics);
        if let Some((heads, epoch)) = topic_heads {
            let resumable = !other_epoch && epoch == subscription.epoch;
            subscription.start_topics(&heads, request.topic_positions, resumable);
        }
        Ok(subscription)
    }

    /// A poller's next poll, if its client is parked in the hub with the queue its last poll left
    /// at `request.resume_after` (see [`Hub::resume_parked`]): the stream goes on from the queue,
    /// with no `hello` and no store read. `None`: open a new subscription instead (also when the
    /// poll names another epoch than the store's: opening judges it by the head).
    fn resume_parked(hub: &Hub, store: &Arc<dyn Store>, request: &SubscribeRequest<'_>) -> Option<Self> {
        let (Transport::Poll, Some(client), Some(after)) =
            (request.transport, request.client, request.resume_after)
        else {
            return None;
        };
        let epoch = store.epoch();
        if request.epoch.is_some_and(|e| *e != *epoch) {
            return None;
        }
        let Attachment { shared, attachment, topics: _ } =
            hub.resume_parked(request.user, request.session, client, after)?;
        Some(Self {
            hub: hub.clone(),
            store: store.clone(),
            shared,
            attachment,
            epoch,
            position: after,
            pending: VecDeque::new(),
            // The client's positions, as its last answer gave them: the queue holds what was
            // fanned out since.
            topics: {
                let mut topics = TopicPositions::filtering(request.types);
                for (topic, tseq) in request.topic_positions {
                    topics.get_or_insert_default().start(topic.clone(), *tseq);
                }
                topics
            },
            // Everything fanned out since `after` is in the queue; a gap there (publishes fanned
            // out of seq order, a poll capped at its maximum) is filled from the store as usual.
            replaying: false,
            finished: false,
            park: false,
        })
    }

    /// `hello`, then `reset` if `resume_after` is older than what is retained or `other_epoch`
    /// (the client's resume point, of another epoch, was dropped: `resume_after` is `None`).
    fn start(&mut self, head: LogHead, resume_after: Option<Seq>, other_epoch: bool, topics: Box<[Topic]>) {
        let position = resume_after.unwrap_or(head.last_seq);
        debug_assert!(position <= head.last_seq, "open refuses a resume point beyond the log");
        self.pending.push_back(ClientEvent::Hello {
            info: self.shared.info.clone(),
            last_seq: head.last_seq,
            position,
            epoch: head.epoch,
            topics,
            positions: Box::default(),
        });
        self.position = position;
        // The client's own position until the `reset` is handed out (see `finish`).
        self.shared.last_seq.store(position, Ordering::Relaxed);
        let reset = other_epoch || position < head.pruned_through;
        if resume_after.is_some() || other_epoch {
            self.hub.metrics().resumed(reset);
        }
        if reset {
            self.pending.push_back(ClientEvent::Reset { last_seq: head.last_seq });
            self.position = head.last_seq;
        }
    }

    /// Places the stream in each topic of its `hello` (`heads` in the same order): at the
    /// position the client gave if `resumable` and its log still holds what follows it (then
    /// the topic is read from there), else at the topic's last tseq, with a `topic_reset` when
    /// a position given was lost (pruned, of another epoch, or beyond the log).
    fn start_topics(&mut self, heads: &[crate::store::TopicHead], given: &[(Topic, Seq)], resumable: bool) {
        let Some(ClientEvent::Hello { topics, positions, .. }) = self.pending.front_mut() else {
            unreachable!("start queues hello first")
        };
        let mut state = self.topics.take().unwrap_or_default();
        let mut resets = Vec::new();
        for (topic, head) in topics.iter().zip(heads) {
            let asked = given.iter().find(|(t, _)| t == topic).map(|&(_, tseq)| tseq);
            let start = match asked {
                Some(tseq) if resumable && tseq <= head.last_tseq && tseq >= head.pruned_through => {
                    if tseq < head.last_tseq {
                        state.mark_behind(topic);
                    }
                    tseq
                }
                Some(given) => {
                    // Read from the log's head on; the resume id keeps the client's position
                    // until the `topic_reset` is handed out.
                    resets.push(ClientEvent::TopicReset { topic: topic.clone(), last_tseq: head.last_tseq });
                    state.insert(topic.clone(), TopicPosition { accepted: head.last_tseq, given });
                    continue;
                }
                None => head.last_tseq,
            };
            state.start(topic.clone(), start);
        }
        *positions = state.given().map(|(t, tseq)| (t.clone(), tseq)).collect();
        // After `hello` and the user's `reset`, before anything replayed.
        self.pending.extend(resets);
        self.topics = Some(state);
    }

    pub fn info(&self) -> &ClientInfo {
        &self.shared.info
    }

    /// The stream's resume id as of the last event handed out: the last seq alone while the
    /// tab has no topic positions (`None`: write the seq as it is), else the seq followed by
    /// each topic's position (see [`ResumePoint`]).
    pub fn resume_id(&self) -> Option<String> {
        let topics = self.topics.as_ref()?;
        let mut id = String::with_capacity(16 + 24 * topics.positions.len());
        let seq = self.shared.last_seq.load(Ordering::Relaxed);
        write_resume_id(&mut id, seq, topics.given());
        Some(id)
    }

    /// Each durable topic's position as of the last event handed out (the last tseq handled).
    pub fn topic_positions(&self) -> Vec<(Topic, Seq)> {
        self.topics.as_ref().map_or_else(Vec::new, |t| t.given().map(|(t, tseq)| (t.clone(), tseq)).collect())
    }

    /// The epoch of this stream's seqs (its `hello`'s).
    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Every durable seq up to this one has been handed out by `next` or skipped.
    pub fn position(&self) -> Seq {
        if self.pending.is_empty() {
            self.position
        } else {
            // Some of the handled seqs are still waiting in `pending`: report the last one given out.
            self.shared.last_seq.load(Ordering::Relaxed)
        }
    }

    /// Whether everything stored so far was handed out (no replay or gap fill in progress).
    pub fn is_caught_up(&self) -> bool {
        !self.replaying
            && self.pending.is_empty()
            && self.topics.as_ref().is_none_or(|t| t.behind().is_empty())
    }

    /// Makes this client follow its user's inbox counts: from now on it also gets an `inbox`
    /// event (op `append`, with the new counts) after every durable notification of its user,
    /// including ones meant for other sessions or clients. Call it before handing out the first
    /// event, so that counts read after `hello` miss nothing.
    pub fn follow_inbox(&self) {
        self.hub.follow_inbox(&self.shared.info, self.attachment);
    }

    /// Makes the hub close this stream with `token_expired` at `unix_secs` (see [`Hub::tick`]).
    pub fn expire_at(&self, unix_secs: u64) {
        self.shared.expire_at(unix_secs);
    }

    /// Ends the stream with `reason`: the next call to [`Subscription::next`] returns
    /// `Closed(reason)` (unless another reason came first).
    pub fn close(&mut self, reason: CloseReason) {
        self.shared.close(reason);
    }

    /// The next event, waiting for one if needed. After `Closed`, returns `None`.
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> Option<ClientEvent> {
        match self.next_before(None).await {
            Ok(event) => event,
            Err(Elapsed) => unreachable!("no deadline, no timeout"),
        }
    }

    /// Like [`Subscription::next`], but waits for a live event only until `deadline` (a past
    /// deadline takes only what is queued already): `Err(Elapsed)` then. The deadline never
    /// cuts a store read short (replay, gap fill): what the store holds for the client is
    /// always handed out, however short the wait. Cancel-safe.
    pub async fn next_before(&mut self, deadline: Option<Instant>) -> Result<Option<ClientEvent>, Elapsed> {
        loop {
            if self.finished {
                return Ok(None);
            }
            // Before anything pending: a client ended by the hub gets `closed` next, and what
            // was waiting for it (a replay page) is freed now rather than sent first.
            if let Some(reason) = self.shared.close_reason() {
                return Ok(Some(self.finish(reason)));
            }
            if let Some(event) = self.pending.pop_front() {
                if self.pending.is_empty() {
                    // An idle subscription keeps no buffer: a replay page must not stay allocated
                    // for the life of the connection.
                    self.pending = VecDeque::new();
                }
                if let ClientEvent::Notification(_) | ClientEvent::Topic(_) = &event {
                    self.hub.metrics().delivered(self.shared.info.transport);
                }
                match &event {
                    ClientEvent::Notification(n) if let Some(seq) = n.seq => {
                        self.shared.last_seq.store(seq, Ordering::Relaxed);
                    }
                    ClientEvent::Reset { last_seq } => {
                        self.shared.last_seq.store(*last_seq, Ordering::Relaxed)
                    }
                    ClientEvent::Topic(event) if let Some(tseq) = event.tseq => {
                        self.give_topic(&event.topic, tseq)
                    }
                    ClientEvent::TopicReset { topic, last_tseq } => self.reset_topic(topic, *last_tseq),
                    _ => {}
                }
                return Ok(Some(event));
            }
            if self.replaying {
                // Boxed, as the other rare waits below (a topic's page, a long-poll's deadline):
                // a future is as large as its largest state, and every idle stream's task holds
                // this one, waiting on its queue. Inline, these states made an idle SSE tab's
                // task 96 bytes larger, and its memory one allocation size class larger (about
                // 0.15 KiB of RSS per idle tab, docs/BENCHMARKS.md); boxed, they cost one
                // allocation per replay page, gap fill or long-poll wait.
                match Box::pin(self.read_page()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // The log is another history now (a failover): its seqs are not this
                        // stream's. The client's resume, with this stream's epoch, gets a reset.
                        tracing::warn!(user = %self.shared.info.user, epoch = %self.epoch, "the store's epoch changed under a subscription; ending it");
                        return Ok(Some(self.finish(CloseReason::Error)));
                    }
                    Err(error) => {
                        tracing::warn!(%error, user = %self.shared.info.user, "cannot read the log for a subscription");
                        return Ok(Some(self.finish(CloseReason::Error)));
                    }
                }
                continue;
            }
            if let Some(topic) = self.topics.as_ref().and_then(|t| t.behind().first().cloned()) {
                match Box::pin(self.read_topic_page(&topic)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(user = %self.shared.info.user, epoch = %self.epoch, "the store's epoch changed under a subscription; ending it");
                        return Ok(Some(self.finish(CloseReason::Error)));
                    }
                    Err(error) => {
                        tracing::warn!(%error, user = %self.shared.info.user, %topic, "cannot read a topic's log for a subscription");
                        return Ok(Some(self.finish(CloseReason::Error)));
                    }
                }
                continue;
            }
            let received = match deadline {
                None => self.shared.queue.recv().await,
                // Not a timer: one that is already due fires at the time driver's next tick, a
                // millisecond later, which every `timeout=0` poll would wait for.
                Some(deadline) if deadline <= Instant::now() => {
                    self.shared.queue.recv().now_or_never().ok_or(Elapsed)?
                }
                Some(deadline) => Box::pin(tokio::time::timeout_at(deadline, self.shared.queue.recv()))
                    .await
                    .map_err(|_| Elapsed)?,
            };
            match received {
                Some(Received::Notification(notification)) => self.accept_live(notification),
                Some(Received::Inbox(event)) => return Ok(Some(ClientEvent::Inbox(event))),
                Some(Received::Topic(event)) => {
                    if let Some(event) = self.accept_live_topic(event) {
                        if let Some(tseq) = event.tseq {
                            self.give_topic(&event.topic, tseq);
                        }
                        self.hub.metrics().delivered(self.shared.info.transport);
                        return Ok(Some(ClientEvent::Topic(event)));
                    }
                }
                Some(Received::KeepAlive) => return Ok(Some(ClientEvent::KeepAlive)),
                None => {
                    let reason = self.shared.close_reason().unwrap_or(CloseReason::Shutdown);
                    return Ok(Some(self.finish(reason)));
                }
            }
        }
    }

    /// A handle that tells when the hub ends this client, usable while this subscription is
    /// busy elsewhere (its connection stuck writing to a peer that does not read).
    pub fn end_signal(&self) -> EndSignal {
        EndSignal { shared: self.shared.clone() }
    }

    fn finish(&mut self, reason: CloseReason) -> ClientEvent {
        self.finished = true;
        self.hub.metrics().closed(reason);
        if !self.pending.is_empty() {
            // What waits here (a replay page, a `reset`) is dropped, never handed out: the
            // position goes back to what was, so that a poll answers the `last_seq` its client
            // must resume from (a stream's client resumes from the seqs it got anyway).
            self.position = self.shared.last_seq.load(Ordering::Relaxed);
            self.pending.clear();
        }
        self.hub.detach(&self.shared.info, self.attachment, false);
        ClientEvent::Closed(reason)
    }

    fn accept_live(&mut self, notification: Arc<Notification>) {
        let Some(seq) = notification.seq else {
            // Ephemeral: the hub only queues it for clients it includes.
            self.hub.metrics().publish_to_write(notification.made_at.elapsed());
            self.pending.push_back(ClientEvent::Notification(notification));
            return;
        };
        if seq <= self.position {
            return; // Replay or gap filling handed it out already.
        }
        if seq > self.position + 1 {
            self.replaying = true; // A gap: the store has the missing seqs.
            return;
        }
        self.position = seq;
        if self.is_for_me(&notification) {
            // Handed out next (nothing waits in `pending` while live events are taken): the
            // transport writes it now. One clock read per live delivery (see `metrics`).
            self.hub.metrics().publish_to_write(notification.made_at.elapsed());
            self.pending.push_back(ClientEvent::Notification(notification));
        } else {
            self.shared.last_seq.store(seq, Ordering::Relaxed);
        }
    }

    /// A live topic event: an ephemeral one as it is; a durable one once, in tseq order (one
    /// beyond the next tseq means a gap, filled from the topic's log). `None`: not handed out.
    fn accept_live_topic(&mut self, event: Arc<TopicEvent>) -> Option<Arc<TopicEvent>> {
        let wanted = self.wants(&event);
        let Some(tseq) = event.tseq else { return wanted.then_some(event) };
        let topics = self.topics.get_or_insert_default();
        let behind = topics.behind().contains(&event.topic);
        let Some(position) = topics.get_mut(&event.topic) else {
            // Listened to after the stream opened: it starts here.
            topics.insert(event.topic.clone(), TopicPosition { accepted: tseq, given: tseq - 1 });
            return wanted.then_some(event);
        };
        if tseq <= position.accepted || behind {
            // Handed out already, or the log is being read past it.
            return None;
        }
        if tseq > position.accepted + 1 {
            topics.mark_behind(&event.topic);
            return None;
        }
        position.accepted = tseq;
        if !wanted {
            // Filtered out: handled all the same (nothing is pending when live events are taken).
            position.given = tseq;
            return None;
        }
        Some(event)
    }

    /// Whether the tab's `type` filter lets `event` through.
    fn wants(&self, event: &TopicEvent) -> bool {
        self.topics.as_ref().is_none_or(|topics| topics.wants(event))
    }

    /// Reads the next page of `topic`'s log after its position into `pending`. `Ok(false)`,
    /// with nothing taken: the page is of another epoch than this stream's.
    async fn read_topic_page(&mut self, topic: &Topic) -> Result<bool, StoreError> {
        let page_len = self.hub.limits().replay_page_len;
        let Some(after) = self.topics.as_mut().and_then(|t| t.get_mut(topic)).map(|p| p.accepted) else {
            return Ok(true);
        };
        let page = self.store.read_topic_after(topic, after, page_len).await?;
        if page.epoch != self.epoch {
            return Ok(false);
        }
        let topics = self.topics.as_mut().expect("a topic behind has positions");
        if page.events.len() < page_len {
            topics.caught_up(topic);
        }
        if after < page.head.pruned_through {
            // Retention passed the position while the stream was behind: lost, and said so.
            topics.get_mut(topic).expect("read from its position").accepted = page.head.last_tseq;
            topics.caught_up(topic);
            self.pending
                .push_back(ClientEvent::TopicReset { topic: topic.clone(), last_tseq: page.head.last_tseq });
            return Ok(true);
        }
        // The filter and the position, borrowed apart (two fields).
        let types: &[Box<str>] = topics.more.as_ref().map_or(&[], |more| &more.types);
        let at = topics.positions.binary_search_by(|(t, _)| t.cmp(topic)).expect("read from its position");
        let position = &mut topics.positions[at].1;
        for event in page.events {
            let Some(tseq) = event.tseq else { continue };
            if tseq <= position.accepted {
                continue;
            }
            position.accepted = tseq;
            if event.is_for(&self.shared.info.user, &self.shared.info.client)
                && wants_type(types, &event)
                && let Some(event) = self.hub.prepare_for(&self.shared.info.user, &event)
            {
                self.pending.push_back(ClientEvent::Topic(event));
            } else if !self.pending.iter().any(|e| matches!(e, ClientEvent::Topic(e) if e.topic == *topic)) {
                position.given = tseq;
            }
        }
        Ok(true)
    }

    /// A `topic_reset` was handed out: the topic goes on after `last_tseq` (which may be lower
    /// than the position the client had, after an epoch change).
    fn reset_topic(&mut self, topic: &Topic, last_tseq: Seq) {
        let topics = self.topics.get_or_insert_default();
        match topics.get_mut(topic) {
            Some(position) => position.given = last_tseq,
            None => topics.start(topic.clone(), last_tseq),
        }
    }

    /// `tseq` of `topic` was handed out: the resume id names it from now on.
    fn give_topic(&mut self, topic: &Topic, tseq: Seq) {
        let topics = self.topics.get_or_insert_default();
        match topics.get_mut(topic) {
            Some(position) => position.given = position.given.max(tseq),
            None => topics.start(topic.clone(), tseq),
        }
    }

    /// Reads the next page of the log into `pending`. `Ok(false)`, with nothing taken: the page
    /// is of another epoch than this stream's.
    async fn read_page(&mut self) -> Result<bool, StoreError> {
        let page_len = self.hub.limits().replay_page_len;
        let page = self.store.read_after(&self.shared.info.user, self.position, page_len).await?;
        if page.head.epoch != self.epoch {
            return Ok(false);
        }
        if page.notifications.len() < page_len {
            self.replaying = false;
        }
        for notification in page.notifications {
            let Some(seq) = notification.seq else { continue };
            if seq <= self.position {
                continue;
            }
            self.position = seq;
            if self.is_for_me(&notification) {
                self.pending.push_back(ClientEvent::Notification(notification));
            }
        }
        if self.pending.is_empty() {
            self.shared.last_seq.store(self.position, Ordering::Relaxed);
        }
        Ok(true)
    }

    fn is_for_me(&self, notification: &Notification) -> bool {
        notification.audience.includes(&self.shared.info.session, &self.shared.info.client)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.finished {
            self.hub.detach(&self.shared.info, self.attachment, self.park);
        }
    }
}

/// One long-poll answer.
#[derive(Debug, Clone)]
pub struct PollAnswer {
    pub client: ClientId,
    /// At most [`POLL_NOTIFICATIONS_MAX`], durable ones in seq order.
    pub notifications: Vec<Arc<Notification>>,
    /// `inbox` events that arrived while the poll was open (ephemeral, like notifications).
    pub inbox: Vec<Arc<InboxEvent>>,
    /// `topic` events that arrived while the poll was open (or since the last poll, parked).
    pub topic: Vec<Arc<TopicEvent>>,
    /// The topics the tab listens to.
    pub topics: Vec<Topic>,
    /// Each durable topic's position after this answer: poll next with them (`positions=`).
    pub positions: Vec<(Topic, Seq)>,
    /// Topics whose position given was lost (see [`ClientEvent::TopicReset`]), each with the
    /// last tseq the topic goes on after.
    pub topic_resets: Vec<(Topic, Seq)>,
    /// Poll next with `after` = this.
    pub last_seq: Seq,
    /// The epoch of `last_seq`: poll next with it.
    pub epoch: Epoch,
    /// The `after` given is older than what is retained, or of another epoch: the client should
    /// reload its state.
    pub reset: bool,
    /// The server ended this client (evicted, replaced, …).
    pub closed: Option<CloseReason>,
}

/// Answers one long-poll: at once when anything after `request.resume_after` is retained for
/// this client, else after the first live notification or `timeout`, with an empty list.
/// The same request repeated gets the same durable notifications, so retrying is safe.
///
/// A poll that resumes where the client's last one ended (same client, `resume_after` = its
/// `last_seq`) takes back the client's queue, parked in the hub since (see
/// `Hub::resume_parked`): no store read, and the ephemeral notifications and `inbox` events that
/// came between the two polls are in the answer. Any other poll starts afresh from the store.
///
/// `known_inbox_version`: the version of the user's inbox counts the client holds. If the
/// store's are newer, the poll answers at once too: an `inbox` event that came while the client
/// was between two polls is lost to it (events are not stored), and without this its next poll
/// would wait for the timeout before the caller could send it the counts. The counts are read
/// after the client is attached, so a change is either in them or in the poll's events.
pub async fn poll(
    hub: &Hub,
    store: &Arc<dyn Store>,
    request: SubscribeRequest<'_>,
    timeout: Duration,
    known_inbox_version: Option<u64>,
) -> Result<PollAnswer, SubscribeError> {
    let deadline = Instant::now() + timeout;
    let user = request.user;
    let (mut subscription, mut start, inbox_changed) = match Subscription::resume_parked(hub, store, &request)
    {
        // Its queue kept the `inbox` events since the last poll: they come in this answer.
        Some(subscription) => {
            // A poll names the tab's topics each time (`?topics=`): those new since the last
            // poll are listened to now.
            if !request.topics.is_empty() {
                let info = subscription.info();
                hub.listen(&info.user, &info.session, &info.client, request.topics)?;
            }
            let position = subscription.position;
            (subscription, Some(position), false)
        }
        None => {
            let subscription = Subscription::open(hub, store, request).await?;
            let inbox_changed = match known_inbox_version {
                Some(known) => store.inbox_counts(user).await?.version > known,
                None => false,
            };
            (subscription, None, inbox_changed)
        }
    };
    let mut notifications: Vec<Arc<Notification>> = Vec::new();
    let mut inbox: Vec<Arc<InboxEvent>> = Vec::new();
    let mut topic: Vec<Arc<TopicEvent>> = Vec::new();
    let mut topic_resets: Vec<(Topic, Seq)> = Vec::new();
    let mut reset = false;
    let mut closed = None;
    // Once there is something to answer: take only what is already waiting.
    let mut draining = false;
    while notifications.len() < POLL_NOTIFICATIONS_MAX && topic.len() < POLL_NOTIFICATIONS_MAX {
        let anything = !notifications.is_empty()
            || !inbox.is_empty()
            || !topic.is_empty()
            || inbox_changed
            || reset
            || !topic_resets.is_empty()
            || start.is_some_and(|s| subscription.position() > s);
        // Answer as soon as there is something and nothing decided is left to hand out. Not
        // `is_caught_up()`: after a `reset` (or a page of other clients' seqs) the subscription is
        // still `replaying`, and `next()` would read an empty page and then wait for a live one
        // until the timeout. What the store holds beyond `position` comes with the next poll.
        // Without a replay in progress, what is already in the queue comes along (`next()` then
        // only takes from the queue): an answer holds everything that was waiting for it.
        if subscription.pending.is_empty() && anything {
            if subscription.replaying {
                break;
            }
            draining = true;
        }
        // Draining: only what is already waiting. Either way the deadline only bounds the wait
        // for live events, never a store read in flight (`timeout=0` answers what is retained).
        let wait_until = if draining { Instant::now() } else { deadline };
        let Ok(event) = subscription.next_before(Some(wait_until)).await else { break };
        match event {
            Some(ClientEvent::Hello { position, .. }) => start = Some(position),
            Some(ClientEvent::Reset { .. }) => reset = true,
            Some(ClientEvent::Notification(n)) => notifications.push(n),
            // Bounded by the client's queue, like the notifications taken live.
            Some(ClientEvent::Inbox(event)) => inbox.push(event),
            Some(ClientEvent::Topic(event)) => topic.push(event),
            Some(ClientEvent::TopicReset { topic, last_tseq }) => topic_resets.push((topic, last_tseq)),
            Some(ClientEvent::KeepAlive) => {}
            Some(ClientEvent::Closed(reason)) => {
                closed = Some(reason);
                break;
            }
            None => break,
        }
    }
    let last_seq = if notifications.len() == POLL_NOTIFICATIONS_MAX {
        notifications.iter().rev().find_map(|n| n.seq).unwrap_or(subscription.position())
    } else {
        subscription.position()
    };
    // The client has handled everything up to `last_seq`. If nothing is left undecided (no
    // replay page or gap fill in progress, nothing taken from the queue but not answered), the
    // queue alone holds what comes next: park it for the next poll (see `Hub::resume_parked`).
    // Otherwise the next poll starts afresh, from the store.
    subscription.shared.last_seq.store(last_seq, Ordering::Relaxed);
    subscription.park = subscription.is_caught_up() && last_seq == subscription.position;
    let client = subscription.info().client.clone();
    let epoch = subscription.epoch.clone();
    let topics = subscription.hub.topics_of(subscription.info()).unwrap_or_default();
    let positions = subscription.topic_positions();
    Ok(PollAnswer {
        client,
        notifications,
        inbox,
        topic,
        topics,
        positions,
        topic_resets,
        last_seq,
        epoch,
        reset,
        closed,
    })
}
