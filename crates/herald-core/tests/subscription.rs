//! [`Subscription`] over a real store (`herald_store::MemoryStore`), without HTTP: the hand-over
//! from replay to live events (attach first, then replay, then drop what was handled), filling
//! a gap in live seqs from the store, and a `reset` for a resume point older than retention.
//!
//! The races are made to happen on purpose: a store wrapper publishes (or closes every client)
//! while the subscription reads it. Time is paused, so "nothing more comes" is a deadline the
//! runtime reaches at once.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{
    Appended, Audience, ClientEvent, ClientIdMinter, CloseReason, Epoch, Hub, InboxChange, InboxCounts,
    InboxPage, InboxQuery, Limits, ListenBounds, LocalBus, LogHead, LogPage, Mark, NewNotification,
    Notification, Notifier, PruneReport, Receipt, Retention, Revocation, ScopeListens, Selection, Seq,
    SessionId, Store, StoreError, StoredListen, SubscribeError, SubscribeRequest, Subscription, Topic,
    TopicListener, Transport, UserId,
};
use herald_core::{NewTopicEvent, TopicAppended, TopicHead, TopicPage};
use herald_store::MemoryStore;
use serde_json::json;
use tokio::time::Instant;

/// What a test checks of a [`ClientEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Hello { last_seq: Seq, position: Seq },
    Seq(Seq),
    Reset { last_seq: Seq },
    Other(String),
}

/// Everything the subscription hands out until nothing more comes within a second (of paused
/// time: the runtime skips to the deadline once every task waits).
async fn drain(subscription: &mut Subscription) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = subscription.next_before(Some(Instant::now() + Duration::from_secs(1))).await
    {
        seen.push(match event {
            ClientEvent::Hello { last_seq, position, .. } => Seen::Hello { last_seq, position },
            ClientEvent::Notification(n) => Seen::Seq(n.seq.expect("only durable notifications here")),
            ClientEvent::Reset { last_seq } => Seen::Reset { last_seq },
            other => Seen::Other(format!("{other:?}")),
        });
    }
    seen
}

fn seqs(range: std::ops::RangeInclusive<Seq>) -> Vec<Seen> {
    range.map(Seen::Seq).collect()
}

fn alice() -> UserId {
    UserId::new("alice").unwrap()
}

fn session(name: &str) -> SessionId {
    SessionId::new(name).unwrap()
}

fn hub(limits: Limits) -> Hub {
    Hub::new(limits, ClientIdMinter::new(b"subscription tests"))
}

fn request<'a>(user: &'a UserId, session: &'a SessionId, resume_after: Option<Seq>) -> SubscribeRequest<'a> {
    SubscribeRequest {
        user,
        session,
        client: None,
        transport: Transport::Sse,
        resume_after,
        epoch: None,
        topics: &[],
        topic_positions: &[],
        types: &[],
    }
}

/// [`request`] resuming after `resume_after` of `epoch`.
fn request_in<'a>(
    user: &'a UserId,
    session: &'a SessionId,
    resume_after: Option<Seq>,
    epoch: &'a str,
) -> SubscribeRequest<'a> {
    SubscribeRequest { epoch: Some(epoch), ..request(user, session, resume_after) }
}

/// A [`MemoryStore`] that publishes to alice (through a [`Notifier`] on the inner store, so to
/// the store and then to the hub) at the moments a subscription is most exposed: when it reads
/// the log's head (before it attaches to the hub), and right after it reads a replay page
/// (attached; the page does not hold the new notification). Or that closes every client of a
/// hub right after a replay page is read (`close_after_read`: the server stopping while a
/// subscription holds a page it has not handed out).
struct PublishingStore {
    inner: Arc<MemoryStore>,
    notifier: Notifier,
    publish_on_head: AtomicBool,
    publishes_after_reads: AtomicUsize,
    /// Replay pages are read under this epoch instead of the inner store's, as after a failover
    /// between the head and the replay.
    pages_epoch: Option<Epoch>,
    close_after_read: Mutex<Option<Hub>>,
}

impl PublishingStore {
    async fn publish(&self) {
        self.notifier.notify(&alice(), "live", &json!("published during the subscription")).await.unwrap();
    }
}

#[async_trait]
impl Store for PublishingStore {
    async fn push_subscribe(
        &self,
        subscription: &herald_core::PushSubscription,
        bounds: herald_core::PushBounds,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.push_subscribe(subscription, bounds).await
    }
    async fn push_unsubscribe(&self, user: &herald_core::UserId, id: &str) -> Result<bool, StoreError> {
        self.inner.push_unsubscribe(user, id).await
    }
    async fn push_subscriptions(
        &self,
        user: &herald_core::UserId,
    ) -> Result<Vec<herald_core::PushSubscription>, StoreError> {
        self.inner.push_subscriptions(user).await
    }
    async fn push_subscription(&self, id: &str) -> Result<Option<herald_core::PushSubscription>, StoreError> {
        self.inner.push_subscription(id).await
    }
    async fn push_enqueue(&self, deliveries: &[herald_core::PushDelivery]) -> Result<(), StoreError> {
        self.inner.push_enqueue(deliveries).await
    }
    async fn push_claim(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushDelivery>, StoreError> {
        self.inner.push_claim(now_ms, limit, lease).await
    }
    async fn push_expand(
        &self,
        expansions: &[herald_core::PushExpansion],
        to_senders: &[herald_core::PushMarker],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        self.inner.push_expand(expansions, to_senders, now_ms).await
    }
    async fn push_claim_pending(
        &self,
        now_ms: i64,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<herald_core::PushPending>, StoreError> {
        self.inner.push_claim_pending(now_ms, limit, lease).await
    }
    async fn push_next_due(&self) -> Result<Option<i64>, StoreError> {
        self.inner.push_next_due().await
    }
    async fn push_outbox_depth(&self) -> Result<u64, StoreError> {
        self.inner.push_outbox_depth().await
    }
    async fn push_settle(&self, id: &str, settle: herald_core::PushSettle) -> Result<(), StoreError> {
        self.inner.push_settle(id, settle).await
    }
    async fn save_job(&self, job: &herald_core::FanoutJob) -> Result<(), StoreError> {
        self.inner.save_job(job).await
    }
    async fn job(&self, id: &str) -> Result<Option<herald_core::FanoutJob>, StoreError> {
        self.inner.job(id).await
    }
    async fn unfinished_jobs(&self, limit: usize) -> Result<Vec<herald_core::FanoutJob>, StoreError> {
        self.inner.unfinished_jobs(limit).await
    }
    async fn record_presence(
        &self,
        node: &str,
        change: &herald_core::PresenceChange,
    ) -> Result<Vec<herald_core::PresenceEvent>, StoreError> {
        self.inner.record_presence(node, change).await
    }
    async fn presence_heartbeat(
        &self,
        node: &str,
        now_ms: i64,
        dead_before_ms: i64,
    ) -> Result<herald_core::PresenceBeat, StoreError> {
        self.inner.presence_heartbeat(node, now_ms, dead_before_ms).await
    }
    async fn release_presence(
        &self,
        node: &str,
        at_ms: i64,
        limit: usize,
    ) -> Result<Option<Vec<herald_core::PresenceEvent>>, StoreError> {
        self.inner.release_presence(node, at_ms, limit).await
    }

    async fn append_topic(
        &self,
        event: NewTopicEvent,
        idempotency_key: Option<&str>,
    ) -> Result<TopicAppended, StoreError> {
        self.inner.append_topic(event, idempotency_key).await
    }
    async fn topic_heads(&self, topics: &[Topic]) -> Result<(Vec<TopicHead>, Epoch), StoreError> {
        self.inner.topic_heads(topics).await
    }
    async fn read_topic_after(
        &self,
        topic: &Topic,
        after: Seq,
        limit: usize,
    ) -> Result<TopicPage, StoreError> {
        self.inner.read_topic_after(topic, after, limit).await
    }

    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let head = self.inner.head(user).await;
        if self.publish_on_head.swap(false, Ordering::Relaxed) {
            self.publish().await;
        }
        head
    }

    fn epoch(&self) -> Epoch {
        self.inner.epoch()
    }

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let mut page = self.inner.read_after(user, after, limit).await;
        if let (Ok(page), Some(epoch)) = (&mut page, &self.pages_epoch) {
            page.head.epoch = epoch.clone();
        }
        let publish = self
            .publishes_after_reads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if publish.is_ok() {
            self.publish().await;
        }
        if let Some(hub) = self.close_after_read.lock().unwrap().take() {
            hub.close_all(CloseReason::Shutdown);
        }
        page
    }

    async fn append(&self, entries: Vec<NewNotification>, key: Option<&str>) -> Result<Appended, StoreError> {
        self.inner.append(entries, key).await
    }
    async fn complete_receipt(&self, key: &str, receipt: &Receipt) -> Result<(), StoreError> {
        self.inner.complete_receipt(key, receipt).await
    }
    async fn prune(&self, now_ms: i64) -> Result<PruneReport, StoreError> {
        self.inner.prune(now_ms).await
    }
    async fn inbox_list(&self, user: &UserId, query: &InboxQuery) -> Result<InboxPage, StoreError> {
        self.inner.inbox_list(user, query).await
    }
    async fn inbox_counts(&self, user: &UserId) -> Result<InboxCounts, StoreError> {
        self.inner.inbox_counts(user).await
    }
    async fn inbox_mark(
        &self,
        user: &UserId,
        selection: &Selection,
        mark: Mark,
        at_ms: i64,
    ) -> Result<InboxChange, StoreError> {
        self.inner.inbox_mark(user, selection, mark, at_ms).await
    }
    async fn inbox_delete(&self, user: &UserId, selection: &Selection) -> Result<InboxChange, StoreError> {
        self.inner.inbox_delete(user, selection).await
    }
    async fn revoke(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        at_secs: u64,
    ) -> Result<(), StoreError> {
        self.inner.revoke(user, session, at_secs).await
    }
    async fn revocations(&self, user: &UserId) -> Result<Vec<Revocation>, StoreError> {
        self.inner.revocations(user).await
    }
    async fn listen(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
        bounds: ListenBounds,
        now_ms: i64,
    ) -> Result<ScopeListens, StoreError> {
        self.inner.listen(user, session, topics, bounds, now_ms).await
    }
    async fn unlisten(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
        topics: &[Topic],
    ) -> Result<Vec<Topic>, StoreError> {
        self.inner.unlisten(user, session, topics).await
    }
    async fn forget_session_listens(
        &self,
        user: &UserId,
        session: Option<&SessionId>,
    ) -> Result<(), StoreError> {
        self.inner.forget_session_listens(user, session).await
    }
    async fn listens(&self, user: &UserId) -> Result<Vec<StoredListen>, StoreError> {
        self.inner.listens(user).await
    }
    async fn topic_listeners(
        &self,
        topic: &Topic,
        after: Option<&TopicListener>,
        limit: usize,
    ) -> Result<Vec<TopicListener>, StoreError> {
        self.inner.topic_listeners(topic, after, limit).await
    }
}

/// The hand-over from replay to live: notifications published just before the client attaches
/// (only in the store), and after each replay page is read (in the store and, since the client
/// is attached, in its queue too; the last one only in its queue) arrive exactly once, in seq
/// order. Fails if the subscription attached after replaying (the last one would be lost) or
/// did not drop live seqs it had replayed (6 to 9 would come twice).
#[tokio::test(start_paused = true)]
async fn notifications_published_while_it_replays_arrive_once_in_order() {
    // Pages of 2, so that the replay takes several reads with publishes between them.
    let hub = hub(Limits { replay_page_len: 2, ..Limits::default() });
    let memory = Arc::new(MemoryStore::default());
    let notifier = Notifier::new(memory.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=4 {
        notifier.notify(&alice(), "before", &json!(null)).await.unwrap();
    }
    let store = PublishingStore {
        inner: memory,
        notifier,
        publish_on_head: AtomicBool::new(true),
        // After the reads of [1, 2], [3, 4], [5, 6], [7, 8] and the last, short one: [9].
        publishes_after_reads: AtomicUsize::new(5),
        pages_epoch: None,
        close_after_read: Mutex::new(None),
    };
    let store: Arc<dyn Store> = Arc::new(store);

    let (user, session) = (alice(), session("s1"));
    let mut subscription = Subscription::open(&hub, &store, request(&user, &session, Some(0))).await.unwrap();
    let seen = drain(&mut subscription).await;

    let mut expected = vec![Seen::Hello { last_seq: 4, position: 0 }];
    expected.extend(seqs(1..=10));
    assert_eq!(seen, expected);
    assert_eq!(subscription.position(), 10);
}

/// A live seq beyond the next one (publishes fanned out in another order than their seqs, or
/// by another node) is a gap: the subscription reads the missing seqs from the store, skips the
/// one meant for another session, and drops the late arrivals. Fails if a gap were taken as
/// it comes (seq 1 would be lost) or late seqs were not dropped.
#[tokio::test(start_paused = true)]
async fn a_gap_in_live_seqs_is_filled_from_the_store_in_order() {
    let hub = hub(Limits::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let (user, s1, s2) = (alice(), session("s1"), session("s2"));
    let mut subscription = Subscription::open(&hub, &store, request(&user, &s1, None)).await.unwrap();
    assert_eq!(drain(&mut subscription).await, [Seen::Hello { last_seq: 0, position: 0 }]);

    // Stored, but not fanned out (yet): 1 for everyone, 2 for session s2 only, 3 for everyone.
    let entry = |session: Option<&SessionId>| NewNotification {
        user: user.clone(),
        kind: Arc::from("t"),
        data: Arc::from(serde_json::value::to_raw_value(&json!(1)).unwrap()),
        created_at_ms: 0,
        audience: Audience { session: session.cloned(), ..Audience::user() },
        push: None,
    };
    let Appended::Stored { notifications, .. } =
        store.append(vec![entry(None), entry(Some(&s2)), entry(None)], None).await.unwrap()
    else {
        panic!("no idempotency key, so stored");
    };
    let stored: Vec<Arc<Notification>> = notifications;
    assert_eq!(stored.iter().map(|n| n.seq).collect::<Vec<_>>(), [Some(1), Some(2), Some(3)]);

    hub.fanout(&stored[2]);
    assert_eq!(drain(&mut subscription).await, [Seen::Seq(1), Seen::Seq(3)], "1 and 3 from the store");
    for late in &stored[..2] {
        hub.fanout(late);
    }
    assert_eq!(drain(&mut subscription).await, [], "handled already: dropped");

    let Appended::Stored { notifications, .. } = store.append(vec![entry(None)], None).await.unwrap() else {
        panic!("stored");
    };
    hub.fanout(&notifications[0]);
    assert_eq!(drain(&mut subscription).await, [Seen::Seq(4)], "and live again after the gap");
}

/// A resume point older than what retention kept gets `reset` (with the last seq) and then
/// only live notifications; the oldest retained resume point replays without one. A resume
/// point beyond the log is refused. Fails if `reset` were sent one seq too early or too late.
#[tokio::test(start_paused = true)]
async fn a_resume_point_older_than_retention_gets_a_reset() {
    let hub = hub(Limits::default());
    let retention = Retention { max_per_user: 3, ..Retention::default() };
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new(retention));
    let notifier = Notifier::new(store.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=5 {
        notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    }
    let head = store.head(&alice()).await.unwrap();
    assert_eq!((head.last_seq, head.pruned_through), (5, 2), "3, 4 and 5 retained");

    let (user, session) = (alice(), session("s1"));
    let mut lost = Subscription::open(&hub, &store, request(&user, &session, Some(1))).await.unwrap();
    assert_eq!(
        drain(&mut lost).await,
        [Seen::Hello { last_seq: 5, position: 1 }, Seen::Reset { last_seq: 5 }],
        "seq 2 is gone: reset, and nothing replayed"
    );

    let mut oldest = Subscription::open(&hub, &store, request(&user, &session, Some(2))).await.unwrap();
    let mut expected = vec![Seen::Hello { last_seq: 5, position: 2 }];
    expected.extend(seqs(3..=5));
    assert_eq!(drain(&mut oldest).await, expected, "everything after 2 is retained: no reset");

    notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    assert_eq!(drain(&mut lost).await, [Seen::Seq(6)], "after the reset, live notifications");

    let ahead = Subscription::open(&hub, &store, request(&user, &session, Some(9))).await;
    assert!(matches!(ahead, Err(SubscribeError::ResumeAhead { requested: 9, last_seq: 6 })), "{ahead:?}");
}

/// A resume point of another epoch than the store's (a restored database, a failover, a
/// restarted memory store) is not judged by its seq: `hello` starts at the log's last seq, a
/// `reset` follows, nothing is replayed, and live notifications come after it; one ahead of the
/// log gets the same instead of a refusal. With the store's epoch, or none (an older client),
/// the resume point works as before. Fails if a resume of another epoch replayed after its seq
/// (the client would get other notifications under seqs it saw) or were refused as ahead.
#[tokio::test(start_paused = true)]
async fn a_resume_point_of_another_epoch_gets_a_reset() {
    let hub = hub(Limits::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let notifier = Notifier::new(store.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=5 {
        notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    }
    let epoch = store.epoch();
    let (user, session) = (alice(), session("s1"));

    let mut same =
        Subscription::open(&hub, &store, request_in(&user, &session, Some(2), &epoch)).await.unwrap();
    assert_eq!(same.epoch(), &epoch);
    let mut expected = vec![Seen::Hello { last_seq: 5, position: 2 }];
    expected.extend(seqs(3..=5));
    assert_eq!(drain(&mut same).await, expected, "the store's epoch: replayed after 2");

    let mut other = Subscription::open(&hub, &store, request_in(&user, &session, Some(2), "an-older-epoch"))
        .await
        .unwrap();
    let hello = other.next().await;
    assert!(
        matches!(&hello, Some(ClientEvent::Hello { last_seq: 5, position: 5, epoch: e, .. }) if *e == epoch),
        "hello names the store's epoch and starts at its last seq: {hello:?}"
    );
    assert_eq!(drain(&mut other).await, [Seen::Reset { last_seq: 5 }], "then a reset, and no replay");
    notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    assert_eq!(drain(&mut other).await, [Seen::Seq(6)], "live after the reset");
    assert_eq!(drain(&mut same).await, [Seen::Seq(6)]);

    let mut ahead = Subscription::open(&hub, &store, request_in(&user, &session, Some(99), "an-older-epoch"))
        .await
        .unwrap();
    assert_eq!(
        drain(&mut ahead).await,
        [Seen::Hello { last_seq: 6, position: 6 }, Seen::Reset { last_seq: 6 }],
        "ahead of the log, of another epoch: a reset, not a refusal"
    );
    for request in [request_in(&user, &session, Some(99), &epoch), request(&user, &session, Some(99))] {
        let refused = Subscription::open(&hub, &store, request).await;
        assert!(
            matches!(refused, Err(SubscribeError::ResumeAhead { requested: 99, last_seq: 6 })),
            "{refused:?}"
        );
    }

    let mut unnamed = Subscription::open(&hub, &store, request(&user, &session, Some(4))).await.unwrap();
    assert_eq!(
        drain(&mut unnamed).await,
        [Seen::Hello { last_seq: 6, position: 4 }, Seen::Seq(5), Seen::Seq(6)],
        "no epoch: the seq is taken as the current epoch's, as before epochs"
    );
    let mut fresh =
        Subscription::open(&hub, &store, request_in(&user, &session, None, "an-older-epoch")).await.unwrap();
    assert_eq!(
        drain(&mut fresh).await,
        [Seen::Hello { last_seq: 6, position: 6 }],
        "no resume point: nothing to reset"
    );
}

/// A replay page read under another epoch than the stream's head (the store failed over while
/// the subscription replayed) is not handed out: the stream ends `closed: error`, so that the
/// client resumes with its epoch and gets a `reset`. Fails if the page's seqs, of another
/// history, were handed out as this stream's.
#[tokio::test(start_paused = true)]
async fn a_replay_page_of_another_epoch_ends_the_stream() {
    let hub = hub(Limits::default());
    let memory = Arc::new(MemoryStore::default());
    let notifier = Notifier::new(memory.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=3 {
        notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(PublishingStore {
        inner: memory,
        notifier,
        publish_on_head: AtomicBool::new(false),
        publishes_after_reads: AtomicUsize::new(0),
        pages_epoch: Some(Epoch::from("after-the-failover")),
        close_after_read: Mutex::new(None),
    });
    let (user, session) = (alice(), session("s1"));
    let mut subscription = Subscription::open(&hub, &store, request(&user, &session, Some(1))).await.unwrap();
    assert_eq!(
        drain(&mut subscription).await,
        [
            Seen::Hello { last_seq: 3, position: 1 },
            Seen::Other(format!("{:?}", ClientEvent::Closed(CloseReason::Error)))
        ]
    );
}

/// Long-polls judge `after` by its epoch too: one of another epoch answers `reset` at once with
/// the last seq and the store's epoch, also when the poller's queue is parked at that `after`
/// (the queue holds seqs of the current epoch). With the store's epoch, the parked queue is taken
/// back. Fails if a poll of another epoch were answered from the parked queue or replayed.
#[tokio::test(start_paused = true)]
async fn a_poll_of_another_epoch_gets_a_reset() {
    let hub = hub(Limits::default());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let notifier = Notifier::new(store.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=3 {
        notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    }
    let epoch = store.epoch();
    let (user, session) = (alice(), session("s1"));
    let poll_request = |client, after, epoch| SubscribeRequest {
        client,
        transport: Transport::Poll,
        ..request_in(&user, &session, after, epoch)
    };
    let wait = Duration::from_secs(1);

    let first =
        herald_core::poll(&hub, &store, poll_request(None, Some(1), &epoch), wait, None).await.unwrap();
    let first_seqs: Vec<_> = first.notifications.iter().map(|n| n.seq).collect();
    assert_eq!((first_seqs, first.last_seq, first.reset), (vec![Some(2), Some(3)], 3, false));
    assert_eq!(first.epoch, epoch);

    // Parked at 3 now: a poll of another epoch is not answered from that queue.
    let client = first.client.as_str();
    let other = herald_core::poll(&hub, &store, poll_request(Some(client), Some(3), "old"), wait, None)
        .await
        .unwrap();
    assert!(other.reset && other.notifications.is_empty(), "{other:?}");
    assert_eq!((other.last_seq, &other.epoch), (3, &epoch));

    let ahead =
        herald_core::poll(&hub, &store, poll_request(None, Some(50), "old"), wait, None).await.unwrap();
    assert!(ahead.reset && ahead.last_seq == 3, "ahead of the log, of another epoch: a reset, not a refusal");

    // The store's epoch: the parked queue is taken back (a notification sent meanwhile is in it).
    let client = other.client.as_str();
    notifier.notify(&alice(), "t", &json!(null)).await.unwrap();
    let parked = herald_core::poll(&hub, &store, poll_request(Some(client), Some(3), &epoch), wait, None)
        .await
        .unwrap();
    let parked_seqs: Vec<_> = parked.notifications.iter().map(|n| n.seq).collect();
    assert_eq!((parked_seqs, parked.reset, &parked.epoch), (vec![Some(4)], false, &epoch));
}

/// A poll whose client is closed (here: the server stops) while the page it replayed from the
/// store waits to be handed out answers `closed` with the `last_seq` of what it handed out, not
/// of the page it dropped: it answered `{"notifications": [], "last_seq": 5, "closed":
/// "shutdown"}` to `after=2`, and herald.js, which polls on from `last_seq`, would never get 3
/// to 5. Seen as 72 to 77 missing in the long-poll tab of a rolling restart behind nginx
/// (tests/browser/cluster.test.mjs), whose polls land on nodes as they stop. Fails if the
/// dropped page still counts as handed out.
#[tokio::test(start_paused = true)]
async fn a_poll_closed_while_its_replay_page_waits_does_not_skip_the_page() {
    let hub = hub(Limits::default());
    let memory = Arc::new(MemoryStore::default());
    let notifier = Notifier::new(memory.clone(), Arc::new(LocalBus::new(hub.clone())), hub.clone());
    for _ in 1..=5 {
        notifier.notify(&alice(), "before", &json!(null)).await.unwrap();
    }
    let store = PublishingStore {
        inner: memory,
        notifier,
        publish_on_head: AtomicBool::new(false),
        publishes_after_reads: AtomicUsize::new(0),
        pages_epoch: None,
        close_after_read: Mutex::new(Some(hub.clone())),
    };
    let store: Arc<dyn Store> = Arc::new(store);

    let (user, session) = (alice(), session("s1"));
    let request = SubscribeRequest { transport: Transport::Poll, ..request(&user, &session, Some(2)) };
    let answer = herald_core::poll(&hub, &store, request, Duration::from_secs(20), None).await.unwrap();

    assert_eq!(answer.closed, Some(CloseReason::Shutdown));
    let handed_out: Vec<Seq> = answer.notifications.iter().filter_map(|n| n.seq).collect();
    assert_eq!(
        answer.last_seq,
        handed_out.last().copied().unwrap_or(2),
        "the next poll must resume after what this answer holds (it holds {handed_out:?})"
    );
}
