//! The accept loop and each connection's front door.
//!
//! Why not just `axum::serve`: hyper keeps an 8 KiB read buffer (its minimum) and its dispatcher
//! state for every connection for as long as the connection lives, and an SSE connection lives
//! for hours while doing nothing. That alone is four times our budget of 2 KiB of server memory
//! per idle client. So the front door reads the first request head itself, into a small buffer
//! it frees right after parsing; a `GET /v1/stream` is then served by the lean path below, which
//! keeps nothing per connection but the socket and the client's [`SseStream`]. Every other
//! request (and every later request on a kept-alive connection) goes to hyper and the axum
//! router, with the bytes already read handed back in front of the socket.
//!
//! The access log ([`crate::access`]) sees the router's requests through its middleware; the
//! streams opened here, and this door's own refusals, are logged here.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, FromRequestParts};
use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::TaskTracker;

use crate::access::AccessLine;
use crate::app::App;
use crate::auth::Subscriber;
use crate::caps::{Admission, ConnectionPermit, IpSlot};
use crate::error::{ApiError, ApiQuery};
use crate::guarded::{GuardedSocket, StreamEnd};
use crate::transport::StreamQuery;
use crate::transport::sse::{STREAM_HEADERS, SseStream};

/// Largest request head accepted (request line and headers). Above: 431 and the connection is
/// closed. Tokens and cookies fit easily; browsers themselves stop well below this.
const REQUEST_HEAD_BYTES_MAX: usize = 16 * 1024;
/// First size of the buffer a request head is read into; it doubles up to the maximum.
const REQUEST_HEAD_BYTES_INITIAL: usize = 2 * 1024;
/// Headers parsed in one request head. More: 431.
const REQUEST_HEADERS_MAX: usize = 64;
/// A new connection must send its request head within this time, or it is closed. Bounds what
/// idle, never-used connections can hold.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read and thrown away at a time from a stream client (it has nothing to say; reading
/// only tells us when it leaves).
const DISCARD_BYTES: usize = 8;

/// Accepts connections until `stop` turns true. Accept errors (such as running out of file
/// descriptors) are logged and retried after a short pause rather than ending the server.
/// With `tls`, every connection first completes a TLS handshake (see [`serve_tls_connection`]).
/// A connection over the node's cap is answered `503` and closed right here (see [`crate::caps`]).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    app: Arc<App>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    connections: TaskTracker,
    tls: Option<TlsAcceptor>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let Some(permit) = app.limiter.admit_connection() else {
                    app.limiter.turn_away(socket);
                    continue;
                };
                let _ = socket.set_nodelay(true);
                // Under TLS too: the guard watches the bytes that reach (or do not reach) the peer.
                let socket = GuardedSocket::new(socket, app.settings.send_timeout);
                let (app, router, stop) = (app.clone(), router.clone(), stop.clone());
                let peer = Peer { addr: peer, permit };
                match &tls {
                    None => connections.spawn(serve_connection(
                        socket,
                        peer,
                        app,
                        router,
                        stop,
                        connections.clone(),
                    )),
                    Some(tls) => {
                        let tracker = connections.clone();
                        connections.spawn(serve_tls_connection(
                            socket,
                            peer,
                            tls.clone(),
                            app,
                            router,
                            stop,
                            tracker,
                        ))
                    }
                };
            }
            Err(error) => {
                tracing::warn!(%error, "accept failed; pausing before the next accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Who is on the other end of a connection, and its place under the node's cap: the permit is
/// kept until the connection closes, whichever path serves it (inside the IO hyper owns, so an
/// upgraded WebSocket keeps it too).
struct Peer {
    addr: SocketAddr,
    permit: ConnectionPermit,
}

/// A connection's byte stream: plain TCP or TLS over TCP. The lean stream path needs to read
/// (to notice the client leaving) while it writes; how to split the socket for that is the one
/// thing that differs.
pub(crate) trait Socket: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The halves the lean path drives a stream with (see [`drive_stream`]).
    type Halves<'a>: Halves + Send
    where
        Self: 'a;

    fn halves(&mut self) -> Self::Halves<'_>;

    /// Where a stream served on this connection registers (see [`StreamEnd`]).
    fn stream_end(&self) -> &Arc<StreamEnd>;
}

impl Socket for GuardedSocket {
    // Not split: the guard's state goes with the writes. Reading and writing take turns, which
    // is all the lean path needs (it reads only to notice the client leaving).
    type Halves<'a> = Unsplit<'a, GuardedSocket>;

    fn halves(&mut self) -> Self::Halves<'_> {
        Unsplit(self)
    }

    fn stream_end(&self) -> &Arc<StreamEnd> {
        GuardedSocket::stream_end(self)
    }
}

impl Socket for TlsStream<GuardedSocket> {
    // TLS state is shared by both directions: tokio's split puts it behind a lock (one
    // allocation per stream; a TLS connection's buffers cost far more anyway).
    type Halves<'a> = Split<ReadHalf<&'a mut Self>, WriteHalf<&'a mut Self>>;

    fn halves(&mut self) -> Self::Halves<'_> {
        let (reader, writer) = tokio::io::split(self);
        Split(reader, writer)
    }

    fn stream_end(&self) -> &Arc<StreamEnd> {
        self.get_ref().0.stream_end()
    }
}

/// Completes the TLS handshake (within [`REQUEST_HEAD_TIMEOUT`]), then serves HTTP/2 if the
/// client chose it (ALPN `h2`), else HTTP/1.1 through the same front door as plain TCP.
async fn serve_tls_connection(
    socket: GuardedSocket,
    peer: Peer,
    tls: TlsAcceptor,
    app: Arc<App>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    connections: TaskTracker,
) {
    let handshake = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, tls.accept(socket));
    let stream = tokio::select! {
        handshake = handshake => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(%error, "TLS handshake failed");
                return;
            }
            Err(_) => return, // Silent for too long.
        },
        _ = stop.changed() => return,
    };
    if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
        return Box::pin(serve_http2(stream, peer, router, stop)).await;
    }
    serve_connection(stream, peer, app, router, stop, connections).await;
}

async fn serve_connection<S: Socket>(
    socket: S,
    peer: Peer,
    app: Arc<App>,
    router: Router,
    mut stop: watch::Receiver<bool>,
    connections: TaskTracker,
) {
    // The front door (reading the head, opening the stream: a timer, buffers, the request,
    // a store read) and hyper's connection state (several KiB) are boxed; a stream, which
    // may then stay idle for hours, gets a task of its own (below), as small as what it
    // keeps, since a task's memory is the size of its largest state.
    let door = Box::pin(async {
        tokio::select! {
            door = front_door(socket, peer.addr, &app) => Some(door),
            // Shutting down: a connection that has not finished its first request (a
            // browser's preconnect, say) is dropped rather than allowed to hold the shutdown up.
            _ = stop.changed() => None,
        }
    })
    .await;
    let close_grace = app.settings.close_grace;
    let (socket, stream, head, ip_slot) = match door {
        Some(FrontDoor::Stream(socket, stream, head, ip_slot)) => (socket, stream, head, ip_slot),
        Some(FrontDoor::Hyper(socket, read)) => {
            return Box::pin(serve_with_hyper(socket, read, peer, router, stop, close_grace)).await;
        }
        Some(FrontDoor::Done) | None => return,
    };
    // The stream's own task, with the connection's slots (the address is no longer needed).
    // Tracked like this one, so a shutdown waits for it.
    connections.spawn(run_stream(socket, stream, head, close_grace, (ip_slot, peer.permit)));
}

/// What to do with a connection after its first request head.
enum FrontDoor<S> {
    /// A stream was opened: run it on the lean path, answering with this response head (and
    /// holding its address's connection slot).
    Stream(S, SseStream, String, Option<IpSlot>),
    /// Anything else: hand it to hyper with the bytes read so far.
    Hyper(S, Bytes),
    /// Answered (an error) or gone.
    Done,
}

async fn front_door<S: Socket>(mut socket: S, peer: SocketAddr, app: &Arc<App>) -> FrontDoor<S> {
    // The access line of this first request (when the access log is on): the lean path's
    // streams and refusals are logged here, every other request by the router's middleware.
    let access_line = |head: Option<&Head>| {
        app.settings.access_log.then(|| {
            let empty = http::HeaderMap::new();
            AccessLine::start(
                head.map(|h| &h.parts.method),
                head.map(|h| &h.parts.uri),
                head.map_or(&empty, |h| &h.parts.headers),
                Some(peer),
                &app.settings.caps.trusted_proxies,
            )
        })
    };
    let (error, mut answer_headers, line) = match tokio::time::timeout(
        REQUEST_HEAD_TIMEOUT,
        read_head(&mut socket),
    )
    .await
    {
        Ok(Ok(Some(head))) if head.is_stream_request() => {
            let line = access_line(Some(&head));
            // CORS and `nosniff`, as the router's middleware adds them on the hyper path.
            let answer_headers = app.settings.allowed_origins.answer_headers(&head.parts.headers);
            // The address's caps first: a refusal costs no token check and no store read.
            let admitted =
                app.limiter.admit_subscriber(peer.ip(), &head.parts.headers, Admission::Connection);
            match admitted {
                Ok(ip_slot) => match open_stream(app, head.parts).await {
                    Ok(stream) => {
                        let mut answer_headers = answer_headers;
                        // Logged as it opens (see `crate::access` for why not at its end).
                        if let Some(line) = line {
                            answer_headers.push(line.id.header());
                            line.finish(http::StatusCode::OK, None, None);
                        }
                        let head = stream_response_head(&answer_headers);
                        return FrontDoor::Stream(socket, stream, head, ip_slot);
                    }
                    Err(error) => (error, answer_headers, line),
                },
                Err(error) => (error, answer_headers, line),
            }
        }
        Ok(Ok(Some(head))) => return FrontDoor::Hyper(socket, head.bytes),
        Ok(Ok(None)) | Err(_) => return FrontDoor::Done, // Closed, or silent for too long.
        Ok(Err(HeadError::Io(error))) => {
            tracing::debug!(%error, "connection failed before its first request");
            return FrontDoor::Done;
        }
        Ok(Err(HeadError::TooLarge)) => (
            ApiError::new(
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request_head_too_large",
                format!(
                    "the request head is larger than {REQUEST_HEAD_BYTES_MAX} bytes or has too many headers"
                ),
            ),
            app.settings.allowed_origins.answer_headers(&http::HeaderMap::new()),
            access_line(None),
        ),
        Ok(Err(HeadError::Malformed)) => (
            ApiError::bad_request("malformed_request", "the request is not valid HTTP/1.1"),
            app.settings.allowed_origins.answer_headers(&http::HeaderMap::new()),
            access_line(None),
        ),
    };
    if error.status == http::StatusCode::TOO_MANY_REQUESTS {
        // As the router's `slow_refusals` does for every other route.
        tokio::time::sleep(crate::caps::REFUSAL_DELAY).await;
    }
    if let Some(line) = &line {
        answer_headers.push(line.id.header());
    }
    let _ = write_error(&mut socket, &error, &answer_headers).await;
    if let Some(line) = line {
        line.finish(error.status, None, Some(error.code));
    }
    FrontDoor::Done
}

/// A parsed first request head, and the bytes read so far (the head and maybe more).
struct Head {
    parts: http::request::Parts,
    bytes: Bytes,
}

impl Head {
    fn is_stream_request(&self) -> bool {
        self.parts.method == http::Method::GET
            && self.parts.uri.path() == "/v1/stream"
            && self.parts.version == http::Version::HTTP_11
            // A request with a body (or an upgrade) is left to hyper, which knows what to do.
            && !self.parts.headers.contains_key(http::header::CONTENT_LENGTH)
            && !self.parts.headers.contains_key(http::header::TRANSFER_ENCODING)
            && !self.parts.headers.contains_key(http::header::UPGRADE)
    }
}

enum HeadError {
    Io(io::Error),
    TooLarge,
    Malformed,
}

/// Reads until a complete request head is buffered. `Ok(None)`: the peer closed first.
async fn read_head<S: AsyncRead + Unpin>(socket: &mut S) -> Result<Option<Head>, HeadError> {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::with_capacity(REQUEST_HEAD_BYTES_INITIAL);
    loop {
        if buffer.len() == buffer.capacity() {
            if buffer.capacity() >= REQUEST_HEAD_BYTES_MAX {
                return Err(HeadError::TooLarge);
            }
            buffer.reserve_exact(buffer.capacity());
        }
        // Reads into the spare capacity only (there is some, see above): the buffer never
        // grows but by the doubling above.
        match socket.read_buf(&mut buffer).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(HeadError::Io(e)),
        }
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buffer) {
            Ok(httparse::Status::Complete(_)) => {
                let parts = to_parts(&request).ok_or(HeadError::Malformed)?;
                return Ok(Some(Head { parts, bytes: Bytes::from(buffer) }));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(_) => return Err(HeadError::Malformed),
        }
    }
}

fn to_parts(request: &httparse::Request<'_, '_>) -> Option<http::request::Parts> {
    let mut builder = http::Request::builder()
        .method(request.method?)
        .uri(request.path?)
        .version(if request.version? == 1 { http::Version::HTTP_11 } else { http::Version::HTTP_10 });
    for header in request.headers.iter() {
        builder = builder.header(header.name, header.value);
    }
    Some(builder.body(()).ok()?.into_parts().0)
}

async fn open_stream(app: &Arc<App>, mut parts: http::request::Parts) -> Result<SseStream, ApiError> {
    let subscriber = Subscriber::from_request_parts(&mut parts, app).await?;
    let ApiQuery(query) = ApiQuery::<StreamQuery>::from_request_parts(&mut parts, app).await?;
    SseStream::open(app, &subscriber, &query, &parts.headers).await
}

/// The lean path: answers a `GET /v1/stream` that opened its connection, then writes the
/// stream's chunks straight to the socket until the stream ends or the client leaves. The
/// response has no length and no chunking: it ends when the connection closes, as SSE allows.
///
/// A client that stops reading is dropped by its socket's guard (see [`GuardedSocket`]); one
/// that the hub ended has `close_grace` to take the rest of its write and its `closed` event,
/// then it is dropped.
///
/// `held` (the connection's slots under the caps) is kept until the stream's task ends.
///
/// Measured with `size_of_val` in a release build at `a2114f6`: this future was 752 B, the whole
/// task of an idle stream; the bench's RSS per idle tab did not move when `dd9ea0b` reshaped
/// the writes (1.85 against 1.83 KiB, see [`drive_stream`]). (With the front door in the same
/// task, and `async fn`s, it was 3.9 KiB, and an idle SSE client cost 3.65 KiB of RSS; 848 B
/// before `Subscription::next_before` boxed its
/// rare waits, and the task's memory then took one more allocation size class: 1.91 KiB per
/// idle SSE tab against 1.76 with `--memory`.)
#[allow(clippy::manual_async_fn)] // On purpose: see the comment in the body.
fn run_stream<S: Socket, H: Send + 'static>(
    mut socket: S,
    mut stream: SseStream,
    head: String,
    close_grace: Duration,
    held: H,
) -> impl Future<Output = ()> + Send {
    // A plain `fn` returning an `async move` block rather than an `async fn`: an async fn keeps
    // a copy of each argument beside the local it is moved into (its task is larger by them).
    async move {
        // Captured (not moved again, which would copy it): dropped when the task ends.
        let _held = &held;
        let stream_end = socket.stream_end().clone();
        stream_end.set(stream.end_signal());
        // The head on its own, before the stream's long life: a stall here is bounded by the
        // socket's send timeout, and its buffer is not part of the state an idle stream keeps.
        if socket.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        drop(head);
        drive_stream(socket.halves(), &mut stream, &stream_end, close_grace).await;
    }
}

/// The two halves [`drive_stream`] uses: one to notice the client leaving, one to write.
pub(crate) trait Halves {
    type Reader: AsyncRead + Unpin + Send;
    type Writer: AsyncWrite + Unpin + Send;
    fn reader(&mut self) -> &mut Self::Reader;
    fn writer(&mut self) -> &mut Self::Writer;
}

/// One socket that reads and writes in turn.
pub(crate) struct Unsplit<'a, S>(&'a mut S);

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Halves for Unsplit<'_, S> {
    type Reader = S;
    type Writer = S;
    fn reader(&mut self) -> &mut S {
        self.0
    }
    fn writer(&mut self) -> &mut S {
        self.0
    }
}

/// A socket split in two.
pub(crate) struct Split<R, W>(R, W);

impl<R: AsyncRead + Unpin + Send, W: AsyncWrite + Unpin + Send> Halves for Split<R, W> {
    type Reader = R;
    type Writer = W;
    fn reader(&mut self) -> &mut R {
        &mut self.0
    }
    fn writer(&mut self) -> &mut W {
        &mut self.1
    }
}

/// Writes the stream's chunks until the stream ends (then shuts the write side down) or the
/// client leaves (reading tells).
///
/// The hub's end of the stream is watched only while a write waits (a peer that does not
/// read, see [`finish_write`]); a stream waiting for its next chunk learns of its end from its
/// `closed` event. The wait for the next chunk is `biased`: the socket's read readiness is
/// polled only once no chunk is ready. Polled at every wake of the task, as they were, the end
/// signal (two locks) and the read readiness (a lock and a waker check) cost about 2 % of the
/// server's CPU at full load (`CALLGRAPH=dwarf STORE=memory bench/profile.sh cpu`).
async fn drive_stream<H: Halves>(
    mut halves: H,
    stream: &mut SseStream,
    stream_end: &StreamEnd,
    close_grace: Duration,
) {
    loop {
        let chunk = tokio::select! {
            biased;
            chunk = stream.next_chunk() => chunk,
            gone = client_left(halves.reader()) => if gone { return } else { continue },
        };
        let Some(chunk) = chunk else { break };
        if !write(halves.writer().write_all(&chunk), stream_end, close_grace).await {
            return;
        }
    }
    // Under TLS a shutdown writes (`close_notify`): bounded like the stream's last write.
    write(halves.writer().shutdown(), stream_end, close_grace).await;
}

/// Runs `write` (a chunk, or the shutdown) to its end; `true` if it went through. Most writes
/// go through at their first poll; one that waits goes on in [`finish_write`], boxed: its wait
/// for the end and its timer held inline would make every idle stream's task larger (a task is
/// as large as its largest state: measured inline at `f5a7529`, an idle tab cost 1.98 KiB of
/// RSS against 1.84).
async fn write<F: Future<Output = io::Result<()>>>(
    write: F,
    stream_end: &StreamEnd,
    close_grace: Duration,
) -> bool {
    let mut write = std::pin::pin!(write);
    match futures::poll!(write.as_mut()) {
        Poll::Ready(written) => written.is_ok(),
        Poll::Pending => Box::pin(finish_write(write, stream_end, close_grace)).await,
    }
}

/// Finishes a write that waits (a slow peer, or one that does not read), watching the hub's end
/// of the stream meanwhile: once the hub ended it, what is left of the stream (this write, its
/// `closed` event, the shutdown) has `close_grace` from then, after which the socket is reset
/// and dropped. `true` if the write went through.
async fn finish_write<F: Future<Output = io::Result<()>>>(
    mut write: Pin<&mut F>,
    stream_end: &StreamEnd,
    close_grace: Duration,
) -> bool {
    let deadline = match stream_end.grace_until() {
        Some(deadline) => deadline,
        None => tokio::select! {
            biased;
            written = write.as_mut() => return written.is_ok(),
            () = stream_end.ended() => stream_end.start_grace(close_grace),
        },
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(written) => written.is_ok(),
        Err(_) => {
            stream_end.reset_on_drop();
            false
        }
    }
}

/// The head of a stream's answer: [`STREAM_HEADERS`] and `answer_headers` (CORS, `nosniff`).
fn stream_response_head(answer_headers: &[(http::HeaderName, http::HeaderValue)]) -> String {
    let mut head = String::from("HTTP/1.1 200 OK\r\n");
    for (name, value) in STREAM_HEADERS {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    push_headers(&mut head, answer_headers);
    head.push_str("connection: close\r\n\r\n");
    head
}

fn push_headers(head: &mut String, headers: &[(http::HeaderName, http::HeaderValue)]) {
    for (name, value) in headers {
        // Header values are visible ASCII here (our constants and listed origins); anything
        // else is left out rather than written raw.
        let Ok(value) = value.to_str() else { continue };
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
}

/// Waits until the client sends something: `true` if it closed the connection (or it broke),
/// `false` if it sent bytes, which are thrown away.
async fn client_left<R: AsyncRead + Unpin>(reader: &mut R) -> bool {
    use tokio::io::AsyncReadExt;
    let mut discard = [0u8; DISCARD_BYTES];
    !matches!(reader.read(&mut discard).await, Ok(n) if n > 0)
}

/// Writes `error` as a complete JSON response, with `answer_headers`, and closes.
async fn write_error<S: AsyncWrite + Unpin>(
    socket: &mut S,
    error: &ApiError,
    answer_headers: &[(http::HeaderName, http::HeaderValue)],
) -> io::Result<()> {
    socket.write_all(&error.to_http1_with(answer_headers)).await?;
    socket.shutdown().await
}

/// Hands the connection to hyper and the axum router, with the bytes already read in front.
///
/// Each request carries the connection's [`StreamEnd`] (as an extension), where a stream served
/// on it registers: once the hub ends that stream, the connection finishes the answer in flight
/// (the `closed` event) and closes, within `close_grace`, or is dropped, whatever its writes
/// are doing. (HTTP/2 carries none: it serves many streams on one connection, and a stalled one
/// is bounded by the send timeout and HTTP/2's own per-stream send buffer.)
async fn serve_with_hyper<S: Socket>(
    socket: S,
    read: Bytes,
    peer: Peer,
    router: Router,
    mut stop: watch::Receiver<bool>,
    close_grace: Duration,
) {
    let stream_end = socket.stream_end().clone();
    let io = TokioIo::new(HyperIo { prefix: read, inner: socket, error_answer: None, _permit: peer.permit });
    let peer = ConnectInfo(peer.addr);
    let service = hyper::service::service_fn({
        let stream_end = stream_end.clone();
        move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(stream_end.clone());
            // The peer's address, for the per-address caps (as axum's `ConnectInfo`).
            request.extensions_mut().insert(peer);
            // The router is always ready (its `poll_ready` does nothing) and cheap to clone.
            tower_service::Service::call(&mut router.clone(), request)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        // The same head limits as the front door's, for every later request: hyper's own are
        // 100 headers and heads up to its read buffer's ~400 KiB, which is also what an
        // unfinished head could hold per connection. The buffer's bound is checked before each
        // read (so it may be passed by one read); the head's size is checked exactly.
        .max_headers(REQUEST_HEADERS_MAX)
        .max_header_size(REQUEST_HEAD_BYTES_MAX)
        .max_buf_size(REQUEST_HEAD_BYTES_MAX)
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        () = stream_end.ended() => {
            connection.as_mut().graceful_shutdown();
            if tokio::time::timeout(close_grace, connection).await.is_err() {
                stream_end.reset_on_drop();
            }
        }
        _ = stop.changed() => {
            // Finish the request in flight, then close; streams end through the hub.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Most streams (tabs) one HTTP/2 connection may have open at once; the browser opens its next
/// tab's stream on a new connection (or waits) above it. Far above the six connections per host
/// that made HTTP/1.1 a problem, and a bound on what one connection can make the server hold.
const H2_STREAMS_MAX: u32 = 256;
/// Bytes an HTTP/2 stream may have buffered for sending (hyper's default is 400 KiB per stream:
/// 100 MiB for a connection at the stream bound). The same as one SSE write batch.
const H2_SEND_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Largest request head (HPACK-decoded header list) on HTTP/2, as on HTTP/1.1.
const H2_HEADER_LIST_BYTES_MAX: u32 = REQUEST_HEAD_BYTES_MAX as u32;

/// Serves an HTTP/2 connection (TLS with ALPN `h2`) with hyper and the axum router: every
/// request, streams included, takes the router's path; streams of one browser share the
/// connection.
///
/// The connection's permit is held until it closes; each request is limited per address by
/// the router's caps.
async fn serve_http2<S: Socket>(socket: S, peer: Peer, router: Router, mut stop: watch::Receiver<bool>) {
    let Peer { addr: peer, permit: _permit } = peer;
    let service = WithPeer { router: TowerToHyperService::new(router), peer };
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX)
        .max_send_buf_size(H2_SEND_BUFFER_BYTES_MAX)
        .max_header_list_size(H2_HEADER_LIST_BYTES_MAX)
        .serve_connection(TokioIo::new(socket), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
        }
        _ = stop.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The router as a hyper service that puts the peer's address into every request (as axum's
/// `ConnectInfo`), for the per-address caps.
#[derive(Clone)]
struct WithPeer {
    router: TowerToHyperService<Router>,
    peer: SocketAddr,
}

type HyperRequest = http::Request<hyper::body::Incoming>;

impl hyper::service::Service<HyperRequest> for WithPeer {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<HyperRequest>>::Response;
    type Error = <TowerToHyperService<Router> as hyper::service::Service<HyperRequest>>::Error;
    type Future = <TowerToHyperService<Router> as hyper::service::Service<HyperRequest>>::Future;

    fn call(&self, mut request: HyperRequest) -> Self::Future {
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.call(request)
    }
}

/// The socket as hyper sees it: the bytes the front door already read put back in front, and
/// hyper's own error answers made JSON.
///
/// Hyper answers some malformed requests itself, before any handler runs, with an empty body:
/// 400 for a request line, header or framing it cannot parse (a bad or doubled
/// `Content-Length`, a `Transfer-Encoding` that does not end in `chunked` or in HTTP/1.0), 431
/// for a head over its limits, 414 for a URI over 64 KiB. The front door's parser already turns
/// most of these into JSON on a connection's first request, but not the framing errors (httparse
/// does not read header values), and hyper alone parses the later requests of a kept-alive
/// connection. Hyper has no hook for these answers, so they are recognized as they are written
/// and replaced. They are unmistakable: a response head with an error status and
/// `content-length: 0`, written alone. Herald itself never answers an error without a JSON
/// body, and a body is never written alone starting with a status line (JSON and chunked SSE
/// have no raw CRLFs in them to end one).
struct HyperIo<S> {
    prefix: Bytes,
    inner: S,
    /// A JSON answer replacing hyper's, still to be written; then the connection closes.
    error_answer: Option<Bytes>,
    /// Counts the connection against the node's cap for as long as the socket lives (an
    /// upgraded WebSocket's too).
    _permit: ConnectionPermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for HyperIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if !self.prefix.has_remaining() {
                // Free the head buffer now: a consumed `Bytes` still holds its allocation, and
                // an upgraded connection (WebSocket) keeps this reader for hours.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> HyperIo<S> {
    /// Writes what is left of the JSON answer that replaced hyper's, if any.
    fn poll_error_answer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(answer) = self.error_answer.as_mut() {
            if answer.is_empty() {
                self.error_answer = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, answer))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            answer.advance(n);
        }
        Poll::Ready(Ok(()))
    }

    /// If `bufs` is one of hyper's own error answers, takes the JSON answer that replaces it and
    /// returns the length hyper wrote.
    fn replace_hyper_error(&mut self, bufs: &[io::IoSlice<'_>]) -> Option<usize> {
        let mut written = bufs.iter().filter(|b| !b.is_empty());
        let head = written.next()?;
        if written.next().is_some() {
            return None;
        }
        let error = hyper_error(head)?;
        tracing::debug!(status = error.status.as_u16(), "hyper refused a request; answering in JSON");
        self.error_answer = Some(Bytes::from(error.to_http1()));
        Some(head.len())
    }
}

/// The JSON error for a response head `bytes` that hyper wrote itself (see [`HyperIo`]).
fn hyper_error(bytes: &[u8]) -> Option<ApiError> {
    let head = std::str::from_utf8(bytes).ok()?;
    let status = head.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse::<http::StatusCode>().ok()?;
    let lowercase = head.to_ascii_lowercase();
    let alone = head.ends_with("\r\n\r\n") && head.find("\r\n\r\n") == Some(head.len() - 4);
    if !(status.is_client_error() || status.is_server_error())
        || !alone
        || !lowercase.contains("\r\ncontent-length: 0\r\n")
    {
        return None;
    }
    Some(match status {
        http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE | http::StatusCode::URI_TOO_LONG => ApiError::new(
            status,
            "request_head_too_large",
            format!("the request head is larger than {REQUEST_HEAD_BYTES_MAX} bytes or has too many headers"),
        ),
        _ => ApiError::new(
            status,
            "malformed_request",
            "the request is not valid HTTP/1.1 (its request line, a header, or its Content-Length or \
             Transfer-Encoding)",
        ),
    })
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HyperIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_error_answer(cx))?;
        if let Some(n) = self.replace_hyper_error(&[io::IoSlice::new(buf)]) {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_error_answer(cx))?;
        if let Some(n) = self.replace_hyper_error(bufs) {
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_error_answer(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_error_answer(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
