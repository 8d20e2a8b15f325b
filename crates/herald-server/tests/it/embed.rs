//! `examples/embed.rs`, an axum app that mounts Herald under `/herald` and notifies from a
//! background job, run as a real process: through it, the upkeep that an embedding app gets
//! from `Herald::builder` works (keep-alives on an idle stream, `token_expired` at a token's
//! expiry, the job's notifications) and SIGTERM ends the streams with `closed: shutdown`.
//!
//! `cargo test` builds the package's examples before it runs the tests; this test runs the one
//! it built (`target/<profile>/examples/embed`). It does not build it itself: `cargo build -p
//! herald-server --example embed` from inside `cargo test --workspace` resolves features for
//! one package, not the workspace, and would rebuild tokio and all above it. So a run of this
//! test binary alone (`--test it`) after a change to the server runs the example as last built:
//! run `cargo test -p herald-server`, or build the example first.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{Sse, token_with_ttl};

/// The example's keep-alive interval in this test.
const KEEPALIVE_SECS: u64 = 1;
/// The example's job notifies `alice` this often.
const JOB_INTERVAL_MS: u64 = 300;
/// Lifetime of the idle stream's token: it expires (whole seconds: between 5 and 6 s after
/// it is made) after the keep-alives were counted.
const BOB_TOKEN_SECS: u64 = 6;
/// Longest wait for the example to start, and to exit after SIGTERM.
const PROCESS_WAIT: Duration = Duration::from_secs(20);

/// The example binary cargo built beside this test binary (`…/deps/it-…` →
/// `…/examples/embed`).
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let binary = profile_dir.join("examples").join(format!("embed{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test -p herald-server` (which builds the examples), \
         or `cargo build -p herald-server --example embed` first",
        binary.display()
    );
    binary
}

/// The example, running; killed if the test fails before it stops it.
struct Example {
    child: Child,
    url: String,
}

impl Example {
    fn start() -> Self {
        let mut child = Command::new(example_binary())
            .env("HERALD_SECRET", crate::support::SECRET)
            .env("HERALD_API_KEY", crate::support::API_KEY)
            .env("EMBED_LISTEN", "127.0.0.1:0")
            .env("EMBED_KEEPALIVE_SECS", KEEPALIVE_SECS.to_string())
            .env("EMBED_JOB_USER", "alice")
            .env("EMBED_JOB_INTERVAL_MS", JOB_INTERVAL_MS.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the example starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver.recv_timeout(PROCESS_WAIT).expect("the example says where it listens");
        let url = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
        Self { child, url }
    }

    /// `GET /herald/v1/stream` with `token`.
    async fn stream(&self, token: &str) -> Sse {
        let response = reqwest::Client::new()
            .get(format!("{}/herald/v1/stream", self.url))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Sse::new(response)
    }

    /// Sends SIGTERM; the example's own signal handler shuts Herald down.
    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit; its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + PROCESS_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "the example did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn an_embedding_app_gets_keep_alives_token_expiry_and_shutdown() {
    let mut example = Example::start();
    let (mut alice, mut bob) = (
        example.stream(&token_with_ttl("alice", None, Duration::from_secs(3600))).await,
        // Short-lived, and for a user the job leaves alone: an idle stream.
        example.stream(&token_with_ttl("bob", None, Duration::from_secs(BOB_TOKEN_SECS))).await,
    );
    for tab in [&mut alice, &mut bob] {
        assert_eq!(tab.next().await.expect("hello").event, "hello");
    }

    // The job's notifications reach alice through the notifier handle.
    let reminder = alice.notification().await;
    assert_eq!(reminder.data["type"], "reminder", "{reminder:?}");

    // Bob's stream is idle: keep-alives only, one per interval of silence.
    bob.expect_silence(Duration::from_secs(2 * KEEPALIVE_SECS + 1)).await;
    assert!(bob.comments >= 2, "{} keep-alives in {}s", bob.comments, 2 * KEEPALIVE_SECS + 1);
    // Then his token expires: `closed: token_expired`, and the stream ends.
    let closed = bob.next_within(Duration::from_secs(5)).await.expect("closed in time").expect("an event");
    assert_eq!(
        (closed.event.as_str(), &closed.data),
        ("closed", &serde_json::json!({"reason": "token_expired"}))
    );
    bob.expect_end().await;

    // SIGTERM: alice's stream ends with `closed: shutdown` (after the job's latest
    // notifications), and the process exits cleanly.
    example.terminate();
    let closed = loop {
        let event = alice.next().await.expect("`closed` before the end of the stream");
        if event.event != "notification" {
            break event;
        }
    };
    assert_eq!((closed.event.as_str(), &closed.data), ("closed", &serde_json::json!({"reason": "shutdown"})));
    alice.expect_end().await;
    assert!(example.wait().success(), "the example exits with status 0");
}
