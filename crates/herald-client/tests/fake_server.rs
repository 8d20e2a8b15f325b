//! The client against a scripted fake server over real sockets: what it sends (paths, query,
//! headers, bodies), how it reads answers and errors, and how the [`Listener`] reconnects,
//! resumes and stops. (Tests against the real server live in `real_server.rs`, in
//! `herald-server` and in the `herald` binary's end-to-end tests.)

use std::sync::Arc;
use std::time::Duration;

use herald_client::{
    ClientError, Event, ListenTransport, Listener, ListenerOptions, Listens, PublishRequest, Publisher,
    Scope, StoredScope, StreamOptions, Subscriber, To,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

/// How the fake server ends an SSE answer.
#[derive(Clone, Copy)]
enum End {
    /// The last chunk, then close: a clean end of stream.
    Finish,
    /// Close without the last chunk: a dropped connection.
    Drop,
    /// Keep the connection open and silent.
    Hang,
}

#[derive(Clone)]
enum Reply {
    /// `text/event-stream`, each piece sent as its own chunk.
    Sse(Vec<String>, End),
    Json(u16, String),
    /// Any status and content type.
    Other(u16, &'static str, String),
}

#[derive(Debug, Clone)]
struct Request {
    /// E.g. `GET /v1/stream?last_event_id=2 HTTP/1.1`.
    line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn target(&self) -> &str {
        self.line.split(' ').nth(1).unwrap()
    }
}

/// Serves one scripted reply per connection, in order; after the script, connections hang.
struct FakeServer {
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeServer {
    async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        tokio::spawn(async move {
            let mut replies = replies.into_iter();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let reply = replies.next().unwrap_or(Reply::Sse(Vec::new(), End::Hang));
                let recorded = recorded.clone();
                tokio::spawn(async move { serve(socket, reply, recorded).await });
            }
        });
        Self { url, requests }
    }

    async fn requests(&self) -> Vec<Request> {
        self.requests.lock().await.clone()
    }
}

async fn serve(mut socket: TcpStream, reply: Reply, recorded: Arc<Mutex<Vec<Request>>>) {
    let Some(request) = read_request(&mut socket).await else { return };
    recorded.lock().await.push(request);
    match reply {
        Reply::Json(status, body) => respond(&mut socket, status, "application/json", &body).await,
        Reply::Other(status, content_type, body) => respond(&mut socket, status, content_type, &body).await,
        Reply::Sse(pieces, end) => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\
                        connection: close\r\n\r\n";
            socket.write_all(head.as_bytes()).await.unwrap();
            for piece in pieces {
                let chunk = format!("{:x}\r\n{piece}\r\n", piece.len());
                if socket.write_all(chunk.as_bytes()).await.is_err() {
                    return;
                }
                socket.flush().await.unwrap();
                // Separate chunks, so that the client reads them one by one.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            match end {
                End::Finish => {
                    let _ = socket.write_all(b"0\r\n\r\n").await;
                }
                End::Drop => {}
                End::Hang => tokio::time::sleep(Duration::from_secs(3600)).await,
            }
        }
    }
}

async fn respond(socket: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket.write_all(head.as_bytes()).await;
    let _ = socket.write_all(body.as_bytes()).await;
}

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::new();
    let head_end = loop {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap().to_owned();
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request { line, headers, body: String::from_utf8(body).unwrap() })
}

fn hello(client: &str, last_seq: u64, position: u64) -> String {
    format!(
        "id: {position}\nevent: hello\ndata: {{\"user\":\"alice\",\"session\":\"s1\",\"client\":\"{client}\",\"last_seq\":{last_seq}}}\n\n"
    )
}

/// A `hello` naming `epoch`.
fn hello_in(client: &str, last_seq: u64, position: u64, epoch: &str) -> String {
    format!(
        "id: {position}\nevent: hello\ndata: {{\"user\":\"alice\",\"session\":\"s1\",\"client\":\"{client}\",\"last_seq\":{last_seq},\"epoch\":\"{epoch}\"}}\n\n"
    )
}

fn reset(last_seq: u64) -> String {
    format!("id: {last_seq}\nevent: reset\ndata: {{\"last_seq\":{last_seq}}}\n\n")
}

fn notification(seq: u64) -> String {
    format!(
        "id: {seq}\nevent: notification\ndata: {{\"seq\":{seq},\"type\":\"t\",\"data\":{{\"n\":{seq}}},\"created_at\":\"2026-01-01T00:00:00Z\"}}\n\n"
    )
}

fn closed(reason: &str) -> String {
    format!("event: closed\ndata: {{\"reason\":\"{reason}\"}}\n\n")
}

fn fast(options: ListenerOptions) -> ListenerOptions {
    ListenerOptions {
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(20),
        ..options
    }
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Notification(n) => n.seq,
            _ => None,
        })
        .collect()
}

async fn drain(listener: &mut Listener) -> (Vec<Event>, Option<ClientError>) {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, listener.next_event()).await.expect("the listener ends") {
            Ok(Some(event)) => events.push(event),
            Ok(None) => return (events, None),
            Err(e) => return (events, Some(e)),
        }
    }
}

#[tokio::test]
async fn listener_resumes_after_a_drop_with_the_same_client_and_no_duplicate() {
    let server = FakeServer::start(vec![
        // A fresh stream: the user's last seq is 0, then 1 and 2 arrive, then the connection drops.
        Reply::Sse(vec![hello("c1", 0, 0), notification(1), notification(2)], End::Drop),
        // The server replays 2 (as a racing server might) and goes on; then a keep-alive.
        Reply::Sse(
            vec![
                hello("c1", 3, 2),
                notification(2),
                ": keep-alive\n\n".into(),
                notification(3),
                closed("lagging"),
            ],
            End::Finish,
        ),
        Reply::Sse(vec![hello("c1", 3, 3), notification(4), closed("session_closed")], End::Finish),
    ])
    .await;
    let subscriber = Subscriber::new(&server.url, "tok").unwrap();
    let mut listener = Listener::new(subscriber, fast(ListenerOptions::default()));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seqs(&events), [1, 2, 3, 4]);
    assert!(events.contains(&Event::KeepAlive));
    assert_eq!(events.last(), Some(&Event::Closed { reason: "session_closed".into() }));
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Hello { .. })).count(), 3);
    assert_eq!((listener.last_seq(), listener.client(), listener.reconnects()), (Some(4), Some("c1"), 2));

    let requests = server.requests().await;
    assert_eq!(requests.len(), 3);
    assert_eq!(requests[0].target(), "/v1/stream");
    assert_eq!(requests[1].target(), "/v1/stream?last_event_id=2&client=c1");
    assert_eq!(requests[2].target(), "/v1/stream?last_event_id=3&client=c1");
    for request in &requests {
        assert_eq!(request.header("authorization"), Some("Bearer tok"));
        assert_eq!(request.header("accept"), Some("text/event-stream"));
    }
}

#[tokio::test]
async fn listener_resumes_from_the_hello_position_when_dropped_before_any_notification() {
    let server = FakeServer::start(vec![
        Reply::Sse(vec![hello("c9", 41, 41)], End::Finish),
        Reply::Sse(vec![hello("c9", 42, 41), notification(42), closed("replaced")], End::Finish),
    ])
    .await;
    let options = ListenerOptions { client: Some("c9".into()), ..ListenerOptions::default() };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seqs(&events), [42]);
    let requests = server.requests().await;
    assert_eq!(requests[0].target(), "/v1/stream?client=c9");
    assert_eq!(requests[1].target(), "/v1/stream?last_event_id=41&client=c9");
}

#[tokio::test]
async fn listener_stops_on_401_and_surfaces_the_error() {
    let body = r#"{"error":{"code":"invalid_token","message":"the token's signature is wrong"}}"#;
    let server = FakeServer::start(vec![Reply::Json(401, body.into())]).await;
    let mut listener =
        Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(ListenerOptions::default()));
    let (events, error) = drain(&mut listener).await;
    assert!(events.is_empty());
    let error = error.expect("an error");
    assert!(error.is_unauthorized());
    assert!(
        matches!(&error, ClientError::Http { status: 401, code, message }
            if code == "invalid_token" && message == "the token's signature is wrong"),
        "{error:?}"
    );
    assert!(listener.next_event().await.unwrap().is_none(), "it has ended");
    assert_eq!(server.requests().await.len(), 1);
}

#[tokio::test]
async fn listener_retries_server_errors_and_stops_after_the_bound() {
    let busy = || Reply::Other(503, "text/html", "<html>busy</html>".into());
    let server =
        FakeServer::start(vec![busy(), busy(), Reply::Sse(vec![hello("c", 0, 0)], End::Finish)]).await;
    let options = ListenerOptions { max_consecutive_failures: Some(5), ..ListenerOptions::default() };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let first = listener.next_event().await.unwrap();
    assert!(matches!(first, Some(Event::Hello { .. })), "{first:?}");
    assert_eq!(listener.reconnects(), 2);

    // Nothing listens on this port: every attempt fails; the third is returned.
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let options = ListenerOptions { max_consecutive_failures: Some(3), ..ListenerOptions::default() };
    let subscriber = Subscriber::new(&format!("http://127.0.0.1:{port}"), "t").unwrap();
    let mut listener = Listener::new(subscriber, fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(events.is_empty());
    assert!(matches!(error, Some(ClientError::Transport(_))), "{error:?}");
    assert_eq!(listener.reconnects(), 2);
}

#[tokio::test]
async fn listener_over_long_poll_resumes_and_deduplicates() {
    let n = |seq: u64| json!({"seq": seq, "type": "t", "data": {}, "created_at": "x"});
    let server = FakeServer::start(vec![
        Reply::Json(200, json!({"client": "p1", "notifications": [n(1), n(2)], "last_seq": 2}).to_string()),
        Reply::Other(502, "text/plain", "bad gateway".into()),
        // A repeated answer (retrying is safe): 2 again, then 3.
        Reply::Json(200, json!({"client": "p1", "notifications": [n(2), n(3)], "last_seq": 3}).to_string()),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [n(9)], "last_seq": 9, "reset": true}).to_string(),
        ),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [], "last_seq": 9, "closed": "evicted"}).to_string(),
        ),
    ])
    .await;
    let options =
        ListenerOptions { transport: ListenTransport::Poll, poll_timeout_s: Some(5), ..Default::default() };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seqs(&events), [1, 2, 3, 9]);
    assert!(events.contains(&Event::Reset { last_seq: 8 }));
    assert_eq!(events.last(), Some(&Event::Closed { reason: "evicted".into() }));
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            "/v1/poll?timeout=5",
            "/v1/poll?after=2&timeout=5&client=p1",
            "/v1/poll?after=2&timeout=5&client=p1",
            "/v1/poll?after=3&timeout=5&client=p1",
            "/v1/poll?after=9&timeout=5&client=p1",
        ]
    );
}

/// The listener resumes with the epoch its `hello` named. A `hello` of another epoch (the
/// server's log is another history: here it failed over to a log that ends at 1) takes effect
/// with the `reset` after it: when the connection drops between the two, the listener resumes
/// with its old epoch and position again, and gets the reset; after it, it goes on from the new
/// log's last seq, back below its old position. Fails if the epoch were not sent, or taken from
/// the hello alone (the resume would then be the old seq under the new epoch: nothing, or the
/// wrong notifications, replayed), or if the reset could not move the position back.
#[tokio::test]
async fn listener_resumes_with_the_epoch_and_takes_another_epoch_with_its_reset() {
    let server = FakeServer::start(vec![
        Reply::Sse(
            vec![hello_in("c1", 0, 0, "e1"), notification(1), notification(2), notification(3)],
            End::Drop,
        ),
        Reply::Sse(vec![hello_in("c1", 1, 1, "e2")], End::Drop),
        Reply::Sse(
            vec![hello_in("c1", 1, 1, "e2"), reset(1), notification(2), closed("lagging")],
            End::Finish,
        ),
        Reply::Sse(vec![hello_in("c1", 2, 2, "e2"), closed("session_closed")], End::Finish),
    ])
    .await;
    let mut listener =
        Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(ListenerOptions::default()));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seqs(&events), [1, 2, 3, 2], "the new log's 2 comes after the reset");
    assert_eq!(events.iter().filter(|e| **e == Event::Reset { last_seq: 1 }).count(), 1);
    assert_eq!((listener.last_seq(), listener.epoch()), (Some(2), Some("e2")));
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            "/v1/stream",
            "/v1/stream?last_event_id=3&epoch=e1&client=c1",
            "/v1/stream?last_event_id=3&epoch=e1&client=c1",
            "/v1/stream?last_event_id=2&epoch=e2&client=c1",
        ]
    );
}

/// Long-polls send the epoch of the answer they go on from; an answer with `reset` and another
/// epoch moves the position (back) and the epoch together.
#[tokio::test]
async fn listener_over_long_poll_sends_the_answers_epoch() {
    let n = |seq: u64| json!({"seq": seq, "type": "t", "data": {}, "created_at": "x"});
    let server = FakeServer::start(vec![
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [n(5)], "last_seq": 5, "epoch": "e1"}).to_string(),
        ),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [], "last_seq": 1, "epoch": "e2", "reset": true})
                .to_string(),
        ),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [n(2)], "last_seq": 2, "epoch": "e2"}).to_string(),
        ),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [], "last_seq": 2, "epoch": "e2", "closed": "evicted"})
                .to_string(),
        ),
    ])
    .await;
    let options = ListenerOptions {
        transport: ListenTransport::Poll,
        resume_after: Some(4),
        epoch: Some("e1".into()),
        poll_timeout_s: Some(5),
        ..Default::default()
    };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(seqs(&events), [5, 2]);
    assert!(events.contains(&Event::Reset { last_seq: 1 }));
    assert_eq!((listener.last_seq(), listener.epoch()), (Some(2), Some("e2")));
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            "/v1/poll?after=4&epoch=e1&timeout=5",
            "/v1/poll?after=5&epoch=e1&timeout=5&client=p1",
            "/v1/poll?after=1&epoch=e2&timeout=5&client=p1",
            "/v1/poll?after=2&epoch=e2&timeout=5&client=p1",
        ]
    );
}

/// The `data` of notifications that serde_json refuses to decode: nested 10,000 deep, a number
/// beyond f64, a lone surrogate escape. A server stored such data before it refused it.
fn poison(index: usize) -> String {
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    [deep, "1e999999".to_owned(), r#"{"text": "\ud800"}"#.to_owned()][index % 3].clone()
}

fn poison_notification(seq: u64) -> String {
    let data = poison(seq as usize);
    format!(
        "id: {seq}\nevent: notification\ndata: {{\"seq\":{seq},\"type\":\"t\",\"data\":{data},\"created_at\":\"x\"}}\n\n"
    )
}

/// The seqs of the events, each with whether it was decoded.
fn received(events: &[Event]) -> Vec<(u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Notification(n) => Some((n.seq?, true)),
            Event::Undecodable(u) => Some((u.seq?, false)),
            _ => None,
        })
        .collect()
}

/// Regression: one notification the client cannot decode ended `herald listen` (a `Decode`
/// error, not retryable), and again on every resume since it came back each time. Now it is an
/// `undecodable` event with its seq; the stream goes on and the resume point moves past it.
#[tokio::test]
async fn listener_goes_on_past_notifications_it_cannot_decode() {
    let server = FakeServer::start(vec![
        Reply::Sse(vec![hello("c1", 0, 0), notification(1), poison_notification(2)], End::Drop),
        // The resume is after 2; a racing server replays 2 anyway, which is skipped.
        Reply::Sse(
            vec![
                hello("c1", 4, 2),
                poison_notification(2),
                poison_notification(3),
                poison_notification(4),
                notification(5),
                closed("session_closed"),
            ],
            End::Finish,
        ),
    ])
    .await;
    let mut listener =
        Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(ListenerOptions::default()));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(received(&events), [(1, true), (2, false), (3, false), (4, false), (5, true)]);
    let Some(Event::Undecodable(u)) = events.iter().find(|e| matches!(e, Event::Undecodable(_))) else {
        panic!()
    };
    assert!(u.raw.contains(r#""\ud800""#) && !u.error.is_empty(), "{u:?}");
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(targets, ["/v1/stream", "/v1/stream?last_event_id=2&client=c1"]);
}

/// The same over long-polling: one undecodable notification made the whole answer unreadable,
/// and the same poll failed forever.
#[tokio::test]
async fn long_poll_goes_on_past_notifications_it_cannot_decode() {
    let raw = |seq: u64, data: &str| format!(r#"{{"seq":{seq},"type":"t","data":{data},"created_at":"x"}}"#);
    let answer = |items: &[String], last_seq: u64| {
        format!(r#"{{"client":"p1","notifications":[{}],"last_seq":{last_seq}}}"#, items.join(","))
    };
    let server = FakeServer::start(vec![
        Reply::Json(200, answer(&[raw(1, "{}"), raw(2, &poison(2)), raw(3, &poison(3))], 3)),
        Reply::Json(200, answer(&[raw(4, &poison(4)), raw(5, "{}")], 5)),
        Reply::Json(200, r#"{"client":"p1","notifications":[],"last_seq":5,"closed":"evicted"}"#.into()),
    ])
    .await;
    let options =
        ListenerOptions { transport: ListenTransport::Poll, poll_timeout_s: Some(5), ..Default::default() };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(received(&events), [(1, true), (2, false), (3, false), (4, false), (5, true)]);
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            "/v1/poll?timeout=5",
            "/v1/poll?after=3&timeout=5&client=p1",
            "/v1/poll?after=5&timeout=5&client=p1"
        ]
    );
}

#[tokio::test]
async fn stream_sends_last_event_id_as_header_and_times_out_when_silent() {
    let server = FakeServer::start(vec![Reply::Sse(vec![hello("c", 5, 5)], End::Hang)]).await;
    let subscriber = Subscriber::new(&server.url, "t").unwrap().with_idle_timeout(Duration::from_millis(300));
    let options = StreamOptions { resume_after: Some(5), via_header: true, ..StreamOptions::default() };
    let mut stream = subscriber.stream(options).await.unwrap();
    assert!(matches!(stream.next_event().await.unwrap(), Some(Event::Hello { id: Some(5), .. })));
    assert_eq!(stream.last_event_id(), "5");
    let error = stream.next_event().await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { .. }) && error.is_retryable(), "{error:?}");
    let request = &server.requests().await[0];
    assert_eq!((request.target(), request.header("last-event-id")), ("/v1/stream", Some("5")));
}

#[tokio::test]
async fn an_oversized_event_ends_the_stream_with_an_error() {
    let huge = format!("event: notification\ndata: {}\n\n", "x".repeat(herald_client::sse::MAX_EVENT_BYTES));
    let server = FakeServer::start(vec![Reply::Sse(vec![hello("c", 0, 0), huge], End::Finish)]).await;
    let mut listener =
        Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(ListenerOptions::default()));
    let (events, error) = drain(&mut listener).await;
    assert_eq!(events.len(), 1);
    assert!(matches!(error, Some(ClientError::TooLarge { .. })), "{error:?}");
}

#[tokio::test]
async fn stream_refuses_another_content_type() {
    let server = FakeServer::start(vec![Reply::Other(200, "text/html", "<html></html>".into())]).await;
    let error =
        Subscriber::new(&server.url, "t").unwrap().stream(StreamOptions::default()).await.unwrap_err();
    assert!(matches!(error, ClientError::Protocol(_)), "{error:?}");
}

#[tokio::test]
async fn publisher_sends_the_documented_requests() {
    let server = FakeServer::start(vec![
        Reply::Json(200, r#"{"notifications":[{"user":"alice","seq":17}],"delivered":3}"#.into()),
        Reply::Json(200, r#"{"user":"a/b c","sessions":[]}"#.into()),
        Reply::Json(200, r#"{"notifications":[{"seq":1,"type":"t","data":1,"created_at":"x"}]}"#.into()),
        Reply::Json(200, r#"{"closed":2}"#.into()),
        Reply::Json(200, r#"{"closed":5}"#.into()),
        Reply::Json(
            413,
            r#"{"error":{"code":"data_too_large","message":"data is over 65536 bytes"}}"#.into(),
        ),
        Reply::Other(502, "text/html", "<html>\n  <b>Bad   gateway</b>\n</html>".into()),
    ])
    .await;
    let publisher = Publisher::new(&format!("{}/", server.url), "key").unwrap();
    let request =
        PublishRequest::new(To::session("alice", "s1"), json!({"text": "hi"})).kind("m").idempotency_key("k");
    let answer = publisher.publish(&request).await.unwrap();
    assert_eq!((answer.notifications[0].seq, answer.delivered), (17, 3));
    assert_eq!(publisher.presence("a/b c").await.unwrap().user, "a/b c");
    assert_eq!(publisher.notifications("a", Some(0), Some(10)).await.unwrap().len(), 1);
    assert_eq!(publisher.close_session("a", "s 1").await.unwrap(), 2);
    assert_eq!(publisher.close_all_sessions("a").await.unwrap(), 5);
    let error = publisher.publish(&request).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Http { status: 413, code, .. } if code == "data_too_large"),
        "{error}"
    );
    let error = publisher.presence("x").await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Http { status: 502, code, message }
            if code == "http_502" && message == "<html> <b>Bad gateway</b> </html>"),
        "{error:?}"
    );
    // Refused before any request.
    assert!(matches!(publisher.presence("..").await, Err(ClientError::InvalidArgument { .. })));

    let requests = server.requests().await;
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines[..5],
        [
            "POST /v1/notify HTTP/1.1",
            "GET /v1/users/a%2Fb%20c/presence HTTP/1.1",
            "GET /v1/users/a/notifications?after=0&limit=10 HTTP/1.1",
            "DELETE /v1/users/a/sessions/s%201 HTTP/1.1",
            "DELETE /v1/users/a/sessions HTTP/1.1",
        ]
    );
    assert_eq!(requests.len(), 7);
    assert!(requests.iter().all(|r| r.header("authorization") == Some("Bearer key")));
    let body: serde_json::Value = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(
        body,
        json!({"to": {"user": "alice", "session": "s1"}, "type": "m", "data": {"text": "hi"}, "idempotency_key": "k"})
    );
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
}

fn topic_event(topic: &str, n: u64) -> String {
    format!(
        "event: topic\ndata: {{\"topic\":\"{topic}\",\"type\":\"t\",\"data\":{{\"n\":{n}}},\"created_at\":\"x\"}}\n\n"
    )
}

fn listening(client: &str, topics: &[&str]) -> Reply {
    Reply::Json(200, json!({"client": client, "topics": topics}).to_string())
}

/// The listener names its topics on every connection: the options', plus those listened to
/// through it (once the server accepted them), less those unlistened. Fails if a reconnect
/// named none (a server that forgot the client would leave them), named a refused one (every
/// later connection would be refused), or named an unlistened one again.
#[tokio::test]
async fn listener_names_its_topics_on_every_connection() {
    let forbidden = r#"{"error":{"code":"topic_forbidden","message":"not in the claim"}}"#;
    let server = FakeServer::start(vec![
        Reply::Sse(vec![hello("c1", 0, 0), topic_event("room:1", 1)], End::Drop),
        listening("c1", &["room:1", "room:2"]),
        Reply::Json(403, forbidden.into()),
        listening("c1", &["room:2"]),
        Reply::Sse(vec![hello("c1", 0, 0), topic_event("room:2", 2), closed("session_closed")], End::Finish),
    ])
    .await;
    let options = ListenerOptions { topics: vec!["room:1".into()], ..ListenerOptions::default() };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    // Before it connects: remembered (once), no request.
    assert_eq!(listener.listen(&["room:1"]).await.unwrap(), ["room:1"]);
    assert!(matches!(listener.next_event().await.unwrap(), Some(Event::Hello { .. })));
    assert_eq!(listener.listen(&["room:2"]).await.unwrap(), ["room:1", "room:2"]);
    let refused = listener.listen(&["post:1"]).await.unwrap_err();
    assert_eq!((refused.status(), refused.code()), (Some(403), Some("topic_forbidden")));
    assert_eq!(listener.topics(), ["room:1", "room:2"], "a refused topic is not remembered");
    let Some(Event::Topic(first)) = listener.next_event().await.unwrap() else { panic!() };
    assert_eq!((first.topic.as_str(), first.data), ("room:1", json!({"n": 1})));
    assert_eq!(listener.unlisten(&["room:1"]).await.unwrap(), ["room:2"]);
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    let topics: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            Event::Topic(t) => Some(t.topic.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["room:2"]);

    let requests = server.requests().await;
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "GET /v1/stream?topics=room%3A1 HTTP/1.1",
            "POST /v1/listen HTTP/1.1",
            "POST /v1/listen HTTP/1.1",
            "POST /v1/unlisten HTTP/1.1",
            "GET /v1/stream?last_event_id=0&client=c1&topics=room%3A2 HTTP/1.1",
        ]
    );
    for (request, topics) in
        requests[1..4].iter().zip([json!(["room:2"]), json!(["post:1"]), json!(["room:1"])])
    {
        assert_eq!(request.header("x-herald-client"), Some("c1"));
        assert_eq!(request.header("authorization"), Some("Bearer t"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&request.body).unwrap(),
            json!({"topics": topics})
        );
    }
}

/// Over long-polling: every poll names the topics; an answer's topic events come after its
/// notifications.
#[tokio::test]
async fn listener_over_long_poll_names_its_topics_and_yields_topic_events() {
    let n = json!({"seq": 1, "type": "t", "data": {}, "created_at": "x"});
    let t = json!({"topic": "room:1", "type": "t", "data": "hi", "created_at": "x"});
    let server = FakeServer::start(vec![
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [n], "last_seq": 1, "topic": [t], "topics": ["room:1"]})
                .to_string(),
        ),
        Reply::Json(
            200,
            json!({"client": "p1", "notifications": [], "last_seq": 1, "closed": "evicted"}).to_string(),
        ),
    ])
    .await;
    let options = ListenerOptions {
        transport: ListenTransport::Poll,
        poll_timeout_s: Some(5),
        topics: vec!["room:1".into(), "post:7".into()],
        ..Default::default()
    };
    let mut listener = Listener::new(Subscriber::new(&server.url, "t").unwrap(), fast(options));
    let (events, error) = drain(&mut listener).await;
    assert!(error.is_none(), "{error:?}");
    assert!(matches!(&events[0], Event::Notification(n) if n.seq == Some(1)), "{events:?}");
    assert!(
        matches!(&events[1], Event::Topic(t) if t.topic == "room:1" && t.data == json!("hi")),
        "{events:?}"
    );
    assert_eq!(events[2], Event::Closed { reason: "evicted".into() });
    let targets: Vec<String> = server.requests().await.iter().map(|r| r.target().to_owned()).collect();
    assert_eq!(
        targets,
        [
            "/v1/poll?timeout=5&topics=room%3A1%2Cpost%3A7",
            "/v1/poll?after=1&timeout=5&client=p1&topics=room%3A1%2Cpost%3A7",
        ]
    );
}

#[tokio::test]
async fn listens_send_the_documented_requests_and_bad_topics_are_refused_before_any() {
    let server = FakeServer::start(vec![
        listening("c 1", &["room:1", "order:9"]),
        listening("c 1", &[]),
        listening("c2", &["room:1"]),
    ])
    .await;
    let publisher = Publisher::new(&server.url, "key").unwrap();
    assert_eq!(publisher.listen("c 1", &["room:1", "order:9"]).await.unwrap(), ["room:1", "order:9"]);
    let owned = vec!["room:1".to_owned()];
    assert!(publisher.unlisten("c 1", &owned).await.unwrap().is_empty());
    let subscriber = Subscriber::new(&server.url, "tok").unwrap();
    assert_eq!(subscriber.listen("c2", &owned).await.unwrap(), ["room:1"]);

    // Refused here, before any request: a `,` would split `?topics=`.
    let none: [&str; 0] = [];
    for error in [
        publisher.listen("c", &["a,b"]).await.unwrap_err(),
        publisher.listen("c", &none).await.unwrap_err(),
        publisher.listen("", &["a"]).await.unwrap_err(),
        subscriber.unlisten("c", &["a b"]).await.unwrap_err(),
        subscriber
            .stream(StreamOptions { topics: vec!["a,b".into()], ..Default::default() })
            .await
            .unwrap_err(),
        subscriber
            .poll_with(&herald_client::PollOptions { topics: vec![String::new()], ..Default::default() })
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(error, ClientError::InvalidArgument { .. }), "{error:?}");
    }

    let requests = server.requests().await;
    assert_eq!(requests.len(), 3);
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        ["POST /v1/topics/listen HTTP/1.1", "POST /v1/topics/unlisten HTTP/1.1", "POST /v1/listen HTTP/1.1"]
    );
    let body = |i: usize| serde_json::from_str::<serde_json::Value>(&requests[i].body).unwrap();
    assert_eq!(body(0), json!({"topics": ["room:1", "order:9"], "client": "c 1"}));
    assert_eq!(body(1), json!({"topics": ["room:1"], "client": "c 1"}));
    assert_eq!(body(2), json!({"topics": ["room:1"]}));
    assert_eq!(requests[0].header("authorization"), Some("Bearer key"));
    assert_eq!(requests[0].header("x-herald-client"), None);
    assert_eq!(
        (requests[2].header("authorization"), requests[2].header("x-herald-client")),
        (Some("Bearer tok"), Some("c2"))
    );
}

/// Listens at session and user scope: a subscriber names the scope and no tab (no
/// `X-Herald-Client`), a publisher names who listens in the body; `GET /v1/topics/{topic}`
/// sends the topic as one path segment. Fails if a request's shape differs from the
/// protocol's.
#[tokio::test]
async fn scoped_listens_and_topic_listeners_send_the_documented_requests() {
    let scoped = |scope: serde_json::Value, topics: &[&str]| {
        let mut body = scope;
        body["topics"] = json!(topics);
        Reply::Json(200, body.to_string())
    };
    let server = FakeServer::start(vec![
        scoped(json!({"user": "alice", "session": "s1"}), &["room:1"]),
        scoped(json!({"user": "alice"}), &[]),
        scoped(json!({"user": "bob", "session": "s 2"}), &["post:4/2"]),
        scoped(json!({"user": "bob"}), &[]),
        Reply::Json(
            200,
            json!({"topic": "post:4/2", "users": [], "sessions": [], "clients": [], "truncated": false})
                .to_string(),
        ),
    ])
    .await;
    let subscriber = Subscriber::new(&server.url, "tok").unwrap();
    let publisher = Publisher::new(&server.url, "key").unwrap();
    let answer = subscriber.listen_at(StoredScope::Session, &["room:1"]).await.unwrap();
    assert_eq!(
        answer,
        Listens {
            scope: Scope::session("alice", "s1"),
            topics: vec!["room:1".into()],
            positions: Default::default()
        }
    );
    let answer = subscriber.unlisten_at(StoredScope::User, &["post:1"]).await.unwrap();
    assert_eq!(
        answer,
        Listens { scope: Scope::user("alice"), topics: vec![], positions: Default::default() }
    );
    let answer = publisher.listen_at(&Scope::session("bob", "s 2"), &["post:4/2"]).await.unwrap();
    assert_eq!(answer.scope, Scope::session("bob", "s 2"));
    publisher.unlisten_at(&Scope::user("bob"), &["post:4/2"]).await.unwrap();
    assert_eq!(publisher.topic_listeners("post:4/2").await.unwrap().topic, "post:4/2");

    let requests = server.requests().await;
    let lines: Vec<&str> = requests.iter().map(|r| r.line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "POST /v1/listen HTTP/1.1",
            "POST /v1/unlisten HTTP/1.1",
            "POST /v1/topics/listen HTTP/1.1",
            "POST /v1/topics/unlisten HTTP/1.1",
            "GET /v1/topics/post:4%2F2 HTTP/1.1",
        ]
    );
    let body = |i: usize| serde_json::from_str::<serde_json::Value>(&requests[i].body).unwrap();
    assert_eq!(body(0), json!({"topics": ["room:1"], "scope": "session"}));
    assert_eq!(body(1), json!({"topics": ["post:1"], "scope": "user"}));
    assert_eq!(body(2), json!({"topics": ["post:4/2"], "user": "bob", "session": "s 2"}));
    assert_eq!(body(3), json!({"topics": ["post:4/2"], "user": "bob"}));
    for request in &requests[..2] {
        assert_eq!(request.header("x-herald-client"), None);
        assert_eq!(request.header("authorization"), Some("Bearer tok"));
    }
    for request in &requests[2..] {
        assert_eq!(request.header("authorization"), Some("Bearer key"));
    }
}
