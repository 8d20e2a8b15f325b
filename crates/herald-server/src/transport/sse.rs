//! `GET /v1/stream`: Server-Sent Events.
//!
//! [`SseStream`] holds one client's whole stream: its [`Subscription`], one deadline for the next
//! keep-alive or the token's expiry, and the encoding of events into SSE frames. Two paths drive
//! it: [`stream`], the axum handler (a stream opened on a connection that already served other
//! requests), and [`crate::connection`]'s lean path (a stream that is the first request of its
//! connection, the usual case), which writes its chunks straight to the socket.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use herald_core::{ClientEvent, EndSignal, Subscription, Transport};

use crate::app::App;
use crate::auth::Subscriber;
use crate::error::{ApiError, ApiQuery};
use crate::guarded::{Registered, StreamEnd};
use crate::transport::{StreamQuery, open_subscription};

/// Bytes gathered into one write when several events are ready at once. Bounds the memory one
/// burst can take per connection; the rest goes in the next write.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

/// The response headers of a stream, after the status line.
pub(crate) const STREAM_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    // Tells nginx-style proxies not to buffer the stream.
    ("x-accel-buffering", "no"),
];

/// The axum handler: opens a stream and answers with it as the body.
///
/// On Herald's own connections the request carries the connection's [`StreamEnd`]: the stream
/// registers there for as long as it runs, so that once the hub ends it, the connection closes
/// within the close grace whatever its writes are doing (see [`crate::guarded`]).
/// Embedded in another server, there is none, and that server's own timeouts apply.
pub(crate) async fn stream(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
    stream_end: Option<Extension<Arc<StreamEnd>>>,
) -> Result<Response, ApiError> {
    let stream = SseStream::open(&app, &subscriber, &query, &headers).await?;
    let registered = stream_end.map(|Extension(stream_end)| {
        stream_end.set(stream.end_signal());
        Registered(stream_end)
    });
    let chunks = futures::stream::unfold((stream, registered), |(mut stream, registered)| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), (stream, registered)))
    });
    let mut response = Body::from_stream(chunks).into_response();
    for (name, value) in STREAM_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

/// One client's SSE stream, as chunks of bytes to write.
pub(crate) struct SseStream {
    subscription: Subscription,
    done: bool,
}

impl SseStream {
    /// Checks the resume point and opens the client's subscription.
    pub(crate) async fn open(
        app: &App,
        subscriber: &Subscriber,
        query: &StreamQuery,
        headers: &HeaderMap,
    ) -> Result<Self, ApiError> {
        let subscription = open_subscription(app, subscriber, query, headers, Transport::Sse).await?;
        Ok(Self { subscription, done: false })
    }

    /// Tells when the hub ends this stream, even while its connection is stuck in a write.
    pub(crate) fn end_signal(&self) -> EndSignal {
        self.subscription.end_signal()
    }

    /// The next bytes to send: one or more events, or a keep-alive comment. `None` once the
    /// stream has ended (after its `closed` event). Cancel-safe.
    pub(crate) async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        let event = self.subscription.next().await?;
        self.encode(&event, &mut out);
        // Drain what is ready without waiting, into the same write.
        while !self.done && out.len() < WRITE_BATCH_BYTES_MAX {
            match self.subscription.next().now_or_never() {
                Some(Some(event)) => self.encode(&event, &mut out),
                _ => break,
            }
        }
        Some(out.freeze())
    }

    fn encode(&mut self, event: &ClientEvent, out: &mut BytesMut) {
        match event {
            ClientEvent::Hello { info, last_seq, position, epoch, topics, positions } => {
                let mut data = serde_json::json!({
                    "user": info.user,
                    "session": info.session,
                    "client": info.client,
                    "last_seq": last_seq,
                    "epoch": epoch,
                });
                if !topics.is_empty() {
                    data["topics"] = serde_json::json!(topics);
                }
                if !positions.is_empty() {
                    data["positions"] = positions_json(positions);
                }
                // `id:` on hello sets the browser's Last-Event-ID, so a reconnect before any
                // notification still resumes from here instead of from "now".
                let id = self.id(*position);
                write_event(out, id, "hello", data.to_string().as_bytes());
            }
            ClientEvent::Notification(n) => {
                let id = n.seq.and_then(|seq| self.id(seq));
                write_event(out, id, "notification", n.json());
            }
            // No `id:`: inbox events are not replayed, and must not move the resume point.
            ClientEvent::Inbox(event) => write_event(out, None, "inbox", event.json()),
            // An ephemeral topic event has no `id:` either: it is not replayed. A durable one
            // moves its topic's position.
            ClientEvent::Topic(event) => {
                let id = event.tseq.and_then(|_| self.id(self.subscription.position()));
                write_event(out, id, "topic", event.json());
            }
            ClientEvent::Reset { last_seq } => {
                let data = serde_json::json!({ "last_seq": last_seq });
                let id = self.id(*last_seq);
                write_event(out, id, "reset", data.to_string().as_bytes());
            }
            ClientEvent::TopicReset { topic, last_tseq } => {
                let data = serde_json::json!({ "topic": topic, "last_tseq": last_tseq });
                let id = self.id(self.subscription.position());
                write_event(out, id, "topic_reset", data.to_string().as_bytes());
            }
            ClientEvent::KeepAlive => out.put_slice(b": keep-alive\n\n"),
            ClientEvent::Closed(reason) => {
                let data = serde_json::json!({ "reason": reason.as_str() });
                write_event(out, None, "closed", data.to_string().as_bytes());
                self.done = true;
            }
        }
    }
}

/// An event's `id:`: the seq alone while the tab has no topic positions (no allocation: the
/// common case), else the whole resume point.
enum EventId {
    Seq(u64),
    Resume(String),
}

impl SseStream {
    /// The `id:` of an event handed out with the stream at `seq`.
    fn id(&self, seq: u64) -> Option<EventId> {
        Some(match self.subscription.resume_id() {
            Some(resume) => EventId::Resume(resume),
            None => EventId::Seq(seq),
        })
    }
}

/// `{"topic": tseq, …}`.
pub(crate) fn positions_json(positions: &[(herald_core::Topic, u64)]) -> serde_json::Value {
    positions.iter().map(|(topic, tseq)| (topic.to_string(), serde_json::json!(tseq))).collect()
}

fn write_event(out: &mut BytesMut, id: Option<EventId>, event: &str, data: &[u8]) {
    let mut seq_digits = itoa::Buffer::new();
    let id: Option<&[u8]> = match &id {
        // itoa rather than `write!`: the formatting machinery was a quarter of this function.
        Some(EventId::Seq(seq)) => Some(seq_digits.format(*seq).as_bytes()),
        Some(EventId::Resume(resume)) => Some(resume.as_bytes()),
        None => None,
    };
    // The whole frame's room at once: growing the buffer piece by piece (it starts empty) was
    // most of this function's cost at full load.
    let id_len = id.map_or(0, |id| b"id: \n".len() + id.len());
    out.reserve(id_len + b"event: \ndata: \n\n".len() + event.len() + data.len());
    if let Some(id) = id {
        out.put_slice(b"id: ");
        out.put_slice(id);
        out.put_slice(b"\n");
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}
