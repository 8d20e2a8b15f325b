//! A webhook receiver for the tests: a real HTTP/1.1 server on 127.0.0.1 that keeps every POST
//! (its `Herald-Signature` and body) and answers 200 with `Connection: close`, so that each
//! POST comes on a connection of its own and stopping the receiver (`stop`) makes the next
//! POST fail to connect, as a receiver that is down does. `start_again` listens on the same
//! port again. Plain tokio, no HTTP library: what the server sends is read byte for byte.
//!
//! Shared with the `herald` binary's tests (`crates/herald/tests/webhooks.rs` includes this
//! file), so it uses only tokio and serde_json.

#![allow(dead_code)] // each including test binary uses part of it

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One POST the receiver took.
#[derive(Debug, Clone)]
pub struct Post {
    pub signature: String,
    pub body: Vec<u8>,
    /// When its body was read in full (the batching tests time the sender's wait with it).
    pub received_at: Instant,
}

impl Post {
    pub fn events(&self) -> Vec<Value> {
        let json: Value = serde_json::from_slice(&self.body).expect("a webhook body is JSON");
        json["events"].as_array().expect("a webhook body has `events`").clone()
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    posts: Arc<Mutex<Vec<Post>>>,
    task: Option<JoinHandle<()>>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(serve(listener, posts.clone())));
        Self { addr, posts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hooks/herald", self.addr)
    }

    /// Stops listening: POSTs fail to connect until [`Receiver::start_again`].
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens again on the same address.
    pub async fn start_again(&mut self) {
        self.stop();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => break listener,
                // The aborted task's listener may take a moment to be dropped.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.task = Some(tokio::spawn(serve(listener, self.posts.clone())));
    }

    pub fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Every event received so far, in the order received.
    pub fn events(&self) -> Vec<Value> {
        self.posts().iter().flat_map(Post::events).collect()
    }

    /// Waits until at least `count` events came (at most `wait`); returns them all.
    pub async fn wait_for(&self, count: usize, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let events = self.events();
            if events.len() >= count {
                return events;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} webhook events expected within {wait:?}; got {}: {events:#?}",
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, posts: Arc<Mutex<Vec<Post>>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                connections.spawn(answer(stream, posts.clone()));
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Reads one request (head and `Content-Length` body), keeps it if it is a POST, answers 200.
async fn answer(mut stream: TcpStream, posts: Arc<Mutex<Vec<Post>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
        })
    };
    let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buffer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    if head.starts_with("POST ") {
        let post = Post {
            signature: header("herald-signature").unwrap_or_default(),
            body: buffer[head_end..head_end + length].to_vec(),
            received_at: Instant::now(),
        };
        posts.lock().unwrap().push(post);
    }
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
    let _ = stream.shutdown().await;
}
