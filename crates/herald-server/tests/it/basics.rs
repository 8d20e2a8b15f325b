//! Fan-out and targeting over real sockets: users, sessions, clients, `except_client`,
//! ephemeral notifications.

use crate::support;

use std::time::Duration;

use serde_json::json;
use support::TestServer;

#[tokio::test]
async fn a_user_notification_reaches_every_tab_of_every_session_once_and_no_other_user() {
    let server = TestServer::start().await;
    let s1 = server.token("alice", Some("s1"));
    let s2 = server.token("alice", Some("s2"));
    let mut tabs = Vec::new();
    for token in [&s1, &s1, &s2, &s2] {
        tabs.push(server.connect(token, "").await.0);
    }
    let (mut bob, _) = server.connect(&server.token("bob", None), "").await;

    let seq = server.notify_user("alice", json!({"text": "hi"})).await;
    assert_eq!(seq, 1);
    for tab in &mut tabs {
        let event = tab.notification().await;
        assert_eq!(event.id, Some(1));
        assert_eq!(event.data["seq"], 1);
        assert_eq!(event.data["type"], "notification");
        assert_eq!(event.data["data"], json!({"text": "hi"}));
        assert!(event.data["created_at"].as_str().unwrap().ends_with('Z'));
    }
    for tab in &mut tabs {
        tab.expect_silence(Duration::from_millis(100)).await;
    }
    bob.expect_silence(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn publish_answers_with_seqs_and_delivered_count() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let (_a, _) = server.connect(&token, "").await;
    let (_b, _) = server.connect(&token, "").await;
    let (status, body) =
        server.publish(json!({"to": {"user": "alice"}, "type": "message.new", "data": {}})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 2}));
    let (status, body) = server.publish(json!({"to": {"users": ["alice", "carol"]}, "data": 1})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"notifications": [{"user": "alice", "seq": 2}, {"user": "carol", "seq": 1}], "delivered": 2})
    );
}
