//! The access log: one line per HTTP request, under the tracing target [`ACCESS_TARGET`] at
//! level `INFO`, with a request id that the answer echoes in `X-Request-Id`.
//!
//! Both doors log: the router's requests through [`log_requests`] (a middleware around every
//! route), and the streams the front door serves itself on the lean path
//! ([`crate::connection`]) through [`AccessLine`] directly. A stream (SSE, WebSocket) is logged
//! once, **when it opens** (its answer's head is ready), with the time that took: a stream
//! lives for hours, a line at its end would be missing for every stream open when the process
//! dies, and an idle stream's task would have to keep the request's id and clock for hours
//! (the lean path's task is 760 bytes on purpose). A long-poll is logged when it answers.
//!
//! What a line never holds: the query string (herald.js sends the subscriber token as
//! `?token=`), any header's value (`Authorization`, `Cookie`, `Last-Event-ID`), any body. The
//! path is kept (user and session ids appear in publisher routes' paths; they are not secrets).
//! An error's stable `code` is logged (it is one of ours, a constant), never its message.
//!
//! Off with `ServerSettings::access_log = false` (`herald serve --access-log off`): then no
//! line is formatted, no id is made and no `X-Request-Id` is sent. `RUST_LOG=herald::access=off`
//! silences the lines only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body::Body as _;

use crate::app::App;
use crate::caps::IpNet;

/// The tracing target of access lines: `RUST_LOG=info,herald::access=off` keeps every other
/// line and drops these.
pub const ACCESS_TARGET: &str = "herald::access";

/// The header a request id is taken from and echoed in.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id taken from a request's `X-Request-Id` (a UUID is 36 bytes, a W3C trace id
/// 32). Longer, empty, or with anything but visible ASCII: ignored, and an id is made instead,
/// so that what a client sends cannot bloat or forge log lines.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

/// The error code of an error answer, put in the response's extensions by
/// [`crate::ApiError`]'s `into_response`, for the access line.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// A request's id: the client's own `X-Request-Id` when it is sane (see
/// [`REQUEST_ID_BYTES_MAX`]), else one made here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The id of a request with `headers`.
    pub fn of(headers: &HeaderMap) -> Self {
        match headers.get(&REQUEST_ID_HEADER) {
            Some(value) if is_sane(value.as_bytes()) => Self(value.clone()),
            _ => Self::generate(),
        }
    }

    /// A new id: 16 hex digits, a random start for this process plus a counter, so unique in
    /// the process and, with overwhelming odds, across nodes and restarts. No lock, no
    /// allocation beyond the text itself.
    pub fn generate() -> Self {
        static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(rand::random::<u64>);
        let id = base.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        Self(HeaderValue::from_str(&format!("{id:016x}")).expect("hex digits are a header value"))
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII gets in (see `is_sane` and `generate`).
        self.0.to_str().expect("a request id is visible ASCII")
    }

    /// The header to answer with.
    pub fn header(&self) -> (HeaderName, HeaderValue) {
        (REQUEST_ID_HEADER, self.0.clone())
    }
}

fn is_sane(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= REQUEST_ID_BYTES_MAX
        && value.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// What one access line says. Built when the request arrives ([`AccessLine::start`]), written
/// when its answer's head is ready ([`AccessLine::finish`]).
#[derive(Debug)]
pub struct AccessLine {
    pub id: RequestId,
    started: Instant,
    /// `None` for a request whose head could not be parsed.
    method: Option<Method>,
    /// The path only: never the query (tokens travel in `?token=`).
    path: Option<String>,
    client: Option<IpAddr>,
}

impl AccessLine {
    /// A request from `peer` (if known) with this head; `trusted` proxies' `X-Forwarded-For`
    /// names the client, as for the caps.
    pub fn start(
        method: Option<&Method>,
        uri: Option<&http::Uri>,
        headers: &HeaderMap,
        peer: Option<SocketAddr>,
        trusted: &[IpNet],
    ) -> Self {
        Self {
            id: RequestId::of(headers),
            started: Instant::now(),
            method: method.cloned(),
            path: uri.map(|uri| uri.path().to_owned()),
            client: peer.map(|peer| crate::caps::client_ip(peer.ip(), headers, trusted)),
        }
    }

    /// Writes the line: the answer's `status`, its body's `bytes` when known, the error code
    /// when it is an error of ours.
    pub fn finish(self, status: http::StatusCode, bytes: Option<u64>, error: Option<&'static str>) {
        let duration_ms = (self.started.elapsed().as_micros() as f64) / 1000.0;
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.id.as_str(),
            method = self.method.as_ref().map_or("-", Method::as_str),
            path = self.path.as_deref().unwrap_or("-"),
            status = status.as_u16(),
            duration_ms,
            bytes,
            client = self.client.map(tracing::field::display),
            error,
            "request"
        );
    }
}

/// Middleware around every route (when the access log is on): the request id, echoed in
/// `X-Request-Id`, and the access line once the answer's head is ready.
pub(crate) async fn log_requests(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| *addr);
    let line = AccessLine::start(
        Some(request.method()),
        Some(request.uri()),
        request.headers(),
        peer,
        &app.settings.caps.trusted_proxies,
    );
    let mut response = next.run(request).await;
    let (name, value) = line.id.header();
    response.headers_mut().insert(name, value);
    let bytes = response.body().size_hint().exact();
    let error = response.extensions().get::<ErrorCode>().map(|code| code.0);
    line.finish(response.status(), bytes, error);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_request_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(&REQUEST_ID_HEADER, HeaderValue::from_static("abc-123_XYZ"));
        assert_eq!(RequestId::of(&headers).as_str(), "abc-123_XYZ");
        let too_long = "a".repeat(REQUEST_ID_BYTES_MAX + 1);
        for bad in ["", "has space", "tab\tinside", too_long.as_str()] {
            headers.insert(&REQUEST_ID_HEADER, HeaderValue::from_str(bad).unwrap());
            let id = RequestId::of(&headers);
            assert_ne!(id.as_str(), bad);
            assert_eq!(id.as_str().len(), 16, "made here: {id:?}");
        }
        headers.insert(&REQUEST_ID_HEADER, HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        assert_eq!(RequestId::of(&headers).as_str().len(), 16);
        let exactly = "b".repeat(REQUEST_ID_BYTES_MAX);
        headers.insert(&REQUEST_ID_HEADER, HeaderValue::from_str(&exactly).unwrap());
        assert_eq!(RequestId::of(&headers).as_str(), exactly);
    }

    #[test]
    fn made_ids_differ() {
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| RequestId::generate().as_str().to_owned()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
