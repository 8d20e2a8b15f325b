//! Presence webhooks through the real binary: a `herald serve` killed with `kill -9` cannot
//! report its users offline; started again (same data dir, same node id) it does so at once,
//! from what its SQLite store kept of what it had reported online. Also: the webhook secret is
//! never in the logs.

mod common;
// The receiver the server's own webhook tests use (a real HTTP server on 127.0.0.1).
#[path = "../../herald-server/tests/it/receiver.rs"]
mod receiver;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, free_port};
use herald_client::{Event, StreamOptions, Subscriber, mint_token};
use receiver::Receiver;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "webhook-test-secret-of-at-least-32-bytes";
const API_KEY: &str = "webhook-test-api-key";
const WEBHOOK_SECRET: &str = "whsec-never-in-a-log-line";

fn spawn(dir: &Path, port: u16, receiver: &Receiver) -> Server {
    let mut command = common::herald(dir);
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .args([
            "--node-id",
            "webhook-node",
            "--webhook-url",
            &receiver.url(),
            "--webhook-offline-grace",
            "1s",
        ])
        .env("HERALD_SECRET", SECRET)
        .env("HERALD_API_KEY", API_KEY)
        .env("HERALD_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .env("RUST_LOG", "debug");
    Server::spawn(command, format!("http://127.0.0.1:{port}"))
}

/// A tab of `user`, connected (its `hello` read).
async fn tab(url: &str, user: &str) -> herald_client::EventStream {
    let token = mint_token(SECRET.as_bytes(), user, Some("s1"), Duration::from_secs(3600)).unwrap();
    let mut stream = Subscriber::new(url, &token).unwrap().stream(StreamOptions::default()).await.unwrap();
    match common::next_event_within(&mut stream, WAIT).await {
        Event::Hello { .. } => stream,
        other => panic!("expected hello, got {other:?}"),
    }
}

fn summary(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let session = e["session"].as_str().map(|s| format!(" {s}")).unwrap_or_default();
            format!(
                "{} {}{session} #{}",
                e["type"].as_str().unwrap(),
                e["user"].as_str().unwrap(),
                e["user_seq"]
            )
        })
        .collect()
}

/// Fails if the restart does not release what the killed process had reported online (the
/// users would stay online at the receiver for ever), or if the secret is logged.
#[tokio::test]
async fn a_restart_after_kill_9_reports_the_users_offline() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let receiver = Receiver::start().await;
    let server = common::start_until_up(Instant::now() + WAIT, || spawn(dir.path(), port, &receiver)).await;
    let alice = tab(&server.url, "alice").await;
    let bob = tab(&server.url, "bob").await;
    let events = receiver.wait_for(4, WAIT).await;
    let mut online = summary(&events);
    online.sort();
    assert_eq!(
        online,
        [
            "session.online alice s1 #2",
            "session.online bob s1 #2",
            "user.online alice #1",
            "user.online bob #1"
        ]
    );
    let killed_stderr = server.kill9();
    drop((alice, bob));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.events().len(), 4, "a killed process sends nothing");

    let started = Instant::now();
    let server = common::start_until_up(Instant::now() + WAIT, || spawn(dir.path(), port, &receiver)).await;
    let events = receiver.wait_for(8, WAIT).await;
    let released = started.elapsed();
    for user in ["alice", "bob"] {
        let of_user: Vec<String> =
            summary(&events[4..]).into_iter().filter(|e| e.contains(&format!(" {user}"))).collect();
        assert_eq!(of_user, [format!("session.offline {user} s1 #3"), format!("user.offline {user} #4")]);
    }
    assert!(events[4..].iter().all(|e| e["node"] == "webhook-node"));
    eprintln!("offline events {released:?} after the restart began");

    // The user comes back: numbered on from where the killed process left off.
    let _alice = tab(&server.url, "alice").await;
    let events = receiver.wait_for(10, WAIT).await;
    assert_eq!(summary(&events[8..]), ["user.online alice #5", "session.online alice s1 #6"]);
    let stderr = server.kill9();
    for log in [killed_stderr, stderr] {
        assert!(log.contains("presence webhooks on"), "{log}");
        assert!(!log.contains(WEBHOOK_SECRET), "the webhook secret was logged:\n{log}");
    }
}

/// `--webhook-url` without a secret, or not an http(s) URL, is refused in one line before
/// anything starts.
#[test]
fn a_webhook_url_needs_a_secret_and_http() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (vec!["--webhook-url", "http://127.0.0.1:9/hook"], "needs a webhook secret"),
        (
            vec!["--webhook-url", "ftp://example.com/hook", "--webhook-secret", "x"],
            "not an http:// or https:// URL",
        ),
        (vec!["--webhook-secret", "x"], "--webhook-secret needs --webhook-url"),
    ] {
        let output = common::herald(dir.path())
            .args(["serve", "--memory", "--listen", &format!("127.0.0.1:{}", free_port())])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    }
}
