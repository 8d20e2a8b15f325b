//! The demo at `/demo`: a page (from `clients/demo/`) where one picks a user and a session, sees
//! live notifications and the user's tabs, and sends notifications to a user, a session or a tab.
//!
//! It exists only in dev mode on a loopback address ([`crate::ServerSettings::demo`]), because
//! its endpoints need no credentials: they mint subscriber tokens and publish for anyone who can
//! reach them. So that a web page elsewhere cannot use them through the browser of whoever runs
//! the server (DNS rebinding, cross-site POSTs), each checks that the `Host` is a loopback name
//! and that a request with an `Origin` comes from that same host.
//!
//! - `GET /demo`: the page; `GET /demo/demo.css`: its stylesheet.
//! - `POST /demo/token` `{"user", "session", "ttl_secs"?}` → `{"token", "expires_at"}`; the
//!   token's `topics` claim is `["room:*"]`, so that the page's tabs may join the demo's rooms.
//! - `POST /demo/notify`: the body of `POST /v1/notify`, published without the API key.
//! - `POST /demo/room` `{"room", "user", "text"}`: a chat line in a room, published to the topic
//!   `room` (an ephemeral `message` event, `{"text", "from": user}`, to every tab listening,
//!   the sender's included) as an app's backend would; answers as `POST /v1/notify`.
//! - `GET /demo/presence/{user}`: `GET /v1/users/{user}/presence` without the API key. The page
//!   polls it every 2 s: presence changes are rare and a poll shows them exactly, without
//!   publishing anything into the user's log.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use base64::Engine as _;
use herald_core::{Publish, SessionId, Target, Topic, UserId};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::api;
use crate::app::App;
use crate::assets::Asset;
use crate::auth::Publisher;
use crate::error::{ApiError, ApiJson, ApiPath};
use crate::response::json_response;

/// Lifetime of a demo token when the page does not ask for another (`ttl_secs`).
const TOKEN_TTL_DEFAULT: Duration = Duration::from_secs(3600);
/// Longest demo token.
const TOKEN_TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// What the demo's tokens let a tab listen to by itself: the rooms, nothing else.
const ROOM_PATTERN: &str = "room:*";
/// Longest chat line of a room, in characters (the page's input takes as many).
const ROOM_TEXT_CHARS_MAX: usize = 500;

static PAGE: Asset = Asset::new(include_str!("../../../clients/demo/index.html"), "text/html; charset=utf-8");
static STYLESHEET: Asset =
    Asset::new(include_str!("../../../clients/demo/demo.css"), "text/css; charset=utf-8");

/// The demo's routes, merged into the router only when the demo is on.
pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/demo", get(page))
        .route("/demo/", get(page))
        .route("/demo/demo.css", get(stylesheet))
        .route("/demo/token", post(token))
        .route("/demo/notify", post(notify))
        .route("/demo/room", post(room))
        .route("/demo/presence/{user}", get(presence))
}

/// Admits only requests for a loopback host, and with an `Origin` (browsers send one on POST)
/// only from that same host.
struct LocalOnly;

impl<S: Send + Sync> FromRequestParts<S> for LocalOnly {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let forbidden = |message: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden", message);
        let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !is_loopback_host(host) {
            return Err(forbidden("the demo answers only for localhost, 127.0.0.1 or [::1]"));
        }
        if let Some(origin) = parts.headers.get(header::ORIGIN) {
            let same = origin.to_str().ok().and_then(|o| o.strip_prefix("http://")) == Some(host);
            if !same && parts.method != Method::GET {
                return Err(forbidden("the demo's endpoints take requests from its own page only"));
            }
        }
        Ok(LocalOnly)
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

async fn page(_local: LocalOnly, headers: HeaderMap) -> Response {
    let mut response = PAGE.respond(&headers);
    response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, page_csp().clone());
    response
}

/// The page's `Content-Security-Policy`: its own inline module (by hash), herald.js, the
/// stylesheet and requests to this server, nothing else; no framing. (The router's middleware
/// adds `X-Frame-Options`, `Referrer-Policy` and `nosniff`.)
fn page_csp() -> &'static HeaderValue {
    static CSP: OnceLock<HeaderValue> = OnceLock::new();
    CSP.get_or_init(|| {
        let script = inline_script(PAGE.body()).expect("the demo page has one inline module");
        let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(script.as_bytes()));
        let csp = format!(
            "default-src 'none'; script-src 'self' 'sha256-{hash}'; style-src 'self'; \
             connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; \
             frame-ancestors 'none'"
        );
        HeaderValue::from_str(&csp).expect("the CSP is a valid header value")
    })
}

/// The text of the page's inline `<script type="module">`, as the browser hashes it.
fn inline_script(page: &str) -> Option<&str> {
    const OPEN: &str = "<script type=\"module\">";
    let start = page.find(OPEN)? + OPEN.len();
    let end = start + page[start..].find("</script>")?;
    Some(&page[start..end])
}

async fn stylesheet(_local: LocalOnly, headers: HeaderMap) -> Response {
    STYLESHEET.respond(&headers)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    user: String,
    session: Option<String>,
    ttl_secs: Option<u64>,
}

/// `POST /demo/token`: a subscriber token, as an app's backend would mint it.
async fn token(
    _local: LocalOnly,
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<TokenBody>,
) -> Result<Response, ApiError> {
    let user = UserId::new(body.user)?;
    let session = body.session.filter(|s| !s.is_empty()).map(SessionId::new).transpose()?;
    let ttl = body.ttl_secs.map_or(TOKEN_TTL_DEFAULT, Duration::from_secs);
    if ttl.is_zero() || ttl > TOKEN_TTL_MAX {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`ttl_secs` must be between 1 and {}", TOKEN_TTL_MAX.as_secs()),
        ));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let expires_at = (now + ttl).as_secs();
    let token = app.auth.mint_token_listening(&user, session.as_ref(), expires_at, &[ROOM_PATTERN]);
    Ok(json_response(&serde_json::json!({ "token": token, "expires_at": expires_at })))
}

/// `POST /demo/notify`: `POST /v1/notify` without the API key.
async fn notify(
    _local: LocalOnly,
    State(app): State<Arc<App>>,
    body: ApiJson<api::publish::NotifyBody>,
) -> Result<Response, ApiError> {
    api::publish::notify(State(app), Publisher, body).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomBody {
    room: String,
    user: String,
    text: String,
}

/// `POST /demo/room`: `user` says `text` in `room` (a topic the demo's tokens allow), to every
/// tab listening to it.
async fn room(
    _local: LocalOnly,
    State(app): State<Arc<App>>,
    ApiJson(body): ApiJson<RoomBody>,
) -> Result<Response, ApiError> {
    let topic = Topic::new(&body.room)?;
    let room_prefix = ROOM_PATTERN.trim_end_matches('*');
    if !topic.as_str().starts_with(room_prefix) {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("a demo room is a topic that starts with {room_prefix:?}, as the demo's tokens allow"),
        ));
    }
    let user = UserId::new(body.user)?;
    let text = body.text.trim();
    if text.is_empty() || text.chars().count() > ROOM_TEXT_CHARS_MAX {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("`text` must be 1 to {ROOM_TEXT_CHARS_MAX} characters"),
        ));
    }
    let data = serde_json::value::to_raw_value(&serde_json::json!({ "text": text, "from": user.as_str() }))
        .expect("a JSON value serializes");
    let publish = Publish {
        target: Target::Topic(topic),
        kind: Arc::from("message"),
        data: Arc::from(data),
        durable: false,
        except_client: None,
        except_user: None,
        idempotency_key: None,
        push: herald_core::PushOptions::default(),
    };
    let receipt = app.notifier.publish(publish).await?;
    Ok(json_response(&receipt))
}

/// `GET /demo/presence/{user}`: `GET /v1/users/{user}/presence` without the API key.
async fn presence(
    _local: LocalOnly,
    State(app): State<Arc<App>>,
    user: ApiPath<String>,
) -> Result<Response, ApiError> {
    api::users::presence(State(app), Publisher, user).await
}

#[cfg(test)]
mod tests {
    use super::{PAGE, inline_script, is_loopback_host, page_csp};

    #[test]
    fn the_csp_allows_the_pages_one_inline_script() {
        let script = inline_script(PAGE.body()).unwrap();
        assert!(script.contains("import { Herald } from '/herald.js'"));
        assert_eq!(PAGE.body().matches("<script").count(), 1, "a second script needs its hash in the CSP");
        let csp = page_csp().to_str().unwrap();
        assert!(
            csp.contains("script-src 'self' 'sha256-") && csp.contains("frame-ancestors 'none'"),
            "{csp}"
        );
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:7300",
            "127.0.0.1",
            "127.0.0.1:7300",
            "127.1.2.3:80",
            "[::1]",
            "[::1]:7300",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in
            ["", "example.com", "example.com:7300", "10.0.0.1:7300", "[::2]:7300", "localhost.evil.com"]
        {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
