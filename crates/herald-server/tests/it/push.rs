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

/// `method /v1/push/subscriptions` with `token` and a JSON body; the answer is checked against
/// docs/openapi.json.
pub async fn subscription_request(
    server: &TestServer,
    method: reqwest::Method,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let name = method.as_str().to_ascii_lowercase();
    let response = server
        .http
        .request(method, format!("{}/v1/push/subscriptions", server.url))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    support::checked_answer(&name, response).await
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
    let (status, body) = support::checked_answer(
        "get",
        on.http.get(format!("{}/v1/push/vapid-public-key", on.url)).send().await.unwrap(),
    )
    .await;
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

// ---------------------------------------------------------------------------------------------
// Sending, against a push service written for the tests: it plays the browser's part (its
// keys decrypt what it receives) and the push service's (it takes the POSTs on a loopback port
// and answers what the test scripts).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use herald_core::{Limits, Retention};
use parking_lot::Mutex;
use support::TestServer as Server;

/// How long a push may take to arrive: the grace period below, the sender's wait (woken at
/// once by this node's publishes, at most 1 s otherwise), and room for a loaded machine.
const PUSH_WAIT: Duration = Duration::from_secs(5);
/// The grace period of the `offline` policy in these tests.
const GRACE: Duration = Duration::from_millis(400);
/// Long enough after the grace and a poll for a push that was due to have come.
const NO_PUSH_WAIT: Duration = Duration::from_millis(1_500);

/// One POST the push service received.
#[derive(Debug)]
struct Received {
    path: String,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
    at: Instant,
}

/// What the push service answers next: a status, and a `Retry-After` (seconds or a date).
type Script = Arc<Mutex<VecDeque<(u16, Option<String>)>>>;

/// The push service: records every POST and answers the scripted statuses in order (201 once
/// they run out), each with an optional `Retry-After`.
struct PushService {
    origin: String,
    received: tokio::sync::mpsc::UnboundedReceiver<Received>,
    script: Script,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PushService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PushService {
    async fn start() -> Self {
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        let script: Script = Arc::default();
        let answers = script.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (sender, answers) = (sender.clone(), answers.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let _ = sender.send(Received {
                    path: parts.uri.path().to_owned(),
                    headers: parts.headers,
                    body,
                    at: Instant::now(),
                });
                let (status, retry_after) = answers.lock().pop_front().unwrap_or((201, None));
                let mut response = axum::http::Response::builder().status(status);
                if let Some(retry_after) = retry_after {
                    response = response.header("retry-after", retry_after);
                }
                response.body(axum::body::Body::empty()).unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { origin, received, script, task }
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/push/{name}", self.origin)
    }

    fn answer_next(&self, status: u16, retry_after: Option<u64>) {
        self.script.lock().push_back((status, retry_after.map(|secs| secs.to_string())));
    }

    /// The next answer is `status` with `Retry-After: date` (an HTTP date).
    fn answer_next_until(&self, status: u16, date: std::time::SystemTime) {
        self.script.lock().push_back((status, Some(httpdate::fmt_http_date(date))));
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(PUSH_WAIT, self.received.recv()).await.expect("a push in time").unwrap()
    }

    /// Asserts nothing arrives for `wait`.
    async fn expect_none(&mut self, wait: Duration) {
        if let Ok(Some(push)) = tokio::time::timeout(wait, self.received.recv()).await {
            panic!("no push expected, got one to {}", push.path);
        }
    }
}

/// Checks a push as a push service and a browser would: the VAPID JWT (ES256 by the server's
/// key, `aud` the endpoint's origin, `exp` within 24 h, a subject), the RFC 8030/8291 headers,
/// and decrypts the body with the browser's keys. Returns the payload.
fn open_push(push: &Received, service: &PushService, server_key: &str, keys: &BrowserKeys) -> Value {
    use p256::ecdsa::signature::Verifier as _;
    let header =
        |name: &str| push.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert_eq!(header("content-encoding"), "aes128gcm");
    assert_eq!(header("content-type"), "application/octet-stream");
    assert!(header("ttl").parse::<u32>().is_ok(), "TTL: {:?}", header("ttl"));
    assert!(["very-low", "low", "normal", "high"].contains(&header("urgency").as_str()));
    let authorization = header("authorization");
    let (token, k) = authorization.strip_prefix("vapid t=").unwrap().split_once(", k=").unwrap();
    assert_eq!(k, server_key, "k is the server's public key");
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let (jwt_header, claims) = signed.split_once('.').unwrap();
    let jwt_header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(jwt_header).unwrap()).unwrap();
    assert_eq!(jwt_header["alg"], "ES256");
    let public = p256::PublicKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(k).unwrap()).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).unwrap()).unwrap();
    p256::ecdsa::VerifyingKey::from(public)
        .verify(signed.as_bytes(), &signature)
        .expect("a valid ES256 signature");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["aud"], service.origin, "aud is the endpoint's origin, port included");
    let exp = claims["exp"].as_u64().unwrap();
    let now = support::now_unix();
    assert!(exp > now && exp <= now + 24 * 3600, "exp {exp} within 24 h of {now}");
    assert!(claims["sub"].as_str().unwrap().starts_with("mailto:"));
    let auth = web_push_native::Auth::clone_from_slice(&keys.auth);
    let plain = web_push_native::decrypt(push.body.to_vec(), &keys.secret, &auth)
        .expect("decrypts with the browser's keys");
    serde_json::from_slice(&plain).unwrap()
}

/// A server that sends pushes, with a short grace period, on `store`.
async fn sending_server(store: Arc<dyn herald_core::Store>, settings: ServerSettings) -> Server {
    Server::with(Limits { push_grace: GRACE, ..Limits::default() }, settings, store).await
}

fn server_key(settings: &ServerSettings) -> String {
    settings.push.vapid.as_ref().unwrap().public_key().to_owned()
}

/// The value of `series` (a name with its labels, as written) in `/metrics`, read through an
/// admin listener over `server`'s app; 0 if absent.
async fn metric(server: &Server, series: &str) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = herald_server::start_admin(server.app.clone(), listener).unwrap();
    let text = reqwest::get(format!("http://{}/metrics", admin.addr)).await.unwrap().text().await.unwrap();
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok()).unwrap_or(0.0)
}

/// Registers a subscription to `endpoint` for `user`'s `session` through the API.
async fn register(server: &Server, user: &str, session: &str, endpoint: &str) -> BrowserKeys {
    let keys = BrowserKeys::new();
    let token = server.token(user, Some(session));
    let (status, body) =
        subscription_request(server, reqwest::Method::POST, &token, &keys.subscription(endpoint)).await;
    assert_eq!(status, 201, "{body}");
    keys
}

#[tokio::test]
async fn an_offline_user_gets_one_push_per_subscription_with_what_was_published() {
    let mut service = PushService::start().await;
    let settings = push_settings(true);
    let key = server_key(&settings);
    let server = sending_server(support::memory(Retention::default()), settings).await;
    let laptop = register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    let phone = register(&server, "alice", "phone", &service.endpoint("phone")).await;

    let published = Instant::now();
    let (status, receipt) = server
        .publish(
            json!({"to": {"user": "alice"}, "type": "message.new", "data": {"text": "héllo", "n": [1, 2.5]}}),
        )
        .await;
    assert_eq!(status, 200, "{receipt}");
    let mut got = Vec::new();
    for _ in 0..2 {
        let push = service.next().await;
        assert!(push.at - published >= GRACE, "sent after the grace period, not before");
        // The type has a `.`, which a Topic header cannot: its hash stands in.
        assert_eq!(push.headers["topic"], herald_core::push_topic_of_kind("message.new").as_str());
        let keys = if push.path.ends_with("laptop") { &laptop } else { &phone };
        let payload = open_push(&push, &service, &key, keys);
        assert_eq!(
            payload,
            json!({"type": "message.new", "seq": 1, "data": {"text": "héllo", "n": [1, 2.5]}})
        );
        got.push(push.path);
    }
    got.sort();
    assert_eq!(got, ["/push/laptop", "/push/phone"]);
    service.expect_none(NO_PUSH_WAIT).await;

    // `push_payload` replaces the data in the push (not in the inbox); `never` sends nothing.
    server
        .publish(json!({"to": {"user": "alice"}, "data": {"big": "x"}, "push": "always", "push_payload": {"title": "Hi", "url": "/m/1"}, "push_urgency": "high", "push_topic": "chat-1"}))
        .await;
    for _ in 0..2 {
        let push = service.next().await;
        assert_eq!(push.headers["urgency"], "high");
        assert_eq!(push.headers["topic"], "chat-1");
        let keys = if push.path.ends_with("laptop") { &laptop } else { &phone };
        assert_eq!(open_push(&push, &service, &key, keys)["data"], json!({"title": "Hi", "url": "/m/1"}));
    }
    server.publish(json!({"to": {"user": "alice"}, "data": 1, "push": "never"})).await;
    service.expect_none(NO_PUSH_WAIT).await;
}

#[tokio::test]
async fn a_session_with_a_live_tab_gets_no_push_under_offline_and_one_under_always() {
    let mut service = PushService::start().await;
    let settings = push_settings(true);
    let key = server_key(&settings);
    let server = sending_server(support::memory(Retention::default()), settings).await;
    let _laptop = register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    let phone = register(&server, "alice", "phone", &service.endpoint("phone")).await;
    let (mut tab, _) = server.connect(&server.token("alice", Some("laptop")), "").await;

    server.publish(json!({"to": {"user": "alice"}, "data": "hi"})).await;
    tab.durable(1).await;
    let push = service.next().await;
    assert_eq!(push.path, "/push/phone", "only the session without a tab");
    assert_eq!(open_push(&push, &service, &key, &phone)["seq"], 1);
    service.expect_none(NO_PUSH_WAIT).await;

    server.publish(json!({"to": {"user": "alice"}, "data": "hi", "push": "always"})).await;
    let mut paths = vec![service.next().await.path, service.next().await.path];
    paths.sort();
    assert_eq!(paths, ["/push/laptop", "/push/phone"]);
}

#[tokio::test]
async fn a_reload_within_the_grace_period_sends_no_push() {
    let mut service = PushService::start().await;
    let server = sending_server(support::memory(Retention::default()), push_settings(true)).await;
    register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    let token = server.token("alice", Some("laptop"));
    let (tab, _) = server.connect(&token, "").await;
    // The page reloads: its tab goes, the notification comes meanwhile, the new tab comes
    // back within the grace period (and would replay it from its resume point).
    drop(tab);
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.publish(json!({"to": {"user": "alice"}, "data": "while reloading"})).await;
    let (_again, _) = server.connect(&token, "").await;
    service.expect_none(NO_PUSH_WAIT).await;
}

#[tokio::test]
async fn a_410_removes_the_subscription() {
    let mut service = PushService::start().await;
    let server = sending_server(support::memory(Retention::default()), push_settings(true)).await;
    register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    service.answer_next(410, None);
    server.publish(json!({"to": {"user": "alice"}, "data": 1, "push": "always"})).await;
    assert_eq!(service.next().await.path, "/push/laptop");
    let deadline = Instant::now() + PUSH_WAIT;
    while !listed_ids(&server.get("/v1/users/alice/push-subscriptions").await.1).is_empty() {
        assert!(Instant::now() < deadline, "the subscription is removed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&server, "herald_push_subscriptions_removed_total").await, 1.0);
    assert_eq!(metric(&server, r#"herald_push_failed_total{reason="4xx"}"#).await, 1.0);
    assert_eq!(metric(&server, "herald_push_sent_total").await, 0.0);
    server.publish(json!({"to": {"user": "alice"}, "data": 2, "push": "always"})).await;
    service.expect_none(NO_PUSH_WAIT).await;
}

#[tokio::test]
async fn a_429_with_retry_after_is_sent_again_after_it() {
    let mut service = PushService::start().await;
    let settings = push_settings(true);
    let key = server_key(&settings);
    let server = sending_server(support::memory(Retention::default()), settings).await;
    let keys = register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    service.answer_next(429, Some(2));
    server.publish(json!({"to": {"user": "alice"}, "data": "again", "push": "always"})).await;
    let refused = service.next().await;
    let retried = service.next().await;
    assert!(retried.at - refused.at >= Duration::from_secs(2), "waited {:?}", retried.at - refused.at);
    assert_eq!(open_push(&retried, &service, &key, &keys)["data"], "again");
    service.expect_none(NO_PUSH_WAIT).await;
    assert_eq!(metric(&server, r#"herald_push_failed_total{reason="4xx"}"#).await, 1.0, "the 429");
    assert_eq!(metric(&server, "herald_push_sent_total").await, 1.0, "the retry");
    assert_eq!(metric(&server, "herald_push_outbox_deliveries").await, 0.0, "the one delivery settled");
}

#[tokio::test]
async fn pushes_due_at_a_restart_are_sent_once_after_it() {
    let mut service = PushService::start().await;
    let settings = push_settings(true);
    let key = server_key(&settings);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let long_grace = Limits { push_grace: Duration::from_secs(2), ..Limits::default() };
    let first =
        Server::with(long_grace, settings.clone(), support::sqlite(&path, Retention::default())).await;
    let keys = register(&first, "alice", "laptop", &service.endpoint("laptop")).await;
    first.publish(json!({"to": {"user": "alice"}, "data": "kept"})).await;
    // Stopped before the push is due: it waits in the store's outbox.
    first.shutdown().await;
    service.expect_none(Duration::from_millis(500)).await;

    let second = sending_server(support::sqlite(&path, Retention::default()), settings).await;
    let push = service.next().await;
    assert_eq!(
        open_push(&push, &service, &key, &keys),
        json!({"type": "notification", "seq": 1, "data": "kept"})
    );
    service.expect_none(NO_PUSH_WAIT).await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_retry_after_date_is_honoured() {
    let mut service = PushService::start().await;
    let server = sending_server(support::memory(Retention::default()), push_settings(true)).await;
    register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    // Three seconds ahead, to the second: at least two seconds' wait, where the back-off's
    // first would be one.
    service.answer_next_until(503, std::time::SystemTime::now() + Duration::from_secs(3));
    server.publish(json!({"to": {"user": "alice"}, "data": "later", "push": "always"})).await;
    let refused = service.next().await;
    let retried = service.next().await;
    assert!(retried.at - refused.at >= Duration::from_secs(2), "waited {:?}", retried.at - refused.at);
    service.expect_none(NO_PUSH_WAIT).await;
}

/// A push request as the notifier makes one for `always`, due now, whose marker a sender may
/// expand from `expand_by_ms` on.
fn always_now(expand_by_ms: i64) -> Arc<herald_core::PushRequest> {
    Arc::new(herald_core::PushRequest {
        policy: herald_core::PushPolicy::Always,
        payload: None,
        ttl_secs: 60,
        urgency: herald_core::PushUrgency::Normal,
        topic: "notification".to_owned(),
        due_at_ms: herald_core::notification::now_ms(),
        expand_by_ms,
    })
}

/// The process died between the append's commit and the expansion of its pushes: here the
/// append is made on the store directly, with its push request, and nothing expands it. The
/// sender finds the marker (orphaned: its time has come) and sends the push once; the publish
/// retried with its idempotency key stores nothing and pushes nothing more.
#[tokio::test]
async fn a_push_whose_publish_died_before_expanding_it_is_sent_once() {
    let mut service = PushService::start().await;
    let settings = push_settings(true);
    let key = server_key(&settings);
    let store = support::memory(Retention::default());
    let server = sending_server(Arc::clone(&store), settings).await;
    let keys = register(&server, "alice", "laptop", &service.endpoint("laptop")).await;
    let entry = herald_core::NewNotification {
        user: herald_core::UserId::new("alice").unwrap(),
        kind: Arc::from("notification"),
        data: Arc::from(serde_json::value::to_raw_value(&json!("orphaned")).unwrap()),
        created_at_ms: herald_core::notification::now_ms(),
        audience: herald_core::Audience::user(),
        push: Some(always_now(herald_core::notification::now_ms())),
    };
    let herald_core::Appended::Stored { push_pending, .. } =
        store.append(vec![entry], Some("the-publish")).await.unwrap()
    else {
        panic!("stored")
    };
    assert_eq!(push_pending.len(), 1, "the append kept a marker");
    let push = service.next().await;
    assert_eq!(
        open_push(&push, &service, &key, &keys),
        json!({"type": "notification", "seq": 1, "data": "orphaned"})
    );
    // The client retries the publish that "failed": a repeat, no second push.
    let (status, receipt) = server
        .publish(json!({"to": {"user": "alice"}, "data": "orphaned", "push": "always", "idempotency_key": "the-publish"}))
        .await;
    assert_eq!((status, receipt["notifications"][0]["seq"].as_u64()), (200, Some(1)), "{receipt}");
    service.expect_none(NO_PUSH_WAIT).await;
    assert_eq!(store.push_next_due().await.unwrap(), None, "no marker, no delivery left");
}

/// One publish to more users than it expands itself (`PUSH_USERS_PER_PUBLISH_MAX`): every user
/// gets a push, the ones beyond the bound from the sender; each once.
#[tokio::test]
async fn a_publish_to_more_than_a_hundred_users_pushes_to_all_of_them() {
    let mut service = PushService::start().await;
    let server = sending_server(support::memory(Retention::default()), push_settings(true)).await;
    let users: Vec<String> =
        (0..herald_core::PUSH_USERS_PER_PUBLISH_MAX + 20).map(|n| format!("u{n:03}")).collect();
    for user in &users {
        register(&server, user, "s", &service.endpoint(user)).await;
    }
    let (status, body) = server.publish(json!({"to": {"users": users}, "data": 1, "push": "always"})).await;
    assert_eq!(status, 200, "{body}");
    let mut paths = Vec::new();
    for _ in &users {
        paths.push(service.next().await.path);
    }
    paths.sort();
    let expected: Vec<String> = users.iter().map(|user| format!("/push/{user}")).collect();
    assert_eq!(paths, expected, "one push per user, none twice");
    service.expect_none(NO_PUSH_WAIT).await;
}

/// Without a VAPID key push is off: a publish to a user who has a push subscription (kept in
/// the store from when push was on) keeps no marker and enqueues nothing; with one, the same
/// publish keeps its marker until it is expanded.
#[tokio::test]
async fn a_publish_touches_no_push_table_when_push_is_off() {
    let store = support::memory(Retention::default());
    let subscription = herald_core::PushSubscription {
        id: herald_core::push_subscription_id("https://fcm.googleapis.com/fcm/send/x"),
        user: herald_core::UserId::new("alice").unwrap(),
        session: herald_core::SessionId::new("s").unwrap(),
        endpoint: "https://fcm.googleapis.com/fcm/send/x".to_owned(),
        p256dh: "k".to_owned(),
        auth: "a".to_owned(),
        created_at_ms: 1,
    };
    store.push_subscribe(&subscription, herald_core::PushBounds::default()).await.unwrap();
    let off = Server::with(Limits::default(), support::settings(), Arc::clone(&store)).await;
    for policy in ["offline", "always"] {
        assert_eq!(off.publish(json!({"to": {"user": "alice"}, "data": 1, "push": policy})).await.0, 200);
    }
    assert_eq!(store.push_next_due().await.unwrap(), None, "no marker, no delivery");
    off.shutdown().await;

    // The same under a server with push on (a long grace: the delivery waits in the outbox).
    let long_grace = Limits { push_grace: Duration::from_secs(60), ..Limits::default() };
    let on = Server::with(long_grace, push_settings(false), Arc::clone(&store)).await;
    assert_eq!(on.publish(json!({"to": {"user": "alice"}, "data": 1})).await.0, 200);
    assert_eq!(store.push_outbox_depth().await.unwrap(), 1, "the publish expanded its marker");
    on.shutdown().await;
}
