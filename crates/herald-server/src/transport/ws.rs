//! `GET /v1/ws`: WebSocket.
//!
//! Same authentication, query parameters and events as `GET /v1/stream`, each event one JSON
//! text frame with an `"event"` member: `hello`, `notification`, `inbox`, `topic`,
//! `topic_reset`, `reset`, `closed`. After `closed` the server sends a close frame with a code
//! from [`close_code_of`] and ends the connection.
//!
//! The connection is one task that waits on two things at once: the client's [`Subscription`]
//! and frames from the peer. It has no timer of its own: the hub's clock ([`herald_core::Hub::tick`])
//! closes it with `token_expired` when its token expires, and hands it a keep-alive after a
//! keep-alive interval without events, on which it sends a ping (and drops a peer that answered
//! nothing since the previous ping, [`DEAD_PEER_TIMEOUT`] at least). The peer has nothing to say:
//! its pongs (or any frame) only prove it is alive; a text frame is ignored, a binary or
//! oversized one closes the connection with a close code.
//!
//! **Why frames are written and read here, not by a WebSocket library.** An idle tab must cost
//! about what an idle SSE stream costs, and a tab that once got a large notification must not
//! keep a buffer of its size (issue 14). tokio-tungstenite 0.29, which axum's `WebSocketUpgrade`
//! runs, can do neither, whatever its `WebSocketConfig`: its write buffer is a `Vec` that grows to
//! the largest frame written and is never shrunk (nor reachable to shrink: after one 64 KiB
//! notification the tab holds 64 KiB for hours); its read buffer is allocated up front; its
//! stream allocates two waker proxies per connection; and axum's upgrade task held all of that
//! beside the connection's own state. Measured at `175c70b` (massif, 3,000 idle WebSockets): a
//! 2.8 KiB task and 4.4 KiB of heap per connection, against 1.9 KiB for an SSE stream. What
//! Herald needs of the protocol is small, so it is done here, on the upgraded connection:
//!
//! - server frames are unmasked and never fragmented: FIN and opcode, length, payload. A batch of
//!   ready events is encoded into one buffer, written, and freed, as SSE does; an idle
//!   connection holds no buffer at all;
//! - client frames are read by [`FrameReader`] a header, then a payload piece, at a time, into a
//!   few bytes of state: nothing is kept but a control frame's payload (at most 125 bytes)
//!   while it arrives, and text is checked for UTF-8 as it passes, never gathered;
//! - the handshake is [`Handshake`]: the checks axum's extractor made, and tungstenite's accept
//!   key.
//!
//! The framing itself (the reader, server frames, close codes) is in `ws/frames.rs`; this file
//! is the connection: the handshake, the task, events into frames, pings and the close.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};
use axum::response::Response;
use futures::FutureExt;
use herald_core::{ClientEvent, CloseReason, Subscription, Transport};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite;

use crate::app::App;
use crate::auth::Subscriber;
use crate::caps::HeldSlot;
use crate::error::{ApiError, ApiQuery};
use crate::transport::{StreamQuery, open_subscription};

mod frames;

pub use frames::{CLIENT_MESSAGE_BYTES_MAX, close_code};
use frames::{
    FRAME_HEADER_BYTES_MAX, FrameReader, Incoming, ReadEnd, close_frame, opcode, push_frame,
    push_frame_header,
};

/// A peer that sent nothing (not even the pong to a ping) for this long after a ping is taken
/// for dead and dropped, at the next keep-alive. Pings go out after every
/// [`crate::ServerSettings::keepalive_interval`] without events.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of events gathered into one write when several are ready at once (as SSE's
/// `WRITE_BATCH_BYTES_MAX`). Bounds the buffer one burst takes; the rest goes in the next write.
/// The buffer is freed after each write: an idle connection keeps none.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

/// How long a write may take. A peer that stops reading (its TCP window full) blocks our writes;
/// past this it is dropped, like a peer that stops answering pings. (On Herald's own
/// connections the socket's guard, `ServerSettings::send_timeout`, usually fires first; an
/// embedding app's server has none.)
const SEND_TIMEOUT: Duration = DEAD_PEER_TIMEOUT;

/// After our close frame, how long we wait for the peer's before dropping the connection; and
/// how long our answer to the peer's close frame may take to write.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The close code sent after a `closed` event with `reason`.
pub fn close_code_of(reason: CloseReason) -> u16 {
    match reason {
        CloseReason::Evicted
        | CloseReason::Replaced
        | CloseReason::SessionClosed
        | CloseReason::TokenExpired => close_code::POLICY,
        CloseReason::Lagging | CloseReason::Shutdown => close_code::TRY_AGAIN_LATER,
        CloseReason::Error => close_code::INTERNAL_ERROR,
    }
}

/// The handler: checks the token and resume point, opens the client's subscription (so that
/// `400`/`401` are plain HTTP answers), then answers `101` and hands the connection, once hyper
/// has upgraded it, to a task of its own.
pub async fn ws(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    ip_slot: HeldSlot,
    handshake: Handshake,
) -> Result<Response, ApiError> {
    let subscription = open_subscription(&app, &subscriber, &query, &headers, Transport::Ws).await?;
    let Handshake { accept_key, on_upgrade } = handshake;
    // Tracked, so that a shutdown waits for the connection to send `closed: shutdown`. The
    // address's connection slot is held for as long as the WebSocket runs.
    app.ws_connections.spawn(run(on_upgrade, subscription, ip_slot));
    // Per-message compression and subprotocols are never negotiated: no such header is sent.
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key)
        .body(Body::empty())
        .expect("a 101 answer from valid parts"))
}

/// An HTTP/1.1 WebSocket opening handshake (RFC 6455, section 4.2.1): its answer's accept key
/// and the upgrade to come. Refused as 400 `websocket_required` (405 for another method than
/// `GET`, 426 for a connection hyper cannot upgrade), with the reason in the message. Herald does
/// not offer WebSocket over HTTP/2 (RFC 8441): such a request is not a handshake.
pub struct Handshake {
    accept_key: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for Handshake {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let refuse = |status: StatusCode, why: &str| {
            ApiError::new(
                status,
                "websocket_required",
                format!("`/v1/ws` takes a WebSocket handshake: {why}"),
            )
        };
        if parts.version > Version::HTTP_11 {
            return Err(refuse(StatusCode::BAD_REQUEST, "WebSocket is offered over HTTP/1.1 only"));
        }
        if parts.method != Method::GET {
            return Err(refuse(StatusCode::METHOD_NOT_ALLOWED, "the method must be GET"));
        }
        let header_text = |name: header::HeaderName| {
            parts.headers.get(name).and_then(|value| value.to_str().ok()).unwrap_or_default()
        };
        if !header_text(header::CONNECTION)
            .split(',')
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
        {
            return Err(refuse(StatusCode::BAD_REQUEST, "the Connection header does not include `upgrade`"));
        }
        if !header_text(header::UPGRADE).trim().eq_ignore_ascii_case("websocket") {
            return Err(refuse(StatusCode::BAD_REQUEST, "the Upgrade header is not `websocket`"));
        }
        if header_text(header::SEC_WEBSOCKET_VERSION).trim() != "13" {
            return Err(refuse(StatusCode::BAD_REQUEST, "the Sec-WebSocket-Version header is not 13"));
        }
        let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
            return Err(refuse(StatusCode::BAD_REQUEST, "the Sec-WebSocket-Key header is missing"));
        };
        let accept_key = HeaderValue::try_from(tungstenite::handshake::derive_accept_key(key.as_bytes()))
            .expect("base64 is a valid header value");
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(refuse(StatusCode::UPGRADE_REQUIRED, "this connection cannot be upgraded"));
        };
        Ok(Self { accept_key, on_upgrade })
    }
}

/// The connection's task: waits for hyper to hand over the upgraded connection, serves the
/// stream, closes. A plain `fn` returning an `async move` block rather than an `async fn`, which
/// would keep a copy of each argument beside the local it moves into: every idle tab's task
/// would be larger by them.
#[allow(clippy::manual_async_fn)] // On purpose: see above.
fn run(
    on_upgrade: OnUpgrade,
    mut subscription: Subscription,
    ip_slot: HeldSlot,
) -> impl Future<Output = ()> + Send {
    async move {
        // Captured (not moved again, which would copy it): released when the task ends.
        let _ip_slot = &ip_slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "the WebSocket upgrade failed");
                return;
            }
        };
        // hyper hands its read buffer over with the connection; the first read drops it (or,
        // if the client sent frames right after its handshake, the read that takes the last
        // of them): an idle connection keeps none of it.
        let mut peer = Peer { io: TokioIo::new(upgraded), reader: FrameReader::default() };
        let end = serve(&mut peer, &mut subscription).await;
        // Detach from the hub now: the close handshake below may take a while.
        drop(subscription);
        peer.close(end).await;
    }
}

/// How the stream ended, and so how the connection is closed.
enum End {
    /// Send a close frame with this code and reason, then wait for the peer's.
    Close(u16, &'static str),
    /// The peer sent a close frame: send this one (its answer) back, then drop.
    PeerClosed(Vec<u8>),
    /// The peer is gone, or silent: drop.
    Drop,
}

/// Sends events and pings until the stream ends, and reads what the peer sends meanwhile.
async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(
    peer: &mut Peer<IO>,
    subscription: &mut Subscription,
) -> End {
    // Set when a ping goes out with nothing heard since; cleared by any frame from the peer.
    let mut answer_due: Option<Instant> = None;
    loop {
        // What to write, and how the stream ends once it is written, if it does. (The work is
        // done by plain functions: what an `await` holds is in every idle connection's task.)
        let (frames, then) = tokio::select! {
            biased;
            event = subscription.next() => {
                let Some(event) = event else { return End::Drop };
                match frames_of(subscription, event, &mut answer_due) {
                    Ok(frames) => frames,
                    Err(end) => return end,
                }
            }
            incoming = peer.next_frame() => {
                answer_due = None;
                match incoming {
                    Ok(Incoming::Ping(payload)) => {
                        let mut pong = Vec::new();
                        push_frame(&mut pong, opcode::PONG, &payload);
                        (pong, None)
                    }
                    // Pongs prove the peer alive; text is accepted and ignored: there is
                    // nothing to ask yet.
                    Ok(Incoming::Alive) => continue,
                    Ok(Incoming::Close(answer)) => return End::PeerClosed(answer),
                    Err(ReadEnd::Gone) => return End::Drop,
                    Err(ReadEnd::Refused(refusal)) => return End::Close(refusal.close_code(), refusal.reason()),
                }
            }
        };
        if peer.write(&frames, SEND_TIMEOUT).await.is_err() {
            return End::Drop;
        }
        if let Some(end) = then {
            return end;
        }
    }
}

/// `event` and the events ready after it, as the frames of one write (a keep-alive is a ping),
/// with the end of the stream if they hold its `closed`. `Err` ends the stream at once: the
/// peer has not answered the last ping.
fn frames_of(
    subscription: &mut Subscription,
    event: ClientEvent,
    answer_due: &mut Option<Instant>,
) -> Result<(Vec<u8>, Option<End>), End> {
    let mut frames = Vec::new();
    let mut next = Some(event);
    while let Some(event) = next.take() {
        match event {
            ClientEvent::KeepAlive => {
                let now = Instant::now();
                if answer_due.is_some_and(|due| now >= due) {
                    tracing::debug!(client = %subscription.info().client, "WebSocket peer silent; dropping it");
                    return Err(End::Drop);
                }
                push_frame(&mut frames, opcode::PING, &[]);
                answer_due.get_or_insert(now + DEAD_PEER_TIMEOUT);
            }
            ClientEvent::Closed(reason) => {
                push_event(&mut frames, &event);
                return Ok((frames, Some(End::Close(close_code_of(reason), reason.as_str()))));
            }
            event => push_event(&mut frames, &event),
        }
        if frames.len() < WRITE_BATCH_BYTES_MAX {
            next = subscription.next().now_or_never().flatten();
        }
    }
    Ok((frames, None))
}

/// The upgraded connection and what was read of the frame arriving on it.
struct Peer<IO> {
    io: IO,
    reader: FrameReader,
}

/// A write failed or timed out: the peer is gone, or stopped reading.
#[derive(Debug)]
struct WriteFailed;

impl<IO: AsyncRead + AsyncWrite + Unpin> Peer<IO> {
    /// Writes `bytes` (whole frames) and flushes them (TLS holds records back until a flush),
    /// giving up after `within`.
    ///
    /// Its timer is boxed, and made only once the write has to wait: an idle connection's task
    /// is as large as its largest state, and a `tokio::time::timeout` held inline here made
    /// every idle WebSocket's task larger by its timer (the whole write future was 216 B; most
    /// writes never wait).
    fn write<'a>(
        &'a mut self,
        bytes: &'a [u8],
        within: Duration,
    ) -> impl Future<Output = Result<(), WriteFailed>> + 'a {
        let mut written = 0;
        let mut give_up: Option<Pin<Box<Sleep>>> = None;
        std::future::poll_fn(move |cx| {
            loop {
                let progress = if written < bytes.len() {
                    Pin::new(&mut self.io).poll_write(cx, &bytes[written..])
                } else {
                    Pin::new(&mut self.io).poll_flush(cx).map_ok(|()| 0)
                };
                match progress {
                    Poll::Ready(Ok(0)) if written < bytes.len() => return Poll::Ready(Err(WriteFailed)),
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => written += n,
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(WriteFailed)),
                    Poll::Pending => break,
                }
            }
            let give_up = give_up.get_or_insert_with(|| Box::pin(tokio::time::sleep(within)));
            give_up.as_mut().poll(cx).map(|()| Err(WriteFailed))
        })
    }

    /// The next whole frame from the peer. Cancel-safe: what was read is kept in `reader`.
    fn next_frame(&mut self) -> impl Future<Output = Result<Incoming, ReadEnd>> + '_ {
        std::future::poll_fn(|cx| self.reader.poll_frame(&mut self.io, cx))
    }

    /// Ends the connection as `end` says; the connection is dropped after.
    async fn close(&mut self, end: End) {
        match end {
            End::Drop => {}
            End::PeerClosed(answer) => {
                let _ = self.write(&answer, CLOSE_HANDSHAKE_TIMEOUT).await;
            }
            End::Close(code, reason) => {
                if self.write(&close_frame(code, reason), SEND_TIMEOUT).await.is_ok() {
                    // Read until the peer's close frame (or anything ending the stream). Its
                    // pings are no longer answered (RFC 6455, section 5.5.1). Boxed, like
                    // `write`'s timer: held inline, the timer would enlarge every idle task.
                    let _ = Box::pin(tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                        while let Ok(incoming) = self.next_frame().await {
                            if let Incoming::Close(_) = incoming {
                                break;
                            }
                        }
                    }))
                    .await;
                }
            }
        }
    }
}

/// Appends one event as a JSON text frame. Not for `KeepAlive`, which is a ping.
fn push_event(out: &mut Vec<u8>, event: &ClientEvent) {
    match event {
        // `n.json()` is `{"seq":…,…}` (or `{"type":…}` when ephemeral), serialized once at
        // publish: the event name is spliced in after its `{` instead of serializing again.
        ClientEvent::Notification(n) => push_spliced(out, br#"{"event":"notification","#, n.json()),
        // Serialized once too: `{"op":…,…}`.
        ClientEvent::Inbox(event) => push_spliced(out, br#"{"event":"inbox","#, event.json()),
        // And `{"topic":…,…}`.
        ClientEvent::Topic(event) => push_spliced(out, br#"{"event":"topic","#, event.json()),
        other => push_frame(out, opcode::TEXT, event_json(other).as_bytes()),
    }
}

/// A text frame of `prefix` (`{"event":"…",`) followed by `json` (an object) without its
/// opening `{`.
fn push_spliced(out: &mut Vec<u8>, prefix: &[u8], json: &[u8]) {
    let len = prefix.len() + json.len() - 1;
    out.reserve(FRAME_HEADER_BYTES_MAX + len);
    push_frame_header(out, opcode::TEXT, len);
    out.extend_from_slice(prefix);
    out.extend_from_slice(&json[1..]);
}

/// The JSON of an event that is not serialized ahead (`hello`, `reset`, `topic_reset`, `closed`).
fn event_json(event: &ClientEvent) -> String {
    match event {
        ClientEvent::Hello { info, last_seq, epoch, topics, positions, .. } => {
            let mut hello = serde_json::json!({
                "event": "hello",
                "user": info.user,
                "session": info.session,
                "client": info.client,
                "last_seq": last_seq,
                "epoch": epoch,
            });
            if !topics.is_empty() {
                hello["topics"] = serde_json::json!(topics);
            }
            if !positions.is_empty() {
                hello["positions"] = super::sse::positions_json(positions);
            }
            hello.to_string()
        }
        ClientEvent::Reset { last_seq } => {
            serde_json::json!({ "event": "reset", "last_seq": last_seq }).to_string()
        }
        ClientEvent::TopicReset { topic, last_tseq } => {
            serde_json::json!({ "event": "topic_reset", "topic": topic, "last_tseq": last_tseq }).to_string()
        }
        ClientEvent::Closed(reason) => {
            serde_json::json!({ "event": "closed", "reason": reason.as_str() }).to_string()
        }
        ClientEvent::Notification(_)
        | ClientEvent::Inbox(_)
        | ClientEvent::Topic(_)
        | ClientEvent::KeepAlive => {
            unreachable!("spliced or sent as a ping by `push_event`'s callers")
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_a_close_code() {
        for (reason, code) in [
            (CloseReason::Evicted, 1008),
            (CloseReason::Replaced, 1008),
            (CloseReason::SessionClosed, 1008),
            (CloseReason::TokenExpired, 1008),
            (CloseReason::Lagging, 1013),
            (CloseReason::Shutdown, 1013),
            (CloseReason::Error, 1011),
        ] {
            assert_eq!(close_code_of(reason), code, "{reason:?}");
        }
    }
}
