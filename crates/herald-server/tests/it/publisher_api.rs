//! The publisher API over real sockets: idempotency, presence, stored notifications, closing
//! sessions, and ids that need percent-encoding.

use crate::support;

use std::time::Duration;

use herald_server::ServerSettings;
use serde_json::{Value, json};
use support::{QUIET, TestServer, assert_error, enc};

#[tokio::test]
async fn a_repeated_idempotency_key_gets_the_first_answer_and_stores_and_delivers_once() {
    let server = TestServer::start().await;
    let (mut tab, _) = server.connect(&server.token("alice", None), "").await;
    server.notify_user("alice", json!("before")).await;
    tab.durable(1).await;

    let publish = json!({"to": {"user": "alice"}, "type": "message.new", "data": {"id": 7}, "idempotency_key": "msg-7"});
    let first = server.publish(publish.clone()).await;
    assert_eq!(first, (200, json!({"notifications": [{"user": "alice", "seq": 2}], "delivered": 1})));
    let again = server.publish(publish.clone()).await;
    assert_eq!(again, first);
    // Even with another body: the key decides.
    let other_body =
        server.publish(json!({"to": {"user": "bob"}, "data": "different", "idempotency_key": "msg-7"})).await;
    assert_eq!(other_body, first);

    assert_eq!(tab.durable(2).await["data"], json!({"id": 7}));
    tab.expect_silence(QUIET).await;
    let stored = server.stored("alice").await;
    assert_eq!(stored.iter().map(|n| n["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert!(server.stored("bob").await.is_empty());

    // Another key is another notification.
    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "idempotency_key": "msg-8"})).await;
    assert_eq!((status, &body["notifications"][0]["seq"]), (200, &json!(3)));
}

#[tokio::test]
async fn presence_lists_sessions_and_clients_with_transport_and_last_seq() {
    let server = TestServer::start().await;
    let mut tabs = Vec::new();
    let mut ids: Vec<(String, String)> = Vec::new();
    for session in ["s1", "s1", "s2", "s2"] {
        let (tab, hello) = server.connect(&server.token("alice", Some(session)), "").await;
        ids.push((session.to_owned(), hello["client"].as_str().unwrap().to_owned()));
        tabs.push(tab);
    }
    let expected = |presence: &Value, last_seq: u64| {
        assert_eq!(presence["user"], "alice");
        let sessions = presence["sessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{presence}");
        for (session, s) in ["s1", "s2"].iter().zip(sessions) {
            assert_eq!(s.as_object().unwrap().len(), 2, "{s}");
            assert_eq!(s["session"], *session);
            let mut clients: Vec<String> = s["clients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let object = c.as_object().unwrap();
                    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
                    keys.sort_unstable();
                    assert_eq!(keys, ["client", "connected_at", "last_seq", "node", "topics", "transport"]);
                    assert_eq!(c["topics"], json!([]), "no tab listens to a topic");
                    assert_eq!(
                        c["node"],
                        server.app.settings.node_id.as_str(),
                        "a single node's clients are its own"
                    );
                    assert_eq!((&c["transport"], &c["last_seq"]), (&json!("sse"), &json!(last_seq)), "{c}");
                    let at = c["connected_at"].as_str().unwrap();
                    assert!(at.len() >= 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T', "{at}");
                    c["client"].as_str().unwrap().to_owned()
                })
                .collect();
            clients.sort();
            let mut wanted: Vec<String> =
                ids.iter().filter(|(s, _)| s == session).map(|(_, c)| c.clone()).collect();
            wanted.sort();
            assert_eq!(clients, wanted);
        }
    };
    expected(&server.presence("alice").await, 0);

    server.notify_user("alice", json!(1)).await;
    for tab in &mut tabs {
        tab.durable(1).await;
    }
    expected(&server.presence("alice").await, 1);
    assert_eq!(server.presence("bob").await, json!({"user": "bob", "sessions": []}));
}

on_both_stream_paths! {
    async fn a_closed_stream_leaves_presence(path: StreamPath) {
        // The server learns that a client went away when it next writes to it: the keep-alive
        // interval bounds how long that takes.
        let server = TestServer::with_settings(ServerSettings {
            keepalive_interval: Duration::from_millis(100),
            ..support::settings()
        })
        .await
        .via(path);
        let token = server.token("alice", Some("s1"));
        let (tab, _) = server.connect(&token, "").await;
        let (_stays, hello) = server.connect(&token, "").await;
        server.wait_for_presence("alice", 2).await;
        drop(tab);
        server.wait_for_presence("alice", 1).await;
        assert_eq!(server.present_clients("alice").await, [hello["client"].as_str().unwrap()]);
    }
}

#[tokio::test]
async fn stored_notifications_are_listed_oldest_first_with_after_and_limit() {
    let server = TestServer::start().await;
    for n in 1..=5 {
        server.notify_user("alice", json!({ "n": n })).await;
    }
    let page = |body: &Value| -> Vec<u64> {
        body["notifications"].as_array().unwrap().iter().map(|n| n["seq"].as_u64().unwrap()).collect()
    };
    let (status, body) = server.get("/v1/users/alice/notifications").await;
    assert_eq!((status, page(&body)), (200, vec![1, 2, 3, 4, 5]));
    let first = &body["notifications"][0];
    assert_eq!(first.as_object().unwrap().len(), 4, "{first}");
    assert_eq!((&first["type"], &first["data"]), (&json!("notification"), &json!({"n": 1})));
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));

    let (status, body) = server.get("/v1/users/alice/notifications?after=1&limit=2").await;
    assert_eq!((status, page(&body)), (200, vec![2, 3]));
    let (status, body) = server.get("/v1/users/alice/notifications?after=3").await;
    assert_eq!((status, page(&body)), (200, vec![4, 5]));
    let (status, body) = server.get("/v1/users/alice/notifications?after=5").await;
    assert_eq!((status, body), (200, json!({"notifications": []})));
    let (status, body) = server.get("/v1/users/alice/notifications?limit=100").await;
    assert_eq!((status, page(&body).len()), (200, 5));
    assert_eq!(server.get("/v1/users/nobody/notifications").await, (200, json!({"notifications": []})));

    assert_error(&server.get("/v1/users/alice/notifications?limit=101").await, 400, "invalid_limit");
    assert_error(&server.get("/v1/users/alice/notifications?limit=0").await, 400, "invalid_limit");
    assert_error(&server.get("/v1/users/alice/notifications?after=x").await, 400, "invalid_after");
    assert_error(&server.get("/v1/users/alice/notifications?befor=1").await, 400, "invalid_query");
}

on_both_stream_paths! {
    async fn closing_a_session_closes_its_tabs_and_leaves_the_others(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let s1 = server.token("alice", Some("s1"));
        let (mut s1a, _) = server.connect(&s1, "").await;
        let (mut s1b, _) = server.connect(&s1, "").await;
        let (mut s2, _) = server.connect(&server.token("alice", Some("s2")), "").await;
        let (mut bob, _) = server.connect(&server.token("bob", Some("s1")), "").await;

        assert_eq!(server.delete("/v1/users/alice/sessions/s1").await, (200, json!({"closed": 2})));
        s1a.expect_closed("session_closed").await;
        s1b.expect_closed("session_closed").await;
        s2.expect_silence(QUIET).await;
        bob.expect_silence(QUIET).await;
        assert_eq!(server.delete("/v1/users/alice/sessions/s1").await, (200, json!({"closed": 0})));

        server.notify_user("alice", json!(1)).await;
        s2.durable(1).await;
        server.notify_user("bob", json!(1)).await;
        bob.durable(1).await;
        // A closed session may sign in again, with a token issued after the close (its old token
        // is revoked: see tests/revocation.rs).
        let new_s1 = support::sign(&json!({
            "sub": "alice", "sid": "s1", "iat": support::now_unix() + 1, "exp": support::now_unix() + 3600
        }));
        let (mut again, _) = server.connect(&new_s1, "").await;
        server.notify_user("alice", json!(2)).await;
        again.durable(2).await;
    }
}

#[tokio::test]
async fn closing_all_sessions_closes_every_tab_of_the_user_only() {
    let server = TestServer::start().await;
    let mut tabs = Vec::new();
    for session in ["s1", "s1", "s2"] {
        tabs.push(server.connect(&server.token("alice", Some(session)), "").await.0);
    }
    let (mut bob, _) = server.connect(&server.token("bob", None), "").await;
    assert_eq!(server.delete("/v1/users/alice/sessions").await, (200, json!({"closed": 3})));
    for tab in &mut tabs {
        tab.expect_closed("session_closed").await;
    }
    assert_eq!(server.presence("alice").await, json!({"user": "alice", "sessions": []}));
    assert_eq!(server.delete("/v1/users/alice/sessions").await, (200, json!({"closed": 0})));
    bob.expect_silence(QUIET).await;
    server.notify_user("bob", json!(1)).await;
    bob.durable(1).await;
}

#[tokio::test]
async fn user_and_session_ids_with_slashes_and_spaces_work_percent_encoded() {
    let server = TestServer::start().await;
    let user = "team/alice smith";
    let session = "laptop / chrome";
    let (mut tab, hello) = server.connect(&server.token(user, Some(session)), "").await;
    assert_eq!((&hello["user"], &hello["session"]), (&json!(user), &json!(session)));
    // Not to be confused with the users the path would name if it were split.
    let (mut decoy, _) = server.connect(&server.token("team", Some("laptop ")), "").await;

    assert_eq!(server.notify_user(user, json!("hi")).await, 1);
    assert_eq!(tab.durable(1).await["data"], "hi");
    decoy.expect_silence(QUIET).await;

    assert_eq!(server.stored(user).await.len(), 1);
    let presence = server.presence(user).await;
    assert_eq!((&presence["user"], &presence["sessions"][0]["session"]), (&json!(user), &json!(session)));
    let path = format!("/v1/users/{}/sessions/{}", enc(user), enc(session));
    assert_eq!(server.delete(&path).await, (200, json!({"closed": 1})));
    tab.expect_closed("session_closed").await;
    decoy.expect_silence(QUIET).await;
}

/// `/healthz` needs no auth and names the node, its store and its bus.
#[tokio::test]
async fn healthz_needs_no_auth() {
    let server = TestServer::start().await;
    let response = server.http.get(format!("{}/healthz", server.url)).send().await.unwrap();
    let node = herald_server::default_node_id().to_string();
    assert_eq!(
        support::answer(response).await,
        (200, json!({"status": "ok", "node": node, "store": "memory", "bus": "local"}))
    );
}
