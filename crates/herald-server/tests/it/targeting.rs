//! Targets over real sockets: one session, one client, `except_client`, several users, and
//! ephemeral notifications.

use crate::support;

use serde_json::{Value, json};
use support::{QUIET, Sse, TestServer, assert_error};

/// Alice with sessions s1 and s2, two tabs each: `[s1a, s1b, s2a, s2b]` and their client ids.
async fn alice_two_by_two(server: &TestServer) -> (Vec<Sse>, Vec<String>) {
    let mut tabs = Vec::new();
    let mut ids = Vec::new();
    for session in ["s1", "s1", "s2", "s2"] {
        let (tab, hello) = server.connect(&server.token("alice", Some(session)), "").await;
        assert_eq!(hello["session"], session);
        ids.push(hello["client"].as_str().unwrap().to_owned());
        tabs.push(tab);
    }
    (tabs, ids)
}

async fn all_silent(tabs: &mut [Sse]) {
    for tab in tabs {
        tab.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn a_session_target_reaches_only_that_sessions_two_tabs() {
    let server = TestServer::start().await;
    let (mut tabs, _) = alice_two_by_two(&server).await;

    let (status, body) = server
        .publish(json!({"to": {"user": "alice", "session": "s1"}, "type": "t", "data": {"n": 1}}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 2}))
    );
    for tab in &mut tabs[..2] {
        let data = tab.durable(1).await;
        assert_eq!((&data["type"], &data["data"]), (&json!("t"), &json!({"n": 1})));
    }
    all_silent(&mut tabs).await;

    // s2's tabs skip seq 1 silently and get the next user-wide one.
    assert_eq!(server.notify_user("alice", json!({"n": 2})).await, 2);
    for tab in &mut tabs {
        assert_eq!(tab.durable(2).await["data"], json!({"n": 2}));
    }
    all_silent(&mut tabs).await;
}

#[tokio::test]
async fn a_client_target_reaches_exactly_that_tab() {
    let server = TestServer::start().await;
    let (mut tabs, ids) = alice_two_by_two(&server).await;

    let (status, body) = server.publish(json!({"to": {"client": ids[2]}, "data": "just you"})).await;
    assert_eq!(
        (status, body),
        (200, json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 1}))
    );
    assert_eq!(tabs[2].durable(1).await["data"], "just you");
    all_silent(&mut tabs).await;
}

#[tokio::test]
async fn except_client_leaves_out_the_tab_that_caused_it() {
    let server = TestServer::start().await;
    let (mut tabs, ids) = alice_two_by_two(&server).await;

    let (status, body) =
        server.publish(json!({"to": {"user": "alice"}, "data": 1, "except_client": ids[1]})).await;
    assert_eq!(
        (status, body),
        (200, json!({"notifications": [{"user": "alice", "seq": 1}], "delivered": 3}))
    );
    for i in [0, 2, 3] {
        tabs[i].durable(1).await;
    }
    all_silent(&mut tabs).await;

    // Also within a session target.
    let (status, body) = server
        .publish(json!({"to": {"user": "alice", "session": "s2"}, "data": 2, "except_client": ids[3]}))
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"notifications": [{"user": "alice", "seq": 2}], "delivered": 1}))
    );
    tabs[2].durable(2).await;
    all_silent(&mut tabs).await;
}

#[tokio::test]
async fn a_users_target_gives_each_user_its_own_seq() {
    let server = TestServer::start().await;
    server.notify_user("bob", json!("earlier")).await;
    let (mut alice, _) = server.connect(&server.token("alice", None), "").await;
    let (mut bob, _) = server.connect(&server.token("bob", None), "").await;
    let (mut carol, _) = server.connect(&server.token("carol", None), "").await;

    let (status, body) =
        server.publish(json!({"to": {"users": ["alice", "bob", "alice"]}, "data": "both"})).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"notifications": [{"user": "alice", "seq": 1}, {"user": "bob", "seq": 2}], "delivered": 2})
        )
    );
    assert_eq!(alice.durable(1).await["data"], "both");
    assert_eq!(bob.durable(2).await["data"], "both");
    for sse in [&mut alice, &mut bob, &mut carol] {
        sse.expect_silence(QUIET).await;
    }
}

#[tokio::test]
async fn an_ephemeral_notification_has_no_id_no_seq_and_is_never_replayed() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let (mut tab, _) = server.connect(&token, "").await;

    assert_eq!(server.notify_user("alice", json!("durable 1")).await, 1);
    tab.durable(1).await;

    let (status, body) = server
        .publish(json!({"to": {"user": "alice"}, "type": "typing", "data": {"who": "bob"}, "durable": false}))
        .await;
    assert_eq!((status, body), (200, json!({"notifications": [], "delivered": 1})));
    let event = tab.notification().await;
    assert_eq!(event.id, None);
    let data = event.data.as_object().unwrap();
    let mut keys: Vec<_> = data.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "data", "type"]);
    assert_eq!((&data["type"], &data["data"]), (&json!("typing"), &json!({"who": "bob"})));

    assert_eq!(server.notify_user("alice", json!("durable 2")).await, 2);
    tab.durable(2).await;

    // Neither resuming from before it nor connecting afterwards sees it; it was never stored.
    let (mut resumed, _) = server.connect(&token, "last_event_id=1").await;
    assert_eq!(resumed.durable(2).await["data"], "durable 2");
    resumed.expect_silence(QUIET).await;
    let (mut from_start, _) = server.connect(&token, "last_event_id=0").await;
    assert_eq!(from_start.seqs(2).await, [1, 2]);
    from_start.expect_silence(QUIET).await;
    let stored: Vec<Value> = server.stored("alice").await;
    assert_eq!(
        stored.iter().map(|n| n["data"].clone()).collect::<Vec<_>>(),
        [json!("durable 1"), json!("durable 2")]
    );
}

#[tokio::test]
async fn an_ephemeral_notification_to_a_user_with_no_client_reaches_nobody() {
    let server = TestServer::start().await;
    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "data": 1, "durable": false})).await;
    assert_eq!((status, body), (200, json!({"notifications": [], "delivered": 0})));
    let (mut tab, hello) = server.connect(&server.token("alice", None), "last_event_id=0").await;
    assert_eq!(hello["last_seq"], 0);
    tab.expect_silence(QUIET).await;
    assert!(server.stored("alice").await.is_empty());
}

#[tokio::test]
async fn an_ephemeral_client_target_reaches_only_that_tab() {
    let server = TestServer::start().await;
    let (mut tabs, ids) = alice_two_by_two(&server).await;
    let (status, body) =
        server.publish(json!({"to": {"client": ids[0]}, "data": "psst", "durable": false})).await;
    assert_eq!((status, body), (200, json!({"notifications": [], "delivered": 1})));
    let event = tabs[0].notification().await;
    assert_eq!((event.id, &event.data["data"], event.data.get("seq")), (None, &json!("psst"), None));
    all_silent(&mut tabs).await;
}

#[tokio::test]
async fn an_unknown_client_target_is_404_client_not_found_and_stores_nothing() {
    let server = TestServer::start().await;
    let (_tab, hello) = server.connect(&server.token("alice", None), "").await;
    let known = hello["client"].as_str().unwrap();
    let last = if known.ends_with('A') { 'B' } else { 'A' };
    let unknown = format!("{}{last}", &known[..known.len() - 1]);
    let got = server.publish(json!({"to": {"client": unknown}, "data": 1})).await;
    assert_error(&got, 404, "client_not_found");
    let got = server.publish(json!({"to": {"client": "never-seen"}, "data": 1, "durable": false})).await;
    assert_error(&got, 404, "client_not_found");
    assert!(server.stored("alice").await.is_empty());
}
