//! Which web pages may use Herald through a browser: the origin check of cookie-authenticated
//! requests, CORS for the allowed origins, and the security headers of every answer.
//!
//! Why the cookie needs a check and the other token sources do not: a browser attaches the
//! `herald_token` cookie to a request to Herald whatever page made it, so without a check a page
//! of another site could open the user's WebSocket (which no CORS rule protects) and read the
//! user's whole history with `last_event_id=0`, or open 50 streams that evict the user's real
//! tabs (a no-cors `GET` needs no preflight, and its answer need not be readable to do harm). A
//! token in `Authorization: Bearer …` or `?token=…` is one the page had to obtain, which another
//! site cannot. So a request whose token comes from the cookie is refused (403
//! `forbidden_origin`) unless it comes from Herald's own origin or one the operator listed
//! (`--allowed-origins`). The check is in the [`crate::auth::Subscriber`] extractor, which every
//! route that reads a subscriber token uses, the lean stream path included; it runs before the
//! token is verified and before anything is opened, so a refused request registers no client.
//!
//! How a browser request's origin is known: `Origin` (sent on every WebSocket handshake and
//! every CORS or non-GET request), else `Sec-Fetch-Site` (sent on every request by current
//! browsers, also on the no-cors `GET`s that carry no `Origin`; neither header can be set by a
//! page's script). A client that sends neither is not a browser acting for a page, and is let
//! through: it could send any header it likes anyway, and it has no one's cookie but its own.
//!
//! What does not live here: token parsing and verification ([`crate::auth`]); the demo's own
//! loopback checks (`demo`).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::app::App;
use crate::error::ApiError;

/// How long a browser may keep the answer to a preflight (10 minutes) before asking again.
/// Within it, requests of the same kind go out without a new preflight; an origin removed from
/// the list is refused at once anyway, since every actual answer is checked again.
pub const PREFLIGHT_MAX_AGE_SECS: u64 = 600;

/// The methods Herald's subscriber routes take, as a preflight answers them.
const ALLOWED_METHODS: &str = "GET, POST, DELETE";
/// The request headers Herald reads, as a preflight answers them.
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id, x-herald-client";

/// The error code of a refused cross-origin cookie request.
pub const FORBIDDEN_ORIGIN: &str = "forbidden_origin";

/// A web origin an operator allows: `scheme://host[:port]`, as a browser sends it in `Origin`
/// (lower case, no default port, no path).
#[derive(Clone, PartialEq, Eq)]
pub struct Origin {
    /// The serialized origin, e.g. `https://app.example`; a valid header value.
    value: HeaderValue,
}

impl Origin {
    /// The origin as a browser writes it in `Origin`.
    pub fn as_str(&self) -> &str {
        self.value.to_str().expect("an origin is ASCII")
    }
}

impl fmt::Debug for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not an origin Herald can allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an origin like `https://app.example` or `http://localhost:3000`: {why}")]
pub struct InvalidOrigin {
    text: String,
    why: &'static str,
}

impl FromStr for Origin {
    type Err = InvalidOrigin;

    fn from_str(text: &str) -> Result<Self, InvalidOrigin> {
        let invalid = |why| InvalidOrigin { text: text.to_owned(), why };
        if text == "*" || text.contains('*') {
            return Err(invalid("wildcards cannot carry the cookie; list each origin"));
        }
        let (scheme, rest) =
            text.split_once("://").ok_or_else(|| invalid("it has no `http://` or `https://`"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => "80",
            "https" => "443",
            _ => return Err(invalid("the scheme must be http or https")),
        };
        if rest.is_empty() {
            return Err(invalid("it has no host"));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(invalid("an origin has no path, not even `/`"));
        }
        if rest.contains('@') {
            return Err(invalid("an origin has no user name"));
        }
        // The host, and the port if any: `[v6]:port`, `[v6]`, `name:port`, `name`.
        let (host, port) = match rest.strip_prefix('[') {
            Some(v6) => {
                let (address, after) = v6.split_once(']').ok_or_else(|| invalid("`[` without `]`"))?;
                if address.parse::<std::net::Ipv6Addr>().is_err() {
                    return Err(invalid("the IPv6 address is not valid"));
                }
                let port = match after {
                    "" => None,
                    _ => Some(after.strip_prefix(':').ok_or_else(|| invalid("text after `]`"))?),
                };
                (&rest[..address.len() + 2], port)
            }
            None => match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            },
        };
        let host_ok = host.starts_with('[')
            || (!host.is_empty()
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        if !host_ok {
            return Err(invalid("the host may only hold letters, digits, `-` and `.` (use punycode)"));
        }
        let port = match port {
            Some(port) => match port.parse::<u16>() {
                Ok(n) if n > 0 && !port.starts_with('0') => (port != default_port).then_some(port),
                _ => return Err(invalid("the port must be a number from 1 to 65535")),
            },
            None => None,
        };
        let host = host.to_ascii_lowercase();
        let serialized = match port {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        };
        let value = HeaderValue::from_str(&serialized).map_err(|_| invalid("not a valid header value"))?;
        Ok(Origin { value })
    }
}

/// The origins besides Herald's own whose pages may use the cookie and read Herald's answers
/// (CORS). Empty by default: only Herald's own origin.
#[derive(Debug, Clone, Default)]
pub struct AllowedOrigins {
    origins: Arc<[Origin]>,
}

impl AllowedOrigins {
    pub fn new(origins: impl IntoIterator<Item = Origin>) -> Self {
        let mut list: Vec<Origin> = Vec::new();
        for origin in origins {
            if !list.contains(&origin) {
                list.push(origin);
            }
        }
        Self { origins: list.into() }
    }

    /// Parses a comma-separated list (`HERALD_ALLOWED_ORIGINS`); blanks around commas are
    /// ignored.
    pub fn parse_list(text: &str) -> Result<Self, InvalidOrigin> {
        let origins = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Origin::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(origins))
    }

    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Origin> {
        self.origins.iter()
    }

    /// The listed origin that the request's `Origin` names, if any.
    fn listed(&self, request: &HeaderMap) -> Option<&Origin> {
        let origin = request.get(header::ORIGIN)?.as_bytes();
        self.origins.iter().find(|o| o.value.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Whether a request that carries the user's cookie may use it: it comes from Herald's own
    /// origin, from a listed origin, or not from a browser page at all (see the module doc).
    /// `uri` gives the host on HTTP/2, which has `:authority` instead of `Host`.
    pub(crate) fn check_cookie_request(&self, request: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
        let fetch_site = request.get("sec-fetch-site").map(HeaderValue::as_bytes);
        let allowed = match request.get(header::ORIGIN) {
            // The browser itself says the page is on this origin (whatever a proxy did to `Host`).
            Some(_) if fetch_site == Some(b"same-origin") => true,
            Some(origin) => {
                let host = match request.get(header::HOST) {
                    Some(host) => host.to_str().ok(),
                    None => uri.authority().map(|a| a.as_str()),
                };
                is_same_origin(origin, host) || self.listed(request).is_some()
            }
            // A no-cors GET: only `Sec-Fetch-Site` tells where it comes from. `none` is the user
            // (a typed address, a bookmark).
            None => !matches!(fetch_site, Some(b"cross-site" | b"same-site")),
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                FORBIDDEN_ORIGIN,
                "the `herald_token` cookie is accepted only from Herald's own origin and those in \
                 --allowed-origins (HERALD_ALLOWED_ORIGINS); from another page, send the token as \
                 `Authorization: Bearer …` or `?token=…`",
            ))
        }
    }

    /// The headers every answer to this request carries: `X-Content-Type-Options`, and for a
    /// listed origin the CORS ones (`Vary: Origin` whenever the list is not empty, since the
    /// answer then depends on the `Origin`).
    pub(crate) fn answer_headers(&self, request: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))];
        if self.is_empty() {
            return headers;
        }
        headers.push((header::VARY, HeaderValue::from_static("origin")));
        if let Some(origin) = self.listed(request) {
            headers.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.value.clone()));
            headers.push((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")));
        }
        headers
    }

    /// The answer to a CORS preflight: 204 with what Herald takes for a listed origin, 403
    /// `forbidden_origin` (and no CORS header) for any other.
    fn preflight(&self, request: &HeaderMap) -> Response {
        let Some(origin) = self.listed(request) else {
            let mut response = ApiError::new(
                StatusCode::FORBIDDEN,
                FORBIDDEN_ORIGIN,
                "this origin is not in --allowed-origins (HERALD_ALLOWED_ORIGINS)",
            )
            .into_response();
            add_headers(&mut response, self.answer_headers(request));
            return response;
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.value.clone());
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE_SECS));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(
            header::VARY,
            HeaderValue::from_static("origin, access-control-request-method, access-control-request-headers"),
        );
        response
    }
}

/// Whether `origin` names the host (and port) the request was sent to.
fn is_same_origin(origin: &HeaderValue, host: Option<&str>) -> bool {
    let (Ok(origin), Some(host)) = (origin.to_str(), host) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false; // `null`, or garbage.
    };
    // `Origin` leaves the default port out; a `Host` may carry it.
    let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
    let host = host.strip_suffix(default_port).unwrap_or(host);
    authority.eq_ignore_ascii_case(host)
}

fn add_headers(response: &mut Response, headers: Vec<(HeaderName, HeaderValue)>) {
    let map = response.headers_mut();
    for (name, value) in headers {
        if name == header::VARY {
            map.append(name, value);
        } else {
            map.insert(name, value);
        }
    }
}

/// The `Content-Security-Policy` of an HTML answer that sets none of its own: nothing may load,
/// nothing may frame it.
const HTML_CSP_DEFAULT: &str =
    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The middleware of every route (the lean stream path adds the same through
/// [`AllowedOrigins::answer_headers`]): answers CORS preflights, adds the CORS headers for
/// listed origins, `X-Content-Type-Options: nosniff` to every answer, and to HTML pages a
/// `Content-Security-Policy` (the page's own, or a default that allows nothing), no framing and
/// no referrer.
pub(crate) async fn web_headers(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let origins = &app.settings.allowed_origins;
    let is_preflight = request.method() == Method::OPTIONS
        && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && request.headers().contains_key(header::ORIGIN);
    if is_preflight {
        return origins.preflight(request.headers());
    }
    let headers = origins.answer_headers(request.headers());
    let mut response = next.run(request).await;
    add_headers(&mut response, headers);
    let is_html =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if is_html {
        let map = response.headers_mut();
        if !map.contains_key(header::CONTENT_SECURITY_POLICY) {
            map.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(HTML_CSP_DEFAULT));
        }
        map.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        map.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Result<String, InvalidOrigin> {
        text.parse::<Origin>().map(|o| o.as_str().to_owned())
    }

    #[test]
    fn origins_parse_to_what_browsers_send() {
        for (text, expected) in [
            ("https://app.example", "https://app.example"),
            ("HTTPS://App.Example", "https://app.example"),
            ("https://app.example:443", "https://app.example"),
            ("http://app.example:80", "http://app.example"),
            ("http://localhost:3000", "http://localhost:3000"),
            ("https://app.example:8443", "https://app.example:8443"),
            ("http://127.0.0.1:7300", "http://127.0.0.1:7300"),
            ("http://[::1]:7300", "http://[::1]:7300"),
            ("http://[::1]", "http://[::1]"),
            ("https://xn--bcher-kva.example", "https://xn--bcher-kva.example"),
        ] {
            assert_eq!(origin(text).as_deref(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn not_origins_are_refused() {
        for text in [
            "",
            "*",
            "https://*.example",
            "null",
            "app.example",
            "ftp://app.example",
            "https://",
            "https://app.example/",
            "https://app.example/path",
            "https://app.example?x",
            "https://user@app.example",
            "https://app.example:0",
            "https://app.example:65536",
            "https://app.example:x",
            "https://app.example:",
            "https://app example",
            "https://[::1",
            "https://[nope]",
            "https://[::1]x",
            "https://bücher.example",
        ] {
            assert!(origin(text).is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn lists_parse_and_refuse_a_bad_member() {
        let list = AllowedOrigins::parse_list("https://a.example, http://localhost:3000,,https://a.example")
            .unwrap();
        let got: Vec<_> = list.iter().map(Origin::as_str).collect();
        assert_eq!(got, ["https://a.example", "http://localhost:3000"]);
        let error = AllowedOrigins::parse_list("https://a.example,https://b.example/").unwrap_err();
        assert!(error.to_string().contains("https://b.example/"), "{error}");
        assert!(!error.to_string().contains('\n'));
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        let same =
            |origin: &str, host: &str| is_same_origin(&HeaderValue::from_str(origin).unwrap(), Some(host));
        assert!(same("http://127.0.0.1:7300", "127.0.0.1:7300"));
        assert!(same("https://app.example", "app.example"));
        assert!(same("https://app.example", "app.example:443"));
        assert!(same("http://App.Example", "app.example"));
        assert!(!same("https://evil.example", "app.example"));
        assert!(!same("http://127.0.0.1:7301", "127.0.0.1:7300"));
        assert!(!same("null", "app.example"));
        assert!(!same("https://app.example.evil", "app.example"));
    }
}
