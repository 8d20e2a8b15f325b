//! A stream's life over real sockets: token expiry, keep-alive comments, shutdown.

use crate::support;

use std::time::Duration;

use herald_server::ServerSettings;
use serde_json::json;
use support::{TestServer, assert_error, now_unix, sign, token_with_ttl};
use tokio::time::Instant;

on_both_stream_paths! {
    /// A stream is closed with `token_expired` when its token expires, and the token is refused
    /// from then on.
    async fn a_stream_is_closed_token_expired_when_its_token_expires(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let started = Instant::now();
        let token = token_with_ttl("alice", None, Duration::from_secs(2));
        let (mut tab, _) = server.connect(&token, "").await;
        // Still served until then.
        server.notify_user("alice", json!(1)).await;
        tab.durable(1).await;

        let event = tab.next_within(Duration::from_secs(4)).await.expect("not closed in time").expect("ended");
        assert_eq!((event.event.as_str(), event.data), ("closed", json!({"reason": "token_expired"})));
        let elapsed = started.elapsed();
        assert!(elapsed <= Duration::from_millis(3200), "closed after {elapsed:?}");
        assert!(elapsed >= Duration::from_millis(900), "closed too early, after {elapsed:?}");
        tab.expect_end().await;
        server.wait_for_presence("alice", 0).await;

        // And the same token is now refused at connect.
        assert_error(&server.stream_refused(Some(&token), "", None).await, 401, "token_expired");
    }
}

#[tokio::test]
async fn an_expired_token_is_refused_at_connect() {
    let server = TestServer::start().await;
    let token = sign(&json!({"sub": "alice", "iat": now_unix() - 100, "exp": now_unix() - 10}));
    assert_error(&server.stream_refused(Some(&token), "", None).await, 401, "token_expired");
    assert_error(&server.poll(&token, "timeout=0").await, 401, "token_expired");
    assert_eq!(server.presence("alice").await, json!({"user": "alice", "sessions": []}));
}

on_both_stream_paths! {
    async fn an_idle_stream_gets_keep_alive_comments(path: StreamPath) {
        let settings = ServerSettings { keepalive_interval: Duration::from_millis(200), ..support::settings() };
        let server = TestServer::with_settings(settings).await.via(path);
        let (mut tab, _) = server.connect(&server.token("alice", None), "").await;
        tab.expect_silence(Duration::from_millis(1100)).await;
        assert!((3..=6).contains(&tab.comments), "{} keep-alives in 1.1 s at one per 200 ms", tab.comments);

        // Events still flow between them.
        server.notify_user("alice", json!(1)).await;
        tab.durable(1).await;
    }
}

#[tokio::test]
async fn a_busy_stream_gets_no_keep_alive_on_top_of_its_events() {
    let server = TestServer::with_settings(ServerSettings {
        keepalive_interval: Duration::from_millis(300),
        ..support::settings()
    })
    .await;
    let (mut tab, _) = server.connect(&server.token("alice", None), "").await;
    for seq in 1..=8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.notify_user("alice", json!(seq)).await;
        tab.durable(seq).await;
    }
    assert_eq!(tab.comments, 0);
}

#[tokio::test]
async fn a_default_stream_gets_no_keep_alive_within_a_second() {
    let server = TestServer::start().await;
    let (mut tab, _) = server.connect(&server.token("alice", None), "").await;
    tab.expect_silence(Duration::from_secs(1)).await;
    assert_eq!(tab.comments, 0);
}

on_both_stream_paths! {
    async fn shutdown_closes_every_stream_with_reason_shutdown(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let (mut a, _) = server.connect(&server.token("alice", Some("s1")), "").await;
        let (mut b, _) = server.connect(&server.token("bob", None), "").await;
        tokio::time::timeout(Duration::from_secs(5), server.shutdown()).await.expect("shutdown hangs");
        a.expect_closed("shutdown").await;
        b.expect_closed("shutdown").await;
    }
}

#[tokio::test]
async fn a_token_is_accepted_as_bearer_query_parameter_or_cookie() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let response = server.http.get(format!("{}/v1/stream?token={token}", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut by_query = support::Sse::new(response);
    let hello = by_query.next().await.unwrap();
    assert_eq!(
        (hello.event.as_str(), &hello.data["user"], &hello.data["session"]),
        ("hello", &json!("alice"), &json!("s1"))
    );

    let response = server
        .http
        .get(format!("{}/v1/stream", server.url))
        .header("cookie", format!("theme=dark; herald_token={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut by_cookie = support::Sse::new(response);
    assert_eq!(by_cookie.next().await.unwrap().data["user"], "alice");

    server.notify_user("alice", json!(1)).await;
    by_query.durable(1).await;
    by_cookie.durable(1).await;
}

#[tokio::test]
async fn tabs_given_one_token_without_sid_share_a_session_and_other_tokens_do_not() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    let (_a, first) = server.connect(&token, "").await;
    let (_b, second) = server.connect(&token, "").await;
    let (_c, other) = server.connect(&token_with_ttl("alice", None, Duration::from_secs(1800)), "").await;
    assert_eq!(first["session"], second["session"]);
    assert_ne!(first["session"], other["session"]);
    assert_ne!(first["client"], second["client"]);
    let presence = server.presence("alice").await;
    let sizes: Vec<usize> = presence["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["clients"].as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, [2, 1]);
}
