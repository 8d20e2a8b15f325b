//! Test support: a real Herald server on 127.0.0.1:0 and clients that speak its wire protocol
//! over real sockets. The SSE reader here is deliberately separate from `herald-client`'s, so the
//! tests check the bytes the server sends, not one parser against itself.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use herald_core::{Limits, Retention, Store};
use herald_server::{App, Herald, RunningServer, ServerSettings};
use herald_store::{MemoryStore, SqliteStore};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";

/// How long a test waits for an event it expects before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(5);

/// A short wait used to check that nothing (more) arrives.
pub const QUIET: Duration = Duration::from_millis(150);

/// A store in memory with `retention`.
pub fn memory(retention: Retention) -> Arc<dyn Store> {
    Arc::new(MemoryStore::new(retention))
}

/// A SQLite store in the file `path` with `retention`.
pub fn sqlite(path: &Path, retention: Retention) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(path, retention).unwrap())
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters).
pub fn enc(segment: &str) -> String {
    let mut out = String::new();
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Status and JSON body of a response (`Null` if the body is not JSON).
pub async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Like [`answer`], and checks the answer against the OpenAPI description (the operation
/// `method` on the response's path: status, content type, body schema, error codes); see
/// `openapi.rs`. The helpers of [`TestServer`] use it, so every test that calls them checks the
/// description too.
pub async fn checked_answer(method: &str, response: reqwest::Response) -> (u16, Value) {
    let path = response.url().path().to_owned();
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = response.json().await.unwrap_or(Value::Null);
    crate::openapi::spec().assert_answer_at(method, &path, status, content_type.as_deref(), &body);
    (status, body)
}

/// The `error.code` of an error body.
pub fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {body}"))
}

/// Asserts an error answer: `status`, `error.code`, and a non-empty `error.message`.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, expected_code: &str) {
    let (got_status, body) = got;
    assert_eq!((*got_status, code(body)), (status, expected_code), "{body}");
    assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty(), "{body}");
}

/// Both stream paths.
pub const STREAM_PATHS: [StreamPath; 2] = [StreamPath::Lean, StreamPath::Hyper];

/// Defines a scenario `async fn name(path: StreamPath) { … }` as a module `name` holding two
/// tests, `name::lean_path` and `name::hyper_path`.
macro_rules! on_both_stream_paths {
    ($(#[$meta:meta])* async fn $name:ident($path:ident: StreamPath) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn scenario($path: $crate::support::StreamPath) $body

            #[tokio::test]
            async fn lean_path() {
                scenario($crate::support::StreamPath::Lean).await
            }

            #[tokio::test]
            async fn hyper_path() {
                scenario($crate::support::StreamPath::Hyper).await
            }
        }
    };
}

/// Which server path a stream request takes. The server serves a `GET /v1/stream` that opens
/// its connection on a lean path of its own, and one sent on a connection that already served a
/// request through hyper and axum: the tests must cover both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPath {
    /// A fresh connection whose first request is the stream.
    Lean,
    /// A connection that first served `GET /healthz`.
    Hyper,
}

pub struct TestServer {
    pub url: String,
    pub app: Arc<App>,
    server: Option<RunningServer>,
    /// Pooled: API calls (and hyper-path streams) reuse connections.
    pub http: reqwest::Client,
    /// Never reuses a connection: every stream opened with it takes the lean path.
    fresh_http: reqwest::Client,
    /// The path [`TestServer::sse`] and friends take (default: lean).
    pub stream_path: StreamPath,
}

/// The settings every test server starts with: the defaults without the per-address and
/// per-user rates. Every test's clients come from 127.0.0.1, and most tests open streams and
/// change inboxes far faster than one person's browser would; the caps have their own tests
/// (the `caps` module), which start from `ServerSettings::default()`.
pub fn settings() -> ServerSettings {
    let caps = herald_server::caps::Caps {
        ip_connections_max: 0,
        ip_requests_per_sec: 0,
        inbox_writes_per_sec: 0,
        ..Default::default()
    };
    ServerSettings { caps, ..ServerSettings::default() }
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Limits::default(), settings(), memory(Retention::default())).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        Self::with(limits, settings(), memory(Retention::default())).await
    }

    pub async fn with_retention(retention: Retention) -> Self {
        Self::with(Limits::default(), settings(), memory(retention)).await
    }

    pub async fn with_settings(settings: ServerSettings) -> Self {
        Self::with(Limits::default(), settings, memory(Retention::default())).await
    }

    pub async fn with_store(store: Arc<dyn Store>) -> Self {
        Self::with(Limits::default(), settings(), store).await
    }

    pub async fn with(limits: Limits, settings: ServerSettings, store: Arc<dyn Store>) -> Self {
        Self::from_builder(Herald::builder(store, SECRET, API_KEY).limits(limits).settings(settings)).await
    }

    /// A server of what `builder` builds (with [`SECRET`] and [`API_KEY`]).
    pub async fn from_builder(builder: herald_server::HeraldBuilder) -> Self {
        let herald = builder.build();
        let app = herald.app().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = herald_server::start(herald, listener).unwrap();
        let url = format!("http://{}", server.addr);
        let fresh_http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        Self {
            url,
            app,
            server: Some(server),
            http: reqwest::Client::new(),
            fresh_http,
            stream_path: StreamPath::Lean,
        }
    }

    /// This server, with its streams opened on `path`.
    pub fn via(mut self, path: StreamPath) -> Self {
        self.stream_path = path;
        self
    }

    pub async fn shutdown(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    /// A subscriber token for `user` (and `session`), valid for an hour.
    pub fn token(&self, user: &str, session: Option<&str>) -> String {
        token_with_ttl(user, session, Duration::from_secs(3600))
    }

    /// `POST /v1/notify` with the API key; returns status and JSON body.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        self.post_api("/v1/notify", body).await
    }

    /// `POST /v1/notify` with the API key and `body` sent as is, as `application/json`.
    pub async fn publish_raw(&self, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/notify", self.url))
            .bearer_auth(API_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        checked_answer("post", response).await
    }

    /// `POST path` with the API key and a JSON body; returns status and JSON body.
    pub async fn post_api(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        checked_answer("post", response).await
    }

    /// Publishes a durable notification to `user`; panics unless it succeeds; returns its seq.
    pub async fn notify_user(&self, user: &str, data: Value) -> u64 {
        let (status, body) = self.publish(json!({ "to": { "user": user }, "data": data })).await;
        assert_eq!(status, 200, "{body}");
        body["notifications"][0]["seq"].as_u64().unwrap()
    }

    /// `GET path` with the API key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}{path}", self.url)).bearer_auth(API_KEY).send().await.unwrap();
        checked_answer("get", response).await
    }

    /// `DELETE path` with the API key.
    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response =
            self.http.delete(format!("{}{path}", self.url)).bearer_auth(API_KEY).send().await.unwrap();
        checked_answer("delete", response).await
    }

    /// The stored notifications of `user` (all of them, up to 100), oldest first.
    pub async fn stored(&self, user: &str) -> Vec<Value> {
        let (status, body) = self.get(&format!("/v1/users/{}/notifications", enc(user))).await;
        assert_eq!(status, 200, "{body}");
        body["notifications"].as_array().unwrap().clone()
    }

    /// The presence answer for `user`.
    pub async fn presence(&self, user: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/users/{}/presence", enc(user))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Client ids present for `user`, over all sessions.
    pub async fn present_clients(&self, user: &str) -> Vec<String> {
        let presence = self.presence(user).await;
        presence["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["clients"].as_array().unwrap().iter())
            .map(|c| c["client"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits (up to [`EVENT_WAIT`]) until `user` has exactly `count` present clients.
    pub async fn wait_for_presence(&self, user: &str, count: usize) {
        let deadline = tokio::time::Instant::now() + EVENT_WAIT;
        loop {
            let present = self.present_clients(user).await;
            if present.len() == count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{user} has {present:?}, expected {count} clients"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET /v1/poll?{query}` with `token`; returns status and JSON body.
    pub async fn poll(&self, token: &str, query: &str) -> (u16, Value) {
        let response =
            self.http.get(format!("{}/v1/poll?{query}", self.url)).bearer_auth(token).send().await.unwrap();
        checked_answer("get", response).await
    }

    /// `GET /v1/stream?{query}` with `token` (if any) and `Last-Event-ID` (if any) on `path`,
    /// unchecked but for the path taken.
    pub async fn stream_request_via(
        &self,
        path: StreamPath,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> StreamResponse {
        let mut headers = Vec::new();
        if let Some(token) = token {
            headers.push(("authorization".to_owned(), format!("Bearer {token}")));
        }
        if let Some(id) = last_event_id {
            headers.push(("last-event-id".to_owned(), id.to_owned()));
        }
        self.stream_request_with_headers(path, query, &headers).await
    }

    /// `GET /v1/stream?{query}` with exactly `headers` (names in lower case) on `path`, unchecked
    /// but for the path taken.
    pub async fn stream_request_with_headers(
        &self,
        path: StreamPath,
        query: &str,
        headers: &[(String, String)],
    ) -> StreamResponse {
        let target = format!("/v1/stream?{query}");
        let response = match path {
            StreamPath::Lean => {
                let mut request = self.fresh_http.get(format!("{}{target}", self.url));
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                StreamResponse::from_reqwest(request.send().await.unwrap())
            }
            StreamPath::Hyper => {
                let mut connection = RawConnection::open(self.url.trim_start_matches("http://")).await;
                let (status, healthz) = connection.get("/healthz", &[]).await;
                assert_eq!(status, 200);
                // `ok`, or `degraded` while a test's database is down.
                let healthz = connection.sized_body(&healthz).await;
                assert!(healthz.starts_with(br#"{"status":"#), "{healthz:?}");
                let (status, headers) = connection.get(&target, headers).await;
                let body = connection.into_body(&headers);
                StreamResponse { status, headers, body }
            }
        };
        // The lean path answers without length or chunking and closes the connection after the
        // stream (or error); hyper keeps the connection and chunks a stream.
        let lean = response.header("connection") == Some("close");
        assert_eq!(
            lean,
            path == StreamPath::Lean,
            "the stream did not take the {path:?} path: {:?}",
            response.headers
        );
        if response.status == 200 {
            assert_eq!(response.header("transfer-encoding") == Some("chunked"), path == StreamPath::Hyper);
        }
        response
    }

    /// A stream request that must be refused: its status and JSON body.
    pub async fn stream_refused(
        &self,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> (u16, Value) {
        self.stream_refused_via(self.stream_path, token, query, last_event_id).await
    }

    /// A stream request on `path` that must be refused: its status and JSON body.
    pub async fn stream_refused_via(
        &self,
        path: StreamPath,
        token: Option<&str>,
        query: &str,
        last_event_id: Option<&str>,
    ) -> (u16, Value) {
        let response = self.stream_request_via(path, token, query, last_event_id).await;
        assert_ne!(response.status, 200, "the stream was accepted");
        assert_eq!(response.header("content-type"), Some("application/json"));
        let status = response.status;
        let body = response.json().await;
        // A refusal the OpenAPI description lists for streams, on either path.
        crate::openapi::spec().assert_answer("get", "/v1/stream", status, Some("application/json"), &body);
        (status, body)
    }

    /// Opens an SSE stream with `token` and extra query `query` (e.g. `"last_event_id=3"`).
    pub async fn sse(&self, token: &str, query: &str) -> Sse {
        self.sse_with(token, query, None).await
    }

    /// Opens an SSE stream with `token`, `query` and optionally a `Last-Event-ID` header.
    pub async fn sse_with(&self, token: &str, query: &str, last_event_id: Option<&str>) -> Sse {
        self.sse_via(self.stream_path, token, query, last_event_id).await
    }

    /// Opens an SSE stream on `path`.
    pub async fn sse_via(
        &self,
        path: StreamPath,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> Sse {
        let response = self.stream_request_via(path, Some(token), query, last_event_id).await;
        let status = response.status;
        if status != 200 {
            panic!("stream refused: {status} {}", response.json().await);
        }
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
        assert_eq!(response.header("cache-control"), Some("no-cache"));
        Sse::from_stream(response.body)
    }

    /// Opens an SSE stream and reads its `hello`; returns the stream and the hello data.
    pub async fn connect(&self, token: &str, query: &str) -> (Sse, Value) {
        let mut sse = self.sse(token, query).await;
        let hello = sse.next().await.expect("hello");
        assert_eq!(hello.event, "hello");
        (sse, hello.data)
    }

    /// Like [`TestServer::connect`], also returning the hello's `id:`.
    pub async fn connect_with(
        &self,
        token: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> (Sse, SseEvent) {
        let mut sse = self.sse_with(token, query, last_event_id).await;
        let hello = sse.next().await.expect("hello");
        assert_eq!(hello.event, "hello", "{hello:?}");
        (sse, hello)
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn token_with_ttl(user: &str, session: Option<&str>, ttl: Duration) -> String {
    let now = now_unix();
    let mut claims = json!({ "sub": user, "iat": now, "exp": now + ttl.as_secs() });
    if let Some(session) = session {
        claims["sid"] = session.into();
    }
    sign(&claims)
}

/// Signs `claims` with HS256 and the test secret.
pub fn sign(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

/// One SSE event as sent on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The seq of the `id:` (its part before any `;`).
    pub id: Option<u64>,
    /// The whole `id:`: the resume point, with topic positions after the seq.
    pub resume: Option<String>,
    pub event: String,
    pub data: Value,
}

/// A response body as a stream of byte chunks; an `Err` ends it abnormally.
pub type Body = BoxStream<'static, Result<Bytes, String>>;

/// A response to a stream request, from whichever path.
pub struct StreamResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Body,
}

impl StreamResponse {
    fn from_reqwest(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.to_str().unwrap().to_owned()))
            .collect();
        Self { status, headers, body: response.bytes_stream().map(|r| r.map_err(|e| e.to_string())).boxed() }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The whole body as JSON (`Null` if it is not JSON).
    pub async fn json(mut self) -> Value {
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = self.body.next().await {
            bytes.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }
}

/// A bare HTTP/1.1 client connection, so that a test controls exactly which requests share a
/// connection (reqwest's pool hands connections back asynchronously).
pub struct RawConnection {
    socket: tokio::net::TcpStream,
    buffer: BytesMut,
    host: String,
}

impl RawConnection {
    pub async fn open(addr: &str) -> Self {
        let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        Self { socket, buffer: BytesMut::new(), host: addr.to_owned() }
    }

    /// Sends `GET target` with `headers`; returns the response's status and headers (names in
    /// lower case). Read the body before the next request.
    pub async fn get(&mut self, target: &str, headers: &[(String, String)]) -> (u16, Vec<(String, String)>) {
        self.request("GET", target, headers, b"").await
    }

    /// Sends `method target` with `headers` and `body` (with its `content-length` when not
    /// empty); returns the response's status and headers. Read the body before the next request.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>) {
        let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.host);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() {
            head.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.socket.write_all(&bytes).await.unwrap();
        self.read_head().await
    }

    /// The body of a response with a `content-length`.
    pub async fn sized_body(&mut self, headers: &[(String, String)]) -> Bytes {
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .expect("no content-length")
            .1
            .parse()
            .unwrap();
        self.read_exact(length).await.expect("the connection closed within the body")
    }

    /// The body of the last response as a stream: chunked, sized, or up to the end of the
    /// connection.
    pub fn into_body(mut self, headers: &[(String, String)]) -> Body {
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        if header("transfer-encoding").as_deref() == Some("chunked") {
            futures::stream::unfold(self, |mut connection| async move {
                connection.next_chunk().await.map(|chunk| (chunk, connection))
            })
            .boxed()
        } else if let Some(length) = header("content-length") {
            let length: usize = length.parse().unwrap();
            futures::stream::once(async move {
                self.read_exact(length).await.ok_or_else(|| "cut short".to_owned())
            })
            .boxed()
        } else {
            futures::stream::unfold(self, |mut connection| async move {
                if connection.buffer.is_empty() && !connection.fill().await.ok()? {
                    return None;
                }
                Some((Ok(connection.buffer.split().freeze()), connection))
            })
            .boxed()
        }
    }

    /// Reads more bytes into the buffer; `false` at the end of the connection.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.socket.read(&mut chunk).await?;
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.buffer.split_to(end + 4);
                let head = std::str::from_utf8(&head).unwrap();
                let mut lines = head.split("\r\n");
                let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
                let headers = lines
                    .filter(|line| !line.is_empty())
                    .map(|line| {
                        let (name, value) = line.split_once(':').unwrap();
                        (name.trim().to_ascii_lowercase(), value.trim().to_owned())
                    })
                    .collect();
                return (status, headers);
            }
            assert!(self.fill().await.unwrap(), "the connection closed before a response head");
        }
    }

    async fn read_exact(&mut self, length: usize) -> Option<Bytes> {
        while self.buffer.len() < length {
            if !self.fill().await.ok()? {
                return None;
            }
        }
        Some(self.buffer.split_to(length).freeze())
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = self.buffer.split_to(end + 2);
                return Some(String::from_utf8(line[..end].to_vec()).unwrap());
            }
            if !self.fill().await.ok()? {
                return None;
            }
        }
    }

    /// The next chunk of a chunked body; `None` after the last one (or when the connection
    /// ends); `Err` on a malformed chunk.
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        let line = self.read_line().await?;
        let size = line.split(';').next().unwrap().trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Some(Err(format!("bad chunk size line {line:?}")));
        };
        if size == 0 {
            while !self.read_line().await?.is_empty() {}
            return None;
        }
        let mut chunk = self.read_exact(size + 2).await?;
        if &chunk[size..] != b"\r\n" {
            return Some(Err("a chunk does not end with CRLF".to_owned()));
        }
        Some(Ok(chunk.split_to(size)))
    }
}

/// A minimal SSE reader for tests: `id`, `event`, `data` lines and `:` comments. Strict: any
/// other line, or several `data` lines, fails the test.
pub struct Sse {
    body: Body,
    buffer: Vec<u8>,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        Self::from_stream(StreamResponse::from_reqwest(response).body)
    }

    pub fn from_stream(body: Body) -> Self {
        Self { body, buffer: Vec::new(), comments: 0 }
    }

    /// The next event within [`EVENT_WAIT`]; `None` if the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        self.next_within(EVENT_WAIT).await.expect("no event within the wait")
    }

    /// The next event within `wait`: `Err(())` on timeout, `Ok(None)` if the stream ended.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<SseEvent>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(event) = self.parse_one() {
                return Ok(Some(event));
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(chunk))) => self.buffer.extend_from_slice(&chunk),
            }
        }
    }

    /// The next event, which must be a `notification`.
    pub async fn notification(&mut self) -> SseEvent {
        let event = self.next().await.expect("stream ended");
        assert_eq!(event.event, "notification", "{event:?}");
        event
    }

    /// The next event, which must be a durable notification whose `id:` and `seq` are `seq`;
    /// returns its data.
    pub async fn durable(&mut self, seq: u64) -> Value {
        let event = self.notification().await;
        assert_eq!(event.id, Some(seq), "{event:?}");
        assert_eq!(event.data["seq"], seq, "{event:?}");
        event.data
    }

    /// The seqs of the next `count` events, which must all be durable notifications.
    pub async fn seqs(&mut self, count: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(count);
        for _ in 0..count {
            let event = self.notification().await;
            let seq = event.data["seq"].as_u64().unwrap_or_else(|| panic!("not durable: {event:?}"));
            assert_eq!(event.id, Some(seq), "{event:?}");
            seqs.push(seq);
        }
        seqs
    }

    /// The next event must be `closed` with `reason`, and the stream must end after it.
    pub async fn expect_closed(&mut self, reason: &str) {
        let event = self.next().await.expect("stream ended without `closed`");
        assert_eq!(
            (event.event.as_str(), event.id, &event.data),
            ("closed", None, &json!({ "reason": reason }))
        );
        self.expect_end().await;
    }

    /// The stream must end (within [`EVENT_WAIT`]) with no further event.
    pub async fn expect_end(&mut self) {
        match self.next_within(EVENT_WAIT).await {
            Ok(None) => {}
            Ok(Some(event)) => panic!("expected the end of the stream, got {event:?}"),
            Err(()) => panic!("the stream did not end"),
        }
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(event) = self.next_within(wait).await {
            panic!("expected no event, got {event:?}");
        }
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8(block).expect("SSE is UTF-8");
            let (mut id, mut resume, mut event, mut data) = (None, None, String::from("message"), None);
            let mut comment_only = true;
            for line in block.lines() {
                if line.is_empty() {
                    continue;
                }
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                comment_only = false;
                if let Some(v) = line.strip_prefix("id: ") {
                    assert!(id.is_none(), "one id line per event");
                    id = Some(v.split(';').next().unwrap().parse().unwrap());
                    resume = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event");
                    data = Some(serde_json::from_str(v).unwrap());
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            if !comment_only {
                let event = SseEvent { id, resume, event, data: data.unwrap_or(Value::Null) };
                // Every event any test reads is one the OpenAPI description has.
                crate::openapi::checked_sse(&event);
                return Some(event);
            }
        }
    }
}
