//! `GET /v1/stream`: Server-Sent Events.
//!
//! The response body is a hand-written stream over the client's [`Subscription`] rather than
//! axum's `Sse` helper, so that one state value holds the whole connection (subscription, one
//! timer for keep-alive and token expiry) and several ready events go out in one write.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use herald_core::subscription::SubscribeRequest;
use herald_core::{ClientEvent, CloseReason, Subscription, Transport};
use tokio::time::Instant;

use crate::app::App;
use crate::auth::Subscriber;
use crate::error::{ApiError, ApiQuery};
use crate::transport::{StreamQuery, resume_point};

/// Bytes gathered into one write when several events are ready at once. Bounds the memory one
/// burst can take per connection; the rest goes in the next write.
const WRITE_BATCH_BYTES_MAX: usize = 64 * 1024;

/// Opens a stream: `hello`, then `reset` if needed, replay, live notifications, keep-alives,
/// and `closed` before the server ends it.
pub async fn stream(
    State(app): State<Arc<App>>,
    subscriber: Subscriber,
    ApiQuery(query): ApiQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let resume_after = resume_point(query.last_event_id.as_deref(), &headers)?;
    let subscription = Subscription::open(
        &app.hub,
        &app.store,
        SubscribeRequest {
            user: &subscriber.user,
            session: &subscriber.session,
            client: query.client.as_deref(),
            transport: Transport::Sse,
            resume_after,
        },
    )
    .await?;
    let keepalive = app.settings.keepalive_interval;
    let state = StreamState {
        subscription,
        keepalive,
        next_keepalive: Instant::now() + keepalive,
        token_expires_at: instant_of_unix(subscriber.expires_at),
        done: false,
    };
    let body = Body::from_stream(futures::stream::unfold(state, StreamState::next_chunk));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The `Instant` at which a Unix time (seconds) arrives.
pub(crate) fn instant_of_unix(unix_secs: u64) -> Instant {
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let remaining = Duration::from_secs(unix_secs).saturating_sub(now_unix);
    // Far-future tokens: cap so the Instant arithmetic cannot overflow (about 30 years).
    Instant::now() + remaining.min(Duration::from_secs(1 << 30))
}

struct StreamState {
    subscription: Subscription,
    keepalive: Duration,
    next_keepalive: Instant,
    token_expires_at: Instant,
    done: bool,
}

impl StreamState {
    async fn next_chunk(mut self) -> Option<(Result<Bytes, Infallible>, Self)> {
        if self.done {
            return None;
        }
        let mut out = BytesMut::new();
        tokio::select! {
            biased;
            event = self.subscription.next() => {
                let event = event?;
                self.encode(&event, &mut out);
                // Drain what is ready without waiting, into the same write.
                while !self.done && out.len() < WRITE_BATCH_BYTES_MAX {
                    match self.subscription.next().now_or_never() {
                        Some(Some(event)) => self.encode(&event, &mut out),
                        _ => break,
                    }
                }
            }
            () = tokio::time::sleep_until(self.token_expires_at) => {
                self.subscription.close(CloseReason::TokenExpired);
                let event = self.subscription.next().await?;
                self.encode(&event, &mut out);
            }
            () = tokio::time::sleep_until(self.next_keepalive) => {
                out.put_slice(b": keep-alive\n\n");
            }
        }
        self.next_keepalive = Instant::now() + self.keepalive;
        Some((Ok(out.freeze()), self))
    }

    fn encode(&mut self, event: &ClientEvent, out: &mut BytesMut) {
        match event {
            ClientEvent::Hello { info, last_seq, position } => {
                let data = serde_json::json!({
                    "user": info.user,
                    "session": info.session,
                    "client": info.client,
                    "last_seq": last_seq,
                });
                // `id:` on hello sets the browser's Last-Event-ID, so a reconnect before any
                // notification still resumes from here instead of from "now".
                write_event(out, Some(*position), "hello", data.to_string().as_bytes());
            }
            ClientEvent::Notification(n) => write_event(out, n.seq, "notification", n.json()),
            ClientEvent::Reset { last_seq } => {
                let data = serde_json::json!({ "last_seq": last_seq });
                write_event(out, Some(*last_seq), "reset", data.to_string().as_bytes());
            }
            ClientEvent::Closed(reason) => {
                let data = serde_json::json!({ "reason": reason.as_str() });
                write_event(out, None, "closed", data.to_string().as_bytes());
                self.done = true;
            }
        }
    }
}

fn write_event(out: &mut BytesMut, id: Option<u64>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        // Writing to a BytesMut cannot fail.
        let _ = writeln!(out, "id: {id}");
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}
