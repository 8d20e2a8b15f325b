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
//! With `--log DIR` it is the **durable floor**: before it writes a publish to anyone, it appends
//! the publish to a log file in `DIR` and makes it durable (`fdatasync`), with group commit: one
//! thread takes every publish waiting, writes them with one `pwrite`, syncs once, then lets
//! their publishers go on. That is the least a server can do to deliver only what would survive
//! a crash: what `fdatasync` and one thread hand-off cost on the machine, next to the floor's
//! TCP and HTTP. The log is a file of [`LOG_BYTES`] written with zeros at start and then
//! overwritten in a circle, the cheapest durable write (no file growth, so no metadata for each
//! sync to write: what a database's WAL does once it starts over); nothing ever reads it.
//!
//! ```text
//! herald-floor --listen 127.0.0.1:7313 [--log DIR]
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, mpsc, oneshot};

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
/// Size of the durable floor's log file, written over in a circle. A group commit writes at most
/// [`LOG_BATCH_MAX`] publishes of at most [`BODY_BYTES_MAX`] each, well within it.
const LOG_BYTES: u64 = 64 * 1024 * 1024;
/// Publishes waiting for the log thread at most; more wait for a slot (the publisher's task
/// waits, nothing is dropped).
const LOG_QUEUE_MAX: usize = 4_096;
/// Publishes one group commit takes at most; the rest wait for the next.
const LOG_BATCH_MAX: usize = 512;

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
    let (listen, log_dir) = match args.as_slice() {
        [flag, addr] if flag == "--listen" => (addr, None),
        [flag, addr, log, dir] if flag == "--listen" && log == "--log" => (addr, Some(Path::new(dir))),
        _ => usage(),
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else { usage() };
    let log = match log_dir {
        Some(dir) => match Log::open(dir) {
            Ok(log) => Some(Arc::new(log)),
            Err(error) => {
                eprintln!("herald-floor: cannot make the log in {}: {error}", dir.display());
                std::process::exit(1)
            }
        },
        None => None,
    };
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(WORKER_THREADS).enable_all().build()?;
    runtime.block_on(serve(listen, log))
}

fn usage() -> ! {
    eprintln!("usage: herald-floor --listen IP:PORT [--log DIR]");
    std::process::exit(2)
}

/// The durable floor's log: publishes go to its thread, which appends and syncs them in groups.
struct Log {
    queue: mpsc::Sender<Logged>,
}

/// One publish on its way to the log, and who waits for it to be durable.
struct Logged {
    record: Vec<u8>,
    durable: oneshot::Sender<io::Result<()>>,
}

impl Log {
    /// Makes `DIR/floor.log` ([`LOG_BYTES`] of zeros, synced) and starts the log thread.
    fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let file = File::create(dir.join("floor.log"))?;
        let zeros = vec![0; 1024 * 1024];
        for offset in (0..LOG_BYTES).step_by(zeros.len()) {
            file.write_all_at(&zeros, offset)?;
        }
        file.sync_all()?;
        let (queue, waiting) = mpsc::channel(LOG_QUEUE_MAX);
        std::thread::Builder::new().name("floor-log".into()).spawn(move || run_log(&file, waiting))?;
        Ok(Self { queue })
    }

    /// Returns once `user`'s publish of `body` is durable.
    async fn append(&self, user: &str, body: &[u8]) -> io::Result<()> {
        let mut record = Vec::with_capacity(1 + user.len() + 4 + body.len());
        record.push(user.len() as u8); // at most USER_BYTES_MAX
        record.extend_from_slice(user.as_bytes());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes()); // at most BODY_BYTES_MAX
        record.extend_from_slice(body);
        let (durable, done) = oneshot::channel();
        let gone = || io::Error::other("the log thread has stopped");
        self.queue.send(Logged { record, durable }).await.map_err(|_| gone())?;
        done.await.map_err(|_| gone())?
    }
}

/// The log thread: takes every publish waiting (up to [`LOG_BATCH_MAX`]), writes them with one
/// `pwrite` where the last group ended (from the start again when they would pass the end),
/// syncs once, then lets them all go on.
fn run_log(file: &File, mut waiting: mpsc::Receiver<Logged>) {
    let (mut batch, mut bytes, mut offset) = (Vec::with_capacity(LOG_BATCH_MAX), Vec::new(), 0);
    while let Some(first) = waiting.blocking_recv() {
        batch.push(first);
        while batch.len() < LOG_BATCH_MAX {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        bytes.clear();
        for logged in &batch {
            bytes.extend_from_slice(&logged.record);
        }
        if offset + bytes.len() as u64 > LOG_BYTES {
            offset = 0;
        }
        let result = file.write_all_at(&bytes, offset).and_then(|()| file.sync_data());
        offset += bytes.len() as u64;
        for logged in batch.drain(..) {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            let _ = logged.durable.send(answer);
        }
    }
}

async fn serve(listen: SocketAddr, log: Option<Arc<Log>>) -> io::Result<()> {
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
                tokio::spawn(connection(stream, streams.clone(), log.clone()));
            }
            Err(error) => {
                eprintln!("herald-floor: accept: {error}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// Serves one connection: publishes one after another until it closes, or one stream.
async fn connection(mut stream: TcpStream, streams: Arc<Streams>, log: Option<Arc<Log>>) -> io::Result<()> {
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
        let body = &buf[request.head_bytes..end];
        // Durable before anyone gets it, as Herald's durable notifications are.
        if let Some(log) = &log
            && let Err(error) = log.append(&user, body).await
        {
            eprintln!("herald-floor: log: {error}");
            return refuse(&mut stream, "500 Internal Server Error").await;
        }
        let delivered = publish(&streams, &user, body);
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

    /// What a durable publish answered for is in the log file, in order, one record each.
    #[test]
    fn the_log_holds_what_it_answered_for() {
        let dir = std::env::temp_dir().join(format!("herald-floor-log-{}", std::process::id()));
        let log = Log::open(&dir).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(async {
            log.append("u1", b"hello").await.unwrap();
            log.append("u22", b"{}").await.unwrap();
        });
        let bytes = std::fs::read(dir.join("floor.log")).unwrap();
        assert_eq!(bytes.len() as u64, LOG_BYTES);
        let expected = b"\x02u1\x05\0\0\0hello\x03u22\x02\0\0\0{}";
        assert_eq!(&bytes[..expected.len()], expected);
        assert!(bytes[expected.len()..].iter().all(|b| *b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
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
