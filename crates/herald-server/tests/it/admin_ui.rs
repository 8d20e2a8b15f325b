//! The admin page's endpoints (`herald_server::admin::ui`) on the admin listener, over real
//! HTTP: sign-in with the API key and the session cookie, refusals without it, with a forged
//! one, without the CSRF header or from another origin, bad input; and what the actions do to
//! real streams.

use herald_server::AdminServer;
use serde_json::{Value, json};

use crate::support::*;

/// The admin listener of `server`'s app (as `--admin-listen` serves it).
struct Admin {
    url: String,
    _server: AdminServer,
    http: reqwest::Client,
}

impl Admin {
    async fn start(server: &TestServer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = herald_server::start_admin(server.app.clone(), listener).unwrap();
        Self { url: format!("http://{}", admin.addr), _server: admin, http: reqwest::Client::new() }
    }

    /// Signs in with `key`; returns the answer and the session cookie (`name=value`) if any.
    async fn sign_in(&self, key: &str) -> ((u16, Value), Option<String>) {
        let response = self
            .http
            .post(format!("{}/admin/sign-in", self.url))
            .header("x-herald-admin", "1")
            .json(&json!({ "key": key }))
            .send()
            .await
            .unwrap();
        let set_cookie = response.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned());
        (answer(response).await, set_cookie)
    }

    async fn signed_in(&self) -> String {
        let ((status, body), set_cookie) = self.sign_in(API_KEY).await;
        assert_eq!(status, 204, "{body}");
        let set_cookie = set_cookie.expect("a session cookie");
        assert!(set_cookie.contains("; Path=/admin; HttpOnly; SameSite=Strict"), "{set_cookie}");
        assert!(!set_cookie.contains(API_KEY), "the cookie holds a session, not the key");
        set_cookie.split(';').next().unwrap().to_owned()
    }

    /// A request with `cookie` and, for anything but GET, the CSRF header.
    async fn call(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET {
            request = request.header("x-herald-admin", "1");
        }
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.unwrap()).await
    }
}

#[tokio::test]
async fn every_endpoint_needs_a_live_session() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let forged = format!("herald_admin={}", "ab".repeat(32));
    let routes = [
        ("GET", "/admin/api/session"),
        ("GET", "/admin/api/overview"),
        ("GET", "/admin/api/events"),
        ("GET", "/admin/api/users?prefix=a"),
        ("GET", "/admin/api/users/alice"),
        ("POST", "/admin/api/users/alice/notify"),
        ("DELETE", "/admin/api/users/alice/sessions/s1"),
        ("DELETE", "/admin/api/users/alice/sessions/s1/clients/c1"),
    ];
    for (method, path) in routes {
        let body = (method == "POST").then(|| json!({ "text": "hi" }));
        let key_as_cookie = format!("herald_admin={API_KEY}");
        for cookie in [None, Some(forged.as_str()), Some(key_as_cookie.as_str())] {
            let got = admin.call(method, path, cookie, body.clone()).await;
            assert_error(&got, 401, "not_signed_in");
        }
    }
    // The page itself and its assets are public (they hold no data).
    for path in ["/admin", "/admin/admin.js", "/admin/admin.css"] {
        let response = admin.http.get(format!("{}{path}", admin.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        if path == "/admin" {
            // Should the script not run, the browser sends the form itself: the key in a POST's
            // body (refused: 405), never in a GET's query string, where it would be logged.
            let page = response.text().await.unwrap();
            assert!(page.contains(r#"<form id="signin-form" method="post""#), "{page}");
        }
    }
    // A session ends at sign-out: the same cookie is refused afterwards.
    let cookie = admin.signed_in().await;
    assert_eq!(admin.call("GET", "/admin/api/session", Some(&cookie), None).await.0, 200);
    assert_eq!(admin.call("POST", "/admin/sign-out", Some(&cookie), None).await.0, 204);
    assert_error(&admin.call("GET", "/admin/api/session", Some(&cookie), None).await, 401, "not_signed_in");
}

#[tokio::test]
async fn a_wrong_key_is_refused_after_a_delay() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let started = std::time::Instant::now();
    let (got, set_cookie) = admin.sign_in("not-the-key").await;
    assert_error(&got, 401, "invalid_api_key");
    assert!(set_cookie.is_none());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "{:?}", started.elapsed());
}

#[tokio::test]
async fn changes_need_the_csrf_header_and_the_pages_origin() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let cookie = admin.signed_in().await;
    let url = format!("{}/admin/api/users/alice/notify", admin.url);
    // Signed in, but without the header: what a form on another site would send.
    let response =
        admin.http.post(&url).header("cookie", &cookie).json(&json!({ "text": "hi" })).send().await.unwrap();
    assert_error(&answer(response).await, 403, "csrf_refused");
    // With the header, from another origin.
    let response = admin
        .http
        .post(&url)
        .header("cookie", &cookie)
        .header("x-herald-admin", "1")
        .header("origin", "http://evil.example")
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .unwrap();
    assert_error(&answer(response).await, 403, "csrf_refused");
    // The sign-in too (a login CSRF would sign the operator's browser in to another server).
    let response = admin
        .http
        .post(format!("{}/admin/sign-in", admin.url))
        .json(&json!({ "key": API_KEY }))
        .send()
        .await
        .unwrap();
    assert_error(&answer(response).await, 403, "csrf_refused");
    // The page's own origin passes; nothing was published before.
    assert!(server.stored("alice").await.is_empty());
    let host = admin.url.strip_prefix("http://").unwrap();
    let response = admin
        .http
        .post(&url)
        .header("cookie", &cookie)
        .header("x-herald-admin", "1")
        .header("origin", format!("http://{host}"))
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await.0, 200);
}

#[tokio::test]
async fn bad_input_is_a_json_4xx() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let cookie = admin.signed_in().await;
    let cookie = Some(cookie.as_str());
    let long = "a".repeat(129);
    assert_error(
        &admin.call("GET", &format!("/admin/api/users?prefix={long}"), cookie, None).await,
        400,
        "invalid_prefix",
    );
    assert_error(
        &admin.call("GET", "/admin/api/users?prefix=a&x=1", cookie, None).await,
        400,
        "invalid_query",
    );
    assert_error(
        &admin.call("GET", &format!("/admin/api/users/{long}"), cookie, None).await,
        400,
        "invalid_id",
    );
    let notify = "/admin/api/users/alice/notify";
    assert_error(
        &admin.call("POST", notify, cookie, Some(json!({ "text": " " }))).await,
        400,
        "invalid_text",
    );
    assert_error(
        &admin.call("POST", notify, cookie, Some(json!({ "text": "x".repeat(501) }))).await,
        400,
        "invalid_text",
    );
    assert_error(
        &admin.call("POST", notify, cookie, Some(json!({ "txt": "hi" }))).await,
        400,
        "invalid_json",
    );
    assert_error(
        &admin.call("DELETE", "/admin/api/users/alice/sessions/s1/clients/nope", cookie, None).await,
        404,
        "client_not_found",
    );
    let wrong_body = admin
        .http
        .post(format!("{}/admin/sign-in", admin.url))
        .header("x-herald-admin", "1")
        .body("key=1")
        .send()
        .await
        .unwrap();
    assert!(answer(wrong_body).await.0 / 100 == 4);
    assert!(server.stored("alice").await.is_empty(), "nothing was published");
}

#[tokio::test]
async fn the_tree_follows_tabs_and_the_actions_reach_them() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let cookie = admin.signed_in().await;
    let cookie = Some(cookie.as_str());
    // The laptop's tab may listen to `room:*` topics, and listens to one.
    let now = now_unix();
    let laptop_token = sign(
        &json!({ "sub": "alice", "sid": "laptop", "iat": now, "exp": now + 3600, "topics": ["room:*"] }),
    );
    let (mut laptop, laptop_hello) = server.connect(&laptop_token, "").await;
    let listened = server
        .http
        .post(format!("{}/v1/listen", server.url))
        .bearer_auth(&laptop_token)
        .header("x-herald-client", laptop_hello["client"].as_str().unwrap())
        .json(&json!({ "topics": ["room:7"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(answer(listened).await.0, 200);
    let (mut phone, _) = server.connect(&server.token("alice", Some("phone")), "").await;
    let (mut second, second_hello) = server.connect(&server.token("alice", Some("phone")), "").await;
    let (_bob, _) = server.connect(&server.token("bob", Some("desk")), "").await;

    let (status, body) = admin.call("GET", "/admin/api/users?prefix=al", cookie, None).await;
    assert_eq!(status, 200, "{body}");
    let users = body["users"].as_array().unwrap();
    assert_eq!(users.len(), 1, "{body}");
    assert_eq!(users[0]["user"], "alice");
    assert_eq!(users[0]["unread"], 0);
    let sessions: Vec<(&str, usize)> = users[0]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["session"].as_str().unwrap(), s["clients"].as_array().unwrap().len()))
        .collect();
    assert_eq!(sessions, [("laptop", 1), ("phone", 2)]);
    let tab = &users[0]["sessions"][0]["clients"][0];
    assert_eq!(
        (tab["client"].as_str(), tab["transport"].as_str()),
        (laptop_hello["client"].as_str(), Some("sse"))
    );
    let node = server.app.settings.node_id.as_str();
    assert_eq!((tab["node"].as_str(), &tab["topics"]), (Some(node), &json!(["room:7"])), "{tab}");
    let phone_tab = &users[0]["sessions"][1]["clients"][0];
    assert_eq!((phone_tab["node"].as_str(), &phone_tab["topics"]), (Some(node), &json!([])), "{phone_tab}");

    // A test notification reaches every tab and the log.
    let (status, receipt) =
        admin.call("POST", "/admin/api/users/alice/notify", cookie, Some(json!({ "text": "hello" }))).await;
    assert_eq!((status, receipt["delivered"].as_u64()), (200, Some(3)), "{receipt}");
    for sse in [&mut laptop, &mut phone, &mut second] {
        let n = sse.notification().await;
        assert_eq!(
            (n.data["type"].as_str(), n.data["data"]["text"].as_str()),
            (Some("admin.test"), Some("hello"))
        );
    }
    let (status, detail) = admin.call("GET", "/admin/api/users/alice", cookie, None).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!((detail["last_seq"].as_u64(), detail["counts"]["unread"].as_u64()), (Some(1), Some(1)));
    assert_eq!(detail["log"][0]["data"]["text"], "hello");

    // Closing one tab leaves its session's other tab.
    let second_client = second_hello["client"].as_str().unwrap();
    let path = format!("/admin/api/users/alice/sessions/phone/clients/{}", enc(second_client));
    assert_eq!(admin.call("DELETE", &path, cookie, None).await.0, 200);
    second.expect_closed("evicted").await;
    phone.expect_silence(QUIET).await;
    // Closing a session signs it out.
    let (status, closed) = admin.call("DELETE", "/admin/api/users/alice/sessions/phone", cookie, None).await;
    assert_eq!((status, closed["closed"].as_u64()), (200, Some(1)), "{closed}");
    phone.expect_closed("session_closed").await;
    laptop.expect_silence(QUIET).await;
    let (_, body) = admin.call("GET", "/admin/api/users?prefix=al", cookie, None).await;
    assert_eq!(body["users"][0]["sessions"].as_array().unwrap().len(), 1, "{body}");
}

#[tokio::test]
async fn the_event_stream_sends_samples_and_ends_at_sign_out_and_shutdown() {
    let server = TestServer::start().await;
    let admin = Admin::start(&server).await;
    let cookie = admin.signed_in().await;
    let other_cookie = admin.signed_in().await;
    let (_tab, _) = server.connect(&server.token("alice", Some("laptop")), "").await;
    let response = admin
        .http
        .get(format!("{}/admin/api/events", admin.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = AdminEvents(response, String::new());
    // The sampler takes its first sample at once, then one every 5 s.
    let (event, sample) = tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap();
    assert_eq!(event, "sample", "{sample}");
    assert_eq!((sample["tabs"].as_u64(), sample["users"].as_u64()), (Some(1), Some(1)), "{sample}");
    // What happens between two samples is in the next one: a publish delivered to the tab.
    server.notify_user("alice", json!({ "n": 1 })).await;
    let (_, sample) = tokio::time::timeout(WAIT, events.next()).await.unwrap().unwrap();
    assert!(sample["publishes_per_sec"].as_f64().unwrap() > 0.0, "{sample}");
    assert!(sample["deliveries_per_sec"].as_f64().unwrap() > 0.0, "{sample}");
    assert!(sample["p99_ms"].as_f64().is_some(), "{sample}");
    let (status, overview) = admin.call("GET", "/admin/api/overview", Some(&cookie), None).await;
    assert_eq!(status, 200);
    assert!(!overview["samples"].as_array().unwrap().is_empty());
    assert_eq!(admin.call("POST", "/admin/sign-out", Some(&cookie), None).await.0, 204);
    // The next sample finds the session gone and ends the stream.
    assert_eq!(tokio::time::timeout(WAIT, events.next()).await.unwrap(), None, "the stream ends");
    // Another operator's stream ends when the node shuts down.
    let response = admin
        .http
        .get(format!("{}/admin/api/events", admin.url))
        .header("cookie", &other_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = AdminEvents(response, String::new());
    server.shutdown().await;
    assert_eq!(tokio::time::timeout(WAIT, events.next()).await.unwrap(), None, "the stream ends");
}

/// Longest wait for the admin event stream: a sample comes every 5 s.
const WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// The admin page's event stream (not the public API's: read here, not by `support`'s reader,
/// which checks events against the OpenAPI description of the public streams).
struct AdminEvents(reqwest::Response, String);

impl AdminEvents {
    /// The next event's name and data; `None` when the stream ended.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.1.find("\n\n") {
                let frame: String = self.1.drain(..end + 2).collect();
                let mut event = None;
                let mut data = None;
                for line in frame.lines() {
                    if let Some(name) = line.strip_prefix("event: ") {
                        event = Some(name.to_owned());
                    } else if let Some(json) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(json).unwrap());
                    }
                }
                match (event, data) {
                    (Some(event), Some(data)) => return Some((event, data)),
                    _ => continue, // a comment
                }
            }
            let chunk = self.0.chunk().await.ok()??;
            self.1.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }
}
