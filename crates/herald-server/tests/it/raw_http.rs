//! Malformed HTTP over raw sockets: whatever is wrong with a request, and whichever layer finds
//! it (the front door on a connection's first request, hyper on later ones, the body reader), the
//! answer is a JSON error, never an empty body; and the server keeps serving.

use crate::support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{API_KEY, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the server to answer and close.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

/// Sends `bytes` on a fresh connection and reads until the server closes it.
async fn exchange(server: &TestServer, bytes: &[u8]) -> Vec<u8> {
    let mut socket = TcpStream::connect(server.url.trim_start_matches("http://")).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(ANSWER_WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection after a malformed request")
        .unwrap();
    answer
}

/// The last response in `answer` (earlier ones belong to good requests before it): its status
/// and JSON body.
fn last_response(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let is_status_line = |at: usize| text[at + 9..].chars().take(3).filter(char::is_ascii_digit).count() == 3;
    let start = text
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| at)
        .filter(|&at| is_status_line(at))
        .last()
        .unwrap_or_else(|| panic!("no response in {text:?}"));
    let response = &text[start..];
    let status: u16 = response[9..12].parse().unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head end: {response:?}"));
    let body: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("not a JSON body: {response:?}"));
    assert!(head.to_ascii_lowercase().contains("content-type: application/json"), "{response:?}");
    (status, body)
}

#[track_caller]
fn assert_json_error(answer: &[u8], status: u16, code: &str) {
    let (got_status, body) = last_response(answer);
    assert_eq!((got_status, body["error"]["code"].as_str()), (status, Some(code)), "{body}");
    assert!(!body["error"]["message"].as_str().unwrap_or("").is_empty(), "{body}");
}

fn notify_head(extra_headers: &str) -> String {
    format!(
        "POST /v1/notify HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {API_KEY}\r\ncontent-type: application/json\r\n{extra_headers}\r\n"
    )
}

const BODY: &str = r#"{"to":{"user":"alice"},"data":1}"#;

/// Bad framing headers that the front door's parser lets through and hyper refuses, on a
/// connection's first request and on a later one.
#[tokio::test]
async fn bad_framing_headers_get_a_json_400_on_first_and_later_requests() {
    let server = TestServer::start().await;
    let bad_heads = [
        notify_head("content-length: abc\r\n"),
        notify_head("content-length: 5\r\ncontent-length: 6\r\n"),
        notify_head("transfer-encoding: gzip\r\n"),
        notify_head("transfer-encoding: chunked, gzip\r\n"),
        notify_head("content-length: 99999999999999999999999\r\n"),
        "POST /v1/notify HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n".to_owned(),
    ];
    for bad in &bad_heads {
        let first = exchange(&server, bad.as_bytes()).await;
        assert_json_error(&first, 400, "malformed_request");
        let later =
            exchange(&server, format!("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n{bad}").as_bytes()).await;
        assert!(String::from_utf8_lossy(&later).starts_with("HTTP/1.1 200"), "{later:?}");
        assert_json_error(&later, 400, "malformed_request");
    }
    assert!(server.stored("alice").await.is_empty());
}

/// A request line or header hyper cannot parse, after a first good request (the first one is
/// the front door's, which answered JSON already).
#[tokio::test]
async fn a_malformed_later_request_gets_a_json_400() {
    let server = TestServer::start().await;
    for bad in [
        "BLAH\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nbad header\r\n\r\n",
        "GET /healthz HTTP/9.9\r\n\r\n",
        "GET /he llo HTTP/1.1\r\n\r\n",
        "G@T /healthz HTTP/1.1\r\n\r\n",
    ] {
        let first = exchange(&server, bad.as_bytes()).await;
        assert_json_error(&first, 400, "malformed_request");
        let later =
            exchange(&server, format!("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n{bad}").as_bytes()).await;
        assert_json_error(&later, 400, "malformed_request");
    }
}

/// The head limits are the same on a later request as on the first: 431 in JSON.
#[tokio::test]
async fn a_later_request_head_over_the_limits_gets_a_json_431() {
    let server = TestServer::start().await;
    let long_header =
        format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-long: {}\r\n\r\n", "a".repeat(20 * 1024));
    let many_headers = format!(
        "GET /healthz HTTP/1.1\r\n{}\r\n",
        (0..80).map(|i| format!("x-h{i}: 1\r\n")).collect::<String>()
    );
    for bad in [long_header, many_headers] {
        let first = exchange(&server, bad.as_bytes()).await;
        assert_json_error(&first, 431, "request_head_too_large");
        let later =
            exchange(&server, format!("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n{bad}").as_bytes()).await;
        assert_json_error(&later, 431, "request_head_too_large");
    }
}

/// A chunked body whose framing breaks is the client's error (400 `invalid_body`), not a body
/// too large; and nothing is stored.
#[tokio::test]
async fn a_broken_chunked_body_is_400_invalid_body() {
    let server = TestServer::start().await;
    let head = notify_head("transfer-encoding: chunked\r\n");
    for body in ["zz\r\nhello\r\n0\r\n\r\n", "5\r\n{\"to\"xxxxxxxx\r\n0\r\n\r\n"] {
        let answer = exchange(&server, format!("{head}{body}").as_bytes()).await;
        assert_json_error(&answer, 400, "invalid_body");
    }
    // The same framing done right is accepted.
    let good = format!("{head}{:x}\r\n{BODY}\r\n0\r\n\r\n", BODY.len());
    let mut socket = TcpStream::connect(server.url.trim_start_matches("http://")).await.unwrap();
    socket.write_all(good.as_bytes()).await.unwrap();
    let mut buffer = vec![0; 4096];
    let n = tokio::time::timeout(ANSWER_WAIT, socket.read(&mut buffer)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buffer[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(server.stored("alice").await.len(), 1);
    assert_eq!(server.stored("alice").await[0]["data"], json!(1));
}

/// A body that trickles in is cut off: 408 `body_timeout` in JSON once the bound passes, on a
/// subscriber route and a publisher route alike; nothing changes.
#[tokio::test]
async fn a_body_slower_than_the_bound_is_408_body_timeout() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    let heads = [
        format!(
            "POST /v1/inbox/mark HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        ),
        notify_head("content-length: 100\r\n"),
    ];
    let started = tokio::time::Instant::now();
    let addr = server.url.trim_start_matches("http://");
    let answers = futures::future::join_all(heads.iter().map(|head| async move {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        // The head and a first byte of body, then nothing more (the connection stays open).
        socket.write_all(format!("{head}{{").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(ANSWER_WAIT, socket.read_to_end(&mut answer))
            .await
            .expect("the server gives up on the body and closes")
            .unwrap();
        answer
    }))
    .await;
    let waited = started.elapsed();
    for answer in &answers {
        assert_json_error(answer, 408, "body_timeout");
    }
    let bound = Duration::from_secs(herald_server::error::REQUEST_BODY_TIMEOUT_SECS);
    assert!(waited >= bound && waited < bound + Duration::from_secs(8), "{waited:?}");
    assert!(server.stored("alice").await.is_empty());
}
