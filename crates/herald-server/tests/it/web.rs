//! What the server gives browsers besides the transports: `/herald.js` (and its types and its
//! service worker), and the
//! dev-mode demo at `/demo` with its dev-only endpoints, which exist only when the demo is on.

use crate::support;

use herald_server::ServerSettings;
use serde_json::{Value, json};
use support::TestServer;

fn demo_settings() -> ServerSettings {
    ServerSettings { dev_mode: true, demo: true, ..support::settings() }
}

#[tokio::test]
async fn herald_js_is_served_with_its_type_and_an_etag() {
    let server = TestServer::start().await;
    for (path, content_type, needle) in [
        ("/herald.js", "text/javascript; charset=utf-8", "export class Herald"),
        ("/herald.d.ts", "application/typescript; charset=utf-8", "export declare class Herald"),
        ("/herald-sw.js", "text/javascript; charset=utf-8", "self.addEventListener('push'"),
    ] {
        let response = server.http.get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(headers["cache-control"], "no-cache");
        let etag = headers["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "{etag}");
        let body = response.text().await.unwrap();
        assert!(body.contains(needle), "{path}");

        // Revalidation: 304 with no body when the ETag matches, 200 otherwise.
        let response = server
            .http
            .get(format!("{}{path}", server.url))
            .header("if-none-match", format!("\"other\", {etag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 304);
        assert_eq!(response.headers()["etag"], etag.as_str());
        assert!(response.bytes().await.unwrap().is_empty());
        let response = server
            .http
            .get(format!("{}{path}", server.url))
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), body);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn no_demo_unless_it_is_on_in_dev_mode() {
    for settings in [
        support::settings(),
        ServerSettings { demo: true, ..support::settings() },
        ServerSettings { dev_mode: true, ..support::settings() },
    ] {
        let server = TestServer::with_settings(settings.clone()).await;
        for path in ["/demo", "/demo/demo.css", "/demo/presence/alice"] {
            let response = server.http.get(format!("{}{path}", server.url)).send().await.unwrap();
            assert_eq!(response.status(), 404, "{path} with {settings:?}");
        }
        let response = server
            .http
            .post(format!("{}/demo/token", server.url))
            .json(&json!({ "user": "alice" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{settings:?}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn the_demo_page_and_its_stylesheet() {
    let server = TestServer::with_settings(demo_settings()).await;
    let response = server.http.get(format!("{}/demo", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/html; charset=utf-8");
    // Security headers: no framing, no referrer, no sniffing, and a CSP that allows the page's
    // own inline module (by its hash) and this server only. The browser test runs the demo
    // under it.
    let headers = response.headers().clone();
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    let csp = headers["content-security-policy"].to_str().unwrap();
    let page = response.text().await.unwrap();
    let script_start = page.find("<script type=\"module\">").unwrap() + "<script type=\"module\">".len();
    let script = &page[script_start..script_start + page[script_start..].find("</script>").unwrap()];
    let hash = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()))
    };
    for directive in [
        "default-src 'none'",
        &format!("script-src 'self' 'sha256-{hash}'"),
        "connect-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.split(';').any(|d| d.trim() == directive), "{directive} not in {csp}");
    }
    assert!(page.contains("import { Herald } from '/herald.js'"));
    assert!(page.contains("dev-mode demo"), "the page says it is a dev-mode demo");
    let response = server.http.get(format!("{}/demo/demo.css", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/css; charset=utf-8");
    server.shutdown().await;
}

async fn post(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = server.http.post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    support::answer(response).await
}

#[tokio::test]
async fn demo_tokens_publishing_and_presence() {
    let server = TestServer::with_settings(demo_settings()).await;
    let (status, body) = post(&server, "/demo/token", json!({ "user": "alice", "session": "laptop" })).await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    let expires_at = body["expires_at"].as_u64().unwrap();
    assert!(expires_at > support::now_unix() + 3000, "an hour by default");
    let (mut sse, hello) = server.connect(&token, "").await;
    assert_eq!((hello["user"].as_str(), hello["session"].as_str()), (Some("alice"), Some("laptop")));

    let (status, body) = post(
        &server,
        "/demo/notify",
        json!({ "to": { "user": "alice", "session": "laptop" }, "data": { "text": "hi" } }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["delivered"], 1);
    assert_eq!(sse.notification().await.data["data"], json!({ "text": "hi" }));

    let response = server.http.get(format!("{}/demo/presence/alice", server.url)).send().await.unwrap();
    let presence: Value = response.json().await.unwrap();
    assert_eq!(presence["sessions"][0]["session"], "laptop", "{presence}");
    assert_eq!(presence["sessions"][0]["clients"][0]["transport"], "sse");

    // Same validation as the real endpoints.
    assert_eq!(post(&server, "/demo/notify", json!({ "to": {} })).await.0, 400);
    assert_eq!(post(&server, "/demo/token", json!({ "user": "" })).await.0, 400);
    assert_eq!(post(&server, "/demo/token", json!({ "user": "a", "ttl_secs": 0 })).await.0, 400);
    assert_eq!(post(&server, "/demo/token", json!({ "user": "a", "extra": 1 })).await.0, 400);
    let (status, body) = post(&server, "/demo/token", json!({ "user": "a", "ttl_secs": 20 })).await;
    assert_eq!(status, 200);
    assert!(body["expires_at"].as_u64().unwrap() <= support::now_unix() + 21);
    drop(sse);
    server.shutdown().await;
}

#[tokio::test]
async fn the_demo_refuses_other_hosts_and_cross_site_posts() {
    let server = TestServer::with_settings(demo_settings()).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    // DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends `Host: evil.example`.
    for host in ["evil.example", "evil.example:7300", "192.168.1.5:7300"] {
        let response =
            server.http.get(format!("{}/demo", server.url)).header("host", host).send().await.unwrap();
        assert_eq!(response.status(), 403, "{host}");
        let response = server
            .http
            .post(format!("{}/demo/token", server.url))
            .header("host", host)
            .json(&json!({ "user": "alice" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{host}");
    }
    for host in ["localhost:7300", "127.0.0.1", "[::1]:80"] {
        let response =
            server.http.get(format!("{}/demo", server.url)).header("host", host).send().await.unwrap();
        assert_eq!(response.status(), 200, "{host}");
    }
    // A cross-site POST carries another Origin.
    for (origin, status) in
        [("http://evil.example", 403), ("null", 403), (&format!("http://{addr}") as &str, 200)]
    {
        let response = server
            .http
            .post(format!("{}/demo/notify", server.url))
            .header("origin", origin)
            .json(&json!({ "to": { "user": "alice" } }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{origin}");
    }
    server.shutdown().await;
}
