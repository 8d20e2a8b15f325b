//! Clients that stop reading, over real sockets: a write that makes no progress for the send
//! timeout ends the connection (both stream paths, and long-poll answers), and a client the hub
//! ended is gone within the close grace whatever its write is doing. Either way the socket is
//! reset, which frees its kernel buffers at once.
//!
//! A stalled client here is a raw socket with a tiny receive buffer (so a few megabytes of
//! notifications fill its window and the server's send buffer) that never reads after its
//! request.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use serde_json::json;
use support::{StreamPath, TestServer, memory};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The stalled client's receive buffer (the kernel rounds it up a little).
const RECV_BUFFER_BYTES: u32 = 4 * 1024;
/// Data of one large notification: close to the 64 KiB maximum.
const LARGE_DATA_BYTES: usize = 60 * 1024;
/// Large notifications that overflow any loopback send buffer (`tcp_wmem` is at most 4 MiB by
/// default) and the stalled client's window: about 7 MiB.
const LARGE_NOTIFICATIONS: usize = 120;
/// Slack on top of a timeout before a test gives up: generous, for a loaded machine.
const SLACK: Duration = Duration::from_secs(10);

fn settings(send_timeout: Duration, close_grace: Duration) -> ServerSettings {
    ServerSettings { send_timeout, close_grace, ..support::settings() }
}

/// A connection to the server with a tiny receive window.
async fn small_window_connection(server: &TestServer) -> TcpStream {
    let addr: SocketAddr = server.url.trim_start_matches("http://").parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(RECV_BUFFER_BYTES).unwrap();
    socket.connect(addr).await.unwrap()
}

async fn send_get(socket: &mut TcpStream, target: &str, token: &str) {
    let head = format!("GET {target} HTTP/1.1\r\nhost: herald\r\nauthorization: Bearer {token}\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
}

/// Opens a stream on `path` that is never read after its request; returns once the client is
/// attached.
async fn stalled_stream(server: &TestServer, path: StreamPath, user: &str, token: &str) -> TcpStream {
    let mut socket = small_window_connection(server).await;
    if path == StreamPath::Hyper {
        // A first request sends the connection to hyper; the stream is its second.
        socket.write_all(b"GET /healthz HTTP/1.1\r\nhost: herald\r\n\r\n").await.unwrap();
        // The whole answer: its head, then `content-length` bytes of body.
        let mut answer = Vec::new();
        let complete = |answer: &[u8]| {
            let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .expect("/healthz's answer has a content-length");
            answer.len() >= end + 4 + length
        };
        while !complete(&answer) {
            let mut chunk = [0u8; 512];
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed before /healthz answered");
            answer.extend_from_slice(&chunk[..n]);
        }
    }
    let before = server.present_clients(user).await.len();
    send_get(&mut socket, "/v1/stream", token).await;
    server.wait_for_presence(user, before + 1).await;
    socket
}

/// Publishes enough large notifications to `user` to fill any stalled client's buffers.
async fn publish_large(server: &TestServer, user: &str) {
    let data = "x".repeat(LARGE_DATA_BYTES);
    for _ in 0..LARGE_NOTIFICATIONS {
        let (status, body) = server.publish(json!({"to": {"user": user}, "data": data})).await;
        assert_eq!(status, 200, "{body}");
    }
}

/// Waits until the server reset the connection (the client sees it without reading), up to
/// `within`; returns how long it took.
async fn wait_for_reset(socket: &TcpStream, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        match socket.take_error() {
            Ok(Some(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                return Ok(started.elapsed());
            }
            Ok(Some(error)) => return Err(format!("unexpected socket error {error}")),
            Ok(None) | Err(_) => {}
        }
        if started.elapsed() > within {
            return Err(format!("still connected after {within:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads what the socket still holds until the connection ends (end of file or reset), within
/// `within`; returns the bytes read.
async fn read_to_end_within(socket: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut bytes = Vec::new();
    let reading = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(within, reading).await.expect("the connection did not end once read");
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

on_both_stream_paths! {
    /// A stream whose client stops reading while notifications come is dropped once its write
    /// made no progress for the send timeout; the client leaves presence and the socket is reset.
    async fn a_client_that_stops_reading_is_dropped_after_the_send_timeout(path: StreamPath) {
        let send_timeout = Duration::from_secs(1);
        let server = TestServer::with(
            Limits::default(),
            settings(send_timeout, Duration::from_secs(5)),
            memory(Retention::default()),
        )
        .await;
        let token = server.token("alice", Some("s1"));
        let mut socket = stalled_stream(&server, path, "alice", &token).await;
        publish_large(&server, "alice").await;
        let took = wait_for_reset(&socket, send_timeout + SLACK).await.unwrap();
        server.wait_for_presence("alice", 0).await;
        let read = read_to_end_within(&mut socket, SLACK).await;
        assert!(
            read.len() < LARGE_NOTIFICATIONS * LARGE_DATA_BYTES,
            "the client got everything ({} bytes): the connection was not dropped (reset after {took:?})",
            read.len()
        );
    }
}

on_both_stream_paths! {
    /// A client evicted while its write is stuck (it stopped reading) is dropped within the
    /// close grace, long before the send timeout: it does not keep its connection, socket
    /// buffers and task until it reads again.
    async fn an_evicted_client_that_does_not_read_is_dropped_within_the_close_grace(path: StreamPath) {
        let close_grace = Duration::from_secs(1);
        let limits = Limits { clients_per_session_max: 1, ..Limits::default() };
        let server = TestServer::with(
            limits,
            settings(Duration::from_secs(600), close_grace),
            memory(Retention::default()),
        )
        .await;
        let token = server.token("alice", Some("s1"));
        let mut stalled = stalled_stream(&server, path, "alice", &token).await;
        publish_large(&server, "alice").await;
        // Another tab of the same session: over the limit of one, the stalled one is evicted.
        let (_tab, _) = server.connect(&token, "").await;
        wait_for_reset(&stalled, close_grace + SLACK).await.unwrap();
        let read = read_to_end_within(&mut stalled, SLACK).await;
        assert!(!contains(&read, b"event: closed"), "the stalled client cannot have taken its `closed` event");
    }
}

on_both_stream_paths! {
    /// A client ended by the hub that reads gets its `closed` event within the grace, as before.
    async fn an_evicted_client_that_reads_gets_its_closed_event(path: StreamPath) {
        let limits = Limits { clients_per_session_max: 1, ..Limits::default() };
        let server = TestServer::with(
            limits,
            settings(Duration::from_secs(600), Duration::from_secs(5)),
            memory(Retention::default()),
        )
        .await
        .via(path);
        let token = server.token("alice", Some("s1"));
        let (mut first, _) = server.connect(&token, "").await;
        let (_second, _) = server.connect(&token, "").await;
        first.expect_closed("evicted").await;
    }
}

/// A long-poll answer that the client does not read is dropped once its write made no
/// progress for the send timeout.
#[tokio::test]
async fn a_long_poll_answer_the_client_does_not_read_is_dropped_after_the_send_timeout() {
    let send_timeout = Duration::from_secs(1);
    let server = TestServer::with(
        Limits::default(),
        settings(send_timeout, Duration::from_secs(5)),
        memory(Retention::default()),
    )
    .await;
    let token = server.token("alice", Some("s1"));
    publish_large(&server, "alice").await;
    let mut socket = small_window_connection(&server).await;
    send_get(&mut socket, "/v1/poll?after=0&timeout=0", &token).await;
    wait_for_reset(&socket, send_timeout + SLACK).await.unwrap();
    let read = read_to_end_within(&mut socket, SLACK).await;
    assert!(!read.ends_with(b"}"), "the whole answer went through: {} bytes", read.len());
}
