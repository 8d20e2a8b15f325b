//! The caps against hostile load, over real sockets: the node's connection cap (503 at accept),
//! the per-address limits of subscriber routes (with and without a trusted proxy), the per-user
//! inbox write rate, and a flood by one address and user that leaves another user served.
//!
//! No test asserts a latency: the machine is shared. The latency of a publish under a flood is
//! measured by `crates/herald/tests/flood.rs` (ignored by default) on the release binary.

use crate::support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use herald_server::caps::{CONNECTIONS_RETRY_AFTER_SECS, Caps, REFUSAL_DELAY};
use serde_json::{Value, json};
use support::{API_KEY, EVENT_WAIT, Sse, TestServer, assert_error, memory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Caps with every per-address and per-user limit off; each test turns on what it checks.
fn caps_off() -> Caps {
    Caps {
        connections_max: Some(0),
        ip_connections_max: 0,
        ip_requests_per_sec: 0,
        ip_requests_burst: 0,
        trusted_proxies: Vec::new(),
        inbox_writes_per_sec: 0,
        inbox_writes_burst: 0,
    }
}

async fn server_with(caps: Caps) -> TestServer {
    let settings = ServerSettings { caps, ..ServerSettings::default() };
    TestServer::with(Limits::default(), settings, memory(Retention::default())).await
}

fn addr(server: &TestServer) -> String {
    server.url.trim_start_matches("http://").to_owned()
}

/// A client that never reuses a connection, so each request opens one (and a stream takes the
/// lean path).
fn fresh() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap()
}

/// One request on a fresh raw connection: the status, the headers (lower case), the body as
/// JSON (`Null` if not JSON). Reads to the end of the connection (`connection: close`).
async fn raw_request(addr: &str, request: &str) -> (u16, Vec<(String, String)>, Value) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    // The server may answer (and close) before reading: a failed write is fine.
    let _ = socket.write_all(request.as_bytes()).await;
    let mut bytes = Vec::new();
    tokio::time::timeout(EVENT_WAIT, socket.read_to_end(&mut bytes))
        .await
        .expect("no complete answer in time")
        .expect("the answer was cut off by a reset");
    let text = String::from_utf8(bytes).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.trim().to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    (status, headers, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Waits (bounded) until the server counts `open` connections.
async fn wait_for_connections(server: &TestServer, open: usize) {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    while server.app.limiter.connections_open() != open {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server counts {} connections, expected {open}",
            server.app.limiter.connections_open()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `GET /v1/stream` on a fresh connection (the lean path) with `token` and extra `headers`;
/// the response, unread.
async fn stream(server: &TestServer, token: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = fresh().get(format!("{}/v1/stream", server.url)).bearer_auth(token);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

/// The status, `Retry-After` and JSON body of a refused response.
async fn refused(response: reqwest::Response) -> (u16, Option<String>, Value) {
    let status = response.status().as_u16();
    // An accepted stream's body never ends: fail rather than read it.
    assert!(status >= 400, "accepted with {status}");
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap_or(Value::Null))
}

#[track_caller]
fn assert_refused(got: &(u16, Option<String>, Value), status: u16, code: &str) {
    let (got_status, retry_after, body) = got;
    assert_error(&(*got_status, body.clone()), status, code);
    let secs: u64 = retry_after.as_deref().expect("no Retry-After").parse().unwrap();
    // A 429's Retry-After is lowered by the refusal delay it already waited (to 0 at least).
    if *got_status != 429 {
        assert!(secs >= 1, "Retry-After: {secs}");
    }
}

/// A `429` is answered only after `REFUSAL_DELAY`, on the lean path and through the router, with
/// `Retry-After` lowered by as much: a client that retries at once is slowed to one request per
/// connection per delay, and its refusals stop taking the CPU other users need.
#[tokio::test]
async fn a_refusal_is_answered_after_the_refusal_delay_with_retry_after_lowered() {
    let server = server_with(Caps { ip_connections_max: 1, ..caps_off() }).await;
    let token = server.token("alice", None);
    let held = stream(&server, &token, &[]).await;
    assert_eq!(held.status(), 200);
    let expected_retry_after = (CONNECTIONS_RETRY_AFTER_SECS - REFUSAL_DELAY.as_secs()).to_string();
    // A stream on a fresh connection takes the lean path; a poll goes through the router.
    for path in ["/v1/stream", "/v1/poll?timeout=0"] {
        let started = Instant::now();
        let response = fresh().get(format!("{}{path}", server.url)).bearer_auth(&token).send().await.unwrap();
        let elapsed = started.elapsed();
        let (status, retry_after, body) = refused(response).await;
        assert_error(&(status, body), 429, "too_many_connections");
        assert!(elapsed >= REFUSAL_DELAY, "{path}: refused after {elapsed:?}");
        assert_eq!(retry_after.as_deref(), Some(expected_retry_after.as_str()), "{path}");
    }
    drop(held);
}

/// Opens `/v1/ws` with `token` and `headers`; `Err(status)` if the handshake is refused.
async fn websocket(
    server: &TestServer,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, u16> {
    let url = format!("{}/v1/ws", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
        Err(other) => panic!("WebSocket handshake failed: {other}"),
    }
}

#[tokio::test]
async fn connections_over_the_node_cap_get_503_and_those_within_are_served() {
    let server = server_with(Caps { connections_max: Some(3), ..caps_off() }).await;
    let token = server.token("alice", Some("s1"));
    // Three connections of every kind: a stream on the lean path, an upgraded WebSocket (its
    // socket left hyper for a task of its own) and an idle kept-alive connection.
    let mut alice = Sse::new(stream(&server, &token, &[]).await);
    assert_eq!(alice.next().await.unwrap().event, "hello");
    let ws = websocket(&server, &token, &[]).await.expect("the WebSocket was refused");
    let mut idle = support::RawConnection::open(&addr(&server)).await;
    let (status, headers) = idle.get("/healthz", &[]).await;
    assert_eq!(status, 200);
    idle.sized_body(&headers).await;
    wait_for_connections(&server, 3).await;

    // One more: 503 with Retry-After and a JSON body, at once.
    let request = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", addr(&server));
    let (status, headers, body) = raw_request(&addr(&server), &request).await;
    assert_error(&(status, body), 503, "overloaded");
    assert_eq!(header(&headers, "retry-after"), Some("5"));
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(server.app.limiter.connections_open(), 3);

    // Those within the cap are still served: the kept-alive connection answers, and the stream
    // gets a notification (published in process: the publisher's connection would be refused).
    let (status, headers) = idle.get("/healthz", &[]).await;
    assert_eq!(status, 200);
    idle.sized_body(&headers).await;
    let alice_id = herald_core::UserId::new("alice").unwrap();
    server.app.notifier.notify(&alice_id, "note", &json!(1)).await.unwrap();
    alice.durable(1).await;

    // The WebSocket counts until it closes; then a new connection is served.
    drop(ws);
    wait_for_connections(&server, 2).await;
    let (status, body) = server.publish(json!({"to": {"user": "alice"}, "data": 2})).await;
    assert_eq!(status, 200, "{body}");
    alice.durable(2).await;
}

#[tokio::test]
async fn a_stream_request_over_the_node_cap_gets_503_too() {
    let server = server_with(Caps { connections_max: Some(1), ..caps_off() }).await;
    let token = server.token("alice", None);
    let mut first = Sse::new(stream(&server, &token, &[]).await);
    assert_eq!(first.next().await.unwrap().event, "hello");
    wait_for_connections(&server, 1).await;
    assert_refused(&refused(stream(&server, &token, &[]).await).await, 503, "overloaded");
    drop(first);
    wait_for_connections(&server, 0).await;
    assert_eq!(stream(&server, &token, &[]).await.status(), 200);
}

#[tokio::test]
async fn streams_of_one_address_are_capped_and_forwarded_for_is_ignored_from_an_untrusted_peer() {
    let server = server_with(Caps { ip_connections_max: 2, ..caps_off() }).await;
    let token = server.token("alice", None);
    // Each claims another address, but the peer (127.0.0.1) is no trusted proxy.
    let lean = stream(&server, &token, &[("x-forwarded-for", "10.0.0.1")]).await;
    assert_eq!(lean.status(), 200);
    let mut on_hyper = support::RawConnection::open(&addr(&server)).await;
    let (status, headers) = on_hyper.get("/healthz", &[]).await;
    assert_eq!(status, 200);
    on_hyper.sized_body(&headers).await;
    let auth = vec![
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("x-forwarded-for".to_owned(), "10.0.0.2".to_owned()),
    ];
    let (status, _) = on_hyper.get("/v1/stream", &auth).await;
    assert_eq!(status, 200);

    let third = [("x-forwarded-for", "10.0.0.3")];
    assert_refused(&refused(stream(&server, &token, &third).await).await, 429, "too_many_connections");
    let poll = fresh()
        .get(format!("{}/v1/poll?timeout=0", server.url))
        .bearer_auth(&token)
        .header("x-forwarded-for", "10.0.0.3")
        .send()
        .await
        .unwrap();
    assert_refused(&refused(poll).await, 429, "too_many_connections");
    assert_eq!(websocket(&server, &token, &third).await.err(), Some(429));
    // Short subscriber requests are not connections.
    let counts = server.http.get(format!("{}/v1/inbox/counts", server.url)).bearer_auth(&token).send().await;
    assert_eq!(counts.unwrap().status(), 200);

    // A stream that ends gives its slot back.
    drop(lean);
    let deadline = tokio::time::Instant::now() + EVENT_WAIT;
    loop {
        let response = stream(&server, &token, &[]).await;
        if response.status() == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the closed stream's slot was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_address_has_its_own_caps() {
    let caps =
        Caps { ip_connections_max: 2, trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()], ..caps_off() };
    let server = server_with(caps).await;
    let token = server.token("alice", None);
    // A client's own header, then the proxy's append: the right-most address is the client.
    let client = [("x-forwarded-for", "6.6.6.6, 10.0.0.1")];
    let first = stream(&server, &token, &client).await;
    let second = stream(&server, &token, &client).await;
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    assert_refused(&refused(stream(&server, &token, &client).await).await, 429, "too_many_connections");
    let ws = websocket(&server, &token, &[("x-forwarded-for", "10.0.0.1")]).await;
    assert_eq!(ws.err(), Some(429));
    // Another client behind the same proxy, and the proxy itself, are not affected.
    let other = stream(&server, &token, &[("x-forwarded-for", "10.0.0.2")]).await;
    assert_eq!(other.status(), 200);
    assert!(websocket(&server, &token, &[("x-forwarded-for", "10.0.0.2")]).await.is_ok());
    assert_eq!(stream(&server, &token, &[]).await.status(), 200);
}

#[tokio::test]
async fn subscriber_requests_of_one_address_are_rate_limited_and_the_publisher_api_is_not() {
    let caps = Caps {
        ip_requests_per_sec: 1,
        ip_requests_burst: 3,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..caps_off()
    };
    let server = server_with(caps).await;
    let token = server.token("alice", None);
    let counts = |xff: &'static str| {
        server
            .http
            .get(format!("{}/v1/inbox/counts", server.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", xff)
            .send()
    };
    // The burst passes; well before 10 s have gone by, the rate (1/s) refuses.
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..10 {
        let response = counts("10.0.0.1").await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            refusal = Some(refused(response).await);
        }
    }
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert_refused(refusal.as_ref().expect("never rate limited"), 429, "rate_limited");
    // Each refusal waited a second (REFUSAL_DELAY), in which the rate gave a request back: take
    // it, then a stream open counts as a request of its address too (the lean path refuses it).
    let mut taken = false;
    for _ in 0..3 {
        if counts("10.0.0.1").await.unwrap().status() == 200 {
            taken = true;
            break;
        }
    }
    assert!(taken, "the rate never gave a request back");
    assert_refused(
        &refused(stream(&server, &token, &[("x-forwarded-for", "10.0.0.1")]).await).await,
        429,
        "rate_limited",
    );

    // Another address has its own budget; the publisher API has none.
    assert_eq!(counts("10.0.0.2").await.unwrap().status(), 200);
    for _ in 0..20 {
        let (status, body) = server.get("/v1/users/alice/inbox/counts").await;
        assert_eq!(status, 200, "{body}");
    }
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_does_not_escape_the_rate() {
    let server = server_with(Caps { ip_requests_per_sec: 1, ip_requests_burst: 3, ..caps_off() }).await;
    let token = server.token("alice", None);
    let mut limited = 0;
    for i in 0..10 {
        let response = server
            .http
            .get(format!("{}/v1/inbox/counts", server.url))
            .bearer_auth(&token)
            .header("x-forwarded-for", format!("10.0.0.{i}"))
            .send()
            .await
            .unwrap();
        limited += usize::from(response.status() == 429);
    }
    assert!(limited > 0, "a client escaped the rate with a forged X-Forwarded-For");
}

#[tokio::test]
async fn inbox_changes_of_one_user_are_rate_limited_and_others_are_not() {
    let server = server_with(Caps { inbox_writes_per_sec: 1, inbox_writes_burst: 2, ..caps_off() }).await;
    let seq = server.notify_user("alice", json!(1)).await;
    server.notify_user("bob", json!(1)).await;
    let server = &server;
    let mark = |user: &'static str| {
        let token = server.token(user, None);
        let body = json!({"seqs": [seq], "as": "read"});
        async move {
            server
                .http
                .post(format!("{}/v1/inbox/mark", server.url))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let mut statuses = Vec::new();
    let mut refusal = None;
    for _ in 0..8 {
        let response = mark("alice").await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            refusal = Some(refused(response).await);
        }
    }
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    assert_refused(refusal.as_ref().expect("alice was never rate limited"), 429, "rate_limited");
    // Deletes count too.
    let delete = server
        .http
        .delete(format!("{}/v1/inbox/{seq}", server.url))
        .bearer_auth(server.token("alice", Some("another-session")))
        .send()
        .await
        .unwrap();
    assert_refused(&refused(delete).await, 429, "rate_limited");

    // Bob, alice's reads, and the publisher API for alice are not limited.
    assert_eq!(mark("bob").await.status(), 200);
    let read = server.http.get(format!("{}/v1/inbox", server.url)).bearer_auth(server.token("alice", None));
    assert_eq!(read.send().await.unwrap().status(), 200);
    for _ in 0..5 {
        let response = server
            .http
            .post(format!("{}/v1/users/alice/inbox/mark", server.url))
            .bearer_auth(API_KEY)
            .json(&json!({"seqs": [seq], "as": "unread"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Connections of the flood.
const FLOOD_CONNECTIONS: usize = 16;
/// Marks sent on each (each refusal takes `REFUSAL_DELAY`: this keeps the test to seconds).
const FLOOD_MARKS_PER_CONNECTION: usize = 12;

#[tokio::test]
async fn a_flood_of_marks_from_one_address_leaves_another_user_served() {
    let caps = Caps {
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ip_requests_per_sec: 50,
        ip_requests_burst: 100,
        inbox_writes_per_sec: 10,
        inbox_writes_burst: 20,
        ..Caps::default()
    };
    let server = server_with(caps).await;
    server.notify_user("mallory", json!("bait")).await;
    let bob = server.token("bob", None);
    let mut bob_stream = {
        let response = stream(&server, &bob, &[("x-forwarded-for", "198.51.100.2")]).await;
        assert_eq!(response.status(), 200);
        Sse::new(response)
    };
    assert_eq!(bob_stream.next().await.unwrap().event, "hello");

    let mallory = server.token("mallory", None);
    let flood = futures::stream::iter(0..FLOOD_CONNECTIONS)
        .map(|_| {
            let (client, url, mallory) = (reqwest::Client::new(), server.url.clone(), mallory.clone());
            async move {
                let mut statuses = Vec::with_capacity(FLOOD_MARKS_PER_CONNECTION);
                for i in 0..FLOOD_MARKS_PER_CONNECTION {
                    let mark = if i.is_multiple_of(2) { "read" } else { "unread" };
                    let response = client
                        .post(format!("{url}/v1/inbox/mark"))
                        .bearer_auth(&mallory)
                        .header("x-forwarded-for", "203.0.113.66")
                        .json(&json!({"seqs": [1], "as": mark}))
                        .send()
                        .await
                        .unwrap();
                    statuses.push(response.status().as_u16());
                }
                statuses
            }
        })
        .buffer_unordered(FLOOD_CONNECTIONS)
        .collect::<Vec<_>>();

    let bob_side = async {
        let mut seqs = Vec::new();
        for i in 0..20 {
            seqs.push(server.notify_user("bob", json!(i)).await);
            let response = server
                .http
                .post(format!("{}/v1/inbox/mark", server.url))
                .bearer_auth(&bob)
                .header("x-forwarded-for", "198.51.100.2")
                .json(&json!({"seqs": [seqs[i]], "as": "read"}))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "bob's mark was refused during the flood");
        }
        seqs
    };
    let (flood, seqs) = tokio::join!(flood, bob_side);

    let statuses: Vec<u16> = flood.into_iter().flatten().collect();
    assert!(statuses.contains(&429), "the flood was never limited");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    // Every notification reaches bob's stream (between the `inbox` events of his marks).
    let mut received = Vec::new();
    while received.len() < seqs.len() {
        let event = bob_stream.next().await.expect("bob's stream ended");
        if event.event == "notification" {
            received.push(event.data["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(received, seqs);
}
