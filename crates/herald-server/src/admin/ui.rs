//! `GET /admin`: the operators' web page on the admin listener, and the JSON and event-stream
//! endpoints it uses. The page (`clients/admin/`: HTML, one script, one stylesheet) is compiled
//! into the binary; it loads nothing from elsewhere.
//!
//! - Signing in: [`session`] (the API key once, then an `HttpOnly`, `SameSite=Strict` cookie of
//!   a random session; CSRF checks on everything that changes something).
//! - The overview: [`samples`] (a sample every 5 s over 15 minutes), sent live on
//!   `GET /admin/api/events` (Server-Sent Events).
//! - The users: search by id prefix, each user's live tree of sessions and tabs (the page polls
//!   it every second, one request at a time), closing a session or a tab, a test notification,
//!   the user's last notifications and inbox counts.
//!
//! # Routes
//! Every answer but the page and its assets is JSON; refusals are `{"error": {…}}`. All but
//! the page, its assets and the sign-in need the session cookie (401 `not_signed_in`); `POST`
//! and `DELETE` also need the CSRF check (403 `csrf_refused`).
//!
//! - `GET /admin`, `/admin/admin.js`, `/admin/admin.css`: the page.
//! - `POST /admin/sign-in` `{"key"}` → 204 with the cookie; 401 `invalid_api_key` after 1 s;
//!   429 `too_many_sign_in_attempts`. `POST /admin/sign-out` → 204, the cookie cleared.
//! - `GET /admin/api/session` → `{"node", "expires_at"}`.
//! - `GET /admin/api/overview` → `{"node", "interval_secs", "samples": [Sample…]}`.
//! - `GET /admin/api/events`: `event: sample` with each new sample; ends at sign-out, when the
//!   session expires, and at shutdown. At most [`EVENT_STREAMS_MAX`] open (then 503).
//! - `GET /admin/api/users?prefix=P` → `{"users": [{"user", "unread", "sessions": [{"session",
//!   "clients": [{"client", "transport", "node", "connected_at", "last_seq", "topics"}]}]}],
//!   "more"}`: at most [`USERS_SHOWN_MAX`] users.
//! - `GET /admin/api/users/{user}` → `{"user", "counts", "last_seq", "log": [notification…]}`:
//!   the last [`LOG_SHOWN_MAX`] notifications, newest first.
//! - `POST /admin/api/users/{user}/notify` `{"text"}`: a durable `admin.test` notification
//!   `{"text", "from": "admin"}` to the user → the publish's receipt.
//! - `DELETE /admin/api/users/{user}/sessions/{session}`: signs the session out, as
//!   `DELETE /v1/users/{user}/sessions/{session}` does (`session_closed`, on every node).
//! - `DELETE /admin/api/users/{user}/sessions/{session}/clients/{client}`: closes that tab
//!   (`evicted`), if it is connected to this node; 404 `client_not_found` otherwise.
//!
//! # Audit
//! Every sign-in, refused or not, every sign-out and every action (a test notification, a
//! session or a tab closed) is logged once, target `herald::admin`, with the operator's address
//! (`peer`): a sign-in refused for a wrong key at `warn` (with its code, so repeated guesses
//! show; at most about four a second, the sign-in checks' own bound), one refused because four
//! were being checked at `debug`, the rest at `info`. Never the key, the cookie or the test
//! notification's text.

pub mod samples;
pub mod session;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use futures::future::join_all;
use herald_core::notification::format_timestamp_ms;
use herald_core::{ClientId, CloseReason, Presence, Publish, SessionId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::assets::Asset;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::response::json_response;
use samples::{SAMPLE_INTERVAL, Sample, Samples};
use session::{AdminSessions, Operator, SameSite};

/// Users in one answer of the search. The page says when there are more (`"more": true`).
pub const USERS_SHOWN_MAX: usize = 20;
/// Notifications of a user's log on the page.
pub const LOG_SHOWN_MAX: usize = 20;
/// Event streams open at once on a node (every open page holds one): beyond, 503.
pub const EVENT_STREAMS_MAX: usize = 16;
/// How often an open event stream checks that its session is still live.
const SESSION_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Longest text of a test notification, in characters.
pub const TEST_TEXT_CHARS_MAX: usize = 500;
/// The notification type of a test notification.
pub const TEST_NOTIFICATION_TYPE: &str = "admin.test";

static PAGE: Asset =
    Asset::new(include_str!("../../../../clients/admin/index.html"), "text/html; charset=utf-8");
static SCRIPT: Asset =
    Asset::new(include_str!("../../../../clients/admin/admin.js"), "text/javascript; charset=utf-8");
static STYLESHEET: Asset =
    Asset::new(include_str!("../../../../clients/admin/admin.css"), "text/css; charset=utf-8");

/// The page's `Content-Security-Policy`: its own script and stylesheet and requests to this
/// listener, nothing else, no framing.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                        img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The admin page's state: the node's [`App`], the operators' sessions, the samples, and the
/// signal that ends the sampler and the event streams.
pub struct AdminUi {
    app: Arc<App>,
    sessions: AdminSessions,
    samples: Samples,
    event_streams: AtomicUsize,
    stop: CancellationToken,
}

impl std::fmt::Debug for AdminUi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminUi").finish_non_exhaustive()
    }
}

impl AdminUi {
    /// The admin page of `app`, and its sampler: a task of the current runtime that takes a
    /// sample every [`SAMPLE_INTERVAL`] for as long as the page's routes (or an open event
    /// stream) hold the page, until [`AdminUi::stop`] or the node's shutdown. `secure_cookie`:
    /// the page is served over TLS (the session cookie is then `Secure`).
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn start(app: Arc<App>, secure_cookie: bool) -> Arc<Self> {
        let stop = app.stopping.child_token();
        let ui = Arc::new(Self {
            app,
            sessions: AdminSessions::new(secure_cookie),
            samples: Samples::new(),
            event_streams: AtomicUsize::new(0),
            stop,
        });
        let page = Arc::downgrade(&ui);
        let stop = ui.stop.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = ticks.tick() => {
                        // The routes were dropped: nobody can read the samples any more.
                        let Some(ui) = page.upgrade() else { break };
                        ui.samples.take(&ui.app);
                    }
                }
            }
        });
        ui
    }

    /// Stops the sampler and ends the open event streams (the node's shutdown does too).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// The page's routes, under `/admin`.
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/admin", get(page))
            .route("/admin/", get(page))
            .route("/admin/admin.js", get(script))
            .route("/admin/admin.css", get(stylesheet))
            .route("/admin/sign-in", post(sign_in))
            .route("/admin/sign-out", post(sign_out))
            .route("/admin/api/session", get(session_info))
            .route("/admin/api/overview", get(overview))
            .route("/admin/api/events", get(events))
            .route("/admin/api/users", get(users))
            .route("/admin/api/users/{user}", get(user_detail))
            .route("/admin/api/users/{user}/notify", post(notify))
            .route("/admin/api/users/{user}/sessions/{session}", delete(close_session))
            .route("/admin/api/users/{user}/sessions/{session}/clients/{client}", delete(close_client))
            .with_state(self.clone())
    }
}

async fn page(headers: HeaderMap) -> Response {
    let mut response = PAGE.respond(&headers);
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_CSP));
    response.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response.headers_mut().insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

async fn script(headers: HeaderMap) -> Response {
    SCRIPT.respond(&headers)
}

async fn stylesheet(headers: HeaderMap) -> Response {
    STYLESHEET.respond(&headers)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignInBody {
    key: String,
}

/// The operator's address for the audit lines: `-` when the router is served by an embedding
/// app rather than the admin listener (see [`super::AdminPeer`]).
struct Peer(String);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Peer(match parts.extensions.get::<super::AdminPeer>() {
            Some(super::AdminPeer(addr)) => addr.ip().to_string(),
            None => "-".to_owned(),
        }))
    }
}

/// `POST /admin/sign-in`.
async fn sign_in(
    State(ui): State<Arc<AdminUi>>,
    Peer(peer): Peer,
    _same_site: SameSite,
    ApiJson(SignInBody { key }): ApiJson<SignInBody>,
) -> Result<Response, ApiError> {
    let set_cookie = match ui.sessions.sign_in(|| ui.app.auth.verify_api_key(&key).map(|_| ())).await {
        Ok(set_cookie) => set_cookie,
        Err(refused) => {
            // A wrong key is held for a second, four at a time, so these lines come at most
            // about four a second; the instant 429s past that bound would come as fast as they
            // are sent, so they are only at debug.
            if refused.status == StatusCode::TOO_MANY_REQUESTS {
                tracing::debug!(target: "herald::admin", %peer, code = refused.code, "admin sign-in refused");
            } else {
                tracing::warn!(target: "herald::admin", %peer, code = refused.code, "admin sign-in refused");
            }
            return Err(refused);
        }
    };
    tracing::info!(target: "herald::admin", %peer, "admin signed in");
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, set_cookie)]).into_response())
}

/// `POST /admin/sign-out`: ends the session (if any) and clears the cookie.
async fn sign_out(
    State(ui): State<Arc<AdminUi>>,
    Peer(peer): Peer,
    _same_site: SameSite,
    headers: HeaderMap,
) -> Response {
    let cleared = ui.sessions.sign_out(&headers);
    tracing::info!(target: "herald::admin", %peer, "admin signed out");
    (StatusCode::NO_CONTENT, [(header::SET_COOKIE, cleared)]).into_response()
}

/// `GET /admin/api/session`.
async fn session_info(State(ui): State<Arc<AdminUi>>, operator: Operator) -> Response {
    json_response(&serde_json::json!({
        "node": ui.app.settings.node_id.as_str(),
        "expires_at": operator.expires_at,
    }))
}

/// `GET /admin/api/overview`: the samples kept.
async fn overview(State(ui): State<Arc<AdminUi>>, _operator: Operator) -> Response {
    #[derive(Serialize)]
    struct Overview<'a> {
        node: &'a str,
        interval_secs: u64,
        samples: Vec<Arc<Sample>>,
    }
    json_response(&Overview {
        node: ui.app.settings.node_id.as_str(),
        interval_secs: SAMPLE_INTERVAL.as_secs(),
        samples: ui.samples.all(),
    })
}

/// One open event stream's place among [`EVENT_STREAMS_MAX`], given back when it ends.
struct StreamPlace(Arc<AdminUi>);

impl Drop for StreamPlace {
    fn drop(&mut self) {
        self.0.event_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /admin/api/events`: each new sample as `event: sample`, until sign-out, the session's
/// end or shutdown.
async fn events(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if ui.event_streams.fetch_add(1, Ordering::Relaxed) >= EVENT_STREAMS_MAX {
        ui.event_streams.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{EVENT_STREAMS_MAX} admin pages are open on this node already"),
        ));
    }
    let place = StreamPlace(ui.clone());
    let news = ui.samples.subscribe();
    // The first chunk tells the page it is connected (and a proxy to pass the stream on).
    let opened =
        futures::stream::once(async { Ok::<_, Infallible>(Bytes::from_static(b": admin events\n\n")) });
    let chunks = futures::stream::unfold((place, news, headers), |(place, mut news, headers)| async move {
        let ui = place.0.clone();
        loop {
            let sample = tokio::select! {
                _ = ui.stop.cancelled() => return None,
                // A sign-out or the session's expiry ends the stream within a second.
                _ = tokio::time::sleep(SESSION_CHECK_INTERVAL) => {
                    if !ui.sessions.is_live(&headers) {
                        return None;
                    }
                    continue;
                }
                sample = news.recv() => sample,
            };
            if !ui.sessions.is_live(&headers) {
                return None;
            }
            let frame = match sample {
                Ok(sample) => {
                    let json = serde_json::to_string(&*sample).expect("a sample serializes");
                    format!("event: sample\ndata: {json}\n\n")
                }
                // Fell behind: the page reads the whole ring again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    "event: lagged\ndata: {}\n\n".to_owned()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok::<_, Infallible>(Bytes::from(frame)), (place, news, headers)));
        }
    });
    let mut response = Body::from_stream(futures::StreamExt::chain(opened, chunks)).into_response();
    for (name, value) in crate::transport::sse::STREAM_HEADERS {
        response.headers_mut().insert(name, HeaderValue::from_static(value));
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersQuery {
    #[serde(default)]
    prefix: String,
}

#[derive(Serialize)]
struct UserTree {
    user: String,
    /// The user's unread count; `null` when the store could not be read.
    unread: Option<u64>,
    sessions: Vec<SessionTree>,
}

#[derive(Serialize)]
struct SessionTree {
    session: String,
    clients: Vec<ClientTree>,
}

#[derive(Serialize)]
struct ClientTree {
    client: String,
    transport: &'static str,
    node: String,
    connected_at: String,
    last_seq: u64,
    topics: Vec<String>,
}

/// `GET /admin/api/users?prefix=P`: the users of this node whose id starts with `P` (and `P`
/// itself if it is a user connected to another node), each with its tree.
async fn users(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    ApiQuery(query): ApiQuery<UsersQuery>,
) -> Result<Response, ApiError> {
    let prefix = query.prefix.trim();
    if prefix.len() > herald_core::ids::ID_BYTES_MAX {
        return Err(ApiError::bad_request(
            "invalid_prefix",
            format!("a user id is at most {} bytes, so is `prefix`", herald_core::ids::ID_BYTES_MAX),
        ));
    }
    let mut found = ui.app.hub.users_with_prefix(prefix, USERS_SHOWN_MAX + 1);
    // A user connected only to other nodes of a cluster is found by its exact id.
    if let Ok(exact) = UserId::new(prefix)
        && !found.contains(&exact)
    {
        found.insert(0, exact);
    }
    let more = found.len() > USERS_SHOWN_MAX;
    found.truncate(USERS_SHOWN_MAX);
    let trees = join_all(found.iter().map(|user| user_tree(&ui, user))).await;
    let users: Vec<UserTree> =
        trees.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
    Ok(json_response(&serde_json::json!({ "users": users, "more": more })))
}

/// `user`'s sessions and tabs on every node (`None` if it has none), with its unread count.
async fn user_tree(ui: &AdminUi, user: &UserId) -> Result<Option<UserTree>, ApiError> {
    let Presence { sessions, .. } = ui.app.notifier.presence(user).await?;
    if sessions.is_empty() {
        return Ok(None);
    }
    let unread = ui.app.notifier.inbox().counts(user).await.ok().map(|c| c.unread);
    let local = ui.app.settings.node_id.as_str();
    let sessions = sessions
        .into_iter()
        .map(|s| SessionTree {
            session: s.session.as_str().to_owned(),
            clients: s
                .clients
                .into_iter()
                .map(|c| ClientTree {
                    client: c.client.as_str().to_owned(),
                    transport: c.transport.as_str(),
                    node: c.node.as_deref().unwrap_or(local).to_owned(),
                    connected_at: format_timestamp_ms(c.connected_at_ms),
                    last_seq: c.last_seq,
                    topics: c.topics.iter().map(|t| t.as_str().to_owned()).collect(),
                })
                .collect(),
        })
        .collect();
    Ok(Some(UserTree { user: user.as_str().to_owned(), unread, sessions }))
}

/// `GET /admin/api/users/{user}`: the user's inbox counts and last notifications.
async fn user_detail(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    ApiPath(user): ApiPath<String>,
) -> Result<Response, ApiError> {
    #[derive(Serialize)]
    struct Detail<'a> {
        user: &'a str,
        counts: herald_core::InboxCounts,
        last_seq: u64,
        log: Vec<&'a RawValue>,
    }
    let user = UserId::new(user)?;
    let counts = ui.app.notifier.inbox().counts(&user).await?;
    let head = ui.app.store.head(&user).await?;
    let after = head.last_seq.saturating_sub(LOG_SHOWN_MAX as u64);
    let page = ui.app.store.read_after(&user, after, LOG_SHOWN_MAX).await?;
    let log = page
        .notifications
        .iter()
        .rev()
        .map(|n| serde_json::from_slice::<&RawValue>(n.json()).expect("a notification's JSON is valid"))
        .collect();
    Ok(json_response(&Detail { user: user.as_str(), counts, last_seq: head.last_seq, log }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NotifyBody {
    text: String,
}

/// `POST /admin/api/users/{user}/notify`: a test notification to every tab of the user.
async fn notify(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    Peer(peer): Peer,
    ApiPath(user): ApiPath<String>,
    ApiJson(body): ApiJson<NotifyBody>,
) -> Result<Response, ApiError> {
    let user = UserId::new(user)?;
    let text = body.text.trim();
    if text.is_empty() || text.chars().count() > TEST_TEXT_CHARS_MAX {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("`text` must be 1 to {TEST_TEXT_CHARS_MAX} characters"),
        ));
    }
    let data = serde_json::value::to_raw_value(&serde_json::json!({ "text": text, "from": "admin" }))
        .expect("a JSON value serializes");
    let receipt = ui
        .app
        .notifier
        .publish(Publish::to_user(user.clone(), TEST_NOTIFICATION_TYPE, Arc::from(data)))
        .await?;
    tracing::info!(target: "herald::admin", %peer, %user, "admin sent a test notification");
    Ok(json_response(&receipt))
}

/// `DELETE /admin/api/users/{user}/sessions/{session}`: signs the session out everywhere.
async fn close_session(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    Peer(peer): Peer,
    ApiPath((user, session)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let (user, session) = (UserId::new(user)?, SessionId::new(session)?);
    let closed = ui.app.notifier.close_sessions(&user, Some(&session)).await?;
    tracing::info!(target: "herald::admin", %peer, %user, %session, closed, "admin closed a session");
    Ok(json_response(&serde_json::json!({ "closed": closed })))
}

/// `DELETE /admin/api/users/{user}/sessions/{session}/clients/{client}`: closes one tab of this
/// node with `evicted` (herald.js does not reconnect after it).
async fn close_client(
    State(ui): State<Arc<AdminUi>>,
    _operator: Operator,
    Peer(peer): Peer,
    ApiPath((user, session, client)): ApiPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (user, session, client) = (UserId::new(user)?, SessionId::new(session)?, ClientId::new(client)?);
    if !ui.app.hub.close_client(&user, &session, &client, CloseReason::Evicted) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "client_not_found",
            format!(
                "tab {client} of {user}'s session {session} is not connected to this node (a tab of another node is closed from that node's admin page)"
            ),
        ));
    }
    tracing::info!(target: "herald::admin", %peer, %user, %session, %client, "admin closed a tab");
    Ok(json_response(&serde_json::json!({ "closed": 1 })))
}
