//! Operating `herald serve`, as processes: no secret, token or admin session in its logs
//! (debug level, both formats) nor echoed by an error, the access log and its request ids (one
//! on every line), the options from a config file (precedence flag > environment > file >
//! default, refusals), and `herald --version` (the commit, from `build/commit.rs`, which is also
//! tested on git repositories of its own).

#[path = "../build/commit.rs"]
mod commit;
#[allow(dead_code)] // the stream helpers are for the other process tests
mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Server, free_port, herald};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const WAIT: Duration = Duration::from_secs(20);
const STOP_WAIT: Duration = Duration::from_secs(15);

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// SIGTERM, the exit awaited (a graceful stop must succeed), and everything it printed.
async fn stop(mut server: Server) -> String {
    let pid = libc::pid_t::try_from(server.child.id()).unwrap();
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is a child not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + STOP_WAIT;
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit within {STOP_WAIT:?}:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", server.stderr());
    // Reaped already: this only joins the stderr reader.
    server.kill9()
}

fn mint(secret: &str, user: &str, session: &str) -> String {
    herald_client::mint_token(secret.as_bytes(), user, Some(session), Duration::from_secs(600)).unwrap()
}

/// Opens a WebSocket by hand (the handshake is all this test needs) and returns the answer's
/// head, the connection kept open until it is dropped.
async fn websocket(port: u16, path: &str) -> (String, tokio::net::TcpStream) {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tokio::time::timeout(WAIT, socket.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), socket)
}

/// Reads an SSE answer until `needle` appears.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    while !text.contains(needle) {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.unwrap().unwrap();
        let Some(chunk) = chunk else { panic!("the stream ended before {needle:?}: {text}") };
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// Whether `line` of `herald serve`'s stderr is an access line (target `herald::access`). JSON
/// lines name their target; text lines do not (`--log-format text` leaves targets out), so an
/// access line is told by its message, `request`, or by its fields, `method=` and `status=`,
/// so that a line that lost its request id is still found.
fn is_access_line(format: &str, line: &str) -> bool {
    if format == "json" {
        return serde_json::from_str::<Value>(line).is_ok_and(|line| line["target"] == "herald::access");
    }
    line.split_whitespace().nth(2) == Some("request")
        || (line.contains(" method=") && line.contains(" status="))
}

/// The request id of an access line, if it has a non-empty one.
fn request_id(format: &str, line: &str) -> Option<String> {
    let id = if format == "json" {
        serde_json::from_str::<Value>(line).ok()?["request_id"].as_str()?.to_owned()
    } else {
        let rest = line.split_once(" request_id=")?.1;
        rest.split(' ').next()?.trim_matches('"').to_owned()
    };
    (!id.is_empty()).then_some(id)
}

/// Every way a credential reaches the server, good and bad, on a server logging at debug
/// level: subscriber tokens, the API key, the admin page's sign-in (a wrong key, the right one)
/// and its session cookie, the token secret and the VAPID private key. None may appear
/// anywhere on its stderr, and no error answer may quote the token of its request; every access
/// line carries a request id. Fails if the access log kept the query string, if a header, a
/// body or an error message were logged, if an error echoed `?token=`, if an access line lost
/// its request id.
#[tokio::test]
async fn no_secret_or_token_is_ever_logged_nor_echoed() {
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let secret = format!("SECRET-{format}-0123456789abcdef0123456789abcdef");
        let api_key = format!("APIKEY-{format}-fedcba9876543210");
        let vapid = herald_server::push::VapidKey::generate("mailto:ops@example.com").unwrap();
        let vapid_private_key = vapid.private_key();
        let mut command = herald(dir.path());
        command
            .args(["serve", "--memory", "--listen", &format!("127.0.0.1:{port}"), "--log-format", format])
            .env("HERALD_SECRET", &secret)
            .env("HERALD_API_KEY", &api_key)
            .env("HERALD_VAPID_PRIVATE_KEY", &vapid_private_key)
            .env("HERALD_VAPID_SUBJECT", vapid.subject())
            .env("RUST_LOG", "debug");
        let mut server = Server::spawn(command, url(port));
        server.wait_up(Instant::now() + WAIT).await.unwrap();
        let http = reqwest::Client::new();
        let base = url(port);
        // The VAPID key is the one in use: its public half is served.
        let served: Value =
            http.get(format!("{base}/v1/push/vapid-public-key")).send().await.unwrap().json().await.unwrap();
        assert_eq!(served, serde_json::json!({ "public_key": vapid.public_key() }));
        let sse_query_token = mint(&secret, "alice", "sse-query");
        let sse_header_token = mint(&secret, "alice", "sse-header");
        let ws_token = mint(&secret, "bob", "ws");
        let poll_token = mint(&secret, "carol", "poll");
        let cookie_token = mint(&secret, "dave", "cookie");
        let foreign_token = mint("another-secret-0123456789abcdef0123456789", "eve", "bad");
        let garbage_token = "GARBAGE-TOKEN-not-a-jwt-0123456789";
        let bad_key = "BAD-API-KEY-0123456789";
        let bad_admin_key = "BAD-ADMIN-KEY-0123456789";
        let mut tokens: Vec<&str> = vec![
            &sse_query_token,
            &sse_header_token,
            &ws_token,
            &poll_token,
            &cookie_token,
            &foreign_token,
            garbage_token,
            bad_key,
            bad_admin_key,
        ];

        // SSE with ?token= (the lean path), and with the header, resuming with Last-Event-ID.
        let mut by_query = http
            .get(format!("{base}/v1/stream?token={sse_query_token}"))
            .header("x-request-id", "sse-by-query-1")
            .send()
            .await
            .unwrap();
        assert_eq!(by_query.status(), 200);
        assert_eq!(by_query.headers()["x-request-id"], "sse-by-query-1");
        read_until(&mut by_query, "event: hello").await;
        let mut by_header = http
            .get(format!("{base}/v1/stream"))
            .bearer_auth(&sse_header_token)
            .header("last-event-id", "0")
            .send()
            .await
            .unwrap();
        assert_eq!(by_header.status(), 200);
        read_until(&mut by_header, "event: hello").await;
        // A WebSocket with ?token=.
        let (ws_head, _ws) = websocket(port, &format!("/v1/ws?token={ws_token}")).await;
        assert!(ws_head.starts_with("HTTP/1.1 101"), "{ws_head}");
        // A publish with the API key, seen on the stream.
        let published = http
            .post(format!("{base}/v1/notify"))
            .bearer_auth(&api_key)
            .json(&serde_json::json!({"to": {"user": "alice"}, "data": {"n": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(published.status(), 200);
        read_until(&mut by_query, "event: notification").await;
        // A poll with ?token=, and one with the cookie.
        let poll = http.get(format!("{base}/v1/poll?token={poll_token}&timeout=0")).send().await.unwrap();
        assert_eq!(poll.status(), 200, "{:?}", poll.text().await);
        let poll = http
            .get(format!("{base}/v1/poll?timeout=0"))
            .header("cookie", format!("herald_token={cookie_token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(poll.status(), 200, "{:?}", poll.text().await);

        // Refusals, none of which may quote the token or key it was sent.
        let refusals = [
            (format!("{base}/v1/stream?token={foreign_token}"), None, 401, foreign_token.as_str()),
            (format!("{base}/v1/stream?token={garbage_token}"), None, 401, garbage_token),
            (format!("{base}/v1/poll?token={garbage_token}&timeout=0"), None, 401, garbage_token),
            (format!("{base}/v1/stream"), Some(garbage_token), 401, garbage_token),
            (
                format!("{base}/v1/stream?token={poll_token}&last_event_id=nope"),
                None,
                400,
                poll_token.as_str(),
            ),
            (format!("{base}/v1/poll?token={poll_token}&timeout=soon"), None, 400, poll_token.as_str()),
            (format!("{base}/v1/poll?token={poll_token}&tokne=x"), None, 400, poll_token.as_str()),
            (
                format!("{base}/v1/stream?token={poll_token}&token={poll_token}"),
                None,
                401,
                poll_token.as_str(),
            ),
        ];
        for (url, bearer, status, sent) in &refusals {
            let mut request = http.get(url);
            if let Some(bearer) = bearer {
                request = request.bearer_auth(bearer);
            }
            let answer = request.send().await.unwrap();
            assert_eq!(answer.status().as_u16(), *status, "{url}");
            let body = answer.text().await.unwrap();
            assert!(body.contains("\"error\""), "{url}: {body}");
            assert!(!body.contains(sent), "{url}: the error quotes the token: {body}");
        }
        let refused = http
            .post(format!("{base}/v1/notify"))
            .bearer_auth(bad_key)
            .json(&serde_json::json!({"to": {"user": "alice"}, "data": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401);
        let body = refused.text().await.unwrap();
        assert!(!body.contains(bad_key) && !body.contains(&api_key), "{body}");

        // The admin page: a wrong key refused, the right one gives a session cookie, which
        // sends a test notification (seen on alice's stream).
        let admin = server.admin_url(WAIT).await;
        let sign_in = |key: &str| {
            http.post(format!("{admin}/admin/sign-in"))
                .header("x-herald-admin", "1")
                .json(&serde_json::json!({ "key": key }))
                .send()
        };
        let refused = sign_in(bad_admin_key).await.unwrap();
        assert_eq!(refused.status(), 401);
        let body = refused.text().await.unwrap();
        assert!(!body.contains(bad_admin_key) && !body.contains(&api_key), "{body}");
        let signed_in = sign_in(&api_key).await.unwrap();
        assert_eq!(signed_in.status(), 204);
        let set_cookie = signed_in.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let session = cookie.strip_prefix("herald_admin=").expect("the admin session cookie").to_owned();
        assert!(session.len() >= 32, "{set_cookie}");
        let notified = http
            .post(format!("{admin}/admin/api/users/alice/notify"))
            .header("x-herald-admin", "1")
            .header("cookie", &cookie)
            .json(&serde_json::json!({ "text": "from the admin page" }))
            .send()
            .await
            .unwrap();
        assert_eq!(notified.status(), 200, "{:?}", notified.text().await);
        read_until(&mut by_query, "from the admin page").await;
        drop((by_query, by_header));

        let stderr = stop(server).await;
        tokens.push(&secret);
        tokens.push(&api_key);
        tokens.push(&vapid_private_key);
        tokens.push(&session);
        for credential in &tokens {
            assert!(!stderr.contains(credential), "{format}: stderr holds {credential:?}:\n{stderr}");
            // Not even a piece of it: a token's signature (its last part) is what makes it work.
            if let Some(signature) = credential.rsplit('.').next().filter(|s| s.len() >= 20) {
                assert!(!stderr.contains(signature), "{format}: stderr holds a token's signature:\n{stderr}");
            }
        }
        // The admin page's audit lines: each sign-in and the action, with the operator's address.
        for (what, also) in [
            ("admin sign-in refused", "invalid_api_key"),
            ("admin signed in", "127.0.0.1"),
            ("admin sent a test notification", "alice"),
        ] {
            assert!(
                stderr
                    .lines()
                    .any(|line| line.contains(what) && line.contains("127.0.0.1") && line.contains(also)),
                "{format}: no audit line {what:?} with the peer and {also:?}:\n{stderr}"
            );
        }
        let access: Vec<&str> = stderr.lines().filter(|line| is_access_line(format, line)).collect();
        // The 16 requests above to the public port (the admin port has no access log), and
        // the start's health checks.
        assert!(access.len() >= 16, "{format}: only {} access lines:\n{stderr}", access.len());
        for line in &access {
            assert!(
                request_id(format, line).is_some(),
                "{format}: an access line without a request id: {line}"
            );
        }
        for path in ["/v1/stream", "/v1/ws", "/v1/poll", "/v1/notify"] {
            assert!(
                access.iter().any(|line| line.contains(path)),
                "{format}: no access line for {path}:\n{stderr}"
            );
        }
        assert!(
            access.iter().any(|line| request_id(format, line).as_deref() == Some("sse-by-query-1")),
            "{format}: the client's request id:\n{stderr}"
        );
        if format == "json" {
            for line in stderr.lines().filter(|line| line.starts_with('{')) {
                serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            }
            let line = access.iter().find(|line| line.contains("sse-by-query-1")).unwrap();
            let line: Value = serde_json::from_str(line).unwrap();
            assert_eq!(line["target"], "herald::access");
            assert_eq!(line["method"], "GET");
            assert_eq!(line["path"], "/v1/stream");
            assert_eq!(line["status"], 200);
            assert_eq!(line["client"], "127.0.0.1");
            assert!(line["duration_ms"].is_number(), "{line}");
        } else {
            assert!(
                access
                    .iter()
                    .any(|line| line.contains("status=401") && line.contains("error=\"invalid_token\"")
                        || line.contains("status=401") && line.contains("error=invalid_token")),
                "{stderr}"
            );
        }
    }
}

/// `--access-log off`: no access line and no `X-Request-Id`; `RUST_LOG=herald::access=off`
/// keeps the id but silences the lines. Fails if either switch is ignored.
#[tokio::test]
async fn the_access_log_turns_off() {
    for (switch, env_filter, expect_id) in
        [("off", None, false), ("on", Some("info,herald::access=off"), true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = herald(dir.path());
        command.args(["serve", "--memory", "--listen", &format!("127.0.0.1:{port}"), "--access-log", switch]);
        if let Some(filter) = env_filter {
            command.env("RUST_LOG", filter);
        }
        let mut server = Server::spawn(command, url(port));
        server.wait_up(Instant::now() + WAIT).await.unwrap();
        let answer = reqwest::get(format!("{}/healthz", url(port))).await.unwrap();
        assert_eq!(answer.headers().contains_key("x-request-id"), expect_id, "--access-log {switch}");
        let stream = reqwest::get(format!("{}/v1/stream", url(port))).await.unwrap();
        assert_eq!(stream.status(), 401);
        assert_eq!(stream.headers().contains_key("x-request-id"), expect_id, "--access-log {switch}");
        let stderr = stop(server).await;
        assert!(!stderr.contains("request_id"), "--access-log {switch}, RUST_LOG={env_filter:?}:\n{stderr}");
    }
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("herald.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// The node id `/healthz` names, and the address the banner says it listens on.
async fn node_and_address(command: Command, port: u16) -> (String, String) {
    let mut server = Server::spawn(command, url(port));
    server.wait_up(Instant::now() + WAIT).await.unwrap();
    let health: Value = reqwest::get(format!("{}/healthz", url(port))).await.unwrap().json().await.unwrap();
    let stderr = stop(server).await;
    let listening = stderr
        .lines()
        .find_map(|l| l.strip_prefix("herald: listening on "))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_owned();
    (health["node"].as_str().unwrap().to_owned(), listening)
}

/// One file, then the environment over it, then a flag over the environment, seen in what the
/// server does: its node id in `/healthz` and its address. Fails if the file is ignored or if
/// the precedence is wrong anywhere.
#[tokio::test]
async fn config_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port) = (free_port(), free_port());
    let config = write_config(
        dir.path(),
        &format!(
            "# every kind of value\nlisten = \"127.0.0.1:{file_port}\"\nnode-id = \"file-node\"\nmemory = true\n\
             retention-days = 7\ntrusted-proxies = [\"10.0.0.0/8\"]\nsecret = \"file-secret-0123456789abcdef0123456789\"\n\
             api-key = \"file-key\"\n"
        ),
    );
    // The file alone (named by the variable this time).
    let mut command = herald(dir.path());
    command.arg("serve").env("HERALD_CONFIG", &config);
    let (node, address) = node_and_address(command, file_port).await;
    assert_eq!((node.as_str(), address.as_str()), ("file-node", url(file_port).as_str()));
    // The environment over the file.
    let mut command = herald(dir.path());
    command.args(["serve", "--config"]).arg(&config).env("HERALD_NODE_ID", "env-node");
    let (node, address) = node_and_address(command, file_port).await;
    assert_eq!((node.as_str(), address.as_str()), ("env-node", url(file_port).as_str()));
    // A flag over the environment, and the environment over the file for the address.
    let mut command = herald(dir.path());
    command
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--node-id", "flag-node"])
        .env("HERALD_NODE_ID", "env-node")
        .env("HERALD_LISTEN", format!("127.0.0.1:{env_port}"));
    let (node, address) = node_and_address(command, env_port).await;
    assert_eq!((node.as_str(), address.as_str()), ("flag-node", url(env_port).as_str()));
    // The file's credentials are in use: its API key publishes.
    let mut command = herald(dir.path());
    command.args(["serve", "--config"]).arg(&config);
    let mut server = Server::spawn(command, url(file_port));
    server.wait_up(Instant::now() + WAIT).await.unwrap();
    let answer = herald_client::Publisher::new(&url(file_port), "file-key")
        .unwrap()
        .publish(&herald_client::PublishRequest::new(herald_client::To::user("alice"), serde_json::json!({})))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    let stderr = stop(server).await;
    assert!(stderr.contains("herald: options from"), "{stderr}");
    assert!(!stderr.contains("every user may read it"), "a 0600 file is not world-readable:\n{stderr}");
}

/// Runs `command` to its end, at most [`WAIT`] (then it is killed and the test fails: a start
/// that should have been refused is serving). On 127.0.0.1:0, should it start all the same.
fn output_within(command: &mut Command) -> std::process::Output {
    let mut child = command
        .env("HERALD_LISTEN", "127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!("still running after {WAIT:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A config file that cannot be used stops the start with one line naming the file and the
/// key, exit status 2, and never the value of a secret. Fails if a typo, a wrong type or a
/// value the option refuses is let through.
#[test]
fn a_bad_config_file_is_one_line_naming_the_file_and_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("lisen = \"127.0.0.1:1\"\n", "unknown key `lisen`"),
        ("data_dir = \"x\"\n", "did you mean `data-dir`?"),
        ("retention-days = \"7\"\n", "`retention-days` must be a whole number, not a string"),
        ("memory = \"yes\"\n", "`memory` must be true or false"),
        ("connections-max = -1\n", "`connections-max`: invalid value \"-1\""),
        ("token-ttl-max = \"soon\"\n", "`token-ttl-max`: invalid value \"soon\""),
        ("log-format = \"xml\"\n", "`log-format`: invalid value \"xml\""),
        ("secret = 123456789\n", "`secret` must be a string"),
        ("listen = \"127.0.0.1:1\"\nlisten = \"x\"\n", "line 2: not valid TOML"),
    ];
    for (text, expected) in cases {
        let config = write_config(dir.path(), text);
        let output = output_within(herald(dir.path()).args(["serve", "--config"]).arg(&config));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{text}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{text}: one line: {stderr:?}");
        assert!(stderr.starts_with(&format!("herald: {}: ", config.display())), "{text}: {stderr}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(!stderr.contains("123456789"), "a secret's value: {stderr}");
    }
    let output = output_within(herald(dir.path()).args(["serve", "--config", "/nonexistent/herald.toml"]));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("herald: /nonexistent/herald.toml: cannot read"), "{stderr}");
    // A relation between options holds for the file's values too.
    let config = write_config(dir.path(), "tls-cert = \"cert.pem\"\n");
    let output = output_within(herald(dir.path()).args(["serve", "--config"]).arg(&config));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

/// A secret in a file every user may read is used, with a warning that names the keys (not
/// the values).
#[cfg(unix)]
#[tokio::test]
async fn a_world_readable_file_with_a_secret_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nmemory = true\napi-key = \"readable-key-0123456789\"\n\
             secret = \"readable-secret-0123456789abcdef0123456789\"\n"
        ),
    );
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = herald(dir.path());
    command.args(["serve", "--config"]).arg(&config);
    let mut server = Server::spawn(command, url(port));
    server.wait_up(Instant::now() + WAIT).await.unwrap();
    let stderr = stop(server).await;
    assert!(stderr.contains("holds secrets (api-key, secret) and every user may read it"), "{stderr}");
    assert!(!stderr.contains("readable-key-0123456789") && !stderr.contains("readable-secret"), "{stderr}");
}

/// Every option of `herald serve` has an environment variable, which `--help` shows.
#[test]
fn serve_help_lists_every_option_with_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = herald(dir.path()).args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    // Each option's entry runs from its `--name` line to the next one.
    let mut entries: Vec<String> = Vec::new();
    for line in help.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("--") || (trimmed.starts_with('-') && trimmed.get(2..5) == Some(", -")) {
            entries.push(String::new());
        }
        if let Some(entry) = entries.last_mut() {
            entry.push_str(line);
            entry.push('\n');
        }
    }
    let mut options = 0;
    for entry in &entries {
        let name = entry.trim_start().split([' ', '\n']).next().unwrap();
        if name == "-h," || name == "-V," || name == "--help" || name == "--version" {
            continue;
        }
        options += 1;
        assert!(entry.contains("[env: HERALD_"), "{name} has no environment variable:\n{entry}");
    }
    assert!(options >= 30, "only {options} options found in:\n{help}");
}

/// docs/OPERATIONS.md's example config file names every option of `herald serve` (as a key, or
/// a key commented out), and what it sets is accepted: a server starts with it. Fails when an
/// option is added without its line in the example, or when the example stops being valid.
#[tokio::test]
async fn the_documented_example_config_covers_every_option() {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/OPERATIONS.md"))
            .unwrap();
    let example = docs
        .split("```toml\n")
        .find(|block| block.starts_with("# /etc/herald/herald.toml"))
        .and_then(|block| block.split("```").next())
        .expect("OPERATIONS.md has the example config file");
    let dir = tempfile::tempdir().unwrap();
    let help =
        String::from_utf8(herald(dir.path()).args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    let options: Vec<&str> = help
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("--"))
        .filter_map(|rest| rest.split([' ', '\n']).next())
        .filter(|name| !["help", "version", "config"].contains(name))
        .collect();
    assert!(options.len() >= 30, "{options:?}");
    for option in &options {
        let named = example.lines().any(|line| {
            let line = line.trim_start_matches("# ");
            line.strip_prefix(option).is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        assert!(named, "the example config in docs/OPERATIONS.md has no line for `{option}`");
    }
    let port = free_port();
    let config = write_config(dir.path(), example);
    let mut command = herald(dir.path());
    command.args(["serve", "--memory", "--listen", &format!("127.0.0.1:{port}"), "--config"]).arg(&config);
    let mut server = Server::spawn(command, url(port));
    server.wait_up(Instant::now() + WAIT).await.unwrap();
    let stderr = stop(server).await;
    assert!(stderr.contains("herald: options from"), "{stderr}");
}

/// `herald --version`: the version and the commit of this checkout (`-dirty` or not, as the
/// tree was when it was built). Fails if the commit is left out or wrong.
#[test]
fn version_names_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let output = herald(dir.path()).arg("--version").output().unwrap();
    let version = String::from_utf8(output.stdout).unwrap();
    let expected = commit::describe(Path::new(env!("CARGO_MANIFEST_DIR")));
    let hash = expected.trim_end_matches("-dirty");
    assert!(
        version.starts_with(&format!("herald {} ({hash}", env!("CARGO_PKG_VERSION"))),
        "{version:?}, expected the commit {expected}"
    );
    if hash != commit::UNKNOWN {
        assert!(hash.len() >= 7 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    }
}

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The commit logic of build.rs on repositories of its own: none, clean, dirty, a packaged
/// crate's record, and a package inside a repository that does not track it.
#[test]
fn the_commit_is_the_checkouts_or_unknown() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("Cargo.toml"), "[package]\n").unwrap();
    assert_eq!(commit::describe(outside.path()), commit::UNKNOWN);

    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(repo.path().join("Cargo.toml"), "[package]\n").unwrap();
    // Not tracked yet: not this repository's package.
    assert_eq!(commit::describe(repo.path()), commit::UNKNOWN);
    git(repo.path(), &["add", "Cargo.toml"]);
    git(repo.path(), &["commit", "-q", "-m", "first"]);
    let hash = git(repo.path(), &["rev-parse", "--short", "HEAD"]);
    assert_eq!(commit::describe(repo.path()), hash);
    assert!(commit::files_to_watch(repo.path()).iter().any(|f| f.ends_with("HEAD")));
    std::fs::write(repo.path().join("Cargo.toml"), "[package]\nname = \"x\"\n").unwrap();
    assert_eq!(commit::describe(repo.path()), format!("{hash}-dirty"));
    // An untracked file is not a change of the tree.
    git(repo.path(), &["checkout", "-q", "Cargo.toml"]);
    std::fs::write(repo.path().join("notes.txt"), "x").unwrap();
    assert_eq!(commit::describe(repo.path()), hash);

    let packaged = tempfile::tempdir().unwrap();
    std::fs::write(
        packaged.path().join(".cargo_vcs_info.json"),
        "{\n  \"git\": {\n    \"sha1\": \"0123456789abcdef0123456789abcdef01234567\"\n  },\n  \"path_in_vcs\": \"crates/herald\"\n}",
    )
    .unwrap();
    assert_eq!(commit::describe(packaged.path()), "0123456");
}
