//! Static files compiled into the server: the browser client at `GET /herald.js` (and its types
//! at `GET /herald.d.ts`) and its Web Push service worker at `GET /herald-sw.js`, from
//! `clients/js/`, the API's OpenAPI description at
//! `GET /v1/openapi.json`, from `docs/openapi.json`, and the demo's page and stylesheet.
//!
//! Each answer carries a strong `ETag` (a hash of the content) and `Cache-Control: no-cache`:
//! browsers keep the file and revalidate it, and an `If-None-Match` that matches gets `304`
//! with no body, so an upgraded server is picked up at once and an unchanged file costs nothing.

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// A file served from memory.
pub(crate) struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: OnceLock<HeaderValue>,
}

impl Asset {
    pub(crate) const fn new(body: &'static str, content_type: &'static str) -> Self {
        Self { body, content_type, etag: OnceLock::new() }
    }

    /// The file's content.
    pub(crate) fn body(&self) -> &'static str {
        self.body
    }

    fn etag(&self) -> &HeaderValue {
        self.etag.get_or_init(|| {
            let digest = Sha256::digest(self.body.as_bytes());
            let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
            HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
        })
    }

    /// `200` with the file, or `304` when the request's `If-None-Match` names its ETag.
    pub(crate) fn respond(&'static self, request_headers: &HeaderMap) -> Response {
        let etag = self.etag();
        let matches = request_headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|tag| tag.trim().trim_start_matches("W/"))
            .any(|tag| tag == "*" || tag.as_bytes() == etag.as_bytes());
        let mut response =
            if matches { StatusCode::NOT_MODIFIED.into_response() } else { self.body.into_response() };
        let headers = response.headers_mut();
        if !matches {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        }
        headers.insert(header::ETAG, etag.clone());
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        response
    }
}

static HERALD_JS: Asset =
    Asset::new(include_str!("../../../clients/js/herald.js"), "text/javascript; charset=utf-8");
static HERALD_D_TS: Asset =
    Asset::new(include_str!("../../../clients/js/herald.d.ts"), "application/typescript; charset=utf-8");
static HERALD_SW_JS: Asset =
    Asset::new(include_str!("../../../clients/js/herald-sw.js"), "text/javascript; charset=utf-8");

/// The OpenAPI 3.1 description of the HTTP API, kept by hand in `docs/openapi.json` and held to
/// the routes and their answers by the `openapi` integration tests.
pub(crate) static OPENAPI_JSON: Asset =
    Asset::new(include_str!("../../../docs/openapi.json"), "application/json");

/// `GET /herald.js`: the browser client, an ES module.
pub(crate) async fn herald_js(headers: HeaderMap) -> Response {
    HERALD_JS.respond(&headers)
}

/// `GET /herald.d.ts`: its TypeScript declarations.
pub(crate) async fn herald_d_ts(headers: HeaderMap) -> Response {
    HERALD_D_TS.respond(&headers)
}

/// `GET /herald-sw.js`: the service worker that shows Web Push notifications (a classic script,
/// which `herald.push.subscribe()` registers). Browsers revalidate a service worker's script on
/// navigation, so the ETag lets an upgraded server replace it.
pub(crate) async fn herald_sw_js(headers: HeaderMap) -> Response {
    HERALD_SW_JS.respond(&headers)
}

/// `GET /v1/openapi.json`: the OpenAPI description (no auth).
pub(crate) async fn openapi_json(headers: HeaderMap) -> Response {
    OPENAPI_JSON.respond(&headers)
}
