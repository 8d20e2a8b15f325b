//! [`Subscription`] over a real store (`herald_store::MemoryStore`), without HTTP: the hand-over
//! from replay to live events (attach first, then replay, then drop what was handled), filling
//! a gap in live seqs from the store, and a `reset` for a resume point older than retention.
//!
//! The races are made to happen on purpose: a store wrapper publishes while the subscription
//! reads it. Time is paused, so "nothing more comes" is a deadline the runtime reaches at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_core::{
    Appended, Audience, ClientEvent, ClientIdMinter, Hub, InboxChange, InboxCounts, InboxPage, InboxQuery,
    Limits, LocalBus, LogHead, LogPage, Mark, NewNotification, Notification, Notifier, PruneReport, Receipt,
    Retention, Revocation, Selection, Seq, SessionId, Store, StoreError, SubscribeError, SubscribeRequest,
    Subscription, Transport, UserId,
};
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
    SubscribeRequest { user, session, client: None, transport: Transport::Sse, resume_after }
}

/// A [`MemoryStore`] that publishes to alice (through a [`Notifier`] on the inner store, so to
/// the store and then to the hub) at the moments a subscription is most exposed: when it reads
/// the log's head (before it attaches to the hub), and right after it reads a replay page
/// (attached; the page does not hold the new notification).
struct PublishingStore {
    inner: Arc<MemoryStore>,
    notifier: Notifier,
    publish_on_head: AtomicBool,
    publishes_after_reads: AtomicUsize,
}

impl PublishingStore {
    async fn publish(&self) {
        self.notifier.notify(&alice(), "live", &json!("published during the subscription")).await.unwrap();
    }
}

#[async_trait]
impl Store for PublishingStore {
    async fn head(&self, user: &UserId) -> Result<LogHead, StoreError> {
        let head = self.inner.head(user).await;
        if self.publish_on_head.swap(false, Ordering::Relaxed) {
            self.publish().await;
        }
        head
    }

    async fn read_after(&self, user: &UserId, after: Seq, limit: usize) -> Result<LogPage, StoreError> {
        let page = self.inner.read_after(user, after, limit).await;
        let publish = self
            .publishes_after_reads
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        if publish.is_ok() {
            self.publish().await;
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
