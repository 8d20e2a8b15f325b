//! Long-polling over real sockets: `GET /v1/poll?after=N&timeout=S&client=C`.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use herald_core::Retention;
use serde_json::{Value, json};
use support::{TestServer, assert_error};
use tokio::time::Instant;

async fn publish_n(server: &TestServer, user: &str, n: u64) {
    for _ in 0..n {
        server.notify_user(user, json!("x")).await;
    }
}

fn seqs(body: &Value) -> Vec<u64> {
    body["notifications"].as_array().unwrap().iter().map(|n| n["seq"].as_u64().unwrap()).collect()
}

/// The server's epoch, which every answer carries.
fn epoch(server: &TestServer) -> String {
    server.app.store.epoch().to_string()
}

fn client(body: &Value) -> String {
    body["client"].as_str().unwrap().to_owned()
}

/// A poll, with how long it took.
async fn timed_poll(server: &TestServer, token: &str, query: &str) -> (u16, Value, Duration) {
    let started = Instant::now();
    let (status, body) = server.poll(token, query).await;
    (status, body, started.elapsed())
}

#[tokio::test]
async fn a_poll_answers_at_once_with_what_is_retained_after_after() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    for n in 1..=3 {
        server.notify_user("alice", json!({ "n": n })).await;
    }
    let (status, body, took) = timed_poll(&server, &token, "after=1&timeout=60").await;
    assert_eq!(status, 200, "{body}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["client", "epoch", "last_seq", "notifications"]);
    assert_eq!(body["epoch"], json!(epoch(&server)));
    assert_eq!(body["last_seq"], 3);
    let notifications = body["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 2);
    for (n, expected) in notifications.iter().zip(2..) {
        assert_eq!(
            (&n["seq"], &n["type"], &n["data"]),
            (&json!(expected), &json!("notification"), &json!({"n": expected}))
        );
        assert!(n["created_at"].as_str().unwrap().ends_with('Z'));
    }
    // The same objects as the stored ones.
    assert_eq!(notifications[..], server.stored("alice").await[1..]);
}

#[tokio::test]
async fn a_waiting_poll_answers_on_a_live_publish_well_before_its_timeout() {
    let server = Arc::new(TestServer::start().await);
    publish_n(&server, "alice", 2).await;
    let token = server.token("alice", None);
    let poll = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move { timed_poll(&server, &token, "after=2&timeout=20").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished(), "the poll answered before anything was published");
    assert_eq!(server.notify_user("alice", json!("live")).await, 3);
    let (status, body, took) = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(3), "took {took:?}");
    assert_eq!((seqs(&body), &body["last_seq"]), (vec![3], &json!(3)));
    assert_eq!(body["notifications"][0]["data"], "live");
}

#[tokio::test]
async fn a_poll_without_after_waits_for_the_next_one() {
    let server = Arc::new(TestServer::start().await);
    publish_n(&server, "alice", 4).await;
    let token = server.token("alice", None);
    let poll = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move { server.poll(&token, "timeout=10").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!poll.is_finished());
    server.notify_user("alice", json!("fifth")).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
    assert_eq!((status, seqs(&body), &body["last_seq"]), (200, vec![5], &json!(5)), "{body}");
}

#[tokio::test]
async fn a_poll_times_out_with_an_empty_list_and_the_same_last_seq() {
    let server = TestServer::start().await;
    publish_n(&server, "alice", 2).await;
    let token = server.token("alice", None);
    let (status, body, took) = timed_poll(&server, &token, "after=2&timeout=1").await;
    assert_eq!(status, 200, "{body}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_millis(2500), "took {took:?}");
    assert_eq!(
        body,
        json!({"client": client(&body), "notifications": [], "last_seq": 2, "epoch": epoch(&server)})
    );

    let (status, body, took) = timed_poll(&server, &token, "after=2&timeout=0").await;
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"client": client(&body), "notifications": [], "last_seq": 2, "epoch": epoch(&server)})
    );
}

#[tokio::test]
async fn the_same_poll_repeated_gets_the_same_answer() {
    let server = TestServer::start().await;
    publish_n(&server, "alice", 5).await;
    let token = server.token("alice", Some("s1"));
    let (_, first) = server.poll(&token, "after=2&timeout=5").await;
    let query = format!("after=2&timeout=5&client={}", client(&first));
    let (status, again) = server.poll(&token, &query).await;
    let (_, third) = server.poll(&token, &query).await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&again), [3, 4, 5]);
    assert_eq!(again, first);
    assert_eq!(third, first);
}

#[tokio::test]
async fn a_poller_keeps_its_client_id_and_shows_in_presence_as_poll_between_polls() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    publish_n(&server, "alice", 1).await;
    let (_, first) = server.poll(&token, "after=0&timeout=1").await;
    let id = client(&first);
    assert_eq!(seqs(&first), [1]);

    let presence = server.presence("alice").await;
    let clients = &presence["sessions"][0]["clients"];
    assert_eq!(presence["sessions"].as_array().unwrap().len(), 1);
    assert_eq!(presence["sessions"][0]["session"], "s1");
    assert_eq!(clients.as_array().unwrap().len(), 1);
    assert_eq!(
        (&clients[0]["client"], &clients[0]["transport"], &clients[0]["last_seq"]),
        (&json!(id), &json!("poll"), &json!(1))
    );

    publish_n(&server, "alice", 1).await;
    let (_, second) = server.poll(&token, &format!("after=1&timeout=1&client={id}")).await;
    assert_eq!((client(&second), seqs(&second)), (id.clone(), vec![2]));
    assert_eq!(server.present_clients("alice").await, [id.as_str()]);

    // Without `client=`, a poll is a new client.
    let (_, other) = server.poll(&token, "after=2&timeout=0").await;
    assert_ne!(client(&other), id);
    assert_eq!(server.present_clients("alice").await.len(), 2);
}

#[tokio::test]
async fn a_poll_answer_holds_at_most_100_notifications() {
    let server = TestServer::start().await;
    publish_n(&server, "alice", 150).await;
    let token = server.token("alice", None);
    let (status, first) = server.poll(&token, "after=0&timeout=5").await;
    assert_eq!((status, seqs(&first), &first["last_seq"]), (200, (1..=100).collect(), &json!(100)));
    let (status, second) =
        server.poll(&token, &format!("after=100&timeout=5&client={}", client(&first))).await;
    assert_eq!((status, seqs(&second), &second["last_seq"]), (200, (101..=150).collect(), &json!(150)));
}

#[tokio::test]
async fn a_poll_past_retention_answers_at_once_with_reset() {
    let server = TestServer::with_retention(Retention { max_per_user: 5, ..Retention::default() }).await;
    publish_n(&server, "alice", 10).await;
    let token = server.token("alice", None);
    let (status, body, took) = timed_poll(&server, &token, "after=2&timeout=5").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"client": client(&body), "notifications": [], "last_seq": 10, "epoch": epoch(&server), "reset": true})
    );
    assert!(took < Duration::from_secs(2), "a reset answer waited {took:?}");
    // Going on from there: no reset.
    publish_n(&server, "alice", 1).await;
    let (_, body) = server.poll(&token, &format!("after=10&timeout=5&client={}", client(&body))).await;
    assert_eq!(
        body,
        json!({"client": client(&body), "notifications": [body["notifications"][0].clone()], "last_seq": 11, "epoch": epoch(&server)})
    );
    assert_eq!(seqs(&body), [11]);
}

#[tokio::test]
async fn a_poll_skips_seqs_meant_for_other_sessions() {
    let server = TestServer::start().await;
    for session in ["s2", "s2"] {
        let (status, _) =
            server.publish(json!({"to": {"user": "alice", "session": session}, "data": 1})).await;
        assert_eq!(status, 200);
    }
    let token = server.token("alice", Some("s1"));
    let (status, body) = server.poll(&token, "after=0&timeout=1").await;
    assert_eq!((status, seqs(&body), &body["last_seq"]), (200, vec![], &json!(2)), "{body}");
    server.publish(json!({"to": {"user": "alice", "session": "s1"}, "data": "mine"})).await;
    let (_, body) = server.poll(&token, "after=2&timeout=1").await;
    assert_eq!((seqs(&body), &body["last_seq"]), (vec![3], &json!(3)));
}

#[tokio::test]
async fn a_waiting_poll_gets_an_ephemeral_notification_without_seq() {
    let server = Arc::new(TestServer::start().await);
    let token = server.token("alice", None);
    let poll = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move { server.poll(&token, "after=0&timeout=10").await })
    };
    // Wait until the poll is attached, so that the ephemeral one has somewhere to go.
    server.wait_for_presence("alice", 1).await;
    let (status, answer) =
        server.publish(json!({"to": {"user": "alice"}, "data": "hey", "durable": false})).await;
    assert_eq!((status, answer), (200, json!({"notifications": [], "delivered": 1})));
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), poll).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["last_seq"], 0);
    let notifications = body["notifications"].as_array().unwrap();
    assert_eq!(notifications.len(), 1);
    assert_eq!((notifications[0].get("seq"), &notifications[0]["data"]), (None, &json!("hey")));
}

#[tokio::test]
async fn a_waiting_poll_is_answered_closed_when_its_client_id_polls_again() {
    let server = Arc::new(TestServer::start().await);
    let token = server.token("alice", Some("s1"));
    let (_, first) = server.poll(&token, "timeout=0").await;
    let id = client(&first);
    let waiting = {
        let (server, token, id) = (server.clone(), token.clone(), id.clone());
        tokio::spawn(async move { timed_poll(&server, &token, &format!("timeout=20&client={id}")).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, newer) = server.poll(&token, &format!("timeout=0&client={id}")).await;
    assert_eq!((status, client(&newer)), (200, id.clone()));
    let (status, body, took) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(
        (status, body),
        (
            200,
            json!({"client": id, "notifications": [], "last_seq": 0, "epoch": epoch(&server), "closed": "replaced"})
        )
    );
}

#[tokio::test]
async fn a_waiting_poll_is_answered_closed_when_its_session_is_closed() {
    let server = Arc::new(TestServer::start().await);
    let token = server.token("alice", Some("s1"));
    let waiting = {
        let (server, token) = (server.clone(), token.clone());
        tokio::spawn(async move { server.poll(&token, "timeout=20").await })
    };
    server.wait_for_presence("alice", 1).await;
    assert_eq!(server.delete("/v1/users/alice/sessions/s1").await, (200, json!({"closed": 1})));
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), waiting).await.unwrap().unwrap();
    assert_eq!(
        (status, &body["closed"], &body["notifications"]),
        (200, &json!("session_closed"), &json!([])),
        "{body}"
    );
}

#[tokio::test]
async fn a_poll_timeout_out_of_range_or_not_a_number_is_400_invalid_timeout() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    for timeout in ["61", "-1", "abc", "1.5", "99999999999999999999999"] {
        assert_error(&server.poll(&token, &format!("timeout={timeout}")).await, 400, "invalid_timeout");
    }
    // 60 is the most; with something retained it answers at once.
    publish_n(&server, "alice", 1).await;
    let (status, body, took) = timed_poll(&server, &token, "after=0&timeout=60").await;
    assert_eq!((status, seqs(&body)), (200, vec![1]));
    assert!(took < Duration::from_secs(2));
    assert_eq!(server.present_clients("alice").await.len(), 1, "only the good poll left a client");
}

#[tokio::test]
async fn a_poll_after_that_is_not_a_number_or_is_ahead_is_400() {
    let server = TestServer::start().await;
    publish_n(&server, "alice", 2).await;
    let token = server.token("alice", None);
    for after in ["abc", "-1", "2x"] {
        assert_error(&server.poll(&token, &format!("after={after}&timeout=0")).await, 400, "invalid_after");
    }
    assert_error(&server.poll(&token, "after=3&timeout=0").await, 400, "invalid_after");
    assert!(server.present_clients("alice").await.is_empty());
    let (status, body) = server.poll(&token, "after=2&timeout=0").await;
    assert_eq!((status, &body["last_seq"]), (200, &json!(2)));
}

#[tokio::test]
async fn a_poll_with_a_bad_token_is_401() {
    let server = TestServer::start().await;
    assert_error(&server.poll("not-a-token", "timeout=0").await, 401, "invalid_token");
    assert_error(&server.poll(support::API_KEY, "timeout=0").await, 401, "invalid_token");
    let response = server.http.get(format!("{}/v1/poll?timeout=0", server.url)).send().await.unwrap();
    assert_error(&support::answer(response).await, 401, "missing_token");
}

/// Between two polls the client's queue is kept (parked) for its next poll: what is sent
/// meanwhile and not stored (an ephemeral notification, an `inbox` event) comes with the next
/// poll that resumes where the last one ended. A poll from an older position starts afresh and
/// gets only what the store holds.
#[tokio::test]
async fn what_comes_between_two_polls_waits_for_the_next_one() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    server.notify_user("alice", json!(1)).await;
    let (_, first) = server.poll(&token, "after=0&timeout=0").await;
    assert_eq!(seqs(&first), [1]);
    let id = client(&first);

    // Between the polls: a durable notification, an ephemeral one, and an inbox change.
    server.notify_user("alice", json!(2)).await;
    let (status, ephemeral) =
        server.publish(json!({"to": {"user": "alice"}, "data": "typing", "durable": false})).await;
    assert_eq!((status, &ephemeral["delivered"]), (200, &json!(1)), "the parked poller is a recipient");
    let marked = server
        .http
        .post(format!("{}/v1/inbox/mark", server.url))
        .bearer_auth(&token)
        .json(&json!({"seqs": [1], "as": "read"}))
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), 200);

    let (status, second) = server.poll(&token, &format!("after=1&timeout=5&client={id}")).await;
    assert_eq!(status, 200, "{second}");
    let notifications = second["notifications"].as_array().unwrap();
    let got: Vec<(Option<&Value>, &Value)> =
        notifications.iter().map(|n| (n.get("seq"), &n["data"])).collect();
    assert_eq!(got, [(Some(&json!(2)), &json!(2)), (None, &json!("typing"))]);
    let inbox = second["inbox"].as_array().expect("the inbox event that came between the polls");
    assert_eq!(
        (inbox.len(), &inbox[0]["op"], &inbox[0]["as"], &inbox[0]["seqs"]),
        (1, &json!("mark"), &json!("read"), &json!([1]))
    );
    assert_eq!(second["last_seq"], 2);

    // A retry from an older position: from the store, so without what was not stored.
    let (_, again) = server.poll(&token, &format!("after=1&timeout=0&client={id}")).await;
    assert_eq!((client(&again), seqs(&again), again.get("inbox")), (id, vec![2], None));
}

/// A parked poller whose queue fills up before its next poll is ended with `lagging`, which
/// that poll reports; the poll after it starts afresh and gets the durable ones from the store.
#[tokio::test]
async fn a_poller_whose_queue_filled_between_polls_is_told_lagging() {
    let limits = herald_core::Limits { client_queue_len_max: 5, ..herald_core::Limits::default() };
    let server = TestServer::with_limits(limits).await;
    let token = server.token("alice", Some("s1"));
    let (_, first) = server.poll(&token, "after=0&timeout=0").await;
    let id = client(&first);
    publish_n(&server, "alice", 6).await;

    let (status, second) = server.poll(&token, &format!("after=0&timeout=5&client={id}")).await;
    assert_eq!((status, &second["closed"], seqs(&second)), (200, &json!("lagging"), vec![]), "{second}");
    let (status, third) = server.poll(&token, &format!("after=0&timeout=5&client={id}")).await;
    assert_eq!((status, seqs(&third), third.get("closed")), (200, (1..=6).collect(), None), "{third}");
}

/// `timeout=0` answers with what is there now: the deadline never cuts the store read short.
/// (It did: with SQLite, whose reads run on another thread, the past deadline fired while the
/// first read was in flight and the answer came back empty, for 16 polls in 100.)
#[tokio::test]
async fn a_poll_with_timeout_0_always_answers_with_what_is_retained() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::with_store(support::sqlite(&dir.path().join("herald.db"), Retention::default())).await;
    let token = server.token("alice", None);
    publish_n(&server, "alice", 5).await;
    for poll in 0..100 {
        let (status, body) = server.poll(&token, "after=0&timeout=0").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!((seqs(&body), &body["last_seq"]), (vec![1, 2, 3, 4, 5], &json!(5)), "poll {poll}: {body}");
    }
}

/// A `timeout=0` poller is parked between its polls like any other: an ephemeral notification
/// published between two polls (the second resuming with `client` and `after` = `last_seq`)
/// comes with the second.
#[tokio::test]
async fn an_ephemeral_published_between_two_timeout_0_polls_comes_with_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let server =
        TestServer::with_store(support::sqlite(&dir.path().join("herald.db"), Retention::default())).await;
    // A user per round, so that each first poll starts afresh (reading the store) and is the
    // user's only client.
    for round in 0..20 {
        let user = format!("user{round}");
        let token = server.token(&user, Some("s1"));
        publish_n(&server, &user, 2).await;
        let (_, first) = server.poll(&token, "timeout=0").await;
        let (id, last_seq) = (client(&first), first["last_seq"].as_u64().unwrap());
        let (status, published) =
            server.publish(json!({"to": {"user": user}, "data": round, "durable": false})).await;
        assert_eq!(
            (status, &published["delivered"]),
            (200, &json!(1)),
            "round {round}: the poller is present"
        );
        let (status, second) = server.poll(&token, &format!("after={last_seq}&timeout=0&client={id}")).await;
        assert_eq!(status, 200, "{second}");
        let got: Vec<(Option<&Value>, &Value)> =
            second["notifications"].as_array().unwrap().iter().map(|n| (n.get("seq"), &n["data"])).collect();
        assert_eq!(got, [(None, &json!(round))], "round {round}: {second}");
    }
}
