//! herald-floor: the floor of `bench/compare.sh` (issue 14), measured next to Herald, Nchan and
//! Socket.IO. It speaks what `bench/nchan/nginx.conf` speaks, so `herald-bench --kind sse-url`
//! drives it unchanged: `GET /sub/<user>` opens a Server-Sent Events stream, and
//! `POST /pub/<user>` (kept alive) writes `data: <body>\n\n` to each of that user's streams and
//! answers 201 Created, or 202 Accepted when nobody listens, as Nchan does.
//!
//! It does the least a notification server can do: one write per delivery, from the publisher's
//! own task, nothing stored, no ids, no resume, no authentication. What it costs is what the
//! kernel's TCP path and HTTP parsing cost on the machine: the floor that every server's figures
//! are divided by. Minimal, not sloppy: a stream whose client hangs up is forgotten, a subscriber
//! whose socket is full is dropped, and every request is bounded.
//!
//! ```text
//! herald-floor --listen 127.0.0.1:7313
//! ```

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;

/// Runtime worker threads: one per core of the 2-core bench machine, like Nchan's 2 nginx
/// workers and Herald's runtime.
const WORKER_THREADS: usize = 2;
/// Connections the kernel queues before they are accepted: Nchan's `listen … backlog=4096`.
const LISTEN_BACKLOG: u32 = 4096;
/// Largest request head; a longer one is answered 431 and the connection closed.
const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Largest publish body (the bench's are ~50 bytes); a longer one is answered 413.
const BODY_BYTES_MAX: usize = 64 * 1024;
/// Most headers parsed in a request head; more are answered 431.
const HEADERS_MAX: usize = 32;
/// Longest user name: 1 to this many bytes of `[A-Za-z0-9_]` (Nchan's channel id, `\w+`).
const USER_BYTES_MAX: usize = 128;
/// Bytes a connection's buffer starts with; it grows only while a request needs it.
const READ_BYTES_FIRST: usize = 1024;
/// Pause after a failed accept (out of open files, say), so that the loop does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// A stream's response head. No length: the body lasts until the connection closes.
const STREAM_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
    Cache-Control: no-cache\r\nConnection: close\r\n\r\n";

/// One open stream. Publishers write to `stream` only under the [`Streams`] lock, so two events
/// never interleave; its own task waits for the client to hang up, or for `dropped`.
struct Subscriber {
    stream: TcpStream,
    dropped: Notify,
}

/// Every open stream, by user.
type Streams = Mutex<HashMap<Box<str>, Vec<Arc<Subscriber>>>>;

/// What a request asks for, and its user.
enum Route {
    Subscribe(Box<str>),
    Publish(Box<str>),
}

/// A complete request head.
struct Request {
    route: Route,
    head_bytes: usize,
    body_bytes: usize,
    close: bool,
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [flag, addr] = args.as_slice() else { usage() };
    let Ok(listen) = addr.parse::<SocketAddr>() else { usage() };
    if flag != "--listen" {
        usage();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(WORKER_THREADS).enable_all().build()?;
    runtime.block_on(serve(listen))
}

fn usage() -> ! {
    eprintln!("usage: herald-floor --listen IP:PORT");
    std::process::exit(2)
}

async fn serve(listen: SocketAddr) -> io::Result<()> {
    let socket = if listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(LISTEN_BACKLOG)?;
    eprintln!("herald-floor: listening on http://{}", listener.local_addr()?);
    let streams = Arc::new(Streams::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                // Each event is one small write that must leave at once, not wait for the
                // previous one's ACK (nginx's `tcp_nodelay on`, Herald's too).
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream, streams.clone()));
            }
            Err(error) => {
                eprintln!("herald-floor: accept: {error}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Serves one connection: publishes one after another until it closes, or one stream.
async fn connection(mut stream: TcpStream, streams: Arc<Streams>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(READ_BYTES_FIRST);
    loop {
        let request = loop {
            match parse(&buf) {
                Ok(Some(request)) => break request,
                Ok(None) if buf.len() < HEAD_BYTES_MAX => {}
                Ok(None) => return refuse(&mut stream, "431 Request Header Fields Too Large").await,
                Err(status) => return refuse(&mut stream, status).await,
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        };
        let user = match request.route {
            Route::Subscribe(user) => {
                // The stream lives for hours on a few hundred bytes: the buffer goes first.
                drop(buf);
                return subscribe(stream, &user, &streams).await;
            }
            Route::Publish(user) => user,
        };
        let end = request.head_bytes + request.body_bytes;
        while buf.len() < end {
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
        let delivered = publish(&streams, &user, &buf[request.head_bytes..end]);
        buf.drain(..end);
        let status = if delivered > 0 { "201 Created" } else { "202 Accepted" };
        let body = format!("delivered: {delivered}\n");
        let close = if request.close { "Connection: close\r\n" } else { "" };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{close}\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await?;
        if request.close {
            return Ok(());
        }
    }
}

/// The request head at the start of `buf`: `Ok(None)` until it is complete, `Err(status)` for
/// one the floor does not serve.
fn parse(buf: &[u8]) -> Result<Option<Request>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut request = httparse::Request::new(&mut headers);
    let head_bytes = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("431 Request Header Fields Too Large"),
        Err(_) => return Err("400 Bad Request"),
    };
    let (mut body_bytes, mut close) = (0, request.version == Some(0));
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok().and_then(|v| v.trim().parse().ok());
            body_bytes = value.ok_or("400 Bad Request")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("411 Length Required"); // bodies with a Content-Length only
        } else if name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        }
    }
    if body_bytes > BODY_BYTES_MAX {
        return Err("413 Content Too Large");
    }
    let path = request.path.unwrap_or("").split('?').next().unwrap_or("");
    let is_user = |user: &str| {
        (1..=USER_BYTES_MAX).contains(&user.len())
            && user.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    let route = match (request.method, path.split_at_checked("/sub/".len())) {
        (Some("GET"), Some(("/sub/", user))) if is_user(user) => Route::Subscribe(user.into()),
        (Some("POST"), Some(("/pub/", user))) if is_user(user) => Route::Publish(user.into()),
        _ => return Err("404 Not Found"),
    };
    Ok(Some(Request { route, head_bytes, body_bytes, close }))
}

/// Answers a request the floor does not serve, and closes the connection.
async fn refuse(stream: &mut TcpStream, status: &str) -> io::Result<()> {
    let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await
}

fn lock(streams: &Streams) -> MutexGuard<'_, HashMap<Box<str>, Vec<Arc<Subscriber>>>> {
    streams.lock().expect("nothing panics while holding the streams lock")
}

/// Whether `bytes` went into the socket whole, in one non-blocking write.
fn write_whole(stream: &TcpStream, bytes: &[u8]) -> bool {
    matches!(stream.try_write(bytes), Ok(n) if n == bytes.len())
}

/// Opens the stream of `user` and holds it until the client hangs up or a publish drops it.
async fn subscribe(stream: TcpStream, user: &str, streams: &Streams) -> io::Result<()> {
    stream.writable().await?;
    let subscriber = Arc::new(Subscriber { stream, dropped: Notify::new() });
    {
        // The head is written under the lock: no event can come before it, and once the client
        // has read it (herald-bench then counts it ready) every publish reaches it.
        let mut by_user = lock(streams);
        if !write_whole(&subscriber.stream, STREAM_HEAD) {
            return Ok(());
        }
        by_user.entry(user.into()).or_default().push(subscriber.clone());
    }
    let mut ignored = [0; 64];
    loop {
        tokio::select! {
            ready = subscriber.stream.readable() => if ready.is_err() { break },
            () = subscriber.dropped.notified() => return Ok(()), // the publisher removed it
        }
        match subscriber.stream.try_read(&mut ignored) {
            Ok(0) => break,
            Ok(_) => {} // a client has nothing to say on a stream
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
    let mut by_user = lock(streams);
    if let Some(list) = by_user.get_mut(user) {
        list.retain(|s| !Arc::ptr_eq(s, &subscriber));
        if list.is_empty() {
            by_user.remove(user);
        }
    }
    Ok(())
}

/// Writes `body` as one event to every stream of `user`, one write each, from the publisher's
/// task; returns how many got it.
fn publish(streams: &Streams, user: &str, body: &[u8]) -> usize {
    let event = event(body);
    let mut by_user = lock(streams);
    let Some(list) = by_user.get_mut(user) else { return 0 };
    // A non-blocking write: a subscriber whose socket buffer is full (it reads slower than it
    // is written to) is dropped, rather than made to hold up this publisher and every other
    // behind the lock; a partial write would leave half an event in its stream, so it too drops.
    list.retain(|s| {
        let whole = write_whole(&s.stream, &event);
        if !whole {
            s.dropped.notify_one();
        }
        whole
    });
    let delivered = list.len();
    if list.is_empty() {
        by_user.remove(user);
    }
    delivered
}

/// `body` as one Server-Sent Event: each of its lines (ended by CRLF, LF or CR) a `data:` line,
/// then the blank line that ends the event.
fn event(body: &[u8]) -> Vec<u8> {
    let mut event = Vec::with_capacity(body.len() + 16);
    let mut rest = body;
    loop {
        let end = rest.iter().position(|b| *b == b'\n' || *b == b'\r').unwrap_or(rest.len());
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(&rest[..end]);
        event.push(b'\n');
        if end == rest.len() {
            break;
        }
        rest = &rest[end + if rest[end..].starts_with(b"\r\n") { 2 } else { 1 }..];
    }
    event.push(b'\n');
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_body_is_a_data_line() {
        assert_eq!(event(br#"{"bench_id":1}"#), b"data: {\"bench_id\":1}\n\n");
        assert_eq!(event(b"a\r\nb\rc\nd"), b"data: a\ndata: b\ndata: c\ndata: d\n\n");
        assert_eq!(event(b""), b"data: \n\n");
    }

    #[test]
    fn requests_are_routed_and_bounded() {
        let publish = parse(b"POST /pub/u_1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello").unwrap().unwrap();
        assert!(matches!(&publish.route, Route::Publish(user) if &**user == "u_1"));
        assert_eq!((publish.head_bytes, publish.body_bytes, publish.close), (45, 5, false));
        let stream = parse(b"GET /sub/u1?x=1 HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(matches!(&stream.route, Route::Subscribe(user) if &**user == "u1"));
        assert!(stream.close, "HTTP/1.0 closes");
        assert!(parse(b"POST /pub/u1 HTTP/1.1\r\nContent-Le").unwrap().is_none());
        let status = |request: &[u8]| parse(request).err();
        assert_eq!(status(b"GET /sub/a-b HTTP/1.1\r\n\r\n"), Some("404 Not Found"));
        assert_eq!(status(b"GET /pub/a HTTP/1.1\r\n\r\n"), Some("404 Not Found"));
        assert_eq!(
            status(b"POST /pub/a HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"),
            Some("413 Content Too Large")
        );
        assert_eq!(
            status(b"POST /pub/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some("411 Length Required")
        );
        let long_user = format!("GET /sub/{} HTTP/1.1\r\n\r\n", "u".repeat(USER_BYTES_MAX + 1));
        assert_eq!(status(long_user.as_bytes()), Some("404 Not Found"));
    }
}
