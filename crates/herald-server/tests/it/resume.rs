//! Resuming over real sockets: `Last-Event-ID` and `?last_event_id=`, the hello `id:`, the
//! hand-over from replay to live under racing publishes, gap filling under concurrent
//! publishes, `reset` past retention, and resuming after a restart on the same database.

use crate::support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use herald_core::{Limits, Retention};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use support::{EVENT_WAIT, QUIET, STREAM_PATHS, Sse, TestServer, assert_error};

/// Publishes `data` 1..=n to `user` and checks the seqs are `first..first + n`.
async fn publish_n(server: &TestServer, user: &str, first: u64, n: u64) {
    for i in 0..n {
        assert_eq!(server.notify_user(user, json!({ "n": first + i })).await, first + i);
    }
}

/// Reads `count` durable notifications and checks they are `first..first + count`, in order,
/// each with its own payload.
async fn expect_range(sse: &mut Sse, first: u64, count: u64) {
    for seq in first..first + count {
        assert_eq!(sse.durable(seq).await["data"], json!({ "n": seq }));
    }
}

on_both_stream_paths! {
    async fn resuming_with_the_last_event_id_header_gets_exactly_what_was_missed_then_live_ones(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", Some("s1"));
        let (mut tab, _) = server.connect(&token, "").await;
        publish_n(&server, "alice", 1, 3).await;
        expect_range(&mut tab, 1, 3).await;
        drop(tab);

        publish_n(&server, "alice", 4, 5).await;
        let (mut tab, hello) = server.connect_with(&token, "", Some("3")).await;
        assert_eq!(hello.id, Some(3));
        assert_eq!(hello.data["last_seq"], 8);
        expect_range(&mut tab, 4, 5).await;
        tab.expect_silence(QUIET).await;

        publish_n(&server, "alice", 9, 2).await;
        expect_range(&mut tab, 9, 2).await;
        tab.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn resuming_with_the_last_event_id_query_gets_exactly_what_was_missed_then_live_ones() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 2).await;
    let (mut tab, hello) = server.connect_with(&token, "last_event_id=0", None).await;
    assert_eq!((hello.id, &hello.data["last_seq"]), (Some(0), &json!(2)));
    expect_range(&mut tab, 1, 2).await;
    drop(tab);

    publish_n(&server, "alice", 3, 5).await;
    let (mut tab, hello) = server.connect_with(&token, "last_event_id=2", None).await;
    assert_eq!((hello.id, &hello.data["last_seq"]), (Some(2), &json!(7)));
    expect_range(&mut tab, 3, 5).await;
    tab.expect_silence(QUIET).await;
    publish_n(&server, "alice", 8, 1).await;
    expect_range(&mut tab, 8, 1).await;
}

#[tokio::test]
async fn the_query_resume_point_wins_over_the_header() {
    let server = TestServer::start().await;
    publish_n(&server, "alice", 1, 4).await;
    let (mut tab, hello) =
        server.connect_with(&server.token("alice", None), "last_event_id=2", Some("1")).await;
    assert_eq!(hello.id, Some(2));
    expect_range(&mut tab, 3, 2).await;
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resuming_from_the_hello_id_gets_what_was_published_while_away() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 3).await;
    // A new stream starts at the user's last seq: nothing old is replayed.
    let (mut tab, hello) = server.connect_with(&token, "", None).await;
    assert_eq!(hello.id, Some(3));
    assert_eq!(hello.data["last_seq"], 3);
    tab.expect_silence(QUIET).await;
    drop(tab);

    publish_n(&server, "alice", 4, 2).await;
    let (mut tab, hello) = server.connect_with(&token, "", Some(&hello.id.unwrap().to_string())).await;
    assert_eq!(hello.id, Some(3));
    expect_range(&mut tab, 4, 2).await;
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_resume_that_skips_other_sessions_notifications_has_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let (_s2_tab, _) = server.connect(&server.token("alice", Some("s2")), "").await;
    for (i, to) in ["s1", "s2", "s1", "s2", "s2", "s1"].iter().enumerate() {
        let (status, body) =
            server.publish(json!({"to": {"user": "alice", "session": to}, "data": { "n": i + 1 }})).await;
        assert_eq!((status, &body["notifications"][0]["seq"]), (200, &json!(i + 1)), "{body}");
    }
    let (mut tab, _) = server.connect(&token, "last_event_id=0").await;
    for seq in [1, 3, 6] {
        assert_eq!(tab.durable(seq).await["data"], json!({ "n": seq }));
    }
    tab.expect_silence(QUIET).await;
}

/// One round of the race: publisher tasks publish while the client disconnects at random
/// points and resumes from the last seq it saw; it must see every seq exactly once, in order.
async fn race_round(server: &Arc<TestServer>, round: u64) {
    let mut rng = StdRng::seed_from_u64(round);
    let user = format!("racer-{round}");
    let token = server.token(&user, Some("s"));
    let publishers = rng.random_range(2..=5u64);
    let per_publisher = rng.random_range(8..=20u64);
    let total = publishers * per_publisher;

    let mut tasks = Vec::new();
    for p in 0..publishers {
        let (server, user, seed) = (server.clone(), user.clone(), rng.random::<u64>());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            for k in 0..per_publisher {
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..3000))).await;
                let (status, body) =
                    server.publish(json!({"to": {"user": user}, "data": {"p": p, "k": k}})).await;
                assert_eq!(status, 200, "{body}");
            }
        }));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = 0u64;
    let mut payloads: Vec<Value> = Vec::new();
    let mut client: Option<String> = None;
    let mut connections = 0;
    while last < total {
        assert!(tokio::time::Instant::now() < deadline, "round {round}: stuck at {last} of {total}");
        connections += 1;
        let mut query = match &client {
            Some(id) if rng.random_bool(0.5) => format!("client={id}"),
            _ => String::new(),
        };
        let header = if rng.random_bool(0.5) {
            Some(last.to_string())
        } else {
            query.push_str(&format!("&last_event_id={last}"));
            None
        };
        let path = STREAM_PATHS[rng.random_range(0..2)];
        let mut sse = server.sse_via(path, &token, &query, header.as_deref()).await;
        // Disconnect after a random number of events (0: before even reading the hello), or
        // after a random pause with nothing to read.
        let budget = rng.random_range(0..=8);
        for _ in 0..budget {
            let wait = Duration::from_millis(rng.random_range(1..=15));
            let event = match sse.next_within(wait).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("round {round}: the stream ended"),
                Err(()) => break,
            };
            match event.event.as_str() {
                "hello" => {
                    assert_eq!(event.id, Some(last), "round {round}: {event:?}");
                    client = Some(event.data["client"].as_str().unwrap().to_owned());
                }
                "notification" => {
                    assert_eq!(event.id, Some(last + 1), "round {round}: gap or duplicate: {event:?}");
                    assert_eq!(event.data["seq"], last + 1);
                    last += 1;
                    payloads.push(event.data["data"].clone());
                }
                _ => panic!("round {round}: unexpected {event:?}"),
            }
        }
        drop(sse);
        if rng.random_bool(0.3) {
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..=3))).await;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let distinct: BTreeSet<String> = payloads.iter().map(Value::to_string).collect();
    assert_eq!(payloads.len() as u64, total, "round {round}");
    assert_eq!(distinct.len() as u64, total, "round {round}: a payload was seen twice");
    assert!(connections > 1, "round {round} never reconnected");
    assert_eq!(server.stored(&user).await.len() as u64, total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn resume_is_exact_while_publishes_race_random_disconnects_over_30_rounds() {
    let server = Arc::new(TestServer::start().await);
    for round in 0..30 {
        race_round(&server, round).await;
    }
}

/// `tasks` publisher tasks each publish `per_task` notifications to one user at once, while
/// `clients` tabs are connected: every tab must see 1..=N exactly once, in order.
async fn concurrent_publishes_reach_every_tab_in_order(
    server: TestServer,
    clients: usize,
    tasks: u64,
    per_task: u64,
) {
    let server = Arc::new(server);
    let total = tasks * per_task;
    let mut readers = Vec::new();
    for i in 0..clients {
        let session = format!("s{}", i % 3);
        let (mut tab, hello) = server.connect(&server.token("alice", Some(&session)), "").await;
        assert_eq!(hello["last_seq"], 0);
        readers.push(tokio::spawn(async move {
            let seqs = tab.seqs(total as usize).await;
            tab.expect_silence(QUIET).await;
            seqs
        }));
    }
    let mut publishers = Vec::new();
    for t in 0..tasks {
        let server = server.clone();
        publishers.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in 0..per_task {
                let (status, body) =
                    server.publish(json!({"to": {"user": "alice"}, "data": {"t": t, "k": k}})).await;
                assert_eq!(status, 200, "{body}");
                seqs.push(body["notifications"][0]["seq"].as_u64().unwrap());
            }
            seqs
        }));
    }
    let mut acknowledged = BTreeSet::new();
    for publisher in publishers {
        acknowledged.extend(publisher.await.unwrap());
    }
    assert_eq!(acknowledged, (1..=total).collect::<BTreeSet<_>>());
    let expected: Vec<u64> = (1..=total).collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_to_one_user_reach_every_tab_once_in_order() {
    concurrent_publishes_reach_every_tab_in_order(TestServer::start().await, 5, 16, 25).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_to_one_user_reach_every_tab_once_in_order_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = support::sqlite(&dir.path().join("herald.db"), Retention::default());
    concurrent_publishes_reach_every_tab_in_order(TestServer::with_store(store).await, 5, 16, 25).await;
}

fn keep_five() -> Retention {
    Retention { max_per_user: 5, ..Retention::default() }
}

#[tokio::test]
async fn resuming_past_retention_gets_reset_then_live_ones() {
    let server = TestServer::with_retention(keep_five()).await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 10).await;
    let (mut tab, hello) = server.connect_with(&token, "last_event_id=2", None).await;
    assert_eq!((hello.id, &hello.data["last_seq"]), (Some(2), &json!(10)));
    let reset = tab.next().await.unwrap();
    assert_eq!((reset.event.as_str(), reset.id, &reset.data), ("reset", Some(10), &json!({"last_seq": 10})));
    tab.expect_silence(QUIET).await;
    publish_n(&server, "alice", 11, 2).await;
    expect_range(&mut tab, 11, 2).await;
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resuming_at_the_oldest_retained_boundary_is_no_reset() {
    let server = TestServer::with_retention(keep_five()).await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 10).await;
    // 6..=10 are retained: resuming from 5 misses nothing; from 4 it would miss 5.
    let (mut tab, _) = server.connect(&token, "last_event_id=5").await;
    expect_range(&mut tab, 6, 5).await;
    tab.expect_silence(QUIET).await;
    let (mut tab, _) = server.connect(&token, "last_event_id=4").await;
    let reset = tab.next().await.unwrap();
    assert_eq!((reset.event.as_str(), reset.id, &reset.data), ("reset", Some(10), &json!({"last_seq": 10})));
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resuming_ahead_of_the_users_last_seq_is_refused() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 1, 2).await;
    assert_error(
        &server.stream_refused(Some(&token), "last_event_id=3", None).await,
        400,
        "invalid_last_event_id",
    );
    assert_error(&server.stream_refused(Some(&token), "", Some("3")).await, 400, "invalid_last_event_id");
    // The exact last seq is fine.
    let (mut tab, hello) = server.connect_with(&token, "", Some("2")).await;
    assert_eq!(hello.id, Some(2));
    tab.expect_silence(QUIET).await;
}

#[tokio::test]
async fn resuming_after_a_restart_on_the_same_database_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let server = TestServer::with(
        Limits::default(),
        support::settings(),
        support::sqlite(&path, Retention::default()),
    )
    .await;
    let token = server.token("alice", None);
    let (mut tab, _) = server.connect(&token, "").await;
    publish_n(&server, "alice", 1, 3).await;
    expect_range(&mut tab, 1, 2).await; // 3 was sent but this tab only got to 2.
    server.shutdown().await;
    let rest = tokio::time::timeout(EVENT_WAIT, async {
        let mut rest = Vec::new();
        while let Some(event) = tab.next().await {
            rest.push(event);
        }
        rest
    })
    .await
    .unwrap();
    assert_eq!(
        rest.last().map(|e| (e.event.as_str(), e.data.clone())),
        Some(("closed", json!({"reason": "shutdown"})))
    );

    let server = TestServer::with_store(support::sqlite(&path, Retention::default())).await;
    publish_n(&server, "alice", 4, 2).await;
    let (mut tab, hello) = server.connect_with(&token, "", Some("2")).await;
    assert_eq!((hello.id, &hello.data["last_seq"]), (Some(2), &json!(5)));
    expect_range(&mut tab, 3, 3).await;
    tab.expect_silence(QUIET).await;
}
