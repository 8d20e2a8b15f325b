//! `GET /v1/ws` over real sockets: hello, delivery, resume, `closed` reasons with their close
//! codes, keep-alive pings, refusals before the upgrade, and bad frames from clients.

use crate::support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use serde_json::{Value, json};
use support::{EVENT_WAIT, TestServer, memory, token_with_ttl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn ws_url(server: &TestServer, query: &str) -> String {
    format!("{}/v1/ws?{query}", server.url.replacen("http://", "ws://", 1))
}

/// Opens `/v1/ws?{query}` with `token` in the `Authorization` header.
async fn open(server: &TestServer, token: &str, query: &str) -> Ws {
    let mut request = ws_url(server, query).into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    assert!(
        response.headers().get("sec-websocket-extensions").is_none(),
        "no extension (compression) is negotiated"
    );
    ws
}

/// Opens a WebSocket and reads its `hello`.
pub(crate) async fn connect(server: &TestServer, token: &str, query: &str) -> (Ws, Value) {
    let mut ws = open(server, token, query).await;
    let hello = next_event(&mut ws).await;
    assert_eq!(hello["event"], "hello", "{hello}");
    (ws, hello)
}

/// The next event (text frame) within [`EVENT_WAIT`], skipping pings and pongs.
pub(crate) async fn next_event(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(EVENT_WAIT, ws.next())
            .await
            .expect("no frame within the wait")
            .expect("the connection ended")
            .expect("a WebSocket error");
        match message {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
                // Every frame any test reads is one the OpenAPI description has.
                crate::openapi::spec().assert_component("WsMessage", &frame);
                return frame;
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// The next `notification` event; panics on another one.
async fn notification(ws: &mut Ws) -> Value {
    let event = next_event(ws).await;
    assert_eq!(event["event"], "notification", "{event}");
    event
}

/// The seqs of the next `count` notifications.
async fn seqs(ws: &mut Ws, count: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..count {
        seqs.push(notification(ws).await["seq"].as_u64().unwrap());
    }
    seqs
}

/// Asserts the next frames are the close frame with `code` (after the pings), then the end.
async fn expect_close_frame(ws: &mut Ws, code: u16) -> String {
    loop {
        let message =
            tokio::time::timeout(EVENT_WAIT, ws.next()).await.expect("no close frame within the wait");
        match message {
            Some(Ok(Message::Close(Some(CloseFrame { code: got, reason })))) => {
                assert_eq!(u16::from(got), code, "close reason {reason:?}");
                return reason.to_string();
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected a close frame with {code}, got {other:?}"),
        }
    }
}

/// Asserts the `closed` event with `reason`, then the close frame with `code`.
async fn expect_closed(ws: &mut Ws, reason: &str, code: u16) {
    let event = next_event(ws).await;
    assert_eq!(event, json!({ "event": "closed", "reason": reason }));
    let frame_reason = expect_close_frame(ws, code).await;
    assert_eq!(frame_reason, reason);
}

#[tokio::test]
async fn hello_then_notifications_as_json_frames() {
    let server = TestServer::start().await;
    server.notify_user("alice", json!({ "n": 0 })).await;
    let token = server.token("alice", Some("s1"));
    let (mut ws, hello) = connect(&server, &token, "").await;
    let client = hello["client"].as_str().unwrap().to_owned();
    let epoch = server.app.store.epoch().to_string();
    assert_eq!(
        hello,
        json!({ "event": "hello", "user": "alice", "session": "s1", "client": client, "last_seq": 1, "epoch": epoch })
    );

    let (status, body) = server
        .publish(json!({ "to": { "user": "alice" }, "type": "message.new", "data": { "text": "hi", "n": [1, 2] } }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    let n = notification(&mut ws).await;
    assert_eq!(n["seq"], 2);
    assert_eq!(n["type"], "message.new");
    assert_eq!(n["data"], json!({ "text": "hi", "n": [1, 2] }));
    assert!(n["created_at"].as_str().unwrap().ends_with('Z'), "{n}");
    // The same object as the stored one, plus `"event"`.
    let stored = server.stored("alice").await;
    let mut expected = stored[1].clone();
    expected["event"] = json!("notification");
    assert_eq!(n, expected);

    // Ephemeral: no seq.
    server.publish(json!({ "to": { "user": "alice" }, "type": "typing", "durable": false })).await;
    let n = notification(&mut ws).await;
    assert_eq!(n["type"], "typing");
    assert!(n.get("seq").is_none(), "{n}");

    // Presence says `ws`.
    let presence = server.presence("alice").await;
    assert_eq!(presence["sessions"][0]["clients"][0]["transport"], "ws", "{presence}");
    assert_eq!(presence["sessions"][0]["clients"][0]["client"], client.as_str());
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn token_in_the_query_and_in_the_cookie() {
    let server = TestServer::start().await;
    let token = server.token("bob", None);
    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_url(&server, &format!("token={token}"))).await.unwrap();
    assert_eq!(next_event(&mut ws).await["user"], "bob");
    drop(ws);

    let mut request = ws_url(&server, "").into_client_request().unwrap();
    request.headers_mut().insert("cookie", format!("other=1; herald_token={token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(next_event(&mut ws).await["user"], "bob");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn targets_reach_exactly_their_clients() {
    let server = TestServer::start().await;
    let (mut a1, _) = connect(&server, &server.token("alice", Some("s1")), "").await;
    let (mut a2, hello) = connect(&server, &server.token("alice", Some("s2")), "").await;
    let a2_client = hello["client"].as_str().unwrap().to_owned();
    let (mut b, _) = connect(&server, &server.token("bob", Some("s1")), "").await;

    server.publish(json!({ "to": { "user": "alice", "session": "s2" }, "data": "session" })).await;
    server.publish(json!({ "to": { "client": a2_client }, "data": "client" })).await;
    server.publish(json!({ "to": { "user": "alice" }, "data": "user" })).await;
    server.publish(json!({ "to": { "user": "bob" }, "data": "bob" })).await;
    assert_eq!(notification(&mut a1).await["data"], "user");
    assert_eq!(notification(&mut a2).await["data"], "session");
    assert_eq!(notification(&mut a2).await["data"], "client");
    assert_eq!(notification(&mut a2).await["data"], "user");
    assert_eq!(notification(&mut b).await["data"], "bob");
    drop(a1);
    drop(a2);
    drop(b);
    server.shutdown().await;
}

#[tokio::test]
async fn resume_with_last_event_id_and_client_id_has_no_gap_and_no_duplicate() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let (mut ws, hello) = connect(&server, &token, "").await;
    let client = hello["client"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        server.notify_user("alice", json!(n)).await;
    }
    assert_eq!(seqs(&mut ws, 3).await, [1, 2, 3]);
    drop(ws);
    for n in 4..=6 {
        server.notify_user("alice", json!(n)).await;
    }
    let (mut ws, hello) = connect(&server, &token, &format!("last_event_id=3&client={client}")).await;
    assert_eq!(hello["client"], client.as_str(), "the client keeps its id");
    assert_eq!(hello["last_seq"], 6);
    assert_eq!(seqs(&mut ws, 3).await, [4, 5, 6]);
    server.notify_user("alice", json!(7)).await;
    assert_eq!(seqs(&mut ws, 1).await, [7]);

    // Publishes racing reconnects: every seq exactly once, in order.
    let mut last = 7;
    for round in 0..20 {
        let publisher = {
            let http = server.http.clone();
            let url = server.url.clone();
            tokio::spawn(async move {
                for n in 0..5 {
                    let response = http
                        .post(format!("{url}/v1/notify"))
                        .bearer_auth(support::API_KEY)
                        .json(&json!({ "to": { "user": "alice" }, "data": [round, n] }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        };
        drop(ws);
        let (next, _) = connect(&server, &token, &format!("last_event_id={last}&client={client}")).await;
        ws = next;
        publisher.await.unwrap();
        let got = seqs(&mut ws, 5).await;
        assert_eq!(got, ((last + 1)..=(last + 5)).collect::<Vec<_>>(), "round {round}");
        last += 5;
    }
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn reset_when_the_resume_point_is_gone() {
    let retention = Retention { max_per_user: 2, ..Retention::default() };
    let server = TestServer::with(Limits::default(), support::settings(), memory(retention)).await;
    for n in 1..=5 {
        server.notify_user("alice", json!(n)).await;
    }
    server.app.store.prune(herald_core::notification::now_ms()).await.unwrap();
    let (mut ws, _) = connect(&server, &server.token("alice", None), "last_event_id=1").await;
    assert_eq!(next_event(&mut ws).await, json!({ "event": "reset", "last_seq": 5 }));
    server.notify_user("alice", json!(6)).await;
    assert_eq!(seqs(&mut ws, 1).await, [6]);
    drop(ws);
    server.shutdown().await;
}

/// `?epoch=` as on `/v1/stream`: the hello's epoch replays after the resume point; another one
/// gets `hello` from the log's last seq, `reset`, then live ones.
#[tokio::test]
async fn a_resume_of_another_epoch_gets_a_reset() {
    let server = TestServer::start().await;
    for n in 1..=3 {
        server.notify_user("alice", json!(n)).await;
    }
    let token = server.token("alice", None);
    let epoch = server.app.store.epoch().to_string();
    let (mut ws, hello) = connect(&server, &token, &format!("last_event_id=1&epoch={epoch}")).await;
    assert_eq!((&hello["last_seq"], &hello["epoch"]), (&json!(3), &json!(epoch)));
    assert_eq!(seqs(&mut ws, 2).await, [2, 3]);
    drop(ws);

    let (mut ws, hello) = connect(&server, &token, "last_event_id=1&epoch=another").await;
    assert_eq!((&hello["last_seq"], &hello["epoch"]), (&json!(3), &json!(epoch)));
    assert_eq!(next_event(&mut ws).await, json!({ "event": "reset", "last_seq": 3 }));
    server.notify_user("alice", json!(4)).await;
    assert_eq!(seqs(&mut ws, 1).await, [4]);
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn closed_replaced_and_session_closed_use_the_policy_code() {
    let server = TestServer::start().await;
    let token = server.token("alice", Some("s1"));
    let (mut first, hello) = connect(&server, &token, "").await;
    let client = hello["client"].as_str().unwrap().to_owned();
    let (mut second, hello) = connect(&server, &token, &format!("client={client}")).await;
    assert_eq!(hello["client"], client.as_str());
    expect_closed(&mut first, "replaced", 1008).await;

    let (status, body) = server.delete("/v1/users/alice/sessions/s1").await;
    assert_eq!((status, &body["closed"]), (200, &json!(1)), "{body}");
    expect_closed(&mut second, "session_closed", 1008).await;
    drop(first);
    drop(second);
    server.shutdown().await;
}

#[tokio::test]
async fn closed_evicted_uses_the_policy_code() {
    let limits = Limits { clients_per_session_max: 1, ..Limits::default() };
    let server = TestServer::with_limits(limits).await;
    let token = server.token("alice", Some("s1"));
    let (mut first, _) = connect(&server, &token, "").await;
    let (_second, _) = connect(&server, &token, "").await;
    expect_closed(&mut first, "evicted", 1008).await;
    drop(first);
    drop(_second);
    server.shutdown().await;
}

#[tokio::test]
async fn token_expiry_closes_with_token_expired() {
    let server = TestServer::start().await;
    let token = token_with_ttl("alice", None, Duration::from_secs(2));
    let (mut ws, _) = connect(&server, &token, "").await;
    let event = tokio::time::timeout(Duration::from_secs(5), next_event(&mut ws)).await.unwrap();
    assert_eq!(event, json!({ "event": "closed", "reason": "token_expired" }));
    expect_close_frame(&mut ws, 1008).await;
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_sends_closed_and_try_again_later() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    let shutdown = tokio::spawn(server.shutdown());
    expect_closed(&mut ws, "shutdown", 1013).await;
    // Reading on sends tungstenite's answer to the close frame; then the server ends the
    // connection.
    assert!(tokio::time::timeout(EVENT_WAIT, ws.next()).await.unwrap().is_none());
    // The close handshake done, shutting down does not wait for its timeout.
    tokio::time::timeout(Duration::from_secs(2), shutdown).await.expect("shutdown ends promptly").unwrap();
}

#[tokio::test]
async fn pings_at_the_keepalive_interval() {
    let settings = ServerSettings { keepalive_interval: Duration::from_millis(300), ..support::settings() };
    let server = TestServer::with_settings(settings).await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while pings < 3 {
        let message =
            tokio::time::timeout_at(deadline, ws.next()).await.expect("pings keep coming").unwrap().unwrap();
        if let Message::Ping(_) = message {
            pings += 1; // tokio-tungstenite answers each with a pong.
        }
    }
    // Still alive and delivering after the pongs.
    server.notify_user("alice", json!("after pings")).await;
    assert_eq!(notification(&mut ws).await["data"], "after pings");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn refusals_are_http_answers_before_the_upgrade() {
    let server = TestServer::start().await;
    let refused = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            (response.status().as_u16(), body["error"]["code"].as_str().unwrap_or_default().to_owned())
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    };
    let got = refused(tokio_tungstenite::connect_async(ws_url(&server, "")).await.map(|_| ()));
    assert_eq!(got, (401, "missing_token".to_owned()));
    let got = refused(tokio_tungstenite::connect_async(ws_url(&server, "token=nope")).await.map(|_| ()));
    assert_eq!(got, (401, "invalid_token".to_owned()));
    let expired = support::sign(&json!({ "sub": "alice", "exp": support::now_unix() - 10 }));
    let got = refused(
        tokio_tungstenite::connect_async(ws_url(&server, &format!("token={expired}"))).await.map(|_| ()),
    );
    assert_eq!(got.0, 401);
    let token = server.token("alice", None);
    let got = refused(
        tokio_tungstenite::connect_async(ws_url(&server, &format!("token={token}&last_event_id=9")))
            .await
            .map(|_| ()),
    );
    assert_eq!(got, (400, "invalid_last_event_id".to_owned()));
    let got = refused(
        tokio_tungstenite::connect_async(ws_url(&server, &format!("token={token}&last_event_id=x")))
            .await
            .map(|_| ()),
    );
    assert_eq!(got, (400, "invalid_last_event_id".to_owned()));

    // A plain GET (no handshake) gets a JSON error too.
    let response = server.http.get(format!("{}/v1/ws", server.url)).bearer_auth(&token).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "websocket_required", "{body}");
    // Nothing was left attached.
    assert!(server.present_clients("alice").await.is_empty());
    server.shutdown().await;
}

#[tokio::test]
async fn small_text_frames_are_ignored() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    for _ in 0..50 {
        ws.send(Message::text("{\"hello\":\"server\"}")).await.unwrap();
    }
    // Larger than the server's read buffer, within the 4 KiB limit: read in pieces, ignored.
    ws.send(Message::text("y".repeat(4000))).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"are you there"))).await.unwrap();
    server.notify_user("alice", json!("still here")).await;
    assert_eq!(notification(&mut ws).await["data"], "still here");
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_and_detaches_it() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    let reason = "x".repeat(123); // the longest reason a close frame can carry
    ws.send(Message::Close(Some(CloseFrame { code: 1000.into(), reason: reason.clone().into() })))
        .await
        .unwrap();
    let got = expect_close_frame(&mut ws, 1000).await;
    assert_eq!(got, reason, "the server echoes the client's close frame");
    server.wait_for_presence("alice", 0).await;
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn binary_frames_close_with_1003() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    expect_close_frame(&mut ws, 1003).await;
    assert_server_still_serves(&server).await;
    server.wait_for_presence("alice", 0).await;
    drop(ws);
    server.shutdown().await;
}

#[tokio::test]
async fn oversized_frames_close_with_1009() {
    let server = TestServer::start().await;
    let (mut ws, _) = connect(&server, &server.token("alice", None), "").await;
    ws.send(Message::text("x".repeat(64 * 1024))).await.unwrap();
    expect_close_frame(&mut ws, 1009).await;
    assert_server_still_serves(&server).await;
    drop(ws);
    server.shutdown().await;
}

/// A raw connection: the handshake by hand, then bytes no WebSocket library would send.
async fn raw_upgrade(server: &TestServer, token: &str) -> TcpStream {
    let addr = server.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /v1/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    socket
}

/// Reads server frames until a close frame; returns its code.
async fn read_close_code(socket: &mut TcpStream) -> u16 {
    let read = async {
        loop {
            let mut header = [0u8; 2];
            socket.read_exact(&mut header).await.unwrap();
            let opcode = header[0] & 0x0f;
            let mut len = u64::from(header[1] & 0x7f);
            if len == 126 {
                len = u64::from(socket.read_u16().await.unwrap());
            } else if len == 127 {
                len = socket.read_u64().await.unwrap();
            }
            let mut payload = vec![0u8; usize::try_from(len).unwrap()];
            socket.read_exact(&mut payload).await.unwrap();
            if opcode == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    tokio::time::timeout(EVENT_WAIT, read).await.expect("no close frame")
}

/// A client frame: FIN, `opcode`, masked with `mask` (or not, when `None`).
fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x80 | opcode, payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 }];
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[tokio::test]
async fn malformed_frames_close_with_a_code_and_crash_nothing() {
    let server = TestServer::start().await;
    let token = server.token("alice", None);
    let mask = Some([1, 2, 3, 4]);
    for (what, bytes, code) in [
        ("an unmasked frame", frame(0x1, b"hi", None), 1002),
        ("a reserved opcode", frame(0x3, b"hi", mask), 1002),
        (
            "reserved bits",
            {
                let mut f = frame(0x1, b"hi", mask);
                f[0] |= 0x40;
                f
            },
            1002,
        ),
        ("a continuation with nothing to continue", frame(0x0, b"hi", mask), 1002),
        ("text that is not UTF-8", frame(0x1, &[0xff, 0xfe, 0xfd], mask), 1007),
        (
            "a ping over 125 bytes",
            {
                let mut f = vec![0x89, 0x80 | 126, 0, 200, 1, 2, 3, 4];
                f.extend(std::iter::repeat_n(0u8, 200));
                f
            },
            1002,
        ),
        ("a frame announcing 1 GiB", vec![0x82, 0x80 | 127, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4], 1009),
    ] {
        let mut socket = raw_upgrade(&server, &token).await;
        socket.write_all(&bytes).await.unwrap();
        assert_eq!(read_close_code(&mut socket).await, code, "{what}");
    }
    // Half a frame, then the peer vanishes.
    let mut socket = raw_upgrade(&server, &token).await;
    socket.write_all(&[0x81, 0x85, 1, 2]).await.unwrap();
    drop(socket);
    assert_server_still_serves(&server).await;
    // Every refused connection left the hub.
    server.wait_for_presence("alice", 0).await;
    server.shutdown().await;
}

/// A new WebSocket gets its hello and a notification: nothing above broke the server.
async fn assert_server_still_serves(server: &TestServer) {
    let (mut ws, _) = connect(server, &server.token("carol", None), "").await;
    server.notify_user("carol", json!("ok")).await;
    assert_eq!(notification(&mut ws).await["data"], "ok");
}
