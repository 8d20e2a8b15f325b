//! Bad input over real sockets: every malformed request gets its exact 4xx JSON error, changes
//! nothing, and leaves the server serving normally.

use crate::support;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::{API_KEY, QUIET, SECRET, STREAM_PATHS, TestServer, answer, assert_error, now_unix, sign};

/// Nothing changed for `alice`: no notification stored, no client present; and the server still
/// serves a normal stream and publish.
async fn assert_untouched_and_serving(server: &TestServer) {
    assert!(server.stored("alice").await.is_empty(), "something was stored");
    assert_eq!(server.presence("alice").await, json!({"user": "alice", "sessions": []}));
    let (mut tab, hello) = server.connect(&server.token("alice", None), "").await;
    assert_eq!(hello["last_seq"], 0);
    assert_eq!(server.notify_user("alice", json!("fine")).await, 1);
    assert_eq!(tab.durable(1).await["data"], "fine");
    tab.expect_silence(QUIET).await;
}

fn hs256_token(claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn valid_claims() -> Value {
    json!({"sub": "alice", "iat": now_unix(), "exp": now_unix() + 3600})
}

#[tokio::test]
async fn invalid_json_is_400_invalid_json() {
    let server = TestServer::start().await;
    for body in [
        r#"{"to": {"user": "alice"}"#,
        "",
        "not json",
        r#"{"to": {"user": "alice"}, "data": }"#,
        "[]",
        "null",
    ] {
        assert_error(&server.publish_raw(body).await, 400, "invalid_json");
    }
    // Wrong types.
    for body in [
        json!({"to": {"user": 1}}),
        json!({"to": "alice"}),
        json!({"to": {"user": "alice"}, "durable": "yes"}),
        json!({"to": {"users": "alice"}}),
        json!({"data": 1}),
    ] {
        assert_error(&server.publish(body).await, 400, "invalid_json");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn unknown_fields_at_the_top_or_in_to_are_400_invalid_json() {
    let server = TestServer::start().await;
    assert_error(
        &server.publish(json!({"to": {"user": "alice"}, "data": 1, "durabel": false})).await,
        400,
        "invalid_json",
    );
    assert_error(
        &server.publish(json!({"to": {"user": "alice", "sesion": "s1"}, "data": 1})).await,
        400,
        "invalid_json",
    );
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn an_unknown_target_shape_is_400_invalid_target() {
    let server = TestServer::start().await;
    for to in [
        json!({}),
        json!({"user": "alice", "client": "b"}),
        json!({"session": "s1"}),
        json!({"user": "alice", "users": ["alice"]}),
        json!({"users": ["alice"], "session": "s1"}),
        json!({"users": []}),
    ] {
        assert_error(&server.publish(json!({"to": to, "data": 1})).await, 400, "invalid_target");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn empty_over_long_or_control_character_ids_are_400_invalid_id() {
    let server = TestServer::start().await;
    let long = "a".repeat(129);
    for to in [
        json!({"user": ""}),
        json!({"user": long}),
        json!({"user": "al\nice"}),
        json!({"users": ["alice", ""]}),
        json!({"users": ["alice", long]}),
        json!({"user": "alice", "session": ""}),
        json!({"user": "alice", "session": long}),
        json!({"client": ""}),
        json!({"client": long}),
    ] {
        assert_error(&server.publish(json!({"to": to, "data": 1})).await, 400, "invalid_id");
    }
    assert_error(
        &server.publish(json!({"to": {"user": "alice"}, "except_client": ""})).await,
        400,
        "invalid_id",
    );
    assert_error(&server.get(&format!("/v1/users/{long}/presence")).await, 400, "invalid_id");
    assert_error(&server.get(&format!("/v1/users/{long}/notifications")).await, 400, "invalid_id");
    assert_error(&server.delete(&format!("/v1/users/alice/sessions/{long}")).await, 400, "invalid_id");
    assert_untouched_and_serving(&server).await;

    // 128 bytes is the most, and is fine.
    let longest = "b".repeat(128);
    assert_eq!(server.notify_user(&longest, json!(1)).await, 1);
    assert_eq!(server.stored(&longest).await.len(), 1);
}

#[tokio::test]
async fn a_bad_type_or_idempotency_key_is_400_invalid_request() {
    let server = TestServer::start().await;
    for body in [
        json!({"to": {"user": "alice"}, "type": ""}),
        json!({"to": {"user": "alice"}, "type": "t".repeat(129)}),
        json!({"to": {"user": "alice"}, "idempotency_key": ""}),
        json!({"to": {"user": "alice"}, "idempotency_key": "k".repeat(129)}),
    ] {
        assert_error(&server.publish(body).await, 400, "invalid_request");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn data_over_64_kib_is_413_data_too_large() {
    let server = TestServer::start().await;
    // A JSON string of n characters is n + 2 bytes of JSON.
    let over = "x".repeat(64 * 1024 - 1);
    assert_error(
        &server.publish(json!({"to": {"user": "alice"}, "data": over})).await,
        413,
        "data_too_large",
    );
    assert_untouched_and_serving(&server).await;
    let most = "x".repeat(64 * 1024 - 2);
    assert_eq!(server.notify_user("alice", json!(most)).await, 2);
}

#[tokio::test]
async fn a_body_over_1_mib_is_413_body_too_large() {
    let server = TestServer::start().await;
    let padding = " ".repeat(1024 * 1024);
    let body = format!(r#"{{"to": {{"user": "alice"}}, "data": 1{padding}}}"#);
    assert!(body.len() > 1024 * 1024);
    assert_error(&server.publish_raw(body).await, 413, "body_too_large");
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn a_body_that_is_not_json_content_is_415() {
    let server = TestServer::start().await;
    let response = server
        .http
        .post(format!("{}/v1/notify", server.url))
        .bearer_auth(API_KEY)
        .header("content-type", "text/plain")
        .body(r#"{"to": {"user": "alice"}}"#)
        .send()
        .await
        .unwrap();
    assert_error(&answer(response).await, 415, "unsupported_media_type");
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn more_than_1000_users_is_400_too_many_users() {
    let server = TestServer::start().await;
    let mut users: Vec<String> = (0..1001).map(|i| format!("user-{i}")).collect();
    users[0] = "alice".into();
    assert_error(&server.publish(json!({"to": {"users": users}, "data": 1})).await, 400, "too_many_users");
    assert!(server.stored("user-1000").await.is_empty());
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn a_missing_or_wrong_api_key_is_401() {
    let server = TestServer::start().await;
    let body = json!({"to": {"user": "alice"}, "data": 1});
    let url = format!("{}/v1/notify", server.url);
    let response = server.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_error(&answer(response).await, 401, "missing_api_key");
    for key in ["wrong", &format!("{API_KEY}x"), &API_KEY[..API_KEY.len() - 1], ""] {
        let response = server.http.post(&url).bearer_auth(key).json(&body).send().await.unwrap();
        let got = answer(response).await;
        assert_eq!(got.0, 401, "{key:?}: {}", got.1);
        assert!(["invalid_api_key", "missing_api_key"].contains(&support::code(&got.1)), "{}", got.1);
    }
    let response = server.http.post(&url).basic_auth("x", Some(API_KEY)).json(&body).send().await.unwrap();
    assert_error(&answer(response).await, 401, "missing_api_key");
    for path in ["/v1/users/alice/presence", "/v1/users/alice/notifications"] {
        let response = server.http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_error(&answer(response).await, 401, "missing_api_key");
        let response =
            server.http.get(format!("{}{path}", server.url)).bearer_auth("wrong").send().await.unwrap();
        assert_error(&answer(response).await, 401, "invalid_api_key");
    }
    let response =
        server.http.delete(format!("{}/v1/users/alice/sessions", server.url)).send().await.unwrap();
    assert_error(&answer(response).await, 401, "missing_api_key");
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn a_subscriber_token_is_refused_on_publisher_routes() {
    let server = TestServer::start().await;
    let (_tab, _) = server.connect(&server.token("alice", Some("s1")), "").await;
    let token = server.token("alice", Some("s1"));
    let response = server
        .http
        .post(format!("{}/v1/notify", server.url))
        .bearer_auth(&token)
        .json(&json!({"to": {"user": "alice"}, "data": 1}))
        .send()
        .await
        .unwrap();
    assert_error(&answer(response).await, 401, "invalid_api_key");
    for path in ["/v1/users/x/presence", "/v1/users/alice/presence", "/v1/users/alice/notifications"] {
        let response =
            server.http.get(format!("{}{path}", server.url)).bearer_auth(&token).send().await.unwrap();
        assert_error(&answer(response).await, 401, "invalid_api_key");
    }
    let response = server
        .http
        .delete(format!("{}/v1/users/alice/sessions/s1", server.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_error(&answer(response).await, 401, "invalid_api_key");
    assert!(server.stored("alice").await.is_empty());
    assert_eq!(server.present_clients("alice").await.len(), 1, "the session was not closed");
}

#[tokio::test]
async fn the_api_key_is_not_a_subscriber_token() {
    let server = TestServer::start().await;
    for path in STREAM_PATHS {
        assert_error(&server.stream_refused_via(path, Some(API_KEY), "", None).await, 401, "invalid_token");
        let query = format!("token={API_KEY}");
        assert_error(&server.stream_refused_via(path, None, &query, None).await, 401, "invalid_token");
        assert_error(&server.stream_refused_via(path, None, "", None).await, 401, "missing_token");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn forged_unsigned_or_incomplete_tokens_are_401_invalid_token() {
    let server = TestServer::start().await;
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = valid_claims();
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    let alg_none_upper = format!("{}.{}.", b64(&json!({"alg": "None", "typ": "JWT"})), b64(&claims));
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let good = sign(&claims);
    // The good token's header and claims with another token's signature.
    let (good_head, _) = good.rsplit_once('.').unwrap();
    let other_signature =
        sign(&json!({"sub": "mallory", "exp": now_unix() + 3600})).rsplit_once('.').unwrap().1.to_owned();
    // Claims changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = b64(&json!({"sub": "mallory", "iat": now_unix(), "exp": now_unix() + 3600}));
    let tampered = parts.join(".");
    let cases = [
        ("wrong secret", hs256_token(&claims, b"another-secret")),
        ("alg none", alg_none),
        ("alg None", alg_none_upper),
        ("HS512", hs512),
        ("foreign signature", format!("{good_head}.{other_signature}")),
        ("tampered claims", tampered),
        ("no exp", sign(&json!({"sub": "alice", "iat": now_unix()}))),
        ("no sub", sign(&json!({"iat": now_unix(), "exp": now_unix() + 3600}))),
        ("empty sub", sign(&json!({"sub": "", "exp": now_unix() + 3600}))),
        ("sub not a string", sign(&json!({"sub": 7, "exp": now_unix() + 3600}))),
        ("exp not a number", sign(&json!({"sub": "alice", "exp": "tomorrow"}))),
        ("empty sid", sign(&json!({"sub": "alice", "sid": "", "exp": now_unix() + 3600}))),
        ("garbage", "not.a.token".to_owned()),
        ("one part", "abc".to_owned()),
    ];
    for (what, token) in &cases {
        for path in STREAM_PATHS {
            let got = server.stream_refused_via(path, Some(token), "", None).await;
            assert_eq!(
                (got.0, support::code(&got.1)),
                (401, "invalid_token"),
                "{what} ({path:?}): {}",
                got.1
            );
        }
        let got = server.poll(token, "timeout=0").await;
        assert_eq!((got.0, support::code(&got.1)), (401, "invalid_token"), "{what} (poll): {}", got.1);
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn a_last_event_id_that_is_not_a_number_or_is_ahead_is_400_invalid_last_event_id() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    for path in STREAM_PATHS {
        let refused = async |query: &str, header: Option<&str>| {
            server.stream_refused_via(path, Some(&token), query, header).await
        };
        for id in ["abc", "-1", "1.5", "0x10", "99999999999999999999999"] {
            assert_error(&refused("", Some(id)).await, 400, "invalid_last_event_id");
            assert_error(&refused(&format!("last_event_id={id}"), None).await, 400, "invalid_last_event_id");
        }
        assert_error(&refused("", Some("1")).await, 400, "invalid_last_event_id");
        assert_error(&refused("last_event_id=1", None).await, 400, "invalid_last_event_id");
        // A bad query resume point is refused even when the header is fine.
        assert_error(&refused("last_event_id=x", Some("0")).await, 400, "invalid_last_event_id");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn unknown_routes_are_404_and_wrong_methods_405_in_json() {
    let server = TestServer::start().await;
    for path in ["/", "/v1", "/v1/streams", "/v2/stream", "/v1/users/alice", "/v1/users/alice/sessions/s1/x"]
    {
        assert_error(&server.get(path).await, 404, "not_found");
    }
    let url = |path: &str| format!("{}{path}", server.url);
    let requests = [
        server.http.get(url("/v1/notify")),
        server.http.put(url("/v1/notify")),
        server.http.post(url("/v1/stream")),
        server.http.delete(url("/v1/poll")),
        server.http.post(url("/v1/users/alice/presence")),
        server.http.post(url("/v1/users/alice/sessions")),
        server.http.get(url("/v1/users/alice/sessions/s1")),
        server.http.post(url("/healthz")),
    ];
    for request in requests {
        let response = request.bearer_auth(API_KEY).send().await.unwrap();
        assert_error(&answer(response).await, 405, "method_not_allowed");
    }
    assert_untouched_and_serving(&server).await;
}

#[tokio::test]
async fn a_publish_to_an_unknown_client_or_of_bad_data_in_a_batch_of_users_stores_nothing() {
    let server = TestServer::start().await;
    // One bad id among good ones: none of the users gets anything.
    let got = server.publish(json!({"to": {"users": ["alice", "bob", ""]}, "data": 1})).await;
    assert_error(&got, 400, "invalid_id");
    assert!(server.stored("bob").await.is_empty());
    let got = server.publish(json!({"to": {"users": ["alice", "bob"]}, "data": "x".repeat(70_000)})).await;
    assert_error(&got, 413, "data_too_large");
    assert!(server.stored("bob").await.is_empty());
    assert_untouched_and_serving(&server).await;
}

/// The `data` every client can decode, or a 400 naming what it cannot: nesting past the
/// documented depth, a number beyond f64, a lone surrogate escape. (Herald's own Rust client
/// died on each of these, and again on every resume.) Nothing is stored, on either the API or
/// the demo's path, durable or ephemeral.
#[tokio::test]
async fn poison_data_is_400_and_nothing_is_stored() {
    let demo = herald_server::ServerSettings { dev_mode: true, demo: true, ..support::settings() };
    let server = TestServer::with_settings(demo).await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases = [
        (deep(10_000), "data_too_deep"),
        (deep(herald_core::data::DATA_DEPTH_MAX + 1), "data_too_deep"),
        (format!(r#"{{"a":{}}}"#, deep(herald_core::data::DATA_DEPTH_MAX)), "data_too_deep"),
        ("1e999999".to_owned(), "invalid_number"),
        ("[-1e309]".to_owned(), "invalid_number"),
        (format!("1{}", "0".repeat(400)), "invalid_number"),
        (r#""\ud800""#.to_owned(), "invalid_string"),
        (r#"{"text": "a\udfffb"}"#.to_owned(), "invalid_string"),
        (r#"["\ud83d\u0041"]"#.to_owned(), "invalid_string"),
        (r#"{"\udc00": 1}"#.to_owned(), "invalid_string"),
    ];
    for (data, expected) in &cases {
        for durable in [true, false] {
            let body = format!(r#"{{"to": {{"user": "alice"}}, "durable": {durable}, "data": {data}}}"#);
            assert_error(&server.publish_raw(body.clone()).await, 400, expected);
            let demo = server.http.post(format!("{}/demo/notify", server.url)).body(body);
            let demo = demo.header("content-type", "application/json").send().await.unwrap();
            assert_error(&answer(demo).await, 400, expected);
        }
    }
    let head = server.app.notifier.store().head(&herald_core::UserId::new("alice").unwrap()).await.unwrap();
    assert_eq!(head.last_seq, 0, "a poison notification was stored");
    assert_untouched_and_serving(&server).await;
    // Just inside every bound: accepted, and decoded by a strict JSON parser.
    let fine = format!(
        r#"{{"deep": {}, "big": 1.7976931348623157e308, "tiny": 1e-999999, "pair": "\ud83d\ude00", "esc": "\u00e9\\"}}"#,
        deep(herald_core::data::DATA_DEPTH_MAX - 1)
    );
    let (status, body) =
        server.publish_raw(format!(r#"{{"to": {{"user": "alice"}}, "data": {fine}}}"#)).await;
    assert_eq!(status, 200, "{body}");
    let stored = server.stored("alice").await;
    assert_eq!(stored.last().unwrap()["data"]["pair"], "\u{1F600}");
}
