//! The `herald_token` cookie from other sites (issue 10, defect 2), CORS for the allowed
//! origins, and the security headers, over real sockets.
//!
//! A browser attaches the cookie to a request to Herald whatever page sent it: a page of another
//! site must not be able to read the user's notifications with it (WebSocket, which CORS does not
//! protect) nor open streams that evict the user's real tabs (no-cors `GET`s, which carry no
//! `Origin` but `Sec-Fetch-Site`).

use crate::support;

use futures::StreamExt;
use herald_core::{Limits, Retention};
use herald_server::ServerSettings;
use herald_server::origin::AllowedOrigins;
use reqwest::Method;
use serde_json::{Value, json};
use support::{StreamPath, TestServer, answer, assert_error, memory};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Request headers, names in lower case.
type Headers = Vec<(String, String)>;
type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const EVIL: &str = "https://evil.example";
const APP: &str = "https://app.example";

/// A server that allows pages of [`APP`] to use the cookie.
async fn server_allowing_app() -> TestServer {
    let settings =
        ServerSettings { allowed_origins: AllowedOrigins::parse_list(APP).unwrap(), ..support::settings() };
    TestServer::with(Limits::default(), settings, memory(Retention::default())).await
}

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_owned(), value.to_owned())
}

fn cookie(token: &str) -> (String, String) {
    header("cookie", &format!("theme=dark; herald_token={token}"))
}

/// `method path` with exactly `headers` (and a JSON `body`, if any): status, headers, JSON body.
async fn call(
    server: &TestServer,
    method: Method,
    path: &str,
    headers: &[(String, String)],
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = server.http.request(method, format!("{}{path}", server.url));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let (status, body) = answer(response).await;
    (status, headers, body)
}

/// The answer's CORS headers: `Access-Control-Allow-Origin` and `-Allow-Credentials`.
fn cors(headers: &reqwest::header::HeaderMap) -> (Option<&str>, Option<&str>) {
    let get = |name: &str| headers.get(name).map(|v| v.to_str().unwrap());
    (get("access-control-allow-origin"), get("access-control-allow-credentials"))
}

fn varies_on_origin(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin"))
}

/// The unread count of `user`, read with the API key.
async fn unread(server: &TestServer, user: &str) -> u64 {
    let (status, body) = server.get(&format!("/v1/users/{user}/inbox/counts")).await;
    assert_eq!(status, 200, "{body}");
    body["counts"]["unread"].as_u64().unwrap()
}

/// A WebSocket handshake on `/v1/ws?{query}` with `headers`: `Ok(101 response headers)` or the
/// refusal's status and JSON body.
async fn ws_handshake(
    server: &TestServer,
    query: &str,
    headers: &[(String, String)],
) -> Result<(Ws, tungstenite::http::HeaderMap), (u16, Value)> {
    let url = format!("{}/v1/ws?{query}", server.url.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => Ok((ws, response.headers().clone())),
        Err(tungstenite::Error::Http(response)) => {
            let body =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap_or(Value::Null);
            Err((response.status().as_u16(), body))
        }
        Err(other) => panic!("handshake failed: {other}"),
    }
}

/// The next text frame as JSON, or `None` if nothing comes within a short wait.
async fn next_frame(ws: &mut Ws) -> Option<Value> {
    loop {
        match tokio::time::timeout(support::EVENT_WAIT, ws.next()).await {
            Ok(Some(Ok(tungstenite::Message::Text(text)))) => return serde_json::from_str(&text).ok(),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_websocket_with_the_cookie_from_another_site_is_refused_before_the_upgrade_and_replays_nothing() {
    let server = TestServer::start().await;
    server.notify_user("alice", json!("secret")).await;
    let token = server.token("alice", Some("s1"));
    let refused = ws_handshake(&server, "last_event_id=0", &[cookie(&token), header("origin", EVIL)]).await;
    let Err(refusal) = refused else { panic!("the handshake from another site was accepted") };
    assert_error(&refusal, 403, "forbidden_origin");
    // Refused before anything was opened: no client of alice's exists.
    assert!(server.present_clients("alice").await.is_empty());
    // `Origin: null` (a sandboxed frame, a `data:` page) is another site too.
    let refused = ws_handshake(&server, "last_event_id=0", &[cookie(&token), header("origin", "null")]).await;
    let Err(refusal) = refused else { panic!("the handshake from `null` was accepted") };
    assert_error(&refusal, 403, "forbidden_origin");
    server.shutdown().await;
}

#[tokio::test]
async fn a_websocket_with_the_cookie_from_the_same_origin_or_an_allowed_one_works() {
    let server = server_allowing_app().await;
    let seq = server.notify_user("alice", json!("hi")).await;
    let token = server.token("alice", Some("s1"));
    let own = server.url.clone();
    for origin in [own.as_str(), APP] {
        let (mut ws, _) =
            ws_handshake(&server, "last_event_id=0", &[cookie(&token), header("origin", origin)])
                .await
                .unwrap_or_else(|refusal| panic!("{origin} refused: {refusal:?}"));
        assert_eq!(next_frame(&mut ws).await.unwrap()["event"], "hello");
        let replayed = next_frame(&mut ws).await.unwrap();
        assert_eq!((replayed["event"].as_str(), replayed["seq"].as_u64()), (Some("notification"), Some(seq)));
    }
    // A bearer token works from any page: another site cannot have it.
    let bearer = header("authorization", &format!("Bearer {token}"));
    let (mut ws, _) = ws_handshake(&server, "", &[bearer, header("origin", EVIL)]).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["event"], "hello");
    let (mut ws, _) =
        ws_handshake(&server, &format!("token={token}"), &[header("origin", EVIL)]).await.unwrap();
    assert_eq!(next_frame(&mut ws).await.unwrap()["event"], "hello");
    server.shutdown().await;
}

on_both_stream_paths! {
    /// 60 no-cors stream requests from another site's page, each with the user's cookie, used
    /// to evict the user's real tab (50 clients per session); now each is refused and the tab
    /// stays.
    async fn cross_site_cookie_streams_are_refused_and_evict_no_one(path: StreamPath) {
        let server = TestServer::start().await.via(path);
        let token = server.token("alice", Some("s1"));
        let (mut tab, _) = server.connect(&token, "").await;
        for fetch_site in ["cross-site", "same-site"] {
            for _ in 0..30 {
                let headers = [cookie(&token), header("sec-fetch-site", fetch_site), header("sec-fetch-mode", "no-cors")];
                let response = server.stream_request_with_headers(path, "last_event_id=0", &headers).await;
                assert_eq!(response.status, 403, "a {fetch_site} stream with the cookie was accepted");
                assert_eq!(response.header("access-control-allow-origin"), None);
                assert_error(&(403, response.json().await), 403, "forbidden_origin");
            }
        }
        // With an `Origin` of another site too.
        let headers = [cookie(&token), header("origin", EVIL), header("sec-fetch-site", "cross-site")];
        let response = server.stream_request_with_headers(path, "", &headers).await;
        assert_eq!(response.status, 403);
        assert_eq!(server.present_clients("alice").await.len(), 1);
        let seq = server.notify_user("alice", json!("still here")).await;
        assert_eq!(tab.durable(seq).await["data"], "still here");
        server.shutdown().await;
    }
}

on_both_stream_paths! {
    /// The same origin (by `Origin` = `Host`, or by `Sec-Fetch-Site: same-origin`), the user
    /// typing the address (`none`), a listed origin (with CORS headers), and a client that is no
    /// browser (neither header) all stream with the cookie.
    async fn cookie_streams_from_allowed_pages_work(path: StreamPath) {
        let server = server_allowing_app().await.via(path);
        let token = server.token("alice", Some("s1"));
        let own = server.url.clone();
        let cases: [(&str, Headers, Option<&str>); 5] = [
            ("own origin", vec![header("origin", &own)], None),
            ("same-origin, no Origin", vec![header("sec-fetch-site", "same-origin")], None),
            ("typed address", vec![header("sec-fetch-site", "none")], None),
            ("listed origin", vec![header("origin", APP), header("sec-fetch-site", "cross-site")], Some(APP)),
            ("no browser", vec![], None),
        ];
        for (case, mut headers, cors) in cases {
            headers.push(cookie(&token));
            let response = server.stream_request_with_headers(path, "", &headers).await;
            assert_eq!(response.status, 200, "{case}");
            assert_eq!(response.header("access-control-allow-origin"), cors, "{case}");
            assert_eq!(response.header("access-control-allow-credentials"), cors.map(|_| "true"), "{case}");
            assert_eq!(response.header("vary"), Some("origin"), "{case}");
            assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{case}");
            let mut sse = support::Sse::from_stream(response.body);
            assert_eq!(sse.next().await.unwrap().event, "hello", "{case}");
        }
        // A bearer token from another site's page streams, without CORS headers.
        let headers = [
            header("authorization", &format!("Bearer {token}")),
            header("origin", EVIL),
            header("sec-fetch-site", "cross-site"),
        ];
        let response = server.stream_request_with_headers(path, "", &headers).await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("access-control-allow-origin"), None);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn poll_and_inbox_with_the_cookie_from_another_site_are_refused_and_change_nothing() {
    let server = TestServer::start().await;
    let seq = server.notify_user("alice", json!("unread")).await;
    let token = server.token("alice", Some("s1"));
    let from_evil = [cookie(&token), header("origin", EVIL), header("sec-fetch-site", "cross-site")];
    let no_cors = [cookie(&token), header("sec-fetch-site", "cross-site")];
    let mark = json!({ "seqs": [seq], "as": "read" });
    for headers in [&from_evil[..], &no_cors[..]] {
        for (method, path, body) in [
            (Method::GET, "/v1/poll?timeout=0&after=0", None),
            (Method::GET, "/v1/inbox", None),
            (Method::GET, "/v1/inbox/counts", None),
            (Method::POST, "/v1/inbox/mark", Some(mark.clone())),
            (Method::DELETE, &format!("/v1/inbox/{seq}") as &str, None),
            (Method::DELETE, &format!("/v1/inbox?all_up_to={seq}"), None),
        ] {
            let (status, answer_headers, body) = call(&server, method.clone(), path, headers, body).await;
            assert_error(&(status, body), 403, "forbidden_origin");
            assert_eq!(cors(&answer_headers), (None, None), "{method} {path}");
        }
    }
    assert_eq!(unread(&server, "alice").await, 1);
    assert_eq!(server.stored("alice").await.len(), 1);
    assert!(server.present_clients("alice").await.is_empty(), "a refused poll registered a client");
    server.shutdown().await;
}

#[tokio::test]
async fn poll_and_inbox_from_an_allowed_origin_work_with_cors_headers() {
    let server = server_allowing_app().await;
    let seq = server.notify_user("alice", json!("unread")).await;
    let token = server.token("alice", Some("s1"));
    let from_app = [cookie(&token), header("origin", APP), header("sec-fetch-site", "cross-site")];
    let (status, headers, body) =
        call(&server, Method::GET, "/v1/poll?timeout=0&after=0", &from_app, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["notifications"][0]["seq"], seq);
    assert_eq!(cors(&headers), (Some(APP), Some("true")));
    assert!(varies_on_origin(&headers));
    let mark = json!({ "seqs": [seq], "as": "read" });
    let (status, headers, body) = call(&server, Method::POST, "/v1/inbox/mark", &from_app, Some(mark)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(cors(&headers), (Some(APP), Some("true")));
    assert_eq!(unread(&server, "alice").await, 0);
    // An error answer to a listed origin carries them too, so its page can read why.
    let (status, headers, _) = call(&server, Method::GET, "/v1/inbox?limit=x", &from_app, None).await;
    assert_eq!((status, cors(&headers)), (400, (Some(APP), Some("true"))));
    // Another origin gets no CORS headers, even on a request that needs none (a bearer token).
    let bearer = [header("authorization", &format!("Bearer {token}")), header("origin", EVIL)];
    let (status, headers, _) = call(&server, Method::GET, "/v1/inbox/counts", &bearer, None).await;
    assert_eq!((status, cors(&headers)), (200, (None, None)));
    assert!(varies_on_origin(&headers));
    server.shutdown().await;
}

#[tokio::test]
async fn preflights_answer_listed_origins_only() {
    let server = server_allowing_app().await;
    let preflight = |origin: &'static str| {
        [
            header("origin", origin),
            header("access-control-request-method", "POST"),
            header("access-control-request-headers", "content-type,x-herald-client,authorization"),
        ]
    };
    let (status, headers, _) = call(&server, Method::OPTIONS, "/v1/inbox/mark", &preflight(APP), None).await;
    assert_eq!(status, 204);
    assert_eq!(cors(&headers), (Some(APP), Some("true")));
    let get = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_ascii_lowercase();
    for method in ["get", "post", "delete"] {
        assert!(get("access-control-allow-methods").contains(method), "{headers:?}");
    }
    for name in ["authorization", "content-type", "last-event-id", "x-herald-client"] {
        assert!(get("access-control-allow-headers").contains(name), "{headers:?}");
    }
    let max_age: u64 = get("access-control-max-age").parse().unwrap();
    assert!((1..=7200).contains(&max_age), "{max_age}");
    assert!(varies_on_origin(&headers));
    // Any route: the preflight is answered before routing.
    let (status, _, _) = call(&server, Method::OPTIONS, "/v1/stream", &preflight(APP), None).await;
    assert_eq!(status, 204);
    let (status, headers, body) =
        call(&server, Method::OPTIONS, "/v1/inbox/mark", &preflight(EVIL), None).await;
    assert_error(&(status, body), 403, "forbidden_origin");
    assert_eq!(cors(&headers), (None, None));
    server.shutdown().await;

    // With no origin listed, no preflight succeeds.
    let server = TestServer::start().await;
    let (status, headers, _) = call(&server, Method::OPTIONS, "/v1/inbox/mark", &preflight(APP), None).await;
    assert_eq!((status, cors(&headers)), (403, (None, None)));
    server.shutdown().await;
}

#[tokio::test]
async fn every_answer_says_nosniff() {
    let server = TestServer::start().await;
    for path in ["/healthz", "/herald.js", "/v1/poll", "/no/such/route"] {
        let (_, headers, _) = call(&server, Method::GET, path, &[], None).await;
        assert_eq!(
            headers.get("x-content-type-options").map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
        // No origin is listed: nothing varies on it.
        assert!(!varies_on_origin(&headers), "{path}");
    }
    let response = server.stream_request_with_headers(StreamPath::Lean, "", &[]).await;
    assert_eq!((response.status, response.header("x-content-type-options")), (401, Some("nosniff")));
    server.shutdown().await;
}
