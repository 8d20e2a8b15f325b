//! The cluster bus between "nodes" in one process: each node is a hub with its own
//! [`ClusterBus`] and [`Notifier`], all on one real broker (NATS or Redis, from
//! `HERALD_TEST_NATS` / `HERALD_TEST_REDIS`; without the variable a case says why it skips) and
//! one shared store (the memory store: the log every node reads, as PostgreSQL is in a real
//! cluster). Each case uses a cluster name of its own, so runs do not hear each other.
//!
//! The process-level tests (crates/herald/tests/cluster.rs) run real `herald serve` nodes on
//! PostgreSQL; these check the bus's own rules more directly and faster: routing and echo,
//! interest, the repair from the store, the store poll for a silent node, presence and limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_cluster::broker::{self, BrokerEvent};
use herald_cluster::{ClusterBus, ClusterOptions};
use herald_core::notification::now_ms;
use herald_core::store::NewNotification;
use herald_core::{
    Audience, ClientEvent, ClientIdMinter, Hub, Limits, Notifier, Retention, SessionId, Store,
    SubscribeRequest, Subscription, Transport, UserId,
};
use herald_store::MemoryStore;
use serde_json::json;
use tokio::sync::mpsc;

/// Longest wait for an event that should come.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Nats,
    Redis,
}

impl Kind {
    fn url_or_skip(self, case: &str) -> Option<String> {
        let variable = match self {
            Kind::Nats => "HERALD_TEST_NATS",
            Kind::Redis => "HERALD_TEST_REDIS",
        };
        let url = std::env::var(variable).ok().filter(|u| !u.is_empty());
        if url.is_none() {
            eprintln!("skipped {case} ({self:?}): {variable} is not set");
        }
        url
    }
}

fn cluster_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("bt{}x{}x{}", std::process::id(), now_ms() % 1_000_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One node: its hub, its bus, its notifier.
struct Node {
    hub: Hub,
    bus: ClusterBus,
    notifier: Notifier,
    store: Arc<dyn Store>,
}

async fn node(url: &str, cluster: &str, id: &str, store: &Arc<dyn Store>, limits: Limits) -> Node {
    let hub = Hub::new(limits, ClientIdMinter::new(b"one key for the whole cluster"));
    let options = ClusterOptions { cluster: cluster.to_owned(), node: id.to_owned() };
    let bus = ClusterBus::connect(url, options, hub.clone(), store.clone()).await.unwrap();
    let notifier = Notifier::new(store.clone(), Arc::new(bus.clone()), hub.clone());
    Node { hub, bus, notifier, store: store.clone() }
}

fn shared_store() -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(Retention::default()))
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

impl Node {
    async fn tab(&self, user_id: &str, session: &str) -> Subscription {
        self.tab_as(user_id, session, None).await
    }

    async fn tab_as(&self, user_id: &str, session: &str, client: Option<&str>) -> Subscription {
        let (user, session) = (user(user_id), SessionId::new(session).unwrap());
        let request = SubscribeRequest {
            user: &user,
            session: &session,
            client,
            transport: Transport::Sse,
            resume_after: None,
            epoch: None,
            topics: &[],
            topic_positions: &[],
            types: &[],
        };
        let mut subscription = Subscription::open(&self.hub, &self.store, request).await.unwrap();
        assert!(matches!(subscription.next().await, Some(ClientEvent::Hello { .. })));
        subscription
    }

    async fn notify(&self, user_id: &str, n: u64) -> u64 {
        let receipt = self.notifier.notify(&user(user_id), "t", &json!({ "n": n })).await.unwrap();
        receipt.notifications[0].seq
    }
}

/// The next notification's seq, skipping `inbox` events and keep-alives.
async fn next_seq(subscription: &mut Subscription) -> u64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, subscription.next()).await.expect("a notification in time") {
            Some(ClientEvent::Notification(n)) => return n.seq.expect("durable"),
            Some(ClientEvent::Inbox(_) | ClientEvent::KeepAlive) => {}
            other => panic!("expected a notification, got {other:?}"),
        }
    }
}

async fn seqs(subscription: &mut Subscription, count: usize) -> Vec<u64> {
    let mut seqs = Vec::with_capacity(count);
    for _ in 0..count {
        seqs.push(next_seq(subscription).await);
    }
    seqs
}

/// No notification for `quiet`.
async fn assert_no_notification(subscription: &mut Subscription, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, subscription.next()).await {
            Err(_) => return,
            Ok(Some(ClientEvent::Inbox(_) | ClientEvent::KeepAlive)) => {}
            Ok(other) => panic!("expected nothing, got {other:?}"),
        }
    }
}

/// A raw connection to the broker, to say things on the cluster's subjects as a node would;
/// with the receiving end of its events, kept as long as the connection (an adapter whose
/// events go nowhere may wind down).
struct Raw {
    broker: Arc<dyn broker::Broker>,
    _events: mpsc::Receiver<BrokerEvent>,
}

async fn raw(url: &str) -> Raw {
    let (events, receiver) = mpsc::channel::<BrokerEvent>(16);
    Raw { broker: broker::connect(url, events).await.unwrap(), _events: receiver }
}

async fn say(raw: &Raw, cluster: &str, envelope: serde_json::Value) {
    raw.broker.publish(&format!("{cluster}.nodes"), Bytes::from(envelope.to_string())).await.unwrap();
}

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        mod nats {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(url) = super::Kind::Nats.url_or_skip(stringify!($case)) {
                        super::$case(&url).await
                    }
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    if let Some(url) = super::Kind::Redis.url_or_skip(stringify!($case)) {
                        super::$case(&url).await
                    }
                }
            )*
        }
    };
}

cases!(
    publishes_reach_every_node_once,
    interest_follows_the_users_with_clients,
    a_resync_repairs_what_the_bus_lost,
    a_silent_node_makes_the_others_poll_the_store,
    presence_and_client_targets_span_the_nodes,
    limits_count_every_node,
    inbox_events_and_session_closes_cross_nodes,
    a_node_that_leaves_is_gone_at_once,
    topic_events_and_listens_cross_nodes,
    a_user_scope_listen_reaches_the_users_tabs_on_every_node,
    durable_topic_events_from_two_nodes_arrive_once_in_order_and_resume,
);

/// What one node publishes reaches the user's tabs on every node once (its own tab through its
/// hub, not twice through an echo of its envelope); other users get nothing.
async fn publishes_reach_every_node_once(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    let mut on_a = a.tab("alice", "s1").await;
    let mut on_b = b.tab("alice", "s2").await;
    let mut bob = b.tab("bob", "s1").await;
    for n in 0..10 {
        a.notify("alice", n).await;
        b.notify("alice", n).await;
    }
    let expected: Vec<u64> = (1..=20).collect();
    assert_eq!(seqs(&mut on_a, 20).await, expected);
    assert_eq!(seqs(&mut on_b, 20).await, expected);
    assert_no_notification(&mut on_a, Duration::from_millis(300)).await;
    assert_no_notification(&mut bob, Duration::from_millis(50)).await;
    // Redis sends a node its own envelopes (dropped unread); NATS does not (`no_echo`).
    let echoes = a.bus.traffic().echoes.load(Ordering::Relaxed);
    if url.starts_with("redis") {
        assert!(echoes >= 10, "a's own envelopes come back over Redis and are dropped: {echoes}");
    } else {
        assert_eq!(echoes, 0, "NATS sends a node none of its own envelopes");
    }
}

/// A node subscribes to the shards of the users it has clients of, and leaves them when the
/// hub forgets the users.
async fn interest_follows_the_users_with_clients(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let limits = Limits { client_linger: Duration::ZERO, ..Limits::default() };
    let a = node(url, &cluster, "a", &store, limits).await;
    assert_eq!(a.bus.subscribed_shards(), 0);
    let tab = a.tab("alice", "s").await;
    assert_eq!(a.bus.subscribed_shards(), 1, "subscribed before the tab's store read");
    drop(tab);
    a.hub.sweep();
    let deadline = Instant::now() + WAIT;
    while a.bus.subscribed_shards() != 0 {
        assert!(Instant::now() < deadline, "the shard was not left");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A notification stored but never sent on the bus (its node died between the commit and the
/// publish) reaches the tabs once a node asks for a resync.
async fn a_resync_repairs_what_the_bus_lost(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let mut tab = a.tab("alice", "s").await;
    assert_eq!(a.notify("alice", 0).await, 1);
    assert_eq!(next_seq(&mut tab).await, 1);
    let data = Arc::from(serde_json::value::RawValue::from_string("{}".into()).unwrap());
    let lost = NewNotification {
        user: user("alice"),
        kind: Arc::from("t"),
        data,
        created_at_ms: now_ms(),
        audience: Audience::user(),
        push: None,
    };
    store.append(vec![lost.clone(), lost], None).await.unwrap();
    assert_no_notification(&mut tab, Duration::from_millis(300)).await;
    // Kept until the end: a publish is only handed to the connection, which must live to send it.
    let ghost = raw(url).await;
    say(&ghost, &cluster, json!({"v": 1, "from": "ghost", "body": "resync"})).await;
    assert_eq!(seqs(&mut tab, 2).await, vec![2, 3], "repaired from the store, in order");
    assert_no_notification(&mut tab, Duration::from_millis(300)).await;
}

/// While another node is silent (it may be storing publishes it cannot send), the others poll
/// the store: what it stored reaches their tabs within a few seconds, without any message.
async fn a_silent_node_makes_the_others_poll_the_store(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let mut tab = a.tab("alice", "s").await;
    // A node that beats (as a node does, every second: here every 200 ms until heard), then
    // falls silent. Its connection is kept to the end: a publish is only handed to the
    // connection, and one dropped at once may never send it.
    let ghost = raw(url).await;
    let deadline = Instant::now() + WAIT;
    while a.bus.live_peers() != ["ghost"] {
        assert!(Instant::now() < deadline, "the ghost was not heard");
        say(&ghost, &cluster, json!({"v": 1, "from": "ghost", "body": {"heartbeat": {"started": 1}}})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Caught up (its replay done): from now on only the live path or a repair brings anything.
    assert_no_notification(&mut tab, Duration::from_millis(100)).await;
    // Stored by "the ghost": straight into the log, no bus.
    let data = Arc::from(serde_json::value::RawValue::from_string("{}".into()).unwrap());
    let entry = NewNotification {
        user: user("alice"),
        kind: Arc::from("t"),
        data,
        created_at_ms: now_ms(),
        audience: Audience::user(),
        push: None,
    };
    store.append(vec![entry], None).await.unwrap();
    let stored_at = Instant::now();
    assert_eq!(next_seq(&mut tab).await, 1);
    let took = stored_at.elapsed();
    // Silent after 3 s without a heartbeat (seen within 1 s), then a pass every second: ~5 s.
    assert!(took <= Duration::from_secs(8), "took {took:?}");
    eprintln!("a silent node's notification reached the tab after {took:?}");
}

/// Presence lists the clients of every node with their node; a publish to one client works from
/// a node it is not connected to; a takeover on another node ends the old connection.
async fn presence_and_client_targets_span_the_nodes(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    wait_for_peers(&[&a, &b]).await;
    let _laptop = a.tab("alice", "laptop").await;
    let mut phone = b.tab("alice", "phone").await;
    let presence = a.notifier.presence(&user("alice")).await.unwrap();
    let mut seen: Vec<(String, Option<String>)> = presence
        .sessions
        .iter()
        .flat_map(|s| s.clients.iter().map(|c| (s.session.to_string(), c.node.as_deref().map(str::to_owned))))
        .collect();
    seen.sort();
    assert_eq!(seen, [("laptop".to_owned(), None), ("phone".to_owned(), Some("b".to_owned()))]);

    let phone_client = phone.info().client.clone();
    let data = Arc::from(serde_json::value::RawValue::from_string("{}".into()).unwrap());
    let publish = herald_core::Publish {
        target: herald_core::Target::Client(phone_client.clone()),
        ..herald_core::Publish::to_user(user("alice"), "t", data)
    };
    let receipt = a.notifier.publish(publish).await.unwrap();
    assert_eq!(next_seq(&mut phone).await, receipt.notifications[0].seq);

    let _moved = a.tab_as("alice", "phone", Some(phone_client.as_str())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, phone.next()).await.expect("closed in time") {
            Some(ClientEvent::Closed(reason)) => {
                assert_eq!(reason, herald_core::CloseReason::Replaced);
                break;
            }
            Some(_) => {}
            None => panic!("ended without closed"),
        }
    }
}

/// The limits count every node: a user over the session limit across two nodes loses its
/// least recent session wherever it is.
async fn limits_count_every_node(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let limits = Limits { sessions_per_user_max: 2, ..Limits::default() };
    let a = node(url, &cluster, "a", &store, limits.clone()).await;
    let b = node(url, &cluster, "b", &store, limits).await;
    wait_for_peers(&[&a, &b]).await;
    let mut oldest = a.tab("alice", "s1").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut middle = b.tab("alice", "s2").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut newest = b.tab("alice", "s3").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, oldest.next()).await.expect("evicted in time") {
            Some(ClientEvent::Closed(reason)) => {
                assert_eq!(reason, herald_core::CloseReason::Evicted);
                break;
            }
            Some(_) => {}
            None => panic!("ended without closed"),
        }
    }
    assert_no_notification(&mut middle, Duration::from_millis(200)).await;
    assert_no_notification(&mut newest, Duration::from_millis(10)).await;
}

async fn wait_for_peers(nodes: &[&Node]) {
    let deadline = Instant::now() + WAIT;
    while nodes.iter().any(|n| n.bus.live_peers().len() + 1 < nodes.len()) {
        assert!(Instant::now() < deadline, "the nodes did not hear each other");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An inbox change made on one node reaches the user's tabs on the others as an `inbox` event
/// (with the counts), and closing a session on one node closes its tabs on the others.
async fn inbox_events_and_session_closes_cross_nodes(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    let mut badge = b.tab("alice", "phone").await;
    badge.follow_inbox();
    let mut laptop = b.tab("alice", "laptop").await;
    let seq = a.notify("alice", 1).await;
    assert_eq!(next_seq(&mut badge).await, seq);
    let read = a
        .notifier
        .inbox()
        .mark(&user("alice"), herald_core::Selection::Seqs(vec![seq]), herald_core::Mark::Read, None)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, badge.next()).await.expect("the mark in time") {
            Some(ClientEvent::Inbox(event)) if event.counts == read.change.counts => break,
            Some(ClientEvent::Inbox(_) | ClientEvent::KeepAlive) => {}
            other => panic!("expected the mark's inbox event, got {other:?}"),
        }
    }
    assert_eq!(read.change.counts.unread, 0);
    a.notifier.close_sessions(&user("alice"), Some(&SessionId::new("laptop").unwrap())).await.unwrap();
    loop {
        match tokio::time::timeout_at(deadline, laptop.next()).await.expect("closed in time") {
            Some(ClientEvent::Closed(reason)) => {
                assert_eq!(reason, herald_core::CloseReason::SessionClosed);
                break;
            }
            Some(_) => {}
            None => panic!("ended without closed"),
        }
    }
    assert_no_notification(&mut badge, Duration::from_millis(100)).await;
}

/// A node that shuts down says so: the others forget it at once (not after the 3 s of silence
/// that would also make them poll the store).
async fn a_node_that_leaves_is_gone_at_once(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    wait_for_peers(&[&a, &b]).await;
    let left = Instant::now();
    herald_core::Bus::shutdown(&b.bus).await;
    drop(b);
    while !a.bus.live_peers().is_empty() {
        assert!(left.elapsed() < Duration::from_secs(1), "still a peer after {:?}", left.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next event, which must be a `topic` event; returns its `data` as text.
async fn next_topic_data(subscription: &mut Subscription) -> String {
    match tokio::time::timeout(WAIT, subscription.next()).await.expect("an event in time") {
        Some(ClientEvent::Topic(event)) => event.data.get().to_owned(),
        other => panic!("expected a topic event, got {other:?}"),
    }
}

/// A topic's events reach the tabs listening on every node, once each; a listen made on a node
/// the tab is not connected to is done by the node it is on (and its refusal comes back).
async fn topic_events_and_listens_cross_nodes(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let limits = Limits { topics_per_client_max: 2, ..Limits::default() };
    let a = node(url, &cluster, "a", &store, limits.clone()).await;
    let b = node(url, &cluster, "b", &store, limits).await;
    wait_for_peers(&[&a, &b]).await;
    let room = herald_core::Topic::new("room:1").unwrap();
    let mut on_a = a.tab("alice", "s1").await;
    let info = on_a.info().clone();
    assert_eq!(a.bus.subscribed_topic_shards(), 0);
    // Answered once node a hears the topic: its shard's subscription is in force.
    a.notifier.listen(&info.user, &info.session, &info.client, std::slice::from_ref(&room)).await.unwrap();
    assert_eq!(a.bus.subscribed_topic_shards(), 1, "subscribed before the listen is answered");
    let mut on_b = b.tab("bob", "s1").await;
    let bob = on_b.info().clone();
    // Listened from node a, for a tab on node b.
    let topics =
        a.notifier.listen(&bob.user, &bob.session, &bob.client, std::slice::from_ref(&room)).await.unwrap();
    assert_eq!(topics, std::slice::from_ref(&room));
    let over = ["x", "y"].map(|t| herald_core::Topic::new(t).unwrap());
    let refused = a.notifier.listen(&bob.user, &bob.session, &bob.client, &over).await;
    assert!(
        matches!(
            refused,
            Err(herald_core::NotifyError::Listen(herald_core::ListenError::TooManyTopics {
                count: 3,
                max: 2
            }))
        ),
        "{refused:?}"
    );
    let listeners = a.notifier.topic_listeners(&room, 10).await.unwrap();
    let mut tabs: Vec<(String, Option<String>)> =
        listeners.tabs.iter().map(|t| (t.user.to_string(), t.node.as_deref().map(str::to_owned))).collect();
    tabs.sort();
    assert_eq!(tabs, [("alice".to_owned(), None), ("bob".to_owned(), Some("b".to_owned()))]);
    let presence = a.notifier.presence(&user("bob")).await.unwrap();
    assert_eq!(presence.sessions[0].clients[0].topics, std::slice::from_ref(&room), "{presence:?}");

    let publish = |n: u64| {
        let data = Arc::from(serde_json::value::RawValue::from_string(n.to_string()).unwrap());
        herald_core::Publish {
            target: herald_core::Target::Topic(room.clone()),
            durable: false,
            ..herald_core::Publish::to_user(user("nobody"), "t", data)
        }
    };
    // One after the other: two nodes' publishes have no order between them.
    assert_eq!(a.notifier.publish(publish(1)).await.unwrap().delivered, 1, "this node's tab");
    for tab in [&mut on_a, &mut on_b] {
        assert_eq!(next_topic_data(tab).await, "1");
    }
    b.notifier.publish(publish(2)).await.unwrap();
    for tab in [&mut on_a, &mut on_b] {
        assert_eq!(next_topic_data(tab).await, "2");
    }
    // Once each: no echo comes back as a second copy.
    for tab in [&mut on_a, &mut on_b] {
        if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), tab.next()).await {
            panic!("expected nothing more, got {event:?}");
        }
    }
    // Unlistened from node a: bob's tab on b gets no more, and b leaves the topic's shard.
    a.notifier.unlisten(&bob.user, &bob.session, &bob.client, std::slice::from_ref(&room)).await.unwrap();
    a.notifier.publish(publish(3)).await.unwrap();
    assert_eq!(next_topic_data(&mut on_a).await, "3");
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), on_b.next()).await {
        panic!("bob unlistened, got {event:?}");
    }
    let deadline = Instant::now() + WAIT;
    while b.bus.subscribed_topic_shards() != 0 {
        assert!(Instant::now() < deadline, "node b did not leave the topic's shard");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A node with no listener of a topic is not sent its events: b's traffic stays put.
    let before = b.bus.traffic().envelopes_in.load(Ordering::Relaxed);
    for n in 4..14 {
        a.notifier.publish(publish(n)).await.unwrap();
        assert_eq!(next_topic_data(&mut on_a).await, n.to_string());
    }
    let received = b.bus.traffic().envelopes_in.load(Ordering::Relaxed) - before;
    assert!(received < 10, "b got {received} envelopes while nobody there listens (heartbeats only)");
}

/// A user-scope listen made on one node (kept in the shared store) makes the user's tabs on the
/// other nodes listen too, and an unlisten stops them.
async fn a_user_scope_listen_reaches_the_users_tabs_on_every_node(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    wait_for_peers(&[&a, &b]).await;
    let room = herald_core::Topic::new("post:42").unwrap();
    let mut on_b = b.tab("alice", "phone").await;
    let listening = a.notifier.listen_scope(&user("alice"), None, std::slice::from_ref(&room)).await.unwrap();
    assert_eq!(listening, std::slice::from_ref(&room));
    let deadline = Instant::now() + WAIT;
    while b.hub.topic_listeners(&room).is_empty() || b.bus.subscribed_topic_shards() == 0 {
        assert!(Instant::now() < deadline, "node b's tab of alice did not start listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let data = Arc::from(serde_json::value::RawValue::from_string("7".into()).unwrap());
    let publish = herald_core::Publish {
        target: herald_core::Target::Topic(room.clone()),
        durable: false,
        ..herald_core::Publish::to_user(user("nobody"), "t", data)
    };
    a.notifier.publish(publish.clone()).await.unwrap();
    assert_eq!(next_topic_data(&mut on_b).await, "7");

    a.notifier.unlisten_scope(&user("alice"), None, std::slice::from_ref(&room)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    while !b.hub.topic_listeners(&room).is_empty() {
        assert!(Instant::now() < deadline, "node b's tab of alice did not stop listening");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.notifier.publish(publish).await.unwrap();
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), on_b.next()).await {
        panic!("alice unlistened, got {event:?}");
    }
}

/// Durable topic events published on two nodes at once reach a tab on one of them exactly once,
/// in tseq order (what crosses on the bus out of order is filled from the topic's log), and a
/// tab opened on the other node with a position resumes the topic from there.
async fn durable_topic_events_from_two_nodes_arrive_once_in_order_and_resume(url: &str) {
    let (cluster, store) = (cluster_name(), shared_store());
    let a = node(url, &cluster, "a", &store, Limits::default()).await;
    let b = node(url, &cluster, "b", &store, Limits::default()).await;
    wait_for_peers(&[&a, &b]).await;
    let room = herald_core::Topic::new("room:1").unwrap();
    let open = |node: &Node, positions: Vec<(herald_core::Topic, u64)>| {
        let (hub, store, room) = (node.hub.clone(), node.store.clone(), room.clone());
        async move {
            let (alice, session) = (user("alice"), SessionId::new("s1").unwrap());
            let request = SubscribeRequest {
                user: &alice,
                session: &session,
                client: None,
                transport: Transport::Sse,
                resume_after: None,
                epoch: None,
                topics: std::slice::from_ref(&room),
                topic_positions: &positions,
                types: &[],
            };
            let mut subscription = Subscription::open(&hub, &store, request).await.unwrap();
            match subscription.next().await {
                Some(ClientEvent::Hello { positions: started, .. }) => assert_eq!(&*started, &*positions),
                other => panic!("expected hello, got {other:?}"),
            }
            subscription
        }
    };
    let mut on_b = open(&b, vec![(room.clone(), 0)]).await;
    let publish = |node: &Node, n: u64| {
        let data = Arc::from(serde_json::value::RawValue::from_string(n.to_string()).unwrap());
        let publish = herald_core::Publish {
            target: herald_core::Target::Topic(room.clone()),
            ..herald_core::Publish::to_user(user("nobody"), "t", data)
        };
        let notifier = node.notifier.clone();
        async move { notifier.publish(publish).await.unwrap().topic.unwrap().tseq }
    };
    let publishes: Vec<_> = (0..40).map(|n| publish(if n % 2 == 0 { &a } else { &b }, n)).collect();
    let mut tseqs = futures::future::join_all(publishes).await;
    tseqs.sort_unstable();
    assert_eq!(tseqs, (1..=40).collect::<Vec<_>>(), "each publish got its own tseq");
    let mut got = Vec::new();
    while got.len() < 40 {
        match tokio::time::timeout(WAIT, on_b.next()).await.expect("a topic event in time") {
            Some(ClientEvent::Topic(event)) => got.push(event.tseq.expect("durable")),
            Some(ClientEvent::KeepAlive) => {}
            other => panic!("expected a topic event, got {other:?}"),
        }
    }
    assert_eq!(got, (1..=40).collect::<Vec<_>>());
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), on_b.next()).await {
        panic!("expected nothing more, got {event:?}");
    }
    let mut on_a = open(&a, vec![(room.clone(), 25)]).await;
    for tseq in 26..=40 {
        match tokio::time::timeout(WAIT, on_a.next()).await.expect("a replayed event in time") {
            Some(ClientEvent::Topic(event)) => assert_eq!(event.tseq, Some(tseq)),
            other => panic!("expected topic event {tseq}, got {other:?}"),
        }
    }
    assert_eq!(on_a.topic_positions(), [(room.clone(), 40)]);
}
