//! Built-in TLS: HTTPS with HTTP/2 for clients that offer it (every tab of a browser on one
//! connection), HTTP/1.1 (lean stream path, WebSocket) for the others, and certificate reloads.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use herald_core::{Limits, Retention};
use herald_server::tls::{CertificateReloader, TlsFiles};
use herald_server::{Herald, RunningServer};
use serde_json::{Value, json};
use support::{API_KEY, SECRET, Sse, memory, token_with_ttl};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files into `dir`
/// under `name`; returns the files and the certificate (DER) for the client's trust store.
fn write_certificate(dir: &Path, name: &str) -> (TlsFiles, reqwest::Certificate, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("rcgen makes a certificate");
    let files = TlsFiles { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) };
    std::fs::write(&files.cert, generated.cert.pem()).unwrap();
    std::fs::write(&files.key, generated.signing_key.serialize_pem()).unwrap();
    let der = generated.cert.der().to_vec();
    (files, reqwest::Certificate::from_der(&der).unwrap(), der)
}

struct TlsServer {
    url: String,
    addr: std::net::SocketAddr,
    server: Option<RunningServer>,
    reloader: Arc<CertificateReloader>,
}

impl TlsServer {
    async fn start(files: TlsFiles) -> Self {
        let reloader = CertificateReloader::load(files).expect("the certificate loads");
        let herald = Herald::builder(memory(Retention::default()), SECRET, API_KEY)
            .limits(Limits::default())
            .settings(support::settings())
            .build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = herald_server::start_with_tls(herald, listener, Some(reloader.clone())).unwrap();
        let addr = server.addr;
        Self { url: format!("https://localhost:{}", addr.port()), addr, server: Some(server), reloader }
    }

    /// A client that trusts `certificate` and resolves `localhost` to the server.
    fn client(&self, certificate: &reqwest::Certificate, http1_only: bool) -> reqwest::Client {
        let builder = reqwest::Client::builder()
            .add_root_certificate(certificate.clone())
            .tls_built_in_root_certs(false)
            .resolve("localhost", self.addr)
            .timeout(Duration::from_secs(20));
        let builder = if http1_only { builder.http1_only() } else { builder };
        builder.build().unwrap()
    }

    async fn publish(&self, client: &reqwest::Client, user: &str, data: Value) -> u64 {
        let response = client
            .post(format!("{}/v1/notify", self.url))
            .bearer_auth(API_KEY)
            .json(&json!({ "to": { "user": user }, "data": data }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["notifications"][0]["seq"].as_u64().unwrap()
    }

    async fn shutdown(mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
    }
}

fn token(user: &str) -> String {
    token_with_ttl(user, Some("s1"), Duration::from_secs(3600))
}

/// Established TCP connections whose local port is `port`, from /proc/net/tcp (the server's
/// side of every connection to it, whoever made it).
fn established_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields[3] == "01"
        })
        .count()
}

#[tokio::test]
async fn https_offers_http2_and_still_speaks_http11() {
    let dir = tempfile::tempdir().unwrap();
    let (files, certificate, _) = write_certificate(dir.path(), "a");
    let server = TlsServer::start(files).await;

    let h2 = server.client(&certificate, false).get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!((h2.status().as_u16(), h2.version()), (200, reqwest::Version::HTTP_2));
    let h1 = server.client(&certificate, true).get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!((h1.status().as_u16(), h1.version()), (200, reqwest::Version::HTTP_11));
    server.shutdown().await;
}

/// The reason for HTTP/2: a browser allows six HTTP/1.1 connections per host, so its seventh
/// tab would never connect. Over HTTP/2 ten tabs' streams share one connection and all deliver.
#[tokio::test]
async fn ten_streams_share_one_http2_connection_and_all_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let (files, certificate, _) = write_certificate(dir.path(), "a");
    let server = TlsServer::start(files).await;
    let browser = server.client(&certificate, false);

    let mut tabs = Vec::new();
    for _ in 0..10 {
        let response = browser
            .get(format!("{}/v1/stream", server.url))
            .bearer_auth(token("alice"))
            .send()
            .await
            .unwrap();
        assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_2));
        let mut tab = Sse::new(response);
        assert_eq!(tab.next().await.unwrap().event, "hello");
        tabs.push(tab);
    }
    assert_eq!(established_to(server.addr.port()), 1, "every stream on one connection");

    let publisher = server.client(&certificate, false);
    let seq = server.publish(&publisher, "alice", json!({"n": 1})).await;
    for tab in &mut tabs {
        assert_eq!(tab.durable(seq).await["data"], json!({"n": 1}));
    }
    drop(tabs);
    server.shutdown().await;
}

/// Over HTTP/1.1, a stream that opens its connection takes the lean path, TLS or not; it must
/// deliver and end with `closed: shutdown` like a plain one.
#[tokio::test]
async fn a_lean_stream_over_tls_delivers_and_closes_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (files, certificate, _) = write_certificate(dir.path(), "a");
    let server = TlsServer::start(files).await;
    let client = server.client(&certificate, true);
    let response =
        client.get(format!("{}/v1/stream", server.url)).bearer_auth(token("bob")).send().await.unwrap();
    assert_eq!((response.status().as_u16(), response.version()), (200, reqwest::Version::HTTP_11));
    let mut stream = Sse::new(response);
    assert_eq!(stream.next().await.unwrap().event, "hello");
    let seq = server.publish(&server.client(&certificate, false), "bob", json!("over tls")).await;
    assert_eq!(stream.durable(seq).await["data"], json!("over tls"));
    server.shutdown().await;
    stream.expect_closed("shutdown").await;
}

#[tokio::test]
async fn websocket_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (files, certificate, der) = write_certificate(dir.path(), "a");
    let server = TlsServer::start(files).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der)).unwrap();
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/v1/ws?token={}", server.addr.port(), token("carol"));
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.expect("WebSocket handshake over TLS");
    let hello: Value = serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(hello["event"], "hello");
    let seq = server.publish(&server.client(&certificate, false), "carol", json!(1)).await;
    let event: Value = serde_json::from_str(ws.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!((event["event"].as_str(), event["seq"].as_u64()), (Some("notification"), Some(seq)));
    let _ = ws.close(None).await;
    server.shutdown().await;
}

/// A reload swaps the certificate for new connections; a reload from files that do not fit
/// together keeps the one in use (a renewal that wrote the key but not yet the certificate).
#[tokio::test]
async fn a_reload_swaps_the_certificate_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let (files, first, _) = write_certificate(dir.path(), "live");
    let server = TlsServer::start(files.clone()).await;
    let healthz = |certificate: &reqwest::Certificate| {
        let client = server.client(certificate, false);
        let url = format!("{}/healthz", server.url);
        async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
    };
    assert_eq!(healthz(&first).await.unwrap(), 200);

    // Only the key renewed: the pair does not match, the reload is refused, the old one stays.
    let (next_files, second, _) = write_certificate(dir.path(), "next");
    std::fs::copy(&next_files.key, &files.key).unwrap();
    let refused = server.reloader.reload().expect_err("a key that does not match its certificate");
    assert!(refused.to_string().contains("does not match"), "{refused}");
    assert_eq!(healthz(&first).await.unwrap(), 200);

    // Both renewed: new connections get the new certificate; the old one is no longer trusted.
    std::fs::copy(&next_files.cert, &files.cert).unwrap();
    server.reloader.reload().expect("the renewed pair loads");
    assert_eq!(healthz(&second).await.unwrap(), 200);
    assert!(healthz(&first).await.is_err(), "the old certificate is no longer served");
    server.shutdown().await;
}

/// Plain HTTP sent to the TLS port, or a client that opens a connection and never completes
/// the handshake: closed, not held.
#[tokio::test]
async fn plain_http_on_the_tls_port_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _, _) = write_certificate(dir.path(), "a");
    let server = TlsServer::start(files).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    socket.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut buffer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "the server closes a connection that is not TLS");
    assert!(!String::from_utf8_lossy(&buffer).contains("\"ok\""), "no plain answer over the TLS port");
    server.shutdown().await;
}

#[test]
fn unusable_files_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let missing = TlsFiles { cert: dir.path().join("none.crt"), key: dir.path().join("none.key") };
    assert!(CertificateReloader::load(missing).unwrap_err().to_string().contains("cannot read"));
    let (files, _, _) = write_certificate(dir.path(), "a");
    std::fs::write(&files.key, "not a key").unwrap();
    assert!(CertificateReloader::load(files.clone()).unwrap_err().to_string().contains("no PEM private key"));
    std::fs::write(&files.cert, "").unwrap();
    assert!(CertificateReloader::load(files).unwrap_err().to_string().contains("no PEM certificate"));
}
