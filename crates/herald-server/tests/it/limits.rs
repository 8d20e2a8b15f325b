//! Limits over real sockets: eviction at the client and session limits, `replaced`, and a
//! lagging client closed and resuming without loss.

use crate::support;

use herald_core::Limits;
use serde_json::json;
use support::{QUIET, TestServer};

fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut limits = Limits::default();
    f(&mut limits);
    limits
}

on_both_stream_paths! {
    async fn a_third_tab_in_a_session_evicts_the_least_recently_active_one(path: StreamPath) {
        let server = TestServer::with_limits(limits(|l| l.clients_per_session_max = 2)).await.via(path);
        let token = server.token("alice", Some("s1"));
        let (mut first, first_hello) = server.connect(&token, "").await;
        let (mut second, second_hello) = server.connect(&token, "").await;
        let (mut other_session, other_hello) = server.connect(&server.token("alice", Some("s2")), "").await;
        let (mut third, third_hello) = server.connect(&token, "").await;

        first.expect_closed("evicted").await;
        let mut present = server.present_clients("alice").await;
        present.sort();
        let mut expected: Vec<String> =
            [&second_hello, &third_hello, &other_hello].iter().map(|h| h["client"].as_str().unwrap().to_owned()).collect();
        expected.sort();
        assert_eq!(present, expected);
        assert!(!present.iter().any(|c| first_hello["client"] == c.as_str()));

        let (status, body) = server.publish(json!({"to": {"user": "alice"}, "data": 1})).await;
        assert_eq!((status, &body["delivered"]), (200, &json!(3)), "{body}");
        for tab in [&mut second, &mut third, &mut other_session] {
            tab.durable(1).await;
            tab.expect_silence(QUIET).await;
        }
    }
}

#[tokio::test]
async fn a_third_session_evicts_every_tab_of_the_least_recently_active_session() {
    let server = TestServer::with_limits(limits(|l| l.sessions_per_user_max = 2)).await;
    let s1 = server.token("alice", Some("s1"));
    let (mut s1a, _) = server.connect(&s1, "").await;
    let (mut s1b, _) = server.connect(&s1, "").await;
    let (mut s2, _) = server.connect(&server.token("alice", Some("s2")), "").await;
    let (mut s3, _) = server.connect(&server.token("alice", Some("s3")), "").await;

    s1a.expect_closed("evicted").await;
    s1b.expect_closed("evicted").await;
    let presence = server.presence("alice").await;
    let mut sessions: Vec<&str> =
        presence["sessions"].as_array().unwrap().iter().map(|s| s["session"].as_str().unwrap()).collect();
    sessions.sort_unstable();
    assert_eq!(sessions, ["s2", "s3"]);

    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "data": 1})).await;
    assert_eq!((status, &body["delivered"]), (200, &json!(2)), "{body}");
    for tab in [&mut s2, &mut s3] {
        tab.durable(1).await;
        tab.expect_silence(QUIET).await;
    }
}

on_both_stream_paths! {
    async fn giving_back_a_connected_client_id_replaces_the_old_connection(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", Some("s1"));
        let (mut old, hello) = server.connect(&token, "").await;
        let client = hello["client"].as_str().unwrap().to_owned();

        let (mut new, new_hello) = server.connect(&token, &format!("client={client}")).await;
        assert_eq!(new_hello["client"], client.as_str());
        old.expect_closed("replaced").await;
        assert_eq!(server.present_clients("alice").await, [client.as_str()]);

        let (status, body) = server.publish(json!({"to": {"client": client}, "data": "to the new one"})).await;
        assert_eq!((status, &body["delivered"]), (200, &json!(1)), "{body}");
        assert_eq!(new.durable(1).await["data"], "to the new one");
    }
}

#[tokio::test]
async fn a_client_id_of_another_user_or_session_is_not_honoured() {
    let server = TestServer::start().await;
    let (mut alice_tab, hello) = server.connect(&server.token("alice", Some("s1")), "").await;
    let client = hello["client"].as_str().unwrap().to_owned();

    let (_bob, bob_hello) =
        server.connect(&server.token("bob", Some("s1")), &format!("client={client}")).await;
    let (_s2, s2_hello) =
        server.connect(&server.token("alice", Some("s2")), &format!("client={client}")).await;
    let (_forged, forged_hello) =
        server.connect(&server.token("alice", Some("s1")), "client=made-up-id").await;
    for other in [&bob_hello, &s2_hello, &forged_hello] {
        let id = other["client"].as_str().unwrap();
        assert_ne!(id, client);
        assert!(id.len() >= 16, "{id}");
    }
    alice_tab.expect_silence(QUIET).await;

    // Alice's tab is still the one the id reaches.
    let (status, body) = server.publish(json!({"to": {"client": client}, "data": 1})).await;
    assert_eq!((status, &body["delivered"]), (200, &json!(1)), "{body}");
    alice_tab.durable(1).await;
}

on_both_stream_paths! {
    async fn a_client_that_stops_reading_is_closed_lagging_and_resumes_without_loss(path: StreamPath) {
        let server = TestServer::with_limits(limits(|l| l.client_queue_len_max = 4)).await.via(path);
        let token = server.token("alice", None);
        let (mut tab, _) = server.connect(&token, "").await;
        let (mut reader, _) = server.connect(&server.token("alice", None), "").await;

        // Publish ~60 KiB notifications without reading `tab` until the server gives up on it
        // (socket buffers full, then its queue of 4). `reader` keeps up all along.
        let big = "x".repeat(60 * 1024);
        let mut total = 0u64;
        loop {
            total += 1;
            assert_eq!(server.notify_user("alice", json!({ "n": total, "pad": big })).await, total);
            assert_eq!(reader.durable(total).await["data"]["n"], total);
            if server.present_clients("alice").await.len() == 1 {
                break;
            }
            assert!(total < 2000, "the client was never closed as lagging");
        }
        for _ in 0..5 {
            total += 1;
            server.notify_user("alice", json!({ "n": total, "pad": big })).await;
        }

        // Reading again: every notification up to some seq, in order, then `closed: lagging`.
        let mut last = 0;
        loop {
            let event = tab.next().await.expect("the stream ended without `closed`");
            if event.event == "closed" {
                assert_eq!(event.data, json!({"reason": "lagging"}));
                break;
            }
            assert_eq!((event.event.as_str(), event.id), ("notification", Some(last + 1)), "{:?}", event.id);
            assert_eq!(event.data["data"]["n"], last + 1);
            last += 1;
        }
        tab.expect_end().await;
        assert!(last < total, "lagging was announced only after everything: {last} of {total}");

        // Resuming from the last seq seen gets the rest.
        let (mut tab, _) = server.connect(&token, &format!("last_event_id={last}")).await;
        for seq in last + 1..=total {
            assert_eq!(tab.durable(seq).await["data"]["n"], seq);
        }
        tab.expect_silence(QUIET).await;
        for seq in total - 4..=total {
            assert_eq!(reader.durable(seq).await["data"]["n"], seq);
        }
    }
}
