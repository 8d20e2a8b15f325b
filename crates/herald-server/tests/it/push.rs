//! Web Push over real sockets: the VAPID public key, registering and removing a browser's push
//! subscription with the subscriber token (every check of its endpoint and keys), and the
//! publisher API that lists and removes a user's subscriptions.

use crate::support;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herald_server::ServerSettings;
use herald_server::push::{EndpointRules, PushSettings, VapidKey};
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use serde_json::{Value, json};
use support::{TestServer, answer, assert_error};

/// A browser's side of a subscription: its P-256 key pair and auth secret.
pub struct BrowserKeys {
    pub secret: p256::SecretKey,
    pub auth: [u8; 16],
}

impl BrowserKeys {
    pub fn new() -> Self {
        loop {
            if let Ok(secret) = p256::SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
                return Self { secret, auth: rand::random() };
            }
        }
    }

    /// `PushSubscription.toJSON()` for `endpoint`.
    pub fn subscription(&self, endpoint: &str) -> Value {
        let point = self.secret.public_key().to_encoded_point(false);
        json!({
            "endpoint": endpoint,
            "expirationTime": null,
            "keys": {"p256dh": URL_SAFE_NO_PAD.encode(point.as_bytes()), "auth": URL_SAFE_NO_PAD.encode(self.auth)},
        })
    }
}

/// Settings with a VAPID key, and loopback endpoints allowed when `loopback`.
pub fn push_settings(loopback: bool) -> ServerSettings {
    let vapid = VapidKey::generate("mailto:ops@example.com").unwrap();
    let endpoints = EndpointRules { allow_loopback: loopback, ..EndpointRules::default() };
    ServerSettings {
        push: PushSettings { vapid: Some(Arc::new(vapid)), endpoints, ..PushSettings::default() },
        ..support::settings()
    }
}

/// `method /v1/push/subscriptions` with `token` and a JSON body.
pub async fn subscription_request(
    server: &TestServer,
    method: reqwest::Method,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let response = server
        .http
        .request(method, format!("{}/v1/push/subscriptions", server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    answer(response).await
}

fn listed_ids(body: &Value) -> Vec<&str> {
    body["subscriptions"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn the_vapid_public_key_is_served_only_when_push_is_configured() {
    let off = TestServer::start().await;
    let got =
        answer(off.http.get(format!("{}/v1/push/vapid-public-key", off.url)).send().await.unwrap()).await;
    assert_error(&got, 404, "push_not_configured");
    let token = off.token("alice", Some("s1"));
    let subscribe = subscription_request(
        &off,
        reqwest::Method::POST,
        &token,
        &BrowserKeys::new().subscription("https://fcm.googleapis.com/fcm/send/x"),
    )
    .await;
    assert_error(&subscribe, 404, "push_not_configured");

    let settings = push_settings(false);
    let expected = settings.push.vapid.as_ref().unwrap().public_key().to_owned();
    let on = TestServer::with_settings(settings).await;
    let (status, body) =
        answer(on.http.get(format!("{}/v1/push/vapid-public-key", on.url)).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"public_key": expected})));
    let point = URL_SAFE_NO_PAD.decode(&expected).unwrap();
    assert_eq!((point.len(), point[0]), (65, 4), "an uncompressed P-256 point");
}

#[tokio::test]
async fn a_subscription_is_kept_listed_and_removed() {
    let server = TestServer::with_settings(push_settings(false)).await;
    let token = server.token("alice", Some("laptop"));
    let endpoint = "https://fcm.googleapis.com/fcm/send/abc:def";
    let (status, body) = subscription_request(
        &server,
        reqwest::Method::POST,
        &token,
        &BrowserKeys::new().subscription(endpoint),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(id, herald_core::push_subscription_id(endpoint));

    let (status, listed) = server.get("/v1/users/alice/push-subscriptions").await;
    assert_eq!(status, 200);
    assert_eq!(listed["user"], "alice");
    assert_eq!(listed["subscriptions"][0]["session"], "laptop");
    assert_eq!(listed["subscriptions"][0]["push_service"], "https://fcm.googleapis.com");
    assert!(!listed.to_string().contains("abc:def"), "the endpoint itself is never shown: {listed}");
    assert_eq!(listed_ids(&listed), [id.as_str()]);

    // Subscribing again with the same endpoint replaces it: still one.
    let again = BrowserKeys::new().subscription(endpoint);
    assert_eq!(subscription_request(&server, reqwest::Method::POST, &token, &again).await.0, 201);
    assert_eq!(listed_ids(&server.get("/v1/users/alice/push-subscriptions").await.1).len(), 1);

    // Another user cannot remove it; its own browser can, once.
    let bobs = server.token("bob", Some("s"));
    let gone = json!({"endpoint": endpoint});
    assert_error(
        &subscription_request(&server, reqwest::Method::DELETE, &bobs, &gone).await,
        404,
        "no_such_subscription",
    );
    assert_eq!(subscription_request(&server, reqwest::Method::DELETE, &token, &gone).await.0, 204);
    assert_error(
        &subscription_request(&server, reqwest::Method::DELETE, &token, &gone).await,
        404,
        "no_such_subscription",
    );
    assert!(listed_ids(&server.get("/v1/users/alice/push-subscriptions").await.1).is_empty());

    // The publisher removes by id.
    subscription_request(&server, reqwest::Method::POST, &token, &again).await;
    assert_eq!(server.delete(&format!("/v1/users/alice/push-subscriptions/{id}")).await.0, 204);
    assert_error(
        &server.delete(&format!("/v1/users/alice/push-subscriptions/{id}")).await,
        404,
        "no_such_subscription",
    );
}

#[tokio::test]
async fn a_session_keeps_its_newest_subscriptions_within_the_bound() {
    let server = TestServer::with_settings(push_settings(false)).await;
    let token = server.token("alice", Some("s1"));
    let max = herald_core::PUSH_SUBSCRIPTIONS_PER_SESSION_MAX;
    let endpoint = |n: usize| format!("https://updates.push.services.mozilla.com/wpush/v2/{n}");
    for n in 0..=max {
        let body = BrowserKeys::new().subscription(&endpoint(n));
        assert_eq!(subscription_request(&server, reqwest::Method::POST, &token, &body).await.0, 201);
        // Distinct creation times, so "oldest" is one.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let listed = server.get("/v1/users/alice/push-subscriptions").await.1;
    let expected: Vec<String> = (1..=max).map(|n| herald_core::push_subscription_id(&endpoint(n))).collect();
    assert_eq!(listed_ids(&listed), expected, "the first one was forgotten");
}

#[tokio::test]
async fn bad_subscriptions_are_refused_and_change_nothing() {
    let server = TestServer::with_settings(push_settings(false)).await;
    let token = server.token("alice", Some("s1"));
    let keys = BrowserKeys::new();
    let good = keys.subscription("https://fcm.googleapis.com/fcm/send/x");
    let with = |path: &str, value: Value| {
        let mut body = good.clone();
        let (outer, inner) = path.split_once('.').map_or((path, None), |(o, i)| (o, Some(i)));
        match inner {
            Some(inner) => body[outer][inner] = value,
            None => body[outer] = value,
        }
        body
    };
    let post = |body: Value| {
        let (server, token) = (&server, &token);
        async move { subscription_request(server, reqwest::Method::POST, token, &body).await }
    };
    for endpoint in [
        "http://fcm.googleapis.com/fcm/send/x",
        "https://evil.example/collect",
        "https://127.0.0.1:9/loopback-not-allowed-here",
        "https://fcm.googleapis.com.evil.example/x",
        "not a url",
    ] {
        assert_error(&post(with("endpoint", json!(endpoint))).await, 400, "invalid_push_endpoint");
    }
    let mut off_curve = URL_SAFE_NO_PAD.decode(good["keys"]["p256dh"].as_str().unwrap()).unwrap();
    off_curve[64] ^= 1;
    for p256dh in [json!(URL_SAFE_NO_PAD.encode(&off_curve)), json!("BAAA"), json!("not base64!")] {
        assert_error(&post(with("keys.p256dh", p256dh)).await, 400, "invalid_push_keys");
    }
    for auth in [URL_SAFE_NO_PAD.encode([1u8; 15]), URL_SAFE_NO_PAD.encode([1u8; 17])] {
        assert_error(&post(with("keys.auth", json!(auth))).await, 400, "invalid_push_keys");
    }
    assert_eq!(post(json!({"endpoint": "https://fcm.googleapis.com/x"})).await.0, 400, "no keys");
    // No token, and a body not declared JSON.
    let anonymous = answer(
        server.http.post(format!("{}/v1/push/subscriptions", server.url)).json(&good).send().await.unwrap(),
    )
    .await;
    assert_eq!(anonymous.0, 401);
    let undeclared = answer(
        server
            .http
            .post(format!("{}/v1/push/subscriptions", server.url))
            .bearer_auth(&token)
            .body(good.to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(&undeclared, 415, "unsupported_media_type");
    assert!(listed_ids(&server.get("/v1/users/alice/push-subscriptions").await.1).is_empty());
    // The same subscription, well formed, is kept.
    assert_eq!(post(good).await.0, 201);
}
