//! Test support: a real Herald server on 127.0.0.1:0 and clients that speak its wire protocol
//! over real sockets. The SSE reader here is deliberately separate from `herald-client`'s, so the
//! tests check the bytes the server sends, not one parser against itself.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_core::{Limits, Retention, Store};
use herald_server::{App, RunningServer, ServerSettings};
use herald_store::MemoryStore;
use serde_json::{Value, json};

pub const SECRET: &str = "test-secret";
pub const API_KEY: &str = "test-api-key";

/// How long a test waits for an event it expects before failing.
pub const EVENT_WAIT: Duration = Duration::from_secs(5);

pub struct TestServer {
    pub url: String,
    pub app: Arc<App>,
    server: Option<RunningServer>,
    pub http: reqwest::Client,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(Limits::default(), ServerSettings::default(), Arc::new(MemoryStore::new(Retention::default()))).await
    }

    pub async fn with_limits(limits: Limits) -> Self {
        Self::with(limits, ServerSettings::default(), Arc::new(MemoryStore::new(Retention::default()))).await
    }

    pub async fn with(limits: Limits, settings: ServerSettings, store: Arc<dyn Store>) -> Self {
        let app = App::new(store, limits, SECRET.as_bytes(), API_KEY.as_bytes(), settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = herald_server::start(app.clone(), listener).unwrap();
        let url = format!("http://{}", server.addr);
        Self { url, app, server: Some(server), http: reqwest::Client::new() }
    }

    pub async fn shutdown(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }

    /// A subscriber token for `user` (and `session`), valid for `ttl`.
    pub fn token(&self, user: &str, session: Option<&str>) -> String {
        token_with_ttl(user, session, Duration::from_secs(3600))
    }

    /// `POST /v1/notify` with the API key; returns status and JSON body.
    pub async fn publish(&self, body: Value) -> (u16, Value) {
        let response =
            self.http.post(format!("{}/v1/notify", self.url)).bearer_auth(API_KEY).json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Publishes a durable notification to `user`; panics unless it succeeds; returns its seq.
    pub async fn notify_user(&self, user: &str, data: Value) -> u64 {
        let (status, body) = self.publish(json!({ "to": { "user": user }, "data": data })).await;
        assert_eq!(status, 200, "{body}");
        body["notifications"][0]["seq"].as_u64().unwrap()
    }

    /// `GET path` with the API key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.url)).bearer_auth(API_KEY).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Opens an SSE stream with `token` and extra query `query` (e.g. `"last_event_id=3"`).
    pub async fn sse(&self, token: &str, query: &str) -> Sse {
        let url = format!("{}/v1/stream?{query}", self.url);
        let response = self.http.get(url).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 200, "stream refused: {:?}", response.text().await);
        Sse::new(response)
    }

    /// Opens an SSE stream and reads its `hello`; returns the stream and the hello data.
    pub async fn connect(&self, token: &str, query: &str) -> (Sse, Value) {
        let mut sse = self.sse(token, query).await;
        let hello = sse.next().await.expect("hello");
        assert_eq!(hello.event, "hello");
        (sse, hello.data)
    }
}

pub fn token_with_ttl(user: &str, session: Option<&str>, ttl: Duration) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
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
    pub id: Option<u64>,
    pub event: String,
    pub data: Value,
}

/// A minimal SSE reader for tests: `id`, `event`, `data` lines and `:` comments.
pub struct Sse {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// Comment lines seen so far (keep-alives).
    pub comments: usize,
}

impl Sse {
    pub fn new(response: reqwest::Response) -> Self {
        Self { body: response.bytes_stream().boxed(), buffer: String::new(), comments: 0 }
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
                Ok(Some(Ok(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
            }
        }
    }

    /// The next `notification` event's data, skipping nothing else: panics on another event.
    pub async fn notification(&mut self) -> SseEvent {
        let event = self.next().await.expect("stream ended");
        assert_eq!(event.event, "notification", "{event:?}");
        event
    }

    /// Asserts that no event arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(event) = self.next_within(wait).await {
            panic!("expected no event, got {event:?}");
        }
    }

    fn parse_one(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.find("\n\n")?;
            let block: String = self.buffer.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, String::from("message"), None);
            let mut comment_only = true;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                comment_only = false;
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse().unwrap());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    assert!(data.is_none(), "one data line per event");
                    data = Some(serde_json::from_str(v).unwrap());
                } else if !line.is_empty() {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            if !comment_only {
                return Some(SseEvent { id, event, data: data.unwrap_or(Value::Null) });
            }
        }
    }
}
