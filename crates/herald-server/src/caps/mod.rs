//! Caps against hostile load: what one client, one address or one user may take of a node, so
//! that a flood from one of them leaves everyone else served.
//!
//! - **Connections, node-wide** ([`Limiter::admit_connection`]): at most
//!   [`Caps::connections_max`] open at once, counted from accept to close (streams, WebSockets
//!   and short requests alike). One more is answered `503 overloaded` with `Retry-After` right
//!   at accept, without reading its request, and closed: the node stops well before the
//!   open-files limit, where `accept` itself would fail and nothing could be answered at all.
//! - **Per client address, on subscriber routes** ([`Limiter::admit_subscriber`]): a request
//!   rate with a burst (every `/v1/stream`, `/v1/ws`, `/v1/poll` and `/v1/inbox…` request) and
//!   a number of open streams, WebSockets and polls. Over them: `429` with `Retry-After`.
//!   Behind a proxy the address comes from `X-Forwarded-For`, and only from a trusted proxy
//!   (see [`client_ip`]).
//! - **Per user, on inbox changes** ([`Limiter::admit_inbox_write`]): marks and deletes through
//!   a subscriber token, at a rate with a burst; each is a store write, which every publish
//!   waits behind. The publisher API (API key) is not limited.
//!
//! Publisher routes (API key) have no per-address limit: the publisher is the app's own backend.
//! The keyed state is bounded ([`rate::KeyedLimiter`]).

mod client_ip;
pub mod rate;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::UserId;
use http::{HeaderMap, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use client_ip::{InvalidIpNet, IpNet, client_ip, ip_key};
use rate::{KeyedLimiter, OpenSlot, Rate, Refusal};

use crate::app::App;
use crate::error::ApiError;

/// `Retry-After` of a connection turned away at the node's cap, and of a stream refused for
/// the address's open connections: a slot frees only when another client leaves.
pub const CONNECTIONS_RETRY_AFTER_SECS: u64 = 5;
/// Client addresses (IPv4, or IPv6 /64) tracked at once. At the bound, idle ones are forgotten,
/// then those without open connections (see [`rate::KeyedLimiter`]); if all hold connections,
/// a new address gets `503 overloaded`. About 64 bytes each: 4 MiB at most.
pub const IP_ENTRIES_MAX: usize = 65_536;
/// Users tracked at once for the inbox write rate, keyed by a 64-bit hash of the user id; at
/// the bound, the users whose buckets refill soonest are forgotten (and get a full burst).
pub const INBOX_WRITERS_MAX: usize = 65_536;
/// Open files kept for everything but client connections when the connection cap is derived
/// from the open-files limit: the store (SQLite's database, WAL and shared memory, for the
/// writer and each reader), the listener, the runtime's own descriptors, logs.
pub const FDS_RESERVED: u64 = 256;
/// The connection cap when the open-files limit cannot be read.
pub const CONNECTIONS_MAX_FALLBACK: usize = 10_000;
/// Connections turned away at the cap that are kept open at once, for at most
/// [`TURN_AWAY_LINGER`], so that the client reads its 503 (closing a socket with its request
/// unread resets it, and the reset can destroy the answer). Beyond this many, a turned-away
/// connection is answered and closed at once.
pub const TURNED_AWAY_LINGERING_MAX: usize = 64;
/// How long a turned-away connection is kept for its client to read the 503 and close.
pub const TURN_AWAY_LINGER: Duration = Duration::from_secs(2);
/// Bytes read and thrown away from a turned-away connection before it is closed anyway.
const TURN_AWAY_DISCARD_BYTES_MAX: usize = 64 * 1024;

/// How long an answer `429` waits before it is sent. HTTP/1.1 answers a connection's requests
/// in order, so a client that ignores `429` and asks again at once is slowed to one request per
/// connection per this long, and its refusals stop taking the CPU that everyone else's requests
/// need. Measured (crates/herald/tests/flood.rs, release, 2 cores): 16 connections flooding
/// inbox marks were refused about 17,000 times a second without it, which doubled another user's
/// publish p99. Every 429's `Retry-After` is made to count from the answer, so it is this delay
/// less than the wait at the refusal (0 when the client may retry as soon as it reads it).
pub const REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// The caps a server enforces (`herald serve` options; see the README's table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// Connections open at once on this node. `None`: the open-files limit minus
    /// [`FDS_RESERVED`]. `Some(0)`: no cap.
    pub connections_max: Option<usize>,
    /// Streams, WebSockets and polls open at once per client address. 0: no limit.
    pub ip_connections_max: u32,
    /// Subscriber requests per second per client address, sustained. 0: no limit.
    pub ip_requests_per_sec: u32,
    /// Subscriber requests per client address at once after a quiet period.
    pub ip_requests_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client. Empty: the header is ignored.
    pub trusted_proxies: Vec<IpNet>,
    /// Inbox changes (marks, deletes) per second per user with a subscriber token. 0: no limit.
    pub inbox_writes_per_sec: u32,
    /// Inbox changes per user at once after a quiet period.
    pub inbox_writes_burst: u32,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            connections_max: None,
            // Enough for a few hundred users behind one NAT, each with a few tabs.
            ip_connections_max: 1_000,
            ip_requests_per_sec: 100,
            ip_requests_burst: 200,
            trusted_proxies: Vec::new(),
            // A person marks a few things a second at most; a burst covers a "mark all" script.
            inbox_writes_per_sec: 20,
            inbox_writes_burst: 100,
        }
    }
}

/// What a subscriber request holds while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A short request: only the rate counts.
    Request,
    /// A stream, WebSocket or poll: the rate, and one of the address's open connections.
    Connection,
}

/// A connection of a client address, counted until dropped.
pub type IpSlot = OpenSlot<u128>;

/// The state behind [`Caps`]: the node's open connections, the per-address and per-user tables.
#[derive(Debug)]
pub struct Limiter {
    connections_max: usize,
    connections_open: Arc<AtomicUsize>,
    turned_away_lingering: Arc<AtomicUsize>,
    trusted_proxies: Vec<IpNet>,
    ips: Arc<KeyedLimiter<u128>>,
    inbox_writers: Arc<KeyedLimiter<u64>>,
    user_hasher: RandomState,
}

impl Limiter {
    pub fn new(caps: &Caps) -> Self {
        let connections_max = match caps.connections_max {
            None => connections_max_default(),
            Some(0) => usize::MAX,
            Some(max) => max,
        };
        Self {
            connections_max,
            connections_open: Arc::new(AtomicUsize::new(0)),
            turned_away_lingering: Arc::new(AtomicUsize::new(0)),
            trusted_proxies: caps.trusted_proxies.clone(),
            ips: KeyedLimiter::new(
                Rate::new(caps.ip_requests_per_sec, caps.ip_requests_burst),
                caps.ip_connections_max,
                IP_ENTRIES_MAX,
            ),
            inbox_writers: KeyedLimiter::new(
                Rate::new(caps.inbox_writes_per_sec, caps.inbox_writes_burst),
                0,
                INBOX_WRITERS_MAX,
            ),
            user_hasher: RandomState::new(),
        }
    }

    /// The node's connection cap in effect (`usize::MAX`: none).
    pub fn connections_max(&self) -> usize {
        self.connections_max
    }

    /// Connections open now (each from accept to close).
    pub fn connections_open(&self) -> usize {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Counts a new connection, or `None` if the node is at its cap.
    pub fn admit_connection(&self) -> Option<ConnectionPermit> {
        let open = self.connections_open.fetch_add(1, Ordering::Relaxed);
        if open >= self.connections_max {
            self.connections_open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(ConnectionPermit(self.connections_open.clone()))
    }

    /// Answers a connection over the cap with `503 overloaded` and closes it, without parsing
    /// its request. The answer waits for the request's first bytes (an HTTP client takes an
    /// answer before its request for a broken connection) and the connection lingers until the
    /// client closes (closing with its request unread would reset the connection, and the
    /// reset can destroy the answer), all within [`TURN_AWAY_LINGER`] and for at most
    /// [`TURNED_AWAY_LINGERING_MAX`] connections at once; beyond them, the answer is written
    /// if the socket takes it at once and the connection is dropped.
    pub fn turn_away(&self, socket: TcpStream) {
        let lingering = self.turned_away_lingering.fetch_add(1, Ordering::Relaxed);
        if lingering >= TURNED_AWAY_LINGERING_MAX {
            self.turned_away_lingering.fetch_sub(1, Ordering::Relaxed);
            let _ = socket.try_write(&OVERLOADED_RESPONSE);
            return;
        }
        let counter = self.turned_away_lingering.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TURN_AWAY_LINGER, answer_and_linger(socket)).await;
            counter.fetch_sub(1, Ordering::Relaxed);
        });
    }

    /// Counts a subscriber request from `peer` (the client address: see [`client_ip`]).
    /// For [`Admission::Connection`], the returned slot counts the connection until dropped
    /// (`None` if connections are not counted).
    pub fn admit_subscriber(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        admission: Admission,
    ) -> Result<Option<IpSlot>, ApiError> {
        if !self.ips.is_active() {
            return Ok(None);
        }
        let key = ip_key(client_ip(peer, headers, &self.trusted_proxies));
        let admitted = match admission {
            Admission::Request => self.ips.request(key).map(|()| None),
            Admission::Connection => self.ips.open(key),
        };
        admitted.map_err(|refusal| match refusal {
            Refusal::Rate { retry_after } => rate_limited(
                retry_after,
                "too many requests from this address; retry after the time in `Retry-After`",
            ),
            Refusal::Connections => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_connections",
                "too many streams, WebSockets and polls are open from this address",
            )
            .with_retry_after(CONNECTIONS_RETRY_AFTER_SECS.saturating_sub(REFUSAL_DELAY.as_secs())),
            Refusal::TableFull => overloaded(),
        })
    }

    /// Counts an inbox change (mark, delete) by `user` through a subscriber token.
    pub fn admit_inbox_write(&self, user: &UserId) -> Result<(), ApiError> {
        let key = self.user_hasher.hash_one(user.as_str());
        self.inbox_writers.request(key).map_err(|refusal| match refusal {
            Refusal::Rate { retry_after } => rate_limited(
                retry_after,
                "too many inbox changes by this user; retry after the time in `Retry-After`",
            ),
            Refusal::Connections | Refusal::TableFull => overloaded(),
        })
    }

    /// Forgets idle entries of the keyed tables.
    pub fn sweep(&self) {
        self.ips.sweep();
        self.inbox_writers.sweep();
    }
}

/// A `429 rate_limited` whose `Retry-After` counts from the answer, sent [`REFUSAL_DELAY`] after
/// the refusal: the wait left then, in whole seconds rounded up (0: at once).
fn rate_limited(retry_after: Duration, message: &str) -> ApiError {
    let left = retry_after.saturating_sub(REFUSAL_DELAY);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).with_retry_after(secs)
}

fn overloaded() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "the server is at its connection cap")
        .with_retry_after(CONNECTIONS_RETRY_AFTER_SECS)
}

/// The whole answer to a connection over the cap, built once.
static OVERLOADED_RESPONSE: LazyLock<Vec<u8>> = LazyLock::new(|| overloaded().to_http1());

/// Waits for the request to begin, answers `503 overloaded`, ends our side, then reads (and
/// throws away) until the client closes.
async fn answer_and_linger(mut socket: TcpStream) {
    let mut discard = [0u8; 512];
    if !matches!(socket.read(&mut discard).await, Ok(n) if n > 0) {
        return;
    }
    if socket.write_all(&OVERLOADED_RESPONSE).await.is_err() || socket.shutdown().await.is_err() {
        return;
    }
    let mut read = 0;
    while read < TURN_AWAY_DISCARD_BYTES_MAX {
        match socket.read(&mut discard).await {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// A connection counted against the node's cap until dropped.
#[derive(Debug)]
pub struct ConnectionPermit(Arc<AtomicUsize>);

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The node's default connection cap: the open-files limit minus [`FDS_RESERVED`] (at least
/// half the limit).
pub fn connections_max_default() -> usize {
    match open_files_limit() {
        Some(limit) => {
            usize::try_from(limit.saturating_sub(FDS_RESERVED).max(limit / 2)).unwrap_or(usize::MAX)
        }
        None => CONNECTIONS_MAX_FALLBACK,
    }
}

/// The soft open-files limit (`RLIMIT_NOFILE`), if there is one.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` on Linux, not on every unix.
#[allow(unsafe_code)] // `getrlimit`: libc has no safe wrapper.
fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` through a pointer to a live, owned one.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur as u64)
}

#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// Raises the soft open-files limit to the hard one, as far as the system allows; returns the
/// limit before and after if it changed. `herald serve` calls it once at start, before the
/// connection cap is derived from the limit; a library embedding the server leaves the
/// process's limits to its owner.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` on Linux, not on every unix.
#[allow(unsafe_code)] // `getrlimit` and `setrlimit`: libc has no safe wrapper.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: as in `open_files_limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 || limit.rlim_cur >= limit.rlim_max {
        return None;
    }
    let before = limit.rlim_cur;
    let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
    // SAFETY: `setrlimit` reads one `rlimit` through a pointer to a live one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return None; // Not allowed (macOS caps it below an infinite hard limit): keep the old one.
    }
    Some((before as u64, limit.rlim_max as u64))
}

#[cfg(not(unix))]
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    None
}

/// The peer address of a request, when the server knows it (`herald serve` and [`crate::start`]
/// put it in; an app that mounts [`crate::Herald::router`] itself can with axum's
/// `into_make_service_with_connect_info::<SocketAddr>()`; without it, no per-address cap).
fn peer_of(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(addr)| addr.ip())
}

/// Middleware of every route: a `429` is answered after [`REFUSAL_DELAY`] (its `Retry-After`
/// was made to count from then).
pub(crate) async fn slow_refusals(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if response.status() == StatusCode::TOO_MANY_REQUESTS {
        tokio::time::sleep(REFUSAL_DELAY).await;
    }
    response
}

/// Middleware of the short subscriber routes (`/v1/inbox…`): the address's request rate.
pub(crate) async fn limit_requests(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if let Some(peer) = peer_of(&request)
        && let Err(error) = app.limiter.admit_subscriber(peer, request.headers(), Admission::Request)
    {
        return error.into_response();
    }
    next.run(request).await
}

/// Middleware of the long subscriber routes (`/v1/stream`, `/v1/ws`, `/v1/poll`): the address's
/// request rate and open connections. The slot is held by the response body (a stream lasts as
/// long as its body) and handed to the handler as [`HeldSlot`] (a WebSocket outlives its
/// response).
pub(crate) async fn limit_connections(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(peer) = peer_of(&request) else { return next.run(request).await };
    let slot = match app.limiter.admit_subscriber(peer, request.headers(), Admission::Connection) {
        Ok(Some(slot)) => Arc::new(slot),
        Ok(None) => return next.run(request).await,
        Err(error) => return error.into_response(),
    };
    request.extensions_mut().insert(HeldSlot { _slot: Some(slot.clone()) });
    next.run(request).await.map(|body| Body::new(Holding { body, _slot: slot }))
}

/// The address's connection slot of a request, for a handler whose connection outlives its
/// response (a WebSocket): keep it for as long as the connection. Empty when not counted.
#[derive(Debug, Clone, Default)]
pub struct HeldSlot {
    _slot: Option<Arc<IpSlot>>,
}

impl<S: Send + Sync> FromRequestParts<S> for HeldSlot {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.remove::<HeldSlot>().unwrap_or_default())
    }
}

/// A response body that holds a connection slot until it is dropped.
struct Holding {
    body: Body,
    _slot: Arc<IpSlot>,
}

impl HttpBody for Holding {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
