//! The cases every adapter must pass, each a function of the [`Kind`] it runs against
//! (`main.rs` runs each for NATS and for Redis). They use only [`herald_cluster::broker::connect`]
//! and the [`Broker`](herald_cluster::Broker) trait: what holds here holds for the bus.

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_cluster::broker::{self, CONNECT_TIMEOUT, OPERATION_TIMEOUT};
use herald_cluster::{BrokerError, BrokerEvent};
use tokio::sync::mpsc;

use crate::support::{Kind, Node, free_port, fresh_subject, message};

macro_rules! url_or_skip {
    ($kind:expr, $name:expr) => {
        match $kind.url_or_skip($name) {
            Some(url) => url,
            None => return,
        }
    };
}

/// A message published by one node reaches another node subscribed to its subject.
pub async fn round_trip_between_two_connections(kind: Kind) {
    let url = url_or_skip!(kind, "round_trip_between_two_connections");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    let subject = fresh_subject("round-trip");
    a.broker.subscribe(&subject).await.unwrap();
    b.broker.publish(&subject, Bytes::from_static(b"hello")).await.unwrap();
    a.expect_message(&subject, b"hello").await;
    a.expect_nothing();
    assert_eq!(a.broker.kind(), kind.scheme());
}

/// A node's own publishes on a subject it follows come back over Redis and not over NATS
/// (`no_echo`: a third less to send and receive in a cluster of three). Fails if NATS echoes
/// (the option dropped) or Redis stops echoing (so the bus's echo drop would be untested).
pub async fn own_publishes_come_back_over_redis_only(kind: Kind) {
    let url = url_or_skip!(kind, "own_publishes_come_back_over_redis_only");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    let (subject, marker) = (fresh_subject("own"), fresh_subject("own-marker"));
    a.broker.subscribe(&subject).await.unwrap();
    a.broker.subscribe(&marker).await.unwrap();
    a.broker.publish(&subject, Bytes::from_static(b"mine")).await.unwrap();
    // From another connection after it: what `a` receives before this marker is all it gets.
    b.broker.publish(&marker, Bytes::from_static(b"end")).await.unwrap();
    match kind {
        Kind::Redis => a.expect_messages_in_any_order(&[(&subject, b"mine"), (&marker, b"end")]).await,
        Kind::Nats => a.expect_message(&marker, b"end").await,
    }
    expect_quiet(&mut a).await;
}

/// 1,000 messages from one publisher on one subject arrive all, in the order sent. Fails if
/// the adapter reorders (a task per message, say) or loses any.
pub async fn one_publishers_order_is_kept(kind: Kind) {
    let url = url_or_skip!(kind, "one_publishers_order_is_kept");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    let subject = fresh_subject("order");
    a.broker.subscribe(&subject).await.unwrap();
    let publisher = tokio::spawn({
        let (broker, subject) = (b.broker.clone(), subject.clone());
        async move {
            for n in 0..1000u32 {
                broker.publish(&subject, Bytes::copy_from_slice(&n.to_be_bytes())).await.unwrap();
            }
        }
    });
    for n in 0..1000u32 {
        a.expect_message(&subject, &n.to_be_bytes()).await;
    }
    publisher.await.unwrap();
}

/// A second `subscribe` to a subject is the same subscription: one publish, one message.
pub async fn subscribing_twice_is_one_subscription(kind: Kind) {
    let url = url_or_skip!(kind, "subscribing_twice_is_one_subscription");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    let (subject, marker) = (fresh_subject("twice"), fresh_subject("twice-marker"));
    a.broker.subscribe(&subject).await.unwrap();
    a.broker.subscribe(&subject).await.unwrap();
    a.broker.subscribe(&marker).await.unwrap();
    b.broker.publish(&subject, Bytes::from_static(b"once")).await.unwrap();
    b.broker.publish(&marker, Bytes::from_static(b"end")).await.unwrap();
    a.expect_messages_in_any_order(&[(&subject, b"once"), (&marker, b"end")]).await;
    expect_quiet(&mut a).await; // no second "once"
}

/// Nothing more comes for a while (what was published before has had time to arrive).
async fn expect_quiet(node: &mut Node) {
    tokio::time::sleep(QUIET_FOR).await;
    node.expect_nothing();
}

/// How long [`expect_quiet`] waits: messages on loopback arrive within milliseconds.
const QUIET_FOR: Duration = Duration::from_millis(200);

/// After `unsubscribe` nothing more of the subject comes; other subjects still do.
pub async fn unsubscribe_stops_delivery(kind: Kind) {
    let url = url_or_skip!(kind, "unsubscribe_stops_delivery");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    let (subject, marker) = (fresh_subject("unsub"), fresh_subject("unsub-marker"));
    a.broker.subscribe(&subject).await.unwrap();
    a.broker.subscribe(&marker).await.unwrap();
    b.broker.publish(&subject, Bytes::from_static(b"before")).await.unwrap();
    a.expect_message(&subject, b"before").await;
    a.broker.unsubscribe(&subject).await.unwrap();
    a.broker.unsubscribe(&subject).await.unwrap(); // nothing if there is none
    b.broker.publish(&subject, Bytes::from_static(b"after")).await.unwrap();
    b.broker.publish(&marker, Bytes::from_static(b"end")).await.unwrap();
    a.expect_message(&marker, b"end").await;
    expect_quiet(&mut a).await;
    // Subscribing again works: the subject was forgotten, not broken.
    a.broker.subscribe(&subject).await.unwrap();
    b.broker.publish(&subject, Bytes::from_static(b"again")).await.unwrap();
    a.expect_message(&subject, b"again").await;
}

/// A subscription is in force when `subscribe` returns: a message another connection publishes
/// right after is received. Fails (on some of the 50 tries) if `subscribe` returned before the
/// broker had the subscription (a socket flush rather than a round trip).
pub async fn subscribe_is_in_force_on_return(kind: Kind) {
    let url = url_or_skip!(kind, "subscribe_is_in_force_on_return");
    let (mut a, b) = (Node::connect(&url).await, Node::connect(&url).await);
    for n in 0..50 {
        let subject = fresh_subject("in-force");
        a.broker.subscribe(&subject).await.unwrap();
        b.broker.publish(&subject, Bytes::from(format!("{n}"))).await.unwrap();
        a.expect_message(&subject, format!("{n}").as_bytes()).await;
    }
}

/// URLs this adapter's scheme cannot take are refused before any connection, with a reason.
pub async fn invalid_urls_are_refused(kind: Kind) {
    let scheme = kind.scheme();
    let cases = [
        ("ftp://127.0.0.1:21".to_owned(), "scheme"),
        (format!("{scheme}://"), "host"),
        (format!("{scheme}://:1234"), "host"),
        (format!("{scheme}://127.0.0.1:99999"), "port"),
        (format!("{scheme}://127.0.0.1:port"), "port"),
        (format!("{scheme}://127.0.0.1:1234/x"), "path"),
    ];
    for (url, about) in cases {
        let (tx, _rx) = mpsc::channel(1);
        match broker::connect(&url, tx).await {
            Err(BrokerError::InvalidUrl { url: refused, reason }) => {
                assert_eq!(refused, url);
                assert!(!reason.is_empty());
                eprintln!("{url}: refused ({about}): {reason}");
            }
            Err(other) => panic!("{url} ({about}): {other}"),
            Ok(_) => panic!("{url} ({about}) was taken"),
        }
    }
}

/// A port nothing listens on fails `Unavailable` (at once: refused), not after retries.
pub async fn unreachable_port_is_unavailable(kind: Kind) {
    let url = format!("{}://127.0.0.1:{}", kind.scheme(), free_port());
    let (tx, _rx) = mpsc::channel(1);
    let started = Instant::now();
    let connected = broker::connect(&url, tx).await;
    assert!(matches!(connected, Err(BrokerError::Unavailable(_))), "{url}: {:?}", connected.err());
    assert!(started.elapsed() < CONNECT_TIMEOUT, "took {:?}", started.elapsed());
}

/// A server that accepts the connection but never answers the handshake fails `Unavailable`
/// within `CONNECT_TIMEOUT` (and not much sooner: the bound is the one waited for).
pub async fn silent_server_is_unavailable_within_the_bound(kind: Kind) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("{}://{}", kind.scheme(), listener.local_addr().unwrap());
    let accept = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // open and silent
        }
    });
    let (tx, _rx) = mpsc::channel(1);
    let started = Instant::now();
    let connected = broker::connect(&url, tx).await;
    let took = started.elapsed();
    accept.abort();
    assert!(matches!(connected, Err(BrokerError::Unavailable(_))), "{url}: {:?}", connected.err());
    assert!(took <= CONNECT_TIMEOUT + Duration::from_millis(500), "took {took:?}");
    eprintln!("{url}: silent server refused after {took:?}");
}

/// A bus that does not read: its channel fills, messages are dropped, and one `Lagged` comes
/// once it reads again; the adapter then works as before. Fails if the adapter blocks its
/// reader on the full channel (the message after the `Lagged` would not come) or never says
/// `Lagged`.
pub async fn a_full_events_channel_gives_lagged(kind: Kind) {
    let url = url_or_skip!(kind, "a_full_events_channel_gives_lagged");
    let capacity = 8;
    let (mut a, b) = (Node::connect_with_capacity(&url, capacity).await, Node::connect(&url).await);
    let subject = fresh_subject("lagged");
    a.broker.subscribe(&subject).await.unwrap();
    for n in 0..500u32 {
        b.broker.publish(&subject, Bytes::copy_from_slice(&n.to_be_bytes())).await.unwrap();
    }
    // Let the 500 reach `a` while nobody reads (the adapter must drop, not wait).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut delivered = 0;
    loop {
        match a.next_event("the Lagged").await {
            BrokerEvent::Lagged => break,
            BrokerEvent::Message { .. } => delivered += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(delivered <= capacity, "{delivered} messages before the Lagged, capacity {capacity}");
    assert!(a.broker.is_connected());
    b.broker.publish(&subject, Bytes::from_static(b"after")).await.unwrap();
    loop {
        match a.next_event("the message after the Lagged").await {
            event if event == message(&subject, b"after") => break,
            BrokerEvent::Message { .. } | BrokerEvent::Lagged => {} // sent before "after"
            other => panic!("unexpected {other:?}"),
        }
    }
    // And `a` still publishes.
    let own = fresh_subject("lagged-own");
    let mut b = b;
    b.broker.subscribe(&own).await.unwrap();
    a.broker.publish(&own, Bytes::from_static(b"own")).await.unwrap();
    b.expect_message(&own, b"own").await;
}

/// While the adapter's connection is up, a publish or subscribe waits at most
/// `OPERATION_TIMEOUT` (checked on the restart case's down side too).
pub fn assert_within_operation_timeout(took: Duration, what: &str) {
    assert!(took <= OPERATION_TIMEOUT + Duration::from_millis(500), "{what} took {took:?}");
}
