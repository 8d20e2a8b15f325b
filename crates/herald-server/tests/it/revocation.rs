//! Sign-out is revocation: after `DELETE /v1/users/{u}/sessions/{s}` (or `…/sessions`), the
//! tokens issued until then are refused on every subscriber route (both stream paths, WebSocket,
//! long-poll, the inbox), also after a restart; a token issued later works. And the token rules:
//! a bounded lifetime, `nbf`, `aud`, `iat` required, one `?token=`, messages in our own words.

use crate::support;

use std::time::Duration;

use herald_server::ServerSettings;
use herald_server::auth::TokenRules;
use serde_json::{Value, json};
use support::{API_KEY, QUIET, STREAM_PATHS, StreamPath, TestServer, answer, assert_error, now_unix, sign};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A token of `user` (and `session`) issued at `iat`, valid for an hour after it.
fn token_issued_at(user: &str, session: Option<&str>, iat: u64) -> String {
    let mut claims = json!({ "sub": user, "iat": iat, "exp": iat + 3600 });
    if let Some(session) = session {
        claims["sid"] = session.into();
    }
    sign(&claims)
}

/// A token issued after every close made so far: one second ahead (`iat` has one-second
/// resolution, and a token of the close's own second is refused).
fn token_after_close(user: &str, session: Option<&str>) -> String {
    token_issued_at(user, session, now_unix() + 1)
}

/// `GET {path}` with `token` as bearer; status and body.
async fn get_as(server: &TestServer, token: &str, path: &str) -> (u16, Value) {
    answer(server.http.get(format!("{}{path}", server.url)).bearer_auth(token).send().await.unwrap()).await
}

/// `POST /v1/inbox/mark` (read, all up to 1) with `token`.
async fn mark_as(server: &TestServer, token: &str) -> (u16, Value) {
    let response = server
        .http
        .post(format!("{}/v1/inbox/mark", server.url))
        .bearer_auth(token)
        .json(&json!({"all_up_to": 1, "as": "read"}))
        .send()
        .await
        .unwrap();
    answer(response).await
}

/// Opens `/v1/ws` with `token`: the handshake status and, if refused, the error code.
async fn ws_status(server: &TestServer, token: &str) -> (u16, String) {
    let url = format!("{}/v1/ws", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((_ws, response)) => (response.status().as_u16(), String::new()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body["error"]["code"].as_str().unwrap_or_default().to_owned())
        }
        Err(other) => panic!("WebSocket handshake failed: {other}"),
    }
}

/// Every subscriber route refuses `token` with 401 `token_revoked`.
async fn assert_revoked_everywhere(server: &TestServer, token: &str) {
    for path in STREAM_PATHS {
        assert_error(&server.stream_refused_via(path, Some(token), "", None).await, 401, "token_revoked");
    }
    let query = format!("token={token}");
    assert_error(
        &server.stream_refused_via(StreamPath::Lean, None, &query, None).await,
        401,
        "token_revoked",
    );
    assert_error(&server.poll(token, "timeout=0").await, 401, "token_revoked");
    assert_error(&get_as(server, token, "/v1/inbox").await, 401, "token_revoked");
    assert_error(&get_as(server, token, "/v1/inbox/counts").await, 401, "token_revoked");
    assert_error(&mark_as(server, token).await, 401, "token_revoked");
    assert_eq!(ws_status(server, token).await, (401, "token_revoked".to_owned()));
}

/// Every subscriber route accepts `token`.
async fn assert_accepted_everywhere(server: &TestServer, token: &str) {
    for path in STREAM_PATHS {
        let mut sse = server.sse_via(path, token, "", None).await;
        assert_eq!(sse.next().await.expect("hello").event, "hello");
    }
    assert_eq!(server.poll(token, "timeout=0").await.0, 200);
    assert_eq!(get_as(server, token, "/v1/inbox").await.0, 200);
    assert_eq!(get_as(server, token, "/v1/inbox/counts").await.0, 200);
    assert_eq!(mark_as(server, token).await.0, 200);
    assert_eq!(ws_status(server, token).await.0, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_session_refuses_its_old_tokens_on_every_route() {
    let server = TestServer::start().await;
    let old = server.token("alice", Some("s1"));
    let other_session = server.token("alice", Some("s2"));
    assert_accepted_everywhere(&server, &old).await;
    let (mut tab, _) = server.connect(&old, "").await;

    let (status, body) = server.delete("/v1/users/alice/sessions/s1").await;
    assert_eq!(status, 200, "{body}");
    tab.expect_closed("session_closed").await;
    assert_revoked_everywhere(&server, &old).await;
    // A notification published now reaches no one with the old token: it is not even let in.
    server.notify_user("alice", json!("after sign-out")).await;
    assert_revoked_everywhere(&server, &old).await;

    // Another session of the same user, and a new sign-in of s1, are fine.
    assert_accepted_everywhere(&server, &other_session).await;
    let new = token_after_close("alice", Some("s1"));
    let (mut tab, hello) = server.connect(&new, "last_event_id=0").await;
    assert_eq!(hello["last_seq"], 1);
    assert_eq!(tab.durable(1).await["data"], "after sign-out");
    assert_accepted_everywhere(&server, &new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_the_closing_second_is_refused() {
    let server = TestServer::start().await;
    // Issued "now" and closed "now": one second cannot tell which came first; refused.
    let (status, _) = server.delete("/v1/users/alice/sessions/s1").await;
    assert_eq!(status, 200);
    let same_second = token_issued_at("alice", Some("s1"), now_unix());
    assert_error(&server.poll(&same_second, "timeout=0").await, 401, "token_revoked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_all_sessions_refuses_every_old_token_of_the_user_only() {
    let server = TestServer::start().await;
    let old =
        [server.token("alice", Some("s1")), server.token("alice", Some("s2")), server.token("alice", None)];
    let bob = server.token("bob", Some("s1"));
    let (status, body) = server.delete("/v1/users/alice/sessions").await;
    assert_eq!(status, 200, "{body}");
    for token in &old {
        assert_revoked_everywhere(&server, token).await;
    }
    assert_accepted_everywhere(&server, &bob).await;
    assert_accepted_everywhere(&server, &token_after_close("alice", Some("s2"))).await;
    assert_accepted_everywhere(&server, &token_after_close("alice", None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let server = TestServer::with_store(support::sqlite(&path, Default::default())).await;
    let (s1, all) = (server.token("alice", Some("s1")), server.token("bob", Some("x")));
    assert_eq!(server.delete("/v1/users/alice/sessions/s1").await.0, 200);
    assert_eq!(server.delete("/v1/users/bob/sessions").await.0, 200);
    server.shutdown().await;

    let server = TestServer::with_store(support::sqlite(&path, Default::default())).await;
    assert_revoked_everywhere(&server, &s1).await;
    assert_revoked_everywhere(&server, &all).await;
    assert_accepted_everywhere(&server, &token_after_close("alice", Some("s1"))).await;
    assert_accepted_everywhere(&server, &server.token("alice", Some("s2"))).await;
}

// ---------------------------------------------------------------------------------------------
// Token rules

/// `token` is refused with 401 `invalid_token` on a stream (both paths) and a poll; returns the
/// message.
async fn refused_as_invalid(server: &TestServer, token: &str, what: &str) -> String {
    for path in STREAM_PATHS {
        let got = server.stream_refused_via(path, Some(token), "", None).await;
        assert_eq!((got.0, support::code(&got.1)), (401, "invalid_token"), "{what} ({path:?}): {}", got.1);
    }
    let got = server.poll(token, "timeout=0").await;
    assert_eq!((got.0, support::code(&got.1)), (401, "invalid_token"), "{what} (poll): {}", got.1);
    got.1["error"]["message"].as_str().unwrap().to_owned()
}

async fn accepted(server: &TestServer, token: &str, what: &str) {
    let got = server.poll(token, "timeout=0").await;
    assert_eq!(got.0, 200, "{what}: {}", got.1);
}

#[tokio::test]
async fn token_lifetime_is_bounded() {
    let server = TestServer::start().await;
    let now = now_unix();
    let day = 24 * 3600;
    for (what, claims) in [
        ("exp = 2^64-1", json!({"sub": "alice", "iat": now, "exp": u64::MAX})),
        ("31 days", json!({"sub": "alice", "iat": now, "exp": now + 31 * day})),
        (
            "issued 40 days ago, an hour left",
            json!({"sub": "alice", "iat": now - 40 * day, "exp": now + 3600}),
        ),
    ] {
        let message = refused_as_invalid(&server, &sign(&claims), what).await;
        assert!(message.contains("lives too long"), "{what}: {message}");
    }
    accepted(&server, &sign(&json!({"sub": "alice", "iat": now, "exp": now + 30 * day})), "30 days").await;
    accepted(&server, &sign(&json!({"sub": "alice", "iat": now - day, "exp": now + 29 * day})), "29 left")
        .await;

    // `--token-ttl-max 1h`.
    let rules = TokenRules { ttl_max: Duration::from_secs(3600), ..TokenRules::default() };
    let server =
        TestServer::with_settings(ServerSettings { token_rules: rules, ..support::settings() }).await;
    refused_as_invalid(&server, &sign(&json!({"sub": "alice", "iat": now, "exp": now + 7200})), "2h").await;
    accepted(&server, &sign(&json!({"sub": "alice", "iat": now, "exp": now + 1800})), "30 min").await;
}

#[tokio::test]
async fn iat_is_required_and_not_far_ahead() {
    let server = TestServer::start().await;
    let now = now_unix();
    let message =
        refused_as_invalid(&server, &sign(&json!({"sub": "alice", "exp": now + 60})), "no iat").await;
    assert!(message.contains("`iat`"), "{message}");
    let ahead = sign(&json!({"sub": "alice", "iat": now + 3600, "exp": now + 7200}));
    let message = refused_as_invalid(&server, &ahead, "iat an hour ahead").await;
    assert!(message.contains("future"), "{message}");
    let iat_text = sign(&json!({"sub": "alice", "iat": "yesterday", "exp": now + 60}));
    refused_as_invalid(&server, &iat_text, "iat not a number").await;
    accepted(&server, &sign(&json!({"sub": "alice", "iat": now + 5, "exp": now + 60})), "iat 5 s ahead")
        .await;
}

#[tokio::test]
async fn a_future_nbf_is_refused() {
    let server = TestServer::start().await;
    let now = now_unix();
    let future = sign(&json!({"sub": "alice", "iat": now, "nbf": now + 60, "exp": now + 3600}));
    let message = refused_as_invalid(&server, &future, "nbf in a minute").await;
    assert!(message.contains("nbf"), "{message}");
    accepted(
        &server,
        &sign(&json!({"sub": "alice", "iat": now, "nbf": now - 1, "exp": now + 3600})),
        "nbf past",
    )
    .await;
}

#[tokio::test]
async fn aud_is_refused_unless_the_server_has_one_and_then_required() {
    let server = TestServer::start().await;
    let now = now_unix();
    let with_aud = |aud: Value| sign(&json!({"sub": "alice", "iat": now, "exp": now + 3600, "aud": aud}));
    let message =
        refused_as_invalid(&server, &with_aud(json!("some-app")), "aud without --token-audience").await;
    assert!(message.contains("aud"), "{message}");

    let rules = TokenRules { audience: Some("herald".into()), ..TokenRules::default() };
    let server =
        TestServer::with_settings(ServerSettings { token_rules: rules, ..support::settings() }).await;
    let message = refused_as_invalid(&server, &server.token("alice", None), "no aud").await;
    assert!(message.contains("aud"), "{message}");
    refused_as_invalid(&server, &with_aud(json!("other")), "another aud").await;
    accepted(&server, &with_aud(json!("herald")), "aud herald").await;
    accepted(&server, &with_aud(json!(["other", "herald"])), "aud list with herald").await;
}

#[tokio::test]
async fn two_tokens_in_the_query_are_refused_clearly() {
    let server = TestServer::start().await;
    let (a, b) = (server.token("alice", None), server.token("bob", None));
    for path in STREAM_PATHS {
        let got = server.stream_refused_via(path, None, &format!("token={a}&token={b}"), None).await;
        assert_error(&got, 401, "invalid_token");
        assert!(got.1["error"]["message"].as_str().unwrap().contains("one token"), "{}", got.1);
    }
    let got = answer(
        server
            .http
            .get(format!("{}/v1/poll?timeout=0&token={a}&token={a}", server.url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&got, 401, "invalid_token");
}

#[tokio::test]
async fn refusal_messages_show_no_library_internals() {
    use base64::Engine as _;
    let server = TestServer::start().await;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let now = now_unix();
    let claims = json!({"sub": "alice", "iat": now, "exp": now + 60});
    let cases = [
        format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims)),
        format!("{}.{}.", b64(&json!({"alg": "HS999", "typ": "JWT"})), b64(&claims)),
        format!("{}.{}.sig", b64(&json!({"typ": "JWT"})), b64(&claims)),
        "not.a.token".to_owned(),
        "abc".to_owned(),
        format!("{}.!!!.x", b64(&json!({"alg": "HS256"}))),
        sign(&json!({"sub": "alice", "iat": now, "exp": "soon"})),
        sign(&json!({"sub": "alice", "iat": now, "exp": now + 60, "nbf": -5})),
        API_KEY.to_owned(),
    ];
    for token in &cases {
        let message = refused_as_invalid(&server, token, token).await;
        for internal in ["InvalidToken", "HS384", "RS256", "ErrorKind", "Error(", "Json", "Base64", "variant"]
        {
            assert!(!message.contains(internal), "{token}: {message}");
        }
    }
    // The server is fine.
    let (mut tab, _) = server.connect(&server.token("alice", None), "").await;
    tab.expect_silence(QUIET).await;
}
