//! Presence webhooks against a real receiver (`receiver.rs`, an HTTP server on 127.0.0.1):
//! what is sent and in which order, the grace period, signatures, batches (their size and
//! their wait), a receiver that is down for 30 s or past the retry bound, a full queue, what
//! `/metrics` says of it all, and two nodes sharing one store, one of which stops without
//! reporting its tabs offline. Grace periods and bounds are shortened through `WebhookConfig`
//! so that most tests take seconds (the 30 s one takes 30–65 s: the issue's figure, and the
//! back-off as it is); the mechanism is the one `herald serve` runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_core::{NodeId, Retention, Store};
use herald_server::webhook::{SignatureError, WEBHOOK_BACKOFF_MAX, WebhookConfig, verify};
use herald_server::{Herald, ServerSettings};
use serde_json::Value;

use crate::receiver::Receiver;
use crate::support::{API_KEY, SECRET, Sse, TestServer, memory, now_unix, settings};

const WEBHOOK_SECRET: &str = "whsec-test";

/// How long a test waits for webhook events it expects.
const WAIT: Duration = Duration::from_secs(10);

fn config(receiver: &Receiver, grace: Duration) -> WebhookConfig {
    let mut config = WebhookConfig::new(&receiver.url(), WEBHOOK_SECRET).unwrap();
    config.offline_grace = grace;
    config
}

async fn server(config: WebhookConfig, store: Arc<dyn Store>, node: &str) -> TestServer {
    let settings = ServerSettings { node_id: NodeId::new(node).unwrap(), ..settings() };
    TestServer::from_builder(Herald::builder(store, SECRET, API_KEY).settings(settings).webhook(config)).await
}

/// A tab of `user` in `session`, connected (its `hello` read).
async fn tab(server: &TestServer, user: &str, session: &str) -> Sse {
    server.connect(&server.token(user, Some(session)), "").await.0
}

/// `type user [session] #user_seq` of each event (`dropped N [users]` for a `dropped` event).
fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let kind = e["type"].as_str().unwrap();
            if kind == "dropped" {
                return format!("dropped {} {}", e["count"], e["users"]);
            }
            let session = e["session"].as_str().map(|s| format!(" {s}")).unwrap_or_default();
            format!("{kind} {}{session} #{}", e["user"].as_str().unwrap(), e["user_seq"])
        })
        .collect()
}

/// The events without repeats (at-least-once: a batch may come twice), by `id`.
fn distinct(events: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    events.into_iter().filter(|e| seen.insert(e["id"].as_str().unwrap().to_owned())).collect()
}

/// A user comes online with their first tab and goes offline after the grace period once the
/// last is gone; a session the same; a second tab changes nothing. Each event is numbered per
/// user, carries its node, and every request's signature verifies with the secret only.
/// Fails if events are missing, repeated, out of order, or signed otherwise.
#[tokio::test]
async fn users_and_sessions_go_online_and_offline_in_order_and_signed() {
    let receiver = Receiver::start().await;
    let server =
        server(config(&receiver, Duration::from_millis(500)), memory(Retention::default()), "node-1").await;
    let first = tab(&server, "alice", "s1").await;
    receiver.wait_for(2, WAIT).await;
    let second = tab(&server, "alice", "s1").await;
    let other_session = tab(&server, "alice", "s2").await;
    receiver.wait_for(3, WAIT).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(receiver.events().len(), 3, "s1 still has a tab: {:?}", summary(&receiver.events()));
    drop(second);
    receiver.wait_for(4, WAIT).await;
    drop(other_session);
    let events = receiver.wait_for(6, WAIT).await;
    assert_eq!(
        summary(&events),
        [
            "user.online alice #1",
            "session.online alice s1 #2",
            "session.online alice s2 #3",
            "session.offline alice s1 #4",
            "session.offline alice s2 #5",
            "user.offline alice #6",
        ]
    );
    for event in &events {
        assert!(event["id"].as_str().unwrap().starts_with("evt_"), "{event}");
        assert_eq!(event["node"], "node-1");
        assert!(event["at_ms"].as_i64().unwrap() > 1_600_000_000_000, "{event}");
        assert!(event.get("client").is_none(), "no per-tab events unless asked for");
    }
    let posts = receiver.posts();
    for post in &posts {
        assert_eq!(verify(WEBHOOK_SECRET.as_bytes(), &post.signature, &post.body, now_unix(), 300), Ok(()));
        assert_eq!(
            verify(b"another secret", &post.signature, &post.body, now_unix(), 300),
            Err(SignatureError::Mismatch)
        );
        let mut tampered = post.body.clone();
        tampered.push(b' ');
        assert_eq!(
            verify(WEBHOOK_SECRET.as_bytes(), &post.signature, &tampered, now_unix(), 300),
            Err(SignatureError::Mismatch)
        );
    }
    let counters = &server.app.webhook_counters;
    assert_eq!(counters.delivered_events.load(Ordering::Relaxed), 6);
    assert_eq!(counters.delivered_batches.load(Ordering::Relaxed), posts.len() as u64);
    assert_eq!(counters.dropped_events.load(Ordering::Relaxed), 0);
    server.shutdown().await;
}

/// A reload (the tab goes and a new one comes back at once) within the grace period sends
/// nothing at all; once the tab is gone for longer, the user goes offline. Fails if the grace
/// period is not applied (an offline and an online would come).
#[tokio::test]
async fn a_reload_within_the_grace_period_sends_nothing() {
    let receiver = Receiver::start().await;
    let grace = Duration::from_secs(2);
    let server = server(config(&receiver, grace), memory(Retention::default()), "node-1").await;
    let first = tab(&server, "bob", "s1").await;
    receiver.wait_for(2, WAIT).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reloaded = tab(&server, "bob", "s1").await;
    tokio::time::sleep(grace + Duration::from_secs(1)).await;
    assert_eq!(summary(&receiver.events()), ["user.online bob #1", "session.online bob s1 #2"]);
    drop(reloaded);
    let events = receiver.wait_for(4, WAIT).await;
    assert_eq!(summary(&events[2..]), ["session.offline bob s1 #3", "user.offline bob #4"]);
}

/// Per-tab events when asked for: a tab's `client.online` after its session's, its
/// `client.offline` before it, each at the end of its own grace period (not the last tab's).
/// Fails if a tab's grace end waits for another tab's.
#[tokio::test]
async fn client_events_come_with_their_tabs_when_asked_for() {
    let receiver = Receiver::start().await;
    let mut config = config(&receiver, Duration::from_millis(800));
    config.client_events = true;
    let server = server(config, memory(Retention::default()), "node-1").await;
    let first = tab(&server, "carol", "s1").await;
    let events = receiver.wait_for(3, WAIT).await;
    let first_id = events[2]["client"].as_str().unwrap().to_owned();
    let second = tab(&server, "carol", "s1").await;
    let events = receiver.wait_for(4, WAIT).await;
    let second_id = events[3]["client"].as_str().unwrap().to_owned();
    drop(first);
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        summary(&receiver.events())[4..],
        ["client.offline carol s1 #5"],
        "the first tab's grace is over, the second's is not"
    );
    let events = receiver.wait_for(8, WAIT).await;
    assert_eq!(
        summary(&events),
        [
            "user.online carol #1",
            "session.online carol s1 #2",
            "client.online carol s1 #3",
            "client.online carol s1 #4",
            "client.offline carol s1 #5",
            "client.offline carol s1 #6",
            "session.offline carol s1 #7",
            "user.offline carol #8",
        ]
    );
    assert_eq!(
        (events[4]["client"].as_str(), events[5]["client"].as_str()),
        (Some(&*first_id), Some(&*second_id))
    );
}

/// How long the receiver is down in the next test: the issue's 30 s. The back-off doubles
/// from 0.5 s (each wait drawn between half and all of it), so by then at least 6 POSTs failed
/// and the sender waits in the 16 s or the 30 s (the cap's) step.
const RECEIVER_DOWN: Duration = Duration::from_secs(30);

/// A receiver that is down for 30 s (connections refused) gets every event once it is back,
/// within the back-off's cap (and a margin) of its return, in order per user, each user's
/// `user_seq` 1, 2, 3… without a gap, and no `dropped` event. Fails if a failed batch is not
/// retried, retried out of order, or retried later than the cap allows.
#[tokio::test]
async fn a_receiver_down_for_30_s_gets_everything_afterwards_in_order() {
    let mut receiver = Receiver::start().await;
    let grace = Duration::from_millis(400);
    let server = server(config(&receiver, grace), memory(Retention::default()), "node-1").await;
    receiver.stop();
    let down_at = tokio::time::Instant::now();
    let users: Vec<String> = (0..5).map(|i| format!("user{i}")).collect();
    let mut tabs = Vec::new();
    for user in &users {
        tabs.push(tab(&server, user, "s").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    tabs.clear();
    tokio::time::sleep(grace + Duration::from_millis(800)).await;
    for user in &users {
        tabs.push(tab(&server, user, "s").await);
    }
    tokio::time::sleep_until(down_at + RECEIVER_DOWN).await;
    assert!(receiver.events().is_empty());
    let retries = server.app.webhook_counters.retries.load(Ordering::Relaxed);
    assert!(retries >= 6, "only {retries} failed POSTs: the back-off never reached its 16 s step");
    receiver.start_again().await;
    let back_at = tokio::time::Instant::now();
    // The longest wait between two tries, and a margin for the batch's wait and the POST.
    let bound = WEBHOOK_BACKOFF_MAX + Duration::from_secs(5);
    let expected = users.len() * 6;
    let events = loop {
        let events = distinct(receiver.events());
        if events.len() >= expected {
            break events;
        }
        assert!(
            back_at.elapsed() < bound,
            "{expected} events expected within {bound:?} of the receiver's return; got {:#?}",
            summary(&events)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(events.len(), expected, "{:#?}", summary(&events));
    let mut per_user: HashMap<String, Vec<String>> = HashMap::new();
    for event in &events {
        let user = event["user"].as_str().unwrap().to_owned();
        per_user.entry(user).or_default().push(summary(std::slice::from_ref(event)).remove(0));
    }
    for user in &users {
        assert_eq!(
            per_user[user],
            [
                format!("user.online {user} #1"),
                format!("session.online {user} s #2"),
                format!("session.offline {user} s #3"),
                format!("user.offline {user} #4"),
                format!("user.online {user} #5"),
                format!("session.online {user} s #6"),
            ]
        );
    }
    assert_eq!(server.app.webhook_counters.dropped_events.load(Ordering::Relaxed), 0);
}

/// Batches: 150 events queued while the receiver is down come, once it is back, as two POSTs
/// of 100 and 50 (`WEBHOOK_BATCH_EVENTS_MAX`), every user's events in order. Fails if a POST
/// holds more than 100 events, or the queue is sent one small batch at a time.
#[tokio::test]
async fn queued_events_come_in_batches_of_at_most_100() {
    let mut receiver = Receiver::start().await;
    let mut config = config(&receiver, Duration::from_secs(10));
    // Short waits between tries: the queue is sent soon after the receiver is back.
    config.backoff_max = Duration::from_secs(1);
    let server = server(config, memory(Retention::default()), "node-1").await;
    receiver.stop();
    // 75 users with a tab each: a `user.online` and a `session.online` each, 150 events.
    let users: Vec<String> = (0..75).map(|i| format!("batch{i:02}")).collect();
    let mut tabs = Vec::new();
    for user in &users {
        tabs.push(tab(&server, user, "s").await);
    }
    let counters = server.app.webhook_counters.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while counters.queued_events.load(Ordering::Relaxed) < 150 {
        assert!(tokio::time::Instant::now() < deadline, "the 150 events were never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(counters.retries.load(Ordering::Relaxed) >= 1, "POSTs were tried and failed");
    receiver.start_again().await;
    let events = receiver.wait_for(150, WAIT).await;
    let sizes: Vec<usize> = receiver.posts().iter().map(|post| post.events().len()).collect();
    assert_eq!(sizes, [100, 50], "the POSTs' sizes");
    let mut per_user: HashMap<String, Vec<String>> = HashMap::new();
    for event in &events {
        let user = event["user"].as_str().unwrap().to_owned();
        per_user.entry(user).or_default().push(summary(std::slice::from_ref(event)).remove(0));
    }
    assert_eq!(per_user.len(), users.len());
    for user in &users {
        assert_eq!(per_user[user], [format!("user.online {user} #1"), format!("session.online {user} s #2")]);
    }
    assert_eq!(counters.delivered_batches.load(Ordering::Relaxed), 2);
    assert_eq!(counters.dropped_events.load(Ordering::Relaxed), 0);
}

/// A lone event waits `WEBHOOK_BATCH_WAIT` (250 ms) for others before it is POSTed, and not
/// much longer. Fails if the sender POSTs at once (no batching) or holds events far longer.
#[tokio::test]
async fn a_lone_event_is_posted_after_the_batch_wait() {
    let receiver = Receiver::start().await;
    let server =
        server(config(&receiver, Duration::from_secs(10)), memory(Retention::default()), "node-1").await;
    let _first = tab(&server, "jay", "s1").await;
    receiver.wait_for(2, WAIT).await;
    // The sender is idle again; a second session makes one event, `session.online`, queued
    // after `before` (the tab connects after it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = std::time::Instant::now();
    let _second = tab(&server, "jay", "s2").await;
    let events = receiver.wait_for(3, WAIT).await;
    assert_eq!(summary(&events[2..]), ["session.online jay s2 #3"]);
    let post = receiver.posts().pop().unwrap();
    assert_eq!(post.events().len(), 1, "alone in its POST");
    let waited = post.received_at - before;
    // The issue's 250 ms: timers never fire early, 10 ms of slack for the clocks' rounding.
    assert!(waited >= Duration::from_millis(240), "POSTed after {waited:?}");
    assert!(waited < Duration::from_millis(1_500), "POSTed only after {waited:?}");
}

/// Events still undelivered past the retry bound are dropped; once the receiver is back it
/// first gets one `dropped` event with their count and users, then what came after. Fails if
/// nothing is dropped (retried forever) or the loss is not reported.
#[tokio::test]
async fn a_receiver_down_past_the_bound_gets_a_dropped_event() {
    let mut receiver = Receiver::start().await;
    let mut config = config(&receiver, Duration::from_millis(300));
    config.retry_for = Duration::from_secs(1);
    let server = server(config, memory(Retention::default()), "node-1").await;
    let admin = herald_server::start_admin(
        server.app.clone(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .unwrap();
    receiver.stop();
    let mut tabs = Vec::new();
    for user in ["dan", "eve", "fay"] {
        tabs.push(tab(&server, user, "s").await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.app.webhook_counters.dropped_events.load(Ordering::Relaxed), 6);
    receiver.start_again().await;
    let events = receiver.wait_for(1, WAIT).await;
    assert_eq!(summary(&events), [r#"dropped 6 ["dan","eve","fay"]"#]);
    assert_eq!(events[0]["users_truncated"], false);
    assert_eq!(events[0]["node"], "node-1");
    tabs.push(tab(&server, "gus", "s").await);
    let events = receiver.wait_for(3, WAIT).await;
    assert_eq!(summary(&events[1..]), ["user.online gus #1", "session.online gus s #2"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(distinct(receiver.events()).len(), 3, "the dropped event is sent once");
    tabs.push(tab(&server, "hub", "s").await);
    receiver.wait_for(5, WAIT).await;
    // The same, as `/metrics` tells it: three POSTs (the `dropped` event's, gus's, hub's), four
    // events delivered (a `dropped` event is not one of them), six dropped, as many retries as
    // failed, none waiting.
    let retries = server.app.webhook_counters.retries.load(Ordering::Relaxed);
    assert!(retries >= 1);
    let scraped = crate::metrics::scrape(&admin).await;
    let series = |name: &str| scraped.get(name).copied().unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(
        [
            series("herald_webhook_deliveries_total"),
            series("herald_webhook_events_delivered_total"),
            series("herald_webhook_dropped_total"),
            series("herald_webhook_retries_total"),
            series("herald_webhook_queue_events"),
        ],
        [3.0, 4.0, 6.0, retries as f64, 0.0]
    );
    assert_eq!(receiver.posts().len(), 3);
    admin.shutdown().await;
}

/// A graceful shutdown sends what is queued before the node stops (cutting the back-off short),
/// within `WEBHOOK_SHUTDOWN_DRAIN`. Fails if the queue is dropped with the node.
#[tokio::test]
async fn a_shutdown_sends_what_is_queued() {
    let mut receiver = Receiver::start().await;
    let server =
        server(config(&receiver, Duration::from_secs(10)), memory(Retention::default()), "node-1").await;
    receiver.stop();
    let _tab = tab(&server, "ian", "s").await;
    // Several failed tries: the back-off is at 1-2 s now.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(server.app.webhook_counters.retries.load(Ordering::Relaxed) >= 2);
    receiver.start_again().await;
    let counters = server.app.webhook_counters.clone();
    server.shutdown().await;
    assert_eq!(summary(&receiver.events()), ["user.online ian #1", "session.online ian s #2"]);
    assert_eq!(counters.queued_events.load(Ordering::Relaxed), 0);
}

/// A full queue drops the newest events (counted, reported first when the receiver is back);
/// what was queued before arrives in order.
#[tokio::test]
async fn a_full_queue_drops_and_reports() {
    let mut receiver = Receiver::start().await;
    let mut config = config(&receiver, Duration::from_millis(300));
    config.queue_events_max = 4;
    let server = server(config, memory(Retention::default()), "node-1").await;
    receiver.stop();
    let mut tabs = Vec::new();
    for user in ["u1", "u2", "u3"] {
        tabs.push(tab(&server, user, "s").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    receiver.start_again().await;
    let events = receiver.wait_for(5, WAIT).await;
    assert_eq!(
        summary(&events),
        [
            r#"dropped 2 ["u3"]"#,
            "user.online u1 #1",
            "session.online u1 s #2",
            "user.online u2 #1",
            "session.online u2 s #2",
        ]
    );
}

/// Two nodes on one store (as a cluster's nodes share PostgreSQL): a user with tabs on both is
/// online once; a node that stops without reporting its tabs offline (its heartbeats stop) is
/// found dead by the other, which reports its sessions offline (the user stays online: a tab
/// is left on the live node); the user goes offline with their last tab anywhere.
#[tokio::test]
async fn a_dead_node_s_sessions_are_reported_offline_by_another_node() {
    let receiver = Receiver::start().await;
    let store = memory(Retention::default());
    let mut config = config(&receiver, Duration::from_millis(300));
    config.node_dead_after = Duration::from_millis(1_500);
    // Node A's grace outlives it: it never reports its own tab offline, as a node killed.
    let mut config_a = config.clone();
    config_a.offline_grace = Duration::from_secs(60);
    let node_a = server(config_a, store.clone(), "node-a").await;
    let node_b = server(config, store, "node-b").await;
    let on_a = tab(&node_a, "hal", "s1").await;
    receiver.wait_for(2, WAIT).await;
    let on_b = tab(&node_b, "hal", "s2").await;
    let also_on_b = tab(&node_b, "hal", "s1").await;
    receiver.wait_for(3, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        summary(&receiver.events()),
        ["user.online hal #1", "session.online hal s1 #2", "session.online hal s2 #3"],
        "online once, whichever node"
    );
    // Node A stops without reporting its tab offline: its row stays in the store until node B
    // finds it dead (no heartbeat for `node_dead_after`).
    node_a.shutdown().await;
    drop(on_a);
    drop(also_on_b);
    let events = receiver.wait_for(4, WAIT).await;
    assert_eq!(summary(&events[3..]), ["session.offline hal s1 #4"]);
    assert_eq!(events[3]["node"], "node-a", "released by node B on behalf of the dead node");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.events().len(), 4, "s2 is still online on node B: {:?}", summary(&receiver.events()));
    drop(on_b);
    let events = receiver.wait_for(6, WAIT).await;
    assert_eq!(summary(&events[4..]), ["session.offline hal s2 #5", "user.offline hal #6"]);
    assert_eq!(events[4]["node"], "node-b");
}
