//! `GET /v1/ws`: WebSocket.
//!
//! Same authentication, query parameters and events as `GET /v1/stream`, each event one JSON
//! text frame with an `"event"` member: `hello`, `notification`, `inbox`, `reset`, `closed`.
//! After `closed` the server sends a close frame with a code from [`close_code_of`] and ends the
//! connection.
//!
//! The connection is one task that waits on two things at once: the client's [`Subscription`]
//! and frames from the peer. It has no timer of its own: the hub's clock ([`herald_core::Hub::tick`])
//! closes it with `token_expired` when its token expires, and hands it a keep-alive after a
//! keep-alive interval without events, on which it sends a ping (and drops a peer that answered
//! nothing since the previous ping, [`DEAD_PEER_TIMEOUT`] at least). The peer has nothing to say:
//! its pongs (or any frame) only prove it is alive; a text frame is ignored, a binary or
//! oversized one closes the connection with a close code.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use herald_core::{ClientEvent, CloseReason, Subscription, Transport};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite;

use crate::app::App;
use crate::auth::Subscriber;
use crate::caps::HeldSlot;
use crate::error::{ApiError, ApiQuery};
use crate::transport::{StreamQuery, open_subscription};

/// A peer that sent nothing (not even the pong to a ping) for this long after a ping is taken
/// for dead and dropped, at the next keep-alive. Pings go out after every
/// [`crate::ServerSettings::keepalive_interval`] without events.
pub const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest frame and message accepted from a client. Clients have nothing to send but control
/// frames (at most 125 bytes of payload); anything larger is refused with
/// [`close_code::MESSAGE_TOO_BIG`] before it is buffered.
pub const CLIENT_MESSAGE_BYTES_MAX: usize = 4 * 1024;

/// Capacity of the read buffer, which tungstenite allocates up front for every connection and
/// keeps for its whole life. Its default is 128 KiB, sized for peers that stream data in; ours
/// only send pongs (6 bytes from a browser) and a close frame (at most 131), so 128 bytes do: a
/// larger frame is still read, in several reads, up to [`CLIENT_MESSAGE_BYTES_MAX`].
const READ_BUFFER_BYTES: usize = 128;

/// Frames are gathered in the write buffer until it holds this much, then written; every send
/// also flushes, so this only coalesces a burst. Unlike the read buffer it is not allocated up
/// front (tungstenite's default target is 128 KiB): it grows to the largest frame written and
/// keeps that capacity (tungstenite never shrinks it), so a connection that only ever got small
/// notifications keeps a few hundred bytes.
///
/// Measured (release build, 4,000 idle WebSockets): about 3.5 KiB of server memory per idle
/// connection in all (hub entry, subscription, task, socket and both buffers), against 2.2 KiB
/// for an idle SSE stream.
const WRITE_BUFFER_BYTES: usize = 2 * 1024;

/// How long a send may take. A peer that stops reading (its TCP window full) blocks our writes;
/// past this it is dropped, like a peer that stops answering pings.
const SEND_TIMEOUT: Duration = DEAD_PEER_TIMEOUT;

/// After our close frame, how long we wait for the peer's before dropping the connection.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The close codes Herald sends (RFC 6455, section 7.4.1).
pub mod close_code {
    /// `closed` with no reason to blame anyone (not used by the server yet; a peer's own
    /// close is answered with its code).
    pub const NORMAL: u16 = 1000;
    /// Malformed framing from the client (e.g. unmasked or reserved bits set).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: Herald only understands text.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// `closed` with `evicted`, `replaced`, `session_closed` or `token_expired`: the server
    /// ended this connection on purpose; reconnect only with a fresh token (`token_expired`)
    /// or not at all.
    pub const POLICY: u16 = 1008;
    /// A frame or message larger than [`super::CLIENT_MESSAGE_BYTES_MAX`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// `closed` with `error`: the server could not read the user's log.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// `closed` with `lagging` or `shutdown`: reconnect (with back-off) and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

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
/// `400`/`401` are plain HTTP answers), then upgrades.
pub async fn ws(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    ip_slot: HeldSlot,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            rejection.status(),
            "websocket_required",
            format!("`/v1/ws` takes a WebSocket handshake: {}", rejection.body_text()),
        )
    })?;
    let subscription = open_subscription(&app, &subscriber, &query, &headers, Transport::Ws).await?;
    let connection = Connection { subscription };
    let tracker = app.ws_connections.clone();
    Ok(upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // One frame beyond the target must always fit, and a notification may carry up to
        // `data_bytes_max` of data plus its envelope.
        .max_write_buffer_size(WRITE_BUFFER_BYTES + app.hub.limits().data_bytes_max + 16 * 1024)
        .max_frame_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_message_size(CLIENT_MESSAGE_BYTES_MAX)
        // Per-message compression is never negotiated: axum does not offer it.
        // The address's connection slot is held for as long as the WebSocket runs.
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                connection.run(socket).await;
                drop(ip_slot);
            })
        })
        .into_response())
}

struct Connection {
    subscription: Subscription,
}

/// How the loop ended, and so how the connection is closed.
enum End {
    /// Send a close frame with this code and reason, then wait for the peer's.
    Close(u16, &'static str),
    /// The peer sent a close frame: let tungstenite send the reply, then drop.
    PeerClosed,
    /// The peer is gone: drop.
    Drop,
}

impl Connection {
    async fn run(mut self, mut socket: WebSocket) {
        let end = self.serve(&mut socket).await;
        // Detach from the hub now: the close handshake below may take a while.
        drop(self.subscription);
        if let End::PeerClosed = end {
            // Reading again flushes the reply tungstenite queued, then reports the end.
            let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, socket.recv()).await;
        } else if let End::Close(code, reason) = end {
            let frame = CloseFrame { code, reason: Utf8Bytes::from_static(reason) };
            if send(&mut socket, Message::Close(Some(frame))).await.is_ok() {
                // Read until the peer's close frame (or anything ending the stream).
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, async {
                    while let Some(Ok(message)) = socket.recv().await {
                        if matches!(message, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }

    async fn serve(&mut self, socket: &mut WebSocket) -> End {
        // Set when a ping goes out with nothing heard since; cleared by any frame from the peer.
        let mut answer_due: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                event = self.subscription.next() => {
                    let event = match event {
                        None => return End::Drop,
                        Some(ClientEvent::KeepAlive) => {
                            let now = Instant::now();
                            if answer_due.is_some_and(|due| now >= due) {
                                tracing::debug!(client = %self.subscription.info().client, "WebSocket peer silent; dropping it");
                                return End::Drop;
                            }
                            if send(socket, Message::Ping(Bytes::new())).await.is_err() {
                                return End::Drop;
                            }
                            answer_due.get_or_insert(now + DEAD_PEER_TIMEOUT);
                            continue;
                        }
                        Some(event) => event,
                    };
                    if send(socket, Message::Text(encode(&event))).await.is_err() {
                        return End::Drop;
                    }
                    if let ClientEvent::Closed(reason) = event {
                        return End::Close(close_code_of(reason), reason.as_str());
                    }
                }
                incoming = socket.recv() => {
                    answer_due = None;
                    match incoming {
                        None => return End::Drop,
                        Some(Err(error)) => return end_of_error(error),
                        Some(Ok(Message::Close(_))) => return End::PeerClosed,
                        Some(Ok(Message::Binary(_))) => {
                            return End::Close(close_code::UNSUPPORTED_DATA, "binary frames are not accepted");
                        }
                        // Pongs and pings prove the peer alive (tungstenite answers pings);
                        // text frames are accepted and ignored: there is nothing to ask yet.
                        Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
            }
        }
    }
}

/// Sends one message (and flushes), giving up after [`SEND_TIMEOUT`].
async fn send(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// How to end after a read error: refuse what the peer sent with the fitting close code, or drop
/// a connection that is already broken.
fn end_of_error(error: axum::Error) -> End {
    use tungstenite::Error as E;
    use tungstenite::error::{CapacityError, ProtocolError};
    let inner = error.into_inner();
    let Some(error) = inner.downcast_ref::<tungstenite::Error>() else { return End::Drop };
    match error {
        E::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Close(close_code::MESSAGE_TOO_BIG, "frames from clients are at most 4 KiB")
        }
        E::Capacity(_) => End::Close(close_code::MESSAGE_TOO_BIG, "frame too large"),
        E::Utf8(_) => End::Close(close_code::INVALID_PAYLOAD, "text frames must be UTF-8"),
        // The connection reset or already closing: nothing to say to the peer.
        E::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => End::Drop,
        E::Protocol(_) => End::Close(close_code::PROTOCOL_ERROR, "malformed frame"),
        _ => End::Drop,
    }
}

/// One event as a JSON text frame.
fn encode(event: &ClientEvent) -> Utf8Bytes {
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
            hello.to_string().into()
        }
        ClientEvent::Notification(n) => {
            // `n.json()` is `{"seq":…,…}` (or `{"type":…}` when ephemeral), serialized once at
            // publish: splice the event name in after its `{` instead of serializing again.
            splice_event_name(br#"{"event":"notification","#, n.json())
        }
        // Serialized once too: `{"op":…,…}`.
        ClientEvent::Inbox(event) => splice_event_name(br#"{"event":"inbox","#, event.json()),
        // And `{"topic":…,…}`.
        ClientEvent::Topic(event) => splice_event_name(br#"{"event":"topic","#, event.json()),
        ClientEvent::Reset { last_seq } => {
            serde_json::json!({ "event": "reset", "last_seq": last_seq }).to_string().into()
        }
        ClientEvent::TopicReset { topic, last_tseq } => {
            serde_json::json!({ "event": "topic_reset", "topic": topic, "last_tseq": last_tseq })
                .to_string()
                .into()
        }
        ClientEvent::Closed(reason) => {
            serde_json::json!({ "event": "closed", "reason": reason.as_str() }).to_string().into()
        }
        // Not a frame: the connection sends a ping instead (see `Connection::serve`).
        ClientEvent::KeepAlive => Utf8Bytes::from_static(""),
    }
}

/// `prefix` (`{"event":"…",`) followed by `json` (an object) without its opening `{`.
fn splice_event_name(prefix: &[u8], json: &[u8]) -> Utf8Bytes {
    let mut frame = Vec::with_capacity(prefix.len() + json.len() - 1);
    frame.extend_from_slice(prefix);
    frame.extend_from_slice(&json[1..]);
    Utf8Bytes::try_from(frame).expect("event JSON is UTF-8")
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
